//! Which base images each Build resolved through the pull-through mirror: one row per
//! (Build UID, image, tag), the latest resolution replacing the one before (redb I/O).
//!
//! These rows are records, not content: they hold no blob, protect nothing from GC, and
//! are not part of [`Store::listing`]. The controller reads a Build's rows when an attempt
//! ends and forgets them with the Build. Two bounds keep them from growing without limit:
//! a Build keeps at most [`MAX_BASES_PER_BUILD`] (the oldest go first), and every GC run
//! drops rows older than [`BASES_MAX_AGE`], which is what removes the rows of Builds that
//! nobody asks about again.

use std::time::Duration;

use redb::ReadableTable;

use crate::oci::digest::Digest;
use crate::store::clock::millis;
use crate::store::error::{Result, StoreError};
use crate::store::handle::Store;
use crate::store::tables::{self, BaseRow};

/// The most base image rows one Build keeps. A Dockerfile names a handful of bases; this
/// bounds what a build pulling tag after tag through the mirror can make the store hold.
pub const MAX_BASES_PER_BUILD: usize = 64;

/// Rows older than this are dropped by the next GC run: long past any attempt's end, by
/// when the controller has read them or the Build is gone.
pub const BASES_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// One base image a Build resolved by tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseResolution {
    /// The image as the build named it: the mirror repository, `<mirror>/<path>`.
    pub image: String,
    /// The tag.
    pub tag: String,
    /// The manifest or index digest the tag resolved to.
    pub digest: Digest,
    /// When (ms after the epoch, by the store's clock).
    pub resolved_ms: u64,
}

type BasesTable = (&'static str, &'static str, &'static str);

/// The rows of `uid`, in key order: by image, then tag.
fn rows_of(
    table: &impl ReadableTable<BasesTable, &'static [u8]>,
    uid: &str,
    action: &'static str,
) -> Result<Vec<BaseResolution>> {
    let mut out = Vec::new();
    for entry in table
        .range((uid, "", "")..)
        .map_err(StoreError::db(action))?
    {
        let (key, value) = entry.map_err(StoreError::db(action))?;
        let (row_uid, image, tag) = key.value();
        if row_uid != uid {
            break;
        }
        let row: BaseRow = tables::decode("bases", value.value())?;
        out.push(BaseResolution {
            image: image.to_owned(),
            tag: tag.to_owned(),
            digest: row.digest,
            resolved_ms: row.resolved_ms,
        });
    }
    Ok(out)
}

fn check_part(what: &'static str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(StoreError::NameInvalid {
            what,
            value: value.to_owned(),
            reason: "empty".into(),
        });
    }
    Ok(())
}

impl Store {
    /// Records that the Build `uid` resolved `image:tag` to `digest` now, replacing what
    /// it recorded for the same image and tag. When the Build then has more than
    /// [`MAX_BASES_PER_BUILD`] rows, the oldest other ones are dropped in the same
    /// transaction.
    pub fn record_base(&self, uid: &str, image: &str, tag: &str, digest: Digest) -> Result<()> {
        check_part("build UID", uid)?;
        check_part("image", image)?;
        check_part("tag", tag)?;
        let action = "record a base image";
        let row = BaseRow {
            digest,
            resolved_ms: self.inner.clock.now_ms(),
        };
        self.write(action, |txn| {
            let mut table = txn
                .open_table(tables::BASES)
                .map_err(StoreError::db(action))?;
            table
                .insert((uid, image, tag), tables::encode(&row).as_slice())
                .map_err(StoreError::db(action))?;
            let rows = rows_of(&table, uid, action)?;
            let Some(excess) = rows.len().checked_sub(MAX_BASES_PER_BUILD) else {
                return Ok(());
            };
            // The row just written is never the one dropped, even when the clock has not
            // moved since the others; among equals, key order decides.
            let mut older: Vec<&BaseResolution> = rows
                .iter()
                .filter(|r| !(r.image == image && r.tag == tag))
                .collect();
            older.sort_by(|a, b| {
                (a.resolved_ms, &a.image, &a.tag).cmp(&(b.resolved_ms, &b.image, &b.tag))
            });
            for dropped in older.into_iter().take(excess) {
                table
                    .remove((uid, dropped.image.as_str(), dropped.tag.as_str()))
                    .map_err(StoreError::db(action))?;
            }
            Ok(())
        })
    }

    /// The base images the Build `uid` resolved, sorted by image, then tag (empty when
    /// none).
    pub fn bases(&self, uid: &str) -> Result<Vec<BaseResolution>> {
        let action = "read base images";
        let txn = self.read(action)?;
        let table = txn
            .open_table(tables::BASES)
            .map_err(StoreError::db(action))?;
        rows_of(&table, uid, action)
    }

    /// Forgets every base image of the Build `uid`; returns how many rows there were (0 the
    /// second time).
    pub fn forget_bases(&self, uid: &str) -> Result<usize> {
        let action = "forget base images";
        self.write(action, |txn| {
            let mut table = txn
                .open_table(tables::BASES)
                .map_err(StoreError::db(action))?;
            let rows = rows_of(&table, uid, action)?;
            for row in &rows {
                table
                    .remove((uid, row.image.as_str(), row.tag.as_str()))
                    .map_err(StoreError::db(action))?;
            }
            Ok(rows.len())
        })
    }

    /// Drops every base image row resolved more than `max_age` before `now_ms` (with
    /// `dry_run`, only counts them); returns how many. A row that cannot be decoded is
    /// dropped too, with a warning: nothing could ever read it, and keeping it would fail
    /// every read of its Build's rows.
    pub(crate) fn expire_bases(
        &self,
        now_ms: u64,
        max_age: Duration,
        dry_run: bool,
    ) -> Result<u64> {
        let action = "expire base images";
        let cutoff = now_ms.saturating_sub(millis(max_age));
        // Looked for in a snapshot first: most GC runs find nothing, and then cost no
        // write transaction.
        let found = {
            let txn = self.read(action)?;
            let table = txn
                .open_table(tables::BASES)
                .map_err(StoreError::db(action))?;
            expired_keys(&table, cutoff, action)?.len() as u64
        };
        if dry_run || found == 0 {
            return Ok(found);
        }
        self.write(action, |txn| {
            let mut table = txn
                .open_table(tables::BASES)
                .map_err(StoreError::db(action))?;
            // Again under the write lock: a row resolved again since is no longer old.
            let keys = expired_keys(&table, cutoff, action)?;
            for (uid, image, tag) in &keys {
                table
                    .remove((uid.as_str(), image.as_str(), tag.as_str()))
                    .map_err(StoreError::db(action))?;
            }
            Ok(keys.len() as u64)
        })
    }
}

/// The keys of rows resolved before `cutoff` (and of rows that do not decode), in order.
fn expired_keys(
    table: &impl ReadableTable<BasesTable, &'static [u8]>,
    cutoff: u64,
    action: &'static str,
) -> Result<Vec<(String, String, String)>> {
    let mut out = Vec::new();
    for entry in table.iter().map_err(StoreError::db(action))? {
        let (key, value) = entry.map_err(StoreError::db(action))?;
        let (uid, image, tag) = key.value();
        let expired = match tables::decode::<BaseRow>("bases", value.value()) {
            Ok(row) => row.resolved_ms < cutoff,
            Err(err) => {
                tracing::warn!(uid, image, tag, error = %err, "a base image row is unreadable: GC drops it");
                true
            }
        };
        if expired {
            out.push((uid.to_owned(), image.to_owned(), tag.to_owned()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::clock::StoreClock;
    use crate::store::{GcOptions, Policy, StoreOptions};

    const DAY: Duration = Duration::from_secs(24 * 60 * 60);

    fn open(dir: &std::path::Path, clock: &StoreClock) -> Store {
        Store::open(
            dir,
            StoreOptions {
                sync: false,
                clock: clock.clone(),
                ..StoreOptions::default()
            },
        )
        .unwrap()
    }

    fn summary(store: &Store, uid: &str) -> Vec<(String, String, Digest, u64)> {
        store
            .bases(uid)
            .unwrap()
            .into_iter()
            .map(|b| (b.image, b.tag, b.digest, b.resolved_ms))
            .collect()
    }

    fn row(image: &str, tag: &str, digest: Digest, ms: u64) -> (String, String, Digest, u64) {
        (image.to_owned(), tag.to_owned(), digest, ms)
    }

    #[test]
    fn a_later_resolution_replaces_the_earlier_and_listings_are_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let clock = StoreClock::manual(1_000);
        let store = open(dir.path(), &clock);
        let (one, two, three) = (Digest::of(b"1"), Digest::of(b"2"), Digest::of(b"3"));
        assert_eq!(store.bases("uid-a").unwrap(), []);
        store
            .record_base("uid-a", "docker.io/library/node", "20", one)
            .unwrap();
        clock.advance(Duration::from_secs(1));
        store
            .record_base("uid-a", "docker.io/library/alpine", "3", two)
            .unwrap();
        store
            .record_base("uid-a", "docker.io/library/alpine", "3.20", two)
            .unwrap();
        // Builds whose UIDs share a prefix are other Builds.
        store
            .record_base("uid-ab", "docker.io/library/alpine", "3", one)
            .unwrap();
        store
            .record_base("uid", "docker.io/library/alpine", "3", one)
            .unwrap();
        clock.advance(Duration::from_secs(1));
        store
            .record_base("uid-a", "docker.io/library/node", "20", three)
            .unwrap();
        assert_eq!(
            summary(&store, "uid-a"),
            [
                row("docker.io/library/alpine", "3", two, 2_000),
                row("docker.io/library/alpine", "3.20", two, 2_000),
                row("docker.io/library/node", "20", three, 3_000),
            ]
        );
        assert_eq!(
            summary(&store, "uid-ab"),
            [row("docker.io/library/alpine", "3", one, 2_000)]
        );
        assert!(matches!(
            store.record_base("", "docker.io/x", "1", one),
            Err(StoreError::NameInvalid {
                what: "build UID",
                ..
            })
        ));
        assert!(matches!(
            store.record_base("u", "docker.io/x", "", one),
            Err(StoreError::NameInvalid { what: "tag", .. })
        ));
    }

    #[test]
    fn a_build_keeps_its_newest_rows_up_to_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let clock = StoreClock::manual(1_000);
        let store = open(dir.path(), &clock);
        let digest = Digest::of(b"d");
        for n in 0..MAX_BASES_PER_BUILD {
            store
                .record_base("u", &format!("hub/img-{n:03}"), "1", digest)
                .unwrap();
            clock.advance(Duration::from_millis(1));
        }
        // Resolving the oldest again makes it the newest.
        store.record_base("u", "hub/img-000", "1", digest).unwrap();
        clock.advance(Duration::from_millis(1));
        for n in MAX_BASES_PER_BUILD..MAX_BASES_PER_BUILD + 3 {
            store
                .record_base("u", &format!("hub/img-{n:03}"), "1", digest)
                .unwrap();
        }
        let images: Vec<String> = store
            .bases("u")
            .unwrap()
            .into_iter()
            .map(|b| b.image)
            .collect();
        assert_eq!(images.len(), MAX_BASES_PER_BUILD);
        for gone in ["hub/img-001", "hub/img-002", "hub/img-003"] {
            assert!(!images.iter().any(|i| i == gone), "{gone}: {images:?}");
        }
        assert_eq!(images[0], "hub/img-000");
        assert_eq!(images[1], "hub/img-004");
        assert_eq!(images[MAX_BASES_PER_BUILD - 1], "hub/img-066");

        // When the clock stands still, the row just written still stays.
        store.record_base("u", "hub/aaa", "1", digest).unwrap();
        let images: Vec<String> = store
            .bases("u")
            .unwrap()
            .into_iter()
            .map(|b| b.image)
            .collect();
        assert_eq!(images.len(), MAX_BASES_PER_BUILD);
        assert_eq!(images[0], "hub/aaa");
        assert!(!images.iter().any(|i| i == "hub/img-004"), "{images:?}");
    }

    #[test]
    fn forgetting_is_per_build_and_idempotent_and_rows_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let clock = StoreClock::manual(5_000);
        let store = open(dir.path(), &clock);
        let digest = Digest::of(b"d");
        store.record_base("a", "hub/x", "1", digest).unwrap();
        store.record_base("a", "hub/y", "1", digest).unwrap();
        store.record_base("b", "hub/x", "1", digest).unwrap();
        store.close().unwrap();

        let store = open(dir.path(), &clock);
        assert_eq!(
            summary(&store, "a"),
            [
                row("hub/x", "1", digest, 5_000),
                row("hub/y", "1", digest, 5_000)
            ]
        );
        assert_eq!(store.forget_bases("a").unwrap(), 2);
        assert_eq!(store.forget_bases("a").unwrap(), 0);
        assert_eq!(store.bases("a").unwrap(), []);
        assert_eq!(store.bases("b").unwrap().len(), 1);
        let rows = store.table_rows().unwrap();
        assert!(rows.contains(&("bases".to_owned(), 1)), "{rows:?}");
    }

    #[test]
    fn gc_drops_rows_older_than_the_age_bound_and_a_prune_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let clock = StoreClock::manual(1_000);
        let store = open(dir.path(), &clock);
        let digest = Digest::of(b"d");
        store.record_base("old", "hub/x", "1", digest).unwrap();
        store.record_base("both", "hub/x", "1", digest).unwrap();
        clock.advance(BASES_MAX_AGE - DAY);
        store.record_base("both", "hub/y", "1", digest).unwrap();
        store.record_base("new", "hub/x", "1", digest).unwrap();
        clock.advance(2 * DAY);

        let dry = store
            .gc(&GcOptions {
                dry_run: true,
                ..GcOptions::default()
            })
            .unwrap();
        assert_eq!(dry.bases_expired, 2);
        assert_eq!(
            store.bases("old").unwrap().len(),
            1,
            "a dry run removes nothing"
        );

        let all = store
            .gc(&GcOptions {
                policy: Policy {
                    all: true,
                    ..Policy::default()
                },
                grace: Duration::ZERO,
                ..GcOptions::default()
            })
            .unwrap();
        assert_eq!(all.bases_expired, 2);
        assert_eq!(store.bases("old").unwrap(), []);
        let both: Vec<String> = store
            .bases("both")
            .unwrap()
            .into_iter()
            .map(|b| b.image)
            .collect();
        assert_eq!(both, ["hub/y"]);
        assert_eq!(store.bases("new").unwrap().len(), 1);
        assert_eq!(store.gc(&GcOptions::default()).unwrap().bases_expired, 0);
    }

    #[test]
    fn a_store_written_before_base_records_opens_and_records() {
        let dir = tempfile::tempdir().unwrap();
        let clock = StoreClock::manual(1_000);
        let store = open(dir.path(), &clock);
        store.close().unwrap();
        // The database as the releases before this table wrote it.
        let db = redb::Database::create(dir.path().join("meta.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        assert!(txn.delete_table(tables::BASES).unwrap());
        txn.commit().unwrap();
        drop(db);

        let store = open(dir.path(), &clock);
        assert_eq!(store.bases("u").unwrap(), []);
        store
            .record_base("u", "hub/x", "1", Digest::of(b"d"))
            .unwrap();
        assert_eq!(store.bases("u").unwrap().len(), 1);
        assert!(store.verify(&Default::default()).unwrap().is_clean());
    }
}
