//! Base images: recording which manifest a build's pull of a mirror tag resolved to, and
//! the admin API over those records and over the mirror's tags (`/admin/v1/builds/<uid>/
//! bases`, `/admin/v1/mirror/resolve`; the contract is [`crate::cacheapi::admin`]). I/O:
//! the store, the mirror's upstreams.
//!
//! Recording sits beside the pull, not inside it: a failure to record is logged and the
//! pull is answered as if nothing had been asked of the store.

use axum::http::StatusCode;
use axum::response::Response;

use crate::cacheapi::admin::{BaseImages, BasesForgotten, LeaseName, ResolveRequest, Resolved};
use crate::cacheapi::convert;
use crate::cacheapi::token::Claims;
use crate::oci::digest::Digest;
use crate::oci::name::{RepoName, Tag};
use crate::registry::blobs::{Missing, mirror_error};
use crate::registry::error::RegistryError;
use crate::registry::mirror::MirrorError;
use crate::registry::mirror::upstream::UpstreamError;
use crate::registry::request::Reply;
use crate::registry::service::Registry;

/// Records that the build `claims` names resolved the mirror tag `name:tag` to `digest`.
/// Never fails: the pull it belongs to has succeeded, and goes on whatever happens here.
pub(crate) async fn record(
    registry: &Registry,
    claims: &Claims,
    name: &RepoName,
    tag: &Tag,
    digest: Digest,
) {
    // The admin API reads records by a uid under the lease name rule; a token whose
    // subject breaks it (not minted by the controller) would write records nobody reads.
    if LeaseName::parse(&claims.sub).is_err() {
        tracing::debug!(sub = %claims.sub, image = %name, %tag, "not recording a base image: the token's subject is not a Build UID");
        return;
    }
    let (uid, image, tag_text) = (claims.sub.clone(), name.to_string(), tag.to_string());
    let recorded = registry
        .blocking("record a base image", move |store| {
            store.record_base(&uid, &image, &tag_text, digest)
        })
        .await;
    if let Err(err) = recorded {
        tracing::warn!(
            uid = %claims.sub,
            image = %name,
            %tag,
            %digest,
            error = %crate::report::error_chain(&err),
            "cannot record the base image a build resolved; its pull was answered anyway"
        );
    }
}

/// `GET /admin/v1/builds/<uid>/bases`.
pub(crate) async fn list(registry: &Registry, uid: LeaseName) -> Result<Response, RegistryError> {
    let rows = registry
        .blocking("read base images", move |store| store.bases(uid.as_str()))
        .await?;
    let answer: BaseImages = convert::base_images(&rows);
    Reply::new(StatusCode::OK).json(&answer)
}

/// `DELETE /admin/v1/builds/<uid>/bases`.
pub(crate) async fn forget(registry: &Registry, uid: LeaseName) -> Result<Response, RegistryError> {
    let forgotten = registry
        .blocking("forget base images", move |store| {
            store.forget_bases(uid.as_str())
        })
        .await?;
    Reply::new(StatusCode::OK).json(&BasesForgotten {
        forgotten: forgotten as u64,
    })
}

/// `POST /admin/v1/mirror/resolve`: where the upstream's tag points now (see
/// [`crate::registry::mirror::Mirror::resolve_tag`]). Records nothing: the admin is not a
/// build.
pub(crate) async fn resolve(
    registry: &Registry,
    request: ResolveRequest,
) -> Result<Response, RegistryError> {
    let ResolveRequest { image, tag } = request;
    let name = RepoName::parse(&image)?;
    let parsed_tag = Tag::parse(&tag).map_err(|err| RegistryError::ManifestInvalid {
        reason: err.to_string(),
    })?;
    let not_mirrored = || RegistryError::NotMirrored {
        name: image.clone(),
        mirrors: registry
            .mirror()
            .map(|mirror| mirror.names().into_iter().collect())
            .unwrap_or_default(),
    };
    let mirror = registry
        .mirror()
        .filter(|mirror| mirror.is_mirror(&name) && name.after_first_component().is_some())
        .ok_or_else(not_mirrored)?;
    let digest = mirror
        .resolve_tag(&name, &parsed_tag)
        .await
        .map_err(|err| resolve_error(err, &name, &parsed_tag))?;
    tracing::info!(image = %name, tag = %parsed_tag, %digest, "resolved a mirror tag upstream");
    Reply::new(StatusCode::OK).json(&Resolved { image, tag, digest })
}

/// The answer to a failed resolve: as a pull's ([`mirror_error`]), except that an
/// upstream that cannot answer is `UNAVAILABLE` whether or not the mirror holds a copy,
/// since a resolve never answers from it.
fn resolve_error(err: MirrorError, name: &RepoName, tag: &Tag) -> RegistryError {
    match err {
        MirrorError::Upstream(
            ref cause @ (UpstreamError::Unavailable { ref upstream, .. }
            | UpstreamError::Invalid { ref upstream, .. }),
        ) => {
            // The client learns what failed; the log says why.
            tracing::warn!(image = %name, %tag, error = %cause, "cannot resolve a mirror tag upstream");
            RegistryError::Unavailable {
                reason: format!("upstream {upstream} cannot say where {name}:{tag} points now"),
            }
        }
        other => mirror_error(other, Missing::Manifest(format!("{name}:{tag}"))),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use axum::body::Body;
    use axum::extract::{Request, State};
    use axum::http::{Method, header};
    use axum::response::IntoResponse;
    use serde_json::json;

    use super::*;
    use crate::cacheapi::admin::BaseImage;
    use crate::cacheapi::token::TokenAction;
    use crate::oci::media::{DOCKER_MANIFEST, OCI_MANIFEST};
    use crate::registry::auth::unix_now;
    use crate::registry::mirror::upstream::UpstreamConfig;
    use crate::registry::mirror::{Mirror, MirrorOptions};
    use crate::registry::testing::{Answer, TestRegistry, admin, key};
    use crate::store::fixtures::image_manifest;

    /// The mirror of the test registries, named after the host builds name.
    const MIRROR: &str = "docker.io";

    /// An upstream registry whose tags the test moves: manifests by tag and digest, HEAD
    /// and GET, counted; `down` makes it answer 503.
    #[derive(Default)]
    struct FakeUpstream {
        /// (repository, tag) → manifest.
        tags: Mutex<BTreeMap<(String, String), Vec<u8>>>,
        down: AtomicBool,
        heads: AtomicUsize,
        gets: AtomicUsize,
    }

    impl FakeUpstream {
        /// Points `repo:tag` at a manifest of its own made from `seed`; returns its digest.
        fn tag(&self, repo: &str, tag: &str, seed: &str) -> Digest {
            let manifest = image_manifest((Digest::of(seed.as_bytes()), seed.len() as u64), &[]);
            let digest = Digest::of(&manifest);
            self.tags
                .lock()
                .unwrap()
                .insert((repo.to_owned(), tag.to_owned()), manifest);
            digest
        }

        fn untag(&self, repo: &str, tag: &str) {
            self.tags
                .lock()
                .unwrap()
                .remove(&(repo.to_owned(), tag.to_owned()));
        }

        fn counts(&self) -> (usize, usize) {
            (
                self.heads.load(Ordering::SeqCst),
                self.gets.load(Ordering::SeqCst),
            )
        }
    }

    async fn upstream_answer(
        State(fake): State<Arc<FakeUpstream>>,
        request: Request,
    ) -> axum::response::Response {
        use axum::http::StatusCode as S;
        let path = request.uri().path().to_owned();
        let Some((repo, reference)) = path
            .strip_prefix("/v2/")
            .and_then(|rest| rest.rsplit_once("/manifests/"))
        else {
            return S::NOT_FOUND.into_response();
        };
        if request.method() == Method::HEAD {
            fake.heads.fetch_add(1, Ordering::SeqCst);
        } else {
            fake.gets.fetch_add(1, Ordering::SeqCst);
        }
        if fake.down.load(Ordering::SeqCst) {
            return S::SERVICE_UNAVAILABLE.into_response();
        }
        let found = {
            let tags = fake.tags.lock().unwrap();
            tags.get(&(repo.to_owned(), reference.to_owned()))
                .or_else(|| {
                    tags.iter()
                        .find(|((r, _), bytes)| {
                            r == repo && Digest::of(bytes).to_string() == reference
                        })
                        .map(|(_, bytes)| bytes)
                })
                .cloned()
        };
        match found {
            Some(bytes) => (
                [
                    (header::CONTENT_TYPE.as_str(), OCI_MANIFEST.to_owned()),
                    ("docker-content-digest", Digest::of(&bytes).to_string()),
                ],
                bytes,
            )
                .into_response(),
            None => (
                S::NOT_FOUND,
                axum::Json(json!({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "x"}]})),
            )
                .into_response(),
        }
    }

    /// A registry with a build token key whose mirror `docker.io` has `url` upstream.
    fn mirrored(url: &str) -> TestRegistry {
        let url = url.to_owned();
        TestRegistry::build(true, move |store| {
            let upstream = UpstreamConfig {
                name: MIRROR.into(),
                url,
                credentials: None,
            };
            Some(Mirror::new(store.clone(), vec![upstream], MirrorOptions::default()).unwrap())
        })
    }

    /// A registry over a fake upstream that serves it.
    async fn with_upstream() -> (TestRegistry, Arc<FakeUpstream>) {
        let fake = Arc::new(FakeUpstream::default());
        let app = axum::Router::new()
            .fallback(upstream_answer)
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (mirrored(&format!("http://{addr}")), fake)
    }

    /// The `Authorization` of a pull token of the Build `uid` in namespace `team-a`.
    fn build(uid: &str) -> String {
        let claims = Claims::new(uid, "team-a", [TokenAction::Pull], unix_now(), 3600);
        format!("Bearer {}", key().mint(&claims).unwrap())
    }

    async fn pull(registry: &TestRegistry, method: Method, path: &str, auth: &str) -> Answer {
        registry
            .call(method, path, &[("authorization", auth)], Body::empty())
            .await
    }

    async fn as_admin(
        registry: &TestRegistry,
        method: Method,
        path: &str,
        body: serde_json::Value,
    ) -> Answer {
        registry.as_admin(method, path, body).await
    }

    fn records(registry: &TestRegistry, uid: &str) -> Vec<(String, String, Digest)> {
        registry
            .registry
            .store()
            .bases(uid)
            .unwrap()
            .into_iter()
            .map(|b| (b.image, b.tag, b.digest))
            .collect()
    }

    fn record(image: &str, tag: &str, digest: Digest) -> (String, String, Digest) {
        (image.to_owned(), tag.to_owned(), digest)
    }

    fn all_rows(registry: &TestRegistry) -> u64 {
        registry
            .registry
            .store()
            .table_rows()
            .unwrap()
            .into_iter()
            .find(|(table, _)| table == "bases")
            .map_or(0, |(_, rows)| rows)
    }

    #[tokio::test]
    async fn a_build_pulling_mirror_tags_records_what_they_resolved_to() {
        let (registry, upstream) = with_upstream().await;
        let x1 = upstream.tag("library/x", "1", "x one");
        let y2 = upstream.tag("library/y", "2", "y two");
        upstream.tag("library/z", "3", "z three");
        let uid = "0b7a4c1e-9f3d-4e2a-8c55-1d2e3f405162";
        let token = build(uid);

        // By tag, with GET in the mirror's name and with HEAD in the containerd form.
        pull(
            &registry,
            Method::GET,
            "/v2/docker.io/library/x/manifests/1",
            &token,
        )
        .await
        .expect(200, None);
        pull(
            &registry,
            Method::HEAD,
            "/v2/library/y/manifests/2?ns=docker.io",
            &token,
        )
        .await
        .expect(200, None);
        let want = [
            record("docker.io/library/x", "1", x1),
            record("docker.io/library/y", "2", y2),
        ];
        assert_eq!(records(&registry, uid), want);

        // By digest, by the admin, by a token whose subject is no Build UID: nothing.
        let other = "uid-2";
        pull(
            &registry,
            Method::GET,
            &format!("/v2/docker.io/library/x/manifests/{x1}"),
            &build(other),
        )
        .await
        .expect(200, None);
        pull(
            &registry,
            Method::GET,
            "/v2/library/z/manifests/3?ns=docker.io",
            &admin(),
        )
        .await
        .expect(200, None);
        pull(
            &registry,
            Method::GET,
            "/v2/docker.io/library/z/manifests/3",
            &build("a/b"),
        )
        .await
        .expect(200, None);
        // Pulls that fail: a tag the upstream lacks, a type the client does not accept,
        // an upstream that cannot answer for a tag not cached.
        pull(
            &registry,
            Method::GET,
            "/v2/docker.io/library/x/manifests/9",
            &token,
        )
        .await
        .expect(404, Some("MANIFEST_UNKNOWN"));
        registry
            .call(
                Method::GET,
                "/v2/docker.io/library/z/manifests/3",
                &[("authorization", &token), ("accept", DOCKER_MANIFEST)],
                Body::empty(),
            )
            .await
            .expect(404, Some("MANIFEST_UNKNOWN"));
        upstream.down.store(true, Ordering::SeqCst);
        upstream.tag("library/w", "1", "w one");
        pull(
            &registry,
            Method::GET,
            "/v2/docker.io/library/w/manifests/1",
            &token,
        )
        .await
        .expect(503, Some("UNAVAILABLE"));
        assert_eq!(records(&registry, uid), want);
        assert_eq!(records(&registry, other), []);
        assert_eq!(all_rows(&registry), 2);

        // The admin API lists them, sorted, with the time in seconds.
        let listed = as_admin(
            &registry,
            Method::GET,
            &format!("/admin/v1/builds/{uid}/bases"),
            json!(null),
        )
        .await;
        listed.expect(200, None);
        let listed: BaseImages = serde_json::from_slice(&listed.body).unwrap();
        let now = unix_now();
        assert!(
            listed
                .bases
                .iter()
                .all(|b| b.resolved_at <= now && b.resolved_at + 60 > now),
            "{listed:?}"
        );
        let resolved_at = listed.bases[0].resolved_at;
        let base = |image: &str, tag: &str, digest: Digest| BaseImage {
            image: image.to_owned(),
            tag: tag.to_owned(),
            digest,
            resolved_at,
        };
        assert_eq!(
            listed.bases,
            [
                base("docker.io/library/x", "1", x1),
                BaseImage {
                    resolved_at: listed.bases[1].resolved_at,
                    ..base("docker.io/library/y", "2", y2)
                },
            ]
        );
        let none = as_admin(
            &registry,
            Method::GET,
            "/admin/v1/builds/uid-none/bases",
            json!(null),
        )
        .await;
        none.expect(200, None);
        assert_eq!(none.json(), json!({"bases": []}));

        // DELETE forgets them, and again finds nothing.
        let path = format!("/admin/v1/builds/{uid}/bases");
        let forgotten = as_admin(&registry, Method::DELETE, &path, json!(null)).await;
        assert_eq!(forgotten.json(), json!({"forgotten": 2}));
        let again = as_admin(&registry, Method::DELETE, &path, json!(null)).await;
        assert_eq!(again.json(), json!({"forgotten": 0}));
        let listed = as_admin(&registry, Method::GET, &path, json!(null)).await;
        assert_eq!(listed.json(), json!({"bases": []}));
        as_admin(
            &registry,
            Method::GET,
            "/admin/v1/builds/a%2Fb/bases",
            json!(null),
        )
        .await
        .expect(400, Some("NAME_INVALID"));
        as_admin(&registry, Method::PUT, &path, json!(null))
            .await
            .expect(405, Some("UNSUPPORTED"));
    }

    #[tokio::test]
    async fn a_resolve_sees_a_moved_tag_within_the_ttl_and_updates_the_mirror() {
        let (registry, upstream) = with_upstream().await;
        let first = upstream.tag("library/x", "1", "first");
        let uid = "uid-1";
        let token = build(uid);
        let path = "/v2/docker.io/library/x/manifests/1";
        pull(&registry, Method::GET, path, &token)
            .await
            .expect(200, None);

        // The tag moves upstream; within the TTL a pull still gets the cached manifest.
        let second = upstream.tag("library/x", "1", "second");
        let cached = pull(&registry, Method::GET, path, &token).await;
        assert_eq!(cached.header("docker-content-digest"), first.to_string());
        assert_eq!(cached.header("cache-status"), "kiln; hit");

        let before = upstream.counts();
        let resolved = as_admin(
            &registry,
            Method::POST,
            "/admin/v1/mirror/resolve",
            json!({"image": "docker.io/library/x", "tag": "1"}),
        )
        .await;
        resolved.expect(200, None);
        assert_eq!(
            resolved.json(),
            json!({"image": "docker.io/library/x", "tag": "1", "digest": second.to_string()})
        );
        // One HEAD to learn it moved, one GET of the new manifest by digest.
        assert_eq!(upstream.counts(), (before.0 + 1, before.1 + 1));
        // The resolve recorded nothing; the mirror's tag now serves the new manifest.
        assert_eq!(
            records(&registry, uid),
            [record("docker.io/library/x", "1", first)]
        );
        let moved = pull(&registry, Method::GET, path, &token).await;
        assert_eq!(moved.header("docker-content-digest"), second.to_string());
        assert_eq!(moved.header("cache-status"), "kiln; hit");
        assert_eq!(
            records(&registry, uid),
            [record("docker.io/library/x", "1", second)]
        );
        assert_eq!(all_rows(&registry), 1);

        // When the tag has not moved, a HEAD is all it costs.
        let before = upstream.counts();
        let same = as_admin(
            &registry,
            Method::POST,
            "/admin/v1/mirror/resolve",
            json!({"image": "docker.io/library/x", "tag": "1"}),
        )
        .await;
        assert_eq!(same.json()["digest"], json!(second.to_string()));
        assert_eq!(upstream.counts(), (before.0 + 1, before.1));

        // A tag not cached is looked at, not fetched.
        let other = upstream.tag("library/y", "2", "y");
        let before = upstream.counts();
        let looked = as_admin(
            &registry,
            Method::POST,
            "/admin/v1/mirror/resolve",
            json!({"image": "docker.io/library/y", "tag": "2"}),
        )
        .await;
        assert_eq!(looked.json()["digest"], json!(other.to_string()));
        assert_eq!(upstream.counts(), (before.0 + 1, before.1));
        let store = registry.registry.store();
        let tag = crate::oci::name::Reference::tag("2").unwrap();
        assert!(
            store
                .manifest("docker.io/library/y", &tag)
                .unwrap()
                .is_none()
        );

        // A tag the upstream no longer has is unknown, and gone from the mirror too.
        upstream.untag("library/x", "1");
        as_admin(
            &registry,
            Method::POST,
            "/admin/v1/mirror/resolve",
            json!({"image": "docker.io/library/x", "tag": "1"}),
        )
        .await
        .expect(404, Some("MANIFEST_UNKNOWN"));
        let tag = crate::oci::name::Reference::tag("1").unwrap();
        assert!(
            store
                .manifest("docker.io/library/x", &tag)
                .unwrap()
                .is_none()
        );

        // An upstream that cannot answer is unavailable, even for a tag the mirror holds.
        upstream.tag("library/x", "1", "third");
        pull(&registry, Method::GET, path, &token)
            .await
            .expect(200, None);
        upstream.down.store(true, Ordering::SeqCst);
        let down = as_admin(
            &registry,
            Method::POST,
            "/admin/v1/mirror/resolve",
            json!({"image": "docker.io/library/x", "tag": "1"}),
        )
        .await;
        down.expect(503, Some("UNAVAILABLE"));
        assert!(
            down.json()
                .to_string()
                .contains("cannot say where docker.io/library/x:1 points"),
            "{down:?}"
        );
    }

    #[tokio::test]
    async fn a_resolve_names_the_mirrors_when_the_image_is_of_none() {
        let (registry, _upstream) = with_upstream().await;
        for image in ["quay.io/x", "docker.io"] {
            let answer = as_admin(
                &registry,
                Method::POST,
                "/admin/v1/mirror/resolve",
                json!({"image": image, "tag": "1"}),
            )
            .await;
            answer.expect(404, Some("NAME_UNKNOWN"));
            let detail = answer.json()["errors"][0]["detail"]
                .as_str()
                .unwrap()
                .to_owned();
            assert!(
                detail.contains("the configured mirrors are docker.io"),
                "{detail}"
            );
            assert!(detail.starts_with(image), "{detail}");
        }
        for (body, code) in [
            (json!({"image": "Docker.io/x", "tag": "1"}), "NAME_INVALID"),
            (
                json!({"image": "docker.io/x", "tag": ".1"}),
                "MANIFEST_INVALID",
            ),
            (json!({"image": "docker.io/x"}), "MANIFEST_INVALID"),
        ] {
            as_admin(&registry, Method::POST, "/admin/v1/mirror/resolve", body)
                .await
                .expect(400, Some(code));
        }
        as_admin(
            &registry,
            Method::GET,
            "/admin/v1/mirror/resolve",
            json!(null),
        )
        .await
        .expect(405, Some("UNSUPPORTED"));

        let plain = TestRegistry::authenticated();
        let answer = as_admin(
            &plain,
            Method::POST,
            "/admin/v1/mirror/resolve",
            json!({"image": "docker.io/x", "tag": "1"}),
        )
        .await;
        answer.expect(404, Some("NAME_UNKNOWN"));
        assert!(
            answer
                .json()
                .to_string()
                .contains("no mirror is configured")
        );

        // An upstream nobody listens at.
        let dead = mirrored("http://127.0.0.1:9");
        as_admin(
            &dead,
            Method::POST,
            "/admin/v1/mirror/resolve",
            json!({"image": "docker.io/library/x", "tag": "1"}),
        )
        .await
        .expect(503, Some("UNAVAILABLE"));
    }

    #[tokio::test]
    async fn build_tokens_are_refused_on_the_base_image_routes() {
        let (registry, _upstream) = with_upstream().await;
        let token = build("uid-1");
        for (method, path, body) in [
            (Method::GET, "/admin/v1/builds/uid-1/bases", ""),
            (Method::DELETE, "/admin/v1/builds/uid-1/bases", ""),
            (
                Method::POST,
                "/admin/v1/mirror/resolve",
                r#"{"image":"docker.io/library/x","tag":"1"}"#,
            ),
        ] {
            registry
                .call(
                    method.clone(),
                    path,
                    &[("authorization", &token)],
                    body.to_owned(),
                )
                .await
                .expect(403, Some("DENIED"));
            registry
                .call(method, path, &[], body.to_owned())
                .await
                .expect(401, Some("UNAUTHORIZED"));
        }
    }

    #[tokio::test]
    async fn the_admin_client_reads_forgets_and_resolves_over_a_socket() {
        use crate::cacheapi::client::AdminClient;
        let (registry, upstream) = with_upstream().await;
        let digest = upstream.tag("library/x", "1", "x");
        let uid = LeaseName::parse("uid-1").unwrap();
        pull(
            &registry,
            Method::GET,
            "/v2/docker.io/library/x/manifests/1",
            &build(uid.as_str()),
        )
        .await
        .expect(200, None);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = registry.registry.router();
        tokio::spawn(async move { axum::serve(listener, router).await });
        let client =
            AdminClient::new(&format!("http://{addr}"), crate::registry::testing::ADMIN).unwrap();

        let bases = client.base_images(&uid).await.unwrap();
        assert_eq!(bases.len(), 1);
        assert_eq!(
            (
                bases[0].image.as_str(),
                bases[0].tag.as_str(),
                bases[0].digest
            ),
            ("docker.io/library/x", "1", digest)
        );
        let moved = upstream.tag("library/x", "1", "x moved");
        let resolved = client.resolve("docker.io/library/x", "1").await.unwrap();
        assert_eq!(
            resolved,
            Resolved {
                image: "docker.io/library/x".into(),
                tag: "1".into(),
                digest: moved
            }
        );
        assert_eq!(client.forget_base_images(&uid).await.unwrap(), 1);
        assert_eq!(client.forget_base_images(&uid).await.unwrap(), 0);
        assert_eq!(client.base_images(&uid).await.unwrap(), []);

        let err = client.resolve("quay.io/x", "1").await.unwrap_err();
        assert_eq!(err.code(), Some("NAME_UNKNOWN"), "{err:?}");
        assert!(err.to_string().contains("docker.io"), "{err}");
        assert!(!err.is_transient());
        upstream.down.store(true, Ordering::SeqCst);
        let err = client
            .resolve("docker.io/library/x", "1")
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("UNAVAILABLE"), "{err:?}");
        assert!(err.is_transient());
    }
}
