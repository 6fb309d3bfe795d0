//! The receiver's state, shared by the HTTP handlers and the main loop: the spool file an
//! upload is appended to, the status every request answers with, and the one way to
//! finish (from the cache or from the upload) (I/O: the spool file, the cache, the
//! destination).
//!
//! # One writer, one finisher
//! The spool sits behind one async mutex. A chunk holds it while its body streams to the
//! file, so chunks are appended one at a time; `done` and the cache poll hold it while they
//! finish, so exactly one of them stores and unpacks the context, and whoever takes it
//! second sees the state has moved on. The status has its own short lock, so `GET` always
//! answers at once, even while a chunk or a store is under way.
//!
//! # Nothing half-appended
//! A chunk's bytes are hashed on a copy of the running hasher and appended to the file; only
//! when the whole body arrived within bounds do the count and the hasher move on. A body
//! that breaks off or overflows is cut off the file again, so a resend starts from a clean
//! end.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::http::StatusCode;
use futures::StreamExt as _;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::{OwnedMutexGuard, mpsc};

use super::cache::CacheClient;
use super::rules::{ChunkDecision, check_cached_size, check_upload, decide_chunk, tenths};
use super::unpack::{Unpacked, unpack};
use super::{ReceiveError, ReceiveOptions, Received};
use crate::context::protocol::{MAX_CHUNK_BYTES, UploadState, UploadStatus};
use crate::oci::digest::Hasher;
use crate::report::error_chain;
use crate::units::{format_duration, format_size};

/// Where the receiver keeps its files, beside the destination (on the same volume).
#[derive(Clone, Debug)]
pub struct WorkDir {
    /// The directory itself.
    pub dir: PathBuf,
    /// The spool an upload is appended to.
    pub upload: PathBuf,
    /// Where a download from the cache goes.
    pub download: PathBuf,
}

impl WorkDir {
    /// The work directory of the receiver of `dest`: `.kiln-receive` in its parent.
    pub fn beside(dest: &std::path::Path) -> Option<Self> {
        let dir = dest.parent()?.join(".kiln-receive");
        Some(Self {
            upload: dir.join("upload.tar"),
            download: dir.join("download.tar"),
            dir,
        })
    }
}

/// A refused request: its status code, the sentence for the uploader, the receiver's
/// status.
#[derive(Debug)]
pub struct Refusal {
    /// 400, 409 or 500.
    pub code: StatusCode,
    /// One sentence for the user.
    pub message: String,
    /// The receiver's status after the refusal.
    pub status: UploadStatus,
}

/// The upload so far.
struct Spool {
    file: Option<tokio::fs::File>,
    received: u64,
    hasher: Hasher,
    /// When the first chunk arrived, for the rate in the log.
    started: Option<Instant>,
}

/// Where the context comes from when the receiver finishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The cache already holds it.
    Cache,
    /// The upload in the spool.
    Upload,
}

/// What the receiver ended with: the context, or why not.
pub type Outcome = Result<Received, ReceiveError>;

/// The receiver's shared state.
pub struct Session {
    options: ReceiveOptions,
    cache: CacheClient,
    work: WorkDir,
    status: Mutex<UploadStatus>,
    spool: Arc<tokio::sync::Mutex<Spool>>,
    outcomes: mpsc::UnboundedSender<Outcome>,
    started: Instant,
}

impl Session {
    /// A session in state `Checking`; outcomes that requests reach are sent to `outcomes`.
    pub fn new(
        options: ReceiveOptions,
        cache: CacheClient,
        work: WorkDir,
        outcomes: mpsc::UnboundedSender<Outcome>,
    ) -> Self {
        let algorithm = options.digest.algorithm();
        let status = UploadStatus {
            state: UploadState::Checking,
            received: 0,
            size: options.size,
            digest: options.digest,
            from_cache: false,
        };
        Self {
            options,
            cache,
            work,
            status: Mutex::new(status),
            spool: Arc::new(tokio::sync::Mutex::new(Spool {
                file: None,
                received: 0,
                hasher: Hasher::with(algorithm),
                started: None,
            })),
            outcomes,
            started: Instant::now(),
        }
    }

    /// The cache client.
    pub fn cache(&self) -> &CacheClient {
        &self.cache
    }

    /// The status every request answers with.
    pub fn status(&self) -> UploadStatus {
        match self.status.lock() {
            Ok(status) => status.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn update(&self, change: impl FnOnce(&mut UploadStatus)) -> UploadStatus {
        let mut status = match self.status.lock() {
            Ok(status) => status,
            Err(poisoned) => poisoned.into_inner(),
        };
        change(&mut status);
        status.clone()
    }

    /// Opens an empty spool and starts accepting chunks.
    pub async fn start_waiting(&self) -> Result<(), ReceiveError> {
        let mut spool = self.spool.lock().await;
        let failed = |source| ReceiveError::Spool {
            path: self.work.upload.clone(),
            source,
        };
        // Append mode: after a chunk is cut off again (`set_len`), the next write goes to
        // the new end without a seek.
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.work.upload)
            .await
            .map_err(failed)?;
        file.set_len(0).await.map_err(failed)?;
        *spool = Spool {
            file: Some(file),
            received: 0,
            hasher: Hasher::with(self.options.digest.algorithm()),
            started: None,
        };
        self.update(|status| {
            status.state = UploadState::Waiting;
            status.received = 0;
        });
        Ok(())
    }

    fn refuse(&self, code: StatusCode, message: String) -> Refusal {
        Refusal {
            code,
            message,
            status: self.status(),
        }
    }

    /// A local failure that ends the receiver: reported to the main loop, and to the
    /// uploader as a 500.
    fn fail(&self, error: ReceiveError) -> Refusal {
        let refusal = self.refuse(StatusCode::INTERNAL_SERVER_ERROR, error_chain(&error));
        let _ = self.outcomes.send(Err(error));
        refusal
    }

    /// The refusal of a request that comes in a state that takes no chunk and no `done`;
    /// `Ok` with the status once the context is done (a late resend needs nothing more).
    fn not_waiting(&self) -> Option<Result<UploadStatus, Refusal>> {
        let status = self.status();
        let message = match status.state {
            UploadState::Waiting => return None,
            UploadState::Done => return Some(Ok(status)),
            UploadState::Checking => {
                "the receiver is still looking for the context in the cache: ask for its status again"
            }
            UploadState::Storing => {
                "the whole tar arrived and is being stored: ask for the receiver's status again"
            }
        };
        Some(Err(self.refuse(StatusCode::CONFLICT, message.to_owned())))
    }

    /// `POST ?offset=` with `body` (of `content_length` bytes, when the request says).
    pub async fn chunk(
        &self,
        offset: u64,
        content_length: Option<u64>,
        body: Body,
    ) -> Result<UploadStatus, Refusal> {
        // Answer at once while a store or download holds the spool; check again once held.
        if let Some(answer) = self.not_waiting() {
            return answer;
        }
        let mut spool = self.spool.lock().await;
        if let Some(answer) = self.not_waiting() {
            return answer;
        }
        let received = spool.received;
        let size = self.options.size;
        // A length the request states is enough to decide before reading a byte.
        if let Some(len) = content_length {
            let decision = decide_chunk(offset, len, received, size);
            if let Some(message) = decision.refusal(offset, len) {
                return Err(self.refuse(refusal_code(decision), message));
            }
            if decision == ChunkDecision::AlreadyReceived {
                return Ok(self.status());
            }
        } else if offset != received {
            let len = count_body(body).await;
            let decision = decide_chunk(offset, len, received, size);
            return match decision.refusal(offset, len) {
                Some(message) => Err(self.refuse(refusal_code(decision), message)),
                None => Ok(self.status()),
            };
        }
        self.append(&mut spool, offset, body).await
    }

    /// Streams `body` onto the spool at its end (`offset`), within the chunk and size
    /// limits, and moves the count and hasher on only once all of it arrived.
    async fn append(
        &self,
        spool: &mut Spool,
        offset: u64,
        body: Body,
    ) -> Result<UploadStatus, Refusal> {
        let received = spool.received;
        let size = self.options.size;
        let path = self.work.upload.clone();
        let Some(file) = spool.file.as_mut() else {
            return Err(self.refuse(
                StatusCode::CONFLICT,
                "the receiver is not accepting chunks".to_owned(),
            ));
        };
        let mut hasher = spool.hasher.clone();
        let mut len: u64 = 0;
        let mut stream = body.into_data_stream();
        let mut refusal = None;
        while let Some(piece) = stream.next().await {
            let piece = match piece {
                Ok(piece) => piece,
                Err(err) => {
                    refusal = Some((
                        StatusCode::BAD_REQUEST,
                        format!(
                            "the chunk at offset {offset} broke off after {len} bytes ({}): send it again",
                            error_chain(&err)
                        ),
                    ));
                    break;
                }
            };
            len += piece.len() as u64;
            let decision = decide_chunk(offset, len, received, size);
            if let Some(message) = decision.refusal(offset, len) {
                refusal = Some((refusal_code(decision), message));
                break;
            }
            if let Err(source) = file.write_all(&piece).await {
                return Err(self.fail(ReceiveError::Spool { path, source }));
            }
            hasher.update(&piece);
        }
        if let Some((code, message)) = refusal {
            // Cut what this chunk appended, so the next one starts at `received`.
            if let Err(source) = file.set_len(received).await {
                return Err(self.fail(ReceiveError::Spool { path, source }));
            }
            return Err(self.refuse(code, message));
        }
        if let Err(source) = file.flush().await {
            return Err(self.fail(ReceiveError::Spool { path, source }));
        }
        spool.received = received + len;
        spool.hasher = hasher;
        let started = *spool.started.get_or_insert_with(Instant::now);
        if tenths(spool.received, size) > tenths(received, size) || received == 0 {
            let elapsed = started.elapsed();
            tracing::info!(
                received = spool.received,
                size,
                percent = tenths(spool.received, size) * 10,
                elapsed = %format_duration(elapsed),
                "receiving the upload: {} of {}",
                format_size(spool.received),
                format_size(size)
            );
        }
        let total = spool.received;
        Ok(self.update(|status| status.received = total))
    }

    /// `POST done`: checks the upload, then stores, tags and unpacks it. A check that fails
    /// empties the spool for a new upload; a store or unpack that fails ends the receiver.
    pub async fn done(self: &Arc<Self>) -> Result<UploadStatus, Refusal> {
        if let Some(answer) = self.not_waiting() {
            return answer;
        }
        let mut spool = self.spool.clone().lock_owned().await;
        if let Some(answer) = self.not_waiting() {
            return answer;
        }
        let actual = spool.hasher.clone().finish();
        if let Err(message) = check_upload(
            spool.received,
            &actual,
            self.options.size,
            &self.options.digest,
        ) {
            tracing::warn!(received = spool.received, %actual, "refused the upload: {message}");
            if let Some(file) = spool.file.as_mut()
                && let Err(source) = file.set_len(0).await
            {
                return Err(self.fail(ReceiveError::Spool {
                    path: self.work.upload.clone(),
                    source,
                }));
            }
            spool.received = 0;
            spool.hasher = Hasher::with(self.options.digest.algorithm());
            spool.started = None;
            self.update(|status| status.received = 0);
            return Err(self.refuse(StatusCode::BAD_REQUEST, message));
        }
        self.update(|status| status.state = UploadState::Storing);
        // The work goes on in a task of its own: a client that gives up waiting for the
        // answer must not abort a store half-way.
        let session = self.clone();
        let task = tokio::spawn(async move {
            let outcome = session.finish(Source::Upload, spool).await;
            let answer = match &outcome {
                Ok(_) => Ok(session.status()),
                Err(err) => {
                    Err(session.refuse(StatusCode::INTERNAL_SERVER_ERROR, error_chain(err)))
                }
            };
            let _ = session.outcomes.send(outcome);
            answer
        });
        match task.await {
            Ok(answer) => answer,
            Err(err) => Err(self.refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the receiver stopped while storing the context: {err}"),
            )),
        }
    }

    /// Looks whether the cache holds the context now (another pod of the attempt stored
    /// it). When it does, and no chunk or store is under way, finishes from the cache.
    /// `None`: keep waiting.
    pub async fn poll_cache(self: &Arc<Self>) -> Option<Outcome> {
        let digest = self.options.digest;
        let cached = match self.cache.blob_size(&digest).await {
            Ok(cached) => cached?,
            Err(err) => {
                tracing::warn!(error = %error_chain(&err), "cannot look for the context in the cache; looking again later");
                return None;
            }
        };
        // Held by a chunk or a store: look again at the next poll.
        let spool = self.spool.clone().try_lock_owned().ok()?;
        if self.status().state != UploadState::Waiting {
            return None;
        }
        if let Err(message) = check_cached_size(Some(cached), self.options.size, &digest) {
            return Some(Err(ReceiveError::Declaration { message }));
        }
        tracing::info!(%digest, size = cached, "another pod stored the context in the cache");
        self.update(|status| status.state = UploadState::Storing);
        Some(self.finish(Source::Cache, spool).await)
    }

    /// Finishes from the cache at start, when it already holds the context.
    pub async fn finish_from_cache(self: &Arc<Self>) -> Outcome {
        let spool = self.spool.clone().lock_owned().await;
        self.update(|status| status.state = UploadState::Storing);
        self.finish(Source::Cache, spool).await
    }

    /// Gets the tar (downloads it, or pushes the upload), tags it, unpacks it, and reports
    /// `Done`. Holds the spool throughout, so nothing else finishes meanwhile.
    async fn finish(&self, source: Source, _spool: OwnedMutexGuard<Spool>) -> Outcome {
        let ReceiveOptions {
            digest,
            size,
            tag,
            dest,
            ..
        } = &self.options;
        let (digest, size) = (*digest, *size);
        let tar = match source {
            Source::Cache => {
                let began = Instant::now();
                self.cache
                    .download_blob(&digest, size, &self.work.download)
                    .await
                    .map_err(|source| ReceiveError::Download { digest, source })?;
                tracing::info!(%digest, size, took = %format_duration(began.elapsed()), "downloaded the context from the cache: {}", format_size(size));
                &self.work.download
            }
            Source::Upload => {
                let began = Instant::now();
                let cached = self
                    .cache
                    .blob_size(&digest)
                    .await
                    .map_err(|source| ReceiveError::Store { digest, source })?;
                if cached.is_none() {
                    self.cache
                        .push_blob_file(&digest, size, &self.work.upload)
                        .await
                        .map_err(|source| ReceiveError::Store { digest, source })?;
                }
                tracing::info!(%digest, size, took = %format_duration(began.elapsed()), already_cached = cached.is_some(), "stored the context in the cache: {}", format_size(size));
                &self.work.upload
            }
        };
        let manifest = self
            .cache
            .tag_context(tag, &digest, size)
            .await
            .map_err(|source| ReceiveError::Tag {
                tag: tag.to_string(),
                source,
            })?;
        tracing::info!(%tag, %manifest, "tagged the context's manifest");
        let began = Instant::now();
        let (tar, dest) = (tar.clone(), dest.clone());
        let unpacked: Unpacked = tokio::task::spawn_blocking(move || unpack(&tar, &dest))
            .await
            .map_err(|err| ReceiveError::Interrupted {
                reason: err.to_string(),
            })?
            .map_err(ReceiveError::Unpack)?;
        tracing::info!(
            files = unpacked.files,
            directories = unpacked.directories,
            symlinks = unpacked.symlinks,
            took = %format_duration(began.elapsed()),
            "unpacked the context into {}",
            self.options.dest.display()
        );
        // The work directory's tars are spent; the build gets the volume's space back.
        if let Err(err) = tokio::fs::remove_dir_all(&self.work.dir).await {
            tracing::warn!(error = %err, dir = %self.work.dir.display(), "cannot remove the receiver's work directory");
        }
        let from_cache = source == Source::Cache;
        self.update(|status| {
            status.state = UploadState::Done;
            status.from_cache = from_cache;
            if from_cache {
                status.received = 0;
            }
        });
        Ok(Received {
            from_cache,
            manifest,
            unpacked,
            elapsed: self.started.elapsed(),
        })
    }
}

/// The status code of a refused chunk.
fn refusal_code(decision: ChunkDecision) -> StatusCode {
    match decision {
        ChunkDecision::WrongOffset { .. } => StatusCode::CONFLICT,
        ChunkDecision::Append
        | ChunkDecision::AlreadyReceived
        | ChunkDecision::PastDeclaredSize { .. }
        | ChunkDecision::TooLarge => StatusCode::BAD_REQUEST,
    }
}

/// The length of a body that is not kept: read and dropped, counting stops just past the
/// largest chunk (which is refused whatever its offset).
async fn count_body(body: Body) -> u64 {
    let mut stream = body.into_data_stream();
    let mut len: u64 = 0;
    while let Some(Ok(piece)) = stream.next().await {
        len += piece.len() as u64;
        if len > MAX_CHUNK_BYTES as u64 {
            break;
        }
    }
    len
}
