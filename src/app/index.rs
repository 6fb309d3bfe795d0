//! `kiln index push`: pushes the OCI image index of a multi-platform Build's per-platform
//! manifests at the output tag, and reports its digest in the pod's termination message
//! (I/O: the registry, the Docker config, the termination log, stdout).
//!
//! The controller runs this in a short pod once every platform's build pod has pushed its
//! image by digest; it reads the index digest from the termination message exactly as it
//! reads a build pod's ([`crate::controller::podstate::pushed_digest`]).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::app::CliResult;
use crate::app::pod_result::{DEFAULT_TERMINATION_LOG, parse_image, write_termination_log};
use crate::app::sign::{credentials, read_key, sign_and_report};
use crate::oci::attestation::is_attestation;
use crate::oci::digest::Digest;
use crate::oci::name::ImageName;
use crate::oci::platform::Platform;
use crate::publish::index::{IndexPush, Retry, push_index};
use crate::report::error_chain;

/// Arguments of `kiln index push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The output image, `[host[:port]/]repository[:tag]` (tag `latest` when left out,
    /// registry `docker.io` when the first component is not a host): its repository holds
    /// the manifests, and its tag gets the index.
    #[arg(long, value_name = "REF", value_parser = parse_image)]
    pub image: ImageName,

    /// One platform's manifest, already in the image's repository, as `PLATFORM=DIGEST`
    /// (`linux/arm64=sha256:…`). Repeat for each platform; the index lists them in this
    /// order.
    #[arg(long = "manifest", value_name = "PLATFORM=DIGEST", required = true, value_parser = parse_manifest)]
    pub manifests: Vec<(Platform, Digest)>,

    /// A registry (`host[:port]`, as in `--image`) reached over plain HTTP instead of
    /// HTTPS. Repeatable.
    #[arg(long = "plain-http-registry", value_name = "HOST")]
    pub plain_http_registries: Vec<String>,

    /// A Docker config directory whose `config.json` holds the registry's credentials (a
    /// mounted `kubernetes.io/dockerconfigjson` Secret). Without it, or without the file,
    /// the registry is used anonymously.
    #[arg(long, value_name = "DIR", env = "DOCKER_CONFIG")]
    pub docker_config: Option<PathBuf>,

    /// Sign the pushed index with the key in this directory (`cosign.key`, and
    /// `cosign.password` for an encrypted key), as `kiln sign` does.
    #[arg(long, value_name = "DIR")]
    pub sign_key_dir: Option<PathBuf>,

    /// Where to write `{"containerimage.digest":"<index digest>"}` on success (the
    /// container's termination message). Nothing is written on failure.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_TERMINATION_LOG)]
    pub termination_log: PathBuf,
}

/// Parses `PLATFORM=DIGEST`.
fn parse_manifest(text: &str) -> Result<(Platform, Digest), String> {
    let (platform, digest) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not PLATFORM=DIGEST (linux/amd64=sha256:…)"))?;
    let platform = Platform::parse(platform).map_err(|err| err.to_string())?;
    let digest = digest.parse().map_err(|err| error_chain(&err))?;
    Ok((platform, digest))
}

/// The one-line summary printed on success.
pub fn summary(image: &ImageName, digest: &Digest, platforms: &[Platform]) -> String {
    let list = platforms
        .iter()
        .map(Platform::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let noun = if platforms.len() == 1 {
        "platform"
    } else {
        "platforms"
    };
    format!(
        "pushed {image}@{digest} ({} {noun}: {list})",
        platforms.len()
    )
}

/// Runs `kiln index push`.
pub async fn run_push(args: PushArgs) -> CliResult {
    let PushArgs {
        image,
        manifests,
        plain_http_registries,
        docker_config,
        sign_key_dir,
        termination_log,
    } = args;
    // The key is read first: a key that cannot sign fails before anything is pushed.
    let key = sign_key_dir.as_deref().map(read_key).transpose()?;
    let credentials = credentials(docker_config.as_deref(), &image)?;
    let request = IndexPush {
        image,
        manifests,
        credentials: credentials.clone(),
        plain_http: plain_http_registries.iter().cloned().collect(),
        retry: Retry::default(),
    };
    let pushed = push_index(&request).await?;
    let platforms: Vec<Platform> = pushed
        .entries
        .iter()
        .filter(|e| !is_attestation(e))
        .map(|e| e.platform.clone())
        .collect();
    println!("{}", summary(&request.image, &pushed.digest, &platforms));
    if let Some(key) = &key {
        sign_and_report(
            &request.image,
            &pushed.digest,
            key,
            credentials,
            &plain_http_registries,
        )
        .await
        .map_err(|err| format!("the index {} was pushed, but {err}", pushed.digest))?;
    }
    write_termination_log(
        &termination_log,
        &pushed.digest,
        &format!("the index {} was pushed", pushed.digest),
    )?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::{Cli, Command, IndexCommand};
    use clap::Parser;
    use std::path::Path;

    fn parse(args: &[&str]) -> Result<PushArgs, clap::Error> {
        let cli = Cli::try_parse_from(["kiln", "index", "push"].iter().chain(args))?;
        match cli.command {
            Command::Index(IndexCommand::Push(args)) => Ok(args),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flags_parse_in_order() {
        let amd64 = Digest::of(b"amd64");
        let arm64 = Digest::of(b"arm64");
        let args = parse(&[
            "--image",
            "127.0.0.1:5000/team/app:v1",
            "--manifest",
            &format!("linux/arm64/v8={arm64}"),
            "--manifest",
            &format!("linux/amd64={amd64}"),
            "--plain-http-registry",
            "127.0.0.1:5000",
            "--docker-config",
            "/var/run/kiln/docker",
            "--termination-log",
            "/tmp/log",
        ])
        .unwrap();
        assert_eq!(args.image.to_string(), "127.0.0.1:5000/team/app:v1");
        assert_eq!(
            args.manifests,
            [
                (Platform::parse("linux/arm64/v8").unwrap(), arm64),
                (Platform::parse("linux/amd64").unwrap(), amd64),
            ]
        );
        assert_eq!(args.plain_http_registries, ["127.0.0.1:5000"]);
        assert_eq!(
            args.docker_config.as_deref(),
            Some(Path::new("/var/run/kiln/docker"))
        );
        assert_eq!(args.termination_log, Path::new("/tmp/log"));

        // The `--flag=value` form, as the controller's index pod passes them.
        let args = parse(&[
            "--image=team/app",
            &format!("--manifest=linux/amd64={amd64}"),
        ])
        .unwrap();
        assert_eq!(
            args.manifests,
            [(Platform::parse("linux/amd64").unwrap(), amd64)]
        );
        assert_eq!(args.image.to_string(), "docker.io/team/app:latest");
        assert_eq!(args.termination_log, Path::new(DEFAULT_TERMINATION_LOG));
    }

    #[test]
    fn bad_flags_are_refused_with_the_reason() {
        let digest = Digest::of(b"x");
        let no_manifest = parse(&["--image", "r.example/app"]).unwrap_err();
        assert_eq!(
            no_manifest.kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
        for (args, reason) in [
            (
                vec!["--image", "r.example/app", "--manifest", "linux/amd64"],
                "is not PLATFORM=DIGEST",
            ),
            (
                vec!["--image", "r.example/app", "--manifest", "linux=sha256:00"],
                "is not os/arch",
            ),
            (
                vec![
                    "--image",
                    "r.example/app",
                    "--manifest",
                    "linux/amd64=sha256:00",
                ],
                "sha256:<64 lowercase hex>",
            ),
        ] {
            let err = parse(&args).unwrap_err().to_string();
            assert!(err.contains(reason), "{args:?}: {err}");
        }
        let manifest = format!("linux/amd64={digest}");
        let err = parse(&["--image", "r.example/App", "--manifest", &manifest])
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid repository"), "{err}");
        assert!(err.contains("components are lowercase"), "{err}");
        let err = parse(&[
            "--image",
            &format!("r.example/app@{digest}"),
            "--manifest",
            &manifest,
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("has a digest"), "{err}");
    }

    #[test]
    fn the_summary_names_the_image_digest_and_platforms() {
        let image = ImageName::parse("registry.example.com/team/app:v1").unwrap();
        let digest = Digest::of(b"i");
        let platforms = [
            Platform::parse("linux/amd64").unwrap(),
            Platform::parse("linux/arm64").unwrap(),
        ];
        assert_eq!(
            summary(&image, &digest, &platforms),
            format!(
                "pushed registry.example.com/team/app:v1@{digest} (2 platforms: linux/amd64, linux/arm64)"
            )
        );
        assert_eq!(
            summary(&image, &digest, &platforms[..1]),
            format!("pushed registry.example.com/team/app:v1@{digest} (1 platform: linux/amd64)")
        );
    }
}
