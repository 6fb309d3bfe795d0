//! End-to-end tests against a real cluster. They run only when `KILN_E2E_KUBECONFIG` names
//! a kubeconfig (use a disposable cluster: kind, k3d); otherwise each test says loudly why
//! it was skipped and passes.
//!
//! Each test installs the CRD (server-side apply), works in a namespace of its own, runs
//! the controller in-process for that namespace, prints the Build, its pods and Events when
//! it fails, and deletes its namespace at the end.
//!
//! Environment:
//! - `KILN_E2E_KUBECONFIG`: the cluster (required to run).
//! - `KILN_E2E_REGISTRY`: `host[:port]` of a registry the build pods can push to (required
//!   by the tests that build; for kind's local registry, `kind-registry:5000`).
//! - `KILN_E2E_REGISTRY_PLAIN_HTTP=1`: that registry speaks plain HTTP.
//! - `KILN_E2E_BUILDER_IMAGE`: builder image to use instead of the default.

use std::io::Write;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, ResourceExt};
use serde_json::json;

use kiln::controller::{Config, Context};
use kiln::crd::{Build, Phase};

/// Writes straight to the process's stderr, which the test harness does not capture, so
/// that a skip is visible in `cargo test` output.
fn say(message: &str) {
    let _ = writeln!(std::io::stderr(), "{message}");
}

/// The cluster, or `None` (after saying why) when the e2e suite is not configured.
async fn cluster(test: &str) -> Option<Client> {
    let Ok(path) = std::env::var("KILN_E2E_KUBECONFIG") else {
        say(&format!(
            "SKIPPED e2e::{test}: KILN_E2E_KUBECONFIG is not set; point it at the kubeconfig of a disposable cluster (kind, k3d) to run the end-to-end tests"
        ));
        return None;
    };
    let kubeconfig =
        Kubeconfig::read_from(&path).unwrap_or_else(|e| panic!("KILN_E2E_KUBECONFIG={path}: {e}"));
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("KILN_E2E_KUBECONFIG={path}: {e}"));
    Some(Client::try_from(config).expect("a client for the e2e cluster"))
}

/// The cluster and a registry its build pods can push to, or `None` (after saying why).
async fn cluster_with_registry(test: &str) -> Option<(Client, String)> {
    let client = cluster(test).await?;
    let Ok(registry) = std::env::var("KILN_E2E_REGISTRY") else {
        say(&format!(
            "SKIPPED e2e::{test}: KILN_E2E_REGISTRY is not set; name a registry the build pods can push to"
        ));
        return None;
    };
    Some((client, registry))
}

/// A namespace of the test's own, with the CRD installed and the controller running.
struct Scene {
    client: Client,
    namespace: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    controller: tokio::task::JoinHandle<()>,
}

impl Scene {
    async fn new(client: Client, test: &str, registry: Option<&str>) -> Scene {
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        for crd in kiln::crd::crds() {
            crds.patch(
                &crd.name_any(),
                &PatchParams::apply("kiln-e2e").force(),
                &Patch::Apply(&crd),
            )
            .await
            .expect("install the CRD");
        }
        // The API server needs a moment to serve a new CRD.
        tokio::time::sleep(Duration::from_secs(2)).await;

        let suffix = std::process::id();
        let namespace = format!("kiln-e2e-{}-{suffix}", test.replace('_', "-"))
            .chars()
            .take(63)
            .collect::<String>()
            .trim_end_matches('-')
            .to_owned();
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap();
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .expect("create the test namespace");

        let mut config = Config {
            namespace: Some(namespace.clone()),
            ..Config::default()
        };
        if let Ok(image) = std::env::var("KILN_E2E_BUILDER_IMAGE") {
            config.builder_image = image;
        }
        if let (Some(registry), Ok("1")) = (
            registry,
            std::env::var("KILN_E2E_REGISTRY_PLAIN_HTTP").as_deref(),
        ) {
            config.plain_http_registries.insert(registry.to_owned());
        }
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let context = Context::new(client.clone(), config);
        let controller = tokio::spawn(async move {
            kiln::controller::run_with(context, async move {
                let _ = stopped.await;
            })
            .await
            .expect("controller");
        });
        Scene {
            client,
            namespace,
            stop: Some(stop),
            controller,
        }
    }

    fn builds(&self) -> Api<Build> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn apply(&self, build: serde_json::Value) -> Result<Build, kube::Error> {
        let build: Build = serde_json::from_value(build).expect("a Build");
        self.builds().create(&PostParams::default(), &build).await
    }

    /// Waits until `done` holds for the Build, up to `limit`.
    async fn wait(&self, name: &str, limit: Duration, done: impl Fn(&Build) -> bool) -> Build {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Ok(build) = self.builds().get(name).await
                && done(&build)
            {
                return build;
            }
            if tokio::time::Instant::now() > deadline {
                self.diagnose(name).await;
                panic!("Build {name} did not reach the expected state within {limit:?}");
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// Prints what a person needs to see why a test failed.
    async fn diagnose(&self, name: &str) {
        if let Ok(build) = self.builds().get(name).await {
            say(&format!(
                "--- Build {name}\n{}",
                serde_yaml::to_string(&build).unwrap_or_default()
            ));
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        for pod in pods
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
        {
            say(&format!(
                "--- pod {} status\n{}",
                pod.name_any(),
                serde_yaml::to_string(&pod.status).unwrap_or_default()
            ));
            if let Ok(logs) = pods.logs(&pod.name_any(), &Default::default()).await {
                let tail: Vec<&str> = logs.lines().rev().take(40).collect();
                say(&format!(
                    "--- pod {} log (last lines)\n{}",
                    pod.name_any(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ));
            }
        }
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.namespace);
        for event in events
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
        {
            say(&format!(
                "--- event {} {}: {}",
                event.type_.unwrap_or_default(),
                event.reason.unwrap_or_default(),
                event.note.unwrap_or_default()
            ));
        }
    }

    async fn live_pods(&self) -> Vec<String> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        pods.list(&ListParams::default())
            .await
            .expect("list pods")
            .items
            .iter()
            .filter(|p| kiln::controller::podstate::is_live(p))
            .map(|p| p.name_any())
            .collect()
    }

    /// Stops the controller and deletes the namespace.
    async fn finish(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), &mut self.controller).await;
        // Remove finalizers the stopped controller can no longer honour.
        for build in self
            .builds()
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
        {
            let _ = self
                .builds()
                .patch(
                    &build.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                )
                .await;
        }
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let _ = namespaces
            .delete(&self.namespace, &DeleteParams::background())
            .await;
    }
}

fn phase(build: &Build) -> Option<Phase> {
    build.status.as_ref().and_then(|s| s.phase)
}

#[tokio::test]
async fn e2e_the_api_server_rejects_an_invalid_build_naming_the_field() {
    let Some(client) =
        cluster("e2e_the_api_server_rejects_an_invalid_build_naming_the_field").await
    else {
        return;
    };
    let scene = Scene::new(client, "invalid", None).await;
    let result = scene
        .apply(json!({
            "apiVersion": "kiln.dev/v1alpha1",
            "kind": "Build",
            "metadata": {"name": "two-sources"},
            "spec": {
                "source": {"git": {"url": "https://github.com/moby/buildkit.git"}, "oci": {"image": "r/x:1"}},
                "output": {"image": "registry.example.com/x:1"},
            },
        }))
        .await;
    let error = format!(
        "{:?}",
        result.expect_err("the API server must reject two sources")
    );
    scene.finish().await;
    assert!(error.contains("spec.source"), "{error}");
}

#[tokio::test]
async fn e2e_an_inline_build_pushes_and_records_its_digest_then_leaves_no_pod_behind() {
    let test = "e2e_an_inline_build_pushes_and_records_its_digest_then_leaves_no_pod_behind";
    let Some((client, registry)) = cluster_with_registry(test).await else {
        return;
    };
    let scene = Scene::new(client, "inline", Some(&registry)).await;
    scene
        .apply(json!({
            "apiVersion": "kiln.dev/v1alpha1",
            "kind": "Build",
            "metadata": {"name": "hello"},
            "spec": {
                "source": {"inline": {
                    "dockerfile": "FROM busybox:1.36\nCOPY greeting /greeting\nRUN cat /greeting\n",
                    "files": [{"path": "greeting", "content": "hello from kiln\n"}],
                }},
                "output": {"image": format!("{registry}/kiln-e2e/{}:latest", scene.namespace)},
            },
        }))
        .await
        .expect("create the Build");
    let build = scene
        .wait("hello", Duration::from_secs(600), |b| {
            phase(b).is_some_and(|p| p.is_terminal())
        })
        .await;
    if phase(&build) != Some(Phase::Succeeded) {
        scene.diagnose("hello").await;
    }
    let digest = build
        .status
        .as_ref()
        .and_then(|s| s.output.as_ref())
        .map(|o| o.digest.clone());
    scene
        .builds()
        .delete("hello", &DeleteParams::default())
        .await
        .expect("delete the Build");
    let gone_deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while scene
        .builds()
        .get_opt("hello")
        .await
        .ok()
        .flatten()
        .is_some()
    {
        assert!(
            tokio::time::Instant::now() < gone_deadline,
            "the finalizer never let go"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let live = scene.live_pods().await;
    scene.finish().await;
    assert_eq!(phase(&build), Some(Phase::Succeeded));
    let digest = digest.expect("a digest in status.output");
    assert!(digest.parse::<kiln::digest::Digest>().is_ok(), "{digest}");
    assert!(live.is_empty(), "pods left behind: {live:?}");
}

#[tokio::test]
async fn e2e_cancel_stops_the_build_pod() {
    let test = "e2e_cancel_stops_the_build_pod";
    let Some((client, registry)) = cluster_with_registry(test).await else {
        return;
    };
    let scene = Scene::new(client, "cancel", Some(&registry)).await;
    scene
        .apply(json!({
            "apiVersion": "kiln.dev/v1alpha1",
            "kind": "Build",
            "metadata": {"name": "slow"},
            "spec": {
                "source": {"inline": {"dockerfile": "FROM busybox:1.36\nRUN sleep 900\n"}},
                "output": {"image": format!("{registry}/kiln-e2e/{}:slow", scene.namespace)},
            },
        }))
        .await
        .expect("create the Build");
    scene
        .wait("slow", Duration::from_secs(300), |b| {
            phase(b) == Some(Phase::Running)
        })
        .await;
    scene
        .builds()
        .patch(
            "slow",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"cancel": true}})),
        )
        .await
        .expect("cancel");
    let build = scene
        .wait("slow", Duration::from_secs(120), |b| {
            phase(b) == Some(Phase::Cancelled)
        })
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut live = scene.live_pods().await;
    while !live.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(2)).await;
        live = scene.live_pods().await;
    }
    scene.finish().await;
    assert_eq!(phase(&build), Some(Phase::Cancelled));
    assert!(
        live.is_empty(),
        "the cancelled build's pod still runs: {live:?}"
    );
}
