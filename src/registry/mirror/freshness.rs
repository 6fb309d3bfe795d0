//! When a mirror repository answers from its cache and when it asks the upstream, and what
//! it answers after asking (pure: the times and the upstream's answers are arguments).
//!
//! Manifests by digest are immutable: once cached they are served without asking. A tag
//! is served from the cache while it is fresh (checked within the TTL), then revalidated
//! with a HEAD, which Docker Hub does not count as a pull. When the upstream cannot answer
//! (down, 429, 5xx, a broken answer), the cached copy is served stale, and the upstream is
//! not asked again for [`STALE_RETRY`], so that clients do not each wait for a dead
//! upstream's time-out.

use std::time::{Duration, Instant};

use crate::oci::digest::Digest;
use crate::registry::mirror::upstream::{ManifestHead, UpstreamError};

/// How long a stale answer stands before the upstream is asked again.
pub const STALE_RETRY: Duration = Duration::from_secs(30);

/// What the mirror knows of a cached tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagState {
    /// Until when it is served without asking the upstream.
    pub fresh_until: Instant,
    /// Why the last check failed, while the cached copy is served stale.
    pub stale: Option<String>,
}

impl TagState {
    /// A tag confirmed by the upstream at `now`.
    pub fn confirmed(now: Instant, ttl: Duration) -> Self {
        Self {
            fresh_until: now + ttl,
            stale: None,
        }
    }

    /// A tag whose check failed at `now` for `reason`: served stale for a while.
    pub fn stale(now: Instant, ttl: Duration, reason: String) -> Self {
        Self {
            fresh_until: now + ttl.min(STALE_RETRY),
            stale: Some(reason),
        }
    }
}

/// What to do with a manifest request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FreshnessPlan {
    /// Answer from the cache; `stale` says why it is served stale, if it is.
    Serve {
        /// The reason of the last failed check.
        stale: Option<String>,
    },
    /// Ask the upstream whether the cached tag still points at the cached manifest.
    Revalidate,
    /// Nothing cached: fetch it.
    Fetch,
}

/// Decides how to answer a manifest request. `by_digest` requests are immutable; `state`
/// is what the mirror remembers of the tag (nothing after a restart: then it revalidates).
pub fn plan(
    by_digest: bool,
    cached: bool,
    state: Option<&TagState>,
    now: Instant,
) -> FreshnessPlan {
    match (cached, by_digest, state) {
        (false, _, _) => FreshnessPlan::Fetch,
        (true, true, _) => FreshnessPlan::Serve { stale: None },
        (true, false, Some(state)) if now < state.fresh_until => FreshnessPlan::Serve {
            stale: state.stale.clone(),
        },
        (true, false, _) => FreshnessPlan::Revalidate,
    }
}

/// What a revalidation's HEAD means for the cached tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revalidated {
    /// The tag still points at the cached manifest.
    Current,
    /// The tag moved: fetch this digest.
    Moved(Digest),
    /// The upstream says the tag is gone: forget it.
    Gone,
    /// The upstream could not answer: serve the cached copy stale, for this reason.
    Stale(String),
    /// The HEAD answer was unusable (no digest header): fetch the tag with a GET instead.
    Refetch,
    /// A definite refusal (the upstream denies access): pass it on.
    Fail,
}

/// Reads the answer to a revalidation HEAD of a tag cached at `cached`.
pub fn after_head(cached: Digest, answer: &Result<ManifestHead, UpstreamError>) -> Revalidated {
    match answer {
        Ok(head) if head.digest == cached => Revalidated::Current,
        Ok(head) => Revalidated::Moved(head.digest),
        Err(UpstreamError::NotFound { .. }) => Revalidated::Gone,
        Err(UpstreamError::Invalid { .. }) => Revalidated::Refetch,
        Err(err @ UpstreamError::Unavailable { .. }) => Revalidated::Stale(err.to_string()),
        Err(UpstreamError::Denied { .. } | UpstreamError::Config { .. }) => Revalidated::Fail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(300);

    #[test]
    fn plans_follow_the_ttl_and_immutability() {
        let now = Instant::now();
        let fresh = TagState::confirmed(now, TTL);
        let expired = TagState::confirmed(now - TTL - Duration::from_secs(1), TTL);
        let stale = TagState::stale(now, TTL, "down".into());
        let serve = FreshnessPlan::Serve { stale: None };
        let table = [
            // (by digest, cached, state, plan)
            (false, false, None, FreshnessPlan::Fetch),
            (true, false, None, FreshnessPlan::Fetch),
            (true, true, None, serve.clone()),
            (true, true, Some(&expired), serve.clone()),
            (false, true, Some(&fresh), serve.clone()),
            (false, true, Some(&expired), FreshnessPlan::Revalidate),
            (false, true, None, FreshnessPlan::Revalidate),
            (
                false,
                true,
                Some(&stale),
                FreshnessPlan::Serve {
                    stale: Some("down".into()),
                },
            ),
        ];
        for (by_digest, cached, state, want) in table {
            assert_eq!(
                plan(by_digest, cached, state, now),
                want,
                "{by_digest} {cached} {state:?}"
            );
        }
        // A stale answer is retried after STALE_RETRY, a fresh one after the TTL.
        assert_eq!(
            plan(false, true, Some(&stale), now + STALE_RETRY),
            FreshnessPlan::Revalidate
        );
        assert_eq!(
            plan(
                false,
                true,
                Some(&fresh),
                now + TTL - Duration::from_millis(1)
            ),
            serve
        );
        assert_eq!(
            plan(false, true, Some(&fresh), now + TTL),
            FreshnessPlan::Revalidate
        );
    }

    #[test]
    fn revalidation_answers_map_to_what_the_mirror_does() {
        let cached = Digest::of(b"cached");
        let moved = Digest::of(b"moved");
        let head = |digest| {
            Ok(ManifestHead {
                digest,
                media_type: "application/vnd.oci.image.index.v1+json".into(),
                size: Some(1),
            })
        };
        let upstream = || "docker.io".to_owned();
        let unavailable = UpstreamError::Unavailable {
            upstream: upstream(),
            action: "check".into(),
            reason: "rate limited (429)".into(),
            status: Some(429),
        };
        let cases = [
            (head(cached), Revalidated::Current),
            (head(moved), Revalidated::Moved(moved)),
            (
                Err(UpstreamError::NotFound {
                    upstream: upstream(),
                    what: "manifest".into(),
                }),
                Revalidated::Gone,
            ),
            (
                Err(UpstreamError::Invalid {
                    upstream: upstream(),
                    action: "check".into(),
                    reason: "no Docker-Content-Digest header".into(),
                }),
                Revalidated::Refetch,
            ),
            (
                Err(unavailable.clone()),
                Revalidated::Stale(unavailable.to_string()),
            ),
            (
                Err(UpstreamError::Denied {
                    upstream: upstream(),
                    action: "check".into(),
                    status: 403,
                }),
                Revalidated::Fail,
            ),
        ];
        for (answer, want) in cases {
            assert_eq!(after_head(cached, &answer), want, "{answer:?}");
        }
    }
}
