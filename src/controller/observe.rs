//! Reads what `decide` needs about one Build into an [`Observed`] snapshot (I/O: API reads
//! only, never a write).
//!
//! The Build and its pods are read fresh from the API server, not from the watch cache: a
//! stale list could hide a pod this controller just created and lead to a second one. The
//! other Builds of a concurrency group may come from the watch cache (they only order the
//! queue); their pods, which decide who holds the group, are listed fresh.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, ServiceAccount};
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use super::cache_lease::ledger_prefix;
use super::context::{Context, PeerSource};
use super::error::ObserveError;
use super::fair_share::{self, Limits, Slot};
use super::labels::{BUILD, build_uid_selector, builds_selector};
use super::observed::{Observed, wants_inputs};
use super::podstate::is_live;
use super::queue::{self, Peer};
use super::validate::SecretInfo;
use crate::crd::Build;

/// Reads the Build afresh and everything its decision needs. `Ok(None)` when the Build is
/// gone.
pub async fn observe(
    ctx: &Context,
    build: &Build,
) -> Result<Option<(Build, Observed)>, ObserveError> {
    let namespace = build.namespace().unwrap_or_default();
    let name = build.name_any();
    let builds: Api<Build> = Api::namespaced(ctx.client.clone(), &namespace);
    let Some(build) = builds
        .get_opt(&name)
        .await
        .map_err(|source| ObserveError::GetBuild {
            namespace: namespace.clone(),
            name: name.clone(),
            source,
        })?
    else {
        return Ok(None);
    };
    let uid = build.metadata.uid.clone().unwrap_or_default();
    let selector = ListParams::default().labels(&build_uid_selector(&uid));

    let own_pods = match ctx.pod_index.pods_of(&uid) {
        Some(pods) => pods,
        None => {
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
            pods.list(&selector)
                .await
                .map_err(|source| ObserveError::ListPods {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    source,
                })?
                .items
        }
    };

    let mut observed = in_memory(ctx, &uid, own_pods);

    if build.metadata.deletion_timestamp.is_some() {
        let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
        observed.config_maps = list_names(&config_maps, &selector)
            .await
            .map_err(|source| ObserveError::ListConfigMaps {
                namespace: namespace.clone(),
                name: name.clone(),
                source,
            })?;
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
        observed.owned_secrets =
            list_names(&secrets, &selector)
                .await
                .map_err(|source| ObserveError::ListSecrets {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    source,
                })?;
    }

    if wants_inputs(&build) {
        observed.secrets = read_secrets(ctx, &build, &namespace).await?;
        observed.service_accounts = read_service_account(ctx, &build, &namespace).await?;
        observed.peers = read_peers(ctx, &build, &namespace).await?;
        if build.spec.builds_natively() {
            observed.platforms_without_node =
                ctx.node_labels.platforms_without_node(&build, &ctx.config);
        }
        let limits = ctx.running_limits();
        if limits.is_active() {
            observed.slot = Some(read_slot(ctx, &build, &limits).await?);
        }
    }
    Ok(Some((build, observed)))
}

/// What the controller holds in memory about the Build with UID `uid`, with its `pods`.
fn in_memory(ctx: &Context, uid: &str, mut pods: Vec<Pod>) -> Observed {
    pods.sort_by_key(|p| p.name_any());
    Observed {
        pods,
        cache: ctx.ledger.snapshot(&ledger_prefix(uid)),
        pod_refusals: ctx.refusals.of(uid),
        ..Observed::default()
    }
}

/// Everything the decision about `build` needs, from memory alone, when `build` is
/// finished with nothing asked of it (no new generation, rerun or deletion) and the pod
/// index has synced; `None` otherwise. Such a Build's decision reads nothing else.
pub fn observe_at_rest(ctx: &Context, build: &Build) -> Option<Observed> {
    if wants_inputs(build) || build.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let uid = build.metadata.uid.as_deref()?;
    let pods = ctx.pod_index.pods_of(uid)?;
    Some(in_memory(ctx, uid, pods))
}

/// The sorted names of the objects `selector` selects (their metadata only: a Secret's data
/// is never read this way).
async fn list_names<K>(api: &Api<K>, selector: &ListParams) -> Result<Vec<String>, kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut names: Vec<String> = api
        .list_metadata(selector)
        .await?
        .items
        .into_iter()
        .map(|object| object.name_any())
        .collect();
    names.sort();
    Ok(names)
}

/// The Secrets the Build names: their type and keys, never their data.
async fn read_secrets(
    ctx: &Context,
    build: &Build,
    namespace: &str,
) -> Result<BTreeMap<String, SecretInfo>, ObserveError> {
    let names: BTreeSet<&str> = [
        build.spec.output.push_secret_ref.as_ref(),
        build
            .spec
            .source
            .git
            .as_ref()
            .and_then(|g| g.clone_secret_ref.as_ref()),
        build.spec.signing.as_ref().map(|s| &s.key_secret_ref),
    ]
    .into_iter()
    .flatten()
    .map(|r| r.name.as_str())
    .collect();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let mut found = BTreeMap::new();
    for name in names {
        let secret = secrets
            .get_opt(name)
            .await
            .map_err(|source| ObserveError::GetSecret {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                source,
            })?;
        if let Some(secret) = secret {
            let keys = secret
                .data
                .unwrap_or_default()
                .into_keys()
                .chain(secret.string_data.unwrap_or_default().into_keys())
                .collect();
            found.insert(
                name.to_owned(),
                SecretInfo {
                    type_: secret.type_.unwrap_or_else(|| "Opaque".to_owned()),
                    keys,
                },
            );
        }
    }
    Ok(found)
}

/// The builder ServiceAccount the Build names, if it exists; none when it names none (the
/// namespace's `default` is then used, which the cluster creates itself).
async fn read_service_account(
    ctx: &Context,
    build: &Build,
    namespace: &str,
) -> Result<BTreeSet<String>, ObserveError> {
    let Some(name) = build.spec.builder.service_account_name.as_deref() else {
        return Ok(BTreeSet::new());
    };
    let accounts: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), namespace);
    let found = accounts
        .get_opt(name)
        .await
        .map_err(|source| ObserveError::GetServiceAccount {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source,
        })?;
    Ok(found.map(|_| name.to_owned()).into_iter().collect())
}

/// The Build's place in front of the running-build limits, from every Build the controller
/// sees (its watch cache, or a list from the API).
async fn read_slot(ctx: &Context, build: &Build, limits: &Limits) -> Result<Slot, ObserveError> {
    let builds: Vec<Arc<Build>> = match &ctx.peers {
        PeerSource::Store(store) => store.state(),
        PeerSource::Api => {
            let api: Api<Build> = match &ctx.config.namespace {
                Some(namespace) => Api::namespaced(ctx.client.clone(), namespace),
                None => Api::all(ctx.client.clone()),
            };
            api.list(&ListParams::default())
                .await
                .map_err(|source| ObserveError::ListBuilds {
                    namespace: ctx.config.namespace.clone().unwrap_or_default(),
                    source,
                })?
                .items
                .into_iter()
                .map(Arc::new)
                .collect()
        }
    };
    let reserved = ctx.slots.reservations(&builds);
    Ok(fair_share::slot_of(limits, build, &builds, &reserved))
}

/// The other Builds of the concurrency group, with their standing.
async fn read_peers(
    ctx: &Context,
    build: &Build,
    namespace: &str,
) -> Result<Vec<Peer>, ObserveError> {
    let group = queue::group_of(build);
    let uid = build.metadata.uid.as_deref();
    let members: Vec<Build> = match &ctx.peers {
        PeerSource::Store(store) => store
            .state()
            .iter()
            // Only the group's members are copied: a namespace may hold thousands of
            // Builds, and this runs for every Build about to start.
            .filter(|b| b.namespace().as_deref() == Some(namespace))
            .filter(|b| queue::group_of(b) == group)
            .map(|b| b.as_ref().clone())
            .collect(),
        PeerSource::Api => {
            let builds: Api<Build> = Api::namespaced(ctx.client.clone(), namespace);
            builds
                .list(&ListParams::default())
                .await
                .map_err(|source| ObserveError::ListBuilds {
                    namespace: namespace.to_owned(),
                    source,
                })?
                .items
        }
    };
    let mut members: Vec<Build> = members
        .into_iter()
        .filter(|b| queue::group_of(b) == group && b.metadata.uid.as_deref() != uid)
        .collect();
    if members.is_empty() {
        return Ok(Vec::new());
    }
    members.sort_by_key(|b| b.name_any());

    let names: Vec<String> = members.iter().map(|b| b.name_any()).collect();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let live: BTreeSet<String> = pods
        .list(&ListParams::default().labels(&builds_selector(names.iter().map(String::as_str))))
        .await
        .map_err(|source| ObserveError::ListGroupPods {
            namespace: namespace.to_owned(),
            group: group.to_owned(),
            source,
        })?
        .items
        .iter()
        .filter(|p| is_live(p))
        .filter_map(|p| p.labels().get(BUILD).cloned())
        .collect();
    Ok(members
        .iter()
        .map(|b| Peer {
            name: b.name_any(),
            created: b.metadata.creation_timestamp.as_ref().map(|t| t.0),
            standing: queue::standing(b, live.contains(&b.name_any())),
        })
        .collect())
}
