//! The OCI artifact that keeps a build context in the cache: a manifest whose one layer is
//! the context's tar, written as the exact bytes that are pushed and hashed (pure).
//!
//! # Why a manifest at all
//! The tar is a blob; a blob that no manifest references is garbage to the cache's
//! collector. The receiver therefore tags an OCI 1.1 artifact manifest
//! ([`CONTEXT_ARTIFACT_TYPE`]) at the Build's tag ([`super::protocol::context_tag`]): the
//! tag keeps the tar alive exactly as long as the Build exists.
//!
//! # Why these bytes
//! The manifest is addressed by the digest of its bytes, and several receivers (one per
//! platform of a `Native` build, or a rerun) may tag it for the same tar. The same tar must
//! therefore always give the same bytes, which [`crate::oci::artifact`] writes.

use std::collections::BTreeMap;

use crate::oci::artifact::single_blob_manifest;
use crate::oci::digest::Digest;

/// The `artifactType` of a build context's manifest.
pub const CONTEXT_ARTIFACT_TYPE: &str = "application/vnd.kiln.context.v1";

/// The media type of an uncompressed tar layer: what the context's tar is.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// The manifest of the context whose tar has `digest` and `size`: `schemaVersion` 2, media
/// type [`OCI_MANIFEST`](crate::oci::media::OCI_MANIFEST), artifact type [`CONTEXT_ARTIFACT_TYPE`], the empty config and the
/// tar as its one [`OCI_LAYER_TAR`] layer, as compact JSON without a trailing newline
/// ([`single_blob_manifest`]). The same tar always gives the same bytes, hence the same
/// digest.
pub fn context_manifest(digest: &Digest, size: u64) -> Vec<u8> {
    single_blob_manifest(
        CONTEXT_ARTIFACT_TYPE,
        OCI_LAYER_TAR,
        digest,
        size,
        &BTreeMap::new(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::artifact::{OCI_EMPTY, empty_config_digest};
    use crate::oci::media::{OCI_MANIFEST, is_manifest_type};

    #[test]
    fn the_bytes_are_compact_in_a_fixed_key_order() {
        let tar = Digest::of(b"tar");
        let want = format!(
            concat!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","#,
                r#""artifactType":"application/vnd.kiln.context.v1","#,
                r#""config":{{"mediaType":"application/vnd.oci.empty.v1+json","#,
                r#""digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2}},"#,
                r#""layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":10240}}]}}"#
            ),
            tar
        );
        assert_eq!(
            String::from_utf8(context_manifest(&tar, 10240)).unwrap(),
            want
        );
    }

    #[test]
    fn the_same_tar_gives_the_same_bytes_and_a_pinned_digest() {
        let tar = Digest::of(b"tar");
        let first = context_manifest(&tar, 10240);
        for _ in 0..3 {
            assert_eq!(context_manifest(&tar, 10240), first);
        }
        assert!(!first.ends_with(b"\n"));
        // Pinned: a change here gives every context a new manifest digest, so receivers of
        // different Kiln versions would tag different manifests for the same tar.
        assert_eq!(
            Digest::of(&first).to_string(),
            "sha256:fdedd9d9d147f567e0ca9a662f10df64d29d993b51117851431368b55dd8dbbd"
        );
        assert_ne!(context_manifest(&tar, 10241), first);
        assert_ne!(context_manifest(&Digest::of(b"other"), 10240), first);
    }

    #[test]
    fn the_bytes_parse_as_an_image_manifest_listing_the_tar() {
        let tar = Digest::of(b"tar");
        let value: serde_json::Value = serde_json::from_slice(&context_manifest(&tar, 7)).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": CONTEXT_ARTIFACT_TYPE,
                "config": {
                    "mediaType": OCI_EMPTY,
                    "digest": empty_config_digest().to_string(),
                    "size": 2
                },
                "layers": [{"mediaType": OCI_LAYER_TAR, "digest": tar.to_string(), "size": 7}]
            })
        );
        assert!(is_manifest_type(value["mediaType"].as_str().unwrap()));
    }
}
