//! Fluent fixtures for tests: `Build::test("app").generation(2).cancel()` (pure).
//!
//! They live in the library, not behind `cfg(test)`, so that unit tests, the integration
//! tests in `tests/` and the test kubelet of the real-API-server suite build the same
//! objects. Nothing in the controller calls them.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::build::{FINALIZER, RERUN_ANNOTATION};
use super::{
    AttemptRecord, AttemptResult, Build, BuildSpec, BuildStatus, CacheMode, CacheScope, CacheSpec,
    ConcurrencyPolicy, GitSource, InlineFile, InlineSource, LocalSource, OciSource, Output,
    PlatformStrategy, Reason, SecretRef, Source,
};

/// The fixtures' epoch: 2026-01-01T00:00:00Z.
pub const T0: Timestamp = Timestamp::constant(1_767_225_600, 0);

/// `T0` plus `secs` seconds.
pub fn at(secs: i64) -> Timestamp {
    T0.saturating_add(SignedDuration::from_secs(secs))
        .unwrap_or(T0)
}

impl Build {
    /// A Build named `name` in namespace `default`: generation 1, created at [`T0`], with
    /// the cleanup finalizer, a Git source and the output
    /// `registry.example.com/team/<name>:latest`.
    pub fn test(name: &str) -> Build {
        let mut build = Build::new(
            name,
            BuildSpec {
                source: Source {
                    git: Some(GitSource {
                        url: "https://git.example.com/team/app.git".into(),
                        ..GitSource::default()
                    }),
                    ..Source::default()
                },
                dockerfile: "Dockerfile".into(),
                target: None,
                build_args: BTreeMap::new(),
                platforms: Vec::new(),
                platform_strategy: None,
                output: Output {
                    image: format!("registry.example.com/team/{name}:latest"),
                    push_secret_ref: None,
                },
                cache: CacheSpec::default(),
                builder: Default::default(),
                timeout: "1h".into(),
                retries: 2,
                concurrency: Default::default(),
                cancel: false,
                retention: None,
                triggers: None,
                attestations: Default::default(),
                signing: None,
            },
        );
        build.metadata = ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some("default".into()),
            uid: Some(format!("uid-{name}")),
            generation: Some(1),
            resource_version: Some("1".into()),
            creation_timestamp: Some(Time(T0)),
            finalizers: Some(vec![FINALIZER.to_owned()]),
            ..ObjectMeta::default()
        };
        build
    }

    /// Sets `metadata.generation`.
    pub fn generation(mut self, generation: i64) -> Self {
        self.metadata.generation = Some(generation);
        self
    }

    /// Sets `metadata.uid`.
    pub fn with_uid(mut self, uid: &str) -> Self {
        self.metadata.uid = Some(uid.to_owned());
        self
    }

    /// Sets `metadata.namespace`.
    pub fn in_namespace(mut self, namespace: &str) -> Self {
        self.metadata.namespace = Some(namespace.to_owned());
        self
    }

    /// Sets `metadata.creationTimestamp`.
    pub fn created_at(mut self, at: Timestamp) -> Self {
        self.metadata.creation_timestamp = Some(Time(at));
        self
    }

    /// Removes every finalizer.
    pub fn without_finalizer(mut self) -> Self {
        self.metadata.finalizers = None;
        self
    }

    /// Marks the Build as being deleted at `at`.
    pub fn deleting(mut self, at: Timestamp) -> Self {
        self.metadata.deletion_timestamp = Some(Time(at));
        self
    }

    /// Sets the rerun annotation to `token`.
    pub fn rerun(mut self, token: &str) -> Self {
        self.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(RERUN_ANNOTATION.to_owned(), token.to_owned());
        self
    }

    /// Uses a Git source.
    pub fn git(mut self, url: &str, revision: Option<&str>, context_dir: Option<&str>) -> Self {
        self.spec.source = Source {
            git: Some(GitSource {
                url: url.to_owned(),
                revision: revision.map(str::to_owned),
                context_dir: context_dir.map(str::to_owned),
                clone_secret_ref: None,
            }),
            ..Source::default()
        };
        self
    }

    /// Uses an inline source with this Dockerfile and no other files.
    pub fn inline(mut self, dockerfile: &str) -> Self {
        self.spec.source = Source {
            inline: Some(InlineSource {
                dockerfile: dockerfile.to_owned(),
                files: Vec::new(),
            }),
            ..Source::default()
        };
        self
    }

    /// Adds a file to the inline source (which must be set).
    pub fn inline_file(mut self, path: &str, content: &str) -> Self {
        if let Some(inline) = self.spec.source.inline.as_mut() {
            inline.files.push(InlineFile {
                path: path.to_owned(),
                content: content.to_owned(),
            });
        }
        self
    }

    /// Uses an OCI image as the source.
    pub fn oci(mut self, image: &str) -> Self {
        self.spec.source = Source {
            oci: Some(OciSource {
                image: image.to_owned(),
            }),
            ..Source::default()
        };
        self
    }

    /// Uses an uploaded directory's tar (`sha256:<hex>`, `size` bytes) as the source.
    pub fn local(mut self, digest: &str, size: i64) -> Self {
        self.spec.source = Source {
            local: Some(LocalSource {
                digest: digest.to_owned(),
                size,
            }),
            ..Source::default()
        };
        self
    }

    /// Names the clone Secret of the Git source (which must be set).
    pub fn clone_secret(mut self, name: &str) -> Self {
        if let Some(git) = self.spec.source.git.as_mut() {
            git.clone_secret_ref = Some(SecretRef { name: name.into() });
        }
        self
    }

    /// Sets `spec.output.image`.
    pub fn output(mut self, image: &str) -> Self {
        self.spec.output.image = image.to_owned();
        self
    }

    /// Names the push Secret.
    pub fn push_secret(mut self, name: &str) -> Self {
        self.spec.output.push_secret_ref = Some(SecretRef { name: name.into() });
        self
    }

    /// Signs the pushed image with the key in Secret `name`.
    pub fn signed_with(mut self, name: &str) -> Self {
        self.spec.signing = Some(crate::crd::Signing {
            key_secret_ref: SecretRef { name: name.into() },
        });
        self
    }

    /// Sets the concurrency group.
    pub fn group(mut self, group: &str) -> Self {
        self.spec.concurrency.group = Some(group.to_owned());
        self
    }

    /// Sets the concurrency policy.
    pub fn policy(mut self, policy: ConcurrencyPolicy) -> Self {
        self.spec.concurrency.policy = policy;
        self
    }

    /// Sets `spec.cancel: true`.
    pub fn cancel(mut self) -> Self {
        self.spec.cancel = true;
        self
    }

    /// Sets `spec.retries`.
    pub fn retries(mut self, retries: i32) -> Self {
        self.spec.retries = retries;
        self
    }

    /// Sets `spec.timeout`.
    pub fn timeout(mut self, timeout: &str) -> Self {
        self.spec.timeout = timeout.to_owned();
        self
    }

    /// Adds a build argument.
    pub fn build_arg(mut self, name: &str, value: &str) -> Self {
        self.spec
            .build_args
            .insert(name.to_owned(), value.to_owned());
        self
    }

    /// Adds a target platform.
    pub fn platform(mut self, platform: &str) -> Self {
        self.spec.platforms.push(platform.to_owned());
        self
    }

    /// Sets `spec.platformStrategy`.
    pub fn platform_strategy(mut self, strategy: PlatformStrategy) -> Self {
        self.spec.platform_strategy = Some(strategy);
        self
    }

    /// Sets the target stage.
    pub fn target(mut self, target: &str) -> Self {
        self.spec.target = Some(target.to_owned());
        self
    }

    /// Sets the cache mode and scope.
    pub fn cache(mut self, mode: CacheMode, scope: CacheScope) -> Self {
        self.spec.cache = CacheSpec { mode, scope };
        self
    }

    /// Replaces the status.
    pub fn with_status(mut self, status: BuildStatus) -> Self {
        self.status = Some(status);
        self
    }
}

impl AttemptRecord {
    /// Attempt `attempt` of generation 1, run by pod `pod` from `T0`; with a `result`, it
    /// ended 60 s later with reason `BuildFailed` (what the plugin's tests need of a history).
    pub fn test(attempt: u32, pod: &str, result: Option<AttemptResult>) -> Self {
        Self {
            attempt,
            pod_name: pod.to_owned(),
            pod_uid: None,
            generation: 1,
            start_time: Time(T0),
            completion_time: result.map(|_| Time(at(60))),
            result,
            reason: result.map(|_| Reason::BuildFailed),
            message: None,
            digest: None,
            pod_retained_until: None,
            log: None,
        }
    }
}
