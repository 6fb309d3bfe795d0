//! Packaging: the Helm chart (`charts/kiln`) and the kustomize config (`config/`) lint and
//! render, and what they render holds what Kiln promises: every container runs restricted
//! with requests and limits; RBAC has no wildcards and grants what the controller needs;
//! every flag passed is one the binary accepts, with a value it parses; every file a flag
//! names is mounted; the build pods the controller labels may reach the cache; the CRDs are
//! exactly `crds/`; and no field is misspelt (each object survives a round trip through its
//! typed Kubernetes struct unchanged).
//!
//! And on a real API server (the envtest control plane): the kustomize overlays pass a
//! server-side dry run, the chart installs, and the controller, run with exactly the RBAC
//! the chart grants its ServiceAccount, elects itself on the chart's Lease and reconciles a
//! Build, while what it was not granted stays denied.
//!
//! Needs `helm` and `kubectl` (for `kubectl kustomize`): `scripts/install-test-deps.sh`
//! installs both and writes their paths to `target/kiln-tools.env` (`KILN_HELM`,
//! `KILN_KUBECTL`), which these tests also read when the variables are not set.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test stops where it fails

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use clap::CommandFactory;
use serde::Deserialize;
use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const CHART: &str = "charts/kiln";
const NAMESPACE: &str = "kiln-system";

// --- tools ---------------------------------------------------------------------------------

/// `$<var>`, else the path `scripts/install-test-deps.sh` wrote to target/kiln-tools.env;
/// panics with the install command when neither names an executable file.
fn tool(var: &str, name: &str) -> PathBuf {
    let from_env = std::env::var_os(var).map(PathBuf::from);
    let from_file = || {
        let text = std::fs::read_to_string(Path::new(ROOT).join("target/kiln-tools.env")).ok()?;
        text.lines().find_map(|line| {
            let value = line.strip_prefix(&format!("export {var}="))?;
            Some(PathBuf::from(value.trim_matches('"')))
        })
    };
    match from_env.or_else(from_file) {
        Some(path) if path.is_file() => path,
        found => panic!(
            "{name} not found ({var}={found:?}): run scripts/install-test-deps.sh, which installs it and writes {var} to target/kiln-tools.env"
        ),
    }
}

fn run(program: &Path, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .current_dir(ROOT)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
    assert!(
        output.status.success(),
        "{} {args:?} failed:\n{}{}",
        program.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("a YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

fn helm_template(values: &[&str]) -> Vec<Value> {
    let helm = tool("KILN_HELM", "helm");
    let mut args = vec![
        "template",
        "kiln",
        CHART,
        "--namespace",
        NAMESPACE,
        "--include-crds",
    ];
    args.extend_from_slice(values);
    documents(&run(&helm, &args))
}

fn kustomize(dir: &str) -> Vec<Value> {
    let kubectl = tool("KILN_KUBECTL", "kubectl");
    documents(&run(&kubectl, &["kustomize", dir]))
}

// --- object helpers ------------------------------------------------------------------------

fn kind(o: &Value) -> &str {
    o["kind"].as_str().unwrap_or_default()
}

fn name(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or_default()
}

fn id(o: &Value) -> String {
    format!("{}/{}", kind(o), name(o))
}

fn of_kind<'a>(objects: &'a [Value], k: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| kind(o) == k).collect()
}

fn one<'a>(objects: &'a [Value], k: &str, component: &str) -> &'a Value {
    let found: Vec<_> = of_kind(objects, k)
        .into_iter()
        .filter(|o| o["metadata"]["labels"]["app.kubernetes.io/component"] == component)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {k} of component {component}: {found:?}"
    );
    found[0]
}

fn named<'a>(objects: &'a [Value], k: &str, n: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| kind(o) == k && name(o) == n)
        .unwrap_or_else(|| panic!("no {k}/{n}"))
}

fn pod_spec(o: &Value) -> Option<&Value> {
    match kind(o) {
        "Deployment" | "StatefulSet" | "DaemonSet" | "Job" | "ReplicaSet" => {
            Some(&o["spec"]["template"]["spec"])
        }
        "Pod" => Some(&o["spec"]),
        _ => None,
    }
}

fn containers(spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|k| spec[k].as_array().into_iter().flatten())
        .collect()
}

fn args(container: &Value) -> Vec<String> {
    container["args"]
        .as_array()
        .expect("the container has args")
        .iter()
        .map(|a| a.as_str().expect("args are strings").to_owned())
        .collect()
}

fn flag_values<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
    args.iter()
        .filter_map(|a| a.strip_prefix(flag)?.strip_prefix('='))
        .collect()
}

// --- the checks both the chart and kustomize must pass ---------------------------------------

/// Every container: non-root, read-only root filesystem, no privilege escalation, every
/// capability dropped, the runtime's default seccomp profile, requests and limits of CPU
/// and memory.
fn assert_restricted(objects: &[Value]) {
    let mut seen = 0;
    for object in objects {
        let Some(spec) = pod_spec(object) else {
            continue;
        };
        let pod = &spec["securityContext"];
        for c in containers(spec) {
            let at = format!("{} container {}", id(object), c["name"]);
            let sc = &c["securityContext"];
            let either = |key: &str| {
                if sc[key].is_null() {
                    &pod[key]
                } else {
                    &sc[key]
                }
            };
            assert_eq!(either("runAsNonRoot"), true, "{at}: runAsNonRoot");
            assert_eq!(
                sc["readOnlyRootFilesystem"], true,
                "{at}: readOnlyRootFilesystem"
            );
            assert_eq!(
                sc["allowPrivilegeEscalation"], false,
                "{at}: allowPrivilegeEscalation"
            );
            assert_eq!(
                sc["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{at}: capabilities"
            );
            assert!(
                sc["capabilities"]["add"].is_null(),
                "{at}: adds capabilities"
            );
            assert_eq!(
                either("seccompProfile")["type"],
                "RuntimeDefault",
                "{at}: seccompProfile"
            );
            assert!(sc["privileged"] != true, "{at}: privileged");
            for (bound, resource) in [
                ("requests", "cpu"),
                ("requests", "memory"),
                ("limits", "cpu"),
                ("limits", "memory"),
            ] {
                assert!(
                    !c["resources"][bound][resource].is_null(),
                    "{at}: no {bound}.{resource}"
                );
            }
            seen += 1;
        }
        assert!(
            spec["hostNetwork"] != true && spec["hostPID"] != true && spec["hostIPC"] != true,
            "{}: host namespaces",
            id(object)
        );
    }
    assert!(seen >= 1, "no containers rendered");
}

/// What each Role or ClusterRole grants, as `(apiGroup, resource) -> verbs`, after checking
/// that no rule uses a wildcard, a non-resource URL or a verb that escalates.
fn rbac_grants(
    objects: &[Value],
) -> BTreeMap<String, BTreeMap<(String, String), BTreeSet<String>>> {
    let mut grants = BTreeMap::new();
    for role in objects
        .iter()
        .filter(|o| matches!(kind(o), "Role" | "ClusterRole"))
    {
        let mut granted = BTreeMap::new();
        for rule in role["rules"].as_array().expect("rules") {
            let list = |key: &str| -> Vec<String> {
                rule[key]
                    .as_array()
                    .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
                    .unwrap_or_default()
            };
            for key in ["apiGroups", "resources", "verbs", "resourceNames"] {
                assert!(
                    !list(key).iter().any(|v| v.contains('*')),
                    "{}: wildcard in {key}: {rule}",
                    id(role)
                );
            }
            assert!(
                rule["nonResourceURLs"].is_null(),
                "{}: nonResourceURLs",
                id(role)
            );
            for verb in list("verbs") {
                assert!(
                    !matches!(verb.as_str(), "escalate" | "bind" | "impersonate"),
                    "{}: verb {verb}",
                    id(role)
                );
            }
            for group in list("apiGroups") {
                for resource in list("resources") {
                    granted
                        .entry((group.clone(), resource))
                        .or_insert_with(BTreeSet::new)
                        .extend(list("verbs"));
                }
            }
        }
        grants.insert(id(role), granted);
    }
    grants
}

fn grant(group: &str, resource: &str, verbs: &[&str]) -> ((String, String), BTreeSet<String>) {
    (
        (group.to_owned(), resource.to_owned()),
        verbs.iter().map(|v| (*v).to_owned()).collect(),
    )
}

/// Everything the controller is granted, over all its roles, is exactly what it needs.
fn assert_controller_rbac(objects: &[Value], leader_election: bool) {
    let mut all = BTreeMap::new();
    for (_, granted) in rbac_grants(objects) {
        for (key, verbs) in granted {
            all.entry(key).or_insert_with(BTreeSet::new).extend(verbs);
        }
    }
    let mut expected: BTreeMap<_, _> = [
        grant("kiln.dev", "builds", &["get", "list", "watch", "patch"]),
        grant("kiln.dev", "builds/status", &["update"]),
        grant("", "pods", &["get", "list", "watch", "create", "delete"]),
        grant(
            "",
            "configmaps",
            &["get", "list", "watch", "create", "delete"],
        ),
        grant("", "secrets", &["get", "list", "create", "delete"]),
        grant("", "pods/log", &["get"]),
        grant("", "serviceaccounts", &["get"]),
        grant("", "namespaces", &["list", "watch"]),
        grant("", "nodes", &["list", "watch"]),
        grant("events.k8s.io", "events", &["create", "patch"]),
    ]
    .into_iter()
    .collect();
    if leader_election {
        expected.extend([grant(
            "coordination.k8s.io",
            "leases",
            &["get", "create", "patch"],
        )]);
    }
    assert_eq!(all, expected);
}

/// Flags (of either command) whose value is a file the container must have mounted.
const FILE_FLAGS: &[&str] = &[
    "--cache-admin-token-file",
    "--cache-token-key-file",
    "--root",
    "--mirror-credentials",
    "--token-key",
    "--admin-token-file",
];

/// The `kiln` subcommand at `path` (`["cache", "serve"]`), with the root's global flags.
fn command(path: &[&str]) -> clap::Command {
    let mut cmd = kiln::app::Cli::command();
    cmd.build();
    for part in path {
        cmd = cmd
            .find_subcommand(part)
            .unwrap_or_else(|| panic!("no `kiln {}`", path.join(" ")))
            .clone();
    }
    cmd
}

/// Every `--flag[=value]` the container passes is one `kiln <command>` accepts, and the
/// whole command line parses; every environment variable it sets is one the command reads.
fn assert_flags_accepted(container: &Value, path: &[&str]) {
    let args = args(container);
    assert_eq!(
        args[..path.len()],
        *path,
        "the container runs `kiln {}`",
        path.join(" ")
    );
    let cmd = command(path);
    let known: BTreeSet<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .collect();
    let mut accepted = vec!["kiln".to_owned()];
    accepted.extend(path.iter().map(|p| (*p).to_owned()));
    for arg in &args[path.len()..] {
        assert!(arg.starts_with("--"), "{arg:?} is not a --flag");
        let flag = arg.split_once('=').map_or(arg.as_str(), |(f, _)| f);
        assert!(
            known.contains(flag),
            "`kiln {}` does not accept {flag}; it accepts {known:?}",
            path.join(" ")
        );
        accepted.push(arg.clone());
    }
    if let Err(error) = <kiln::app::Cli as clap::Parser>::try_parse_from(&accepted) {
        panic!("`{}` is rejected: {error}", accepted.join(" "));
    }
    let envs: BTreeSet<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect();
    for env in container["env"].as_array().into_iter().flatten() {
        let var = env["name"].as_str().unwrap();
        // Read by glibc's allocator, not by kiln.
        if var == "MALLOC_ARENA_MAX" {
            assert_eq!(env["value"], "2");
            continue;
        }
        assert!(
            envs.contains(var),
            "`kiln {}` reads no {var}; it reads {envs:?}",
            path.join(" ")
        );
    }
}

/// Every flag whose value is a file path names a file inside a volume the container mounts
/// (and, for a Secret volume, a key that Secret holds when the render holds the Secret).
fn assert_files_mounted(objects: &[Value], object: &Value, container: &Value) {
    let spec = pod_spec(object).expect("a workload");
    let claims: Vec<&str> = object["spec"]["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
        .map(name)
        .collect();
    let mounts: Vec<(&str, &str)> = container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["mountPath"].as_str().unwrap(),
                m["name"].as_str().unwrap(),
            )
        })
        .collect();
    for flag in FILE_FLAGS {
        for path in flag_values(&args(container), flag) {
            let (dir, volume) = mounts
                .iter()
                .find(|(dir, _)| path.starts_with(&format!("{dir}/")) || path == *dir)
                .unwrap_or_else(|| panic!("{flag}={path} is in no mounted volume: {mounts:?}"));
            if claims.contains(volume) {
                continue;
            }
            let volume = spec["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|v| v["name"] == *volume)
                .unwrap_or_else(|| panic!("volume {volume} is not defined"));
            let Some(secret) = volume["secret"]["secretName"].as_str() else {
                continue;
            };
            let file = path.trim_start_matches(dir).trim_start_matches('/');
            let items = &volume["secret"]["items"];
            let key = items
                .as_array()
                .and_then(|items| items.iter().find(|i| i["path"] == file))
                .map(|i| i["key"].as_str().unwrap().to_owned())
                .unwrap_or_else(|| file.to_owned());
            if let Some(rendered) = of_kind(objects, "Secret")
                .into_iter()
                .find(|s| name(s) == secret)
            {
                assert!(
                    !rendered["data"][&key].is_null() || !rendered["stringData"][&key].is_null(),
                    "{flag}={path}: Secret {secret} has no key {key}"
                );
            }
        }
    }
}

/// The cache's NetworkPolicy lets in exactly the pods the controller labels as build pods,
/// from any namespace.
fn assert_build_pods_reach_the_cache(objects: &[Value]) {
    let policy = one(objects, "NetworkPolicy", "cache");
    let build_labels = kiln::controller::labels::attempt_labels("b", "u", 1);
    let admitted = policy["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|rule| rule["from"].as_array().into_iter().flatten())
        .any(|peer| {
            peer["namespaceSelector"] == serde_json::json!({})
                && peer["podSelector"]["matchLabels"]
                    .as_object()
                    .is_some_and(|wanted| {
                        !wanted.is_empty()
                            && wanted
                                .iter()
                                .all(|(k, v)| build_labels.get(k).map(String::as_str) == v.as_str())
                    })
        });
    assert!(admitted, "build pods cannot reach the cache: {policy}");
}

/// Each object survives a round trip through its k8s-openapi type unchanged, so no field is
/// misspelt or misplaced (serde drops what the type does not know).
fn assert_well_typed(objects: &[Value]) {
    use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
    use k8s_openapi::api::core::v1::{Namespace, Secret, Service, ServiceAccount};
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

    fn check<T: serde::de::DeserializeOwned + serde::Serialize>(object: &Value) {
        let typed: T = serde_json::from_value(object.clone())
            .unwrap_or_else(|e| panic!("{}: {e}", id(object)));
        let back = serde_json::to_value(typed).unwrap();
        if let Some(path) = first_difference(object, &back, String::new()) {
            panic!(
                "{}: field {path} is not part of the API (misspelt or misplaced?)",
                id(object)
            );
        }
    }
    for object in objects {
        match kind(object) {
            "Deployment" => check::<Deployment>(object),
            "StatefulSet" => check::<StatefulSet>(object),
            "Service" => check::<Service>(object),
            "ServiceAccount" => check::<ServiceAccount>(object),
            "Secret" => check::<Secret>(object),
            "Namespace" => check::<Namespace>(object),
            "NetworkPolicy" => check::<NetworkPolicy>(object),
            "PodDisruptionBudget" => check::<PodDisruptionBudget>(object),
            "ClusterRole" => check::<ClusterRole>(object),
            "ClusterRoleBinding" => check::<ClusterRoleBinding>(object),
            "Role" => check::<Role>(object),
            "RoleBinding" => check::<RoleBinding>(object),
            "CustomResourceDefinition" => check::<CustomResourceDefinition>(object),
            "ServiceMonitor" => {}
            other => panic!("{}: no typed check for kind {other}", id(object)),
        }
    }
}

/// The first path where `original` has something `back` lost or changed.
fn first_difference(original: &Value, back: &Value, path: String) -> Option<String> {
    match (original, back) {
        (Value::Object(a), Value::Object(b)) => a.iter().find_map(|(k, v)| match b.get(k) {
            Some(w) => first_difference(v, w, format!("{path}.{k}")),
            // An empty value the type omits is not a difference.
            None if v.is_null() || v == &serde_json::json!({}) || v == &serde_json::json!([]) => {
                None
            }
            None => Some(format!("{path}.{k}")),
        }),
        (Value::Array(a), Value::Array(b)) => {
            if a.len() != b.len() {
                return Some(path);
            }
            a.iter()
                .zip(b)
                .enumerate()
                .find_map(|(i, (v, w))| first_difference(v, w, format!("{path}[{i}]")))
        }
        // Quantities and int-or-strings come back as strings, bounds as floats.
        (Value::Number(n), Value::String(s)) if n.to_string() == *s => None,
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => None,
        (a, b) if a == b => None,
        _ => Some(path),
    }
}

/// The rendered CRDs are `kiln crd`'s (name and spec; packagings may add labels).
fn assert_crds_are_the_generated_ones(objects: &[Value]) {
    // Numbers compared as numbers: kustomize writes the schema's 50.0 as 50.
    fn normal(value: &Value) -> Value {
        match value {
            Value::Number(n) => serde_json::json!(n.as_f64()),
            Value::Array(a) => Value::Array(a.iter().map(normal).collect()),
            Value::Object(o) => {
                Value::Object(o.iter().map(|(k, v)| (k.clone(), normal(v))).collect())
            }
            other => other.clone(),
        }
    }
    let essence = |crd: &Value| (crd["metadata"]["name"].clone(), normal(&crd["spec"]));
    let expected: Vec<_> = documents(&kiln::crd::crds_yaml().unwrap())
        .iter()
        .map(essence)
        .collect();
    let rendered: Vec<_> = of_kind(objects, "CustomResourceDefinition")
        .into_iter()
        .map(essence)
        .collect();
    assert!(
        rendered == expected,
        "the rendered CRDs differ from `kiln crd`"
    );
}

/// Everything both packagings must hold.
fn assert_packaging(objects: &[Value], leader_election: bool) {
    assert_restricted(objects);
    assert_controller_rbac(objects, leader_election);
    assert_well_typed(objects);
    assert_crds_are_the_generated_ones(objects);
    for object in objects {
        let Some(spec) = pod_spec(object) else {
            continue;
        };
        for container in containers(spec) {
            let path: &[&str] = match args(container).first().map(String::as_str) {
                Some("controller") => &["controller"],
                Some("cache") => &["cache", "serve"],
                other => panic!("{}: unexpected command {other:?}", id(object)),
            };
            assert_flags_accepted(container, path);
            assert_files_mounted(objects, object, container);
        }
    }
}

// --- the Helm chart ------------------------------------------------------------------------

#[test]
fn helm_lint_passes_with_default_and_non_default_values() {
    let helm = tool("KILN_HELM", "helm");
    run(&helm, &["lint", "--strict", CHART]);
    run(
        &helm,
        &[
            "lint",
            "--strict",
            CHART,
            "-f",
            "tests/fixtures/chart-values.yaml",
        ],
    );
}

#[test]
fn the_chart_renders_every_object_kiln_needs() {
    let objects = helm_template(&[]);
    let mut kinds: Vec<String> = objects.iter().map(id).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ClusterRole/kiln-controller",
            "ClusterRole/kiln-controller-namespaces",
            "ClusterRoleBinding/kiln-controller",
            "ClusterRoleBinding/kiln-controller-namespaces",
            "CustomResourceDefinition/builds.kiln.dev",
            "Deployment/kiln-controller",
            "NetworkPolicy/kiln-cache",
            "NetworkPolicy/kiln-controller",
            "PodDisruptionBudget/kiln-controller",
            "Role/kiln-controller-leader-election",
            "RoleBinding/kiln-controller-leader-election",
            "Secret/kiln-cache-admin-token",
            "Secret/kiln-cache-token-key",
            "Service/kiln-cache",
            "Service/kiln-cache-headless",
            "Service/kiln-controller-metrics",
            "ServiceAccount/kiln-cache",
            "ServiceAccount/kiln-controller",
            "StatefulSet/kiln-cache",
        ]
    );
    assert_packaging(&objects, true);
    assert_build_pods_reach_the_cache(&objects);

    let controller = one(&objects, "Deployment", "controller");
    assert_eq!(controller["spec"]["replicas"], 2);
    let args = args(&controller["spec"]["template"]["spec"]["containers"][0]);
    assert!(args.contains(&"--leader-elect".to_owned()), "{args:?}");
    let cache = one(&objects, "StatefulSet", "cache");
    assert_eq!(cache["spec"]["replicas"], 1);
    assert_eq!(
        cache["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
        "50Gi"
    );
    assert!(cache["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"].is_null());
    assert_eq!(
        cache["spec"]["template"]["spec"]["automountServiceAccountToken"],
        false
    );
}

#[test]
fn the_index_pods_run_the_charts_own_image_and_platforms_map_to_node_labels() {
    let objects = helm_template(&[
        "--set",
        "image.tag=9.9.9",
        "--set-json",
        r#"controller.platformNodeSelectors={"linux/arm/v7":{"pool":"arm","example.com/cpu":"armv7"}}"#,
    ]);
    let controller = args(
        &one(&objects, "Deployment", "controller")["spec"]["template"]["spec"]["containers"][0],
    );
    assert_eq!(flag_values(&controller, "--index-image"), ["kiln:9.9.9"]);
    assert_eq!(
        flag_values(&controller, "--platform-node-selector"),
        ["linux/arm/v7=example.com/cpu=armv7,pool=arm"]
    );
    // The values schema refuses what is not a platform.
    let output = Command::new(tool("KILN_HELM", "helm"))
        .args(["template", "kiln", CHART, "--set-json"])
        .arg(r#"controller.platformNodeSelectors={"arm64":{"pool":"arm"}}"#)
        .current_dir(ROOT)
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "a platform without os was accepted"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("arm64"), "{stderr}");
}

#[test]
fn the_controller_is_told_the_cache_url_token_key_admin_token_and_mirror() {
    let objects = helm_template(&[]);
    let controller = args(
        &one(&objects, "Deployment", "controller")["spec"]["template"]["spec"]["containers"][0],
    );
    let cache =
        args(&one(&objects, "StatefulSet", "cache")["spec"]["template"]["spec"]["containers"][0]);
    let service = named(&objects, "Service", "kiln-cache");
    let url = format!(
        "http://{}.{NAMESPACE}.svc.cluster.local:{}",
        name(service),
        service["spec"]["ports"][0]["port"]
    );
    assert_eq!(flag_values(&controller, "--cache-service"), [url.as_str()]);
    assert_eq!(flag_values(&cache, "--external-url"), [url.as_str()]);
    assert_eq!(
        flag_values(&controller, "--cache-token-key-file").len(),
        1,
        "{controller:?}"
    );
    assert_eq!(
        flag_values(&controller, "--cache-admin-token-file").len(),
        1
    );
    // The same key and admin token files reach both, from the same Secrets.
    let secrets = |o: &Value| -> BTreeSet<String> {
        o["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v["secret"]["secretName"].as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(
        secrets(one(&objects, "Deployment", "controller")),
        secrets(one(&objects, "StatefulSet", "cache"))
    );
    // The mirror: the cache serves docker.io, and builders are pointed at it there.
    assert_eq!(
        flag_values(&cache, "--mirror"),
        ["docker.io=https://registry-1.docker.io"]
    );
    assert_eq!(
        flag_values(&controller, "--registry-mirror"),
        [format!("docker.io={url}/docker.io").as_str()]
    );
    // The listener and the Service agree on the port.
    assert_eq!(flag_values(&cache, "--listen"), ["0.0.0.0:5000"]);
}

#[test]
fn the_generated_secrets_hold_a_usable_token_key_and_admin_token() {
    let objects = helm_template(&[]);
    let data = |secret: &str, key: &str| -> Vec<u8> {
        let object = of_kind(&objects, "Secret")
            .into_iter()
            .find(|s| name(s) == secret)
            .unwrap_or_else(|| panic!("no Secret {secret}"));
        base64::engine::general_purpose::STANDARD
            .decode(object["data"][key].as_str().unwrap())
            .unwrap()
    };
    let key = data("kiln-cache-token-key", "key");
    assert!(kiln::cacheapi::token::TokenKey::from_bytes(&key).is_ok());
    let token = data("kiln-cache-admin-token", "token");
    assert!(token.len() >= 32, "{} bytes", token.len());
    assert!(token.iter().all(u8::is_ascii_alphanumeric));
    // Each render without a stored Secret generates new ones (upgrades keep them through
    // `lookup`, which only a live install can exercise).
    let again = helm_template(&[]);
    let key_again = of_kind(&again, "Secret")
        .into_iter()
        .find(|s| name(s) == "kiln-cache-token-key")
        .unwrap()["data"]["key"]
        .clone();
    assert_ne!(
        key_again.as_str().unwrap(),
        base64::engine::general_purpose::STANDARD.encode(&key)
    );
}

#[test]
fn non_default_values_existing_secrets_mirrors_storage_class_and_one_namespace() {
    let objects = helm_template(&["-f", "tests/fixtures/chart-values.yaml"]);
    assert_packaging(&objects, false);
    assert_build_pods_reach_the_cache(&objects);
    // Existing Secrets: none generated, the named ones mounted, their keys used.
    assert!(of_kind(&objects, "Secret").is_empty());
    let cache_object = one(&objects, "StatefulSet", "cache");
    let cache = args(&cache_object["spec"]["template"]["spec"]["containers"][0]);
    let controller_object = one(&objects, "Deployment", "controller");
    let controller = args(&controller_object["spec"]["template"]["spec"]["containers"][0]);
    assert_eq!(
        flag_values(&cache, "--token-key"),
        ["/var/run/kiln/token-key/hmac"]
    );
    assert_eq!(
        flag_values(&controller, "--cache-admin-token-file"),
        ["/var/run/kiln/admin-token/admin"]
    );
    let volumes = cache_object["spec"]["template"]["spec"]["volumes"].to_string();
    assert!(volumes.contains("\"platform-kiln-token-key\""), "{volumes}");
    assert!(volumes.contains("\"platform-kiln-admin\""), "{volumes}");
    // Two mirrors, with credentials.
    assert_eq!(
        flag_values(&cache, "--mirror"),
        [
            "docker.io=https://registry-1.docker.io",
            "ghcr.io=https://ghcr.io"
        ]
    );
    assert_eq!(flag_values(&controller, "--registry-mirror").len(), 2);
    assert_eq!(
        flag_values(&cache, "--mirror-credentials"),
        ["/var/run/kiln/mirror-credentials/config.json"]
    );
    // The storage class and size.
    let claim = &cache_object["spec"]["volumeClaimTemplates"][0]["spec"];
    assert_eq!(claim["storageClassName"], "fast-ssd");
    assert_eq!(claim["resources"]["requests"]["storage"], "200Gi");
    // Running-build limits.
    assert_eq!(flag_values(&controller, "--max-running-builds"), ["20"]);
    assert_eq!(
        flag_values(&controller, "--max-running-builds-per-namespace"),
        ["4"]
    );
    // The client's own request rate.
    assert_eq!(flag_values(&controller, "--kube-qps"), ["50"]);
    assert_eq!(flag_values(&controller, "--kube-burst"), ["100"]);
    // One namespace: the controller watches it and is bound there only.
    assert_eq!(flag_values(&controller, "--namespace"), ["builds"]);
    let binding = of_kind(&objects, "RoleBinding")
        .into_iter()
        .find(|b| b["roleRef"]["name"] == "platform-kiln-controller")
        .expect("a RoleBinding of the controller's role");
    assert_eq!(binding["metadata"]["namespace"], "builds");
    let cluster_bindings: Vec<_> = of_kind(&objects, "ClusterRoleBinding")
        .into_iter()
        .map(name)
        .collect();
    assert_eq!(cluster_bindings, ["platform-kiln-controller-namespaces"]);
    // No leader election: one replica, no lease role, no flag.
    assert!(!controller.contains(&"--leader-elect".to_owned()));
    assert!(of_kind(&objects, "Role").is_empty());
    // Metrics scrapers named in values get in.
    let policy = one(&objects, "NetworkPolicy", "controller");
    assert!(
        policy["spec"]["ingress"].to_string().contains("monitoring"),
        "{policy}"
    );
    // The image by digest.
    assert!(
        controller_object["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap()
            .starts_with("registry.example.com/kiln@sha256:")
    );
    assert_eq!(of_kind(&objects, "ServiceMonitor").len(), 2);
}

#[test]
fn without_the_cache_the_controller_gets_no_cache_flags() {
    let objects = helm_template(&["--set", "cache.enabled=false"]);
    assert_packaging(&objects, true);
    assert!(of_kind(&objects, "StatefulSet").is_empty());
    assert!(of_kind(&objects, "Secret").is_empty());
    let controller = args(
        &one(&objects, "Deployment", "controller")["spec"]["template"]["spec"]["containers"][0],
    );
    assert!(
        !controller
            .iter()
            .any(|a| a.starts_with("--cache") || a.starts_with("--registry-mirror")),
        "{controller:?}"
    );
}

#[test]
fn values_the_schema_rejects_fail_the_render_with_the_field_named() {
    let helm = tool("KILN_HELM", "helm");
    for (set, field) in [
        ("cache.gc.keepDuration=soon", "/cache/gc/keepDuration"),
        ("cache.gc.keepStorage=lots", "/cache/gc/keepStorage"),
        (
            "controller.retention.attemptHistory=0",
            "/controller/retention/attemptHistory",
        ),
        ("controller.replicaz=3", "/controller"),
        (
            "controller.maxRunningBuilds=0",
            "/controller/maxRunningBuilds",
        ),
        ("logFormat=xml", "/logFormat"),
        ("controller.extraArgs[0]=-v", "/controller/extraArgs/0"),
        // Two replicas without leader election would both reconcile.
        ("controller.leaderElection.enabled=false", "leader election"),
    ] {
        let output = Command::new(&helm)
            .args(["template", "kiln", CHART, "--set", set])
            .current_dir(ROOT)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{set} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(field), "{set}: {stderr}");
    }
}

// --- kustomize -------------------------------------------------------------------------------

#[test]
fn every_kustomize_overlay_renders_what_the_chart_promises() {
    for (overlay, replicas, leader_election) in [
        ("config/default", 1, false),
        ("config/overlays/dev", 1, false),
        ("config/overlays/production", 2, true),
    ] {
        let objects = kustomize(overlay);
        assert_packaging(&objects, leader_election);
        assert_build_pods_reach_the_cache(&objects);
        let controller = one(&objects, "Deployment", "controller");
        assert_eq!(controller["spec"]["replicas"], replicas, "{overlay}");
        for object in &objects {
            let ns = &object["metadata"]["namespace"];
            let cluster_scoped = matches!(
                kind(object),
                "Namespace" | "ClusterRole" | "ClusterRoleBinding" | "CustomResourceDefinition"
            );
            assert!(
                cluster_scoped || ns == NAMESPACE,
                "{overlay}: {} is in namespace {ns}",
                id(object)
            );
        }
        let args = args(&controller["spec"]["template"]["spec"]["containers"][0]);
        assert_eq!(
            args.contains(&"--leader-elect".to_owned()),
            leader_election,
            "{overlay}: {args:?}"
        );
    }
}

// --- on a real API server ------------------------------------------------------------------

/// The kustomize overlays pass a server-side dry run; the chart's objects are accepted; the
/// controller,
/// impersonating the chart's ServiceAccount, takes the chart's Lease and reconciles a Build
/// (watch, finalizer, status, ConfigMap, pod, Events), deletes it cleanly, is denied what
/// it was not granted, and releases the Lease when stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_real_api_server_the_chart_is_accepted_and_its_rbac_runs_the_controller() {
    use std::sync::Arc;
    use std::time::Duration;

    use common::{cluster, envtest};
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::{Node, Pod};
    use kiln::controller::leader_election::{self, Election};
    use kiln::controller::observer::Role;
    use kiln::controller::{Config, Context};
    use kiln::crd::Build;
    use kiln::metrics::ControllerMetrics;
    use kube::ResourceExt;
    use kube::api::{Api, DeleteParams, ListParams, PostParams};

    // A control plane of its own: this controller watches every namespace, and on the
    // shared one it would reconcile (and race) the other tests' Builds.
    let Some(plane) = envtest::ControlPlane::start_with_crds(envtest::repository_crds()).await
    else {
        return;
    };
    let cp = &plane;
    let kubeconfig = cp.kubeconfig().to_str().expect("a UTF-8 path").to_owned();
    let kubectl = tool("KILN_KUBECTL", "kubectl");
    let helm = tool("KILN_HELM", "helm");
    let admin = cp.client();
    // A dry run creates nothing, so the namespace its objects go to must exist.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(admin.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": NAMESPACE}})).unwrap(),
        )
        .await
        .expect("create the release namespace");
    for overlay in ["config/overlays/dev", "config/overlays/production"] {
        run(
            &kubectl,
            &[
                "apply",
                "--dry-run=server",
                "--kubeconfig",
                &kubeconfig,
                "-k",
                overlay,
            ],
        );
    }
    // The chart's objects are rendered for 1.36 and server-side applied, which rejects any
    // field the API does not know; `helm install` itself runs in the end-to-end suite
    // (scripts/e2e-local.sh).
    let rendered = run(
        &helm,
        &[
            "template",
            "kiln",
            CHART,
            "--namespace",
            NAMESPACE,
            "--kube-version",
            "1.36.0",
        ],
    );
    cluster::apply_yaml(&admin, &rendered, Some(NAMESPACE))
        .await
        .unwrap_or_else(|e| panic!("the API server rejects the chart: {e}"));
    // The controller, as the chart's ServiceAccount, with leader election on its Lease.
    let controller_sa = cp.client_as_service_account(NAMESPACE, "kiln-controller");
    let metrics = Arc::new(ControllerMetrics::new());
    let election = Election::new(NAMESPACE, "kiln-controller", "kiln-controller-test");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = {
        let (client, metrics) = (controller_sa.clone(), metrics.clone());
        tokio::spawn(async move {
            let context = Context::new(client.clone(), Config::default())
                .with_observer(metrics.clone())
                .with_gc_observer(metrics.clone());
            leader_election::run_while_leading(
                client,
                &election,
                metrics.as_ref(),
                async move {
                    let _ = stopped.await;
                },
                |stop| kiln::controller::run_with(context, stop),
            )
            .await
        })
    };

    let namespace = cluster::create_namespace(&admin, "chart-rbac").await;
    let builds: Api<Build> = Api::namespaced(admin.clone(), &namespace);
    let build = Build::test("rbac")
        .in_namespace(&namespace)
        .without_finalizer()
        .inline("FROM busybox:1.36\nRUN true\n");
    let mut build = build;
    build.metadata.uid = None;
    build.metadata.resource_version = None;
    build.metadata.creation_timestamp = None;
    builds
        .create(&PostParams::default(), &build)
        .await
        .expect("create a Build");
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &namespace);
    cluster::wait_until(
        "the controller to create the build pod",
        Duration::from_secs(120),
        || async { pods.get_opt("rbac-1").await.ok().flatten() },
    )
    .await;
    let reconciled = builds.get("rbac").await.unwrap();
    assert!(
        reconciled
            .finalizers()
            .iter()
            .any(|f| f == kiln::crd::build::FINALIZER),
        "no finalizer: {:?}",
        reconciled.metadata
    );
    assert!(reconciled.status.is_some(), "no status written");
    assert_eq!(metrics.readiness().role, Role::Leader);
    // The garbage collector's sweep (it runs at start) lists what it needs.
    cluster::wait_until(
        "a sweep to run to the end",
        Duration::from_secs(60),
        || async {
            let text = metrics.encode().unwrap();
            (!text.contains("kiln_sweeps_total{sweep=\"objects\"} 0")).then_some(())
        },
    )
    .await;
    let leases: Api<Lease> = Api::namespaced(admin.clone(), NAMESPACE);
    let holder = |lease: Lease| lease.spec.and_then(|s| s.holder_identity);
    assert_eq!(
        holder(leases.get("kiln-controller").await.unwrap()).as_deref(),
        Some("kiln-controller-test")
    );

    // Deleting the Build: the finalizer deletes its pod and lets go.
    builds
        .delete("rbac", &DeleteParams::default())
        .await
        .unwrap();
    cluster::wait_until(
        "the Build and its pod to be gone",
        Duration::from_secs(120),
        || async {
            let build_gone = builds.get_opt("rbac").await.ok().flatten().is_none();
            let pods_left = pods
                .list(&ListParams::default().labels(&kiln::controller::labels::managed_selector()))
                .await
                .map(|l| l.items.len())
                .unwrap_or(1);
            (build_gone && pods_left == 0).then_some(())
        },
    )
    .await;

    // What the chart does not grant stays denied.
    let denied = |result: Result<(), kube::Error>| matches!(result, Err(kube::Error::Api(status)) if status.code == 403);
    let sa_builds: Api<Build> = Api::namespaced(controller_sa.clone(), &namespace);
    assert!(denied(
        sa_builds
            .create(&PostParams::default(), &build)
            .await
            .map(|_| ())
    ));
    // Nodes: their labels are listed and watched, never read one by one or changed.
    let sa_nodes: Api<Node> = Api::all(controller_sa.clone());
    assert!(denied(sa_nodes.get("any").await.map(|_| ())));
    assert!(sa_nodes.list_metadata(&ListParams::default()).await.is_ok());
    let sa_leases: Api<Lease> = Api::namespaced(controller_sa.clone(), &namespace);
    assert!(denied(
        sa_leases.list(&ListParams::default()).await.map(|_| ())
    ));
    let cache_sa = cp.client_as_service_account(NAMESPACE, "kiln-cache");
    let cache_pods: Api<Pod> = Api::namespaced(cache_sa, NAMESPACE);
    assert!(denied(
        cache_pods.list(&ListParams::default()).await.map(|_| ())
    ));

    // Stopping releases the Lease.
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(60), running)
        .await
        .expect("the controller stops")
        .unwrap()
        .expect("a clean stop");
    assert_eq!(holder(leases.get("kiln-controller").await.unwrap()), None);
}

// --- the image -----------------------------------------------------------------------------

/// The Kiln image's dependency layer (`cargo fetch` before the sources are copied) gets
/// every file Cargo.toml names, or cargo cannot even read the manifest there; and the
/// build context keeps them (`Dockerfile.dockerignore`).
#[test]
fn the_image_fetches_dependencies_with_every_file_the_manifest_names() {
    let dockerfile =
        std::fs::read_to_string(Path::new(ROOT).join("config/image/Dockerfile")).unwrap();
    let before_fetch = &dockerfile[..dockerfile.find("cargo fetch").expect("a cargo fetch step")];
    let copied: Vec<&str> = before_fetch
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .flat_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words[..words.len().saturating_sub(1)].to_vec()
        })
        .collect();
    let manifest = std::fs::read_to_string(Path::new(ROOT).join("Cargo.toml")).unwrap();
    let mut named = vec!["Cargo.toml".to_owned(), "Cargo.lock".to_owned()];
    let mut section = String::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line.to_owned();
        } else if let Some(value) = line.strip_prefix("path = ") {
            named.push(value.trim_matches('"').to_owned());
        } else if let Some(value) = line.strip_prefix("name = ")
            && section == "[[bench]]"
        {
            named.push(format!("benches/{}.rs", value.trim_matches('"')));
        }
    }
    assert!(named.len() > 2, "no bench targets found in Cargo.toml");
    for file in &named {
        assert!(
            Path::new(ROOT).join(file).is_file(),
            "{file} does not exist"
        );
        assert!(
            copied
                .iter()
                .any(|c| file == c || file.starts_with(&format!("{}/", c.trim_end_matches('/')))),
            "Cargo.toml names {file}, but the Dockerfile copies only {copied:?} before `cargo fetch`"
        );
    }
    let ignored =
        std::fs::read_to_string(Path::new(ROOT).join("config/image/Dockerfile.dockerignore"))
            .unwrap();
    for pattern in ignored
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        for file in named.iter().map(String::as_str).chain(["src/main.rs"]) {
            assert!(
                !file.starts_with(pattern.trim_end_matches('/')),
                "the build context ignores {pattern}, which holds {file}"
            );
        }
    }
}

/// The lifecycle scenario of `tests/apiserver_controller.rs` with the controller bound to
/// the RBAC the chart renders, nothing more: a Build that reads a push Secret and a builder
/// ServiceAccount runs to success and through its finalizer, with no refused write and no
/// failed reconcile (the audit log says so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_real_api_server_a_build_succeeds_with_only_the_charts_rbac() {
    use common::controller::Identity;
    use common::{cluster, envtest};

    let Some(cp) = envtest::shared().await else {
        return;
    };
    let admin = cp.client();
    let home = cluster::create_namespace(&admin, "chart-home").await;
    // Its own release name, so that its cluster-wide objects do not meet the other tests'.
    let rendered = run(
        &tool("KILN_HELM", "helm"),
        &[
            "template",
            "rbac-scenario",
            CHART,
            "--namespace",
            &home,
            "--kube-version",
            "1.36.0",
            "--show-only",
            "templates/serviceaccounts.yaml",
            "--show-only",
            "templates/rbac.yaml",
        ],
    );
    let identity = Identity::service_account(
        cp,
        &admin,
        &rendered,
        &home,
        "rbac-scenario-kiln-controller",
    )
    .await;
    common::scene::a_build_succeeds_as(cp, "chart-rbac-scenario", identity).await;
}
