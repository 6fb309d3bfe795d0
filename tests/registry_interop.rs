//! Interop with real third-party registry software over real sockets: Debian's `skopeo`
//! and `docker-registry` (test-only I/O).
//!
//! The harness in `tests/common/` is checked here first (a layout image that skopeo pushes
//! to docker-registry and reads back with exact digests), then the mirror's upstream client
//! runs against docker-registry.

mod common;

use common::cut_proxy::CutProxy;
use common::docker_registry::DockerRegistry;
use common::oci_layout::{self, TestImage};
use common::skopeo;
use futures::StreamExt as _;
use kiln::digest::{Digest, Hasher};
use kiln::mirror::upstream::{
    MANIFEST_MEDIA_TYPES, OCI_MANIFEST, Upstream, UpstreamConfig, UpstreamError,
};
use kiln::registry::name::{Reference, Tag};

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
    for (digest, bytes) in [
        (image.manifest_digest(), &image.manifest),
        (image.config_digest(), &image.config),
        (image.layer_digest(), &image.layer),
    ] {
        assert_eq!(
            &oci_layout::read_blob(back.path(), &digest),
            bytes,
            "{digest}"
        );
    }
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
