//! Helpers for tests that talk to a Kubernetes API server through a `kube::Client` (test
//! code; does I/O): namespaces, server-side apply of YAML documents, and waits. They work
//! against any cluster: the envtest control plane or a real one.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, DynamicObject, ObjectMeta, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use serde::Deserialize as _;

/// The field manager of every server-side apply made by these helpers.
pub const FIELD_MANAGER: &str = "kiln-test";

const POLL: Duration = Duration::from_millis(100);

/// Polls `check` every 100 ms until it returns `Some`, and returns that; panics naming
/// `what` after `timeout`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Creates a namespace named `<base>-<n>` (unique within this test binary) and waits for
/// its `default` ServiceAccount, without which the API server admits no pod. Returns the
/// name.
pub async fn create_namespace(client: &Client, base: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let name = format!("{base}-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(BTreeMap::from([(
                "kiln.dev/test".to_owned(),
                base.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap_or_else(|err| panic!("creating namespace {name}: {err}"));
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), &name);
    wait_until(
        &format!("the default ServiceAccount of namespace {name}"),
        Duration::from_secs(60),
        || async { accounts.get_opt("default").await.ok().flatten() },
    )
    .await;
    name
}

/// Why [`apply_yaml`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A document is not valid YAML for a Kubernetes object.
    #[error("document {index} is not a Kubernetes object: {source}")]
    Parse {
        /// The document's position, from 0.
        index: usize,
        /// The underlying error.
        #[source]
        source: serde_yaml::Error,
    },
    /// A document has no `apiVersion` or `kind`, or no `metadata.name`.
    #[error("document {index} lacks apiVersion, kind or metadata.name")]
    Incomplete {
        /// The document's position, from 0.
        index: usize,
    },
    /// The API server does not serve the document's kind.
    #[error("discovering {gvk:?}: {source}")]
    Discover {
        /// The kind looked up.
        gvk: GroupVersionKind,
        /// The underlying error.
        #[source]
        source: kube::Error,
    },
    /// A namespaced object has no namespace and no default was given.
    #[error("{kind} {name} is namespaced but has no namespace")]
    NoNamespace {
        /// The object's kind.
        kind: String,
        /// The object's name.
        name: String,
    },
    /// The API server rejected the object.
    #[error("applying {kind} {name}: {source}")]
    Apply {
        /// The object's kind.
        kind: String,
        /// The object's name.
        name: String,
        /// The API server's answer.
        #[source]
        source: kube::Error,
    },
}

impl ApplyError {
    /// The API server's rejection (status, reason, message), if that is what failed.
    pub fn api_status(&self) -> Option<&kube::core::Status> {
        match self {
            Self::Apply {
                source: kube::Error::Api(status),
                ..
            } => Some(status),
            _ => None,
        }
    }
}

/// Server-side applies every document of `yaml` (`---`-separated; empty documents are
/// skipped), in order, as `kiln-envtest`, forcing conflicts. Namespaced objects without a
/// namespace go to `default_namespace`. Returns the applied objects as the server stored
/// them.
pub async fn apply_yaml(
    client: &Client,
    yaml: &str,
    default_namespace: Option<&str>,
) -> Result<Vec<DynamicObject>, ApplyError> {
    let mut applied = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let value = serde_yaml::Value::deserialize(document)
            .map_err(|source| ApplyError::Parse { index, source })?;
        if value.is_null() {
            continue;
        }
        let object: DynamicObject =
            serde_yaml::from_value(value).map_err(|source| ApplyError::Parse { index, source })?;
        let (Some(types), Some(name)) = (object.types.as_ref(), object.metadata.name.clone())
        else {
            return Err(ApplyError::Incomplete { index });
        };
        let gvk =
            GroupVersionKind::try_from(types).map_err(|_| ApplyError::Incomplete { index })?;
        let (resource, capabilities) =
            kube::discovery::pinned_kind(client, &gvk)
                .await
                .map_err(|source| ApplyError::Discover {
                    gvk: gvk.clone(),
                    source,
                })?;
        let api: Api<DynamicObject> = match capabilities.scope {
            Scope::Cluster => Api::all_with(client.clone(), &resource),
            Scope::Namespaced => {
                let namespace = object
                    .metadata
                    .namespace
                    .as_deref()
                    .or(default_namespace)
                    .ok_or_else(|| ApplyError::NoNamespace {
                        kind: gvk.kind.clone(),
                        name: name.clone(),
                    })?;
                Api::namespaced_with(client.clone(), namespace, &resource)
            }
        };
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let stored = api
            .patch(&name, &params, &Patch::Apply(&object))
            .await
            .map_err(|source| ApplyError::Apply {
                kind: gvk.kind.clone(),
                name: name.clone(),
                source,
            })?;
        applied.push(stored);
    }
    Ok(applied)
}

/// [`apply_yaml`] on the contents of a file (e.g. the CRDs in `crds/`).
pub async fn apply_file(
    client: &Client,
    path: &Path,
    default_namespace: Option<&str>,
) -> Result<Vec<DynamicObject>, ApplyError> {
    let yaml = std::fs::read_to_string(path)
        .unwrap_or_else(|err| panic!("reading {}: {err}", path.display()));
    apply_yaml(client, &yaml, default_namespace).await
}

/// Waits until the CustomResourceDefinition `name` is Established (its API served);
/// after `timeout`, says why not, with its conditions.
pub async fn crd_established(client: &Client, name: &str, timeout: Duration) -> Result<(), String> {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let established = kube::runtime::wait::await_condition(
        api.clone(),
        name,
        kube::runtime::wait::conditions::is_crd_established(),
    );
    match tokio::time::timeout(timeout, established).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(format!("watching CRD {name}: {err}")),
        Err(_) => {
            let conditions = api
                .get_opt(name)
                .await
                .ok()
                .flatten()
                .and_then(|crd| crd.status)
                .and_then(|status| status.conditions);
            Err(format!(
                "CRD {name} not Established after {timeout:?}; conditions: {conditions:?}"
            ))
        }
    }
}

/// [`crd_established`], panicking when it is not.
pub async fn wait_for_crd_established(client: &Client, name: &str, timeout: Duration) {
    if let Err(why) = crd_established(client, name, timeout).await {
        panic!("{why}");
    }
}
