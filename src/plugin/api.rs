//! What `kubectl kiln` reads from and writes to the API server: Builds, their Events and
//! pods, the cancel and rerun requests (I/O: the Kubernetes API), and the pure decisions
//! about them ([`cancel_request`], [`rerun_token`], [`attempt_pod`], [`log_target`],
//! [`failed_log_target`]).
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
use crate::cacheapi::client::AdminClient;
use crate::controller::labels::{PLATFORM_INDEX, index_pod_name, platform_pod_name, pod_name};
use crate::controller::podstate::{BUILD_CONTAINER, INDEX_CONTAINER};
use crate::crd::build::RERUN_ANNOTATION;
use crate::crd::{AttemptResult, Build, Phase, PlatformStatus, StoredLog};
use crate::oci::name::{RepoName, Tag};
use crate::oci::platform::Platform;

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

/// One container of one pod of an attempt: what `logs` reads and `status` tails.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogTarget {
    /// The attempt.
    pub attempt: u32,
    /// The pod.
    pub pod: String,
    /// The container.
    pub container: String,
    /// Which pod of a native attempt it is: the platform (`linux/arm64`), or `index` for the
    /// index pod; `None` for the one pod of a single-pod attempt.
    pub platform: Option<String>,
    /// Why the pod may not exist other than having been removed: the open attempt has not
    /// created it yet (`does not exist yet: …`), or the attempt ended before it was
    /// (`was never created: …`). Without it, a missing pod is one that is gone.
    pub not_created: Option<String>,
}

/// One pod of a native attempt, as far as choosing a log goes.
struct NativePod {
    /// The platform as `spec.platforms` writes it.
    platform: String,
    /// Its current pod.
    pod: String,
    /// Why its pod may not exist yet.
    not_created: Option<String>,
    /// Whether it pushed its image.
    pushed: bool,
    /// Whether it comes from `status.platforms` (the current attempt), which knows its pod
    /// and whether it pushed, rather than from the spec.
    from_status: bool,
}

/// The pods of attempt `attempt` when it ran natively (one pod per platform, then the index
/// pod), or `None` when it ran as one pod.
///
/// `status.platforms` describes the current native attempt, retried pods included. An
/// older attempt is known only by its record: its pod is an index pod exactly when it was
/// native; its platforms are then taken from the spec, each at its first pod's
/// deterministic name (a retried platform's later pods are recorded nowhere but in the
/// status of its own attempt).
fn native_pods(build: &Build, attempt: u32) -> Option<(Vec<NativePod>, String)> {
    let name = build.name_any();
    let status = build.status.as_ref();
    let record = status.and_then(|s| s.attempts.iter().find(|a| a.attempt == attempt));
    let index = record
        .map(|r| r.pod_name.clone())
        .unwrap_or_else(|| index_pod_name(&name, attempt, 1));
    let current: Vec<&PlatformStatus> = status
        .map(|s| {
            s.platforms
                .iter()
                .filter(|p| p.attempt == attempt)
                .collect()
        })
        .unwrap_or_default();
    if !current.is_empty() {
        let pods = current
            .into_iter()
            .map(|p| NativePod {
                platform: p.platform.clone(),
                pod: p.pod_name.clone(),
                not_created: (p.phase == Phase::Pending && p.pod_uid.is_none()).then(|| {
                    format!(
                        "does not exist yet: {}",
                        p.message
                            .as_deref()
                            .unwrap_or("the controller is creating it")
                    )
                }),
                pushed: p.phase == Phase::Succeeded,
                from_status: true,
            })
            .collect();
        return Some((pods, index));
    }
    let native = match record {
        Some(r) => is_index_pod(&name, attempt, &r.pod_name),
        None => build.spec.builds_natively(),
    };
    native.then(|| {
        let pods = build
            .spec
            .platforms
            .iter()
            .map(|platform| NativePod {
                platform: platform.clone(),
                pod: platform_pod_name(&name, attempt, &slug(platform), 1),
                not_created: None,
                pushed: false,
                from_status: false,
            })
            .collect();
        (pods, index)
    })
}

/// The slug of a platform as written in the spec (the schema admits only parsable ones).
fn slug(platform: &str) -> String {
    Platform::parse(platform)
        .map(|p| p.slug())
        .unwrap_or_else(|_| platform.to_owned())
}

/// Whether `pod` is one of the names the index pod of `attempt` takes (its first try, or a
/// retry `…-index-<n>`); single-pod attempts' pods never are.
fn is_index_pod(build: &str, attempt: u32, pod: &str) -> bool {
    if pod == index_pod_name(build, attempt, 1) {
        return true;
    }
    pod.rsplit_once('-')
        .and_then(|(_, n)| n.parse::<u32>().ok())
        .is_some_and(|try_| try_ > 1 && pod == index_pod_name(build, attempt, try_))
}

/// Which pod and container of attempt `attempt` `logs` reads.
///
/// - A single-pod attempt: its pod ([`attempt_pod`]) and `container`; a `platform` is an
///   error ([`PluginError::NotNative`]), since that pod built every platform.
/// - A native attempt with `platform` a platform of it (`linux/arm64`, or its slug
///   `linux-arm64`, the form in pod names): that platform's current pod. `index` (the
///   value of the `kiln.dev/platform` label on the index pod) names the index pod, whose
///   one container is `index`: the default `build` means it there. `index` is a value of
///   the same flag rather than a flag of its own because it chooses the same thing, one pod
///   of the attempt, and cannot be taken for a platform (platforms are `os/arch`); one
///   flag also gives one list of choices to print.
/// - A native attempt without `platform`: an error listing the choices
///   ([`PluginError::ChoosePlatform`]) rather than every pod's log prefixed by its
///   platform. The pods run at different times on different nodes, may be retried or
///   gone; BuildKit's progress output of two builds interleaved line by line is hard to
///   read, and `-f` and `--tail` over several pods would each need rules of their own.
///   One pod per command keeps `logs` what `kubectl logs` is; `status` already shows the
///   end of the failed platform's log.
/// - A platform the attempt does not build: [`PluginError::UnknownPlatform`], naming the
///   choices.
pub fn log_target(
    build: &Build,
    attempt: u32,
    platform: Option<&str>,
    container: &str,
) -> Result<LogTarget, PluginError> {
    let namespace = build.namespace().unwrap_or_default();
    let name = build.name_any();
    let native = native_pods(build, attempt);
    let choices = |pods: &[NativePod]| pods.iter().map(|p| p.platform.clone()).collect();
    match (platform, native) {
        (None, None) => Ok(LogTarget {
            attempt,
            pod: attempt_pod(build, attempt),
            container: container.to_owned(),
            platform: None,
            not_created: None,
        }),
        (Some(platform), None) => Err(PluginError::NotNative {
            namespace,
            name,
            attempt,
            platform: platform.to_owned(),
        }),
        (None, Some((pods, _))) => Err(PluginError::ChoosePlatform {
            namespace,
            name,
            attempt,
            platforms: choices(&pods),
        }),
        (Some(PLATFORM_INDEX), Some((pods, index))) => {
            let record = build
                .status
                .as_ref()
                .and_then(|s| s.attempts.iter().find(|a| a.attempt == attempt));
            let pushed = pods.iter().filter(|p| p.pushed).count();
            let total = pods.len();
            // Which platforms pushed is known only for the current attempt, whose platforms
            // are in the status: pods of an older attempt are never `pushed` here.
            let known = pods.iter().any(|p| p.from_status);
            let not_created = match record {
                Some(r) if r.result.is_none() && r.pod_uid.is_none() && pushed < total => {
                    Some(format!(
                        "does not exist yet: the index pod is created once every platform has pushed ({pushed} of {total} have)"
                    ))
                }
                Some(r) if r.result.is_none() && r.pod_uid.is_none() => Some(
                    "does not exist yet: every platform has pushed, and the controller is creating it"
                        .to_owned(),
                ),
                Some(r) if r.result.is_some() && known && pushed < total => Some(format!(
                    "was never created: the attempt ended before every platform pushed ({pushed} of {total} did)"
                )),
                _ => None,
            };
            Ok(LogTarget {
                attempt,
                pod: index,
                container: if container == BUILD_CONTAINER {
                    INDEX_CONTAINER.to_owned()
                } else {
                    container.to_owned()
                },
                platform: Some(PLATFORM_INDEX.to_owned()),
                not_created,
            })
        }
        (Some(platform), Some((pods, _))) => {
            let wanted = pods
                .iter()
                .position(|p| p.platform == platform || slug(&p.platform) == platform);
            match wanted {
                Some(i) => {
                    let NativePod {
                        platform,
                        pod,
                        not_created,
                        pushed: _,
                        from_status: _,
                    } = &pods[i];
                    Ok(LogTarget {
                        attempt,
                        pod: pod.clone(),
                        container: container.to_owned(),
                        platform: Some(platform.clone()),
                        not_created: not_created.clone(),
                    })
                }
                None => Err(PluginError::UnknownPlatform {
                    namespace,
                    name,
                    attempt,
                    platform: platform.to_owned(),
                    platforms: choices(&pods),
                }),
            }
        }
    }
}

/// The pod whose log `status` tails: the current attempt's, when it failed.
///
/// Of a native attempt that is the pod that failed it: the first platform whose pod
/// failed; the index pod (container `index`) when every platform pushed and the index
/// failed; otherwise (the attempt timed out while platforms built, and they were stopped)
/// the first platform that had not pushed. The index pod of a failed platform's attempt
/// was never created, so its log would say nothing.
pub fn failed_log_target(build: &Build) -> Option<LogTarget> {
    let status = build.status.as_ref()?;
    let record = status.current_attempt()?;
    if record.result != Some(AttemptResult::Failed) {
        return None;
    }
    let platforms: Vec<&PlatformStatus> = status
        .platforms
        .iter()
        .filter(|p| p.attempt == record.attempt)
        .collect();
    let platform_pod = |p: &PlatformStatus| LogTarget {
        attempt: record.attempt,
        pod: p.pod_name.clone(),
        container: BUILD_CONTAINER.to_owned(),
        platform: Some(p.platform.clone()),
        not_created: None,
    };
    if platforms.is_empty() {
        return Some(LogTarget {
            attempt: record.attempt,
            pod: record.pod_name.clone(),
            container: BUILD_CONTAINER.to_owned(),
            platform: None,
            not_created: None,
        });
    }
    if let Some(failed) = platforms.iter().find(|p| p.phase == Phase::Failed) {
        return Some(platform_pod(failed));
    }
    match platforms.iter().find(|p| p.phase != Phase::Succeeded) {
        Some(stopped) => Some(platform_pod(stopped)),
        None => Some(LogTarget {
            attempt: record.attempt,
            pod: record.pod_name.clone(),
            container: INDEX_CONTAINER.to_owned(),
            platform: Some(PLATFORM_INDEX.to_owned()),
            not_created: None,
        }),
    }
}

/// Everything `status` shows: the Build, its Events, and the end of a failed attempt's log.
pub async fn status_report(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<StatusReport, PluginError> {
    let build = get_build(client, namespace, name).await?;
    let events = build_events(client, &build).await?;
    let failed_log = match failed_log_target(&build) {
        Some(target) => {
            let lines = log_tail(
                client,
                namespace,
                &target.pod,
                &target.container,
                STATUS_LOG_LINES,
            )
            .await;
            Some(FailedLog {
                pod: target.pod,
                platform: target.platform,
                lines,
            })
        }
        None => None,
    };
    Ok(StatusReport {
        build,
        events,
        failed_log,
    })
}

/// The last `lines` lines of one container's log, or why they cannot be read.
async fn log_tail(
    client: &Client,
    namespace: &str,
    pod: &str,
    container: &str,
    lines: usize,
) -> Result<Vec<String>, String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let params = LogParams {
        container: Some(container.to_owned()),
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
    /// The container (`build`, or `fetch-context` for the context download); on the index
    /// pod of a native attempt, `build` means its one container, `index`.
    pub container: String,
    /// Only this many last lines.
    pub tail: Option<i64>,
}

/// How long `logs -f` waits for a container to start before it asks anyway.
const START_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// Prints the log of one attempt's container to `out`, choosing no platform: [`logs_of`]
/// with `None`, which reads a single-pod attempt's pod and refuses a native attempt.
pub async fn logs(
    client: &Client,
    namespace: &str,
    name: &str,
    request: &LogRequest,
    out: &mut (dyn std::io::Write + Send),
) -> Result<(), PluginError> {
    logs_of(client, namespace, name, request, None, out).await
}

/// Prints the log of one attempt's container to `out`: of the attempt's pod, or, for a
/// native attempt, of the pod `platform` chooses (a platform, or `index`; see
/// [`log_target`]). With `follow`, waits for the container to start and streams until it
/// ends.
pub async fn logs_of(
    client: &Client,
    namespace: &str,
    name: &str,
    request: &LogRequest,
    platform: Option<&str>,
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
    let LogTarget {
        attempt,
        pod,
        container,
        platform,
        not_created,
    } = log_target(&build, attempt, platform, &request.container)?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let read_error = |source| PluginError::ReadLog {
        namespace: namespace.to_owned(),
        pod: pod.clone(),
        source: Box::new(source),
    };
    if pods.get_opt(&pod).await.map_err(read_error)?.is_none() {
        return Err(match not_created {
            Some(why) => PluginError::PodNotCreated {
                pod,
                attempt,
                platform,
                why,
            },
            None => match stored_log(&build, attempt, &pod, &container) {
                Some(log) => PluginError::LogStored { pod, attempt, log },
                None => PluginError::PodGone { pod, attempt },
            },
        });
    }
    let params = LogParams {
        container: Some(container.clone()),
        follow: request.follow,
        tail_lines: request.tail,
        ..LogParams::default()
    };
    if request.follow {
        wait_until_started(&pods, &pod, &container).await;
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

/// Where the log of `pod`'s `container` in attempt `attempt` is kept, once the pod is
/// gone: the attempt's stored log is its pod's main container's (`build`, or `index`).
pub fn stored_log(build: &Build, attempt: u32, pod: &str, container: &str) -> Option<StoredLog> {
    let record = build
        .status
        .as_ref()?
        .attempts
        .iter()
        .find(|a| a.attempt == attempt && a.pod_name == pod)?;
    matches!(container, BUILD_CONTAINER | INDEX_CONTAINER)
        .then(|| record.log.clone())
        .flatten()
}

/// The stored log `log` of attempt `attempt`, read from Kiln's cache through its admin
/// API.
pub async fn read_stored_log(
    admin: &AdminClient,
    attempt: u32,
    log: &StoredLog,
) -> Result<bytes::Bytes, PluginError> {
    let unreadable = |cause: String| PluginError::StoredLogUnreadable {
        attempt,
        reference: format!("{}:{}", log.repository, log.tag),
        cause,
    };
    let (repository, tag) = RepoName::parse(&log.repository)
        .ok()
        .zip(Tag::parse(&log.tag).ok())
        .ok_or_else(|| unreadable("the status names no valid repository and tag".to_owned()))?;
    let stored = admin
        .get_log(&repository, &tag)
        .await
        .map_err(|e| unreadable(crate::report::error_chain(&e)))?
        .ok_or_else(|| unreadable("the cache no longer holds it".to_owned()))?;
    Ok(stored.bytes)
}

/// The last `lines` lines of `text` (all of it without a count), as `--tail` reads a pod.
pub fn last_lines(text: &[u8], lines: Option<i64>) -> &[u8] {
    let Some(lines) = lines.and_then(|n| usize::try_from(n).ok()) else {
        return text;
    };
    if lines == 0 {
        return &[];
    }
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let start = body
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, b)| **b == b'\n')
        .nth(lines - 1)
        .map_or(0, |(at, _)| at + 1);
    &text[start..]
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

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    #[test]
    fn last_lines_reads_the_tail_as_the_pod_log_would() {
        let log = b"a\nb\nc\n";
        assert_eq!(last_lines(log, None), log);
        assert_eq!(last_lines(log, Some(2)), b"b\nc\n");
        assert_eq!(last_lines(log, Some(3)), log);
        assert_eq!(last_lines(log, Some(10)), log);
        assert_eq!(last_lines(log, Some(0)), b"");
        assert_eq!(last_lines(b"a\nb", Some(1)), b"b");
        assert_eq!(last_lines(log, Some(-1)), log, "negative: all, as kubectl");
    }
    use crate::crd::fixtures::at;
    use crate::crd::{AttemptRecord, BuildStatus, PlatformStrategy};

    fn record(attempt: u32, pod: &str, result: Option<AttemptResult>) -> AttemptRecord {
        AttemptRecord::test(attempt, pod, result)
    }

    fn platform(name: &str, attempt: u32, phase: Phase, pod: &str) -> PlatformStatus {
        PlatformStatus {
            platform: name.into(),
            attempt,
            phase,
            pod_name: pod.into(),
            pod_uid: Some(format!("uid-{pod}")),
            retries: 0,
            start_time: Some(Time(at(0))),
            completion_time: None,
            reason: None,
            message: None,
            digest: None,
        }
    }

    /// A native Build on its third attempt: the first ran as one pod (before the spec asked
    /// for two platforms), the second was native and failed after a retried index pod, the
    /// third builds: amd64 pushed, arm64 waits for its retry's pod.
    fn native() -> Build {
        let mut arm64 = platform("linux/arm64", 3, Phase::Pending, "app-3-linux-arm64-2");
        arm64.pod_uid = None;
        arm64.retries = 1;
        arm64.message = Some("pod app-3-linux-arm64 failed: evicted; retry 1 of 2".into());
        Build::test("app")
            .platform("linux/amd64")
            .platform("linux/arm64")
            .with_status(BuildStatus {
                phase: Some(Phase::Running),
                attempt: 3,
                attempts: vec![
                    record(1, "app-1", Some(AttemptResult::Failed)),
                    record(2, "app-2-index-2", Some(AttemptResult::Failed)),
                    record(3, "app-3-index", None),
                ],
                platforms: vec![
                    platform("linux/amd64", 3, Phase::Succeeded, "app-3-linux-amd64"),
                    arm64,
                ],
                platform_progress: Some("1/2".into()),
                ..BuildStatus::default()
            })
    }

    fn single(strategy: Option<PlatformStrategy>) -> Build {
        let mut build = Build::test("solo")
            .platform("linux/amd64")
            .platform("linux/arm64");
        build.spec.platform_strategy = strategy;
        build.with_status(BuildStatus {
            phase: Some(Phase::Failed),
            attempt: 1,
            attempts: vec![record(1, "solo-1", Some(AttemptResult::Failed))],
            ..BuildStatus::default()
        })
    }

    /// A target as one line: `pod/container [platform] (not yet: why)`, or the error.
    fn describe(target: Result<LogTarget, PluginError>) -> String {
        match target {
            Ok(t) => format!(
                "{}/{}{}{}",
                t.pod,
                t.container,
                t.platform.map(|p| format!(" [{p}]")).unwrap_or_default(),
                t.not_created.map(|w| format!(" ({w})")).unwrap_or_default()
            ),
            Err(e) => format!("error: {e}"),
        }
    }

    /// What a case is about, the Build, the attempt, `--platform`, `--container`, and the
    /// target [`describe`]d.
    type Case<'a> = (&'a str, &'a Build, u32, Option<&'a str>, &'a str, &'a str);

    #[test]
    fn logs_choose_the_pod_and_container_of_the_attempt_and_platform_asked_for() {
        let native = native();
        let mut ended = native.clone();
        if let Some(status) = ended.status.as_mut() {
            status.phase = Some(Phase::Failed);
            status.attempts[2].result = Some(AttemptResult::Failed);
            status.platforms[1].phase = Phase::Failed;
        }
        let emulated = single(Some(PlatformStrategy::Emulated));
        let cases: &[Case] = &[
            (
                "current attempt, a pushed platform",
                &native,
                3,
                Some("linux/amd64"),
                "build",
                "app-3-linux-amd64/build [linux/amd64]",
            ),
            (
                "current attempt, a retried platform: its pod from the status",
                &native,
                3,
                Some("linux/arm64"),
                "build",
                "app-3-linux-arm64-2/build [linux/arm64] (does not exist yet: pod app-3-linux-arm64 failed: evicted; retry 1 of 2)",
            ),
            (
                "a platform by its slug",
                &native,
                3,
                Some("linux-arm64"),
                "fetch-context",
                "app-3-linux-arm64-2/fetch-context [linux/arm64] (does not exist yet: pod app-3-linux-arm64 failed: evicted; retry 1 of 2)",
            ),
            (
                "the index of the open attempt: its one container, not created before every platform pushed",
                &native,
                3,
                Some("index"),
                "build",
                "app-3-index/index [index] (does not exist yet: the index pod is created once every platform has pushed (1 of 2 have))",
            ),
            (
                "the index of an attempt a platform failed",
                &ended,
                3,
                Some("index"),
                "build",
                "app-3-index/index [index] (was never created: the attempt ended before every platform pushed (1 of 2 did))",
            ),
            (
                "an older native attempt: the platform's first pod",
                &native,
                2,
                Some("linux/arm64"),
                "build",
                "app-2-linux-arm64/build [linux/arm64]",
            ),
            (
                "an older native attempt's retried index pod, from its record",
                &native,
                2,
                Some("index"),
                "build",
                "app-2-index-2/index [index]",
            ),
            (
                "an attempt no longer in the history of a native spec",
                &native,
                7,
                Some("linux/amd64"),
                "build",
                "app-7-linux-amd64/build [linux/amd64]",
            ),
            (
                "a native attempt without --platform lists the choices",
                &native,
                3,
                None,
                "build",
                "error: Build default/app builds 2 platforms natively (attempt 3): pass --platform linux/amd64, --platform linux/arm64, or --platform index",
            ),
            (
                "an older native attempt without --platform",
                &native,
                2,
                None,
                "build",
                "error: Build default/app builds 2 platforms natively (attempt 2): pass --platform linux/amd64, --platform linux/arm64, or --platform index",
            ),
            (
                "an unknown platform names the Build's",
                &native,
                3,
                Some("linux/s390x"),
                "build",
                "error: Build default/app does not build platform linux/s390x in attempt 3: pass --platform linux/amd64, --platform linux/arm64, or --platform index",
            ),
            (
                "an attempt of the same Build that ran as one pod",
                &native,
                1,
                None,
                "build",
                "app-1/build",
            ),
            (
                "--platform on an attempt that ran as one pod",
                &native,
                1,
                Some("linux/amd64"),
                "build",
                "error: attempt 1 of Build default/app ran in one pod (every platform in it), so there is no pod of platform linux/amd64: leave out --platform",
            ),
            (
                "an emulated multi-platform Build: its one pod and the container asked for",
                &emulated,
                1,
                None,
                "fetch-context",
                "solo-1/fetch-context",
            ),
            (
                "an emulated Build's attempt no longer in the history",
                &emulated,
                4,
                None,
                "build",
                "solo-4/build",
            ),
        ];
        for (case, build, attempt, platform, container, want) in cases {
            assert_eq!(
                describe(log_target(build, *attempt, *platform, container)),
                *want,
                "{case}"
            );
        }
    }

    #[test]
    fn a_single_native_platform_has_one_choice_beside_the_index() {
        let build = Build::test("one")
            .platform("linux/arm64")
            .platform_strategy(PlatformStrategy::Native);
        assert_eq!(
            describe(log_target(&build, 1, None, "build")),
            "error: Build default/one builds 1 platform natively (attempt 1): pass --platform linux/arm64 or --platform index"
        );
    }

    #[test]
    fn status_tails_the_pod_that_failed_the_attempt() {
        let failed_native = |amd64: Phase, arm64: Phase, index: &str| {
            Build::test("app")
                .platform("linux/amd64")
                .platform("linux/arm64")
                .with_status(BuildStatus {
                    phase: Some(Phase::Failed),
                    attempt: 1,
                    attempts: vec![record(1, index, Some(AttemptResult::Failed))],
                    platforms: vec![
                        platform("linux/amd64", 1, amd64, "app-1-linux-amd64"),
                        platform("linux/arm64", 1, arm64, "app-1-linux-arm64-3"),
                    ],
                    ..BuildStatus::default()
                })
        };
        let mut succeeded = single(None);
        if let Some(status) = succeeded.status.as_mut() {
            status.attempts[0].result = Some(AttemptResult::Succeeded);
        }
        let cases: &[(&str, Build, &str)] = &[
            (
                "a single-pod attempt: its pod",
                single(None),
                "solo-1/build",
            ),
            (
                "a platform failed: its pod, not the index pod",
                failed_native(Phase::Cancelled, Phase::Failed, "app-1-index"),
                "app-1-linux-arm64-3/build [linux/arm64]",
            ),
            (
                "every platform pushed, the index failed: the index pod's container",
                failed_native(Phase::Succeeded, Phase::Succeeded, "app-1-index-2"),
                "app-1-index-2/index [index]",
            ),
            (
                "timed out while building: the first platform that had not pushed",
                failed_native(Phase::Succeeded, Phase::Cancelled, "app-1-index"),
                "app-1-linux-arm64-3/build [linux/arm64]",
            ),
            ("a succeeded attempt: nothing", succeeded, "-"),
            ("a running attempt: nothing", native(), "-"),
            ("no attempt: nothing", Build::test("new"), "-"),
        ];
        for (case, build, want) in cases {
            let got = failed_log_target(build)
                .map(|t| describe(Ok(t)))
                .unwrap_or_else(|| "-".to_owned());
            assert_eq!(got, *want, "{case}");
        }
    }
}
