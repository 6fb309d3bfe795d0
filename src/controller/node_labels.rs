//! The labels of the cluster's nodes, as the controller's watch of Nodes last saw them (in
//! memory, shared by every reconcile): what tells a `Native` Build that no node can build
//! one of its platforms.
//!
//! Only metadata is watched (labels are all that is read). Until the watch's first list is
//! complete, or when the controller may not list Nodes (a controller limited to one
//! namespace has no cluster-wide rights), the nodes are unknown and every platform is taken
//! to have one: the scheduler then says what is missing on the pod, as it would anyway.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::Event;

use kube::runtime::reflector::ObjectRef;

use super::config::Config;
use super::platforms::platforms_without_node;
use crate::crd::{Build, Reason};

/// Node name → its labels.
type Labels = BTreeMap<String, BTreeMap<String, String>>;

#[derive(Debug, Default)]
struct State {
    nodes: Labels,
    /// The nodes of a list in progress (a watch (re)start), swapped in when it completes.
    relisting: Option<Labels>,
    synced: bool,
}

/// The nodes' labels. Cheap to clone: clones share the map.
#[derive(Clone, Debug, Default)]
pub struct NodeLabels(Arc<RwLock<State>>);

fn labels_of(node: &PartialObjectMeta<Node>) -> (String, BTreeMap<String, String>) {
    (node.name_any(), node.labels().clone())
}

impl NodeLabels {
    /// Applies one event of the watch of Nodes' metadata. Returns whether the nodes'
    /// labels now offer something they did not before: a node joined or its labels
    /// changed (a relist counts once it completes). Status heartbeats, which change no
    /// label, return false: waking Builds on each of them would cost a reconcile per
    /// waiting Build per heartbeat.
    pub fn apply(&self, event: &Event<PartialObjectMeta<Node>>) -> bool {
        let mut state = self.0.write().unwrap_or_else(|e| e.into_inner());
        match event {
            Event::Init => {
                state.relisting = Some(Labels::new());
                false
            }
            Event::InitApply(node) => {
                let (name, labels) = labels_of(node);
                match state.relisting.as_mut() {
                    Some(relisting) => relisting.insert(name, labels),
                    None => state.nodes.insert(name, labels),
                };
                false
            }
            Event::InitDone => {
                let mut changed = !state.synced;
                if let Some(relisted) = state.relisting.take() {
                    changed |= relisted != state.nodes;
                    state.nodes = relisted;
                }
                state.synced = true;
                changed
            }
            Event::Apply(node) => {
                let (name, labels) = labels_of(node);
                let before = state.nodes.insert(name, labels.clone());
                before.as_ref() != Some(&labels)
            }
            Event::Delete(node) => {
                state.nodes.remove(&node.name_any());
                false
            }
        }
    }

    /// The platforms of `build` that no node can build, in the order of `spec.platforms`;
    /// none while the nodes are unknown.
    pub fn platforms_without_node(&self, build: &Build, config: &Config) -> Vec<String> {
        let state = self.0.read().unwrap_or_else(|e| e.into_inner());
        if !state.synced {
            return Vec::new();
        }
        platforms_without_node(build, state.nodes.values(), config)
    }
}

/// The Builds waiting for a node of one of their platforms (reason `NoNodeForPlatform`),
/// sorted: what a node that joined, or whose labels changed, wakes.
pub fn waiting_for_a_node(builds: &[std::sync::Arc<Build>]) -> Vec<ObjectRef<Build>> {
    let mut waiting: Vec<ObjectRef<Build>> = builds
        .iter()
        .filter(|build| build.metadata.deletion_timestamp.is_none())
        .filter(|build| {
            build.status.as_ref().and_then(|status| status.reason())
                == Some(Reason::NoNodeForPlatform)
        })
        .map(|build| ObjectRef::from_obj(build.as_ref()))
        .collect();
    waiting.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    waiting
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn node(name: &str, arch: &str) -> PartialObjectMeta<Node> {
        PartialObjectMeta {
            types: None,
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(BTreeMap::from([
                    ("kubernetes.io/os".into(), "linux".into()),
                    ("kubernetes.io/arch".into(), arch.into()),
                ])),
                ..ObjectMeta::default()
            },
            _phantom: Default::default(),
        }
    }

    #[test]
    fn a_node_wakes_the_builds_waiting_for_one() {
        let mut waiting = Build::test("waiting").in_namespace("b");
        waiting.status = Some(crate::crd::BuildStatus {
            conditions: vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: crate::crd::CONDITION_SUCCEEDED.into(),
                status: "Unknown".into(),
                reason: "NoNodeForPlatform".into(),
                message: String::new(),
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    crate::crd::fixtures::T0,
                ),
                observed_generation: None,
            }],
            ..Default::default()
        });
        let mut also = waiting.clone();
        also.metadata.name = Some("also".into());
        also.metadata.namespace = Some("a".into());
        let other = Build::test("running").in_namespace("a");
        let builds: Vec<std::sync::Arc<Build>> = [waiting, other, also]
            .into_iter()
            .map(std::sync::Arc::new)
            .collect();
        let names: Vec<String> = waiting_for_a_node(&builds)
            .into_iter()
            .map(|r| format!("{}/{}", r.namespace.unwrap_or_default(), r.name))
            .collect();
        assert_eq!(names, ["a/also", "b/waiting"]);
    }

    #[test]
    fn unknown_until_listed_then_follows_nodes_coming_and_going() {
        let build = Build::test("app")
            .platform("linux/amd64")
            .platform("linux/arm64");
        let config = Config::default();
        let nodes = NodeLabels::default();
        assert!(nodes.platforms_without_node(&build, &config).is_empty());
        assert!(!nodes.apply(&Event::Init));
        assert!(!nodes.apply(&Event::InitApply(node("a", "amd64"))));
        assert!(
            nodes.platforms_without_node(&build, &config).is_empty(),
            "still listing"
        );
        assert!(nodes.apply(&Event::InitDone), "the first list is news");
        assert_eq!(
            nodes.platforms_without_node(&build, &config),
            ["linux/arm64"]
        );
        assert!(
            nodes.apply(&Event::Apply(node("b", "arm64"))),
            "a node joined"
        );
        assert!(
            !nodes.apply(&Event::Apply(node("b", "arm64"))),
            "a heartbeat changes no label"
        );
        assert!(nodes.platforms_without_node(&build, &config).is_empty());
        assert!(!nodes.apply(&Event::Delete(node("a", "amd64"))));
        assert_eq!(
            nodes.platforms_without_node(&build, &config),
            ["linux/amd64"]
        );
        // A relist replaces what was known.
        nodes.apply(&Event::Init);
        nodes.apply(&Event::InitApply(node("c", "amd64")));
        assert!(
            nodes.apply(&Event::InitDone),
            "the relist found another node"
        );
        assert_eq!(
            nodes.platforms_without_node(&build, &config),
            ["linux/arm64"]
        );
    }
}
