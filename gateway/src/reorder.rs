//! Per-conversation ordering of messages by `seq`.
//!
//! SQS standard queues and concurrent pollers deliver out of order; a
//! [`Reorderer`] holds messages that arrive ahead of a gap and releases them
//! in `seq` order as soon as the gap fills. A gap that does not fill within
//! the window (its message is slow, or its sender died after taking the seq)
//! is skipped, and a message that arrives after its gap was skipped is handed
//! back as late rather than dropped: losing it would be worse than
//! delivering it out of order. Anything else below the next seq (from before
//! the join, or delivered already and republished by a retried send) is
//! stale and goes nowhere.
//!
//! A gap whose first waiting message has waited the settle delay is
//! offered for settling ([`Reorderer::gap_to_settle`]): the store says
//! whether each missing seq holds a message (delivered from there) or is void
//! ([`Reorderer::void`]), well before the window runs out. The window stays
//! the last resort, for when the store cannot be asked.
//!
//! A reorderer starts unanchored: a stream subscribes before the
//! conversation's `last_seq` is read, so nothing published in between is
//! missed; [`Reorderer::anchor`] then says where the join happened.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Messages buffered behind a gap before the gap is skipped regardless of
/// the window, so one stuck gap cannot hold unbounded memory.
pub(crate) const MAX_PENDING: usize = 10_000;
/// Skipped seqs remembered so a late arrival can still be delivered.
pub(crate) const MAX_SKIPPED: usize = 10_000;
/// Missing seqs offered for settling at once; a longer gap is settled in
/// steps, from its start.
pub(crate) const MAX_SETTLE: u64 = 64;

#[derive(Debug)]
pub(crate) struct Reorderer<T> {
    /// The next seq to release; `None` until anchored.
    next: Option<u64>,
    pending: BTreeMap<u64, (T, Instant)>,
    /// Seqs passed over by a skipped gap and not delivered since.
    skipped: BTreeSet<u64>,
    /// Seqs ahead of `next` settled as void: passed over when reached.
    voids: BTreeSet<u64>,
    window: Duration,
}

/// What became of a pushed message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed<T> {
    /// Released now, in order (the pushed one possibly followed by others
    /// that were waiting for it).
    Released(Vec<T>),
    /// Held until the gap before it fills or times out.
    Held,
    /// It belongs to a gap that was skipped; the caller delivers it out of
    /// order.
    Late(T),
    /// Already delivered, or from before the join: not for these streams.
    Stale,
    /// The same seq is already held.
    Duplicate,
}

impl<T> Reorderer<T> {
    /// `last_seq`: the latest seq already accounted for.
    #[cfg(test)]
    pub(crate) fn new(window: Duration, last_seq: u64) -> Self {
        Self { next: Some(last_seq.saturating_add(1)), ..Self::unanchored(window) }
    }

    /// Holds everything until [`Reorderer::anchor`] is called.
    pub(crate) fn unanchored(window: Duration) -> Self {
        Self { next: None, pending: BTreeMap::new(), skipped: BTreeSet::new(), voids: BTreeSet::new(), window }
    }

    /// Sets the start after `last_seq` if none is set yet: held messages at
    /// or before it (sent before the join) are discarded, the rest released
    /// in order. Anchoring an anchored reorderer changes nothing.
    pub(crate) fn anchor(&mut self, last_seq: u64) -> Vec<T> {
        if self.next.is_some() {
            return Vec::new();
        }
        let next = last_seq.saturating_add(1);
        self.pending = self.pending.split_off(&next);
        self.voids = self.voids.split_off(&next);
        self.next = Some(next);
        let mut out = Vec::new();
        self.release_run(&mut out);
        out
    }

    /// The next seq expected; `None` until anchored.
    pub(crate) fn next_seq(&self) -> Option<u64> {
        self.next
    }

    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.pending.len()
    }

    pub(crate) fn push(&mut self, seq: u64, item: T, now: Instant) -> Pushed<T> {
        match self.next {
            Some(next) if seq < next => {
                if self.skipped.remove(&seq) {
                    Pushed::Late(item)
                } else {
                    Pushed::Stale
                }
            }
            Some(next) if seq == next => {
                let mut out = vec![item];
                self.next = Some(seq.saturating_add(1));
                self.release_run(&mut out);
                Pushed::Released(out)
            }
            _ => {
                if self.pending.contains_key(&seq) {
                    return Pushed::Duplicate;
                }
                self.pending.insert(seq, (item, now));
                if self.pending.len() > MAX_PENDING && self.next.is_some() {
                    return Pushed::Released(self.skip_gap());
                }
                Pushed::Held
            }
        }
    }

    /// The missing seqs before the first waiting message, once it has waited
    /// `delay` (at most [`MAX_SETTLE`] of them); `None` while unanchored or
    /// with no such gap.
    pub(crate) fn gap_to_settle(&self, now: Instant, delay: Duration) -> Option<Vec<u64>> {
        let next = self.next?;
        let (&first, (_, since)) = self.pending.first_key_value()?;
        if now.saturating_duration_since(*since) < delay {
            return None;
        }
        let missing: Vec<u64> =
            (next..first).filter(|seq| !self.voids.contains(seq)).take(MAX_SETTLE as usize).collect();
        (!missing.is_empty()).then_some(missing)
    }

    /// A seq settled as void: it never carries a message, so what waited
    /// behind it moves on. Returns what that releases.
    pub(crate) fn void(&mut self, seq: u64) -> Vec<T> {
        let mut out = Vec::new();
        match self.next {
            Some(next) if seq < next => {}
            // A seq that has its message is not void (the store settles
            // each seq once; this only guards the invariant).
            _ if self.pending.contains_key(&seq) || self.voids.len() >= MAX_PENDING => {}
            _ => {
                self.voids.insert(seq);
                self.release_run(&mut out);
            }
        }
        out
    }

    /// Skips gaps whose first waiting message has waited a full window. An
    /// unanchored reorderer waits for its anchor (the join's read of
    /// `last_seq`, bounded by the store's timeouts) instead: skipping first
    /// would turn messages just after the join into stale ones.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<T> {
        let mut out = Vec::new();
        if self.next.is_none() {
            return out;
        }
        while let Some((_, (_, since))) = self.pending.first_key_value() {
            if now.saturating_duration_since(*since) < self.window {
                break;
            }
            out.extend(self.skip_gap());
        }
        out
    }

    /// When [`Reorderer::expire`] next has something to do.
    #[cfg(test)]
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.next?;
        self.pending.first_key_value().map(|(_, (_, since))| *since + self.window)
    }

    fn skip_gap(&mut self) -> Vec<T> {
        let mut out = Vec::new();
        let (Some(next), Some((seq, (item, _)))) = (self.next, self.pending.pop_first()) else {
            return out;
        };
        // Remember the passed-over seqs (the newest ones, if the gap is huge).
        let from = next.max(seq.saturating_sub(MAX_SKIPPED as u64));
        self.skipped.extend(from..seq);
        while self.skipped.len() > MAX_SKIPPED {
            self.skipped.pop_first();
        }
        out.push(item);
        self.next = Some(seq.saturating_add(1));
        self.voids = self.voids.split_off(&seq.saturating_add(1));
        self.release_run(&mut out);
        out
    }

    /// Releases what waits at `next` onwards, passing over voids.
    fn release_run(&mut self, out: &mut Vec<T>) {
        while let Some(next) = self.next {
            if !self.voids.remove(&next) {
                match self.pending.first_entry() {
                    Some(entry) if *entry.key() == next => out.push(entry.remove().0),
                    _ => break,
                }
            }
            if next == u64::MAX {
                break;
            }
            self.next = Some(next + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_millis(100);

    fn released(p: Pushed<u64>) -> Vec<u64> {
        match p {
            Pushed::Released(v) => v,
            other => panic!("expected release, got {other:?}"),
        }
    }

    #[test]
    fn in_order_passes_straight_through() {
        let now = Instant::now();
        let mut r = Reorderer::new(W, 0);
        for seq in 1..=5 {
            assert_eq!(released(r.push(seq, seq, now)), vec![seq]);
        }
        assert_eq!(r.next_seq(), Some(6));
    }

    #[test]
    fn out_of_order_is_released_in_order_when_gap_fills() {
        let now = Instant::now();
        let mut r = Reorderer::new(W, 10);
        assert_eq!(r.push(13, 13, now), Pushed::Held);
        assert_eq!(r.push(12, 12, now), Pushed::Held);
        assert_eq!(r.push(13, 13, now), Pushed::Duplicate);
        assert_eq!(released(r.push(11, 11, now)), vec![11, 12, 13]);
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn gap_is_skipped_after_the_window_and_late_arrival_is_handed_back() {
        let now = Instant::now();
        let mut r = Reorderer::new(W, 0);
        assert_eq!(r.push(2, 2, now), Pushed::Held);
        assert_eq!(r.push(3, 3, now + W / 2), Pushed::Held);
        assert_eq!(r.next_deadline(), Some(now + W));
        assert!(r.expire(now + W / 2).is_empty());
        assert_eq!(r.expire(now + W), vec![2, 3]);
        assert_eq!(r.push(1, 1, now + W), Pushed::Late(1));
        assert_eq!(released(r.push(4, 4, now + W)), vec![4]);
    }

    #[test]
    fn successive_gaps_each_wait_their_own_window() {
        let now = Instant::now();
        let mut r = Reorderer::new(W, 0);
        r.push(2, 2, now);
        r.push(5, 5, now + W);
        assert_eq!(r.expire(now + W), vec![2]);
        assert_eq!(r.next_seq(), Some(3));
        assert_eq!(r.expire(now + W + W / 2), Vec::<u64>::new());
        assert_eq!(r.expire(now + 2 * W), vec![5]);
    }

    #[test]
    fn unanchored_holds_until_anchor_then_drops_what_precedes_the_join() {
        let now = Instant::now();
        let mut r = Reorderer::unanchored(W);
        assert_eq!(r.push(5, 5, now), Pushed::Held);
        assert_eq!(r.push(7, 7, now), Pushed::Held);
        assert_eq!(r.push(6, 6, now), Pushed::Held);
        assert_eq!(r.anchor(5), vec![6, 7]);
        assert_eq!(r.anchor(1), Vec::<u64>::new(), "second anchor is ignored");
        assert_eq!(r.push(5, 5, now), Pushed::Stale, "before the join");
        assert_eq!(r.push(6, 6, now), Pushed::Stale, "already delivered");
        assert_eq!(released(r.push(8, 8, now)), vec![8]);
    }

    #[test]
    fn unanchored_waits_for_its_anchor_not_the_window() {
        let now = Instant::now();
        let mut r = Reorderer::unanchored(W);
        r.push(3, 3, now);
        r.push(5, 5, now);
        assert_eq!(r.next_deadline(), None);
        assert!(r.expire(now + 10 * W).is_empty());
        assert_eq!(r.anchor(1), Vec::<u64>::new());
        assert_eq!(r.expire(now + 10 * W), vec![3, 5]);
        assert_eq!(r.push(4, 4, now), Pushed::Late(4), "4 was skipped");
        assert_eq!(r.push(2, 2, now), Pushed::Late(2), "2 was skipped");
        assert_eq!(r.push(2, 2, now), Pushed::Stale, "and is delivered once");
    }

    #[test]
    fn extreme_seqs_do_not_overflow() {
        let now = Instant::now();
        let mut r = Reorderer::unanchored(W);
        assert_eq!(r.push(u64::MAX, 1, now), Pushed::Held);
        assert_eq!(r.anchor(u64::MAX - 1), vec![1]);
        assert_eq!(r.next_seq(), Some(u64::MAX), "saturates instead of wrapping");
        let mut r = Reorderer::new(W, 0);
        assert_eq!(r.push(u64::MAX, 9, now), Pushed::Held);
        assert_eq!(r.expire(now + W), vec![9]);
        assert_eq!(r.push(u64::MAX - 1, 8, now), Pushed::Late(8), "recent skipped seqs are remembered");
        assert_eq!(r.push(1, 7, now), Pushed::Stale, "beyond the skipped memory");
    }

    #[test]
    fn too_many_pending_forces_the_gap_open() {
        let now = Instant::now();
        let mut r = Reorderer::new(Duration::from_secs(3600), 0);
        for seq in 2..=(MAX_PENDING as u64 + 1) {
            assert_eq!(r.push(seq, seq, now), Pushed::Held);
        }
        let out = released(r.push(MAX_PENDING as u64 + 2, 0, now));
        assert_eq!(out.len(), MAX_PENDING + 1);
        assert_eq!(out[0], 2);
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn a_settled_gap_releases_what_waited_behind_it_without_the_window() {
        let now = Instant::now();
        let settle = W / 4;
        let mut r = Reorderer::new(W, 0);
        assert_eq!(r.push(4, 4, now), Pushed::Held);
        assert_eq!(r.gap_to_settle(now, settle), None, "not waited long enough");
        assert_eq!(r.gap_to_settle(now + settle, settle), Some(vec![1, 2, 3]));
        assert!(r.void(2).is_empty(), "1 is still missing");
        assert_eq!(r.gap_to_settle(now + settle, settle), Some(vec![1, 3]));
        assert!(r.void(1).is_empty(), "3 is still missing");
        assert_eq!(released(r.push(3, 3, now)), vec![3, 4], "the settled message, then what waited");
        assert_eq!(r.next_seq(), Some(5));
        assert_eq!(r.push(2, 2, now), Pushed::Stale, "a void is not a skipped seq: nothing arrives late for it");
        assert!(r.void(1).is_empty(), "voiding the past changes nothing");
        assert_eq!(r.gap_to_settle(now + W, settle), None);
    }

    #[test]
    fn a_void_ahead_is_passed_over_when_reached() {
        let now = Instant::now();
        let mut r = Reorderer::new(W, 0);
        assert!(r.void(2).is_empty());
        assert_eq!(released(r.push(1, 1, now)), vec![1]);
        assert_eq!(r.next_seq(), Some(3));
        assert_eq!(released(r.push(3, 3, now)), vec![3]);
    }

    #[test]
    fn a_long_gap_is_settled_in_steps_and_unanchored_never() {
        let now = Instant::now();
        let mut r = Reorderer::new(W, 0);
        r.push(MAX_SETTLE * 2, 0, now);
        let first = r.gap_to_settle(now + W, Duration::ZERO).expect("a gap");
        assert_eq!((first.len() as u64, first[0]), (MAX_SETTLE, 1));
        let mut u: Reorderer<u64> = Reorderer::unanchored(W);
        u.push(5, 5, now);
        assert_eq!(u.gap_to_settle(now + W, Duration::ZERO), None);
    }
}
