//! Media types Kiln knows by name, and the size limit of a manifest (pure).
//!
//! Any other media type is accepted where the spec allows it (artifacts bring their own)
//! and recorded as given.

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker schema 2 manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// BuildKit's cache configuration blob.
pub const BUILDKIT_CACHE_CONFIG: &str = "application/vnd.buildkit.cacheconfig.v0";

/// The manifest media types a client of a registry asks for, in order of preference.
pub const MANIFEST_MEDIA_TYPES: [&str; 4] = [
    OCI_INDEX,
    OCI_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST,
];

/// Layer types whose content is not pushed: the image spec's non-distributable layers and
/// Docker's foreign layer.
pub const NON_DISTRIBUTABLE_LAYERS: [&str; 4] = [
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

/// The largest manifest accepted, pushed or fetched, in bytes: what the spec asks
/// registries to accept at least.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// Whether `media_type` is one of [`MANIFEST_MEDIA_TYPES`].
pub fn is_manifest_type(media_type: &str) -> bool {
    MANIFEST_MEDIA_TYPES.contains(&media_type)
}
