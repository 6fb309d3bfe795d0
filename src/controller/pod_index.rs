//! The build pods the controller's watch has seen, indexed by their Build's UID (in
//! memory, shared by every reconcile).
//!
//! Without it every reconcile lists its Build's pods from the API server: one request per
//! reconcile, and the largest share of the controller's requests under a burst. The index
//! is fed by the same watch that triggers reconciles, each event applied before the
//! reconcile it triggers runs, so a reconcile never sees pods older than its trigger.
//!
//! Pods the controller creates go in at once (when the watch has not shown them yet), so
//! the reconcile that follows a create does not create the pod again. Only what decisions
//! read is kept: the pod spec and managed fields are dropped, which keeps 10,000 retained
//! pods in a few tens of MiB.
//!
//! Until the watch's first list is complete, [`PodIndex::pods_of`] answers `None` and the
//! reconcile lists from the API as before.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::watcher::Event;

use super::labels::BUILD_UID;

/// Build UID → pod name → pod.
type ByBuild = BTreeMap<String, BTreeMap<String, Arc<Pod>>>;

#[derive(Debug, Default)]
struct State {
    by_build: ByBuild,
    /// The pods of a list in progress (a watch (re)start), swapped in when it completes.
    relisting: Option<ByBuild>,
    synced: bool,
}

/// Build pods by their Build's UID. Cheap to clone: clones share the index.
#[derive(Clone, Debug, Default)]
pub struct PodIndex(Arc<RwLock<State>>);

/// What the index keeps of a pod: everything but its spec and managed fields.
fn slim(pod: &Pod) -> Arc<Pod> {
    Arc::new(super::slim::pod(pod))
}

fn insert(map: &mut ByBuild, pod: &Pod) {
    let Some(uid) = pod.labels().get(BUILD_UID) else {
        return;
    };
    map.entry(uid.clone())
        .or_default()
        .insert(pod.name_any(), slim(pod));
}

fn remove(map: &mut ByBuild, pod: &Pod) {
    let Some(uid) = pod.labels().get(BUILD_UID) else {
        return;
    };
    if let Some(pods) = map.get_mut(uid) {
        pods.remove(&pod.name_any());
        if pods.is_empty() {
            map.remove(uid);
        }
    }
}

impl PodIndex {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies one event of the watch of build pods.
    pub fn apply(&self, event: &Event<Pod>) {
        let mut state = self.write();
        match event {
            Event::Init => state.relisting = Some(ByBuild::new()),
            Event::InitApply(pod) => match state.relisting.as_mut() {
                Some(relisting) => insert(relisting, pod),
                None => insert(&mut state.by_build, pod),
            },
            Event::InitDone => {
                if let Some(relisted) = state.relisting.take() {
                    state.by_build = relisted;
                }
                state.synced = true;
            }
            Event::Apply(pod) => insert(&mut state.by_build, pod),
            Event::Delete(pod) => remove(&mut state.by_build, pod),
        }
    }

    /// Records a pod this controller just created, unless the watch already showed it (its
    /// version is then newer than the create's answer).
    pub fn created(&self, pod: &Pod) {
        let mut state = self.write();
        let Some(uid) = pod.labels().get(BUILD_UID) else {
            return;
        };
        state
            .by_build
            .entry(uid.clone())
            .or_default()
            .entry(pod.name_any())
            .or_insert_with(|| slim(pod));
    }

    /// The pods of the Build with UID `build_uid`, sorted by name; `None` until the watch
    /// has listed every pod once.
    pub fn pods_of(&self, build_uid: &str) -> Option<Vec<Pod>> {
        let state = self.0.read().unwrap_or_else(|e| e.into_inner());
        if !state.synced {
            return None;
        }
        Some(
            state
                .by_build
                .get(build_uid)
                .map(|pods| pods.values().map(|p| p.as_ref().clone()).collect())
                .unwrap_or_default(),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{PodSpec, PodStatus};
    use kube::api::ObjectMeta;

    use super::*;

    fn pod(build_uid: &str, name: &str, phase: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some(BTreeMap::from([(
                    BUILD_UID.to_owned(),
                    build_uid.to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec::default()),
            status: Some(PodStatus {
                phase: Some(phase.to_owned()),
                ..PodStatus::default()
            }),
        }
    }

    fn phases(index: &PodIndex, uid: &str) -> Option<Vec<(String, String)>> {
        index.pods_of(uid).map(|pods| {
            pods.iter()
                .map(|p| {
                    let phase = p.status.as_ref().and_then(|s| s.phase.clone());
                    (p.name_any(), phase.unwrap_or_default())
                })
                .collect()
        })
    }

    fn pair(name: &str, phase: &str) -> (String, String) {
        (name.to_owned(), phase.to_owned())
    }

    #[test]
    fn nothing_is_answered_until_the_first_list_is_complete() {
        let index = PodIndex::default();
        index.apply(&Event::Init);
        index.apply(&Event::InitApply(pod("u1", "app-1", "Running")));
        assert_eq!(phases(&index, "u1"), None);
        index.apply(&Event::InitDone);
        assert_eq!(phases(&index, "u1"), Some(vec![pair("app-1", "Running")]));
        assert_eq!(phases(&index, "other"), Some(vec![]));
    }

    #[test]
    fn events_update_and_delete_pods_and_the_spec_is_dropped() {
        let index = PodIndex::default();
        index.apply(&Event::Init);
        index.apply(&Event::InitDone);
        index.apply(&Event::Apply(pod("u1", "app-2", "Pending")));
        index.apply(&Event::Apply(pod("u1", "app-1", "Failed")));
        index.apply(&Event::Apply(pod("u1", "app-2", "Running")));
        assert_eq!(
            phases(&index, "u1"),
            Some(vec![pair("app-1", "Failed"), pair("app-2", "Running")])
        );
        assert!(
            index
                .pods_of("u1")
                .unwrap()
                .iter()
                .all(|p| p.spec.is_none())
        );
        index.apply(&Event::Delete(pod("u1", "app-1", "Failed")));
        assert_eq!(phases(&index, "u1"), Some(vec![pair("app-2", "Running")]));
    }

    #[test]
    fn a_relist_replaces_what_was_there_once_complete() {
        let index = PodIndex::default();
        index.apply(&Event::Init);
        index.apply(&Event::InitApply(pod("u1", "gone-1", "Running")));
        index.apply(&Event::InitDone);
        // The watch restarts: a pod deleted meanwhile is absent from the new list.
        index.apply(&Event::Init);
        index.apply(&Event::InitApply(pod("u2", "new-1", "Pending")));
        // Until the list completes, the last complete view is answered.
        assert_eq!(phases(&index, "u1"), Some(vec![pair("gone-1", "Running")]));
        index.apply(&Event::InitDone);
        assert_eq!(phases(&index, "u1"), Some(vec![]));
        assert_eq!(phases(&index, "u2"), Some(vec![pair("new-1", "Pending")]));
    }

    #[test]
    fn a_created_pod_is_seen_at_once_but_never_replaces_what_the_watch_showed() {
        let index = PodIndex::default();
        index.apply(&Event::Init);
        index.apply(&Event::InitDone);
        index.created(&pod("u1", "app-1", ""));
        assert_eq!(phases(&index, "u1"), Some(vec![pair("app-1", "")]));
        // The watch shows it running; then a late create answer does not take it back.
        index.apply(&Event::Apply(pod("u1", "app-1", "Running")));
        index.created(&pod("u1", "app-1", ""));
        assert_eq!(phases(&index, "u1"), Some(vec![pair("app-1", "Running")]));
    }
}
