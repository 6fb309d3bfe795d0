//! `kiln context receive`: the build pod's `context` init container, which gets a Build's
//! `source.local` tar from the cache or from `kubectl kiln build --local` and unpacks it as
//! the build context (I/O: the receiver, the Docker config, the termination log, stdout).
//!
//! The controller's pod builder passes every flag
//! ([`crate::controller::local_context::receive_args`]); a failure's one-line message goes
//! to the termination log, where the controller reads it as the container's termination
//! message and shows it in the Build's status.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use reqwest::Url;

use crate::app::CliResult;
use crate::context::protocol::RECEIVER_PORT;
use crate::context::receive::cache::registry_host;
use crate::context::receive::{
    DEFAULT_GRACE, ReceiveOptions, Received, read_docker_config, receive,
};
use crate::oci::digest::Digest;
use crate::oci::name::{RepoName, Tag};
use crate::report::error_chain;
use crate::retry::Retry;
use crate::units::{format_duration, format_size, parse_duration};

/// Arguments of `kiln context receive`.
#[derive(Debug, Args)]
pub struct ReceiveArgs {
    /// The cache registry's root: `http://host[:port]` or `https://host[:port]`.
    #[arg(long, value_name = "URL", value_parser = parse_registry)]
    pub registry: Url,

    /// The contexts repository on the cache (`[<path>/]<namespace>/kiln_contexts`).
    #[arg(long, value_name = "NAME", value_parser = parse_repository)]
    pub repository: RepoName,

    /// The Build's tag in the repository (`build-<uid>`).
    #[arg(long, value_parser = parse_tag)]
    pub tag: Tag,

    /// The tar's digest, as the Build declares it.
    #[arg(long, value_parser = parse_digest)]
    pub digest: Digest,

    /// The tar's size in bytes, as the Build declares it.
    #[arg(long, value_name = "BYTES")]
    pub size: u64,

    /// The directory to unpack the context into (created if needed; it must be empty).
    /// Work files go beside it, in its parent.
    #[arg(long, value_name = "DIR")]
    pub dest: PathBuf,

    /// The address to serve the upload protocol on.
    #[arg(long, value_name = "ADDR", default_value_t = SocketAddr::from(([0, 0, 0, 0], RECEIVER_PORT)))]
    pub listen: SocketAddr,

    /// How long to wait for an upload before giving up (`15m`, `90s`).
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = parse_duration)]
    pub wait: Duration,

    /// How often, while waiting, to look whether the cache got the tar from another pod.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub poll: Duration,

    /// Where to write the one-line error on failure (the container's termination message).
    #[arg(long, value_name = "PATH")]
    pub termination_log: Option<PathBuf>,

    /// A Docker config directory whose `config.json` holds the cache's credentials (the
    /// attempt's cache token). Without it, or without the file, the cache is used
    /// anonymously.
    #[arg(long, value_name = "DIR", env = "DOCKER_CONFIG")]
    pub docker_config: Option<PathBuf>,
}

fn parse_registry(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|err| format!("{text:?} is not a URL: {err}"))?;
    let root = matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some()
        && url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none();
    if !root {
        return Err(format!(
            "{text:?} is not a registry root: expected http://host[:port] or https://host[:port]"
        ));
    }
    Ok(url)
}

fn parse_repository(text: &str) -> Result<RepoName, String> {
    RepoName::parse(text).map_err(|err| error_chain(&err))
}

fn parse_tag(text: &str) -> Result<Tag, String> {
    Tag::parse(text).map_err(|err| error_chain(&err))
}

fn parse_digest(text: &str) -> Result<Digest, String> {
    text.parse().map_err(|err| error_chain(&err))
}

/// The one-line summary printed on success.
pub fn summary(args: &ReceiveOptions, received: &Received) -> String {
    let source = if received.from_cache {
        "from the cache"
    } else {
        "from an upload"
    };
    let unpacked = &received.unpacked;
    format!(
        "received {} ({}) {source} into {} in {}: {} files, {} directories, {} symlinks; tagged {}:{} as {}",
        args.digest,
        format_size(args.size),
        args.dest.display(),
        format_duration(received.elapsed),
        unpacked.files,
        unpacked.directories,
        unpacked.symlinks,
        args.repository,
        args.tag,
        received.manifest
    )
}

/// Runs `kiln context receive`.
pub async fn run_receive(args: ReceiveArgs) -> CliResult {
    let termination_log = args.termination_log.clone();
    let result = receive_with(args).await;
    match result {
        Ok(line) => {
            println!("{line}");
            Ok(ExitCode::SUCCESS)
        }
        Err(message) => {
            if let Some(path) = &termination_log {
                write_termination_log(path, &message);
            }
            Err(message.into())
        }
    }
}

async fn receive_with(args: ReceiveArgs) -> Result<String, String> {
    let ReceiveArgs {
        registry,
        repository,
        tag,
        digest,
        size,
        dest,
        listen,
        wait,
        poll,
        termination_log: _,
        docker_config,
    } = args;
    let host = registry_host(&registry)
        .ok_or_else(|| format!("the registry URL {registry} names no host"))?;
    let credentials = read_docker_config(docker_config.as_deref(), &host).map_err(|err| {
        format!(
            "cache credentials for {host} in the Docker config {}: {}",
            docker_config
                .as_deref()
                .map(Path::display)
                .map(|dir| dir.to_string())
                .unwrap_or_default(),
            error_chain(&err)
        )
    })?;
    let options = ReceiveOptions {
        registry,
        repository,
        tag,
        digest,
        size,
        dest,
        listen,
        wait,
        poll,
        grace: DEFAULT_GRACE,
        credentials,
        retry: Retry::default(),
    };
    let received = receive(options.clone())
        .await
        .map_err(|err| error_chain(&err))?;
    Ok(summary(&options, &received))
}

/// Writes `message` as the termination message; a failure to write it is logged, as the
/// message also goes to stderr (the log Kubernetes falls back to).
fn write_termination_log(path: &Path, message: &str) {
    if let Err(err) = std::fs::write(path, message) {
        tracing::warn!(path = %path.display(), error = %err, "cannot write the termination log");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::{Cli, Command, ContextCommand};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<ReceiveArgs, clap::Error> {
        let cli = Cli::try_parse_from(["kiln", "context", "receive"].iter().chain(args))?;
        match cli.command {
            Command::Context(ContextCommand::Receive(args)) => Ok(args),
            other => panic!("{other:?}"),
        }
    }

    fn required(digest: &str) -> Vec<String> {
        vec![
            "--registry=http://kiln-cache.kiln-system.svc:5000".into(),
            "--repository=kiln/team-a/kiln_contexts".into(),
            "--tag=build-6f1c2d3e-0000-4000-8000-123456789abc".into(),
            format!("--digest={digest}"),
            "--size=4096".into(),
            "--dest=/workspace/context".into(),
        ]
    }

    #[test]
    fn the_controllers_flags_parse() {
        let digest = Digest::of(b"tar");
        let mut args = required(&digest.to_string());
        args.extend([
            "--listen=0.0.0.0:8080".to_owned(),
            "--wait=1200s".to_owned(),
            "--poll=2s".to_owned(),
            "--termination-log=/dev/termination-log".to_owned(),
        ]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let args = parse(&refs).unwrap();
        assert_eq!(
            args.registry.as_str(),
            "http://kiln-cache.kiln-system.svc:5000/"
        );
        assert_eq!(args.repository.to_string(), "kiln/team-a/kiln_contexts");
        assert_eq!(
            args.tag.to_string(),
            "build-6f1c2d3e-0000-4000-8000-123456789abc"
        );
        assert_eq!(args.digest, digest);
        assert_eq!(args.size, 4096);
        assert_eq!(args.dest, Path::new("/workspace/context"));
        assert_eq!(args.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(args.wait, Duration::from_secs(1200));
        assert_eq!(args.poll, Duration::from_secs(2));
        assert_eq!(
            args.termination_log.as_deref(),
            Some(Path::new("/dev/termination-log"))
        );
    }

    #[test]
    fn defaults_listen_on_the_receiver_port_and_wait_fifteen_minutes() {
        let digest = Digest::of(b"tar").to_string();
        let args = required(&digest);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let args = parse(&refs).unwrap();
        assert_eq!(args.listen, SocketAddr::from(([0, 0, 0, 0], RECEIVER_PORT)));
        assert_eq!(args.wait, Duration::from_secs(15 * 60));
        assert_eq!(args.poll, Duration::from_secs(2));
        assert_eq!(args.termination_log, None);
    }

    #[test]
    fn bad_flags_are_refused_with_the_reason() {
        let digest = Digest::of(b"tar").to_string();
        for (flag, reason) in [
            ("--registry=ftp://cache:5000", "is not a registry root"),
            ("--registry=http://cache:5000/v2", "is not a registry root"),
            ("--registry=cache:5000", "is not a registry root"),
            ("--repository=Team/App", "components are lowercase"),
            ("--tag=-x", "tag \"-x\" is invalid"),
            ("--digest=sha256:00", "sha256:<64 lowercase hex>"),
            ("--wait=15 minutes", "--wait"),
        ] {
            let mut args = required(&digest);
            let name = flag.split('=').next().unwrap();
            args.retain(|arg| !arg.starts_with(&format!("{name}=")));
            args.push(flag.to_owned());
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let err = parse(&refs).unwrap_err().to_string();
            assert!(err.contains(reason), "{flag}: {err}");
        }
    }
}
