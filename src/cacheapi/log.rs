//! The OCI artifact that keeps a build attempt's log in the cache, and the annotations
//! header that travels with it over the admin API (pure).
//!
//! # The artifact
//! One OCI image manifest per stored log, tagged in a logs repository (a repository whose
//! last component is [`LOGS_REPOSITORY`], which the cache's GC never evicts): artifact
//! type [`LOG_ARTIFACT_TYPE`], the image spec's empty config, and the log as its one
//! [`LOG_MEDIA_TYPE`] layer. The log is stored uncompressed, so the layer's digest is the
//! digest of the log's bytes whatever compressor a client or a later version might use.
//! What the controller knows about the attempt (its Build, pod, result, times) travels as
//! the manifest's annotations, under the well-known keys below.
//!
//! # Why these bytes
//! The manifest is written from structs (fields serialize in declaration order) and a
//! sorted map, compactly and without a trailing newline ([`crate::oci::artifact`], as the
//! build context's): the same log with the same annotations always gives the
//! same manifest digest, so storing it twice is one manifest.
//!
//! # The annotations header
//! [`ANNOTATIONS_HEADER`] carries the annotations as a compact JSON object of strings, on
//! the `PUT` that stores a log and on the `GET` that reads it back. Every character outside
//! printable ASCII is written as a JSON `\u` escape, so any annotation value fits in an
//! HTTP header. The limits ([`MAX_ANNOTATIONS`], [`MAX_ANNOTATION_KEY_LEN`],
//! [`MAX_ANNOTATION_VALUE_LEN`]) keep the header well under what HTTP servers accept.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::oci::artifact::single_blob_manifest;
use crate::oci::digest::Digest;

pub use crate::store::gc::{LOGS_REPOSITORY, is_logs_repository};

/// The `artifactType` of a stored build log's manifest.
pub const LOG_ARTIFACT_TYPE: &str = "application/vnd.kiln.build-log.v1";

/// The media type of the log's layer: the log's bytes, uncompressed.
pub const LOG_MEDIA_TYPE: &str = "text/plain";

/// The request and response header that carries the manifest's annotations, as a compact
/// JSON object of string to string.
pub const ANNOTATIONS_HEADER: &str = "kiln-annotations";

/// The largest log the cache service stores, in bytes. The controller keeps the tail of a
/// longer log, by default 16 MiB of it.
pub const MAX_LOG_BYTES: u64 = 64 << 20;

/// The most annotations a stored log may carry.
pub const MAX_ANNOTATIONS: usize = 32;

/// The longest annotation key, in bytes.
pub const MAX_ANNOTATION_KEY_LEN: usize = 128;

/// The longest annotation value, in bytes (UTF-8).
pub const MAX_ANNOTATION_VALUE_LEN: usize = 1024;

/// Annotation: the Build's namespace.
pub const ANNOTATION_NAMESPACE: &str = "dev.kiln.build.namespace";
/// Annotation: the Build's name.
pub const ANNOTATION_NAME: &str = "dev.kiln.build.name";
/// Annotation: the Build's UID.
pub const ANNOTATION_UID: &str = "dev.kiln.build.uid";
/// Annotation: the attempt whose log this is.
pub const ANNOTATION_ATTEMPT: &str = "dev.kiln.build.attempt";
/// Annotation: the pod that ran the attempt.
pub const ANNOTATION_POD: &str = "dev.kiln.build.pod";
/// Annotation: how the attempt ended.
pub const ANNOTATION_RESULT: &str = "dev.kiln.build.result";
/// Annotation: when the attempt started.
pub const ANNOTATION_STARTED: &str = "dev.kiln.build.started";
/// Annotation: when the attempt ended.
pub const ANNOTATION_ENDED: &str = "dev.kiln.build.ended";
/// Annotation: how many bytes were cut from the head of the log to keep its tail; absent
/// when nothing was cut.
pub const ANNOTATION_TRUNCATED: &str = "dev.kiln.log.truncated-bytes";

/// Why an annotations header is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// The header is not a JSON object of string to string.
    #[error("the {ANNOTATIONS_HEADER} header is not a JSON object of strings: {reason}")]
    NotAnObject {
        /// The JSON error.
        reason: String,
    },
    /// More than [`MAX_ANNOTATIONS`] annotations.
    #[error("{count} annotations, at most {MAX_ANNOTATIONS} are allowed")]
    TooMany {
        /// How many there were.
        count: usize,
    },
    /// A key is empty, too long, or has a character outside the annotation key grammar.
    #[error(
        "annotation key {key:?} is invalid: 1 to {MAX_ANNOTATION_KEY_LEN} ASCII letters, digits, '.', '-', '_' or '/'"
    )]
    BadKey {
        /// The key.
        key: String,
    },
    /// A value is longer than [`MAX_ANNOTATION_VALUE_LEN`] bytes.
    #[error(
        "the value of annotation {key:?} is {len} bytes, at most {MAX_ANNOTATION_VALUE_LEN} are allowed"
    )]
    ValueTooLong {
        /// The key whose value it is.
        key: String,
        /// Its length in bytes.
        len: usize,
    },
}

/// A stored log as read back: the manifest's annotations and the log's bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredLogBody {
    /// The manifest's annotations.
    pub annotations: BTreeMap<String, String>,
    /// The log.
    pub bytes: bytes::Bytes,
}

/// Whether `key` is an annotation key a stored log may carry: 1 to
/// [`MAX_ANNOTATION_KEY_LEN`] ASCII letters, digits, `.`, `-`, `_` or `/` (reverse-domain
/// keys such as `dev.kiln.build.name` or `org.opencontainers.image.source`).
pub fn is_annotation_key(key: &str) -> bool {
    (1..=MAX_ANNOTATION_KEY_LEN).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'/'))
}

/// Checks annotations against the limits: at most [`MAX_ANNOTATIONS`], valid keys
/// ([`is_annotation_key`]), values of at most [`MAX_ANNOTATION_VALUE_LEN`] bytes.
pub fn check_annotations(annotations: &BTreeMap<String, String>) -> Result<(), LogError> {
    if annotations.len() > MAX_ANNOTATIONS {
        return Err(LogError::TooMany {
            count: annotations.len(),
        });
    }
    for (key, value) in annotations {
        if !is_annotation_key(key) {
            return Err(LogError::BadKey { key: key.clone() });
        }
        if value.len() > MAX_ANNOTATION_VALUE_LEN {
            return Err(LogError::ValueTooLong {
                key: key.clone(),
                len: value.len(),
            });
        }
    }
    Ok(())
}

/// Reads an [`ANNOTATIONS_HEADER`] value: a JSON object of string to string within the
/// limits ([`check_annotations`]). A key given twice keeps its last value, as JSON readers
/// commonly do.
pub fn parse_annotations(header: &str) -> Result<BTreeMap<String, String>, LogError> {
    let annotations: BTreeMap<String, String> =
        serde_json::from_str(header).map_err(|err| LogError::NotAnObject {
            reason: err.to_string(),
        })?;
    check_annotations(&annotations)?;
    Ok(annotations)
}

/// The [`ANNOTATIONS_HEADER`] value of `annotations`: compact JSON, keys sorted, every
/// character outside printable ASCII as a `\u` escape (so the value is always a valid
/// header; [`parse_annotations`] reads it back to the same map).
pub fn annotations_header(annotations: &BTreeMap<String, String>) -> String {
    // A map of strings always serializes; should it ever not, "{}" still parses.
    let json = serde_json::to_string(annotations).unwrap_or_else(|_| "{}".to_owned());
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if (' '..='~').contains(&c) {
            out.push(c);
        } else {
            // Outside printable ASCII a character can only be inside a JSON string, where
            // its escape means the same. Characters beyond the BMP become surrogate pairs.
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        }
    }
    out
}

/// The manifest of the log whose bytes have digest `blob` and `size`: `schemaVersion` 2,
/// media type [`OCI_MANIFEST`](crate::oci::media::OCI_MANIFEST), artifact type [`LOG_ARTIFACT_TYPE`], the empty config, the
/// log as its one [`LOG_MEDIA_TYPE`] layer, and `annotations` (left out when empty), as
/// compact JSON without a trailing newline. The same input always gives the same bytes.
pub fn log_manifest(blob: &Digest, size: u64, annotations: &BTreeMap<String, String>) -> Vec<u8> {
    single_blob_manifest(LOG_ARTIFACT_TYPE, LOG_MEDIA_TYPE, blob, size, annotations)
}

/// The parts of a stored manifest that say whether it is a log artifact and where its log
/// is.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredManifest {
    #[serde(default)]
    artifact_type: Option<String>,
    #[serde(default)]
    layers: Vec<StoredDescriptor>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredDescriptor {
    #[serde(default)]
    media_type: String,
    digest: Digest,
    size: u64,
}

/// Why a stored manifest is not a build log artifact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotALog {
    /// Its bytes are not an image manifest.
    #[error("the manifest cannot be read: {reason}")]
    Unreadable {
        /// The JSON error.
        reason: String,
    },
    /// Its artifact type is another one (or none).
    #[error(
        "the manifest is not a Kiln build log (artifactType {found:?}, not {LOG_ARTIFACT_TYPE:?})"
    )]
    OtherArtifactType {
        /// The artifact type it has, if any.
        found: Option<String>,
    },
    /// It is a log artifact but not with exactly one [`LOG_MEDIA_TYPE`] layer.
    #[error("the build log manifest does not have exactly one {LOG_MEDIA_TYPE} layer")]
    BadLayers,
}

/// The layer of a stored log artifact: its digest and size. Refuses a manifest of another
/// artifact type, or a log artifact that does not have exactly one [`LOG_MEDIA_TYPE`]
/// layer.
pub fn log_layer(manifest: &[u8]) -> Result<(Digest, u64), NotALog> {
    let parsed: StoredManifest =
        serde_json::from_slice(manifest).map_err(|err| NotALog::Unreadable {
            reason: err.to_string(),
        })?;
    if parsed.artifact_type.as_deref() != Some(LOG_ARTIFACT_TYPE) {
        return Err(NotALog::OtherArtifactType {
            found: parsed.artifact_type,
        });
    }
    match parsed.layers.as_slice() {
        [layer] if layer.media_type == LOG_MEDIA_TYPE => Ok((layer.digest, layer.size)),
        _ => Err(NotALog::BadLayers),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::artifact::{OCI_EMPTY, empty_config_digest};
    use crate::oci::media::{OCI_MANIFEST, is_manifest_type};

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_bytes_are_compact_in_a_fixed_key_order() {
        let log = Digest::of(b"log");
        let want = format!(
            concat!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","#,
                r#""artifactType":"application/vnd.kiln.build-log.v1","#,
                r#""config":{{"mediaType":"application/vnd.oci.empty.v1+json","#,
                r#""digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2}},"#,
                r#""layers":[{{"mediaType":"text/plain","digest":"{}","size":3}}],"#,
                r#""annotations":{{"dev.kiln.build.attempt":"1","dev.kiln.build.name":"app"}}}}"#
            ),
            log
        );
        // Inserted out of order: the bytes list keys sorted.
        let annotations = map(&[(ANNOTATION_NAME, "app"), (ANNOTATION_ATTEMPT, "1")]);
        assert_eq!(
            String::from_utf8(log_manifest(&log, 3, &annotations)).unwrap(),
            want
        );
        let bare = String::from_utf8(log_manifest(&log, 3, &BTreeMap::new())).unwrap();
        assert!(!bare.contains("annotations"), "{bare}");
        assert!(bare.ends_with(r#""size":3}]}"#), "{bare}");
    }

    #[test]
    fn the_same_input_gives_the_same_bytes_and_a_pinned_digest() {
        let log = Digest::of(b"log");
        let annotations = map(&[(ANNOTATION_NAME, "app"), (ANNOTATION_ATTEMPT, "1")]);
        let first = log_manifest(&log, 3, &annotations);
        for _ in 0..3 {
            assert_eq!(log_manifest(&log, 3, &annotations), first);
        }
        assert!(!first.ends_with(b"\n"));
        // Pinned: a change here gives every stored log a new manifest digest, so the same
        // log stored by different Kiln versions would no longer be one manifest.
        assert_eq!(
            Digest::of(&first).to_string(),
            "sha256:ef8a2087db16dd84f46fe236654e43c16502012fb22d4896082c50c50554421a"
        );
        assert_ne!(log_manifest(&log, 4, &annotations), first);
        assert_ne!(log_manifest(&Digest::of(b"other"), 3, &annotations), first);
        assert_ne!(log_manifest(&log, 3, &BTreeMap::new()), first);
    }

    #[test]
    fn the_bytes_parse_as_an_image_manifest_whose_layer_is_the_log() {
        let log = Digest::of(b"log");
        let annotations = map(&[(ANNOTATION_POD, "app-1-abcde")]);
        let bytes = log_manifest(&log, 3, &annotations);
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": LOG_ARTIFACT_TYPE,
                "config": {
                    "mediaType": OCI_EMPTY,
                    "digest": empty_config_digest().to_string(),
                    "size": 2
                },
                "layers": [{"mediaType": LOG_MEDIA_TYPE, "digest": log.to_string(), "size": 3}],
                "annotations": {"dev.kiln.build.pod": "app-1-abcde"}
            })
        );
        assert!(is_manifest_type(value["mediaType"].as_str().unwrap()));
        assert_eq!(log_layer(&bytes), Ok((log, 3)));
    }

    #[test]
    fn only_a_log_artifact_with_one_text_layer_is_a_log() {
        let context = crate::context::artifact::context_manifest(&Digest::of(b"tar"), 10);
        assert_eq!(
            log_layer(&context),
            Err(NotALog::OtherArtifactType {
                found: Some(crate::context::artifact::CONTEXT_ARTIFACT_TYPE.to_owned())
            })
        );
        let image = crate::store::fixtures::image_manifest(
            (Digest::of(b"config"), 6),
            &[(Digest::of(b"layer"), 5)],
        );
        assert_eq!(
            log_layer(&image),
            Err(NotALog::OtherArtifactType { found: None })
        );
        let two = serde_json::json!({
            "schemaVersion": 2,
            "artifactType": LOG_ARTIFACT_TYPE,
            "layers": [
                {"mediaType": LOG_MEDIA_TYPE, "digest": Digest::of(b"a").to_string(), "size": 1},
                {"mediaType": LOG_MEDIA_TYPE, "digest": Digest::of(b"b").to_string(), "size": 1}
            ]
        });
        assert_eq!(
            log_layer(two.to_string().as_bytes()),
            Err(NotALog::BadLayers)
        );
        assert!(matches!(
            log_layer(b"not json"),
            Err(NotALog::Unreadable { .. })
        ));
    }

    #[test]
    fn annotations_round_trip_through_a_header_safe_value() {
        let annotations = map(&[
            (ANNOTATION_RESULT, "Failed: exit 1 — ünïcödé 🦀"),
            (ANNOTATION_NAME, "app"),
            (
                "org.opencontainers.image/x_y-z",
                "quote \" tab \t del \u{7f}",
            ),
        ]);
        let header = annotations_header(&annotations);
        assert!(
            header.bytes().all(|b| (b' '..=b'~').contains(&b)),
            "{header}"
        );
        assert!(reqwest::header::HeaderValue::from_str(&header).is_ok());
        assert!(header.contains(r"\ud83e\udd80"), "{header}");
        assert_eq!(parse_annotations(&header), Ok(annotations));
        assert_eq!(annotations_header(&BTreeMap::new()), "{}");
        assert_eq!(parse_annotations("{}"), Ok(BTreeMap::new()));
        assert_eq!(
            annotations_header(&map(&[("b", "2"), ("a", "1")])),
            r#"{"a":"1","b":"2"}"#
        );
    }

    #[test]
    fn annotations_are_refused_by_limit() {
        for bad in ["", "[]", r#"{"a":1}"#, r#"{"a":null}"#, "{", r#""a""#] {
            assert!(
                matches!(parse_annotations(bad), Err(LogError::NotAnObject { .. })),
                "{bad}"
            );
        }
        let many: BTreeMap<String, String> = (0..=MAX_ANNOTATIONS)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        assert_eq!(
            parse_annotations(&annotations_header(&many)),
            Err(LogError::TooMany { count: 33 })
        );
        let most: BTreeMap<String, String> = (0..MAX_ANNOTATIONS)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        assert_eq!(parse_annotations(&annotations_header(&most)), Ok(most));
        let long_key = "k".repeat(MAX_ANNOTATION_KEY_LEN + 1);
        for key in ["", "a b", "a:b", "é", "a=b", long_key.as_str()] {
            assert_eq!(
                check_annotations(&map(&[(key, "v")])),
                Err(LogError::BadKey {
                    key: key.to_owned()
                }),
                "{key:?}"
            );
        }
        assert!(check_annotations(&map(&[(&"k".repeat(MAX_ANNOTATION_KEY_LEN), "v")])).is_ok());
        let long_value = "é".repeat(MAX_ANNOTATION_VALUE_LEN / 2 + 1);
        assert_eq!(
            check_annotations(&map(&[("k", &long_value)])),
            Err(LogError::ValueTooLong {
                key: "k".into(),
                len: MAX_ANNOTATION_VALUE_LEN + 2
            })
        );
        assert!(check_annotations(&map(&[("k", &"v".repeat(MAX_ANNOTATION_VALUE_LEN))])).is_ok());
    }

    #[test]
    fn the_well_known_keys_are_valid_keys() {
        for key in [
            ANNOTATION_NAMESPACE,
            ANNOTATION_NAME,
            ANNOTATION_UID,
            ANNOTATION_ATTEMPT,
            ANNOTATION_POD,
            ANNOTATION_RESULT,
            ANNOTATION_STARTED,
            ANNOTATION_ENDED,
            ANNOTATION_TRUNCATED,
        ] {
            assert!(is_annotation_key(key), "{key}");
        }
    }
}
