//! The gateway's abuse limits: its configured [`Limits`] and the per-user
//! token bucket. The input rules themselves (ids, bodies) are
//! `chat_core::limits`, shared with the functions; a refusal becomes a
//! [`GatewayError`] in one place (`From<LimitError>`), so the same rule gives
//! the same code on the stream and on unary calls.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::GatewayError;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Limits {
    pub(crate) max_body_bytes: usize,
    pub(crate) max_conversations_per_connection: usize,
    pub(crate) send_rate_per_sec: f64,
    pub(crate) send_burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: chat_core::limits::DEFAULT_MAX_BODY_BYTES,
            max_conversations_per_connection: 64,
            send_rate_per_sec: 20.0,
            send_burst: 40,
        }
    }
}

/// A token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(rate: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self { rate: rate.max(0.0), burst, tokens: burst, last: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
    }

    /// Takes one token, or says how long until one is available.
    pub(crate) fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        if self.rate <= 0.0 {
            return Err(Duration::MAX);
        }
        Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
    }

    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// Per-user send limits shared by all of a user's connections on this
/// gateway. (Limits are per gateway: a user spread over `n` gateways gets up
/// to `n` times the rate. A global limit would cost a DynamoDB write per send.)
#[derive(Debug)]
pub(crate) struct RateLimiter {
    rate: f64,
    burst: u32,
    buckets: Mutex<HashMap<String, TokenBucket>>,
}

impl RateLimiter {
    pub(crate) fn new(limits: &Limits) -> Self {
        Self { rate: limits.send_rate_per_sec, burst: limits.send_burst, buckets: Mutex::new(HashMap::new()) }
    }

    pub(crate) fn check(&self, user: &str, now: Instant) -> Result<(), GatewayError> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(user.to_owned()).or_insert_with(|| TokenBucket::new(self.rate, self.burst, now));
        bucket.try_take(now).map_err(|wait| {
            GatewayError::ResourceExhausted(format!(
                "send rate limit of {} per second (burst {}) exceeded; retry in {} ms",
                self.rate,
                self.burst,
                wait.as_millis().min(u128::from(u32::MAX))
            ))
        })
    }

    /// Forgets users whose bucket has refilled, so memory follows activity.
    pub(crate) fn purge_idle(&self, now: Instant) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        buckets.retain(|_, bucket| !bucket.is_full(now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn code(r: Result<(), GatewayError>) -> Code {
        tonic::Status::from(r.expect_err("should fail")).code()
    }

    #[test]
    fn bucket_allows_burst_then_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(2.0, 3, start);
        for _ in 0..3 {
            assert!(bucket.try_take(start).is_ok());
        }
        let wait = bucket.try_take(start).expect_err("empty");
        assert!(wait <= Duration::from_millis(500) && wait > Duration::from_millis(400));
        assert!(bucket.try_take(start + Duration::from_millis(500)).is_ok());
        assert!(bucket.try_take(start + Duration::from_millis(500)).is_err());
        // Refill never exceeds the burst.
        let later = start + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(bucket.try_take(later).is_ok());
        }
        assert!(bucket.try_take(later).is_err());
    }

    #[test]
    fn limiter_is_per_user_and_purges_idle_users() {
        let limits = Limits { send_rate_per_sec: 1.0, send_burst: 1, ..Limits::default() };
        let limiter = RateLimiter::new(&limits);
        let now = Instant::now();
        assert!(limiter.check("alice", now).is_ok());
        assert_eq!(code(limiter.check("alice", now)), Code::ResourceExhausted);
        assert!(limiter.check("bob", now).is_ok());
        limiter.purge_idle(now + Duration::from_secs(5));
        assert!(limiter.buckets.lock().expect("lock").is_empty());
    }
}
