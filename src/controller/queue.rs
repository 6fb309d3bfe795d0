//! Concurrency groups: which Build of a group may run, which waits, and which is superseded
//! (pure).
//!
//! A group is `spec.concurrency.group` (by default the output image reference) within a
//! namespace. Two Builds of one group never have running pods at once: that is the `latest`
//! race of `seeds/buildrunner-cleanup-and-races.txt`, where an older build overwrote a newer
//! push. Order is FIFO by creation time, ties broken by name, so every reconcile of every
//! member computes the same order.
//!
//! - `Queue`: a Build starts only when no other member is active and no waiting member is
//!   ahead of it. An active member keeps the group through its retries, so that an older
//!   build never pushes after a newer one.
//! - `CancelInProgress`: a Build that sees a newer member waiting or active cancels itself
//!   (reason `Superseded`); the newest starts once the older pods are gone.
//!
//! The reconcile loop serialises the members of a group ([`GroupLocks`](super::group_locks::GroupLocks)) and reads
//! their pods fresh from the API, so "no member is active" cannot be stale.

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use crate::crd::{Build, ConcurrencyPolicy, Phase, Reason};

/// Where a member of a group stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Has a live pod, or a run in progress (including a retry backoff): holds the group.
    Active,
    /// Wants to run and has not started.
    Waiting,
    /// Finished, cancelled, or being deleted with no pod left: out of the way.
    Idle,
}

/// Another Build of the same group, as `decide` needs to see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Its name.
    pub name: String,
    /// Its creation time (the queue order).
    pub created: Option<Timestamp>,
    /// Where it stands.
    pub standing: Standing,
}

/// What the group says about a Build that wants to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Start.
    Go,
    /// Wait for `holder`.
    Wait {
        /// The member it waits for.
        holder: String,
        /// Whether `holder` runs (rather than waits ahead in the queue).
        running: bool,
    },
    /// A newer member replaces this Build (`CancelInProgress`).
    Superseded {
        /// The newest member.
        by: String,
    },
}

/// The concurrency group of a Build.
pub fn group_of(build: &Build) -> &str {
    build.spec.concurrency_group()
}

/// Where `build` stands in its group; `has_live_pods` says whether any of its pods still
/// runs (from a fresh pod list).
pub fn standing(build: &Build, has_live_pods: bool) -> Standing {
    if has_live_pods {
        return Standing::Active;
    }
    if build.metadata.deletion_timestamp.is_some() || build.spec.cancel {
        return Standing::Idle;
    }
    let Some(status) = build.status.as_ref() else {
        return Standing::Waiting;
    };
    match status.phase {
        None => Standing::Waiting,
        Some(Phase::Running) => Standing::Active,
        Some(Phase::Pending) => {
            if status.attempt > 0 && status.reason() != Some(Reason::Queued) {
                Standing::Active
            } else {
                Standing::Waiting
            }
        }
        Some(Phase::Succeeded | Phase::Failed | Phase::Cancelled) => {
            if build.run_requested() {
                Standing::Waiting
            } else {
                Standing::Idle
            }
        }
    }
}

fn order_key(created: Option<Timestamp>, name: &str) -> (Timestamp, &str) {
    (created.unwrap_or(Timestamp::MAX), name)
}

fn key_of(build: &Build) -> (Timestamp, String) {
    (
        build
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(Timestamp::MAX, |t| t.0),
        build.name_any(),
    )
}

/// Whether a newer member of a `CancelInProgress` group replaces `build`; the newest one.
pub fn superseded_by(build: &Build, peers: &[Peer]) -> Option<String> {
    if build.spec.concurrency.policy != ConcurrencyPolicy::CancelInProgress {
        return None;
    }
    let (created, name) = key_of(build);
    peers
        .iter()
        .filter(|p| p.standing != Standing::Idle)
        .filter(|p| order_key(p.created, &p.name) > (created, name.as_str()))
        .max_by(|a, b| order_key(a.created, &a.name).cmp(&order_key(b.created, &b.name)))
        .map(|p| p.name.clone())
}

/// Whether `build` may start now. `retrying` says that it already holds the group (the
/// next attempt of a run in progress): then only an active member, never a waiting one
/// ahead in the queue, makes it wait.
pub fn admit(build: &Build, peers: &[Peer], retrying: bool) -> Admission {
    if let Some(by) = superseded_by(build, peers) {
        return Admission::Superseded { by };
    }
    let by_order =
        |a: &&Peer, b: &&Peer| order_key(a.created, &a.name).cmp(&order_key(b.created, &b.name));
    if let Some(active) = peers
        .iter()
        .filter(|p| p.standing == Standing::Active)
        .min_by(by_order)
    {
        return Admission::Wait {
            holder: active.name.clone(),
            running: true,
        };
    }
    if build.spec.concurrency.policy == ConcurrencyPolicy::Queue && !retrying {
        let (created, name) = key_of(build);
        if let Some(ahead) = peers
            .iter()
            .filter(|p| p.standing == Standing::Waiting)
            .filter(|p| order_key(p.created, &p.name) < (created, name.as_str()))
            .min_by(by_order)
        {
            return Admission::Wait {
                holder: ahead.name.clone(),
                running: false,
            };
        }
    }
    Admission::Go
}

/// The members to reconcile when `changed` changes: every other member of its group that
/// is not idle, so that a queue moves as soon as its holder finishes.
pub fn wakeups(changed: &Build, all: &[Arc<Build>]) -> Vec<ObjectRef<Build>> {
    // Borrowed, not cloned: this runs over every Build the controller sees, for every
    // change of any of them.
    let namespace = changed.metadata.namespace.as_deref();
    let uid = changed.metadata.uid.as_deref();
    let group = group_of(changed);
    let mut refs: Vec<ObjectRef<Build>> = all
        .iter()
        .filter(|b| {
            b.metadata.namespace.as_deref() == namespace && b.metadata.uid.as_deref() != uid
        })
        .filter(|b| group_of(b) == group && standing(b, false) != Standing::Idle)
        .map(|b| ObjectRef::from_obj(b.as_ref()))
        .collect();
    refs.sort_by(|a, b| a.name.cmp(&b.name));
    refs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::condition::set_condition;
    use crate::crd::fixtures::at;
    use crate::crd::{BuildStatus, CONDITION_SUCCEEDED, ConditionStatus};

    fn peer(name: &str, created: i64, standing: Standing) -> Peer {
        Peer {
            name: name.into(),
            created: Some(at(created)),
            standing,
        }
    }

    fn status(phase: Phase, reason: Reason, attempt: u32) -> BuildStatus {
        let mut s = BuildStatus {
            phase: Some(phase),
            attempt,
            observed_generation: Some(1),
            ..BuildStatus::default()
        };
        set_condition(
            &mut s.conditions,
            CONDITION_SUCCEEDED,
            ConditionStatus::Unknown,
            reason,
            "",
            Some(1),
            at(0),
        );
        s
    }

    #[test]
    fn standings() {
        let b = Build::test("b");
        assert_eq!(standing(&b, false), Standing::Waiting);
        assert_eq!(standing(&b, true), Standing::Active);
        let queued = b
            .clone()
            .with_status(status(Phase::Pending, Reason::Queued, 0));
        assert_eq!(standing(&queued, false), Standing::Waiting);
        let backoff = b
            .clone()
            .with_status(status(Phase::Pending, Reason::PodEvicted, 1));
        assert_eq!(standing(&backoff, false), Standing::Active);
        let running = b
            .clone()
            .with_status(status(Phase::Running, Reason::Running, 1));
        assert_eq!(standing(&running, false), Standing::Active);
        let done = b
            .clone()
            .with_status(status(Phase::Succeeded, Reason::Succeeded, 1));
        assert_eq!(standing(&done, false), Standing::Idle);
        assert_eq!(
            standing(&done.clone().generation(2), false),
            Standing::Waiting
        );
        assert_eq!(standing(&done.clone().rerun("x"), false), Standing::Waiting);
        assert_eq!(standing(&b.clone().cancel(), false), Standing::Idle);
        assert_eq!(standing(&b.deleting(at(1)), false), Standing::Idle);
    }

    #[test]
    fn queue_is_fifo_by_creation_then_name() {
        let me = Build::test("m").created_at(at(10));
        assert_eq!(admit(&me, &[], false), Admission::Go);
        assert_eq!(
            admit(
                &me,
                &[
                    peer("a", 5, Standing::Waiting),
                    peer("z", 20, Standing::Waiting)
                ],
                false
            ),
            Admission::Wait {
                holder: "a".into(),
                running: false
            }
        );
        // Same second: the name breaks the tie.
        assert_eq!(
            admit(&me, &[peer("a", 10, Standing::Waiting)], false),
            Admission::Wait {
                holder: "a".into(),
                running: false
            }
        );
        assert_eq!(
            admit(&me, &[peer("z", 10, Standing::Waiting)], false),
            Admission::Go
        );
        // An active member holds the group, even a newer one.
        assert_eq!(
            admit(
                &me,
                &[
                    peer("z", 99, Standing::Active),
                    peer("y", 1, Standing::Idle)
                ],
                false
            ),
            Admission::Wait {
                holder: "z".into(),
                running: true
            }
        );
    }

    #[test]
    fn cancel_in_progress_lets_the_newest_win() {
        let old = Build::test("old")
            .created_at(at(1))
            .policy(ConcurrencyPolicy::CancelInProgress);
        assert_eq!(
            admit(
                &old,
                &[
                    peer("new", 2, Standing::Waiting),
                    peer("newer", 3, Standing::Waiting)
                ],
                false
            ),
            Admission::Superseded { by: "newer".into() }
        );
        assert_eq!(superseded_by(&old, &[peer("new", 2, Standing::Idle)]), None);
        let new = Build::test("new")
            .created_at(at(2))
            .policy(ConcurrencyPolicy::CancelInProgress);
        // The newest waits for the older pod to go, then starts.
        assert_eq!(
            admit(&new, &[peer("old", 1, Standing::Active)], false),
            Admission::Wait {
                holder: "old".into(),
                running: true
            }
        );
        assert_eq!(
            admit(&new, &[peer("old", 1, Standing::Waiting)], false),
            Admission::Go
        );
    }

    #[test]
    fn a_retry_keeps_its_place_ahead_of_waiting_members() {
        let me = Build::test("m").created_at(at(10));
        let ahead = [peer("a", 5, Standing::Waiting)];
        assert_eq!(admit(&me, &ahead, true), Admission::Go);
        let running = [peer("a", 5, Standing::Active)];
        assert_eq!(
            admit(&me, &running, true),
            Admission::Wait {
                holder: "a".into(),
                running: true
            }
        );
    }

    #[test]
    fn wakeups_name_the_other_non_idle_members_of_the_group() {
        let holder = Build::test("a").group("g");
        let waiting = Arc::new(Build::test("b").group("g"));
        let other_group = Arc::new(Build::test("c").group("h"));
        let done = Arc::new(Build::test("d").group("g").with_status(status(
            Phase::Succeeded,
            Reason::Succeeded,
            1,
        )));
        let other_ns = Arc::new(Build::test("e").group("g").in_namespace("x"));
        let all = [
            Arc::new(holder.clone()),
            waiting,
            other_group,
            done,
            other_ns,
        ];
        let names: Vec<_> = wakeups(&holder, &all).into_iter().map(|r| r.name).collect();
        assert_eq!(names, ["b"]);
    }
}
