//! The Build CRD: `crds/` holds exactly what `kiln crd` prints; the schema is structural and
//! bounded; every CEL rule compiles, fits the API server's cost budget, names its field, and
//! accepts and rejects what it should (evaluated with kube-cel, without an API server).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test stops where it fails

use std::path::PathBuf;
use std::process::Command;

use kube::core::cel::{Validator, compile_schema, estimate_rule_cost};
use serde_json::{Value, json};

#[path = "common/schema.rs"]
mod schema;

use schema::walk;

const CRD_FILE: &str = "crds/kiln.dev_builds.yaml";

/// The Build's openAPIV3Schema as JSON.
fn schema() -> Value {
    let crd = &kiln::crd::crds()[0];
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("the Build CRD has a schema");
    serde_json::to_value(schema).unwrap()
}

#[test]
fn every_checked_in_copy_is_what_kiln_crd_prints() {
    let generated = kiln::crd::crds_yaml().unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for copy in kiln::crd::CRD_COPIES {
        let checked_in = std::fs::read_to_string(root.join(copy)).unwrap_or_default();
        assert!(
            checked_in == generated,
            "{copy} is out of date with src/crd/. Regenerate every copy with:\n\n    cargo run -- crd --write .\n"
        );
    }
    assert!(kiln::crd::CRD_COPIES.contains(&CRD_FILE));
    // And the command itself prints it.
    let output = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("crd")
        .output()
        .expect("run kiln crd");
    assert!(output.status.success(), "kiln crd failed: {output:?}");
    assert_eq!(String::from_utf8(output.stdout).unwrap(), generated);
}

#[test]
fn kiln_crd_write_writes_every_copy_and_leaves_equal_ones_alone() {
    let root = std::env::temp_dir().join(format!("kiln-crd-write-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let stale = root.join(kiln::crd::CRD_COPIES[1]);
    std::fs::create_dir_all(stale.parent().unwrap()).unwrap();
    std::fs::write(&stale, "stale").unwrap();
    let write = || {
        let output = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["crd", "--write"])
            .arg(&root)
            .output()
            .expect("run kiln crd --write");
        assert!(
            output.status.success(),
            "kiln crd --write failed: {output:?}"
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let first = write();
    let generated = kiln::crd::crds_yaml().unwrap();
    for copy in kiln::crd::CRD_COPIES {
        assert_eq!(
            std::fs::read_to_string(root.join(copy)).unwrap(),
            generated,
            "{copy}"
        );
        assert!(first.contains(&format!("wrote {copy}")), "{first}");
    }
    let second = write();
    for copy in kiln::crd::CRD_COPIES {
        assert!(second.contains(&format!("unchanged {copy}")), "{second}");
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn the_crd_has_a_status_subresource_printer_columns_a_short_name_and_a_category() {
    let crd = &kiln::crd::crds()[0];
    let names = &crd.spec.names;
    assert_eq!(crd.spec.group, "kiln.dev");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(names.short_names.as_deref(), Some(&["kb".to_owned()][..]));
    assert_eq!(names.categories.as_deref(), Some(&["kiln".to_owned()][..]));
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(version.subresources.as_ref().unwrap().status.is_some());
    let columns: Vec<_> = version
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        columns,
        [
            "Phase",
            "Reason",
            "Image",
            "Digest",
            "Platforms",
            "Attempt",
            "Age"
        ]
    );
}

#[test]
fn the_schema_is_structural() {
    let mut problems = Vec::new();
    walk("", &schema(), &mut |path, node| {
        let typed = node.get("type").is_some()
            || node.get("x-kubernetes-int-or-string").is_some()
            || node.get("x-kubernetes-preserve-unknown-fields").is_some();
        if !typed {
            problems.push(format!("{path}: no type"));
        }
        for forbidden in [
            "$ref",
            "oneOf",
            "anyOf",
            "allOf",
            "not",
            "definitions",
            "$defs",
        ] {
            if node.get(forbidden).is_some() {
                problems.push(format!("{path}: uses {forbidden}"));
            }
        }
        if node.get("properties").is_some() && node.get("additionalProperties").is_some() {
            problems.push(format!("{path}: both properties and additionalProperties"));
        }
    });
    assert!(
        problems.is_empty(),
        "not structural:\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_spec_string_list_and_map_we_define_is_bounded() {
    // Fields whose schema comes from Kubernetes itself (resources, tolerations) are as
    // Kubernetes defines them; everything Kiln defines is bounded.
    let mut unbounded = Vec::new();
    walk("", &schema()["properties"]["spec"], &mut |path, node| {
        if path.starts_with(".builder.resources") || path.starts_with(".builder.tolerations[]") {
            return;
        }
        let bounded = match node.get("type").and_then(Value::as_str) {
            Some("string") => node.get("maxLength").is_some() || node.get("enum").is_some(),
            Some("array") => node.get("maxItems").is_some(),
            Some("object") if node.get("additionalProperties").is_some() => {
                node.get("maxProperties").is_some()
            }
            _ => true,
        };
        if !bounded {
            unbounded.push(format!("spec{path}"));
        }
    });
    assert!(unbounded.is_empty(), "unbounded: {unbounded:?}");
}

/// Every `(path, rule, message)` in the schema.
fn rules() -> Vec<(String, String, String)> {
    let mut rules = Vec::new();
    walk("", &schema(), &mut |path, node| {
        for rule in node
            .get("x-kubernetes-validations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            rules.push((
                path.to_owned(),
                rule["rule"].as_str().unwrap_or_default().to_owned(),
                rule["message"].as_str().unwrap_or_default().to_owned(),
            ));
        }
    });
    rules
}

#[test]
fn every_cel_rule_compiles_and_fits_the_cost_budget() {
    let schema = schema();
    let mut problems = Vec::new();
    walk("", &schema, &mut |path, node| {
        let Some(node_rules) = node
            .get("x-kubernetes-validations")
            .and_then(Value::as_array)
        else {
            return;
        };
        let compiled = compile_schema(node);
        for error in compiled.compilation_errors() {
            problems.push(format!("{path}: {error}"));
        }
        for rule in node_rules {
            let rule = rule["rule"].as_str().unwrap_or_default();
            // Cost and missing bounds only: kube-cel's scope check mistakes the variables of
            // `all`/`exists` for free variables.
            for warning in estimate_rule_cost(rule, &compiled) {
                problems.push(format!("{path}: {rule}: {warning:?}"));
            }
        }
    });
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        rules().len() >= 18,
        "expected every documented rule, found {}",
        rules().len()
    );
}

#[test]
fn every_rule_message_names_the_field_it_checks() {
    for (path, rule, message) in rules() {
        assert!(
            message.contains("spec.") || message.contains("metadata.name"),
            "the message of rule {rule:?} at {path} names no field: {message:?}"
        );
    }
}

#[test]
fn every_field_kubectl_explain_shows_is_documented() {
    let mut undocumented = Vec::new();
    walk("", &schema()["properties"]["spec"], &mut |path, node| {
        if !path.is_empty()
            && !path.ends_with("[]")
            && !path.ends_with('}')
            && node.get("description").is_none()
        {
            undocumented.push(format!("spec{path}"));
        }
    });
    assert!(undocumented.is_empty(), "no description: {undocumented:?}");
}

// --- CEL: what is accepted and what is rejected ---------------------------------------------

fn build(spec: Value) -> Value {
    json!({
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "Build",
        "metadata": {"name": "app", "namespace": "default"},
        "spec": spec,
    })
}

fn minimal_spec() -> Value {
    json!({
        "source": {"git": {"url": "https://git.example.com/team/app.git"}},
        "output": {"image": "registry.example.com/team/app:v1"},
    })
}

/// The messages of the rules that reject `object` (empty when it is accepted).
fn rejections(object: &Value) -> Vec<String> {
    match Validator::new().validate(&schema(), object, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

fn with(mut spec: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let mut node = &mut spec;
    for part in parent.split('/').filter(|p| !p.is_empty()) {
        node = node
            .as_object_mut()
            .unwrap()
            .entry(part.to_owned())
            .or_insert_with(|| json!({}));
    }
    node.as_object_mut().unwrap().insert(key.to_owned(), value);
    spec
}

#[test]
fn valid_builds_are_accepted() {
    let full = json!({
        "source": {"git": {
            "url": "git@github.com:team/app.git",
            "revision": "release/1.2",
            "contextDir": "services/api",
            "cloneSecretRef": {"name": "git-credentials"},
        }},
        "dockerfile": "docker/Dockerfile.prod",
        "target": "runtime",
        "buildArgs": {"VERSION": "1.2.0"},
        "platforms": ["linux/amd64", "linux/arm64/v8"],
        "output": {"image": "localhost:5000/team/app", "pushSecretRef": {"name": "regcred"}},
        "cache": {"mode": "Min", "scope": "Namespace"},
        "builder": {"image": "docker.io/moby/buildkit:v0.26.1-rootless", "serviceAccountName": "builder"},
        "timeout": "1h30m",
        "retries": 3,
        "concurrency": {"group": "app-latest", "policy": "CancelInProgress"},
        "retention": {"succeededPodTTL": "1h", "failedPodTTL": "24h", "attemptHistory": 5},
    });
    let inline = json!({
        "source": {"inline": {"dockerfile": "FROM scratch\n", "files": [{"path": "a/b.txt", "content": "x"}]}},
        "output": {"image": "registry.example.com/x:latest"},
    });
    let oci = json!({
        "source": {"oci": {"image": format!("registry.example.com/ctx@sha256:{}", "a".repeat(64))}},
        "output": {"image": "registry.example.com/x"},
    });
    for spec in [minimal_spec(), full, inline, oci] {
        let errors = rejections(&build(spec.clone()));
        assert!(errors.is_empty(), "{spec}\nrejected: {errors:?}");
    }
}

#[test]
fn invalid_builds_are_rejected_with_a_message_that_names_the_field() {
    let spec = minimal_spec;
    let digest = format!("sha256:{}", "a".repeat(64));
    let cases: Vec<(&str, Value)> = vec![
        (
            "exactly one of spec.source",
            json!({"source": {}, "output": {"image": "r/a"}}),
        ),
        (
            "exactly one of spec.source",
            with(spec(), "/source/oci", json!({"image": "r/ctx:1"})),
        ),
        (
            "spec.source.git.url",
            with(spec(), "/source/git/url", json!("ftp://example.com/x")),
        ),
        (
            "spec.source.git.url",
            with(spec(), "/source/git/url", json!("https://x/y.git#main")),
        ),
        (
            "spec.source.git.revision",
            with(spec(), "/source/git/revision", json!("main branch")),
        ),
        (
            "spec.source.git.contextDir",
            with(spec(), "/source/git/contextDir", json!("../etc")),
        ),
        (
            "spec.source.git.cloneSecretRef.name",
            with(
                spec(),
                "/source/git/cloneSecretRef",
                json!({"name": "Bad_Name"}),
            ),
        ),
        (
            "spec.source.oci.image",
            json!({"source": {"oci": {"image": "Not A Ref"}}, "output": {"image": "r/a"}}),
        ),
        (
            "spec.source.inline.files[].path",
            json!({"source": {"inline": {"dockerfile": "FROM x", "files": [{"path": "../x", "content": ""}]}}, "output": {"image": "r/a"}}),
        ),
        (
            "must not contain the path in spec.dockerfile",
            json!({"source": {"inline": {"dockerfile": "FROM x", "files": [{"path": "Dockerfile", "content": ""}]}}, "output": {"image": "r/a"}, "dockerfile": "Dockerfile"}),
        ),
        (
            "spec.dockerfile",
            with(spec(), "/dockerfile", json!("/etc/Dockerfile")),
        ),
        ("spec.target", with(spec(), "/target", json!("-stage"))),
        (
            "spec.platforms",
            with(spec(), "/platforms", json!(["linux"])),
        ),
        (
            "spec.platforms",
            with(spec(), "/platforms", json!(["Linux/AMD64"])),
        ),
        (
            "spec.output.image",
            with(spec(), "/output/image", json!(format!("r/a@{digest}"))),
        ),
        (
            "spec.output.image",
            with(spec(), "/output/image", json!("Registry/App")),
        ),
        (
            "spec.output.pushSecretRef.name",
            with(spec(), "/output/pushSecretRef", json!({"name": "-x"})),
        ),
        (
            "spec.builder.image",
            with(spec(), "/builder/image", json!("not a ref")),
        ),
        (
            "spec.builder.serviceAccountName",
            with(spec(), "/builder/serviceAccountName", json!("Builder")),
        ),
        ("spec.timeout", with(spec(), "/timeout", json!("30s"))),
        ("spec.timeout", with(spec(), "/timeout", json!("2d"))),
        ("spec.timeout", with(spec(), "/timeout", json!("25h"))),
        (
            "spec.retention.succeededPodTTL",
            with(spec(), "/retention/succeededPodTTL", json!("1y")),
        ),
        (
            "spec.retention.failedPodTTL",
            with(spec(), "/retention/failedPodTTL", json!("721h")),
        ),
    ];
    for (field, spec) in cases {
        let errors = rejections(&build(spec.clone()));
        assert!(
            errors.iter().any(|e| e.contains(field)),
            "expected a rejection naming {field:?} for {spec}, got {errors:?}"
        );
    }
    // The name is a label value: at most 63 characters.
    let mut long = build(minimal_spec());
    long["metadata"]["name"] = json!("n".repeat(64));
    let errors = rejections(&long);
    assert!(
        errors.iter().any(|e| e.contains("metadata.name")),
        "{errors:?}"
    );
}

#[test]
fn every_sample_is_a_valid_build() {
    use kiln::controller::validate::{SecretInfo, validate};
    use serde::Deserialize;

    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/samples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "samples: {files:?}");
    // Any Secret a sample names is assumed to exist with the right type.
    let secrets = [
        (
            "regcred",
            "kubernetes.io/dockerconfigjson",
            ".dockerconfigjson",
        ),
        ("git-credentials", "kubernetes.io/basic-auth", "password"),
    ]
    .into_iter()
    .map(|(n, t, k)| {
        (
            n.to_owned(),
            SecretInfo {
                type_: t.into(),
                keys: [k.to_owned()].into(),
            },
        )
    })
    .collect();
    let mut count = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(document).unwrap();
            let errors = rejections(&value);
            assert!(errors.is_empty(), "{}: {errors:?}", file.display());
            let build: kiln::crd::Build =
                serde_json::from_value(value).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            validate(&build, &secrets, &kiln::controller::Config::default())
                .unwrap_or_else(|p| panic!("{}: {}", file.display(), p.message));
            count += 1;
        }
    }
    assert!(count >= 6);
}
