//! Build logs kept in the cache: whose log is owed, the call that stores it, the tail a
//! long log is cut to, and the deletion of logs the Build no longer keeps (pure).
//!
//! # When a log is stored
//! When an attempt ends (any result), while its pod still exists, the controller reads the
//! log of the pod's one main container (`build`, or `index` for the index pod of a native
//! multi-platform attempt) once and stores its last [`Config::log_max_bytes`] in the cache
//! as an OCI artifact, `[<path>/]<namespace>/kiln_logs:build-<uid>-<attempt>`, through the
//! admin API. The attempt's record then says where (`status.attempts[].log`), and `kubectl
//! kiln logs` reads it there once the pod is gone.
//!
//! # Never in the way
//! Like the cache leases ([`super::cache_lease`]), a store never fails or delays the
//! Build: the phase is written first, the call's outcome goes to the ledger, a failure is
//! retried with the controller's backoff, and its first failure is a `CacheUnavailable`
//! Warning Event. What is owed is read from the status (an ended attempt without `log`
//! whose pod is still there), so a restart repeats a store that was not recorded; storing
//! the same log again gives the same artifact. The sweeper keeps a finished pod whose log
//! is still owed up to [`LOG_HOLD`] past its retention; a pod stopped by the controller
//! (cancel, supersede, timeout) is read in the plan that deletes it, before the delete.
//!
//! # How long a log lives
//! As long as the Build's attempt history keeps the attempt: an attempt that leaves the
//! history hands its log to `status.expiredLogs`, whose deletions are retried until
//! confirmed, and the finalizer deletes every log the status still names. The cache's
//! garbage collector never evicts a `kiln_logs` tag by itself.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::base_images::split_tag;
use super::buildkit::namespace_repository_prefix;
use super::cache_ledger::CallState;
use super::config::Config;
use super::plan::{Action, CallPlan, OUTCOME_RECHECK, Recheck, wait_until};
use super::podstate::{BUILD_CONTAINER, INDEX_CONTAINER};
use crate::cacheapi::log::{
    ANNOTATION_ATTEMPT, ANNOTATION_ENDED, ANNOTATION_NAME, ANNOTATION_NAMESPACE, ANNOTATION_POD,
    ANNOTATION_RESULT, ANNOTATION_STARTED, ANNOTATION_UID,
};
use crate::crd::{AttemptRecord, AttemptResult, Build, BuildStatus};
use crate::oci::name::{RepoName, Tag};
use crate::store::gc::LOGS_REPOSITORY;

/// How long past its retention the sweeper keeps a finished pod whose log could not be
/// stored yet (the cache service was unreachable).
pub const LOG_HOLD: Duration = Duration::from_secs(60 * 60);

/// Most entries of `status.expiredLogs`.
pub const MAX_EXPIRED_LOGS: usize = 64;

/// Whether logs are stored: a cache service, its admin API, and a size above 0.
pub fn enabled(config: &Config) -> bool {
    config.cache_leases && config.cache_service.is_some() && config.log_max_bytes > 0
}

/// The logs repository of the Build's namespace (`[<path>/]<namespace>/kiln_logs`).
pub fn logs_repository(build: &Build, config: &Config) -> Option<String> {
    namespace_repository_prefix(build, config).map(|ns| format!("{ns}/{LOGS_REPOSITORY}"))
}

/// The tag of attempt `attempt`'s log of the Build with UID `uid`.
pub fn log_tag(uid: &str, attempt: u32) -> String {
    format!("build-{uid}-{attempt}")
}

/// The ledger key of the store of attempt `attempt`'s log.
pub fn log_key(uid: &str, attempt: u32) -> String {
    format!("build-{uid}-log-{attempt}")
}

/// The ledger key of the deletion of the stored log `<repository>:<tag>`.
pub fn log_deletion_key(uid: &str, reference: &str) -> String {
    format!("build-{uid}-log-delete-{reference}")
}

/// The status of the container whose log is the attempt's: `build` (an init container
/// in a signed attempt, which signs after it), or `index` on an index pod.
fn main_status(pod: &Pod) -> Option<&ContainerStatus> {
    let status = pod.status.as_ref()?;
    status
        .init_container_statuses
        .iter()
        .chain(status.container_statuses.iter())
        .flatten()
        .find(|c| c.name == BUILD_CONTAINER || c.name == INDEX_CONTAINER)
}

/// The name of the pod's main container, once it has a status.
pub fn main_container(pod: &Pod) -> Option<&str> {
    main_status(pod).map(|c| c.name.as_str())
}

/// Whether the pod's main container has started, so that it has a log to read.
pub fn has_log(pod: &Pod) -> bool {
    main_status(pod).is_some_and(|c| {
        let started = c
            .state
            .as_ref()
            .is_some_and(|s| s.running.is_some() || s.terminated.is_some());
        let ended_before = c
            .last_state
            .as_ref()
            .is_some_and(|s| s.terminated.is_some());
        started || ended_before
    })
}

/// Records the logs the ledger says were stored, and plans the stores and deletions that
/// are due, for the Build's live status.
pub fn plan(
    build: &Build,
    status: &mut BuildStatus,
    pods: &[Pod],
    ledger: &BTreeMap<String, CallState>,
    now: Timestamp,
    config: &Config,
) -> CallPlan {
    let mut plan = CallPlan::default();
    if !enabled(config) {
        return plan;
    }
    let Some(repository) = logs_repository(build, config).and_then(|r| RepoName::parse(&r).ok())
    else {
        return plan;
    };
    let uid = build.metadata.uid.as_deref().unwrap_or_default();
    let idle = CallState::default();
    for record in &mut status.attempts {
        if record.completion_time.is_none() || record.log.is_some() {
            continue;
        }
        let key = log_key(uid, record.attempt);
        let state = ledger.get(&key).unwrap_or(&idle);
        if let Some(stored) = &state.stored_log {
            record.log = Some(stored.clone());
            continue;
        }
        let Some(pod) = readable_pod(pods, record) else {
            continue;
        };
        if !state.may_call(now) {
            plan.recheck = plan.recheck.min(wait_until(now, state.retry_at));
            continue;
        }
        let Ok(tag) = Tag::parse(&log_tag(uid, record.attempt)) else {
            continue;
        };
        plan.actions.push(Action::StoreLog {
            key,
            pod: record.pod_name.clone(),
            container: main_container(pod).unwrap_or_default().to_owned(),
            repository: repository.clone(),
            tag,
            annotations: annotations(build, record),
            max_bytes: config.log_max_bytes,
        });
        plan.recheck = plan.recheck.min(Recheck::After(OUTCOME_RECHECK));
    }

    status.expired_logs.retain(|reference| {
        !ledger
            .get(&log_deletion_key(uid, reference))
            .is_some_and(|s| s.done)
    });
    for reference in &status.expired_logs {
        let key = log_deletion_key(uid, reference);
        let state = ledger.get(&key).unwrap_or(&idle);
        let Some((repository, tag)) = split_reference(reference) else {
            continue;
        };
        if state.may_call(now) {
            plan.actions.push(Action::DeleteCacheTag {
                key,
                repository,
                tag,
            });
            plan.recheck = plan.recheck.min(Recheck::After(OUTCOME_RECHECK));
        } else {
            plan.recheck = plan.recheck.min(wait_until(now, state.retry_at));
        }
    }
    plan
}

/// Hands the stored logs of attempts that left the history to `status.expiredLogs`, to be
/// deleted. The list is bounded; past its bound the oldest are forgotten (and left to the
/// namespace's cleanup).
pub fn expire(status: &mut BuildStatus, left_history: &[AttemptRecord]) {
    for record in left_history {
        if let Some(log) = &record.log {
            let reference = format!("{}:{}", log.repository, log.tag);
            if !status.expired_logs.contains(&reference) {
                status.expired_logs.push(reference);
            }
        }
    }
    let len = status.expired_logs.len();
    if len > MAX_EXPIRED_LOGS {
        status.expired_logs.drain(..len - MAX_EXPIRED_LOGS);
    }
}

/// The deletions the finalizer owes for stored logs: every log the status names, with its
/// ledger key.
pub fn owed_deletions(build: &Build) -> Vec<(String, RepoName, Tag)> {
    let uid = build.metadata.uid.as_deref().unwrap_or_default();
    let Some(status) = build.status.as_ref() else {
        return Vec::new();
    };
    let recorded = status
        .attempts
        .iter()
        .filter_map(|a| a.log.as_ref())
        .map(|log| format!("{}:{}", log.repository, log.tag));
    let mut references: Vec<String> = recorded.chain(status.expired_logs.clone()).collect();
    references.sort();
    references.dedup();
    references
        .into_iter()
        .filter_map(|reference| {
            let (repository, tag) = split_reference(&reference)?;
            Some((log_deletion_key(uid, &reference), repository, tag))
        })
        .collect()
}

/// Whether the sweeper must keep the finished pod `pod` of attempt `record` past its
/// retention time `expiry`, because its log is still owed.
pub fn holds_pod(
    record: Option<&AttemptRecord>,
    pod: &Pod,
    expiry: Timestamp,
    now: Timestamp,
    config: &Config,
) -> bool {
    enabled(config)
        && record.is_some_and(|r| {
            r.completion_time.is_some() && r.log.is_none() && r.pod_name == pod.name_any()
        })
        && has_log(pod)
        && now < super::retention::after(expiry, LOG_HOLD)
}

/// The pod of an ended attempt whose log can still be read: the recorded one (by UID once
/// seen), not being deleted, with a main container that started.
fn readable_pod<'p>(pods: &'p [Pod], record: &AttemptRecord) -> Option<&'p Pod> {
    pods.iter().find(|pod| {
        pod.name_any() == record.pod_name
            && record
                .pod_uid
                .as_ref()
                .is_none_or(|uid| pod.metadata.uid.as_ref() == Some(uid))
            && pod.metadata.deletion_timestamp.is_none()
            && has_log(pod)
    })
}

/// The stored artifact's annotations: whose log it is, how the attempt ended and when.
fn annotations(build: &Build, record: &AttemptRecord) -> BTreeMap<String, String> {
    let mut map = BTreeMap::from([
        (
            ANNOTATION_NAMESPACE.to_owned(),
            build.namespace().unwrap_or_default(),
        ),
        (ANNOTATION_NAME.to_owned(), build.name_any()),
        (
            ANNOTATION_UID.to_owned(),
            build.metadata.uid.clone().unwrap_or_default(),
        ),
        (ANNOTATION_ATTEMPT.to_owned(), record.attempt.to_string()),
        (ANNOTATION_POD.to_owned(), record.pod_name.clone()),
        (
            ANNOTATION_STARTED.to_owned(),
            record.start_time.0.to_string(),
        ),
    ]);
    if let Some(result) = record.result {
        let result = match result {
            AttemptResult::Succeeded => "Succeeded",
            AttemptResult::Failed => "Failed",
            AttemptResult::Cancelled => "Cancelled",
        };
        map.insert(ANNOTATION_RESULT.to_owned(), result.to_owned());
    }
    if let Some(ended) = &record.completion_time {
        map.insert(ANNOTATION_ENDED.to_owned(), ended.0.to_string());
    }
    map
}

/// `<repository>:<tag>` back into its parts.
fn split_reference(reference: &str) -> Option<(RepoName, Tag)> {
    let (repository, tag) = split_tag(reference)?;
    Some((RepoName::parse(repository).ok()?, Tag::parse(tag).ok()?))
}

/// The last bytes of a log read in pieces: at most `max` bytes are kept, with the number
/// cut from the head. Memory stays under `max` plus a quarter, whatever the log's length.
#[derive(Debug)]
pub struct Tail {
    max: usize,
    buffer: Vec<u8>,
    cut: u64,
}

impl Tail {
    /// A tail of at most `max` bytes.
    pub fn new(max: u64) -> Self {
        Self {
            max: usize::try_from(max).unwrap_or(usize::MAX),
            buffer: Vec::new(),
            cut: 0,
        }
    }

    /// Appends the next piece of the log.
    pub fn push(&mut self, piece: &[u8]) {
        self.buffer.extend_from_slice(piece);
        if self.buffer.len() > self.max.saturating_add(self.max / 4) {
            self.trim();
        }
    }

    fn trim(&mut self) {
        let excess = self.buffer.len().saturating_sub(self.max);
        if excess > 0 {
            self.buffer.drain(..excess);
            self.cut += excess as u64;
        }
    }

    /// The log as kept, and the bytes cut from its head. A cut log starts at the first
    /// whole line after the cut, behind a line that says how much was cut.
    pub fn finish(mut self) -> (Vec<u8>, u64) {
        self.trim();
        if self.cut == 0 {
            return (self.buffer, 0);
        }
        // Room for the marker, so that what is kept stays within `max`.
        let room = MARKER_ROOM.min(self.buffer.len());
        self.buffer.drain(..room);
        self.cut += room as u64;
        let partial = self
            .buffer
            .iter()
            .position(|b| *b == b'\n')
            .map_or(self.buffer.len(), |at| at + 1);
        self.buffer.drain(..partial);
        let cut = self.cut + partial as u64;
        let mut kept = cut_marker(cut).into_bytes();
        kept.extend_from_slice(&self.buffer);
        (kept, cut)
    }
}

/// What the cut marker may take of a cut log's `max` bytes.
const MARKER_ROOM: usize = 128;

/// The line that starts a log whose first `cut` bytes were not kept.
pub fn cut_marker(cut: u64) -> String {
    format!(
        "[kiln: the first {} of this log were cut; its last part is kept]\n",
        crate::units::format_binary_size(cut)
    )
}

#[cfg(test)]
mod tests;
