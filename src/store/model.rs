//! An in-memory model of the store: the same contract in the plainest code (BTreeMaps, a
//! naive fixpoint mark, evict-one-and-recompute policies), for the contract suite and the
//! model-based property test to compare against (pure; test-only).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use crate::digest::Digest;
use crate::store::clock::{Clock, millis};
use crate::store::error::{Result, StoreError};
use crate::store::flight::lock;
use crate::store::manifest;
use crate::store::storage::Storage;
use crate::store::sweep::{GcOptions, GcReport};
use crate::store::types::{
    BlobEntry, BlobInfo, Lease, LeaseTarget, LinkEntry, Listing, ManifestInfo, Reference,
    RepositoryDeleted, TagEntry, validate_repo, validate_tag,
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
    clock: Clock,
}

impl Model {
    pub(crate) fn new(clock: Clock) -> Self {
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
        });
        blob.accessed_ms = blob.accessed_ms.max(now);
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
        if let Reference::Tag(tag) = reference {
            validate_tag(tag)?;
        }
        let parsed = manifest::parse(bytes)?;
        let digest = Digest::of(bytes);
        if let Reference::Digest(expected) = reference
            && *expected != digest
        {
            return Err(StoreError::DigestMismatch {
                expected: *expected,
                actual: digest,
            });
        }
        let mut state = lock(&self.state);
        for reference in &parsed.references {
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
        };
        state.manifests.insert(digest, info.clone());
        if let Reference::Tag(tag) = reference {
            state.tags.insert((repo.to_owned(), tag.clone()), digest);
        }
        Ok(info)
    }

    fn manifest(&self, repo: &str, reference: &Reference) -> Result<Option<ManifestInfo>> {
        let state = lock(&self.state);
        let digest = match reference {
            Reference::Digest(d) => *d,
            Reference::Tag(tag) => match state.tags.get(&(repo.to_owned(), tag.clone())) {
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

    fn delete_repository(&self, repo: &str) -> Result<RepositoryDeleted> {
        let mut state = lock(&self.state);
        let tags_before = state.tags.len();
        state.tags.retain(|(tag_repo, _), _| tag_repo != repo);
        let links_before = state.links.len();
        state.links.retain(|(link_repo, _)| link_repo != repo);
        Ok(RepositoryDeleted {
            tags: (tags_before - state.tags.len()) as u64,
            links: (links_before - state.links.len()) as u64,
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
                reason: "empty",
            });
        }
        let mut state = lock(&self.state);
        let mut digests = BTreeSet::new();
        for target in targets {
            match target {
                LeaseTarget::Digest(d) => {
                    if !state.blobs.contains_key(d) {
                        return Err(StoreError::LeaseTargetMissing {
                            name: name.to_owned(),
                            digest: *d,
                        });
                    }
                    digests.insert(*d);
                }
                LeaseTarget::Tag { repo, tag } => {
                    if let Some(d) = state.tags.get(&(repo.clone(), tag.clone())) {
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
        let pinned: Vec<Digest> = state
            .leases
            .values()
            .flat_map(|l| l.digests.iter().copied())
            .chain(
                state
                    .blobs
                    .values()
                    .filter(|b| b.created_ms.saturating_add(grace) > now)
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
