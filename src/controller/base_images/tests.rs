//! Table tests of the base-image plan and trigger: statuses and ledgers in, records, calls
//! and changes out.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::*;
use crate::controller::config::CacheService;
use crate::crd::fixtures::at;
use crate::crd::{AttemptRecord, BaseImage, Phase, Triggers};

const ALPINE: &str = "docker.io/library/alpine:3.20";

fn digest(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

fn config() -> Config {
    Config {
        cache_service: Some(CacheService::parse("http://kiln-cache:5000").unwrap()),
        cache_leases: true,
        ..Config::default()
    }
}

fn watching(build: Build) -> Build {
    let mut build = build;
    build.spec.triggers = Some(Triggers {
        base_image_changed: true,
    });
    build
}

fn succeeded(attempt: u32) -> AttemptRecord {
    AttemptRecord {
        start_time: Time(at(10)),
        ..AttemptRecord::test(
            attempt,
            &format!("app-{attempt}"),
            Some(AttemptResult::Succeeded),
        )
    }
}

/// A Build whose attempt 1 succeeded on alpine `a`, its bases read at 100.
fn built_on_a() -> Build {
    watching(Build::test("app")).with_status(BuildStatus {
        phase: Some(Phase::Succeeded),
        attempt: 1,
        observed_generation: Some(1),
        attempts: vec![succeeded(1)],
        base_images: vec![BaseImage {
            image: ALPINE.into(),
            digest: digest('a'),
        }],
        base_image_check: Some(BaseImageCheck {
            attempt: 1,
            checked_at: Some(Time(at(100))),
            last_trigger: None,
        }),
        ..BuildStatus::default()
    })
}

fn checked(at_secs: i64, now: char) -> BTreeMap<String, CallState> {
    BTreeMap::from([(
        check_key("uid-app"),
        CallState {
            resolved_bases: Some(BTreeMap::from([(ALPINE.to_owned(), digest(now))])),
            touched: Some(at(at_secs)),
            ..CallState::default()
        },
    )])
}

fn run(
    build: &Build,
    ledger: &BTreeMap<String, CallState>,
    now: i64,
    config: &Config,
) -> (BuildStatus, CallPlan) {
    let mut status = build.status.clone().unwrap_or_default();
    let plan = plan(build, &mut status, ledger, at(now), config);
    (status, plan)
}

#[test]
fn a_succeeded_attempt_has_its_base_images_read_once_and_recorded() {
    let build = Build::test("app").with_status(BuildStatus {
        phase: Some(Phase::Succeeded),
        attempt: 1,
        attempts: vec![succeeded(1)],
        ..BuildStatus::default()
    });
    let (status, plan) = run(&build, &BTreeMap::new(), 70, &config());
    assert_eq!(status, build.status.clone().unwrap());
    assert_eq!(
        plan.actions,
        [Action::ReadBaseImages {
            key: read_key("uid-app", 1),
            uid: "uid-app".into(),
            since: at(10),
        }]
    );
    let read = BTreeMap::from([(
        read_key("uid-app", 1),
        CallState {
            bases: Some(vec![BaseImage {
                image: ALPINE.into(),
                digest: digest('a'),
            }]),
            touched: Some(at(71)),
            ..CallState::default()
        },
    )]);
    let (status, plan) = run(&build, &read, 72, &config());
    assert!(plan.actions.is_empty(), "not watched: no check");
    assert_eq!(status.base_images.len(), 1);
    let check = status.base_image_check.clone().unwrap();
    assert_eq!((check.attempt, check.checked_at), (1, Some(Time(at(71)))));

    // Recorded: nothing more, whatever the ledger forgot.
    let recorded = build.clone().with_status(status);
    let (again, plan) = run(&recorded, &BTreeMap::new(), 80, &config());
    assert_eq!(again, recorded.status.clone().unwrap());
    assert!(plan.actions.is_empty());
}

#[test]
fn nothing_is_read_without_the_admin_api_or_a_successful_attempt() {
    let off = Config {
        cache_leases: false,
        ..config()
    };
    let (_, plan) = run(&built_on_a(), &BTreeMap::new(), 1_000_000, &off);
    assert!(plan.actions.is_empty());
    let failed = Build::test("app").with_status(BuildStatus {
        phase: Some(Phase::Failed),
        attempt: 1,
        attempts: vec![AttemptRecord::test(1, "app-1", Some(AttemptResult::Failed))],
        ..BuildStatus::default()
    });
    let (_, plan) = run(&failed, &BTreeMap::new(), 100, &config());
    assert!(plan.actions.is_empty());
}

#[test]
fn the_check_interval_is_spread_by_uid_within_a_tenth() {
    let hour = Duration::from_secs(3600);
    let mut seen = std::collections::BTreeSet::new();
    for n in 0..50 {
        let uid = format!("uid-{n}");
        let interval = jittered(hour, &uid);
        assert!(interval >= hour.mul_f64(0.9) && interval <= hour.mul_f64(1.1));
        assert_eq!(
            interval,
            jittered(hour, &uid),
            "the same for a UID every time"
        );
        seen.insert(interval.as_secs() / 60);
    }
    assert!(seen.len() > 5, "spread: {seen:?}");
}

#[test]
fn a_watched_finished_build_checks_its_tags_when_due() {
    let build = built_on_a();
    let due = 100 + jittered(Duration::from_secs(3600), "uid-app").as_secs() as i64 + 1;
    let (_, plan) = run(&build, &BTreeMap::new(), 200, &config());
    assert!(plan.actions.is_empty());
    let Recheck::After(wait) = plan.recheck else {
        panic!("a recheck at the due time");
    };
    assert!((due - 200 - 1..=due - 200).contains(&(wait.as_secs() as i64)));
    let (_, plan) = run(&build, &BTreeMap::new(), due, &config());
    assert_eq!(
        plan.actions,
        [Action::CheckBaseImages {
            key: check_key("uid-app"),
            images: vec![ALPINE.into()],
        }]
    );
    // A check that failed waits out its backoff.
    let failing = BTreeMap::from([(
        check_key("uid-app"),
        CallState {
            failures: 1,
            retry_at: Some(at(due + 30)),
            ..CallState::default()
        },
    )]);
    let (_, plan) = run(&build, &failing, due, &config());
    assert!(plan.actions.is_empty());
}

#[test]
fn no_check_without_the_trigger_or_while_an_attempt_runs() {
    let mut unwatched = built_on_a();
    unwatched.spec.triggers = None;
    let (_, plan) = run(&unwatched, &BTreeMap::new(), 1_000_000, &config());
    assert!(plan.actions.is_empty());
    let mut running = built_on_a();
    if let Some(status) = running.status.as_mut() {
        status.phase = Some(Phase::Running);
        status.attempt = 2;
        status.attempts.push(AttemptRecord::test(2, "app-2", None));
    }
    let (_, plan) = run(&running, &BTreeMap::new(), 1_000_000, &config());
    assert!(plan.actions.is_empty());
}

#[test]
fn a_moved_tag_is_a_change_once_and_an_unmoved_one_only_records_the_check() {
    let build = built_on_a();
    let mut status = build.status.clone().unwrap();
    let change = take_check(&build, &mut status, &checked(200, 'b'), &config());
    assert_eq!(
        change,
        Some(BaseImageChange {
            image: ALPINE.into(),
            from: digest('a'),
            to: digest('b'),
            attempt: 0,
        })
    );
    assert_eq!(
        status.base_image_check.as_ref().unwrap().checked_at,
        Some(Time(at(200)))
    );
    // The same result again is not new.
    assert_eq!(
        take_check(&build, &mut status, &checked(200, 'b'), &config()),
        None
    );

    let mut status = build.status.clone().unwrap();
    assert_eq!(
        take_check(&build, &mut status, &checked(200, 'a'), &config()),
        None
    );
    assert_eq!(
        status.base_image_check.as_ref().unwrap().checked_at,
        Some(Time(at(200))),
        "the check is recorded"
    );
}

#[test]
fn a_digest_that_already_started_an_attempt_never_starts_another_until_the_tag_moves_again() {
    let mut build = built_on_a();
    if let Some(check) = build
        .status
        .as_mut()
        .and_then(|s| s.base_image_check.as_mut())
    {
        check.last_trigger = Some(BaseImageChange {
            image: ALPINE.into(),
            from: digest('a'),
            to: digest('b'),
            attempt: 2,
        });
    }
    let mut status = build.status.clone().unwrap();
    assert_eq!(
        take_check(&build, &mut status, &checked(300, 'b'), &config()),
        None,
        "the failed triggered attempt is not retried by the trigger"
    );
    let change = take_check(&build, &mut status, &checked(400, 'c'), &config());
    assert_eq!(change.map(|c| c.to), Some(digest('c')));
}

#[test]
fn only_a_finished_watched_build_takes_a_check() {
    let mut running = built_on_a();
    if let Some(status) = running.status.as_mut() {
        status.phase = Some(Phase::Running);
    }
    let mut status = running.status.clone().unwrap();
    assert_eq!(
        take_check(&running, &mut status, &checked(200, 'b'), &config()),
        None
    );
    let mut unwatched = built_on_a();
    unwatched.spec.triggers = None;
    let mut status = unwatched.status.clone().unwrap();
    assert_eq!(
        take_check(&unwatched, &mut status, &checked(200, 'b'), &config()),
        None
    );
}

#[test]
fn references_split_at_the_tag_not_at_a_port() {
    assert_eq!(
        split_tag(ALPINE),
        Some(("docker.io/library/alpine", "3.20"))
    );
    assert_eq!(
        split_tag("localhost:5000/team/base:v1"),
        Some(("localhost:5000/team/base", "v1"))
    );
    assert_eq!(split_tag("localhost:5000/team/base"), None);
    assert_eq!(split_tag("base:"), None);
}
