//! Fluent fixtures of build pods in every state a kubelet can report (pure).
//!
//! `PodFixture::for_build(&build, 1).running()` is what a kubelet would show for a running
//! attempt 1. Unit tests, the fake-API tests in `tests/` and the test kubelet of the
//! real-API-server suite share them, so that all three agree on what "evicted" or "out of
//! memory" looks like. Nothing in the controller calls them.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, Pod, PodCondition, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::ResourceExt;

use super::labels::{
    PLATFORM, PLATFORM_INDEX, attempt_labels, index_pod_name, platform_label, platform_pod_name,
    pod_name,
};
use super::podstate::{
    BUILD_CONTAINER, CONTEXT_CONTAINER, DIGEST_KEY, FETCH_CONTAINER, INDEX_CONTAINER,
    SIGN_CONTAINER,
};
use crate::crd::Build;
use crate::crd::fixtures::T0;

/// A build pod under construction.
#[derive(Clone, Debug)]
pub struct PodFixture {
    /// The pod.
    pub pod: Pod,
}

impl PodFixture {
    /// Attempt `attempt` of the Build named `build` (UID `uid-<build>`, as
    /// [`Build::test`] makes it), just created and pending.
    pub fn new(build: &str, attempt: u32) -> Self {
        Self::with_uid(build, &format!("uid-{build}"), attempt)
    }

    /// Attempt `attempt` of `build`.
    pub fn for_build(build: &Build, attempt: u32) -> Self {
        Self::with_uid(
            &build.name_any(),
            build.metadata.uid.as_deref().unwrap_or_default(),
            attempt,
        )
    }

    /// Try `try_` of platform `platform` (`linux/arm64`) of native attempt `attempt` of
    /// `build`.
    pub fn for_platform(build: &Build, attempt: u32, platform: &str, try_: u32) -> Self {
        let slug = crate::oci::platform::Platform::parse(platform)
            .map(|p| p.slug())
            .unwrap_or_default();
        let name = platform_pod_name(&build.name_any(), attempt, &slug, try_);
        Self::for_build(build, attempt).named(&name, &platform_label(&slug))
    }

    /// Try `try_` of the index pod of native attempt `attempt` of `build`.
    pub fn for_index(build: &Build, attempt: u32, try_: u32) -> Self {
        let name = index_pod_name(&build.name_any(), attempt, try_);
        Self::for_build(build, attempt).named(&name, PLATFORM_INDEX)
    }

    /// Renames the pod (and its UID, `pod-<name>`) and labels it as the `platform` pod of
    /// a native attempt.
    fn named(mut self, name: &str, platform: &str) -> Self {
        self.pod.metadata.name = Some(name.to_owned());
        self.pod.metadata.uid = Some(format!("pod-{name}"));
        if let Some(labels) = self.pod.metadata.labels.as_mut() {
            labels.insert(PLATFORM.to_owned(), platform.to_owned());
        }
        self
    }

    fn with_uid(build: &str, uid: &str, attempt: u32) -> Self {
        let name = pod_name(build, attempt);
        Self {
            pod: Pod {
                metadata: ObjectMeta {
                    uid: Some(format!("pod-{name}")),
                    name: Some(name),
                    namespace: Some("default".into()),
                    labels: Some(attempt_labels(build, uid, attempt)),
                    creation_timestamp: Some(Time(T0)),
                    ..ObjectMeta::default()
                },
                spec: None,
                status: Some(PodStatus {
                    phase: Some("Pending".into()),
                    ..PodStatus::default()
                }),
            },
        }
    }

    /// Sets the pod's UID.
    pub fn pod_uid(mut self, uid: &str) -> Self {
        self.pod.metadata.uid = Some(uid.to_owned());
        self
    }

    fn status(&mut self) -> &mut PodStatus {
        self.pod.status.get_or_insert_with(PodStatus::default)
    }

    fn phase(mut self, phase: &str) -> Self {
        self.status().phase = Some(phase.to_owned());
        self
    }

    fn container(mut self, name: &str, state: ContainerState) -> Self {
        let status = ContainerStatus {
            name: name.to_owned(),
            image: "docker.io/moby/buildkit:v0.26.1-rootless".into(),
            state: Some(state),
            ..ContainerStatus::default()
        };
        if name == FETCH_CONTAINER || name == CONTEXT_CONTAINER {
            self.status().init_container_statuses = Some(vec![status]);
        } else {
            self.status().container_statuses = Some(vec![status]);
        }
        self
    }

    fn terminated(self, name: &str, exit_code: i32, reason: &str, message: &str) -> Self {
        self.container(
            name,
            ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code,
                    reason: Some(reason.to_owned()),
                    message: (!message.is_empty()).then(|| message.to_owned()),
                    ..ContainerStateTerminated::default()
                }),
                ..ContainerState::default()
            },
        )
    }

    fn waiting(self, reason: &str) -> Self {
        self.container(
            BUILD_CONTAINER,
            ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.to_owned()),
                    message: Some(format!("{reason} (fixture)")),
                }),
                ..ContainerState::default()
            },
        )
    }

    /// The builder runs.
    pub fn running(self) -> Self {
        self.phase("Running").container(
            BUILD_CONTAINER,
            ContainerState {
                running: Some(ContainerStateRunning::default()),
                ..ContainerState::default()
            },
        )
    }

    /// The builder exited 0 with this termination message.
    pub fn succeeded(self, termination_message: &str) -> Self {
        self.phase("Succeeded")
            .terminated(BUILD_CONTAINER, 0, "Completed", termination_message)
    }

    /// The builder exited 0 and BuildKit's metadata names `digest`.
    pub fn pushed(self, digest: &str) -> Self {
        self.succeeded(&format!(
            "{{\"{DIGEST_KEY}\":\"{digest}\",\"image.name\":\"registry.example.com/team/app:latest\"}}"
        ))
    }

    /// The builder exited with `code`, printing `output`.
    pub fn exited(self, code: i32, output: &str) -> Self {
        self.phase("Failed")
            .terminated(BUILD_CONTAINER, code, "Error", output)
    }

    /// The index pod's `index` container exited with `code`, printing `output`.
    pub fn index_exited(self, code: i32, output: &str) -> Self {
        let phase = if code == 0 { "Succeeded" } else { "Failed" };
        self.phase(phase)
            .terminated(INDEX_CONTAINER, code, "Error", output)
    }

    fn init_container(mut self, name: &str, state: ContainerState) -> Self {
        let status = ContainerStatus {
            name: name.to_owned(),
            image: "docker.io/moby/buildkit:v0.26.1-rootless".into(),
            state: Some(state),
            ..ContainerStatus::default()
        };
        self.status().init_container_statuses = Some(vec![status]);
        self
    }

    /// A signed attempt's build, its last init container, runs: the pod is Pending.
    pub fn building_before_signing(self) -> Self {
        self.phase("Pending").init_container(
            BUILD_CONTAINER,
            ContainerState {
                running: Some(ContainerStateRunning::default()),
                ..ContainerState::default()
            },
        )
    }

    /// A signed attempt's build pushed, and its `sign` container exited with `code`,
    /// printing `output` (on success, the build's metadata).
    pub fn sign_exited(self, code: i32, output: &str) -> Self {
        let phase = if code == 0 { "Succeeded" } else { "Failed" };
        self.phase(phase)
            .init_container(
                BUILD_CONTAINER,
                ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: 0,
                        reason: Some("Completed".to_owned()),
                        ..ContainerStateTerminated::default()
                    }),
                    ..ContainerState::default()
                },
            )
            .terminated(SIGN_CONTAINER, code, "Error", output)
    }

    /// The builder was killed out of memory.
    pub fn oom_killed(self) -> Self {
        self.phase("Failed")
            .terminated(BUILD_CONTAINER, 137, "OOMKilled", "")
    }

    /// The `context` init container waits for the upload of a `source.local` context.
    pub fn receiving_context(self) -> Self {
        self.phase("Pending").container(
            CONTEXT_CONTAINER,
            ContainerState {
                running: Some(ContainerStateRunning::default()),
                ..ContainerState::default()
            },
        )
    }

    /// The `context` init container gave up: nothing was uploaded.
    pub fn context_not_uploaded(self) -> Self {
        self.phase("Failed").terminated(
            CONTEXT_CONTAINER,
            1,
            "Error",
            "no context was uploaded within 20m",
        )
    }

    /// The OCI context could not be fetched.
    pub fn fetch_failed(self) -> Self {
        self.phase("Failed")
            .terminated(FETCH_CONTAINER, 1, "Error", "not found")
    }

    /// The kubelet killed the pod at `activeDeadlineSeconds`.
    pub fn deadline_exceeded(mut self) -> Self {
        let status = self.status();
        status.phase = Some("Failed".into());
        status.reason = Some("DeadlineExceeded".into());
        status.message =
            Some("Pod was active on the node longer than the specified deadline".into());
        self
    }

    /// The kubelet evicted the pod (node pressure).
    pub fn evicted(mut self) -> Self {
        let status = self.status();
        status.phase = Some("Failed".into());
        status.reason = Some("Evicted".into());
        status.message = Some("The node was low on resource: ephemeral-storage.".into());
        self
    }

    /// The pod was disrupted (preemption, API eviction), as the `DisruptionTarget`
    /// condition says.
    pub fn disrupted(mut self) -> Self {
        let status = self.status();
        status.phase = Some("Failed".into());
        status.conditions = Some(vec![PodCondition {
            type_: "DisruptionTarget".into(),
            status: "True".into(),
            reason: Some("PreemptionByScheduler".into()),
            ..PodCondition::default()
        }]);
        self
    }

    /// The pod's node stopped reporting.
    pub fn unknown(self) -> Self {
        self.phase("Unknown")
    }

    /// The builder image cannot be pulled (the kubelet is backing off).
    pub fn image_pull_backoff(self) -> Self {
        self.phase("Pending").waiting("ImagePullBackOff")
    }

    /// The builder image name is invalid.
    pub fn invalid_image(self) -> Self {
        self.phase("Pending").waiting("InvalidImageName")
    }

    /// Every terminated container ended at `at`.
    pub fn finished_at(mut self, at: k8s_openapi::jiff::Timestamp) -> Self {
        let status = self.status();
        for container in status
            .container_statuses
            .iter_mut()
            .flatten()
            .chain(status.init_container_statuses.iter_mut().flatten())
        {
            if let Some(terminated) = container.state.as_mut().and_then(|s| s.terminated.as_mut()) {
                terminated.finished_at = Some(Time(at));
            }
        }
        self
    }

    /// The pod is being deleted.
    pub fn terminating(mut self) -> Self {
        self.pod.metadata.deletion_timestamp = Some(Time(T0));
        self
    }
}
