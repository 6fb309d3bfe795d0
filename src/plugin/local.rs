//! `kubectl kiln build --local`'s decisions (pure): the Build made from the flags, the name
//! it is given, what the receiver's answers and the Build's pods say to do next, and the
//! lines it prints (the upload itself is [`super::upload`]).
//!
//! # The flow
//! Pack the directory once to learn the tar's digest and size; create a Build that
//! declares them (`spec.source.local`); wait for a pod of it whose `context` init container
//! runs ([`receiver_step`]); ask that receiver where it stands ([`on_status`]); send the
//! tar in chunks from where it says, packing a second time; end with `done`. Every answer
//! of the API server or the receiver is first sorted by [`classify`], so that the I/O
//! code only acts on an [`Answer`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use super::error::PluginError;
use crate::context::protocol::{UploadError, UploadState, UploadStatus};
use crate::context::{PackReport, SkippedKind};
use crate::controller::podstate::CONTEXT_CONTAINER;
use crate::controller::validate::is_arg_name;
use crate::crd::build::DEFAULT_DOCKERFILE;
use crate::crd::condition::{CONDITION_SUCCEEDED, find_condition};
use crate::crd::{Build, BuildSpec, LocalSource, Output, Phase, SecretRef, Source};
use crate::oci::digest::Digest;
use crate::units::format_binary_size;
use crate::units::format_duration;

/// The default `--max-size`: 2 GiB of file contents.
pub const DEFAULT_MAX_SIZE: u64 = 2 << 30;

/// How long to wait for a receiver without any progress before giving up.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10 * 60);

/// How often the Build, its pods and the receiver are polled while waiting.
pub const DEFAULT_POLL: Duration = Duration::from_millis(500);

/// The longest `generateName` prefix taken from a directory's name (without its `-`): the
/// API server adds five characters, and the pods' names add the attempt to that.
pub const MAX_PREFIX: usize = 40;

/// Everything `kubectl kiln build --local` was asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalBuildArgs {
    /// The directory to build (the context root).
    pub dir: PathBuf,
    /// The Dockerfile, relative to `dir`.
    pub dockerfile: String,
    /// The stage to stop at.
    pub target: Option<String>,
    /// Build arguments, in the order given (a later one of the same name wins).
    pub build_args: Vec<(String, String)>,
    /// Target platforms.
    pub platforms: Vec<String>,
    /// The image reference to push.
    pub image: String,
    /// The push Secret.
    pub push_secret: Option<String>,
    /// The Build's name; a name generated from the directory's when `None`.
    pub name: Option<String>,
    /// The most bytes of file contents the context may hold.
    pub max_size: u64,
    /// Stream the build's log and wait for it to end.
    pub follow: bool,
    /// How long to wait without progress for a pod to receive the context (time the
    /// Build spends `Queued` behind others of its concurrency group does not count).
    pub wait: Duration,
    /// How often to poll while waiting.
    pub poll: Duration,
}

impl Default for LocalBuildArgs {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("."),
            dockerfile: DEFAULT_DOCKERFILE.to_owned(),
            target: None,
            build_args: Vec::new(),
            platforms: Vec::new(),
            image: String::new(),
            push_secret: None,
            name: None,
            max_size: DEFAULT_MAX_SIZE,
            follow: false,
            wait: DEFAULT_WAIT,
            poll: DEFAULT_POLL,
        }
    }
}

/// Parses one `--build-arg NAME=VALUE` (the value may be empty and may hold `=`); the
/// error says what is wrong, for clap to print after the flag and its value.
pub fn parse_build_arg(text: &str) -> Result<(String, String), String> {
    let Some((name, value)) = text.split_once('=') else {
        return Err("expected NAME=VALUE".to_owned());
    };
    if !is_arg_name(name) {
        return Err(format!(
            "expected NAME=VALUE, and {name:?} is not an ARG name (letters, digits and '_', not starting with a digit)"
        ));
    }
    Ok((name.to_owned(), value.to_owned()))
}

/// The `--dockerfile` path in the form the Build and the packer use: relative to the
/// context, `./` and empty components removed. An absolute path, a `..` component or a `#`
/// is refused: the file must be inside the context that is uploaded.
pub fn dockerfile_path(text: &str) -> Result<String, PluginError> {
    let refuse = |why: &str| PluginError::Flag {
        flag: "--dockerfile",
        value: text.to_owned(),
        why: why.to_owned(),
    };
    if text.starts_with('/') {
        return Err(refuse(
            "must be a path relative to the context directory (--local), not an absolute path",
        ));
    }
    if text.contains('#') {
        return Err(refuse("must not contain '#'"));
    }
    let mut parts = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(refuse(
                    "must be inside the context directory (--local): '..' is not allowed",
                ));
            }
            part => parts.push(part),
        }
    }
    if parts.is_empty() {
        return Err(refuse("names no file"));
    }
    Ok(parts.join("/"))
}

/// The `generateName` of a Build of the directory named `dir_name`: a DNS label prefix
/// (lowercase letters, digits and `-`) ending in `-`, at most [`MAX_PREFIX`] characters
/// before it; `local-` when nothing of the name is usable.
pub fn generate_name(dir_name: &str) -> String {
    let mut prefix = String::new();
    for c in dir_name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            prefix.push(c);
        } else if !prefix.is_empty() && !prefix.ends_with('-') {
            prefix.push('-');
        }
    }
    prefix.truncate(MAX_PREFIX);
    let prefix = prefix.trim_end_matches('-');
    if prefix.is_empty() {
        "local-".to_owned()
    } else {
        format!("{prefix}-")
    }
}

/// The Build `kubectl kiln build --local` creates for a tar of `size` bytes with `digest`:
/// named `args.name`, or generated from `dir_name`.
pub fn local_build(
    args: &LocalBuildArgs,
    namespace: &str,
    dir_name: &str,
    dockerfile: &str,
    digest: &Digest,
    size: u64,
) -> Build {
    let LocalBuildArgs {
        dir: _,
        dockerfile: _,
        target,
        build_args,
        platforms,
        image,
        push_secret,
        name,
        max_size: _,
        follow: _,
        wait: _,
        poll: _,
    } = args;
    let metadata = ObjectMeta {
        name: name.clone(),
        generate_name: name.is_none().then(|| generate_name(dir_name)),
        namespace: Some(namespace.to_owned()),
        ..ObjectMeta::default()
    };
    let spec = BuildSpec {
        source: Source {
            local: Some(LocalSource {
                digest: digest.to_string(),
                size: i64::try_from(size).unwrap_or(i64::MAX),
            }),
            ..Source::default()
        },
        dockerfile: dockerfile.to_owned(),
        target: target.clone(),
        build_args: build_args.iter().cloned().collect::<BTreeMap<_, _>>(),
        platforms: platforms.clone(),
        output: Output {
            image: image.clone(),
            push_secret_ref: push_secret.clone().map(|name| SecretRef { name }),
        },
        ..BuildSpec::default()
    };
    Build {
        metadata,
        spec,
        status: None,
    }
}

fn mib_per_second(bytes: u64, elapsed: Duration) -> Option<f64> {
    let secs = elapsed.as_secs_f64();
    (secs > 0.0).then(|| bytes as f64 / secs / f64::from(1u32 << 20))
}

/// The line printed once the context is packed: where, how many files, the size, the
/// digest's short form, and what a tar could not hold.
pub fn pack_summary(dir: &str, report: &PackReport) -> String {
    let mut line = format!(
        "packed {dir}: {} {}, {}, sha256:{}",
        report.files,
        if report.files == 1 { "file" } else { "files" },
        format_binary_size(report.tar_bytes),
        report.digest.short()
    );
    if !report.skipped.is_empty() {
        const NAMED: usize = 3;
        let named: Vec<String> = report
            .skipped
            .iter()
            .take(NAMED)
            .map(|s| {
                let kind = match s.kind {
                    SkippedKind::Socket => "socket",
                    SkippedKind::Fifo => "FIFO",
                    SkippedKind::BlockDevice => "block device",
                    SkippedKind::CharDevice => "character device",
                    SkippedKind::Other => "special file",
                };
                format!("{} ({kind})", s.path)
            })
            .collect();
        let more = report.skipped.len().saturating_sub(NAMED);
        line.push_str(&format!(
            "; left out {} {} a tar cannot hold: {}{}",
            report.skipped.len(),
            if report.skipped.len() == 1 {
                "entry"
            } else {
                "entries"
            },
            named.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ));
    }
    line
}

/// Where an upload stands, for its progress line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// The receiver has this many bytes (resumed ones included).
    pub offset: u64,
    /// The tar's size.
    pub total: u64,
    /// Bytes sent by this command so far (what the rate is of).
    pub sent: u64,
    /// Time since the first byte was sent.
    pub elapsed: Duration,
}

impl Transfer {
    /// The percentage done, rounded down.
    pub fn percent(&self) -> u64 {
        match self.total {
            0 => 100,
            total => (u128::from(self.offset.min(total)) * 100 / u128::from(total)) as u64,
        }
    }
}

/// The progress line: `uploading 48.0 MiB / 120.5 MiB (39%), 12.3 MiB/s, ETA 6s`; without
/// a rate and ETA before any time has passed.
pub fn progress_text(transfer: &Transfer) -> String {
    let mut line = format!(
        "uploading {} / {} ({}%)",
        format_binary_size(transfer.offset),
        format_binary_size(transfer.total),
        transfer.percent()
    );
    if let Some(rate) = mib_per_second(transfer.sent, transfer.elapsed).filter(|r| *r > 0.0) {
        line.push_str(&format!(", {rate:.1} MiB/s"));
        let left = transfer.total.saturating_sub(transfer.offset);
        if left > 0 {
            let secs = left as f64 / (rate * f64::from(1u32 << 20));
            line.push_str(&format!(
                ", ETA {}",
                format_duration(Duration::from_secs(secs.ceil() as u64))
            ));
        }
    }
    line
}

/// The line at the end of an upload: `uploaded 120.5 MiB in 9s (12.3 MiB/s)`.
pub fn upload_summary(sent: u64, elapsed: Duration) -> String {
    let rate = mib_per_second(sent, elapsed)
        .map(|r| format!(" ({r:.1} MiB/s)"))
        .unwrap_or_default();
    format!(
        "uploaded {} in {}{rate}",
        format_binary_size(sent),
        format_duration(elapsed)
    )
}

/// When the output is not a terminal, a progress line is printed each time another tenth
/// of the tar has been sent: the tenth reached, when `transfer` passed one since `last`.
pub fn plain_report_due(last: u64, transfer: &Transfer) -> Option<u64> {
    let tenth = transfer.percent() / 10;
    (tenth > last).then_some(tenth)
}

/// How long to wait before retry `try_` (0 for the first retry) of a chunk: 0.5 s
/// doubling, at most 8 s.
pub fn retry_delay(try_: u32) -> Duration {
    Duration::from_millis(500u64 << try_.min(4))
}

/// The end of a Build, as `--follow` and an ended wait report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildEnd {
    /// The final phase.
    pub phase: Phase,
    /// The `Succeeded` condition's reason.
    pub reason: Option<String>,
    /// What happened.
    pub message: Option<String>,
    /// `image@digest`, when it pushed.
    pub pushed: Option<String>,
}

/// The end of `build`, when its phase is final.
pub fn build_end(build: &Build) -> Option<BuildEnd> {
    let status = build.status.as_ref()?;
    let phase = status.phase.filter(|p| p.is_terminal())?;
    let condition = find_condition(&status.conditions, CONDITION_SUCCEEDED);
    Some(BuildEnd {
        phase,
        reason: condition
            .map(|c| c.reason.clone())
            .filter(|r| !r.is_empty()),
        message: status
            .message
            .clone()
            .or_else(|| condition.map(|c| c.message.clone()))
            .filter(|m| !m.trim().is_empty()),
        pushed: status
            .output
            .as_ref()
            .filter(|_| phase == Phase::Succeeded)
            .map(|o| format!("{}@{}", o.image, o.digest)),
    })
}

/// `Failed (BuildFailed): RUN make exited with 2` (the message on one line).
pub fn describe_end(end: &BuildEnd) -> String {
    let mut text = end.phase.as_str().to_owned();
    if let Some(reason) = &end.reason {
        text.push_str(&format!(" ({reason})"));
    }
    if let Some(message) = &end.message {
        text.push_str(": ");
        text.push_str(&message.split_whitespace().collect::<Vec<_>>().join(" "));
    }
    text
}

/// What `--follow` prints when the Build ended: its phase, reason and message, and the
/// pushed image by digest.
pub fn final_report(namespace: &str, name: &str, end: &BuildEnd) -> String {
    let mut text = format!("Build {namespace}/{name} {}\n", describe_end(end));
    if let Some(pushed) = &end.pushed {
        text.push_str(&format!("pushed {pushed}\n"));
    }
    text
}

/// What the Build and its pods say to do while looking for the receiver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceiverStep {
    /// The Build ended: there is nothing to upload to.
    Ended(BuildEnd),
    /// The context is stored: a pod's `context` container ended well, or the Build
    /// succeeded.
    Received,
    /// Upload to this pod: its `context` container runs and it has an IP.
    Receiver(String),
    /// Not yet; why, for the user.
    Wait(String),
}

fn context_status(pod: &Pod) -> Option<&ContainerStatus> {
    pod.status
        .as_ref()?
        .init_container_statuses
        .as_ref()?
        .iter()
        .find(|s| s.name == CONTEXT_CONTAINER)
}

/// Whether a pod still counts: not being deleted, not finished.
fn live(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && !matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

/// Where the upload goes, given the Build and its pods (any order).
///
/// A pod whose `context` container exited 0 means the context is already stored (another
/// pod of the attempt, or an earlier attempt, received it or found it in the cache), and so
/// does a Build that succeeded: it may have found its context in the cache and finished
/// between two polls. Any other final phase ends the wait: an ended Build has no receiver.
/// Otherwise the receiver is the first pod by name, of those not being deleted, whose
/// `context` container runs and which has an IP: several pods of a native attempt each run
/// one, and the others take the context from the cache once it is stored.
pub fn receiver_step(build: &Build, pods: &[Pod]) -> ReceiverStep {
    let received = pods.iter().any(|p| {
        context_status(p)
            .and_then(|s| s.state.as_ref()?.terminated.as_ref())
            .is_some_and(|t| t.exit_code == 0)
    });
    match build_end(build) {
        _ if received => return ReceiverStep::Received,
        Some(end) if end.phase == Phase::Succeeded => return ReceiverStep::Received,
        Some(end) => return ReceiverStep::Ended(end),
        None => {}
    }
    let mut pods: Vec<&Pod> = pods.iter().collect();
    pods.sort_by_key(|p| p.name_any());
    let receiver = pods.iter().find(|p| {
        live(p)
            && p.status
                .as_ref()
                .and_then(|s| s.pod_ip.as_deref())
                .is_some_and(|ip| !ip.is_empty())
            && context_status(p)
                .and_then(|s| s.state.as_ref()?.running.as_ref())
                .is_some()
    });
    match receiver {
        Some(pod) => ReceiverStep::Receiver(pod.name_any()),
        None => ReceiverStep::Wait(waiting_note(build, &pods)),
    }
}

/// `waiting for the build pod to start (Build Pending, Queued: …)`, or with the first live
/// pod's state: `(pod app-1 Pending: context ContainerCreating)`.
fn waiting_note(build: &Build, pods: &[&Pod]) -> String {
    let pod = pods.iter().find(|p| live(p));
    let detail = match pod {
        Some(pod) => {
            let phase = pod
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_else(|| "Pending".to_owned());
            let container = context_status(pod)
                .and_then(|s| s.state.as_ref()?.waiting.as_ref())
                .map(|w| {
                    let reason = w.reason.as_deref().unwrap_or("Waiting");
                    match w.message.as_deref().filter(|m| !m.is_empty()) {
                        Some(message) => format!(": {CONTEXT_CONTAINER} {reason}, {message}"),
                        None => format!(": {CONTEXT_CONTAINER} {reason}"),
                    }
                })
                .unwrap_or_default();
            format!("pod {} {phase}{container}", pod.name_any())
        }
        None => {
            let status = build.status.as_ref();
            let mut text = format!(
                "Build {}",
                status
                    .and_then(|s| s.phase)
                    .map(Phase::as_str)
                    .unwrap_or("Pending")
            );
            let condition = status.and_then(|s| find_condition(&s.conditions, CONDITION_SUCCEEDED));
            if let Some(reason) = condition
                .map(|c| c.reason.as_str())
                .filter(|r| !r.is_empty())
            {
                text.push_str(&format!(", {reason}"));
            }
            match status
                .and_then(|s| s.message.as_deref())
                .filter(|m| !m.is_empty())
            {
                Some(message) => text.push_str(&format!(": {message}")),
                None if status.and_then(|s| s.phase).is_none() => {
                    text.push_str(": not yet seen by the controller");
                }
                None => {}
            }
            text
        }
    };
    format!("waiting for the build pod to start ({detail})")
}

/// What a receiver's [`UploadStatus`] says to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatusAction {
    /// The context is stored and unpacked: nothing (more) to send.
    Done,
    /// Ask again later; why, for the user.
    Poll(String),
    /// Send the tar from this offset, then `done`.
    Upload {
        /// The first byte to send.
        from: u64,
    },
    /// Every byte arrived: only `done` is left.
    Finish,
    /// The receiver expects another context than the one packed.
    Mismatch(String),
}

/// What to do on `status` from the receiver of pod `pod`, for a tar of `size` bytes with
/// `digest`.
pub fn on_status(pod: &str, status: &UploadStatus, digest: &Digest, size: u64) -> StatusAction {
    if status.digest != *digest || status.size != size {
        return StatusAction::Mismatch(format!(
            "pod {pod} expects a context {} of {} bytes, but the directory packs to {digest} of {size} bytes (was the Build edited?)",
            status.digest, status.size
        ));
    }
    match status.state {
        UploadState::Done => StatusAction::Done,
        UploadState::Checking => {
            StatusAction::Poll(format!("pod {pod} is looking for the context in the cache"))
        }
        UploadState::Storing => StatusAction::Poll(format!("pod {pod} is storing the context")),
        UploadState::Waiting if status.received > size => StatusAction::Mismatch(format!(
            "pod {pod} has received {} bytes of a {size}-byte context",
            status.received
        )),
        UploadState::Waiting if status.received == size => StatusAction::Finish,
        UploadState::Waiting => StatusAction::Upload {
            from: status.received,
        },
    }
}

/// An answer of the API server or, through it, of the receiver, sorted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// `200` with the receiver's state.
    Status(UploadStatus),
    /// `409`: not the offset the receiver expects; its state when it said.
    Conflict(Option<UploadStatus>, String),
    /// `400` (or another refusal of the receiver): its message.
    Refused(String),
    /// `403` from the API server: its message.
    Forbidden(String),
    /// `404` from the API server: the pod is gone.
    PodGone,
    /// `429` or `5xx`: the receiver does not listen yet, the pod is going away, or the API
    /// server is busy; worth retrying.
    Transient(String),
    /// Anything else: the status code and the body's text.
    Unexpected(u16, String),
}

/// A Kubernetes `Status` object in an error body: the API server's own refusals.
#[derive(serde::Deserialize)]
struct KubeStatus {
    kind: Option<String>,
    message: Option<String>,
}

fn kube_status(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<KubeStatus>(body)
        .ok()
        .filter(|s| s.kind.as_deref() == Some("Status"))
        .map(|s| s.message.unwrap_or_default())
}

fn text_of(body: &[u8]) -> String {
    const MAX: usize = 512;
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Sorts an answer to a `pods/proxy` request by its status code and body.
///
/// The API server answers `403` and `404` itself (a missing permission, a missing pod) with
/// a `Status` object; a `404` without one comes from elsewhere and is not taken for a gone
/// pod. When the pod does not listen yet, the API server's proxy answers `502` or `503`.
pub fn classify(code: u16, body: &[u8]) -> Answer {
    match code {
        200..=299 => match serde_json::from_slice::<UploadStatus>(body) {
            Ok(status) => Answer::Status(status),
            Err(e) => Answer::Unexpected(code, format!("{e}: {}", text_of(body))),
        },
        409 => match serde_json::from_slice::<UploadError>(body) {
            Ok(error) => Answer::Conflict(error.status, error.message),
            Err(_) => Answer::Conflict(None, text_of(body)),
        },
        403 => Answer::Forbidden(kube_status(body).unwrap_or_else(|| text_of(body))),
        404 if kube_status(body).is_some() => Answer::PodGone,
        429 | 500..=599 => Answer::Transient(
            kube_status(body)
                .or_else(|| {
                    serde_json::from_slice::<UploadError>(body)
                        .ok()
                        .map(|e| e.message)
                })
                .unwrap_or_else(|| format!("{code}: {}", text_of(body))),
        ),
        400..=499 => match serde_json::from_slice::<UploadError>(body) {
            Ok(error) => Answer::Refused(error.message),
            Err(_) => match kube_status(body) {
                Some(message) => Answer::Unexpected(code, message),
                None => Answer::Refused(text_of(body)),
            },
        },
        _ => Answer::Unexpected(code, text_of(body)),
    }
}

#[cfg(test)]
mod tests {
    use crate::context::SizedPath;
    use crate::context::archive::describe_largest;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
        PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::context::SkippedEntry;
    use crate::crd::condition::{ConditionStatus, set_condition};
    use crate::crd::fixtures::at;
    use crate::crd::{BuildStatus, OutputStatus, Reason};

    fn digest() -> Digest {
        Digest::of(b"context")
    }

    /// A `--build-arg` and its name and value, or the error.
    type ArgCase<'a> = (&'a str, Result<(&'a str, &'a str), &'a str>);

    #[test]
    fn build_args_are_name_equals_value() {
        let cases: &[ArgCase] = &[
            ("VERSION=1.2", Ok(("VERSION", "1.2"))),
            ("EMPTY=", Ok(("EMPTY", ""))),
            ("_X=a=b", Ok(("_X", "a=b"))),
            ("VERSION", Err("expected NAME=VALUE")),
            (
                "=1",
                Err(
                    "expected NAME=VALUE, and \"\" is not an ARG name (letters, digits and '_', not starting with a digit)",
                ),
            ),
            (
                "1X=1",
                Err(
                    "expected NAME=VALUE, and \"1X\" is not an ARG name (letters, digits and '_', not starting with a digit)",
                ),
            ),
        ];
        for (text, want) in cases {
            let got = parse_build_arg(text);
            match (got, want) {
                (Ok((k, v)), Ok((wk, wv))) => assert_eq!((k.as_str(), v.as_str()), (*wk, *wv)),
                (Err(e), Err(w)) => assert_eq!(e, *w, "{text}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn the_dockerfile_path_is_relative_and_inside_the_context() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("Dockerfile", Ok("Dockerfile")),
            ("./build/Dockerfile", Ok("build/Dockerfile")),
            ("build//Dockerfile.dev", Ok("build/Dockerfile.dev")),
            (
                "/abs/Dockerfile",
                Err(
                    "--dockerfile \"/abs/Dockerfile\": must be a path relative to the context directory (--local), not an absolute path",
                ),
            ),
            (
                "../Dockerfile",
                Err(
                    "--dockerfile \"../Dockerfile\": must be inside the context directory (--local): '..' is not allowed",
                ),
            ),
            ("a#b", Err("--dockerfile \"a#b\": must not contain '#'")),
            ("./", Err("--dockerfile \"./\": names no file")),
        ];
        for (text, want) in cases {
            let got = dockerfile_path(text).map_err(|e| e.to_string());
            assert_eq!(got.as_deref().map_err(String::as_str), *want, "{text}");
        }
    }

    #[test]
    fn generated_names_are_dns_label_prefixes_of_the_directory_name() {
        let long = "a".repeat(60);
        let cases: &[(&str, &str)] = &[
            ("My App", "my-app-"),
            ("app", "app-"),
            ("web_frontend.v2", "web-frontend-v2-"),
            ("--weird--", "weird-"),
            ("2024 release", "2024-release-"),
            ("Café Menü", "caf-men-"),
            ("", "local-"),
            ("...", "local-"),
            ("日本", "local-"),
            (&long, &format!("{}-", "a".repeat(MAX_PREFIX))),
        ];
        for (dir, want) in cases {
            assert_eq!(generate_name(dir), *want, "{dir:?}");
        }
        // A cut never leaves `--`.
        let cut = format!("{}-b", "a".repeat(MAX_PREFIX - 1));
        assert_eq!(
            generate_name(&cut),
            format!("{}-", "a".repeat(MAX_PREFIX - 1))
        );
    }

    #[test]
    fn the_build_declares_the_packed_context_and_the_flags() {
        let args = LocalBuildArgs {
            dir: "/src/My App".into(),
            dockerfile: "./docker/Dockerfile".into(),
            target: Some("runtime".into()),
            build_args: vec![
                ("B".into(), "2".into()),
                ("A".into(), "1".into()),
                ("B".into(), "3".into()),
            ],
            platforms: vec!["linux/amd64".into(), "linux/arm64".into()],
            image: "registry.example.com/team/app:dev".into(),
            push_secret: Some("push".into()),
            ..LocalBuildArgs::default()
        };
        let build = local_build(
            &args,
            "team",
            "My App",
            "docker/Dockerfile",
            &digest(),
            10240,
        );
        let yaml = serde_yaml::to_string(&build).unwrap();
        assert_eq!(
            yaml,
            format!(
                "\
apiVersion: kiln.dev/v1alpha1
kind: Build
metadata:
  generateName: my-app-
  namespace: team
spec:
  source:
    local:
      digest: {}
      size: 10240
  dockerfile: docker/Dockerfile
  target: runtime
  buildArgs:
    A: '1'
    B: '3'
  platforms:
  - linux/amd64
  - linux/arm64
  output:
    image: registry.example.com/team/app:dev
    pushSecretRef:
      name: push
  cache:
    mode: Max
    scope: Build
  builder: {{}}
  timeout: 1h
  retries: 2
  concurrency:
    policy: Queue
  cancel: false
",
                digest()
            )
        );
        let named = LocalBuildArgs {
            name: Some("app-dev".into()),
            image: "registry.example.com/team/app:dev".into(),
            ..LocalBuildArgs::default()
        };
        let build = local_build(&named, "team", "My App", "Dockerfile", &digest(), 2048);
        assert_eq!(build.metadata.name.as_deref(), Some("app-dev"));
        assert_eq!(build.metadata.generate_name, None);
        assert_eq!(build.spec.output.push_secret_ref, None);
        assert!(build.spec.build_args.is_empty());
    }

    #[test]
    fn sizes_rates_and_progress_read_well() {
        let mib = 1u64 << 20;
        let cases: &[(Transfer, &str)] = &[
            (
                Transfer {
                    offset: 0,
                    total: 120 * mib,
                    sent: 0,
                    elapsed: Duration::ZERO,
                },
                "uploading 0 B / 120.0 MiB (0%)",
            ),
            (
                Transfer {
                    offset: 48 * mib,
                    total: 120 * mib,
                    sent: 48 * mib,
                    elapsed: Duration::from_secs(4),
                },
                "uploading 48.0 MiB / 120.0 MiB (40%), 12.0 MiB/s, ETA 6s",
            ),
            (
                Transfer {
                    offset: 100 * mib,
                    total: 120 * mib,
                    sent: 20 * mib,
                    elapsed: Duration::from_secs(10),
                },
                "uploading 100.0 MiB / 120.0 MiB (83%), 2.0 MiB/s, ETA 10s",
            ),
            (
                Transfer {
                    offset: 3 << 30,
                    total: 3 << 30,
                    sent: 3 << 30,
                    elapsed: Duration::from_secs(300),
                },
                "uploading 3.0 GiB / 3.0 GiB (100%), 10.2 MiB/s",
            ),
            (
                Transfer {
                    offset: mib,
                    total: 600 * mib,
                    sent: mib,
                    elapsed: Duration::from_secs(1),
                },
                "uploading 1.0 MiB / 600.0 MiB (0%), 1.0 MiB/s, ETA 9m59s",
            ),
        ];
        for (transfer, want) in cases {
            assert_eq!(progress_text(transfer), *want);
        }
        assert_eq!(format_binary_size(512), "512 B");
        assert_eq!(format_binary_size(1536), "1.5 KiB");
        assert_eq!(
            upload_summary(120 * mib, Duration::from_secs(10)),
            "uploaded 120.0 MiB in 10s (12.0 MiB/s)"
        );
        assert_eq!(upload_summary(0, Duration::ZERO), "uploaded 0 B in 0s");
    }

    #[test]
    fn plain_progress_lines_come_every_tenth() {
        let at_offset = |offset| Transfer {
            offset,
            total: 1000,
            sent: offset,
            elapsed: Duration::from_secs(1),
        };
        let cases: &[(u64, u64, Option<u64>)] = &[
            (0, 50, None),
            (0, 100, Some(1)),
            (1, 199, None),
            (1, 350, Some(3)),
            (3, 1000, Some(10)),
            (10, 1000, None),
        ];
        for (last, offset, want) in cases {
            assert_eq!(
                plain_report_due(*last, &at_offset(*offset)),
                *want,
                "{last} {offset}"
            );
        }
        assert_eq!(
            plain_report_due(
                0,
                &Transfer {
                    offset: 0,
                    total: 0,
                    sent: 0,
                    elapsed: Duration::ZERO
                }
            ),
            Some(10)
        );
    }

    #[test]
    fn retries_back_off_to_eight_seconds() {
        let delays: Vec<u64> = (0..7).map(|t| retry_delay(t).as_millis() as u64).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 8000, 8000]);
    }

    #[test]
    fn the_pack_summary_names_what_was_left_out() {
        let mut report = PackReport {
            files: 1234,
            directories: 10,
            symlinks: 0,
            content_bytes: 40 << 20,
            tar_bytes: 42 << 20,
            digest: Digest::of(b"tar"),
            largest: Vec::new(),
            skipped: Vec::new(),
        };
        let short = Digest::of(b"tar").short();
        assert_eq!(
            pack_summary("./app", &report),
            format!("packed ./app: 1234 files, 42.0 MiB, sha256:{short}")
        );
        report.files = 1;
        report.skipped = ["a.sock", "fifo", "dev/null", "more"]
            .iter()
            .zip([
                SkippedKind::Socket,
                SkippedKind::Fifo,
                SkippedKind::CharDevice,
                SkippedKind::Other,
            ])
            .map(|(path, kind)| SkippedEntry {
                path: (*path).into(),
                kind,
            })
            .collect();
        assert_eq!(
            pack_summary("./app", &report),
            format!(
                "packed ./app: 1 file, 42.0 MiB, sha256:{short}; left out 4 entries a tar cannot hold: a.sock (socket), fifo (FIFO), dev/null (character device) and 1 more"
            )
        );
        assert_eq!(
            describe_largest(&[
                SizedPath {
                    path: "data/model.bin".into(),
                    bytes: 3 << 30
                },
                SizedPath {
                    path: "a.iso".into(),
                    bytes: 700 << 20
                },
            ]),
            "data/model.bin (3.0 GiB), a.iso (700.0 MiB)"
        );
    }

    fn pod(name: &str, ip: Option<&str>, context: Option<ContainerState>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec: None,
            status: Some(PodStatus {
                phase: Some("Pending".into()),
                pod_ip: ip.map(Into::into),
                init_container_statuses: context.map(|state| {
                    vec![ContainerStatus {
                        name: CONTEXT_CONTAINER.into(),
                        state: Some(state),
                        ..ContainerStatus::default()
                    }]
                }),
                ..PodStatus::default()
            }),
        }
    }

    fn running() -> ContainerState {
        ContainerState {
            running: Some(ContainerStateRunning::default()),
            ..ContainerState::default()
        }
    }

    fn waiting(reason: &str) -> ContainerState {
        ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.into()),
                message: None,
            }),
            ..ContainerState::default()
        }
    }

    fn exited(code: i32) -> ContainerState {
        ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: code,
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        }
    }

    fn with_phase(phase: Phase, reason: Reason, message: Option<&str>) -> Build {
        let mut status = BuildStatus {
            phase: Some(phase),
            message: message.map(Into::into),
            ..BuildStatus::default()
        };
        set_condition(
            &mut status.conditions,
            CONDITION_SUCCEEDED,
            if phase == Phase::Succeeded {
                ConditionStatus::True
            } else {
                ConditionStatus::False
            },
            reason,
            message.unwrap_or_default(),
            Some(1),
            at(0),
        );
        if phase == Phase::Succeeded {
            status.output = Some(OutputStatus {
                image: "registry.example.com/team/app:latest".into(),
                digest: format!("{}", Digest::of(b"image")),
                short_digest: Digest::of(b"image").short(),
                ..OutputStatus::default()
            });
        }
        Build::test("app")
            .local(&digest().to_string(), 10240)
            .with_status(status)
    }

    fn step(build: &Build, pods: &[Pod]) -> String {
        match receiver_step(build, pods) {
            ReceiverStep::Ended(end) => format!("ended: {}", describe_end(&end)),
            ReceiverStep::Received => "received".to_owned(),
            ReceiverStep::Receiver(pod) => format!("upload to {pod}"),
            ReceiverStep::Wait(why) => why,
        }
    }

    #[test]
    fn the_receiver_is_the_first_pod_whose_context_container_runs() {
        let new = Build::test("app").local(&digest().to_string(), 10240);
        let queued = with_phase(Phase::Pending, Reason::Queued, Some("waiting for app-0"));
        let failed = with_phase(
            Phase::Failed,
            Reason::InvalidSpec,
            Some("spec.source.local needs the cache service"),
        );
        let succeeded = with_phase(Phase::Succeeded, Reason::Succeeded, None);
        let mut deleting = pod("app-1", Some("10.0.0.1"), Some(running()));
        deleting.metadata.deletion_timestamp = Some(Time(at(5)));
        let mut unscheduled = pod("app-2", None, None);
        if let Some(s) = unscheduled.status.as_mut() {
            s.phase = Some("Pending".into());
        }
        let cases: &[(&str, &Build, Vec<Pod>, &str)] = &[
            (
                "a new Build",
                &new,
                vec![],
                "waiting for the build pod to start (Build Pending: not yet seen by the controller)",
            ),
            (
                "a queued Build",
                &queued,
                vec![],
                "waiting for the build pod to start (Build Pending, Queued: waiting for app-0)",
            ),
            (
                "an ended Build, even with a receiver",
                &failed,
                vec![pod("app-1", Some("10.0.0.1"), Some(running()))],
                "ended: Failed (InvalidSpec): spec.source.local needs the cache service",
            ),
            (
                "a pod not scheduled yet",
                &queued,
                vec![unscheduled],
                "waiting for the build pod to start (pod app-2 Pending)",
            ),
            (
                "a pod pulling the image",
                &queued,
                vec![pod("app-1", None, Some(waiting("ContainerCreating")))],
                "waiting for the build pod to start (pod app-1 Pending: context ContainerCreating)",
            ),
            (
                "a running receiver without an IP yet",
                &queued,
                vec![pod("app-1", None, Some(running()))],
                "waiting for the build pod to start (pod app-1 Pending)",
            ),
            (
                "a running receiver",
                &queued,
                vec![pod("app-1", Some("10.0.0.1"), Some(running()))],
                "upload to app-1",
            ),
            (
                "native pods: the first by name",
                &queued,
                vec![
                    pod("app-1-linux-arm64", Some("10.0.0.2"), Some(running())),
                    pod("app-1-linux-amd64", Some("10.0.0.1"), Some(running())),
                ],
                "upload to app-1-linux-amd64",
            ),
            (
                "a pod being deleted is skipped",
                &queued,
                vec![deleting, pod("app-2", Some("10.0.0.2"), Some(running()))],
                "upload to app-2",
            ),
            (
                "a receiver that exited 0: the context is stored",
                &queued,
                vec![
                    pod("app-1-linux-amd64", Some("10.0.0.1"), Some(running())),
                    pod("app-1-linux-arm64", Some("10.0.0.2"), Some(exited(0))),
                ],
                "received",
            ),
            (
                "a Build that failed after its receiver took the context",
                &failed,
                vec![pod("app-1", Some("10.0.0.1"), Some(exited(0)))],
                "received",
            ),
            (
                "a Build that succeeded between two polls, its pod gone",
                &succeeded,
                vec![],
                "received",
            ),
            (
                "a receiver that failed is no receiver",
                &queued,
                vec![pod("app-1", Some("10.0.0.1"), Some(exited(1)))],
                "waiting for the build pod to start (pod app-1 Pending)",
            ),
        ];
        for (case, build, pods, want) in cases {
            assert_eq!(step(build, pods), *want, "{case}");
        }
    }

    #[test]
    fn the_receivers_status_says_what_to_send() {
        let status = |state, received, size| UploadStatus {
            state,
            received,
            size,
            digest: digest(),
            from_cache: false,
        };
        let cases: &[(&str, UploadStatus, StatusAction)] = &[
            (
                "found in the cache",
                status(UploadState::Done, 0, 4096),
                StatusAction::Done,
            ),
            (
                "still looking in the cache",
                status(UploadState::Checking, 0, 4096),
                StatusAction::Poll("pod app-1 is looking for the context in the cache".into()),
            ),
            (
                "storing",
                status(UploadState::Storing, 4096, 4096),
                StatusAction::Poll("pod app-1 is storing the context".into()),
            ),
            (
                "waiting for everything",
                status(UploadState::Waiting, 0, 4096),
                StatusAction::Upload { from: 0 },
            ),
            (
                "resume",
                status(UploadState::Waiting, 2048, 4096),
                StatusAction::Upload { from: 2048 },
            ),
            (
                "all bytes in, done not seen",
                status(UploadState::Waiting, 4096, 4096),
                StatusAction::Finish,
            ),
            (
                "more than the size",
                status(UploadState::Waiting, 5000, 4096),
                StatusAction::Mismatch(
                    "pod app-1 has received 5000 bytes of a 4096-byte context".into(),
                ),
            ),
            (
                "another size",
                status(UploadState::Waiting, 0, 1024),
                StatusAction::Mismatch(format!(
                    "pod app-1 expects a context {} of 1024 bytes, but the directory packs to {} of 4096 bytes (was the Build edited?)",
                    digest(),
                    digest()
                )),
            ),
        ];
        for (case, status, want) in cases {
            assert_eq!(on_status("app-1", status, &digest(), 4096), *want, "{case}");
        }
    }

    #[test]
    fn answers_are_sorted_by_code_and_body() {
        let status = UploadStatus {
            state: UploadState::Waiting,
            received: 8,
            size: 16,
            digest: digest(),
            from_cache: false,
        };
        let status_json = serde_json::to_string(&status).unwrap();
        let conflict = serde_json::to_string(&UploadError {
            message: "expected offset 8".into(),
            status: Some(status.clone()),
        })
        .unwrap();
        let refused = serde_json::to_string(&UploadError {
            message: "the tar's digest is not the declared one".into(),
            status: None,
        })
        .unwrap();
        let kube = |code: u16, message: &str| {
            serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": message, "code": code,
            })
            .to_string()
        };
        let forbidden = kube(
            403,
            "pods \"app-1\" is forbidden: User \"dev\" cannot create resource \"pods/proxy\" in API group \"\" in the namespace \"team\"",
        );
        let cases: &[(&str, u16, String, Answer)] = &[
            ("ok", 200, status_json.clone(), Answer::Status(status.clone())),
            (
                "ok but not a status",
                200,
                "hello".into(),
                Answer::Unexpected(200, "expected value at line 1 column 1: hello".into()),
            ),
            (
                "a conflict with the receiver's state",
                409,
                conflict,
                Answer::Conflict(Some(status.clone()), "expected offset 8".into()),
            ),
            (
                "a refusal",
                400,
                refused,
                Answer::Refused("the tar's digest is not the declared one".into()),
            ),
            (
                "forbidden",
                403,
                forbidden,
                Answer::Forbidden(
                    "pods \"app-1\" is forbidden: User \"dev\" cannot create resource \"pods/proxy\" in API group \"\" in the namespace \"team\"".into(),
                ),
            ),
            (
                "the pod is gone",
                404,
                kube(404, "pods \"app-1\" not found"),
                Answer::PodGone,
            ),
            (
                "a 404 not from the API server",
                404,
                "404 page not found".into(),
                Answer::Refused("404 page not found".into()),
            ),
            (
                "nothing listens yet",
                503,
                kube(
                    503,
                    "error trying to reach service: dial tcp 10.0.0.1:8080: connect: connection refused",
                ),
                Answer::Transient(
                    "error trying to reach service: dial tcp 10.0.0.1:8080: connect: connection refused".into(),
                ),
            ),
            (
                "a bad gateway without a Status",
                502,
                "Bad Gateway".into(),
                Answer::Transient("502: Bad Gateway".into()),
            ),
            (
                "the receiver failed",
                500,
                serde_json::to_string(&UploadError {
                    message: "writing the spool: disk full".into(),
                    status: Some(status.clone()),
                })
                .unwrap(),
                Answer::Transient("writing the spool: disk full".into()),
            ),
            (
                "another API refusal",
                422,
                kube(422, "invalid"),
                Answer::Unexpected(422, "invalid".into()),
            ),
            ("a redirect", 302, String::new(), Answer::Unexpected(302, String::new())),
        ];
        for (case, code, body, want) in cases {
            assert_eq!(classify(*code, body.as_bytes()), *want, "{case}");
        }
    }

    #[test]
    fn the_end_of_a_build_names_phase_reason_message_and_pushed_image() {
        let succeeded = with_phase(Phase::Succeeded, Reason::Succeeded, None);
        let failed = with_phase(
            Phase::Failed,
            Reason::BuildFailed,
            Some("RUN make exited with 2\nsee the log"),
        );
        let running = with_phase(Phase::Running, Reason::Running, None);
        assert_eq!(build_end(&running), None);
        let cases: &[(&Build, String)] = &[
            (
                &succeeded,
                format!(
                    "Build default/app Succeeded (Succeeded)\npushed registry.example.com/team/app:latest@{}\n",
                    Digest::of(b"image")
                ),
            ),
            (
                &failed,
                "Build default/app Failed (BuildFailed): RUN make exited with 2 see the log\n"
                    .into(),
            ),
        ];
        for (build, want) in cases {
            let end = build_end(build).unwrap();
            assert_eq!(final_report("default", "app", &end), *want);
        }
    }
}
