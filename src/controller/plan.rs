//! The plan `decide` returns and `apply` carries out: a list of actions and when to look
//! again (pure data).
//!
//! Actions run in order and the first failure stops the plan, so the order is part of the
//! contract: status is written before the pod it announces is created (a crash in between
//! leaves a status that names an attempt whose pod does not exist yet, and the next reconcile
//! creates it under the same deterministic name).
//!
//! New kinds of work (releasing a cache lease, minting a cache token) are new [`Action`]
//! variants: `apply` matches exhaustively, so the compiler points at every place to extend.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::jiff::Timestamp;

use crate::cacheapi::admin::LeaseTarget;
use crate::crd::{BuildStatus, Reason};
use crate::oci::name::{RepoName, Tag};

/// How soon a decision that planned an admin API call looks again, to record its outcome
/// (a release confirmed, a renewal's new expiry, a log stored).
pub const OUTCOME_RECHECK: Duration = Duration::from_secs(2);

/// A recheck at `at` (at least a second from now); none without a time.
pub fn wait_until(now: Timestamp, at: Option<Timestamp>) -> Recheck {
    match at {
        Some(at) => {
            let wait = Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO);
            Recheck::After(wait.max(Duration::from_secs(1)))
        }
        None => Recheck::OnChange,
    }
}

/// The part of a decision that one kind of cache call plans (leases, stored logs, base
/// images): the calls, and when to look again for their sake.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CallPlan {
    /// The admin API calls, in order.
    pub actions: Vec<Action>,
    /// When to look again.
    pub recheck: Recheck,
}

/// What `decide` wants done for one Build.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// The writes, in order.
    pub actions: Vec<Action>,
    /// When to reconcile again if nothing else happens.
    pub recheck: Recheck,
}

/// When to reconcile again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Recheck {
    /// Only when something changes (the Build, its pods or its group).
    #[default]
    OnChange,
    /// After this long, even if nothing changes: a deadline, a backoff, a queue re-check.
    After(Duration),
}

impl Recheck {
    /// The earlier of two rechecks.
    pub fn min(self, other: Recheck) -> Recheck {
        match (self, other) {
            (Recheck::OnChange, x) | (x, Recheck::OnChange) => x,
            (Recheck::After(a), Recheck::After(b)) => Recheck::After(a.min(b)),
        }
    }
}

/// One write to the API.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Put the cleanup finalizer on the Build.
    AddFinalizer,
    /// Take the cleanup finalizer off (everything it guards is gone).
    RemoveFinalizer,
    /// Replace the Build's status (only planned when it differs from the current one).
    WriteStatus(Box<BuildStatus>),
    /// Create an attempt's ConfigMap; `AlreadyExists` is success.
    CreateConfigMap(Box<ConfigMap>),
    /// Create an attempt's pod; `AlreadyExists` with this Build's UID is adoption.
    CreatePod(Box<Pod>),
    /// Delete a pod of this Build.
    DeletePod {
        /// The pod.
        name: String,
        /// Delete only this UID (a precondition), when known.
        uid: Option<String>,
        /// Grace period given to the build to stop.
        grace: Duration,
    },
    /// Delete a ConfigMap of this Build.
    DeleteConfigMap {
        /// The ConfigMap.
        name: String,
    },
    /// Mint an attempt's cache token and create the Secret that carries it (merged with the
    /// push Secret's registry credentials, if any); `AlreadyExists` with this Build's UID
    /// is success.
    CreateCacheSecret {
        /// The Secret (the attempt's pod name).
        name: String,
        /// The attempt.
        attempt: u32,
        /// The push Secret whose credentials the Docker config also holds.
        push_secret: Option<String>,
        /// How long the token is valid.
        ttl: Duration,
    },
    /// Delete a Secret of this Build.
    DeleteSecret {
        /// The Secret.
        name: String,
    },
    /// Take or renew a cache lease. Never fails the plan: the outcome goes to the ledger,
    /// and the first failure of a streak to a Warning Event.
    PutLease {
        /// The lease.
        name: String,
        /// What it holds.
        targets: Vec<LeaseTarget>,
        /// How long it holds.
        ttl: Duration,
        /// Whether it extends a lease this process took (for metrics).
        renewal: bool,
    },
    /// Release a cache lease (idempotent). Never fails the plan, as [`Action::PutLease`].
    ReleaseLease {
        /// The lease.
        name: String,
    },
    /// Delete the Build's cache tag (idempotent). Never fails the plan, as
    /// [`Action::PutLease`].
    DeleteCacheTag {
        /// Its key in the ledger.
        key: String,
        /// The repository.
        repository: RepoName,
        /// The tag.
        tag: Tag,
    },
    /// Read the log of an ended attempt's pod and store its tail in the cache. Never fails
    /// the plan, as [`Action::PutLease`].
    StoreLog {
        /// Its key in the ledger.
        key: String,
        /// The pod.
        pod: String,
        /// Its main container.
        container: String,
        /// The logs repository.
        repository: RepoName,
        /// The attempt's tag.
        tag: Tag,
        /// The artifact's annotations.
        annotations: BTreeMap<String, String>,
        /// The most bytes kept (the tail).
        max_bytes: u64,
    },
    /// Read which base images the Build resolved through the cache's mirror since `since`
    /// (the latest successful attempt's start). Never fails the plan, as
    /// [`Action::PutLease`].
    ReadBaseImages {
        /// Its key in the ledger.
        key: String,
        /// The Build's UID.
        uid: String,
        /// Resolutions before this time belong to earlier attempts.
        since: Timestamp,
    },
    /// Resolve the Build's base image tags upstream again. Never fails the plan, as
    /// [`Action::PutLease`].
    CheckBaseImages {
        /// Its key in the ledger.
        key: String,
        /// The `image:tag` references.
        images: Vec<String>,
    },
    /// Delete the cache's record of the base images the Build resolved (idempotent). Never
    /// fails the plan, as [`Action::PutLease`].
    ForgetBaseImages {
        /// Its key in the ledger.
        key: String,
        /// The Build's UID.
        uid: String,
    },
    /// Publish an Event on the Build.
    Event(EventSpec),
}

/// An Event on the Build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventSpec {
    /// `Warning` for failures, `Normal` otherwise.
    pub warning: bool,
    /// Short CamelCase reason: one of the Build's [`Reason`]s.
    pub reason: Reason,
    /// What the controller did, in CamelCase (`CreatePod`, `DeletePod`, `UpdateStatus`).
    pub action: &'static str,
    /// What happened, for people.
    pub note: String,
}

impl EventSpec {
    /// An Event whose type follows from its reason.
    pub fn new(reason: Reason, action: &'static str, note: impl Into<String>) -> Self {
        Self {
            warning: reason.is_warning(),
            reason,
            action,
            note: note.into(),
        }
    }
}

impl Plan {
    /// The status this plan writes, if any.
    /// Whether the plan creates an attempt's pod (it starts or restarts an attempt).
    pub fn starts_attempt(&self) -> bool {
        self.actions
            .iter()
            .any(|action| matches!(action, Action::CreatePod(_)))
    }

    pub fn status(&self) -> Option<&BuildStatus> {
        self.actions.iter().find_map(|a| match a {
            Action::WriteStatus(s) => Some(s.as_ref()),
            _ => None,
        })
    }

    /// The pods this plan creates.
    pub fn created_pods(&self) -> Vec<&Pod> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::CreatePod(p) => Some(p.as_ref()),
                _ => None,
            })
            .collect()
    }

    /// One line per action, for tests and logs.
    pub fn describe(&self) -> Vec<String> {
        self.actions.iter().map(ToString::to_string).collect()
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::AddFinalizer => write!(f, "AddFinalizer"),
            Action::RemoveFinalizer => write!(f, "RemoveFinalizer"),
            Action::WriteStatus(status) => {
                let phase = status.phase.map_or("-", |p| p.as_str());
                let reason = status.reason().map_or("-", Reason::as_str);
                write!(f, "WriteStatus {phase}/{reason} attempt={}", status.attempt)
            }
            Action::CreateConfigMap(cm) => write!(
                f,
                "CreateConfigMap {}",
                cm.metadata.name.as_deref().unwrap_or("?")
            ),
            Action::CreatePod(pod) => write!(
                f,
                "CreatePod {}",
                pod.metadata.name.as_deref().unwrap_or("?")
            ),
            Action::DeletePod { name, grace, .. } => {
                write!(f, "DeletePod {name} grace={}s", grace.as_secs())
            }
            Action::DeleteConfigMap { name } => write!(f, "DeleteConfigMap {name}"),
            Action::CreateCacheSecret { name, .. } => write!(f, "CreateCacheSecret {name}"),
            Action::DeleteSecret { name } => write!(f, "DeleteSecret {name}"),
            Action::PutLease { name, renewal, .. } => {
                let verb = if *renewal { "RenewLease" } else { "TakeLease" };
                write!(f, "{verb} {name}")
            }
            Action::ReleaseLease { name } => write!(f, "ReleaseLease {name}"),
            Action::DeleteCacheTag {
                repository, tag, ..
            } => write!(f, "DeleteCacheTag {repository}:{tag}"),
            Action::StoreLog {
                pod,
                repository,
                tag,
                ..
            } => write!(f, "StoreLog {pod} -> {repository}:{tag}"),
            Action::ReadBaseImages { .. } => write!(f, "ReadBaseImages"),
            Action::ForgetBaseImages { .. } => write!(f, "ForgetBaseImages"),
            Action::CheckBaseImages { images, .. } => {
                write!(f, "CheckBaseImages {}", images.join(","))
            }
            Action::Event(e) => write!(
                f,
                "Event {} {}",
                if e.warning { "Warning" } else { "Normal" },
                e.reason
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recheck_min_prefers_the_earlier_deadline() {
        let a = Recheck::After(Duration::from_secs(5));
        let b = Recheck::After(Duration::from_secs(9));
        assert_eq!(a.min(b), a);
        assert_eq!(Recheck::OnChange.min(b), b);
        assert_eq!(Recheck::OnChange.min(Recheck::OnChange), Recheck::OnChange);
    }

    #[test]
    fn event_type_follows_the_reason() {
        assert!(EventSpec::new(Reason::BuildFailed, "UpdateStatus", "x").warning);
        assert!(!EventSpec::new(Reason::Succeeded, "UpdateStatus", "x").warning);
    }
}
