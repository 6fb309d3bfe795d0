//! `kiln sign` and `kiln index push --sign-key-dir`, the real binary, against Debian's
//! `docker-registry` with Basic auth, checked by the real `cosign verify --key` (built from
//! its Go module by scripts/cosign.sh): what Kiln signs, cosign accepts; a tampered
//! signature, or another key, it refuses (test-only I/O: processes, sockets, temp dirs).
//!
//! Without cosign (`KILN_COSIGN` unset) the tests are skipped with a loud message, unless
//! `KILN_REQUIRE_ENVTEST=1` (CI), where a missing cosign fails them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test stops where it fails

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::docker_registry::DockerRegistry;
use common::oci_layout::TestImage;
use common::skopeo;
use kiln::controller::podstate::pushed_digest;
use kiln::oci::digest::Digest;

/// `kiln:s3cret` for docker-registry's htpasswd (bcrypt, cost 4).
const HTPASSWD: &str = "kiln:$2b$04$7pqdyUfIAlCEIclyCaLBeeIb2yUTwJDQh8I.xWQpDXP6zQvlVnP92\n";
const CREDS: &str = "kiln:s3cret";
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sign");

/// The cosign binary, or `None` (after saying why, loudly) when the test must be skipped.
fn cosign(test: &str) -> Option<PathBuf> {
    match std::env::var_os("KILN_COSIGN") {
        Some(path) => Some(PathBuf::from(path)),
        None if std::env::var("KILN_REQUIRE_ENVTEST").as_deref() == Ok("1") => {
            panic!("{test}: KILN_COSIGN is not set (run scripts/install-test-deps.sh)")
        }
        None => {
            eprintln!(
                "SKIPPED {test}: KILN_COSIGN is not set; run scripts/install-test-deps.sh (it builds cosign with scripts/cosign.sh) and source target/kiln-tools.env"
            );
            None
        }
    }
}

/// A Docker config directory with `kiln:s3cret` for `host`.
fn docker_config(host: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let auth = STANDARD.encode(CREDS);
    std::fs::write(
        dir.path().join("config.json"),
        format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    dir
}

/// A key directory as the mounted Secret lays it out: cosign's encrypted `cosign.key`
/// (password `test`) with `cosign.password`, or an unencrypted key alone.
fn key_dir(key: &str, password: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(format!("{FIXTURES}/{key}"), dir.path().join("cosign.key")).unwrap();
    if let Some(password) = password {
        std::fs::write(dir.path().join("cosign.password"), format!("{password}\n")).unwrap();
    }
    dir
}

fn run(command: &mut Command, what: &str) -> Output {
    let output = command.output().unwrap();
    eprintln!(
        "{what}: {}\nstdout: {}stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn kiln_sign(host: &str, digest: &Digest, keys: &Path, config: &Path, log: &Path) -> Output {
    run(
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("sign")
            .arg(format!("--image={host}/team/app:v1"))
            .arg(format!("--digest={digest}"))
            .arg("--key-dir")
            .arg(keys)
            .arg(format!("--plain-http-registry={host}"))
            .arg("--docker-config")
            .arg(config)
            .arg("--termination-log")
            .arg(log)
            .env_remove("DOCKER_CONFIG"),
        "kiln sign",
    )
}

/// `cosign verify --key <public key> <reference>` against the plain-HTTP registry, with
/// no transparency log (Kiln uploads none) and the registry's credentials.
fn cosign_verify(cosign: &Path, public_key: &str, reference: &str, config: &Path) -> Output {
    run(
        Command::new(cosign)
            .args(["verify", "--key"])
            .arg(format!("{FIXTURES}/{public_key}"))
            .args([
                "--insecure-ignore-tlog=true",
                "--allow-insecure-registry",
                "--allow-http-registry",
                "--output=json",
                reference,
            ])
            .env("DOCKER_CONFIG", config)
            .env("HOME", config)
            .env("COSIGN_EXPERIMENTAL", "0"),
        "cosign verify",
    )
}

/// The digests of the images cosign's JSON output says it verified.
fn verified_digests(output: &Output) -> Vec<String> {
    let value: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|err| panic!("cosign's JSON output: {err}"));
    value
        .as_array()
        .expect("a list of verified signatures")
        .iter()
        .map(|s| {
            s["critical"]["image"]["docker-manifest-digest"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

/// PUTs manifest `bytes` at `tag` of `host/team/app` with the test credentials.
fn put_manifest(host: &str, tag: &str, bytes: Vec<u8>) {
    // The dev-dependencies enable a second rustls provider; pick the one Kiln uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let response = reqwest::Client::new()
            .put(format!("http://{host}/v2/team/app/manifests/{tag}"))
            .basic_auth("kiln", Some("s3cret"))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(bytes)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
    });
}

#[test]
fn a_kiln_signature_verifies_with_cosign_and_a_tampered_one_does_not() {
    let test = "a_kiln_signature_verifies_with_cosign_and_a_tampered_one_does_not";
    let Some(cosign) = cosign(test) else { return };
    let registry = DockerRegistry::start_with_htpasswd(HTPASSWD);
    let host = registry.host();
    let image = TestImage::build("signed", "v1");
    skopeo::copy(
        &image.reference(),
        &format!("docker://{host}/team/app:v1"),
        &[&format!("--dest-creds={CREDS}")],
    );
    let digest = image.manifest_digest();
    let config = docker_config(&host);
    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("termination-log");
    let keys = key_dir("cosign.key", Some("test"));

    let output = kiln_sign(&host, &digest, keys.path(), config.path(), &log);
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.starts_with("signed: "), "{stdout}");
    let message = std::fs::read_to_string(&log).unwrap();
    assert_eq!(pushed_digest(Some(&message)), Ok(digest));

    let by_digest = format!("{host}/team/app@{digest}");
    let verified = cosign_verify(&cosign, "cosign.pub", &by_digest, config.path());
    assert!(verified.status.success(), "cosign accepts Kiln's signature");
    assert_eq!(verified_digests(&verified), [digest.to_string()]);
    // By tag too: cosign resolves the tag to the digest that was signed.
    let by_tag = format!("{host}/team/app:v1");
    assert!(
        cosign_verify(&cosign, "cosign.pub", &by_tag, config.path())
            .status
            .success()
    );
    // Another key's public key does not verify it.
    assert!(
        !cosign_verify(&cosign, "pkcs8.pub", &by_digest, config.path())
            .status
            .success()
    );

    // Signing again with the same key changes nothing: one PUT of the signature tag.
    let tag = format!("sha256-{}.sig", digest.hex());
    let again = kiln_sign(&host, &digest, keys.path(), config.path(), &log);
    assert!(again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stdout).starts_with("already signed by this key"),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
    assert_eq!(
        registry.count_requests("PUT", &format!("/team/app/manifests/{tag}")),
        1,
        "{}",
        registry.log()
    );

    // A second key appends its signature; both verify.
    let second = key_dir("pkcs8.key", None);
    let output = kiln_sign(&host, &digest, second.path(), config.path(), &log);
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("(2 signatures)"));
    for public_key in ["cosign.pub", "pkcs8.pub"] {
        assert!(
            cosign_verify(&cosign, public_key, &by_digest, config.path())
                .status
                .success(),
            "{public_key}"
        );
    }

    // Tampered: each signature's bytes changed in place (still valid base64, still DER
    // of the same length), pushed back at the tag. cosign refuses every one of them.
    let raw = skopeo::inspect_raw(
        &format!("docker://{host}/team/app:{tag}"),
        &[&format!("--creds={CREDS}")],
    );
    let mut manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    for layer in manifest["layers"].as_array_mut().unwrap() {
        let annotation = &mut layer["annotations"]["dev.cosignproject.cosign/signature"];
        let mut signature = STANDARD.decode(annotation.as_str().unwrap()).unwrap();
        let last = signature.len() - 1;
        signature[last] ^= 0x01;
        *annotation = STANDARD.encode(&signature).into();
    }
    put_manifest(&host, &tag, serde_json::to_vec(&manifest).unwrap());
    for public_key in ["cosign.pub", "pkcs8.pub"] {
        let refused = cosign_verify(&cosign, public_key, &by_digest, config.path());
        assert!(
            !refused.status.success(),
            "cosign accepted a tampered signature with {public_key}"
        );
    }
}

#[test]
fn a_key_that_cannot_sign_fails_before_anything_is_pushed() {
    let registry = DockerRegistry::start_with_htpasswd(HTPASSWD);
    let host = registry.host();
    let config = docker_config(&host);
    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("termination-log");
    let digest = Digest::of(b"an image");
    // cosign's encrypted key without its password.
    let keys = key_dir("cosign.key", None);
    let output = kiln_sign(&host, &digest, keys.path(), config.path(), &log);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cosign.password"), "{stderr}");
    // A P-384 key: cosign keys are P-256.
    let keys = key_dir("p384.key", None);
    let output = kiln_sign(&host, &digest, keys.path(), config.path(), &log);
    assert!(!output.status.success());
    assert!(!log.exists(), "nothing is written on failure");
    assert_eq!(registry.count_requests("PUT", "/team/app/"), 0);
    assert_eq!(registry.count_requests("POST", "/team/app/"), 0);
}

#[test]
fn kiln_index_push_signs_the_index_it_pushed() {
    let test = "kiln_index_push_signs_the_index_it_pushed";
    let Some(cosign) = cosign(test) else { return };
    let registry = DockerRegistry::start_with_htpasswd(HTPASSWD);
    let host = registry.host();
    let amd64 = TestImage::build_for("signed-index-amd64", "v1", "linux/amd64");
    let arm64 = TestImage::build_for("signed-index-arm64", "v1", "linux/arm64");
    for image in [&amd64, &arm64] {
        skopeo::copy(
            &image.reference(),
            &format!("docker://{host}/team/app@{}", image.manifest_digest()),
            &[&format!("--dest-creds={CREDS}")],
        );
    }
    let config = docker_config(&host);
    let keys = key_dir("cosign.key", Some("test"));
    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("termination-log");
    let output = run(
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["index", "push"])
            .arg(format!("--image={host}/team/app:v1"))
            .arg(format!(
                "--manifest=linux/amd64={}",
                amd64.manifest_digest()
            ))
            .arg(format!(
                "--manifest=linux/arm64={}",
                arm64.manifest_digest()
            ))
            .arg(format!("--plain-http-registry={host}"))
            .arg("--docker-config")
            .arg(config.path())
            .arg("--sign-key-dir")
            .arg(keys.path())
            .arg("--termination-log")
            .arg(&log)
            .env_remove("DOCKER_CONFIG"),
        "kiln index push --sign-key-dir",
    );
    assert!(output.status.success());
    let index = pushed_digest(Some(&std::fs::read_to_string(&log).unwrap())).unwrap();
    let verified = cosign_verify(
        &cosign,
        "cosign.pub",
        &format!("{host}/team/app:v1"),
        config.path(),
    );
    assert!(
        verified.status.success(),
        "cosign accepts the index's signature"
    );
    assert_eq!(verified_digests(&verified), [index.to_string()]);
}
