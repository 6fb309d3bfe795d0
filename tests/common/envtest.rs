//! The real-API-server test harness (test code; does I/O: processes, files, network).
//!
//! It finds or builds `kiln-envtest` (the Go module in `tests/envtest/`, built by
//! `scripts/envtest.sh`: kube-apiserver, kube-controller-manager and an embedded etcd in
//! one binary), starts the three servers on free loopback ports with generated
//! certificates, RBAC authorization and an audit log, and hands out `kube::Client`s: the
//! admin's, or one impersonating a ServiceAccount. Helpers that work on any cluster
//! (namespaces, applying YAML, waiting for a CRD) are in `common::cluster`.
//!
//! ```ignore
//! mod common;
//! use common::{cluster, envtest};
//!
//! #[tokio::test]
//! async fn something() {
//!     let Some(cp) = envtest::shared().await else { return }; // skipped; reason printed
//!     let client = cp.client();
//!     let ns = cluster::create_namespace(&client, "something").await;
//!     // ...
//! }
//! ```
//!
//! # Guarantees
//! - **One control plane per test binary.** [`shared`] starts it on first use; every test
//!   works in its own namespace. [`ControlPlane::start`] starts a private one, stopped when
//!   it is dropped.
//! - **Nothing outlives the test process.** Dropping a [`ControlPlane`] kills its servers'
//!   process groups, reaps them and removes its directory. The shared one is never dropped:
//!   each server watches the test process (`KILN_ENVTEST_PARENT_PID`) and exits within
//!   200 ms of its end, however it ended (panic, `SIGKILL`), and etcd then removes the
//!   directory (`KILN_ENVTEST_CLEANUP_DIR`).
//! - **Never a silent skip.** Without a Go toolchain the tests print why they are skipped
//!   (to the real stderr, past libtest's capture) and pass; with `KILN_REQUIRE_ENVTEST=1`
//!   (set by `.ci/run`) a missing toolchain or a failed build fails them. A control plane
//!   that does not start always fails them, with the tail of the failing server's log.
//!
//! # Environment
//! - `KILN_ENVTEST_BIN`: the binary to use (exported by `scripts/install-test-deps.sh`
//!   through `target/kiln-tools.env`); when unset, `scripts/envtest.sh ensure` runs once
//!   per test binary, building the binary or reusing the cached one.
//! - `KILN_REQUIRE_ENVTEST=1`: fail instead of skipping when the binary is unavailable.
//! - `KILN_ENVTEST_KEEP=1`: keep the control plane's directory (logs, certificates,
//!   kubeconfig, audit log) after the tests, and print where it is.

mod audit;
mod servers;

use std::fs::File;
use std::future::Future;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use super::cluster;
pub use audit::AuditEvent;
use servers::{Layout, Ports};

/// Names the binary to use instead of running `scripts/envtest.sh ensure`.
pub const ENV_BINARY: &str = "KILN_ENVTEST_BIN";
/// When `1`, a missing toolchain or a failed build fails the tests instead of skipping them.
pub const ENV_REQUIRE: &str = "KILN_REQUIRE_ENVTEST";
/// When `1`, control-plane directories are kept after the tests for inspection.
pub const ENV_KEEP: &str = "KILN_ENVTEST_KEEP";

const START_ATTEMPTS: u32 = 3;
const ETCD_READY_TIMEOUT: Duration = Duration::from_secs(60);
// Generous: a cold kube-apiserver builds its OpenAPI and RBAC bootstrap on two busy cores.
const APISERVER_READY_TIMEOUT: Duration = Duration::from_secs(180);
const CONTROLLER_MANAGER_READY_TIMEOUT: Duration = Duration::from_secs(120);
const CRD_ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);

/// Why a control plane is unavailable or did not start.
#[derive(Debug, thiserror::Error)]
pub enum EnvtestError {
    /// No Go toolchain to build the binary with (a skip unless `KILN_REQUIRE_ENVTEST=1`).
    #[error(
        "no Go toolchain to build kiln-envtest (install Go, or point {ENV_BINARY} at a built binary)"
    )]
    NoToolchain,
    /// `scripts/envtest.sh ensure` failed (a skip unless `KILN_REQUIRE_ENVTEST=1`).
    #[error("building kiln-envtest with scripts/envtest.sh failed ({status}); its output is above")]
    BuildFailed {
        /// How the script exited.
        status: String,
    },
    /// `KILN_ENVTEST_BIN` names no executable file.
    #[error("{ENV_BINARY}={0} is not an executable file")]
    BinaryMissing(PathBuf),
    /// A file or process operation failed.
    #[error("{action}: {source}")]
    Io {
        /// What was being done.
        action: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A server exited or did not become ready in time.
    #[error("{server} did not start: {reason}\n--- last lines of {log} ---\n{tail}")]
    Start {
        /// The server's subcommand name.
        server: &'static str,
        /// What went wrong.
        reason: String,
        /// The server's log file.
        log: String,
        /// The end of that log.
        tail: String,
    },
    /// A CustomResourceDefinition to install before kube-controller-manager starts was
    /// rejected or never became Established.
    #[error("installing CRDs before kube-controller-manager: {0}")]
    Preinstall(String),
    /// The admin kubeconfig written by `kiln-envtest pki` could not be loaded.
    #[error("loading the admin kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The kubeconfig file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: kube::config::KubeconfigError,
    },
}

impl EnvtestError {
    /// The binary cannot be had on this machine: the tests skip unless required.
    fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::NoToolchain | Self::BuildFailed { .. } | Self::BinaryMissing(_)
        )
    }

    fn is_port_clash(&self) -> bool {
        matches!(self, Self::Start { tail, .. } if tail.contains("address already in use"))
    }
}

fn io_error(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> EnvtestError {
    let action = action.into();
    move |source| EnvtestError::Io { action, source }
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|value| value == "1")
}

/// Writes to the process's real stderr: libtest captures `eprintln!` of passing tests,
/// and a skip must never be silent.
fn say(message: &str) {
    let _ = writeln!(std::io::stderr(), "envtest: {message}");
}

// --- the binary ----------------------------------------------------------------------------

/// The `kiln-envtest` binary: `KILN_ENVTEST_BIN`, or what `scripts/envtest.sh ensure`
/// builds or finds in its cache (once per test binary).
pub fn binary() -> Result<PathBuf, &'static EnvtestError> {
    static BINARY: OnceLock<Result<PathBuf, EnvtestError>> = OnceLock::new();
    BINARY.get_or_init(locate_binary).as_ref().cloned()
}

fn locate_binary() -> Result<PathBuf, EnvtestError> {
    if let Some(path) = std::env::var_os(ENV_BINARY).filter(|path| !path.is_empty()) {
        let path = PathBuf::from(path);
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(EnvtestError::BinaryMissing(path))
        };
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/envtest.sh");
    say(&format!(
        "{ENV_BINARY} is not set: running scripts/envtest.sh ensure"
    ));
    // stderr passes through uncaptured, so a cold build's progress shows while it runs.
    let output = Command::new("bash")
        .arg(&script)
        .arg("ensure")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(io_error(format!("running {}", script.display())))?;
    match output.status.code() {
        Some(0) => {}
        Some(3) => return Err(EnvtestError::NoToolchain),
        _ => {
            return Err(EnvtestError::BuildFailed {
                status: output.status.to_string(),
            });
        }
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let path = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    if is_executable(&path) {
        Ok(path)
    } else {
        Err(EnvtestError::BuildFailed {
            status: format!("it printed no executable path: {stdout:?}"),
        })
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

// --- the shared control plane --------------------------------------------------------------

/// The control plane shared by every test of this test binary, started on first use,
/// with the repository's `crds/` installed before kube-controller-manager starts (see
/// [`repository_crds`]).
///
/// Returns `None` when the binary is unavailable (no Go toolchain, failed build) and
/// `KILN_REQUIRE_ENVTEST` is not `1`: the reason is printed, and the test should return
/// (pass) at once. Panics when the binary is required but unavailable, or when the control
/// plane does not start.
pub async fn shared() -> Option<&'static ControlPlane> {
    static SHARED: OnceLock<Result<ControlPlane, EnvtestError>> = OnceLock::new();
    let test = current_test();
    let binary = available_binary(&test).await?;
    let outcome = tokio::task::spawn_blocking(move || {
        SHARED.get_or_init(|| ControlPlane::start_in_thread(binary, repository_crds()))
    })
    .await
    .expect("starting the shared control plane panicked");
    match outcome {
        Ok(plane) => Some(plane),
        Err(err) => panic!("{test}: the control plane did not start: {err}"),
    }
}

/// The binary, or `None` after printing why the test `test` is skipped; panics when the
/// binary is unavailable but required. For tests that run a server of their own.
pub async fn available_binary(test: &str) -> Option<PathBuf> {
    // The first call may build for minutes: off the test's runtime.
    let found = tokio::task::spawn_blocking(binary)
        .await
        .expect("locating kiln-envtest panicked");
    match found {
        Ok(path) => Some(path),
        Err(err) if !env_flag(ENV_REQUIRE) => {
            say(&format!(
                "SKIPPED {test}: {err}. Set {ENV_REQUIRE}=1 to make this a failure."
            ));
            None
        }
        Err(err) => panic!("{test}: {err} ({ENV_REQUIRE}=1: the real-API-server tests must run)"),
    }
}

/// The running test's name: libtest names each test's thread after it, and
/// `#[tokio::test]` runs the test body on that thread.
pub fn current_test() -> String {
    std::thread::current().name().unwrap_or("a test").to_owned()
}

// --- one control plane ---------------------------------------------------------------------

/// A running etcd + kube-apiserver + kube-controller-manager, stopped when dropped.
pub struct ControlPlane {
    layout: Layout,
    /// Removes the directory on drop; `None` once kept (`KILN_ENVTEST_KEEP=1`).
    dir: Option<tempfile::TempDir>,
    kubeconfig: PathBuf,
    config: Config,
    /// The servers in start order: etcd, kube-apiserver, kube-controller-manager.
    servers: Vec<Child>,
    started_in: Duration,
}

impl ControlPlane {
    /// Starts a private control plane, stopped when the value is dropped, for a test that
    /// must not share one; most tests want [`shared`]. Like [`shared`], returns `None`
    /// after printing why when the binary is unavailable and not required, and panics
    /// when the control plane does not start.
    pub async fn start() -> Option<Self> {
        Self::start_with_crds(Vec::new()).await
    }

    /// [`ControlPlane::start`], installing the CRDs of `crds` (YAML documents) before
    /// kube-controller-manager starts, so that its garbage collector watches their kinds
    /// from the start (see [`shared`]).
    pub async fn start_with_crds(crds: Vec<String>) -> Option<Self> {
        let test = current_test();
        let binary = available_binary(&test).await?;
        let started = tokio::task::spawn_blocking(move || Self::start_in_thread(binary, crds))
            .await
            .expect("starting a control plane panicked");
        match started {
            Ok(plane) => Some(plane),
            Err(err) => panic!("{test}: the control plane did not start: {err}"),
        }
    }

    /// Starts on a thread of its own: start-up runs a small runtime of its own, which
    /// must not be nested in a caller's.
    fn start_in_thread(binary: PathBuf, crds: Vec<String>) -> Result<Self, EnvtestError> {
        std::thread::spawn(move || Self::start_blocking(&binary, &crds))
            .join()
            .expect("the control-plane starter thread panicked")
    }

    /// Starts the three servers, retrying with fresh ports when another process took one
    /// between our choosing it and a server binding it.
    fn start_blocking(binary: &Path, crds: &[String]) -> Result<Self, EnvtestError> {
        install_crypto_provider();
        let mut attempt = 1;
        loop {
            match Self::try_start(binary, crds) {
                Err(err) if attempt < START_ATTEMPTS && err.is_port_clash() => {
                    say(&format!("a port was taken, retrying with others: {err}"));
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    fn try_start(binary: &Path, crds: &[String]) -> Result<Self, EnvtestError> {
        let began = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("kiln-envtest-")
            .tempdir()
            .map_err(io_error("creating the control plane's directory"))?;
        let layout = Layout::new(dir.path(), free_ports()?);
        let status = Command::new(binary)
            .arg("pki")
            .args(layout.pki_args())
            .stdin(Stdio::null())
            .status()
            .map_err(io_error(format!("running {} pki", binary.display())))?;
        if !status.success() {
            return Err(EnvtestError::Io {
                action: format!("running {} pki", binary.display()),
                source: std::io::Error::other(status.to_string()),
            });
        }
        std::fs::write(layout.file(servers::AUDIT_POLICY), audit::POLICY)
            .map_err(io_error("writing the audit policy"))?;

        // A small runtime for start-up's own API calls; tests build their own clients.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io_error("building a tokio runtime"))?;
        let kubeconfig = layout.pki("admin.kubeconfig");
        let config = runtime.block_on(load_config(&kubeconfig))?;
        let client = runtime
            .block_on(async { Client::try_from(config.clone()) })
            .map_err(|err| EnvtestError::Io {
                action: "building the admin client".to_owned(),
                source: std::io::Error::other(err),
            })?;

        // Servers are pushed as they start, so that an error below drops (stops) them.
        let mut plane = Self {
            layout,
            dir: Some(dir),
            kubeconfig,
            config,
            servers: Vec::new(),
            started_in: Duration::ZERO,
        };

        let etcd_began = Instant::now();
        let args = plane.layout.etcd_args();
        plane.spawn(binary, "etcd", &args, true)?;
        let etcd_ready = plane.layout.file(servers::ETCD_READY);
        plane.wait_for("etcd", ETCD_READY_TIMEOUT, &runtime, || {
            let ready = etcd_ready.exists();
            async move { ready }
        })?;
        let etcd_took = etcd_began.elapsed();

        let apiserver_began = Instant::now();
        let args = plane.layout.apiserver_args();
        plane.spawn(binary, "kube-apiserver", &args, false)?;
        plane.wait_for("kube-apiserver", APISERVER_READY_TIMEOUT, &runtime, || {
            readyz(&client)
        })?;
        let apiserver_took = apiserver_began.elapsed();

        let crds_began = Instant::now();
        runtime.block_on(preinstall(&client, crds))?;
        let crds_took = crds_began.elapsed();

        // Ready once the serviceaccount controller, under its own token and bootstrap
        // role, has created the `default` namespace's ServiceAccount: that proves its
        // authentication, RBAC and informers all work.
        let controller_manager_began = Instant::now();
        let args = plane.layout.controller_manager_args();
        plane.spawn(binary, "kube-controller-manager", &args, false)?;
        let accounts = Api::<ServiceAccount>::namespaced(client.clone(), "default");
        plane.wait_for(
            "kube-controller-manager",
            CONTROLLER_MANAGER_READY_TIMEOUT,
            &runtime,
            || async { matches!(accounts.get_opt("default").await, Ok(Some(_))) },
        )?;
        let controller_manager_took = controller_manager_began.elapsed();

        plane.started_in = began.elapsed();
        say(&format!(
            "control plane at {} ready in {:.1}s (etcd {:.1}s, kube-apiserver {:.1}s, \
             {} CRD files {:.1}s, kube-controller-manager {:.1}s); files in {}",
            plane.server_url(),
            plane.started_in.as_secs_f64(),
            etcd_took.as_secs_f64(),
            apiserver_took.as_secs_f64(),
            crds.len(),
            crds_took.as_secs_f64(),
            controller_manager_took.as_secs_f64(),
            plane.dir().display(),
        ));
        Ok(plane)
    }

    fn spawn(
        &mut self,
        binary: &Path,
        server: &str,
        args: &[String],
        owns_directory: bool,
    ) -> Result<(), EnvtestError> {
        let log = self.log(server);
        let out = File::create(&log).map_err(io_error(format!("creating {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(io_error(format!("opening {}", log.display())))?;
        let mut command = Command::new(binary);
        command
            .arg(server)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // A group of its own, killed as a whole on drop; a Ctrl-C in the terminal
            // reaches only the test process, whose end the watchdog then notices.
            .process_group(0)
            .env("KILN_ENVTEST_PARENT_PID", std::process::id().to_string());
        if owns_directory && !env_flag(ENV_KEEP) {
            command.env("KILN_ENVTEST_CLEANUP_DIR", self.layout.root());
        }
        let child = command
            .spawn()
            .map_err(io_error(format!("starting {} {server}", binary.display())))?;
        self.servers.push(child);
        Ok(())
    }

    /// Polls `ready` until it is true; fails when the last-started server (`server`)
    /// exits first or `timeout` passes.
    fn wait_for<F, Fut>(
        &mut self,
        server: &'static str,
        timeout: Duration,
        runtime: &tokio::runtime::Runtime,
        mut ready: F,
    ) -> Result<(), EnvtestError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            let exited = self
                .servers
                .last_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                return Err(self.start_error(server, format!("it exited ({status})")));
            }
            if runtime.block_on(ready()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.start_error(server, format!("not ready after {timeout:?}")));
            }
            std::thread::sleep(POLL);
        }
    }

    fn start_error(&self, server: &'static str, reason: String) -> EnvtestError {
        let log = self.log(server);
        EnvtestError::Start {
            server,
            reason,
            tail: tail(&log, 40),
            log: log.display().to_string(),
        }
    }

    /// A client with the admin's identity (group `system:masters`).
    pub fn client(&self) -> Client {
        Client::try_from(self.config.clone()).expect("a client from the admin kubeconfig")
    }

    /// A client whose requests impersonate `user` in `groups` (the admin may impersonate
    /// anyone). With no groups the API server adds those of the user's kind itself.
    pub fn client_impersonating(&self, user: &str, groups: &[&str]) -> Client {
        let mut config = self.config.clone();
        config.auth_info.impersonate = Some(user.to_owned());
        config.auth_info.impersonate_groups =
            (!groups.is_empty()).then(|| groups.iter().map(|g| (*g).to_owned()).collect());
        Client::try_from(config).expect("an impersonating client")
    }

    /// A client acting as the ServiceAccount `namespace/name`
    /// (`system:serviceaccount:<namespace>:<name>`, in the groups the API server gives
    /// every ServiceAccount), so that exactly the RBAC bound to it applies.
    pub fn client_as_service_account(&self, namespace: &str, name: &str) -> Client {
        self.client_impersonating(&format!("system:serviceaccount:{namespace}:{name}"), &[])
    }

    /// The admin kubeconfig (certificates inline), for kubectl-style tools.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API server's URL, `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> String {
        self.layout.server_url()
    }

    /// The directory holding the servers' logs, certificates, etcd data and audit log.
    pub fn dir(&self) -> &Path {
        self.layout.root()
    }

    /// How long starting took, from the first file written to the last server ready.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The process ids of the servers, in start order (etcd, kube-apiserver,
    /// kube-controller-manager).
    pub fn pids(&self) -> Vec<u32> {
        self.servers.iter().map(Child::id).collect()
    }

    /// The log file of `server` (`etcd`, `kube-apiserver`, `kube-controller-manager`).
    pub fn log(&self, server: &str) -> PathBuf {
        self.layout.log(server)
    }

    /// The last `lines` lines of `server`'s log, for a failing test's message.
    pub fn log_tail(&self, server: &str, lines: usize) -> String {
        tail(&self.log(server), lines)
    }

    /// Every completed write request the API server has audited so far, in order.
    pub fn audit_events(&self) -> Vec<AuditEvent> {
        audit::read(&self.layout.file(servers::AUDIT_LOG))
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for child in self.servers.iter_mut().rev() {
            // The whole group first, then the leader through its handle, which also works
            // when the group is gone already; wait() reaps it, leaving no zombie.
            if let Ok(pgid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: kill(2) with a negative pid signals that process group; it has
                // no memory-safety preconditions.
                #[allow(unsafe_code)]
                unsafe {
                    libc::kill(-pgid, libc::SIGKILL)
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if env_flag(ENV_KEEP)
            && let Some(dir) = self.dir.take()
        {
            say(&format!("kept {}", dir.keep().display()));
        }
    }
}

async fn load_config(kubeconfig: &Path) -> Result<Config, EnvtestError> {
    let kubeconfig_error = |source| EnvtestError::Kubeconfig {
        path: kubeconfig.to_path_buf(),
        source,
    };
    let file = Kubeconfig::read_from(kubeconfig).map_err(kubeconfig_error)?;
    let mut config = Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .map_err(kubeconfig_error)?;
    config.default_namespace = "default".to_owned();
    Ok(config)
}

/// The YAML files in the repository's `crds/` directory (sorted by name; none when it
/// does not exist): the shared control plane installs them before kube-controller-manager
/// starts.
///
/// Why: the garbage collector learns of new kinds through discovery every 30 seconds
/// (hard-coded in kube-controller-manager). Objects owned by a custom resource whose CRD
/// was installed after it started are collected only after that resync, up to ~40 s late
/// (measured); CRDs installed before it starts are watched from the first moment, as in a
/// cluster where Helm installed the CRDs before anything used them.
pub fn repository_crds() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.extension()
                .is_some_and(|ext| ext == "yaml" || ext == "yml")
        })
        .collect();
    files.sort();
    files
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .collect()
}

/// Applies `crds` and waits until every CRD among them is Established.
async fn preinstall(client: &Client, crds: &[String]) -> Result<(), EnvtestError> {
    let mut names = Vec::new();
    for yaml in crds {
        let applied = cluster::apply_yaml(client, yaml, None)
            .await
            .map_err(|err| EnvtestError::Preinstall(err.to_string()))?;
        names.extend(
            applied
                .iter()
                .filter(|object| {
                    object
                        .types
                        .as_ref()
                        .is_some_and(|types| types.kind == "CustomResourceDefinition")
                })
                .filter_map(|object| object.metadata.name.clone()),
        );
    }
    for name in names {
        cluster::crd_established(client, &name, CRD_ESTABLISHED_TIMEOUT)
            .await
            .map_err(EnvtestError::Preinstall)?;
    }
    Ok(())
}

/// Makes ring the process's TLS provider (once; later calls are no-ops). The test build
/// enables both of rustls's providers (a dev-dependency turns on aws-lc-rs), and rustls
/// then refuses to choose one by itself.
pub fn install_crypto_provider() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        // Err means another provider is installed already, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Whether `/readyz` answers `ok`: every post-start hook, RBAC bootstrap included, done.
async fn readyz(client: &Client) -> bool {
    let Ok(request) = http::Request::get("/readyz").body(Vec::new()) else {
        return false;
    };
    client
        .request_text(request)
        .await
        .is_ok_and(|body| body.trim() == "ok")
}

/// Three distinct free loopback ports, held open together while choosing so that they
/// differ; a server may still lose one to another process before binding it, which
/// `start_blocking` retries.
fn free_ports() -> Result<Ports, EnvtestError> {
    let listeners = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_error("choosing free loopback ports"))?;
    let ports = listeners
        .iter()
        .map(|listener| listener.local_addr().map(|addr| addr.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_error("choosing free loopback ports"))?;
    Ok(Ports {
        etcd_client: ports[0],
        etcd_peer: ports[1],
        apiserver: ports[2],
    })
}

fn tail(path: &Path, lines: usize) -> String {
    let Ok(text) = std::fs::read_to_string(path) else {
        return format!("(no log at {})", path.display());
    };
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
