//! `kiln sign`: signs a pushed image with a key from a mounted Secret and pushes the
//! signature beside it, in the format `cosign verify --key` checks (I/O: the key files,
//! BuildKit's metadata file, the registry, the termination log, stdout).
//!
//! The controller runs it as the `sign` container of a signed Build's pod, after the build
//! pushed; `kiln index push --sign-key-dir` signs a multi-platform index the same way.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use crate::app::CliResult;
use crate::app::pod_result::{DEFAULT_TERMINATION_LOG, parse_image, write_termination_log};
use crate::controller::podstate::pushed_digest;
use crate::controller::validate::{COSIGN_KEY, COSIGN_PASSWORD};
use crate::oci::digest::Digest;
use crate::oci::name::ImageName;
use crate::publish::client::read_docker_config;
use crate::publish::sign::{SignRequest, Signed, push_signature};
use crate::registry::mirror::credentials::Credentials;
use crate::report::error_chain;
use crate::retry::Retry;
use crate::sign::SigningKey;

/// The environment variable cosign reads an encrypted key's password from; read when the
/// key directory holds no `cosign.password`.
pub const PASSWORD_ENV: &str = "COSIGN_PASSWORD";

/// Arguments of `kiln sign`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// The image, `[host[:port]/]repository[:tag]`: its repository holds the image and
    /// gets the signature (the tag is not signed; the digest is).
    #[arg(long, value_name = "REF", value_parser = parse_image)]
    pub image: ImageName,

    /// The digest of the image's manifest or index to sign.
    #[arg(
        long,
        value_name = "DIGEST",
        conflicts_with = "metadata_file",
        required_unless_present = "metadata_file"
    )]
    pub digest: Option<Digest>,

    /// BuildKit's metadata file (`buildctl --metadata-file`), whose
    /// `containerimage.digest` is signed.
    #[arg(long, value_name = "PATH")]
    pub metadata_file: Option<PathBuf>,

    /// The directory of the signing key: `cosign.key`, and `cosign.password` for an
    /// encrypted key (a mounted Secret as `cosign generate-key-pair k8s://…` writes it).
    #[arg(long, value_name = "DIR")]
    pub key_dir: PathBuf,

    /// A registry (`host[:port]`, as in `--image`) reached over plain HTTP. Repeatable.
    #[arg(long = "plain-http-registry", value_name = "HOST")]
    pub plain_http_registries: Vec<String>,

    /// A Docker config directory whose `config.json` holds the registry's credentials.
    #[arg(long, value_name = "DIR", env = "DOCKER_CONFIG")]
    pub docker_config: Option<PathBuf>,

    /// Where to write `{"containerimage.digest":"<digest>"}` once signed (the container's
    /// termination message). Nothing is written on failure.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_TERMINATION_LOG)]
    pub termination_log: PathBuf,
}

/// Reads the signing key of `dir`: `cosign.key`, opened with `cosign.password` (or
/// `$COSIGN_PASSWORD`) when it is encrypted. A password file's one trailing newline is
/// not part of the password (`kubectl create secret --from-file` keeps what an editor
/// added).
pub fn read_key(dir: &Path) -> Result<SigningKey, String> {
    let key_path = dir.join(COSIGN_KEY);
    let pem = std::fs::read_to_string(&key_path)
        .map_err(|err| format!("cannot read the signing key {}: {err}", key_path.display()))?;
    let password_path = dir.join(COSIGN_PASSWORD);
    let password = match std::fs::read(&password_path) {
        Ok(mut bytes) => {
            if bytes.last() == Some(&b'\n') {
                bytes.pop();
            }
            Some(bytes)
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            std::env::var_os(PASSWORD_ENV).map(|p| p.into_encoded_bytes())
        }
        Err(err) => {
            return Err(format!(
                "cannot read the key's password {}: {err}",
                password_path.display()
            ));
        }
    };
    SigningKey::from_pem(&pem, password.as_deref()).map_err(|err| {
        format!(
            "the signing key {}: {}",
            key_path.display(),
            error_chain(&err)
        )
    })
}

/// The credentials for `image`'s registry in `docker_config`, if any.
pub fn credentials(
    docker_config: Option<&Path>,
    image: &ImageName,
) -> Result<Option<Credentials>, String> {
    match docker_config {
        Some(dir) => read_docker_config(dir, &image.registry).map_err(|err| {
            format!(
                "registry credentials for {} in the Docker config {}: {}",
                image.registry,
                dir.display(),
                error_chain(&err)
            )
        }),
        None => Ok(None),
    }
}

/// Signs `digest` in `image`'s repository and says so on stdout.
pub async fn sign_and_report(
    image: &ImageName,
    digest: &Digest,
    key: &SigningKey,
    credentials: Option<Credentials>,
    plain_http: &[String],
) -> Result<Signed, String> {
    let signed = push_signature(SignRequest {
        image: image.clone(),
        digest: *digest,
        key,
        credentials,
        plain_http: plain_http.iter().cloned().collect(),
        retry: Retry::default(),
    })
    .await
    .map_err(|err| error_chain(&err))?;
    println!("{}", summary(image, digest, &signed));
    Ok(signed)
}

/// The one-line summary printed on success.
pub fn summary(image: &ImageName, digest: &Digest, signed: &Signed) -> String {
    let what = if signed.already_there {
        "already signed by this key"
    } else {
        "signed"
    };
    format!(
        "{what}: {}/{}@{digest}, signature at {} ({} signature{})",
        image.registry,
        image.repository,
        signed.reference,
        signed.signatures,
        if signed.signatures == 1 { "" } else { "s" }
    )
}

/// Runs `kiln sign`.
pub async fn run(args: SignArgs) -> CliResult {
    let SignArgs {
        image,
        digest,
        metadata_file,
        key_dir,
        plain_http_registries,
        docker_config,
        termination_log,
    } = args;
    let digest = match (digest, metadata_file) {
        (Some(digest), _) => digest,
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path).map_err(|err| {
                format!(
                    "cannot read the build's metadata {} (did the build push?): {err}",
                    path.display()
                )
            })?;
            pushed_digest(Some(&text)).map_err(|err| {
                format!(
                    "the build's metadata {} names no pushed digest: {err}",
                    path.display()
                )
            })?
        }
        (None, None) => return Err("give --digest or --metadata-file".into()),
    };
    let key = read_key(&key_dir)?;
    let credentials = credentials(docker_config.as_deref(), &image)?;
    sign_and_report(&image, &digest, &key, credentials, &plain_http_registries).await?;
    write_termination_log(&termination_log, &digest, &format!("{digest} was signed"))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<SignArgs, clap::Error> {
        let cli = Cli::try_parse_from(["kiln", "sign"].iter().chain(args))?;
        match cli.command {
            Command::Sign(args) => Ok(args),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_digest_comes_from_a_flag_or_the_builds_metadata_not_both() {
        let digest = Digest::of(b"image");
        let args = parse(&[
            "--image=registry:5000/team/app:v1",
            "--metadata-file=/var/run/kiln/result/metadata.json",
            "--key-dir=/var/run/kiln/signing",
        ])
        .unwrap();
        assert_eq!(args.digest, None);
        assert_eq!(args.termination_log, Path::new(DEFAULT_TERMINATION_LOG));
        let args = parse(&[
            "--image=registry:5000/team/app",
            &format!("--digest={digest}"),
            "--key-dir=k",
        ])
        .unwrap();
        assert_eq!(args.digest, Some(digest));
        assert!(parse(&["--image=r.example/app", "--key-dir=k"]).is_err());
        assert!(
            parse(&[
                "--image=r.example/app",
                "--key-dir=k",
                &format!("--digest={digest}"),
                "--metadata-file=m"
            ])
            .is_err()
        );
    }

    #[test]
    fn a_key_directory_without_a_password_for_an_encrypted_key_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_key(dir.path()).unwrap_err();
        assert!(err.contains("cannot read the signing key"), "{err}");
        let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sign");
        std::fs::copy(
            format!("{fixture}/cosign.key"),
            dir.path().join("cosign.key"),
        )
        .unwrap();
        std::fs::write(dir.path().join("cosign.password"), "test\n").unwrap();
        let key = read_key(dir.path()).expect("cosign's encrypted key opens with its password");
        let public = std::fs::read_to_string(format!("{fixture}/cosign.pub")).unwrap();
        assert_eq!(
            crate::sign::PublicKey::from_pem(&public).unwrap(),
            key.public_key()
        );
        std::fs::write(dir.path().join("cosign.password"), "wrong\n").unwrap();
        let err = read_key(dir.path()).unwrap_err();
        assert!(err.contains("the signing key"), "{err}");
    }
}
