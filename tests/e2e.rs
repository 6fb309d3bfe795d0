//! End-to-end tests against a real cluster, with real BuildKit in the build pods. They run
//! only when `KILN_E2E_KUBECONFIG` names a kubeconfig (use a disposable cluster); otherwise
//! each test says loudly why it was skipped and passes, unless `KILN_E2E_REQUIRE=1`, which
//! turns every missing piece into a failure. `scripts/e2e-local.sh` builds a one-node
//! cluster on this machine (no pulls: every image is made here), installs the chart and
//! runs them with `KILN_E2E_REQUIRE=1`; `scripts/e2e-kind.sh` does the same on kind.
//!
//! Each test works in a namespace of its own, prints the Build, its pods, their logs and
//! Events when it fails, and deletes its namespace at the end. What they cover: the API
//! server rejects an invalid Build naming the field; an inline Build pushes, records the
//! digest the registry serves (and `kubectl kiln status` shows it), its pod runs with the
//! controller's security context, and nothing of it is left after the delete; a second
//! Build of one Dockerfile hits the cache the first exported (`kubectl kiln cache du`
//! finds it) and is faster; a Git source at a branch and subdirectory from a local
//! `git http-backend`; a failing step fails the Build with its log tail; build arguments
//! and a target stage reach the pushed image; a cancelled Build's pod stops; a killed
//! controller is replaced and the new leader adopts the running build; a cache outage
//! mid-build does not fail it; two Builds of one tag run one after the other; eight Builds
//! pull their base through the mirror, which fetches each blob from the upstream once; a
//! user-namespaced builder pod (`hostUsers: false`) builds; `kubectl kiln build --local`
//! uploads a directory into the build pod and the pushed image holds what `.dockerignore`
//! kept, and a second upload of the same tree sends nothing;
//! the installed controller and cache answer `/metrics`, and exactly one replica leads.
//! Each build prints how long it took from `kubectl apply` to its pod running, BuildKit
//! started and the build done.
//!
//! Two modes:
//! - **installed** (`KILN_E2E_INSTALLED=<namespace>`): Kiln runs in the cluster (the Helm
//!   chart in that namespace, release `kiln`); the tests only make Builds. The cache,
//!   mirror, controller-restart and metrics tests need it.
//! - **in-process** (otherwise): each test installs the CRD (server-side apply) and runs
//!   the controller in-process for its namespace, without a cache service.
//!
//! Environment:
//! - `KILN_E2E_KUBECONFIG`: the cluster (required to run).
//! - `KILN_E2E_REQUIRE=1`: fail, rather than skip, a test whose setup is missing.
//! - `KILN_E2E_INSTALLED`: the namespace of an installed Kiln (the Helm release `kiln`).
//! - `KILN_E2E_REGISTRY`: `host[:port]` of a registry the build pods can push to and this
//!   process can read with skopeo (required by the tests that build).
//! - `KILN_E2E_REGISTRY_PLAIN_HTTP=1`: that registry speaks plain HTTP.
//! - `KILN_E2E_HOST_IP`: an address of this process that build pods reach (the Git server).
//! - `KILN_E2E_UPSTREAM`, `KILN_E2E_UPSTREAM_LOG`: the plain-HTTP registry behind the
//!   installed cache's `docker.io` mirror, and its access log (the mirror test).
//! - `KILN_E2E_USERNS_BUILDER_IMAGE`: a builder image for user-namespaced pods.
//! - `KILN_E2E_TIMINGS`: a file to append each build's timings to.
//! - `KILN_E2E_BUILDER_IMAGE`: builder image to use instead of the default (in-process).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test stops where it fails

mod common;

use std::io::Write;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, ResourceExt};
use serde_json::json;

use kiln::controller::{Config, Context};
use kiln::crd::{Build, Phase, Reason};

/// Writes straight to the process's stderr, which the test harness does not capture, so
/// that a skip is visible in `cargo test` output.
fn say(message: &str) {
    let _ = writeln!(std::io::stderr(), "{message}");
}

/// Skips the test (after saying why), or fails it under `KILN_E2E_REQUIRE=1`.
fn skip<T>(test: &str, why: &str) -> Option<T> {
    if std::env::var("KILN_E2E_REQUIRE").as_deref() == Ok("1") {
        panic!("e2e::{test}: {why} (KILN_E2E_REQUIRE=1: nothing may be skipped)");
    }
    say(&format!("SKIPPED e2e::{test}: {why}"));
    None
}

/// The cluster, or `None` (after saying why) when the e2e suite is not configured.
async fn cluster(test: &str) -> Option<Client> {
    // The dev-dependencies enable a second rustls provider; pick the one Kiln uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Ok(path) = std::env::var("KILN_E2E_KUBECONFIG") else {
        return skip(
            test,
            "KILN_E2E_KUBECONFIG is not set; point it at the kubeconfig of a disposable cluster (scripts/e2e-local.sh makes one) to run the end-to-end tests",
        );
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
        return skip(
            test,
            "KILN_E2E_REGISTRY is not set; name a registry the build pods can push to",
        );
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
        return skip(
            test,
            "needs an installed Kiln (its cache service and metrics); set KILN_E2E_INSTALLED to the namespace of the Helm release, as scripts/e2e-local.sh does",
        );
    };
    Some((client, registry, release_namespace))
}

/// Tests that stop a part of the installed Kiln (the controller, the cache) take this
/// lock exclusively; every other building test shares it, so no build of theirs meets a
/// disruption it did not ask for.
static DISRUPTION: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

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
            tokio::time::sleep(Duration::from_millis(500)).await;
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

    /// The pods, ConfigMaps and Secrets Kiln made in the namespace, whatever their state.
    async fn managed_objects(&self) -> Vec<String> {
        let selector = ListParams::default().labels(&kiln::controller::labels::managed_selector());
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let config_maps: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
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
        names.extend(
            secrets
                .list(&selector)
                .await
                .expect("list Secrets")
                .items
                .iter()
                .map(|c| format!("secret/{}", c.name_any())),
        );
        names
    }

    /// The pods of Build `name`, live or not.
    async fn pods_of(&self, name: &str) -> Vec<Pod> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        pods.list(&ListParams::default().labels(&format!("kiln.dev/build={name}")))
            .await
            .expect("list pods")
            .items
    }

    /// Applies a Build and waits for it to finish: the finished Build and when it was
    /// applied.
    async fn run(&self, build: serde_json::Value, limit: Duration) -> (Build, Timestamp) {
        let name = build["metadata"]["name"].as_str().unwrap().to_owned();
        let applied = Timestamp::now();
        self.apply(build).await.expect("create the Build");
        let finished = self
            .wait(&name, limit, |b| phase(b).is_some_and(|p| p.is_terminal()))
            .await;
        if phase(&finished) != Some(Phase::Succeeded) {
            self.diagnose(&name).await;
        }
        (finished, applied)
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

fn reason(build: &Build) -> Option<Reason> {
    build.status.as_ref().and_then(|s| s.reason())
}

fn digest_of(build: &Build) -> Option<String> {
    build
        .status
        .as_ref()
        .and_then(|s| s.output.as_ref())
        .map(|o| o.digest.clone())
}

/// The skopeo flags that reach the test registry.
fn registry_flags() -> Vec<&'static str> {
    match std::env::var("KILN_E2E_REGISTRY_PLAIN_HTTP").as_deref() {
        Ok("1") => vec!["--tls-verify=false"],
        _ => vec![],
    }
}

/// The digest of the manifest the registry serves for `reference` (`host/repo:tag`).
fn registry_digest(reference: &str) -> String {
    let raw = common::skopeo::skopeo(
        &[
            &["inspect", "--raw"][..],
            &registry_flags(),
            &[&format!("docker://{reference}")],
        ]
        .concat(),
    );
    kiln::oci::digest::Digest::of(&raw).to_string()
}

/// The image manifest digest inside what a platform's pod pushed as `pushed` to
/// `image`'s repository: BuildKit's index of the image and its attestations.
fn platform_push_images(image: &str, pushed: &str) -> String {
    let repository = kiln::controller::buildkit::output_repository(image);
    let raw = common::skopeo::skopeo(
        &[
            &["inspect", "--raw"][..],
            &registry_flags(),
            &[&format!("docker://{repository}@{pushed}")],
        ]
        .concat(),
    );
    let pushed_index: serde_json::Value = serde_json::from_slice(&raw).expect("an image index");
    let images: Vec<String> = pushed_index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .filter(|m| m["platform"]["os"] != "unknown")
        .filter_map(|m| m["digest"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(images.len(), 1, "one image in {pushed}: {pushed_index}");
    images[0].clone()
}

/// The image configuration the registry serves for `reference`.
fn registry_config(reference: &str) -> serde_json::Value {
    let raw = common::skopeo::skopeo(
        &[
            &["inspect", "--config", "--raw"][..],
            &registry_flags(),
            &[&format!("docker://{reference}")],
        ]
        .concat(),
    );
    serde_json::from_slice(&raw).expect("an image configuration")
}

/// The log of the build container of the Build's last attempt, each line prefixed by its
/// RFC 3339 timestamp.
async fn last_attempt_log_with_timestamps(scene: &Scene, build: &Build) -> String {
    let pod = build
        .status
        .as_ref()
        .and_then(|s| s.current_attempt())
        .map(|a| a.pod_name.clone())
        .expect("an attempt");
    let pods: Api<Pod> = Api::namespaced(scene.client.clone(), &scene.namespace);
    // A native multi-platform attempt's pod is its index pod: its log ends with the push
    // of the index, the end of the whole build.
    let index = pods.get(&pod).await.is_ok_and(|p| {
        p.labels()
            .get(kiln::controller::labels::PLATFORM)
            .map(String::as_str)
            == Some(kiln::controller::labels::PLATFORM_INDEX)
    });
    let container = if index {
        kiln::controller::podstate::INDEX_CONTAINER
    } else {
        kiln::controller::podstate::BUILD_CONTAINER
    };
    pods.logs(
        &pod,
        &LogParams {
            container: Some(container.to_owned()),
            timestamps: true,
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("the log of pod {pod}: {e}"))
}

/// The Build's log without the timestamps.
fn strip_timestamps(log: &str) -> String {
    log.lines()
        .map(|l| l.split_once(' ').map_or(l, |(_, rest)| rest))
        .collect::<Vec<_>>()
        .join("\n")
}

/// How long one build took, from `kubectl apply`: its pod running (the build container
/// started), BuildKit started (the first line buildctl printed, once the daemon answered)
/// and the build done (the last line).
#[derive(Debug, Clone, Copy)]
struct Timings {
    pod_running: f64,
    buildkit_started: f64,
    build_done: f64,
}

async fn timings(scene: &Scene, build: &Build, applied: Timestamp, label: &str) -> Timings {
    let log = last_attempt_log_with_timestamps(scene, build).await;
    let stamp = |line: Option<&str>| -> f64 {
        line.and_then(|l| l.split_once(' '))
            .and_then(|(t, _)| t.parse::<Timestamp>().ok())
            .map_or(f64::NAN, |t| {
                (t - applied).total(jiff::Unit::Second).unwrap_or(f64::NAN)
            })
    };
    let pod = build
        .status
        .as_ref()
        .and_then(|s| s.current_attempt())
        .map(|a| a.pod_name.clone())
        .expect("an attempt");
    let pods: Api<Pod> = Api::namespaced(scene.client.clone(), &scene.namespace);
    let started = pods
        .get(&pod)
        .await
        .ok()
        .and_then(|p| p.status)
        .and_then(|s| s.container_statuses)
        .and_then(|c| c.into_iter().next())
        .and_then(|c| c.state)
        .and_then(|s| {
            s.terminated
                .and_then(|t| t.started_at)
                .or(s.running.and_then(|r| r.started_at))
        });
    let timings = Timings {
        pod_running: started.map_or(f64::NAN, |t| {
            (t.0 - applied)
                .total(jiff::Unit::Second)
                .unwrap_or(f64::NAN)
        }),
        buildkit_started: stamp(log.lines().next()),
        build_done: stamp(log.lines().last()),
    };
    let line = format!(
        "{label}: pod-running={:.1}s buildkit-started={:.1}s build-done={:.1}s (from kubectl apply)",
        timings.pod_running, timings.buildkit_started, timings.build_done
    );
    record_timing("build", &line);
    timings
}

/// Prints a measured time as a `TIMING` line and appends it, prefixed by `kind`, to
/// `$KILN_E2E_TIMINGS` when that is set.
fn record_timing(kind: &str, line: &str) {
    say(&format!("TIMING {line}"));
    if let Ok(path) = std::env::var("KILN_E2E_TIMINGS")
        && let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        let _ = writeln!(file, "{kind} {line}");
    }
}

fn inline_build(name: &str, dockerfile: &str, image: &str) -> serde_json::Value {
    json!({
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "Build",
        "metadata": {"name": name},
        "spec": {
            "source": {"inline": {"dockerfile": dockerfile}},
            "output": {"image": image},
            // Keep the pods, so that their logs can be read.
            "retention": {"succeededPodTTL": "1h"},
        },
    })
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

/// An inline Dockerfile `FROM busybox` with a `RUN` step: pushed, with the digest the
/// registry serves in `status.output.digest` (and in `kubectl kiln status`); the pod ran
/// with exactly the security context the controller writes; nothing of the Build is left
/// once it is deleted and swept.
#[tokio::test]
async fn e2e_an_inline_build_pushes_and_records_its_digest_then_leaves_no_pod_behind() {
    let test = "e2e_an_inline_build_pushes_and_records_its_digest_then_leaves_no_pod_behind";
    let Some((client, registry)) = cluster_with_registry(test).await else {
        return;
    };
    let _shared = DISRUPTION.read().await;
    let scene = Scene::new(client, "inline", Some(&registry)).await;
    let image = format!("{registry}/kiln-e2e/{}:latest", scene.namespace);
    let mut build = inline_build(
        "hello",
        "FROM busybox:1.36\nCOPY greeting /greeting\nRUN cat /greeting\n",
        &image,
    );
    build["spec"]["source"]["inline"]["files"] =
        json!([{"path": "greeting", "content": "hello from kiln\n"}]);
    let (build, applied) = scene.run(build, Duration::from_secs(600)).await;
    let digest = digest_of(&build);
    let timing = timings(&scene, &build, applied, "inline").await;
    // What `kubectl kiln status` shows of it.
    let report = kiln::plugin::api::status_report(&scene.client, &scene.namespace, "hello")
        .await
        .expect("kubectl kiln status");
    let status_text = kiln::plugin::render::status_report(&report, Timestamp::now());
    let pods = scene.pods_of("hello").await;
    let served = tokio::task::spawn_blocking({
        let image = image.clone();
        move || registry_digest(&image)
    })
    .await
    .unwrap();
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
    assert_eq!(
        digest, served,
        "the registry serves another manifest for {image}"
    );
    assert!(status_text.contains(&digest), "{status_text}");
    assert!(timing.build_done > 0.0, "{timing:?}");
    assert_eq!(pods.len(), 1, "one attempt, one pod");
    let spec = pods[0].spec.clone().unwrap();
    assert_eq!(
        spec.containers[0].security_context,
        Some(kiln::controller::pod::container_security_context()),
        "the pod runs with another security context than the controller writes"
    );
    assert!(
        leftovers.is_empty(),
        "left behind after the delete: {leftovers:?}"
    );
}

/// A signed Build: the key Secret is what `cosign generate-key-pair k8s://…` writes (the
/// encrypted key and its password); the build runs as the pod's last init container, the
/// Kiln image's `sign` container signs what it pushed, and the real `cosign verify --key`
/// accepts the image at its tag, by the digest the status records.
#[tokio::test]
async fn e2e_a_signed_build_pushes_an_image_cosign_verifies() {
    let test = "e2e_a_signed_build_pushes_an_image_cosign_verifies";
    let Some((client, registry)) = cluster_with_registry(test).await else {
        return;
    };
    let Some(cosign) = std::env::var_os("KILN_COSIGN") else {
        skip::<()>(
            test,
            "KILN_COSIGN is not set; scripts/install-test-deps.sh builds cosign (scripts/cosign.sh)",
        );
        return;
    };
    let _shared = DISRUPTION.read().await;
    let scene = Scene::new(client, "signed", Some(&registry)).await;
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sign");
    let key = std::fs::read_to_string(format!("{fixtures}/cosign.key")).expect("the test key");
    let secrets: Api<Secret> = Api::namespaced(scene.client.clone(), &scene.namespace);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "image-signing"},
        "stringData": {"cosign.key": key, "cosign.password": "test"}
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("create the signing Secret");
    let image = format!("{registry}/kiln-e2e/{}:signed", scene.namespace);
    let mut build = inline_build(
        "signed",
        "FROM busybox:1.36\nRUN echo signed > /signed\n",
        &image,
    );
    build["spec"]["signing"] = json!({"keySecretRef": {"name": "image-signing"}});
    let (build, applied) = scene.run(build, Duration::from_secs(600)).await;
    let timing = timings(&scene, &build, applied, "signed").await;
    let pods = scene.pods_of("signed").await;
    let verified = tokio::task::spawn_blocking({
        let image = image.clone();
        move || {
            let mut command = std::process::Command::new(cosign);
            command
                .args(["verify", "--key"])
                .arg(format!("{fixtures}/cosign.pub"));
            command.args(["--insecure-ignore-tlog=true", "--output=json"]);
            if std::env::var("KILN_E2E_REGISTRY_PLAIN_HTTP").as_deref() == Ok("1") {
                command.args(["--allow-insecure-registry", "--allow-http-registry"]);
            }
            let output = command.arg(&image).output().expect("run cosign");
            eprintln!(
                "cosign verify {image}: {}\n{}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            output
        }
    })
    .await
    .unwrap();
    scene.finish().await;
    assert_eq!(phase(&build), Some(Phase::Succeeded));
    assert!(timing.build_done > 0.0, "{timing:?}");
    let spec = pods[0].spec.clone().unwrap();
    let init: Vec<String> = spec
        .init_containers
        .unwrap_or_default()
        .iter()
        .map(|c| c.name.clone())
        .collect();
    assert_eq!(init.last().map(String::as_str), Some("build"), "{init:?}");
    assert_eq!(spec.containers[0].name, "sign");
    // What signing adds to the attempt: from the build's end to the signature pushed.
    let status = pods[0].status.clone().unwrap_or_default();
    let build_end = status
        .init_container_statuses
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.name == "build")
        .and_then(|c| c.state?.terminated?.finished_at);
    let sign_end = status
        .container_statuses
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.name == "sign")
        .and_then(|c| c.state?.terminated?.finished_at);
    if let (Some(build_end), Some(sign_end)) = (build_end, sign_end) {
        record_timing(
            "build",
            &format!(
                "signing: build ended -> signature pushed {:.0}s (whole seconds, as the kubelet reports)",
                (sign_end.0 - build_end.0)
                    .total(jiff::Unit::Second)
                    .unwrap_or(f64::NAN)
            ),
        );
    }
    assert!(
        verified.status.success(),
        "cosign verify refused the signed image"
    );
    let signatures: serde_json::Value =
        serde_json::from_slice(&verified.stdout).expect("cosign's JSON");
    let digest = digest_of(&build).expect("a digest");
    assert_eq!(
        signatures[0]["critical"]["image"]["docker-manifest-digest"], digest,
        "the signature covers the digest the status records"
    );
    let output = build
        .status
        .as_ref()
        .and_then(|s| s.output.clone())
        .unwrap();
    assert_eq!(
        output.signature,
        Some(format!(
            "{}:sha256-{}.sig",
            kiln::controller::buildkit::output_repository(&image),
            digest.trim_start_matches("sha256:")
        ))
    );
    assert_eq!(output.attestations, ["provenance"]);
}

/// `spec.attestations.sbom`: BuildKit runs the controller's SBOM generator (on the local
/// cluster the stand-in scanner of scripts/sbom, which BuildKit pulls through Kiln's
/// mirror as it pulls a base image) on the built filesystem, and pushes its SPDX document
/// as an attestation beside the provenance, in the index at the tag.
#[tokio::test]
async fn e2e_an_sbom_of_the_built_filesystem_is_pushed_beside_the_provenance() {
    let test = "e2e_an_sbom_of_the_built_filesystem_is_pushed_beside_the_provenance";
    let Some((client, registry, _release)) = installed_cluster_with_registry(test).await else {
        return;
    };
    let _shared = DISRUPTION.read().await;
    let scene = Scene::new(client, "sbom", Some(&registry)).await;
    let repository = format!("kiln-e2e/{}", scene.namespace);
    let image = format!("{registry}/{repository}:sbom");
    let mut build = inline_build(
        "sbom",
        "FROM scratch\nCOPY greeting /etc/greeting\n",
        &image,
    );
    build["spec"]["source"]["inline"]["files"] =
        json!([{"path": "greeting", "content": "hello from the sbom test\n"}]);
    build["spec"]["attestations"] = json!({"sbom": true});
    let (build, _applied) = scene.run(build, Duration::from_secs(600)).await;
    let manifests = tokio::task::spawn_blocking({
        let registry = registry.clone();
        let repository = repository.clone();
        move || {
            let raw = |reference: &str| -> serde_json::Value {
                let bytes = common::skopeo::skopeo(
                    &[
                        &["inspect", "--raw"][..],
                        &registry_flags(),
                        &[&format!("docker://{registry}/{repository}{reference}")],
                    ]
                    .concat(),
                );
                serde_json::from_slice(&bytes).expect("a manifest")
            };
            let index = raw(":sbom");
            let attestation = index["manifests"]
                .as_array()
                .expect("an index")
                .iter()
                .find(|m| m["platform"]["os"] == "unknown")
                .map(|m| raw(&format!("@{}", m["digest"].as_str().unwrap_or_default())));
            (index, attestation)
        }
    })
    .await
    .unwrap();
    let (index, attestation) = manifests;
    let attestation = attestation.unwrap_or_else(|| panic!("no attestation manifest in {index}"));
    let layers = attestation["layers"].as_array().expect("layers").clone();
    let predicates: Vec<&str> = layers
        .iter()
        .map(|l| {
            l["annotations"]["in-toto.io/predicate-type"]
                .as_str()
                .unwrap_or_default()
        })
        .collect();
    let spdx = layers
        .iter()
        .find(|l| l["annotations"]["in-toto.io/predicate-type"] == "https://spdx.dev/Document")
        .and_then(|l| l["digest"].as_str())
        .map(str::to_owned);
    let document = match &spdx {
        Some(digest) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            reqwest::get(format!("http://{registry}/v2/{repository}/blobs/{digest}"))
                .await
                .expect("fetch the SBOM")
                .text()
                .await
                .expect("the SBOM's text")
        }
        None => String::new(),
    };
    scene.finish().await;
    assert_eq!(phase(&build), Some(Phase::Succeeded));
    let output = build
        .status
        .as_ref()
        .and_then(|s| s.output.clone())
        .unwrap();
    assert_eq!(output.attestations, ["provenance", "sbom"]);
    assert!(
        predicates
            .iter()
            .any(|p| p.starts_with("https://slsa.dev/provenance/")),
        "{predicates:?}"
    );
    assert!(spdx.is_some(), "no SPDX attestation: {predicates:?}");
    let statement: serde_json::Value =
        serde_json::from_str(&document).expect("an in-toto statement");
    let files: Vec<&str> = statement["predicate"]["files"]
        .as_array()
        .expect("the SPDX document's files")
        .iter()
        .filter_map(|f| f["fileName"].as_str())
        .collect();
    assert_eq!(
        files,
        ["etc/greeting"],
        "the generator scanned the built filesystem"
    );
    assert_eq!(
        statement["subject"][0]["digest"]["sha256"]
            .as_str()
            .map(|h| format!("sha256:{h}")),
        index["manifests"][0]["digest"].as_str().map(str::to_owned),
        "BuildKit names the image the SBOM describes"
    );
}

/// A `FROM scratch` image built `Native` for linux/amd64 and linux/arm64 on the one node:
/// the chart maps linux/arm64 to the node's `kubernetes.io/os` (the platform→node-selector
/// flag), and a Dockerfile without `RUN` builds for any platform without emulation. Each
/// platform's pod pushes its image by digest, the index pod (the Kiln image, `kiln index
/// push`) pushes the index to the tag, and the registry serves exactly the index the
/// status names, arm64 included.
#[tokio::test]
async fn e2e_a_native_two_platform_build_pushes_one_image_per_platform_and_their_index() {
    let test = "e2e_a_native_two_platform_build_pushes_one_image_per_platform_and_their_index";
    let Some((client, registry, _)) = installed_cluster_with_registry(test).await else {
        return;
    };
    let _shared = DISRUPTION.read().await;
    let scene = Scene::new(client, "native", Some(&registry)).await;
    let two_platforms = |name: &str, tag: &str, strategy: &str| {
        let image = format!("{registry}/kiln-e2e/{}:{tag}", scene.namespace);
        let mut build = inline_build(name, "FROM scratch\nCOPY greeting /greeting\n", &image);
        build["spec"]["source"]["inline"]["files"] =
            json!([{"path": "greeting", "content": "hello from every platform\n"}]);
        build["spec"]["platforms"] = json!(["linux/amd64", "linux/arm64"]);
        build["spec"]["platformStrategy"] = json!(strategy);
        (build, image)
    };
    let (build, image) = two_platforms("multi", "multi", "Native");
    let (build, applied) = scene.run(build, Duration::from_secs(600)).await;
    let timing = timings(&scene, &build, applied, "native-two-platforms").await;
    let pods = scene.pods_of("multi").await;
    // The same build in one pod, for the wall time of both ways on this node.
    let (emulated, _) = two_platforms("emulated", "emulated", "Emulated");
    let (emulated, emulated_applied) = scene.run(emulated, Duration::from_secs(600)).await;
    let emulated_timing = timings(
        &scene,
        &emulated,
        emulated_applied,
        "emulated-two-platforms",
    )
    .await;
    let emulated_pods = scene.pods_of("emulated").await;
    let (raw, arm) = tokio::task::spawn_blocking({
        let image = image.clone();
        move || {
            let raw = common::skopeo::skopeo(
                &[
                    &["inspect", "--raw"][..],
                    &registry_flags(),
                    &[&format!("docker://{image}")],
                ]
                .concat(),
            );
            // What a pull on an arm64 machine fetches: copied into an OCI layout, whose
            // index names the one manifest it chose.
            let layout = tempfile::tempdir().expect("a temporary directory");
            let target = format!("oci:{}:arm", layout.path().display());
            common::skopeo::copy(
                &format!("docker://{image}"),
                &target,
                &["--override-os", "linux", "--override-arch", "arm64"],
            );
            let chosen: serde_json::Value = serde_json::from_slice(
                &std::fs::read(layout.path().join("index.json")).expect("the layout's index"),
            )
            .expect("an OCI index");
            let arm = chosen["manifests"][0]["digest"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            (raw, arm)
        }
    })
    .await
    .unwrap();
    scene.finish().await;

    assert_eq!(phase(&build), Some(Phase::Succeeded));
    let status = build.status.clone().unwrap();
    let served = kiln::oci::digest::Digest::of(&raw).to_string();
    assert_eq!(
        digest_of(&build).as_deref(),
        Some(served.as_str()),
        "the registry serves another index for {image}"
    );
    let index: serde_json::Value = serde_json::from_slice(&raw).expect("an image index");
    let entries = index["manifests"].as_array().expect("manifests").clone();
    let is_attestation = |m: &serde_json::Value| {
        m["annotations"]["vnd.docker.reference.type"].as_str() == Some("attestation-manifest")
    };
    let listed: Vec<(String, String)> = entries
        .iter()
        .filter(|m| !is_attestation(m))
        .map(|m| {
            (
                m["platform"]["architecture"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                m["digest"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    // Each platform pushed an index of its image and its provenance (on by default); the
    // merged index lists each platform's image, then the attestations naming them.
    let recorded: Vec<(String, String)> = status
        .platforms
        .iter()
        .map(|p| {
            let pushed = p.digest.clone().unwrap_or_default();
            let own = platform_push_images(&image, &pushed);
            (
                p.platform.rsplit('/').next().unwrap_or_default().to_owned(),
                own,
            )
        })
        .collect();
    assert_eq!(
        listed, recorded,
        "the index lists the image of each platform's push, in order"
    );
    let described: Vec<&str> = entries
        .iter()
        .filter(|m| is_attestation(m))
        .map(|m| {
            assert_eq!(m["platform"]["os"], "unknown", "{m}");
            m["annotations"]["vnd.docker.reference.digest"]
                .as_str()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        described,
        listed.iter().map(|(_, d)| d.as_str()).collect::<Vec<_>>(),
        "one provenance attestation per platform's image, after the images"
    );
    assert_eq!(listed[0].0, "amd64");
    assert_eq!(listed[1].0, "arm64");
    assert_eq!(arm, listed[1].1, "an arm64 pull fetches the arm64 image");
    let mut names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "multi-1-index",
            "multi-1-linux-amd64",
            "multi-1-linux-arm64"
        ]
    );
    assert!(timing.build_done > 0.0, "{timing:?}");
    assert_eq!(phase(&emulated), Some(Phase::Succeeded));
    assert_eq!(
        emulated_pods.len(),
        1,
        "Emulated builds every platform in one pod"
    );
    assert!(emulated_timing.build_done > 0.0, "{emulated_timing:?}");
}

#[tokio::test]
async fn e2e_cancel_stops_the_build_pod() {
    let test = "e2e_cancel_stops_the_build_pod";
    let Some((client, registry)) = cluster_with_registry(test).await else {
        return;
    };
    let _shared = DISRUPTION.read().await;
    let scene = Scene::new(client, "cancel", Some(&registry)).await;
    scene
        .apply(inline_build(
            "slow",
            "FROM busybox:1.36\nRUN echo started && sleep 900\n",
            &format!("{registry}/kiln-e2e/{}:slow", scene.namespace),
        ))
        .await
        .expect("create the Build");
    // Running, and BuildKit inside the step: what a cancel has to stop.
    wait_for_log_line(&scene, "slow", "started", Duration::from_secs(300)).await;
    let cancelled_at = tokio::time::Instant::now();
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
        tokio::time::sleep(Duration::from_millis(500)).await;
        live = scene.live_pods().await;
    }
    let stopped_after = cancelled_at.elapsed();
    say(&format!(
        "TIMING cancel: the pod stopped {:.1}s after the cancel",
        stopped_after.as_secs_f64()
    ));
    let leftovers = scene
        .delete_and_collect_leftovers(&["slow"], Duration::from_secs(120))
        .await;
    scene.finish().await;
    assert_eq!(phase(&build), Some(Phase::Cancelled));
    assert!(
        live.is_empty(),
        "the cancelled build's pod still runs: {live:?}"
    );
    // The controller's default grace period (30s), and a little for the kubelet.
    assert!(
        stopped_after < Duration::from_secs(45),
        "the pod took {stopped_after:?} to stop"
    );
    assert!(
        leftovers.is_empty(),
        "left behind after the delete: {leftovers:?}"
    );
}

/// Waits until the log of Build `name`'s current attempt holds a line containing `text`.
async fn wait_for_log_line(scene: &Scene, name: &str, text: &str, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    let pods: Api<Pod> = Api::namespaced(scene.client.clone(), &scene.namespace);
    loop {
        if let Ok(build) = scene.builds().get(name).await
            && let Some(attempt) = build.status.as_ref().and_then(|s| s.current_attempt())
            && let Ok(log) = pods
                .logs(
                    &attempt.pod_name,
                    &LogParams {
                        container: Some(kiln::controller::podstate::BUILD_CONTAINER.to_owned()),
                        ..Default::default()
                    },
                )
                .await
            && log.lines().any(|l| l.contains(text))
        {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            scene.diagnose(name).await;
            panic!("Build {name} never logged {text:?} within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The last attempt's pod log of a Build (its build container).
async fn last_attempt_log(scene: &Scene, build: &Build) -> String {
    strip_timestamps(&last_attempt_log_with_timestamps(scene, build).await)
}

/// Whether BuildKit reported a step `CACHED`.
fn cached(log: &str) -> bool {
    log.lines()
        .any(|l| l.starts_with('#') && l.trim_end().ends_with(" CACHED"))
}

/// Two Builds of one Dockerfile sharing their namespace's cache: the second finds the
/// first's layers in the cache service (BuildKit prints `CACHED` for the step) and is
/// faster, `kubectl kiln cache du` finds the cache, and both leave nothing behind when
/// deleted.
#[tokio::test]
async fn e2e_the_second_build_hits_the_cache_the_first_exported() {
    let test = "e2e_the_second_build_hits_the_cache_the_first_exported";
    let Some((client, registry, release)) = installed_cluster_with_registry(test).await else {
        return;
    };
    let _shared = DISRUPTION.read().await;
    let scene = Scene::new(client, "cache", Some(&registry)).await;
    // The step is unique to this namespace, so no earlier run's cache can answer it.
    let dockerfile = format!(
        "FROM busybox:1.36\nRUN echo 'built once for {}' > /marker && sleep 5\n",
        scene.namespace
    );
    let build = |name: &str| {
        let mut build = inline_build(
            name,
            &dockerfile,
            &format!("{registry}/kiln-e2e/{}:{name}", scene.namespace),
        );
        build["spec"]["cache"] = json!({"mode": "Max", "scope": "Namespace"});
        build
    };
    let mut done = Vec::new();
    for name in ["first", "second"] {
        let (finished, applied) = scene.run(build(name), Duration::from_secs(600)).await;
        let timing = timings(&scene, &finished, applied, &format!("cache-{name}")).await;
        done.push((finished, timing));
    }
    let [(first, first_time), (second, second_time)] =
        <[(Build, Timings); 2]>::try_from(done).expect("two Builds");
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
    say(&format!(
        "TIMING cache: first build done {:.1}s after apply, second {:.1}s",
        first_time.build_done, second_time.build_done
    ));
    assert!(
        second_time.build_done < first_time.build_done,
        "the cached build was not faster: {first_time:?} then {second_time:?}"
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

/// A Git source from a local `git http-backend`, at a branch and a subdirectory: the
/// Dockerfile and the context come from that directory of that branch.
#[tokio::test]
async fn e2e_a_git_source_builds_a_branch_and_a_subdirectory() {
    let test = "e2e_a_git_source_builds_a_branch_and_a_subdirectory";
    let Some((client, registry)) = cluster_with_registry(test).await else {
        return;
    };
    let Ok(host) = std::env::var("KILN_E2E_HOST_IP") else {
        return skip(
            test,
            "KILN_E2E_HOST_IP is not set; name an address of this process the build pods reach",
        )
        .unwrap_or(());
    };
    let _shared = DISRUPTION.read().await;
    let repository = git::repository_with_branch();
    let server = git::Server::start(repository.path());
    let scene = Scene::new(client, "git", Some(&registry)).await;
    let url = format!("http://{host}:{}/app.git", server.port());
    let (build, applied) = scene
        .run(
            json!({
                "apiVersion": "kiln.dev/v1alpha1",
                "kind": "Build",
                "metadata": {"name": "from-git"},
                "spec": {
                    "source": {"git": {"url": url, "revision": "feature", "contextDir": "app"}},
                    "output": {"image": format!("{registry}/kiln-e2e/{}:git", scene.namespace)},
                    "retention": {"succeededPodTTL": "1h"},
                },
            }),
            Duration::from_secs(600),
        )
        .await;
    timings(&scene, &build, applied, "git").await;
    let log = last_attempt_log(&scene, &build).await;
    let requests = server.requests();
    scene.finish().await;
    assert_eq!(phase(&build), Some(Phase::Succeeded), "{log}");
    assert!(
        log.contains("message from the feature branch"),
        "the build did not use app/ of the feature branch:\n{log}"
    );
    assert!(requests > 0, "the Git server saw no request");
}

/// A `RUN` step that fails: the Build fails with reason BuildFailed and the log's tail in
/// its status, and `kubectl kiln logs` shows the failing step.
#[tokio::test]
async fn e2e_a_failing_step_fails_the_build_with_its_log_tail() {
    let test = "e2e_a_failing_step_fails_the_build_with_its_log_tail";
    let Some((client, registry)) = cluster_with_registry(test).await else {
        return;
    };
    let _shared = DISRUPTION.read().await;
    let scene = Scene::new(client, "failing", Some(&registry)).await;
    let (build, _) = scene
        .run(
            inline_build(
                "broken",
                "FROM busybox:1.36\nRUN echo about to fail && false\n",
                &format!("{registry}/kiln-e2e/{}:broken", scene.namespace),
            ),
            Duration::from_secs(600),
        )
        .await;
    let mut logs = Vec::new();
    kiln::plugin::api::logs(
        &scene.client,
        &scene.namespace,
        "broken",
        &kiln::plugin::api::LogRequest {
            attempt: None,
            follow: false,
            container: kiln::controller::podstate::BUILD_CONTAINER.to_owned(),
            tail: None,
        },
        &mut logs,
    )
    .await
    .expect("kubectl kiln logs");
    let logs = String::from_utf8_lossy(&logs).into_owned();
    scene.finish().await;
    assert_eq!(phase(&build), Some(Phase::Failed));
    assert_eq!(reason(&build), Some(Reason::BuildFailed));
    let message = build
        .status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains("exit code: 1") || message.contains("did not complete successfully"),
        "no log tail in the status: {message}"
    );
    assert!(
        logs.contains("RUN echo about to fail && false") && logs.contains("about to fail"),
        "kubectl kiln logs does not show the failing step:\n{logs}"
    );
}

/// A finished build's log outlives its pod: the installed controller stores it in the
/// cache when the attempt ends, the status says where, `kubectl kiln logs` reads the same
/// bytes there once the pod is gone, it counts under its namespace in `du`, and deleting
/// the Build deletes it.
#[tokio::test]
async fn e2e_a_build_log_outlives_its_pod_in_the_cache() {
    use kiln::plugin::forward::{self, CacheTarget};
    let test = "e2e_a_build_log_outlives_its_pod_in_the_cache";
    let Some((client, registry, release_namespace)) = installed_cluster_with_registry(test).await
    else {
        return;
    };
    let _shared = DISRUPTION.read().await;
    let scene = Scene::new(client, "stored-log", Some(&registry)).await;
    let marker = format!("kiln-log-marker-{}", scene.namespace);
    let (build, _) = scene
        .run(
            inline_build(
                "logged",
                &format!("FROM busybox:1.36\nRUN echo {marker} && seq 1 2000\n"),
                &format!("{registry}/kiln-e2e/{}:logged", scene.namespace),
            ),
            Duration::from_secs(600),
        )
        .await;
    assert_eq!(phase(&build), Some(Phase::Succeeded));
    let request = kiln::plugin::api::LogRequest {
        attempt: None,
        follow: false,
        container: kiln::controller::podstate::BUILD_CONTAINER.to_owned(),
        tail: None,
    };
    let mut from_pod = Vec::new();
    kiln::plugin::api::logs(
        &scene.client,
        &scene.namespace,
        "logged",
        &request,
        &mut from_pod,
    )
    .await
    .expect("kubectl kiln logs while the pod exists");

    let recorded = scene
        .wait("logged", Duration::from_secs(60), |b| {
            b.status
                .as_ref()
                .and_then(|s| s.attempts.first())
                .is_some_and(|a| a.log.is_some())
        })
        .await;
    let log = recorded.status.as_ref().unwrap().attempts[0]
        .log
        .clone()
        .unwrap();
    let ended = recorded.status.as_ref().unwrap().attempts[0]
        .completion_time
        .clone()
        .expect("the attempt ended");
    record_timing(
        "stored-log",
        &format!(
            "build log stored: {} bytes, seen recorded in the status at most {:.1}s after the attempt ended",
            log.size,
            Timestamp::now().duration_since(ended.0).as_secs_f64()
        ),
    );
    assert_eq!(log.repository, format!("{}/kiln_logs", scene.namespace));
    assert_eq!(log.truncated_bytes, 0);

    // The pod goes (as its retention would have it go), and the log is read from the cache.
    let pod = recorded.status.as_ref().unwrap().attempts[0]
        .pod_name
        .clone();
    let pods: Api<Pod> = Api::namespaced(scene.client.clone(), &scene.namespace);
    pods.delete(&pod, &DeleteParams::default())
        .await
        .expect("delete the finished pod");
    for _ in 0..60 {
        if pods.get_opt(&pod).await.expect("get the pod").is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut nothing = Vec::new();
    let gone = kiln::plugin::api::logs(
        &scene.client,
        &scene.namespace,
        "logged",
        &request,
        &mut nothing,
    )
    .await;
    let Err(kiln::plugin::error::PluginError::LogStored { log: named, .. }) = gone else {
        panic!("the plugin should find the stored log: {gone:?}");
    };
    assert_eq!(named, log);
    let target = CacheTarget {
        namespace: release_namespace.clone(),
        service: "kiln-cache".to_owned(),
        admin_secret: "kiln-cache-admin-token".to_owned(),
        admin_secret_key: "token".to_owned(),
    };
    let token = forward::admin_token(&scene.client, &target)
        .await
        .expect("the admin token");
    let local = forward::forward(&scene.client, &target)
        .await
        .expect("a port-forward to the cache");
    let admin =
        kiln::cacheapi::client::AdminClient::new(&local.url, token).expect("an admin client");
    let stored = kiln::plugin::api::read_stored_log(&admin, 1, &log)
        .await
        .expect("the stored log");
    assert_eq!(stored.len() as u64, log.size);
    assert!(
        String::from_utf8_lossy(&stored).contains(&marker),
        "the stored log lacks the RUN step's output"
    );
    assert_eq!(
        stored.as_ref(),
        from_pod.as_slice(),
        "the stored log is the pod's log, byte for byte"
    );
    let repositories = cache_repositories(&scene.client, &release_namespace).await;
    assert!(
        repositories.contains(&log.repository),
        "du does not list {}: {repositories:?}",
        log.repository
    );

    // Deleting the Build deletes its stored log.
    scene
        .builds()
        .delete("logged", &DeleteParams::default())
        .await
        .expect("delete the Build");
    let mut left = true;
    for _ in 0..60 {
        if scene
            .builds()
            .get_opt("logged")
            .await
            .expect("get the Build")
            .is_none()
        {
            left = false;
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(!left, "the Build's finalizer did not finish");
    let repository = kiln::oci::name::RepoName::parse(&log.repository).unwrap();
    let tag = kiln::oci::name::Tag::parse(&log.tag).unwrap();
    let after = admin
        .get_log(&repository, &tag)
        .await
        .expect("ask the cache");
    scene.finish().await;
    assert!(after.is_none(), "the stored log outlived its Build");
}

/// `spec.buildArgs` and `spec.target` reach BuildKit: the pushed image is the target
/// stage, with the argument's value in its labels.
#[tokio::test]
async fn e2e_build_args_and_the_target_stage_reach_the_pushed_image() {
    let test = "e2e_build_args_and_the_target_stage_reach_the_pushed_image";
    let Some((client, registry)) = cluster_with_registry(test).await else {
        return;
    };
    let _shared = DISRUPTION.read().await;
    let scene = Scene::new(client, "args", Some(&registry)).await;
    let image = format!("{registry}/kiln-e2e/{}:args", scene.namespace);
    let mut build = inline_build(
        "args",
        "FROM busybox:1.36 AS chosen\nARG GREETING=unset\nLABEL e2e.greeting=$GREETING e2e.stage=chosen\n\
         FROM busybox:1.36 AS other\nLABEL e2e.stage=other\n",
        &image,
    );
    build["spec"]["target"] = json!("chosen");
    build["spec"]["buildArgs"] = json!({"GREETING": "hello-args"});
    let (build, _) = scene.run(build, Duration::from_secs(600)).await;
    let config = if phase(&build) == Some(Phase::Succeeded) {
        tokio::task::spawn_blocking(move || registry_config(&image))
            .await
            .unwrap()
    } else {
        json!(null)
    };
    scene.finish().await;
    assert_eq!(phase(&build), Some(Phase::Succeeded));
    let labels = &config["config"]["Labels"];
    assert_eq!(labels["e2e.stage"], "chosen", "{config}");
    assert_eq!(labels["e2e.greeting"], "hello-args", "{config}");
}

/// The files of the image `reference`'s layers (copied by skopeo into an OCI layout),
/// relative, sorted, directories left out.
fn image_files(reference: &str) -> Vec<String> {
    let layout = tempfile::tempdir().unwrap();
    let target = format!("oci:{}:image", layout.path().display());
    let source_tls: Vec<&str> = match std::env::var("KILN_E2E_REGISTRY_PLAIN_HTTP").as_deref() {
        Ok("1") => vec!["--src-tls-verify=false"],
        _ => vec![],
    };
    common::skopeo::skopeo(
        &[
            &["copy"][..],
            &source_tls,
            &[&format!("docker://{reference}"), &target],
        ]
        .concat(),
    );
    let blob = |digest: &str| {
        let (algorithm, hex) = digest.split_once(':').unwrap();
        std::fs::read(layout.path().join("blobs").join(algorithm).join(hex)).unwrap()
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.path().join("index.json")).unwrap()).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap();
    let mut files = Vec::new();
    for layer in manifest["layers"].as_array().unwrap() {
        let mut bytes = blob(layer["digest"].as_str().unwrap());
        if bytes.starts_with(&[0x1f, 0x8b]) {
            // Still gzip (skopeo leaves a layer it does not recompress as it is).
            let mut gunzip = std::process::Command::new("gzip")
                .arg("-dc")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("gzip");
            let mut stdin = gunzip.stdin.take().unwrap();
            let writer = std::thread::spawn(move || stdin.write_all(&bytes));
            let output = gunzip.wait_with_output().expect("gzip -dc");
            writer.join().unwrap().unwrap();
            assert!(output.status.success(), "gzip -dc failed");
            bytes = output.stdout;
        }
        let mut archive = tar::Archive::new(bytes.as_slice());
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            if entry.header().entry_type().is_file() {
                files.push(entry.path().unwrap().display().to_string());
            }
        }
    }
    files.sort();
    files
}

/// Runs `kubectl kiln build --local` in the scene's namespace: its outcome, and what it
/// printed on stdout and stderr.
async fn build_local(
    scene: &Scene,
    args: &kiln::plugin::local::LocalBuildArgs,
) -> (
    Result<kiln::plugin::upload::LocalBuildOutcome, kiln::plugin::error::PluginError>,
    String,
    String,
) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let result = {
        let mut console = kiln::plugin::upload::Console {
            out: &mut out,
            err: &mut err,
            err_is_terminal: false,
        };
        kiln::plugin::upload::build_local(
            scene.client.clone(),
            &scene.namespace,
            args,
            &mut console,
        )
        .await
    };
    (
        result,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

/// `kubectl kiln build --local` of a directory on this machine: the plugin packs it (its
/// `.dockerignore` applied), uploads it through the API server into the build pod's
/// `context` init container (the Kiln image), which stores it in the installed cache and
/// unpacks it; real BuildKit builds it and the pushed image holds the kept files and none
/// of the ignored ones. A second upload of the same tree sends nothing.
#[tokio::test]
async fn e2e_a_local_directory_is_uploaded_built_and_pushed_without_its_ignored_files() {
    let test = "e2e_a_local_directory_is_uploaded_built_and_pushed_without_its_ignored_files";
    let Some((client, registry, _)) = installed_cluster_with_registry(test).await else {
        return;
    };
    let _shared = DISRUPTION.read().await;
    let scene = Scene::new(client, "local", Some(&registry)).await;
    let image = format!("{registry}/kiln-e2e/{}:local", scene.namespace);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::create_dir_all(root.join("target")).unwrap();
    std::fs::write(root.join("Dockerfile"), "FROM scratch\nCOPY . /ctx/\n").unwrap();
    std::fs::write(root.join(".dockerignore"), "target\n**/*.secret\n").unwrap();
    std::fs::write(root.join("src/main.txt"), "built from a laptop\n").unwrap();
    std::fs::write(root.join("src/key.secret"), "never uploaded\n").unwrap();
    std::fs::write(root.join("target/big.bin"), vec![0u8; 1 << 20]).unwrap();
    let args = |name: &str| kiln::plugin::local::LocalBuildArgs {
        dir: root.to_owned(),
        image: image.clone(),
        name: Some(name.to_owned()),
        follow: true,
        ..kiln::plugin::local::LocalBuildArgs::default()
    };
    let started = std::time::Instant::now();
    let (first, out, err) = build_local(&scene, &args("laptop")).await;
    let elapsed = started.elapsed();
    say(&format!(
        "build --local: {:.1} s from the command to the end of the build\n{err}",
        elapsed.as_secs_f64(),
    ));
    let first = match first {
        Ok(outcome) => outcome,
        Err(error) => {
            scene.diagnose("laptop").await;
            panic!("build --local failed: {error}");
        }
    };
    let build = scene.builds().get("laptop").await.unwrap();
    let files = if phase(&build) == Some(Phase::Succeeded) {
        let image = image.clone();
        tokio::task::spawn_blocking(move || image_files(&image))
            .await
            .unwrap()
    } else {
        scene.diagnose("laptop").await;
        Vec::new()
    };
    let (second, _, err2) = build_local(&scene, &args("laptop-again")).await;
    scene.finish().await;
    assert!(kiln::plugin::upload::succeeded(&first), "{first:?}\n{out}");
    assert_eq!(first.bytes_sent, first.size);
    assert_eq!(
        files,
        ["ctx/.dockerignore", "ctx/Dockerfile", "ctx/src/main.txt"],
        "the image holds what .dockerignore kept"
    );
    let second = second.unwrap_or_else(|e| panic!("the second build --local failed: {e}"));
    assert_eq!(second.bytes_sent, 0, "{err2}");
    assert!(kiln::plugin::upload::succeeded(&second), "{second:?}");
}

/// What a 100 MiB context costs: the time from the command to the receiver (packing,
/// the Build, scheduling, the receiver's start) and the upload's rate through the API
/// server. Printed as TIMING lines; asserted only to have happened. The Build is deleted
/// once its context is in, so the figure is the upload's, not a build's.
#[tokio::test]
async fn e2e_a_100_mib_context_is_uploaded_and_its_rate_measured() {
    let test = "e2e_a_100_mib_context_is_uploaded_and_its_rate_measured";
    let Some((client, registry, _)) = installed_cluster_with_registry(test).await else {
        return;
    };
    let _shared = DISRUPTION.read().await;
    let scene = Scene::new(client, "local-100mib", Some(&registry)).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY . /ctx/\n",
    )
    .unwrap();
    // Not compressible and unlike any earlier upload: every byte travels.
    let mut state = u64::from(std::process::id()) | 1;
    let bytes: Vec<u8> = (0..100 * 1024 * 1024 / 8)
        .flat_map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()
        })
        .collect();
    std::fs::write(dir.path().join("data.bin"), bytes).unwrap();
    let args = kiln::plugin::local::LocalBuildArgs {
        dir: dir.path().to_owned(),
        image: format!("{registry}/kiln-e2e/{}:big", scene.namespace),
        name: Some("big".to_owned()),
        ..kiln::plugin::local::LocalBuildArgs::default()
    };
    let (outcome, _, err) = build_local(&scene, &args).await;
    say(&err);
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(error) => {
            scene.diagnose("big").await;
            panic!("build --local of 100 MiB failed: {error}");
        }
    };
    let _ = scene.builds().delete("big", &DeleteParams::default()).await;
    scene.finish().await;
    let seconds = outcome.upload_duration.as_secs_f64();
    let line = format!(
        "local-100MiB: command-to-receiver={:.1}s upload={:.1}s rate={:.1}MiB/s tar={}B",
        outcome.until_receiver.as_secs_f64(),
        seconds,
        outcome.bytes_sent as f64 / 1024.0 / 1024.0 / seconds.max(0.001),
        outcome.size
    );
    record_timing("upload", &line);
    assert_eq!(outcome.bytes_sent, outcome.size);
    assert!(outcome.size > 100 * 1024 * 1024);
}

/// The controller replicas are killed (no graceful shutdown, no lease released) while a
/// build runs: the Deployment's new replicas elect a leader, which adopts the running pod;
/// the Build succeeds with that one pod.
#[tokio::test]
async fn e2e_a_killed_controller_is_replaced_and_the_new_leader_adopts_the_build() {
    let test = "e2e_a_killed_controller_is_replaced_and_the_new_leader_adopts_the_build";
    let Some((client, registry, release)) = installed_cluster_with_registry(test).await else {
        return;
    };
    let _exclusive = DISRUPTION.write().await;
    let scene = Scene::new(client.clone(), "adopt", Some(&registry)).await;
    scene
        .apply(inline_build(
            "adopted",
            "FROM busybox:1.36\nRUN echo started && sleep 30\n",
            &format!("{registry}/kiln-e2e/{}:adopted", scene.namespace),
        ))
        .await
        .expect("create the Build");
    wait_for_log_line(&scene, "adopted", "started", Duration::from_secs(300)).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &release);
    let controllers = pods
        .list(&ListParams::default().labels("app.kubernetes.io/component=controller"))
        .await
        .expect("list the controller pods")
        .items;
    assert!(!controllers.is_empty());
    for pod in &controllers {
        pods.delete(
            &pod.name_any(),
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            },
        )
        .await
        .expect("kill a controller pod");
    }
    let build = scene
        .wait("adopted", Duration::from_secs(600), |b| {
            phase(b).is_some_and(|p| p.is_terminal())
        })
        .await;
    if phase(&build) != Some(Phase::Succeeded) {
        scene.diagnose("adopted").await;
    }
    let build_pods: Vec<String> = scene
        .pods_of("adopted")
        .await
        .iter()
        .map(|p| p.name_any())
        .collect();
    let replacements: Vec<String> = pods
        .list(&ListParams::default().labels("app.kubernetes.io/component=controller"))
        .await
        .expect("list the controller pods")
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    scene.finish().await;
    assert_eq!(phase(&build), Some(Phase::Succeeded));
    assert_eq!(build_pods.len(), 1, "pods of the Build: {build_pods:?}");
    assert_eq!(
        build.status.as_ref().map(|s| s.attempt),
        Some(1),
        "the adopted build started another attempt"
    );
    let killed: Vec<String> = controllers.iter().map(|p| p.name_any()).collect();
    assert!(
        replacements.iter().all(|p| !killed.contains(p)),
        "killed {killed:?}, now {replacements:?}"
    );
}

/// The cache service goes away while a build runs (its base image already pulled through
/// the mirror) and comes back only after the build: the build still succeeds, without its
/// cache export; the cache is best effort.
#[tokio::test]
async fn e2e_a_cache_outage_mid_build_does_not_fail_the_build() {
    let test = "e2e_a_cache_outage_mid_build_does_not_fail_the_build";
    let Some((client, registry, release)) = installed_cluster_with_registry(test).await else {
        return;
    };
    let _exclusive = DISRUPTION.write().await;
    let scene = Scene::new(client.clone(), "cache-outage", Some(&registry)).await;
    scene
        .apply(inline_build(
            "through",
            &format!(
                "FROM busybox:1.36\nRUN echo started {} && sleep 10\n",
                scene.namespace
            ),
            &format!("{registry}/kiln-e2e/{}:through", scene.namespace),
        ))
        .await
        .expect("create the Build");
    wait_for_log_line(&scene, "through", "started", Duration::from_secs(300)).await;
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &release);
    let set = sets
        .list(&ListParams::default().labels("app.kubernetes.io/component=cache"))
        .await
        .expect("list the cache StatefulSet")
        .items
        .into_iter()
        .next()
        .expect("the cache StatefulSet")
        .name_any();
    let scale = |replicas: i32| {
        let sets = sets.clone();
        let set = set.clone();
        async move {
            sets.patch(
                &set,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": replicas}})),
            )
            .await
            .expect("scale the cache")
        }
    };
    scale(0).await;
    let build = scene
        .wait("through", Duration::from_secs(600), |b| {
            phase(b).is_some_and(|p| p.is_terminal())
        })
        .await;
    if phase(&build) != Some(Phase::Succeeded) {
        scene.diagnose("through").await;
    }
    let log = last_attempt_log(&scene, &build).await;
    scale(1).await;
    let events: Api<Event> = Api::namespaced(client.clone(), &scene.namespace);
    let noticed = events
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .iter()
        .any(|e| e.reason.as_deref() == Some(Reason::CacheUnavailable.as_str()));
    say(&format!(
        "e2e::{test}: the controller {} a CacheUnavailable Event",
        if noticed {
            "published"
        } else {
            "did not publish"
        }
    ));
    // The cache is back before the next test.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &release);
    common::cluster::wait_until("the cache ready again", Duration::from_secs(180), || {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels("app.kubernetes.io/component=cache"))
                .await
                .ok()?;
            list.items
                .iter()
                .any(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                })
                .then_some(())
        }
    })
    .await;
    scene.finish().await;
    assert_eq!(phase(&build), Some(Phase::Succeeded), "{log}");
    assert!(
        log.contains("exporting cache"),
        "the build did not try to export its cache:\n{log}"
    );
}

/// `spec.builder.hostUsers: false`: the builder pod runs in a user namespace of its own
/// (with a builder image whose subordinate IDs fit the pod's 65,536 IDs) and builds.
#[tokio::test]
async fn e2e_a_user_namespaced_builder_pod_builds() {
    let test = "e2e_a_user_namespaced_builder_pod_builds";
    let Some((client, registry)) = cluster_with_registry(test).await else {
        return;
    };
    let Ok(builder) = std::env::var("KILN_E2E_USERNS_BUILDER_IMAGE") else {
        return skip(
            test,
            "KILN_E2E_USERNS_BUILDER_IMAGE is not set; name a rootless BuildKit image whose /etc/subuid fits a user-namespaced pod (scripts/local-images.sh makes one)",
        )
        .unwrap_or(());
    };
    let _shared = DISRUPTION.read().await;
    let scene = Scene::new(client, "userns", Some(&registry)).await;
    let mut build = inline_build(
        "userns",
        "FROM busybox:1.36\nRUN id && echo built in a user namespace\n",
        &format!("{registry}/kiln-e2e/{}:userns", scene.namespace),
    );
    build["spec"]["builder"] = json!({"image": builder, "hostUsers": false});
    let (build, applied) = scene.run(build, Duration::from_secs(600)).await;
    timings(&scene, &build, applied, "userns").await;
    let pods = scene.pods_of("userns").await;
    scene.finish().await;
    assert_eq!(phase(&build), Some(Phase::Succeeded));
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].spec.as_ref().unwrap().host_users, Some(false));
}

/// Two Builds pushing one tag: the second waits until the first is done, and both
/// succeed, in order.
#[tokio::test]
async fn e2e_two_builds_of_one_tag_run_one_after_the_other() {
    let test = "e2e_two_builds_of_one_tag_run_one_after_the_other";
    let Some((client, registry)) = cluster_with_registry(test).await else {
        return;
    };
    let _shared = DISRUPTION.read().await;
    let scene = Scene::new(client, "one-tag", Some(&registry)).await;
    let image = format!("{registry}/kiln-e2e/{}:shared-tag", scene.namespace);
    scene
        .apply(inline_build(
            "first",
            "FROM busybox:1.36\nRUN echo first && sleep 10\n",
            &image,
        ))
        .await
        .expect("create the first Build");
    scene
        .wait("first", Duration::from_secs(120), |b| {
            b.status.as_ref().is_some_and(|s| s.attempt > 0)
        })
        .await;
    scene
        .apply(inline_build(
            "second",
            "FROM busybox:1.36\nRUN echo second\n",
            &image,
        ))
        .await
        .expect("create the second Build");
    let queued = scene
        .wait("second", Duration::from_secs(60), |b| phase(b).is_some())
        .await;
    let mut done = Vec::new();
    for name in ["first", "second"] {
        done.push(
            scene
                .wait(name, Duration::from_secs(600), |b| {
                    phase(b).is_some_and(|p| p.is_terminal())
                })
                .await,
        );
    }
    let served = tokio::task::spawn_blocking(move || registry_digest(&image))
        .await
        .unwrap();
    scene.finish().await;
    let [first, second] = <[Build; 2]>::try_from(done).unwrap();
    assert_eq!(phase(&first), Some(Phase::Succeeded));
    assert_eq!(phase(&second), Some(Phase::Succeeded));
    let first_done = first
        .status
        .as_ref()
        .unwrap()
        .completion_time
        .clone()
        .unwrap();
    let second_started = second.status.as_ref().unwrap().attempts[0]
        .start_time
        .clone();
    assert!(
        second_started.0 >= first_done.0,
        "the second build started at {second_started:?}, before the first was done at {first_done:?}"
    );
    assert_eq!(
        (phase(&queued), reason(&queued)),
        (Some(Phase::Pending), Some(Reason::Queued)),
        "the second Build did not wait"
    );
    // The tag holds the second image, which pushed last.
    assert_eq!(digest_of(&second), Some(served));
}

/// Eight Builds at once `FROM` an image behind the cache's docker.io mirror, one the
/// mirror has never served: the upstream served each of its blobs once.
#[tokio::test]
async fn e2e_eight_builds_pull_their_base_through_the_mirror_once() {
    let test = "e2e_eight_builds_pull_their_base_through_the_mirror_once";
    let Some((client, registry, _release)) = installed_cluster_with_registry(test).await else {
        return;
    };
    let (Ok(upstream), Ok(upstream_log)) = (
        std::env::var("KILN_E2E_UPSTREAM"),
        std::env::var("KILN_E2E_UPSTREAM_LOG"),
    ) else {
        return skip(
            test,
            "KILN_E2E_UPSTREAM and KILN_E2E_UPSTREAM_LOG are not set; name the registry behind the cache's docker.io mirror and its access log",
        )
        .unwrap_or(());
    };
    let _shared = DISRUPTION.read().await;
    let scene = Scene::new(client, "mirror", Some(&registry)).await;
    // A busybox of our own under a tag nobody pulled: a layer with busybox as /bin/sh and
    // a file unique to this run.
    let tag = format!("e2e-{}", std::process::id());
    let base = tokio::task::spawn_blocking({
        let reference = format!("{upstream}/library/busybox:{tag}");
        let seed = scene.namespace.clone();
        move || unique_busybox(&reference, &seed)
    })
    .await
    .unwrap();
    let names: Vec<String> = (0..8).map(|n| format!("b{n}")).collect();
    let applied = Timestamp::now();
    for (n, name) in names.iter().enumerate() {
        scene
            .apply(inline_build(
                name,
                &format!("FROM busybox:{tag}\nRUN echo {n} > /n\n"),
                &format!("{registry}/kiln-e2e/{}:{name}", scene.namespace),
            ))
            .await
            .expect("create a Build");
    }
    let mut builds = Vec::new();
    for name in &names {
        builds.push(
            scene
                .wait(name, Duration::from_secs(900), |b| {
                    phase(b).is_some_and(|p| p.is_terminal())
                })
                .await,
        );
    }
    let mut slowest = 0.0f64;
    for build in &builds {
        let t = timings(
            &scene,
            build,
            applied,
            &format!("mirror-{}", build.name_any()),
        )
        .await;
        slowest = slowest.max(t.build_done);
    }
    say(&format!(
        "TIMING mirror: eight builds done {slowest:.1}s after the first apply"
    ));
    for build in &builds {
        if phase(build) != Some(Phase::Succeeded) {
            scene.diagnose(&build.name_any()).await;
        }
    }
    let log = std::fs::read_to_string(&upstream_log).expect("the upstream's access log");
    scene.finish().await;
    for build in &builds {
        assert_eq!(phase(build), Some(Phase::Succeeded), "{}", build.name_any());
    }
    for digest in base {
        let fetches = log
            .lines()
            .filter(|l| {
                l.contains(&format!("\"GET /v2/library/busybox/blobs/{digest} "))
                    && l.contains("\" 200 ")
            })
            .count();
        assert_eq!(
            fetches, 1,
            "the upstream served blob {digest} {fetches} times"
        );
    }
}

/// Pushes a busybox image of this run's own to `reference` (busybox-static as `/bin/sh`,
/// and a file holding `seed`); returns its blobs' digests (config, layer).
fn unique_busybox(reference: &str, seed: &str) -> Vec<String> {
    use common::oci_layout::{
        CONFIG_TYPE, LAYER_TYPE, MANIFEST_TYPE, descriptor, gzip, tar_with_modes,
    };
    use kiln::oci::digest::Digest;
    let busybox = std::fs::read("/bin/busybox").expect("Debian's busybox-static at /bin/busybox");
    let layer_tar = tar_with_modes(&[
        ("bin/sh", &busybox, 0o755),
        ("kiln-e2e-seed", seed.as_bytes(), 0o644),
    ]);
    let layer = gzip(&layer_tar);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [Digest::of(&layer_tar).to_string()]}
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": descriptor(CONFIG_TYPE, &config),
        "layers": [descriptor(LAYER_TYPE, &layer)]
    }))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let blobs = dir.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    for bytes in [&layer, &config, &manifest] {
        std::fs::write(blobs.join(Digest::of(bytes).hex()), bytes).unwrap();
    }
    std::fs::write(
        dir.path().join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let mut entry = descriptor(MANIFEST_TYPE, &manifest);
    entry["annotations"] = json!({"org.opencontainers.image.ref.name": "base"});
    std::fs::write(
        dir.path().join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [entry]})).unwrap(),
    )
    .unwrap();
    common::skopeo::copy(
        &format!("oci:{}:base", dir.path().display()),
        &format!("docker://{reference}"),
        &[],
    );
    vec![
        Digest::of(&config).to_string(),
        Digest::of(&layer).to_string(),
    ]
}

/// A base image that moves upstream rebuilds a Build that watches it, once: the first
/// build records the base it pulled through the mirror, the tag is pushed again upstream
/// with other content, the installed controller (checking every 10 s here) starts one new
/// attempt with a `BaseImageChanged` Event, and that attempt's success records the new
/// digest, after which nothing more starts.
#[tokio::test]
async fn e2e_a_moved_base_image_rebuilds_its_build_once() {
    let test = "e2e_a_moved_base_image_rebuilds_its_build_once";
    let Some((client, registry, _release)) = installed_cluster_with_registry(test).await else {
        return;
    };
    let Ok(upstream) = std::env::var("KILN_E2E_UPSTREAM") else {
        return skip(
            test,
            "KILN_E2E_UPSTREAM is not set; name the registry behind the cache's docker.io mirror",
        )
        .unwrap_or(());
    };
    let _shared = DISRUPTION.read().await;
    let scene = Scene::new(client, "base-trigger", Some(&registry)).await;
    let tag = format!("trigger-{}", std::process::id());
    let reference = format!("{upstream}/library/busybox:{tag}");
    let push = |seed: String| {
        let reference = reference.clone();
        tokio::task::spawn_blocking(move || unique_busybox(&reference, &seed))
    };
    push(format!("{}-v1", scene.namespace)).await.unwrap();
    let mut build = inline_build(
        "watched",
        &format!("FROM busybox:{tag}\nRUN cat /kiln-e2e-seed\n"),
        &format!("{registry}/kiln-e2e/{}:watched", scene.namespace),
    );
    build["spec"]["triggers"] = json!({"baseImageChanged": true});
    let (first, _) = scene.run(build, Duration::from_secs(600)).await;
    assert_eq!(phase(&first), Some(Phase::Succeeded));
    let image = format!("docker.io/library/busybox:{tag}");
    let recorded = scene
        .wait("watched", Duration::from_secs(60), |b| {
            b.status
                .as_ref()
                .is_some_and(|s| s.base_images.iter().any(|i| i.image == image))
        })
        .await;
    let before = recorded.status.as_ref().unwrap().base_images[0]
        .digest
        .clone();

    let moved = Timestamp::now();
    push(format!("{}-v2", scene.namespace)).await.unwrap();
    let rebuilt = scene
        .wait("watched", Duration::from_secs(600), |b| {
            b.status.as_ref().is_some_and(|s| {
                s.attempt == 2
                    && s.phase == Some(Phase::Succeeded)
                    && s.base_images
                        .iter()
                        .any(|i| i.image == image && i.digest != before)
            })
        })
        .await;
    record_timing(
        "base-trigger",
        &format!(
            "base image moved upstream -> rebuilt and its new base recorded: {:.1}s (checks every 10s)",
            Timestamp::now().duration_since(moved).as_secs_f64()
        ),
    );
    let status = rebuilt.status.clone().unwrap();
    let trigger = status
        .base_image_check
        .as_ref()
        .and_then(|c| c.last_trigger.clone())
        .expect("the change that rebuilt");
    assert_eq!(
        (
            trigger.image.as_str(),
            trigger.from.as_str(),
            trigger.attempt
        ),
        (image.as_str(), before.as_str(), 2)
    );
    assert_eq!(trigger.to, status.base_images[0].digest);

    // Checks go on (every 10 s), and the unmoved tag starts nothing more.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let later = scene.builds().get("watched").await.expect("the Build");
    let events: Api<Event> = Api::namespaced(scene.client.clone(), &scene.namespace);
    let triggered = events
        .list(&ListParams::default())
        .await
        .expect("list Events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("BaseImageChanged"))
        .count();
    scene.finish().await;
    assert_eq!(
        later.status.as_ref().map(|s| s.attempt),
        Some(2),
        "no rebuild loop"
    );
    assert_eq!(triggered, 1, "one BaseImageChanged Event");
}

/// A Git repository served over HTTP by `git http-backend` (smart HTTP), as a CGI program
/// behind a small server of the test's own.
mod git {
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::body::Body;
    use axum::http::{Request, Response, StatusCode};

    /// A bare repository `app.git` with a `main` branch and a `feature` branch, each with
    /// `app/Dockerfile` and `app/message.txt` (of different content).
    pub fn repository_with_branch() -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("a temp dir");
        let work = root.path().join("work");
        let git = |dir: &Path, args: &[&str]| {
            let output = Command::new("git")
                .args(["-c", "user.name=kiln", "-c", "user.email=kiln@example.com"])
                .args(["-c", "init.defaultBranch=main"])
                .args(args)
                .current_dir(dir)
                .output()
                .expect("run git");
            assert!(
                output.status.success(),
                "git {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        std::fs::create_dir_all(work.join("app")).unwrap();
        git(&work, &["init", "-q"]);
        let dockerfile = "FROM busybox:1.36\nCOPY message.txt /message.txt\nRUN cat /message.txt\n";
        std::fs::write(work.join("app/Dockerfile"), dockerfile).unwrap();
        std::fs::write(work.join("app/message.txt"), "message from main\n").unwrap();
        git(&work, &["add", "."]);
        git(&work, &["commit", "-q", "-m", "main"]);
        git(&work, &["checkout", "-q", "-b", "feature"]);
        std::fs::write(
            work.join("app/message.txt"),
            "message from the feature branch\n",
        )
        .unwrap();
        git(&work, &["commit", "-q", "-am", "feature"]);
        git(&work, &["checkout", "-q", "main"]);
        git(root.path(), &["clone", "-q", "--bare", "work", "app.git"]);
        root
    }

    /// The server: every address of this network namespace, a free port, its own thread.
    pub struct Server {
        port: u16,
        requests: Arc<AtomicUsize>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Server {
        pub fn start(root: &Path) -> Server {
            let listener = std::net::TcpListener::bind("0.0.0.0:0").expect("bind the Git server");
            listener.set_nonblocking(true).unwrap();
            let port = listener.local_addr().unwrap().port();
            let requests = Arc::new(AtomicUsize::new(0));
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let root = root.to_path_buf();
            let counter = requests.clone();
            let thread = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    let app = axum::Router::new().fallback(move |request: Request<Body>| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        cgi(root.clone(), request)
                    });
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async move {
                            let _ = stopped.await;
                        })
                        .await;
                });
            });
            Server {
                port,
                requests,
                stop: Some(stop),
                thread: Some(thread),
            }
        }

        pub fn port(&self) -> u16 {
            self.port
        }

        pub fn requests(&self) -> usize {
            self.requests.load(Ordering::SeqCst)
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    /// One request through `git http-backend` (RFC 3875 CGI).
    async fn cgi(root: PathBuf, request: Request<Body>) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let body = axum::body::to_bytes(body, 64 << 20)
            .await
            .unwrap_or_default();
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let mut command = tokio::process::Command::new("git");
        command
            .arg("http-backend")
            .env("GIT_PROJECT_ROOT", &root)
            .env("GIT_HTTP_EXPORT_ALL", "1")
            .env("REQUEST_METHOD", parts.method.as_str())
            .env("PATH_INFO", parts.uri.path())
            .env("QUERY_STRING", parts.uri.query().unwrap_or_default())
            .env("CONTENT_TYPE", header("content-type"))
            .env("CONTENT_LENGTH", body.len().to_string())
            .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
            .env("GIT_PROTOCOL", header("git-protocol"))
            .env("REMOTE_ADDR", "127.0.0.1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit());
        let Ok(mut child) = command.spawn() else {
            return error("cannot run git http-backend");
        };
        let mut stdin = child.stdin.take().unwrap();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = stdin.write_all(&body).await;
        });
        let Ok(output) = child.wait_with_output().await else {
            return error("git http-backend failed");
        };
        let _ = writer.await;
        let out = output.stdout;
        let split = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| (p, p + 4))
            .or_else(|| {
                out.windows(2)
                    .position(|w| w == b"\n\n")
                    .map(|p| (p, p + 2))
            });
        let Some((end, start)) = split else {
            return error("git http-backend wrote no headers");
        };
        let mut response = Response::builder().status(StatusCode::OK);
        for line in String::from_utf8_lossy(&out[..end]).lines() {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("status") {
                let code = value.split(' ').next().and_then(|c| c.parse().ok());
                response = response.status(code.unwrap_or(500));
            } else {
                response = response.header(name.trim(), value);
            }
        }
        response
            .body(Body::from(out[start..].to_vec()))
            .unwrap_or_else(|_| error("bad headers from git http-backend"))
    }

    fn error(message: &'static str) -> Response<Body> {
        Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .body(Body::from(message))
            .unwrap()
    }
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
        return skip(
            test,
            "needs an installed Kiln; set KILN_E2E_INSTALLED to the namespace of the Helm release",
        )
        .unwrap_or(());
    };
    // Not while another test kills the controllers or restarts the cache.
    let _shared = DISRUPTION.read().await;
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
