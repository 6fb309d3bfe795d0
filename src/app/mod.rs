//! The command line: clap definitions, dispatch to each command's `run`, and what each
//! prints (the edge where typed errors become messages for people). Nothing in the library
//! imports this module.
//!
//! | file | command |
//! | --- | --- |
//! | [`controller`] | `kiln controller` |
//! | [`crd`] | `kiln crd` |
//! | [`serve`] | `kiln cache serve` |
//! | [`cache`] | `kiln cache du\|prune\|verify` on a store directory, or through [`cache_online`] |
//! | [`cache_online`] | the same through a running cache service's admin API |
//! | [`plugin`] | `kubectl kiln …` (also `kiln plugin …`) |
//! | [`index`] | `kiln index push`: a multi-platform image's index, pushed at the output tag (and signed) |
//! | [`pod_result`] | what `kiln index push` and `kiln sign` report to the controller (the termination message) |
//! | [`sign`] | `kiln sign`: a pushed image's cosign signature |

pub mod cache;
pub mod cache_online;
pub mod context;
pub mod controller;
pub mod crd;
pub mod index;
pub mod plugin;
pub mod pod_result;
pub mod serve;
pub mod sign;

use std::error::Error;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::report::error_chain;
use crate::telemetry::{self, LogFormat};

/// What a command returns at the edge: an exit code, or an error whose whole `source()`
/// chain is printed.
pub type CliResult = Result<ExitCode, Box<dyn Error + Send + Sync + 'static>>;

/// Kiln: container image builds as Kubernetes pods, with a verified build cache.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, propagate_version = true)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "KILN_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The top-level commands.
// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller against the current kubeconfig (or in-cluster config).
    Controller(controller::ControllerArgs),
    /// Print the CustomResourceDefinitions as YAML (what `crds/` holds), or write every
    /// copy the repository keeps.
    Crd(CrdArgs),
    /// The build cache: serve it, or inspect and repair a store.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// The kubectl plugin's commands (what `kubectl kiln …` runs when this binary is on
    /// PATH as `kubectl-kiln`).
    Plugin(plugin::PluginArgs),
    /// Multi-platform image indexes.
    #[command(subcommand)]
    Index(IndexCommand),
    /// Build contexts of Builds with `spec.source.local`.
    #[command(subcommand)]
    Context(ContextCommand),
    /// Sign a pushed image with a key, in the format `cosign verify --key` checks, and push
    /// the signature beside it.
    Sign(sign::SignArgs),
}

/// Arguments of `kiln crd`.
#[derive(Debug, Args)]
pub struct CrdArgs {
    /// Instead of printing, write the CRDs to every place a repository checkout at this
    /// directory keeps them (`crds/`, `config/crd/`, `charts/kiln/crds/`).
    #[arg(long, value_name = "REPO_ROOT")]
    pub write: Option<std::path::PathBuf>,
}

/// `kiln cache …` commands.
#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Serve the cache store as an OCI registry (the main job without a cluster).
    Serve(Box<serve::ServeArgs>),
    /// Show disk usage of the store, in the style of `buildctl du`.
    Du(cache::DuArgs),
    /// Remove cache entries by policy.
    Prune(cache::PruneArgs),
    /// Rehash every blob, quarantine mismatches and check every manifest's references.
    Verify(cache::VerifyArgs),
}

/// `kiln index …` commands.
#[derive(Debug, Subcommand)]
pub enum IndexCommand {
    /// Push the OCI image index of per-platform manifests (already pushed by digest to the
    /// image's repository) at the image's tag, and write its digest to the termination log.
    Push(index::PushArgs),
}

/// `kiln context …` commands.
#[derive(Debug, Subcommand)]
pub enum ContextCommand {
    /// Receive a Build's local context (from the cache, or uploaded by `kubectl kiln build
    /// --local`), keep it in the cache and unpack it: the build pod's `context` init
    /// container.
    Receive(context::ReceiveArgs),
}

/// The name under which kubectl finds its plugin: invoked as this, the binary is
/// `kubectl kiln`.
pub const KUBECTL_PLUGIN_NAME: &str = "kubectl-kiln";

/// Whether `argv0` (the program name) invokes the kubectl plugin: its file name is
/// `kubectl-kiln` (or `kubectl-kiln.exe`).
pub fn is_kubectl_plugin(argv0: &std::ffi::OsStr) -> bool {
    std::path::Path::new(argv0)
        .file_stem()
        .is_some_and(|stem| stem == KUBECTL_PLUGIN_NAME)
}

/// Parses `std::env::args` (as `kubectl kiln` when invoked as `kubectl-kiln`), runs the
/// command and turns its result into an exit code.
pub fn main() -> ExitCode {
    let plugin = std::env::args_os()
        .next()
        .is_some_and(|argv0| is_kubectl_plugin(&argv0));
    if plugin {
        let cli = plugin::KubectlKiln::parse();
        // The plugin prints for people on stdout; only warnings go to the log.
        telemetry::init(LogFormat::Text, "warn");
        return execute(plugin::run(cli.args));
    }
    let cli = Cli::parse();
    telemetry::init(cli.log_format, "info");
    execute(run(cli.command))
}

/// Runs `command` on a new runtime and prints its error chain, if any.
fn execute(command: impl std::future::Future<Output = CliResult>) -> ExitCode {
    let result = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(command),
        Err(err) => Err(Box::new(err) as _),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", error_chain(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Runs one command.
pub async fn run(command: Command) -> CliResult {
    match command {
        Command::Controller(args) => controller::run(args).await,
        Command::Crd(args) => crd::run(args).await,
        Command::Cache(CacheCommand::Serve(args)) => serve::run_serve(*args).await,
        Command::Cache(CacheCommand::Du(args)) => cache::run_du(args).await,
        Command::Cache(CacheCommand::Prune(args)) => cache::run_prune(args).await,
        Command::Cache(CacheCommand::Verify(args)) => cache::run_verify(args).await,
        Command::Plugin(args) => plugin::run(args).await,
        Command::Index(IndexCommand::Push(args)) => index::run_push(args).await,
        Command::Context(ContextCommand::Receive(args)) => context::run_receive(args).await,
        Command::Sign(args) => sign::run(args).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        plugin::KubectlKiln::command().debug_assert();
    }

    #[test]
    fn the_plugin_is_recognised_by_its_program_name() {
        for (argv0, plugin) in [
            ("kubectl-kiln", true),
            ("/usr/local/bin/kubectl-kiln", true),
            ("kubectl-kiln.exe", true),
            ("kiln", false),
            ("/usr/local/bin/kiln", false),
            ("kubectl-kilnx", false),
        ] {
            assert_eq!(is_kubectl_plugin(argv0.as_ref()), plugin, "{argv0}");
        }
    }
}
