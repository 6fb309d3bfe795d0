//! Table tests of `decide`: one test per transition of the lifecycle, each asserting the
//! whole plan (every action, in order) and the status it writes (pure).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

use super::*;
use crate::controller::fair_share::Limit;
use crate::controller::fixtures::PodFixture;
use crate::controller::observed::{Observed, wants_inputs};
use crate::controller::queue::{Peer, Standing};
use crate::controller::validate::SecretInfo;
use crate::crd::ConcurrencyPolicy;
use crate::crd::fixtures::{T0, at};

const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

/// `(status, reason)` of a condition.
fn find_condition_reason<'a>(
    conditions: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> Option<(&'a str, &'a str)> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.as_str(), c.reason.as_str()))
}

fn config() -> Config {
    Config::default()
}

fn decide_at(build: &Build, observed: &Observed, secs: i64) -> Plan {
    decide(build, observed, at(secs), &config())
}

fn with_pods(pods: impl IntoIterator<Item = PodFixture>) -> Observed {
    Observed {
        pods: pods.into_iter().map(|p| p.pod).collect(),
        ..Observed::default()
    }
}

fn none() -> Observed {
    Observed::default()
}

/// The Build after `apply` wrote the plan's status.
fn after(build: &Build, plan: &Plan) -> Build {
    let mut next = build.clone();
    if let Some(status) = plan.status() {
        next.status = Some(status.clone());
    }
    next
}

/// A Build whose attempt 1 was started at `T0` (its pod not seen yet).
fn started(build: Build) -> Build {
    let plan = decide_at(&build, &none(), 0);
    assert_eq!(plan.created_pods().len(), 1, "{:?}", plan.describe());
    after(&build, &plan)
}

/// A Build whose attempt 1 pod was seen running.
fn running(build: Build) -> Build {
    let build = started(build);
    let plan = pod_says(&build, |p| p.running(), 5);
    after(&build, &plan)
}

fn status(plan: &Plan) -> &BuildStatus {
    plan.status().expect("the plan writes status")
}

fn message(plan: &Plan) -> &str {
    status(plan).message.as_deref().unwrap_or_default()
}

/// Decides on `build` after the kubelet moved its attempt-1 pod to `state`.
fn pod_says(build: &Build, state: impl FnOnce(PodFixture) -> PodFixture, secs: i64) -> Plan {
    decide_at(
        build,
        &with_pods([state(PodFixture::for_build(build, 1))]),
        secs,
    )
}

fn phase_reason(plan: &Plan) -> (Phase, Reason) {
    let s = status(plan);
    (s.phase.expect("phase"), s.reason().expect("reason"))
}

fn peer(name: &str, created: i64, standing: Standing) -> Peer {
    Peer {
        name: name.into(),
        created: Some(at(created)),
        standing,
    }
}

// --- Finalizer and deletion ----------------------------------------------------------------

#[test]
fn a_missing_finalizer_is_added_alone_before_anything_else() {
    let plan = decide_at(&Build::test("app").without_finalizer(), &none(), 0);
    assert_eq!(plan.describe(), ["AddFinalizer"]);
    assert_eq!(plan.recheck, Recheck::OnChange);
}

#[test]
fn deletion_stops_live_pods_with_grace_and_removes_finished_pods_and_config_maps() {
    let build = running(Build::test("app")).deleting(at(60));
    let observed = Observed {
        pods: vec![
            PodFixture::for_build(&build, 1).evicted().pod,
            PodFixture::for_build(&build, 2).running().pod,
        ],
        config_maps: vec!["app-1".into(), "app-2".into()],
        ..Observed::default()
    };
    let plan = decide_at(&build, &observed, 60);
    assert_eq!(
        plan.describe(),
        [
            "DeletePod app-1 grace=0s",
            "DeletePod app-2 grace=30s",
            "DeleteConfigMap app-1",
            "DeleteConfigMap app-2",
            "Event Normal Cancelled",
        ]
    );
    assert_eq!(plan.recheck, Recheck::After(Duration::from_secs(5)));
}

#[test]
fn deletion_waits_while_pods_terminate() {
    let build = running(Build::test("app")).deleting(at(60));
    let plan = pod_says(&build, |p| p.running().terminating(), 61);
    assert!(plan.actions.is_empty(), "{:?}", plan.describe());
    assert_eq!(plan.recheck, Recheck::After(Duration::from_secs(5)));
}

#[test]
fn deletion_removes_the_finalizer_once_nothing_is_left() {
    let build = running(Build::test("app")).deleting(at(60));
    let plan = decide_at(&build, &none(), 70);
    assert_eq!(plan.describe(), ["RemoveFinalizer"]);
}

#[test]
fn deletion_without_our_finalizer_does_nothing() {
    let build = Build::test("app").without_finalizer().deleting(at(1));
    let plan = decide_at(&build, &with_pods([PodFixture::new("app", 1).running()]), 2);
    assert_eq!(plan, Plan::default());
}

// --- Starting ---------------------------------------------------------------------------

#[test]
fn a_new_build_writes_its_status_then_creates_attempt_one() {
    let build = Build::test("app");
    let plan = decide_at(&build, &none(), 0);
    assert_eq!(
        plan.describe(),
        [
            "WriteStatus Pending/PodCreated attempt=1",
            "CreatePod app-1"
        ]
    );
    let s = status(&plan);
    assert_eq!(s.observed_generation, Some(1));
    assert_eq!(s.start_time, Some(Time(T0)));
    assert_eq!(s.attempts.len(), 1);
    assert_eq!(s.attempts[0].pod_name, "app-1");
    assert_eq!(s.attempts[0].pod_uid, None);
    assert_eq!(
        find_condition_reason(&s.conditions, CONDITION_SUCCEEDED),
        Some(("Unknown", "PodCreated"))
    );
    assert_eq!(
        find_condition_reason(&s.conditions, CONDITION_READY),
        Some(("False", "PodCreated"))
    );
    // The deadline: spec.timeout after the start.
    assert_eq!(plan.recheck, Recheck::After(Duration::from_secs(3600)));
}

#[test]
fn an_inline_build_creates_its_config_map_before_its_pod() {
    let build = Build::test("app").inline("FROM scratch\n");
    let plan = decide_at(&build, &none(), 0);
    assert_eq!(
        plan.describe(),
        [
            "WriteStatus Pending/PodCreated attempt=1",
            "CreateConfigMap app-1",
            "CreatePod app-1"
        ]
    );
}

#[test]
fn an_invalid_spec_fails_without_a_pod_and_without_a_requeue() {
    let build = Build::test("app").timeout("30s");
    let plan = decide_at(&build, &none(), 0);
    assert_eq!(
        plan.describe(),
        [
            "WriteStatus Failed/InvalidSpec attempt=1",
            "Event Warning InvalidSpec"
        ]
    );
    let s = status(&plan);
    assert!(s.message.as_deref().unwrap().starts_with("spec.timeout"));
    assert_eq!(s.completion_time, Some(Time(T0)));
    assert_eq!(plan.recheck, Recheck::OnChange);
    // And it stays there: no hot loop.
    let again = decide_at(&after(&build, &plan), &none(), 100);
    assert_eq!(again, Plan::default());
}

#[test]
fn a_missing_push_secret_fails_with_secret_not_found_naming_the_field() {
    let build = Build::test("app").push_secret("regcred");
    let plan = decide_at(&build, &none(), 0);
    assert_eq!(phase_reason(&plan), (Phase::Failed, Reason::SecretNotFound));
    assert!(plan.created_pods().is_empty());
    assert!(message(&plan).starts_with("spec.output.pushSecretRef: Secret \"regcred\" not found"));
}

#[test]
fn a_missing_builder_service_account_fails_naming_the_field_and_creates_no_pod() {
    let mut build = Build::test("app");
    build.spec.builder.service_account_name = Some("builder".into());
    let plan = decide_at(&build, &none(), 0);
    assert_eq!(phase_reason(&plan), (Phase::Failed, Reason::InvalidSpec));
    assert!(plan.created_pods().is_empty());
    assert!(
        message(&plan).starts_with(
            "spec.builder.serviceAccountName: ServiceAccount \"builder\" not found in namespace \"default\""
        ),
        "{}",
        message(&plan)
    );
    // Once it exists, the pod runs as it.
    let observed = Observed {
        service_accounts: ["builder".to_owned()].into(),
        ..Observed::default()
    };
    let plan = decide_at(&build, &observed, 0);
    let pod = plan.created_pods()[0];
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref());
    assert_eq!(account, Some("builder"));
}

#[test]
fn a_present_push_secret_is_mounted() {
    let build = Build::test("app").push_secret("regcred");
    let observed = Observed {
        secrets: [(
            "regcred".to_owned(),
            SecretInfo {
                type_: "kubernetes.io/dockerconfigjson".into(),
                keys: [".dockerconfigjson".to_owned()].into(),
            },
        )]
        .into(),
        ..Observed::default()
    };
    let plan = decide_at(&build, &observed, 0);
    assert_eq!(plan.created_pods().len(), 1);
}

// --- Following the attempt ----------------------------------------------------------------

#[test]
fn a_pending_pod_keeps_the_build_pending_without_a_write_of_its_uid() {
    let build = started(Build::test("app"));
    let plan = decide_at(&build, &with_pods([PodFixture::for_build(&build, 1)]), 2);
    // The pod's UID alone is not worth a write: it rides on the next one.
    assert_eq!(plan.describe(), Vec::<String>::new());
    // The deadline counts from the end of the start's second (status times are whole
    // seconds): 3601 s after T0.
    assert_eq!(plan.recheck, Recheck::After(Duration::from_secs(3599)));
}

#[test]
fn the_pod_uid_rides_on_the_running_write() {
    let build = started(Build::test("app"));
    let plan = pod_says(&build, |p| p.running(), 5);
    assert_eq!(
        status(&plan).attempts[0].pod_uid.as_deref(),
        Some("pod-app-1")
    );
}

#[test]
fn a_pod_gone_before_its_uid_was_recorded_is_created_again() {
    let build = started(Build::test("app"));
    let plan = decide_at(&build, &Observed::default(), 3);
    assert_eq!(plan.describe(), ["CreatePod app-1"]);
}

#[test]
fn a_running_pod_moves_the_build_to_running() {
    let build = started(Build::test("app"));
    let plan = pod_says(&build, |p| p.running(), 5);
    assert_eq!(plan.describe(), ["WriteStatus Running/Running attempt=1"]);
}

#[test]
fn nothing_is_written_when_nothing_changed() {
    let build = running(Build::test("app"));
    let plan = pod_says(&build, |p| p.running(), 50);
    assert!(plan.actions.is_empty(), "{:?}", plan.describe());
    assert_eq!(plan.recheck, Recheck::After(Duration::from_secs(3551)));
}

#[test]
fn a_pushed_digest_succeeds_the_build() {
    let build = running(Build::test("app"));
    let plan = pod_says(&build, |p| p.pushed(DIGEST), 100);
    assert_eq!(
        plan.describe(),
        [
            "WriteStatus Succeeded/Succeeded attempt=1",
            "Event Normal Succeeded"
        ]
    );
    let s = status(&plan);
    let output = s.output.as_ref().unwrap();
    assert_eq!(output.digest, DIGEST);
    assert_eq!(output.short_digest, "111111111111");
    assert_eq!(output.image, "registry.example.com/team/app:latest");
    assert_eq!(s.attempts[0].result, Some(AttemptResult::Succeeded));
    assert_eq!(s.attempts[0].digest.as_deref(), Some(DIGEST));
    assert_eq!(s.completion_time, Some(Time(at(100))));
    assert_eq!(
        find_condition_reason(&s.conditions, CONDITION_READY),
        Some(("True", "Succeeded"))
    );
    assert_eq!(plan.recheck, Recheck::OnChange);
}

#[test]
fn the_output_names_its_attestations_and_where_a_signed_images_signature_is() {
    let build = Build::test("app");
    let plan = pod_says(&running(build.clone()), |p| p.pushed(DIGEST), 100);
    let output = status(&plan).output.clone().unwrap();
    assert_eq!(
        output.attestations,
        ["provenance"],
        "provenance is on by default"
    );
    assert_eq!(output.signature, None);

    let mut signed = build.signed_with("image-signing");
    signed.spec.attestations = crate::crd::Attestations {
        provenance: ProvenanceMode::Off,
        sbom: true,
    };
    let key = Observed {
        secrets: BTreeMap::from([(
            "image-signing".to_owned(),
            SecretInfo {
                type_: "Opaque".into(),
                keys: ["cosign.key".to_owned()].into(),
            },
        )]),
        ..Observed::default()
    };
    let plan = decide_at(&signed, &key, 0);
    assert_eq!(plan.created_pods().len(), 1, "{:?}", plan.describe());
    let signed = after(&signed, &plan);
    let metadata = format!("{{\"containerimage.digest\":\"{DIGEST}\"}}");
    let plan = pod_says(&signed, |p| p.sign_exited(0, &metadata), 100);
    let s = status(&plan);
    let output = s.output.as_ref().unwrap();
    assert_eq!(output.attestations, ["sbom"]);
    assert_eq!(
        output.signature.as_deref(),
        Some(
            format!(
                "registry.example.com/team/app:sha256-{}.sig",
                "1".repeat(64)
            )
            .as_str()
        )
    );
    assert!(
        s.message
            .as_deref()
            .unwrap_or_default()
            .contains(", signed"),
        "{:?}",
        s.message
    );
}

#[test]
fn success_without_a_valid_digest_is_a_build_failure() {
    let build = running(Build::test("app"));
    let plan = decide_at(
        &build,
        &with_pods([PodFixture::for_build(&build, 1)
            .succeeded("{\"containerimage.digest\":\"sha256:nope\"}")]),
        100,
    );
    assert_eq!(phase_reason(&plan), (Phase::Failed, Reason::BuildFailed));
    assert!(status(&plan).output.is_none());
}

#[test]
fn a_failing_build_is_not_retried() {
    let build = running(Build::test("app"));
    let plan = pod_says(&build, |p| p.exited(1, "ERROR: RUN make: exit code 2"), 100);
    assert_eq!(
        plan.describe(),
        [
            "WriteStatus Failed/BuildFailed attempt=1",
            "Event Warning BuildFailed"
        ]
    );
    let s = status(&plan);
    assert!(s.message.as_deref().unwrap().contains("RUN make"));
    assert_eq!(s.retries, 0);
    assert_eq!(plan.recheck, Recheck::OnChange);
}

#[test]
fn out_of_memory_is_a_build_failure_that_names_the_limit() {
    let build = running(Build::test("app"));
    let plan = pod_says(&build, |p| p.oom_killed(), 100);
    assert_eq!(phase_reason(&plan), (Phase::Failed, Reason::BuildFailed));
    assert!(message(&plan).contains("limits.memory"));
}

#[test]
fn an_eviction_is_retried_after_a_backoff() {
    let build = running(Build::test("app"));
    let plan = pod_says(&build, |p| p.evicted(), 100);
    assert_eq!(
        plan.describe(),
        [
            "WriteStatus Pending/PodEvicted attempt=1",
            "Event Warning PodEvicted"
        ]
    );
    let s = status(&plan);
    assert_eq!(s.retries, 1);
    assert_eq!(s.attempts[0].result, Some(AttemptResult::Failed));
    assert!(
        s.message
            .as_deref()
            .unwrap()
            .contains("retry 1 of 2 at 2026-01-01T00:01:51Z")
    );
    // 10 s from the end of the failure's second: never shorter than the backoff.
    assert_eq!(plan.recheck, Recheck::After(Duration::from_secs(11)));
}

#[test]
fn the_retry_starts_the_next_attempt_once_the_backoff_is_over() {
    let build = running(Build::test("app"));
    let evicted = [PodFixture::for_build(&build, 1).evicted()];
    let build = after(&build, &decide_at(&build, &with_pods(evicted.clone()), 100));
    // Still backing off: nothing.
    let early = decide_at(&build, &with_pods(evicted.clone()), 105);
    assert!(early.actions.is_empty());
    assert_eq!(early.recheck, Recheck::After(Duration::from_secs(6)));
    // The failure was stored as 100 s, but may have been up to 100.999 s: at 110 s the
    // backoff may not be over yet.
    let not_yet = decide_at(&build, &with_pods(evicted.clone()), 110);
    assert!(not_yet.actions.is_empty(), "{:?}", not_yet.describe());
    // Backoff over: attempt 2.
    let plan = decide_at(&build, &with_pods(evicted), 111);
    assert_eq!(
        plan.describe(),
        [
            "WriteStatus Pending/PodCreated attempt=2",
            "CreatePod app-2"
        ]
    );
    assert_eq!(
        status(&plan).start_time,
        Some(Time(T0)),
        "the run's start stays"
    );
}

#[test]
fn waits_count_from_the_end_of_the_second_a_status_time_stands_for() {
    // What decide holds in memory (sub-second) and what it reads back from the API server
    // (cut to the second) give the same moment, never earlier than the wait allows.
    let precise = Time(T0.saturating_add(SignedDuration::from_millis(300)).unwrap());
    let stored = Time(T0);
    let wait = Duration::from_secs(2);
    assert_eq!(wait_ends(&precise, wait), at(3));
    assert_eq!(wait_ends(&stored, wait), at(3));
    let exact = precise
        .0
        .saturating_add(SignedDuration::from_secs(2))
        .unwrap();
    assert!(wait_ends(&precise, wait) >= exact);
}

#[test]
fn the_backoff_doubles_and_is_capped() {
    let config = config();
    let delays: Vec<u64> = (1..=7).map(|n| backoff(n, &config).as_secs()).collect();
    assert_eq!(delays, [10, 20, 40, 80, 160, 300, 300]);
}

#[test]
fn an_infrastructure_failure_without_retries_left_fails_the_build() {
    let build = running(Build::test("app").retries(0));
    let plan = pod_says(&build, |p| p.disrupted(), 100);
    assert_eq!(phase_reason(&plan), (Phase::Failed, Reason::PodEvicted));
    assert!(message(&plan).contains("no retries left"));
}

#[test]
fn an_image_pull_backoff_deletes_the_stuck_pod_and_retries() {
    let build = started(Build::test("app"));
    let plan = pod_says(&build, |p| p.image_pull_backoff(), 30);
    assert_eq!(
        plan.describe(),
        [
            "WriteStatus Pending/ImagePullFailed attempt=1",
            "DeletePod app-1 grace=30s",
            "Event Warning ImagePullFailed"
        ]
    );
}

#[test]
fn the_next_attempt_waits_for_the_stuck_pod_to_terminate() {
    let build = started(Build::test("app"));
    let stuck = PodFixture::for_build(&build, 1).image_pull_backoff();
    let build = after(&build, &decide_at(&build, &with_pods([stuck.clone()]), 30));
    let plan = decide_at(&build, &with_pods([stuck.terminating()]), 60);
    assert_eq!(
        plan.describe(),
        [
            "WriteStatus Pending/Starting attempt=1",
            "Event Normal Starting"
        ]
    );
    assert!(plan.created_pods().is_empty());
}

#[test]
fn an_invalid_image_name_is_not_retried() {
    let build = started(Build::test("app"));
    let plan = pod_says(&build, |p| p.invalid_image(), 30);
    assert_eq!(
        phase_reason(&plan),
        (Phase::Failed, Reason::ImagePullFailed)
    );
    assert_eq!(
        plan.describe()[1],
        "DeletePod app-1 grace=30s",
        "the stuck pod goes"
    );
}

#[test]
fn a_pod_that_vanished_after_it_was_seen_is_lost_and_retried() {
    let build = running(Build::test("app"));
    let plan = decide_at(&build, &none(), 100);
    assert_eq!(phase_reason(&plan), (Phase::Pending, Reason::PodLost));
    assert_eq!(status(&plan).retries, 1);
    assert!(plan.created_pods().is_empty(), "not before the backoff");
}

#[test]
fn a_pod_announced_but_never_seen_is_created_again_under_the_same_name() {
    // A controller that crashed after writing the status and before creating the pod.
    let build = started(Build::test("app"));
    let plan = decide_at(&build, &none(), 3);
    assert_eq!(plan.describe(), ["CreatePod app-1"]);
}

fn refused(pod: &str, message: &str) -> Observed {
    Observed {
        pod_refusals: BTreeMap::from([(pod.to_owned(), message.to_owned())]),
        ..Observed::default()
    }
}

#[test]
fn a_pod_the_api_server_refused_is_explained_and_created_again() {
    let build = started(Build::test("app"));
    let plan = decide_at(
        &build,
        &refused("app-1", "exceeded quota: q, requested: pods=1"),
        10,
    );
    assert_eq!(
        plan.describe(),
        [
            "WriteStatus Pending/PodCreateFailed attempt=1",
            "Event Warning PodCreateFailed",
            "CreatePod app-1"
        ]
    );
    let s = status(&plan);
    assert_eq!(
        s.message.as_deref(),
        Some(
            "attempt 1: the API server refused pod app-1, retrying: \
             exceeded quota: q, requested: pods=1"
        )
    );
    assert_eq!(s.attempts.len(), 1, "a refusal spends no retry");
    // Refused again with the same words: nothing new to write, the create is retried.
    let again = after(&build, &plan);
    let plan = decide_at(
        &again,
        &refused("app-1", "exceeded quota: q, requested: pods=1"),
        20,
    );
    assert_eq!(plan.describe(), ["CreatePod app-1"]);
}

#[test]
fn a_pod_refused_until_the_deadline_times_out_without_another_create() {
    let build = started(Build::test("app").timeout("1m"));
    let plan = decide_at(&build, &refused("app-1", "exceeded quota"), 90);
    assert_eq!(phase_reason(&plan), (Phase::Failed, Reason::TimedOut));
    assert!(
        plan.created_pods().is_empty(),
        "no create after the deadline: {:?}",
        plan.describe()
    );
    let message = status(&plan).message.clone().unwrap_or_default();
    assert!(
        message.starts_with("attempt 1 did not start within")
            && message.contains("the API server refused pod app-1: exceeded quota"),
        "{message}"
    );
}

#[test]
fn a_pod_deleted_by_someone_else_is_lost_and_retried() {
    let build = running(Build::test("app"));
    let plan = pod_says(&build, |p| p.running().terminating(), 100);
    assert_eq!(phase_reason(&plan), (Phase::Pending, Reason::PodLost));
    assert!(
        plan.describe().iter().all(|a| !a.starts_with("DeletePod")),
        "already going"
    );
}

#[test]
fn a_pod_replaced_under_the_same_name_is_lost() {
    let build = running(Build::test("app"));
    let impostor = PodFixture::for_build(&build, 1).pod_uid("other").running();
    let plan = decide_at(&build, &with_pods([impostor]), 100);
    assert_eq!(phase_reason(&plan), (Phase::Pending, Reason::PodLost));
    assert!(
        plan.describe()
            .contains(&"DeletePod app-1 grace=30s".to_owned())
    );
}

#[test]
fn a_pod_on_a_silent_node_is_lost_deleted_and_retried() {
    let build = running(Build::test("app"));
    let plan = pod_says(&build, |p| p.unknown(), 100);
    assert_eq!(
        plan.describe(),
        [
            "WriteStatus Pending/PodLost attempt=1",
            "DeletePod app-1 grace=30s",
            "Event Warning PodLost"
        ]
    );
}

#[test]
fn an_attempt_past_its_deadline_times_out_and_its_pod_is_deleted() {
    let build = running(Build::test("app").timeout("10m"));
    // Not at 600 s: the start was stored as T0 but may have been up to T0 + 0.999 s.
    let not_yet = pod_says(&build, |p| p.running(), 600);
    assert!(not_yet.actions.is_empty(), "{:?}", not_yet.describe());
    let plan = pod_says(&build, |p| p.running(), 601);
    assert_eq!(
        plan.describe(),
        [
            "WriteStatus Failed/TimedOut attempt=1",
            "DeletePod app-1 grace=30s",
            "Event Warning TimedOut"
        ]
    );
    assert_eq!(status(&plan).retries, 0, "a timeout is not retried");
}

#[test]
fn the_controllers_maximum_timeout_cuts_spec_timeout_short() {
    let capped = Config {
        max_timeout: Some(Duration::from_secs(120)),
        ..config()
    };
    let build = Build::test("app").timeout("10m");
    let plan = decide(&build, &none(), at(0), &capped);
    let pod = plan.created_pods()[0];
    let deadline = pod.spec.as_ref().and_then(|s| s.active_deadline_seconds);
    assert_eq!(
        deadline,
        Some(120),
        "activeDeadlineSeconds follows the ceiling"
    );
    assert_eq!(plan.recheck, Recheck::After(Duration::from_secs(120)));

    let build = after(&build, &plan);
    let running = decide(
        &build,
        &with_pods([PodFixture::for_build(&build, 1).running()]),
        at(5),
        &capped,
    );
    let build = after(&build, &running);
    let plan = decide(
        &build,
        &with_pods([PodFixture::for_build(&build, 1).running()]),
        at(121),
        &capped,
    );
    assert_eq!(phase_reason(&plan), (Phase::Failed, Reason::TimedOut));
    assert_eq!(
        message(&plan),
        "attempt 1 ran longer than the controller's maximum build timeout (120s; spec.timeout is 10m)"
    );
    // A ceiling above spec.timeout changes nothing.
    let loose = Config {
        max_timeout: Some(Duration::from_secs(7200)),
        ..config()
    };
    let plan = decide(&Build::test("app").timeout("10m"), &none(), at(0), &loose);
    let pod = plan.created_pods()[0];
    assert_eq!(
        pod.spec.as_ref().and_then(|s| s.active_deadline_seconds),
        Some(600)
    );
}

#[test]
fn the_kubelets_deadline_is_a_timeout_too() {
    let build = running(Build::test("app"));
    let plan = pod_says(&build, |p| p.deadline_exceeded(), 3600);
    assert_eq!(phase_reason(&plan), (Phase::Failed, Reason::TimedOut));
}

// --- Cancel -----------------------------------------------------------------------------

#[test]
fn cancel_deletes_the_running_pod_with_a_grace_period() {
    let build = running(Build::test("app")).cancel().generation(2);
    let plan = pod_says(&build, |p| p.running(), 100);
    assert_eq!(
        plan.describe(),
        [
            "WriteStatus Cancelled/Cancelled attempt=1",
            "DeletePod app-1 grace=30s",
            "Event Normal Cancelled"
        ]
    );
    let s = status(&plan);
    assert_eq!(s.attempts[0].result, Some(AttemptResult::Cancelled));
    assert_eq!(s.attempts[0].reason, Some(Reason::Cancelled));
    assert_eq!(s.observed_generation, Some(2));
    // Cancelled stays cancelled, and the pod is not deleted twice.
    let next = after(&build, &plan);
    let again = decide_at(
        &next,
        &with_pods([PodFixture::for_build(&build, 1).running().terminating()]),
        110,
    );
    assert_eq!(again, Plan::default());
}

#[test]
fn an_ended_attempt_has_its_log_stored_after_the_status_says_how_it_ended() {
    let build = running(Build::test("app"));
    let observed = with_pods([PodFixture::for_build(&build, 1).pushed(DIGEST)]);
    let plan = decide(&build, &observed, at(100), &with_cache(true, false));
    let described = plan.describe();
    assert_eq!(described[0], "WriteStatus Succeeded/Succeeded attempt=1");
    assert!(
        described.contains(&"StoreLog app-1 -> default/kiln_logs:build-uid-app-1".to_owned()),
        "{described:?}"
    );
    // Without the admin API, no log is stored.
    let plan = decide(&build, &observed, at(100), &config());
    assert!(!plan.describe().iter().any(|a| a.starts_with("StoreLog")));
}

#[test]
fn a_cancelled_pod_is_read_before_it_is_deleted() {
    let build = running(Build::test("app")).cancel().generation(2);
    let plan = decide(
        &build,
        &with_pods([PodFixture::for_build(&build, 1).running()]),
        at(100),
        &with_cache(true, false),
    );
    assert_eq!(
        plan.describe(),
        [
            "WriteStatus Cancelled/Cancelled attempt=1",
            "StoreLog app-1 -> default/kiln_logs:build-uid-app-1",
            "DeletePod app-1 grace=30s",
            "Event Normal Cancelled"
        ]
    );
}

#[test]
fn an_attempt_leaving_the_history_hands_its_stored_log_to_the_expired_list() {
    let mut build = Build::test("app").generation(2);
    build.spec.retention = Some(crate::crd::Retention {
        attempt_history: Some(1),
        ..Default::default()
    });
    let mut first = AttemptRecord::test(1, "app-1", Some(AttemptResult::Failed));
    first.log = Some(crate::crd::StoredLog {
        repository: "default/kiln_logs".into(),
        tag: "build-uid-app-1".into(),
        digest: format!("sha256:{}", "a".repeat(64)),
        size: 10,
        truncated_bytes: 0,
    });
    let build = build.with_status(BuildStatus {
        phase: Some(Phase::Failed),
        attempt: 1,
        observed_generation: Some(1),
        attempts: vec![first],
        ..BuildStatus::default()
    });
    let plan = decide(&build, &none(), at(100), &with_cache(true, false));
    let s = status(&plan);
    assert_eq!(s.attempts.len(), 1);
    assert_eq!(s.attempts[0].attempt, 2);
    assert_eq!(s.expired_logs, ["default/kiln_logs:build-uid-app-1"]);
    assert!(
        plan.describe()
            .contains(&"DeleteCacheTag default/kiln_logs:build-uid-app-1".to_owned()),
        "{:?}",
        plan.describe()
    );
}

/// A Build watching its bases, whose attempt 1 succeeded on alpine `sha256:aaa…`, and a
/// ledger whose latest check (at 5000) found the tag at `sha256:<now>…`.
fn base_moved(now: char) -> (Build, Observed) {
    let digest = |c: char| format!("sha256:{}", c.to_string().repeat(64));
    let mut build = Build::test("app");
    build.spec.triggers = Some(crate::crd::Triggers {
        base_image_changed: true,
    });
    let build = build.with_status(BuildStatus {
        phase: Some(Phase::Succeeded),
        attempt: 1,
        observed_generation: Some(1),
        attempts: vec![AttemptRecord::test(
            1,
            "app-1",
            Some(AttemptResult::Succeeded),
        )],
        base_images: vec![crate::crd::BaseImage {
            image: "docker.io/library/alpine:3.20".into(),
            digest: digest('a'),
        }],
        base_image_check: Some(crate::crd::BaseImageCheck {
            attempt: 1,
            checked_at: Some(Time(at(100))),
            last_trigger: None,
        }),
        ..BuildStatus::default()
    });
    let observed = Observed {
        cache: BTreeMap::from([(
            crate::controller::base_images::check_key("uid-app"),
            crate::controller::cache_ledger::CallState {
                resolved_bases: Some(BTreeMap::from([(
                    "docker.io/library/alpine:3.20".to_owned(),
                    digest(now),
                )])),
                touched: Some(at(5000)),
                ..Default::default()
            },
        )]),
        ..Observed::default()
    };
    (build, observed)
}

#[test]
fn a_moved_base_image_starts_one_attempt_and_says_so() {
    let (build, observed) = base_moved('b');
    let plan = decide(&build, &observed, at(5001), &with_cache(true, false));
    assert_eq!(
        plan.describe(),
        [
            "WriteStatus Pending/PodCreated attempt=2",
            "TakeLease build-uid-app-2",
            "CreateConfigMap app-2",
            "CreatePod app-2",
            "Event Normal BaseImageChanged"
        ]
    );
    let Some(Action::Event(event)) = plan.actions.last() else {
        panic!("an Event");
    };
    assert_eq!(
        event.note,
        format!(
            "base image docker.io/library/alpine:3.20 moved from sha256:{} to sha256:{}: attempt 2 rebuilds on it",
            "a".repeat(64),
            "b".repeat(64)
        )
    );
    let s = status(&plan);
    let trigger = s
        .base_image_check
        .as_ref()
        .and_then(|c| c.last_trigger.clone())
        .unwrap();
    assert_eq!(
        (trigger.attempt, trigger.to.as_str()),
        (2, format!("sha256:{}", "b".repeat(64)).as_str())
    );
    assert_eq!(s.retries, 0);

    // The triggered attempt failed: the same digest starts nothing more.
    let mut failed = after(&build, &plan);
    if let Some(status) = failed.status.as_mut() {
        status.phase = Some(Phase::Failed);
        if let Some(record) = status.attempts.last_mut() {
            record.completion_time = Some(Time(at(5100)));
            record.result = Some(AttemptResult::Failed);
        }
    }
    let (_, mut observed) = base_moved('b');
    if let Some(state) = observed.cache.values_mut().next() {
        state.touched = Some(at(9000));
    }
    let plan = decide(&failed, &observed, at(9001), &with_cache(true, false));
    assert!(!plan.starts_attempt(), "{:?}", plan.describe());
}

#[test]
fn an_unmoved_base_image_only_records_the_check() {
    let (build, observed) = base_moved('a');
    let plan = decide(&build, &observed, at(5001), &with_cache(true, false));
    assert_eq!(plan.describe(), ["WriteStatus Succeeded/- attempt=1"]);
    assert_eq!(
        status(&plan).base_image_check.as_ref().unwrap().checked_at,
        Some(Time(at(5000)))
    );
}

#[test]
fn a_build_cancelled_before_it_started_never_gets_a_pod() {
    let plan = decide_at(&Build::test("app").cancel(), &none(), 0);
    assert_eq!(
        plan.describe(),
        [
            "WriteStatus Cancelled/Cancelled attempt=0",
            "Event Normal Cancelled"
        ]
    );
}

// --- New generations and reruns -------------------------------------------------------------

#[test]
fn a_new_generation_supersedes_the_running_attempt() {
    let build = running(Build::test("app")).generation(2);
    let plan = pod_says(&build, |p| p.running(), 100);
    assert_eq!(
        plan.describe(),
        [
            "WriteStatus Pending/Starting attempt=1",
            "DeletePod app-1 grace=30s",
            "Event Normal Superseded",
            "Event Normal Starting"
        ]
    );
    let s = status(&plan);
    assert_eq!(s.attempts[0].result, Some(AttemptResult::Cancelled));
    assert_eq!(s.attempts[0].reason, Some(Reason::Superseded));
    assert_eq!(s.observed_generation, Some(2));
}

#[test]
fn the_new_attempt_starts_once_the_superseded_pod_is_gone() {
    let build = running(Build::test("app")).generation(2);
    let build = after(&build, &pod_says(&build, |p| p.running(), 100));
    let plan = pod_says(&build, |p| p.exited(143, ""), 110);
    assert_eq!(
        plan.describe(),
        [
            "WriteStatus Pending/PodCreated attempt=2",
            "CreatePod app-2"
        ]
    );
    assert_eq!(status(&plan).attempts[1].generation, 2);
}

#[test]
fn a_new_generation_after_success_builds_again() {
    let build = running(Build::test("app"));
    let done = after(&build, &pod_says(&build, |p| p.pushed(DIGEST), 100));
    let plan = decide_at(
        &done.clone().generation(2),
        &with_pods([PodFixture::for_build(&done, 1).pushed(DIGEST)]),
        200,
    );
    assert_eq!(plan.created_pods().len(), 1);
    let s = status(&plan);
    assert_eq!((s.attempt, s.output.clone()), (2, None));
    assert_eq!(s.completion_time, None);
}

#[test]
fn a_rerun_token_starts_a_new_attempt_once() {
    let build = running(Build::test("app"));
    let done = after(&build, &pod_says(&build, |p| p.pushed(DIGEST), 100));
    let pods = with_pods([PodFixture::for_build(&done, 1).pushed(DIGEST)]);
    let rerun = done.rerun("2026-01-02");
    let plan = decide_at(&rerun, &pods, 200);
    assert_eq!(plan.created_pods().len(), 1);
    assert_eq!(status(&plan).rerun_token.as_deref(), Some("2026-01-02"));
    // The same token again is not a new request.
    let next = after(&rerun, &plan);
    let mut pods = pods;
    pods.pods
        .push(PodFixture::for_build(&next, 2).running().pod);
    let again = decide_at(&next, &pods, 210);
    assert!(again.created_pods().is_empty());
}

// --- Concurrency groups ---------------------------------------------------------------------

#[test]
fn a_build_waits_while_another_of_its_group_runs() {
    let build = Build::test("b").group("g").created_at(at(10));
    let observed = Observed {
        peers: vec![peer("a", 0, Standing::Active)],
        ..Observed::default()
    };
    let plan = decide_at(&build, &observed, 20);
    assert_eq!(
        plan.describe(),
        [
            "WriteStatus Pending/Queued attempt=0",
            "Event Normal Queued"
        ]
    );
    assert_eq!(
        status(&plan).message.as_deref(),
        Some("waiting for Build \"a\" (running) in concurrency group \"g\"")
    );
    assert_eq!(plan.recheck, Recheck::After(Duration::from_secs(30)));
    // Still queued later: no write, no event.
    let again = decide_at(&after(&build, &plan), &observed, 50);
    assert!(again.actions.is_empty());
}

#[test]
fn a_build_waits_behind_an_earlier_waiting_member() {
    let build = Build::test("b").created_at(at(10));
    let observed = Observed {
        peers: vec![peer("a", 5, Standing::Waiting)],
        ..Observed::default()
    };
    let plan = decide_at(&build, &observed, 20);
    assert_eq!(phase_reason(&plan), (Phase::Pending, Reason::Queued));
    assert!(message(&plan).contains("queued ahead"));
}

#[test]
fn a_queued_build_starts_when_its_group_is_free() {
    let build = Build::test("b").created_at(at(10));
    let busy = Observed {
        peers: vec![peer("a", 0, Standing::Active)],
        ..Observed::default()
    };
    let queued = after(&build, &decide_at(&build, &busy, 20));
    let free = Observed {
        peers: vec![peer("a", 0, Standing::Idle)],
        ..Observed::default()
    };
    let plan = decide_at(&queued, &free, 40);
    assert_eq!(plan.created_pods().len(), 1);
    assert_eq!(phase_reason(&plan), (Phase::Pending, Reason::PodCreated));
}

#[test]
fn a_retry_keeps_the_group_even_when_an_earlier_member_waits() {
    let build = running(Build::test("b").created_at(at(10)));
    let evicted = PodFixture::for_build(&build, 1).evicted();
    let build = after(
        &build,
        &decide_at(&build, &with_pods([evicted.clone()]), 100),
    );
    let observed = Observed {
        pods: vec![evicted.pod],
        peers: vec![peer("a", 0, Standing::Waiting)],
        ..Observed::default()
    };
    let plan = decide_at(&build, &observed, 111);
    assert_eq!(plan.created_pods().len(), 1, "{:?}", plan.describe());
}

#[test]
fn cancel_in_progress_cancels_the_older_running_build() {
    let build = running(
        Build::test("a")
            .group("g")
            .policy(ConcurrencyPolicy::CancelInProgress),
    );
    let observed = Observed {
        pods: vec![PodFixture::for_build(&build, 1).running().pod],
        peers: vec![peer("b", 60, Standing::Waiting)],
        ..Observed::default()
    };
    let plan = decide_at(&build, &observed, 100);
    assert_eq!(
        plan.describe(),
        [
            "WriteStatus Cancelled/Superseded attempt=1",
            "DeletePod a-1 grace=30s",
            "Event Normal Superseded"
        ]
    );
    assert!(message(&plan).contains("newer Build \"b\""));
}

#[test]
fn cancel_in_progress_starts_the_newest_once_the_older_pod_is_gone() {
    let build = Build::test("b")
        .created_at(at(60))
        .policy(ConcurrencyPolicy::CancelInProgress);
    let busy = Observed {
        peers: vec![peer("a", 0, Standing::Active)],
        ..Observed::default()
    };
    assert_eq!(
        phase_reason(&decide_at(&build, &busy, 61)),
        (Phase::Pending, Reason::Queued)
    );
    let free = Observed {
        peers: vec![peer("a", 0, Standing::Idle)],
        ..Observed::default()
    };
    assert_eq!(decide_at(&build, &free, 62).created_pods().len(), 1);
}

// --- Recovery and bookkeeping -------------------------------------------------------------

#[test]
fn a_pod_newer_than_the_status_is_adopted_not_duplicated() {
    // Status says attempt 1 finished with a retry pending; attempt 2's pod exists (the
    // status write that announced it was lost).
    let build = running(Build::test("app"));
    let build = after(&build, &pod_says(&build, |p| p.evicted(), 100));
    let pods = with_pods([
        PodFixture::for_build(&build, 1).evicted(),
        PodFixture::for_build(&build, 2).running(),
    ]);
    let plan = decide_at(&build, &pods, 200);
    assert!(plan.created_pods().is_empty(), "{:?}", plan.describe());
    let s = status(&plan);
    assert_eq!(s.attempt, 2);
    assert_eq!(s.phase, Some(Phase::Running));
    assert_eq!(
        s.attempts.last().unwrap().pod_uid.as_deref(),
        Some("pod-app-2")
    );
}

#[test]
fn a_live_pod_of_an_earlier_attempt_is_deleted() {
    let build = running(Build::test("app"));
    let build = after(&build, &pod_says(&build, |p| p.evicted(), 100));
    let plan = decide_at(
        &build,
        &with_pods([
            PodFixture::for_build(&build, 1).running(),
            PodFixture::for_build(&build, 2).running(),
        ]),
        200,
    );
    assert!(
        plan.describe()
            .contains(&"DeletePod app-1 grace=30s".to_owned())
    );
    assert!(
        !plan
            .describe()
            .iter()
            .any(|a| a.starts_with("DeletePod app-2"))
    );
}

#[test]
fn the_attempt_history_is_bounded() {
    let mut build = Build::test("app").retries(10);
    build.spec.retention = Some(crate::crd::Retention {
        attempt_history: Some(3),
        ..Default::default()
    });
    let mut now = 0;
    for attempt in 1..=6 {
        let pods: Vec<Pod> = (1..attempt)
            .map(|n| PodFixture::for_build(&build, n).evicted().pod)
            .collect();
        let observed = Observed {
            pods,
            ..Observed::default()
        };
        build = after(&build, &decide_at(&build, &observed, now));
        now += 1000;
    }
    let s = build.status.unwrap();
    assert!(s.attempt >= 4);
    assert_eq!(s.attempts.len(), 3);
    assert_eq!(s.attempts.last().unwrap().attempt, s.attempt);
}

#[test]
fn wants_inputs_only_while_the_build_may_start_or_run() {
    let build = Build::test("app");
    assert!(wants_inputs(&build));
    let done = running(build.clone());
    let done = after(
        &done,
        &decide_at(
            &done,
            &with_pods([PodFixture::for_build(&done, 1).pushed(DIGEST)]),
            100,
        ),
    );
    assert!(!wants_inputs(&done));
    assert!(wants_inputs(&done.clone().generation(2)));
    assert!(!wants_inputs(&build.deleting(at(1))));
}

// --- Property: one pod per attempt ------------------------------------------------------------

mod one_pod_per_attempt {
    //! A simulated world (the API server and a kubelet) driven by random events, with
    //! `decide` reconciling in between, plans applied only partly (a crash mid-apply), and
    //! status writes lost. Whatever happens, `decide` never plans two pods for one attempt.

    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use proptest::prelude::*;

    use super::*;
    use crate::controller::labels::attempt_of;
    use crate::controller::podstate::is_live;

    #[derive(Clone, Debug)]
    enum PodTo {
        Running,
        Pushed,
        Exited,
        Evicted,
        PullBackOff,
        Unknown,
    }

    #[derive(Clone, Debug)]
    enum Step {
        /// Reconcile, applying only the first `applied` actions when set (a crash).
        Reconcile { applied: Option<usize> },
        /// Reconcile, but the status write is lost.
        ReconcileLosingStatus,
        /// A kubelet moves a pod.
        Pod { pick: usize, to: PodTo },
        /// A pod vanishes (node lost, garbage collected).
        Vanish { pick: usize },
        /// Terminating pods finish terminating.
        Terminated,
        /// Time passes.
        Advance { secs: i64 },
        /// The spec changes.
        SpecChange,
        /// The spec is cancelled.
        Cancel,
        /// A rerun is requested.
        Rerun,
        /// The concurrency group becomes busy or free.
        Peer { busy: bool },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => prop::option::of(0usize..4).prop_map(|applied| Step::Reconcile { applied }),
            1 => Just(Step::ReconcileLosingStatus),
            4 => (0usize..4, prop_oneof![
                Just(PodTo::Running),
                Just(PodTo::Pushed),
                Just(PodTo::Exited),
                Just(PodTo::Evicted),
                Just(PodTo::PullBackOff),
                Just(PodTo::Unknown),
            ]).prop_map(|(pick, to)| Step::Pod { pick, to }),
            1 => (0usize..4).prop_map(|pick| Step::Vanish { pick }),
            2 => Just(Step::Terminated),
            2 => (1i64..400).prop_map(|secs| Step::Advance { secs }),
            1 => Just(Step::SpecChange),
            1 => Just(Step::Cancel),
            1 => Just(Step::Rerun),
            1 => any::<bool>().prop_map(|busy| Step::Peer { busy }),
        ]
    }

    struct World {
        build: Build,
        pods: BTreeMap<String, Pod>,
        now: i64,
        next_uid: u32,
        reruns: u32,
        busy: bool,
        /// Pod UIDs that `decide` recorded in a written status, by attempt.
        seen: BTreeMap<u32, String>,
        highest_attempt: u32,
    }

    impl World {
        fn observed(&self) -> Observed {
            Observed {
                pods: self.pods.values().cloned().collect(),
                peers: vec![peer(
                    "other",
                    -100,
                    if self.busy {
                        Standing::Active
                    } else {
                        Standing::Idle
                    },
                )],
                ..Observed::default()
            }
        }

        fn reconcile(&mut self, applied: Option<usize>, lose_status: bool) {
            let plan = decide(
                &self.build,
                &self.observed(),
                at(self.now),
                &Config::default(),
            );
            let creates = plan.created_pods();
            prop_assert_eq_ok(creates.len() <= 1, "two pods in one plan", &plan);
            if let Some(pod) = creates.first() {
                let name = pod.name_any();
                prop_assert_eq_ok(
                    !self.pods.contains_key(&name),
                    "planned a pod whose name exists",
                    &plan,
                );
                prop_assert_eq_ok(
                    !self.pods.values().any(is_live),
                    "planned a pod while another of the Build is live",
                    &plan,
                );
                let attempt = attempt_of(pod.metadata.labels.as_ref()).expect("attempt label");
                let announced = plan
                    .status()
                    .or(self.build.status.as_ref())
                    .map_or(0, |s| s.attempt);
                prop_assert_eq_ok(
                    attempt == announced,
                    "pod for an unannounced attempt",
                    &plan,
                );
                prop_assert_eq_ok(
                    !self.seen.contains_key(&attempt),
                    "a second pod for an attempt whose pod was already seen",
                    &plan,
                );
            }
            let limit = applied.unwrap_or(usize::MAX);
            for action in plan.actions.iter().take(limit) {
                match action {
                    Action::WriteStatus(status) if !lose_status => {
                        prop_assert_eq_ok(
                            status.attempt >= self.build.status.as_ref().map_or(0, |s| s.attempt),
                            "attempt number went down",
                            &plan,
                        );
                        for record in &status.attempts {
                            if let Some(uid) = &record.pod_uid {
                                self.seen.insert(record.attempt, uid.clone());
                            }
                        }
                        self.build.status = Some(status.as_ref().clone());
                    }
                    Action::CreatePod(pod) => {
                        let mut pod = pod.as_ref().clone();
                        self.next_uid += 1;
                        pod.metadata.uid = Some(format!("u{}", self.next_uid));
                        pod.metadata.creation_timestamp = Some(Time(at(self.now)));
                        pod.status = Some(Default::default());
                        let attempt = attempt_of(pod.metadata.labels.as_ref()).unwrap_or(0);
                        self.highest_attempt = self.highest_attempt.max(attempt);
                        self.pods.insert(pod.name_any(), pod);
                    }
                    Action::DeletePod { name, uid, .. } => {
                        if let Some(pod) = self.pods.get_mut(name)
                            && (uid.is_none() || pod.metadata.uid == *uid)
                        {
                            pod.metadata.deletion_timestamp = Some(Time(at(self.now)));
                        }
                    }
                    Action::AddFinalizer
                    | Action::RemoveFinalizer
                    | Action::WriteStatus(_)
                    | Action::CreateConfigMap(_)
                    | Action::DeleteConfigMap { .. }
                    | Action::CreateCacheSecret { .. }
                    | Action::DeleteSecret { .. }
                    | Action::PutLease { .. }
                    | Action::ReleaseLease { .. }
                    | Action::DeleteCacheTag { .. }
                    | Action::StoreLog { .. }
                    | Action::ReadBaseImages { .. }
                    | Action::CheckBaseImages { .. }
                    | Action::ForgetBaseImages { .. }
                    | Action::Event(_) => {}
                }
            }
            // At any moment, at most one pod per attempt label.
            let mut by_attempt = BTreeMap::new();
            for pod in self.pods.values() {
                let attempt = attempt_of(pod.metadata.labels.as_ref()).unwrap_or(0);
                *by_attempt.entry(attempt).or_insert(0) += 1;
            }
            prop_assert_eq_ok(
                by_attempt.values().all(|n| *n == 1),
                "two pods share an attempt",
                &plan,
            );
        }

        fn pick(&mut self, pick: usize) -> Option<String> {
            let names: Vec<String> = self.pods.keys().cloned().collect();
            (!names.is_empty()).then(|| names[pick % names.len()].clone())
        }

        fn apply(&mut self, step: &Step) {
            match step {
                Step::Reconcile { applied } => self.reconcile(*applied, false),
                Step::ReconcileLosingStatus => self.reconcile(None, true),
                Step::Pod { pick, to } => {
                    let Some(name) = self.pick(*pick) else { return };
                    let build = self.build.clone();
                    let pod = &self.pods[&name];
                    let attempt = attempt_of(pod.metadata.labels.as_ref()).unwrap_or(1);
                    let fixture = PodFixture::for_build(&build, attempt);
                    let fixture = match to {
                        PodTo::Running => fixture.running(),
                        PodTo::Pushed => fixture.pushed(DIGEST),
                        PodTo::Exited => fixture.exited(1, "boom"),
                        PodTo::Evicted => fixture.evicted(),
                        PodTo::PullBackOff => fixture.image_pull_backoff(),
                        PodTo::Unknown => fixture.unknown(),
                    };
                    let pod = self.pods.get_mut(&name).expect("picked");
                    // Finished pods stay finished, as with a real kubelet.
                    if is_live(pod) {
                        pod.status = fixture.pod.status;
                    }
                }
                Step::Vanish { pick } => {
                    if let Some(name) = self.pick(*pick) {
                        self.pods.remove(&name);
                    }
                }
                Step::Terminated => self
                    .pods
                    .retain(|_, p| p.metadata.deletion_timestamp.is_none()),
                Step::Advance { secs } => self.now += secs,
                Step::SpecChange => {
                    let generation = self.build.metadata.generation.unwrap_or(1) + 1;
                    self.build.metadata.generation = Some(generation);
                    self.build.spec.cancel = false;
                }
                Step::Cancel => {
                    let generation = self.build.metadata.generation.unwrap_or(1) + 1;
                    self.build.metadata.generation = Some(generation);
                    self.build.spec.cancel = true;
                }
                Step::Rerun => {
                    self.reruns += 1;
                    self.build = self.build.clone().rerun(&format!("r{}", self.reruns));
                }
                Step::Peer { busy } => self.busy = *busy,
            }
        }
    }

    /// Panics with the plan when an invariant breaks (proptest then shrinks the steps).
    fn prop_assert_eq_ok(holds: bool, what: &str, plan: &Plan) {
        assert!(holds, "{what}: {:?}", plan.describe());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn decide_never_plans_two_pods_for_one_attempt(
            steps in prop::collection::vec(step(), 1..60),
            retries in 0i32..4,
        ) {
            let mut world = World {
                build: Build::test("app").retries(retries),
                pods: BTreeMap::new(),
                now: 0,
                next_uid: 0,
                reruns: 0,
                busy: false,
                seen: BTreeMap::new(),
                highest_attempt: 0,
            };
            for step in &steps {
                world.apply(step);
            }
            // Settle: the kubelet finishes what runs, the controller reconciles.
            for _ in 0..5 {
                world.apply(&Step::Terminated);
                world.apply(&Step::Advance { secs: 400 });
                world.apply(&Step::Reconcile { applied: None });
            }
        }
    }
}

// --- Retention, cache leases and tokens ------------------------------------------------------

fn with_cache(leases: bool, tokens: bool) -> Config {
    Config {
        cache_service: Some(
            crate::controller::config::CacheService::parse("http://kiln-cache:5000").unwrap(),
        ),
        cache_leases: leases,
        cache_token_key: tokens
            .then(|| crate::cacheapi::token::TokenKey::from_bytes(&[7; 32]).unwrap()),
        ..Config::default()
    }
}

#[test]
fn retention_time_is_announced_when_an_attempt_ends_with_a_finished_pod() {
    let build = running(Build::test("app"));
    let plan = pod_says(&build, |p| p.pushed(DIGEST), 100);
    let s = status(&plan);
    assert_eq!(s.attempts[0].pod_retained_until, Some(Time(at(100 + 3600))));
    assert_eq!(
        message(&plan),
        format!(
            "pushed registry.example.com/team/app:latest@{DIGEST}; pod app-1 is kept until 2026-01-01T01:01:40Z (retention 1h)"
        )
    );

    let failed = pod_says(&build, |p| p.exited(1, "boom"), 100);
    assert_eq!(
        status(&failed).attempts[0].pod_retained_until,
        Some(Time(at(100 + 86_400)))
    );
    assert!(
        message(&failed).ends_with("(retention 1d)"),
        "{}",
        message(&failed)
    );
}

#[test]
fn retention_gives_no_time_to_a_pod_the_controller_stops() {
    let build = running(Build::test("app").timeout("10m"));
    // Status times are whole seconds: the deadline ends one second after 600 s.
    let plan = pod_says(&build, |p| p.running(), 601);
    assert_eq!(phase_reason(&plan), (Phase::Failed, Reason::TimedOut));
    assert_eq!(status(&plan).attempts[0].pod_retained_until, None);
    assert!(!message(&plan).contains("kept until"), "{}", message(&plan));
}

#[test]
fn lease_and_token_come_before_the_pod_that_uses_them() {
    let build = Build::test("app");
    let plan = decide(&build, &none(), at(0), &with_cache(true, true));
    assert_eq!(
        plan.describe(),
        [
            "WriteStatus Pending/PodCreated attempt=1",
            "TakeLease build-uid-app-1",
            // BuildKit's configuration: the cache service speaks plain HTTP.
            "CreateConfigMap app-1",
            "CreateCacheSecret app-1",
            "CreatePod app-1"
        ]
    );
    assert_eq!(status(&plan).cache_leases[0].name, "build-uid-app-1");
    assert_eq!(
        plan.recheck,
        Recheck::After(crate::controller::plan::OUTCOME_RECHECK)
    );
    let secret = plan
        .actions
        .iter()
        .find_map(|a| match a {
            Action::CreateCacheSecret { ttl, .. } => Some(*ttl),
            _ => None,
        })
        .unwrap();
    assert_eq!(secret, Duration::from_secs(3600 + 600), "timeout + slack");
    let volumes = plan.created_pods()[0]
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .clone()
        .unwrap();
    let docker = volumes.iter().find(|v| v.name == "docker-config").unwrap();
    assert_eq!(
        docker.secret.as_ref().unwrap().secret_name.as_deref(),
        Some("app-1"),
        "the attempt's own Secret"
    );
}

#[test]
fn lease_is_released_in_the_decision_that_ends_its_attempt() {
    let config = with_cache(true, false);
    let build = Build::test("app");
    let plan = decide(&build, &none(), at(0), &config);
    let build = after(&build, &plan);
    let plan = decide(
        &build,
        &with_pods([PodFixture::for_build(&build, 1).pushed(DIGEST)]),
        at(100),
        &config,
    );
    assert_eq!(
        plan.describe(),
        [
            "WriteStatus Succeeded/Succeeded attempt=1",
            "ReleaseLease build-uid-app-1",
            "StoreLog app-1 -> default/kiln_logs:build-uid-app-1",
            "ReadBaseImages",
            "Event Normal Succeeded"
        ]
    );
    assert_eq!(
        status(&plan).cache_leases[0].lapses_at,
        Some(Time(at(100 + 900)))
    );
}

#[test]
fn deletion_deletes_token_secrets_and_waits_for_the_cache_cleanup() {
    let config = with_cache(true, true);
    let build = Build::test("app").deleting(at(60));
    let observed = Observed {
        owned_secrets: vec!["app-1".into()],
        ..Observed::default()
    };
    let plan = decide(&build, &observed, at(60), &config);
    assert_eq!(
        plan.describe(),
        [
            "DeleteSecret app-1",
            "DeleteCacheTag default/app:buildcache"
        ]
    );
    // Objects gone, tag deleted: the finalizer lets go.
    let mut observed = Observed::default();
    observed.cache.insert(
        cache_lease::tag_key("uid-app"),
        crate::controller::cache_ledger::CallState {
            done: true,
            ..Default::default()
        },
    );
    let plan = decide(&build, &observed, at(61), &config);
    assert_eq!(plan.describe(), ["RemoveFinalizer"]);
    // Unreachable cache: it waits, then lets go at the deadline with a warning.
    let plan = decide(&build, &none(), at(60 + 600), &config);
    assert_eq!(
        plan.describe(),
        ["Event Warning CacheUnavailable", "RemoveFinalizer"]
    );
}

// --- Running-build limits ------------------------------------------------------------------

fn slot_queued(position: usize) -> Slot {
    Slot::Queued {
        limit: Limit::Cluster(5),
        position,
        running_in_namespace: 2,
    }
}

#[test]
fn a_build_without_a_free_slot_waits_with_its_place_and_one_event() {
    let build = Build::test("b").created_at(at(10));
    let observed = Observed {
        slot: Some(slot_queued(3)),
        ..Observed::default()
    };
    let plan = decide_at(&build, &observed, 20);
    assert_eq!(
        plan.describe(),
        [
            "WriteStatus Pending/Queued attempt=0",
            "Event Normal Queued"
        ]
    );
    let namespace = build.namespace().unwrap_or_default();
    assert_eq!(
        message(&plan),
        format!("3rd in namespace {namespace}; cluster limit 5 reached")
    );
    assert_eq!(plan.recheck, Recheck::After(Duration::from_secs(30)));
    // Moved up the queue: the message follows, the Event is not repeated.
    let queued = after(&build, &plan);
    let moved = Observed {
        slot: Some(slot_queued(1)),
        ..Observed::default()
    };
    let again = decide_at(&queued, &moved, 50);
    assert_eq!(again.describe(), ["WriteStatus Pending/Queued attempt=0"]);
    assert!(message(&again).starts_with("1st in namespace"));
    // A slot frees: attempt 1 starts.
    let free = Observed {
        slot: Some(Slot::Start),
        ..Observed::default()
    };
    let start = decide_at(&after(&queued, &again), &free, 80);
    assert_eq!(start.created_pods().len(), 1);
    assert_eq!(status(&start).attempt, 1);
}

#[test]
fn a_build_queued_behind_its_group_does_not_look_at_slots() {
    let build = Build::test("b").group("g").created_at(at(10));
    let observed = Observed {
        peers: vec![peer("a", 0, Standing::Active)],
        slot: Some(Slot::Start),
        ..Observed::default()
    };
    let plan = decide_at(&build, &observed, 20);
    assert!(plan.created_pods().is_empty());
    assert!(message(&plan).contains("concurrency group"));
}

fn local_config() -> Config {
    Config {
        cache_service: Some(
            crate::controller::config::CacheService::parse("http://kiln-cache:5000").unwrap(),
        ),
        ..Config::default()
    }
}

/// A Build of an uploaded directory whose pod waits for the upload says so, with an
/// Event (a user who never ran the upload learns why nothing happens), then runs.
#[test]
fn a_local_build_waiting_for_its_upload_says_so_and_then_runs() {
    let config = local_config();
    let build = Build::test("dev").local(
        "sha256:3333333333333333333333333333333333333333333333333333333333333333",
        4096,
    );
    let plan = decide(&build, &none(), at(0), &config);
    assert_eq!(plan.created_pods().len(), 1, "{:?}", plan.describe());
    let build = after(&build, &plan);
    let receiving = with_pods([PodFixture::for_build(&build, 1).receiving_context()]);
    let plan = decide(&build, &receiving, at(2), &config);
    assert_eq!(
        plan.describe(),
        [
            "WriteStatus Pending/WaitingForContext attempt=1",
            "Event Normal WaitingForContext"
        ]
    );
    assert_eq!(
        message(&plan),
        "attempt 1: pod dev-1 waits for the context upload (kubectl kiln build --local sends it; a retried attempt takes it from the cache)"
    );
    let build = after(&build, &plan);
    assert!(
        decide(&build, &receiving, at(3), &config)
            .actions
            .is_empty(),
        "waiting on is no news"
    );
    let plan = decide(
        &build,
        &with_pods([PodFixture::for_build(&build, 1).running()]),
        at(9),
        &config,
    );
    assert_eq!(plan.describe(), ["WriteStatus Running/Running attempt=1"]);
}
