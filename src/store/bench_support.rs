//! Bulk loading for benchmarks: writes many blob files and rows quickly, without the
//! per-blob fsync and transaction of the real ingest path (filesystem and redb I/O).
//! Not for production use: it trusts its input and is not crash-safe.

use crate::digest::Digest;
use crate::store::error::{Result, StoreError};
use crate::store::handle::Store;
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

/// Loads `items` into `repo` with the given creation time, in transactions of `batch`.
pub fn load(
    store: &Store,
    repo: &str,
    items: &[Item],
    created_ms: u64,
    batch: usize,
) -> Result<()> {
    let layout = store.layout().clone();
    for chunk in items.chunks(batch.max(1)) {
        let mut rows = Vec::with_capacity(chunk.len());
        for item in chunk {
            let digest = Digest::of(&item.bytes);
            let shard = layout.shard(&digest);
            if !shard.is_dir() {
                std::fs::create_dir_all(&shard).map_err(StoreError::io("create", &shard))?;
            }
            let path = layout.blob(&digest);
            std::fs::write(&path, &item.bytes).map_err(StoreError::io("write", &path))?;
            let row = if item.manifest {
                let parsed = manifest::parse(&item.bytes)?;
                Some(ManifestRow {
                    media_type: parsed.media_type.unwrap_or_default(),
                    references: parsed.references,
                    subject: parsed.subject,
                    artifact_type: parsed.artifact_type,
                    annotations: parsed.annotations,
                    on_demand: false,
                })
            } else {
                None
            };
            rows.push((digest, item.bytes.len() as u64, row, item.tag.clone()));
        }
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
                let blob = BlobRow {
                    size: *size,
                    created_ms,
                    accessed_ms: created_ms,
                };
                blobs
                    .insert(digest.as_bytes(), blob.encode())
                    .map_err(StoreError::db(action))?;
                links
                    .insert((repo, *digest.as_bytes()), ())
                    .map_err(StoreError::db(action))?;
                if let Some(row) = row {
                    manifests
                        .insert(digest.as_bytes(), tables::encode(row).as_slice())
                        .map_err(StoreError::db(action))?;
                }
                if let Some(tag) = tag {
                    tags.insert((repo, tag.as_str()), *digest.as_bytes())
                        .map_err(StoreError::db(action))?;
                }
            }
            Ok(())
        })?;
    }
    Ok(())
}
