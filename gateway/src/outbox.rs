//! One client stream's outbound side: a bounded buffer of [`SharedEvent`]s
//! and the stream tonic sends from it.
//!
//! Overflow policy: an [`Outbox`] never grows past its capacity. When a
//! delivery finds it full, the client is too slow: the outbox is closed with
//! a `Disconnect { SLOW_CONSUMER }` carrying resume points (the last `seq`
//! given to this stream per conversation), the buffered events are still
//! sent, then the stream ends with `RESOURCE_EXHAUSTED`. A gateway shutdown
//! closes it the same way with `SHUTDOWN` and `UNAVAILABLE`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::Stream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

use crate::closing::Closing;
use crate::wire::{CloseReason, Facts, SharedEvent};

pub(crate) type EventStream = Pin<Box<dyn Stream<Item = Result<SharedEvent, Status>> + Send + 'static>>;

/// A delivery that did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Undeliverable {
    /// The client went away; forget the session.
    Gone,
    /// The buffer was full; the outbox is now closing.
    Overflow,
}

#[derive(Debug)]
pub(crate) struct Outbox {
    pub(crate) session_id: String,
    pub(crate) user_id: String,
    tx: mpsc::Sender<SharedEvent>,
    /// Cancelled when the stream must end (after what is buffered).
    closed: Closing,
    state: Mutex<OutboxState>,
}

#[derive(Debug, Default)]
struct OutboxState {
    last_seq: HashMap<String, u64>,
    terminal: Option<CloseReason>,
    /// A connection-wide error to end the stream with, without `Disconnect`.
    failed: Option<(Code, String)>,
    /// Conversations being resumed: their live messages wait here until the
    /// stored ones have been delivered.
    held: HashMap<String, Vec<SharedEvent>>,
    /// Resumed conversations → the resume point: what the client had
    /// before. A live message at or below it (held in this gateway's
    /// reorderer behind a gap when the stream joined) is not shown again.
    resumed_after: HashMap<String, u64>,
    /// Receipts this stream has been shown (its join snapshots included).
    receipts: crate::receipts::ReceiptPositions,
}

impl Outbox {
    /// A new outbox and the stream to hand to tonic.
    pub(crate) fn new(session_id: String, user_id: String, capacity: usize) -> (Arc<Self>, EventStream) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let outbox = Arc::new(Self {
            session_id,
            user_id,
            tx,
            closed: Closing::default(),
            state: Mutex::new(OutboxState::default()),
        });
        let stream = outbound_stream(rx, outbox.clone());
        (outbox, stream)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, OutboxState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues an event without waiting. A message's seq is recorded as this
    /// stream's resume point for its conversation.
    pub(crate) fn deliver(&self, event: impl Into<SharedEvent>) -> Result<(), Undeliverable> {
        let event = event.into();
        let (held_conversation, seq) = match event.facts() {
            Facts::Message { conversation_id, seq } => (Some(conversation_id.as_str()), *seq),
            _ => (None, 0),
        };
        // Checking `closed`, queueing and recording the resume point happen
        // under the lock that closing takes: an event is either queued before
        // the close (and drained before the `Disconnect`) or refused, so the
        // resume points never name an event the client will not get.
        let mut state = self.state();
        if self.closed.is_cancelled() {
            return Err(Undeliverable::Gone);
        }
        if held_conversation.is_some_and(|c| state.resumed_after.get(c).is_some_and(|after| seq <= *after)) {
            return Ok(());
        }
        if let Some(conversation) = held_conversation
            && let Some(held) = state.held.get_mut(conversation)
        {
            if held.len() >= self.tx.max_capacity() {
                state.terminal.get_or_insert(CloseReason::SlowConsumer);
                self.closed.cancel();
                return Err(Undeliverable::Overflow);
            }
            held.push(event);
            return Ok(());
        }
        Self::queue(&self.tx, &self.closed, &mut state, event)
    }

    /// Queues without waiting and records a message's seq as the resume
    /// point of its conversation. The slot is reserved first, so the resume
    /// point moves only for an event that is surely queued.
    fn queue(
        tx: &mpsc::Sender<SharedEvent>,
        closed: &Closing,
        state: &mut OutboxState,
        event: SharedEvent,
    ) -> Result<(), Undeliverable> {
        let permit = match tx.try_reserve() {
            Ok(permit) => permit,
            Err(mpsc::error::TrySendError::Full(())) => {
                state.terminal.get_or_insert(CloseReason::SlowConsumer);
                closed.cancel();
                return Err(Undeliverable::Overflow);
            }
            Err(mpsc::error::TrySendError::Closed(())) => return Err(Undeliverable::Gone),
        };
        if let Facts::Message { conversation_id, seq } = event.facts() {
            // The conversation id is copied only the first time it is seen.
            match state.last_seq.get_mut(conversation_id) {
                Some(last) => *last = (*last).max(*seq),
                None => {
                    state.last_seq.insert(conversation_id.clone(), *seq);
                }
            }
        }
        permit.send(event);
        Ok(())
    }

    /// Starts holding the live messages of a conversation (for a resume).
    pub(crate) fn hold(&self, conversation_id: &str) {
        self.state().held.entry(conversation_id.to_owned()).or_default();
    }

    /// The (checked) point a held conversation resumes after: the client
    /// has everything up to it, so nothing at or below it is shown again,
    /// and it is this stream's resume point until something newer is queued.
    pub(crate) fn resume_after(&self, conversation_id: &str, after: u64) {
        let mut state = self.state();
        state.resumed_after.insert(conversation_id.to_owned(), after);
        let last = state.last_seq.entry(conversation_id.to_owned()).or_insert(0);
        *last = (*last).max(after);
    }

    /// Queues a stored message of a held conversation, waiting for room in
    /// the buffer (the client reads at its pace) rather than overflowing.
    pub(crate) async fn deliver_stored(&self, event: impl Into<SharedEvent>) -> Result<(), Undeliverable> {
        let event = event.into();
        let Facts::Message { conversation_id, seq } = event.facts() else { return self.deliver(event) };
        let seq = Some((conversation_id.clone(), *seq));
        let permit = tokio::select! {
            permit = self.tx.reserve() => permit.map_err(|_| Undeliverable::Gone)?,
            () = self.closed.token().cancelled() => return Err(Undeliverable::Gone),
        };
        let mut state = self.state();
        if self.closed.is_cancelled() {
            return Err(Undeliverable::Gone);
        }
        permit.send(event);
        if let Some((conversation, seq)) = seq {
            // A backfill is contiguous from the resume point: the client now
            // has everything up to `seq`, so the floor moves with it. The live
            // copy of a stored message can reach this gateway only after the
            // backfill read it (the sender records before publishing), and
            // must not be shown again then.
            if let Some(floor) = state.resumed_after.get_mut(&conversation) {
                *floor = (*floor).max(seq);
            }
            let last = state.last_seq.entry(conversation).or_insert(0);
            *last = (*last).max(seq);
        }
        Ok(())
    }

    /// Ends holding a conversation: its held live messages newer than what
    /// was delivered are queued, in order, and later ones flow directly.
    pub(crate) fn release(&self, conversation_id: &str) -> Result<(), Undeliverable> {
        let mut state = self.state();
        let held = state.held.remove(conversation_id).unwrap_or_default();
        let delivered = state.last_seq.get(conversation_id).copied().unwrap_or(0);
        for event in held {
            if event.seq_in(conversation_id).is_none_or(|seq| seq <= delivered) {
                continue;
            }
            if self.closed.is_cancelled() {
                return Err(Undeliverable::Gone);
            }
            Self::queue(&self.tx, &self.closed, &mut state, event)?;
        }
        Ok(())
    }

    /// Ends the stream after what is buffered; the first reason wins.
    pub(crate) fn close(&self, reason: CloseReason) {
        let mut state = self.state();
        state.terminal.get_or_insert(reason);
        self.closed.cancel();
    }

    /// Ends the stream after what is buffered with `code`, for errors that
    /// concern the whole connection (an oversized or undecodable frame).
    pub(crate) fn fail(&self, code: Code, message: String) {
        let mut state = self.state();
        state.failed.get_or_insert((code, message));
        self.closed.cancel();
    }

    /// Ends the stream after what is buffered, with an OK status.
    #[cfg(test)]
    pub(crate) fn finish(&self) {
        let _state = self.state();
        self.closed.cancel();
    }

    #[cfg(test)]
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    pub(crate) fn closed(&self) -> &CancellationToken {
        self.closed.token()
    }

    /// Resolves when the client's receiving side is gone.
    pub(crate) async fn gone(&self) {
        self.tx.closed().await;
    }

    /// Whether an event is news to this stream: false for a receipt that
    /// would move a user backwards from what the stream has seen.
    pub(crate) fn receipt_is_news(&self, event: &SharedEvent) -> bool {
        let Facts::Receipt { conversation_id, user_id, status, up_to_seq } = event.facts() else { return true };
        self.state().receipts.advance(conversation_id, user_id, *status, *up_to_seq)
    }

    /// Records the receipt positions a join snapshot showed this stream.
    pub(crate) fn seed_receipts(&self, conversation_id: &str, members: &[chat_core::store::MemberState]) {
        self.state().receipts.seed(conversation_id, members);
    }

    /// The seq of the last message of a conversation given to this stream.
    pub(crate) fn last_seq(&self, conversation_id: &str) -> u64 {
        self.state().last_seq.get(conversation_id).copied().unwrap_or(0)
    }

    /// (conversation, last seq given to this stream), by conversation.
    pub(crate) fn resume_points(&self) -> Vec<(String, u64)> {
        let mut points: Vec<(String, u64)> = self
            .state()
            .last_seq
            .iter()
            .map(|(conversation_id, last_seq)| (conversation_id.clone(), *last_seq))
            .collect();
        points.sort();
        points
    }

    /// The events that end a closed stream: a `Disconnect` and a status.
    fn terminal(&self) -> Option<(Option<SharedEvent>, Status)> {
        if let Some((code, message)) = self.state().failed.clone() {
            return Some((None, Status::new(code, message)));
        }
        let reason = self.state().terminal?;
        let (event, status) = crate::wire::disconnect(reason, self.resume_points());
        Some((Some(event), status))
    }
}

fn outbound_stream(rx: mpsc::Receiver<SharedEvent>, outbox: Arc<Outbox>) -> EventStream {
    enum Phase {
        Live,
        Ending(Option<Status>),
        Done,
    }
    let stream = futures::stream::unfold((rx, outbox, Phase::Live), |(mut rx, outbox, phase)| async move {
        match phase {
            Phase::Live => {
                // A buffered event goes at once: waiting on the close as well
                // registers with the token and leaves it again, two locks per
                // event on a busy stream.
                let next = match rx.try_recv() {
                    Ok(event) => Some(event),
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                    Err(mpsc::error::TryRecvError::Empty) => tokio::select! {
                        biased;
                        event = rx.recv() => event,
                        () = outbox.closed.token().cancelled() => rx.try_recv().ok(),
                    },
                };
                match next {
                    Some(event) => Some((Ok(event), (rx, outbox, Phase::Live))),
                    None => match outbox.terminal() {
                        Some((Some(event), status)) => Some((Ok(event), (rx, outbox, Phase::Ending(Some(status))))),
                        Some((None, status)) => Some((Err(status), (rx, outbox, Phase::Done))),
                        None => None,
                    },
                }
            }
            Phase::Ending(status) => status.map(|s| (Err(s), (rx, outbox, Phase::Done))),
            Phase::Done => None,
        }
    });
    Box::pin(stream)
}

/// The stream as a client reads it: each event decoded from what tonic
/// would write.
#[cfg(test)]
pub(crate) fn decoded(stream: EventStream) -> impl Stream<Item = Result<chat_proto::pb::ServerEvent, Status>> {
    use futures::StreamExt;
    stream.map(|item| item.map(|event| event.wire().decode_event().expect("a shared event decodes")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_proto::pb::{self, ServerEvent, server_event::Event};
    use futures::StreamExt;

    fn message(conversation: &str, seq: u64) -> ServerEvent {
        ServerEvent {
            event: Some(Event::Message(pb::Message {
                conversation_id: conversation.into(),
                seq,
                ..Default::default()
            })),
        }
    }

    /// The seqs of the messages a finished stream carried, in order.
    async fn message_seqs(stream: EventStream) -> Vec<u64> {
        decoded(stream)
            .filter_map(|e| async move {
                match e {
                    Ok(ServerEvent { event: Some(Event::Message(m)) }) => Some(m.seq),
                    _ => None,
                }
            })
            .collect()
            .await
    }

    #[tokio::test]
    async fn overflow_closes_with_resume_points_after_buffered_events() {
        let (outbox, stream) = Outbox::new("s".into(), "u".into(), 2);
        let mut stream = Box::pin(decoded(stream));
        assert_eq!(outbox.deliver(message("a", 1)), Ok(()));
        assert_eq!(outbox.deliver(message("b", 7)), Ok(()));
        assert_eq!(outbox.deliver(message("a", 2)), Err(Undeliverable::Overflow));
        assert!(outbox.is_closed());
        assert_eq!(outbox.deliver(message("a", 3)), Err(Undeliverable::Gone));

        let mut seen = Vec::new();
        while let Some(item) = stream.next().await {
            seen.push(item);
        }
        assert_eq!(seen.len(), 4, "two buffered, disconnect, status");
        let Some(Ok(ServerEvent { event: Some(Event::Disconnect(d)) })) = seen.get(2) else {
            panic!("expected disconnect, got {:?}", seen.get(2));
        };
        assert_eq!(d.reason, pb::disconnect::Reason::SlowConsumer as i32);
        let points: Vec<_> = d.resume.iter().map(|p| (p.conversation_id.as_str(), p.last_seq)).collect();
        assert_eq!(points, vec![("a", 1), ("b", 7)]);
        let Some(Err(status)) = seen.get(3) else { panic!("expected status") };
        assert_eq!(status.code(), Code::ResourceExhausted);
    }

    #[tokio::test]
    async fn finish_ends_cleanly_and_shutdown_says_unavailable() {
        let (outbox, stream) = Outbox::new("s".into(), "u".into(), 4);
        outbox.deliver(message("a", 1)).expect("deliver");
        outbox.finish();
        let items: Vec<_> = stream.collect().await;
        assert_eq!(items.len(), 1);
        assert!(items[0].is_ok());

        let (outbox, stream) = Outbox::new("s".into(), "u".into(), 4);
        outbox.close(CloseReason::Shutdown);
        let items: Vec<_> = stream.collect().await;
        assert_eq!(items.len(), 2);
        let Err(status) = &items[1] else { panic!("expected status") };
        assert_eq!(status.code(), Code::Unavailable);
    }

    #[tokio::test]
    async fn held_live_messages_follow_the_stored_ones_without_duplicates() {
        let (outbox, stream) = Outbox::new("s".into(), "u".into(), 8);
        outbox.hold("a");
        outbox.resume_after("a", 2);
        outbox.deliver(message("a", 2)).expect("the client had it already");
        outbox.deliver(message("a", 5)).expect("held");
        outbox.deliver(message("b", 1)).expect("other conversations flow");
        outbox.deliver(message("a", 6)).expect("held");
        for seq in 3..=5 {
            outbox.deliver_stored(message("a", seq)).await.expect("stored");
        }
        outbox.release("a").expect("release");
        outbox.deliver(message("a", 7)).expect("live again");
        outbox.deliver(message("a", 1)).expect("a late one from before the resume point is not shown");
        outbox.finish();
        let seqs: Vec<(String, u64)> = decoded(stream)
            .filter_map(|e| async move {
                match e {
                    Ok(ServerEvent { event: Some(Event::Message(m)) }) => Some((m.conversation_id, m.seq)),
                    _ => None,
                }
            })
            .collect()
            .await;
        let a: Vec<u64> = seqs.iter().filter(|(c, _)| c == "a").map(|(_, s)| *s).collect();
        assert_eq!(a, vec![3, 4, 5, 6, 7]);
        assert_eq!(seqs.iter().filter(|(c, _)| c == "b").count(), 1);
    }

    #[tokio::test]
    async fn a_live_copy_arriving_after_its_backfill_is_not_shown_twice() {
        let (outbox, stream) = Outbox::new("s".into(), "u".into(), 8);
        outbox.hold("a");
        outbox.resume_after("a", 62);
        for seq in 63..=64 {
            outbox.deliver_stored(message("a", seq)).await.expect("stored");
        }
        outbox.release("a").expect("release");
        // The bus brings 63 to this gateway only now (it was recorded, and
        // read from storage, before its publish arrived here).
        outbox.deliver(message("a", 63)).expect("dropped");
        outbox.deliver(message("a", 65)).expect("live");
        outbox.finish();
        let seqs = message_seqs(stream).await;
        assert_eq!(seqs, vec![63, 64, 65]);
    }

    #[tokio::test]
    async fn stored_delivery_waits_for_room_instead_of_overflowing() {
        let (outbox, stream) = Outbox::new("s".into(), "u".into(), 2);
        let mut stream = Box::pin(decoded(stream));
        outbox.hold("a");
        let writer = {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                for seq in 1..=10 {
                    outbox.deliver_stored(message("a", seq)).await.expect("stored");
                }
                outbox.release("a").expect("release");
                outbox.finish();
            })
        };
        let mut got = Vec::new();
        while let Some(Ok(ServerEvent { event: Some(Event::Message(m)) })) = stream.next().await {
            got.push(m.seq);
        }
        writer.await.expect("writer");
        assert_eq!(got, (1..=10).collect::<Vec<_>>());
        assert!(!outbox.is_closed() || outbox.state().terminal.is_none(), "no overflow");
    }

    #[tokio::test]
    async fn dropped_stream_means_gone() {
        let (outbox, stream) = Outbox::new("s".into(), "u".into(), 4);
        drop(stream);
        assert_eq!(outbox.deliver(message("a", 1)), Err(Undeliverable::Gone));
    }

    #[tokio::test]
    async fn a_resume_with_nothing_to_backfill_shows_nothing_twice() {
        let (outbox, stream) = Outbox::new("s".into(), "u".into(), 8);
        outbox.hold("a");
        outbox.resume_after("a", 62);
        // 62 waited behind a gap in the gateway's reorderer when the stream
        // joined, and is released to it now.
        outbox.deliver(message("a", 62)).expect("dropped");
        outbox.deliver(message("a", 63)).expect("held");
        outbox.release("a").expect("release");
        assert_eq!(outbox.resume_points(), vec![("a".to_owned(), 63)]);
        outbox.finish();
        let seqs = message_seqs(stream).await;
        assert_eq!(seqs, vec![63]);
    }
}
