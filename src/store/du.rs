//! Disk usage: totals and per-tag roots, in the style of `buildctl du` (redb reads; the
//! arithmetic is over the GC graph).

use std::collections::BTreeSet;

use serde::Serialize;

use crate::oci::digest::Digest;
use crate::store::error::Result;
use crate::store::gc::{Graph, is_logs_repository};
use crate::store::handle::Store;
use crate::store::sweep::load_graph;

/// One root (a tag) and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DuRoot {
    /// The manifest's short digest (12 hex characters), as buildctl shows record ids.
    pub id: String,
    /// The manifest's digest.
    pub digest: Digest,
    /// The repository.
    pub repo: String,
    /// The tag.
    pub tag: String,
    /// Bytes reachable from it (shared bytes counted in every root that reaches them).
    pub size: u64,
    /// Whether `prune` may remove it (false while a lease holds it, and for the tags of
    /// logs repositories, which no prune evicts).
    pub reclaimable: bool,
    /// When its manifest was last used (ms after the epoch).
    pub last_accessed_ms: u64,
}

/// The store's disk usage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DiskUsage {
    /// Bytes of every blob (manifests included).
    pub total_bytes: u64,
    /// Bytes `prune --all` would free now: everything no lease and no stored build log
    /// holds.
    pub reclaimable_bytes: u64,
    /// Blob rows.
    pub blobs: u64,
    /// Manifest rows.
    pub manifests: u64,
    /// Tags.
    pub tags: u64,
    /// Repositories.
    pub repositories: u64,
    /// Leases (expired ones included until GC removes them).
    pub leases: u64,
    /// Uploads in progress.
    pub uploads: u64,
    /// Bytes reachable from no tag and no lease.
    pub unreferenced_bytes: u64,
    /// Per tag, by (repository, tag).
    pub roots: Vec<DuRoot>,
}

impl Store {
    /// Computes disk usage over one snapshot (pending access times are written first).
    pub fn du(&self) -> Result<DiskUsage> {
        self.flush_access()?;
        let now = self.inner.clock.now_ms();
        let txn = self.read("disk usage")?;
        let graph = load_graph(&txn)?;
        drop(txn);
        let mut held_marks = vec![false; graph.nodes.len()];
        // Stored build logs are held like leased content: no prune evicts their tags.
        let held_roots: Vec<u32> = graph
            .leases
            .iter()
            .filter(|lease| lease.expires_ms > now)
            .flat_map(|lease| lease.at.iter().copied())
            .chain(
                graph
                    .tags
                    .iter()
                    .filter(|root| is_logs_repository(&root.repo))
                    .map(|root| root.at),
            )
            .collect();
        graph.mark(&mut held_marks, held_roots);
        let held: u64 = sum_marked(&graph, &held_marks);
        let mut referenced = held_marks.clone();
        let mut roots = Vec::new();
        for root in &graph.tags {
            let node = graph.nodes[root.at as usize];
            roots.push(DuRoot {
                id: node.digest.short(),
                digest: node.digest,
                repo: root.repo.clone(),
                tag: root.tag.clone(),
                size: reach_size(&graph, root.at),
                reclaimable: !held_marks[root.at as usize],
                last_accessed_ms: node.accessed_ms,
            });
            graph.mark(&mut referenced, [root.at]);
        }
        let total = graph.total();
        let manifests = (0..graph.nodes.len())
            .filter(|&at| u32::try_from(at).is_ok_and(|at| graph.is_manifest(at)))
            .count() as u64;
        Ok(DiskUsage {
            total_bytes: total,
            reclaimable_bytes: total - held,
            blobs: graph.nodes.len() as u64,
            manifests,
            tags: graph.tags.len() as u64,
            repositories: self.repositories(None, None)?.len() as u64,
            leases: graph.leases.len() as u64,
            uploads: self.uploads().len() as u64,
            unreferenced_bytes: total - sum_marked(&graph, &referenced),
            roots,
        })
    }
}

fn sum_marked(graph: &Graph, marks: &[bool]) -> u64 {
    graph
        .nodes
        .iter()
        .zip(marks)
        .filter(|(_, marked)| **marked)
        .map(|(node, _)| node.size)
        .sum()
}

/// Bytes reachable from one node, without a mark vector the size of the store.
fn reach_size(graph: &Graph, from: u32) -> u64 {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from];
    let mut size = 0;
    while let Some(at) = stack.pop() {
        if !seen.insert(at) {
            continue;
        }
        size += graph.nodes[at as usize].size;
        stack.extend(graph.children(at));
    }
    size
}
