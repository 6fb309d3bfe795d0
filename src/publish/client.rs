//! One output registry, as the short pods that publish an image talk to it: fetch a
//! manifest, upload a blob, put a manifest at a tag, with the registry's token flow and
//! retries (I/O: HTTP to one registry; reading a Docker config file).
//!
//! Manifests are fetched with oci-client's `pull_manifest_raw`, which also runs the token
//! flow (anonymous, Bearer with credentials, or Basic when the registry asks for it).
//! Uploads and manifest PUTs go through reqwest (the one oci-client is built on) because
//! oci-client's pushes return no response header, and the `Docker-Content-Digest` check
//! needs one; their token still comes from oci-client's `auth`.
//!
//! Connection failures, time-outs, 429 and 5xx answers are retried ([`Retry`]); any other
//! answer is definite ([`RequestError`]).
//!
//! Credentials come from a Docker `config.json` ([`read_docker_config`], parsed by
//! [`crate::registry::mirror::credentials`], the format of a `kubernetes.io/dockerconfigjson`
//! Secret).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Mutex;

use bytes::Bytes;
use oci_client::client::ClientProtocol;
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};
use reqwest::header::{self, HeaderValue};
use reqwest::{Method, StatusCode};

use crate::oci::digest::Digest;
use crate::oci::media::MANIFEST_MEDIA_TYPES;
use crate::oci::name::ImageName;
use crate::registry::mirror::credentials::{Credentials, CredentialsError, credentials_for};
use crate::registry::mirror::upstream::registry_clients;
pub use crate::retry::Retry;
use crate::retry::{Transient, retrying};

/// The file of a Docker config directory that holds credentials.
pub const DOCKER_CONFIG_FILE: &str = "config.json";

/// The credentials for `registry` in `dir/config.json` (a Docker config directory, such
/// as a mounted `kubernetes.io/dockerconfigjson` Secret). No file, or no entry for the
/// registry, is `None`: anonymous.
pub fn read_docker_config(
    dir: &Path,
    registry: &str,
) -> Result<Option<Credentials>, CredentialsError> {
    let path = dir.join(DOCKER_CONFIG_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CredentialsError::Read {
                path: path.display().to_string(),
                source,
            });
        }
    };
    credentials_for(&text, registry)
}

/// The client could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot set up the registry client: {reason}")]
pub struct SetupError {
    /// What went wrong.
    pub reason: String,
}

/// How a request to the registry failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The registry has no such manifest (or repository).
    #[error("the registry has no such manifest or repository (404){}", detail(.message))]
    NotFound {
        /// The registry's message, if any.
        message: String,
    },
    /// The registry refused access (401 or 403), after authenticating if it asked to.
    #[error(
        "access denied ({status}): check the push Secret's credentials for this registry{}",
        detail(.message)
    )]
    Denied {
        /// 401 or 403.
        status: u16,
        /// The registry's message, if any.
        message: String,
    },
    /// The registry's token endpoint refused or failed.
    #[error("authentication with the registry failed: {reason}")]
    Authenticate {
        /// What it said.
        reason: String,
    },
    /// The registry could not answer (no connection, time-out, 429, 5xx), on every attempt.
    #[error("the registry is unavailable ({attempts} attempts): {reason}")]
    Unavailable {
        /// Attempts made.
        attempts: u32,
        /// The last status, when the registry answered.
        status: Option<u16>,
        /// The last failure.
        reason: String,
    },
    /// Any other status: the registry refused the request (400 `MANIFEST_INVALID`, ...).
    #[error("the registry refused the request ({status}){}", detail(.message))]
    Refused {
        /// The status.
        status: u16,
        /// The registry's message, if any.
        message: String,
    },
    /// An answer that breaks the protocol (a success status other than 200 on a fetch, an
    /// unparseable header).
    #[error("the registry's answer breaks the protocol: {reason}")]
    BadAnswer {
        /// What is wrong.
        reason: String,
    },
}

fn detail(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

impl RequestError {
    /// Whether sending the request again may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

impl Transient for RequestError {
    fn is_transient(&self) -> bool {
        RequestError::is_transient(self)
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

/// The registry of one image's repository: oci-client for fetches and tokens, reqwest for
/// uploads and PUTs.
pub struct RegistryClient {
    /// The image: its registry and repository are where every request goes.
    pub(super) image: ImageName,
    /// The host requests go to (Docker Hub's API host for `docker.io`).
    api_host: String,
    scheme: &'static str,
    pub(super) auth: RegistryAuth,
    basic: Option<HeaderValue>,
    pub(super) retry: Retry,
    pub(super) oci: Client,
    http: reqwest::Client,
    /// The `Authorization` value the last push request needed, for the later ones.
    push_authorization: Mutex<Option<HeaderValue>>,
}

impl RegistryClient {
    /// A client for `image`'s repository, with `credentials` (anonymous without), over
    /// plain HTTP to the registries in `plain_http`.
    pub fn new(
        image: &ImageName,
        credentials: Option<&Credentials>,
        plain_http: &BTreeSet<String>,
        retry: Retry,
    ) -> Result<Self, SetupError> {
        let setup = |reason: String| SetupError { reason };
        let (auth, basic) = match credentials {
            Some(credentials) => {
                let (auth, header) = credentials
                    .registry_auth()
                    .ok_or_else(|| setup("the credentials are not header-safe".to_owned()))?;
                (auth, Some(header))
            }
            None => (RegistryAuth::Anonymous, None),
        };
        let api_host = tag_reference(image).resolve_registry().to_owned();
        let scheme = if plain_http.contains(&api_host) {
            "http"
        } else {
            "https"
        };
        let (oci, http) = registry_clients(ClientProtocol::HttpsExcept(
            plain_http.iter().cloned().collect(),
        ))
        .map_err(setup)?;
        Ok(Self {
            image: image.clone(),
            api_host,
            scheme,
            auth,
            basic,
            retry,
            oci,
            http,
            push_authorization: Mutex::new(None),
        })
    }

    /// The image this client was made for.
    pub fn image(&self) -> &ImageName {
        &self.image
    }

    /// The oci-client reference of `digest` in the image's repository.
    pub(super) fn digest_reference(&self, digest: &Digest) -> oci_client::Reference {
        oci_client::Reference::with_digest(
            self.image.registry.clone(),
            self.image.repository.to_string(),
            digest.to_string(),
        )
    }

    /// The manifest at `tag` in the image's repository, with its media type; `None` when
    /// the registry has none there.
    pub async fn manifest_at_tag(
        &self,
        tag: &str,
    ) -> Result<Option<(Vec<u8>, String)>, RequestError> {
        let reference = oci_client::Reference::with_tag(
            self.image.registry.clone(),
            self.image.repository.to_string(),
            tag.to_owned(),
        );
        let what = format!("{}/{}:{tag}", self.image.registry, self.image.repository);
        let fetched = retrying(self.retry, &what, || async {
            match self
                .oci
                .pull_manifest_raw(&reference, &self.auth, &MANIFEST_MEDIA_TYPES)
                .await
            {
                Ok((bytes, media_type)) => Ok(Some((bytes.to_vec(), media_type))),
                Err(err) => match classify_oci(err) {
                    RequestError::NotFound { .. } => Ok(None),
                    other => Err(other),
                },
            }
        })
        .await?;
        Ok(fetched)
    }

    /// Uploads blob `bytes` to the image's repository (one POST, then one PUT with the
    /// whole body and its digest).
    pub async fn push_blob(&self, bytes: Bytes) -> Result<(), RequestError> {
        let digest = Digest::of(&bytes);
        let start = self.url("blobs/uploads/");
        retrying(self.retry, &start, || async {
            let response = self
                .send_authorized(Method::POST, &start, None, Bytes::new())
                .await?;
            let location = response
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| RequestError::BadAnswer {
                    reason: "the upload's answer has no Location".to_owned(),
                })?;
            let mut url = reqwest::Url::parse(&start)
                .and_then(|base| base.join(location))
                .map_err(|err| RequestError::BadAnswer {
                    reason: format!("upload Location {location:?}: {err}"),
                })?;
            url.query_pairs_mut()
                .append_pair("digest", &digest.to_string());
            self.send_authorized(
                Method::PUT,
                url.as_str(),
                Some("application/octet-stream"),
                bytes.clone(),
            )
            .await?;
            Ok(())
        })
        .await
    }

    /// PUTs manifest `bytes` of `media_type` at `tag`; returns the registry's
    /// `Docker-Content-Digest`, if any.
    pub async fn put_manifest(
        &self,
        tag: &str,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<Option<String>, RequestError> {
        let url = self.url(&format!("manifests/{tag}"));
        retrying(self.retry, &url, || async {
            let response = self
                .send_authorized(Method::PUT, &url, Some(media_type), bytes.clone())
                .await?;
            Ok(response
                .headers()
                .get("docker-content-digest")
                .map(|value| String::from_utf8_lossy(value.as_bytes()).trim().to_owned()))
        })
        .await
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}://{}/v2/{}/{path}",
            self.scheme, self.api_host, self.image.repository
        )
    }

    /// One push request, authenticating once if the registry answers 401; any answer but
    /// a success is an error.
    async fn send_authorized(
        &self,
        method: Method,
        url: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<reqwest::Response, RequestError> {
        let cached = match self.push_authorization.lock() {
            Ok(value) => value.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let mut response = self
            .send(method.clone(), url, content_type, body.clone(), cached)
            .await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            let authorization = self.authenticate_push().await?;
            response = self
                .send(method, url, content_type, body, authorization.clone())
                .await?;
            match self.push_authorization.lock() {
                Ok(mut value) => *value = authorization,
                Err(poisoned) => *poisoned.into_inner() = authorization,
            }
        }
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let message = response.text().await.unwrap_or_default();
        Err(classify_status(
            status.as_u16(),
            crate::oci::error_body::summary(&message),
        ))
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        content_type: Option<&str>,
        body: Bytes,
        authorization: Option<HeaderValue>,
    ) -> Result<reqwest::Response, RequestError> {
        let mut request = self.http.request(method, url).body(body);
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        request
            .send()
            .await
            .map_err(|err| unavailable(None, crate::report::error_chain(&err)))
    }

    /// The `Authorization` for a push: a Bearer token from the registry's token flow, or
    /// Basic credentials when the registry challenges with Basic (or not at all).
    async fn authenticate_push(&self) -> Result<Option<HeaderValue>, RequestError> {
        let token = self
            .oci
            .auth(
                &tag_reference(&self.image),
                &self.auth,
                RegistryOperation::Push,
            )
            .await
            .map_err(|err| match err {
                OciDistributionError::AuthenticationFailure(reason) => {
                    RequestError::Authenticate { reason }
                }
                other => classify_oci(other),
            })?;
        match token {
            Some(token) => HeaderValue::from_str(&format!("Bearer {token}"))
                .map(Some)
                .map_err(|_| RequestError::Authenticate {
                    reason: "the registry's token is not header-safe".to_owned(),
                }),
            None => Ok(self.basic.clone()),
        }
    }
}

fn tag_reference(image: &ImageName) -> oci_client::Reference {
    oci_client::Reference::with_tag(
        image.registry.clone(),
        image.repository.to_string(),
        image.tag.to_string(),
    )
}

pub(super) fn unavailable(status: Option<u16>, reason: String) -> RequestError {
    RequestError::Unavailable {
        attempts: 1,
        status,
        reason,
    }
}

/// The error class of an HTTP status that is not a success.
fn classify_status(status: u16, message: String) -> RequestError {
    match status {
        404 => RequestError::NotFound { message },
        401 | 403 => RequestError::Denied { status, message },
        429 | 500..=599 => {
            let reason = format!("status {status}{}", detail(&message));
            unavailable(Some(status), reason)
        }
        _ => RequestError::Refused { status, message },
    }
}

/// The error class of an oci-client failure.
pub(super) fn classify_oci(err: OciDistributionError) -> RequestError {
    match err {
        OciDistributionError::RequestError(err) => {
            unavailable(None, crate::report::error_chain(&err))
        }
        OciDistributionError::IoError(err) => unavailable(None, crate::report::error_chain(&err)),
        OciDistributionError::ServerError { code, message, .. } => {
            classify_status(code, crate::oci::error_body::summary(&message))
        }
        OciDistributionError::UnauthorizedError { .. } => classify_status(401, String::new()),
        OciDistributionError::AuthenticationFailure(reason) => {
            RequestError::Authenticate { reason }
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
            let message = envelope
                .errors
                .iter()
                .map(|e| {
                    let code = serde_json::to_value(&e.code)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default();
                    format!("{code} {}", e.message).trim().to_owned()
                })
                .collect::<Vec<_>>()
                .join("; ");
            classify_status(status, message)
        }
        other => RequestError::BadAnswer {
            reason: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;

    #[test]
    fn credentials_come_from_the_config_directory_and_no_file_is_anonymous() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            read_docker_config(dir.path(), "registry.example.com").unwrap(),
            None
        );
        assert_eq!(
            read_docker_config(&dir.path().join("absent"), "registry.example.com").unwrap(),
            None
        );
        let auth = STANDARD.encode("bob:s3cret");
        std::fs::write(
            dir.path().join(DOCKER_CONFIG_FILE),
            format!(
                r#"{{"auths": {{
                    "registry.example.com": {{"auth": "{auth}"}},
                    "https://index.docker.io/v1/": {{"username": "hub", "password": "tok"}}
                }}}}"#
            ),
        )
        .unwrap();
        assert_eq!(
            read_docker_config(dir.path(), "registry.example.com").unwrap(),
            Some(Credentials {
                username: "bob".into(),
                password: "s3cret".into()
            })
        );
        assert_eq!(
            read_docker_config(dir.path(), "docker.io").unwrap(),
            Some(Credentials {
                username: "hub".into(),
                password: "tok".into()
            })
        );
        assert_eq!(read_docker_config(dir.path(), "ghcr.io").unwrap(), None);
        std::fs::write(dir.path().join(DOCKER_CONFIG_FILE), "{not json").unwrap();
        assert!(matches!(
            read_docker_config(dir.path(), "registry.example.com"),
            Err(CredentialsError::Parse(_))
        ));
    }
}
