//! One `Connect` stream: reads the client's frames, answers each, and cleans
//! up when the stream ends.
//!
//! A frame's own error (bad input, a limit, a failed dependency) is answered
//! with an `ErrorEvent` naming the frame and the stream goes on. The stream
//! ends when the client goes away, when its outbox overflows, when its
//! connection sends frames faster than its frame limit, or when the gateway
//! shuts down (after a `Disconnect` with resume points).
//!
//! Frames are read as soon as they arrive, apart from handling them: the
//! connection's frame limit is checked on arrival, and HTTP/2 never holds
//! many unread frames (h2 ends a connection with `ENHANCE_YOUR_CALM` when
//! too many small DATA frames wait unread, which a client would see as
//! `UNAVAILABLE`). Frames then wait their turn in a bounded queue; a full
//! queue pauses reading (backpressure).
//!
//! A stream ended by the gateway (a slow consumer, a broken limit) gives its
//! client the stall grace to read the end; one that has not by then stopped
//! reading, and its connection is closed (`conn`), so it learns at once.
//!
//! A stream also ends when its token expires (after a `Disconnect` with
//! resume points), unless a refresh frame with a fresh token of the same
//! user moved the expiry on.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use chat_proto::pb::ClientFrame;
use futures::Stream;
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use tracing::Instrument;

use crate::app::App;
use crate::auth::Authenticator;
use crate::coalesce::{Coalescer, Offer};
use crate::conn::ConnState;
use crate::error::GatewayError;
use crate::limits::{DirectLimit, SendDeadline, Slot};
use crate::outbox::Outbox;
use crate::wire::{self, CloseReason, Command, SharedEvent};
use chat_core::envelope::ReceiptStatus;
use chat_core::limits;
use chat_core::store::{Direction, HistoryQuery, Settled};

/// Sends of one stream being published at once. Acceptance (seq) stays
/// sequential; publishing overlaps so a sender is not held back by the bus.
const PUBLISHES_IN_FLIGHT: usize = 32;
/// Stored messages a resume delivers at most; further behind, a client pages
/// `GetHistory` first.
const MAX_RESUME_BACKFILL: u64 = 10_000;
/// How long a closing stream waits for its sends being published.
const PUBLISH_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);
/// Frames read but not yet handled, at most (the frame burst, up to this).
const MAX_QUEUED_FRAMES: usize = 1024;
/// Bytes of frames read but not yet handled, at most; reading pauses there.
const MAX_QUEUED_FRAME_BYTES: usize = 256 * 1024;
/// Longest a stream is timed to live at once, whatever its token's `exp`
/// says (a timer must not overflow); a stream outliving it is timed again.
const MAX_EXPIRY_WAIT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

#[derive(Debug)]
pub(crate) struct Session {
    app: Arc<App>,
    outbox: Arc<Outbox>,
    joined: BTreeSet<String>,
    publishing: Arc<Semaphore>,
    /// Per conversation: the latest seq this stream has learnt of (the join
    /// snapshot's, or a message's since): acks and reads may not go past it.
    known_seq: HashMap<String, u64>,
    /// This stream's acks and reads, per conversation and kind: reported
    /// at most once per window, and never twice for one position.
    receipts: Coalescer,
    /// The connection this stream is on: its frame limit, and its close for
    /// a client that stalls.
    conn: Arc<ConnState>,
    /// The user's stream slot, held while the stream is served.
    _slot: Slot<String>,
    auth: Arc<Authenticator>,
    /// The `exp` of the token the stream is authorised by (the one it was
    /// opened with, or the latest refreshed), in seconds since the epoch.
    expires_at: u64,
    /// The client's W3C trace context from the `Connect` call's metadata:
    /// the parent of every send's span. Without it each send is a trace of
    /// its own (a stream lives for hours; one trace per stream would not).
    trace_parent: Option<String>,
}

/// The span of one send, from the frame (or unary call) to its answer: a
/// child of the client's trace context when it sent one. A disabled span
/// when traces are off, so the hot path pays nothing for them.
pub(crate) fn send_span(user_id: &str, client: Option<&str>) -> tracing::Span {
    if !service::telemetry::enabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "chat.send",
        user_id,
        conversation_id = tracing::field::Empty,
        seq = tracing::field::Empty,
        trace_id = tracing::field::Empty
    );
    service::telemetry::set_parent(&span, client);
    span
}

/// A frame read off the stream, with its share of the queue's bytes. Boxed:
/// the queue's first block of slots is allocated with the stream, and a
/// slot the size of a frame made it several KB per idle stream.
type Queued = (Box<ClientFrame>, OwnedSemaphorePermit);

impl Session {
    /// `conn` is the connection's state when the transport gave one; without
    /// it the stream is limited as a connection of its own. `expires_at` is
    /// the `exp` of the token the stream was opened with.
    pub(crate) fn new(
        app: Arc<App>,
        outbox: Arc<Outbox>,
        conn: Option<Arc<ConnState>>,
        slot: Slot<String>,
        auth: Arc<Authenticator>,
        expires_at: u64,
    ) -> Self {
        let conn = conn.unwrap_or_else(|| {
            Arc::new(ConnState::new(None, DirectLimit::new("frames per connection", app.limits().frames)))
        });
        let receipts = Coalescer::new(app.limits().receipt_window);
        Self {
            auth,
            expires_at,
            app,
            outbox,
            joined: BTreeSet::new(),
            publishing: Arc::new(Semaphore::new(PUBLISHES_IN_FLIGHT)),
            known_seq: HashMap::new(),
            receipts,
            conn,
            _slot: slot,
            trace_parent: None,
        }
    }

    /// Sends on this stream continue the client's trace.
    pub(crate) fn traced_by(mut self, traceparent: Option<String>) -> Self {
        self.trace_parent = traceparent;
        self
    }

    pub(crate) fn user(&self) -> &str {
        &self.outbox.user_id
    }

    /// The session's id (its outbox's).
    pub(crate) fn id(&self) -> &str {
        &self.outbox.session_id
    }

    /// An `OpenSession` stream's first event: the session's name, for
    /// `SendFrames`, and when its token expires.
    pub(crate) fn announce(&self) {
        self.deliver(wire::session_opened(self.id(), self.app.gateway_id(), self.expires_at));
    }

    /// Serves the stream until it ends, then leaves every conversation's
    /// live subscription and presence.
    pub(crate) async fn run<S>(mut self, inbound: S)
    where
        S: Stream<Item = Result<ClientFrame, Status>> + Unpin,
    {
        let burst = usize::try_from(self.app.limits().frames.burst).unwrap_or(MAX_QUEUED_FRAMES);
        let (queue, mut frames) = mpsc::channel::<Queued>(burst.clamp(1, MAX_QUEUED_FRAMES));
        let stop = CancellationToken::new();
        let reader = read_frames(inbound, queue, self.outbox.clone(), self.conn.clone(), stop.clone());
        let mut ended_here = false;
        let expiry = tokio::time::sleep(self.until_expiry());
        tokio::pin!(expiry);
        let serve = async {
            let mut reading = true;
            loop {
                let receipts_due = self.receipts.next_due();
                tokio::select! {
                    () = self.app.closing().cancelled() => {
                        self.close_after_publishes(CloseReason::Shutdown).await;
                        break;
                    }
                    () = &mut expiry => {
                        let left = self.until_expiry();
                        if !left.is_zero() {
                            // A refresh moved the expiry, or it was beyond one wait.
                            expiry.as_mut().reset(tokio::time::Instant::now() + left);
                            continue;
                        }
                        tracing::info!(user_id = self.user(), session_id = self.outbox.session_id, "stream token expired");
                        self.close_after_publishes(CloseReason::TokenExpired).await;
                        ended_here = true;
                        break;
                    }
                    () = self.outbox.closed().cancelled() => {
                        ended_here = true;
                        break;
                    }
                    () = self.outbox.gone() => break,
                    // Boxed, here and below: a frame's handling (and a
                    // flush's) would otherwise be state every idle stream's
                    // task carries.
                    () = tokio::time::sleep_until(receipts_due.unwrap_or_else(far_future)), if receipts_due.is_some() => {
                        Box::pin(self.flush_receipts(false)).await;
                    }
                    frame = frames.recv(), if reading => match frame {
                        Some((frame, _bytes)) => Box::pin(self.handle(*frame)).await,
                        // A client that half-closes may still be listening
                        // (grpcurl does): keep delivering until it goes away.
                        None => reading = false,
                    },
                }
            }
            stop.cancel();
        };
        tokio::join!(reader, serve);
        self.cleanup().await;
        if ended_here {
            self.close_if_stalled();
        }
    }

    /// The stream was ended here: its client gets the stall grace to read
    /// the end (hyper drops the response once it has taken the trailers);
    /// one that has not by then is not reading, and hyper would keep waiting
    /// for its flow-control window with the end unsent. Its connection is
    /// closed, which it notices at once.
    fn close_if_stalled(&self) {
        let (outbox, conn, grace) = (self.outbox.clone(), self.conn.clone(), self.app.limits().stall_grace);
        tokio::spawn(async move {
            if tokio::time::timeout(grace, outbox.gone()).await.is_err() {
                tracing::warn!(
                    user_id = outbox.user_id,
                    session_id = outbox.session_id,
                    grace_ms = grace.as_millis(),
                    "client did not read the end of its stream; closing its connection"
                );
                conn.close();
            }
        });
    }

    /// Ends the stream with `reason` once the answers to sends being
    /// published have gone out, so no accepted send goes unacknowledged.
    async fn close_after_publishes(&self, reason: CloseReason) {
        let all = u32::try_from(PUBLISHES_IN_FLIGHT).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(PUBLISH_DRAIN, self.publishing.acquire_many(all)).await;
        self.outbox.close(reason);
    }

    /// How long until the stream's token expires (leeway included), capped.
    fn until_expiry(&self) -> std::time::Duration {
        self.auth.verifier().remaining(self.expires_at, chat_core::clock::now_ms(), MAX_EXPIRY_WAIT)
    }

    async fn cleanup(&mut self) {
        self.flush_receipts(true).await;
        for conversation_id in std::mem::take(&mut self.joined) {
            if let Err(e) = self.app.unsubscribe(&conversation_id, &self.outbox).await {
                tracing::warn!(conversation_id, user_id = self.user(), error = %e, "cleanup after stream end failed");
            }
        }
        tracing::info!(user_id = self.user(), session_id = self.outbox.session_id, "stream ended");
    }

    async fn handle(&mut self, frame: ClientFrame) {
        let (request_id, command) = wire::read_frame(frame);
        let Some(command) = command else {
            self.report(
                &request_id,
                "",
                "",
                GatewayError::InvalidArgument(
                    "frame is empty: set one of join, leave, send, typing, ack, read, refresh".into(),
                ),
            );
            return;
        };
        let result = match &command {
            Command::Join { conversation_id, resume_after } => self.join(conversation_id, *resume_after).await,
            Command::Leave { conversation_id } => self.leave(conversation_id).await,
            Command::Send { conversation_id, client_message_id, body } => {
                let span = send_span(&self.outbox.user_id, self.trace_parent.as_deref());
                span.record("conversation_id", conversation_id.as_str());
                self.send(&request_id, conversation_id, client_message_id, body).instrument(span).await
            }
            Command::Typing { conversation_id, typing } => self.typing(conversation_id, *typing).await,
            Command::Ack { conversation_id, seq } => {
                self.receipt(conversation_id, ReceiptStatus::Delivered, *seq).await
            }
            Command::Read { conversation_id, seq } => self.receipt(conversation_id, ReceiptStatus::Read, *seq).await,
            Command::Refresh { token } => self.refresh(token).await,
        };
        if let Err(err) = result {
            self.report(&request_id, command.conversation_id(), command.client_message_id(), err);
        }
    }

    fn deliver(&self, event: SharedEvent) {
        // Overflow closes the outbox; the run loop then ends the stream.
        let _ = self.outbox.deliver(event);
    }

    fn report(&self, request_id: &str, conversation_id: &str, client_message_id: &str, err: GatewayError) {
        self.deliver(wire::error_event(request_id, conversation_id, client_message_id, &err));
    }

    /// The conversation must be joined on this stream, and still heard by it:
    /// a leave from another of the user's streams, or a removal, ends that.
    async fn joined_conversation(&mut self, conversation_id: &str) -> Result<(), GatewayError> {
        limits::conversation_id(conversation_id)?;
        if !self.joined.contains(conversation_id) {
            return Err(GatewayError::FailedPrecondition(format!(
                "conversation {conversation_id} is not joined on this stream; send a join frame first"
            )));
        }
        if !self.app.hears(conversation_id, &self.outbox) {
            self.joined.remove(conversation_id);
            self.app.unsubscribe(conversation_id, &self.outbox).await?;
            return Err(GatewayError::FailedPrecondition(format!(
                "you are no longer in conversation {conversation_id} (you left it on another stream, or were removed)"
            )));
        }
        Ok(())
    }

    async fn join(&mut self, conversation_id: &str, resume_after: Option<u64>) -> Result<(), GatewayError> {
        limits::conversation_id(conversation_id)?;
        let max = self.app.max_conversations_per_stream();
        if !self.joined.contains(conversation_id) && self.joined.len() >= max {
            return Err(GatewayError::ResourceExhausted(format!(
                "this stream has joined {max} conversations, the limit; leave one first or open another stream"
            )));
        }
        // Resume: live messages wait in the outbox from before the
        // subscription until the stored ones have been delivered.
        if resume_after.is_some() {
            self.outbox.hold(conversation_id);
        }
        let outcome = match self.app.join(conversation_id, &self.outbox).await {
            Ok(outcome) => outcome,
            Err(e) => {
                let _ = self.outbox.release(conversation_id);
                return Err(e);
            }
        };
        self.joined.insert(conversation_id.to_owned());
        let known = self.known_seq.entry(conversation_id.to_owned()).or_default();
        *known = (*known).max(outcome.last_seq);
        // Receipts older than the snapshot must not reach the stream after it.
        self.outbox.seed_receipts(conversation_id, &outcome.members);
        self.deliver(wire::presence_snapshot(conversation_id, outcome.online, outcome.last_seq, outcome.members));
        metrics::counter!("chat_joins_total", "resume" => if resume_after.is_some() { "true" } else { "false" })
            .increment(1);
        if let Some(after) = resume_after {
            let backfilled = self.backfill(conversation_id, after, outcome.last_seq).await;
            // Released even when the backfill failed: live messages go on.
            let _ = self.outbox.release(conversation_id);
            backfilled?;
            metrics::counter!("chat_resume_backfills_total").increment(1);
        }
        Ok(())
    }

    /// Delivers the stored messages after `after` up to `last` (the latest
    /// seq when the stream subscribed; later ones arrive live), in order.
    /// A seq missing from storage is being recorded right now or never will
    /// be (its sender died after taking it): after the settle delay the
    /// store settles it, delivered if recorded, passed over if void.
    async fn backfill(&self, conversation_id: &str, after: u64, last: u64) -> Result<(), GatewayError> {
        if after > last {
            return Err(GatewayError::InvalidArgument(format!(
                "resume_after_seq {after} is beyond the latest seq {last} of {conversation_id}; joined without resuming"
            )));
        }
        if last - after > MAX_RESUME_BACKFILL {
            return Err(GatewayError::FailedPrecondition(format!(
                "resume_after_seq {after} is {} messages behind (the limit is {MAX_RESUME_BACKFILL}); page GetHistory, then join with a closer resume point",
                last - after
            )));
        }
        self.outbox.resume_after(conversation_id, after);
        // A seq at or below `last` that the store lacks was numbered and is
        // being recorded right now, or never will be: after the settle delay
        // (once per backfill) the store settles it, message or void.
        let mut settle_at = None;
        let mut next = after + 1;
        while next <= last {
            let want = usize::try_from(last - next + 1).unwrap_or(usize::MAX).min(crate::history::MAX_HISTORY_PAGE);
            let query = HistoryQuery { direction: Direction::Forward, from_seq: Some(next - 1), limit: want };
            let page = self.app.stored_for_stream(conversation_id, query).await?;
            let before = next;
            for message in page.into_iter().filter(|m| m.seq <= last) {
                if message.seq != next {
                    break;
                }
                if self.outbox.deliver_stored(wire::stored_message(message)).await.is_err() {
                    return Ok(()); // the stream is closing; its resume point says where it stopped
                }
                next += 1;
            }
            if next > last || next > before {
                continue;
            }
            let at = *settle_at.get_or_insert_with(|| tokio::time::Instant::now() + self.app.limits().gap_settle);
            tokio::time::sleep_until(at).await;
            match self.app.settle(conversation_id, next).await? {
                Settled::Message(message) => {
                    if self.outbox.deliver_stored(wire::stored_message(message)).await.is_err() {
                        return Ok(());
                    }
                }
                Settled::Void => tracing::info!(conversation_id, seq = next, "resume passes over a void seq"),
            }
            next += 1;
        }
        Ok(())
    }

    async fn leave(&mut self, conversation_id: &str) -> Result<(), GatewayError> {
        limits::conversation_id(conversation_id)?;
        if self.joined.remove(conversation_id) {
            self.app.unsubscribe(conversation_id, &self.outbox).await?;
        }
        self.receipts.forget(conversation_id);
        if !self.app.leave(conversation_id, &self.outbox.user_id).await? {
            return Err(GatewayError::FailedPrecondition(format!("not a member of conversation {conversation_id}")));
        }
        // The leaver no longer hears the conversation; confirm directly.
        self.deliver(wire::member_left(conversation_id, &self.outbox.user_id));
        Ok(())
    }

    async fn send(
        &mut self,
        request_id: &str,
        conversation_id: &str,
        client_message_id: &str,
        body: &str,
    ) -> Result<(), GatewayError> {
        let started = std::time::Instant::now();
        let deadline = SendDeadline::start(self.app.limits().send_deadline);
        let send = self.app.check_send(conversation_id, client_message_id, body)?;
        self.joined_conversation(conversation_id).await?;
        // Waiting for a permit holds back this stream's next frames:
        // backpressure, not an unbounded queue. Taken before the seq, so a
        // numbered send is recorded at once rather than after a wait that
        // could outlast the receivers' settle delay.
        let publishing = self.publishing.clone();
        let permit = deadline
            .bound(async {
                publishing.acquire_owned().await.map_err(|_| GatewayError::Internal("publish limiter closed".into()))
            })
            .await?;
        let accepted = deadline.bound(self.app.accept(&self.outbox.user_id, &send)).await?;
        let app = self.app.clone();
        let outbox = self.outbox.clone();
        let request_id = request_id.to_owned();
        let send = send.to_owned_send();
        let span = tracing::Span::current();
        span.record("seq", accepted.seq);
        let mut publish = Box::pin(
            async move {
                let _permit = permit;
                let published = deadline.bound(app.publish_accepted(&outbox.user_id, &send.as_send(), accepted)).await;
                let (conversation_id, client_message_id) = send.into_ids();
                let event = match published {
                    Ok(accepted) => {
                        metrics::histogram!("chat_send_accept_seconds").record(started.elapsed().as_secs_f64());
                        wire::send_accepted(request_id, conversation_id, client_message_id, accepted)
                    }
                    Err(err) => wire::error_event(&request_id, &conversation_id, &client_message_id, &err),
                };
                let _ = outbox.deliver(event);
            }
            .instrument(span),
        );
        // A bus that takes the event at once (the embedded one) needs no
        // task of its own; one that must wait for AWS goes on in its own,
        // and the stream's next frames meanwhile.
        if futures::poll!(publish.as_mut()).is_pending() {
            self.app.tasks().spawn(publish);
        }
        Ok(())
    }

    /// An ack (DELIVERED) or read frame: cumulative up to `seq`, which may
    /// not pass the latest seq this stream knows of. Repeats do nothing.
    async fn receipt(&mut self, conversation_id: &str, status: ReceiptStatus, seq: u64) -> Result<(), GatewayError> {
        self.joined_conversation(conversation_id).await?;
        let known =
            self.known_seq.get(conversation_id).copied().unwrap_or(0).max(self.outbox.last_seq(conversation_id));
        if seq == 0 || seq > known {
            return Err(GatewayError::InvalidArgument(format!(
                "{} seq {seq} of {conversation_id} is out of range: this stream knows messages 1..={known}",
                status.as_str()
            )));
        }
        let key = (conversation_id.to_owned(), status);
        if !self.receipts.moves(&key, seq) {
            return Ok(()); // a repeat costs nothing
        }
        self.app.charge_receipt(self.user())?;
        let now = tokio::time::Instant::now();
        match self.receipts.offer(&key, seq, now) {
            Offer::Now => {
                self.app.report_receipt(conversation_id, &self.outbox.user_id, status, seq).await?;
                self.receipts.reported(&key, seq, now);
                count_reported(status);
            }
            Offer::Later => metrics::counter!("chat_receipts_coalesced_total").increment(1),
            Offer::Nothing => {}
        }
        Ok(())
    }

    /// Reports the receipts whose window has ended (every one waiting,
    /// with `all`, as the stream ends). One that fails waits for the next
    /// window; at the end it is logged (a later ack, on any stream, covers
    /// it: receipts are cumulative).
    async fn flush_receipts(&mut self, all: bool) {
        let now = tokio::time::Instant::now();
        for ((conversation_id, status), seq) in self.receipts.due(now, all) {
            let key = (conversation_id, status);
            match self.app.report_receipt(&key.0, &self.outbox.user_id, status, seq).await {
                Ok(()) => {
                    self.receipts.reported(&key, seq, now);
                    count_reported(status);
                }
                Err(e) => {
                    tracing::warn!(conversation_id = key.0, user_id = self.user(), seq, error = %e, "coalesced receipt not reported");
                    self.receipts.retry(&key, seq, now);
                }
            }
        }
    }

    /// A fresh token: valid and of this stream's user, it moves the stream's
    /// expiry to its own (never earlier).
    async fn refresh(&mut self, token: &str) -> Result<(), GatewayError> {
        let identity = self
            .auth
            .identify(token.trim())
            .await
            .map_err(|status| GatewayError::Unauthenticated(format!("refresh refused: {}", status.message())))?;
        if identity.user != self.user() {
            return Err(GatewayError::PermissionDenied(format!(
                "refresh refused: the token is for {:?}, this stream is {:?}'s",
                identity.user,
                self.user()
            )));
        }
        self.expires_at = self.expires_at.max(identity.expires_at);
        tracing::debug!(user_id = self.user(), expires_at = self.expires_at, "stream token refreshed");
        Ok(())
    }

    async fn typing(&mut self, conversation_id: &str, typing: bool) -> Result<(), GatewayError> {
        self.joined_conversation(conversation_id).await?;
        self.app.typing(conversation_id, &self.outbox.user_id, typing).await
    }
}

/// A receipt this stream reported (published, and for READ recorded).
fn count_reported(status: ReceiptStatus) {
    metrics::counter!("chat_receipts_reported_total", "status" => status.as_str()).increment(1);
}

/// A deadline that never comes (for a timer branch that is off).
fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + MAX_EXPIRY_WAIT
}

/// Reads the client's frames as they arrive until the stream ends or `stop`:
/// each is counted against the connection's frame limit (going over ends the
/// stream with `RESOURCE_EXHAUSTED`) and queued for the session; a full queue
/// pauses reading. Ending (the client half-closed) closes the queue.
async fn read_frames<S>(
    inbound: S,
    queue: mpsc::Sender<Queued>,
    outbox: Arc<Outbox>,
    conn: Arc<ConnState>,
    stop: CancellationToken,
) where
    S: Stream<Item = Result<ClientFrame, Status>> + Unpin,
{
    use futures::StreamExt;
    let mut inbound = inbound;
    let bytes = Arc::new(Semaphore::new(MAX_QUEUED_FRAME_BYTES));
    loop {
        let item = tokio::select! {
            () = stop.cancelled() => return,
            item = inbound.next() => item,
        };
        let frame = match item {
            Some(Ok(frame)) => frame,
            None => return,
            Some(Err(status)) => {
                tracing::debug!(user_id = outbox.user_id, code = ?status.code(), "inbound stream failed");
                outbox.fail(inbound_error_code(&status), status.message().to_owned());
                return;
            }
        };
        if let Err(limit) = conn.frames.check() {
            tracing::info!(
                user_id = outbox.user_id,
                session_id = outbox.session_id,
                "frame limit broken; ending the stream"
            );
            outbox.fail(
                Code::ResourceExhausted,
                format!("{limit} (this stream is ended: open another then, and send fewer frames)"),
            );
            return;
        }
        let size = u32::try_from(frame.encoded_len().clamp(1, MAX_QUEUED_FRAME_BYTES)).unwrap_or(u32::MAX);
        let permit = tokio::select! {
            () = stop.cancelled() => return,
            permit = bytes.clone().acquire_many_owned(size) => permit,
        };
        let Ok(permit) = permit else { return };
        let queued = tokio::select! {
            () = stop.cancelled() => return,
            queued = queue.send((Box::new(frame), permit)) => queued,
        };
        if queued.is_err() {
            return;
        }
    }
}

/// The status a stream ends with when the client's side of it broke: a frame
/// over the size limit is `RESOURCE_EXHAUSTED`, an undecodable one
/// `INVALID_ARGUMENT`; anything else is passed on.
fn inbound_error_code(status: &Status) -> Code {
    match status.code() {
        // tonic's "message length too large": a limit, like the body limit.
        Code::OutOfRange => Code::ResourceExhausted,
        Code::Internal if status.message().contains("decode") => Code::InvalidArgument,
        code => code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::memory::MemoryBus;
    use crate::hub::Hub;
    use crate::limits::{Limits, Rate};
    use async_trait::async_trait;
    use chat_core::bus::{Bus, BusError};
    use chat_core::envelope::Envelope;
    use chat_core::memory::MemoryStore;
    use chat_core::store::{Accepted, SendRequest, Sequencer, StoreError, Stores};
    use chat_proto::pb::{self, client_frame::Frame, server_event::Event};
    use futures::StreamExt;
    use futures::channel::mpsc::{UnboundedSender, unbounded};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    /// A bus that never answers while `hang` is set (a frozen SNS), and
    /// remembers the receipts published.
    #[derive(Debug)]
    struct HangingBus {
        inner: MemoryBus,
        hang: AtomicBool,
        receipts: std::sync::Mutex<Vec<(ReceiptStatus, u64)>>,
    }

    impl HangingBus {
        fn receipts(&self) -> Vec<(ReceiptStatus, u64)> {
            self.receipts.lock().expect("receipts").clone()
        }
    }

    #[async_trait]
    impl Bus for HangingBus {
        async fn publish(&self, events: &[Envelope]) -> Result<(), BusError> {
            if self.hang.load(Ordering::Relaxed) {
                std::future::pending::<()>().await;
            }
            for event in events {
                if let chat_core::envelope::Event::Receipt(r) = &event.event {
                    self.receipts.lock().expect("receipts").push((r.status, r.up_to_seq));
                }
            }
            self.inner.publish(events).await
        }
    }

    /// A sequencer that never answers (a frozen DynamoDB).
    #[derive(Debug, Default)]
    struct HangingSequencer {
        inner: MemoryStore,
    }

    #[async_trait]
    impl Sequencer for HangingSequencer {
        async fn accept_send(&self, _: SendRequest<'_>) -> Result<Accepted, StoreError> {
            std::future::pending().await
        }
        async fn record_send(&self, _: SendRequest<'_>, _: Accepted) -> Result<Accepted, StoreError> {
            std::future::pending().await
        }
        async fn latest_seq(&self, conversation_id: &str) -> Result<u64, StoreError> {
            self.inner.latest_seq(conversation_id).await
        }
    }

    struct Setup {
        app: Arc<App>,
        bus: Arc<HangingBus>,
    }

    /// An app on the memory store where public rooms `r`, `a`, `b` and `c`
    /// exist.
    async fn setup(limits: Limits, sequencer: Option<Arc<dyn Sequencer>>) -> Setup {
        let hub = Arc::new(Hub::new(Duration::from_secs(1)));
        let store = Arc::new(MemoryStore::new());
        for room in ["r", "a", "b", "c"] {
            let plan =
                chat_core::conversation::plan(room.into(), chat_core::conversation::Kind::Public, "", "owner", &[], 0)
                    .expect("a valid room");
            chat_core::store::Membership::create(store.as_ref(), &plan).await.expect("room created");
        }
        let bus = Arc::new(HangingBus {
            inner: MemoryBus::new(hub.clone(), store.clone()),
            hang: AtomicBool::new(false),
            receipts: Default::default(),
        });
        let mut stores = Stores::of(store);
        if let Some(sequencer) = sequencer {
            stores.sequencer = sequencer;
        }
        let app = Arc::new(App::new("gw".into(), stores, bus.clone(), hub, limits, 64));
        Setup { app, bus }
    }

    fn test_auth() -> Arc<crate::auth::Authenticator> {
        Arc::new(crate::auth::Authenticator::with_secret(
            chat_proto::token::Verifier::new(b"a test secret of some length", "iss", "aud").expect("verifier"),
        ))
    }

    type Events = std::pin::Pin<Box<dyn Stream<Item = Result<pb::ServerEvent, Status>> + Send>>;

    /// A stream of `user` served by a session: its frames' sender and events.
    fn connect(app: &Arc<App>, user: &str) -> (UnboundedSender<Result<ClientFrame, Status>>, Events) {
        let (outbox, events, slot) = app.open_stream(user.into()).expect("open");
        let (frames, inbound) = unbounded();
        tokio::spawn(Session::new(app.clone(), outbox, None, slot, test_auth(), u64::MAX).run(inbound));
        (frames, Box::pin(crate::outbox::decoded(events)))
    }

    /// Every open stream holds its session's task for as long as it lives:
    /// the state a frame's handling needs is boxed while it runs, not
    /// carried by every idle stream (it was some 10 KB in a test build).
    #[tokio::test]
    async fn an_idle_session_task_stays_small() {
        let Setup { app, .. } = setup(Limits::default(), None).await;
        let (outbox, _events, slot) = app.open_stream("alice".into()).expect("open");
        let (_frames, inbound) = unbounded::<Result<ClientFrame, Status>>();
        let run = Session::new(app.clone(), outbox, None, slot, test_auth(), u64::MAX).run(inbound);
        let size = std::mem::size_of_val(&run);
        assert!(size <= 3 * 1024, "a session's task takes {size} bytes");
    }

    fn frame(id: &str, frame: Frame) -> Result<ClientFrame, Status> {
        Ok(ClientFrame { request_id: id.into(), frame: Some(frame) })
    }

    fn join(room: &str) -> Frame {
        Frame::Join(pb::JoinFrame { conversation_id: room.into(), resume_after_seq: None })
    }

    fn send(room: &str, id: &str) -> Frame {
        Frame::Send(pb::SendFrame { conversation_id: room.into(), client_message_id: id.into(), body: "hi".into() })
    }

    /// alice's stream, joined to `r`, after sending `count` messages there.
    async fn joined_after_sending(
        app: &Arc<App>,
        count: usize,
    ) -> (UnboundedSender<Result<ClientFrame, Status>>, Events) {
        let (frames, mut events) = connect(app, "alice");
        frames.unbounded_send(frame("j", join("r"))).expect("frame");
        assert!(matches!(next_answer(&mut events).await, Event::PresenceSnapshot(_)));
        for i in 1..=count {
            frames.unbounded_send(frame("s", send("r", &format!("c{i}")))).expect("frame");
            assert!(matches!(next_answer(&mut events).await, Event::SendAccepted(_)));
        }
        (frames, events)
    }

    async fn next_answer(events: &mut Events) -> Event {
        loop {
            match events.next().await {
                Some(Ok(pb::ServerEvent {
                    event: Some(event @ (Event::Error(_) | Event::SendAccepted(_) | Event::PresenceSnapshot(_))),
                })) => {
                    return event;
                }
                Some(Ok(_)) => {}
                other => panic!("stream ended: {other:?}"),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_send_the_bus_never_answers_is_unavailable_at_the_deadline() {
        let Setup { app, bus } = setup(Limits::default(), None).await;
        let (frames, mut events) = connect(&app, "alice");
        frames.unbounded_send(frame("j", join("r"))).expect("frame");
        assert!(matches!(next_answer(&mut events).await, Event::PresenceSnapshot(_)));
        frames.unbounded_send(frame("s1", send("r", "c1"))).expect("frame");
        assert!(matches!(next_answer(&mut events).await, Event::SendAccepted(_)));

        bus.hang.store(true, Ordering::Relaxed);
        let started = tokio::time::Instant::now();
        frames.unbounded_send(frame("s2", send("r", "c2"))).expect("frame");
        let Event::Error(err) = next_answer(&mut events).await else { panic!("expected an error") };
        assert_eq!(started.elapsed(), Duration::from_secs(5), "answered at the deadline, not later");
        assert_eq!(err.code, Code::Unavailable as i32);
        assert_eq!((err.request_id.as_str(), err.client_message_id.as_str()), ("s2", "c2"));
        assert!(err.message.contains("retry with the same client_message_id"), "{}", err.message);

        // Retried once the bus answers again: the first attempt's identity.
        bus.hang.store(false, Ordering::Relaxed);
        frames.unbounded_send(frame("s3", send("r", "c2"))).expect("frame");
        let Event::SendAccepted(accepted) = next_answer(&mut events).await else { panic!("expected acceptance") };
        assert_eq!((accepted.seq, accepted.duplicate), (2, true));
    }

    #[tokio::test(start_paused = true)]
    async fn a_send_storage_never_answers_is_unavailable_at_the_deadline_on_both_paths() {
        let limits = Limits { send_deadline: Duration::from_millis(1500), ..Limits::default() };
        let Setup { app, .. } = setup(limits, Some(Arc::new(HangingSequencer::default()))).await;
        let (frames, mut events) = connect(&app, "alice");
        frames.unbounded_send(frame("j", join("r"))).expect("frame");
        assert!(matches!(next_answer(&mut events).await, Event::PresenceSnapshot(_)));
        let started = tokio::time::Instant::now();
        frames.unbounded_send(frame("s", send("r", "c1"))).expect("frame");
        let Event::Error(err) = next_answer(&mut events).await else { panic!("expected an error") };
        assert_eq!(started.elapsed(), Duration::from_millis(1500));
        assert_eq!(err.code, Code::Unavailable as i32);
        assert!(err.message.contains("within 1500 ms"), "{}", err.message);

        // The unary send, as `SendMessage` runs it.
        let started = tokio::time::Instant::now();
        let checked = app.check_send("r", "c2", "hi").expect("valid");
        let err = SendDeadline::start(app.limits().send_deadline)
            .bound(app.send_message("alice", checked))
            .await
            .expect_err("times out");
        assert_eq!(started.elapsed(), Duration::from_millis(1500));
        assert_eq!(err.code(), Code::Unavailable);
    }

    #[tokio::test]
    async fn a_connection_over_its_frame_limit_ends_with_resource_exhausted() {
        let limits = Limits { frames: Rate::new(0.001, 5), ..Limits::default() };
        let Setup { app, .. } = setup(limits, None).await;
        let (frames, mut events) = connect(&app, "alice");
        for i in 0..50 {
            frames.unbounded_send(frame(&format!("j{i}"), join("r"))).expect("frame");
        }
        let mut snapshots = 0;
        let end = loop {
            match events.next().await {
                Some(Ok(pb::ServerEvent { event: Some(Event::PresenceSnapshot(_)) })) => snapshots += 1,
                Some(Ok(_)) => {}
                Some(Err(status)) => break status,
                None => panic!("ended without a status"),
            }
        };
        assert_eq!(end.code(), Code::ResourceExhausted);
        assert!(end.message().contains("frames per connection rate limit of 0.001 per second (burst 5)"), "{end:?}");
        assert!(snapshots <= 5, "only the burst was handled: {snapshots}");
    }

    #[tokio::test]
    async fn joins_over_the_user_limit_are_refused_per_frame() {
        let limits = Limits { joins: Rate::new(0.001, 2), ..Limits::default() };
        let Setup { app, .. } = setup(limits, None).await;
        let (frames, mut events) = connect(&app, "alice");
        for room in ["a", "b", "c"] {
            frames.unbounded_send(frame(room, join(room))).expect("frame");
        }
        assert!(matches!(next_answer(&mut events).await, Event::PresenceSnapshot(_)));
        assert!(matches!(next_answer(&mut events).await, Event::PresenceSnapshot(_)));
        let Event::Error(err) = next_answer(&mut events).await else { panic!("expected an error") };
        assert_eq!((err.code, err.request_id.as_str()), (Code::ResourceExhausted as i32, "c"));
        assert!(err.message.contains("join rate limit") && err.message.contains("retry in"), "{}", err.message);
        // The stream goes on: another user's budget is their own.
        let (bob, mut bob_events) = connect(&app, "bob");
        bob.unbounded_send(frame("j", join("c"))).expect("frame");
        assert!(matches!(next_answer(&mut bob_events).await, Event::PresenceSnapshot(_)));
    }

    #[tokio::test]
    async fn acks_and_reads_over_the_user_limit_are_refused() {
        let limits = Limits { receipts: Rate::new(0.001, 2), ..Limits::default() };
        let Setup { app, .. } = setup(limits, None).await;
        let (frames, mut events) = joined_after_sending(&app, 3).await;
        let ack = |seq| Frame::Ack(pb::AckFrame { conversation_id: "r".into(), seq });
        frames.unbounded_send(frame("a1", ack(1))).expect("frame");
        frames.unbounded_send(frame("a1-again", ack(1))).expect("a repeat publishes nothing and costs nothing");
        frames
            .unbounded_send(frame("r2", Frame::Read(pb::ReadFrame { conversation_id: "r".into(), seq: 2 })))
            .expect("frame");
        frames.unbounded_send(frame("a3", ack(3))).expect("frame");
        let Event::Error(err) = next_answer(&mut events).await else { panic!("expected an error") };
        assert_eq!((err.code, err.request_id.as_str()), (Code::ResourceExhausted as i32, "a3"));
        assert!(err.message.contains("ack/read rate limit"), "{}", err.message);
        let unary = app.mark_read_checked("r", "alice", 3).await.expect_err("MarkRead shares the budget");
        assert_eq!(unary.code(), Code::ResourceExhausted);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_acks_is_one_receipt_at_the_windows_end_and_none_is_lost_at_the_end() {
        let Setup { app, bus } = setup(Limits::default(), None).await;
        let window = app.limits().receipt_window;
        let (frames, mut events) = joined_after_sending(&app, 7).await;
        let delivered = |bus: &HangingBus| -> Vec<u64> {
            bus.receipts().into_iter().filter(|(s, _)| *s == ReceiptStatus::Delivered).map(|(_, seq)| seq).collect()
        };
        let ack = |seq| Frame::Ack(pb::AckFrame { conversation_id: "r".into(), seq });
        for seq in 1..=5 {
            frames.unbounded_send(frame("a", ack(seq))).expect("frame");
        }
        // Frames are handled in order: once this join is answered, so were the acks.
        frames.unbounded_send(frame("j2", join("a"))).expect("frame");
        assert!(matches!(next_answer(&mut events).await, Event::PresenceSnapshot(_)));
        assert_eq!(delivered(&bus), Vec::<u64>::new(), "acks wait a window (a read may cover them)");
        let reported = tokio::time::Instant::now();
        while delivered(&bus).is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(delivered(&bus), vec![5], "the newest at the window's end");
        let waited = reported.elapsed();
        assert!(
            waited + Duration::from_millis(20) >= window && waited <= window + Duration::from_millis(20),
            "{waited:?}"
        );

        // 6 and 7 wait their window; the stream ends before it does, and 7
        // is reported all the same.
        tokio::time::sleep(window).await;
        frames.unbounded_send(frame("a6", ack(6))).expect("frame");
        frames.unbounded_send(frame("a7", ack(7))).expect("frame");
        frames.unbounded_send(frame("j3", join("b"))).expect("frame");
        assert!(matches!(next_answer(&mut events).await, Event::PresenceSnapshot(_)));
        assert_eq!(delivered(&bus), vec![5]);
        drop((frames, events));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while delivered(&bus) != vec![5, 7] {
            assert!(tokio::time::Instant::now() < deadline, "7 was never reported: {:?}", delivered(&bus));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Acks at 50 per second (a member reading a busy room, one ack per
    /// message shown) for two seconds: how many receipts go out.
    async fn receipts_for_paced_acks(window: Duration) -> usize {
        let plenty = Rate::new(1000.0, 1000);
        let limits =
            Limits { receipt_window: window, receipts: plenty, sends: plenty, frames: plenty, ..Limits::default() };
        let Setup { app, bus } = setup(limits, None).await;
        let (frames, mut events) = joined_after_sending(&app, 100).await;
        // The client reads everything (its own messages, receipts) meanwhile.
        let reader = tokio::spawn(async move { while events.next().await.is_some() {} });
        for seq in 1..=100 {
            frames
                .unbounded_send(frame("a", Frame::Ack(pb::AckFrame { conversation_id: "r".into(), seq })))
                .expect("frame");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(frames);
        reader.abort();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let seqs: Vec<u64> =
                bus.receipts().into_iter().filter(|(s, _)| *s == ReceiptStatus::Delivered).map(|(_, q)| q).collect();
            if seqs.last() == Some(&100) {
                assert!(seqs.windows(2).all(|w| w[0] < w[1]), "receipts go forward: {seqs:?}");
                return seqs.len();
            }
            assert!(tokio::time::Instant::now() < deadline, "ack 100 was never reported: {seqs:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_hundred_acks_in_two_seconds_are_a_handful_of_receipts() {
        assert_eq!(receipts_for_paced_acks(Duration::ZERO).await, 100, "without a window, one each");
        let coalesced = receipts_for_paced_acks(Duration::from_millis(250)).await;
        // One at the start of each window, the newest at its end: two
        // seconds are some 8 windows.
        assert!((8..=10).contains(&coalesced), "{coalesced} receipts");
    }

    #[tokio::test]
    async fn streams_per_user_are_limited_and_freed_when_a_stream_ends() {
        let limits = Limits { max_streams_per_user: 1, ..Limits::default() };
        let Setup { app, .. } = setup(limits, None).await;
        let (frames, events) = connect(&app, "alice");
        let Err(err) = app.open_stream("alice".into()) else { panic!("one stream at a time") };
        assert_eq!(err.code(), Code::ResourceExhausted);
        drop((frames, events));
        // The session ends once its client is gone, and frees the slot.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while app.open_stream("alice".into()).is_err() {
            assert!(tokio::time::Instant::now() < deadline, "the slot was never freed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
