//! The running-build limits that namespaces set for themselves, as the controller last saw
//! their Namespace objects (in memory, shared by every reconcile).
//!
//! Seeded by one list before the controller starts (so no Build starts above its
//! namespace's own limit after a restart) and kept current by a watch of Namespaces.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;

use super::fair_share::namespace_limit;

/// What one Namespace event did to the limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitUpdate {
    /// The namespace's limit is not what it was.
    pub changed: bool,
    /// What is wrong with its annotation, if anything (the value is then ignored).
    pub problem: Option<String>,
}

/// Namespace → the limit its annotation sets. Cheap to clone: clones share the map.
#[derive(Clone, Debug, Default)]
pub struct NamespaceLimits(Arc<RwLock<BTreeMap<String, u32>>>);

impl NamespaceLimits {
    /// Records what `namespace` says now (a deleted Namespace, or one being deleted, sets
    /// nothing): whether its limit changed, and what is wrong with its annotation, if
    /// anything (the value is then ignored).
    pub fn update(&self, namespace: &Namespace) -> LimitUpdate {
        let name = namespace.name_any();
        let limit = if namespace.metadata.deletion_timestamp.is_some() {
            Ok(None)
        } else {
            namespace_limit(namespace.annotations())
        };
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        let before = match &limit {
            Ok(Some(limit)) => map.insert(name, *limit),
            Ok(None) | Err(_) => map.remove(&name),
        };
        LimitUpdate {
            changed: before != *limit.as_ref().unwrap_or(&None),
            problem: limit.err(),
        }
    }

    /// Every namespace's own limit, now.
    pub fn snapshot(&self) -> BTreeMap<String, u32> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use kube::api::ObjectMeta;

    use super::*;
    use crate::controller::fair_share::NAMESPACE_LIMIT_ANNOTATION;

    fn namespace(name: &str, limit: Option<&str>) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                annotations: limit.map(|l| {
                    BTreeMap::from([(NAMESPACE_LIMIT_ANNOTATION.to_owned(), l.to_owned())])
                }),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        }
    }

    #[test]
    fn the_latest_annotation_wins_and_a_bad_one_is_ignored() {
        let limits = NamespaceLimits::default();
        let changed = LimitUpdate {
            changed: true,
            problem: None,
        };
        let same = LimitUpdate {
            changed: false,
            problem: None,
        };
        assert_eq!(limits.update(&namespace("a", Some("2"))), changed);
        assert_eq!(limits.update(&namespace("b", Some("5"))), changed);
        assert_eq!(limits.update(&namespace("b", Some("5"))), same);
        assert_eq!(limits.update(&namespace("c", None)), same);
        assert_eq!(
            limits.snapshot(),
            BTreeMap::from([("a".to_owned(), 2), ("b".to_owned(), 5)])
        );
        assert_eq!(limits.update(&namespace("a", None)), changed);
        // A bad value is ignored: the namespace has no limit of its own any more.
        let bad = limits.update(&namespace("b", Some("many")));
        assert!(bad.changed);
        assert!(bad.problem.unwrap().contains("not a positive integer"));
        assert!(limits.snapshot().is_empty());
    }
}
