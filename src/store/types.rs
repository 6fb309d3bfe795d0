//! The values the store's API takes and returns (pure).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::oci::digest::Digest;
use crate::oci::name::{RepoName, Tag};
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

/// Checks a repository name against the OCI grammar ([`RepoName`]): the store keeps no
/// second grammar of its own.
pub fn validate_repo(repo: &str) -> Result<(), StoreError> {
    RepoName::parse(repo)
        .map(drop)
        .map_err(|err| StoreError::NameInvalid {
            what: "repository",
            value: repo.to_owned(),
            reason: err.to_string(),
        })
}

/// What a lease holds: a digest, or whatever a tag points to when the lease is taken. The
/// admin API's wire form: `{"digest":"sha256:…"}` or
/// `{"repository":"team-a/cache","tag":"buildkit"}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LeaseTarget {
    /// A blob or manifest, which must be present.
    Digest {
        /// The digest.
        digest: Digest,
    },
    /// The manifest a tag points to now; a tag that does not exist yet holds nothing.
    Tag {
        /// The repository.
        repository: RepoName,
        /// The tag.
        tag: Tag,
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
pub struct RemovedFromRepository {
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

/// What start-up recovery found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RecoveryReport {
    /// Temp files of dead uploads and ingests, removed.
    pub temp_files_removed: u64,
    /// Upload rows of sessions lost with the previous process, removed.
    pub uploads_removed: u64,
    /// Blob files without rows that hashed correctly and were adopted.
    pub adopted: Vec<Digest>,
    /// Files without rows that did not hash to their name, moved to quarantine.
    pub quarantined: Vec<String>,
    /// Rows whose file was missing, dropped with everything that depended on them.
    pub dropped: Vec<Digest>,
}

impl RecoveryReport {
    /// Whether there was nothing to recover.
    pub fn is_clean(&self) -> bool {
        self.temp_files_removed == 0
            && self.uploads_removed == 0
            && self.adopted.is_empty()
            && self.quarantined.is_empty()
            && self.dropped.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names_follow_the_one_grammar() {
        assert!(validate_repo("team/app").is_ok());
        for bad in ["", "a\nb", "Team/app", "a//b", &"a".repeat(256)] {
            assert!(validate_repo(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lease_targets_are_the_admin_api_wire_form() {
        let digest = Digest::of(b"");
        let targets = [
            LeaseTarget::Digest { digest },
            LeaseTarget::Tag {
                repository: RepoName::parse("team-a/cache").unwrap(),
                tag: Tag::parse("buildkit").unwrap(),
            },
        ];
        let json = serde_json::to_value(&targets).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"digest": digest.to_string()},
                {"repository": "team-a/cache", "tag": "buildkit"},
            ])
        );
        assert_eq!(
            serde_json::from_value::<Vec<LeaseTarget>>(json).unwrap(),
            targets
        );
    }
}
