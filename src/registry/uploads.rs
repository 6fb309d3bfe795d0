//! Upload routes: `POST /v2/<name>/blobs/uploads/` (a session, a monolithic upload with
//! `?digest=`, or a cross-repository mount with `?mount=&from=`), and on a session `PATCH`
//! (a chunk, in order: 416 otherwise), `PUT ?digest=` (the last chunk and the commit),
//! `GET` (progress: 204 with `Range`) and `DELETE` (cancel) (I/O: the store).
//!
//! Bodies stream into the store chunk by chunk on a blocking thread; nothing is buffered
//! whole, and nothing is committed from a body that broke off.

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::oci::digest::Digest;
use crate::oci::name::RepoName;
use crate::registry::auth::{Access, Resource};
use crate::registry::body::{BodyEnd, feed};
use crate::registry::error::RegistryError;
use crate::registry::headers::{
    DOCKER_CONTENT_DIGEST, DOCKER_UPLOAD_UUID, UPLOAD_SESSION_ID, parse_content_range,
    upload_progress,
};
use crate::registry::path::UploadId;
use crate::registry::request::{Reply, Request, check};
use crate::store::{StoreError, UploadStatus};

fn session_path(name: &RepoName, id: &str) -> String {
    format!("/v2/{name}/blobs/uploads/{id}")
}

/// The answer about a session: where it is and how much it holds.
fn session_reply(status: StatusCode, name: &RepoName, id: &str, size: u64) -> Response {
    Reply::new(status)
        .header(header::LOCATION, session_path(name, id))
        .header(header::RANGE, upload_progress(size))
        .header(DOCKER_UPLOAD_UUID, id)
        .header(UPLOAD_SESSION_ID, id)
        .header(header::CONTENT_LENGTH, "0")
        .into_response()
}

/// The answer to a committed or mounted blob.
fn created(name: &RepoName, digest: Digest) -> Response {
    Reply::new(StatusCode::CREATED)
        .header(header::LOCATION, format!("/v2/{name}/blobs/{digest}"))
        .header(DOCKER_CONTENT_DIGEST, digest.to_string())
        .header(header::CONTENT_LENGTH, "0")
        .into_response()
}

/// A chunk that does not start where the upload ends: 416 with the progress, so the client
/// can resume.
fn out_of_order(name: &RepoName, id: &str, size: u64, reason: String) -> Response {
    let mut response = RegistryError::RangeNotSatisfiable { reason }.into_response();
    let progress = session_reply(StatusCode::OK, name, id, size);
    for (key, value) in progress.headers() {
        if key != header::CONTENT_LENGTH {
            response.headers_mut().insert(key.clone(), value.clone());
        }
    }
    response
}

/// `POST …/blobs/uploads/`.
pub(crate) async fn start(
    request: &Request,
    name: &RepoName,
    body: Body,
) -> Result<Response, RegistryError> {
    if let (Some(mount), Some(from)) = (request.query.get("mount"), request.query.get("from"))
        && let Some(mounted) = mount_blob(request, name, mount, from).await?
    {
        return Ok(mounted);
    }
    if let Some(digest) = request.query.get("digest") {
        let digest: Digest = digest.parse()?;
        return monolithic(request, name, digest, body).await;
    }
    let (repo, namespace) = (name.to_string(), name.first_component().to_owned());
    let max = request.registry.limits().max_uploads_per_namespace;
    let id = request
        .registry
        .blocking("start an upload", move |store| {
            store.upload_create_capped(&repo, &namespace, max)
        })
        .await;
    request.registry.count_uploads();
    Ok(session_reply(StatusCode::ACCEPTED, name, &id?, 0))
}

/// A cross-repository mount, if it can be done: the digest and source are valid, the
/// client may pull from the source, and the source has the blob. Otherwise `None`, and the
/// request goes on as a normal upload (the spec's fallback, which tells nothing about a
/// repository the client may not read).
async fn mount_blob(
    request: &Request,
    name: &RepoName,
    mount: &str,
    from: &str,
) -> Result<Option<Response>, RegistryError> {
    let (Ok(digest), Ok(from)) = (mount.parse::<Digest>(), RepoName::parse(from)) else {
        return Ok(None);
    };
    let source = Resource::Repository {
        name: &from,
        mirror: request.registry.auth().is_mirror(&from),
    };
    if check(&request.registry, &request.headers, source, Access::Pull).is_err() {
        return Ok(None);
    }
    let (from, to) = (from.to_string(), name.to_string());
    let mounted = request
        .registry
        .blocking("mount a blob", move |store| store.mount(&from, &to, digest))
        .await?;
    Ok(mounted.then(|| created(name, digest)))
}

/// `POST …/blobs/uploads/?digest=`: the whole blob in one request.
async fn monolithic(
    request: &Request,
    name: &RepoName,
    digest: Digest,
    body: Body,
) -> Result<Response, RegistryError> {
    let expected_size = content_length(request);
    let writer = request
        .registry
        .blocking("start an upload", move |store| {
            store.blob_writer_for(digest.algorithm())
        })
        .await?;
    let ((writer, written), end) = feed(body, move |chunks| {
        let mut writer = writer;
        for chunk in chunks {
            if let Err(err) = writer.write_chunk(&chunk) {
                return (writer, Err(err));
            }
        }
        (writer, Ok(()))
    })
    .await?;
    written.map_err(|err| RegistryError::from_store("write an upload", err))?;
    complete(end)?;
    let repo = name.to_string();
    let info = request
        .registry
        .blocking("commit an upload", move |_| {
            writer.commit(&repo, digest, expected_size)
        })
        .await?;
    Ok(created(name, info.digest))
}

/// `GET` on a session: its progress.
pub(crate) async fn status(
    request: &Request,
    name: &RepoName,
    id: &UploadId,
) -> Result<Response, RegistryError> {
    let session = session(request, name, id).await?;
    Ok(session_reply(
        StatusCode::NO_CONTENT,
        name,
        id.as_str(),
        session.size,
    ))
}

/// `PATCH` on a session: appends a chunk (the whole request body).
pub(crate) async fn patch(
    request: &Request,
    name: &RepoName,
    id: &UploadId,
    body: Body,
) -> Result<Response, RegistryError> {
    let session = session(request, name, id).await?;
    if let Some(refused) = refuse_range(request, name, id, &session) {
        return Ok(refused);
    }
    match append(request, name, id, session.size, body).await? {
        Appended::Size(size) => Ok(session_reply(StatusCode::ACCEPTED, name, id.as_str(), size)),
        Appended::OutOfOrder(refused) => Ok(refused),
    }
}

/// `PUT ?digest=` on a session: appends the body (if any) and commits the blob.
pub(crate) async fn finish(
    request: &Request,
    name: &RepoName,
    id: &UploadId,
    body: Body,
) -> Result<Response, RegistryError> {
    let digest: Digest = request
        .query
        .get("digest")
        .ok_or_else(|| RegistryError::DigestInvalid {
            reason: "the digest parameter is required to finish an upload".into(),
        })?
        .parse()?;
    let session = session(request, name, id).await?;
    if let Some(refused) = refuse_range(request, name, id, &session) {
        return Ok(refused);
    }
    if http_body::Body::size_hint(&body).exact() != Some(0)
        && let Appended::OutOfOrder(refused) = append(request, name, id, session.size, body).await?
    {
        return Ok(refused);
    }
    let id = id.to_string();
    let info = request
        .registry
        .blocking("commit an upload", move |store| {
            store.upload_commit(&id, digest, None)
        })
        .await;
    request.registry.count_uploads();
    Ok(created(name, info?.digest))
}

/// `DELETE` on a session.
pub(crate) async fn cancel(
    request: &Request,
    name: &RepoName,
    id: &UploadId,
) -> Result<Response, RegistryError> {
    session(request, name, id).await?;
    let owned = id.to_string();
    let cancelled = request
        .registry
        .blocking("cancel an upload", move |store| store.upload_cancel(&owned))
        .await;
    request.registry.count_uploads();
    let cancelled = cancelled?;
    if !cancelled {
        return Err(RegistryError::BlobUploadUnknown { id: id.to_string() });
    }
    Ok(Reply::new(StatusCode::NO_CONTENT).into_response())
}

/// The session `id`, which must belong to `name`: a session id from another repository is
/// as unknown as one that never existed.
async fn session(
    request: &Request,
    name: &RepoName,
    id: &UploadId,
) -> Result<UploadStatus, RegistryError> {
    let owned = id.to_string();
    let session = request
        .registry
        .blocking("read an upload", move |store| store.upload_status(&owned))
        .await?;
    if session.repo != name.as_str() {
        return Err(RegistryError::BlobUploadUnknown { id: id.to_string() });
    }
    Ok(session)
}

/// A `Content-Range` must start where the upload ends: the 416 (with the progress) when
/// it does not.
fn refuse_range(
    request: &Request,
    name: &RepoName,
    id: &UploadId,
    session: &UploadStatus,
) -> Option<Response> {
    let value = request.headers.get(header::CONTENT_RANGE)?;
    let text = value.to_str().unwrap_or_default();
    let Ok(range) = parse_content_range(text) else {
        let reason = format!("Content-Range {text:?} is not <start>-<end>");
        return Some(out_of_order(name, id.as_str(), session.size, reason));
    };
    if range.start != session.size {
        return Some(out_of_order(
            name,
            id.as_str(),
            session.size,
            format!(
                "chunk {text:?} starts at {}, the upload holds {} bytes",
                range.start, session.size
            ),
        ));
    }
    if let Some(length) = content_length(request)
        && length != range.len()
    {
        return Some(out_of_order(
            name,
            id.as_str(),
            session.size,
            format!(
                "Content-Range {text:?} spans {} bytes, Content-Length is {length}",
                range.len()
            ),
        ));
    }
    None
}

fn content_length(request: &Request) -> Option<u64> {
    request
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// What appending a chunk came to.
enum Appended {
    /// The chunk is in: the upload's new size.
    Size(u64),
    /// Another request appended first, so the chunk no longer starts at the end: the 416.
    OutOfOrder(Response),
}

/// Appends a whole request body to session `id` from `offset`. A body that broke off is
/// an error; what arrived of it stays in the session.
async fn append(
    request: &Request,
    name: &RepoName,
    id: &UploadId,
    offset: u64,
    body: Body,
) -> Result<Appended, RegistryError> {
    let store = request.registry.store().clone();
    let owned = id.to_string();
    let (result, end) = feed(body, move |chunks| {
        let mut size = offset;
        for chunk in chunks {
            size = store.upload_append(&owned, size, &chunk)?;
        }
        Ok::<_, StoreError>(size)
    })
    .await?;
    match result {
        Ok(size) => {
            complete(end)?;
            Ok(Appended::Size(size))
        }
        Err(StoreError::UploadOffset { offset, size, .. }) => {
            Ok(Appended::OutOfOrder(out_of_order(
                name,
                id.as_str(),
                size,
                format!("chunk starts at {offset}, the upload holds {size} bytes"),
            )))
        }
        Err(err) => Err(RegistryError::from_store("append to an upload", err)),
    }
}

/// A body that broke off is a failed request; what arrived of it stays in the session.
fn complete(end: BodyEnd) -> Result<(), RegistryError> {
    match end {
        BodyEnd::Complete => Ok(()),
        BodyEnd::Broken(reason) => Err(RegistryError::BlobUploadInvalid {
            reason: format!("the request body broke off: {reason}"),
        }),
        BodyEnd::Abandoned => Err(RegistryError::BlobUploadInvalid {
            reason: "the upload stopped before the end of the body".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Bytes;
    use axum::http::Method;

    use super::*;
    use crate::cacheapi::token::TokenAction;
    use crate::registry::testing::{TestRegistry, admin, token};

    fn location(answer: &crate::registry::testing::Answer) -> String {
        answer.header("location").to_owned()
    }

    #[tokio::test]
    async fn a_namespace_past_its_cap_of_sessions_gets_429_until_one_ends() {
        let limits = crate::registry::service::Limits {
            max_uploads_per_namespace: 2,
            ..Default::default()
        };
        let registry = TestRegistry::build_with(false, |_| None, limits);
        let start = |path: &'static str| registry.call(Method::POST, path, &[], Body::empty());
        let first = start("/v2/team/a/blobs/uploads/").await;
        first.expect(202, None);
        // The spec's fallback for a mount that cannot be done opens a session too.
        start("/v2/team/b/blobs/uploads/?mount=sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855&from=team/a")
            .await
            .expect(202, None);
        let refused = start("/v2/team/c/blobs/uploads/").await;
        refused.expect(429, Some("TOOMANYREQUESTS"));
        assert!(
            refused.json()["errors"][0]["detail"]
                .as_str()
                .unwrap()
                .contains("team has 2 upload sessions open"),
            "{refused:?}"
        );
        // Monolithic pushes open no session; other namespaces have their own count.
        registry.push_blob("team/c", b"whole").await;
        start("/v2/team-b/a/blobs/uploads/").await.expect(202, None);
        let metrics = registry.get("/metrics").await;
        let text = String::from_utf8_lossy(&metrics.body);
        assert!(text.contains("kiln_cache_uploads_in_progress 3"), "{text}");
        registry
            .call(Method::DELETE, &location(&first), &[], Body::empty())
            .await
            .expect(204, None);
        start("/v2/team/c/blobs/uploads/").await.expect(202, None);
    }

    #[tokio::test]
    async fn chunked_uploads_go_in_order_and_commit_with_their_digest() {
        let registry = TestRegistry::open();
        let start = registry
            .call(Method::POST, "/v2/a/blobs/uploads/", &[], Body::empty())
            .await;
        start.expect(202, None);
        assert_eq!(start.header("range"), "0-0");
        let session = location(&start);
        assert!(session.starts_with("/v2/a/blobs/uploads/"), "{session}");
        assert_eq!(
            start.header("docker-upload-uuid"),
            start.header("blob-upload-session-id")
        );

        let first = registry
            .call(
                Method::PATCH,
                &session,
                &[("content-range", "0-4"), ("content-length", "5")],
                "hello",
            )
            .await;
        first.expect(202, None);
        assert_eq!(first.header("range"), "0-4");

        // Out of order: 416 with where the upload stands.
        let skipped = registry
            .call(
                Method::PATCH,
                &session,
                &[("content-range", "10-12")],
                "xyz",
            )
            .await;
        skipped.expect(416, Some("RANGE_INVALID"));
        assert_eq!(skipped.header("range"), "0-4");
        assert_eq!(location(&skipped), session);
        registry
            .call(
                Method::PATCH,
                &session,
                &[("content-range", "five-six")],
                "xyz",
            )
            .await
            .expect(416, Some("RANGE_INVALID"));
        registry
            .call(
                Method::PATCH,
                &session,
                &[("content-range", "5-9"), ("content-length", "3")],
                "xyz",
            )
            .await
            .expect(416, Some("RANGE_INVALID"));

        // A streamed chunk without Content-Range goes at the end.
        registry
            .call(Method::PATCH, &session, &[], " world")
            .await
            .expect(202, None);
        let status = registry.get(&session).await;
        status.expect(204, None);
        assert_eq!(status.header("range"), "0-10");

        let digest = crate::oci::digest::Digest::of(b"hello world!");
        registry
            .call(Method::PUT, &session, &[], "!")
            .await
            .expect(400, Some("DIGEST_INVALID"));
        let done = registry
            .call(Method::PUT, &format!("{session}?digest={digest}"), &[], "!")
            .await;
        done.expect(201, None);
        assert_eq!(location(&done), format!("/v2/a/blobs/{digest}"));
        assert_eq!(done.header("docker-content-digest"), digest.to_string());
        let blob = registry.get(&format!("/v2/a/blobs/{digest}")).await;
        assert_eq!(blob.body.as_ref(), b"hello world!");
        // The session is gone.
        registry
            .get(&session)
            .await
            .expect(404, Some("BLOB_UPLOAD_UNKNOWN"));
    }

    #[tokio::test]
    async fn a_wrong_digest_commits_nothing() {
        let registry = TestRegistry::open();
        let claimed = crate::oci::digest::Digest::of(b"something else");
        registry
            .call(
                Method::POST,
                &format!("/v2/a/blobs/uploads/?digest={claimed}"),
                &[],
                "bytes",
            )
            .await
            .expect(400, Some("DIGEST_INVALID"));
        let session = location(
            &registry
                .call(Method::POST, "/v2/a/blobs/uploads/", &[], Body::empty())
                .await,
        );
        registry
            .call(
                Method::PUT,
                &format!("{session}?digest={claimed}"),
                &[],
                "bytes",
            )
            .await
            .expect(400, Some("DIGEST_INVALID"));
        registry
            .call(
                Method::POST,
                "/v2/a/blobs/uploads/?digest=sha256:00",
                &[],
                "bytes",
            )
            .await
            .expect(400, Some("DIGEST_INVALID"));
        assert!(registry.registry.store().listing().unwrap().is_empty());
    }

    #[tokio::test]
    async fn monolithic_puts_sessions_of_other_repositories_and_cancels() {
        let registry = TestRegistry::open();
        let session = location(
            &registry
                .call(Method::POST, "/v2/a/blobs/uploads/", &[], Body::empty())
                .await,
        );
        // A session id under another repository is unknown there.
        let foreign = session.replace("/v2/a/", "/v2/b/");
        registry
            .get(&foreign)
            .await
            .expect(404, Some("BLOB_UPLOAD_UNKNOWN"));
        let digest = crate::oci::digest::Digest::of(b"whole");
        registry
            .call(
                Method::PUT,
                &format!("{session}?digest={digest}"),
                &[("content-length", "5")],
                "whole",
            )
            .await
            .expect(201, None);

        let cancelled = location(
            &registry
                .call(Method::POST, "/v2/a/blobs/uploads/", &[], Body::empty())
                .await,
        );
        registry
            .call(Method::PATCH, &cancelled, &[], "partial")
            .await
            .expect(202, None);
        registry
            .call(Method::DELETE, &cancelled, &[], Body::empty())
            .await
            .expect(204, None);
        registry
            .call(Method::DELETE, &cancelled, &[], Body::empty())
            .await
            .expect(404, Some("BLOB_UPLOAD_UNKNOWN"));
        registry
            .call(Method::PATCH, &cancelled, &[], "more")
            .await
            .expect(404, Some("BLOB_UPLOAD_UNKNOWN"));
    }

    #[tokio::test]
    async fn mounts_need_the_blob_in_a_source_the_client_may_read() {
        let registry = TestRegistry::authenticated();
        let digest = registry.push_blob("team-a/src", b"shared layer").await;
        registry.push_blob("team-b/secret", b"b's layer").await;
        let a = format!(
            "Bearer {}",
            token("team-a", &[TokenAction::Pull, TokenAction::Push])
        );
        let headers = [("authorization", a.as_str())];

        let mounted = registry
            .call(
                Method::POST,
                &format!("/v2/team-a/dst/blobs/uploads/?mount={digest}&from=team-a/src"),
                &headers,
                Body::empty(),
            )
            .await;
        mounted.expect(201, None);
        assert_eq!(location(&mounted), format!("/v2/team-a/dst/blobs/{digest}"));
        registry
            .call(
                Method::HEAD,
                &format!("/v2/team-a/dst/blobs/{digest}"),
                &headers,
                Body::empty(),
            )
            .await
            .expect(200, None);

        // Absent from the source, or a source of another namespace: a normal upload.
        let secret = crate::oci::digest::Digest::of(b"b's layer");
        for query in [
            format!(
                "mount={}&from=team-a/src",
                crate::oci::digest::Digest::of(b"absent")
            ),
            format!("mount={secret}&from=team-b/secret"),
            "mount=sha256:bad&from=team-a/src".to_owned(),
            format!("mount={digest}&from=Bad/Name"),
        ] {
            let answer = registry
                .call(
                    Method::POST,
                    &format!("/v2/team-a/dst/blobs/uploads/?{query}"),
                    &headers,
                    Body::empty(),
                )
                .await;
            answer.expect(202, None);
            assert!(location(&answer).contains("/blobs/uploads/"), "{query}");
        }
        registry
            .call(
                Method::HEAD,
                &format!("/v2/team-a/dst/blobs/{secret}"),
                &[("authorization", &admin())],
                Body::empty(),
            )
            .await
            .expect(404, None);
    }

    #[tokio::test]
    async fn a_body_that_stalls_fails_the_request_not_the_server() {
        let registry = TestRegistry::build_with(
            false,
            |_| None,
            crate::registry::Limits {
                body_idle_timeout: std::time::Duration::from_millis(200),
                ..crate::registry::Limits::default()
            },
        );
        let session = location(
            &registry
                .call(Method::POST, "/v2/a/blobs/uploads/", &[], Body::empty())
                .await,
        );
        // One chunk, then nothing (the sender stays open).
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        tx.send(Ok(Bytes::from_static(b"first"))).await.unwrap();
        let body = Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }));
        let started = std::time::Instant::now();
        let answer = registry.call(Method::PATCH, &session, &[], body).await;
        answer.expect(400, Some("BLOB_UPLOAD_INVALID"));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        drop(tx);
        // What arrived stays; the client can resume from there.
        let status = registry.get(&session).await;
        assert_eq!(status.header("range"), "0-4");
    }
}
