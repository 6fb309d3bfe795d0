//! Running the cache service: the accept loop with per-connection limits against slow
//! clients, the background tasks (last-access flush, online GC), and graceful shutdown
//! (I/O: sockets, timers, the store).
//!
//! # Slow clients
//! - headers: a connection that takes longer than `header_timeout` to send a request's
//!   headers, or sits idle between requests that long, is closed (hyper's header timer);
//! - request bodies: a body that sends nothing for `body_idle_timeout` fails the request
//!   (the router's body timeout);
//! - responses: a client that reads nothing for `write_stall_timeout` loses the
//!   connection ([`StallGuard`]).
//!
//! # Shutdown
//! When `shutdown` resolves, `/readyz` turns 503, the listener closes, every connection
//! finishes its request in flight and closes; after `shutdown_grace` the rest are cut.
//! Then the background tasks stop, pending access times are written, and the store is
//! closed.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Sleep;

use crate::registry::admin::record_gc;
use crate::registry::service::Registry;
use crate::store::{GcOptions, StoreError};

/// How the server runs, besides what the registry holds.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Longest wait for a request's headers, and longest idle keep-alive.
    pub header_timeout: Duration,
    /// Longest a response may wait for the client to read.
    pub write_stall_timeout: Duration,
    /// How long requests in flight may take to finish after shutdown starts.
    pub shutdown_grace: Duration,
    /// How often pulls' last-access times are written to the store.
    pub flush_interval: Duration,
    /// The online GC: how often, and with which policy (`None`: never).
    pub gc: Option<GcSchedule>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(30),
            write_stall_timeout: Duration::from_secs(120),
            shutdown_grace: Duration::from_secs(30),
            flush_interval: Duration::from_secs(10),
            gc: None,
        }
    }
}

/// When and how the online GC runs.
#[derive(Debug, Clone)]
pub struct GcSchedule {
    /// Time between runs (the first one runs one interval after start).
    pub interval: Duration,
    /// The policy, grace window and batch size.
    pub options: GcOptions,
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum CacheServeError {
    /// The store could not be closed cleanly (pending access times were not written).
    #[error("cannot close the cache store")]
    CloseStore(#[source] StoreError),
}

/// Serves `registry` on `listener` until `shutdown` resolves, then shuts down as the
/// module docs say. Tests call it with a loopback listener; `kiln cache serve` with the
/// listen address and SIGTERM/SIGINT.
pub async fn serve(
    registry: Registry,
    listener: TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), CacheServeError> {
    let router = registry.router();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut background = JoinSet::new();
    background.spawn(flush_loop(
        registry.clone(),
        options.flush_interval,
        stop_rx.clone(),
    ));
    if let Some(schedule) = options.gc.clone() {
        background.spawn(gc_loop(registry.clone(), schedule, stop_rx.clone()));
    }
    background.spawn(measure_store(registry.clone()));
    background.spawn(expire_uploads_loop(registry.clone(), stop_rx.clone()));
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Small writes (headers, 201s) go out at once.
                    let _ = stream.set_nodelay(true);
                    let io = TokioIo::new(StallGuard::new(stream, options.write_stall_timeout));
                    connections.spawn(connection(
                        io,
                        TowerToHyperService::new(router.clone()),
                        options.header_timeout,
                        stop_rx.clone(),
                        peer,
                    ));
                }
                Err(err) => {
                    // Out of file descriptors, usually: wait instead of spinning.
                    tracing::warn!(error = %err, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    let started = Instant::now();
    registry.set_ready(false);
    drop(listener);
    let _ = stop_tx.send(true);
    tracing::info!(
        connections = connections.len(),
        grace_secs = options.shutdown_grace.as_secs(),
        "shutting down: finishing requests in flight"
    );
    let deadline = tokio::time::sleep(options.shutdown_grace);
    let mut deadline = std::pin::pin!(deadline);
    loop {
        tokio::select! {
            next = connections.join_next() => if next.is_none() { break },
            () = &mut deadline => {
                tracing::warn!(
                    connections = connections.len(),
                    "shutdown grace period over: closing the remaining connections"
                );
                connections.abort_all();
                while connections.join_next().await.is_some() {}
                break;
            }
        }
    }
    background.abort_all();
    while background.join_next().await.is_some() {}
    let store = registry.store().clone();
    drop(router);
    drop(registry);
    let closed = tokio::task::spawn_blocking(move || store.close())
        .await
        .unwrap_or_else(|err| {
            Err(StoreError::Io {
                action: "close",
                path: Default::default(),
                source: io::Error::other(err.to_string()),
            })
        });
    closed.map_err(CacheServeError::CloseStore)?;
    tracing::info!(
        ms = started.elapsed().as_millis() as u64,
        "shut down cleanly"
    );
    Ok(())
}

async fn connection(
    io: TokioIo<StallGuard<tokio::net::TcpStream>>,
    service: TowerToHyperService<axum::Router>,
    header_timeout: Duration,
    mut stop: watch::Receiver<bool>,
    peer: std::net::SocketAddr,
) {
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let stopping = *stop.borrow_and_update();
    if stopping {
        conn.as_mut().graceful_shutdown();
    }
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.as_mut().await
        }
    };
    if let Err(err) = result {
        // Timeouts, resets and malformed requests: the client's problem, not ours.
        tracing::debug!(%peer, error = %err, "connection ended with an error");
    }
}

async fn flush_loop(registry: Registry, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => return,
        }
        let store = registry.store().clone();
        match tokio::task::spawn_blocking(move || store.flush_access()).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => tracing::warn!(
                error = %crate::report::error_chain(&err),
                "cannot write last-access times; will retry"
            ),
            Err(err) => tracing::warn!(error = %err, "last-access flush task failed"),
        }
    }
}

async fn gc_loop(registry: Registry, schedule: GcSchedule, mut stop: watch::Receiver<bool>) {
    let start = tokio::time::Instant::now() + schedule.interval;
    let mut ticks = tokio::time::interval_at(start, schedule.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => return,
        }
        let (store, options) = (registry.store().clone(), schedule.options.clone());
        let started = Instant::now();
        match tokio::task::spawn_blocking(move || store.gc(&options)).await {
            Ok(Ok(report)) => {
                record_gc(&registry, &report);
                tracing::info!(
                    freed_bytes = report.bytes_freed,
                    tags = report.tags_removed,
                    blobs = report.blobs_removed,
                    bytes_after = report.bytes_after,
                    ceiling_unmet = report.ceiling_unmet,
                    ms = started.elapsed().as_millis() as u64,
                    "online GC ran"
                );
            }
            Ok(Err(err)) => {
                registry
                    .metrics()
                    .gc_runs
                    .get_or_create(&crate::registry::metrics::GcLabels { result: "error" })
                    .inc();
                tracing::error!(error = %crate::report::error_chain(&err), "online GC failed");
            }
            Err(err) => tracing::error!(error = %err, "online GC task failed"),
        }
    }
}

/// Removes upload sessions idle for longer than the TTL, checking a few times per TTL
/// (at most every minute, at least every 100 ms) so that one lives at most about 1.25 TTL.
async fn expire_uploads_loop(registry: Registry, mut stop: watch::Receiver<bool>) {
    let ttl = registry.limits().upload_ttl;
    let every = (ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => return,
        }
        let store = registry.store().clone();
        match tokio::task::spawn_blocking(move || store.upload_expire(ttl)).await {
            Ok(Ok(expired)) => {
                if expired.sessions > 0 {
                    registry.metrics().uploads_expired.inc_by(expired.sessions);
                    tracing::info!(
                        sessions = expired.sessions,
                        bytes = expired.bytes,
                        "removed upload sessions idle for longer than --upload-ttl"
                    );
                }
                registry.count_uploads();
            }
            Ok(Err(err)) => tracing::warn!(
                error = %crate::report::error_chain(&err),
                "cannot remove expired upload sessions; will retry"
            ),
            Err(err) => tracing::warn!(error = %err, "upload expiry task failed"),
        }
    }
}

/// Sets the store-size gauge once at start (GC runs keep it current after that).
async fn measure_store(registry: Registry) {
    let store = registry.store().clone();
    if let Ok(Ok(du)) = tokio::task::spawn_blocking(move || store.du()).await {
        registry
            .metrics()
            .store_bytes
            .set(i64::try_from(du.total_bytes).unwrap_or(i64::MAX));
    }
}

/// A connection whose writes fail after stalling for longer than a limit: a client that
/// stops reading a response cannot hold a connection (and a blob file) forever. Reads pass
/// through; idle reads are the header timer's business.
pub struct StallGuard<T> {
    inner: T,
    limit: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<T> StallGuard<T> {
    /// Guards `inner`'s writes with `limit`.
    pub fn new(inner: T, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            stalled: None,
        }
    }

    fn check<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        match polled {
            Poll::Ready(result) => {
                self.stalled = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let limit = self.limit;
                let timer = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the client read nothing for {limit:?}"),
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    #[tokio::test]
    async fn writes_to_a_client_that_reads_nothing_time_out() {
        // A 1-byte pipe that nobody reads: the second write stalls.
        let (writer, _reader) = tokio::io::duplex(1);
        let mut guarded = StallGuard::new(writer, Duration::from_millis(200));
        guarded.write_all(b"x").await.unwrap();
        let err = guarded.write_all(b"y").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn writes_that_make_progress_never_time_out() {
        // Each byte waits 100 ms for the reader, less than the limit; the whole write
        // takes longer than the limit.
        let (writer, mut reader) = tokio::io::duplex(1);
        let mut guarded = StallGuard::new(writer, Duration::from_secs(2));
        let reading = tokio::spawn(async move {
            let mut out = Vec::new();
            let mut byte = [0u8; 1];
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                tokio::io::AsyncReadExt::read_exact(&mut reader, &mut byte)
                    .await
                    .unwrap();
                out.push(byte[0]);
            }
            out
        });
        let started = Instant::now();
        guarded.write_all(b"abc").await.unwrap();
        assert_eq!(reading.await.unwrap(), b"abc");
        assert!(started.elapsed() >= Duration::from_millis(200));
    }
}
