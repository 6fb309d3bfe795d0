//! The OCI Distribution API and the admin API over the cache store.
//!
//! | module | holds | I/O |
//! | --- | --- | --- |
//! | [`name`] | repository names, tags, references, request-path routing | pure |
//! | [`error`] | the spec's error codes and their one mapping to HTTP | pure |
//! | [`auth`] | credentials, the Docker token flow, the authorization rules | pure + `/token` handler |
//! | [`cli`] | `kiln cache serve` flags | — |
pub mod auth;
pub mod cli;
pub mod error;
pub mod name;
