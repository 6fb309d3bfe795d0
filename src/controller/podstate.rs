//! What a build pod's status says happened: still waiting, running, succeeded with a digest,
//! or failed, and whether that failure is worth a retry (pure).
//!
//! The line between retried and not retried: the infrastructure failed (eviction,
//! preemption, node shutdown or loss, an image pull that keeps failing) → retry; the build
//! failed (a Dockerfile step, out of memory, no digest) or ran out of time → do not, because
//! the next attempt would fail the same way.

use std::str::FromStr;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use crate::crd::Reason;
use crate::crd::status::truncate_message;
use crate::oci::digest::Digest;

/// Name of the builder container.
pub const BUILD_CONTAINER: &str = "build";
/// Name of the init container that fetches an OCI context.
pub const FETCH_CONTAINER: &str = "fetch-context";
/// Name of the init container that receives (or takes from the cache) the uploaded
/// context of a `spec.source.local` Build.
pub const CONTEXT_CONTAINER: &str = "context";
/// Name of the container of a native build's index pod (`kiln index push`), which writes
/// the index digest to its termination message as the build container writes the image's.
pub const INDEX_CONTAINER: &str = "index";

/// Name of the container that signs the pushed image after the build of a signed
/// single-pod attempt (`kiln sign`); it writes the build's metadata to its termination
/// message once the signature is pushed.
pub const SIGN_CONTAINER: &str = "sign";

/// The key of BuildKit's `--metadata-file` that holds the pushed manifest's digest.
pub const DIGEST_KEY: &str = "containerimage.digest";

/// Pod `status.reason` values the kubelet or the control plane set when they stopped a pod
/// for reasons of their own (not the build's).
const DISRUPTION_REASONS: [&str; 9] = [
    "Evicted",
    "Preempting",
    "Shutdown",
    "NodeShutdown",
    "Terminated",
    "UnexpectedAdmissionError",
    "OutOfcpu",
    "OutOfmemory",
    "NodeAffinity",
];

/// Where a build pod is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodState {
    /// Not running yet: being scheduled, pulling images, or running its init container.
    Waiting,
    /// The `context` init container waits for the uploaded context of a `source.local`
    /// Build (or takes it from the cache).
    ReceivingContext,
    /// The builder runs.
    Running,
    /// The builder exited 0; its termination message holds BuildKit's metadata.
    Succeeded {
        /// The builder container's termination message.
        termination_message: Option<String>,
    },
    /// The attempt failed.
    Failed(Failure),
}

/// A failed attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Why, as a Build reason.
    pub reason: Reason,
    /// Whether another attempt could succeed.
    pub retriable: bool,
    /// What happened, for people (truncated).
    pub message: String,
}

impl Failure {
    fn new(reason: Reason, retriable: bool, message: impl AsRef<str>) -> Self {
        Self {
            reason,
            retriable,
            message: truncate_message(message.as_ref()),
        }
    }
}

/// Whether the pod still runs (or may still run): anything but `Succeeded` or `Failed`,
/// including a pod that is being deleted.
pub fn is_live(pod: &Pod) -> bool {
    !matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Classifies a build pod.
pub fn classify(pod: &Pod) -> PodState {
    let Some(status) = pod.status.as_ref() else {
        return PodState::Waiting;
    };
    let containers = status.container_statuses.as_deref().unwrap_or_default();
    let init_containers = status
        .init_container_statuses
        .as_deref()
        .unwrap_or_default();
    let pod_reason = status.reason.as_deref().unwrap_or_default();
    let pod_message = status.message.as_deref().unwrap_or_default();
    let disrupted = status
        .conditions
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "DisruptionTarget" && c.status == "True");

    match status.phase.as_deref() {
        Some("Succeeded") => PodState::Succeeded {
            termination_message: containers
                .iter()
                .find(|c| {
                    matches!(
                        c.name.as_str(),
                        BUILD_CONTAINER | INDEX_CONTAINER | SIGN_CONTAINER
                    )
                })
                .and_then(terminated_message),
        },
        Some("Failed") => PodState::Failed(classify_failure(
            pod_reason,
            pod_message,
            disrupted,
            init_containers,
            containers,
        )),
        Some("Unknown") => PodState::Failed(Failure::new(
            Reason::PodLost,
            true,
            "the node running the pod stopped reporting its state",
        )),
        Some("Running") => PodState::Running,
        _ => match classify_waiting(init_containers.iter().chain(containers)) {
            PodState::Waiting if receiving_context(init_containers) => PodState::ReceivingContext,
            // A signed attempt builds in its last init container: the pod is Pending while
            // the build runs.
            PodState::Waiting if init_running(init_containers, BUILD_CONTAINER) => {
                PodState::Running
            }
            state => state,
        },
    }
}

fn classify_failure(
    pod_reason: &str,
    pod_message: &str,
    disrupted: bool,
    init_containers: &[ContainerStatus],
    containers: &[ContainerStatus],
) -> Failure {
    if pod_reason == "DeadlineExceeded" {
        return Failure::new(
            Reason::TimedOut,
            false,
            "the pod ran longer than spec.timeout (activeDeadlineSeconds)",
        );
    }
    if disrupted || DISRUPTION_REASONS.contains(&pod_reason) {
        let why = if pod_message.is_empty() {
            pod_reason
        } else {
            pod_message
        };
        return Failure::new(
            Reason::PodEvicted,
            true,
            format!("the pod was stopped by the cluster: {why}"),
        );
    }
    if pod_reason == "NodeLost" {
        return Failure::new(Reason::PodLost, true, "the pod's node was lost");
    }
    for container in init_containers.iter().chain(containers) {
        let Some(terminated) = container.state.as_ref().and_then(|s| s.terminated.as_ref()) else {
            continue;
        };
        if terminated.exit_code == 0 {
            continue;
        }
        if terminated.reason.as_deref() == Some("OOMKilled") {
            return Failure::new(
                Reason::BuildFailed,
                false,
                format!(
                    "container {} ran out of memory; raise spec.builder.resources.limits.memory",
                    container.name
                ),
            );
        }
        let output = terminated.message.as_deref().unwrap_or_default().trim();
        let what = match container.name.as_str() {
            FETCH_CONTAINER => "fetching the OCI context (spec.source.oci.image) failed",
            CONTEXT_CONTAINER => "receiving the uploaded context (spec.source.local) failed",
            INDEX_CONTAINER => "pushing the image index failed",
            SIGN_CONTAINER => "the image was pushed, but signing it failed",
            _ => "the build failed",
        };
        let reason = if container.name == SIGN_CONTAINER {
            Reason::SigningFailed
        } else {
            Reason::BuildFailed
        };
        let message = if output.is_empty() {
            format!(
                "{what}: container {} exited with code {}",
                container.name, terminated.exit_code
            )
        } else {
            format!(
                "{what}: container {} exited with code {}: {}",
                container.name,
                terminated.exit_code,
                tail(output)
            )
        };
        return Failure::new(reason, false, message);
    }
    let why = [pod_reason, pod_message]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(": ");
    Failure::new(
        Reason::PodLost,
        true,
        format!("the pod failed before its containers ran ({why})"),
    )
}

/// Whether the `context` init container runs.
fn receiving_context(init_containers: &[ContainerStatus]) -> bool {
    init_running(init_containers, CONTEXT_CONTAINER)
}

/// Whether init container `name` runs.
fn init_running(init_containers: &[ContainerStatus], name: &str) -> bool {
    init_containers
        .iter()
        .any(|c| c.name == name && c.state.as_ref().is_some_and(|s| s.running.is_some()))
}

fn classify_waiting<'a>(containers: impl Iterator<Item = &'a ContainerStatus>) -> PodState {
    for container in containers {
        let Some(waiting) = container.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let detail = waiting.message.as_deref().unwrap_or_default();
        match waiting.reason.as_deref() {
            // ErrImagePull alone may be a blip the kubelet retries; BackOff means it failed
            // at least twice.
            Some("ImagePullBackOff") => {
                return PodState::Failed(Failure::new(
                    Reason::ImagePullFailed,
                    true,
                    format!("cannot pull image {}: {detail}", container.image),
                ));
            }
            Some("InvalidImageName" | "ErrImageNeverPull") => {
                return PodState::Failed(Failure::new(
                    Reason::ImagePullFailed,
                    false,
                    format!("cannot pull image {}: {detail}", container.image),
                ));
            }
            _ => {}
        }
    }
    PodState::Waiting
}

fn terminated_message(container: &ContainerStatus) -> Option<String> {
    container
        .state
        .as_ref()?
        .terminated
        .as_ref()?
        .message
        .clone()
}

/// The last few lines of build output: the part that says what failed.
fn tail(output: &str) -> String {
    const LINES: usize = 6;
    let lines: Vec<&str> = output.lines().collect();
    lines[lines.len().saturating_sub(LINES)..].join("\n")
}

/// Why no digest could be read from a succeeded pod.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestProblem {
    /// The termination message is empty.
    #[error("the builder wrote no metadata to its termination message")]
    Missing,
    /// The metadata has no `containerimage.digest`.
    #[error("the builder's metadata has no {DIGEST_KEY}")]
    NoDigestKey,
    /// The value is not a sha256 digest.
    #[error("the builder's {DIGEST_KEY} is invalid: {0}")]
    Invalid(#[from] crate::oci::digest::DigestError),
}

/// Reads the pushed image's digest from BuildKit's metadata (the builder's termination
/// message). The message is JSON; if the kubelet cut it short (it keeps 4 KiB), the key is
/// searched for in the raw text.
pub fn pushed_digest(termination_message: Option<&str>) -> Result<Digest, DigestProblem> {
    let text = termination_message
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(DigestProblem::Missing)?;
    if let Ok(serde_json::Value::Object(metadata)) = serde_json::from_str(text) {
        let value = metadata
            .get(DIGEST_KEY)
            .and_then(|v| v.as_str())
            .ok_or(DigestProblem::NoDigestKey)?;
        return Ok(Digest::from_str(value)?);
    }
    let key = format!("\"{DIGEST_KEY}\"");
    let after_key = text.find(&key).ok_or(DigestProblem::NoDigestKey)? + key.len();
    let rest = &text[after_key..];
    let start = rest.find('"').ok_or(DigestProblem::NoDigestKey)? + 1;
    let end = rest[start..].find('"').ok_or(DigestProblem::NoDigestKey)?;
    Ok(Digest::from_str(&rest[start..start + end])?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures::PodFixture;

    const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    #[test]
    fn phases() {
        assert_eq!(classify(&PodFixture::new("p", 1).pod), PodState::Waiting);
        assert_eq!(
            classify(&PodFixture::new("p", 1).running().pod),
            PodState::Running
        );
        let done = PodFixture::new("p", 1).succeeded(&format!("{{\"{DIGEST_KEY}\":\"{DIGEST}\"}}"));
        assert!(matches!(classify(&done.pod), PodState::Succeeded { .. }));
    }

    #[test]
    fn a_signed_pod_runs_while_it_builds_and_its_sign_step_ends_the_attempt() {
        assert_eq!(
            classify(&PodFixture::new("p", 1).building_before_signing().pod),
            PodState::Running,
            "the build of a signed attempt runs in its last init container"
        );
        let metadata = format!("{{\"{DIGEST_KEY}\":\"{DIGEST}\"}}");
        assert_eq!(
            classify(&PodFixture::new("p", 1).sign_exited(0, &metadata).pod),
            PodState::Succeeded {
                termination_message: Some(metadata)
            }
        );
        let PodState::Failed(failure) = classify(
            &PodFixture::new("p", 1)
                .sign_exited(
                    1,
                    "error: the key is encrypted: the Secret needs a cosign.password",
                )
                .pod,
        ) else {
            panic!("a failed sign step fails the attempt");
        };
        assert_eq!(failure.reason, Reason::SigningFailed);
        assert!(!failure.retriable);
        assert_eq!(
            failure.message,
            "the image was pushed, but signing it failed: container sign exited with code 1: error: the key is encrypted: the Secret needs a cosign.password"
        );
    }

    #[test]
    fn a_pod_whose_receiver_runs_waits_for_its_context_and_one_that_gave_up_failed_the_build() {
        assert_eq!(
            classify(&PodFixture::new("p", 1).receiving_context().pod),
            PodState::ReceivingContext
        );
        let PodState::Failed(failure) =
            classify(&PodFixture::new("p", 1).context_not_uploaded().pod)
        else {
            panic!("a receiver that exited 1 fails the attempt");
        };
        assert_eq!(failure.reason, Reason::BuildFailed);
        assert!(!failure.retriable);
        assert_eq!(
            failure.message,
            "receiving the uploaded context (spec.source.local) failed: container context exited with code 1: no context was uploaded within 20m"
        );
    }

    #[test]
    fn failures_are_classified_and_only_infrastructure_is_retried() {
        let cases = [
            (
                PodFixture::new("p", 1).exited(1, "RUN make: exit 2"),
                Reason::BuildFailed,
                false,
            ),
            (
                PodFixture::new("p", 1).oom_killed(),
                Reason::BuildFailed,
                false,
            ),
            (
                PodFixture::new("p", 1).deadline_exceeded(),
                Reason::TimedOut,
                false,
            ),
            (PodFixture::new("p", 1).evicted(), Reason::PodEvicted, true),
            (
                PodFixture::new("p", 1).disrupted(),
                Reason::PodEvicted,
                true,
            ),
            (PodFixture::new("p", 1).unknown(), Reason::PodLost, true),
            (
                PodFixture::new("p", 1).image_pull_backoff(),
                Reason::ImagePullFailed,
                true,
            ),
            (
                PodFixture::new("p", 1).invalid_image(),
                Reason::ImagePullFailed,
                false,
            ),
            (
                PodFixture::new("p", 1).fetch_failed(),
                Reason::BuildFailed,
                false,
            ),
        ];
        for (fixture, reason, retriable) in cases {
            let PodState::Failed(failure) = classify(&fixture.pod) else {
                panic!("{fixture:?} should have failed");
            };
            assert_eq!(
                (failure.reason, failure.retriable),
                (reason, retriable),
                "{fixture:?}"
            );
        }
    }

    #[test]
    fn build_failures_carry_the_tail_of_the_output() {
        let lines: Vec<String> = (1..=20).map(|i| format!("line {i}")).collect();
        let pod = PodFixture::new("p", 1).exited(1, &lines.join("\n"));
        let PodState::Failed(failure) = classify(&pod.pod) else {
            panic!()
        };
        assert!(failure.message.contains("exited with code 1"));
        assert!(failure.message.ends_with("line 20"));
        assert!(!failure.message.contains("line 14\n"));
    }

    #[test]
    fn liveness() {
        assert!(is_live(&PodFixture::new("p", 1).pod));
        assert!(is_live(
            &PodFixture::new("p", 1).running().terminating().pod
        ));
        assert!(is_live(&PodFixture::new("p", 1).unknown().pod));
        assert!(!is_live(&PodFixture::new("p", 1).evicted().pod));
        assert!(!is_live(&PodFixture::new("p", 1).succeeded("{}").pod));
    }

    #[test]
    fn digest_from_metadata() {
        let metadata = format!(
            "{{\"buildx.build.ref\":\"x\",\"{DIGEST_KEY}\":\"{DIGEST}\",\"image.name\":\"r/a:1\"}}"
        );
        assert_eq!(pushed_digest(Some(&metadata)).unwrap().to_string(), DIGEST);
        // Cut short by the kubelet: still found.
        let cut = &metadata[..metadata.find("image.name").unwrap()];
        assert_eq!(pushed_digest(Some(cut)).unwrap().to_string(), DIGEST);
    }

    #[test]
    fn digest_problems() {
        assert_eq!(pushed_digest(None), Err(DigestProblem::Missing));
        assert_eq!(pushed_digest(Some("  ")), Err(DigestProblem::Missing));
        assert_eq!(pushed_digest(Some("{}")), Err(DigestProblem::NoDigestKey));
        assert!(matches!(
            pushed_digest(Some(&format!("{{\"{DIGEST_KEY}\":\"sha256:abc\"}}"))),
            Err(DigestProblem::Invalid(_))
        ));
        assert!(matches!(
            pushed_digest(Some(&format!(
                "{{\"{DIGEST_KEY}\":\"md5:{}\"}}",
                "a".repeat(32)
            ))),
            Err(DigestProblem::Invalid(_))
        ));
    }
}
