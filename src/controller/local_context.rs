//! The `context` init container of a Build with `spec.source.local`, and where its context
//! is kept on the cache (pure).
//!
//! The container runs the Kiln image's `kiln context receive`: it takes the tar the Build
//! names by digest from the namespace's contexts repository on the cache, or, when no
//! upload put it there yet, receives it from `kubectl kiln build --local` through the API
//! server's `pods/proxy` (see [`crate::context::protocol`]), stores it in the cache and
//! unpacks it into the build context directory that the build container then reads. It
//! authenticates with the attempt's cache token, which is scoped to the Build's namespace,
//! so a Build can only ever read or write contexts of its own namespace.
//!
//! Each pod of the attempt (one per platform for a `Native` build) runs its own receiver:
//! the user uploads to one, and the others find the tar in the cache a poll later.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, ResourceRequirements, SeccompProfile,
    SecurityContext, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::buildkit::{
    CONTEXT_DIR, DOCKER_CONFIG_DIR, TERMINATION_MESSAGE, namespace_repository_prefix,
};
use super::config::Config;
use super::podstate::CONTEXT_CONTAINER;
use super::validate::LocalContext;
use crate::context::protocol::{
    CONTEXTS_REPOSITORY, RECEIVER_PORT, RECEIVER_PORT_NAME, context_tag,
};
use crate::crd::Build;

/// The longest a receiver waits for an upload to complete. An upload that has not
/// finished by then has been abandoned (the uploader was interrupted), and the pod should
/// not hold a build slot for the whole of `spec.timeout`.
pub const MAX_UPLOAD_WAIT: Duration = Duration::from_secs(20 * 60);

/// How often a waiting receiver looks whether another pod of the attempt stored the
/// context in the cache.
pub const POLL: Duration = Duration::from_secs(2);

/// The contexts repository of the Build's namespace on the cache
/// (`[<path>/]<namespace>/kiln_contexts`); `None` without a cache service.
pub fn contexts_repository(build: &Build, config: &Config) -> Option<String> {
    namespace_repository_prefix(build, config).map(|ns| format!("{ns}/{CONTEXTS_REPOSITORY}"))
}

/// The tag that keeps the Build's context in [`contexts_repository`].
pub fn build_context_tag(build: &Build) -> String {
    context_tag(build.metadata.uid.as_deref().unwrap_or_default())
}

/// The `kiln context receive` arguments of the Build's receiver; `None` without a cache
/// service (validation refuses a local source then).
pub fn receive_args(
    build: &Build,
    local: &LocalContext,
    timeout: Duration,
    config: &Config,
) -> Option<Vec<String>> {
    let service = config.cache_service.as_ref()?;
    let repository = contexts_repository(build, config)?;
    let wait = timeout.min(MAX_UPLOAD_WAIT);
    Some(vec![
        "context".into(),
        "receive".into(),
        format!("--registry={}", service.root_url()),
        format!("--repository={repository}"),
        format!("--tag={}", build_context_tag(build)),
        format!("--digest={}", local.digest),
        format!("--size={}", local.size),
        format!("--dest={CONTEXT_DIR}"),
        format!("--listen=0.0.0.0:{RECEIVER_PORT}"),
        format!("--wait={}s", wait.as_secs()),
        format!("--poll={}s", POLL.as_secs()),
        format!("--termination-log={TERMINATION_MESSAGE}"),
    ])
}

/// The receiver init container: the Kiln image, as the build's user (so that the context
/// it unpacks belongs to the builder), with nothing but the workspace and the Docker
/// config mounted, no capabilities, a read-only root and the runtime's seccomp profile.
pub fn receiver_container(
    args: Vec<String>,
    config: &Config,
    uid: i64,
    mounts: &[VolumeMount],
) -> Container {
    let mounts: Vec<VolumeMount> = mounts
        .iter()
        .filter(|m| m.mount_path == "/workspace" || m.mount_path == DOCKER_CONFIG_DIR)
        .cloned()
        .collect();
    let docker_config = mounts.iter().any(|m| m.mount_path == DOCKER_CONFIG_DIR);
    Container {
        name: CONTEXT_CONTAINER.into(),
        image: Some(config.index_image.clone()),
        args: Some(args),
        env: docker_config.then(docker_config_env),
        ports: Some(vec![ContainerPort {
            name: Some(RECEIVER_PORT_NAME.into()),
            container_port: i32::from(RECEIVER_PORT),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        // Two chunks in flight and the unpacker's buffers.
        resources: Some(kiln_resources("50m", "64Mi", "256Mi")),
        security_context: Some(restricted_security_context(uid)),
        volume_mounts: Some(mounts),
        termination_message_path: Some(TERMINATION_MESSAGE.into()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    }
}

/// `DOCKER_CONFIG` naming the mounted Docker config, for a container of the Kiln image.
pub fn docker_config_env() -> Vec<EnvVar> {
    vec![EnvVar {
        name: "DOCKER_CONFIG".into(),
        value: Some(DOCKER_CONFIG_DIR.into()),
        ..EnvVar::default()
    }]
}

/// The requests and memory limit of a container of the Kiln image (it builds nothing).
pub fn kiln_resources(cpu: &str, memory: &str, memory_limit: &str) -> ResourceRequirements {
    let quantity = |q: &str| Quantity(q.to_owned());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), quantity(cpu)),
            ("memory".to_owned(), quantity(memory)),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            quantity(memory_limit),
        )])),
        ..ResourceRequirements::default()
    }
}

/// The security context of Kiln's own short containers (the receiver, the index pusher):
/// non-root as `uid`, no privilege escalation, no capabilities, a read-only root, the
/// runtime's default seccomp profile.
pub fn restricted_security_context(uid: i64) -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        run_as_group: Some(uid),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..SecurityContext::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::config::CacheService;
    use crate::oci::digest::Digest;

    fn config() -> Config {
        Config {
            cache_service: Some(
                CacheService::parse("http://kiln-cache.kiln-system.svc:5000/kiln").unwrap(),
            ),
            ..Config::default()
        }
    }

    fn local() -> LocalContext {
        LocalContext {
            digest: Digest::of(b"tar"),
            size: 4096,
        }
    }

    #[test]
    fn the_context_lives_in_the_namespace_contexts_repository_under_the_builds_uid() {
        let build = Build::test("app");
        assert_eq!(
            contexts_repository(&build, &config()).as_deref(),
            Some("kiln/default/kiln_contexts")
        );
        assert_eq!(
            build_context_tag(&build),
            format!("build-{}", build.metadata.uid.clone().unwrap())
        );
        assert_eq!(contexts_repository(&build, &Config::default()), None);
    }

    #[test]
    fn the_receiver_is_told_everything_it_needs_and_waits_at_most_twenty_minutes() {
        let build = Build::test("app");
        let args = receive_args(&build, &local(), Duration::from_secs(3600), &config()).unwrap();
        let uid = build.metadata.uid.clone().unwrap();
        assert_eq!(
            args,
            vec![
                "context".to_owned(),
                "receive".into(),
                "--registry=http://kiln-cache.kiln-system.svc:5000".into(),
                "--repository=kiln/default/kiln_contexts".into(),
                format!("--tag=build-{uid}"),
                format!("--digest={}", Digest::of(b"tar")),
                "--size=4096".into(),
                "--dest=/workspace/context".into(),
                "--listen=0.0.0.0:8080".into(),
                "--wait=1200s".into(),
                "--poll=2s".into(),
                "--termination-log=/dev/termination-log".into(),
            ]
        );
        let short = receive_args(&build, &local(), Duration::from_secs(300), &config()).unwrap();
        assert!(short.contains(&"--wait=300s".to_owned()));
        assert_eq!(
            receive_args(
                &build,
                &local(),
                Duration::from_secs(300),
                &Config::default()
            ),
            None
        );
    }
}
