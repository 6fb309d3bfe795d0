//! Where things live under a store's root directory, and the lock file that gives one
//! process the root (filesystem I/O).
//!
//! ```text
//! <root>/LOCK                      held with an exclusive file lock; names its holder
//! <root>/meta.redb                 the metadata database
//! <root>/blobs/<alg>/<ab>/<hex>    verified blobs, one file each (alg: sha256, sha512)
//! <root>/tmp/<name>                bytes being written (uploads, ingests); never read
//! <root>/quarantine/<hex>.<ms>     files that failed verification, kept for people
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::oci::digest::{Algorithm, Digest};
use crate::store::error::{Result, StoreError};

/// The paths of one store root.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The metadata database file.
    pub fn meta(&self) -> PathBuf {
        self.root.join("meta.redb")
    }

    /// The lock file.
    pub fn lock(&self) -> PathBuf {
        self.root.join("LOCK")
    }

    /// The directory of all blobs, one directory per algorithm beneath it.
    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }

    /// The directory of the blobs of one algorithm, holding their shards.
    pub fn algorithm_dir(&self, algorithm: Algorithm) -> PathBuf {
        self.blobs().join(algorithm.name())
    }

    /// The shard directory of a digest (its first two hex characters).
    pub fn shard(&self, digest: &Digest) -> PathBuf {
        self.algorithm_dir(digest.algorithm())
            .join(&digest.hex()[..2])
    }

    /// The digest a path under [`Layout::blobs`] stands for (`<alg>/<ab>/<hex>`), if it
    /// is a blob's name at all.
    pub fn digest_at(&self, path: &Path) -> Option<Digest> {
        let hex = path.file_name()?.to_str()?;
        let shard = path.parent()?;
        let algorithm = Algorithm::from_name(shard.parent()?.file_name()?.to_str()?)?;
        let digest = Digest::from_hex(algorithm, hex).ok()?;
        (shard.file_name()?.to_str()? == &hex[..2]).then_some(digest)
    }

    /// The final path of a blob.
    pub fn blob(&self, digest: &Digest) -> PathBuf {
        self.shard(digest).join(digest.hex())
    }

    /// The temp area.
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// The quarantine directory.
    pub fn quarantine(&self) -> PathBuf {
        self.root.join("quarantine")
    }

    /// Creates the directories a store needs (idempotent) and fsyncs the root so that they
    /// survive a crash.
    pub fn create_dirs(&self) -> Result<()> {
        self.make_dirs(true)
    }

    /// [`Layout::create_dirs`], with the fsyncs only when `sync` (see `StoreOptions::sync`).
    pub(crate) fn make_dirs(&self, sync: bool) -> Result<()> {
        let algorithms = Algorithm::ALL.map(|a| self.algorithm_dir(a));
        for dir in algorithms.iter().chain([&self.tmp(), &self.quarantine()]) {
            fs::create_dir_all(dir).map_err(StoreError::io("create directory", dir))?;
        }
        if sync {
            sync_dir(&self.root)?;
            sync_dir(&self.blobs())?;
        }
        Ok(())
    }
}

/// Fsyncs a directory, so that the entries created or renamed in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(StoreError::io("fsync directory", dir))
}

/// Milliseconds since the Unix epoch of a system time (0 before the epoch).
pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The exclusive hold of one process on a store root; released when dropped (or when the
/// process dies, since the kernel drops file locks with their descriptors).
#[derive(Debug)]
pub struct RootLock {
    _file: File,
}

impl RootLock {
    /// Takes the lock file of `layout` without waiting, and writes who holds it (pid, host,
    /// start time) so that a second process can name the holder in its error.
    pub fn acquire(layout: &Layout) -> Result<Self> {
        let path = layout.lock();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(StoreError::io("open lock file", &path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                // A holder that has not written its name yet is still a holder.
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(StoreError::Locked {
                    root: layout.root().to_owned(),
                    holder: if holder.is_empty() {
                        "holder unknown".to_owned()
                    } else {
                        holder.to_owned()
                    },
                });
            }
            Err(fs::TryLockError::Error(err)) => {
                return Err(StoreError::io("lock", &path)(err));
            }
        }
        let holder = format!(
            "pid {} on host {} since {}",
            std::process::id(),
            hostname(),
            rfc3339(SystemTime::now())
        );
        file.set_len(0)
            .and_then(|()| file.write_all(holder.as_bytes()))
            .and_then(|()| file.flush())
            .map_err(StoreError::io("write lock file", &path))?;
        Ok(Self { _file: file })
    }
}

/// A time as RFC 3339 (UTC, whole seconds), for people reading the lock file.
fn rfc3339(time: SystemTime) -> String {
    let secs = i64::try_from(unix_ms(time) / 1000).unwrap_or(i64::MAX);
    jiff::Timestamp::from_second(secs)
        .map(|ts| ts.to_string())
        .unwrap_or_else(|_| format!("{secs} s after the epoch"))
}

/// The machine's host name, from the kernel (Linux) or the environment; "unknown" otherwise.
fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_paths_are_sharded_by_the_first_two_hex_characters() {
        let layout = Layout::new("root");
        let digest = Digest::of(b"");
        assert_eq!(
            layout.blob(&digest),
            Path::new("root/blobs/sha256/e3")
                .join("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
    }

    #[test]
    fn a_second_lock_names_the_first_holder() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let first = RootLock::acquire(&layout).unwrap();
        let err = RootLock::acquire(&layout).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, StoreError::Locked { .. }), "{message}");
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        // When it took the root, as a time people read: "since 2026-12-02T13:50:12Z".
        let since = message.split(" since ").nth(1).unwrap_or_default();
        let stamp = since.split(')').next().unwrap_or_default();
        assert!(stamp.parse::<jiff::Timestamp>().is_ok(), "{message}");
        drop(first);
        RootLock::acquire(&layout).unwrap();
    }
}
