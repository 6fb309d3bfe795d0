//! Content digests (`sha256:<64 hex>`, `sha512:<128 hex>`): parsing, formatting, hashing
//! and a compact binary form for keys (pure).
//!
//! One type for the whole crate, so that the store, the registry and the controller agree
//! on what a valid digest is. The algorithms are the two the OCI image spec registers;
//! any other is rejected with [`DigestError::UnsupportedAlgorithm`], which the registry
//! maps to the OCI error code `DIGEST_INVALID`. Kiln itself computes sha256 unless a
//! client named sha512.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256, Sha512};

/// A digest algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Algorithm {
    /// SHA-256: 32 bytes, what Kiln computes by default.
    Sha256,
    /// SHA-512: 64 bytes.
    Sha512,
}

impl Algorithm {
    /// Every supported algorithm, in order.
    pub const ALL: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Sha512];

    /// The name in a digest's text (`sha256`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
        }
    }

    /// Bytes of a hash.
    pub const fn hash_len(self) -> usize {
        match self {
            Self::Sha256 => 32,
            Self::Sha512 => 64,
        }
    }

    /// The algorithm called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The tag byte of the binary form ([`Digest::to_key`]); it orders sha256 first, as
    /// the text does.
    const fn tag(self) -> u8 {
        match self {
            Self::Sha256 => 0,
            Self::Sha512 => 1,
        }
    }

    /// The digest of `bytes` with this algorithm.
    pub fn digest(self, bytes: &[u8]) -> Digest {
        let mut hasher = Hasher::with(self);
        hasher.update(bytes);
        hasher.finish()
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The algorithm prefix of the digests Kiln produces by default.
pub const SHA256_PREFIX: &str = "sha256:";

/// A content digest. Ordered by algorithm (sha256 first), then by its bytes, which is also
/// the order of its text, so sorted collections of digests list in the same order as their
/// string forms.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Digest {
    /// A SHA-256 digest.
    Sha256([u8; 32]),
    /// A SHA-512 digest.
    Sha512([u8; 64]),
}

/// Why a string (or a key) is not a valid digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// The text has no `algorithm:` prefix.
    #[error("digest {0:?} has no algorithm prefix (expected sha256:<64 hex> or sha512:<128 hex>)")]
    MissingAlgorithm(String),
    /// The algorithm is neither `sha256` nor `sha512`.
    #[error("digest algorithm {0:?} is not supported (sha256 and sha512 are)")]
    UnsupportedAlgorithm(String),
    /// The encoded part is not the algorithm's length in lowercase hex.
    #[error("digest {0:?} is not sha256:<64 lowercase hex> or sha512:<128 lowercase hex>")]
    BadHex(String),
    /// A binary key of the wrong shape.
    #[error("a stored digest key of {0} bytes is not a digest")]
    BadKey(usize),
}

impl Digest {
    /// The sha256 digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Algorithm::Sha256.digest(bytes)
    }

    /// A sha256 digest from its 32 raw bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self::Sha256(bytes)
    }

    /// The algorithm.
    pub const fn algorithm(&self) -> Algorithm {
        match self {
            Self::Sha256(_) => Algorithm::Sha256,
            Self::Sha512(_) => Algorithm::Sha512,
        }
    }

    /// The raw hash bytes (32 or 64).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Sha256(bytes) => bytes,
            Self::Sha512(bytes) => bytes,
        }
    }

    /// The lowercase hex of the hash, without the `algorithm:` prefix.
    pub fn hex(&self) -> String {
        let bytes = self.as_bytes();
        let mut out = String::with_capacity(bytes.len() * 2);
        for &byte in bytes {
            out.push(HEX[usize::from(byte >> 4)] as char);
            out.push(HEX[usize::from(byte & 0x0f)] as char);
        }
        out
    }

    /// Parses the lowercase hex of a hash of `algorithm`, without the prefix.
    pub fn from_hex(algorithm: Algorithm, hex: &str) -> Result<Self, DigestError> {
        let bad = || DigestError::BadHex(hex.to_owned());
        let text = hex.as_bytes();
        if text.len() != algorithm.hash_len() * 2 {
            return Err(bad());
        }
        let mut out = [0u8; 64];
        for (i, pair) in text.chunks_exact(2).enumerate() {
            let hi = hex_value(pair[0]).ok_or_else(bad)?;
            let lo = hex_value(pair[1]).ok_or_else(bad)?;
            out[i] = (hi << 4) | lo;
        }
        Ok(Self::from_raw(algorithm, &out[..algorithm.hash_len()]))
    }

    /// A digest from its algorithm and exactly `algorithm.hash_len()` raw bytes.
    fn from_raw(algorithm: Algorithm, raw: &[u8]) -> Self {
        match algorithm {
            Algorithm::Sha256 => {
                let mut bytes = [0u8; 32];
                bytes.copy_from_slice(raw);
                Self::Sha256(bytes)
            }
            Algorithm::Sha512 => {
                let mut bytes = [0u8; 64];
                bytes.copy_from_slice(raw);
                Self::Sha512(bytes)
            }
        }
    }

    /// The first 12 hex characters, for short displays such as printer columns.
    pub fn short(&self) -> String {
        self.hex()[..12].to_owned()
    }

    /// The compact binary form: one byte for the algorithm, then the hash. Keys in this
    /// form sort exactly as the digests do.
    pub fn to_key(&self) -> DigestKey {
        let mut buf = [0u8; 65];
        let bytes = self.as_bytes();
        buf[0] = self.algorithm().tag();
        buf[1..=bytes.len()].copy_from_slice(bytes);
        DigestKey {
            buf,
            len: 1 + bytes.len() as u8,
        }
    }

    /// Reads the binary form of [`Digest::to_key`].
    pub fn from_key(key: &[u8]) -> Result<Self, DigestError> {
        let algorithm = match key.first() {
            Some(0) => Algorithm::Sha256,
            Some(1) => Algorithm::Sha512,
            _ => return Err(DigestError::BadKey(key.len())),
        };
        if key.len() != 1 + algorithm.hash_len() {
            return Err(DigestError::BadKey(key.len()));
        }
        Ok(Self::from_raw(algorithm, &key[1..]))
    }
}

/// A digest's binary form ([`Digest::to_key`]), on the stack.
#[derive(Clone, Copy)]
pub struct DigestKey {
    buf: [u8; 65],
    len: u8,
}

impl DigestKey {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

impl std::ops::Deref for DigestKey {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

/// A key above every [`DigestKey`], for the upper end of a range.
pub const KEY_MAX: [u8; 66] = [0xff; 66];

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
        write!(f, "{}:{}", self.algorithm(), self.hex())
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
        let Some((name, encoded)) = s.split_once(':') else {
            return Err(DigestError::MissingAlgorithm(s.to_owned()));
        };
        let algorithm = Algorithm::from_name(name)
            .ok_or_else(|| DigestError::UnsupportedAlgorithm(name.to_owned()))?;
        Self::from_hex(algorithm, encoded).map_err(|_| DigestError::BadHex(s.to_owned()))
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

/// An incremental hasher that yields a [`Digest`], for hashing while streaming. The
/// default is sha256.
#[derive(Clone)]
pub enum Hasher {
    /// SHA-256.
    Sha256(Sha256),
    /// SHA-512.
    Sha512(Sha512),
}

impl Default for Hasher {
    fn default() -> Self {
        Self::new()
    }
}

impl Hasher {
    /// A sha256 hasher over zero bytes.
    pub fn new() -> Self {
        Self::with(Algorithm::Sha256)
    }

    /// A hasher of `algorithm` over zero bytes.
    pub fn with(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => Self::Sha256(Sha256::new()),
            Algorithm::Sha512 => Self::Sha512(Sha512::new()),
        }
    }

    /// Its algorithm.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Self::Sha256(_) => Algorithm::Sha256,
            Self::Sha512(_) => Algorithm::Sha512,
        }
    }

    /// Feeds more bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Sha256(hasher) => hasher.update(bytes),
            Self::Sha512(hasher) => hasher.update(bytes),
        }
    }

    /// The digest of every byte fed so far.
    pub fn finish(self) -> Digest {
        match self {
            Self::Sha256(hasher) => Digest::Sha256(hasher.finalize().into()),
            Self::Sha512(hasher) => Digest::Sha512(hasher.finalize().into()),
        }
    }
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hasher({})", self.algorithm())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const EMPTY_512: &str = "sha512:cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e";

    #[test]
    fn digests_of_empty_input_are_the_well_known_values() {
        assert_eq!(Digest::of(b"").to_string(), EMPTY);
        assert_eq!(Algorithm::Sha512.digest(b"").to_string(), EMPTY_512);
        assert_eq!(
            EMPTY_512.parse::<Digest>().unwrap().algorithm(),
            Algorithm::Sha512
        );
    }

    #[test]
    fn streaming_and_one_shot_hashing_agree() {
        for algorithm in Algorithm::ALL {
            let mut hasher = Hasher::with(algorithm);
            hasher.update(b"hello ");
            hasher.update(b"world");
            assert_eq!(hasher.finish(), algorithm.digest(b"hello world"));
        }
    }

    #[test]
    fn parse_rejects_what_is_not_a_supported_digest() {
        let hex64 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        for (input, want) in [
            (
                "e3b0".to_owned(),
                DigestError::MissingAlgorithm("e3b0".into()),
            ),
            (
                "sha384:abcd".to_owned(),
                DigestError::UnsupportedAlgorithm("sha384".into()),
            ),
            (
                "sha256:abcd".to_owned(),
                DigestError::BadHex("sha256:abcd".into()),
            ),
            // A sha256-length hash does not make a sha512 digest, nor the other way round.
            (
                format!("sha512:{hex64}"),
                DigestError::BadHex(format!("sha512:{hex64}")),
            ),
            (
                format!("sha256:{hex64}{hex64}"),
                DigestError::BadHex(format!("sha256:{hex64}{hex64}")),
            ),
            (
                format!("sha256:{}", hex64.to_uppercase()),
                DigestError::BadHex(format!("sha256:{}", hex64.to_uppercase())),
            ),
        ] {
            assert_eq!(input.parse::<Digest>(), Err(want), "input {input:?}");
        }
    }

    #[test]
    fn serde_uses_the_text_form() {
        for digest in [Digest::of(b""), Algorithm::Sha512.digest(b"")] {
            let json = serde_json::to_string(&digest).unwrap();
            assert_eq!(json, format!("\"{digest}\""));
            assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), digest);
        }
        assert!(serde_json::from_str::<Digest>("\"sha256:zz\"").is_err());
    }

    #[test]
    fn keys_of_the_wrong_shape_are_refused() {
        for key in [&[][..], &[0u8; 32][..], &[2u8; 33][..], &[1u8; 33][..]] {
            assert!(Digest::from_key(key).is_err(), "{key:?}");
        }
    }

    fn any_digest() -> impl Strategy<Value = Digest> {
        prop_oneof![
            any::<[u8; 32]>().prop_map(Digest::Sha256),
            proptest::collection::vec(any::<u8>(), 64).prop_map(|v| {
                let mut bytes = [0u8; 64];
                bytes.copy_from_slice(&v);
                Digest::Sha512(bytes)
            }),
        ]
    }

    proptest! {
        #[test]
        fn text_and_keys_round_trip_and_order_like_the_digest(a in any_digest(), b in any_digest()) {
            prop_assert_eq!(a.to_string().parse::<Digest>().unwrap(), a);
            prop_assert_eq!(Digest::from_key(&a.to_key()).unwrap(), a);
            prop_assert_eq!(a.cmp(&b), a.to_string().cmp(&b.to_string()));
            prop_assert_eq!(a.cmp(&b), a.to_key().as_slice().cmp(b.to_key().as_slice()));
            prop_assert!(a.to_key().as_slice() < &KEY_MAX[..]);
        }
    }
}
