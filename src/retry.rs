//! Sending a registry request again after a transient failure, with doubling waits (async:
//! it sleeps between attempts).
//!
//! Shared by the one-shot commands that talk to a registry from a pod (`kiln index push`,
//! `kiln context receive`): a registry restart or a load balancer's hiccup should cost a
//! few seconds, not a Build. Each caller keeps its own error type and says, through
//! [`Transient`], which of its failures are worth another attempt (no connection,
//! time-out, 429, 5xx) and how to record the number of attempts made.

use std::fmt;
use std::future::Future;
use std::time::Duration;

/// How often, and how patiently, a request that failed transiently (no connection,
/// time-out, 429, 5xx) is sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all, the first included (at least 1).
    pub attempts: u32,
    /// The wait before the second attempt; each later wait doubles.
    pub first_delay: Duration,
}

impl Default for Retry {
    /// Four attempts over about 3.5 s of waiting (0.5 s, 1 s, 2 s): enough to ride out a
    /// registry restart or a load balancer's hiccup, short next to a build.
    fn default() -> Self {
        Self {
            attempts: 4,
            first_delay: Duration::from_millis(500),
        }
    }
}

/// A failure that may or may not go away when the request is sent again.
pub trait Transient: Sized {
    /// Whether sending the request again may succeed.
    fn is_transient(&self) -> bool;

    /// This failure as the last of `attempts` attempts (for errors that report how many
    /// were made); unchanged for errors that do not.
    fn after_attempts(self, attempts: u32) -> Self;
}

/// Runs `attempt` until it succeeds, fails definitely, or has failed transiently
/// `retry.attempts` times, waiting longer after each transient failure. `what` names the
/// request in the warning logged before each new attempt.
pub async fn retrying<T, E, F, Fut>(retry: Retry, what: &str, mut attempt: F) -> Result<T, E>
where
    E: Transient + fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delay = retry.first_delay;
    let mut made = 1;
    loop {
        match attempt().await {
            Err(err) if err.is_transient() => {
                if made >= retry.attempts.max(1) {
                    return Err(err.after_attempts(made));
                }
                tracing::warn!(request = what, attempt = made, error = %err, retry_in = ?delay, "transient registry failure");
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2);
                made += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug, PartialEq, Eq)]
    enum Failure {
        Busy { attempts: u32 },
        Gone,
    }

    impl fmt::Display for Failure {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{self:?}")
        }
    }

    impl Transient for Failure {
        fn is_transient(&self) -> bool {
            matches!(self, Self::Busy { .. })
        }

        fn after_attempts(self, attempts: u32) -> Self {
            match self {
                Self::Busy { .. } => Self::Busy { attempts },
                other => other,
            }
        }
    }

    const FAST: Retry = Retry {
        attempts: 3,
        first_delay: Duration::from_millis(1),
    };

    #[tokio::test]
    async fn transient_failures_are_retried_until_success_or_the_last_attempt() {
        let calls = AtomicU32::new(0);
        let result = retrying(FAST, "test", || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err(Failure::Busy { attempts: 1 }),
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(result, Ok(2));

        calls.store(0, Ordering::SeqCst);
        let result: Result<(), _> = retrying(FAST, "test", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Failure::Busy { attempts: 1 })
        })
        .await;
        assert_eq!(result, Err(Failure::Busy { attempts: 3 }));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_definite_failure_ends_at_once() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = retrying(FAST, "test", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Failure::Gone)
        })
        .await;
        assert_eq!(result, Err(Failure::Gone));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
