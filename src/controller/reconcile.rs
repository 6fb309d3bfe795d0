//! One reconcile: lock the Build's concurrency group, observe, decide, apply; and the error
//! policy that decides when a failed reconcile runs again (I/O, through `observe` and
//! `apply`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::reflector::ObjectRef;
use tracing::Instrument;

use super::apply::apply;
use super::context::{Context, Outcome};
use super::decide::decide;
use super::error::ReconcileError;
use super::observe::observe;
use super::plan;
use super::queue;
use crate::cli::error_chain;
use crate::crd::Build;

/// How soon a reconcile that lost a write race runs again (on fresh state).
const CONFLICT_RETRY: Duration = Duration::from_secs(1);
/// How soon a reconcile that failed otherwise runs again.
const ERROR_RETRY: Duration = Duration::from_secs(10);

/// Reconciles one Build: the function the controller runs for every change, and the entry
/// point tests call directly.
pub async fn reconcile(build: Arc<Build>, ctx: Arc<Context>) -> Result<Requeue, ReconcileError> {
    let started = Instant::now();
    let object_ref = ObjectRef::from_obj(build.as_ref());
    let span = tracing::info_span!(
        "reconcile",
        namespace = build.namespace().unwrap_or_default(),
        name = build.name_any()
    );
    let result = reconcile_locked(&build, &ctx).instrument(span).await;
    let outcome = match &result {
        Ok((_, 0)) => Outcome::Unchanged,
        Ok((_, writes)) => Outcome::Applied { writes: *writes },
        Err(error) => Outcome::Failed { step: error.step() },
    };
    ctx.observer
        .reconciled(&object_ref, outcome, started.elapsed());
    result.map(|(requeue, _)| requeue)
}

/// Runs observe → decide → apply under the lock of the Build's concurrency group, so that
/// no two members of a group decide to start at the same time.
async fn reconcile_locked(
    build: &Build,
    ctx: &Context,
) -> Result<(Requeue, usize), ReconcileError> {
    let namespace = build.namespace().unwrap_or_default();
    let mut group = queue::group_of(build).to_owned();
    // The group is read from the cached Build before the lock; if the fresh Build names
    // another group (its spec changed), lock that one and look again.
    for _ in 0..2 {
        let _guard = ctx.locks.lock(&namespace, &group).await;
        let Some((fresh, observed)) = observe(ctx, build).await? else {
            return Ok((Requeue::await_change(), 0));
        };
        if queue::group_of(&fresh) != group {
            group = queue::group_of(&fresh).to_owned();
            continue;
        }
        let plan = decide(&fresh, &observed, ctx.clock.now(), &ctx.config);
        if !plan.actions.is_empty() {
            tracing::debug!(actions = ?plan.describe(), "applying plan");
        }
        let writes = apply(ctx, &fresh, &plan).await?;
        let requeue = match plan.requeue {
            plan::Requeue::OnChange => Requeue::await_change(),
            plan::Requeue::After(after) => Requeue::requeue(after),
        };
        return Ok((requeue, writes));
    }
    Ok((Requeue::requeue(CONFLICT_RETRY), 0))
}

/// What to do after a failed reconcile: retry soon after a lost write race, later
/// otherwise. The whole error chain is logged.
pub fn error_policy(build: Arc<Build>, error: &ReconcileError, _ctx: Arc<Context>) -> Requeue {
    tracing::warn!(
        namespace = build.namespace().unwrap_or_default(),
        name = build.name_any(),
        step = error.step(),
        error = error_chain(error),
        "reconcile failed"
    );
    if error.is_conflict() {
        Requeue::requeue(CONFLICT_RETRY)
    } else {
        Requeue::requeue(ERROR_RETRY)
    }
}
