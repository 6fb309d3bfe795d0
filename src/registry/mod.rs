//! The cache service: the OCI Distribution API and the admin API over the cache store, on
//! one listener with `/healthz`, `/readyz`, `/metrics` and the token endpoint.
//!
//! | module | holds | I/O |
//! | --- | --- | --- |
//! | [`path`] | request paths into a repository name and a route; upload ids | pure |
//! | [`error`] | the spec's error codes and their one mapping to HTTP | pure |
//! | [`headers`] | header names; Range, Content-Range, Link, Accept values | pure |
//! | [`auth`] | credentials, the Docker token flow, the authorization rules | pure + `/token` handler |
//! | [`route`] | `/v2/` dispatch: path, `ns=` routing, access, auth, handler | — |
//! | [`request`] | what a handler takes and returns; the auth check | — |
//! | [`blobs`], [`uploads`], [`manifests`], [`tags`], [`referrers`] | the API's routes | store, mirror |
//! | [`admin`] | `/admin/v1/`: du, prune, verify, leases, deletes, logs | store |
//! | [`bases`] | base images builds resolved through the mirror; `/admin/v1/` over them and over mirror tags | store, mirror |
//! | [`ops`] | `/healthz`, `/readyz`, `/metrics`, request metrics | — |
//! | [`body`] | request bodies to the store, manifests under a cap, byte counting | sockets |
//! | [`metrics`] | the Prometheus metrics | — |
//! | [`mirror`] | the pull-through cache for upstream registries | HTTP + store |
//! | [`service`] | the shared state | — |
//! | [`router`] | the one router over every endpoint, and its layers | — |
//! | [`server`] | accept loop, slow-client limits, background GC, graceful shutdown | sockets |
//!
//! Tests and the CLI share one entry point: build a [`Registry`] over a store, then
//! [`serve`] it on a listener until a shutdown future resolves, or call
//! [`Registry::router`] in-process.

pub mod admin;
pub mod auth;
pub mod bases;
pub mod blobs;
pub mod body;
pub mod error;
pub mod headers;
pub mod manifests;
pub mod metrics;
pub mod mirror;
pub mod ops;
pub mod path;
pub mod referrers;
pub mod request;
pub mod route;
pub mod router;
pub mod server;
pub mod service;
pub mod tags;
pub mod uploads;

#[cfg(test)]
mod conformance;
#[cfg(test)]
mod tenancy;
#[cfg(test)]
pub(crate) mod testing;

pub use server::{CacheServeError, GcSchedule, ServeOptions, serve};
pub use service::{Limits, Registry};
