//! A `Native` multi-platform attempt: its platforms as the status lists them, and the pod
//! that pushes the image index once every platform has pushed its image (pure and
//! deterministic: the same Build and digests give byte-identical objects).
//!
//! # Why a pod pushes the index
//!
//! Pushing the index needs the Build's push credentials, and the controller never reads
//! them: a Build's push Secret is only ever mounted into the Build's own pods. The index pod
//! runs the Kiln image's `kiln index push`, which reads each platform's manifest from the
//! output repository (for its media type and size), writes the index in the order of
//! `spec.platforms`, pushes it to the output tag, and puts its digest in the termination
//! message, where the controller reads it as it reads a build pod's. It runs as the Kiln
//! image's own non-root user with nothing writable and no capability: it does no build.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, Pod, PodSecurityContext, PodSpec, Volume, VolumeMount,
};
use kube::ResourceExt;

use super::buildkit::{DOCKER_CONFIG_DIR, TERMINATION_MESSAGE};
use super::config::Config;
use super::labels::{PLATFORM, PLATFORM_INDEX, index_pod_name, platform_pod_name};
use super::local_context::{docker_config_env, kiln_resources, restricted_security_context};
use super::pod::{attempt_meta, with_generation};
use super::podstate::INDEX_CONTAINER;
use super::signing;
use super::validate::DOCKER_CONFIG_KEY;
use crate::crd::{Build, Phase, PlatformStatus};
use crate::oci::platform::Platform;

/// UID and GID of the Kiln image's user (distroless `nonroot`).
pub const KILN_UID: i64 = 65532;

/// Longest an index pod may run: it reads a few manifests and writes one.
pub const INDEX_DEADLINE: Duration = Duration::from_secs(600);

/// The platforms of `build`, parsed, in the order of `spec.platforms`, each once. Entries
/// that do not parse are skipped here; validation names them.
pub fn platforms(build: &Build) -> Vec<Platform> {
    let mut seen = BTreeSet::new();
    build
        .spec
        .platforms
        .iter()
        .filter_map(|text| Platform::parse(text).ok())
        .filter(|p| seen.insert(p.to_string()))
        .collect()
}

/// The status of each platform as attempt `attempt` starts: pending, first try.
pub fn initial_platforms(build: &Build, attempt: u32) -> Vec<PlatformStatus> {
    let name = build.name_any();
    platforms(build)
        .into_iter()
        .map(|platform| PlatformStatus {
            pod_name: platform_pod_name(&name, attempt, &platform.slug(), 1),
            platform: platform.to_string(),
            attempt,
            phase: Phase::Pending,
            pod_uid: None,
            retries: 0,
            start_time: None,
            completion_time: None,
            reason: None,
            message: None,
            digest: None,
        })
        .collect()
}

/// `pushed/total` for `kubectl get` (`1/2`).
pub fn progress(platforms: &[PlatformStatus]) -> String {
    let pushed = platforms
        .iter()
        .filter(|p| p.phase == Phase::Succeeded)
        .count();
    format!("{pushed}/{}", platforms.len())
}

/// The arguments of `kiln index push` for the pushed `platforms` (each with its digest), in
/// their order.
pub fn index_args(build: &Build, platforms: &[PlatformStatus], config: &Config) -> Vec<String> {
    let mut args = vec![
        "index".to_owned(),
        "push".to_owned(),
        format!("--image={}", build.spec.output.image),
    ];
    for platform in platforms {
        args.push(format!(
            "--manifest={}={}",
            platform.platform,
            platform.digest.as_deref().unwrap_or_default()
        ));
    }
    for host in &config.plain_http_registries {
        args.push(format!("--plain-http-registry={host}"));
    }
    if signing::key_secret(build).is_some() {
        args.push(format!("--sign-key-dir={}", signing::KEY_DIR));
    }
    args.push(format!("--termination-log={TERMINATION_MESSAGE}"));
    args
}

/// The pod that pushes the image index of attempt `attempt`, try `try_`, from the pushed
/// `platforms`; it mounts the Build's push Secret, when it has one, as its Docker config.
pub fn index_pod(
    build: &Build,
    attempt: u32,
    try_: u32,
    platforms: &[PlatformStatus],
    push_secret: Option<&str>,
    timeout: Duration,
    config: &Config,
) -> Pod {
    let name = index_pod_name(&build.name_any(), attempt, try_);
    let mut meta = attempt_meta(build, attempt, &name);
    if let Some(labels) = meta.labels.as_mut() {
        labels.insert(PLATFORM.to_owned(), PLATFORM_INDEX.to_owned());
    }
    let mut env = Vec::new();
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    if let Some(secret) = push_secret {
        env = docker_config_env();
        volumes.push(Volume {
            name: "docker-config".into(),
            secret: Some(k8s_openapi::api::core::v1::SecretVolumeSource {
                secret_name: Some(secret.to_owned()),
                items: Some(vec![k8s_openapi::api::core::v1::KeyToPath {
                    key: DOCKER_CONFIG_KEY.into(),
                    path: "config.json".into(),
                    mode: None,
                }]),
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: "docker-config".into(),
            mount_path: DOCKER_CONFIG_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    if let Some(secret) = signing::key_secret(build) {
        let (volume, mount) = signing::key_volume(secret);
        volumes.push(volume);
        mounts.push(mount);
    }
    let container = Container {
        name: INDEX_CONTAINER.into(),
        image: Some(config.index_image.clone()),
        args: Some(index_args(build, platforms, config)),
        env: (!env.is_empty()).then_some(env),
        // Opening an encrypted signing key needs more than the index alone.
        resources: Some(kiln_resources(
            "10m",
            "32Mi",
            if signing::key_secret(build).is_some() {
                signing::SIGNING_MEMORY_LIMIT
            } else {
                "128Mi"
            },
        )),
        security_context: Some(restricted_security_context(KILN_UID)),
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        termination_message_path: Some(TERMINATION_MESSAGE.into()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    };
    let builder = &build.spec.builder;
    Pod {
        metadata: with_generation(build, meta),
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            active_deadline_seconds: Some(timeout.min(INDEX_DEADLINE).as_secs().max(1) as i64),
            termination_grace_period_seconds: Some(config.pod_grace_period.as_secs() as i64),
            service_account_name: builder.service_account_name.clone(),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            node_selector: (!builder.node_selector.is_empty())
                .then(|| builder.node_selector.clone()),
            tolerations: (!builder.tolerations.is_empty()).then(|| builder.tolerations.clone()),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(KILN_UID),
                run_as_group: Some(KILN_UID),
                fs_group: Some(KILN_UID),
                ..PodSecurityContext::default()
            }),
            containers: vec![container],
            volumes: (!volumes.is_empty()).then_some(volumes),
            ..PodSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pushed(build: &Build) -> Vec<PlatformStatus> {
        let mut platforms = initial_platforms(build, 3);
        for (n, p) in platforms.iter_mut().enumerate() {
            p.phase = Phase::Succeeded;
            p.digest = Some(format!("sha256:{}", format!("{n}").repeat(64)));
        }
        platforms
    }

    #[test]
    fn platforms_keep_the_specs_order_once_each() {
        let build = Build::test("app")
            .platform("linux/arm64")
            .platform("linux/amd64")
            .platform("linux/arm64");
        let names: Vec<String> = platforms(&build).iter().map(|p| p.to_string()).collect();
        assert_eq!(names, ["linux/arm64", "linux/amd64"]);
        let initial = initial_platforms(&build, 2);
        assert_eq!(initial[0].pod_name, "app-2-linux-arm64");
        assert_eq!(initial[1].pod_name, "app-2-linux-amd64");
        assert!(
            initial
                .iter()
                .all(|p| p.phase == Phase::Pending && p.attempt == 2)
        );
        assert_eq!(progress(&initial), "0/2");
        assert_eq!(progress(&pushed(&build)), "2/2");
    }

    #[test]
    fn the_index_pod_runs_kiln_index_push_with_the_push_secret_and_nothing_else() {
        let build = Build::test("app")
            .in_namespace("team")
            .with_uid("u-1")
            .output("registry.example.com/team/app:v1")
            .platform("linux/amd64")
            .platform("linux/arm64");
        let mut config = Config::default();
        config
            .plain_http_registries
            .insert("registry.local:5000".into());
        let platforms = pushed(&build);
        let pod = index_pod(
            &build,
            3,
            1,
            &platforms,
            Some("push"),
            Duration::from_secs(3600),
            &config,
        );
        assert_eq!(pod.name_any(), "app-3-index");
        assert_eq!(
            pod.labels().get(PLATFORM).map(String::as_str),
            Some("index")
        );
        assert_eq!(
            pod.labels().get("kiln.dev/attempt").map(String::as_str),
            Some("3")
        );
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.active_deadline_seconds, Some(600));
        assert_eq!(spec.automount_service_account_token, Some(false));
        let container = &spec.containers[0];
        assert_eq!(container.name, INDEX_CONTAINER);
        assert_eq!(
            container.image.as_deref(),
            Some(config.index_image.as_str())
        );
        assert_eq!(
            container.args.as_deref().unwrap(),
            [
                "index".to_owned(),
                "push".to_owned(),
                "--image=registry.example.com/team/app:v1".to_owned(),
                format!("--manifest=linux/amd64=sha256:{}", "0".repeat(64)),
                format!("--manifest=linux/arm64=sha256:{}", "1".repeat(64)),
                "--plain-http-registry=registry.local:5000".to_owned(),
                "--termination-log=/dev/termination-log".to_owned(),
            ]
        );
        let security = container.security_context.as_ref().unwrap();
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(
            security.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_owned()][..])
        );
        let volumes = spec.volumes.as_deref().unwrap();
        assert_eq!(volumes.len(), 1);
        assert_eq!(
            volumes[0].secret.as_ref().unwrap().secret_name.as_deref(),
            Some("push")
        );
        // Deterministic, and anonymous without a push Secret.
        let again = index_pod(
            &build,
            3,
            1,
            &platforms,
            Some("push"),
            Duration::from_secs(3600),
            &config,
        );
        assert_eq!(pod, again);
        let anonymous = index_pod(
            &build,
            3,
            2,
            &platforms,
            None,
            Duration::from_secs(60),
            &config,
        );
        assert_eq!(anonymous.name_any(), "app-3-index-2");
        let spec = anonymous.spec.unwrap();
        assert_eq!(spec.volumes, None);
        assert_eq!(spec.active_deadline_seconds, Some(60));
    }

    #[test]
    fn a_signed_native_build_signs_its_index_in_the_index_pod() {
        let build = Build::test("app")
            .in_namespace("team")
            .platform("linux/amd64")
            .platform("linux/arm64")
            .signed_with("image-signing");
        let platforms = pushed(&build);
        let pod = index_pod(
            &build,
            1,
            1,
            &platforms,
            None,
            Duration::from_secs(3600),
            &Config::default(),
        );
        let spec = pod.spec.unwrap();
        let container = &spec.containers[0];
        let args = container.args.as_deref().unwrap();
        assert!(args.contains(&"--sign-key-dir=/var/run/kiln/signing".to_owned()));
        assert_eq!(
            args.last().map(String::as_str),
            Some("--termination-log=/dev/termination-log")
        );
        let volumes = spec.volumes.unwrap();
        assert_eq!(
            volumes[0].secret.as_ref().unwrap().secret_name.as_deref(),
            Some("image-signing")
        );
        assert_eq!(
            container.volume_mounts.as_deref().unwrap()[0].mount_path,
            signing::KEY_DIR
        );
    }
}
