//! The store's reports as the admin API answers them: disk usage, prune, verify and base
//! images (pure).
//! The admin API and the offline `kiln cache du|prune|verify` both convert here, so the two
//! print the same report for the same store.

use std::collections::{BTreeMap, BTreeSet};

use crate::cacheapi::admin::{
    BaseImage, BaseImages, CeilingUnmet, CorruptBlob, DuReport, EntryKind, MissingReference,
    PruneReport, PrunedEntry, RepositoryUsage, Usage, VerifyReport,
};
use crate::oci::digest::Digest;
use crate::oci::name::{RepoName, Tag};
use crate::store::{self, GcReport, Inconsistency, ItemKind, Lease, Listing, UploadStatus};

/// A Build's base image records as the admin API answers them, in the store's order (by
/// image, then tag), times in seconds.
pub fn base_images(rows: &[store::BaseResolution]) -> BaseImages {
    BaseImages {
        bases: rows
            .iter()
            .map(|row| BaseImage {
                image: row.image.clone(),
                tag: row.tag.clone(),
                digest: row.digest,
                resolved_at: row.resolved_ms / 1000,
            })
            .collect(),
    }
}

/// How many distinct digests unexpired leases hold at `now_ms`: the roots a prune must keep.
pub fn leased_digests(leases: &[Lease], now_ms: u64) -> u64 {
    let held: BTreeSet<Digest> = leases
        .iter()
        .filter(|lease| lease.expires_ms > now_ms)
        .flat_map(|lease| lease.digests.iter().copied())
        .collect();
    held.len() as u64
}

/// The contract's disk usage from the store's: totals, uploads, live leases, and per
/// repository its tags, manifests, the bytes linked into it and its last use.
pub fn du_report(
    du: &store::DiskUsage,
    listing: &Listing,
    uploads: &[UploadStatus],
    now_ms: u64,
    is_mirror: impl Fn(&RepoName) -> bool,
) -> DuReport {
    let upload_bytes: u64 = uploads.iter().map(|u| u.size).sum();
    let blobs: BTreeMap<Digest, (u64, u64)> = listing
        .blobs
        .iter()
        .map(|b| (b.digest, (b.size, b.accessed_ms)))
        .collect();
    let manifests: BTreeSet<Digest> = listing.manifests.iter().map(|m| m.digest).collect();
    let mut per_repo: BTreeMap<&str, RepoTotals> = BTreeMap::new();
    for link in &listing.links {
        let totals = per_repo.entry(link.repo.as_str()).or_default();
        if let Some((size, accessed_ms)) = blobs.get(&link.digest) {
            totals.bytes += size;
            totals.last_used_ms = totals.last_used_ms.max(*accessed_ms);
        }
        totals.manifests += u64::from(manifests.contains(&link.digest));
    }
    for tag in &listing.tags {
        per_repo.entry(tag.repo.as_str()).or_default().tags += 1;
    }
    let repositories = per_repo
        .into_iter()
        .filter_map(|(repo, totals)| {
            // The registry writes only valid names; anything else came from outside it.
            let name = RepoName::parse(repo).ok()?;
            Some(RepositoryUsage {
                mirror: is_mirror(&name),
                name,
                tags: totals.tags,
                manifests: totals.manifests,
                bytes: totals.bytes,
                last_used: (totals.last_used_ms > 0).then_some(totals.last_used_ms / 1000),
            })
        })
        .collect();
    DuReport {
        total_bytes: du.total_bytes + upload_bytes,
        reclaimable_bytes: du.reclaimable_bytes,
        blobs: Usage {
            count: du.blobs,
            bytes: du.total_bytes,
        },
        manifests: du.manifests,
        tags: du.tags,
        uploads: Usage {
            count: uploads.len() as u64,
            bytes: upload_bytes,
        },
        leases: listing
            .leases
            .iter()
            .filter(|lease| lease.expires_ms > now_ms)
            .count() as u64,
        repositories,
    }
}

#[derive(Default)]
struct RepoTotals {
    tags: u64,
    manifests: u64,
    bytes: u64,
    last_used_ms: u64,
}

/// The contract's prune report from a GC report: tags, manifests and blobs removed, sorted
/// by (kind, repository, tag, digest). Expired leases are not entries; `leased` is the
/// number of digests live leases hold (roots the prune had to keep).
pub fn prune_report(report: &GcReport, leased: u64) -> PruneReport {
    let mut removed: Vec<PrunedEntry> = report
        .removed
        .iter()
        .filter_map(|removal| {
            let reason = removal.reason.as_str().to_owned();
            let entry = |kind| PrunedEntry {
                kind,
                repository: None,
                tag: None,
                digest: None,
                bytes: removal.size,
                reason: reason.clone(),
            };
            match removal.kind {
                ItemKind::Lease => None,
                ItemKind::Tag => {
                    let (repo, tag) = removal.name.rsplit_once(':')?;
                    Some(PrunedEntry {
                        repository: RepoName::parse(repo).ok(),
                        tag: Tag::parse(tag).ok(),
                        ..entry(EntryKind::Tag)
                    })
                }
                ItemKind::Manifest | ItemKind::Blob => Some(PrunedEntry {
                    digest: removal.name.parse().ok(),
                    ..entry(if removal.kind == ItemKind::Manifest {
                        EntryKind::Manifest
                    } else {
                        EntryKind::Blob
                    })
                }),
            }
        })
        .collect();
    removed.sort_by(|a, b| {
        (a.kind, &a.repository, &a.tag, &a.digest).cmp(&(b.kind, &b.repository, &b.tag, &b.digest))
    });
    PruneReport {
        dry_run: report.dry_run,
        freed_bytes: report.bytes_freed,
        removed,
        kept_by_leases: leased,
        ceiling_unmet: report.ceiling_unmet.then_some(CeilingUnmet {
            bytes_after: report.bytes_after,
            held_by_leases: report.held_by_leases,
            held_by_pushes: report.held_by_pushes,
        }),
    }
}

/// The contract's verify report: corrupt blobs (with their sizes from `before`, the
/// listing taken before the verify), missing references per repository holding the
/// manifest, what repair dropped, and every other problem as a sentence.
pub fn verify_report(report: &store::VerifyFindings, before: &Listing) -> VerifyReport {
    let sizes: BTreeMap<Digest, u64> = before.blobs.iter().map(|b| (b.digest, b.size)).collect();
    let mut holders: BTreeMap<Digest, Vec<RepoName>> = BTreeMap::new();
    for link in &before.links {
        if let Ok(name) = RepoName::parse(&link.repo) {
            holders.entry(link.digest).or_default().push(name);
        }
    }
    let mut out = VerifyReport {
        blobs_checked: report.blobs_checked,
        bytes_checked: report.bytes_checked,
        repaired: report.dropped.clone(),
        quarantined: report.quarantined.clone(),
        ..VerifyReport::default()
    };
    for problem in &report.problems {
        match problem {
            Inconsistency::Corrupt { digest, actual } => out.corrupt.push(CorruptBlob {
                digest: *digest,
                actual: *actual,
                bytes: sizes.get(digest).copied().unwrap_or(0),
                quarantined: report.repaired,
            }),
            Inconsistency::Dangling {
                table: "manifests",
                key,
                missing,
            } if key
                .parse::<Digest>()
                .is_ok_and(|d| holders.contains_key(&d)) =>
            {
                if let Ok(manifest) = key.parse::<Digest>() {
                    for repository in holders.get(&manifest).into_iter().flatten() {
                        out.missing.push(MissingReference {
                            repository: repository.clone(),
                            manifest,
                            missing: *missing,
                        });
                    }
                }
            }
            other => out.problems.push(other.to_string()),
        }
    }
    out.corrupt.sort_by_key(|c| c.digest);
    out.missing.sort_by(|a, b| {
        (&a.repository, a.manifest, a.missing).cmp(&(&b.repository, b.manifest, b.missing))
    });
    out.repaired.sort();
    out.problems.sort();
    out.quarantined.sort();
    out
}
