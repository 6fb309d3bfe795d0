//! The garbage-collection sweeps and the loop that runs them (I/O: lists and deletes
//! through the API server, calls to the cache service's admin API).
//!
//! - [`sweep_once`]: orphans and expired pods. Four lists (pods, then ConfigMaps and
//!   Secrets by metadata only, then Builds: the order is what makes the snapshot safe, see
//!   [`gc`]), the pure [`gc::select`], then one delete per object chosen, in its order, and
//!   one Event per Build that still exists and lost something newsworthy. The API calls of
//!   a sweep are therefore `4 + deletions + Events`, whatever the number of objects kept.
//! - [`sweep_cache`]: deletes the cache repositories of namespaces that no longer exist
//!   (the cache service's disk usage first, then the namespaces, for the same reason), and
//!   the stored-log and uploaded-context tags of Builds that no longer exist (their tags
//!   first, then the Builds).
//! - [`run_sweeps`]: runs the first at start-up and every `--sweep-interval`, and the
//!   second at start-up and every [`CACHE_SWEEP_EVERY`] sweeps.
//!
//! A failed list ends the sweep without deleting anything; a failed delete is counted and
//! retried at the next sweep. Every sweep's report goes to the [`GcObserver`].
//!
//! [`GcObserver`]: super::observer::GcObserver

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, ListParams, PartialObjectMeta, Preconditions};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::apply::publish;
use super::cache_lease::CLEANUP_DEADLINE;
use super::cache_ledger::CacheCall;
use super::cachecall::{self, CallError};
use super::context::Context;
use super::error::SweepError;
use super::gc::{self, CacheSweepReport, Deletion, Kind, Snapshot, SweepReport};
use super::labels::managed_selector;
use super::plan::EventSpec;
use super::slim;
use crate::crd::{Build, Reason};
use crate::report::error_chain;

/// How many object sweeps pass between two sweeps of the cache's repositories (whose disk
/// usage report costs the cache service a walk of its index).
pub const CACHE_SWEEP_EVERY: u64 = 10;

/// The longest the cache service's disk usage report may take.
pub const USAGE_TIMEOUT: Duration = Duration::from_secs(60);

/// One sweep of orphans and expired pods.
pub async fn sweep_once(ctx: &Context) -> Result<SweepReport, SweepError> {
    let started = Instant::now();
    let listed = list_managed(ctx).await?;
    let now = ctx.clock.now();
    let deletions = gc::select(&listed.snapshot(), now, &ctx.config);
    let mut report = SweepReport {
        examined: (listed.pods.len() + listed.config_maps.len() + listed.secrets.len()) as u64,
        ..SweepReport::default()
    };
    let news = delete_all(ctx, &deletions, &mut report).await;
    announce(ctx, &listed.builds, news).await;
    forget_settled_calls(ctx, now);
    ctx.gc_observer.swept(&report, started.elapsed());
    Ok(report)
}

/// What one sweep lists: the objects Kiln labelled, and every Build in scope.
struct Listed {
    pods: Vec<Pod>,
    config_maps: Vec<PartialObjectMeta<ConfigMap>>,
    secrets: Vec<PartialObjectMeta<Secret>>,
    builds: Vec<Build>,
}

impl Listed {
    fn snapshot(&self) -> Snapshot<'_> {
        Snapshot {
            pods: &self.pods,
            config_maps: &self.config_maps,
            secrets: &self.secrets,
            builds: &self.builds,
        }
    }
}

/// Lists the labelled pods, ConfigMaps and Secrets, then the Builds.
async fn list_managed(ctx: &Context) -> Result<Listed, SweepError> {
    let labelled = ListParams::default().labels(&managed_selector());
    let pods: Vec<Pod> = list_in_pages(&api::<Pod>(ctx), &labelled, ctx.config.list_page, |pod| {
        slim::pod(&pod)
    })
    .await
    .map_err(list_failed("pods"))?;
    let config_maps = api::<ConfigMap>(ctx)
        .list_metadata(&labelled)
        .await
        .map_err(list_failed("configmaps"))?
        .items;
    let secrets = api::<Secret>(ctx)
        .list_metadata(&labelled)
        .await
        .map_err(list_failed("secrets"))?
        .items;
    // Last: every object listed above has its Build, and the status naming its attempt,
    // in this list.
    let builds: Vec<Build> = list_in_pages(
        &api::<Build>(ctx),
        &ListParams::default(),
        ctx.config.list_page,
        |mut build| {
            slim::build(&mut build);
            build
        },
    )
    .await
    .map_err(list_failed("builds"))?;
    Ok(Listed {
        pods,
        config_maps,
        secrets,
        builds,
    })
}

/// Lists what `params` selects in pages of `page` objects when given (one consistent
/// snapshot, as one list), keeping of each object what `keep` returns: the whole answer
/// for 10,000 pods is then never held at once.
async fn list_in_pages<K>(
    api: &Api<K>,
    params: &ListParams,
    page: Option<u32>,
    keep: impl Fn(K) -> K,
) -> Result<Vec<K>, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut params = params.clone();
    if let Some(page) = page {
        params = params.limit(page);
    }
    let mut objects = Vec::new();
    loop {
        let page = api.list(&params).await?;
        objects.extend(page.items.into_iter().map(&keep));
        match page.metadata.continue_.filter(|token| !token.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(objects),
        }
    }
}

/// Makes `deletions`, counting them in `report`. Returns what was deleted that its Build
/// should hear of, by `(namespace, Build)`.
async fn delete_all(
    ctx: &Context,
    deletions: &[Deletion],
    report: &mut SweepReport,
) -> BTreeMap<(String, String), Vec<String>> {
    let mut news: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for deletion in deletions {
        match delete(ctx, deletion).await {
            Ok(()) => {
                tracing::info!(
                    kind = deletion.kind.as_str(),
                    namespace = %deletion.namespace,
                    name = %deletion.name,
                    reason = deletion.reason.as_str(),
                    "garbage-collected"
                );
                *report.deleted.entry(deletion.reason).or_default() += 1;
                if let (true, Some(build)) = (deletion.reason.is_news(), &deletion.build) {
                    news.entry((deletion.namespace.clone(), build.clone()))
                        .or_default()
                        .push(format!(
                            "{} {} ({})",
                            deletion.kind.as_str(),
                            deletion.name,
                            deletion.reason.describe()
                        ));
                }
            }
            Err(error) => {
                report.failed += 1;
                tracing::warn!(
                    kind = deletion.kind.as_str(),
                    namespace = %deletion.namespace,
                    name = %deletion.name,
                    error = error_chain(&error),
                    "garbage collection failed; retried at the next sweep"
                );
            }
        }
    }
    news
}

/// Publishes one Event on each Build in `builds` that `news` names, listing what was
/// deleted.
async fn announce(ctx: &Context, builds: &[Build], news: BTreeMap<(String, String), Vec<String>>) {
    for ((namespace, name), what) in news {
        let Some(build) = builds
            .iter()
            .find(|b| b.namespace().as_deref() == Some(&namespace) && b.name_any() == name)
        else {
            continue;
        };
        let event = EventSpec::new(
            Reason::GarbageCollected,
            "DeleteOrphans",
            format!("deleted {}", what.join(", ")),
        );
        if let Err(error) = publish(ctx, &build.object_ref(&()), &event).await {
            tracing::warn!(build = %name, %error, "could not publish event");
        }
    }
}

/// Forgets the cache call ledger's entries nobody asked about for this long: lapsed
/// leases and settled calls.
fn forget_settled_calls(ctx: &Context, now: Timestamp) {
    let keep = (ctx.config.lease_ttl * 2).max(CLEANUP_DEADLINE);
    let cutoff = now
        .saturating_sub(SignedDuration::try_from(keep).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MIN);
    ctx.ledger.forget_before(cutoff);
}

/// One sweep of the cache's repositories: those of namespaces that no longer exist are
/// deleted. Nothing to do without an admin API, or when the controller watches a single
/// namespace (it cannot tell which other namespaces exist, and the cache may serve them).
pub async fn sweep_cache(ctx: &Context) -> Result<CacheSweepReport, SweepError> {
    let started = Instant::now();
    let mut report = CacheSweepReport::default();
    let Some(admin) = ctx.cache_admin.as_ref() else {
        return Ok(report);
    };
    if ctx.config.namespace.is_some() {
        return Ok(report);
    }
    let usage = tokio::time::timeout(USAGE_TIMEOUT, admin.du())
        .await
        .map_err(|_| SweepError::CacheUsageTimedOut(USAGE_TIMEOUT))?
        .map_err(SweepError::CacheUsage)?;
    let namespaces: BTreeSet<String> = Api::<Namespace>::all(ctx.client.clone())
        .list_metadata(&ListParams::default())
        .await
        .map_err(list_failed("namespaces"))?
        .items
        .iter()
        .map(|n| n.name_any())
        .collect();
    report.examined = usage.repositories.len() as u64;
    let prefix = ctx
        .config
        .cache_service
        .as_ref()
        .and_then(|c| c.host.split_once('/'))
        .map(|(_, path)| path);
    for repository in gc::stale_repositories(&usage.repositories, &namespaces, prefix) {
        let result = cachecall::bounded(ctx, |admin| {
            let repository = &repository;
            async move { Ok::<_, CallError>(admin.delete_repository(repository).await?) }
        })
        .await;
        ctx.gc_observer
            .cache_call(CacheCall::DeleteRepository, result.is_ok());
        match result {
            Ok(_) => {
                tracing::info!(%repository, "deleted the cache repository of a deleted namespace");
                report.deleted.push(repository);
            }
            Err(error) => {
                report.failed += 1;
                tracing::warn!(%repository, error = error_chain(&error), "deleting a cache repository failed; retried at the next sweep");
            }
        }
    }
    sweep_orphan_tags(ctx, &usage.repositories, &namespaces, prefix, &mut report).await?;
    ctx.gc_observer.cache_swept(&report, started.elapsed());
    Ok(report)
}

/// Deletes the stored-log and uploaded-context tags whose Build no longer exists (one
/// whose finalizer gave up while the cache was away). The tags are listed first and the
/// Builds second, so a tag's Build, if it still exists, is in the later list.
async fn sweep_orphan_tags(
    ctx: &Context,
    repositories: &[crate::cacheapi::admin::RepositoryUsage],
    namespaces: &BTreeSet<String>,
    prefix: Option<&str>,
    report: &mut CacheSweepReport,
) -> Result<(), SweepError> {
    let per_build = gc::per_build_repositories(repositories, namespaces, prefix);
    if per_build.is_empty() {
        return Ok(());
    }
    let mut listed = Vec::new();
    for (namespace, repository) in per_build {
        let result = cachecall::bounded(ctx, |admin| {
            let repository = &repository;
            async move { Ok::<_, CallError>(admin.tags(repository).await?) }
        })
        .await;
        match result {
            Ok(tags) => listed.push((namespace, repository, tags)),
            Err(error) => {
                report.failed += 1;
                tracing::warn!(%repository, error = error_chain(&error), "listing the tags of a cache repository failed; retried at the next sweep");
            }
        }
    }
    let live: BTreeSet<(String, String)> = list_in_pages(
        &Api::<Build>::all(ctx.client.clone()),
        &ListParams::default(),
        ctx.config.list_page,
        |mut build: Build| {
            slim::build(&mut build);
            build
        },
    )
    .await
    .map_err(list_failed("builds"))?
    .iter()
    .map(|b| {
        (
            b.namespace().unwrap_or_default(),
            b.uid().unwrap_or_default(),
        )
    })
    .collect();
    for (namespace, repository, tags) in listed {
        for (repository, tag) in gc::orphan_build_tags(&namespace, &repository, &tags, &live) {
            let result = cachecall::bounded(ctx, |admin| {
                let (repository, tag) = (&repository, &tag);
                async move { Ok::<_, CallError>(admin.delete_tag(repository, tag).await?) }
            })
            .await;
            ctx.gc_observer
                .cache_call(CacheCall::DeleteTag, result.is_ok());
            match result {
                Ok(_) => {
                    tracing::info!(%repository, %tag, "deleted the cache tag of a deleted Build");
                    report.orphan_tags.push(format!("{repository}:{tag}"));
                }
                Err(error) => {
                    report.failed += 1;
                    tracing::warn!(%repository, %tag, error = error_chain(&error), "deleting a cache tag failed; retried at the next sweep");
                }
            }
        }
    }
    Ok(())
}

/// Runs [`sweep_once`] now and every `--sweep-interval`, and [`sweep_cache`] now and every
/// [`CACHE_SWEEP_EVERY`] sweeps, until `stop` turns true.
pub async fn run_sweeps(ctx: Arc<Context>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(ctx.config.sweep_interval.max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweeps: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        match sweep_once(&ctx).await {
            Ok(report) if report.total_deleted() + report.failed > 0 => tracing::info!(
                examined = report.examined,
                deleted = report.total_deleted(),
                failed = report.failed,
                "sweep done"
            ),
            Ok(_) => tracing::debug!("sweep found nothing to delete"),
            Err(error) => tracing::warn!(error = error_chain(&error), "sweep failed"),
        }
        if sweeps.is_multiple_of(CACHE_SWEEP_EVERY)
            && let Err(error) = sweep_cache(&ctx).await
        {
            tracing::warn!(error = error_chain(&error), "cache repository sweep failed");
        }
        sweeps += 1;
    }
}

fn list_failed(what: &'static str) -> impl FnOnce(kube::Error) -> SweepError {
    move |source| SweepError::List { what, source }
}

/// The API of `K` in the controller's scope (one namespace, or all).
fn api<K>(ctx: &Context) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned,
    K::DynamicType: Default,
{
    match &ctx.config.namespace {
        Some(namespace) => Api::namespaced(ctx.client.clone(), namespace),
        None => Api::all(ctx.client.clone()),
    }
}

/// Deletes one object, only if it is still the one examined (UID precondition). Gone
/// already, or replaced by a newer object of the same name, is not a failure.
async fn delete(ctx: &Context, deletion: &Deletion) -> Result<(), kube::Error> {
    let params = DeleteParams {
        grace_period_seconds: Some(u32::try_from(deletion.grace.as_secs()).unwrap_or(u32::MAX)),
        preconditions: deletion.uid.as_ref().map(|uid| Preconditions {
            uid: Some(uid.clone()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let namespace = &deletion.namespace;
    let result = match deletion.kind {
        Kind::Pod => delete_in::<Pod>(ctx, namespace, &deletion.name, &params).await,
        Kind::ConfigMap => delete_in::<ConfigMap>(ctx, namespace, &deletion.name, &params).await,
        Kind::Secret => delete_in::<Secret>(ctx, namespace, &deletion.name, &params).await,
    };
    match result {
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        other => other,
    }
}

async fn delete_in<K>(
    ctx: &Context,
    namespace: &str,
    name: &str,
    params: &DeleteParams,
) -> Result<(), kube::Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    Api::<K>::namespaced(ctx.client.clone(), namespace)
        .delete(name, params)
        .await
        .map(|_| ())
}
