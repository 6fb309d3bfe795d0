//! Helpers shared by the integration tests (test code only): the real-API-server harness
//! and the test kubelet. Each test file includes this with `mod common;`.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod envtest;
pub mod kubelet;
