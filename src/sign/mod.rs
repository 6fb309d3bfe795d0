//! Image signatures that `cosign verify --key` accepts (pure: no I/O; signing reads the
//! system's random number generator, as ECDSA needs).
//!
//! | module | holds |
//! | --- | --- |
//! | [`key`] | ECDSA P-256 keys: PKCS#8, SEC1 and cosign's encrypted PEM; signing and verifying |

pub mod key;

pub use key::{KeyError, PublicKey, SignError, SigningKey};
