//! Cache tokens: the claims a build pod carries, minted and verified as HS256 JWTs (pure,
//! apart from [`TokenKey::read`], which reads the key file).
//!
//! A token says *who* (`sub`, the Build's UID), *where* (`ns`, a namespace: the token covers
//! the repositories under `<ns>/`), *what* (`actions`: pull, push) and *until when* (`exp`).
//! The controller mints one per build; the registry verifies it on every request. Time is
//! always an argument (seconds since the Unix epoch), never read here.
//!
//! # Format and crate
//! The token is a standard JWT (RFC 7519) signed with HMAC-SHA256, made and checked with
//! `jsonwebtoken` 11, the maintained major. Since version 10 that crate no longer bundles
//! ring: it offers aws-lc-rs or RustCrypto (which would bring the `rsa` crate with its
//! open advisory and three elliptic-curve crates we do not use), or a custom provider. Kiln
//! builds no aws-lc, so the provider below plugs ring's HMAC, already in the build for
//! rustls, into jsonwebtoken for HS256 and refuses every other algorithm. jsonwebtoken still
//! does the JWT parsing, base64 and header checks; ring does the constant-time MAC check.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::sync::Once;

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::signature;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::oci::name::RepoName;

/// The `iss` claim of every Kiln cache token.
pub const ISSUER: &str = "kiln";

/// The shortest signing key accepted, in bytes (the HMAC-SHA256 output size).
pub const MIN_KEY_LEN: usize = 32;

/// What a token lets its holder do with a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenAction {
    /// Read manifests, blobs, tags and referrers.
    Pull,
    /// Upload blobs and put manifests (and the tags they carry).
    Push,
}

impl TokenAction {
    /// The action as the Docker token scope spells it (`pull`, `push`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pull => "pull",
            Self::Push => "push",
        }
    }

    /// Parses a Docker scope action; `None` for actions Kiln does not grant (`delete`, `*`).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pull" => Some(Self::Pull),
            "push" => Some(Self::Push),
            _ => None,
        }
    }
}

impl fmt::Display for TokenAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The longest lifetime (`exp - iat`) a token may have: the longest `spec.timeout` a
/// Build may ask for (24 h) plus the slack the controller adds
/// (`crate::controller::cachetoken::TOKEN_SLACK`). The controller never mints a longer one;
/// the registry refuses one, so a leaked signing key cannot mint tokens for ever.
pub const MAX_LIFETIME_SECS: u64 = 24 * 3600 + 10 * 60;

/// How far ahead of the verifier's clock a token's `nbf` may be: clocks of the controller
/// and the cache service drift a little.
pub const CLOCK_SKEW_SECS: u64 = 60;

/// The claims of a cache token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The subject: the UID of the Build the token was minted for.
    pub sub: String,
    /// The namespace scope: the token covers repositories under `<ns>/`.
    pub ns: String,
    /// What the holder may do there (serialized as a sorted array).
    pub actions: BTreeSet<TokenAction>,
    /// Expiry, seconds since the Unix epoch; the token is invalid from this second on.
    pub exp: u64,
    /// Issue time, seconds since the Unix epoch.
    pub iat: u64,
    /// Not before, seconds since the Unix epoch (the issue time, when minted here). Absent
    /// in tokens of older controllers: the issue time then stands in for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// The issuer, always [`ISSUER`].
    pub iss: String,
}

impl Claims {
    /// Claims for a build: `sub` and `ns` with `actions`, valid for `ttl_secs` from `now`.
    pub fn new(
        sub: impl Into<String>,
        ns: impl Into<String>,
        actions: impl IntoIterator<Item = TokenAction>,
        now: u64,
        ttl_secs: u64,
    ) -> Self {
        Self {
            sub: sub.into(),
            ns: ns.into(),
            actions: actions.into_iter().collect(),
            exp: now.saturating_add(ttl_secs),
            iat: now,
            nbf: Some(now),
            iss: ISSUER.to_owned(),
        }
    }

    /// Whether the token grants `action`.
    pub fn allows(&self, action: TokenAction) -> bool {
        self.actions.contains(&action)
    }

    /// Whether `name` lies in the token's namespace (`<ns>/...`).
    pub fn covers(&self, name: &RepoName) -> bool {
        name.is_under(&self.ns)
    }

    /// Seconds left at `now` (0 once expired).
    pub fn remaining_secs(&self, now: u64) -> u64 {
        self.exp.saturating_sub(now)
    }

    fn check_namespace(&self) -> Result<(), TokenError> {
        match RepoName::parse(&self.ns) {
            Ok(name) if name.after_first_component().is_none() => Ok(()),
            _ => Err(TokenError::Malformed(format!(
                "namespace {:?} is not a single repository name component",
                self.ns
            ))),
        }
    }
}

/// Why a token key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TokenKeyError {
    /// The key file could not be read.
    #[error("cannot read token key file {path}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The key is shorter than [`MIN_KEY_LEN`].
    #[error("token key is {len} bytes long; at least {MIN_KEY_LEN} random bytes are required")]
    TooShort {
        /// Its length in bytes.
        len: usize,
    },
}

/// Why a token was not minted or not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token is valid only from `nbf`, later than `now` (allowing
    /// [`CLOCK_SKEW_SECS`]).
    #[error("token is not valid before {nbf} (now {now})")]
    NotYetValid {
        /// The token's not-before time.
        nbf: u64,
        /// The time of the check.
        now: u64,
    },
    /// The token would live longer than [`MAX_LIFETIME_SECS`].
    #[error("token lives {lifetime} s, longer than the {MAX_LIFETIME_SECS} s any is minted for")]
    TooLong {
        /// `exp - iat`.
        lifetime: u64,
    },
    /// The token was valid until `exp`, which is not after `now`.
    #[error("token expired at {exp} (now {now})")]
    Expired {
        /// The token's expiry.
        exp: u64,
        /// The time of the check.
        now: u64,
    },
    /// The signature does not match: another key, or altered content.
    #[error("token signature is invalid")]
    BadSignature,
    /// Not a Kiln token: not a JWT, another algorithm, missing or malformed claims, another
    /// issuer.
    #[error("token is malformed: {0}")]
    Malformed(String),
    /// The claims could not be signed (they do not serialize, or the key was refused).
    #[error("cannot sign token: {0}")]
    Sign(String),
}

/// The HMAC key that signs and verifies cache tokens. Its bytes never appear in `Debug`.
#[derive(Clone)]
pub struct TokenKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    /// A key from raw bytes; rejects keys shorter than [`MIN_KEY_LEN`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TokenKeyError> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(TokenKeyError::TooShort { len: bytes.len() });
        }
        Ok(Self {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
        })
    }

    /// Reads a key file: its raw bytes are the key (no trimming, no encoding), e.g. made
    /// with `head -c 32 /dev/urandom` and mounted from a Secret.
    pub fn read(path: &Path) -> Result<Self, TokenKeyError> {
        let bytes = std::fs::read(path).map_err(|source| TokenKeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_bytes(&bytes)
    }

    /// Signs `claims` into a token.
    pub fn mint(&self, claims: &Claims) -> Result<String, TokenError> {
        install_jwt_provider();
        claims.check_namespace()?;
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|err| TokenError::Sign(err.to_string()))
    }

    /// Verifies a token's signature, shape, issuer and expiry at `now`, and returns its
    /// claims.
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        install_jwt_provider();
        let mut validation = Validation::new(Algorithm::HS256);
        // Expiry is checked below against the `now` we are given, not the system clock.
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.set_issuer(&[ISSUER]);
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map_err(classify)?
            .claims;
        claims.check_namespace()?;
        let lifetime = claims.exp.saturating_sub(claims.iat);
        if lifetime > MAX_LIFETIME_SECS {
            return Err(TokenError::TooLong { lifetime });
        }
        let nbf = claims.nbf.unwrap_or(claims.iat);
        if nbf > now.saturating_add(CLOCK_SKEW_SECS) {
            return Err(TokenError::NotYetValid { nbf, now });
        }
        if claims.exp <= now {
            return Err(TokenError::Expired {
                exp: claims.exp,
                now,
            });
        }
        Ok(claims)
    }
}

fn classify(err: jsonwebtoken::errors::Error) -> TokenError {
    match err.kind() {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::InvalidIssuer => TokenError::Malformed(format!("issuer is not {ISSUER:?}")),
        ErrorKind::InvalidAlgorithm => TokenError::Malformed("algorithm is not HS256".into()),
        _ => TokenError::Malformed(err.to_string()),
    }
}

/// Installs the ring-backed provider as jsonwebtoken's process default, once. Without it
/// jsonwebtoken (built with no backend feature) would panic on first use.
fn install_jwt_provider() {
    static INSTALL: Once = Once::new();
    static PROVIDER: CryptoProvider = CryptoProvider {
        signer_factory: new_signer,
        verifier_factory: new_verifier,
        // JWK helpers are never used: Kiln's keys are raw HMAC secrets.
        key_utils: KeyUtils::new_unimplemented(),
    };
    INSTALL.call_once(|| {
        // An `Err` means some provider is already installed, which only this function does.
        let _ = PROVIDER.install_default();
    });
}

/// HMAC-SHA256 through ring, as both signer and verifier.
struct RingHs256(ring::hmac::Key);

impl RingHs256 {
    fn new(algorithm: &Algorithm, secret: &[u8]) -> jsonwebtoken::errors::Result<Self> {
        match algorithm {
            Algorithm::HS256 => Ok(Self(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret))),
            _ => Err(ErrorKind::InvalidAlgorithm.into()),
        }
    }
}

impl signature::Signer<Vec<u8>> for RingHs256 {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        Ok(ring::hmac::sign(&self.0, msg).as_ref().to_vec())
    }
}

impl signature::Verifier<Vec<u8>> for RingHs256 {
    fn verify(&self, msg: &[u8], tag: &Vec<u8>) -> Result<(), signature::Error> {
        ring::hmac::verify(&self.0, msg, tag).map_err(|_| signature::Error::new())
    }
}

impl JwtSigner for RingHs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

impl JwtVerifier for RingHs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

fn new_signer(
    algorithm: &Algorithm,
    key: &EncodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn JwtSigner>> {
    Ok(Box::new(RingHs256::new(algorithm, key.as_bytes())?))
}

fn new_verifier(
    algorithm: &Algorithm,
    key: &DecodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn JwtVerifier>> {
    Ok(Box::new(RingHs256::new(
        algorithm,
        key.try_get_as_bytes()?,
    )?))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    pub(crate) const NOW: u64 = 1_800_000_000;

    pub(crate) fn key() -> TokenKey {
        TokenKey::from_bytes(&[7u8; 32]).unwrap()
    }

    pub(crate) fn claims(ns: &str) -> Claims {
        Claims::new(
            "build-uid-1",
            ns,
            [TokenAction::Pull, TokenAction::Push],
            NOW,
            3600,
        )
    }

    #[test]
    fn minted_tokens_verify_to_the_same_claims() {
        let claims = claims("team-a");
        let token = key().mint(&claims).unwrap();
        assert_eq!(key().verify(&token, NOW).unwrap(), claims);
        assert_eq!(key().verify(&token, NOW + 3599).unwrap(), claims);
    }

    #[test]
    fn claims_serialize_with_sorted_actions() {
        let claims = Claims::new("u", "ns", [TokenAction::Push, TokenAction::Pull], 10, 5);
        assert_eq!(
            serde_json::to_value(&claims).unwrap(),
            serde_json::json!({
                "sub": "u", "ns": "ns", "actions": ["pull", "push"],
                "exp": 15, "iat": 10, "nbf": 10, "iss": "kiln"
            })
        );
    }

    #[test]
    fn tokens_are_refused_before_nbf_beyond_the_skew_and_when_they_live_too_long() {
        let early = Claims::new("u", "team-a", [TokenAction::Pull], NOW + 600, 600);
        let token = key().mint(&early).unwrap();
        assert_eq!(
            key().verify(&token, NOW),
            Err(TokenError::NotYetValid {
                nbf: NOW + 600,
                now: NOW
            })
        );
        // A controller whose clock runs a little ahead is fine.
        let slightly = Claims::new(
            "u",
            "team-a",
            [TokenAction::Pull],
            NOW + CLOCK_SKEW_SECS,
            600,
        );
        assert!(key().verify(&key().mint(&slightly).unwrap(), NOW).is_ok());
        // A token of an older controller has no nbf: its issue time stands in.
        let older = Claims {
            nbf: None,
            ..early.clone()
        };
        assert!(matches!(
            key().verify(&key().mint(&older).unwrap(), NOW),
            Err(TokenError::NotYetValid { .. })
        ));
        assert!(
            key()
                .verify(&key().mint(&older).unwrap(), NOW + 600)
                .is_ok()
        );
        // The longest a controller mints is accepted, a second more is not.
        let longest = Claims::new("u", "team-a", [TokenAction::Pull], NOW, MAX_LIFETIME_SECS);
        assert!(key().verify(&key().mint(&longest).unwrap(), NOW).is_ok());
        let longer = Claims::new(
            "u",
            "team-a",
            [TokenAction::Pull],
            NOW,
            MAX_LIFETIME_SECS + 1,
        );
        assert_eq!(
            key().verify(&key().mint(&longer).unwrap(), NOW),
            Err(TokenError::TooLong {
                lifetime: MAX_LIFETIME_SECS + 1
            })
        );
    }

    #[test]
    fn expired_tokens_are_rejected_at_and_after_exp() {
        let token = key().mint(&claims("team-a")).unwrap();
        let exp = NOW + 3600;
        for now in [exp, exp + 1, exp + 86_400] {
            assert_eq!(
                key().verify(&token, now),
                Err(TokenError::Expired { exp, now })
            );
        }
    }

    #[test]
    fn another_key_or_altered_claims_fail_the_signature() {
        let token = key().mint(&claims("team-a")).unwrap();
        let other = TokenKey::from_bytes(&[8u8; 32]).unwrap();
        assert_eq!(other.verify(&token, NOW), Err(TokenError::BadSignature));

        // Swap the payload for one naming another namespace, keeping the signature.
        let parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims("team-b")).unwrap());
        let tampered = format!("{}.{}.{}", parts[0], forged, parts[2]);
        assert_eq!(key().verify(&tampered, NOW), Err(TokenError::BadSignature));
    }

    #[test]
    fn what_is_not_a_kiln_token_is_malformed() {
        let sign_raw = |header: serde_json::Value, payload: serde_json::Value| {
            let h = URL_SAFE_NO_PAD.encode(header.to_string());
            let p = URL_SAFE_NO_PAD.encode(payload.to_string());
            let tag = ring::hmac::sign(
                &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[7u8; 32]),
                format!("{h}.{p}").as_bytes(),
            );
            format!("{h}.{p}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
        };
        let good = serde_json::to_value(claims("team-a")).unwrap();
        let hs256 = serde_json::json!({"alg": "HS256", "typ": "JWT"});
        let mut other_issuer = good.clone();
        other_issuer["iss"] = "someone-else".into();
        let mut bad_ns = good.clone();
        bad_ns["ns"] = "a/b".into();
        let mut bad_action = good.clone();
        bad_action["actions"] = serde_json::json!(["pull", "delete"]);
        let mut no_exp = good.clone();
        no_exp.as_object_mut().unwrap().remove("exp");
        let cases = [
            "".to_owned(),
            "not-a-jwt".to_owned(),
            "a.b.c".to_owned(),
            sign_raw(serde_json::json!({"alg": "HS512"}), good.clone()),
            sign_raw(serde_json::json!({"alg": "none"}), good.clone()),
            sign_raw(hs256.clone(), other_issuer),
            sign_raw(hs256.clone(), bad_ns),
            sign_raw(hs256.clone(), bad_action),
            sign_raw(hs256.clone(), no_exp),
        ];
        for token in cases {
            assert!(
                matches!(key().verify(&token, NOW), Err(TokenError::Malformed(_))),
                "token {token:?}: {:?}",
                key().verify(&token, NOW)
            );
        }
        // The same construction with good claims verifies, so the cases above fail for the
        // reason they name.
        assert!(key().verify(&sign_raw(hs256, good), NOW).is_ok());
    }

    #[test]
    fn minting_refuses_a_namespace_that_is_not_one_component() {
        for ns in ["", "a/b", "Team", "-x"] {
            assert!(matches!(
                key().mint(&claims(ns)),
                Err(TokenError::Malformed(_))
            ));
        }
    }

    #[test]
    fn keys_shorter_than_32_bytes_are_refused() {
        assert!(matches!(
            TokenKey::from_bytes(&[1u8; 31]),
            Err(TokenKeyError::TooShort { len: 31 })
        ));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, b"short\n").unwrap();
        assert!(matches!(
            TokenKey::read(&path),
            Err(TokenKeyError::TooShort { len: 6 })
        ));
        std::fs::write(&path, [9u8; 64]).unwrap();
        let key = TokenKey::read(&path).unwrap();
        let token = key.mint(&claims("team-a")).unwrap();
        assert!(key.verify(&token, NOW).is_ok());
        assert!(matches!(
            TokenKey::read(&dir.path().join("missing")),
            Err(TokenKeyError::Read { .. })
        ));
    }

    #[test]
    fn claims_cover_their_namespace_only() {
        let c = claims("team-a");
        assert!(c.covers(&RepoName::parse("team-a/app").unwrap()));
        assert!(!c.covers(&RepoName::parse("team-ab/app").unwrap()));
        assert!(!c.covers(&RepoName::parse("team-a").unwrap()));
        assert_eq!(c.remaining_secs(NOW + 600), 3000);
        assert_eq!(c.remaining_secs(NOW + 7200), 0);
    }
}
