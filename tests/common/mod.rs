//! Shared harness of the integration tests (test-only I/O: processes, sockets, temp dirs).
//!
//! | module | holds |
//! | --- | --- |
//! | [`cut_proxy`] | an HTTP proxy that counts requests and cuts blob transfers short |
//! | [`docker_registry`] | Debian's `docker-registry` on a free loopback port, stopped on drop |
//! | [`skopeo`] | running Debian's `skopeo` against plain-HTTP registries |
//! | [`oci_layout`] | a tiny image written by the test itself as an OCI layout directory |
//! | [`fake_api`] | the controller's reconcile against kube-fake-client, with a test kubelet |
//! | [`kiln_server`] | Kiln's cache service in-process on a loopback port |
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
pub mod kiln_server;
pub mod kubelet;
pub mod oci_layout;
pub mod scene;
pub mod schema;
pub mod skopeo;

mod tools;
pub use tools::{free_port, tool};
