//! Kiln's cache service running in-process on a loopback port over a temp store, through
//! the same entry point as `kiln cache serve` (`kiln::registry::serve`); stopped on drop.

use std::time::Duration;

use kiln::cacheapi::token::{Claims, TokenAction, TokenKey};
use kiln::registry::auth::{AdminToken, AuthConfig, unix_now};
use kiln::registry::mirror::upstream::UpstreamConfig;
use kiln::registry::mirror::{Mirror, MirrorOptions};
use kiln::registry::{CacheServeError, Limits, Registry, ServeOptions, serve};
use kiln::store::{Store, StoreOptions};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The admin token of test servers.
pub const ADMIN: &str = "interop-admin-token-0123456789abcdef";

/// How a test server is set up.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Require tokens signed with [`key`].
    pub tokens: bool,
    /// Mirrors as (name, upstream URL).
    pub mirrors: Vec<(String, String)>,
    /// The mirror's TTL for tags (default 5 minutes).
    pub mirror_ttl: Option<Duration>,
    /// The header (and idle keep-alive) timeout (default 30 s).
    pub header_timeout: Option<Duration>,
    /// How long an upload session may stay idle (default 1 h).
    pub upload_ttl: Option<Duration>,
}

/// The token key of test servers.
pub fn key() -> TokenKey {
    TokenKey::from_bytes(b"interop-token-key-0123456789abcdef").unwrap()
}

/// A token signed with `key` for namespace `ns` with `actions`, valid for an hour.
pub fn token(ns: &str, actions: &[TokenAction], key: &TokenKey) -> String {
    key.mint(&Claims::new(
        "interop-build",
        ns,
        actions.iter().copied(),
        unix_now(),
        3600,
    ))
    .unwrap()
}

/// A running server.
pub struct KilnServer {
    /// `127.0.0.1:<port>`.
    pub addr: std::net::SocketAddr,
    /// A handle on its store (for checks behind the API's back).
    pub store: Store,
    /// Its store's root.
    pub root: std::path::PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), CacheServeError>>>,
    _dir: TempDir,
}

impl KilnServer {
    /// Starts a server in the current tokio runtime.
    pub async fn start(config: Config) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let store = Store::open(
            &root,
            StoreOptions {
                sync: false,
                ..StoreOptions::default()
            },
        )
        .unwrap();
        let mirror = (!config.mirrors.is_empty()).then(|| {
            Mirror::new(
                store.clone(),
                config
                    .mirrors
                    .iter()
                    .map(|(name, url)| UpstreamConfig {
                        name: name.clone(),
                        url: url.clone(),
                        credentials: None,
                    })
                    .collect(),
                MirrorOptions {
                    ttl: config
                        .mirror_ttl
                        .unwrap_or(kiln::registry::mirror::DEFAULT_TTL),
                    ..MirrorOptions::default()
                },
            )
            .unwrap()
        });
        let auth = AuthConfig {
            token_key: config.tokens.then(key),
            admin_token: Some(AdminToken::new(ADMIN).unwrap()),
            external_base: String::new(),
            mirrors: Default::default(),
        };
        let defaults = Limits::default();
        let limits = Limits {
            upload_ttl: config.upload_ttl.unwrap_or(defaults.upload_ttl),
            ..defaults
        };
        let registry = Registry::new(store.clone(), auth, mirror, limits);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let defaults = ServeOptions::default();
        let options = ServeOptions {
            shutdown_grace: Duration::from_secs(10),
            header_timeout: config.header_timeout.unwrap_or(defaults.header_timeout),
            ..defaults
        };
        let task = tokio::spawn(serve(registry, listener, options, async {
            let _ = rx.await;
        }));
        Self {
            addr,
            store,
            root,
            shutdown: Some(tx),
            task: Some(task),
            _dir: dir,
        }
    }

    /// `127.0.0.1:<port>`, for image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Asks the server to shut down (as SIGTERM does) without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Shuts the server down and waits for `serve` to return.
    pub async fn stop(mut self) -> Result<(), CacheServeError> {
        self.begin_shutdown();
        let task = self.task.take().unwrap();
        task.await.unwrap()
    }
}

impl Drop for KilnServer {
    fn drop(&mut self) {
        self.begin_shutdown();
    }
}
