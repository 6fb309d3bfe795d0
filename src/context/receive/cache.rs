//! The receiver's side of the cache registry: look for the context's blob, download it to a
//! file, push a file or a few bytes as a blob, and tag the context's manifest (I/O: HTTP,
//! files).
//!
//! # Streaming, and checking what streams
//! A context can be gigabytes, and the receiver runs with a small memory limit: blobs go
//! from a response body to a file and from a file to a request body in pieces, never whole
//! in memory. A download is hashed and counted as it is written, and refused when it is
//! not the declared digest and size ([`CacheError::Corrupt`]): the caller unpacks only
//! bytes this process checked.
//!
//! # Requests
//! Every request is plain reqwest (the one oci-client is built on, with its time-outs,
//! from [`registry_clients`]): oci-client neither streams a file as a push body nor
//! returns the `Docker-Content-Digest` the manifest push must check. Blobs are pushed as
//! `POST /v2/<name>/blobs/uploads/` then one `PUT ?digest=` of the whole blob, which every
//! registry accepts.
//!
//! # Credentials
//! With credentials (the attempt's cache token in a Docker config), requests carry them as
//! `Authorization: Basic` from the first one on: Kiln's cache takes a token as the Basic
//! password, so a receiver needs no token round trip. A registry that wants a Bearer token
//! answers 401; the token then comes from oci-client's `auth` (the Docker token flow) and
//! is kept for the later requests.
//!
//! # Retries
//! No connection, time-outs, a transfer cut short, 429 and 5xx are retried
//! ([`crate::retry`]); a download or a push is then started over from its first byte.

// An error here ends a one-shot command; a few more bytes per `Result` cost nothing.
#![allow(clippy::result_large_err)]

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt as _};
use oci_client::client::ClientProtocol;
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};
use reqwest::header::{self, HeaderValue};
use reqwest::{Response, StatusCode, Url};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::context::artifact::context_manifest;
use crate::oci::artifact::{EMPTY_CONFIG, empty_config_digest};
use crate::oci::digest::{Digest, Hasher};
use crate::oci::media::OCI_MANIFEST;
use crate::oci::name::{RepoName, Tag};
use crate::registry::mirror::credentials::Credentials;
use crate::registry::mirror::upstream::registry_clients;
use crate::retry::{Retry, Transient, retrying};

/// The size of the pieces a file is read in for a push body.
const READ_PIECE: usize = 256 * 1024;

/// How a request to the cache failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The cache refused access (401 or 403), after authenticating if it asked to.
    #[error(
        "the cache refused access ({status}): check the cache token in the Docker config{}",
        detail(.message)
    )]
    Denied {
        /// 401 or 403.
        status: u16,
        /// The registry's message, if any.
        message: String,
    },
    /// The registry's token endpoint refused or failed.
    #[error("authentication with the cache failed: {reason}")]
    Authenticate {
        /// What it said.
        reason: String,
    },
    /// The cache could not answer (no connection, time-out, a transfer cut short, 429,
    /// 5xx), on every attempt.
    #[error("the cache is unavailable ({attempts} attempts): {reason}")]
    Unavailable {
        /// Attempts made.
        attempts: u32,
        /// The last status, when the cache answered.
        status: Option<u16>,
        /// The last failure.
        reason: String,
    },
    /// Any other status: the cache refused the request.
    #[error("the cache refused the request ({status}){}", detail(.message))]
    Refused {
        /// The status.
        status: u16,
        /// The registry's message, if any.
        message: String,
    },
    /// An answer that breaks the protocol (no `Location` for an upload, no
    /// `Content-Length` for a blob).
    #[error("the cache's answer breaks the protocol: {reason}")]
    BadAnswer {
        /// What is wrong.
        reason: String,
    },
    /// The cache served other bytes than the blob asked for.
    #[error("the cache served {size} bytes with digest {actual} for {digest} ({declared} bytes)")]
    Corrupt {
        /// The digest asked for.
        digest: Digest,
        /// The size declared for it.
        declared: u64,
        /// Bytes served (counting stops just past the declared size).
        size: u64,
        /// The digest of what was served.
        actual: Digest,
    },
    /// The cache accepted the manifest but says it stored other bytes.
    #[error(
        "the cache stored the manifest at {reference} as {stored}, not as {pushed} (the digest of the bytes sent)"
    )]
    VerifyPush {
        /// `repository:tag`.
        reference: String,
        /// The digest of the bytes sent.
        pushed: Digest,
        /// The registry's `Docker-Content-Digest`.
        stored: String,
    },
    /// A local file could not be read or written.
    #[error("cannot read or write {}", .path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn detail(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

impl Transient for CacheError {
    fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }

    fn after_attempts(self, attempts: u32) -> Self {
        match self {
            Self::Unavailable { status, reason, .. } => Self::Unavailable {
                attempts,
                status,
                reason,
            },
            other => other,
        }
    }
}

fn unavailable(status: Option<u16>, reason: String) -> CacheError {
    CacheError::Unavailable {
        attempts: 1,
        status,
        reason,
    }
}

fn file_error(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError::File {
        path: path.to_owned(),
        source,
    }
}

/// The error of a status that is not a success.
fn classify_status(status: u16, message: String) -> CacheError {
    match status {
        401 | 403 => CacheError::Denied { status, message },
        429 | 500..=599 => {
            unavailable(Some(status), format!("status {status}{}", detail(&message)))
        }
        _ => CacheError::Refused { status, message },
    }
}

/// The error of a response whose status is not a success, with the registry's message.
async fn refused(response: Response) -> CacheError {
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    classify_status(status, crate::oci::error_body::summary(&body))
}

/// The `host[:port]` of a registry URL: what image references and Docker configs name it
/// by.
pub fn registry_host(root: &Url) -> Option<String> {
    match (root.host_str(), root.port()) {
        (Some(host), Some(port)) => Some(format!("{host}:{port}")),
        (Some(host), None) => Some(host.to_owned()),
        (None, _) => None,
    }
}

/// The cache registry of one receiver: its root, the contexts repository, credentials.
pub struct CacheClient {
    root: Url,
    repository: RepoName,
    /// oci-client's reference for the token flow (`host[:port]/repository:tag`).
    reference: oci_client::Reference,
    auth: RegistryAuth,
    /// The Basic credentials, for registries that challenge with Basic.
    basic: Option<HeaderValue>,
    retry: Retry,
    oci: Client,
    http: reqwest::Client,
    /// The `Authorization` the requests send: Basic credentials at first, a Bearer token
    /// once the registry asked for one.
    authorization: Mutex<Option<HeaderValue>>,
}

impl CacheClient {
    /// A client of the registry at `root` (`http[s]://host[:port]`) for `repository`
    /// (`tag` is only used to name the scope of a token). The error says what could not be
    /// set up.
    pub fn new(
        root: &Url,
        repository: &RepoName,
        tag: &Tag,
        credentials: Option<&Credentials>,
        retry: Retry,
    ) -> Result<Self, String> {
        let host =
            registry_host(root).ok_or_else(|| format!("the registry URL {root} names no host"))?;
        let (auth, basic) = match credentials {
            Some(credentials) => {
                let (auth, header) = credentials
                    .registry_auth()
                    .ok_or_else(|| "the credentials are not header-safe".to_owned())?;
                (auth, Some(header))
            }
            None => (RegistryAuth::Anonymous, None),
        };
        let protocol = if root.scheme() == "http" {
            ClientProtocol::HttpsExcept(vec![host.clone()])
        } else {
            ClientProtocol::Https
        };
        let (oci, http) = registry_clients(protocol)?;
        Ok(Self {
            root: root.clone(),
            repository: repository.clone(),
            reference: oci_client::Reference::with_tag(
                host,
                repository.to_string(),
                tag.to_string(),
            ),
            auth,
            basic: basic.clone(),
            retry,
            oci,
            http,
            authorization: Mutex::new(basic),
        })
    }

    fn url(&self, path: &str) -> Result<Url, CacheError> {
        self.root
            .join(&format!("v2/{}/{path}", self.repository))
            .map_err(|err| CacheError::BadAnswer {
                reason: format!("cannot make a URL of {path:?}: {err}"),
            })
    }

    fn blob_url(&self, digest: &Digest) -> Result<Url, CacheError> {
        self.url(&format!("blobs/{digest}"))
    }

    fn current_authorization(&self) -> Option<HeaderValue> {
        match self.authorization.lock() {
            Ok(value) => value.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_authorization(&self, authorization: Option<HeaderValue>) {
        match self.authorization.lock() {
            Ok(mut value) => *value = authorization,
            Err(poisoned) => *poisoned.into_inner() = authorization,
        }
    }

    /// Sends `request` with the current `Authorization`. The error is the network's.
    async fn send_once(&self, request: reqwest::RequestBuilder) -> Result<Response, CacheError> {
        let request = match self.current_authorization() {
            Some(value) => request.header(header::AUTHORIZATION, value),
            None => request,
        };
        request
            .send()
            .await
            .map_err(|err| unavailable(None, crate::report::error_chain(&err)))
    }

    /// Sends the request `build` makes; when the registry answers 401, authenticates and
    /// sends a second one. Any status comes back as a response.
    async fn send(
        &self,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<Response, CacheError> {
        let response = self.send_once(build(&self.http)).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let authorization = self.authenticate().await?;
        self.set_authorization(authorization);
        self.send_once(build(&self.http)).await
    }

    /// The `Authorization` for pushes and pulls: a Bearer token from the registry's token
    /// flow, or the Basic credentials when the registry challenges with Basic (or not at
    /// all).
    async fn authenticate(&self) -> Result<Option<HeaderValue>, CacheError> {
        let token = self
            .oci
            .auth(&self.reference, &self.auth, RegistryOperation::Push)
            .await
            .map_err(|err| match err {
                OciDistributionError::RequestError(err) => {
                    unavailable(None, crate::report::error_chain(&err))
                }
                OciDistributionError::ServerError { code, message, .. } => {
                    classify_status(code, crate::oci::error_body::summary(&message))
                }
                other => CacheError::Authenticate {
                    reason: crate::report::error_chain(&other),
                },
            })?;
        match token {
            Some(token) => HeaderValue::from_str(&format!("Bearer {token}"))
                .map(Some)
                .map_err(|_| CacheError::Authenticate {
                    reason: "the registry's token is not header-safe".to_owned(),
                }),
            None => Ok(self.basic.clone()),
        }
    }

    /// The size of blob `digest` in the repository, or `None` when it has none.
    pub async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>, CacheError> {
        let url = self.blob_url(digest)?;
        retrying(self.retry, url.as_str(), || async {
            let response = self.send(|http| http.head(url.clone())).await?;
            match response.status() {
                StatusCode::NOT_FOUND => Ok(None),
                status if status.is_success() => content_length(&response).map(Some),
                _ => Err(refused(response).await),
            }
        })
        .await
    }

    /// Downloads blob `digest` of `size` bytes to `path` (created or truncated), checking
    /// both while writing.
    pub async fn download_blob(
        &self,
        digest: &Digest,
        size: u64,
        path: &Path,
    ) -> Result<(), CacheError> {
        let url = self.blob_url(digest)?;
        retrying(self.retry, url.as_str(), || async {
            let response = self.send(|http| http.get(url.clone())).await?;
            if !response.status().is_success() {
                return Err(refused(response).await);
            }
            let mut file = tokio::fs::File::create(path)
                .await
                .map_err(file_error(path))?;
            let mut hasher = Hasher::with(digest.algorithm());
            let mut written: u64 = 0;
            let mut body = response.bytes_stream();
            while let Some(piece) = body.next().await {
                let piece =
                    piece.map_err(|err| unavailable(None, crate::report::error_chain(&err)))?;
                written += piece.len() as u64;
                if written > size {
                    break;
                }
                hasher.update(&piece);
                file.write_all(&piece).await.map_err(file_error(path))?;
            }
            file.flush().await.map_err(file_error(path))?;
            let actual = hasher.finish();
            if written != size || actual != *digest {
                return Err(CacheError::Corrupt {
                    digest: *digest,
                    declared: size,
                    size: written,
                    actual,
                });
            }
            Ok(())
        })
        .await
    }

    /// Pushes the `size` bytes of `path` as blob `digest`, streaming them from the file.
    pub async fn push_blob_file(
        &self,
        digest: &Digest,
        size: u64,
        path: &Path,
    ) -> Result<(), CacheError> {
        let what = format!("push {digest}");
        retrying(self.retry, &what, || async {
            let file = tokio::fs::File::open(path)
                .await
                .map_err(file_error(path))?;
            let body = reqwest::Body::wrap_stream(file_pieces(file));
            self.push_blob_once(digest, size, body).await
        })
        .await
    }

    /// Pushes `bytes` as blob `digest`.
    pub async fn push_blob_bytes(&self, digest: &Digest, bytes: Bytes) -> Result<(), CacheError> {
        let what = format!("push {digest}");
        retrying(self.retry, &what, || {
            self.push_blob_once(digest, bytes.len() as u64, bytes.clone().into())
        })
        .await
    }

    /// One upload: a session, then one `PUT` of the whole body.
    async fn push_blob_once(
        &self,
        digest: &Digest,
        size: u64,
        body: reqwest::Body,
    ) -> Result<(), CacheError> {
        let start = self.url("blobs/uploads/")?;
        let response = self
            .send(|http| http.post(start.clone()).header(header::CONTENT_LENGTH, "0"))
            .await?;
        if !response.status().is_success() {
            return Err(refused(response).await);
        }
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|value| value.to_str().ok())
            .ok_or_else(|| CacheError::BadAnswer {
                reason: "an upload session without a Location".to_owned(),
            })?;
        let mut session = self
            .root
            .join(location)
            .map_err(|err| CacheError::BadAnswer {
                reason: format!("the upload Location {location:?}: {err}"),
            })?;
        session
            .query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        // The body streams: it cannot be sent twice, so a 401 here (the session's POST
        // already authenticated) is an answer, not a prompt to authenticate.
        let response = self
            .send_once(
                self.http
                    .put(session)
                    .header(header::CONTENT_TYPE, "application/octet-stream")
                    .header(header::CONTENT_LENGTH, size)
                    .body(body),
            )
            .await?;
        if !response.status().is_success() {
            return Err(refused(response).await);
        }
        Ok(())
    }

    /// Tags the context's manifest ([`context_manifest`]) for the blob `digest` of `size`
    /// bytes at `tag`, pushing the empty config first when the repository lacks it.
    /// Returns the manifest's digest. Idempotent: the same tar gives the same manifest.
    pub async fn tag_context(
        &self,
        tag: &Tag,
        digest: &Digest,
        size: u64,
    ) -> Result<Digest, CacheError> {
        let empty = empty_config_digest();
        if self.blob_size(&empty).await?.is_none() {
            self.push_blob_bytes(&empty, Bytes::from_static(EMPTY_CONFIG))
                .await?;
        }
        let bytes = Bytes::from(context_manifest(digest, size));
        let pushed = Digest::of(&bytes);
        let url = self.url(&format!("manifests/{tag}"))?;
        let stored = retrying(self.retry, url.as_str(), || async {
            let response = self
                .send(|http| {
                    http.put(url.clone())
                        .header(header::CONTENT_TYPE, OCI_MANIFEST)
                        .body(bytes.clone())
                })
                .await?;
            if !response.status().is_success() {
                return Err(refused(response).await);
            }
            Ok(response
                .headers()
                .get("docker-content-digest")
                .map(|value| String::from_utf8_lossy(value.as_bytes()).trim().to_owned()))
        })
        .await?;
        if let Some(stored) = stored.filter(|stored| *stored != pushed.to_string()) {
            return Err(CacheError::VerifyPush {
                reference: format!("{}:{tag}", self.repository),
                pushed,
                stored,
            });
        }
        Ok(pushed)
    }
}

/// The `Content-Length` of a blob's `HEAD` answer.
fn content_length(response: &Response) -> Result<u64, CacheError> {
    response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.trim().parse().ok())
        .ok_or_else(|| CacheError::BadAnswer {
            reason: "a blob's HEAD answer without a Content-Length".to_owned(),
        })
}

/// The contents of `file` in pieces of at most [`READ_PIECE`] bytes.
fn file_pieces(file: tokio::fs::File) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    futures::stream::try_unfold(file, |mut file| async move {
        let mut piece = BytesMut::with_capacity(READ_PIECE);
        let read = file.read_buf(&mut piece).await?;
        Ok((read > 0).then(|| (piece.freeze(), file)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_for_retries_and_messages() {
        assert!(classify_status(503, String::new()).is_transient());
        assert!(classify_status(429, String::new()).is_transient());
        assert!(!classify_status(400, String::new()).is_transient());
        let denied = classify_status(403, "DENIED no".to_owned());
        assert!(!denied.is_transient());
        assert_eq!(
            denied.to_string(),
            "the cache refused access (403): check the cache token in the Docker config: DENIED no"
        );
        let gave_up = classify_status(502, String::new()).after_attempts(4);
        assert_eq!(
            gave_up.to_string(),
            "the cache is unavailable (4 attempts): status 502"
        );
    }
}
