//! The kubectl plugin: its API reads and writes against an in-memory API server
//! (kube-fake-client), and the binary invoked as `kubectl-kiln`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test stops where it fails

mod common;

use std::path::PathBuf;
use std::process::Command;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use serde_json::{Value, json};

use common::fake_api::fake_api;
use kiln::controller::fixtures::PodFixture;
use kiln::crd::fixtures::at;
use kiln::crd::{AttemptRecord, AttemptResult, Build, BuildStatus, Phase, PlatformStatus};
use kiln::plugin::api::{self, CancelRequest, ListScope, LogRequest};
use kiln::plugin::error::PluginError;

fn status(phase: Phase, attempt: u32, result: Option<AttemptResult>) -> BuildStatus {
    BuildStatus {
        phase: Some(phase),
        observed_generation: Some(1),
        attempt,
        start_time: Some(Time(at(0))),
        attempts: (1..=attempt)
            .map(|n| AttemptRecord::test(n, &format!("app-{n}"), result))
            .collect(),
        ..BuildStatus::default()
    }
}

fn json_of(build: Build) -> Value {
    serde_json::to_value(build).unwrap()
}

fn event(name: &str, uid: &str, reason: &str, secs: i64) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": "default"},
        "involvedObject": {"kind": "Build", "name": "app", "namespace": "default", "uid": uid},
        "reason": reason,
        "message": format!("{reason} happened"),
        "type": "Normal",
        "lastTimestamp": Time(at(secs)),
    })
}

#[tokio::test]
async fn list_returns_builds_sorted_by_namespace_then_name() {
    let client = fake_api(
        vec![
            json_of(Build::test("zeta")),
            json_of(Build::test("alpha").in_namespace("team-b")),
            json_of(Build::test("alpha")),
        ],
        None,
    )
    .await;
    let names = |builds: Vec<Build>| {
        builds
            .into_iter()
            .map(|b| {
                format!(
                    "{}/{}",
                    b.metadata.namespace.unwrap(),
                    b.metadata.name.unwrap()
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(api::list_builds(&client, &ListScope::All).await.unwrap()),
        ["default/alpha", "default/zeta", "team-b/alpha"]
    );
    assert_eq!(
        names(
            api::list_builds(&client, &ListScope::Namespace("team-b".into()))
                .await
                .unwrap()
        ),
        ["team-b/alpha"]
    );
}

#[tokio::test]
async fn status_gathers_the_builds_own_events_oldest_first_and_the_failed_pods_log() {
    let build =
        Build::test("app").with_status(status(Phase::Failed, 1, Some(AttemptResult::Failed)));
    let client = fake_api(
        vec![
            json_of(build),
            event("late", "uid-app", "BuildFailed", 60),
            event("early", "uid-app", "PodCreated", 1),
            // An earlier Build of the same name: not this one's story.
            event("old", "uid-of-a-deleted-app", "Succeeded", 0),
        ],
        None,
    )
    .await;
    let report = api::status_report(&client, "default", "app").await.unwrap();
    let reasons: Vec<_> = report
        .events
        .iter()
        .map(|e| e.reason.clone().unwrap())
        .collect();
    assert_eq!(reasons, ["PodCreated", "BuildFailed"]);
    // The failed attempt's pod is gone: the report says so instead of failing.
    let log = report.failed_log.expect("a failed attempt shows its log");
    assert_eq!(log.pod, "app-1");
    let why = log.lines.expect_err("no pod, no log");
    assert!(why.contains("pod app-1 is gone"), "{why}");

    let text = kiln::plugin::render::status_report(
        &kiln::plugin::render::StatusReport {
            build: report.build,
            events: report.events,
            failed_log: None,
        },
        at(120),
    );
    assert!(text.contains("PodCreated happened"), "{text}");
}

#[tokio::test]
async fn status_of_a_missing_build_names_it_and_the_way_to_list() {
    let client = fake_api(Vec::new(), None).await;
    let error = api::status_report(&client, "default", "nope")
        .await
        .unwrap_err();
    assert!(
        matches!(error, PluginError::BuildNotFound { .. }),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "Build default/nope not found (list them with `kubectl kiln list -n default`)"
    );
}

#[tokio::test]
async fn cancel_sets_spec_cancel_on_a_running_build_and_leaves_a_finished_one_alone() {
    let client = fake_api(
        vec![
            json_of(Build::test("running").with_status(status(Phase::Running, 1, None))),
            json_of(Build::test("done").with_status(status(
                Phase::Succeeded,
                1,
                Some(AttemptResult::Succeeded),
            ))),
            json_of(Build::test("asked").cancel()),
            json_of(Build::test("new")),
        ],
        None,
    )
    .await;
    let builds: Api<Build> = Api::namespaced(client.clone(), "default");

    assert_eq!(
        api::cancel(&client, "default", "running").await.unwrap(),
        CancelRequest::Cancel
    );
    assert!(builds.get("running").await.unwrap().spec.cancel);
    // A Build that has not started yet is cancelled too.
    assert_eq!(
        api::cancel(&client, "default", "new").await.unwrap(),
        CancelRequest::Cancel
    );
    assert!(builds.get("new").await.unwrap().spec.cancel);

    let before = builds.get("done").await.unwrap();
    assert_eq!(
        api::cancel(&client, "default", "done").await.unwrap(),
        CancelRequest::Finished(Phase::Succeeded)
    );
    let after = builds.get("done").await.unwrap();
    assert_eq!(before.spec, after.spec, "a finished Build must not change");
    assert_eq!(
        before.metadata.resource_version,
        after.metadata.resource_version
    );

    assert_eq!(
        api::cancel(&client, "default", "asked").await.unwrap(),
        CancelRequest::AlreadyRequested
    );
}

#[tokio::test]
async fn rerun_sets_a_new_token_and_clears_a_cancel_request() {
    let cancelled = Build::test("app")
        .cancel()
        .rerun("1767225600000")
        .with_status(status(Phase::Cancelled, 1, Some(AttemptResult::Cancelled)));
    let client = fake_api(vec![json_of(cancelled)], None).await;
    let rerun = api::rerun(&client, "default", "app", at(0)).await.unwrap();
    // The clock says the same millisecond as the current token: the new one still differs.
    assert_eq!(rerun.token, "1767225600000-1");
    assert!(rerun.uncancelled);
    assert_eq!(rerun.was, Some(Phase::Cancelled));
    let build: Build = Api::namespaced(client.clone(), "default")
        .get("app")
        .await
        .unwrap();
    assert_eq!(build.rerun_token(), Some("1767225600000-1"));
    assert!(!build.spec.cancel);
    assert!(build.run_requested(), "the controller must see a new run");

    // A second rerun a second later gets another token.
    let again = api::rerun(&client, "default", "app", at(1)).await.unwrap();
    assert_eq!(again.token, "1767225601000");
    assert!(!again.uncancelled);
}

#[tokio::test]
async fn logs_explain_a_build_without_attempts_and_a_pod_that_is_gone() {
    let client = fake_api(
        vec![
            json_of(Build::test("fresh")),
            json_of(Build::test("app").with_status(status(
                Phase::Failed,
                2,
                Some(AttemptResult::Failed),
            ))),
        ],
        None,
    )
    .await;
    let request = LogRequest {
        attempt: None,
        follow: false,
        container: "build".into(),
        tail: None,
    };
    let mut out = Vec::new();
    let error = api::logs(&client, "default", "fresh", &request, &mut out)
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "Build default/fresh has no attempt yet (not yet seen by the controller)"
    );
    let error = api::logs(
        &client,
        "default",
        "app",
        &LogRequest {
            attempt: Some(1),
            ..request
        },
        &mut out,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&error, PluginError::PodGone { pod, attempt: 1 } if pod == "app-1"),
        "{error:?}"
    );
    assert!(out.is_empty());
}

#[tokio::test]
async fn logs_of_a_gone_pod_point_at_the_stored_log_of_its_attempt() {
    let mut status = status(Phase::Failed, 2, Some(AttemptResult::Failed));
    let log = kiln::crd::StoredLog {
        repository: "default/kiln_logs".into(),
        tag: "build-uid-app-1".into(),
        digest: format!("sha256:{}", "a".repeat(64)),
        size: 42,
        truncated_bytes: 0,
    };
    status.attempts[0].log = Some(log.clone());
    let client = fake_api(vec![json_of(Build::test("app").with_status(status))], None).await;
    let request = |attempt, container: &str| LogRequest {
        attempt: Some(attempt),
        follow: false,
        container: container.into(),
        tail: None,
    };
    let mut out = Vec::new();
    let error = api::logs(&client, "default", "app", &request(1, "build"), &mut out)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, PluginError::LogStored { pod, attempt: 1, log: l } if pod == "app-1" && *l == log),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "pod app-1 of attempt 1 is gone; its log is kept in Kiln's cache as default/kiln_logs:build-uid-app-1"
    );
    // The fetch container's log is not the one kept; attempt 2 kept none.
    for (attempt, container) in [(1, "fetch-context"), (2, "build")] {
        let error = api::logs(
            &client,
            "default",
            "app",
            &request(attempt, container),
            &mut out,
        )
        .await
        .unwrap_err();
        assert!(matches!(error, PluginError::PodGone { .. }), "{error:?}");
    }
    assert!(out.is_empty());
}

/// A native Build of two platforms on its second attempt, which failed: linux/amd64
/// pushed, linux/arm64 failed in its retried pod (try 2). Attempt 1 was native too.
fn native_failed() -> Build {
    let mut status = status(Phase::Failed, 2, Some(AttemptResult::Failed));
    status.attempts[0].pod_name = "app-1-index".into();
    status.attempts[1].pod_name = "app-2-index".into();
    let platform = |name: &str, phase, pod: &str| PlatformStatus {
        platform: name.into(),
        attempt: 2,
        phase,
        pod_name: pod.into(),
        pod_uid: Some(format!("pod-{pod}")),
        retries: 0,
        start_time: Some(Time(at(0))),
        completion_time: Some(Time(at(60))),
        reason: None,
        message: None,
        digest: None,
    };
    status.platforms = vec![
        platform("linux/amd64", Phase::Succeeded, "app-2-linux-amd64"),
        PlatformStatus {
            retries: 1,
            ..platform("linux/arm64", Phase::Failed, "app-2-linux-arm64-2")
        },
    ];
    status.platform_progress = Some("1/2".into());
    Build::test("app")
        .platform("linux/amd64")
        .platform("linux/arm64")
        .with_status(status)
}

#[tokio::test]
async fn logs_of_a_native_build_read_the_pod_of_the_platform_asked_for() {
    let build = native_failed();
    let pod = |fixture: PodFixture| serde_json::to_value(fixture.pod).unwrap();
    let client = fake_api(
        vec![
            json_of(build.clone()),
            pod(PodFixture::for_platform(&build, 2, "linux/amd64", 1)
                .pushed("sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")),
            pod(PodFixture::for_platform(&build, 2, "linux/arm64", 1).evicted()),
            pod(PodFixture::for_platform(&build, 2, "linux/arm64", 2).exited(2, "make failed")),
        ],
        None,
    )
    .await;
    let request = LogRequest {
        attempt: None,
        follow: false,
        container: "build".into(),
        tail: None,
    };
    // The fake API answers a log read with the pod object itself: enough to see which pod
    // was read.
    let read = |platform: &'static str, request: LogRequest| {
        let client = client.clone();
        async move {
            let mut out = Vec::new();
            api::logs_of(
                &client,
                "default",
                "app",
                &request,
                Some(platform),
                &mut out,
            )
            .await
            .map(|()| String::from_utf8(out).unwrap())
        }
    };
    let text = read("linux/arm64", request.clone()).await.unwrap();
    assert!(
        text.contains(r#""name":"app-2-linux-arm64-2""#),
        "the retried pod, from the status: {text}"
    );
    let text = read("linux-amd64", request.clone()).await.unwrap();
    assert!(text.contains(r#""name":"app-2-linux-amd64""#), "{text}");

    // The index pod of a failed platform's attempt was never created.
    let error = read("index", request.clone()).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "pod app-2-index (index) of attempt 2 was never created: the attempt ended before every platform pushed (1 of 2 did)"
    );
    // The index pod of attempt 1 is gone.
    let error = read(
        "index",
        LogRequest {
            attempt: Some(1),
            ..request.clone()
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&error, PluginError::PodGone { pod, attempt: 1 } if pod == "app-1-index"),
        "{error:?}"
    );
    // An older attempt: the platform's first pod, by its deterministic name.
    let error = read(
        "linux/arm64",
        LogRequest {
            attempt: Some(1),
            ..request.clone()
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&error, PluginError::PodGone { pod, attempt: 1 } if pod == "app-1-linux-arm64"),
        "{error:?}"
    );
    let error = read("linux/s390x", request.clone()).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "Build default/app does not build platform linux/s390x in attempt 2: pass --platform linux/amd64, --platform linux/arm64, or --platform index"
    );
    let mut out = Vec::new();
    let error = api::logs(&client, "default", "app", &request, &mut out)
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "Build default/app builds 2 platforms natively (attempt 2): pass --platform linux/amd64, --platform linux/arm64, or --platform index"
    );
    assert!(out.is_empty());
}

#[tokio::test]
async fn logs_of_an_index_not_yet_created_say_what_it_waits_for() {
    let mut build = native_failed();
    let status = build.status.as_mut().unwrap();
    status.phase = Some(Phase::Running);
    let record = &mut status.attempts[1];
    record.result = None;
    record.reason = None;
    record.completion_time = None;
    status.platforms[1].phase = Phase::Running;
    status.platforms[1].completion_time = None;
    let client = fake_api(vec![json_of(build)], None).await;
    let mut out = Vec::new();
    let error = api::logs_of(
        &client,
        "default",
        "app",
        &LogRequest {
            attempt: None,
            follow: true,
            container: "build".into(),
            tail: None,
        },
        Some("index"),
        &mut out,
    )
    .await
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "pod app-2-index (index) of attempt 2 does not exist yet: the index pod is created once every platform has pushed (1 of 2 have)"
    );
}

#[tokio::test]
async fn status_of_a_failed_native_build_tails_the_failed_platforms_pod() {
    let build = native_failed();
    let pod = PodFixture::for_platform(&build, 2, "linux/arm64", 2).exited(2, "make failed");
    let client = fake_api(
        vec![json_of(build), serde_json::to_value(pod.pod).unwrap()],
        None,
    )
    .await;
    let report = api::status_report(&client, "default", "app").await.unwrap();
    let log = report.failed_log.expect("a failed attempt shows its log");
    assert_eq!(log.pod, "app-2-linux-arm64-2");
    assert_eq!(log.platform.as_deref(), Some("linux/arm64"));
    assert!(log.lines.is_ok(), "the pod exists: {:?}", log.lines);
}

#[tokio::test]
async fn the_admin_token_comes_from_its_secret_without_trailing_newline() {
    let client = fake_api(
        vec![json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "kiln-cache-admin-token", "namespace": "kiln-system"},
            "data": {"token": "czNjcjN0Cg=="},
        })],
        None,
    )
    .await;
    let target = kiln::plugin::forward::CacheTarget {
        namespace: "kiln-system".into(),
        service: "kiln-cache".into(),
        admin_secret: "kiln-cache-admin-token".into(),
        admin_secret_key: "token".into(),
    };
    assert_eq!(
        kiln::plugin::forward::admin_token(&client, &target)
            .await
            .unwrap(),
        "s3cr3t"
    );
    let missing = kiln::plugin::forward::CacheTarget {
        admin_secret: "other".into(),
        ..target.clone()
    };
    let error = kiln::plugin::forward::admin_token(&client, &missing)
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "reading the cache admin token from Secret kiln-system/other: it does not exist"
    );
    // No Service, no forward: the message names it.
    let error = kiln::plugin::forward::forward(&client, &target)
        .await
        .err()
        .unwrap();
    assert_eq!(
        error.to_string(),
        "forwarding a local port to Service kiln-system/kiln-cache: the Service does not exist"
    );
}

/// The binary on PATH as `kubectl-kiln`, as kubectl finds its plugins.
fn kubectl_kiln() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("kubectl-kiln");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kiln"), &link).unwrap();
    (dir, link)
}

#[test]
fn kubectl_kiln_help_lists_every_command_and_each_has_its_own_help() {
    let (_dir, plugin) = kubectl_kiln();
    let output = Command::new(&plugin).arg("--help").output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(
        help.contains("Usage: kubectl kiln [OPTIONS] <COMMAND>"),
        "{help}"
    );
    for command in ["list", "status", "logs", "cancel", "rerun", "cache"] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(command)),
            "{command} missing from\n{help}"
        );
    }
    for args in [
        &["list", "--help"][..],
        &["status", "--help"],
        &["logs", "--help"],
        &["cancel", "--help"],
        &["rerun", "--help"],
        &["cache", "du", "--help"],
    ] {
        let output = Command::new(&plugin).args(args).output().unwrap();
        assert!(output.status.success(), "{args:?}: {output:?}");
        let help = String::from_utf8(output.stdout).unwrap();
        assert!(help.contains("--namespace"), "{args:?}: {help}");
        assert!(help.contains("--context"), "{args:?}: {help}");
    }
    // The same commands under `kiln plugin`.
    let output = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["plugin", "logs", "--help"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(help.contains("--attempt"), "{help}");
    assert!(help.contains("--platform <PLATFORM>"), "{help}");
}

#[test]
fn kubectl_kiln_with_a_bad_kubeconfig_says_which_file_failed() {
    let (dir, plugin) = kubectl_kiln();
    let output = Command::new(&plugin)
        .args(["list", "--kubeconfig"])
        .arg(dir.path().join("missing.yaml"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.starts_with("error: reading the kubeconfig"),
        "{stderr}"
    );
    assert!(stderr.contains("missing.yaml"), "{stderr}");
}

/// `cache du --server URL --admin-token-file FILE` needs no cluster: it asks the admin API
/// with the token and prints the report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_du_asks_the_admin_api_with_the_admin_token() {
    use axum::http::{HeaderMap, StatusCode};
    use kiln::cacheapi::admin::{DuReport, RepositoryUsage, Usage};

    let report = DuReport {
        total_bytes: 4_096,
        reclaimable_bytes: 0,
        blobs: Usage {
            count: 2,
            bytes: 4_096,
        },
        manifests: 1,
        tags: 1,
        uploads: Usage::default(),
        leases: 0,
        repositories: vec![RepositoryUsage {
            name: "team-a/shared".parse().unwrap(),
            tags: 1,
            manifests: 1,
            bytes: 4_096,
            last_used: None,
            mirror: false,
        }],
    };
    let app = axum::Router::new().route(
        "/admin/v1/du",
        axum::routing::get(move |headers: HeaderMap| {
            let report = report.clone();
            async move {
                if headers.get("authorization").and_then(|v| v.to_str().ok())
                    == Some("Bearer s3cr3t")
                {
                    Ok(axum::Json(report))
                } else {
                    Err(StatusCode::UNAUTHORIZED)
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let (dir, plugin) = kubectl_kiln();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cr3t\n").unwrap();
    let run = |token: PathBuf| {
        let (plugin, url) = (plugin.clone(), url.clone());
        let nowhere = dir.path().join("no-kubeconfig");
        tokio::task::spawn_blocking(move || {
            Command::new(plugin)
                .env("KUBECONFIG", nowhere)
                .args(["cache", "du", "--server", &url, "--admin-token-file"])
                .arg(token)
                .output()
                .unwrap()
        })
    };
    let output = run(token).await.unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.starts_with("Total:        4.10kB in 2 blobs"),
        "{text}"
    );
    assert!(text.contains("\nteam-a/shared   1 "), "{text}");

    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "guess").unwrap();
    let output = run(wrong).await.unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("answered 401"), "{stderr}");
}
