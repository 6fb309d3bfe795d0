//! The base images a Build was built on, and rebuilds when one moves: when to read them
//! from the cache, when to check their tags upstream, and whether a change starts an
//! attempt (pure).
//!
//! # What is recorded
//! The cache service remembers, per Build UID, which mirrored manifests the Build's pods
//! resolved by tag (each request carries the attempt's token, whose subject is the UID).
//! When an attempt succeeds, the controller reads the resolutions made since the attempt
//! started from the admin API and writes them to `status.baseImages` (`image:tag` and
//! digest). Bases pulled from a registry directly, or named by digest, are not seen by the
//! mirror and are not listed.
//!
//! # The trigger
//! With `spec.triggers.baseImageChanged`, a finished Build's base tags are resolved
//! upstream again every [`Config::base_image_check_interval`] (give or take a tenth,
//! spread by the Build's UID so that Builds made together do not check together), through
//! the mirror's revalidation (a `HEAD` upstream). When a tag points at another digest than
//! the one the last successful attempt built on, one new attempt starts, with a
//! `BaseImageChanged` Event naming both digests. `status.baseImageCheck.lastTrigger`
//! remembers the change: the same new digest never starts a second attempt, so a triggered
//! attempt that fails waits for the base to move again (or for a rerun), and a success
//! records the new digests, which then are the ones watched.
//!
//! # Never in the way
//! As for leases and logs, the calls go through the ledger: a failure is retried with the
//! controller's backoff, its first failure is a `CacheUnavailable` Warning Event, and a
//! Build never fails or waits because of them.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use sha2::{Digest as _, Sha256};

use super::cache_ledger::CallState;
use super::config::Config;
use super::plan::{Action, CallPlan, OUTCOME_RECHECK, Recheck, wait_until};
use crate::crd::{AttemptResult, BaseImageChange, BaseImageCheck, Build, BuildStatus};

/// Most entries of `status.baseImages`.
pub const MAX_BASE_IMAGES: usize = 64;

/// Whether base images are read at all: a cache service and its admin API.
pub fn enabled(config: &Config) -> bool {
    config.cache_leases && config.cache_service.is_some()
}

/// Whether the Build asks to be rebuilt when a base image moves.
pub fn watched(build: &Build) -> bool {
    build
        .spec
        .triggers
        .as_ref()
        .is_some_and(|t| t.base_image_changed)
}

/// The ledger key of the read of attempt `attempt`'s base images.
pub fn read_key(uid: &str, attempt: u32) -> String {
    format!("build-{uid}-bases-{attempt}")
}

/// The ledger key of the checks of the Build's base image tags.
pub fn check_key(uid: &str) -> String {
    format!("build-{uid}-bases-check")
}

/// The ledger key of the finalizer's deletion of the cache's record of the Build's base
/// images.
pub fn forget_key(uid: &str) -> String {
    format!("build-{uid}-bases-forget")
}

/// The check interval for the Build with UID `uid`: `interval` give or take a tenth, the
/// same for a UID every time.
pub fn jittered(interval: Duration, uid: &str) -> Duration {
    let hash = Sha256::digest(uid.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    // A fraction in [0, 1) from the hash's first 53 bits.
    let fraction = (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64;
    interval.mul_f64(0.9 + 0.2 * fraction)
}

/// The latest successful attempt: its number and when it started.
fn latest_success(status: &BuildStatus) -> Option<(u32, Timestamp)> {
    status
        .attempts
        .iter()
        .filter(|a| a.result == Some(AttemptResult::Succeeded))
        .max_by_key(|a| a.attempt)
        .map(|a| (a.attempt, a.start_time.0))
}

/// Takes in a check of the tags the ledger holds, if it is newer than the last one the
/// status recorded, and returns the change that must start an attempt, if any: the first
/// base (by image) whose tag now points at a digest that is neither the one built on nor
/// the one the last trigger already started an attempt for. Only for a finished Build
/// that watches its bases and has no new run requested.
pub fn take_check(
    build: &Build,
    status: &mut BuildStatus,
    ledger: &BTreeMap<String, CallState>,
    config: &Config,
) -> Option<BaseImageChange> {
    if !enabled(config)
        || !watched(build)
        || !status.phase.is_some_and(|p| p.is_terminal())
        || status.base_images.is_empty()
    {
        return None;
    }
    let uid = build.metadata.uid.as_deref().unwrap_or_default();
    let state = ledger.get(&check_key(uid))?;
    let resolved = state.resolved_bases.as_ref()?;
    let at = state.touched?;
    let check = status
        .base_image_check
        .get_or_insert_with(BaseImageCheck::default);
    if check.checked_at.as_ref().is_some_and(|t| t.0 >= at) {
        return None;
    }
    check.checked_at = Some(Time(at));
    let already = check.last_trigger.clone();
    status.base_images.iter().find_map(|base| {
        let now = resolved.get(&base.image)?;
        let retriggered = already
            .as_ref()
            .is_some_and(|t| t.image == base.image && &t.to == now);
        (now != &base.digest && !retriggered).then(|| BaseImageChange {
            image: base.image.clone(),
            from: base.digest.clone(),
            to: now.clone(),
            attempt: 0,
        })
    })
}

/// Records the base images the ledger read for the latest successful attempt, and plans
/// the read and the checks that are due.
pub fn plan(
    build: &Build,
    status: &mut BuildStatus,
    ledger: &BTreeMap<String, CallState>,
    now: Timestamp,
    config: &Config,
) -> CallPlan {
    let mut plan = CallPlan::default();
    if !enabled(config) {
        return plan;
    }
    let uid = build.metadata.uid.as_deref().unwrap_or_default();
    let idle = CallState::default();
    if let Some((attempt, started)) = latest_success(status)
        && status.base_image_check.as_ref().map(|c| c.attempt) != Some(attempt)
    {
        let key = read_key(uid, attempt);
        let state = ledger.get(&key).unwrap_or(&idle);
        if let Some(bases) = &state.bases {
            let mut bases = bases.clone();
            bases.truncate(MAX_BASE_IMAGES);
            status.base_images = bases;
            let check = status
                .base_image_check
                .get_or_insert_with(BaseImageCheck::default);
            check.attempt = attempt;
            check.checked_at = Some(Time(state.touched.unwrap_or(now)));
        } else if state.may_call(now) {
            plan.actions.push(Action::ReadBaseImages {
                key,
                uid: uid.to_owned(),
                since: started,
            });
            plan.recheck = plan.recheck.min(Recheck::After(OUTCOME_RECHECK));
            return plan;
        } else {
            plan.recheck = plan.recheck.min(wait_until(now, state.retry_at));
            return plan;
        }
    }

    let open = status.attempts.iter().any(|a| a.completion_time.is_none());
    if !watched(build) || status.base_images.is_empty() || open {
        return plan;
    }
    let last = status
        .base_image_check
        .as_ref()
        .and_then(|c| c.checked_at.as_ref())
        .map_or(Timestamp::UNIX_EPOCH, |t| t.0);
    let due = super::retention::after(last, jittered(config.base_image_check_interval, uid));
    let key = check_key(uid);
    let state = ledger.get(&key).unwrap_or(&idle);
    if now < due {
        plan.recheck = plan.recheck.min(wait_until(now, Some(due)));
    } else if !state.may_call(now) {
        plan.recheck = plan.recheck.min(wait_until(now, state.retry_at));
    } else {
        plan.actions.push(Action::CheckBaseImages {
            key,
            images: status.base_images.iter().map(|b| b.image.clone()).collect(),
        });
        plan.recheck = plan.recheck.min(Recheck::After(OUTCOME_RECHECK));
    }
    plan
}

/// The message and Event note of a change that starts attempt `attempt`.
pub fn change_message(change: &BaseImageChange, attempt: u32) -> String {
    format!(
        "base image {} moved from {} to {}: attempt {attempt} rebuilds on it",
        change.image, change.from, change.to
    )
}

/// `image:tag` split at the tag (the last `:` not followed by a `/`, so that a registry
/// port is not taken for one).
pub fn split_tag(reference: &str) -> Option<(&str, &str)> {
    let (image, tag) = reference.rsplit_once(':')?;
    (!tag.contains('/') && !image.is_empty() && !tag.is_empty()).then_some((image, tag))
}

#[cfg(test)]
mod tests;
