//! Upload sessions that survive across HTTP requests: create, append chunks at offsets,
//! status, commit with the client's digest, cancel (filesystem and redb I/O).
//!
//! Chunks go to a temp file through one buffered writer per session with no transaction
//! and no fsync per chunk; the session's row is written at create and removed in the
//! commit's own transaction. Sessions do not survive a restart: the hash state lives in
//! memory, so start-up recovery removes their rows and temp files, and the registry
//! answers `BLOB_UPLOAD_UNKNOWN` to a client that comes back.

use std::sync::{Arc, Mutex};

use crate::digest::{Algorithm, Digest};
use crate::store::blobs::UploadSession;
use crate::store::error::{Result, StoreError};
use crate::store::flight::lock;
use crate::store::handle::Store;
use crate::store::tables::{self, UploadRow};
use crate::store::temp::TempBlob;
use crate::store::types::{BlobInfo, UploadStatus, validate_repo};

impl Store {
    /// Starts an upload into `repo`; returns its id.
    pub fn upload_create(&self, repo: &str) -> Result<String> {
        validate_repo(repo)?;
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
        lock(&self.inner.uploads).insert(
            id.clone(),
            Arc::new(Mutex::new(UploadSession {
                repo: row.repo,
                started_ms: now,
                temp: Some(temp),
            })),
        );
        Ok(id)
    }

    fn session(&self, id: &str) -> Result<Arc<Mutex<UploadSession>>> {
        lock(&self.inner.uploads)
            .get(id)
            .cloned()
            .ok_or_else(|| StoreError::UploadUnknown(id.to_owned()))
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

    /// Where an upload stands.
    pub fn upload_status(&self, id: &str) -> Result<UploadStatus> {
        let session = self.session(id)?;
        let session = lock(&session);
        let size = session.temp.as_ref().map_or(0, TempBlob::written);
        Ok(UploadStatus {
            id: id.to_owned(),
            repo: session.repo.clone(),
            size,
            started_ms: session.started_ms,
        })
    }

    /// Every upload in progress, by id.
    pub fn uploads(&self) -> Vec<UploadStatus> {
        let ids: Vec<String> = lock(&self.inner.uploads).keys().cloned().collect();
        ids.iter()
            .filter_map(|id| self.upload_status(id).ok())
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
