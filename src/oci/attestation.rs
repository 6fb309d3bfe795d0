//! BuildKit's attested images: the image index BuildKit pushes for one platform when it
//! adds attestations (provenance, SBOM), read back into the image's manifest and the
//! attestation manifests that describe it (pure).
//!
//! With attestations on, BuildKit never pushes a bare image manifest: it pushes an index
//! whose entries are the image's manifest (with its platform) and one attestation
//! manifest per attested image, with platform `unknown/unknown` and two annotations,
//! `vnd.docker.reference.type: attestation-manifest` and `vnd.docker.reference.digest:
//! <the image manifest's digest>`. Registries and pull tools skip the unknown platform;
//! `docker buildx imagetools inspect` and policy tools read the attestations through the
//! annotation. A multi-platform index keeps both kinds, images first, so the same
//! convention holds when Kiln merges each platform's index into one.

use std::collections::BTreeMap;

use super::index::IndexEntry;
use super::media::{DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST};
use super::platform::Platform;

/// The annotation that marks an index entry as an attestation manifest.
pub const REFERENCE_TYPE: &str = "vnd.docker.reference.type";
/// The value of [`REFERENCE_TYPE`] on an attestation manifest.
pub const ATTESTATION_MANIFEST: &str = "attestation-manifest";
/// The annotation naming the image manifest an attestation manifest describes.
pub const REFERENCE_DIGEST: &str = "vnd.docker.reference.digest";

/// Whether `entry` is an attestation manifest rather than an image.
pub fn is_attestation(entry: &IndexEntry) -> bool {
    entry.annotations.get(REFERENCE_TYPE).map(String::as_str) == Some(ATTESTATION_MANIFEST)
}

/// One platform's attested image: its manifest and the attestations about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attested {
    /// The image's manifest.
    pub image: IndexEntry,
    /// The attestation manifests naming [`Self::image`], in the index's order.
    pub attestations: Vec<IndexEntry>,
}

/// Why an index is not one platform's attested image.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AttestedProblem {
    /// Not a JSON image index.
    #[error("it is not an image index: {0}")]
    Unreadable(String),
    /// It lists no image, or more than one.
    #[error(
        "it lists {0} images, not one: each platform's build must push a single-platform image (with its attestations)"
    )]
    ImageCount(usize),
    /// An attestation names another manifest than the index's image.
    #[error("attestation {attestation} describes {described}, which is not the index's image")]
    Dangling {
        /// The attestation manifest's digest.
        attestation: String,
        /// The digest it names.
        described: String,
    },
    /// An entry is not a manifest (an index inside the index, or an unknown type).
    #[error("entry {digest} has media type {media_type:?}, not an image manifest")]
    NotAManifest {
        /// The entry's digest.
        digest: String,
        /// Its media type.
        media_type: String,
    },
}

#[derive(serde::Deserialize)]
struct IndexJson {
    #[serde(default)]
    manifests: Vec<EntryJson>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct EntryJson {
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    platform: Option<PlatformJson>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(serde::Deserialize)]
struct PlatformJson {
    os: String,
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

/// Whether `media_type` names an index or a manifest list.
pub fn is_index_type(media_type: &str) -> bool {
    matches!(media_type, OCI_INDEX | DOCKER_MANIFEST_LIST)
}

/// Reads index `bytes` as one platform's attested image: exactly one image manifest, and
/// attestation manifests that each name it. Anything else is refused: Kiln merges what
/// its own builds push, and a second image or an attestation about something else would
/// put an image in the merged index under a platform nobody checked.
pub fn split(bytes: &[u8]) -> Result<Attested, AttestedProblem> {
    let index: IndexJson = serde_json::from_slice(bytes)
        .map_err(|err| AttestedProblem::Unreadable(err.to_string()))?;
    let mut entries = Vec::with_capacity(index.manifests.len());
    for entry in index.manifests {
        if !matches!(entry.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST) {
            return Err(AttestedProblem::NotAManifest {
                digest: entry.digest,
                media_type: entry.media_type,
            });
        }
        let digest = entry.digest.parse().map_err(|err| {
            AttestedProblem::Unreadable(format!("digest {:?}: {err}", entry.digest))
        })?;
        let platform = match entry.platform {
            Some(p) => Platform {
                os: p.os,
                architecture: p.architecture,
                variant: p.variant.filter(|v| !v.is_empty()),
            },
            None => unknown_platform(),
        };
        entries.push(IndexEntry {
            media_type: entry.media_type,
            digest,
            size: entry.size,
            platform,
            annotations: entry.annotations,
        });
    }
    let (attestations, mut images): (Vec<IndexEntry>, Vec<IndexEntry>) =
        entries.into_iter().partition(is_attestation);
    if images.len() != 1 {
        return Err(AttestedProblem::ImageCount(images.len()));
    }
    let image = images.remove(0);
    let wanted = image.digest.to_string();
    if let Some(dangling) = attestations
        .iter()
        .find(|a| a.annotations.get(REFERENCE_DIGEST) != Some(&wanted))
    {
        return Err(AttestedProblem::Dangling {
            attestation: dangling.digest.to_string(),
            described: dangling
                .annotations
                .get(REFERENCE_DIGEST)
                .cloned()
                .unwrap_or_else(|| "nothing".to_owned()),
        });
    }
    Ok(Attested {
        image,
        attestations,
    })
}

/// `unknown/unknown`: the platform of an attestation manifest.
pub fn unknown_platform() -> Platform {
    Platform {
        os: "unknown".to_owned(),
        architecture: "unknown".to_owned(),
        variant: None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::digest::Digest;
    use super::*;

    fn image_entry(digest: &Digest) -> serde_json::Value {
        serde_json::json!({
            "mediaType": OCI_MANIFEST,
            "digest": digest.to_string(),
            "size": 480,
            "platform": {"architecture": "arm64", "os": "linux"}
        })
    }

    fn attestation_entry(digest: &Digest, describes: &Digest) -> serde_json::Value {
        serde_json::json!({
            "mediaType": OCI_MANIFEST,
            "digest": digest.to_string(),
            "size": 566,
            "annotations": {
                REFERENCE_DIGEST: describes.to_string(),
                REFERENCE_TYPE: ATTESTATION_MANIFEST
            },
            "platform": {"architecture": "unknown", "os": "unknown"}
        })
    }

    fn index(entries: Vec<serde_json::Value>) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": entries
        }))
        .unwrap()
    }

    #[test]
    fn buildkits_attested_index_splits_into_its_image_and_attestation() {
        let image = Digest::of(b"image");
        let provenance = Digest::of(b"provenance");
        let attested = split(&index(vec![
            image_entry(&image),
            attestation_entry(&provenance, &image),
        ]))
        .unwrap();
        assert_eq!(attested.image.digest, image);
        assert_eq!(attested.image.platform.to_string(), "linux/arm64");
        assert!(!is_attestation(&attested.image));
        assert_eq!(attested.attestations.len(), 1);
        let attestation = &attested.attestations[0];
        assert_eq!(attestation.digest, provenance);
        assert_eq!(attestation.platform, unknown_platform());
        assert_eq!(attestation.size, 566);
        assert_eq!(attestation.annotations[REFERENCE_DIGEST], image.to_string());
    }

    #[test]
    fn an_index_of_two_images_or_none_is_refused() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        assert_eq!(
            split(&index(vec![image_entry(&a), image_entry(&b)])),
            Err(AttestedProblem::ImageCount(2))
        );
        assert_eq!(
            split(&index(vec![attestation_entry(&b, &a)])),
            Err(AttestedProblem::ImageCount(0))
        );
    }

    #[test]
    fn an_attestation_about_another_image_is_refused() {
        let image = Digest::of(b"image");
        let other = Digest::of(b"other");
        let attestation = Digest::of(b"attestation");
        assert_eq!(
            split(&index(vec![
                image_entry(&image),
                attestation_entry(&attestation, &other)
            ])),
            Err(AttestedProblem::Dangling {
                attestation: attestation.to_string(),
                described: other.to_string(),
            })
        );
    }

    #[test]
    fn an_index_inside_the_index_is_refused() {
        let inner = Digest::of(b"inner");
        let mut entry = image_entry(&inner);
        entry["mediaType"] = OCI_INDEX.into();
        assert!(matches!(
            split(&index(vec![entry])),
            Err(AttestedProblem::NotAManifest { .. })
        ));
        assert!(is_index_type(OCI_INDEX) && is_index_type(DOCKER_MANIFEST_LIST));
        assert!(!is_index_type(OCI_MANIFEST));
    }
}
