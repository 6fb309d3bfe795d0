//! `kiln cache du | prune | verify` on a root directory (offline): flags, and the
//! functions that run them and print for people or as JSON (I/O: the store and stdout).
//! With `--server URL` the same commands ask a running service through its admin API
//! ([`crate::cacheapi::online`]).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::cacheapi::client::AdminClient;
use crate::cacheapi::online;
use crate::cli::CliResult;
use crate::store::{
    DuReport, GcOptions, GcReport, Policy, Store, StoreOptions, VerifyOptions, VerifyReport,
};
use crate::units;

/// The default store root on a laptop.
pub const DEFAULT_ROOT: &str = "./kiln-data";

/// `--server URL --admin-token-file FILE`: ask a running cache service through its admin
/// API instead of opening a store directory.
#[derive(Debug, clap::Args)]
pub struct OnlineArgs {
    /// Ask the cache service at this URL (its admin API) instead of opening --root.
    #[arg(
        long,
        value_name = "URL",
        conflicts_with = "root",
        env = "KILN_CACHE_SERVER"
    )]
    pub server: Option<String>,
    /// The admin token for --server.
    #[arg(long, value_name = "FILE", env = "KILN_CACHE_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
}

impl OnlineArgs {
    /// A client of the server, when one was named.
    fn client(&self) -> Result<Option<AdminClient>, Box<dyn std::error::Error + Send + Sync>> {
        self.server
            .as_deref()
            .map(|server| online::client(server, self.admin_token_file.as_deref()))
            .transpose()
    }
}

/// Flags of `kiln cache du`.
#[derive(Debug, clap::Args)]
pub struct DuArgs {
    /// The store's root directory.
    #[arg(long, default_value = DEFAULT_ROOT)]
    pub root: PathBuf,
    /// The online form: a running service instead of a directory.
    #[command(flatten)]
    pub online: OnlineArgs,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Print every root as a block of fields, and the row counts.
    #[arg(long, short)]
    pub verbose: bool,
}

/// Flags of `kiln cache prune`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("policy").required(true).multiple(true).args(["all", "keep_storage", "keep_duration"])))]
pub struct PruneArgs {
    /// The store's root directory.
    #[arg(long, default_value = DEFAULT_ROOT)]
    pub root: PathBuf,
    /// The online form: a running service instead of a directory.
    #[command(flatten)]
    pub online: OnlineArgs,
    /// Remove everything no lease holds, recent blobs included.
    #[arg(long)]
    pub all: bool,
    /// Evict least recently used tags until the store is at or under this size (a
    /// ceiling): 2MB, 512MiB, 1.5GiB.
    #[arg(long, value_parser = units::parse_size)]
    pub keep_storage: Option<u64>,
    /// Evict tags unused for longer than this: 90m, 7d.
    #[arg(long, value_parser = units::parse_duration)]
    pub keep_duration: Option<Duration>,
    /// Keep content pushed or checked this recently that no tag reaches yet (a push whose
    /// manifest has not arrived). Offline no server holds the store, so no push can be in
    /// flight and the default is none. Ignored with --all, and with --server (the service
    /// applies its own --gc-grace).
    #[arg(long, value_parser = units::parse_duration)]
    pub grace: Option<Duration>,
    /// Report what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `kiln cache verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The store's root directory.
    #[arg(long, default_value = DEFAULT_ROOT)]
    pub root: PathBuf,
    /// The online form: a running service instead of a directory.
    #[command(flatten)]
    pub online: OnlineArgs,
    /// Quarantine corrupt blobs and drop what depended on them, remove dangling rows and
    /// stray temp files.
    #[arg(long)]
    pub repair: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

fn open(root: PathBuf) -> Result<Store, crate::store::StoreError> {
    Store::open(
        root,
        StoreOptions {
            create: false,
            ..StoreOptions::default()
        },
    )
}

/// Runs `kiln cache du`.
pub async fn run_du(args: DuArgs) -> CliResult {
    let DuArgs {
        root,
        online,
        json,
        verbose,
    } = args;
    if let Some(client) = online.client()? {
        return online::du(&client, json).await;
    }
    let store = open(root)?;
    let report = store.du()?;
    let now = store.clock().now_ms();
    store.close()?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        out.write_all(format_du(&report, now, verbose).as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn ago(now_ms: u64, at_ms: u64) -> String {
    format!(
        "{} ago",
        units::format_duration(Duration::from_millis(now_ms.saturating_sub(at_ms)))
    )
}

/// Formats a du report like `buildctl du` (table) or `buildctl du -v` (blocks).
pub fn format_du(report: &DuReport, now_ms: u64, verbose: bool) -> String {
    let mut out = String::new();
    if verbose {
        for root in &report.roots {
            out.push_str(&format!(
                "ID:\t\t{}\nRepository:\t{}\nTag:\t\t{}\nReclaimable:\t{}\nSize:\t\t{}\nLast accessed:\t{}\n\n",
                root.digest,
                root.repo,
                root.tag,
                root.reclaimable,
                units::format_size(root.size),
                ago(now_ms, root.last_accessed_ms)
            ));
        }
        out.push_str(&format!(
            "Blobs:\t\t{}\nManifests:\t{}\nTags:\t\t{}\nRepositories:\t{}\nLeases:\t\t{}\nUploads:\t{}\nUnreferenced:\t{}\n",
            report.blobs,
            report.manifests,
            report.tags,
            report.repositories,
            report.leases,
            report.uploads,
            units::format_size(report.unreferenced_bytes)
        ));
    } else {
        let width = report
            .roots
            .iter()
            .map(|r| r.repo.len() + r.tag.len() + 1)
            .max()
            .unwrap_or(0)
            .max("REPO:TAG".len());
        out.push_str(&format!(
            "{:<14}{:<width$}  {:<12}{:<10}{}\n",
            "ID", "REPO:TAG", "RECLAIMABLE", "SIZE", "LAST ACCESSED"
        ));
        for root in &report.roots {
            out.push_str(&format!(
                "{:<14}{:<width$}  {:<12}{:<10}{}\n",
                root.id,
                format!("{}:{}", root.repo, root.tag),
                root.reclaimable,
                units::format_size(root.size),
                ago(now_ms, root.last_accessed_ms)
            ));
        }
    }
    out.push_str(&format!(
        "Reclaimable:\t{}\nTotal:\t\t{}\n",
        units::format_size(report.reclaimable_bytes),
        units::format_size(report.total_bytes)
    ));
    out
}

/// Runs `kiln cache prune`.
pub async fn run_prune(args: PruneArgs) -> CliResult {
    let PruneArgs {
        root,
        online,
        all,
        keep_storage,
        keep_duration,
        grace,
        dry_run,
        json,
    } = args;
    if let Some(client) = online.client()? {
        let requests = online::prune_requests(all, keep_storage, keep_duration, dry_run);
        return online::prune(&client, &requests, json).await;
    }
    let store = open(root)?;
    let started = Instant::now();
    let report = store.gc(&GcOptions {
        policy: Policy {
            all,
            keep_storage,
            keep_duration,
        },
        grace: if all {
            Duration::ZERO
        } else {
            grace.unwrap_or(Duration::ZERO)
        },
        dry_run,
        ..GcOptions::default()
    })?;
    store.close()?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        out.write_all(format_prune(&report, started.elapsed()).as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Formats a GC report: one line per removal, then the totals.
pub fn format_prune(report: &GcReport, took: Duration) -> String {
    let mut out = String::new();
    for removal in &report.removed {
        out.push_str(&format!(
            "{:<9}{:<72}{:>10}  {}\n",
            format!("{:?}", removal.kind).to_lowercase(),
            removal.name,
            units::format_size(removal.size),
            removal.reason.as_str()
        ));
    }
    if report.removed_not_listed > 0 {
        out.push_str(&format!("… and {} more\n", report.removed_not_listed));
    }
    let verb = if report.dry_run {
        "Would free"
    } else {
        "Freed"
    };
    out.push_str(&format!(
        "{verb}:\t{} ({} tags, {} leases, {} manifests, {} blobs) in {}\nTotal:\t\t{} (was {})\n",
        units::format_size(report.bytes_freed),
        report.tags_removed,
        report.leases_removed,
        report.manifests_removed,
        report.blobs_removed,
        units::format_duration(took),
        units::format_size(report.bytes_after),
        units::format_size(report.bytes_before),
    ));
    if report.ceiling_unmet {
        out.push_str(&ceiling_note(
            report.bytes_after,
            report.held_by_leases,
            report.held_by_pushes,
        ));
    }
    out
}

/// The line that says why a `keep-storage` ceiling was not met, and by how much each
/// reason holds.
pub fn ceiling_note(bytes_after: u64, held_by_leases: u64, held_by_pushes: u64) -> String {
    format!(
        "Note:\t\t--keep-storage not met: {} left, of which leases hold {} and pushes in progress (pushed or checked within the grace window, no tag yet) {}\n",
        units::format_size(bytes_after),
        units::format_size(held_by_leases),
        units::format_size(held_by_pushes),
    )
}

/// Runs `kiln cache verify`; exits non-zero when it found problems (repaired or not).
pub async fn run_verify(args: VerifyArgs) -> CliResult {
    let VerifyArgs {
        root,
        online,
        repair,
        json,
    } = args;
    if let Some(client) = online.client()? {
        return online::verify(&client, repair, json).await;
    }
    let store = open(root)?;
    let started = Instant::now();
    let recovery = store.recovery_report();
    let report = store.verify(&VerifyOptions {
        repair,
        ..VerifyOptions::default()
    })?;
    store.close()?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        if !recovery.is_clean() {
            writeln!(out, "recovered at open: {recovery:?}")?;
        }
        out.write_all(format_verify(&report, started.elapsed()).as_bytes())?;
    }
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Formats a verify report: one line per problem, then a summary.
pub fn format_verify(report: &VerifyReport, took: Duration) -> String {
    let mut out = String::new();
    for problem in &report.problems {
        out.push_str(&format!("problem: {problem}\n"));
    }
    for path in &report.quarantined {
        out.push_str(&format!("quarantined: {path}\n"));
    }
    for digest in &report.dropped {
        out.push_str(&format!("dropped: {digest}\n"));
    }
    let verdict = match (report.problems.len(), report.repaired) {
        (0, _) => "clean".to_owned(),
        (n, true) => format!("{n} problems, repaired"),
        (n, false) => format!("{n} problems (run with --repair to fix)"),
    };
    out.push_str(&format!(
        "Checked {} blobs ({}) in {}: {verdict}\n",
        report.blobs_checked,
        units::format_size(report.bytes_checked),
        units::format_duration(took)
    ));
    out
}
