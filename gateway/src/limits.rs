//! Input validation and abuse limits, as plain functions and types.
//!
//! Every check returns a [`GatewayError`] whose variant fixes the gRPC status
//! the client sees, so the same rule gives the same code on the stream and on
//! unary calls.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::GatewayError;

/// Longest conversation, user or client message id accepted.
pub const MAX_ID_LEN: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_conversations_per_connection: usize,
    pub send_rate_per_sec: f64,
    pub send_burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_body_bytes: 4096, max_conversations_per_connection: 64, send_rate_per_sec: 20.0, send_burst: 40 }
    }
}

/// Conversation and user ids: 1..=128 of `A-Z a-z 0-9 _ - . : @ +`. The set
/// is narrow on purpose: ids become DynamoDB keys, SNS attribute values and
/// SQS-visible strings, and external identities (`whatsapp:+5511...`) fit.
fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '@' | '+')
}

fn check_id(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if value.len() > MAX_ID_LEN {
        return Err(format!("{what} is {} bytes long; the limit is {MAX_ID_LEN}", value.len()));
    }
    if let Some(bad) = value.chars().find(|c| !is_id_char(*c)) {
        return Err(format!("{what} contains {bad:?}; allowed are letters, digits and _ - . : @ +"));
    }
    Ok(())
}

pub fn conversation_id(value: &str) -> Result<(), GatewayError> {
    check_id("conversation_id", value).map_err(GatewayError::InvalidArgument)
}

/// The `sub` of an otherwise valid token must also be a usable user id, and
/// not an external identity: those are reached through their channel and
/// never connect.
pub fn user_id(value: &str) -> Result<(), GatewayError> {
    check_id("token subject (user id)", value).map_err(GatewayError::Unauthenticated)?;
    if chat_proto::external::ExternalId::has_channel_prefix(value) {
        return Err(GatewayError::Unauthenticated(format!(
            "token subject {value:?} names an external identity; external members cannot connect"
        )));
    }
    Ok(())
}

/// A member to add: a user id or an external identity.
pub fn member_id(value: &str) -> Result<(), GatewayError> {
    check_id("member_id", value).map_err(GatewayError::InvalidArgument)
}

pub fn message_id(value: &str) -> Result<(), GatewayError> {
    check_id("message_id", value).map_err(GatewayError::InvalidArgument)
}

/// Empty means "not idempotent"; otherwise 1..=128 printable characters.
pub fn client_message_id(value: &str) -> Result<(), GatewayError> {
    if value.len() > MAX_ID_LEN {
        return Err(GatewayError::InvalidArgument(format!(
            "client_message_id is {} bytes long; the limit is {MAX_ID_LEN}",
            value.len()
        )));
    }
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(GatewayError::InvalidArgument(
            "client_message_id contains whitespace or control characters".into(),
        ));
    }
    Ok(())
}

pub fn body(value: &str, limits: &Limits) -> Result<(), GatewayError> {
    if value.trim().is_empty() {
        return Err(GatewayError::InvalidArgument("message body is empty".into()));
    }
    if value.len() > limits.max_body_bytes {
        return Err(GatewayError::ResourceExhausted(format!(
            "message body is {} bytes; the limit is {} bytes",
            value.len(),
            limits.max_body_bytes
        )));
    }
    Ok(())
}

/// A token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self { rate: rate.max(0.0), burst, tokens: burst, last: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
    }

    /// Takes one token, or says how long until one is available.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
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
pub struct RateLimiter {
    rate: f64,
    burst: u32,
    buckets: Mutex<HashMap<String, TokenBucket>>,
}

impl RateLimiter {
    pub fn new(limits: &Limits) -> Self {
        Self { rate: limits.send_rate_per_sec, burst: limits.send_burst, buckets: Mutex::new(HashMap::new()) }
    }

    pub fn check(&self, user: &str, now: Instant) -> Result<(), GatewayError> {
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
    pub fn purge_idle(&self, now: Instant) {
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
    fn ids_accept_the_documented_alphabet() {
        for ok in ["room1", "a", "whatsapp:+5511999990000", "team.eng_1-x@corp", &"x".repeat(128)] {
            assert!(conversation_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "has space", "tab\t", "emoji😀", "slash/x", &"x".repeat(129)] {
            assert_eq!(code(conversation_id(bad)), Code::InvalidArgument, "{bad}");
        }
        assert_eq!(code(user_id("")), Code::Unauthenticated);
    }

    #[test]
    fn client_message_id_may_be_empty_but_not_odd() {
        assert!(client_message_id("").is_ok());
        assert!(client_message_id("c-123_ü").is_ok());
        assert_eq!(code(client_message_id("a b")), Code::InvalidArgument);
        assert_eq!(code(client_message_id(&"x".repeat(129))), Code::InvalidArgument);
    }

    #[test]
    fn body_must_be_non_blank_and_within_limit() {
        let limits = Limits { max_body_bytes: 8, ..Limits::default() };
        assert!(body("hello", &limits).is_ok());
        assert!(body("12345678", &limits).is_ok());
        assert_eq!(code(body("", &limits)), Code::InvalidArgument);
        assert_eq!(code(body(" \n\t", &limits)), Code::InvalidArgument);
        assert_eq!(code(body("123456789", &limits)), Code::ResourceExhausted);
        // The limit is in bytes, not characters.
        assert_eq!(code(body("ééééé", &limits)), Code::ResourceExhausted);
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
