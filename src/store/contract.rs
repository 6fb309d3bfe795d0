//! The contract suite: one set of behaviours, run against the redb store and the
//! in-memory model (test-only; the redb side does I/O in a temp directory).

use std::time::Duration;

use crate::oci::digest::Digest;
use crate::oci::name::{Reference, RepoName, Tag};
use crate::store::clock::StoreClock;
use crate::store::error::StoreError;
use crate::store::fixtures::{image_manifest, index_manifest, referrer_manifest};
use crate::store::gc::Policy;
use crate::store::handle::{Store, StoreOptions};
use crate::store::model::Model;
use crate::store::storage::Storage;
use crate::store::sweep::GcOptions;
use crate::store::types::LeaseTarget;

const MINUTE: Duration = Duration::from_secs(60);

/// Runs `check` against a fresh redb store and a fresh model, each with its own manual
/// clock starting at the same time.
fn each(check: impl Fn(&dyn Storage, &StoreClock)) {
    let dir = tempfile::tempdir().unwrap();
    let clock = StoreClock::manual(1_000_000);
    let store = Store::open(
        dir.path(),
        StoreOptions {
            clock: clock.clone(),
            sync: false,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    check(&store, &clock);
    let clock = StoreClock::manual(1_000_000);
    check(&Model::new(clock.clone()), &clock);
}

fn tag(name: &str) -> Reference {
    Reference::tag(name).unwrap()
}

/// Pushes an image (config + layers) into `repo` under `tag`; returns the manifest digest.
fn push_image(s: &dyn Storage, repo: &str, tag_name: &str, seed: &str) -> Digest {
    let config = s
        .put_blob(repo, format!("config {seed}").as_bytes())
        .unwrap();
    let layer = s
        .put_blob(repo, format!("layer {seed}").as_bytes())
        .unwrap();
    let body = image_manifest((config.digest, config.size), &[(layer.digest, layer.size)]);
    s.put_manifest(repo, &tag(tag_name), "", &body)
        .unwrap()
        .digest
}

fn gc_now(s: &dyn Storage, policy: Policy) -> crate::store::sweep::GcReport {
    s.gc(&GcOptions {
        policy,
        grace: Duration::ZERO,
        ..GcOptions::default()
    })
    .unwrap()
}

#[test]
fn contract_manifest_commits_only_with_every_reference_present() {
    each(|s, _| {
        let config = s.put_blob("app", b"config").unwrap();
        let missing = Digest::of(b"never pushed");
        let body = image_manifest((config.digest, config.size), &[(missing, 3)]);
        let err = s.put_manifest("app", &tag("v1"), "", &body).unwrap_err();
        assert!(
            matches!(err, StoreError::ReferenceMissing { digest, .. } if digest == missing),
            "{err}"
        );
        let listing = s.listing().unwrap();
        assert!(listing.manifests.is_empty() && listing.tags.is_empty());
        let layer = s.put_blob("app", b"never pushed").unwrap();
        assert_eq!(layer.digest, missing);
        let info = s.put_manifest("app", &tag("v1"), "", &body).unwrap();
        assert_eq!(info.digest, Digest::of(&body));
        assert_eq!(s.manifest("app", &tag("v1")).unwrap(), Some(info.clone()));
        assert_eq!(
            s.manifest("app", &Reference::Digest(info.digest)).unwrap(),
            Some(info)
        );
    });
}

#[test]
fn contract_references_must_be_in_the_same_repository_until_mounted() {
    each(|s, _| {
        let config = s.put_blob("a", b"config").unwrap();
        let body = image_manifest((config.digest, config.size), &[]);
        assert!(matches!(
            s.put_manifest("b", &tag("v1"), "", &body),
            Err(StoreError::ReferenceMissing { .. })
        ));
        assert!(!s.mount("c", "b", config.digest).unwrap(), "not in c");
        assert!(s.mount("a", "b", config.digest).unwrap());
        s.put_manifest("b", &tag("v1"), "", &body).unwrap();
    });
}

#[test]
fn contract_digest_reference_must_match_the_bytes() {
    each(|s, _| {
        let config = s.put_blob("a", b"config").unwrap();
        let body = image_manifest((config.digest, config.size), &[]);
        let wrong = Digest::of(b"other");
        assert!(matches!(
            s.put_manifest("a", &Reference::Digest(wrong), "", &body),
            Err(StoreError::DigestMismatch { .. })
        ));
        let right = Reference::Digest(Digest::of(&body));
        s.put_manifest("a", &right, "", &body).unwrap();
        assert!(s.listing().unwrap().tags.is_empty(), "by digest: no tag");
    });
}

#[test]
fn contract_untagged_images_go_with_gc_and_tagged_ones_stay() {
    each(|s, _| {
        let keep = push_image(s, "app", "keep", "1");
        let gone = push_image(s, "app", "gone", "2");
        assert!(s.untag("app", "gone").unwrap());
        assert!(!s.untag("app", "gone").unwrap());
        let report = gc_now(s, Policy::default());
        assert_eq!((report.manifests_removed, report.blobs_removed), (1, 3));
        let listing = s.listing().unwrap();
        assert!(listing.manifests.iter().any(|m| m.digest == keep));
        assert!(listing.blobs.iter().all(|b| b.digest != gone));
        assert!(listing.links.iter().all(|l| l.digest != gone));
        assert_eq!(listing.blobs.len(), 3);
    });
}

#[test]
fn contract_grace_window_keeps_a_push_whose_manifest_has_not_arrived() {
    each(|s, clock| {
        s.put_blob("app", b"layer in flight").unwrap();
        let report = s.gc(&GcOptions::default()).unwrap();
        assert_eq!(report.blobs_removed, 0);
        clock.advance(11 * MINUTE);
        assert_eq!(s.gc(&GcOptions::default()).unwrap().blobs_removed, 1);
    });
}

#[test]
fn contract_unlink_removes_the_tags_pointing_at_it() {
    each(|s, _| {
        let digest = push_image(s, "app", "v1", "1");
        assert!(s.unlink("app", digest).unwrap());
        let listing = s.listing().unwrap();
        assert!(listing.tags.is_empty());
        assert_eq!(s.manifest("app", &Reference::Digest(digest)).unwrap(), None);
    });
}

#[test]
fn contract_lease_on_a_tag_pins_the_image_until_released_or_expired() {
    each(|s, clock| {
        let digest = push_image(s, "app", "cache", "1");
        let target = LeaseTarget::Tag {
            repository: RepoName::parse("app").unwrap(),
            tag: Tag::parse("cache").unwrap(),
        };
        let lease = s.lease_acquire("build-1", &[target], 30 * MINUTE).unwrap();
        assert_eq!(lease.digests, vec![digest]);
        s.untag("app", "cache").unwrap();
        assert_eq!(gc_now(s, Policy::default()).blobs_removed, 0);
        clock.advance(31 * MINUTE);
        let report = gc_now(s, Policy::default());
        assert_eq!((report.leases_removed, report.blobs_removed), (1, 3));
        let missing = LeaseTarget::Digest { digest };
        assert!(matches!(
            s.lease_acquire("build-2", &[missing], MINUTE),
            Err(StoreError::LeaseTargetMissing { .. })
        ));
        let none = LeaseTarget::Tag {
            repository: RepoName::parse("app").unwrap(),
            tag: Tag::parse("not-yet").unwrap(),
        };
        assert!(
            s.lease_acquire("build-3", &[none], MINUTE)
                .unwrap()
                .digests
                .is_empty()
        );
        assert!(s.lease_release("build-3").unwrap());
        assert!(!s.lease_release("build-3").unwrap());
    });
}

#[test]
fn contract_delete_repository_removes_its_tags_and_links_in_one_step() {
    each(|s, _| {
        push_image(s, "ns-a/app", "v1", "1");
        push_image(s, "ns-a/app", "v2", "2");
        push_image(s, "ns-b/app", "v1", "3");
        let deleted = s.delete_repository("ns-a/app").unwrap();
        assert_eq!((deleted.tags, deleted.links, deleted.manifests), (2, 6, 2));
        let report = gc_now(s, Policy::default());
        assert_eq!(report.blobs_removed, 6);
        let listing = s.listing().unwrap();
        assert!(listing.links.iter().all(|l| l.repo == "ns-b/app"));
    });
}

#[test]
fn contract_index_children_and_referrers_are_reachable_from_the_index_and_subject() {
    each(|s, _| {
        let child = push_image(s, "app", "child-tag", "1");
        let size = s
            .listing()
            .unwrap()
            .blobs
            .iter()
            .find(|b| b.digest == child)
            .unwrap()
            .size;
        let index = index_manifest(&[(child, size)]);
        let index = s.put_manifest("app", &tag("multi"), "", &index).unwrap();
        let config = s.put_blob("app", b"{}").unwrap();
        let sig = referrer_manifest(
            index.digest,
            (config.digest, config.size),
            "application/x-sig",
        );
        let sig = s
            .put_manifest("app", &Reference::Digest(Digest::of(&sig)), "", &sig)
            .unwrap();
        assert_eq!(sig.artifact_type.as_deref(), Some("application/x-sig"));
        s.untag("app", "child-tag").unwrap();
        assert_eq!(
            gc_now(s, Policy::default()).blobs_removed,
            0,
            "index and subject hold them"
        );
        let listing = s.listing().unwrap();
        assert_eq!(listing.referrers, vec![(index.digest, sig.digest)]);
        s.untag("app", "multi").unwrap();
        let report = gc_now(s, Policy::default());
        assert_eq!((report.manifests_removed, report.blobs_removed), (3, 6));
        assert!(s.listing().unwrap().is_empty());
    });
}

#[test]
fn contract_keep_storage_evicts_least_recently_used_tags_first() {
    each(|s, clock| {
        let old = push_image(s, "app", "old", "1");
        clock.advance(MINUTE);
        let used = push_image(s, "app", "used", "2");
        clock.advance(MINUTE);
        push_image(s, "app", "new", "3");
        clock.advance(MINUTE);
        s.touch(old);
        let total: u64 = s.listing().unwrap().blobs.iter().map(|b| b.size).sum();
        let report = gc_now(
            s,
            Policy {
                keep_storage: Some(total - 1),
                ..Policy::default()
            },
        );
        assert_eq!(report.tags_removed, 1);
        let tags: Vec<String> = s
            .listing()
            .unwrap()
            .tags
            .into_iter()
            .map(|t| t.tag)
            .collect();
        assert_eq!(tags, ["new", "old"], "'used' was least recently used");
        assert!(s.listing().unwrap().blobs.iter().all(|b| b.digest != used));
        assert!(report.bytes_after < total);
    });
}

#[test]
fn contract_prune_all_leaves_nothing() {
    each(|s, _| {
        push_image(s, "a", "v1", "1");
        push_image(s, "b", "v1", "2");
        s.put_blob("c", b"loose").unwrap();
        let report = gc_now(
            s,
            Policy {
                all: true,
                ..Policy::default()
            },
        );
        assert_eq!(report.tags_removed, 2);
        assert_eq!(report.bytes_after, 0);
        assert!(s.listing().unwrap().is_empty());
    });
}

#[test]
fn contract_dry_run_reports_and_removes_nothing() {
    each(|s, _| {
        push_image(s, "a", "v1", "1");
        let before = s.listing().unwrap();
        let report = s
            .gc(&GcOptions {
                policy: Policy {
                    all: true,
                    ..Policy::default()
                },
                grace: Duration::ZERO,
                dry_run: true,
                ..GcOptions::default()
            })
            .unwrap();
        assert_eq!((report.tags_removed, report.blobs_removed), (1, 3));
        assert_eq!(s.listing().unwrap(), before);
    });
}
