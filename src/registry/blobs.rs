//! Blob routes: `HEAD`/`GET /v2/<name>/blobs/<digest>` (with `Range`: 206, 416) and
//! `DELETE`; mirror repositories go through the pull-through mirror (I/O: the store, the
//! mirror).

use axum::body::Body;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::oci::digest::Digest;
use crate::oci::name::RepoName;
use crate::registry::error::RegistryError;
use crate::registry::headers::{
    ByteRange, CACHE_STATUS, DOCKER_CONTENT_DIGEST, RangeRequest, parse_range,
};
use crate::registry::mirror::MirrorError;
use crate::registry::mirror::blobs::{BlobAnswer, BlobWant};
use crate::registry::request::{Reply, Request};
use crate::store::stream::read_file;

/// Content is addressed by digest and never changes: clients may cache it for a year.
const IMMUTABLE: &str = "max-age=31536000";

/// The headers every blob answer carries.
fn blob_reply(status: StatusCode, digest: Digest) -> Reply {
    Reply::new(status)
        .header(DOCKER_CONTENT_DIGEST, digest.to_string())
        .header(header::ETAG, format!("\"{digest}\""))
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, IMMUTABLE)
}

/// `HEAD` and `GET`.
pub(crate) async fn get(
    request: &Request,
    name: &RepoName,
    digest: Digest,
) -> Result<Response, RegistryError> {
    let head = request.method == Method::HEAD;
    let range = request
        .headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok());
    let mut cache_status = None;
    if let Some(mirror) = request
        .registry
        .mirror()
        .filter(|mirror| mirror.is_mirror(name))
    {
        let want = match (head, range) {
            (true, _) => BlobWant::Head,
            (false, None) => BlobWant::Whole,
            (false, Some(_)) => BlobWant::Range,
        };
        match mirror.blob(name, digest, want).await {
            Ok(BlobAnswer::Stored(status)) => cache_status = Some(status),
            Ok(BlobAnswer::Size(size, status)) => {
                return Ok(blob_reply(StatusCode::OK, digest)
                    .header(header::CONTENT_LENGTH, size.to_string())
                    .header(CACHE_STATUS, status.header_value())
                    .into_response());
            }
            Ok(BlobAnswer::Streaming { size, body, status }) => {
                let mut reply = blob_reply(StatusCode::OK, digest)
                    .header(CACHE_STATUS, status.header_value())
                    .body(Body::from_stream(body));
                if let Some(size) = size {
                    reply = reply.header(header::CONTENT_LENGTH, size.to_string());
                }
                return Ok(reply.into_response());
            }
            Err(err) => return Err(mirror_error(err, Missing::Blob(digest))),
        }
    }
    let repo = name.to_string();
    let with_status = |reply: Reply| match &cache_status {
        Some(status) => reply.header(CACHE_STATUS, status.header_value()),
        None => reply,
    };
    if head {
        let info = request
            .registry
            .blocking("look up a blob", move |store| {
                store.stat_blob(&repo, digest)
            })
            .await?
            .ok_or(RegistryError::BlobUnknown { digest })?;
        // A push checking before it skips the upload: GC's grace keeps the blob for it.
        request.registry.store().check(digest);
        return Ok(with_status(blob_reply(StatusCode::OK, digest))
            .header(header::CONTENT_LENGTH, info.size.to_string())
            .into_response());
    }
    let reader = request
        .registry
        .blocking("open a blob", move |store| store.open_blob(&repo, digest))
        .await?
        .ok_or(RegistryError::BlobUnknown { digest })?;
    request.registry.store().touch(digest);
    let size = reader.size();
    let (status, part) = match parse_range(range, size) {
        RangeRequest::Whole => (StatusCode::OK, None),
        RangeRequest::Part(part) => (StatusCode::PARTIAL_CONTENT, Some(part)),
        RangeRequest::Unsatisfiable => {
            let mut response = RegistryError::RangeNotSatisfiable {
                reason: format!("the blob is {size} bytes"),
            }
            .into_response();
            if let Ok(value) = format!("bytes */{size}").parse() {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            return Ok(response);
        }
    };
    let ByteRange { start, .. } = part.unwrap_or(ByteRange {
        start: 0,
        end: size.saturating_sub(1),
    });
    let len = part.map_or(size, |p| p.len());
    let mut reply = with_status(blob_reply(status, digest))
        .header(header::CONTENT_LENGTH, len.to_string())
        .body(Body::from_stream(read_file(reader.into_file(), start, len)));
    if let Some(part) = part {
        reply = reply.header(header::CONTENT_RANGE, part.content_range(size));
    }
    Ok(reply.into_response())
}

/// `DELETE`: removes the blob from the repository (202); GC reclaims it when nothing else
/// holds it.
pub(crate) async fn delete(
    request: &Request,
    name: &RepoName,
    digest: Digest,
) -> Result<Response, RegistryError> {
    let repo = name.to_string();
    let removed = request
        .registry
        .blocking("delete a blob", move |store| store.unlink(&repo, digest))
        .await?;
    if !removed {
        return Err(RegistryError::BlobUnknown { digest });
    }
    Ok(Reply::new(StatusCode::ACCEPTED)
        .header(header::CONTENT_LENGTH, "0")
        .into_response())
}

/// What a mirror request was for, to name it in a 404.
pub(crate) enum Missing {
    /// A blob.
    Blob(Digest),
    /// A manifest, by its reference as written.
    Manifest(String),
}

/// The answer to a mirror failure: a 404 when the upstream says there is no such thing, a
/// 503 when it cannot answer (nothing cached stood in), a 403 when it refuses.
pub(crate) fn mirror_error(err: MirrorError, missing: Missing) -> RegistryError {
    use crate::registry::mirror::upstream::UpstreamError;
    match err {
        MirrorError::Upstream(UpstreamError::NotFound { .. }) => match missing {
            Missing::Blob(digest) => RegistryError::BlobUnknown { digest },
            Missing::Manifest(reference) => RegistryError::ManifestUnknown { reference },
        },
        MirrorError::Upstream(UpstreamError::Denied {
            upstream, status, ..
        }) => RegistryError::Denied {
            reason: format!("upstream {upstream} refused access ({status})"),
        },
        MirrorError::Upstream(err @ UpstreamError::Config { .. }) => {
            RegistryError::internal("reach the upstream", err)
        }
        MirrorError::Upstream(
            UpstreamError::Unavailable { upstream, .. } | UpstreamError::Invalid { upstream, .. },
        ) => {
            // The cause was logged by the mirror; the client learns only what failed.
            RegistryError::Unavailable {
                reason: format!("upstream {upstream} cannot answer and nothing is cached"),
            }
        }
        err @ (MirrorError::Store { .. } | MirrorError::Task { .. }) => {
            RegistryError::internal("answer from the mirror", err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::testing::TestRegistry;

    #[tokio::test]
    async fn blobs_answer_head_get_ranges_and_delete() {
        let registry = TestRegistry::open();
        let bytes = b"0123456789";
        let digest = registry.push_blob("a/b", bytes).await;
        let path = format!("/v2/a/b/blobs/{digest}");

        let head = registry.call(Method::HEAD, &path, &[], Body::empty()).await;
        head.expect(200, None);
        assert_eq!(head.header("content-length"), "10");
        assert_eq!(head.header("docker-content-digest"), digest.to_string());
        assert!(head.body.is_empty());

        let whole = registry.get(&path).await;
        whole.expect(200, None);
        assert_eq!(whole.body.as_ref(), bytes);
        assert_eq!(whole.header("accept-ranges"), "bytes");

        for (range, status, body, content_range) in [
            ("bytes=2-5", 206, "2345", "bytes 2-5/10"),
            ("bytes=7-", 206, "789", "bytes 7-9/10"),
            ("bytes=-2", 206, "89", "bytes 8-9/10"),
            ("bytes=0-0,2-3", 200, "0123456789", ""),
        ] {
            let answer = registry
                .call(Method::GET, &path, &[("range", range)], Body::empty())
                .await;
            answer.expect(status, None);
            assert_eq!(answer.body.as_ref(), body.as_bytes(), "{range}");
            assert_eq!(answer.header("content-range"), content_range, "{range}");
        }
        let unsatisfiable = registry
            .call(Method::GET, &path, &[("range", "bytes=10-")], Body::empty())
            .await;
        unsatisfiable.expect(416, Some("RANGE_INVALID"));
        assert_eq!(unsatisfiable.header("content-range"), "bytes */10");

        // Blobs belong to repositories: another one does not see it.
        registry
            .get(&format!("/v2/a/c/blobs/{digest}"))
            .await
            .expect(404, Some("BLOB_UNKNOWN"));
        registry
            .call(
                Method::HEAD,
                &format!("/v2/a/c/blobs/{digest}"),
                &[],
                Body::empty(),
            )
            .await
            .expect(404, None);

        registry.delete_as_admin(&path).await.expect(202, None);
        registry.get(&path).await.expect(404, Some("BLOB_UNKNOWN"));
        registry
            .delete_as_admin(&path)
            .await
            .expect(404, Some("BLOB_UNKNOWN"));
    }

    #[tokio::test]
    async fn pulls_record_last_access_for_gc() {
        let registry = TestRegistry::open();
        let digest = registry.push_blob("a", b"layer").await;
        let before = registry.registry.store().listing().unwrap().blobs[0].accessed_ms;
        std::thread::sleep(std::time::Duration::from_millis(5));
        registry
            .get(&format!("/v2/a/blobs/{digest}"))
            .await
            .expect(200, None);
        let after = registry.registry.store().listing().unwrap().blobs[0].accessed_ms;
        assert!(after > before, "{before} -> {after}");
    }

    #[tokio::test]
    async fn a_head_marks_the_blob_as_checked_by_a_push_and_a_get_as_used() {
        let registry = TestRegistry::open();
        let digest = registry.push_blob("a", b"layer").await;
        let store = registry.registry.store();
        let row = || store.listing().unwrap().blobs[0];
        let pushed = row();
        std::thread::sleep(std::time::Duration::from_millis(5));
        registry
            .call(
                Method::HEAD,
                &format!("/v2/a/blobs/{digest}"),
                &[],
                Body::empty(),
            )
            .await
            .expect(200, None);
        store.flush_access().unwrap();
        let checked = row();
        assert!(
            checked.pushed_ms > pushed.pushed_ms,
            "{pushed:?} -> {checked:?}"
        );
        assert_eq!(checked.accessed_ms, pushed.accessed_ms);
        std::thread::sleep(std::time::Duration::from_millis(5));
        registry
            .get(&format!("/v2/a/blobs/{digest}"))
            .await
            .expect(200, None);
        store.flush_access().unwrap();
        let pulled = row();
        assert_eq!(pulled.pushed_ms, checked.pushed_ms, "a pull is not a push");
        assert!(pulled.accessed_ms > checked.accessed_ms);
    }

    #[tokio::test]
    async fn a_mirror_repository_never_answers_from_what_a_namespace_pushed() {
        use crate::registry::mirror::upstream::UpstreamConfig;
        use crate::registry::mirror::{Mirror, MirrorOptions};
        // An upstream that cannot answer: whatever the mirror serves, it must have asked.
        let registry = TestRegistry::build(false, |store| {
            let upstream = UpstreamConfig {
                name: "hub".into(),
                url: "http://127.0.0.1:9".into(),
                credentials: None,
            };
            Some(Mirror::new(store.clone(), vec![upstream], MirrorOptions::default()).unwrap())
        });
        let digest = registry.push_blob("team-b/secret", b"private").await;
        for path in [
            format!("/v2/hub/anything/blobs/{digest}"),
            format!("/v2/library/x/blobs/{digest}?ns=hub"),
        ] {
            for method in [Method::GET, Method::HEAD] {
                let answer = registry
                    .call(method.clone(), &path, &[], Body::empty())
                    .await;
                answer.expect(503, None);
                assert!(answer.header("cache-status").is_empty(), "{method} {path}");
            }
        }
        let store = registry.registry.store();
        assert!(store.stat_blob("hub/anything", digest).unwrap().is_none());
        assert!(store.stat_blob("hub/library/x", digest).unwrap().is_none());
    }
}
