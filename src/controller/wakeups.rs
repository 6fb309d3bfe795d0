//! Which other Builds to reconcile when one changes, at a cost that grows with the Build's
//! concurrency group rather than with every Build in the cluster (in memory, fed by the
//! watch of Builds).
//!
//! Two things wake others: a group member's change (its queue may move; a newer Build may
//! supersede the running one), and, under running-build limits, a Build letting go of its
//! slot. The first needs the group's members: an index by namespace and group keeps their
//! names. The second needs a census of every Build, so it runs only when a Build this
//! memory saw holding a slot no longer holds one, not on every event: a restart's first
//! list of 10,000 Builds then costs 10,000 index updates, not 10,000 censuses of 10,000.
//! (A restart needs no wakeups: the controller reconciles every Build it lists.)

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};

use super::fair_share::{self, Limits};
use super::queue::{self, Standing};
use crate::crd::Build;

/// What this memory last saw of a Build.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    namespace: String,
    group: String,
    name: String,
    holds_slot: bool,
}

#[derive(Debug, Default)]
struct State {
    /// By Build UID.
    seen: BTreeMap<String, Seen>,
    /// (namespace, group) → member names.
    groups: BTreeMap<(String, String), BTreeSet<String>>,
}

impl State {
    /// Records `seen` for `uid`; returns what was recorded before.
    fn record(&mut self, uid: String, seen: Seen) -> Option<Seen> {
        let before = self.seen.insert(uid, seen.clone());
        if let Some(old) = &before
            && (old.namespace != seen.namespace || old.group != seen.group)
        {
            let key = (old.namespace.clone(), old.group.clone());
            if let Some(names) = self.groups.get_mut(&key) {
                names.remove(&old.name);
                if names.is_empty() {
                    self.groups.remove(&key);
                }
            }
        }
        self.groups
            .entry((seen.namespace, seen.group))
            .or_default()
            .insert(seen.name);
        before
    }

    /// Forgets Builds the watch cache no longer holds, once this memory holds twice as
    /// many as the cache (amortised: each Build is forgotten once).
    fn forget_gone(&mut self, store: &Store<Build>) {
        // Counted first: copying the cache's list on every event is the cost this memory
        // exists to avoid.
        if self.seen.len() <= 2 * store.len().max(64) {
            return;
        }
        let cached = store.state();
        let live: BTreeSet<&str> = cached
            .iter()
            .filter_map(|b| b.metadata.uid.as_deref())
            .collect();
        self.seen.retain(|uid, _| live.contains(uid.as_str()));
        let mut groups: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
        for seen in self.seen.values() {
            groups
                .entry((seen.namespace.clone(), seen.group.clone()))
                .or_default()
                .insert(seen.name.clone());
        }
        self.groups = groups;
    }
}

/// The memory of the Build watch. Cheap to clone: clones share it.
#[derive(Clone, Debug, Default)]
pub struct Wakeups(Arc<Mutex<State>>);

impl Wakeups {
    /// The Builds to reconcile because `changed` changed (as its watch event shows it),
    /// with the controller's cache `store` and the running-build `limits` now. Sorted, each
    /// once.
    pub fn on_change(
        &self,
        changed: &Build,
        store: &Store<Build>,
        limits: &Limits,
    ) -> Vec<ObjectRef<Build>> {
        let Some(uid) = changed.metadata.uid.clone() else {
            return Vec::new();
        };
        let namespace = changed.namespace().unwrap_or_default();
        let group = queue::group_of(changed).to_owned();
        let holds_slot = queue::standing(changed, false) == Standing::Active;
        let (before, members) = {
            let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let before = state.record(
                uid.clone(),
                Seen {
                    namespace: namespace.clone(),
                    group: group.clone(),
                    name: changed.name_any(),
                    holds_slot,
                },
            );
            let members: Vec<String> = state
                .groups
                .get(&(namespace.clone(), group))
                .map(|names| names.iter().cloned().collect())
                .unwrap_or_default();
            state.forget_gone(store);
            (before, members)
        };
        let members: Vec<Arc<Build>> = members
            .iter()
            .filter_map(|name| store.get(&ObjectRef::new(name).within(&namespace)))
            .collect();
        let mut refs = queue::wakeups(changed, &members);
        let freed = before.is_some_and(|b| b.holds_slot) && !holds_slot;
        if freed && limits.is_active() {
            // This watch can be ahead of the controller's cache: count the changed Build
            // as this event shows it (a finished build frees its slot now).
            let mut all = store.state();
            all.retain(|b| b.metadata.uid.as_deref() != Some(uid.as_str()));
            all.push(Arc::new(changed.clone()));
            refs.extend(fair_share::wakeups(limits, &all));
        }
        refs.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        refs.dedup();
        refs
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use kube::runtime::watcher::Event;

    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use crate::crd::fixtures::at;
    use crate::crd::{AttemptRecord, BuildStatus, Phase};

    fn attempt(name: &str) -> AttemptRecord {
        AttemptRecord {
            attempt: 1,
            pod_name: format!("{name}-1"),
            pod_uid: None,
            generation: 1,
            start_time: Time(at(0)),
            completion_time: None,
            result: None,
            reason: None,
            message: None,
            digest: None,
            pod_retained_until: None,
            log: None,
        }
    }

    fn build(name: &str, group: &str, status: Option<BuildStatus>) -> Build {
        let mut build = Build::test(name)
            .with_uid(&format!("uid-{name}"))
            .group(group);
        build.status = status;
        build
    }

    /// A Build whose attempt 1 runs (it holds a slot).
    fn running(name: &str, group: &str) -> Build {
        build(
            name,
            group,
            Some(BuildStatus {
                phase: Some(Phase::Running),
                observed_generation: Some(1),
                attempt: 1,
                attempts: vec![attempt(name)],
                ..BuildStatus::default()
            }),
        )
    }

    /// The same Build, its attempt ended.
    fn finished(name: &str, group: &str) -> Build {
        let mut build = running(name, group);
        let status = build.status.as_mut().unwrap();
        status.phase = Some(Phase::Succeeded);
        status.attempts[0].completion_time = Some(Time(at(60)));
        build
    }

    fn store_of(builds: &[Build]) -> Store<Build> {
        let (reader, mut writer) = kube::runtime::reflector::store::<Build>();
        writer.apply_watcher_event(&Event::Init);
        for build in builds {
            writer.apply_watcher_event(&Event::InitApply(build.clone()));
        }
        writer.apply_watcher_event(&Event::InitDone);
        reader
    }

    fn names(refs: &[ObjectRef<Build>]) -> Vec<&str> {
        refs.iter().map(|r| r.name.as_str()).collect()
    }

    fn limit(cluster: u32) -> Limits {
        Limits {
            cluster: Some(cluster),
            ..Limits::default()
        }
    }

    #[test]
    fn a_change_wakes_the_waiting_members_of_its_group_only() {
        let builds = [
            running("a", "g"),
            build("b", "g", None),
            build("c", "g", None),
            build("other", "h", None),
        ];
        let store = store_of(&builds);
        let wakeups = Wakeups::default();
        for build in &builds {
            wakeups.on_change(build, &store, &Limits::default());
        }
        let refs = wakeups.on_change(&finished("a", "g"), &store, &Limits::default());
        assert_eq!(names(&refs), ["b", "c"]);
    }

    #[test]
    fn a_freed_slot_wakes_the_queue_but_first_sight_and_other_changes_do_not() {
        // x holds the only slot; y (another group) waits for it.
        let builds = [running("x", "gx"), build("y", "gy", None)];
        let store = store_of(&builds);
        let wakeups = Wakeups::default();
        // First sight (a restart's list): no census, no wakeups.
        for build in &builds {
            assert!(wakeups.on_change(build, &store, &limit(1)).is_empty());
        }
        // x changes but still runs: nothing.
        assert!(
            wakeups
                .on_change(&running("x", "gx"), &store, &limit(1))
                .is_empty()
        );
        // x ends (the event is ahead of the cache): y gets the slot.
        let refs = wakeups.on_change(&finished("x", "gx"), &store, &limit(1));
        assert_eq!(names(&refs), ["y"]);
        // Without limits, a freed slot wakes nobody outside the group.
        let wakeups = Wakeups::default();
        wakeups.on_change(&running("x", "gx"), &store, &Limits::default());
        assert!(
            wakeups
                .on_change(&finished("x", "gx"), &store, &Limits::default())
                .is_empty()
        );
    }

    #[test]
    fn a_build_that_moves_to_another_group_leaves_the_old_one() {
        let store = store_of(&[build("a", "g2", None), build("b", "g1", None)]);
        let wakeups = Wakeups::default();
        wakeups.on_change(&build("a", "g1", None), &store, &Limits::default());
        wakeups.on_change(&build("a", "g2", None), &store, &Limits::default());
        // b's change in g1 no longer wakes a.
        let refs = wakeups.on_change(&build("b", "g1", None), &store, &Limits::default());
        assert!(refs.is_empty(), "{refs:?}");
    }

    #[test]
    fn builds_gone_from_the_cache_are_forgotten() {
        let wakeups = Wakeups::default();
        let empty = store_of(&[]);
        for i in 0..200 {
            wakeups.on_change(
                &build(&format!("b{i}"), "g", None),
                &empty,
                &Limits::default(),
            );
        }
        let state = wakeups.0.lock().unwrap();
        assert!(state.seen.len() <= 2 * 64 + 1, "{}", state.seen.len());
        assert!(
            state
                .groups
                .get(&("default".to_owned(), "g".to_owned()))
                .is_none_or(|n| n.len() == state.seen.len())
        );
    }
}
