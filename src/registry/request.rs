//! What every handler takes and gives back: the request's context (`Request`), the
//! response builder (`Reply`), and the authentication check a handler makes itself when
//! its access depends on more than its route (cross-repository mounts, the admin API).

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::registry::auth::{Access, Principal, Resource, unix_now};
use crate::registry::error::RegistryError;
use crate::registry::headers::Query;
use crate::registry::service::Registry;

/// What a handler gets besides its route: the registry, the request's method, headers and
/// query, and who sent it (checked before the handler runs).
pub(crate) struct Request {
    pub registry: Registry,
    pub method: Method,
    pub headers: HeaderMap,
    pub query: Query,
    /// `None` for an anonymous request to a registry without a token key.
    pub principal: Option<Principal>,
}

/// Authenticates and authorizes a request. Without a configured external URL, the token
/// realm is the address the client used (its `Host`).
pub(crate) fn check(
    registry: &Registry,
    headers: &HeaderMap,
    resource: Resource<'_>,
    needed: Access,
) -> Result<Option<Principal>, RegistryError> {
    let auth = registry.auth();
    match auth.check(headers, resource, needed, unix_now()) {
        Err(RegistryError::Unauthorized {
            challenge: Some(_),
            reason,
        }) if auth.external_base.is_empty() => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
                .unwrap_or("localhost");
            let local = crate::registry::auth::AuthConfig {
                external_base: format!("http://{host}"),
                ..(**auth).clone()
            };
            Err(RegistryError::Unauthorized {
                challenge: Some(local.challenge(resource, needed)),
                reason,
            })
        }
        other => other,
    }
}

/// A response under construction: status, headers, body.
pub(crate) struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Body,
}

impl Reply {
    /// An empty answer with `status` (and `Content-Length: 0`).
    pub fn new(status: StatusCode) -> Self {
        Self {
            status,
            headers: HeaderMap::new(),
            body: Body::empty(),
        }
    }

    /// Adds a header. Values are built from validated names, digests and numbers; one that
    /// a header cannot hold is left out rather than failing the answer.
    pub fn header(mut self, name: HeaderName, value: impl AsRef<str>) -> Self {
        match HeaderValue::from_str(value.as_ref()) {
            Ok(value) => {
                self.headers.insert(name, value);
            }
            Err(_) => tracing::debug!(%name, "left out a header value that is not header-safe"),
        }
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: Body) -> Self {
        self.body = body;
        self
    }

    /// A JSON body (already encoded) with its length.
    pub fn json_bytes(self, bytes: Vec<u8>) -> Response {
        let length = bytes.len().to_string();
        self.header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, length)
            .body(Body::from(bytes))
            .into_response()
    }

    /// A value as a JSON body.
    pub fn json(self, value: &impl serde::Serialize) -> Result<Response, RegistryError> {
        let bytes = serde_json::to_vec(value)
            .map_err(|err| RegistryError::internal("encode a JSON answer", err))?;
        Ok(self.json_bytes(bytes))
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut response = Response::new(self.body);
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers;
        response
    }
}
