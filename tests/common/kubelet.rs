//! The test kubelet: TEST CODE ONLY, never part of the product. Does I/O (watches pods
//! and writes their status through a real API server).
//!
//! No node or container runtime runs in the tests, so this task plays one, in the spirit
//! of kwok: it registers a fake Ready [`NODE_NAME`], watches the pods labelled
//! `app.kubernetes.io/managed-by=kiln` in one namespace, binds each to that node through
//! the `pods/binding` subresource (as the scheduler would), and moves it through
//! Pending → Running → Succeeded or Failed by writing the `pods/status` subresource, as a
//! per-pod [`Script`] says:
//!
//! - success: exit code 0 with BuildKit's metadata JSON
//!   (`{"containerimage.digest":"sha256:…"}`) as the container's termination message;
//! - failure: an exit code and a termination message; `OOMKilled`; or a pod-level
//!   `Evicted`;
//! - optionally held Running until the test opens a [`Gate`];
//! - `activeDeadlineSeconds` is enforced as a kubelet does: a pod running past it fails
//!   with `DeadlineExceeded`;
//! - a deleted pod is "killed" (terminal status, exit code 143) and removed with a zero
//!   grace period, as a kubelet confirms a graceful deletion.
//!
//! ```ignore
//! let kubelet = TestKubelet::start(client.clone(), &ns, |pod| match pod_name(pod) {
//!     name if name.ends_with("-1") => Script::fail(2, "make: *** [all] Error 2"),
//!     _ => Script::succeed(&Digest::of(b"image")),
//! })
//! .await;
//! // ... create pods; the kubelet drives them ...
//! assert_eq!(kubelet.errors(), Vec::<String>::new());
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    Binding, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, Node, ObjectReference, Pod, PodCondition, PodIP,
    PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kiln::digest::Digest;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The fake node every pod is bound to.
pub const NODE_NAME: &str = "kiln-test-node";
/// The label selector of the pods the test kubelet drives.
pub const SELECTOR: &str = "app.kubernetes.io/managed-by=kiln";
/// The node's address: TEST-NET-1, documentation only, never routed.
const NODE_IP: &str = "192.0.2.10";

/// The termination message BuildKit's metadata file gives for a pushed image.
pub fn buildkit_metadata(digest: &Digest) -> String {
    serde_json::json!({ "containerimage.digest": digest.to_string() }).to_string()
}

/// How a pod's build ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Exit code 0, reason `Completed`, with `message` as the termination message.
    Succeeded {
        /// The termination message (BuildKit's metadata JSON, or anything a test needs).
        message: String,
    },
    /// A non-zero exit code, reason `Error`, with `message` as the termination message.
    Failed {
        /// The container's exit code.
        exit_code: i32,
        /// The termination message.
        message: String,
    },
    /// Killed by the kernel's OOM killer: exit code 137, reason `OOMKilled`.
    OomKilled,
    /// Evicted by the node: pod-level `status.reason: Evicted` with `message`, the
    /// `DisruptionTarget` condition, containers killed (exit code 137).
    Evicted {
        /// The pod-level message.
        message: String,
    },
    /// Ran past `activeDeadlineSeconds`: pod-level `status.reason: DeadlineExceeded`.
    DeadlineExceeded,
}

/// A gate that holds pods Running until the test releases it. Clones share the gate.
#[derive(Clone, Debug)]
pub struct Gate(Arc<watch::Sender<bool>>);

impl Gate {
    /// A closed gate.
    pub fn new() -> Self {
        Self(Arc::new(watch::channel(false).0))
    }

    /// Opens the gate: every pod held by it (now or later) goes on to its outcome.
    pub fn release(&self) {
        self.0.send_replace(true);
    }

    async fn opened(&self) {
        let mut released = self.0.subscribe();
        // The sender lives in self, so wait_for cannot fail while we wait.
        let _ = released.wait_for(|open| *open).await;
    }
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

/// What the test kubelet does with one pod.
#[derive(Clone, Debug)]
pub struct Script {
    /// How long the pod stays Pending (bound, containers `ContainerCreating`).
    pub pending_for: Duration,
    /// How long it runs before its outcome (after the gate opens, when there is one).
    pub running_for: Duration,
    /// Holds the pod Running until released.
    pub hold: Option<Gate>,
    /// How it ends.
    pub outcome: Outcome,
}

impl Script {
    fn ending(outcome: Outcome) -> Self {
        Self {
            pending_for: Duration::ZERO,
            running_for: Duration::ZERO,
            hold: None,
            outcome,
        }
    }

    /// Succeeds, reporting `digest` the way BuildKit does.
    pub fn succeed(digest: &Digest) -> Self {
        Self::succeed_with_message(buildkit_metadata(digest))
    }

    /// Succeeds with an arbitrary termination message (e.g. malformed metadata).
    pub fn succeed_with_message(message: impl Into<String>) -> Self {
        Self::ending(Outcome::Succeeded {
            message: message.into(),
        })
    }

    /// Fails with `exit_code` and `message`.
    pub fn fail(exit_code: i32, message: impl Into<String>) -> Self {
        Self::ending(Outcome::Failed {
            exit_code,
            message: message.into(),
        })
    }

    /// Is OOM-killed.
    pub fn oom_killed() -> Self {
        Self::ending(Outcome::OomKilled)
    }

    /// Is evicted for memory pressure.
    pub fn evicted() -> Self {
        Self::ending(Outcome::Evicted {
            message: "The node was low on resource: memory. Threshold quantity: 100Mi, \
                      available: 42Mi."
                .to_owned(),
        })
    }

    /// Runs until `activeDeadlineSeconds` fails it (forever, without one).
    pub fn run_until_deadline() -> Self {
        Self::ending(Outcome::DeadlineExceeded).hold_until(&Gate::new())
    }

    /// Stays Pending for `duration` first.
    pub fn pending_for(mut self, duration: Duration) -> Self {
        self.pending_for = duration;
        self
    }

    /// Runs for `duration` before the outcome.
    pub fn running_for(mut self, duration: Duration) -> Self {
        self.running_for = duration;
        self
    }

    /// Stays Running until `gate` is released.
    pub fn hold_until(mut self, gate: &Gate) -> Self {
        self.hold = Some(gate.clone());
        self
    }
}

/// What the kubelet did, shared with its handle.
#[derive(Default)]
struct Journal {
    /// Pods it started driving, in order.
    pods: Vec<String>,
    /// Unexpected API errors.
    errors: Vec<String>,
}

/// A running test kubelet for one namespace; stops (with every pod it drives) on drop.
pub struct TestKubelet {
    task: tokio::task::JoinHandle<()>,
    journal: Arc<Mutex<Journal>>,
}

impl TestKubelet {
    /// Registers the fake node (once per cluster) and starts driving the labelled pods of
    /// `namespace`, each by the script `script` chooses for it when it first appears.
    pub async fn start<F>(client: Client, namespace: &str, script: F) -> Self
    where
        F: Fn(&Pod) -> Script + Send + Sync + 'static,
    {
        register_node(&client).await;
        let journal = Arc::new(Mutex::new(Journal::default()));
        let pods = Api::<Pod>::namespaced(client, namespace);
        let task = tokio::spawn(run(pods, Arc::new(script), Arc::clone(&journal)));
        Self { task, journal }
    }

    /// The unexpected API errors met so far (a test asserts there are none).
    pub fn errors(&self) -> Vec<String> {
        self.journal().errors.clone()
    }

    /// The pods it has started driving, in order.
    pub fn pods(&self) -> Vec<String> {
        self.journal().pods.clone()
    }

    fn journal(&self) -> std::sync::MutexGuard<'_, Journal> {
        self.journal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for TestKubelet {
    fn drop(&mut self) {
        // Dropping the task's JoinSet aborts every pod task with it.
        self.task.abort();
    }
}

fn record_error(journal: &Mutex<Journal>, error: String) {
    journal
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .errors
        .push(error);
}

async fn run<F>(pods: Api<Pod>, script: Arc<F>, journal: Arc<Mutex<Journal>>)
where
    F: Fn(&Pod) -> Script + Send + Sync + 'static,
{
    let mut tasks = JoinSet::new();
    // Keyed by UID: a pod re-created under the same name is a new pod.
    let mut driving: BTreeMap<String, tokio::task::AbortHandle> = BTreeMap::new();
    let mut terminating: BTreeSet<String> = BTreeSet::new();
    let events =
        watcher(pods.clone(), watcher::Config::default().labels(SELECTOR)).default_backoff();
    futures::pin_mut!(events);
    while let Some(event) = events.next().await {
        while tasks.try_join_next().is_some() {}
        let pod = match event {
            Ok(Event::Apply(pod) | Event::InitApply(pod)) => pod,
            Ok(Event::Delete(pod)) => {
                if let Some(task) = driving.remove(&pod.uid().unwrap_or_default()) {
                    task.abort();
                }
                continue;
            }
            Ok(Event::Init | Event::InitDone) => continue,
            Err(err) => {
                // The watcher retries with backoff; a test seeing this knows why it stalled.
                record_error(&journal, format!("watching pods: {err}"));
                continue;
            }
        };
        let uid = pod.uid().unwrap_or_default();
        let node = pod.spec.as_ref().and_then(|spec| spec.node_name.as_deref());
        if node.is_some_and(|node| node != NODE_NAME) {
            continue; // Another node's pod.
        }
        if pod.metadata.deletion_timestamp.is_some() {
            if node.is_some() && terminating.insert(uid.clone()) {
                if let Some(task) = driving.remove(&uid) {
                    task.abort();
                }
                let (pods, journal) = (pods.clone(), Arc::clone(&journal));
                tasks.spawn(async move {
                    if let Err(err) = kill(&pods, &pod).await {
                        record_error(&journal, format!("killing pod {}: {err}", pod.name_any()));
                    }
                });
            }
            continue;
        }
        if driving.contains_key(&uid) || terminating.contains(&uid) || is_terminal(&pod) {
            continue;
        }
        let chosen = script(&pod);
        journal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pods
            .push(pod.name_any());
        let (pods, journal) = (pods.clone(), Arc::clone(&journal));
        let task = tasks.spawn(async move {
            match drive(&pods, &pod, &chosen).await {
                Ok(()) => {}
                // Deleted (or replaced) while we drove it: a kubelet sees this all the time.
                Err(kube::Error::Api(status)) if is_gone(&status) => {}
                Err(err) => {
                    record_error(&journal, format!("driving pod {}: {err}", pod.name_any()))
                }
            }
        });
        driving.insert(uid, task);
    }
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(pod_phase(pod), "Succeeded" | "Failed")
}

/// The pod's phase, `""` when it has none yet.
pub fn pod_phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|status| status.phase.as_deref())
        .unwrap_or("")
}

/// The terminated state of the pod's first container, once it has one.
pub fn terminated(pod: &Pod) -> Option<&ContainerStateTerminated> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()?
        .terminated
        .as_ref()
}

/// Plays one pod's script: bind, Pending, Running, (held,) terminal.
async fn drive(pods: &Api<Pod>, pod: &Pod, script: &Script) -> Result<(), kube::Error> {
    if pod
        .spec
        .as_ref()
        .and_then(|spec| spec.node_name.as_ref())
        .is_none()
    {
        bind(pods, pod).await?;
    }
    let started = now();
    // activeDeadlineSeconds counts from the pod's start time, as the kubelet counts it.
    let deadline = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.active_deadline_seconds)
        .and_then(|seconds| u64::try_from(seconds).ok())
        .map(|seconds| tokio::time::Instant::now() + Duration::from_secs(seconds));
    write_status(
        pods,
        pod,
        status(pod, &Stage::Pending { started: &started }),
    )
    .await?;
    tokio::time::sleep(script.pending_for).await;

    let running_since = now();
    let ip = pod_ip();
    let running = Stage::Running {
        started: &started,
        since: &running_since,
        ip: &ip,
    };
    write_status(pods, pod, status(pod, &running)).await?;

    let finish = async {
        if let Some(gate) = &script.hold {
            gate.opened().await;
        }
        tokio::time::sleep(script.running_for).await;
        script.outcome.clone()
    };
    let outcome = match deadline {
        Some(deadline) => tokio::select! {
            outcome = finish => outcome,
            () = tokio::time::sleep_until(deadline) => Outcome::DeadlineExceeded,
        },
        None => finish.await,
    };
    let ended = Stage::Ended {
        started: &started,
        since: &running_since,
        ip: &ip,
        outcome: &outcome,
    };
    write_status(pods, pod, status(pod, &ended)).await
}

/// Binds the pod to the fake node, as the scheduler does (which also sets the
/// `PodScheduled` condition). The UID makes the API server refuse (409) to bind a pod
/// re-created under the same name.
async fn bind(pods: &Api<Pod>, pod: &Pod) -> Result<(), kube::Error> {
    let name = pod.name_any();
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            uid: pod.uid(),
            ..ObjectMeta::default()
        },
        target: ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Node".to_owned()),
            name: Some(NODE_NAME.to_owned()),
            ..ObjectReference::default()
        },
    };
    pods.create_subresource::<_, serde_json::Value>(
        "binding",
        &name,
        &PostParams::default(),
        &binding,
    )
    .await
    .map(drop)
}

/// Confirms a graceful deletion as a kubelet does: the containers are "killed" (SIGTERM,
/// exit code 143), the pod is given a terminal status, then deleted with no grace period.
async fn kill(pods: &Api<Pod>, pod: &Pod) -> Result<(), kube::Error> {
    let name = pod.name_any();
    if !is_terminal(pod) {
        let killed = Outcome::Failed {
            exit_code: 143,
            message: String::new(),
        };
        let started = pod
            .status
            .as_ref()
            .and_then(|status| status.start_time.clone())
            .unwrap_or_else(now);
        let ip = pod
            .status
            .as_ref()
            .and_then(|status| status.pod_ip.clone())
            .unwrap_or_else(pod_ip);
        let ended = Stage::Ended {
            started: &started,
            since: &started,
            ip: &ip,
            outcome: &killed,
        };
        match write_status(pods, pod, status(pod, &ended)).await {
            Err(kube::Error::Api(status)) if is_gone(&status) => return Ok(()),
            other => other?,
        }
    }
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match pods.delete(&name, &params).await {
        Ok(_) => Ok(()),
        // Gone already, or re-created under the same name (a new UID): not ours to delete.
        Err(kube::Error::Api(status)) if is_gone(&status) => Ok(()),
        Err(err) => Err(err),
    }
}

/// Writes `status` to the pods/status subresource of this very pod: the UID in the patch
/// makes the API server refuse it (422 on `metadata.uid`) when the name now belongs to a
/// re-created pod, as the kubelet's own status patches do.
async fn write_status(pods: &Api<Pod>, pod: &Pod, status: PodStatus) -> Result<(), kube::Error> {
    let patch = serde_json::json!({
        "metadata": { "uid": pod.metadata.uid },
        "status": status,
    });
    pods.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map(drop)
}

/// The pod we were driving is gone (404) or its name now belongs to another pod (the UID
/// check of [`write_status`], or a UID precondition of a delete).
fn is_gone(status: &kube::core::Status) -> bool {
    let uid_mismatch = status.code == 422
        && status.details.as_ref().is_some_and(|details| {
            details
                .causes
                .iter()
                .any(|cause| cause.field == "metadata.uid")
        });
    status.code == 404 || status.code == 409 || uid_mismatch
}

fn now() -> Time {
    Time(Timestamp::now())
}

/// A distinct pod IP from TEST-NET-2 (documentation only, never routed).
fn pod_ip() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "198.51.100.{}",
        NEXT.fetch_add(1, Ordering::Relaxed) % 250 + 2
    )
}

/// Where a pod is in its script.
enum Stage<'a> {
    Pending {
        started: &'a Time,
    },
    Running {
        started: &'a Time,
        since: &'a Time,
        ip: &'a str,
    },
    Ended {
        started: &'a Time,
        since: &'a Time,
        ip: &'a str,
        outcome: &'a Outcome,
    },
}

/// The status a kubelet would report for `pod` at `stage` (pure).
fn status(pod: &Pod, stage: &Stage<'_>) -> PodStatus {
    let spec = pod.spec.clone().unwrap_or_default();
    let condition = |kind: &str, ok: bool, reason: Option<&str>| PodCondition {
        type_: kind.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.map(str::to_owned),
        last_transition_time: Some(now()),
        ..PodCondition::default()
    };
    let container = |name: &str, image: &str, state: ContainerState, ready: bool| ContainerStatus {
        name: name.to_owned(),
        image: image.to_owned(),
        image_id: String::new(),
        ready,
        started: Some(ready),
        restart_count: 0,
        state: Some(state),
        ..ContainerStatus::default()
    };
    let terminated =
        |exit_code: i32, reason: &str, message: Option<&str>, started: &Time| ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code,
                reason: Some(reason.to_owned()),
                message: message.map(str::to_owned),
                started_at: Some(started.clone()),
                finished_at: Some(now()),
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        };
    let init_statuses = |started: &Time| {
        spec.init_containers.as_ref().map(|inits| {
            inits
                .iter()
                .map(|init| {
                    let image = init.image.clone().unwrap_or_default();
                    container(
                        &init.name,
                        &image,
                        terminated(0, "Completed", None, started),
                        false,
                    )
                })
                .collect::<Vec<_>>()
        })
    };

    let mut status = PodStatus {
        host_ip: Some(NODE_IP.to_owned()),
        qos_class: pod
            .status
            .as_ref()
            .and_then(|status| status.qos_class.clone()),
        ..PodStatus::default()
    };
    match stage {
        Stage::Pending { started } => {
            status.phase = Some("Pending".to_owned());
            status.start_time = Some((*started).clone());
            status.conditions = Some(vec![
                condition("PodReadyToStartContainers", false, None),
                condition("Initialized", true, None),
                condition("Ready", false, Some("ContainersNotReady")),
                condition("ContainersReady", false, Some("ContainersNotReady")),
                condition("PodScheduled", true, None),
            ]);
            let waiting = ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some("ContainerCreating".to_owned()),
                    message: None,
                }),
                ..ContainerState::default()
            };
            status.container_statuses = Some(
                spec.containers
                    .iter()
                    .map(|c| {
                        container(
                            &c.name,
                            c.image.as_deref().unwrap_or(""),
                            waiting.clone(),
                            false,
                        )
                    })
                    .collect(),
            );
        }
        Stage::Running { started, since, ip } => {
            status.phase = Some("Running".to_owned());
            status.start_time = Some((*started).clone());
            status.pod_ip = Some((*ip).to_owned());
            status.pod_ips = Some(vec![PodIP {
                ip: (*ip).to_owned(),
            }]);
            status.conditions = Some(vec![
                condition("PodReadyToStartContainers", true, None),
                condition("Initialized", true, None),
                condition("Ready", true, None),
                condition("ContainersReady", true, None),
                condition("PodScheduled", true, None),
            ]);
            status.init_container_statuses = init_statuses(started);
            let running = ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some((*since).clone()),
                }),
                ..ContainerState::default()
            };
            status.container_statuses = Some(
                spec.containers
                    .iter()
                    .map(|c| {
                        container(
                            &c.name,
                            c.image.as_deref().unwrap_or(""),
                            running.clone(),
                            true,
                        )
                    })
                    .collect(),
            );
        }
        Stage::Ended {
            started,
            since,
            ip,
            outcome,
        } => {
            status.start_time = Some((*started).clone());
            status.pod_ip = Some((*ip).to_owned());
            status.pod_ips = Some(vec![PodIP {
                ip: (*ip).to_owned(),
            }]);
            status.init_container_statuses = init_statuses(started);
            // The outcome is the first container's; any others (sidecars) end alongside.
            let (phase, first, others) = match outcome {
                Outcome::Succeeded { message } => (
                    "Succeeded",
                    terminated(0, "Completed", Some(message), since),
                    terminated(0, "Completed", None, since),
                ),
                Outcome::Failed { exit_code, message } => (
                    "Failed",
                    terminated(
                        *exit_code,
                        "Error",
                        Some(message.as_str()).filter(|m| !m.is_empty()),
                        since,
                    ),
                    terminated(0, "Completed", None, since),
                ),
                Outcome::OomKilled => (
                    "Failed",
                    terminated(137, "OOMKilled", None, since),
                    terminated(0, "Completed", None, since),
                ),
                Outcome::Evicted { message } => {
                    status.reason = Some("Evicted".to_owned());
                    status.message = Some(message.clone());
                    (
                        "Failed",
                        terminated(137, "Error", None, since),
                        terminated(137, "Error", None, since),
                    )
                }
                Outcome::DeadlineExceeded => {
                    status.reason = Some("DeadlineExceeded".to_owned());
                    status.message = Some(
                        "Pod was active on the node longer than the specified deadline".to_owned(),
                    );
                    (
                        "Failed",
                        terminated(137, "Error", None, since),
                        terminated(137, "Error", None, since),
                    )
                }
            };
            status.phase = Some(phase.to_owned());
            let mut conditions = vec![
                condition("PodReadyToStartContainers", false, None),
                condition("Initialized", true, None),
                condition("Ready", false, Some("PodCompleted")),
                condition("ContainersReady", false, Some("PodCompleted")),
                condition("PodScheduled", true, None),
            ];
            if matches!(outcome, Outcome::Evicted { .. }) {
                let mut disruption =
                    condition("DisruptionTarget", true, Some("TerminationByKubelet"));
                disruption.message = status.message.clone();
                conditions.push(disruption);
            }
            status.conditions = Some(conditions);
            status.container_statuses = Some(
                spec.containers
                    .iter()
                    .enumerate()
                    .map(|(index, c)| {
                        let state = if index == 0 {
                            first.clone()
                        } else {
                            others.clone()
                        };
                        container(&c.name, c.image.as_deref().unwrap_or(""), state, false)
                    })
                    .collect(),
            );
        }
    }
    status
}

/// Registers [`NODE_NAME`] as a Ready, untainted node (idempotent: every kubelet of the
/// test binary shares it). Without the node lifecycle controller nothing marks it
/// NotReady, so no heartbeat is needed.
async fn register_node(client: &Client) {
    let nodes = Api::<Node>::all(client.clone());
    let node: Node = serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": NODE_NAME,
            "labels": {
                "kubernetes.io/hostname": NODE_NAME,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kiln.dev/test-node": "true",
            },
        },
    }))
    .expect("a Node");
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => return,
        Err(err) => panic!("registering the test node {NODE_NAME}: {err}"),
    }
    // Admission taints a new node not-ready; a kubelet's node lifecycle would lift it.
    let untaint = serde_json::json!({ "spec": { "taints": null } });
    nodes
        .patch(NODE_NAME, &PatchParams::default(), &Patch::Merge(&untaint))
        .await
        .unwrap_or_else(|err| panic!("untainting the test node {NODE_NAME}: {err}"));
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
            { "type": "Hostname", "address": NODE_NAME },
        ],
        "capacity": capacity,
        "allocatable": capacity,
        "nodeInfo": {
            "machineID": "kiln-test", "systemUUID": "kiln-test", "bootID": "kiln-test",
            "kernelVersion": "6.1.0", "osImage": "kiln test kubelet (no containers run)",
            "containerRuntimeVersion": "kiln-test://0", "kubeletVersion": "v1.36.4",
            "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
        },
    }});
    nodes
        .patch_status(NODE_NAME, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_or_else(|err| panic!("marking the test node {NODE_NAME} Ready: {err}"));
}

/// Waits until the pod `name` satisfies `done`, returning it; panics after `timeout` with
/// what the pod looked like, so a failing test says where it stalled.
pub async fn wait_for_pod(
    pods: &Api<Pod>,
    name: &str,
    what: &str,
    timeout: Duration,
    done: impl Fn(&Pod) -> bool,
) -> Pod {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let pod = pods.get_opt(name).await.ok().flatten();
        match pod {
            Some(pod) if done(&pod) => return pod,
            last => {
                if tokio::time::Instant::now() >= deadline {
                    let seen = last.map_or_else(
                        || "no such pod".to_owned(),
                        |pod| format!("{:#?}", pod.status),
                    );
                    panic!(
                        "timed out after {timeout:?} waiting for pod {name} to be {what}; last seen: {seen}"
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
