//! Table tests of `decide` for `Native` multi-platform Builds: the fan-out, per-platform
//! retries, the index step, and the whole-attempt rules (pure).

use std::time::Duration;

use super::*;
use crate::controller::fixtures::PodFixture;
use crate::crd::PlatformStrategy;
use crate::crd::fixtures::at;

const AMD: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const ARM: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const INDEX: &str = "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

fn two_platforms() -> Build {
    Build::test("app")
        .output("registry.example.com/team/app:v1")
        .platform("linux/amd64")
        .platform("linux/arm64")
}

fn decide_at(build: &Build, observed: &Observed, secs: i64) -> Plan {
    decide(build, observed, at(secs), &Config::default())
}

fn pods(pods: impl IntoIterator<Item = PodFixture>) -> Observed {
    Observed {
        pods: pods.into_iter().map(|p| p.pod).collect(),
        ..Observed::default()
    }
}

fn after(build: &Build, plan: &Plan) -> Build {
    let mut next = build.clone();
    if let Some(status) = plan.status() {
        next.status = Some(status.clone());
    }
    next
}

fn status(plan: &Plan) -> &BuildStatus {
    plan.status().expect("the plan writes status")
}

fn phase_reason(plan: &Plan) -> (Phase, Reason) {
    let s = status(plan);
    (s.phase.expect("phase"), s.reason().expect("reason"))
}

/// `(platform, phase, pod)` of each platform in the plan's status.
fn platforms(plan: &Plan) -> Vec<(String, Phase, String)> {
    status(plan)
        .platforms
        .iter()
        .map(|p| (p.platform.clone(), p.phase, p.pod_name.clone()))
        .collect()
}

fn amd(build: &Build) -> PodFixture {
    PodFixture::for_platform(build, 1, "linux/amd64", 1)
}

fn arm(build: &Build) -> PodFixture {
    PodFixture::for_platform(build, 1, "linux/arm64", 1)
}

/// A two-platform Build whose attempt 1 was started at `T0`.
fn started() -> Build {
    let build = two_platforms();
    let plan = decide_at(&build, &Observed::default(), 0);
    after(&build, &plan)
}

/// Both platforms' pods seen running.
fn running() -> Build {
    let build = started();
    let plan = decide_at(
        &build,
        &pods([amd(&build).running(), arm(&build).running()]),
        5,
    );
    after(&build, &plan)
}

/// Both platforms pushed, the index pod not created yet.
fn both_pushed() -> (Build, Plan) {
    let build = running();
    let plan = decide_at(
        &build,
        &pods([amd(&build).pushed(AMD), arm(&build).pushed(ARM)]),
        60,
    );
    (after(&build, &plan), plan)
}

#[test]
fn more_than_one_platform_is_native_by_default_and_every_platform_starts_at_once() {
    let build = two_platforms();
    assert!(build.spec.builds_natively());
    let plan = decide_at(&build, &Observed::default(), 0);
    assert_eq!(
        plan.describe(),
        [
            "WriteStatus Pending/PodCreated attempt=1",
            "CreatePod app-1-linux-amd64",
            "CreatePod app-1-linux-arm64",
        ]
    );
    assert_eq!(
        platforms(&plan),
        [
            (
                "linux/amd64".into(),
                Phase::Pending,
                "app-1-linux-amd64".into()
            ),
            (
                "linux/arm64".into(),
                Phase::Pending,
                "app-1-linux-arm64".into()
            ),
        ]
    );
    let s = status(&plan);
    assert_eq!(s.platform_progress.as_deref(), Some("0/2"));
    // The attempt's own pod is the index pod, announced from the start.
    assert_eq!(s.attempts[0].pod_name, "app-1-index");
    // Each pod is pinned to its platform's nodes and builds that platform alone.
    for (action, arch) in plan.created_pods().iter().zip(["amd64", "arm64"]) {
        let spec = action.spec.as_ref().unwrap();
        let selector = spec.node_selector.as_ref().unwrap();
        assert_eq!(
            selector.get("kubernetes.io/arch").map(String::as_str),
            Some(arch)
        );
        assert_eq!(
            selector.get("kubernetes.io/os").map(String::as_str),
            Some("linux")
        );
        let args = spec.containers[0].args.as_ref().unwrap();
        assert!(
            args.contains(&format!("--opt=platform=linux/{arch}")),
            "{args:?}"
        );
    }
}

#[test]
fn the_same_build_gives_the_same_pod_specs() {
    let build = two_platforms();
    let a = decide_at(&build, &Observed::default(), 0);
    let b = decide_at(&build, &Observed::default(), 0);
    assert_eq!(a.created_pods(), b.created_pods());
}

#[test]
fn emulated_builds_every_platform_in_one_pod() {
    let build = two_platforms().platform_strategy(PlatformStrategy::Emulated);
    let plan = decide_at(&build, &Observed::default(), 0);
    assert_eq!(
        plan.describe(),
        [
            "WriteStatus Pending/PodCreated attempt=1",
            "CreatePod app-1"
        ]
    );
    assert!(status(&plan).platforms.is_empty());
    // One platform stays one pod unless Native is asked for.
    let one = Build::test("app").platform("linux/arm64");
    assert!(!one.spec.builds_natively());
    let native_one = one.platform_strategy(PlatformStrategy::Native);
    let plan = decide_at(&native_one, &Observed::default(), 0);
    assert_eq!(
        plan.describe(),
        [
            "WriteStatus Pending/PodCreated attempt=1",
            "CreatePod app-1-linux-arm64"
        ]
    );
}

#[test]
fn a_platform_no_node_offers_waits_with_a_reason_that_names_it_and_creates_nothing() {
    let build = two_platforms();
    let observed = Observed {
        platforms_without_node: vec!["linux/arm64".into()],
        ..Observed::default()
    };
    let plan = decide_at(&build, &observed, 0);
    assert_eq!(
        plan.describe(),
        [
            "WriteStatus Pending/NoNodeForPlatform attempt=0",
            "Event Warning NoNodeForPlatform"
        ]
    );
    let message = status(&plan).message.clone().unwrap_or_default();
    assert!(message.contains("linux/arm64"), "{message}");
    assert!(message.contains("--platform-node-selector"), "{message}");
    assert_eq!(plan.recheck, Recheck::After(Duration::from_secs(30)));
    // Once a node is there, it starts.
    let plan = decide_at(&after(&build, &plan), &Observed::default(), 30);
    assert_eq!(plan.created_pods().len(), 2);
}

#[test]
fn platform_pods_first_seen_waiting_cost_no_status_write() {
    let build = started();
    let plan = decide_at(&build, &pods([amd(&build), arm(&build)]), 2);
    assert_eq!(plan.describe(), Vec::<String>::new());
    // Their UIDs ride on the next write: the first pod running.
    let plan = decide_at(&build, &pods([amd(&build).running(), arm(&build)]), 3);
    let s = status(&plan);
    assert_eq!(
        s.platforms[0].pod_uid.as_deref(),
        Some("pod-app-1-linux-amd64")
    );
    assert_eq!(
        s.platforms[1].pod_uid.as_deref(),
        Some("pod-app-1-linux-arm64")
    );
}

#[test]
fn progress_is_per_platform_and_the_build_runs_once_one_platform_runs() {
    let build = started();
    let plan = decide_at(&build, &pods([amd(&build).running(), arm(&build)]), 5);
    assert_eq!(phase_reason(&plan), (Phase::Running, Reason::Running));
    assert_eq!(
        platforms(&plan)
            .into_iter()
            .map(|(_, phase, _)| phase)
            .collect::<Vec<_>>(),
        [Phase::Running, Phase::Pending]
    );
    let message = status(&plan).message.clone().unwrap_or_default();
    assert!(message.contains("0/2 platforms pushed"), "{message}");
    // One pushed: 1/2, the Build still runs, nothing is created.
    let build = after(&build, &plan);
    let plan = decide_at(
        &build,
        &pods([amd(&build).pushed(AMD), arm(&build).running()]),
        30,
    );
    assert_eq!(plan.describe(), ["WriteStatus Running/Running attempt=1"]);
    let s = status(&plan);
    assert_eq!(s.platform_progress.as_deref(), Some("1/2"));
    assert_eq!(s.platforms[0].digest.as_deref(), Some(AMD));
}

#[test]
fn after_the_last_platform_pushes_the_index_pod_is_created_once() {
    let (build, plan) = both_pushed();
    assert_eq!(
        plan.describe(),
        [
            "WriteStatus Running/AssemblingIndex attempt=1",
            "CreatePod app-1-index"
        ]
    );
    let index = &plan.created_pods()[0];
    let args = index.spec.as_ref().unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    assert_eq!(
        args[..5],
        [
            "index".to_owned(),
            "push".to_owned(),
            "--image=registry.example.com/team/app:v1".to_owned(),
            format!("--manifest=linux/amd64={AMD}"),
            format!("--manifest=linux/arm64={ARM}"),
        ]
    );
    // The index pod runs: nothing more is created.
    let observed = pods([
        amd(&build).pushed(AMD),
        arm(&build).pushed(ARM),
        PodFixture::for_index(&build, 1, 1).running(),
    ]);
    let plan = decide_at(&build, &observed, 61);
    assert!(plan.created_pods().is_empty(), "{:?}", plan.describe());
    // It pushed: the Build succeeded with the index's digest.
    let build = after(&build, &plan);
    let observed = pods([
        amd(&build).pushed(AMD),
        arm(&build).pushed(ARM),
        PodFixture::for_index(&build, 1, 1).pushed(INDEX),
    ]);
    let plan = decide_at(&build, &observed, 63);
    assert_eq!(
        plan.describe(),
        [
            "WriteStatus Succeeded/Succeeded attempt=1",
            "Event Normal Succeeded"
        ]
    );
    let s = status(&plan);
    assert_eq!(s.output.as_ref().unwrap().digest, INDEX);
    assert_eq!(s.attempts[0].digest.as_deref(), Some(INDEX));
    assert_eq!(s.platform_progress.as_deref(), Some("2/2"));
    assert!(s.platforms.iter().all(|p| p.phase == Phase::Succeeded));
}

#[test]
fn a_controller_restarted_before_the_index_was_pushed_neither_duplicates_nor_loses_it() {
    let (build, _) = both_pushed();
    // The index pod's create was carried out before the crash: it is found, not created.
    let observed = pods([
        amd(&build).pushed(AMD),
        arm(&build).pushed(ARM),
        PodFixture::for_index(&build, 1, 1).pushed(INDEX),
    ]);
    let plan = decide_at(&build, &observed, 120);
    assert!(plan.created_pods().is_empty(), "{:?}", plan.describe());
    assert_eq!(phase_reason(&plan), (Phase::Succeeded, Reason::Succeeded));
    // The create never happened: the same pod is created, under the same name.
    let observed = pods([amd(&build).pushed(AMD), arm(&build).pushed(ARM)]);
    let plan = decide_at(&build, &observed, 120);
    assert_eq!(
        plan.describe(),
        ["CreatePod app-1-index"],
        "the status already says AssemblingIndex: nothing to write"
    );
}

#[test]
fn an_evicted_platform_is_retried_alone_after_backoff() {
    let build = running();
    let plan = decide_at(
        &build,
        &pods([amd(&build).pushed(AMD), arm(&build).evicted()]),
        30,
    );
    assert_eq!(
        plan.describe(),
        [
            "WriteStatus Pending/PodCreated attempt=1",
            "Event Warning PodEvicted"
        ]
    );
    let s = status(&plan);
    assert_eq!(s.platforms[1].retries, 1);
    assert_eq!(s.platforms[1].pod_name, "app-1-linux-arm64-2");
    assert_eq!(s.platforms[1].reason, Some(Reason::PodEvicted));
    assert_eq!(s.platforms[0].phase, Phase::Succeeded);
    // Backoff: 10s from the end of second 30.
    assert_eq!(plan.recheck, Recheck::After(Duration::from_secs(11)));
    let build = after(&build, &plan);
    let observed = pods([amd(&build).pushed(AMD), arm(&build).evicted()]);
    let plan = decide_at(&build, &observed, 35);
    assert!(plan.created_pods().is_empty(), "{:?}", plan.describe());
    let plan = decide_at(&build, &observed, 41);
    assert_eq!(
        plan.describe(),
        [
            "WriteStatus Pending/PodCreated attempt=1",
            "CreatePod app-1-linux-arm64-2"
        ]
    );
    // The retried platform pushes: the index follows, the amd64 image is not rebuilt.
    let build = after(&build, &plan);
    let observed = pods([
        amd(&build).pushed(AMD),
        arm(&build).evicted(),
        PodFixture::for_platform(&build, 1, "linux/arm64", 2).pushed(ARM),
    ]);
    let plan = decide_at(&build, &observed, 90);
    assert_eq!(
        plan.describe(),
        [
            "WriteStatus Running/AssemblingIndex attempt=1",
            "CreatePod app-1-index"
        ]
    );
}

#[test]
fn a_platform_out_of_retries_fails_the_build_and_stops_the_others() {
    let build = running().retries(0);
    let plan = decide_at(
        &build,
        &pods([amd(&build).running(), arm(&build).evicted()]),
        30,
    );
    assert_eq!(
        plan.describe(),
        [
            "WriteStatus Failed/PodEvicted attempt=1",
            "DeletePod app-1-linux-amd64 grace=30s",
            "Event Warning PodEvicted"
        ]
    );
    let s = status(&plan);
    assert_eq!(s.platforms[0].phase, Phase::Cancelled);
    assert_eq!(s.platforms[1].phase, Phase::Failed);
    let message = s.message.clone().unwrap_or_default();
    assert!(message.contains("platform linux/arm64 failed"), "{message}");
    assert!(message.contains("no retries left"), "{message}");
}

#[test]
fn a_failed_platform_build_names_the_platform_and_carries_its_log_tail() {
    let build = running();
    let plan = decide_at(
        &build,
        &pods([
            amd(&build).running(),
            arm(&build).exited(1, "RUN make\nerror: undefined reference to `foo'"),
        ]),
        30,
    );
    assert_eq!(phase_reason(&plan), (Phase::Failed, Reason::BuildFailed));
    let message = status(&plan).message.clone().unwrap_or_default();
    assert!(message.contains("platform linux/arm64 failed"), "{message}");
    assert!(message.contains("undefined reference"), "{message}");
    assert!(
        plan.describe()
            .contains(&"DeletePod app-1-linux-amd64 grace=30s".to_owned())
    );
    // A build failure is not retried, whatever the retries left.
    assert!(plan.created_pods().is_empty());
}

#[test]
fn cancel_mid_way_stops_every_platform_pod() {
    let build = running().cancel();
    let plan = decide_at(
        &build,
        &pods([amd(&build).running(), arm(&build).running()]),
        30,
    );
    assert_eq!(
        plan.describe(),
        [
            "WriteStatus Cancelled/Cancelled attempt=1",
            "DeletePod app-1-linux-amd64 grace=30s",
            "DeletePod app-1-linux-arm64 grace=30s",
            "Event Normal Cancelled"
        ]
    );
    assert!(
        status(&plan)
            .platforms
            .iter()
            .all(|p| p.phase == Phase::Cancelled)
    );
}

#[test]
fn a_new_generation_supersedes_the_whole_set_and_starts_over_once_its_pods_are_gone() {
    let build = running().generation(2);
    let observed = pods([amd(&build).pushed(AMD), arm(&build).running()]);
    let plan = decide_at(&build, &observed, 30);
    assert_eq!(
        plan.describe(),
        [
            "WriteStatus Pending/Starting attempt=1",
            "DeletePod app-1-linux-arm64 grace=30s",
            "Event Normal Superseded",
            "Event Normal Starting"
        ]
    );
    // The arm64 pod is gone: attempt 2 starts both platforms again.
    let build = after(&build, &plan);
    let plan = decide_at(&build, &pods([amd(&build).pushed(AMD)]), 40);
    assert_eq!(
        plan.describe(),
        [
            "WriteStatus Pending/PodCreated attempt=2",
            "CreatePod app-2-linux-amd64",
            "CreatePod app-2-linux-arm64",
        ]
    );
}

#[test]
fn the_deadline_covers_the_whole_attempt() {
    let build = running().timeout("10m");
    let plan = decide_at(
        &build,
        &pods([amd(&build).pushed(AMD), arm(&build).running()]),
        601,
    );
    assert_eq!(phase_reason(&plan), (Phase::Failed, Reason::TimedOut));
    assert!(
        plan.describe()
            .contains(&"DeletePod app-1-linux-arm64 grace=30s".to_owned())
    );
}

#[test]
fn a_failed_index_pod_is_retried_without_rebuilding_the_platforms() {
    let (build, _) = both_pushed();
    let build = after(
        &build,
        &decide_at(
            &build,
            &pods([amd(&build).pushed(AMD), arm(&build).pushed(ARM)]),
            61,
        ),
    );
    let observed = pods([
        amd(&build).pushed(AMD),
        arm(&build).pushed(ARM),
        PodFixture::for_index(&build, 1, 1).evicted(),
    ]);
    let plan = decide_at(&build, &observed, 70);
    assert_eq!(
        plan.describe(),
        [
            "WriteStatus Running/AssemblingIndex attempt=1",
            "Event Warning PodEvicted"
        ]
    );
    let build = after(&build, &plan);
    assert_eq!(
        build.status.as_ref().unwrap().attempts[0].pod_name,
        "app-1-index-2"
    );
    let plan = decide_at(&build, &observed, 71);
    assert_eq!(
        plan.describe(),
        [
            "WriteStatus Running/AssemblingIndex attempt=1",
            "CreatePod app-1-index-2"
        ]
    );
    // A push the registry refuses is not retried.
    let build = after(&build, &plan);
    let observed = pods([
        amd(&build).pushed(AMD),
        arm(&build).pushed(ARM),
        PodFixture::for_index(&build, 1, 2).exited(1, "error: pushing the index: 401 Unauthorized"),
    ]);
    let plan = decide_at(&build, &observed, 80);
    assert_eq!(
        phase_reason(&plan),
        (Phase::Failed, Reason::IndexPushFailed)
    );
    let message = status(&plan).message.clone().unwrap_or_default();
    assert!(message.contains("401 Unauthorized"), "{message}");
}

#[test]
fn a_lost_status_write_is_recovered_from_the_platform_pods() {
    // The pods of attempt 1 exist, the status never said so.
    let build = two_platforms();
    let observed = pods([amd(&build).running(), arm(&build)]);
    let plan = decide_at(&build, &observed, 5);
    assert!(plan.created_pods().is_empty(), "{:?}", plan.describe());
    let s = status(&plan);
    assert_eq!(s.attempt, 1);
    assert_eq!(s.attempts[0].pod_name, "app-1-index");
    assert_eq!(s.platforms.len(), 2);
    assert_eq!(phase_reason(&plan), (Phase::Running, Reason::Running));
}

/// What the controller observes at one step of a scenario, from the Build as it is then.
type Step = Box<dyn Fn(&Build) -> Observed>;

#[test]
fn a_two_platform_build_writes_its_status_six_times_from_start_to_index() {
    // Each change the kubelet reports, one at a time. The pods the controller created are
    // in its pod index from their create on, both at once.
    let steps: Vec<Step> = vec![
        Box::new(|_| Observed::default()),
        Box::new(|b| pods([amd(b), arm(b)])),
        Box::new(|b| pods([amd(b).running(), arm(b)])),
        Box::new(|b| pods([amd(b).running(), arm(b).running()])),
        Box::new(|b| pods([amd(b).pushed(AMD), arm(b).running()])),
        Box::new(|b| pods([amd(b).pushed(AMD), arm(b).pushed(ARM)])),
        Box::new(|b| {
            pods([
                amd(b).pushed(AMD),
                arm(b).pushed(ARM),
                PodFixture::for_index(b, 1, 1),
            ])
        }),
        Box::new(|b| {
            pods([
                amd(b).pushed(AMD),
                arm(b).pushed(ARM),
                PodFixture::for_index(b, 1, 1).running(),
            ])
        }),
        Box::new(|b| {
            pods([
                amd(b).pushed(AMD),
                arm(b).pushed(ARM),
                PodFixture::for_index(b, 1, 1).pushed(INDEX),
            ])
        }),
    ];
    let mut build = two_platforms();
    let mut writes = 0;
    let mut pods_created = 0;
    for (second, step) in steps.iter().enumerate() {
        let plan = decide_at(&build, &step(&build), second as i64);
        writes += plan
            .describe()
            .iter()
            .filter(|a| a.starts_with("WriteStatus"))
            .count();
        pods_created += plan.created_pods().len();
        build = after(&build, &plan);
    }
    assert_eq!(
        phase_reason_of(&build),
        (Phase::Succeeded, Reason::Succeeded)
    );
    assert_eq!(pods_created, 3, "two platforms and the index");
    assert_eq!(
        writes, 6,
        "start, two running, two pushed (the second with the index), succeeded"
    );
}

fn phase_reason_of(build: &Build) -> (Phase, Reason) {
    let s = build.status.as_ref().expect("a status");
    (s.phase.expect("phase"), s.reason().expect("reason"))
}

#[test]
fn the_platform_pods_share_one_config_map_and_one_token_secret_of_the_attempt() {
    let config = Config {
        cache_service: Some(
            crate::controller::config::CacheService::parse("http://kiln-cache:5000").unwrap(),
        ),
        cache_token_key: Some(crate::cacheapi::token::TokenKey::from_bytes(&[7; 32]).unwrap()),
        ..Config::default()
    };
    let build = two_platforms();
    let plan = decide(&build, &Observed::default(), at(0), &config);
    assert_eq!(
        plan.describe(),
        [
            "WriteStatus Pending/PodCreated attempt=1",
            "CreateConfigMap app-1",
            "CreateCacheSecret app-1",
            "CreatePod app-1-linux-amd64",
            "CreatePod app-1-linux-arm64",
        ]
    );
}
