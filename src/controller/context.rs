//! What every reconcile shares: the controller-wide [`Config`] (pure data, what `decide` and
//! the pod builder read), and the [`Context`] that adds the client, the Event recorder, the
//! clock and the per-group locks (I/O handles).
//!
//! New controller-wide settings go into [`Config`] (with a flag in `controller::cli`); new
//! long-lived handles (a cache admin client, a metrics registry) go into [`Context`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};

use super::cache_ledger::{CacheCall, CacheLedger};
use super::gc::{CacheSweepReport, SweepReport};
use super::refusals::PodRefusals;
use crate::cacheapi::client::AdminClient;
use crate::cacheapi::token::TokenKey;
use crate::crd::build::DEFAULT_BUILDER_IMAGE;
use crate::crd::{Build, Phase};

/// Controller-wide settings, from `kiln controller`'s flags. `decide` and the pod builder
/// read it; nothing in it does I/O.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Builder image for Builds that do not name one.
    pub builder_image: String,
    /// The build cache service; no cache flags are given to BuildKit without it.
    pub cache_service: Option<CacheService>,
    /// Registry mirrors, by upstream registry (`docker.io` → `mirror.example.com`), written
    /// into the builder's BuildKit configuration.
    pub registry_mirrors: BTreeMap<String, Mirror>,
    /// Registries (`host[:port]`) that builders reach over plain HTTP, such as an
    /// in-cluster registry without TLS.
    pub plain_http_registries: BTreeSet<String>,
    /// Resource requests of the builder container when the Build names none.
    pub default_requests: BTreeMap<String, Quantity>,
    /// Delay before the first infrastructure retry; it doubles on each further retry.
    pub retry_backoff: Duration,
    /// Longest delay between two retries.
    pub retry_backoff_max: Duration,
    /// Grace period given to a build pod that is cancelled, superseded or cleaned up.
    pub pod_grace_period: Duration,
    /// How often a queued Build checks its concurrency group again (it is also woken up
    /// whenever a Build of its group changes).
    pub queue_recheck: Duration,
    /// Longest time any attempt may run, whatever its `spec.timeout` says: a cluster-wide
    /// ceiling on `activeDeadlineSeconds`. `None` (the default) leaves `spec.timeout` (1m to
    /// 24h) alone.
    pub max_timeout: Option<Duration>,
    /// Largest inline context (Dockerfile and files, in bytes).
    pub max_inline_bytes: u64,
    /// Attempts kept in `status.attempts` when the Build does not say.
    pub attempt_history: u32,
    /// How long the pod of a succeeded attempt is kept when the Build does not say.
    pub succeeded_pod_ttl: Duration,
    /// How long the pod of a failed attempt is kept when the Build does not say.
    pub failed_pod_ttl: Duration,
    /// How often the orphan sweeper runs (it also runs once at start-up).
    pub sweep_interval: Duration,
    /// Whether running attempts hold leases on the cache they import, through the cache
    /// service's admin API. [`Context::with_cache_admin`] turns it on.
    pub cache_leases: bool,
    /// How long a lease holds after each renewal; it is renewed once half of it is left.
    pub lease_ttl: Duration,
    /// Whether each attempt gets a cache token of its own, minted into a Secret.
    /// [`Context::with_token_key`] turns it on.
    pub cache_tokens: bool,
    /// Watch only this namespace; every namespace when `None`.
    pub namespace: Option<String>,
    /// Most reconciles running at once.
    pub concurrency: u16,
    /// Name of this controller instance on Events (the pod name in a cluster).
    pub instance: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            builder_image: DEFAULT_BUILDER_IMAGE.to_owned(),
            cache_service: None,
            registry_mirrors: BTreeMap::new(),
            plain_http_registries: BTreeSet::new(),
            default_requests: BTreeMap::from([
                ("cpu".to_owned(), Quantity("500m".to_owned())),
                ("memory".to_owned(), Quantity("1Gi".to_owned())),
            ]),
            retry_backoff: Duration::from_secs(10),
            retry_backoff_max: Duration::from_secs(300),
            pod_grace_period: Duration::from_secs(30),
            queue_recheck: Duration::from_secs(30),
            max_timeout: None,
            max_inline_bytes: 512 * 1024,
            attempt_history: 10,
            succeeded_pod_ttl: Duration::from_secs(3600),
            failed_pod_ttl: Duration::from_secs(24 * 3600),
            sweep_interval: Duration::from_secs(60),
            cache_leases: false,
            lease_ttl: Duration::from_secs(15 * 60),
            cache_tokens: false,
            namespace: None,
            concurrency: 16,
            instance: None,
        }
    }
}

/// Why a controller setting was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `--cache-service` is not `http[s]://host[:port][/path]`.
    #[error("cache service {0:?} is not http(s)://host[:port][/path]")]
    BadCacheService(String),
    /// `--registry-mirror` is not `REGISTRY=HOST`.
    #[error("registry mirror {0:?} is not REGISTRY=[http(s)://]HOST[:PORT][/PATH]")]
    BadMirror(String),
}

/// Where the build cache lives: an OCI registry (Kiln's cache service).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheService {
    /// `host[:port][/path]`, the prefix of every cache reference.
    pub host: String,
    /// Whether it speaks plain HTTP (an in-cluster Service without TLS).
    pub plain_http: bool,
}

impl CacheService {
    /// Parses `http://host[:port][/path]` or `https://…`.
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::BadCacheService(url.to_owned());
        let (plain_http, rest) = if let Some(rest) = url.strip_prefix("http://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (false, rest)
        } else {
            return Err(bad());
        };
        let host = rest.trim_end_matches('/');
        if host.is_empty() || host.contains(char::is_whitespace) || host.contains(['#', '?', ',']) {
            return Err(bad());
        }
        Ok(Self {
            host: host.to_owned(),
            plain_http,
        })
    }

    /// The root of its host, `http[s]://host[:port]`, where the registry API (`/v2/`) and
    /// the admin API (`/admin/v1/`) live: a path in `--cache-service` is a prefix of
    /// repository names, not of routes.
    pub fn root_url(&self) -> String {
        let scheme = if self.plain_http { "http" } else { "https" };
        format!("{scheme}://{}", self.registry_host())
    }

    /// The registry host (without path), which BuildKit's configuration is keyed by.
    pub fn registry_host(&self) -> &str {
        self.host.split('/').next().unwrap_or(&self.host)
    }
}

/// A registry mirror: where pulls of one upstream registry go instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirror {
    /// `host[:port][/path]` of the mirror.
    pub host: String,
    /// Whether the mirror speaks plain HTTP.
    pub plain_http: bool,
}

/// Parses one `--registry-mirror REGISTRY=[http(s)://]HOST[:PORT][/PATH]`.
pub fn parse_mirror(text: &str) -> Result<(String, Mirror), ConfigError> {
    let bad = || ConfigError::BadMirror(text.to_owned());
    let (registry, target) = text.split_once('=').ok_or_else(bad)?;
    let (plain_http, host) = if let Some(rest) = target.strip_prefix("http://") {
        (true, rest)
    } else {
        (false, target.strip_prefix("https://").unwrap_or(target))
    };
    let host = host.trim_end_matches('/');
    let valid = |s: &str| {
        !s.is_empty()
            && !s.contains(char::is_whitespace)
            && !s.contains(['"', '\\', '#', '?', ',', '='])
    };
    if !valid(registry) || registry.contains('/') || !valid(host) {
        return Err(bad());
    }
    Ok((
        registry.to_owned(),
        Mirror {
            host: host.to_owned(),
            plain_http,
        },
    ))
}

/// Where time comes from. `decide` takes time as an argument; the reconcile loop reads it
/// here, so that tests (and the real-API-server suite) can drive it.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that only moves when told to, for tests.
#[derive(Debug)]
pub struct ManualClock(Mutex<Timestamp>);

impl ManualClock {
    /// A clock stopped at `at`.
    pub fn new(at: Timestamp) -> Self {
        Self(Mutex::new(at))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let mut now = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let by = SignedDuration::try_from(by).unwrap_or(SignedDuration::MAX);
        *now = now.saturating_add(by).unwrap_or(*now);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How a reconcile ended, for metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The plan changed something (this many writes).
    Applied {
        /// Number of API writes (status, pods, ConfigMaps, finalizer, Events).
        writes: usize,
    },
    /// Nothing to change.
    Unchanged,
    /// The reconcile failed; the label names the step that failed.
    Failed {
        /// A short, stable label (`observe`, `write_status`, `create_pod`, …).
        step: &'static str,
    },
}

/// Receives every reconcile's outcome: the place where metrics are recorded.
pub trait ReconcileObserver: Send + Sync {
    /// Called once per reconcile.
    fn reconciled(&self, build: &ObjectRef<Build>, outcome: Outcome, elapsed: Duration);

    /// Called when a reconcile wrote a final phase for a new run (a generation or a rerun):
    /// once per run. `duration` runs from the run's first attempt to its completion, when
    /// the status records both.
    fn finished(&self, _build: &ObjectRef<Build>, _phase: Phase, _duration: Option<Duration>) {}

    /// Called once when the watch loop starts, with its cache of Builds (for gauges that
    /// count Builds, and for readiness: the cache is synced once it is ready).
    fn watching(&self, _builds: &Store<Build>) {}
}

/// An observer that does nothing (the default until metrics are wired in).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoObserver;

impl ReconcileObserver for NoObserver {
    fn reconciled(&self, _: &ObjectRef<Build>, _: Outcome, _: Duration) {}
}

/// Receives what the garbage collection did: each sweep's report (deletions counted by
/// reason) and each call to the cache service's admin API. The place where its metrics are
/// recorded; every method has an empty default.
pub trait GcObserver: Send + Sync {
    /// Called after each orphan and retention sweep.
    fn swept(&self, _report: &SweepReport, _elapsed: Duration) {}
    /// Called after each sweep of the cache repositories of deleted namespaces.
    fn cache_swept(&self, _report: &CacheSweepReport, _elapsed: Duration) {}
    /// Called after each admin API call made for a Build (lease, release, tag deletion).
    fn cache_call(&self, _call: CacheCall, _succeeded: bool) {}
}

impl GcObserver for NoObserver {}

/// Where the other Builds of a namespace are read from, to decide concurrency groups.
#[derive(Clone)]
pub enum PeerSource {
    /// List them from the API server (tests, and any use without a watch).
    Api,
    /// Read them from the controller's watch cache.
    Store(Store<Build>),
}

/// Serialises reconciles of Builds that share a concurrency group, so that two of them
/// never both decide to start at once. Builds of different groups still run in parallel.
#[derive(Default)]
pub struct GroupLocks {
    locks: Mutex<BTreeMap<GroupKey, Arc<tokio::sync::Mutex<()>>>>,
}

/// `(namespace, group)`.
type GroupKey = (String, String);

impl GroupLocks {
    /// Waits for the lock of `(namespace, group)`.
    pub async fn lock(&self, namespace: &str, group: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            // Drop locks nobody holds or waits for, so the map stays as small as the set of
            // groups being reconciled right now.
            locks.retain(|_, l| Arc::strong_count(l) > 1);
            locks
                .entry((namespace.to_owned(), group.to_owned()))
                .or_default()
                .clone()
        };
        lock.lock_owned().await
    }
}

/// What every reconcile shares.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// Controller-wide settings.
    pub config: Config,
    /// Publishes Events on Builds.
    pub recorder: Recorder,
    /// Where time comes from.
    pub clock: Arc<dyn Clock>,
    /// Where the other Builds of a namespace are read from.
    pub peers: PeerSource,
    /// Receives every reconcile's outcome.
    pub observer: Arc<dyn ReconcileObserver>,
    /// Per-group locks.
    pub locks: GroupLocks,
    /// The cache service's admin API, for leases and cache cleanup.
    pub cache_admin: Option<AdminClient>,
    /// The key that signs the cache tokens of build pods.
    pub token_key: Option<TokenKey>,
    /// What this process knows of its admin API calls (renewals, confirmed releases,
    /// retry times).
    pub ledger: CacheLedger,
    /// What the API server said when it last refused an attempt's pod.
    pub refusals: PodRefusals,
    /// Receives the garbage collection's reports.
    pub gc_observer: Arc<dyn GcObserver>,
}

impl Context {
    /// A context with the system clock, peers listed from the API, and no observer.
    pub fn new(client: Client, config: Config) -> Self {
        let reporter = Reporter {
            controller: "kiln".to_owned(),
            instance: config.instance.clone(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            config,
            clock: Arc::new(SystemClock),
            peers: PeerSource::Api,
            observer: Arc::new(NoObserver),
            locks: GroupLocks::default(),
            cache_admin: None,
            token_key: None,
            ledger: CacheLedger::default(),
            refusals: PodRefusals::default(),
            gc_observer: Arc::new(NoObserver),
        }
    }

    /// Takes cache leases and cleans up the cache through `admin` (and turns on
    /// [`Config::cache_leases`], so that `decide` plans them).
    pub fn with_cache_admin(mut self, admin: AdminClient) -> Self {
        self.cache_admin = Some(admin);
        self.config.cache_leases = true;
        self
    }

    /// Mints a cache token for each attempt with `key` (and turns on
    /// [`Config::cache_tokens`], so that `decide` plans the token Secrets).
    pub fn with_token_key(mut self, key: TokenKey) -> Self {
        self.token_key = Some(key);
        self.config.cache_tokens = true;
        self
    }

    /// Sends the garbage collection's reports to `observer`.
    pub fn with_gc_observer(mut self, observer: Arc<dyn GcObserver>) -> Self {
        self.gc_observer = observer;
        self
    }

    /// Uses `clock` for time.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Reads peers from the controller's watch cache.
    pub fn with_peer_store(mut self, store: Store<Build>) -> Self {
        self.peers = PeerSource::Store(store);
        self
    }

    /// Sends reconcile outcomes to `observer`.
    pub fn with_observer(mut self, observer: Arc<dyn ReconcileObserver>) -> Self {
        self.observer = observer;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_service_urls() {
        assert_eq!(
            CacheService::parse("http://kiln-cache.kiln-system.svc:5000/").unwrap(),
            CacheService {
                host: "kiln-cache.kiln-system.svc:5000".into(),
                plain_http: true
            }
        );
        let tls = CacheService::parse("https://cache.example.com/kiln").unwrap();
        assert!(!tls.plain_http);
        assert_eq!(tls.registry_host(), "cache.example.com");
        assert_eq!(tls.root_url(), "https://cache.example.com");
        assert_eq!(
            CacheService::parse("http://kiln-cache:5000/")
                .unwrap()
                .root_url(),
            "http://kiln-cache:5000"
        );
        for bad in ["cache:5000", "ftp://x", "http://", "http://a b"] {
            assert!(CacheService::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mirrors() {
        assert_eq!(
            parse_mirror("docker.io=mirror.gcr.io").unwrap(),
            (
                "docker.io".into(),
                Mirror {
                    host: "mirror.gcr.io".into(),
                    plain_http: false
                }
            )
        );
        let (_, m) = parse_mirror("docker.io=http://kiln-cache:5000").unwrap();
        assert!(m.plain_http);
        for bad in ["docker.io", "=x", "docker.io=", "a/b=c", "docker.io=a\"b"] {
            assert!(parse_mirror(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(Timestamp::UNIX_EPOCH);
        assert_eq!(clock.now(), Timestamp::UNIX_EPOCH);
        clock.advance(Duration::from_secs(5));
        assert_eq!(clock.now().as_second(), 5);
    }

    #[tokio::test]
    async fn group_locks_serialise_one_group_and_forget_idle_ones() {
        let locks = GroupLocks::default();
        let held = locks.lock("ns", "g").await;
        // Another group is free.
        drop(locks.lock("ns", "other").await);
        // The same group waits.
        let waiting = tokio::time::timeout(Duration::from_millis(20), locks.lock("ns", "g")).await;
        assert!(waiting.is_err());
        drop(held);
        drop(locks.lock("ns", "g").await);
        drop(locks.lock("ns", "x").await);
        assert!(locks.locks.lock().unwrap().len() <= 1);
    }
}
