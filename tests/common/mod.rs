//! Shared harness of the integration tests (test-only I/O: processes, sockets, temp dirs).
//!
//! | module | holds |
//! | --- | --- |
//! | [`cut_proxy`] | an HTTP proxy that counts requests and cuts blob transfers short |
//! | [`docker_registry`] | Debian's `docker-registry` on a free loopback port, stopped on drop |
//! | [`skopeo`] | running Debian's `skopeo` against plain-HTTP registries |
//! | [`oci_layout`] | a tiny image written by the test itself as an OCI layout directory |
//! | [`fake_api`] | the controller's reconcile against kube-fake-client, with a test kubelet |
//! | [`envtest`] | a real kube-apiserver, kube-controller-manager and etcd built from Go modules |
//! | [`cluster`] | helpers that work on any cluster (namespaces, YAML, CRD readiness) |
//! | [`kubelet`] | the test kubelet: drives labelled pods through scripted lifecycles |
//! | [`fake_cache`] | a stateful fake of the cache service's admin API (leases, tags, repositories) |
//! | [`schema`] | walking a CRD's OpenAPI schema (also included by path where `common` is not) |
//! | [`scene`] | one controller scenario: namespace, controller, test kubelet, timeline, shared checks |
//! | [`controller`] | the real controller in-process: start, stop, identity, a timeline of what its watches saw |
//!
//! Each test file uses part of it, hence `dead_code` is allowed here.
#![allow(dead_code)]

pub mod cluster;
pub mod controller;
pub mod cut_proxy;
pub mod docker_registry;
pub mod envtest;
pub mod fake_api;
pub mod fake_cache;
pub mod kubelet;
pub mod oci_layout;
pub mod scene;
pub mod schema;
pub mod skopeo;

use std::net::TcpListener;

/// A loopback port that was free a moment ago. Another process may take it before the
/// caller binds it; callers that start servers retry on a bind failure.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
    listener
        .local_addr()
        .expect("local address of a bound listener")
        .port()
}

/// The path of an external tool: `$<env>` if set, else `default`. Panics with the install
/// command when it is missing, so that a machine without it fails loudly, not silently.
pub fn tool(env: &str, default: &str) -> std::path::PathBuf {
    let path = std::env::var_os(env)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| default.into());
    assert!(
        path.is_file(),
        "{} not found (set {env} or run scripts/install-test-deps.sh)",
        path.display()
    );
    path
}
