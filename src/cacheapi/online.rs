//! The online forms of `kiln cache du | prune | verify --server URL`: the same questions
//! asked of a running cache service through its admin API, printed for people or as the
//! API's JSON (I/O: HTTP and stdout; the formatting functions are pure).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cacheapi::admin::{
    DuReport, PrunePolicy, PruneReport, PruneRequest, VerifyReport, VerifyRequest,
};
use crate::cacheapi::client::AdminClient;
use crate::cli::CliResult;
use crate::units;

/// Why an online command could not start.
#[derive(Debug, thiserror::Error)]
pub enum OnlineError {
    /// No admin token was given.
    #[error("--server needs the admin token: pass --admin-token-file FILE")]
    NoToken,
    /// The token file could not be read.
    #[error("cannot read the admin token file {path}")]
    ReadToken {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A client of `server` with the admin token from `token_file`.
pub fn client(
    server: &str,
    token_file: Option<&Path>,
) -> Result<AdminClient, Box<dyn std::error::Error + Send + Sync>> {
    let path = token_file.ok_or(OnlineError::NoToken)?;
    let token = std::fs::read_to_string(path).map_err(|source| OnlineError::ReadToken {
        path: path.display().to_string(),
        source,
    })?;
    Ok(AdminClient::new(server, token.trim())?)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn print(json: bool, value: &impl serde::Serialize, text: String) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, value)?;
        writeln!(out)
    } else {
        out.write_all(text.as_bytes())
    }
}

/// `kiln cache du --server`.
pub async fn du(client: &AdminClient, json: bool) -> CliResult {
    let report = client.du().await?;
    print(json, &report, format_du(&report, now_secs()))?;
    Ok(ExitCode::SUCCESS)
}

/// Formats a du report: one line per repository, then the totals.
pub fn format_du(report: &DuReport, now_secs: u64) -> String {
    let width = report
        .repositories
        .iter()
        .map(|r| r.name.as_str().len())
        .max()
        .unwrap_or(0)
        .max("REPOSITORY".len());
    let mut out = format!(
        "{:<width$}  {:>5}  {:>9}  {:>10}  {:<14}{}\n",
        "REPOSITORY", "TAGS", "MANIFESTS", "SIZE", "LAST USED", "MIRROR"
    );
    for repo in &report.repositories {
        let used = repo.last_used.map_or_else(
            || "never".to_owned(),
            |at| {
                format!(
                    "{} ago",
                    units::format_duration(Duration::from_secs(now_secs.saturating_sub(at)))
                )
            },
        );
        out.push_str(&format!(
            "{:<width$}  {:>5}  {:>9}  {:>10}  {:<14}{}\n",
            repo.name.as_str(),
            repo.tags,
            repo.manifests,
            units::format_size(repo.bytes),
            used,
            if repo.mirror { "yes" } else { "" }
        ));
    }
    out.push_str(&format!(
        "Blobs:\t\t{} ({})\nManifests:\t{}\nTags:\t\t{}\nUploads:\t{} ({})\nLeases:\t\t{}\nReclaimable:\t{}\nTotal:\t\t{}\n",
        report.blobs.count,
        units::format_size(report.blobs.bytes),
        report.manifests,
        report.tags,
        report.uploads.count,
        units::format_size(report.uploads.bytes),
        report.leases,
        units::format_size(report.reclaimable_bytes),
        units::format_size(report.total_bytes),
    ));
    out
}

/// The prune requests for the offline flags: the admin API takes one policy per call, so
/// a size and an age limit are two calls (age first, as the offline GC applies it).
pub fn prune_requests(
    all: bool,
    keep_storage: Option<u64>,
    keep_duration: Option<Duration>,
    dry_run: bool,
) -> Vec<PruneRequest> {
    if all {
        return vec![PruneRequest {
            policy: PrunePolicy::All,
            dry_run,
        }];
    }
    let mut requests = Vec::new();
    if let Some(age) = keep_duration {
        requests.push(PruneRequest {
            policy: PrunePolicy::KeepDuration {
                seconds: age.as_secs(),
            },
            dry_run,
        });
    }
    if let Some(bytes) = keep_storage {
        requests.push(PruneRequest {
            policy: PrunePolicy::KeepStorage { bytes },
            dry_run,
        });
    }
    requests
}

/// `kiln cache prune --server`.
pub async fn prune(client: &AdminClient, requests: &[PruneRequest], json: bool) -> CliResult {
    for request in requests {
        let report = client.prune(request).await?;
        print(json, &report, format_prune(&report))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Formats a prune report: one line per removed entry, then the bytes freed.
pub fn format_prune(report: &PruneReport) -> String {
    let mut out = String::new();
    for entry in &report.removed {
        let name = match (&entry.repository, &entry.tag, &entry.digest) {
            (Some(repo), Some(tag), _) => format!("{repo}:{tag}"),
            (_, _, Some(digest)) => digest.to_string(),
            (Some(repo), None, None) => repo.to_string(),
            (None, _, None) => String::new(),
        };
        out.push_str(&format!(
            "{:<9}{:<72}{:>10}  {}\n",
            format!("{:?}", entry.kind).to_lowercase(),
            name,
            units::format_size(entry.bytes),
            entry.reason
        ));
    }
    out.push_str(&format!(
        "{}:\t{} ({} entries; {} digests held by leases)\n",
        if report.dry_run {
            "Would free"
        } else {
            "Freed"
        },
        units::format_size(report.freed_bytes),
        report.removed.len(),
        report.kept_by_leases
    ));
    if let Some(unmet) = &report.ceiling_unmet {
        out.push_str(&crate::store::cli::ceiling_note(
            unmet.bytes_after,
            unmet.held_by_leases,
            unmet.held_by_pushes,
        ));
    }
    out
}

/// `kiln cache verify --server`: exits non-zero when the store is not clean.
pub async fn verify(client: &AdminClient, repair: bool, json: bool) -> CliResult {
    let report = client.verify(&VerifyRequest { repair }).await?;
    print(json, &report, format_verify(&report))?;
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Formats a verify report: one line per finding, then a summary.
pub fn format_verify(report: &VerifyReport) -> String {
    let mut out = String::new();
    for corrupt in &report.corrupt {
        out.push_str(&format!(
            "corrupt: {} hashes to {} ({}){}\n",
            corrupt.digest,
            corrupt.actual,
            units::format_size(corrupt.bytes),
            if corrupt.quarantined {
                ", quarantined"
            } else {
                ""
            }
        ));
    }
    for missing in &report.missing {
        out.push_str(&format!(
            "missing: {}@{} references {}\n",
            missing.repository, missing.manifest, missing.missing
        ));
    }
    for problem in &report.problems {
        out.push_str(&format!("problem: {problem}\n"));
    }
    for digest in &report.repaired {
        out.push_str(&format!("dropped: {digest}\n"));
    }
    let findings = report.corrupt.len() + report.missing.len() + report.problems.len();
    let verdict = match (findings, report.repaired.is_empty()) {
        (0, _) => "clean".to_owned(),
        (n, false) => format!("{n} problems, repaired"),
        (n, true) => format!("{n} problems (run with --repair to fix)"),
    };
    out.push_str(&format!(
        "Checked {} blobs ({}): {verdict}\n",
        report.blobs_checked,
        units::format_size(report.bytes_checked)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cacheapi::admin::{CorruptBlob, EntryKind, PrunedEntry, RepositoryUsage, Usage};
    use crate::oci::digest::Digest;
    use crate::oci::name::{RepoName, Tag};

    #[test]
    fn offline_prune_flags_become_one_request_per_policy() {
        let day = Duration::from_secs(86_400);
        assert_eq!(
            prune_requests(true, Some(1), Some(day), true),
            [PruneRequest {
                policy: PrunePolicy::All,
                dry_run: true
            }]
        );
        let both: Vec<PrunePolicy> = prune_requests(false, Some(10), Some(day), false)
            .into_iter()
            .map(|r| r.policy)
            .collect();
        assert_eq!(
            both,
            [
                PrunePolicy::KeepDuration { seconds: 86_400 },
                PrunePolicy::KeepStorage { bytes: 10 }
            ]
        );
    }

    #[test]
    fn reports_print_one_line_per_finding() {
        let du = DuReport {
            total_bytes: 2048,
            blobs: Usage {
                count: 2,
                bytes: 2048,
            },
            repositories: vec![RepositoryUsage {
                name: RepoName::parse("docker.io/library/alpine").unwrap(),
                tags: 1,
                manifests: 2,
                bytes: 2048,
                last_used: Some(1000),
                mirror: true,
            }],
            ..DuReport::default()
        };
        let text = format_du(&du, 1060);
        assert!(text.contains("docker.io/library/alpine"), "{text}");
        assert!(text.contains("1m ago") && text.contains("yes"), "{text}");
        let prune = PruneReport {
            dry_run: true,
            freed_bytes: 10,
            removed: vec![PrunedEntry {
                kind: EntryKind::Tag,
                repository: Some(RepoName::parse("a").unwrap()),
                tag: Some(Tag::parse("v1").unwrap()),
                digest: None,
                bytes: 0,
                reason: "prune-all".into(),
            }],
            kept_by_leases: 0,
            ceiling_unmet: None,
        };
        let text = format_prune(&prune);
        assert!(text.starts_with("tag      a:v1"), "{text}");
        assert!(text.contains("Would free"), "{text}");
        let verify = VerifyReport {
            corrupt: vec![CorruptBlob {
                digest: Digest::of(b"a"),
                actual: Digest::of(b"b"),
                bytes: 1,
                quarantined: false,
            }],
            problems: vec!["orphan".into()],
            ..VerifyReport::default()
        };
        let text = format_verify(&verify);
        assert!(
            text.contains("corrupt: ") && text.contains("problem: orphan"),
            "{text}"
        );
        assert!(
            text.contains("2 problems (run with --repair to fix)"),
            "{text}"
        );
    }
}
