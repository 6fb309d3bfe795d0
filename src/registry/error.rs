//! The registry's errors as the OCI Distribution Spec's error codes: one enum, one mapping
//! to an HTTP status and a JSON body (pure, apart from logging internal errors).
//!
//! Clients see `{"errors":[{"code":..,"message":..,"detail":..}]}` with the spec's code and
//! message. The `detail` holds only what the client sent or may know (a digest, a name, the
//! reason a request was refused). An [`RegistryError::Internal`] error is logged with its
//! whole `source()` chain and reaches the client as a generic 500 with code `UNKNOWN`: file
//! paths, database messages and upstream answers never leave the server.

use std::error::Error as StdError;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::cacheapi::{ErrorBody, ErrorInfo};
use crate::oci::digest::{Digest, DigestError};
use crate::oci::name::{NameError, ReferenceError};
use crate::registry::path::PathError;
use crate::store::StoreError;

/// An error that a registry route answers with. Each variant is one spec error code (see
/// [`RegistryError::code`]); [`RegistryError::status`] is the one place that maps it to HTTP.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// `BLOB_UNKNOWN` (404): the repository has no blob with this digest.
    #[error("blob {digest} is unknown")]
    BlobUnknown {
        /// The digest asked for.
        digest: Digest,
    },
    /// `BLOB_UNKNOWN` (404) for a digest that cannot name any blob (malformed, or of an
    /// algorithm the registry does not support), where the spec allows only a 404.
    #[error("blob {digest:?} is unknown: {reason}")]
    BlobUnknownMalformed {
        /// The digest as the client wrote it.
        digest: String,
        /// Why it names no blob.
        reason: String,
    },
    /// `BLOB_UPLOAD_INVALID` (400): the upload cannot go on as asked.
    #[error("blob upload invalid: {reason}")]
    BlobUploadInvalid {
        /// What is wrong, for the client.
        reason: String,
    },
    /// `BLOB_UPLOAD_UNKNOWN` (404): no such upload session.
    #[error("blob upload {id:?} is unknown")]
    BlobUploadUnknown {
        /// The session id from the path.
        id: String,
    },
    /// `DIGEST_INVALID` (400): a digest is malformed, or the content does not hash to it.
    #[error("digest invalid: {reason}")]
    DigestInvalid {
        /// What is wrong, for the client.
        reason: String,
    },
    /// `MANIFEST_BLOB_UNKNOWN` (404): a pushed manifest references a blob the repository
    /// does not hold.
    #[error("manifest references unknown blob {digest}")]
    ManifestBlobUnknown {
        /// The missing blob or manifest.
        digest: Digest,
    },
    /// `MANIFEST_INVALID` (400): the manifest (or its reference) cannot be accepted.
    #[error("manifest invalid: {reason}")]
    ManifestInvalid {
        /// What is wrong, for the client.
        reason: String,
    },
    /// `MANIFEST_UNKNOWN` (404): no manifest under this tag or digest.
    #[error("manifest {reference} is unknown")]
    ManifestUnknown {
        /// The tag or digest asked for.
        reference: String,
    },
    /// `NAME_INVALID` (400): the repository name breaks the grammar.
    #[error("repository name invalid: {reason}")]
    NameInvalid {
        /// What is wrong, for the client.
        reason: String,
    },
    /// `NAME_UNKNOWN` (404): no such repository.
    #[error("repository {name} is unknown")]
    NameUnknown {
        /// The repository name.
        name: String,
    },
    /// `NAME_UNKNOWN` (404): a name that should be a mirror repository (`<mirror>/<path>`)
    /// names no configured mirror. The detail lists the mirrors there are.
    #[error("{name} is not a mirror repository")]
    NotMirrored {
        /// The name given.
        name: String,
        /// The configured mirrors' names, sorted.
        mirrors: Vec<String>,
    },
    /// `SIZE_INVALID` (400): a length does not match the content.
    #[error("size invalid: {reason}")]
    SizeInvalid {
        /// What is wrong, for the client.
        reason: String,
    },
    /// `UNAUTHORIZED` (401): no valid credentials. Carries the `WWW-Authenticate` challenge
    /// that tells the client where to get a token.
    #[error("authentication required")]
    Unauthorized {
        /// The `WWW-Authenticate` header value, if the server offers a token flow.
        challenge: Option<String>,
        /// Why the credentials presented were not accepted ("token expired"), if any were.
        reason: Option<String>,
    },
    /// `DENIED` (403): the credentials are valid but do not allow this.
    #[error("access denied: {reason}")]
    Denied {
        /// Why, for the client (never a secret).
        reason: String,
    },
    /// `UNSUPPORTED` (405): this method is not served on this route.
    #[error("method not allowed: {reason}")]
    Unsupported {
        /// What is not supported.
        reason: String,
    },
    /// `UNSUPPORTED` (404): no such endpoint.
    #[error("no such endpoint: {path}")]
    RouteUnknown {
        /// The request path.
        path: String,
    },
    /// `SIZE_INVALID` (413): the body is larger than the registry accepts (a manifest over
    /// the limit).
    #[error("payload too large: {reason}")]
    TooLarge {
        /// What was too large, and the limit.
        reason: String,
    },
    /// `PAGINATION_NUMBER_INVALID` (400, from distribution): `n` is not a number of results
    /// the registry can return.
    #[error("invalid number of results requested: {reason}")]
    PaginationInvalid {
        /// What is wrong, for the client.
        reason: String,
    },
    /// `TOOMANYREQUESTS` (429): the client should slow down.
    #[error("too many requests: {reason}")]
    TooManyRequests {
        /// What limit was reached, for the client.
        reason: String,
    },
    /// `RANGE_INVALID` (416): a chunk does not start where the upload ends, or a blob
    /// `Range` lies outside the blob.
    #[error("range not satisfiable: {reason}")]
    RangeNotSatisfiable {
        /// What is wrong, for the client.
        reason: String,
    },
    /// `UNAVAILABLE` (503): a dependency (the upstream of a mirror repository) cannot answer
    /// and nothing cached can stand in.
    #[error("service unavailable: {reason}")]
    Unavailable {
        /// What is unavailable, for the client (no internal detail).
        reason: String,
    },
    /// `UNKNOWN` (500): a fault of the server. Logged with its cause; the client sees none
    /// of it.
    #[error("internal error while trying to {action}")]
    Internal {
        /// What the server was doing, as a verb phrase ("commit blob").
        action: &'static str,
        /// The cause.
        #[source]
        source: Box<dyn StdError + Send + Sync + 'static>,
    },
}

/// The spec's error codes (and distribution's `RANGE_INVALID`, `UNAVAILABLE` and `UNKNOWN`),
/// with their standard messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorCode {
    /// `BLOB_UNKNOWN`.
    BlobUnknown,
    /// `BLOB_UPLOAD_INVALID`.
    BlobUploadInvalid,
    /// `BLOB_UPLOAD_UNKNOWN`.
    BlobUploadUnknown,
    /// `DIGEST_INVALID`.
    DigestInvalid,
    /// `MANIFEST_BLOB_UNKNOWN`.
    ManifestBlobUnknown,
    /// `MANIFEST_INVALID`.
    ManifestInvalid,
    /// `MANIFEST_UNKNOWN`.
    ManifestUnknown,
    /// `NAME_INVALID`.
    NameInvalid,
    /// `NAME_UNKNOWN`.
    NameUnknown,
    /// `SIZE_INVALID`.
    SizeInvalid,
    /// `UNAUTHORIZED`.
    Unauthorized,
    /// `DENIED`.
    Denied,
    /// `UNSUPPORTED`.
    Unsupported,
    /// `TOOMANYREQUESTS`.
    TooManyRequests,
    /// `PAGINATION_NUMBER_INVALID` (from distribution).
    PaginationNumberInvalid,
    /// `RANGE_INVALID` (from distribution; the spec names only the 416 status).
    RangeInvalid,
    /// `UNAVAILABLE` (from distribution).
    Unavailable,
    /// `UNKNOWN` (from distribution): an internal error.
    Unknown,
}

impl ErrorCode {
    /// The code as it appears in the JSON body.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BlobUnknown => "BLOB_UNKNOWN",
            Self::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            Self::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            Self::DigestInvalid => "DIGEST_INVALID",
            Self::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            Self::ManifestInvalid => "MANIFEST_INVALID",
            Self::ManifestUnknown => "MANIFEST_UNKNOWN",
            Self::NameInvalid => "NAME_INVALID",
            Self::NameUnknown => "NAME_UNKNOWN",
            Self::SizeInvalid => "SIZE_INVALID",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::Denied => "DENIED",
            Self::Unsupported => "UNSUPPORTED",
            Self::TooManyRequests => "TOOMANYREQUESTS",
            Self::PaginationNumberInvalid => "PAGINATION_NUMBER_INVALID",
            Self::RangeInvalid => "RANGE_INVALID",
            Self::Unavailable => "UNAVAILABLE",
            Self::Unknown => "UNKNOWN",
        }
    }

    /// The standard message of the code (the spec's wording where it has one).
    pub const fn message(self) -> &'static str {
        match self {
            Self::BlobUnknown => "blob unknown to registry",
            Self::BlobUploadInvalid => "blob upload invalid",
            Self::BlobUploadUnknown => "blob upload unknown to registry",
            Self::DigestInvalid => "provided digest did not match uploaded content",
            Self::ManifestBlobUnknown => {
                "manifest references a manifest or blob unknown to registry"
            }
            Self::ManifestInvalid => "manifest invalid",
            Self::ManifestUnknown => "manifest unknown to registry",
            Self::NameInvalid => "invalid repository name",
            Self::NameUnknown => "repository name not known to registry",
            Self::SizeInvalid => "provided length did not match content length",
            Self::Unauthorized => "authentication required",
            Self::Denied => "requested access to the resource is denied",
            Self::Unsupported => "the operation is unsupported",
            Self::TooManyRequests => "too many requests",
            Self::PaginationNumberInvalid => "invalid number of results requested",
            Self::RangeInvalid => "invalid content range",
            Self::Unavailable => "service unavailable",
            Self::Unknown => "internal server error",
        }
    }
}

impl RegistryError {
    /// An internal error: `action` says what the server was doing ("read blob").
    pub fn internal(
        action: &'static str,
        source: impl Into<Box<dyn StdError + Send + Sync + 'static>>,
    ) -> Self {
        Self::Internal {
            action,
            source: source.into(),
        }
    }

    /// The spec error code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BlobUnknown { .. } | Self::BlobUnknownMalformed { .. } => ErrorCode::BlobUnknown,
            Self::BlobUploadInvalid { .. } => ErrorCode::BlobUploadInvalid,
            Self::BlobUploadUnknown { .. } => ErrorCode::BlobUploadUnknown,
            Self::DigestInvalid { .. } => ErrorCode::DigestInvalid,
            Self::ManifestBlobUnknown { .. } => ErrorCode::ManifestBlobUnknown,
            Self::ManifestInvalid { .. } => ErrorCode::ManifestInvalid,
            Self::ManifestUnknown { .. } => ErrorCode::ManifestUnknown,
            Self::NameInvalid { .. } => ErrorCode::NameInvalid,
            Self::NameUnknown { .. } | Self::NotMirrored { .. } => ErrorCode::NameUnknown,
            Self::SizeInvalid { .. } | Self::TooLarge { .. } => ErrorCode::SizeInvalid,
            Self::PaginationInvalid { .. } => ErrorCode::PaginationNumberInvalid,
            Self::Unauthorized { .. } => ErrorCode::Unauthorized,
            Self::Denied { .. } => ErrorCode::Denied,
            Self::Unsupported { .. } | Self::RouteUnknown { .. } => ErrorCode::Unsupported,
            Self::TooManyRequests { .. } => ErrorCode::TooManyRequests,
            Self::RangeNotSatisfiable { .. } => ErrorCode::RangeInvalid,
            Self::Unavailable { .. } => ErrorCode::Unavailable,
            Self::Internal { .. } => ErrorCode::Unknown,
        }
    }

    /// The HTTP status: the one mapping from error to status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BlobUnknown { .. }
            | Self::BlobUnknownMalformed { .. }
            | Self::BlobUploadUnknown { .. }
            | Self::ManifestBlobUnknown { .. }
            | Self::ManifestUnknown { .. }
            | Self::NameUnknown { .. }
            | Self::NotMirrored { .. }
            | Self::RouteUnknown { .. } => StatusCode::NOT_FOUND,
            Self::BlobUploadInvalid { .. }
            | Self::DigestInvalid { .. }
            | Self::ManifestInvalid { .. }
            | Self::NameInvalid { .. }
            | Self::SizeInvalid { .. }
            | Self::PaginationInvalid { .. } => StatusCode::BAD_REQUEST,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::Denied { .. } => StatusCode::FORBIDDEN,
            Self::Unsupported { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What the client may learn beyond the code: the parameters it sent, or why it was
    /// refused. Never anything from an internal cause.
    fn detail(&self) -> Option<Value> {
        match self {
            Self::BlobUnknown { digest } | Self::ManifestBlobUnknown { digest } => {
                Some(json!({ "digest": digest }))
            }
            Self::BlobUnknownMalformed { digest, reason } => {
                Some(json!({ "digest": digest, "reason": reason }))
            }
            Self::BlobUploadUnknown { id } => Some(json!({ "upload": id })),
            Self::ManifestUnknown { reference } => Some(json!({ "reference": reference })),
            Self::NameUnknown { name } => Some(json!({ "name": name })),
            Self::NotMirrored { name, mirrors } => {
                let configured = if mirrors.is_empty() {
                    "no mirror is configured".to_owned()
                } else {
                    format!("the configured mirrors are {}", mirrors.join(", "))
                };
                Some(Value::String(format!(
                    "{name} is not a mirror repository (<mirror>/<path>): {configured}"
                )))
            }
            Self::RouteUnknown { path } => Some(json!({ "path": path })),
            Self::BlobUploadInvalid { reason }
            | Self::DigestInvalid { reason }
            | Self::ManifestInvalid { reason }
            | Self::NameInvalid { reason }
            | Self::SizeInvalid { reason }
            | Self::TooLarge { reason }
            | Self::PaginationInvalid { reason }
            | Self::Denied { reason }
            | Self::Unsupported { reason }
            | Self::RangeNotSatisfiable { reason }
            | Self::TooManyRequests { reason }
            | Self::Unavailable { reason } => Some(Value::String(reason.clone())),
            Self::Unauthorized { reason, .. } => reason.clone().map(Value::String),
            Self::Internal { .. } => None,
        }
    }

    /// The JSON body the client receives.
    pub fn body(&self) -> ErrorBody {
        let code = self.code();
        ErrorBody {
            errors: vec![ErrorInfo {
                code: code.as_str().to_owned(),
                message: code.message().to_owned(),
                detail: self.detail(),
            }],
        }
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        if let Self::Internal { .. } = &self {
            tracing::error!(error = %crate::report::error_chain(&self), "request failed");
        }
        let status = self.status();
        // A body of strings and string-keyed maps always serializes; should it ever not,
        // the status alone still goes out.
        let body = serde_json::to_vec(&self.body()).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Self::Unauthorized {
            challenge: Some(challenge),
            ..
        } = &self
        {
            // A challenge is built from our own configuration and a validated repository
            // name; should it ever hold a byte a header cannot, the 401 still goes out.
            if let Ok(value) = HeaderValue::from_str(challenge) {
                headers.insert(header::WWW_AUTHENTICATE, value);
            }
        }
        response
    }
}

impl RegistryError {
    /// The answer to a store failure while doing `action`: what the client caused gets its
    /// spec code, the rest is an internal error.
    pub fn from_store(action: &'static str, err: StoreError) -> Self {
        match err {
            StoreError::DigestMismatch { expected, actual } => Self::DigestInvalid {
                reason: format!("content hashes to {actual}, not {expected}"),
            },
            StoreError::SizeMismatch { expected, actual } => Self::SizeInvalid {
                reason: format!("received {actual} bytes, the client said {expected}"),
            },
            StoreError::ManifestInvalid { reason } => Self::ManifestInvalid { reason },
            StoreError::ReferenceMissing { digest, .. } => Self::ManifestBlobUnknown { digest },
            StoreError::NameInvalid { .. } => Self::NameInvalid {
                reason: err.to_string(),
            },
            StoreError::UploadUnknown(id) => Self::BlobUploadUnknown { id },
            StoreError::UploadOffset { offset, size, .. } => Self::RangeNotSatisfiable {
                reason: format!("chunk starts at {offset}, the upload holds {size} bytes"),
            },
            StoreError::TooManyUploads { .. } => Self::TooManyRequests {
                reason: err.to_string(),
            },
            StoreError::LeaseUnknown(name) => Self::NameUnknown { name },
            StoreError::LeaseTargetMissing { digest, .. } => Self::ManifestUnknown {
                reference: digest.to_string(),
            },
            StoreError::IngestAbandoned { digest, .. } => Self::Unavailable {
                reason: format!("the fetch of {digest} failed; try again"),
            },
            StoreError::Missing { .. }
            | StoreError::Locked { .. }
            | StoreError::Io { .. }
            | StoreError::Database { .. }
            | StoreError::RowCorrupt { .. } => Self::internal(action, err),
        }
    }
}

impl From<NameError> for RegistryError {
    fn from(err: NameError) -> Self {
        Self::NameInvalid {
            reason: err.to_string(),
        }
    }
}

impl From<DigestError> for RegistryError {
    fn from(err: DigestError) -> Self {
        Self::DigestInvalid {
            reason: err.to_string(),
        }
    }
}

impl From<PathError> for RegistryError {
    fn from(err: PathError) -> Self {
        match err {
            PathError::UnknownRoute(path) => Self::RouteUnknown { path },
            PathError::Name(err) => err.into(),
            PathError::Reference(ReferenceError::Digest(err)) | PathError::Digest(err) => {
                err.into()
            }
            PathError::Reference(ReferenceError::Tag(err)) => Self::ManifestInvalid {
                reason: format!("reference is neither a digest nor a valid tag: {err}"),
            },
            PathError::UploadId(err) => Self::BlobUploadUnknown { id: err.0 },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::path::parse_path;
    use axum::body::to_bytes;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    async fn render(err: RegistryError) -> (StatusCode, axum::http::HeaderMap, Value) {
        let response = err.into_response();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, headers, serde_json::from_slice(&bytes).unwrap())
    }

    fn body(code: &str, message: &str, detail: Option<Value>) -> Value {
        let mut error = json!({ "code": code, "message": message });
        if let Some(detail) = detail {
            error["detail"] = detail;
        }
        json!({ "errors": [error] })
    }

    #[tokio::test]
    async fn every_code_has_its_status_and_body() {
        let digest: Digest = D.parse().unwrap();
        let reason = || "why".to_owned();
        let why = Some(json!("why"));
        let cases = vec![
            (
                RegistryError::BlobUnknown { digest },
                404,
                "BLOB_UNKNOWN",
                "blob unknown to registry",
                Some(json!({ "digest": D })),
            ),
            (
                RegistryError::BlobUploadInvalid { reason: reason() },
                400,
                "BLOB_UPLOAD_INVALID",
                "blob upload invalid",
                why.clone(),
            ),
            (
                RegistryError::BlobUploadUnknown { id: "u1".into() },
                404,
                "BLOB_UPLOAD_UNKNOWN",
                "blob upload unknown to registry",
                Some(json!({ "upload": "u1" })),
            ),
            (
                RegistryError::DigestInvalid { reason: reason() },
                400,
                "DIGEST_INVALID",
                "provided digest did not match uploaded content",
                why.clone(),
            ),
            (
                RegistryError::ManifestBlobUnknown { digest },
                404,
                "MANIFEST_BLOB_UNKNOWN",
                "manifest references a manifest or blob unknown to registry",
                Some(json!({ "digest": D })),
            ),
            (
                RegistryError::ManifestInvalid { reason: reason() },
                400,
                "MANIFEST_INVALID",
                "manifest invalid",
                why.clone(),
            ),
            (
                RegistryError::ManifestUnknown {
                    reference: "latest".into(),
                },
                404,
                "MANIFEST_UNKNOWN",
                "manifest unknown to registry",
                Some(json!({ "reference": "latest" })),
            ),
            (
                RegistryError::NameInvalid { reason: reason() },
                400,
                "NAME_INVALID",
                "invalid repository name",
                why.clone(),
            ),
            (
                RegistryError::NameUnknown { name: "a/b".into() },
                404,
                "NAME_UNKNOWN",
                "repository name not known to registry",
                Some(json!({ "name": "a/b" })),
            ),
            (
                RegistryError::NotMirrored {
                    name: "quay/x".into(),
                    mirrors: vec!["docker.io".into(), "ghcr.io".into()],
                },
                404,
                "NAME_UNKNOWN",
                "repository name not known to registry",
                Some(json!(
                    "quay/x is not a mirror repository (<mirror>/<path>): the configured mirrors are docker.io, ghcr.io"
                )),
            ),
            (
                RegistryError::NotMirrored {
                    name: "quay/x".into(),
                    mirrors: vec![],
                },
                404,
                "NAME_UNKNOWN",
                "repository name not known to registry",
                Some(json!(
                    "quay/x is not a mirror repository (<mirror>/<path>): no mirror is configured"
                )),
            ),
            (
                RegistryError::SizeInvalid { reason: reason() },
                400,
                "SIZE_INVALID",
                "provided length did not match content length",
                why.clone(),
            ),
            (
                RegistryError::Unauthorized {
                    challenge: None,
                    reason: None,
                },
                401,
                "UNAUTHORIZED",
                "authentication required",
                None,
            ),
            (
                RegistryError::Unauthorized {
                    challenge: None,
                    reason: Some("token expired".into()),
                },
                401,
                "UNAUTHORIZED",
                "authentication required",
                Some(json!("token expired")),
            ),
            (
                RegistryError::Denied { reason: reason() },
                403,
                "DENIED",
                "requested access to the resource is denied",
                why.clone(),
            ),
            (
                RegistryError::Unsupported { reason: reason() },
                405,
                "UNSUPPORTED",
                "the operation is unsupported",
                why.clone(),
            ),
            (
                RegistryError::RouteUnknown { path: "/v3".into() },
                404,
                "UNSUPPORTED",
                "the operation is unsupported",
                Some(json!({ "path": "/v3" })),
            ),
            (
                RegistryError::TooLarge { reason: reason() },
                413,
                "SIZE_INVALID",
                "provided length did not match content length",
                why.clone(),
            ),
            (
                RegistryError::PaginationInvalid { reason: reason() },
                400,
                "PAGINATION_NUMBER_INVALID",
                "invalid number of results requested",
                why.clone(),
            ),
            (
                RegistryError::TooManyRequests { reason: reason() },
                429,
                "TOOMANYREQUESTS",
                "too many requests",
                why.clone(),
            ),
            (
                RegistryError::RangeNotSatisfiable { reason: reason() },
                416,
                "RANGE_INVALID",
                "invalid content range",
                why.clone(),
            ),
            (
                RegistryError::Unavailable { reason: reason() },
                503,
                "UNAVAILABLE",
                "service unavailable",
                why.clone(),
            ),
        ];
        for (err, status, code, message, detail) in cases {
            let label = format!("{err:?}");
            let (got_status, headers, got_body) = render(err).await;
            assert_eq!(got_status.as_u16(), status, "{label}");
            assert_eq!(got_body, body(code, message, detail), "{label}");
            assert_eq!(headers[header::CONTENT_TYPE], "application/json", "{label}");
        }
    }

    #[tokio::test]
    async fn unauthorized_carries_the_challenge() {
        let challenge = r#"Bearer realm="http://cache/token",service="kiln-cache""#;
        let (status, headers, _) = render(RegistryError::Unauthorized {
            challenge: Some(challenge.into()),
            reason: None,
        })
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(headers[header::WWW_AUTHENTICATE], challenge);
    }

    #[tokio::test]
    async fn internal_errors_hide_their_cause() {
        let cause = std::io::Error::other("/var/lib/kiln/blobs/sha256/ab: disk full");
        let (status, _, body_json) = render(RegistryError::internal("commit blob", cause)).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body_json, body("UNKNOWN", "internal server error", None));
        assert!(!body_json.to_string().contains("disk full"));
    }

    #[test]
    fn internal_errors_keep_their_source_chain_for_the_log() {
        let err = RegistryError::internal("commit blob", std::io::Error::other("disk full"));
        assert_eq!(
            crate::report::error_chain(&err),
            "internal error while trying to commit blob: disk full"
        );
    }

    #[test]
    fn store_errors_map_to_spec_codes_and_hide_internal_ones() {
        let digest = Digest::of(b"x");
        let cases = [
            (
                StoreError::digest_mismatch(digest, digest),
                ErrorCode::DigestInvalid,
            ),
            (
                StoreError::SizeMismatch {
                    expected: 1,
                    actual: 2,
                },
                ErrorCode::SizeInvalid,
            ),
            (
                StoreError::ManifestInvalid { reason: "x".into() },
                ErrorCode::ManifestInvalid,
            ),
            (
                StoreError::ReferenceMissing {
                    repo: "a".into(),
                    digest,
                },
                ErrorCode::ManifestBlobUnknown,
            ),
            (
                StoreError::NameInvalid {
                    what: "repository",
                    value: "".into(),
                    reason: "empty".into(),
                },
                ErrorCode::NameInvalid,
            ),
            (
                StoreError::UploadUnknown("u".into()),
                ErrorCode::BlobUploadUnknown,
            ),
            (
                StoreError::UploadOffset {
                    id: "u".into(),
                    offset: 3,
                    size: 1,
                },
                ErrorCode::RangeInvalid,
            ),
            (StoreError::LeaseUnknown("l".into()), ErrorCode::NameUnknown),
            (
                StoreError::LeaseTargetMissing {
                    name: "l".into(),
                    digest,
                },
                ErrorCode::ManifestUnknown,
            ),
            (
                StoreError::IngestAbandoned {
                    digest,
                    reason: "cut".into(),
                },
                ErrorCode::Unavailable,
            ),
            (
                StoreError::RowCorrupt {
                    table: "blobs",
                    reason: "x".into(),
                },
                ErrorCode::Unknown,
            ),
        ];
        for (err, code) in cases {
            let label = format!("{err:?}");
            assert_eq!(
                RegistryError::from_store("test", err).code(),
                code,
                "{label}"
            );
        }
    }

    #[test]
    fn path_errors_map_to_spec_codes() {
        let code = |path: &str| RegistryError::from(parse_path(path).unwrap_err()).code();
        assert_eq!(code("/v3/"), ErrorCode::Unsupported);
        assert_eq!(code("/v2/A/tags/list"), ErrorCode::NameInvalid);
        assert_eq!(code("/v2/a/manifests/.x"), ErrorCode::ManifestInvalid);
        assert_eq!(code("/v2/a/manifests/sha256:00"), ErrorCode::DigestInvalid);
        assert_eq!(code("/v2/a/blobs/latest"), ErrorCode::DigestInvalid);
        assert_eq!(
            code("/v2/a/blobs/uploads/a.b"),
            ErrorCode::BlobUploadUnknown
        );
        assert_eq!(
            RegistryError::from(parse_path("/v2/x/tags/lists").unwrap_err()).status(),
            StatusCode::NOT_FOUND
        );
    }
}
