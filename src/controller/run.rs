//! Runs the controller: watches Builds and the pods and ConfigMaps they own, reconciles, and
//! runs the garbage-collection sweeps beside, until a shutdown signal (I/O).
//!
//! This is the library entry point that `kiln controller` and the real-API-server tests
//! share; signal handling stays at the command-line edge, which passes a `shutdown` future.

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod};
use kube::api::{Api, ListParams};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, reflector};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use super::config::Config;
use super::context::Context;
use super::error::RunError;
use super::fair_share;
use super::labels::managed_selector;
use super::node_labels::waiting_for_a_node;
use super::reconcile::{error_policy, reconcile};
use super::slim;
use super::sweep::run_sweeps;
use super::wakeups::Wakeups;
use crate::crd::Build;
use crate::report::error_chain;

/// Runs the controller until `shutdown` completes, then stops taking work, lets the
/// reconciles in flight finish, and returns. Build pods keep running; a restarted
/// controller adopts them.
pub async fn run(
    client: Client,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), RunError> {
    run_with(Context::new(client, config), shutdown).await
}

/// [`run`] with a prepared context (a test clock, an outcome observer).
pub async fn run_with(
    context: Context,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), RunError> {
    let client = context.client.clone();
    let (builds, pods, config_maps): (Api<Build>, Api<Pod>, Api<ConfigMap>) =
        match &context.config.namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (
                Api::all(client.clone()),
                Api::all(client.clone()),
                Api::all(client.clone()),
            ),
        };
    // Fail fast, with the fix in the message, when the CRD is missing.
    builds
        .list(&ListParams::default().limit(1))
        .await
        .map_err(|error| match &error {
            kube::Error::Api(status) if status.code == 404 => RunError::CrdMissing(error),
            _ => RunError::ListBuilds(error),
        })?;

    let owned = watcher::Config::default().labels(&managed_selector());
    // The Build cache keeps Builds slimmed (no managed fields, no `kubectl apply` copy):
    // over thousands of Builds those are most of its memory.
    let (store, writer) = reflector::store();
    let build_events = reflector(
        writer,
        watcher(builds.clone(), watcher::Config::default())
            .default_backoff()
            .modify(slim::build),
    )
    .applied_objects();
    let controller = Controller::for_stream(build_events, store.clone());
    context.observer.watching(&store);
    let concurrency = context.config.concurrency;
    let watch_namespaces = context.config.namespace.is_none();
    if watch_namespaces {
        seed_namespace_limits(&context).await;
    }
    let context = Arc::new(context.with_peer_store(store.clone()));
    tracing::info!(
        namespace = context.config.namespace.as_deref().unwrap_or("*"),
        builder_image = %context.config.builder_image,
        cache_leases = context.config.cache_leases,
        cache_tokens = context.config.cache_token_key.is_some(),
        "controller started"
    );
    // The sweeps run beside the controller and stop with it.
    let (stop_sweeps, sweeps_stopped) = tokio::sync::watch::channel(false);
    let sweeps = tokio::spawn(run_sweeps(context.clone(), sweeps_stopped));
    let on_build = context.clone();
    let builds_of_store = store.clone();
    let wakeups = Wakeups::default();
    // The pod watch feeds the pod index first, then the triggers: a reconcile never
    // reads pods older than the event that triggered it.
    let index = context.pod_index.clone();
    let pod_events = watcher(pods, owned.clone())
        .default_backoff()
        .inspect(move |event| {
            if let Ok(event) = event {
                index.apply(event);
            }
        })
        .touched_objects();
    let controller = controller
        .owns_stream(pod_events)
        .owns(config_maps, owned)
        // When a Build changes, the others of its concurrency group may move up the queue,
        // and under running-build limits a freed slot goes to a waiting Build.
        .watches(builds, watcher::Config::default(), move |build: Build| {
            wakeups.on_change(&build, &builds_of_store, &on_build.running_limits())
        });
    // The nodes' labels, for Native Builds asking for a platform no node offers. Only with
    // cluster-wide rights (Nodes are not namespaced); the watch stops with the controller.
    // A node that joins, or whose labels change, wakes the Builds waiting for one at once
    // rather than at their next recheck.
    let (wake_for_node, node_wakeups) = futures::channel::mpsc::unbounded();
    let nodes = watch_namespaces.then(|| {
        let node_labels = context.node_labels.clone();
        let builds = store.clone();
        tokio::spawn(
            watcher(
                Api::<PartialObjectMeta<Node>>::all(client.clone()),
                watcher::Config::default(),
            )
            .default_backoff()
            .for_each(move |event| {
                match event {
                    Ok(event) => {
                        if node_labels.apply(&event) {
                            for build in waiting_for_a_node(&builds.state()) {
                                // Fails only once the controller has stopped.
                                let _ = wake_for_node.unbounded_send(build);
                            }
                        }
                    }
                    Err(error) => tracing::warn!(
                        error = error_chain(&error),
                        "watch of Nodes failed, retrying with backoff; until it lists them, Native Builds start without checking that a node offers each platform"
                    ),
                }
                futures::future::ready(())
            }),
        )
    });
    // A namespace that lowers or raises its own limit: record it, and start what a raised
    // limit lets go.
    let controller = if watch_namespaces {
        let on_namespace = context.clone();
        controller.watches(
            Api::<Namespace>::all(client.clone()),
            watcher::Config::default(),
            // Only a changed limit can let Builds go: a restart's list of every Namespace
            // (already read by the seed) runs no census.
            move |namespace: Namespace| {
                if note_namespace_limit(&on_namespace, &namespace) {
                    fair_share::wakeups(&on_namespace.running_limits(), &store.state())
                } else {
                    Vec::new()
                }
            },
        )
    } else {
        controller
    };
    controller
        .reconcile_on(node_wakeups)
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(build = %object, "reconciled"),
                Err(kube::runtime::controller::Error::ReconcilerFailed(error, object)) => {
                    tracing::debug!(build = %object, error = error_chain(&error), "reconcile failed");
                }
                Err(error) => tracing::warn!(error = error_chain(&error), "controller error"),
            }
        })
        .await;
    if let Some(nodes) = nodes {
        nodes.abort();
    }
    let _ = stop_sweeps.send(true);
    if let Err(error) = sweeps.await {
        tracing::warn!(%error, "the sweeps ended abnormally");
    }
    tracing::info!("controller stopped");
    Ok(())
}

/// Reads every Namespace's own running-build limit once, before any reconcile, so that no
/// Build starts above its namespace's limit while the watch catches up. Without the right
/// to list Namespaces the limits are off until the watch reads them, which is said.
async fn seed_namespace_limits(context: &Context) {
    let namespaces = Api::<Namespace>::all(context.client.clone());
    match namespaces.list_metadata(&ListParams::default()).await {
        Ok(list) => {
            for meta in list.items {
                let namespace = Namespace {
                    metadata: meta.metadata,
                    ..Namespace::default()
                };
                // Nobody to wake yet: no reconcile has run.
                let _changed = note_namespace_limit(context, &namespace);
            }
        }
        Err(error) => tracing::warn!(
            error = error_chain(&error),
            "could not list Namespaces: the limits namespaces set for themselves ({}) apply once the watch reads them",
            fair_share::NAMESPACE_LIMIT_ANNOTATION
        ),
    }
}

/// Records `namespace`'s own limit, and says when its annotation is not a limit. Returns
/// whether the limit changed.
fn note_namespace_limit(context: &Context, namespace: &Namespace) -> bool {
    let update = context.namespace_limits.update(namespace);
    if let Some(problem) = &update.problem {
        tracing::warn!(namespace = namespace.name_any(), "{problem}");
    }
    update.changed
}
