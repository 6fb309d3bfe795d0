//! Blobs of mirror repositories fetched ONCE per digest, however many clients ask at the
//! same time, and streamed to every one of them while the bytes are hashed and written to
//! a temp file by the store. Nothing becomes visible unless the whole blob arrived and
//! hashed to its digest: a transfer that breaks gives every waiting client an error and
//! leaves no trace (the linuxkit seed) (I/O: the upstream over HTTP, the store).
//!
//! # How one fetch feeds many clients
//! The first request for a missing digest starts a `Flight` and a task that runs it; the
//! task belongs to no request, so a client that goes away does not cancel the fetch for
//! the others (and the blob is cached for the next build). Later requests join the flight.
//! The task pushes every chunk both to the store's writer (on a blocking thread) and into a
//! window of recent chunks in memory; each client reads the window at its own pace. A
//! client that falls behind the window (or joins late) waits for the commit and reads the
//! rest from the store. The last chunk is held back until the store has verified the
//! digest, so no client ever receives a complete body whose digest is wrong.
//!
//! # Visibility
//! A mirror repository shows a blob only after its own upstream served it: to this
//! repository, or to another repository of the same mirror (all of them hold only what
//! that upstream serves to every namespace). The store may hold the same bytes because a
//! namespace pushed them; then the upstream must still serve the whole blob, which is
//! hashed against the digest (and not written again) before the blob is linked. So a
//! digest that only a push brought answers through the mirror exactly as one no one ever
//! pushed. Fetches are per (mirror, digest): one mirror never links what another's
//! upstream served.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt as _};
use tokio::sync::{mpsc, watch};

use crate::oci::digest::{Digest, Hasher};
use crate::oci::name::RepoName;
use crate::registry::mirror::upstream::{Upstream, UpstreamError};
use crate::registry::mirror::{CacheStatus, Mirror, MirrorError, MirrorMetrics, blocking};
use crate::store::stream::{Chunks, read_file};
use crate::store::{BlobWriter, Ingest, Store, StoreError};

/// Chunks queued for the store's writer before the fetch waits for the disk.
const WRITE_AHEAD: usize = 64;

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The fetches in progress, by mirror and digest. Two mirrors never share a fetch: each
/// one's repositories show only what its own upstream served.
#[derive(Debug)]
pub(crate) struct BlobFetches {
    flights: Mutex<BTreeMap<(String, Digest), Arc<Flight>>>,
    /// Bytes of recent chunks each flight keeps for its readers.
    window: usize,
}

/// What [`BlobFetches::join`] found.
pub(crate) enum Joined {
    /// A new flight: the caller starts the fetch.
    Leader(Arc<Flight>),
    /// A flight in progress.
    Follower(Arc<Flight>),
    /// A flight that is finishing: look in the store again.
    Finishing,
}

impl BlobFetches {
    pub(crate) fn new(window: usize) -> Self {
        Self {
            flights: Mutex::default(),
            window,
        }
    }

    /// Joins the fetch of `digest` from `mirror` for `repo`, or starts one.
    pub(crate) fn join(&self, mirror: &str, digest: Digest, repo: &str) -> Joined {
        let mut flights = lock(&self.flights);
        let key = (mirror.to_owned(), digest);
        if let Some(flight) = flights.get(&key) {
            let mut state = lock(&flight.state);
            if state.closing {
                return Joined::Finishing;
            }
            state.repos.insert(repo.to_owned());
            drop(state);
            return Joined::Follower(flight.clone());
        }
        let flight = Arc::new(Flight::new(mirror, digest, repo));
        flights.insert(key, flight.clone());
        Joined::Leader(flight)
    }

    /// How many fetches are in progress.
    #[cfg(test)]
    pub(crate) fn in_progress(&self) -> usize {
        lock(&self.flights).len()
    }

    fn remove(&self, flight: &Arc<Flight>) {
        let mut flights = lock(&self.flights);
        let key = (flight.mirror.clone(), flight.digest);
        if flights.get(&key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            flights.remove(&key);
        }
    }
}

/// One upstream fetch and what its readers need.
#[derive(Debug)]
pub(crate) struct Flight {
    mirror: String,
    digest: Digest,
    state: Mutex<FlightState>,
    /// Bumped on every change of `state`, to wake readers.
    changed: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct FlightState {
    /// The upstream's `Content-Length`, once its answer started.
    size: Option<u64>,
    /// The upstream answered (or the blob turned out to be present already).
    started: bool,
    /// Recent chunks with their offsets, oldest first.
    chunks: VecDeque<(u64, Bytes)>,
    /// Bytes in `chunks`.
    window_bytes: usize,
    /// Offset of the first byte still in `chunks` (everything before it was evicted).
    window_start: u64,
    /// Bytes received from the upstream so far.
    received: u64,
    /// Repositories whose clients wait for this blob: it is linked into each.
    repos: BTreeSet<String>,
    /// No more readers may join (the outcome is being recorded).
    closing: bool,
    /// The blob's size once committed, or why the fetch failed.
    outcome: Option<Result<u64, MirrorError>>,
}

/// What a reader at some offset does next.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Send these bytes.
    Data(Bytes),
    /// Everything was sent.
    End,
    /// The fetch failed.
    Failed(String),
    /// The bytes at the offset are no longer in memory: read the committed blob of this
    /// size from the store.
    FromStore(u64),
    /// Wait for more.
    Wait,
}

impl FlightState {
    /// What a reader at `offset` does next. The last chunk is held back until the commit,
    /// so that a body only ever completes with verified bytes.
    fn step(&self, offset: u64) -> Step {
        let committed = match &self.outcome {
            Some(Ok(size)) => Some(*size),
            Some(Err(err)) => return Step::Failed(err.to_string()),
            None => None,
        };
        if offset < self.window_start {
            return committed.map_or(Step::Wait, Step::FromStore);
        }
        let held_back = match committed {
            Some(_) => 0,
            None => self.chunks.back().map_or(0, |(_, c)| c.len() as u64),
        };
        let readable_end = self.received - held_back;
        if offset < readable_end {
            let at = self
                .chunks
                .partition_point(|(start, chunk)| start + chunk.len() as u64 <= offset);
            if let Some((start, chunk)) = self.chunks.get(at) {
                let from = usize::try_from(offset - start).unwrap_or(usize::MAX);
                let to = usize::try_from((readable_end - start).min(chunk.len() as u64))
                    .unwrap_or(usize::MAX);
                if from < to {
                    return Step::Data(chunk.slice(from..to));
                }
            }
        }
        match committed {
            Some(size) if offset >= size => Step::End,
            // The bytes came another way (already present, or another ingest).
            Some(size) => Step::FromStore(size),
            None => Step::Wait,
        }
    }

    fn push(&mut self, chunk: Bytes, window: usize) {
        let len = chunk.len();
        self.chunks.push_back((self.received, chunk));
        self.received += len as u64;
        self.window_bytes += len;
        // Keep the newest chunk always: it is the one held back.
        while self.window_bytes > window && self.chunks.len() > 1 {
            if let Some((start, old)) = self.chunks.pop_front() {
                self.window_bytes -= old.len();
                self.window_start = start + old.len() as u64;
            }
        }
    }
}

impl Flight {
    fn new(mirror: &str, digest: Digest, repo: &str) -> Self {
        Self {
            mirror: mirror.to_owned(),
            digest,
            state: Mutex::new(FlightState {
                repos: [repo.to_owned()].into(),
                ..FlightState::default()
            }),
            changed: watch::Sender::new(0),
        }
    }

    fn update(&self, change: impl FnOnce(&mut FlightState)) {
        change(&mut lock(&self.state));
        self.changed.send_modify(|version| *version += 1);
    }

    /// Waits until `ready` says something about the state.
    async fn wait_for<T>(&self, ready: impl Fn(&FlightState) -> Option<T>) -> T {
        let mut changes = self.changed.subscribe();
        loop {
            if let Some(value) = ready(&lock(&self.state)) {
                return value;
            }
            // The sender lives in `self`, so it cannot be gone while we wait.
            let _ = changes.changed().await;
        }
    }

    /// The upstream's size once its answer started (`None` for a chunked answer), or the
    /// fetch's failure.
    pub(crate) async fn started(&self) -> Result<Option<u64>, MirrorError> {
        self.wait_for(|state| match &state.outcome {
            Some(Ok(size)) => Some(Ok(Some(*size))),
            Some(Err(err)) => Some(Err(err.clone())),
            None if state.started => Some(Ok(state.size)),
            None => None,
        })
        .await
    }

    /// The committed size, once the fetch ended.
    pub(crate) async fn finished(&self) -> Result<u64, MirrorError> {
        self.wait_for(|state| state.outcome.clone()).await
    }

    /// The blob's bytes from the start, as they arrive; fails if the fetch fails.
    pub(crate) fn reader(
        self: &Arc<Self>,
        store: Store,
        repo: String,
    ) -> BoxStream<'static, io::Result<Bytes>> {
        let reader = Reader {
            flight: self.clone(),
            changes: self.changed.subscribe(),
            store,
            repo,
            offset: 0,
            from_store: None,
            done: false,
        };
        futures::stream::unfold(reader, |mut reader| async move {
            let item = reader.next().await?;
            Some((item, reader))
        })
        .boxed()
    }
}

struct Reader {
    flight: Arc<Flight>,
    changes: watch::Receiver<u64>,
    store: Store,
    repo: String,
    offset: u64,
    from_store: Option<BoxStream<'static, io::Result<Bytes>>>,
    done: bool,
}

impl Reader {
    async fn next(&mut self) -> Option<io::Result<Bytes>> {
        if self.done {
            return None;
        }
        if let Some(rest) = self.from_store.as_mut() {
            return rest.next().await;
        }
        loop {
            // Mark the current version seen before looking, so no change is missed.
            self.changes.borrow_and_update();
            let step = lock(&self.flight.state).step(self.offset);
            match step {
                Step::Data(bytes) => {
                    self.offset += bytes.len() as u64;
                    return Some(Ok(bytes));
                }
                Step::End => {
                    self.done = true;
                    return None;
                }
                Step::Failed(reason) => {
                    self.done = true;
                    return Some(Err(io::Error::other(reason)));
                }
                Step::FromStore(size) => {
                    let opened = open_store(
                        self.store.clone(),
                        self.repo.clone(),
                        self.flight.digest,
                        self.offset,
                        size,
                    );
                    let mut rest = match opened.await {
                        Ok(rest) => rest,
                        Err(err) => {
                            self.done = true;
                            return Some(Err(err));
                        }
                    };
                    let item = rest.next().await;
                    self.from_store = Some(rest);
                    return item;
                }
                Step::Wait => {
                    let _ = self.changes.changed().await;
                }
            }
        }
    }
}

/// The rest of a committed blob from `offset`, read from the store.
async fn open_store(
    store: Store,
    repo: String,
    digest: Digest,
    offset: u64,
    size: u64,
) -> io::Result<BoxStream<'static, io::Result<Bytes>>> {
    let opened = tokio::task::spawn_blocking(move || store.open_blob(&repo, digest))
        .await
        .map_err(io::Error::other)?
        .map_err(io::Error::other)?;
    let file =
        opened.ok_or_else(|| io::Error::other(format!("{digest} vanished from the store")))?;
    Ok(read_file(
        file.into_file(),
        offset,
        size.saturating_sub(offset),
    ))
}

/// What a client asks of a mirror blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobWant {
    /// Its size (HEAD).
    Head,
    /// All of it (GET).
    Whole,
    /// A range of it (GET with `Range`): served from the store once fetched.
    Range,
}

/// How the mirror answers a blob request.
pub enum BlobAnswer {
    /// The blob is in the store and linked into the repository: serve it from there.
    Stored(CacheStatus),
    /// The blob is arriving from the upstream; the stream fails if the fetch does.
    Streaming {
        /// The upstream's `Content-Length`, if it sent one.
        size: Option<u64>,
        /// The bytes from the start.
        body: BoxStream<'static, io::Result<Bytes>>,
        /// Fetched, or collapsed into another request's fetch.
        status: CacheStatus,
    },
    /// The size, for a HEAD; the fetch goes on in the background.
    Size(u64, CacheStatus),
}

impl std::fmt::Debug for BlobAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stored(status) => f.debug_tuple("Stored").field(status).finish(),
            Self::Streaming { size, status, .. } => f
                .debug_struct("Streaming")
                .field("size", size)
                .field("status", status)
                .finish_non_exhaustive(),
            Self::Size(size, status) => f.debug_tuple("Size").field(size).field(status).finish(),
        }
    }
}

impl BlobAnswer {
    fn status(&self) -> &CacheStatus {
        match self {
            Self::Stored(status) | Self::Size(_, status) | Self::Streaming { status, .. } => status,
        }
    }
}

/// How often a request looks again when the fetch it wanted to join was just finishing.
const JOIN_ATTEMPTS: usize = 3;

impl Mirror {
    /// Answers a blob request on the mirror repository `name`: from the store when the
    /// blob is there (linking it into `name` if another repository has it), else through
    /// the one upstream fetch of `digest` (see the module docs).
    pub async fn blob(
        &self,
        name: &RepoName,
        digest: Digest,
        want: BlobWant,
    ) -> Result<BlobAnswer, MirrorError> {
        let answer = self.resolve_blob(name, digest, want).await;
        let outcome = match &answer {
            Ok(answer) => answer.status().label(),
            Err(_) => "error",
        };
        self.inner.metrics.count_answer("blob", outcome);
        answer
    }

    async fn resolve_blob(
        &self,
        name: &RepoName,
        digest: Digest,
        want: BlobWant,
    ) -> Result<BlobAnswer, MirrorError> {
        let (upstream, path) = self.upstream_for(name)?;
        let repo = name.to_string();
        let mirror = name.first_component().to_owned();
        for _ in 0..JOIN_ATTEMPTS {
            let (store, linked_repo) = (self.inner.store.clone(), repo.clone());
            let scope = format!("{mirror}/");
            let stored = blocking("look up a blob", move || {
                if store.stat_blob(&linked_repo, digest)?.is_some() {
                    return Ok(true);
                }
                // Fetched for another repository of this mirror: its upstream served it,
                // so share it. Bytes that only a push brought stay invisible here until
                // the upstream serves them too (the fetch below).
                store.link_within(&scope, &linked_repo, digest)
            })
            .await?;
            if stored {
                return Ok(BlobAnswer::Stored(CacheStatus::Hit));
            }
            let (flight, status) = match self.inner.blobs.join(&mirror, digest, &repo) {
                Joined::Finishing => continue,
                Joined::Follower(flight) => (flight, CacheStatus::Collapsed),
                Joined::Leader(flight) => {
                    let fetch = Fetch {
                        flight: flight.clone(),
                        fetches: self.inner.blobs.clone(),
                        store: self.inner.store.clone(),
                        upstream: upstream.clone(),
                        path: path.to_owned(),
                        repo: repo.clone(),
                        metrics: self.inner.metrics.clone(),
                    };
                    tokio::spawn(fetch.run());
                    (flight, CacheStatus::Fetched)
                }
            };
            return match want {
                BlobWant::Head => {
                    let size = match flight.started().await? {
                        Some(size) => size,
                        None => flight.finished().await?,
                    };
                    Ok(BlobAnswer::Size(size, status))
                }
                BlobWant::Range => {
                    flight.finished().await?;
                    Ok(BlobAnswer::Stored(status))
                }
                BlobWant::Whole => {
                    let size = flight.started().await?;
                    Ok(BlobAnswer::Streaming {
                        size,
                        body: flight.reader(self.inner.store.clone(), repo),
                        status,
                    })
                }
            };
        }
        Err(MirrorError::Task {
            action: "fetch a blob",
            reason: format!("{digest} was fetched and gone again {JOIN_ATTEMPTS} times"),
        })
    }
}

/// What a fetch needs: the flight, where to fetch from and where to store.
pub(crate) struct Fetch {
    pub flight: Arc<Flight>,
    pub fetches: Arc<BlobFetches>,
    pub store: Store,
    pub upstream: Arc<Upstream>,
    /// The repository path at the upstream (the name after the mirror's).
    pub path: String,
    /// The mirror repository the leading request named; the blob is committed into it.
    pub repo: String,
    pub metrics: MirrorMetrics,
}

impl Fetch {
    /// Runs the fetch to its end and records the outcome for every reader.
    pub(crate) async fn run(self) {
        let started = std::time::Instant::now();
        let digest = self.flight.digest;
        let upstream = self.upstream.name().to_owned();
        let result = self.fetch().await;
        let result = match result {
            Ok(size) => self.link_readers().await.map(|()| size),
            Err(err) => Err(err),
        };
        self.metrics.count_fetch(&upstream, "blob", result.is_ok());
        match &result {
            Ok(size) => tracing::info!(
                upstream,
                repo = %self.repo,
                %digest,
                bytes = size,
                ms = started.elapsed().as_millis() as u64,
                "mirror fetched a blob"
            ),
            Err(err) => tracing::warn!(
                upstream,
                repo = %self.repo,
                %digest,
                error = %crate::report::error_chain(err),
                "mirror could not fetch a blob; nothing was stored"
            ),
        }
        self.flight.update(|state| state.outcome = Some(result));
        self.fetches.remove(&self.flight);
    }

    async fn fetch(&self) -> Result<u64, MirrorError> {
        let digest = self.flight.digest;
        // On any early return below the sink is dropped: a writer's temp file goes with it
        // and the store's waiters hear that the ingest failed.
        let sink = self.sink().await?;
        let blob = self.upstream.fetch_blob(&self.path, &digest).await?;
        let expected_size = blob.size;
        self.flight.update(|state| {
            state.started = true;
            state.size = expected_size;
        });
        let (tx, rx) = mpsc::channel::<Bytes>(WRITE_AHEAD);
        let writing = tokio::task::spawn_blocking(move || sink.consume(Chunks::new(rx)));
        let mut stream = blob.stream;
        let mut broken: Option<UpstreamError> = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(chunk) => {
                    if tx.send(chunk.clone()).await.is_err() {
                        break; // the writer failed; its error is read below
                    }
                    let window = self.fetches.window;
                    self.flight.update(|state| state.push(chunk, window));
                }
                Err(err) => {
                    broken = Some(err);
                    break;
                }
            }
        }
        drop(tx);
        let written = writing
            .await
            .map_err(|err| MirrorError::task("write a fetched blob", err))?;
        if let Some(err) = broken {
            return Err(err.into());
        }
        let sink = written.map_err(|err| MirrorError::store("write a fetched blob", &err))?;
        let repo = self.repo.clone();
        let committed =
            tokio::task::spawn_blocking(move || sink.finish(&repo, digest, expected_size))
                .await
                .map_err(|err| MirrorError::task("commit a fetched blob", err))?;
        match committed {
            Ok(size) => Ok(size),
            Err(err @ (StoreError::DigestMismatch { .. } | StoreError::SizeMismatch { .. })) => {
                Err(MirrorError::Upstream(UpstreamError::Invalid {
                    upstream: self.upstream.name().to_owned(),
                    action: format!("fetch blob {}@{digest}", self.path),
                    reason: err.to_string(),
                }))
            }
            Err(err) => Err(MirrorError::store("commit a fetched blob", &err)),
        }
    }

    /// Where the upstream's bytes go: into the store, or, when the store has the digest
    /// already (pushed by a namespace, or fetched by another mirror), only through a
    /// hasher. Either way the upstream serves the whole blob before it becomes part of a
    /// repository of this mirror: bytes on disk are shared, visibility is not.
    async fn sink(&self) -> Result<Sink, MirrorError> {
        let digest = self.flight.digest;
        for _ in 0..JOIN_ATTEMPTS {
            let store = self.store.clone();
            match blocking("start a blob ingest", move || store.ingest(digest)).await? {
                Ingest::Write(writer) => return Ok(Sink::Store(writer)),
                Ingest::Present(_) => return Ok(Sink::verify()),
                Ingest::Wait(waiter) => {
                    // Whatever the other ingest's outcome, look again: present now (verify
                    // against the upstream), or missing (write it).
                    let _ = tokio::task::spawn_blocking(move || waiter.wait()).await;
                }
            }
        }
        Err(MirrorError::Task {
            action: "start a blob ingest",
            reason: format!("{digest} was being written by others {JOIN_ATTEMPTS} times"),
        })
    }

    /// Links the blob into every repository whose clients joined the fetch; from here on
    /// no one joins (they find the blob in the store).
    async fn link_readers(&self) -> Result<(), MirrorError> {
        let repos = {
            let mut state = lock(&self.flight.state);
            state.closing = true;
            std::mem::take(&mut state.repos)
        };
        let (store, digest) = (self.store.clone(), self.flight.digest);
        let linked = blocking("link a fetched blob", move || {
            for repo in &repos {
                if !store.link(repo, digest)? {
                    return Ok(false);
                }
            }
            Ok(true)
        })
        .await?;
        if linked {
            Ok(())
        } else {
            // Only a verified blob that GC removed between the check and the link.
            Err(MirrorError::Task {
                action: "link a fetched blob",
                reason: format!("{digest} left the store while the upstream served it"),
            })
        }
    }
}

/// Where a fetch puts the upstream's bytes.
enum Sink {
    /// A new blob: written and verified by the store.
    Store(BlobWriter),
    /// A blob the store holds already: hashed and counted, then compared.
    Verify { hasher: Hasher, received: u64 },
}

impl Sink {
    fn verify() -> Self {
        Self::Verify {
            hasher: Hasher::new(),
            received: 0,
        }
    }

    fn consume(mut self, chunks: impl Iterator<Item = Bytes>) -> Result<Self, StoreError> {
        for chunk in chunks {
            match &mut self {
                Self::Store(writer) => writer.write_chunk(&chunk)?,
                Self::Verify { hasher, received } => {
                    hasher.update(&chunk);
                    *received += chunk.len() as u64;
                }
            }
        }
        Ok(self)
    }

    /// Checks the digest (and the upstream's size, if it sent one); a new blob is committed
    /// into `repo`. Returns the blob's size.
    fn finish(
        self,
        repo: &str,
        digest: Digest,
        expected_size: Option<u64>,
    ) -> Result<u64, StoreError> {
        match self {
            Self::Store(writer) => Ok(writer.commit(repo, digest, expected_size)?.size),
            Self::Verify { hasher, received } => {
                let actual = hasher.finish();
                if actual != digest {
                    return Err(StoreError::digest_mismatch(digest, actual));
                }
                if let Some(expected) = expected_size.filter(|&size| size != received) {
                    return Err(StoreError::SizeMismatch {
                        expected,
                        actual: received,
                    });
                }
                Ok(received)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_with(chunks: &[&'static [u8]], window: usize) -> FlightState {
        let mut state = FlightState::default();
        for chunk in chunks {
            state.push(Bytes::from_static(chunk), window);
        }
        state
    }

    #[test]
    fn readers_get_everything_but_the_last_chunk_until_the_commit() {
        let mut state = state_with(&[b"abc", b"de", b"f"], 1 << 20);
        assert_eq!(state.step(0), Step::Data(Bytes::from_static(b"abc")));
        assert_eq!(state.step(1), Step::Data(Bytes::from_static(b"bc")));
        assert_eq!(state.step(3), Step::Data(Bytes::from_static(b"de")));
        // "f" is held back until the store has verified the digest.
        assert_eq!(state.step(5), Step::Wait);
        state.outcome = Some(Ok(6));
        assert_eq!(state.step(5), Step::Data(Bytes::from_static(b"f")));
        assert_eq!(state.step(6), Step::End);
    }

    #[test]
    fn a_failed_fetch_fails_every_reader_wherever_it_is() {
        let mut state = state_with(&[b"abc", b"de"], 1 << 20);
        state.outcome = Some(Err(MirrorError::Upstream(UpstreamError::Unavailable {
            upstream: "hub".into(),
            action: "fetch blob".into(),
            reason: "transfer broke off".into(),
            status: None,
        })));
        for offset in [0, 3, 5] {
            assert!(
                matches!(state.step(offset), Step::Failed(ref r) if r.contains("broke off")),
                "{offset}"
            );
        }
    }

    #[test]
    fn slow_readers_fall_back_to_the_store_after_the_commit() {
        // A window of 4 bytes keeps only the newest chunks.
        let mut state = state_with(&[b"abc", b"de", b"fg"], 4);
        assert_eq!(state.window_start, 3);
        assert_eq!(state.step(0), Step::Wait);
        assert_eq!(state.step(3), Step::Data(Bytes::from_static(b"de")));
        state.outcome = Some(Ok(7));
        assert_eq!(state.step(0), Step::FromStore(7));
        assert_eq!(state.step(5), Step::Data(Bytes::from_static(b"fg")));
    }

    #[test]
    fn a_blob_that_was_already_present_is_read_from_the_store() {
        let mut state = FlightState::default();
        assert_eq!(state.step(0), Step::Wait);
        state.outcome = Some(Ok(10));
        assert_eq!(state.step(0), Step::FromStore(10));
        state.outcome = Some(Ok(0));
        assert_eq!(state.step(0), Step::End);
    }

    #[test]
    fn joins_share_one_flight_until_it_closes() {
        let fetches = BlobFetches::new(1 << 20);
        let digest = Digest::of(b"x");
        let leader = match fetches.join("hub", digest, "hub/a") {
            Joined::Leader(flight) => flight,
            _ => panic!("the first join leads"),
        };
        assert!(
            matches!(fetches.join("hub", digest, "hub/b"), Joined::Follower(f) if Arc::ptr_eq(&f, &leader))
        );
        assert_eq!(
            lock(&leader.state).repos,
            BTreeSet::from(["hub/a".to_owned(), "hub/b".to_owned()])
        );
        lock(&leader.state).closing = true;
        assert!(matches!(
            fetches.join("hub", digest, "hub/c"),
            Joined::Finishing
        ));
        // Another mirror never joins this one's fetch: its upstream must serve the blob.
        assert!(matches!(
            fetches.join("quay", digest, "quay/a"),
            Joined::Leader(_)
        ));
        fetches.remove(&leader);
        assert_eq!(fetches.in_progress(), 1);
        assert!(matches!(
            fetches.join("hub", digest, "hub/c"),
            Joined::Leader(_)
        ));
    }
}
