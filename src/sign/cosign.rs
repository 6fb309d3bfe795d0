//! cosign's tag-based signature format, as the exact bytes cosign writes (pure).
//!
//! A signature of the image `repo@sha256:<hex>` lives in the same repository at the tag
//! `sha256-<hex>.sig` ([`signature_tag`]): an image manifest whose every layer is one
//! signature. A layer's blob is the simple-signing [`payload`] that was signed (media
//! type [`SIMPLE_SIGNING`]), and its descriptor carries the base64 of the DER signature
//! in the annotation [`SIGNATURE_ANNOTATION`]. Signing again, with another key, appends
//! a layer; signatures already there are kept.
//!
//! What `cosign verify --key` (v2) checks of this, per layer: that the signature verifies
//! over the payload blob's bytes, and that the payload's
//! `critical.image.docker-manifest-digest` is the digest being verified. It does not
//! check `docker-reference`, nor read the config. The config is still written as cosign
//! writes it (go-containerregistry's empty image with the layers appended: their digests
//! as `rootfs.diff_ids`, one zero-time history entry each, no creation time), so that
//! cosign can append its own signatures to a manifest Kiln wrote.
//!
//! The bytes are written from structs, whose fields serialize in declaration order, and
//! sorted maps, compactly, without a trailing newline: the key order and form of Go's
//! `encoding/json`, which cosign uses. Go also escapes `<`, `>` and `&` in strings; none
//! of them can occur in a repository name, a digest or base64.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::oci::digest::Digest;
use crate::oci::media::{DOCKER_MANIFEST, OCI_CONFIG, OCI_MANIFEST};
use crate::sign::key::PublicKey;

/// The media type of a signature layer: a simple-signing payload.
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation that holds the base64 (standard alphabet, padded) of the DER
/// signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The payload's `critical.type`.
pub const SIGNATURE_TYPE: &str = "cosign container image signature";
/// The suffix of the signature tag.
pub const SIGNATURE_TAG_SUFFIX: &str = "sig";
/// The most layers cosign reads from (or appends to) a signature image; it refuses more.
pub const MAX_LAYERS: usize = 1000;
/// Docker's image config media type, the config's type in a Docker-typed signature image
/// (`COSIGN_DOCKER_MEDIA_TYPES=1`).
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker Hub's registry as go-containerregistry names it in a `docker-reference`.
pub const DOCKER_HUB_REFERENCE: &str = "index.docker.io";

/// The time go-containerregistry writes for an unset time: Go's zero `time.Time`.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// The `docker-reference` cosign writes for a repository: `registry/repository`, as
/// go-containerregistry names it, which spells Docker Hub `index.docker.io`. `registry`
/// is `host[:port]`; `repository` is the path (`team/app`; `library/alpine` on Docker Hub).
pub fn docker_reference(registry: &str, repository: &str) -> String {
    let registry = match registry {
        "docker.io" => DOCKER_HUB_REFERENCE,
        other => other,
    };
    format!("{registry}/{repository}")
}

/// The simple-signing payload cosign signs for the image `digest` of the repository
/// `docker_reference` (see [`docker_reference`]), with no optional annotations:
///
/// `{"critical":{"identity":{"docker-reference":"<ref>"},"image":{"docker-manifest-digest":"<digest>"},"type":"cosign container image signature"},"optional":null}`
pub fn payload(docker_reference: &str, digest: &Digest) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Payload<'a> {
        critical: Critical<'a>,
        optional: Option<()>,
    }
    #[derive(serde::Serialize)]
    struct Critical<'a> {
        identity: Identity<'a>,
        image: Image<'a>,
        #[serde(rename = "type")]
        kind: &'static str,
    }
    #[derive(serde::Serialize)]
    struct Identity<'a> {
        #[serde(rename = "docker-reference")]
        docker_reference: &'a str,
    }
    #[derive(serde::Serialize)]
    struct Image<'a> {
        #[serde(rename = "docker-manifest-digest")]
        docker_manifest_digest: &'a Digest,
    }
    let payload = Payload {
        critical: Critical {
            identity: Identity { docker_reference },
            image: Image {
                docker_manifest_digest: digest,
            },
            kind: SIGNATURE_TYPE,
        },
        optional: None,
    };
    // Serializing structs of strings into a Vec cannot fail; should it ever, the empty
    // payload's signature would verify for no image.
    serde_json::to_vec(&payload).unwrap_or_default()
}

/// The tag of the signatures of the image `digest`: `sha256-<hex>.sig`.
pub fn signature_tag(digest: &Digest) -> String {
    format!(
        "{}-{}.{SIGNATURE_TAG_SUFFIX}",
        digest.algorithm(),
        digest.hex()
    )
}

/// Why a manifest at a signature tag cannot be appended to.
#[derive(Debug, thiserror::Error)]
pub enum SignatureImageError {
    /// The bytes are not an image manifest's JSON.
    #[error("the manifest at the signature tag is not an image manifest: {0}")]
    NotJson(#[from] serde_json::Error),
    /// A manifest of another type (an index, an artifact of another kind).
    #[error(
        "the manifest at the signature tag is a {0:?}, not an image manifest: something other \
         than cosign wrote it"
    )]
    NotImageManifest(String),
    /// Another signature would pass the number of layers cosign reads.
    #[error(
        "the signature image would have {0} layers, more than cosign reads ({MAX_LAYERS}): \
         delete the signature tag to start it over"
    )]
    TooManyLayers(usize),
}

/// One layer of a signature image: a payload blob and its descriptor's annotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureLayer {
    /// The layer's media type; [`SIMPLE_SIGNING`] for a signature.
    pub media_type: String,
    /// The payload blob's digest.
    pub digest: Digest,
    /// The payload blob's size.
    pub size: u64,
    /// The descriptor's annotations: [`SIGNATURE_ANNOTATION`], and whatever else the
    /// signer added (cosign's certificate, chain, Rekor bundle or timestamp).
    pub annotations: BTreeMap<String, String>,
}

impl SignatureLayer {
    /// The DER signature in the layer's annotation, if it has one that decodes.
    pub fn signature(&self) -> Option<Vec<u8>> {
        let text = self.annotations.get(SIGNATURE_ANNOTATION)?;
        STANDARD.decode(text).ok()
    }
}

/// A signature image: the manifest at a `.sig` tag, with its layers, written back as the
/// manifest and config bytes cosign would write for them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureImage {
    media_type: &'static str,
    config_media_type: String,
    layers: Vec<SignatureLayer>,
    annotations: BTreeMap<String, String>,
}

impl Default for SignatureImage {
    fn default() -> Self {
        Self::new()
    }
}

/// A manifest's media type, read before the rest.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestKind {
    #[serde(default)]
    media_type: Option<String>,
}

/// A manifest as read: only what a signature image holds. Other descriptor fields
/// (`urls`, `data`, `platform`), which cosign never writes on a signature, are not kept.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestIn {
    config: DescriptorIn,
    #[serde(default)]
    layers: Vec<DescriptorIn>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct DescriptorIn {
    media_type: String,
    digest: Digest,
    size: u64,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// go-containerregistry's `v1.Manifest`, field order as it declares them.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ManifestOut<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: DescriptorOut<'a>,
    layers: Vec<DescriptorOut<'a>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: &'a BTreeMap<String, String>,
}

/// go-containerregistry's `v1.Descriptor`: media type, size, digest, annotations.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct DescriptorOut<'a> {
    media_type: &'a str,
    size: u64,
    digest: &'a Digest,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: &'a BTreeMap<String, String>,
}

/// go-containerregistry's `v1.ConfigFile` of its empty image with layers appended; the
/// fields it leaves out when empty are left out.
#[derive(serde::Serialize)]
struct ConfigOut<'a> {
    architecture: &'static str,
    created: &'static str,
    history: Vec<HistoryOut>,
    os: &'static str,
    rootfs: RootFsOut<'a>,
    config: EmptyObject,
}

#[derive(serde::Serialize)]
struct HistoryOut {
    created: &'static str,
}

#[derive(serde::Serialize)]
struct RootFsOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: Vec<&'a Digest>,
}

/// `{}`: a `v1.Config` with nothing set.
#[derive(serde::Serialize)]
struct EmptyObject {}

impl SignatureImage {
    /// A signature image without signatures, OCI-typed, as cosign starts one when the
    /// signature tag does not exist yet.
    pub fn new() -> Self {
        Self {
            media_type: OCI_MANIFEST,
            config_media_type: OCI_CONFIG.to_owned(),
            layers: Vec::new(),
            annotations: BTreeMap::new(),
        }
    }

    /// Reads the manifest at a signature tag. Its media types (OCI, or Docker's when cosign
    /// ran with `COSIGN_DOCKER_MEDIA_TYPES=1`), layers and annotations are kept; the config
    /// is written anew from the layers.
    pub fn parse(manifest: &[u8]) -> Result<Self, SignatureImageError> {
        // The media type first, so that an index says so rather than lacking a config.
        let kind: ManifestKind = serde_json::from_slice(manifest)?;
        let media_type = match kind.media_type.as_deref() {
            // The image spec leaves `mediaType` optional; go-containerregistry omits it when
            // empty.
            None | Some(OCI_MANIFEST) => OCI_MANIFEST,
            Some(DOCKER_MANIFEST) => DOCKER_MANIFEST,
            Some(other) => return Err(SignatureImageError::NotImageManifest(other.to_owned())),
        };
        let parsed: ManifestIn = serde_json::from_slice(manifest)?;
        if parsed.layers.len() > MAX_LAYERS {
            return Err(SignatureImageError::TooManyLayers(parsed.layers.len()));
        }
        let layers = parsed
            .layers
            .into_iter()
            .map(|layer| SignatureLayer {
                media_type: layer.media_type,
                digest: layer.digest,
                size: layer.size,
                annotations: layer.annotations,
            })
            .collect();
        Ok(Self {
            media_type,
            config_media_type: parsed.config.media_type,
            layers,
            annotations: parsed.annotations,
        })
    }

    /// The manifest's media type, for the `Content-Type` of its push.
    pub fn media_type(&self) -> &'static str {
        self.media_type
    }

    /// The layers, in order.
    pub fn layers(&self) -> &[SignatureLayer] {
        &self.layers
    }

    /// Whether a layer holds a signature of exactly `payload` that `key` verifies: then
    /// signing the same payload with the same key again adds nothing. cosign's own
    /// duplicate check (`NewDupeDetector`) asks the same: same payload blob, same media
    /// type, a signature the key verifies.
    pub fn has_signature_by(&self, payload: &[u8], key: &PublicKey) -> bool {
        let digest = Digest::of(payload);
        self.layers.iter().any(|layer| {
            layer.media_type == SIMPLE_SIGNING
                && layer.digest == digest
                && layer
                    .signature()
                    .is_some_and(|signature| key.verify(payload, &signature))
        })
    }

    /// This image with one more layer: `payload`'s blob, signed by `signature` (DER).
    pub fn with_signature(
        mut self,
        payload: &[u8],
        signature: &[u8],
    ) -> Result<Self, SignatureImageError> {
        if self.layers.len() >= MAX_LAYERS {
            return Err(SignatureImageError::TooManyLayers(self.layers.len() + 1));
        }
        self.layers.push(SignatureLayer {
            media_type: SIMPLE_SIGNING.to_owned(),
            digest: Digest::of(payload),
            size: payload.len() as u64,
            annotations: BTreeMap::from([(
                SIGNATURE_ANNOTATION.to_owned(),
                STANDARD.encode(signature),
            )]),
        });
        Ok(self)
    }

    /// The config blob's bytes: go-containerregistry's empty image config with these
    /// layers appended, as cosign writes it (without `--record-creation-timestamp`).
    pub fn config_bytes(&self) -> Vec<u8> {
        let config = ConfigOut {
            architecture: "",
            created: ZERO_TIME,
            history: self
                .layers
                .iter()
                .map(|_| HistoryOut { created: ZERO_TIME })
                .collect(),
            os: "",
            rootfs: RootFsOut {
                kind: "layers",
                // A signature layer is stored uncompressed: its diff ID is its digest.
                diff_ids: self.layers.iter().map(|layer| &layer.digest).collect(),
            },
            config: EmptyObject {},
        };
        // Serializing structs of strings into a Vec cannot fail; should it ever, the
        // registry refuses the manifest, whose config digest then names no pushed blob.
        serde_json::to_vec(&config).unwrap_or_default()
    }

    /// The manifest's bytes, whose config is [`SignatureImage::config_bytes`].
    pub fn manifest_bytes(&self) -> Vec<u8> {
        let config = self.config_bytes();
        let config_digest = Digest::of(&config);
        let manifest = ManifestOut {
            schema_version: 2,
            media_type: self.media_type,
            config: DescriptorOut {
                media_type: &self.config_media_type,
                size: config.len() as u64,
                digest: &config_digest,
                annotations: &BTreeMap::new(),
            },
            layers: self
                .layers
                .iter()
                .map(|layer| DescriptorOut {
                    media_type: &layer.media_type,
                    size: layer.size,
                    digest: &layer.digest,
                    annotations: &layer.annotations,
                })
                .collect(),
            annotations: &self.annotations,
        };
        // As for the config: an empty manifest would be refused by the registry.
        serde_json::to_vec(&manifest).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::key::SigningKey;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sign");

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap()
    }

    fn d34db33f() -> Digest {
        "sha256:d34db33fd34db33fd34db33fd34db33fd34db33fd34db33fd34db33fd34db33f"
            .parse()
            .unwrap()
    }

    fn key() -> SigningKey {
        SigningKey::from_pem(&fixture("pkcs8.key"), None).unwrap()
    }

    #[test]
    fn the_payload_is_byte_for_byte_cosigns() {
        // `cosign generate registry.example.com/team/app@sha256:d34db33f…` (v2.6.5).
        let reference = docker_reference("registry.example.com", "team/app");
        assert_eq!(
            String::from_utf8(payload(&reference, &d34db33f())).unwrap(),
            fixture("cosign-payload.json")
        );
    }

    #[test]
    fn docker_hub_is_named_as_go_containerregistry_names_it() {
        assert_eq!(
            docker_reference("docker.io", "library/alpine"),
            "index.docker.io/library/alpine"
        );
        assert_eq!(
            docker_reference("localhost:5000", "a/b"),
            "localhost:5000/a/b"
        );
    }

    #[test]
    fn the_signature_tag_is_the_digest_with_a_dash_and_sig() {
        assert_eq!(
            signature_tag(&d34db33f()),
            "sha256-d34db33fd34db33fd34db33fd34db33fd34db33fd34db33fd34db33fd34db33f.sig"
        );
    }

    #[test]
    fn a_new_signature_image_has_pinned_bytes() {
        let payload = fixture("cosign-payload.json");
        let signature = [0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01];
        let image = SignatureImage::new()
            .with_signature(payload.as_bytes(), &signature)
            .unwrap();
        let payload_digest = Digest::of(payload.as_bytes());
        let config = String::from_utf8(image.config_bytes()).unwrap();
        assert_eq!(
            config,
            format!(
                r#"{{"architecture":"","created":"0001-01-01T00:00:00Z","history":[{{"created":"0001-01-01T00:00:00Z"}}],"os":"","rootfs":{{"type":"layers","diff_ids":["{payload_digest}"]}},"config":{{}}}}"#
            )
        );
        let manifest = String::from_utf8(image.manifest_bytes()).unwrap();
        assert_eq!(
            manifest,
            format!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","size":{},"digest":"{}"}},"layers":[{{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","size":{},"digest":"{payload_digest}","annotations":{{"dev.cosignproject.cosign/signature":"MAYCAQECAQE="}}}}]}}"#,
                config.len(),
                Digest::of(config.as_bytes()),
                payload.len(),
            )
        );
        assert_eq!(image.media_type(), OCI_MANIFEST);
    }

    /// The signature of a layer of a manifest fixture.
    fn signature_in(manifest: &str, layer: usize) -> Vec<u8> {
        let image = SignatureImage::parse(fixture(manifest).as_bytes()).unwrap();
        image.layers()[layer].signature().unwrap()
    }

    #[test]
    fn the_signature_image_is_byte_for_byte_cosigns() {
        // What cosign v2.6.5 pushed for `cosign sign --key cosign.key --tlog-upload=false
        // 127.0.0.1:5055/team/app@sha256:7d3b…` (sig1), then the same with
        // cosign-empty-password.key (sig2), read back from the registry.
        let digest: Digest =
            "sha256:7d3bd5809257facedd9d9318017b7054db566b8922d1030d079f365a4f449b46"
                .parse()
                .unwrap();
        let payload = payload(&docker_reference("127.0.0.1:5055", "team/app"), &digest);
        assert_eq!(payload, fixture("cosign-sig-payload.json").into_bytes());

        let first = SignatureImage::new()
            .with_signature(&payload, &signature_in("cosign-sig1-manifest.json", 0))
            .unwrap();
        assert_eq!(
            String::from_utf8(first.manifest_bytes()).unwrap(),
            fixture("cosign-sig1-manifest.json")
        );
        assert_eq!(
            String::from_utf8(first.config_bytes()).unwrap(),
            fixture("cosign-sig1-config.json")
        );

        let second = SignatureImage::parse(fixture("cosign-sig1-manifest.json").as_bytes())
            .unwrap()
            .with_signature(&payload, &signature_in("cosign-sig2-manifest.json", 1))
            .unwrap();
        assert_eq!(
            String::from_utf8(second.manifest_bytes()).unwrap(),
            fixture("cosign-sig2-manifest.json")
        );
        assert_eq!(
            String::from_utf8(second.config_bytes()).unwrap(),
            fixture("cosign-sig2-config.json")
        );

        for public in ["cosign.pub", "cosign-empty-password.pub"] {
            let key = PublicKey::from_pem(&fixture(public)).unwrap();
            assert!(second.has_signature_by(&payload, &key), "{public}");
        }
    }

    #[test]
    fn appending_keeps_other_signatures_and_their_annotations() {
        let other = SignatureImage::new()
            .with_signature(b"other payload", b"other signature")
            .unwrap();
        // As cosign writes a signature with a Rekor bundle: one more layer annotation.
        let existing = String::from_utf8(other.manifest_bytes())
            .unwrap()
            .replace(
                r#""}}]}"#,
                r#"","dev.sigstore.cosign/bundle":"{\"SignedEntryTimestamp\":\"x\"}"}}]}"#,
            )
            .into_bytes();

        let image = SignatureImage::parse(&existing).unwrap();
        // Parsing and writing back gives the same bytes.
        assert_eq!(image.manifest_bytes(), existing);

        let key = key();
        let payload = payload("registry.example.com/team/app", &d34db33f());
        let signature = key.sign(&payload).unwrap();
        let appended = image.with_signature(&payload, &signature).unwrap();
        let layers = appended.layers();
        assert_eq!(layers.len(), 2);
        assert_eq!(
            layers[0].annotations["dev.sigstore.cosign/bundle"],
            "{\"SignedEntryTimestamp\":\"x\"}"
        );
        assert_eq!(layers[0].digest, Digest::of(b"other payload"));
        assert_eq!(layers[1].digest, Digest::of(&payload));

        let again = SignatureImage::parse(&appended.manifest_bytes()).unwrap();
        assert_eq!(again, appended);
        let config: serde_json::Value = serde_json::from_slice(&again.config_bytes()).unwrap();
        assert_eq!(
            config["rootfs"]["diff_ids"],
            serde_json::json!([
                Digest::of(b"other payload").to_string(),
                Digest::of(&payload).to_string()
            ])
        );
        assert_eq!(config["history"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn a_signature_verifies_only_for_its_key_and_payload() {
        let key = key();
        let payload = payload("registry.example.com/team/app", &d34db33f());
        let image = SignatureImage::new()
            .with_signature(&payload, &key.sign(&payload).unwrap())
            .unwrap();
        let public = key.public_key();
        assert!(image.has_signature_by(&payload, &public));

        // Another image's payload.
        let other_digest = Digest::of(b"another image");
        let other = super::payload("registry.example.com/team/app", &other_digest);
        assert!(!image.has_signature_by(&other, &public));
        // Another key.
        let cosign = SigningKey::from_pem(&fixture("sec1.key"), None).unwrap();
        assert!(!image.has_signature_by(&payload, &cosign.public_key()));
        // A tampered signature.
        let mut tampered = image.clone();
        tampered.layers[0]
            .annotations
            .insert(SIGNATURE_ANNOTATION.to_owned(), "MAYCAQECAQE=".to_owned());
        assert!(!tampered.has_signature_by(&payload, &public));
        // A tampered payload: its digest no longer names the layer.
        let mut edited = payload.clone();
        edited[10] ^= 1;
        assert!(!image.has_signature_by(&edited, &public));
    }

    #[test]
    fn docker_typed_manifests_stay_docker_typed() {
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"{DOCKER_CONFIG}","size":2,"digest":"{}"}},"layers":[]}}"#,
            Digest::of(b"{}")
        );
        let image = SignatureImage::parse(manifest.as_bytes())
            .unwrap()
            .with_signature(b"p", b"s")
            .unwrap();
        assert_eq!(image.media_type(), DOCKER_MANIFEST);
        let written: serde_json::Value = serde_json::from_slice(&image.manifest_bytes()).unwrap();
        assert_eq!(written["mediaType"], DOCKER_MANIFEST);
        assert_eq!(written["config"]["mediaType"], DOCKER_CONFIG);
    }

    #[test]
    fn other_manifests_and_full_images_are_refused() {
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[]}}"#,
            crate::oci::media::OCI_INDEX
        );
        assert!(matches!(
            SignatureImage::parse(index.as_bytes()),
            Err(SignatureImageError::NotImageManifest(_))
        ));
        assert!(matches!(
            SignatureImage::parse(b"not json"),
            Err(SignatureImageError::NotJson(_))
        ));
        let mut image = SignatureImage::new();
        for i in 0..MAX_LAYERS {
            image = image.with_signature(&i.to_be_bytes(), b"s").unwrap();
        }
        assert!(matches!(
            image.clone().with_signature(b"one more", b"s"),
            Err(SignatureImageError::TooManyLayers(1001))
        ));
        assert_eq!(
            SignatureImage::parse(&image.manifest_bytes()).unwrap(),
            image
        );
    }
}
