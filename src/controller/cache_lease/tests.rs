//! Table tests of the lease plan and the finalizer's cache cleanup: statuses and ledgers
//! in, records and calls out.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::*;
use crate::controller::config::CacheService;
use crate::crd::fixtures::{T0, at};
use crate::crd::{AttemptRecord, CacheLease, CacheMode, CacheScope};
use crate::oci::digest::Digest;

const NAME: &str = "build-uid-app-1";

fn config() -> Config {
    Config {
        cache_service: Some(CacheService::parse("http://kiln-cache:5000").unwrap()),
        cache_leases: true,
        ..Config::default()
    }
}

fn attempt(ended: Option<i64>) -> AttemptRecord {
    AttemptRecord {
        attempt: 1,
        pod_name: "app-1".into(),
        pod_uid: None,
        generation: 1,
        start_time: Time(T0),
        completion_time: ended.map(|s| Time(at(s))),
        result: None,
        reason: None,
        message: None,
        digest: None,
        pod_retained_until: None,
        log: None,
    }
}

fn status(ended: Option<i64>, leases: Vec<CacheLease>) -> BuildStatus {
    BuildStatus {
        attempt: 1,
        attempts: vec![attempt(ended)],
        cache_leases: leases,
        ..BuildStatus::default()
    }
}

fn lease(lapses_at: Option<i64>) -> CacheLease {
    CacheLease {
        name: NAME.into(),
        attempt: 1,
        lapses_at: lapses_at.map(|s| Time(at(s))),
    }
}

fn ledger(state: CallState) -> BTreeMap<String, CallState> {
    BTreeMap::from([(NAME.to_owned(), state)])
}

fn held(until: i64, digests: Vec<Digest>) -> CallState {
    CallState {
        held_until: Some(at(until)),
        digests,
        ..CallState::default()
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
    mut status: BuildStatus,
    ledger: &BTreeMap<String, CallState>,
    now: i64,
    config: &Config,
) -> (BuildStatus, CallPlan) {
    let plan = plan(build, &mut status, ledger, at(now), config);
    (status, plan)
}

fn described(plan: &CallPlan) -> Vec<String> {
    plan.actions.iter().map(ToString::to_string).collect()
}

#[test]
fn lease_names_are_derived_from_the_uid_and_attempt() {
    assert_eq!(lease_name("3f2a-uid", 7), "build-3f2a-uid-7");
    assert!(lease_name("3f2a-uid", 7).starts_with(&ledger_prefix("3f2a-uid")));
    assert!(tag_key("3f2a-uid").starts_with(&ledger_prefix("3f2a-uid")));
    // A full Kubernetes UID gives a valid lease name.
    let name = lease_name("0b0f7e2c-8c5e-4d52-9d59-0f1f3c6b4a1e", u32::MAX);
    assert!(crate::cacheapi::admin::LeaseName::parse(&name).is_ok());
}

#[test]
fn lease_is_recorded_then_taken_on_the_tag_for_a_running_attempt() {
    let build = Build::test("app");
    let (status, plan) = run(
        &build,
        status(None, vec![]),
        &BTreeMap::new(),
        10,
        &config(),
    );
    assert_eq!(status.cache_leases, [lease(None)]);
    assert_eq!(
        plan.actions,
        [Action::PutLease {
            name: NAME.into(),
            targets: vec![LeaseTarget::Tag {
                repository: RepoName::parse("default/app").unwrap(),
                tag: Tag::parse("buildcache").unwrap()
            }],
            ttl: Duration::from_secs(900),
            renewal: false,
        }]
    );
    assert_eq!(plan.recheck, Recheck::After(OUTCOME_RECHECK));
}

#[test]
fn lease_is_renewed_at_half_its_ttl_on_the_digests_it_holds() {
    let build = Build::test("app");
    let digest = Digest::of(b"cache manifest");
    let state = ledger(held(1000, vec![digest]));
    // 1000 - 450 = 550: nothing to do before, a renewal from then on.
    let (status_before, before) = run(
        &build,
        status(None, vec![lease(None)]),
        &state,
        549,
        &config(),
    );
    assert_eq!(status_before.cache_leases, [lease(None)]);
    assert!(before.actions.is_empty());
    assert_eq!(before.recheck, Recheck::After(Duration::from_secs(1)));
    let (_, early) = run(
        &build,
        status(None, vec![lease(None)]),
        &state,
        100,
        &config(),
    );
    assert_eq!(early.recheck, Recheck::After(Duration::from_secs(450)));
    let (_, due) = run(
        &build,
        status(None, vec![lease(None)]),
        &state,
        550,
        &config(),
    );
    assert_eq!(
        due.actions,
        [Action::PutLease {
            name: NAME.into(),
            targets: vec![LeaseTarget::Digest { digest }],
            ttl: Duration::from_secs(900),
            renewal: true,
        }]
    );
}

#[test]
fn lease_that_lapsed_while_renewals_failed_is_taken_on_the_tag_again() {
    let build = Build::test("app");
    let mut state = held(1000, vec![Digest::of(b"gone by now")]);
    state.failures = 3;
    state.retry_at = Some(at(1200));
    let (_, plan) = run(
        &build,
        status(None, vec![lease(None)]),
        &ledger(state),
        1200,
        &config(),
    );
    assert_eq!(described(&plan), ["TakeLease build-uid-app-1"]);
    let Action::PutLease { targets, .. } = &plan.actions[0] else {
        panic!("{plan:?}");
    };
    assert!(
        matches!(targets[..], [LeaseTarget::Tag { .. }]),
        "{targets:?}"
    );
}

#[test]
fn lease_calls_that_failed_wait_for_their_backoff() {
    let build = Build::test("app");
    let state = ledger(failing(60));
    let (status_now, plan) = run(
        &build,
        status(None, vec![lease(None)]),
        &state,
        20,
        &config(),
    );
    assert_eq!(status_now.cache_leases, [lease(None)], "still owed");
    assert!(plan.actions.is_empty());
    assert_eq!(plan.recheck, Recheck::After(Duration::from_secs(40)));
    let (_, retry) = run(
        &build,
        status(None, vec![lease(None)]),
        &state,
        60,
        &config(),
    );
    assert_eq!(described(&retry), ["TakeLease build-uid-app-1"]);
}

#[test]
fn lease_of_an_ended_attempt_lapses_one_ttl_later_and_is_released() {
    let build = Build::test("app");
    let (status, plan) = run(
        &build,
        status(Some(100), vec![lease(None)]),
        &ledger(held(1000, vec![])),
        100,
        &config(),
    );
    assert_eq!(status.cache_leases, [lease(Some(100 + 900))]);
    assert_eq!(described(&plan), ["ReleaseLease build-uid-app-1"]);
    assert_eq!(plan.recheck, Recheck::After(OUTCOME_RECHECK));
}

#[test]
fn lease_release_confirmed_or_lapsed_drops_the_record() {
    let build = Build::test("app");
    let released = ledger(CallState {
        done: true,
        ..CallState::default()
    });
    let (status_released, plan) = run(
        &build,
        status(Some(100), vec![lease(Some(1000))]),
        &released,
        110,
        &config(),
    );
    assert!(status_released.cache_leases.is_empty());
    assert!(plan.actions.is_empty());
    assert_eq!(plan.recheck, Recheck::OnChange);

    // Never confirmed, but past its lapse time: nothing left to release.
    let (status_lapsed, plan) = run(
        &build,
        status(Some(100), vec![lease(Some(1000))]),
        &ledger(failing(5000)),
        1000,
        &config(),
    );
    assert!(status_lapsed.cache_leases.is_empty());
    assert!(plan.actions.is_empty());
}

#[test]
fn lease_release_that_failed_stays_owed_until_retried() {
    let build = Build::test("app");
    let (status, plan) = run(
        &build,
        status(Some(100), vec![lease(Some(1000))]),
        &ledger(failing(300)),
        200,
        &config(),
    );
    assert_eq!(status.cache_leases, [lease(Some(1000))]);
    assert!(plan.actions.is_empty());
    assert_eq!(plan.recheck, Recheck::After(Duration::from_secs(100)));
}

#[test]
fn lease_is_not_taken_without_leases_or_without_a_cache() {
    let build = Build::test("app");
    let off = Config {
        cache_leases: false,
        ..config()
    };
    let (status_off, plan) = run(&build, status(None, vec![]), &BTreeMap::new(), 10, &off);
    assert!(status_off.cache_leases.is_empty());
    assert!(plan.actions.is_empty());
    // A record left from when leases were on lapses without calls.
    let (status_left, plan) = run(
        &build,
        status(None, vec![lease(None)]),
        &BTreeMap::new(),
        10,
        &off,
    );
    assert_eq!(status_left.cache_leases, [lease(Some(910))]);
    assert!(plan.actions.is_empty());

    let no_cache = build.cache(CacheMode::Off, CacheScope::Build);
    let (status_no_cache, plan) = run(
        &no_cache,
        status(None, vec![]),
        &BTreeMap::new(),
        10,
        &config(),
    );
    assert!(status_no_cache.cache_leases.is_empty());
    assert!(plan.actions.is_empty());
}

fn deleting(leases: Vec<CacheLease>, since: i64) -> Build {
    Build::test("app")
        .with_status(status(None, leases))
        .deleting(at(since))
}

#[test]
fn lease_cleanup_releases_and_deletes_the_tag_then_lets_go() {
    let build = deleting(vec![lease(None)], 0);
    let cleanup_now = cleanup(&build, &BTreeMap::new(), at(5), &config());
    assert!(cleanup_now.pending);
    assert_eq!(
        cleanup_now
            .actions
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [
            "ReleaseLease build-uid-app-1",
            "DeleteCacheTag default/app:buildcache"
        ]
    );
    let done = CallState {
        done: true,
        ..CallState::default()
    };
    let all_done = BTreeMap::from([(NAME.to_owned(), done.clone()), (tag_key("uid-app"), done)]);
    assert_eq!(
        cleanup(&build, &all_done, at(6), &config()),
        Cleanup::default()
    );
    // Nothing at all without leases.
    let off = Config {
        cache_leases: false,
        ..config()
    };
    assert_eq!(
        cleanup(&build, &BTreeMap::new(), at(5), &off),
        Cleanup::default()
    );
}

#[test]
fn lease_cleanup_gives_up_at_its_deadline_and_says_what_was_left() {
    let build = deleting(vec![lease(Some(700))], 0);
    let failing_ledger = BTreeMap::from([
        (NAME.to_owned(), failing(1000)),
        (tag_key("uid-app"), failing(1000)),
    ]);
    let waiting = cleanup(&build, &failing_ledger, at(100), &config());
    assert!(waiting.pending);
    assert!(waiting.actions.is_empty());
    assert_eq!(waiting.recheck, Recheck::After(Duration::from_secs(500)));

    // The lease lapsed at 700; the tag is still owed at the deadline (600 s).
    let gave_up = cleanup(&build, &failing_ledger, at(600), &config());
    assert!(!gave_up.pending);
    let message = gave_up.gave_up.unwrap();
    assert!(
        message.contains("lease build-uid-app-1 (lapses by itself by 2026-01-01T00:11:40Z)"),
        "{message}"
    );
    assert!(
        message.contains("tag default/app:buildcache (left to the cache's prune)"),
        "{message}"
    );
    assert!(message.contains("connection refused"), "{message}");
}

const LOCAL_DIGEST: &str =
    "sha256:3333333333333333333333333333333333333333333333333333333333333333";

/// An uploaded context is held by the attempt's lease with the build cache, and held even
/// when the build cache is off: a retried attempt takes it from the cache.
#[test]
fn lease_of_a_local_build_holds_its_context_tag_too() {
    let tags =
        |build: &Build| match run(build, status(None, vec![]), &BTreeMap::new(), 10, &config())
            .1
            .actions
            .as_slice()
        {
            [Action::PutLease { targets, .. }] => targets.clone(),
            other => panic!("one PutLease expected: {other:?}"),
        };
    let context = LeaseTarget::Tag {
        repository: RepoName::parse("default/kiln_contexts").unwrap(),
        tag: Tag::parse("build-uid-app").unwrap(),
    };
    let build = Build::test("app").local(LOCAL_DIGEST, 4096);
    assert_eq!(
        tags(&build),
        [
            LeaseTarget::Tag {
                repository: RepoName::parse("default/app").unwrap(),
                tag: Tag::parse("buildcache").unwrap()
            },
            context.clone()
        ]
    );
    let no_cache = build.cache(CacheMode::Off, CacheScope::Build);
    assert_eq!(tags(&no_cache), [context]);
}

#[test]
fn lease_cleanup_of_a_local_build_deletes_its_context_tag() {
    let build = Build::test("app")
        .local(LOCAL_DIGEST, 4096)
        .with_status(status(None, vec![]))
        .deleting(at(0));
    let cleanup_now = cleanup(&build, &BTreeMap::new(), at(5), &config());
    assert_eq!(
        cleanup_now
            .actions
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [
            "DeleteCacheTag default/app:buildcache",
            "DeleteCacheTag default/kiln_contexts:build-uid-app"
        ]
    );
    let done = CallState {
        done: true,
        ..CallState::default()
    };
    let all_done = BTreeMap::from([
        (tag_key("uid-app"), done.clone()),
        (context_tag_key("uid-app"), done),
    ]);
    assert_eq!(
        cleanup(&build, &all_done, at(6), &config()),
        Cleanup::default()
    );
}
