//! The store's one error type, with a variant per failed action (pure).

use std::path::PathBuf;

use crate::oci::digest::Digest;

/// Why a store operation failed.
///
/// The registry maps these to OCI error codes: [`StoreError::ReferenceMissing`] is
/// `MANIFEST_BLOB_UNKNOWN`, [`StoreError::ManifestInvalid`] is `MANIFEST_INVALID`,
/// [`StoreError::DigestMismatch`] and [`StoreError::SizeMismatch`] are `DIGEST_INVALID`
/// / `SIZE_INVALID`, [`StoreError::UploadUnknown`] is `BLOB_UPLOAD_UNKNOWN`,
/// [`StoreError::UploadOffset`] is a 416, [`StoreError::LeaseUnknown`] a 404 on the admin API;
/// everything else is a 500 with the message logged, not sent.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The root directory has no store and the caller asked not to create one.
    #[error("no cache store at {root} (no meta.redb); pass --root to name an existing store")]
    Missing {
        /// The root directory.
        root: PathBuf,
    },
    /// Another process holds the root's lock file.
    #[error(
        "cache store at {root} is in use by another process ({holder}); stop it, or use its admin API (--server URL)"
    )]
    Locked {
        /// The root directory.
        root: PathBuf,
        /// What the holder wrote into the lock file (pid, host, start time).
        holder: String,
    },
    /// A filesystem operation failed.
    #[error("{action} {}", path.display())]
    Io {
        /// What the store was doing (`"create"`, `"rename"`, `"fsync"`, …).
        action: &'static str,
        /// The path it was doing it on.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The metadata database failed.
    #[error("metadata database: {action}")]
    Database {
        /// What the store was doing.
        action: &'static str,
        /// The cause.
        #[source]
        source: Box<redb::Error>,
    },
    /// A metadata row could not be decoded (the database was written by something else).
    #[error("metadata row in table {table} is corrupt: {reason}")]
    RowCorrupt {
        /// The table.
        table: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The bytes written do not hash to the digest the caller expected.
    #[error("content digest is {actual}, expected {expected}")]
    DigestMismatch {
        /// The digest the caller gave.
        expected: Box<Digest>,
        /// The digest of the bytes received.
        actual: Box<Digest>,
    },
    /// The number of bytes written is not the size the caller expected.
    #[error("content is {actual} bytes, expected {expected}")]
    SizeMismatch {
        /// The size the caller gave.
        expected: u64,
        /// The bytes received.
        actual: u64,
    },
    /// A manifest is not valid JSON of a supported manifest or index shape.
    #[error("manifest is invalid: {reason}")]
    ManifestInvalid {
        /// What was wrong.
        reason: String,
    },
    /// A manifest references a blob or manifest that is not in its repository.
    #[error("manifest references {digest}, which is not in repository {repo}")]
    ReferenceMissing {
        /// The repository the manifest was pushed to.
        repo: String,
        /// The first missing digest (in sorted order).
        digest: Digest,
    },
    /// A repository name or tag is not acceptable to the store.
    #[error("invalid {what} {value:?}: {reason}")]
    NameInvalid {
        /// `"repository"`, `"tag"`, `"lease name"`, `"build UID"` or `"image"`.
        what: &'static str,
        /// The value given.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
    /// No upload session has this id (it was committed, cancelled, or lost in a restart).
    #[error("upload {0} is unknown")]
    UploadUnknown(String),
    /// A chunk was sent at an offset other than the end of the upload so far.
    #[error("upload {id}: chunk at offset {offset}, but {size} bytes were received so far")]
    UploadOffset {
        /// The upload.
        id: String,
        /// The offset the chunk claimed.
        offset: u64,
        /// Bytes received so far (the only acceptable offset).
        size: u64,
    },
    /// A group of repositories holds as many open upload sessions as it may.
    #[error(
        "{group} has {open} upload sessions open, the most it may; finish or cancel one, or wait for idle ones to expire"
    )]
    TooManyUploads {
        /// The group (a namespace: the repositories' first component).
        group: String,
        /// Sessions open in it.
        open: usize,
    },
    /// No lease has this name.
    #[error("lease {0:?} is unknown")]
    LeaseUnknown(String),
    /// A lease names a digest that is not in the store.
    #[error("lease {name:?} names {digest}, which is not in the store")]
    LeaseTargetMissing {
        /// The lease.
        name: String,
        /// The missing digest.
        digest: Digest,
    },
    /// The writer that was fetching this digest gave up; the caller may retry.
    #[error("the concurrent ingest of {digest} failed: {reason}")]
    IngestAbandoned {
        /// The digest.
        digest: Digest,
        /// What the writer reported.
        reason: String,
    },
}

impl StoreError {
    /// An I/O error on `path` while doing `action`.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }

    /// A database error while doing `action`.
    /// [`StoreError::DigestMismatch`] (boxed: a sha512 digest is 64 bytes, and every
    /// `Result` of the store would carry two).
    pub fn digest_mismatch(expected: Digest, actual: Digest) -> Self {
        Self::DigestMismatch {
            expected: Box::new(expected),
            actual: Box::new(actual),
        }
    }

    pub(crate) fn db<E: Into<redb::Error>>(action: &'static str) -> impl FnOnce(E) -> Self {
        move |source| Self::Database {
            action,
            source: Box::new(source.into()),
        }
    }
}

/// Shorthand for results of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
