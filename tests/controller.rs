//! The controller's reconcile, with its effects, against an in-memory API server
//! (kube-fake-client: resource versions, the status subresource, owner-reference
//! cascades). The test plays the kubelet and the clock, and asserts the state the API ends
//! with: objects, statuses and Events, never the requests that produced them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test stops where it fails

mod common;

use std::sync::Arc;

use common::fake_api::{Harness, NS};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kube_fake_client::interceptor;
use serde_json::json;

use kiln::controller::Config;
use kiln::controller::error::{ApplyError, ReconcileError};
use kiln::controller::fixtures::PodFixture;
use kiln::controller::labels;
use kiln::controller::podstate::is_live;
use kiln::crd::{AttemptResult, Build, ConcurrencyPolicy, Phase, Reason};

const DIGEST: &str = "sha256:4444444444444444444444444444444444444444444444444444444444444444";

fn phase_reason(build: &Build) -> (Option<Phase>, Option<Reason>) {
    let status = build.status.as_ref();
    (
        status.and_then(|s| s.phase),
        status.and_then(|s| s.reason()),
    )
}

fn message_of(build: &Build) -> String {
    build
        .status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default()
}

async fn phase_of(h: &Harness, name: &str) -> (Option<Phase>, Option<Reason>) {
    phase_reason(&h.build(name).await.expect("build exists"))
}

#[tokio::test]
async fn full_lifecycle_from_apply_to_success_to_deletion() {
    let mut h = Harness::new(vec![Build::test("app").without_finalizer()]).await;

    // First the finalizer, alone.
    h.reconcile("app").await.unwrap();
    let build = h.build("app").await.unwrap();
    assert_eq!(build.finalizers(), ["kiln.dev/cleanup"]);
    assert!(h.pods().await.is_empty());

    // Then status, then the pod of attempt 1.
    h.reconcile("app").await.unwrap();
    assert_eq!(
        phase_of(&h, "app").await,
        (Some(Phase::Pending), Some(Reason::PodCreated))
    );
    let pods = h.pods().await;
    assert_eq!(pods.len(), 1);
    let pod = &pods[0];
    assert_eq!(pod.name_any(), "app-1");
    let build = h.build("app").await.unwrap();
    assert_eq!(
        pod.labels(),
        &labels::attempt_labels("app", build.metadata.uid.as_deref().unwrap(), 1)
    );
    let owner = &pod.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("Build", Some(true))
    );
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    assert_eq!(spec.active_deadline_seconds, Some(3600));

    // The kubelet runs it.
    h.pod_becomes("app", 1, |p| p.running()).await;
    assert_eq!(
        phase_of(&h, "app").await,
        (Some(Phase::Running), Some(Reason::Running))
    );

    // It pushes.
    h.advance(120);
    h.pod_becomes("app", 1, |p| p.pushed(DIGEST)).await;
    let build = h.build("app").await.unwrap();
    let status = build.status.as_ref().unwrap();
    assert_eq!(status.phase, Some(Phase::Succeeded));
    assert_eq!(status.output.as_ref().unwrap().digest, DIGEST);
    assert_eq!(status.output.as_ref().unwrap().short_digest, "444444444444");
    assert_eq!(status.attempts.len(), 1);
    assert_eq!(status.attempts[0].result, Some(AttemptResult::Succeeded));
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Succeeded")
    );

    // The end has its Event; the steps inside the attempt are in status only.
    assert_eq!(h.event_reasons().await, ["Succeeded"]);

    // Nothing more to write: the status is not rewritten.
    let version = build.resource_version();
    h.reconcile("app").await.unwrap();
    assert_eq!(h.build("app").await.unwrap().resource_version(), version);

    // Deletion: the finalizer deletes the pod, then lets go; nothing is left.
    h.delete_and_finalize("app").await;
}

#[tokio::test]
async fn a_restart_mid_build_does_not_create_a_second_pod() {
    let mut h = Harness::new(vec![Build::test("app")]).await;
    h.settle("app").await;
    h.pod_becomes("app", 1, |p| p.running()).await;
    let uid = h.pods().await[0].metadata.uid.clone();

    for _ in 0..3 {
        h.restart();
        h.settle("app").await;
    }
    let pods = h.pods().await;
    assert_eq!(pods.len(), 1, "{:?}", h.pod_names().await);
    assert_eq!(pods[0].metadata.uid, uid, "the same pod, adopted");
    assert_eq!(phase_of(&h, "app").await.0, Some(Phase::Running));
    assert_eq!(h.build("app").await.unwrap().status.unwrap().attempt, 1);
}

#[tokio::test]
async fn a_crash_between_status_and_pod_creates_the_pod_once_after_restart() {
    // The first pod create fails (the controller dies there); the status already names
    // attempt 1.
    let failed_once = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = failed_once.clone();
    let funcs = interceptor::Funcs::new().create(move |ctx| {
        let is_pod = ctx.object["kind"] == "Pod";
        if is_pod && !flag.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(kube_fake_client::Error::Internal(
                "controller killed".into(),
            ));
        }
        Ok(None)
    });
    let mut h = Harness::with(
        vec![Build::test("app")],
        vec![],
        Config::default(),
        Some(funcs),
    )
    .await;
    let error = h.reconcile("app").await.unwrap_err();
    assert!(
        matches!(error, ReconcileError::Apply(ApplyError::CreatePod { .. })),
        "{error:?}"
    );
    assert_eq!(h.build("app").await.unwrap().status.unwrap().attempt, 1);
    assert!(h.pods().await.is_empty());

    h.restart();
    h.settle("app").await;
    assert_eq!(h.pod_names().await, ["app-1"]);
    assert_eq!(h.build("app").await.unwrap().status.unwrap().attempt, 1);
}

#[tokio::test]
async fn a_repeated_create_adopts_the_pod_of_this_build() {
    // A pod list that misses the pod the controller created (a status write that recorded
    // it was lost, and the list is stale): the repeated create is AlreadyExists, and the
    // pod is adopted, not duplicated.
    let h = Harness::new(vec![Build::test("app")]).await;
    h.settle("app").await;
    let mut build = h.build("app").await.unwrap();
    build.status.as_mut().unwrap().attempts[0].pod_uid = None;
    let mut objects = vec![serde_json::to_value(&build).unwrap()];
    objects.extend(
        h.pods()
            .await
            .into_iter()
            .map(|p| serde_json::to_value(p).unwrap()),
    );

    let creates = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = creates.clone();
    let funcs = interceptor::Funcs::new()
        .list(|ctx| {
            let own_pods = ctx
                .params
                .label_selector
                .as_deref()
                .is_some_and(|s| s.contains("kiln.dev/build-uid"));
            Ok(own_pods.then(Vec::new))
        })
        .create(move |ctx| {
            if ctx.object["kind"] == "Pod" {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            Ok(None)
        });
    let client = common::fake_api::fake_api(objects, Some(funcs)).await;
    // On the harness's clock: the attempt is still within its timeout.
    let ctx = std::sync::Arc::new(
        kiln::controller::Context::new(client.clone(), Config::default())
            .with_clock(h.clock.clone()),
    );
    let build = Api::<Build>::namespaced(client.clone(), NS)
        .get("app")
        .await
        .unwrap();
    kiln::controller::reconcile(std::sync::Arc::new(build), ctx)
        .await
        .expect("AlreadyExists on our own pod is adoption");
    assert_eq!(
        creates.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the create was repeated"
    );
    let pods = Api::<Pod>::namespaced(client, NS)
        .list(&Default::default())
        .await
        .unwrap();
    assert_eq!(pods.items.len(), 1, "and found the pod already there");
}

#[tokio::test]
async fn a_pod_of_another_build_object_with_the_attempts_name_is_never_adopted() {
    // A Build deleted and re-created under the same name: the old one's pod is still
    // there. The new Build must not take it over (the sweeper will remove it).
    let mut stale = PodFixture::new("app", 1).running().pod;
    stale
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(labels::BUILD_UID.into(), "old-uid".into());
    let h = Harness::with(
        vec![Build::test("app")],
        vec![serde_json::to_value(&stale).unwrap()],
        Config::default(),
        None,
    )
    .await;
    let error = h.reconcile("app").await.unwrap_err();
    assert!(
        matches!(&error, ReconcileError::Apply(ApplyError::PodNameTaken { owner_uid, .. }) if owner_uid.as_deref() == Some("old-uid")),
        "{error:?}"
    );
    assert_eq!(h.pods().await.len(), 1);
}

#[tokio::test]
async fn a_failing_build_fails_once_and_is_not_retried() {
    let h = Harness::new(vec![Build::test("app")]).await;
    h.settle("app").await;
    h.pod_becomes("app", 1, |p| {
        p.exited(
            1,
            "ERROR: process \"make\" did not complete successfully: exit code: 2",
        )
    })
    .await;
    let build = h.build("app").await.unwrap();
    assert_eq!(
        phase_reason(&build),
        (Some(Phase::Failed), Some(Reason::BuildFailed))
    );
    assert!(message_of(&build).contains("exit code: 2"));
    h.advance(3600);
    h.settle("app").await;
    assert_eq!(h.pod_names().await, ["app-1"], "no retry");
    let warnings: Vec<_> = h
        .events()
        .await
        .into_iter()
        .filter(|(t, _)| t == "Warning")
        .collect();
    assert_eq!(warnings, [("Warning".to_owned(), "BuildFailed".to_owned())]);
}

#[tokio::test]
async fn an_evicted_attempt_is_retried_with_backoff_and_then_succeeds() {
    let h = Harness::new(vec![Build::test("app")]).await;
    h.settle("app").await;
    let requeue = h.pod_becomes("app", 1, |p| p.evicted()).await;
    assert_eq!(
        phase_of(&h, "app").await,
        (Some(Phase::Pending), Some(Reason::PodEvicted))
    );
    // 10 s from the end of the failure's second (status times are whole seconds).
    assert_eq!(
        requeue,
        kube::runtime::controller::Action::requeue(std::time::Duration::from_secs(11))
    );
    assert_eq!(
        h.pod_names().await,
        ["app-1"],
        "no new pod before the backoff"
    );

    h.advance(11);
    h.settle("app").await;
    assert_eq!(h.pod_names().await, ["app-1", "app-2"]);
    h.pod_becomes("app", 2, |p| p.pushed(DIGEST)).await;
    let status = h.build("app").await.unwrap().status.unwrap();
    assert_eq!(status.phase, Some(Phase::Succeeded));
    assert_eq!((status.attempt, status.retries), (2, 1));
    assert_eq!(status.attempts[0].reason, Some(Reason::PodEvicted));
}

#[tokio::test]
async fn an_attempt_that_runs_too_long_times_out_and_its_pod_is_deleted() {
    let h = Harness::new(vec![Build::test("app").timeout("10m")]).await;
    h.settle("app").await;
    h.pod_becomes("app", 1, |p| p.running()).await;
    // The deadline counts from the end of the start's second.
    h.advance(601);
    h.settle("app").await;
    assert_eq!(
        phase_of(&h, "app").await,
        (Some(Phase::Failed), Some(Reason::TimedOut))
    );
    assert!(h.pods().await.is_empty(), "the pod is deleted");
}

#[tokio::test]
async fn cancel_deletes_the_pod_and_the_build_ends_cancelled() {
    let h = Harness::new(vec![Build::test("app")]).await;
    h.settle("app").await;
    h.pod_becomes("app", 1, |p| p.running()).await;
    h.patch_build("app", json!({"spec": {"cancel": true}}))
        .await;
    h.settle("app").await;
    assert_eq!(
        phase_of(&h, "app").await,
        (Some(Phase::Cancelled), Some(Reason::Cancelled))
    );
    assert!(h.pods().await.is_empty());
    let status = h.build("app").await.unwrap().status.unwrap();
    assert_eq!(status.attempts[0].result, Some(AttemptResult::Cancelled));
}

#[tokio::test]
async fn a_spec_change_supersedes_the_running_attempt_and_starts_a_new_one() {
    let h = Harness::new(vec![Build::test("app")]).await;
    h.settle("app").await;
    h.pod_becomes("app", 1, |p| p.running()).await;
    h.patch_build("app", json!({"spec": {"buildArgs": {"VERSION": "2"}}}))
        .await;
    h.settle("app").await;
    assert_eq!(
        h.pod_names().await,
        ["app-2"],
        "attempt 1's pod deleted, attempt 2's created"
    );
    let status = h.build("app").await.unwrap().status.unwrap();
    assert_eq!(status.attempts[0].reason, Some(Reason::Superseded));
    assert_eq!(
        status.attempts[1].generation,
        status.observed_generation.unwrap()
    );
    assert!(h.event_reasons().await.contains(&"Superseded".to_owned()));
}

#[tokio::test]
async fn a_rerun_annotation_starts_a_new_attempt_of_an_unchanged_spec() {
    // (The in-memory API bumps the generation on any update, so this also counts as a new
    // generation here; `decide`'s table tests cover the token on its own.)
    let h = Harness::new(vec![Build::test("app")]).await;
    h.settle("app").await;
    h.pod_becomes("app", 1, |p| p.pushed(DIGEST)).await;
    let mut annotated = h.build("app").await.unwrap().rerun("1");
    annotated.status = None;
    h.builds_api()
        .replace("app", &PostParams::default(), &annotated)
        .await
        .unwrap();
    h.settle("app").await;
    assert_eq!(h.pod_names().await, ["app-1", "app-2"]);
    let status = h.build("app").await.unwrap().status.unwrap();
    assert_eq!(status.rerun_token.as_deref(), Some("1"));
    assert_eq!(status.phase, Some(Phase::Pending));
}

#[tokio::test]
async fn builds_pushing_the_same_tag_queue_and_never_run_at_once() {
    let first = Build::test("first").output("registry.example.com/team/app:latest");
    let second = Build::test("second")
        .output("registry.example.com/team/app:latest")
        .created_at(kiln::crd::fixtures::at(5));
    let h = Harness::new(vec![first, second]).await;
    h.settle("first").await;
    h.settle("second").await;
    assert_eq!(h.pod_names().await, ["first-1"]);
    let second = h.build("second").await.unwrap();
    assert_eq!(
        phase_reason(&second),
        (Some(Phase::Pending), Some(Reason::Queued))
    );
    assert!(message_of(&second).contains("\"first\" (running)"));

    // While the first runs and even between its retries, the second waits.
    h.pod_becomes("first", 1, |p| p.evicted()).await;
    h.settle("second").await;
    assert!(h.pods().await.iter().all(|p| !is_live(p)));
    assert_eq!(phase_of(&h, "second").await.1, Some(Reason::Queued));

    h.advance(11);
    h.settle("first").await;
    h.settle("second").await;
    let live: Vec<String> = h
        .pods()
        .await
        .iter()
        .filter(|p| is_live(p))
        .map(|p| p.name_any())
        .collect();
    assert_eq!(live, ["first-2"]);

    h.pod_becomes("first", 2, |p| p.pushed(DIGEST)).await;
    h.settle("second").await;
    assert_eq!(h.pod_names().await, ["first-1", "first-2", "second-1"]);
    assert_eq!(phase_of(&h, "second").await.1, Some(Reason::PodCreated));
}

#[tokio::test]
async fn cancel_in_progress_lets_the_newest_build_of_a_group_win() {
    let old = Build::test("old")
        .group("deploy")
        .policy(ConcurrencyPolicy::CancelInProgress);
    let h = Harness::new(vec![old]).await;
    h.settle("old").await;
    h.pod_becomes("old", 1, |p| p.running()).await;

    // A newer Build of the group arrives: it waits for the old pod, the old one cancels.
    let new = Build::test("new")
        .group("deploy")
        .policy(ConcurrencyPolicy::CancelInProgress)
        .created_at(kiln::crd::fixtures::at(60));
    let mut new_obj = new.clone();
    new_obj.metadata.resource_version = None;
    h.builds_api()
        .create(&PostParams::default(), &new_obj)
        .await
        .unwrap();
    h.settle("new").await;
    assert_eq!(phase_of(&h, "new").await.1, Some(Reason::Queued));
    h.settle("old").await;
    assert_eq!(
        phase_of(&h, "old").await,
        (Some(Phase::Cancelled), Some(Reason::Superseded))
    );
    h.settle("new").await;
    assert_eq!(h.pod_names().await, ["new-1"]);
}

#[tokio::test]
async fn a_missing_push_secret_fails_the_build_without_a_pod_or_a_hot_loop() {
    let h = Harness::new(vec![Build::test("app").push_secret("regcred")]).await;
    let requeue = h.settle("app").await;
    let build = h.build("app").await.unwrap();
    assert_eq!(
        phase_reason(&build),
        (Some(Phase::Failed), Some(Reason::SecretNotFound))
    );
    assert!(message_of(&build).contains("spec.output.pushSecretRef"));
    assert!(h.pods().await.is_empty());
    assert_eq!(requeue, kube::runtime::controller::Action::await_change());
    assert_eq!(
        h.events().await,
        [("Warning".to_owned(), "SecretNotFound".to_owned())]
    );
}

/// The signing key Secret `cosign generate-key-pair k8s://…` writes.
async fn create_signing_secret(h: &Harness, name: &str) {
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NS},
        "type": "Opaque",
        "data": {"cosign.key": "a2V5", "cosign.password": "cGFzc3dvcmQ=", "cosign.pub": "cHVi"}
    }))
    .unwrap();
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(h.client.clone(), NS)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_signed_build_with_its_key_secret_builds_then_signs_in_one_pod() {
    let h = Harness::new(vec![
        Build::test("app").signed_with("image-signing"),
        Build::test("bad")
            .signed_with("image-signing")
            .output("registry.example.com/team/bad:v1"),
    ])
    .await;
    create_signing_secret(&h, "image-signing").await;
    h.settle("app").await;
    let pods = h.pods().await;
    let spec = pods[0].spec.clone().unwrap();
    let init = spec.init_containers.unwrap();
    assert_eq!(init.last().unwrap().name, "build");
    assert_eq!(spec.containers[0].name, "sign");
    assert_eq!(
        phase_of(&h, "app").await,
        (Some(Phase::Pending), Some(Reason::PodCreated))
    );
    h.pod_becomes("app", 1, |p| p.building_before_signing())
        .await;
    assert_eq!(
        phase_of(&h, "app").await,
        (Some(Phase::Running), Some(Reason::Running))
    );
    let metadata = format!("{{\"containerimage.digest\":\"{DIGEST}\"}}");
    h.pod_becomes("app", 1, |p| p.sign_exited(0, &metadata))
        .await;
    let build = h.build("app").await.unwrap();
    assert_eq!(
        phase_reason(&build),
        (Some(Phase::Succeeded), Some(Reason::Succeeded))
    );
    assert_eq!(build.status.unwrap().output.unwrap().digest, DIGEST);

    // A sign step that fails fails the attempt with its own reason, and is not retried.
    h.settle("bad").await;
    h.pod_becomes("bad", 1, |p| {
        p.sign_exited(1, "error: cannot push the signature: access denied (403)")
    })
    .await;
    let build = h.build("bad").await.unwrap();
    assert_eq!(
        phase_reason(&build),
        (Some(Phase::Failed), Some(Reason::SigningFailed))
    );
    assert!(
        message_of(&build).contains("signing it failed"),
        "{}",
        message_of(&build)
    );
    assert_eq!(h.pod_names().await, ["app-1", "bad-1"]);
}

#[tokio::test]
async fn an_inline_build_gets_its_config_map_and_deletion_removes_both() {
    let mut h = Harness::new(vec![
        Build::test("hello")
            .inline("FROM alpine:3.20\nCOPY greeting /\n")
            .inline_file("greeting", "hello\n"),
    ])
    .await;
    h.settle("hello").await;
    assert_eq!(h.pod_names().await, ["hello-1"]);
    assert_eq!(h.config_map_names().await, ["hello-1"]);
    let cm = Api::<ConfigMap>::namespaced(h.client.clone(), NS)
        .get("hello-1")
        .await
        .unwrap();
    assert_eq!(cm.data.unwrap()["file-0"], "hello\n");

    h.pod_becomes("hello", 1, |p| p.running()).await;
    h.delete_and_finalize("hello").await;
}

#[tokio::test]
async fn a_cache_service_adds_cache_flags_and_without_one_there_are_none() {
    let config = Config {
        cache_service: Some(
            kiln::controller::config::CacheService::parse("http://kiln-cache:5000").unwrap(),
        ),
        ..Config::default()
    };
    let h = Harness::with(vec![Build::test("app")], vec![], config, None).await;
    h.settle("app").await;
    let args = h.pods().await[0].spec.as_ref().unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    assert!(
        args.contains(
            &"--export-cache=type=registry,ref=kiln-cache:5000/default/app:buildcache,mode=max,ignore-error=true"
                .to_owned()
        )
    );
    assert!(args.contains(
        &"--import-cache=type=registry,ref=kiln-cache:5000/default/app:buildcache".to_owned()
    ));

    let h = Harness::new(vec![Build::test("app")]).await;
    h.settle("app").await;
    let args = h.pods().await[0].spec.as_ref().unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    assert!(!args.iter().any(|a| a.contains("cache")), "{args:?}");
}

#[tokio::test]
async fn the_full_lifecycle_leaves_one_pod_per_attempt() {
    // Several attempts, restarts and a spec change: each attempt's pod name appears once.
    let mut h = Harness::new(vec![Build::test("app").retries(3)]).await;
    h.settle("app").await;
    h.pod_becomes("app", 1, |p| p.unknown()).await;
    h.restart();
    h.advance(11);
    h.settle("app").await;
    h.pod_becomes("app", 2, |p| p.running()).await;
    h.restart();
    h.patch_build("app", json!({"spec": {"target": "prod"}}))
        .await;
    h.settle("app").await;
    h.restart();
    h.settle("app").await;
    // Attempt 1's pod (lost node) and attempt 2's (superseded) were deleted; 3 runs.
    assert_eq!(h.pod_names().await, ["app-3"]);
    let status = h.build("app").await.unwrap().status.unwrap();
    let attempts: Vec<u32> = status.attempts.iter().map(|a| a.attempt).collect();
    assert_eq!(attempts, [1, 2, 3]);
}

#[tokio::test]
async fn the_controller_fails_fast_with_the_fix_when_the_crd_is_missing() {
    let client = kube_fake_client::ClientBuilder::new()
        .build()
        .await
        .unwrap();
    let result = kiln::controller::run(client, Config::default(), std::future::pending()).await;
    let error = result.expect_err("no Build API");
    assert!(
        matches!(error, kiln::controller::error::RunError::CrdMissing(_)),
        "{error:?}"
    );
    assert!(error.to_string().contains("kiln crd | kubectl apply -f -"));
}

/// A watch cache of Builds that shows `builds` as they were, and never more: a cache that
/// lags behind every write. Its writer adds to it.
fn stale_store(
    builds: &[Build],
) -> (
    kube::runtime::reflector::Store<Build>,
    kube::runtime::reflector::store::Writer<Build>,
) {
    use kube::runtime::watcher::Event;
    let (reader, mut writer) = kube::runtime::reflector::store::<Build>();
    writer.apply_watcher_event(&Event::Init);
    for build in builds {
        writer.apply_watcher_event(&Event::InitApply(build.clone()));
    }
    writer.apply_watcher_event(&Event::InitDone);
    (reader, writer)
}

#[tokio::test]
async fn a_start_the_watch_cache_does_not_show_yet_still_holds_its_slot() {
    let mut config = Config::default();
    config.running_limits.cluster = Some(1);
    let (z, b) = (Build::test("z"), Build::test("b"));
    let mut h = Harness::with(vec![z.clone(), b.clone()], Vec::new(), config, None).await;
    // The controller decides from a cache that shows z new, and nothing else yet.
    let (cache, mut writer) = stale_store(std::slice::from_ref(&z));
    h.customize(move |ctx| ctx.with_peer_store(cache.clone()));
    h.settle("z").await;
    assert_eq!(h.pod_names().await, ["z-1"]);

    // b arrives in the cache, z still shows new there. By the queue's order b comes first
    // (same creation time, and "b" < "z"): only this process's reservation of z's start
    // keeps b from taking a second slot.
    writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(b));
    h.settle("b").await;
    assert_eq!(
        h.pod_names().await,
        ["z-1"],
        "the cluster limit of 1 was exceeded"
    );
    let (phase, reason) = phase_of(&h, "b").await;
    assert_eq!(
        (phase, reason),
        (Some(Phase::Pending), Some(Reason::Queued))
    );
    assert_eq!(
        message_of(&h.build("b").await.unwrap()),
        "1st in namespace default; cluster limit 1 reached"
    );

    // A restart forgets the reservation; what the API holds counts instead.
    let (fresh, _) = stale_store(&h.builds().await);
    h.customize(move |ctx| ctx.with_peer_store(fresh.clone()));
    h.settle("b").await;
    assert_eq!(h.pod_names().await, ["z-1"]);

    // z ends: its slot goes to b.
    h.pod_becomes("z", 1, |p| p.pushed(DIGEST)).await;
    h.settle("z").await;
    let (fresh, _) = stale_store(&h.builds().await);
    h.customize(move |ctx| ctx.with_peer_store(fresh.clone()));
    h.settle("b").await;
    assert_eq!(h.pod_names().await, ["b-1", "z-1"]);
}

#[tokio::test]
async fn a_finished_build_costs_no_api_request_once_the_pod_index_has_synced() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let reads = Arc::new(AtomicUsize::new(0));
    let (gets, lists) = (reads.clone(), reads.clone());
    let funcs = interceptor::Funcs::new()
        .get(move |_| {
            gets.fetch_add(1, Ordering::SeqCst);
            Ok(None)
        })
        .list(move |_| {
            lists.fetch_add(1, Ordering::SeqCst);
            Ok(None)
        });
    let mut h = Harness::with(
        vec![Build::test("app")],
        vec![],
        Config::default(),
        Some(funcs),
    )
    .await;
    h.settle("app").await;
    h.pod_becomes("app", 1, |p| p.pushed(DIGEST)).await;
    h.settle("app").await;
    assert_eq!(phase_of(&h, "app").await.0, Some(Phase::Succeeded));

    // The controller's watch has listed the pods: the index answers.
    let index = kiln::controller::pod_index::PodIndex::default();
    index.apply(&kube::runtime::watcher::Event::Init);
    for pod in h.pods().await {
        index.apply(&kube::runtime::watcher::Event::InitApply(pod));
    }
    index.apply(&kube::runtime::watcher::Event::InitDone);
    h.customize(move |mut ctx| {
        ctx.pod_index = index.clone();
        ctx
    });
    let cached = Arc::new(h.build("app").await.unwrap());
    let before = reads.load(Ordering::SeqCst);
    kiln::controller::reconcile(cached.clone(), h.ctx.clone())
        .await
        .unwrap();
    assert_eq!(
        reads.load(Ordering::SeqCst) - before,
        0,
        "a finished Build with nothing to do read the API"
    );

    // A rerun request is work: decided on a fresh read, and the new attempt starts.
    h.patch_build(
        "app",
        json!({"metadata": {"annotations": {"kiln.dev/rerun": "1"}}}),
    )
    .await;
    let requested = Arc::new(h.build("app").await.unwrap());
    let before = reads.load(Ordering::SeqCst);
    kiln::controller::reconcile(requested, h.ctx.clone())
        .await
        .unwrap();
    assert!(reads.load(Ordering::SeqCst) > before);
    assert_eq!(phase_of(&h, "app").await.1, Some(Reason::PodCreated));
}

#[tokio::test]
async fn the_platform_pods_of_a_native_attempt_share_its_config_map_and_token_secret() {
    let config = Config {
        cache_service: Some(
            kiln::controller::config::CacheService::parse("http://kiln-cache:5000").unwrap(),
        ),
        cache_token_key: Some(kiln::cacheapi::token::TokenKey::from_bytes(&[7; 32]).unwrap()),
        plain_http_registries: ["registry.local:5000".to_owned()].into(),
        ..Config::default()
    };
    let build = Build::test("app")
        .platform("linux/amd64")
        .platform("linux/arm64");
    let h = Harness::with(vec![build], vec![], config, None).await;
    h.settle("app").await;
    assert_eq!(
        h.pod_names().await,
        ["app-1-linux-amd64", "app-1-linux-arm64"]
    );
    // One of each for the attempt, named after it: the token Secret and the ConfigMap
    // (the BuildKit configuration) that every platform pod mounts.
    assert_eq!(h.secret_names().await, ["app-1"]);
    assert_eq!(h.config_map_names().await, ["app-1"]);
    for pod in h.pods().await {
        let volumes = pod.spec.unwrap().volumes.unwrap_or_default();
        let secrets: Vec<String> = volumes
            .iter()
            .filter_map(|v| v.secret.as_ref().and_then(|s| s.secret_name.clone()))
            .collect();
        let config_maps: Vec<String> = volumes
            .iter()
            .filter_map(|v| v.config_map.as_ref().map(|c| c.name.clone()))
            .collect();
        assert_eq!(
            (secrets, config_maps),
            (vec!["app-1".to_owned()], vec!["app-1".to_owned()])
        );
    }
    // A retried platform mounts the same objects, which still exist.
    let build = h.build("app").await.unwrap();
    h.kubelet(
        "app-1-linux-arm64",
        PodFixture::for_platform(&build, 1, "linux/arm64", 1).evicted(),
    )
    .await;
    h.settle("app").await;
    h.advance(60);
    h.settle("app").await;
    assert_eq!(
        h.pod_names().await,
        [
            "app-1-linux-amd64",
            "app-1-linux-arm64",
            "app-1-linux-arm64-2"
        ]
    );
    assert_eq!(h.secret_names().await, ["app-1"]);
    assert_eq!(h.config_map_names().await, ["app-1"]);
}
