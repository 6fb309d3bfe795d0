//! ECDSA P-256 signing keys as cosign and openssl write them, their public keys, and
//! signing and verifying with them (pure: parsing and arithmetic; signing reads the
//! system's random number generator).
//!
//! Three private key forms are read, each a PEM block:
//!
//! - `PRIVATE KEY`: PKCS#8 (`openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`);
//! - `EC PRIVATE KEY`: SEC1 (`openssl ecparam -name prime256v1 -genkey`), which is
//!   wrapped into PKCS#8 here because ring reads only PKCS#8; an `EC PARAMETERS` block
//!   before it, as `openssl ecparam` writes without `-noout`, is skipped;
//! - `ENCRYPTED SIGSTORE PRIVATE KEY` (and the older label `ENCRYPTED COSIGN PRIVATE KEY`):
//!   what `cosign generate-key-pair` writes, to a file or to a Kubernetes Secret's
//!   `cosign.key`. Its body is go-securesystemslib's `encrypted` JSON:
//!   `{"kdf":{"name":"scrypt","params":{"N":…,"r":…,"p":…},"salt":"<base64>"},
//!   "cipher":{"name":"nacl/secretbox","nonce":"<base64>"},"ciphertext":"<base64>"}`;
//!   the secretbox key is scrypt(password, salt, N, r, p) of 32 bytes, and the plaintext
//!   is the PKCS#8 DER of the key.
//!
//! Signatures are ASN.1 DER ECDSA signatures over SHA-256 of the payload, which is what
//! cosign makes and checks for P-256 keys. The public key is written as cosign writes
//! `cosign.pub`: a PKIX `PUBLIC KEY` PEM with 64-character lines.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use crypto_secretbox::aead::{Aead as _, KeyInit as _};
use crypto_secretbox::{Key, Nonce, XSalsa20Poly1305};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _,
    UnparsedPublicKey,
};

/// The PEM label of the keys `cosign generate-key-pair` writes.
pub const SIGSTORE_KEY_LABEL: &str = "ENCRYPTED SIGSTORE PRIVATE KEY";
/// The PEM label older cosign versions wrote, with the same body.
pub const COSIGN_KEY_LABEL: &str = "ENCRYPTED COSIGN PRIVATE KEY";
/// The PEM label of a PKCS#8 private key.
pub const PKCS8_LABEL: &str = "PRIVATE KEY";
/// The PEM label of a SEC1 EC private key.
pub const SEC1_LABEL: &str = "EC PRIVATE KEY";
/// The PEM label of a PKIX public key.
pub const PUBLIC_KEY_LABEL: &str = "PUBLIC KEY";

/// The label of the curve block `openssl ecparam -genkey` writes before the key.
const EC_PARAMETERS_LABEL: &str = "EC PARAMETERS";
/// The label of openssl's password-protected PKCS#8 (PBES2), which is not read.
const OPENSSL_ENCRYPTED_LABEL: &str = "ENCRYPTED PRIVATE KEY";

/// The DER of a P-256 SubjectPublicKeyInfo before its 65-byte uncompressed point:
/// SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (0 unused bits) }.
const SPKI_P256_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// The DER of PKCS#8's version and algorithm for a P-256 key: INTEGER 0, then
/// SEQUENCE { id-ecPublicKey, prime256v1 }. The SEC1 key follows as an OCTET STRING.
const PKCS8_P256_ALGORITHM: [u8; 24] = [
    0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
    0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
];

/// The bytes of an uncompressed P-256 point: `04 || x || y`.
pub const POINT_LEN: usize = 65;

/// The largest scrypt N accepted (cosign writes 2^15, 2^16 or 2^17).
pub const MAX_SCRYPT_N: u64 = 1 << 20;
/// The most memory scrypt may take for a key, 128·N·r bytes (cosign's keys take 32 to
/// 128 MiB).
pub const MAX_SCRYPT_MEMORY: u64 = 256 << 20;
/// The most work scrypt may do for a key, N·r·p (cosign's keys do at most 2^20).
pub const MAX_SCRYPT_WORK: u64 = 1 << 22;

/// Why a key could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The text is not PEM.
    #[error("the key is not PEM text (-----BEGIN …----- / -----END …-----): {0}")]
    NotPem(String),
    /// The PEM text holds no key block.
    #[error("the PEM text holds no key")]
    NoKey,
    /// The PEM text holds more than one key block.
    #[error("the PEM text holds {0} keys: give exactly one")]
    SeveralKeys(usize),
    /// A PEM block of a kind that is not a private key Kiln reads.
    #[error(
        "a {0:?} PEM block is not a key Kiln reads: give an ECDSA P-256 key as a cosign key \
         (ENCRYPTED SIGSTORE PRIVATE KEY), PKCS#8 (PRIVATE KEY) or SEC1 (EC PRIVATE KEY)"
    )]
    UnsupportedLabel(String),
    /// An openssl-encrypted PKCS#8 key.
    #[error(
        "the key is an openssl-encrypted PKCS#8 key (ENCRYPTED PRIVATE KEY), which Kiln does \
         not read: convert it with `cosign import-key-pair`, or give it unencrypted"
    )]
    OpensslEncrypted,
    /// A cosign key without a password.
    #[error("the key is encrypted: the Secret needs a cosign.password")]
    PasswordRequired,
    /// The secretbox did not open: the password is wrong, or the key was altered.
    #[error("wrong password or damaged key{}", trailing_newline_hint(*.trailing_newline))]
    WrongPassword {
        /// The password ends with a newline, a common slip when a Secret is written from
        /// a file; cosign takes the password byte for byte, and so does Kiln.
        trailing_newline: bool,
    },
    /// The encrypted key's JSON is malformed.
    #[error("the encrypted cosign key is damaged: {0}")]
    Damaged(String),
    /// The encrypted key names a key derivation or cipher other than cosign's.
    #[error(
        "the encrypted key uses {0}, which cosign never writes (it writes scrypt and \
         nacl/secretbox)"
    )]
    UnsupportedEncryption(String),
    /// The scrypt parameters ask for too much memory or time.
    #[error(
        "the key's scrypt parameters (N={n}, r={r}, p={p}) ask for more than Kiln allows \
         (N up to 2^20, 128·N·r bytes up to 256 MiB, N·r·p up to 2^22): re-encrypt the key \
         with cosign, whose parameters are well within these"
    )]
    ScryptTooCostly {
        /// The CPU/memory cost.
        n: u64,
        /// The block size.
        r: u32,
        /// The parallelism.
        p: u32,
    },
    /// A key of another algorithm or curve.
    #[error("not a P-256 ECDSA key: cosign keys are ECDSA P-256")]
    NotP256,
    /// The key's DER is malformed or inconsistent.
    #[error("the key is not a valid ECDSA P-256 key ({0})")]
    InvalidKey(String),
    /// A PEM block of another kind where a public key was expected.
    #[error("a {0:?} PEM block is not a public key (PUBLIC KEY)")]
    NotPublicKey(String),
}

/// The end of [`KeyError::WrongPassword`]'s message.
fn trailing_newline_hint(trailing_newline: bool) -> &'static str {
    if trailing_newline {
        " (the password ends with a newline: was the Secret written from a file with one?)"
    } else {
        ""
    }
}

/// Signing failed: ring could not draw the signature's random nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("ECDSA signing failed: the system random number generator failed")]
pub struct SignError;

/// An ECDSA P-256 private key that signs as cosign does. `Debug` shows only the public
/// key.
pub struct SigningKey {
    pair: EcdsaKeyPair,
    public: PublicKey,
    rng: SystemRandom,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("public_key", &self.public_key())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Reads the one private key in `pem_text`: PKCS#8, SEC1 or cosign's encrypted form.
    /// `password` opens a cosign key and is taken byte for byte, as cosign takes it
    /// (`Some(b"")` is the empty password, which cosign allows); it is not used for the
    /// unencrypted forms.
    pub fn from_pem(pem_text: &str, password: Option<&[u8]>) -> Result<Self, KeyError> {
        let blocks = pem::parse_many(pem_text).map_err(|e| KeyError::NotPem(e.to_string()))?;
        let keys: Vec<&pem::Pem> = blocks
            .iter()
            .filter(|block| block.tag() != EC_PARAMETERS_LABEL)
            .collect();
        let block = match keys.as_slice() {
            [] => return Err(KeyError::NoKey),
            [one] => *one,
            several => return Err(KeyError::SeveralKeys(several.len())),
        };
        match block.tag() {
            PKCS8_LABEL => Self::from_pkcs8(block.contents()),
            SEC1_LABEL => Self::from_pkcs8(&sec1_to_pkcs8(block.contents())?),
            SIGSTORE_KEY_LABEL | COSIGN_KEY_LABEL => {
                let password = password.ok_or(KeyError::PasswordRequired)?;
                Self::from_pkcs8(&open_cosign_key(block.contents(), password)?)
            }
            OPENSSL_ENCRYPTED_LABEL => Err(KeyError::OpensslEncrypted),
            other => Err(KeyError::UnsupportedLabel(other.to_owned())),
        }
    }

    /// Reads a PKCS#8 DER private key.
    fn from_pkcs8(der: &[u8]) -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, der, &rng).map_err(
            |rejected| {
                // ring names its reasons only in Display. It compares the whole algorithm
                // identifier, curve included, so an RSA, Ed25519 or P-384 key is
                // "WrongAlgorithm".
                let reason = rejected.to_string();
                if reason == "WrongAlgorithm" {
                    KeyError::NotP256
                } else {
                    KeyError::InvalidKey(reason)
                }
            },
        )?;
        let public = PublicKey::from_point(pair.public_key().as_ref())?;
        Ok(Self { pair, public, rng })
    }

    /// The public key.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// The public key as `cosign verify --key` reads it (see [`PublicKey::to_pem`]).
    pub fn public_key_pem(&self) -> String {
        self.public_key().to_pem()
    }

    /// The ASN.1 DER ECDSA signature of SHA-256(`payload`). ECDSA draws a random nonce, so
    /// two signatures of the same payload differ; both verify.
    pub fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, SignError> {
        self.pair
            .sign(&self.rng, payload)
            .map(|signature| signature.as_ref().to_vec())
            .map_err(|ring::error::Unspecified| SignError)
    }
}

/// An ECDSA P-256 public key: its uncompressed point.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey {
    point: [u8; POINT_LEN],
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", STANDARD.encode(self.spki_der()))
    }
}

impl PublicKey {
    /// Reads a PKIX `PUBLIC KEY` PEM holding an uncompressed P-256 point, such as
    /// `cosign.pub`.
    pub fn from_pem(pem_text: &str) -> Result<Self, KeyError> {
        let block = pem::parse(pem_text).map_err(|e| KeyError::NotPem(e.to_string()))?;
        if block.tag() != PUBLIC_KEY_LABEL {
            return Err(KeyError::NotPublicKey(block.tag().to_owned()));
        }
        Self::from_spki_der(block.contents())
    }

    /// Reads a SubjectPublicKeyInfo DER holding an uncompressed P-256 point.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, KeyError> {
        let Some(point) = der.strip_prefix(SPKI_P256_PREFIX.as_slice()) else {
            return Err(KeyError::NotP256);
        };
        Self::from_point(point)
    }

    /// Takes an uncompressed point; whether it is on the curve shows when verifying.
    fn from_point(point: &[u8]) -> Result<Self, KeyError> {
        let point: [u8; POINT_LEN] = point
            .try_into()
            .map_err(|_| KeyError::InvalidKey("the public key is not 65 bytes".to_owned()))?;
        if point[0] != 0x04 {
            return Err(KeyError::InvalidKey(
                "the public key is not an uncompressed point".to_owned(),
            ));
        }
        Ok(Self { point })
    }

    /// The uncompressed point: `04 || x || y`.
    pub fn point(&self) -> &[u8; POINT_LEN] {
        &self.point
    }

    /// The SubjectPublicKeyInfo DER: the fixed P-256 prefix, then the point.
    pub fn spki_der(&self) -> Vec<u8> {
        [SPKI_P256_PREFIX.as_slice(), self.point.as_slice()].concat()
    }

    /// The PKIX `PUBLIC KEY` PEM, as cosign writes `cosign.pub`: 64-character lines,
    /// `\n` line ends, a final newline.
    pub fn to_pem(&self) -> String {
        let block = pem::Pem::new(PUBLIC_KEY_LABEL, self.spki_der());
        pem::encode_config(
            &block,
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        )
    }

    /// Whether `signature` is this key's ASN.1 DER ECDSA signature of SHA-256(`payload`).
    pub fn verify(&self, payload: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &self.point)
            .verify(payload, signature)
            .is_ok()
    }
}

/// Wraps a SEC1 `ECPrivateKey` DER into the PKCS#8 that ring reads, claiming P-256: a key
/// of another curve is then refused by ring, as its own curve (or length) disagrees.
fn sec1_to_pkcs8(sec1: &[u8]) -> Result<Vec<u8>, KeyError> {
    let mut octets = vec![0x04];
    push_der_len(&mut octets, sec1.len())?;
    octets.extend_from_slice(sec1);
    let mut out = vec![0x30];
    push_der_len(&mut out, PKCS8_P256_ALGORITHM.len() + octets.len())?;
    out.extend_from_slice(&PKCS8_P256_ALGORITHM);
    out.extend_from_slice(&octets);
    Ok(out)
}

/// Appends a DER definite length (short form, or long form of one or two bytes).
fn push_der_len(out: &mut Vec<u8>, len: usize) -> Result<(), KeyError> {
    match u8::try_from(len) {
        Ok(short) if short < 0x80 => out.push(short),
        Ok(one) => out.extend_from_slice(&[0x81, one]),
        Err(_) => {
            let two = u16::try_from(len)
                .map_err(|_| KeyError::InvalidKey("the key is too long".to_owned()))?;
            out.push(0x82);
            out.extend_from_slice(&two.to_be_bytes());
        }
    }
    Ok(())
}

/// go-securesystemslib's `encrypted` JSON; unknown fields are ignored, as Go does.
#[derive(serde::Deserialize)]
struct Sealed {
    kdf: Kdf,
    cipher: Cipher,
    ciphertext: String,
}

#[derive(serde::Deserialize)]
struct Kdf {
    name: String,
    params: ScryptParams,
    salt: String,
}

#[derive(serde::Deserialize)]
struct ScryptParams {
    #[serde(rename = "N")]
    n: u64,
    r: u32,
    p: u32,
}

#[derive(serde::Deserialize)]
struct Cipher {
    name: String,
    nonce: String,
}

/// Opens the body of a cosign key: the PKCS#8 DER inside.
fn open_cosign_key(body: &[u8], password: &[u8]) -> Result<Vec<u8>, KeyError> {
    let sealed: Sealed = serde_json::from_slice(body)
        .map_err(|e| KeyError::Damaged(format!("its JSON does not parse: {e}")))?;
    if sealed.kdf.name != "scrypt" {
        return Err(KeyError::UnsupportedEncryption(format!(
            "the key derivation {:?}",
            sealed.kdf.name
        )));
    }
    if sealed.cipher.name != "nacl/secretbox" {
        return Err(KeyError::UnsupportedEncryption(format!(
            "the cipher {:?}",
            sealed.cipher.name
        )));
    }
    let params = scrypt_params(&sealed.kdf.params)?;
    let salt = base64_field("salt", &sealed.kdf.salt)?;
    let nonce: [u8; 24] = base64_field("nonce", &sealed.cipher.nonce)?
        .try_into()
        .map_err(|_| KeyError::Damaged("the nonce is not 24 bytes".to_owned()))?;
    let ciphertext = base64_field("ciphertext", &sealed.ciphertext)?;

    let mut key = [0u8; 32];
    scrypt::scrypt(password, &salt, &params, &mut key)
        .map_err(|_| KeyError::Damaged("scrypt refused the output length".to_owned()))?;
    XSalsa20Poly1305::new(&Key::from(key))
        .decrypt(&Nonce::from(nonce), ciphertext.as_slice())
        .map_err(|_| KeyError::WrongPassword {
            trailing_newline: password.ends_with(b"\n"),
        })
}

/// Checks scrypt's parameters before running it: the file is input, and N, r and p set
/// how much memory and time it takes.
fn scrypt_params(params: &ScryptParams) -> Result<scrypt::Params, KeyError> {
    let ScryptParams { n, r, p } = *params;
    if n < 2 || !n.is_power_of_two() || r == 0 || p == 0 {
        return Err(KeyError::Damaged(format!(
            "scrypt N={n}, r={r}, p={p}: N must be a power of two above 1, r and p positive"
        )));
    }
    let too_costly = KeyError::ScryptTooCostly { n, r, p };
    let memory = 128u64
        .checked_mul(n)
        .and_then(|bytes| bytes.checked_mul(u64::from(r)));
    let work = n
        .checked_mul(u64::from(r))
        .and_then(|work| work.checked_mul(u64::from(p)));
    match (memory, work) {
        (Some(memory), Some(work))
            if n <= MAX_SCRYPT_N && memory <= MAX_SCRYPT_MEMORY && work <= MAX_SCRYPT_WORK => {}
        _ => return Err(too_costly),
    }
    // n is a power of two at most 2^20, so its log fits a u8.
    let log_n = u8::try_from(n.trailing_zeros()).map_err(|_| too_costly.clone())?;
    scrypt::Params::new(log_n, r, p).map_err(|_| too_costly)
}

fn base64_field(name: &str, text: &str) -> Result<Vec<u8>, KeyError> {
    STANDARD
        .decode(text)
        .map_err(|e| KeyError::Damaged(format!("its {name} is not base64: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sign");

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap()
    }

    fn round_trip(key: &SigningKey) {
        let payload = b"kiln signs this";
        let signature = key.sign(payload).unwrap();
        let public = key.public_key();
        assert!(public.verify(payload, &signature));
        assert!(!public.verify(b"kiln signs that", &signature));
        let mut tampered = signature.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(!public.verify(payload, &tampered));
    }

    #[test]
    fn a_cosign_key_decrypts_signs_and_matches_its_public_key() {
        let key = SigningKey::from_pem(&fixture("cosign.key"), Some(b"test")).unwrap();
        round_trip(&key);
        let cosign_pub = PublicKey::from_pem(&fixture("cosign.pub")).unwrap();
        assert_eq!(key.public_key(), cosign_pub);
        assert_eq!(key.public_key_pem(), fixture("cosign.pub"));
    }

    #[test]
    fn a_signature_made_by_cosign_verifies() {
        // `cosign sign-blob --key cosign.key cosign-payload.json`, password "test".
        let public = PublicKey::from_pem(&fixture("cosign.pub")).unwrap();
        let payload = fixture("cosign-payload.json");
        let signature = STANDARD
            .decode(fixture("cosign-payload.sig").trim())
            .unwrap();
        assert!(public.verify(payload.as_bytes(), &signature));
        assert!(!public.verify(&payload.as_bytes()[1..], &signature));
    }

    #[test]
    fn a_cosign_key_with_the_empty_password_opens_with_it() {
        let key = SigningKey::from_pem(&fixture("cosign-empty-password.key"), Some(b"")).unwrap();
        assert_eq!(key.public_key_pem(), fixture("cosign-empty-password.pub"));
        assert_eq!(
            SigningKey::from_pem(&fixture("cosign-empty-password.key"), None).unwrap_err(),
            KeyError::PasswordRequired
        );
    }

    #[test]
    fn the_older_cosign_label_reads_the_same() {
        let relabelled = fixture("cosign.key").replace(SIGSTORE_KEY_LABEL, COSIGN_KEY_LABEL);
        let key = SigningKey::from_pem(&relabelled, Some(b"test")).unwrap();
        assert_eq!(key.public_key_pem(), fixture("cosign.pub"));
    }

    #[test]
    fn a_wrong_or_missing_password_is_refused() {
        let text = fixture("cosign.key");
        assert_eq!(
            SigningKey::from_pem(&text, Some(b"wrong")).unwrap_err(),
            KeyError::WrongPassword {
                trailing_newline: false
            }
        );
        let newline = SigningKey::from_pem(&text, Some(b"test\n")).unwrap_err();
        assert_eq!(
            newline,
            KeyError::WrongPassword {
                trailing_newline: true
            }
        );
        assert!(newline.to_string().contains("ends with a newline"));
        let missing = SigningKey::from_pem(&text, None).unwrap_err();
        assert_eq!(
            missing.to_string(),
            "the key is encrypted: the Secret needs a cosign.password"
        );
    }

    /// The cosign fixture's JSON body, changed by `change`, back in its PEM.
    fn altered_cosign_key(change: impl FnOnce(&mut serde_json::Value)) -> String {
        let block = pem::parse(fixture("cosign.key")).unwrap();
        let mut json: serde_json::Value = serde_json::from_slice(block.contents()).unwrap();
        change(&mut json);
        let body = serde_json::to_vec(&json).unwrap();
        pem::encode(&pem::Pem::new(SIGSTORE_KEY_LABEL, body))
    }

    #[test]
    fn a_tampered_ciphertext_is_refused() {
        let text = altered_cosign_key(|json| {
            let ciphertext = json["ciphertext"].as_str().unwrap();
            let mut bytes = STANDARD.decode(ciphertext).unwrap();
            bytes[20] ^= 0x01;
            json["ciphertext"] = STANDARD.encode(bytes).into();
        });
        assert_eq!(
            SigningKey::from_pem(&text, Some(b"test")).unwrap_err(),
            KeyError::WrongPassword {
                trailing_newline: false
            }
        );
    }

    #[test]
    fn costly_scrypt_parameters_are_refused_before_running() {
        for (n, r, p) in [(1u64 << 21, 1, 1), (1 << 20, 8, 1), (1 << 17, 8, 64)] {
            let text = altered_cosign_key(|json| {
                json["kdf"]["params"] = serde_json::json!({"N": n, "r": r, "p": p});
            });
            assert_eq!(
                SigningKey::from_pem(&text, Some(b"test")).unwrap_err(),
                KeyError::ScryptTooCostly { n, r, p },
                "N={n} r={r} p={p}"
            );
        }
        let text = altered_cosign_key(|json| json["kdf"]["params"]["N"] = 65535.into());
        assert!(matches!(
            SigningKey::from_pem(&text, Some(b"test")),
            Err(KeyError::Damaged(_))
        ));
    }

    #[test]
    fn other_ciphers_and_broken_json_are_refused() {
        let text = altered_cosign_key(|json| json["cipher"]["name"] = "aes-gcm".into());
        assert!(matches!(
            SigningKey::from_pem(&text, Some(b"test")),
            Err(KeyError::UnsupportedEncryption(_))
        ));
        let text = altered_cosign_key(|json| json["cipher"]["nonce"] = "AAAA".into());
        assert!(matches!(
            SigningKey::from_pem(&text, Some(b"test")),
            Err(KeyError::Damaged(_))
        ));
        let text = pem::encode(&pem::Pem::new(SIGSTORE_KEY_LABEL, b"{not json".to_vec()));
        assert!(matches!(
            SigningKey::from_pem(&text, Some(b"test")),
            Err(KeyError::Damaged(_))
        ));
    }

    #[test]
    fn openssl_pkcs8_and_sec1_keys_sign_and_match_openssl_public_keys() {
        for (key, public) in [
            ("pkcs8.key", "pkcs8.pub"),
            ("sec1.key", "sec1.pub"),
            // `openssl ecparam -genkey` without -noout: an EC PARAMETERS block first.
            ("sec1-with-params.key", "sec1-with-params.pub"),
        ] {
            let signing = SigningKey::from_pem(&fixture(key), None).unwrap();
            round_trip(&signing);
            assert_eq!(signing.public_key_pem(), fixture(public), "{key}");
        }
    }

    #[test]
    fn other_curves_and_kinds_are_refused_with_the_reason() {
        assert_eq!(
            SigningKey::from_pem(&fixture("p384.key"), None).unwrap_err(),
            KeyError::NotP256
        );
        assert_eq!(
            SigningKey::from_pem(&fixture("pkcs8.pub"), None).unwrap_err(),
            KeyError::UnsupportedLabel("PUBLIC KEY".to_owned())
        );
        assert_eq!(
            SigningKey::from_pem("no key here", None).unwrap_err(),
            KeyError::NoKey
        );
        let two = format!("{}{}", fixture("pkcs8.key"), fixture("sec1.key"));
        assert_eq!(
            SigningKey::from_pem(&two, None).unwrap_err(),
            KeyError::SeveralKeys(2)
        );
        let encrypted = pem::encode(&pem::Pem::new("ENCRYPTED PRIVATE KEY", vec![0x30, 0]));
        assert_eq!(
            SigningKey::from_pem(&encrypted, None).unwrap_err(),
            KeyError::OpensslEncrypted
        );
        let garbage = pem::encode(&pem::Pem::new(PKCS8_LABEL, vec![0x30, 0x03, 0x02, 0x01]));
        assert!(matches!(
            SigningKey::from_pem(&garbage, None),
            Err(KeyError::InvalidKey(_))
        ));
        let garbage = pem::encode(&pem::Pem::new(SEC1_LABEL, vec![0x30, 0x03, 0x02, 0x01]));
        assert!(matches!(
            SigningKey::from_pem(&garbage, None),
            Err(KeyError::InvalidKey(_))
        ));
    }

    #[test]
    fn public_keys_read_back_and_refuse_other_kinds() {
        let key = SigningKey::from_pem(&fixture("pkcs8.key"), None).unwrap();
        let public = PublicKey::from_pem(&key.public_key_pem()).unwrap();
        assert_eq!(public, key.public_key());
        assert_eq!(PublicKey::from_spki_der(&public.spki_der()), Ok(public));
        assert_eq!(
            PublicKey::from_pem(&fixture("pkcs8.key")).unwrap_err(),
            KeyError::NotPublicKey("PRIVATE KEY".to_owned())
        );
        assert_eq!(
            PublicKey::from_pem(&fixture("p384.pub")).unwrap_err(),
            KeyError::NotP256
        );
        assert!(format!("{key:?}").starts_with("SigningKey { public_key: PublicKey(MFkw"));
    }

    #[test]
    fn der_lengths_use_the_short_and_long_forms() {
        let mut out = Vec::new();
        push_der_len(&mut out, 0x7f).unwrap();
        push_der_len(&mut out, 0x80).unwrap();
        push_der_len(&mut out, 0x1234).unwrap();
        assert_eq!(out, [0x7f, 0x81, 0x80, 0x82, 0x12, 0x34]);
        assert!(push_der_len(&mut out, 0x1_0000).is_err());
    }
}
