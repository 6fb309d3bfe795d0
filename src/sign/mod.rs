//! Image signatures that `cosign verify --key` accepts: signing keys, and cosign's
//! tag-based signature format as the exact bytes to push (pure: no I/O; signing reads the
//! system's random number generator, as ECDSA needs).
//!
//! | module | holds |
//! | --- | --- |
//! | [`key`] | ECDSA P-256 keys: PKCS#8, SEC1 and cosign's encrypted PEM; signing and verifying |
//! | [`cosign`] | the simple-signing payload, the `.sig` tag, and the signature image (manifest and config) |
//!
//! The registry I/O is the caller's: [`sign_image`] takes the manifest currently at the
//! image's [`signature_tag`] (if any) and says what to push, in order: the payload blob,
//! the config blob, then the manifest at the tag. Signatures already there, made by other
//! keys, are kept, as cosign keeps them.

pub mod cosign;
pub mod key;

pub use cosign::{SignatureImage, SignatureImageError, payload, signature_tag};
pub use key::{KeyError, PublicKey, SignError, SigningKey};

use crate::oci::digest::Digest;

/// What to push to sign an image: three blobs and a tag, in the order given here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureUpload {
    /// The simple-signing payload: a blob, pushed first (`Digest::of(&payload)`).
    pub payload: Vec<u8>,
    /// The signature image's config: a blob, pushed second (`Digest::of(&config)`).
    pub config: Vec<u8>,
    /// The signature image's manifest, pushed last, at [`SignatureUpload::tag`], with the
    /// media type [`SignatureUpload::manifest_media_type`].
    pub manifest: Vec<u8>,
    /// The manifest's media type (OCI, or Docker's when the existing manifest was Docker's).
    pub manifest_media_type: &'static str,
    /// The tag: `sha256-<hex>.sig`.
    pub tag: String,
}

/// Why an image could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignImageError {
    /// The manifest at the signature tag cannot be appended to.
    #[error(transparent)]
    Existing(#[from] SignatureImageError),
    /// The key could not sign.
    #[error(transparent)]
    Sign(#[from] SignError),
}

/// What [`sign_image`] found and made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signing {
    /// What to push; `None` when the signature image already holds a signature of the
    /// same payload by the same key.
    pub upload: Option<SignatureUpload>,
    /// The signatures the signature image holds once `upload` is pushed (this key's
    /// included).
    pub signatures: usize,
}

/// Signs the image `digest` of the repository `docker_reference` (see
/// [`cosign::docker_reference`]) with `key`, appending to `existing`, the manifest now at
/// the image's [`signature_tag`] (`None` when the tag does not exist). Nothing to upload
/// when `existing` already holds a signature of the same payload by the same key: ECDSA
/// signatures are randomized, so signing again would only add a layer.
pub fn sign_image(
    existing: Option<&[u8]>,
    docker_reference: &str,
    digest: &Digest,
    key: &SigningKey,
) -> Result<Signing, SignImageError> {
    let image = match existing {
        Some(bytes) => SignatureImage::parse(bytes)?,
        None => SignatureImage::new(),
    };
    let payload = payload(docker_reference, digest);
    if image.has_signature_by(&payload, &key.public_key()) {
        return Ok(Signing {
            upload: None,
            signatures: image.layers().len(),
        });
    }
    let signature = key.sign(&payload)?;
    let image = image.with_signature(&payload, &signature)?;
    Ok(Signing {
        signatures: image.layers().len(),
        upload: Some(SignatureUpload {
            config: image.config_bytes(),
            manifest: image.manifest_bytes(),
            manifest_media_type: image.media_type(),
            tag: signature_tag(digest),
            payload,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sign");

    fn key(name: &str) -> SigningKey {
        let text = std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap();
        SigningKey::from_pem(&text, None).unwrap()
    }

    #[test]
    fn signing_twice_with_one_key_is_a_no_op_and_another_key_appends() {
        let image: Digest = Digest::of(b"an image manifest");
        let reference = cosign::docker_reference("registry.example.com", "team/app");
        let first = key("pkcs8.key");

        let signing = sign_image(None, &reference, &image, &first).unwrap();
        assert_eq!(signing.signatures, 1);
        let upload = signing.upload.unwrap();
        assert_eq!(upload.tag, signature_tag(&image));
        assert_eq!(upload.payload, payload(&reference, &image));
        assert_eq!(upload.manifest_media_type, crate::oci::media::OCI_MANIFEST);
        let written = SignatureImage::parse(&upload.manifest).unwrap();
        assert_eq!(written.config_bytes(), upload.config);
        let layer = &written.layers()[0];
        assert_eq!(layer.digest, Digest::of(&upload.payload));
        assert!(
            first
                .public_key()
                .verify(&upload.payload, &layer.signature().unwrap())
        );

        assert_eq!(
            sign_image(Some(&upload.manifest), &reference, &image, &first).unwrap(),
            Signing {
                upload: None,
                signatures: 1
            }
        );

        let second = key("sec1.key");
        let both = sign_image(Some(&upload.manifest), &reference, &image, &second).unwrap();
        assert_eq!(both.signatures, 2);
        let both = both.upload.unwrap();
        let both = SignatureImage::parse(&both.manifest).unwrap();
        assert_eq!(both.layers().len(), 2);
        assert_eq!(&both.layers()[0], layer);
        assert!(both.has_signature_by(&upload.payload, &first.public_key()));
        assert!(both.has_signature_by(&upload.payload, &second.public_key()));
    }

    #[test]
    fn a_foreign_manifest_at_the_tag_is_an_error() {
        let image = Digest::of(b"an image manifest");
        let err = sign_image(Some(b"[]"), "r.example/a", &image, &key("pkcs8.key")).unwrap_err();
        assert!(matches!(err, SignImageError::Existing(_)));
    }
}
