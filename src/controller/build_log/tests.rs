//! Table tests of the build-log plan: statuses, pods and ledgers in, records and calls out;
//! and of the tail a long log is cut to.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::*;
use crate::controller::config::CacheService;
use crate::controller::fixtures::PodFixture;
use crate::crd::StoredLog;
use crate::crd::fixtures::{T0, at};

const KEY: &str = "build-uid-app-log-1";

fn config() -> Config {
    Config {
        cache_service: Some(CacheService::parse("http://kiln-cache:5000").unwrap()),
        cache_leases: true,
        ..Config::default()
    }
}

fn ended(attempt: u32, result: AttemptResult) -> AttemptRecord {
    AttemptRecord {
        completion_time: Some(Time(at(60))),
        result: Some(result),
        ..AttemptRecord::test(attempt, &format!("app-{attempt}"), Some(result))
    }
}

fn build(records: Vec<AttemptRecord>) -> Build {
    let attempt = records.last().map_or(0, |r| r.attempt);
    Build::test("app").with_status(BuildStatus {
        attempt,
        attempts: records,
        ..BuildStatus::default()
    })
}

fn stored(attempt: u32) -> StoredLog {
    StoredLog {
        repository: "default/kiln_logs".into(),
        tag: format!("build-uid-app-{attempt}"),
        digest: format!("sha256:{}", "a".repeat(64)),
        size: 1234,
        truncated_bytes: 0,
    }
}

fn failing(retry_at: i64) -> CallState {
    CallState {
        failures: 1,
        retry_at: Some(at(retry_at)),
        last_error: Some("connection refused".into()),
        ..CallState::default()
    }
}

/// Runs the plan at `now` and returns the new status and the plan.
fn run(
    build: &Build,
    pods: &[PodFixture],
    ledger: &BTreeMap<String, CallState>,
    now: i64,
    config: &Config,
) -> (BuildStatus, CallPlan) {
    let mut status = build.status.clone().unwrap_or_default();
    let pods: Vec<Pod> = pods.iter().map(|p| p.pod.clone()).collect();
    let plan = plan(build, &mut status, &pods, ledger, at(now), config);
    (status, plan)
}

fn finished_pod(build: &Build) -> PodFixture {
    PodFixture::for_build(build, 1).pushed(&format!("sha256:{}", "1".repeat(64)))
}

#[test]
fn an_ended_attempt_with_its_finished_pod_has_its_log_stored_once_with_its_annotations() {
    let build = build(vec![ended(1, AttemptResult::Succeeded)]);
    let (status, plan) = run(
        &build,
        &[finished_pod(&build)],
        &BTreeMap::new(),
        61,
        &config(),
    );
    assert_eq!(
        status,
        build.status.clone().unwrap(),
        "nothing recorded yet"
    );
    let [
        Action::StoreLog {
            key,
            pod,
            container,
            repository,
            tag,
            annotations,
            max_bytes,
        },
    ] = plan.actions.as_slice()
    else {
        panic!("one store: {:?}", plan.actions);
    };
    assert_eq!(key, KEY);
    assert_eq!((pod.as_str(), container.as_str()), ("app-1", "build"));
    assert_eq!(
        (repository.to_string(), tag.to_string()),
        ("default/kiln_logs".into(), "build-uid-app-1".into())
    );
    assert_eq!(*max_bytes, 16 << 20);
    let annotations: Vec<(&str, &str)> = annotations
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let started = T0.to_string();
    let ended = at(60).to_string();
    assert_eq!(
        annotations,
        [
            ("dev.kiln.build.attempt", "1"),
            ("dev.kiln.build.ended", ended.as_str()),
            ("dev.kiln.build.name", "app"),
            ("dev.kiln.build.namespace", "default"),
            ("dev.kiln.build.pod", "app-1"),
            ("dev.kiln.build.result", "Succeeded"),
            ("dev.kiln.build.started", started.as_str()),
            ("dev.kiln.build.uid", "uid-app"),
        ]
    );
    assert_eq!(plan.recheck, Recheck::After(OUTCOME_RECHECK));
}

#[test]
fn a_stored_log_is_recorded_in_the_attempt_and_not_stored_again() {
    let build = build(vec![ended(1, AttemptResult::Failed)]);
    let ledger = BTreeMap::from([(
        KEY.to_owned(),
        CallState {
            stored_log: Some(stored(1)),
            ..CallState::default()
        },
    )]);
    let (status, plan) = run(&build, &[finished_pod(&build)], &ledger, 62, &config());
    assert_eq!(status.attempts[0].log, Some(stored(1)));
    assert!(plan.actions.is_empty());

    // Recorded, the attempt owes nothing, whatever the ledger forgot (a restart).
    let recorded = build.clone().with_status(status);
    let (again, plan) = run(
        &recorded,
        &[finished_pod(&build)],
        &BTreeMap::new(),
        63,
        &config(),
    );
    assert_eq!(again, recorded.status.clone().unwrap());
    assert!(plan.actions.is_empty());
}

#[test]
fn nothing_is_stored_without_the_admin_api_a_size_or_a_log_to_read() {
    let build = build(vec![ended(1, AttemptResult::Failed)]);
    let pod = finished_pod(&build);
    let no_admin = Config {
        cache_leases: false,
        ..config()
    };
    let no_size = Config {
        log_max_bytes: 0,
        ..config()
    };
    for config in [no_admin, no_size] {
        let (_, plan) = run(
            &build,
            std::slice::from_ref(&pod),
            &BTreeMap::new(),
            61,
            &config,
        );
        assert!(plan.actions.is_empty());
    }
    let never_started = PodFixture::for_build(&build, 1).image_pull_backoff();
    let deleting = finished_pod(&build).terminating();
    let replaced = finished_pod(&build).pod_uid("another");
    let recorded_uid = build.clone().with_status(BuildStatus {
        attempts: vec![AttemptRecord {
            pod_uid: Some("pod-app-1".into()),
            ..ended(1, AttemptResult::Failed)
        }],
        attempt: 1,
        ..BuildStatus::default()
    });
    for (build, pods) in [
        (&build, vec![]),
        (&build, vec![never_started]),
        (&build, vec![deleting]),
        (&recorded_uid, vec![replaced]),
    ] {
        let (_, plan) = run(build, &pods, &BTreeMap::new(), 61, &config());
        assert!(plan.actions.is_empty(), "{:?}", plan.actions);
    }
}

#[test]
fn an_open_attempt_owes_no_log_yet() {
    let mut open = ended(1, AttemptResult::Succeeded);
    open.completion_time = None;
    open.result = None;
    let build = build(vec![open]);
    let running = PodFixture::for_build(&build, 1).running();
    let (_, plan) = run(&build, &[running], &BTreeMap::new(), 30, &config());
    assert!(plan.actions.is_empty());
}

#[test]
fn a_failed_store_waits_out_its_backoff() {
    let build = build(vec![ended(1, AttemptResult::Failed)]);
    let ledger = BTreeMap::from([(KEY.to_owned(), failing(100))]);
    let (_, plan) = run(&build, &[finished_pod(&build)], &ledger, 90, &config());
    assert!(plan.actions.is_empty());
    assert_eq!(plan.recheck, Recheck::After(Duration::from_secs(10)));
    let (_, plan) = run(&build, &[finished_pod(&build)], &ledger, 100, &config());
    assert_eq!(plan.actions.len(), 1);
}

#[test]
fn the_index_pod_of_a_native_attempt_has_its_index_container_read() {
    let build = build(vec![ended(1, AttemptResult::Failed)]);
    let mut pod = PodFixture::for_index(&build, 1, 1).index_exited(1, "401");
    pod.pod.metadata.name = Some("app-1".into());
    pod.pod.metadata.uid = None;
    let (_, plan) = run(&build, &[pod], &BTreeMap::new(), 61, &config());
    let [Action::StoreLog { container, .. }] = plan.actions.as_slice() else {
        panic!("one store: {:?}", plan.actions);
    };
    assert_eq!(container, "index");
}

#[test]
fn logs_of_attempts_that_leave_the_history_are_deleted_until_confirmed() {
    let mut first = ended(1, AttemptResult::Failed);
    first.log = Some(stored(1));
    let second = ended(2, AttemptResult::Failed);
    let mut status = BuildStatus::default();
    expire(&mut status, &[first.clone(), second]);
    expire(&mut status, &[first]);
    assert_eq!(status.expired_logs, ["default/kiln_logs:build-uid-app-1"]);

    let build = build(vec![ended(3, AttemptResult::Succeeded)]);
    let build = build.clone().with_status(BuildStatus {
        expired_logs: status.expired_logs.clone(),
        ..build.status.clone().unwrap()
    });
    let key = log_deletion_key("uid-app", "default/kiln_logs:build-uid-app-1");
    let (kept, plan) = run(&build, &[], &BTreeMap::new(), 61, &config());
    assert_eq!(kept.expired_logs.len(), 1);
    assert_eq!(
        plan.actions,
        [Action::DeleteCacheTag {
            key: key.clone(),
            repository: RepoName::parse("default/kiln_logs").unwrap(),
            tag: Tag::parse("build-uid-app-1").unwrap(),
        }]
    );
    let failed = BTreeMap::from([(key.clone(), failing(100))]);
    let (kept, plan) = run(&build, &[], &failed, 61, &config());
    assert_eq!(kept.expired_logs.len(), 1);
    assert!(plan.actions.is_empty());
    let done = BTreeMap::from([(
        key,
        CallState {
            done: true,
            ..CallState::default()
        },
    )]);
    let (gone, plan) = run(&build, &[], &done, 62, &config());
    assert!(gone.expired_logs.is_empty());
    assert!(plan.actions.is_empty());
}

#[test]
fn the_expired_list_is_bounded_and_keeps_the_newest() {
    let mut status = BuildStatus::default();
    let records: Vec<AttemptRecord> = (1..=70)
        .map(|n| AttemptRecord {
            log: Some(stored(n)),
            ..ended(n, AttemptResult::Failed)
        })
        .collect();
    expire(&mut status, &records);
    assert_eq!(status.expired_logs.len(), MAX_EXPIRED_LOGS);
    assert_eq!(
        status.expired_logs.last().map(String::as_str),
        Some("default/kiln_logs:build-uid-app-70")
    );
}

#[test]
fn the_finalizer_owes_every_recorded_and_expired_log_once() {
    let mut first = ended(1, AttemptResult::Failed);
    first.log = Some(stored(1));
    let mut second = ended(2, AttemptResult::Succeeded);
    second.log = Some(stored(2));
    let mut build = build(vec![first, second]);
    if let Some(status) = build.status.as_mut() {
        status.expired_logs = vec![
            "default/kiln_logs:build-uid-app-1".into(),
            "default/kiln_logs:build-uid-app-0".into(),
        ];
    }
    let owed: Vec<String> = owed_deletions(&build)
        .into_iter()
        .map(|(_, repository, tag)| format!("{repository}:{tag}"))
        .collect();
    assert_eq!(
        owed,
        [
            "default/kiln_logs:build-uid-app-0",
            "default/kiln_logs:build-uid-app-1",
            "default/kiln_logs:build-uid-app-2",
        ]
    );
}

#[test]
fn the_sweeper_holds_a_finished_pod_while_its_log_is_owed_for_at_most_an_hour() {
    let build = build(vec![ended(1, AttemptResult::Failed)]);
    let pod = finished_pod(&build).pod;
    let record = build.status.as_ref().unwrap().attempts.first();
    let expiry = at(100);
    let hold_ends = 100 + LOG_HOLD.as_secs() as i64;
    assert!(holds_pod(record, &pod, expiry, at(101), &config()));
    assert!(!holds_pod(record, &pod, expiry, at(hold_ends), &config()));
    let mut recorded = record.cloned().unwrap();
    recorded.log = Some(stored(1));
    assert!(!holds_pod(
        Some(&recorded),
        &pod,
        expiry,
        at(101),
        &config()
    ));
    let off = Config {
        log_max_bytes: 0,
        ..config()
    };
    assert!(!holds_pod(record, &pod, expiry, at(101), &off));
    let mut other = pod.clone();
    other.metadata.name = Some("app-1-linux-arm64".into());
    assert!(!holds_pod(record, &other, expiry, at(101), &config()));
}

#[test]
fn a_short_log_is_kept_whole() {
    let mut tail = Tail::new(100);
    tail.push(b"step 1\n");
    tail.push(b"step 2\n");
    assert_eq!(tail.finish(), (b"step 1\nstep 2\n".to_vec(), 0));
    assert_eq!(Tail::new(100).finish(), (Vec::new(), 0));
}

#[test]
fn a_long_log_keeps_its_last_whole_lines_behind_a_marker_within_the_limit() {
    let max = 4096;
    let mut tail = Tail::new(max);
    let mut total = 0u64;
    for n in 0..2000 {
        let line = format!("line {n:05}\n");
        total += line.len() as u64;
        tail.push(line.as_bytes());
        assert!(
            tail.buffer.len() as u64 <= max + max / 4 + 11,
            "memory stays bounded"
        );
    }
    let (kept, cut) = tail.finish();
    assert!(kept.len() as u64 <= max, "{} bytes kept", kept.len());
    let text = String::from_utf8(kept.clone()).unwrap();
    let (marker, rest) = text.split_once('\n').unwrap();
    assert_eq!(format!("{marker}\n"), cut_marker(cut));
    assert!(
        rest.starts_with("line "),
        "a whole line follows: {rest:.20}"
    );
    assert!(rest.ends_with("line 01999\n"));
    assert_eq!(cut + rest.len() as u64, total, "cut and kept add up");
}

#[test]
fn a_signed_attempts_log_is_its_build_init_containers() {
    let build = build(vec![ended(1, AttemptResult::Succeeded)]);
    let signed = PodFixture::for_build(&build, 1).sign_exited(0, "{}");
    assert!(has_log(&signed.pod));
    assert_eq!(main_container(&signed.pod), Some(BUILD_CONTAINER));
    let building = PodFixture::for_build(&build, 1).building_before_signing();
    assert_eq!(main_container(&building.pod), Some(BUILD_CONTAINER));
}
