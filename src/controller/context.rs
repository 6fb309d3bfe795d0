//! What every reconcile shares: the [`Context`] that holds the controller-wide
//! [`Config`] with the I/O handles beside it (the client, the Event recorder, the clock,
//! the per-group locks, the cache admin client, the observers).
//!
//! New long-lived handles (a cache admin client, a metrics registry) go into [`Context`].

use std::sync::Arc;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;

use super::cache_ledger::CacheLedger;
use super::clock::{Clock, SystemClock};
use super::config::Config;
use super::fair_share::Limits;
use super::group_locks::GroupLocks;
use super::namespace_limits::NamespaceLimits;
use super::node_labels::NodeLabels;
use super::observer::{GcObserver, NoObserver, ReconcileObserver};
use super::pod_index::PodIndex;
use super::refusals::PodRefusals;
use super::slot_gate::SlotGate;
use crate::cacheapi::client::AdminClient;
use crate::cacheapi::token::TokenKey;
use crate::crd::Build;

/// Where the other Builds of a namespace are read from, to decide concurrency groups.
#[derive(Clone)]
pub enum PeerSource {
    /// List them from the API server (tests, and any use without a watch).
    Api,
    /// Read them from the controller's watch cache.
    Store(Store<Build>),
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
    /// One start at a time under running-build limits, and the starts the watch cache
    /// does not show yet.
    pub slots: SlotGate,
    /// The limits namespaces set for themselves (kept current by the controller's watch).
    pub namespace_limits: NamespaceLimits,
    /// The nodes' labels (kept current by the controller's watch of Nodes; unknown, and
    /// not used, without one).
    pub node_labels: NodeLabels,
    /// Build pods by their Build's UID, from the controller's watch (empty, and not used,
    /// without one: pods are then listed from the API).
    pub pod_index: PodIndex,
    /// The cache service's admin API, for leases and cache cleanup.
    pub cache_admin: Option<AdminClient>,
    /// What this process knows of its admin API calls (renewals, confirmed releases,
    /// retry times).
    pub ledger: CacheLedger,
    /// One build log stored at a time (each holds up to `--log-max-bytes` in memory).
    pub log_slot: tokio::sync::Mutex<()>,
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
            slots: SlotGate::default(),
            namespace_limits: NamespaceLimits::default(),
            pod_index: PodIndex::default(),
            node_labels: NodeLabels::default(),
            cache_admin: None,
            ledger: CacheLedger::default(),
            log_slot: tokio::sync::Mutex::new(()),
            refusals: PodRefusals::default(),
            gc_observer: Arc::new(NoObserver),
        }
    }

    /// The running-build limits now: the controller's, with the namespaces' own.
    pub fn running_limits(&self) -> Limits {
        self.config
            .running_limits
            .with_overrides(&self.namespace_limits.snapshot())
    }

    /// Takes cache leases and cleans up the cache through `admin` (and turns on
    /// [`Config::cache_leases`], so that `decide` plans them).
    pub fn with_cache_admin(mut self, admin: AdminClient) -> Self {
        self.cache_admin = Some(admin);
        self.config.cache_leases = true;
        self
    }

    /// Mints a cache token for each attempt with `key` (it goes into
    /// [`Config::cache_token_key`], so that `decide` plans the token Secrets).
    pub fn with_token_key(mut self, key: TokenKey) -> Self {
        self.config.cache_token_key = Some(key);
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
