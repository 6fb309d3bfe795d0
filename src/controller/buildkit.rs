//! What the builder runs: `buildctl-daemonless.sh` arguments, the BuildKit daemon's
//! configuration (registry mirrors, plain-HTTP registries) and cache references (pure).
//!
//! Arguments are passed as an argv, never through a shell, so no value from a Build is ever
//! interpreted by one. Everything is emitted in a fixed order from sorted inputs.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use kube::ResourceExt;

use super::config::Config;
use super::validate::{GitAuth, SourceKind, Validated};
use crate::crd::{Attestations, Build, CacheMode, CacheScope, GitSource, ProvenanceMode};
use crate::oci::platform::Platform;

/// Where the builder's state lives (an emptyDir; see `pod.rs` for why).
pub const STATE_DIR: &str = "/home/user/.local/share/buildkit";
/// Where a local build context is mounted or fetched to.
pub const CONTEXT_DIR: &str = "/workspace/context";
/// Where the attempt's ConfigMap is mounted.
pub const CONFIG_DIR: &str = "/etc/kiln";
/// Path of the BuildKit daemon configuration inside [`CONFIG_DIR`].
pub const BUILDKITD_TOML: &str = "buildkit/buildkitd.toml";
/// Directory of the OCI fetch Dockerfile inside [`CONFIG_DIR`].
pub const FETCH_DIR: &str = "fetch";
/// Where the push Secret is mounted as a Docker config (`$DOCKER_CONFIG`).
pub const DOCKER_CONFIG_DIR: &str = "/var/run/kiln/docker";
/// Where the Git clone Secret is mounted.
pub const GIT_AUTH_DIR: &str = "/var/run/kiln/git";
/// Where `buildctl` writes BuildKit's metadata (with the pushed digest): a file in the
/// builder's writable `/tmp`. Not the termination message itself: buildctl writes the file
/// atomically, as a temporary file beside it renamed over it, which neither `/dev`
/// (read-only to the builder) nor the termination message (a file the kubelet bind-mounts)
/// allows. [`build_command`] copies it there.
pub const METADATA_FILE: &str = "/tmp/kiln-metadata.json";
/// The build container's termination message, where the kubelet reads the metadata.
pub const TERMINATION_MESSAGE: &str = "/dev/termination-log";

/// The script of [`build_command`]. The build's arguments are its positional parameters,
/// handed to `buildctl-daemonless.sh` as they are, never interpreted by the shell. A
/// SIGTERM (the Build cancelled, the pod deleted) is passed on to the build, waited for,
/// and the build's status is the container's.
const BUILD_SCRIPT: &str = r#"buildctl-daemonless.sh "$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM INT
while :; do
  wait "$child"
  status=$?
  kill -0 "$child" 2>/dev/null || break
done
if [ "$status" -eq 0 ]; then
  cat /tmp/kiln-metadata.json > /dev/termination-log || status=$?
  if [ -d /var/run/kiln/result ]; then
    cp /tmp/kiln-metadata.json /var/run/kiln/result/metadata.json || status=$?
  fi
fi
exit "$status"
"#;

/// The command of the build container: `sh -c` `BUILD_SCRIPT`, which runs
/// `buildctl-daemonless.sh` with the container's arguments ([`build_args`]) and then
/// copies [`METADATA_FILE`] into [`TERMINATION_MESSAGE`], and into the signing step's
/// result directory when the pod has one (`signing::RESULT_DIR`).
pub fn build_command() -> Vec<String> {
    vec![
        "/bin/sh".into(),
        "-c".into(),
        BUILD_SCRIPT.into(),
        "buildctl-daemonless.sh".into(),
    ]
}
/// Tag of every cache reference.
pub const CACHE_TAG: &str = "buildcache";

/// Flags of the BuildKit daemon that `buildctl-daemonless.sh` starts (`$BUILDKITD_FLAGS`).
///
/// `--oci-worker-no-process-sandbox`: the build's `RUN` steps share the daemon's PID
/// namespace instead of getting their own, which would need an unmasked `/proc`
/// (`procMount: Unmasked`, itself only allowed with user namespaces). A step can therefore
/// signal the daemon, but the pod holds nothing else: one build, one tenant, thrown away
/// after the attempt.
pub fn buildkitd_flags(has_config: bool) -> String {
    let mut flags = String::from("--oci-worker-no-process-sandbox");
    if has_config {
        let _ = write!(flags, " --config={CONFIG_DIR}/{BUILDKITD_TOML}");
    }
    flags
}

/// The BuildKit daemon configuration: mirrors per upstream registry, and `http = true` for
/// registries reached over plain HTTP (the in-cluster cache service, `--plain-http-registry`).
/// `None` when there is nothing to configure.
pub fn buildkitd_toml(config: &Config) -> Option<String> {
    let mut plain_http: BTreeMap<&str, ()> = BTreeMap::new();
    let mut out = String::new();
    for (registry, mirror) in &config.registry_mirrors {
        let _ = writeln!(out, "[registry.\"{registry}\"]");
        let _ = writeln!(out, "  mirrors = [\"{}\"]", mirror.host);
        if mirror.plain_http {
            plain_http.insert(mirror.host.split('/').next().unwrap_or(&mirror.host), ());
        }
    }
    if let Some(cache) = config.cache_service.as_ref().filter(|c| c.plain_http) {
        plain_http.insert(cache.registry_host(), ());
    }
    for host in &config.plain_http_registries {
        plain_http.insert(host, ());
    }
    for host in plain_http.keys() {
        if config.registry_mirrors.contains_key(*host) {
            // Already has a section; TOML forbids a second one.
            let _ = writeln!(out, "# {host} is both mirrored and plain HTTP; mirror wins");
            continue;
        }
        let _ = writeln!(out, "[registry.\"{host}\"]");
        let _ = writeln!(out, "  http = true");
    }
    (!out.is_empty()).then_some(out)
}

/// The cache reference of a Build: `<service>/<namespace>/<build>:buildcache`, or
/// `<service>/<namespace>/shared:buildcache` for the namespace scope. `None` without a cache
/// service or with `spec.cache.mode: Off`.
pub fn cache_ref(build: &Build, config: &Config) -> Option<String> {
    let service = config.cache_service.as_ref()?;
    let repository = cache_repository(build, config)?;
    Some(format!(
        "{}/{repository}:{CACHE_TAG}",
        service.registry_host()
    ))
}

/// The repository of a Build's cache on the cache service (the path of [`cache_ref`]
/// without the host and tag): `[<path>/]<namespace>/<build>` or `[<path>/]<namespace>/shared`.
/// `None` without a cache service or with `spec.cache.mode: Off`.
pub fn cache_repository(build: &Build, config: &Config) -> Option<String> {
    if build.spec.cache.mode == CacheMode::Off {
        return None;
    }
    let namespace = namespace_repository_prefix(build, config)?;
    Some(match build.spec.cache.scope {
        CacheScope::Build => format!("{namespace}/{}", build.name_any()),
        CacheScope::Namespace => format!("{namespace}/shared"),
    })
}

/// The repository of the Build's own cache (`[<path>/]<namespace>/<build>`), whatever its
/// current cache settings: what the finalizer cleans up. `None` without a cache service.
pub fn build_cache_repository(build: &Build, config: &Config) -> Option<String> {
    let namespace = namespace_repository_prefix(build, config)?;
    Some(format!("{namespace}/{}", build.name_any()))
}

/// `[<path>/]<namespace>`: where the cache repositories of the Build's namespace live.
pub fn namespace_repository_prefix(build: &Build, config: &Config) -> Option<String> {
    let service = config.cache_service.as_ref()?;
    let namespace = build.namespace().unwrap_or_default();
    Some(match service.host.split_once('/') {
        Some((_, path)) => format!("{path}/{namespace}"),
        None => namespace,
    })
}

/// The Git context BuildKit clones: `<url>[#<revision>][:<contextDir>]`.
pub fn git_context(git: &GitSource) -> String {
    let revision = git.revision.as_deref().unwrap_or_default();
    match git.context_dir.as_deref() {
        Some(dir) => format!("{}#{revision}:{dir}", git.url),
        None if !revision.is_empty() => format!("{}#{revision}", git.url),
        None => git.url.clone(),
    }
}

/// The Dockerfile the fetch init container builds to export an OCI context to a directory.
pub fn fetch_dockerfile(image: &str) -> String {
    format!("FROM {image}\n")
}

/// Arguments of the init container that exports an OCI context's filesystem into
/// [`CONTEXT_DIR`].
pub fn fetch_args() -> Vec<String> {
    vec![
        "build".into(),
        "--progress=plain".into(),
        "--frontend=dockerfile.v0".into(),
        // `FROM <image>` reads nothing from its context; a tiny one is given anyway so the
        // frontend never asks the session for a directory it does not have.
        format!("--local=context={CONFIG_DIR}/{FETCH_DIR}"),
        format!("--local=dockerfile={CONFIG_DIR}/{FETCH_DIR}"),
        format!("--output=type=local,dest={CONTEXT_DIR}"),
    ]
}

/// The repository of an output image reference, without its tag: where a platform of a
/// native build pushes its image by digest (`registry.example.com/team/app:v1` →
/// `registry.example.com/team/app`). A `:` before the last `/` is a registry's port.
pub fn output_repository(image: &str) -> &str {
    let last_slash = image.rfind('/').map_or(0, |at| at + 1);
    match image[last_slash..].rfind(':') {
        Some(colon) => &image[..last_slash + colon],
        None => image,
    }
}

/// BuildKit's attestation options for `attestations`: provenance in its mode, and the SBOM
/// made by the controller's generator image. With any of them, BuildKit pushes an index of
/// the image and its attestation manifests where it would push the image's manifest.
pub fn attestation_args(attestations: &Attestations, config: &Config) -> Vec<String> {
    let mut args = Vec::new();
    match attestations.provenance {
        ProvenanceMode::Off => {}
        ProvenanceMode::Min => args.push("--opt=attest:provenance=mode=min".to_owned()),
        ProvenanceMode::Max => args.push("--opt=attest:provenance=mode=max".to_owned()),
    }
    if attestations.sbom {
        args.push(format!(
            "--opt=attest:sbom=generator={}",
            config.sbom_generator_image
        ));
    }
    args
}

/// Arguments of `buildctl-daemonless.sh` for the build itself: every platform of
/// `spec.platforms` pushed to the output tag, or, for one platform of a `Native` build
/// (`platform`), that platform alone pushed by digest, untagged, with a cache of its own.
pub fn build_args(
    build: &Build,
    validated: &Validated<'_>,
    config: &Config,
    platform: Option<&Platform>,
) -> Vec<String> {
    let spec = &build.spec;
    let mut args: Vec<String> = vec![
        "build".into(),
        "--progress=plain".into(),
        "--frontend=dockerfile.v0".into(),
    ];
    match validated.source {
        SourceKind::Git(git) => args.push(format!("--opt=context={}", git_context(git))),
        SourceKind::Oci(_) | SourceKind::Inline(_) | SourceKind::Local(_) => {
            args.push(format!("--local=context={CONTEXT_DIR}"));
            args.push(format!("--local=dockerfile={CONTEXT_DIR}"));
        }
    }
    args.push(format!("--opt=filename={}", spec.dockerfile));
    if let Some(target) = &spec.target {
        args.push(format!("--opt=target={target}"));
    }
    for (name, value) in &spec.build_args {
        args.push(format!("--opt=build-arg:{name}={value}"));
    }
    args.extend(attestation_args(&spec.attestations, config));
    if let Some(platform) = platform {
        args.push(format!("--opt=platform={platform}"));
        // No tag: the tag goes to the index, once every platform has pushed.
        args.push(format!(
            "--output=type=image,name={},push-by-digest=true,push=true",
            output_repository(&spec.output.image)
        ));
    } else {
        if !spec.platforms.is_empty() {
            // The platform list is a set (x-kubernetes-list-type: set): sorted, so the
            // index lists platforms in the same order whatever order the Build gave.
            let mut platforms = spec.platforms.clone();
            platforms.sort();
            platforms.dedup();
            args.push(format!("--opt=platform={}", platforms.join(",")));
        }
        args.push(format!(
            "--output=type=image,name={},push=true",
            spec.output.image
        ));
    }
    args.push(format!("--metadata-file={METADATA_FILE}"));
    // Each platform of a native build has a cache of its own: its layers are of its
    // architecture, and two platforms exporting to one tag would overwrite each other.
    let cache = cache_ref(build, config).map(|reference| match platform {
        Some(platform) => format!("{reference}-{}", platform.slug()),
        None => reference,
    });
    if let Some(reference) = cache {
        let mode = match spec.cache.mode {
            CacheMode::Min => "min",
            CacheMode::Max | CacheMode::Off => "max",
        };
        // `ignore-error=true`: the cache is best effort. Without it, a cache service that
        // is down when the build ends fails a build whose image is already pushed.
        args.push(format!(
            "--export-cache=type=registry,ref={reference},mode={mode},ignore-error=true"
        ));
        args.push(format!("--import-cache=type=registry,ref={reference}"));
    }
    match &validated.git_auth {
        Some(GitAuth::Token { .. }) => args.push(format!(
            "--secret=id=GIT_AUTH_TOKEN,src={GIT_AUTH_DIR}/{}",
            super::validate::BASIC_AUTH_KEY
        )),
        Some(GitAuth::Ssh { .. }) => args.push(format!(
            "--ssh=default={GIT_AUTH_DIR}/{}",
            super::validate::SSH_AUTH_KEY
        )),
        None => {}
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::config::{CacheService, parse_mirror};

    fn with_cache(url: &str) -> Config {
        Config {
            cache_service: Some(CacheService::parse(url).unwrap()),
            ..Config::default()
        }
    }

    #[test]
    fn git_contexts() {
        let git = |revision: Option<&str>, dir: Option<&str>| GitSource {
            url: "https://g.example/r.git".into(),
            revision: revision.map(Into::into),
            context_dir: dir.map(Into::into),
            clone_secret_ref: None,
        };
        assert_eq!(git_context(&git(None, None)), "https://g.example/r.git");
        assert_eq!(
            git_context(&git(Some("v1"), None)),
            "https://g.example/r.git#v1"
        );
        assert_eq!(
            git_context(&git(None, Some("app"))),
            "https://g.example/r.git#:app"
        );
        assert_eq!(
            git_context(&git(Some("main"), Some("a/b"))),
            "https://g.example/r.git#main:a/b"
        );
    }

    #[test]
    fn cache_refs_by_scope_and_none_without_a_service_or_when_off() {
        let build = Build::test("app").in_namespace("team");
        assert_eq!(cache_ref(&build, &Config::default()), None);
        let config = with_cache("http://kiln-cache:5000");
        assert_eq!(
            cache_ref(&build, &config).as_deref(),
            Some("kiln-cache:5000/team/app:buildcache")
        );
        let shared = build.clone().cache(CacheMode::Max, CacheScope::Namespace);
        assert_eq!(
            cache_ref(&shared, &config).as_deref(),
            Some("kiln-cache:5000/team/shared:buildcache")
        );
        let off = build.cache(CacheMode::Off, CacheScope::Build);
        assert_eq!(cache_ref(&off, &config), None);
        // The Build's own repository is cleaned up whatever its settings are now.
        assert_eq!(
            build_cache_repository(&off, &config).as_deref(),
            Some("team/app")
        );
        assert_eq!(build_cache_repository(&off, &Config::default()), None);
    }

    #[test]
    fn a_cache_service_under_a_path_prefixes_every_repository() {
        let config = with_cache("https://cache.example.com/kiln");
        let build = Build::test("app").in_namespace("team");
        assert_eq!(
            cache_ref(&build, &config).as_deref(),
            Some("cache.example.com/kiln/team/app:buildcache")
        );
        assert_eq!(
            cache_repository(&build, &config).as_deref(),
            Some("kiln/team/app")
        );
        let shared = build.cache(CacheMode::Min, CacheScope::Namespace);
        assert_eq!(
            cache_repository(&shared, &config).as_deref(),
            Some("kiln/team/shared")
        );
    }

    #[test]
    fn buildkitd_config_lists_mirrors_and_plain_http_registries() {
        assert_eq!(buildkitd_toml(&Config::default()), None);
        let mut config = with_cache("http://kiln-cache.kiln-system.svc:5000");
        for m in [
            "docker.io=mirror.gcr.io",
            "ghcr.io=http://kiln-cache.kiln-system.svc:5000",
        ] {
            let (registry, mirror) = parse_mirror(m).unwrap();
            config.registry_mirrors.insert(registry, mirror);
        }
        assert_eq!(
            buildkitd_toml(&config).unwrap(),
            "[registry.\"docker.io\"]\n  mirrors = [\"mirror.gcr.io\"]\n\
             [registry.\"ghcr.io\"]\n  mirrors = [\"kiln-cache.kiln-system.svc:5000\"]\n\
             [registry.\"kiln-cache.kiln-system.svc:5000\"]\n  http = true\n"
        );
    }

    #[test]
    fn plain_http_registries_get_a_section_each() {
        let mut config = Config::default();
        config
            .plain_http_registries
            .insert("kind-registry:5000".into());
        assert_eq!(
            buildkitd_toml(&config).unwrap(),
            "[registry.\"kind-registry:5000\"]\n  http = true\n"
        );
    }

    #[test]
    fn the_build_script_copies_the_metadata_file_into_the_termination_message() {
        // buildctl renames a temporary file over its --metadata-file: the termination
        // message (bind-mounted by the kubelet, in a read-only /dev) cannot be that file.
        assert_ne!(METADATA_FILE, TERMINATION_MESSAGE);
        assert!(METADATA_FILE.starts_with("/tmp/"), "{METADATA_FILE}");
        assert!(
            BUILD_SCRIPT.contains(&format!("cat {METADATA_FILE} > {TERMINATION_MESSAGE}")),
            "{BUILD_SCRIPT}"
        );
        let command = build_command();
        assert_eq!(command[..2], ["/bin/sh", "-c"]);
        // $0 of the script; the build's arguments follow as $1, $2, …
        assert_eq!(command[3], "buildctl-daemonless.sh");
        assert!(BUILD_SCRIPT.starts_with(r#"buildctl-daemonless.sh "$@" &"#));
    }

    #[test]
    fn a_failed_cache_export_never_fails_the_build() {
        let build = Build::test("app").in_namespace("team");
        let config = with_cache("http://kiln-cache:5000");
        let validated =
            crate::controller::validate::validate(&build, &BTreeMap::new(), &config).unwrap();
        let args = build_args(&build, &validated, &config, None);
        let export = args
            .iter()
            .find(|a| a.starts_with("--export-cache="))
            .expect("a cache export");
        assert!(
            export
                .split(',')
                .any(|option| option == "ignore-error=true"),
            "{export}"
        );
    }

    #[test]
    fn output_repositories_drop_the_tag_and_keep_the_port() {
        for (image, repository) in [
            (
                "registry.example.com/team/app:v1",
                "registry.example.com/team/app",
            ),
            (
                "registry.example.com:5000/team/app:v1",
                "registry.example.com:5000/team/app",
            ),
            (
                "registry.example.com:5000/team/app",
                "registry.example.com:5000/team/app",
            ),
            ("app", "app"),
            ("app:v1", "app"),
        ] {
            assert_eq!(output_repository(image), repository, "{image}");
        }
    }

    #[test]
    fn a_native_platform_builds_alone_pushes_by_digest_and_caches_apart() {
        let build = Build::test("app")
            .in_namespace("team")
            .output("registry.example.com:5000/team/app:v1")
            .platform("linux/amd64")
            .platform("linux/arm64");
        let config = with_cache("http://kiln-cache:5000");
        let validated =
            crate::controller::validate::validate(&build, &BTreeMap::new(), &config).unwrap();
        let arm = Platform::parse("linux/arm64").unwrap();
        let args = build_args(&build, &validated, &config, Some(&arm));
        let with = |prefix: &str| -> Vec<&str> {
            args.iter()
                .filter(|a| a.starts_with(prefix))
                .map(String::as_str)
                .collect()
        };
        assert_eq!(with("--opt=platform="), ["--opt=platform=linux/arm64"]);
        assert_eq!(
            with("--output="),
            [
                "--output=type=image,name=registry.example.com:5000/team/app,push-by-digest=true,push=true"
            ]
        );
        assert_eq!(
            with("--import-cache="),
            ["--import-cache=type=registry,ref=kiln-cache:5000/team/app:buildcache-linux-arm64"]
        );
        assert!(
            with("--export-cache=")[0]
                .contains("ref=kiln-cache:5000/team/app:buildcache-linux-arm64,")
        );
        // The whole Build in one pod: every platform, to the tag.
        let args = build_args(&build, &validated, &config, None);
        assert!(args.contains(&"--opt=platform=linux/amd64,linux/arm64".to_owned()));
        assert!(args.contains(
            &"--output=type=image,name=registry.example.com:5000/team/app:v1,push=true".to_owned()
        ));
    }

    #[test]
    fn provenance_is_on_by_default_and_the_sbom_uses_the_controllers_generator() {
        let config = Config {
            sbom_generator_image: "scanners.example/syft:1".to_owned(),
            ..Config::default()
        };
        let base = Build::test("app").in_namespace("team");
        let validated =
            crate::controller::validate::validate(&base, &BTreeMap::new(), &config).unwrap();
        let build = base.clone();
        let attest = |args: Vec<String>| -> Vec<String> {
            args.into_iter()
                .filter(|a| a.starts_with("--opt=attest:"))
                .collect()
        };
        assert_eq!(
            attest(build_args(&build, &validated, &config, None)),
            ["--opt=attest:provenance=mode=min"]
        );
        let mut build = build;
        build.spec.attestations = Attestations {
            provenance: ProvenanceMode::Max,
            sbom: true,
        };
        assert_eq!(
            attest(build_args(&build, &validated, &config, None)),
            [
                "--opt=attest:provenance=mode=max",
                "--opt=attest:sbom=generator=scanners.example/syft:1"
            ]
        );
        // A native platform's pod attests its own image too: the index pod merges them.
        let arm = Platform::parse("linux/arm64").unwrap();
        assert_eq!(
            attest(build_args(&build, &validated, &config, Some(&arm))).len(),
            2
        );
        build.spec.attestations = Attestations {
            provenance: ProvenanceMode::Off,
            sbom: false,
        };
        assert!(!build.spec.attestations.any());
        assert!(attest(build_args(&build, &validated, &config, None)).is_empty());
    }

    #[test]
    fn daemon_flags() {
        assert_eq!(buildkitd_flags(false), "--oci-worker-no-process-sandbox");
        assert_eq!(
            buildkitd_flags(true),
            "--oci-worker-no-process-sandbox --config=/etc/kiln/buildkit/buildkitd.toml"
        );
    }
}
