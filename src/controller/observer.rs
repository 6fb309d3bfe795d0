//! What the controller reports as it works: how each reconcile ended ([`Outcome`]), this
//! replica's [`Role`] in leader election, and the observer traits that receive them and
//! the garbage collection's reports (the place where metrics are recorded).

use std::time::Duration;

use kube::runtime::reflector::{ObjectRef, Store};
use serde::Serialize;

use super::cache_ledger::CacheCall;
use super::gc::{CacheSweepReport, SweepReport};
use crate::crd::{Build, Phase};

/// How a reconcile ended, for metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The plan changed something (this many writes).
    Applied {
        /// Number of API writes (status, pods, ConfigMaps, finalizer, Events).
        writes: usize,
    },
    /// Nothing to change.
    Unchanged,
    /// The reconcile failed; the label names the step that failed.
    Failed {
        /// A short, stable label (`observe`, `write_status`, `create_pod`, …).
        step: &'static str,
    },
}

/// Receives every reconcile's outcome: the place where metrics are recorded.
pub trait ReconcileObserver: Send + Sync {
    /// Called once per reconcile.
    fn reconciled(&self, build: &ObjectRef<Build>, outcome: Outcome, elapsed: Duration);

    /// Called when a reconcile wrote a final phase for a new run (a generation or a rerun):
    /// once per run. `duration` runs from the run's first attempt to its completion, when
    /// the status records both.
    fn finished(&self, _build: &ObjectRef<Build>, _phase: Phase, _duration: Option<Duration>) {}

    /// Called when a reconcile started an attempt that ended a wait in a queue (for a
    /// running-build slot or the Build's concurrency group), or the first attempt of a run
    /// that did not wait (`waited` is zero then). Retries are not waits in a queue.
    fn started(&self, _build: &ObjectRef<Build>, _waited: Duration) {}

    /// Called once when the watch loop starts, with its cache of Builds (for gauges that
    /// count Builds, and for readiness: the cache is synced once it is ready).
    fn watching(&self, _builds: &Store<Build>) {}
}

/// An observer that does nothing (the default until metrics are wired in).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoObserver;

impl ReconcileObserver for NoObserver {
    fn reconciled(&self, _: &ObjectRef<Build>, _: Outcome, _: Duration) {}
}

/// Receives what the garbage collection did: each sweep's report (deletions counted by
/// reason) and each call to the cache service's admin API. The place where its metrics are
/// recorded; every method has an empty default.
pub trait GcObserver: Send + Sync {
    /// Called after each orphan and retention sweep.
    fn swept(&self, _report: &SweepReport, _elapsed: Duration) {}
    /// Called after each sweep of the cache repositories of deleted namespaces.
    fn cache_swept(&self, _report: &CacheSweepReport, _elapsed: Duration) {}
    /// Called after each admin API call made for a Build (lease, release, tag deletion).
    fn cache_call(&self, _call: CacheCall, _succeeded: bool) {}
}

impl GcObserver for NoObserver {}

/// What this replica does, as far as leader election goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    /// Leader election is off: this replica runs the controller.
    Single,
    /// Leader election is on and this replica waits for the lease.
    Standby,
    /// Leader election is on and this replica holds the lease and runs the controller.
    Leader,
}

/// Receives this replica's role each time leader election changes it: the place where
/// readiness and the leader gauge are recorded.
pub trait RoleObserver: Send + Sync {
    /// Called with the new role and this replica's identity on the lease.
    fn role_changed(&self, role: Role, identity: Option<String>);
}
