//! Coalescing a stream's receipts: its acks and reads of one conversation
//! become at most one DELIVERED and one READ receipt per window.
//!
//! A client acknowledges as it displays, often per message; each receipt
//! published costs an SNS publish, a delivery to every gateway holding a
//! member and a write by `persist` (a READ also a write here). Within a
//! window only the newest position matters, since receipts are cumulative.
//!
//! Leading edge and trailing edge: a receipt for a key (conversation,
//! status) that has not been reported within the window goes out at once,
//! so a lone ack costs no latency; later ones within the window wait for
//! its end and go out as one, carrying the newest seq. Nothing is dropped:
//! what waits is reported when the window ends, or when the stream ends.

use std::collections::HashMap;
use std::time::Duration;

use chat_core::envelope::ReceiptStatus;
use tokio::time::Instant;

/// What a receipt is coalesced by.
pub(crate) type Key = (String, ReceiptStatus);

/// What to do with a receipt just offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    /// Report it now (then call [`Coalescer::reported`]).
    Now,
    /// It waits, merged with what else waits, until the window's end.
    Later,
    /// It moves nothing: at or below what was reported or waits already.
    Nothing,
}

#[derive(Debug, Default)]
struct Slot {
    /// The highest seq reported, and when.
    reported: u64,
    reported_at: Option<Instant>,
    /// The highest seq waiting for the window to end, if any.
    waiting: Option<u64>,
}

/// One stream's receipts being coalesced.
#[derive(Debug)]
pub(crate) struct Coalescer {
    window: Duration,
    slots: HashMap<Key, Slot>,
}

impl Coalescer {
    /// A zero window reports every receipt at once.
    pub(crate) fn new(window: Duration) -> Self {
        Self { window, slots: HashMap::new() }
    }

    /// Whether a receipt for `key` up to `seq` would move anything: above
    /// what was reported and what waits.
    pub(crate) fn moves(&self, key: &Key, seq: u64) -> bool {
        self.slots.get(key).is_none_or(|slot| seq > slot.reported.max(slot.waiting.unwrap_or(0)))
    }

    /// A receipt for `key` up to `seq`, at `now`.
    pub(crate) fn offer(&mut self, key: &Key, seq: u64, now: Instant) -> Offer {
        if !self.moves(key, seq) {
            return Offer::Nothing;
        }
        let window = self.window;
        let slot = self.slots.entry(key.clone()).or_default();
        let open = slot.reported_at.is_some_and(|at| now < at + window);
        if open {
            slot.waiting = Some(seq);
            Offer::Later
        } else {
            Offer::Now
        }
    }

    /// `key` was reported up to `seq` at `now`: its window starts.
    pub(crate) fn reported(&mut self, key: &Key, seq: u64, now: Instant) {
        let slot = self.slots.entry(key.clone()).or_default();
        slot.reported = slot.reported.max(seq);
        slot.reported_at = Some(now);
        if slot.waiting.is_some_and(|w| w <= slot.reported) {
            slot.waiting = None;
        }
    }

    /// A report of what waited failed: it waits for the next window.
    pub(crate) fn retry(&mut self, key: &Key, seq: u64, now: Instant) {
        let slot = self.slots.entry(key.clone()).or_default();
        slot.reported_at = Some(now);
        if seq > slot.reported {
            slot.waiting = Some(slot.waiting.unwrap_or(0).max(seq));
        }
    }

    /// When the earliest waiting receipt is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.slots
            .values()
            .filter(|s| s.waiting.is_some())
            .map(|s| s.reported_at.map_or_else(Instant::now, |at| at + self.window))
            .min()
    }

    /// The waiting receipts due at `now` (all of them with `all`, as a
    /// stream ends), taken out of waiting: report each, then call
    /// [`Self::reported`] (or [`Self::retry`]).
    pub(crate) fn due(&mut self, now: Instant, all: bool) -> Vec<(Key, u64)> {
        let window = self.window;
        let mut due = Vec::new();
        for (key, slot) in &mut self.slots {
            let ready = all || slot.reported_at.is_none_or(|at| now >= at + window);
            if ready && let Some(seq) = slot.waiting.take() {
                due.push((key.clone(), seq));
            }
        }
        // READs first: a DELIVERED of the same conversation below one is
        // then dropped by every stream (receipts never go backwards).
        due.sort_by_key(|((conversation, status), _)| (conversation.clone(), *status != ReceiptStatus::Read));
        due
    }

    /// Forgets a conversation this stream left (what waits is dropped: a
    /// former member's position no longer matters to the others).
    pub(crate) fn forget(&mut self, conversation_id: &str) {
        self.slots.retain(|(c, _), _| c != conversation_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_millis(250);

    fn key(status: ReceiptStatus) -> Key {
        ("c".to_owned(), status)
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_receipt_goes_at_once_and_a_burst_becomes_one_more_at_the_windows_end() {
        let mut c = Coalescer::new(W);
        let delivered = key(ReceiptStatus::Delivered);
        let t0 = Instant::now();
        assert_eq!(c.offer(&delivered, 1, t0), Offer::Now);
        c.reported(&delivered, 1, t0);
        for seq in 2..=9 {
            assert_eq!(c.offer(&delivered, seq, t0 + Duration::from_millis(10 * seq)), Offer::Later);
        }
        assert_eq!(c.offer(&delivered, 5, t0 + Duration::from_millis(100)), Offer::Nothing, "already waiting");
        assert_eq!(c.next_due(), Some(t0 + W));
        assert!(c.due(t0 + Duration::from_millis(249), false).is_empty(), "not before the window ends");
        assert_eq!(c.due(t0 + W, false), vec![(delivered.clone(), 9)]);
        c.reported(&delivered, 9, t0 + W);
        assert_eq!(c.next_due(), None);
        // The next window starts from that report.
        assert_eq!(c.offer(&delivered, 10, t0 + W + Duration::from_millis(1)), Offer::Later);
        assert_eq!(c.offer(&delivered, 11, t0 + W * 2), Offer::Now, "the window has passed");
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_below_what_was_reported_goes_again() {
        let mut c = Coalescer::new(W);
        let read = key(ReceiptStatus::Read);
        let t0 = Instant::now();
        assert_eq!(c.offer(&read, 5, t0), Offer::Now);
        c.reported(&read, 5, t0);
        assert_eq!(c.offer(&read, 5, t0 + W * 4), Offer::Nothing);
        assert_eq!(c.offer(&read, 3, t0 + W * 4), Offer::Nothing);
    }

    #[tokio::test(start_paused = true)]
    async fn statuses_and_conversations_have_windows_of_their_own() {
        let mut c = Coalescer::new(W);
        let t0 = Instant::now();
        let (delivered, read) = (key(ReceiptStatus::Delivered), key(ReceiptStatus::Read));
        let other = ("d".to_owned(), ReceiptStatus::Delivered);
        for k in [&delivered, &read, &other] {
            assert_eq!(c.offer(k, 1, t0), Offer::Now);
            c.reported(k, 1, t0);
        }
        for k in [&delivered, &read, &other] {
            assert_eq!(c.offer(k, 2, t0 + Duration::from_millis(1)), Offer::Later);
        }
        let due = c.due(t0 + W, false);
        assert_eq!(
            due,
            vec![(read.clone(), 2), (delivered.clone(), 2), (other.clone(), 2)],
            "READ first per conversation"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_ending_reports_what_waits_and_a_failed_report_waits_again() {
        let mut c = Coalescer::new(W);
        let delivered = key(ReceiptStatus::Delivered);
        let t0 = Instant::now();
        c.reported(&delivered, 1, t0);
        assert_eq!(c.offer(&delivered, 4, t0), Offer::Later);
        assert_eq!(c.due(t0, true), vec![(delivered.clone(), 4)], "all, as the stream ends");
        c.retry(&delivered, 4, t0);
        assert_eq!(c.next_due(), Some(t0 + W));
        assert_eq!(c.offer(&delivered, 3, t0), Offer::Nothing, "4 still waits");
        assert_eq!(c.due(t0 + W, false), vec![(delivered.clone(), 4)]);
        c.forget("c");
        assert_eq!(c.offer(&delivered, 2, t0 + W), Offer::Now, "a rejoined conversation starts afresh");
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_window_reports_every_receipt_at_once() {
        let mut c = Coalescer::new(Duration::ZERO);
        let delivered = key(ReceiptStatus::Delivered);
        let t0 = Instant::now();
        for seq in 1..=3 {
            assert_eq!(c.offer(&delivered, seq, t0), Offer::Now);
            c.reported(&delivered, seq, t0);
        }
    }
}
