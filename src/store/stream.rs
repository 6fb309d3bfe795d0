//! Blob bytes as async streams and blocking iterators, for the async server above the
//! synchronous store: a blob file streamed out from a blocking reader, and the chunks of a
//! producer handed to a blocking consumer (I/O: files; tokio tasks and channels, no HTTP).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt as _};
use tokio::sync::mpsc;

/// Bytes per chunk read from a blob file: large enough that a 64 MiB blob costs a few
/// dozen reads, wakeups and socket writes, small enough to start sending at once.
pub const READ_CHUNK: usize = 1 << 20;

/// Chunks buffered between the blocking file reader and the socket.
const READ_AHEAD: usize = 4;

/// Streams `len` bytes of `file` from `offset`, read on a blocking thread. The stream
/// fails (rather than ends early) when the file is shorter than promised, so a client
/// never mistakes a truncated answer for a whole one.
pub fn read_file(mut file: File, offset: u64, len: u64) -> BoxStream<'static, io::Result<Bytes>> {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(READ_AHEAD);
    tokio::task::spawn_blocking(move || {
        if let Err(err) = file.seek(SeekFrom::Start(offset)) {
            let _ = tx.blocking_send(Err(err));
            return;
        }
        let mut left = len;
        while left > 0 {
            let want = left.min(READ_CHUNK as u64);
            // `read_to_end` into spare capacity fills the chunk without zeroing it first.
            let mut chunk = Vec::with_capacity(usize::try_from(want).unwrap_or(READ_CHUNK));
            let result = match (&mut file).take(want).read_to_end(&mut chunk) {
                Ok(0) => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("blob file ended {left} bytes early"),
                )),
                Ok(n) => {
                    left -= n as u64;
                    Ok(Bytes::from(chunk))
                }
                Err(err) => Err(err),
            };
            let failed = result.is_err();
            // The client went away: stop reading.
            if tx.blocking_send(result).is_err() || failed {
                return;
            }
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        let item = rx.recv().await?;
        Some((item, rx))
    })
    .boxed()
}

/// The chunks of a request body (or of any producer), as a blocking consumer sees them.
pub struct Chunks(mpsc::Receiver<Bytes>);

impl Chunks {
    /// Chunks from a channel.
    pub fn new(receiver: mpsc::Receiver<Bytes>) -> Self {
        Self(receiver)
    }
}

impl Iterator for Chunks {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        self.0.blocking_recv()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    async fn collect(mut stream: BoxStream<'static, io::Result<Bytes>>) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn files_stream_in_ranges_and_fail_when_short() {
        let mut file = tempfile::tempfile().unwrap();
        let bytes: Vec<u8> = (0..(READ_CHUNK * 2 + 10)).map(|i| i as u8).collect();
        file.write_all(&bytes).unwrap();
        let reopen = |f: &File| f.try_clone().unwrap();
        let whole = collect(read_file(reopen(&file), 0, bytes.len() as u64)).await;
        assert_eq!(whole.unwrap(), bytes);
        let part = collect(read_file(reopen(&file), 5, 20)).await.unwrap();
        assert_eq!(part, bytes[5..25]);
        let short = collect(read_file(reopen(&file), 0, bytes.len() as u64 + 1)).await;
        assert_eq!(short.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}
