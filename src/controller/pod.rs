//! The build pod and its ConfigMap for one attempt, built from a validated Build (pure and
//! deterministic: the same Build gives byte-identical objects; no map is iterated unsorted).
//!
//! # What rootless BuildKit needs, and why each permission is there
//!
//! The builder is `moby/buildkit:<version>-rootless`, run daemonless
//! (`buildctl-daemonless.sh` starts `buildkitd` under RootlessKit for one build and stops
//! it). Inside, RootlessKit creates a user namespace and maps the image's subordinate IDs
//! (`user:100000:65536`) with `newuidmap`/`newgidmap`; BuildKit then mounts overlay
//! filesystems and runs `RUN` steps with runc, all inside that namespace. The tightest
//! security context that allows this:
//!
//! - **`runAsNonRoot`, `runAsUser: 1000`, `runAsGroup: 1000`** (and `fsGroup: 1000` so the
//!   mounted Secrets are readable): the image's `user`. Nothing runs as root on the node.
//! - **`capabilities: drop [ALL], add [SETUID, SETGID]`**: `newuidmap` and `newgidmap` are
//!   setuid binaries (built by BuildKit with libcap so they keep only `CAP_SETUID` /
//!   `CAP_SETGID` while writing the ID maps). Those two must stay in the bounding set; no
//!   other capability is needed outside the user namespace (inside it, the kernel grants a
//!   full set that is worthless outside).
//! - **`allowPrivilegeEscalation: true`**: the same setuid helpers; `no_new_privs` would stop
//!   them from gaining the two capabilities, and RootlessKit would fall back to a single-ID
//!   mapping under which package managers fail.
//! - **`seccompProfile: Unconfined`**: the runtime's default profile refuses `unshare` and
//!   `mount` with new namespaces to processes without `CAP_SYS_ADMIN`, which is exactly
//!   what RootlessKit and runc do. (A node-local profile, `Localhost`, can narrow this where
//!   the platform team ships one.)
//! - **`appArmorProfile: Unconfined`**: the runtime's default AppArmor profile denies
//!   `mount`, which BuildKit needs for its snapshots.
//! - **`--oci-worker-no-process-sandbox`** (in `BUILDKITD_FLAGS`): otherwise each `RUN`
//!   step gets its own PID namespace and a fresh `/proc`, which needs `procMount: Unmasked`,
//!   only allowed together with `hostUsers: false`. See `buildkit::buildkitd_flags` for the
//!   trade-off.
//! - **`readOnlyRootFilesystem: true`**, with emptyDirs where BuildKit writes: its state
//!   (`~/.local/share/buildkit`; an emptyDir also because the image's `VOLUME` is mounted
//!   `nosuid,nodev` on some nodes), its temporary directory (`~/.local/tmp`, `$TMPDIR`),
//!   RootlessKit's runtime directory (`/run/user/1000`, `$XDG_RUNTIME_DIR`) and `/tmp`.
//! - **`automountServiceAccountToken: false`**, **`enableServiceLinks: false`**: the build
//!   needs no access to the Kubernetes API and no environment from Services.
//! - **`privileged`** is never used: it is what rootless avoids.
//! - **`hostUsers: false`** (`spec.builder.hostUsers`, off unless a Build asks): a user
//!   namespace of the pod's own, so that user 1000 and its two capabilities are nobody's
//!   on the node. Not the default: it needs node support, and a builder image whose
//!   subordinate IDs fit the 65,536 IDs such a pod has, which `moby/buildkit`'s do not.
//!
//! Measured on the local cluster of the end-to-end tests (kubelet 1.36, containerd 2.4,
//! runc 1.4, no AppArmor): with `seccompProfile: RuntimeDefault` RootlessKit cannot
//! create its user namespace (`fork/exec /proc/self/exe: operation not permitted`); with
//! `allowPrivilegeEscalation: false`, or without SETUID and SETGID, `newuidmap` gets no
//! capability (`capset: Operation not permitted`); so each of those stays. With
//! `hostUsers: false` and a builder whose subordinate IDs are `1001:64535`, builds run.
//!
//! # The result
//!
//! `buildctl --metadata-file` writes BuildKit's metadata (with `containerimage.digest`) to
//! a file in `/tmp`, which the build container's command copies to
//! `/dev/termination-log`, where the kubelet reads the container's termination message
//! (buildctl cannot write there itself: see `buildkit::METADATA_FILE`);
//! `terminationMessagePolicy: FallbackToLogsOnError` puts the end of the build log there
//! instead when the build fails, so that the Build's status can say why.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    AppArmorProfile, Capabilities, ConfigMap, ConfigMapVolumeSource, Container,
    EmptyDirVolumeSource, EnvVar, KeyToPath, Pod, PodSecurityContext, PodSpec,
    ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

use super::buildkit::{
    self, BUILDKITD_TOML, CONFIG_DIR, CONTEXT_DIR, DOCKER_CONFIG_DIR, FETCH_DIR, GIT_AUTH_DIR,
    STATE_DIR,
};
use super::cachetoken::wants_token;
use super::config::Config;
use super::labels::{
    GENERATION_ANNOTATION, PLATFORM, attempt_labels, platform_label, platform_pod_name, pod_name,
};
use super::local_context::{receive_args, receiver_container};
use super::podstate::{BUILD_CONTAINER, FETCH_CONTAINER};
use super::signing;
use super::validate::{
    BASIC_AUTH_KEY, DOCKER_CONFIG_KEY, GitAuth, SSH_AUTH_KEY, SourceKind, Validated,
};
use crate::crd::Build;
use crate::oci::platform::Platform;

/// UID and GID of the rootless BuildKit image's user.
pub const BUILDER_UID: i64 = 1000;

/// ConfigMap key of the inline Dockerfile.
const KEY_DOCKERFILE: &str = "Dockerfile";
/// ConfigMap key of the BuildKit daemon configuration.
const KEY_BUILDKITD: &str = "buildkitd.toml";
/// ConfigMap key of the OCI fetch Dockerfile.
const KEY_FETCH: &str = "fetch.Dockerfile";

/// The objects of one attempt.
#[derive(Clone, Debug, PartialEq)]
pub struct AttemptObjects {
    /// The build pod.
    pub pod: Pod,
    /// Its ConfigMap (inline files, fetch Dockerfile, BuildKit configuration), when it
    /// needs one. Created before the pod, with the same name and labels.
    pub config_map: Option<ConfigMap>,
}

/// One platform of a `Native` multi-platform attempt: which platform, which try of it, and
/// the node selector of its pod (see `platforms::pod_node_selector`).
#[derive(Clone, Debug, PartialEq)]
pub struct PlatformPod<'p> {
    /// The platform it builds.
    pub platform: &'p Platform,
    /// Its try, 1 for the first.
    pub try_: u32,
    /// The nodes it may run on.
    pub node_selector: BTreeMap<String, String>,
}

/// Builds the pod (and ConfigMap) of attempt `attempt` of `build`.
pub fn attempt_objects(
    build: &Build,
    attempt: u32,
    validated: &Validated<'_>,
    config: &Config,
) -> AttemptObjects {
    objects(build, attempt, None, validated, config)
}

/// Builds the pod (and ConfigMap) of one platform of a `Native` attempt: the same build pod,
/// for that platform alone, on its nodes, pushing by digest. Its ConfigMap and cache-token
/// Secret are the attempt's, named [`pod_name`]`(build, attempt)` and shared by every
/// platform pod of the attempt: their contents are the same for all, so one of each saves
/// two API writes per further platform.
pub fn platform_objects(
    build: &Build,
    attempt: u32,
    platform: &PlatformPod<'_>,
    validated: &Validated<'_>,
    config: &Config,
) -> AttemptObjects {
    objects(build, attempt, Some(platform), validated, config)
}

fn objects(
    build: &Build,
    attempt: u32,
    platform: Option<&PlatformPod<'_>>,
    validated: &Validated<'_>,
    config: &Config,
) -> AttemptObjects {
    let name = match platform {
        Some(p) => platform_pod_name(&build.name_any(), attempt, &p.platform.slug(), p.try_),
        None => pod_name(&build.name_any(), attempt),
    };
    // The ConfigMap and token Secret of the attempt (shared by its platform pods).
    let shared = pod_name(&build.name_any(), attempt);
    let mut meta = attempt_meta(build, attempt, &name);
    if let (Some(p), Some(labels)) = (platform, meta.labels.as_mut()) {
        labels.insert(PLATFORM.to_owned(), platform_label(&p.platform.slug()));
    }
    let files = config_files(build, validated, config);
    let config_map = (!files.data.is_empty()).then(|| ConfigMap {
        metadata: attempt_meta(build, attempt, &shared),
        data: Some(files.data.clone()),
        // One attempt, one content: immutable spares the kubelet a watch.
        immutable: Some(true),
        ..ConfigMap::default()
    });
    // With a cache token, the attempt's own Secret holds the push credentials too (see
    // `cachetoken`): BuildKit reads a single Docker config.
    let docker_config = if wants_token(build, config) {
        Some(shared.as_str())
    } else {
        validated.push_secret
    };
    // A signed single-pod attempt: the build runs as the last init container, and the
    // `sign` container after it (see `signing`).
    let sign_key = signing::key_secret(build).filter(|_| platform.is_none());
    let (mut volumes, mut mounts) = volumes(&shared, validated, &files, docker_config);
    if let Some(secret) = sign_key {
        volumes.push(empty_dir(signing::RESULT_VOLUME));
        volumes.push(signing::key_volume(secret).0);
        mounts.push(mount(signing::RESULT_VOLUME, signing::RESULT_DIR, false));
    }
    let (init_containers, main) = containers(
        build,
        validated,
        config,
        ContainerInputs {
            buildkitd: files.buildkitd,
            docker_config: docker_config.is_some(),
            platform: platform.map(|p| p.platform),
        },
        mounts,
    );
    let (init_containers, main) = match sign_key {
        Some(_) => {
            let sign = signing::sign_container(
                build,
                config,
                BUILDER_UID,
                main.volume_mounts.as_deref().unwrap_or_default(),
            );
            let mut init = init_containers.unwrap_or_default();
            init.push(main);
            (Some(init), sign)
        }
        None => (init_containers, main),
    };
    let node_selector = match platform {
        Some(p) => p.node_selector.clone(),
        None => build.spec.builder.node_selector.clone(),
    };
    let pod = Pod {
        metadata: with_generation(build, meta),
        spec: Some(PodSpec {
            node_selector: (!node_selector.is_empty()).then_some(node_selector),
            ..pod_spec(build, validated, config, init_containers, main, volumes)
        }),
        status: None,
    };
    AttemptObjects { pod, config_map }
}

/// `meta` with the annotation that says which generation of `build` a pod builds.
pub fn with_generation(build: &Build, meta: ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        annotations: Some(BTreeMap::from([(
            GENERATION_ANNOTATION.to_owned(),
            build.metadata.generation.unwrap_or_default().to_string(),
        )])),
        ..meta
    }
}

/// The name, namespace, labels and owner the pod and ConfigMap of an attempt share.
pub fn attempt_meta(build: &Build, attempt: u32, name: &str) -> ObjectMeta {
    let labels = attempt_labels(
        &build.name_any(),
        build.metadata.uid.as_deref().unwrap_or_default(),
        attempt,
    );
    let owner = build
        .controller_owner_ref(&())
        .into_iter()
        .collect::<Vec<_>>();
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: build.namespace(),
        labels: Some(labels),
        owner_references: Some(owner),
        ..ObjectMeta::default()
    }
}

/// What an attempt's ConfigMap holds.
struct ConfigFiles {
    /// Its data, by key (empty when the attempt needs no ConfigMap).
    data: BTreeMap<String, String>,
    /// The inline files: ConfigMap key and path in the build context, the Dockerfile
    /// first, then in path order.
    inline: Vec<(String, String)>,
    /// Whether it holds a BuildKit daemon configuration.
    buildkitd: bool,
}

/// The ConfigMap data of an attempt: inline files, the fetch Dockerfile, the BuildKit
/// configuration.
fn config_files(build: &Build, validated: &Validated<'_>, config: &Config) -> ConfigFiles {
    let mut data = BTreeMap::new();
    // Inline files become `file-<n>` keys in path order (keys cannot hold '/'), each
    // mounted at its path with subPath: real files, not the symlinks a ConfigMap volume
    // holds, which BuildKit would copy into the image as they are.
    let mut inline = Vec::new();
    if let SourceKind::Inline(source) = validated.source {
        data.insert(KEY_DOCKERFILE.to_owned(), source.dockerfile.clone());
        inline.push((KEY_DOCKERFILE.to_owned(), build.spec.dockerfile.clone()));
        let mut files: Vec<_> = source.files.iter().collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        for (n, file) in files.into_iter().enumerate() {
            let key = format!("file-{n}");
            data.insert(key.clone(), file.content.clone());
            inline.push((key, file.path.clone()));
        }
    }
    if let SourceKind::Oci(oci) = validated.source {
        data.insert(KEY_FETCH.to_owned(), buildkit::fetch_dockerfile(&oci.image));
    }
    let buildkitd_toml = buildkit::buildkitd_toml(config);
    let buildkitd = buildkitd_toml.is_some();
    if let Some(toml) = buildkitd_toml {
        data.insert(KEY_BUILDKITD.to_owned(), toml);
    }
    ConfigFiles {
        data,
        inline,
        buildkitd,
    }
}

/// The pod's volumes and the build container's mounts: scratch space, the ConfigMap, the
/// Docker config and git credentials, and each inline file.
fn volumes(
    name: &str,
    validated: &Validated<'_>,
    files: &ConfigFiles,
    docker_config: Option<&str>,
) -> (Vec<Volume>, Vec<VolumeMount>) {
    let mut volumes = vec![
        empty_dir("buildkit-state"),
        empty_dir("buildkit-tmp"),
        empty_dir("runtime-dir"),
        empty_dir("tmp"),
    ];
    let mut mounts = vec![
        mount("buildkit-state", STATE_DIR, false),
        mount("buildkit-tmp", "/home/user/.local/tmp", false),
        mount("runtime-dir", "/run/user/1000", false),
        mount("tmp", "/tmp", false),
    ];
    let local_context = matches!(
        validated.source,
        SourceKind::Oci(_) | SourceKind::Inline(_) | SourceKind::Local(_)
    );
    if local_context {
        volumes.push(empty_dir("workspace"));
        mounts.push(mount("workspace", "/workspace", false));
    }
    if !files.data.is_empty() {
        volumes.push(config_volume(name, validated, files));
        mounts.push(mount("kiln-config", CONFIG_DIR, true));
    }
    if let Some(secret) = docker_config {
        volumes.push(secret_volume(
            "docker-config",
            secret,
            DOCKER_CONFIG_KEY,
            "config.json",
        ));
        mounts.push(mount("docker-config", DOCKER_CONFIG_DIR, true));
    }
    let git_auth = match &validated.git_auth {
        Some(GitAuth::Token { secret }) => Some((secret, BASIC_AUTH_KEY)),
        Some(GitAuth::Ssh { secret }) => Some((secret, SSH_AUTH_KEY)),
        None => None,
    };
    if let Some((secret, key)) = git_auth {
        volumes.push(secret_volume("git-auth", secret, key, key));
        mounts.push(mount("git-auth", GIT_AUTH_DIR, true));
    }
    let mut inline_mounts: Vec<VolumeMount> = files
        .inline
        .iter()
        .map(|(key, path)| VolumeMount {
            name: "kiln-config".into(),
            mount_path: format!("{CONTEXT_DIR}/{path}"),
            sub_path: Some(format!("context/{key}")),
            read_only: Some(true),
            ..VolumeMount::default()
        })
        .collect();
    inline_mounts.sort_by(|a, b| a.mount_path.cmp(&b.mount_path));
    mounts.extend(inline_mounts);
    (volumes, mounts)
}

/// The ConfigMap `name` as a volume: each of its keys at the path the builder reads.
fn config_volume(name: &str, validated: &Validated<'_>, files: &ConfigFiles) -> Volume {
    let mut items = Vec::new();
    if files.buildkitd {
        items.push(key_to_path(KEY_BUILDKITD, BUILDKITD_TOML));
    }
    if matches!(validated.source, SourceKind::Oci(_)) {
        items.push(key_to_path(KEY_FETCH, &format!("{FETCH_DIR}/Dockerfile")));
    }
    for (key, _) in &files.inline {
        items.push(key_to_path(key, &format!("context/{key}")));
    }
    Volume {
        name: "kiln-config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: name.to_owned(),
            items: Some(items),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

/// What the build containers depend on besides the Build.
struct ContainerInputs<'p> {
    /// The ConfigMap holds a BuildKit daemon configuration.
    buildkitd: bool,
    /// A Docker config is mounted.
    docker_config: bool,
    /// The one platform of a native attempt's pod.
    platform: Option<&'p Platform>,
}

/// The init containers (the OCI fetch, for an OCI source) and the build container, which
/// mounts `mounts`.
fn containers(
    build: &Build,
    validated: &Validated<'_>,
    config: &Config,
    inputs: ContainerInputs<'_>,
    mounts: Vec<VolumeMount>,
) -> (Option<Vec<Container>>, Container) {
    let ContainerInputs {
        buildkitd,
        docker_config,
        platform,
    } = inputs;
    let image = build
        .spec
        .builder
        .image
        .clone()
        .unwrap_or_else(|| config.builder_image.clone());
    let mut env = vec![EnvVar {
        name: "BUILDKITD_FLAGS".into(),
        value: Some(buildkit::buildkitd_flags(buildkitd)),
        ..EnvVar::default()
    }];
    if docker_config {
        env.push(EnvVar {
            name: "DOCKER_CONFIG".into(),
            value: Some(DOCKER_CONFIG_DIR.into()),
            ..EnvVar::default()
        });
    }
    let resources = resources(build, config);
    let builder =
        |name: &str, command: Vec<String>, args: Vec<String>, mounts: Vec<VolumeMount>| Container {
            name: name.to_owned(),
            image: Some(image.clone()),
            command: Some(command),
            args: Some(args),
            env: Some(env.clone()),
            resources: Some(resources.clone()),
            security_context: Some(container_security_context()),
            volume_mounts: Some(mounts),
            termination_message_path: Some(buildkit::TERMINATION_MESSAGE.into()),
            termination_message_policy: Some("FallbackToLogsOnError".into()),
            ..Container::default()
        };
    let init_containers = match validated.source {
        SourceKind::Oci(_) => {
            let fetch_mounts = mounts
                .iter()
                .filter(|m| m.sub_path.is_none() && m.name != "git-auth")
                .cloned()
                .collect();
            Some(vec![builder(
                FETCH_CONTAINER,
                vec!["buildctl-daemonless.sh".into()],
                buildkit::fetch_args(),
                fetch_mounts,
            )])
        }
        SourceKind::Local(local) => receive_args(build, &local, validated.timeout, config)
            .map(|args| vec![receiver_container(args, config, BUILDER_UID, &mounts)]),
        SourceKind::Git(_) | SourceKind::Inline(_) => None,
    };
    let main = builder(
        BUILD_CONTAINER,
        buildkit::build_command(),
        buildkit::build_args(build, validated, config, platform),
        mounts,
    );
    (init_containers, main)
}

/// The pod spec around the containers: never restarted, bounded by the attempt's
/// timeout, as the builder's user, with no API access.
fn pod_spec(
    build: &Build,
    validated: &Validated<'_>,
    config: &Config,
    init_containers: Option<Vec<Container>>,
    main: Container,
    volumes: Vec<Volume>,
) -> PodSpec {
    let spec = &build.spec.builder;
    PodSpec {
        restart_policy: Some("Never".into()),
        active_deadline_seconds: Some(validated.timeout.as_secs() as i64),
        termination_grace_period_seconds: Some(config.pod_grace_period.as_secs() as i64),
        service_account_name: spec.service_account_name.clone(),
        host_users: spec.host_users,
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        node_selector: (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone()),
        tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(BUILDER_UID),
            run_as_group: Some(BUILDER_UID),
            fs_group: Some(BUILDER_UID),
            ..PodSecurityContext::default()
        }),
        init_containers,
        containers: vec![main],
        volumes: Some(volumes),
        ..PodSpec::default()
    }
}

fn key_to_path(key: &str, path: &str) -> KeyToPath {
    KeyToPath {
        key: key.to_owned(),
        path: path.to_owned(),
        mode: None,
    }
}

fn secret_volume(name: &str, secret: &str, key: &str, path: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_owned()),
            items: Some(vec![key_to_path(key, path)]),
            // Readable by the builder's group (fsGroup), by nobody else.
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// The tightest security context rootless BuildKit runs under (see the module docs).
pub fn container_security_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(BUILDER_UID),
        run_as_group: Some(BUILDER_UID),
        allow_privilege_escalation: Some(true),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: Some(vec!["SETGID".into(), "SETUID".into()]),
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "Unconfined".into(),
            localhost_profile: None,
        }),
        app_armor_profile: Some(AppArmorProfile {
            type_: "Unconfined".into(),
            localhost_profile: None,
        }),
        ..SecurityContext::default()
    }
}

/// The builder's resources: the Build's own, with the controller's default requests for
/// any resource the Build requests nothing of (a builder always has requests, so that the
/// scheduler accounts for it).
fn resources(build: &Build, config: &Config) -> ResourceRequirements {
    let mut resources = build.spec.builder.resources.clone().unwrap_or_default();
    let limits = resources.limits.clone().unwrap_or_default();
    let requests = resources.requests.get_or_insert_with(BTreeMap::new);
    for (resource, quantity) in &config.default_requests {
        // A limit without a request means request = limit (Kubernetes' own default).
        if !requests.contains_key(resource) && !limits.contains_key(resource) {
            requests.insert(resource.clone(), quantity.clone());
        }
    }
    resources
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::config::{CacheService, parse_mirror};
    use crate::controller::podstate::CONTEXT_CONTAINER;
    use crate::controller::validate::{SecretInfo, validate};
    use crate::crd::{CacheMode, CacheScope};
    use std::collections::BTreeSet;
    use std::path::PathBuf;

    fn secrets() -> BTreeMap<String, SecretInfo> {
        [
            (
                "regcred",
                "kubernetes.io/dockerconfigjson",
                ".dockerconfigjson",
            ),
            ("git-token", "kubernetes.io/basic-auth", "password"),
        ]
        .into_iter()
        .map(|(n, t, k)| {
            (
                n.to_owned(),
                SecretInfo {
                    type_: t.into(),
                    keys: BTreeSet::from([k.to_owned()]),
                },
            )
        })
        .collect()
    }

    fn yaml(build: &Build, config: &Config) -> String {
        let validated = validate(build, &secrets(), config).expect("valid build");
        let objects = attempt_objects(build, 3, &validated, config);
        let mut out = serde_yaml::to_string(&objects.pod).unwrap();
        if let Some(cm) = &objects.config_map {
            out.push_str("---\n");
            out.push_str(&serde_yaml::to_string(cm).unwrap());
        }
        out
    }

    /// Compares `actual` with `tests/snapshots/<name>.yaml`. With `KILN_UPDATE_SNAPSHOTS=1`
    /// it rewrites the file instead (then review the diff before committing it).
    fn assert_snapshot(name: &str, actual: &str) {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/snapshots")
            .join(format!("{name}.yaml"));
        if std::env::var_os("KILN_UPDATE_SNAPSHOTS").is_some() {
            std::fs::write(&path, actual).unwrap();
            return;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_default();
        if expected != actual {
            let line = expected
                .lines()
                .zip(actual.lines())
                .position(|(e, a)| e != a)
                .map_or(expected.lines().count().min(actual.lines().count()), |n| n)
                + 1;
            panic!(
                "pod snapshot {} differs from the builder's output (first difference at line {line}).\n\
                 If the change is intended, regenerate with:\n  \
                 KILN_UPDATE_SNAPSHOTS=1 cargo test --lib controller::pod\n\
                 and review `git diff tests/snapshots`.\n--- actual ---\n{actual}",
                path.display()
            );
        }
    }

    fn full_config() -> Config {
        let mut config = Config {
            cache_service: Some(
                CacheService::parse("http://kiln-cache.kiln-system.svc:5000").unwrap(),
            ),
            ..Config::default()
        };
        let (registry, mirror) = parse_mirror("docker.io=mirror.gcr.io").unwrap();
        config.registry_mirrors.insert(registry, mirror);
        config
    }

    #[test]
    fn snapshot_git_build_with_credentials_cache_and_platforms() {
        let build = Build::test("app")
            .in_namespace("team")
            .git(
                "https://git.example.com/team/app.git",
                Some("v1.2.0"),
                Some("services/api"),
            )
            .clone_secret("git-token")
            .push_secret("regcred")
            .target("runtime")
            .build_arg("VERSION", "1.2.0")
            .build_arg("GOFLAGS", "-mod=vendor")
            .platform("linux/arm64")
            .platform("linux/amd64")
            .cache(CacheMode::Max, CacheScope::Namespace);
        assert_snapshot("pod-git", &yaml(&build, &full_config()));
    }

    #[test]
    fn snapshot_inline_build() {
        let build = Build::test("hello")
            .inline("FROM alpine:3.20\nCOPY . /app\n")
            .inline_file("src/main.sh", "echo hello\n")
            .inline_file("README.md", "hello\n");
        assert_snapshot("pod-inline", &yaml(&build, &Config::default()));
    }

    #[test]
    fn a_signed_build_runs_as_the_last_init_container_then_signs() {
        let build = Build::test("hello")
            .inline("FROM alpine:3.20\n")
            .push_secret("regcred")
            .signed_with("image-signing");
        let mut secrets = secrets();
        secrets.insert(
            "image-signing".into(),
            SecretInfo {
                type_: "Opaque".into(),
                keys: ["cosign.key".to_owned(), "cosign.password".to_owned()].into(),
            },
        );
        let validated = validate(&build, &secrets, &Config::default()).expect("valid build");
        let pod = attempt_objects(&build, 1, &validated, &Config::default()).pod;
        let spec = pod.spec.unwrap();
        let init = spec.init_containers.unwrap();
        let build_container = init.last().unwrap();
        assert_eq!(build_container.name, BUILD_CONTAINER);
        assert!(
            build_container
                .volume_mounts
                .as_deref()
                .unwrap()
                .iter()
                .any(|m| m.mount_path == signing::RESULT_DIR && m.read_only.is_none()),
            "the build leaves its metadata for the sign step"
        );
        assert_eq!(spec.containers.len(), 1);
        assert_eq!(spec.containers[0].name, "sign");
        let volumes = spec.volumes.unwrap();
        let names: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
        assert!(names.contains(&signing::RESULT_VOLUME), "{names:?}");
        assert!(names.contains(&signing::KEY_VOLUME), "{names:?}");
        // The builder never mounts the key.
        assert!(
            build_container
                .volume_mounts
                .as_deref()
                .unwrap()
                .iter()
                .all(|m| m.mount_path != signing::KEY_DIR)
        );
        // A native platform pod neither signs nor mounts the key: its index pod signs.
        let native = build
            .clone()
            .platform("linux/amd64")
            .platform("linux/arm64");
        let validated = validate(&native, &secrets, &Config::default()).expect("valid build");
        let amd64 = Platform::parse("linux/amd64").unwrap();
        let platform_pod = platform_objects(
            &native,
            1,
            &PlatformPod {
                platform: &amd64,
                try_: 1,
                node_selector: BTreeMap::new(),
            },
            &validated,
            &Config::default(),
        )
        .pod;
        let spec = platform_pod.spec.unwrap();
        assert_eq!(spec.containers[0].name, BUILD_CONTAINER);
        assert!(
            spec.volumes
                .unwrap()
                .iter()
                .all(|v| v.name != signing::KEY_VOLUME)
        );
    }

    #[test]
    fn snapshot_oci_build() {
        let build = Build::test("ctx")
            .oci("registry.example.com/team/context@sha256:2222222222222222222222222222222222222222222222222222222222222222")
            .push_secret("regcred");
        assert_snapshot("pod-oci", &yaml(&build, &Config::default()));
    }

    const LOCAL_DIGEST: &str =
        "sha256:3333333333333333333333333333333333333333333333333333333333333333";

    #[test]
    fn snapshot_local_build_with_a_cache_token() {
        let mut config = full_config();
        config.cache_token_key =
            Some(crate::cacheapi::token::TokenKey::from_bytes(&[7; 32]).unwrap());
        let build = Build::test("dev")
            .in_namespace("team")
            .local(LOCAL_DIGEST, 104_857_600)
            .push_secret("regcred");
        assert_snapshot("pod-local", &yaml(&build, &config));
    }

    /// The receiver shares exactly two volumes with the builder: the workspace it unpacks
    /// into and the attempt's Docker config (the cache token); it runs as the builder's
    /// user, so the context it writes is the builder's, with nothing of the builder's
    /// privileges.
    #[test]
    fn a_local_build_receives_its_context_in_a_restricted_init_container() {
        let mut config = full_config();
        config.cache_token_key =
            Some(crate::cacheapi::token::TokenKey::from_bytes(&[7; 32]).unwrap());
        // The receiver needs the cache token even with the build cache off.
        let build = Build::test("dev")
            .local(LOCAL_DIGEST, 4096)
            .cache(CacheMode::Off, CacheScope::Build);
        let validated = validate(&build, &secrets(), &config).unwrap();
        let pod = attempt_objects(&build, 1, &validated, &config).pod;
        let spec = pod.spec.unwrap();
        let init = spec.init_containers.unwrap();
        assert_eq!(init.len(), 1);
        let receiver = &init[0];
        assert_eq!(receiver.name, CONTEXT_CONTAINER);
        assert_eq!(receiver.image.as_deref(), Some(config.index_image.as_str()));
        let mounts: Vec<_> = receiver
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.name.as_str(), m.mount_path.as_str()))
            .collect();
        assert_eq!(
            mounts,
            vec![
                ("workspace", "/workspace"),
                ("docker-config", DOCKER_CONFIG_DIR)
            ]
        );
        let sc = receiver.security_context.clone().unwrap();
        assert_eq!(sc.run_as_user, Some(BUILDER_UID));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.capabilities.unwrap().add, None);
        let args = receiver.args.clone().unwrap();
        assert!(
            args.contains(&format!("--digest={LOCAL_DIGEST}")),
            "{args:?}"
        );
        let build_args = spec.containers[0].args.clone().unwrap();
        assert!(build_args.contains(&format!("--local=context={CONTEXT_DIR}")));
        assert!(
            !build_args.iter().any(|a| a.contains("--import-cache")),
            "{build_args:?}"
        );
    }

    #[test]
    fn a_local_build_needs_the_cache_service() {
        let build = Build::test("dev").local(LOCAL_DIGEST, 4096);
        let problem = validate(&build, &secrets(), &Config::default()).unwrap_err();
        assert_eq!(problem.reason, crate::crd::Reason::InvalidSpec);
        assert!(
            problem.message.contains("--cache-service"),
            "{}",
            problem.message
        );
        let bad = Build::test("dev").local("sha512:00", 4096);
        let problem = validate(&bad, &secrets(), &full_config()).unwrap_err();
        assert!(
            problem.message.starts_with("spec.source.local.digest"),
            "{}",
            problem.message
        );
        let small = Build::test("dev").local(LOCAL_DIGEST, 10);
        let problem = validate(&small, &secrets(), &full_config()).unwrap_err();
        assert!(
            problem.message.starts_with("spec.source.local.size"),
            "{}",
            problem.message
        );
    }

    #[test]
    fn the_same_build_gives_byte_identical_yaml_whatever_the_order_of_its_maps_and_sets() {
        let a = Build::test("app")
            .inline("FROM scratch\n")
            .inline_file("b.txt", "b")
            .inline_file("a.txt", "a")
            .build_arg("B", "2")
            .build_arg("A", "1")
            .platform("linux/arm64")
            .platform("linux/amd64");
        let b = Build::test("app")
            .inline("FROM scratch\n")
            .inline_file("a.txt", "a")
            .inline_file("b.txt", "b")
            .build_arg("A", "1")
            .build_arg("B", "2")
            .platform("linux/amd64")
            .platform("linux/arm64");
        // Also through JSON with keys in a different order, as an API server might send them.
        let mut json = serde_json::to_value(&b).unwrap();
        let node_selector = serde_json::json!({"zone": "b", "arch": "amd64"});
        json["spec"]["builder"]["nodeSelector"] = node_selector;
        let c: Build = serde_json::from_value(json).unwrap();
        let mut a = a;
        a.spec.builder.node_selector =
            BTreeMap::from([("arch".into(), "amd64".into()), ("zone".into(), "b".into())]);
        let config = full_config();
        assert_eq!(yaml(&a, &config), yaml(&c, &config));
        // And one build rendered twice is the same.
        assert_eq!(yaml(&a, &config), yaml(&a, &config));
    }

    #[test]
    fn every_container_runs_with_the_documented_security_context() {
        let build = Build::test("ctx").oci("registry.example.com/c:1");
        let validated = validate(&build, &secrets(), &Config::default()).unwrap();
        let pod = attempt_objects(&build, 1, &validated, &Config::default()).pod;
        let spec = pod.spec.unwrap();
        let containers: Vec<_> = spec
            .init_containers
            .unwrap_or_default()
            .into_iter()
            .chain(spec.containers)
            .collect();
        assert_eq!(containers.len(), 2);
        for c in containers {
            let sc = c.security_context.unwrap();
            assert_eq!(sc.run_as_non_root, Some(true));
            assert_eq!(sc.read_only_root_filesystem, Some(true));
            let caps = sc.capabilities.unwrap();
            assert_eq!(caps.drop, Some(vec!["ALL".to_owned()]));
            assert_eq!(
                caps.add,
                Some(vec!["SETGID".to_owned(), "SETUID".to_owned()])
            );
            assert_eq!(sc.privileged, None);
        }
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.active_deadline_seconds, Some(3600));
    }

    /// buildctl renames a temporary file over its `--metadata-file`: that file must lie in
    /// a directory the builder may write (an emptyDir of the container), and be neither in
    /// the read-only root filesystem nor the termination message the kubelet bind-mounts.
    #[test]
    fn buildctl_writes_its_metadata_into_a_writable_volume_and_the_command_copies_it() {
        let build = Build::test("hello").inline("FROM scratch\n");
        let validated = validate(&build, &secrets(), &Config::default()).unwrap();
        let pod = attempt_objects(&build, 1, &validated, &Config::default()).pod;
        let spec = pod.spec.unwrap();
        let container = &spec.containers[0];
        let args = container.args.clone().unwrap();
        let metadata = args
            .iter()
            .find_map(|a| a.strip_prefix("--metadata-file="))
            .expect("a --metadata-file argument");
        let termination = container.termination_message_path.as_deref().unwrap();
        assert_ne!(metadata, termination);
        let directory = std::path::Path::new(metadata).parent().unwrap();
        let mount = container
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| std::path::Path::new(&m.mount_path) == directory)
            .unwrap_or_else(|| panic!("no volume mounted at {}", directory.display()));
        assert_ne!(mount.read_only, Some(true));
        let volume = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .unwrap();
        assert!(volume.empty_dir.is_some(), "{volume:?}");
        let command = container.command.clone().unwrap().join(" ");
        assert!(
            command.contains(&format!("cat {metadata} > {termination}")),
            "{command}"
        );
    }

    #[test]
    fn host_users_is_the_builds_own_and_unset_by_default() {
        let build = Build::test("hello").inline("FROM scratch\n");
        let validated = validate(&build, &secrets(), &Config::default()).unwrap();
        let pod = attempt_objects(&build, 1, &validated, &Config::default()).pod;
        assert_eq!(pod.spec.unwrap().host_users, None);
        let mut userns = build.clone();
        userns.spec.builder.host_users = Some(false);
        let validated = validate(&userns, &secrets(), &Config::default()).unwrap();
        let pod = attempt_objects(&userns, 1, &validated, &Config::default()).pod;
        assert_eq!(pod.spec.unwrap().host_users, Some(false));
    }

    #[test]
    fn requests_default_per_resource_and_never_override_the_build() {
        let mut build = Build::test("app");
        build.spec.builder.resources = Some(ResourceRequirements {
            limits: Some(BTreeMap::from([(
                "memory".into(),
                k8s_openapi::apimachinery::pkg::api::resource::Quantity("8Gi".into()),
            )])),
            ..ResourceRequirements::default()
        });
        let r = resources(&build, &Config::default());
        let requests = r.requests.unwrap();
        // cpu defaulted; memory left to Kubernetes (request = limit).
        assert!(requests.contains_key("cpu"));
        assert!(!requests.contains_key("memory"));
    }
}
