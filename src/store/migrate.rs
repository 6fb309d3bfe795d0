//! Moves a store written by the first schema to the current tables, inside the
//! transaction that opens the store, so a crash leaves either schema whole (redb I/O).
//!
//! The first schema keyed digests, all sha256, by their 32 raw bytes in the tables
//! `blobs`, `manifests`, `tags`, `links` and `referrers`. The current one keys them by
//! [`Digest::to_key`] (an algorithm byte, then the hash) in tables of new names; leases and
//! uploads hold digests as text and keep their tables. Blob files need no move: sha256
//! blobs were already under `blobs/sha256/`.

use redb::{ReadableTable, TableDefinition, TableHandle as _, WriteTransaction};

use crate::oci::digest::{Digest, DigestKey};
use crate::store::error::{Result, StoreError};
use crate::store::tables;

const OLD_BLOBS: TableDefinition<[u8; 32], (u64, u64, u64)> = TableDefinition::new("blobs");
const OLD_MANIFESTS: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("manifests");
const OLD_TAGS: TableDefinition<(&str, &str), [u8; 32]> = TableDefinition::new("tags");
const OLD_LINKS: TableDefinition<(&str, [u8; 32]), ()> = TableDefinition::new("links");
const OLD_REFERRERS: TableDefinition<([u8; 32], [u8; 32]), ()> = TableDefinition::new("referrers");

fn key(bytes: [u8; 32]) -> DigestKey {
    Digest::from_bytes(bytes).to_key()
}

fn db<E: Into<redb::Error>>(err: E) -> StoreError {
    StoreError::db("migrate the metadata schema")(err)
}

/// Moves every row of the first schema's tables into the current ones and deletes the old
/// tables. Returns how many rows moved (0 for a store of the current schema).
pub(crate) fn migrate(txn: &WriteTransaction) -> Result<u64> {
    let old = txn
        .list_tables()
        .map_err(db)?
        .any(|table| table.name() == OLD_BLOBS.name());
    if !old {
        return Ok(0);
    }
    let mut moved = 0u64;
    {
        let from = txn.open_table(OLD_BLOBS).map_err(db)?;
        let mut to = txn.open_table(tables::BLOBS).map_err(db)?;
        for row in from.iter().map_err(db)? {
            let (k, v) = row.map_err(db)?;
            // The first schema had no push time: the commit time stands in for it.
            let (size, created, accessed) = v.value();
            to.insert(
                key(k.value()).as_slice(),
                (size, created, accessed, created),
            )
            .map_err(db)?;
            moved += 1;
        }
    }
    {
        let from = txn.open_table(OLD_MANIFESTS).map_err(db)?;
        let mut to = txn.open_table(tables::MANIFESTS).map_err(db)?;
        for row in from.iter().map_err(db)? {
            let (k, v) = row.map_err(db)?;
            to.insert(key(k.value()).as_slice(), v.value())
                .map_err(db)?;
            moved += 1;
        }
    }
    {
        let from = txn.open_table(OLD_TAGS).map_err(db)?;
        let mut to = txn.open_table(tables::TAGS).map_err(db)?;
        for row in from.iter().map_err(db)? {
            let (k, v) = row.map_err(db)?;
            to.insert(k.value(), key(v.value()).as_slice())
                .map_err(db)?;
            moved += 1;
        }
    }
    {
        let from = txn.open_table(OLD_LINKS).map_err(db)?;
        let mut to = txn.open_table(tables::LINKS).map_err(db)?;
        for row in from.iter().map_err(db)? {
            let (k, _) = row.map_err(db)?;
            let (repo, digest) = k.value();
            to.insert((repo, key(digest).as_slice()), ()).map_err(db)?;
            moved += 1;
        }
    }
    {
        let from = txn.open_table(OLD_REFERRERS).map_err(db)?;
        let mut to = txn.open_table(tables::REFERRERS).map_err(db)?;
        for row in from.iter().map_err(db)? {
            let (k, _) = row.map_err(db)?;
            let (subject, referrer) = k.value();
            to.insert((key(subject).as_slice(), key(referrer).as_slice()), ())
                .map_err(db)?;
            moved += 1;
        }
    }
    for name in [
        OLD_BLOBS.name(),
        OLD_MANIFESTS.name(),
        OLD_TAGS.name(),
        OLD_LINKS.name(),
        OLD_REFERRERS.name(),
    ] {
        txn.delete_table(redb::TableDefinition::<&str, ()>::new(name))
            .map_err(db)?;
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::name::{Reference, RepoName, Tag};
    use crate::store::fixtures::image_manifest;
    use crate::store::types::LeaseTarget;
    use crate::store::{Store, StoreOptions, VerifyOptions};

    /// Writes a store the way the first schema did: files under `blobs/sha256/`, rows keyed
    /// by 32 raw bytes.
    fn first_schema_store(root: &std::path::Path) -> (Digest, Digest, Digest) {
        let (config, layer) = (b"{}".as_slice(), b"layer bytes".as_slice());
        let manifest = image_manifest(
            (Digest::of(config), config.len() as u64),
            &[(Digest::of(layer), layer.len() as u64)],
        );
        let signature = crate::store::fixtures::referrer_manifest(
            Digest::of(&manifest),
            (Digest::of(config), config.len() as u64),
            "application/vnd.example",
        );
        for bytes in [config, layer, &manifest, &signature] {
            let digest = Digest::of(bytes);
            let dir = root.join("blobs/sha256").join(&digest.hex()[..2]);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(digest.hex()), bytes).unwrap();
        }
        let db = redb::Database::create(root.join("meta.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut blobs = txn.open_table(OLD_BLOBS).unwrap();
            let mut links = txn.open_table(OLD_LINKS).unwrap();
            let raw =
                |bytes: &[u8]| -> [u8; 32] { Digest::of(bytes).as_bytes().try_into().unwrap() };
            for bytes in [config, layer, &manifest, &signature] {
                blobs
                    .insert(raw(bytes), (bytes.len() as u64, 1, 1))
                    .unwrap();
                links.insert(("team-a/app", raw(bytes)), ()).unwrap();
            }
            let mut manifests = txn.open_table(OLD_MANIFESTS).unwrap();
            for bytes in [&manifest, &signature] {
                let parsed = crate::store::manifest::parse(bytes).unwrap();
                let media_type = parsed.media_type.clone().unwrap_or_default();
                let row = tables::ManifestRow::new(parsed, media_type, false);
                manifests
                    .insert(raw(bytes), tables::encode(&row).as_slice())
                    .unwrap();
            }
            let mut tags = txn.open_table(OLD_TAGS).unwrap();
            tags.insert(("team-a/app", "v1"), raw(&manifest)).unwrap();
            let mut referrers = txn.open_table(OLD_REFERRERS).unwrap();
            referrers
                .insert((raw(&manifest), raw(&signature)), ())
                .unwrap();
        }
        txn.commit().unwrap();
        (
            Digest::of(layer),
            Digest::of(&manifest),
            Digest::of(&signature),
        )
    }

    #[test]
    fn a_first_schema_store_opens_with_everything_in_place_and_verifies_clean() {
        let dir = tempfile::tempdir().unwrap();
        let (layer, manifest, signature) = first_schema_store(dir.path());
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let tag = Reference::tag("v1").unwrap();
        assert_eq!(
            store.manifest("team-a/app", &tag).unwrap().unwrap().digest,
            manifest
        );
        assert!(store.stat_blob("team-a/app", layer).unwrap().is_some());
        let referrers = store.referrers("team-a/app", manifest, None).unwrap();
        assert_eq!(referrers.len(), 1);
        assert_eq!(referrers[0].digest, signature);
        store
            .lease_acquire(
                "l",
                &[LeaseTarget::Tag {
                    repository: RepoName::parse("team-a/app").unwrap(),
                    tag: Tag::parse("v1").unwrap(),
                }],
                std::time::Duration::from_secs(60),
            )
            .unwrap();
        let report = store.verify(&VerifyOptions::default()).unwrap();
        assert!(report.is_clean(), "{report:?}");
        let rows: Vec<String> = store
            .table_rows()
            .unwrap()
            .into_iter()
            .map(|(table, _)| table)
            .collect();
        assert!(!rows.iter().any(|t| t == "blobs"), "{rows:?}");
        store.close().unwrap();
        // Opening again finds nothing to move.
        let again = Store::open(dir.path(), StoreOptions::default()).unwrap();
        assert!(again.stat_blob("team-a/app", layer).unwrap().is_some());
    }
}
