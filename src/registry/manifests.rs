//! Manifest routes: `HEAD`/`GET /v2/<name>/manifests/<reference>` with content negotiation,
//! `PUT` (at most [`Limits::max_manifest_bytes`](crate::registry::service::Limits), with
//! `OCI-Subject` for referrers) and `DELETE` (by tag: the tag only; by digest: the manifest
//! and the tags pointing at it); mirror repositories go through the mirror (I/O: the store,
//! the mirror).

use axum::body::Body;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::registry::blobs::{Missing, mirror_error};
use crate::registry::body::read_capped;
use crate::registry::error::RegistryError;
use crate::registry::headers::{CACHE_STATUS, DOCKER_CONTENT_DIGEST, OCI_SUBJECT, accepts};
use crate::registry::name::{Reference, RepoName};
use crate::registry::route::{Reply, Request};
use crate::store::{self, ManifestInfo};

fn store_reference(reference: &Reference) -> store::Reference {
    match reference {
        Reference::Tag(tag) => store::Reference::Tag(tag.to_string()),
        Reference::Digest(digest) => store::Reference::Digest(*digest),
    }
}

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
            let (repo, wanted) = (name.to_string(), store_reference(reference));
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
    let mut reply = manifest_reply(&info);
    if let Some(status) = &cache_status {
        reply = reply.header(CACHE_STATUS, status.header_value());
        if let crate::mirror::CacheStatus::Stale(_) = status {
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
    let (repo, wanted) = (name.to_string(), store_reference(reference));
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
                    let present = store
                        .manifest(&repo, &store::Reference::Digest(digest))?
                        .is_some();
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
