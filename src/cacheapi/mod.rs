//! The cache service's wire contract, shared by the registry (server) and the controller
//! and CLI (clients): tokens, the admin API's JSON types and its client.
//!
//! | module | holds | I/O |
//! | --- | --- | --- |
//! | [`token`] | cache token claims, minting and verification | pure (+ key file) |
//! | [`admin`] | the admin API's routes and JSON bodies, documented per endpoint | pure |
//! | [`client`] | the admin API client | HTTP |
//! | [`log`] | the OCI artifact of a stored build log and its annotations header | pure |
//! | [`convert`] | the store's reports as the admin API's | pure |
//! | [`render`] | the one text form of the du, prune and verify reports | pure |
//!
//! Nothing here depends on axum: the controller mints tokens and calls the admin API without
//! linking the server side's types into its logic.

pub mod admin;
pub mod client;
pub mod convert;
pub mod log;
pub mod render;
pub mod token;

use serde::{Deserialize, Serialize};

/// The error body of every registry and admin API response that is not a success:
/// `{"errors":[{"code":..,"message":..,"detail":..}]}` (OCI Distribution Spec, "Error codes").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// One or more errors; Kiln always sends exactly one.
    pub errors: Vec<ErrorInfo>,
}

/// One error of an [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// The spec's error code, e.g. `BLOB_UNKNOWN`.
    pub code: String,
    /// A human-readable message (some registries omit it).
    #[serde(default)]
    pub message: String,
    /// Free-form detail: a string or an object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}
