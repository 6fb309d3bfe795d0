//! The controller at scale on a real kube-apiserver: a burst of Builds, the API writes each
//! costs, and a fresh start over many finished Builds. Targets: every pod of 1,000 Builds
//! within 20 s and every Build Succeeded within 60 s; at most 6 writes per successful
//! build; no writes at start-up for Builds that need nothing, and at most 200 MiB resident.
//!
//! `cargo bench --bench controller_scale`; sizes: KILN_BENCH_BURST (1000 Builds, over
//! KILN_BENCH_BURST_NAMESPACES = 4 namespaces, created by KILN_BENCH_CREATORS = 8
//! concurrent clients), KILN_BENCH_AT_REST (10000 finished Builds, over
//! KILN_BENCH_AT_REST_NAMESPACES = 100 namespaces). KILN_BENCH_CONCURRENCY,
//! KILN_BENCH_KUBE_QPS and KILN_BENCH_KUBE_BURST are passed to the controller as
//! `--concurrency`, `--kube-qps` and `--kube-burst` when set (the last two only when
//! `kiln controller --help` lists them). Under `cargo test` it does a tiny smoke run (20
//! Builds, 100 at rest in 4 namespaces) that still checks every Build succeeds and every
//! one at rest is reconciled.
//!
//! The control plane is this process's own (`tests/common/envtest.rs`: etcd,
//! kube-apiserver with an audit log of writes, kube-controller-manager); the test kubelet
//! runs in this process and completes every pod at once. The controller is the `kiln`
//! binary (see [`Launcher`]) in a process of its own, so that its peak memory is its own
//! (VmHWM), acting as a user of its own (an impersonating kubeconfig) so that the audit
//! log tells its writes apart. How long each reconcile took comes from its own `/metrics`; which Builds it
//! reconciled, from its debug log (one line per reconcile).
//!
//! Phases:
//! 1. **Baseline**: with no controller, this process creates N Builds and then N pods
//!    itself: how fast this API server takes writes, on this machine, now.
//! 2. **Burst**: N Builds created as fast as the API server takes them; the times until
//!    every pod exists and every Build Succeeded, the latency from a Build's create
//!    response to its pod's first sighting by a watch (this process's monotonic clock:
//!    `creationTimestamp` has whole seconds), the controller's writes by kind, 429s.
//! 3. **At rest**: one template Build (inline source, cache token) run through the
//!    controller; with the controller stopped, its Build, pod, ConfigMap and Secret are
//!    cloned M times (names, UIDs, owner references rewritten; statuses written through
//!    the status subresources). A fresh controller then starts over M + N + 1 finished
//!    Builds, twice: first catching up with what the stopped controller left (its sweep
//!    deletes the ConfigMaps and Secrets of finished attempts), then with nothing to do.
//!    Each start: time to ready, to the end of its first pass over every Build, its
//!    writes (listed; the second start needs none), its peak memory. The baseline: the
//!    time this process takes to list the same objects once.
//!
//! The machine may be shared, so wall-clock figures move with whatever else runs; the
//! controller's CPU time (from /proc) is printed beside them. The last line is one
//! machine-readable summary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark stops where it fails

mod common;

/// The integration tests' harness: the control plane, the test kubelet, cluster helpers.
#[path = "../tests/common/mod.rs"]
mod harness;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use harness::envtest::{self, AuditEvent, ControlPlane};
use harness::kubelet::{Script, TestKubelet};
use harness::{cluster, scene};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kiln::controller::labels::{BUILD, build_uid_selector, managed_selector};
use kiln::crd::{Build, CacheMode, CacheScope, Phase};
use kiln::oci::digest::Digest;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

/// The user the controller acts as (an impersonating kubeconfig), as the audit log shows it.
const CONTROLLER_USER: &str = "kiln-bench-controller";
/// The cache service the controller names in its pods; never called (no admin token).
const CACHE_SERVICE: &str = "http://kiln-cache.kiln-system.svc:5000";
/// The template Build of the at-rest phase: a name that occurs nowhere else, so that
/// rewriting it in the template's objects rewrites exactly its references.
const TEMPLATE: &str = "kiln-bench-template";
/// How long to wait for the audit log to stop growing after a phase.
const SETTLE: Duration = Duration::from_secs(2);

/// The sizes of one run.
struct Sizes {
    burst: usize,
    burst_namespaces: usize,
    creators: usize,
    at_rest: usize,
    at_rest_namespaces: usize,
}

impl Sizes {
    fn from_env() -> Self {
        let size = |var, full, smoke| usize::try_from(common::size(var, full, smoke)).unwrap();
        Self {
            burst: size("KILN_BENCH_BURST", 1000, 20),
            burst_namespaces: size("KILN_BENCH_BURST_NAMESPACES", 4, 4).max(1),
            creators: size("KILN_BENCH_CREATORS", 8, 8).max(1),
            at_rest: size("KILN_BENCH_AT_REST", 10_000, 100),
            at_rest_namespaces: size("KILN_BENCH_AT_REST_NAMESPACES", 100, 4).max(1),
        }
    }
}

// --- the controller's process ----------------------------------------------------------------

/// What the controller's log said, read by a thread as it is written.
#[derive(Default)]
struct LogState {
    /// Each Build reconciled (its `ObjectRef` as the controller prints it) and when it was
    /// first reconciled.
    reconciled: HashMap<String, Instant>,
    /// Reconciles in all.
    reconciles: usize,
    /// When the first and the latest reconcile were logged.
    first: Option<Instant>,
    last: Option<Instant>,
    /// Failed reconciles: the Build and the error.
    failed: Vec<String>,
    /// Warnings and errors (the first few).
    warnings: Vec<String>,
}

/// When set, this executable runs `kiln` (its command line) instead of the benchmark.
const AS_KILN: &str = "KILN_BENCH_AS_KILN";

/// How the controller's process is started.
#[derive(Clone, Debug)]
enum Launcher {
    /// The `kiln` binary cargo built for this benchmark.
    Binary,
    /// This executable, re-run as `kiln` with ring installed as rustls' provider first.
    /// Needed while `kiln controller` builds its kube client without installing ring: the
    /// `kiln` that cargo builds for benchmarks has the dev-dependencies' features too
    /// (aws-lc-rs beside ring), and rustls then refuses to pick a provider by itself. The
    /// code that runs is the same `kiln::app::main`.
    ThisExecutable,
}

impl Launcher {
    fn command(&self) -> Command {
        match self {
            Self::Binary => Command::new(env!("CARGO_BIN_EXE_kiln")),
            Self::ThisExecutable => {
                let mut command =
                    Command::new(std::env::current_exe().expect("this executable's path"));
                command.env(AS_KILN, "1");
                command
            }
        }
    }
}

/// `kiln controller` in its own process, stopped (SIGTERM, then SIGKILL) on drop.
struct ControllerProcess {
    child: Child,
    pid: u32,
    http: String,
    started: Instant,
    log: Arc<Mutex<LogState>>,
}

impl ControllerProcess {
    fn start(launcher: &Launcher, kubeconfig: &Path, flags: &[String]) -> Self {
        let port = harness::free_port();
        let mut child = launcher
            .command()
            .arg("controller")
            .args(flags)
            .arg(format!("--http-addr=127.0.0.1:{port}"))
            .env("KUBECONFIG", kubeconfig)
            // One debug line per reconcile, naming the Build: the first pass is done when
            // every Build has one.
            .env("RUST_LOG", "info,kiln::controller::run=debug")
            .env("KILN_LOG_FORMAT", "json")
            // As the chart and the manifests run it.
            .env("MALLOC_ARENA_MAX", "2")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kiln controller");
        let started = Instant::now();
        let pid = child.id();
        let log = Arc::new(Mutex::new(LogState::default()));
        let stderr = child.stderr.take().expect("the controller's stderr");
        let writer = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                read_log_line(&line, &writer);
            }
        });
        Self {
            child,
            pid,
            http: format!("http://127.0.0.1:{port}"),
            started,
            log,
        }
    }

    fn log(&self) -> std::sync::MutexGuard<'_, LogState> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `/readyz` answers 200 (the Build cache has synced); the time from spawn,
    /// or what the controller said when it exited first.
    async fn wait_ready(&mut self, http: &reqwest::Client) -> Result<Duration, String> {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the reader thread take in its last words.
                tokio::time::sleep(Duration::from_millis(200)).await;
                return Err(format!(
                    "the controller exited ({status}): {}",
                    self.log().warnings.join("\n")
                ));
            }
            let ready = http
                .get(format!("{}/readyz", self.http))
                .send()
                .await
                .is_ok_and(|response| response.status().is_success());
            if ready {
                return Ok(self.started.elapsed());
            }
            assert!(
                Instant::now() < deadline,
                "the controller never became ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn metrics(&self, http: &reqwest::Client) -> String {
        http.get(format!("{}/metrics", self.http))
            .send()
            .await
            .expect("scrape the controller's /metrics")
            .text()
            .await
            .expect("the controller's /metrics")
    }

    /// Peak and current resident memory, in bytes (VmHWM, VmRSS).
    fn memory(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|line| line.starts_with(name))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
                .map_or(0, |kib| kib * 1024)
        };
        (field("VmHWM:"), field("VmRSS:"))
    }

    /// Stops it as Kubernetes would (SIGTERM), waiting for it to exit.
    fn stop(mut self) {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "the controller exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the controller did not stop within 30 s of SIGTERM");
    }

    fn signal(&self, signal: libc::c_int) {
        if let Ok(pid) = libc::pid_t::try_from(self.pid) {
            // SAFETY: kill(2) on our own child's pid; it has no memory-safety preconditions.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(pid, signal)
            };
        }
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_log_line(line: &str, state: &Mutex<LogState>) {
    let Ok(entry) = serde_json::from_str::<Value>(line) else {
        // Not a log line: a panic's message, say.
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        if state.warnings.len() < 40 {
            state.warnings.push(line.to_owned());
        }
        return;
    };
    let fields = &entry["fields"];
    let message = fields["message"].as_str().unwrap_or_default();
    let level = entry["level"].as_str().unwrap_or_default();
    let now = Instant::now();
    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
    match message {
        "reconciled" | "reconcile failed" => {
            let build = fields["build"].as_str().unwrap_or_default().to_owned();
            if message == "reconcile failed" && state.failed.len() < 20 {
                let error = fields["error"].as_str().unwrap_or_default();
                state.failed.push(format!("{build}: {error}"));
            }
            state.reconciles += 1;
            state.first.get_or_insert(now);
            state.last = Some(now);
            state.reconciled.entry(build).or_insert(now);
        }
        _ if matches!(level, "WARN" | "ERROR") && state.warnings.len() < 20 => {
            state.warnings.push(format!("{level} {message} {fields}"));
        }
        _ => {}
    }
}

/// The controller's flags for this run: the production defaults but for the cache service
/// and token key (so that the template Build gets a token Secret), retention long enough
/// that nothing at rest expires, and whatever the environment asks for.
fn controller_flags(key_file: &Path) -> Vec<String> {
    let help = Launcher::Binary
        .command()
        .args(["controller", "--help"])
        .output()
        .expect("kiln controller --help");
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let mut flags = vec![
        format!("--cache-service={CACHE_SERVICE}"),
        format!("--cache-token-key-file={}", key_file.display()),
        "--succeeded-pod-ttl=24h".to_owned(),
        "--failed-pod-ttl=24h".to_owned(),
        "--instance=kiln-bench".to_owned(),
    ];
    for (var, flag) in [
        ("KILN_BENCH_CONCURRENCY", "--concurrency"),
        ("KILN_BENCH_KUBE_QPS", "--kube-qps"),
        ("KILN_BENCH_KUBE_BURST", "--kube-burst"),
    ] {
        let Ok(value) = std::env::var(var) else {
            continue;
        };
        if help.contains(&format!("{flag} ")) {
            flags.push(format!("{flag}={value}"));
        } else {
            println!("  {var} is set, but `kiln controller --help` lists no {flag}: not passed");
        }
    }
    flags
}

/// The admin kubeconfig with every user impersonating `user` in `system:masters`: allowed
/// everything, and told apart from this process's own writes in the audit log.
fn impersonating_kubeconfig(cp: &ControlPlane, user: &str, path: &Path) {
    let text = std::fs::read_to_string(cp.kubeconfig()).expect("the admin kubeconfig");
    let mut config: serde_yaml::Value = serde_yaml::from_str(&text).expect("kubeconfig YAML");
    for entry in config["users"].as_sequence_mut().expect("kubeconfig users") {
        let auth = entry["user"].as_mapping_mut().expect("a kubeconfig user");
        auth.insert("as".into(), user.into());
        auth.insert("as-groups".into(), vec!["system:masters"].into());
    }
    std::fs::write(path, serde_yaml::to_string(&config).unwrap()).unwrap();
}

// --- what the watches see ------------------------------------------------------------------

/// When this process's watches first saw each Kiln pod (by namespace and Build) and each
/// Build Succeeded.
#[derive(Default)]
struct Sightings {
    pods: HashMap<(String, String), Instant>,
    succeeded: HashMap<(String, String), Instant>,
    phases: HashMap<(String, String), Option<Phase>>,
}

fn watch_everything(client: &Client) -> (Arc<Mutex<Sightings>>, Vec<tokio::task::JoinHandle<()>>) {
    let seen = Arc::new(Mutex::new(Sightings::default()));
    let pods = watcher::watcher(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().labels(&managed_selector()),
    )
    .default_backoff();
    let writer = Arc::clone(&seen);
    let pod_task = tokio::spawn(async move {
        futures::pin_mut!(pods);
        while let Some(event) = pods.next().await {
            let (Ok(Event::Apply(pod)) | Ok(Event::InitApply(pod))) = event else {
                continue;
            };
            let build = pod.labels().get(BUILD).cloned().unwrap_or_default();
            let key = (pod.namespace().unwrap_or_default(), build);
            let mut seen = writer.lock().unwrap();
            seen.pods.entry(key).or_insert_with(Instant::now);
        }
    });
    let builds = watcher::watcher(
        Api::<Build>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff();
    let writer = Arc::clone(&seen);
    let build_task = tokio::spawn(async move {
        futures::pin_mut!(builds);
        while let Some(event) = builds.next().await {
            let (Ok(Event::Apply(build)) | Ok(Event::InitApply(build))) = event else {
                continue;
            };
            let key = (build.namespace().unwrap_or_default(), build.name_any());
            let phase = build.status.as_ref().and_then(|s| s.phase);
            let mut seen = writer.lock().unwrap();
            if phase == Some(Phase::Succeeded) {
                seen.succeeded
                    .entry(key.clone())
                    .or_insert_with(Instant::now);
            }
            seen.phases.insert(key, phase);
        }
    });
    (seen, vec![pod_task, build_task])
}

// --- the API server's view -----------------------------------------------------------------

/// The controller's audited writes in `events`, and the 429s anyone got.
struct Writes {
    by_kind: BTreeMap<String, usize>,
    refused: BTreeMap<String, usize>,
    too_many_requests: usize,
    by_user: BTreeMap<String, usize>,
}

fn writes(events: &[AuditEvent], namespaces: &BTreeSet<String>) -> Writes {
    let ours: Vec<AuditEvent> = events
        .iter()
        .filter(|e| e.user == CONTROLLER_USER && namespaces.contains(&e.namespace))
        .cloned()
        .collect();
    let refused: Vec<AuditEvent> = ours.iter().filter(|e| e.code >= 400).cloned().collect();
    let mut refused_by_kind = BTreeMap::new();
    for (kind, count) in scene::count_writes(&refused) {
        let codes: BTreeSet<u16> = refused
            .iter()
            .filter(|e| format!("{} {}", e.verb, scene::resource(e)) == kind)
            .map(|e| e.code)
            .collect();
        refused_by_kind.insert(format!("{kind} {codes:?}"), count);
    }
    let mut by_user = BTreeMap::new();
    for event in events {
        *by_user.entry(event.user.clone()).or_default() += 1;
    }
    Writes {
        by_kind: scene::count_writes(&ours),
        refused: refused_by_kind,
        too_many_requests: events.iter().filter(|e| e.code == 429).count(),
        by_user,
    }
}

/// Waits until the audit log has not grown for [`SETTLE`]; returns its events.
async fn settled_audit(cp: &ControlPlane) -> Vec<AuditEvent> {
    let mut events = cp.audit_events();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        tokio::time::sleep(SETTLE).await;
        let now = cp.audit_events();
        if now.len() == events.len() || Instant::now() > deadline {
            return now;
        }
        events = now;
    }
}

/// `apiserver_request_total` of the API server's /metrics: requests by
/// `VERB resource[/subresource]` and by HTTP code, everyone's.
#[derive(Default)]
struct ServerRequests {
    by_kind: BTreeMap<String, f64>,
    by_code: BTreeMap<String, f64>,
}

async fn server_requests(client: &Client) -> ServerRequests {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(request).await.unwrap_or_default();
    let mut requests = ServerRequests::default();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let Some((labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value: f64 = value.parse().unwrap_or(0.0);
        let labels = prometheus_labels(labels);
        let label = |name: &str| labels.get(name).cloned().unwrap_or_default();
        let resource = match label("subresource").as_str() {
            "" => label("resource"),
            sub => format!("{}/{sub}", label("resource")),
        };
        *requests
            .by_kind
            .entry(format!("{} {resource}", label("verb")))
            .or_default() += value;
        *requests.by_code.entry(label("code")).or_default() += value;
    }
    requests
}

/// The labels of one Prometheus sample line (`name{a="x",b="y"} value`).
fn prometheus_labels(sample: &str) -> BTreeMap<String, String> {
    let inner = sample
        .split_once('{')
        .and_then(|(_, rest)| rest.rsplit_once('}'))
        .map_or("", |(inner, _)| inner);
    inner
        .split("\",")
        .filter_map(|pair| pair.split_once("=\""))
        .map(|(k, v)| (k.to_owned(), v.trim_end_matches('"').to_owned()))
        .collect()
}

/// The value of the sample `name{labels}` (or `name`) in a metrics text.
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
}

impl ServerRequests {
    /// The counts to print: without WATCH, whose count is of watches that ended (mostly
    /// kube-controller-manager's informers renewing theirs), and without discovery.
    fn printable(&self) -> BTreeMap<String, String> {
        self.by_kind
            .iter()
            .filter(|(kind, _)| !kind.starts_with("WATCH ") && !kind.starts_with("GET /"))
            .map(|(kind, count)| (kind.clone(), format!("{count}")))
            .collect()
    }
}

fn delta(after: &ServerRequests, before: &ServerRequests) -> ServerRequests {
    let sub = |a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>| {
        a.iter()
            .map(|(k, v)| (k.clone(), v - b.get(k).copied().unwrap_or(0.0)))
            .filter(|(_, v)| *v > 0.0)
            .collect()
    };
    ServerRequests {
        by_kind: sub(&after.by_kind, &before.by_kind),
        by_code: sub(&after.by_code, &before.by_code),
    }
}

// --- printing ------------------------------------------------------------------------------

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted
        .get(sorted.len().saturating_sub(1) * p / 100)
        .copied()
        .unwrap_or_default()
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT MET" }
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn print_counts<T: std::fmt::Display>(title: &str, counts: &BTreeMap<String, T>) {
    println!("  {title}:");
    if counts.is_empty() {
        println!("    (none)");
    }
    for (kind, count) in counts {
        println!("    {count:>10}  {kind}");
    }
}

/// Prints the reconcile-duration histogram of a controller's /metrics, per bucket.
fn print_histogram(metrics: &str) {
    let prefix = "kiln_reconcile_duration_seconds_bucket{le=\"";
    let mut previous = 0.0;
    println!("  reconcile duration (the controller's /metrics), reconciles per bucket:");
    for line in metrics.lines().filter(|l| l.starts_with(prefix)) {
        let Some((le, count)) = line[prefix.len()..].split_once("\"} ") else {
            continue;
        };
        let count: f64 = count
            .split_whitespace()
            .next()
            .unwrap_or("0")
            .parse()
            .unwrap_or(0.0);
        if count > previous {
            println!("    ≤ {le:>10} s  {:>8}", count - previous);
        }
        previous = count;
    }
    let sum = sample(metrics, "kiln_reconcile_duration_seconds_sum").unwrap_or(0.0);
    let count = sample(metrics, "kiln_reconcile_duration_seconds_count").unwrap_or(0.0);
    if count > 0.0 {
        println!(
            "    {count} reconciles, mean {:.1} ms, {:.1} s in all",
            sum / count * 1000.0,
            sum
        );
    }
    for outcome in ["applied", "unchanged", "failed"] {
        let value = sample(
            metrics,
            &format!("kiln_reconciles_total{{outcome=\"{outcome}\"}}"),
        );
        println!("    outcome {outcome}: {}", value.unwrap_or(0.0));
    }
}

// --- creating many objects -----------------------------------------------------------------

/// Runs `make(i)` for every `i < count` with `creators` in flight at once; returns the time.
async fn concurrently<F, Fut>(count: usize, creators: usize, make: F) -> Duration
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let started = Instant::now();
    futures::stream::iter(0..count)
        .for_each_concurrent(creators, make)
        .await;
    started.elapsed()
}

/// A Build as the burst creates it: [`scene::build`] with no cache, so that it costs the
/// writes of a plain build (no token Secret).
fn burst_build(name: &str) -> Build {
    scene::build(name).cache(CacheMode::Off, CacheScope::Build)
}

/// A pod of the same size as nothing in particular: what the API server takes for one pod
/// create, for the baseline.
fn plain_pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "automountServiceAccountToken": false,
            "containers": [{ "name": "build", "image": "moby/buildkit:v0.26.1-rootless" }],
        },
    }))
    .unwrap()
}

/// Creates `count` Builds and then `count` pods in `namespace` without a controller, and
/// deletes them again: how fast this API server takes the same creates right now.
async fn baseline(admin: &Client, namespace: &str, sizes: &Sizes) -> (Duration, Duration) {
    let builds: Api<Build> = Api::namespaced(admin.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(admin.clone(), namespace);
    // The first create of a kind pays for the API server's lazy set-up: not timed.
    builds
        .create(&PostParams::default(), &burst_build("warm-up"))
        .await
        .expect("baseline: create a Build");
    pods.create(&PostParams::default(), &plain_pod("warm-up"))
        .await
        .expect("baseline: create a pod");
    let builds_took = concurrently(sizes.burst, sizes.creators, |i| {
        let builds = builds.clone();
        async move {
            builds
                .create(&PostParams::default(), &burst_build(&format!("base{i:05}")))
                .await
                .expect("baseline: create a Build");
        }
    })
    .await;
    let pods_took = concurrently(sizes.burst, sizes.creators, |i| {
        let pods = pods.clone();
        async move {
            pods.create(&PostParams::default(), &plain_pod(&format!("base{i:05}-1")))
                .await
                .expect("baseline: create a pod");
        }
    })
    .await;
    // Gone before the controller starts, so that it never sees them.
    builds
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .expect("baseline: delete the Builds");
    pods.delete_collection(
        &DeleteParams::background().grace_period(0),
        &ListParams::default(),
    )
    .await
    .expect("baseline: delete the pods");
    cluster::wait_until(
        "the baseline's objects to be gone",
        Duration::from_secs(120),
        || async {
            let b = builds
                .list_metadata(&ListParams::default().limit(1))
                .await
                .ok()?;
            let p = pods
                .list_metadata(&ListParams::default().limit(1))
                .await
                .ok()?;
            (b.items.is_empty() && p.items.is_empty()).then_some(())
        },
    )
    .await;
    (builds_took, pods_took)
}

// --- cloning the template --------------------------------------------------------------------

/// An object as read back, ready to be created elsewhere: server-set metadata and status
/// removed (status is written afterwards through its subresource).
fn creatable(object: &Value) -> Value {
    let mut object = object.clone();
    let meta = object["metadata"].as_object_mut().expect("metadata");
    for field in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "generation",
        "managedFields",
        "selfLink",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        meta.remove(field);
    }
    if let Some(object) = object.as_object_mut() {
        object.remove("status");
    }
    object
}

/// `object` (as JSON) with every `(from, to)` of `renames` replaced.
fn rewritten(object: &Value, renames: &[(&str, &str)]) -> Value {
    let mut text = object.to_string();
    for (from, to) in renames {
        text = text.replace(from, to);
    }
    serde_json::from_str(&text).expect("a rewritten object")
}

/// What the template Build left: the Build, and its pod, ConfigMaps and Secrets.
struct Template {
    namespace: String,
    build: Value,
    build_uid: String,
    pod: Value,
    pod_uid: String,
    pod_name: String,
    config_maps: Vec<Value>,
    secrets: Vec<Value>,
}

async fn read_template(admin: &Client, namespace: &str) -> Template {
    let build = Api::<Build>::namespaced(admin.clone(), namespace)
        .get(TEMPLATE)
        .await
        .expect("the template Build");
    let build_uid = build.uid().expect("the template's UID");
    let selector = ListParams::default().labels(&build_uid_selector(&build_uid));
    let pods = Api::<Pod>::namespaced(admin.clone(), namespace)
        .list(&selector)
        .await
        .expect("the template's pods")
        .items;
    assert_eq!(pods.len(), 1, "the template Build has one pod");
    let config_maps = Api::<ConfigMap>::namespaced(admin.clone(), namespace)
        .list(&selector)
        .await
        .expect("the template's ConfigMaps")
        .items;
    let secrets = Api::<Secret>::namespaced(admin.clone(), namespace)
        .list(&selector)
        .await
        .expect("the template's Secrets")
        .items;
    let mut pod = serde_json::to_value(&pods[0]).unwrap();
    // The API server gives a pod its service-account token volume; a clone gets its own.
    strip_token_volume(&mut pod);
    Template {
        namespace: namespace.to_owned(),
        build: serde_json::to_value(&build).unwrap(),
        build_uid,
        pod_uid: pods[0].uid().expect("the pod's UID"),
        pod_name: pods[0].name_any(),
        pod,
        config_maps: config_maps
            .iter()
            .map(|o| serde_json::to_value(o).unwrap())
            .collect(),
        secrets: secrets
            .iter()
            .map(|o| serde_json::to_value(o).unwrap())
            .collect(),
    }
}

fn strip_token_volume(pod: &mut Value) {
    let is_token = |name: &Value| {
        name.as_str()
            .is_some_and(|n| n.starts_with("kube-api-access-"))
    };
    if let Some(volumes) = pod["spec"]["volumes"].as_array_mut() {
        volumes.retain(|v| !is_token(&v["name"]));
    }
    if let Some(containers) = pod["spec"]["containers"].as_array_mut() {
        for container in containers {
            if let Some(mounts) = container["volumeMounts"].as_array_mut() {
                mounts.retain(|m| !is_token(&m["name"]));
            }
        }
    }
}

/// Makes clone `name` of the template in `namespace`: the Build, its ConfigMaps, Secrets
/// and pod, then the pod's and the Build's status, with names and UIDs rewritten.
async fn clone_template(admin: &Client, template: &Template, namespace: &str, name: &str) {
    let names = [(TEMPLATE, name), (template.namespace.as_str(), namespace)];
    let build: Build =
        serde_json::from_value(rewritten(&creatable(&template.build), &names)).unwrap();
    let builds: Api<Build> = Api::namespaced(admin.clone(), namespace);
    let created = builds
        .create(&PostParams::default(), &build)
        .await
        .unwrap_or_else(|err| panic!("cloning Build {namespace}/{name}: {err}"));
    let uid = created.uid().expect("a UID");
    let owned = [
        (TEMPLATE, name),
        (template.namespace.as_str(), namespace),
        (template.build_uid.as_str(), uid.as_str()),
    ];
    let config_maps: Api<ConfigMap> = Api::namespaced(admin.clone(), namespace);
    for object in &template.config_maps {
        let object: ConfigMap =
            serde_json::from_value(rewritten(&creatable(object), &owned)).unwrap();
        config_maps
            .create(&PostParams::default(), &object)
            .await
            .expect("clone a ConfigMap");
    }
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), namespace);
    for object in &template.secrets {
        let object: Secret = serde_json::from_value(rewritten(&creatable(object), &owned)).unwrap();
        secrets
            .create(&PostParams::default(), &object)
            .await
            .expect("clone a Secret");
    }
    let pods: Api<Pod> = Api::namespaced(admin.clone(), namespace);
    let pod: Pod = serde_json::from_value(rewritten(&creatable(&template.pod), &owned)).unwrap();
    let pod = pods
        .create(&PostParams::default(), &pod)
        .await
        .expect("clone the pod");
    let pod_uid = pod.uid().expect("the pod's UID");
    let with_pod = [
        (TEMPLATE, name),
        (template.namespace.as_str(), namespace),
        (template.build_uid.as_str(), uid.as_str()),
        (template.pod_uid.as_str(), pod_uid.as_str()),
    ];
    let pod_status = rewritten(&json!({ "status": template.pod["status"] }), &with_pod);
    pods.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&pod_status),
    )
    .await
    .expect("write the cloned pod's status");
    let build_status = rewritten(&json!({ "status": template.build["status"] }), &with_pod);
    builds
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&build_status))
        .await
        .expect("write the cloned Build's status");
}

// --- the run ---------------------------------------------------------------------------------

fn main() -> std::process::ExitCode {
    if std::env::var_os(AS_KILN).is_some() {
        kiln::tls::install_crypto_provider();
        return kiln::app::main();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(run());
    std::process::ExitCode::SUCCESS
}

/// Starts the controller with `launcher`, falling back to [`Launcher::ThisExecutable`]
/// (and saying so) when the `kiln` binary cannot pick a TLS provider; returns the process,
/// the time it took to become ready, and the launcher that worked.
async fn start_controller(
    launcher: &Launcher,
    kubeconfig: &Path,
    flags: &[String],
    http: &reqwest::Client,
) -> (ControllerProcess, Duration, Launcher) {
    let mut controller = ControllerProcess::start(launcher, kubeconfig, flags);
    match controller.wait_ready(http).await {
        Ok(took) => (controller, took, launcher.clone()),
        Err(why) if matches!(launcher, Launcher::Binary) && why.contains("CryptoProvider") => {
            println!(
                "  NOTE: the `kiln` binary built for benchmarks cannot start its controller (rustls finds two \
                 crypto providers and `kiln controller` installs none); running the same kiln::app::main from \
                 this executable with ring installed first"
            );
            let fallback = Launcher::ThisExecutable;
            let mut controller = ControllerProcess::start(&fallback, kubeconfig, flags);
            let took = controller
                .wait_ready(http)
                .await
                .unwrap_or_else(|why| panic!("{why}"));
            (controller, took, fallback)
        }
        Err(why) => panic!("{why}"),
    }
}

async fn run() {
    let sizes = Sizes::from_env();
    let full = common::full_run();
    let Some(cp) = ControlPlane::start_with_crds(envtest::repository_crds()).await else {
        // available_binary printed why to stderr; say it where the figures go, too.
        println!(
            "controller_scale: SKIPPED: no kube-apiserver (kiln-envtest) on this machine; \
             run scripts/install-test-deps.sh, or set {}=1 to make this a failure",
            envtest::ENV_REQUIRE
        );
        return;
    };
    let admin = cp.client();
    let http = reqwest::Client::new();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("controller.kubeconfig");
    impersonating_kubeconfig(&cp, CONTROLLER_USER, &kubeconfig);
    let key_file = dir.path().join("token.key");
    std::fs::write(&key_file, [7u8; 32]).unwrap();
    let flags = controller_flags(&key_file);

    println!(
        "controller_scale{}: burst {} Builds over {} namespaces ({} creators), at rest {} over {} namespaces",
        if full { "" } else { " [smoke run]" },
        sizes.burst,
        sizes.burst_namespaces,
        sizes.creators,
        sizes.at_rest,
        sizes.at_rest_namespaces
    );
    println!(
        "  control plane up in {:.1}s; load average {}; controller flags: {}",
        secs(cp.started_in()),
        load(),
        flags.join(" ")
    );

    // --- 1. baseline
    let base_ns = cluster::create_namespace(&admin, "kb-baseline").await;
    let (base_builds, base_pods) = baseline(&admin, &base_ns, &sizes).await;
    let base_total = base_builds + base_pods;
    let write_rate = (2 * sizes.burst) as f64 / secs(base_total);
    println!("\nbaseline (this process alone, no controller):");
    println!(
        "  {} Build creates {:.2}s, {} pod creates {:.2}s: {:.0} writes/s",
        sizes.burst,
        secs(base_builds),
        sizes.burst,
        secs(base_pods),
        write_rate
    );

    // --- 2. burst
    let mut burst_namespaces = Vec::new();
    let mut kubelets = Vec::new();
    let digest = Digest::of(b"controller scale");
    for _ in 0..sizes.burst_namespaces {
        let ns = cluster::create_namespace(&admin, "kb-burst").await;
        kubelets
            .push(TestKubelet::start(admin.clone(), &ns, move |_| Script::succeed(&digest)).await);
        burst_namespaces.push(ns);
    }
    let template_ns = cluster::create_namespace(&admin, "kb-template").await;
    kubelets.push(
        TestKubelet::start(admin.clone(), &template_ns, move |_| {
            Script::succeed(&digest)
        })
        .await,
    );
    let (seen, watches) = watch_everything(&admin);
    let (controller, ready_in, launcher) =
        start_controller(&Launcher::Binary, &kubeconfig, &flags, &http).await;
    println!(
        "\nburst: controller ready in {:.2}s (empty cluster)",
        secs(ready_in)
    );

    let audit_before = cp.audit_events().len();
    let server_before = server_requests(&admin).await;
    let cpu_before = common::cpu_time(controller.pid);
    let created: Arc<Mutex<HashMap<(String, String), Instant>>> = Arc::default();
    let started = Instant::now();
    let created_in = concurrently(sizes.burst, sizes.creators, |i| {
        let ns = burst_namespaces[i % burst_namespaces.len()].clone();
        let (admin, created) = (admin.clone(), Arc::clone(&created));
        async move {
            let name = format!("b{i:05}");
            Api::<Build>::namespaced(admin, &ns)
                .create(&PostParams::default(), &burst_build(&name))
                .await
                .unwrap_or_else(|err| panic!("creating Build {ns}/{name}: {err}"));
            created.lock().unwrap().insert((ns, name), Instant::now());
        }
    })
    .await;
    let keys: Vec<(String, String)> = created.lock().unwrap().keys().cloned().collect();
    let timeout = Duration::from_secs(120 + sizes.burst as u64 / 2);
    loop {
        let (pods, done) = {
            let seen = seen.lock().unwrap();
            let pods = keys.iter().filter(|k| seen.pods.contains_key(*k)).count();
            let done = keys
                .iter()
                .filter(|k| seen.succeeded.contains_key(*k))
                .count();
            (pods, done)
        };
        if done == keys.len() {
            break;
        }
        if started.elapsed() > timeout {
            let seen = seen.lock().unwrap();
            let mut phases: BTreeMap<String, usize> = BTreeMap::new();
            for key in &keys {
                let phase = seen.phases.get(key).copied().flatten();
                *phases.entry(format!("{phase:?}")).or_default() += 1;
            }
            panic!(
                "burst: after {timeout:?} only {done} of {} Builds Succeeded ({pods} pods seen); phases {phases:?}; \
                 controller log: failed {:?}, warnings {:?}; kubelets {:?}",
                keys.len(),
                controller.log().failed,
                controller.log().warnings,
                kubelets
                    .iter()
                    .flat_map(TestKubelet::errors)
                    .collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (pods_in, succeeded_in, mut latencies) = {
        let seen = seen.lock().unwrap();
        let created = created.lock().unwrap();
        let last_pod = keys
            .iter()
            .filter_map(|k| seen.pods.get(k))
            .max()
            .copied()
            .unwrap();
        let last_done = keys
            .iter()
            .filter_map(|k| seen.succeeded.get(k))
            .max()
            .copied()
            .unwrap();
        let latencies: Vec<Duration> = keys
            .iter()
            .map(|k| seen.pods[k].saturating_duration_since(created[k]))
            .collect();
        (last_pod - started, last_done - started, latencies)
    };
    latencies.sort();
    let burst_cpu = common::cpu_time(controller.pid) - cpu_before;
    let events = settled_audit(&cp).await;
    let burst_events = &events[audit_before..];
    let server = delta(&server_requests(&admin).await, &server_before);
    let namespaces: BTreeSet<String> = burst_namespaces.iter().cloned().collect();
    let burst_writes = writes(burst_events, &namespaces);
    // Deletes are the sweep's clean-up of finished attempts' ConfigMaps and Secrets, made
    // on its own schedule (every --sweep-interval): in the window or not by chance, so
    // they are counted apart from the writes that take a Build to Succeeded.
    let (deletes, to_success): (BTreeMap<String, usize>, BTreeMap<String, usize>) = burst_writes
        .by_kind
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .partition(|(kind, _)| kind.starts_with("delete "));
    let total_writes: usize = to_success.values().sum();
    let writes_per_build = total_writes as f64 / sizes.burst as f64;
    let metrics = controller.metrics(&http).await;
    let (burst_peak, _) = controller.memory();

    println!(
        "  {} Builds created in {:.2}s ({:.2}× the baseline's {:.2}s for as many Builds alone)",
        sizes.burst,
        secs(created_in),
        secs(created_in) / secs(base_builds),
        secs(base_builds)
    );
    println!(
        "  every pod exists after {:.2}s: {:.2}× the baseline's {:.2}s for creating the Builds and pods alone; target (for 1,000) ≤ 20 s: {}",
        secs(pods_in),
        secs(pods_in) / secs(base_total),
        secs(base_total),
        met(secs(pods_in) <= 20.0)
    );
    let everyones: usize = burst_writes.by_user.values().sum();
    let floor = everyones as f64 / write_rate;
    println!(
        "  every Build Succeeded after {:.2}s: {:.2}× the {:.2}s the {} writes of the burst (everyone's) take at the baseline's rate; target (for 1,000) ≤ 60 s: {}",
        secs(succeeded_in),
        secs(succeeded_in) / floor,
        floor,
        everyones,
        met(secs(succeeded_in) <= 60.0)
    );
    println!(
        "  Build create response → pod seen by a watch: p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        ms(percentile(&latencies, 50)),
        ms(percentile(&latencies, 90)),
        ms(percentile(&latencies, 99)),
        ms(latencies.last().copied().unwrap_or_default())
    );
    println!(
        "  controller: {:.1} s CPU over the burst, peak RSS {:.1} MiB",
        secs(burst_cpu),
        mib(burst_peak)
    );
    println!(
        "  HTTP 429: {} in the audit log (writes), {} in the API server's request counts (everything)",
        burst_writes.too_many_requests,
        server.by_code.get("429").copied().unwrap_or(0.0)
    );

    // --- 2b. writes per build
    println!(
        "\nwrites per successful build (the controller's, from the audit log, up to Succeeded): {writes_per_build:.2} ({total_writes} for {} Builds); target ≤ 6: {}",
        sizes.burst,
        met(writes_per_build <= 6.0)
    );
    let per_build = |counts: &BTreeMap<String, usize>| -> BTreeMap<String, String> {
        counts
            .iter()
            .map(|(k, v)| (k.clone(), format!("{:.2}", *v as f64 / sizes.burst as f64)))
            .collect()
    };
    print_counts("per build, by kind", &per_build(&to_success));
    print_counts(
        "and the sweep's clean-up so far (each ConfigMap and Secret is deleted by a later sweep), per build",
        &per_build(&deletes),
    );
    print_counts(
        "refused (code ≥ 400), by kind and codes",
        &burst_writes.refused,
    );
    print_counts(
        "writes during the burst by user (everyone)",
        &burst_writes.by_user,
    );
    let requests = server.printable();
    print_counts(
        "requests during the burst by verb and resource (everyone's, the API server's counts; reads are not audited)",
        &requests,
    );
    println!("\nwhere the time goes (after the burst):");
    print_histogram(&metrics);
    {
        let log = controller.log();
        if !log.failed.is_empty() || !log.warnings.is_empty() {
            println!(
                "  controller log: failed {:?}\n  warnings {:?}",
                log.failed, log.warnings
            );
        }
    }

    // --- 3. at rest: the template
    let template_audit = cp.audit_events().len();
    let template_build = scene::build(TEMPLATE)
        .inline("FROM busybox:1.36\nCOPY index.html /www/\n")
        .inline_file("index.html", "<h1>hello</h1>\n")
        .cache(CacheMode::Max, CacheScope::Build);
    Api::<Build>::namespaced(admin.clone(), &template_ns)
        .create(&PostParams::default(), &template_build)
        .await
        .expect("create the template Build");
    let key = (template_ns.clone(), TEMPLATE.to_owned());
    cluster::wait_until(
        "the template Build to succeed",
        Duration::from_secs(120),
        || {
            let done = seen.lock().unwrap().succeeded.contains_key(&key);
            async move { done.then_some(()) }
        },
    )
    .await;
    let events = settled_audit(&cp).await;
    let template_writes = writes(
        &events[template_audit..],
        &BTreeSet::from([template_ns.clone()]),
    );
    println!(
        "\nat rest: the template Build (inline source, cache token) took {} writes",
        template_writes.by_kind.values().sum::<usize>()
    );
    print_counts("by kind", &template_writes.by_kind);
    controller.stop();
    for task in &watches {
        task.abort();
    }
    drop(kubelets);

    let template = read_template(&admin, &template_ns).await;
    println!(
        "  template: Build, pod {}, {} ConfigMap(s), {} Secret(s); finalizers {:?}",
        template.pod_name,
        template.config_maps.len(),
        template.secrets.len(),
        template.build["metadata"]["finalizers"]
    );
    let mut rest_namespaces = Vec::new();
    for _ in 0..sizes.at_rest_namespaces {
        rest_namespaces.push(cluster::create_namespace(&admin, "kb-rest").await);
    }
    let objects_per_clone = 2 + template.config_maps.len() + template.secrets.len();
    let cloned_in = concurrently(sizes.at_rest, sizes.creators * 2, |i| {
        let ns = rest_namespaces[i % rest_namespaces.len()].clone();
        let (admin, template) = (admin.clone(), &template);
        async move {
            clone_template(&admin, template, &ns, &format!("r{i:05}")).await;
        }
    })
    .await;
    println!(
        "  cloned {} times over {} namespaces in {:.1}s ({} writes each: {:.0} writes/s)",
        sizes.at_rest,
        sizes.at_rest_namespaces,
        secs(cloned_in),
        objects_per_clone + 2,
        (sizes.at_rest * (objects_per_clone + 2)) as f64 / secs(cloned_in)
    );

    // What a fresh controller must read: listed once by this process, as the baseline.
    let listed = Instant::now();
    let all_builds = Api::<Build>::all(admin.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let managed = ListParams::default().labels(&managed_selector());
    let all_pods = Api::<Pod>::all(admin.clone())
        .list(&managed)
        .await
        .unwrap()
        .items;
    let all_config_maps = Api::<ConfigMap>::all(admin.clone())
        .list(&managed)
        .await
        .unwrap()
        .items;
    let list_took = listed.elapsed();
    let cached_bytes: usize = serde_json::to_vec(&all_builds).unwrap().len()
        + serde_json::to_vec(&all_pods).unwrap().len()
        + serde_json::to_vec(&all_config_maps).unwrap().len();
    let expected: BTreeSet<String> = all_builds
        .iter()
        .map(|b| {
            ObjectRef::<Build>::new(&b.name_any())
                .within(&b.namespace().unwrap_or_default())
                .to_string()
        })
        .collect();
    let unfinished = all_builds
        .iter()
        .filter(|b| b.status.as_ref().and_then(|s| s.phase) != Some(Phase::Succeeded))
        .count();
    assert_eq!(unfinished, 0, "every Build at rest has Succeeded");
    println!(
        "  {} Builds at rest ({} cloned, {} from the burst, the template), {} pods, {} ConfigMaps: listed once by this process in {:.2}s, {:.1} MiB of JSON",
        all_builds.len(),
        sizes.at_rest,
        sizes.burst,
        all_pods.len(),
        all_config_maps.len(),
        secs(list_took),
        mib(cached_bytes as u64)
    );

    // --- 3b. fresh starts: the first catches up with what the stopped controller left
    // (its sweep deletes the ConfigMaps and Secrets of finished attempts); the second finds
    // every Build needing nothing.
    let world = World {
        cp: &cp,
        admin: &admin,
        http: &http,
        launcher: &launcher,
        kubeconfig: &kubeconfig,
        flags: &flags,
        expected: &expected,
        list_took,
        cached_bytes,
        burst_namespaces: &namespaces,
    };
    let catch_up = fresh_start(&world, "fresh start over what the stopped controller left").await;
    let settled = fresh_start(&world, "fresh start again, every Build needing nothing").await;

    println!("\nload average at the end: {}", load());
    println!(
        "controller_scale: pods_s={:.2} succeeded_s={:.2} create_to_pod_p99_ms={:.0} writes_per_build={:.2} startup_ready_s={:.2} startup_writes={} rss_mib={:.1}",
        secs(pods_in),
        secs(succeeded_in),
        ms(percentile(&latencies, 99)),
        writes_per_build,
        secs(settled.first_pass_in),
        settled.writes,
        mib(burst_peak.max(catch_up.peak).max(settled.peak))
    );
}

/// What a fresh start needs to know of the run.
struct World<'a> {
    cp: &'a ControlPlane,
    admin: &'a Client,
    http: &'a reqwest::Client,
    launcher: &'a Launcher,
    kubeconfig: &'a Path,
    flags: &'a [String],
    /// Every Build, as the controller names it in its log.
    expected: &'a BTreeSet<String>,
    /// How long this process took to list the Builds, pods and ConfigMaps once.
    list_took: Duration,
    /// Their size as JSON.
    cached_bytes: usize,
    burst_namespaces: &'a BTreeSet<String>,
}

/// The figures of one fresh start.
struct StartFigures {
    first_pass_in: Duration,
    writes: usize,
    peak: u64,
}

/// Starts a controller over every finished Build, waits for its first pass over all of them
/// and its start-up sweep, prints what it took, and stops it.
async fn fresh_start(world: &World<'_>, title: &str) -> StartFigures {
    let World {
        cp,
        admin,
        http,
        launcher,
        kubeconfig,
        flags,
        expected,
        list_took,
        cached_bytes,
        burst_namespaces,
    } = world;
    let audit_before = cp.audit_events().len();
    let server_before = server_requests(admin).await;
    let (controller, synced_in, _) = start_controller(launcher, kubeconfig, flags, http).await;
    let pass_timeout = Duration::from_secs(120 + expected.len() as u64 / 20);
    let first_pass_in = loop {
        let (done, last) = {
            let log = controller.log();
            let done = expected
                .iter()
                .filter(|b| log.reconciled.contains_key(*b))
                .count();
            (done, log.last)
        };
        if done == expected.len() {
            let log = controller.log();
            let last = expected
                .iter()
                .filter_map(|b| log.reconciled.get(b))
                .max()
                .copied()
                .unwrap();
            break last - controller.started;
        }
        if controller.started.elapsed() > pass_timeout {
            let log = controller.log();
            let missing: Vec<&String> = expected
                .iter()
                .filter(|b| !log.reconciled.contains_key(*b))
                .take(10)
                .collect();
            panic!(
                "at rest: after {pass_timeout:?} only {done} of {} Builds were reconciled (last at {:?}); e.g. missing {missing:?}; failed {:?}; warnings {:?}",
                expected.len(),
                last.map(|l| l - controller.started),
                log.failed,
                log.warnings
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (first_reconcile, reconciles_in_pass) = {
        let log = controller.log();
        (log.first.unwrap() - controller.started, log.reconciles)
    };
    // The sweep runs at start-up too: its writes (if any) belong to start-up.
    let sweep_deadline = controller.started + pass_timeout;
    let mut swept_in = None;
    while Instant::now() < sweep_deadline {
        let metrics = controller.metrics(http).await;
        if sample(&metrics, "kiln_sweeps_total{sweep=\"objects\"}").unwrap_or(0.0) >= 1.0 {
            swept_in = Some(controller.started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cpu = common::cpu_time(controller.pid);
    let events = settled_audit(cp).await;
    let startup_events: Vec<AuditEvent> = events[audit_before..]
        .iter()
        .filter(|e| e.user == CONTROLLER_USER)
        .cloned()
        .collect();
    let startup_writes = scene::count_writes(&startup_events);
    let total: usize = startup_writes.values().sum();
    let of_burst = startup_events
        .iter()
        .filter(|e| burst_namespaces.contains(&e.namespace))
        .count();
    let server = delta(&server_requests(admin).await, &server_before);
    let metrics = controller.metrics(http).await;
    let (peak, resident) = controller.memory();
    let (reconciled, failed) = {
        let log = controller.log();
        (log.reconciled.len(), log.failed.clone())
    };

    println!("\n{title} ({} finished Builds):", expected.len());
    println!(
        "  ready (Build cache synced) after {:.2}s; first reconcile at {:.2}s; every Build reconciled after {:.2}s: {:.2}× the {:.2}s this process takes to list them once",
        secs(synced_in),
        secs(first_reconcile),
        secs(first_pass_in),
        secs(first_pass_in) / secs(*list_took),
        secs(*list_took)
    );
    let pass = first_pass_in.saturating_sub(first_reconcile);
    println!(
        "  first pass: {} reconciles ({} distinct Builds) in {:.2}s: {:.0} Builds/s",
        reconciles_in_pass,
        reconciled,
        secs(pass),
        expected.len() as f64 / secs(pass).max(0.001)
    );
    println!(
        "  start-up sweep done after {}",
        swept_in.map_or(format!("(not within {pass_timeout:?})"), |d| format!(
            "{:.2}s",
            secs(d)
        ))
    );
    println!(
        "  controller: {:.1} s CPU, peak RSS {:.1} MiB (now {:.1} MiB; the listed objects are {:.1} MiB of JSON); target ≤ 200 MiB: {}",
        secs(cpu),
        mib(peak),
        mib(resident),
        mib(*cached_bytes as u64),
        met(mib(peak) <= 200.0)
    );
    println!(
        "  writes at start-up: {total} ({of_burst} in the burst's namespaces); target 0: {}",
        met(total == 0)
    );
    print_counts("by kind", &startup_writes);
    if !startup_events.is_empty() {
        println!("  the first of them:");
        for event in startup_events.iter().take(5) {
            println!(
                "    {} {} {}/{} → {}",
                event.verb,
                scene::resource(event),
                event.namespace,
                event.name,
                event.code
            );
        }
    }
    let requests = server.printable();
    print_counts(
        "requests during start-up by verb and resource (everyone's, the API server's counts)",
        &requests,
    );
    print_histogram(&metrics);
    if !failed.is_empty() {
        println!("  failed reconciles: {failed:?}");
    }
    controller.stop();
    // Correct before fast: a benchmark of a controller that drops Builds measures nothing.
    assert!(
        failed.is_empty(),
        "reconciles failed at start-up: {failed:?}"
    );
    StartFigures {
        first_pass_in,
        writes: total,
        peak,
    }
}
