//! A stateful fake of the cache service's admin API on a loopback port, for the controller's
//! lease and cleanup tests (test-only I/O: a socket).
//!
//! It keeps leases, tags, repositories, stored build logs, the base images Builds
//! resolved and what the mirror's upstream answers in memory, follows the contract in
//! `kiln::cacheapi::admin` (routes, bodies, error codes), tells time by the test's
//! `ManualClock`, logs every call, and can be switched "down" (every call answers `503`,
//! as a restarting service would).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use kiln::cacheapi::admin::{
    AdminRoute, BaseImage, BaseImages, DuReport, LeaseReleased, LeaseRequest, LeaseResponse,
    LeaseTarget, LogStored, RepositoryDeleted, RepositoryUsage, ResolveRequest, Resolved,
    TagDeleted,
};
use kiln::cacheapi::log::{ANNOTATIONS_HEADER, log_manifest, parse_annotations};
use kiln::controller::clock::{Clock, ManualClock};
use kiln::oci::digest::Digest;
use kiln::oci::name::RepoName;
use serde_json::json;

/// The admin token the fake accepts.
pub const ADMIN_TOKEN: &str = "fake-admin-token-of-at-least-32-bytes";

/// A lease as the fake holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeLease {
    /// What the request named.
    pub targets: Vec<LeaseTarget>,
    /// The digests it holds.
    pub digests: Vec<Digest>,
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: u64,
}

#[derive(Default)]
struct Store {
    leases: BTreeMap<String, FakeLease>,
    /// `(repository, tag)` → manifest (build logs included).
    tags: BTreeMap<(String, String), Digest>,
    /// Repositories without tags count too.
    repositories: BTreeSet<String>,
    mirrors: BTreeSet<String>,
    /// `(repository, tag)` → a stored build log.
    logs: BTreeMap<(String, String), FakeLog>,
    /// Build UID → the base images its pods resolved through the mirror.
    bases: BTreeMap<String, Vec<BaseImage>>,
    /// `(image, tag)` → the digest the mirror's upstream answers now.
    upstream: BTreeMap<(String, String), Digest>,
    calls: Vec<String>,
}

/// A build log as the fake keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeLog {
    /// The log's bytes.
    pub bytes: Vec<u8>,
    /// The annotations the request carried.
    pub annotations: BTreeMap<String, String>,
}

struct Shared {
    store: Mutex<Store>,
    down: AtomicBool,
    clock: Arc<ManualClock>,
}

/// The running fake; the server stops with the test's runtime.
#[derive(Clone)]
pub struct FakeCache {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    shared: Arc<Shared>,
}

impl FakeCache {
    /// Starts the fake on a free loopback port.
    pub async fn start(clock: Arc<ManualClock>) -> Self {
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            down: AtomicBool::new(false),
            clock,
        });
        let app = axum::Router::new()
            .route("/admin/v1/{*rest}", axum::routing::any(handle))
            .route("/v2/{*rest}", axum::routing::get(tags_list))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://{addr}"),
            shared,
        }
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.shared.store.lock().unwrap()
    }

    /// Every call cannot be answered while `down` (503 `UNKNOWN`).
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// Tags `repository:tag` with a manifest, as a push would.
    pub fn tag(&self, repository: &str, tag: &str, manifest: Digest) {
        let mut store = self.store();
        store.repositories.insert(repository.to_owned());
        store
            .tags
            .insert((repository.to_owned(), tag.to_owned()), manifest);
    }

    /// Adds a pull-through mirror repository.
    pub fn mirror(&self, repository: &str) {
        let mut store = self.store();
        store.repositories.insert(repository.to_owned());
        store.mirrors.insert(repository.to_owned());
    }

    /// The leases held now, by name.
    pub fn leases(&self) -> BTreeMap<String, FakeLease> {
        self.store().leases.clone()
    }

    /// The tags, as `repository:tag`.
    pub fn tags(&self) -> Vec<String> {
        self.store()
            .tags
            .keys()
            .map(|(r, t)| format!("{r}:{t}"))
            .collect()
    }

    /// The pods of Build `uid` resolved `image:tag` to `digest` through the mirror, now
    /// (the fake's clock); the upstream answers the same until told otherwise.
    pub fn resolved_base(&self, uid: &str, image: &str, tag: &str, digest: Digest) {
        let now = u64::try_from(self.shared.clock.now().as_second()).unwrap_or(0);
        let mut store = self.store();
        store
            .upstream
            .insert((image.to_owned(), tag.to_owned()), digest);
        let bases = store.bases.entry(uid.to_owned()).or_default();
        bases.retain(|b| (b.image.as_str(), b.tag.as_str()) != (image, tag));
        bases.push(BaseImage {
            image: image.to_owned(),
            tag: tag.to_owned(),
            digest,
            resolved_at: now,
        });
    }

    /// The mirror's upstream now answers `digest` for `image:tag`.
    pub fn upstream_moves(&self, image: &str, tag: &str, digest: Digest) {
        self.store()
            .upstream
            .insert((image.to_owned(), tag.to_owned()), digest);
    }

    /// The Builds whose base images the fake remembers, by UID.
    pub fn base_records(&self) -> Vec<String> {
        self.store().bases.keys().cloned().collect()
    }

    /// The stored build logs, by `repository:tag`.
    pub fn logs(&self) -> BTreeMap<String, FakeLog> {
        self.store()
            .logs
            .iter()
            .map(|((r, t), log)| (format!("{r}:{t}"), log.clone()))
            .collect()
    }

    /// The repositories.
    pub fn repositories(&self) -> Vec<String> {
        self.store().repositories.iter().cloned().collect()
    }

    /// Every call answered or refused, as `METHOD /path`, oldest first.
    pub fn calls(&self) -> Vec<String> {
        self.store().calls.clone()
    }
}

/// `GET /v2/<name>/tags/list`, the one registry route the controller reads (with the
/// admin token).
async fn tags_list(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let mut store = shared.store.lock().unwrap();
    store.calls.push(format!("GET {path}"));
    let Some(name) = path
        .strip_prefix("/v2/")
        .and_then(|rest| rest.strip_suffix("/tags/list"))
    else {
        return error(StatusCode::NOT_FOUND, "NAME_INVALID", "no such route");
    };
    if !store.repositories.contains(name) {
        return error(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            "repository name not known",
        );
    }
    let tags: Vec<&String> = store
        .tags
        .keys()
        .filter(|(r, _)| r == name)
        .map(|(_, t)| t)
        .collect();
    axum::Json(json!({"name": name, "tags": tags})).into_response()
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"errors": [{"code": code, "message": message}]})),
    )
        .into_response()
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    shared
        .store
        .lock()
        .unwrap()
        .calls
        .push(format!("{method} {path}"));
    if shared.down.load(Ordering::SeqCst) {
        return error(StatusCode::SERVICE_UNAVAILABLE, "UNKNOWN", "restarting");
    }
    let authorized = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {ADMIN_TOKEN}"));
    if !authorized {
        return error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "authentication required",
        );
    }
    let Ok(route) = AdminRoute::parse(&path) else {
        return error(StatusCode::NOT_FOUND, "NAME_INVALID", "no such route");
    };
    let annotations = request
        .headers()
        .get(ANNOTATIONS_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(parse_annotations);
    let body = axum::body::to_bytes(request.into_body(), 64 << 20)
        .await
        .unwrap_or_default();
    let now = u64::try_from(shared.clock.now().as_second()).unwrap_or(0);
    let mut store = shared.store.lock().unwrap();
    match (method.as_str(), route) {
        ("PUT", AdminRoute::Lease { name }) => {
            let Ok(request) = serde_json::from_slice::<LeaseRequest>(&body) else {
                return error(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", "bad body");
            };
            let mut digests: Vec<Digest> = Vec::new();
            for target in &request.targets {
                match target {
                    LeaseTarget::Tag { repository, tag } => {
                        // A tag that does not exist yet holds nothing (the store's rule).
                        let key = (repository.to_string(), tag.to_string());
                        digests.extend(store.tags.get(&key).copied());
                    }
                    LeaseTarget::Digest { digest } => digests.push(*digest),
                }
            }
            digests.sort();
            digests.dedup();
            let expires_at = now + request.ttl_seconds;
            let created = store
                .leases
                .insert(
                    name.to_string(),
                    FakeLease {
                        targets: request.targets,
                        digests: digests.clone(),
                        expires_at,
                    },
                )
                .is_none();
            axum::Json(LeaseResponse {
                name,
                created,
                expires_at,
                digests,
            })
            .into_response()
        }
        ("DELETE", AdminRoute::Lease { name }) => {
            let released = store.leases.remove(name.as_str()).is_some();
            axum::Json(LeaseReleased { released }).into_response()
        }
        ("PUT", AdminRoute::Log { name, tag }) => {
            let Some(Ok(annotations)) = annotations else {
                return error(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", "annotations");
            };
            let blob = Digest::of(&body);
            let manifest = Digest::of(&log_manifest(&blob, body.len() as u64, &annotations));
            let key = (name.to_string(), tag.to_string());
            store.repositories.insert(name.to_string());
            store.tags.insert(key.clone(), manifest);
            store.logs.insert(
                key,
                FakeLog {
                    bytes: body.to_vec(),
                    annotations,
                },
            );
            axum::Json(LogStored {
                repository: name,
                tag,
                manifest,
                blob,
                size: body.len() as u64,
            })
            .into_response()
        }
        ("GET", AdminRoute::BuildBases { uid }) => {
            let mut bases = store.bases.get(uid.as_str()).cloned().unwrap_or_default();
            bases.sort_by(|a, b| (&a.image, &a.tag).cmp(&(&b.image, &b.tag)));
            axum::Json(BaseImages { bases }).into_response()
        }
        ("DELETE", AdminRoute::BuildBases { uid }) => {
            let forgotten = store.bases.remove(uid.as_str()).map_or(0, |b| b.len()) as u64;
            axum::Json(json!({ "forgotten": forgotten })).into_response()
        }
        ("POST", AdminRoute::MirrorResolve) => {
            let Ok(request) = serde_json::from_slice::<ResolveRequest>(&body) else {
                return error(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", "bad body");
            };
            match store
                .upstream
                .get(&(request.image.clone(), request.tag.clone()))
            {
                Some(digest) => axum::Json(Resolved {
                    image: request.image,
                    tag: request.tag,
                    digest: *digest,
                })
                .into_response(),
                None => error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", "not upstream"),
            }
        }
        ("DELETE", AdminRoute::Tag { name, tag }) => {
            store.logs.remove(&(name.to_string(), tag.to_string()));
            match store.tags.remove(&(name.to_string(), tag.to_string())) {
                Some(manifest) => axum::Json(TagDeleted {
                    repository: name,
                    tag,
                    manifest,
                })
                .into_response(),
                None => error(
                    StatusCode::NOT_FOUND,
                    "MANIFEST_UNKNOWN",
                    "manifest unknown to registry",
                ),
            }
        }
        ("DELETE", AdminRoute::Repository { name }) => {
            if !store.repositories.remove(name.as_str()) {
                return error(
                    StatusCode::NOT_FOUND,
                    "NAME_UNKNOWN",
                    "repository name not known to registry",
                );
            }
            let before = store.tags.len();
            store
                .tags
                .retain(|(repository, _), _| repository != name.as_str());
            let removed = (before - store.tags.len()) as u64;
            axum::Json(RepositoryDeleted {
                repository: name,
                tags_removed: removed,
                manifests_removed: removed,
            })
            .into_response()
        }
        ("GET", AdminRoute::Du) => {
            let repositories = store
                .repositories
                .iter()
                .map(|name| RepositoryUsage {
                    name: RepoName::parse(name).expect("valid repository name"),
                    tags: store.tags.keys().filter(|(r, _)| r == name).count() as u64,
                    manifests: 0,
                    bytes: 0,
                    last_used: None,
                    mirror: store.mirrors.contains(name),
                })
                .collect();
            axum::Json(DuReport {
                leases: store.leases.len() as u64,
                repositories,
                ..DuReport::default()
            })
            .into_response()
        }
        _ => error(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", "not here"),
    }
}
