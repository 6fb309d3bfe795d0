//! Upload sessions that survive across HTTP requests: create, append chunks at offsets,
//! status, commit with the client's digest, cancel (filesystem and redb I/O).
//!
//! Chunks go to a temp file through one buffered writer per session with no transaction
//! and no fsync per chunk; the session's row is written at create and removed in the
//! commit's own transaction. Sessions do not survive a restart: the hash state lives in
//! memory, so start-up recovery removes their rows and temp files, and the registry
//! answers `BLOB_UPLOAD_UNKNOWN` to a client that comes back.
//!
//! Sessions end: one idle longer than the caller's TTL is removed by
//! [`Store::upload_expire`] with its temp file, and [`Store::upload_create_capped`] refuses
//! a new one when a group of repositories (a namespace) has too many open. A client with
//! push rights can therefore not hold disk and memory without bound.

use std::sync::{Arc, Mutex};

use crate::oci::digest::{Algorithm, Digest};
use crate::store::error::{Result, StoreError};
use crate::store::flight::lock;
use crate::store::handle::Store;
use crate::store::tables::{self, UploadRow};
use crate::store::temp::TempBlob;
use crate::store::temp::UploadSession;
use crate::store::types::{BlobInfo, UploadStatus, validate_repo};

/// Whether `repo` belongs to `group`: is it, or lies under it.
fn in_group(repo: &str, group: &str) -> bool {
    repo.strip_prefix(group)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn status_of(id: &str, session: &Mutex<UploadSession>) -> UploadStatus {
    let session = lock(session);
    UploadStatus {
        id: id.to_owned(),
        repo: session.repo.clone(),
        size: session.temp.as_ref().map_or(0, TempBlob::written),
        started_ms: session.started_ms,
    }
}

/// What [`Store::upload_expire`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExpiredUploads {
    /// Sessions removed.
    pub sessions: u64,
    /// Bytes their temp files held.
    pub bytes: u64,
}

impl Store {
    /// Starts an upload into `repo`; returns its id.
    pub fn upload_create(&self, repo: &str) -> Result<String> {
        self.create_upload(repo, None)
    }

    /// Starts an upload into `repo` unless `group` (the repositories named `group` or
    /// below it) already holds `max` open sessions: then [`StoreError::TooManyUploads`].
    pub fn upload_create_capped(&self, repo: &str, group: &str, max: usize) -> Result<String> {
        self.create_upload(repo, Some((group, max)))
    }

    /// How many sessions `group` holds open.
    fn open_in(&self, group: &str) -> usize {
        lock(&self.inner.uploads)
            .values()
            .filter(|session| in_group(&lock(session).repo, group))
            .count()
    }

    fn create_upload(&self, repo: &str, cap: Option<(&str, usize)>) -> Result<String> {
        validate_repo(repo)?;
        let refused = |group: &str, open: usize| StoreError::TooManyUploads {
            group: group.to_owned(),
            open,
        };
        // Checked before the work and again when the session is inserted: two requests
        // racing for the last place cannot both take it.
        if let Some((group, max)) = cap {
            let open = self.open_in(group);
            if open >= max {
                return Err(refused(group, open));
            }
        }
        let now = self.inner.clock.now_ms();
        let seq = self
            .inner
            .temp_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Unguessable enough that one client cannot stumble on another's session; the
        // registry also checks the repository on every request.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let id = Digest::of(format!("{nanos}/{seq}/{}/{repo}", std::process::id()).as_bytes())
            .hex()[..32]
            .to_owned();
        let temp = TempBlob::create(
            self.inner.layout.tmp().join(format!("upload-{id}")),
            self.inner.sync,
            // The digest comes with the last request; commit rehashes for another one.
            Algorithm::Sha256,
        )?;
        let row = UploadRow {
            repo: repo.to_owned(),
            started_ms: now,
        };
        // Upload rows are removed by recovery after a crash, so they need no fsync.
        self.write_lazy("create upload", |txn| {
            let mut uploads = txn
                .open_table(tables::UPLOADS)
                .map_err(StoreError::db("create upload"))?;
            uploads
                .insert(id.as_str(), tables::encode(&row).as_slice())
                .map_err(StoreError::db("create upload"))?;
            Ok(())
        })?;
        let session = Arc::new(Mutex::new(UploadSession {
            repo: row.repo,
            started_ms: now,
            last_ms: now,
            temp: Some(temp),
        }));
        let mut uploads = lock(&self.inner.uploads);
        if let Some((group, max)) = cap {
            let open = uploads
                .values()
                .filter(|session| in_group(&lock(session).repo, group))
                .count();
            if open >= max {
                drop(uploads);
                // Dropping the session removes its temp file.
                drop(session);
                self.remove_upload_row(&id)?;
                return Err(refused(group, open));
            }
        }
        uploads.insert(id.clone(), session);
        Ok(id)
    }

    /// How many upload sessions are open.
    pub fn upload_count(&self) -> usize {
        lock(&self.inner.uploads).len()
    }

    /// Removes every session no request touched for `idle` or longer, with its temp
    /// file; a client that comes back gets [`StoreError::UploadUnknown`].
    pub fn upload_expire(&self, idle: std::time::Duration) -> Result<ExpiredUploads> {
        let now = self.inner.clock.now_ms();
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        let expired: Vec<(String, Arc<Mutex<UploadSession>>)> = {
            let mut uploads = lock(&self.inner.uploads);
            let ids: Vec<String> = uploads
                .iter()
                .filter(|(_, session)| now.saturating_sub(lock(session).last_ms) >= idle_ms)
                .map(|(id, _)| id.clone())
                .collect();
            ids.into_iter()
                .filter_map(|id| uploads.remove(&id).map(|session| (id, session)))
                .collect()
        };
        let mut report = ExpiredUploads::default();
        for (id, session) in &expired {
            // Waits for a chunk being written to this session, then ends it.
            let temp = lock(session).temp.take();
            report.sessions += 1;
            report.bytes += temp.as_ref().map_or(0, TempBlob::written);
            drop(temp);
            self.remove_upload_row(id)?;
            tracing::info!(upload = %id, repo = %lock(session).repo, "upload session expired");
        }
        Ok(report)
    }

    /// The session `id`, marked as used now.
    fn session(&self, id: &str) -> Result<Arc<Mutex<UploadSession>>> {
        let session = lock(&self.inner.uploads)
            .get(id)
            .cloned()
            .ok_or_else(|| StoreError::UploadUnknown(id.to_owned()))?;
        lock(&session).last_ms = self.inner.clock.now_ms();
        Ok(session)
    }

    /// Appends a chunk at `offset`, which must be the bytes received so far (else
    /// [`StoreError::UploadOffset`], a 416); returns the new size.
    pub fn upload_append(&self, id: &str, offset: u64, bytes: &[u8]) -> Result<u64> {
        let session = self.session(id)?;
        let mut session = lock(&session);
        let temp = session
            .temp
            .as_mut()
            .ok_or_else(|| StoreError::UploadUnknown(id.to_owned()))?;
        if offset != temp.written() {
            return Err(StoreError::UploadOffset {
                id: id.to_owned(),
                offset,
                size: temp.written(),
            });
        }
        temp.write(bytes)?;
        Ok(temp.written())
    }

    /// Where an upload stands (a client asking: it counts as use).
    pub fn upload_status(&self, id: &str) -> Result<UploadStatus> {
        let session = self.session(id)?;
        Ok(status_of(id, &session))
    }

    /// Every upload in progress, by id (a look, not a use).
    pub fn uploads(&self) -> Vec<UploadStatus> {
        let sessions: Vec<(String, Arc<Mutex<UploadSession>>)> = lock(&self.inner.uploads)
            .iter()
            .map(|(id, session)| (id.clone(), session.clone()))
            .collect();
        sessions
            .iter()
            .map(|(id, session)| status_of(id, session))
            .collect()
    }

    /// Finishes an upload: checks the digest (and size, if given), makes the blob visible
    /// and linked into the upload's repository, and removes the session, whatever the
    /// outcome (a failed commit is final, as the distribution spec has it).
    pub fn upload_commit(
        &self,
        id: &str,
        expected: Digest,
        expected_size: Option<u64>,
    ) -> Result<BlobInfo> {
        let session = lock(&self.inner.uploads)
            .remove(id)
            .ok_or_else(|| StoreError::UploadUnknown(id.to_owned()))?;
        let (repo, temp) = {
            let mut session = lock(&session);
            (session.repo.clone(), session.temp.take())
        };
        let temp = temp.ok_or_else(|| StoreError::UploadUnknown(id.to_owned()))?;
        let result = self.commit_temp(temp, None, expected, expected_size, &repo, |txn| {
            let mut uploads = txn
                .open_table(tables::UPLOADS)
                .map_err(StoreError::db("commit upload"))?;
            uploads
                .remove(id)
                .map_err(StoreError::db("commit upload"))?;
            Ok(Ok(()))
        });
        if result.is_err() {
            self.remove_upload_row(id)?;
        }
        result
    }

    /// Cancels an upload; false when there was none.
    pub fn upload_cancel(&self, id: &str) -> Result<bool> {
        let Some(session) = lock(&self.inner.uploads).remove(id) else {
            return Ok(false);
        };
        // Dropping the temp blob removes its file.
        lock(&session).temp = None;
        self.remove_upload_row(id)?;
        Ok(true)
    }

    fn remove_upload_row(&self, id: &str) -> Result<()> {
        self.write_lazy("remove upload", |txn| {
            let mut uploads = txn
                .open_table(tables::UPLOADS)
                .map_err(StoreError::db("remove upload"))?;
            uploads
                .remove(id)
                .map_err(StoreError::db("remove upload"))?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::store::{Store, StoreClock, StoreError, StoreOptions};

    fn open(dir: &std::path::Path, clock: StoreClock) -> Store {
        Store::open(
            dir,
            StoreOptions {
                sync: false,
                clock,
                ..StoreOptions::default()
            },
        )
        .unwrap()
    }

    fn temp_files(store: &Store) -> usize {
        std::fs::read_dir(store.layout().tmp()).unwrap().count()
    }

    #[test]
    fn idle_sessions_expire_with_their_bytes_and_used_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let clock = StoreClock::manual(1_000_000);
        let store = open(dir.path(), clock.clone());
        let idle = store.upload_create("team-a/cache").unwrap();
        store.upload_append(&idle, 0, b"abandoned half").unwrap();
        let busy = store.upload_create("team-a/cache").unwrap();
        clock.advance(Duration::from_secs(40));
        store.upload_append(&busy, 0, b"still coming").unwrap();
        clock.advance(Duration::from_secs(30));
        assert_eq!(temp_files(&store), 2);

        let expired = store.upload_expire(Duration::from_secs(60)).unwrap();
        assert_eq!((expired.sessions, expired.bytes), (1, 14));
        assert!(matches!(
            store.upload_append(&idle, 14, b"late"),
            Err(StoreError::UploadUnknown(_))
        ));
        assert_eq!(temp_files(&store), 1, "the idle session's file is gone");
        assert_eq!(store.upload_count(), 1);
        // A status request is use too.
        clock.advance(Duration::from_secs(50));
        store.upload_status(&busy).unwrap();
        clock.advance(Duration::from_secs(50));
        assert_eq!(
            store
                .upload_expire(Duration::from_secs(60))
                .unwrap()
                .sessions,
            0
        );
        // A listing is not.
        clock.advance(Duration::from_secs(30));
        assert_eq!(store.uploads().len(), 1);
        assert_eq!(
            store
                .upload_expire(Duration::from_secs(60))
                .unwrap()
                .sessions,
            1
        );
        assert_eq!(temp_files(&store), 0);
        assert!(store.verify(&Default::default()).unwrap().is_clean());
        let rows = store.table_rows().unwrap();
        assert!(
            rows.iter().any(|(t, n)| t == "uploads" && *n == 0),
            "{rows:?}"
        );
    }

    #[test]
    fn a_namespace_holds_at_most_its_cap_of_sessions_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), StoreClock::manual(1_000));
        let first = store.upload_create_capped("team/a", "team", 2).unwrap();
        store.upload_create_capped("team", "team", 2).unwrap();
        let refused = store.upload_create_capped("team/b", "team", 2).unwrap_err();
        assert!(
            matches!(&refused, StoreError::TooManyUploads { group, open: 2 } if group == "team"),
            "{refused:?}"
        );
        assert!(
            refused
                .to_string()
                .contains("team has 2 upload sessions open")
        );
        // Names that share a prefix are other namespaces.
        store.upload_create_capped("team-a/x", "team-a", 2).unwrap();
        store.upload_create_capped("teams/x", "teams", 2).unwrap();
        assert_eq!(temp_files(&store), 4, "a refused session leaves no file");
        store.upload_cancel(&first).unwrap();
        store.upload_create_capped("team/b", "team", 2).unwrap();
    }
}
