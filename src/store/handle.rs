//! The [`Store`] handle: opening a root (lock, database, recovery), the shared state of
//! one open store, and the helpers every operation uses (I/O: filesystem and redb).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, WriteTransaction,
};

use crate::oci::digest::Digest;
use crate::store::backend::UnsyncedFile;
use crate::store::clock::StoreClock;
use crate::store::error::{Result, StoreError};
use crate::store::flight::{Flights, lock};
use crate::store::layout::{Layout, RootLock};
use crate::store::tables;
use crate::store::temp::UploadSession;
use crate::store::types::RecoveryReport;

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Create the root and an empty store when there is none (`false` for the offline CLI,
    /// which must not invent a store where the user mistyped a path).
    pub create: bool,
    /// Where "now" comes from.
    pub clock: StoreClock,
    /// Fsync blobs, directories and commits (the default). Only tests of logic, not of
    /// durability, turn it off: every write still reaches the kernel before the call that
    /// made it returns, and the kernel's page cache outlives the process, so a store
    /// survives the death of its process (SIGKILL) exactly as with fsync; a power loss or
    /// kernel crash may lose or tear what was committed.
    pub sync: bool,
    /// Memory redb may use to cache pages.
    pub cache_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            create: true,
            clock: StoreClock::System,
            sync: true,
            cache_bytes: 256 << 20,
        }
    }
}

/// An open store. Cheap to clone (an `Arc`); `Send + Sync`; every method is synchronous
/// and may block on disk I/O, so async callers run it in `spawn_blocking`.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

/// The state one open store shares between its clones.
pub(crate) struct Inner {
    pub layout: Layout,
    pub db: Database,
    pub clock: StoreClock,
    pub sync: bool,
    pub flights: Arc<Flights>,
    /// Upload sessions by id. Each has its own lock, so chunks of different uploads are
    /// written in parallel.
    pub uploads: Mutex<BTreeMap<String, Arc<Mutex<UploadSession>>>>,
    /// Use not yet written: a pull or a check costs a map insert, not a transaction.
    pub pending_access: Mutex<BTreeMap<Digest, PendingUse>>,
    /// While a GC runs: the digests that mutations made reachable since its mark, not yet
    /// taken by the sweep (the write barrier the sweep re-checks against). A log, not a
    /// set: a writer pays a push, the sweep deduplicates.
    pub barrier: Mutex<Option<Vec<Digest>>>,
    /// One GC or verify at a time.
    pub maintenance: Mutex<()>,
    pub temp_seq: AtomicU64,
    pub recovery: Mutex<RecoveryReport>,
    // Dropped last: the database is closed before another process may take the root.
    _lock: RootLock,
}

/// The latest uses of one blob not yet written to its row (0: none).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PendingUse {
    /// A pull.
    pub accessed_ms: u64,
    /// A client asking whether it is there (HEAD), before a push that may skip it.
    pub checked_ms: u64,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.layout.root())
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Best effort: a clean shutdown keeps the access times of the last pulls.
        if let Err(err) = flush_access(self) {
            tracing::warn!(error = %err, "could not write last-access times while closing the store");
        }
    }
}

impl Store {
    /// Opens the store under `root`: takes the lock, opens (or creates) the database,
    /// then recovers from whatever a crash left (see [`RecoveryReport`]).
    pub fn open(root: impl AsRef<Path>, options: StoreOptions) -> Result<Self> {
        let StoreOptions {
            create,
            clock,
            sync,
            cache_bytes,
        } = options;
        let layout = Layout::new(root.as_ref());
        if !create && !layout.meta().is_file() {
            return Err(StoreError::Missing {
                root: layout.root().to_owned(),
            });
        }
        fs::create_dir_all(layout.root()).map_err(StoreError::io("create", layout.root()))?;
        let root_lock = RootLock::acquire(&layout)?;
        layout.make_dirs(sync)?;
        let mut builder = Database::builder();
        builder.set_cache_size(cache_bytes);
        let db = if sync {
            builder.create(layout.meta())
        } else {
            let meta = layout.meta();
            let file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&meta)
                .map_err(StoreError::io("open", &meta))?;
            UnsyncedFile::new(file).and_then(|backend| builder.create_with_backend(backend))
        }
        .map_err(StoreError::db("open meta.redb"))?;
        let store = Self {
            inner: Arc::new(Inner {
                layout,
                db,
                clock,
                sync,
                flights: Arc::default(),
                uploads: Mutex::default(),
                pending_access: Mutex::default(),
                barrier: Mutex::default(),
                maintenance: Mutex::default(),
                temp_seq: AtomicU64::new(0),
                recovery: Mutex::default(),
                _lock: root_lock,
            }),
        };
        store.write("create tables", |txn| {
            let migrated = crate::store::migrate::migrate(txn)?;
            if migrated > 0 {
                tracing::info!(
                    rows = migrated,
                    "moved the cache store's metadata to the current schema"
                );
            }
            txn.open_table(tables::BLOBS)
                .map_err(StoreError::db("create tables"))?;
            txn.open_table(tables::MANIFESTS)
                .map_err(StoreError::db("create tables"))?;
            txn.open_table(tables::TAGS)
                .map_err(StoreError::db("create tables"))?;
            txn.open_table(tables::LINKS)
                .map_err(StoreError::db("create tables"))?;
            txn.open_table(tables::REFERRERS)
                .map_err(StoreError::db("create tables"))?;
            txn.open_table(tables::LEASES)
                .map_err(StoreError::db("create tables"))?;
            txn.open_table(tables::UPLOADS)
                .map_err(StoreError::db("create tables"))?;
            // Added after the first release: a store written before it gains the empty
            // table here, with nothing to move.
            txn.open_table(tables::BASES)
                .map_err(StoreError::db("create tables"))?;
            Ok(())
        })?;
        let report = store.recover()?;
        if !report.is_clean() {
            tracing::warn!(root = %store.root().display(), ?report, "recovered the cache store after an unclean stop");
        }
        *lock(&store.inner.recovery) = report;
        Ok(store)
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        self.inner.layout.root()
    }

    /// The on-disk layout.
    pub fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    /// The clock the store reads.
    pub fn clock(&self) -> &StoreClock {
        &self.inner.clock
    }

    /// What start-up recovery found and did.
    pub fn recovery_report(&self) -> RecoveryReport {
        lock(&self.inner.recovery).clone()
    }

    /// Writes pending access times and closes the store, releasing the root.
    pub fn close(self) -> Result<()> {
        flush_access(&self.inner).map(drop)
    }

    /// Simulates a crash for tests: drops the store without writing pending access times.
    #[cfg(test)]
    pub(crate) fn crash(self) {
        lock(&self.inner.pending_access).clear();
    }

    /// Records that `digest` was used now (a pull). Costs a map insert; the time reaches
    /// the database with the next [`Store::flush_access`] (the registry calls it on a
    /// timer; GC, du and close call it first).
    pub fn touch(&self, digest: Digest) {
        let now = self.inner.clock.now_ms();
        let mut pending = lock(&self.inner.pending_access);
        let entry = pending.entry(digest).or_default();
        entry.accessed_ms = entry.accessed_ms.max(now);
    }

    /// Records that a client asked now whether `digest` is there (HEAD on a blob): a push
    /// that finds it may skip uploading it, so GC's grace window protects it as if it had
    /// just been pushed. Batched like [`Store::touch`].
    pub fn check(&self, digest: Digest) {
        let now = self.inner.clock.now_ms();
        let mut pending = lock(&self.inner.pending_access);
        let entry = pending.entry(digest).or_default();
        entry.checked_ms = entry.checked_ms.max(now);
    }

    /// Writes the pending access times in one transaction; returns how many rows changed.
    pub fn flush_access(&self) -> Result<usize> {
        flush_access(&self.inner)
    }

    /// Runs `body` in one write transaction and commits it. Every mutation of the store
    /// goes through here, so each is one transaction that updates every table it touches.
    pub(crate) fn write<T>(
        &self,
        action: &'static str,
        body: impl FnOnce(&WriteTransaction) -> Result<T>,
    ) -> Result<T> {
        write(&self.inner, Durability::Immediate, action, body)
    }

    /// A write transaction that reaches the disk only with the next durable commit (any
    /// [`Store::write`], whoever makes it); every later transaction sees it at once. A crash
    /// before that loses it, so it is only for changes whose loss is harmless: upload rows,
    /// which recovery removes anyway, and GC sweep batches, whose files are removed only
    /// once a durable commit covers them. It saves their fsync.
    pub(crate) fn write_lazy<T>(
        &self,
        action: &'static str,
        body: impl FnOnce(&WriteTransaction) -> Result<T>,
    ) -> Result<T> {
        write(&self.inner, Durability::None, action, body)
    }

    /// A read transaction: a consistent snapshot.
    pub(crate) fn read(&self, action: &'static str) -> Result<ReadTransaction> {
        self.inner.db.begin_read().map_err(StoreError::db(action))
    }

    /// Records digests that a mutation (about to commit) makes reachable, so that a GC
    /// sweeping concurrently keeps them. Call it inside the write transaction.
    pub(crate) fn protect(&self, digests: impl IntoIterator<Item = Digest>) {
        if let Some(log) = lock(&self.inner.barrier).as_mut() {
            log.extend(digests);
        }
    }

    /// A fresh temp path, unique within this process (only one process has the root).
    pub(crate) fn temp_path(&self, kind: &str) -> PathBuf {
        let seq = self.inner.temp_seq.fetch_add(1, Ordering::Relaxed);
        self.inner.layout.tmp().join(format!("{kind}-{seq}"))
    }
}

fn write<T>(
    inner: &Inner,
    durability: Durability,
    action: &'static str,
    body: impl FnOnce(&WriteTransaction) -> Result<T>,
) -> Result<T> {
    let mut txn = inner.db.begin_write().map_err(StoreError::db(action))?;
    txn.set_durability(durability)
        .map_err(StoreError::db(action))?;
    let value = body(&txn)?;
    txn.commit().map_err(StoreError::db(action))?;
    Ok(value)
}

fn flush_access(inner: &Inner) -> Result<usize> {
    let pending = std::mem::take(&mut *lock(&inner.pending_access));
    if pending.is_empty() {
        return Ok(0);
    }
    write(inner, Durability::Immediate, "write access times", |txn| {
        let mut blobs = txn
            .open_table(tables::BLOBS)
            .map_err(StoreError::db("write access times"))?;
        let mut changed = 0;
        for (digest, used) in pending {
            let Some(row) = blobs
                .get(digest.to_key().as_slice())
                .map_err(StoreError::db("write access times"))?
                .map(|row| tables::BlobRow::decode(row.value()))
            else {
                continue;
            };
            if row.accessed_ms < used.accessed_ms || row.pushed_ms < used.checked_ms {
                let row = tables::BlobRow {
                    accessed_ms: row.accessed_ms.max(used.accessed_ms),
                    pushed_ms: row.pushed_ms.max(used.checked_ms),
                    ..row
                };
                blobs
                    .insert(digest.to_key().as_slice(), row.encode())
                    .map_err(StoreError::db("write access times"))?;
                changed += 1;
            }
        }
        Ok(changed)
    })
}
