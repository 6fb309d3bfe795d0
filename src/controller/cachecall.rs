//! The calls a plan makes to the cache service's admin API: take, renew and release a
//! lease, delete a Build's cache tag, store an ended attempt's build log, read and check
//! the base images a Build resolved (I/O: HTTP, and the pod's log from the Kubernetes
//! API).
//!
//! None of them can fail a plan. Each is bounded by [`CALL_TIMEOUT`], so an unreachable
//! cache service slows a reconcile by seconds at most; its outcome goes to the
//! [ledger](super::cache_ledger), which holds a failed call back by the controller's retry
//! backoff; the first failure of a streak comes back as a `CacheUnavailable` Warning Event
//! for the plan to publish; and every call is reported to the [`GcObserver`].
//!
//! [`GcObserver`]: super::observer::GcObserver

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures::AsyncReadExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, LogParams};

use super::base_images::{MAX_BASE_IMAGES, split_tag};
use super::build_log::Tail;
use super::cache_ledger::CacheCall;
use super::context::Context;
use super::decide::backoff;
use super::plan::EventSpec;
use crate::cacheapi::admin::{LeaseName, LeaseRequest, LeaseTarget};
use crate::cacheapi::client::{AdminClient, AdminClientError};
use crate::cacheapi::log::ANNOTATION_TRUNCATED;
use crate::crd::Reason;
use crate::crd::{BaseImage, StoredLog};
use crate::oci::name::{RepoName, Tag};
use crate::report::error_chain;

/// The longest an admin API call made during a reconcile may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest reading a pod's log and storing it may take (a 16 MiB log, twice over a
/// slow link).
pub const LOG_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The size of the pieces a log is read in.
const LOG_PIECE: usize = 64 * 1024;

/// Why a call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No admin API is configured (`--cache-admin-token-file`).
    #[error("no cache admin API is configured")]
    NotConfigured,
    /// The lease name is not one the admin API accepts.
    #[error(transparent)]
    LeaseName(#[from] crate::cacheapi::admin::LeaseNameError),
    /// The call took longer than [`CALL_TIMEOUT`].
    #[error("no answer within {}s", CALL_TIMEOUT.as_secs())]
    TimedOut,
    /// The pod's log could not be read.
    #[error("reading the log of pod {pod}")]
    ReadLog {
        /// The pod.
        pod: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Storing the log took longer than [`LOG_CALL_TIMEOUT`].
    #[error("the log was not stored within {}s", LOG_CALL_TIMEOUT.as_secs())]
    LogTimedOut,
    /// The admin API refused or failed.
    #[error(transparent)]
    Admin(#[from] AdminClientError),
}

/// How a call went: done, or failed, with the Warning Event to publish when it is the
/// first failure of a streak.
pub type CallOutcome = Result<(), Option<EventSpec>>;

/// Takes (`renewal: false`) or renews lease `name` on `targets` for `ttl`.
pub async fn put_lease(
    ctx: &Context,
    name: &str,
    targets: &[LeaseTarget],
    ttl: Duration,
    renewal: bool,
) -> CallOutcome {
    let call = if renewal {
        CacheCall::RenewLease
    } else {
        CacheCall::TakeLease
    };
    let request = LeaseRequest {
        targets: targets.to_vec(),
        ttl_seconds: ttl.as_secs(),
    };
    // The lease holds at least until `ttl` after the request was sent, by this process's
    // clock: what renewals are timed by, whatever the cache service's clock says.
    let sent = ctx.clock.now();
    let result = bounded(ctx, |admin| async move {
        let lease = LeaseName::parse(name)?;
        Ok(admin.put_lease(&lease, &request).await?)
    })
    .await;
    match result {
        Ok(response) => {
            let until = super::retention::after(sent, ttl);
            ctx.ledger
                .held(name, until, response.digests, ctx.clock.now());
            ctx.gc_observer.cache_call(call, true);
            Ok(())
        }
        Err(error) => failed(ctx, name, call, &error, format!("lease {name}")),
    }
}

/// Releases lease `name` (a lease that is already gone counts as released).
pub async fn release_lease(ctx: &Context, name: &str) -> CallOutcome {
    let result = bounded(ctx, |admin| async move {
        let lease = LeaseName::parse(name)?;
        admin.release_lease(&lease).await?;
        Ok(())
    })
    .await;
    settle(ctx, name, CacheCall::ReleaseLease, result, || {
        format!("releasing lease {name}")
    })
}

/// Deletes `repository:tag` (a tag that is already gone counts as deleted); `key` is its
/// ledger key.
pub async fn delete_tag(ctx: &Context, key: &str, repository: &RepoName, tag: &Tag) -> CallOutcome {
    let result = bounded(ctx, |admin| async move {
        admin.delete_tag(repository, tag).await?;
        Ok(())
    })
    .await;
    settle(ctx, key, CacheCall::DeleteTag, result, || {
        format!("deleting cache tag {repository}:{tag}")
    })
}

/// Where an ended attempt's log is read from.
pub struct LogSource<'a> {
    /// The Build's namespace's pods.
    pub pods: &'a Api<Pod>,
    /// The attempt's pod.
    pub pod: &'a str,
    /// Its main container.
    pub container: &'a str,
    /// The most bytes kept (the tail).
    pub max_bytes: u64,
}

/// Reads the log of `source` once and stores its tail at `repository:tag`, with
/// `annotations` (and the bytes cut, when any were). Memory: the tail kept, plus a
/// quarter of it while reading; stores run one at a time per controller.
pub async fn store_log(
    ctx: &Context,
    key: &str,
    source: &LogSource<'_>,
    repository: &RepoName,
    tag: &Tag,
    annotations: &BTreeMap<String, String>,
) -> CallOutcome {
    let result = async {
        let admin = ctx.cache_admin.as_ref().ok_or(CallError::NotConfigured)?;
        let _slot = ctx.log_slot.lock().await;
        tokio::time::timeout(LOG_CALL_TIMEOUT, async {
            let (bytes, cut) = read_tail(source).await?;
            let mut annotations = annotations.clone();
            if cut > 0 {
                annotations.insert(ANNOTATION_TRUNCATED.to_owned(), cut.to_string());
            }
            let stored = admin
                .put_log(repository, tag, &annotations, Bytes::from(bytes))
                .await?;
            Ok(StoredLog {
                repository: stored.repository.to_string(),
                tag: stored.tag.to_string(),
                digest: stored.manifest.to_string(),
                size: stored.size,
                truncated_bytes: cut,
            })
        })
        .await
        .unwrap_or(Err(CallError::LogTimedOut))
    }
    .await;
    match result {
        Ok(log) => {
            tracing::debug!(
                key,
                size = log.size,
                cut = log.truncated_bytes,
                "build log stored"
            );
            ctx.ledger.log_stored(key, log, ctx.clock.now());
            ctx.gc_observer.cache_call(CacheCall::StoreLog, true);
            Ok(())
        }
        Err(error) => failed(
            ctx,
            key,
            CacheCall::StoreLog,
            &error,
            format!(
                "storing the build log of pod {} in {repository}:{tag}",
                source.pod
            ),
        ),
    }
}

/// The last `max_bytes` of the pod's log, and the bytes cut from its head.
async fn read_tail(source: &LogSource<'_>) -> Result<(Vec<u8>, u64), CallError> {
    let read_error = |source_error: std::io::Error| CallError::ReadLog {
        pod: source.pod.to_owned(),
        source: source_error,
    };
    let params = LogParams {
        container: Some(source.container.to_owned()),
        ..LogParams::default()
    };
    let stream = source
        .pods
        .log_stream(source.pod, &params)
        .await
        .map_err(|e| read_error(std::io::Error::other(e)))?;
    let mut stream = std::pin::pin!(stream);
    let mut tail = Tail::new(source.max_bytes);
    let mut piece = vec![0; LOG_PIECE];
    loop {
        let read = stream.read(&mut piece).await.map_err(read_error)?;
        if read == 0 {
            break;
        }
        tail.push(&piece[..read]);
    }
    Ok(tail.finish())
}

/// Reads which base images the Build with UID `uid` resolved through the mirror since
/// `since`, as `image:tag` and digest, sorted and bounded.
pub async fn read_base_images(
    ctx: &Context,
    key: &str,
    uid: &str,
    since: k8s_openapi::jiff::Timestamp,
) -> CallOutcome {
    let result = bounded(ctx, |admin| async move {
        let uid = LeaseName::parse(uid)?;
        Ok(admin.base_images(&uid).await?)
    })
    .await;
    match result {
        Ok(resolutions) => {
            let since = u64::try_from(since.as_second()).unwrap_or(0);
            let mut bases: Vec<BaseImage> = resolutions
                .into_iter()
                .filter(|r| r.resolved_at >= since)
                .map(|r| BaseImage {
                    image: format!("{}:{}", r.image, r.tag),
                    digest: r.digest.to_string(),
                })
                .collect();
            bases.sort_by(|a, b| a.image.cmp(&b.image));
            bases.dedup_by(|a, b| a.image == b.image);
            bases.truncate(MAX_BASE_IMAGES);
            ctx.ledger.bases_read(key, bases, ctx.clock.now());
            ctx.gc_observer.cache_call(CacheCall::ReadBaseImages, true);
            Ok(())
        }
        Err(error) => failed(
            ctx,
            key,
            CacheCall::ReadBaseImages,
            &error,
            "reading the base images the build resolved".to_owned(),
        ),
    }
}

/// Deletes the cache's record of the base images the Build with UID `uid` resolved.
pub async fn forget_base_images(ctx: &Context, key: &str, uid: &str) -> CallOutcome {
    let result = bounded(ctx, |admin| async move {
        let uid = LeaseName::parse(uid)?;
        admin.forget_base_images(&uid).await?;
        Ok(())
    })
    .await;
    settle(ctx, key, CacheCall::ForgetBaseImages, result, || {
        "deleting the record of the build's base images".to_owned()
    })
}

/// Resolves each `image:tag` of `images` upstream again, through the mirror. The tags that
/// answered are recorded; the check failed only when none did.
pub async fn check_base_images(ctx: &Context, key: &str, images: &[String]) -> CallOutcome {
    let mut resolved = BTreeMap::new();
    let mut last_error = None;
    for reference in images {
        let Some((image, tag)) = split_tag(reference) else {
            continue;
        };
        let result = bounded(
            ctx,
            |admin| async move { Ok(admin.resolve(image, tag).await?) },
        )
        .await;
        match result {
            Ok(answer) => {
                resolved.insert(reference.clone(), answer.digest.to_string());
            }
            Err(error) => {
                tracing::debug!(image = %reference, error = %error_chain(&error), "base image not resolved");
                last_error = Some(error);
            }
        }
    }
    match last_error {
        Some(error) if resolved.is_empty() => failed(
            ctx,
            key,
            CacheCall::CheckBaseImages,
            &error,
            format!("resolving the base images {} upstream", images.join(", ")),
        ),
        _ => {
            ctx.ledger.bases_resolved(key, resolved, ctx.clock.now());
            ctx.gc_observer.cache_call(CacheCall::CheckBaseImages, true);
            Ok(())
        }
    }
}

/// Records the outcome of a call that is done once it succeeds.
fn settle(
    ctx: &Context,
    key: &str,
    call: CacheCall,
    result: Result<(), CallError>,
    what: impl FnOnce() -> String,
) -> CallOutcome {
    match result {
        Ok(()) => {
            ctx.ledger.done(key, ctx.clock.now());
            ctx.gc_observer.cache_call(call, true);
            Ok(())
        }
        Err(error) => failed(ctx, key, call, &error, what()),
    }
}

/// Runs `call` against the admin API within [`CALL_TIMEOUT`].
pub async fn bounded<'a, T, F>(
    ctx: &'a Context,
    call: impl FnOnce(&'a AdminClient) -> F,
) -> Result<T, CallError>
where
    F: Future<Output = Result<T, CallError>>,
{
    let admin = ctx.cache_admin.as_ref().ok_or(CallError::NotConfigured)?;
    tokio::time::timeout(CALL_TIMEOUT, call(admin))
        .await
        .unwrap_or(Err(CallError::TimedOut))
}

/// Records a failure; the first of a streak becomes a Warning Event.
fn failed(
    ctx: &Context,
    key: &str,
    call: CacheCall,
    error: &CallError,
    what: String,
) -> CallOutcome {
    let chain = error_chain(error);
    let failures = ctx.ledger.failed(key, chain.clone(), ctx.clock.now(), |n| {
        backoff(n, &ctx.config)
    });
    ctx.gc_observer.cache_call(call, false);
    tracing::warn!(key, call = call.as_str(), failures, error = %chain, "cache admin call failed");
    Err((failures == 1).then(|| {
        EventSpec::new(
            Reason::CacheUnavailable,
            "CallCache",
            format!("{what} failed: {chain}; the build goes on, the call is retried with backoff"),
        )
    }))
}
