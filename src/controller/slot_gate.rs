//! One start at a time while running-build limits apply, and the attempts this process
//! started that the watch cache does not show yet (memory).
//!
//! Two Builds of different concurrency groups reconcile at once; with a limit, both could
//! see the last free slot and start. Builds that may start therefore take the gate first
//! (only when a limit is set, and only those that may start), and an attempt this process
//! starts is reserved until the watch cache shows its status, so the next Build through
//! the gate counts it even when the cache lags behind the API server.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kube::ResourceExt;
use tokio::sync::{Mutex as AsyncMutex, MutexGuard};

use super::fair_share::Reservations;
use crate::crd::Build;

/// The gate and the reservations.
#[derive(Debug, Default)]
pub struct SlotGate {
    gate: AsyncMutex<()>,
    reserved: Mutex<Reservations>,
}

impl SlotGate {
    /// Waits for the gate; it is open again when the guard is dropped.
    pub async fn enter(&self) -> MutexGuard<'_, ()> {
        self.gate.lock().await
    }

    /// Records that this process started `attempt` of the Build `namespace/name`.
    pub fn reserve(&self, namespace: &str, name: &str, attempt: u32) {
        self.lock()
            .insert((namespace.to_owned(), name.to_owned()), attempt);
    }

    /// The reservations `builds` do not show yet; those they show (or whose Build is gone)
    /// are forgotten.
    pub fn reservations(&self, builds: &[Arc<Build>]) -> Reservations {
        let attempts: BTreeMap<(String, String), u32> = builds
            .iter()
            .map(|build| {
                (
                    (build.namespace().unwrap_or_default(), build.name_any()),
                    build.status.as_ref().map_or(0, |s| s.attempt),
                )
            })
            .collect();
        let mut reserved = self.lock();
        reserved.retain(|key, started| attempts.get(key).is_some_and(|seen| seen < started));
        reserved.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Reservations> {
        self.reserved.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::BuildStatus;

    fn build(name: &str, attempt: u32) -> Arc<Build> {
        let mut build = Build::test(name);
        build.status = Some(BuildStatus {
            attempt,
            ..BuildStatus::default()
        });
        Arc::new(build)
    }

    #[test]
    fn a_reservation_lasts_until_the_cache_shows_the_attempt_or_the_build_is_gone() {
        let gate = SlotGate::default();
        let ns = build("a", 0).namespace().unwrap_or_default();
        gate.reserve(&ns, "a", 1);
        gate.reserve(&ns, "b", 3);
        let reserved = gate.reservations(&[build("a", 0), build("b", 3)]);
        assert_eq!(reserved.len(), 1, "{reserved:?}");
        assert_eq!(reserved.get(&(ns.clone(), "a".to_owned())), Some(&1));
        assert!(gate.reservations(&[build("a", 1)]).is_empty());
        gate.reserve(&ns, "c", 1);
        assert!(
            gate.reservations(&[]).is_empty(),
            "a gone Build keeps nothing"
        );
    }
}
