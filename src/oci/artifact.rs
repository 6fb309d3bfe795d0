//! OCI 1.1 artifacts of one blob: the empty config and a manifest whose one layer is the
//! blob, written as the exact bytes that are pushed and hashed (pure).
//!
//! Kiln keeps two kinds of its own in its cache this way: uploaded build contexts and
//! stored build logs. Their manifests are addressed by the digest of their bytes, and the
//! same content must always give the same manifest (several writers may tag it), so the
//! bytes are written from structs (whose fields serialize in declaration order) and a
//! sorted map, compactly, without a trailing newline, and with nothing that varies by
//! itself, such as a creation time. The config is the image spec's empty descriptor, as
//! the spec recommends for artifacts without one.

use std::collections::BTreeMap;

use crate::oci::digest::Digest;
use crate::oci::media::OCI_MANIFEST;

/// The media type of the image spec's empty descriptor (`{}`), the config of an artifact
/// that has none.
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";

/// The content of the empty descriptor's blob: two bytes, `{}`.
pub const EMPTY_CONFIG: &[u8] = b"{}";

/// The digest of [`EMPTY_CONFIG`] (`sha256:44136f…`).
pub fn empty_config_digest() -> Digest {
    Digest::of(EMPTY_CONFIG)
}

/// The manifest as serialized: field order here is key order in the bytes.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Manifest<'a> {
    schema_version: u32,
    media_type: &'static str,
    artifact_type: &'a str,
    config: Descriptor<'a>,
    layers: [Descriptor<'a>; 1],
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: &'a BTreeMap<String, String>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor<'a> {
    media_type: &'a str,
    digest: &'a Digest,
    size: u64,
}

/// The manifest of an artifact of type `artifact_type` whose one layer is the blob
/// `digest` of `size` bytes and media type `layer_type`: `schemaVersion` 2, media type
/// [`OCI_MANIFEST`], the empty config, and `annotations` (left out when empty), as compact
/// JSON without a trailing newline. The same input always gives the same bytes.
pub fn single_blob_manifest(
    artifact_type: &str,
    layer_type: &str,
    digest: &Digest,
    size: u64,
    annotations: &BTreeMap<String, String>,
) -> Vec<u8> {
    let empty = empty_config_digest();
    let manifest = Manifest {
        schema_version: 2,
        media_type: OCI_MANIFEST,
        artifact_type,
        config: Descriptor {
            media_type: OCI_EMPTY,
            digest: &empty,
            size: EMPTY_CONFIG.len() as u64,
        },
        layers: [Descriptor {
            media_type: layer_type,
            digest,
            size,
        }],
        annotations,
    };
    // Serializing structs of strings, integers and a string map into a Vec cannot fail;
    // should it ever, an empty body would be refused by the registry rather than tag a
    // wrong manifest.
    serde_json::to_vec(&manifest).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_empty_config_is_the_specs_empty_descriptor() {
        assert_eq!(
            empty_config_digest().to_string(),
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }

    #[test]
    fn annotations_follow_the_layers_in_key_order_and_are_left_out_when_empty() {
        let blob = Digest::of(b"blob");
        let none = single_blob_manifest("a/b", "text/plain", &blob, 4, &BTreeMap::new());
        assert!(
            !String::from_utf8(none.clone())
                .unwrap()
                .contains("annotations")
        );
        let annotations = BTreeMap::from([
            ("z".to_owned(), "1".to_owned()),
            ("a".to_owned(), "2".to_owned()),
        ]);
        let some = single_blob_manifest("a/b", "text/plain", &blob, 4, &annotations);
        let text = String::from_utf8(some).unwrap();
        assert!(
            text.ends_with(r#"}],"annotations":{"a":"2","z":"1"}}"#),
            "{text}"
        );
        assert!(text.starts_with(r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"a/b","config":"#));
    }
}
