//! Coalescing a stream's receipts: its acks and reads of one conversation
//! become at most one DELIVERED and one READ receipt per window.
//!
//! A client acknowledges as it displays, often per message; each receipt
//! published costs an SNS publish, a delivery to every gateway holding a
//! member and a write by `persist` (a READ also a write here). Within a
//! window only the newest position matters, since receipts are cumulative.
//!
//! READs go on the leading edge: one for a conversation that has not been
//! reported within the window goes out at once, so a lone read costs no
//! latency; later ones within the window wait for its end and go out as
//! one, carrying the newest seq. DELIVEREDs go on the trailing edge only:
//! an ack waits a window, and a READ reported meanwhile that covers it
//! takes its place (a READ implies the delivery: `status_of`, the
//! fallback's `delivered_up_to`), so a client that acks and reads each
//! message as it shows it costs one receipt per message, not two. Nothing
//! is dropped: what waits is reported when the window ends, or when the
//! stream ends.

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

impl Slot {
    /// Drops what waits when a report covered it.
    fn settle(&mut self) {
        if self.waiting.is_some_and(|w| w <= self.reported) {
            self.waiting = None;
            self.waiting_since = None;
        }
    }
}

#[derive(Debug, Default)]
struct Slot {
    /// The highest seq reported, and when.
    reported: u64,
    reported_at: Option<Instant>,
    /// The highest seq waiting for the window to end, if any, and since
    /// when something waits.
    waiting: Option<u64>,
    waiting_since: Option<Instant>,
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
        let trailing = key.1 == ReceiptStatus::Delivered && !window.is_zero();
        if open || trailing {
            slot.waiting = Some(seq);
            slot.waiting_since.get_or_insert(now);
            Offer::Later
        } else {
            Offer::Now
        }
    }

    /// When what waits in `slot` of `key` is due.
    fn due_at(&self, key: &Key, slot: &Slot, now: Instant) -> Instant {
        let window_end = slot.reported_at.map(|at| at + self.window);
        let trailing =
            if key.1 == ReceiptStatus::Delivered { slot.waiting_since.map(|since| since + self.window) } else { None };
        window_end.into_iter().chain(trailing).max().unwrap_or(now)
    }

    /// `key` was reported up to `seq` at `now`: its window starts.
    pub(crate) fn reported(&mut self, key: &Key, seq: u64, now: Instant) {
        let slot = self.slots.entry(key.clone()).or_default();
        slot.reported = slot.reported.max(seq);
        slot.reported_at = Some(now);
        slot.settle();
        if key.1 == ReceiptStatus::Read {
            // The read covers the deliveries up to it.
            let delivered = self.slots.entry((key.0.clone(), ReceiptStatus::Delivered)).or_default();
            delivered.reported = delivered.reported.max(seq);
            delivered.settle();
        }
    }

    /// A report of what waited failed: it waits for the next window.
    pub(crate) fn retry(&mut self, key: &Key, seq: u64, now: Instant) {
        let slot = self.slots.entry(key.clone()).or_default();
        slot.reported_at = Some(now);
        if seq > slot.reported {
            slot.waiting = Some(slot.waiting.unwrap_or(0).max(seq));
            slot.waiting_since = Some(now);
        }
    }

    /// When the earliest waiting receipt is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        let now = Instant::now();
        self.slots.iter().filter(|(_, s)| s.waiting.is_some()).map(|(key, s)| self.due_at(key, s, now)).min()
    }

    /// The waiting receipts due at `now` (all of them with `all`, as a
    /// stream ends), taken out of waiting: report each, then call
    /// [`Self::reported`] (or [`Self::retry`]).
    pub(crate) fn due(&mut self, now: Instant, all: bool) -> Vec<(Key, u64)> {
        let ready: Vec<Key> = self
            .slots
            .iter()
            .filter(|(key, slot)| slot.waiting.is_some() && (all || self.due_at(key, slot, now) <= now))
            .map(|(key, _)| key.clone())
            .collect();
        let mut due = Vec::new();
        for key in ready {
            if let Some(slot) = self.slots.get_mut(&key)
                && let Some(seq) = slot.waiting.take()
            {
                slot.waiting_since = None;
                due.push((key, seq));
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
    async fn a_lone_read_goes_at_once_and_a_burst_becomes_one_more_at_the_windows_end() {
        let mut c = Coalescer::new(W);
        let delivered = key(ReceiptStatus::Read);
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

    /// An ack waits a window; a read meanwhile that covers it goes alone,
    /// one that does not leaves it to go at the window's end.
    #[tokio::test(start_paused = true)]
    async fn an_ack_waits_a_window_and_a_read_covering_it_takes_its_place() {
        let mut c = Coalescer::new(W);
        let (delivered, read) = (key(ReceiptStatus::Delivered), key(ReceiptStatus::Read));
        let t0 = Instant::now();
        assert_eq!(c.offer(&delivered, 1, t0), Offer::Later, "trailing edge");
        assert_eq!(c.next_due(), Some(t0 + W));
        assert_eq!(c.offer(&read, 1, t0 + Duration::from_millis(5)), Offer::Now);
        c.reported(&read, 1, t0 + Duration::from_millis(5));
        assert_eq!(c.next_due(), None, "the read covered the ack");
        assert!(c.due(t0 + W, false).is_empty());
        assert_eq!(c.offer(&delivered, 1, t0 + W), Offer::Nothing, "delivered up to 1 already");

        assert_eq!(c.offer(&delivered, 3, t0 + W * 2), Offer::Later);
        assert_eq!(c.offer(&read, 2, t0 + W * 2), Offer::Now);
        c.reported(&read, 2, t0 + W * 2);
        assert_eq!(c.due(t0 + W * 3, false), vec![(delivered.clone(), 3)], "3 is past the read");
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
            let expected = if k.1 == ReceiptStatus::Read { Offer::Now } else { Offer::Later };
            assert_eq!(c.offer(k, 1, t0), expected);
            c.reported(k, 1, t0);
        }
        for k in [&delivered, &read, &other] {
            assert_eq!(c.offer(k, 2, t0 + Duration::from_millis(1)), Offer::Later);
        }
        let due = c.due(t0 + W + Duration::from_millis(1), false);
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
        assert_eq!(c.offer(&delivered, 2, t0 + W), Offer::Later, "a rejoined conversation starts afresh");
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
