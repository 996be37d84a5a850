//! Local fan-out: which streams on this gateway are in which conversation,
//! and the delivery of bus events to them.
//!
//! Every event read from the bus goes through [`Hub::dispatch`]: events of
//! conversations with no local member are dropped first (cheaply, before any
//! bookkeeping), then duplicates by `event_id` (SQS is at-least-once), then
//! messages are put in `seq` order by the conversation's [`Reorderer`] and
//! each released event, encoded once (`wire`), is queued to every local
//! member's [`Outbox`]. Receipts that would move a member backwards
//! (a DELIVERED below what they already read, a reordered older ack) are
//! dropped, so a stream never sees a status regress.
//!
//! A gap that outlasts the settle delay is settled from the store
//! ([`Hub::gaps_to_settle`], then [`Hub::settled`] with each answer): its
//! message delivered from there, or its seq passed over as void.
//!
//! The state lives behind one mutex that is never held across an `.await`:
//! every operation on it is a non-blocking in-memory update.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_core::envelope::{Envelope, Event};
use chat_core::store::Settled;

use crate::outbox::{Outbox, Undeliverable};
use crate::receipts::ReceiptPositions;
use crate::reorder::{Pushed, Reorderer};
use crate::wire::Outgoing;
use crate::wire::SharedEvent;

/// Event ids remembered for deduplication. At-least-once redeliveries come
/// within seconds to minutes, well inside this many events.
pub(crate) const DEDUPE_CAPACITY: usize = 100_000;

#[derive(Debug)]
pub(crate) struct Hub {
    reorder_window: Duration,
    state: Mutex<State>,
    pub(crate) counters: Counters,
}

/// Monotonic counters, for logs and tests.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) dispatched: AtomicU64,
    pub(crate) no_local_members: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) late: AtomicU64,
    pub(crate) stale: AtomicU64,
    /// Receipts that would not move their member forward.
    pub(crate) stale_receipts: AtomicU64,
    /// Events meant for functions only (fallback requests).
    pub(crate) not_for_streams: AtomicU64,
    pub(crate) deliveries: AtomicU64,
    /// Messages held behind a gap in seq order (reorder waits).
    pub(crate) held: AtomicU64,
    pub(crate) slow_consumers: AtomicU64,
    /// Messages held for a removal the bus had not delivered yet.
    pub(crate) parked: AtomicU64,
    /// Missing seqs settled from the store: found recorded, or void.
    pub(crate) settled_messages: AtomicU64,
    pub(crate) settled_voids: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    conversations: HashMap<String, Conversation>,
    recent: RecentIds,
}

#[derive(Debug)]
struct Conversation {
    /// By session id.
    members: HashMap<String, Member>,
    order: Reorderer<SharedEvent>,
    /// What this gateway has passed on.
    receipts: ReceiptPositions,
    /// The membership version this gateway has applied: the one read at the
    /// first join, moved on by each removal.
    members_version: u64,
    /// Messages numbered under a membership version not applied yet: held
    /// until its removal arrives (the bus may deliver the removal after
    /// them), so a removed member never receives them.
    parked: VecDeque<(Instant, Envelope)>,
    /// When the store was last asked to settle a gap here: asked at most
    /// once per settle delay (a gap can outlive its answers: a message that
    /// waits for a removal, an ask that failed).
    settling_since: Option<Instant>,
}

/// One stream in a conversation.
#[derive(Debug)]
struct Member {
    outbox: Arc<Outbox>,
    /// The membership version its join read ([`Hub::anchor`]); `None` while
    /// it joins.
    joined_at: Option<u64>,
    /// The furthest-reaching leave or removal of its user that arrived
    /// while it was joining ([`reach`]), settled when the join has read its
    /// version.
    left_while_joining: Option<(u64, SharedEvent)>,
}

/// How far a leave or removal of `members_version` reaches: it ends the
/// streams whose join read a version below it (one the join read, or an
/// earlier one, happened before the join: news of the past). 0 is a
/// publisher that did not version it: it ends every stream, as it always
/// did.
fn reach(members_version: u64) -> u64 {
    if members_version == 0 { u64::MAX } else { members_version }
}

/// A bounded set of recently seen ids, oldest evicted first.
#[derive(Debug, Default)]
struct RecentIds {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl RecentIds {
    /// True when the id is new.
    fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() >= DEDUPE_CAPACITY
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.set.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        true
    }
}

impl Hub {
    pub(crate) fn new(reorder_window: Duration) -> Self {
        Self { reorder_window, state: Mutex::new(State::default()), counters: Counters::default() }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a stream to a conversation. Call [`Hub::anchor`] once the
    /// conversation's `last_seq` has been read: subscribing first means no
    /// event published in between is dropped for want of a local member.
    pub(crate) fn subscribe(&self, conversation_id: &str, outbox: Arc<Outbox>) {
        let mut state = self.state();
        let conversation = state.conversations.entry(conversation_id.to_owned()).or_insert_with(|| Conversation {
            members: HashMap::new(),
            order: Reorderer::unanchored(self.reorder_window),
            receipts: ReceiptPositions::default(),
            members_version: 0,
            parked: VecDeque::new(),
            settling_since: None,
        });
        let member = Member { outbox, joined_at: None, left_while_joining: None };
        conversation.members.insert(member.outbox.session_id.clone(), member);
    }

    /// A stream's join has read the conversation's `last_seq` and
    /// `members_version`. Starts a new conversation's ordering after
    /// `last_seq` and its membership at `members_version`; the conversation
    /// already ordered here keeps its own (its version moves only with the
    /// removals it receives, so a later join cannot release messages ahead
    /// of a removal still on its way to the streams here). A leave of the
    /// stream's user that arrived while it joined, and came after the join
    /// by version, ends it here. False when the stream no longer hears the
    /// conversation.
    pub(crate) fn anchor(&self, conversation_id: &str, session_id: &str, last_seq: u64, members_version: u64) -> bool {
        let mut state = self.state();
        let Some(conversation) = state.conversations.get_mut(conversation_id) else { return false };
        if conversation.order.next_seq().is_none() {
            let released = conversation.order.anchor(last_seq);
            self.fan_out(conversation, &released, |_| false);
            self.apply_members_version(conversation, members_version, Instant::now());
        }
        let Some(member) = conversation.members.get_mut(session_id) else { return false };
        member.joined_at = Some(members_version);
        match member.left_while_joining.take() {
            Some((reach, left)) if reach > members_version => {
                // Told, as the streams that had joined were.
                let _ = member.outbox.deliver(left);
                Self::remove(&mut state, conversation_id, session_id);
                false
            }
            _ => true,
        }
    }

    pub(crate) fn unsubscribe(&self, conversation_id: &str, session_id: &str) {
        Self::remove(&mut self.state(), conversation_id, session_id);
    }

    /// Takes a stream out of a conversation, and the conversation out of
    /// this gateway with its last stream.
    fn remove(state: &mut State, conversation_id: &str, session_id: &str) {
        if let Some(conversation) = state.conversations.get_mut(conversation_id) {
            conversation.members.remove(session_id);
            if conversation.members.is_empty() {
                state.conversations.remove(conversation_id);
            }
        }
    }

    /// Conversations with at least one member streaming here.
    pub(crate) fn local_conversations(&self) -> usize {
        self.state().conversations.len()
    }

    pub(crate) fn has_local_members(&self, conversation_id: &str) -> bool {
        self.state().conversations.contains_key(conversation_id)
    }

    /// Delivers one bus event to the local members of its conversation.
    pub(crate) fn dispatch(&self, envelope: Envelope, now: Instant) {
        self.counters.dispatched.fetch_add(1, Ordering::Relaxed);
        let mut state = self.state();
        let State { conversations, recent } = &mut *state;
        let Some(conversation) = conversations.get_mut(&envelope.conversation_id) else {
            self.counters.no_local_members.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if !recent.insert(&envelope.event_id) {
            self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match &envelope.event {
            Event::Receipt(r)
                if !conversation.receipts.advance(&envelope.conversation_id, &r.user_id, r.status, r.up_to_seq) =>
            {
                self.counters.stale_receipts.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Event::Message(_) if envelope.members_version > conversation.members_version => {
                self.counters.parked.fetch_add(1, Ordering::Relaxed);
                conversation.parked.push_back((now, envelope));
                return;
            }
            _ => {}
        }
        let conversation_id = envelope.conversation_id.clone();
        let removal = matches!(envelope.event, Event::MemberLeft { .. } | Event::MemberRemoved { .. })
            .then_some(envelope.members_version);
        self.deliver(conversation, envelope, now);
        if let Some(version) = removal {
            self.apply_members_version(conversation, version, now);
        }
        if conversation.members.is_empty() {
            conversations.remove(&conversation_id);
        }
    }

    /// Moves the conversation's applied membership version on and delivers
    /// the messages that were waiting for it.
    fn apply_members_version(&self, conversation: &mut Conversation, version: u64, now: Instant) {
        conversation.members_version = conversation.members_version.max(version);
        let known = conversation.members_version;
        let (ready, waiting): (VecDeque<_>, VecDeque<_>) =
            std::mem::take(&mut conversation.parked).into_iter().partition(|(_, e)| e.members_version <= known);
        conversation.parked = waiting;
        for (_, envelope) in ready {
            self.deliver(conversation, envelope, now);
        }
    }

    /// An event past the checks, in order: encoded once, put in seq order
    /// (a message), and queued to the members' streams.
    fn deliver(&self, conversation: &mut Conversation, envelope: Envelope, now: Instant) {
        let conversation_id = envelope.conversation_id.clone();
        let members_version = envelope.members_version;
        let left = match &envelope.event {
            Event::MemberLeft { user_id } | Event::MemberRemoved { user_id, .. } => Some(user_id.clone()),
            _ => None,
        };
        // Encoded here, once, for every stream it goes to.
        let Some(Outgoing { event, seq, skip_user }) = crate::wire::bus_event(envelope) else {
            self.counters.not_for_streams.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let released = match seq {
            None => vec![event],
            Some(seq) => match conversation.order.push(seq, event, now) {
                Pushed::Released(events) => events,
                Pushed::Held => {
                    self.counters.held.fetch_add(1, Ordering::Relaxed);
                    Vec::new()
                }
                Pushed::Duplicate => Vec::new(),
                Pushed::Stale => {
                    self.counters.stale.fetch_add(1, Ordering::Relaxed);
                    Vec::new()
                }
                Pushed::Late(event) => {
                    self.counters.late.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        conversation_id,
                        seq,
                        "message arrived after its gap was skipped; delivered out of order"
                    );
                    vec![event]
                }
            },
        };
        let Some(user) = left else {
            self.fan_out(conversation, &released, |m| skip_user.as_deref() == Some(m.outbox.user_id.as_str()));
            return;
        };
        // Leaving (or being removed) ends membership on every device that
        // joined before it: the user's streams stop hearing the conversation
        // once told (their sessions notice on their next frame, and release
        // presence then or at their end). A stream that joined after it
        // is not told; one still joining settles it when its join has read
        // the membership version.
        let reach = reach(members_version);
        let ended = |m: &Member| m.joined_at.is_some_and(|joined_at| reach > joined_at);
        self.fan_out(conversation, &released, |m| m.outbox.user_id == user && !ended(m));
        for member in conversation.members.values_mut().filter(|m| m.outbox.user_id == user && m.joined_at.is_none()) {
            let further = member.left_while_joining.as_ref().is_none_or(|(known, _)| reach > *known);
            if let Some(event) = released.first().filter(|_| further) {
                member.left_while_joining = Some((reach, event.clone()));
            }
        }
        conversation.members.retain(|_, m| m.outbox.user_id != user || !ended(m));
    }

    /// Whether a stream is (still) subscribed to a conversation.
    pub(crate) fn is_subscribed(&self, conversation_id: &str, session_id: &str) -> bool {
        self.state().conversations.get(conversation_id).is_some_and(|c| c.members.contains_key(session_id))
    }

    /// Releases messages whose gap has waited out the reorder window, and
    /// messages that waited as long for a removal that never came (the bus
    /// lost it): the conversation must not stall.
    pub(crate) fn expire_gaps(&self, now: Instant) {
        let mut state = self.state();
        for (conversation_id, conversation) in state.conversations.iter_mut() {
            let overdue = conversation
                .parked
                .iter()
                .filter(|(at, _)| now.saturating_duration_since(*at) >= self.reorder_window)
                .map(|(_, e)| e.members_version)
                .max();
            if let Some(version) = overdue {
                tracing::warn!(
                    conversation_id,
                    members_version = version,
                    "a removal never arrived within the reorder window; delivering the messages that waited for it"
                );
                self.apply_members_version(conversation, version, now);
            }
            let released = conversation.order.expire(now);
            if !released.is_empty() {
                tracing::warn!(conversation_id, released = released.len(), "seq gap skipped after the reorder window");
                self.fan_out(conversation, &released, |_| false);
            }
        }
    }

    /// The missing seqs of gaps that have waited `delay`, by conversation,
    /// for the store to settle; a conversation is offered again only after
    /// another `delay`.
    pub(crate) fn gaps_to_settle(&self, now: Instant, delay: Duration) -> Vec<(String, Vec<u64>)> {
        let mut state = self.state();
        let mut gaps = Vec::new();
        for (conversation_id, conversation) in state.conversations.iter_mut() {
            if conversation.settling_since.is_some_and(|since| now.saturating_duration_since(since) < delay) {
                continue;
            }
            if let Some(missing) = conversation.order.gap_to_settle(now, delay) {
                conversation.settling_since = Some(now);
                gaps.push((conversation_id.clone(), missing));
            }
        }
        gaps
    }

    /// The store's answer for one missing seq: its message goes the way a
    /// bus event goes (so a copy the bus brings later is a duplicate), a
    /// void lets what waited behind it through.
    pub(crate) fn settled(&self, conversation_id: &str, seq: u64, settled: Settled, now: Instant) {
        match settled {
            Settled::Message(message) => {
                self.counters.settled_messages.fetch_add(1, Ordering::Relaxed);
                self.dispatch(chat_core::send::recorded_envelope("store", message), now);
            }
            Settled::Void => {
                self.counters.settled_voids.fetch_add(1, Ordering::Relaxed);
                let mut state = self.state();
                if let Some(conversation) = state.conversations.get_mut(conversation_id) {
                    let released = conversation.order.void(seq);
                    self.fan_out(conversation, &released, |_| false);
                }
            }
        }
    }

    /// Queues `events` to the conversation's streams but those `skip` names.
    fn fan_out(&self, conversation: &mut Conversation, events: &[SharedEvent], skip: impl Fn(&Member) -> bool) {
        if events.is_empty() {
            return;
        }
        let mut gone = Vec::new();
        for (session_id, member) in &conversation.members {
            if skip(member) {
                continue;
            }
            let outbox = &member.outbox;
            for event in events {
                if !outbox.receipt_is_news(event) {
                    continue;
                }
                match outbox.deliver(event.clone()) {
                    Ok(()) => {
                        self.counters.deliveries.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(Undeliverable::Overflow) => {
                        self.counters.slow_consumers.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(session_id, user_id = outbox.user_id, "slow consumer disconnected");
                        gone.push(session_id.clone());
                        break;
                    }
                    Err(Undeliverable::Gone) => {
                        gone.push(session_id.clone());
                        break;
                    }
                }
            }
        }
        for session_id in gone {
            conversation.members.remove(&session_id);
        }
    }
}

impl crate::bus::Inbox for Hub {
    fn receive(&self, envelope: Envelope, now: Instant) {
        self.dispatch(envelope, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_core::envelope::MessageEvent;
    use chat_core::envelope::ReceiptStatus;
    use chat_proto::pb::{self, ServerEvent, server_event::Event as PbEvent};
    use futures::StreamExt;

    fn message(conversation: &str, seq: u64) -> Envelope {
        let id = format!("{conversation}-{seq}");
        Envelope::new(
            id.clone(),
            conversation.into(),
            "gw".into(),
            1,
            Event::Message(MessageEvent {
                message_id: id,
                seq,
                sender: "alice".into(),
                body: "hi".into(),
                client_message_id: String::new(),
                external_recipients: Vec::new(),
            }),
        )
    }

    fn seqs(events: &[Result<ServerEvent, tonic::Status>]) -> Vec<u64> {
        events
            .iter()
            .filter_map(|e| match e {
                Ok(ServerEvent { event: Some(PbEvent::Message(m)) }) => Some(m.seq),
                _ => None,
            })
            .collect()
    }

    /// Every stream subscribed to `conversation` has joined, reading
    /// `last_seq` and `members_version`.
    fn anchor_all(hub: &Hub, conversation: &str, last_seq: u64, members_version: u64) {
        let sessions: Vec<String> = hub
            .state()
            .conversations
            .get(conversation)
            .map(|c| c.members.keys().cloned().collect())
            .unwrap_or_default();
        for session_id in sessions {
            hub.anchor(conversation, &session_id, last_seq, members_version);
        }
    }

    async fn drain(outbox: &Outbox, stream: crate::outbox::EventStream) -> Vec<Result<ServerEvent, tonic::Status>> {
        outbox.finish();
        crate::outbox::decoded(stream).collect().await
    }

    #[tokio::test]
    async fn delivers_in_seq_order_once_and_only_to_members() {
        let hub = Hub::new(Duration::from_secs(60));
        let (bob, bob_stream) = Outbox::new("s-bob".into(), "bob".into(), 64);
        let (carol, carol_stream) = Outbox::new("s-carol".into(), "carol".into(), 64);
        hub.subscribe("room1", bob.clone());
        anchor_all(&hub, "room1", 0, 0);
        hub.subscribe("room2", carol.clone());
        anchor_all(&hub, "room2", 0, 0);
        let now = Instant::now();
        for seq in [3, 1, 2, 2, 5, 4] {
            hub.dispatch(message("room1", seq), now);
        }
        hub.dispatch(message("elsewhere", 1), now);
        assert_eq!(seqs(&drain(&bob, bob_stream).await), vec![1, 2, 3, 4, 5]);
        assert!(seqs(&drain(&carol, carol_stream).await).is_empty());
        assert_eq!(hub.counters.duplicates.load(Ordering::Relaxed), 1);
        assert_eq!(hub.counters.no_local_members.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn events_between_subscribe_and_anchor_are_kept() {
        let hub = Hub::new(Duration::from_secs(60));
        let (bob, stream) = Outbox::new("s".into(), "bob".into(), 64);
        hub.subscribe("room1", bob.clone());
        let now = Instant::now();
        hub.dispatch(message("room1", 8), now);
        hub.dispatch(message("room1", 9), now);
        anchor_all(&hub, "room1", 8, 0);
        hub.dispatch(message("room1", 10), now);
        assert_eq!(seqs(&drain(&bob, stream).await), vec![9, 10]);
    }

    #[tokio::test]
    async fn gap_is_released_by_expiry() {
        let hub = Hub::new(Duration::from_millis(100));
        let (bob, stream) = Outbox::new("s".into(), "bob".into(), 64);
        hub.subscribe("room1", bob.clone());
        anchor_all(&hub, "room1", 10, 0);
        let now = Instant::now();
        hub.dispatch(message("room1", 12), now);
        hub.expire_gaps(now + Duration::from_millis(50));
        hub.expire_gaps(now + Duration::from_millis(100));
        hub.dispatch(message("room1", 11), now + Duration::from_millis(200));
        assert_eq!(seqs(&drain(&bob, stream).await), vec![12, 11]);
        assert_eq!(hub.counters.late.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn republished_old_message_is_not_delivered_again() {
        // A retried send republishes its first identity; a gateway that never
        // saw the original (its member joined later) must not deliver it.
        let hub = Hub::new(Duration::from_secs(60));
        let (bob, stream) = Outbox::new("s".into(), "bob".into(), 64);
        hub.subscribe("room1", bob.clone());
        anchor_all(&hub, "room1", 20, 0);
        let now = Instant::now();
        hub.dispatch(message("room1", 21), now);
        hub.dispatch(message("room1", 10), now);
        assert_eq!(seqs(&drain(&bob, stream).await), vec![21]);
        assert_eq!(hub.counters.stale.load(Ordering::Relaxed), 1);
    }

    fn left(user: &str, members_version: u64) -> Envelope {
        let event = Event::MemberLeft { user_id: user.into() };
        Envelope::new(format!("left-{user}-{members_version}"), "r".into(), "gw".into(), 1, event)
            .under_members_version(members_version)
    }

    fn member_lefts(events: &[Result<ServerEvent, tonic::Status>]) -> usize {
        events.iter().filter(|e| matches!(e, Ok(ServerEvent { event: Some(PbEvent::MemberLeft(_)) }))).count()
    }

    #[tokio::test]
    async fn member_left_unsubscribes_the_leavers_streams_after_telling_them() {
        let hub = Hub::new(Duration::from_secs(60));
        let (alice, alice_stream) = Outbox::new("s-a".into(), "alice".into(), 8);
        let (bob_phone, phone_stream) = Outbox::new("s-p".into(), "bob".into(), 8);
        hub.subscribe("r", alice.clone());
        hub.subscribe("r", bob_phone.clone());
        anchor_all(&hub, "r", 0, 0);
        hub.dispatch(left("bob", 1), Instant::now());
        assert!(!hub.is_subscribed("r", "s-p"));
        assert!(hub.is_subscribed("r", "s-a"));
        hub.dispatch(message("r", 1).under_members_version(1), Instant::now());
        assert_eq!(drain(&bob_phone, phone_stream).await.len(), 1, "only the MemberLeft");
        assert_eq!(drain(&alice, alice_stream).await.len(), 2);
    }

    #[tokio::test]
    async fn a_leave_from_before_a_join_leaves_that_stream_alone() {
        let hub = Hub::new(Duration::from_secs(60));
        let (alice, alice_stream) = Outbox::new("s-a".into(), "alice".into(), 8);
        let (phone, phone_stream) = Outbox::new("s-p".into(), "bob".into(), 8);
        hub.subscribe("r", alice.clone());
        hub.subscribe("r", phone.clone());
        anchor_all(&hub, "r", 0, 0);
        // bob left on his phone (version 1) and joined again on his laptop,
        // which read version 1: the leave's event, late, ends the phone only.
        let (laptop, laptop_stream) = Outbox::new("s-l".into(), "bob".into(), 8);
        hub.subscribe("r", laptop.clone());
        assert!(hub.anchor("r", "s-l", 0, 1));
        hub.dispatch(left("bob", 1), Instant::now());
        assert!(!hub.is_subscribed("r", "s-p"));
        assert!(hub.is_subscribed("r", "s-l"));
        hub.dispatch(message("r", 1).under_members_version(1), Instant::now());
        let laptop_saw = drain(&laptop, laptop_stream).await;
        assert_eq!((seqs(&laptop_saw), member_lefts(&laptop_saw)), (vec![1], 0), "the laptop hears on, untold");
        assert_eq!(member_lefts(&drain(&phone, phone_stream).await), 1);
        assert_eq!(member_lefts(&drain(&alice, alice_stream).await), 1);
    }

    #[tokio::test]
    async fn a_leave_arriving_while_a_stream_joins_is_settled_by_its_join() {
        let hub = Hub::new(Duration::from_secs(60));
        let (before, before_stream) = Outbox::new("s-1".into(), "bob".into(), 8);
        let (after, after_stream) = Outbox::new("s-2".into(), "bob".into(), 8);
        hub.subscribe("r", before.clone());
        hub.subscribe("r", after.clone());
        // Both still joining when leaves of versions 2 and 3 arrive.
        hub.dispatch(left("bob", 3), Instant::now());
        hub.dispatch(left("bob", 2), Instant::now());
        assert!(hub.is_subscribed("r", "s-1") && hub.is_subscribed("r", "s-2"));
        // One join read version 2 (the leave of version 3 came after it), the
        // other version 3 (both came before it).
        assert!(!hub.anchor("r", "s-1", 0, 2));
        assert!(hub.anchor("r", "s-2", 0, 3));
        assert!(!hub.is_subscribed("r", "s-1"));
        assert!(hub.is_subscribed("r", "s-2"));
        assert_eq!(member_lefts(&drain(&before, before_stream).await), 1, "told once");
        assert_eq!(member_lefts(&drain(&after, after_stream).await), 0);
    }

    #[tokio::test]
    async fn an_unversioned_leave_ends_every_stream_of_its_user() {
        let hub = Hub::new(Duration::from_secs(60));
        let (joined, _joined_stream) = Outbox::new("s-1".into(), "bob".into(), 8);
        let (joining, _joining_stream) = Outbox::new("s-2".into(), "bob".into(), 8);
        hub.subscribe("r", joined.clone());
        assert!(hub.anchor("r", "s-1", 0, 5));
        hub.subscribe("r", joining.clone());
        hub.dispatch(left("bob", 0), Instant::now());
        assert!(!hub.is_subscribed("r", "s-1"));
        assert!(!hub.anchor("r", "s-2", 0, 5));
        assert!(!hub.has_local_members("r"));
    }

    fn removal(user: &str, members_version: u64) -> Envelope {
        let event = Event::MemberRemoved { user_id: user.into(), by: "alice".into(), banned: false };
        Envelope::new(format!("rm-{user}"), "r".into(), "gw".into(), 1, event).under_members_version(members_version)
    }

    #[tokio::test]
    async fn a_message_sent_after_a_removal_waits_for_it_and_never_reaches_the_removed() {
        let hub = Hub::new(Duration::from_secs(60));
        let (alice, alice_stream) = Outbox::new("s-a".into(), "alice".into(), 8);
        let (bob, bob_stream) = Outbox::new("s-b".into(), "bob".into(), 8);
        hub.subscribe("r", alice.clone());
        hub.subscribe("r", bob.clone());
        anchor_all(&hub, "r", 0, 0);
        hub.dispatch(message("r", 1), Instant::now());
        // Numbered after bob's removal (version 1), delivered by the bus
        // before the removal itself.
        hub.dispatch(message("r", 2).under_members_version(1), Instant::now());
        hub.dispatch(message("r", 3).under_members_version(1), Instant::now());
        assert_eq!(hub.counters.parked.load(Ordering::Relaxed), 2);
        hub.dispatch(removal("bob", 1), Instant::now());
        let bob_saw = drain(&bob, bob_stream).await;
        assert_eq!(seqs(&bob_saw), vec![1], "bob gets what was sent before his removal, and the removal");
        assert_eq!(bob_saw.len(), 2);
        assert_eq!(seqs(&drain(&alice, alice_stream).await), vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn a_later_join_does_not_release_messages_ahead_of_their_removal() {
        let hub = Hub::new(Duration::from_secs(60));
        let (alice, alice_stream) = Outbox::new("s-a".into(), "alice".into(), 8);
        let (bob, bob_stream) = Outbox::new("s-b".into(), "bob".into(), 8);
        hub.subscribe("r", alice.clone());
        hub.subscribe("r", bob.clone());
        anchor_all(&hub, "r", 0, 0);
        hub.dispatch(message("r", 1).under_members_version(1), Instant::now());
        // Carol joins here after bob's removal was recorded (version 1), its
        // event still on the way.
        let (carol, carol_stream) = Outbox::new("s-c".into(), "carol".into(), 8);
        hub.subscribe("r", carol.clone());
        hub.anchor("r", "s-c", 1, 1);
        hub.dispatch(removal("bob", 1), Instant::now());
        assert!(seqs(&drain(&bob, bob_stream).await).is_empty(), "bob never gets what followed his removal");
        assert_eq!(seqs(&drain(&alice, alice_stream).await), vec![1]);
        assert!(seqs(&drain(&carol, carol_stream).await).len() <= 1);
    }

    #[tokio::test]
    async fn a_removal_that_never_comes_holds_messages_only_for_the_reorder_window() {
        let window = Duration::from_secs(2);
        let hub = Hub::new(window);
        let (alice, alice_stream) = Outbox::new("s-a".into(), "alice".into(), 8);
        hub.subscribe("r", alice.clone());
        anchor_all(&hub, "r", 0, 0);
        let start = Instant::now();
        hub.dispatch(message("r", 1).under_members_version(3), start);
        hub.expire_gaps(start + window / 2);
        hub.expire_gaps(start + window);
        // The version the overdue messages carried is applied: what follows
        // under it flows.
        let (carol, carol_stream) = Outbox::new("s-c".into(), "carol".into(), 8);
        hub.subscribe("r", carol.clone());
        hub.anchor("r", "s-c", 1, 3);
        hub.dispatch(message("r", 2).under_members_version(3), start + window);
        assert_eq!(seqs(&drain(&alice, alice_stream).await), vec![1, 2]);
        assert_eq!(seqs(&drain(&carol, carol_stream).await), vec![2]);
    }

    #[tokio::test]
    async fn typing_skips_the_typist_and_unsubscribe_forgets() {
        let hub = Hub::new(Duration::from_secs(1));
        let (alice, alice_stream) = Outbox::new("s-a".into(), "alice".into(), 8);
        let (bob, bob_stream) = Outbox::new("s-b".into(), "bob".into(), 8);
        hub.subscribe("r", alice.clone());
        hub.subscribe("r", bob.clone());
        anchor_all(&hub, "r", 0, 0);
        let typing = Envelope::new(
            "t1".into(),
            "r".into(),
            "gw".into(),
            1,
            Event::Typing { user_id: "alice".into(), typing: true },
        );
        hub.dispatch(typing, Instant::now());
        hub.unsubscribe("r", "s-a");
        hub.unsubscribe("r", "s-b");
        assert!(!hub.has_local_members("r"));
        assert_eq!(drain(&alice, alice_stream).await.len(), 0);
        assert_eq!(drain(&bob, bob_stream).await.len(), 1);
    }

    #[tokio::test]
    async fn receipts_only_move_forward_and_fallbacks_stay_off_streams() {
        use chat_core::envelope::{FallbackEvent, ReceiptEvent};
        let hub = Hub::new(Duration::from_secs(1));
        let (alice, stream) = Outbox::new("s-a".into(), "alice".into(), 16);
        hub.subscribe("r", alice.clone());
        anchor_all(&hub, "r", 0, 0);
        let receipt = |id: &str, status, seq| {
            let event = ReceiptEvent {
                user_id: "bob".into(),
                status,
                up_to_seq: seq,
                message_id: String::new(),
                reason: String::new(),
                via: String::new(),
                recorded: false,
            };
            Envelope::new(id.into(), "r".into(), "gw".into(), 1, Event::Receipt(event))
        };
        let now = Instant::now();
        hub.dispatch(receipt("1", ReceiptStatus::Read, 3), now);
        hub.dispatch(receipt("2", ReceiptStatus::Delivered, 2), now);
        hub.dispatch(receipt("3", ReceiptStatus::Delivered, 3), now);
        hub.dispatch(receipt("4", ReceiptStatus::Delivered, 4), now);
        hub.dispatch(receipt("5", ReceiptStatus::Read, 2), now);
        hub.dispatch(receipt("6", ReceiptStatus::Failed, 1), now);
        let fallback = Event::Fallback(FallbackEvent {
            user_id: "alice".into(),
            to: "telegram:1".into(),
            message: MessageEvent {
                message_id: "m".into(),
                seq: 1,
                sender: "bob".into(),
                body: "x".into(),
                client_message_id: String::new(),
                external_recipients: Vec::new(),
            },
        });
        hub.dispatch(Envelope::new("7".into(), "r".into(), "fallback".into(), 1, fallback), now);
        let seen: Vec<(i32, u64)> = drain(&alice, stream)
            .await
            .into_iter()
            .filter_map(|e| match e {
                Ok(ServerEvent { event: Some(PbEvent::Receipt(r)) }) => Some((r.status, r.up_to_seq)),
                _ => None,
            })
            .collect();
        let (read, delivered, failed) =
            (pb::MessageStatus::Read as i32, pb::MessageStatus::Delivered as i32, pb::MessageStatus::Failed as i32);
        assert_eq!(seen, vec![(read, 3), (delivered, 4), (failed, 1)]);
        assert_eq!(hub.counters.stale_receipts.load(Ordering::Relaxed), 3);
        assert_eq!(hub.counters.not_for_streams.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn slow_member_is_cut_off_without_hurting_others() {
        let hub = Hub::new(Duration::from_secs(1));
        let (slow, _slow_stream) = Outbox::new("s-slow".into(), "slow".into(), 2);
        let (fast, fast_stream) = Outbox::new("s-fast".into(), "fast".into(), 64);
        hub.subscribe("r", slow.clone());
        hub.subscribe("r", fast.clone());
        anchor_all(&hub, "r", 0, 0);
        for seq in 1..=10 {
            hub.dispatch(message("r", seq), Instant::now());
        }
        assert!(slow.is_closed());
        assert_eq!(hub.counters.slow_consumers.load(Ordering::Relaxed), 1);
        assert_eq!(seqs(&drain(&fast, fast_stream).await), (1..=10).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_gap_settled_from_the_store_delivers_its_message_or_passes_its_void() {
        use chat_core::store::StoredMessage;
        let delay = Duration::from_millis(250);
        let hub = Hub::new(Duration::from_secs(60));
        let (bob, stream) = Outbox::new("s".into(), "bob".into(), 64);
        hub.subscribe("room1", bob.clone());
        anchor_all(&hub, "room1", 0, 0);
        let start = Instant::now();
        hub.dispatch(message("room1", 3), start);
        assert!(hub.gaps_to_settle(start, delay).is_empty(), "not waited long enough");
        let gaps = hub.gaps_to_settle(start + delay, delay);
        assert_eq!(gaps, vec![("room1".to_owned(), vec![1, 2])]);
        assert!(hub.gaps_to_settle(start + delay, delay).is_empty(), "asked once per delay");
        hub.settled("room1", 2, Settled::Void, start + delay);
        let Event::Message(m) = message("room1", 1).event else { unreachable!() };
        let stored = StoredMessage {
            conversation_id: "room1".into(),
            seq: 1,
            message_id: m.message_id,
            sender: m.sender,
            body: m.body,
            sent_at_ms: 1,
            client_message_id: String::new(),
            members_version: 0,
        };
        hub.settled("room1", 1, Settled::Message(stored), start + delay);
        assert!(hub.gaps_to_settle(start + delay * 2, delay).is_empty(), "no gap left");
        hub.dispatch(message("room1", 1), start + delay);
        hub.dispatch(message("room1", 4), start + delay);
        assert_eq!(seqs(&drain(&bob, stream).await), vec![1, 3, 4]);
        assert_eq!(hub.counters.duplicates.load(Ordering::Relaxed), 1, "the bus's late copy of 1");
        assert_eq!(
            (hub.counters.settled_messages.load(Ordering::Relaxed), hub.counters.settled_voids.load(Ordering::Relaxed)),
            (1, 1)
        );
    }
}
