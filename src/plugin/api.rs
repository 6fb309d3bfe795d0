//! What `kubectl kiln` reads from and writes to the API server: Builds, their Events and
//! pods, the cancel and rerun requests (I/O: the Kubernetes API), and the pure decisions
//! about them ([`cancel_request`], [`rerun_token`], [`attempt_pod`]).
//!
//! Writes are JSON merge patches of exactly the fields the plugin owns (`spec.cancel`, the
//! `kiln.dev/rerun` annotation), so that they never overwrite a concurrent edit of anything
//! else and GitOps tools see a minimal change.

use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, LogParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::error::PluginError;
use super::render::{FailedLog, StatusReport, tail};
use crate::controller::labels::pod_name;
use crate::controller::podstate::BUILD_CONTAINER;
use crate::crd::build::RERUN_ANNOTATION;
use crate::crd::{AttemptResult, Build, Phase};

/// Field manager of the plugin's writes.
pub const FIELD_MANAGER: &str = "kubectl-kiln";

/// How many log lines `status` shows of a failed attempt.
pub const STATUS_LOG_LINES: usize = 20;

/// Where to list Builds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListScope {
    /// One namespace.
    Namespace(String),
    /// Every namespace.
    All,
}

fn builds_in(client: &Client, namespace: &str) -> Api<Build> {
    Api::namespaced(client.clone(), namespace)
}

/// Reads one Build; a missing one is [`PluginError::BuildNotFound`].
pub async fn get_build(client: &Client, namespace: &str, name: &str) -> Result<Build, PluginError> {
    builds_in(client, namespace)
        .get_opt(name)
        .await
        .map_err(|source| PluginError::GetBuild {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source: Box::new(source),
        })?
        .ok_or_else(|| PluginError::BuildNotFound {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
}

/// The Builds in `scope`, sorted by namespace, then name.
pub async fn list_builds(client: &Client, scope: &ListScope) -> Result<Vec<Build>, PluginError> {
    let api: Api<Build> = match scope {
        ListScope::Namespace(ns) => builds_in(client, ns),
        ListScope::All => Api::all(client.clone()),
    };
    let mut builds = api
        .list(&ListParams::default())
        .await
        .map_err(|source| PluginError::ListBuilds {
            scope: match scope {
                ListScope::Namespace(ns) => format!("namespace {ns}"),
                ListScope::All => "all namespaces".to_owned(),
            },
            source: Box::new(source),
        })?
        .items;
    builds.sort_by_key(|b| (b.namespace(), b.name_any()));
    Ok(builds)
}

/// The Events about one Build object (by UID, so that an earlier Build of the same name does
/// not show), oldest first.
pub async fn build_events(client: &Client, build: &Build) -> Result<Vec<Event>, PluginError> {
    let namespace = build.namespace().unwrap_or_default();
    let Some(uid) = build.uid() else {
        return Ok(Vec::new());
    };
    let events: Api<Event> = Api::namespaced(client.clone(), &namespace);
    let mut items = events
        .list(&ListParams::default().fields(&format!("involvedObject.uid={uid}")))
        .await
        .map_err(|source| PluginError::ListEvents {
            namespace: namespace.clone(),
            name: build.name_any(),
            source: Box::new(source),
        })?
        .items;
    items.sort_by_key(|e| {
        let at = e
            .last_timestamp
            .as_ref()
            .map(|t| t.0)
            .or_else(|| e.event_time.as_ref().map(|t| t.0))
            .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0));
        (at, e.name_any())
    });
    Ok(items)
}

/// The pod of attempt `attempt` of `build`: the name recorded in its history, or the
/// deterministic name when the history no longer holds it.
pub fn attempt_pod(build: &Build, attempt: u32) -> String {
    build
        .status
        .as_ref()
        .and_then(|s| s.attempts.iter().find(|a| a.attempt == attempt))
        .map(|a| a.pod_name.clone())
        .unwrap_or_else(|| pod_name(&build.name_any(), attempt))
}

/// The attempt whose pod `status` should show the log of: the current one, when it failed.
pub fn failed_attempt_pod(build: &Build) -> Option<String> {
    let status = build.status.as_ref()?;
    let record = status.current_attempt()?;
    (record.result == Some(AttemptResult::Failed)).then(|| record.pod_name.clone())
}

/// Everything `status` shows: the Build, its Events, and the end of a failed attempt's log.
pub async fn status_report(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<StatusReport, PluginError> {
    let build = get_build(client, namespace, name).await?;
    let events = build_events(client, &build).await?;
    let failed_log = match failed_attempt_pod(&build) {
        Some(pod) => {
            let lines = log_tail(client, namespace, &pod, STATUS_LOG_LINES).await;
            Some(FailedLog { pod, lines })
        }
        None => None,
    };
    Ok(StatusReport {
        build,
        events,
        failed_log,
    })
}

/// The last `lines` lines of a build pod's log, or why they cannot be read.
async fn log_tail(
    client: &Client,
    namespace: &str,
    pod: &str,
    lines: usize,
) -> Result<Vec<String>, String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let params = LogParams {
        container: Some(BUILD_CONTAINER.to_owned()),
        tail_lines: Some(lines as i64),
        ..LogParams::default()
    };
    match pods.logs(pod, &params).await {
        Ok(text) => Ok(tail(&text, lines)),
        Err(kube::Error::Api(status)) if status.code == 404 => Err(format!(
            "pod {pod} is gone (finished pods are removed after their retention TTL)"
        )),
        Err(error) => Err(crate::report::error_chain(&error)),
    }
}

/// What `cancel` does to a Build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CancelRequest {
    /// Set `spec.cancel: true`.
    Cancel,
    /// Cancel is already requested.
    AlreadyRequested,
    /// The Build finished in this phase; setting `spec.cancel` now would start a new run
    /// (a spec change) only to cancel it, and replace the finished result.
    Finished(Phase),
}

/// Whether cancelling `build` makes sense.
pub fn cancel_request(build: &Build) -> CancelRequest {
    if build.spec.cancel {
        return CancelRequest::AlreadyRequested;
    }
    match build.status.as_ref().and_then(|s| s.phase) {
        Some(phase) if phase.is_terminal() && !build.run_requested() => {
            CancelRequest::Finished(phase)
        }
        _ => CancelRequest::Cancel,
    }
}

/// Sets `spec.cancel: true` when [`cancel_request`] says so; returns what it decided.
pub async fn cancel(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<CancelRequest, PluginError> {
    let build = get_build(client, namespace, name).await?;
    let request = cancel_request(&build);
    if request == CancelRequest::Cancel {
        patch_build(
            client,
            namespace,
            name,
            json!({"spec": {"cancel": true}}),
            "cancel",
        )
        .await?;
    }
    Ok(request)
}

/// A rerun token that differs from `current`: the time in milliseconds, with a suffix in
/// the unlikely case that it equals the current token.
pub fn rerun_token(current: Option<&str>, now: Timestamp) -> String {
    let token = now.as_millisecond().to_string();
    if current == Some(token.as_str()) {
        format!("{token}-1")
    } else {
        token
    }
}

/// What `rerun` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rerun {
    /// The new token.
    pub token: String,
    /// Whether `spec.cancel` was cleared too (a cancelled Build must be un-cancelled, or the
    /// new run would be cancelled at once).
    pub uncancelled: bool,
    /// The phase the Build was in: a running attempt is superseded by the new one.
    pub was: Option<Phase>,
}

/// Requests a new attempt: a new `kiln.dev/rerun` token (and `spec.cancel: false` when it
/// was set). The controller cancels an attempt in flight (reason `Superseded`) and starts a
/// new one.
pub async fn rerun(
    client: &Client,
    namespace: &str,
    name: &str,
    now: Timestamp,
) -> Result<Rerun, PluginError> {
    let build = get_build(client, namespace, name).await?;
    let token = rerun_token(build.rerun_token(), now);
    let uncancelled = build.spec.cancel;
    let mut patch = json!({"metadata": {"annotations": {RERUN_ANNOTATION: token}}});
    if uncancelled {
        patch["spec"] = json!({"cancel": false});
    }
    patch_build(client, namespace, name, patch, "request a rerun of").await?;
    Ok(Rerun {
        token,
        uncancelled,
        was: build.status.as_ref().and_then(|s| s.phase),
    })
}

async fn patch_build(
    client: &Client,
    namespace: &str,
    name: &str,
    patch: serde_json::Value,
    action: &'static str,
) -> Result<(), PluginError> {
    builds_in(client, namespace)
        .patch(
            name,
            &PatchParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..PatchParams::default()
            },
            &Patch::Merge(&patch),
        )
        .await
        .map_err(|source| PluginError::PatchBuild {
            action,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source: Box::new(source),
        })?;
    Ok(())
}

/// What `logs` prints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRequest {
    /// The attempt; the current one when `None`.
    pub attempt: Option<u32>,
    /// Keep streaming until the container ends.
    pub follow: bool,
    /// The container (`build`, or `fetch-context` for the context download).
    pub container: String,
    /// Only this many last lines.
    pub tail: Option<i64>,
}

/// How long `logs -f` waits for a container to start before it asks anyway.
const START_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// Prints the log of one attempt's container to `out`; with `follow`, waits for the
/// container to start and streams until it ends.
pub async fn logs(
    client: &Client,
    namespace: &str,
    name: &str,
    request: &LogRequest,
    out: &mut (dyn std::io::Write + Send),
) -> Result<(), PluginError> {
    let build = get_build(client, namespace, name).await?;
    let current = build.status.as_ref().map(|s| s.attempt).filter(|a| *a > 0);
    let Some(attempt) = request.attempt.or(current) else {
        let status = build.status.as_ref();
        return Err(PluginError::NoAttempt {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            state: match (
                status.and_then(|s| s.phase),
                status.and_then(|s| s.reason()),
            ) {
                (Some(phase), Some(reason)) => format!("{}, {}", phase.as_str(), reason.as_str()),
                (Some(phase), None) => phase.as_str().to_owned(),
                _ => "not yet seen by the controller".to_owned(),
            },
        });
    };
    let pod = attempt_pod(&build, attempt);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let read_error = |source| PluginError::ReadLog {
        namespace: namespace.to_owned(),
        pod: pod.clone(),
        source: Box::new(source),
    };
    if pods.get_opt(&pod).await.map_err(read_error)?.is_none() {
        return Err(PluginError::PodGone { pod, attempt });
    }
    let params = LogParams {
        container: Some(request.container.clone()),
        follow: request.follow,
        tail_lines: request.tail,
        ..LogParams::default()
    };
    if request.follow {
        wait_until_started(&pods, &pod, &request.container).await;
        let stream = pods.log_stream(&pod, &params).await.map_err(read_error)?;
        futures::io::copy_buf(stream, &mut futures::io::AllowStdIo::new(out))
            .await
            .map_err(PluginError::Write)?;
    } else {
        let text = pods.logs(&pod, &params).await.map_err(read_error)?;
        out.write_all(text.as_bytes()).map_err(PluginError::Write)?;
    }
    Ok(())
}

/// Why a container has not started yet, or `None` when its log can be read.
pub fn waiting_reason(pod: &Pod, container: &str) -> Option<String> {
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let statuses = status
        .init_container_statuses
        .iter()
        .chain(status.container_statuses.iter())
        .flatten();
    match statuses.into_iter().find(|s| s.name == container) {
        Some(s) => s
            .state
            .as_ref()
            .and_then(|state| state.waiting.as_ref())
            .map(|w| w.reason.clone().unwrap_or_else(|| "Waiting".to_owned())),
        None => Some(status.phase.clone().unwrap_or_else(|| "Pending".to_owned())),
    }
}

async fn wait_until_started(pods: &Api<Pod>, pod: &str, container: &str) {
    let deadline = tokio::time::Instant::now() + START_WAIT;
    let mut said = None;
    while tokio::time::Instant::now() < deadline {
        let Ok(Some(current)) = pods.get_opt(pod).await else {
            return;
        };
        let Some(reason) = waiting_reason(&current, container) else {
            return;
        };
        if said.as_ref() != Some(&reason) {
            eprintln!("waiting for container {container} of pod {pod} to start ({reason})");
            said = Some(reason);
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}
