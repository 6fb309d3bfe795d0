//! `kiln index push`, the real binary, against real registries over real sockets (Debian's
//! `docker-registry`, with and without Basic auth, and Kiln's own cache service), checked
//! with Debian's `skopeo` (test-only I/O: processes, sockets, temp dirs).
//!
//! Each scenario pushes a linux/amd64 and a linux/arm64 test image by digest, as the
//! per-platform build pods do, runs `kiln index push` as the controller's index pod does,
//! and checks what a client then sees at the tag.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test stops where it fails

mod common;

use std::path::Path;
use std::process::{Command, Output};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::docker_registry::DockerRegistry;
use common::kiln_server::{self, KilnServer};
use common::oci_layout::{self, TestImage};
use common::skopeo;
use kiln::controller::podstate::pushed_digest;
use kiln::oci::digest::Digest;
use kiln::oci::index::{IndexEntry, image_index};
use kiln::oci::media::OCI_MANIFEST;
use kiln::oci::platform::Platform;

/// `kiln:s3cret` for docker-registry's htpasswd: bcrypt with the lowest cost Go's bcrypt
/// takes (4), so that the registry checks it quickly on every request.
const HTPASSWD: &str = "kiln:$2b$04$7pqdyUfIAlCEIclyCaLBeeIb2yUTwJDQh8I.xWQpDXP6zQvlVnP92\n";
const USER: &str = "kiln";
const PASSWORD: &str = "s3cret";

/// The two single-platform images of a scenario, each pushed by digest only.
struct Platforms {
    amd64: TestImage,
    arm64: TestImage,
}

impl Platforms {
    fn build(seed: &str) -> Self {
        Self {
            amd64: TestImage::build_for(&format!("{seed}-amd64"), "v1", "linux/amd64"),
            arm64: TestImage::build_for(&format!("{seed}-arm64"), "v1", "linux/arm64"),
        }
    }

    /// Pushes both to `host/team/app@<digest>`, with no tag, as a build pod does.
    fn push_by_digest(&self, host: &str, creds: Option<&str>) {
        for image in [&self.amd64, &self.arm64] {
            let target = format!("docker://{host}/team/app@{}", image.manifest_digest());
            skopeo::copy(
                &image.reference(),
                &target,
                &refs(&flag("--dest-creds", creds)),
            );
        }
    }

    /// The `--manifest` flags, amd64 first.
    fn manifest_flags(&self) -> Vec<String> {
        vec![
            format!("--manifest=linux/amd64={}", self.amd64.manifest_digest()),
            format!("--manifest=linux/arm64={}", self.arm64.manifest_digest()),
        ]
    }

    /// The index `kiln index push` must push: its bytes are the contract.
    fn expected_index(&self) -> Vec<u8> {
        let entry = |platform: &str, image: &TestImage| IndexEntry {
            platform: Platform::parse(platform).unwrap(),
            digest: image.manifest_digest(),
            media_type: OCI_MANIFEST.to_owned(),
            size: image.manifest.len() as u64,
            annotations: Default::default(),
        };
        image_index(&[
            entry("linux/amd64", &self.amd64),
            entry("linux/arm64", &self.arm64),
        ])
    }
}

/// Runs the real `kiln index push` against `host` (plain HTTP), with the Docker config
/// directory `docker_config`, writing the termination message to `termination_log`.
fn kiln_index_push(
    host: &str,
    manifests: &[String],
    docker_config: &Path,
    termination_log: &Path,
) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["index", "push", "--image"])
        .arg(format!("{host}/team/app:v1"))
        .args(manifests)
        .args(["--plain-http-registry", host, "--docker-config"])
        .arg(docker_config)
        .arg("--termination-log")
        .arg(termination_log)
        .env_remove("DOCKER_CONFIG")
        .output()
        .unwrap();
    eprintln!(
        "kiln index push: {}\nstdout: {}stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `[--name=creds]`, or nothing for anonymous: skopeo's credential flags.
fn flag(name: &str, creds: Option<&str>) -> Vec<String> {
    creds.map(|c| format!("{name}={c}")).into_iter().collect()
}

fn refs(flags: &[String]) -> Vec<&str> {
    flags.iter().map(String::as_str).collect()
}

/// The whole scenario against a registry at `host`: `creds` are skopeo's credentials for
/// it (`user:password`, or none), `docker_config` the directory given to kiln.
fn pushes_an_index_that_clients_resolve_per_platform(
    host: &str,
    creds: Option<&str>,
    docker_config: &Path,
) {
    let inspect_creds = flag("--creds", creds);
    let inspect_creds = refs(&inspect_creds);
    let images = Platforms::build(host);
    images.push_by_digest(host, creds);
    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("termination-log");
    let expected = images.expected_index();
    let digest = Digest::of(&expected);

    let output = kiln_index_push(host, &images.manifest_flags(), docker_config, &log);
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        format!("pushed {host}/team/app:v1@{digest} (2 platforms: linux/amd64, linux/arm64)\n")
    );

    // The index's tag is the repository's only one: the images went by digest.
    let repository = format!("docker://{host}/team/app");
    let mut list_tags = vec!["list-tags", "--tls-verify=false"];
    list_tags.extend_from_slice(&inspect_creds);
    list_tags.push(&repository);
    let tags: serde_json::Value = serde_json::from_slice(&skopeo::skopeo(&list_tags)).unwrap();
    assert_eq!(tags["Tags"], serde_json::json!(["v1"]));

    // The tag serves exactly the index of the two manifests, byte for byte.
    let tag = format!("docker://{host}/team/app:v1");
    assert_eq!(skopeo::inspect_raw(&tag, &inspect_creds), expected);
    // The termination message gives the controller the index's digest.
    let message = std::fs::read_to_string(&log).unwrap();
    assert_eq!(pushed_digest(Some(&message)), Ok(digest));

    // A client that pulls for a platform gets that platform's image.
    for (arch, image) in [("arm64", &images.arm64), ("amd64", &images.amd64)] {
        let pulled = tempfile::tempdir().unwrap();
        let mut flags = vec![
            "--override-os".to_owned(),
            "linux".to_owned(),
            "--override-arch".to_owned(),
            arch.to_owned(),
        ];
        flags.extend(flag("--src-creds", creds));
        skopeo::copy(
            &tag,
            &format!("oci:{}:v1", pulled.path().display()),
            &refs(&flags),
        );
        let layout: serde_json::Value =
            serde_json::from_slice(&std::fs::read(pulled.path().join("index.json")).unwrap())
                .unwrap();
        assert_eq!(
            layout["manifests"][0]["digest"],
            image.manifest_digest().to_string(),
            "{arch}"
        );
        image.assert_pulled_into(pulled.path());
    }

    // Pushing again pushes the same bytes: same digest, same summary.
    std::fs::remove_file(&log).unwrap();
    let again = kiln_index_push(host, &images.manifest_flags(), docker_config, &log);
    assert!(again.status.success());
    assert_eq!(
        pushed_digest(Some(&std::fs::read_to_string(&log).unwrap())),
        Ok(digest)
    );
    assert_eq!(skopeo::inspect_raw(&tag, &inspect_creds), expected);

    // The index is not a platform's manifest: listing it is refused, and says why.
    std::fs::remove_file(&log).unwrap();
    let nested = kiln_index_push(
        host,
        &[format!("--manifest=linux/amd64={digest}")],
        docker_config,
        &log,
    );
    assert!(!nested.status.success());
    let stderr = String::from_utf8_lossy(&nested.stderr);
    assert!(
        stderr.contains(&format!(
            "the linux/amd64 manifest {host}/team/app@{digest} cannot go in the index"
        )) && stderr.contains("it is an image index"),
        "{stderr}"
    );
    assert!(!log.exists());
}

/// An empty Docker config directory: anonymous.
fn anonymous() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn docker_registry_serves_the_pushed_index_and_each_platform() {
    let registry = DockerRegistry::start();
    let config = anonymous();
    pushes_an_index_that_clients_resolve_per_platform(&registry.host(), None, config.path());
    // Both pushes of the index PUT the tag; nothing else did.
    assert_eq!(
        registry.count_requests("PUT", "/team/app/manifests/v1"),
        2,
        "{}",
        registry.log()
    );
}

#[test]
fn a_digest_the_repository_lacks_fails_clearly_and_leaves_no_trace() {
    let registry = DockerRegistry::start();
    let host = registry.host();
    let images = Platforms::build("missing");
    // Only amd64 reaches the registry.
    skopeo::copy(
        &images.amd64.reference(),
        &format!(
            "docker://{host}/team/app@{}",
            images.amd64.manifest_digest()
        ),
        &[],
    );
    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("termination-log");
    let config = anonymous();
    let output = kiln_index_push(&host, &images.manifest_flags(), config.path(), &log);

    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let wanted = format!(
        "error: cannot fetch the linux/arm64 manifest {host}/team/app@{}: the registry has no such manifest or repository (404)",
        images.arm64.manifest_digest()
    );
    assert!(stderr.contains(&wanted), "{stderr}");
    assert!(!log.exists(), "no termination log on failure");
    let tag = format!("docker://{host}/team/app:v1");
    assert!(skopeo::try_skopeo(&["inspect", "--raw", "--tls-verify=false", &tag]).is_err());
    assert_eq!(registry.count_requests("PUT", "/manifests/v1"), 0);
}

#[test]
fn images_swapped_between_platforms_are_refused_before_anything_is_tagged() {
    let registry = DockerRegistry::start();
    let host = registry.host();
    let images = Platforms::build("swapped");
    images.push_by_digest(&host, None);
    let swapped = vec![
        format!("--manifest=linux/amd64={}", images.arm64.manifest_digest()),
        format!("--manifest=linux/arm64={}", images.amd64.manifest_digest()),
    ];
    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("termination-log");
    let config = anonymous();
    let output = kiln_index_push(&host, &swapped, config.path(), &log);

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr
            .contains("its image config is for linux/arm64, not for the platform it is listed for"),
        "{stderr}"
    );
    assert!(!log.exists(), "no termination log on failure");
    assert_eq!(registry.count_requests("PUT", "/manifests/v1"), 0);
}

#[test]
fn basic_auth_credentials_come_from_the_docker_config() {
    let registry = DockerRegistry::start_with_htpasswd(HTPASSWD);
    let host = registry.host();
    let config = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join("config.json"),
        serde_json::json!({"auths": {host.as_str(): {"auth": STANDARD.encode(format!("{USER}:{PASSWORD}"))}}})
            .to_string(),
    )
    .unwrap();
    let creds = format!("{USER}:{PASSWORD}");
    pushes_an_index_that_clients_resolve_per_platform(&host, Some(&creds), config.path());

    // Without the config, the registry refuses, and the message says where to look.
    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("termination-log");
    let images = Platforms::build(&host);
    let empty = anonymous();
    let output = kiln_index_push(&host, &images.manifest_flags(), empty.path(), &log);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("access denied (401)"), "{stderr}");
    assert!(!log.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kilns_cache_service_serves_the_pushed_index_and_each_platform() {
    let server = KilnServer::start(kiln_server::Config::default()).await;
    let host = server.host();
    tokio::task::spawn_blocking(move || {
        let config = anonymous();
        pushes_an_index_that_clients_resolve_per_platform(&host, None, config.path());
    })
    .await
    .unwrap();
    server.stop().await.unwrap();
}

#[test]
fn platform_test_images_differ_only_where_the_platform_does() {
    // The harness's platform-aware images: the config names the platform, and amd64 is
    // the image every other test builds.
    let amd64 = TestImage::build_for("same", "v1", "linux/amd64");
    assert_eq!(amd64.manifest, TestImage::build("same", "v1").manifest);
    let arm64 = TestImage::build_for("same", "v1", "linux/arm64/v8");
    let config: serde_json::Value = serde_json::from_slice(&arm64.config).unwrap();
    assert_eq!(
        (
            config["os"].as_str(),
            config["architecture"].as_str(),
            config["variant"].as_str()
        ),
        (Some("linux"), Some("arm64"), Some("v8"))
    );
    assert_eq!(arm64.layer, amd64.layer);
    assert_eq!(
        oci_layout::read_blob(arm64.dir.path(), &arm64.config_digest()),
        arm64.config
    );
}
