//! Client-side rate limiting of requests to the API server: a token bucket (pure) and a
//! tower layer that holds each request until the bucket grants it.
//!
//! The API server protects itself (API Priority and Fairness answers 429 when a flow
//! exceeds its share); this limit is the client's own backstop, as client-go's `QPS` and
//! `Burst`, so that a runaway loop in the controller cannot flood a shared API server.
//! A watch is one request for as long as it streams, so only its (re)connects count.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

/// Requests per second and the burst above it; `qps == 0` means no limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Sustained requests per second.
    pub qps: f64,
    /// Requests that may go at once after a quiet spell.
    pub burst: u32,
}

impl Rate {
    /// Whether this rate limits anything.
    pub fn is_limited(&self) -> bool {
        self.qps > 0.0
    }
}

/// A token bucket: `burst` tokens, refilled at `qps` per second; a request takes one.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: Rate,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(rate: Rate, now: Instant) -> Self {
        Self {
            rate,
            tokens: f64::from(rate.burst.max(1)),
            last: now,
        }
    }

    /// Takes a token at `now`, or says how long until one is there.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        if !self.rate.is_limited() {
            return Ok(());
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        let capacity = f64::from(self.rate.burst.max(1));
        self.tokens = (self.tokens + elapsed * self.rate.qps).min(capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate.qps))
        }
    }
}

/// The layer that rate-limits a client's requests at `rate`.
#[derive(Clone, Copy, Debug)]
pub struct ThrottleLayer {
    rate: Rate,
}

impl ThrottleLayer {
    /// A layer limiting requests to `rate`.
    pub fn new(rate: Rate) -> Self {
        Self { rate }
    }
}

impl<S> Layer<S> for ThrottleLayer {
    type Service = Throttle<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Throttle {
            inner,
            bucket: TokenBucket::new(self.rate, Instant::now()),
            wait: None,
            granted: false,
        }
    }
}

/// A service whose readiness waits for a token. kube's client serialises calls through one
/// buffer worker, so one bucket here limits every request of the client.
pub struct Throttle<S> {
    inner: S,
    bucket: TokenBucket,
    wait: Option<Pin<Box<Sleep>>>,
    granted: bool,
}

impl<S, R> Service<R> for Throttle<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        while !self.granted {
            if let Some(wait) = self.wait.as_mut() {
                ready!(wait.as_mut().poll(cx));
                self.wait = None;
            }
            match self.bucket.take(Instant::now()) {
                Ok(()) => self.granted = true,
                Err(pause) => self.wait = Some(Box::pin(tokio::time::sleep(pause))),
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        // Each grant is for one request.
        self.granted = false;
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn rate(qps: f64, burst: u32) -> Rate {
        Rate { qps, burst }
    }

    #[test]
    fn a_full_bucket_lets_a_burst_through_then_paces_at_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(rate(10.0, 3), start);
        for _ in 0..3 {
            assert_eq!(bucket.take(start), Ok(()));
        }
        let wait = bucket.take(start).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        assert_eq!(bucket.take(start + Duration::from_millis(100)), Ok(()));
        assert!(bucket.take(start + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn a_quiet_spell_refills_no_more_than_the_burst() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(rate(100.0, 2), start);
        let later = start + Duration::from_secs(60);
        assert_eq!(bucket.take(later), Ok(()));
        assert_eq!(bucket.take(later), Ok(()));
        assert!(bucket.take(later).is_err());
    }

    #[test]
    fn zero_qps_limits_nothing() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(rate(0.0, 0), start);
        for _ in 0..10_000 {
            assert_eq!(bucket.take(start), Ok(()));
        }
    }

    #[tokio::test]
    async fn the_service_holds_requests_beyond_the_burst() {
        use tower::ServiceExt;
        let mut service =
            ThrottleLayer::new(rate(100.0, 2)).layer(tower::service_fn(|n: u32| async move {
                Ok::<u32, std::convert::Infallible>(n)
            }));
        let start = Instant::now();
        for n in 0..12 {
            assert_eq!(service.ready().await.unwrap().call(n).await.unwrap(), n);
        }
        // Two at once, then ten at 100 per second: at least 100 ms (a slow machine only
        // makes it longer, so there is no upper bound).
        let took = Instant::now() - start;
        assert!(took >= Duration::from_millis(95), "{took:?}");
    }
}
