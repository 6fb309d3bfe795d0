//! The online forms of `kiln cache du | prune | verify --server URL`: the same questions
//! asked of a running cache service through its admin API, printed for people or as the
//! API's JSON (I/O: HTTP and stdout; the formatting functions are pure).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::app::CliResult;
use crate::cacheapi::admin::{PrunePolicy, PruneRequest, VerifyRequest};
use crate::cacheapi::client::AdminClient;
use crate::cacheapi::render;

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

/// Prints `value` as JSON, or `text` for people.
pub fn print(json: bool, value: &impl serde::Serialize, text: String) -> std::io::Result<()> {
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
    print(json, &report, render::du(&report, now_secs()))?;
    Ok(ExitCode::SUCCESS)
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
        print(json, &report, render::prune(&report))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `kiln cache verify --server`: exits non-zero when the store is not clean.
pub async fn verify(client: &AdminClient, repair: bool, json: bool) -> CliResult {
    let report = client.verify(&VerifyRequest { repair }).await?;
    print(json, &report, render::verify(&report))?;
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
