//! The store's notion of "now": the system clock, or a manual clock that tests move (pure
//! apart from reading the system time).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::store::layout::unix_ms;

/// Where the store reads the time from. Every timestamp it records (creation, last
/// access, lease expiry) and every age it compares (grace window, keep-duration) uses it,
/// so tests can move time without sleeping.
#[derive(Debug, Clone, Default)]
pub enum StoreClock {
    /// The system clock.
    #[default]
    System,
    /// A clock that only moves when told to; clones share the same time.
    Manual(Arc<AtomicU64>),
}

impl StoreClock {
    /// A manual clock starting at `start_ms` milliseconds after the Unix epoch.
    pub fn manual(start_ms: u64) -> Self {
        Self::Manual(Arc::new(AtomicU64::new(start_ms)))
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        match self {
            Self::System => unix_ms(SystemTime::now()),
            Self::Manual(ms) => ms.load(Ordering::SeqCst),
        }
    }

    /// Moves a manual clock forward; the system clock ignores it.
    pub fn advance(&self, by: Duration) {
        if let Self::Manual(ms) = self {
            let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
            ms.fetch_add(by, Ordering::SeqCst);
        }
    }
}

/// A duration in whole milliseconds, saturating.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clones_share_one_time() {
        let clock = StoreClock::manual(1_000);
        let other = clock.clone();
        clock.advance(Duration::from_secs(2));
        assert_eq!(other.now_ms(), 3_000);
    }
}
