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
use super::context::Context;
use super::decide::decide;
use super::error::ReconcileError;
use super::fair_share;
use super::observe::{observe, observe_at_rest};
use super::observer::Outcome;
use super::plan;
use super::queue;
use crate::crd::condition::{CONDITION_SUCCEEDED, find_condition};
use crate::crd::{Build, BuildStatus, Phase, Reason};
use crate::report::error_chain;
use k8s_openapi::jiff::Timestamp;

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
    // A finished Build with nothing asked of it is decided from memory first: when that
    // decision does nothing (a restart over thousands of finished Builds), no API request
    // is made. Anything it would do is decided again on a fresh read below. A cache older
    // than the API cannot hide work: the newer version's watch event triggers again.
    if let Some(observed) = observe_at_rest(ctx, build) {
        let plan = decide(build, &observed, ctx.clock.now(), &ctx.config);
        if plan.actions.is_empty() {
            return Ok((requeue_of(plan.recheck), 0));
        }
    }
    let namespace = build.namespace().unwrap_or_default();
    let mut group = queue::group_of(build).to_owned();
    // Under running-build limits, a Build that may start goes through the slot gate first
    // (always before its group's lock, so the two are taken in one order).
    let _slot = if ctx.running_limits().is_active() && fair_share::may_start(build) {
        Some(ctx.slots.enter().await)
    } else {
        None
    };
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
        let now = ctx.clock.now();
        let writes = apply(ctx, &fresh, &plan).await?;
        if plan.starts_attempt()
            && let Some(status) = plan.status()
        {
            ctx.slots
                .reserve(&namespace, &fresh.name_any(), status.attempt);
            if let Some(waited) = queue_wait(fresh.status.as_ref(), now) {
                ctx.observer.started(&ObjectRef::from_obj(&fresh), waited);
            }
        }
        if let Some((phase, took)) = finished(fresh.status.as_ref(), plan.status()) {
            ctx.observer
                .finished(&ObjectRef::from_obj(&fresh), phase, took);
        }
        return Ok((requeue_of(plan.recheck), writes));
    }
    Ok((Requeue::requeue(CONFLICT_RETRY), 0))
}

/// When to reconcile again, as the plan says.
fn requeue_of(recheck: plan::Recheck) -> Requeue {
    match recheck {
        plan::Recheck::OnChange => Requeue::await_change(),
        plan::Recheck::After(after) => Requeue::requeue(after),
    }
}

/// How long a Build that starts an attempt at `now` waited in a queue, from its status
/// before: since it entered the queue (its `Succeeded` condition's transition to reason
/// `Queued`), zero for a new run that starts at once, `None` for a retry (its wait is the
/// backoff, not a queue).
fn queue_wait(previous: Option<&BuildStatus>, now: Timestamp) -> Option<Duration> {
    let Some(previous) = previous else {
        return Some(Duration::ZERO);
    };
    if previous.reason() == Some(Reason::Queued) {
        let since = find_condition(&previous.conditions, CONDITION_SUCCEEDED)?
            .last_transition_time
            .0;
        return Some(Duration::try_from(now.duration_since(since)).unwrap_or(Duration::ZERO));
    }
    let new_run = previous.attempt == 0 || previous.phase.is_some_and(|p| p.is_terminal());
    new_run.then_some(Duration::ZERO)
}

/// The final phase a status write reaches for a new run, and how long the run took; `None`
/// when `written` is not final or merely rewrites the same finished run (same phase, same
/// completion time).
fn finished(
    previous: Option<&BuildStatus>,
    written: Option<&BuildStatus>,
) -> Option<(Phase, Option<Duration>)> {
    let written = written?;
    let phase = written.phase.filter(|p| p.is_terminal())?;
    if let Some(previous) = previous
        && previous.phase == Some(phase)
        && previous.completion_time == written.completion_time
    {
        return None;
    }
    let took = match (&written.start_time, &written.completion_time) {
        (Some(start), Some(end)) => Duration::try_from(end.0.duration_since(start.0)).ok(),
        _ => None,
    };
    Some((phase, took))
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

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::crd::fixtures::at;

    fn status(phase: Phase, start: Option<i64>, end: Option<i64>) -> BuildStatus {
        BuildStatus {
            phase: Some(phase),
            start_time: start.map(|s| Time(at(s))),
            completion_time: end.map(|s| Time(at(s))),
            ..BuildStatus::default()
        }
    }

    #[test]
    fn a_run_is_finished_once_when_its_final_phase_is_first_written() {
        let running = status(Phase::Running, Some(0), None);
        let done = status(Phase::Succeeded, Some(0), Some(90));
        assert_eq!(
            finished(Some(&running), Some(&done)),
            Some((Phase::Succeeded, Some(Duration::from_secs(90))))
        );
        // Rewriting the finished run (history trimmed, a message) is not a new finish.
        assert_eq!(finished(Some(&done), Some(&done)), None);
        // Nothing written, or a phase that is not final.
        assert_eq!(finished(Some(&running), None), None);
        assert_eq!(finished(None, Some(&running)), None);
    }

    #[test]
    fn a_start_reports_its_wait_in_the_queue_and_a_retry_none() {
        use crate::crd::condition::{ConditionStatus, set_condition};
        let now = at(100);
        assert_eq!(queue_wait(None, now), Some(Duration::ZERO));
        let mut queued = BuildStatus {
            phase: Some(Phase::Pending),
            ..BuildStatus::default()
        };
        set_condition(
            &mut queued.conditions,
            CONDITION_SUCCEEDED,
            ConditionStatus::Unknown,
            Reason::Queued,
            "2nd in namespace a; cluster limit 5 reached",
            Some(1),
            at(40),
        );
        assert_eq!(
            queue_wait(Some(&queued), now),
            Some(Duration::from_secs(60))
        );
        // A retry after a failed attempt waited for its backoff, not in a queue.
        let mut retrying = status(Phase::Pending, Some(0), None);
        retrying.attempt = 1;
        assert_eq!(queue_wait(Some(&retrying), now), None);
        // A rerun of a finished Build that starts at once.
        let mut done = status(Phase::Succeeded, Some(0), Some(50));
        done.attempt = 1;
        assert_eq!(queue_wait(Some(&done), now), Some(Duration::ZERO));
    }

    #[test]
    fn a_rerun_that_fails_again_at_once_is_a_new_finish_without_a_duration() {
        let failed = status(Phase::Failed, None, Some(10));
        let again = status(Phase::Failed, None, Some(20));
        assert_eq!(
            finished(Some(&failed), Some(&again)),
            Some((Phase::Failed, None))
        );
        assert_eq!(finished(None, Some(&again)), Some((Phase::Failed, None)));
    }
}
