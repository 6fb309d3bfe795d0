//! Carries out a [`Plan`] against the API server (I/O: the only code of the controller that
//! writes to the API).
//!
//! Every action is idempotent, so a plan interrupted at any point and decided again on a
//! fresh observation converges:
//!
//! - creates treat `AlreadyExists` as done when the object carries this Build's UID;
//!   otherwise it is an earlier Build's and the plan stops ([`ApplyError::PodNameTaken`],
//!   [`ApplyError::ConfigMapNameTaken`]) until the sweeper has removed it;
//! - deletes treat `NotFound` as done, and name the pod's UID as a precondition so that a
//!   newer pod of the same name is never deleted by mistake;
//! - status and finalizer writes carry the Build's `resourceVersion`, so a write based on a
//!   stale read fails with `Conflict` instead of overwriting newer state;
//! - Events are best effort: a failure is logged, never fails the reconcile;
//! - calls to the cache service never fail the reconcile either (see `cachecall`);
//! - an attempt's token Secret is created like its ConfigMap: `AlreadyExists` with this
//!   Build's UID is done.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::cachecall::{self, CallOutcome};
use super::cachetoken::{attempt_secret, docker_config};
use super::context::Context;
use super::error::ApplyError;
use super::labels::BUILD_UID;
use super::plan::{Action, EventSpec, Plan};
use super::validate::DOCKER_CONFIG_KEY;
use crate::cacheapi::token::{Claims, TokenAction, TokenKey};
use crate::crd::Build;
use crate::crd::build::FINALIZER;

/// Carries out `plan` for `build` (as observed, with its current `resourceVersion`).
/// Returns the number of API writes made.
pub async fn apply(ctx: &Context, build: &Build, plan: &Plan) -> Result<usize, ApplyError> {
    let namespace = build.namespace().unwrap_or_default();
    let name = build.name_any();
    let builds: Api<Build> = Api::namespaced(ctx.client.clone(), &namespace);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut current = build.clone();
    let mut writes = 0;

    for action in &plan.actions {
        match action {
            Action::AddFinalizer => {
                let mut finalizers = current.finalizers().to_vec();
                if !finalizers.iter().any(|f| f == FINALIZER) {
                    finalizers.push(FINALIZER.to_owned());
                }
                current = patch_finalizers(&builds, &current, finalizers)
                    .await
                    .map_err(|source| ApplyError::AddFinalizer {
                        name: name.clone(),
                        source,
                    })?;
            }
            Action::RemoveFinalizer => {
                let finalizers: Vec<String> = current
                    .finalizers()
                    .iter()
                    .filter(|f| *f != FINALIZER)
                    .cloned()
                    .collect();
                patch_finalizers(&builds, &current, finalizers)
                    .await
                    .map_err(|source| ApplyError::RemoveFinalizer {
                        name: name.clone(),
                        source,
                    })?;
            }
            Action::WriteStatus(status) => {
                let mut next = current.clone();
                next.status = Some(status.as_ref().clone());
                current = builds
                    .replace_status(&name, &PostParams::default(), &next)
                    .await
                    .map_err(|source| ApplyError::WriteStatus {
                        name: name.clone(),
                        source,
                    })?;
            }
            Action::CreateConfigMap(config_map) => {
                let cm_name = config_map.name_any();
                match config_maps.create(&PostParams::default(), config_map).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        let name = || cm_name.clone();
                        ours(
                            &config_maps,
                            &cm_name,
                            build,
                            |source| ApplyError::CreateConfigMap {
                                name: name(),
                                source,
                            },
                            |owner_uid| ApplyError::ConfigMapNameTaken {
                                name: name(),
                                owner_uid,
                            },
                        )
                        .await?;
                    }
                    Err(source) => {
                        return Err(ApplyError::CreateConfigMap {
                            name: cm_name,
                            source,
                        });
                    }
                }
            }
            Action::CreatePod(pod) => {
                let pod_name = pod.name_any();
                let uid = build.metadata.uid.as_deref().unwrap_or_default();
                match pods.create(&PostParams::default(), pod).await {
                    Ok(_) => ctx.refusals.created(uid, &pod_name),
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        let name = || pod_name.clone();
                        ours(
                            &pods,
                            &pod_name,
                            build,
                            |source| ApplyError::CreatePod {
                                name: name(),
                                source,
                            },
                            |owner_uid| ApplyError::PodNameTaken {
                                name: name(),
                                owner_uid,
                            },
                        )
                        .await?;
                        ctx.refusals.created(uid, &pod_name);
                        tracing::info!(pod = %pod_name, "pod already exists: adopted");
                    }
                    Err(source) => {
                        // Nothing `observe` reads shows a refusal (no pod exists): keep what
                        // the API server said, for `decide` to put in the status and an
                        // Event on the retry.
                        if let kube::Error::Api(status) = &source {
                            ctx.refusals.refused(
                                uid,
                                &pod_name,
                                api_message(status),
                                ctx.clock.now(),
                            );
                        }
                        return Err(ApplyError::CreatePod {
                            name: pod_name,
                            source,
                        });
                    }
                }
            }
            Action::DeletePod { name, uid, grace } => {
                let params = DeleteParams {
                    grace_period_seconds: Some(u32::try_from(grace.as_secs()).unwrap_or(u32::MAX)),
                    preconditions: uid.as_ref().map(|uid| Preconditions {
                        uid: Some(uid.clone()),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                match pods.delete(name, &params).await {
                    Ok(_) => {}
                    // Gone already, or replaced by another pod (precondition failed).
                    Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                    Err(source) => {
                        return Err(ApplyError::DeletePod {
                            name: name.clone(),
                            source,
                        });
                    }
                }
            }
            Action::DeleteConfigMap { name } => {
                delete_named(&config_maps, name).await.map_err(|source| {
                    ApplyError::DeleteConfigMap {
                        name: name.clone(),
                        source,
                    }
                })?;
            }
            Action::CreateCacheSecret {
                name: secret_name,
                attempt,
                push_secret,
                ttl,
            } => {
                // `decide` plans a token Secret only under a config that holds a key.
                let Some(key) = ctx.config.cache_token_key.as_ref() else {
                    continue;
                };
                create_cache_secret(
                    ctx,
                    key,
                    build,
                    secret_name,
                    *attempt,
                    push_secret.as_deref(),
                    *ttl,
                )
                .await?;
            }
            Action::DeleteSecret { name } => {
                let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
                delete_named(&secrets, name)
                    .await
                    .map_err(|source| ApplyError::DeleteSecret {
                        name: name.clone(),
                        source,
                    })?;
            }
            Action::PutLease {
                name,
                targets,
                ttl,
                renewal,
            } => {
                let outcome = cachecall::put_lease(ctx, name, targets, *ttl, *renewal).await;
                if !report(ctx, build, outcome).await {
                    continue;
                }
            }
            Action::ReleaseLease { name } => {
                let outcome = cachecall::release_lease(ctx, name).await;
                if !report(ctx, build, outcome).await {
                    continue;
                }
            }
            Action::DeleteCacheTag {
                key,
                repository,
                tag,
            } => {
                let outcome = cachecall::delete_tag(ctx, key, repository, tag).await;
                if !report(ctx, build, outcome).await {
                    continue;
                }
            }
            Action::Event(event) => {
                if let Err(error) = publish(ctx, &build.object_ref(&()), event).await {
                    tracing::warn!(build = %name, reason = %event.reason, %error, "could not publish event");
                    continue;
                }
            }
        }
        writes += 1;
    }
    Ok(writes)
}

/// What the API server said when it refused a request: its `Status` message
/// (`exceeded quota: …`), or the reason and code when it gave none.
fn api_message(status: &kube::core::Status) -> String {
    if status.message.is_empty() {
        format!("{} ({})", status.reason, status.code)
    } else {
        status.message.clone()
    }
}

/// Deletes `name`; gone already is done.
async fn delete_named<K>(api: &Api<K>, name: &str) -> Result<(), kube::Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(source),
    }
}

/// After a cache call: `true` when it succeeded (a write made). A failure's Warning
/// Event, when it is the first of a streak, is published.
async fn report(ctx: &Context, build: &Build, outcome: CallOutcome) -> bool {
    let warning = match outcome {
        Ok(()) => return true,
        Err(warning) => warning,
    };
    if let Some(event) = warning
        && let Err(error) = publish(ctx, &build.object_ref(&()), &event).await
    {
        tracing::warn!(build = %build.name_any(), %error, "could not publish event");
    }
    false
}

/// Publishes `event` on the object `on` (best effort: the caller logs a failure).
pub async fn publish(
    ctx: &Context,
    on: &ObjectReference,
    event: &EventSpec,
) -> Result<(), kube::Error> {
    ctx.recorder
        .publish(
            &Event {
                type_: if event.warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: event.reason.as_str().to_owned(),
                note: Some(event.note.clone()),
                action: event.action.to_owned(),
                secondary: None,
            },
            on,
        )
        .await
}

/// Mints the attempt's cache token and creates the Secret that carries it, merged with the
/// push Secret's credentials. The push Secret's data is read here, at the moment it is
/// needed, so that it never enters an `Observed` or a `Plan` (both are logged).
async fn create_cache_secret(
    ctx: &Context,
    key: &TokenKey,
    build: &Build,
    name: &str,
    attempt: u32,
    push_secret: Option<&str>,
    ttl: Duration,
) -> Result<(), ApplyError> {
    let namespace = build.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let host = ctx
        .config
        .cache_service
        .as_ref()
        .map(|c| c.registry_host().to_owned())
        .unwrap_or_default();
    let now = u64::try_from(ctx.clock.now().as_second()).unwrap_or(0);
    let uid = build.metadata.uid.clone().unwrap_or_default();
    let claims = Claims::new(
        uid,
        &namespace,
        [TokenAction::Pull, TokenAction::Push],
        now,
        ttl.as_secs(),
    );
    let token = key.mint(&claims).map_err(|source| ApplyError::MintToken {
        name: name.to_owned(),
        source,
    })?;
    let push = match push_secret {
        Some(push_name) => {
            let secret =
                secrets
                    .get(push_name)
                    .await
                    .map_err(|source| ApplyError::ReadPushSecret {
                        name: push_name.to_owned(),
                        source,
                    })?;
            let bytes = secret
                .data
                .and_then(|mut data| data.remove(DOCKER_CONFIG_KEY))
                .map(|b| b.0)
                .unwrap_or_default();
            Some((push_name, bytes))
        }
        None => None,
    };
    let config = docker_config(
        &host,
        &token,
        push.as_ref().map(|(n, b)| (*n, b.as_slice())),
    )
    .map_err(|source| ApplyError::PushSecretConfig {
        name: name.to_owned(),
        source,
    })?;
    let secret = attempt_secret(build, attempt, config);
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(()),
        // Minted by a create that was repeated after a crash: still valid.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            ours(
                &secrets,
                name,
                build,
                |source| ApplyError::CreateSecret {
                    name: name.to_owned(),
                    source,
                },
                |owner_uid| ApplyError::SecretNameTaken {
                    name: name.to_owned(),
                    owner_uid,
                },
            )
            .await
        }
        Err(source) => Err(ApplyError::CreateSecret {
            name: name.to_owned(),
            source,
        }),
    }
}

/// Sets the Build's finalizers, failing with `Conflict` if the Build changed since it was
/// read (the patch carries its `resourceVersion`).
async fn patch_finalizers(
    builds: &Api<Build>,
    build: &Build,
    finalizers: Vec<String>,
) -> Result<Build, kube::Error> {
    let patch = json!({
        "metadata": {
            "finalizers": finalizers,
            "resourceVersion": build.resource_version(),
        }
    });
    builds
        .patch(
            &build.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
}

/// After a create met `AlreadyExists`: the object of that name is this Build's (a create
/// repeated after a crash: done), or an earlier Build's of the same name, `taken` (the
/// sweeper removes it; until then the plan stops, so that no pod of this Build reads an
/// earlier one's source or token).
async fn ours<K>(
    api: &Api<K>,
    name: &str,
    build: &Build,
    read_failed: impl FnOnce(kube::Error) -> ApplyError,
    taken: impl FnOnce(Option<String>) -> ApplyError,
) -> Result<(), ApplyError>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let existing = api.get_metadata(name).await.map_err(read_failed)?;
    let owner_uid = existing.labels().get(BUILD_UID).cloned();
    if owner_uid.is_some() && owner_uid == build.metadata.uid {
        Ok(())
    } else {
        Err(taken(owner_uid))
    }
}
