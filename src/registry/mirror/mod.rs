//! The pull-through cache for upstream registries: `--mirror NAME=URL` makes the
//! repositories `NAME/<path>` mirror `<URL>/<path>` (I/O: upstreams over HTTP, the store).
//!
//! | module | holds | I/O |
//! | --- | --- | --- |
//! | [`freshness`] | when to answer from the cache, revalidate, fetch or serve stale | pure |
//! | [`manifests`] | manifests: TTL, HEAD revalidation, stale-if-error, one fetch per tag | HTTP + store |
//! | [`blobs`] | blobs: one upstream fetch per digest, streamed to every waiting client | HTTP + store |
//! | [`credentials`] | upstream credentials from a Docker `config.json` | pure (+ file read) |
//! | [`upstream`] | fetching manifests and blobs from one upstream, its auth, error classes | HTTP |
//!
//! # Routing
//! A repository whose first component is a mirror's name is a mirror repository. A
//! containerd-style request (`/v2/library/alpine/manifests/3?ns=docker.io`, what BuildKit
//! sends to a host listed in its `mirrors`) goes to the mirror named after the `ns` host,
//! or whose upstream is that host ([`Mirror::for_namespace`]), so that a `mirrors` entry
//! for `docker.io` works without rewriting names.
//!
//! Mirror repositories are read-only for builds (see [`crate::registry::auth`]); what the
//! mirror stores, it stores through the same verified path as a push.

pub mod blobs;
pub mod credentials;
pub mod freshness;
pub mod manifests;
pub mod upstream;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::metric_family::SortedFamily;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

use crate::oci::name::RepoName;
use crate::registry::mirror::blobs::BlobFetches;
use crate::registry::mirror::freshness::TagState;
use crate::registry::mirror::upstream::{Upstream, UpstreamConfig, UpstreamError};
use crate::store::{Store, StoreError};

pub use manifests::MirroredManifest;

/// How long a manifest by tag is served without asking the upstream, by default.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// Bytes of recent chunks each blob fetch keeps in memory for its clients, by default.
pub const DEFAULT_WINDOW: usize = 32 << 20;

/// A `--mirror NAME=URL` flag, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorSpec {
    /// The name: one repository name component (`docker.io`, `ghcr.io`, `quay`).
    pub name: String,
    /// The upstream's base URL.
    pub url: String,
}

/// Why a `--mirror` flag is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MirrorSpecError {
    /// No `=`.
    #[error("--mirror {0:?} is not NAME=URL")]
    Shape(String),
    /// The name is not one repository name component.
    #[error(
        "mirror name {0:?} must be one repository name component (lowercase letters, digits, '.', '_', '-'), such as docker.io"
    )]
    Name(String),
    /// The URL is not http(s).
    #[error("mirror URL {0:?} must start with http:// or https://")]
    Url(String),
}

impl std::str::FromStr for MirrorSpec {
    type Err = MirrorSpecError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (name, url) = text
            .split_once('=')
            .ok_or_else(|| MirrorSpecError::Shape(text.to_owned()))?;
        let single_component = RepoName::parse(name)
            .ok()
            .is_some_and(|n| n.after_first_component().is_none());
        if !single_component {
            return Err(MirrorSpecError::Name(name.to_owned()));
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(MirrorSpecError::Url(url.to_owned()));
        }
        Ok(Self {
            name: name.to_owned(),
            url: url.trim_end_matches('/').to_owned(),
        })
    }
}

/// Why the mirror could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MirrorError {
    /// The upstream failed, and nothing cached could stand in.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The store failed while caching or reading (the cause is logged where it happened).
    #[error("cannot {action} in the cache store: {reason}")]
    Store {
        /// What the mirror was doing.
        action: &'static str,
        /// The store's error chain.
        reason: String,
    },
    /// A task of the mirror failed (panicked or was cancelled).
    #[error("cannot {action}: {reason}")]
    Task {
        /// What the task was doing.
        action: &'static str,
        /// What happened to it.
        reason: String,
    },
}

impl MirrorError {
    pub(crate) fn store(action: &'static str, err: &StoreError) -> Self {
        Self::Store {
            action,
            reason: crate::report::error_chain(err),
        }
    }

    pub(crate) fn task(action: &'static str, err: tokio::task::JoinError) -> Self {
        Self::Task {
            action,
            reason: err.to_string(),
        }
    }
}

/// Runs a store call on a blocking thread.
pub(crate) async fn blocking<T: Send + 'static>(
    action: &'static str,
    call: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, MirrorError> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|err| MirrorError::task(action, err))?
        .map_err(|err| MirrorError::store(action, &err))
}

/// How a mirror repository answered, as the `Cache-Status` header (RFC 9211) says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheStatus {
    /// From the cache, without asking the upstream.
    Hit,
    /// Fetched from the upstream and stored.
    Fetched,
    /// Fetched by another request at the same time; this one shared its fetch.
    Collapsed,
    /// From the cache, after the upstream confirmed it is current.
    Revalidated,
    /// The upstream's tag had moved: the new manifest was fetched and stored.
    Updated,
    /// From the cache although it may be out of date: the upstream could not answer.
    Stale(String),
}

impl CacheStatus {
    /// The `Cache-Status` value.
    pub fn header_value(&self) -> String {
        match self {
            Self::Hit => "kiln; hit".to_owned(),
            Self::Fetched => "kiln; fwd=miss; stored".to_owned(),
            Self::Collapsed => "kiln; fwd=miss; collapsed".to_owned(),
            Self::Revalidated => "kiln; fwd=stale; fwd-status=200".to_owned(),
            Self::Updated => "kiln; fwd=stale; fwd-status=200; stored".to_owned(),
            Self::Stale(_) => "kiln; fwd=stale; detail=stale-if-error".to_owned(),
        }
    }

    /// The metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Fetched => "miss",
            Self::Collapsed => "collapsed",
            Self::Revalidated => "revalidated",
            Self::Updated => "updated",
            Self::Stale(_) => "stale",
        }
    }
}

/// Labels of mirror answers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct AnswerLabels {
    /// `manifest` or `blob`.
    pub kind: &'static str,
    /// A [`CacheStatus::label`], or `error`.
    pub outcome: &'static str,
}

/// Labels of upstream fetches.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct FetchLabels {
    /// The mirror's name.
    pub upstream: String,
    /// `manifest`, `manifest-head` or `blob`.
    pub kind: &'static str,
    /// `ok` or `error`.
    pub result: &'static str,
}

/// The mirror's metrics: how requests were answered (the hit ratio is `hit` over all) and
/// how often upstreams were asked.
#[derive(Debug, Clone, Default)]
pub struct MirrorMetrics {
    /// Answers to clients, by kind and outcome.
    pub answers: SortedFamily<AnswerLabels, Counter>,
    /// Requests to upstreams, by upstream, kind and result.
    pub upstream: SortedFamily<FetchLabels, Counter>,
}

impl MirrorMetrics {
    /// Registers the metrics under `kiln_cache_mirror_`.
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("kiln_cache_mirror");
        registry.register(
            "answers",
            "Mirror repository answers, by kind and cache outcome",
            self.answers.clone(),
        );
        registry.register(
            "upstream_requests",
            "Requests to upstream registries, by upstream, kind and result",
            self.upstream.clone(),
        );
    }

    pub(crate) fn count_answer(&self, kind: &'static str, outcome: &'static str) {
        self.answers
            .get_or_create(&AnswerLabels { kind, outcome })
            .inc();
    }

    pub(crate) fn count_fetch(&self, upstream: &str, kind: &'static str, ok: bool) {
        self.upstream
            .get_or_create(&FetchLabels {
                upstream: upstream.to_owned(),
                kind,
                result: if ok { "ok" } else { "error" },
            })
            .inc();
    }
}

/// How the mirror behaves.
#[derive(Debug, Clone)]
pub struct MirrorOptions {
    /// How long a manifest by tag is served without asking the upstream.
    pub ttl: Duration,
    /// Bytes of recent chunks a blob fetch keeps for its clients.
    pub window: usize,
}

impl Default for MirrorOptions {
    fn default() -> Self {
        Self {
            ttl: DEFAULT_TTL,
            window: DEFAULT_WINDOW,
        }
    }
}

/// The pull-through mirror: its upstreams, the freshness of cached tags, and the fetches
/// in progress. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Mirror {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    upstreams: BTreeMap<String, Arc<Upstream>>,
    options: MirrorOptions,
    /// What is known of cached tags, by (repository, tag).
    tags: Mutex<BTreeMap<(String, String), TagState>>,
    manifests: manifests::ManifestFetches,
    blobs: Arc<BlobFetches>,
    metrics: MirrorMetrics,
}

impl Mirror {
    /// A mirror over `store` with these upstreams.
    pub fn new(
        store: Store,
        upstreams: Vec<UpstreamConfig>,
        options: MirrorOptions,
    ) -> Result<Self, UpstreamError> {
        let upstreams = upstreams
            .into_iter()
            .map(|config| Ok((config.name.clone(), Arc::new(Upstream::new(config)?))))
            .collect::<Result<BTreeMap<_, _>, UpstreamError>>()?;
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                upstreams,
                blobs: Arc::new(BlobFetches::new(options.window)),
                options,
                tags: Mutex::default(),
                manifests: manifests::ManifestFetches::default(),
                metrics: MirrorMetrics::default(),
            }),
        })
    }

    /// The mirrors' names.
    pub fn names(&self) -> BTreeSet<String> {
        self.inner.upstreams.keys().cloned().collect()
    }

    /// The metrics, to register.
    pub fn metrics(&self) -> &MirrorMetrics {
        &self.inner.metrics
    }

    /// Whether `name` is a mirror repository.
    pub fn is_mirror(&self, name: &RepoName) -> bool {
        self.inner.upstreams.contains_key(name.first_component())
    }

    /// The mirror a containerd `ns=<host>` parameter designates: the one named `host`, or
    /// else the one whose upstream is `host` (Docker Hub under any of its names).
    pub fn for_namespace(&self, ns: &str) -> Option<&str> {
        if let Some((name, _)) = self.inner.upstreams.get_key_value(ns) {
            return Some(name);
        }
        let hub = credentials::DOCKER_HUB_HOSTS.contains(&ns);
        self.inner
            .upstreams
            .iter()
            .find(|(_, upstream)| upstream.host() == ns || (hub && upstream.is_docker_hub()))
            .map(|(name, _)| name.as_str())
    }

    /// The upstream of a mirror repository and the repository's path there.
    fn upstream_for<'n>(
        &self,
        name: &'n RepoName,
    ) -> Result<(Arc<Upstream>, &'n str), MirrorError> {
        let mirror = name.first_component();
        let upstream = self.inner.upstreams.get(mirror).cloned().ok_or_else(|| {
            MirrorError::Upstream(UpstreamError::Config {
                upstream: mirror.to_owned(),
                reason: format!("{name} is not a mirror repository"),
            })
        })?;
        let path = name.after_first_component().ok_or_else(|| {
            MirrorError::Upstream(UpstreamError::NotFound {
                upstream: mirror.to_owned(),
                what: format!("repository {name} (a mirror repository is {mirror}/<path>)"),
            })
        })?;
        Ok((upstream, path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_flags_are_name_equals_url() {
        let spec: MirrorSpec = "docker.io=https://registry-1.docker.io/".parse().unwrap();
        assert_eq!(
            spec,
            MirrorSpec {
                name: "docker.io".into(),
                url: "https://registry-1.docker.io".into()
            }
        );
        assert_eq!(
            "x".parse::<MirrorSpec>(),
            Err(MirrorSpecError::Shape("x".into()))
        );
        for bad in [
            "Docker=http://x",
            "a/b=http://x",
            "=http://x",
            "-a=http://x",
        ] {
            assert!(
                matches!(bad.parse::<MirrorSpec>(), Err(MirrorSpecError::Name(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            "hub=ftp://x".parse::<MirrorSpec>(),
            Err(MirrorSpecError::Url(_))
        ));
    }

    #[test]
    fn namespaces_route_by_name_then_by_upstream_host() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), crate::store::StoreOptions::default()).unwrap();
        let config = |name: &str, url: &str| UpstreamConfig {
            name: name.into(),
            url: url.into(),
            credentials: None,
        };
        let mirror = Mirror::new(
            store,
            vec![
                config("hub", "https://registry-1.docker.io"),
                config("ghcr.io", "https://ghcr.io"),
                config("local", "http://127.0.0.1:5000"),
            ],
            MirrorOptions::default(),
        )
        .unwrap();
        assert_eq!(mirror.for_namespace("ghcr.io"), Some("ghcr.io"));
        assert_eq!(mirror.for_namespace("docker.io"), Some("hub"));
        assert_eq!(mirror.for_namespace("registry-1.docker.io"), Some("hub"));
        assert_eq!(mirror.for_namespace("127.0.0.1:5000"), Some("local"));
        assert_eq!(mirror.for_namespace("quay.io"), None);
        let name = |n: &str| RepoName::parse(n).unwrap();
        assert!(mirror.is_mirror(&name("hub/library/alpine")));
        assert!(!mirror.is_mirror(&name("team-a/cache")));
        assert!(matches!(
            mirror.upstream_for(&name("hub")),
            Err(MirrorError::Upstream(UpstreamError::NotFound { .. }))
        ));
        let alpine = name("hub/library/alpine");
        let (upstream, path) = mirror.upstream_for(&alpine).unwrap();
        assert_eq!((upstream.name(), path), ("hub", "library/alpine"));
    }

    #[test]
    fn cache_statuses_read_as_rfc_9211() {
        assert_eq!(CacheStatus::Hit.header_value(), "kiln; hit");
        assert_eq!(
            CacheStatus::Stale("down".into()).header_value(),
            "kiln; fwd=stale; detail=stale-if-error"
        );
        assert_eq!(CacheStatus::Collapsed.label(), "collapsed");
    }
}
