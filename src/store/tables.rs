//! The metadata schema: redb table definitions and the rows they hold (pure encoding).
//!
//! Keys are digests in their binary form ([`Digest::to_key`]: an algorithm byte, then the
//! hash) and names as strings, so redb's key order is the order of every listing
//! (invariant 6: no listing depends on hash-map order). A repository exists while it has a
//! link; it has no row of its own, so there is no count to leak.
//!
//! The names carry the schema's version: the first schema keyed sha256 digests by their
//! 32 raw bytes, and `migrate.rs` moves a store written by it to these tables.

use std::collections::BTreeMap;

use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use crate::oci::digest::Digest;
use crate::store::error::{Result, StoreError};
use crate::store::manifest::Parsed;

/// digest → (size, created ms, last access ms, last push ms). Every blob, manifests
/// included.
pub const BLOBS: TableDefinition<&[u8], (u64, u64, u64, u64)> = TableDefinition::new("blobs.v2");
/// digest → [`ManifestRow`] as JSON. A manifest is also a blob (its exact bytes).
pub const MANIFESTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("manifests.v2");
/// (repository, tag) → manifest digest.
pub const TAGS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("tags.v2");
/// (repository, digest) → (): the blob or manifest is part of that repository.
pub const LINKS: TableDefinition<(&str, &[u8]), ()> = TableDefinition::new("links.v2");
/// (subject digest, referrer manifest digest) → (): the referrers index.
pub const REFERRERS: TableDefinition<(&[u8], &[u8]), ()> = TableDefinition::new("referrers.v2");
/// lease name → [`LeaseRow`] as JSON.
pub const LEASES: TableDefinition<&str, &[u8]> = TableDefinition::new("leases");
/// upload id → [`UploadRow`] as JSON.
pub const UPLOADS: TableDefinition<&str, &[u8]> = TableDefinition::new("uploads");
/// (Build UID, image, tag) → [`BaseRow`] as JSON: what a build's pull of a base image by
/// tag resolved to. Keyed by the Build first, so one Build's rows are one range.
pub const BASES: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("bases");

/// A blob row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobRow {
    /// Size in bytes.
    pub size: u64,
    /// When it was first committed (ms after the epoch).
    pub created_ms: u64,
    /// When it was last pulled, pushed or committed (ms after the epoch).
    pub accessed_ms: u64,
    /// When a client last pushed it, mounted it or asked whether it is there (HEAD): a
    /// push in progress, which GC's grace window protects (ms after the epoch).
    pub pushed_ms: u64,
}

impl BlobRow {
    /// A row for a blob committed now.
    pub fn new(size: u64, now: u64) -> Self {
        Self {
            size,
            created_ms: now,
            accessed_ms: now,
            pushed_ms: now,
        }
    }

    /// The tuple stored in [`BLOBS`].
    pub fn encode(self) -> (u64, u64, u64, u64) {
        (self.size, self.created_ms, self.accessed_ms, self.pushed_ms)
    }

    /// Reads the tuple stored in [`BLOBS`].
    pub fn decode((size, created_ms, accessed_ms, pushed_ms): (u64, u64, u64, u64)) -> Self {
        Self {
            size,
            created_ms,
            accessed_ms,
            pushed_ms,
        }
    }
}

/// A manifest row: what the store needs without reading the manifest's bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestRow {
    /// The media type it was pushed with.
    pub media_type: String,
    /// Everything it references (sorted).
    pub references: Vec<Digest>,
    /// Its subject, if it is a referrer.
    pub subject: Option<Digest>,
    /// Its artifact type, for the referrers API.
    pub artifact_type: Option<String>,
    /// Its annotations, for the referrers API.
    pub annotations: BTreeMap<String, String>,
    /// A pull-through mirror's manifest: its references are fetched from the upstream on
    /// demand, so absent ones are expected, not dangling. Omitted when false, so rows of
    /// ordinary manifests encode as before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub on_demand: bool,
    /// The references that live at URLs of their own (non-distributable layers): absent
    /// ones are expected. Omitted when empty, like `on_demand`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external: Vec<Digest>,
}

impl ManifestRow {
    /// The row of a parsed manifest, stored with `media_type`; `on_demand` for a mirror's.
    pub fn new(parsed: Parsed, media_type: String, on_demand: bool) -> Self {
        let Parsed {
            references,
            external,
            subject,
            artifact_type,
            annotations,
            media_type: _,
        } = parsed;
        Self {
            media_type,
            references,
            subject,
            artifact_type,
            annotations,
            on_demand,
            external,
        }
    }
}

/// The part of a [`ManifestRow`] that GC reads: what the manifest leads to. Decoding only
/// these fields skips the media type, artifact type and annotations of every manifest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ManifestEdgesRow {
    /// Everything it references (sorted).
    pub references: Vec<Digest>,
    /// Its subject, if it is a referrer.
    pub subject: Option<Digest>,
}

/// A lease row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRow {
    /// When it expires (ms after the epoch).
    pub expires_ms: u64,
    /// What it holds (sorted).
    pub digests: Vec<Digest>,
}

/// An upload session row (the bytes so far live in a temp file and in memory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRow {
    /// The repository it will be linked into.
    pub repo: String,
    /// When it started (ms after the epoch).
    pub started_ms: u64,
}

/// A base image resolution row: the digest a tag resolved to, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseRow {
    /// The manifest or index digest the tag resolved to.
    pub digest: Digest,
    /// When (ms after the epoch).
    pub resolved_ms: u64,
}

/// Encodes a JSON row.
pub fn encode<T: Serialize>(row: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail: no maps with non-string keys, no
    // fallible Serialize impls.
    serde_json::to_vec(row).unwrap_or_default()
}

/// Decodes a JSON row of `table`.
pub fn decode<T: for<'de> Deserialize<'de>>(table: &'static str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|err| StoreError::RowCorrupt {
        table,
        reason: err.to_string(),
    })
}

/// The digest stored as a key or value.
pub fn digest(key: &[u8]) -> Result<Digest> {
    Digest::from_key(key).map_err(|err| StoreError::RowCorrupt {
        table: "a digest key",
        reason: err.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip() {
        let row = ManifestRow {
            media_type: "m".into(),
            references: vec![Digest::of(b"a")],
            subject: Some(Digest::of(b"s")),
            artifact_type: None,
            annotations: BTreeMap::from([("k".into(), "v".into())]),
            on_demand: false,
            external: Vec::new(),
        };
        assert_eq!(
            decode::<ManifestRow>("manifests", &encode(&row)).unwrap(),
            row
        );
        assert_eq!(
            decode::<ManifestEdgesRow>("manifests", &encode(&row)).unwrap(),
            ManifestEdgesRow {
                references: row.references.clone(),
                subject: row.subject,
            }
        );
        // Rows written before `on_demand` existed read as ordinary manifests, and ordinary
        // rows still encode without it.
        assert!(
            !String::from_utf8(encode(&row))
                .unwrap()
                .contains("on_demand")
        );
        let mirrored = ManifestRow {
            on_demand: true,
            ..row.clone()
        };
        assert_eq!(
            decode::<ManifestRow>("manifests", &encode(&mirrored)).unwrap(),
            mirrored
        );
        assert!(matches!(
            decode::<LeaseRow>("leases", b"{"),
            Err(StoreError::RowCorrupt {
                table: "leases",
                ..
            })
        ));
        let blob = BlobRow {
            size: 1,
            created_ms: 2,
            accessed_ms: 3,
            pushed_ms: 4,
        };
        assert_eq!(BlobRow::decode(blob.encode()), blob);
    }
}
