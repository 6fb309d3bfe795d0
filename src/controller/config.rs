//! Controller-wide settings: the [`Config`] that `decide` and the pod builder read (data
//! and the token key, no I/O), the cache service and registry mirrors it names, and why a setting was
//! rejected.
//!
//! New controller-wide settings go into [`Config`] (with a flag in `kiln controller`).

use super::fair_share::Limits;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::cacheapi::token::TokenKey;
use crate::crd::build::DEFAULT_BUILDER_IMAGE;

/// The image of index pods when `kiln controller --index-image` names none: the Kiln image
/// of this version, as the chart names it by default.
pub const DEFAULT_INDEX_IMAGE: &str = concat!("kiln:", env!("CARGO_PKG_VERSION"));

/// Controller-wide settings, from `kiln controller`'s flags. `decide` and the pod builder
/// read it; nothing in it does I/O.
#[derive(Clone, Debug)]
pub struct Config {
    /// Builder image for Builds that do not name one.
    pub builder_image: String,
    /// The Kiln image: the pod that pushes the image index of a `Native` multi-platform
    /// build (`kiln index push`) and the `context` init container of a `source.local`
    /// Build (`kiln context receive`) run it.
    pub index_image: String,
    /// Node labels that select the nodes of a platform, by platform (`linux/arm64`), for
    /// clusters that label nodes their own way; a platform not listed is selected by
    /// `kubernetes.io/os` and `kubernetes.io/arch`.
    pub platform_node_selectors: BTreeMap<String, BTreeMap<String, String>>,
    /// The build cache service; no cache flags are given to BuildKit without it.
    pub cache_service: Option<CacheService>,
    /// Registry mirrors, by upstream registry (`docker.io` → `mirror.example.com`), written
    /// into the builder's BuildKit configuration.
    pub registry_mirrors: BTreeMap<String, MirrorHost>,
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
    /// service's admin API. [`Context::with_cache_admin`](super::context::Context::with_cache_admin) turns it on.
    pub cache_leases: bool,
    /// How long a lease holds after each renewal; it is renewed once half of it is left.
    pub lease_ttl: Duration,
    /// The most bytes of an attempt's build log kept in the cache when the attempt ends (the
    /// tail; the cut is marked); 0 stores no logs. Logs are stored through the admin API,
    /// so only with [`Config::cache_leases`] on.
    pub log_max_bytes: u64,
    /// How often a Build with `spec.triggers.baseImageChanged` has its base image tags
    /// resolved upstream again (give or take a tenth, spread by UID).
    pub base_image_check_interval: Duration,
    /// The image BuildKit runs to scan a Build's image for its SBOM (`spec.attestations.sbom`),
    /// BuildKit's `attest:sbom` generator.
    pub sbom_generator_image: String,
    /// The key that signs cache tokens: with one, each attempt of a Build that uses the
    /// cache gets a token of its own, minted into a Secret. [`Context::with_token_key`](super::context::Context::with_token_key)
    /// sets it.
    pub cache_token_key: Option<TokenKey>,
    /// Limits on running builds, for the cluster and per namespace, and the fair queue in
    /// front of them; no limit by default.
    pub running_limits: Limits,
    /// Watch only this namespace; every namespace when `None`.
    pub namespace: Option<String>,
    /// Most reconciles running at once.
    pub concurrency: u16,
    /// Objects per page of the sweeps' lists (`None`: one list), so that the whole answer
    /// for 10,000 pods is never held at once. `kiln controller` pages by 500.
    pub list_page: Option<u32>,
    /// Name of this controller instance on Events (the pod name in a cluster).
    pub instance: Option<String>,
}

/// The default of [`Config::sbom_generator_image`]: BuildKit's own default scanner.
pub const DEFAULT_SBOM_GENERATOR_IMAGE: &str = "docker.io/docker/buildkit-syft-scanner:stable-1";

/// The default of [`Config::log_max_bytes`]: 16 MiB.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 16 << 20;

impl Default for Config {
    fn default() -> Self {
        Self {
            builder_image: DEFAULT_BUILDER_IMAGE.to_owned(),
            index_image: DEFAULT_INDEX_IMAGE.to_owned(),
            platform_node_selectors: BTreeMap::new(),
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
            log_max_bytes: DEFAULT_LOG_MAX_BYTES,
            base_image_check_interval: Duration::from_secs(3600),
            sbom_generator_image: DEFAULT_SBOM_GENERATOR_IMAGE.to_owned(),
            cache_token_key: None,
            running_limits: Limits::default(),
            namespace: None,
            concurrency: 16,
            list_page: None,
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
    /// `--platform-node-selector` is not `PLATFORM=KEY=VALUE[,KEY=VALUE…]`.
    #[error(
        "platform node selector {0:?} is not PLATFORM=KEY=VALUE[,KEY=VALUE…], for example linux/arm64=kubernetes.io/arch=arm64,pool=arm"
    )]
    BadPlatformSelector(String),
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

/// Where builders pull one upstream registry's images from instead (one `--registry-mirror`),
/// written into the BuildKit configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorHost {
    /// `host[:port][/path]` of the mirror.
    pub host: String,
    /// Whether the mirror speaks plain HTTP.
    pub plain_http: bool,
}

/// Parses one `--registry-mirror REGISTRY=[http(s)://]HOST[:PORT][/PATH]`.
pub fn parse_mirror(text: &str) -> Result<(String, MirrorHost), ConfigError> {
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
        MirrorHost {
            host: host.to_owned(),
            plain_http,
        },
    ))
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
                MirrorHost {
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
}
