//! Kiln: a Kubernetes operator that runs container image builds as pods, keeps a verified
//! build cache behind an OCI registry API, and garbage-collects what builds leave behind.
//!
//! The crate is one library and one binary (`kiln`). Module boundaries follow the
//! architecture in the README:
//!
//! | module | holds | I/O |
//! | --- | --- | --- |
//! | [`crd`] | the `Build` API types, conditions and their reasons | pure |
//! | [`controller`] | `decide` (pure) and `apply` (API writes), the pod builder, sweepers | both, kept apart |
//! | [`store`] | the content-addressed cache store on a directory (the PV) | filesystem |
//! | [`registry`] | the OCI Distribution API and the admin API over the store, and the pull-through mirror beneath it | HTTP |
//! | [`cacheapi`] | the cache service's wire contract: tokens, admin API types and client | pure + HTTP client |
//! | [`context`] | build contexts: `.dockerignore` matching and a reproducible tar of a directory | pure + filesystem |
//! | [`publish`] | what the short pods with push credentials push: `kiln index push` (the index of per-platform images and their attestations) and `kiln sign` (the image's signature) | HTTP |
//! | [`oci`] | digests, the name grammar, media types: the vocabulary below everything | pure |
//! | [`units`] | human sizes and durations | pure |
//! | [`table`] | aligned text tables | pure |
//! | [`app`] | the command line: one module per command, and the dispatcher | — |
//! | [`report`] | an error with its chain of causes, for people | pure |
//! | [`sign`] | cosign-compatible signatures: signing keys (PKCS#8, SEC1, cosign's encrypted key) and the signature image's bytes | pure |
//! | [`retry`] | sending a registry request again after a transient failure | async (sleeps) |
//! | [`plugin`] | `kubectl kiln`: list, status, logs, cancel, rerun, cache du | API + HTTP |
//! | [`telemetry`] | logging setup | — |
//! | [`metric_family`] | Prometheus metric families written in a stable order | pure |
//! | [`metrics`] | controller metrics, health and readiness, and their HTTP server | HTTP |
//! | [`tls`] | installs ring as rustls' crypto provider | process state |
//! | [`throttle`] | the API client's own rate limit: a token bucket and its tower layer | pure + async |
//!
//! Boundaries: `store` imports neither `kube` nor `axum`; `registry` never imports
//! `controller`.

pub mod app;
pub mod cacheapi;
pub mod context;
pub mod controller;
pub mod crd;
pub mod metric_family;
pub mod metrics;
pub mod oci;
pub mod plugin;
pub mod publish;
pub mod registry;
pub mod report;
pub mod retry;
pub mod sign;
pub mod store;
pub mod table;
pub mod telemetry;
pub mod throttle;
pub mod tls;
pub mod units;
