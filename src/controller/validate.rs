//! The checks the schema cannot make, run before a pod is created: referenced Secrets exist
//! and have the right type, the inline context fits, build-argument names are valid; and
//! the schema's own checks again, for objects that reached the controller without them
//! (pure).
//!
//! A failed check becomes phase `Failed` with reason `InvalidSpec` or `SecretNotFound` and a
//! message that names the field: never an error that the reconcile loop would retry.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::time::Duration;

use kube::ResourceExt;

use super::config::Config;
use crate::crd::build::{MAX_BUILD_NAME, MAX_RETRIES};
use crate::crd::{Build, GitSource, InlineSource, LocalSource, OciSource, Reason};
use crate::oci::digest::{Algorithm, Digest};

/// Secret type of a Docker config (`kubectl create secret docker-registry`).
pub const DOCKER_CONFIG_SECRET: &str = "kubernetes.io/dockerconfigjson";
/// Key of a Docker config Secret.
pub const DOCKER_CONFIG_KEY: &str = ".dockerconfigjson";
/// Secret type of a username and password (or token).
pub const BASIC_AUTH_SECRET: &str = "kubernetes.io/basic-auth";
/// Key of a basic-auth Secret that holds the token.
pub const BASIC_AUTH_KEY: &str = "password";
/// Secret type of an SSH key.
pub const SSH_AUTH_SECRET: &str = "kubernetes.io/ssh-auth";
/// Key of an ssh-auth Secret.
pub const SSH_AUTH_KEY: &str = "ssh-privatekey";

/// Key of a signing Secret (`spec.signing.keySecretRef`) that holds the private key.
pub const COSIGN_KEY: &str = "cosign.key";
/// Key of a signing Secret that holds an encrypted key's password.
pub const COSIGN_PASSWORD: &str = "cosign.password";

/// What the controller knows about a Secret, without reading its data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretInfo {
    /// `type` of the Secret.
    pub type_: String,
    /// The keys of its data.
    pub keys: BTreeSet<String>,
}

/// Why a Build cannot be built as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// `InvalidSpec` or `SecretNotFound`.
    pub reason: Reason,
    /// What is wrong, naming the field.
    pub message: String,
}

impl Problem {
    fn invalid(message: impl Into<String>) -> Self {
        Self {
            reason: Reason::InvalidSpec,
            message: message.into(),
        }
    }
}

/// Where the build context comes from, once exactly one source is known to be set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SourceKind<'a> {
    /// BuildKit's native Git context.
    Git(&'a GitSource),
    /// An image whose filesystem is the context, fetched by an init container.
    Oci(&'a OciSource),
    /// Files from the Build itself, mounted from the attempt's ConfigMap.
    Inline(&'a InlineSource),
    /// A directory's tar, uploaded by `kubectl kiln build --local` to the pod's `context`
    /// init container or found in the namespace's contexts repository on the cache.
    Local(LocalContext),
}

/// A checked `spec.source.local`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalContext {
    /// The tar's digest.
    pub digest: Digest,
    /// The tar's size in bytes.
    pub size: u64,
}

/// How BuildKit authenticates the Git clone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GitAuth {
    /// A token, from a basic-auth Secret's `password`.
    Token {
        /// The Secret.
        secret: String,
    },
    /// An SSH key, from an ssh-auth Secret's `ssh-privatekey`.
    Ssh {
        /// The Secret.
        secret: String,
    },
}

/// A Build that passed every check, with what the pod builder needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Validated<'a> {
    /// The one source.
    pub source: SourceKind<'a>,
    /// How long an attempt may run: `spec.timeout`, or the controller's `max_timeout` when
    /// that is shorter.
    pub timeout: Duration,
    /// Git credentials, when a clone Secret is named.
    pub git_auth: Option<GitAuth>,
    /// The push Secret, when named.
    pub push_secret: Option<&'a str>,
}

/// Checks `spec.source.local`: a sha256 digest, a size a tar can have, and a cache service
/// to keep the context in (the build pod receives it into the cache, and a retried attempt
/// takes it from there).
fn check_local(local: &LocalSource, config: &Config) -> Result<LocalContext, Problem> {
    let digest = local
        .digest
        .parse::<Digest>()
        .ok()
        .filter(|digest| digest.algorithm() == Algorithm::Sha256)
        .ok_or_else(|| {
            Problem::invalid(format!(
                "spec.source.local.digest {:?} must be sha256:<64 lowercase hex>",
                local.digest
            ))
        })?;
    // Two 512-byte zero blocks end every tar.
    let size = u64::try_from(local.size)
        .ok()
        .filter(|size| *size >= 1024)
        .ok_or_else(|| {
            Problem::invalid(format!(
                "spec.source.local.size must be the tar's size in bytes, at least 1024; it is {}",
                local.size
            ))
        })?;
    if config.cache_service.is_none() {
        return Err(Problem::invalid(
            "spec.source.local needs Kiln's cache service, where the uploaded context is kept, and this controller runs without one (--cache-service); use a git, oci or inline source",
        ));
    }
    Ok(LocalContext { digest, size })
}

/// Parses `spec.timeout` (a Go duration between 1m and 24h).
pub fn timeout(build: &Build) -> Result<Duration, Problem> {
    let text = build.spec.timeout.as_str();
    let bad = || {
        Problem::invalid(format!(
            "spec.timeout {text:?} must be a duration between 1m and 24h, for example 30m or 1h30m"
        ))
    };
    let parsed = kube::core::Duration::from_str(text).map_err(|_| bad())?;
    if parsed.is_negative() {
        return Err(bad());
    }
    let parsed: Duration = parsed.into();
    if parsed < Duration::from_secs(60) || parsed > Duration::from_secs(24 * 3600) {
        return Err(bad());
    }
    Ok(parsed)
}

/// How long one attempt of `build` may run: `spec.timeout`, lowered to the controller's
/// `max_timeout` when that is set (and never under one second, the smallest
/// `activeDeadlineSeconds`).
pub fn attempt_timeout(build: &Build, config: &Config) -> Result<Duration, Problem> {
    let timeout = timeout(build)?;
    Ok(match config.max_timeout {
        Some(max) => timeout.min(max.max(Duration::from_secs(1))),
        None => timeout,
    })
}

/// Checks a Build against everything the pod builder relies on.
pub fn validate<'a>(
    build: &'a Build,
    secrets: &BTreeMap<String, SecretInfo>,
    config: &Config,
) -> Result<Validated<'a>, Problem> {
    let name = build.name_any();
    if name.len() > MAX_BUILD_NAME {
        return Err(Problem::invalid(format!(
            "metadata.name must be at most {MAX_BUILD_NAME} characters (it is a label value on the build pods); it has {}",
            name.len()
        )));
    }
    let spec = &build.spec;
    let source = match (
        &spec.source.git,
        &spec.source.oci,
        &spec.source.inline,
        &spec.source.local,
    ) {
        (Some(git), None, None, None) => SourceKind::Git(git),
        (None, Some(oci), None, None) => SourceKind::Oci(oci),
        (None, None, Some(inline), None) => SourceKind::Inline(inline),
        (None, None, None, Some(local)) => SourceKind::Local(check_local(local, config)?),
        _ => {
            return Err(Problem::invalid(
                "exactly one of spec.source.git, spec.source.oci, spec.source.inline or spec.source.local must be set",
            ));
        }
    };
    let timeout = attempt_timeout(build, config)?;
    if !(0..=MAX_RETRIES).contains(&spec.retries) {
        return Err(Problem::invalid(format!(
            "spec.retries must be between 0 and {MAX_RETRIES}; it is {}",
            spec.retries
        )));
    }
    if let Some(bad) = spec.build_args.keys().find(|k| !is_arg_name(k)) {
        return Err(Problem::invalid(format!(
            "spec.buildArgs: {bad:?} is not a valid ARG name (letters, digits and '_', not starting with a digit)"
        )));
    }
    if let SourceKind::Inline(inline) = source {
        check_inline(inline, &spec.dockerfile, config.max_inline_bytes)?;
    }
    let namespace = build.namespace().unwrap_or_default();

    let push_secret = match &spec.output.push_secret_ref {
        None => None,
        Some(secret) => {
            let info = find_secret(
                secrets,
                &secret.name,
                "spec.output.pushSecretRef",
                &namespace,
            )?;
            if info.type_ != DOCKER_CONFIG_SECRET || !info.keys.contains(DOCKER_CONFIG_KEY) {
                return Err(Problem::invalid(format!(
                    "spec.output.pushSecretRef: Secret {:?} has type {:?}; it must be {DOCKER_CONFIG_SECRET} with key {DOCKER_CONFIG_KEY} (kubectl create secret docker-registry)",
                    secret.name, info.type_
                )));
            }
            Some(secret.name.as_str())
        }
    };

    let git_auth = match source {
        SourceKind::Git(GitSource {
            clone_secret_ref: Some(secret),
            ..
        }) => {
            let info = find_secret(
                secrets,
                &secret.name,
                "spec.source.git.cloneSecretRef",
                &namespace,
            )?;
            let name = secret.name.clone();
            match info.type_.as_str() {
                BASIC_AUTH_SECRET if info.keys.contains(BASIC_AUTH_KEY) => {
                    Some(GitAuth::Token { secret: name })
                }
                SSH_AUTH_SECRET if info.keys.contains(SSH_AUTH_KEY) => {
                    Some(GitAuth::Ssh { secret: name })
                }
                other => {
                    return Err(Problem::invalid(format!(
                        "spec.source.git.cloneSecretRef: Secret {name:?} has type {other:?}; it must be {BASIC_AUTH_SECRET} (with key {BASIC_AUTH_KEY}) or {SSH_AUTH_SECRET} (with key {SSH_AUTH_KEY})"
                    )));
                }
            }
        }
        _ => None,
    };

    if let Some(signing) = &spec.signing {
        let name = &signing.key_secret_ref.name;
        let info = find_secret(secrets, name, "spec.signing.keySecretRef", &namespace)?;
        if !info.keys.contains(COSIGN_KEY) {
            return Err(Problem::invalid(format!(
                "spec.signing.keySecretRef: Secret {name:?} has no key {}; it needs {} (and {} for an encrypted key), as `cosign generate-key-pair k8s://{namespace}/{name}` writes",
                COSIGN_KEY, COSIGN_KEY, COSIGN_PASSWORD
            )));
        }
    }

    Ok(Validated {
        source,
        timeout,
        git_auth,
        push_secret,
    })
}

/// Checks that the builder ServiceAccount the Build names exists (`existing` holds the
/// names observed): the API server refuses to create a pod whose ServiceAccount does not
/// exist, and retrying the create would not help until someone creates it.
pub fn service_account(build: &Build, existing: &BTreeSet<String>) -> Result<(), Problem> {
    match build.spec.builder.service_account_name.as_deref() {
        Some(name) if !existing.contains(name) => Err(Problem::invalid(format!(
            "spec.builder.serviceAccountName: ServiceAccount {name:?} not found in namespace {:?}; create it, then request a new attempt with the annotation kiln.dev/rerun",
            build.namespace().unwrap_or_default()
        ))),
        _ => Ok(()),
    }
}

fn find_secret<'s>(
    secrets: &'s BTreeMap<String, SecretInfo>,
    name: &str,
    field: &str,
    namespace: &str,
) -> Result<&'s SecretInfo, Problem> {
    secrets.get(name).ok_or_else(|| Problem {
        reason: Reason::SecretNotFound,
        message: format!(
            "{field}: Secret {name:?} not found in namespace {namespace:?}; create it, then request a new attempt with the annotation kiln.dev/rerun"
        ),
    })
}

/// Whether `name` is a valid Dockerfile `ARG` name.
pub fn is_arg_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Whether `path` is a plain relative path (`a/b.txt`): it becomes a mount path in the pod.
fn is_context_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 253
        && path.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        })
}

fn check_inline(inline: &InlineSource, dockerfile: &str, max_bytes: u64) -> Result<(), Problem> {
    if !is_context_path(dockerfile) {
        return Err(Problem::invalid(format!(
            "spec.dockerfile {dockerfile:?} must be a relative path of letters, digits, '.', '_' and '-' for an inline source"
        )));
    }
    let mut seen = BTreeSet::from([dockerfile]);
    for file in &inline.files {
        if !is_context_path(&file.path) {
            return Err(Problem::invalid(format!(
                "spec.source.inline.files: path {:?} must be a relative path of letters, digits, '.', '_' and '-'",
                file.path
            )));
        }
        if !seen.insert(file.path.as_str()) {
            return Err(Problem::invalid(format!(
                "spec.source.inline.files: path {:?} appears twice (or is spec.dockerfile)",
                file.path
            )));
        }
    }
    let total: u64 = inline
        .files
        .iter()
        .map(|f| f.content.len() as u64)
        .sum::<u64>()
        + inline.dockerfile.len() as u64;
    if total > max_bytes {
        return Err(Problem::invalid(format!(
            "spec.source.inline: the Dockerfile and files add up to {}, more than the limit of {}; use a git or oci source",
            crate::units::format_size(total),
            crate::units::format_size(max_bytes)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(entries: &[(&str, &str, &str)]) -> BTreeMap<String, SecretInfo> {
        entries
            .iter()
            .map(|(name, type_, key)| {
                (
                    (*name).to_owned(),
                    SecretInfo {
                        type_: (*type_).to_owned(),
                        keys: BTreeSet::from([(*key).to_owned()]),
                    },
                )
            })
            .collect()
    }

    fn problem(build: &Build, secrets: &BTreeMap<String, SecretInfo>) -> Problem {
        validate(build, secrets, &Config::default()).unwrap_err()
    }

    #[test]
    fn a_signing_secret_must_exist_and_hold_a_cosign_key() {
        let build = Build::test("app").signed_with("image-signing");
        let p = problem(&build, &BTreeMap::new());
        assert_eq!(p.reason, Reason::SecretNotFound);
        assert!(
            p.message
                .starts_with("spec.signing.keySecretRef: Secret \"image-signing\" not found"),
            "{}",
            p.message
        );
        let p = problem(&build, &secrets(&[("image-signing", "Opaque", "key.pem")]));
        assert_eq!(p.reason, Reason::InvalidSpec);
        assert!(p.message.contains("has no key cosign.key"), "{}", p.message);
        let ok = secrets(&[("image-signing", "Opaque", "cosign.key")]);
        assert!(validate(&build, &ok, &Config::default()).is_ok());
    }

    #[test]
    fn a_plain_git_build_is_valid() {
        let build = Build::test("app");
        let v = validate(&build, &BTreeMap::new(), &Config::default()).unwrap();
        assert!(matches!(v.source, SourceKind::Git(_)));
        assert_eq!(v.timeout, Duration::from_secs(3600));
        assert_eq!(v.git_auth, None);
    }

    #[test]
    fn missing_secrets_are_secret_not_found_and_name_the_field() {
        let build = Build::test("app").push_secret("regcred");
        let p = problem(&build, &BTreeMap::new());
        assert_eq!(p.reason, Reason::SecretNotFound);
        assert!(
            p.message
                .starts_with("spec.output.pushSecretRef: Secret \"regcred\" not found")
        );

        let build = Build::test("app").clone_secret("git");
        let p = problem(&build, &BTreeMap::new());
        assert_eq!(p.reason, Reason::SecretNotFound);
        assert!(p.message.starts_with("spec.source.git.cloneSecretRef"));
    }

    #[test]
    fn secrets_of_the_wrong_type_are_invalid_spec() {
        let build = Build::test("app").push_secret("regcred");
        let p = problem(&build, &secrets(&[("regcred", "Opaque", "x")]));
        assert_eq!(p.reason, Reason::InvalidSpec);
        assert!(p.message.contains("kubernetes.io/dockerconfigjson"));

        let build = Build::test("app").clone_secret("git");
        let p = problem(&build, &secrets(&[("git", "Opaque", "token")]));
        assert_eq!(p.reason, Reason::InvalidSpec);
    }

    #[test]
    fn git_auth_follows_the_secret_type() {
        let build = Build::test("app").clone_secret("git");
        let token = validate(
            &build,
            &secrets(&[("git", BASIC_AUTH_SECRET, BASIC_AUTH_KEY)]),
            &Config::default(),
        )
        .unwrap();
        assert_eq!(
            token.git_auth,
            Some(GitAuth::Token {
                secret: "git".into()
            })
        );
        let ssh = validate(
            &build,
            &secrets(&[("git", SSH_AUTH_SECRET, SSH_AUTH_KEY)]),
            &Config::default(),
        )
        .unwrap();
        assert_eq!(
            ssh.git_auth,
            Some(GitAuth::Ssh {
                secret: "git".into()
            })
        );
    }

    #[test]
    fn oversized_inline_contexts_are_invalid_spec() {
        let big = "x".repeat(300 * 1024);
        let build = Build::test("app")
            .inline("FROM scratch")
            .inline_file("a.txt", &big)
            .inline_file("b.txt", &big);
        let p = problem(&build, &BTreeMap::new());
        assert_eq!(p.reason, Reason::InvalidSpec);
        assert!(
            p.message
                .starts_with("spec.source.inline: the Dockerfile and files add up to")
        );
    }

    #[test]
    fn inline_paths_must_be_plain_and_unique() {
        for path in ["../x", "/etc/passwd", "a//b", "a/./b", "a b", "Dockerfile"] {
            let build = Build::test("app")
                .inline("FROM scratch")
                .inline_file(path, "x");
            let p = problem(&build, &BTreeMap::new());
            assert_eq!(p.reason, Reason::InvalidSpec, "{path}");
            assert!(
                p.message.contains("spec.source.inline.files"),
                "{path}: {}",
                p.message
            );
        }
        let ok = Build::test("app")
            .inline("FROM scratch")
            .inline_file("src/main.go", "package main");
        assert!(validate(&ok, &BTreeMap::new(), &Config::default()).is_ok());
    }

    #[test]
    fn schema_checks_are_repeated_for_objects_that_skipped_the_schema() {
        let mut two_sources = Build::test("app");
        two_sources.spec.source.oci = Some(OciSource {
            image: "r/x:1".into(),
        });
        let mut bad_retries = Build::test("app");
        bad_retries.spec.retries = -1;
        let long_name = Build::test(&"n".repeat(64));
        let cases = [
            (two_sources, "exactly one of spec.source"),
            (Build::test("app").timeout("30s"), "spec.timeout"),
            (Build::test("app").timeout("25h"), "spec.timeout"),
            (Build::test("app").timeout("soon"), "spec.timeout"),
            (bad_retries, "spec.retries"),
            (Build::test("app").build_arg("1BAD", "x"), "spec.buildArgs"),
            (Build::test("app").build_arg("A-B", "x"), "spec.buildArgs"),
            (long_name, "metadata.name"),
        ];
        for (build, field) in cases {
            let p = problem(&build, &BTreeMap::new());
            assert_eq!(p.reason, Reason::InvalidSpec);
            assert!(p.message.contains(field), "{field}: {}", p.message);
        }
    }
}
