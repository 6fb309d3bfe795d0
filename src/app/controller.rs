//! `kiln controller`: its flags and the function that runs it (the edge: reads the
//! kubeconfig, handles SIGTERM and SIGINT).
//!
//! Every flag has an environment variable only where a Deployment is expected to set it
//! from the downward API or a ConfigMap; the Helm chart sets the rest as arguments.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::Client;

use crate::app::CliResult;
use crate::cacheapi::client::{AdminClient, AdminClientError};
use crate::cacheapi::token::{TokenKey, TokenKeyError};
use crate::controller::config::{
    CacheService, Config, DEFAULT_INDEX_IMAGE, MirrorHost, parse_mirror,
};
use crate::controller::context::Context;
use crate::controller::fair_share::Limits;
use crate::controller::leader_election::{self, Election};
use crate::controller::platforms::parse_selector_flag;
use crate::crd::build::DEFAULT_BUILDER_IMAGE;
use crate::metrics::{self, ControllerMetrics};
use crate::throttle::{Rate, ThrottleLayer};
use crate::units::{parse_duration, parse_size};

/// Flags of `kiln controller`.
#[derive(Debug, clap::Args)]
pub struct ControllerArgs {
    /// Watch Builds in this namespace only [default: every namespace].
    #[arg(long, env = "KILN_NAMESPACE")]
    pub namespace: Option<String>,

    /// Builder image for Builds that name none: rootless BuildKit with
    /// buildctl-daemonless.sh (pin it by digest in production).
    #[arg(long, env = "KILN_BUILDER_IMAGE", default_value = DEFAULT_BUILDER_IMAGE)]
    pub builder_image: String,

    /// The Kiln image, as the chart sets it: the short pod that pushes the image index of a
    /// Native multi-platform build (`kiln index push`), and the init container that
    /// receives a `source.local` Build's uploaded context (`kiln context receive`).
    #[arg(long, env = "KILN_INDEX_IMAGE", default_value = DEFAULT_INDEX_IMAGE)]
    pub index_image: String,

    /// The node labels that select the nodes of a platform, for Native multi-platform
    /// builds on clusters that label nodes their own way:
    /// `PLATFORM=KEY=VALUE[,KEY=VALUE…]`, for example
    /// linux/arm/v7=example.com/cpu=armv7. Repeatable. A platform not given is selected by
    /// kubernetes.io/os and kubernetes.io/arch.
    #[arg(long = "platform-node-selector", value_name = "PLATFORM=KEY=VALUE", value_parser = parse_selector_flag)]
    pub platform_node_selectors: Vec<(String, BTreeMap<String, String>)>,

    /// The build cache service, `http(s)://HOST[:PORT][/PATH]`; BuildKit gets
    /// --export-cache/--import-cache refs under it. No cache without it.
    #[arg(long, env = "KILN_CACHE_SERVICE", value_parser = CacheService::parse)]
    pub cache_service: Option<CacheService>,

    /// A registry mirror for builders, `REGISTRY=[http://]HOST[:PORT][/PATH]`, for example
    /// docker.io=mirror.gcr.io (avoids Docker Hub rate limits). Repeatable.
    #[arg(long = "registry-mirror", value_name = "REGISTRY=HOST", value_parser = parse_mirror)]
    pub registry_mirrors: Vec<(String, MirrorHost)>,

    /// A registry builders reach over plain HTTP, `HOST[:PORT]` (an in-cluster registry
    /// without TLS). Repeatable.
    #[arg(long = "plain-http-registry", value_name = "HOST[:PORT]", value_parser = parse_host)]
    pub plain_http_registries: Vec<String>,

    /// CPU request of builders whose Build requests none.
    #[arg(long, default_value = "500m", value_parser = parse_quantity)]
    pub builder_cpu_request: Quantity,

    /// Memory request of builders whose Build requests none.
    #[arg(long, default_value = "1Gi", value_parser = parse_quantity)]
    pub builder_memory_request: Quantity,

    /// Delay before the first retry of an infrastructure failure (eviction, lost node,
    /// image pull); it doubles on each further retry.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub retry_backoff: Duration,

    /// Longest delay between two retries.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub retry_backoff_max: Duration,

    /// Grace period of a build pod that is cancelled, superseded or cleaned up.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub pod_grace_period: Duration,

    /// How often a queued Build re-checks its concurrency group (it is also woken when a
    /// Build of its group changes).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub queue_recheck: Duration,

    /// Most builds running at once in the cluster; further Builds wait in a fair queue
    /// (a free slot goes to the namespace with the fewest running builds) [default: no
    /// limit].
    #[arg(long, env = "KILN_MAX_RUNNING_BUILDS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_running_builds: Option<u32>,

    /// Most builds running at once in each namespace [default: no limit].
    #[arg(long, env = "KILN_MAX_RUNNING_BUILDS_PER_NAMESPACE", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_running_builds_per_namespace: Option<u32>,

    /// Longest time any build attempt may run, whatever its spec.timeout says (e.g. 2h): a
    /// cluster-wide ceiling on the build pods' activeDeadlineSeconds [default: none].
    #[arg(long, value_parser = parse_max_timeout)]
    pub max_build_timeout: Option<Duration>,

    /// Largest inline build context (Dockerfile plus files), e.g. 512KiB; at most 900KiB,
    /// since it is stored in a ConfigMap.
    #[arg(long, default_value = "512KiB", value_parser = parse_inline_limit)]
    pub max_inline_context: u64,

    /// Attempts kept in status.attempts when the Build sets no
    /// spec.retention.attemptHistory.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub attempt_history: u32,

    /// How long the pod of a succeeded attempt (and its log) is kept when the Build sets
    /// no spec.retention.succeededPodTTL.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub succeeded_pod_ttl: Duration,

    /// How long the pod of a failed attempt is kept when the Build sets no
    /// spec.retention.failedPodTTL.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub failed_pod_ttl: Duration,

    /// The most of an attempt's build log kept in the cache when the attempt ends, so that
    /// `kubectl kiln logs` still reads it after the pod is gone: the tail, the cut marked
    /// (e.g. 16MiB, at most 64MiB); 0 keeps none. Needs --cache-admin-token-file.
    #[arg(long, default_value = "16MiB", value_parser = parse_log_limit)]
    pub log_max_bytes: u64,

    /// How often a Build with spec.triggers.baseImageChanged has its base image tags
    /// resolved upstream again through the cache's mirror (a HEAD, which Docker Hub does
    /// not count as a pull), give or take a tenth. Needs --cache-admin-token-file.
    #[arg(long, default_value = "1h", value_parser = parse_interval)]
    pub base_image_check_interval: Duration,

    /// The image BuildKit runs to make a Build's SBOM when spec.attestations.sbom is true
    /// (BuildKit's attest:sbom generator; it must implement BuildKit's SBOM scanner
    /// protocol).
    #[arg(long, default_value = crate::controller::config::DEFAULT_SBOM_GENERATOR_IMAGE, value_name = "IMAGE")]
    pub sbom_generator_image: String,

    /// How often the sweeper deletes orphaned pods, ConfigMaps and Secrets and expired
    /// pods (it also runs at start-up); the cache repositories of deleted namespaces are
    /// swept every tenth time.
    #[arg(long, default_value = "60s", value_parser = parse_interval)]
    pub sweep_interval: Duration,

    /// File holding the cache service's admin token: running attempts then hold leases on
    /// the cache they import, and the cache of deleted Builds and namespaces is cleaned
    /// up. Needs --cache-service.
    #[arg(long, value_name = "FILE", requires = "cache_service")]
    pub cache_admin_token_file: Option<PathBuf>,

    /// File holding the key that signs cache tokens (the cache service's token key, at
    /// least 32 random bytes): each attempt then gets a token of its own, scoped to its
    /// namespace. Needs --cache-service.
    #[arg(long, value_name = "FILE", requires = "cache_service")]
    pub cache_token_key_file: Option<PathBuf>,

    /// Most reconciles running at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: u16,

    /// Name of this controller instance on Events (set it to the pod name).
    #[arg(long, env = "POD_NAME")]
    pub instance: Option<String>,

    /// The process around the controller: HTTP endpoints and leader election.
    #[command(flatten)]
    pub serving: ServingArgs,
}

/// Flags of the controller's process rather than of its decisions: where it serves metrics
/// and health, and whether it contends for a Lease before it reconciles.
#[derive(Clone, Debug, clap::Args)]
pub struct ServingArgs {
    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, default_value = metrics::DEFAULT_HTTP_ADDR)]
    pub http_addr: SocketAddr,

    /// Reconcile only while holding a Lease, so that of several replicas exactly one
    /// works; the others stand by (and are ready). The lease is released on shutdown.
    #[arg(long)]
    pub leader_elect: bool,

    /// Namespace of the Lease [default: the pod's namespace, else the kubeconfig's].
    #[arg(long, env = "POD_NAMESPACE")]
    pub leader_election_namespace: Option<String>,

    /// Name of the Lease.
    #[arg(long, default_value = "kiln-controller")]
    pub leader_election_name: String,

    /// Most requests per second to the API server, sustained (the client's own backstop,
    /// as client-go's QPS; the API server's priority and fairness still applies). 0: no
    /// client-side limit.
    #[arg(long, env = "KILN_KUBE_QPS", default_value_t = DEFAULT_KUBE_QPS)]
    pub kube_qps: f64,

    /// Requests to the API server that may go at once above --kube-qps after a quiet
    /// spell (as client-go's Burst).
    #[arg(long, env = "KILN_KUBE_BURST", default_value_t = DEFAULT_KUBE_BURST)]
    pub kube_burst: u32,
}

/// Default of `--kube-qps`: a burst of 1,000 Builds costs about 3,000 writes in its first
/// minute (finalizer, status, pod), which this passes in well under that minute, while a
/// runaway loop is still held far below what a shared API server takes.
pub const DEFAULT_KUBE_QPS: f64 = 200.0;
/// Objects per page of the sweeps' lists.
const LIST_PAGE: u32 = 500;

/// Default of `--kube-burst`.
pub const DEFAULT_KUBE_BURST: u32 = 400;

impl ServingArgs {
    /// The client-side rate of requests to the API server these flags ask for.
    pub fn kube_rate(&self) -> Rate {
        Rate {
            qps: self.kube_qps.max(0.0),
            burst: self.kube_burst,
        }
    }
}

impl ControllerArgs {
    /// The controller configuration these flags describe.
    pub fn into_config(self) -> Config {
        let ControllerArgs {
            namespace,
            builder_image,
            index_image,
            platform_node_selectors,
            cache_service,
            registry_mirrors,
            plain_http_registries,
            builder_cpu_request,
            builder_memory_request,
            retry_backoff,
            retry_backoff_max,
            pod_grace_period,
            queue_recheck,
            max_running_builds,
            max_running_builds_per_namespace,
            max_build_timeout,
            max_inline_context,
            attempt_history,
            succeeded_pod_ttl,
            failed_pod_ttl,
            log_max_bytes,
            base_image_check_interval,
            sbom_generator_image,
            sweep_interval,
            // Read by `run`: files are I/O, the config is data.
            cache_admin_token_file: _,
            cache_token_key_file: _,
            concurrency,
            instance,
            serving: _,
        } = self;
        Config {
            builder_image,
            index_image,
            platform_node_selectors: platform_node_selectors.into_iter().collect(),
            cache_service,
            registry_mirrors: registry_mirrors.into_iter().collect(),
            plain_http_registries: plain_http_registries.into_iter().collect(),
            default_requests: [
                ("cpu".to_owned(), builder_cpu_request),
                ("memory".to_owned(), builder_memory_request),
            ]
            .into_iter()
            .collect(),
            retry_backoff,
            retry_backoff_max,
            pod_grace_period,
            queue_recheck,
            max_timeout: max_build_timeout,
            max_inline_bytes: max_inline_context,
            attempt_history,
            succeeded_pod_ttl,
            failed_pod_ttl,
            log_max_bytes,
            base_image_check_interval,
            sbom_generator_image,
            sweep_interval,
            running_limits: Limits {
                cluster: max_running_builds,
                per_namespace: max_running_builds_per_namespace,
                namespace_overrides: BTreeMap::new(),
            },
            namespace,
            concurrency,
            instance,
            list_page: Some(LIST_PAGE),
            ..Config::default()
        }
    }
}

/// Why `kiln controller` could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControllerCliError {
    /// No usable kubeconfig or in-cluster configuration.
    #[error(
        "connecting to Kubernetes (from $KUBECONFIG, ~/.kube/config or the in-cluster service account)"
    )]
    Connect(#[source] kube::Error),
    /// The admin token file could not be read.
    #[error("reading the cache admin token from {path}")]
    ReadAdminToken {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The admin token file is empty.
    #[error("the cache admin token file {0} is empty")]
    EmptyAdminToken(String),
    /// The admin API client could not be made.
    #[error("connecting to the cache service's admin API")]
    AdminClient(#[source] AdminClientError),
    /// The token key could not be loaded.
    #[error(transparent)]
    TokenKey(#[from] TokenKeyError),
    /// Tokens cover `<namespace>/…` at the cache service's root; a cache service under a
    /// path would put every repository outside them.
    #[error(
        "--cache-token-key-file needs a --cache-service at the root of its host (tokens cover <namespace>/...), not under the path of {0:?}"
    )]
    TokensNeedRootService(String),
}

/// Why a quantity or size flag was rejected.
#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    /// Not a Kubernetes quantity.
    #[error("{0:?} is not a Kubernetes quantity such as 500m, 2, 1Gi or 512Mi")]
    Quantity(String),
    /// Larger than a ConfigMap can hold.
    #[error("{0} is more than 900KiB, which a ConfigMap cannot hold with its other keys")]
    InlineTooLarge(String),
    /// More than the cache service stores of one log.
    #[error("{0} is more than 64MiB, the most of one log the cache service stores")]
    LogTooLarge(String),
    /// Not `host[:port]`.
    #[error("{0:?} is not HOST[:PORT]")]
    Host(String),
    /// A maximum build timeout under one second (`activeDeadlineSeconds` counts seconds).
    #[error("{0:?} is less than 1s, the shortest activeDeadlineSeconds")]
    TimeoutTooShort(String),
    /// Not a size or duration.
    #[error(transparent)]
    Size(#[from] crate::units::UnitsError),
    /// An interval shorter than a second.
    #[error("{0:?} is shorter than a second")]
    Interval(String),
}

fn parse_quantity(text: &str) -> Result<Quantity, FlagError> {
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_end);
    let valid_number = !number.is_empty() && number.parse::<f64>().is_ok();
    let valid_suffix = matches!(
        suffix,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    );
    if valid_number && valid_suffix {
        Ok(Quantity(text.to_owned()))
    } else {
        Err(FlagError::Quantity(text.to_owned()))
    }
}

fn parse_host(text: &str) -> Result<String, FlagError> {
    let valid = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if valid {
        Ok(text.to_owned())
    } else {
        Err(FlagError::Host(text.to_owned()))
    }
}

fn parse_interval(text: &str) -> Result<Duration, FlagError> {
    at_least_one_second(text, FlagError::Interval)
}

fn parse_max_timeout(text: &str) -> Result<Duration, FlagError> {
    at_least_one_second(text, FlagError::TimeoutTooShort)
}

/// A duration of one second or more; shorter ones are rejected with `too_short`.
fn at_least_one_second(
    text: &str,
    too_short: fn(String) -> FlagError,
) -> Result<Duration, FlagError> {
    let duration = parse_duration(text)?;
    if duration < Duration::from_secs(1) {
        return Err(too_short(text.to_owned()));
    }
    Ok(duration)
}

fn parse_inline_limit(text: &str) -> Result<u64, FlagError> {
    let bytes = parse_size(text)?;
    if bytes > 900 * 1024 {
        return Err(FlagError::InlineTooLarge(text.to_owned()));
    }
    Ok(bytes)
}

fn parse_log_limit(text: &str) -> Result<u64, FlagError> {
    let bytes = parse_size(text)?;
    if bytes > crate::cacheapi::log::MAX_LOG_BYTES {
        return Err(FlagError::LogTooLarge(text.to_owned()));
    }
    Ok(bytes)
}

/// Runs the controller against the current kubeconfig (or the in-cluster config) until
/// SIGTERM or SIGINT: then it stops taking work, lets in-flight reconciles finish, releases
/// its lease (with `--leader-elect`) and exits 0. A second signal exits at once. Build pods
/// keep running and are adopted on restart. `/metrics`, `/healthz` and `/readyz` are served
/// on `--http-addr` from start to exit.
pub async fn run(args: ControllerArgs) -> CliResult {
    let serving = args.serving.clone();
    let instance = args.instance.clone();
    let admin_token_file = args.cache_admin_token_file.clone();
    let token_key_file = args.cache_token_key_file.clone();
    let config = args.into_config();
    let admin = match (&admin_token_file, &config.cache_service) {
        (Some(path), Some(service)) => Some(admin_client(path, service)?),
        _ => None,
    };
    let token_key = match (&token_key_file, &config.cache_service) {
        (Some(_), Some(service)) if service.host.contains('/') => {
            return Err(ControllerCliError::TokensNeedRootService(service.host.clone()).into());
        }
        (Some(path), Some(_)) => Some(TokenKey::read(path).map_err(ControllerCliError::from)?),
        _ => None,
    };
    let client = throttled_client(serving.kube_rate()).await?;
    let metrics = Arc::new(ControllerMetrics::new());
    let listener = metrics::bind(serving.http_addr).await?;
    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(metrics::serve(listener, metrics.clone(), async move {
        let _ = http_stopped.await;
    }));
    let mut context = Context::new(client.clone(), config)
        .with_observer(metrics.clone())
        .with_gc_observer(metrics.clone());
    if let Some(admin) = admin {
        context = context.with_cache_admin(admin);
    }
    if let Some(key) = token_key {
        context = context.with_token_key(key);
    }

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!(
            "signal received: finishing in-flight reconciles (signal again to exit now)"
        );
        let _ = stop.send(());
        wait_for_signal().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
    let shutdown = async move {
        let _ = stopped.await;
    };
    let result: CliResult = if serving.leader_elect {
        let election = election(&serving, instance, client.default_namespace());
        leader_election::run_while_leading(client, &election, metrics.as_ref(), shutdown, |stop| {
            crate::controller::run_with(context, stop)
        })
        .await
        .map(|()| ExitCode::SUCCESS)
        .map_err(Into::into)
    } else {
        crate::controller::run_with(context, shutdown)
            .await
            .map(|()| ExitCode::SUCCESS)
            .map_err(Into::into)
    };
    let _ = http_stop.send(());
    match server.await {
        Ok(Err(error)) => {
            tracing::warn!(error = crate::report::error_chain(&error), "metrics server")
        }
        Err(error) => tracing::warn!(error = %error, "metrics server task"),
        Ok(Ok(())) => {}
    }
    result
}

/// A client of the current kubeconfig (or the in-cluster config) whose requests go at
/// most at `rate`.
async fn throttled_client(rate: Rate) -> Result<Client, ControllerCliError> {
    crate::tls::install_crypto_provider();
    let config = kube::Config::infer()
        .await
        .map_err(|e| ControllerCliError::Connect(kube::Error::InferConfig(e)))?;
    let builder =
        kube::client::ClientBuilder::try_from(config).map_err(ControllerCliError::Connect)?;
    Ok(builder.with_layer(&ThrottleLayer::new(rate)).build())
}

/// The Lease to contend for: `--leader-election-namespace` (or the client's namespace) and
/// name, as this pod (or, outside a cluster, this host and process).
fn election(serving: &ServingArgs, instance: Option<String>, client_namespace: &str) -> Election {
    let namespace = serving
        .leader_election_namespace
        .clone()
        .unwrap_or_else(|| client_namespace.to_owned());
    let identity = instance.unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "kiln".to_owned());
        format!("{host}-{}", std::process::id())
    });
    Election::new(&namespace, &serving.leader_election_name, &identity)
}

/// The admin API client of `service`, with the token read from `path` (surrounding
/// whitespace, such as the newline `echo` leaves, is not part of it).
fn admin_client(path: &Path, service: &CacheService) -> Result<AdminClient, ControllerCliError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ControllerCliError::ReadAdminToken {
            path: path.display().to_string(),
            source,
        })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(ControllerCliError::EmptyAdminToken(
            path.display().to_string(),
        ));
    }
    AdminClient::new(&service.root_url(), token).map_err(ControllerCliError::AdminClient)
}

/// Waits for SIGTERM (what Kubernetes sends) or SIGINT (Ctrl-C).
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Harness {
        #[command(flatten)]
        args: ControllerArgs,
    }

    #[test]
    fn defaults_match_the_library_defaults() {
        let mut config = Harness::try_parse_from(["kiln"])
            .unwrap()
            .args
            .into_config();
        // Set by the environment in a cluster; not a default.
        config.instance = None;
        config.namespace = None;
        // The command pages its sweeps' lists; the library's default lists at once (the
        // in-memory API server of the reconcile tests does not page).
        assert_eq!(config.list_page, Some(LIST_PAGE));
        config.list_page = None;
        // `Config` holds a token key, which cannot be compared; its `Debug` shows every
        // other field and whether a key is there.
        assert_eq!(format!("{config:?}"), format!("{:?}", Config::default()));
    }

    #[test]
    fn flags_are_parsed_into_the_config() {
        let config = Harness::try_parse_from([
            "kiln",
            "--namespace=builds",
            "--cache-service=http://kiln-cache:5000",
            "--registry-mirror=docker.io=mirror.gcr.io",
            "--registry-mirror=ghcr.io=http://kiln-cache:5000",
            "--retry-backoff=5s",
            "--max-build-timeout=2h",
            "--max-inline-context=64KiB",
            "--builder-memory-request=2Gi",
            "--succeeded-pod-ttl=10m",
            "--failed-pod-ttl=7d",
            "--attempt-history=3",
            "--sweep-interval=5m",
            "--cache-admin-token-file=/var/run/kiln/admin-token",
            "--cache-token-key-file=/var/run/kiln/token-key",
        ])
        .unwrap()
        .args
        .into_config();
        assert_eq!(config.succeeded_pod_ttl, Duration::from_secs(600));
        assert_eq!(config.failed_pod_ttl, Duration::from_secs(7 * 86_400));
        assert_eq!(config.attempt_history, 3);
        assert_eq!(config.sweep_interval, Duration::from_secs(300));
        // Turned on by the context once the files are read, not by the flags alone.
        assert!(!config.cache_leases && config.cache_token_key.is_none());
        assert_eq!(config.namespace.as_deref(), Some("builds"));
        assert!(config.cache_service.unwrap().plain_http);
        assert_eq!(
            config.registry_mirrors.keys().collect::<Vec<_>>(),
            ["docker.io", "ghcr.io"]
        );
        assert_eq!(config.retry_backoff, Duration::from_secs(5));
        assert_eq!(config.max_timeout, Some(Duration::from_secs(2 * 3600)));
        assert_eq!(config.max_inline_bytes, 64 * 1024);
        assert_eq!(config.default_requests["memory"], Quantity("2Gi".into()));
    }

    #[test]
    fn leader_election_is_off_by_default_and_names_its_lease() {
        let args = Harness::try_parse_from(["kiln"]).unwrap().args;
        assert!(!args.serving.leader_elect);
        assert_eq!(args.serving.http_addr.to_string(), "0.0.0.0:8080");
        let args = Harness::try_parse_from([
            "kiln",
            "--leader-elect",
            "--leader-election-namespace=kiln-system",
            "--leader-election-name=kiln",
            "--http-addr=127.0.0.1:9090",
            "--instance=kiln-controller-abc",
        ])
        .unwrap()
        .args;
        let election = election(&args.serving, args.instance.clone(), "default");
        assert_eq!(
            election,
            Election::new("kiln-system", "kiln", "kiln-controller-abc")
        );
        // Without a namespace flag, the client's namespace.
        let args = Harness::try_parse_from(["kiln", "--leader-elect", "--instance=x"])
            .unwrap()
            .args;
        if std::env::var_os("POD_NAMESPACE").is_none() {
            assert_eq!(
                election_namespace(&args.serving, "from-kubeconfig"),
                "from-kubeconfig"
            );
        }
    }

    fn election_namespace(serving: &ServingArgs, client_namespace: &str) -> String {
        election(serving, Some("x".into()), client_namespace).namespace
    }

    #[test]
    fn the_admin_client_reads_a_trimmed_token_and_refuses_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        let service = CacheService::parse("http://kiln-cache:5000").unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  \n").unwrap();
        assert!(matches!(
            admin_client(&path, &service),
            Err(ControllerCliError::EmptyAdminToken(_))
        ));
        std::fs::write(&path, "s3cret\n").unwrap();
        assert!(admin_client(&path, &service).is_ok());
        assert!(matches!(
            admin_client(&dir.path().join("missing"), &service),
            Err(ControllerCliError::ReadAdminToken { .. })
        ));
    }

    #[test]
    fn bad_flags_are_rejected_with_a_message() {
        for bad in [
            ["kiln", "--cache-service=kiln-cache:5000"],
            ["kiln", "--registry-mirror=docker.io"],
            ["kiln", "--builder-cpu-request=lots"],
            ["kiln", "--max-inline-context=2MiB"],
            ["kiln", "--attempt-history=0"],
            ["kiln", "--plain-http-registry=http://x"],
            ["kiln", "--http-addr=localhost"],
            ["kiln", "--sweep-interval=500ms"],
            ["kiln", "--succeeded-pod-ttl=soon"],
            // The cache files need the cache service.
            ["kiln", "--cache-admin-token-file=/x"],
            ["kiln", "--cache-token-key-file=/x"],
            ["kiln", "--max-build-timeout=500ms"],
        ] {
            assert!(Harness::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }
}
