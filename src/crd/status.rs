//! The Build's status: phase, conditions, the current attempt and a bounded history of
//! attempts, and the pushed image (pure).
//!
//! Only the controller writes it, through the status subresource. Strings that come from a
//! build pod (termination messages) are truncated before they are stored, so that the status
//! stays small whatever a build prints.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::condition::{CONDITION_SUCCEEDED, Reason, find_condition};

/// Most entries of `status.cacheLeases` (the running attempt's lease and releases still
/// owed; in practice one or two).
pub const MAX_CACHE_LEASES: usize = 64;

/// Longest message stored in a status field; longer ones are cut at a character boundary
/// and end with `…`.
pub const MAX_STATUS_MESSAGE: usize = 1024;

/// Where a Build is in its lifecycle: Pending → Running → Succeeded | Failed | Cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    /// Accepted and waiting: queued, waiting for a retry, or its pod is being created.
    Pending,
    /// The build pod runs.
    Running,
    /// The image was pushed; `status.output.digest` holds its digest.
    Succeeded,
    /// The build failed, timed out, or its spec is invalid.
    Failed,
    /// The build was cancelled (`spec.cancel`, or superseded in its concurrency group).
    Cancelled,
}

impl Phase {
    /// Whether the phase is final for the current generation.
    pub const fn is_terminal(self) -> bool {
        match self {
            Phase::Pending | Phase::Running => false,
            Phase::Succeeded | Phase::Failed | Phase::Cancelled => true,
        }
    }

    /// The phase as written in `status.phase`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
            Phase::Cancelled => "Cancelled",
        }
    }
}

/// How one attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AttemptResult {
    /// The image was pushed.
    Succeeded,
    /// The attempt failed (the reason says whether it was retried).
    Failed,
    /// The attempt was stopped: cancelled, superseded, or its Build was deleted.
    Cancelled,
}

/// Observed state of a Build.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildStatus {
    /// Pending, Running, Succeeded, Failed or Cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// `Succeeded` and `Ready`, with one of the documented reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Number of the latest attempt (1 for the first); attempts are numbered across the
    /// Build's whole life and never reused.
    #[serde(default)]
    pub attempt: u32,

    /// Infrastructure retries spent on the current generation, at most `spec.retries`.
    #[serde(default)]
    pub retries: u32,

    /// The latest attempts, oldest first, at most `spec.retention.attemptHistory`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<AttemptRecord>,

    /// The pushed image, once the build succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputStatus>,

    /// When the current generation's first attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,

    /// When the current generation reached a final phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,

    /// What happened, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// The last value of the `kiln.dev/rerun` annotation that was acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun_token: Option<String>,

    /// The platforms of the current attempt of a `Native` multi-platform build, in the
    /// order of `spec.platforms`: each one's pod, phase, timing and pushed manifest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub platforms: Vec<PlatformStatus>,

    /// How many of `status.platforms` have pushed, for `kubectl get` (`1/2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_progress: Option<String>,

    /// Leases on the build cache this Build may still hold: the running attempt's, and those
    /// of ended attempts whose release has not been confirmed yet. A release that fails is
    /// retried from this list (it survives a controller restart) until it succeeds or the
    /// lease has lapsed on its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub cache_leases: Vec<CacheLease>,

    /// Stored build logs of attempts that left the history (`attemptHistory`), whose
    /// deletion from the cache is not confirmed yet: `<repository>:<tag>`. A deletion that
    /// fails is retried from this list, and the finalizer deletes what is left.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub expired_logs: Vec<String>,

    /// The base images the latest successful attempt resolved through Kiln's pull-through
    /// mirror, by tag: what `spec.triggers.baseImageChanged` watches. Bases pulled from a
    /// registry directly, or named by digest, are not listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub base_images: Vec<BaseImage>,

    /// Where the watch of `status.baseImages` stands: the attempt they were read for, the
    /// last check, and the last change that started an attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_image_check: Option<BaseImageCheck>,
}

/// A base image an attempt resolved by tag through Kiln's mirror.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BaseImage {
    /// The image and tag, as the Dockerfile names it through the mirror
    /// (`docker.io/library/alpine:3.20`).
    #[schemars(length(max = 512))]
    pub image: String,
    /// The digest the tag resolved to.
    #[schemars(regex(pattern = r"^sha256:[a-f0-9]{64}$"))]
    pub digest: String,
}

/// Where the watch of a Build's base images stands.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BaseImageCheck {
    /// The successful attempt whose base images `status.baseImages` lists.
    #[serde(default)]
    pub attempt: u32,
    /// When the tags were last resolved upstream (or read, for a new attempt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked_at: Option<Time>,
    /// The last base image change that started an attempt. The same new digest never
    /// starts a second one, whether that attempt succeeded or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_trigger: Option<BaseImageChange>,
}

/// A base image tag that moved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BaseImageChange {
    /// The image and tag.
    #[schemars(length(max = 512))]
    pub image: String,
    /// The digest the last successful attempt built on.
    #[schemars(regex(pattern = r"^sha256:[a-f0-9]{64}$"))]
    pub from: String,
    /// The digest the tag points at now.
    #[schemars(regex(pattern = r"^sha256:[a-f0-9]{64}$"))]
    pub to: String,
    /// The attempt it started.
    pub attempt: u32,
}

/// A lease on the build cache, held for one attempt so that the cache's garbage collector
/// never removes what the attempt imports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CacheLease {
    /// The lease's name on the cache service (`build-<uid>-<attempt>`).
    pub name: String,
    /// The attempt it was taken for.
    pub attempt: u32,
    /// Unset while the attempt runs (the lease is renewed); once the attempt has ended, the
    /// latest time the lease can still be held, after which it has lapsed by itself and
    /// needs no release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lapses_at: Option<Time>,
}

/// One attempt: one build pod.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptRecord {
    /// The attempt's number.
    pub attempt: u32,
    /// Name of its pod.
    pub pod_name: String,
    /// UID of its pod, once the controller has seen the pod.
    #[serde(default, rename = "podUID", skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// The Build generation it built.
    pub generation: i64,
    /// When it started.
    pub start_time: Time,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// How it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<AttemptResult>,
    /// Why it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// What happened, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The digest it pushed, when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// When its finished pod (and with it the build log) is deleted, from
    /// `spec.retention.succeededPodTTL` or `failedPodTTL`. Unset while the attempt runs, and
    /// when it ended without a finished pod to keep (a pod stopped by a cancel, a timeout or
    /// a supersede is deleted at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_retained_until: Option<Time>,
    /// Where the attempt's build log is kept once its pod is gone: set when the log was
    /// stored in Kiln's cache (`kubectl kiln logs --attempt N` reads it there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<StoredLog>,
}

/// A build log kept in Kiln's cache as an OCI artifact (one `text/plain` blob).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoredLog {
    /// The repository on the cache service (`[<path>/]<namespace>/kiln_logs`).
    #[schemars(length(max = 255))]
    pub repository: String,
    /// The tag (`build-<Build UID>-<attempt>`).
    #[schemars(length(max = 128))]
    pub tag: String,
    /// Digest of the artifact's manifest.
    #[schemars(regex(pattern = r"^sha256:[a-f0-9]{64}$"))]
    pub digest: String,
    /// Bytes kept.
    pub size: u64,
    /// Bytes cut from the head of a log longer than the controller keeps
    /// (`--log-max-bytes`); the tail is what is kept.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub truncated_bytes: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One platform of a `Native` multi-platform attempt: its own pod, retried on its own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlatformStatus {
    /// The platform, as written in `spec.platforms` (`linux/arm64`).
    pub platform: String,
    /// The Build attempt this platform belongs to.
    pub attempt: u32,
    /// Pending (waiting for its pod, or for a retry), Running, Succeeded, Failed or
    /// Cancelled (stopped because the attempt ended).
    pub phase: Phase,
    /// Name of its current pod.
    pub pod_name: String,
    /// UID of its current pod, once the controller has seen the pod.
    #[serde(default, rename = "podUID", skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// Retries spent on this platform in this attempt, at most `spec.retries`.
    #[serde(default)]
    pub retries: u32,
    /// When its current pod was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When its last pod ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Why it is where it is (the reasons of the Build's conditions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// What happened, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Digest of the single-platform manifest it pushed (by digest, untagged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// The image a Build pushed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutputStatus {
    /// The pushed reference (`spec.output.image`).
    pub image: String,
    /// Digest of the pushed manifest or index, `sha256:<64 hex>`.
    #[schemars(regex(pattern = r"^sha256:[a-f0-9]{64}$"))]
    pub digest: String,
    /// The first 12 hex characters of the digest, for `kubectl get`.
    pub short_digest: String,
    /// The attestations pushed with the image (`provenance`, `sbom`): the digest is then
    /// an index of the image and its attestation manifests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attestations: Vec<String>,
    /// Where the image's signature is (`<repository>:sha256-<hex>.sig`), when
    /// `spec.signing` signed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl BuildStatus {
    /// The reason of the `Succeeded` condition, when it carries a known one.
    pub fn reason(&self) -> Option<Reason> {
        let condition = find_condition(&self.conditions, CONDITION_SUCCEEDED)?;
        Reason::ALL
            .into_iter()
            .find(|r| r.as_str() == condition.reason)
    }

    /// The record of the current attempt (`status.attempt`), if it is in the history.
    pub fn current_attempt(&self) -> Option<&AttemptRecord> {
        self.attempts.iter().find(|a| a.attempt == self.attempt)
    }

    /// The current attempt's record, mutably.
    pub fn current_attempt_mut(&mut self) -> Option<&mut AttemptRecord> {
        let current = self.attempt;
        self.attempts.iter_mut().find(|a| a.attempt == current)
    }
}

/// Cuts `text` to at most [`MAX_STATUS_MESSAGE`] bytes at a character boundary, marking the
/// cut with `…`. Build output is unbounded; the status must not be.
pub fn truncate_message(text: &str) -> String {
    let text = text.trim();
    if text.len() <= MAX_STATUS_MESSAGE {
        return text.to_owned();
    }
    let mut end = MAX_STATUS_MESSAGE - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_message_keeps_short_text_and_cuts_long_text_on_a_char_boundary() {
        assert_eq!(truncate_message("  ok \n"), "ok");
        let long = "é".repeat(MAX_STATUS_MESSAGE);
        let cut = truncate_message(&long);
        assert!(cut.len() <= MAX_STATUS_MESSAGE);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn terminal_phases() {
        let terminal: Vec<_> = [
            Phase::Pending,
            Phase::Running,
            Phase::Succeeded,
            Phase::Failed,
            Phase::Cancelled,
        ]
        .into_iter()
        .filter(|p| p.is_terminal())
        .collect();
        assert_eq!(
            terminal,
            [Phase::Succeeded, Phase::Failed, Phase::Cancelled]
        );
    }
}
