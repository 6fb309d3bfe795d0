//! Pushing an image's signature (I/O: HTTP to the output registry; the signature itself
//! is [`crate::sign`]'s).
//!
//! The signature image sits at the image's `sha256-<hex>.sig` tag in the image's own
//! repository, as cosign puts it, so `cosign verify --key` finds it. Signatures already at
//! the tag (other keys, earlier runs) are kept and the new one appended; a signature of the
//! same image by the same key already there is left alone, so signing again is harmless.
//!
//! Order: the payload blob, the config blob, then the manifest at the tag; the
//! `Docker-Content-Digest` of the PUT must be the digest of the bytes sent.

// An error here ends a one-shot command, and carries the reference people need to read
// it; a few more bytes per `Result` cost nothing.
#![allow(clippy::result_large_err)]

use std::collections::BTreeSet;

use bytes::Bytes;

use super::client::{RegistryClient, RequestError, SetupError};
use crate::oci::digest::Digest;
use crate::oci::name::ImageName;
use crate::registry::mirror::credentials::Credentials;
use crate::retry::Retry;
use crate::sign::cosign::docker_reference;
use crate::sign::{SignImageError, SigningKey, sign_image, signature_tag};

/// What to sign: the image `digest` in `image`'s repository.
pub struct SignRequest<'k> {
    /// The output image: its registry and repository hold the image and get the signature.
    pub image: ImageName,
    /// The digest of the image's manifest (or index).
    pub digest: Digest,
    /// The signing key.
    pub key: &'k SigningKey,
    /// Credentials for the registry; `None` is anonymous.
    pub credentials: Option<Credentials>,
    /// Registries (`host[:port]`) reached over plain HTTP.
    pub plain_http: BTreeSet<String>,
    /// The retry policy for transient failures.
    pub retry: Retry,
}

/// A signature in the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed {
    /// `registry/repository:sha256-<hex>.sig`.
    pub reference: String,
    /// Whether this key's signature of the image was there already (nothing was pushed).
    pub already_there: bool,
    /// The signatures the signature image holds now, this one included.
    pub signatures: usize,
}

/// Why the signature was not pushed. Each variant is named after the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum SignPushError {
    /// The registry client could not be set up.
    #[error(transparent)]
    BuildClient(#[from] SetupError),
    /// The signatures already at the tag could not be read.
    #[error("cannot read the signatures at {reference}")]
    FetchSignatures {
        /// `registry/repository:sha256-<hex>.sig`.
        reference: String,
        /// What the registry said.
        #[source]
        source: RequestError,
    },
    /// The signature could not be made (or appended to what is at the tag).
    #[error("cannot sign {image}")]
    Sign {
        /// `registry/repository@digest`.
        image: String,
        /// Why.
        #[source]
        source: SignImageError,
    },
    /// A blob of the signature image could not be uploaded.
    #[error("cannot upload the signature's {what} to {repository}")]
    PushBlob {
        /// `payload` or `config`.
        what: &'static str,
        /// `registry/repository`.
        repository: String,
        /// What the registry said.
        #[source]
        source: RequestError,
    },
    /// The signature image could not be put at its tag.
    #[error("cannot push the signature to {reference}")]
    PushManifest {
        /// `registry/repository:sha256-<hex>.sig`.
        reference: String,
        /// What the registry said.
        #[source]
        source: RequestError,
    },
    /// The registry accepted the signature image but says it stored other bytes.
    #[error("the registry stored the signature at {reference} as {stored}, not as {pushed}")]
    VerifyPush {
        /// `registry/repository:sha256-<hex>.sig`.
        reference: String,
        /// The digest of the bytes sent.
        pushed: Digest,
        /// The registry's `Docker-Content-Digest`.
        stored: String,
    },
}

/// Signs `request.digest` and pushes the signature beside it.
pub async fn push_signature(request: SignRequest<'_>) -> Result<Signed, SignPushError> {
    let client = RegistryClient::new(
        &request.image,
        request.credentials.as_ref(),
        &request.plain_http,
        request.retry,
    )?;
    let image = &request.image;
    let repository = format!("{}/{}", image.registry, image.repository);
    let tag = signature_tag(&request.digest);
    let reference = format!("{repository}:{tag}");
    let existing =
        client
            .manifest_at_tag(&tag)
            .await
            .map_err(|source| SignPushError::FetchSignatures {
                reference: reference.clone(),
                source,
            })?;
    let identity = docker_reference(&image.registry, &image.repository.to_string());
    let signing = sign_image(
        existing.as_ref().map(|(bytes, _)| bytes.as_slice()),
        &identity,
        &request.digest,
        request.key,
    )
    .map_err(|source| SignPushError::Sign {
        image: format!("{repository}@{}", request.digest),
        source,
    })?;
    let signatures = signing.signatures;
    let Some(upload) = signing.upload else {
        return Ok(Signed {
            reference,
            already_there: true,
            signatures,
        });
    };
    for (what, bytes) in [("payload", &upload.payload), ("config", &upload.config)] {
        client
            .push_blob(Bytes::from(bytes.clone()))
            .await
            .map_err(|source| SignPushError::PushBlob {
                what,
                repository: repository.clone(),
                source,
            })?;
    }
    let pushed = Digest::of(&upload.manifest);
    let stored = client
        .put_manifest(
            &upload.tag,
            upload.manifest_media_type,
            Bytes::from(upload.manifest.clone()),
        )
        .await
        .map_err(|source| SignPushError::PushManifest {
            reference: reference.clone(),
            source,
        })?;
    if let Some(stored) = stored.filter(|stored| *stored != pushed.to_string()) {
        return Err(SignPushError::VerifyPush {
            reference,
            pushed,
            stored,
        });
    }
    tracing::info!(%reference, signatures, "pushed the image's signature");
    Ok(Signed {
        reference,
        already_there: false,
        signatures,
    })
}
