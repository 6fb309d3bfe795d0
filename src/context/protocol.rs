//! How `kubectl kiln build --local` hands a packed context to the build pod (pure: names,
//! paths and message types shared by both ends).
//!
//! # Why through the pod, and why in chunks
//! The tar goes to the build pod's `context` init container (the Kiln image, running
//! `kiln context receive`), reached through the API server's `pods/proxy` subresource in
//! the Build's own namespace. The user therefore needs nothing outside that namespace: no
//! port-forward into Kiln's namespace, no admin token, no token Secret to read. The
//! receiver stores the tar in the cache with the attempt's namespace-scoped cache token and
//! unpacks it as the build context.
//!
//! The API server proxies each request to the pod's IP directly (not through the kubelet),
//! and a client of the API server sends request bodies whole, so the tar travels as a
//! sequence of [`CHUNK_BYTES`] chunks, each a `POST` to [`CHUNK_PATH`] carrying the offset
//! it starts at. A chunk sent twice (a retry after a lost answer) is recognised by its
//! offset and not appended again; a chunk that would leave a gap is refused with the
//! offset the receiver expects. [`DONE_PATH`] ends the upload: the receiver checks the size
//! and digest the Build declared, and only then stores and unpacks the context.
//!
//! # RBAC
//! `GET` through `pods/proxy` is the verb `get`, `POST` is `create`: the uploader needs
//! `get` and `create` on `pods/proxy` in the Build's namespace, besides creating the Build
//! and reading its pods.
//!
//! # Nothing sent twice
//! The receiver first looks for the declared digest in the namespace's contexts repository
//! ([`CONTEXTS_REPOSITORY`]). If an earlier upload put it there, it takes it from the cache
//! and reports [`UploadState::Done`] without ever waiting: the uploader sends no byte.

use serde::{Deserialize, Serialize};

use crate::oci::digest::Digest;

/// The port the receiver listens on in the pod.
pub const RECEIVER_PORT: u16 = 8080;

/// The name of the receiver's container port.
pub const RECEIVER_PORT_NAME: &str = "context";

/// `GET`: the receiver's [`UploadStatus`].
pub const STATUS_PATH: &str = "/context";

/// `POST ?offset=N` with up to [`CHUNK_BYTES`] bytes: the next piece of the tar. Answers
/// [`UploadStatus`] (`200`), or `409` with it when the offset is not the one expected.
pub const CHUNK_PATH: &str = "/context/chunk";

/// `POST` with no body: the whole tar was sent. Answers [`UploadStatus`] once the context
/// is stored and unpacked (`200`), or `400` with [`UploadError`] when the bytes are not the
/// declared ones.
pub const DONE_PATH: &str = "/context/done";

/// The size of the chunks the uploader sends (the receiver accepts up to twice this).
pub const CHUNK_BYTES: usize = 8 * 1024 * 1024;

/// The largest chunk the receiver accepts.
pub const MAX_CHUNK_BYTES: usize = 2 * CHUNK_BYTES;

/// The last path component of a namespace's contexts repository on the cache
/// (`[<path>/]<namespace>/kiln_contexts`). A Build's name can never be it: `_` is not
/// allowed in Kubernetes names, so it never collides with a Build's own cache repository
/// (`<namespace>/<build>`).
pub const CONTEXTS_REPOSITORY: &str = "kiln_contexts";

/// The tag that holds a Build's context in the contexts repository: `build-<uid>`. One tag
/// per Build, so deleting a Build deletes exactly its tag, and the cache's garbage collector
/// removes the content once no Build's tag holds it.
pub fn context_tag(build_uid: &str) -> String {
    format!("build-{build_uid}")
}

/// Where the receiver stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum UploadState {
    /// Looking for the context in the cache; not accepting chunks yet.
    Checking,
    /// Waiting for chunks (or for another pod of the attempt to store the context).
    Waiting,
    /// The whole tar arrived and is being checked, stored and unpacked.
    Storing,
    /// The context is in the cache and unpacked; nothing more is needed.
    Done,
}

/// The receiver's answer to every request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadStatus {
    /// Where it stands.
    pub state: UploadState,
    /// Bytes received so far: the offset of the next chunk.
    pub received: u64,
    /// The size the Build declared.
    pub size: u64,
    /// The digest the Build declared.
    pub digest: Digest,
    /// Whether the context came from the cache without an upload (`Done` only).
    #[serde(default)]
    pub from_cache: bool,
}

/// The receiver's answer when it refuses a request: what was wrong, for the user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadError {
    /// One sentence for the user.
    pub message: String,
    /// The receiver's state, when it has one to report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<UploadStatus>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_context_tag_is_a_valid_oci_tag() {
        let tag = context_tag("6f1c2d3e-0000-4000-8000-123456789abc");
        assert_eq!(tag, "build-6f1c2d3e-0000-4000-8000-123456789abc");
        assert!(tag.parse::<crate::oci::name::Tag>().is_ok());
    }

    #[test]
    fn the_status_is_camel_case_json() {
        let status = UploadStatus {
            state: UploadState::Waiting,
            received: 3,
            size: 10,
            digest: Digest::of(b"tar"),
            from_cache: false,
        };
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["state"], "waiting");
        assert_eq!(json["fromCache"], false);
        let back: UploadStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back, status);
    }
}
