//! The OCI Distribution Spec v1.1 endpoint table, row by row, for sha256 and sha512
//! content alike, in-process (test only: a registry over a temp store).
//!
//! | ID | method | endpoint | success | failure | test |
//! | --- | --- | --- | --- | --- | --- |
//! | end-1 | GET | `/v2/` | 200 | 404/401 | [`end_1_base`] |
//! | end-2 | GET/HEAD | `/v2/<name>/blobs/<digest>` | 200 | 404 | [`end_2_blobs`] |
//! | end-3 | GET/HEAD | `/v2/<name>/manifests/<reference>` | 200 | 404 | [`end_3_and_7_manifests`] |
//! | end-4a | POST | `/v2/<name>/blobs/uploads/` | 202 | 404 | [`end_4_to_6_and_13_uploads`] |
//! | end-4b | POST | `/v2/<name>/blobs/uploads/?digest=<digest>` | 201/202 | 404/400 | [`end_4_to_6_and_13_uploads`] |
//! | end-5 | PATCH | `/v2/<name>/blobs/uploads/<reference>` | 202 | 404/416 | [`end_4_to_6_and_13_uploads`] |
//! | end-6 | PUT | `/v2/<name>/blobs/uploads/<reference>?digest=<digest>` | 201 | 404/400 | [`end_4_to_6_and_13_uploads`] |
//! | end-7 | PUT | `/v2/<name>/manifests/<reference>` | 201 | 404 | [`end_3_and_7_manifests`] |
//! | end-8a/b | GET | `/v2/<name>/tags/list[?n=&last=]` | 200 | 404 | [`end_8_tags`] |
//! | end-9 | DELETE | `/v2/<name>/manifests/<reference>` | 202 | 404/400/405 | [`end_9_and_10_deletes`] |
//! | end-10 | DELETE | `/v2/<name>/blobs/<digest>` | 202 | 404/405 | [`end_9_and_10_deletes`] |
//! | end-11 | POST | `/v2/<name>/blobs/uploads/?mount=<digest>&from=<other>` | 201 | 404 | [`end_11_mounts`] |
//! | end-12a/b | GET | `/v2/<name>/referrers/<digest>[?artifactType=]` | 200 | 404/400 | [`end_12_referrers`] |
//! | end-13 | GET | `/v2/<name>/blobs/uploads/<reference>` | 204 | 404 | [`end_4_to_6_and_13_uploads`] |
//!
//! The routes' own files hold the finer cases (ranges, content negotiation, pagination,
//! limits); this file holds the table, so that a row nobody tests shows here.

use axum::body::Body;
use axum::http::Method;

use crate::oci::digest::{Algorithm, Digest};
use crate::oci::media::{OCI_INDEX, OCI_MANIFEST};
use crate::registry::testing::{Answer, TestRegistry};

/// A manifest of `config` and `layers`, each `(digest, size)`, as JSON bytes; digests of
/// either algorithm.
fn manifest(
    config: (Digest, usize),
    layers: &[(Digest, usize)],
    subject: Option<Digest>,
) -> Vec<u8> {
    let descriptor = |media_type: &str, (digest, size): (Digest, usize)| serde_json::json!({"mediaType": media_type, "digest": digest, "size": size});
    let mut body = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", config),
        "layers": layers
            .iter()
            .map(|l| descriptor("application/vnd.oci.image.layer.v1.tar+gzip", *l))
            .collect::<Vec<_>>(),
    });
    if let Some(subject) = subject {
        body["subject"] = descriptor(OCI_MANIFEST, (subject, 2));
        body["artifactType"] = "application/vnd.example.sbom".into();
    }
    serde_json::to_vec(&body).unwrap()
}

async fn call(registry: &TestRegistry, method: Method, path: &str) -> Answer {
    registry.call(method, path, &[], Body::empty()).await
}

async fn put(registry: &TestRegistry, path: &str, content_type: &str, body: Vec<u8>) -> Answer {
    registry
        .call(Method::PUT, path, &[("content-type", content_type)], body)
        .await
}

/// Pushes `bytes` as a blob of `algorithm` into `repo` monolithically (end-4b).
async fn push(registry: &TestRegistry, repo: &str, algorithm: Algorithm, bytes: &[u8]) -> Digest {
    let digest = algorithm.digest(bytes);
    let answer = registry
        .call(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
            &[],
            bytes.to_vec(),
        )
        .await;
    answer.expect(201, None);
    assert_eq!(answer.header("docker-content-digest"), digest.to_string());
    assert_eq!(
        answer.header("location"),
        format!("/v2/{repo}/blobs/{digest}")
    );
    digest
}

#[tokio::test]
async fn end_1_base() {
    let registry = TestRegistry::open();
    call(&registry, Method::GET, "/v2/").await.expect(200, None);
    let closed = TestRegistry::authenticated();
    let answer = call(&closed, Method::GET, "/v2/").await;
    answer.expect(401, Some("UNAUTHORIZED"));
    assert!(answer.header("www-authenticate").starts_with("Bearer "));
}

#[tokio::test]
async fn end_2_blobs() {
    let registry = TestRegistry::open();
    for algorithm in Algorithm::ALL {
        for bytes in [&b""[..], b"some bytes"] {
            let digest = push(&registry, "a/b", algorithm, bytes).await;
            let path = format!("/v2/a/b/blobs/{digest}");
            let head = call(&registry, Method::HEAD, &path).await;
            head.expect(200, None);
            assert_eq!(head.header("content-length"), bytes.len().to_string());
            assert_eq!(head.header("content-type"), "application/octet-stream");
            assert_eq!(head.header("docker-content-digest"), digest.to_string());
            assert!(head.body.is_empty());
            let get = call(&registry, Method::GET, &path).await;
            get.expect(200, None);
            assert_eq!(get.body.as_ref(), bytes, "{digest}");
            assert_eq!(get.header("content-length"), bytes.len().to_string());
        }
        // Missing, in this repository or anywhere: 404 BLOB_UNKNOWN for both methods.
        let missing = algorithm.digest(b"never pushed");
        for method in [Method::GET, Method::HEAD] {
            let answer = call(
                &registry,
                method.clone(),
                &format!("/v2/a/b/blobs/{missing}"),
            )
            .await;
            answer.expect(404, None);
            if method == Method::GET {
                assert_eq!(answer.code(), "BLOB_UNKNOWN");
            }
        }
        let elsewhere = algorithm.digest(b"some bytes");
        call(
            &registry,
            Method::GET,
            &format!("/v2/a/c/blobs/{elsewhere}"),
        )
        .await
        .expect(404, Some("BLOB_UNKNOWN"));
    }
    // The same bytes under both algorithms are two blobs, each verified on its own.
    let store = registry.registry.store();
    for algorithm in Algorithm::ALL {
        assert!(
            store
                .blob(algorithm.digest(b"some bytes"))
                .unwrap()
                .is_some()
        );
    }
}

#[tokio::test]
async fn end_3_and_7_manifests() {
    let registry = TestRegistry::open();
    for algorithm in Algorithm::ALL {
        let config = push(&registry, "app", algorithm, b"{}").await;
        let layer = push(&registry, "app", algorithm, b"layer").await;
        let body = manifest((config, 2), &[(layer, 5)], None);
        // By tag: addressed with sha256, as the client did not name an algorithm.
        let tag = format!("v-{algorithm}");
        let by_tag = put(
            &registry,
            &format!("/v2/app/manifests/{tag}"),
            OCI_MANIFEST,
            body.clone(),
        )
        .await;
        by_tag.expect(201, None);
        assert_eq!(
            by_tag.header("docker-content-digest"),
            Digest::of(&body).to_string()
        );
        // By digest: addressed, and verified, with the algorithm the client named.
        let digest = algorithm.digest(&body);
        let by_digest = put(
            &registry,
            &format!("/v2/app/manifests/{digest}"),
            OCI_MANIFEST,
            body.clone(),
        )
        .await;
        by_digest.expect(201, None);
        assert_eq!(
            by_digest.header("docker-content-digest"),
            digest.to_string()
        );
        assert_eq!(
            by_digest.header("location"),
            format!("/v2/app/manifests/{digest}")
        );
        for reference in [tag.clone(), digest.to_string()] {
            let path = format!("/v2/app/manifests/{reference}");
            let head = call(&registry, Method::HEAD, &path).await;
            head.expect(200, None);
            assert_eq!(head.header("content-type"), OCI_MANIFEST);
            assert_eq!(head.header("content-length"), body.len().to_string());
            assert!(head.body.is_empty());
            let get = call(&registry, Method::GET, &path).await;
            get.expect(200, None);
            assert_eq!(get.body.as_ref(), body.as_slice());
        }
        // A digest that does not match the body: 400 DIGEST_INVALID, nothing stored.
        let wrong = algorithm.digest(b"another body");
        put(
            &registry,
            &format!("/v2/app/manifests/{wrong}"),
            OCI_MANIFEST,
            body.clone(),
        )
        .await
        .expect(400, Some("DIGEST_INVALID"));
        // A reference to a blob that is not there: 404 MANIFEST_BLOB_UNKNOWN.
        let absent = manifest((config, 2), &[(algorithm.digest(b"absent"), 6)], None);
        put(&registry, "/v2/app/manifests/absent", OCI_MANIFEST, absent)
            .await
            .expect(404, Some("MANIFEST_BLOB_UNKNOWN"));
        // Missing manifests: 404 MANIFEST_UNKNOWN for both methods and every reference form.
        let missing = algorithm.digest(b"no such manifest");
        for reference in [
            missing.to_string(),
            "nosuchtag".to_owned(),
            ".INVALID_MANIFEST_NAME".to_owned(),
        ] {
            let path = format!("/v2/app/manifests/{reference}");
            call(&registry, Method::GET, &path)
                .await
                .expect(404, Some("MANIFEST_UNKNOWN"));
            call(&registry, Method::HEAD, &path).await.expect(404, None);
        }
    }
    // An index whose entries use both algorithms.
    let child = manifest((Algorithm::Sha512.digest(b"{}"), 2), &[], None);
    let child_digest = Algorithm::Sha512.digest(&child);
    put(
        &registry,
        &format!("/v2/app/manifests/{child_digest}"),
        OCI_MANIFEST,
        child.clone(),
    )
    .await
    .expect(201, None);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": child_digest, "size": child.len()}],
    }))
    .unwrap();
    put(&registry, "/v2/app/manifests/multi", OCI_INDEX, index)
        .await
        .expect(201, None);
}

#[tokio::test]
async fn end_4_to_6_and_13_uploads() {
    let registry = TestRegistry::open();
    for algorithm in Algorithm::ALL {
        // end-4a + end-6: POST, then PUT with the whole body.
        let bytes = b"put in one go";
        let digest = algorithm.digest(bytes);
        let start = call(&registry, Method::POST, "/v2/up/blobs/uploads/").await;
        start.expect(202, None);
        let session = start.header("location").to_owned();
        registry
            .call(
                Method::PUT,
                &format!("{session}?digest={digest}"),
                &[],
                bytes.to_vec(),
            )
            .await
            .expect(201, None);
        assert_eq!(
            call(&registry, Method::GET, &format!("/v2/up/blobs/{digest}"))
                .await
                .body
                .as_ref(),
            bytes
        );

        // end-5 chunked (with Content-Range), end-13 progress, then end-6 with no body.
        let bytes = b"first second";
        let digest = algorithm.digest(bytes);
        let start = call(&registry, Method::POST, "/v2/up/blobs/uploads/").await;
        let session = start.header("location").to_owned();
        registry
            .call(
                Method::PATCH,
                &session,
                &[("content-range", "0-5"), ("content-length", "6")],
                &bytes[..6],
            )
            .await
            .expect(202, None);
        let progress = call(&registry, Method::GET, &session).await;
        progress.expect(204, None);
        assert_eq!(progress.header("range"), "0-5");
        // end-5 streamed: no Content-Range.
        registry
            .call(Method::PATCH, &session, &[], &bytes[6..])
            .await
            .expect(202, None);
        let done = registry
            .call(
                Method::PUT,
                &format!("{session}?digest={digest}"),
                &[],
                Body::empty(),
            )
            .await;
        done.expect(201, None);
        assert_eq!(done.header("docker-content-digest"), digest.to_string());
        assert_eq!(
            call(&registry, Method::GET, &format!("/v2/up/blobs/{digest}"))
                .await
                .body
                .as_ref(),
            bytes
        );
        // The session is gone: end-13 and end-5 answer 404 BLOB_UPLOAD_UNKNOWN.
        call(&registry, Method::GET, &session)
            .await
            .expect(404, Some("BLOB_UPLOAD_UNKNOWN"));
        registry
            .call(Method::PATCH, &session, &[], "more")
            .await
            .expect(404, Some("BLOB_UPLOAD_UNKNOWN"));

        // A digest that does not match: 400 DIGEST_INVALID, and the blob is not there.
        let start = call(&registry, Method::POST, "/v2/up/blobs/uploads/").await;
        let session = start.header("location").to_owned();
        let wrong = algorithm.digest(b"other");
        registry
            .call(
                Method::PUT,
                &format!("{session}?digest={wrong}"),
                &[],
                "content",
            )
            .await
            .expect(400, Some("DIGEST_INVALID"));
        call(&registry, Method::HEAD, &format!("/v2/up/blobs/{wrong}"))
            .await
            .expect(404, None);

        // end-4b with a digest that does not match.
        registry
            .call(
                Method::POST,
                &format!("/v2/up/blobs/uploads/?digest={wrong}"),
                &[],
                "content",
            )
            .await
            .expect(400, Some("DIGEST_INVALID"));
    }
    // Other algorithms: 400 DIGEST_INVALID naming the supported ones.
    let start = call(&registry, Method::POST, "/v2/up/blobs/uploads/").await;
    let session = start.header("location").to_owned();
    let refused = registry
        .call(
            Method::PUT,
            &format!("{session}?digest=sha384:abcd"),
            &[],
            "x",
        )
        .await;
    refused.expect(400, Some("DIGEST_INVALID"));
    assert!(
        format!("{:?}", refused.json()).contains("sha256 and sha512"),
        "{refused:?}"
    );
    registry
        .call(
            Method::POST,
            "/v2/up/blobs/uploads/?digest=md5:abcd",
            &[],
            "x",
        )
        .await
        .expect(400, Some("DIGEST_INVALID"));
}

#[tokio::test]
async fn end_8_tags() {
    let registry = TestRegistry::open();
    for tag in ["b", "a", "c"] {
        registry.push_image("t", tag, tag).await;
    }
    let all = call(&registry, Method::GET, "/v2/t/tags/list").await;
    all.expect(200, None);
    assert_eq!(
        all.json(),
        serde_json::json!({"name": "t", "tags": ["a", "b", "c"]})
    );
    let page = call(&registry, Method::GET, "/v2/t/tags/list?n=1&last=a").await;
    assert_eq!(page.json()["tags"], serde_json::json!(["b"]));
    call(&registry, Method::GET, "/v2/nothing/tags/list")
        .await
        .expect(404, Some("NAME_UNKNOWN"));
}

#[tokio::test]
async fn end_9_and_10_deletes() {
    let registry = TestRegistry::open();
    for algorithm in Algorithm::ALL {
        let config = push(&registry, "d", algorithm, b"{}").await;
        let body = manifest((config, 2), &[], None);
        let digest = algorithm.digest(&body);
        put(
            &registry,
            &format!("/v2/d/manifests/{digest}"),
            OCI_MANIFEST,
            body,
        )
        .await
        .expect(201, None);
        registry
            .delete_as_admin(&format!("/v2/d/manifests/{digest}"))
            .await
            .expect(202, None);
        registry
            .delete_as_admin(&format!("/v2/d/manifests/{digest}"))
            .await
            .expect(404, Some("MANIFEST_UNKNOWN"));
        registry
            .delete_as_admin(&format!("/v2/d/blobs/{config}"))
            .await
            .expect(202, None);
        registry
            .delete_as_admin(&format!("/v2/d/blobs/{config}"))
            .await
            .expect(404, Some("BLOB_UNKNOWN"));
    }
    registry
        .delete_as_admin("/v2/d/manifests/nosuchtag")
        .await
        .expect(404, Some("MANIFEST_UNKNOWN"));
}

#[tokio::test]
async fn end_11_mounts() {
    let registry = TestRegistry::open();
    for algorithm in Algorithm::ALL {
        let digest = push(&registry, "from", algorithm, b"shared layer").await;
        let mounted = call(
            &registry,
            Method::POST,
            &format!("/v2/to/blobs/uploads/?mount={digest}&from=from"),
        )
        .await;
        mounted.expect(201, None);
        assert_eq!(mounted.header("location"), format!("/v2/to/blobs/{digest}"));
        call(&registry, Method::HEAD, &format!("/v2/to/blobs/{digest}"))
            .await
            .expect(200, None);
        // Not in the source, or no source at all (an anonymous mount): an upload session.
        let absent = algorithm.digest(b"absent");
        for query in [
            format!("mount={absent}&from=from"),
            format!("mount={digest}"),
        ] {
            call(
                &registry,
                Method::POST,
                &format!("/v2/other/blobs/uploads/?{query}"),
            )
            .await
            .expect(202, None);
        }
    }
}

#[tokio::test]
async fn end_12_referrers() {
    let registry = TestRegistry::open();
    for algorithm in Algorithm::ALL {
        let config = push(&registry, "r", algorithm, b"{}").await;
        let subject = manifest((config, 2), &[], None);
        let subject_digest = algorithm.digest(&subject);
        put(
            &registry,
            &format!("/v2/r/manifests/{subject_digest}"),
            OCI_MANIFEST,
            subject,
        )
        .await
        .expect(201, None);
        let sbom = manifest((config, 2), &[], Some(subject_digest));
        let sbom_digest = algorithm.digest(&sbom);
        let pushed = put(
            &registry,
            &format!("/v2/r/manifests/{sbom_digest}"),
            OCI_MANIFEST,
            sbom,
        )
        .await;
        pushed.expect(201, None);
        assert_eq!(pushed.header("oci-subject"), subject_digest.to_string());
        for query in ["", "?artifactType=application/vnd.example.sbom"] {
            let listed = call(
                &registry,
                Method::GET,
                &format!("/v2/r/referrers/{subject_digest}{query}"),
            )
            .await;
            listed.expect(200, None);
            assert_eq!(listed.header("content-type"), OCI_INDEX);
            let digests: Vec<String> = listed.json()["manifests"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["digest"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(digests, [sbom_digest.to_string()], "{query}");
        }
        let none = call(
            &registry,
            Method::GET,
            &format!("/v2/r/referrers/{}", algorithm.digest(b"x")),
        )
        .await;
        none.expect(200, None);
        assert_eq!(none.json()["manifests"], serde_json::json!([]));
    }
    call(&registry, Method::GET, "/v2/r/referrers/sha384:00")
        .await
        .expect(400, Some("DIGEST_INVALID"));
}
