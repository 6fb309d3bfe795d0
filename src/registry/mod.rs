//! The OCI Distribution API and the admin API over the cache store.
pub mod cli;
