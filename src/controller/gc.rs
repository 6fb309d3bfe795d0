//! Which leftovers the sweeper deletes, and why: objects in, deletions out, each with a
//! reason, in a deterministic order (pure).
//!
//! # What is examined
//! Pods, ConfigMaps and Secrets labelled `app.kubernetes.io/managed-by=kiln` that also
//! carry `kiln.dev/build` and `kiln.dev/build-uid` (every object the controller creates
//! does). Never touched, whatever else is true:
//!
//! - an object without the label (or with another value);
//! - an object whose controller owner reference is not a Kiln Build (a foreign owner);
//! - an object being deleted already;
//! - an object of a Build that is being deleted (its finalizer owns that cleanup);
//! - an object of an attempt newer than the Build's status knows (the status is written
//!   before the objects, so this is a list that saw the object but an older Build).
//!
//! # Reasons
//! | reason | object | when | grace |
//! | --- | --- | --- | --- |
//! | `BuildGone` | any | no Build of its name exists | the pod's, if it runs |
//! | `BuildReplaced` | any | the Build of its name has another UID (deleted and re-created) | the pod's, if it runs |
//! | `AttemptEnded` | pod | it still runs, but its attempt ended (cancel, supersede, timeout) | the pod's |
//! | `AttemptFinished` | ConfigMap, Secret | its attempt ended (a cache token dies with its build) | — |
//! | `Expired` | pod | it finished, its attempt ended, and its retention time has passed | — |
//!
//! The finished pod of an ended attempt is an orphan only once its retention time is up
//! (see [`retention`](super::retention)): until then it holds the build log. While that
//! log is still owed to the cache ([`build_log`]), the pod is kept up to
//! [`LOG_HOLD`](super::build_log::LOG_HOLD) longer. A pod listed
//! as running whose attempt the (later) Build list shows ended by that pod's own exit
//! (pushed, or build failed) was listed just before it exited: it is not `AttemptEnded`.
//!
//! # Why a snapshot is safe
//! The sweeper lists the objects first and the Builds second. A Build is created before
//! its objects and its status announces an attempt before the attempt's objects exist, so
//! every listed object's Build, and the status that names its attempt, are in the later
//! list. An object is never taken for an orphan because the Build list was older.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;

use super::build_log;
use super::config::Config;
use super::labels::{BUILD, BUILD_UID, MANAGED_BY, MANAGED_BY_KILN, attempt_of};
use super::podstate::is_live;
use super::retention::pod_expiry;
use crate::cacheapi::admin::RepositoryUsage;
use crate::context::protocol::CONTEXTS_REPOSITORY;
use crate::crd::Build;
use crate::crd::build::GROUP;
use crate::oci::name::{RepoName, Tag};
use crate::store::gc::LOGS_REPOSITORY;

/// The kinds of object the sweeper examines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A build pod.
    Pod,
    /// An attempt's ConfigMap.
    ConfigMap,
    /// An attempt's cache token Secret.
    Secret,
}

impl Kind {
    /// The kind as Kubernetes spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::ConfigMap => "ConfigMap",
            Kind::Secret => "Secret",
        }
    }
}

/// Why an object is deleted (the table in the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SweepReason {
    /// No Build of its name exists.
    BuildGone,
    /// The Build of its name is another object.
    BuildReplaced,
    /// A pod that still runs for an attempt that ended.
    AttemptEnded,
    /// The ConfigMap or Secret of an attempt that ended.
    AttemptFinished,
    /// A finished pod past its retention time.
    Expired,
}

impl SweepReason {
    /// Every reason, in order.
    pub const ALL: [SweepReason; 5] = [
        SweepReason::BuildGone,
        SweepReason::BuildReplaced,
        SweepReason::AttemptEnded,
        SweepReason::AttemptFinished,
        SweepReason::Expired,
    ];

    /// A short, stable label for metrics and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            SweepReason::BuildGone => "build_gone",
            SweepReason::BuildReplaced => "build_replaced",
            SweepReason::AttemptEnded => "attempt_ended",
            SweepReason::AttemptFinished => "attempt_finished",
            SweepReason::Expired => "expired",
        }
    }

    /// What happened, for the Event on the Build.
    pub const fn describe(self) -> &'static str {
        match self {
            SweepReason::BuildGone => "its Build no longer exists",
            SweepReason::BuildReplaced => "it belonged to an earlier Build object of this name",
            SweepReason::AttemptEnded => "its attempt had ended but it still ran",
            SweepReason::AttemptFinished => "its attempt had ended",
            SweepReason::Expired => "its retention time had passed",
        }
    }

    /// Whether the deletion is worth an Event on the Build. Routine ones are not: an
    /// ended attempt's ConfigMap and Secret always go, and a pod's retention time was
    /// announced in the Build's status.
    pub const fn is_news(self) -> bool {
        matches!(self, SweepReason::BuildReplaced | SweepReason::AttemptEnded)
    }
}

/// One object to delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deletion {
    /// What it is.
    pub kind: Kind,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its UID, a precondition of the delete (a newer object of the same name is never
    /// deleted by mistake).
    pub uid: Option<String>,
    /// Why.
    pub reason: SweepReason,
    /// Grace period for a pod that still runs; zero otherwise.
    pub grace: Duration,
    /// The Build of the object's name, when one exists (the Event goes there).
    pub build: Option<String>,
}

/// What the sweeper listed: the objects first, then the Builds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Snapshot<'a> {
    /// Pods labelled by Kiln.
    pub pods: &'a [Pod],
    /// ConfigMaps labelled by Kiln (metadata).
    pub config_maps: &'a [PartialObjectMeta<ConfigMap>],
    /// Secrets labelled by Kiln (metadata: their data is never read).
    pub secrets: &'a [PartialObjectMeta<Secret>],
    /// Every Build in scope.
    pub builds: &'a [Build],
}

/// The deletions of one sweep, sorted by namespace, name and kind.
pub fn select(snapshot: &Snapshot<'_>, now: Timestamp, config: &Config) -> Vec<Deletion> {
    let builds: BTreeMap<(String, String), &Build> = snapshot
        .builds
        .iter()
        .map(|b| ((b.namespace().unwrap_or_default(), b.name_any()), b))
        .collect();
    let judge = |kind, meta, pod| judge(kind, meta, pod, &builds, now, config);
    let mut deletions: Vec<Deletion> = snapshot
        .pods
        .iter()
        .filter_map(|p| judge(Kind::Pod, &p.metadata, Some(p)))
        .chain(
            snapshot
                .config_maps
                .iter()
                .filter_map(|c| judge(Kind::ConfigMap, &c.metadata, None)),
        )
        .chain(
            snapshot
                .secrets
                .iter()
                .filter_map(|s| judge(Kind::Secret, &s.metadata, None)),
        )
        .collect();
    deletions.sort_by(|a, b| (&a.namespace, &a.name, a.kind).cmp(&(&b.namespace, &b.name, b.kind)));
    deletions
}

/// Whether the object's controller is something other than a Kiln Build.
pub fn has_foreign_owner(meta: &ObjectMeta) -> bool {
    meta.owner_references.iter().flatten().any(|owner| {
        owner.controller == Some(true)
            && !(owner.kind == "Build" && owner.api_version.starts_with(&format!("{GROUP}/")))
    })
}

fn judge(
    kind: Kind,
    meta: &ObjectMeta,
    pod: Option<&Pod>,
    builds: &BTreeMap<(String, String), &Build>,
    now: Timestamp,
    config: &Config,
) -> Option<Deletion> {
    let labels = meta.labels.as_ref()?;
    if labels.get(MANAGED_BY).map(String::as_str) != Some(MANAGED_BY_KILN)
        || has_foreign_owner(meta)
        || meta.deletion_timestamp.is_some()
    {
        return None;
    }
    let build_name = labels.get(BUILD)?;
    let build_uid = labels.get(BUILD_UID)?;
    let namespace = meta.namespace.clone()?;
    let live = pod.is_some_and(is_live);
    let deletion = |reason, build: Option<&Build>| Deletion {
        kind,
        namespace: namespace.clone(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone(),
        reason,
        grace: if live {
            config.pod_grace_period
        } else {
            Duration::ZERO
        },
        build: build.map(|b| b.name_any()),
    };

    let Some(build) = builds.get(&(namespace.clone(), build_name.clone())) else {
        return Some(deletion(SweepReason::BuildGone, None));
    };
    if build.metadata.uid.as_ref() != Some(build_uid) {
        return Some(deletion(SweepReason::BuildReplaced, Some(build)));
    }
    if build.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let attempt = attempt_of(Some(labels))?;
    let status = build.status.clone().unwrap_or_default();
    if attempt > status.attempt {
        return None;
    }
    let record = status.attempts.iter().find(|a| a.attempt == attempt);
    let open = attempt == status.attempt && record.is_none_or(|r| r.completion_time.is_none());
    if open {
        return None;
    }
    match (kind, pod) {
        // The attempt ended because its build container exited: the pod was listed before
        // that exit (the objects are listed before the Builds), it no longer runs, and its
        // retention applies from the next sweep on.
        (Kind::Pod, Some(_)) if live && ended_by_its_pod(record) => None,
        (Kind::Pod, Some(_)) if live => Some(deletion(SweepReason::AttemptEnded, Some(build))),
        (Kind::Pod, Some(pod)) => {
            let expiry = pod_expiry(build, record, pod, config);
            (now >= expiry && !build_log::holds_pod(record, pod, expiry, now, config))
                .then(|| deletion(SweepReason::Expired, Some(build)))
        }
        (Kind::Pod, None) => None,
        (Kind::ConfigMap | Kind::Secret, _) => {
            Some(deletion(SweepReason::AttemptFinished, Some(build)))
        }
    }
}

/// Whether the attempt ended because its pod's build container exited (it pushed, or its
/// build failed), rather than being stopped (cancel, supersede, timeout) or lost.
fn ended_by_its_pod(record: Option<&crate::crd::AttemptRecord>) -> bool {
    matches!(
        record.and_then(|r| r.reason),
        Some(crate::crd::Reason::Succeeded | crate::crd::Reason::BuildFailed)
    )
}

/// What one orphan and retention sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Objects examined (every labelled pod, ConfigMap and Secret listed).
    pub examined: u64,
    /// Objects deleted, by reason.
    pub deleted: BTreeMap<SweepReason, u64>,
    /// Deletions that failed; the next sweep tries again.
    pub failed: u64,
}

impl SweepReport {
    /// Objects deleted, whatever the reason.
    pub fn total_deleted(&self) -> u64 {
        self.deleted.values().sum()
    }
}

/// What one sweep of the cache's repositories did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheSweepReport {
    /// Repositories the cache service listed.
    pub examined: u64,
    /// Repositories deleted, because their namespace no longer exists.
    pub deleted: Vec<RepoName>,
    /// Deletions that failed; the next sweep tries again.
    pub failed: u64,
    /// Tags of stored logs and uploaded contexts deleted because their Build no longer
    /// exists (`repository:tag`).
    pub orphan_tags: Vec<String>,
}

/// The cache repositories of namespaces that no longer exist, sorted: not mirrors, under
/// the cache service's path `prefix` (if any), at least `<namespace>/<name>`, whose
/// namespace component is a valid namespace name absent from `namespaces`. A repository
/// that could not belong to a namespace is left alone.
pub fn stale_repositories(
    repositories: &[RepositoryUsage],
    namespaces: &BTreeSet<String>,
    prefix: Option<&str>,
) -> Vec<RepoName> {
    let mut stale: Vec<RepoName> = repositories
        .iter()
        .filter(|r| !r.mirror)
        .filter(|r| {
            let rest = match prefix {
                Some(prefix) => match r.name.as_str().strip_prefix(prefix) {
                    Some(rest) => rest.strip_prefix('/'),
                    None => None,
                },
                None => Some(r.name.as_str()),
            };
            let Some((namespace, _)) = rest.and_then(|rest| rest.split_once('/')) else {
                return false;
            };
            is_namespace_name(namespace) && !namespaces.contains(namespace)
        })
        .map(|r| r.name.clone())
        .collect();
    stale.sort();
    stale
}

/// The repositories whose tags belong to single Builds (`build-<uid>…`): stored build
/// logs and uploaded contexts, of namespaces that exist. Their orphan tags are found by
/// [`orphan_build_tags`].
pub fn per_build_repositories(
    repositories: &[RepositoryUsage],
    namespaces: &BTreeSet<String>,
    prefix: Option<&str>,
) -> Vec<(String, RepoName)> {
    let mut found: Vec<(String, RepoName)> = repositories
        .iter()
        .filter(|r| !r.mirror)
        .filter_map(|r| {
            let rest = match prefix {
                Some(prefix) => r.name.as_str().strip_prefix(prefix)?.strip_prefix('/')?,
                None => r.name.as_str(),
            };
            let (namespace, kind) = rest.split_once('/')?;
            let per_build = kind == LOGS_REPOSITORY || kind == CONTEXTS_REPOSITORY;
            (per_build && namespaces.contains(namespace))
                .then(|| (namespace.to_owned(), r.name.clone()))
        })
        .collect();
    found.sort();
    found
}

/// The tags of `repository` (of `namespace`) whose Build no longer exists: a tag
/// `build-<uid>` or `build-<uid>-<n>` whose UID is not among `live` (the `(namespace,
/// uid)` of every Build listed after the tags, deleting ones included, whose finalizer
/// owns their cleanup). Tags of another form are never touched.
pub fn orphan_build_tags(
    namespace: &str,
    repository: &RepoName,
    tags: &[String],
    live: &BTreeSet<(String, String)>,
) -> Vec<(RepoName, Tag)> {
    let mut orphans: Vec<(RepoName, Tag)> = tags
        .iter()
        .filter_map(|tag| {
            let uid = build_uid_of_tag(tag)?;
            let alive = live.contains(&(namespace.to_owned(), uid.to_owned()));
            if alive {
                return None;
            }
            Some((repository.clone(), Tag::parse(tag).ok()?))
        })
        .collect();
    orphans.sort();
    orphans
}

/// The Build UID of a tag `build-<uid>` or `build-<uid>-<n>`, where a UID is what the API
/// server makes: 36 characters of lowercase hex digits and dashes (8-4-4-4-12).
fn build_uid_of_tag(tag: &str) -> Option<&str> {
    let rest = tag.strip_prefix("build-")?;
    let uid = rest.get(..36)?;
    let shaped = uid.char_indices().all(|(at, c)| match at {
        8 | 13 | 18 | 23 => c == '-',
        _ => c.is_ascii_digit() || ('a'..='f').contains(&c),
    });
    let suffix = &rest[36..];
    let counted = suffix.is_empty()
        || suffix
            .strip_prefix('-')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    (shaped && counted).then_some(uid)
}

/// A DNS-1123 label: what a namespace name is.
fn is_namespace_name(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

#[cfg(test)]
mod tests;
