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
use std::time::{Duration, Instant};

use redb::{ReadableTable, ReadableTableMetadata, WriteTransaction};
use serde::Serialize;

use crate::oci::digest::{Digest, KEY_MAX};
use crate::store::bases::BASES_MAX_AGE;
use crate::store::error::{Result, StoreError};
use crate::store::flight::{FlightGuard, lock};
use crate::store::gc::{self, GcPlan, GcReason, Graph, ManifestEdges, Node, Policy, SweepItem};
use crate::store::handle::Store;
use crate::store::tables::{self, BlobRow, LeaseRow, ManifestEdgesRow};
use crate::store::types::{Lease, TagEntry};
use crate::store::unlinker::{Doomed, Unlinker};

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
    pub reason: GcReason,
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
    /// `keep_storage` could not be met: leases and pushes in progress hold more.
    pub ceiling_unmet: bool,
    /// Bytes unexpired leases held at the mark.
    pub held_by_leases: u64,
    /// Bytes pushes in progress held at the mark (pushed or checked within the grace
    /// window, reached by no tag).
    pub held_by_pushes: u64,
    /// The removals, in order, up to the listing limit.
    pub removed: Vec<Removal>,
    /// Removals beyond the listing limit (counted, logged, not listed).
    pub removed_not_listed: u64,
    /// Base image records older than [`crate::store::BASES_MAX_AGE`] removed (or, dry,
    /// that would be). Records, not content: no bytes are freed.
    pub bases_expired: u64,
    /// Time spent marking.
    pub mark_ms: u64,
    /// Time spent sweeping.
    pub sweep_ms: u64,
    /// Of the sweep, time inside its write transactions (when writers wait for it).
    pub sweep_writes_ms: u64,
    /// Of the sweep, time waiting at its end for the last files to be unlinked.
    pub unlink_wait_ms: u64,
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
                reason: GcReason::Unreachable,
            },
            limit,
        );
    }

    fn record(&mut self, removal: Removal, limit: usize) {
        match removal.reason {
            GcReason::Unreachable => {
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
    let mut nodes = Vec::with_capacity(
        usize::try_from(blobs.len().map_err(StoreError::db(action))?).unwrap_or(0),
    );
    for entry in blobs.iter().map_err(StoreError::db(action))? {
        let (key, value) = entry.map_err(StoreError::db(action))?;
        let row = BlobRow::decode(value.value());
        nodes.push(Node {
            digest: tables::digest(key.value())?,
            size: row.size,
            created_ms: row.created_ms,
            accessed_ms: row.accessed_ms,
            pushed_ms: row.pushed_ms,
        });
    }
    let manifests_table = txn
        .open_table(tables::MANIFESTS)
        .map_err(StoreError::db(action))?;
    let mut manifests = Vec::new();
    for entry in manifests_table.iter().map_err(StoreError::db(action))? {
        let (key, value) = entry.map_err(StoreError::db(action))?;
        let row: ManifestEdgesRow = tables::decode("manifests", value.value())?;
        manifests.push(ManifestEdges {
            digest: tables::digest(key.value())?,
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
        tags.push(TagEntry {
            repo: repo.to_owned(),
            tag: tag.to_owned(),
            digest: tables::digest(value.value())?,
        });
    }
    let leases_table = txn
        .open_table(tables::LEASES)
        .map_err(StoreError::db(action))?;
    let mut leases = Vec::new();
    for entry in leases_table.iter().map_err(StoreError::db(action))? {
        let (key, value) = entry.map_err(StoreError::db(action))?;
        let row: LeaseRow = tables::decode("leases", value.value())?;
        leases.push(Lease {
            name: key.value().to_owned(),
            digests: row.digests,
            expires_ms: row.expires_ms,
        });
    }
    Ok(Graph::new(nodes, manifests, tags, leases))
}

/// The repository links of the sweep's candidates, read from the mark's snapshot. Links
/// made later need no entry: making one records its digest in the barrier, which keeps the
/// candidate.
#[derive(Debug, Default)]
struct CandidateLinks {
    /// Repository names, each once.
    repos: Vec<String>,
    /// (candidate, index into `repos`), sorted.
    links: Vec<(Digest, u32)>,
}

impl CandidateLinks {
    fn read(txn: &redb::ReadTransaction, plan: &GcPlan) -> Result<Self> {
        let action = "read snapshot";
        let mut candidates: Vec<Digest> = plan.sweep.iter().map(|s| s.digest).collect();
        candidates.sort_unstable();
        let mut out = Self::default();
        if candidates.is_empty() {
            return Ok(out);
        }
        let table = txn
            .open_table(tables::LINKS)
            .map_err(StoreError::db(action))?;
        for entry in table.iter().map_err(StoreError::db(action))? {
            let (key, _) = entry.map_err(StoreError::db(action))?;
            let (repo, digest) = key.value();
            let digest = tables::digest(digest)?;
            if candidates.binary_search(&digest).is_err() {
                continue;
            }
            // Links are sorted by repository: a new name is always the last one seen.
            if out.repos.last().is_none_or(|last| last != repo) {
                out.repos.push(repo.to_owned());
            }
            let index = u32::try_from(out.repos.len() - 1).unwrap_or(u32::MAX);
            out.links.push((digest, index));
        }
        out.links.sort_unstable();
        Ok(out)
    }

    /// The repositories `digest` is linked into.
    fn of(&self, digest: &Digest) -> impl Iterator<Item = &str> {
        let from = self.links.partition_point(|(d, _)| d < digest);
        self.links[from..]
            .iter()
            .take_while(move |(d, _)| d == digest)
            .map(|&(_, repo)| self.repos[repo as usize].as_str())
    }
}

/// Clears the barrier when a run ends, however it ends.
struct BarrierOff<'a>(&'a Store);

impl Drop for BarrierOff<'_> {
    fn drop(&mut self) {
        *lock(&self.0.inner.barrier) = None;
    }
}

/// Threads that unlink swept files while the next batch's transaction runs. An unlink of
/// a file at rest frees its blocks and often waits for the disk. Measured on 2 shared
/// cores with files synced before the GC: at 200,000 blobs (60,000 swept) the sweep took
/// 5.0 s with 4 threads, 2.5 s with 16, 2.7 s with 32; at 1,000,000 (300,000 swept)
/// 27.9 s with 4 and 30.1 s with 16, and 16 more than doubled the concurrent writer's
/// worst stall (journal contention). Four it stays.
const UNLINK_THREADS: usize = 4;
/// Below this many candidates the sweep unlinks on its own thread: starting threads would
/// cost more than they save.
const UNLINK_THREADS_FROM: usize = 256;
/// Sweep batches are committed without fsync, and every this many a batch is durable (so
/// is the last): the fsync was half of a batch's time, and writers wait for batches.
const DURABLE_EVERY: usize = 8;

impl Store {
    /// Runs one GC: flush access times, mark over a snapshot, plan by `options.policy`,
    /// then (unless dry) sweep in batches. One run at a time per store.
    pub fn gc(&self, options: &GcOptions) -> Result<GcReport> {
        let _one_at_a_time = lock(&self.inner.maintenance);
        self.flush_access()?;
        let started = Instant::now();
        let now = self.inner.clock.now_ms();
        // First, in a transaction of its own: these rows reach no content, so the mark
        // need not see them, and a failure here leaves the content untouched.
        let bases_expired = self.expire_bases(now, BASES_MAX_AGE, options.dry_run)?;
        // The barrier is on before the snapshot, so nothing committed after it is missed.
        *lock(&self.inner.barrier) = Some(Vec::new());
        let _barrier = BarrierOff(self);
        // A transaction that checked the barrier before it was on may still be committing:
        // wait for it (taking the write lock does), so that its changes are in the snapshot.
        self.inner
            .db
            .begin_write()
            .and_then(|txn| txn.abort().map_err(redb::TransactionError::from))
            .map_err(StoreError::db("wait for writers"))?;
        let snapshot = self.read("read snapshot")?;
        let loading = Instant::now();
        let graph = load_graph(&snapshot)?;
        let planning = Instant::now();
        let plan = gc::plan(&graph, &options.policy, options.grace, now);
        let reading_links = Instant::now();
        drop(graph);
        let links = CandidateLinks::read(&snapshot, &plan)?;
        drop(snapshot);
        tracing::debug!(
            wait_ms = duration_ms(loading - started),
            load_ms = duration_ms(planning - loading),
            plan_ms = duration_ms(reading_links - planning),
            links_ms = elapsed_ms(reading_links),
            candidates = plan.sweep.len(),
            "gc marked"
        );
        let mut report = GcReport {
            dry_run: options.dry_run,
            bytes_before: plan.bytes_before,
            ceiling_unmet: plan.ceiling_unmet,
            held_by_leases: plan.held_by_leases,
            held_by_pushes: plan.held_by_pushes,
            mark_ms: elapsed_ms(started),
            bases_expired,
            ..GcReport::default()
        };
        let sweep_started = Instant::now();
        if options.dry_run {
            dry_report(&plan, &links, options, &mut report);
        } else {
            self.sweep(&plan, &links, options, now, &mut report)?;
        }
        report.bytes_after = report.bytes_before.saturating_sub(report.bytes_freed);
        report.sweep_ms = elapsed_ms(sweep_started);
        tracing::info!(
            dry_run = report.dry_run,
            blobs = report.blobs_removed,
            manifests = report.manifests_removed,
            tags = report.tags_removed,
            leases = report.leases_removed,
            bases = report.bases_expired,
            bytes_freed = report.bytes_freed,
            kept = report.kept_by_concurrent_writes,
            mark_ms = report.mark_ms,
            sweep_ms = report.sweep_ms,
            "gc finished"
        );
        Ok(report)
    }

    /// Removes what `plan` chose, re-checking every choice against what concurrent writes
    /// did since the mark: roots first, then blobs in batches.
    fn sweep(
        &self,
        plan: &GcPlan,
        links: &CandidateLinks,
        options: &GcOptions,
        now: u64,
        report: &mut GcReport,
    ) -> Result<()> {
        let mut protected = Protected::default();
        self.remove_roots(plan, options, now, &mut protected, report)?;
        let unlinker = Unlinker::start(if plan.sweep.len() < UNLINK_THREADS_FROM {
            0
        } else {
            UNLINK_THREADS
        });
        let mut in_writes = Duration::ZERO;
        // Files whose rows are gone in a commit that is not durable yet: a crash would
        // bring the rows back, so the files wait (with their flights) for a durable one.
        // The last batch is durable; if a batch fails, these files stay, with or without
        // their rows, for the next GC or recovery.
        let mut not_durable: Vec<Doomed> = Vec::new();
        let batches = plan.sweep.chunks(options.batch.max(1));
        let last = batches.len();
        for (n, batch) in batches.enumerate() {
            let durable = (n + 1) % DURABLE_EVERY == 0 || n + 1 == last;
            let mut claimed = Vec::with_capacity(batch.len());
            for item in batch {
                match self.inner.flights.try_claim(item.digest) {
                    Some(guard) => claimed.push((*item, guard)),
                    None => {
                        // Being written right now: an upload in progress is a root.
                        protected.add(item.digest);
                        report.kept_by_concurrent_writes += 1;
                    }
                }
            }
            let writing = Instant::now();
            let body = |txn: &WriteTransaction| {
                self.remove_batch(txn, claimed, links, &mut protected, report)
            };
            let removed = if durable {
                self.write("gc sweep", body)?
            } else {
                self.write_lazy("gc sweep", body)?
            };
            in_writes += writing.elapsed();
            for (item, guard) in removed {
                report.record_blob(item.digest, item.size, item.manifest, options.max_listed);
                not_durable.push((self.inner.layout.blob(&item.digest), guard));
            }
            if durable {
                // The rows are gone for good; the files go on the unlinker's threads, each
                // with its digest's flight, while the next batches run.
                unlinker.remove(std::mem::take(&mut not_durable))?;
            }
        }
        let waiting = Instant::now();
        let finished = unlinker.finish();
        report.sweep_writes_ms = duration_ms(in_writes);
        report.unlink_wait_ms = elapsed_ms(waiting);
        finished
    }

    /// Removes the evicted tags and expired leases, each re-checked: a tag re-pushed or a
    /// lease renewed since the mark stays, and what it holds is protected.
    fn remove_roots(
        &self,
        plan: &GcPlan,
        options: &GcOptions,
        now: u64,
        protected: &mut Protected,
        report: &mut GcReport,
    ) -> Result<()> {
        let action = "gc sweep";
        self.write(action, |txn| {
            protected.absorb(self.barrier_drain());
            let mut tags = txn
                .open_table(tables::TAGS)
                .map_err(StoreError::db(action))?;
            for eviction in &plan.evictions {
                let key = (eviction.repo.as_str(), eviction.tag.as_str());
                let current = tags
                    .get(key)
                    .map_err(StoreError::db(action))?
                    .map(|v| tables::digest(v.value()))
                    .transpose()?;
                if current != Some(eviction.digest) || protected.contains(&eviction.digest) {
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
                        reason: GcReason::LeaseExpired,
                    },
                    options.max_listed,
                );
            }
            Ok(())
        })
    }

    /// One batch's transaction: the rows of every claimed blob that nothing made reachable
    /// since the mark (its blob row, manifest row, referrer entry and links). Returns what
    /// it removed, with the flights that keep the files until they are unlinked; the
    /// flights of what it kept are released.
    fn remove_batch(
        &self,
        txn: &WriteTransaction,
        mut claimed: Vec<(SweepItem, FlightGuard)>,
        links: &CandidateLinks,
        protected: &mut Protected,
        report: &mut GcReport,
    ) -> Result<Vec<(SweepItem, FlightGuard)>> {
        let action = "gc sweep";
        protected.absorb(self.barrier_drain());
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
        let mut links_table = txn
            .open_table(tables::LINKS)
            .map_err(StoreError::db(action))?;
        let mut removed = Vec::with_capacity(claimed.len());
        for (item, guard) in claimed.drain(..) {
            let digest = item.digest;
            if protected.contains(&digest) {
                report.kept_by_concurrent_writes += 1;
                continue;
            }
            if blobs
                .remove(digest.to_key().as_slice())
                .map_err(StoreError::db(action))?
                .is_none()
            {
                continue;
            }
            let manifest: Option<ManifestEdgesRow> = match manifests
                .remove(digest.to_key().as_slice())
                .map_err(StoreError::db(action))?
            {
                Some(row) => Some(tables::decode("manifests", row.value())?),
                None => None,
            };
            if let Some(subject) = manifest.as_ref().and_then(|m| m.subject) {
                referrers
                    .remove((subject.to_key().as_slice(), digest.to_key().as_slice()))
                    .map_err(StoreError::db(action))?;
            }
            for repo in links.of(&digest) {
                if links_table
                    .remove((repo, digest.to_key().as_slice()))
                    .map_err(StoreError::db(action))?
                    .is_some()
                {
                    report.links_removed += 1;
                }
            }
            let manifest = manifest.is_some();
            removed.push((SweepItem { manifest, ..item }, guard));
        }
        Ok(removed)
    }

    /// Takes the digests recorded by the barrier since the last call.
    fn barrier_drain(&self) -> Vec<Digest> {
        lock(&self.inner.barrier)
            .as_mut()
            .map(std::mem::take)
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
                .get(digest.to_key().as_slice())
                .map_err(StoreError::db(action))?
            {
                let row: ManifestEdgesRow = tables::decode("manifests", row.value())?;
                self.extend(row.references);
            }
            let subject = digest.to_key();
            let mut found = Vec::new();
            for entry in referrers
                .range((subject.as_slice(), &[][..])..=(subject.as_slice(), &KEY_MAX[..]))
                .map_err(StoreError::db(action))?
            {
                let (key, _) = entry.map_err(StoreError::db(action))?;
                found.push(tables::digest(key.value().1)?);
            }
            self.extend(found);
        }
        Ok(())
    }
}

fn dry_report(plan: &GcPlan, links: &CandidateLinks, options: &GcOptions, report: &mut GcReport) {
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
                reason: GcReason::LeaseExpired,
            },
            options.max_listed,
        );
    }
    for &SweepItem {
        digest,
        size,
        manifest: is_manifest,
    } in &plan.sweep
    {
        report.links_removed += links.of(&digest).count() as u64;
        report.record_blob(digest, size, is_manifest, options.max_listed);
    }
}

fn elapsed_ms(since: Instant) -> u64 {
    duration_ms(since.elapsed())
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
