//! The controller's lifecycle scenarios over a real kube-apiserver (I/O: the shared envtest
//! control plane, the real controller in-process with its real watches, and the test
//! kubelet playing the node).
//!
//! Each test is one scenario (`common::scene::Scene`) in a namespace of its own, with a
//! controller of its own that watches only that namespace (`Config::namespace`), so
//! scenarios run in parallel without seeing each other. A timeline records every Build
//! state and pod event from the start, so that invariants (never two live pods of one
//! Build, never two of one concurrency group) are checked at every step, not only when the
//! test looks. The controller acts as a user of its own, so the audit log tells its writes
//! from the test's.
//! The same scenario under the Helm chart's RBAC is in `tests/chart.rs`.
//!
//! Skipped, with the reason printed, when no Go toolchain can build the control plane;
//! `KILN_REQUIRE_ENVTEST=1` (set by `.ci/run`) turns that into a failure.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test stops where it fails

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::cluster;
use common::controller::{Identity, fast_config};
use common::envtest::{self, AuditEvent};
use common::kubelet::{Gate, Script};
use common::scene::{Scene, assert_in_order, build, count_writes, phase_reason, pod_name, report};
use k8s_openapi::api::core::v1::{Pod, ResourceQuota, Secret};
use kiln::controller::config::{CacheService, parse_mirror};
use kiln::controller::labels::build_uid_selector;
use kiln::controller::pod::attempt_objects;
use kiln::controller::validate::{SecretInfo, validate};
use kiln::crd::{AttemptResult, Build, CacheMode, CacheScope, Phase, Reason};
use kiln::oci::digest::Digest;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

/// kube-controller-manager's garbage collector, as the audit log names it.
const GARBAGE_COLLECTOR: &str = "system:serviceaccount:kube-system:generic-garbage-collector";
/// The most API writes the controller may make for one successful build, as measured:
/// the finalizer (1 patch), status (3 updates), the pod (1 create) and the Event of the
/// attempt's end (1 create: Succeeded). A new write per build shows here.
const MAX_WRITES_PER_BUILD: usize = 6;
/// The most status writes for one successful build, as measured: the attempt announced
/// before its pod exists, Running (with the pod's UID, so a replaced pod is never mistaken
/// for it), Succeeded.
const MAX_STATUS_WRITES_PER_BUILD: usize = 3;

/// Runs one successful build of `app` in `scene` and returns the controller's writes for
/// it, by `verb resource`.
async fn succeed_and_count_writes(scene: &Scene, digest: &Digest) -> BTreeMap<String, usize> {
    scene.create(build("app")).await;
    let done = scene
        .wait_for("app", Phase::Succeeded, Reason::Succeeded)
        .await;
    let status = done.status.as_ref().expect("status");
    let output = status.output.as_ref().expect("status.output");
    assert_eq!(output.digest, digest.to_string());
    assert_eq!(output.short_digest, digest.short());
    assert_eq!(output.image, "registry.example.com/team/app:latest");
    assert_eq!((status.attempt, status.retries), (1, 0));
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(
        status.attempts[0].digest.as_deref(),
        Some(&*digest.to_string())
    );
    let mut conditions: Vec<(&str, &str, &str)> = status
        .conditions
        .iter()
        .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
        .collect();
    conditions.sort();
    assert_eq!(
        conditions,
        [
            ("Ready", "True", "Succeeded"),
            ("Succeeded", "True", "Succeeded")
        ]
    );
    assert!(done.finalizers().iter().any(|f| f == "kiln.dev/cleanup"));
    assert_in_order(
        &scene.timeline.states("app"),
        &[
            "Pending/PodCreated",
            "Running/Running",
            "Succeeded/Succeeded",
        ],
    );
    assert_eq!(scene.kubelet.pods(), ["app-1"]);

    // The audit log is written as requests complete: let the last write land. Then the
    // controller is quiet: a finished build costs no more writes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let writes = count_writes(&scene.controller_writes());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        count_writes(&scene.controller_writes()),
        writes,
        "the controller kept writing after the build succeeded"
    );
    writes
}

#[tokio::test]
async fn a_build_succeeds_with_its_digest_in_status_and_few_api_writes() {
    let digest = Digest::of(b"the app image manifest");
    // Pending, then Running, for long enough that the controller sees each state.
    let Some(scene) = Scene::new("scenario-success", move |_| {
        Script::succeed(&digest)
            .pending_for(Duration::from_millis(500))
            .running_for(Duration::from_millis(500))
    })
    .await
    else {
        return;
    };
    let writes = succeed_and_count_writes(&scene, &digest).await;
    let total: usize = writes.values().sum();
    let status_writes = writes
        .iter()
        .filter(|(key, _)| key.ends_with("builds/status"))
        .map(|(_, n)| n)
        .sum::<usize>();
    report(&format!(
        "API writes by the controller for one successful build: {total} ({writes:?})"
    ));
    assert!(
        total <= MAX_WRITES_PER_BUILD,
        "{total} writes for one build (at most {MAX_WRITES_PER_BUILD}): {writes:?}"
    );
    assert!(
        status_writes <= MAX_STATUS_WRITES_PER_BUILD,
        "{status_writes} status writes (at most {MAX_STATUS_WRITES_PER_BUILD}): {writes:?}"
    );
    assert_eq!(writes.get("create pods"), Some(&1), "{writes:?}");
    scene.finish().await;
}

/// The permissions docs/operations.md lists for the controller, as a ClusterRole bound to the
/// ServiceAccount `kiln-controller` of `{namespace}`. The Helm chart's RBAC gets the same
/// test, with its rendered YAML in place of this.
const README_RBAC: &str = "\
apiVersion: v1
kind: ServiceAccount
metadata: { name: kiln-controller, namespace: '{namespace}' }
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: { name: kiln-controller-readme }
rules:
- { apiGroups: [kiln.dev], resources: [builds], verbs: [get, list, watch, patch] }
- { apiGroups: [kiln.dev], resources: [builds/status], verbs: [update] }
- { apiGroups: [''], resources: [pods, configmaps], verbs: [get, list, watch, create, delete] }
- { apiGroups: [''], resources: [secrets], verbs: [get, list, create, delete] }
- { apiGroups: [''], resources: [serviceaccounts], verbs: [get] }
- { apiGroups: [''], resources: [namespaces, nodes], verbs: [list, watch] }
- { apiGroups: [events.k8s.io], resources: [events], verbs: [create, patch] }
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: { name: kiln-controller-readme }
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: kiln-controller-readme }
subjects:
- { kind: ServiceAccount, name: kiln-controller, namespace: '{namespace}' }
";

#[tokio::test]
async fn a_build_succeeds_with_only_the_permissions_the_readme_lists() {
    let Some(cp) = envtest::shared().await else {
        return;
    };
    let admin = cp.client();
    let home = cluster::create_namespace(&admin, "kiln-system").await;
    let rbac = README_RBAC.replace("{namespace}", &home);
    let identity = Identity::service_account(cp, &admin, &rbac, &home, "kiln-controller").await;
    common::scene::a_build_succeeds_as(cp, "scenario-rbac", identity).await;
}

#[tokio::test]
async fn a_failing_build_fails_once_and_is_not_retried() {
    // A real build log: long, many lines, not all ASCII; the message and the Event keep
    // its end, within what the API server accepts (an Event note is at most 1 KiB).
    let log: String = (1..=60)
        .map(|n| format!("#{n} [build 3/4] RUN make ─ compiling module {n} of 60 …\n"))
        .chain([
            "ERROR: process \"/bin/sh -c make\" did not complete successfully: exit code: 1"
                .to_owned(),
        ])
        .collect();
    let Some(scene) = Scene::new("scenario-failure", move |_| Script::fail(1, log.clone())).await
    else {
        return;
    };
    scene.create(build("app").retries(3)).await;
    let failed = scene
        .wait_for("app", Phase::Failed, Reason::BuildFailed)
        .await;
    let status = failed.status.as_ref().expect("status");
    assert_eq!((status.attempt, status.retries), (1, 0));
    assert!(
        status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("exit code: 1")),
        "{:?}",
        status.message
    );
    assert_eq!(status.attempts[0].result, Some(AttemptResult::Failed));
    let warnings = scene
        .until("the BuildFailed Event", || async {
            let events = scene.events().list(&ListParams::default()).await.ok()?;
            let found: Vec<String> = events
                .items
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some("BuildFailed"))
                .filter_map(|e| e.note)
                .collect();
            (!found.is_empty()).then_some(found)
        })
        .await;
    assert!(warnings[0].contains("exit code: 1"), "{warnings:?}");
    // A retry, were one planned, would have started by now.
    tokio::time::sleep(scene.config.retry_backoff + Duration::from_secs(1)).await;
    assert_eq!(
        scene.kubelet.pods(),
        ["app-1"],
        "a failed build was retried"
    );
    let again = scene.builds().get("app").await.expect("get app");
    assert_eq!(
        phase_reason(&again),
        (Some(Phase::Failed), Some(Reason::BuildFailed))
    );
    scene.finish().await;
}

#[tokio::test]
async fn an_evicted_attempt_is_retried_after_the_backoff_and_then_succeeds() {
    let digest = Digest::of(b"built on the second try");
    let Some(scene) = Scene::new("scenario-retry", move |pod| match pod_name(pod).as_str() {
        "app-1" => Script::evicted().running_for(Duration::from_millis(300)),
        _ => Script::succeed(&digest),
    })
    .await
    else {
        return;
    };
    scene.create(build("app")).await;
    let done = scene
        .wait_for("app", Phase::Succeeded, Reason::Succeeded)
        .await;
    let status = done.status.as_ref().expect("status");
    assert_eq!((status.attempt, status.retries), (2, 1));
    let first = &status.attempts[0];
    assert_eq!(
        (first.result, first.reason),
        (Some(AttemptResult::Failed), Some(Reason::PodEvicted))
    );
    assert_eq!(
        status.output.as_ref().map(|o| o.digest.clone()),
        Some(digest.to_string())
    );
    assert_in_order(
        &scene.timeline.states("app"),
        &[
            "Running/Running attempt=1",
            "Pending/PodEvicted attempt=1",
            "Pending/PodCreated attempt=2",
            "Succeeded/Succeeded attempt=2",
        ],
    );
    // The second pod came no sooner than the backoff after the first one failed (as the
    // watches saw both; 100 ms for the two watches' delivery).
    let failed_at = scene
        .timeline
        .pod("app-1")
        .and_then(|life| life.ended)
        .expect("app-1 ended");
    let retried_at = scene.timeline.pod("app-2").expect("app-2 created").created;
    let gap = retried_at.duration_since(failed_at);
    assert!(
        gap + Duration::from_millis(100) >= scene.config.retry_backoff,
        "retried {gap:?} after the failure; the backoff is {:?}",
        scene.config.retry_backoff
    );
    assert_eq!(scene.kubelet.pods(), ["app-1", "app-2"]);
    scene.finish().await;
}

#[tokio::test]
async fn an_attempt_past_its_timeout_times_out_is_not_retried_and_leaves_no_live_pod() {
    let Some(scene) = Scene::with_config(
        "scenario-timeout",
        |config| config.max_timeout = Some(Duration::from_secs(2)),
        |_| Script::run_until_deadline(),
    )
    .await
    else {
        return;
    };
    scene.create(build("app").retries(3)).await;
    let pod = scene
        .until("pod app-1 to run", || async {
            scene
                .pods()
                .get_opt("app-1")
                .await
                .ok()
                .flatten()
                .filter(|pod| {
                    kiln::controller::podstate::classify(pod)
                        == kiln::controller::podstate::PodState::Running
                })
        })
        .await;
    assert_eq!(
        pod.spec.as_ref().and_then(|s| s.active_deadline_seconds),
        Some(2),
        "the controller's maximum timeout caps activeDeadlineSeconds"
    );
    let timed_out = scene.wait_for("app", Phase::Failed, Reason::TimedOut).await;
    let status = timed_out.status.as_ref().expect("status");
    assert_eq!((status.attempt, status.retries), (1, 0));
    scene
        .until("no live pod", || async {
            scene.live_pods().await.is_empty().then_some(())
        })
        .await;
    tokio::time::sleep(scene.config.retry_backoff + Duration::from_secs(1)).await;
    assert_eq!(
        scene.kubelet.pods(),
        ["app-1"],
        "a timed-out build was retried"
    );
    scene.finish().await;
}

#[tokio::test]
async fn cancel_stops_the_build_and_deletes_its_pod() {
    let Some(scene) = Scene::new("scenario-cancel", |_| Script::run_until_deadline()).await else {
        return;
    };
    scene.create(build("app")).await;
    scene.wait_for("app", Phase::Running, Reason::Running).await;
    scene.patch_spec("app", json!({ "cancel": true })).await;
    let cancelled = scene
        .wait_for("app", Phase::Cancelled, Reason::Cancelled)
        .await;
    let status = cancelled.status.as_ref().expect("status");
    assert_eq!(status.attempts[0].result, Some(AttemptResult::Cancelled));
    assert_eq!(status.observed_generation, Some(2));
    scene.wait_pod_gone("app-1").await;
    assert_eq!(scene.kubelet.pods(), ["app-1"]);
    scene.finish().await;
}

#[tokio::test]
async fn a_spec_change_supersedes_the_running_attempt_and_builds_the_new_spec() {
    let digest = Digest::of(b"generation 2");
    let Some(scene) = Scene::new("scenario-supersede", move |pod| {
        match pod_name(pod).as_str() {
            "app-1" => Script::run_until_deadline(),
            _ => Script::succeed(&digest),
        }
    })
    .await
    else {
        return;
    };
    scene.create(build("app")).await;
    scene.wait_for("app", Phase::Running, Reason::Running).await;
    let old_uid = scene.pods().get("app-1").await.expect("app-1").uid();
    scene
        .patch_spec("app", json!({ "buildArgs": { "VERSION": "2" } }))
        .await;
    let done = scene
        .wait("app", "Succeeded at attempt 2", |b| {
            phase_reason(b) == (Some(Phase::Succeeded), Some(Reason::Succeeded))
                && b.status.as_ref().is_some_and(|s| s.attempt == 2)
        })
        .await;
    let status = done.status.as_ref().expect("status");
    assert_eq!(status.observed_generation, Some(2));
    let first = &status.attempts[0];
    assert_eq!(
        (first.result, first.reason, first.generation),
        (Some(AttemptResult::Cancelled), Some(Reason::Superseded), 1)
    );
    assert_eq!(status.attempts[1].generation, 2);
    scene.wait_pod_gone("app-1").await;
    // The new pod started only after the old one stopped.
    let old = scene.timeline.pod("app-1").expect("app-1 seen");
    assert_eq!(Some(old.uid), old_uid);
    let new = scene.timeline.pod("app-2").expect("app-2 seen");
    assert!(
        old.ended.or(old.gone).is_some_and(|end| end <= new.created),
        "app-2 was created while app-1 still ran"
    );
    scene.finish().await;
}

#[tokio::test]
async fn a_concurrency_group_runs_one_build_at_a_time_in_creation_order() {
    let gate = Gate::new();
    let digest = Digest::of(b"release");
    let script = {
        let gate = gate.clone();
        move |pod: &Pod| match pod_name(pod).as_str() {
            "first-1" => Script::succeed(&digest).hold_until(&gate),
            _ => Script::succeed(&digest).running_for(Duration::from_millis(300)),
        }
    };
    let Some(scene) = Scene::new("scenario-queue", script).await else {
        return;
    };
    // The same output image: one concurrency group.
    let image = "registry.example.com/team/release:latest";
    scene.create(build("first").output(image)).await;
    scene
        .wait_for("first", Phase::Running, Reason::Running)
        .await;
    scene.create(build("second").output(image)).await;
    let queued = scene
        .wait_for("second", Phase::Pending, Reason::Queued)
        .await;
    let message = queued
        .status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains("\"first\"") && message.contains(image),
        "the queued Build names its holder and group: {message:?}"
    );
    // Queued stays queued while the holder runs (well past a queue re-check).
    tokio::time::sleep(scene.config.queue_recheck + Duration::from_millis(500)).await;
    let still = scene.builds().get("second").await.expect("get second");
    assert_eq!(
        phase_reason(&still),
        (Some(Phase::Pending), Some(Reason::Queued))
    );
    assert_eq!(scene.kubelet.pods(), ["first-1"]);

    gate.release();
    scene
        .wait_for("first", Phase::Succeeded, Reason::Succeeded)
        .await;
    scene
        .wait_for("second", Phase::Succeeded, Reason::Succeeded)
        .await;
    let first = scene.timeline.pod("first-1").expect("first-1 seen");
    let second = scene.timeline.pod("second-1").expect("second-1 seen");
    assert!(
        first.ended.is_some_and(|end| end <= second.created),
        "second-1 was created while first-1 ran"
    );
    let peak = scene.timeline.peak_live_in_namespace();
    assert!(
        peak.len() <= 1,
        "two pods of one concurrency group were live at once: {peak:?}"
    );
    scene.finish().await;
}

#[tokio::test]
async fn deleting_a_build_deletes_its_pods_and_config_maps_before_the_build_goes() {
    let Some(scene) = Scene::new("scenario-delete", |_| Script::run_until_deadline()).await else {
        return;
    };
    // An inline source: its Dockerfile and files go into a ConfigMap of the attempt.
    let inline = build("site")
        .inline("FROM busybox:1.36\nCOPY index.html /www/\n")
        .inline_file("index.html", "<h1>hello</h1>\n");
    let created = scene.create(inline).await;
    let uid = created.uid().expect("a UID");
    scene
        .wait_for("site", Phase::Running, Reason::Running)
        .await;
    let selector = ListParams::default().labels(&build_uid_selector(&uid));
    let config_maps = scene
        .config_maps()
        .list(&selector)
        .await
        .expect("list ConfigMaps")
        .items;
    assert_eq!(
        config_maps
            .iter()
            .map(ResourceExt::name_any)
            .collect::<Vec<_>>(),
        ["site-1"]
    );

    scene.delete_build("site").await;
    let pods = scene.pods().list(&selector).await.expect("list pods").items;
    let config_maps = scene
        .config_maps()
        .list(&selector)
        .await
        .expect("list ConfigMaps")
        .items;
    assert!(pods.is_empty(), "pods left: {pods:?}");
    assert!(config_maps.is_empty(), "ConfigMaps left: {config_maps:?}");

    // The finalizer did it, in order: the controller deleted the pod and the ConfigMap,
    // the pod was gone (the kubelet confirmed its deletion), and only then did the
    // controller release the Build. The garbage collector had nothing left to do.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events: Vec<AuditEvent> = scene
        .cp
        .audit_events()
        .into_iter()
        .filter(|e| e.namespace == scene.ns && e.code < 400)
        .collect();
    let position = |what: &str, matches: &dyn Fn(&AuditEvent) -> bool| {
        events
            .iter()
            .rposition(matches)
            .unwrap_or_else(|| panic!("no audited {what}: {events:#?}"))
    };
    let user = scene.identity.user.clone();
    let controller_deleted_pod = position("pod delete by the controller", &|e| {
        e.verb == "delete" && e.resource == "pods" && e.user == user
    });
    let controller_deleted_config_map = position("ConfigMap delete by the controller", &|e| {
        e.verb == "delete" && e.resource == "configmaps" && e.user == user
    });
    let pod_gone = position("final pod delete", &|e| {
        e.verb == "delete" && e.resource == "pods"
    });
    let finalizer_removed = position("finalizer removal", &|e| {
        e.verb == "patch" && e.resource == "builds" && e.subresource.is_empty() && e.user == user
    });
    assert!(
        controller_deleted_pod <= pod_gone
            && pod_gone < finalizer_removed
            && controller_deleted_config_map < finalizer_removed,
        "out of order: pod delete {controller_deleted_pod}, pod gone {pod_gone}, \
         ConfigMap delete {controller_deleted_config_map}, finalizer {finalizer_removed}"
    );
    let collected: Vec<&AuditEvent> = events
        .iter()
        .filter(|e| e.user == GARBAGE_COLLECTOR && e.verb == "delete")
        .collect();
    assert!(
        collected.is_empty(),
        "left to the garbage collector: {collected:?}"
    );
    scene.finish().await;
}

#[tokio::test]
async fn a_build_naming_a_missing_service_account_fails_with_the_field_named_and_no_pod() {
    // The API server refuses a pod whose ServiceAccount does not exist (admission, 403):
    // the controller says so in the Build's status instead of retrying the create forever.
    let Some(scene) = Scene::new("scenario-account", |_| Script::succeed(&Digest::of(b"x"))).await
    else {
        return;
    };
    let mut named = build("app");
    named.spec.builder.service_account_name = Some("builder".to_owned());
    scene.create(named).await;
    let failed = scene
        .wait_for("app", Phase::Failed, Reason::InvalidSpec)
        .await;
    let message = failed
        .status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains("spec.builder.serviceAccountName") && message.contains("\"builder\""),
        "{message:?}"
    );
    assert_eq!(scene.kubelet.pods(), Vec::<String>::new(), "no pod");
    scene.finish().await;
}

#[tokio::test]
async fn a_pod_refused_by_a_resource_quota_is_explained_in_status_and_created_once_it_fits() {
    // A ResourceQuota that admits no pod: the API server refuses the create (403). The
    // status (reason PodCreateFailed) and a Warning Event carry the API server's message;
    // the create is retried and succeeds once the quota is lifted.
    let Some(scene) = Scene::new("scenario-quota", |_| {
        Script::succeed(&Digest::of(b"quota")).running_for(Duration::from_millis(200))
    })
    .await
    else {
        return;
    };
    // Quota admission enforces what the quota's status holds, which kube-controller-manager's
    // quota controller (not run here) would fill in: the test writes it.
    let quotas: Api<ResourceQuota> = Api::namespaced(scene.admin.clone(), &scene.ns);
    let quota: ResourceQuota = serde_json::from_value(json!({
        "metadata": {"name": "no-pods"},
        "spec": {"hard": {"pods": "0"}},
    }))
    .unwrap();
    let mut quota = quotas
        .create(&PostParams::default(), &quota)
        .await
        .expect("create the ResourceQuota");
    quota.status =
        serde_json::from_value(json!({"hard": {"pods": "0"}, "used": {"pods": "0"}})).unwrap();
    quotas
        .replace_status("no-pods", &PostParams::default(), &quota)
        .await
        .expect("write the ResourceQuota's status");
    scene.create(build("app")).await;
    let refused = scene
        .wait_for("app", Phase::Pending, Reason::PodCreateFailed)
        .await;
    let message = refused
        .status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains("refused pod app-1") && message.contains("exceeded quota"),
        "{message:?}"
    );
    let events = scene.events();
    let note = scene
        .until("a PodCreateFailed Warning Event", || async {
            events
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some(Reason::PodCreateFailed.as_str()))
                .filter(|e| e.type_.as_deref() == Some("Warning"))
                .and_then(|e| e.note)
        })
        .await;
    assert_eq!(note, message);
    assert_eq!(scene.live_pods().await, Vec::<String>::new(), "no pod yet");
    quotas
        .delete("no-pods", &DeleteParams::default())
        .await
        .expect("lift the quota");
    let done = scene
        .wait_for("app", Phase::Succeeded, Reason::Succeeded)
        .await;
    assert_eq!(
        done.status.as_ref().map(|s| s.attempt),
        Some(1),
        "one attempt"
    );
    scene
        .finish_expecting(
            |e| e.verb == "create" && e.resource == "pods" && e.code == 403,
            |_, step| step == "create_pod",
        )
        .await;
}

#[tokio::test]
async fn deleting_the_namespace_of_a_running_build_completes() {
    // A CI pipeline tears down its namespace while a build runs: the namespace controller
    // deletes the Build, whose finalizer must still let go, or the namespace hangs in
    // Terminating forever.
    let Some(scene) = Scene::new("scenario-namespace", |_| Script::run_until_deadline()).await
    else {
        return;
    };
    scene
        .create(
            build("site")
                .inline("FROM busybox:1.36\nCOPY index.html /www/\n")
                .inline_file("index.html", "<h1>hello</h1>\n"),
        )
        .await;
    scene
        .wait_for("site", Phase::Running, Reason::Running)
        .await;
    let namespaces = Api::<k8s_openapi::api::core::v1::Namespace>::all(scene.admin.clone());
    namespaces
        .delete(&scene.ns, &DeleteParams::default())
        .await
        .expect("delete the namespace");
    let began = tokio::time::Instant::now();
    scene
        .until("the namespace to be gone", || async {
            namespaces
                .get_opt(&scene.ns)
                .await
                .ok()
                .and_then(|ns| ns.is_none().then_some(()))
        })
        .await;
    report(&format!(
        "namespace of a running build deleted in {:.1}s",
        began.elapsed().as_secs_f64()
    ));
    // The namespace controller deletes the Build and its pods while the controller acts on
    // them: a terminating namespace refuses new objects (403; Events are best effort), and
    // a delete or a finalizer patch may find its object gone or changed (404, 409). Each
    // of these is a lost race the controller settles on its next read, not a refusal of
    // what it may do.
    scene
        .finish_tolerating(|e| {
            (e.verb == "create" && e.code == 403) || e.code == 404 || e.code == 409
        })
        .await;
}

#[tokio::test]
async fn a_restarted_controller_adopts_the_running_pod_and_completes_the_build() {
    let gate = Gate::new();
    let digest = Digest::of(b"survived a restart");
    let script = {
        let gate = gate.clone();
        move |_: &Pod| Script::succeed(&digest).hold_until(&gate)
    };
    let Some(mut scene) = Scene::new("scenario-restart", script).await else {
        return;
    };
    scene.create(build("app")).await;
    scene.wait_for("app", Phase::Running, Reason::Running).await;
    let pod_uid = scene.pods().get("app-1").await.expect("app-1").uid();

    scene.stop_controller().await;
    let reconciled_before = scene.outcomes.of("app").len();
    scene.start_controller();
    // The new controller has looked at the Build while its pod still runs.
    scene
        .until("the new controller to reconcile app", || async {
            (scene.outcomes.of("app").len() > reconciled_before).then_some(())
        })
        .await;
    let still = scene.builds().get("app").await.expect("get app");
    assert_eq!(
        phase_reason(&still),
        (Some(Phase::Running), Some(Reason::Running))
    );

    gate.release();
    let done = scene
        .wait_for("app", Phase::Succeeded, Reason::Succeeded)
        .await;
    let status = done.status.as_ref().expect("status");
    assert_eq!(status.attempt, 1);
    assert_eq!(status.attempts[0].pod_uid, pod_uid, "the same pod, adopted");
    assert_eq!(
        status.output.as_ref().map(|o| o.digest.clone()),
        Some(digest.to_string())
    );
    assert_eq!(scene.timeline.pod_names(), ["app-1"]);
    let creates = scene
        .controller_writes()
        .iter()
        .filter(|e| e.verb == "create" && e.resource == "pods")
        .count();
    assert_eq!(creates, 1, "one pod create across both controllers");
    scene.finish().await;
}

/// POSTs `object` to `path` as a dry run with strict field validation: everything the API
/// server checks (fields, values, admission), nothing stored.
async fn dry_run_strict(client: &Client, path: &str, object: &impl serde::Serialize) {
    let body = serde_json::to_vec(object).expect("JSON");
    let request = http::Request::post(format!("{path}?dryRun=All&fieldValidation=Strict"))
        .header("Content-Type", "application/json")
        .body(body)
        .expect("a request");
    if let Err(err) = client.request::<serde_json::Value>(request).await {
        panic!(
            "the API server rejected {path}: {err}\n{}",
            serde_yaml::to_string(object).unwrap_or_default()
        );
    }
}

#[tokio::test]
async fn the_pods_and_config_maps_of_every_kind_of_build_pass_strict_validation() {
    let Some(cp) = envtest::shared().await else {
        return;
    };
    let client = cp.client();
    let ns = cluster::create_namespace(&client, "scenario-pods").await;
    // The builder ServiceAccount one of the Builds names (admission checks it exists).
    cluster::apply_yaml(
        &client,
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: builder\n",
        Some(&ns),
    )
    .await
    .expect("create ServiceAccount builder");
    let mut config = fast_config(&ns);
    config.cache_service =
        Some(CacheService::parse("http://kiln-cache.kiln-system.svc:5000").unwrap());
    let (registry, mirror) =
        parse_mirror("docker.io=http://kiln-cache.kiln-system.svc:5000").unwrap();
    config.registry_mirrors.insert(registry, mirror);
    config
        .plain_http_registries
        .insert("registry.kiln-system.svc:5000".to_owned());
    let secrets = [
        (
            "regcred",
            "kubernetes.io/dockerconfigjson",
            ".dockerconfigjson",
        ),
        ("git-token", "kubernetes.io/basic-auth", "password"),
        ("git-ssh", "kubernetes.io/ssh-auth", "ssh-privatekey"),
    ]
    .into_iter()
    .map(|(name, type_, key)| {
        let info = SecretInfo {
            type_: type_.to_owned(),
            keys: [key.to_owned()].into(),
        };
        (name.to_owned(), info)
    })
    .collect();
    let mut scheduled = Build::test("scheduled")
        .git("git@github.com:team/app.git", None, None)
        .clone_secret("git-ssh");
    scheduled.spec.builder = serde_json::from_value(json!({
        "image": "registry.example.com/buildkit:v0.26.1-rootless",
        "serviceAccountName": "builder",
        "resources": { "requests": { "cpu": "2", "memory": "4Gi" }, "limits": { "memory": "8Gi" } },
        "nodeSelector": { "kubernetes.io/arch": "arm64" },
        "tolerations": [{ "key": "builds", "operator": "Exists", "effect": "NoSchedule" }],
    }))
    .expect("a builder spec");
    let builds = [
        Build::test("git")
            .git("https://git.example.com/team/app.git", Some("v1.2.0"), Some("services/api"))
            .clone_secret("git-token")
            .push_secret("regcred")
            .target("runtime")
            .build_arg("VERSION", "1.2.0")
            .platform("linux/arm64")
            .platform("linux/amd64")
            .cache(CacheMode::Max, CacheScope::Namespace),
        Build::test("inline")
            .inline("FROM alpine:3.20\nCOPY . /app\n")
            .inline_file("src/main.sh", "echo hello\n")
            .inline_file("README.md", "hello\n"),
        Build::test("oci")
            .oci("registry.example.com/team/context@sha256:2222222222222222222222222222222222222222222222222222222222222222")
            .push_secret("regcred")
            .cache(CacheMode::Min, CacheScope::Build),
        scheduled,
        // The longest name (63): the pod name is cut and hashed; a UID as the server makes.
        Build::test(&format!("{}end", "long-name-".repeat(6)))
            .with_uid("4f6b7c2e-0d3a-4b8e-9a51-7c2f1e0b9d44")
            .inline("FROM scratch\n")
            .timeout("24h"),
    ];
    for build in builds {
        let build = build.in_namespace(&ns);
        let validated = validate(&build, &secrets, &config)
            .unwrap_or_else(|problem| panic!("{}: {}", build.name_any(), problem.message));
        let objects = attempt_objects(&build, 7, &validated, &config);
        if let Some(config_map) = &objects.config_map {
            dry_run_strict(
                &client,
                &format!("/api/v1/namespaces/{ns}/configmaps"),
                config_map,
            )
            .await;
        }
        dry_run_strict(
            &client,
            &format!("/api/v1/namespaces/{ns}/pods"),
            &objects.pod,
        )
        .await;
    }
}

/// The resources of an attempt's objects, as the audit log names them.
const ATTEMPT_RESOURCES: [&str; 3] = ["configmaps", "pods", "secrets"];

/// `resource/<name>-1` for every resource of [`ATTEMPT_RESOURCES`]: the objects of the
/// first attempt of the Build `name`, as [`objects_of`] and [`deleted_by`] list them.
fn first_attempt_objects(name: &str) -> Vec<String> {
    ATTEMPT_RESOURCES
        .iter()
        .map(|resource| format!("{resource}/{name}-1"))
        .collect()
}

/// A Build with every kind of attempt object: its pod, the ConfigMap of its inline source
/// and (under [`Scene::with_cache_tokens`]) the Secret of its cache token.
fn build_with_every_object(name: &str, dockerfile: &str) -> Build {
    build(name)
        .inline(dockerfile)
        .cache(CacheMode::Max, CacheScope::Build)
}

fn secrets(scene: &Scene) -> Api<Secret> {
    Api::namespaced(scene.admin.clone(), &scene.ns)
}

/// The metadata of the attempt objects named `name`, by resource (`None`: no such object).
async fn attempt_metadata(scene: &Scene, name: &str) -> BTreeMap<&'static str, Option<ObjectMeta>> {
    let config_map = scene.config_maps().get_metadata_opt(name).await;
    let pod = scene.pods().get_metadata_opt(name).await;
    let secret = secrets(scene).get_metadata_opt(name).await;
    BTreeMap::from([
        ("configmaps", config_map.expect("get").map(|o| o.metadata)),
        ("pods", pod.expect("get").map(|o| o.metadata)),
        ("secrets", secret.expect("get").map(|o| o.metadata)),
    ])
}

/// `resource/name` of every object labelled with the Build UID `uid`, sorted.
async fn objects_of(scene: &Scene, uid: &str) -> Vec<String> {
    let selector = ListParams::default().labels(&build_uid_selector(uid));
    let config_maps = scene.config_maps().list_metadata(&selector).await;
    let pods = scene.pods().list_metadata(&selector).await;
    let secrets = secrets(scene).list_metadata(&selector).await;
    let name =
        |resource: &str, name: Option<String>| format!("{resource}/{}", name.unwrap_or_default());
    let mut found: Vec<String> = config_maps
        .expect("list")
        .items
        .into_iter()
        .map(|o| name("configmaps", o.metadata.name))
        .chain(
            pods.expect("list")
                .items
                .into_iter()
                .map(|o| name("pods", o.metadata.name)),
        )
        .chain(
            secrets
                .expect("list")
                .items
                .into_iter()
                .map(|o| name("secrets", o.metadata.name)),
        )
        .collect();
    found.sort();
    found
}

/// What a person does while the controller is down: takes Kiln's finalizer off the Build
/// `name` and deletes it with `propagationPolicy: Orphan`. kube-controller-manager's
/// garbage collector then strips the Build from its dependents' owner references instead
/// of deleting them, and lets the Build go: leftovers that only Kiln's label-based sweeper
/// can find. Checks that the attempt objects `<name>-1` were owned by the Build before
/// and are left, unowned, after.
async fn orphan_while_the_controller_is_down(scene: &Scene, name: &str, uid: &str) {
    let before = attempt_metadata(scene, &format!("{name}-1")).await;
    for (resource, meta) in &before {
        let meta = meta
            .as_ref()
            .unwrap_or_else(|| panic!("{resource}/{name}-1 missing"));
        assert!(
            meta.owner_references
                .iter()
                .flatten()
                .any(|owner| owner.uid == uid && owner.controller == Some(true)),
            "{resource}/{name}-1 is owned by the Build, so a default delete would cascade: {:?}",
            meta.owner_references
        );
    }
    scene
        .builds()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "finalizers": null } })),
        )
        .await
        .expect("remove the finalizer");
    scene
        .builds()
        .delete(name, &DeleteParams::orphan())
        .await
        .expect("delete the Build, orphaning its dependents");
    scene
        .until(&format!("Build {name} to be gone"), || async {
            let found = scene.builds().get_metadata_opt(name).await.ok()?;
            found
                .is_none_or(|b| b.uid() != Some(uid.to_owned()))
                .then_some(())
        })
        .await;
    // The garbage collector let the Build go only after it had orphaned every dependent.
    for (resource, meta) in attempt_metadata(scene, &format!("{name}-1")).await {
        let meta = meta.unwrap_or_else(|| panic!("{resource}/{name}-1 was deleted"));
        assert_eq!(
            meta.owner_references.unwrap_or_default(),
            Vec::new(),
            "{resource}/{name}-1 still has an owner"
        );
        assert!(
            meta.deletion_timestamp.is_none(),
            "{resource}/{name}-1 is being deleted"
        );
    }
}

/// `resource/name` of every object of the namespace that `user` deleted (successfully,
/// as the audit log says), sorted.
fn deleted_by(scene: &Scene, user: &str) -> Vec<String> {
    let mut deleted: Vec<String> = scene
        .cp
        .audit_events()
        .into_iter()
        .filter(|e| e.namespace == scene.ns && e.user == user)
        .filter(|e| e.verb == "delete" && e.code < 400)
        .map(|e| format!("{}/{}", e.resource, e.name))
        .collect();
    deleted.sort();
    deleted.dedup();
    deleted
}

#[tokio::test]
async fn the_orphans_of_a_build_deleted_while_the_controller_was_down_are_swept_at_start_up() {
    let Some(mut scene) = Scene::with_cache_tokens(
        "scenario-orphans",
        // The default interval (a minute) is past every wait: only the sweep at start-up
        // can collect the orphans in time.
        |config| assert!(config.sweep_interval > common::scene::WAIT),
        |_| Script::run_until_deadline(),
    )
    .await
    else {
        return;
    };
    let app = scene
        .create(build_with_every_object("app", "FROM alpine:3.20\n"))
        .await;
    let app_uid = app.uid().expect("a UID");
    let keeper = scene
        .create(build_with_every_object("keeper", "FROM alpine:3.20\n"))
        .await;
    let keeper_uid = keeper.uid().expect("a UID");
    // A pod that is none of Kiln's business (the test kubelet ignores it: it stays Pending).
    cluster::apply_yaml(
        &scene.admin,
        "apiVersion: v1\nkind: Pod\nmetadata: { name: bystander, labels: { kiln.dev/build: app } }\n\
         spec: { containers: [{ name: main, image: busybox:1.36 }] }\n",
        Some(&scene.ns),
    )
    .await
    .expect("create the bystander pod");
    scene.wait_for("app", Phase::Running, Reason::Running).await;
    scene
        .wait_for("keeper", Phase::Running, Reason::Running)
        .await;
    assert_eq!(
        objects_of(&scene, &app_uid).await,
        first_attempt_objects("app")
    );

    scene.stop_controller().await;
    orphan_while_the_controller_is_down(&scene, "app", &app_uid).await;
    // Nothing collects them while the controller is down (the garbage collector would
    // have done so by now, had they kept an owner).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        objects_of(&scene, &app_uid).await,
        first_attempt_objects("app")
    );

    scene.start_controller();
    scene
        .until("the orphans to be swept", || async {
            objects_of(&scene, &app_uid).await.is_empty().then_some(())
        })
        .await;
    // The controller deleted them, and nothing else; the garbage collector nothing at all.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        deleted_by(&scene, &scene.identity.user),
        first_attempt_objects("app")
    );
    assert_eq!(deleted_by(&scene, GARBAGE_COLLECTOR), Vec::<String>::new());
    // Untouched: the running Build's objects and the unlabelled pod.
    assert_eq!(
        objects_of(&scene, &keeper_uid).await,
        first_attempt_objects("keeper")
    );
    assert!(
        scene
            .pods()
            .get_opt("bystander")
            .await
            .expect("get")
            .is_some(),
        "the bystander pod was deleted"
    );
    let keeper = scene.builds().get("keeper").await.expect("get keeper");
    assert_eq!(
        phase_reason(&keeper),
        (Some(Phase::Running), Some(Reason::Running))
    );
    scene.finish().await;
}

#[tokio::test]
async fn the_orphans_of_a_build_re_created_while_the_controller_was_down_are_swept_and_the_new_build_runs()
 {
    let Some(mut scene) = Scene::with_cache_tokens(
        "scenario-recreated",
        |_| {},
        |_| Script::run_until_deadline(),
    )
    .await
    else {
        return;
    };
    let old = scene
        .create(build_with_every_object("app", "FROM alpine:3.20\n"))
        .await;
    let old_uid = old.uid().expect("a UID");
    scene.wait_for("app", Phase::Running, Reason::Running).await;

    scene.stop_controller().await;
    orphan_while_the_controller_is_down(&scene, "app", &old_uid).await;
    let new_dockerfile = "FROM alpine:3.21\n";
    let new = scene
        .create(build_with_every_object("app", new_dockerfile))
        .await;
    let new_uid = new.uid().expect("a UID");

    scene.start_controller();
    // The new Build's objects take the names of the old ones: it runs once those are swept.
    let running = scene.wait_for("app", Phase::Running, Reason::Running).await;
    assert_eq!(running.uid(), Some(new_uid.clone()));
    assert_eq!(objects_of(&scene, &old_uid).await, Vec::<String>::new());
    let mine = first_attempt_objects("app");
    assert_eq!(objects_of(&scene, &new_uid).await, mine);
    let source = scene
        .config_maps()
        .get("app-1")
        .await
        .expect("ConfigMap app-1");
    assert!(
        source
            .data
            .iter()
            .flatten()
            .any(|(_, text)| text == new_dockerfile),
        "the new Build's pod reads the new Build's source: {:?}",
        source.data
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        deleted_by(&scene, &scene.identity.user),
        mine,
        "the old objects"
    );
    assert_eq!(deleted_by(&scene, GARBAGE_COLLECTOR), Vec::<String>::new());
    let told = scene
        .events()
        .list(&ListParams::default())
        .await
        .expect("list Events")
        .items
        .into_iter()
        .any(|e| {
            e.reason.as_deref() == Some("GarbageCollected")
                && e.regarding.as_ref().and_then(|r| r.uid.as_deref()) == Some(&*new_uid)
        });
    assert!(told, "the new Build is told of the old objects' deletion");
    // Until the sweep freed the names, the new Build's creates met the old objects (409),
    // found them another Build's (`*_name_taken`), or found them gone by the time they
    // looked (the create step fails, to be retried). Any other refusal still fails here.
    scene
        .finish_expecting(
            |e| e.verb == "create" && e.code == 409 && ATTEMPT_RESOURCES.contains(&&*e.resource),
            |build, step| {
                build == "app" && (step.ends_with("_name_taken") || step.starts_with("create_"))
            },
        )
        .await;
}
