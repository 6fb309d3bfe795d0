//! The receiver's HTTP routes: `GET` [`STATUS_PATH`], `POST` [`CHUNK_PATH`]`?offset=N`
//! and `POST` [`DONE_PATH`], each answering JSON ([`UploadStatus`] or [`UploadError`])
//! (I/O: HTTP; the work is the [`Session`]'s).
//!
//! Chunk bodies are taken as a stream, not as bytes: axum's body limit does not apply, and
//! the session enforces [`crate::context::protocol::MAX_CHUNK_BYTES`] while it writes.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::session::{Refusal, Session};
use crate::context::protocol::{CHUNK_PATH, DONE_PATH, STATUS_PATH, UploadError, UploadStatus};

/// The receiver's routes over `session`.
pub fn router(session: Arc<Session>) -> Router {
    Router::new()
        .route(STATUS_PATH, get(status))
        .route(CHUNK_PATH, post(chunk))
        .route(DONE_PATH, post(done))
        .with_state(session)
}

async fn status(State(session): State<Arc<Session>>) -> Json<UploadStatus> {
    Json(session.status())
}

async fn chunk(
    State(session): State<Arc<Session>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(offset) = offset(query.as_deref()) else {
        return refused(Refusal {
            code: StatusCode::BAD_REQUEST,
            message: format!("a chunk needs its offset: POST {CHUNK_PATH}?offset=N"),
            status: session.status(),
        });
    };
    let content_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse().ok());
    answer(session.chunk(offset, content_length, body).await)
}

async fn done(State(session): State<Arc<Session>>) -> Response {
    answer(session.done().await)
}

/// The `offset` query parameter, when it is one non-negative integer.
fn offset(query: Option<&str>) -> Option<u64> {
    let query = query?;
    let mut values = form_urlencoded::parse(query.as_bytes())
        .filter(|(key, _)| key == "offset")
        .map(|(_, value)| value.parse::<u64>());
    match (values.next(), values.next()) {
        (Some(Ok(offset)), None) => Some(offset),
        _ => None,
    }
}

fn answer(result: Result<UploadStatus, Refusal>) -> Response {
    match result {
        Ok(status) => Json(status).into_response(),
        Err(refusal) => refused(refusal),
    }
}

/// A refusal closes the connection: a chunk may be refused before its body was read (its
/// declared length already overflows), and a client that reused the connection would
/// write its next request into that unread body and see a broken pipe.
fn refused(refusal: Refusal) -> Response {
    let Refusal {
        code,
        message,
        status,
    } = refusal;
    (
        code,
        [(header::CONNECTION, "close")],
        Json(UploadError {
            message,
            status: Some(status),
        }),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::super::session::WorkDir;
    use super::super::{CacheClient, ReceiveOptions};
    use super::*;
    use crate::context::protocol::UploadState;
    use crate::oci::digest::Digest;
    use crate::retry::Retry;
    use axum::http::{Method, Request};
    use std::time::Duration;
    use tower::ServiceExt as _;

    const TAR: &[u8] = b"0123456789";

    /// A session for [`TAR`] whose cache is never reached (nothing here stores), with its
    /// work directory in `dir`.
    fn session(dir: &std::path::Path) -> Arc<Session> {
        let options = ReceiveOptions {
            registry: "http://127.0.0.1:9".parse().unwrap(),
            repository: "team-a/kiln_contexts".parse().unwrap(),
            tag: "build-1".parse().unwrap(),
            digest: Digest::of(TAR),
            size: TAR.len() as u64,
            dest: dir.join("context"),
            listen: "127.0.0.1:0".parse().unwrap(),
            wait: Duration::from_secs(60),
            poll: Duration::from_secs(1),
            grace: Duration::ZERO,
            credentials: None,
            retry: Retry::default(),
        };
        let cache = CacheClient::new(
            &options.registry,
            &options.repository,
            &options.tag,
            None,
            options.retry,
        )
        .unwrap();
        let work = WorkDir::beside(&options.dest).unwrap();
        std::fs::create_dir_all(&work.dir).unwrap();
        let (outcomes, _) = tokio::sync::mpsc::unbounded_channel();
        Arc::new(Session::new(options, cache, work, outcomes))
    }

    async fn call(
        session: &Arc<Session>,
        method: Method,
        uri: &str,
        body: &'static [u8],
    ) -> (StatusCode, serde_json::Value) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::from(body))
            .unwrap();
        let response = router(session.clone()).oneshot(request).await.unwrap();
        let code = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (code, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn a_refusal_closes_the_connection_and_an_acceptance_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let session = session(dir.path());
        session.start_waiting().await.unwrap();
        let connection = |body: &'static [u8]| {
            let session = session.clone();
            async move {
                let request = Request::builder()
                    .method(Method::POST)
                    .uri(format!("{CHUNK_PATH}?offset=0"))
                    .body(Body::from(body))
                    .unwrap();
                let response = router(session).oneshot(request).await.unwrap();
                (
                    response.status(),
                    response.headers().get(header::CONNECTION).cloned(),
                )
            }
        };
        // Longer than the declared 10 bytes: refused, maybe before the body was read.
        let (code, close) = connection(b"0123456789ABC").await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert_eq!(close.as_ref().map(|v| v.as_bytes()), Some(&b"close"[..]));
        let (code, close) = connection(b"0123").await;
        assert_eq!((code, close), (StatusCode::OK, None));
    }

    #[tokio::test]
    async fn while_checking_the_status_answers_and_chunks_wait() {
        let dir = tempfile::tempdir().unwrap();
        let session = session(dir.path());
        let (code, body) = call(&session, Method::GET, STATUS_PATH, b"").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body["state"], "checking");
        assert_eq!(body["size"], 10);

        let chunk = format!("{CHUNK_PATH}?offset=0");
        let (code, body) = call(&session, Method::POST, &chunk, b"0123").await;
        assert_eq!(code, StatusCode::CONFLICT);
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .starts_with("the receiver is still looking for the context in the cache"),
            "{body}"
        );
        assert_eq!(body["status"]["state"], "checking");
        let (code, _) = call(&session, Method::POST, DONE_PATH, b"").await;
        assert_eq!(code, StatusCode::CONFLICT);
    }

    #[tokio::test]
    async fn chunks_are_appended_refused_or_acknowledged_by_offset() {
        let dir = tempfile::tempdir().unwrap();
        let session = session(dir.path());
        session.start_waiting().await.unwrap();

        let (code, body) = call(&session, Method::POST, CHUNK_PATH, b"0123").await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert_eq!(
            body["message"],
            format!("a chunk needs its offset: POST {CHUNK_PATH}?offset=N")
        );

        let at = |offset: u64| format!("{CHUNK_PATH}?offset={offset}");
        let (code, body) = call(&session, Method::POST, &at(0), b"0123").await;
        assert_eq!((code, &body["received"]), (StatusCode::OK, &4.into()));
        // Sent again: acknowledged, not appended.
        let (code, body) = call(&session, Method::POST, &at(0), b"0123").await;
        assert_eq!((code, &body["received"]), (StatusCode::OK, &4.into()));
        // A gap.
        let (code, body) = call(&session, Method::POST, &at(6), b"67").await;
        assert_eq!(code, StatusCode::CONFLICT);
        assert_eq!(
            body["message"],
            "a chunk of 2 bytes at offset 6 does not continue the upload: send the chunk at offset 4"
        );
        // Past the declared size: refused, and nothing of it stays.
        let (code, body) = call(&session, Method::POST, &at(4), b"4567890").await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert_eq!(body["status"]["received"], 4);
        assert_eq!(
            std::fs::read(dir.path().join(".kiln-receive/upload.tar")).unwrap(),
            b"0123"
        );

        // The whole size, wrong bytes: refused, and the spool is empty for a new upload.
        let (code, _) = call(&session, Method::POST, &at(4), b"45678X").await;
        assert_eq!(code, StatusCode::OK);
        let (code, body) = call(&session, Method::POST, DONE_PATH, b"").await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("the directory changed while it was being sent"),
            "{body}"
        );
        assert_eq!(body["status"]["received"], 0);
        assert_eq!(session.status().state, UploadState::Waiting);
        assert_eq!(
            std::fs::read(dir.path().join(".kiln-receive/upload.tar")).unwrap(),
            b""
        );
        let (code, body) = call(&session, Method::POST, &at(0), b"0123456789").await;
        assert_eq!((code, &body["received"]), (StatusCode::OK, &10.into()));
    }

    #[test]
    fn the_offset_is_one_integer() {
        assert_eq!(offset(Some("offset=0")), Some(0));
        assert_eq!(offset(Some("x=1&offset=8388608")), Some(8_388_608));
        assert_eq!(offset(None), None);
        assert_eq!(offset(Some("")), None);
        assert_eq!(offset(Some("offset=-1")), None);
        assert_eq!(offset(Some("offset=a")), None);
        assert_eq!(offset(Some("offset=1&offset=2")), None);
    }
}
