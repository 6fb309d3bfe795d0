//! What the controller saw of one Build's world, the [`Observed`] snapshot that `observe`
//! reads and `decide` takes (pure data), and which of it is worth reading.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Pod;

use super::cache_ledger::CallState;
use super::fair_share::Slot;
use super::queue::Peer;
use super::validate::SecretInfo;
use crate::crd::{Build, Phase};

/// What the controller saw of a Build's world, sorted so that `decide` never depends on
/// the order the API server listed things in.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// The Build's pods (selected by its UID), by name.
    pub pods: Vec<Pod>,
    /// Names of the Build's ConfigMaps (listed only while the Build is being deleted).
    pub config_maps: Vec<String>,
    /// Names of the Build's own Secrets, its attempts' cache tokens (listed only while the
    /// Build is being deleted).
    pub owned_secrets: Vec<String>,
    /// What this process knows of the Build's cache leases and cleanup calls, by ledger key.
    pub cache: BTreeMap<String, CallState>,
    /// Pods of the Build whose create the API server refused, with what it said (pod name
    /// → message); a refusal ends when the pod is created.
    pub pod_refusals: BTreeMap<String, String>,
    /// The Secrets the Build names that exist, by name (read only while it may start).
    pub secrets: BTreeMap<String, SecretInfo>,
    /// The builder ServiceAccount the Build names, when it exists (read only while it may
    /// start): the API server refuses a pod whose ServiceAccount does not exist.
    pub service_accounts: BTreeSet<String>,
    /// The other Builds of its concurrency group, by name (read only while it may start
    /// or hold the group).
    pub peers: Vec<Peer>,
    /// The platforms of a `Native` Build that no node of the cluster can build, in the
    /// order of `spec.platforms` (read only while it may start; empty when the controller
    /// cannot see the cluster's nodes).
    pub platforms_without_node: Vec<String>,
    /// Its place in front of the running-build limits (read only while it may start and
    /// a limit is set); `None` when no limit applies.
    pub slot: Option<Slot>,
}

/// Whether `observe` must read the Build's Secrets and concurrency group: it may start or
/// hold an attempt. A finished Build with nothing requested needs neither.
pub fn wants_inputs(build: &Build) -> bool {
    build.metadata.deletion_timestamp.is_none()
        && (build.run_requested()
            || !build
                .status
                .as_ref()
                .and_then(|s| s.phase)
                .is_some_and(Phase::is_terminal))
}
