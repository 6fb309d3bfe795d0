//! Online GC: mark over a consistent snapshot, then an audited sweep in small
//! transactions that re-check each candidate against a write barrier (redb and filesystem
//! I/O; the decisions are in [`crate::store::gc`]).
//!
//! Why it is safe beside pushes and pulls (DESIGN invariant 3): while a run is active,
//! every mutation records, inside its own write transaction, the digests it makes
//! reachable (links, tags, manifests' references, leases). redb serialises write
//! transactions, so when a sweep batch holds the write lock every earlier commit's digests
//! are in the barrier; the batch keeps any candidate reachable from them. A digest being
//! written (its flight held) is never swept, and the sweep holds a digest's flight while it
//! removes the row and the file, so an ingest cannot rename a file into place between the
//! two.

use std::collections::BTreeSet;
use std::fs;
use std::time::{Duration, Instant};

use redb::{ReadableTable, WriteTransaction};
use serde::Serialize;

use crate::digest::Digest;
use crate::store::error::{Result, StoreError};
use crate::store::flight::{FlightGuard, lock};
use crate::store::gc::{self, Graph, ManifestEdges, Node, Plan, Policy, Reason};
use crate::store::handle::Store;
use crate::store::tables::{self, BlobRow, LeaseRow, ManifestRow};

/// How to run a GC.
#[derive(Debug, Clone, Serialize)]
pub struct GcOptions {
    /// What may be evicted.
    pub policy: Policy,
    /// Blobs younger than this are roots (default 10 minutes).
    pub grace: Duration,
    /// Report what would be removed, remove nothing.
    pub dry_run: bool,
    /// Items per sweep transaction: small enough that writers never wait long.
    pub batch: usize,
    /// At most this many removals are listed in the report (all are counted and logged).
    pub max_listed: usize,
}

impl Default for GcOptions {
    fn default() -> Self {
        Self {
            policy: Policy::default(),
            grace: Duration::from_secs(600),
            dry_run: false,
            batch: 1024,
            max_listed: 1000,
        }
    }
}

/// What kind of thing a removal removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ItemKind {
    /// A tag (`repo:tag`).
    Tag,
    /// A lease (by name).
    Lease,
    /// A manifest (its blob, row, links and referrer entry).
    Manifest,
    /// A blob (its file, row and links).
    Blob,
}

/// One audited removal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Removal {
    /// What it was.
    pub kind: ItemKind,
    /// `repo:tag`, the lease name, or the digest.
    pub name: String,
    /// Bytes freed (0 for tags and leases).
    pub size: u64,
    /// Why.
    pub reason: Reason,
}

/// What one GC run did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Nothing was removed.
    pub dry_run: bool,
    /// Tags evicted by the policy.
    pub tags_removed: u64,
    /// Expired leases removed.
    pub leases_removed: u64,
    /// Manifests removed.
    pub manifests_removed: u64,
    /// Blobs removed (manifests included).
    pub blobs_removed: u64,
    /// Repository links removed with them.
    pub links_removed: u64,
    /// Bytes freed.
    pub bytes_freed: u64,
    /// Bytes in the store at the mark.
    pub bytes_before: u64,
    /// Bytes left.
    pub bytes_after: u64,
    /// Candidates kept because a concurrent write made them reachable (or was writing them).
    pub kept_by_concurrent_writes: u64,
    /// `keep_storage` could not be met: leases and the grace window hold more.
    pub ceiling_unmet: bool,
    /// The removals, in order, up to the listing limit.
    pub removed: Vec<Removal>,
    /// Removals beyond the listing limit (counted, logged, not listed).
    pub removed_not_listed: u64,
    /// Time spent marking.
    pub mark_ms: u64,
    /// Time spent sweeping.
    pub sweep_ms: u64,
}

impl GcReport {
    /// Counts and audits the removal of an unreachable blob (or manifest).
    fn record_blob(&mut self, digest: Digest, size: u64, is_manifest: bool, limit: usize) {
        self.blobs_removed += 1;
        self.manifests_removed += u64::from(is_manifest);
        self.bytes_freed += size;
        let kind = if is_manifest {
            ItemKind::Manifest
        } else {
            ItemKind::Blob
        };
        self.record(
            Removal {
                kind,
                name: digest.to_string(),
                size,
                reason: Reason::Unreachable,
            },
            limit,
        );
    }

    fn record(&mut self, removal: Removal, limit: usize) {
        match removal.reason {
            Reason::Unreachable => {
                tracing::debug!(kind = ?removal.kind, name = %removal.name, size = removal.size, reason = removal.reason.as_str(), "gc removed")
            }
            _ => {
                tracing::info!(kind = ?removal.kind, name = %removal.name, size = removal.size, reason = removal.reason.as_str(), "gc removed")
            }
        }
        if self.removed.len() < limit {
            self.removed.push(removal);
        } else {
            self.removed_not_listed += 1;
        }
    }
}

/// Loads the metadata a mark needs from one consistent snapshot.
pub(crate) fn load_graph(txn: &redb::ReadTransaction) -> Result<Graph> {
    let action = "read snapshot";
    let blobs = txn
        .open_table(tables::BLOBS)
        .map_err(StoreError::db(action))?;
    let mut nodes = Vec::new();
    for entry in blobs.iter().map_err(StoreError::db(action))? {
        let (key, value) = entry.map_err(StoreError::db(action))?;
        let row = BlobRow::decode(value.value());
        nodes.push(Node {
            digest: tables::digest(key.value()),
            size: row.size,
            created_ms: row.created_ms,
            accessed_ms: row.accessed_ms,
        });
    }
    let manifests_table = txn
        .open_table(tables::MANIFESTS)
        .map_err(StoreError::db(action))?;
    let mut manifests = Vec::new();
    for entry in manifests_table.iter().map_err(StoreError::db(action))? {
        let (key, value) = entry.map_err(StoreError::db(action))?;
        let row: ManifestRow = tables::decode("manifests", value.value())?;
        manifests.push(ManifestEdges {
            digest: tables::digest(key.value()),
            references: row.references,
            subject: row.subject,
        });
    }
    let tags_table = txn
        .open_table(tables::TAGS)
        .map_err(StoreError::db(action))?;
    let mut tags = Vec::new();
    for entry in tags_table.iter().map_err(StoreError::db(action))? {
        let (key, value) = entry.map_err(StoreError::db(action))?;
        let (repo, tag) = key.value();
        tags.push((
            repo.to_owned(),
            tag.to_owned(),
            tables::digest(value.value()),
        ));
    }
    let leases_table = txn
        .open_table(tables::LEASES)
        .map_err(StoreError::db(action))?;
    let mut leases = Vec::new();
    for entry in leases_table.iter().map_err(StoreError::db(action))? {
        let (key, value) = entry.map_err(StoreError::db(action))?;
        let row: LeaseRow = tables::decode("leases", value.value())?;
        leases.push((key.value().to_owned(), row.expires_ms, row.digests));
    }
    Ok(Graph::new(nodes, manifests, tags, leases))
}

/// Clears the barrier when a run ends, however it ends.
struct BarrierOff<'a>(&'a Store);

impl Drop for BarrierOff<'_> {
    fn drop(&mut self) {
        *lock(&self.0.inner.barrier) = None;
    }
}

impl Store {
    /// Runs one GC: flush access times, mark over a snapshot, plan by `options.policy`,
    /// then (unless dry) sweep in batches. One run at a time per store.
    pub fn gc(&self, options: &GcOptions) -> Result<GcReport> {
        let _one_at_a_time = lock(&self.inner.maintenance);
        self.flush_access()?;
        let started = Instant::now();
        let now = self.inner.clock.now_ms();
        // The barrier is on before the snapshot, so nothing committed after it is missed.
        *lock(&self.inner.barrier) = Some(BTreeSet::new());
        let _barrier = BarrierOff(self);
        let snapshot = self.read("read snapshot")?;
        let graph = load_graph(&snapshot)?;
        let plan = gc::plan(&graph, &options.policy, options.grace, now);
        drop(graph);
        // Links of the candidates, from the same snapshot: any link made later records
        // its digest in the barrier, which keeps the candidate.
        let candidates: BTreeSet<Digest> = plan.sweep.iter().map(|s| s.0).collect();
        let mut links_of: std::collections::BTreeMap<Digest, Vec<String>> = Default::default();
        {
            let links = snapshot
                .open_table(tables::LINKS)
                .map_err(StoreError::db("read snapshot"))?;
            for entry in links.iter().map_err(StoreError::db("read snapshot"))? {
                let (key, _) = entry.map_err(StoreError::db("read snapshot"))?;
                let (repo, digest) = key.value();
                let digest = tables::digest(digest);
                if candidates.contains(&digest) {
                    links_of.entry(digest).or_default().push(repo.to_owned());
                }
            }
        }
        drop(snapshot);
        let mut report = GcReport {
            dry_run: options.dry_run,
            bytes_before: plan.bytes_before,
            ceiling_unmet: plan.ceiling_unmet,
            mark_ms: elapsed_ms(started),
            ..GcReport::default()
        };
        let sweep_started = Instant::now();
        if options.dry_run {
            dry_report(&plan, &links_of, options, &mut report);
        } else {
            self.sweep(&plan, &links_of, options, now, &mut report)?;
        }
        report.bytes_after = report.bytes_before.saturating_sub(report.bytes_freed);
        report.sweep_ms = elapsed_ms(sweep_started);
        tracing::info!(
            dry_run = report.dry_run,
            blobs = report.blobs_removed,
            manifests = report.manifests_removed,
            tags = report.tags_removed,
            leases = report.leases_removed,
            bytes_freed = report.bytes_freed,
            kept = report.kept_by_concurrent_writes,
            mark_ms = report.mark_ms,
            sweep_ms = report.sweep_ms,
            "gc finished"
        );
        Ok(report)
    }

    fn sweep(
        &self,
        plan: &Plan,
        links_of: &std::collections::BTreeMap<Digest, Vec<String>>,
        options: &GcOptions,
        now: u64,
        report: &mut GcReport,
    ) -> Result<()> {
        let action = "gc sweep";
        let mut protected = Protected::default();
        // Roots first: evicted tags and expired leases, each re-checked.
        self.write(action, |txn| {
            let mut tags = txn
                .open_table(tables::TAGS)
                .map_err(StoreError::db(action))?;
            for eviction in &plan.evictions {
                let key = (eviction.repo.as_str(), eviction.tag.as_str());
                let current = tags
                    .get(key)
                    .map_err(StoreError::db(action))?
                    .map(|v| tables::digest(v.value()));
                let rewritten = self.barrier_contains(&eviction.digest);
                if current != Some(eviction.digest) || rewritten {
                    // Re-pushed since the mark: it is in use again.
                    protected.add(eviction.digest);
                    report.kept_by_concurrent_writes += 1;
                    continue;
                }
                tags.remove(key).map_err(StoreError::db(action))?;
                report.tags_removed += 1;
                report.record(
                    Removal {
                        kind: ItemKind::Tag,
                        name: format!("{}:{}", eviction.repo, eviction.tag),
                        size: 0,
                        reason: eviction.reason,
                    },
                    options.max_listed,
                );
            }
            let mut leases = txn
                .open_table(tables::LEASES)
                .map_err(StoreError::db(action))?;
            for name in &plan.expired_leases {
                let row: Option<LeaseRow> =
                    match leases.get(name.as_str()).map_err(StoreError::db(action))? {
                        Some(row) => Some(tables::decode("leases", row.value())?),
                        None => None,
                    };
                let Some(row) = row else { continue };
                if row.expires_ms > now {
                    protected.extend(row.digests.iter().copied());
                    continue;
                }
                leases
                    .remove(name.as_str())
                    .map_err(StoreError::db(action))?;
                report.leases_removed += 1;
                report.record(
                    Removal {
                        kind: ItemKind::Lease,
                        name: name.clone(),
                        size: 0,
                        reason: Reason::LeaseExpired,
                    },
                    options.max_listed,
                );
            }
            Ok(())
        })?;

        for batch in plan.sweep.chunks(options.batch.max(1)) {
            let mut guards: Vec<FlightGuard> = Vec::with_capacity(batch.len());
            let mut claimed = Vec::with_capacity(batch.len());
            for &(digest, size, is_manifest) in batch {
                match self.inner.flights.try_claim(digest) {
                    Some(guard) => {
                        guards.push(guard);
                        claimed.push((digest, size, is_manifest));
                    }
                    None => {
                        // Being written right now: an upload in progress is a root.
                        protected.add(digest);
                        report.kept_by_concurrent_writes += 1;
                    }
                }
            }
            let removed = self.write(action, |txn| {
                protected.absorb(self.barrier_snapshot());
                protected.expand(txn)?;
                let mut blobs = txn
                    .open_table(tables::BLOBS)
                    .map_err(StoreError::db(action))?;
                let mut manifests = txn
                    .open_table(tables::MANIFESTS)
                    .map_err(StoreError::db(action))?;
                let mut referrers = txn
                    .open_table(tables::REFERRERS)
                    .map_err(StoreError::db(action))?;
                let mut links = txn
                    .open_table(tables::LINKS)
                    .map_err(StoreError::db(action))?;
                let mut removed = Vec::new();
                for &(digest, size, _) in &claimed {
                    if protected.contains(&digest) {
                        report.kept_by_concurrent_writes += 1;
                        continue;
                    }
                    if blobs
                        .remove(digest.as_bytes())
                        .map_err(StoreError::db(action))?
                        .is_none()
                    {
                        continue;
                    }
                    let manifest: Option<ManifestRow> = match manifests
                        .remove(digest.as_bytes())
                        .map_err(StoreError::db(action))?
                    {
                        Some(row) => Some(tables::decode("manifests", row.value())?),
                        None => None,
                    };
                    if let Some(subject) = manifest.as_ref().and_then(|m| m.subject) {
                        referrers
                            .remove((*subject.as_bytes(), *digest.as_bytes()))
                            .map_err(StoreError::db(action))?;
                    }
                    for repo in links_of.get(&digest).map(Vec::as_slice).unwrap_or(&[]) {
                        if links
                            .remove((repo.as_str(), *digest.as_bytes()))
                            .map_err(StoreError::db(action))?
                            .is_some()
                        {
                            report.links_removed += 1;
                        }
                    }
                    removed.push((digest, size, manifest.is_some()));
                }
                Ok(removed)
            })?;
            // Rows are gone and committed; now the files. A crash in between leaves files
            // without rows, which recovery re-verifies and adopts or deletes.
            for &(digest, size, is_manifest) in &removed {
                let path = self.inner.layout.blob(&digest);
                if let Err(err) = fs::remove_file(&path)
                    && err.kind() != std::io::ErrorKind::NotFound
                {
                    return Err(StoreError::io("remove blob", path)(err));
                }
                report.record_blob(digest, size, is_manifest, options.max_listed);
            }
            drop(guards);
        }
        Ok(())
    }

    fn barrier_contains(&self, digest: &Digest) -> bool {
        lock(&self.inner.barrier)
            .as_ref()
            .is_some_and(|set| set.contains(digest))
    }

    fn barrier_snapshot(&self) -> Vec<Digest> {
        lock(&self.inner.barrier)
            .as_ref()
            .map(|set| set.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// The digests a sweep must keep: the barrier's and everything reachable from them through
/// the manifests as they are now.
#[derive(Default)]
struct Protected {
    set: BTreeSet<Digest>,
    frontier: Vec<Digest>,
}

impl Protected {
    fn add(&mut self, digest: Digest) {
        if self.set.insert(digest) {
            self.frontier.push(digest);
        }
    }

    fn extend(&mut self, digests: impl IntoIterator<Item = Digest>) {
        for digest in digests {
            self.add(digest);
        }
    }

    fn absorb(&mut self, digests: Vec<Digest>) {
        self.extend(digests);
    }

    fn contains(&self, digest: &Digest) -> bool {
        self.set.contains(digest)
    }

    /// Follows references (and referrers) of newly protected manifests, reading the
    /// current rows inside the sweep's write transaction.
    fn expand(&mut self, txn: &WriteTransaction) -> Result<()> {
        let action = "gc sweep";
        if self.frontier.is_empty() {
            return Ok(());
        }
        let manifests = txn
            .open_table(tables::MANIFESTS)
            .map_err(StoreError::db(action))?;
        let referrers = txn
            .open_table(tables::REFERRERS)
            .map_err(StoreError::db(action))?;
        while let Some(digest) = self.frontier.pop() {
            if let Some(row) = manifests
                .get(digest.as_bytes())
                .map_err(StoreError::db(action))?
            {
                let row: ManifestRow = tables::decode("manifests", row.value())?;
                self.extend(row.references);
            }
            let subject = *digest.as_bytes();
            let mut found = Vec::new();
            for entry in referrers
                .range((subject, [0u8; 32])..=(subject, [0xffu8; 32]))
                .map_err(StoreError::db(action))?
            {
                let (key, _) = entry.map_err(StoreError::db(action))?;
                found.push(tables::digest(key.value().1));
            }
            self.extend(found);
        }
        Ok(())
    }
}

fn dry_report(
    plan: &Plan,
    links_of: &std::collections::BTreeMap<Digest, Vec<String>>,
    options: &GcOptions,
    report: &mut GcReport,
) {
    for eviction in &plan.evictions {
        report.tags_removed += 1;
        report.record(
            Removal {
                kind: ItemKind::Tag,
                name: format!("{}:{}", eviction.repo, eviction.tag),
                size: 0,
                reason: eviction.reason,
            },
            options.max_listed,
        );
    }
    for name in &plan.expired_leases {
        report.leases_removed += 1;
        report.record(
            Removal {
                kind: ItemKind::Lease,
                name: name.clone(),
                size: 0,
                reason: Reason::LeaseExpired,
            },
            options.max_listed,
        );
    }
    for &(digest, size, is_manifest) in &plan.sweep {
        report.links_removed += links_of.get(&digest).map_or(0, |l| l.len() as u64);
        report.record_blob(digest, size, is_manifest, options.max_listed);
    }
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}
