//! `kiln cache du | prune | verify` on a root directory (offline): flags, and the
//! functions that run them and print for people or as JSON (I/O: the store and stdout).
//! With `--server URL` the same commands ask a running service through its admin API
//! ([`super::cache_online`]); both print the same reports ([`crate::cacheapi::render`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::app::CliResult;
use crate::app::cache_online as online;
use crate::cacheapi::client::AdminClient;
use crate::cacheapi::{convert, render};
use crate::store::{GcOptions, Policy, Store, StoreOptions, VerifyOptions};
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
    /// Print one JSON object (the admin API's disk usage) instead of a table.
    #[arg(long)]
    pub json: bool,
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
    let DuArgs { root, online, json } = args;
    if let Some(client) = online.client()? {
        return online::du(&client, json).await;
    }
    let store = open(root)?;
    let now_ms = store.clock().now_ms();
    // Offline no mirror is configured: no repository is marked as one.
    let report = convert::du_report(
        &store.du()?,
        &store.listing()?,
        &store.uploads(),
        now_ms,
        |_| false,
    );
    store.close()?;
    online::print(json, &report, render::du(&report, now_ms / 1000))?;
    Ok(ExitCode::SUCCESS)
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
    let leased = convert::leased_digests(&store.leases()?, store.clock().now_ms());
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
    let report = convert::prune_report(&report, leased);
    online::print(json, &report, render::prune(&report))?;
    Ok(ExitCode::SUCCESS)
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
    let recovery = store.recovery_report();
    let before = store.listing()?;
    let report = store.verify(&VerifyOptions {
        repair,
        ..VerifyOptions::default()
    })?;
    store.close()?;
    let report = convert::verify_report(&report, &before);
    if !json && !recovery.is_clean() {
        println!("recovered at open: {recovery:?}");
    }
    online::print(json, &report, render::verify(&report))?;
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
