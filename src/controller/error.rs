//! The controller's errors, one enum per step (observe, apply, run), each variant named
//! after the action that failed and carrying the object it failed on (pure data).
//!
//! A reconcile error is retried by the error policy; it never ends up in a Build's status.
//! What a user must fix (an invalid spec, a missing Secret) is not an error here: `decide`
//! turns it into a `Failed` phase.

/// Reading what a Build's decision needs failed.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// Reading the Build itself.
    #[error("reading Build {namespace}/{name}")]
    GetBuild {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Listing the Build's pods.
    #[error("listing the pods of Build {namespace}/{name}")]
    ListPods {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Listing the Build's ConfigMaps.
    #[error("listing the ConfigMaps of Build {namespace}/{name}")]
    ListConfigMaps {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Listing the Build's own Secrets.
    #[error("listing the Secrets of Build {namespace}/{name}")]
    ListSecrets {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Reading a Secret the Build names.
    #[error("reading Secret {namespace}/{name}")]
    GetSecret {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Reading the builder ServiceAccount the Build names.
    #[error("reading ServiceAccount {namespace}/{name}")]
    GetServiceAccount {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Listing the Builds of the namespace (the concurrency group).
    #[error("listing the Builds of namespace {namespace}")]
    ListBuilds {
        /// The namespace.
        namespace: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Listing the pods of the concurrency group.
    #[error("listing the pods of concurrency group {group:?} in namespace {namespace}")]
    ListGroupPods {
        /// The namespace.
        namespace: String,
        /// The group.
        group: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

/// Carrying out a plan failed; the actions before it were done.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Adding the cleanup finalizer.
    #[error("adding the finalizer to Build {name}")]
    AddFinalizer {
        /// The Build.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Removing the cleanup finalizer.
    #[error("removing the finalizer from Build {name}")]
    RemoveFinalizer {
        /// The Build.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Writing the status.
    #[error("writing the status of Build {name}")]
    WriteStatus {
        /// The Build.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Creating an attempt's ConfigMap.
    #[error("creating ConfigMap {name}")]
    CreateConfigMap {
        /// The ConfigMap.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A ConfigMap with the attempt's name exists and belongs to another Build object (an
    /// earlier Build of the same name, with another source; the sweeper removes it).
    #[error("ConfigMap {name} exists but belongs to Build UID {owner_uid:?}, not this Build")]
    ConfigMapNameTaken {
        /// The ConfigMap.
        name: String,
        /// The UID in its `kiln.dev/build-uid` label.
        owner_uid: Option<String>,
    },
    /// Creating an attempt's pod.
    #[error("creating pod {name}")]
    CreatePod {
        /// The pod.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A pod with the attempt's name exists and belongs to another Build object (an
    /// earlier Build of the same name whose pod outlived it; the sweeper removes it).
    #[error("pod {name} exists but belongs to Build UID {owner_uid:?}, not this Build")]
    PodNameTaken {
        /// The pod.
        name: String,
        /// The UID in its `kiln.dev/build-uid` label.
        owner_uid: Option<String>,
    },
    /// Deleting a pod.
    #[error("deleting pod {name}")]
    DeletePod {
        /// The pod.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Deleting a ConfigMap.
    #[error("deleting ConfigMap {name}")]
    DeleteConfigMap {
        /// The ConfigMap.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Minting an attempt's cache token.
    #[error("minting the cache token of Secret {name}")]
    MintToken {
        /// The Secret.
        name: String,
        /// Why.
        #[source]
        source: crate::cacheapi::token::TokenError,
    },
    /// Reading the push Secret whose credentials the token Secret also carries.
    #[error("reading push Secret {name}")]
    ReadPushSecret {
        /// The push Secret.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The push Secret's Docker config cannot be merged with the cache token.
    #[error("building the Docker config of Secret {name}")]
    PushSecretConfig {
        /// The token Secret.
        name: String,
        /// Why.
        #[source]
        source: super::cachetoken::TokenSecretError,
    },
    /// Creating an attempt's token Secret.
    #[error("creating Secret {name}")]
    CreateSecret {
        /// The Secret.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A Secret with the attempt's name exists and belongs to another Build object (the
    /// sweeper removes it).
    #[error("Secret {name} exists but belongs to Build UID {owner_uid:?}, not this Build")]
    SecretNameTaken {
        /// The Secret.
        name: String,
        /// The UID in its `kiln.dev/build-uid` label.
        owner_uid: Option<String>,
    },
    /// Deleting a Secret.
    #[error("deleting Secret {name}")]
    DeleteSecret {
        /// The Secret.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

/// A reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Reading the Build's state.
    #[error(transparent)]
    Observe(#[from] ObserveError),
    /// Writing the plan.
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

impl ReconcileError {
    /// A short, stable name of the failed step, for metrics labels.
    pub fn step(&self) -> &'static str {
        match self {
            ReconcileError::Observe(e) => match e {
                ObserveError::GetBuild { .. } => "get_build",
                ObserveError::ListPods { .. } => "list_pods",
                ObserveError::ListConfigMaps { .. } => "list_config_maps",
                ObserveError::ListSecrets { .. } => "list_secrets",
                ObserveError::GetSecret { .. } => "get_secret",
                ObserveError::GetServiceAccount { .. } => "get_service_account",
                ObserveError::ListBuilds { .. } => "list_builds",
                ObserveError::ListGroupPods { .. } => "list_group_pods",
            },
            ReconcileError::Apply(e) => match e {
                ApplyError::AddFinalizer { .. } => "add_finalizer",
                ApplyError::RemoveFinalizer { .. } => "remove_finalizer",
                ApplyError::WriteStatus { .. } => "write_status",
                ApplyError::CreateConfigMap { .. } => "create_config_map",
                ApplyError::ConfigMapNameTaken { .. } => "config_map_name_taken",
                ApplyError::CreatePod { .. } => "create_pod",
                ApplyError::PodNameTaken { .. } => "pod_name_taken",
                ApplyError::DeletePod { .. } => "delete_pod",
                ApplyError::DeleteConfigMap { .. } => "delete_config_map",
                ApplyError::MintToken { .. } => "mint_token",
                ApplyError::ReadPushSecret { .. } => "read_push_secret",
                ApplyError::PushSecretConfig { .. } => "push_secret_config",
                ApplyError::CreateSecret { .. } => "create_secret",
                ApplyError::SecretNameTaken { .. } => "secret_name_taken",
                ApplyError::DeleteSecret { .. } => "delete_secret",
            },
        }
    }

    /// Whether the failure is a write that lost a race (409 Conflict): worth retrying at
    /// once, on fresh state.
    pub fn is_conflict(&self) -> bool {
        let source = match self {
            ReconcileError::Apply(
                ApplyError::WriteStatus { source, .. }
                | ApplyError::AddFinalizer { source, .. }
                | ApplyError::RemoveFinalizer { source, .. },
            ) => source,
            _ => return false,
        };
        matches!(source, kube::Error::Api(status) if status.code == 409)
    }
}

/// The controller could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The `Build` CRD is not installed (or not readable): nothing to watch.
    #[error(
        "the Build API (builds.kiln.dev) is not available; install it with `kiln crd | kubectl apply -f -`"
    )]
    CrdMissing(#[source] kube::Error),
    /// Builds could not be listed for another reason (connection, RBAC).
    #[error(
        "listing Builds failed; check the connection to the API server and the controller's RBAC"
    )]
    ListBuilds(#[source] kube::Error),
}

/// A sweep could not read what it needs (it deletes nothing then); single deletions that
/// fail are counted in the report instead.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// Listing the objects Kiln labelled, or the Builds.
    #[error("listing {what} for the sweep")]
    List {
        /// `pods`, `configmaps`, `secrets`, `builds` or `namespaces`.
        what: &'static str,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Reading the cache's repositories.
    #[error("listing the cache's repositories")]
    CacheUsage(#[source] crate::cacheapi::client::AdminClientError),
    /// The cache service's disk usage report took too long.
    #[error("listing the cache's repositories: no answer within {}s", .0.as_secs())]
    CacheUsageTimedOut(std::time::Duration),
}
