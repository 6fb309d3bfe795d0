//! The admin API client, used by the controller and `kiln cache du|prune|verify --server`
//! (I/O: HTTP).
//!
//! One request per call, no retries: the caller decides, with
//! [`AdminClientError::is_transient`] telling what may succeed on a retry. There is a connect
//! timeout but no overall one, since a verify of a large store legitimately takes minutes;
//! callers that need a deadline wrap the call in `tokio::time::timeout`.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode, header};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::admin::{
    AdminRoute, BaseImage, BaseImages, BasesForgotten, DuReport, LeaseName, LeaseReleased,
    LeaseRequest, LeaseResponse, LogStored, PruneReport, PruneRequest, RepositoryDeleted,
    ResolveRequest, Resolved, TagDeleted, VerifyReport, VerifyRequest,
};
use super::log::{
    ANNOTATIONS_HEADER, LOG_MEDIA_TYPE, LogError, StoredLogBody, annotations_header,
    check_annotations,
};
use super::{ErrorBody, ErrorInfo};
use crate::oci::name::{RepoName, Tag};

/// How long to wait for a TCP (and TLS) connection to the cache service.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an admin API call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    /// The base URL is not an `http` or `https` URL.
    #[error("invalid cache service URL {url:?}: {reason}")]
    BaseUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client for the cache service")]
    Build(#[source] reqwest::Error),
    /// The request did not get an answer (connection refused, reset, timed out).
    #[error("cannot {action}: no answer from {url}")]
    Send {
        /// What the call was doing.
        action: &'static str,
        /// The request URL.
        url: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error status.
    #[error("cannot {action}: the cache service answered {status}{}", describe(.error))]
    Rejected {
        /// What the call was doing.
        action: &'static str,
        /// The HTTP status.
        status: u16,
        /// The first error of the body, when it had the registry's error shape.
        error: Option<ErrorInfo>,
    },
    /// The answer was a success but its body could not be read as expected.
    #[error("cannot {action}: unreadable answer from the cache service")]
    Decode {
        /// What the call was doing.
        action: &'static str,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// Annotations that the admin API does not take (on the way out), or an answer whose
    /// annotations header cannot be read (on the way back).
    #[error("cannot {action}: bad build log annotations")]
    Annotations {
        /// What the call was doing.
        action: &'static str,
        /// What is wrong with them.
        #[source]
        source: LogError,
    },
}

fn describe(error: &Option<ErrorInfo>) -> String {
    match error {
        Some(info) => match &info.detail {
            Some(detail) => format!(" {} ({}): {detail}", info.code, info.message),
            None => format!(" {} ({})", info.code, info.message),
        },
        None => String::new(),
    }
}

impl AdminClientError {
    /// Whether a retry may succeed: no answer, `429`, or a `5xx`.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Send { .. } => true,
            Self::Rejected { status, .. } => *status == 429 || *status >= 500,
            Self::BaseUrl { .. }
            | Self::Build(_)
            | Self::Decode { .. }
            | Self::Annotations { .. } => false,
        }
    }

    /// The OCI error code of a rejection (`NAME_UNKNOWN`, `DENIED`, ...).
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Rejected {
                error: Some(info), ..
            } => Some(&info.code),
            _ => None,
        }
    }
}

/// A client of one cache service's admin API.
#[derive(Clone)]
pub struct AdminClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl AdminClient {
    /// A client for the service at `base_url` (`http://kiln-cache.kiln-system:5000`),
    /// authenticating with the admin token.
    pub fn new(base_url: &str, admin_token: impl Into<String>) -> Result<Self, AdminClientError> {
        let bad = |reason: &str| AdminClientError::BaseUrl {
            url: base_url.to_owned(),
            reason: reason.to_owned(),
        };
        let url = reqwest::Url::parse(base_url).map_err(|err| bad(&err.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("the scheme must be http or https"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("a base URL has no query or fragment"));
        }
        crate::tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(AdminClientError::Build)?;
        Ok(Self {
            base: base_url.trim_end_matches('/').to_owned(),
            token: admin_token.into(),
            http,
        })
    }

    /// `GET /admin/v1/du`.
    pub async fn du(&self) -> Result<DuReport, AdminClientError> {
        self.call("get disk usage", Method::GET, &AdminRoute::Du, None::<&()>)
            .await
    }

    /// `POST /admin/v1/prune`.
    pub async fn prune(&self, request: &PruneRequest) -> Result<PruneReport, AdminClientError> {
        self.call("prune", Method::POST, &AdminRoute::Prune, Some(request))
            .await
    }

    /// `POST /admin/v1/verify`.
    pub async fn verify(&self, request: &VerifyRequest) -> Result<VerifyReport, AdminClientError> {
        self.call("verify", Method::POST, &AdminRoute::Verify, Some(request))
            .await
    }

    /// `PUT /admin/v1/leases/<name>`: creates or extends (replaces) a lease.
    pub async fn put_lease(
        &self,
        name: &LeaseName,
        request: &LeaseRequest,
    ) -> Result<LeaseResponse, AdminClientError> {
        let route = AdminRoute::Lease { name: name.clone() };
        self.call("take lease", Method::PUT, &route, Some(request))
            .await
    }

    /// `DELETE /admin/v1/leases/<name>`: `true` if there was a lease to release.
    pub async fn release_lease(&self, name: &LeaseName) -> Result<bool, AdminClientError> {
        let route = AdminRoute::Lease { name: name.clone() };
        let released: LeaseReleased = self
            .call("release lease", Method::DELETE, &route, None::<&()>)
            .await?;
        Ok(released.released)
    }

    /// `DELETE /admin/v1/repositories/<name>/_tags/<tag>`: `None` if there was no such tag.
    pub async fn delete_tag(
        &self,
        name: &RepoName,
        tag: &Tag,
    ) -> Result<Option<TagDeleted>, AdminClientError> {
        let route = AdminRoute::Tag {
            name: name.clone(),
            tag: tag.clone(),
        };
        let result = self
            .call("delete tag", Method::DELETE, &route, None::<&()>)
            .await;
        absent_as_none(result, "MANIFEST_UNKNOWN")
    }

    /// `DELETE /admin/v1/repositories/<name>`: `None` if there was no such repository.
    pub async fn delete_repository(
        &self,
        name: &RepoName,
    ) -> Result<Option<RepositoryDeleted>, AdminClientError> {
        let route = AdminRoute::Repository { name: name.clone() };
        let result = self
            .call("delete repository", Method::DELETE, &route, None::<&()>)
            .await;
        absent_as_none(result, "NAME_UNKNOWN")
    }

    /// `PUT /admin/v1/logs/<name>/_tags/<tag>`: stores `body` as the log the tag points at,
    /// with `annotations` (checked here first, against the limits the server applies).
    /// The body is sent as is: keeping it under [`super::log::MAX_LOG_BYTES`] (the tail of a
    /// longer log) is the caller's choice to make.
    pub async fn put_log(
        &self,
        name: &RepoName,
        tag: &Tag,
        annotations: &BTreeMap<String, String>,
        body: bytes::Bytes,
    ) -> Result<LogStored, AdminClientError> {
        let action = "store build log";
        check_annotations(annotations)
            .map_err(|source| AdminClientError::Annotations { action, source })?;
        let route = AdminRoute::Log {
            name: name.clone(),
            tag: tag.clone(),
        };
        let header = annotations_header(annotations);
        let response = self
            .send(action, Method::PUT, &route, |request| {
                request
                    .header(header::CONTENT_TYPE, LOG_MEDIA_TYPE)
                    .header(ANNOTATIONS_HEADER, header)
                    .body(body)
            })
            .await?;
        decode_json(action, response).await
    }

    /// `GET /admin/v1/logs/<name>/_tags/<tag>`: the stored log and its annotations, `None`
    /// if there is no such tag.
    pub async fn get_log(
        &self,
        name: &RepoName,
        tag: &Tag,
    ) -> Result<Option<StoredLogBody>, AdminClientError> {
        let action = "read build log";
        let route = AdminRoute::Log {
            name: name.clone(),
            tag: tag.clone(),
        };
        let result = match self.send(action, Method::GET, &route, |r| r).await {
            Ok(response) => read_log(action, response).await,
            Err(err) => Err(err),
        };
        absent_as_none(result, "MANIFEST_UNKNOWN")
    }

    /// `GET /admin/v1/builds/<uid>/bases`: the base images the Build resolved through the
    /// mirror, sorted by image, then tag (empty when none). `uid` is the Build's UID, which
    /// the lease name rule admits.
    pub async fn base_images(&self, uid: &LeaseName) -> Result<Vec<BaseImage>, AdminClientError> {
        let route = AdminRoute::BuildBases { uid: uid.clone() };
        let answer: BaseImages = self
            .call("read base images", Method::GET, &route, None::<&()>)
            .await?;
        Ok(answer.bases)
    }

    /// `DELETE /admin/v1/builds/<uid>/bases`: forgets the Build's base images; answers
    /// how many there were (0 the second time).
    pub async fn forget_base_images(&self, uid: &LeaseName) -> Result<u64, AdminClientError> {
        let route = AdminRoute::BuildBases { uid: uid.clone() };
        let answer: BasesForgotten = self
            .call("forget base images", Method::DELETE, &route, None::<&()>)
            .await?;
        Ok(answer.forgotten)
    }

    /// `POST /admin/v1/mirror/resolve`: where the tag of `image` (a mirror repository,
    /// `<mirror>/<path>`) points upstream now, asked with a HEAD whatever the mirror's TTL.
    /// An upstream that cannot answer is a rejection with status 503 (`UNAVAILABLE`),
    /// which [`AdminClientError::is_transient`] calls transient; an image of no mirror is
    /// 404 `NAME_UNKNOWN`, a tag the upstream does not have 404 `MANIFEST_UNKNOWN`.
    pub async fn resolve(&self, image: &str, tag: &str) -> Result<Resolved, AdminClientError> {
        let request = ResolveRequest {
            image: image.to_owned(),
            tag: tag.to_owned(),
        };
        self.call(
            "resolve a mirror tag",
            Method::POST,
            &AdminRoute::MirrorResolve,
            Some(&request),
        )
        .await
    }

    /// `GET /v2/<name>/tags/list` (the registry's listing, which the admin token may read):
    /// every tag of the repository, sorted; none when the repository does not exist.
    pub async fn tags(&self, name: &RepoName) -> Result<Vec<String>, AdminClientError> {
        #[derive(serde::Deserialize)]
        struct TagList {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let action = "list tags";
        let path = format!("/v2/{name}/tags/list");
        let result = match self.send_to(action, Method::GET, &path, |r| r).await {
            Ok(response) => decode_json::<TagList>(action, response).await,
            Err(err) => Err(err),
        };
        Ok(absent_as_none(result, "NAME_UNKNOWN")?
            .and_then(|list| list.tags)
            .unwrap_or_default())
    }

    async fn call<T: DeserializeOwned>(
        &self,
        action: &'static str,
        method: Method,
        route: &AdminRoute,
        body: Option<&impl Serialize>,
    ) -> Result<T, AdminClientError> {
        let response = self
            .send(action, method, route, |request| match body {
                Some(body) => request.json(body),
                None => request,
            })
            .await?;
        decode_json(action, response).await
    }

    /// Sends one request (what `build` adds to it: a body, headers) and answers the
    /// response of a success; any other status is [`AdminClientError::Rejected`] with the
    /// registry's error body.
    async fn send(
        &self,
        action: &'static str,
        method: Method,
        route: &AdminRoute,
        build: impl FnOnce(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response, AdminClientError> {
        self.send_to(action, method, &route.path(), build).await
    }

    /// [`Self::send`] to any path of the service (the registry's own, too).
    async fn send_to(
        &self,
        action: &'static str,
        method: Method,
        path: &str,
        build: impl FnOnce(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response, AdminClientError> {
        let url = format!("{}{path}", self.base);
        let request = build(self.http.request(method, &url).bearer_auth(&self.token));
        let response = request
            .send()
            .await
            .map_err(|source| AdminClientError::Send {
                action,
                url: url.clone(),
                source,
            })?;
        let status = response.status();
        if !status.is_success() {
            // The body is only a better message; an unreadable one still leaves the status.
            let error = response
                .json::<ErrorBody>()
                .await
                .ok()
                .and_then(|body| body.errors.into_iter().next());
            return Err(AdminClientError::Rejected {
                action,
                status: status.as_u16(),
                error,
            });
        }
        Ok(response)
    }
}

/// The JSON body of a successful answer.
async fn decode_json<T: DeserializeOwned>(
    action: &'static str,
    response: Response,
) -> Result<T, AdminClientError> {
    response
        .json::<T>()
        .await
        .map_err(|source| AdminClientError::Decode { action, source })
}

/// The log of a successful `GET`: the annotations header (none when absent) and the body.
async fn read_log(
    action: &'static str,
    response: Response,
) -> Result<StoredLogBody, AdminClientError> {
    let annotations = match response.headers().get(ANNOTATIONS_HEADER) {
        None => BTreeMap::new(),
        Some(value) => read_annotations(value.as_bytes())
            .map_err(|source| AdminClientError::Annotations { action, source })?,
    };
    let bytes = response
        .bytes()
        .await
        .map_err(|source| AdminClientError::Decode { action, source })?;
    Ok(StoredLogBody { annotations, bytes })
}

/// The annotations of an answer, read as any JSON object of strings: the limits are the
/// server's to keep when it stores them, and a reader that applied them too would fail on
/// the logs of a server that has raised them.
fn read_annotations(header: &[u8]) -> Result<BTreeMap<String, String>, LogError> {
    serde_json::from_slice(header).map_err(|err| LogError::NotAnObject {
        reason: err.to_string(),
    })
}

/// A 404 with `code` means "nothing to delete", which idempotent cleanup treats as done.
fn absent_as_none<T>(
    result: Result<T, AdminClientError>,
    code: &str,
) -> Result<Option<T>, AdminClientError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(err @ AdminClientError::Rejected { status, .. })
            if status == StatusCode::NOT_FOUND.as_u16() && err.code() == Some(code) =>
        {
            Ok(None)
        }
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cacheapi::admin::{PrunePolicy, Usage};
    use axum::extract::Request;
    use axum::http::header;
    use axum::response::IntoResponse;
    use axum::routing::any;
    use serde_json::json;

    const TOKEN: &str = "admin-secret";

    /// A fake admin API: checks the token, answers each route with a canned body, and
    /// echoes what it received so the tests see the wire.
    async fn fake_server() -> String {
        async fn guarded(request: Request) -> axum::response::Response {
            let auth = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            if auth != format!("Bearer {TOKEN}") {
                return (
                    axum::http::StatusCode::UNAUTHORIZED,
                    axum::Json(json!({"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]})),
                )
                    .into_response();
            }
            let method = request.method().clone();
            let path = request.uri().path().to_owned();
            let body = axum::body::to_bytes(request.into_body(), 1 << 20)
                .await
                .unwrap();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or(json!(null));
            let route = AdminRoute::parse(&path).unwrap();
            let answer = match (method.as_str(), route) {
                ("GET", AdminRoute::Du) => json!(DuReport {
                    total_bytes: 10,
                    blobs: Usage {
                        count: 1,
                        bytes: 10
                    },
                    ..DuReport::default()
                }),
                ("POST", AdminRoute::Prune) => json!({
                    "dry_run": body["dry_run"], "freed_bytes": 5, "removed": [], "kept_by_leases": 0
                }),
                ("POST", AdminRoute::Verify) => json!({
                    "blobs_checked": 2, "bytes_checked": 20, "corrupt": [], "missing": [],
                    "repaired": [], "echo": body
                }),
                ("PUT", AdminRoute::Lease { name }) => json!({
                    "name": name, "created": true,
                    "expires_at": 1000 + body["ttl_seconds"].as_u64().unwrap(), "digests": []
                }),
                ("DELETE", AdminRoute::Lease { name }) => {
                    json!({ "released": name.as_str() == "held" })
                }
                ("DELETE", AdminRoute::Tag { tag, .. }) if tag.as_str() == "gone" => {
                    return (
                        axum::http::StatusCode::NOT_FOUND,
                        axum::Json(json!({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown to registry"}]})),
                    )
                        .into_response();
                }
                ("DELETE", AdminRoute::Tag { name, tag }) => json!({
                    "repository": name, "tag": tag, "manifest": crate::oci::digest::Digest::of(b"m")
                }),
                ("DELETE", AdminRoute::Repository { name }) if name.as_str() == "team-a/broken" => {
                    return (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        axum::Json(json!({"errors": [{"code": "UNKNOWN", "message": "internal server error"}]})),
                    )
                        .into_response();
                }
                ("DELETE", AdminRoute::Repository { name }) => json!({
                    "repository": name, "tags_removed": 2, "manifests_removed": 3
                }),
                ("GET", AdminRoute::BuildBases { uid }) => json!({"bases": [{
                    "image": format!("docker.io/library/{uid}"), "tag": "1",
                    "digest": crate::oci::digest::Digest::of(b"b"), "resolved_at": 7
                }]}),
                ("DELETE", AdminRoute::BuildBases { .. }) => json!({"forgotten": 3}),
                ("POST", AdminRoute::MirrorResolve) => json!({
                    "image": body["image"], "tag": body["tag"],
                    "digest": crate::oci::digest::Digest::of(b"r")
                }),
                other => panic!("unexpected request {other:?}"),
            };
            axum::Json(answer).into_response()
        }
        let app = axum::Router::new().route("/admin/v1/{*rest}", any(guarded));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/")
    }

    #[tokio::test]
    async fn every_call_reaches_its_route_and_reads_its_answer() {
        let base = fake_server().await;
        let client = AdminClient::new(&base, TOKEN).unwrap();
        assert_eq!(client.du().await.unwrap().blobs.bytes, 10);
        let pruned = client
            .prune(&PruneRequest {
                policy: PrunePolicy::All,
                dry_run: true,
            })
            .await
            .unwrap();
        assert!(pruned.dry_run);
        assert_eq!(pruned.freed_bytes, 5);
        let verified = client
            .verify(&VerifyRequest { repair: true })
            .await
            .unwrap();
        assert_eq!(verified.blobs_checked, 2);
        let lease = LeaseName::parse("build-1").unwrap();
        let taken = client
            .put_lease(
                &lease,
                &LeaseRequest {
                    targets: vec![],
                    ttl_seconds: 60,
                },
            )
            .await
            .unwrap();
        assert_eq!((taken.name, taken.expires_at), (lease.clone(), 1060));
        assert!(!client.release_lease(&lease).await.unwrap());
        assert!(
            client
                .release_lease(&LeaseName::parse("held").unwrap())
                .await
                .unwrap()
        );
        let repo = RepoName::parse("team-a/app").unwrap();
        let deleted = client
            .delete_tag(&repo, &Tag::parse("v1").unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(deleted.tag.as_str(), "v1");
        assert_eq!(
            client
                .delete_tag(&repo, &Tag::parse("gone").unwrap())
                .await
                .unwrap(),
            None
        );
        let removed = client.delete_repository(&repo).await.unwrap().unwrap();
        assert_eq!(removed.manifests_removed, 3);
        let uid = LeaseName::parse("uid-1").unwrap();
        let bases = client.base_images(&uid).await.unwrap();
        assert_eq!(
            bases,
            [BaseImage {
                image: "docker.io/library/uid-1".into(),
                tag: "1".into(),
                digest: crate::oci::digest::Digest::of(b"b"),
                resolved_at: 7
            }]
        );
        assert_eq!(client.forget_base_images(&uid).await.unwrap(), 3);
        let resolved = client.resolve("docker.io/library/x", "3.20").await.unwrap();
        assert_eq!(
            (
                resolved.image.as_str(),
                resolved.tag.as_str(),
                resolved.digest
            ),
            (
                "docker.io/library/x",
                "3.20",
                crate::oci::digest::Digest::of(b"r")
            )
        );
    }

    #[tokio::test]
    async fn errors_are_typed_and_say_whether_to_retry() {
        let base = fake_server().await;
        let wrong = AdminClient::new(&base, "wrong").unwrap();
        let err = wrong.du().await.unwrap_err();
        assert!(
            matches!(err, AdminClientError::Rejected { status: 401, .. }),
            "{err:?}"
        );
        assert_eq!(err.code(), Some("UNAUTHORIZED"));
        assert!(!err.is_transient());
        assert_eq!(
            err.to_string(),
            "cannot get disk usage: the cache service answered 401 UNAUTHORIZED (authentication required)"
        );

        let client = AdminClient::new(&base, TOKEN).unwrap();
        let err = client
            .delete_repository(&RepoName::parse("team-a/broken").unwrap())
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{err:?}");
        assert_eq!(err.code(), Some("UNKNOWN"));

        // Nothing listens on a port we just released.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let closed = AdminClient::new(&format!("http://127.0.0.1:{port}"), TOKEN).unwrap();
        let err = closed.du().await.unwrap_err();
        assert!(matches!(err, AdminClientError::Send { .. }), "{err:?}");
        assert!(err.is_transient());
    }

    #[test]
    fn answered_annotations_are_read_without_the_storing_limits() {
        let many: BTreeMap<String, String> = (0..=crate::cacheapi::log::MAX_ANNOTATIONS)
            .map(|i| (format!("k{i}"), "v".to_owned()))
            .collect();
        let header = annotations_header(&many);
        assert!(crate::cacheapi::log::parse_annotations(&header).is_err());
        assert_eq!(read_annotations(header.as_bytes()), Ok(many));
        assert!(matches!(
            read_annotations(b"[]"),
            Err(LogError::NotAnObject { .. })
        ));
    }

    #[test]
    fn base_urls_are_checked() {
        for bad in ["", "cache:5000", "ftp://cache", "http://cache/?x=1"] {
            assert!(
                matches!(
                    AdminClient::new(bad, TOKEN),
                    Err(AdminClientError::BaseUrl { .. })
                ),
                "{bad}"
            );
        }
        assert!(AdminClient::new("https://cache.kiln-system:5000", TOKEN).is_ok());
    }
}
