//! The Build API on a real kube-apiserver (I/O: the shared envtest control plane): the CRDs
//! of `crds/` install and are served; every CEL rule of the CRD rejects a bad Build with
//! the message we wrote (one test per rule, and a test that fails when a rule has none);
//! the samples are accepted; the served OpenAPI carries the field docs `kubectl explain`
//! shows.
//!
//! `tests/crd.rs` evaluates the same rules with kube-cel, without a server; this file
//! proves that the API server itself compiles them within its cost budget and answers
//! with our messages.
//!
//! Skipped, with the reason printed, when no Go toolchain can build the control plane;
//! `KILN_REQUIRE_ENVTEST=1` (set by `.ci/run`) turns that into a failure.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test stops where it fails

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::cluster;
use common::envtest;
use common::schema::walk;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kiln::crd::Build;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use serde::Deserialize as _;
use serde_json::{Value, json};

const CRD_FILE: &str = "crds/kiln.dev_builds.yaml";
const CRD_NAME: &str = "builds.kiln.dev";
const WAIT: Duration = Duration::from_secs(60);

fn repository(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The YAML documents of a file, as JSON values (empty documents skipped).
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|err| panic!("reading {}: {err}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).expect("a YAML document"))
        .filter(|value| !value.is_null())
        .collect()
}

/// The Build's `openAPIV3Schema`, from the checked-in CRD (what the API server serves).
fn crd_schema() -> Value {
    let crd = documents(&repository(CRD_FILE))
        .into_iter()
        .find(|doc| doc["metadata"]["name"] == CRD_NAME)
        .unwrap_or_else(|| panic!("{CRD_FILE} holds no {CRD_NAME}"));
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// Every CEL rule of the CRD as `(path#index, message)`: `.spec.timeout#0`, `#0` for the
/// rules on the root.
fn crd_rules() -> Vec<(String, String)> {
    let mut rules = Vec::new();
    walk("", &crd_schema(), &mut |path, node| {
        let listed = node
            .get("x-kubernetes-validations")
            .and_then(Value::as_array);
        for (index, rule) in listed.into_iter().flatten().enumerate() {
            let message = rule["message"].as_str().unwrap_or_default().to_owned();
            rules.push((format!("{path}#{index}"), message));
        }
    });
    rules
}

fn build_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kiln.dev", "v1alpha1", "Build"),
        "builds",
    )
}

/// A valid Build (a Git source and an output image) as JSON, in `namespace`.
fn valid_build(name: &str, namespace: &str) -> Value {
    json!({
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "Build",
        "metadata": { "name": name, "namespace": namespace },
        "spec": {
            "source": { "git": { "url": "https://git.example.com/team/app.git" } },
            "output": { "image": "registry.example.com/team/app:v1" },
        },
    })
}

/// Sets the value at a JSON pointer, creating the objects on the way.
fn set(object: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').expect("a JSON pointer");
    let mut node = object;
    for part in parent.split('/').filter(|part| !part.is_empty()) {
        node = node
            .as_object_mut()
            .expect("an object on the way")
            .entry(part.to_owned())
            .or_insert_with(|| json!({}));
    }
    node.as_object_mut()
        .expect("an object at the parent")
        .insert(key.to_owned(), value);
}

/// Creates `object` as a Build through the API server.
async fn create(client: &Client, object: &Value) -> Result<DynamicObject, kube::Error> {
    let namespace = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default");
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &build_resource());
    let object: DynamicObject = serde_json::from_value(object.clone()).expect("a DynamicObject");
    api.create(&PostParams::default(), &object).await
}

/// Asserts that the API server rejects a valid Build changed by `break_it` with exactly the
/// CEL rule `rule` (`path#index`): 422, and every cause carries that rule's message.
async fn rejected_by(rule: &str, break_it: impl FnOnce(&mut Value)) {
    let Some(cp) = envtest::shared().await else {
        return;
    };
    let rules = crd_rules();
    let message = rules
        .iter()
        .find(|(at, _)| at == rule)
        .map(|(_, message)| message.clone())
        .unwrap_or_else(|| panic!("the CRD has no rule {rule}; it has {rules:?}"));
    let client = cp.client();
    let name = format!(
        "bad-{}",
        rule.trim_start_matches('.')
            .replace(['.', '#', '[', ']'], "-")
    )
    .to_lowercase()
    .chars()
    .take(63)
    .collect::<String>()
    .trim_end_matches('-')
    .to_owned();
    let mut object = valid_build(&name, "default");
    break_it(&mut object);
    let status = match create(&client, &object).await {
        Err(kube::Error::Api(status)) => status,
        Ok(_) => panic!("the API server accepted a Build that breaks {rule}: {object}"),
        Err(err) => panic!("creating the Build failed otherwise: {err}"),
    };
    assert_eq!(status.code, 422, "{status:?}");
    assert!(
        status.message.contains(&message),
        "rule {rule}: expected our message {message:?}, got {:?}",
        status.message
    );
    let causes = status.details.map(|d| d.causes).unwrap_or_default();
    assert!(!causes.is_empty(), "no causes in {:?}", status.message);
    // The field the rule sits on (the first item of a list; the API server names the
    // object itself `<nil>`).
    let (path, _) = rule.split_once('#').expect("path#index");
    let field = match path.trim_start_matches('.').replace("[]", "[0]") {
        root if root.is_empty() => "<nil>".to_owned(),
        field => field,
    };
    for cause in &causes {
        assert!(
            cause.message.contains(&message) && cause.field == field,
            "rule {rule}: expected only our message on {field}, got {cause:?}"
        );
    }
}

/// One test per CEL rule of the CRD, named after what it checks, each breaking a valid
/// Build in one way; and `RULE_TESTS`, the rules they cover, which
/// `every_cel_rule_of_the_crd_has_a_test_here` compares with the CRD.
macro_rules! cel_rule_tests {
    ($($test:ident: $rule:literal => |$build:ident| $break_it:expr;)+) => {
        const RULE_TESTS: &[(&str, &str)] = &[$(($rule, stringify!($test))),+];
        $(
            #[tokio::test]
            async fn $test() {
                rejected_by($rule, |$build: &mut Value| { $break_it; }).await;
            }
        )+
    };
}

cel_rule_tests! {
    cel_metadata_name_fits_a_label_value: "#0" => |b| set(b, "/metadata/name", json!("n".repeat(64)));
    cel_inline_files_do_not_take_the_dockerfile_path: ".spec#0" => |b| set(b, "/spec/source", json!({
        "inline": { "dockerfile": "FROM scratch\n", "files": [{ "path": "Dockerfile", "content": "" }] }
    }));
    cel_builder_image_is_an_image_reference: ".spec.builder.image#0" => |b| set(b, "/spec/builder/image", json!("not a ref"));
    cel_builder_service_account_is_a_dns_name: ".spec.builder.serviceAccountName#0" => |b| set(b, "/spec/builder/serviceAccountName", json!("Builder"));
    cel_dockerfile_is_a_relative_path: ".spec.dockerfile#0" => |b| set(b, "/spec/dockerfile", json!("/etc/Dockerfile"));
    cel_output_image_has_no_digest: ".spec.output.image#0" => |b| set(b, "/spec/output/image", json!(format!("registry.example.com/app@sha256:{}", "a".repeat(64))));
    cel_push_secret_is_a_dns_name: ".spec.output.pushSecretRef#0" => |b| set(b, "/spec/output/pushSecretRef", json!({ "name": "-x" }));
    cel_signing_secret_is_a_dns_name: ".spec.signing.keySecretRef#0" => |b| set(b, "/spec/signing", json!({ "keySecretRef": { "name": "Bad_Name" } }));
    cel_platforms_are_os_and_arch: ".spec.platforms#0" => |b| set(b, "/spec/platforms", json!(["linux"]));
    cel_failed_pod_ttl_is_at_most_30_days: ".spec.retention.failedPodTTL#0" => |b| set(b, "/spec/retention/failedPodTTL", json!("721h"));
    cel_succeeded_pod_ttl_is_a_duration: ".spec.retention.succeededPodTTL#0" => |b| set(b, "/spec/retention/succeededPodTTL", json!("1y"));
    cel_exactly_one_source: ".spec.source#0" => |b| set(b, "/spec/source/oci", json!({ "image": "registry.example.com/context:1" }));
    cel_clone_secret_is_a_dns_name: ".spec.source.git.cloneSecretRef#0" => |b| set(b, "/spec/source/git/cloneSecretRef", json!({ "name": "Bad_Name" }));
    cel_context_dir_stays_in_the_repository: ".spec.source.git.contextDir#0" => |b| set(b, "/spec/source/git/contextDir", json!("../etc"));
    cel_git_revision_has_no_whitespace: ".spec.source.git.revision#0" => |b| set(b, "/spec/source/git/revision", json!("main branch"));
    cel_git_url_scheme: ".spec.source.git.url#0" => |b| set(b, "/spec/source/git/url", json!("ftp://example.com/app.git"));
    cel_inline_file_paths_stay_in_the_context: ".spec.source.inline.files[].path#0" => |b| set(b, "/spec/source", json!({
        "inline": { "dockerfile": "FROM scratch\n", "files": [{ "path": "../x", "content": "" }] }
    }));
    cel_oci_context_is_an_image_reference: ".spec.source.oci.image#0" => |b| set(b, "/spec/source", json!({ "oci": { "image": "Not A Ref" } }));
    cel_local_context_is_a_sha256_digest: ".spec.source.local.digest#0" => |b| set(b, "/spec/source", json!({ "local": { "digest": format!("sha512:{}", "a".repeat(64)), "size": 4096 } }));
    cel_target_is_a_stage_name: ".spec.target#0" => |b| set(b, "/spec/target", json!("-stage"));
    cel_timeout_is_at_least_a_minute: ".spec.timeout#0" => |b| set(b, "/spec/timeout", json!("30s"));
}

#[test]
fn every_cel_rule_of_the_crd_has_a_test_here() {
    let in_crd: BTreeSet<String> = crd_rules().into_iter().map(|(at, _)| at).collect();
    let tested: BTreeSet<String> = RULE_TESTS.iter().map(|(at, _)| (*at).to_owned()).collect();
    let untested: Vec<&String> = in_crd.difference(&tested).collect();
    let stale: Vec<&String> = tested.difference(&in_crd).collect();
    assert!(
        untested.is_empty() && stale.is_empty(),
        "CEL rules without a test in cel_rule_tests!: {untested:?}; tests of rules the CRD no \
         longer has: {stale:?}"
    );
    assert_eq!(tested.len(), RULE_TESTS.len(), "a rule tested twice");
}

#[tokio::test]
async fn the_crds_install_are_established_and_are_served_with_their_names() {
    let Some(cp) = envtest::shared().await else {
        return;
    };
    let client = cp.client();
    // The shared control plane installed crds/ at start; applying it again (a Helm
    // upgrade) is accepted and leaves it Established.
    let crds = cluster::apply_file(&client, &repository(CRD_FILE), None)
        .await
        .expect("re-apply the CRDs");
    assert_eq!(
        crds.iter().map(ResourceExt::name_any).collect::<Vec<_>>(),
        [CRD_NAME]
    );
    cluster::wait_for_crd_established(&client, CRD_NAME, WAIT).await;
    let crd = Api::<CustomResourceDefinition>::all(client.clone())
        .get(CRD_NAME)
        .await
        .expect("get the CRD");
    let conditions: BTreeSet<(String, String)> = crd
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.type_, c.status))
        .collect();
    for wanted in ["Established", "NamesAccepted"] {
        assert!(
            conditions.contains(&(wanted.to_owned(), "True".to_owned())),
            "{wanted} is not True: {conditions:?}"
        );
    }

    // Discovery serves the names `kubectl get kb` and `kubectl get kiln` use.
    let request = http::Request::get("/apis/kiln.dev/v1alpha1")
        .body(Vec::new())
        .expect("a request");
    let list: Value = client
        .request(request)
        .await
        .expect("GET /apis/kiln.dev/v1alpha1");
    let builds = list["resources"]
        .as_array()
        .and_then(|resources| resources.iter().find(|r| r["name"] == "builds"))
        .unwrap_or_else(|| panic!("no builds in {list}"));
    assert_eq!(builds["kind"], "Build");
    assert_eq!(builds["namespaced"], true);
    assert_eq!(builds["shortNames"], json!(["kb"]));
    assert_eq!(builds["categories"], json!(["kiln"]));
    let status = list["resources"]
        .as_array()
        .and_then(|resources| resources.iter().find(|r| r["name"] == "builds/status"));
    assert!(status.is_some(), "no status subresource in {list}");
}

#[tokio::test]
async fn every_sample_is_accepted_and_defaulted_by_the_api_server() {
    let Some(cp) = envtest::shared().await else {
        return;
    };
    let client = cp.client();
    let ns = cluster::create_namespace(&client, "crd-samples").await;
    let dir = repository("config/samples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("config/samples")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    let mut accepted = 0;
    for file in &files {
        let applied = cluster::apply_file(&client, file, Some(&ns))
            .await
            .unwrap_or_else(|err| panic!("{} was rejected: {err}", file.display()));
        for object in applied {
            let value = serde_json::to_value(&object).expect("JSON");
            let build: Build = serde_json::from_value(value)
                .unwrap_or_else(|err| panic!("{}: not a Build: {err}", file.display()));
            // The schema's defaults, filled in by the server.
            assert!(!build.spec.timeout.is_empty(), "{}", file.display());
            assert!(!build.spec.dockerfile.is_empty(), "{}", file.display());
            accepted += 1;
        }
    }
    assert!(accepted >= 6, "only {accepted} sample Builds in {files:?}");

    // And one with nothing but the required fields gets every documented default.
    let minimal = create(&client, &valid_build("minimal", &ns))
        .await
        .expect("a minimal Build is accepted");
    let spec = &minimal.data["spec"];
    assert_eq!(spec["timeout"], kiln::crd::build::DEFAULT_TIMEOUT);
    assert_eq!(spec["dockerfile"], kiln::crd::build::DEFAULT_DOCKERFILE);
    assert_eq!(spec["retries"], kiln::crd::build::DEFAULT_RETRIES);
}

/// The served OpenAPI v3 schema of `group/version`'s kind `kind`.
async fn served_schema(client: &Client, group_version: &str, kind: &str) -> Value {
    let get = |path: String| async move {
        let request = http::Request::get(path.as_str())
            .body(Vec::new())
            .expect("a request");
        client
            .request::<Value>(request)
            .await
            .unwrap_or_else(|err| panic!("GET {path}: {err}"))
    };
    // The API server publishes a new CRD's OpenAPI a few seconds after it is Established.
    let url = cluster::wait_until(
        &format!("apis/{group_version} in /openapi/v3"),
        WAIT,
        || async {
            let index = get("/openapi/v3".to_owned()).await;
            index["paths"][format!("apis/{group_version}")]["serverRelativeURL"]
                .as_str()
                .map(str::to_owned)
        },
    )
    .await;
    let document = get(url).await;
    let schemas = document["components"]["schemas"]
        .as_object()
        .expect("components.schemas");
    schemas
        .values()
        .find(|schema| {
            schema["x-kubernetes-group-version-kind"]
                .as_array()
                .is_some_and(|gvks| gvks.iter().any(|gvk| gvk["kind"] == kind))
        })
        .cloned()
        .unwrap_or_else(|| panic!("no schema of kind {kind} among {:?}", schemas.keys()))
}

/// The node at `path` (as [`walk`] names them) of a served schema, where it is inline.
fn served_node<'a>(schema: &'a Value, path: &str) -> Option<&'a Value> {
    let mut node = schema;
    for part in path.split('.').filter(|part| !part.is_empty()) {
        let (name, suffix) = part.split_at(part.find(['[', '{']).unwrap_or(part.len()));
        node = node.get("properties")?.get(name)?;
        for marker in suffix.split_inclusive([']', '}']) {
            node = match marker {
                "[]" => node.get("items")?,
                "{}" => node.get("additionalProperties")?,
                _ => return None,
            };
        }
    }
    Some(node)
}

#[tokio::test]
async fn the_served_openapi_carries_the_field_docs_kubectl_explain_shows() {
    let Some(cp) = envtest::shared().await else {
        return;
    };
    let served = served_schema(&cp.client(), "kiln.dev/v1alpha1", "Build").await;
    assert_eq!(
        served["description"],
        crd_schema()["description"],
        "kubectl explain build"
    );
    let mut checked = 0;
    let mut missing = Vec::new();
    walk(
        "",
        &crd_schema()["properties"]["spec"],
        &mut |path, node| {
            let Some(description) = node.get("description") else {
                return;
            };
            let at = format!(".spec{path}");
            match served_node(&served, &at).and_then(|n| n.get("description")) {
                Some(served) if served == description => checked += 1,
                other => missing.push(format!("{at}: served {other:?}")),
            }
        },
    );
    assert!(missing.is_empty(), "field docs not served: {missing:#?}");
    assert!(
        checked >= 40,
        "only {checked} documented spec fields compared"
    );
    // `kubectl explain build.spec.timeout`, for instance:
    let timeout = served_node(&served, ".spec.timeout")
        .and_then(|n| n["description"].as_str())
        .unwrap_or_default();
    assert!(timeout.contains("TimedOut"), "{timeout:?}");
}
