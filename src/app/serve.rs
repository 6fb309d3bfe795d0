//! `kiln cache serve`: flags, the checks made before serving (pure: [`exposure`]), and the
//! function that opens the store, builds the registry and serves it until SIGTERM or
//! SIGINT (I/O: files, sockets, signals).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::app::CliResult;
use crate::registry::auth::{AdminToken, AuthConfig};
use crate::registry::mirror::credentials::read_credentials;
use crate::registry::mirror::upstream::UpstreamConfig;
use crate::registry::mirror::{Mirror, MirrorOptions, MirrorSpec};
use crate::registry::server::{GcSchedule, ServeOptions, serve};
use crate::registry::service::{Limits, Registry};
use crate::store::{GcOptions, Policy, Store, StoreOptions};
use crate::{cacheapi, units};

/// Flags of `kiln cache serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The store's root directory (created if missing).
    #[arg(long, default_value = crate::app::cache::DEFAULT_ROOT, env = "KILN_CACHE_ROOT")]
    pub root: PathBuf,
    /// Address to listen on: `127.0.0.1:5000`, `0.0.0.0:5000`, `[::]:5000`.
    #[arg(long, default_value = "127.0.0.1:5000", env = "KILN_CACHE_LISTEN")]
    pub listen: SocketAddr,
    /// A pull-through mirror: repositories `NAME/PATH` mirror `URL/PATH`. Repeatable;
    /// e.g. `docker.io=https://registry-1.docker.io`.
    #[arg(long = "mirror", value_name = "NAME=URL")]
    pub mirrors: Vec<MirrorSpec>,
    /// Upstream credentials: a Docker config.json (a kubernetes.io/dockerconfigjson
    /// Secret's content); each mirror uses the entry for its upstream's host.
    #[arg(long, value_name = "FILE")]
    pub mirror_credentials: Option<PathBuf>,
    /// How long a mirrored manifest by tag is served before the upstream is asked again.
    #[arg(long, value_parser = units::parse_duration, default_value = "5m")]
    pub mirror_ttl: Duration,
    /// The HMAC key (32 random bytes or more) that signs cache tokens; with it, every
    /// request needs a token. Without it the registry API is open.
    #[arg(long, value_name = "FILE", env = "KILN_CACHE_TOKEN_KEY")]
    pub token_key: Option<PathBuf>,
    /// The admin token (32 characters or more) for /admin/v1/ and every repository.
    /// Without it the admin API is closed.
    #[arg(long, value_name = "FILE", env = "KILN_CACHE_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// The URL clients reach this server at, for the token realm
    /// (`http://kiln-cache.kiln-system:5000`); by default the Host each request names.
    #[arg(long, value_name = "URL", env = "KILN_CACHE_EXTERNAL_URL")]
    pub external_url: Option<String>,
    /// Time between online GC runs (0s turns the online GC off).
    #[arg(long, value_parser = units::parse_duration, default_value = "1h")]
    pub gc_interval: Duration,
    /// GC policy: evict least recently used tags until the store is at or under this
    /// size (2MB, 512MiB, 1.5GiB).
    #[arg(long, value_parser = units::parse_size)]
    pub keep_storage: Option<u64>,
    /// GC policy: evict tags unused for longer than this (90m, 7d).
    #[arg(long, value_parser = units::parse_duration)]
    pub keep_duration: Option<Duration>,
    /// Content pushed, mounted or checked (HEAD) this recently that no tag reaches is
    /// never collected: a push whose manifest has not arrived yet. A tag's content is the
    /// tag's to keep or lose, however young.
    #[arg(long, value_parser = units::parse_duration, default_value = "10m")]
    pub gc_grace: Duration,
    /// Listen on a non-loopback address without a token key, open to anyone who can
    /// reach it.
    #[arg(long)]
    pub insecure: bool,
    /// How long requests in flight may take to finish on SIGTERM.
    #[arg(long, value_parser = units::parse_duration, default_value = "30s")]
    pub shutdown_timeout: Duration,
    /// How long a request body may send nothing before the request fails.
    #[arg(long, value_parser = units::parse_duration, default_value = "60s")]
    pub body_timeout: Duration,
    /// Longest wait for a request's headers, and longest idle keep-alive connection.
    #[arg(long, value_parser = units::parse_duration, default_value = "30s")]
    pub header_timeout: Duration,
    /// An upload session that no request touches for this long is removed, with the
    /// bytes it received.
    #[arg(long, value_parser = units::parse_duration, default_value = "1h")]
    pub upload_ttl: Duration,
    /// Upload sessions one namespace may hold open; past it, new ones are refused with
    /// 429 TOOMANYREQUESTS.
    #[arg(long, default_value_t = 100)]
    pub max_uploads_per_namespace: usize,
}

/// Whether serving on an address without a token key is acceptable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exposure {
    /// A token key is configured: every request is authenticated.
    Authenticated,
    /// No token key, on loopback: only local processes can reach the open API.
    OpenLocally,
    /// No token key, reachable from the network, and `--insecure` says so on purpose.
    OpenToNetwork,
}

/// Why `kiln cache serve` refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum ServeCliError {
    /// No token key on a non-loopback address, without `--insecure`.
    #[error(
        "refusing to serve on {0} without --token-key: anyone who can reach it could read and overwrite the cache; pass --token-key FILE, listen on 127.0.0.1, or pass --insecure"
    )]
    OpenToNetwork(SocketAddr),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The external URL is not http(s).
    #[error("--external-url {0:?} must start with http:// or https://")]
    ExternalUrl(String),
    /// Installing the signal handlers failed.
    #[error("cannot install the SIGTERM handler")]
    Signals(#[source] std::io::Error),
}

/// Decides whether `listen` may be served (pure).
pub fn exposure(
    listen: SocketAddr,
    token_key: bool,
    insecure: bool,
) -> Result<Exposure, ServeCliError> {
    match (token_key, listen.ip().is_loopback(), insecure) {
        (true, _, _) => Ok(Exposure::Authenticated),
        (false, true, _) => Ok(Exposure::OpenLocally),
        (false, false, true) => Ok(Exposure::OpenToNetwork),
        (false, false, false) => Err(ServeCliError::OpenToNetwork(listen)),
    }
}

/// The online GC schedule from the flags (`None` when the interval is 0).
pub fn gc_schedule(args: &ServeArgs) -> Option<GcSchedule> {
    (!args.gc_interval.is_zero()).then(|| GcSchedule {
        interval: args.gc_interval,
        options: GcOptions {
            policy: Policy {
                all: false,
                keep_storage: args.keep_storage,
                keep_duration: args.keep_duration,
            },
            grace: args.gc_grace,
            ..GcOptions::default()
        },
    })
}

/// Serves the cache until SIGTERM or SIGINT.
pub async fn run_serve(args: ServeArgs) -> CliResult {
    let exposure = exposure(args.listen, args.token_key.is_some(), args.insecure)?;
    match exposure {
        Exposure::Authenticated => {}
        Exposure::OpenLocally => tracing::warn!(
            listen = %args.listen,
            "no --token-key: the registry API is open to every process on this machine"
        ),
        Exposure::OpenToNetwork => tracing::warn!(
            listen = %args.listen,
            "no --token-key and --insecure: the registry API is open to everyone who can reach it"
        ),
    }
    let auth = auth_config(&args)?;
    let root = args.root.clone();
    let store =
        tokio::task::spawn_blocking(move || Store::open(root, StoreOptions::default())).await??;
    let mirror = mirror(&args, &store)?;
    let registry = Registry::new(
        store,
        auth,
        mirror,
        Limits {
            body_idle_timeout: args.body_timeout,
            upload_ttl: args.upload_ttl,
            max_uploads_per_namespace: args.max_uploads_per_namespace,
            ..Limits::default()
        },
    );
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| ServeCliError::Bind {
            addr: args.listen,
            source,
        })?;
    tracing::info!(
        listen = %args.listen,
        root = %args.root.display(),
        authenticated = exposure == Exposure::Authenticated,
        "serving the build cache"
    );
    let options = ServeOptions {
        header_timeout: args.header_timeout,
        shutdown_grace: args.shutdown_timeout,
        gc: gc_schedule(&args),
        ..ServeOptions::default()
    };
    serve(registry, listener, options, shutdown_signal()?).await?;
    Ok(ExitCode::SUCCESS)
}

/// The token key, the admin token and the token realm's base, from the flags.
fn auth_config(args: &ServeArgs) -> Result<AuthConfig, Box<dyn std::error::Error + Send + Sync>> {
    let external_base = match &args.external_url {
        Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
            url.trim_end_matches('/').to_owned()
        }
        Some(url) => return Err(Box::new(ServeCliError::ExternalUrl(url.clone()))),
        None => String::new(),
    };
    let auth = AuthConfig {
        token_key: args
            .token_key
            .as_deref()
            .map(cacheapi::token::TokenKey::read)
            .transpose()?,
        admin_token: args
            .admin_token_file
            .as_deref()
            .map(AdminToken::read)
            .transpose()?,
        external_base,
        mirrors: Default::default(),
    };
    if auth.admin_token.is_none() {
        tracing::info!("no --admin-token-file: the admin API (/admin/v1/) is closed");
    }
    Ok(auth)
}

/// The pull-through mirror the `--mirror` flags ask for (with their credentials), if any.
fn mirror(
    args: &ServeArgs,
    store: &Store,
) -> Result<Option<Mirror>, Box<dyn std::error::Error + Send + Sync>> {
    if args.mirrors.is_empty() {
        return Ok(None);
    }
    let mut upstreams = Vec::new();
    for spec in &args.mirrors {
        let credentials = match &args.mirror_credentials {
            Some(file) => read_credentials(file, &upstream_host(&spec.url))?,
            None => None,
        };
        tracing::info!(
            mirror = %spec.name,
            upstream = %spec.url,
            credentials = credentials.is_some(),
            "pull-through mirror"
        );
        upstreams.push(UpstreamConfig {
            name: spec.name.clone(),
            url: spec.url.clone(),
            credentials,
        });
    }
    let options = MirrorOptions {
        ttl: args.mirror_ttl,
        ..MirrorOptions::default()
    };
    Ok(Some(Mirror::new(store.clone(), upstreams, options)?))
}

/// `host[:port]` of a URL, for looking up credentials.
fn upstream_host(url: &str) -> String {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url);
    rest.split('/').next().unwrap_or_default().to_owned()
}

/// Resolves on the first SIGTERM or SIGINT.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, ServeCliError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(ServeCliError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServeCliError::Signals)?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "stopping");
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_api_stays_on_loopback_unless_insecure() {
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let local6: SocketAddr = "[::1]:5000".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:5000".parse().unwrap();
        let cases = [
            (local, false, false, Some(Exposure::OpenLocally)),
            (local6, false, false, Some(Exposure::OpenLocally)),
            (any, false, false, None),
            (any, false, true, Some(Exposure::OpenToNetwork)),
            (any, true, false, Some(Exposure::Authenticated)),
            (local, true, true, Some(Exposure::Authenticated)),
        ];
        for (addr, key, insecure, want) in cases {
            assert_eq!(
                exposure(addr, key, insecure).ok(),
                want,
                "{addr} key={key} insecure={insecure}"
            );
        }
        let err = exposure(any, false, false).unwrap_err().to_string();
        assert!(
            err.contains("--token-key") && err.contains("--insecure"),
            "{err}"
        );
    }

    #[test]
    fn flags_parse_and_make_the_gc_schedule() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let cli = Cli::parse_from([
            "serve",
            "--listen",
            "0.0.0.0:5000",
            "--mirror",
            "docker.io=https://registry-1.docker.io",
            "--keep-storage",
            "10GiB",
            "--keep-duration",
            "7d",
            "--gc-interval",
            "30m",
        ]);
        let schedule = gc_schedule(&cli.serve).unwrap();
        assert_eq!(schedule.interval, Duration::from_secs(1800));
        assert_eq!(schedule.options.policy.keep_storage, Some(10 << 30));
        assert_eq!(
            schedule.options.policy.keep_duration,
            Some(Duration::from_secs(7 * 86400))
        );
        assert!(!schedule.options.policy.all);
        assert_eq!(cli.serve.mirrors[0].name, "docker.io");
        let off = Cli::parse_from(["serve", "--gc-interval", "0s"]);
        assert!(gc_schedule(&off.serve).is_none());
        assert_eq!(upstream_host("https://ghcr.io/org"), "ghcr.io");
        assert_eq!(upstream_host("http://127.0.0.1:5000"), "127.0.0.1:5000");
    }
}
