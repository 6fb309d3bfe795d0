//! What this controller process knows of its calls to the cache service's admin API: until
//! when each lease holds and what it holds, which releases and deletions were confirmed,
//! and when a failed call may be tried again (in-memory shared state; no I/O).
//!
//! `apply` writes it after each call; `observe` copies the entries of one Build into
//! [`Observed`](super::observed::Observed), so that `decide` stays pure. It is a cache of
//! outcomes, not the record of duties: what must still be released lives in the Build's
//! status (`status.cacheLeases`), so a restart that empties the ledger only means that
//! leases are renewed and releases repeated at once (both are idempotent).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::oci::digest::Digest;

/// One kind of admin API call made for a Build, for metrics and messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CacheCall {
    /// The first `PUT` of an attempt's lease.
    TakeLease,
    /// A later `PUT` that extends it.
    RenewLease,
    /// `DELETE` of a lease.
    ReleaseLease,
    /// `DELETE` of a Build's cache tag (the finalizer).
    DeleteTag,
    /// `DELETE` of a repository of a namespace that no longer exists.
    DeleteRepository,
    /// `PUT` of an ended attempt's build log.
    StoreLog,
    /// `GET` of the base images a Build resolved.
    ReadBaseImages,
    /// `POST` of a resolution of base image tags upstream.
    CheckBaseImages,
    /// `DELETE` of the record of a Build's base images (the finalizer).
    ForgetBaseImages,
}

impl CacheCall {
    /// A short, stable label (`take_lease`, `release_lease`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            CacheCall::TakeLease => "take_lease",
            CacheCall::RenewLease => "renew_lease",
            CacheCall::ReleaseLease => "release_lease",
            CacheCall::DeleteTag => "delete_tag",
            CacheCall::DeleteRepository => "delete_repository",
            CacheCall::StoreLog => "store_log",
            CacheCall::ReadBaseImages => "read_base_images",
            CacheCall::CheckBaseImages => "check_base_images",
            CacheCall::ForgetBaseImages => "forget_base_images",
        }
    }
}

/// What is known of one lease or one cleanup call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallState {
    /// For a lease: until when it holds, after the last successful take or renewal.
    pub held_until: Option<Timestamp>,
    /// For a lease: the digests it holds. Renewals pin these rather than the tag, so that a
    /// push to the tag while the attempt runs never moves the lease off what it imports.
    pub digests: Vec<Digest>,
    /// The release or deletion was confirmed.
    pub done: bool,
    /// For a build log: where it was stored, once it was.
    pub stored_log: Option<crate::crd::StoredLog>,
    /// For a read of an attempt's base images: what the cache answered.
    pub bases: Option<Vec<crate::crd::BaseImage>>,
    /// For a check of base image tags: `image:tag` → the digest it resolves to now.
    pub resolved_bases: Option<BTreeMap<String, String>>,
    /// Failed calls in a row.
    pub failures: u32,
    /// A failed call is not repeated before this time.
    pub retry_at: Option<Timestamp>,
    /// The last failure, for messages.
    pub last_error: Option<String>,
    /// Last change, to forget entries nobody asks about any more.
    pub touched: Option<Timestamp>,
}

impl CallState {
    /// Whether a call may be made at `now` (no failure waiting out its backoff).
    pub fn may_call(&self, now: Timestamp) -> bool {
        self.retry_at.is_none_or(|at| now >= at)
    }
}

/// The ledger: entries by key (a lease name, or [`tag_key`](super::cache_lease::tag_key)).
#[derive(Debug, Default)]
pub struct CacheLedger {
    entries: Mutex<BTreeMap<String, CallState>>,
}

impl CacheLedger {
    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<String, CallState>) -> T) -> T {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut entries)
    }

    /// The entries whose key starts with `prefix` (one Build's).
    pub fn snapshot(&self, prefix: &str) -> BTreeMap<String, CallState> {
        self.with(|entries| {
            entries
                .range(prefix.to_owned()..)
                .take_while(|(key, _)| key.starts_with(prefix))
                .map(|(key, state)| (key.clone(), state.clone()))
                .collect()
        })
    }

    /// A lease was taken or renewed: it holds `digests` until `until`.
    pub fn held(&self, key: &str, until: Timestamp, digests: Vec<Digest>, now: Timestamp) {
        self.with(|entries| {
            entries.insert(
                key.to_owned(),
                CallState {
                    held_until: Some(until),
                    digests,
                    touched: Some(now),
                    ..CallState::default()
                },
            );
        });
    }

    /// A build log was stored where `log` says.
    pub fn log_stored(&self, key: &str, log: crate::crd::StoredLog, now: Timestamp) {
        self.with(|entries| {
            entries.insert(
                key.to_owned(),
                CallState {
                    stored_log: Some(log),
                    touched: Some(now),
                    ..CallState::default()
                },
            );
        });
    }

    /// The base images an attempt resolved were read.
    pub fn bases_read(&self, key: &str, bases: Vec<crate::crd::BaseImage>, now: Timestamp) {
        self.with(|entries| {
            entries.insert(
                key.to_owned(),
                CallState {
                    bases: Some(bases),
                    touched: Some(now),
                    ..CallState::default()
                },
            );
        });
    }

    /// Base image tags were resolved upstream (those that answered).
    pub fn bases_resolved(&self, key: &str, resolved: BTreeMap<String, String>, now: Timestamp) {
        self.with(|entries| {
            entries.insert(
                key.to_owned(),
                CallState {
                    resolved_bases: Some(resolved),
                    touched: Some(now),
                    ..CallState::default()
                },
            );
        });
    }

    /// A release or deletion was confirmed.
    pub fn done(&self, key: &str, now: Timestamp) {
        self.with(|entries| {
            entries.insert(
                key.to_owned(),
                CallState {
                    done: true,
                    touched: Some(now),
                    ..CallState::default()
                },
            );
        });
    }

    /// A call failed: it may be tried again after `backoff(failures)`. Returns the number
    /// of failures in a row, this one included.
    pub fn failed(
        &self,
        key: &str,
        error: String,
        now: Timestamp,
        backoff: impl FnOnce(u32) -> Duration,
    ) -> u32 {
        self.with(|entries| {
            let state = entries.entry(key.to_owned()).or_default();
            state.failures = state.failures.saturating_add(1);
            let wait =
                SignedDuration::try_from(backoff(state.failures)).unwrap_or(SignedDuration::MAX);
            state.retry_at = Some(now.saturating_add(wait).unwrap_or(Timestamp::MAX));
            state.last_error = Some(error);
            state.touched = Some(now);
            state.failures
        })
    }

    /// Forgets entries untouched since `cutoff`: leases long lapsed, confirmed releases
    /// whose records are gone. Keeps the ledger as small as the work in flight.
    pub fn forget_before(&self, cutoff: Timestamp) {
        self.with(|entries| entries.retain(|_, state| state.touched.is_some_and(|t| t >= cutoff)));
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.with(|entries| entries.len())
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::fixtures::{T0, at};

    #[test]
    fn snapshot_holds_one_prefix_only() {
        let ledger = CacheLedger::default();
        ledger.done("build-a-1", T0);
        ledger.done("build-a-tag", T0);
        ledger.done("build-b-1", T0);
        let keys: Vec<String> = ledger.snapshot("build-a-").into_keys().collect();
        assert_eq!(keys, ["build-a-1", "build-a-tag"]);
    }

    #[test]
    fn failures_back_off_and_a_success_clears_them() {
        let ledger = CacheLedger::default();
        let backoff = |n: u32| Duration::from_secs(10 * u64::from(n));
        assert_eq!(ledger.failed("l", "down".into(), T0, backoff), 1);
        assert_eq!(ledger.failed("l", "down".into(), T0, backoff), 2);
        let state = &ledger.snapshot("l")["l"];
        assert_eq!(state.retry_at, Some(at(20)));
        assert!(!state.may_call(at(19)));
        assert!(state.may_call(at(20)));
        ledger.held("l", at(900), Vec::new(), at(20));
        let state = &ledger.snapshot("l")["l"];
        assert_eq!((state.failures, state.retry_at), (0, None));
    }

    #[test]
    fn old_entries_are_forgotten() {
        let ledger = CacheLedger::default();
        ledger.done("old", T0);
        ledger.done("new", at(100));
        ledger.forget_before(at(50));
        assert_eq!(ledger.snapshot("").len(), 1);
        assert!(!ledger.is_empty());
    }
}
