//! The controller's garbage collection against an in-memory API server (kube-fake-client)
//! and a fake cache admin API: the orphan sweeper, retention of finished pods, cache leases
//! and their release, the finalizer's cache cleanup, and per-attempt cache tokens. Tests
//! assert the state the API and the fake cache end with.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test stops where it fails

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::fake_api::{Harness, NS, fake_api};
use common::fake_cache::{ADMIN_TOKEN, FakeCache};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube_fake_client::interceptor;
use serde_json::{Value, json};

use kiln::cacheapi::admin::LeaseTarget;
use kiln::cacheapi::client::AdminClient;
use kiln::cacheapi::token::{TokenAction, TokenKey};
use kiln::controller::clock::ManualClock;
use kiln::controller::config::CacheService;
use kiln::controller::error::{ApplyError, ReconcileError};
use kiln::controller::gc::{SweepReason, SweepReport};
use kiln::controller::observed::Observed;
use kiln::controller::observer::GcObserver;
use kiln::controller::podstate::is_live;
use kiln::controller::sweep::{run_sweeps, sweep_cache, sweep_once};
use kiln::controller::{Config, Context, decide};
use kiln::crd::fixtures::{T0, at};
use kiln::crd::{Build, Phase, Reason, Retention};
use kiln::oci::digest::Digest;

const DIGEST: &str = "sha256:4444444444444444444444444444444444444444444444444444444444444444";

fn deleted(report: &SweepReport, reason: SweepReason) -> u64 {
    report.deleted.get(&reason).copied().unwrap_or(0)
}

async fn sweep(h: &Harness) -> SweepReport {
    sweep_once(&h.ctx).await.expect("sweep")
}

/// Turns on cache tokens (signed with `key`) for a cache service at `kiln-cache:5000`.
fn tokens(h: &mut Harness, key: TokenKey) {
    h.customize(move |mut ctx| {
        ctx.config.cache_service = Some(CacheService::parse("http://kiln-cache:5000").unwrap());
        ctx.with_token_key(key.clone())
    });
}

/// A harness whose controller takes cache leases through a fake admin API.
async fn with_cache(builds: Vec<Build>) -> (Harness, FakeCache) {
    let mut h = Harness::new(builds).await;
    let cache = FakeCache::start(h.clock.clone()).await;
    let url = cache.url.clone();
    h.customize(move |mut ctx| {
        ctx.config.cache_service = Some(CacheService::parse(&url).unwrap());
        ctx.with_cache_admin(AdminClient::new(&url, ADMIN_TOKEN).unwrap())
    });
    (h, cache)
}

/// Like [`with_cache`], and every pod's `pods/log` answers `log` (kube-fake-client would
/// answer the pod object itself); `max_bytes` is the controller's `--log-max-bytes`.
async fn with_cache_and_log(builds: Vec<Build>, log: &str, max_bytes: u64) -> (Harness, FakeCache) {
    let mut h = Harness::new(builds).await;
    let cache = FakeCache::start(h.clock.clone()).await;
    let url = cache.url.clone();
    let log = log.to_owned();
    h.customize(move |mut ctx| {
        ctx.client = scripted_logs(ctx.client.clone(), log.clone());
        ctx.config.cache_service = Some(CacheService::parse(&url).unwrap());
        ctx.config.log_max_bytes = max_bytes;
        ctx.with_cache_admin(AdminClient::new(&url, ADMIN_TOKEN).unwrap())
    });
    (h, cache)
}

/// `inner`, except that `GET …/pods/<name>/log` answers `log`.
fn scripted_logs(inner: kube::Client, log: String) -> kube::Client {
    let service = tower::service_fn(move |request: axum::http::Request<kube::client::Body>| {
        let (inner, log) = (inner.clone(), log.clone());
        async move {
            if request.uri().path().ends_with("/log") {
                return Ok::<_, kube::Error>(axum::http::Response::new(kube::client::Body::from(
                    log.into_bytes(),
                )));
            }
            inner.send(request).await
        }
    });
    kube::Client::new(service, NS)
}

fn cache_leases(build: &Build) -> Vec<String> {
    build
        .status
        .iter()
        .flat_map(|s| &s.cache_leases)
        .map(|l| l.name.clone())
        .collect()
}

// --- Orphans ---------------------------------------------------------------------------------

#[tokio::test]
async fn orphan_objects_of_a_build_deleted_while_the_controller_was_down_are_collected_on_restart()
{
    let mut h = Harness::new(vec![
        Build::test("app")
            .inline("FROM alpine:3.20\n")
            .cache(kiln::crd::CacheMode::Max, kiln::crd::CacheScope::Build),
    ])
    .await;
    tokens(&mut h, TokenKey::from_bytes(&[7; 32]).unwrap());
    h.settle("app").await;
    h.pod_becomes("app", 1, |p| p.running()).await;
    assert_eq!(h.pod_names().await, ["app-1"]);
    assert_eq!(h.config_map_names().await, ["app-1"]);
    assert_eq!(h.secret_names().await, ["app-1"]);

    // The controller is down; the Build goes without its finalizer running (force-removed)
    // and nothing cascades. Then the controller starts again.
    h.rebuild(|objects| objects.retain(|o| o["kind"] != "Build"))
        .await;
    let report = sweep(&h).await;
    assert_eq!(deleted(&report, SweepReason::BuildGone), 3, "{report:?}");
    assert_eq!(report.failed, 0);
    assert!(h.pods().await.is_empty());
    assert!(h.config_map_names().await.is_empty());
    assert!(h.secret_names().await.is_empty());
    // Nothing left to do: a second sweep is empty.
    assert_eq!(sweep(&h).await.total_deleted(), 0);
}

#[tokio::test]
async fn orphan_pods_of_a_build_re_created_under_its_name_are_collected_and_the_new_build_runs() {
    let mut h = Harness::new(vec![Build::test("app")]).await;
    h.settle("app").await;
    h.pod_becomes("app", 1, |p| p.running()).await;

    // Deleted and re-created while the controller was down: a new UID, no status.
    h.rebuild(|objects| {
        let build = objects
            .iter_mut()
            .find(|o| o["kind"] == "Build")
            .expect("the build");
        build["metadata"]["uid"] = json!("uid-app-new");
        build.as_object_mut().unwrap().remove("status");
    })
    .await;
    let error = h.reconcile("app").await.unwrap_err();
    assert!(
        matches!(
            error,
            ReconcileError::Apply(ApplyError::PodNameTaken { .. })
        ),
        "{error:?}"
    );

    let report = sweep(&h).await;
    assert_eq!(deleted(&report, SweepReason::BuildReplaced), 1);
    assert!(
        h.events()
            .await
            .contains(&("Normal".into(), "GarbageCollected".into())),
        "the new Build is told: {:?}",
        h.events().await
    );
    h.settle("app").await;
    let pods = h.pods().await;
    assert_eq!(pods.len(), 1);
    assert_eq!(
        pods[0].labels()["kiln.dev/build-uid"],
        "uid-app-new",
        "the new Build's pod"
    );
}

#[tokio::test]
async fn a_build_re_created_under_its_name_never_takes_the_config_map_of_the_old_one() {
    let mut h = Harness::new(vec![Build::test("app").inline("FROM alpine:3.20\n")]).await;
    h.settle("app").await;
    assert_eq!(h.config_map_names().await, ["app-1"]);

    // Deleted and re-created with another source while the controller was down; the old
    // pod was deleted by hand, its ConfigMap was not.
    h.rebuild(|objects| {
        objects.retain(|o| o["kind"] != "Pod");
        let build = objects
            .iter_mut()
            .find(|o| o["kind"] == "Build")
            .expect("the build");
        build["metadata"]["uid"] = json!("uid-app-new");
        build["spec"]["source"]["inline"]["dockerfile"] = json!("FROM alpine:3.21\n");
        build.as_object_mut().unwrap().remove("status");
    })
    .await;
    let error = h.reconcile("app").await.unwrap_err();
    assert!(
        matches!(
            error,
            ReconcileError::Apply(ApplyError::ConfigMapNameTaken { .. })
        ),
        "{error:?}"
    );
    assert!(
        h.pods().await.is_empty(),
        "a pod reads the old Build's source"
    );

    let report = sweep(&h).await;
    assert_eq!(deleted(&report, SweepReason::BuildReplaced), 1);
    h.settle("app").await;
    let config_map = Api::<ConfigMap>::namespaced(h.client.clone(), NS)
        .get("app-1")
        .await
        .expect("ConfigMap app-1");
    assert_eq!(config_map.labels()["kiln.dev/build-uid"], "uid-app-new");
    assert!(
        config_map
            .data
            .iter()
            .flatten()
            .any(|(_, text)| text == "FROM alpine:3.21\n"),
        "{:?}",
        config_map.data
    );
    assert_eq!(h.pods().await.len(), 1);
}

/// A harness whose pod deletes fail while the returned flag is set.
async fn with_failing_pod_deletes(builds: Vec<Build>) -> (Harness, Arc<AtomicBool>) {
    let failing = Arc::new(AtomicBool::new(false));
    let flag = failing.clone();
    let funcs = interceptor::Funcs::new().delete(move |ctx| {
        if flag.load(Ordering::SeqCst) && ctx.name.starts_with("app-") {
            return Err(kube_fake_client::Error::Internal("etcd is slow".into()));
        }
        Ok(None)
    });
    let h = Harness::with(builds, vec![], Config::default(), Some(funcs)).await;
    (h, failing)
}

fn live_pods_of_ended_attempts(build: &Build, pods: &[Pod]) -> Vec<String> {
    let status = build.status.clone().unwrap_or_default();
    pods.iter()
        .filter(|p| is_live(p) && p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            let attempt: u32 = p.labels()["kiln.dev/attempt"].parse().unwrap();
            let open = status
                .current_attempt()
                .is_some_and(|a| a.attempt == attempt && a.completion_time.is_none());
            !open
        })
        .map(|p| p.name_any())
        .collect()
}

#[tokio::test]
async fn orphan_pod_left_running_by_a_cancel_is_stopped_by_the_sweeper() {
    let (h, failing) = with_failing_pod_deletes(vec![Build::test("app")]).await;
    h.settle("app").await;
    h.pod_becomes("app", 1, |p| p.running()).await;

    failing.store(true, Ordering::SeqCst);
    h.patch_build("app", json!({"spec": {"cancel": true}}))
        .await;
    // The status says Cancelled, but the pod delete failed.
    assert!(h.reconcile("app").await.is_err());
    let build = h.build("app").await.unwrap();
    assert_eq!(build.status.as_ref().unwrap().phase, Some(Phase::Cancelled));
    assert_eq!(
        live_pods_of_ended_attempts(&build, &h.pods().await),
        ["app-1"]
    );

    failing.store(false, Ordering::SeqCst);
    let report = sweep(&h).await;
    assert_eq!(deleted(&report, SweepReason::AttemptEnded), 1);
    assert!(live_pods_of_ended_attempts(&build, &h.pods().await).is_empty());
}

#[tokio::test]
async fn orphan_pod_left_running_by_a_supersede_is_stopped_and_the_new_attempt_starts() {
    let (h, failing) = with_failing_pod_deletes(vec![Build::test("app")]).await;
    h.settle("app").await;
    h.pod_becomes("app", 1, |p| p.running()).await;

    failing.store(true, Ordering::SeqCst);
    h.patch_build("app", json!({"spec": {"buildArgs": {"V": "2"}}}))
        .await;
    assert!(h.reconcile("app").await.is_err());
    failing.store(false, Ordering::SeqCst);
    let build = h.build("app").await.unwrap();
    assert_eq!(
        live_pods_of_ended_attempts(&build, &h.pods().await),
        ["app-1"]
    );

    let report = sweep(&h).await;
    assert_eq!(deleted(&report, SweepReason::AttemptEnded), 1);
    h.settle("app").await;
    let build = h.build("app").await.unwrap();
    assert_eq!(h.pod_names().await, ["app-2"]);
    assert!(live_pods_of_ended_attempts(&build, &h.pods().await).is_empty());
}

#[tokio::test]
async fn orphan_sweeper_never_touches_objects_without_the_label_or_with_a_foreign_owner() {
    let foreign_owner = json!([{
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9",
        "uid": "rs-uid", "controller": true
    }]);
    let kiln_labels = json!({
        "app.kubernetes.io/managed-by": "kiln",
        "kiln.dev/build": "gone",
        "kiln.dev/build-uid": "uid-gone",
        "kiln.dev/attempt": "1"
    });
    let objects = vec![
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "web", "namespace": NS, "labels": {"kiln.dev/build": "gone"}},
               "status": {"phase": "Running"}}),
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "gone-1", "namespace": NS, "labels": kiln_labels,
                            "ownerReferences": foreign_owner},
               "status": {"phase": "Running"}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "settings", "namespace": NS}}),
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "gone-1", "namespace": NS, "labels": kiln_labels,
                            "ownerReferences": foreign_owner}}),
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "db-password", "namespace": NS}}),
    ];
    let h = Harness::with(vec![], objects, Config::default(), None).await;
    let report = sweep(&h).await;
    assert_eq!(report.total_deleted(), 0, "{report:?}");
    assert_eq!(report.examined, 2, "only the labelled ones are listed");
    assert_eq!(h.pod_names().await, ["gone-1", "web"]);
    assert_eq!(h.config_map_names().await, ["settings"]);
    assert_eq!(h.secret_names().await, ["db-password", "gone-1"]);
}

#[derive(Default)]
struct Sweeps(AtomicUsize);

impl GcObserver for Sweeps {
    fn swept(&self, _: &SweepReport, _: Duration) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn orphan_sweeper_runs_at_start_up_and_stops_when_told() {
    let client = fake_api(vec![], None).await;
    let sweeps = Arc::new(Sweeps::default());
    let ctx = Arc::new(
        Context::new(client, Config::default())
            .with_clock(Arc::new(ManualClock::new(T0)))
            .with_gc_observer(sweeps.clone()),
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(run_sweeps(ctx, stopped));
    // The interval is a minute: only the start-up sweep can happen within these seconds.
    tokio::time::timeout(Duration::from_secs(10), async {
        while sweeps.0.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a sweep at start-up");
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the sweeps stop")
        .unwrap();
    assert_eq!(sweeps.0.load(Ordering::SeqCst), 1);
}

// --- Retention -------------------------------------------------------------------------------

#[tokio::test]
async fn retention_keeps_a_finished_pod_until_the_time_its_status_announced() {
    let h = Harness::new(vec![Build::test("app")]).await;
    h.settle("app").await;
    h.pod_becomes("app", 1, |p| p.pushed(DIGEST)).await;
    let status = h.build("app").await.unwrap().status.unwrap();
    assert!(
        status
            .message
            .as_deref()
            .unwrap()
            .ends_with("pod app-1 is kept until 2026-01-01T01:00:00Z (retention 1h)"),
        "{:?}",
        status.message
    );
    h.advance(3599);
    assert_eq!(sweep(&h).await.total_deleted(), 0);
    assert_eq!(h.pod_names().await, ["app-1"]);
    h.advance(1);
    let report = sweep(&h).await;
    assert_eq!(deleted(&report, SweepReason::Expired), 1);
    assert!(h.pods().await.is_empty());
    // The controller never deletes a Build, and the Build does not start over.
    h.settle("app").await;
    assert!(h.pods().await.is_empty());
    assert_eq!(
        h.build("app").await.unwrap().status.unwrap().phase,
        Some(Phase::Succeeded)
    );
}

/// The TTLs of the 1,000 Builds, by `i % 5`: `(succeeded, retention field, seconds)`.
const MIX: [(bool, Option<&str>, i64); 5] = [
    (true, None, 3600),         // --succeeded-pod-ttl's default
    (true, Some("30m"), 1800),  // spec.retention.succeededPodTTL
    (false, Some("0s"), 0),     // failed, kept no time at all
    (false, None, 86_400),      // --failed-pod-ttl's default
    (false, Some("59m"), 3540), // spec.retention.failedPodTTL
];

/// Build `i` of the scale test, finished at `T0 + i` seconds (its status as `decide` writes
/// it), and its finished pod.
fn finished_build(i: usize) -> (Build, Pod) {
    let (succeeded, ttl, _) = MIX[i % MIX.len()];
    let mut build = Build::test(&format!("b{i:04}"));
    build.spec.retention = Some(Retention {
        succeeded_pod_ttl: if succeeded {
            ttl.map(str::to_owned)
        } else {
            None
        },
        failed_pod_ttl: if succeeded {
            None
        } else {
            ttl.map(str::to_owned)
        },
        attempt_history: None,
    });
    let config = Config::default();
    build.status = decide(&build, &Observed::default(), T0, &config)
        .status()
        .cloned();
    let fixture = kiln::controller::fixtures::PodFixture::for_build(&build, 1);
    let pod = if succeeded {
        fixture.pushed(DIGEST)
    } else {
        fixture.exited(1, "boom")
    }
    .pod;
    let observed = Observed {
        pods: vec![pod.clone()],
        ..Observed::default()
    };
    build.status = decide(&build, &observed, at(i as i64), &config)
        .status()
        .cloned();
    (build, pod)
}

/// Counts every request the in-memory API receives, and records the deletes in order.
#[derive(Default)]
struct ApiCalls {
    total: AtomicUsize,
    deletes: Mutex<Vec<String>>,
}

/// An interceptor that counts the request and lets it through (a macro: each interceptor
/// takes its own context type, borrowed for any lifetime).
macro_rules! pass {
    ($calls:expr) => {{
        let calls = $calls.clone();
        move |_| {
            calls.total.fetch_add(1, Ordering::SeqCst);
            Ok(None)
        }
    }};
}

fn counting(calls: &Arc<ApiCalls>) -> interceptor::Funcs {
    let deletes = calls.clone();
    interceptor::Funcs::new()
        .get(pass!(calls))
        .list(pass!(calls))
        .create(pass!(calls))
        .update(pass!(calls))
        .replace(pass!(calls))
        .patch(pass!(calls))
        .replace_status(pass!(calls))
        .patch_status(pass!(calls))
        .delete_collection(pass!(calls))
        .delete(move |ctx| {
            deletes.total.fetch_add(1, Ordering::SeqCst);
            deletes
                .deletes
                .lock()
                .unwrap()
                .push(format!("{}/{}", ctx.namespace, ctx.name));
            Ok(None)
        })
}

#[tokio::test]
async fn retention_one_sweep_of_1000_finished_builds_deletes_exactly_the_expired_pods_in_order() {
    const BUILDS: usize = 1000;
    let now = 3600;
    let mut objects: Vec<Value> = Vec::new();
    let mut expected: Vec<String> = Vec::new();
    for i in 0..BUILDS {
        let (build, pod) = finished_build(i);
        let (_, _, ttl) = MIX[i % MIX.len()];
        if i as i64 + ttl <= now {
            expected.push(format!("{NS}/{}", pod.name_any()));
        }
        objects.push(serde_json::to_value(&build).unwrap());
        objects.push(serde_json::to_value(&pod).unwrap());
    }
    expected.sort();
    let calls = Arc::new(ApiCalls::default());
    let client = fake_api(objects, Some(counting(&calls))).await;
    let ctx = Context::new(client.clone(), Config::default())
        .with_clock(Arc::new(ManualClock::new(at(now))));

    let report = sweep_once(&ctx).await.expect("sweep");

    let deletes = calls.deletes.lock().unwrap().clone();
    assert_eq!(deletes, expected, "exactly the expired pods, sorted");
    assert_eq!(
        deleted(&report, SweepReason::Expired),
        expected.len() as u64
    );
    assert_eq!(report.total_deleted(), expected.len() as u64);
    assert_eq!(report.examined, BUILDS as u64);
    let total = calls.total.load(Ordering::SeqCst);
    println!(
        "one sweep over {BUILDS} finished Builds: {} expired pods deleted with {total} API calls ({} + {})",
        expected.len(),
        expected.len(),
        total - expected.len()
    );
    assert!(
        total <= expected.len() + 4,
        "{total} calls for {} deletions",
        expected.len()
    );
    let pods = Api::<Pod>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(pods.items.len(), BUILDS - expected.len());
    let builds = Api::<Build>::namespaced(client, NS)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(
        builds.items.len(),
        BUILDS,
        "the controller never deletes a Build"
    );
}

// --- Cache leases ----------------------------------------------------------------------------

#[tokio::test]
async fn lease_is_taken_renewed_and_released_around_an_attempt() {
    let (h, cache) = with_cache(vec![Build::test("app")]).await;
    let imported = Digest::of(b"the cache manifest of an earlier build");
    cache.tag("default/app", "buildcache", imported);

    h.settle("app").await;
    let leases = cache.leases();
    let lease = &leases["build-uid-app-1"];
    assert_eq!(lease.digests, [imported], "the tag, resolved when taken");
    assert_eq!(
        cache_leases(&h.build("app").await.unwrap()),
        ["build-uid-app-1"]
    );
    h.pod_becomes("app", 1, |p| p.running()).await;

    // A push to the tag while the build runs does not move the lease off what it imports.
    cache.tag("default/app", "buildcache", Digest::of(b"a newer push"));
    h.advance(8 * 60);
    h.settle("app").await;
    let leases = cache.leases();
    let renewed = &leases["build-uid-app-1"];
    assert_eq!(
        renewed.targets,
        [LeaseTarget::Digest { digest: imported }],
        "a renewal names the digests"
    );
    assert_eq!(renewed.digests, [imported]);
    assert!(renewed.expires_at > lease.expires_at);

    h.pod_becomes("app", 1, |p| p.pushed(DIGEST)).await;
    assert!(cache.leases().is_empty(), "released when the attempt ended");
    assert!(cache_leases(&h.build("app").await.unwrap()).is_empty());
    assert_eq!(
        cache.calls(),
        [
            "PUT /admin/v1/leases/build-uid-app-1",
            "PUT /admin/v1/leases/build-uid-app-1",
            "DELETE /admin/v1/leases/build-uid-app-1",
            "PUT /admin/v1/logs/default/kiln_logs/_tags/build-uid-app-1",
            "GET /admin/v1/builds/uid-app/bases",
        ]
    );
}

#[tokio::test]
async fn lease_failure_is_a_warning_and_the_build_runs_without_a_hot_loop() {
    let (h, cache) = with_cache(vec![Build::test("app")]).await;
    cache.set_down(true);
    let requeue = h.settle("app").await;
    assert_eq!(h.pod_names().await, ["app-1"], "the build runs");
    assert_eq!(
        requeue,
        kube::runtime::controller::Action::requeue(Duration::from_secs(10)),
        "the next try waits for the backoff"
    );
    let warnings = |events: Vec<(String, String)>| {
        events
            .into_iter()
            .filter(|(t, r)| t == "Warning" && r == "CacheUnavailable")
            .count()
    };
    assert_eq!(warnings(h.events().await), 1);
    // Within the backoff nothing is called again.
    let calls = cache.calls().len();
    h.advance(5);
    h.settle("app").await;
    assert_eq!(cache.calls().len(), calls);
    // After it, the call is repeated, without a second warning for the same streak.
    h.advance(5);
    h.settle("app").await;
    assert_eq!(cache.calls().len(), calls + 1);
    assert_eq!(warnings(h.events().await), 1);
    cache.set_down(false);
    h.advance(20);
    h.settle("app").await;
    assert!(cache.leases().contains_key("build-uid-app-1"));
}

#[tokio::test]
async fn lease_release_that_fails_is_retried_and_survives_a_restart() {
    let (mut h, cache) = with_cache(vec![Build::test("app")]).await;
    h.settle("app").await;
    h.pod_becomes("app", 1, |p| p.running()).await;
    assert!(cache.leases().contains_key("build-uid-app-1"));

    cache.set_down(true);
    h.pod_becomes("app", 1, |p| p.pushed(DIGEST)).await;
    let build = h.build("app").await.unwrap();
    assert_eq!(build.status.as_ref().unwrap().phase, Some(Phase::Succeeded));
    assert_eq!(
        cache_leases(&build),
        ["build-uid-app-1"],
        "owed, in the status"
    );
    assert!(
        h.event_reasons()
            .await
            .contains(&Reason::CacheUnavailable.as_str().to_owned())
    );

    // A restart forgets what this process knew; the status does not.
    h.restart();
    cache.set_down(false);
    h.advance(10);
    h.settle("app").await;
    assert!(cache.leases().is_empty(), "released after the restart");
    assert!(cache_leases(&h.build("app").await.unwrap()).is_empty());
}

#[tokio::test]
async fn lease_finalizer_releases_the_lease_and_deletes_the_build_cache_tag() {
    let (mut h, cache) = with_cache(vec![Build::test("app")]).await;
    cache.tag("default/app", "buildcache", Digest::of(b"cache"));
    cache.tag("default/shared", "buildcache", Digest::of(b"shared cache"));
    h.settle("app").await;
    h.pod_becomes("app", 1, |p| p.running()).await;
    assert_eq!(cache.leases().len(), 1);

    h.delete_and_finalize("app").await;
    assert!(cache.leases().is_empty());
    assert_eq!(
        cache.tags(),
        ["default/shared:buildcache"],
        "the Build's tag goes, the namespace's shared cache stays"
    );
}

#[tokio::test]
async fn lease_cleanup_of_an_unreachable_cache_lets_the_build_go_at_its_deadline() {
    let (mut h, cache) = with_cache(vec![Build::test("app")]).await;
    h.settle("app").await;
    h.pod_becomes("app", 1, |p| p.pushed(DIGEST)).await;
    cache.set_down(true);
    h.delete_build("app").await;
    h.settle("app").await;
    assert!(h.build("app").await.is_some(), "held while it retries");
    h.advance(600);
    h.settle("app").await;
    assert!(h.build("app").await.is_none(), "let go at the deadline");
}

// --- Stored build logs -----------------------------------------------------------------------

const LOG_REF: &str = "default/kiln_logs:build-uid-app-1";

fn stored_log(build: &Build) -> Option<kiln::crd::StoredLog> {
    build.status.as_ref()?.attempts.first()?.log.clone()
}

#[tokio::test]
async fn log_of_an_ended_attempt_is_stored_once_recorded_and_deleted_with_its_build() {
    let text = "#1 [internal] load build definition\n#5 RUN make\n#5 DONE 1.2s\n";
    let (mut h, cache) = with_cache_and_log(vec![Build::test("app")], text, 16 << 20).await;
    h.settle("app").await;
    h.pod_becomes("app", 1, |p| p.running()).await;
    assert!(cache.logs().is_empty(), "nothing while the attempt runs");

    h.pod_becomes("app", 1, |p| p.pushed(DIGEST)).await;
    let build = h.build("app").await.unwrap();
    assert_eq!(build.status.as_ref().unwrap().phase, Some(Phase::Succeeded));
    let logs = cache.logs();
    let log = &logs[LOG_REF];
    assert_eq!(log.bytes, text.as_bytes(), "the pod's log, byte for byte");
    let annotation = |key: &str| log.annotations.get(key).map(String::as_str);
    assert_eq!(annotation("dev.kiln.build.name"), Some("app"));
    assert_eq!(annotation("dev.kiln.build.uid"), Some("uid-app"));
    assert_eq!(annotation("dev.kiln.build.attempt"), Some("1"));
    assert_eq!(annotation("dev.kiln.build.result"), Some("Succeeded"));
    assert_eq!(annotation("dev.kiln.log.truncated-bytes"), None);
    let recorded = stored_log(&build).expect("the attempt says where its log is");
    assert_eq!(format!("{}:{}", recorded.repository, recorded.tag), LOG_REF);
    assert_eq!(recorded.size, text.len() as u64);

    // Stored once: later reconciles, and a restart that forgets the ledger, store nothing.
    h.advance(3600);
    h.restart();
    h.settle("app").await;
    let puts = cache
        .calls()
        .iter()
        .filter(|c| c.starts_with("PUT /admin/v1/logs/"))
        .count();
    assert_eq!(puts, 1);

    h.delete_and_finalize("app").await;
    assert!(cache.logs().is_empty(), "the log goes with its Build");
}

#[tokio::test]
async fn a_long_log_keeps_its_tail_and_says_what_was_cut() {
    let text: String = (0..2000).map(|n| format!("step {n:05}\n")).collect();
    let (h, cache) = with_cache_and_log(vec![Build::test("app")], &text, 1024).await;
    h.settle("app").await;
    h.pod_becomes("app", 1, |p| p.exited(1, "failed")).await;
    let logs = cache.logs();
    let log = &logs[LOG_REF];
    assert!(log.bytes.len() <= 1024, "{} bytes kept", log.bytes.len());
    let kept = String::from_utf8(log.bytes.clone()).unwrap();
    assert!(kept.starts_with("[kiln: the first "), "{kept:.80}");
    assert!(kept.ends_with("step 01999\n"), "the tail is kept");
    let recorded = stored_log(&h.build("app").await.unwrap()).unwrap();
    assert!(recorded.truncated_bytes > 0);
    assert_eq!(
        log.annotations.get("dev.kiln.log.truncated-bytes"),
        Some(&recorded.truncated_bytes.to_string())
    );
    assert_eq!(
        log.annotations
            .get("dev.kiln.build.result")
            .map(String::as_str),
        Some("Failed")
    );
}

#[tokio::test]
async fn a_cache_outage_neither_fails_nor_delays_the_build_and_its_log_is_stored_after() {
    let (mut h, cache) = with_cache_and_log(vec![Build::test("app")], "built\n", 16 << 20).await;
    h.settle("app").await;
    h.pod_becomes("app", 1, |p| p.running()).await;
    cache.set_down(true);
    h.pod_becomes("app", 1, |p| p.pushed(DIGEST)).await;
    let build = h.build("app").await.unwrap();
    assert_eq!(build.status.as_ref().unwrap().phase, Some(Phase::Succeeded));
    assert_eq!(stored_log(&build), None);
    let warnings = h
        .events()
        .await
        .into_iter()
        .filter(|(t, r)| t == "Warning" && r == "CacheUnavailable")
        .count();
    assert_eq!(warnings, 1, "one Warning for the streak");

    // The pod is kept past its retention while its log is owed.
    h.advance(3600 + 60);
    let report = sweep(&h).await;
    assert_eq!(
        deleted(&report, SweepReason::Expired),
        0,
        "the pod holds the log"
    );
    assert_eq!(h.pod_names().await, ["app-1"]);

    // A restart forgets the ledger; the status still says the log is owed.
    cache.set_down(false);
    h.restart();
    h.settle("app").await;
    assert_eq!(cache.logs()[LOG_REF].bytes, b"built\n");
    assert!(stored_log(&h.build("app").await.unwrap()).is_some());
    let report = sweep(&h).await;
    assert_eq!(
        deleted(&report, SweepReason::Expired),
        1,
        "then the pod goes"
    );
}

// --- Base images -----------------------------------------------------------------------------

const ALPINE: &str = "docker.io/library/alpine";

fn base_images(build: &Build) -> Vec<String> {
    build
        .status
        .iter()
        .flat_map(|s| &s.base_images)
        .map(|b| format!("{}@{}", b.image, &b.digest[..8 + 4]))
        .collect()
}

#[tokio::test]
async fn a_moved_base_image_rebuilds_once_and_a_failed_rebuild_waits_for_the_next_move() {
    let mut build = Build::test("app");
    build.spec.triggers = Some(kiln::crd::Triggers {
        base_image_changed: true,
    });
    let (h, cache) = with_cache(vec![build]).await;
    let (a, b, c) = (
        Digest::of(b"alpine a"),
        Digest::of(b"alpine b"),
        Digest::of(b"alpine c"),
    );
    h.settle("app").await;
    h.pod_becomes("app", 1, |p| p.running()).await;
    cache.resolved_base("uid-app", ALPINE, "3.20", a);
    h.pod_becomes("app", 1, |p| p.pushed(DIGEST)).await;
    let built = h.build("app").await.unwrap();
    assert_eq!(
        base_images(&built),
        [format!("{ALPINE}:3.20@{}", &a.to_string()[..12])]
    );

    // An hour and a bit later the tag is checked: unmoved, nothing starts.
    h.advance(4000);
    h.settle("app").await;
    assert!(
        cache
            .calls()
            .contains(&"POST /admin/v1/mirror/resolve".to_owned())
    );
    assert_eq!(h.pod_names().await, ["app-1"]);

    // It moved: one new attempt, announced with both digests.
    cache.upstream_moves(ALPINE, "3.20", b);
    h.advance(4000);
    h.settle("app").await;
    assert_eq!(h.pod_names().await, ["app-1", "app-2"]);
    let events = h.events().await;
    assert_eq!(
        events
            .iter()
            .filter(|(_, r)| r == "BaseImageChanged")
            .count(),
        1,
        "{events:?}"
    );
    let trigger = h
        .build("app")
        .await
        .and_then(|b| b.status?.base_image_check?.last_trigger)
        .unwrap();
    assert_eq!(
        (trigger.from, trigger.to, trigger.attempt),
        (a.to_string(), b.to_string(), 2)
    );

    // The rebuild fails: the same digest starts nothing more, checks go on.
    h.pod_becomes("app", 2, |p| p.exited(1, "RUN failed")).await;
    let resolves = |cache: &FakeCache| {
        cache
            .calls()
            .iter()
            .filter(|c| *c == "POST /admin/v1/mirror/resolve")
            .count()
    };
    let before = resolves(&cache);
    h.advance(4000);
    h.settle("app").await;
    assert_eq!(resolves(&cache), before + 1, "checked again");
    assert_eq!(h.pod_names().await, ["app-1", "app-2"], "not rebuilt");

    // It moves again: attempt 3.
    cache.upstream_moves(ALPINE, "3.20", c);
    h.advance(4000);
    h.settle("app").await;
    assert_eq!(h.pod_names().await, ["app-1", "app-2", "app-3"]);
}

#[tokio::test]
async fn a_build_that_does_not_watch_its_bases_records_them_and_is_never_checked() {
    let (h, cache) = with_cache(vec![Build::test("app")]).await;
    h.settle("app").await;
    cache.resolved_base("uid-app", ALPINE, "3.20", Digest::of(b"alpine a"));
    h.pod_becomes("app", 1, |p| p.pushed(DIGEST)).await;
    assert_eq!(base_images(&h.build("app").await.unwrap()).len(), 1);
    cache.upstream_moves(ALPINE, "3.20", Digest::of(b"alpine b"));
    for _ in 0..3 {
        h.advance(4000);
        h.settle("app").await;
    }
    assert!(
        !cache.calls().iter().any(|c| c.contains("mirror/resolve")),
        "{:?}",
        cache.calls()
    );
    assert_eq!(h.pod_names().await, ["app-1"]);

    // Deleting the Build deletes the cache's record of its bases.
    let mut h = h;
    h.delete_and_finalize("app").await;
    assert!(cache.base_records().is_empty());
}

/// An API server that only lists namespaces (kube-fake-client cannot route the
/// cluster-scoped `/api/v1/namespaces`).
fn namespaces_api(names: &[&str]) -> kube::Client {
    namespaces_over(names, None)
}

/// An API server that lists `names` as the namespaces and sends every other request to
/// `inner` (none: only namespaces are asked for).
fn namespaces_over(names: &[&str], inner: Option<kube::Client>) -> kube::Client {
    let items: Vec<Value> = names
        .iter()
        .map(|n| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}))
        .collect();
    let list = json!({
        "apiVersion": "v1", "kind": "NamespaceList",
        "metadata": {"resourceVersion": "1"}, "items": items
    })
    .to_string();
    let service = tower::service_fn(move |request: axum::http::Request<kube::client::Body>| {
        let (list, inner) = (list.clone(), inner.clone());
        async move {
            if request.uri().path() != "/api/v1/namespaces" {
                let inner = inner.expect("only namespaces are asked for");
                return inner.send(request).await;
            }
            Ok::<_, kube::Error>(axum::http::Response::new(kube::client::Body::from(
                list.into_bytes(),
            )))
        }
    });
    kube::Client::new(service, "default")
}

#[tokio::test]
async fn orphan_cache_repositories_of_deleted_namespaces_are_deleted() {
    let clock = Arc::new(ManualClock::new(T0));
    let cache = FakeCache::start(clock.clone()).await;
    cache.tag("team-a/app", "buildcache", Digest::of(b"a"));
    cache.tag("gone/app", "buildcache", Digest::of(b"b"));
    cache.tag("gone/shared", "buildcache", Digest::of(b"c"));
    cache.mirror("docker.io/library/alpine");
    let client = namespaces_api(&["default", "team-a"]);
    let config = Config {
        cache_service: Some(CacheService::parse(&cache.url).unwrap()),
        ..Config::default()
    };
    let ctx = Context::new(client, config)
        .with_clock(clock)
        .with_cache_admin(AdminClient::new(&cache.url, ADMIN_TOKEN).unwrap());
    let report = sweep_cache(&ctx).await.expect("cache sweep");
    let deleted: Vec<String> = report.deleted.iter().map(|r| r.to_string()).collect();
    assert_eq!(deleted, ["gone/app", "gone/shared"]);
    assert_eq!(
        cache.repositories(),
        ["docker.io/library/alpine", "team-a/app"]
    );

    // Watching one namespace, the controller cannot tell which others exist: no sweep.
    let one = Context::new(fake_api(vec![], None).await, {
        let mut config = ctx.config.clone();
        config.namespace = Some("team-a".into());
        config
    })
    .with_cache_admin(AdminClient::new(&cache.url, ADMIN_TOKEN).unwrap());
    assert_eq!(sweep_cache(&one).await.unwrap().deleted, []);
}

#[tokio::test]
async fn orphan_log_and_context_tags_of_deleted_builds_are_deleted() {
    const LIVE: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
    const GONE: &str = "6fa459ea-ee8a-3ca4-894e-db77e160355e";
    let clock = Arc::new(ManualClock::new(T0));
    let cache = FakeCache::start(clock.clone()).await;
    let d = Digest::of(b"x");
    for (repository, tag) in [
        ("team-a/kiln_logs", format!("build-{LIVE}-1")),
        ("team-a/kiln_logs", format!("build-{GONE}-1")),
        ("team-a/kiln_logs", format!("build-{GONE}-2")),
        ("team-a/kiln_logs", "notes".to_owned()),
        ("team-a/kiln_contexts", format!("build-{LIVE}")),
        ("team-a/kiln_contexts", format!("build-{GONE}")),
        ("team-a/app", format!("build-{GONE}")),
    ] {
        cache.tag(repository, &tag, d);
    }
    let live = Build::test("app").in_namespace("team-a").with_uid(LIVE);
    let api = fake_api(vec![serde_json::to_value(live).unwrap()], None).await;
    let config = Config {
        cache_service: Some(CacheService::parse(&cache.url).unwrap()),
        ..Config::default()
    };
    let ctx = Context::new(namespaces_over(&["default", "team-a"], Some(api)), config)
        .with_clock(clock)
        .with_cache_admin(AdminClient::new(&cache.url, ADMIN_TOKEN).unwrap());
    let report = sweep_cache(&ctx).await.expect("cache sweep");
    assert_eq!(
        report.orphan_tags,
        [
            format!("team-a/kiln_contexts:build-{GONE}"),
            format!("team-a/kiln_logs:build-{GONE}-1"),
            format!("team-a/kiln_logs:build-{GONE}-2"),
        ]
    );
    assert_eq!(
        cache.tags(),
        [
            format!("team-a/app:build-{GONE}"),
            format!("team-a/kiln_contexts:build-{LIVE}"),
            format!("team-a/kiln_logs:build-{LIVE}-1"),
            "team-a/kiln_logs:notes".to_owned(),
        ],
        "a live Build's tags, tags of another form and other repositories stay"
    );
}

// --- Cache tokens ----------------------------------------------------------------------------

fn push_secret() -> Value {
    let config =
        json!({"auths": {"registry.example.com": {"auth": STANDARD.encode("bot:push-secret")}}});
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "regcred", "namespace": NS},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": STANDARD.encode(config.to_string())}
    })
}

/// The cache token in Secret `name`, and the Docker config it is in.
async fn token_in(h: &Harness, name: &str) -> (String, Value) {
    let secret = Api::<Secret>::namespaced(h.client.clone(), NS)
        .get(name)
        .await
        .unwrap();
    let bytes = &secret.data.unwrap()[".dockerconfigjson"].0;
    let config: Value = serde_json::from_slice(bytes).unwrap();
    let auth = STANDARD
        .decode(config["auths"]["kiln-cache:5000"]["auth"].as_str().unwrap())
        .unwrap();
    let auth = String::from_utf8(auth).unwrap();
    let token = auth.strip_prefix("kiln:").unwrap().to_owned();
    (token, config)
}

#[tokio::test]
async fn token_is_minted_per_attempt_scoped_to_the_namespace_and_goes_with_its_attempt() {
    let key = TokenKey::from_bytes(&[7; 32]).unwrap();
    let mut h = Harness::with(
        vec![Build::test("app").push_secret("regcred")],
        vec![push_secret()],
        Config::default(),
        None,
    )
    .await;
    tokens(&mut h, key.clone());
    h.settle("app").await;
    let (token, config) = token_in(&h, "app-1").await;
    let claims = key.verify(&token, T0.as_second() as u64).unwrap();
    assert_eq!(
        (claims.sub.as_str(), claims.ns.as_str()),
        ("uid-app", "default")
    );
    assert_eq!(
        claims.actions.into_iter().collect::<Vec<_>>(),
        [TokenAction::Pull, TokenAction::Push]
    );
    assert_eq!(claims.exp, T0.as_second() as u64 + 3600 + 600);
    assert_eq!(
        config["auths"]["registry.example.com"]["auth"],
        STANDARD.encode("bot:push-secret"),
        "the push credentials are there too"
    );
    let pod = &h.pods().await[0];
    let volumes = pod.spec.as_ref().unwrap().volumes.clone().unwrap();
    let docker = volumes.iter().find(|v| v.name == "docker-config").unwrap();
    assert_eq!(
        docker.secret.as_ref().unwrap().secret_name.as_deref(),
        Some("app-1")
    );

    // Evicted and retried: a new token for the new attempt.
    h.pod_becomes("app", 1, |p| p.evicted()).await;
    h.advance(11); // the 10 s backoff ends at the end of the stored second
    h.settle("app").await;
    let (second, _) = token_in(&h, "app-2").await;
    assert_ne!(second, token);
    // The ended attempt's token (and ConfigMap) go at the next sweep; the running one's
    // stay.
    let report = sweep(&h).await;
    assert_eq!(deleted(&report, SweepReason::AttemptFinished), 2);
    assert_eq!(h.secret_names().await, ["app-2", "regcred"]);
    assert_eq!(h.config_map_names().await, ["app-2"]);

    // Deleted with the Build.
    h.delete_and_finalize("app").await;
    assert_eq!(h.secret_names().await, ["regcred"]);
}
