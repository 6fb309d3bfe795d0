//! The Build's conditions (`Succeeded`, `Ready`) and the fixed set of reasons they carry (pure).
//!
//! Every state a Build can be in is named by exactly one [`Reason`]. The same reason appears
//! in the `Succeeded` and `Ready` conditions, in the attempt history, and on the Event that
//! announced the transition, so `kubectl get`, `kubectl describe` and `kubectl get events`
//! tell one story. `PodCreated` and `Running` have no Event of their own (see
//! [`Reason::is_announced`]): the status and the pod's Events say them.
//!
//! | reason | phase | `Succeeded` | meaning |
//! | --- | --- | --- | --- |
//! | `Queued` | Pending | Unknown | waiting for another Build of the same concurrency group |
//! | `Starting` | Pending | Unknown | waiting for the previous attempt's pod to terminate |
//! | `PodCreated` | Pending | Unknown | the build pod exists and is being scheduled or pulled |
//! | `WaitingForContext` | Pending | Unknown | the pod of a `source.local` Build waits for `kubectl kiln build --local` to upload the context (or for another pod of the attempt to store it) |
//! | `Running` | Running | Unknown | the build pod runs |
//! | `Succeeded` | Succeeded | True | the image was pushed; `status.output.digest` holds it |
//! | `BuildFailed` | Failed | False | the build itself failed (Dockerfile, OOM, no digest); not retried |
//! | `TimedOut` | Failed | False | the attempt ran longer than `spec.timeout`; not retried |
//! | `Cancelled` | Cancelled | False | `spec.cancel` was set |
//! | `Superseded` | Cancelled | False | a newer Build of a `CancelInProgress` group replaced this one |
//! | `InvalidSpec` | Failed | False | the spec is invalid in a way the schema cannot check |
//! | `SecretNotFound` | Failed | False | a referenced Secret does not exist |
//! | `PodEvicted` | Pending/Failed | Unknown/False | the pod was evicted or preempted; retried with backoff |
//! | `PodLost` | Pending/Failed | Unknown/False | the pod vanished or its node was lost; retried with backoff |
//! | `ImagePullFailed` | Pending/Failed | Unknown/False | the builder image could not be pulled; retried when transient |
//! | `PodCreateFailed` | Pending | Unknown | the API server refused the attempt's pod (a ResourceQuota, a LimitRange, an admission webhook); the message holds what it said, and the create is retried until `spec.timeout` |
//! | `NoNodeForPlatform` | Pending | Unknown | a `Native` build asks for a platform no node of the cluster has; the message names it, and the Build starts once such a node exists |
//! | `AssemblingIndex` | Running | Unknown | every platform of a `Native` build pushed its image; a short pod pushes the image index |
//! | `IndexPushFailed` | Failed | False | the image index of a `Native` build could not be pushed; the message says why |
//! | `SigningFailed` | Failed | False | `spec.signing`: the image was pushed but could not be signed (a key the Secret does not hold or cannot be read, a registry that refused the signature); the message says why; not retried |
//! | `BaseImageChanged` | Pending | Unknown | `spec.triggers.baseImageChanged`: a base image tag the last successful attempt resolved now points at another digest; the message names both, and a new attempt starts |
//!
//! An attempt superseded by a new generation or a rerun request is recorded in the history
//! with result `Cancelled` and reason `Superseded`; the Build itself goes on to a new attempt.
//!
//! Two reasons only ever appear on Events, never in a condition, because they say what the
//! controller did around a Build rather than where the Build is:
//!
//! | reason | type | meaning |
//! | --- | --- | --- |
//! | `GarbageCollected` | Normal | the orphan sweeper deleted leftovers of this Build (an earlier Build object of the same name, or an attempt that ended) |
//! | `CacheUnavailable` | Warning | a cache lease, release or cleanup failed; the build goes on, the call is retried with backoff |

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Type of the condition that says whether the build succeeded (Tekton and Knative style):
/// `Unknown` while it runs, then `True` or `False`.
pub const CONDITION_SUCCEEDED: &str = "Succeeded";

/// Type of the condition that says whether the Build's output is ready to use; what kstatus
/// based tools (Argo CD, Flux) wait on. `True` exactly when the phase is `Succeeded`.
pub const CONDITION_READY: &str = "Ready";

/// Why a Build is in its current state: one of a fixed set, documented with the Build API
/// (Queued, Starting, PodCreated, Running, Succeeded, BuildFailed, TimedOut, Cancelled,
/// Superseded, InvalidSpec, SecretNotFound, PodEvicted, PodLost, ImagePullFailed,
/// PodCreateFailed, NoNodeForPlatform, AssemblingIndex, IndexPushFailed, WaitingForContext,
/// BaseImageChanged, SigningFailed);
/// Events also carry
/// GarbageCollected and CacheUnavailable.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub enum Reason {
    /// Waiting for another Build of the same concurrency group.
    Queued,
    /// Waiting for the previous attempt's pod to terminate before the next one starts.
    Starting,
    /// The build pod was created and is being scheduled or pulled.
    PodCreated,
    /// The build pod runs.
    Running,
    /// The image was built and pushed.
    Succeeded,
    /// The build failed: a failing Dockerfile step, out of memory, or no valid digest.
    BuildFailed,
    /// The attempt ran longer than `spec.timeout`.
    TimedOut,
    /// `spec.cancel` was set.
    Cancelled,
    /// A newer generation, a rerun request or a newer Build of the group replaced this run.
    Superseded,
    /// The spec is invalid in a way the schema cannot check.
    InvalidSpec,
    /// A Secret named in the spec does not exist.
    SecretNotFound,
    /// The pod was evicted, preempted or disrupted.
    PodEvicted,
    /// The pod vanished or its node stopped reporting.
    PodLost,
    /// The builder image could not be pulled.
    ImagePullFailed,
    /// The API server refused to create the attempt's pod (a quota, a limit range, an
    /// admission webhook); the create is retried.
    PodCreateFailed,
    /// A `Native` build asks for a platform that no node of the cluster has.
    NoNodeForPlatform,
    /// Every platform of a `Native` build pushed; the image index is being pushed.
    AssemblingIndex,
    /// The image index of a `Native` build could not be pushed.
    IndexPushFailed,
    /// The pod of a `source.local` Build waits for the context's upload.
    WaitingForContext,
    /// A base image the last successful attempt used moved to another digest; a new
    /// attempt starts (`spec.triggers.baseImageChanged`).
    BaseImageChanged,
    /// The image was pushed but could not be signed (`spec.signing`).
    SigningFailed,
    /// Event only: the orphan sweeper deleted leftovers of this Build.
    GarbageCollected,
    /// Event only: a call to the cache service's admin API failed; the build goes on.
    CacheUnavailable,
}

impl Reason {
    /// Every reason, in declaration order (for documentation and exhaustive tests).
    pub const ALL: [Reason; 23] = [
        Reason::Queued,
        Reason::Starting,
        Reason::PodCreated,
        Reason::Running,
        Reason::Succeeded,
        Reason::BuildFailed,
        Reason::TimedOut,
        Reason::Cancelled,
        Reason::Superseded,
        Reason::InvalidSpec,
        Reason::SecretNotFound,
        Reason::PodEvicted,
        Reason::PodLost,
        Reason::ImagePullFailed,
        Reason::PodCreateFailed,
        Reason::NoNodeForPlatform,
        Reason::AssemblingIndex,
        Reason::IndexPushFailed,
        Reason::WaitingForContext,
        Reason::BaseImageChanged,
        Reason::SigningFailed,
        Reason::GarbageCollected,
        Reason::CacheUnavailable,
    ];

    /// The reason as it appears in conditions and Events.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Queued => "Queued",
            Reason::Starting => "Starting",
            Reason::PodCreated => "PodCreated",
            Reason::Running => "Running",
            Reason::Succeeded => "Succeeded",
            Reason::BuildFailed => "BuildFailed",
            Reason::TimedOut => "TimedOut",
            Reason::Cancelled => "Cancelled",
            Reason::Superseded => "Superseded",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::SecretNotFound => "SecretNotFound",
            Reason::PodEvicted => "PodEvicted",
            Reason::PodLost => "PodLost",
            Reason::ImagePullFailed => "ImagePullFailed",
            Reason::PodCreateFailed => "PodCreateFailed",
            Reason::NoNodeForPlatform => "NoNodeForPlatform",
            Reason::AssemblingIndex => "AssemblingIndex",
            Reason::IndexPushFailed => "IndexPushFailed",
            Reason::WaitingForContext => "WaitingForContext",
            Reason::BaseImageChanged => "BaseImageChanged",
            Reason::SigningFailed => "SigningFailed",
            Reason::GarbageCollected => "GarbageCollected",
            Reason::CacheUnavailable => "CacheUnavailable",
        }
    }

    /// Whether entering a state of this reason is announced by an Event.
    ///
    /// Every reason is, except the two steps inside an attempt that the status already
    /// shows and the pod's own Events (Scheduled, Pulled, Started) tell in more detail:
    /// `PodCreated`, `Running` and `AssemblingIndex`. Events then mark what the controller decided and how
    /// an attempt ended, at two API writes fewer per build.
    pub const fn is_announced(self) -> bool {
        !matches!(
            self,
            Reason::PodCreated | Reason::Running | Reason::AssemblingIndex
        )
    }

    /// Whether an Event carrying this reason is a `Warning` (something went wrong) rather
    /// than `Normal`.
    pub const fn is_warning(self) -> bool {
        match self {
            Reason::Queued
            | Reason::Starting
            | Reason::PodCreated
            | Reason::Running
            | Reason::AssemblingIndex
            | Reason::WaitingForContext
            | Reason::BaseImageChanged
            | Reason::Succeeded
            | Reason::Cancelled
            | Reason::Superseded
            | Reason::GarbageCollected => false,
            Reason::BuildFailed
            | Reason::TimedOut
            | Reason::InvalidSpec
            | Reason::SecretNotFound
            | Reason::PodEvicted
            | Reason::PodLost
            | Reason::ImagePullFailed
            | Reason::CacheUnavailable
            | Reason::PodCreateFailed
            | Reason::NoNodeForPlatform
            | Reason::IndexPushFailed
            | Reason::SigningFailed => true,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The three values of a Kubernetes condition's `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// Not known yet (the build is still going).
    Unknown,
}

impl ConditionStatus {
    /// The value as written in `status.conditions[].status`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

/// Sets the condition `type_` in `conditions`, keeping its `lastTransitionTime` when its
/// status does not change, so that rewriting the same state never looks like a transition.
/// Conditions stay sorted by type, whatever order they were found in.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: ConditionStatus,
    reason: Reason,
    message: &str,
    observed_generation: Option<i64>,
    now: Timestamp,
) {
    let status_text = status.as_str();
    let last_transition_time = conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status_text)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    conditions.retain(|c| c.type_ != type_);
    conditions.push(Condition {
        type_: type_.to_owned(),
        status: status_text.to_owned(),
        reason: reason.as_str().to_owned(),
        message: message.to_owned(),
        observed_generation,
        last_transition_time,
    });
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

/// Finds a condition by type.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn as_str_matches_serde_for_every_reason() {
        for reason in Reason::ALL {
            let json = serde_json::to_value(reason).unwrap();
            assert_eq!(json, serde_json::Value::String(reason.as_str().to_owned()));
        }
    }

    #[test]
    fn set_condition_keeps_transition_time_when_status_is_unchanged() {
        let mut conditions = Vec::new();
        set_condition(
            &mut conditions,
            CONDITION_SUCCEEDED,
            ConditionStatus::Unknown,
            Reason::PodCreated,
            "a",
            Some(1),
            t(10),
        );
        set_condition(
            &mut conditions,
            CONDITION_SUCCEEDED,
            ConditionStatus::Unknown,
            Reason::Running,
            "b",
            Some(1),
            t(20),
        );
        let c = find_condition(&conditions, CONDITION_SUCCEEDED).unwrap();
        assert_eq!(c.last_transition_time, Time(t(10)));
        assert_eq!(c.reason, "Running");

        set_condition(
            &mut conditions,
            CONDITION_SUCCEEDED,
            ConditionStatus::True,
            Reason::Succeeded,
            "c",
            Some(1),
            t(30),
        );
        let c = find_condition(&conditions, CONDITION_SUCCEEDED).unwrap();
        assert_eq!(c.last_transition_time, Time(t(30)));
    }

    #[test]
    fn conditions_stay_sorted_by_type() {
        let mut conditions = Vec::new();
        for type_ in [CONDITION_SUCCEEDED, CONDITION_READY] {
            set_condition(
                &mut conditions,
                type_,
                ConditionStatus::Unknown,
                Reason::Queued,
                "",
                None,
                t(0),
            );
        }
        let types: Vec<_> = conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Ready", "Succeeded"]);
    }
}
