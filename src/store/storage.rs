//! The small storage trait that the contract suite and the model test run against: the
//! redb [`Store`] and an in-memory model implement it (the trait is pure; the impl for
//! [`Store`] does I/O).
//!
//! It holds what the contract needs, not the whole API: writes that change what is
//! reachable, GC, and a full sorted listing to compare.

use std::time::Duration;

use crate::oci::digest::Digest;
use crate::oci::name::Reference;
use crate::store::error::Result;
use crate::store::handle::Store;
use crate::store::sweep::{GcOptions, GcReport};
use crate::store::types::{
    BlobInfo, Lease, LeaseTarget, Listing, ManifestInfo, RemovedFromRepository,
};

/// A cache store's contract (see `contract.rs` for the suite that pins it down).
pub trait Storage {
    /// Stores a blob whose digest is `Digest::of(bytes)` and links it into `repo`.
    fn put_blob(&self, repo: &str, bytes: &[u8]) -> Result<BlobInfo>;
    /// Stores a manifest; refused unless everything it references is linked in `repo`.
    fn put_manifest(
        &self,
        repo: &str,
        reference: &Reference,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<ManifestInfo>;
    /// The manifest a reference names in `repo`.
    fn manifest(&self, repo: &str, reference: &Reference) -> Result<Option<ManifestInfo>>;
    /// Links a blob of `from` into `to`.
    fn mount(&self, from: &str, to: &str, digest: Digest) -> Result<bool>;
    /// Removes a tag.
    fn untag(&self, repo: &str, tag: &str) -> Result<bool>;
    /// Removes a digest from a repository, with the tags that point at it.
    fn unlink(&self, repo: &str, digest: Digest) -> Result<bool>;
    /// Removes every tag and link of a repository.
    fn delete_repository(&self, repo: &str) -> Result<RemovedFromRepository>;
    /// Records a use of a digest (batched).
    fn touch(&self, digest: Digest);
    /// Creates or replaces a lease.
    fn lease_acquire(&self, name: &str, targets: &[LeaseTarget], ttl: Duration) -> Result<Lease>;
    /// Releases a lease.
    fn lease_release(&self, name: &str) -> Result<bool>;
    /// Runs a GC.
    fn gc(&self, options: &GcOptions) -> Result<GcReport>;
    /// Every row, sorted.
    fn listing(&self) -> Result<Listing>;
}

impl Storage for Store {
    fn put_blob(&self, repo: &str, bytes: &[u8]) -> Result<BlobInfo> {
        Store::put_blob(self, repo, Digest::of(bytes), bytes)
    }

    fn put_manifest(
        &self,
        repo: &str,
        reference: &Reference,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<ManifestInfo> {
        Store::put_manifest(self, repo, reference, media_type, bytes)
    }

    fn manifest(&self, repo: &str, reference: &Reference) -> Result<Option<ManifestInfo>> {
        Store::manifest(self, repo, reference)
    }

    fn mount(&self, from: &str, to: &str, digest: Digest) -> Result<bool> {
        Store::mount(self, from, to, digest)
    }

    fn untag(&self, repo: &str, tag: &str) -> Result<bool> {
        Store::untag(self, repo, tag)
    }

    fn unlink(&self, repo: &str, digest: Digest) -> Result<bool> {
        Store::unlink(self, repo, digest)
    }

    fn delete_repository(&self, repo: &str) -> Result<RemovedFromRepository> {
        Store::delete_repository(self, repo)
    }

    fn touch(&self, digest: Digest) {
        Store::touch(self, digest);
    }

    fn lease_acquire(&self, name: &str, targets: &[LeaseTarget], ttl: Duration) -> Result<Lease> {
        Store::lease_acquire(self, name, targets, ttl)
    }

    fn lease_release(&self, name: &str) -> Result<bool> {
        Store::lease_release(self, name)
    }

    fn gc(&self, options: &GcOptions) -> Result<GcReport> {
        Store::gc(self, options)
    }

    fn listing(&self) -> Result<Listing> {
        Store::listing(self)
    }
}
