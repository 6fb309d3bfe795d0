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
