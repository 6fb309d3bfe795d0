//! Single-flight per digest: at most one writer of a digest at a time, and the others wait
//! for its outcome (in-process synchronisation, no I/O).
//!
//! The same table serialises the two places where a blob file appears or disappears: an
//! ingest renaming its temp file into place, and GC unlinking a swept blob. Holding a
//! digest's flight is what makes "check the row, then touch the file" safe against the
//! other.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use crate::oci::digest::Digest;

/// How a flight ended, as seen by the processes waiting for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlightOutcome {
    /// The blob is now in the store with this size.
    Committed(u64),
    /// The writer failed or gave up; the text says why.
    Failed(String),
}

#[derive(Debug, Default)]
struct Flight {
    outcome: Mutex<Option<FlightOutcome>>,
    done: Condvar,
}

/// The table of digests being written or swept right now.
#[derive(Debug, Default)]
pub struct Flights {
    map: Mutex<BTreeMap<Digest, Arc<Flight>>>,
}

/// The result of claiming a digest.
#[derive(Debug)]
pub enum Claim {
    /// This caller holds the digest until the guard is dropped.
    Leader(FlightGuard),
    /// Another caller holds it; wait for its outcome.
    Follower(Waiter),
}

/// A handle on someone else's flight.
#[derive(Debug)]
pub struct Waiter {
    digest: Digest,
    flight: Arc<Flight>,
}

impl Waiter {
    /// The digest being waited for.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// Blocks until the leader commits or fails. Call it from a blocking context
    /// (`spawn_blocking` in async code).
    pub fn wait(self) -> FlightOutcome {
        let mut outcome = lock(&self.flight.outcome);
        loop {
            if let Some(outcome) = outcome.as_ref() {
                return outcome.clone();
            }
            outcome = self
                .flight
                .done
                .wait(outcome)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// The hold on one digest. Dropping it without [`FlightGuard::finish`] reports a failure to
/// the waiters ("writer went away"), so a panicking or cancelled writer never strands them.
#[derive(Debug)]
pub struct FlightGuard {
    digest: Digest,
    flight: Arc<Flight>,
    flights: Arc<Flights>,
}

impl FlightGuard {
    /// The digest held.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// Ends the flight with `outcome` and wakes every waiter.
    pub fn finish(self, outcome: FlightOutcome) {
        self.end(outcome);
    }

    fn end(&self, outcome: FlightOutcome) {
        // Remove from the table first: a waiter that wakes up and claims again must find
        // the slot free.
        lock(&self.flights.map).remove(&self.digest);
        let mut slot = lock(&self.flight.outcome);
        if slot.is_none() {
            *slot = Some(outcome);
        }
        self.flight.done.notify_all();
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.end(FlightOutcome::Failed("the writer went away".to_owned()));
    }
}

impl Flights {
    /// Claims `digest`: the leader's guard, or a waiter on the current leader.
    pub fn claim(self: &Arc<Self>, digest: Digest) -> Claim {
        let mut map = lock(&self.map);
        if let Some(flight) = map.get(&digest) {
            return Claim::Follower(Waiter {
                digest,
                flight: Arc::clone(flight),
            });
        }
        let flight = Arc::new(Flight::default());
        map.insert(digest, Arc::clone(&flight));
        Claim::Leader(FlightGuard {
            digest,
            flight,
            flights: Arc::clone(self),
        })
    }

    /// Claims `digest`, waiting for the current holder (if any) to finish first.
    pub fn claim_wait(self: &Arc<Self>, digest: Digest) -> FlightGuard {
        loop {
            match self.claim(digest) {
                Claim::Leader(guard) => return guard,
                Claim::Follower(waiter) => {
                    waiter.wait();
                }
            }
        }
    }

    /// Claims `digest` only if nobody holds it.
    pub fn try_claim(self: &Arc<Self>, digest: Digest) -> Option<FlightGuard> {
        match self.claim(digest) {
            Claim::Leader(guard) => Some(guard),
            Claim::Follower(_) => None,
        }
    }
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves its data valid.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn followers_get_the_leaders_outcome() {
        let flights = Arc::new(Flights::default());
        let digest = Digest::of(b"x");
        let Claim::Leader(guard) = flights.claim(digest) else {
            panic!("first claim must lead");
        };
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let Claim::Follower(waiter) = flights.claim(digest) else {
                    panic!("later claims must follow");
                };
                std::thread::spawn(move || waiter.wait())
            })
            .collect();
        guard.finish(FlightOutcome::Committed(7));
        for waiter in waiters {
            assert_eq!(waiter.join().unwrap(), FlightOutcome::Committed(7));
        }
        assert!(flights.try_claim(digest).is_some(), "slot is free again");
    }

    #[test]
    fn a_dropped_leader_fails_its_followers() {
        let flights = Arc::new(Flights::default());
        let digest = Digest::of(b"y");
        let guard = flights.try_claim(digest).unwrap();
        assert!(flights.try_claim(digest).is_none());
        let Claim::Follower(waiter) = flights.claim(digest) else {
            panic!("must follow");
        };
        drop(guard);
        assert!(matches!(waiter.wait(), FlightOutcome::Failed(_)));
    }
}
