//! What the controller keeps of the objects it caches or lists in bulk: everything its
//! decisions read, without the parts that only make objects big (pure).
//!
//! Managed fields are often the largest part of an object; `kubectl apply` copies the
//! whole object again into an annotation; a pod's spec is never read once the pod exists
//! (decisions read its labels, owner, phase and container statuses). Over 10,000 Builds
//! and their pods these are most of the controller's memory.

use k8s_openapi::api::core::v1::Pod;

use crate::crd::Build;

/// The annotation in which `kubectl apply` keeps the last applied object.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// `pod` without its spec and managed fields.
pub fn pod(pod: &Pod) -> Pod {
    let mut metadata = pod.metadata.clone();
    metadata.managed_fields = None;
    Pod {
        metadata,
        spec: None,
        status: pod.status.clone(),
    }
}

/// `build` without its managed fields and `kubectl apply`'s copy of itself.
pub fn build(build: &mut Build) {
    build.metadata.managed_fields = None;
    if let Some(annotations) = build.metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::PodSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
    use kube::ResourceExt;

    use super::*;

    #[test]
    fn only_what_decisions_never_read_is_dropped() {
        let mut b = Build::test("app").rerun("1");
        b.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default()]);
        b.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(LAST_APPLIED.to_owned(), "{...}".to_owned());
        let spec = b.spec.clone();
        build(&mut b);
        assert!(b.metadata.managed_fields.is_none());
        assert_eq!(b.rerun_token(), Some("1"));
        assert!(!b.annotations().contains_key(LAST_APPLIED));
        assert_eq!(b.spec, spec);

        let mut p = Pod {
            spec: Some(PodSpec::default()),
            ..Pod::default()
        };
        p.metadata.name = Some("app-1".to_owned());
        p.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default()]);
        let slim = pod(&p);
        assert!(slim.spec.is_none() && slim.metadata.managed_fields.is_none());
        assert_eq!(slim.metadata.name.as_deref(), Some("app-1"));
    }
}
