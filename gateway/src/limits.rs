//! The gateway's abuse limits: its configured [`Limits`] and the limiters
//! that enforce them. The input rules themselves (ids, bodies) are
//! `chat_core::limits`, shared with the functions; a refusal becomes a
//! [`GatewayError`] in one place (`From<LimitError>`), so the same rule gives
//! the same code on the stream and on unary calls.
//!
//! Rates are GCRA limiters from `governor` (a rate and a burst), keyed by
//! user or source address; counts of what is open at once (streams per user,
//! connections per address) are [`Concurrency`] slots released on drop. Every
//! refusal is `RESOURCE_EXHAUSTED` and says which limit and when to retry.
//! Limits are per gateway: a user spread over `n` gateways gets up to `n`
//! times a rate (a global limit would cost a DynamoDB write per check).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, MonotonicClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::error::GatewayError;

/// A sustained rate and the burst allowed above it. A rate of 0 (or less)
/// turns the limit off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rate {
    pub(crate) per_sec: f64,
    pub(crate) burst: u32,
}

impl Rate {
    pub(crate) const fn new(per_sec: f64, burst: u32) -> Self {
        Self { per_sec, burst }
    }

    /// The governor quota, or `None` when the limit is off.
    fn quota(self) -> Option<Quota> {
        if !self.per_sec.is_finite() || self.per_sec <= 0.0 {
            return None;
        }
        // One cell every 1/rate seconds; at least a nanosecond apart.
        let period = Duration::from_secs_f64(1.0 / self.per_sec).max(Duration::from_nanos(1));
        let burst = NonZeroU32::new(self.burst.max(1)).unwrap_or(NonZeroU32::MIN);
        Some(Quota::with_period(period)?.allow_burst(burst))
    }

    fn describe(self, what: &str) -> String {
        format!("{what} rate limit of {} per second (burst {})", self.per_sec, self.burst.max(1))
    }
}

/// Every limit the gateway enforces, from its configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Limits {
    pub(crate) max_body_bytes: usize,
    pub(crate) max_conversations_per_connection: usize,
    /// Per user: sends, typing and added members share one budget.
    pub(crate) sends: Rate,
    /// Per user: join frames.
    pub(crate) joins: Rate,
    /// Per user: acks and reads (stream frames and `MarkRead`).
    pub(crate) receipts: Rate,
    /// Per user: new `Connect` streams.
    pub(crate) new_streams: Rate,
    /// Per user: `Connect` streams open at once (0: no limit).
    pub(crate) max_streams_per_user: usize,
    /// Per connection: client frames on its `Connect` streams.
    pub(crate) frames: Rate,
    /// Per source address: new connections.
    pub(crate) connections_per_address: Rate,
    /// Per source address: connections open at once (0: no limit).
    pub(crate) max_connections_per_address: usize,
    /// The longest a send waits for storage and the bus before it is
    /// answered `UNAVAILABLE`.
    pub(crate) send_deadline: Duration,
    /// How long a stream that was ended gets for its client to read the
    /// end before the connection is closed under it.
    pub(crate) stall_grace: Duration,
    /// How long a `seq` gap waits before the store is asked to settle it
    /// (its message delivered from there, or its seq passed over as void).
    pub(crate) gap_settle: Duration,
    /// A stream's acks and reads of one conversation become at most one
    /// DELIVERED and one READ receipt per this window (`coalesce`).
    pub(crate) receipt_window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: chat_core::limits::DEFAULT_MAX_BODY_BYTES,
            max_conversations_per_connection: 64,
            sends: Rate::new(20.0, 40),
            joins: Rate::new(10.0, 100),
            receipts: Rate::new(20.0, 100),
            new_streams: Rate::new(1.0, 20),
            max_streams_per_user: 16,
            frames: Rate::new(100.0, 200),
            connections_per_address: Rate::new(20.0, 100),
            max_connections_per_address: 256,
            send_deadline: Duration::from_secs(5),
            stall_grace: Duration::from_secs(10),
            gap_settle: Duration::from_millis(250),
            receipt_window: Duration::from_millis(250),
        }
    }
}

type Keyed<K, C> = RateLimiter<K, HashMapStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;
type Direct<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// A rate limit per key (a user, an address): refusals are
/// `RESOURCE_EXHAUSTED` naming the limit and when to retry.
pub(crate) struct KeyedLimit<K: Hash + Eq + Clone, C: Clock + Clone = MonotonicClock> {
    what: &'static str,
    rate: Rate,
    limiter: Option<Keyed<K, C>>,
    clock: C,
}

impl<K: Hash + Eq + Clone, C: Clock + Clone> std::fmt::Debug for KeyedLimit<K, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedLimit").field("what", &self.what).field("rate", &self.rate).finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone> KeyedLimit<K> {
    pub(crate) fn new(what: &'static str, rate: Rate) -> Self {
        Self::with_clock(what, rate, MonotonicClock)
    }
}

impl<K: Hash + Eq + Clone, C: Clock + Clone> KeyedLimit<K, C> {
    pub(crate) fn with_clock(what: &'static str, rate: Rate, clock: C) -> Self {
        let limiter = rate.quota().map(|quota| RateLimiter::hashmap_with_clock(quota, clock.clone()));
        Self { what, rate, limiter, clock }
    }

    /// Takes one cell of `key`'s budget, or says when to retry.
    pub(crate) fn check(&self, key: &K) -> Result<(), GatewayError> {
        let Some(limiter) = &self.limiter else { return Ok(()) };
        limiter
            .check_key(key)
            .map_err(|not_until| exhausted(&self.rate.describe(self.what), not_until.wait_time_from(self.clock.now())))
    }

    /// Forgets keys whose budget has refilled (indistinguishable from a
    /// fresh one), so memory follows recent activity, not every key seen.
    pub(crate) fn purge_idle(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Keys currently remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }
}

/// A rate limit on one thing (a connection's frames).
pub(crate) struct DirectLimit<C: Clock + Clone = MonotonicClock> {
    what: &'static str,
    rate: Rate,
    limiter: Option<Direct<C>>,
    clock: C,
}

impl<C: Clock + Clone> std::fmt::Debug for DirectLimit<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectLimit").field("what", &self.what).field("rate", &self.rate).finish_non_exhaustive()
    }
}

impl DirectLimit {
    pub(crate) fn new(what: &'static str, rate: Rate) -> Self {
        Self::with_clock(what, rate, MonotonicClock)
    }
}

impl<C: Clock + Clone> DirectLimit<C> {
    pub(crate) fn with_clock(what: &'static str, rate: Rate, clock: C) -> Self {
        let limiter = rate.quota().map(|quota| RateLimiter::direct_with_clock(quota, clock.clone()));
        Self { what, rate, limiter, clock }
    }

    pub(crate) fn check(&self) -> Result<(), GatewayError> {
        let Some(limiter) = &self.limiter else { return Ok(()) };
        limiter
            .check()
            .map_err(|not_until| exhausted(&self.rate.describe(self.what), not_until.wait_time_from(self.clock.now())))
    }
}

fn exhausted(limit: &str, wait: Duration) -> GatewayError {
    // Rounded up: retrying at the stated time must succeed.
    let ms = wait.as_nanos().div_ceil(1_000_000).max(1);
    GatewayError::ResourceExhausted(format!("{limit} exceeded; retry in {ms} ms"))
}

/// One send's deadline on its dependencies (storage, then the bus), from
/// when it arrived: past it the send is answered `UNAVAILABLE` whatever it
/// was waiting for. A send's `UNAVAILABLE` tells the client to retry with the
/// same `client_message_id`, which finds the first attempt's identity if it
/// had got that far.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SendDeadline {
    at: tokio::time::Instant,
    total: Duration,
}

impl SendDeadline {
    pub(crate) fn start(total: Duration) -> Self {
        Self { at: tokio::time::Instant::now() + total, total }
    }

    /// `work`'s outcome if it comes before the deadline; `UNAVAILABLE`
    /// otherwise.
    pub(crate) async fn bound<T>(
        self,
        work: impl std::future::Future<Output = Result<T, GatewayError>>,
    ) -> Result<T, GatewayError> {
        match tokio::time::timeout_at(self.at, work).await {
            Ok(Err(GatewayError::Unavailable(why))) => {
                Err(GatewayError::Unavailable(format!("{why}; retry with the same client_message_id")))
            }
            Ok(outcome) => outcome,
            Err(_) => Err(GatewayError::Unavailable(format!(
                "storage and the bus did not answer this send within {} ms; retry with the same client_message_id",
                self.total.as_millis()
            ))),
        }
    }
}

/// How many of something are open per key at once (streams of a user,
/// connections of an address). A key's entry exists only while it holds a
/// slot, so memory follows what is open.
pub(crate) struct Concurrency<K: Hash + Eq + Clone + Send + 'static> {
    what: &'static str,
    max: usize,
    open: Arc<Mutex<HashMap<K, usize>>>,
}

impl<K: Hash + Eq + Clone + Send + 'static> std::fmt::Debug for Concurrency<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Concurrency").field("what", &self.what).field("max", &self.max).finish_non_exhaustive()
    }
}

/// One open thing; dropping it frees its slot.
pub(crate) struct Slot<K: Hash + Eq + Clone + Send + 'static> {
    key: Option<K>,
    open: Arc<Mutex<HashMap<K, usize>>>,
}

impl<K: Hash + Eq + Clone + Send + 'static> std::fmt::Debug for Slot<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone + Send + 'static> Drop for Slot<K> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&key);
            }
        }
    }
}

impl<K: Hash + Eq + Clone + Send + 'static> Concurrency<K> {
    /// At most `max` open per key; 0 means no limit (nothing is counted).
    pub(crate) fn new(what: &'static str, max: usize) -> Self {
        Self { what, max, open: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// A slot for `key`, or `RESOURCE_EXHAUSTED` when it holds `max`.
    pub(crate) fn acquire(&self, key: &K) -> Result<Slot<K>, GatewayError> {
        if self.max == 0 {
            return Ok(Slot { key: None, open: self.open.clone() });
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(key.clone()).or_insert(0);
        if *n >= self.max {
            return Err(GatewayError::ResourceExhausted(format!(
                "{} {} are open, the limit; close one and retry",
                self.max, self.what
            )));
        }
        *n += 1;
        Ok(Slot { key: Some(key.clone()), open: self.open.clone() })
    }

    #[cfg(test)]
    fn keys(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// The per-user limits every connection of this gateway shares.
#[derive(Debug)]
pub(crate) struct UserLimits {
    pub(crate) sends: KeyedLimit<String>,
    pub(crate) joins: KeyedLimit<String>,
    pub(crate) receipts: KeyedLimit<String>,
    pub(crate) new_streams: KeyedLimit<String>,
    pub(crate) open_streams: Concurrency<String>,
}

impl UserLimits {
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            sends: KeyedLimit::new("send", limits.sends),
            joins: KeyedLimit::new("join", limits.joins),
            receipts: KeyedLimit::new("ack/read", limits.receipts),
            new_streams: KeyedLimit::new("new stream", limits.new_streams),
            open_streams: Concurrency::new("streams of this user", limits.max_streams_per_user),
        }
    }

    /// A new stream of `user`: within the rate of new streams and the number
    /// open at once; the slot is held for the stream's life.
    pub(crate) fn open_stream(&self, user: &str) -> Result<Slot<String>, GatewayError> {
        let user = user.to_owned();
        self.new_streams.check(&user)?;
        self.open_streams.acquire(&user)
    }

    /// A send (or typing frame, or added member) of `user`.
    pub(crate) fn send(&self, user: &str) -> Result<(), GatewayError> {
        self.sends.check(&user.to_owned())
    }

    pub(crate) fn join(&self, user: &str) -> Result<(), GatewayError> {
        self.joins.check(&user.to_owned())
    }

    /// An ack or a read of `user`.
    pub(crate) fn receipt(&self, user: &str) -> Result<(), GatewayError> {
        self.receipts.check(&user.to_owned())
    }

    /// Forgets users whose budgets have refilled.
    pub(crate) fn purge_idle(&self) {
        for limit in [&self.sends, &self.joins, &self.receipts, &self.new_streams] {
            limit.purge_idle();
        }
    }
}

/// The per-address limits on new connections.
#[derive(Debug)]
pub(crate) struct AddressLimits {
    rate: KeyedLimit<IpAddr>,
    open: Concurrency<IpAddr>,
    /// Per connection, for each connection admitted.
    frames: Rate,
}

impl AddressLimits {
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            rate: KeyedLimit::new("new connections per source address", limits.connections_per_address),
            open: Concurrency::new("connections from your address", limits.max_connections_per_address),
            frames: limits.frames,
        }
    }

    /// Admits a connection from `address` (none when the transport has no
    /// peer address: nothing to key on), or says why not. The slot is held
    /// for the connection's life.
    pub(crate) fn admit(&self, address: Option<IpAddr>) -> Result<Option<Slot<IpAddr>>, GatewayError> {
        let Some(address) = address else { return Ok(None) };
        self.rate.check(&address)?;
        self.open.acquire(&address).map(Some)
    }

    /// The frame limit of one new connection.
    pub(crate) fn frame_limit(&self) -> DirectLimit {
        DirectLimit::new("frames per connection", self.frames)
    }

    pub(crate) fn purge_idle(&self) {
        self.rate.purge_idle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use tonic::Code;

    fn refusal(r: Result<(), GatewayError>) -> (Code, String) {
        let status = tonic::Status::from(r.expect_err("should be refused"));
        (status.code(), status.message().to_owned())
    }

    #[test]
    fn keyed_limit_allows_the_burst_then_the_rate_per_key() {
        let clock = FakeRelativeClock::default();
        let limit = KeyedLimit::with_clock("join", Rate::new(2.0, 3), clock.clone());
        let alice = "alice".to_owned();
        for _ in 0..3 {
            limit.check(&alice).expect("within the burst");
        }
        let (code, message) = refusal(limit.check(&alice));
        assert_eq!(code, Code::ResourceExhausted);
        assert!(message.contains("join rate limit of 2 per second (burst 3)"), "{message}");
        assert!(message.contains("retry in 500 ms"), "{message}");
        limit.check(&"bob".to_owned()).expect("other users have their own budget");
        clock.advance(Duration::from_millis(499));
        assert!(limit.check(&alice).is_err(), "not yet");
        clock.advance(Duration::from_millis(1));
        limit.check(&alice).expect("one cell after 1/rate");
        assert!(limit.check(&alice).is_err());
        // Refill never exceeds the burst.
        clock.advance(Duration::from_secs(60));
        for _ in 0..3 {
            limit.check(&alice).expect("burst again");
        }
        assert!(limit.check(&alice).is_err());
    }

    #[test]
    fn idle_keys_are_purged() {
        let clock = FakeRelativeClock::default();
        let limit = KeyedLimit::with_clock("send", Rate::new(1.0, 2), clock.clone());
        for user in ["a", "b", "c"] {
            limit.check(&user.to_owned()).expect("ok");
        }
        assert_eq!(limit.len(), 3);
        limit.purge_idle();
        assert_eq!(limit.len(), 3, "budgets not yet refilled are kept");
        // Refilled after one interval; governor keeps a key one more.
        clock.advance(Duration::from_secs(2));
        limit.purge_idle();
        assert_eq!(limit.len(), 0, "refilled budgets are forgotten");
    }

    #[test]
    fn a_zero_rate_is_no_limit() {
        let limit = KeyedLimit::new("join", Rate::new(0.0, 1));
        for _ in 0..10_000 {
            limit.check(&"alice".to_owned()).expect("unlimited");
        }
        assert_eq!(limit.len(), 0);
        let direct = DirectLimit::new("frames", Rate::new(-1.0, 0));
        for _ in 0..10_000 {
            direct.check().expect("unlimited");
        }
        assert!(Rate::new(f64::NAN, 1).quota().is_none());
    }

    #[test]
    fn direct_limit_counts_every_frame() {
        let clock = FakeRelativeClock::default();
        let frames = DirectLimit::with_clock("frames per connection", Rate::new(100.0, 5), clock.clone());
        for _ in 0..5 {
            frames.check().expect("burst");
        }
        let (code, message) = refusal(frames.check());
        assert_eq!(code, Code::ResourceExhausted);
        assert!(
            message.contains("frames per connection rate limit") && message.contains("retry in 10 ms"),
            "{message}"
        );
        clock.advance(Duration::from_millis(10));
        frames.check().expect("refilled");
    }

    #[test]
    fn slow_rates_round_the_wait_up() {
        let clock = FakeRelativeClock::default();
        let limit = KeyedLimit::with_clock("send", Rate::new(3.0, 1), clock);
        limit.check(&1u8).expect("first");
        let (_, message) = refusal(limit.check(&1u8));
        assert!(message.contains("retry in 334 ms"), "{message}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_send_deadline_bounds_everything_it_covers() {
        let deadline = SendDeadline::start(Duration::from_secs(5));
        let started = tokio::time::Instant::now();
        let quick = deadline.bound(async { Ok::<_, GatewayError>(7) }).await;
        assert_eq!(quick, Ok(7));
        tokio::time::sleep(Duration::from_secs(3)).await;
        // The second step gets only what is left of the one deadline.
        let hung = deadline.bound(std::future::pending::<Result<(), GatewayError>>()).await;
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        let err = hung.expect_err("timed out");
        assert_eq!(err.code(), Code::Unavailable);
        assert!(err.to_string().contains("within 5000 ms; retry with the same client_message_id"), "{err}");
        let failed = SendDeadline::start(Duration::from_secs(1))
            .bound(async { Err::<(), _>(GatewayError::Unavailable("down".into())) });
        assert_eq!(failed.await, Err(GatewayError::Unavailable("down; retry with the same client_message_id".into())));
        let refused = SendDeadline::start(Duration::from_secs(1))
            .bound(async { Err::<(), _>(GatewayError::PermissionDenied("no".into())) });
        assert_eq!(refused.await, Err(GatewayError::PermissionDenied("no".into())));
    }

    #[test]
    fn concurrency_counts_open_slots_and_forgets_closed_keys() {
        let streams = Concurrency::new("streams of this user", 2);
        let alice = "alice".to_owned();
        let first = streams.acquire(&alice).expect("1");
        let second = streams.acquire(&alice).expect("2");
        let err = streams.acquire(&alice).expect_err("3 is over");
        assert_eq!(err.code(), Code::ResourceExhausted);
        assert!(err.to_string().contains("2 streams of this user are open"), "{err}");
        let _bob = streams.acquire(&"bob".to_owned()).expect("per key");
        drop(first);
        let third = streams.acquire(&alice).expect("a slot was freed");
        drop((second, third));
        assert_eq!(streams.keys(), 1, "only bob holds slots");
        let unlimited = Concurrency::new("x", 0);
        let held: Vec<_> = (0..1000).map(|_| unlimited.acquire(&alice).expect("no limit")).collect();
        assert_eq!(unlimited.keys(), 0);
        drop(held);
    }

    #[test]
    fn user_streams_are_limited_by_rate_and_by_count() {
        let limits = Limits { new_streams: Rate::new(0.001, 3), max_streams_per_user: 2, ..Limits::default() };
        let users = UserLimits::new(&limits);
        let a = users.open_stream("alice").expect("1");
        let _b = users.open_stream("alice").expect("2");
        assert!(users.open_stream("alice").expect_err("count").to_string().contains("open"));
        drop(a);
        // The refused attempt spent a cell too: the rate counts attempts.
        let err = users.open_stream("alice").expect_err("rate");
        assert!(err.to_string().contains("new stream rate limit"), "{err}");
    }

    #[test]
    fn addresses_are_admitted_by_rate_and_count() {
        let limits = Limits {
            connections_per_address: Rate::new(0.001, 2),
            max_connections_per_address: 1,
            ..Limits::default()
        };
        let addresses = AddressLimits::new(&limits);
        let here: IpAddr = [127, 0, 0, 1].into();
        let there: IpAddr = [10, 0, 0, 1].into();
        let held = addresses.admit(Some(here)).expect("first").expect("counted");
        let err = addresses.admit(Some(here)).expect_err("one open at once");
        assert!(err.to_string().contains("connections from your address"), "{err}");
        assert!(addresses.admit(Some(there)).is_ok());
        drop(held);
        let err = addresses.admit(Some(here)).expect_err("the burst of 2 is spent");
        assert!(err.to_string().contains("new connections per source address"), "{err}");
        assert!(addresses.admit(None).expect("no address").is_none());
    }
}
