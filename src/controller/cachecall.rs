//! The calls a plan makes to the cache service's admin API: take, renew and release a
//! lease, delete a Build's cache tag (I/O: HTTP).
//!
//! None of them can fail a plan. Each is bounded by [`CALL_TIMEOUT`], so an unreachable
//! cache service slows a reconcile by seconds at most; its outcome goes to the
//! [ledger](super::cache_ledger), which holds a failed call back by the controller's retry
//! backoff; the first failure of a streak comes back as a `CacheUnavailable` Warning Event
//! for the plan to publish; and every call is reported to the [`GcObserver`].
//!
//! [`GcObserver`]: super::observer::GcObserver

use std::time::Duration;

use super::cache_ledger::CacheCall;
use super::context::Context;
use super::decide::backoff;
use super::plan::EventSpec;
use crate::cacheapi::admin::{LeaseName, LeaseRequest, LeaseTarget};
use crate::cacheapi::client::{AdminClient, AdminClientError};
use crate::crd::Reason;
use crate::oci::name::{RepoName, Tag};
use crate::report::error_chain;

/// The longest an admin API call made during a reconcile may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

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
