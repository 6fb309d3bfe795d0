//! GC decisions: the policy, the mark over a snapshot of the metadata, and the ordered
//! list of what to sweep (pure: data in, plan out; no clock, no I/O).
//!
//! Roots are tags, unexpired leases, and pushes in progress: content pushed, mounted or
//! checked (HEAD) within the grace window, later than any tagged manifest that reaches it
//! was pushed (the layers of a push whose manifest has not arrived yet, the manifests of
//! an index that has not, a blob an earlier image has and a new push reuses). Content a
//! tagged image brought is that tag's to keep or lose: evicting a tag takes the
//! protection of its content with it, however young, so `keep_storage` holds within one
//! run even during a burst of pushes. Reachability follows a
//! manifest's references and its referrers (manifests whose subject it is). Policies act
//! on tags, least recently used first: `keep_duration` evicts tags unused for longer,
//! `keep_storage` is a hard ceiling (evict until the total is at or under it), `all`
//! evicts every tag. Leases are never evicted; they expire.
//!
//! Tags of a logs repository ([`is_logs_repository`]) are never evicted either: they hold
//! stored build logs, which live as long as their Build keeps the attempt (the controller
//! deletes the tag), not as long as the cache has room. Like leased content, what they
//! reach counts toward the total before any other tag, so a `keep_storage` ceiling is met
//! by evicting cache tags only, or reported unmet.

use std::time::Duration;

use serde::Serialize;

use crate::oci::digest::Digest;
use crate::store::clock::millis;
use crate::store::types::{Lease, TagEntry};

/// The last component of a repository that holds stored build logs: `<namespace>/kiln_logs`.
/// A Build name never contains `_` (it is a DNS subdomain), so no Build's cache repository
/// (`<namespace>/<build>`) is ever one.
pub const LOGS_REPOSITORY: &str = "kiln_logs";

/// Whether `repo` holds stored build logs (its last component is [`LOGS_REPOSITORY`]),
/// whose tags no GC policy evicts.
pub fn is_logs_repository(repo: &str) -> bool {
    repo.rsplit('/').next() == Some(LOGS_REPOSITORY)
}

/// What a GC run may evict.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// Evict every tag (`prune --all`).
    pub all: bool,
    /// Evict least recently used tags until the total is at or under this many bytes.
    pub keep_storage: Option<u64>,
    /// Evict tags whose manifest was not used for longer than this.
    pub keep_duration: Option<Duration>,
}

/// Why something was removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GcReason {
    /// Not reachable from any root and older than the grace window.
    Unreachable,
    /// A lease past its expiry.
    LeaseExpired,
    /// A tag evicted to bring the total under `keep_storage`.
    KeepStorage,
    /// A tag unused for longer than `keep_duration`.
    KeepDuration,
    /// A tag evicted by `prune --all`.
    PruneAll,
}

impl GcReason {
    /// The reason as printed in audits and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unreachable => "unreachable",
            Self::LeaseExpired => "lease-expired",
            Self::KeepStorage => "keep-storage",
            Self::KeepDuration => "keep-duration",
            Self::PruneAll => "prune-all",
        }
    }
}

/// One blob row of the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    /// Its digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// When it was committed.
    pub created_ms: u64,
    /// When it was last used.
    pub accessed_ms: u64,
    /// When a client last pushed, mounted or checked it.
    pub pushed_ms: u64,
}

/// The metadata a mark needs, indexed for speed: blobs by position in digest order, and
/// each node's references and referrers as slices of two flat arrays (no map lookup per
/// node visited, two `u32`s per edge).
#[derive(Debug, Default)]
pub struct Graph {
    /// Blobs sorted by digest.
    pub nodes: Vec<Node>,
    /// Whether the node at each position is a manifest.
    manifest: Vec<bool>,
    /// What each node references: `references.of(at)`.
    references: Adjacency,
    /// The referrer manifests of each subject: `referrers.of(at)`.
    referrers: Adjacency,
    /// Tags, sorted by (repository, tag).
    pub tags: Vec<TagRoot>,
    /// Leases, sorted by name.
    pub leases: Vec<LeaseRoot>,
}

/// A tag in the graph: what it points to, by position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRoot {
    /// The repository.
    pub repo: String,
    /// The tag.
    pub tag: String,
    /// The position of its manifest.
    pub at: u32,
}

/// A lease in the graph: what it holds, by position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRoot {
    /// Its name.
    pub name: String,
    /// When it expires (ms after the epoch).
    pub expires_ms: u64,
    /// The positions of what it holds.
    pub at: Vec<u32>,
}

/// Edges out of each node, in compressed sparse row form: the edges of node `at` are
/// `to[start[at]..start[at + 1]]`.
#[derive(Debug, Default)]
struct Adjacency {
    start: Vec<u32>,
    to: Vec<u32>,
}

impl Adjacency {
    /// Builds the rows of `nodes` nodes from (from, to) pairs; the order of each node's
    /// edges is the order of its pairs.
    fn new(nodes: usize, mut pairs: Vec<(u32, u32)>) -> Self {
        // Stable: a node's edges keep the order the manifest lists them in.
        pairs.sort_by_key(|&(from, _)| from);
        let mut start = Vec::with_capacity(nodes + 1);
        let mut at = 0;
        for node in 0..=nodes {
            while at < pairs.len() && (pairs[at].0 as usize) < node {
                at += 1;
            }
            // At most u32::MAX pairs: positions are u32, and each node lists each
            // reference of its manifest once.
            start.push(u32::try_from(at).unwrap_or(u32::MAX));
        }
        Self {
            start,
            to: pairs.into_iter().map(|(_, to)| to).collect(),
        }
    }

    fn of(&self, at: u32) -> &[u32] {
        let at = at as usize;
        match (self.start.get(at), self.start.get(at + 1)) {
            (Some(&from), Some(&to)) => &self.to[from as usize..to as usize],
            _ => &[],
        }
    }
}

/// A manifest as the graph builder takes it.
#[derive(Debug, Clone)]
pub struct ManifestEdges {
    /// Its digest.
    pub digest: Digest,
    /// What it references.
    pub references: Vec<Digest>,
    /// Its subject.
    pub subject: Option<Digest>,
}

impl Graph {
    /// Builds the graph. `nodes` must be sorted by digest (redb's key order is). Rows that
    /// point at digests without a blob row are ignored here; `verify` reports them.
    pub fn new(
        nodes: Vec<Node>,
        manifests: impl IntoIterator<Item = ManifestEdges>,
        tags: Vec<TagEntry>,
        leases: Vec<Lease>,
    ) -> Self {
        debug_assert!(nodes.windows(2).all(|w| w[0].digest < w[1].digest));
        let mut graph = Self {
            manifest: vec![false; nodes.len()],
            nodes,
            ..Self::default()
        };
        let mut references = Vec::new();
        let mut referrers = Vec::new();
        for manifest in manifests {
            let Some(at) = graph.position(&manifest.digest) else {
                continue;
            };
            graph.manifest[at as usize] = true;
            references.extend(
                manifest
                    .references
                    .iter()
                    .filter_map(|d| graph.position(d))
                    .map(|to| (at, to)),
            );
            if let Some(subject) = manifest.subject.and_then(|s| graph.position(&s)) {
                referrers.push((subject, at));
            }
        }
        graph.references = Adjacency::new(graph.nodes.len(), references);
        graph.referrers = Adjacency::new(graph.nodes.len(), referrers);
        graph.tags = tags
            .into_iter()
            .filter_map(|TagEntry { repo, tag, digest }| {
                graph.position(&digest).map(|at| TagRoot { repo, tag, at })
            })
            .collect();
        graph.leases = leases
            .into_iter()
            .map(
                |Lease {
                     name,
                     digests,
                     expires_ms,
                 }| LeaseRoot {
                    at: digests.iter().filter_map(|d| graph.position(d)).collect(),
                    name,
                    expires_ms,
                },
            )
            .collect();
        graph
    }

    /// The position of a digest.
    pub fn position(&self, digest: &Digest) -> Option<u32> {
        self.nodes
            .binary_search_by(|node| node.digest.cmp(digest))
            .ok()
            .and_then(|at| u32::try_from(at).ok())
    }

    /// Whether the node at `at` is a manifest.
    pub fn is_manifest(&self, at: u32) -> bool {
        self.manifest.get(at as usize).copied().unwrap_or(false)
    }

    /// Marks everything reachable from `from` that is not marked yet; returns the newly
    /// marked positions.
    pub fn mark(&self, marks: &mut [bool], from: impl IntoIterator<Item = u32>) -> Vec<u32> {
        let mut newly = Vec::new();
        let mut stack: Vec<u32> = from.into_iter().collect();
        while let Some(at) = stack.pop() {
            let slot = &mut marks[at as usize];
            if *slot {
                continue;
            }
            *slot = true;
            newly.push(at);
            stack.extend(self.children(at));
        }
        newly
    }

    /// For each node, when the latest tagged manifest that reaches it was pushed (`None`:
    /// no tag reaches it). Content pushed no later than that came with a tagged image.
    pub fn covered_by_tags(&self) -> Vec<Option<u64>> {
        let mut roots: Vec<u32> = self.tags.iter().map(|root| root.at).collect();
        // Latest first, so the first tag to reach a node is the latest that does.
        roots.sort_by_key(|&at| std::cmp::Reverse(self.nodes[at as usize].pushed_ms));
        let mut seen = vec![false; self.nodes.len()];
        let mut covered = vec![None; self.nodes.len()];
        for root in roots {
            let pushed = self.nodes[root as usize].pushed_ms;
            for at in self.mark(&mut seen, [root]) {
                covered[at as usize] = Some(pushed);
            }
        }
        covered
    }

    /// What the node at `at` leads to: its references and its referrers.
    pub fn children(&self, at: u32) -> impl Iterator<Item = u32> + '_ {
        self.references
            .of(at)
            .iter()
            .chain(self.referrers.of(at))
            .copied()
    }

    fn size_of(&self, positions: &[u32]) -> u64 {
        positions
            .iter()
            .map(|&at| self.nodes[at as usize].size)
            .sum()
    }

    /// The total size of every blob.
    pub fn total(&self) -> u64 {
        self.nodes.iter().map(|n| n.size).sum()
    }
}

/// A tag chosen for eviction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eviction {
    /// The repository.
    pub repo: String,
    /// The tag.
    pub tag: String,
    /// What it pointed to at the mark (the sweep removes it only if it still does).
    pub digest: Digest,
    /// Why.
    pub reason: GcReason,
}

/// A blob (or manifest) a GC run removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepItem {
    /// Its digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// Whether it is a manifest.
    pub manifest: bool,
}

/// What one GC run will do, in order.
#[derive(Debug, Clone, Default)]
pub struct GcPlan {
    /// Tags to remove first.
    pub evictions: Vec<Eviction>,
    /// Leases past their expiry.
    pub expired_leases: Vec<String>,
    /// Blobs to sweep: manifests before what they reference, then plain blobs.
    pub sweep: Vec<SweepItem>,
    /// Bytes of every blob at the mark.
    pub bytes_before: u64,
    /// Bytes that stay.
    pub bytes_after: u64,
    /// Set when `keep_storage` could not be met (leases and the grace window hold more).
    pub ceiling_unmet: bool,
    /// Bytes that unexpired leases hold, whatever the policy.
    pub held_by_leases: u64,
    /// Bytes that pushes in progress hold (beyond what leases hold), whatever the policy.
    pub held_by_pushes: u64,
}

/// Decides what a GC run removes, given the snapshot, the policy, the grace window and
/// the time.
pub fn plan(graph: &Graph, policy: &Policy, grace: Duration, now_ms: u64) -> GcPlan {
    let mut marks = vec![false; graph.nodes.len()];
    let mut plan = GcPlan {
        bytes_before: graph.total(),
        ..GcPlan::default()
    };
    pin_roots(graph, grace, now_ms, &mut marks, &mut plan);
    evict_tags(graph, policy, now_ms, &mut marks, &mut plan);
    plan.sweep = sweep_order(graph, &marks);
    plan
}

/// Marks the roots no policy touches: unexpired leases and pushes in progress, and
/// records what each holds. Expired leases are listed for removal.
fn pin_roots(graph: &Graph, grace: Duration, now_ms: u64, marks: &mut [bool], plan: &mut GcPlan) {
    let grace_ms = millis(grace);
    let mut leased = Vec::new();
    for lease in &graph.leases {
        if lease.expires_ms > now_ms {
            leased.extend(lease.at.iter().copied());
        } else {
            plan.expired_leases.push(lease.name.clone());
        }
    }
    plan.held_by_leases = graph.size_of(&graph.mark(marks, leased));
    let covered = graph.covered_by_tags();
    let in_progress = (0..graph.nodes.len())
        .filter(|&at| {
            let pushed = graph.nodes[at].pushed_ms;
            pushed.saturating_add(grace_ms) > now_ms && covered[at].is_none_or(|t| pushed > t)
        })
        .filter_map(|at| u32::try_from(at).ok());
    plan.held_by_pushes = graph.size_of(&graph.mark(marks, in_progress));
}

/// Applies the policy to the tags, newest first (ties by repository and tag, so the
/// choice is deterministic): every tag it keeps is marked with what it reaches, every tag
/// it evicts is listed. Sets the bytes that stay and whether the ceiling was met.
///
/// The tags of logs repositories are kept whatever the policy, and marked first: what
/// they hold is held like what leases hold, so the ceiling is applied to the rest.
fn evict_tags(graph: &Graph, policy: &Policy, now_ms: u64, marks: &mut [bool], plan: &mut GcPlan) {
    let (logs, mut tags): (Vec<&TagRoot>, Vec<&TagRoot>) = graph
        .tags
        .iter()
        .partition(|root| is_logs_repository(&root.repo));
    let held_by_logs = graph.size_of(&graph.mark(marks, logs.iter().map(|root| root.at)));
    let mut total = plan.held_by_leases + plan.held_by_pushes + held_by_logs;
    tags.sort_by(|a, b| {
        let used = |t: &TagRoot| graph.nodes[t.at as usize].accessed_ms;
        used(b)
            .cmp(&used(a))
            .then_with(|| (&a.repo, &a.tag).cmp(&(&b.repo, &b.tag)))
    });
    let mut over_ceiling = false;
    for root in tags {
        let last_used = graph.nodes[root.at as usize].accessed_ms;
        let reason = if policy.all {
            Some(GcReason::PruneAll)
        } else if policy
            .keep_duration
            .is_some_and(|keep| last_used.saturating_add(millis(keep)) < now_ms)
        {
            Some(GcReason::KeepDuration)
        } else if over_ceiling {
            Some(GcReason::KeepStorage)
        } else {
            let added = graph.mark(marks, [root.at]);
            let added_bytes = graph.size_of(&added);
            if policy
                .keep_storage
                .is_some_and(|ceiling| total + added_bytes > ceiling)
            {
                for at in added {
                    marks[at as usize] = false;
                }
                over_ceiling = true;
                Some(GcReason::KeepStorage)
            } else {
                total += added_bytes;
                None
            }
        };
        if let Some(reason) = reason {
            plan.evictions.push(Eviction {
                repo: root.repo.clone(),
                tag: root.tag.clone(),
                digest: graph.nodes[root.at as usize].digest,
                reason,
            });
        }
    }
    plan.evictions
        .sort_by(|a, b| (&a.repo, &a.tag).cmp(&(&b.repo, &b.tag)));
    plan.bytes_after = total;
    plan.ceiling_unmet = policy.keep_storage.is_some_and(|ceiling| total > ceiling);
}

/// Everything unmarked, in sweep order: a manifest before anything it references, so that
/// no batch ever leaves a manifest whose reference is gone (for a crash between batches,
/// and for a push that makes the manifest reachable again meanwhile). Within that, digest
/// order: each batch then touches a narrow key range of every table, so the whole sweep
/// rewrites each database page about once instead of once per batch. Plain blobs last.
fn sweep_order(graph: &Graph, marks: &[bool]) -> Vec<SweepItem> {
    let mut order = Vec::new();
    let mut visited = vec![false; graph.nodes.len()];
    for at in 0..graph.nodes.len() {
        let Ok(at) = u32::try_from(at) else { break };
        if graph.is_manifest(at) && !marks[at as usize] {
            post_order(graph, marks, &mut visited, at, &mut order);
        }
    }
    order.reverse();
    // Reverse post-order lists every manifest after all that reference it, so one pass
    // gives each its level: 0 if no unmarked manifest references it, else one more than
    // the deepest that does.
    let mut level = vec![0u32; graph.nodes.len()];
    for &at in &order {
        let next = level[at as usize] + 1;
        for &child in graph.references.of(at) {
            if graph.is_manifest(child) && !marks[child as usize] {
                level[child as usize] = level[child as usize].max(next);
            }
        }
    }
    // Positions are in digest order, so sorting by (level, position) is by level, then
    // digest.
    order.sort_by_key(|&at| (level[at as usize], at));
    let manifests = order.into_iter().map(|at| {
        let node = graph.nodes[at as usize];
        SweepItem {
            digest: node.digest,
            size: node.size,
            manifest: true,
        }
    });
    let blobs = graph
        .nodes
        .iter()
        .enumerate()
        .filter(|&(at, _)| !marks[at] && !graph.manifest[at])
        .map(|(_, node)| SweepItem {
            digest: node.digest,
            size: node.size,
            manifest: false,
        });
    manifests.chain(blobs).collect()
}

/// Depth-first post-order over unmarked manifests (iterative: index chains can be deep).
fn post_order(graph: &Graph, marks: &[bool], visited: &mut [bool], start: u32, out: &mut Vec<u32>) {
    if visited[start as usize] {
        return;
    }
    visited[start as usize] = true;
    let mut stack = vec![(start, 0usize)];
    while let Some((at, next)) = stack.pop() {
        if let Some(&child) = graph.references.of(at).get(next) {
            stack.push((at, next + 1));
            let child_at = child as usize;
            if !marks[child_at] && !visited[child_at] && graph.is_manifest(child) {
                visited[child_at] = true;
                stack.push((child, 0));
            }
        } else {
            out.push(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn node(n: u8, size: u64, created_ms: u64, accessed_ms: u64) -> Node {
        Node {
            digest: Digest::of(&[n]),
            size,
            created_ms,
            accessed_ms,
            pushed_ms: created_ms,
        }
    }

    fn graph(nodes: Vec<Node>, manifests: Vec<(u8, Vec<u8>)>, tags: Vec<(&str, u8)>) -> Graph {
        let mut nodes = nodes;
        nodes.sort_by_key(|n| n.digest);
        Graph::new(
            nodes,
            manifests.into_iter().map(|(m, refs)| ManifestEdges {
                digest: Digest::of(&[m]),
                references: refs.iter().map(|r| Digest::of(&[*r])).collect(),
                subject: None,
            }),
            tags.into_iter()
                .map(|(t, m)| TagEntry {
                    repo: "r".to_owned(),
                    tag: t.to_owned(),
                    digest: Digest::of(&[m]),
                })
                .collect(),
            Vec::new(),
        )
    }

    const HOUR: u64 = 3_600_000;

    #[test]
    fn unreachable_old_blobs_are_swept_and_manifests_come_before_their_layers() {
        // m1 (tagged) -> b1; m2 (untagged) -> m3 -> b2; b3 loose.
        let g = graph(
            vec![
                node(1, 10, 0, 0),
                node(2, 20, 0, 0),
                node(3, 30, 0, 0),
                node(11, 1, 0, 0),
                node(12, 1, 0, 0),
                node(13, 1, 0, 0),
            ],
            vec![(11, vec![1]), (12, vec![13]), (13, vec![2])],
            vec![("v1", 11)],
        );
        let plan = plan(&g, &Policy::default(), Duration::from_secs(600), 10 * HOUR);
        let swept: Vec<Digest> = plan.sweep.iter().map(|s| s.digest).collect();
        let pos = |n: u8| swept.iter().position(|d| *d == Digest::of(&[n])).unwrap();
        assert_eq!(swept.len(), 4);
        assert!(pos(12) < pos(13) && pos(13) < pos(2));
        assert!(!swept.contains(&Digest::of(&[1])));
        assert_eq!(plan.bytes_after, 11);
    }

    #[test]
    fn the_grace_window_keeps_recent_blobs() {
        let g = graph(vec![node(1, 10, 9 * HOUR + 1, 0)], vec![], vec![]);
        let grace = Duration::from_secs(3600);
        assert!(
            plan(&g, &Policy::default(), grace, 10 * HOUR)
                .sweep
                .is_empty()
        );
        assert_eq!(
            plan(&g, &Policy::default(), Duration::ZERO, 10 * HOUR)
                .sweep
                .len(),
            1
        );
    }

    #[test]
    fn the_grace_window_keeps_pushes_in_progress_not_the_content_of_evicted_tags() {
        let grace = Duration::from_secs(600);
        let now = 10 * HOUR;
        let young = now - 60_000;
        let pushed = |n: u8, size: u64, created: u64, pushed_ms: u64| Node {
            pushed_ms,
            ..node(n, size, created, created)
        };
        // A burst of two young tagged images (100 bytes each, b used later), a push in
        // progress (an untagged young index over an old manifest and its old layer, a
        // young loose layer, and a layer of image a that the new push uploaded again
        // after a's manifest), and an old layer a client just checked with HEAD.
        let g = graph(
            vec![
                node(1, 99, young, young),
                node(11, 1, young, young),
                node(2, 99, young, young + 1),
                node(12, 1, young, young + 1),
                node(3, 40, HOUR, HOUR),
                node(13, 1, HOUR, HOUR),
                node(21, 1, young, young),
                node(4, 7, young, young),
                pushed(5, 5, HOUR, young),
                pushed(6, 3, young - 10, young + 5),
            ],
            vec![
                (11, vec![1, 6]),
                (12, vec![2]),
                (13, vec![3]),
                (21, vec![13]),
            ],
            vec![("a", 11), ("b", 12)],
        );
        let ceiling = Policy {
            keep_storage: Some(100),
            ..Policy::default()
        };
        let swept = |plan: &GcPlan| -> BTreeSet<u8> {
            (0..=255u8)
                .filter(|n| plan.sweep.iter().any(|s| s.digest == Digest::of(&[*n])))
                .collect()
        };
        let during = plan(&g, &ceiling, grace, now);
        // The push in progress holds 1 + 40 + 1 + 7 + 5 + 3 bytes: the index, the old
        // manifest and layer it reaches, the loose layer, the checked layer, the reused
        // layer. Beside it neither young image fits under the ceiling: both tags go, with
        // the young content they brought.
        assert_eq!(during.held_by_pushes, 57);
        assert_eq!(during.held_by_leases, 0);
        assert_eq!(during.evictions.len(), 2, "{:?}", during.evictions);
        assert_eq!(swept(&during), BTreeSet::from([1, 2, 11, 12]));
        assert_eq!(during.bytes_after, 57);
        assert!(!during.ceiling_unmet);
        let lower = Policy {
            keep_storage: Some(50),
            ..Policy::default()
        };
        let unmet = plan(&g, &lower, grace, now);
        assert!(unmet.ceiling_unmet);
        assert_eq!((unmet.held_by_pushes, unmet.bytes_after), (57, 57));
        // Past the window nothing is a push in progress: the newest image fits, the rest
        // (the old checked layer included) goes.
        let later = plan(&g, &ceiling, grace, now + 700_000);
        assert_eq!(later.held_by_pushes, 0);
        assert_eq!(later.evictions.len(), 1);
        assert_eq!(swept(&later), BTreeSet::from([1, 3, 4, 5, 6, 11, 13, 21]));
        assert_eq!(later.bytes_after, 100);
    }

    #[test]
    fn keep_storage_is_a_ceiling_evicting_least_recently_used_first() {
        // Three tagged images of 100 bytes each, used at hours 1, 2, 3.
        let g = graph(
            vec![
                node(1, 99, 0, 0),
                node(2, 99, 0, 0),
                node(3, 99, 0, 0),
                node(11, 1, 0, HOUR),
                node(12, 1, 0, 2 * HOUR),
                node(13, 1, 0, 3 * HOUR),
            ],
            vec![(11, vec![1]), (12, vec![2]), (13, vec![3])],
            vec![("a", 11), ("b", 12), ("c", 13)],
        );
        let policy = Policy {
            keep_storage: Some(250),
            ..Policy::default()
        };
        let plan = plan(&g, &policy, Duration::ZERO, 10 * HOUR);
        let evicted: Vec<&str> = plan.evictions.iter().map(|e| e.tag.as_str()).collect();
        assert_eq!(evicted, ["a"]);
        assert_eq!(plan.bytes_after, 200);
        assert!(!plan.ceiling_unmet);
    }

    #[test]
    fn logs_repositories_are_named_by_their_last_component() {
        for logs in ["team-a/kiln_logs", "kiln_logs", "cache/team-a/kiln_logs"] {
            assert!(is_logs_repository(logs), "{logs}");
        }
        for other in [
            "team-a/app",
            "team-a/kiln_logs/app",
            "team-a/kiln_logsx",
            "team-a/x_kiln_logs",
            "kiln_logs-a",
        ] {
            assert!(!is_logs_repository(other), "{other}");
        }
    }

    #[test]
    fn stored_build_logs_survive_every_policy_and_count_as_held() {
        // Two cache images of 100 bytes used at hours 1 and 2, and a log of 50 bytes in
        // the namespace's logs repository, used least recently of all.
        let mut nodes = vec![
            node(1, 99, 0, 0),
            node(2, 99, 0, 0),
            node(3, 49, 0, 0),
            node(11, 1, 0, HOUR),
            node(12, 1, 0, 2 * HOUR),
            node(13, 1, 0, 0),
        ];
        nodes.sort_by_key(|n| n.digest);
        let tag = |repo: &str, tag: &str, m: u8| TagEntry {
            repo: repo.to_owned(),
            tag: tag.to_owned(),
            digest: Digest::of(&[m]),
        };
        let g = Graph::new(
            nodes,
            [(11, 1), (12, 2), (13, 3)].map(|(m, layer)| ManifestEdges {
                digest: Digest::of(&[m]),
                references: vec![Digest::of(&[layer])],
                subject: None,
            }),
            vec![
                tag("team-a/app", "a", 11),
                tag("team-a/app", "b", 12),
                tag("team-a/kiln_logs", "app-1", 13),
            ],
            Vec::new(),
        );
        let evicted = |plan: &GcPlan| -> Vec<(String, GcReason)> {
            plan.evictions
                .iter()
                .map(|e| (format!("{}:{}", e.repo, e.tag), e.reason))
                .collect()
        };
        let swept_log = |plan: &GcPlan| {
            plan.sweep
                .iter()
                .any(|s| s.digest == Digest::of(&[3]) || s.digest == Digest::of(&[13]))
        };
        let now = 10 * HOUR;
        let cases = [
            (
                Policy {
                    all: true,
                    ..Policy::default()
                },
                vec![
                    ("team-a/app:a".to_owned(), GcReason::PruneAll),
                    ("team-a/app:b".to_owned(), GcReason::PruneAll),
                ],
                50,
            ),
            (
                Policy {
                    keep_duration: Some(Duration::from_secs(1800)),
                    ..Policy::default()
                },
                vec![
                    ("team-a/app:a".to_owned(), GcReason::KeepDuration),
                    ("team-a/app:b".to_owned(), GcReason::KeepDuration),
                ],
                50,
            ),
            // The log's 50 bytes count first: of the ceiling's 150 only b fits beside it.
            (
                Policy {
                    keep_storage: Some(150),
                    ..Policy::default()
                },
                vec![("team-a/app:a".to_owned(), GcReason::KeepStorage)],
                150,
            ),
        ];
        for (policy, want, bytes_after) in cases {
            let plan = plan(&g, &policy, Duration::ZERO, now);
            assert_eq!(evicted(&plan), want, "{policy:?}");
            assert!(!swept_log(&plan), "{policy:?}: {:?}", plan.sweep);
            assert_eq!(plan.bytes_after, bytes_after, "{policy:?}");
            assert!(!plan.ceiling_unmet, "{policy:?}");
        }
        // A ceiling below what the logs hold evicts every cache tag and stays unmet.
        let below = Policy {
            keep_storage: Some(40),
            ..Policy::default()
        };
        let plan = plan(&g, &below, Duration::ZERO, now);
        assert_eq!(plan.evictions.len(), 2);
        assert!(!swept_log(&plan));
        assert_eq!(plan.bytes_after, 50);
        assert!(plan.ceiling_unmet);
    }

    #[test]
    fn keep_duration_and_all_evict_by_age_and_entirely() {
        let g = graph(
            vec![node(11, 1, 0, HOUR), node(12, 1, 0, 9 * HOUR)],
            vec![(11, vec![]), (12, vec![])],
            vec![("old", 11), ("new", 12)],
        );
        let by_age = Policy {
            keep_duration: Some(Duration::from_secs(2 * 3600)),
            ..Policy::default()
        };
        let evicted = plan(&g, &by_age, Duration::ZERO, 10 * HOUR).evictions;
        assert_eq!(evicted.len(), 1);
        assert_eq!(
            (evicted[0].tag.as_str(), evicted[0].reason),
            ("old", GcReason::KeepDuration)
        );
        let all = Policy {
            all: true,
            ..Policy::default()
        };
        let plan = plan(&g, &all, Duration::ZERO, 10 * HOUR);
        assert_eq!(plan.evictions.len(), 2);
        assert_eq!(plan.sweep.len(), 2);
        assert_eq!(plan.bytes_after, 0);
    }

    #[test]
    fn leases_hold_until_they_expire_and_referrers_follow_their_subject() {
        let mut nodes = vec![node(1, 10, 0, 0), node(11, 1, 0, 0), node(21, 1, 0, 0)];
        nodes.sort_by_key(|n| n.digest);
        let g = Graph::new(
            nodes,
            [
                ManifestEdges {
                    digest: Digest::of(&[11]),
                    references: vec![Digest::of(&[1])],
                    subject: None,
                },
                ManifestEdges {
                    digest: Digest::of(&[21]),
                    references: vec![],
                    subject: Some(Digest::of(&[11])),
                },
            ],
            Vec::new(),
            vec![Lease {
                name: "build".into(),
                digests: vec![Digest::of(&[11])],
                expires_ms: 5 * HOUR,
            }],
        );
        let held = plan(&g, &Policy::default(), Duration::ZERO, 4 * HOUR);
        assert!(
            held.sweep.is_empty(),
            "lease holds manifest, layer and referrer"
        );
        let expired = plan(&g, &Policy::default(), Duration::ZERO, 6 * HOUR);
        assert_eq!(expired.expired_leases, ["build"]);
        assert_eq!(expired.sweep.len(), 3);
    }
}
