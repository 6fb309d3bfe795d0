//! Carries out a [`Plan`] against the API server (I/O: the only code of the controller that
//! writes to the API).
//!
//! Every action is idempotent, so a plan interrupted at any point and decided again on a
//! fresh observation converges:
//!
//! - creates treat `AlreadyExists` as done (a pod only when it carries this Build's UID;
//!   otherwise it is someone else's and the plan stops with [`ApplyError::PodNameTaken`]);
//! - deletes treat `NotFound` as done, and name the pod's UID as a precondition so that a
//!   newer pod of the same name is never deleted by mistake;
//! - status and finalizer writes carry the Build's `resourceVersion`, so a write based on a
//!   stale read fails with `Conflict` instead of overwriting newer state;
//! - Events are best effort: a failure is logged, never fails the reconcile.

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::context::Context;
use super::error::ApplyError;
use super::labels::BUILD_UID;
use super::plan::{Action, Plan};
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
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
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
                match pods.create(&PostParams::default(), pod).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        adopt(&pods, &pod_name, build).await?;
                    }
                    Err(source) => {
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
                match config_maps.delete(name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(source) => {
                        return Err(ApplyError::DeleteConfigMap {
                            name: name.clone(),
                            source,
                        });
                    }
                }
            }
            Action::Event(event) => {
                let published = ctx
                    .recorder
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
                        &build.object_ref(&()),
                    )
                    .await;
                if let Err(error) = published {
                    tracing::warn!(build = %name, reason = %event.reason, %error, "could not publish event");
                    continue;
                }
            }
        }
        writes += 1;
    }
    Ok(writes)
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

/// A pod with the attempt's name already exists: ours (a create repeated after a crash) is
/// adopted; anyone else's stops the plan.
async fn adopt(pods: &Api<Pod>, name: &str, build: &Build) -> Result<(), ApplyError> {
    let existing = pods
        .get(name)
        .await
        .map_err(|source| ApplyError::CreatePod {
            name: name.to_owned(),
            source,
        })?;
    let owner_uid = existing.labels().get(BUILD_UID).cloned();
    if owner_uid.is_some() && owner_uid == build.metadata.uid {
        tracing::info!(pod = name, "pod already exists: adopted");
        Ok(())
    } else {
        Err(ApplyError::PodNameTaken {
            name: name.to_owned(),
            owner_uid,
        })
    }
}
