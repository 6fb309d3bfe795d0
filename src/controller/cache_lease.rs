//! Cache leases of attempts, and the finalizer's cache cleanup: names, targets, and the
//! admin API calls one decision plans (pure).
//!
//! # Leases
//! While an attempt runs, it holds the lease `build-<uid>-<attempt>` on the cache it
//! imports, so that the cache's garbage collector never removes it mid-build. The first
//! `PUT` names the cache tag, which the cache service resolves to digests; renewals name
//! those digests, so a push to the tag during the build never moves the lease off what the
//! build imports. A lease holds for [`Config::lease_ttl`] and is renewed once half of it is
//! left; when the attempt ends it is released.
//!
//! # Where an owed release is remembered
//! In the Build's status. `status.cacheLeases` lists a lease from the decision that plans its
//! first `PUT` (the status is written before the call, so a crash in between leaves a
//! listed lease that was never taken, whose release is a harmless no-op) until a release is
//! confirmed or the lease has lapsed by itself: when its attempt ends, the record gets
//! `lapsesAt`, one TTL after the last moment it could have been renewed. A controller
//! restart loses nothing: the in-memory [`ledger`](super::cache_ledger) only says which calls were
//! confirmed and when a failed one may be tried again, and after a restart renewals and
//! releases are simply repeated (both are idempotent).
//!
//! # Never in the way, never hot
//! Calls never fail a plan: a failure goes to the ledger, which holds the next try back by
//! the controller's retry backoff (`--retry-backoff`, doubling up to `--retry-backoff-max`),
//! and the first failure of a streak is a `CacheUnavailable` Warning Event. The build runs
//! without its lease meanwhile.
//!
//! # Finalizer
//! Deleting a Build releases the leases its status lists and deletes its own cache tag
//! (`<ns>/<build>:buildcache`; a namespace's shared cache stays) and the tag of its uploaded
//! context (`<ns>/kiln_contexts:build-<uid>`; the content stays while another Build's tag
//! holds it, and goes with the cache's garbage collection otherwise), the tags of its
//! stored build logs ([`super::build_log`]), and the cache's record of the base images it
//! resolved ([`super::base_images`]). A cache service that stays
//! unreachable does not hold the Build forever: [`CLEANUP_DEADLINE`] after the deletion began,
//! the finalizer lets go with a Warning Event that says what was left (the leases lapse by
//! themselves; the tag is left to the cache's own prune).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::buildkit::{CACHE_TAG, build_cache_repository, cache_repository};
use super::cache_ledger::CallState;
use super::config::Config;
use super::local_context::{build_context_tag, contexts_repository};
use super::plan::{Action, CallPlan, OUTCOME_RECHECK, Recheck, wait_until};
use crate::cacheapi::admin::LeaseTarget;
use crate::crd::status::MAX_CACHE_LEASES;
use crate::crd::{Build, BuildStatus};
use crate::oci::name::{RepoName, Tag};

/// How long the finalizer keeps trying to clean up the cache before it lets the Build go.
pub const CLEANUP_DEADLINE: Duration = Duration::from_secs(10 * 60);

/// The lease of attempt `attempt` of the Build with UID `uid`.
pub fn lease_name(uid: &str, attempt: u32) -> String {
    format!("build-{uid}-{attempt}")
}

/// The ledger key of the finalizer's deletion of the Build's cache tag.
pub fn tag_key(uid: &str) -> String {
    format!("build-{uid}-tag")
}

/// The ledger key of the finalizer's deletion of the Build's uploaded context's tag.
pub fn context_tag_key(uid: &str) -> String {
    format!("build-{uid}-context-tag")
}

/// The prefix of every ledger key of the Build with UID `uid`.
pub fn ledger_prefix(uid: &str) -> String {
    format!("build-{uid}-")
}

/// Brings `status.cacheLeases` of a live Build up to date and plans the calls that are
/// due: take or renew the open attempt's lease, release those of ended attempts.
pub fn plan(
    build: &Build,
    status: &mut BuildStatus,
    ledger: &BTreeMap<String, CallState>,
    now: Timestamp,
    config: &Config,
) -> CallPlan {
    let uid = build.metadata.uid.as_deref().unwrap_or_default();
    let wanted = status
        .current_attempt()
        .filter(|a| a.completion_time.is_none())
        .filter(|_| config.cache_leases)
        .and_then(|a| {
            let tags = leased_tags(build, config);
            (!tags.is_empty()).then_some((a.attempt, tags))
        });
    let wanted_name = wanted
        .as_ref()
        .map(|(attempt, _)| lease_name(uid, *attempt));

    // The last renewal of a lease that is no longer wanted was at most now.
    let lapses_at = Time(later(now, config.lease_ttl));
    for record in &mut status.cache_leases {
        if Some(&record.name) != wanted_name.as_ref() && record.lapses_at.is_none() {
            record.lapses_at = Some(lapses_at.clone());
        }
    }
    status.cache_leases.retain(|record| {
        let released = ledger.get(&record.name).is_some_and(|s| s.done);
        let lapsed = record.lapses_at.as_ref().is_some_and(|t| t.0 <= now);
        Some(&record.name) == wanted_name.as_ref() || !(released || lapsed)
    });
    if let (Some((attempt, _)), Some(name)) = (&wanted, &wanted_name)
        && !status.cache_leases.iter().any(|r| &r.name == name)
    {
        status.cache_leases.push(crate::crd::CacheLease {
            name: name.clone(),
            attempt: *attempt,
            lapses_at: None,
        });
    }
    // A bound for the schema's sake; only reachable if releases fail for many attempts in
    // less than a lease's lifetime. The oldest go first: they lapse first.
    let len = status.cache_leases.len();
    if len > MAX_CACHE_LEASES {
        status.cache_leases.drain(..len - MAX_CACHE_LEASES);
    }

    let mut plan = CallPlan::default();
    if !config.cache_leases {
        return plan;
    }
    let idle = CallState::default();
    if let (Some((_, tags)), Some(name)) = (&wanted, &wanted_name) {
        let state = ledger.get(name).unwrap_or(&idle);
        let renew_at = state
            .held_until
            .map(|until| earlier(until, config.lease_ttl / 2));
        if !state.may_call(now) {
            plan.recheck = plan.recheck.min(wait_until(now, state.retry_at));
        } else if renew_at.is_none_or(|at| now >= at) {
            plan.actions.push(put_lease(name, tags, state, now, config));
            plan.recheck = plan.recheck.min(Recheck::After(OUTCOME_RECHECK));
        } else {
            plan.recheck = plan.recheck.min(wait_until(now, renew_at));
        }
    }
    for record in &status.cache_leases {
        if Some(&record.name) == wanted_name.as_ref() {
            continue;
        }
        let state = ledger.get(&record.name).unwrap_or(&idle);
        if state.may_call(now) {
            plan.actions.push(Action::ReleaseLease {
                name: record.name.clone(),
            });
            plan.recheck = plan.recheck.min(Recheck::After(OUTCOME_RECHECK));
        } else {
            let lapses = record.lapses_at.as_ref().map(|t| t.0);
            let next = state.retry_at.min(lapses);
            plan.recheck = plan.recheck.min(wait_until(now, next));
        }
    }
    plan
}

/// The tags an open attempt's lease holds: the Build's cache tag, when it uses the build
/// cache, and its uploaded context's tag, when it has a `spec.source.local` (so that a
/// retry still finds the context it does not upload again).
pub fn leased_tags(build: &Build, config: &Config) -> Vec<(RepoName, Tag)> {
    let cache = cache_repository(build, config)
        .and_then(|r| RepoName::parse(&r).ok())
        .zip(Tag::parse(CACHE_TAG).ok());
    cache
        .into_iter()
        .chain(context_tag(build, config))
        .collect()
}

/// The tag that keeps a `spec.source.local` Build's uploaded context; `None` for other
/// sources or without a cache service.
fn context_tag(build: &Build, config: &Config) -> Option<(RepoName, Tag)> {
    build.spec.source.local.as_ref()?;
    let repository = RepoName::parse(&contexts_repository(build, config)?).ok()?;
    Some((repository, Tag::parse(&build_context_tag(build)).ok()?))
}

fn put_lease(
    name: &str,
    tags: &[(RepoName, Tag)],
    state: &CallState,
    now: Timestamp,
    config: &Config,
) -> Action {
    // A renewal pins what the first take resolved. Without a lease still held (a first
    // take, a restart that emptied the ledger, a lease that lapsed while the cache service
    // was away and whose digests may be gone) the tag is resolved again.
    let held = state.held_until.is_some_and(|until| until > now);
    let targets = if held {
        state
            .digests
            .iter()
            .map(|digest| LeaseTarget::Digest { digest: *digest })
            .collect()
    } else {
        tags.iter()
            .map(|(repository, tag)| LeaseTarget::Tag {
                repository: repository.clone(),
                tag: tag.clone(),
            })
            .collect()
    };
    Action::PutLease {
        name: name.to_owned(),
        targets,
        ttl: config.lease_ttl,
        renewal: held,
    }
}

/// What the finalizer does about the cache.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cleanup {
    /// The admin API calls that are due.
    pub actions: Vec<Action>,
    /// Whether something is still owed (the finalizer waits for it).
    pub pending: bool,
    /// When to look again.
    pub recheck: Recheck,
    /// Set when the deadline passed with something still owed: what was left, and why
    /// that is harmless.
    pub gave_up: Option<String>,
}

/// The finalizer's cache cleanup: release every lease the status lists that has neither
/// been released nor lapsed, and delete the Build's cache tag, until [`CLEANUP_DEADLINE`].
pub fn cleanup(
    build: &Build,
    ledger: &BTreeMap<String, CallState>,
    now: Timestamp,
    config: &Config,
) -> Cleanup {
    let mut cleanup = Cleanup::default();
    if !config.cache_leases {
        return cleanup;
    }
    let uid = build.metadata.uid.as_deref().unwrap_or_default();
    let idle = CallState::default();
    let state = |key: &str| ledger.get(key).unwrap_or(&idle).clone();

    let mut owed: Vec<(Action, CallState, String)> = Vec::new();
    for record in build.status.iter().flat_map(|s| &s.cache_leases) {
        let lapsed = record.lapses_at.as_ref().is_some_and(|t| t.0 <= now);
        let state = state(&record.name);
        if !state.done && !lapsed {
            let lapses = record
                .lapses_at
                .as_ref()
                .map_or_else(|| "within its TTL".to_owned(), |t| format!("by {}", t.0));
            owed.push((
                Action::ReleaseLease {
                    name: record.name.clone(),
                },
                state,
                format!("lease {} (lapses by itself {lapses})", record.name),
            ));
        }
    }
    let cache_tag = build_cache_repository(build, config)
        .and_then(|r| RepoName::parse(&r).ok())
        .zip(Tag::parse(CACHE_TAG).ok())
        .map(|tag| (tag_key(uid), tag));
    let context = context_tag(build, config).map(|tag| (context_tag_key(uid), tag));
    let logs = super::build_log::owed_deletions(build)
        .into_iter()
        .map(|(key, repository, tag)| (key, (repository, tag)));
    for (key, (repository, tag)) in cache_tag.into_iter().chain(context).chain(logs) {
        let state = state(&key);
        if !state.done {
            let what = format!("tag {repository}:{tag} (left to the cache's prune)");
            owed.push((
                Action::DeleteCacheTag {
                    key,
                    repository,
                    tag,
                },
                state,
                what,
            ));
        }
    }
    let read_bases = build
        .status
        .as_ref()
        .is_some_and(|s| s.base_image_check.is_some());
    let bases_key = super::base_images::forget_key(uid);
    let bases_state = state(&bases_key);
    if read_bases && !bases_state.done {
        owed.push((
            Action::ForgetBaseImages {
                key: bases_key,
                uid: uid.to_owned(),
            },
            bases_state,
            "the record of its base images (expires by itself after 30 days)".to_owned(),
        ));
    }
    if owed.is_empty() {
        return cleanup;
    }

    let deadline = build
        .metadata
        .deletion_timestamp
        .as_ref()
        .map_or(now, |t| later(t.0, CLEANUP_DEADLINE));
    if now >= deadline {
        let left: Vec<String> = owed.iter().map(|(_, _, what)| what.clone()).collect();
        let cause = owed
            .iter()
            .find_map(|(_, state, _)| state.last_error.clone())
            .unwrap_or_else(|| "no answer".to_owned());
        cleanup.gave_up = Some(format!(
            "cache cleanup given up {} after deletion: {}; last error: {cause}",
            crate::units::format_duration(CLEANUP_DEADLINE),
            left.join(", ")
        ));
        return cleanup;
    }
    cleanup.pending = true;
    cleanup.recheck = wait_until(now, Some(deadline));
    for (action, state, _) in owed {
        if state.may_call(now) {
            cleanup.actions.push(action);
            cleanup.recheck = cleanup.recheck.min(Recheck::After(OUTCOME_RECHECK));
        } else {
            cleanup.recheck = cleanup.recheck.min(wait_until(now, state.retry_at));
        }
    }
    cleanup
}

fn later(at: Timestamp, by: Duration) -> Timestamp {
    super::retention::after(at, by)
}

fn earlier(at: Timestamp, by: Duration) -> Timestamp {
    at.saturating_sub(SignedDuration::try_from(by).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MIN)
}

#[cfg(test)]
mod tests;
