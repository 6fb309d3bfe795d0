//! The admin API under `/admin/v1/` (the contract is [`crate::cacheapi::admin`]): du, prune,
//! verify, leases, tag and repository deletes, and stored build logs, over the store, for
//! the admin token only; base images and mirror resolves are handled in
//! [`crate::registry::bases`]. The handlers do the store I/O; turning store reports into the
//! contract's bodies is pure (the `*_report` functions), and so is the log artifact
//! ([`crate::cacheapi::log`]).

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::cacheapi::admin::{
    self, AdminPathError, AdminRoute, LeaseReleased, LeaseRequest, LeaseResponse, LogStored,
    PrunePolicy, PruneRequest, RepositoryDeleted, TagDeleted, VerifyRequest,
};
use crate::cacheapi::convert;
use crate::cacheapi::log::{
    ANNOTATIONS_HEADER, MAX_LOG_BYTES, annotations_header, log_layer, log_manifest,
    parse_annotations,
};
use crate::oci::artifact::{EMPTY_CONFIG, empty_config_digest};
use crate::oci::digest::Digest;
use crate::oci::media::OCI_MANIFEST;
use crate::oci::name::{Reference, RepoName, Tag};
use crate::registry::auth::{Access, Resource};
use crate::registry::bases;
use crate::registry::body::read_capped;
use crate::registry::error::RegistryError;
use crate::registry::metrics::RouteLabel;
use crate::registry::request::{Reply, check};
use crate::registry::service::Registry;
use crate::store::stream::read_file;
use crate::store::{GcOptions, GcReport, Policy, VerifyOptions};

/// The largest admin request body.
const MAX_BODY: usize = 1 << 20;

/// Every `/admin/v1/…` request.
pub async fn handle(
    State(registry): State<Registry>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let route = AdminRoute::parse(uri.path()).map_err(path_error)?;
        check(&registry, &headers, Resource::Admin, Access::Pull)?;
        match (method, route) {
            (Method::GET, AdminRoute::Du) => du(&registry).await,
            (Method::POST, AdminRoute::Prune) => prune(&registry, read_json(body).await?).await,
            (Method::POST, AdminRoute::Verify) => verify(&registry, read_json(body).await?).await,
            (Method::PUT, AdminRoute::Lease { name }) => {
                put_lease(&registry, name, read_json(body).await?).await
            }
            (Method::DELETE, AdminRoute::Lease { name }) => {
                let owned = name.to_string();
                let released = registry
                    .blocking("release a lease", move |store| store.lease_release(&owned))
                    .await?;
                Reply::new(StatusCode::OK).json(&LeaseReleased { released })
            }
            (Method::DELETE, AdminRoute::Tag { name, tag }) => {
                delete_tag(&registry, name, tag).await
            }
            (Method::DELETE, AdminRoute::Repository { name }) => {
                delete_repository(&registry, name).await
            }
            (Method::PUT, AdminRoute::Log { name, tag }) => {
                put_log(&registry, name, tag, &headers, body, MAX_LOG_BYTES).await
            }
            (Method::GET, AdminRoute::Log { name, tag }) => get_log(&registry, name, tag).await,
            (Method::GET, AdminRoute::BuildBases { uid }) => bases::list(&registry, uid).await,
            (Method::DELETE, AdminRoute::BuildBases { uid }) => bases::forget(&registry, uid).await,
            (Method::POST, AdminRoute::MirrorResolve) => {
                bases::resolve(&registry, read_json(body).await?).await
            }
            (method, route) => Err(RegistryError::Unsupported {
                reason: format!("{method} is not served on {}", route.path()),
            }),
        }
    }
    .await;
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    response.extensions_mut().insert(RouteLabel("admin"));
    response
}

fn path_error(err: AdminPathError) -> RegistryError {
    match err {
        AdminPathError::Unknown(path) => RegistryError::RouteUnknown { path },
        AdminPathError::Name(err) => err.into(),
        AdminPathError::Lease(err) => RegistryError::NameInvalid {
            reason: err.to_string(),
        },
        AdminPathError::Tag(err) => RegistryError::ManifestInvalid {
            reason: err.to_string(),
        },
    }
}

async fn read_json<T: DeserializeOwned>(body: Body) -> Result<T, RegistryError> {
    let bytes = read_capped(body, MAX_BODY, "request").await?;
    serde_json::from_slice(&bytes).map_err(|err| RegistryError::ManifestInvalid {
        reason: format!("the request body is not what this endpoint takes: {err}"),
    })
}

async fn du(registry: &Registry) -> Result<Response, RegistryError> {
    let auth = registry.auth().clone();
    let report = registry
        .blocking("compute disk usage", move |store| {
            let du = store.du()?;
            let listing = store.listing()?;
            let uploads = store.uploads();
            let now_ms = store.clock().now_ms();
            Ok(convert::du_report(
                &du,
                &listing,
                &uploads,
                now_ms,
                |name| auth.is_mirror(name),
            ))
        })
        .await?;
    Reply::new(StatusCode::OK).json(&report)
}

/// The GC options of a prune request. `all` has no grace window: it removes everything no
/// lease or upload protects, recent blobs included, as `kiln cache prune --all` does.
pub fn gc_options(request: &PruneRequest) -> GcOptions {
    let PruneRequest { policy, dry_run } = *request;
    let (policy, grace) = match policy {
        PrunePolicy::All => (
            Policy {
                all: true,
                ..Policy::default()
            },
            Duration::ZERO,
        ),
        PrunePolicy::KeepStorage { bytes } => (
            Policy {
                keep_storage: Some(bytes),
                ..Policy::default()
            },
            GcOptions::default().grace,
        ),
        PrunePolicy::KeepDuration { seconds } => (
            Policy {
                keep_duration: Some(Duration::from_secs(seconds)),
                ..Policy::default()
            },
            GcOptions::default().grace,
        ),
    };
    GcOptions {
        policy,
        grace,
        dry_run,
        ..GcOptions::default()
    }
}

async fn prune(registry: &Registry, request: PruneRequest) -> Result<Response, RegistryError> {
    let options = gc_options(&request);
    let (report, leased) = registry
        .blocking("prune", move |store| {
            let now = store.clock().now_ms();
            let leased = convert::leased_digests(&store.leases()?, now);
            Ok((store.gc(&options)?, leased))
        })
        .await?;
    record_gc(registry, &report);
    Reply::new(StatusCode::OK).json(&convert::prune_report(&report, leased))
}

/// Counts a GC run (online or through the admin API) in the metrics.
pub fn record_gc(registry: &Registry, report: &GcReport) {
    let metrics = registry.metrics();
    metrics
        .gc_runs
        .get_or_create(&crate::registry::metrics::GcLabels { result: "ok" })
        .inc();
    if !report.dry_run {
        metrics.gc_freed_bytes.inc_by(report.bytes_freed);
        metrics
            .store_bytes
            .set(i64::try_from(report.bytes_after).unwrap_or(i64::MAX));
    }
}

async fn verify(registry: &Registry, request: VerifyRequest) -> Result<Response, RegistryError> {
    let VerifyRequest { repair } = request;
    let report = registry
        .blocking("verify", move |store| {
            let before = store.listing()?;
            let report = store.verify(&VerifyOptions {
                repair,
                ..VerifyOptions::default()
            })?;
            Ok(convert::verify_report(&report, &before))
        })
        .await?;
    Reply::new(StatusCode::OK).json(&report)
}

async fn put_lease(
    registry: &Registry,
    name: admin::LeaseName,
    request: LeaseRequest,
) -> Result<Response, RegistryError> {
    let LeaseRequest {
        targets,
        ttl_seconds,
    } = request;
    let owned = name.to_string();
    let (lease, existed) = registry
        .blocking("take a lease", move |store| {
            let existed = store.leases()?.iter().any(|lease| lease.name == owned);
            let lease = store.lease_acquire(&owned, &targets, Duration::from_secs(ttl_seconds))?;
            Ok((lease, existed))
        })
        .await?;
    Reply::new(StatusCode::OK).json(&LeaseResponse {
        name,
        created: !existed,
        expires_at: lease.expires_ms / 1000,
        digests: lease.digests,
    })
}

async fn delete_tag(
    registry: &Registry,
    name: RepoName,
    tag: Tag,
) -> Result<Response, RegistryError> {
    let (repo, tag_name) = (name.to_string(), tag.to_string());
    let reference = Reference::Tag(tag.clone());
    let removed = registry
        .blocking("delete a tag", move |store| {
            let Some(manifest) = store.manifest(&repo, &reference)? else {
                return Ok(None);
            };
            Ok(store.untag(&repo, &tag_name)?.then_some(manifest.digest))
        })
        .await?;
    let manifest = removed.ok_or_else(|| RegistryError::ManifestUnknown {
        reference: format!("{name}:{tag}"),
    })?;
    Reply::new(StatusCode::OK).json(&TagDeleted {
        repository: name,
        tag,
        manifest,
    })
}

async fn delete_repository(registry: &Registry, name: RepoName) -> Result<Response, RegistryError> {
    let repo = name.to_string();
    let deleted = registry
        .blocking("delete a repository", move |store| {
            store.delete_repository(&repo)
        })
        .await?;
    if deleted.tags == 0 && deleted.links == 0 {
        return Err(RegistryError::NameUnknown {
            name: name.to_string(),
        });
    }
    Reply::new(StatusCode::OK).json(&RepositoryDeleted {
        repository: name,
        tags_removed: deleted.tags,
        manifests_removed: deleted.manifests,
    })
}

/// The annotations of a log `PUT`: none without the header, else the header's, within the
/// limits.
fn request_annotations(
    headers: &HeaderMap,
) -> Result<std::collections::BTreeMap<String, String>, RegistryError> {
    let Some(value) = headers.get(ANNOTATIONS_HEADER) else {
        return Ok(Default::default());
    };
    let text = value.to_str().map_err(|_| RegistryError::ManifestInvalid {
        reason: format!(
            "the {ANNOTATIONS_HEADER} header is not ASCII: escape other characters as JSON \\u escapes"
        ),
    })?;
    parse_annotations(text).map_err(|err| RegistryError::ManifestInvalid {
        reason: err.to_string(),
    })
}

/// `PUT /admin/v1/logs/<name>/_tags/<tag>`: stores the body (at most `cap` bytes) as a log
/// artifact and points the tag at it. The annotations are checked before the body is read,
/// so a bad header costs no upload. The blobs and the manifest are written in one blocking
/// call: the manifest's references are then in the repository when it is put, however
/// the request ends.
async fn put_log(
    registry: &Registry,
    name: RepoName,
    tag: Tag,
    headers: &HeaderMap,
    body: Body,
    cap: u64,
) -> Result<Response, RegistryError> {
    let annotations = request_annotations(headers)?;
    let bytes = read_capped(body, usize::try_from(cap).unwrap_or(usize::MAX), "log").await?;
    let size = bytes.len() as u64;
    let repo = name.to_string();
    let reference = Reference::Tag(tag.clone());
    let (blob, manifest) = registry
        .blocking("store a build log", move |store| {
            // Hashed here, off the async threads: a log may be many megabytes.
            let blob = Digest::of(&bytes);
            let manifest = log_manifest(&blob, size, &annotations);
            store.put_blob(&repo, empty_config_digest(), EMPTY_CONFIG)?;
            store.put_blob(&repo, blob, &bytes)?;
            let info = store.put_manifest(&repo, &reference, OCI_MANIFEST, &manifest)?;
            Ok((blob, info.digest))
        })
        .await?;
    Reply::new(StatusCode::OK).json(&LogStored {
        repository: name,
        tag,
        manifest,
        blob,
        size,
    })
}

/// `GET /admin/v1/logs/<name>/_tags/<tag>`: the log the tag points at, streamed from its
/// blob, with the manifest's annotations in the header.
async fn get_log(registry: &Registry, name: RepoName, tag: Tag) -> Result<Response, RegistryError> {
    let repo = name.to_string();
    let reference = Reference::Tag(tag.clone());
    let (info, manifest) = registry
        .blocking("read a build log's manifest", move |store| {
            store.manifest_bytes(&repo, &reference)
        })
        .await?
        .ok_or_else(|| RegistryError::ManifestUnknown {
            reference: format!("{name}:{tag}"),
        })?;
    let (blob, _) = log_layer(&manifest).map_err(|err| RegistryError::ManifestInvalid {
        reason: format!("{name}:{tag}: {err}"),
    })?;
    let repo = name.to_string();
    // The manifest names its layer, so a push to the tag meanwhile cannot mix two logs.
    let reader = registry
        .blocking("open a build log", move |store| {
            store.open_blob(&repo, blob)
        })
        .await?
        .ok_or(RegistryError::BlobUnknown { digest: blob })?;
    let store = registry.store();
    store.touch(info.digest);
    store.touch(blob);
    let size = reader.size();
    Ok(Reply::new(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CONTENT_LENGTH, size.to_string())
        .header(
            HeaderName::from_static(ANNOTATIONS_HEADER),
            annotations_header(&info.annotations),
        )
        .body(Body::from_stream(read_file(reader.into_file(), 0, size)))
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cacheapi::admin::{DuReport, EntryKind, PruneReport, VerifyReport};
    use crate::cacheapi::token::TokenAction;
    use crate::oci::digest::Digest;
    use crate::registry::testing::{Answer, TestRegistry, admin, token};
    use serde_json::json;

    async fn call(
        registry: &TestRegistry,
        method: Method,
        path: &str,
        body: serde_json::Value,
    ) -> Answer {
        registry.as_admin(method, path, body).await
    }

    #[tokio::test]
    async fn the_admin_api_needs_the_admin_token() {
        let registry = TestRegistry::authenticated();
        registry
            .get("/admin/v1/du")
            .await
            .expect(401, Some("UNAUTHORIZED"));
        let build = format!(
            "Bearer {}",
            token("team-a", &[TokenAction::Pull, TokenAction::Push])
        );
        registry
            .call(
                Method::GET,
                "/admin/v1/du",
                &[("authorization", &build)],
                Body::empty(),
            )
            .await
            .expect(403, Some("DENIED"));
        call(&registry, Method::GET, "/admin/v1/du", json!(null))
            .await
            .expect(200, None);
        // Paths, methods and bodies are checked.
        let refused = [
            (Method::GET, "/admin/v1/gc", json!(null), 404, "UNSUPPORTED"),
            (
                Method::GET,
                "/admin/v1/prune",
                json!(null),
                405,
                "UNSUPPORTED",
            ),
            (
                Method::POST,
                "/admin/v1/prune",
                json!({"policy": {"mode": "most"}}),
                400,
                "MANIFEST_INVALID",
            ),
            (
                Method::DELETE,
                "/admin/v1/repositories/Bad",
                json!(null),
                400,
                "NAME_INVALID",
            ),
            (
                Method::DELETE,
                "/admin/v1/leases/a%2Fb",
                json!(null),
                400,
                "NAME_INVALID",
            ),
        ];
        for (method, path, body, status, code) in refused {
            call(&registry, method, path, body)
                .await
                .expect(status, Some(code));
        }
    }

    #[tokio::test]
    async fn du_leases_prune_and_deletes_over_http() {
        let registry = TestRegistry::open();
        let (_, kept) = registry.push_image("team-a/cache", "v1", "kept").await;
        registry.push_image("team-a/cache", "v2", "dropped").await;
        registry.push_image("team-b/app", "v1", "b").await;

        let du = call(&registry, Method::GET, "/admin/v1/du", json!(null)).await;
        du.expect(200, None);
        let du: DuReport = serde_json::from_slice(&du.body).unwrap();
        assert_eq!((du.blobs.count, du.manifests, du.tags), (9, 3, 3));
        let names: Vec<&str> = du.repositories.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["team-a/cache", "team-b/app"]);
        assert_eq!(
            (du.repositories[0].tags, du.repositories[0].manifests),
            (2, 2)
        );

        let lease = call(
            &registry,
            Method::PUT,
            "/admin/v1/leases/build-1",
            json!({"targets": [{"repository": "team-a/cache", "tag": "v1"}], "ttl_seconds": 600}),
        )
        .await;
        lease.expect(200, None);
        let lease: LeaseResponse = serde_json::from_slice(&lease.body).unwrap();
        assert!(lease.created);
        assert_eq!(lease.digests, [kept]);
        let again = call(
            &registry,
            Method::PUT,
            "/admin/v1/leases/build-1",
            json!({"targets": [{"digest": kept.to_string()}], "ttl_seconds": 600}),
        )
        .await;
        assert!(
            !serde_json::from_slice::<LeaseResponse>(&again.body)
                .unwrap()
                .created
        );
        call(
            &registry,
            Method::PUT,
            "/admin/v1/leases/build-2",
            json!({"targets": [{"digest": Digest::of(b"absent").to_string()}], "ttl_seconds": 1}),
        )
        .await
        .expect(404, Some("MANIFEST_UNKNOWN"));

        let dry = call(
            &registry,
            Method::POST,
            "/admin/v1/prune",
            json!({"policy": {"mode": "all"}, "dry_run": true}),
        )
        .await;
        dry.expect(200, None);
        let dry: PruneReport = serde_json::from_slice(&dry.body).unwrap();
        assert!(dry.dry_run && dry.freed_bytes > 0);
        assert_eq!(dry.kept_by_leases, 1);

        // Deletes answer what they removed, then 404 the second time.
        for (path, gone) in [
            (
                "/admin/v1/repositories/team-a/cache/_tags/v2",
                "MANIFEST_UNKNOWN",
            ),
            ("/admin/v1/repositories/team-b/app", "NAME_UNKNOWN"),
        ] {
            let first = call(&registry, Method::DELETE, path, json!(null)).await;
            first.expect(200, None);
            if path.ends_with("/app") {
                let deleted: RepositoryDeleted = serde_json::from_slice(&first.body).unwrap();
                assert_eq!((deleted.tags_removed, deleted.manifests_removed), (1, 1));
            }
            call(&registry, Method::DELETE, path, json!(null))
                .await
                .expect(404, Some(gone));
        }

        // Prune everything: only what the lease holds stays.
        let pruned = call(
            &registry,
            Method::POST,
            "/admin/v1/prune",
            json!({"policy": {"mode": "all"}}),
        )
        .await;
        pruned.expect(200, None);
        let pruned: PruneReport = serde_json::from_slice(&pruned.body).unwrap();
        assert!(!pruned.dry_run);
        let kinds: Vec<EntryKind> = pruned.removed.iter().map(|e| e.kind).collect();
        let mut sorted = kinds.clone();
        sorted.sort();
        assert_eq!(kinds, sorted, "removals are sorted by kind");
        registry
            .get(&format!("/v2/team-a/cache/manifests/{kept}"))
            .await
            .expect(200, None);

        let released = call(
            &registry,
            Method::DELETE,
            "/admin/v1/leases/build-1",
            json!(null),
        )
        .await;
        assert_eq!(released.json(), json!({"released": true}));
        let released = call(
            &registry,
            Method::DELETE,
            "/admin/v1/leases/build-1",
            json!(null),
        )
        .await;
        assert_eq!(released.json(), json!({"released": false}));
        call(
            &registry,
            Method::POST,
            "/admin/v1/prune",
            json!({"policy": {"mode": "all"}}),
        )
        .await
        .expect(200, None);
        assert!(registry.registry.store().listing().unwrap().is_empty());
        let metrics = registry.get("/metrics").await;
        let text = String::from_utf8_lossy(&metrics.body).into_owned();
        assert!(
            text.contains("kiln_cache_gc_runs_total{result=\"ok\"} 3"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn verify_reports_corruption_and_repairs_it() {
        let registry = TestRegistry::open();
        let (_, manifest) = registry.push_image("a", "v1", "x").await;
        let verified = call(&registry, Method::POST, "/admin/v1/verify", json!({})).await;
        verified.expect(200, None);
        let clean: VerifyReport = serde_json::from_slice(&verified.body).unwrap();
        assert!(clean.is_clean(), "{clean:?}");
        assert_eq!(clean.blobs_checked, 3);

        // Corrupt the layer on disk.
        let listing = registry.registry.store().listing().unwrap();
        let layer = listing
            .blobs
            .iter()
            .find(|b| b.digest != manifest && b.size == "layer of x".len() as u64)
            .unwrap()
            .digest;
        std::fs::write(
            registry.registry.store().layout().blob(&layer),
            b"LAYER OF X",
        )
        .unwrap();
        let found = call(
            &registry,
            Method::POST,
            "/admin/v1/verify",
            json!({"repair": true}),
        )
        .await;
        let found: VerifyReport = serde_json::from_slice(&found.body).unwrap();
        assert_eq!(found.corrupt.len(), 1);
        assert_eq!(found.corrupt[0].digest, layer);
        assert_eq!(found.corrupt[0].bytes, 10);
        assert!(found.corrupt[0].quarantined);
        assert!(found.repaired.contains(&manifest), "{found:?}");
        let after = call(&registry, Method::POST, "/admin/v1/verify", json!({})).await;
        assert!(
            serde_json::from_slice::<VerifyReport>(&after.body)
                .unwrap()
                .is_clean()
        );
    }

    const LOGS: &str = "team-a/kiln_logs";

    fn log_path(tag: &str) -> String {
        format!("/admin/v1/logs/{LOGS}/_tags/{tag}")
    }

    async fn put_log_as(
        registry: &TestRegistry,
        auth: &str,
        tag: &str,
        annotations: Option<&str>,
        log: &[u8],
    ) -> Answer {
        let mut headers = vec![("authorization", auth), ("content-type", "text/plain")];
        if let Some(annotations) = annotations {
            headers.push((ANNOTATIONS_HEADER, annotations));
        }
        registry
            .call(Method::PUT, &log_path(tag), &headers, log.to_vec())
            .await
    }

    async fn get_log_as(registry: &TestRegistry, auth: &str, tag: &str) -> Answer {
        registry
            .call(
                Method::GET,
                &log_path(tag),
                &[("authorization", auth)],
                Body::empty(),
            )
            .await
    }

    fn annotations(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[tokio::test]
    async fn stored_logs_round_trip_survive_prune_and_delete_like_tags() {
        use crate::cacheapi::log::{ANNOTATION_NAME, ANNOTATION_RESULT};
        let registry = TestRegistry::open();
        let admin = admin();
        let log = b"step 1/2: RUN make\nerror: exit 1\n";
        let meta = annotations(&[(ANNOTATION_NAME, "app"), (ANNOTATION_RESULT, "Failed — 1")]);
        let header = annotations_header(&meta);

        let stored = put_log_as(&registry, &admin, "app-1", Some(&header), log).await;
        stored.expect(200, None);
        let stored: LogStored = serde_json::from_slice(&stored.body).unwrap();
        let blob = Digest::of(log);
        assert_eq!(
            stored,
            LogStored {
                repository: RepoName::parse(LOGS).unwrap(),
                tag: Tag::parse("app-1").unwrap(),
                manifest: Digest::of(&log_manifest(&blob, log.len() as u64, &meta)),
                blob,
                size: log.len() as u64,
            }
        );
        let read = get_log_as(&registry, &admin, "app-1").await;
        read.expect(200, None);
        assert_eq!(read.body.as_ref(), log);
        assert_eq!(read.header("content-type"), "text/plain; charset=utf-8");
        assert_eq!(read.header("content-length"), log.len().to_string());
        assert_eq!(parse_annotations(read.header(ANNOTATIONS_HEADER)), Ok(meta));

        // The same log and annotations are the same manifest.
        let again = put_log_as(&registry, &admin, "app-1", Some(&header), log).await;
        let again: LogStored = serde_json::from_slice(&again.body).unwrap();
        assert_eq!(again, stored);

        // Another log replaces it; no header is no annotations.
        let other = put_log_as(&registry, &admin, "app-1", None, b"second attempt").await;
        other.expect(200, None);
        let other: LogStored = serde_json::from_slice(&other.body).unwrap();
        assert_ne!(other.manifest, stored.manifest);
        let read = get_log_as(&registry, &admin, "app-1").await;
        assert_eq!(read.body.as_ref(), b"second attempt");
        assert_eq!(read.header(ANNOTATIONS_HEADER), "{}");
        // An empty log is a log.
        put_log_as(&registry, &admin, "app-2", None, b"")
            .await
            .expect(200, None);
        assert!(get_log_as(&registry, &admin, "app-2").await.body.is_empty());

        // du lists the logs under their repository.
        registry.push_image("team-a/app", "cache", "c").await;
        let du = call(&registry, Method::GET, "/admin/v1/du", json!(null)).await;
        let du: DuReport = serde_json::from_slice(&du.body).unwrap();
        let logs = du
            .repositories
            .iter()
            .find(|r| r.name.as_str() == LOGS)
            .unwrap();
        assert_eq!((logs.tags, logs.manifests), (2, 3));
        assert!(logs.bytes >= b"second attempt".len() as u64, "{logs:?}");

        // A prune of everything takes the cache's tags and leaves the logs.
        let pruned = call(
            &registry,
            Method::POST,
            "/admin/v1/prune",
            json!({"policy": {"mode": "all"}}),
        )
        .await;
        let pruned: PruneReport = serde_json::from_slice(&pruned.body).unwrap();
        let tags: Vec<String> = pruned
            .removed
            .iter()
            .filter(|e| e.kind == EntryKind::Tag)
            .map(|e| {
                format!(
                    "{}:{}",
                    e.repository.as_ref().unwrap(),
                    e.tag.as_ref().unwrap()
                )
            })
            .collect();
        assert_eq!(tags, ["team-a/app:cache"]);
        assert_eq!(
            get_log_as(&registry, &admin, "app-1").await.body.as_ref(),
            b"second attempt"
        );

        // Deleting the tag deletes the log.
        registry
            .delete_as_admin(&format!("/admin/v1/repositories/{LOGS}/_tags/app-1"))
            .await
            .expect(200, None);
        get_log_as(&registry, &admin, "app-1")
            .await
            .expect(404, Some("MANIFEST_UNKNOWN"));
    }

    #[tokio::test]
    async fn stored_logs_refuse_strangers_bad_annotations_and_other_manifests() {
        let registry = TestRegistry::authenticated();
        let admin = admin();
        let build = format!(
            "Bearer {}",
            token("team-a", &[TokenAction::Pull, TokenAction::Push])
        );
        put_log_as(&registry, &build, "app-1", None, b"log")
            .await
            .expect(403, Some("DENIED"));
        get_log_as(&registry, &build, "app-1")
            .await
            .expect(403, Some("DENIED"));
        registry
            .call(Method::GET, &log_path("app-1"), &[], Body::empty())
            .await
            .expect(401, Some("UNAUTHORIZED"));

        let many = (0..=32)
            .map(|i| format!("\"k{i}\":\"v\""))
            .collect::<Vec<_>>();
        let many = format!("{{{}}}", many.join(","));
        for bad in ["not json", r#"{"a":1}"#, r#"{"a b":"c"}"#, many.as_str()] {
            let refused = put_log_as(&registry, &admin, "app-1", Some(bad), b"log").await;
            refused.expect(400, Some("MANIFEST_INVALID"));
        }
        // A header of raw UTF-8 is not ASCII: the client must escape it.
        let request = axum::http::Request::builder()
            .method(Method::PUT)
            .uri(log_path("app-1"))
            .header("authorization", &admin)
            .header(
                ANNOTATIONS_HEADER,
                axum::http::HeaderValue::from_bytes("{\"a\":\"é\"}".as_bytes()).unwrap(),
            )
            .body(Body::from("log"))
            .unwrap();
        let refused = registry.send(request).await;
        refused.expect(400, Some("MANIFEST_INVALID"));
        assert!(
            refused.json().to_string().contains("not ASCII"),
            "{refused:?}"
        );
        // Nothing refused was stored.
        get_log_as(&registry, &admin, "app-1")
            .await
            .expect(404, Some("MANIFEST_UNKNOWN"));

        // The cap holds whatever the body claims; at the cap the log is stored.
        let name = RepoName::parse(LOGS).unwrap();
        let tag = Tag::parse("capped").unwrap();
        let over = put_log(
            &registry.registry,
            name.clone(),
            tag.clone(),
            &HeaderMap::new(),
            Body::from("123456789"),
            8,
        )
        .await
        .unwrap_err();
        assert_eq!(over.status().as_u16(), 413);
        put_log(
            &registry.registry,
            name,
            tag,
            &HeaderMap::new(),
            Body::from("12345678"),
            8,
        )
        .await
        .unwrap();
        assert_eq!(
            get_log_as(&registry, &admin, "capped").await.body.as_ref(),
            b"12345678"
        );

        // A tag that holds an image is not a log.
        registry.push_image(LOGS, "image", "x").await;
        let image = get_log_as(&registry, &admin, "image").await;
        image.expect(400, Some("MANIFEST_INVALID"));
        assert!(
            image.json().to_string().contains("not a Kiln build log"),
            "{image:?}"
        );
        // Logs are stored and read, not deleted, on their own path.
        call(&registry, Method::DELETE, &log_path("capped"), json!(null))
            .await
            .expect(405, Some("UNSUPPORTED"));
    }

    #[tokio::test]
    async fn the_admin_client_stores_and_reads_logs_over_a_socket() {
        use crate::cacheapi::client::{AdminClient, AdminClientError};
        use crate::cacheapi::log::{ANNOTATION_ATTEMPT, ANNOTATION_TRUNCATED, StoredLogBody};
        let registry = TestRegistry::authenticated();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = registry.registry.router();
        tokio::spawn(async move { axum::serve(listener, router).await });
        let client =
            AdminClient::new(&format!("http://{addr}"), crate::registry::testing::ADMIN).unwrap();

        let name = RepoName::parse(LOGS).unwrap();
        let tag = Tag::parse("app-1").unwrap();
        let meta = annotations(&[(ANNOTATION_ATTEMPT, "1"), (ANNOTATION_TRUNCATED, "ü 10")]);
        let log = axum::body::Bytes::from_static(b"building...\ndone\n");
        let stored = client
            .put_log(&name, &tag, &meta, log.clone())
            .await
            .unwrap();
        assert_eq!(
            (stored.blob, stored.size),
            (Digest::of(&log), log.len() as u64)
        );
        assert_eq!(
            client.get_log(&name, &tag).await.unwrap(),
            Some(StoredLogBody {
                annotations: meta,
                bytes: log.clone()
            })
        );
        assert_eq!(
            client
                .get_log(&name, &Tag::parse("app-2").unwrap())
                .await
                .unwrap(),
            None
        );
        // What the server would refuse is refused before anything is sent; what it
        // refuses comes back as its error.
        let err = client
            .put_log(&name, &tag, &annotations(&[("bad key", "")]), log.clone())
            .await
            .unwrap_err();
        assert!(
            matches!(err, AdminClientError::Annotations { .. }),
            "{err:?}"
        );
        registry.push_image(LOGS, "image", "x").await;
        let err = client
            .get_log(&name, &Tag::parse("image").unwrap())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("MANIFEST_INVALID"), "{err:?}");
        assert!(!err.is_transient());
    }

    #[test]
    fn prune_requests_map_to_gc_options() {
        let all = gc_options(&PruneRequest {
            policy: PrunePolicy::All,
            dry_run: true,
        });
        assert!(all.policy.all && all.dry_run && all.grace.is_zero());
        let storage = gc_options(&PruneRequest {
            policy: PrunePolicy::KeepStorage { bytes: 10 },
            dry_run: false,
        });
        assert_eq!(storage.policy.keep_storage, Some(10));
        assert_eq!(storage.grace, GcOptions::default().grace);
        let age = gc_options(&PruneRequest {
            policy: PrunePolicy::KeepDuration { seconds: 60 },
            dry_run: false,
        });
        assert_eq!(age.policy.keep_duration, Some(Duration::from_secs(60)));
    }
}
