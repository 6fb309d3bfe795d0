//! The receiver's decisions about what arrives: where a chunk goes, whether a finished
//! upload is the declared tar, when to log progress (pure).
//!
//! Kept apart from the HTTP handlers so that the protocol's rules (see
//! [`crate::context::protocol`]) are data in, data out, and tested as such.

use crate::context::protocol::MAX_CHUNK_BYTES;
use crate::oci::digest::Digest;

/// What to do with a chunk of `len` bytes sent at `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkDecision {
    /// It starts where the upload ends and fits: append it.
    Append,
    /// It lies wholly within what was already received: a chunk sent again after its
    /// answer was lost. Answer as if appended, append nothing.
    AlreadyReceived,
    /// It does not start where the upload ends (it would leave a gap, or overlap the end):
    /// refuse with the offset expected (`409`).
    WrongOffset {
        /// The offset the receiver expects: the bytes received so far.
        expected: u64,
    },
    /// It would make the tar larger than the declared size (`400`).
    PastDeclaredSize {
        /// The size the tar would reach.
        would_be: u64,
        /// The declared size.
        declared: u64,
    },
    /// It is larger than any chunk the receiver accepts (`400`).
    TooLarge,
}

/// Decides about a chunk of `len` bytes at `offset`, when `received` bytes of a tar
/// declared as `declared` bytes have arrived.
pub fn decide_chunk(offset: u64, len: u64, received: u64, declared: u64) -> ChunkDecision {
    if len > MAX_CHUNK_BYTES as u64 {
        return ChunkDecision::TooLarge;
    }
    let end = offset.saturating_add(len);
    if offset == received {
        if end > declared {
            ChunkDecision::PastDeclaredSize {
                would_be: end,
                declared,
            }
        } else {
            ChunkDecision::Append
        }
    } else if offset < received && end <= received {
        ChunkDecision::AlreadyReceived
    } else {
        ChunkDecision::WrongOffset { expected: received }
    }
}

impl ChunkDecision {
    /// The sentence for the uploader when the chunk is refused; `None` when it is taken.
    pub fn refusal(&self, offset: u64, len: u64) -> Option<String> {
        match *self {
            Self::Append | Self::AlreadyReceived => None,
            Self::WrongOffset { expected } => Some(format!(
                "a chunk of {len} bytes at offset {offset} does not continue the upload: send the chunk at offset {expected}"
            )),
            Self::PastDeclaredSize { would_be, declared } => Some(format!(
                "a chunk of {len} bytes at offset {offset} would make the tar {would_be} bytes, but the Build declared {declared}: the directory changed while it was being sent; run the command again"
            )),
            Self::TooLarge => Some(format!(
                "a chunk of {len} bytes is larger than the {MAX_CHUNK_BYTES} bytes the receiver accepts"
            )),
        }
    }
}

/// Checks that a finished upload of `received` bytes hashing to `actual` is the tar the
/// Build declared (`declared_size` bytes, `declared_digest`). The error is the sentence for
/// the uploader.
pub fn check_upload(
    received: u64,
    actual: &Digest,
    declared_size: u64,
    declared_digest: &Digest,
) -> Result<(), String> {
    if received == declared_size && actual == declared_digest {
        return Ok(());
    }
    Err(format!(
        "the uploaded tar is {received} bytes with digest {actual}, but the Build declared {declared_size} bytes with digest {declared_digest}: the directory changed while it was being sent; run the command again"
    ))
}

/// Checks that a blob the cache holds at the declared digest has the declared size. A
/// digest has one size, so when they differ the Build's declaration is wrong and no
/// upload could ever match it.
pub fn check_cached_size(
    cached: Option<u64>,
    declared_size: u64,
    digest: &Digest,
) -> Result<(), String> {
    match cached {
        Some(size) if size != declared_size => Err(format!(
            "the cache holds {digest} as {size} bytes, but the Build declared {declared_size} bytes: the Build's spec.source.local is inconsistent; run kubectl kiln build --local again"
        )),
        _ => Ok(()),
    }
}

/// Progress in tenths (0 to 10) of `received` out of `size`, for one log line per tenth.
/// An empty tar is complete.
pub fn tenths(received: u64, size: u64) -> u64 {
    if size == 0 {
        return 10;
    }
    // u128: received × 10 must not overflow for any size.
    ((u128::from(received.min(size)) * 10) / u128::from(size)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u64 = 100;

    #[test]
    fn a_chunk_at_the_end_of_the_upload_is_appended() {
        assert_eq!(decide_chunk(0, 40, 0, SIZE), ChunkDecision::Append);
        assert_eq!(decide_chunk(40, 40, 40, SIZE), ChunkDecision::Append);
        assert_eq!(decide_chunk(80, 20, 80, SIZE), ChunkDecision::Append);
        // An empty chunk at the end changes nothing and is harmless.
        assert_eq!(decide_chunk(100, 0, 100, SIZE), ChunkDecision::Append);
        assert_eq!(ChunkDecision::Append.refusal(0, 40), None);
    }

    #[test]
    fn a_chunk_sent_again_is_acknowledged_without_appending() {
        assert_eq!(
            decide_chunk(0, 40, 40, SIZE),
            ChunkDecision::AlreadyReceived
        );
        assert_eq!(
            decide_chunk(0, 40, 80, SIZE),
            ChunkDecision::AlreadyReceived
        );
        assert_eq!(
            decide_chunk(40, 40, 80, SIZE),
            ChunkDecision::AlreadyReceived
        );
        assert_eq!(ChunkDecision::AlreadyReceived.refusal(0, 40), None);
    }

    #[test]
    fn a_gap_or_an_overlap_past_the_end_names_the_expected_offset() {
        assert_eq!(
            decide_chunk(50, 10, 40, SIZE),
            ChunkDecision::WrongOffset { expected: 40 }
        );
        // Starts inside what was received, but ends past it: not a resend of one chunk.
        assert_eq!(
            decide_chunk(20, 40, 40, SIZE),
            ChunkDecision::WrongOffset { expected: 40 }
        );
        assert_eq!(
            decide_chunk(50, 10, 40, SIZE).refusal(50, 10).unwrap(),
            "a chunk of 10 bytes at offset 50 does not continue the upload: send the chunk at offset 40"
        );
        // An offset near u64::MAX does not overflow.
        assert_eq!(
            decide_chunk(u64::MAX, 10, 40, SIZE),
            ChunkDecision::WrongOffset { expected: 40 }
        );
    }

    #[test]
    fn a_chunk_past_the_declared_size_or_too_large_is_refused() {
        assert_eq!(
            decide_chunk(80, 30, 80, SIZE),
            ChunkDecision::PastDeclaredSize {
                would_be: 110,
                declared: 100
            }
        );
        let message = decide_chunk(80, 30, 80, SIZE).refusal(80, 30).unwrap();
        assert!(
            message.starts_with(
                "a chunk of 30 bytes at offset 80 would make the tar 110 bytes, but the Build declared 100"
            ),
            "{message}"
        );
        let huge = MAX_CHUNK_BYTES as u64 + 1;
        assert_eq!(decide_chunk(0, huge, 0, u64::MAX), ChunkDecision::TooLarge);
        assert_eq!(
            decide_chunk(0, MAX_CHUNK_BYTES as u64, 0, u64::MAX),
            ChunkDecision::Append
        );
        assert!(
            ChunkDecision::TooLarge
                .refusal(0, huge)
                .unwrap()
                .contains("larger than the 16777216 bytes the receiver accepts")
        );
    }

    #[test]
    fn a_finished_upload_must_be_the_declared_tar() {
        let declared = Digest::of(b"declared");
        let other = Digest::of(b"other");
        assert_eq!(check_upload(10, &declared, 10, &declared), Ok(()));
        assert_eq!(
            check_upload(9, &other, 10, &declared),
            Err(format!(
                "the uploaded tar is 9 bytes with digest {other}, but the Build declared 10 bytes with digest {declared}: the directory changed while it was being sent; run the command again"
            ))
        );
        assert!(check_upload(10, &other, 10, &declared).is_err());
        assert!(check_upload(9, &declared, 10, &declared).is_err());
    }

    #[test]
    fn a_cached_blob_of_another_size_is_a_wrong_declaration() {
        let digest = Digest::of(b"tar");
        assert_eq!(check_cached_size(Some(10), 10, &digest), Ok(()));
        assert_eq!(check_cached_size(None, 10, &digest), Ok(()));
        assert_eq!(
            check_cached_size(Some(11), 10, &digest),
            Err(format!(
                "the cache holds {digest} as 11 bytes, but the Build declared 10 bytes: the Build's spec.source.local is inconsistent; run kubectl kiln build --local again"
            ))
        );
    }

    #[test]
    fn progress_is_counted_in_tenths() {
        assert_eq!(tenths(0, 100), 0);
        assert_eq!(tenths(9, 100), 0);
        assert_eq!(tenths(10, 100), 1);
        assert_eq!(tenths(99, 100), 9);
        assert_eq!(tenths(100, 100), 10);
        assert_eq!(tenths(200, 100), 10);
        assert_eq!(tenths(0, 0), 10);
        assert_eq!(tenths(u64::MAX - 1, u64::MAX), 9);
    }
}
