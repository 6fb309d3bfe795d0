//! The upstream side of the pull-through mirror: fetch manifests and blobs from one
//! upstream registry, with its auth, and classify what goes wrong (I/O: HTTP).
//!
//! # What comes from oci-client, and what does not
//! Blobs stream through oci-client's `pull_blob_stream`, which also runs the token flow
//! (anonymous, or with credentials). Manifests do not: oci-client returns neither the
//! response's `Content-Type` (a manifest's media type, which the mirror must serve back),
//! nor any other header (the `ratelimit-*` headers Docker Hub sends on manifest requests),
//! and its digest check on HEAD falls back to a GET that counts against Docker Hub's pull
//! limit. Manifest GET and HEAD are therefore sent with reqwest (the same reqwest oci-client
//! is built on, no second HTTP stack), authenticated with the token that oci-client's
//! `auth` obtains when the upstream answers 401.
//!
//! # Errors
//! [`UpstreamError`] separates what the mirror must treat differently:
//! [`Unavailable`](UpstreamError::Unavailable) (no connection, time-out, 429, 5xx, a transfer
//! cut short: serve the cached copy if there is one), [`NotFound`](UpstreamError::NotFound)
//! and [`Denied`](UpstreamError::Denied) (definite answers), and
//! [`Invalid`](UpstreamError::Invalid) (an answer that breaks the protocol, such as content
//! that does not match its digest: never stored).
//!
//! Credentials, if any, come from a Docker `config.json` ([`super::credentials`]).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt as _};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};
use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap, HeaderValue};

use super::credentials::{Credentials, DOCKER_HUB_HOSTS};
use crate::oci::digest::Digest;
use crate::oci::media::{MAX_MANIFEST_BYTES, OCI_INDEX, OCI_MANIFEST, is_manifest_type};
use crate::oci::name::Reference;

/// How long to wait for a connection to an upstream.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a read from an upstream may stall before the transfer counts as broken.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The two clients of a registry, with [`CONNECT_TIMEOUT`] and [`READ_TIMEOUT`]: oci-client
/// (blobs, manifests it can fetch, the token flow) and the reqwest it is built on, for the
/// requests oci-client cannot make (it returns no response headers). Installs ring as the
/// TLS provider first. The error says what could not be set up.
pub fn registry_clients(protocol: ClientProtocol) -> Result<(Client, reqwest::Client), String> {
    crate::tls::install_crypto_provider();
    let config = ClientConfig {
        protocol,
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(READ_TIMEOUT),
        ..ClientConfig::default()
    };
    let oci = Client::try_from(config).map_err(|err| err.to_string())?;
    let http = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .build()
        .map_err(|err| crate::report::error_chain(&err))?;
    Ok((oci, http))
}

/// What went wrong talking to an upstream.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream could not answer now: connection refused or reset, time-out, 429, 5xx,
    /// or a transfer that broke off. A cached copy may stand in.
    #[error("upstream {upstream} is unavailable while trying to {action}: {reason}")]
    Unavailable {
        /// The mirror's name.
        upstream: String,
        /// What was being done ("fetch manifest library/alpine:3").
        action: String,
        /// What happened.
        reason: String,
        /// The status, when the upstream answered (429, 503, ...).
        status: Option<u16>,
    },
    /// The upstream says the manifest, blob or repository does not exist.
    #[error("upstream {upstream} has no {what}")]
    NotFound {
        /// The mirror's name.
        upstream: String,
        /// What was asked for ("manifest library/alpine:3").
        what: String,
    },
    /// The upstream refuses access, even after authenticating.
    #[error("upstream {upstream} denied access while trying to {action} (status {status})")]
    Denied {
        /// The mirror's name.
        upstream: String,
        /// What was being done.
        action: String,
        /// 401 or 403.
        status: u16,
    },
    /// The upstream's answer breaks the protocol (wrong digest, no media type, oversized
    /// manifest, unexpected status). Nothing from it is stored.
    #[error("upstream {upstream} answered badly while trying to {action}: {reason}")]
    Invalid {
        /// The mirror's name.
        upstream: String,
        /// What was being done.
        action: String,
        /// What is wrong.
        reason: String,
    },
    /// The upstream's configuration is unusable (bad URL, client construction failed).
    #[error("upstream {upstream} is misconfigured: {reason}")]
    Config {
        /// The mirror's name.
        upstream: String,
        /// What is wrong.
        reason: String,
    },
}

impl UpstreamError {
    /// Whether a cached copy should be served instead (stale-if-error): the upstream could
    /// not give a definite answer.
    pub fn allows_stale(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Invalid { .. })
    }
}

/// The rate-limit state an upstream reported (Docker Hub's `ratelimit-limit`,
/// `ratelimit-remaining` as `<n>;w=<seconds>`, and `docker-ratelimit-source`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimit {
    /// Pulls allowed per window.
    pub limit: Option<u64>,
    /// Pulls left in the window.
    pub remaining: Option<u64>,
    /// The window, in seconds.
    pub window_secs: Option<u64>,
    /// Whom the limit is counted against (an IP or an account id).
    pub source: Option<String>,
}

impl RateLimit {
    /// Reads the headers; `None` when the upstream sent none of them.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let (limit, limit_window) = text("ratelimit-limit").map(parse_quota).unwrap_or_default();
        let (remaining, remaining_window) = text("ratelimit-remaining")
            .map(parse_quota)
            .unwrap_or_default();
        let source = text("docker-ratelimit-source").map(str::to_owned);
        let found = Self {
            limit,
            remaining,
            window_secs: limit_window.or(remaining_window),
            source,
        };
        (found != Self::default()).then_some(found)
    }
}

/// `100;w=21600` → (100, 21600).
fn parse_quota(text: &str) -> (Option<u64>, Option<u64>) {
    let mut parts = text.split(';').map(str::trim);
    let count = parts.next().and_then(|n| n.parse().ok());
    let window = parts
        .find_map(|p| p.strip_prefix("w="))
        .and_then(|w| w.parse().ok());
    (count, window)
}

/// A manifest fetched from an upstream, verified against its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The exact bytes.
    pub bytes: Bytes,
    /// Its media type.
    pub media_type: String,
    /// The digest of `bytes`.
    pub digest: Digest,
}

/// What a HEAD on a manifest says: enough to revalidate a cached copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestHead {
    /// `Docker-Content-Digest`.
    pub digest: Digest,
    /// `Content-Type`.
    pub media_type: String,
    /// `Content-Length`, if sent.
    pub size: Option<u64>,
}

/// A blob being streamed from an upstream. The bytes are not verified here: the mirror
/// hashes them as it writes them (and oci-client checks the digest at the end, failing the
/// last read on a mismatch).
pub struct Blob {
    /// `Content-Length`, if sent.
    pub size: Option<u64>,
    /// The bytes; an `Err` item ends the transfer.
    pub stream: BoxStream<'static, Result<Bytes, UpstreamError>>,
}

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blob")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// The configuration of one upstream.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The mirror's name (the first component of its repositories, e.g. `docker.io`).
    pub name: String,
    /// Its base URL: `https://registry-1.docker.io`, or with a path that prefixes every
    /// repository (`https://ghcr.io/my-org`).
    pub url: String,
    /// Credentials, if any; otherwise the anonymous token flow.
    pub credentials: Option<Credentials>,
}

/// A client of one upstream registry.
pub struct Upstream {
    name: String,
    /// `host[:port]`, as oci-client and the URLs use it.
    registry: String,
    scheme: &'static str,
    /// Path that prefixes every repository, without slashes at either end ("" for none).
    prefix: String,
    docker_hub: bool,
    auth: RegistryAuth,
    basic: Option<HeaderValue>,
    oci: Client,
    http: reqwest::Client,
    /// The `Authorization` value that last worked, per upstream repository; refreshed when
    /// the upstream answers 401.
    authorization: Mutex<BTreeMap<String, HeaderValue>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("registry", &self.registry)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// A client for `config`.
    pub fn new(config: UpstreamConfig) -> Result<Self, UpstreamError> {
        let UpstreamConfig {
            name,
            url,
            credentials,
        } = config;
        let misconfigured = |reason: String| UpstreamError::Config {
            upstream: name.clone(),
            reason,
        };
        let parsed = reqwest::Url::parse(&url)
            .map_err(|err| misconfigured(format!("URL {url:?}: {err}")))?;
        let scheme = match parsed.scheme() {
            "https" => "https",
            "http" => "http",
            other => {
                return Err(misconfigured(format!(
                    "URL scheme {other:?} is not http(s)"
                )));
            }
        };
        let host = parsed
            .host_str()
            .ok_or_else(|| misconfigured(format!("URL {url:?} has no host")))?;
        // docker.io has no registry API; its API host is registry-1.docker.io.
        let host = if host == "docker.io" {
            "registry-1.docker.io"
        } else {
            host
        };
        let registry = match parsed.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let docker_hub = DOCKER_HUB_HOSTS.contains(&host);
        let prefix = parsed.path().trim_matches('/').to_owned();
        let (auth, basic) = match &credentials {
            Some(credentials) => {
                let (auth, header) = credentials
                    .registry_auth()
                    .ok_or_else(|| misconfigured("credentials are not header-safe".into()))?;
                (auth, Some(header))
            }
            None => (RegistryAuth::Anonymous, None),
        };
        let protocol = if scheme == "http" {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        let (oci, http) = registry_clients(protocol).map_err(misconfigured)?;
        Ok(Self {
            name,
            registry,
            scheme,
            prefix,
            docker_hub,
            auth,
            basic,
            oci,
            http,
            authorization: Mutex::new(BTreeMap::new()),
        })
    }

    /// The mirror's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The upstream's `host[:port]` (`registry-1.docker.io` for Docker Hub).
    pub fn host(&self) -> &str {
        &self.registry
    }

    /// Whether the upstream is Docker Hub.
    pub fn is_docker_hub(&self) -> bool {
        self.docker_hub
    }

    /// The upstream repository for a mirror path (the part of the name after the mirror's
    /// name): the URL's path prefix, then `library/` for one-component names on Docker Hub.
    pub fn repository(&self, path: &str) -> String {
        let path = if self.docker_hub && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_owned()
        };
        if self.prefix.is_empty() {
            path
        } else {
            format!("{}/{path}", self.prefix)
        }
    }

    fn oci_reference(&self, repository: &str, reference: &Reference) -> oci_client::Reference {
        match reference {
            Reference::Tag(tag) => oci_client::Reference::with_tag(
                self.registry.clone(),
                repository.to_owned(),
                tag.to_string(),
            ),
            Reference::Digest(digest) => oci_client::Reference::with_digest(
                self.registry.clone(),
                repository.to_owned(),
                digest.to_string(),
            ),
        }
    }

    fn unavailable(
        &self,
        action: &str,
        reason: impl Into<String>,
        status: Option<u16>,
    ) -> UpstreamError {
        UpstreamError::Unavailable {
            upstream: self.name.clone(),
            action: action.to_owned(),
            reason: reason.into(),
            status,
        }
    }

    fn invalid(&self, action: &str, reason: impl Into<String>) -> UpstreamError {
        UpstreamError::Invalid {
            upstream: self.name.clone(),
            action: action.to_owned(),
            reason: reason.into(),
        }
    }

    /// Fetches a manifest of `path` (the mirror path) by tag or digest, asking for `accept`
    /// media types; verifies its digest.
    pub async fn fetch_manifest(
        &self,
        path: &str,
        reference: &Reference,
        accept: &[&str],
    ) -> Result<Manifest, UpstreamError> {
        let repository = self.repository(path);
        let action = format!("fetch manifest {repository}:{reference}");
        let response = self
            .manifest_request(
                reqwest::Method::GET,
                &repository,
                reference,
                accept,
                &action,
            )
            .await?;
        let headers = response.headers().clone();
        let media_type = content_type(&headers);
        let header_digest = docker_content_digest(&headers);
        let bytes = read_capped(response, MAX_MANIFEST_BYTES as u64)
            .await
            .map_err(|err| match err {
                ReadError::TooLarge => self.invalid(
                    &action,
                    format!("manifest exceeds {MAX_MANIFEST_BYTES} bytes"),
                ),
                ReadError::Broken(reason) => self.unavailable(&action, reason, None),
            })?;
        // Hashed with the algorithm asked for (sha256 for a tag), and the header checked
        // with its own.
        let digest = match reference.as_digest() {
            Some(expected) => expected.algorithm().digest(&bytes),
            None => Digest::of(&bytes),
        };
        if let Some(expected) = reference.as_digest().filter(|d| **d != digest) {
            return Err(self.invalid(
                &action,
                format!("content hashes to {digest}, not {expected}"),
            ));
        }
        if let Some(Ok(header)) =
            header_digest.filter(|h| h.as_ref().is_ok_and(|h| h.algorithm().digest(&bytes) != *h))
        {
            return Err(self.invalid(
                &action,
                format!("content does not hash to {header}, as Docker-Content-Digest says"),
            ));
        }
        let media_type = match media_type.filter(|t| is_manifest_type(t)) {
            Some(media_type) => media_type,
            None => embedded_media_type(&bytes).ok_or_else(|| {
                self.invalid(&action, "no manifest media type in Content-Type or body")
            })?,
        };
        Ok(Manifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// HEADs a manifest of `path` by tag or digest: its digest and media type, for
    /// revalidating a cached copy without downloading it (a HEAD does not count against
    /// Docker Hub's pull limit). An upstream that sends no `Docker-Content-Digest` gets
    /// [`UpstreamError::Invalid`]; the caller then falls back to [`Upstream::fetch_manifest`].
    pub async fn head_manifest(
        &self,
        path: &str,
        reference: &Reference,
        accept: &[&str],
    ) -> Result<ManifestHead, UpstreamError> {
        let repository = self.repository(path);
        let action = format!("check manifest {repository}:{reference}");
        let response = self
            .manifest_request(
                reqwest::Method::HEAD,
                &repository,
                reference,
                accept,
                &action,
            )
            .await?;
        let headers = response.headers();
        let digest = match docker_content_digest(headers) {
            Some(Ok(digest)) => digest,
            Some(Err(text)) => {
                return Err(self.invalid(
                    &action,
                    format!("Docker-Content-Digest {text:?} is not a supported digest"),
                ));
            }
            None => return Err(self.invalid(&action, "no Docker-Content-Digest header")),
        };
        if let Some(expected) = reference.as_digest().filter(|d| **d != digest) {
            return Err(self.invalid(
                &action,
                format!("Docker-Content-Digest is {digest}, not {expected}"),
            ));
        }
        let media_type =
            content_type(headers).ok_or_else(|| self.invalid(&action, "no Content-Type header"))?;
        let size = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Ok(ManifestHead {
            digest,
            media_type,
            size,
        })
    }

    /// Streams a blob of `path` from the upstream.
    pub async fn fetch_blob(&self, path: &str, digest: &Digest) -> Result<Blob, UpstreamError> {
        let repository = self.repository(path);
        let action = format!("fetch blob {repository}@{digest}");
        let reference = self.oci_reference(&repository, &Reference::Digest(*digest));
        let descriptor = OciDescriptor {
            digest: digest.to_string(),
            ..OciDescriptor::default()
        };
        self.oci
            .store_auth_if_needed(&self.registry, &self.auth)
            .await;
        let sized = self
            .oci
            .pull_blob_stream(&reference, &descriptor)
            .await
            .map_err(|err| {
                self.classify_oci(&action, err, &format!("blob {repository}@{digest}"))
            })?;
        let (upstream, stream_action) = (self.name.clone(), action);
        let stream = sized
            .stream
            .map(move |item| {
                item.map_err(|err| {
                    // oci-client reports a digest mismatch at the end of the stream as an
                    // io::Error wrapping its DigestError; anything else is a broken transfer.
                    let mismatch = err
                        .get_ref()
                        .is_some_and(|inner| inner.is::<oci_client::errors::DigestError>());
                    if mismatch {
                        UpstreamError::Invalid {
                            upstream: upstream.clone(),
                            action: stream_action.clone(),
                            reason: err.to_string(),
                        }
                    } else {
                        UpstreamError::Unavailable {
                            upstream: upstream.clone(),
                            action: stream_action.clone(),
                            reason: format!("transfer broke off: {err}"),
                            status: None,
                        }
                    }
                })
            })
            .boxed();
        Ok(Blob {
            size: sized.content_length,
            stream,
        })
    }

    /// Sends a manifest request, authenticating once on a 401, and classifies failures.
    async fn manifest_request(
        &self,
        method: reqwest::Method,
        repository: &str,
        reference: &Reference,
        accept: &[&str],
        action: &str,
    ) -> Result<reqwest::Response, UpstreamError> {
        let url = format!(
            "{}://{}/v2/{repository}/manifests/{reference}",
            self.scheme, self.registry
        );
        let accept = accept.join(", ");
        let cached = self.cached_authorization(repository);
        let mut response = self
            .send(method.clone(), &url, &accept, cached.clone(), action)
            .await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            let authorization = self.authenticate(repository, reference, action).await?;
            response = self
                .send(method, &url, &accept, authorization, action)
                .await?;
        }
        log_rate_limit(&self.name, response.headers());
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let what = format!("manifest {repository}:{reference}");
        Err(self.classify_status(action, status.as_u16(), &what))
    }

    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        accept: &str,
        authorization: Option<HeaderValue>,
        action: &str,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut request = self
            .http
            .request(method, url)
            .header(header::ACCEPT, accept);
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        request
            .send()
            .await
            .map_err(|err| self.unavailable(action, crate::report::error_chain(&err), None))
    }

    fn cached_authorization(&self, repository: &str) -> Option<HeaderValue> {
        match self.authorization.lock() {
            Ok(cache) => cache.get(repository).cloned(),
            Err(poisoned) => poisoned.into_inner().get(repository).cloned(),
        }
    }

    /// Runs the token flow through oci-client and remembers the resulting header.
    async fn authenticate(
        &self,
        repository: &str,
        reference: &Reference,
        action: &str,
    ) -> Result<Option<HeaderValue>, UpstreamError> {
        let oci_reference = self.oci_reference(repository, reference);
        let token = self
            .oci
            .auth(&oci_reference, &self.auth, RegistryOperation::Pull)
            .await
            .map_err(|err| self.classify_oci(action, err, &format!("repository {repository}")))?;
        let value = match token {
            Some(token) => Some(
                HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| self.invalid(action, "token is not header-safe"))?,
            ),
            // No bearer challenge: Basic credentials if we have them.
            None => self.basic.clone(),
        };
        if let Some(value) = &value {
            let mut cache = match self.authorization.lock() {
                Ok(cache) => cache,
                Err(poisoned) => poisoned.into_inner(),
            };
            cache.insert(repository.to_owned(), value.clone());
        }
        Ok(value)
    }

    fn classify_status(&self, action: &str, status: u16, what: &str) -> UpstreamError {
        match status {
            404 => UpstreamError::NotFound {
                upstream: self.name.clone(),
                what: what.to_owned(),
            },
            401 | 403 => UpstreamError::Denied {
                upstream: self.name.clone(),
                action: action.to_owned(),
                status,
            },
            429 => self.unavailable(action, "rate limited (429)", Some(status)),
            500..=599 => self.unavailable(action, format!("server error ({status})"), Some(status)),
            _ => self.invalid(action, format!("unexpected status {status}")),
        }
    }

    fn classify_oci(&self, action: &str, err: OciDistributionError, what: &str) -> UpstreamError {
        match err {
            OciDistributionError::RequestError(err) => {
                self.unavailable(action, crate::report::error_chain(&err), None)
            }
            OciDistributionError::ServerError { code, .. } => {
                self.classify_status(action, code, what)
            }
            OciDistributionError::UnauthorizedError { .. } => {
                self.classify_status(action, 401, what)
            }
            OciDistributionError::RegistryError { envelope, .. } => {
                use oci_client::errors::OciErrorCode as C;
                let status = match envelope.errors.first().map(|e| &e.code) {
                    Some(C::BlobUnknown | C::ManifestUnknown | C::NameUnknown | C::NotFound) => 404,
                    Some(C::Unauthorized) => 401,
                    Some(C::Denied) => 403,
                    Some(C::Toomanyrequests) => 429,
                    _ => 400,
                };
                self.classify_status(action, status, what)
            }
            // The token endpoint refused or failed; it cannot tell which, and a cached copy
            // is the better answer either way. The log says why.
            OciDistributionError::AuthenticationFailure(reason) => {
                self.unavailable(action, format!("token request failed: {reason}"), None)
            }
            OciDistributionError::IoError(err) => {
                self.unavailable(action, crate::report::error_chain(&err), None)
            }
            other => self.invalid(action, other.to_string()),
        }
    }
}

fn content_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let media_type = value.split(';').next().unwrap_or_default().trim();
    (!media_type.is_empty()).then(|| media_type.to_owned())
}

/// `Some(Err(text))` when the header is there but is not a digest we accept.
fn docker_content_digest(headers: &HeaderMap) -> Option<Result<Digest, String>> {
    let value = headers.get("docker-content-digest")?;
    let text = value.to_str().unwrap_or_default();
    Some(text.parse().map_err(|_| text.to_owned()))
}

/// The `mediaType` field of a manifest, or what its shape says when the field is absent
/// (an OCI manifest may omit it).
fn embedded_media_type(bytes: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    if let Some(media_type) = value.get("mediaType").and_then(|v| v.as_str()) {
        return Some(media_type.to_owned());
    }
    if value.get("manifests").is_some() {
        Some(OCI_INDEX.to_owned())
    } else if value.get("config").is_some() && value.get("layers").is_some() {
        Some(OCI_MANIFEST.to_owned())
    } else {
        None
    }
}

enum ReadError {
    TooLarge,
    Broken(String),
}

/// Reads a body of at most `cap` bytes, refusing early on a larger `Content-Length`.
async fn read_capped(mut response: reqwest::Response, cap: u64) -> Result<Bytes, ReadError> {
    if response.content_length().is_some_and(|len| len > cap) {
        return Err(ReadError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|err| ReadError::Broken(crate::report::error_chain(&err)))?
    {
        if body.len() as u64 + chunk.len() as u64 > cap {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}

/// Logs the rate-limit headers of an upstream answer: at warn level when few pulls are left.
fn log_rate_limit(upstream: &str, headers: &HeaderMap) {
    let Some(limit) = RateLimit::from_headers(headers) else {
        return;
    };
    let low = match (limit.remaining, limit.limit) {
        (Some(remaining), Some(total)) => remaining.saturating_mul(10) < total,
        (Some(0), None) => true,
        _ => false,
    };
    if low {
        tracing::warn!(upstream, limit = ?limit.limit, remaining = ?limit.remaining, window_secs = ?limit.window_secs, source = ?limit.source, "upstream rate limit nearly used up");
    } else {
        tracing::info!(upstream, limit = ?limit.limit, remaining = ?limit.remaining, window_secs = ?limit.window_secs, source = ?limit.source, "upstream rate limit");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::media::MANIFEST_MEDIA_TYPES;
    use crate::oci::name::Tag;
    use axum::extract::{Request, State};
    use axum::response::IntoResponse;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const MANIFEST: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;
    const BLOB: &[u8] = b"{}";

    fn tag(text: &str) -> Reference {
        Reference::Tag(Tag::parse(text).unwrap())
    }

    /// What the fake upstream does.
    #[derive(Default)]
    struct Fake {
        /// Require a bearer token from /token (the anonymous or Basic token flow).
        token_flow: bool,
        /// Basic credentials the token endpoint requires, as `user:password`.
        credentials: Option<&'static str>,
        /// Answer manifest requests with this status instead.
        status: Option<u16>,
        /// Send a wrong Docker-Content-Digest.
        wrong_digest: bool,
        token_requests: AtomicUsize,
        manifest_requests: AtomicUsize,
    }

    async fn fake(State(fake): State<Arc<Fake>>, request: Request) -> axum::response::Response {
        use axum::http::StatusCode as S;
        let path = request.uri().path().to_owned();
        let auth = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if path == "/token" {
            fake.token_requests.fetch_add(1, Ordering::SeqCst);
            if let Some(creds) = fake.credentials
                && auth != format!("Basic {}", STANDARD.encode(creds))
            {
                return S::UNAUTHORIZED.into_response();
            }
            let query = request.uri().query().unwrap_or_default();
            assert!(
                query.contains("scope=repository%3Alibrary%2Fapp%3Apull"),
                "{query}"
            );
            return axum::Json(serde_json::json!({"token": "tok-1", "expires_in": 300}))
                .into_response();
        }
        if fake.token_flow && auth != "Bearer tok-1" {
            let challenge = format!("Bearer realm=\"http://{host}/token\",service=\"fake\"");
            return (S::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, challenge)]).into_response();
        }
        if path.contains("/manifests/") {
            fake.manifest_requests.fetch_add(1, Ordering::SeqCst);
            if let Some(status) = fake.status {
                return S::from_u16(status).unwrap().into_response();
            }
            if path.ends_with("/missing") {
                return (
                    S::NOT_FOUND,
                    axum::Json(
                        serde_json::json!({"errors":[{"code":"MANIFEST_UNKNOWN","message":"x"}]}),
                    ),
                )
                    .into_response();
            }
            let digest = if fake.wrong_digest {
                Digest::of(b"other")
            } else {
                Digest::of(MANIFEST)
            };
            return (
                [
                    (header::CONTENT_TYPE.as_str(), OCI_MANIFEST.to_owned()),
                    ("docker-content-digest", digest.to_string()),
                    ("ratelimit-limit", "100;w=21600".to_owned()),
                    ("ratelimit-remaining", "5;w=21600".to_owned()),
                    ("docker-ratelimit-source", "203.0.113.7".to_owned()),
                ],
                MANIFEST,
            )
                .into_response();
        }
        if path.contains("/blobs/") {
            if path.ends_with(&Digest::of(BLOB).to_string()) {
                return BLOB.into_response();
            }
            return (
                S::NOT_FOUND,
                axum::Json(serde_json::json!({"errors":[{"code":"BLOB_UNKNOWN","message":"x"}]})),
            )
                .into_response();
        }
        if path == "/v2/" {
            return S::OK.into_response();
        }
        S::NOT_FOUND.into_response()
    }

    async fn serve(fake_config: Fake) -> (String, Arc<Fake>) {
        let state = Arc::new(fake_config);
        let app = axum::Router::new().fallback(fake).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), state)
    }

    fn upstream(url: &str, credentials: Option<Credentials>) -> Upstream {
        Upstream::new(UpstreamConfig {
            name: "docker.io".into(),
            url: url.into(),
            credentials,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn anonymous_token_flow_then_manifest_and_blob() {
        let (url, fake) = serve(Fake {
            token_flow: true,
            ..Fake::default()
        })
        .await;
        let up = upstream(&format!("{url}/library"), None);
        let manifest = up
            .fetch_manifest("app", &tag("latest"), &MANIFEST_MEDIA_TYPES)
            .await
            .unwrap();
        assert_eq!(manifest.bytes.as_ref(), MANIFEST);
        assert_eq!(manifest.digest, Digest::of(MANIFEST));
        assert_eq!(manifest.media_type, OCI_MANIFEST);
        let head = up
            .head_manifest("app", &tag("latest"), &MANIFEST_MEDIA_TYPES)
            .await
            .unwrap();
        assert_eq!(
            (head.digest, head.media_type.as_str()),
            (Digest::of(MANIFEST), OCI_MANIFEST)
        );
        // One token fetched, then reused by the HEAD.
        assert_eq!(fake.token_requests.load(Ordering::SeqCst), 1);
        let mut blob = up.fetch_blob("app", &Digest::of(BLOB)).await.unwrap();
        let mut bytes = Vec::new();
        while let Some(chunk) = blob.stream.next().await {
            bytes.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(bytes, BLOB);
    }

    #[tokio::test]
    async fn credentials_go_to_the_token_endpoint() {
        let (url, _) = serve(Fake {
            token_flow: true,
            credentials: Some("bob:s3cret"),
            ..Fake::default()
        })
        .await;
        let good = Credentials {
            username: "bob".into(),
            password: "s3cret".into(),
        };
        let up = upstream(&format!("{url}/library"), Some(good));
        assert!(
            up.fetch_manifest("app", &tag("v1"), &MANIFEST_MEDIA_TYPES)
                .await
                .is_ok()
        );

        let bad = Credentials {
            username: "bob".into(),
            password: "wrong".into(),
        };
        let up = upstream(&format!("{url}/library"), Some(bad));
        let err = up
            .fetch_manifest("app", &tag("v1"), &MANIFEST_MEDIA_TYPES)
            .await
            .unwrap_err();
        // The token endpoint's refusal cannot be told from its failure; stale may serve.
        assert!(err.allows_stale(), "{err:?}");
    }

    #[tokio::test]
    async fn statuses_are_classified() {
        for (status, unavailable, denied) in [
            (429, true, false),
            (503, true, false),
            (500, true, false),
            (403, false, true),
        ] {
            let (url, _) = serve(Fake {
                status: Some(status),
                ..Fake::default()
            })
            .await;
            let err = upstream(&url, None)
                .fetch_manifest("library/app", &tag("v1"), &MANIFEST_MEDIA_TYPES)
                .await
                .unwrap_err();
            assert_eq!(
                matches!(err, UpstreamError::Unavailable { .. }),
                unavailable,
                "{status}: {err:?}"
            );
            assert_eq!(
                matches!(err, UpstreamError::Denied { .. }),
                denied,
                "{status}: {err:?}"
            );
            assert_eq!(err.allows_stale(), unavailable, "{status}");
        }
        let (url, _) = serve(Fake::default()).await;
        let up = upstream(&url, None);
        let err = up
            .fetch_manifest("library/app", &tag("missing"), &MANIFEST_MEDIA_TYPES)
            .await
            .unwrap_err();
        assert!(matches!(err, UpstreamError::NotFound { .. }), "{err:?}");
        assert!(!err.allows_stale());
        let err = up
            .fetch_blob("library/app", &Digest::of(b"nope"))
            .await
            .unwrap_err();
        assert!(matches!(err, UpstreamError::NotFound { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_digest_that_does_not_match_is_invalid() {
        let (url, _) = serve(Fake {
            wrong_digest: true,
            ..Fake::default()
        })
        .await;
        let up = upstream(&url, None);
        let err = up
            .fetch_manifest("library/app", &tag("v1"), &MANIFEST_MEDIA_TYPES)
            .await
            .unwrap_err();
        assert!(matches!(err, UpstreamError::Invalid { .. }), "{err:?}");
        let by_digest = Reference::Digest(Digest::of(b"else"));
        let (url, _) = serve(Fake::default()).await;
        let err = upstream(&url, None)
            .fetch_manifest("library/app", &by_digest, &MANIFEST_MEDIA_TYPES)
            .await
            .unwrap_err();
        assert!(matches!(err, UpstreamError::Invalid { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn an_unreachable_upstream_is_unavailable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let up = upstream(&format!("http://127.0.0.1:{port}"), None);
        let err = up
            .fetch_manifest("library/app", &tag("v1"), &MANIFEST_MEDIA_TYPES)
            .await
            .unwrap_err();
        assert!(
            matches!(err, UpstreamError::Unavailable { status: None, .. }),
            "{err:?}"
        );
        let err = up
            .fetch_blob("library/app", &Digest::of(BLOB))
            .await
            .unwrap_err();
        assert!(matches!(err, UpstreamError::Unavailable { .. }), "{err:?}");
    }

    #[test]
    fn repositories_map_to_the_upstream() {
        let hub = upstream("https://registry-1.docker.io", None);
        assert_eq!(hub.repository("alpine"), "library/alpine");
        assert_eq!(hub.repository("grafana/grafana"), "grafana/grafana");
        let alias = upstream("https://docker.io", None);
        assert_eq!(
            (alias.registry.as_str(), alias.repository("alpine").as_str()),
            ("registry-1.docker.io", "library/alpine")
        );
        let ghcr = upstream("https://ghcr.io/my-org/", None);
        assert_eq!(ghcr.repository("tool"), "my-org/tool");
        let local = upstream("http://127.0.0.1:5000", None);
        assert_eq!(
            (local.registry.as_str(), local.repository("a")),
            ("127.0.0.1:5000", "a".to_owned())
        );
        for bad in ["ftp://x", "not a url", "http://"] {
            assert!(
                matches!(
                    Upstream::new(UpstreamConfig {
                        name: "m".into(),
                        url: bad.into(),
                        credentials: None
                    }),
                    Err(UpstreamError::Config { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn rate_limit_headers_are_read() {
        let mut headers = HeaderMap::new();
        assert_eq!(RateLimit::from_headers(&headers), None);
        headers.insert("ratelimit-limit", "100;w=21600".parse().unwrap());
        headers.insert("ratelimit-remaining", "76;w=21600".parse().unwrap());
        headers.insert("docker-ratelimit-source", "203.0.113.7".parse().unwrap());
        assert_eq!(
            RateLimit::from_headers(&headers),
            Some(RateLimit {
                limit: Some(100),
                remaining: Some(76),
                window_secs: Some(21600),
                source: Some("203.0.113.7".into())
            })
        );
    }

    #[test]
    fn media_types_come_from_the_body_when_the_header_is_generic() {
        assert_eq!(embedded_media_type(MANIFEST).as_deref(), Some(OCI_MANIFEST));
        assert_eq!(
            embedded_media_type(br#"{"schemaVersion":2,"manifests":[]}"#).as_deref(),
            Some(OCI_INDEX)
        );
        assert_eq!(
            embedded_media_type(br#"{"schemaVersion":2,"config":{},"layers":[]}"#).as_deref(),
            Some(OCI_MANIFEST)
        );
        assert_eq!(embedded_media_type(b"{}"), None);
        assert_eq!(embedded_media_type(b"not json"), None);
    }
}
