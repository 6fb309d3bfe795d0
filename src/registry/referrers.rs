//! `GET /v2/<name>/referrers/<digest>`: the manifests whose subject is `digest`, as an OCI
//! index, optionally filtered by `artifactType` (then `OCI-Filters-Applied: artifactType`)
//! (I/O: the store).

use std::collections::BTreeMap;

use axum::http::{StatusCode, header};
use axum::response::Response;
use serde::Serialize;

use crate::oci::digest::Digest;
use crate::oci::media::OCI_INDEX;
use crate::oci::name::RepoName;
use crate::registry::error::RegistryError;
use crate::registry::headers::OCI_FILTERS_APPLIED;
use crate::registry::request::{Reply, Request};

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

#[cfg(test)]
mod tests {
    use crate::oci::digest::Digest;
    use crate::registry::testing::TestRegistry;
    use crate::store::fixtures::referrer_manifest;

    #[tokio::test]
    async fn referrers_list_and_filter_by_artifact_type() {
        let registry = TestRegistry::open();
        let (_, subject) = registry.push_image("a", "v1", "x").await;
        let empty = registry.push_blob("a", b"{}").await;
        let sbom = referrer_manifest(subject, (empty, 2), "application/spdx+json");
        let signature = referrer_manifest(subject, (empty, 2), "application/vnd.dev.sigstore");
        for body in [&sbom, &signature] {
            registry
                .push_manifest("a", &Digest::of(body).to_string(), body)
                .await
                .expect(201, None);
        }
        let all = registry.get(&format!("/v2/a/referrers/{subject}")).await;
        all.expect(200, None);
        assert_eq!(
            all.header("content-type"),
            "application/vnd.oci.image.index.v1+json"
        );
        assert_eq!(all.header("oci-filters-applied"), "");
        let index = all.json();
        assert_eq!(index["schemaVersion"], 2);
        let mut types: Vec<String> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["artifactType"].as_str().unwrap().to_owned())
            .collect();
        types.sort();
        assert_eq!(
            types,
            ["application/spdx+json", "application/vnd.dev.sigstore"]
        );

        let filtered = registry
            .get(&format!(
                "/v2/a/referrers/{subject}?artifactType=application/spdx%2Bjson"
            ))
            .await;
        filtered.expect(200, None);
        assert_eq!(filtered.header("oci-filters-applied"), "artifactType");
        let manifests = filtered.json()["manifests"].clone();
        assert_eq!(manifests.as_array().unwrap().len(), 1);
        assert_eq!(manifests[0]["digest"], Digest::of(&sbom).to_string());
        assert_eq!(manifests[0]["size"], sbom.len());

        // No referrers (or no subject at all): an empty index, not a 404.
        let none = registry
            .get(&format!("/v2/a/referrers/{}", Digest::of(b"nothing")))
            .await;
        none.expect(200, None);
        assert_eq!(none.json()["manifests"], serde_json::json!([]));
        registry
            .get("/v2/a/referrers/sha256:xyz")
            .await
            .expect(400, Some("DIGEST_INVALID"));
    }
}
