//! Manifest routes: `HEAD`/`GET /v2/<name>/manifests/<reference>` with content negotiation,
//! `PUT` (at most [`Limits::max_manifest_bytes`](crate::registry::service::Limits), with
//! `OCI-Subject` for referrers) and `DELETE` (by tag: the tag only; by digest: the manifest
//! and the tags pointing at it); mirror repositories go through the mirror, and a build's
//! successful read of a mirror tag is recorded as one of its base images
//! ([`crate::registry::bases`]) (I/O: the store, the mirror).

use axum::body::Body;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::oci::name::{Reference, RepoName};
use crate::registry::auth::Principal;
use crate::registry::blobs::{Missing, mirror_error};
use crate::registry::body::read_capped;
use crate::registry::error::RegistryError;
use crate::registry::headers::{CACHE_STATUS, DOCKER_CONTENT_DIGEST, OCI_SUBJECT, accepts};
use crate::registry::request::{Reply, Request};
use crate::store::ManifestInfo;

/// `HEAD` and `GET`.
pub(crate) async fn get(
    request: &Request,
    name: &RepoName,
    reference: &Reference,
) -> Result<Response, RegistryError> {
    let head = request.method == Method::HEAD;
    let unknown = || RegistryError::ManifestUnknown {
        reference: reference.to_string(),
    };
    let (info, bytes, cache_status) = match request
        .registry
        .mirror()
        .filter(|mirror| mirror.is_mirror(name))
    {
        Some(mirror) => {
            let manifest = mirror
                .manifest(name, reference)
                .await
                .map_err(|err| mirror_error(err, Missing::Manifest(reference.to_string())))?;
            (
                manifest.info.clone(),
                Some(manifest.bytes.clone()),
                Some(manifest.status.clone()),
            )
        }
        None => {
            let (repo, wanted) = (name.to_string(), reference.clone());
            if head {
                let info = request
                    .registry
                    .blocking("read a manifest", move |store| {
                        store.manifest(&repo, &wanted)
                    })
                    .await?
                    .ok_or_else(unknown)?;
                (info, None, None)
            } else {
                let (info, bytes) = request
                    .registry
                    .blocking("read a manifest", move |store| {
                        store.manifest_bytes(&repo, &wanted)
                    })
                    .await?
                    .ok_or_else(unknown)?;
                (info, Some(bytes.into()), None)
            }
        }
    };
    let accept = request
        .headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok());
    if !accepts(accept, &info.media_type) {
        // What distribution answers when a client cannot parse the stored type.
        return Err(unknown());
    }
    // A build resolved a mirror tag: what it got is one of its base images.
    if let (Some(_), Reference::Tag(tag), Some(Principal::Build(claims))) =
        (&cache_status, reference, &request.principal)
    {
        crate::registry::bases::record(&request.registry, claims, name, tag, info.digest).await;
    }
    let mut reply = manifest_reply(&info);
    if let Some(status) = &cache_status {
        reply = reply.header(CACHE_STATUS, status.header_value());
        if let crate::registry::mirror::CacheStatus::Stale(_) = status {
            reply = reply.header(header::WARNING, "110 kiln \"Response is Stale\"");
        }
    }
    if head {
        return Ok(reply.into_response());
    }
    request.registry.store().touch(info.digest);
    Ok(reply
        .body(Body::from(bytes.unwrap_or_default()))
        .into_response())
}

fn manifest_reply(info: &ManifestInfo) -> Reply {
    Reply::new(StatusCode::OK)
        .header(header::CONTENT_TYPE, &info.media_type)
        .header(DOCKER_CONTENT_DIGEST, info.digest.to_string())
        .header(header::CONTENT_LENGTH, info.size.to_string())
        .header(header::ETAG, format!("\"{}\"", info.digest))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MediaTypeField {
    media_type: Option<String>,
}

/// `PUT`.
pub(crate) async fn put(
    request: &Request,
    name: &RepoName,
    reference: &Reference,
    body: Body,
) -> Result<Response, RegistryError> {
    let limit = request.registry.limits().max_manifest_bytes;
    let declared = request
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(RegistryError::TooLarge {
            reason: format!("the manifest is larger than {limit} bytes"),
        });
    }
    let bytes = read_capped(body, limit, "manifest").await?;
    let content_type = request
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_owned())
        .unwrap_or_default();
    if let Ok(MediaTypeField {
        media_type: Some(body_type),
    }) = serde_json::from_slice::<MediaTypeField>(&bytes)
        && !content_type.is_empty()
        && body_type != content_type
    {
        return Err(RegistryError::ManifestInvalid {
            reason: format!(
                "Content-Type is {content_type:?} but the manifest's mediaType is {body_type:?}"
            ),
        });
    }
    let (repo, wanted) = (name.to_string(), reference.clone());
    let info = request
        .registry
        .blocking("store a manifest", move |store| {
            store.put_manifest(&repo, &wanted, &content_type, &bytes)
        })
        .await?;
    let mut reply = Reply::new(StatusCode::CREATED)
        .header(
            header::LOCATION,
            format!("/v2/{name}/manifests/{}", info.digest),
        )
        .header(DOCKER_CONTENT_DIGEST, info.digest.to_string())
        .header(header::CONTENT_LENGTH, "0");
    if let Some(subject) = info.subject {
        reply = reply.header(OCI_SUBJECT, subject.to_string());
    }
    Ok(reply.into_response())
}

/// `DELETE`: by tag removes the tag only; by digest removes the manifest from the
/// repository with every tag pointing at it.
pub(crate) async fn delete(
    request: &Request,
    name: &RepoName,
    reference: &Reference,
) -> Result<Response, RegistryError> {
    let unknown = || RegistryError::ManifestUnknown {
        reference: reference.to_string(),
    };
    let repo = name.to_string();
    let removed = match reference {
        Reference::Tag(tag) => {
            let tag = tag.to_string();
            request
                .registry
                .blocking("delete a tag", move |store| store.untag(&repo, &tag))
                .await?
        }
        Reference::Digest(digest) => {
            let digest = *digest;
            request
                .registry
                .blocking("delete a manifest", move |store| {
                    let present = store.manifest(&repo, &Reference::Digest(digest))?.is_some();
                    Ok(present && store.unlink(&repo, digest)?)
                })
                .await?
        }
    };
    if !removed {
        return Err(unknown());
    }
    Ok(Reply::new(StatusCode::ACCEPTED)
        .header(header::CONTENT_LENGTH, "0")
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::digest::Digest;
    use crate::oci::media::{
        BUILDKIT_CACHE_CONFIG, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST,
    };
    use crate::registry::testing::{TestRegistry, admin};
    use crate::store::fixtures::{image_manifest, referrer_manifest};

    const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

    #[tokio::test]
    async fn manifests_push_and_pull_by_tag_and_digest_with_their_media_type() {
        let registry = TestRegistry::open();
        let (manifest, digest) = registry.push_image("a/b", "v1", "one").await;
        for reference in ["v1".to_owned(), digest.to_string()] {
            let path = format!("/v2/a/b/manifests/{reference}");
            let answer = registry.get(&path).await;
            answer.expect(200, None);
            assert_eq!(answer.body.as_ref(), manifest.as_slice());
            assert_eq!(answer.header("content-type"), OCI_MANIFEST);
            assert_eq!(answer.header("docker-content-digest"), digest.to_string());
            let head = registry.call(Method::HEAD, &path, &[], Body::empty()).await;
            head.expect(200, None);
            assert_eq!(head.header("content-length"), manifest.len().to_string());
            assert!(head.body.is_empty());
        }
        // The answer to a push says where the manifest is.
        let again = registry.push_manifest("a/b", "v2", &manifest).await;
        again.expect(201, None);
        assert_eq!(
            again.header("location"),
            format!("/v2/a/b/manifests/{digest}")
        );
        assert_eq!(again.header("docker-content-digest"), digest.to_string());
        registry
            .get("/v2/a/b/manifests/v3")
            .await
            .expect(404, Some("MANIFEST_UNKNOWN"));
        registry
            .get(&format!("/v2/a/c/manifests/{digest}"))
            .await
            .expect(404, Some("MANIFEST_UNKNOWN"));
    }

    #[tokio::test]
    async fn clients_get_only_manifest_types_they_accept() {
        let registry = TestRegistry::open();
        registry.push_image("a", "oci", "x").await;
        let path = "/v2/a/manifests/oci";
        for (accept, status) in [
            (format!("{DOCKER_MANIFEST}, {OCI_MANIFEST}"), 200),
            ("*/*".to_owned(), 200),
            (DOCKER_MANIFEST.to_owned(), 404),
        ] {
            let answer = registry
                .call(Method::GET, path, &[("accept", &accept)], Body::empty())
                .await;
            assert_eq!(answer.status.as_u16(), status, "{accept}");
        }
    }

    #[tokio::test]
    async fn docker_schema2_manifests_and_lists_keep_their_types() {
        let registry = TestRegistry::open();
        let config = registry.push_blob("d", b"{}").await;
        let layer = registry.push_blob("d", b"layer").await;
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{config}","size":2}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"{layer}","size":5}}]}}"#
        );
        registry
            .push_manifest("d", "one", manifest.as_bytes())
            .await
            .expect(201, None);
        let child = Digest::of(manifest.as_bytes());
        let list = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST_LIST}","manifests":[{{"mediaType":"{DOCKER_MANIFEST}","digest":"{child}","size":{},"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
            manifest.len()
        );
        registry
            .push_manifest("d", "list", list.as_bytes())
            .await
            .expect(201, None);
        for (tag, media_type) in [("one", DOCKER_MANIFEST), ("list", DOCKER_MANIFEST_LIST)] {
            let answer = registry
                .call(
                    Method::GET,
                    &format!("/v2/d/manifests/{tag}"),
                    &[(
                        "accept",
                        &format!("{DOCKER_MANIFEST},{DOCKER_MANIFEST_LIST}"),
                    )],
                    Body::empty(),
                )
                .await;
            answer.expect(200, None);
            assert_eq!(answer.header("content-type"), media_type);
        }
    }

    #[tokio::test]
    async fn bad_manifests_get_their_spec_codes() {
        let registry = TestRegistry::open();
        let auth = admin();
        let put = |reference: String, headers: Vec<(&'static str, String)>, body: Vec<u8>| {
            let registry = &registry;
            let auth = auth.clone();
            async move {
                let mut all: Vec<(&str, &str)> = vec![("authorization", auth.as_str())];
                all.extend(headers.iter().map(|(k, v)| (*k, v.as_str())));
                registry
                    .call(
                        Method::PUT,
                        &format!("/v2/a/manifests/{reference}"),
                        &all,
                        body,
                    )
                    .await
            }
        };
        let missing = image_manifest((Digest::of(b"c"), 1), &[(Digest::of(b"l"), 1)]);
        let answer = put("v1".into(), vec![], missing).await;
        answer.expect(404, Some("MANIFEST_BLOB_UNKNOWN"));
        assert!(answer.json()["errors"][0]["detail"]["digest"].is_string());
        put("v1".into(), vec![], b"not json".to_vec())
            .await
            .expect(400, Some("MANIFEST_INVALID"));
        put("v1".into(), vec![], br#"{"schemaVersion":1}"#.to_vec())
            .await
            .expect(400, Some("MANIFEST_INVALID"));
        let config = registry.push_blob("a", b"{}").await;
        let good = image_manifest((config, 2), &[]);
        put(
            "v1".into(),
            vec![("content-type", DOCKER_MANIFEST.to_owned())],
            good.clone(),
        )
        .await
        .expect(400, Some("MANIFEST_INVALID"));
        put(Digest::of(b"other").to_string(), vec![], good.clone())
            .await
            .expect(400, Some("DIGEST_INVALID"));
        let huge = vec![b' '; (4 << 20) + 1];
        put("v1".into(), vec![], huge.clone())
            .await
            .expect(413, Some("SIZE_INVALID"));
        put(
            "v1".into(),
            vec![("content-length", huge.len().to_string())],
            huge,
        )
        .await
        .expect(413, Some("SIZE_INVALID"));
        // Nothing of the failed pushes is tagged.
        assert!(registry.registry.store().listing().unwrap().tags.is_empty());
    }

    #[tokio::test]
    async fn non_distributable_layers_with_urls_are_never_required_nor_fetched() {
        let registry = TestRegistry::open();
        let config = registry.push_blob("win", b"{}").await;
        let pushed = registry.push_blob("win", b"a pushed layer").await;
        let foreign = Digest::of(b"a Windows base layer that is never pushed");
        let layer = |media_type: &str, digest: Digest, urls: &[&str]| serde_json::json!({"mediaType": media_type, "digest": digest, "size": 40, "urls": urls});
        let manifest_with = |foreign_layer: serde_json::Value, media_type: &str| {
            serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": media_type,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
                "layers": [
                    foreign_layer,
                    layer("application/vnd.oci.image.layer.v1.tar+gzip", pushed, &[]),
                ],
            }))
            .unwrap()
        };
        // An address no test serves: a fetch would fail the push.
        let urls = ["http://127.0.0.1:9/base.tar.gz"];
        let mut stored = Vec::new();
        for (media_type, manifest_type) in [
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                OCI_MANIFEST,
            ),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
                OCI_MANIFEST,
            ),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar",
                OCI_MANIFEST,
            ),
            (
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                DOCKER_MANIFEST,
            ),
        ] {
            let body = manifest_with(layer(media_type, foreign, &urls), manifest_type);
            let tag = format!("t{}", stored.len());
            registry
                .push_manifest("win", &tag, &body)
                .await
                .expect(201, None);
            let back = registry.get(&format!("/v2/win/manifests/{tag}")).await;
            back.expect(200, None);
            assert_eq!(back.body.as_ref(), body.as_slice(), "{media_type}");
            stored.push(body);
        }
        // Without `urls` such a layer must be pushed like any other; and every other
        // reference is still required.
        let no_urls = manifest_with(
            layer(
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                foreign,
                &[],
            ),
            OCI_MANIFEST,
        );
        registry
            .push_manifest("win", "no-urls", &no_urls)
            .await
            .expect(404, Some("MANIFEST_BLOB_UNKNOWN"));
        let absent_regular = manifest_with(
            layer(
                "application/vnd.oci.image.layer.v1.tar+gzip",
                foreign,
                &urls,
            ),
            OCI_MANIFEST,
        );
        registry
            .push_manifest("win", "regular", &absent_regular)
            .await
            .expect(404, Some("MANIFEST_BLOB_UNKNOWN"));
        // verify finds nothing missing; GC keeps the images and then, untagged, frees all.
        let store = registry.registry.store();
        assert!(
            store
                .verify(&crate::store::VerifyOptions::default())
                .unwrap()
                .is_clean()
        );
        let now = crate::store::GcOptions {
            grace: std::time::Duration::ZERO,
            ..crate::store::GcOptions::default()
        };
        store.gc(&now).unwrap();
        assert!(store.stat_blob("win", pushed).unwrap().is_some());
        for tag in 0..stored.len() {
            registry
                .delete_as_admin(&format!("/v2/win/manifests/t{tag}"))
                .await
                .expect(202, None);
        }
        store.gc(&now).unwrap();
        assert!(store.listing().unwrap().is_empty(), "{:?}", store.listing());
    }

    #[tokio::test]
    async fn deleting_a_tag_removes_the_tag_only_and_a_digest_its_tags_too() {
        let registry = TestRegistry::open();
        let (manifest, digest) = registry.push_image("a", "v1", "x").await;
        registry
            .push_manifest("a", "v2", &manifest)
            .await
            .expect(201, None);
        registry
            .delete_as_admin("/v2/a/manifests/v1")
            .await
            .expect(202, None);
        registry
            .get("/v2/a/manifests/v1")
            .await
            .expect(404, Some("MANIFEST_UNKNOWN"));
        registry
            .get(&format!("/v2/a/manifests/{digest}"))
            .await
            .expect(200, None);
        registry.get("/v2/a/manifests/v2").await.expect(200, None);
        registry
            .delete_as_admin("/v2/a/manifests/v1")
            .await
            .expect(404, Some("MANIFEST_UNKNOWN"));

        registry
            .delete_as_admin(&format!("/v2/a/manifests/{digest}"))
            .await
            .expect(202, None);
        registry
            .get(&format!("/v2/a/manifests/{digest}"))
            .await
            .expect(404, Some("MANIFEST_UNKNOWN"));
        registry
            .get("/v2/a/manifests/v2")
            .await
            .expect(404, Some("MANIFEST_UNKNOWN"));
        registry
            .delete_as_admin(&format!("/v2/a/manifests/{digest}"))
            .await
            .expect(404, Some("MANIFEST_UNKNOWN"));
    }

    #[tokio::test]
    async fn a_referrer_push_answers_with_its_subject() {
        let registry = TestRegistry::open();
        let (_, subject) = registry.push_image("a", "v1", "x").await;
        let empty = registry.push_blob("a", b"{}").await;
        let sbom = referrer_manifest(subject, (empty, 2), "application/spdx+json");
        let answer = registry
            .push_manifest("a", &Digest::of(&sbom).to_string(), &sbom)
            .await;
        answer.expect(201, None);
        assert_eq!(answer.header("oci-subject"), subject.to_string());
    }

    /// BuildKit's `type=registry` cache export writes one of two shapes; both must go in
    /// and come back byte for byte.
    #[tokio::test]
    async fn buildkit_cache_manifests_push_and_pull_in_both_forms() {
        let registry = TestRegistry::open();
        let repo = "team-a/cache";
        let layer_bytes = b"cached layer".as_slice();
        let layer = registry.push_blob(repo, layer_bytes).await;
        let cache_config = br#"{"layers":[{"blob":"x","parent":-1}],"records":[]}"#.as_slice();
        let config = registry.push_blob(repo, cache_config).await;

        // The index form (the default): entries are the layers and the cache config blob.
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{LAYER}","digest":"{layer}","size":{}}},{{"mediaType":"{BUILDKIT_CACHE_CONFIG}","digest":"{config}","size":{}}}]}}"#,
            layer_bytes.len(),
            cache_config.len()
        );
        // The image-manifest form (`image-manifest=true`): the cache config is the config.
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{BUILDKIT_CACHE_CONFIG}","digest":"{config}","size":{}}},"layers":[{{"mediaType":"{LAYER}","digest":"{layer}","size":{}}}]}}"#,
            cache_config.len(),
            layer_bytes.len()
        );
        for (tag, body, media_type) in [
            ("buildcache", &index, OCI_INDEX),
            ("buildcache-im", &manifest, OCI_MANIFEST),
        ] {
            registry
                .push_manifest(repo, tag, body.as_bytes())
                .await
                .expect(201, None);
            let answer = registry
                .call(
                    Method::GET,
                    &format!("/v2/{repo}/manifests/{tag}"),
                    &[("accept", &format!("{OCI_INDEX}, {OCI_MANIFEST}"))],
                    Body::empty(),
                )
                .await;
            answer.expect(200, None);
            assert_eq!(answer.body.as_ref(), body.as_bytes());
            assert_eq!(answer.header("content-type"), media_type);
        }
        // What the cache manifests reference survives GC.
        let report = registry
            .registry
            .store()
            .gc(&crate::store::GcOptions {
                grace: std::time::Duration::ZERO,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(report.blobs_removed, 0);
    }
}
