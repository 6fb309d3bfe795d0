//! The test kubelet's fake node: registered once per cluster, Ready, untainted. Test code
//! only; does I/O (creates and patches a Node).

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};

use super::{ARM64_NODE_NAME, NODE_IP, NODE_NAME};

/// Registers [`NODE_NAME`] as a Ready, untainted node (idempotent: every kubelet of the
/// test binary shares it). Without the node lifecycle controller nothing marks it
/// NotReady, so no heartbeat is needed.
pub async fn register(client: &Client) {
    register_node(client, NODE_NAME, "amd64").await;
}

/// Registers [`ARM64_NODE_NAME`], a second Ready node labelled `kubernetes.io/arch=arm64`,
/// for scenarios that build platforms on nodes of their own (idempotent).
#[allow(dead_code)] // used by the test binaries of native multi-platform builds only
pub async fn register_arm64(client: &Client) {
    register_node(client, ARM64_NODE_NAME, "arm64").await;
}

/// Registers a Ready, untainted node `name` labelled `kubernetes.io/arch=<arch>`
/// (idempotent). The test kubelet drives pods only on [`NODE_NAME`] and [`ARM64_NODE_NAME`].
#[allow(dead_code)] // used by the test binaries of native multi-platform builds only
pub async fn register_node(client: &Client, name: &str, arch: &str) {
    let nodes = Api::<Node>::all(client.clone());
    let node: Node = serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": arch,
                "kiln.dev/test-node": "true",
            },
        },
    }))
    .expect("a Node");
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => return,
        Err(err) => panic!("registering the test node {name}: {err}"),
    }
    // Admission taints a new node not-ready; a kubelet's node lifecycle would lift it.
    let untaint = serde_json::json!({ "spec": { "taints": null } });
    nodes
        .patch(name, &PatchParams::default(), &Patch::Merge(&untaint))
        .await
        .unwrap_or_else(|err| panic!("untainting the test node {name}: {err}"));
    let now = Timestamp::now().to_string();
    let capacity = serde_json::json!({
        "cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "100Gi",
    });
    let condition = |kind: &str, status: &str, reason: &str| {
        serde_json::json!({
            "type": kind, "status": status, "reason": reason,
            "lastHeartbeatTime": now, "lastTransitionTime": now,
        })
    };
    let status = serde_json::json!({ "status": {
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID"),
            condition("Ready", "True", "KubeletReady"),
        ],
        "addresses": [
            { "type": "InternalIP", "address": NODE_IP },
            { "type": "Hostname", "address": name },
        ],
        "capacity": capacity,
        "allocatable": capacity,
        "nodeInfo": {
            "machineID": "kiln-test", "systemUUID": "kiln-test", "bootID": "kiln-test",
            "kernelVersion": "6.1.0", "osImage": "kiln test kubelet (no containers run)",
            "containerRuntimeVersion": "kiln-test://0", "kubeletVersion": "v1.36.4",
            "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": arch,
        },
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_or_else(|err| panic!("marking the test node {name} Ready: {err}"));
}
