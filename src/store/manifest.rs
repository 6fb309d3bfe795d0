//! What a manifest or index references: parsed from the exact bytes received (pure).
//!
//! Accepted shapes are OCI image manifests and indexes, Docker schema 2 manifests and
//! manifest lists, OCI artifact manifests (`blobs`), and BuildKit's cache manifests in both
//! forms (an index whose entries are layer blobs and a cache-config blob, or an image
//! manifest with the cache config as its config). Every descriptor is a reference: the
//! registry checks presence per descriptor, whatever its media type, which is what makes
//! BuildKit's index form (entries that are blobs, not manifests) work.
//!
//! The one exception is a non-distributable layer (the image spec's
//! `…layer.nondistributable.v1.tar[+gzip|+zstd]`, Docker's foreign layer) with `urls`:
//! clients fetch it from those URLs and never push it, so it is recorded as
//! [`Parsed::external`], never required present and never fetched by Kiln.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::oci::digest::Digest;
use crate::oci::media;
use crate::store::error::{Result, StoreError};

/// The references of one manifest, as recorded in the metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parsed {
    /// Everything the manifest references: config, layers, index entries, artifact
    /// blobs. Sorted and without duplicates. All must be present but [`Parsed::external`].
    pub references: Vec<Digest>,
    /// The references that live at URLs of their own (non-distributable layers with
    /// `urls`): part of `references`, but not pushed, so not required present. Sorted.
    pub external: Vec<Digest>,
    /// The manifest this one refers to (the referrers API), if any. Not required present.
    pub subject: Option<Digest>,
    /// `artifactType`, or the config's media type when that is absent (as the referrers
    /// API defines it).
    pub artifact_type: Option<String>,
    /// The manifest's own annotations, for referrer listings.
    pub annotations: BTreeMap<String, String>,
    /// The `mediaType` field of the body, if any.
    pub media_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Body {
    schema_version: Option<u32>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
    #[serde(default)]
    blobs: Vec<Descriptor>,
    subject: Option<Descriptor>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: Option<String>,
    digest: String,
    #[serde(default)]
    urls: Vec<String>,
}

impl Descriptor {
    /// A layer whose content clients fetch from its URLs.
    fn is_external(&self) -> bool {
        !self.urls.is_empty()
            && self
                .media_type
                .as_deref()
                .is_some_and(|t| media::NON_DISTRIBUTABLE_LAYERS.contains(&t))
    }
}

/// Parses a manifest body and lists what it references.
pub fn parse(bytes: &[u8]) -> Result<Parsed> {
    let invalid = |reason: String| StoreError::ManifestInvalid { reason };
    let body: Body = serde_json::from_slice(bytes)
        .map_err(|err| invalid(format!("not a JSON manifest: {err}")))?;
    match body.schema_version {
        Some(2) => {}
        Some(1) => {
            return Err(invalid(
                "Docker schema 1 manifests are not supported".into(),
            ));
        }
        Some(other) => return Err(invalid(format!("schemaVersion {other} is not supported"))),
        None => return Err(invalid("schemaVersion is missing".into())),
    }
    let digest_of = |field: &str, descriptor: &Descriptor| -> Result<Digest> {
        descriptor
            .digest
            .parse()
            .map_err(|err| invalid(format!("{field}: {err}")))
    };
    let mut references = Vec::new();
    let mut external = Vec::new();
    if let Some(config) = &body.config {
        references.push(digest_of("config", config)?);
    }
    for (field, list) in [
        ("layers", &body.layers),
        ("manifests", &body.manifests),
        ("blobs", &body.blobs),
    ] {
        for descriptor in list {
            let digest = digest_of(field, descriptor)?;
            if field == "layers" && descriptor.is_external() {
                external.push(digest);
            }
            references.push(digest);
        }
    }
    references.sort();
    references.dedup();
    external.sort();
    external.dedup();
    let subject = body
        .subject
        .as_ref()
        .map(|subject| digest_of("subject", subject))
        .transpose()?;
    let artifact_type = body
        .artifact_type
        .clone()
        .or_else(|| body.config.as_ref().and_then(|c| c.media_type.clone()));
    Ok(Parsed {
        references,
        external,
        subject,
        artifact_type,
        annotations: body.annotations,
        media_type: body.media_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::of(&[n])
    }

    #[test]
    fn image_manifest_references_config_and_layers_and_subject() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":1}},
               "layers":[{{"digest":"{}","size":1}},{{"digest":"{}","size":1}}],
               "subject":{{"digest":"{}","size":1}},"annotations":{{"a":"b"}}}}"#,
            media::OCI_MANIFEST,
            d(1),
            d(3),
            d(2),
            d(9)
        );
        let parsed = parse(body.as_bytes()).unwrap();
        let mut want = vec![d(1), d(2), d(3)];
        want.sort();
        assert_eq!(parsed.references, want);
        assert_eq!(parsed.subject, Some(d(9)));
        assert_eq!(
            parsed.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
        assert_eq!(parsed.annotations.get("a").map(String::as_str), Some("b"));
    }

    #[test]
    fn buildkit_cache_index_entries_are_references_whatever_their_type() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[
                {{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":1}},
                {{"mediaType":"{}","digest":"{}","size":1}}]}}"#,
            media::OCI_INDEX,
            d(1),
            media::BUILDKIT_CACHE_CONFIG,
            d(2)
        );
        let parsed = parse(body.as_bytes()).unwrap();
        assert_eq!(parsed.references.len(), 2);
        assert_eq!(parsed.subject, None);
    }

    #[test]
    fn rejects_what_is_not_a_supported_manifest() {
        for body in [
            "not json",
            r#"{"mediaType":"x"}"#,
            r#"{"schemaVersion":1,"fsLayers":[]}"#,
            r#"{"schemaVersion":2,"layers":[{"digest":"sha512:abcd"}]}"#,
            r#"{"schemaVersion":2,"layers":[{"size":3}]}"#,
        ] {
            assert!(
                matches!(
                    parse(body.as_bytes()),
                    Err(StoreError::ManifestInvalid { .. })
                ),
                "{body}"
            );
        }
    }
}
