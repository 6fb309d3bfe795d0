//! The `Native` branch of `decide`: one attempt, one pod per platform, then the index pod
//! (pure).
//!
//! ```text
//!            ┌─► platform A pod ─► pushed ─┐
//! attempt n ─┤                             ├─► index pod ─► Succeeded (index digest)
//!            └─► platform B pod ─► pushed ─┘
//!                  │  evicted, lost (retries left): a new pod for B alone, after backoff
//!                  └─ build failed / no retries left ─► Failed (the other pods stopped)
//! ```
//!
//! # Guarantees, beside those of `decide`
//!
//! - **A platform is rebuilt only when its own pod failed**, with `spec.retries` counted per
//!   platform; the platforms that pushed are not built again.
//! - **One pod per platform try, and one index pod per index try**: each has a
//!   deterministic name announced in status before it is created, so a repeated create
//!   after a crash is `AlreadyExists`, and a controller restarted between "every platform
//!   pushed" and "index pushed" finds the index pod it created, or creates the same one.
//! - **The attempt is one unit** for its deadline, cancel, supersede and the concurrency
//!   group: when it ends, every pod of it still running is stopped.
//! - An attempt is native when its platforms are in `status.platforms`: an attempt started
//!   as one pod (by an older controller, say) is followed as one pod to its end.

use super::*;
use crate::controller::labels::{PLATFORM, index_pod_name, platform_pod_name};
use crate::controller::native::{self, initial_platforms, progress};
use crate::controller::platforms::{SelectorConflict, pod_node_selector};
use crate::controller::pod::{PlatformPod, platform_objects};
use crate::crd::PlatformStatus;
use crate::oci::platform::Platform;

/// What one platform's pod says, as far as `decide` cares.
enum Outcome {
    /// Its pod is to be created (first try, or a retry whose backoff has passed).
    Create,
    /// Waiting for its retry's backoff to pass.
    Backoff(Timestamp),
    /// Its pod exists and waits to start.
    Waiting,
    /// Its pod runs.
    Running,
    /// Its pod pushed this manifest.
    Pushed(Digest),
    /// Its pod failed.
    Failed(Failure),
}

impl Planner<'_> {
    /// Whether the open attempt is a native one: its platforms are in the status.
    pub(super) fn open_attempt_is_native(&self) -> bool {
        self.open_attempt().is_some_and(|record| {
            self.status
                .platforms
                .first()
                .is_some_and(|p| p.attempt == record.attempt)
        })
    }

    /// What stops a native attempt from starting now: a platform no node offers.
    pub(super) fn native_start_blocked(&mut self) -> bool {
        let missing = &self.observed.platforms_without_node;
        if missing.is_empty() {
            return false;
        }
        let message = format!(
            "no node can build platform{} {}: no node is labelled for {} (spec.platformStrategy is Native; the controller's --platform-node-selector maps a platform to node labels, and spec.platformStrategy: Emulated builds every platform in one pod)",
            if missing.len() == 1 { "" } else { "s" },
            missing.join(", "),
            if missing.len() == 1 { "it" } else { "them" },
        );
        self.set(Phase::Pending, Reason::NoNodeForPlatform, message);
        self.recheck_after(self.config.queue_recheck);
        true
    }

    /// Sets up the platforms of a native attempt that has just been announced, and follows
    /// it (which creates their pods).
    pub(super) fn start_native(&mut self, attempt: u32) {
        self.status.platforms = initial_platforms(self.build, attempt);
        self.status.platform_progress = Some(progress(&self.status.platforms));
        self.follow_native();
    }

    /// Follows the open native attempt: each platform's pod, the index pod once every
    /// platform has pushed, and the attempt's deadline.
    pub(super) fn follow_native(&mut self) {
        let Some(record) = self.open_attempt().cloned() else {
            return;
        };
        let timeout = self.attempt_timeout();
        let deadline = wait_ends(&record.start_time, timeout);
        if self.now >= deadline {
            return self.fail(self.ran_too_long(record.attempt, timeout));
        }

        let mut to_create = Vec::new();
        let mut failed = Vec::new();
        for index in 0..self.status.platforms.len() {
            let entry = self.status.platforms[index].clone();
            if entry.attempt != record.attempt || entry.phase.is_terminal() {
                continue;
            }
            match self.platform_outcome(&entry) {
                Outcome::Create => to_create.push(index),
                Outcome::Backoff(at) => self.recheck_at(at),
                Outcome::Waiting => self.update_platform(
                    index,
                    Phase::Pending,
                    Reason::PodCreated,
                    format!("pod {} created, waiting to start", entry.pod_name),
                ),
                Outcome::Running => self.update_platform(
                    index,
                    Phase::Running,
                    Reason::Running,
                    format!("pod {} is building", entry.pod_name),
                ),
                Outcome::Pushed(digest) => {
                    let message = format!(
                        "pushed {}@{digest}",
                        crate::controller::buildkit::output_repository(
                            &self.build.spec.output.image
                        )
                    );
                    self.update_platform(index, Phase::Succeeded, Reason::Succeeded, message);
                    let entry = &mut self.status.platforms[index];
                    entry.digest = Some(digest.to_string());
                    entry.completion_time = Some(Time(self.now));
                }
                Outcome::Failed(failure) => {
                    if let Some(failure) = self.retry_platform(index, failure) {
                        failed.push((entry.platform.clone(), failure));
                    }
                }
            }
        }
        if !failed.is_empty() {
            return self.fail_platforms(failed);
        }
        if !to_create.is_empty() {
            self.create_platform_pods(record.attempt, &to_create);
            if self.open_attempt().is_none() {
                return;
            }
        }
        self.status.platform_progress = Some(progress(&self.status.platforms));
        if self
            .status
            .platforms
            .iter()
            .all(|p| p.phase == Phase::Succeeded)
        {
            return self.follow_index(&record, timeout, deadline);
        }
        self.summarise_platforms(record.attempt);
        self.recheck_at(deadline);
    }

    /// What the pod of one open platform says.
    fn platform_outcome(&mut self, entry: &PlatformStatus) -> Outcome {
        let pod = match recorded_pod(
            &self.observed.pods,
            &entry.pod_name,
            entry.pod_uid.as_deref(),
        ) {
            Ok(Some(pod)) => pod,
            Ok(None) => {
                if let (true, Some(ended)) = (entry.retries > 0, entry.completion_time.as_ref()) {
                    let at = wait_ends(ended, backoff(entry.retries, self.config));
                    if self.now < at {
                        return Outcome::Backoff(at);
                    }
                }
                return Outcome::Create;
            }
            Err(failure) => return Outcome::Failed(failure),
        };
        if let Some(current) = self
            .status
            .platforms
            .iter_mut()
            .find(|p| p.pod_name == entry.pod_name)
        {
            current.pod_uid = pod.metadata.uid.clone();
        }
        match followed_state(pod, &entry.pod_name) {
            PodState::Waiting | PodState::ReceivingContext => Outcome::Waiting,
            PodState::Running => Outcome::Running,
            PodState::Succeeded {
                termination_message,
            } => match podstate::pushed_digest(termination_message.as_deref()) {
                Ok(digest) => Outcome::Pushed(digest),
                Err(problem) => Outcome::Failed(Failure {
                    reason: Reason::BuildFailed,
                    retriable: false,
                    message: format!("pod {} exited 0, but {problem}", entry.pod_name),
                }),
            },
            PodState::Failed(failure) => Outcome::Failed(failure),
        }
    }

    fn update_platform(&mut self, index: usize, phase: Phase, reason: Reason, message: String) {
        let entry = &mut self.status.platforms[index];
        entry.phase = phase;
        entry.reason = Some(reason);
        entry.message = Some(truncate_message(&message));
    }

    /// A platform's pod failed: its retry is planned when the failure is one another pod
    /// could overcome and the platform has retries left; otherwise the failure is returned.
    fn retry_platform(&mut self, index: usize, failure: Failure) -> Option<Failure> {
        let allowed = u32::try_from(self.build.spec.retries).unwrap_or(0);
        let now = self.now;
        let name = self.build.name_any();
        let entry = &mut self.status.platforms[index];
        entry.completion_time = Some(Time(now));
        if !failure.retriable || entry.retries >= allowed {
            let message = if failure.retriable {
                format!(
                    "{}; no retries left (spec.retries: {allowed})",
                    failure.message
                )
            } else {
                failure.message.clone()
            };
            entry.phase = Phase::Failed;
            entry.reason = Some(failure.reason);
            entry.message = Some(truncate_message(&message));
            return Some(Failure { message, ..failure });
        }
        entry.retries += 1;
        let retry = entry.retries;
        let at = wait_ends(&Time(now), backoff(retry, self.config));
        let failed_pod = entry.pod_name.clone();
        let slug = Platform::parse(&entry.platform)
            .map(|p| p.slug())
            .unwrap_or_default();
        entry.pod_name = platform_pod_name(&name, entry.attempt, &slug, retry + 1);
        entry.pod_uid = None;
        entry.start_time = None;
        entry.phase = Phase::Pending;
        entry.reason = Some(failure.reason);
        let message = format!(
            "pod {failed_pod} failed: {}; retry {retry} of {allowed} at {at} in pod {}",
            failure.message, entry.pod_name
        );
        entry.message = Some(truncate_message(&message));
        let platform = entry.platform.clone();
        self.events.push(EventSpec::new(
            failure.reason,
            "CreatePod",
            format!("platform {platform}: {message}"),
        ));
        self.recheck_at(at);
        None
    }

    /// Ends the attempt because platforms failed for good: the others are stopped, and
    /// the Build fails naming each failed platform with what its pod said.
    fn fail_platforms(&mut self, failed: Vec<(String, Failure)>) {
        let names: Vec<&str> = failed.iter().map(|(p, _)| p.as_str()).collect();
        let stopped = format!("stopped: platform {} failed", names.join(", "));
        for entry in &mut self.status.platforms {
            if !entry.phase.is_terminal() {
                entry.phase = Phase::Cancelled;
                entry.reason = Some(Reason::Cancelled);
                entry.message = Some(stopped.clone());
                entry.completion_time = Some(Time(self.now));
            }
        }
        self.status.platform_progress = Some(progress(&self.status.platforms));
        // A build that failed says more than a platform that ran out of retries.
        let reason = failed
            .iter()
            .map(|(_, f)| f.reason)
            .find(|r| *r == Reason::BuildFailed)
            .unwrap_or(failed[0].1.reason);
        let message = failed
            .iter()
            .map(|(platform, f)| format!("platform {platform} failed: {}", f.message))
            .collect::<Vec<_>>()
            .join("; ");
        let message = format!("attempt {}: {message}", self.status.attempt);
        self.close_attempt(AttemptResult::Failed, reason, &message);
        self.set(Phase::Failed, reason, message);
    }

    /// Plans the ConfigMap, cache Secret and pod of each platform at `indexes`, or fails
    /// the Build when its spec cannot be built.
    fn create_platform_pods(&mut self, attempt: u32, indexes: &[usize]) {
        let validated = match self.validated() {
            Ok(v) => v,
            Err(Problem { reason, message }) => {
                self.close_attempt(AttemptResult::Failed, reason, &message);
                return self.set(Phase::Failed, reason, message);
            }
        };
        let mut shared_planned = false;
        for &index in indexes {
            let entry = self.status.platforms[index].clone();
            let Ok(platform) = Platform::parse(&entry.platform) else {
                continue;
            };
            let node_selector = match pod_node_selector(self.build, &platform, self.config) {
                Ok(selector) => selector,
                Err(SelectorConflict {
                    label,
                    build_value,
                    platform_value,
                }) => {
                    let message = format!(
                        "spec.builder.nodeSelector sets {label}={build_value}, but platform {platform} runs on nodes with {label}={platform_value}; remove it from spec.builder.nodeSelector or set spec.platformStrategy: Emulated"
                    );
                    self.close_attempt(AttemptResult::Failed, Reason::InvalidSpec, &message);
                    return self.set(Phase::Failed, Reason::InvalidSpec, message);
                }
            };
            let try_ = entry.retries + 1;
            let objects = platform_objects(
                self.build,
                attempt,
                &PlatformPod {
                    platform: &platform,
                    try_,
                    node_selector,
                },
                &validated,
                self.config,
            );
            let name = objects.pod.name_any();
            // The attempt's ConfigMap and token Secret, shared by its platform pods: planned
            // with the first pods the attempt creates, and again with a retried one (the
            // create is then `AlreadyExists`, which is success), so that a pod never
            // waits on a volume nobody creates.
            if !shared_planned {
                shared_planned = true;
                if let Some(config_map) = objects.config_map {
                    self.creates
                        .push(Action::CreateConfigMap(Box::new(config_map)));
                }
                if cachetoken::wants_token(self.build, self.config) {
                    self.creates.push(Action::CreateCacheSecret {
                        name: pod_name(&self.build.name_any(), attempt),
                        attempt,
                        push_secret: validated.push_secret.map(str::to_owned),
                        ttl: cachetoken::token_ttl(validated.timeout),
                    });
                }
            }
            self.creates.push(Action::CreatePod(Box::new(objects.pod)));
            let (reason, message) = match self.observed.pod_refusals.get(&name) {
                Some(refusal) => (
                    Reason::PodCreateFailed,
                    format!("the API server refused pod {name}, retrying: {refusal}"),
                ),
                None => (
                    Reason::PodCreated,
                    format!("pod {name} created, waiting to start"),
                ),
            };
            let entry = &mut self.status.platforms[index];
            if entry.start_time.is_none() {
                entry.start_time = Some(Time(self.now));
            }
            entry.completion_time = None;
            entry.phase = Phase::Pending;
            entry.reason = Some(reason);
            entry.message = Some(truncate_message(&message));
        }
    }

    /// The Build's own phase and message while platforms build: Running once one runs.
    fn summarise_platforms(&mut self, attempt: u32) {
        let platforms = &self.status.platforms;
        let refused = platforms
            .iter()
            .find(|p| p.reason == Some(Reason::PodCreateFailed));
        let running = platforms.iter().any(|p| p.phase == Phase::Running);
        let pending: Vec<String> = platforms
            .iter()
            .filter(|p| p.phase != Phase::Succeeded)
            .map(|p| {
                let what = match (p.phase, p.reason) {
                    (Phase::Running, _) => "building",
                    (_, Some(Reason::PodCreated)) => "starting",
                    (_, Some(Reason::PodCreateFailed)) => "pod refused",
                    _ => "waiting to retry",
                };
                format!("{} {what} in pod {}", p.platform, p.pod_name)
            })
            .collect();
        let message = format!(
            "attempt {attempt}: {} platforms pushed; {}",
            progress(platforms),
            pending.join(", ")
        );
        match (refused, running) {
            (Some(entry), _) => {
                let message = format!("{message}; {}", entry.message.clone().unwrap_or_default());
                self.set(Phase::Pending, Reason::PodCreateFailed, message)
            }
            (None, true) => self.set(Phase::Running, Reason::Running, message),
            (None, false) => self.set(Phase::Pending, Reason::PodCreated, message),
        }
    }

    /// Every platform pushed: follows the index pod (the open attempt's own pod).
    fn follow_index(&mut self, record: &AttemptRecord, timeout: Duration, deadline: Timestamp) {
        let failure = match recorded_pod(
            &self.observed.pods,
            &record.pod_name,
            record.pod_uid.as_deref(),
        ) {
            Ok(None) => {
                self.create_index_pod(record, timeout);
                return self.recheck_at(deadline);
            }
            Err(failure) => failure,
            Ok(Some(pod)) => {
                if let Some(current) = self.status.current_attempt_mut() {
                    current.pod_uid = pod.metadata.uid.clone();
                }
                match followed_state(pod, &record.pod_name) {
                    PodState::Waiting | PodState::ReceivingContext | PodState::Running => {
                        self.announce_index(record);
                        return self.recheck_at(deadline);
                    }
                    PodState::Succeeded {
                        termination_message,
                    } => match podstate::pushed_digest(termination_message.as_deref()) {
                        Ok(digest) => return self.succeed(digest),
                        Err(problem) => Failure {
                            reason: Reason::IndexPushFailed,
                            retriable: false,
                            message: format!("pod {} exited 0, but {problem}", record.pod_name),
                        },
                    },
                    PodState::Failed(failure) => failure,
                }
            }
        };
        self.fail_index(record, failure);
    }

    fn announce_index(&mut self, record: &AttemptRecord) {
        let message = format!(
            "attempt {}: every platform pushed ({}); pushing the image index in pod {}",
            record.attempt,
            progress(&self.status.platforms),
            record.pod_name
        );
        self.set(Phase::Running, Reason::AssemblingIndex, message);
    }

    fn create_index_pod(&mut self, record: &AttemptRecord, timeout: Duration) {
        let push_secret = self
            .build
            .spec
            .output
            .push_secret_ref
            .as_ref()
            .map(|s| s.name.as_str());
        let try_ = self.status.retries + 1;
        let pod = native::index_pod(
            self.build,
            record.attempt,
            try_,
            &self.status.platforms,
            push_secret,
            timeout,
            self.config,
        );
        self.creates.push(Action::CreatePod(Box::new(pod)));
        self.announce_index(record);
        if let Some(refusal) = self.observed.pod_refusals.get(&record.pod_name) {
            let message = format!(
                "{}; the API server refused pod {}, retrying: {refusal}",
                self.message, record.pod_name
            );
            self.set(Phase::Running, Reason::PodCreateFailed, message);
        }
    }

    /// The index pod failed: a new index pod when another could succeed and the Build's
    /// retries allow (the platforms are not built again), the Build fails otherwise.
    fn fail_index(&mut self, record: &AttemptRecord, failure: Failure) {
        let reason = match failure.reason {
            Reason::BuildFailed => Reason::IndexPushFailed,
            other => other,
        };
        let allowed = u32::try_from(self.build.spec.retries).unwrap_or(0);
        if failure.retriable && self.status.retries < allowed {
            self.status.retries += 1;
            let retry = self.status.retries;
            let next = index_pod_name(&self.build.name_any(), record.attempt, retry + 1);
            if let Some(current) = self.status.current_attempt_mut() {
                current.pod_name = next.clone();
                current.pod_uid = None;
            }
            let message = format!(
                "attempt {}: index pod {} failed: {}; retry {retry} of {allowed} in pod {next}",
                record.attempt, record.pod_name, failure.message
            );
            self.events
                .push(EventSpec::new(reason, "CreatePod", message.clone()));
            self.set(Phase::Running, Reason::AssemblingIndex, message);
            return self.recheck_after(Duration::from_secs(1));
        }
        let message = format!(
            "attempt {}: every platform pushed, but the index pod {} failed: {}{}",
            record.attempt,
            record.pod_name,
            failure.message,
            if failure.retriable {
                format!("; no retries left (spec.retries: {allowed})")
            } else {
                String::new()
            }
        );
        self.close_attempt(AttemptResult::Failed, reason, &message);
        self.set(Phase::Failed, reason, message);
    }
}

/// Whether `pod` is one of a native attempt's pods (a platform's or the index's).
pub(super) fn is_native_pod(pod: &Pod) -> bool {
    pod.labels().contains_key(PLATFORM)
}

/// The index pod of attempt `attempt`'s first try: the name a native attempt's record
/// carries from its start.
pub(super) fn first_index_pod(build: &Build, attempt: u32) -> String {
    index_pod_name(&build.name_any(), attempt, 1)
}
