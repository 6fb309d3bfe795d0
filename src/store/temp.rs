//! Bytes on their way into the store: a temp file written as they arrive, hashed and
//! counted on the way (filesystem I/O; a large blob is hashed on a helper thread); the
//! upload session that holds one across requests; and the hash of a file on disk.
//!
//! Hashing and writing are the two costs of an ingest, and on their own each leaves a core
//! idle. Once a blob is larger than [`HELPER_FROM`], its bytes are copied into a small pool
//! of buffers that a helper thread hashes while the caller's thread writes the same bytes
//! to the file: the ingest then costs about the larger of the two instead of their sum.
//! Chunks of at least [`COALESCE`] bytes go to the file straight from the caller's slice;
//! smaller ones are coalesced first, so a client sending tiny chunks does not cost a
//! syscall each.
//!
//! A temp file that will be fsynced at commit asks the kernel, every [`WRITEBACK`] bytes,
//! to start writing what it has to disk (Linux: `sync_file_range`, which does not wait).
//! The disk then works while the rest arrives, and the fsync at commit waits only for the
//! tail, as RocksDB's `bytes_per_sync` does. It is a hint, not a durability step: the
//! fsync still makes the file durable, and a failed hint changes nothing.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::mem;
use std::path::Path;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use crate::oci::digest::{Algorithm, Digest, Hasher};
use crate::store::error::{Result, StoreError};

/// Blobs up to this size are hashed on the caller's thread: a thread is not worth it.
pub(crate) const HELPER_FROM: u64 = 4 << 20;
/// Writes smaller than this are coalesced into one buffer of this size before they reach
/// the file; larger ones are written as they come.
pub(crate) const COALESCE: usize = 64 << 10;
/// Writeback of a file being written is started after this many new bytes.
pub(crate) const WRITEBACK: u64 = 8 << 20;
/// Bytes per buffer handed to the helper.
const HASH_BUFFER: usize = 256 << 10;
/// Buffers queued for the helper at most; the caller waits when it is this far ahead. With
/// the buffer being filled and the one being hashed, a blob holds at most
/// `(HASH_QUEUE + 2) × HASH_BUFFER` bytes of memory.
const HASH_QUEUE: usize = 4;

/// Bytes being written to a temp file. Dropping it removes the file.
#[derive(Debug)]
pub(crate) struct TempBlob {
    path: PathBuf,
    /// `None` once finished.
    file: Option<File>,
    /// Small writes not yet in the file.
    pending: Vec<u8>,
    hash: Hash,
    written: u64,
    /// Whether to start writeback as the file grows (see the module docs).
    writeback: bool,
    /// The file's bytes before this offset have had their writeback started.
    written_back: u64,
}

/// Where the bytes are hashed.
#[derive(Debug)]
enum Hash {
    /// On the caller's thread.
    Inline(Hasher),
    /// On a helper thread.
    Helper(Helper),
}

/// The caller's end of a helper thread that hashes buffers in order.
#[derive(Debug)]
struct Helper {
    /// The buffer being filled.
    filling: Vec<u8>,
    /// Full buffers, in order; `None` once finished.
    send: Option<SyncSender<Vec<u8>>>,
    /// Hashed buffers coming back for reuse.
    recycled: Receiver<Vec<u8>>,
    thread: Option<JoinHandle<Digest>>,
}

impl Helper {
    /// Starts a helper that continues `hasher`; `None` when no thread can be started (the
    /// caller then keeps hashing inline).
    fn start(hasher: Hasher) -> Option<Self> {
        let (send, queue) = mpsc::sync_channel::<Vec<u8>>(HASH_QUEUE);
        let (give_back, recycled) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("kiln-store-hash".to_owned())
            .spawn(move || {
                let mut hasher = hasher;
                for mut buffer in queue {
                    hasher.update(&buffer);
                    buffer.clear();
                    // The caller may be gone (a dropped upload): nothing to give back to.
                    let _ = give_back.send(buffer);
                }
                hasher.finish()
            });
        match thread {
            Ok(thread) => Some(Self {
                filling: Vec::with_capacity(HASH_BUFFER),
                send: Some(send),
                recycled,
                thread: Some(thread),
            }),
            Err(err) => {
                tracing::debug!(error = %err, "no thread to hash on; hashing inline");
                None
            }
        }
    }

    /// Copies `bytes` into buffers and queues every full one.
    fn feed(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let room = HASH_BUFFER - self.filling.len();
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.filling.extend_from_slice(now);
            bytes = rest;
            if self.filling.len() == HASH_BUFFER {
                self.queue()?;
            }
        }
        Ok(())
    }

    /// Queues the buffer being filled and takes an empty one.
    fn queue(&mut self) -> io::Result<()> {
        let next = self
            .recycled
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(HASH_BUFFER));
        let full = mem::replace(&mut self.filling, next);
        let gone = || io::Error::other("the hashing thread stopped");
        self.send
            .as_ref()
            .ok_or_else(gone)?
            .send(full)
            .map_err(|_| gone())
    }

    /// Queues what is left and waits for the digest.
    fn finish(mut self) -> io::Result<Digest> {
        if !self.filling.is_empty() {
            self.queue()?;
        }
        drop(self.send.take());
        self.thread
            .take()
            .ok_or_else(|| io::Error::other("the hashing thread is gone"))?
            .join()
            .map_err(|_| io::Error::other("the hashing thread panicked"))
    }
}

impl TempBlob {
    /// Creates the temp file at `path`, hashed with `algorithm`; `writeback`: the file will
    /// be fsynced, so start writing it to disk as it grows.
    pub(crate) fn create(path: PathBuf, writeback: bool, algorithm: Algorithm) -> Result<Self> {
        let file = File::create(&path).map_err(StoreError::io("create temp file", &path))?;
        Ok(Self {
            path,
            file: Some(file),
            pending: Vec::new(),
            hash: Hash::Inline(Hasher::with(algorithm)),
            written: 0,
            writeback,
            written_back: 0,
        })
    }

    /// Appends bytes: hashed, counted, and written (or coalesced with the next ones).
    pub(crate) fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let Some(file) = self.file.as_mut() else {
            return Err(StoreError::io("write", &self.path)(io::Error::other(
                "temp file already finished",
            )));
        };
        self.written += bytes.len() as u64;
        if self.written > HELPER_FROM
            && let Hash::Inline(hasher) = &mut self.hash
            && let Some(helper) = Helper::start(mem::take(hasher))
        {
            self.hash = Hash::Helper(helper);
        }
        // Hand the bytes to the helper first, so that it hashes while this thread writes.
        match &mut self.hash {
            Hash::Inline(hasher) => hasher.update(bytes),
            Hash::Helper(helper) => helper
                .feed(bytes)
                .map_err(StoreError::io("hash", &self.path))?,
        }
        write_coalesced(file, &mut self.pending, bytes)
            .map_err(StoreError::io("write temp file", &self.path))?;
        let in_file = self.written - self.pending.len() as u64;
        if self.writeback && in_file - self.written_back >= WRITEBACK {
            start_writeback(file, self.written_back, in_file - self.written_back);
            self.written_back = in_file;
        }
        Ok(())
    }

    /// Bytes written so far.
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// Writes what is still pending and finishes the hash; returns the path, the file, the
    /// digest and the size. The caller now owns the temp file's removal.
    pub(crate) fn finish(mut self) -> Result<(PathBuf, File, Digest, u64)> {
        let path = mem::take(&mut self.path);
        let Some(mut file) = self.file.take() else {
            return Err(StoreError::io("write", &path)(io::Error::other(
                "temp file already finished",
            )));
        };
        let hash = mem::replace(&mut self.hash, Hash::Inline(Hasher::new()));
        let finished = file
            .write_all(&self.pending)
            .map_err(StoreError::io("write temp file", &path))
            .and_then(|()| match hash {
                Hash::Inline(hasher) => Ok(hasher.finish()),
                Hash::Helper(helper) => helper.finish().map_err(StoreError::io("hash", &path)),
            });
        match finished {
            Ok(digest) => Ok((path, file, digest, self.written)),
            Err(err) => {
                let _ = fs::remove_file(&path);
                Err(err)
            }
        }
    }
}

/// Writes `bytes` after whatever is pending: small writes gather in `pending` (up to
/// [`COALESCE`] bytes), large ones go straight from the caller's slice.
fn write_coalesced(file: &mut File, pending: &mut Vec<u8>, bytes: &[u8]) -> io::Result<()> {
    if pending.len() + bytes.len() <= COALESCE {
        if pending.capacity() == 0 {
            pending.reserve_exact(COALESCE);
        }
        pending.extend_from_slice(bytes);
        return Ok(());
    }
    if !pending.is_empty() {
        file.write_all(pending)?;
        pending.clear();
    }
    if bytes.len() >= COALESCE {
        file.write_all(bytes)
    } else {
        pending.extend_from_slice(bytes);
        Ok(())
    }
}

/// Asks the kernel to start writing `len` bytes of `file` from `offset` to disk, without
/// waiting for it (a hint; see the module docs).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // the crate's one FFI call: std has no sync_file_range
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: the descriptor belongs to `file`, which is borrowed for the call, and
    // sync_file_range reads no memory of this process.
    let done = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
    if done != 0 {
        // The fsync at commit still does the whole job.
        tracing::trace!(error = %io::Error::last_os_error(), "sync_file_range");
    }
}

/// Elsewhere the fsync at commit does all the writing.
#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

impl Drop for TempBlob {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            // Nothing to report to: the temp area is also cleaned at the next open. A helper
            // thread ends by itself once its queue is dropped.
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Hashes a file with `algorithm`.
pub(crate) fn hash_file(path: &Path, algorithm: Algorithm) -> std::io::Result<(Digest, u64)> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Hasher::with(algorithm);
    // No bigger than the file (plus one byte to see its end in one read): most blobs are
    // small, and zeroing a large buffer for each would cost more than hashing them.
    let len = file.metadata()?.len().saturating_add(1).min(1 << 20);
    let mut buffer = vec![0u8; usize::try_from(len).unwrap_or(1 << 20)];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        size += n as u64;
    }
    Ok((hasher.finish(), size))
}

/// An upload session: a temp blob that outlives HTTP requests.
#[derive(Debug)]
pub(crate) struct UploadSession {
    pub repo: String,
    pub started_ms: u64,
    /// When a request last touched it (create, append, status): idle sessions expire.
    pub last_ms: u64,
    pub temp: Option<TempBlob>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `sizes` chunks of a known pattern; returns what `finish` says and the bytes.
    fn write_in_chunks(sizes: &[usize]) -> (Digest, u64, Vec<u8>, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        // With writeback: it must not change what lands in the file.
        let mut temp = TempBlob::create(dir.path().join("t"), true, Algorithm::Sha256).unwrap();
        let mut all = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            let chunk: Vec<u8> = (0..size).map(|j| (i * 31 + j * 7) as u8).collect();
            temp.write(&chunk).unwrap();
            all.extend_from_slice(&chunk);
        }
        assert_eq!(temp.written(), all.len() as u64);
        let (path, file, digest, size) = temp.finish().unwrap();
        drop(file);
        let on_disk = fs::read(path).unwrap();
        (digest, size, on_disk, all)
    }

    #[test]
    fn small_and_large_chunks_in_any_mix_hash_and_land_in_order() {
        let mixes: [&[usize]; 5] = [
            &[],
            &[1, 2, 3],
            &[COALESCE - 1, 1, 1, COALESCE, COALESCE + 1, 5],
            // Past the helper threshold in the middle of a chunk, with partial buffers.
            &[3 << 20, (1 << 20) + 17, HASH_BUFFER - 1, 1, 9, 2 << 20, 1],
            // Crosses the threshold with tiny chunks only.
            &[1000; 5000],
        ];
        for sizes in mixes {
            let (digest, size, on_disk, all) = write_in_chunks(sizes);
            assert_eq!(size, all.len() as u64, "{sizes:?}");
            assert!(on_disk == all, "file content differs for {sizes:?}");
            assert_eq!(digest, Digest::of(&all), "{sizes:?}");
        }
    }

    #[test]
    fn a_dropped_temp_blob_removes_its_file_even_with_a_helper_running() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let mut temp = TempBlob::create(path.clone(), false, Algorithm::Sha256).unwrap();
        temp.write(&vec![7u8; (HELPER_FROM as usize) + 1]).unwrap();
        assert!(matches!(temp.hash, Hash::Helper(_)));
        drop(temp);
        assert!(!path.exists());
    }
}
