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

mod node;
mod receiver;
mod script;
mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    Binding, ContainerStateTerminated, ObjectReference, Pod, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Client, ResourceExt};
use tokio::task::JoinSet;

// Re-exported for the test files, each of which uses its own subset.
#[allow(unused_imports)]
pub use node::{register_arm64, register_node};
#[allow(unused_imports)]
pub use receiver::{ReceiverRun, Receivers};
#[allow(unused_imports)]
pub use script::{Gate, Outcome, Script, buildkit_metadata};
use status::{Stage, status};

/// The fake node every pod is bound to (an amd64 node), unless it asks for arm64.
pub const NODE_NAME: &str = "kiln-test-node";
/// The fake arm64 node (registered by [`node::register_arm64`]): pods whose node selector
/// asks for `kubernetes.io/arch=arm64` are bound to it.
pub const ARM64_NODE_NAME: &str = "kiln-test-node-arm64";
/// The label selector of the pods the test kubelet drives.
pub const SELECTOR: &str = "app.kubernetes.io/managed-by=kiln";
/// The node's address: TEST-NET-1, documentation only, never routed.
const NODE_IP: &str = "192.0.2.10";

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
        node::register(&client).await;
        let journal = Arc::new(Mutex::new(Journal::default()));
        let pods = Api::<Pod>::namespaced(client, namespace);
        let task = tokio::spawn(run(pods, Arc::new(script), Arc::clone(&journal)));
        Self { task, journal }
    }

    /// The unexpected API errors met so far, and whether the kubelet itself stopped (its
    /// script panicked): a test asserts there are none.
    pub fn errors(&self) -> Vec<String> {
        let mut errors = self.journal().errors.clone();
        if self.task.is_finished() {
            errors.push("the test kubelet stopped: did its script panic?".to_owned());
        }
        errors
    }

    /// The pods it has started driving, in order.
    pub fn pods(&self) -> Vec<String> {
        self.journal().pods.clone()
    }

    fn journal(&self) -> MutexGuard<'_, Journal> {
        lock(&self.journal)
    }
}

impl Drop for TestKubelet {
    fn drop(&mut self) {
        // Dropping the task's JoinSet aborts every pod task with it.
        self.task.abort();
    }
}

/// The journal, even after a pod task panicked while holding it: it is only appended to.
fn lock(journal: &Mutex<Journal>) -> MutexGuard<'_, Journal> {
    journal
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn record_error(journal: &Mutex<Journal>, error: String) {
    lock(journal).errors.push(error);
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
                let uid = pod.uid().unwrap_or_default();
                if let Some(task) = driving.remove(&uid) {
                    task.abort();
                }
                terminating.remove(&uid);
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
        if node.is_some_and(|node| node != NODE_NAME && node != ARM64_NODE_NAME) {
            continue; // Another node's pod.
        }
        if node.is_none() && node_for(&pod).is_none() {
            continue; // No test node has its architecture: it stays unscheduled.
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
        lock(&journal).pods.push(pod.name_any());
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

/// The test node a pod is scheduled on, as a scheduler would by its node selector's
/// `kubernetes.io/arch`: the arm64 node for arm64, the amd64 node for amd64 or no
/// architecture, none for any other.
fn node_for(pod: &Pod) -> Option<&'static str> {
    let arch = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.node_selector.as_ref())
        .and_then(|selector| selector.get("kubernetes.io/arch"))
        .map(String::as_str);
    match arch {
        None | Some("amd64") => Some(NODE_NAME),
        Some("arm64") => Some(ARM64_NODE_NAME),
        Some(_) => None,
    }
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
        status(pod, &Stage::Pending { started: &started }, &now()),
    )
    .await?;
    let ip = match &script.receiver {
        Some(receivers) if Receivers::wanted_by(pod) => receivers.ip().to_owned(),
        _ => pod_ip(),
    };
    let pending_until = tokio::time::Instant::now() + script.pending_for;
    if let Some(deadline) = deadline.filter(|deadline| *deadline <= pending_until) {
        // Past its deadline before it ever ran.
        tokio::time::sleep_until(deadline).await;
        let ended = Stage::Ended {
            started: &started,
            since: &started,
            ip: &ip,
            outcome: &Outcome::DeadlineExceeded,
        };
        return write_status(pods, pod, status(pod, &ended, &now())).await;
    }
    tokio::time::sleep_until(pending_until).await;

    if let Some(receivers) = script
        .receiver
        .as_ref()
        .filter(|_| Receivers::wanted_by(pod))
    {
        let since = now();
        let initializing = Stage::Initializing {
            started: &started,
            since: &since,
            ip: &ip,
        };
        write_status(pods, pod, status(pod, &initializing, &now())).await?;
        let run = receivers
            .run(pods.clone().into_client(), pod)
            .await
            .unwrap_or_else(|error| ReceiverRun {
                exit_code: 128,
                message: error,
            });
        if run.exit_code != 0 {
            let ended = Stage::Ended {
                started: &started,
                since: &since,
                ip: &ip,
                outcome: &Outcome::InitFailed {
                    exit_code: run.exit_code,
                    message: run.message,
                },
            };
            return write_status(pods, pod, status(pod, &ended, &now())).await;
        }
    }

    let running_since = now();
    let running = Stage::Running {
        started: &started,
        since: &running_since,
        ip: &ip,
    };
    write_status(pods, pod, status(pod, &running, &now())).await?;

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
    write_status(pods, pod, status(pod, &ended, &now())).await
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
            name: node_for(pod).map(str::to_owned),
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
        match write_status(pods, pod, status(pod, &ended, &now())).await {
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
