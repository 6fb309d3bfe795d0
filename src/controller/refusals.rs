//! What the API server said when it last refused to create an attempt's pod (in-memory
//! shared state; no I/O).
//!
//! A refused create (a ResourceQuota, a LimitRange, an admission webhook) is not visible
//! in anything `observe` reads: no pod exists. `apply` records the refusal here and
//! `observe` copies the Build's entries into
//! [`Observed::pod_refusals`](super::observed::Observed::pod_refusals), so that `decide`
//! (pure) can say in the status why the pod is not there while the create is retried. A
//! restart forgets the refusals; the next refused create records them again.

use std::collections::BTreeMap;
use std::sync::Mutex;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// Entries untouched for this long are dropped (their Build is long gone or started).
const FORGET_AFTER: SignedDuration = SignedDuration::from_hours(1);

/// The refusals, keyed by Build UID and pod name.
#[derive(Debug, Default)]
pub struct PodRefusals {
    entries: Mutex<BTreeMap<(String, String), (String, Timestamp)>>,
}

impl PodRefusals {
    fn with<T>(
        &self,
        f: impl FnOnce(&mut BTreeMap<(String, String), (String, Timestamp)>) -> T,
    ) -> T {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut entries)
    }

    /// The API server refused pod `pod` of the Build `uid` with `message`.
    pub fn refused(&self, uid: &str, pod: &str, message: String, now: Timestamp) {
        self.with(|entries| {
            entries.retain(|_, (_, at)| now.duration_since(*at) < FORGET_AFTER);
            entries.insert((uid.to_owned(), pod.to_owned()), (message, now));
        });
    }

    /// Pod `pod` of the Build `uid` was created (or exists): its refusal is over.
    pub fn created(&self, uid: &str, pod: &str) {
        self.with(|entries| entries.remove(&(uid.to_owned(), pod.to_owned())));
    }

    /// The Build `uid`'s refusals: pod name → the API server's message.
    pub fn of(&self, uid: &str) -> BTreeMap<String, String> {
        self.with(|entries| {
            entries
                .range((uid.to_owned(), String::new())..)
                .take_while(|((u, _), _)| u == uid)
                .map(|((_, pod), (message, _))| (pod.clone(), message.clone()))
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    #[test]
    fn a_refusal_is_kept_per_build_until_the_pod_is_created() {
        let refusals = PodRefusals::default();
        refusals.refused("uid-a", "app-1", "exceeded quota".to_owned(), at(0));
        refusals.refused("uid-b", "web-1", "denied by webhook".to_owned(), at(0));
        assert_eq!(
            refusals.of("uid-a"),
            BTreeMap::from([("app-1".to_owned(), "exceeded quota".to_owned())])
        );
        refusals.created("uid-a", "app-1");
        assert_eq!(refusals.of("uid-a"), BTreeMap::new());
        assert_eq!(refusals.of("uid-b").len(), 1);
    }

    #[test]
    fn old_refusals_are_forgotten_when_a_new_one_comes() {
        let refusals = PodRefusals::default();
        refusals.refused("uid-a", "app-1", "exceeded quota".to_owned(), at(0));
        refusals.refused("uid-b", "web-1", "exceeded quota".to_owned(), at(3600));
        assert_eq!(refusals.of("uid-a"), BTreeMap::new());
        assert_eq!(refusals.of("uid-b").len(), 1);
    }
}
