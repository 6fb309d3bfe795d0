//! End-to-end tests against a real cluster. They run only when `KILN_E2E_KUBECONFIG` names
//! a kubeconfig (use a disposable cluster: kind, k3d); otherwise each test says loudly why
//! it was skipped and passes. `scripts/e2e-kind.sh` sets everything up on kind and runs
//! them.
//!
//! Each test works in a namespace of its own, prints the Build, its pods, their logs and
//! Events when it fails, and deletes its namespace at the end. What they cover: the API
//! server rejects an invalid Build naming the field; a Build pushes and records its digest
//! (and `kubectl kiln status` shows it); the second of two Builds sharing a cache hits it,
//! and `kubectl kiln cache du` finds that cache; a cancelled Build's pod stops; after
//! the Builds are deleted no pod or ConfigMap of theirs is left; the installed controller
//! and cache answer `/metrics`, and exactly one controller replica leads.
//!
//! Two modes:
//! - **installed** (`KILN_E2E_INSTALLED=<namespace>`): Kiln runs in the cluster (the Helm
//!   chart in that namespace); the tests only make Builds. The cache and metrics tests
//!   need it.
//! - **in-process** (otherwise): each test installs the CRD (server-side apply) and runs
//!   the controller in-process for its namespace, without a cache service.
//!
//! Environment:
//! - `KILN_E2E_KUBECONFIG`: the cluster (required to run).
//! - `KILN_E2E_INSTALLED`: the namespace of an installed Kiln (the Helm release).
//! - `KILN_E2E_REGISTRY`: `host[:port]` of a registry the build pods can push to (required
//!   by the tests that build; for kind's local registry, `kind-registry:5000`).
//! - `KILN_E2E_REGISTRY_PLAIN_HTTP=1`: that registry speaks plain HTTP.
//! - `KILN_E2E_BUILDER_IMAGE`: builder image to use instead of the default (in-process).

use std::io::Write;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
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

/// The namespace of the Kiln installed in the cluster, when the suite runs against one.
fn installed() -> Option<String> {
    std::env::var("KILN_E2E_INSTALLED")
        .ok()
        .filter(|ns| !ns.is_empty())
}

/// The cluster with an installed Kiln and a registry, or `None` (after saying why).
async fn installed_cluster_with_registry(test: &str) -> Option<(Client, String, String)> {
    let (client, registry) = cluster_with_registry(test).await?;
    let Some(release_namespace) = installed() else {
        say(&format!(
            "SKIPPED e2e::{test}: needs an installed Kiln (its cache service and metrics); set KILN_E2E_INSTALLED to the namespace of the Helm release, as scripts/e2e-kind.sh does"
        ));
        return None;
    };
    Some((client, registry, release_namespace))
}

/// A namespace of the test's own, with the CRD installed and a controller running (the
/// installed one, or one in-process).
struct Scene {
    client: Client,
    namespace: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    controller: Option<tokio::task::JoinHandle<()>>,
}

impl Scene {
    async fn new(client: Client, test: &str, registry: Option<&str>) -> Scene {
        if installed().is_none() {
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
        }

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

        if installed().is_some() {
            return Scene {
                client,
                namespace,
                stop: None,
                controller: None,
            };
        }
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
            controller: Some(controller),
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

    /// The pods and ConfigMaps Kiln made in the namespace, whatever their state.
    async fn managed_objects(&self) -> Vec<String> {
        let selector = ListParams::default().labels(&kiln::controller::labels::managed_selector());
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let config_maps: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut names: Vec<String> = pods
            .list(&selector)
            .await
            .expect("list pods")
            .items
            .iter()
            .map(|p| format!("pod/{}", p.name_any()))
            .collect();
        names.extend(
            config_maps
                .list(&selector)
                .await
                .expect("list ConfigMaps")
                .items
                .iter()
                .map(|c| format!("configmap/{}", c.name_any())),
        );
        names
    }

    /// Deletes a Build, waits until it is gone (its finalizer ran), and returns what Kiln
    /// objects remain in the namespace once they had `limit` to go.
    async fn delete_and_collect_leftovers(&self, names: &[&str], limit: Duration) -> Vec<String> {
        for name in names {
            self.builds()
                .delete(name, &DeleteParams::default())
                .await
                .expect("delete the Build");
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let mut remaining = Vec::new();
            for name in names {
                if self.builds().get_opt(name).await.ok().flatten().is_some() {
                    remaining.push(format!("build/{name}"));
                }
            }
            remaining.extend(self.managed_objects().await);
            if remaining.is_empty() || tokio::time::Instant::now() > deadline {
                return remaining;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// Stops the in-process controller (if any) and deletes the namespace.
    async fn finish(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut controller) = self.controller.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), &mut controller).await;
            // Remove finalizers the stopped controller can no longer honour (an installed
            // controller honours them while the namespace goes).
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
    // What `kubectl kiln status` shows of it.
    let report = kiln::plugin::api::status_report(&scene.client, &scene.namespace, "hello")
        .await
        .expect("kubectl kiln status");
    let status_text =
        kiln::plugin::render::status_report(&report, k8s_openapi::jiff::Timestamp::now());
    let leftovers = scene
        .delete_and_collect_leftovers(&["hello"], Duration::from_secs(120))
        .await;
    scene.finish().await;
    assert_eq!(phase(&build), Some(Phase::Succeeded));
    let digest = digest.expect("a digest in status.output");
    assert!(
        digest.parse::<kiln::oci::digest::Digest>().is_ok(),
        "{digest}"
    );
    assert!(status_text.contains(&digest), "{status_text}");
    assert!(
        leftovers.is_empty(),
        "left behind after the delete: {leftovers:?}"
    );
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
    let leftovers = scene
        .delete_and_collect_leftovers(&["slow"], Duration::from_secs(120))
        .await;
    scene.finish().await;
    assert_eq!(phase(&build), Some(Phase::Cancelled));
    assert!(
        live.is_empty(),
        "the cancelled build's pod still runs: {live:?}"
    );
    assert!(
        leftovers.is_empty(),
        "left behind after the delete: {leftovers:?}"
    );
}

/// The last attempt's pod log of a Build (its build container).
async fn last_attempt_log(scene: &Scene, build: &Build) -> String {
    let pod = build
        .status
        .as_ref()
        .and_then(|s| s.current_attempt())
        .map(|a| a.pod_name.clone())
        .expect("an attempt");
    let pods: Api<Pod> = Api::namespaced(scene.client.clone(), &scene.namespace);
    pods.logs(
        &pod,
        &kube::api::LogParams {
            container: Some(kiln::controller::podstate::BUILD_CONTAINER.to_owned()),
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("the log of pod {pod}: {e}"))
}

/// Two Builds of one Dockerfile sharing their namespace's cache: the second finds the
/// first's layers in the cache service (BuildKit prints `CACHED` for the step), and both
/// leave nothing behind when deleted.
#[tokio::test]
async fn e2e_the_second_build_hits_the_cache_the_first_exported() {
    let test = "e2e_the_second_build_hits_the_cache_the_first_exported";
    let Some((client, registry, release)) = installed_cluster_with_registry(test).await else {
        return;
    };
    let scene = Scene::new(client, "cache", Some(&registry)).await;
    // The step is unique to this namespace, so no earlier run's cache can answer it.
    let dockerfile = format!(
        "FROM busybox:1.36\nRUN echo 'built once for {}' > /marker && sleep 5\n",
        scene.namespace
    );
    let build = |name: &str| {
        json!({
            "apiVersion": "kiln.dev/v1alpha1",
            "kind": "Build",
            "metadata": {"name": name},
            "spec": {
                "source": {"inline": {"dockerfile": dockerfile}},
                "output": {"image": format!("{registry}/kiln-e2e/{}:{name}", scene.namespace)},
                "cache": {"mode": "Max", "scope": "Namespace"},
                // Keep the pods, so that their logs can be read.
                "retention": {"succeededPodTTL": "1h"},
            },
        })
    };
    let mut done = Vec::new();
    for name in ["first", "second"] {
        scene.apply(build(name)).await.expect("create the Build");
        let finished = scene
            .wait(name, Duration::from_secs(600), |b| {
                phase(b).is_some_and(|p| p.is_terminal())
            })
            .await;
        if phase(&finished) != Some(Phase::Succeeded) {
            scene.diagnose(name).await;
        }
        done.push(finished);
    }
    let [first, second] = <[Build; 2]>::try_from(done).expect("two Builds");
    let first_log = last_attempt_log(&scene, &first).await;
    let second_log = last_attempt_log(&scene, &second).await;
    // What `kubectl kiln cache du` sees, through its port-forward to the cache pod.
    let repositories = cache_repositories(&scene.client, &release).await;
    let leftovers = scene
        .delete_and_collect_leftovers(&["first", "second"], Duration::from_secs(120))
        .await;
    let scene_namespace = scene.namespace.clone();
    scene.finish().await;
    assert_eq!(phase(&first), Some(Phase::Succeeded));
    assert_eq!(phase(&second), Some(Phase::Succeeded));
    let cached = |log: &str| {
        log.lines()
            .any(|l| l.starts_with('#') && l.trim_end().ends_with(" CACHED"))
    };
    assert!(
        !cached(&first_log) || !first_log.contains("built once"),
        "the first build cannot have hit a cache nobody filled:\n{first_log}"
    );
    assert!(
        first_log.contains("exporting cache"),
        "the first build exported no cache:\n{first_log}"
    );
    assert!(
        cached(&second_log),
        "the second build hit no cache:\n{second_log}"
    );
    let shared = format!("{}/shared", scene_namespace);
    assert!(
        repositories.contains(&shared),
        "no {shared} in the cache: {repositories:?}"
    );
    assert!(
        leftovers.is_empty(),
        "left behind after the delete: {leftovers:?}"
    );
}

/// The repositories of the installed cache service, read as `kubectl kiln cache du` reads
/// them: the admin token from its Secret, a port-forward to the cache pod (the chart's
/// names for release `kiln`).
async fn cache_repositories(client: &Client, release_namespace: &str) -> Vec<String> {
    use kiln::plugin::forward::{self, CacheTarget};
    let target = CacheTarget {
        namespace: release_namespace.to_owned(),
        service: "kiln-cache".to_owned(),
        admin_secret: "kiln-cache-admin-token".to_owned(),
        admin_secret_key: "token".to_owned(),
    };
    let token = forward::admin_token(client, &target)
        .await
        .expect("the admin token");
    let local = forward::forward(client, &target)
        .await
        .expect("a port-forward to the cache");
    let report = kiln::cacheapi::client::AdminClient::new(&local.url, token)
        .expect("an admin client")
        .du()
        .await
        .expect("the cache's disk usage");
    report
        .repositories
        .iter()
        .map(|r| r.name.to_string())
        .collect()
}

/// GETs `path` through the API server's proxy.
async fn proxy_get(client: &Client, path: &str) -> Result<String, kube::Error> {
    let request = axum::http::Request::get(path)
        .body(Vec::new())
        .expect("a request");
    client.request_text(request).await
}

/// The installed controller and cache answer `/metrics`, and of the controller replicas
/// exactly one leads (the others stand by, ready).
#[tokio::test]
async fn e2e_the_installed_kiln_serves_metrics_and_one_replica_leads() {
    let test = "e2e_the_installed_kiln_serves_metrics_and_one_replica_leads";
    let Some(client) = cluster(test).await else {
        return;
    };
    let Some(release) = installed() else {
        say(&format!(
            "SKIPPED e2e::{test}: needs an installed Kiln; set KILN_E2E_INSTALLED to the namespace of the Helm release"
        ));
        return;
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &release);
    let controllers = pods
        .list(&ListParams::default().labels("app.kubernetes.io/component=controller"))
        .await
        .expect("list the controller pods")
        .items;
    assert!(!controllers.is_empty(), "no controller pods in {release}");
    let mut roles = Vec::new();
    for pod in &controllers {
        let base = format!(
            "/api/v1/namespaces/{release}/pods/{}:8080/proxy",
            pod.name_any()
        );
        let readiness = proxy_get(&client, &format!("{base}/readyz"))
            .await
            .unwrap_or_else(|e| panic!("/readyz of {}: {e}", pod.name_any()));
        let readiness: serde_json::Value = serde_json::from_str(&readiness).expect("JSON");
        roles.push(readiness["role"].as_str().unwrap_or_default().to_owned());
        let metrics = proxy_get(&client, &format!("{base}/metrics"))
            .await
            .unwrap_or_else(|e| panic!("/metrics of {}: {e}", pod.name_any()));
        assert!(metrics.contains("kiln_leader "), "{metrics}");
    }
    roles.sort();
    if controllers.len() > 1 {
        let leaders = roles.iter().filter(|r| *r == "leader").count();
        assert_eq!(leaders, 1, "roles: {roles:?}");
        assert!(
            roles.iter().all(|r| r == "leader" || r == "standby"),
            "{roles:?}"
        );
    }
    let caches = pods
        .list(&ListParams::default().labels("app.kubernetes.io/component=cache"))
        .await
        .expect("list the cache pods")
        .items;
    for pod in &caches {
        let metrics = proxy_get(
            &client,
            &format!(
                "/api/v1/namespaces/{release}/pods/{}:5000/proxy/metrics",
                pod.name_any()
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("/metrics of {}: {e}", pod.name_any()));
        assert!(
            metrics.contains("# EOF") || metrics.contains("# TYPE"),
            "{metrics}"
        );
    }
}
