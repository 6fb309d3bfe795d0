//! `GET /v2/<name>/referrers/<digest>`: the manifests whose subject is `digest`, as an OCI
//! index, optionally filtered by `artifactType` (then `OCI-Filters-Applied: artifactType`)
//! (I/O: the store).

use std::collections::BTreeMap;

use axum::http::{StatusCode, header};
use axum::response::Response;
use serde::Serialize;

use crate::digest::Digest;
use crate::registry::error::RegistryError;
use crate::registry::headers::OCI_FILTERS_APPLIED;
use crate::registry::name::RepoName;
use crate::registry::route::{Reply, Request};
use crate::store::manifest::media_types::OCI_INDEX;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    media_type: &'static str,
    manifests: Vec<Descriptor>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: Digest,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    artifact_type: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

/// The referrers of `digest` in `name` (an empty index when there are none, as the spec
/// asks, whether or not the subject exists).
pub(crate) async fn list(
    request: &Request,
    name: &RepoName,
    digest: Digest,
) -> Result<Response, RegistryError> {
    let filter = request
        .query
        .get("artifactType")
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    let (repo, wanted) = (name.to_string(), filter.clone());
    let referrers = request
        .registry
        .blocking("list referrers", move |store| {
            store.referrers(&repo, digest, wanted.as_deref())
        })
        .await?;
    let index = Index {
        schema_version: 2,
        media_type: OCI_INDEX,
        manifests: referrers
            .into_iter()
            .map(|r| Descriptor {
                media_type: r.media_type,
                digest: r.digest,
                size: r.size,
                artifact_type: r.artifact_type,
                annotations: r.annotations,
            })
            .collect(),
    };
    let mut reply = Reply::new(StatusCode::OK);
    if filter.is_some() {
        reply = reply.header(OCI_FILTERS_APPLIED, "artifactType");
    }
    let response = reply.json(&index)?;
    let (mut parts, body) = response.into_parts();
    if let Ok(value) = OCI_INDEX.parse() {
        parts.headers.insert(header::CONTENT_TYPE, value);
    }
    Ok(Response::from_parts(parts, body))
}
