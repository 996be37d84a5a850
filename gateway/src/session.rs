//! One `Connect` stream: reads the client's frames, answers each, and cleans
//! up when the stream ends.
//!
//! A frame's own error (bad input, a limit, a failed dependency) is answered
//! with an `ErrorEvent` naming the frame and the stream goes on. The stream
//! ends when the client goes away, when its outbox overflows, or when the
//! gateway shuts down or the stream's token expires (after a `Disconnect`
//! with resume points). A refresh frame with a fresh token of the same user
//! moves the expiry on.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use chat_proto::pb::ClientFrame;
use futures::Stream;
use tokio::sync::Semaphore;
use tonic::{Code, Status};

use crate::app::App;
use crate::auth::Authenticator;
use crate::error::GatewayError;
use crate::outbox::Outbox;
use crate::wire::{self, CloseReason, Command, SharedEvent};
use chat_core::envelope::ReceiptStatus;
use chat_core::limits;
use chat_core::store::{Direction, HistoryQuery};

/// Sends of one stream being published at once. Acceptance (seq) stays
/// sequential; publishing overlaps so a sender is not held back by the bus.
const PUBLISHES_IN_FLIGHT: usize = 32;
/// Stored messages a resume delivers at most; further behind, a client pages
/// `GetHistory` first.
const MAX_RESUME_BACKFILL: u64 = 10_000;
/// How long a resume waits for a message `persist` has not stored yet.
const RESUME_STORE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
const RESUME_RETRY: std::time::Duration = std::time::Duration::from_millis(100);
/// How long a closing stream waits for its sends being published.
const PUBLISH_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);
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
    /// Per conversation and receipt kind: the highest this stream reported,
    /// so a repeated ack publishes nothing.
    reported: HashMap<(String, ReceiptStatus), u64>,
    auth: Arc<Authenticator>,
    /// The `exp` of the token the stream is authorised by (the one it was
    /// opened with, or the latest refreshed), in seconds since the epoch.
    expires_at: u64,
}

impl Session {
    pub(crate) fn new(app: Arc<App>, outbox: Arc<Outbox>, auth: Arc<Authenticator>, expires_at: u64) -> Self {
        Self {
            auth,
            expires_at,
            app,
            outbox,
            joined: BTreeSet::new(),
            publishing: Arc::new(Semaphore::new(PUBLISHES_IN_FLIGHT)),
            known_seq: HashMap::new(),
            reported: HashMap::new(),
        }
    }

    fn user(&self) -> &str {
        &self.outbox.user_id
    }

    /// Serves the stream until it ends, then leaves every conversation's
    /// live subscription and presence.
    pub(crate) async fn run<S>(mut self, inbound: S)
    where
        S: Stream<Item = Result<ClientFrame, Status>> + Unpin,
    {
        use futures::StreamExt;
        let mut inbound = inbound.fuse();
        let mut reading = true;
        let expiry = tokio::time::sleep(self.until_expiry());
        tokio::pin!(expiry);
        loop {
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
                    break;
                }
                () = self.outbox.closed().cancelled() => break,
                () = self.outbox.gone() => break,
                frame = inbound.next(), if reading => match frame {
                    Some(Ok(frame)) => self.handle(frame).await,
                    // A client that half-closes may still be listening
                    // (grpcurl does): keep delivering until it goes away.
                    None => reading = false,
                    Some(Err(status)) => {
                        tracing::debug!(user_id = self.user(), code = ?status.code(), "inbound stream failed");
                        self.outbox.fail(inbound_error_code(&status), status.message().to_owned());
                        break;
                    }
                },
            }
        }
        self.cleanup().await;
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
                self.send(&request_id, conversation_id, client_message_id, body).await
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
    /// a leave from another of the user's streams ends that.
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
                "you left conversation {conversation_id} (from another stream); join it again"
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
        if let Some(after) = resume_after {
            let backfilled = self.backfill(conversation_id, after, outcome.last_seq).await;
            // Released even when the backfill failed: live messages go on.
            let _ = self.outbox.release(conversation_id);
            backfilled?;
        }
        Ok(())
    }

    /// Delivers the stored messages after `after` up to `last` (the latest
    /// seq when the stream subscribed; later ones arrive live), in order.
    /// `persist` stores asynchronously, so a message missing from storage is
    /// waited for (bounded); one still missing then was never published (its
    /// sender died after taking the seq) and is passed over.
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
        let deadline = tokio::time::Instant::now() + RESUME_STORE_WAIT;
        let mut next = after + 1;
        while next <= last {
            let want = usize::try_from(last - next + 1).unwrap_or(usize::MAX).min(crate::history::MAX_HISTORY_PAGE);
            let query = HistoryQuery { direction: Direction::Forward, from_seq: Some(next - 1), limit: want };
            let page = self.app.stored_for_stream(conversation_id, query).await?;
            let before = next;
            for message in page.iter().filter(|m| m.seq <= last) {
                if message.seq != next {
                    break;
                }
                if self.outbox.deliver_stored(wire::stored_message(message.clone())).await.is_err() {
                    return Ok(()); // the stream is closing; its resume point says where it stopped
                }
                next += 1;
            }
            if next > last || next > before {
                continue;
            }
            if tokio::time::Instant::now() < deadline {
                tokio::time::sleep(RESUME_RETRY).await;
                continue;
            }
            match page.iter().find(|m| m.seq > next && m.seq <= last) {
                Some(stored) => {
                    tracing::warn!(
                        conversation_id,
                        missing_from = next,
                        missing_to = stored.seq - 1,
                        "resume passes over seqs never stored"
                    );
                    next = stored.seq;
                }
                None => {
                    tracing::warn!(
                        conversation_id,
                        missing_from = next,
                        missing_to = last,
                        "resume passes over seqs never stored"
                    );
                    break;
                }
            }
        }
        Ok(())
    }

    async fn leave(&mut self, conversation_id: &str) -> Result<(), GatewayError> {
        limits::conversation_id(conversation_id)?;
        if self.joined.remove(conversation_id) {
            self.app.unsubscribe(conversation_id, &self.outbox).await?;
        }
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
        let send = self.app.check_send(conversation_id, client_message_id, body)?;
        self.joined_conversation(conversation_id).await?;
        let accepted = self.app.accept(&self.outbox.user_id, &send).await?;
        // Waiting for a permit holds back reading this stream's next frames:
        // backpressure, not an unbounded queue.
        let permit = self
            .publishing
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| GatewayError::Internal("publish limiter closed".into()))?;
        let app = self.app.clone();
        let outbox = self.outbox.clone();
        let request_id = request_id.to_owned();
        let send = send.to_owned_send();
        self.app.tasks().spawn(async move {
            let _permit = permit;
            let published = app.publish_accepted(&outbox.user_id, &send.as_send(), &accepted).await;
            let (conversation_id, client_message_id) = send.into_ids();
            let event = match published {
                Ok(()) => wire::send_accepted(request_id, conversation_id, client_message_id, accepted),
                Err(err) => wire::error_event(&request_id, &conversation_id, &client_message_id, &err),
            };
            let _ = outbox.deliver(event);
        });
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
        let reported = self.reported.entry((conversation_id.to_owned(), status)).or_default();
        if seq <= *reported {
            return Ok(());
        }
        match status {
            ReceiptStatus::Read => {
                self.app.mark_read(conversation_id, &self.outbox.user_id, seq).await?;
            }
            _ => self.app.publish_receipt(conversation_id, &self.outbox.user_id, status, seq).await?,
        }
        self.reported.insert((conversation_id.to_owned(), status), seq);
        Ok(())
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
