//! The OCI image index of a multi-platform image: one descriptor per platform's manifest,
//! written as the exact bytes that are pushed and hashed (pure).
//!
//! The bytes are the whole contract: an index is addressed by the digest of its bytes, so
//! the same entries must give the same bytes on every run, on every machine. They are
//! therefore written from structs (whose fields serialize in declaration order), compactly
//! (no whitespace), without a trailing newline, with entries in the order given (the order
//! of `spec.platforms`, which is what pull tools show).

use std::collections::BTreeMap;

use super::digest::Digest;
use super::media::OCI_INDEX;
use super::platform::Platform;

/// One platform's manifest, as the index lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// The platform the manifest's image runs on.
    pub platform: Platform,
    /// The digest of the manifest's bytes.
    pub digest: Digest,
    /// The manifest's media type (an OCI image manifest or a Docker schema 2 manifest).
    pub media_type: String,
    /// The manifest's size in bytes.
    pub size: u64,
    /// The entry's annotations (an attestation manifest's reference to its image), sorted;
    /// left out of the bytes when empty.
    pub annotations: BTreeMap<String, String>,
}

/// The index as serialized: field order here is key order in the bytes.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Index<'a> {
    schema_version: u32,
    media_type: &'static str,
    manifests: Vec<Descriptor<'a>>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor<'a> {
    media_type: &'a str,
    digest: &'a Digest,
    size: u64,
    platform: PlatformJson<'a>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: &'a BTreeMap<String, String>,
}

/// The image spec's `platform` object; `variant` is left out, not `null`, when absent.
#[derive(serde::Serialize)]
struct PlatformJson<'a> {
    architecture: &'a str,
    os: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'a str>,
}

/// The OCI image index (`schemaVersion` 2, media type [`OCI_INDEX`]) listing `entries` in
/// the order given, as compact JSON without a trailing newline. The same entries always
/// give the same bytes, hence the same digest.
pub fn image_index(entries: &[IndexEntry]) -> Vec<u8> {
    let index = Index {
        schema_version: 2,
        media_type: OCI_INDEX,
        manifests: entries
            .iter()
            .map(|entry| Descriptor {
                media_type: &entry.media_type,
                digest: &entry.digest,
                size: entry.size,
                platform: PlatformJson {
                    architecture: &entry.platform.architecture,
                    os: &entry.platform.os,
                    variant: entry.platform.variant.as_deref(),
                },
                annotations: &entry.annotations,
            })
            .collect(),
    };
    // Serializing plain structs of strings and integers into a Vec cannot fail; should it
    // ever, an empty body would be refused by any registry rather than push a wrong index.
    serde_json::to_vec(&index).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::super::media::{DOCKER_MANIFEST, OCI_MANIFEST, is_manifest_type};
    use super::*;

    fn entry(platform: &str, seed: &[u8], media_type: &str, size: u64) -> IndexEntry {
        IndexEntry {
            platform: Platform::parse(platform).unwrap(),
            digest: Digest::of(seed),
            media_type: media_type.to_owned(),
            size,
            annotations: BTreeMap::new(),
        }
    }

    fn two() -> Vec<IndexEntry> {
        vec![
            entry("linux/amd64", b"amd64", OCI_MANIFEST, 501),
            entry("linux/arm64/v8", b"arm64", DOCKER_MANIFEST, 502),
        ]
    }

    #[test]
    fn the_bytes_are_compact_in_a_fixed_key_order() {
        let amd64 = Digest::of(b"amd64");
        let arm64 = Digest::of(b"arm64");
        let want = format!(
            concat!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":["#,
                r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":501,"platform":{{"architecture":"amd64","os":"linux"}}}},"#,
                r#"{{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":"{}","size":502,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}}"#,
                "]}}"
            ),
            amd64, arm64
        );
        assert_eq!(String::from_utf8(image_index(&two())).unwrap(), want);
    }

    #[test]
    fn the_same_entries_give_the_same_bytes_and_a_pinned_digest() {
        let first = image_index(&two());
        for _ in 0..3 {
            assert_eq!(image_index(&two()), first);
        }
        assert!(!first.ends_with(b"\n"));
        // Pinned: a change here changes the digest of every index Kiln has pushed, so that
        // re-running a finished multi-platform Build would move its tag.
        assert_eq!(
            Digest::of(&first).to_string(),
            "sha256:c2e120b086ed5d7c4ef211e905a6f05ec68082fb5cc086d0e664e66699408de8"
        );
    }

    #[test]
    fn entries_keep_their_order() {
        let mut reversed = two();
        reversed.reverse();
        let value: serde_json::Value = serde_json::from_slice(&image_index(&reversed)).unwrap();
        let architectures: Vec<&str> = value["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["platform"]["architecture"].as_str().unwrap())
            .collect();
        assert_eq!(architectures, ["arm64", "amd64"]);
        assert_ne!(image_index(&reversed), image_index(&two()));
    }

    #[test]
    fn variant_is_present_only_when_given() {
        let value: serde_json::Value = serde_json::from_slice(&image_index(&two())).unwrap();
        let amd64 = value["manifests"][0]["platform"].as_object().unwrap();
        let arm64 = value["manifests"][1]["platform"].as_object().unwrap();
        assert!(!amd64.contains_key("variant"));
        assert_eq!(arm64["variant"], "v8");
    }

    #[test]
    fn the_bytes_parse_back_to_the_index_of_the_entries() {
        let value: serde_json::Value = serde_json::from_slice(&image_index(&two())).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [
                    {
                        "mediaType": OCI_MANIFEST,
                        "digest": Digest::of(b"amd64").to_string(),
                        "size": 501,
                        "platform": {"architecture": "amd64", "os": "linux"}
                    },
                    {
                        "mediaType": DOCKER_MANIFEST,
                        "digest": Digest::of(b"arm64").to_string(),
                        "size": 502,
                        "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}
                    }
                ]
            })
        );
        // The index's own media type is one a registry serves as a manifest.
        assert!(is_manifest_type(value["mediaType"].as_str().unwrap()));
    }

    #[test]
    fn an_empty_list_is_an_empty_index() {
        assert_eq!(
            image_index(&[]),
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#
        );
    }
}
