//! Assembling a multi-platform image: fetch each platform's manifest from the output
//! repository, check it, write the OCI image index of them and push it at the output tag
//! (I/O: HTTP to one registry, through [`super::client`]).
//!
//! This is the work of `kiln index push`, which the controller runs in a short pod once
//! every platform's build pod has pushed its image by digest. It runs in a pod, not in the
//! controller, because it needs the Build's push credentials and the controller never
//! reads them.
//!
//! # Steps and guarantees
//! 1. Every `(platform, digest)` is fetched by digest from the output repository, and its
//!    bytes are hashed: an entry's digest, media type and size are those of bytes this
//!    process checked, never what a header claimed.
//! 2. A platform's push is one image manifest, or, with attestations (provenance, SBOM),
//!    BuildKit's index of that image and the attestation manifests about it
//!    ([`crate::oci::attestation`]); then the image's manifest is fetched and checked too.
//!    Any other index is refused ([`ManifestProblem::NotAttested`]): an index of indexes
//!    is not what pull tools resolve.
//! 3. The index is [`image_index`] of every platform's image in the order given, then
//!    every platform's attestations in the same order (as BuildKit's own multi-platform
//!    index is laid out), so the same inputs push the same bytes and the same digest:
//!    pushing twice is harmless.
//! 4. It is PUT at the tag; a `Docker-Content-Digest` in the answer must be the digest of
//!    the bytes sent, or the push counts as failed ([`IndexPushError::VerifyPush`]).
//!
//! Connection failures, time-outs, 429 and 5xx answers are retried ([`Retry`]); any other
//! answer is definite and ends the push.
//!
//! The registry requests (fetches, the PUT, the token flow, retries) are
//! [`super::client::RegistryClient`]'s.

// An error here ends a one-shot command, and carries the platform and reference people
// need to read it; a few more bytes per `Result` cost nothing.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use oci_client::errors::{DigestError, OciDistributionError};

use super::client::{RegistryClient, RequestError, SetupError, classify_oci};

use crate::oci::attestation;
use crate::oci::digest::Digest;
use crate::oci::index::{IndexEntry, image_index};
use crate::oci::media::{
    DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, MANIFEST_MEDIA_TYPES, MAX_MANIFEST_BYTES, OCI_INDEX,
    OCI_MANIFEST,
};
use crate::oci::name::ImageName;
use crate::oci::platform::Platform;
use crate::registry::mirror::credentials::Credentials;
pub use crate::retry::Retry;
use crate::retry::retrying;

/// What to push: the index of `manifests` at `image`'s tag.
#[derive(Clone, Debug)]
pub struct IndexPush {
    /// The output image: its registry and repository hold the manifests, its tag gets the
    /// index.
    pub image: ImageName,
    /// Each platform's manifest digest, in the order the index lists them.
    pub manifests: Vec<(Platform, Digest)>,
    /// Credentials for the registry; `None` is anonymous.
    pub credentials: Option<Credentials>,
    /// Registries (`host[:port]`, as in the image name) reached over plain HTTP.
    pub plain_http: BTreeSet<String>,
    /// The retry policy for transient failures.
    pub retry: Retry,
}

/// A pushed index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushedIndex {
    /// The digest of the index's bytes: what the tag now points to.
    pub digest: Digest,
    /// The index's bytes, exactly as pushed.
    pub bytes: Vec<u8>,
    /// Its entries, in order.
    pub entries: Vec<IndexEntry>,
}

/// Why the index was not pushed. Each variant is named after the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum IndexPushError {
    /// The request lists no manifest.
    #[error("no manifests to put in the index: give at least one PLATFORM=DIGEST")]
    ListManifests,
    /// The request lists a platform twice, which would make pulls ambiguous.
    #[error("platform {0} is listed twice: an index has one manifest per platform")]
    ListPlatforms(Platform),
    /// The registry client could not be set up.
    #[error(transparent)]
    BuildClient(#[from] SetupError),
    /// A platform's manifest could not be fetched.
    #[error("cannot fetch the {platform} manifest {reference}")]
    FetchManifest {
        /// The platform.
        platform: Platform,
        /// `registry/repository@digest`.
        reference: String,
        /// What the registry (or the network) said.
        #[source]
        source: RequestError,
    },
    /// A platform's manifest was fetched but cannot be listed in the index.
    #[error("the {platform} manifest {reference} cannot go in the index")]
    CheckManifest {
        /// The platform.
        platform: Platform,
        /// `registry/repository@digest`.
        reference: String,
        /// What is wrong with it.
        #[source]
        source: ManifestProblem,
    },
    /// A platform's image config (which says the image's platform) could not be fetched.
    #[error("cannot fetch the image config of the {platform} manifest {reference}")]
    FetchConfig {
        /// The platform.
        platform: Platform,
        /// `registry/repository@digest` of the manifest.
        reference: String,
        /// What the registry (or the network) said.
        #[source]
        source: RequestError,
    },
    /// The index could not be pushed.
    #[error("cannot push the index to {reference}")]
    PushIndex {
        /// `registry/repository:tag`.
        reference: String,
        /// What the registry (or the network) said.
        #[source]
        source: RequestError,
    },
    /// The registry accepted the index but says it stored other bytes.
    #[error(
        "the registry stored the index at {reference} as {stored}, not as {pushed} (the digest of the bytes sent)"
    )]
    VerifyPush {
        /// `registry/repository:tag`.
        reference: String,
        /// The digest of the bytes sent.
        pushed: Digest,
        /// The registry's `Docker-Content-Digest`.
        stored: String,
    },
}

/// What makes a fetched manifest unfit for the index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestProblem {
    /// It is an index, but not one platform's image with its attestations.
    #[error("it is an image index but not one image with its attestations: {0}")]
    NotAttested(#[source] crate::oci::attestation::AttestedProblem),
    /// It is an image index or manifest list itself.
    #[error(
        "it is an image index ({media_type}), not one image's manifest: each platform's build must push a single-platform image"
    )]
    IsIndex {
        /// Its media type.
        media_type: String,
    },
    /// Its bytes do not hash to the digest it was fetched by.
    #[error("the registry served bytes whose digest is {actual}")]
    DigestMismatch {
        /// The digest of what was served.
        actual: String,
    },
    /// It is larger than any registry must accept.
    #[error("it is {size} bytes, over the {MAX_MANIFEST_BYTES}-byte manifest limit")]
    TooLarge {
        /// Its size.
        size: usize,
    },
    /// Its media type is not an image manifest Kiln lists.
    #[error("its media type {0:?} is neither an OCI image manifest nor a Docker schema 2 manifest")]
    UnsupportedMediaType(String),
    /// It is not a JSON manifest whose media type can be told.
    #[error("it is not a manifest whose media type can be told: {0}")]
    Unreadable(String),
    /// Its image config is not one whose platform can be read.
    #[error("its image config cannot be read: {0}")]
    ConfigUnreadable(String),
    /// Its image config says another platform than the one it is listed for: the index
    /// would send the wrong image to machines of that platform.
    #[error("its image config is for {found}, not for the platform it is listed for")]
    PlatformMismatch {
        /// The platform the config says (`os/architecture[/variant]`).
        found: String,
    },
}

/// Largest image config read to check a manifest's platform; a config is a few KiB.
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// The config descriptor of image manifest `bytes`.
fn config_descriptor(bytes: &[u8]) -> Result<oci_client::manifest::OciDescriptor, ManifestProblem> {
    #[derive(serde::Deserialize)]
    struct WithConfig {
        config: oci_client::manifest::OciDescriptor,
    }
    let manifest: WithConfig = serde_json::from_slice(bytes)
        .map_err(|err| ManifestProblem::ConfigUnreadable(format!("no config descriptor: {err}")))?;
    if u64::try_from(manifest.config.size).unwrap_or(u64::MAX) > MAX_CONFIG_BYTES {
        return Err(ManifestProblem::ConfigUnreadable(format!(
            "it is {} bytes, over the {MAX_CONFIG_BYTES}-byte limit",
            manifest.config.size
        )));
    }
    Ok(manifest.config)
}

/// Checks that image config `bytes` is for `platform`: the same OS and architecture, and
/// the same variant when both name one (a config often leaves the variant out, as
/// `linux/arm64` images do for `v8`).
pub fn check_config_platform(platform: &Platform, bytes: &[u8]) -> Result<(), ManifestProblem> {
    #[derive(serde::Deserialize)]
    struct ConfigPlatform {
        os: Option<String>,
        architecture: Option<String>,
        variant: Option<String>,
    }
    let config: ConfigPlatform = serde_json::from_slice(bytes)
        .map_err(|err| ManifestProblem::ConfigUnreadable(err.to_string()))?;
    let (Some(os), Some(architecture)) = (config.os, config.architecture) else {
        return Err(ManifestProblem::ConfigUnreadable(
            "it names no os and architecture".to_owned(),
        ));
    };
    let variant_differs = matches!(
        (&platform.variant, &config.variant),
        (Some(wanted), Some(found)) if wanted != found
    );
    if os != platform.os || architecture != platform.architecture || variant_differs {
        let found = match config.variant {
            Some(variant) => format!("{os}/{architecture}/{variant}"),
            None => format!("{os}/{architecture}"),
        };
        return Err(ManifestProblem::PlatformMismatch { found });
    }
    Ok(())
}

/// The media type of an image manifest's bytes: its `mediaType` field, or, when an OCI
/// manifest leaves that out, what its shape says. Refuses indexes, manifest lists and
/// anything but an OCI image manifest or a Docker schema 2 manifest.
pub fn manifest_media_type(bytes: &[u8]) -> Result<String, ManifestProblem> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Shape {
        media_type: Option<String>,
        manifests: Option<serde::de::IgnoredAny>,
        config: Option<serde::de::IgnoredAny>,
        layers: Option<serde::de::IgnoredAny>,
    }
    let shape: Shape = serde_json::from_slice(bytes)
        .map_err(|err| ManifestProblem::Unreadable(err.to_string()))?;
    let media_type = match (
        shape.media_type,
        shape.manifests,
        shape.config,
        shape.layers,
    ) {
        (Some(media_type), ..) => media_type,
        (None, Some(_), ..) => OCI_INDEX.to_owned(),
        (None, None, Some(_), Some(_)) => OCI_MANIFEST.to_owned(),
        (None, None, ..) => {
            return Err(ManifestProblem::Unreadable(
                "no mediaType, and neither manifests nor config and layers".to_owned(),
            ));
        }
    };
    match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => Ok(media_type),
        OCI_INDEX | DOCKER_MANIFEST_LIST => Err(ManifestProblem::IsIndex { media_type }),
        _ => Err(ManifestProblem::UnsupportedMediaType(media_type)),
    }
}

/// Fetches and checks every manifest of `request`, then pushes their index at its tag.
/// Returns the index and its digest.
pub async fn push_index(request: &IndexPush) -> Result<PushedIndex, IndexPushError> {
    check_request(request)?;
    let registry = RegistryClient::new(
        &request.image,
        request.credentials.as_ref(),
        &request.plain_http,
        request.retry,
    )?;
    let mut pushed = Vec::with_capacity(request.manifests.len());
    for (platform, digest) in &request.manifests {
        pushed.push(registry.fetch_platform(platform, digest).await?);
    }
    let entries = merged_entries(pushed);
    let bytes = image_index(&entries);
    let digest = Digest::of(&bytes);
    let reference = request.image.to_string();
    let stored = registry
        .put_manifest(
            &request.image.tag.to_string(),
            OCI_INDEX,
            Bytes::from(bytes.clone()),
        )
        .await
        .map_err(|source| IndexPushError::PushIndex {
            reference: reference.clone(),
            source,
        })?;
    if let Some(stored) = stored.filter(|stored| *stored != digest.to_string()) {
        return Err(IndexPushError::VerifyPush {
            reference,
            pushed: digest,
            stored,
        });
    }
    tracing::info!(image = %reference, %digest, platforms = entries.len(), "pushed the image index");
    Ok(PushedIndex {
        digest,
        bytes,
        entries,
    })
}

/// What one platform pushed: its image's entry, and the attestations about it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PlatformEntries {
    image: IndexEntry,
    attestations: Vec<IndexEntry>,
}

/// The entries of the merged index: every platform's image in the order given, then every
/// platform's attestations in the same order, as BuildKit orders a multi-platform index of
/// its own (pull tools pick among the images; the attestations' `unknown/unknown`
/// platform keeps them from being pulled).
fn merged_entries(pushed: Vec<PlatformEntries>) -> Vec<IndexEntry> {
    let (images, attestations): (Vec<IndexEntry>, Vec<Vec<IndexEntry>>) = pushed
        .into_iter()
        .map(|p| (p.image, p.attestations))
        .unzip();
    images
        .into_iter()
        .chain(attestations.into_iter().flatten())
        .collect()
}

/// The checks that need no registry: at least one manifest, one per platform.
fn check_request(request: &IndexPush) -> Result<(), IndexPushError> {
    if request.manifests.is_empty() {
        return Err(IndexPushError::ListManifests);
    }
    let mut seen = BTreeSet::new();
    for (platform, _) in &request.manifests {
        if !seen.insert(platform) {
            return Err(IndexPushError::ListPlatforms(platform.clone()));
        }
    }
    Ok(())
}

impl RegistryClient {
    /// Fetches what `platform` pushed as `digest` and makes its index entries: the image
    /// manifest, and the attestation manifests about it when BuildKit pushed an attested
    /// index (provenance, SBOM). The image's own manifest is fetched and checked either way.
    async fn fetch_platform(
        &self,
        platform: &Platform,
        digest: &Digest,
    ) -> Result<PlatformEntries, IndexPushError> {
        let bytes = self.fetch_manifest(platform, digest).await?;
        if !matches!(
            manifest_media_type(&bytes),
            Err(ManifestProblem::IsIndex { .. })
        ) {
            let image = self.check_image(platform, digest, &bytes).await?;
            return Ok(PlatformEntries {
                image,
                attestations: Vec::new(),
            });
        }
        let reference = self.image.at_digest(digest);
        let check = |source| IndexPushError::CheckManifest {
            platform: platform.clone(),
            reference: reference.clone(),
            source,
        };
        check_bytes(digest, &bytes).map_err(check)?;
        let attested = attestation::split(&bytes)
            .map_err(|problem| check(ManifestProblem::NotAttested(problem)))?;
        let image_bytes = self
            .fetch_manifest(platform, &attested.image.digest)
            .await?;
        let image = self
            .check_image(platform, &attested.image.digest, &image_bytes)
            .await?;
        Ok(PlatformEntries {
            image,
            attestations: attested.attestations,
        })
    }

    /// Fetches the manifest `digest` of `platform`'s push.
    async fn fetch_manifest(
        &self,
        platform: &Platform,
        digest: &Digest,
    ) -> Result<Vec<u8>, IndexPushError> {
        let reference = self.image.at_digest(digest);
        let oci_reference = self.digest_reference(digest);
        let requested = digest.to_string();
        let fetched = retrying(self.retry, &reference, || async {
            match self
                .oci
                .pull_manifest_raw(&oci_reference, &self.auth, &MANIFEST_MEDIA_TYPES)
                .await
            {
                Ok((bytes, _)) => Ok(Ok(bytes)),
                // oci-client checks the bytes against the digest asked for, then against
                // the `Docker-Content-Digest` header: only the first is about the manifest.
                Err(OciDistributionError::DigestError(DigestError::VerificationError {
                    expected,
                    actual,
                })) if expected == requested => Ok(Err(ManifestProblem::DigestMismatch { actual })),
                Err(OciDistributionError::DigestError(err)) => Err(RequestError::BadAnswer {
                    reason: format!("Docker-Content-Digest: {err}"),
                }),
                Err(err) => Err(classify_oci(err)),
            }
        })
        .await
        .map_err(|source| IndexPushError::FetchManifest {
            platform: platform.clone(),
            reference: reference.clone(),
            source,
        })?;
        fetched
            .map(|bytes| bytes.to_vec())
            .map_err(|source| IndexPushError::CheckManifest {
                platform: platform.clone(),
                reference,
                source,
            })
    }

    /// Checks image manifest `bytes`, fetched as `digest` for `platform`, and its config's
    /// platform; returns its index entry.
    async fn check_image(
        &self,
        platform: &Platform,
        digest: &Digest,
        bytes: &[u8],
    ) -> Result<IndexEntry, IndexPushError> {
        let reference = self.image.at_digest(digest);
        let oci_reference = self.digest_reference(digest);
        let check = |source| IndexPushError::CheckManifest {
            platform: platform.clone(),
            reference: reference.clone(),
            source,
        };
        let entry = entry_for(platform, digest, bytes).map_err(check)?;
        // The index tells each machine which image to run: never list an image under a
        // platform its own config does not name.
        let descriptor = config_descriptor(bytes).map_err(check)?;
        let config = retrying(self.retry, &reference, || async {
            let mut out = Vec::new();
            self.oci
                .pull_blob(&oci_reference, &descriptor, &mut out)
                .await
                .map_err(classify_oci)?;
            Ok(out)
        })
        .await
        .map_err(|source| IndexPushError::FetchConfig {
            platform: platform.clone(),
            reference: reference.clone(),
            source,
        })?;
        let wanted: Digest = descriptor.digest.parse().map_err(|err| {
            check(ManifestProblem::ConfigUnreadable(format!(
                "its digest {:?}: {err}",
                descriptor.digest
            )))
        })?;
        let served = wanted.algorithm().digest(&config);
        if served != wanted {
            return Err(check(ManifestProblem::ConfigUnreadable(format!(
                "the registry served bytes whose digest is {served}, not {wanted}"
            ))));
        }
        check_config_platform(platform, &config).map_err(check)?;
        Ok(entry)
    }
}

/// The index entry of manifest `bytes` fetched as `digest` for `platform`, once checked.
fn entry_for(
    platform: &Platform,
    digest: &Digest,
    bytes: &[u8],
) -> Result<IndexEntry, ManifestProblem> {
    check_bytes(digest, bytes)?;
    Ok(IndexEntry {
        platform: platform.clone(),
        digest: *digest,
        media_type: manifest_media_type(bytes)?,
        size: bytes.len() as u64,
        annotations: BTreeMap::new(),
    })
}

/// Checks that manifest `bytes` hash to `digest` and are within the size limit.
fn check_bytes(digest: &Digest, bytes: &[u8]) -> Result<(), ManifestProblem> {
    let actual = digest.algorithm().digest(bytes);
    if actual != *digest {
        return Err(ManifestProblem::DigestMismatch {
            actual: actual.to_string(),
        });
    }
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(ManifestProblem::TooLarge { size: bytes.len() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::attestation::AttestedProblem;
    use crate::oci::media::OCI_CONFIG;
    use axum::extract::{Request, State};
    use axum::http::StatusCode as S;
    use axum::response::IntoResponse;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use reqwest::header;
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// The image config of a test manifest: `linux/<seed>`.
    fn config(seed: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"architecture": seed, "os": "linux"})).unwrap()
    }

    /// A manifest whose config is [`config`]`(seed)`.
    fn manifest(seed: &str, media_type: Option<&str>) -> Vec<u8> {
        let config = config(seed);
        let mut value = serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": OCI_CONFIG, "digest": Digest::of(&config).to_string(), "size": config.len()},
            "layers": []
        });
        if let Some(media_type) = media_type {
            value["mediaType"] = media_type.into();
        }
        serde_json::to_vec(&value).unwrap()
    }

    /// A registry in-process: manifests by digest, PUTs recorded, failures scripted.
    #[derive(Default)]
    struct Fake {
        manifests: BTreeMap<String, Vec<u8>>,
        /// Blobs by digest: the configs of the manifests.
        blobs: BTreeMap<String, Vec<u8>>,
        /// Answer this many manifest GETs with 503 first.
        get_failures: AtomicUsize,
        /// Answer this many PUTs with 429 first.
        put_failures: AtomicUsize,
        /// Answer PUTs with this Docker-Content-Digest instead of the real one.
        stored_digest: Option<String>,
        /// Require these Basic credentials (`user:password`), challenging with Basic.
        basic: Option<&'static str>,
        pushed: Mutex<Vec<(String, String, Vec<u8>)>>,
    }

    async fn fake(State(fake): State<Arc<Fake>>, request: Request) -> axum::response::Response {
        let (parts, body) = request.into_parts();
        let path = parts.uri.path().to_owned();
        if let Some(credentials) = fake.basic {
            let want = format!("Basic {}", STANDARD.encode(credentials));
            if parts
                .headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                != Some(&want)
            {
                return (
                    S::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Basic realm=\"fake\"")],
                )
                    .into_response();
            }
        }
        if path == "/v2/" {
            return S::OK.into_response();
        }
        if let Some(digest) = path.strip_prefix("/v2/team/app/blobs/") {
            return match fake.blobs.get(digest) {
                Some(bytes) => (
                    [("docker-content-digest", digest.to_owned())],
                    bytes.clone(),
                )
                    .into_response(),
                None => S::NOT_FOUND.into_response(),
            };
        }
        let Some(reference) = path.strip_prefix("/v2/team/app/manifests/") else {
            return S::NOT_FOUND.into_response();
        };
        match parts.method.as_str() {
            "GET" => {
                let left = fake.get_failures.load(Ordering::SeqCst);
                if left > 0 {
                    fake.get_failures.store(left - 1, Ordering::SeqCst);
                    return S::SERVICE_UNAVAILABLE.into_response();
                }
                match fake.manifests.get(reference) {
                    Some(bytes) => (
                        [
                            (header::CONTENT_TYPE.as_str(), OCI_MANIFEST.to_owned()),
                            ("docker-content-digest", reference.to_owned()),
                        ],
                        bytes.clone(),
                    )
                        .into_response(),
                    None => (
                        S::NOT_FOUND,
                        axum::Json(serde_json::json!({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]})),
                    )
                        .into_response(),
                }
            }
            "PUT" => {
                let left = fake.put_failures.load(Ordering::SeqCst);
                if left > 0 {
                    fake.put_failures.store(left - 1, Ordering::SeqCst);
                    return S::TOO_MANY_REQUESTS.into_response();
                }
                let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap().to_vec();
                let content_type = parts
                    .headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let digest = fake
                    .stored_digest
                    .clone()
                    .unwrap_or_else(|| Digest::of(&bytes).to_string());
                fake.pushed
                    .lock()
                    .unwrap()
                    .push((reference.to_owned(), content_type, bytes));
                (
                    S::CREATED,
                    [
                        ("docker-content-digest", digest.clone()),
                        ("location", format!("/v2/team/app/manifests/{digest}")),
                    ],
                )
                    .into_response()
            }
            _ => S::METHOD_NOT_ALLOWED.into_response(),
        }
    }

    async fn serve(fake_config: Fake) -> (String, Arc<Fake>) {
        let state = Arc::new(fake_config);
        let app = axum::Router::new().fallback(fake).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (addr.to_string(), state)
    }

    fn with_manifests(manifests: &[&[u8]]) -> Fake {
        Fake {
            manifests: manifests
                .iter()
                .map(|bytes| (Digest::of(bytes).to_string(), bytes.to_vec()))
                .collect(),
            blobs: ["amd64", "arm64", "a"]
                .into_iter()
                .map(|seed| (Digest::of(&config(seed)).to_string(), config(seed)))
                .collect(),
            ..Fake::default()
        }
    }

    /// BuildKit's index of one attested image: the image, then its provenance.
    fn attested(image: &[u8], provenance: &[u8]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": Digest::of(image).to_string(),
                 "size": image.len(), "platform": {"architecture": "arm64", "os": "linux"}},
                {"mediaType": OCI_MANIFEST, "digest": Digest::of(provenance).to_string(),
                 "size": provenance.len(),
                 "annotations": {
                     attestation::REFERENCE_DIGEST: Digest::of(image).to_string(),
                     attestation::REFERENCE_TYPE: attestation::ATTESTATION_MANIFEST
                 },
                 "platform": {"architecture": "unknown", "os": "unknown"}}
            ]
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn attested_pushes_merge_images_first_then_their_attestations() {
        let amd64 = manifest("amd64", Some(OCI_MANIFEST));
        let arm64 = manifest("arm64", Some(OCI_MANIFEST));
        let provenance = manifest("a", Some(OCI_MANIFEST));
        let arm64_attested = attested(&arm64, &provenance);
        let (host, _fake) = serve(with_manifests(&[&amd64, &arm64, &arm64_attested])).await;
        let pushed = push_index(&request(
            &host,
            &[("linux/amd64", &amd64), ("linux/arm64", &arm64_attested)],
        ))
        .await
        .unwrap();
        let listed: Vec<(String, Digest, bool)> = pushed
            .entries
            .iter()
            .map(|e| {
                (
                    e.platform.to_string(),
                    e.digest,
                    attestation::is_attestation(e),
                )
            })
            .collect();
        assert_eq!(
            listed,
            [
                ("linux/amd64".to_owned(), Digest::of(&amd64), false),
                ("linux/arm64".to_owned(), Digest::of(&arm64), false),
                ("unknown/unknown".to_owned(), Digest::of(&provenance), true),
            ]
        );
        let index: serde_json::Value = serde_json::from_slice(&pushed.bytes).unwrap();
        assert_eq!(
            index["manifests"][2]["annotations"][attestation::REFERENCE_DIGEST],
            Digest::of(&arm64).to_string(),
            "the attestation still names its image"
        );
    }

    #[tokio::test]
    async fn an_attested_push_whose_image_is_for_another_platform_is_refused() {
        let amd64 = manifest("amd64", Some(OCI_MANIFEST));
        let provenance = manifest("a", Some(OCI_MANIFEST));
        let wrong = attested(&amd64, &provenance);
        let (host, _fake) = serve(with_manifests(&[&amd64, &wrong])).await;
        let error = push_index(&request(&host, &[("linux/arm64", &wrong)]))
            .await
            .unwrap_err();
        assert!(
            matches!(
                &error,
                IndexPushError::CheckManifest {
                    source: ManifestProblem::PlatformMismatch { .. },
                    ..
                }
            ),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn an_image_listed_under_a_platform_its_config_does_not_name_is_refused() {
        let amd64 = manifest("amd64", Some(OCI_MANIFEST));
        let (host, fake) = serve(with_manifests(&[&amd64])).await;
        let error = push_index(&request(&host, &[("linux/arm64", &amd64)]))
            .await
            .unwrap_err();
        let text = crate::report::error_chain(&error);
        assert!(
            text.contains(
                "its image config is for linux/amd64, not for the platform it is listed for"
            ),
            "{text}"
        );
        assert!(fake.pushed.lock().unwrap().is_empty(), "nothing pushed");
    }

    #[test]
    fn a_config_names_the_platform_it_is_for() {
        let platform = |text: &str| Platform::parse(text).unwrap();
        let config = |value: serde_json::Value| serde_json::to_vec(&value).unwrap();
        let arm64 = config(serde_json::json!({"os": "linux", "architecture": "arm64"}));
        let arm64_v8 =
            config(serde_json::json!({"os": "linux", "architecture": "arm64", "variant": "v8"}));
        assert_eq!(
            check_config_platform(&platform("linux/arm64"), &arm64),
            Ok(())
        );
        assert_eq!(
            check_config_platform(&platform("linux/arm64/v8"), &arm64),
            Ok(())
        );
        assert_eq!(
            check_config_platform(&platform("linux/arm64"), &arm64_v8),
            Ok(())
        );
        assert_eq!(
            check_config_platform(
                &platform("linux/arm/v7"),
                &config(serde_json::json!({"os": "linux", "architecture": "arm", "variant": "v6"}))
            ),
            Err(ManifestProblem::PlatformMismatch {
                found: "linux/arm/v6".into()
            })
        );
        assert_eq!(
            check_config_platform(&platform("linux/amd64"), &arm64),
            Err(ManifestProblem::PlatformMismatch {
                found: "linux/arm64".into()
            })
        );
        assert!(matches!(
            check_config_platform(&platform("linux/amd64"), b"{}"),
            Err(ManifestProblem::ConfigUnreadable(_))
        ));
    }

    fn request(host: &str, manifests: &[(&str, &[u8])]) -> IndexPush {
        IndexPush {
            image: ImageName::parse(&format!("{host}/team/app:v1")).unwrap(),
            manifests: manifests
                .iter()
                .map(|(platform, bytes)| (Platform::parse(platform).unwrap(), Digest::of(bytes)))
                .collect(),
            credentials: None,
            plain_http: [host.to_owned()].into(),
            retry: Retry {
                attempts: 3,
                first_delay: Duration::from_millis(1),
            },
        }
    }

    #[tokio::test]
    async fn pushes_the_index_of_the_fetched_manifests_at_the_tag() {
        let amd64 = manifest("amd64", Some(OCI_MANIFEST));
        let arm64 = manifest("arm64", Some(DOCKER_MANIFEST));
        let (host, fake) = serve(with_manifests(&[&amd64, &arm64])).await;
        let request = request(
            &host,
            &[("linux/amd64", &amd64), ("linux/arm64/v8", &arm64)],
        );
        let pushed = push_index(&request).await.unwrap();
        let want = vec![
            IndexEntry {
                platform: Platform::parse("linux/amd64").unwrap(),
                digest: Digest::of(&amd64),
                media_type: OCI_MANIFEST.to_owned(),
                size: amd64.len() as u64,
                annotations: BTreeMap::new(),
            },
            IndexEntry {
                platform: Platform::parse("linux/arm64/v8").unwrap(),
                digest: Digest::of(&arm64),
                media_type: DOCKER_MANIFEST.to_owned(),
                size: arm64.len() as u64,
                annotations: BTreeMap::new(),
            },
        ];
        assert_eq!(pushed.entries, want);
        assert_eq!(pushed.bytes, image_index(&want));
        assert_eq!(pushed.digest, Digest::of(&pushed.bytes));
        assert_eq!(
            *fake.pushed.lock().unwrap(),
            [("v1".to_owned(), OCI_INDEX.to_owned(), pushed.bytes.clone())]
        );
    }

    #[tokio::test]
    async fn transient_failures_are_retried_until_the_attempts_run_out() {
        let amd64 = manifest("amd64", None);
        let mut config = with_manifests(&[&amd64]);
        config.get_failures = AtomicUsize::new(2);
        config.put_failures = AtomicUsize::new(2);
        let (host, fake) = serve(config).await;
        let request = request(&host, &[("linux/amd64", &amd64)]);
        let pushed = push_index(&request).await.unwrap();
        // No mediaType in the manifest: its shape says OCI image manifest.
        assert_eq!(pushed.entries[0].media_type, OCI_MANIFEST);
        assert_eq!(fake.pushed.lock().unwrap().len(), 1);

        fake.get_failures.store(3, Ordering::SeqCst);
        let err = push_index(&request).await.unwrap_err();
        assert!(
            matches!(
                &err,
                IndexPushError::FetchManifest {
                    source: RequestError::Unavailable {
                        attempts: 3,
                        status: Some(503),
                        ..
                    },
                    ..
                }
            ),
            "{err:?}"
        );
        fake.put_failures.store(3, Ordering::SeqCst);
        let err = push_index(&request).await.unwrap_err();
        assert!(
            matches!(
                &err,
                IndexPushError::PushIndex {
                    source: RequestError::Unavailable {
                        attempts: 3,
                        status: Some(429),
                        ..
                    },
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(fake.pushed.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn an_index_a_missing_manifest_or_a_wrong_stored_digest_fail_typed() {
        let amd64 = manifest("amd64", Some(OCI_MANIFEST));
        let nested = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []
        }))
        .unwrap();
        let (host, fake) = serve(with_manifests(&[&amd64, &nested])).await;

        let err = push_index(&request(
            &host,
            &[("linux/amd64", &amd64), ("linux/arm64", &nested)],
        ))
        .await
        .unwrap_err();
        assert!(
            matches!(
                &err,
                IndexPushError::CheckManifest {
                    platform,
                    source: ManifestProblem::NotAttested(AttestedProblem::ImageCount(0)),
                    ..
                } if platform.to_string() == "linux/arm64"
            ),
            "{err:?}"
        );

        let err = push_index(&request(&host, &[("linux/amd64", b"absent")]))
            .await
            .unwrap_err();
        assert!(
            matches!(
                &err,
                IndexPushError::FetchManifest {
                    source: RequestError::NotFound { .. },
                    ..
                }
            ),
            "{err:?}"
        );
        let text = crate::report::error_chain(&err);
        assert!(
            text.contains(&format!(
                "linux/amd64 manifest {host}/team/app@{}",
                Digest::of(b"absent")
            )),
            "{text}"
        );
        assert!(text.contains("MANIFEST_UNKNOWN"), "{text}");
        // Nothing is pushed when any entry fails.
        assert!(fake.pushed.lock().unwrap().is_empty());

        // A registry that serves other bytes than the digest asked for.
        let claimed = Digest::of(b"claimed");
        let mut swapped = Fake::default();
        swapped.manifests.insert(claimed.to_string(), amd64.clone());
        let (host, _) = serve(swapped).await;
        let mut by_claim = request(&host, &[]);
        by_claim.manifests = vec![(Platform::parse("linux/amd64").unwrap(), claimed)];
        let err = push_index(&by_claim).await.unwrap_err();
        assert!(
            matches!(
                &err,
                IndexPushError::CheckManifest {
                    source: ManifestProblem::DigestMismatch { actual },
                    ..
                } if *actual == Digest::of(&amd64).to_string()
            ),
            "{err:?}"
        );

        let mut lying = with_manifests(&[&amd64]);
        lying.stored_digest = Some(Digest::of(b"other").to_string());
        let (host, _) = serve(lying).await;
        let err = push_index(&request(&host, &[("linux/amd64", &amd64)]))
            .await
            .unwrap_err();
        assert!(matches!(&err, IndexPushError::VerifyPush { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn basic_credentials_are_sent_when_the_registry_asks_for_them() {
        let amd64 = manifest("amd64", Some(OCI_MANIFEST));
        let mut config = with_manifests(&[&amd64]);
        config.basic = Some("bob:s3cret");
        let (host, fake) = serve(config).await;
        let mut request = request(&host, &[("linux/amd64", &amd64)]);
        let err = push_index(&request).await.unwrap_err();
        assert!(
            matches!(
                &err,
                IndexPushError::FetchManifest {
                    source: RequestError::Denied { status: 401, .. },
                    ..
                }
            ),
            "{err:?}"
        );
        request.credentials = Some(Credentials {
            username: "bob".into(),
            password: "s3cret".into(),
        });
        push_index(&request).await.unwrap();
        assert_eq!(fake.pushed.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn requests_without_manifests_or_with_a_platform_twice_are_refused_before_any_request() {
        let mut request = request("127.0.0.1:9", &[]);
        assert!(matches!(
            push_index(&request).await,
            Err(IndexPushError::ListManifests)
        ));
        request.manifests = vec![
            (Platform::parse("linux/amd64").unwrap(), Digest::of(b"a")),
            (Platform::parse("linux/amd64").unwrap(), Digest::of(b"b")),
        ];
        assert!(matches!(
            push_index(&request).await,
            Err(IndexPushError::ListPlatforms(p)) if p.to_string() == "linux/amd64"
        ));
    }

    #[test]
    fn media_types_come_from_the_manifest_and_indexes_are_refused() {
        assert_eq!(
            manifest_media_type(&manifest("a", Some(DOCKER_MANIFEST))),
            Ok(DOCKER_MANIFEST.to_owned())
        );
        assert_eq!(
            manifest_media_type(&manifest("a", None)),
            Ok(OCI_MANIFEST.to_owned())
        );
        for media_type in [OCI_INDEX, DOCKER_MANIFEST_LIST] {
            assert_eq!(
                manifest_media_type(&manifest("a", Some(media_type))),
                Err(ManifestProblem::IsIndex {
                    media_type: media_type.to_owned()
                })
            );
        }
        assert_eq!(
            manifest_media_type(br#"{"schemaVersion":2,"manifests":[]}"#),
            Err(ManifestProblem::IsIndex {
                media_type: OCI_INDEX.to_owned()
            })
        );
        assert!(matches!(
            manifest_media_type(&manifest(
                "a",
                Some("application/vnd.docker.distribution.manifest.v1+prettyjws")
            )),
            Err(ManifestProblem::UnsupportedMediaType(_))
        ));
        for bad in [&b"not json"[..], b"{}", b"[]"] {
            assert!(
                matches!(
                    manifest_media_type(bad),
                    Err(ManifestProblem::Unreadable(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn an_entry_is_made_only_of_bytes_that_match_their_digest() {
        let bytes = manifest("a", Some(OCI_MANIFEST));
        let platform = Platform::parse("linux/amd64").unwrap();
        assert!(entry_for(&platform, &Digest::of(&bytes), &bytes).is_ok());
        assert_eq!(
            entry_for(&platform, &Digest::of(b"else"), &bytes),
            Err(ManifestProblem::DigestMismatch {
                actual: Digest::of(&bytes).to_string()
            })
        );
    }
}
