//! The cache store on a directory (the PersistentVolume): verified blobs, redb metadata,
//! online GC, recovery and verify (filesystem and redb I/O; the decisions in [`gc`] and
//! [`manifest`] are pure).
//!
//! # Guarantees (DESIGN's cache store invariants)
//! 1. A file at `blobs/sha256/<ab>/<hex>` always hashes to `<hex>`: bytes land in `tmp/`,
//!    are hashed and counted while streaming, fsynced, renamed, and the directory fsynced.
//! 2. Metadata never points at a missing blob: a manifest is committed only when everything
//!    it references is linked into its repository, in the same transaction that checks it.
//!    The one exception is a pull-through mirror's manifest
//!    ([`Store::put_mirrored_manifest`]), whose references an upstream serves on demand.
//! 3. GC runs online and never removes what is reachable from a tag, a lease, a blob being
//!    written, or a blob younger than the grace window (see [`sweep`] for why).
//! 4. Every mutation is ONE redb transaction that updates every table it touches; after
//!    `prune --all` (no leases, no stored logs, no base image records)
//!    [`Store::table_rows`] is all zeros and no file is left. Base image records
//!    ([`bases`]) are not content: a prune leaves them, and GC drops them by age.
//! 5. After a crash, [`Store::open`] recovers, and [`Store::verify`] finds the store clean.
//! 6. Every listing is sorted; no decision depends on hash-map order.
//!
//! # For the registry
//! [`Store`] is `Send + Sync`, cheap to clone, synchronous: call it from
//! `tokio::task::spawn_blocking`. Opening takes an exclusive lock on the root; a second
//! process gets [`StoreError::Locked`] naming the holder.
//!
//! | HTTP | store |
//! | --- | --- |
//! | `HEAD/GET /v2/<repo>/blobs/<d>` (+ Range) | [`Store::stat_blob`], [`Store::open_blob`] → [`BlobReader`] (`read_range`, `Read + Seek`), then [`Store::touch`] on GET |
//! | `DELETE /v2/<repo>/blobs/<d>` | [`Store::unlink`] |
//! | `POST …/uploads/` | [`Store::upload_create`] (or [`Store::put_blob`] for `?digest=`, monolithic) |
//! | `PATCH …/uploads/<id>` | [`Store::upload_append`] (offset must equal the size so far, else [`StoreError::UploadOffset`] → 416) |
//! | `GET …/uploads/<id>` | [`Store::upload_status`] |
//! | `PUT …/uploads/<id>?digest=` | [`Store::upload_append`] for a final chunk, then [`Store::upload_commit`] |
//! | `DELETE …/uploads/<id>` | [`Store::upload_cancel`] |
//! | `POST …/uploads/?mount=&from=` | [`Store::mount`] (false → start a normal upload) |
//! | `PUT /v2/<repo>/manifests/<ref>` | [`Store::put_manifest`] ([`StoreError::ReferenceMissing`] → `MANIFEST_BLOB_UNKNOWN` with its digest, [`StoreError::ManifestInvalid`] → `MANIFEST_INVALID`) |
//! | `HEAD/GET …/manifests/<ref>` | [`Store::manifest`], [`Store::manifest_bytes`], then [`Store::touch`] on GET |
//! | `DELETE …/manifests/<tag>` / `<digest>` | [`Store::untag`] / [`Store::unlink`] |
//! | `GET …/tags/list?n=&last=` | [`Store::tags`] |
//! | `GET /v2/_catalog?n=&last=` | [`Store::repositories`] (and [`Store::has_repository`] for `NAME_UNKNOWN`) |
//! | `GET …/referrers/<d>?artifactType=` | [`Store::referrers`] |
//! | mirror: store an upstream manifest | [`Store::put_mirrored_manifest`] (references fetched on demand) |
//! | mirror: fetch a blob by digest | [`Store::ingest`] → [`Ingest::Present`] / [`Ingest::Write`] (a [`BlobWriter`]; commit with the digest) / [`Ingest::Wait`] (then [`Store::link`] into the repo) |
//! | admin: leases | [`Store::lease_acquire`] (targets: digests or `repo:tag`, pinned at acquire), [`Store::lease_extend`], [`Store::lease_release`], [`Store::leases`] |
//! | mirror: a build resolved a base image by tag | [`Store::record_base`] (at most [`MAX_BASES_PER_BUILD`] per Build) |
//! | admin: base images | [`Store::bases`], [`Store::forget_bases`]; GC drops rows older than [`BASES_MAX_AGE`] |
//! | admin: GC / du / verify | [`Store::gc`] ([`GcOptions`], [`Policy`], `dry_run`) → [`GcReport`]; [`Store::du`] → [`DiskUsage`]; [`Store::verify`] → [`VerifyFindings`] |
//! | timers | [`Store::flush_access`] (batched last-access writes), [`Store::gc`] |
//! | shutdown | [`Store::close`] |
//!
//! Chunks cost a buffered write and a hash update: no fsync and no transaction per chunk.
//! A commit costs one fsync of the file, one of its directory, and one transaction.
//! Upload sessions do not survive a restart (their hash state is in memory).
//!
//! # For the controller, through the admin API
//! A lease on `LeaseTarget::Tag { repo, tag }` pins what the tag points to when the lease
//! is taken, and everything reachable from it; [`Store::delete_repository`] removes all
//! tags and links of a repository in one transaction; [`Store::untag`] removes a
//! build-scoped tag.

mod backend;
pub mod bases;
#[cfg(any(test, feature = "testing"))]
pub mod bench_support;
pub mod blobs;
pub mod clock;
pub mod du;
pub mod error;
#[cfg(any(test, feature = "testing"))]
pub mod fixtures;
pub mod flight;
pub mod gc;
mod handle;
mod index;
pub mod layout;
pub mod manifest;
mod migrate;
pub mod storage;
pub mod stream;
pub mod sweep;
pub mod tables;
mod temp;
pub mod types;
mod unlinker;
mod uploads;
pub mod verify;

#[cfg(test)]
mod contract;
#[cfg(test)]
mod model;

pub use bases::{BASES_MAX_AGE, BaseResolution, MAX_BASES_PER_BUILD};
pub use blobs::{BlobReader, BlobWriter, Ingest, IngestWaiter};
pub use clock::StoreClock;
pub use du::{DiskUsage, DuRoot};
pub use error::StoreError;
pub use gc::{GcReason, Policy};
pub use handle::{Store, StoreOptions};
pub use storage::Storage;
pub use sweep::{GcOptions, GcReport, ItemKind, Removal};
pub use types::{
    BlobEntry, BlobInfo, Lease, LeaseTarget, LinkEntry, Listing, ManifestInfo, RecoveryReport,
    Referrer, RemovedFromRepository, TagEntry, UploadStatus,
};
pub use uploads::ExpiredUploads;
pub use verify::{Inconsistency, VerifyFindings, VerifyOptions};
