//! Signing the pushed image (`spec.signing`): the step that signs it, its key mount and
//! its arguments (pure).
//!
//! # Where the signature is made, and why there
//!
//! The signing key and the push credentials stay in the Build's own pods: the controller
//! never reads either. The image is signed right after it is pushed, by the Kiln image's
//! `kiln sign`, in the format `cosign verify --key` checks (a signature image at the
//! `sha256-<hex>.sig` tag beside the image):
//!
//! - a single-pod attempt runs the build as the pod's last init container and `sign` as
//!   its one container, which starts only once the build has pushed, reads the pushed
//!   digest from BuildKit's metadata in an emptyDir the build container copies it into
//!   ([`RESULT_DIR`]), and writes the same metadata to its own termination message, where
//!   the controller reads the digest as usual. A failed build never starts `sign`; a
//!   failed `sign` fails the attempt with its own message;
//! - a `Native` attempt's index pod signs the index it pushed (`kiln index push
//!   --sign-key-dir`), so one signature covers every platform.
//!
//! The key Secret is mounted whole at [`KEY_DIR`], readable by the pod's group only:
//! `cosign.key`, and `cosign.password` when the key is encrypted (what `cosign
//! generate-key-pair k8s://<namespace>/<name>` writes).

use k8s_openapi::api::core::v1::{Container, SecretVolumeSource, Volume, VolumeMount};

use super::buildkit::{DOCKER_CONFIG_DIR, TERMINATION_MESSAGE};
use super::config::Config;
use super::local_context::{docker_config_env, kiln_resources, restricted_security_context};
use super::podstate::SIGN_CONTAINER;
use crate::crd::Build;

/// Where the signing key Secret is mounted.
pub const KEY_DIR: &str = "/var/run/kiln/signing";
/// Where the build container leaves BuildKit's metadata for the `sign` container.
pub const RESULT_DIR: &str = "/var/run/kiln/result";
/// The metadata file in [`RESULT_DIR`].
pub const RESULT_FILE: &str = "metadata.json";
/// Name of the volume of [`RESULT_DIR`].
pub const RESULT_VOLUME: &str = "kiln-result";
/// Memory limit of a step that signs: opening cosign's encrypted key costs 64 MiB of
/// scrypt (N = 2^16, r = 8) on top of the process.
pub const SIGNING_MEMORY_LIMIT: &str = "256Mi";
/// Name of the volume of the signing key.
pub const KEY_VOLUME: &str = "signing-key";

/// The Secret that holds the Build's signing key, when it is signed.
pub fn key_secret(build: &Build) -> Option<&str> {
    build
        .spec
        .signing
        .as_ref()
        .map(|s| s.key_secret_ref.name.as_str())
}

/// The signing key Secret as a volume (every key, group-readable) and its mount.
pub fn key_volume(secret: &str) -> (Volume, VolumeMount) {
    let volume = Volume {
        name: KEY_VOLUME.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_owned()),
            // Readable by the pod's group (fsGroup), by nobody else.
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    };
    let mount = VolumeMount {
        name: KEY_VOLUME.to_owned(),
        mount_path: KEY_DIR.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    (volume, mount)
}

/// The arguments of `kiln sign` in a single-pod attempt: the output image, the metadata
/// the build left, the key, and where to write the result.
pub fn sign_args(build: &Build, config: &Config) -> Vec<String> {
    let mut args = vec![
        "sign".to_owned(),
        format!("--image={}", build.spec.output.image),
        format!("--metadata-file={RESULT_DIR}/{RESULT_FILE}"),
        format!("--key-dir={KEY_DIR}"),
    ];
    for host in &config.plain_http_registries {
        args.push(format!("--plain-http-registry={host}"));
    }
    args.push(format!("--termination-log={TERMINATION_MESSAGE}"));
    args
}

/// The `sign` container of a single-pod attempt, as user `uid` (the pod's, so that the
/// group-readable Secrets are readable), mounting the result directory, the key and the
/// Docker config when the build has one (from `build_mounts`).
pub fn sign_container(
    build: &Build,
    config: &Config,
    uid: i64,
    build_mounts: &[VolumeMount],
) -> Container {
    let mut mounts: Vec<VolumeMount> = build_mounts
        .iter()
        .filter(|m| m.mount_path == DOCKER_CONFIG_DIR)
        .cloned()
        .collect();
    let docker_config = !mounts.is_empty();
    mounts.push(VolumeMount {
        name: RESULT_VOLUME.to_owned(),
        mount_path: RESULT_DIR.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    });
    if let Some(secret) = key_secret(build) {
        mounts.push(key_volume(secret).1);
    }
    Container {
        name: SIGN_CONTAINER.into(),
        image: Some(config.index_image.clone()),
        args: Some(sign_args(build, config)),
        env: docker_config.then(docker_config_env),
        resources: Some(kiln_resources("10m", "32Mi", SIGNING_MEMORY_LIMIT)),
        security_context: Some(restricted_security_context(uid)),
        volume_mounts: Some(mounts),
        termination_message_path: Some(TERMINATION_MESSAGE.into()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed() -> Build {
        Build::test("app")
            .in_namespace("team")
            .signed_with("image-signing")
    }

    #[test]
    fn the_sign_step_reads_the_builds_result_and_the_whole_key_secret() {
        let build = signed();
        assert_eq!(key_secret(&build), Some("image-signing"));
        assert_eq!(key_secret(&Build::test("app")), None);
        let mut config = Config::default();
        config.plain_http_registries.insert("registry:5000".into());
        assert_eq!(
            sign_args(&build, &config),
            [
                "sign",
                "--image=registry.example.com/team/app:latest",
                "--metadata-file=/var/run/kiln/result/metadata.json",
                "--key-dir=/var/run/kiln/signing",
                "--plain-http-registry=registry:5000",
                "--termination-log=/dev/termination-log",
            ]
        );
        let (volume, mount) = key_volume("image-signing");
        let secret = volume.secret.unwrap();
        assert_eq!(
            secret.items, None,
            "every key: the password only when there is one"
        );
        assert_eq!(secret.default_mode, Some(0o440));
        assert_eq!(mount.read_only, Some(true));
    }

    #[test]
    fn the_sign_container_mounts_only_what_it_needs_and_runs_restricted() {
        let build = signed();
        let build_mounts = vec![
            VolumeMount {
                name: "docker-config".into(),
                mount_path: DOCKER_CONFIG_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "buildkit-state".into(),
                mount_path: "/home/user/.local/share/buildkit".into(),
                ..VolumeMount::default()
            },
        ];
        let container = sign_container(&build, &Config::default(), 1000, &build_mounts);
        let paths: Vec<&str> = container
            .volume_mounts
            .as_deref()
            .unwrap()
            .iter()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert_eq!(paths, [DOCKER_CONFIG_DIR, RESULT_DIR, KEY_DIR]);
        assert!(
            container
                .volume_mounts
                .as_deref()
                .unwrap()
                .iter()
                .all(|m| m.read_only == Some(true))
        );
        assert_eq!(container.env.unwrap()[0].name, "DOCKER_CONFIG");
        let security = container.security_context.unwrap();
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(security.run_as_user, Some(1000));
        // Without a Docker config, anonymous.
        let anonymous = sign_container(&build, &Config::default(), 1000, &[]);
        assert_eq!(anonymous.env, None);
    }
}
