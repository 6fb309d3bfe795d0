//! The values the store's API takes and returns (pure).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::digest::Digest;
use crate::store::error::StoreError;

/// A blob as the store has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BlobInfo {
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
}

/// A manifest as the store has it (its bytes are the blob of the same digest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManifestInfo {
    /// The digest of its exact bytes.
    pub digest: Digest,
    /// The media type it was pushed with.
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
    /// Everything it references (sorted).
    pub references: Vec<Digest>,
    /// Its subject, if it is a referrer.
    pub subject: Option<Digest>,
    /// Its artifact type (or its config's media type), for the referrers API.
    pub artifact_type: Option<String>,
    /// Its annotations.
    pub annotations: BTreeMap<String, String>,
    /// Stored by the pull-through mirror: its references are fetched from the upstream on
    /// demand and may be absent (see [`crate::store::Store::put_mirrored_manifest`]).
    pub on_demand: bool,
    /// The references that live at URLs of their own (non-distributable layers with
    /// `urls`): never pushed, so never required present.
    pub external: Vec<Digest>,
}

impl ManifestInfo {
    /// Whether `reference` may be absent from the store without anything being wrong.
    pub fn may_lack(&self, reference: &Digest) -> bool {
        self.on_demand || self.external.contains(reference)
    }
}

/// How a manifest is named in a request: by tag or by digest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reference {
    /// A tag (`[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`).
    Tag(String),
    /// A digest.
    Digest(Digest),
}

impl Reference {
    /// A tag reference, checked against the OCI tag grammar.
    pub fn tag(tag: &str) -> Result<Self, StoreError> {
        validate_tag(tag)?;
        Ok(Self::Tag(tag.to_owned()))
    }
}

impl FromStr for Reference {
    type Err = StoreError;

    /// `sha256:…` is a digest (and must be a valid one); anything else must be a valid tag.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.contains(':') {
            text.parse()
                .map(Self::Digest)
                .map_err(|_| StoreError::NameInvalid {
                    what: "digest",
                    value: text.to_owned(),
                    reason: "expected sha256:<64 lowercase hex>",
                })
        } else {
            Self::tag(text)
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tag(tag) => f.write_str(tag),
            Self::Digest(digest) => digest.fmt(f),
        }
    }
}

/// Checks a tag against the OCI grammar `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn validate_tag(tag: &str) -> Result<(), StoreError> {
    let invalid = |reason| StoreError::NameInvalid {
        what: "tag",
        value: tag.to_owned(),
        reason,
    };
    let mut chars = tag.chars();
    let Some(first) = chars.next() else {
        return Err(invalid("empty"));
    };
    if tag.len() > 128 {
        return Err(invalid("longer than 128 characters"));
    }
    if !(first.is_ascii_alphanumeric() || first == '_') {
        return Err(invalid("must start with a letter, digit or underscore"));
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(invalid(
            "only letters, digits, '_', '.' and '-' are allowed",
        ));
    }
    Ok(())
}

/// Checks what the store itself needs of a repository name: non-empty, at most 255
/// bytes, no control characters. The registry applies the full OCI grammar before this.
pub fn validate_repo(repo: &str) -> Result<(), StoreError> {
    let invalid = |reason| StoreError::NameInvalid {
        what: "repository",
        value: repo.to_owned(),
        reason,
    };
    if repo.is_empty() {
        return Err(invalid("empty"));
    }
    if repo.len() > 255 {
        return Err(invalid("longer than 255 bytes"));
    }
    if repo.chars().any(char::is_control) {
        return Err(invalid("contains control characters"));
    }
    Ok(())
}

/// What a lease holds: a digest, or whatever a tag points to when the lease is taken.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum LeaseTarget {
    /// A blob or manifest, which must be present.
    Digest(Digest),
    /// The manifest a tag points to now; a tag that does not exist yet holds nothing.
    Tag {
        /// The repository.
        repo: String,
        /// The tag.
        tag: String,
    },
}

/// A lease: a name holding digests (and everything reachable from them) until it expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    /// Its name (a build attempt, for example).
    pub name: String,
    /// The digests it holds (sorted).
    pub digests: Vec<Digest>,
    /// When it expires (ms after the epoch).
    pub expires_ms: u64,
}

/// A tag row.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct TagEntry {
    /// The repository.
    pub repo: String,
    /// The tag.
    pub tag: String,
    /// The manifest it points to.
    pub digest: Digest,
}

/// A link row: a blob or manifest that is part of a repository.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct LinkEntry {
    /// The repository.
    pub repo: String,
    /// The digest.
    pub digest: Digest,
}

/// A blob row as listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BlobEntry {
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// When it was first committed (ms after the epoch).
    pub created_ms: u64,
    /// When it was last used (ms after the epoch).
    pub accessed_ms: u64,
    /// When a client last pushed, mounted or checked it (ms after the epoch).
    pub pushed_ms: u64,
}

/// A referrer of a subject, for the referrers API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Referrer {
    /// The referrer manifest's digest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its size.
    pub size: u64,
    /// Its artifact type.
    pub artifact_type: Option<String>,
    /// Its annotations.
    pub annotations: BTreeMap<String, String>,
}

/// An upload in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UploadStatus {
    /// Its id (what the registry puts in the `Location` URL).
    pub id: String,
    /// The repository it will be linked into.
    pub repo: String,
    /// Bytes received so far.
    pub size: u64,
    /// When it started (ms after the epoch).
    pub started_ms: u64,
}

/// What deleting a repository removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct RepositoryDeleted {
    /// Tags removed.
    pub tags: u64,
    /// Links removed.
    pub links: u64,
    /// Of those links, how many were manifests.
    pub manifests: u64,
}

/// Every row of the store in sorted order: what the contract and model tests compare, and
/// what the determinism test prints.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Listing {
    /// Blob rows by digest.
    pub blobs: Vec<BlobEntry>,
    /// Manifest rows by digest.
    pub manifests: Vec<ManifestInfo>,
    /// Tags by (repository, tag).
    pub tags: Vec<TagEntry>,
    /// Links by (repository, digest).
    pub links: Vec<LinkEntry>,
    /// The referrers index as (subject, referrer), sorted.
    pub referrers: Vec<(Digest, Digest)>,
    /// Leases by name.
    pub leases: Vec<Lease>,
}

impl Listing {
    /// Whether the store holds nothing at all.
    pub fn is_empty(&self) -> bool {
        let Self {
            blobs,
            manifests,
            tags,
            links,
            referrers,
            leases,
        } = self;
        blobs.is_empty()
            && manifests.is_empty()
            && tags.is_empty()
            && links.is_empty()
            && referrers.is_empty()
            && leases.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_as_tag_or_digest() {
        let digest = Digest::of(b"");
        assert_eq!(
            digest.to_string().parse::<Reference>().unwrap(),
            Reference::Digest(digest)
        );
        assert_eq!(
            "v1.0_rc-1".parse::<Reference>().unwrap(),
            Reference::Tag("v1.0_rc-1".into())
        );
        for bad in ["", ".x", "-x", "a/b", "sha256:zz", &"a".repeat(129)] {
            assert!(bad.parse::<Reference>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn repository_names_need_only_be_sane_here() {
        assert!(validate_repo("team/app").is_ok());
        assert!(validate_repo("").is_err());
        assert!(validate_repo("a\nb").is_err());
        assert!(validate_repo(&"a".repeat(256)).is_err());
    }
}
