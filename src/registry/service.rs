//! The cache service's shared state — the store, auth, the mirror, metrics, limits and
//! readiness (no I/O of its own; the handlers do it, and `router.rs` routes to them).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::oci::media::MAX_MANIFEST_BYTES;
use crate::registry::auth::AuthConfig;
use crate::registry::error::RegistryError;
use crate::registry::metrics::CacheMetrics;
use crate::registry::mirror::Mirror;
use crate::store::Store;

/// Limits against large and slow clients.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The largest manifest accepted.
    pub max_manifest_bytes: usize,
    /// How long a request body may send nothing before the request fails.
    pub body_idle_timeout: Duration,
    /// The page size of `_catalog` when the client gives no `n`.
    pub catalog_page: usize,
    /// An upload session no request touched for this long is removed.
    pub upload_ttl: Duration,
    /// Upload sessions a namespace (a repository's first component) may hold open.
    pub max_uploads_per_namespace: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_manifest_bytes: MAX_MANIFEST_BYTES,
            body_idle_timeout: Duration::from_secs(60),
            catalog_page: 1000,
            upload_ttl: Duration::from_secs(3600),
            max_uploads_per_namespace: 100,
        }
    }
}

/// The registry: everything a request needs. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("store", &self.inner.store)
            .field("mirror", &self.inner.mirror)
            .finish_non_exhaustive()
    }
}

struct Inner {
    store: Store,
    auth: Arc<AuthConfig>,
    mirror: Option<Mirror>,
    metrics: CacheMetrics,
    prometheus: prometheus_client::registry::Registry,
    limits: Limits,
    ready: AtomicBool,
}

impl Registry {
    /// A registry over `store`. The auth config's mirror names are taken from `mirror`, so
    /// the two cannot disagree about which repositories are read-only mirrors.
    pub fn new(store: Store, mut auth: AuthConfig, mirror: Option<Mirror>, limits: Limits) -> Self {
        auth.mirrors = mirror.as_ref().map(Mirror::names).unwrap_or_default();
        let metrics = CacheMetrics::default();
        let mut prometheus = prometheus_client::registry::Registry::default();
        metrics.register(&mut prometheus);
        if let Some(mirror) = &mirror {
            mirror.metrics().register(&mut prometheus);
        }
        Self {
            inner: Arc::new(Inner {
                store,
                auth: Arc::new(auth),
                mirror,
                metrics,
                prometheus,
                limits,
                ready: AtomicBool::new(true),
            }),
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The auth configuration.
    pub fn auth(&self) -> &Arc<AuthConfig> {
        &self.inner.auth
    }

    /// The mirror, if any upstream is configured.
    pub fn mirror(&self) -> Option<&Mirror> {
        self.inner.mirror.as_ref()
    }

    /// The metrics.
    pub fn metrics(&self) -> &CacheMetrics {
        &self.inner.metrics
    }

    /// The metrics registry, for `/metrics`.
    pub fn prometheus(&self) -> &prometheus_client::registry::Registry {
        &self.inner.prometheus
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Whether `/readyz` says ready (false while shutting down).
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Relaxed)
    }

    /// Sets what `/readyz` says.
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Relaxed);
    }

    /// Runs a store call on a blocking thread; store errors become the client's error.
    /// Sets the open-uploads gauge from the store (after a session starts or ends).
    pub(crate) fn count_uploads(&self) {
        let open = self.inner.store.upload_count();
        self.inner
            .metrics
            .uploads_in_progress
            .set(i64::try_from(open).unwrap_or(i64::MAX));
    }

    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        action: &'static str,
        call: impl FnOnce(&Store) -> Result<T, crate::store::StoreError> + Send + 'static,
    ) -> Result<T, RegistryError> {
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || call(&store))
            .await
            .map_err(|err| RegistryError::internal(action, err))?
            .map_err(|err| RegistryError::from_store(action, err))
    }
}
