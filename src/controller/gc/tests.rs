//! Table tests of the sweeper's selection: which object goes, why, with what grace, and in
//! which order.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::core::PartialObjectMetaExt;

use super::*;
use crate::cacheapi::admin::RepositoryUsage;
use crate::controller::fixtures::PodFixture;
use crate::controller::labels::attempt_labels;
use crate::crd::fixtures::{T0, at};
use crate::crd::{AttemptRecord, AttemptResult, BuildStatus};

const NOW: i64 = 10_000;

fn record(attempt: u32, ended: Option<i64>, retained_until: Option<i64>) -> AttemptRecord {
    AttemptRecord {
        attempt,
        pod_name: format!("app-{attempt}"),
        pod_uid: None,
        generation: 1,
        start_time: Time(T0),
        completion_time: ended.map(|s| Time(at(s))),
        result: ended.map(|_| AttemptResult::Succeeded),
        reason: None,
        message: None,
        digest: None,
        pod_retained_until: retained_until.map(|s| Time(at(s))),
        log: None,
    }
}

/// Build `app` whose status names attempt `current` and holds `records`.
fn app(current: u32, records: Vec<AttemptRecord>) -> Build {
    Build::test("app").with_status(BuildStatus {
        attempt: current,
        attempts: records,
        ..BuildStatus::default()
    })
}

fn meta_of(name: &str, uid: &str, attempt: u32) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some("default".into()),
        uid: Some(format!("{name}-object-uid")),
        labels: Some(attempt_labels("app", uid, attempt)),
        ..ObjectMeta::default()
    }
}

fn config_map(uid: &str, attempt: u32) -> PartialObjectMeta<ConfigMap> {
    meta_of(&format!("app-{attempt}"), uid, attempt).into_response_partial()
}

fn secret(uid: &str, attempt: u32) -> PartialObjectMeta<Secret> {
    meta_of(&format!("app-{attempt}"), uid, attempt).into_response_partial()
}

fn pod(attempt: u32, state: impl FnOnce(PodFixture) -> PodFixture) -> Pod {
    state(PodFixture::new("app", attempt)).pod
}

/// `(reason, grace in seconds)` of each pod the sweeper deletes among `pods`.
fn pods_selected(builds: &[Build], pods: &[Pod]) -> Vec<(String, SweepReason, u64)> {
    let snapshot = Snapshot {
        pods,
        builds,
        ..Snapshot::default()
    };
    select(&snapshot, at(NOW), &Config::default())
        .into_iter()
        .map(|d| (d.name, d.reason, d.grace.as_secs()))
        .collect()
}

fn one(name: &str, reason: SweepReason, grace: u64) -> Vec<(String, SweepReason, u64)> {
    vec![(name.to_owned(), reason, grace)]
}

#[test]
fn orphan_pods_of_a_build_that_is_gone_are_deleted_live_ones_with_grace() {
    let none: Vec<Build> = Vec::new();
    assert_eq!(
        pods_selected(&none, &[pod(1, |p| p.running())]),
        one("app-1", SweepReason::BuildGone, 30)
    );
    assert_eq!(
        pods_selected(&none, &[pod(1, |p| p.exited(1, "x"))]),
        one("app-1", SweepReason::BuildGone, 0)
    );
}

#[test]
fn orphan_pods_of_an_earlier_build_object_of_the_same_name_are_deleted() {
    let recreated = app(0, Vec::new()).with_uid("uid-new");
    let snapshot_pods = [pod(1, |p| p.running())];
    let snapshot = Snapshot {
        pods: &snapshot_pods,
        builds: std::slice::from_ref(&recreated),
        ..Snapshot::default()
    };
    let deletions = select(&snapshot, at(NOW), &Config::default());
    assert_eq!(deletions.len(), 1);
    assert_eq!(deletions[0].reason, SweepReason::BuildReplaced);
    assert_eq!(
        deletions[0].build.as_deref(),
        Some("app"),
        "the Event goes there"
    );
    assert_eq!(
        deletions[0].uid.as_deref(),
        Some("pod-app-1"),
        "a precondition"
    );
}

#[test]
fn orphan_selection_keeps_what_is_not_an_orphan() {
    let running = app(1, vec![record(1, None, None)]);
    let deleting = running.clone().deleting(T0);
    let cases: Vec<(&str, Vec<Build>, Pod)> = vec![
        (
            "the open attempt's pod",
            vec![running.clone()],
            pod(1, |p| p.running()),
        ),
        (
            "the open attempt's finished pod, not yet recorded",
            vec![running.clone()],
            pod(1, |p| p.exited(1, "x")),
        ),
        (
            "a pod newer than the status (the list of Builds is later)",
            vec![running.clone()],
            pod(2, |p| p),
        ),
        (
            "a pod of a Build being deleted (the finalizer's)",
            vec![deleting],
            pod(1, |p| p.running()),
        ),
        (
            "a pod being deleted already",
            vec![],
            pod(1, |p| p.running().terminating()),
        ),
        (
            "a finished pod within its retention time",
            vec![app(1, vec![record(1, Some(100), Some(NOW + 1))])],
            pod(1, |p| p.exited(1, "x")),
        ),
    ];
    for (what, builds, pod) in cases {
        assert_eq!(pods_selected(&builds, &[pod]), [], "{what}");
    }
}

#[test]
fn orphan_pods_still_running_after_their_attempt_ended_are_stopped_with_grace() {
    // Cancelled (the current attempt closed) and superseded (an earlier attempt).
    let cancelled = app(1, vec![record(1, Some(100), None)]);
    assert_eq!(
        pods_selected(&[cancelled], &[pod(1, |p| p.running())]),
        one("app-1", SweepReason::AttemptEnded, 30)
    );
    let superseded = app(2, vec![record(1, Some(100), None), record(2, None, None)]);
    assert_eq!(
        pods_selected(
            &[superseded],
            &[pod(1, |p| p.running()), pod(2, |p| p.running())]
        ),
        one("app-1", SweepReason::AttemptEnded, 30)
    );
}

/// The sweeper lists pods before Builds: a pod listed while its build was finishing, whose
/// attempt the Build list then shows ended by that very exit, still holds the build log
/// for its retention time. (On a real node the sweep deleted such pods right away.)
#[test]
fn a_pod_listed_running_whose_attempt_its_own_exit_ended_is_kept_for_its_retention() {
    for reason in [
        crate::crd::Reason::Succeeded,
        crate::crd::Reason::BuildFailed,
    ] {
        let mut ended = record(1, Some(NOW - 1), Some(NOW + 3600));
        ended.reason = Some(reason);
        let build = app(1, vec![ended]);
        assert_eq!(
            pods_selected(&[build], &[pod(1, |p| p.running())]),
            [],
            "{reason:?}"
        );
    }
    // Stopped by the controller (a timeout): a pod that still runs is stopped.
    let mut timed_out = record(1, Some(NOW - 1), None);
    timed_out.reason = Some(crate::crd::Reason::TimedOut);
    assert_eq!(
        pods_selected(&[app(1, vec![timed_out])], &[pod(1, |p| p.running())]),
        one("app-1", SweepReason::AttemptEnded, 30)
    );
}

#[test]
fn orphan_objects_without_the_kiln_label_or_with_a_foreign_owner_are_never_touched() {
    let mut unlabelled = pod(1, |p| p.running());
    unlabelled
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .remove(MANAGED_BY);
    let mut other_manager = pod(1, |p| p.running());
    other_manager
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(MANAGED_BY.into(), "helm".into());
    let mut foreign = pod(1, |p| p.running());
    foreign.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "apps/v1".into(),
        kind: "ReplicaSet".into(),
        name: "web-7d9".into(),
        uid: "rs-uid".into(),
        controller: Some(true),
        ..OwnerReference::default()
    }]);
    let mut no_build_label = pod(1, |p| p.running());
    no_build_label
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .remove(BUILD_UID);
    // A non-controller reference to something else does not make an owner.
    let mut referenced = pod(1, |p| p.running());
    referenced.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: "x".into(),
        uid: "x".into(),
        controller: None,
        ..OwnerReference::default()
    }]);
    let none: Vec<Build> = Vec::new();
    for (what, pod) in [
        ("no label", unlabelled),
        ("managed by another tool", other_manager),
        ("a foreign controller", foreign),
        ("no build UID label", no_build_label),
    ] {
        assert_eq!(pods_selected(&none, &[pod]), [], "{what}");
    }
    assert_eq!(
        pods_selected(&none, &[referenced]),
        one("app-1", SweepReason::BuildGone, 30)
    );
}

#[test]
fn retention_deletes_a_finished_pod_once_its_announced_time_has_passed() {
    let ended = |retained: i64| app(1, vec![record(1, Some(100), Some(retained))]);
    assert_eq!(
        pods_selected(&[ended(NOW)], &[pod(1, |p| p.exited(1, "x"))]),
        one("app-1", SweepReason::Expired, 0)
    );
    assert_eq!(
        pods_selected(&[ended(NOW + 1)], &[pod(1, |p| p.exited(1, "x"))]),
        []
    );
}

#[test]
fn retention_of_pods_whose_record_left_the_history_follows_their_phase() {
    // Attempt 1 was trimmed from the history; its pod ended at 100.
    let build = app(5, vec![record(5, Some(200), None)]);
    let succeeded = pod(1, |p| {
        p.pushed("sha256:4444444444444444444444444444444444444444444444444444444444444444")
            .finished_at(at(100))
    });
    let failed = |p: PodFixture| p.exited(1, "x").finished_at(at(100));
    let builds = [build];
    // Succeeded: 1h; failed: 24h.
    let at_2h = Snapshot {
        pods: &[succeeded.clone(), pod(2, failed)],
        builds: &builds,
        ..Snapshot::default()
    };
    let names: Vec<String> = select(&at_2h, at(100 + 7200), &Config::default())
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, ["app-1"]);
}

#[test]
fn orphan_config_maps_and_secrets_go_when_their_attempt_has_ended() {
    let build = app(2, vec![record(1, Some(100), None), record(2, None, None)]);
    let config_maps = [config_map("uid-app", 1), config_map("uid-app", 2)];
    let secrets = [
        secret("uid-app", 1),
        secret("uid-app", 2),
        secret("uid-gone", 1),
    ];
    let builds = [build];
    let snapshot = Snapshot {
        config_maps: &config_maps,
        secrets: &secrets,
        builds: &builds,
        ..Snapshot::default()
    };
    let selected: Vec<(Kind, String, SweepReason)> = select(&snapshot, at(NOW), &Config::default())
        .into_iter()
        .map(|d| (d.kind, d.name, d.reason))
        .collect();
    assert_eq!(
        selected,
        [
            (
                Kind::ConfigMap,
                "app-1".into(),
                SweepReason::AttemptFinished
            ),
            (Kind::Secret, "app-1".into(), SweepReason::AttemptFinished),
            (Kind::Secret, "app-1".into(), SweepReason::BuildReplaced),
        ]
    );
}

#[test]
fn orphan_selection_is_sorted_whatever_the_list_order() {
    let builds: Vec<Build> = ["b", "a", "c"]
        .into_iter()
        .map(|n| Build::test(n).in_namespace(if n == "a" { "z" } else { "y" }))
        .collect();
    let mut pods = Vec::new();
    for build in ["c", "a", "b", "gone"] {
        let mut p = PodFixture::new(build, 1).running().pod;
        p.metadata.namespace = Some(if build == "a" { "z" } else { "y" }.into());
        pods.push(p);
    }
    let first = select(
        &Snapshot {
            pods: &pods,
            builds: &builds,
            ..Snapshot::default()
        },
        at(NOW),
        &Config::default(),
    );
    pods.reverse();
    let mut reversed_builds = builds.clone();
    reversed_builds.reverse();
    let second = select(
        &Snapshot {
            pods: &pods,
            builds: &reversed_builds,
            ..Snapshot::default()
        },
        at(NOW),
        &Config::default(),
    );
    assert_eq!(first, second);
    let order: Vec<(String, String)> = first
        .iter()
        .map(|d| (d.namespace.clone(), d.name.clone()))
        .collect();
    // Builds a, b, c have no status: their pods are newer than it and kept; only the pod
    // whose Build is gone goes.
    assert_eq!(order, [("y".into(), "gone-1".into())]);
}

#[test]
fn orphan_reasons_have_stable_labels_and_only_news_makes_events() {
    let labels: Vec<&str> = SweepReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(
        labels,
        [
            "build_gone",
            "build_replaced",
            "attempt_ended",
            "attempt_finished",
            "expired"
        ]
    );
    let news: Vec<SweepReason> = SweepReason::ALL
        .into_iter()
        .filter(|r| r.is_news())
        .collect();
    assert_eq!(
        news,
        [SweepReason::BuildReplaced, SweepReason::AttemptEnded]
    );
    let report = SweepReport {
        examined: 3,
        deleted: BTreeMap::from([(SweepReason::Expired, 2), (SweepReason::BuildGone, 1)]),
        failed: 0,
    };
    assert_eq!(report.total_deleted(), 3);
}

fn repo(name: &str, mirror: bool) -> RepositoryUsage {
    RepositoryUsage {
        name: RepoName::parse(name).unwrap(),
        tags: 1,
        manifests: 1,
        bytes: 1,
        last_used: None,
        mirror,
    }
}

#[test]
fn orphan_cache_repositories_are_those_of_namespaces_that_are_gone() {
    let repositories = [
        repo("team-b/app", false),
        repo("team-a/app", false),
        repo("team-a/shared", false),
        repo("gone/app", false),
        repo("gone/shared", false),
        repo("gone", false),                    // not <namespace>/<name>
        repo("docker.io/library/alpine", true), // a mirror
        repo("not_a_namespace/app", false),
        repo("gone2/x/y", false),
    ];
    let namespaces = BTreeSet::from(["team-a".to_owned(), "team-b".to_owned()]);
    let names = |prefix| {
        stale_repositories(&repositories, &namespaces, prefix)
            .into_iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(None), ["gone/app", "gone/shared", "gone2/x/y"]);

    let prefixed = [
        repo("kiln/gone/app", false),
        repo("kiln/team-a/app", false),
        repo("other/gone/app", false),
    ];
    let stale: Vec<String> = stale_repositories(&prefixed, &namespaces, Some("kiln"))
        .into_iter()
        .map(|r| r.to_string())
        .collect();
    assert_eq!(stale, ["kiln/gone/app"]);
}

#[test]
fn per_build_repositories_are_the_logs_and_contexts_of_existing_namespaces() {
    let repositories = [
        repo("team-a/kiln_logs", false),
        repo("team-a/kiln_contexts", false),
        repo("team-a/app", false),
        repo("gone/kiln_logs", false),
        repo("team-a/kiln_logs/deeper", false),
        repo("docker.io/kiln_logs", true),
        repo("kiln/team-b/kiln_logs", false),
    ];
    let namespaces: BTreeSet<String> = ["team-a", "team-b", "docker.io"].map(str::to_owned).into();
    let found = |prefix| -> Vec<String> {
        per_build_repositories(&repositories, &namespaces, prefix)
            .into_iter()
            .map(|(ns, r)| format!("{ns} {r}"))
            .collect()
    };
    assert_eq!(
        found(None),
        ["team-a team-a/kiln_contexts", "team-a team-a/kiln_logs"]
    );
    assert_eq!(found(Some("kiln")), ["team-b kiln/team-b/kiln_logs"]);
}

#[test]
fn only_tags_named_after_a_build_uid_that_no_longer_exists_are_orphans() {
    const LIVE: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
    const GONE: &str = "6fa459ea-ee8a-3ca4-894e-db77e160355e";
    let repository: RepoName = "team-a/kiln_logs".parse().unwrap();
    let live: BTreeSet<(String, String)> = [("team-a".to_owned(), LIVE.to_owned())].into();
    let tags: Vec<String> = [
        format!("build-{LIVE}-3"),
        format!("build-{GONE}"),
        format!("build-{GONE}-12"),
        format!("build-{GONE}-"),
        format!("build-{GONE}-x"),
        format!("build-{}", GONE.to_uppercase()),
        "build-uid-app-1".to_owned(),
        "latest".to_owned(),
    ]
    .into();
    let orphans: Vec<String> = orphan_build_tags("team-a", &repository, &tags, &live)
        .into_iter()
        .map(|(_, t)| t.to_string())
        .collect();
    assert_eq!(
        orphans,
        [format!("build-{GONE}"), format!("build-{GONE}-12")]
    );
    // The same UID alive in another namespace does not keep a tag of this one.
    let elsewhere: BTreeSet<(String, String)> = [("team-b".to_owned(), LIVE.to_owned())].into();
    let orphans = orphan_build_tags(
        "team-a",
        &repository,
        &[format!("build-{LIVE}-1")],
        &elsewhere,
    );
    assert_eq!(orphans.len(), 1);
}
