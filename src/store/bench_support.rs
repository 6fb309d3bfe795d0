//! Bulk loading for benchmarks: writes many blob files and rows quickly, without the
//! per-blob fsync and transaction of the real ingest path (filesystem and redb I/O).
//! Not for production use: it trusts its input and is not crash-safe.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::oci::digest::Digest;
use crate::store::error::{Result, StoreError};
use crate::store::flight::lock;
use crate::store::handle::Store;
use crate::store::layout::Layout;
use crate::store::manifest;
use crate::store::tables::{self, BlobRow, ManifestRow};

/// One blob to load, with its tag if it is a tagged manifest.
#[derive(Debug, Clone)]
pub struct Item {
    /// The bytes (a manifest's body when `manifest` is set).
    pub bytes: Vec<u8>,
    /// Whether it is a manifest (parsed and indexed).
    pub manifest: bool,
    /// A tag pointing at it.
    pub tag: Option<String>,
}

/// Threads writing files at once: creating a file is mostly kernel time, and several
/// threads spread over different shard directories overlap it.
const THREADS: usize = 8;

/// A blob ready for its rows: digest, size, manifest row, tag.
type Loaded = (Digest, u64, Option<ManifestRow>, Option<String>);

/// Loads `items` into `repo` with the given creation time: files written by several
/// threads (no fsync), rows in transactions of `batch`.
pub fn load(
    store: &Store,
    repo: &str,
    items: &[Item],
    created_ms: u64,
    batch: usize,
) -> Result<()> {
    let layout = store.layout().clone();
    // Every shard up front: one `mkdir` each instead of a `stat` per blob.
    for shard in 0..=255u8 {
        let dir = layout
            .algorithm_dir(crate::oci::digest::Algorithm::Sha256)
            .join(format!("{shard:02x}"));
        std::fs::create_dir_all(&dir).map_err(StoreError::io("create", &dir))?;
    }
    for chunk in items.chunks(batch.max(1)) {
        let next = AtomicUsize::new(0);
        let loaded: Mutex<Vec<Loaded>> = Mutex::new(Vec::with_capacity(chunk.len()));
        let failed: Mutex<Option<StoreError>> = Mutex::new(None);
        std::thread::scope(|scope| {
            for _ in 0..THREADS {
                scope.spawn(|| {
                    while let Some(item) = chunk.get(next.fetch_add(1, Ordering::Relaxed)) {
                        match load_file(&layout, item) {
                            Ok(row) => lock(&loaded).push(row),
                            Err(err) => {
                                lock(&failed).get_or_insert(err);
                                return;
                            }
                        }
                    }
                });
            }
        });
        if let Some(err) = lock(&failed).take() {
            return Err(err);
        }
        let rows = std::mem::take(&mut *lock(&loaded));
        insert_rows(store, repo, rows, created_ms)?;
    }
    Ok(())
}

/// Writes one item's file and prepares its rows.
fn load_file(layout: &Layout, item: &Item) -> Result<Loaded> {
    let digest = Digest::of(&item.bytes);
    let path = layout.blob(&digest);
    std::fs::write(&path, &item.bytes).map_err(StoreError::io("write", &path))?;
    let row = if item.manifest {
        let parsed = manifest::parse(&item.bytes)?;
        let media_type = parsed.media_type.clone().unwrap_or_default();
        Some(ManifestRow::new(parsed, media_type, false))
    } else {
        None
    };
    Ok((digest, item.bytes.len() as u64, row, item.tag.clone()))
}

fn insert_rows(store: &Store, repo: &str, mut rows: Vec<Loaded>, created_ms: u64) -> Result<()> {
    // In key order: redb fills pages left to right.
    rows.sort_by_key(|(digest, ..)| *digest);
    store.write("bulk load", |txn| {
        let action = "bulk load";
        let mut blobs = txn
            .open_table(tables::BLOBS)
            .map_err(StoreError::db(action))?;
        let mut manifests = txn
            .open_table(tables::MANIFESTS)
            .map_err(StoreError::db(action))?;
        let mut links = txn
            .open_table(tables::LINKS)
            .map_err(StoreError::db(action))?;
        let mut tags = txn
            .open_table(tables::TAGS)
            .map_err(StoreError::db(action))?;
        for (digest, size, row, tag) in &rows {
            let blob = BlobRow::new(*size, created_ms);
            blobs
                .insert(digest.to_key().as_slice(), blob.encode())
                .map_err(StoreError::db(action))?;
            links
                .insert((repo, digest.to_key().as_slice()), ())
                .map_err(StoreError::db(action))?;
            if let Some(row) = row {
                manifests
                    .insert(digest.to_key().as_slice(), tables::encode(row).as_slice())
                    .map_err(StoreError::db(action))?;
            }
            if let Some(tag) = tag {
                tags.insert((repo, tag.as_str()), digest.to_key().as_slice())
                    .map_err(StoreError::db(action))?;
            }
        }
        Ok(())
    })
}
