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
//!
//! Each test file uses part of it, hence `dead_code` is allowed here.
#![allow(dead_code)]

pub mod cut_proxy;
pub mod docker_registry;
pub mod fake_api;
pub mod kiln_server;
pub mod oci_layout;
pub mod skopeo;

mod tools;
pub use tools::{free_port, tool};
