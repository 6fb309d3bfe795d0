//! Smoke tests of the real-API-server platform (I/O: real etcd, kube-apiserver and
//! kube-controller-manager processes): each part the controller scenarios will stand on —
//! start-up, clients, CRDs with CEL validation, RBAC with impersonation, garbage
//! collection, the audit log, the test kubelet, and clean shutdown — proven once here.
//!
//! Skipped, with the reason printed, when no Go toolchain can build the control plane;
//! `KILN_REQUIRE_ENVTEST=1` (set by `.ci/run`) turns that into a failure.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test stops where it fails

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::cluster;
use common::envtest::{self, ControlPlane};
use common::kubelet::{self, Gate, NODE_NAME, Script, TestKubelet, pod_phase, terminated};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, Pod, PodSpec, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kiln::oci::digest::Digest;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};

const WAIT: Duration = Duration::from_secs(60);

fn config_map(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([("key".to_owned(), "value".to_owned())])),
        ..ConfigMap::default()
    }
}

/// The ConfigMap `dependent`, owned by the object `owner` of the given kind and UID.
fn dependent_of(api_version: &str, kind: &str, uid: &str) -> ConfigMap {
    let mut dependent = config_map("dependent");
    dependent.metadata.owner_references = Some(vec![OwnerReference {
        api_version: api_version.to_owned(),
        kind: kind.to_owned(),
        name: "owner".to_owned(),
        uid: uid.to_owned(),
        ..OwnerReference::default()
    }]);
    dependent
}

#[tokio::test]
async fn control_plane_serves_namespaces_and_audits_writes() {
    let Some(cp) = envtest::shared().await else {
        return;
    };
    let client = cp.client();
    let version = client.apiserver_version().await.expect("GET /version");
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "36")
    );

    let ns = cluster::create_namespace(&client, "smoke-namespaces").await;
    let names: Vec<String> = Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("list namespaces")
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    for expected in ["default", "kube-system", ns.as_str()] {
        assert!(
            names.iter().any(|name| name == expected),
            "{expected} missing from {names:?}"
        );
    }

    let created = cp
        .audit_events()
        .into_iter()
        .find(|event| event.verb == "create" && event.resource == "namespaces" && event.name == ns);
    let created = created.unwrap_or_else(|| panic!("no audited create of namespace {ns}"));
    assert_eq!(
        (created.user.as_str(), created.code),
        ("kiln-envtest-admin", 201)
    );
    assert!(cp.kubeconfig().is_file());
    assert!(cp.server_url().starts_with("https://127.0.0.1:"));
}

const WIDGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.smoke.kiln.dev
spec:
  group: smoke.kiln.dev
  scope: Namespaced
  names: { plural: widgets, singular: widget, kind: Widget }
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [min, max]
            properties:
              min: { type: integer }
              max: { type: integer }
            x-kubernetes-validations:
            - rule: self.min <= self.max
              message: min must not exceed max
"#;

fn widget(name: &str, min: i64, max: i64) -> String {
    format!(
        "apiVersion: smoke.kiln.dev/v1\nkind: Widget\nmetadata:\n  name: {name}\n\
         spec:\n  min: {min}\n  max: {max}\n"
    )
}

#[tokio::test]
async fn crd_is_established_and_its_cel_rule_rejects_a_bad_object() {
    let Some(cp) = envtest::shared().await else {
        return;
    };
    let client = cp.client();
    cluster::apply_yaml(&client, WIDGET_CRD, None)
        .await
        .expect("apply the CRD");
    cluster::wait_for_crd_established(&client, "widgets.smoke.kiln.dev", WAIT).await;
    let ns = cluster::create_namespace(&client, "smoke-crd").await;

    let good = cluster::apply_yaml(&client, &widget("good", 1, 2), Some(&ns))
        .await
        .expect("a valid Widget is accepted");
    assert_eq!(good[0].metadata.namespace.as_deref(), Some(ns.as_str()));

    let err = cluster::apply_yaml(&client, &widget("bad", 3, 2), Some(&ns))
        .await
        .expect_err("the CEL rule must reject min > max");
    let status = err
        .api_status()
        .unwrap_or_else(|| panic!("not an API rejection: {err}"));
    assert_eq!(status.code, 422, "{status:?}");
    assert!(
        status.message.contains("min must not exceed max"),
        "{}",
        status.message
    );
}

#[tokio::test]
async fn rbac_denies_a_service_account_without_a_role_and_allows_it_with_one() {
    let Some(cp) = envtest::shared().await else {
        return;
    };
    let admin = cp.client();
    let ns = cluster::create_namespace(&admin, "smoke-rbac").await;
    let account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("reader".to_owned()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &account)
        .await
        .expect("create the ServiceAccount");
    let reader = Api::<ConfigMap>::namespaced(cp.client_as_service_account(&ns, "reader"), &ns);

    match reader.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("a ServiceAccount without a Role listed ConfigMaps: {other:?}"),
    }

    let rbac = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: read-config\n\
         rules:\n- apiGroups: ['']\n  resources: [configmaps]\n  verbs: [get, list]\n\
         ---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: reader\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: read-config}}\n\
         subjects:\n- {{kind: ServiceAccount, name: reader, namespace: {ns}}}\n"
    );
    cluster::apply_yaml(&admin, &rbac, Some(&ns))
        .await
        .expect("apply Role and RoleBinding");
    // The authorizer reads RBAC from informers: allow a moment for the binding to arrive.
    cluster::wait_until("the RoleBinding to take effect", WAIT, || async {
        reader.list(&ListParams::default()).await.ok()
    })
    .await;
    // Only what the Role grants: writing is still forbidden.
    match reader
        .create(&PostParams::default(), &config_map("written"))
        .await
    {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("a read-only ServiceAccount created a ConfigMap: {other:?}"),
    }
}

#[tokio::test]
async fn controller_manager_garbage_collects_dependents_of_a_deleted_owner() {
    let Some(cp) = envtest::shared().await else {
        return;
    };
    let client = cp.client();
    let ns = cluster::create_namespace(&client, "smoke-gc").await;
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &ns);
    let owner = config_maps
        .create(&PostParams::default(), &config_map("owner"))
        .await
        .expect("create the owner");
    let dependent = dependent_of("v1", "ConfigMap", &owner.uid().expect("a UID"));
    config_maps
        .create(&PostParams::default(), &dependent)
        .await
        .expect("create the dependent");

    config_maps
        .delete("owner", &DeleteParams::background())
        .await
        .expect("delete the owner");
    let deadline = tokio::time::Instant::now() + WAIT;
    while config_maps
        .get_opt("dependent")
        .await
        .expect("get dependent")
        .is_some()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the garbage collector left the dependent of a deleted owner for {WAIT:?}; \
             kube-controller-manager log:\n{}",
            cp.log_tail("kube-controller-manager", 30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The controller acted under its own ServiceAccount, as RBAC's bootstrap role allows.
    let deleted_by = cp
        .audit_events()
        .into_iter()
        .find(|event| event.verb == "delete" && event.namespace == ns && event.name == "dependent")
        .map(|event| event.user);
    assert_eq!(
        deleted_by.as_deref(),
        Some("system:serviceaccount:kube-system:generic-garbage-collector")
    );
}

fn build_pod(name: &str, labelled: bool) -> Pod {
    let labels = labelled
        .then(|| BTreeMap::from([("app.kubernetes.io/managed-by".to_owned(), "kiln".to_owned())]));
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels,
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "build".to_owned(),
                image: Some("registry.invalid/buildkit:test".to_owned()),
                ..Container::default()
            }],
            restart_policy: Some("Never".to_owned()),
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

#[tokio::test]
async fn test_kubelet_drives_labelled_pods_to_each_scripted_outcome() {
    let Some(cp) = envtest::shared().await else {
        return;
    };
    let client = cp.client();
    let ns = cluster::create_namespace(&client, "smoke-kubelet").await;
    let digest = Digest::of(b"an image manifest");
    let gate = Gate::new();
    let script = {
        let (digest, gate) = (digest, gate.clone());
        move |pod: &Pod| match pod.name_any().as_str() {
            _ if pod.labels().contains_key("smoke.kiln.dev/second") => Script::succeed(&digest),
            "fails" => Script::fail(
                2,
                "process \"make\" did not complete successfully: exit code: 2",
            ),
            "oom" => Script::oom_killed(),
            "evicted" => Script::evicted().running_for(Duration::from_millis(200)),
            "held" => Script::succeed(&digest).hold_until(&gate),
            "deadline" | "deleted" => Script::run_until_deadline(),
            _ => Script::succeed(&digest).pending_for(Duration::from_millis(200)),
        }
    };
    let kubelet = TestKubelet::start(client.clone(), &ns, script).await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let mut deadline_pod = build_pod("deadline", true);
    if let Some(spec) = deadline_pod.spec.as_mut() {
        spec.active_deadline_seconds = Some(2);
    }
    for pod in [
        build_pod("succeeds", true),
        build_pod("fails", true),
        build_pod("oom", true),
        build_pod("evicted", true),
        build_pod("held", true),
        build_pod("deleted", true),
        build_pod("unlabelled", false),
        deadline_pod,
    ] {
        pods.create(&PostParams::default(), &pod)
            .await
            .expect("create a pod");
    }
    let ended = |pod: &Pod| matches!(pod_phase(pod), "Succeeded" | "Failed");

    let succeeded = kubelet::wait_for_pod(&pods, "succeeds", "Succeeded", WAIT, ended).await;
    assert_eq!(pod_phase(&succeeded), "Succeeded");
    let spec = succeeded.spec.as_ref().expect("spec");
    assert_eq!(
        spec.node_name.as_deref(),
        Some(NODE_NAME),
        "bound through pods/binding"
    );
    let result = terminated(&succeeded).expect("terminated state");
    assert_eq!(
        (result.exit_code, result.reason.as_deref()),
        (0, Some("Completed"))
    );
    let metadata: serde_json::Value =
        serde_json::from_str(result.message.as_deref().expect("a termination message"))
            .expect("BuildKit metadata is JSON");
    assert_eq!(metadata["containerimage.digest"], digest.to_string());
    assert_eq!(result.message, Some(kubelet::buildkit_metadata(&digest)));

    let failed = kubelet::wait_for_pod(&pods, "fails", "Failed", WAIT, ended).await;
    assert_eq!(pod_phase(&failed), "Failed");
    let result = terminated(&failed).expect("terminated state");
    assert_eq!(
        (result.exit_code, result.reason.as_deref()),
        (2, Some("Error"))
    );
    assert!(
        result
            .message
            .as_deref()
            .is_some_and(|m| m.contains("exit code: 2"))
    );

    let oom = kubelet::wait_for_pod(&pods, "oom", "Failed", WAIT, ended).await;
    let result = terminated(&oom).expect("terminated state");
    assert_eq!(
        (result.exit_code, result.reason.as_deref()),
        (137, Some("OOMKilled"))
    );

    let evicted = kubelet::wait_for_pod(&pods, "evicted", "Failed", WAIT, ended).await;
    let status = evicted.status.as_ref().expect("status");
    assert_eq!(
        (pod_phase(&evicted), status.reason.as_deref()),
        ("Failed", Some("Evicted"))
    );

    let deadline = kubelet::wait_for_pod(&pods, "deadline", "Failed", WAIT, ended).await;
    let status = deadline.status.as_ref().expect("status");
    assert_eq!(status.reason.as_deref(), Some("DeadlineExceeded"));

    // Held Running until released, then on to its outcome.
    kubelet::wait_for_pod(&pods, "held", "Running", WAIT, |pod| {
        pod_phase(pod) == "Running"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let still = pods.get("held").await.expect("get held");
    assert_eq!(
        pod_phase(&still),
        "Running",
        "a held pod must not end before its release"
    );
    gate.release();
    let released = kubelet::wait_for_pod(&pods, "held", "Succeeded", WAIT, ended).await;
    assert_eq!(pod_phase(&released), "Succeeded");

    // A bound pod's graceful deletion is confirmed by the kubelet, not left Terminating.
    kubelet::wait_for_pod(&pods, "deleted", "Running", WAIT, |pod| {
        pod_phase(pod) == "Running"
    })
    .await;
    pods.delete("deleted", &DeleteParams::default())
        .await
        .expect("delete a running pod");
    cluster::wait_until("the deleted pod to be gone", WAIT, || async {
        pods.get_opt("deleted")
            .await
            .expect("get deleted")
            .is_none()
            .then_some(())
    })
    .await;
    // A pod re-created under the same name is a new pod, driven from the start.
    let mut second = build_pod("deleted", true);
    second
        .labels_mut()
        .insert("smoke.kiln.dev/second".to_owned(), "true".to_owned());
    pods.create(&PostParams::default(), &second)
        .await
        .expect("re-create the pod");
    let again = kubelet::wait_for_pod(&pods, "deleted", "Succeeded", WAIT, ended).await;
    assert_eq!(pod_phase(&again), "Succeeded");

    // Pods without the label are not the test kubelet's: never bound, never started.
    let unlabelled = pods.get("unlabelled").await.expect("get unlabelled");
    assert_eq!(pod_phase(&unlabelled), "Pending");
    assert_eq!(
        unlabelled
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref()),
        None
    );

    let statuses_written = cp
        .audit_events()
        .iter()
        .filter(|e| e.namespace == ns && e.resource == "pods" && e.subresource == "status")
        .count();
    assert!(
        statuses_written >= 3 * 6,
        "only {statuses_written} pod status writes audited"
    );
    assert_eq!(kubelet.errors(), Vec::<String>::new());
    assert_eq!(
        kubelet.pods().len(),
        8,
        "every labelled pod, once each: {:?}",
        kubelet.pods()
    );
}

fn process_alive(pid: u32) -> bool {
    // A zombie has exited; only its parent's wait() is missing.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
        !state.is_some_and(|rest| rest.starts_with('Z') || rest.starts_with('X'))
    })
}

#[tokio::test]
async fn private_control_plane_collects_dependents_of_preinstalled_kinds_and_stops_on_drop() {
    // CRDs installed before kube-controller-manager starts are watched by its garbage
    // collector from the start, as the shared control plane does with crds/.
    let Some(cp) = ControlPlane::start_with_crds(vec![WIDGET_CRD.to_owned()]).await else {
        return;
    };
    let pids = cp.pids();
    let dir = cp.dir().to_path_buf();
    assert_eq!(
        pids.len(),
        3,
        "etcd, kube-apiserver, kube-controller-manager"
    );
    assert!(pids.iter().all(|&pid| process_alive(pid)));

    let client = cp.client();
    let ns = cluster::create_namespace(&client, "private-gc").await;
    let owner = cluster::apply_yaml(&client, &widget("owner", 1, 2), Some(&ns))
        .await
        .expect("the preinstalled CRD serves Widgets");
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &ns);
    let dependent = dependent_of(
        "smoke.kiln.dev/v1",
        "Widget",
        &owner[0].uid().expect("a UID"),
    );
    config_maps
        .create(&PostParams::default(), &dependent)
        .await
        .expect("create the dependent");
    let (resource, _) = kube::discovery::pinned_kind(
        &client,
        &kube::core::GroupVersionKind::gvk("smoke.kiln.dev", "v1", "Widget"),
    )
    .await
    .expect("discover Widget");
    Api::<kube::api::DynamicObject>::namespaced_with(client.clone(), &ns, &resource)
        .delete("owner", &DeleteParams::background())
        .await
        .expect("delete the Widget");
    let began = std::time::Instant::now();
    cluster::wait_until("the Widget's dependent to be collected", WAIT, || async {
        config_maps
            .get_opt("dependent")
            .await
            .expect("get dependent")
            .is_none()
            .then_some(())
    })
    .await;
    println!("dependent of a Widget collected in {:?}", began.elapsed());

    drop(cp);
    let alive: Vec<u32> = pids.into_iter().filter(|&pid| process_alive(pid)).collect();
    assert_eq!(alive, Vec::<u32>::new(), "servers still running after drop");
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[tokio::test]
async fn a_server_exits_and_cleans_up_when_the_test_process_dies() {
    let test = envtest::current_test();
    let Some(binary) = envtest::available_binary(&test).await else {
        return;
    };
    // Stand-in for the test process: a `sleep` that we kill like a crashing test.
    let mut parent = Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("spawn sleep");
    let dir = tempfile::tempdir().expect("tempdir").keep();
    let ports: Vec<u16> = (0..2)
        .map(|_| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        })
        .collect();
    let ready = dir.join("ready");
    let mut etcd = Command::new(&binary)
        .arg("etcd")
        .arg(format!("--data-dir={}", dir.join("etcd").display()))
        .arg(format!("--listen-client-url=http://127.0.0.1:{}", ports[0]))
        .arg(format!("--listen-peer-url=http://127.0.0.1:{}", ports[1]))
        .arg(format!("--ready-file={}", ready.display()))
        .env("KILN_ENVTEST_PARENT_PID", parent.id().to_string())
        .env("KILN_ENVTEST_CLEANUP_DIR", &dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn etcd");
    cluster::wait_until("etcd to be ready", WAIT, || async {
        ready.exists().then_some(())
    })
    .await;
    assert!(
        etcd.try_wait().expect("try_wait").is_none(),
        "etcd runs while its parent lives"
    );

    parent.kill().expect("kill the stand-in parent");
    let deadline = tokio::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = etcd.try_wait().expect("try_wait") {
            break status;
        }
        if tokio::time::Instant::now() > deadline {
            let _ = etcd.kill();
            panic!("etcd outlived its parent by {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = parent.wait();
    assert_eq!(status.code(), Some(3), "the watchdog's exit code");
    assert!(!Path::new(&dir).exists(), "{} left behind", dir.display());
}
