//! `decide`: from a Build, what was observed about it, the time and the controller's
//! settings, to the [`Plan`] that moves it forward (pure: no I/O, no clock, no randomness).
//!
//! # The lifecycle
//!
//! ```text
//!            ┌────────── Queued ◄──── group busy
//! new run ──►│ Pending ──► PodCreated ──► Running ──► Succeeded
//!            │    ▲                          │
//!            │    └── retry after backoff ◄──┤ evicted, lost, image pull (retries left)
//!            │                               ├──► Failed (build failed, timed out, no retries left)
//!            └─ spec.cancel / newer group member ──► Cancelled
//! ```
//!
//! A new run starts on a new generation or a new `kiln.dev/rerun` token; an attempt still
//! going is recorded as `Superseded` and its pod deleted. Deletion runs the finalizer path.
//!
//! # Guarantees
//!
//! - **One pod per attempt.** A pod is only planned for an attempt whose pod has never been
//!   seen (`podUID` unset) and does not exist, and only while no other pod of the Build is
//!   live. Names are deterministic, so a repeated create after a crash is `AlreadyExists`.
//! - **Attempt numbers only grow**, across generations; a pod found with a higher number than
//!   the status knows (a lost status write) is adopted, not duplicated.
//! - **Status first.** The plan writes the status that announces an attempt before creating
//!   its pod, and writes status only when it changed.
//! - **No hot loops.** Invalid input ends in a final phase and waits for a change; waits
//!   (backoff, queue, deadline) are rechecked at the moment they end.
//! - **Retention is announced.** An attempt that ends with a finished pod records when the
//!   pod goes (`podRetainedUntil`, see [`retention`]); the sweeper deletes it then.
//! - **Cache calls never block a build.** Leases are planned by [`cache_lease`] after the status
//!   and before the pod; their failures are warnings, retried with backoff.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;

use super::base_images;
use super::build_log;
use super::cache_lease;
use super::cachetoken;
use super::config::Config;
use super::fair_share::{QueueMessage, Slot};
use super::labels::{GENERATION_ANNOTATION, attempt_of, pod_name};
use super::native::{self as native_pods, initial_platforms};
use super::observed::Observed;
use super::plan::{Action, EventSpec, Plan, Recheck};
use super::pod::attempt_objects;
use super::podstate::{self, Failure, PodState, is_live};
use super::queue::{self, Admission};
use super::retention;
use super::validate::{self, Problem};
use crate::crd::build::{FINALIZER, MAX_ATTEMPT_HISTORY};
use crate::crd::condition::set_condition;
use crate::crd::status::truncate_message;
use crate::crd::{
    AttemptRecord, AttemptResult, BaseImageChange, Build, BuildStatus, CONDITION_READY,
    CONDITION_SUCCEEDED, ConditionStatus, OutputStatus, Phase, ProvenanceMode, Reason,
};
use crate::oci::digest::Digest;

/// How soon to look again while waiting for pods to go away (their deletion also wakes the
/// controller through its pod watch; this is the fallback).
const POD_GONE_RECHECK: Duration = Duration::from_secs(5);

/// The delay before retry number `retry` (1 for the first): `base · 2^(retry-1)`, at most
/// `max`.
pub fn backoff(retry: u32, config: &Config) -> Duration {
    let factor = 2u32.saturating_pow(retry.saturating_sub(1));
    config
        .retry_backoff
        .saturating_mul(factor)
        .min(config.retry_backoff_max)
}

/// The moment `wait` has passed since the status time `since`, counted from the end of
/// that second.
///
/// The API server keeps status times (`metav1.Time`) to whole seconds, and k8s-openapi
/// writes them so too: a time read back from status was cut short by up to a second.
/// Counting from the end of its second makes a retry backoff or an attempt's deadline
/// never shorter than configured (at most a second longer), and gives the same answer
/// before and after the time went through the API server.
pub fn wait_ends(since: &Time, wait: Duration) -> Timestamp {
    let end_of_second =
        Timestamp::from_second(since.0.as_second().saturating_add(1)).unwrap_or(Timestamp::MAX);
    end_of_second
        .saturating_add(SignedDuration::try_from(wait).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX)
}

/// Decides what to do with `build`.
pub fn decide(build: &Build, observed: &Observed, now: Timestamp, config: &Config) -> Plan {
    if build.metadata.deletion_timestamp.is_some() {
        return finalize(build, observed, now, config);
    }
    if !build.finalizers().iter().any(|f| f == FINALIZER) {
        // Alone in its plan: the cleanup guarantee must be in place before any pod exists,
        // and the patch gives the Build a new resourceVersion.
        return Plan {
            actions: vec![Action::AddFinalizer],
            recheck: Recheck::OnChange,
        };
    }

    let old = build.status.clone().unwrap_or_default();
    let mut d = Planner::new(build, observed, now, config, old.clone());
    d.adopt_unknown_attempt();
    if let Some(request) = d.run_request() {
        d.start_run(request, build.spec.cancel);
    } else if !build.spec.cancel
        && let Some(change) = d.base_image_moved()
    {
        d.start_triggered(change);
    }
    if build.spec.cancel {
        d.cancel();
    } else if !d.is_terminal() {
        if let Some(by) = queue::superseded_by(build, &observed.peers) {
            d.supersede(&by);
        } else if d.open_attempt_is_native() {
            d.follow_native();
        } else if d.open_attempt().is_some() {
            d.follow_attempt();
        }
        if !d.is_terminal() && d.open_attempt().is_none() {
            d.maybe_start();
        }
    }
    d.finish(&old)
}

/// Deletion: delete the pods (live ones with a grace period), ConfigMaps and Secrets,
/// release the cache leases and delete the cache tag, then remove the finalizer once
/// nothing is left.
///
/// Idempotent: a pod already being deleted is not deleted again; the finalizer goes only
/// when a fresh list shows nothing left and every cache call is confirmed (or the cache
/// cleanup gave up at its deadline, see [`cache_lease`]), so a crash at any point resumes where
/// it stopped. Objects of another Build that reused the name are never listed (they are
/// selected by UID).
fn finalize(build: &Build, observed: &Observed, now: Timestamp, config: &Config) -> Plan {
    if !build.finalizers().iter().any(|f| f == FINALIZER) {
        return Plan::default();
    }
    let mut actions = Vec::new();
    let mut events = Vec::new();
    for pod in &observed.pods {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let live = is_live(pod);
        actions.push(Action::DeletePod {
            name: pod.name_any(),
            uid: pod.metadata.uid.clone(),
            grace: if live {
                config.pod_grace_period
            } else {
                Duration::ZERO
            },
        });
        if live {
            events.push(Action::Event(EventSpec::new(
                Reason::Cancelled,
                "DeletePod",
                format!(
                    "Build is being deleted: stopping pod {} (grace period {}s)",
                    pod.name_any(),
                    config.pod_grace_period.as_secs()
                ),
            )));
        }
    }
    for name in &observed.config_maps {
        actions.push(Action::DeleteConfigMap { name: name.clone() });
    }
    for name in &observed.owned_secrets {
        actions.push(Action::DeleteSecret { name: name.clone() });
    }
    let cleanup = cache_lease::cleanup(build, &observed.cache, now, config);
    let objects_left = !(observed.pods.is_empty()
        && observed.config_maps.is_empty()
        && observed.owned_secrets.is_empty());
    if !objects_left && !cleanup.pending {
        let mut actions = Vec::new();
        if let Some(message) = cleanup.gave_up {
            actions.push(Action::Event(EventSpec::new(
                Reason::CacheUnavailable,
                "CleanUpCache",
                message,
            )));
        }
        actions.push(Action::RemoveFinalizer);
        return Plan {
            actions,
            recheck: Recheck::OnChange,
        };
    }
    actions.extend(cleanup.actions);
    actions.extend(events);
    let recheck = if objects_left {
        Recheck::After(POD_GONE_RECHECK)
    } else {
        Recheck::OnChange
    };
    Plan {
        actions,
        recheck: recheck.min(cleanup.recheck),
    }
}

/// Why a new run starts.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RunRequest {
    /// The generation changed.
    new_generation: bool,
    /// The rerun annotation, when set.
    token: Option<String>,
}

/// Works out one plan: the inputs of `decide` and the plan as it is built.
struct Planner<'a> {
    build: &'a Build,
    observed: &'a Observed,
    now: Timestamp,
    config: &'a Config,
    generation: i64,
    status: BuildStatus,
    reason: Option<Reason>,
    message: String,
    creates: Vec<Action>,
    events: Vec<EventSpec>,
    recheck: Recheck,
}

impl<'a> Planner<'a> {
    fn new(
        build: &'a Build,
        observed: &'a Observed,
        now: Timestamp,
        config: &'a Config,
        status: BuildStatus,
    ) -> Self {
        Self {
            build,
            observed,
            now,
            config,
            generation: build.metadata.generation.unwrap_or(0),
            reason: status.reason(),
            message: status.message.clone().unwrap_or_default(),
            status,
            creates: Vec::new(),
            events: Vec::new(),
            recheck: Recheck::OnChange,
        }
    }

    fn is_terminal(&self) -> bool {
        self.status.phase.is_some_and(Phase::is_terminal)
    }

    fn open_attempt(&self) -> Option<&AttemptRecord> {
        self.status
            .current_attempt()
            .filter(|a| a.completion_time.is_none())
    }

    fn set(&mut self, phase: Phase, reason: Reason, message: impl Into<String>) {
        let mut message = message.into();
        if matches!(phase, Phase::Succeeded | Phase::Failed)
            && let Some(record) = self.status.current_attempt()
            && let (Some(until), Some(result)) = (&record.pod_retained_until, record.result)
        {
            let ttl = retention::pod_ttl(self.build, result, self.config);
            message = format!(
                "{message}; {}",
                retention::note(&record.pod_name, until.0, ttl)
            );
        }
        self.status.phase = Some(phase);
        self.reason = Some(reason);
        self.message = truncate_message(&message);
        if phase.is_terminal() {
            self.status.completion_time = Some(Time(self.now));
        }
    }

    fn recheck_after(&mut self, after: Duration) {
        self.recheck = self.recheck.min(Recheck::After(after));
    }

    fn recheck_at(&mut self, at: Timestamp) {
        let wait = at.duration_since(self.now);
        let wait = Duration::try_from(wait).unwrap_or(Duration::ZERO);
        self.recheck_after(wait.max(Duration::from_secs(1)));
    }

    /// Closes the open attempt, if any. A pod that finished on its own is kept for its
    /// retention time, which the record announces; a live one is about to be stopped.
    fn close_attempt(&mut self, result: AttemptResult, reason: Reason, message: &str) {
        let now = self.now;
        let retained_until = self.open_attempt().and_then(|open| {
            let pod = self.observed.pods.iter().find(|p| {
                p.name_any() == open.pod_name
                    && open
                        .pod_uid
                        .as_ref()
                        .is_none_or(|uid| p.metadata.uid.as_ref() == Some(uid))
            })?;
            let ttl = retention::pod_ttl(self.build, result, self.config);
            (!is_live(pod)).then(|| Time(retention::after(now, ttl)))
        });
        if let Some(record) = self
            .status
            .current_attempt_mut()
            .filter(|a| a.completion_time.is_none())
        {
            record.completion_time = Some(Time(now));
            record.result = Some(result);
            record.reason = Some(reason);
            record.message = Some(truncate_message(message));
            record.pod_retained_until = retained_until;
        }
        // The platforms of a native attempt still building end with it.
        let attempt = self.status.attempt;
        let phase = match result {
            AttemptResult::Succeeded => Phase::Succeeded,
            AttemptResult::Failed => Phase::Failed,
            AttemptResult::Cancelled => Phase::Cancelled,
        };
        let mut changed = false;
        for entry in &mut self.status.platforms {
            if entry.attempt == attempt && !entry.phase.is_terminal() {
                entry.phase = phase;
                entry.reason = Some(reason);
                entry.message = Some(truncate_message(message));
                entry.completion_time = Some(Time(now));
                changed = true;
            }
        }
        if changed {
            self.status.platform_progress = Some(native_pods::progress(&self.status.platforms));
        }
    }

    /// A pod with a higher attempt number than the status knows means a status write was
    /// lost after the pod was created: take it up as the current attempt rather than
    /// starting another.
    fn adopt_unknown_attempt(&mut self) {
        let Some((attempt, pod)) = self
            .observed
            .pods
            .iter()
            .filter_map(|p| attempt_of(p.metadata.labels.as_ref()).map(|n| (n, p)))
            .max_by_key(|(n, _)| *n)
        else {
            return;
        };
        if attempt <= self.status.attempt {
            return;
        }
        let generation = pod
            .annotations()
            .get(GENERATION_ANNOTATION)
            .and_then(|g| g.parse().ok())
            .unwrap_or(self.generation);
        self.status.attempt = attempt;
        let native_attempt = native::is_native_pod(pod);
        if native_attempt {
            self.status.platforms = initial_platforms(self.build, attempt);
            self.status.platform_progress = Some(native_pods::progress(&self.status.platforms));
        }
        self.status.attempts.push(AttemptRecord {
            attempt,
            pod_name: if native_attempt {
                native::first_index_pod(self.build, attempt)
            } else {
                pod.name_any()
            },
            pod_uid: None,
            generation,
            start_time: pod
                .metadata
                .creation_timestamp
                .clone()
                .unwrap_or(Time(self.now)),
            completion_time: None,
            result: None,
            reason: None,
            message: None,
            digest: None,
            pod_retained_until: None,
            log: None,
        });
        if generation == self.generation && self.status.observed_generation.is_none() {
            // The pod builds the current spec: it is the run, not something to supersede.
            self.status.observed_generation = Some(generation);
        }
        if self.is_terminal() || self.status.phase.is_none() {
            self.status.phase = Some(Phase::Pending);
            self.status.completion_time = None;
        }
    }

    fn run_request(&self) -> Option<RunRequest> {
        let new_generation = self.status.observed_generation != Some(self.generation);
        let token = self.build.rerun_token().map(str::to_owned);
        let new_token = token.is_some() && token.as_deref() != self.status.rerun_token.as_deref();
        (new_generation || new_token).then_some(RunRequest {
            new_generation,
            token,
        })
    }

    /// A new generation or rerun request: the attempt still going is superseded (or, when
    /// the new spec cancels, left for [`Self::cancel`] to record), and the run starts over
    /// with a fresh retry budget.
    fn start_run(&mut self, request: RunRequest, cancelling: bool) {
        let why = if request.new_generation {
            format!("generation {}", self.generation)
        } else {
            format!(
                "rerun request {:?}",
                request.token.as_deref().unwrap_or_default()
            )
        };
        if let Some(open) = self
            .open_attempt()
            .map(|a| a.attempt)
            .filter(|_| !cancelling)
        {
            let message = format!("attempt {open} superseded by {why}");
            self.close_attempt(AttemptResult::Cancelled, Reason::Superseded, &message);
            self.events
                .push(EventSpec::new(Reason::Superseded, "DeletePod", message));
        }
        self.status.observed_generation = Some(self.generation);
        if request.token.is_some() {
            self.status.rerun_token = request.token;
        }
        self.fresh_run();
    }

    /// A run starts over: a fresh retry budget, no times, no output, Pending.
    fn fresh_run(&mut self) {
        self.status.retries = 0;
        self.status.start_time = None;
        self.status.completion_time = None;
        self.status.output = None;
        self.status.phase = Some(Phase::Pending);
    }

    /// A base image of a finished Build that watches them moved (see [`base_images`]).
    fn base_image_moved(&mut self) -> Option<BaseImageChange> {
        base_images::take_check(
            self.build,
            &mut self.status,
            &self.observed.cache,
            self.config,
        )
    }

    /// A base image moved: the run starts over with a fresh retry budget, and the change is
    /// remembered so that the same digest never starts a second attempt.
    fn start_triggered(&mut self, mut change: BaseImageChange) {
        let attempt = self.status.attempt + 1;
        change.attempt = attempt;
        let message = base_images::change_message(&change, attempt);
        if let Some(check) = self.status.base_image_check.as_mut() {
            check.last_trigger = Some(change);
        }
        self.fresh_run();
        self.set(Phase::Pending, Reason::BaseImageChanged, message.clone());
        self.events.push(EventSpec::new(
            Reason::BaseImageChanged,
            "UpdateStatus",
            message,
        ));
    }

    fn cancel(&mut self) {
        if self.is_terminal() {
            return;
        }
        let message = "cancelled: spec.cancel is true";
        self.close_attempt(AttemptResult::Cancelled, Reason::Cancelled, message);
        self.set(Phase::Cancelled, Reason::Cancelled, message);
    }

    fn supersede(&mut self, by: &str) {
        let message = format!(
            "superseded by newer Build {by:?} in concurrency group {:?} (policy CancelInProgress)",
            queue::group_of(self.build)
        );
        self.close_attempt(AttemptResult::Cancelled, Reason::Superseded, &message);
        self.set(Phase::Cancelled, Reason::Superseded, message);
    }

    /// How long an attempt may run (an invalid `spec.timeout` fails the attempt before its
    /// pod is created; until then, the schema's default of one hour).
    fn attempt_timeout(&self) -> Duration {
        validate::attempt_timeout(self.build, self.config).unwrap_or(Duration::from_secs(3600))
    }

    /// The timeout in force, for messages: `spec.timeout (30m)`, or the controller's
    /// ceiling when it cut `spec.timeout` short.
    fn timeout_description(&self, timeout: Duration) -> String {
        let spec = &self.build.spec.timeout;
        if validate::timeout(self.build).is_ok_and(|t| t > timeout) {
            format!(
                "the controller's maximum build timeout ({}s; spec.timeout is {spec})",
                timeout.as_secs()
            )
        } else {
            format!("spec.timeout ({spec})")
        }
    }

    /// The failure of attempt `attempt`, which ran past its deadline.
    fn ran_too_long(&self, attempt: u32, timeout: Duration) -> Failure {
        Failure {
            reason: Reason::TimedOut,
            retriable: false,
            message: format!(
                "attempt {attempt} ran longer than {}",
                self.timeout_description(timeout)
            ),
        }
    }

    /// Follows the open attempt through its pod.
    fn follow_attempt(&mut self) {
        let Some(record) = self.open_attempt().cloned() else {
            return;
        };
        let timeout = self.attempt_timeout();
        let deadline = wait_ends(&record.start_time, timeout);
        match recorded_pod(
            &self.observed.pods,
            &record.pod_name,
            record.pod_uid.as_deref(),
        ) {
            Ok(None) => self.create_announced_pod(&record, timeout, deadline),
            Ok(Some(pod)) => self.follow_pod(pod, &record, timeout, deadline),
            Err(failure) => self.fail(failure),
        }
    }

    /// The open attempt's pod was announced in status but never seen: the create did not
    /// happen (or is not visible yet). Creates it again under the same name, once no other
    /// pod of this Build is live, until the attempt's deadline.
    fn create_announced_pod(
        &mut self,
        record: &AttemptRecord,
        timeout: Duration,
        deadline: Timestamp,
    ) {
        if self.observed.pods.iter().any(is_live) {
            return self.recheck_after(POD_GONE_RECHECK);
        }
        // What the API server said when it refused the last create, if it did.
        let refused = self.observed.pod_refusals.get(&record.pod_name);
        if self.now >= deadline {
            // A pod refused until the deadline (a quota never lifted) ends the
            // attempt like one that ran too long.
            let refusal = refused
                .map(|r| format!(": the API server refused pod {}: {r}", record.pod_name))
                .unwrap_or_default();
            return self.fail(Failure {
                reason: Reason::TimedOut,
                retriable: false,
                message: format!(
                    "attempt {} did not start within {}{refusal}",
                    record.attempt,
                    self.timeout_description(timeout)
                ),
            });
        }
        self.create_attempt_objects(record.attempt);
        if self.open_attempt().is_some() {
            if let Some(refusal) = refused {
                // The last create was refused: say so while it is tried again.
                self.set(
                    Phase::Pending,
                    Reason::PodCreateFailed,
                    format!(
                        "attempt {}: the API server refused pod {}, retrying: {refusal}",
                        record.attempt, record.pod_name
                    ),
                );
            }
            self.recheck_at(deadline);
        }
    }

    /// Follows the open attempt's pod, `pod`: its phase and message, its end, or the
    /// attempt's deadline.
    fn follow_pod(
        &mut self,
        pod: &Pod,
        record: &AttemptRecord,
        timeout: Duration,
        deadline: Timestamp,
    ) {
        if let Some(current) = self.status.current_attempt_mut() {
            current.pod_uid = pod.metadata.uid.clone();
        }

        match followed_state(pod, &record.pod_name) {
            PodState::Waiting => self.set(
                Phase::Pending,
                Reason::PodCreated,
                format!(
                    "attempt {}: pod {} created, waiting to start",
                    record.attempt, record.pod_name
                ),
            ),
            PodState::ReceivingContext => self.set(
                Phase::Pending,
                Reason::WaitingForContext,
                format!(
                    "attempt {}: pod {} waits for the context upload (kubectl kiln build --local sends it; a retried attempt takes it from the cache)",
                    record.attempt, record.pod_name
                ),
            ),
            PodState::Running => self.set(
                Phase::Running,
                Reason::Running,
                format!(
                    "attempt {}: pod {} is building",
                    record.attempt, record.pod_name
                ),
            ),
            PodState::Succeeded {
                termination_message,
            } => {
                return match podstate::pushed_digest(termination_message.as_deref()) {
                    Ok(digest) => self.succeed(digest),
                    Err(problem) => self.fail(Failure {
                        reason: Reason::BuildFailed,
                        retriable: false,
                        message: format!("pod {} exited 0, but {problem}", record.pod_name),
                    }),
                };
            }
            PodState::Failed(failure) => return self.fail(failure),
        }
        if self.now >= deadline {
            return self.fail(self.ran_too_long(record.attempt, timeout));
        }
        self.recheck_at(deadline);
    }

    fn succeed(&mut self, digest: Digest) {
        let image = self.build.spec.output.image.clone();
        let mut message = format!("pushed {image}@{digest}");
        if self.build.spec.signing.is_some() {
            message.push_str(", signed");
        }
        if let Some(record) = self.status.current_attempt_mut() {
            record.digest = Some(digest.to_string());
        }
        self.close_attempt(AttemptResult::Succeeded, Reason::Succeeded, &message);
        self.status.output = Some(output_status(self.build, image, &digest));
        self.set(Phase::Succeeded, Reason::Succeeded, message);
    }

    /// Ends the open attempt as failed: retried after a backoff when the infrastructure
    /// failed and retries are left, final otherwise.
    fn fail(&mut self, failure: Failure) {
        let attempt = self.status.attempt;
        self.close_attempt(AttemptResult::Failed, failure.reason, &failure.message);
        let allowed = u32::try_from(self.build.spec.retries).unwrap_or(0);
        if failure.retriable && self.status.retries < allowed {
            self.status.retries += 1;
            let retry = self.status.retries;
            let at = wait_ends(&Time(self.now), backoff(retry, self.config));
            self.set(
                Phase::Pending,
                failure.reason,
                format!(
                    "attempt {attempt} failed: {}; retry {retry} of {allowed} at {at}",
                    failure.message
                ),
            );
        } else if failure.retriable {
            self.set(
                Phase::Failed,
                failure.reason,
                format!(
                    "attempt {attempt} failed: {}; no retries left (spec.retries: {allowed})",
                    failure.message
                ),
            );
        } else {
            self.set(Phase::Failed, failure.reason, failure.message);
        }
    }

    /// Starts the next attempt if nothing stands in the way: a retry backoff, a pod of an
    /// earlier attempt still running, the concurrency group, or an invalid spec.
    fn maybe_start(&mut self) {
        if self.status.retries > 0
            && let Some(ended) = self
                .status
                .attempts
                .last()
                .and_then(|a| a.completion_time.clone())
        {
            let at = wait_ends(&ended, backoff(self.status.retries, self.config));
            if self.now < at {
                return self.recheck_at(at);
            }
        }
        if let Some(pod) = self.observed.pods.iter().find(|p| is_live(p)) {
            // Never two pods of one Build at once: wait for the earlier one to go (it is
            // being deleted by this same plan or an earlier one).
            self.set(
                Phase::Pending,
                Reason::Starting,
                format!(
                    "attempt {} waits for pod {} of an earlier attempt to terminate",
                    self.status.attempt + 1,
                    pod.name_any()
                ),
            );
            return self.recheck_after(POD_GONE_RECHECK);
        }
        let retrying = self.status.retries > 0;
        match queue::admit(self.build, &self.observed.peers, retrying) {
            Admission::Superseded { by } => return self.supersede(&by),
            Admission::Wait { holder, running } => {
                self.set(
                    Phase::Pending,
                    Reason::Queued,
                    format!(
                        "waiting for Build {holder:?} ({}) in concurrency group {:?}",
                        if running { "running" } else { "queued ahead" },
                        queue::group_of(self.build)
                    ),
                );
                return self.recheck_after(self.config.queue_recheck);
            }
            Admission::Go => {}
        }
        if let Some(slot @ Slot::Queued { .. }) = &self.observed.slot {
            let namespace = self.build.namespace().unwrap_or_default();
            self.set(
                Phase::Pending,
                Reason::Queued,
                QueueMessage {
                    namespace: &namespace,
                    slot,
                }
                .to_string(),
            );
            return self.recheck_after(self.config.queue_recheck);
        }
        let natively = self.build.spec.builds_natively();
        if natively && self.native_start_blocked() {
            return;
        }
        let attempt = self.status.attempt + 1;
        let name = if natively {
            native::first_index_pod(self.build, attempt)
        } else {
            pod_name(&self.build.name_any(), attempt)
        };
        self.status.attempt = attempt;
        self.status.platforms.clear();
        self.status.platform_progress = None;
        self.status.attempts.push(AttemptRecord {
            attempt,
            pod_name: name,
            pod_uid: None,
            generation: self.generation,
            start_time: Time(self.now),
            completion_time: None,
            result: None,
            reason: None,
            message: None,
            digest: None,
            pod_retained_until: None,
            log: None,
        });
        if self.status.start_time.is_none() {
            self.status.start_time = Some(Time(self.now));
        }
        if natively {
            return self.start_native(attempt);
        }
        self.create_attempt_objects(attempt);
        if self.open_attempt().is_some() {
            let timeout = self.attempt_timeout();
            self.recheck_after(timeout);
        }
    }

    /// Plans the ConfigMap and pod of `attempt`, or fails the Build when its spec cannot
    /// be built.
    fn create_attempt_objects(&mut self, attempt: u32) {
        let validated = match self.validated() {
            Ok(v) => v,
            Err(Problem { reason, message }) => {
                self.close_attempt(AttemptResult::Failed, reason, &message);
                return self.set(Phase::Failed, reason, message);
            }
        };
        let objects = attempt_objects(self.build, attempt, &validated, self.config);
        let name = objects.pod.name_any();
        if let Some(config_map) = objects.config_map {
            self.creates
                .push(Action::CreateConfigMap(Box::new(config_map)));
        }
        if cachetoken::wants_token(self.build, self.config) {
            self.creates.push(Action::CreateCacheSecret {
                name: name.clone(),
                attempt,
                push_secret: validated.push_secret.map(str::to_owned),
                ttl: cachetoken::token_ttl(validated.timeout),
            });
        }
        self.creates.push(Action::CreatePod(Box::new(objects.pod)));
        self.set(
            Phase::Pending,
            Reason::PodCreated,
            format!("attempt {attempt}: pod {name} created, waiting to start"),
        );
    }

    /// The Build's spec checked against what was observed: ready to build, or why not.
    fn validated(&self) -> Result<validate::Validated<'a>, Problem> {
        validate::validate(self.build, &self.observed.secrets, self.config).and_then(|v| {
            validate::service_account(self.build, &self.observed.service_accounts).map(|()| v)
        })
    }

    /// Pods of this Build that must go: every live pod except the open attempt's own (for
    /// a native attempt, each platform's current pod and the index pod).
    fn pods_to_delete(&self) -> Vec<&'a Pod> {
        let mut keep: Vec<(String, Option<String>)> = Vec::new();
        if let Some(open) = self.open_attempt() {
            keep.push((open.pod_name.clone(), open.pod_uid.clone()));
            keep.extend(
                self.status
                    .platforms
                    .iter()
                    .filter(|p| p.attempt == open.attempt)
                    .map(|p| (p.pod_name.clone(), p.pod_uid.clone())),
            );
        }
        self.observed
            .pods
            .iter()
            .filter(|p| is_live(p) && p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                !keep.iter().any(|(name, uid)| {
                    p.name_any() == *name
                        && uid
                            .as_ref()
                            .is_none_or(|u| p.metadata.uid.as_ref() == Some(u))
                })
            })
            .collect()
    }

    fn finish(mut self, old: &BuildStatus) -> Plan {
        // Bounded history: the latest attempts, always including the current one.
        let keep = self
            .build
            .spec
            .retention
            .as_ref()
            .and_then(|r| r.attempt_history)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(self.config.attempt_history)
            .clamp(1, MAX_ATTEMPT_HISTORY as u32) as usize;
        let len = self.status.attempts.len();
        if len > keep {
            let left: Vec<AttemptRecord> = self.status.attempts.drain(..len - keep).collect();
            build_log::expire(&mut self.status, &left);
        }

        if let Some(reason) = self.reason {
            let phase = self.status.phase.unwrap_or(Phase::Pending);
            let succeeded = match phase {
                Phase::Succeeded => ConditionStatus::True,
                Phase::Failed | Phase::Cancelled => ConditionStatus::False,
                Phase::Pending | Phase::Running => ConditionStatus::Unknown,
            };
            let ready = if phase == Phase::Succeeded {
                ConditionStatus::True
            } else {
                ConditionStatus::False
            };
            let generation = self.status.observed_generation;
            for (type_, status) in [(CONDITION_SUCCEEDED, succeeded), (CONDITION_READY, ready)] {
                set_condition(
                    &mut self.status.conditions,
                    type_,
                    status,
                    reason,
                    &self.message,
                    generation,
                    self.now,
                );
            }
            self.status.message = (!self.message.is_empty()).then(|| self.message.clone());
        }

        let leases = cache_lease::plan(
            self.build,
            &mut self.status,
            &self.observed.cache,
            self.now,
            self.config,
        );
        self.recheck = self.recheck.min(leases.recheck);
        let logs = build_log::plan(
            self.build,
            &mut self.status,
            &self.observed.pods,
            &self.observed.cache,
            self.now,
            self.config,
        );
        self.recheck = self.recheck.min(logs.recheck);
        let bases = base_images::plan(
            self.build,
            &mut self.status,
            &self.observed.cache,
            self.now,
            self.config,
        );
        self.recheck = self.recheck.min(bases.recheck);

        let transition = (self.reason, self.status.attempt) != (old.reason(), old.attempt);
        let mut announce =
            match (transition, self.reason) {
                (true, Some(reason)) if reason.is_announced() => Some(Action::Event(
                    EventSpec::new(reason, "UpdateStatus", self.message.clone()),
                )),
                _ => None,
            };
        let mut actions = Vec::new();
        if self.status != *old && !only_learned_pod_uid(old, &self.status) {
            actions.push(Action::WriteStatus(Box::new(self.status.clone())));
        }
        // Status first, then the lease, then the pod that imports what it holds. A refusal
        // is announced before the create that retries it: if that is refused again, the
        // plan stops there, and the Event must already be out.
        actions.extend(leases.actions);
        if self.reason == Some(Reason::PodCreateFailed) {
            actions.extend(announce.take());
        }
        actions.append(&mut self.creates);
        // A pod stopped here is read before it is deleted.
        actions.extend(logs.actions);
        actions.extend(bases.actions);
        let grace = self.config.pod_grace_period;
        for pod in self.pods_to_delete() {
            actions.push(Action::DeletePod {
                name: pod.name_any(),
                uid: pod.metadata.uid.clone(),
                grace,
            });
        }
        for event in self.events.drain(..) {
            actions.push(Action::Event(event));
        }
        actions.extend(announce);
        Plan {
            actions,
            recheck: self.recheck,
        }
    }
}

/// What `status.output` says of the pushed `digest` of `image`: the attestations the Build
/// asked BuildKit for, and where its signature is when it is signed.
fn output_status(build: &Build, image: String, digest: &Digest) -> OutputStatus {
    let spec = &build.spec;
    let mut attestations = Vec::new();
    if spec.attestations.provenance != ProvenanceMode::Off {
        attestations.push("provenance".to_owned());
    }
    if spec.attestations.sbom {
        attestations.push("sbom".to_owned());
    }
    let signature = spec.signing.as_ref().map(|_| {
        format!(
            "{}:{}",
            super::buildkit::output_repository(&image),
            crate::sign::signature_tag(digest)
        )
    });
    OutputStatus {
        digest: digest.to_string(),
        short_digest: digest.short(),
        image,
        attestations,
        signature,
    }
}

/// The pod recorded as `name` (with `uid`, once seen) among `pods`: `Ok(None)` when it was
/// never seen and is not there (its create has not happened, or is not visible yet), the
/// pod when it is there, and the failure when it vanished or another object took its name.
fn recorded_pod<'p>(
    pods: &'p [Pod],
    name: &str,
    uid: Option<&str>,
) -> Result<Option<&'p Pod>, Failure> {
    let pod = pods.iter().find(|p| p.name_any() == name);
    match (pod, uid) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(Failure {
            reason: Reason::PodLost,
            retriable: true,
            message: format!("pod {name} disappeared"),
        }),
        (Some(pod), Some(uid)) if pod.metadata.uid.as_deref() != Some(uid) => Err(Failure {
            reason: Reason::PodLost,
            retriable: true,
            message: format!("pod {name} was replaced by another object of the same name"),
        }),
        (Some(pod), _) => Ok(Some(pod)),
    }
}

/// What the followed pod `pod` (named `name`) says: [`podstate::classify`], except that a
/// pod being deleted before it succeeded has failed. Nobody here deletes the pod of an open
/// attempt: the cluster (an eviction, said as such) or a person did.
fn followed_state(pod: &Pod, name: &str) -> PodState {
    let state = podstate::classify(pod);
    if pod.metadata.deletion_timestamp.is_none() || matches!(state, PodState::Succeeded { .. }) {
        return state;
    }
    PodState::Failed(match state {
        PodState::Failed(f) if f.reason == Reason::PodEvicted => f,
        _ => Failure {
            reason: Reason::PodLost,
            retriable: true,
            message: format!("pod {name} was deleted while it ran"),
        },
    })
}

/// Whether `new` differs from `old` only by pod UIDs first seen: the open attempt's pod's,
/// or the current pods' of a native attempt's platforms still building.
///
/// That alone is not written: the UID rides on the next write the user can see (Running,
/// or the attempt's end), which saves one status write per pod. Until then a pod of the
/// recorded name is taken as its own; if it vanishes before its UID is recorded, it is
/// created again under the same name, exactly as after a create that never happened, which
/// is harmless because nothing of it has run yet (a pod seen running changes the phase,
/// which is written with the UID).
fn only_learned_pod_uid(old: &BuildStatus, new: &BuildStatus) -> bool {
    let mut without = new.clone();
    let mut learned = false;
    if let (Some(before), Some(now)) = (old.current_attempt(), without.current_attempt_mut())
        && now.completion_time.is_none()
        && before.pod_uid.is_none()
        && now.pod_uid.is_some()
    {
        now.pod_uid = None;
        learned = true;
    }
    for (before, now) in old.platforms.iter().zip(without.platforms.iter_mut()) {
        if before.pod_name == now.pod_name
            && !now.phase.is_terminal()
            && before.pod_uid.is_none()
            && now.pod_uid.is_some()
        {
            now.pod_uid = None;
            learned = true;
        }
    }
    learned && without == *old
}

mod native;

#[cfg(test)]
mod native_tests;
#[cfg(test)]
mod tests;
