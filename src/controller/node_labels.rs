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

use super::config::Config;
use super::platforms::platforms_without_node;
use crate::crd::Build;

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
    /// Applies one event of the watch of Nodes' metadata.
    pub fn apply(&self, event: &Event<PartialObjectMeta<Node>>) {
        let mut state = self.0.write().unwrap_or_else(|e| e.into_inner());
        match event {
            Event::Init => state.relisting = Some(Labels::new()),
            Event::InitApply(node) => {
                let (name, labels) = labels_of(node);
                match state.relisting.as_mut() {
                    Some(relisting) => relisting.insert(name, labels),
                    None => state.nodes.insert(name, labels),
                };
            }
            Event::InitDone => {
                if let Some(relisted) = state.relisting.take() {
                    state.nodes = relisted;
                }
                state.synced = true;
            }
            Event::Apply(node) => {
                let (name, labels) = labels_of(node);
                state.nodes.insert(name, labels);
            }
            Event::Delete(node) => {
                state.nodes.remove(&node.name_any());
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
    fn unknown_until_listed_then_follows_nodes_coming_and_going() {
        let build = Build::test("app")
            .platform("linux/amd64")
            .platform("linux/arm64");
        let config = Config::default();
        let nodes = NodeLabels::default();
        assert!(nodes.platforms_without_node(&build, &config).is_empty());
        nodes.apply(&Event::Init);
        nodes.apply(&Event::InitApply(node("a", "amd64")));
        assert!(
            nodes.platforms_without_node(&build, &config).is_empty(),
            "still listing"
        );
        nodes.apply(&Event::InitDone);
        assert_eq!(
            nodes.platforms_without_node(&build, &config),
            ["linux/arm64"]
        );
        nodes.apply(&Event::Apply(node("b", "arm64")));
        assert!(nodes.platforms_without_node(&build, &config).is_empty());
        nodes.apply(&Event::Delete(node("a", "amd64")));
        assert_eq!(
            nodes.platforms_without_node(&build, &config),
            ["linux/amd64"]
        );
        // A relist replaces what was known.
        nodes.apply(&Event::Init);
        nodes.apply(&Event::InitApply(node("c", "amd64")));
        nodes.apply(&Event::InitDone);
        assert_eq!(
            nodes.platforms_without_node(&build, &config),
            ["linux/arm64"]
        );
    }
}
