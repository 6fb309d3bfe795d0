//! `kubectl kiln`: the kubectl plugin, i.e. the `kiln` binary invoked as `kubectl-kiln` (or
//! as `kiln plugin`): build a local directory, list Builds, show one's status, print its
//! logs, cancel it, request a rerun, and show the cache's disk usage (the edge: flags,
//! kubeconfig, stdout).
//!
//! | file | holds | I/O |
//! | --- | --- | --- |
//! | [`render`](crate::plugin::render) | the tables and reports it prints | pure |
//! | [`api`](crate::plugin::api) | reads and writes of Builds, Events and pod logs; cancel and rerun decisions; which pod's log to read | API |
//! | [`forward`](crate::plugin::forward) | the cache admin API through a port-forward, with the token from its Secret | API + loopback |
//! | [`local`](crate::plugin::local) | `build --local`: the Build made from the flags, which pod receives the context, what its answers mean, the progress lines | pure |
//! | [`upload`](crate::plugin::upload) | `build --local`: packing the directory, creating the Build, the chunked upload through `pods/proxy`, `--follow` | API + filesystem |
//! | [`error`](crate::plugin::error) | one error enum | — |
//!
//! Install it by putting the binary on `PATH` under the name `kubectl-kiln` (a symlink
//! will do); kubectl then runs it for `kubectl kiln …`.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::app::CliResult;
use crate::cacheapi::client::AdminClient;
use crate::controller::podstate::BUILD_CONTAINER;
use crate::crd::{Phase, StoredLog};
use crate::plugin::api::{CancelRequest, ListScope, LogRequest};
use crate::plugin::error::PluginError;
use crate::plugin::forward::CacheTarget;
use crate::plugin::local::{DEFAULT_POLL, DEFAULT_WAIT, LocalBuildArgs, parse_build_arg};
use crate::plugin::upload::Console;

/// `kubectl kiln`: Kiln's Builds from kubectl.
#[derive(Debug, clap::Parser)]
#[command(
    name = "kubectl-kiln",
    bin_name = "kubectl kiln",
    version,
    about = "Kiln's Builds from kubectl: build a local directory, list, status, logs, cancel, rerun, and the cache's disk usage."
)]
pub struct KubectlKiln {
    /// The command and its flags.
    #[command(flatten)]
    pub args: PluginArgs,
}

/// The plugin's flags and command (also `kiln plugin …`).
#[derive(Debug, clap::Args)]
pub struct PluginArgs {
    /// Where the cluster is.
    #[command(flatten)]
    pub kube: KubeFlags,
    /// The command.
    #[command(subcommand)]
    pub command: PluginCommand,
}

/// The cluster flags kubectl users expect.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct KubeFlags {
    /// Namespace of the Build [default: the kubeconfig context's namespace].
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// The kubeconfig context to use [default: the current context].
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Path to the kubeconfig file [default: $KUBECONFIG, then ~/.kube/config].
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
}

/// `kubectl kiln` commands.
#[derive(Debug, clap::Subcommand)]
pub enum PluginCommand {
    /// Build an image from a local directory.
    ///
    /// Packs the directory (honouring its .dockerignore), creates a Build that declares the
    /// packed context by digest, and uploads the context to the build pod through the API
    /// server (nothing is sent when the namespace's cache already has it). Needs `get` and
    /// `create` on pods/proxy in the namespace (see "Local builds" in docs/build-api.md).
    Build(BuildArgs),
    /// List Builds: phase, reason, platforms pushed, attempt, duration, pushed digest and
    /// age.
    List(ListArgs),
    /// Show a Build: phase, conditions, attempts, its platforms when it builds one pod per
    /// platform, Events and, when its attempt failed, the last lines of the failed pod's log.
    Status(NameArgs),
    /// Print the log of a Build's attempt (the current one unless --attempt says); for a
    /// Build that builds one pod per platform, of the pod --platform chooses.
    Logs(LogsArgs),
    /// Cancel a Build: its pod is deleted with a grace period and it ends Cancelled. A
    /// finished Build is left alone.
    Cancel(NameArgs),
    /// Start a new attempt of a Build without changing its spec (sets the kiln.dev/rerun
    /// annotation; an attempt in flight is superseded, a cancel request is cleared).
    Rerun(NameArgs),
    /// The build cache service.
    #[command(subcommand)]
    Cache(PluginCacheCommand),
}

/// Flags of `build`.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// The directory to build: the build context.
    #[arg(long, value_name = "DIR")]
    pub local: PathBuf,
    /// The Dockerfile, as a path relative to DIR.
    #[arg(long, value_name = "PATH", default_value = crate::crd::build::DEFAULT_DOCKERFILE)]
    pub dockerfile: String,
    /// The build stage to stop at.
    #[arg(long, value_name = "STAGE")]
    pub target: Option<String>,
    /// A build argument (`ARG` value), NAME=VALUE; repeat for more.
    #[arg(long = "build-arg", value_name = "NAME=VALUE", value_parser = parse_build_arg)]
    pub build_args: Vec<(String, String)>,
    /// A target platform, os/arch[/variant]; repeat (or separate with commas) for a
    /// multi-platform image.
    #[arg(long = "platform", value_name = "PLATFORM", value_delimiter = ',')]
    pub platforms: Vec<String>,
    /// The image reference to push, with an optional tag.
    #[arg(long, value_name = "REF")]
    pub image: String,
    /// A Secret of type kubernetes.io/dockerconfigjson with the push credentials.
    #[arg(long, value_name = "SECRET")]
    pub push_secret: Option<String>,
    /// Name of the Build [default: generated from DIR's name].
    #[arg(long)]
    pub name: Option<String>,
    /// The most file contents the context may hold (2GiB, 500MB, …); a larger one is
    /// refused with its largest files named.
    #[arg(long, value_name = "SIZE", default_value = "2GiB", value_parser = crate::units::parse_size)]
    pub max_size: u64,
    /// After the upload, stream the build's log and wait for it to end; exit 1 unless it
    /// succeeds.
    #[arg(long)]
    pub follow: bool,
}

/// Flags of `list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// List Builds of every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
}

/// A Build's name.
#[derive(Debug, clap::Args)]
pub struct NameArgs {
    /// Name of the Build.
    pub name: String,
}

/// Flags of `logs`.
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// Name of the Build.
    pub name: String,
    /// Follow the log until the container ends (waits for it to start).
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// The attempt (see `status`) [default: the current attempt].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub attempt: Option<u32>,
    /// The container: `build`, or `fetch-context` (the download of an inline or OCI context).
    /// On the index pod (`--platform index`), `build` reads its one container, `index`.
    #[arg(short = 'c', long, default_value = BUILD_CONTAINER)]
    pub container: String,
    /// The pod of a natively built multi-platform attempt (one pod per platform, then one
    /// that pushes the image index): a platform of the Build (`linux/arm64`, or
    /// `linux-arm64`), or `index` for the index pod. Such an attempt needs it; the error
    /// lists the choices.
    ///
    /// For the current attempt, the platform's current pod is read from the Build's status,
    /// retries included. For an older attempt, it is the platform's first pod
    /// (`<build>-<attempt>-<os>-<arch>`): the pods of a retried platform are recorded only
    /// while their attempt is current, so read a later one with `kubectl logs
    /// <build>-<attempt>-<os>-<arch>-<try>`.
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,
    /// Only the last N lines.
    #[arg(long, value_name = "N")]
    pub tail: Option<i64>,
    /// Where Kiln's cache runs: once the pod is gone, the log kept there is read through
    /// the cache's admin API.
    #[command(flatten)]
    pub cache: CacheFlags,
}

/// `kubectl kiln cache …` commands.
#[derive(Debug, clap::Subcommand)]
pub enum PluginCacheCommand {
    /// Disk usage of the cache service (through its admin API): totals and repositories.
    Du(CacheDuArgs),
}

/// Flags of `cache du`.
#[derive(Debug, clap::Args)]
pub struct CacheDuArgs {
    /// Where the cache service runs.
    #[command(flatten)]
    pub cache: CacheFlags,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// How to reach the cache service's admin API from a workstation.
#[derive(Debug, Clone, clap::Args)]
pub struct CacheFlags {
    /// Namespace Kiln is installed in.
    #[arg(long, default_value = "kiln-system")]
    pub cache_namespace: String,
    /// The cache Service (`<release>-cache` with the Helm chart).
    #[arg(long, default_value = "kiln-cache")]
    pub cache_service: String,
    /// The Secret with the admin token (`<release>-cache-admin-token` with the Helm chart).
    #[arg(long, default_value = "kiln-cache-admin-token")]
    pub admin_token_secret: String,
    /// The key of the admin token in that Secret.
    #[arg(long, default_value = "token")]
    pub admin_token_key: String,
    /// Talk to this URL instead of forwarding a port to the cache pod.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// Read the admin token from this file instead of the Secret.
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
}

/// Connects with the kubeconfig the flags name (or `$KUBECONFIG`, `~/.kube/config`, the
/// in-cluster service account) and returns the client and the namespace to work in.
pub async fn connect(flags: &KubeFlags) -> Result<(Client, String), PluginError> {
    let failed = |source: Box<dyn std::error::Error + Send + Sync>| PluginError::Kubeconfig {
        context: flags.context.clone(),
        source,
    };
    let options = KubeConfigOptions {
        context: flags.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match (&flags.kubeconfig, &flags.context) {
        (Some(path), _) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| failed(Box::new(e)))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| failed(Box::new(e)))?
        }
        (None, Some(_)) => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| failed(Box::new(e)))?,
        (None, None) => kube::Config::infer()
            .await
            .map_err(|e| failed(Box::new(e)))?,
    };
    let namespace = flags
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(|e| failed(Box::new(e)))?;
    Ok((client, namespace))
}

/// Runs one plugin command.
pub async fn run(args: PluginArgs) -> CliResult {
    let PluginArgs { kube, command } = args;
    let mut stdout = std::io::stdout();
    let now = Timestamp::now();
    if let PluginCommand::Cache(PluginCacheCommand::Du(args)) = command {
        cache_du(&kube, args, now, &mut stdout).await?;
        return Ok(ExitCode::SUCCESS);
    }
    if let PluginCommand::Build(args) = &command {
        crate::plugin::upload::check_context(&args.local, &args.dockerfile)?;
    }
    let (client, namespace) = connect(&kube).await?;
    match command {
        PluginCommand::Build(args) => return build(client, &namespace, args, &mut stdout).await,
        PluginCommand::List(ListArgs { all_namespaces }) => {
            let scope = if all_namespaces {
                ListScope::All
            } else {
                ListScope::Namespace(namespace.clone())
            };
            let builds = crate::plugin::api::list_builds(&client, &scope).await?;
            if builds.is_empty() {
                match scope {
                    ListScope::All => eprintln!("No Builds found."),
                    ListScope::Namespace(ns) => eprintln!("No Builds found in namespace {ns}."),
                }
            } else {
                print(
                    &mut stdout,
                    &crate::plugin::render::build_table(&builds, all_namespaces, now),
                )?;
            }
        }
        PluginCommand::Status(NameArgs { name }) => {
            let report = crate::plugin::api::status_report(&client, &namespace, &name).await?;
            print(
                &mut stdout,
                &crate::plugin::render::status_report(&report, now),
            )?;
        }
        PluginCommand::Logs(LogsArgs {
            name,
            follow,
            attempt,
            container,
            tail,
            platform,
            cache,
        }) => {
            let request = LogRequest {
                attempt,
                follow,
                container,
                tail,
            };
            let read = crate::plugin::api::logs_of(
                &client,
                &namespace,
                &name,
                &request,
                platform.as_deref(),
                &mut stdout,
            )
            .await;
            match read {
                Err(PluginError::LogStored { pod, attempt, log }) => {
                    eprintln!(
                        "pod {pod} of attempt {attempt} is gone: reading its log from Kiln's cache ({}:{})",
                        log.repository, log.tag
                    );
                    stored_log(client, &kube, &cache, attempt, &log, tail, &mut stdout).await?;
                }
                other => other?,
            }
        }
        PluginCommand::Cancel(NameArgs { name }) => {
            match crate::plugin::api::cancel(&client, &namespace, &name).await? {
                CancelRequest::Cancel => print(
                    &mut stdout,
                    &format!(
                        "build.kiln.dev/{name} cancel requested: its pod is deleted with a grace period and it ends Cancelled\n"
                    ),
                )?,
                CancelRequest::AlreadyRequested => print(
                    &mut stdout,
                    &format!("build.kiln.dev/{name} cancel was already requested\n"),
                )?,
                CancelRequest::Finished(phase) => {
                    eprintln!(
                        "Build {namespace}/{name} already finished ({}): nothing to cancel; `kubectl kiln rerun {name}` starts a new attempt",
                        phase.as_str()
                    );
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        PluginCommand::Rerun(NameArgs { name }) => {
            let rerun = crate::plugin::api::rerun(&client, &namespace, &name, now).await?;
            let mut message = format!(
                "build.kiln.dev/{name} rerun requested ({}={})",
                crate::crd::build::RERUN_ANNOTATION,
                rerun.token
            );
            if matches!(rerun.was, Some(Phase::Pending | Phase::Running)) {
                message.push_str("; the attempt in flight is superseded");
            }
            if rerun.uncancelled {
                message.push_str("; spec.cancel was cleared");
            }
            message.push('\n');
            print(&mut stdout, &message)?;
        }
        PluginCommand::Cache(PluginCacheCommand::Du(args)) => {
            cache_du(&kube, args, now, &mut stdout).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `build --local`: everything but the exit code is `crate::plugin::upload`'s.
async fn build(
    client: Client,
    namespace: &str,
    args: BuildArgs,
    stdout: &mut (dyn std::io::Write + Send),
) -> CliResult {
    let BuildArgs {
        local,
        dockerfile,
        target,
        build_args,
        platforms,
        image,
        push_secret,
        name,
        max_size,
        follow,
    } = args;
    let args = LocalBuildArgs {
        dir: local,
        dockerfile,
        target,
        build_args,
        platforms,
        image,
        push_secret,
        name,
        max_size,
        follow,
        wait: DEFAULT_WAIT,
        poll: DEFAULT_POLL,
    };
    let mut stderr = std::io::stderr();
    let err_is_terminal = stderr.is_terminal();
    let mut console = Console {
        out: stdout,
        err: &mut stderr,
        err_is_terminal,
    };
    let outcome =
        crate::plugin::upload::build_local(client, namespace, &args, &mut console).await?;
    Ok(if crate::plugin::upload::succeeded(&outcome) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `cache du`: needs the cluster only for what the flags do not give (the token, the
/// forward).
async fn cache_du(
    kube: &KubeFlags,
    args: CacheDuArgs,
    now: Timestamp,
    out: &mut dyn std::io::Write,
) -> Result<(), PluginError> {
    let CacheDuArgs { cache, json } = args;
    let mut client = None;
    // The forward lives until the report is read.
    let (admin, _forward) = admin_session(&mut client, kube, &cache).await?;
    let report = admin.du().await?;
    let text = if json {
        let mut text = serde_json::to_string_pretty(&report).unwrap_or_default();
        text.push('\n');
        text
    } else {
        crate::cacheapi::render::du(&report, u64::try_from(now.as_second()).unwrap_or(0))
    };
    print(out, &text)
}

/// A client of the cache's admin API, through a port forwarded to the cache pod unless
/// `--server` names it (the forward, when there is one, lives as long as it is held).
async fn admin_session(
    client: &mut Option<Client>,
    kube: &KubeFlags,
    flags: &CacheFlags,
) -> Result<(AdminClient, Option<crate::plugin::forward::Forward>), PluginError> {
    let CacheFlags {
        cache_namespace,
        cache_service,
        admin_token_secret,
        admin_token_key,
        server,
        admin_token_file,
    } = flags.clone();
    let target = CacheTarget {
        namespace: cache_namespace,
        service: cache_service,
        admin_secret: admin_token_secret,
        admin_secret_key: admin_token_key,
    };
    let token = match admin_token_file {
        Some(path) => std::fs::read_to_string(&path)
            .map(|t| t.trim_end().to_owned())
            .map_err(|source| PluginError::AdminTokenFile {
                path: path.display().to_string(),
                source,
            })?,
        None => {
            crate::plugin::forward::admin_token(connected(client, kube).await?, &target).await?
        }
    };
    let (url, forward) = match server {
        Some(url) => (url, None),
        None => {
            let forward =
                crate::plugin::forward::forward(connected(client, kube).await?, &target).await?;
            (forward.url.clone(), Some(forward))
        }
    };
    Ok((AdminClient::new(&url, token)?, forward))
}

/// Prints the stored log of an attempt whose pod is gone, as the pod would have.
async fn stored_log(
    client: Client,
    kube: &KubeFlags,
    flags: &CacheFlags,
    attempt: u32,
    log: &StoredLog,
    tail: Option<i64>,
    out: &mut dyn std::io::Write,
) -> Result<(), PluginError> {
    let mut client = Some(client);
    let (admin, _forward) = admin_session(&mut client, kube, flags).await.map_err(|e| {
        PluginError::StoredLogUnreadable {
            attempt,
            reference: format!("{}:{}", log.repository, log.tag),
            cause: crate::report::error_chain(&e),
        }
    })?;
    let bytes = crate::plugin::api::read_stored_log(&admin, attempt, log).await?;
    out.write_all(crate::plugin::api::last_lines(&bytes, tail))
        .map_err(PluginError::Write)
}

/// The client in `slot`, connecting first if there is none yet.
async fn connected<'a>(
    slot: &'a mut Option<Client>,
    kube: &KubeFlags,
) -> Result<&'a Client, PluginError> {
    let client = match slot.take() {
        Some(client) => client,
        None => connect(kube).await?.0,
    };
    Ok(slot.insert(client))
}

fn print(out: &mut dyn std::io::Write, text: &str) -> Result<(), PluginError> {
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(PluginError::Write)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn parse(args: &[&str]) -> Result<BuildArgs, String> {
        let mut argv = vec!["kubectl-kiln", "build"];
        argv.extend_from_slice(args);
        match KubectlKiln::try_parse_from(argv) {
            Ok(KubectlKiln {
                args:
                    PluginArgs {
                        command: PluginCommand::Build(build),
                        ..
                    },
            }) => Ok(build),
            Ok(other) => Err(format!("not build: {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn build_flags_parse_into_the_local_build() {
        let args = parse(&[
            "--local",
            "./app",
            "--image",
            "registry.example.com/team/app:dev",
            "--build-arg",
            "A=1",
            "--build-arg",
            "B=x=y",
            "--platform",
            "linux/amd64,linux/arm64",
            "--platform",
            "linux/s390x",
            "--max-size",
            "1GiB",
            "--follow",
        ])
        .unwrap();
        assert_eq!(args.local, PathBuf::from("./app"));
        assert_eq!(args.dockerfile, "Dockerfile");
        assert_eq!(
            args.build_args,
            [("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        assert_eq!(
            args.platforms,
            ["linux/amd64", "linux/arm64", "linux/s390x"]
        );
        assert_eq!(args.max_size, 1 << 30);
        assert!(args.follow);
        let defaults = parse(&["--local", ".", "--image", "app"]).unwrap();
        assert_eq!(defaults.max_size, 2 << 30);
        assert!(!defaults.follow);
        assert_eq!(defaults.name, None);
    }

    #[test]
    fn bad_build_flags_say_what_is_wrong() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--local", ".", "--image", "app", "--build-arg", "VERSION"],
                "invalid value 'VERSION' for '--build-arg <NAME=VALUE>': expected NAME=VALUE",
            ),
            (
                &["--local", ".", "--image", "app", "--max-size", "2 parsecs"],
                "invalid value '2 parsecs' for '--max-size <SIZE>'",
            ),
            (
                &["--local", "."],
                "the following required arguments were not provided",
            ),
        ];
        for (args, want) in cases {
            let error = parse(args).unwrap_err();
            assert!(error.contains(want), "{args:?}: {error}");
        }
    }
}
