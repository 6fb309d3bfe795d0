//! The pull-through cache for upstream registries.
//!
//! | module | holds | I/O |
//! | --- | --- | --- |
//! | [`credentials`] | upstream credentials from a Docker `config.json` | pure (+ file read) |
//! | [`upstream`] | fetching manifests and blobs from one upstream, its auth, error classes | HTTP |
pub mod credentials;
pub mod upstream;
