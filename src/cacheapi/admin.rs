//! The admin API's wire contract: its routes and JSON bodies (pure).
//!
//! The admin API lives under `/admin/v1/` on the cache service and needs the admin token
//! (`Authorization: Bearer <admin token>`, or as the Basic password). Errors use the
//! registry's body, `{"errors":[{"code","message","detail"}]}` ([`super::ErrorBody`]), with
//! the OCI codes: `UNAUTHORIZED` (401) without the admin token, `DENIED` (403) with a build
//! token, `NAME_INVALID`/`MANIFEST_INVALID` (400) for bad names and bodies,
//! `NAME_UNKNOWN`/`MANIFEST_UNKNOWN` (404), `UNAVAILABLE` (503) when a mirror's upstream
//! cannot answer, `UNKNOWN` (500).
//!
//! | method | path | request body | success |
//! | --- | --- | --- | --- |
//! | `GET` | `/admin/v1/du` | — | `200` [`DuReport`] |
//! | `POST` | `/admin/v1/prune` | [`PruneRequest`] | `200` [`PruneReport`] |
//! | `POST` | `/admin/v1/verify` | [`VerifyRequest`] | `200` [`VerifyReport`] |
//! | `PUT` | `/admin/v1/leases/<lease>` | [`LeaseRequest`] | `200` [`LeaseResponse`] |
//! | `DELETE` | `/admin/v1/leases/<lease>` | — | `200` [`LeaseReleased`] |
//! | `DELETE` | `/admin/v1/repositories/<name>/_tags/<tag>` | — | `200` [`TagDeleted`]; `404 MANIFEST_UNKNOWN` |
//! | `DELETE` | `/admin/v1/repositories/<name>` | — | `200` [`RepositoryDeleted`]; `404 NAME_UNKNOWN` |
//! | `PUT` | `/admin/v1/logs/<name>/_tags/<tag>` | the log (`text/plain`), header `kiln-annotations` | `200` [`LogStored`] |
//! | `GET` | `/admin/v1/logs/<name>/_tags/<tag>` | — | `200` the log (`text/plain; charset=utf-8`), header `kiln-annotations`; `404 MANIFEST_UNKNOWN` |
//! | `GET` | `/admin/v1/builds/<uid>/bases` | — | `200` [`BaseImages`] (empty when none) |
//! | `DELETE` | `/admin/v1/builds/<uid>/bases` | — | `200` [`BasesForgotten`] |
//! | `POST` | `/admin/v1/mirror/resolve` | [`ResolveRequest`] | `200` [`Resolved`]; `404 NAME_UNKNOWN` (not a mirror), `404 MANIFEST_UNKNOWN`, `503 UNAVAILABLE` |
//!
//! * **du**: disk usage of the store, per repository, in the spirit of `buildctl du`.
//! * **prune**: removes cache entries by one policy: everything unprotected (`all`), the
//!   least recently used until the store holds at most `bytes` (`keep-storage`), or what
//!   was not used for `seconds` (`keep-duration`). Leases, uploads in progress and stored
//!   build logs (the tags of a `<namespace>/kiln_logs` repository,
//!   [`crate::store::gc::is_logs_repository`]) always protect what they hold, and count
//!   toward `keep-storage` first. With `dry_run` nothing is removed and the report says
//!   what would be. To combine a size and an age limit, call it twice.
//! * **verify**: rehashes every blob, quarantines those that do not match their digest,
//!   checks that every manifest's references are present; with `repair` it also drops
//!   manifests whose content is gone, so the store is consistent again.
//! * **leases**: `PUT` creates the named lease or replaces it: it holds exactly the given
//!   targets until `ttl_seconds` from now (so repeating the `PUT` extends it). Tag targets
//!   are resolved to digests when the lease is taken: the lease holds what the tag pointed
//!   at then, and a later push to the tag does not change it. `DELETE` releases it and is
//!   idempotent.
//! * **repositories**: deleting a tag removes the tag only (its manifest stays until GC
//!   finds it unreferenced); deleting a repository removes all its tags and manifests, as
//!   when a namespace is cleaned up. The `_tags` segment cannot be part of a repository
//!   name, so every path has one reading.
//! * **logs**: a build attempt's log, stored in one call as an OCI artifact
//!   ([`super::log`]): `PUT` stores the body (at most [`super::log::MAX_LOG_BYTES`], else
//!   `413 SIZE_INVALID`) as the one layer of a [`super::log::LOG_ARTIFACT_TYPE`] manifest
//!   carrying the annotations of the `kiln-annotations` header (a JSON object of strings,
//!   within [`super::log::parse_annotations`]'s limits, else `400 MANIFEST_INVALID`), and
//!   points the tag at it, replacing what it pointed at. The manifest's bytes depend only
//!   on the log and the annotations, so storing the same twice gives the same
//!   [`LogStored::manifest`]. `GET` answers the log and the manifest's annotations, or
//!   `400 MANIFEST_INVALID` when the tag holds something other than a log. A log is
//!   deleted like any tag, with the `DELETE` on `/admin/v1/repositories/<name>/_tags/<tag>`.
//! * **base images**: when a build's cache token pulls a manifest of a mirror repository
//!   by tag (`GET` or `HEAD`, also in the containerd `?ns=` form) and gets it, the cache
//!   records, for the Build the token names (its `sub`, the Build UID), the image as the
//!   build named it (the mirror repository, `<mirror>/<path>`), the tag, and the digest
//!   the tag resolved to. One record per image and tag, the latest replacing the earlier;
//!   at most [`crate::store::MAX_BASES_PER_BUILD`] per Build (the oldest go first); records
//!   older than [`crate::store::BASES_MAX_AGE`] are dropped by the next GC, and a prune
//!   leaves the others. Pulls by digest, by the admin token or anonymous ones record
//!   nothing. `GET` lists a Build's records sorted by image, then tag; `DELETE` forgets
//!   them and is idempotent. The `<uid>` follows the lease name rule ([`LeaseName`]: a
//!   Build UID is one), and is the type of the uid in the client too.
//! * **mirror/resolve**: asks the upstream now, with a `HEAD` (which Docker Hub does not
//!   count as a pull) and whatever the mirror's TTL says, where the tag of `image` (a
//!   mirror repository, `<mirror>/<path>`) points. A cached copy of the tag is updated as
//!   a revalidation would update it: confirmed, replaced by the manifest the tag moved to,
//!   or removed when the upstream no longer has the tag; a tag not cached is only looked
//!   at. It records no base image. Unlike a pull, it never answers from the cache: an
//!   upstream that cannot answer (unreachable, `429`, `5xx`, a broken answer) is
//!   `503 UNAVAILABLE`, which callers may retry; an `image` that names no configured mirror
//!   is `404 NAME_UNKNOWN`, its detail listing the configured mirrors.

use serde::{Deserialize, Serialize};

use crate::oci::digest::Digest;
use crate::oci::name::{NameError, RepoName, Tag, TagError, is_plain_token, validated_text};

/// The path prefix of the admin API.
pub const PREFIX: &str = "/admin/v1";

/// The longest lease name, in bytes.
pub const MAX_LEASE_NAME_LEN: usize = 128;

/// The name of a lease: 1 to [`MAX_LEASE_NAME_LEN`] ASCII letters, digits, `.`, `_`, `-`
/// (a Build UID, or `build-<uid>`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseName(String);

/// Why a text is not a valid lease name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("lease name {0:?} is invalid: 1 to 128 letters, digits, '.', '_' or '-'")]
pub struct LeaseNameError(pub String);

impl LeaseName {
    /// Parses and validates a lease name.
    pub fn parse(text: &str) -> Result<Self, LeaseNameError> {
        if is_plain_token(text, MAX_LEASE_NAME_LEN, b"._-") {
            Ok(Self(text.to_owned()))
        } else {
            Err(LeaseNameError(text.to_owned()))
        }
    }
}

validated_text!(LeaseName, LeaseNameError);

/// One endpoint of the admin API (the table in the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRoute {
    /// `/admin/v1/du`.
    Du,
    /// `/admin/v1/prune`.
    Prune,
    /// `/admin/v1/verify`.
    Verify,
    /// `/admin/v1/leases/<lease>`.
    Lease {
        /// The lease.
        name: LeaseName,
    },
    /// `/admin/v1/repositories/<name>/_tags/<tag>`.
    Tag {
        /// The repository.
        name: RepoName,
        /// The tag.
        tag: Tag,
    },
    /// `/admin/v1/repositories/<name>`.
    Repository {
        /// The repository.
        name: RepoName,
    },
    /// `/admin/v1/logs/<name>/_tags/<tag>`.
    Log {
        /// The repository (a logs repository, `<namespace>/kiln_logs`, for the GC to keep
        /// it).
        name: RepoName,
        /// The tag.
        tag: Tag,
    },
    /// `/admin/v1/builds/<uid>/bases`.
    BuildBases {
        /// The Build's UID, under the lease name rule.
        uid: LeaseName,
    },
    /// `/admin/v1/mirror/resolve`.
    MirrorResolve,
}

/// Why a path is not an admin API route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminPathError {
    /// No such endpoint.
    #[error("no such admin endpoint: {0:?}")]
    Unknown(String),
    /// The repository name is invalid.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The tag is invalid.
    #[error(transparent)]
    Tag(#[from] TagError),
    /// The lease name is invalid.
    #[error(transparent)]
    Lease(#[from] LeaseNameError),
}

const TAG_SEPARATOR: &str = "/_tags/";
const BASES_SUFFIX: &str = "/bases";

impl AdminRoute {
    /// The request path of this route; [`AdminRoute::parse`] reads it back.
    pub fn path(&self) -> String {
        match self {
            Self::Du => format!("{PREFIX}/du"),
            Self::Prune => format!("{PREFIX}/prune"),
            Self::Verify => format!("{PREFIX}/verify"),
            Self::Lease { name } => format!("{PREFIX}/leases/{name}"),
            Self::Tag { name, tag } => format!("{PREFIX}/repositories/{name}{TAG_SEPARATOR}{tag}"),
            Self::Repository { name } => format!("{PREFIX}/repositories/{name}"),
            Self::Log { name, tag } => format!("{PREFIX}/logs/{name}{TAG_SEPARATOR}{tag}"),
            Self::BuildBases { uid } => format!("{PREFIX}/builds/{uid}{BASES_SUFFIX}"),
            Self::MirrorResolve => format!("{PREFIX}/mirror/resolve"),
        }
    }

    /// Parses a request path (without the query string).
    pub fn parse(path: &str) -> Result<Self, AdminPathError> {
        let unknown = || AdminPathError::Unknown(path.to_owned());
        let rest = path
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(unknown)?;
        match rest {
            "du" => return Ok(Self::Du),
            "prune" => return Ok(Self::Prune),
            "verify" => return Ok(Self::Verify),
            "mirror/resolve" => return Ok(Self::MirrorResolve),
            _ => {}
        }
        if let Some(build) = rest.strip_prefix("builds/") {
            let uid = build.strip_suffix(BASES_SUFFIX).ok_or_else(unknown)?;
            return Ok(Self::BuildBases {
                uid: LeaseName::parse(uid)?,
            });
        }
        if let Some(lease) = rest.strip_prefix("leases/") {
            return Ok(Self::Lease {
                name: LeaseName::parse(lease)?,
            });
        }
        if let Some(log) = rest.strip_prefix("logs/") {
            let (name, tag) = log.rsplit_once(TAG_SEPARATOR).ok_or_else(unknown)?;
            return Ok(Self::Log {
                name: RepoName::parse(name)?,
                tag: Tag::parse(tag)?,
            });
        }
        let repository = rest.strip_prefix("repositories/").ok_or_else(unknown)?;
        match repository.rsplit_once(TAG_SEPARATOR) {
            Some((name, tag)) => Ok(Self::Tag {
                name: RepoName::parse(name)?,
                tag: Tag::parse(tag)?,
            }),
            None => Ok(Self::Repository {
                name: RepoName::parse(repository)?,
            }),
        }
    }
}

/// A count of items and their bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// How many.
    pub count: u64,
    /// Their total size in bytes.
    pub bytes: u64,
}

/// `GET /admin/v1/du`: what the store holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DuReport {
    /// Every byte the store uses for content: blobs (manifests included) and uploads.
    pub total_bytes: u64,
    /// What a `prune` with policy `all` would free now.
    pub reclaimable_bytes: u64,
    /// Verified blobs, manifests included.
    pub blobs: Usage,
    /// Stored manifests.
    pub manifests: u64,
    /// Tags over all repositories.
    pub tags: u64,
    /// Uploads in progress and their bytes so far.
    pub uploads: Usage,
    /// Live leases.
    pub leases: u64,
    /// Per repository, sorted by name.
    pub repositories: Vec<RepositoryUsage>,
}

/// One repository in a [`DuReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepositoryUsage {
    /// The repository.
    pub name: RepoName,
    /// Its tags.
    pub tags: u64,
    /// Its manifests.
    pub manifests: u64,
    /// The bytes of every blob its manifests reference (blobs shared with other
    /// repositories count in each).
    pub bytes: u64,
    /// The last pull or push, seconds since the Unix epoch.
    pub last_used: Option<u64>,
    /// Whether it is a pull-through mirror repository.
    pub mirror: bool,
}

/// The policy of a prune.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum PrunePolicy {
    /// Remove everything no lease or upload protects.
    All,
    /// Remove the least recently used entries until the store holds at most `bytes`.
    KeepStorage {
        /// The size to keep, in bytes.
        bytes: u64,
    },
    /// Remove entries not used for `seconds`.
    KeepDuration {
        /// The age limit, in seconds.
        seconds: u64,
    },
}

/// `POST /admin/v1/prune`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneRequest {
    /// What to remove.
    pub policy: PrunePolicy,
    /// Report what would be removed, remove nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// The kind of a pruned entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryKind {
    /// A tag (the name only).
    Tag,
    /// A manifest (its blob counted under `Blob` when removed too).
    Manifest,
    /// A blob file.
    Blob,
    /// An abandoned upload.
    Upload,
}

/// One entry a prune removed (or would remove).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrunedEntry {
    /// What it is.
    pub kind: EntryKind,
    /// Its repository, for tags and manifests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<RepoName>,
    /// Its tag, for tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<Tag>,
    /// Its digest, for manifests and blobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    /// The bytes it freed (0 for tags and manifests whose blob stays).
    pub bytes: u64,
    /// Why it was chosen ("unused for 8d", "over keep-storage", "unreferenced").
    pub reason: String,
}

/// The answer to a prune.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneReport {
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Bytes freed (or that would be).
    pub freed_bytes: u64,
    /// What was removed, in a deterministic order (kind, repository, tag, digest).
    pub removed: Vec<PrunedEntry>,
    /// Blobs a lease kept from removal.
    pub kept_by_leases: u64,
    /// Set when a `keep-storage` ceiling could not be met, with what held the store above
    /// it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceiling_unmet: Option<CeilingUnmet>,
}

/// What kept a store above its `keep-storage` ceiling after a prune.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CeilingUnmet {
    /// Bytes left.
    pub bytes_after: u64,
    /// Bytes that unexpired leases hold.
    pub held_by_leases: u64,
    /// Bytes that pushes in progress hold (content pushed or checked within the grace
    /// window that no tag reaches).
    pub held_by_pushes: u64,
}

/// `POST /admin/v1/verify`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyRequest {
    /// Also drop manifests whose content is gone, leaving a consistent store.
    #[serde(default)]
    pub repair: bool,
}

/// A blob whose bytes do not hash to its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorruptBlob {
    /// The digest it is stored under.
    pub digest: Digest,
    /// What its bytes hash to.
    pub actual: Digest,
    /// Its size on disk.
    pub bytes: u64,
    /// Whether it was moved to quarantine (always, outside a failure to move it).
    pub quarantined: bool,
}

/// A manifest that references content the store does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingReference {
    /// The repository of the manifest.
    pub repository: RepoName,
    /// The manifest.
    pub manifest: Digest,
    /// The blob or manifest it references that is missing.
    pub missing: Digest,
}

/// The answer to a verify.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Blobs rehashed.
    pub blobs_checked: u64,
    /// Bytes rehashed.
    pub bytes_checked: u64,
    /// Blobs that failed the check, sorted by digest.
    pub corrupt: Vec<CorruptBlob>,
    /// Dangling references, sorted.
    pub missing: Vec<MissingReference>,
    /// Manifests dropped by `repair`, sorted.
    pub repaired: Vec<Digest>,
    /// Every other problem found (a missing or mis-sized blob file, an orphan file, a
    /// stray temp file, a dangling tag, link or lease), as one sentence each, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// Files moved to the store's `quarantine/` for people to look at, as paths relative
    /// to the store's root, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quarantined: Vec<String>,
}

impl VerifyReport {
    /// Whether the store was found consistent.
    pub fn is_clean(&self) -> bool {
        self.corrupt.is_empty() && self.missing.is_empty() && self.problems.is_empty()
    }
}

/// What a lease holds: the store's own type, which is also the wire form.
pub use crate::store::LeaseTarget;

/// `PUT /admin/v1/leases/<lease>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRequest {
    /// What the lease holds (replacing what it held).
    pub targets: Vec<LeaseTarget>,
    /// How long it holds them from now, in seconds.
    pub ttl_seconds: u64,
}

/// The answer to a lease `PUT`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseResponse {
    /// The lease.
    pub name: LeaseName,
    /// Whether the lease was created (`false`: it existed and was replaced).
    pub created: bool,
    /// When it expires, seconds since the Unix epoch.
    pub expires_at: u64,
    /// The digests it holds, tags resolved, sorted and without duplicates.
    pub digests: Vec<Digest>,
}

/// The answer to a lease `DELETE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseReleased {
    /// Whether a lease was there to release.
    pub released: bool,
}

/// The answer to a tag `DELETE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagDeleted {
    /// The repository.
    pub repository: RepoName,
    /// The tag removed.
    pub tag: Tag,
    /// The manifest it pointed at (which stays until GC).
    pub manifest: Digest,
}

/// The answer to a log `PUT`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogStored {
    /// The repository.
    pub repository: RepoName,
    /// The tag that now points at the log.
    pub tag: Tag,
    /// The log artifact's manifest.
    pub manifest: Digest,
    /// The log's blob (its one layer).
    pub blob: Digest,
    /// The log's size in bytes.
    pub size: u64,
}

/// The answer to a repository `DELETE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepositoryDeleted {
    /// The repository removed.
    pub repository: RepoName,
    /// How many tags it had.
    pub tags_removed: u64,
    /// How many manifests it had.
    pub manifests_removed: u64,
}

/// One base image a Build resolved through the mirror.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseImage {
    /// The image as the build named it: the mirror repository, `<mirror>/<path>`
    /// (`docker.io/library/busybox`).
    pub image: String,
    /// The tag.
    pub tag: String,
    /// The manifest or index digest the tag resolved to.
    pub digest: Digest,
    /// When, seconds since the Unix epoch.
    pub resolved_at: u64,
}

/// The answer to `GET /admin/v1/builds/<uid>/bases`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseImages {
    /// Sorted by image, then tag; empty when the Build resolved none (or they were
    /// forgotten).
    pub bases: Vec<BaseImage>,
}

/// The answer to `DELETE /admin/v1/builds/<uid>/bases`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BasesForgotten {
    /// How many records there were (0 the second time).
    pub forgotten: u64,
}

/// `POST /admin/v1/mirror/resolve`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolveRequest {
    /// A mirror repository, `<mirror>/<path>`, as [`BaseImage::image`] names it.
    pub image: String,
    /// The tag.
    pub tag: String,
}

/// The answer to a resolve: where the upstream's tag points now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolved {
    /// The image asked about.
    pub image: String,
    /// The tag asked about.
    pub tag: String,
    /// The manifest or index digest the upstream's tag points at.
    pub digest: Digest,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn routes_round_trip_through_their_paths() {
        let name = RepoName::parse("team-a/tags/x").unwrap();
        let routes = [
            AdminRoute::Du,
            AdminRoute::Prune,
            AdminRoute::Verify,
            AdminRoute::Lease {
                name: LeaseName::parse("build-1234.a_b").unwrap(),
            },
            AdminRoute::Tag {
                name: name.clone(),
                tag: Tag::parse("latest").unwrap(),
            },
            AdminRoute::Repository { name: name.clone() },
            AdminRoute::Log {
                name: RepoName::parse("team-a/kiln_logs").unwrap(),
                tag: Tag::parse("app-0123-1").unwrap(),
            },
            AdminRoute::Log {
                name,
                tag: Tag::parse("latest").unwrap(),
            },
            AdminRoute::BuildBases {
                uid: LeaseName::parse("0b7a4c1e-9f3d-4e2a-8c55-1d2e3f405162").unwrap(),
            },
            AdminRoute::MirrorResolve,
        ];
        for route in routes {
            assert_eq!(AdminRoute::parse(&route.path()), Ok(route.clone()));
        }
        assert_eq!(
            AdminRoute::parse("/admin/v1/repositories/team-a/app/_tags/v1").unwrap(),
            AdminRoute::Tag {
                name: RepoName::parse("team-a/app").unwrap(),
                tag: Tag::parse("v1").unwrap()
            }
        );
        assert_eq!(
            AdminRoute::parse("/admin/v1/builds/uid-1/bases").unwrap(),
            AdminRoute::BuildBases {
                uid: LeaseName::parse("uid-1").unwrap()
            }
        );
        assert_eq!(
            AdminRoute::parse("/admin/v1/mirror/resolve").unwrap(),
            AdminRoute::MirrorResolve
        );
        assert_eq!(
            AdminRoute::parse("/admin/v1/logs/team-a/kiln_logs/_tags/app-1").unwrap(),
            AdminRoute::Log {
                name: RepoName::parse("team-a/kiln_logs").unwrap(),
                tag: Tag::parse("app-1").unwrap()
            }
        );
    }

    #[test]
    fn bad_admin_paths_are_refused_by_part() {
        for path in [
            "/admin/v1",
            "/admin/v1/",
            "/admin/v2/du",
            "/admin/v1/gc",
            "/v2/",
            "/admin/v1/logs/team-a/kiln_logs",
            "/admin/v1/logs/",
            "/admin/v1/builds/uid-1",
            "/admin/v1/builds/uid-1/bases/x",
            "/admin/v1/builds/",
            "/admin/v1/mirror",
            "/admin/v1/mirror/resolve/x",
        ] {
            assert_eq!(
                AdminRoute::parse(path),
                Err(AdminPathError::Unknown(path.to_owned()))
            );
        }
        assert!(matches!(
            AdminRoute::parse("/admin/v1/leases/a/b"),
            Err(AdminPathError::Lease(_))
        ));
        assert!(matches!(
            AdminRoute::parse("/admin/v1/leases/"),
            Err(AdminPathError::Lease(_))
        ));
        for bad_uid in [
            "/admin/v1/builds/a/b/bases",
            "/admin/v1/builds//bases",
            "/admin/v1/builds/a%2Fb/bases",
        ] {
            assert!(
                matches!(AdminRoute::parse(bad_uid), Err(AdminPathError::Lease(_))),
                "{bad_uid}"
            );
        }
        let long = format!(
            "/admin/v1/builds/{}/bases",
            "a".repeat(MAX_LEASE_NAME_LEN + 1)
        );
        assert!(matches!(
            AdminRoute::parse(&long),
            Err(AdminPathError::Lease(_))
        ));
        assert!(matches!(
            AdminRoute::parse("/admin/v1/repositories/A"),
            Err(AdminPathError::Name(_))
        ));
        assert!(matches!(
            AdminRoute::parse("/admin/v1/repositories/a/_tags/.x"),
            Err(AdminPathError::Tag(_))
        ));
        assert!(matches!(
            AdminRoute::parse("/admin/v1/repositories/_tags/x"),
            Err(AdminPathError::Name(_))
        ));
        assert!(matches!(
            AdminRoute::parse("/admin/v1/logs/Team/_tags/x"),
            Err(AdminPathError::Name(_))
        ));
        assert!(matches!(
            AdminRoute::parse("/admin/v1/logs/team-a/kiln_logs/_tags/-x"),
            Err(AdminPathError::Tag(_))
        ));
    }

    #[test]
    fn bodies_have_the_documented_json() {
        let prune = PruneRequest {
            policy: PrunePolicy::KeepStorage { bytes: 1 << 30 },
            dry_run: true,
        };
        assert_eq!(
            serde_json::to_value(prune).unwrap(),
            json!({"policy": {"mode": "keep-storage", "bytes": 1073741824}, "dry_run": true})
        );
        let parsed: PruneRequest =
            serde_json::from_value(json!({"policy": {"mode": "all"}})).unwrap();
        assert_eq!(
            parsed,
            PruneRequest {
                policy: PrunePolicy::All,
                dry_run: false
            }
        );
        let parsed: PruneRequest =
            serde_json::from_value(json!({"policy": {"mode": "keep-duration", "seconds": 604800}}))
                .unwrap();
        assert_eq!(
            parsed.policy,
            PrunePolicy::KeepDuration { seconds: 604_800 }
        );

        let lease: LeaseRequest = serde_json::from_value(json!({
            "targets": [{"repository": "team-a/cache", "tag": "buildkit"}, {"digest": D}],
            "ttl_seconds": 3600
        }))
        .unwrap();
        assert_eq!(
            lease.targets,
            [
                LeaseTarget::Tag {
                    repository: RepoName::parse("team-a/cache").unwrap(),
                    tag: Tag::parse("buildkit").unwrap()
                },
                LeaseTarget::Digest {
                    digest: D.parse().unwrap()
                }
            ]
        );
        assert_eq!(
            serde_json::to_value(&lease).unwrap()["targets"][1],
            json!({ "digest": D })
        );

        let stored = LogStored {
            repository: RepoName::parse("team-a/kiln_logs").unwrap(),
            tag: Tag::parse("app-1").unwrap(),
            manifest: Digest::of(b"m"),
            blob: D.parse().unwrap(),
            size: 0,
        };
        let value = serde_json::to_value(&stored).unwrap();
        assert_eq!(
            value,
            json!({
                "repository": "team-a/kiln_logs", "tag": "app-1",
                "manifest": Digest::of(b"m").to_string(), "blob": D, "size": 0
            })
        );
        assert_eq!(serde_json::from_value::<LogStored>(value).unwrap(), stored);

        let bases = BaseImages {
            bases: vec![BaseImage {
                image: "docker.io/library/busybox".into(),
                tag: "1.36".into(),
                digest: D.parse().unwrap(),
                resolved_at: 1_700_000_000,
            }],
        };
        let value = serde_json::to_value(&bases).unwrap();
        assert_eq!(
            value,
            json!({"bases": [{
                "image": "docker.io/library/busybox", "tag": "1.36", "digest": D,
                "resolved_at": 1_700_000_000
            }]})
        );
        assert_eq!(serde_json::from_value::<BaseImages>(value).unwrap(), bases);
        assert_eq!(
            serde_json::to_value(BasesForgotten { forgotten: 2 }).unwrap(),
            json!({"forgotten": 2})
        );
        let request: ResolveRequest =
            serde_json::from_value(json!({"image": "docker.io/library/busybox", "tag": "1.36"}))
                .unwrap();
        assert_eq!(request.tag, "1.36");
        let resolved = Resolved {
            image: request.image,
            tag: request.tag,
            digest: D.parse().unwrap(),
        };
        assert_eq!(
            serde_json::to_value(&resolved).unwrap(),
            json!({"image": "docker.io/library/busybox", "tag": "1.36", "digest": D})
        );
        assert!(
            serde_json::from_value::<Resolved>(
                json!({"image": "a/b", "tag": "1", "digest": "sha256:00"})
            )
            .is_err()
        );
    }

    #[test]
    fn bodies_reject_invalid_names_and_digests() {
        for bad in [
            json!({"targets": [{"repository": "Team", "tag": "x"}], "ttl_seconds": 1}),
            json!({"targets": [{"digest": "sha256:00"}], "ttl_seconds": 1}),
            json!({"targets": [], "ttl_seconds": -1}),
        ] {
            assert!(
                serde_json::from_value::<LeaseRequest>(bad.clone()).is_err(),
                "{bad}"
            );
        }
        assert!(serde_json::from_value::<LeaseName>(json!("a/b")).is_err());
        assert!(
            serde_json::from_value::<PruneRequest>(json!({"policy": {"mode": "some"}})).is_err()
        );
    }

    #[test]
    fn verify_reports_are_clean_without_findings() {
        let mut report = VerifyReport::default();
        assert!(report.is_clean());
        report.corrupt.push(CorruptBlob {
            digest: D.parse().unwrap(),
            actual: Digest::of(b"x"),
            bytes: 1,
            quarantined: true,
        });
        assert!(!report.is_clean());
        let other = VerifyReport {
            problems: vec!["orphan file blobs/sha256/ab/x".into()],
            ..VerifyReport::default()
        };
        assert!(!other.is_clean());
    }
}
