//! Native multi-platform builds over a real kube-apiserver (I/O: a control plane of this
//! test binary's own, the real controller in-process watching every namespace and the
//! cluster's Nodes, a test kubelet playing an amd64 node and an arm64 node).
//!
//! The control plane is this binary's own because it registers a second (arm64) node and
//! the controller watches every namespace.
//!
//! Skipped, with the reason printed, when no Go toolchain can build the control plane;
//! `KILN_REQUIRE_ENVTEST=1` (set by `.ci/run`) turns that into a failure.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test stops where it fails

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::cluster;
use common::controller::{Identity, Outcomes, RunningController, fast_config};
use common::envtest;
use common::kubelet::{
    ARM64_NODE_NAME, NODE_NAME, Script, TestKubelet, register_arm64, register_node,
};
use common::scene::build;
use k8s_openapi::api::core::v1::Pod;
use kiln::controller::labels::PLATFORM;
use kiln::crd::{Build, Phase, Reason};
use kiln::oci::digest::Digest;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};

/// One scenario at a time: each runs a controller that watches every namespace.
static ONE_CONTROLLER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn digest(what: &str) -> Digest {
    Digest::of(what.as_bytes())
}

/// What the test kubelet does with each pod of a native build, by its platform label: the
/// platforms push their images, the index pod pushes the index.
fn by_platform(pod: &Pod) -> Script {
    match pod.labels().get(PLATFORM).map(String::as_str) {
        Some("index") => Script::succeed(&digest("index")),
        Some(platform) => Script::succeed(&digest(platform)),
        None => Script::fail(1, "not a native build's pod"),
    }
}

async fn wait_for_build(
    client: &Client,
    namespace: &str,
    name: &str,
    what: &str,
    done: impl Fn(&Build) -> bool,
) -> Build {
    let builds: Api<Build> = Api::namespaced(client.clone(), namespace);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(build) = builds.get_opt(name).await.unwrap()
            && done(&build)
        {
            return build;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name}: {what}: {:#?}",
            builds.get_opt(name).await.unwrap().and_then(|b| b.status)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn phase(build: &Build) -> Option<Phase> {
    build.status.as_ref().and_then(|s| s.phase)
}

/// The pods of `namespace`: name → (node, platform label).
async fn pods_of(client: &Client, namespace: &str) -> BTreeMap<String, (String, String)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    pods.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|pod| {
            let node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            let platform = pod.labels().get(PLATFORM).cloned().unwrap_or_default();
            (pod.name_any(), (node, platform))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_two_platform_build_runs_a_pod_per_platform_on_its_node_then_pushes_the_index() {
    let Some(cp) = envtest::shared().await else {
        return;
    };
    let _alone = ONE_CONTROLLER.lock().await;
    let admin = cp.client();
    let namespace = cluster::create_namespace(&admin, "native").await;
    let kubelet = TestKubelet::start(admin.clone(), &namespace, by_platform).await;
    register_arm64(&admin).await;
    let mut config = fast_config(&namespace);
    config.namespace = None;
    let outcomes = Outcomes::default();
    let identity = Identity::superuser(cp, "kiln-native-controller");
    let controller = RunningController::start(&identity, config, &outcomes, None);

    let builds: Api<Build> = Api::namespaced(admin.clone(), &namespace);
    let app = build("app")
        .output("registry.example.com/team/app:v1")
        .platform("linux/amd64")
        .platform("linux/arm64");
    builds.create(&PostParams::default(), &app).await.unwrap();
    let done = wait_for_build(&admin, &namespace, "app", "Succeeded", |b| {
        phase(b) == Some(Phase::Succeeded)
    })
    .await;

    let status = done.status.unwrap();
    assert_eq!(
        status.output.as_ref().unwrap().digest,
        digest("index").to_string(),
        "the Build's digest is the index's"
    );
    assert_eq!(status.platform_progress.as_deref(), Some("2/2"));
    let platforms: Vec<_> = status
        .platforms
        .iter()
        .map(|p| {
            (
                p.platform.as_str(),
                p.phase,
                p.digest.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        platforms,
        [
            (
                "linux/amd64",
                Phase::Succeeded,
                digest("linux-amd64").to_string()
            ),
            (
                "linux/arm64",
                Phase::Succeeded,
                digest("linux-arm64").to_string()
            ),
        ]
    );
    assert_eq!(status.attempts.len(), 1);
    assert_eq!(status.attempts[0].pod_name, "app-1-index");
    // One pod per platform, each on its node, and one index pod; nothing else.
    assert_eq!(
        pods_of(&admin, &namespace).await,
        BTreeMap::from([
            (
                "app-1-index".to_owned(),
                (NODE_NAME.to_owned(), "index".to_owned())
            ),
            (
                "app-1-linux-amd64".to_owned(),
                (NODE_NAME.to_owned(), "linux-amd64".to_owned())
            ),
            (
                "app-1-linux-arm64".to_owned(),
                (ARM64_NODE_NAME.to_owned(), "linux-arm64".to_owned())
            ),
        ])
    );
    // The index pod was told both digests, in the order of spec.platforms.
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &namespace);
    let index = pods.get("app-1-index").await.unwrap();
    let args = index.spec.unwrap().containers[0].args.clone().unwrap();
    let manifests: Vec<&String> = args
        .iter()
        .filter(|a| a.starts_with("--manifest="))
        .collect();
    assert_eq!(
        manifests,
        [
            &format!("--manifest=linux/amd64={}", digest("linux-amd64")),
            &format!("--manifest=linux/arm64={}", digest("linux-arm64")),
        ]
    );

    // A platform no node offers: a reason that names it, and no pod at all.
    let s390x = build("s390x")
        .output("registry.example.com/team/app:s390x")
        .platform("linux/amd64")
        .platform("linux/s390x");
    builds.create(&PostParams::default(), &s390x).await.unwrap();
    let waiting = wait_for_build(&admin, &namespace, "s390x", "NoNodeForPlatform", |b| {
        b.status.as_ref().and_then(|s| s.reason()) == Some(Reason::NoNodeForPlatform)
    })
    .await;
    let message = waiting.status.unwrap().message.unwrap_or_default();
    assert!(message.contains("linux/s390x"), "{message}");
    assert!(!message.contains("linux/amd64"), "{message}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !pods_of(&admin, &namespace)
            .await
            .keys()
            .any(|name| name.starts_with("s390x")),
        "a Build waiting for a node created a pod"
    );

    controller.stop().await;
    assert!(outcomes.failures().is_empty(), "{:?}", outcomes.failures());
    assert_eq!(kubelet.errors(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_evicted_platform_is_rebuilt_alone_and_the_other_is_built_once() {
    let Some(cp) = envtest::shared().await else {
        return;
    };
    let _alone = ONE_CONTROLLER.lock().await;
    let admin = cp.client();
    let namespace = cluster::create_namespace(&admin, "native-retry").await;
    let kubelet = TestKubelet::start(admin.clone(), &namespace, |pod: &Pod| {
        if pod.name_any() == "retry-1-linux-arm64" {
            Script::evicted()
        } else {
            by_platform(pod)
        }
    })
    .await;
    register_arm64(&admin).await;
    let mut config = fast_config(&namespace);
    config.namespace = None;
    let outcomes = Outcomes::default();
    let identity = Identity::superuser(cp, "kiln-native-retry-controller");
    let controller = RunningController::start(&identity, config, &outcomes, None);

    let builds: Api<Build> = Api::namespaced(admin.clone(), &namespace);
    let retry = build("retry")
        .output("registry.example.com/team/app:v2")
        .platform("linux/arm64")
        .platform("linux/amd64")
        .retries(1);
    builds.create(&PostParams::default(), &retry).await.unwrap();
    let done = wait_for_build(&admin, &namespace, "retry", "Succeeded", |b| {
        phase(b) == Some(Phase::Succeeded)
    })
    .await;
    let status = done.status.unwrap();
    let arm = &status.platforms[0];
    assert_eq!(
        (arm.platform.as_str(), arm.retries, arm.pod_name.as_str()),
        ("linux/arm64", 1, "retry-1-linux-arm64-2")
    );
    assert_eq!(status.platforms[1].retries, 0);
    assert_eq!(status.attempt, 1, "a platform retry is not a new attempt");
    let mut driven = kubelet.pods();
    driven.sort();
    assert_eq!(
        driven,
        [
            "retry-1-index",
            "retry-1-linux-amd64",
            "retry-1-linux-arm64",
            "retry-1-linux-arm64-2"
        ],
        "amd64 was built once"
    );
    controller.stop().await;
    assert!(outcomes.failures().is_empty(), "{:?}", outcomes.failures());
    assert_eq!(kubelet.errors(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_joins_starts_the_builds_waiting_for_its_platform_at_once() {
    let Some(cp) = envtest::shared().await else {
        return;
    };
    let _alone = ONE_CONTROLLER.lock().await;
    let admin = cp.client();
    let namespace = cluster::create_namespace(&admin, "native-wake").await;
    let kubelet = TestKubelet::start(admin.clone(), &namespace, by_platform).await;
    let mut config = fast_config(&namespace);
    config.namespace = None;
    // No periodic recheck within the test: only the node's arrival can start the Build.
    config.queue_recheck = Duration::from_secs(600);
    let outcomes = Outcomes::default();
    let identity = Identity::superuser(cp, "kiln-native-wake-controller");
    let controller = RunningController::start(&identity, config, &outcomes, None);

    let builds: Api<Build> = Api::namespaced(admin.clone(), &namespace);
    let riscv = build("riscv")
        .output("registry.example.com/team/app:riscv")
        .platform("linux/amd64")
        .platform("linux/riscv64");
    builds.create(&PostParams::default(), &riscv).await.unwrap();
    wait_for_build(&admin, &namespace, "riscv", "NoNodeForPlatform", |b| {
        b.status.as_ref().and_then(|s| s.reason()) == Some(Reason::NoNodeForPlatform)
    })
    .await;
    let joined = std::time::Instant::now();
    register_node(&admin, "kiln-test-node-riscv64", "riscv64").await;
    let started = wait_for_build(&admin, &namespace, "riscv", "the attempt started", |b| {
        b.status.as_ref().is_some_and(|s| s.attempt == 1)
    })
    .await;
    let waited = joined.elapsed();
    assert!(
        waited < Duration::from_secs(20),
        "the Build started {waited:?} after the node joined: not woken by it"
    );
    let status = started.status.unwrap();
    assert_eq!(status.platforms.len(), 2, "{status:?}");
    controller.stop().await;
    assert!(outcomes.failures().is_empty(), "{:?}", outcomes.failures());
    assert_eq!(kubelet.errors(), Vec::<String>::new());
}
