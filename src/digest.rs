//! Content digests (`sha256:<64 lowercase hex>`): parsing, formatting and hashing (pure).
//!
//! One type for the whole crate, so that the store, the registry and the controller agree
//! on what a valid digest is. Only SHA-256 is supported; any other algorithm is rejected
//! with [`DigestError::UnsupportedAlgorithm`], which the registry maps to the OCI error
//! code `DIGEST_INVALID`.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// The algorithm prefix of every digest Kiln produces or accepts.
pub const SHA256_PREFIX: &str = "sha256:";

/// A SHA-256 content digest. Ordered by its bytes, which is also the order of its hex text,
/// so sorted collections of digests list in the same order as their string forms.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest([u8; 32]);

/// Why a string is not a valid digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// The text has no `algorithm:` prefix.
    #[error("digest {0:?} has no algorithm prefix (expected sha256:<64 hex>)")]
    MissingAlgorithm(String),
    /// The algorithm is not `sha256`.
    #[error("digest algorithm {0:?} is not supported (only sha256 is)")]
    UnsupportedAlgorithm(String),
    /// The encoded part is not 64 lowercase hex characters.
    #[error("digest {0:?} is not sha256:<64 lowercase hex>")]
    BadHex(String),
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        let mut hasher = Hasher::new();
        hasher.update(bytes);
        hasher.finish()
    }

    /// A digest from its 32 raw bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 lowercase hex characters, without the `sha256:` prefix.
    pub fn hex(&self) -> String {
        let mut out = String::with_capacity(64);
        for byte in self.0 {
            out.push(HEX[usize::from(byte >> 4)] as char);
            out.push(HEX[usize::from(byte & 0x0f)] as char);
        }
        out
    }

    /// Parses the 64 lowercase hex characters of a digest, without the prefix.
    pub fn from_hex(hex: &str) -> Result<Self, DigestError> {
        let bad = || DigestError::BadHex(hex.to_owned());
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let hi = hex_value(pair[0]).ok_or_else(bad)?;
            let lo = hex_value(pair[1]).ok_or_else(bad)?;
            out[i] = (hi << 4) | lo;
        }
        Ok(Self(out))
    }

    /// The first 12 hex characters, for short displays such as printer columns.
    pub fn short(&self) -> String {
        self.hex()[..12].to_owned()
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SHA256_PREFIX}{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((algorithm, encoded)) = s.split_once(':') else {
            return Err(DigestError::MissingAlgorithm(s.to_owned()));
        };
        if algorithm != "sha256" {
            return Err(DigestError::UnsupportedAlgorithm(algorithm.to_owned()));
        }
        Self::from_hex(encoded).map_err(|_| DigestError::BadHex(s.to_owned()))
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// An incremental SHA-256 hasher that yields a [`Digest`], for hashing while streaming.
#[derive(Clone, Default)]
pub struct Hasher(Sha256);

impl Hasher {
    /// A hasher over zero bytes.
    pub fn new() -> Self {
        Self(Sha256::new())
    }

    /// Feeds more bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest of every byte fed so far.
    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Hasher(sha256)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn digest_of_empty_input_is_the_well_known_value() {
        assert_eq!(Digest::of(b"").to_string(), EMPTY);
    }

    #[test]
    fn streaming_and_one_shot_hashing_agree() {
        let mut hasher = Hasher::new();
        hasher.update(b"hello ");
        hasher.update(b"world");
        assert_eq!(hasher.finish(), Digest::of(b"hello world"));
    }

    #[test]
    fn parse_rejects_what_is_not_a_sha256_digest() {
        for (input, want) in [
            ("e3b0", DigestError::MissingAlgorithm("e3b0".into())),
            (
                "sha512:abcd",
                DigestError::UnsupportedAlgorithm("sha512".into()),
            ),
            ("sha256:abcd", DigestError::BadHex("sha256:abcd".into())),
            (
                "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
                DigestError::BadHex(
                    "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"
                        .into(),
                ),
            ),
        ] {
            assert_eq!(input.parse::<Digest>(), Err(want), "input {input:?}");
        }
    }

    #[test]
    fn serde_uses_the_text_form() {
        let digest = Digest::of(b"");
        let json = serde_json::to_string(&digest).unwrap();
        assert_eq!(json, format!("\"{EMPTY}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), digest);
        assert!(serde_json::from_str::<Digest>("\"sha256:zz\"").is_err());
    }

    proptest! {
        #[test]
        fn text_round_trips_and_orders_like_bytes(a: [u8; 32], b: [u8; 32]) {
            let (da, db) = (Digest::from_bytes(a), Digest::from_bytes(b));
            prop_assert_eq!(da.to_string().parse::<Digest>().unwrap(), da);
            prop_assert_eq!(da.cmp(&db), da.to_string().cmp(&db.to_string()));
        }
    }
}
