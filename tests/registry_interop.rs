//! Interop with real third-party registry software over real sockets: Debian's `skopeo`
//! and `docker-registry` (test-only I/O).
//!
//! The harness in `tests/common/` is checked here first (a layout image that skopeo pushes
//! to docker-registry and reads back with exact digests), then the mirror's upstream client
//! runs against docker-registry.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test stops where it fails

mod common;

use common::cut_proxy::CutProxy;
use common::docker_registry::DockerRegistry;
use common::oci_layout::{self, TestImage};
use common::skopeo;
use futures::StreamExt as _;
use kiln::oci::digest::{Digest, Hasher};
use kiln::oci::media::{MANIFEST_MEDIA_TYPES, OCI_MANIFEST};
use kiln::oci::name::{Reference, Tag};
use kiln::registry::mirror::upstream::{Upstream, UpstreamConfig, UpstreamError};

#[test]
fn test_image_layer_is_a_real_tar_gz() {
    let image = TestImage::build("archive", "v1");
    let dir = tempfile::tempdir().unwrap();
    let gz = dir.path().join("layer.tar.gz");
    std::fs::write(&gz, &image.layer).unwrap();
    let gunzip = std::process::Command::new("gzip")
        .arg("-dc")
        .arg(&gz)
        .output()
        .unwrap();
    assert!(
        gunzip.status.success(),
        "{}",
        String::from_utf8_lossy(&gunzip.stderr)
    );
    assert_eq!(gunzip.stdout, image.layer_tar);
    let tar = dir.path().join("layer.tar");
    std::fs::write(&tar, &image.layer_tar).unwrap();
    let extract = std::process::Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        extract.status.success(),
        "{}",
        String::from_utf8_lossy(&extract.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("hello.txt")).unwrap(),
        "kiln test image archive\n"
    );
}

#[test]
fn skopeo_pushes_a_layout_to_docker_registry_and_reads_it_back_exactly() {
    let registry = DockerRegistry::start();
    let image = TestImage::build("smoke", "v1");
    let remote = format!("docker://{}/kiln-test/app:v1", registry.host());
    skopeo::copy(&image.reference(), &remote, &[]);

    assert_eq!(skopeo::inspect_raw(&remote, &[]), image.manifest);
    assert_eq!(
        skopeo::inspect_digest(&remote, &[]),
        image.manifest_digest().to_string()
    );

    let back = tempfile::tempdir().unwrap();
    let local = format!("oci:{}:v1", back.path().display());
    skopeo::copy(&remote, &local, &[]);
    image.assert_pulled_into(back.path());
    assert_eq!(
        registry.count_requests("PUT", "/manifests/v1"),
        1,
        "{}",
        registry.log()
    );
}

async fn read_all(
    stream: &mut futures::stream::BoxStream<'static, Result<bytes::Bytes, UpstreamError>>,
) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

#[tokio::test]
async fn upstream_client_reads_docker_registry() {
    let mut registry = DockerRegistry::start();
    let image = TestImage::build("upstream", "v1");
    skopeo::copy(
        &image.reference(),
        &format!("docker://{}/kiln-test/app:v1", registry.host()),
        &[],
    );
    let upstream = Upstream::new(UpstreamConfig {
        name: "local".into(),
        url: registry.url(),
        credentials: None,
    })
    .unwrap();
    let tag = Reference::Tag(Tag::parse("v1").unwrap());

    let manifest = upstream
        .fetch_manifest("kiln-test/app", &tag, &MANIFEST_MEDIA_TYPES)
        .await
        .unwrap();
    assert_eq!(manifest.bytes.as_ref(), image.manifest.as_slice());
    assert_eq!(manifest.digest, image.manifest_digest());
    assert_eq!(manifest.media_type, OCI_MANIFEST);

    let by_digest = Reference::Digest(image.manifest_digest());
    let again = upstream
        .fetch_manifest("kiln-test/app", &by_digest, &MANIFEST_MEDIA_TYPES)
        .await
        .unwrap();
    assert_eq!(again, manifest);

    let head = upstream
        .head_manifest("kiln-test/app", &tag, &MANIFEST_MEDIA_TYPES)
        .await
        .unwrap();
    assert_eq!(head.digest, image.manifest_digest());
    assert_eq!(head.media_type, OCI_MANIFEST);
    assert_eq!(head.size, Some(image.manifest.len() as u64));

    let mut blob = upstream
        .fetch_blob("kiln-test/app", &image.layer_digest())
        .await
        .unwrap();
    assert_eq!(blob.size, Some(image.layer.len() as u64));
    let bytes = read_all(&mut blob.stream).await;
    let mut hasher = Hasher::new();
    hasher.update(&bytes);
    assert_eq!(hasher.finish(), image.layer_digest());
    // The access log counts what the upstream served: the harness's way to prove
    // single-flight fetches later.
    let blob_path = format!("/blobs/{}", image.layer_digest());
    assert_eq!(
        registry.count_requests("GET", &blob_path),
        1,
        "{}",
        registry.log()
    );

    let missing_tag = Reference::Tag(Tag::parse("nope").unwrap());
    for result in [
        upstream
            .fetch_manifest("kiln-test/app", &missing_tag, &MANIFEST_MEDIA_TYPES)
            .await
            .map(|_| ()),
        upstream
            .head_manifest("kiln-test/other", &tag, &MANIFEST_MEDIA_TYPES)
            .await
            .map(|_| ()),
        upstream
            .fetch_blob("kiln-test/app", &Digest::of(b"absent"))
            .await
            .map(|_| ()),
    ] {
        let err = result.unwrap_err();
        assert!(matches!(err, UpstreamError::NotFound { .. }), "{err:?}");
    }

    registry.stop();
    let err = upstream
        .head_manifest("kiln-test/app", &tag, &MANIFEST_MEDIA_TYPES)
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Unavailable { .. }), "{err:?}");
    assert!(err.allows_stale());
    let err = upstream
        .fetch_blob("kiln-test/app", &image.layer_digest())
        .await
        .unwrap_err();
    assert!(err.allows_stale(), "{err:?}");

    registry.restart();
    let head = upstream
        .head_manifest("kiln-test/app", &tag, &MANIFEST_MEDIA_TYPES)
        .await
        .unwrap();
    assert_eq!(head.digest, image.manifest_digest());
}

#[tokio::test]
async fn an_upstream_blob_transfer_cut_short_is_unavailable_and_a_retry_succeeds() {
    let registry = DockerRegistry::start();
    let image = TestImage::build("cut", "v1");
    skopeo::copy(
        &image.reference(),
        &format!("docker://{}/kiln-test/app:v1", registry.host()),
        &[],
    );
    let proxy = CutProxy::start(&registry.url()).await;
    let upstream = Upstream::new(UpstreamConfig {
        name: "local".into(),
        url: proxy.url(),
        credentials: None,
    })
    .unwrap();

    proxy.cut_blobs_after(Some(100));
    let mut blob = upstream
        .fetch_blob("kiln-test/app", &image.layer_digest())
        .await
        .unwrap();
    let mut received = 0;
    let err = loop {
        match blob.stream.next().await {
            Some(Ok(chunk)) => received += chunk.len(),
            Some(Err(err)) => break err,
            None => panic!("a cut transfer ended cleanly after {received} bytes"),
        }
    };
    assert!(received <= 100, "{received}");
    assert!(matches!(err, UpstreamError::Unavailable { .. }), "{err:?}");
    assert!(err.allows_stale());

    proxy.cut_blobs_after(None);
    let mut blob = upstream
        .fetch_blob("kiln-test/app", &image.layer_digest())
        .await
        .unwrap();
    assert_eq!(read_all(&mut blob.stream).await, image.layer);
    let blob_path = format!("/blobs/{}", image.layer_digest());
    assert_eq!(proxy.count("GET", &blob_path), 2);
}

// ---------------------------------------------------------------------------------------
// Kiln's cache service over a real socket, with real clients and a real upstream.
// ---------------------------------------------------------------------------------------

use common::kiln_server::{self, ADMIN, KilnServer};
use kiln::cacheapi::token::{TokenAction, TokenKey};

/// Runs blocking client work (skopeo) off the runtime that serves Kiln.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.unwrap()
}

/// Pulls `reference` with skopeo into a fresh OCI layout and checks the pull was exact: the
/// reported digest is the image's, and the layout holds its blobs byte for byte.
async fn pull_exact(reference: &str, image: &TestImage) -> tempfile::TempDir {
    let into = tempfile::tempdir().unwrap();
    let (from, to) = (
        reference.to_owned(),
        format!("oci:{}:v1", into.path().display()),
    );
    let digest = blocking(move || {
        skopeo::copy(&from, &to, &[]);
        skopeo::inspect_digest(&from, &[])
    })
    .await;
    assert_eq!(digest, image.manifest_digest().to_string());
    image.assert_pulled_into(into.path());
    into
}

fn http() -> reqwest::Client {
    kiln::tls::install_crypto_provider();
    reqwest::Client::new()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pushes_pulls_copies_and_deletes_through_kiln_with_exact_digests() {
    let server = KilnServer::start(kiln_server::Config::default()).await;
    let image = TestImage::build("kiln-interop", "v1");
    let remote = format!("docker://{}/team-a/app:v1", server.host());
    let copy = format!("docker://{}/team-a/copy:v2", server.host());
    let (reference, manifest, manifest_digest) = (
        image.reference(),
        image.manifest.clone(),
        image.manifest_digest(),
    );
    let (r, c) = (remote.clone(), copy.clone());
    blocking(move || {
        skopeo::copy(&reference, &r, &[]);
        assert_eq!(skopeo::inspect_raw(&r, &[]), manifest);
        assert_eq!(skopeo::inspect_digest(&r, &[]), manifest_digest.to_string());
        // Between repositories of the same registry (skopeo mounts the blobs).
        skopeo::copy(&r, &c, &[]);
        assert_eq!(skopeo::inspect_digest(&c, &[]), manifest_digest.to_string());
    })
    .await;
    let back = tempfile::tempdir().unwrap();
    let local = format!("oci:{}:v1", back.path().display());
    let r = remote.clone();
    blocking(move || skopeo::copy(&r, &local, &[])).await;
    image.assert_pulled_into(back.path());
    let r = remote.clone();
    blocking(move || {
        skopeo::delete(&r, &[]);
        assert!(skopeo::try_skopeo(&["inspect", "--tls-verify=false", &r]).is_err());
    })
    .await;
    // The copy is untouched by the delete in the other repository.
    let c = copy.clone();
    blocking(move || skopeo::inspect_digest(&c, &[])).await;
    let tags: serde_json::Value = http()
        .get(format!("{}/v2/team-a/copy/tags/list", server.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        tags,
        serde_json::json!({"name": "team-a/copy", "tags": ["v2"]})
    );
    server.stop().await.unwrap();
}

/// docker-registry upstream with one image pushed, a cut/count proxy in front of it, and
/// Kiln mirroring the proxy as `local`.
async fn mirror_setup(
    seed: &str,
    ttl: Option<std::time::Duration>,
) -> (DockerRegistry, TestImage, CutProxy, KilnServer) {
    let upstream = DockerRegistry::start();
    let image = TestImage::build(seed, "v1");
    let (reference, target) = (
        image.reference(),
        format!("docker://{}/kiln-test/app:v1", upstream.host()),
    );
    blocking(move || skopeo::copy(&reference, &target, &[])).await;
    let proxy = CutProxy::start(&upstream.url()).await;
    let server = KilnServer::start(kiln_server::Config {
        mirrors: vec![("local".into(), proxy.url())],
        mirror_ttl: ttl,
        ..kiln_server::Config::default()
    })
    .await;
    (upstream, image, proxy, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_pull_through_the_mirror_is_exact_and_cached() {
    let (upstream, image, proxy, server) = mirror_setup("mirror-cold", None).await;
    let mirrored = format!("docker://{}/local/kiln-test/app:v1", server.host());
    pull_exact(&mirrored, &image).await;
    let layer_path = format!("/blobs/{}", image.layer_digest());
    assert_eq!(proxy.count("GET", &layer_path), 1);
    // The blob is in the store now, verified: a second pull does not ask the upstream.
    assert!(server.store.blob(image.layer_digest()).unwrap().is_some());
    let answer = http()
        .get(format!(
            "{}/v2/local/kiln-test/app/blobs/{}",
            server.url(),
            image.layer_digest()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.headers()["cache-status"], "kiln; hit");
    assert_eq!(
        answer.bytes().await.unwrap().as_ref(),
        image.layer.as_slice()
    );
    assert_eq!(proxy.count("GET", &layer_path), 1);

    // containerd's mirror requests name the upstream's repository and its host in `ns`.
    let by_ns = http()
        .get(format!(
            "{}/v2/kiln-test/app/manifests/v1?ns={}",
            server.url(),
            proxy.host()
        ))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(by_ns.status(), 200);
    assert_eq!(by_ns.headers()["cache-status"], "kiln; hit");
    assert_eq!(
        by_ns.bytes().await.unwrap().as_ref(),
        image.manifest.as_slice()
    );
    // Config and layer were fetched once each; every other answer came from the store.
    let metrics = metrics_text(&server).await;
    assert!(
        metrics.contains("kiln_cache_mirror_answers_total{kind=\"blob\",outcome=\"miss\"} 2"),
        "{metrics}"
    );
    drop(upstream);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_cold_pulls_fetch_each_blob_from_upstream_once() {
    let (upstream, image, proxy, server) = mirror_setup("mirror-eight", None).await;
    // A slow upstream, so that the eight pulls overlap on the same fetch.
    proxy.delay_blobs(Some(std::time::Duration::from_millis(1500)));
    let mirrored = format!("docker://{}/local/kiln-test/app:v1", server.host());
    let mut pulls = Vec::new();
    let dirs: Vec<tempfile::TempDir> = (0..8).map(|_| tempfile::tempdir().unwrap()).collect();
    for dir in &dirs {
        let (from, to) = (mirrored.clone(), format!("oci:{}:v1", dir.path().display()));
        pulls.push(tokio::task::spawn_blocking(move || {
            skopeo::copy(&from, &to, &[])
        }));
    }
    for pull in pulls {
        pull.await.unwrap();
    }
    for dir in &dirs {
        assert_eq!(
            oci_layout::read_blob(dir.path(), &image.layer_digest()),
            image.layer
        );
    }
    let layer_path = format!("/blobs/{}", image.layer_digest());
    assert_eq!(
        upstream.count_requests("GET", &layer_path),
        1,
        "{}",
        upstream.log()
    );
    assert_eq!(proxy.count("GET", &layer_path), 1);
    assert_eq!(
        proxy.count("GET", &format!("/blobs/{}", image.config_digest())),
        1
    );
    // The pulls that came while the fetch ran were streamed from it, not from the store.
    let collapsed = metric(
        &server,
        "kiln_cache_mirror_answers_total{kind=\"blob\",outcome=\"collapsed\"}",
    )
    .await;
    assert!(collapsed >= 1, "no pull shared the upstream fetch");
    server.stop().await.unwrap();
}

/// The server's `/metrics` page.
async fn metrics_text(server: &KilnServer) -> String {
    http()
        .get(format!("{}/metrics", server.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the metric line that starts with `series` (0 when absent).
async fn metric(server: &KilnServer, series: &str) -> u64 {
    metrics_text(server)
        .await
        .lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_with_the_upstream_stopped_is_served_from_the_cache() {
    // A zero TTL: every pull by tag asks the upstream first.
    let (mut upstream, image, _proxy, server) =
        mirror_setup("mirror-stale", Some(std::time::Duration::ZERO)).await;
    let mirrored = format!("docker://{}/local/kiln-test/app:v1", server.host());
    let m = mirrored.clone();
    blocking(move || skopeo::inspect_digest(&m, &[])).await;
    let warm = tempfile::tempdir().unwrap();
    let (m, to) = (
        mirrored.clone(),
        format!("oci:{}:v1", warm.path().display()),
    );
    blocking(move || skopeo::copy(&m, &to, &[])).await;

    upstream.stop();
    pull_exact(&mirrored, &image).await;
    let answer = http()
        .get(format!(
            "{}/v2/local/kiln-test/app/manifests/v1",
            server.url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(
        answer.headers()["cache-status"],
        "kiln; fwd=stale; detail=stale-if-error"
    );
    assert!(answer.headers().contains_key("warning"));
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_transfer_cut_mid_blob_commits_nothing_and_a_retry_succeeds() {
    let (_upstream, image, proxy, server) = mirror_setup("mirror-cut", None).await;
    let blob_url = format!(
        "{}/v2/local/kiln-test/app/blobs/{}",
        server.url(),
        image.layer_digest()
    );
    proxy.cut_blobs_after(Some(100));
    let cut = http().get(&blob_url).send().await.unwrap();
    // The answer started (the upstream had started too) and then broke off.
    assert!(
        cut.bytes().await.is_err(),
        "a cut transfer must not end cleanly"
    );
    // Nothing became visible: no blob, no link, no temp file left behind.
    let store = server.store.clone();
    let digest = image.layer_digest();
    assert!(store.blob(digest).unwrap().is_none());
    let tmp = store.layout().tmp();
    // The writer removes its temp file as it is dropped, right after the cut.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::fs::read_dir(&tmp).unwrap().count() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);

    proxy.cut_blobs_after(None);
    let whole = http().get(&blob_url).send().await.unwrap();
    assert_eq!(whole.status(), 200);
    let bytes = whole.bytes().await.unwrap();
    assert_eq!(Digest::of(&bytes), digest);
    assert!(store.blob(digest).unwrap().is_some());
    let layer_path = format!("/blobs/{digest}");
    assert_eq!(proxy.count("GET", &layer_path), 2);
    // And a whole pull through the mirror now works with exact digests.
    let back = tempfile::tempdir().unwrap();
    let (from, to) = (
        format!("docker://{}/local/kiln-test/app:v1", server.host()),
        format!("oci:{}:v1", back.path().display()),
    );
    blocking(move || skopeo::copy(&from, &to, &[])).await;
    assert_eq!(oci_layout::read_blob(back.path(), &digest), image.layer);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_matrix_holds_over_http_and_skopeo_uses_the_token_flow() {
    let (_upstream, image, _proxy, mirror) = mirror_setup("auth-upstream", None).await;
    drop(mirror);
    let server = KilnServer::start(kiln_server::Config {
        tokens: true,
        mirrors: vec![("local".into(), _proxy.url())],
        ..kiln_server::Config::default()
    })
    .await;
    let key = kiln_server::key();
    let a = kiln_server::token("team-a", &[TokenAction::Pull, TokenAction::Push], &key);
    let a_pull = kiln_server::token("team-a", &[TokenAction::Pull], &key);
    let expired = key
        .mint(&kiln::cacheapi::token::Claims::new(
            "b",
            "team-a",
            [TokenAction::Pull],
            1_000_000,
            60,
        ))
        .unwrap();
    let forged = kiln_server::token(
        "team-a",
        &[TokenAction::Pull],
        &TokenKey::from_bytes(&[1u8; 32]).unwrap(),
    );

    // skopeo with the token as the password: 401 → /token (Basic) → Bearer.
    let creds = format!("kiln:{a}");
    let (reference, host) = (image.reference(), server.host());
    let (own, other, mirror_repo) = (
        format!("docker://{host}/team-a/app:v1"),
        format!("docker://{host}/team-b/app:v1"),
        format!("docker://{host}/local/kiln-test/app:v1"),
    );
    let pushed = {
        let (reference, own, creds) = (reference.clone(), own.clone(), creds.clone());
        blocking(move || {
            skopeo::copy(&reference, &own, &["--dest-creds", &creds]);
            skopeo::inspect_digest(&own, &["--creds", &creds])
        })
        .await
    };
    assert_eq!(pushed, image.manifest_digest().to_string());
    let refused = {
        let (reference, creds) = (reference.clone(), creds.clone());
        blocking(move || {
            (
                skopeo::try_copy(&reference, &other, &["--dest-creds", &creds]),
                skopeo::try_copy(&reference, &mirror_repo, &["--dest-creds", &creds]),
            )
        })
        .await
    };
    for (what, result) in [("namespace B", refused.0), ("the mirror", refused.1)] {
        let err = result.expect_err(what);
        assert!(
            err.contains("denied") || err.contains("403"),
            "{what}: {err}"
        );
    }
    // Anyone's build may pull through the mirror.
    let mirror_pull = format!("docker://{host}/local/kiln-test/app:v1");
    let pull_creds = format!(
        "kiln:{}",
        kiln_server::token("team-b", &[TokenAction::Pull], &key)
    );
    let digest =
        blocking(move || skopeo::inspect_digest(&mirror_pull, &["--creds", &pull_creds])).await;
    assert_eq!(digest, image.manifest_digest().to_string());

    let manifest_of = |repo: &str| format!("{}/v2/{repo}/manifests/v1", server.url());
    let cases = [
        ("A pulls A", &a_pull, manifest_of("team-a/app"), 200),
        ("A pulls B", &a, manifest_of("team-b/app"), 403),
        ("expired", &expired, manifest_of("team-a/app"), 401),
        ("wrong signature", &forged, manifest_of("team-a/app"), 401),
        (
            "A catalog",
            &a,
            format!("{}/v2/_catalog", server.url()),
            403,
        ),
        ("A admin", &a, format!("{}/admin/v1/du", server.url()), 403),
    ];
    for (label, token, url, status) in cases {
        let answer = http()
            .get(&url)
            .bearer_auth(token)
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), status, "{label}");
    }
    let push_mirror = http()
        .post(format!(
            "{}/v2/local/kiln-test/app/blobs/uploads/",
            server.url()
        ))
        .bearer_auth(&a)
        .send()
        .await
        .unwrap();
    assert_eq!(push_mirror.status(), 403);
    let admin = http()
        .get(format!("{}/admin/v1/du", server.url()))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 200);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_requests_in_flight_and_releases_the_store() {
    let mut server = KilnServer::start(kiln_server::Config::default()).await;
    let start = http()
        .post(format!("{}/v2/a/blobs/uploads/", server.url()))
        .send()
        .await
        .unwrap();
    let session = start.headers()["location"].to_str().unwrap().to_owned();
    // A chunk whose body trickles in: the shutdown begins while it is in flight.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let body = reqwest::Body::wrap_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let patch = tokio::spawn(
        http()
            .patch(format!("{}{session}", server.url()))
            .body(body)
            .send(),
    );
    tx.send(Ok(b"first half ".to_vec())).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    server.begin_shutdown();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // New connections are refused while the old one finishes.
    assert!(
        http()
            .get(format!("{}/v2/", server.url()))
            .send()
            .await
            .is_err(),
        "the listener should be closed"
    );
    tx.send(Ok(b"second half".to_vec())).await.unwrap();
    drop(tx);
    let answer = patch.await.unwrap().unwrap();
    assert_eq!(answer.status(), 202);
    assert_eq!(answer.headers()["range"], "0-21");
    let root = server.root.clone();
    let store = server.store.clone();
    drop(store);
    server.stop().await.unwrap();
    // The store was closed: another process (here, another open) may take it.
    kiln::store::Store::open(&root, kiln::store::StoreOptions::default()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrored_tags_are_revalidated_with_head_and_follow_the_upstream() {
    // A zero TTL: every request by tag revalidates.
    let (upstream, image, proxy, server) =
        mirror_setup("mirror-moves", Some(std::time::Duration::ZERO)).await;
    let url = format!("{}/v2/local/kiln-test/app/manifests/v1", server.url());
    let get = || async {
        let answer = http()
            .get(&url)
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        let status = answer.status().as_u16();
        let cache = answer
            .headers()
            .get("cache-status")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, cache, answer.bytes().await.unwrap())
    };
    let (status, cache, body) = get().await;
    assert_eq!((status, cache.as_str()), (200, "kiln; fwd=miss; stored"));
    assert_eq!(body.as_ref(), image.manifest.as_slice());
    let (status, cache, _) = get().await;
    assert_eq!(
        (status, cache.as_str()),
        (200, "kiln; fwd=stale; fwd-status=200")
    );
    assert_eq!(proxy.count("GET", "/manifests/v1"), 1);
    assert_eq!(proxy.count("HEAD", "/manifests/v1"), 1);

    // The tag moves upstream: the mirror follows.
    let moved = TestImage::build("mirror-moved", "v1");
    let (reference, target) = (
        moved.reference(),
        format!("docker://{}/kiln-test/app:v1", upstream.host()),
    );
    blocking(move || skopeo::copy(&reference, &target, &[])).await;
    let (status, cache, body) = get().await;
    assert_eq!(
        (status, cache.as_str()),
        (200, "kiln; fwd=stale; fwd-status=200; stored")
    );
    assert_eq!(body.as_ref(), moved.manifest.as_slice());

    // The tag is deleted upstream: so it is in the mirror.
    let target = format!("docker://{}/kiln-test/app:v1", upstream.host());
    blocking(move || skopeo::delete(&target, &[])).await;
    let (status, _, _) = get().await;
    assert_eq!(status, 404);
    assert!(
        server
            .store
            .tags("local/kiln-test/app", None, None)
            .unwrap()
            .is_empty()
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kiln_cache_du_prune_verify_with_server_use_the_admin_api() {
    let server = KilnServer::start(kiln_server::Config::default()).await;
    let image = TestImage::build("online-cli", "v1");
    let (reference, target) = (
        image.reference(),
        format!("docker://{}/team-a/app:v1", server.host()),
    );
    blocking(move || skopeo::copy(&reference, &target, &[])).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{ADMIN}\n")).unwrap();
    let (url, token_file) = (server.url(), token_file.display().to_string());
    let run = move |args: &[&str]| {
        let mut all: Vec<String> = vec!["cache".into()];
        all.extend(args.iter().map(|a| a.to_string()));
        all.extend(["--server".into(), url.clone()]);
        all.extend(["--admin-token-file".into(), token_file.clone()]);
        std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(&all)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let (du, verify, table, dry, pruned, no_token) = blocking(move || {
        let no_token = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["cache", "du", "--server", "http://127.0.0.1:1"])
            .output()
            .unwrap();
        (
            run(&["du", "--json"]),
            run(&["verify", "--json"]),
            run(&["du"]),
            run(&["prune", "--all", "--dry-run"]),
            run(&["prune", "--all", "--json"]),
            no_token,
        )
    })
    .await;
    for (what, output) in [
        ("du", &du),
        ("verify", &verify),
        ("du table", &table),
        ("dry run", &dry),
        ("prune", &pruned),
    ] {
        assert!(
            output.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let du: kiln::cacheapi::admin::DuReport = serde_json::from_slice(&du.stdout).unwrap();
    assert_eq!((du.blobs.count, du.tags), (3, 1));
    assert_eq!(du.repositories[0].name.as_str(), "team-a/app");
    let verify: kiln::cacheapi::admin::VerifyReport =
        serde_json::from_slice(&verify.stdout).unwrap();
    assert!(verify.is_clean() && verify.blobs_checked == 3, "{verify:?}");
    assert!(String::from_utf8_lossy(&table.stdout).contains("team-a/app"));
    assert!(String::from_utf8_lossy(&dry.stdout).contains("Would free"));
    let pruned: kiln::cacheapi::admin::PruneReport =
        serde_json::from_slice(&pruned.stdout).unwrap();
    assert!(pruned.freed_bytes > 0);
    assert!(server.store.listing().unwrap().is_empty());
    assert!(!no_token.status.success());
    assert!(
        String::from_utf8_lossy(&no_token.stderr).contains("--admin-token-file"),
        "{}",
        String::from_utf8_lossy(&no_token.stderr)
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_upload_session_expires_with_its_bytes() {
    let server = KilnServer::start(kiln_server::Config {
        upload_ttl: Some(std::time::Duration::from_millis(400)),
        ..kiln_server::Config::default()
    })
    .await;
    let start = http()
        .post(format!("{}/v2/team-a/cache/blobs/uploads/", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 202);
    let session = format!(
        "{}{}",
        server.url(),
        start.headers()["location"].to_str().unwrap()
    );
    let chunk = http()
        .patch(&session)
        .body(vec![7u8; 1 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(chunk.status(), 202);
    let temp_files = || std::fs::read_dir(server.root.join("tmp")).unwrap().count();
    assert_eq!(temp_files(), 1);
    assert_eq!(metric(&server, "kiln_cache_uploads_in_progress").await, 1);
    // Idle past the TTL (the check runs every TTL/4): gone, bytes and all.
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    let late = http().patch(&session).body("late").send().await.unwrap();
    assert_eq!(late.status(), 404);
    let body: serde_json::Value = late.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "BLOB_UPLOAD_UNKNOWN");
    assert_eq!(temp_files(), 0);
    assert_eq!(metric(&server, "kiln_cache_uploads_expired_total").await, 1);
    assert_eq!(metric(&server, "kiln_cache_uploads_in_progress").await, 0);
    assert!(server.store.verify(&Default::default()).unwrap().is_clean());
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_idle_connections_are_closed() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let server = KilnServer::start(kiln_server::Config {
        header_timeout: Some(std::time::Duration::from_millis(300)),
        ..kiln_server::Config::default()
    })
    .await;
    let closed_within = |mut stream: tokio::net::TcpStream| async move {
        let started = std::time::Instant::now();
        let mut sink = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            stream.read_to_end(&mut sink),
        )
        .await;
        assert!(read.is_ok(), "the server kept the connection open");
        (
            started.elapsed(),
            String::from_utf8_lossy(&sink).into_owned(),
        )
    };
    // Headers that never end.
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (after, _) = closed_within(slow).await;
    assert!(after < std::time::Duration::from_secs(3), "{after:?}");
    // A keep-alive connection that goes quiet after one request.
    let mut idle = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (_, answered) = closed_within(idle).await;
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    server.stop().await.unwrap();
}

#[test]
fn serve_refuses_an_open_api_on_the_network_unless_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["cache", "serve", "--listen", "0.0.0.0:0", "--root"])
        .arg(dir.path().join("store"))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refusing to serve on 0.0.0.0:0 without --token-key"),
        "{stderr}"
    );
    // Nothing was created: it refused before opening the store.
    assert!(!dir.path().join("store").exists());
}
