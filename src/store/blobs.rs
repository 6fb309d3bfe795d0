//! Blob ingest and reads: bytes stream into a temp file while they are hashed and counted;
//! `commit` checks digest and size, fsyncs, renames into place and fsyncs the directory,
//! then records the row (filesystem and redb I/O).
//!
//! Nothing unverified is ever at a digest path (DESIGN invariant 1). Concurrent ingests of
//! one digest are single-flight, and the rename and GC's unlink of one digest are
//! serialised by the same flight table (see [`crate::store::flight`]).

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use redb::{ReadableTable, WriteTransaction};

use crate::oci::digest::{Algorithm, Digest};
use crate::store::error::{Result, StoreError};
use crate::store::flight::{Claim, FlightGuard, FlightOutcome, Waiter};
use crate::store::handle::Store;
use crate::store::layout::sync_dir;
use crate::store::tables::{self, BlobRow};
use crate::store::temp::{TempBlob, hash_file};
use crate::store::types::{BlobInfo, validate_repo};

/// A writer of one blob. Write the bytes, then [`BlobWriter::commit`] with the digest and
/// size the client announced; dropping it (or [`BlobWriter::abort`]) removes the temp
/// file and, for a single-flight ingest, tells the waiters it failed.
#[derive(Debug)]
pub struct BlobWriter {
    store: Store,
    temp: TempBlob,
    guard: Option<FlightGuard>,
}

impl BlobWriter {
    /// Appends bytes.
    pub fn write_chunk(&mut self, bytes: &[u8]) -> Result<()> {
        self.temp.write(bytes)
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.temp.written()
    }

    /// The digest this writer was claimed for, when it came from [`Store::ingest`].
    pub fn claimed(&self) -> Option<Digest> {
        self.guard.as_ref().map(FlightGuard::digest)
    }

    /// Checks digest (and size, if given), makes the blob durable and visible, and links it
    /// into `repo`. On a mismatch nothing becomes visible.
    pub fn commit(
        self,
        repo: &str,
        expected: Digest,
        expected_size: Option<u64>,
    ) -> Result<BlobInfo> {
        let Self { store, temp, guard } = self;
        store.commit_temp(temp, guard, expected, expected_size, repo, |_| Ok(Ok(())))
    }

    /// Discards the bytes.
    pub fn abort(self) {}
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_chunk(buf).map_err(io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What [`Store::ingest`] found for a digest known up front.
#[derive(Debug)]
// Short-lived (one per ingest, matched at once): boxing the writer would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Ingest {
    /// The blob is already in the store (one lookup).
    Present(BlobInfo),
    /// This caller writes it; everyone else asking now waits for this writer.
    Write(BlobWriter),
    /// Another caller is writing it; wait for its result.
    Wait(IngestWaiter),
}

/// A wait on another caller's ingest of the same digest.
#[derive(Debug)]
pub struct IngestWaiter(Waiter);

impl IngestWaiter {
    /// Blocks until the writer commits (the blob's info) or fails
    /// ([`StoreError::IngestAbandoned`]; the caller may try again).
    pub fn wait(self) -> Result<BlobInfo> {
        let digest = self.0.digest();
        match self.0.wait() {
            FlightOutcome::Committed(size) => Ok(BlobInfo { digest, size }),
            FlightOutcome::Failed(reason) => Err(StoreError::IngestAbandoned { digest, reason }),
        }
    }
}

/// An open blob for reading, positioned at its start.
#[derive(Debug)]
pub struct BlobReader {
    file: File,
    size: u64,
}

impl BlobReader {
    /// The blob's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Reads `len` bytes starting at `offset` (a `Range` request), clamped to the blob.
    pub fn read_range(&mut self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let end = offset.saturating_add(len).min(self.size);
        let len = usize::try_from(end.saturating_sub(offset)).map_err(io::Error::other)?;
        let mut out = vec![0; len];
        self.file.seek(SeekFrom::Start(offset))?;
        self.file.read_exact(&mut out)?;
        Ok(out)
    }

    /// The file, for streaming.
    pub fn into_file(self) -> File {
        self.file
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

impl Seek for BlobReader {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.file.seek(pos)
    }
}

impl Store {
    /// A writer for a blob whose digest will be known at commit (uploads), hashed with
    /// sha256 on the way; a commit with another algorithm's digest rehashes the file.
    pub fn blob_writer(&self) -> Result<BlobWriter> {
        self.blob_writer_for(Algorithm::Sha256)
    }

    /// A writer for a blob whose digest will be of `algorithm`.
    pub fn blob_writer_for(&self, algorithm: Algorithm) -> Result<BlobWriter> {
        Ok(BlobWriter {
            store: self.clone(),
            temp: TempBlob::create(self.temp_path("ingest"), self.inner.sync, algorithm)?,
            guard: None,
        })
    }

    /// Starts the ingest of a blob whose digest is known up front (the pull-through
    /// mirror): present already, this caller writes it, or it waits for the caller who is.
    pub fn ingest(&self, digest: Digest) -> Result<Ingest> {
        if let Some(info) = self.blob(digest)? {
            return Ok(Ingest::Present(info));
        }
        match self.inner.flights.claim(digest) {
            Claim::Follower(waiter) => Ok(Ingest::Wait(IngestWaiter(waiter))),
            Claim::Leader(guard) => {
                // Someone may have committed between the lookup and the claim.
                if let Some(info) = self.blob(digest)? {
                    guard.finish(FlightOutcome::Committed(info.size));
                    return Ok(Ingest::Present(info));
                }
                Ok(Ingest::Write(BlobWriter {
                    store: self.clone(),
                    temp: TempBlob::create(
                        self.temp_path("ingest"),
                        self.inner.sync,
                        digest.algorithm(),
                    )?,
                    guard: Some(guard),
                }))
            }
        }
    }

    /// Stores a whole blob sent at once (a monolithic upload) and links it into `repo`.
    pub fn put_blob(&self, repo: &str, expected: Digest, bytes: &[u8]) -> Result<BlobInfo> {
        validate_repo(repo)?;
        let mut writer = self.blob_writer_for(expected.algorithm())?;
        writer.write_chunk(bytes)?;
        writer.commit(repo, expected, Some(bytes.len() as u64))
    }

    /// The blob with this digest, in any repository.
    pub fn blob(&self, digest: Digest) -> Result<Option<BlobInfo>> {
        self.lookup_blob(None, digest)
    }

    /// The blob with this digest if it is part of `repo` (HEAD on a blob).
    pub fn stat_blob(&self, repo: &str, digest: Digest) -> Result<Option<BlobInfo>> {
        self.lookup_blob(Some(repo), digest)
    }

    fn lookup_blob(&self, repo: Option<&str>, digest: Digest) -> Result<Option<BlobInfo>> {
        let action = "read blob";
        let txn = self.read(action)?;
        if let Some(repo) = repo {
            let links = txn
                .open_table(tables::LINKS)
                .map_err(StoreError::db(action))?;
            if links
                .get((repo, digest.to_key().as_slice()))
                .map_err(StoreError::db(action))?
                .is_none()
            {
                return Ok(None);
            }
        }
        let blobs = txn
            .open_table(tables::BLOBS)
            .map_err(StoreError::db(action))?;
        let row = blobs
            .get(digest.to_key().as_slice())
            .map_err(StoreError::db(action))?;
        Ok(row.map(|row| BlobInfo {
            digest,
            size: BlobRow::decode(row.value()).size,
        }))
    }

    /// Opens a blob of `repo` for reading (GET on a blob). Call [`Store::touch`] for pulls
    /// that should count as use.
    pub fn open_blob(&self, repo: &str, digest: Digest) -> Result<Option<BlobReader>> {
        let Some(info) = self.stat_blob(repo, digest)? else {
            return Ok(None);
        };
        let path = self.inner.layout.blob(&digest);
        match File::open(&path) {
            Ok(file) => Ok(Some(BlobReader {
                file,
                size: info.size,
            })),
            // Swept between the lookup and the open: it is gone, as a later lookup says.
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(StoreError::io("open blob", path)(err)),
        }
    }

    /// Reads a whole blob (manifests, which are small).
    pub(crate) fn read_blob_bytes(&self, digest: Digest) -> Result<Vec<u8>> {
        let path = self.inner.layout.blob(&digest);
        fs::read(&path).map_err(StoreError::io("read blob", path))
    }

    /// The commit path shared by every ingest: verify, fsync, claim the digest, rename
    /// into place unless present, fsync the directory, then one transaction that inserts
    /// (or touches) the blob row, runs `extra` and links the blob into `repo`.
    ///
    /// `extra` returns `Ok(Err(e))` to refuse the link (the blob row is still committed,
    /// so the file never lacks its row) and `Err(e)` to abort the whole transaction.
    pub(crate) fn commit_temp(
        &self,
        temp: TempBlob,
        guard: Option<FlightGuard>,
        expected: Digest,
        expected_size: Option<u64>,
        repo: &str,
        extra: impl FnOnce(&WriteTransaction) -> Result<Result<()>>,
    ) -> Result<BlobInfo> {
        validate_repo(repo)?;
        let (path, file, actual, size) = temp.finish()?;
        let discard = |err: StoreError| {
            let _ = fs::remove_file(&path);
            Err(err)
        };
        // Hashed on the way with the default algorithm, but the client named another: the
        // bytes are on disk, so hash them again (the rare case pays, not every upload).
        let actual = if actual.algorithm() == expected.algorithm() {
            actual
        } else {
            match hash_file(&path, expected.algorithm()) {
                Ok((rehashed, _)) => rehashed,
                Err(err) => return discard(StoreError::io("hash", &path)(err)),
            }
        };
        if let Some(guard) = guard.as_ref()
            && guard.digest() != expected
        {
            return discard(StoreError::digest_mismatch(guard.digest(), expected));
        }
        if actual != expected {
            return discard(StoreError::digest_mismatch(expected, actual));
        }
        if let Some(expected) = expected_size
            && expected != size
        {
            return discard(StoreError::SizeMismatch {
                expected,
                actual: size,
            });
        }
        if self.inner.sync
            && let Err(err) = file.sync_all()
        {
            return discard(StoreError::io("fsync", &path)(err));
        }
        drop(file);
        let guard = match guard {
            Some(guard) => guard,
            None => self.inner.flights.claim_wait(expected),
        };
        let result = self.place_and_record(&path, expected, size, repo, extra);
        match &result {
            Ok(info) => guard.finish(FlightOutcome::Committed(info.size)),
            Err(err) => guard.finish(FlightOutcome::Failed(err.to_string())),
        }
        result
    }

    fn place_and_record(
        &self,
        temp: &PathBuf,
        digest: Digest,
        size: u64,
        repo: &str,
        extra: impl FnOnce(&WriteTransaction) -> Result<Result<()>>,
    ) -> Result<BlobInfo> {
        let present = self.blob(digest)?.is_some();
        if present {
            let _ = fs::remove_file(temp);
        } else {
            self.place(temp, &digest)?;
        }
        let now = self.inner.clock.now_ms();
        self.write("commit blob", |txn| {
            let mut blobs = txn
                .open_table(tables::BLOBS)
                .map_err(StoreError::db("commit blob"))?;
            let existing = blobs
                .get(digest.to_key().as_slice())
                .map_err(StoreError::db("commit blob"))?
                .map(|row| BlobRow::decode(row.value()));
            let row = match existing {
                Some(row) => BlobRow {
                    accessed_ms: row.accessed_ms.max(now),
                    pushed_ms: row.pushed_ms.max(now),
                    ..row
                },
                None => BlobRow::new(size, now),
            };
            blobs
                .insert(digest.to_key().as_slice(), row.encode())
                .map_err(StoreError::db("commit blob"))?;
            drop(blobs);
            self.protect([digest]);
            match extra(txn)? {
                Ok(()) => {
                    let mut links = txn
                        .open_table(tables::LINKS)
                        .map_err(StoreError::db("commit blob"))?;
                    links
                        .insert((repo, digest.to_key().as_slice()), ())
                        .map_err(StoreError::db("commit blob"))?;
                    Ok(Ok(()))
                }
                Err(refused) => Ok(Err(refused)),
            }
        })??;
        Ok(BlobInfo { digest, size })
    }

    /// Renames a verified, fsynced temp file to its digest path and makes the rename
    /// durable.
    fn place(&self, temp: &PathBuf, digest: &Digest) -> Result<()> {
        let layout = &self.inner.layout;
        let shard = layout.shard(digest);
        if !shard.is_dir() {
            match fs::create_dir(&shard) {
                Ok(()) => {
                    if self.inner.sync {
                        sync_dir(&layout.algorithm_dir(digest.algorithm()))?;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
                Err(err) => return Err(StoreError::io("create directory", &shard)(err)),
            }
        }
        let target = layout.blob(digest);
        fs::rename(temp, &target).map_err(StoreError::io("rename into", &target))?;
        if self.inner.sync {
            sync_dir(&shard)?;
        }
        Ok(())
    }

    /// Writes bytes that are already in memory as a blob, through the same commit path.
    /// `digest` must be the digest of `bytes` with the algorithm it names.
    pub(crate) fn commit_bytes(
        &self,
        repo: &str,
        bytes: &[u8],
        digest: Digest,
        extra: impl FnOnce(&WriteTransaction) -> Result<Result<()>>,
    ) -> Result<BlobInfo> {
        let mut temp = TempBlob::create(
            self.temp_path("manifest"),
            self.inner.sync,
            digest.algorithm(),
        )?;
        temp.write(bytes)?;
        self.commit_temp(temp, None, digest, Some(bytes.len() as u64), repo, extra)
    }

    /// Whether the database has a blob row for `digest` (inside a write transaction).
    pub(crate) fn has_blob(txn: &WriteTransaction, digest: Digest) -> Result<bool> {
        let blobs = txn
            .open_table(tables::BLOBS)
            .map_err(StoreError::db("read blob"))?;
        Ok(blobs
            .get(digest.to_key().as_slice())
            .map_err(StoreError::db("read blob"))?
            .is_some())
    }
}
