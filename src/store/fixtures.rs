//! Manifest bodies for tests and benchmarks: OCI image manifests, indexes and referrers
//! built from digests, deterministic byte for byte (pure).

use crate::oci::digest::Digest;
use crate::oci::media;

/// An OCI image manifest with this config and these layers (each `(digest, size)`).
pub fn image_manifest(config: (Digest, u64), layers: &[(Digest, u64)]) -> Vec<u8> {
    let layers: Vec<String> = layers
        .iter()
        .map(|(digest, size)| {
            format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{digest}","size":{size}}}"#
            )
        })
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{}]}}"#,
        media::OCI_MANIFEST,
        config.0,
        config.1,
        layers.join(",")
    )
    .into_bytes()
}

/// An OCI index over these manifests (each `(digest, size)`).
pub fn index_manifest(manifests: &[(Digest, u64)]) -> Vec<u8> {
    let entries: Vec<String> = manifests
        .iter()
        .map(|(digest, size)| {
            format!(
                r#"{{"mediaType":"{}","digest":"{digest}","size":{size}}}"#,
                media::OCI_MANIFEST
            )
        })
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{}]}}"#,
        media::OCI_INDEX,
        entries.join(",")
    )
    .into_bytes()
}

/// An artifact manifest that refers to `subject` (a signature, an SBOM), with an empty
/// config of `config` and the given artifact type.
pub fn referrer_manifest(subject: Digest, config: (Digest, u64), artifact_type: &str) -> Vec<u8> {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","artifactType":"{artifact_type}","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{}","size":{}}},"layers":[],"subject":{{"mediaType":"{}","digest":"{subject}","size":1}}}}"#,
        media::OCI_MANIFEST,
        config.0,
        config.1,
        media::OCI_MANIFEST,
    )
    .into_bytes()
}
