//! `kiln context receive`: the build pod's `context` init container. It gets the context
//! tar a Build declares (by digest and size) from the cache, or from an upload by
//! `kubectl kiln build --local`, keeps it in the cache under the Build's tag, and unpacks it
//! as the build context (I/O: an HTTP server, the cache registry, files beside the
//! destination).
//!
//! # Steps
//! 1. The HTTP server starts at once, in state [`UploadState::Checking`]; `GET` of the
//!    status always answers (see [`crate::context::protocol`] for the protocol).
//! 2. If the contexts repository already holds the blob, it is downloaded, tagged and
//!    unpacked, and the receiver reports `Done` with `fromCache`: the uploader sends
//!    nothing.
//! 3. Otherwise the receiver waits for chunks (`Waiting`), appending them to a spool file,
//!    and meanwhile looks in the cache every `poll`: another pod of the attempt may have
//!    received the same tar, and then this one takes it from the cache.
//! 4. On `done`, the spool must be exactly the declared size and digest; if not, it is
//!    emptied for a new upload and the uploader is told why. If so, the tar is pushed to
//!    the cache (unless it is there already), tagged and unpacked, and the answer is `Done`.
//! 5. After `Done` the server answers for a short grace (so that a polling uploader sees
//!    `Done`), then the process exits 0. Without an upload within `wait`, or on any failure
//!    to store or unpack, it fails with one sentence for the Build's status.
//!
//! # Guarantees
//! - Nothing is unpacked but bytes this process hashed and counted as the declared tar:
//!   the spool is hashed as it is written, a download as it is read.
//! - Nothing is held whole in memory: chunks stream to the spool, blobs stream to and from
//!   files (the container's memory limit is small, contexts can be large).
//! - Exactly one of the upload and the cache poll finishes (`session`), and the tag is
//!   the same manifest whichever does ([`crate::context::artifact`]).
//! - The destination must be empty, and nothing is written outside it ([`unpack`]).
//!
//! | module | holds |
//! | --- | --- |
//! | [`rules`] | where a chunk goes, whether an upload is the declared tar (pure) |
//! | [`cache`] | the cache registry: look, download, push, tag |
//! | [`unpack`] | the tar into the destination, refusing escapes |
//! | `session` | the shared state of the handlers and the main loop |
//! | `server` | the HTTP routes |

// An error here ends a one-shot command; a few more bytes per `Result` cost nothing.
#![allow(clippy::result_large_err)]

pub mod cache;
pub mod rules;
mod server;
mod session;
pub mod unpack;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};

pub use cache::{CacheClient, CacheError};
pub use unpack::{UnpackError, Unpacked};

use crate::context::protocol::UploadState;
use crate::oci::digest::Digest;
use crate::oci::name::{RepoName, Tag};
use crate::publish::client::DOCKER_CONFIG_FILE;
use crate::registry::mirror::credentials::{Credentials, CredentialsError, read_credentials};
use crate::report::error_chain;
use crate::retry::Retry;
use crate::units::{format_duration, format_size};
use session::{Session, WorkDir};

/// How long the server keeps answering after `Done` by default: an uploader polls every
/// second or so, and must see `Done` rather than a closed connection.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3);

/// The shortest poll interval: a zero interval would spin.
pub const MIN_POLL: Duration = Duration::from_millis(10);

/// How long a stopping server may take to finish the requests under way.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(5);

/// What to receive, and where.
#[derive(Clone, Debug)]
pub struct ReceiveOptions {
    /// The cache registry's root, `http[s]://host[:port]`.
    pub registry: Url,
    /// The contexts repository on it.
    pub repository: RepoName,
    /// The Build's tag in it.
    pub tag: Tag,
    /// The tar's digest, as the Build declares it.
    pub digest: Digest,
    /// The tar's size in bytes, as the Build declares it.
    pub size: u64,
    /// The directory to unpack into (created; it must be empty).
    pub dest: PathBuf,
    /// The address the server listens on.
    pub listen: SocketAddr,
    /// How long to wait for an upload before giving up.
    pub wait: Duration,
    /// How often, while waiting, to look whether the cache got the tar (at least
    /// [`MIN_POLL`]).
    pub poll: Duration,
    /// How long to keep answering after `Done`.
    pub grace: Duration,
    /// Credentials for the cache; `None` is anonymous.
    pub credentials: Option<Credentials>,
    /// The retry policy for transient cache failures.
    pub retry: Retry,
}

/// What a receiver did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// Whether the tar came from the cache rather than from an upload.
    pub from_cache: bool,
    /// The digest of the manifest tagged for it.
    pub manifest: Digest,
    /// What was unpacked.
    pub unpacked: Unpacked,
    /// From start to `Done`.
    pub elapsed: Duration,
}

/// Why the context was not received. Each variant is named after the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The Docker config could not be read or used.
    #[error("cannot read the cache credentials")]
    ReadCredentials(#[source] CredentialsError),
    /// The HTTP client could not be built.
    #[error("cannot set up the cache client: {reason}")]
    BuildClient {
        /// What went wrong.
        reason: String,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {address}")]
    Listen {
        /// The address.
        address: SocketAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The destination cannot take the context.
    #[error(transparent)]
    Destination(UnpackError),
    /// The work directory beside the destination could not be made.
    #[error("cannot make the receiver's work directory {}", .path.display())]
    WorkDir {
        /// The directory.
        path: PathBuf,
        /// The cause (`None`: the destination has no parent directory).
        #[source]
        source: Option<io::Error>,
    },
    /// The first look in the cache failed.
    #[error("cannot look for the context {digest} in the cache")]
    LookUp {
        /// The declared digest.
        digest: Digest,
        /// What the cache said.
        #[source]
        source: CacheError,
    },
    /// The Build's declaration contradicts the cache.
    #[error("{message}")]
    Declaration {
        /// The sentence for the user.
        message: String,
    },
    /// The tar could not be downloaded from the cache.
    #[error("cannot download the context {digest} from the cache")]
    Download {
        /// The declared digest.
        digest: Digest,
        /// What went wrong.
        #[source]
        source: CacheError,
    },
    /// The uploaded tar could not be pushed to the cache.
    #[error("cannot store the context {digest} in the cache")]
    Store {
        /// The declared digest.
        digest: Digest,
        /// What went wrong.
        #[source]
        source: CacheError,
    },
    /// The manifest could not be tagged.
    #[error("cannot tag the context's manifest at {tag}")]
    Tag {
        /// The tag.
        tag: String,
        /// What went wrong.
        #[source]
        source: CacheError,
    },
    /// The tar could not be unpacked.
    #[error("cannot unpack the context")]
    Unpack(#[source] UnpackError),
    /// The upload could not be written to the spool file.
    #[error("cannot write the upload to {}", .path.display())]
    Spool {
        /// The spool file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// No upload completed in time.
    #[error(
        "no context was uploaded within {}: run kubectl kiln build --local again, or delete the Build",
        format_duration(*.wait)
    )]
    NoUpload {
        /// The wait.
        wait: Duration,
    },
    /// The HTTP server failed.
    #[error("the receiver's HTTP server stopped")]
    Serve(#[source] io::Error),
    /// A task of the receiver ended before it finished.
    #[error("the receiver stopped: {reason}")]
    Interrupted {
        /// What happened.
        reason: String,
    },
}

/// The credentials for `registry` (`host[:port]`) in `dir/config.json`, a Docker config
/// directory (the attempt's cache token Secret). No directory, no file or no entry for the
/// registry is `None`: anonymous.
pub fn read_docker_config(
    dir: Option<&Path>,
    registry: &str,
) -> Result<Option<Credentials>, ReceiveError> {
    let Some(dir) = dir else {
        return Ok(None);
    };
    let path = dir.join(DOCKER_CONFIG_FILE);
    if !path.exists() {
        return Ok(None);
    }
    read_credentials(&path, registry).map_err(ReceiveError::ReadCredentials)
}

/// A receiver whose address is bound, ready to [`run`](Receiver::run).
pub struct Receiver {
    options: ReceiveOptions,
    listener: TcpListener,
}

impl Receiver {
    /// Binds `options.listen`.
    pub async fn bind(options: ReceiveOptions) -> Result<Self, ReceiveError> {
        let listener =
            TcpListener::bind(options.listen)
                .await
                .map_err(|source| ReceiveError::Listen {
                    address: options.listen,
                    source,
                })?;
        Ok(Self { options, listener })
    }

    /// The bound address (the port chosen for `:0`).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Receives the context: serves the upload protocol until the context is unpacked (then
    /// answers for `grace` more) or the receiver fails.
    pub async fn run(self) -> Result<Received, ReceiveError> {
        let Self {
            mut options,
            listener,
        } = self;
        options.poll = options.poll.max(MIN_POLL);
        let address = listener.local_addr().unwrap_or(options.listen);
        let work = prepare(&options.dest)?;
        let cache = CacheClient::new(
            &options.registry,
            &options.repository,
            &options.tag,
            options.credentials.as_ref(),
            options.retry,
        )
        .map_err(|reason| ReceiveError::BuildClient { reason })?;
        let (outcomes, mut outcome_rx) = mpsc::unbounded_channel();
        let session = Arc::new(Session::new(options.clone(), cache, work, outcomes.clone()));
        let (stop, stopped) = oneshot::channel::<()>();
        let app = server::router(session.clone());
        let server = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(err) = served {
                let _ = outcomes.send(Err(ReceiveError::Serve(err)));
            }
        });
        tracing::info!(
            listen = %address,
            registry = %options.registry,
            repository = %options.repository,
            tag = %options.tag,
            digest = %options.digest,
            size = options.size,
            dest = %options.dest.display(),
            "receiving the build context ({})",
            format_size(options.size)
        );
        let outcome = drive(&session, &options, &mut outcome_rx).await;
        match &outcome {
            Ok(received) => {
                tracing::info!(
                    from_cache = received.from_cache,
                    manifest = %received.manifest,
                    took = %format_duration(received.elapsed),
                    "the build context is ready"
                );
                tokio::time::sleep(options.grace).await;
            }
            Err(err) => {
                tracing::error!(error = %error_chain(err), "the build context was not received")
            }
        }
        let _ = stop.send(());
        if tokio::time::timeout(SHUTDOWN_LIMIT, server).await.is_err() {
            tracing::warn!("requests still under way at exit");
        }
        outcome
    }
}

/// Binds `options.listen` and receives the context ([`Receiver`]).
pub async fn receive(options: ReceiveOptions) -> Result<Received, ReceiveError> {
    Receiver::bind(options).await?.run().await
}

/// Checks the destination and makes an empty work directory beside it.
fn prepare(dest: &Path) -> Result<WorkDir, ReceiveError> {
    let work = WorkDir::beside(dest).ok_or_else(|| ReceiveError::WorkDir {
        path: dest.to_owned(),
        source: None,
    })?;
    unpack::prepare_destination(dest).map_err(ReceiveError::Destination)?;
    let failed = |source| ReceiveError::WorkDir {
        path: work.dir.clone(),
        source: Some(source),
    };
    // A work directory left by an earlier run holds nothing this run can trust.
    match std::fs::remove_dir_all(&work.dir) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(failed(err)),
    }
    std::fs::create_dir_all(&work.dir).map_err(failed)?;
    Ok(work)
}

/// Steps 2 to 4: the cache, else the upload or a later cache hit, within the wait.
async fn drive(
    session: &Arc<Session>,
    options: &ReceiveOptions,
    outcomes: &mut mpsc::UnboundedReceiver<session::Outcome>,
) -> Result<Received, ReceiveError> {
    let digest = options.digest;
    let cached = session
        .cache()
        .blob_size(&digest)
        .await
        .map_err(|source| ReceiveError::LookUp { digest, source })?;
    if let Some(size) = cached {
        rules::check_cached_size(Some(size), options.size, &digest)
            .map_err(|message| ReceiveError::Declaration { message })?;
        tracing::info!(%digest, size, "the context is in the cache");
        return session.finish_from_cache().await;
    }
    session.start_waiting().await?;
    tracing::info!(
        wait = %format_duration(options.wait),
        "the context is not in the cache: waiting for an upload"
    );
    let deadline = Instant::now() + options.wait;
    let mut poll = tokio::time::interval_at(Instant::now() + options.poll, options.poll);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut past_deadline = false;
    loop {
        tokio::select! {
            outcome = outcomes.recv() => {
                return outcome.unwrap_or_else(|| Err(ReceiveError::Interrupted {
                    reason: "every request handler is gone".to_owned(),
                }));
            }
            _ = poll.tick() => {
                if let Some(outcome) = session.poll_cache().await {
                    return outcome;
                }
            }
            () = tokio::time::sleep_until(deadline), if !past_deadline => {
                // An upload that is being stored has arrived: let it finish.
                if session.status().state == UploadState::Waiting {
                    return Err(ReceiveError::NoUpload { wait: options.wait });
                }
                past_deadline = true;
            }
        }
    }
}
