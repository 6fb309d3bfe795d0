//! In-process test harness for the registry's routes: a registry over a temp store, driven
//! with `tower::ServiceExt::oneshot`, and helpers to push content (test-only I/O: a temp
//! directory).

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode};
use tower::ServiceExt as _;

use crate::cacheapi::token::{Claims, TokenAction, TokenKey};
use crate::oci::digest::Digest;
use crate::registry::auth::{AdminToken, AuthConfig, unix_now};
use crate::registry::mirror::Mirror;
use crate::registry::service::{Limits, Registry};
use crate::store::{Store, StoreOptions};

/// The admin token of authenticated test registries.
pub const ADMIN: &str = "admin-token-0123456789abcdef0123456789";

/// The admin's `Authorization` value.
pub fn admin() -> String {
    format!("Bearer {ADMIN}")
}

/// The token key of authenticated test registries.
pub fn key() -> TokenKey {
    TokenKey::from_bytes(&[7u8; 32]).unwrap()
}

/// A token for namespace `ns` with `actions`, valid for an hour from now.
pub fn token(ns: &str, actions: &[TokenAction]) -> String {
    key()
        .mint(&Claims::new(
            "build-uid",
            ns,
            actions.iter().copied(),
            unix_now(),
            3600,
        ))
        .unwrap()
}

/// A registry over a temp store.
pub struct TestRegistry {
    pub registry: Registry,
    router: Router,
    _dir: tempfile::TempDir,
}

/// An answer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// A header as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {:?}", self.body))
    }

    /// The error code of an error body.
    pub fn code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Asserts the status and, for errors, the spec code.
    #[track_caller]
    pub fn expect(&self, status: u16, code: Option<&str>) -> &Self {
        assert_eq!(self.status.as_u16(), status, "{self:?}");
        if let Some(code) = code {
            assert_eq!(self.code(), code, "{self:?}");
            assert_eq!(self.header("content-type"), "application/json", "{self:?}");
        }
        self
    }
}

impl TestRegistry {
    /// An open registry (no token key), without a mirror.
    pub fn open() -> Self {
        Self::build(false, |_| None)
    }

    /// A registry that needs tokens ([`key`]) and has the admin token [`ADMIN`].
    pub fn authenticated() -> Self {
        Self::build(true, |_| None)
    }

    /// A registry whose mirror `make` builds over the store.
    pub fn build(auth: bool, make: impl FnOnce(&Store) -> Option<Mirror>) -> Self {
        Self::build_with(auth, make, Limits::default())
    }

    /// [`TestRegistry::build`] with other limits.
    pub fn build_with(
        auth: bool,
        make: impl FnOnce(&Store) -> Option<Mirror>,
        limits: Limits,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path(),
            StoreOptions {
                sync: false,
                ..StoreOptions::default()
            },
        )
        .unwrap();
        let mirror = make(&store);
        let auth = AuthConfig {
            token_key: auth.then(key),
            admin_token: Some(AdminToken::new(ADMIN).unwrap()),
            external_base: String::new(),
            mirrors: Default::default(),
        };
        let registry = Registry::new(store, auth, mirror, limits);
        let router = registry.router();
        Self {
            registry,
            router,
            _dir: dir,
        }
    }

    /// Sends a request.
    pub async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), 64 << 20)
            .await
            .unwrap();
        Answer {
            status,
            headers,
            body,
        }
    }

    /// Sends `method path` with `headers` and `body`.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> Answer {
        let mut request = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request.body(body.into()).unwrap()).await
    }

    /// `method path` as the admin, with `body` as JSON (none when it is `null`).
    pub async fn as_admin(&self, method: Method, path: &str, body: serde_json::Value) -> Answer {
        let body = if body.is_null() {
            Body::empty()
        } else {
            Body::from(body.to_string())
        };
        self.call(method, path, &[("authorization", &admin())], body)
            .await
    }

    /// `DELETE path` as the admin.
    pub async fn delete_as_admin(&self, path: &str) -> Answer {
        self.call(
            Method::DELETE,
            path,
            &[("authorization", &admin())],
            Body::empty(),
        )
        .await
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, &[], Body::empty()).await
    }

    /// Pushes a blob monolithically into `repo` (with `headers`, e.g. credentials).
    pub async fn push_blob_as(&self, repo: &str, bytes: &[u8], headers: &[(&str, &str)]) -> Digest {
        let digest = Digest::of(bytes);
        self.call(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
            headers,
            bytes.to_vec(),
        )
        .await
        .expect(201, None);
        digest
    }

    /// Pushes a blob monolithically into `repo`, as the admin.
    pub async fn push_blob(&self, repo: &str, bytes: &[u8]) -> Digest {
        self.push_blob_as(repo, bytes, &[("authorization", &admin())])
            .await
    }

    /// Pushes a manifest (its media type from its body) under `reference`.
    pub async fn push_manifest(&self, repo: &str, reference: &str, bytes: &[u8]) -> Answer {
        let media_type = serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .and_then(|v| v["mediaType"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let admin = admin();
        let mut headers = vec![("authorization", admin.as_str())];
        if !media_type.is_empty() {
            headers.push(("content-type", media_type.as_str()));
        }
        self.call(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{reference}"),
            &headers,
            bytes.to_vec(),
        )
        .await
    }

    /// Pushes an image of one layer with `seed`'s bytes under `tag`; returns the manifest
    /// and its digest.
    pub async fn push_image(&self, repo: &str, tag: &str, seed: &str) -> (Vec<u8>, Digest) {
        let config = format!("{{\"seed\":\"{seed}\"}}");
        let layer = format!("layer of {seed}");
        let config_digest = self.push_blob(repo, config.as_bytes()).await;
        let layer_digest = self.push_blob(repo, layer.as_bytes()).await;
        let manifest = crate::store::fixtures::image_manifest(
            (config_digest, config.len() as u64),
            &[(layer_digest, layer.len() as u64)],
        );
        self.push_manifest(repo, tag, &manifest)
            .await
            .expect(201, None);
        let digest = Digest::of(&manifest);
        (manifest, digest)
    }
}
