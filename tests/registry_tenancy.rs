//! Tenancy over real sockets: what a namespace pushed is never visible to another one by
//! any route, and a mirror repository shows only what its own upstream served (test-only
//! I/O: Kiln's server on loopback, Debian's `docker-registry` as the upstream, `skopeo`).
//!
//! The attacker holds a valid build token of namespace `team-a` and knows the digests of
//! what `team-b` pushed. Every route under a mirror repository is tried with them: blob
//! `GET` and `HEAD` by path and by containerd's `?ns=`, a manifest digest as a blob and as
//! a manifest, a cross-repository mount out of the mirror, and the referrers API. Each must
//! answer exactly as it answers for a digest no one ever pushed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test stops where it fails

mod common;

use common::cut_proxy::CutProxy;
use common::docker_registry::DockerRegistry;
use common::kiln_server::{self, KilnServer};
use common::oci_layout::TestImage;
use common::skopeo;
use kiln::cacheapi::token::TokenAction;
use kiln::oci::digest::Digest;
use kiln::oci::media::OCI_MANIFEST;
use reqwest::Method;

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

fn http() -> reqwest::Client {
    kiln::tls::install_crypto_provider();
    reqwest::Client::new()
}

/// What the server answered: status, OCI error code (empty without one), `Cache-Status`
/// and body.
#[derive(Debug)]
struct Answer {
    status: u16,
    code: String,
    cache_status: String,
    body: Vec<u8>,
}

async fn call(method: Method, url: &str, token: &str, body: Option<Vec<u8>>) -> Answer {
    let mut request = http()
        .request(method, url)
        .bearer_auth(token)
        .header("accept", OCI_MANIFEST);
    if let Some(body) = body {
        request = request.header("content-type", OCI_MANIFEST).body(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let cache_status = response
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.bytes().await.unwrap().to_vec();
    let code = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["errors"][0]["code"].as_str().map(str::to_owned))
        .unwrap_or_default();
    Answer {
        status,
        code,
        cache_status,
        body,
    }
}

/// Pushes `bytes` as one blob into `repo` (a monolithic `POST ?digest=`).
async fn push_blob(server: &KilnServer, repo: &str, token: &str, bytes: &[u8]) -> Digest {
    let digest = Digest::of(bytes);
    let answer = http()
        .post(format!(
            "{}/v2/{repo}/blobs/uploads/?digest={digest}",
            server.url()
        ))
        .bearer_auth(token)
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 201, "push a blob into {repo}");
    digest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_a_namespace_pushed_is_visible_through_a_mirror_repository() {
    // The upstream holds one public image; Kiln mirrors it as docker.io, as in a cluster.
    let upstream = DockerRegistry::start();
    let public = TestImage::build("tenancy-public", "v1");
    let (reference, target) = (
        public.reference(),
        format!("docker://{}/kiln-test/app:v1", upstream.host()),
    );
    blocking(move || skopeo::copy(&reference, &target, &[])).await;
    let proxy = CutProxy::start(&upstream.url()).await;
    let server = KilnServer::start(kiln_server::Config {
        tokens: true,
        mirrors: vec![("docker.io".into(), proxy.url())],
        ..kiln_server::Config::default()
    })
    .await;
    let key = kiln_server::key();
    let b = kiln_server::token("team-b", &[TokenAction::Pull, TokenAction::Push], &key);
    let a = kiln_server::token("team-a", &[TokenAction::Pull, TokenAction::Push], &key);
    let a_pull = kiln_server::token("team-a", &[TokenAction::Pull], &key);
    let base = server.url();

    // team-b pushes a private image, a lone secret blob, and a signature of the public
    // image (a referrer whose subject anyone can name).
    let secret = TestImage::build("tenancy-secret", "v1");
    let (reference, own, creds) = (
        secret.reference(),
        format!("docker://{}/team-b/secret:v1", server.host()),
        format!("kiln:{b}"),
    );
    blocking(move || skopeo::copy(&reference, &own, &["--dest-creds", &creds])).await;
    let lone = push_blob(&server, "team-b/secret", &b, b"team-b's private bytes\n").await;
    let empty_config = push_blob(&server, "team-b/secret", &b, b"{}").await;
    let signature = kiln::store::fixtures::referrer_manifest(
        public.manifest_digest(),
        (empty_config, 2),
        "application/vnd.example.signature",
    );
    let signature_digest = Digest::of(&signature);
    let put = call(
        Method::PUT,
        &format!("{base}/v2/team-b/secret/manifests/{signature_digest}"),
        &b,
        Some(signature),
    )
    .await;
    assert_eq!(put.status, 201, "{put:?}");
    // team-b's build was FROM the public image: its layer's bytes are on disk already.
    push_blob(&server, "team-b/secret", &b, &public.layer).await;

    let private = [
        ("a lone blob", lone),
        ("a layer", secret.layer_digest()),
        ("a config", secret.config_digest()),
        ("a manifest", secret.manifest_digest()),
        ("a referrer", signature_digest),
    ];
    let never_pushed = Digest::of(b"no one ever pushed this");

    // The owner reads them; the attacker is refused on the owner's path.
    for (what, digest) in private {
        let own = call(
            Method::GET,
            &format!("{base}/v2/team-b/secret/blobs/{digest}"),
            &b,
            None,
        )
        .await;
        assert_eq!(own.status, 200, "team-b reads {what}");
        let refused = call(
            Method::GET,
            &format!("{base}/v2/team-b/secret/blobs/{digest}"),
            &a,
            None,
        )
        .await;
        assert_eq!((refused.status, refused.code.as_str()), (403, "DENIED"));
    }

    // Through the mirror, every private digest answers exactly as a digest no one pushed.
    let blob_urls = |digest: Digest| {
        [
            format!("{base}/v2/docker.io/anything/blobs/{digest}"),
            format!("{base}/v2/docker.io/kiln-test/app/blobs/{digest}"),
            format!("{base}/v2/library/x/blobs/{digest}?ns=docker.io"),
            format!("{base}/v2/kiln-test/app/blobs/{digest}?ns=docker.io"),
        ]
    };
    for token in [&a, &a_pull] {
        for method in [Method::GET, Method::HEAD] {
            for (i, url) in blob_urls(never_pushed).into_iter().enumerate() {
                let baseline = call(method.clone(), &url, token, None).await;
                assert_eq!(baseline.status, 404, "{method} {url}: {baseline:?}");
                for (what, digest) in private {
                    let url = &blob_urls(digest)[i];
                    let got = call(method.clone(), url, token, None).await;
                    assert_eq!(
                        (got.status, &got.code, &got.cache_status),
                        (baseline.status, &baseline.code, &baseline.cache_status),
                        "{what}: {method} {url}"
                    );
                    assert!(got.body.is_empty() || got.status == 404, "{what}: {url}");
                }
            }
        }
    }
    // The mirror asked its upstream instead of answering from the store.
    for (what, digest) in private {
        assert!(
            proxy.count("GET", &format!("/blobs/{digest}")) >= 1,
            "{what}: the upstream was never asked"
        );
    }

    // A private manifest digest fetched as a manifest of a mirror repository, then its
    // layer: nothing.
    for path in ["docker.io/y", "docker.io/kiln-test/app"] {
        let manifest = call(
            Method::GET,
            &format!("{base}/v2/{path}/manifests/{}", secret.manifest_digest()),
            &a,
            None,
        )
        .await;
        assert_eq!(
            (manifest.status, manifest.code.as_str()),
            (404, "MANIFEST_UNKNOWN"),
            "{path}: {manifest:?}"
        );
    }

    // A mount out of a mirror repository falls back to an upload (202), and the attacker's
    // repository holds nothing.
    for (what, digest) in private {
        let mount = call(
            Method::POST,
            &format!(
                "{base}/v2/team-a/stolen/blobs/uploads/?mount={digest}&from=docker.io/anything"
            ),
            &a,
            None,
        )
        .await;
        assert_eq!(mount.status, 202, "{what}: {mount:?}");
        let kept = call(
            Method::HEAD,
            &format!("{base}/v2/team-a/stolen/blobs/{digest}"),
            &a,
            None,
        )
        .await;
        assert_eq!(kept.status, 404, "{what}");
    }

    // The referrers API of the mirror repository does not list team-b's signature of the
    // public image; team-b's own repository does.
    let referrers = |repo: &str| format!("{base}/v2/{repo}/referrers/{}", public.manifest_digest());
    let listed = |answer: &Answer| -> Vec<String> {
        let index: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["digest"].as_str().unwrap().to_owned())
            .collect()
    };
    let own = call(Method::GET, &referrers("team-b/secret"), &b, None).await;
    assert_eq!(listed(&own), [signature_digest.to_string()]);
    let mirrored = call(Method::GET, &referrers("docker.io/kiln-test/app"), &a, None).await;
    assert_eq!(mirrored.status, 200);
    assert!(listed(&mirrored).is_empty(), "{:?}", listed(&mirrored));

    // No link was made: the store shows the private digests in team-b's repository only.
    for (what, digest) in private {
        for repo in [
            "docker.io/anything",
            "docker.io/kiln-test/app",
            "team-a/stolen",
        ] {
            assert!(
                server.store.stat_blob(repo, digest).unwrap().is_none(),
                "{what} became part of {repo}"
            );
        }
    }

    // What the upstream serves still pulls exactly, also a layer whose bytes a push
    // brought first: the upstream served it once (bytes shared on disk, visibility not).
    let layer_path = format!("/blobs/{}", public.layer_digest());
    let before = proxy.count("GET", &layer_path);
    let (mirrored, creds) = (
        format!("docker://{}/docker.io/kiln-test/app:v1", server.host()),
        format!("kiln:{a_pull}"),
    );
    let into = tempfile::tempdir().unwrap();
    let to = format!("oci:{}:v1", into.path().display());
    let digest = blocking(move || {
        skopeo::copy(&mirrored, &to, &["--src-creds", &creds]);
        skopeo::inspect_digest(&mirrored, &["--creds", &creds])
    })
    .await;
    assert_eq!(digest, public.manifest_digest().to_string());
    public.assert_pulled_into(into.path());
    assert_eq!(proxy.count("GET", &layer_path), before + 1);
    // Another repository of the same mirror shares what its upstream served.
    let shared = call(
        Method::GET,
        &format!(
            "{base}/v2/docker.io/library/other/blobs/{}",
            public.layer_digest()
        ),
        &a_pull,
        None,
    )
    .await;
    assert_eq!(
        (shared.status, shared.cache_status.as_str()),
        (200, "kiln; hit")
    );
    assert_eq!(shared.body, public.layer);
    assert_eq!(proxy.count("GET", &layer_path), before + 1);
    server.stop().await.unwrap();
}
