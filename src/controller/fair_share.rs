//! Running-build limits and the fair queue in front of them: which waiting Builds may start
//! now, and where the others stand (pure).
//!
//! Two limits apply: one for the cluster and one per namespace (a namespace may lower its
//! own with the annotation [`NAMESPACE_LIMIT_ANNOTATION`] on its Namespace object). A Build "waits for a slot" only once its concurrency group lets it go: a Build
//! queued behind its group holds no place here, so a group's backlog never takes a slot.
//!
//! **The rule.** While a cluster slot is free, it goes to the namespace with the fewest
//! running builds among those under their own limit and with a Build waiting; ties go to
//! the namespace whose oldest waiting Build is oldest (creation time, then namespace and
//! name). Within a namespace, Builds start oldest first. So a namespace that submits 500
//! Builds holds at most one slot more than a namespace that submits one, and that one
//! starts at the next slot that frees.
//!
//! **Determinism.** The choice depends only on the counts and the waiting list, never on
//! the order they are given in or on hash-map order: every reconcile that looks at the
//! same state admits the same Builds.
//!
//! **What counts as running** is read from the Builds the API server holds ([`census`]):
//! a Build whose status announces an attempt in progress holds a slot from the moment that
//! status is written (before its pod exists) until the attempt ends, whichever controller
//! replica wrote it. A restart or a leader change therefore counts the same. The one thing
//! memory adds is [`Reservations`]: attempts this process has just started whose status
//! the watch cache does not show yet.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use super::queue::{self, Admission, Peer, Standing};
use crate::crd::{Build, Phase};

/// The annotation on a Namespace that lowers its own running-build limit: a positive
/// integer. It can only lower the controller's `--max-running-builds-per-namespace`, never
/// raise it; with no such flag it is the namespace's limit. An annotation on the Namespace
/// (not an object inside it) because the platform team that owns the namespace decides
/// its share, as it decides its Pod Security level with labels there.
pub const NAMESPACE_LIMIT_ANNOTATION: &str = "kiln.dev/max-running-builds";

/// The limit a Namespace sets for itself with [`NAMESPACE_LIMIT_ANNOTATION`]: `Ok(None)`
/// without the annotation, `Err` with what is wrong when its value is not a positive
/// integer (the value is then ignored).
pub fn namespace_limit(annotations: &BTreeMap<String, String>) -> Result<Option<u32>, String> {
    let Some(value) = annotations.get(NAMESPACE_LIMIT_ANNOTATION) else {
        return Ok(None);
    };
    match value.trim().parse::<u32>() {
        Ok(limit) if limit >= 1 => Ok(Some(limit)),
        _ => Err(format!(
            "annotation {NAMESPACE_LIMIT_ANNOTATION}={value:?} is not a positive integer; ignored"
        )),
    }
}

/// The limits on running builds. `None` is no limit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Builds running at once in the cluster.
    pub cluster: Option<u32>,
    /// Builds running at once in each namespace.
    pub per_namespace: Option<u32>,
    /// Lower limits that namespaces set for themselves (a namespace cannot raise its own
    /// above `per_namespace`).
    pub namespace_overrides: BTreeMap<String, u32>,
}

impl Limits {
    /// Whether any limit applies (without one, every Build the group lets go starts).
    pub fn is_active(&self) -> bool {
        self.cluster.is_some()
            || self.per_namespace.is_some()
            || !self.namespace_overrides.is_empty()
    }

    /// These limits with the namespaces' own, `overrides` (namespace → limit).
    pub fn with_overrides(&self, overrides: &BTreeMap<String, u32>) -> Limits {
        let mut limits = self.clone();
        limits
            .namespace_overrides
            .extend(overrides.iter().map(|(n, l)| (n.clone(), *l)));
        limits
    }

    /// The limit of one namespace: the lower of the controller's and its own.
    pub fn of_namespace(&self, namespace: &str) -> Option<u32> {
        let own = self.namespace_overrides.get(namespace).copied();
        match (self.per_namespace, own) {
            (Some(controller), Some(own)) => Some(controller.min(own)),
            (controller, own) => controller.or(own),
        }
    }
}

/// A Build that its concurrency group lets go, waiting for a slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its creation time (the queue order; a Build without one sorts last).
    pub created: Option<Timestamp>,
    /// The slots it takes: the build pods it runs at once ([`slots_of`]).
    pub slots: u32,
}

impl Waiting {
    /// `build` as it waits in the queue.
    fn of(build: &Build) -> Self {
        Self {
            namespace: build.namespace().unwrap_or_default(),
            name: build.name_any(),
            created: build.metadata.creation_timestamp.as_ref().map(|t| t.0),
            slots: slots_of(build),
        }
    }

    /// Queue order: creation time, then namespace and name.
    fn queue_order(&self, other: &Self) -> Ordering {
        let created = |w: &Self| (w.created.is_none(), w.created);
        created(self)
            .cmp(&created(other))
            .then_with(|| self.namespace.cmp(&other.namespace))
            .then_with(|| self.name.cmp(&other.name))
    }
}

/// The limit that keeps a Build waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// Its namespace runs as many builds as its limit allows.
    Namespace(u32),
    /// The cluster runs as many builds as its limit allows (or its free slots went to
    /// namespaces with fewer running builds).
    Cluster(u32),
}

/// Where a waiting Build stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Slot {
    /// Start now.
    Start,
    /// Wait.
    Queued {
        /// Which limit it waits for.
        limit: Limit,
        /// Its place among its namespace's waiting Builds (1 is next).
        position: usize,
        /// The namespace's running builds (as counted, with those started in this turn).
        running_in_namespace: u32,
    },
}

/// A queued Build's place, in words: "3rd in namespace team-a; cluster limit 20 reached".
///
/// Places beyond the 10th are said in steps ("after the first 10", "after the first 100",
/// …): a queued Build's message is rewritten whenever it changes, and an exact place deep
/// in a long queue would change at every start, costing a status write per queued Build
/// per start for a figure nobody acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueMessage<'a> {
    /// The Build's namespace.
    pub namespace: &'a str,
    /// What [`admit`] said.
    pub slot: &'a Slot,
}

impl fmt::Display for QueueMessage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Slot::Queued {
            limit,
            position,
            running_in_namespace,
        } = self.slot
        else {
            return write!(f, "a slot is free");
        };
        let place = if *position <= 10 {
            ordinal(*position)
        } else {
            let mut step = 10usize;
            while step.saturating_mul(10) < *position {
                step = step.saturating_mul(10);
            }
            format!("after the first {step}")
        };
        write!(f, "{place} in namespace {}; ", self.namespace)?;
        match limit {
            Limit::Namespace(limit) => write!(
                f,
                "namespace limit {limit} reached ({running_in_namespace} running)"
            ),
            Limit::Cluster(limit) => write!(f, "cluster limit {limit} reached"),
        }
    }
}

/// The slots a Build takes while its attempt runs: one per build pod it runs at once. A
/// `Native` multi-platform Build runs a pod per platform (its index pod runs after them),
/// so it takes as many slots as it has platforms; any other Build takes one.
pub fn slots_of(build: &Build) -> u32 {
    if build.spec.builds_natively() {
        let platforms: std::collections::BTreeSet<&str> =
            build.spec.platforms.iter().map(String::as_str).collect();
        u32::try_from(platforms.len()).unwrap_or(u32::MAX).max(1)
    } else {
        1
    }
}

/// 1st, 2nd, 3rd, 4th, 11th, 12th, 13th, 21st, …
pub fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// Decides, for every waiting Build, whether it starts now or where it waits.
///
/// `running` counts the slots taken in each namespace (a [`Census`] of the Builds the API
/// server holds). The answer holds every Build of `waiting`, keyed by `(namespace, name)`.
///
/// A Build that takes several slots (a `Native` multi-platform Build, one per platform)
/// starts only when that many are free, and no later Build overtakes it while it waits:
/// slots may stay idle for a turn, but a large Build is never starved by small ones. Its
/// need is capped at the limits themselves, so that a Build with more platforms than a
/// limit still starts, alone.
pub fn admit(
    limits: &Limits,
    running: &BTreeMap<String, u32>,
    waiting: &[Waiting],
) -> BTreeMap<(String, String), Slot> {
    let mut queues: BTreeMap<&str, Vec<&Waiting>> = BTreeMap::new();
    for build in waiting {
        queues.entry(&build.namespace).or_default().push(build);
    }
    for queue in queues.values_mut() {
        queue.sort_by(|a, b| a.queue_order(b));
        queue.dedup_by(|a, b| a.name == b.name);
    }
    let mut counts: BTreeMap<&str, u32> = running
        .iter()
        .map(|(namespace, n)| (namespace.as_str(), *n))
        .collect();
    let total: u64 = running.values().map(|n| u64::from(*n)).sum();
    let mut free = limits
        .cluster
        .map(|limit| u64::from(limit).saturating_sub(total));
    // How many of each namespace's queue start in this turn (they start from the front).
    let mut started: BTreeMap<&str, usize> = BTreeMap::new();
    while free != Some(0) {
        let mut next: Option<(&str, u32, &Waiting)> = None;
        for (namespace, queue) in &queues {
            let taken = started.get(namespace).copied().unwrap_or(0);
            let count = counts.get(namespace).copied().unwrap_or(0);
            let Some(head) = queue.get(taken) else {
                continue;
            };
            if limits
                .of_namespace(namespace)
                .is_some_and(|limit| count + need(limits, namespace, head) > limit)
            {
                continue;
            }
            let better = next.is_none_or(|(_, best_count, best_head)| {
                count
                    .cmp(&best_count)
                    .then_with(|| head.queue_order(best_head))
                    .is_lt()
            });
            if better {
                next = Some((namespace, count, head));
            }
        }
        let Some((namespace, _, head)) = next else {
            break;
        };
        let need = need(limits, namespace, head);
        if free.is_some_and(|free| free < u64::from(need)) {
            // The next Build in fair order waits for enough slots; none overtakes it.
            break;
        }
        *started.entry(namespace).or_default() += 1;
        *counts.entry(namespace).or_default() += need;
        free = free.map(|n| n - u64::from(need));
    }
    let mut slots = BTreeMap::new();
    for (namespace, queue) in &queues {
        let taken = started.get(namespace).copied().unwrap_or(0);
        let count = counts.get(namespace).copied().unwrap_or(0);
        let namespace_limit = limits.of_namespace(namespace);
        for (index, build) in queue.iter().enumerate() {
            let slot = if index < taken {
                Slot::Start
            } else {
                let need = need(limits, namespace, build);
                let limit = match (namespace_limit, limits.cluster) {
                    (Some(limit), _) if count + need > limit => Limit::Namespace(limit),
                    (_, Some(limit)) => Limit::Cluster(limit),
                    // Unreachable with no limit reached: every Build would have started.
                    (Some(limit), None) => Limit::Namespace(limit),
                    (None, None) => Limit::Cluster(0),
                };
                Slot::Queued {
                    limit,
                    position: index - taken + 1,
                    running_in_namespace: count,
                }
            };
            slots.insert((namespace.to_string(), build.name.clone()), slot);
        }
    }
    slots
}

/// The slots `build` needs to start in `namespace`: its own, capped at the limits (a Build
/// larger than a limit takes all of it).
fn need(limits: &Limits, namespace: &str, build: &Waiting) -> u32 {
    let mut need = build.slots.max(1);
    for limit in [limits.cluster, limits.of_namespace(namespace)]
        .into_iter()
        .flatten()
    {
        need = need.min(limit.max(1));
    }
    need
}

/// Attempts this process started, by Build (namespace, name): the attempt number. A Build
/// counts as running while the watch cache still shows an earlier attempt.
pub type Reservations = BTreeMap<(String, String), u32>;

/// What the Builds of the cluster say about slots: running builds by namespace, and the
/// Builds that their concurrency group lets go and that wait for a slot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Census {
    /// Builds holding a slot, by namespace.
    pub running: BTreeMap<String, u32>,
    /// Builds waiting for a slot (each the one its group lets go).
    pub waiting: Vec<Waiting>,
}

fn key_of(build: &Build) -> (String, String) {
    (build.namespace().unwrap_or_default(), build.name_any())
}

/// Where a Build stands in its group, with this process's reservations.
fn standing(build: &Build, reserved: &Reservations) -> Standing {
    let attempt = build.status.as_ref().map_or(0, |s| s.attempt);
    if reserved
        .get(&key_of(build))
        .is_some_and(|started| attempt < *started)
    {
        return Standing::Active;
    }
    queue::standing(build, false)
}

/// Whether `build`, as the cache shows it, may be about to start an attempt: it waits (new,
/// queued, or asked to run again), or its last attempt ended and it is not finished (a
/// retry after its backoff). Only these go through the slot gate.
pub fn may_start(build: &Build) -> bool {
    match queue::standing(build, false) {
        Standing::Waiting => true,
        Standing::Idle => false,
        Standing::Active => build.status.as_ref().is_some_and(|status| {
            status.phase != Some(Phase::Running)
                && status
                    .attempts
                    .last()
                    .is_none_or(|attempt| attempt.completion_time.is_some())
        }),
    }
}

/// Counts running builds and lists the Builds waiting for a slot, from every Build the
/// controller sees. A Build waits for a slot when it wants to start and its concurrency
/// group lets it go: a group's later members hold no place.
pub fn census(builds: &[Arc<Build>], reserved: &Reservations) -> Census {
    let mut groups: BTreeMap<(String, &str), Vec<(&Build, Standing)>> = BTreeMap::new();
    for build in builds {
        let namespace = build.namespace().unwrap_or_default();
        groups
            .entry((namespace, queue::group_of(build)))
            .or_default()
            .push((build, standing(build, reserved)));
    }
    let mut census = Census::default();
    for ((namespace, _), members) in &groups {
        for (index, (build, standing)) in members.iter().enumerate() {
            match standing {
                Standing::Active => {
                    *census.running.entry(namespace.clone()).or_default() += slots_of(build);
                }
                Standing::Waiting => {
                    let peers: Vec<Peer> = members
                        .iter()
                        .enumerate()
                        .filter(|(other, _)| *other != index)
                        .map(|(_, (peer, standing))| Peer {
                            name: peer.name_any(),
                            created: peer.metadata.creation_timestamp.as_ref().map(|t| t.0),
                            standing: *standing,
                        })
                        .collect();
                    let retrying = build.status.as_ref().is_some_and(|s| s.retries > 0);
                    if queue::admit(build, &peers, retrying) == Admission::Go {
                        census.waiting.push(Waiting::of(build));
                    }
                }
                Standing::Idle => {}
            }
        }
    }
    census
}

/// The slot of `build`, which wants to start and whose group lets it go, among `others`
/// (every other Build the controller sees).
pub fn slot_of(
    limits: &Limits,
    build: &Build,
    others: &[Arc<Build>],
    reserved: &Reservations,
) -> Slot {
    let key = key_of(build);
    let others: Vec<Arc<Build>> = others
        .iter()
        .filter(|other| key_of(other) != key)
        .cloned()
        .collect();
    let mut census = census(&others, reserved);
    census.waiting.push(Waiting::of(build));
    admit(limits, &census.running, &census.waiting)
        .remove(&key)
        .unwrap_or(Slot::Start)
}

/// The Builds to reconcile after a change: those a free slot now goes to (a finished Build
/// freed it, or a limit was raised), sorted.
pub fn wakeups(limits: &Limits, builds: &[Arc<Build>]) -> Vec<ObjectRef<Build>> {
    if !limits.is_active() {
        return Vec::new();
    }
    let census = census(builds, &Reservations::new());
    let slots = admit(limits, &census.running, &census.waiting);
    let mut refs: Vec<ObjectRef<Build>> = slots
        .iter()
        .filter(|(_, slot)| **slot == Slot::Start)
        .map(|((namespace, name), _)| ObjectRef::new(name).within(namespace))
        .collect();
    refs.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    refs
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn at(seconds: i64) -> Option<Timestamp> {
        Timestamp::from_second(1_700_000_000 + seconds).ok()
    }

    fn waiting(namespace: &str, name: &str, seconds: i64) -> Waiting {
        Waiting {
            namespace: namespace.into(),
            name: name.into(),
            created: at(seconds),
            slots: 1,
        }
    }

    /// A waiting Build that takes `slots` slots (a native build of that many platforms).
    fn wide(namespace: &str, name: &str, seconds: i64, slots: u32) -> Waiting {
        Waiting {
            slots,
            ..waiting(namespace, name, seconds)
        }
    }

    fn running(counts: &[(&str, u32)]) -> BTreeMap<String, u32> {
        counts.iter().map(|(n, c)| ((*n).to_owned(), *c)).collect()
    }

    fn started(slots: &BTreeMap<(String, String), Slot>) -> Vec<String> {
        slots
            .iter()
            .filter(|(_, slot)| **slot == Slot::Start)
            .map(|((namespace, name), _)| format!("{namespace}/{name}"))
            .collect()
    }

    fn limits(cluster: Option<u32>, per_namespace: Option<u32>) -> Limits {
        Limits {
            cluster,
            per_namespace,
            namespace_overrides: BTreeMap::new(),
        }
    }

    fn build(namespace: &str, name: &str, seconds: i64) -> Build {
        Build::test(name)
            .in_namespace(namespace)
            .created_at(at(seconds).unwrap())
    }

    fn running_build(namespace: &str, name: &str, seconds: i64) -> Build {
        let mut status = crate::crd::BuildStatus {
            attempt: 1,
            phase: Some(crate::crd::Phase::Running),
            ..Default::default()
        };
        status.observed_generation = Some(1);
        build(namespace, name, seconds).with_status(status)
    }

    #[test]
    fn a_native_build_takes_a_slot_per_platform_and_a_queued_one_says_which_limit_holds_it() {
        let native = Build::test("multi")
            .platform("linux/amd64")
            .platform("linux/arm64");
        assert_eq!(slots_of(&native), 2);
        let emulated = native
            .clone()
            .platform_strategy(crate::crd::PlatformStrategy::Emulated);
        assert_eq!(slots_of(&emulated), 1);
        assert_eq!(slots_of(&Build::test("one")), 1);
        let slots = admit(
            &limits(Some(10), Some(3)),
            &running(&[("a", 2)]),
            &[wide("a", "multi", 0, 2)],
        );
        assert_eq!(
            slots[&("a".to_owned(), "multi".to_owned())],
            Slot::Queued {
                limit: Limit::Namespace(3),
                position: 1,
                running_in_namespace: 2
            }
        );
    }

    #[test]
    fn the_census_counts_running_builds_and_lists_only_the_head_of_each_group() {
        let builds: Vec<Arc<Build>> = vec![
            Arc::new(running_build("a", "r1", 0)),
            Arc::new(build("a", "w1", 5).group("g")),
            Arc::new(build("a", "w2", 6).group("g")),
            Arc::new(build("a", "held", 7).group("busy")),
            Arc::new(running_build("a", "holder", 1).group("busy")),
            Arc::new(build("b", "w3", 8)),
        ];
        let census = census(&builds, &Reservations::new());
        assert_eq!(census.running, running(&[("a", 2)]));
        let waiting: Vec<&str> = census.waiting.iter().map(|w| w.name.as_str()).collect();
        // w2 waits behind w1 in group g, held behind the running holder of "busy".
        assert_eq!(waiting, ["w1", "w3"]);
    }

    #[test]
    fn a_reserved_start_counts_as_running_until_the_cache_shows_it() {
        let builds = vec![Arc::new(build("a", "just-started", 10))];
        let mut reserved = Reservations::new();
        reserved.insert(("a".into(), "just-started".into()), 1);
        let census = census(&builds, &reserved);
        assert_eq!(census.running, running(&[("a", 1)]));
        assert!(census.waiting.is_empty());
        let slot = slot_of(
            &limits(Some(1), None),
            &build("b", "next", 5),
            &builds,
            &reserved,
        );
        assert!(matches!(slot, Slot::Queued { .. }), "{slot:?}");
        let free = slot_of(
            &limits(Some(1), None),
            &build("b", "next", 5),
            &builds,
            &Reservations::new(),
        );
        assert_eq!(
            free,
            Slot::Start,
            "without the reservation the slot looks free"
        );
    }

    #[test]
    fn wakeups_name_the_builds_a_free_slot_goes_to() {
        let builds: Vec<Arc<Build>> = vec![
            Arc::new(running_build("a", "r1", 0)),
            Arc::new(build("a", "a2", 1)),
            Arc::new(build("b", "b1", 9)),
        ];
        let refs = wakeups(&limits(Some(2), None), &builds);
        let names: Vec<String> = refs.iter().map(|r| r.name.clone()).collect();
        assert_eq!(names, ["b1"]);
        assert!(wakeups(&Limits::default(), &builds).is_empty());
    }

    #[test]
    fn builds_that_may_start_are_new_queued_or_between_attempts() {
        use crate::crd::{AttemptRecord, BuildStatus};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let attempt = |ended: bool| AttemptRecord {
            attempt: 1,
            pod_name: "p".into(),
            pod_uid: None,
            generation: 1,
            start_time: Time(at(0).unwrap()),
            completion_time: ended.then(|| Time(at(5).unwrap())),
            result: None,
            reason: None,
            message: None,
            digest: None,
            pod_retained_until: None,
            log: None,
        };
        let with = |phase: Phase, ended: bool| {
            build("a", "x", 0).with_status(BuildStatus {
                phase: Some(phase),
                attempt: 1,
                observed_generation: Some(1),
                attempts: vec![attempt(ended)],
                ..BuildStatus::default()
            })
        };
        assert!(may_start(&build("a", "new", 0)));
        assert!(!may_start(&running_build("a", "r", 0)));
        assert!(!may_start(&with(Phase::Pending, false)), "its attempt runs");
        assert!(
            may_start(&with(Phase::Pending, true)),
            "a retry waits for its backoff"
        );
        assert!(!may_start(&with(Phase::Succeeded, true)));
    }

    #[test]
    fn without_limits_everything_starts() {
        let queue = [waiting("a", "x", 0), waiting("b", "y", 1)];
        let slots = admit(&Limits::default(), &running(&[("a", 40)]), &queue);
        assert_eq!(started(&slots), ["a/x", "b/y"]);
    }

    /// Each row: limits, running builds, waiting Builds → the ones that start.
    #[test]
    fn the_slot_choice() {
        type Row<'a> = (
            &'a str,
            Limits,
            Vec<(&'a str, u32)>,
            Vec<Waiting>,
            Vec<&'a str>,
        );
        let rows: Vec<Row> = vec![
            (
                "a free slot goes to the namespace with fewer running builds",
                limits(Some(3), None),
                vec![("big", 2)],
                vec![waiting("big", "b1", 0), waiting("small", "s1", 5)],
                vec!["small/s1"],
            ),
            (
                "equal counts: the oldest waiting Build's namespace wins",
                limits(Some(1), None),
                vec![],
                vec![waiting("b", "late", 9), waiting("a", "early", 1)],
                vec!["a/early"],
            ),
            (
                "equal counts and times: namespace, then name",
                limits(Some(1), None),
                vec![],
                vec![waiting("b", "x", 1), waiting("a", "y", 1)],
                vec!["a/y"],
            ),
            (
                "within a namespace: oldest first, then by name",
                limits(Some(2), None),
                vec![],
                vec![
                    waiting("a", "c", 3),
                    waiting("a", "b", 2),
                    waiting("a", "a", 2),
                ],
                vec!["a/a", "a/b"],
            ),
            (
                "slots alternate between namespaces as counts even out",
                limits(Some(4), None),
                vec![],
                vec![
                    waiting("a", "a1", 0),
                    waiting("a", "a2", 1),
                    waiting("a", "a3", 2),
                    waiting("b", "b1", 10),
                    waiting("b", "b2", 11),
                    waiting("c", "c1", 20),
                ],
                vec!["a/a1", "a/a2", "b/b1", "c/c1"],
            ),
            (
                "a namespace at its limit is passed over",
                limits(Some(10), Some(2)),
                vec![("a", 2)],
                vec![waiting("a", "a3", 0), waiting("b", "b1", 5)],
                vec!["b/b1"],
            ),
            (
                "the cluster full: nobody starts",
                limits(Some(5), None),
                vec![("a", 3), ("b", 2)],
                vec![waiting("c", "c1", 0)],
                vec![],
            ),
            (
                "more running than the limit (it was lowered): nobody starts",
                limits(Some(2), None),
                vec![("a", 4)],
                vec![waiting("b", "b1", 0)],
                vec![],
            ),
            (
                "a Build without a creation time goes last",
                limits(Some(1), None),
                vec![],
                vec![
                    Waiting {
                        namespace: "a".into(),
                        name: "none".into(),
                        created: None,
                        slots: 1,
                    },
                    waiting("b", "dated", 100),
                ],
                vec!["b/dated"],
            ),
            (
                "a native Build takes a slot per platform",
                limits(Some(4), None),
                vec![],
                vec![wide("a", "multi", 0, 3), waiting("b", "one", 1)],
                vec!["a/multi", "b/one"],
            ),
            (
                "too few slots free: it waits, and nobody overtakes it",
                limits(Some(4), None),
                vec![("b", 2)],
                vec![wide("a", "multi", 0, 3), waiting("c", "later", 1)],
                vec![],
            ),
            (
                "a namespace limit counts pods too",
                limits(Some(10), Some(3)),
                vec![("a", 1)],
                vec![wide("a", "multi", 0, 3), waiting("b", "other", 1)],
                vec!["b/other"],
            ),
            (
                "more platforms than the limit: it starts alone, taking the whole limit",
                limits(Some(2), None),
                vec![],
                vec![wide("a", "huge", 0, 5), waiting("b", "next", 1)],
                vec!["a/huge"],
            ),
            (
                "the same Build listed twice takes one slot",
                limits(Some(2), None),
                vec![],
                vec![
                    waiting("a", "x", 0),
                    waiting("a", "x", 0),
                    waiting("b", "y", 1),
                ],
                vec!["a/x", "b/y"],
            ),
        ];
        for (what, limits, counts, queue, expected) in rows {
            let slots = admit(&limits, &running(&counts), &queue);
            assert_eq!(started(&slots), expected, "{what}");
            let mut reversed = queue.clone();
            reversed.reverse();
            assert_eq!(
                admit(&limits, &running(&counts), &reversed),
                slots,
                "{what}: the input order changed the answer"
            );
        }
    }

    #[test]
    fn a_namespace_limit_is_read_from_its_annotation() {
        let annotated = |value: &str| {
            BTreeMap::from([(NAMESPACE_LIMIT_ANNOTATION.to_owned(), value.to_owned())])
        };
        assert_eq!(namespace_limit(&BTreeMap::new()), Ok(None));
        assert_eq!(namespace_limit(&annotated("2")), Ok(Some(2)));
        assert_eq!(namespace_limit(&annotated(" 7 ")), Ok(Some(7)));
        for bad in ["0", "-1", "two", "", "1.5"] {
            let error = namespace_limit(&annotated(bad)).unwrap_err();
            assert!(error.contains("not a positive integer"), "{bad}: {error}");
        }
    }

    #[test]
    fn overrides_join_the_controller_limits() {
        let controller = limits(Some(20), Some(4));
        let joined = controller.with_overrides(&BTreeMap::from([("team-a".to_owned(), 1)]));
        assert_eq!(joined.of_namespace("team-a"), Some(1));
        assert_eq!(joined.of_namespace("team-b"), Some(4));
        assert_eq!(joined.cluster, Some(20));
        // An override alone turns the limits on.
        assert!(
            Limits::default()
                .with_overrides(&BTreeMap::from([("team-a".to_owned(), 1)]))
                .is_active()
        );
    }

    #[test]
    fn a_namespace_may_lower_its_own_limit_but_not_raise_it() {
        let mut limits = limits(None, Some(3));
        limits.namespace_overrides.insert("low".into(), 1);
        limits.namespace_overrides.insert("high".into(), 10);
        assert_eq!(limits.of_namespace("low"), Some(1));
        assert_eq!(limits.of_namespace("high"), Some(3));
        assert_eq!(limits.of_namespace("other"), Some(3));
        let only_own = Limits {
            namespace_overrides: limits.namespace_overrides.clone(),
            ..Limits::default()
        };
        assert_eq!(only_own.of_namespace("low"), Some(1));
        assert_eq!(only_own.of_namespace("other"), None);
        let queue: Vec<_> = (0..3)
            .map(|i| waiting("low", &format!("b{i}"), i))
            .collect();
        let slots = admit(&limits, &BTreeMap::new(), &queue);
        assert_eq!(started(&slots), ["low/b0"]);
    }

    #[test]
    fn a_queued_build_knows_its_place_and_the_limit() {
        let mut queue: Vec<_> = (0..4).map(|i| waiting("a", &format!("a{i}"), i)).collect();
        queue.push(waiting("b", "b1", 0));
        queue.push(waiting("c", "c0", 9));
        queue.push(waiting("d", "d0", 20));
        let slots = admit(&limits(Some(5), Some(2)), &running(&[("b", 2)]), &queue);
        // Three free slots: a and c tie at 0 and a's Build is older; then c (0 running
        // against a's 1); then d (0). b is at its own limit.
        assert_eq!(started(&slots), ["a/a0", "c/c0", "d/d0"]);
        let place = |ns: &str, name: &str| slots[&(ns.to_owned(), name.to_owned())].clone();
        let a3 = place("a", "a3");
        assert_eq!(
            a3,
            Slot::Queued {
                limit: Limit::Cluster(5),
                position: 3,
                running_in_namespace: 1
            }
        );
        let b1 = place("b", "b1");
        assert_eq!(
            b1,
            Slot::Queued {
                limit: Limit::Namespace(2),
                position: 1,
                running_in_namespace: 2
            }
        );
        let message = |namespace, slot| QueueMessage { namespace, slot }.to_string();
        assert_eq!(
            message("a", &a3),
            "3rd in namespace a; cluster limit 5 reached"
        );
        assert_eq!(
            message("b", &b1),
            "1st in namespace b; namespace limit 2 reached (2 running)"
        );
        assert_eq!(message("a", &Slot::Start), "a slot is free");
    }

    #[test]
    fn places_deep_in_a_queue_are_said_in_steps_so_the_message_rarely_changes() {
        let at = |position| {
            QueueMessage {
                namespace: "a",
                slot: &Slot::Queued {
                    limit: Limit::Cluster(5),
                    position,
                    running_in_namespace: 0,
                },
            }
            .to_string()
        };
        assert_eq!(at(10), "10th in namespace a; cluster limit 5 reached");
        assert_eq!(
            at(11),
            "after the first 10 in namespace a; cluster limit 5 reached"
        );
        assert_eq!(at(11), at(100));
        assert_eq!(
            at(101),
            "after the first 100 in namespace a; cluster limit 5 reached"
        );
        assert_eq!(at(101), at(1000));
        assert!(at(1001).starts_with("after the first 1000 "));
        // The last of 500 queued Builds, moving up one place per start: its message changes
        // 11 times (below 100, below 10, then each place from 10th to 1st), not 499.
        let changes = (2..=500).filter(|p| at(*p) != at(p - 1)).count();
        assert_eq!(changes, 11);
    }

    #[test]
    fn ordinals() {
        let words: Vec<String> = [1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 101, 111, 112]
            .into_iter()
            .map(ordinal)
            .collect();
        assert_eq!(
            words,
            [
                "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd",
                "101st", "111th", "112th"
            ]
        );
    }

    /// Plays a queue to its end, one slot freeing at a time (the oldest running build
    /// finishes), and returns the order Builds started in.
    fn play(limits: &Limits, mut running: Vec<Waiting>, mut queue: Vec<Waiting>) -> Vec<Waiting> {
        let mut order = Vec::new();
        for _ in 0..10_000 {
            let mut counts = BTreeMap::new();
            for build in &running {
                *counts.entry(build.namespace.clone()).or_insert(0) += 1;
            }
            let slots = admit(limits, &counts, &queue);
            let (go, wait): (Vec<_>, Vec<_>) = queue
                .into_iter()
                .partition(|b| slots[&(b.namespace.clone(), b.name.clone())] == Slot::Start);
            let mut go = go;
            go.sort_by(|a, b| a.queue_order(b));
            order.extend(go.iter().cloned());
            running.extend(go);
            queue = wait;
            if queue.is_empty() {
                break;
            }
            if !running.is_empty() {
                running.remove(0);
            }
        }
        order
    }

    #[test]
    fn five_hundred_builds_of_one_namespace_delay_anothers_single_build_by_one_turn_at_most() {
        let mut queue: Vec<_> = (0..500)
            .map(|i| waiting("busy", &format!("b{i:03}"), i))
            .collect();
        // Every slot is taken by the busy namespace's oldest five when the single Build of
        // another namespace arrives, after all 500.
        let running: Vec<_> = queue.drain(..5).collect();
        queue.push(waiting("quiet", "only", 1_000));
        let order = play(&limits(Some(5), None), running, queue);
        let at = order.iter().position(|b| b.namespace == "quiet").unwrap();
        assert_eq!(
            at, 0,
            "the first slot that frees goes to the quiet namespace"
        );
        assert_eq!(order.len(), 496, "every waiting Build started once");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the queue and the limits: no limit is ever exceeded by what starts, a
        /// free slot is never left idle while an eligible Build waits, and a namespace only
        /// starts more when no namespace with fewer running builds is waiting.
        #[test]
        fn limits_hold_and_slots_go_to_the_fewest_running(
            cluster in proptest::option::of(0u32..8),
            per_namespace in proptest::option::of(0u32..4),
            counts in proptest::collection::vec(0u32..4, 4),
            builds in proptest::collection::vec((0usize..4, 0i64..20), 0..24),
        ) {
            let names = ["a", "b", "c", "d"];
            let limits = limits(cluster, per_namespace);
            let running: BTreeMap<String, u32> = names
                .iter()
                .zip(&counts)
                .map(|(n, c)| ((*n).to_owned(), *c))
                .collect();
            let queue: Vec<Waiting> = builds
                .iter()
                .enumerate()
                .map(|(i, (ns, t))| waiting(names[*ns], &format!("b{i}"), *t))
                .collect();
            let slots = admit(&limits, &running, &queue);
            prop_assert_eq!(slots.len(), queue.len());
            let mut after = running.clone();
            for ((namespace, _), slot) in &slots {
                if *slot == Slot::Start {
                    *after.entry(namespace.clone()).or_default() += 1;
                }
            }
            let total_before: u32 = running.values().sum();
            let total_after: u32 = after.values().sum();
            let started = total_after - total_before;
            if let Some(cluster) = cluster {
                prop_assert!(started == 0 || total_after <= cluster);
            }
            for (namespace, count) in &after {
                let before = running.get(namespace).copied().unwrap_or(0);
                if let Some(limit) = per_namespace {
                    prop_assert!(*count == before || *count <= limit);
                }
            }
            // Fair: a namespace that started a Build ends at most one above any namespace
            // that still waits under its own limit.
            for ((winner, _), slot) in &slots {
                if *slot != Slot::Start {
                    continue;
                }
                for ((waiter, _), other) in &slots {
                    if *other != Slot::Start
                        && per_namespace.is_none_or(|limit| after[waiter] < limit)
                    {
                        prop_assert!(after[winner] <= after[waiter] + 1);
                    }
                }
            }
            // Work-conserving: if some Build still waits in a namespace under its limit,
            // the cluster is full.
            for ((namespace, _), slot) in &slots {
                if *slot != Slot::Start
                    && per_namespace.is_none_or(|limit| after[namespace] < limit)
                {
                    prop_assert!(cluster.is_some_and(|c| total_after >= c));
                }
            }
        }
    }
}
