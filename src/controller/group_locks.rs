//! Per-group locks: reconciles of Builds that share a concurrency group run one at a time.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Serialises reconciles of Builds that share a concurrency group, so that two of them
/// never both decide to start at once. Builds of different groups still run in parallel.
#[derive(Default)]
pub struct GroupLocks {
    locks: Mutex<BTreeMap<GroupKey, Arc<tokio::sync::Mutex<()>>>>,
}

/// `(namespace, group)`.
type GroupKey = (String, String);

impl GroupLocks {
    /// Waits for the lock of `(namespace, group)`.
    pub async fn lock(&self, namespace: &str, group: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            // Drop locks nobody holds or waits for, so the map stays as small as the set of
            // groups being reconciled right now.
            locks.retain(|_, l| Arc::strong_count(l) > 1);
            locks
                .entry((namespace.to_owned(), group.to_owned()))
                .or_default()
                .clone()
        };
        lock.lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn group_locks_serialise_one_group_and_forget_idle_ones() {
        let locks = GroupLocks::default();
        let held = locks.lock("ns", "g").await;
        // Another group is free.
        drop(locks.lock("ns", "other").await);
        // The same group waits.
        let waiting = tokio::time::timeout(Duration::from_millis(20), locks.lock("ns", "g")).await;
        assert!(waiting.is_err());
        drop(held);
        drop(locks.lock("ns", "g").await);
        drop(locks.lock("ns", "x").await);
        assert!(locks.locks.lock().unwrap().len() <= 1);
    }
}
