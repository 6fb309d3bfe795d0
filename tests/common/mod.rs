//! Helpers shared by the integration tests (test code only): the real-API-server harness,
//! helpers for any cluster, and the test kubelet. Each test file includes this with `mod common;`.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod cluster;
pub mod envtest;
pub mod kubelet;
