//! The controller's metrics (Prometheus, through prometheus-client), its health and
//! readiness, and the small HTTP server that serves them on `--http-addr`: `/metrics`,
//! `/healthz`, `/readyz` (I/O: an HTTP listener; the rest is in-memory state).
//!
//! | metric | type | labels | what it counts |
//! | --- | --- | --- | --- |
//! | `kiln_reconciles_total` | counter | `outcome` = `applied`, `unchanged`, `failed` | every reconcile |
//! | `kiln_reconcile_duration_seconds` | histogram | — | time of one reconcile, lock wait included |
//! | `kiln_api_errors_total` | counter | `step` (`create_pod`, `write_status`, …) | failed reconciles, by the API call that failed |
//! | `kiln_builds` | gauge | `phase` | Builds in the controller's cache (no status yet counts as `Pending`) |
//! | `kiln_build_duration_seconds` | histogram | `result` = `Succeeded`, `Failed`, `Cancelled` | first attempt start to completion of a run |
//! | `kiln_queue_depth` | gauge | — | Builds waiting in a queue (reason `Queued`): for their concurrency group or a running-build slot |
//! | `kiln_queued_builds` | gauge | `namespace` (the 20 with the most, then `other`) | the same, by namespace |
//! | `kiln_queue_wait_seconds` | histogram | — | from entering a queue to the attempt's start; 0 for a run that started at once |
//! | `kiln_orphans_collected_total` | counter | `kind` = `object` (a pod, ConfigMap or Secret), `cache_repository`; `reason` | what the garbage collector removed |
//! | `kiln_sweeps_total` | counter | `sweep` = `objects`, `cache_repositories` | garbage-collection sweeps that ran to the end |
//! | `kiln_sweep_failures_total` | counter | `sweep` = `objects`, `cache_repositories` | deletions a sweep could not make (the next one retries) |
//! | `kiln_cache_calls_total` | counter | `call` (`take_lease`, `release_lease`, …), `result` = `ok`, `error` | admin API calls made for Builds |
//! | `kiln_leader` | gauge | — | 1 while this replica runs the controller |
//!
//! Gauges that count Builds are computed from the watch cache at scrape time, so they are
//! never out of step with it and cost nothing between scrapes. Label sets are written in
//! sorted order ([`SortedFamily`]), so that two scrapes of the same state are the same text; the
//! outcomes and phases are there from the start, at zero.
//!
//! **Readiness.** `/readyz` answers 200 when this replica can do its job: a standby replica
//! (leader election on, another replica leads) is ready, since it is waiting by design and a
//! rolling update must be able to proceed past it; a replica that runs the controller is
//! ready once its Build cache has synced. The JSON body says which, and who leads.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::FutureExt;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::metric_family::SortedFamily;

use crate::controller::cache_ledger::CacheCall;
use crate::controller::gc::{CacheSweepReport, SweepReason, SweepReport};
use crate::controller::observer::{GcObserver, Outcome, ReconcileObserver, Role, RoleObserver};
use crate::crd::{Build, Phase, Reason};

/// The content type of the OpenMetrics text format that prometheus-client writes.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The default `--http-addr`.
pub const DEFAULT_HTTP_ADDR: &str = "0.0.0.0:8080";

const ALL_PHASES: [Phase; 5] = [
    Phase::Pending,
    Phase::Running,
    Phase::Succeeded,
    Phase::Failed,
    Phase::Cancelled,
];

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct StepLabels {
    step: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct NamespaceLabels {
    namespace: String,
}

/// Namespaces named in `kiln_queued_builds`; the rest are summed as `other`, so the
/// label set stays bounded however many namespaces queue.
const QUEUED_NAMESPACES_SHOWN: usize = 20;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct OrphanLabels {
    kind: String,
    reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct SweepLabels {
    sweep: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct CacheCallLabels {
    call: &'static str,
    result: &'static str,
}

/// `kind` of the objects the orphan and retention sweep deletes (its report counts them by
/// reason, not by kind).
const KIND_OBJECT: &str = "object";
/// `kind` of the cache repositories of deleted namespaces.
const KIND_CACHE_REPOSITORY: &str = "cache_repository";
/// `reason` of a cache repository's deletion.
const REASON_NAMESPACE_GONE: &str = "namespace_gone";
/// `kind` of the stored-log and uploaded-context tags of deleted Builds.
const KIND_CACHE_TAG: &str = "cache_tag";
/// `reason` of a cache tag's deletion.
const REASON_BUILD_GONE: &str = "build_gone";
/// `sweep` of the orphan and retention sweep.
const SWEEP_OBJECTS: &str = "objects";
/// `sweep` of the cache repositories' sweep.
const SWEEP_CACHE: &str = "cache_repositories";

/// What `/readyz` reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Readiness {
    /// Whether the replica is ready (the HTTP status is 200 when it is, 503 otherwise).
    pub ready: bool,
    /// What the replica does.
    pub role: Role,
    /// Whether the Build cache has synced (false while the controller does not run).
    pub synced: bool,
    /// This replica's identity on the lease, when leader election is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Why it is (not) ready, for people.
    pub message: String,
}

/// The controller's metrics registry and health state; it observes every reconcile.
///
/// One per process, shared (`Arc`) by the controller's context (as its
/// [`ReconcileObserver`]), the leader election and the HTTP server.
pub struct ControllerMetrics {
    registry: Registry,
    reconciles: SortedFamily<OutcomeLabels, Counter>,
    reconcile_duration: Histogram,
    api_errors: SortedFamily<StepLabels, Counter>,
    builds: SortedFamily<PhaseLabels, Gauge>,
    build_duration: SortedFamily<ResultLabels, Histogram>,
    queue_depth: Gauge,
    queued_by_namespace: SortedFamily<NamespaceLabels, Gauge>,
    queue_wait: Histogram,
    orphans: SortedFamily<OrphanLabels, Counter>,
    sweeps: SortedFamily<SweepLabels, Counter>,
    sweep_failures: SortedFamily<SweepLabels, Counter>,
    cache_calls: SortedFamily<CacheCallLabels, Counter>,
    leader: Gauge,
    state: Mutex<HealthState>,
}

struct HealthState {
    role: Role,
    identity: Option<String>,
    builds: Option<Store<Build>>,
}

impl std::fmt::Debug for ControllerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerMetrics").finish_non_exhaustive()
    }
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ControllerMetrics {
    /// A registry with every metric registered, for a replica that runs the controller
    /// without leader election (see [`ControllerMetrics::set_role`]).
    pub fn new() -> Self {
        let reconciles = SortedFamily::<OutcomeLabels, Counter>::new(Counter::default);
        for outcome in ["applied", "unchanged", "failed"] {
            reconciles.get_or_create(&OutcomeLabels { outcome });
        }
        let builds = SortedFamily::<PhaseLabels, Gauge>::new(Gauge::default);
        for phase in ALL_PHASES {
            builds.get_or_create(&PhaseLabels {
                phase: phase.as_str(),
            });
        }
        let orphans = SortedFamily::<OrphanLabels, Counter>::new(Counter::default);
        let reasons = SweepReason::ALL.map(|r| (KIND_OBJECT, r.as_str()));
        for (kind, reason) in reasons.into_iter().chain([
            (KIND_CACHE_REPOSITORY, REASON_NAMESPACE_GONE),
            (KIND_CACHE_TAG, REASON_BUILD_GONE),
        ]) {
            orphans.get_or_create(&OrphanLabels {
                kind: kind.to_owned(),
                reason: reason.to_owned(),
            });
        }
        let sweeps = SortedFamily::<SweepLabels, Counter>::new(Counter::default);
        let sweep_failures = SortedFamily::<SweepLabels, Counter>::new(Counter::default);
        for sweep in [SWEEP_OBJECTS, SWEEP_CACHE] {
            sweeps.get_or_create(&SweepLabels { sweep });
            sweep_failures.get_or_create(&SweepLabels { sweep });
        }
        let mut metrics = Self {
            registry: Registry::with_prefix("kiln"),
            reconciles,
            // 1 ms to about 65 s: a reconcile is a few API calls, plus the wait for its
            // group.
            reconcile_duration: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            api_errors: SortedFamily::new(Counter::default),
            builds,
            // 5 s to about 11 h.
            build_duration: SortedFamily::new(|| Histogram::new(exponential_buckets(5.0, 2.0, 14))),
            queue_depth: Gauge::default(),
            queued_by_namespace: SortedFamily::new(Gauge::default),
            // 0.5 s to about 4.5 h.
            queue_wait: Histogram::new(exponential_buckets(0.5, 2.0, 16)),
            orphans,
            sweeps,
            sweep_failures,
            cache_calls: SortedFamily::new(Counter::default),
            leader: Gauge::default(),
            state: Mutex::new(HealthState {
                role: Role::Single,
                identity: None,
                builds: None,
            }),
        };
        metrics.register();
        metrics.leader.set(1);
        metrics
    }

    /// Registers every metric under its name and help text, in the order `/metrics` shows
    /// them.
    fn register(&mut self) {
        let registry = &mut self.registry;
        registry.register(
            "reconciles",
            "Reconciles of Builds, by outcome (applied: the plan wrote something; unchanged; failed)",
            self.reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time of one reconcile, including the wait for its concurrency group's lock",
            self.reconcile_duration.clone(),
        );
        registry.register(
            "api_errors",
            "Reconciles that failed, by the step (API call) that failed",
            self.api_errors.clone(),
        );
        registry.register(
            "builds",
            "Builds in the controller's cache, by phase (no status yet counts as Pending)",
            self.builds.clone(),
        );
        registry.register(
            "build_duration_seconds",
            "Time from a run's first attempt to its completion, by result",
            self.build_duration.clone(),
        );
        registry.register(
            "queue_depth",
            "Builds waiting for another Build of their concurrency group (reason Queued)",
            self.queue_depth.clone(),
        );
        registry.register(
            "queued_builds",
            "Builds waiting in a queue (reason Queued), by namespace: the 20 namespaces with the most, the rest as namespace=\"other\"",
            self.queued_by_namespace.clone(),
        );
        registry.register(
            "queue_wait_seconds",
            "Time from entering a queue (a running-build slot or a concurrency group) to the attempt's start; 0 for a run that started at once",
            self.queue_wait.clone(),
        );
        registry.register(
            "orphans_collected",
            "What the garbage collector removed, by kind and reason",
            self.orphans.clone(),
        );
        registry.register(
            "sweeps",
            "Garbage-collection sweeps that ran to the end",
            self.sweeps.clone(),
        );
        registry.register(
            "sweep_failures",
            "Deletions a garbage-collection sweep could not make; the next sweep retries them",
            self.sweep_failures.clone(),
        );
        registry.register(
            "cache_calls",
            "Calls to the cache service's admin API made for Builds, by call and result",
            self.cache_calls.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica runs the controller (holds the lease, or runs without election)",
            self.leader.clone(),
        );
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records what this replica does now, and its identity on the lease.
    pub fn set_role(&self, role: Role, identity: Option<String>) {
        self.leader
            .set(i64::from(matches!(role, Role::Single | Role::Leader)));
        let mut state = self.state();
        state.role = role;
        state.identity = identity;
    }

    /// Counts `count` objects of `kind` (`Pod`, `ConfigMap`, `Secret`, `CacheRepository`)
    /// that the garbage collector removed for `reason` (`BuildGone`, `TTLExpired`, …).
    pub fn orphans_collected(&self, kind: &str, reason: &str, count: u64) {
        self.orphans
            .get_or_create(&OrphanLabels {
                kind: kind.to_owned(),
                reason: reason.to_owned(),
            })
            .inc_by(count);
    }

    /// What `/readyz` says now.
    pub fn readiness(&self) -> Readiness {
        let state = self.state();
        let synced = state.builds.as_ref().is_some_and(is_synced);
        let (ready, message) = match (&state.role, synced) {
            (Role::Standby, _) => (true, "standing by: another replica holds the lease"),
            (Role::Single | Role::Leader, true) => (true, "running: the Build cache is synced"),
            (Role::Single | Role::Leader, false) => {
                (false, "starting: the Build cache has not synced yet")
            }
        };
        Readiness {
            ready,
            role: state.role.clone(),
            synced,
            identity: state.identity.clone(),
            message: message.to_owned(),
        }
    }

    /// The metrics in the OpenMetrics text format, with the Build gauges computed from the
    /// watch cache now.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        self.refresh_build_gauges();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    fn refresh_build_gauges(&self) {
        let builds = self.state().builds.clone();
        let counts = builds
            .map(|store| count_builds(store.state().iter().map(|b| b.as_ref())))
            .unwrap_or_default();
        for (phase, count) in ALL_PHASES.iter().zip(counts.by_phase) {
            self.builds
                .get_or_create(&PhaseLabels {
                    phase: phase.as_str(),
                })
                .set(count);
        }
        self.queue_depth.set(counts.queued);
        self.queued_by_namespace.clear();
        for (namespace, count) in top_namespaces(&counts.queued_by_namespace) {
            self.queued_by_namespace
                .get_or_create(&NamespaceLabels { namespace })
                .set(count);
        }
    }
}

fn is_synced(store: &Store<Build>) -> bool {
    matches!(store.wait_until_ready().now_or_never(), Some(Ok(())))
}

/// Builds counted by phase (in the order of `ALL_PHASES`) and waiting in a queue.
#[derive(Debug, Default, PartialEq, Eq)]
struct BuildCounts {
    by_phase: [i64; 5],
    queued: i64,
    queued_by_namespace: BTreeMap<String, i64>,
}

/// The [`QUEUED_NAMESPACES_SHOWN`] namespaces with the most queued Builds (ties by name),
/// and the rest summed as `other`.
fn top_namespaces(counts: &BTreeMap<String, i64>) -> Vec<(String, i64)> {
    let mut sorted: Vec<(&String, &i64)> = counts.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    let mut shown: Vec<(String, i64)> = sorted
        .iter()
        .take(QUEUED_NAMESPACES_SHOWN)
        .map(|(n, c)| ((*n).clone(), **c))
        .collect();
    let rest: i64 = sorted
        .iter()
        .skip(QUEUED_NAMESPACES_SHOWN)
        .map(|(_, c)| **c)
        .sum();
    if sorted.len() > QUEUED_NAMESPACES_SHOWN {
        shown.push(("other".to_owned(), rest));
    }
    shown
}

fn count_builds<'a>(builds: impl Iterator<Item = &'a Build>) -> BuildCounts {
    let mut counts = BuildCounts::default();
    for build in builds {
        let status = build.status.as_ref();
        let phase = status.and_then(|s| s.phase).unwrap_or(Phase::Pending);
        if let Some(slot) = ALL_PHASES.iter().position(|p| *p == phase) {
            counts.by_phase[slot] += 1;
        }
        if status.and_then(|s| s.reason()) == Some(Reason::Queued) {
            counts.queued += 1;
            *counts
                .queued_by_namespace
                .entry(build.namespace().unwrap_or_default())
                .or_default() += 1;
        }
    }
    counts
}

impl ReconcileObserver for ControllerMetrics {
    fn reconciled(&self, _build: &ObjectRef<Build>, outcome: Outcome, elapsed: Duration) {
        let label = match outcome {
            Outcome::Applied { .. } => "applied",
            Outcome::Unchanged => "unchanged",
            Outcome::Failed { step } => {
                self.api_errors.get_or_create(&StepLabels { step }).inc();
                "failed"
            }
        };
        self.reconciles
            .get_or_create(&OutcomeLabels { outcome: label })
            .inc();
        self.reconcile_duration.observe(elapsed.as_secs_f64());
    }

    fn started(&self, _build: &ObjectRef<Build>, waited: Duration) {
        self.queue_wait.observe(waited.as_secs_f64());
    }

    fn finished(&self, _build: &ObjectRef<Build>, phase: Phase, duration: Option<Duration>) {
        if let Some(duration) = duration {
            self.build_duration
                .get_or_create(&ResultLabels {
                    result: phase.as_str(),
                })
                .observe(duration.as_secs_f64());
        }
    }

    fn watching(&self, builds: &Store<Build>) {
        self.state().builds = Some(builds.clone());
    }
}

impl RoleObserver for ControllerMetrics {
    fn role_changed(&self, role: Role, identity: Option<String>) {
        self.set_role(role, identity);
    }
}

impl GcObserver for ControllerMetrics {
    fn swept(&self, report: &SweepReport, _elapsed: Duration) {
        for (reason, count) in &report.deleted {
            self.orphans_collected(KIND_OBJECT, reason.as_str(), *count);
        }
        let sweep = SweepLabels {
            sweep: SWEEP_OBJECTS,
        };
        self.sweeps.get_or_create(&sweep).inc();
        self.sweep_failures
            .get_or_create(&sweep)
            .inc_by(report.failed);
    }

    fn cache_swept(&self, report: &CacheSweepReport, _elapsed: Duration) {
        self.orphans_collected(
            KIND_CACHE_REPOSITORY,
            REASON_NAMESPACE_GONE,
            report.deleted.len() as u64,
        );
        self.orphans_collected(
            KIND_CACHE_TAG,
            REASON_BUILD_GONE,
            report.orphan_tags.len() as u64,
        );
        let sweep = SweepLabels { sweep: SWEEP_CACHE };
        self.sweeps.get_or_create(&sweep).inc();
        self.sweep_failures
            .get_or_create(&sweep)
            .inc_by(report.failed);
    }

    fn cache_call(&self, call: CacheCall, succeeded: bool) {
        let result = if succeeded { "ok" } else { "error" };
        self.cache_calls
            .get_or_create(&CacheCallLabels {
                call: call.as_str(),
                result,
            })
            .inc();
    }
}

/// The routes `/metrics`, `/healthz` and `/readyz` over `metrics`.
pub fn router(metrics: Arc<ControllerMetrics>) -> Router {
    Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(serve_readiness))
        .with_state(metrics)
}

async fn serve_metrics(State(metrics): State<Arc<ControllerMetrics>>) -> Response {
    match metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], text).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding the metrics failed\n",
        )
            .into_response(),
    }
}

async fn serve_readiness(State(metrics): State<Arc<ControllerMetrics>>) -> Response {
    let readiness = metrics.readiness();
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(readiness)).into_response()
}

/// Why the HTTP server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ControllerServeError {
    /// The address could not be bound.
    #[error("cannot listen on {addr} (--http-addr)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The server stopped with an error.
    #[error("the metrics and health server failed")]
    Serve(#[source] std::io::Error),
}

/// Binds `addr`, so that a taken port fails the command at start rather than later.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ControllerServeError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ControllerServeError::Bind { addr, source })
}

/// Serves [`router`] on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<ControllerMetrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ControllerServeError> {
    axum::serve(listener, router(metrics))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ControllerServeError::Serve)
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use kube::runtime::reflector::store::Writer;
    use tower::ServiceExt;

    use super::*;
    use crate::crd::condition::set_condition;
    use crate::crd::fixtures::T0;
    use crate::crd::{BuildStatus, CONDITION_SUCCEEDED, ConditionStatus};

    async fn get_path(metrics: &Arc<ControllerMetrics>, path: &str) -> (StatusCode, String) {
        let response = router(metrics.clone())
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    fn reference() -> ObjectRef<Build> {
        ObjectRef::new("app").within("default")
    }

    #[tokio::test]
    async fn metrics_count_reconciles_errors_durations_and_orphans() {
        let metrics = Arc::new(ControllerMetrics::new());
        metrics.reconciled(
            &reference(),
            Outcome::Applied { writes: 2 },
            Duration::from_millis(3),
        );
        metrics.reconciled(&reference(), Outcome::Unchanged, Duration::from_millis(1));
        metrics.reconciled(
            &reference(),
            Outcome::Failed { step: "create_pod" },
            Duration::from_millis(2),
        );
        metrics.finished(
            &reference(),
            Phase::Succeeded,
            Some(Duration::from_secs(42)),
        );
        metrics.finished(&reference(), Phase::Failed, None);
        metrics.orphans_collected("Pod", "BuildGone", 3);
        metrics.started(&reference(), Duration::from_secs(3));

        let (status, text) = get_path(&metrics, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        for line in [
            "kiln_reconciles_total{outcome=\"applied\"} 1",
            "kiln_reconciles_total{outcome=\"unchanged\"} 1",
            "kiln_reconciles_total{outcome=\"failed\"} 1",
            "kiln_api_errors_total{step=\"create_pod\"} 1",
            "kiln_reconcile_duration_seconds_count 3",
            "kiln_build_duration_seconds_count{result=\"Succeeded\"} 1",
            "kiln_build_duration_seconds_sum{result=\"Succeeded\"} 42.0",
            "kiln_orphans_collected_total{kind=\"Pod\",reason=\"BuildGone\"} 3",
            "kiln_leader 1",
            "kiln_queue_depth 0",
            "kiln_queue_wait_seconds_count 1",
            "kiln_queue_wait_seconds_sum 3.0",
            "kiln_builds{phase=\"Running\"} 0",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        // A run without a start time is not observed as a zero-length build.
        assert!(!text.contains("result=\"Failed\""), "{text}");
    }

    #[tokio::test]
    async fn the_server_answers_on_a_socket_until_shutdown() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(ControllerMetrics::new());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, metrics, async move {
            let _ = stopped.await;
        }));
        crate::tls::install_crypto_provider();
        let response = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        assert_eq!(response.headers()["content-type"], OPENMETRICS_CONTENT_TYPE);
        let text = response.text().await.unwrap();
        assert!(text.contains("kiln_reconciles"), "{text}");
        // A taken port is an error that names the flag.
        let error = bind(addr).await.unwrap_err();
        assert!(error.to_string().contains("--http-addr"), "{error}");
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    #[test]
    fn label_sets_are_written_in_order_and_outcomes_start_at_zero() {
        let metrics = ControllerMetrics::new();
        metrics.swept(
            &SweepReport {
                examined: 9,
                deleted: [(SweepReason::Expired, 2), (SweepReason::BuildGone, 3)].into(),
                failed: 1,
            },
            Duration::from_millis(5),
        );
        metrics.cache_swept(
            &CacheSweepReport {
                examined: 4,
                deleted: vec!["gone/app".parse().unwrap()],
                failed: 0,
                orphan_tags: vec!["team/kiln_logs:build-x-1".into()],
            },
            Duration::from_millis(5),
        );
        metrics.cache_call(CacheCall::TakeLease, true);
        metrics.cache_call(CacheCall::ReleaseLease, false);
        let text = metrics.encode().unwrap();
        let lines = |prefix: &str| -> Vec<&str> {
            text.lines().filter(|l| l.starts_with(prefix)).collect()
        };
        assert_eq!(
            lines("kiln_orphans_collected_total{"),
            [
                "kiln_orphans_collected_total{kind=\"cache_repository\",reason=\"namespace_gone\"} 1",
                "kiln_orphans_collected_total{kind=\"cache_tag\",reason=\"build_gone\"} 1",
                "kiln_orphans_collected_total{kind=\"object\",reason=\"attempt_ended\"} 0",
                "kiln_orphans_collected_total{kind=\"object\",reason=\"attempt_finished\"} 0",
                "kiln_orphans_collected_total{kind=\"object\",reason=\"build_gone\"} 3",
                "kiln_orphans_collected_total{kind=\"object\",reason=\"build_replaced\"} 0",
                "kiln_orphans_collected_total{kind=\"object\",reason=\"expired\"} 2",
            ]
        );
        assert_eq!(
            lines("kiln_sweeps_total{"),
            [
                "kiln_sweeps_total{sweep=\"cache_repositories\"} 1",
                "kiln_sweeps_total{sweep=\"objects\"} 1",
            ]
        );
        assert_eq!(
            lines("kiln_sweep_failures_total{"),
            [
                "kiln_sweep_failures_total{sweep=\"cache_repositories\"} 0",
                "kiln_sweep_failures_total{sweep=\"objects\"} 1",
            ]
        );
        assert_eq!(
            lines("kiln_cache_calls_total{"),
            [
                "kiln_cache_calls_total{call=\"release_lease\",result=\"error\"} 1",
                "kiln_cache_calls_total{call=\"take_lease\",result=\"ok\"} 1",
            ]
        );
        assert_eq!(
            lines("kiln_reconciles_total{"),
            [
                "kiln_reconciles_total{outcome=\"applied\"} 0",
                "kiln_reconciles_total{outcome=\"failed\"} 0",
                "kiln_reconciles_total{outcome=\"unchanged\"} 0",
            ]
        );
        assert_eq!(
            lines("kiln_builds{"),
            [
                "kiln_builds{phase=\"Cancelled\"} 0",
                "kiln_builds{phase=\"Failed\"} 0",
                "kiln_builds{phase=\"Pending\"} 0",
                "kiln_builds{phase=\"Running\"} 0",
                "kiln_builds{phase=\"Succeeded\"} 0",
            ]
        );
        assert_eq!(text, metrics.encode().unwrap());
    }

    #[test]
    fn builds_are_counted_by_phase_and_queue() {
        let mut waiting = BuildStatus {
            phase: Some(Phase::Pending),
            ..BuildStatus::default()
        };
        set_condition(
            &mut waiting.conditions,
            CONDITION_SUCCEEDED,
            ConditionStatus::Unknown,
            Reason::Queued,
            "waiting for app",
            Some(1),
            T0,
        );
        let queued = Build::test("queued").with_status(waiting);
        let running = Build::test("running").with_status(BuildStatus {
            phase: Some(Phase::Running),
            ..BuildStatus::default()
        });
        let fresh = Build::test("fresh");
        let counts = count_builds([&queued, &running, &fresh].into_iter());
        assert_eq!(
            counts,
            BuildCounts {
                by_phase: [2, 1, 0, 0, 0],
                queued: 1,
                queued_by_namespace: BTreeMap::from([("default".to_owned(), 1)]),
            }
        );
    }

    #[test]
    fn queued_namespaces_beyond_the_top_are_summed_as_other() {
        let counts: BTreeMap<String, i64> = (0..25)
            .map(|i| (format!("ns-{i:02}"), if i == 24 { 100 } else { 1 }))
            .collect();
        let top = top_namespaces(&counts);
        assert_eq!(top.len(), QUEUED_NAMESPACES_SHOWN + 1);
        assert_eq!(top[0], ("ns-24".to_owned(), 100));
        // Ties by name: ns-00 … ns-18 shown, ns-19 … ns-23 summed.
        assert_eq!(top[QUEUED_NAMESPACES_SHOWN - 1], ("ns-18".to_owned(), 1));
        assert_eq!(top[QUEUED_NAMESPACES_SHOWN], ("other".to_owned(), 5));
        assert!(top_namespaces(&BTreeMap::from([("a".to_owned(), 3)])).len() == 1);
    }

    #[tokio::test]
    async fn readiness_follows_the_cache_and_the_role() {
        let metrics = Arc::new(ControllerMetrics::new());
        // Running alone, before the watch starts: not ready.
        let (status, body) = get_path(&metrics, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        let readiness: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(readiness["role"], "single");
        assert_eq!(readiness["synced"], false);

        // A standby replica is ready and says it does not lead.
        metrics.set_role(Role::Standby, Some("kiln-1".into()));
        let (status, body) = get_path(&metrics, "/readyz").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let readiness: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(readiness["role"], "standby");
        assert_eq!(readiness["identity"], "kiln-1");
        let (_, text) = get_path(&metrics, "/metrics").await;
        assert!(text.lines().any(|l| l == "kiln_leader 0"), "{text}");

        // The leader is ready once its cache has synced.
        metrics.set_role(Role::Leader, Some("kiln-1".into()));
        let mut writer = Writer::<Build>::default();
        metrics.watching(&writer.as_reader());
        assert_eq!(
            get_path(&metrics, "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        writer.apply_watcher_event(&kube::runtime::watcher::Event::InitDone);
        let (status, body) = get_path(&metrics, "/readyz").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.contains("\"role\":\"leader\""), "{body}");

        assert_eq!(get_path(&metrics, "/healthz").await.0, StatusCode::OK);
    }
}
