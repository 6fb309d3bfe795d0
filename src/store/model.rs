//! An in-memory model of the store: the same contract in the plainest code (BTreeMaps, a
//! naive fixpoint mark, evict-one-and-recompute policies), for the contract suite and the
//! model-based property test to compare against (pure; test-only).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use crate::oci::digest::Digest;
use crate::oci::name::{Reference, RepoName, Tag};
use crate::store::clock::{StoreClock, millis};
use crate::store::error::{Result, StoreError};
use crate::store::flight::lock;
use crate::store::manifest;
use crate::store::storage::Storage;
use crate::store::sweep::{GcOptions, GcReport};
use crate::store::types::{
    BlobEntry, BlobInfo, Lease, LeaseTarget, LinkEntry, Listing, ManifestInfo,
    RemovedFromRepository, TagEntry, validate_repo,
};

#[derive(Debug, Default, Clone)]
struct State {
    blobs: BTreeMap<Digest, BlobEntry>,
    manifests: BTreeMap<Digest, ManifestInfo>,
    tags: BTreeMap<(String, String), Digest>,
    links: BTreeSet<(String, Digest)>,
    leases: BTreeMap<String, Lease>,
    pending: BTreeMap<Digest, u64>,
}

/// The model store.
#[derive(Debug)]
pub(crate) struct Model {
    state: Mutex<State>,
    clock: StoreClock,
}

impl Model {
    pub(crate) fn new(clock: StoreClock) -> Self {
        Self {
            state: Mutex::default(),
            clock,
        }
    }

    /// What a crash loses: access times not yet written.
    pub(crate) fn crash(&self) {
        lock(&self.state).pending.clear();
    }

    /// Recovery adopts a valid blob file that had no row.
    pub(crate) fn adopt(&self, bytes: &[u8]) {
        let now = self.clock.now_ms();
        let mut state = lock(&self.state);
        let digest = Digest::of(bytes);
        state.blobs.entry(digest).or_insert(BlobEntry {
            digest,
            size: bytes.len() as u64,
            created_ms: now,
            accessed_ms: now,
            pushed_ms: now,
        });
    }

    fn flush(state: &mut State) {
        for (digest, at) in std::mem::take(&mut state.pending) {
            if let Some(blob) = state.blobs.get_mut(&digest) {
                blob.accessed_ms = blob.accessed_ms.max(at);
            }
        }
    }

    fn insert_blob(&self, state: &mut State, repo: &str, bytes: &[u8]) -> BlobInfo {
        let now = self.clock.now_ms();
        let digest = Digest::of(bytes);
        let blob = state.blobs.entry(digest).or_insert(BlobEntry {
            digest,
            size: bytes.len() as u64,
            created_ms: now,
            accessed_ms: now,
            pushed_ms: now,
        });
        blob.accessed_ms = blob.accessed_ms.max(now);
        blob.pushed_ms = blob.pushed_ms.max(now);
        state.links.insert((repo.to_owned(), digest));
        BlobInfo {
            digest,
            size: bytes.len() as u64,
        }
    }
}

/// Everything reachable from `roots` through references and referrers.
fn reach(state: &State, roots: impl IntoIterator<Item = Digest>) -> BTreeSet<Digest> {
    let mut set: BTreeSet<Digest> = roots
        .into_iter()
        .filter(|d| state.blobs.contains_key(d))
        .collect();
    loop {
        let mut next = set.clone();
        for manifest in state.manifests.values() {
            if set.contains(&manifest.digest) {
                next.extend(
                    manifest
                        .references
                        .iter()
                        .filter(|d| state.blobs.contains_key(d)),
                );
            }
            if manifest.subject.is_some_and(|s| set.contains(&s)) {
                next.insert(manifest.digest);
            }
        }
        if next == set {
            return set;
        }
        set = next;
    }
}

fn size(state: &State, set: &BTreeSet<Digest>) -> u64 {
    set.iter().map(|d| state.blobs[d].size).sum()
}

impl Storage for Model {
    fn put_blob(&self, repo: &str, bytes: &[u8]) -> Result<BlobInfo> {
        validate_repo(repo)?;
        let mut state = lock(&self.state);
        Ok(self.insert_blob(&mut state, repo, bytes))
    }

    fn put_manifest(
        &self,
        repo: &str,
        reference: &Reference,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<ManifestInfo> {
        validate_repo(repo)?;
        let parsed = manifest::parse(bytes)?;
        let digest = Digest::of(bytes);
        if let Reference::Digest(expected) = reference
            && *expected != digest
        {
            return Err(StoreError::digest_mismatch(*expected, digest));
        }
        let mut state = lock(&self.state);
        for reference in parsed
            .references
            .iter()
            .filter(|d| !parsed.external.contains(d))
        {
            if !state.links.contains(&(repo.to_owned(), *reference))
                || !state.blobs.contains_key(reference)
            {
                return Err(StoreError::ReferenceMissing {
                    repo: repo.to_owned(),
                    digest: *reference,
                });
            }
        }
        let blob = self.insert_blob(&mut state, repo, bytes);
        let info = ManifestInfo {
            digest,
            media_type: if media_type.is_empty() {
                parsed.media_type.unwrap_or_default()
            } else {
                media_type.to_owned()
            },
            size: blob.size,
            references: parsed.references,
            subject: parsed.subject,
            artifact_type: parsed.artifact_type,
            annotations: parsed.annotations,
            on_demand: false,
            external: parsed.external,
        };
        state.manifests.insert(digest, info.clone());
        if let Reference::Tag(tag) = reference {
            state
                .tags
                .insert((repo.to_owned(), tag.to_string()), digest);
        }
        Ok(info)
    }

    fn manifest(&self, repo: &str, reference: &Reference) -> Result<Option<ManifestInfo>> {
        let state = lock(&self.state);
        let digest = match reference {
            Reference::Digest(d) => *d,
            Reference::Tag(tag) => match state.tags.get(&(repo.to_owned(), tag.to_string())) {
                Some(d) => *d,
                None => return Ok(None),
            },
        };
        if !state.links.contains(&(repo.to_owned(), digest)) {
            return Ok(None);
        }
        Ok(state.manifests.get(&digest).cloned())
    }

    fn mount(&self, from: &str, to: &str, digest: Digest) -> Result<bool> {
        validate_repo(to)?;
        let mut state = lock(&self.state);
        if !state.links.contains(&(from.to_owned(), digest)) || !state.blobs.contains_key(&digest) {
            return Ok(false);
        }
        state.links.insert((to.to_owned(), digest));
        let now = self.clock.now_ms();
        if let Some(blob) = state.blobs.get_mut(&digest) {
            blob.pushed_ms = blob.pushed_ms.max(now);
        }
        Ok(true)
    }

    fn untag(&self, repo: &str, tag: &str) -> Result<bool> {
        let mut state = lock(&self.state);
        Ok(state
            .tags
            .remove(&(repo.to_owned(), tag.to_owned()))
            .is_some())
    }

    fn unlink(&self, repo: &str, digest: Digest) -> Result<bool> {
        let mut state = lock(&self.state);
        let removed = state.links.remove(&(repo.to_owned(), digest));
        state
            .tags
            .retain(|(tag_repo, _), target| !(tag_repo == repo && *target == digest));
        Ok(removed)
    }

    fn delete_repository(&self, repo: &str) -> Result<RemovedFromRepository> {
        let mut state = lock(&self.state);
        let tags_before = state.tags.len();
        state.tags.retain(|(tag_repo, _), _| tag_repo != repo);
        let links_before = state.links.len();
        let manifests = state
            .links
            .iter()
            .filter(|(link_repo, digest)| link_repo == repo && state.manifests.contains_key(digest))
            .count() as u64;
        state.links.retain(|(link_repo, _)| link_repo != repo);
        Ok(RemovedFromRepository {
            tags: (tags_before - state.tags.len()) as u64,
            links: (links_before - state.links.len()) as u64,
            manifests,
        })
    }

    fn touch(&self, digest: Digest) {
        let now = self.clock.now_ms();
        let mut state = lock(&self.state);
        let at = state.pending.entry(digest).or_insert(now);
        *at = (*at).max(now);
    }

    fn lease_acquire(&self, name: &str, targets: &[LeaseTarget], ttl: Duration) -> Result<Lease> {
        if name.is_empty() {
            return Err(StoreError::NameInvalid {
                what: "lease name",
                value: String::new(),
                reason: "empty".into(),
            });
        }
        let mut state = lock(&self.state);
        let mut digests = BTreeSet::new();
        for target in targets {
            match target {
                LeaseTarget::Digest { digest: d } => {
                    if !state.blobs.contains_key(d) {
                        return Err(StoreError::LeaseTargetMissing {
                            name: name.to_owned(),
                            digest: *d,
                        });
                    }
                    digests.insert(*d);
                }
                LeaseTarget::Tag {
                    repository: repo,
                    tag,
                } => {
                    if let Some(d) = state.tags.get(&(repo.to_string(), tag.to_string())) {
                        digests.insert(*d);
                    }
                }
            }
        }
        let lease = Lease {
            name: name.to_owned(),
            digests: digests.into_iter().collect(),
            expires_ms: self.clock.now_ms().saturating_add(millis(ttl)),
        };
        state.leases.insert(name.to_owned(), lease.clone());
        Ok(lease)
    }

    fn lease_release(&self, name: &str) -> Result<bool> {
        Ok(lock(&self.state).leases.remove(name).is_some())
    }

    fn gc(&self, options: &GcOptions) -> Result<GcReport> {
        let now = self.clock.now_ms();
        let mut guard = lock(&self.state);
        Self::flush(&mut guard);
        let mut state = guard.clone();
        let mut report = GcReport {
            dry_run: options.dry_run,
            bytes_before: state.blobs.values().map(|b| b.size).sum(),
            ..GcReport::default()
        };
        let expired: Vec<String> = state
            .leases
            .values()
            .filter(|l| l.expires_ms <= now)
            .map(|l| l.name.clone())
            .collect();
        for name in &expired {
            state.leases.remove(name);
        }
        report.leases_removed = expired.len() as u64;
        let grace = millis(options.grace);
        // A push in progress: pushed, mounted or checked within the window, and reached by
        // no tag (a tag's content lives and dies with the tag).
        // A push in progress: pushed, mounted or checked within the window, and later than
        // every tagged manifest that reaches it (what an image brought lives and dies with
        // its tag).
        let covered = |digest: &Digest| {
            state
                .tags
                .values()
                .filter(|m| reach(&state, [**m]).contains(digest))
                .map(|m| state.blobs[m].pushed_ms)
                .max()
        };
        let pinned: Vec<Digest> = state
            .leases
            .values()
            .flat_map(|l| l.digests.iter().copied())
            .chain(
                state
                    .blobs
                    .values()
                    .filter(|b| {
                        b.pushed_ms.saturating_add(grace) > now
                            && covered(&b.digest).is_none_or(|t| b.pushed_ms > t)
                    })
                    .map(|b| b.digest),
            )
            .collect();
        let policy = &options.policy;
        // Oldest first; among equals, the (repository, tag) that sorts last goes first.
        let mut kept: Vec<((String, String), Digest)> =
            state.tags.iter().map(|(k, d)| (k.clone(), *d)).collect();
        kept.sort_by(|a, b| {
            let used = |d: &Digest| state.blobs[d].accessed_ms;
            used(&a.1).cmp(&used(&b.1)).then_with(|| b.0.cmp(&a.0))
        });
        let mut evicted = Vec::new();
        kept.retain(|(key, digest)| {
            let old = policy.keep_duration.is_some_and(|keep| {
                state.blobs[digest].accessed_ms.saturating_add(millis(keep)) < now
            });
            if policy.all || old {
                evicted.push(key.clone());
                false
            } else {
                true
            }
        });
        if let Some(ceiling) = policy.keep_storage {
            loop {
                let live = reach(
                    &state,
                    pinned.iter().copied().chain(kept.iter().map(|k| k.1)),
                );
                if size(&state, &live) <= ceiling || kept.is_empty() {
                    report.ceiling_unmet = size(&state, &live) > ceiling;
                    break;
                }
                evicted.push(kept.remove(0).0);
            }
        }
        report.tags_removed = evicted.len() as u64;
        for key in &evicted {
            state.tags.remove(key);
        }
        let live = reach(
            &state,
            pinned.iter().copied().chain(kept.iter().map(|k| k.1)),
        );
        let dead: Vec<Digest> = state
            .blobs
            .keys()
            .filter(|d| !live.contains(d))
            .copied()
            .collect();
        for digest in &dead {
            report.blobs_removed += 1;
            report.bytes_freed += state.blobs[digest].size;
            if state.manifests.remove(digest).is_some() {
                report.manifests_removed += 1;
            }
            state.blobs.remove(digest);
            let before = state.links.len();
            state.links.retain(|(_, d)| d != digest);
            report.links_removed += (before - state.links.len()) as u64;
        }
        report.bytes_after = report.bytes_before - report.bytes_freed;
        if !options.dry_run {
            *guard = state;
        }
        Ok(report)
    }

    fn listing(&self) -> Result<Listing> {
        let mut state = lock(&self.state);
        Self::flush(&mut state);
        let mut referrers: Vec<(Digest, Digest)> = state
            .manifests
            .values()
            .filter_map(|m| m.subject.map(|s| (s, m.digest)))
            .collect();
        referrers.sort();
        Ok(Listing {
            blobs: state.blobs.values().copied().collect(),
            manifests: state.manifests.values().cloned().collect(),
            tags: state
                .tags
                .iter()
                .map(|((repo, tag), digest)| TagEntry {
                    repo: repo.clone(),
                    tag: tag.clone(),
                    digest: *digest,
                })
                .collect(),
            links: state
                .links
                .iter()
                .map(|(repo, digest)| LinkEntry {
                    repo: repo.clone(),
                    digest: *digest,
                })
                .collect(),
            referrers,
            leases: state.leases.values().cloned().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    //! The model-based property test: random interleavings of every operation (crashes
    //! included) against the redb store and the model, comparing results and full
    //! listings, and checking DESIGN's invariants with `verify` after every step.

    use super::*;
    use crate::store::fixtures::{image_manifest, index_manifest, referrer_manifest};
    use crate::store::gc::Policy;
    use crate::store::handle::{Store, StoreOptions};
    use crate::store::verify::VerifyOptions;
    use proptest::prelude::*;

    const REPOS: [&str; 3] = ["a", "b", "team/c"];
    const TAGS: [&str; 3] = ["v1", "v2", "latest"];
    const MINUTE_MS: u64 = 60_000;

    fn content(n: u8) -> Vec<u8> {
        vec![b'a' + n; usize::from(n) * 7 + 1]
    }

    /// Image manifest `k`: a config and two layers chosen from the content universe.
    fn image(k: u8) -> Vec<u8> {
        let blob = |n: u8| (Digest::of(&content(n)), content(n).len() as u64);
        image_manifest(blob((k + 5) % 8), &[blob(k % 8), blob((k * 3 + 1) % 8)])
    }

    fn index(j: u8) -> Vec<u8> {
        let m = |k: u8| (Digest::of(&image(k)), image(k).len() as u64);
        index_manifest(&[m(j), m(j + 2)])
    }

    fn referrer(r: u8) -> Vec<u8> {
        let config = content(7);
        referrer_manifest(
            Digest::of(&image(r)),
            (Digest::of(&config), config.len() as u64),
            "application/x-sig",
        )
    }

    #[derive(Debug, Clone)]
    enum Debris {
        None,
        Temp,
        Orphan(u8),
        Truncated(u8),
    }

    #[derive(Debug, Clone)]
    enum Op {
        PutBlob(usize, u8),
        PutImage(usize, u8, Option<usize>),
        PutIndex(usize, u8, Option<usize>),
        PutReferrer(usize, u8),
        Untag(usize, usize),
        UnlinkImage(usize, u8),
        Mount(usize, usize, u8),
        DeleteRepo(usize),
        TouchImage(u8),
        LeaseTag(u8, usize, usize, u8),
        Release(u8),
        Advance(u8),
        Gc(u8, u64, u8, bool),
        Crash(Debris),
    }

    fn op() -> impl Strategy<Value = Op> {
        let repo = 0..REPOS.len();
        let tag = proptest::option::of(0..TAGS.len());
        prop_oneof![
            4 => (repo.clone(), 0u8..8).prop_map(|(r, c)| Op::PutBlob(r, c)),
            4 => (repo.clone(), 0u8..6, tag.clone()).prop_map(|(r, k, t)| Op::PutImage(r, k, t)),
            2 => (repo.clone(), 0u8..3, tag).prop_map(|(r, j, t)| Op::PutIndex(r, j, t)),
            1 => (repo.clone(), 0u8..6).prop_map(|(r, k)| Op::PutReferrer(r, k)),
            2 => (repo.clone(), 0..TAGS.len()).prop_map(|(r, t)| Op::Untag(r, t)),
            1 => (repo.clone(), 0u8..6).prop_map(|(r, k)| Op::UnlinkImage(r, k)),
            2 => (repo.clone(), repo.clone(), 0u8..8).prop_map(|(f, t, c)| Op::Mount(f, t, c)),
            1 => repo.clone().prop_map(Op::DeleteRepo),
            1 => (0u8..6).prop_map(Op::TouchImage),
            1 => (0u8..2, repo, 0..TAGS.len(), 1u8..30)
                .prop_map(|(n, r, t, ttl)| Op::LeaseTag(n, r, t, ttl)),
            1 => (0u8..2).prop_map(Op::Release),
            2 => (0u8..20).prop_map(Op::Advance),
            2 => (0u8..4, 0u64..400, 0u8..20, any::<bool>())
                .prop_map(|(p, ceiling, mins, dry)| Op::Gc(p, ceiling, mins, dry)),
            1 => prop_oneof![
                Just(Debris::None),
                Just(Debris::Temp),
                (0u8..8).prop_map(Debris::Orphan),
                (0u8..8).prop_map(Debris::Truncated),
            ]
            .prop_map(Op::Crash),
        ]
    }

    /// Results compared between the two: values, or the error's message.
    fn outcome<T: std::fmt::Debug>(result: Result<T>) -> String {
        match result {
            Ok(value) => format!("ok {value:?}"),
            Err(err) => format!("err {err}"),
        }
    }

    fn gc_options(policy: u8, ceiling: u64, minutes: u8, dry_run: bool) -> GcOptions {
        let policy = match policy {
            0 => Policy::default(),
            1 => Policy {
                all: true,
                ..Policy::default()
            },
            2 => Policy {
                keep_storage: Some(ceiling),
                ..Policy::default()
            },
            _ => Policy {
                keep_duration: Some(Duration::from_secs(u64::from(minutes) * 60)),
                ..Policy::default()
            },
        };
        GcOptions {
            policy,
            grace: Duration::from_secs(5 * 60),
            dry_run,
            batch: 3,
            ..GcOptions::default()
        }
    }

    /// Report fields that both sides must agree on (timings and listings aside).
    fn summary(report: &GcReport) -> [u64; 8] {
        [
            report.tags_removed,
            report.leases_removed,
            report.manifests_removed,
            report.blobs_removed,
            report.links_removed,
            report.bytes_freed,
            report.bytes_before,
            u64::from(report.ceiling_unmet),
        ]
    }

    fn run(ops: &[Op]) -> std::result::Result<(), TestCaseError> {
        let dir = tempfile::tempdir().unwrap();
        let clock = StoreClock::manual(10 * 24 * 60 * MINUTE_MS);
        let options = StoreOptions {
            clock: clock.clone(),
            sync: false,
            cache_bytes: 1 << 20,
            ..StoreOptions::default()
        };
        let mut store = Store::open(dir.path(), options.clone()).unwrap();
        let model = Model::new(clock.clone());
        for (step, op) in ops.iter().enumerate() {
            let (real, expected) = match op {
                Op::PutBlob(r, c) => (
                    outcome(Storage::put_blob(&store, REPOS[*r], &content(*c))),
                    outcome(model.put_blob(REPOS[*r], &content(*c))),
                ),
                Op::PutImage(r, k, t) | Op::PutIndex(r, k, t) => {
                    let body = if matches!(op, Op::PutImage(..)) {
                        image(*k)
                    } else {
                        index(*k)
                    };
                    let reference = match t {
                        Some(t) => Reference::tag(TAGS[*t]).unwrap(),
                        None => Reference::Digest(Digest::of(&body)),
                    };
                    (
                        outcome(store.put_manifest(REPOS[*r], &reference, "", &body)),
                        outcome(model.put_manifest(REPOS[*r], &reference, "", &body)),
                    )
                }
                Op::PutReferrer(r, k) => {
                    let body = referrer(*k);
                    let reference = Reference::Digest(Digest::of(&body));
                    (
                        outcome(store.put_manifest(REPOS[*r], &reference, "", &body)),
                        outcome(model.put_manifest(REPOS[*r], &reference, "", &body)),
                    )
                }
                Op::Untag(r, t) => (
                    outcome(store.untag(REPOS[*r], TAGS[*t])),
                    outcome(model.untag(REPOS[*r], TAGS[*t])),
                ),
                Op::UnlinkImage(r, k) => {
                    let digest = Digest::of(&image(*k));
                    (
                        outcome(store.unlink(REPOS[*r], digest)),
                        outcome(model.unlink(REPOS[*r], digest)),
                    )
                }
                Op::Mount(f, t, c) => {
                    let digest = Digest::of(&content(*c));
                    (
                        outcome(store.mount(REPOS[*f], REPOS[*t], digest)),
                        outcome(model.mount(REPOS[*f], REPOS[*t], digest)),
                    )
                }
                Op::DeleteRepo(r) => (
                    outcome(store.delete_repository(REPOS[*r])),
                    outcome(model.delete_repository(REPOS[*r])),
                ),
                Op::TouchImage(k) => {
                    store.touch(Digest::of(&image(*k)));
                    model.touch(Digest::of(&image(*k)));
                    (String::new(), String::new())
                }
                Op::LeaseTag(n, r, t, ttl) => {
                    let name = format!("lease-{n}");
                    let targets = [LeaseTarget::Tag {
                        repository: RepoName::parse(REPOS[*r]).unwrap(),
                        tag: Tag::parse(TAGS[*t]).unwrap(),
                    }];
                    let ttl = Duration::from_secs(u64::from(*ttl) * 60);
                    (
                        outcome(store.lease_acquire(&name, &targets, ttl)),
                        outcome(model.lease_acquire(&name, &targets, ttl)),
                    )
                }
                Op::Release(n) => {
                    let name = format!("lease-{n}");
                    (
                        outcome(store.lease_release(&name)),
                        outcome(model.lease_release(&name)),
                    )
                }
                Op::Advance(minutes) => {
                    clock.advance(Duration::from_secs(u64::from(*minutes) * 60));
                    (String::new(), String::new())
                }
                Op::Gc(policy, ceiling, minutes, dry) => {
                    let options = gc_options(*policy, *ceiling, *minutes, *dry);
                    (
                        format!(
                            "{:?}",
                            store
                                .gc(&options)
                                .map(|r| summary(&r))
                                .map_err(|e| e.to_string())
                        ),
                        format!(
                            "{:?}",
                            model
                                .gc(&options)
                                .map(|r| summary(&r))
                                .map_err(|e| e.to_string())
                        ),
                    )
                }
                Op::Crash(debris) => {
                    store.crash();
                    model.crash();
                    let layout = crate::store::layout::Layout::new(dir.path());
                    match debris {
                        Debris::None => {}
                        Debris::Temp => {
                            std::fs::write(layout.tmp().join("upload-dead"), b"partial").unwrap()
                        }
                        Debris::Orphan(c) | Debris::Truncated(c) => {
                            let bytes = content(*c);
                            let digest = Digest::of(&bytes);
                            let present = model
                                .listing()
                                .unwrap()
                                .blobs
                                .iter()
                                .any(|b| b.digest == digest);
                            if !present {
                                std::fs::create_dir_all(layout.shard(&digest)).unwrap();
                                if matches!(debris, Debris::Orphan(_)) {
                                    std::fs::write(layout.blob(&digest), &bytes).unwrap();
                                    model.adopt(&bytes);
                                } else {
                                    std::fs::write(layout.blob(&digest), &bytes[..bytes.len() / 2])
                                        .unwrap();
                                }
                            }
                        }
                    }
                    store = Store::open(dir.path(), options.clone()).unwrap();
                    (String::new(), String::new())
                }
            };
            prop_assert_eq!(&real, &expected, "step {} {:?}", step, op);
            let listing = store.listing().unwrap();
            prop_assert_eq!(
                &listing,
                &model.listing().unwrap(),
                "listing after step {} {:?}",
                step,
                op
            );
            let verify = store
                .verify(&VerifyOptions {
                    parallelism: 1,
                    ..VerifyOptions::default()
                })
                .unwrap();
            prop_assert!(
                verify.is_clean(),
                "after step {} {:?}: {:?}",
                step,
                op,
                verify.problems
            );
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 2_000,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn model_interleaved_operations_match_the_model_and_keep_the_invariants(
            ops in proptest::collection::vec(op(), 1..24)
        ) {
            run(&ops)?;
        }
    }
}
