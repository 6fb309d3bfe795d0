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
//! - calls to the cache service never fail the reconcile either (see `cachecall`), nor
//!   does storing a build log there;
//! - an attempt's token Secret is created like its ConfigMap: `AlreadyExists` with this
//!   Build's UID is done.
//!
//! # Why not server-side apply
//!
//! A successful build costs 9 API writes (measured by the real-API-server suite, which
//! holds it as an upper bound): 1 finalizer patch, 4 status updates (the attempt
//! announced, the pod's UID, Running, Succeeded), 1 pod create and 3 Events. With the
//! cache's admin API one status update more records where the build log is kept and the
//! base images the build resolved (both land in the same write). Server-side
//! apply would save none of them: each status write is one transition that `decide`
//! computed whole, and pods, ConfigMaps and Secrets are created once per attempt and never
//! changed. It would cost two guarantees instead: an apply carries no `resourceVersion`
//! unless told to, so a decision made on a stale read would overwrite newer status rather
//! than fail with `Conflict`; and apply updates an existing object of the same name, where
//! a create stops at `AlreadyExists` and checks whose it is. With one writer of status (this
//! controller) there is no field ownership to share, so resourceVersion-guarded updates and
//! creates stay.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde::Serialize;
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
use crate::crd::build::FINALIZER;
use crate::crd::{Build, BuildStatus};

/// Carries out `plan` for `build` (as observed, with its current `resourceVersion`).
/// Returns the number of API writes made.
pub async fn apply(ctx: &Context, build: &Build, plan: &Plan) -> Result<usize, ApplyError> {
    let mut current = build.clone();
    let mut writes = 0;
    for action in &plan.actions {
        if apply_action(ctx, build, &mut current, action).await? {
            writes += 1;
        }
    }
    Ok(writes)
}

/// Carries out one action. `current` is the Build as last written (each status and
/// finalizer write carries its `resourceVersion`). `Ok(true)` when an API write was made;
/// `Ok(false)` when a best-effort action (an Event, a cache call) failed and was reported.
async fn apply_action(
    ctx: &Context,
    build: &Build,
    current: &mut Build,
    action: &Action,
) -> Result<bool, ApplyError> {
    let namespace = build.namespace().unwrap_or_default();
    let build_name = build.name_any();
    let builds: Api<Build> = Api::namespaced(ctx.client.clone(), &namespace);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    match action {
        Action::AddFinalizer => {
            *current = add_finalizer(&builds, current).await?;
        }
        Action::RemoveFinalizer => {
            remove_finalizer(&builds, current).await?;
        }
        Action::WriteStatus(status) => {
            *current = write_status(&builds, current, status).await?;
        }
        Action::CreateConfigMap(config_map) => {
            create_owned(&config_maps, config_map, build, Owned::ConfigMap, |_| {}).await?;
        }
        Action::CreatePod(pod) => create_pod(ctx, &pods, build, pod).await?,
        Action::DeletePod { name, uid, grace } => {
            delete_pod(&pods, name, uid.as_deref(), *grace).await?;
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
            name,
            attempt,
            push_secret,
            ttl,
        } => {
            // `decide` plans a token Secret only under a config that holds a key.
            let Some(key) = ctx.config.cache_token_key.as_ref() else {
                return Ok(false);
            };
            let push_secret = push_secret.as_deref();
            create_cache_secret(ctx, key, build, name, *attempt, push_secret, *ttl).await?;
        }
        Action::DeleteSecret { name } => {
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
            return Ok(report(ctx, build, outcome).await);
        }
        Action::ReleaseLease { name } => {
            let outcome = cachecall::release_lease(ctx, name).await;
            return Ok(report(ctx, build, outcome).await);
        }
        Action::DeleteCacheTag {
            key,
            repository,
            tag,
        } => {
            let outcome = cachecall::delete_tag(ctx, key, repository, tag).await;
            return Ok(report(ctx, build, outcome).await);
        }
        Action::StoreLog {
            key,
            pod,
            container,
            repository,
            tag,
            annotations,
            max_bytes,
        } => {
            let source = cachecall::LogSource {
                pods: &pods,
                pod,
                container,
                max_bytes: *max_bytes,
            };
            let outcome =
                cachecall::store_log(ctx, key, &source, repository, tag, annotations).await;
            return Ok(report(ctx, build, outcome).await);
        }
        Action::ReadBaseImages { key, uid, since } => {
            let outcome = cachecall::read_base_images(ctx, key, uid, *since).await;
            return Ok(report(ctx, build, outcome).await);
        }
        Action::ForgetBaseImages { key, uid } => {
            let outcome = cachecall::forget_base_images(ctx, key, uid).await;
            return Ok(report(ctx, build, outcome).await);
        }
        Action::CheckBaseImages { key, images } => {
            let outcome = cachecall::check_base_images(ctx, key, images).await;
            return Ok(report(ctx, build, outcome).await);
        }
        Action::Event(event) => {
            if let Err(error) = publish(ctx, &build.object_ref(&()), event).await {
                tracing::warn!(build = %build_name, reason = %event.reason, %error, "could not publish event");
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Adds this controller's finalizer to `current`; returns the Build as written.
async fn add_finalizer(builds: &Api<Build>, current: &Build) -> Result<Build, ApplyError> {
    let mut finalizers = current.finalizers().to_vec();
    if !finalizers.iter().any(|f| f == FINALIZER) {
        finalizers.push(FINALIZER.to_owned());
    }
    patch_finalizers(builds, current, finalizers)
        .await
        .map_err(|source| ApplyError::AddFinalizer {
            name: current.name_any(),
            source,
        })
}

/// Removes this controller's finalizer from `current` (the API server may then delete the
/// Build).
async fn remove_finalizer(builds: &Api<Build>, current: &Build) -> Result<Build, ApplyError> {
    let finalizers: Vec<String> = current
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    patch_finalizers(builds, current, finalizers)
        .await
        .map_err(|source| ApplyError::RemoveFinalizer {
            name: current.name_any(),
            source,
        })
}

/// Replaces the status of `current` with `status`, failing with `Conflict` if the Build
/// changed since it was read; returns the Build as written.
async fn write_status(
    builds: &Api<Build>,
    current: &Build,
    status: &BuildStatus,
) -> Result<Build, ApplyError> {
    let name = current.name_any();
    let mut next = current.clone();
    next.status = Some(status.clone());
    builds
        .replace_status(&name, &PostParams::default(), &next)
        .await
        .map_err(|source| ApplyError::WriteStatus { name, source })
}

/// Creates an attempt's pod (or adopts it), and tells the refusal memory what happened.
async fn create_pod(
    ctx: &Context,
    pods: &Api<Pod>,
    build: &Build,
    pod: &Pod,
) -> Result<(), ApplyError> {
    let pod_name = pod.name_any();
    let uid = build.metadata.uid.as_deref().unwrap_or_default();
    // Nothing `observe` reads shows a refusal (no pod exists): keep what the API server
    // said, for `decide` to put in the status and an Event on the retry.
    let refused = |source: &kube::Error| {
        if let kube::Error::Api(status) = source {
            ctx.refusals
                .refused(uid, &pod_name, api_message(status), ctx.clock.now());
        }
    };
    let created = create_owned(pods, pod, build, Owned::Pod, refused).await?;
    ctx.refusals.created(uid, &pod_name);
    match created {
        Created::New(pod) => ctx.pod_index.created(&pod),
        Created::Adopted => tracing::info!(pod = %pod_name, "pod already exists: adopted"),
    }
    Ok(())
}

/// Deletes pod `name` with `grace`, only if its UID is still `uid` (when given).
async fn delete_pod(
    pods: &Api<Pod>,
    name: &str,
    uid: Option<&str>,
    grace: Duration,
) -> Result<(), ApplyError> {
    let params = DeleteParams {
        grace_period_seconds: Some(u32::try_from(grace.as_secs()).unwrap_or(u32::MAX)),
        preconditions: uid.map(|uid| Preconditions {
            uid: Some(uid.to_owned()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match pods.delete(name, &params).await {
        Ok(_) => Ok(()),
        // Gone already, or replaced by another pod (precondition failed).
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(source) => Err(ApplyError::DeletePod {
            name: name.to_owned(),
            source,
        }),
    }
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
    let secret = attempt_secret(build, name, attempt, config);
    // An existing Secret of this Build was minted by a create repeated after a crash: its
    // token is still valid.
    create_owned(&secrets, &secret, build, Owned::Secret, |_| {}).await?;
    Ok(())
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

/// How [`create_owned`] got its object.
#[derive(Debug)]
enum Created<K> {
    /// The create succeeded: what the API server answered.
    New(K),
    /// The object existed already and is this Build's (a create repeated after a crash).
    Adopted,
}

/// The kinds of object an attempt creates, for the errors of [`create_owned`].
#[derive(Clone, Copy, Debug)]
enum Owned {
    ConfigMap,
    Pod,
    Secret,
}

impl Owned {
    /// The create, or the read of the existing object's owner, failed.
    fn failed(self, name: &str, source: kube::Error) -> ApplyError {
        let name = name.to_owned();
        match self {
            Owned::ConfigMap => ApplyError::CreateConfigMap { name, source },
            Owned::Pod => ApplyError::CreatePod { name, source },
            Owned::Secret => ApplyError::CreateSecret { name, source },
        }
    }

    /// An object of that name belongs to another Build.
    fn taken(self, name: &str, owner_uid: Option<String>) -> ApplyError {
        let name = name.to_owned();
        match self {
            Owned::ConfigMap => ApplyError::ConfigMapNameTaken { name, owner_uid },
            Owned::Pod => ApplyError::PodNameTaken { name, owner_uid },
            Owned::Secret => ApplyError::SecretNameTaken { name, owner_uid },
        }
    }
}

/// Creates `object`, one of `build`'s attempt objects. When it meets `AlreadyExists`, the
/// object of that name is either this Build's (a create repeated after a crash: adopted),
/// or an earlier Build's of the same name: taken (the sweeper removes it; until then the
/// plan stops, so that no pod of this Build reads an earlier one's source or token).
/// `refused` sees the error of a create that failed otherwise.
async fn create_owned<K>(
    api: &Api<K>,
    object: &K,
    build: &Build,
    kind: Owned,
    refused: impl FnOnce(&kube::Error),
) -> Result<Created<K>, ApplyError>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let name = object.name_any();
    match api.create(&PostParams::default(), object).await {
        Ok(created) => Ok(Created::New(created)),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let existing = api
                .get_metadata(&name)
                .await
                .map_err(|source| kind.failed(&name, source))?;
            let owner_uid = existing.labels().get(BUILD_UID).cloned();
            if owner_uid.is_some() && owner_uid == build.metadata.uid {
                Ok(Created::Adopted)
            } else {
                Err(kind.taken(&name, owner_uid))
            }
        }
        Err(source) => {
            refused(&source);
            Err(kind.failed(&name, source))
        }
    }
}
