//! The `Build` custom resource (`kiln.dev/v1alpha1`): its spec, schema bounds and CEL rules
//! (pure).
//!
//! Validation lives in the schema so that `kubectl apply` rejects a bad Build before the
//! controller sees it. Every string, list and map is bounded (`maxLength`, `maxItems`,
//! `maxProperties`) so that the API server's CEL cost estimate stays within budget, and every
//! rule's message names the field it checks. What the schema cannot check (a Secret that does
//! not exist, the total size of an inline context) the controller checks before it creates a
//! pod, and reports as a `Failed` phase with reason `InvalidSpec` or `SecretNotFound`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::status::BuildStatus;

/// API group of every Kiln resource.
pub const GROUP: &str = "kiln.dev";
/// API version of the `Build` resource.
pub const VERSION: &str = "v1alpha1";

/// The builder image used when neither `spec.builder.image` nor `kiln controller
/// --builder-image` names one: rootless BuildKit at a pinned release.
pub const DEFAULT_BUILDER_IMAGE: &str = "docker.io/moby/buildkit:v0.26.1-rootless";
/// Default `spec.dockerfile`.
pub const DEFAULT_DOCKERFILE: &str = "Dockerfile";
/// Default `spec.timeout`.
pub const DEFAULT_TIMEOUT: &str = "1h";
/// Default `spec.retries`.
pub const DEFAULT_RETRIES: i32 = 2;
/// Upper bound of `spec.retries`.
pub const MAX_RETRIES: i32 = 10;
/// Upper bound of `spec.retention.attemptHistory`.
pub const MAX_ATTEMPT_HISTORY: i32 = 50;
/// The finalizer the controller puts on every Build, so that its pods and ConfigMaps are
/// deleted (and its cache released) before the Build goes away.
pub const FINALIZER: &str = "kiln.dev/cleanup";
/// Annotation that requests a new attempt of an unchanged spec: each new value is acted on
/// once (`kubectl annotate build NAME kiln.dev/rerun=$(date +%s) --overwrite`).
pub const RERUN_ANNOTATION: &str = "kiln.dev/rerun";
/// Longest Build name: the name is the value of the `kiln.dev/build` label on its pods, and
/// label values are at most 63 characters.
pub const MAX_BUILD_NAME: usize = 63;

// --- CEL rules ------------------------------------------------------------------------------
//
// Regular expressions are RE2 (what Kubernetes' CEL `matches` uses). Character classes like
// `[.]` stand in for escapes, which would need double escaping inside CEL string literals.

/// An image reference without a digest: `[registry[:port]/]path[:tag]`, with the path
/// components of the OCI distribution grammar.
const RULE_OUTPUT_IMAGE: &str = "self.matches('^((?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:[.](?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*(?::[0-9]+)?/)?[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$')";

/// An image reference with a tag, a digest, or both.
const RULE_ANY_IMAGE: &str = "self.matches('^((?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:[.](?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*(?::[0-9]+)?/)?[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$')";

/// A relative path that cannot climb out of the context.
const RULE_RELATIVE_PATH: &str =
    "!self.startsWith('/') && !self.matches('(^|/)[.][.](/|$)') && !self.contains('#')";

/// A lowercase RFC 1123 subdomain: the name of a Secret or ServiceAccount.
const RULE_OBJECT_NAME: &str =
    "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')";

/// A `SecretRef` whose name is a lowercase RFC 1123 subdomain (rule on the reference, so
/// that each message can name its own field).
const RULE_SECRET_NAME: &str =
    "self.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')";

/// A Go duration (`90s`, `30m`, `1h30m`) between one minute and one day. The format is
/// matched first, so that a malformed value gets this message rather than an evaluation
/// error from `duration()` (CEL's `&&` absorbs the error when its left side is false).
const RULE_TIMEOUT: &str = "self.matches('^([0-9]+([.][0-9]+)?(ms|s|m|h))+$') && duration(self) >= duration('1m') && duration(self) <= duration('24h')";

/// A non-negative Go duration of at most thirty days.
const RULE_TTL: &str =
    "self.matches('^([0-9]+([.][0-9]+)?(ms|s|m|h))+$') && duration(self) <= duration('720h')";

/// Exactly one of the four sources.
const RULE_ONE_SOURCE: &str = "(has(self.git) ? 1 : 0) + (has(self.oci) ? 1 : 0) + (has(self.inline) ? 1 : 0) + (has(self.local) ? 1 : 0) == 1";

/// Every platform is `os/arch` or `os/arch/variant`.
const RULE_PLATFORMS: &str = "self.all(p, p.matches('^[a-z0-9]+/[a-z0-9_]+(/[a-z0-9.]+)?$'))";

/// The inline Dockerfile is written at `spec.dockerfile`, so no inline file may take that path.
const RULE_INLINE_DOCKERFILE_PATH: &str = "!has(self.source.inline) || !has(self.source.inline.files) || !self.source.inline.files.exists(f, f.path == self.dockerfile)";

/// What to build, where to push it, and how: the desired state of a Build.
///
/// A Build runs once per generation: changing the spec starts a new attempt (the running one
/// is cancelled with reason `Superseded`), and so does a new value of the annotation
/// `kiln.dev/rerun`. Kiln never deletes a Build on its own.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "kiln.dev",
    version = "v1alpha1",
    kind = "Build",
    plural = "builds",
    singular = "build",
    shortname = "kb",
    category = "kiln",
    namespaced,
    status = "BuildStatus",
    derive = "Default",
    doc = "A container image build that Kiln runs as a pod with rootless BuildKit.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Succeeded\")].reason",
        priority = 1
    ),
    printcolumn(name = "Image", type_ = "string", json_path = ".spec.output.image"),
    printcolumn(name = "Digest", type_ = "string", json_path = ".status.output.shortDigest"),
    printcolumn(name = "Platforms", type_ = "string", json_path = ".status.platformProgress"),
    printcolumn(name = "Attempt", type_ = "integer", json_path = ".status.attempt"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 63").message(
        "metadata.name must be at most 63 characters: it is the value of the kiln.dev/build label on the build pods"
    )
)]
#[x_kube(validation = Rule::new(RULE_INLINE_DOCKERFILE_PATH).message(
    "spec.source.inline.files must not contain the path in spec.dockerfile: the inline dockerfile is written there"
))]
#[serde(rename_all = "camelCase")]
pub struct BuildSpec {
    /// Where the build context comes from: exactly one of `git`, `oci`, `inline` or `local`.
    pub source: Source,

    /// Path of the Dockerfile inside the build context.
    #[serde(default = "default_dockerfile")]
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new(RULE_RELATIVE_PATH).message(
        "spec.dockerfile must be a relative path inside the context, without '..' or '#'"
    ))]
    pub dockerfile: String,

    /// Build stage to stop at (`--target`); the last stage when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9][A-Za-z0-9_.-]*$')").message(
        "spec.target must be a stage name: letters, digits, '_', '.' and '-'"
    ))]
    pub target: Option<String>,

    /// Build arguments (`ARG` values), by name. At most 64; each value at most 4096
    /// characters. Names must be valid `ARG` names (checked before the pod is created).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 64,
        "additionalProperties" = { "type": "string", "maxLength": 4096 }
    ))]
    pub build_args: BTreeMap<String, String>,

    /// Target platforms as `os/arch[/variant]` (for example `linux/amd64`,
    /// `linux/arm64/v8`). Several platforms give a multi-platform image index. Empty means
    /// the builder's own platform.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 3, max = 64)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[x_kube(validation = Rule::new(RULE_PLATFORMS).message(
        "spec.platforms entries must be os/arch or os/arch/variant, for example linux/amd64 or linux/arm64/v8"
    ))]
    pub platforms: Vec<String>,

    /// How several platforms are built: `Native` runs one build pod per platform on a node
    /// of that platform and pushes an image index of their images; `Emulated` builds every
    /// platform in one pod (other architectures under the node's emulation). Unset:
    /// `Native` when more than one platform is asked, `Emulated` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_strategy: Option<PlatformStrategy>,

    /// Where the built image is pushed.
    pub output: Output,

    /// Build cache settings (used when the controller runs with a cache service).
    #[serde(default)]
    pub cache: CacheSpec,

    /// The builder pod: image, resources and scheduling.
    #[serde(default)]
    pub builder: BuilderSpec,

    /// Longest time one attempt may run, as a Go duration (`30m`, `1h30m`), between 1m and
    /// 24h. The pod's `activeDeadlineSeconds` is set from it; an attempt that exceeds it fails
    /// with reason `TimedOut` and is not retried.
    #[serde(default = "default_timeout")]
    #[schemars(length(min = 2, max = 32))]
    #[x_kube(validation = Rule::new(RULE_TIMEOUT).message(
        "spec.timeout must be a duration between 1m and 24h, for example 30m or 1h30m"
    ))]
    pub timeout: String,

    /// How many times an attempt that failed for an infrastructure reason (eviction, lost
    /// node, image pull error) is retried, with exponential backoff. A failing build is
    /// never retried.
    #[serde(default = "default_retries")]
    #[schemars(range(min = 0, max = 10))]
    pub retries: i32,

    /// Concurrency group: two Builds of one group never have running pods at once.
    #[serde(default)]
    pub concurrency: ConcurrencySpec,

    /// Set to true to cancel the build: its pod is deleted with a grace period and the phase
    /// becomes `Cancelled`.
    #[serde(default)]
    pub cancel: bool,

    /// How long finished pods and how many attempts are kept. Unset fields take the
    /// controller's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,

    /// What starts a new attempt besides a spec change or a rerun request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triggers: Option<Triggers>,

    /// What BuildKit attests about the pushed image: provenance (on by default, `Min`)
    /// and an SBOM (on request). Attestations turn the pushed tag into an image index
    /// that lists them beside the image.
    #[serde(default, skip_serializing_if = "Attestations::is_default")]
    pub attestations: Attestations,

    /// Sign the pushed image, in the format `cosign verify --key` checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing: Option<Signing>,
}

impl Default for BuildSpec {
    /// An empty spec with the schema's defaults (no source, no output: not valid as is).
    fn default() -> Self {
        Self {
            source: Source::default(),
            dockerfile: default_dockerfile(),
            target: None,
            build_args: BTreeMap::new(),
            platforms: Vec::new(),
            platform_strategy: None,
            output: Output::default(),
            cache: CacheSpec::default(),
            builder: BuilderSpec::default(),
            timeout: default_timeout(),
            retries: default_retries(),
            concurrency: ConcurrencySpec::default(),
            cancel: false,
            retention: None,
            triggers: None,
            attestations: Attestations::default(),
            signing: None,
        }
    }
}

fn default_dockerfile() -> String {
    DEFAULT_DOCKERFILE.to_owned()
}

fn default_timeout() -> String {
    DEFAULT_TIMEOUT.to_owned()
}

fn default_retries() -> i32 {
    DEFAULT_RETRIES
}

/// How a Build with several platforms is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum PlatformStrategy {
    /// One build pod per platform, each on a node of its platform (`kubernetes.io/os`,
    /// `kubernetes.io/arch`, or the controller's `--platform-node-selector`), each pushing its
    /// image by digest; once all have pushed, a short pod pushes the image index to the
    /// output tag. A failed platform is retried on its own.
    Native,
    /// One build pod builds every platform, the node's own natively and the others under
    /// its emulation (QEMU via binfmt_misc), and pushes the index itself.
    Emulated,
}

/// Where the build context comes from: exactly one of the four fields.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new(RULE_ONE_SOURCE).message(
    "exactly one of spec.source.git, spec.source.oci, spec.source.inline or spec.source.local must be set"
))]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// A Git repository, cloned by BuildKit itself (its native Git context).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitSource>,
    /// An OCI image whose filesystem is the build context (for example one built `FROM
    /// scratch` with `COPY . /`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci: Option<OciSource>,
    /// A Dockerfile and a few small files written in the Build itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<InlineSource>,
    /// A directory uploaded from the user's machine by `kubectl kiln build --local`: the
    /// digest and size of its tar, which the build pod receives (or finds in the cache).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalSource>,
}

/// A Git repository as the build context.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GitSource {
    /// Repository URL: `https://…`, `http://…`, `ssh://…` or `git@host:path`.
    #[schemars(length(min = 8, max = 2048))]
    #[x_kube(validation = Rule::new(r"self.matches('^(https?://|ssh://|git@)[^#\\s]+$')").message(
        "spec.source.git.url must start with https://, http://, ssh:// or git@ and contain no '#' or whitespace"
    ))]
    pub url: String,

    /// Branch, tag or commit to build; the repository's default branch when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new(r"self.matches('^[^\\s:#]+$')").message(
        "spec.source.git.revision must be a branch, tag or commit, without whitespace, ':' or '#'"
    ))]
    pub revision: Option<String>,

    /// Directory inside the repository to use as the build context; the repository root
    /// when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new(RULE_RELATIVE_PATH).message(
        "spec.source.git.contextDir must be a relative path inside the repository, without '..' or '#'"
    ))]
    pub context_dir: Option<String>,

    /// Secret with clone credentials, in the Build's namespace: type
    /// `kubernetes.io/basic-auth` (its `password` is sent as the token) or
    /// `kubernetes.io/ssh-auth` (its `ssh-privatekey` is used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(RULE_SECRET_NAME).message(
        "spec.source.git.cloneSecretRef.name must be a lowercase RFC 1123 subdomain, for example git-credentials"
    ))]
    pub clone_secret_ref: Option<SecretRef>,
}

/// An OCI image as the build context.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciSource {
    /// Reference of the image that holds the context, by tag or digest.
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = Rule::new(RULE_ANY_IMAGE).message(
        "spec.source.oci.image must be an image reference such as registry.example.com/team/context:v1 or …@sha256:<64 hex>"
    ))]
    pub image: String,
}

/// A build context uploaded from a directory (`kubectl kiln build --local DIR`): the tar
/// that `kubectl kiln` packed, named by digest. Each attempt's pod takes it from the
/// namespace's contexts repository on Kiln's cache, or waits for the upload when it is not
/// there yet. Needs the controller's cache service.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalSource {
    /// The sha256 digest of the uncompressed tar (`sha256:<64 hex>`).
    #[schemars(length(min = 71, max = 71))]
    #[x_kube(validation = Rule::new(r"self.matches('^sha256:[a-f0-9]{64}$')").message(
        "spec.source.local.digest must be sha256:<64 lowercase hex>"
    ))]
    pub digest: String,
    /// The tar's size in bytes.
    #[schemars(range(min = 1024, max = 68_719_476_736i64))]
    pub size: i64,
}

/// A Dockerfile and small files written in the Build itself. The controller checks that
/// they add up to at most its `--max-inline-context` (512 KiB by default).
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InlineSource {
    /// The Dockerfile's content. It is written at `spec.dockerfile` in the context.
    #[schemars(length(min = 1, max = 65536))]
    pub dockerfile: String,

    /// Other files of the context, by path. At most 32.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["path"]))]
    pub files: Vec<InlineFile>,
}

/// One file of an inline context.
#[derive(
    KubeSchema, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub struct InlineFile {
    /// Path of the file inside the context.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(RULE_RELATIVE_PATH).message(
        "spec.source.inline.files[].path must be a relative path inside the context, without '..' or '#'"
    ))]
    pub path: String,
    /// The file's content (text).
    #[schemars(length(max = 262144))]
    pub content: String,
}

/// A Secret in the Build's namespace.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Where the built image is pushed.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Output {
    /// Image reference to push, with an optional tag (no digest), for example
    /// `registry.example.com/team/app:v1`. It is also the default concurrency group.
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = Rule::new(RULE_OUTPUT_IMAGE).message(
        "spec.output.image must be an image reference with an optional tag and no digest, such as registry.example.com/team/app:v1"
    ))]
    pub image: String,

    /// Secret of type `kubernetes.io/dockerconfigjson` with push credentials, mounted as the
    /// builder's Docker config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(RULE_SECRET_NAME).message(
        "spec.output.pushSecretRef.name must be a lowercase RFC 1123 subdomain, for example registry-credentials"
    ))]
    pub push_secret_ref: Option<SecretRef>,
}

/// Build cache settings.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheSpec {
    /// What is exported to the cache: `Off` (nothing, and nothing imported), `Min` (the
    /// final image's layers) or `Max` (every intermediate layer).
    #[serde(default)]
    pub mode: CacheMode,
    /// Whose cache is shared: `Build` (this Build's own) or `Namespace` (every Build of the
    /// namespace).
    #[serde(default)]
    pub scope: CacheScope,
}

/// What BuildKit exports to the cache.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum CacheMode {
    /// No cache import or export.
    Off,
    /// Export the layers of the final image only.
    Min,
    /// Export every intermediate layer.
    #[default]
    Max,
}

/// Whose cache a Build reads and writes.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum CacheScope {
    /// The Build's own cache (`<namespace>/<build>`).
    #[default]
    Build,
    /// The namespace's shared cache (`<namespace>/shared`).
    Namespace,
}

/// The builder pod.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuilderSpec {
    /// Builder image (rootless BuildKit with `buildctl-daemonless.sh`); the controller's
    /// `--builder-image` when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = Rule::new(RULE_ANY_IMAGE).message(
        "spec.builder.image must be an image reference such as docker.io/moby/buildkit:v0.26.1-rootless"
    ))]
    pub image: Option<String>,

    /// CPU and memory of the builder container; the controller's defaults when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Node labels the builder pod must be scheduled on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 32,
        "additionalProperties" = { "type": "string", "maxLength": 63 }
    ))]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations of the builder pod. At most 32.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tolerations: Vec<Toleration>,

    /// ServiceAccount the builder pod runs as; the namespace's `default` when empty. Its
    /// token is never mounted: the build needs no access to the Kubernetes API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(RULE_OBJECT_NAME).message(
        "spec.builder.serviceAccountName must be a lowercase RFC 1123 subdomain"
    ))]
    pub service_account_name: Option<String>,

    /// `false` runs the builder pod in a user namespace of its own (the pod's `hostUsers`):
    /// its user 1000 is an unprivileged user of the node, and the capabilities it keeps
    /// count only inside the pod. Needs nodes that support user namespaces (Kubernetes
    /// 1.33+, a runtime and kernel with ID-mapped mounts) and a builder image whose
    /// subordinate IDs lie within the 65,536 IDs such a pod has (e.g. `user:1001:64535`;
    /// `moby/buildkit:*-rootless` maps 100000-165535, which it lacks). Unset: the node's
    /// user namespace, as any pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_users: Option<bool>,
}

/// Concurrency group of a Build.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConcurrencySpec {
    /// Name of the group, within the namespace; `spec.output.image` when empty, so that two
    /// Builds pushing the same tag never race.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub group: Option<String>,
    /// `Queue`: Builds run one at a time, first created first (ties broken by name).
    /// `CancelInProgress`: the newest Build wins and older running ones are cancelled.
    #[serde(default)]
    pub policy: ConcurrencyPolicy,
}

/// What happens when Builds of one group overlap.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum ConcurrencyPolicy {
    /// Run one at a time, first created first.
    #[default]
    Queue,
    /// The newest Build wins; older ones are cancelled with reason `Superseded`.
    CancelInProgress,
}

/// What BuildKit attests about the pushed image.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attestations {
    /// SLSA provenance of the build (BuildKit's `attest:provenance`): `Min` (the default:
    /// the source, the frontend, the base images and the build's timing), `Max` (also the
    /// build steps and the build arguments), or `Off`.
    #[serde(default)]
    pub provenance: ProvenanceMode,
    /// A software bill of materials of the image, made by the controller's SBOM scanner
    /// image (`--sbom-generator-image`; BuildKit's `attest:sbom`).
    #[serde(default)]
    pub sbom: bool,
}

impl Attestations {
    /// Whether these are the defaults (provenance `Min`, no SBOM), left out when a Build
    /// is written.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Whether BuildKit adds any attestation, so the pushed reference is an index.
    pub fn any(&self) -> bool {
        self.provenance != ProvenanceMode::Off || self.sbom
    }
}

/// How much provenance BuildKit records.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum ProvenanceMode {
    /// No provenance.
    Off,
    /// BuildKit's `mode=min`: nothing from the build's steps or arguments.
    #[default]
    Min,
    /// BuildKit's `mode=max`: the build steps and arguments too (never secrets' values).
    Max,
}

/// How the pushed image is signed.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Signing {
    /// Secret in the Build's namespace with the signing key: `cosign.key` (the private key
    /// of `cosign generate-key-pair`, or an unencrypted PKCS#8 ECDSA P-256 key) and, for an
    /// encrypted key, `cosign.password`. `cosign generate-key-pair
    /// k8s://<namespace>/<name>` writes exactly that Secret. Only the Build's short signing
    /// step mounts it; the controller never reads it.
    #[x_kube(validation = Rule::new(RULE_SECRET_NAME).message(
        "spec.signing.keySecretRef.name must be a lowercase RFC 1123 subdomain, for example image-signing"
    ))]
    pub key_secret_ref: SecretRef,
}

/// What starts a new attempt besides a spec change or a rerun request.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Triggers {
    /// Rebuild when a base image moves: the controller checks each base image tag the
    /// last successful attempt resolved through Kiln's pull-through mirror (listed in
    /// `status.baseImages`) on an interval, and when a tag points at another digest it
    /// starts one new attempt (reason `BaseImageChanged`). Bases not pulled through the
    /// mirror are not watched.
    #[serde(default)]
    pub base_image_changed: bool,
}

/// How long finished pods and how many attempts are kept (enforced by the controller's
/// garbage collection; unset fields take the controller's defaults).
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    /// How long the pod of a succeeded attempt is kept (its logs stay readable until then),
    /// as a Go duration up to 720h.
    #[serde(
        default,
        rename = "succeededPodTTL",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(min = 2, max = 32))]
    #[x_kube(validation = Rule::new(RULE_TTL).message(
        "spec.retention.succeededPodTTL must be a duration between 0s and 720h"
    ))]
    pub succeeded_pod_ttl: Option<String>,

    /// How long the pod of a failed or cancelled attempt is kept, as a Go duration up to
    /// 720h.
    #[serde(
        default,
        rename = "failedPodTTL",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(min = 2, max = 32))]
    #[x_kube(validation = Rule::new(RULE_TTL).message(
        "spec.retention.failedPodTTL must be a duration between 0s and 720h"
    ))]
    pub failed_pod_ttl: Option<String>,

    /// How many attempts `status.attempts` keeps, from 1 to 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 50))]
    pub attempt_history: Option<i32>,
}

impl BuildSpec {
    /// The concurrency group: `spec.concurrency.group`, or the output image reference.
    pub fn concurrency_group(&self) -> &str {
        self.concurrency
            .group
            .as_deref()
            .unwrap_or(self.output.image.as_str())
    }

    /// The strategy in force: `spec.platformStrategy`, or `Native` for more than one
    /// platform and `Emulated` otherwise.
    pub fn platform_strategy(&self) -> PlatformStrategy {
        self.platform_strategy
            .unwrap_or(if self.platforms.len() > 1 {
                PlatformStrategy::Native
            } else {
                PlatformStrategy::Emulated
            })
    }

    /// Whether the Build fans out into one pod per platform: `Native` with at least one
    /// platform.
    pub fn builds_natively(&self) -> bool {
        self.platform_strategy() == PlatformStrategy::Native && !self.platforms.is_empty()
    }
}

impl Build {
    /// The value of the `kiln.dev/rerun` annotation, when set and not empty.
    pub fn rerun_token(&self) -> Option<&str> {
        self.metadata
            .annotations
            .as_ref()?
            .get(RERUN_ANNOTATION)
            .map(String::as_str)
            .filter(|t| !t.is_empty())
    }

    /// Whether a new run is asked for and not yet taken up: a generation the status does
    /// not describe, or a rerun token not yet acted on.
    pub fn run_requested(&self) -> bool {
        let status = self.status.as_ref();
        let generation = self.metadata.generation.unwrap_or(0);
        if status.and_then(|s| s.observed_generation) != Some(generation) {
            return true;
        }
        match self.rerun_token() {
            Some(token) => status.and_then(|s| s.rerun_token.as_deref()) != Some(token),
            None => false,
        }
    }
}
