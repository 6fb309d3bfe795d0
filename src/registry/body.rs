//! Moving bytes between HTTP bodies and the synchronous store without holding them all in
//! memory: request bodies fed chunk by chunk to a blocking consumer (through
//! [`crate::store::stream::Chunks`]), manifests read whole under a cap, and a body wrapper
//! that counts bytes for the metrics (I/O: sockets).

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use futures::stream::StreamExt as _;
use http_body::{Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use crate::registry::error::RegistryError;
use crate::store::stream::Chunks;

/// Chunks buffered between the socket and the blocking consumer of a request body.
const FEED_AHEAD: usize = 16;

/// How a request body ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyEnd {
    /// Every byte arrived.
    Complete,
    /// The body broke off (client gone, idle timeout); what arrived before was consumed.
    Broken(String),
    /// The consumer stopped reading before the end (it failed); the rest was not read.
    Abandoned,
}

/// Feeds a request body to `consume`, which runs on a blocking thread and reads the
/// chunks as they arrive. Returns what `consume` returned and how the body ended: a
/// consumer sees the end of [`Chunks`] both when the body is complete and when it broke,
/// so it must only commit on [`BodyEnd::Complete`].
pub async fn feed<T, F>(body: Body, consume: F) -> Result<(T, BodyEnd), RegistryError>
where
    T: Send + 'static,
    F: FnOnce(Chunks) -> T + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Bytes>(FEED_AHEAD);
    let consumer = tokio::task::spawn_blocking(move || consume(Chunks::new(rx)));
    let mut stream = body.into_data_stream();
    let mut end = BodyEnd::Complete;
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) if chunk.is_empty() => {}
            Ok(chunk) => {
                if tx.send(chunk).await.is_err() {
                    end = BodyEnd::Abandoned;
                    break;
                }
            }
            Err(err) => {
                end = BodyEnd::Broken(crate::report::error_chain(&err));
                break;
            }
        }
    }
    drop(tx);
    let value = consumer
        .await
        .map_err(|err| RegistryError::internal("consume a request body", err))?;
    Ok((value, end))
}

/// Reads a whole body of at most `limit` bytes; a larger one is a 413 (`SIZE_INVALID`).
/// `what` names the body in messages ("manifest").
pub async fn read_capped(body: Body, limit: usize, what: &str) -> Result<Bytes, RegistryError> {
    let too_large = || RegistryError::TooLarge {
        reason: format!("the {what} is larger than {limit} bytes"),
    };
    if http_body::Body::size_hint(&body)
        .exact()
        .is_some_and(|len| len > limit as u64)
    {
        return Err(too_large());
    }
    let mut stream = body.into_data_stream();
    let mut out = Vec::new();
    while let Some(item) = stream.next().await {
        let chunk = item.map_err(|err| RegistryError::BlobUploadInvalid {
            reason: format!(
                "the {what} body broke off: {}",
                crate::report::error_chain(&err)
            ),
        })?;
        if out.len() + chunk.len() > limit {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(out))
}

/// A body that adds the size of every data frame to a counter, keeping the inner body's
/// size hint (so a `Content-Length` answer stays one).
pub struct Counted {
    inner: Body,
    counter: Counter,
}

impl Counted {
    /// Wraps `inner`, counting into `counter`.
    pub fn new(inner: Body, counter: Counter) -> Self {
        Self { inner, counter }
    }
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.counter.inc_by(data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[tokio::test]
    async fn bodies_feed_a_blocking_consumer_and_say_how_they_ended() {
        let chunks: Vec<Result<Bytes, io::Error>> = vec![Ok("ab".into()), Ok("cd".into())];
        let body = Body::from_stream(futures::stream::iter(chunks));
        let (got, end) = feed(body, |chunks| chunks.collect::<Vec<_>>().concat())
            .await
            .unwrap();
        assert_eq!((got, end), (b"abcd".to_vec(), BodyEnd::Complete));

        let broken: Vec<Result<Bytes, io::Error>> =
            vec![Ok("ab".into()), Err(io::Error::other("client gone"))];
        let body = Body::from_stream(futures::stream::iter(broken));
        let (got, end) = feed(body, |chunks| chunks.count()).await.unwrap();
        assert_eq!(got, 1);
        assert!(matches!(end, BodyEnd::Broken(reason) if reason.contains("client gone")));

        let many: Vec<Result<Bytes, io::Error>> =
            (0..100).map(|_| Ok(Bytes::from_static(b"x"))).collect();
        let body = Body::from_stream(futures::stream::iter(many));
        let (_, end) = feed(body, |mut chunks| chunks.next()).await.unwrap();
        assert_eq!(end, BodyEnd::Abandoned);
    }

    #[tokio::test]
    async fn capped_reads_refuse_what_is_too_large() {
        let read = read_capped(Body::from("12345"), 5, "manifest")
            .await
            .unwrap();
        assert_eq!(read.as_ref(), b"12345");
        let err = read_capped(Body::from("123456"), 5, "manifest")
            .await
            .unwrap_err();
        assert_eq!(err.status().as_u16(), 413);
        let chunks: Vec<Result<Bytes, io::Error>> = vec![Ok("123".into()), Ok("456".into())];
        let err = read_capped(
            Body::from_stream(futures::stream::iter(chunks)),
            5,
            "manifest",
        )
        .await
        .unwrap_err();
        assert_eq!(err.status().as_u16(), 413);
    }

    #[tokio::test]
    async fn counted_bodies_count_and_keep_their_length() {
        let counter = Counter::default();
        let body = Counted::new(Body::from("hello"), counter.clone());
        assert_eq!(http_body::Body::size_hint(&body).exact(), Some(5));
        let bytes = axum::body::to_bytes(Body::new(body), 100).await.unwrap();
        assert_eq!((bytes.len(), counter.get()), (5, 5));
    }
}
