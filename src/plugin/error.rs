//! The plugin's errors, one variant per failed action, each naming the object it failed on
//! and, where there is one, the fix (pure data).

/// A `kubectl kiln` command failed.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// No usable kubeconfig (or in-cluster configuration).
    #[error("reading the kubeconfig{}", context.as_ref().map(|c| format!(" (context {c})")).unwrap_or_default())]
    Kubeconfig {
        /// The `--context` asked for.
        context: Option<String>,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The Build does not exist.
    #[error(
        "Build {namespace}/{name} not found (list them with `kubectl kiln list -n {namespace}`)"
    )]
    BuildNotFound {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// Reading a Build failed.
    #[error("reading Build {namespace}/{name}")]
    GetBuild {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// Listing Builds failed.
    #[error(
        "listing Builds in {scope} (is the Build API installed? `kubectl get crd builds.kiln.dev`)"
    )]
    ListBuilds {
        /// `namespace X` or `all namespaces`.
        scope: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// Listing a Build's Events failed.
    #[error("listing the Events of Build {namespace}/{name}")]
    ListEvents {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// Patching a Build failed.
    #[error("cannot {action} Build {namespace}/{name}")]
    PatchBuild {
        /// What the patch was for.
        action: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The Build has no attempt to show the log of.
    #[error("Build {namespace}/{name} has no attempt yet ({state})")]
    NoAttempt {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// Its phase and reason.
        state: String,
    },
    /// The attempt's pod no longer exists.
    #[error(
        "pod {pod} of attempt {attempt} is gone (finished pods are removed after their retention TTL); `kubectl kiln status` shows how the attempt ended"
    )]
    PodGone {
        /// The pod.
        pod: String,
        /// The attempt.
        attempt: u32,
    },
    /// The attempt's pod no longer exists, and its log is kept in Kiln's cache: what reads
    /// it there takes over.
    #[error(
        "pod {pod} of attempt {attempt} is gone; its log is kept in Kiln's cache as {}:{}",
        log.repository,
        log.tag
    )]
    LogStored {
        /// The pod.
        pod: String,
        /// The attempt.
        attempt: u32,
        /// Where the log is kept.
        log: crate::crd::StoredLog,
    },
    /// The stored log of an attempt could not be read from Kiln's cache.
    #[error(
        "the log of attempt {attempt} is kept in Kiln's cache as {reference}, which could not be read: {cause}. Reading it goes through the cache's admin API: it needs the admin token Secret and a port-forward in Kiln's namespace (get secrets, create pods/portforward), or --server and --admin-token-file"
    )]
    StoredLogUnreadable {
        /// The attempt.
        attempt: u32,
        /// `<repository>:<tag>`.
        reference: String,
        /// What failed.
        cause: String,
    },
    /// The attempt ran one pod per platform, and `logs` was not told which one to read.
    #[error(
        "Build {namespace}/{name} builds {} natively (attempt {attempt}): pass {}",
        count_platforms(platforms),
        platform_choices(platforms)
    )]
    ChoosePlatform {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The attempt.
        attempt: u32,
        /// The attempt's platforms, in the order of `spec.platforms`.
        platforms: Vec<String>,
    },
    /// `--platform` names a platform the attempt does not build.
    #[error(
        "Build {namespace}/{name} does not build platform {platform} in attempt {attempt}: pass {}",
        platform_choices(platforms)
    )]
    UnknownPlatform {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The attempt.
        attempt: u32,
        /// What `--platform` said.
        platform: String,
        /// The attempt's platforms.
        platforms: Vec<String>,
    },
    /// `--platform` was given for an attempt that ran in one pod.
    #[error(
        "attempt {attempt} of Build {namespace}/{name} ran in one pod (every platform in it), so there is no pod of platform {platform}: leave out --platform"
    )]
    NotNative {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The attempt.
        attempt: u32,
        /// What `--platform` said.
        platform: String,
    },
    /// The chosen pod of a native attempt does not exist because it has not been created
    /// yet, or never was.
    #[error(
        "pod {pod}{} of attempt {attempt} {why}",
        platform.as_ref().map(|p| format!(" ({p})")).unwrap_or_default()
    )]
    PodNotCreated {
        /// The pod.
        pod: String,
        /// The attempt.
        attempt: u32,
        /// The platform it builds, or `index`.
        platform: Option<String>,
        /// `does not exist yet: …` or `was never created: …`.
        why: String,
    },
    /// Reading a pod or its log failed.
    #[error("reading the log of pod {namespace}/{pod}")]
    ReadLog {
        /// Its namespace.
        namespace: String,
        /// The pod.
        pod: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// Writing to stdout failed (a closed pipe).
    #[error("writing the output")]
    Write(#[source] std::io::Error),
    /// The admin token could not be read.
    #[error("reading the cache admin token from Secret {namespace}/{secret}: {why}")]
    AdminToken {
        /// Namespace of the Secret.
        namespace: String,
        /// The Secret.
        secret: String,
        /// What went wrong.
        why: String,
    },
    /// The admin token file could not be read.
    #[error("reading the cache admin token file {path}")]
    AdminTokenFile {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The port-forward to the cache could not be set up.
    #[error("forwarding a local port to Service {namespace}/{service}: {why}")]
    PortForward {
        /// Namespace of the Service.
        namespace: String,
        /// The Service.
        service: String,
        /// What went wrong.
        why: String,
    },
    /// The admin API call failed.
    #[error(transparent)]
    Admin(#[from] crate::cacheapi::client::AdminClientError),
    /// A flag's value cannot be used.
    #[error("{flag} {value:?}: {why}")]
    Flag {
        /// The flag.
        flag: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// The `--local` directory cannot be built.
    #[error("build context {dir}: {why}")]
    ContextDir {
        /// The directory.
        dir: String,
        /// What is wrong with it.
        why: String,
    },
    /// The Dockerfile is not a file inside the context.
    #[error(
        "Dockerfile {dockerfile} {why} in the build context {dir} (--dockerfile is a path relative to the context directory)"
    )]
    Dockerfile {
        /// The context directory.
        dir: String,
        /// The Dockerfile, relative to it.
        dockerfile: String,
        /// `does not exist`, `is not a file`, ….
        why: String,
    },
    /// Packing the context failed.
    #[error("packing the build context {dir}")]
    Pack {
        /// The context directory.
        dir: String,
        /// The cause.
        #[source]
        source: crate::context::PackError,
    },
    /// The context holds more than `--max-size`.
    #[error(
        "the build context {dir} holds more than --max-size {} of files (at least {} when packing stopped): add what the build does not need to its .dockerignore, or raise --max-size. Largest files: {}",
        crate::units::format_binary_size(*limit),
        crate::units::format_binary_size(*reached),
        crate::context::archive::describe_largest(largest)
    )]
    ContextTooLarge {
        /// The context directory.
        dir: String,
        /// `--max-size`.
        limit: u64,
        /// The contents' bytes when packing stopped.
        reached: u64,
        /// The largest files seen, largest first.
        largest: Vec<crate::context::SizedPath>,
    },
    /// The packing task stopped without an answer.
    #[error("packing the build context {dir} stopped: {why}")]
    PackAborted {
        /// The context directory.
        dir: String,
        /// Why.
        why: String,
    },
    /// The directory packs to other bytes than those the Build declares.
    #[error("the files in {dir} changed while uploading ({how}): run the command again")]
    ContextChanged {
        /// The context directory.
        dir: String,
        /// How the second pack differs from the first.
        how: String,
    },
    /// `--name` names a Build that exists.
    #[error(
        "Build {namespace}/{name} already exists: delete it (`kubectl delete build {name} -n {namespace}`) or choose another --name"
    )]
    BuildExists {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// Creating the Build failed.
    #[error("creating Build {namespace}/{name}")]
    CreateBuild {
        /// Its namespace.
        namespace: String,
        /// Its name (or `generateName` prefix followed by `…`).
        name: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// Listing a Build's pods failed.
    #[error("listing the pods of Build {namespace}/{name}")]
    ListPods {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The Build ended before its context was received.
    #[error("Build {namespace}/{name} ended before its context was received: {state}")]
    EndedBeforeUpload {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// Phase, reason and message.
        state: String,
    },
    /// No pod received the context in time.
    #[error(
        "gave up after {} waiting for Build {namespace}/{name} to receive its context ({last}); `kubectl kiln status {name} -n {namespace}` shows where it stands",
        crate::units::format_duration(*waited)
    )]
    ReceiverTimeout {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// How long without progress.
        waited: std::time::Duration,
        /// What it was waiting for last.
        last: String,
    },
    /// The API server refused a `pods/proxy` request.
    #[error(
        "the API server refused to {verb} pods/proxy of pod {namespace}/{pod} ({message}): uploading a local build context needs the verbs get and create on the resource pods/proxy in namespace {namespace}; config/rbac/local_builder_role.yaml is a role that grants them (docs/build-api.md, \"Local builds\")"
    )]
    ProxyForbidden {
        /// `get` or `create`.
        verb: &'static str,
        /// The namespace.
        namespace: String,
        /// The pod.
        pod: String,
        /// The API server's message.
        message: String,
    },
    /// The receiver refused the context.
    #[error("pod {namespace}/{pod} refused the build context: {message}")]
    ContextRefused {
        /// The namespace.
        namespace: String,
        /// The pod.
        pod: String,
        /// The receiver's message.
        message: String,
    },
    /// The receiver expects another context than the one packed.
    #[error("Build {namespace}/{name} cannot take this context: {why}")]
    ContextMismatch {
        /// The namespace.
        namespace: String,
        /// The Build.
        name: String,
        /// What differs.
        why: String,
    },
    /// An answer of the receiver (or the API server) that the protocol does not have.
    #[error(
        "unexpected answer {code} from the context receiver of pod {namespace}/{pod} to {request}: {text}"
    )]
    ReceiverAnswer {
        /// The namespace.
        namespace: String,
        /// The pod.
        pod: String,
        /// The request (`GET /context`).
        request: String,
        /// The HTTP status code.
        code: u16,
        /// The body's text.
        text: String,
    },
    /// A `pods/proxy` request failed in a way retrying does not help.
    #[error("{request} to the context receiver of pod {namespace}/{pod}")]
    Proxy {
        /// The namespace.
        namespace: String,
        /// The pod.
        pod: String,
        /// The request.
        request: String,
        /// The client error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The receiver kept asking for other offsets.
    #[error(
        "the upload of the context of Build {namespace}/{name} restarted {restarts} times (last: {last}); run the command again"
    )]
    UploadRestarts {
        /// The namespace.
        namespace: String,
        /// The Build.
        name: String,
        /// How many restarts.
        restarts: u32,
        /// The last reason.
        last: String,
    },
}

/// `2 platforms` (or `1 platform`).
fn count_platforms(platforms: &[String]) -> String {
    match platforms.len() {
        1 => "1 platform".to_owned(),
        n => format!("{n} platforms"),
    }
}

/// Every `--platform` value a native attempt accepts, ready for a sentence:
/// `--platform linux/amd64, --platform linux/arm64, or --platform index`.
fn platform_choices(platforms: &[String]) -> String {
    let mut choices: Vec<String> = platforms
        .iter()
        .map(|p| format!("--platform {p}"))
        .collect();
    choices.push(format!(
        "--platform {}",
        crate::controller::labels::PLATFORM_INDEX
    ));
    match choices.split_last() {
        Some((last, [only])) => format!("{only} or {last}"),
        Some((last, rest)) if !rest.is_empty() => format!("{}, or {last}", rest.join(", ")),
        _ => choices.join(""),
    }
}
