//! The state every connection shares ([`App`]) and every operation a client
//! can ask for, whether on its `Connect` stream or in a unary call: each
//! operation is one method here, and that method is where its input is
//! checked and its caller authorised, so no RPC or frame can skip a rule.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_core::bus::Bus;
use chat_core::envelope::{Envelope, Event, ReceiptEvent, ReceiptStatus};
use chat_core::external::ExternalId;
use chat_core::limits;
use chat_core::send::{self, Send, message_envelope};
use chat_core::store::{
    Accepted, ConversationInfo, HistoryQuery, MemberState, PresenceKey, RecipientStatus, StoredMessage, Stores,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::GatewayError;
use crate::history::{self, PageRequest};
use crate::hub::Hub;
use crate::limits::{Limits, Slot, UserLimits};
use crate::outbox::{EventStream, Outbox};

/// How long a stream's presence lasts without a refresh; a crashed gateway's
/// users drop out of presence after at most this.
pub(crate) const PRESENCE_LEASE: Duration = Duration::from_secs(60);
/// How often live presence is refreshed.
pub(crate) const PRESENCE_REFRESH: Duration = Duration::from_secs(20);

#[derive(Debug)]
pub(crate) struct App {
    gateway_id: String,
    stores: Stores,
    bus: Arc<dyn Bus>,
    hub: Arc<Hub>,
    limits: Limits,
    rate: UserLimits,
    outbound_buffer: usize,
    /// Cancelled when the gateway starts shutting down: sessions close.
    closing: CancellationToken,
    /// Work that outlives the frame that started it (publishing accepted
    /// sends); shutdown waits for it.
    tasks: TaskTracker,
    /// Presence this gateway holds, refreshed periodically.
    presence: Mutex<HashSet<PresenceKey>>,
}

/// What a join found.
#[derive(Debug, Clone)]
pub(crate) struct JoinOutcome {
    pub(crate) online: Vec<String>,
    pub(crate) last_seq: u64,
    pub(crate) members: Vec<MemberState>,
}

fn presence_expiry(now_ms: i64) -> i64 {
    now_ms + i64::try_from(PRESENCE_LEASE.as_millis()).unwrap_or(i64::MAX)
}

impl App {
    pub(crate) fn new(
        gateway_id: String,
        stores: Stores,
        bus: Arc<dyn Bus>,
        hub: Arc<Hub>,
        limits: Limits,
        outbound_buffer: usize,
    ) -> Self {
        Self {
            gateway_id,
            stores,
            bus,
            hub,
            rate: UserLimits::new(&limits),
            limits,
            outbound_buffer,
            closing: CancellationToken::new(),
            tasks: TaskTracker::new(),
            presence: Mutex::new(HashSet::new()),
        }
    }

    /// Cancelled when the gateway starts shutting down.
    pub(crate) fn closing(&self) -> &CancellationToken {
        &self.closing
    }

    /// Work spawned on behalf of streams; shutdown waits for it.
    pub(crate) fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// A new stream's outbox, the stream tonic sends from it, and the
    /// user's stream slot it holds; refused while the gateway is shutting
    /// down.
    pub(crate) fn open_stream(&self, user: String) -> Result<(Arc<Outbox>, EventStream, Slot<String>), GatewayError> {
        if self.closing.is_cancelled() {
            return Err(GatewayError::Unavailable("the gateway is shutting down; connect to another".into()));
        }
        let slot = self.rate.open_stream(&user)?;
        let session_id = ulid::Ulid::new().to_string();
        tracing::info!(user_id = user, session_id, "stream opened");
        let (outbox, events) = Outbox::new(session_id, user, self.outbound_buffer);
        Ok((outbox, events, slot))
    }

    /// The configured limits.
    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Conversations one stream may hear at once.
    pub(crate) fn max_conversations_per_stream(&self) -> usize {
        self.limits.max_conversations_per_connection
    }

    /// Whether a stream still hears a conversation (a leave from another of
    /// the user's streams ends that).
    pub(crate) fn hears(&self, conversation_id: &str, outbox: &Outbox) -> bool {
        self.hub.is_subscribed(conversation_id, &outbox.session_id)
    }

    fn envelope(&self, conversation_id: &str, event: Event) -> Envelope {
        Envelope::new(
            ulid::Ulid::new().to_string(),
            conversation_id.to_owned(),
            self.gateway_id.clone(),
            chat_core::clock::now_ms(),
            event,
        )
    }

    /// Checks a send's shape; the same rules for stream and unary.
    pub(crate) fn check_send<'a>(
        &self,
        conversation_id: &'a str,
        client_message_id: &'a str,
        body: &'a str,
    ) -> Result<Send<'a>, GatewayError> {
        Ok(Send::new(conversation_id, client_message_id, body, self.limits.max_body_bytes)?)
    }

    /// Rate-limits a checked send from a member and gives it its identity
    /// and `seq`. Sends of one stream are accepted one after another, so a
    /// sender's messages are ordered as it sent them.
    pub(crate) async fn accept(&self, sender: &str, send: &Send<'_>) -> Result<Accepted, GatewayError> {
        self.rate.send(sender)?;
        Ok(send::accept(self.stores.sequencer.as_ref(), sender, send).await?)
    }

    /// Publishes an accepted message. A duplicate is published again with
    /// its first identity: if the first attempt's publish failed this
    /// delivers it, and if it did not, receivers drop the copy by event id.
    pub(crate) async fn publish_accepted(
        &self,
        sender: &str,
        send: &Send<'_>,
        accepted: &Accepted,
    ) -> Result<(), GatewayError> {
        let envelope = message_envelope(&self.gateway_id, sender, send, accepted);
        self.bus.publish(std::slice::from_ref(&envelope)).await?;
        tracing::debug!(
            conversation_id = send.conversation_id(),
            seq = accepted.seq,
            message_id = accepted.message_id,
            duplicate = accepted.duplicate,
            "message published"
        );
        Ok(())
    }

    /// Unary `SendMessage`: a durable member's checked send, accepted and
    /// published; the sender's answer may go out once this returns.
    pub(crate) async fn send_message(&self, sender: &str, send: Send<'_>) -> Result<Accepted, GatewayError> {
        self.require_member(send.conversation_id(), sender).await?;
        let accepted = self.accept(sender, &send).await?;
        self.publish_accepted(sender, &send, &accepted).await?;
        Ok(accepted)
    }

    /// Joins `outbox`'s stream to a conversation: membership, live
    /// subscription, presence, and the events that announce them. Joining a
    /// conversation the stream already hears refreshes membership and the
    /// snapshot without touching the subscription. If any step fails, a new
    /// subscription and its presence are undone, so a failed join leaves
    /// nothing behind.
    pub(crate) async fn join(&self, conversation_id: &str, outbox: &Arc<Outbox>) -> Result<JoinOutcome, GatewayError> {
        self.rate.join(&outbox.user_id)?;
        let already_subscribed = self.hub.is_subscribed(conversation_id, &outbox.session_id);
        if !already_subscribed {
            self.hub.subscribe(conversation_id, outbox.clone());
        }
        let result = self.join_subscribed(conversation_id, outbox).await;
        if result.is_err()
            && !already_subscribed
            && let Err(e) = self.unsubscribe(conversation_id, outbox).await
        {
            tracing::warn!(conversation_id, error = %e, "presence left behind by a failed join expires with its lease");
        }
        result
    }

    async fn join_subscribed(&self, conversation_id: &str, outbox: &Arc<Outbox>) -> Result<JoinOutcome, GatewayError> {
        let user = outbox.user_id.as_str();
        let joined = self.stores.membership.join(conversation_id, user).await?;
        self.hub.anchor(conversation_id, joined.last_seq);
        let key = self.presence_key(conversation_id, outbox);
        let now_ms = chat_core::clock::now_ms();
        self.presence_set().insert(key.clone());
        let came_online = self.stores.presence.presence_online(&key, now_ms, presence_expiry(now_ms)).await?;
        let online = self.stores.presence.online_users(conversation_id, now_ms).await?;
        let members = self.stores.receipts.members(conversation_id).await?;
        let mut events = Vec::new();
        if joined.newly_member {
            events.push(self.envelope(conversation_id, Event::MemberJoined { user_id: user.to_owned() }));
        }
        if came_online {
            events.push(self.envelope(conversation_id, Event::Presence { user_id: user.to_owned(), online: true }));
        }
        self.bus.publish(&events).await?;
        Ok(JoinOutcome { online, last_seq: joined.last_seq, members })
    }

    /// Takes a stream out of a conversation it had joined; announces the user
    /// offline there when it was their last stream.
    pub(crate) async fn unsubscribe(&self, conversation_id: &str, outbox: &Outbox) -> Result<(), GatewayError> {
        self.hub.unsubscribe(conversation_id, &outbox.session_id);
        let key = self.presence_key(conversation_id, outbox);
        self.presence_set().remove(&key);
        self.announce_offline(&key).await
    }

    /// Removes a stream's presence; announces the user offline when it was
    /// their last stream in the conversation.
    async fn announce_offline(&self, key: &PresenceKey) -> Result<(), GatewayError> {
        if self.stores.presence.presence_offline(key, chat_core::clock::now_ms()).await? {
            let event =
                self.envelope(&key.conversation_id, Event::Presence { user_id: key.user_id.clone(), online: false });
            self.bus.publish(&[event]).await?;
        }
        Ok(())
    }

    /// Gives up membership; true when the user was a member.
    pub(crate) async fn leave(&self, conversation_id: &str, user: &str) -> Result<bool, GatewayError> {
        let was_member = self.stores.membership.leave(conversation_id, user).await?;
        if was_member {
            let event = self.envelope(conversation_id, Event::MemberLeft { user_id: user.to_owned() });
            self.bus.publish(&[event]).await?;
        }
        Ok(was_member)
    }

    /// Tells the conversation that `user` has received (DELIVERED) or read
    /// (READ) everything up to `up_to_seq`; `persist` records it.
    pub(crate) async fn publish_receipt(
        &self,
        conversation_id: &str,
        user: &str,
        status: ReceiptStatus,
        up_to_seq: u64,
    ) -> Result<(), GatewayError> {
        self.rate.receipt(user)?;
        self.announce_receipt(conversation_id, user, status, up_to_seq).await
    }

    async fn announce_receipt(
        &self,
        conversation_id: &str,
        user: &str,
        status: ReceiptStatus,
        up_to_seq: u64,
    ) -> Result<(), GatewayError> {
        let receipt = ReceiptEvent {
            user_id: user.to_owned(),
            status,
            up_to_seq,
            message_id: String::new(),
            reason: String::new(),
            via: String::new(),
        };
        self.bus.publish(&[self.envelope(conversation_id, Event::Receipt(receipt))]).await?;
        Ok(())
    }

    /// Unary `MarkRead`: `seq` may not pass the conversation's latest (a
    /// stream's read frame is checked against what the stream knows).
    pub(crate) async fn mark_read_checked(
        &self,
        conversation_id: &str,
        user: &str,
        seq: u64,
    ) -> Result<u64, GatewayError> {
        limits::conversation_id(conversation_id)?;
        let latest = self.stores.sequencer.latest_seq(conversation_id).await?;
        if seq > latest {
            return Err(GatewayError::InvalidArgument(format!(
                "seq {seq} is beyond the latest seq {latest} of conversation {conversation_id}"
            )));
        }
        self.mark_read(conversation_id, user, seq).await
    }

    /// Moves the user's read marker to `seq` (recorded at once, so the
    /// caller's next `ListConversations` sees it) and publishes the READ
    /// receipt when the marker moved there.
    pub(crate) async fn mark_read(&self, conversation_id: &str, user: &str, seq: u64) -> Result<u64, GatewayError> {
        self.rate.receipt(user)?;
        let marker = self.stores.receipts.mark_read(conversation_id, user, seq, chat_core::clock::now_ms()).await?;
        if marker == seq && seq > 0 {
            self.announce_receipt(conversation_id, user, ReceiptStatus::Read, seq).await?;
        }
        Ok(marker)
    }

    /// Adds `member` (a user or an external identity) to a conversation the
    /// caller is a member of; true when newly added.
    pub(crate) async fn add_member(
        &self,
        conversation_id: &str,
        caller: &str,
        member: &str,
    ) -> Result<bool, GatewayError> {
        limits::conversation_id(conversation_id)?;
        limits::member_id(member)?;
        self.require_member(conversation_id, caller).await?;
        // Adding members (external ones cost a channel send each) shares the
        // sender's budget.
        self.rate.send(caller)?;
        let added = self.stores.membership.add_member(conversation_id, member, chat_core::clock::now_ms()).await?;
        if added {
            let event = self.envelope(conversation_id, Event::MemberJoined { user_id: member.to_owned() });
            self.bus.publish(&[event]).await?;
        }
        Ok(added)
    }

    /// Where a stored message stands with each recipient; members only.
    pub(crate) async fn message_status(
        &self,
        conversation_id: &str,
        caller: &str,
        message_id: &str,
    ) -> Result<(StoredMessage, Vec<RecipientStatus>), GatewayError> {
        let message = self.get_message(conversation_id, caller, message_id).await?;
        let statuses = self.stores.receipts.message_status(&message).await?;
        Ok((message, statuses))
    }

    /// Members only: `PERMISSION_DENIED` otherwise.
    pub(crate) async fn require_member(&self, conversation_id: &str, user: &str) -> Result<(), GatewayError> {
        limits::conversation_id(conversation_id)?;
        if self.stores.membership.is_member(conversation_id, user).await? {
            Ok(())
        } else {
            Err(GatewayError::PermissionDenied(format!(
                "{user} is not a member of conversation {conversation_id}; join it (or be added) first"
            )))
        }
    }

    pub(crate) async fn typing(&self, conversation_id: &str, user: &str, typing: bool) -> Result<(), GatewayError> {
        self.rate.send(user)?;
        let event = self.envelope(conversation_id, Event::Typing { user_id: user.to_owned(), typing });
        self.bus.publish(&[event]).await?;
        Ok(())
    }

    /// A page of a conversation's history with its next and previous
    /// cursors; members only.
    pub(crate) async fn history_page(
        &self,
        caller: &str,
        request: PageRequest<'_>,
    ) -> Result<(Vec<StoredMessage>, String, String), GatewayError> {
        let conversation_id = request.conversation_id;
        limits::conversation_id(conversation_id)?;
        let limit = history::page_size(request.page_size, history::MAX_HISTORY_PAGE)?;
        let query = history::history_query(conversation_id, request.forward, request.from_seq, request.cursor, limit)?;
        self.require_member(conversation_id, caller).await?;
        // One more than the page tells whether another page follows.
        let wanted = HistoryQuery { limit: limit + 1, ..query };
        let mut page = self.stores.history.history(conversation_id, wanted).await?;
        let more = page.len() > limit;
        page.truncate(limit);
        let (next_cursor, prev_cursor) = history::page_cursors(conversation_id, query.direction, &page, more);
        Ok((page, next_cursor, prev_cursor))
    }

    /// Stored messages for a stream that joined `conversation_id` (a
    /// resume's backfill): the join authorised it.
    pub(crate) async fn stored_for_stream(
        &self,
        conversation_id: &str,
        query: HistoryQuery,
    ) -> Result<Vec<StoredMessage>, GatewayError> {
        Ok(self.stores.history.history(conversation_id, query).await?)
    }

    /// A stored message by id; members only.
    pub(crate) async fn get_message(
        &self,
        conversation_id: &str,
        caller: &str,
        message_id: &str,
    ) -> Result<StoredMessage, GatewayError> {
        limits::message_id(message_id)?;
        self.require_member(conversation_id, caller).await?;
        self.stores
            .history
            .get_message(conversation_id, message_id)
            .await?
            .ok_or_else(|| not_stored(conversation_id, message_id))
    }

    /// The caller's conversations, a page at a time, with the cursor of the
    /// next page (empty on the last).
    pub(crate) async fn conversations(
        &self,
        caller: &str,
        page_size: u32,
        cursor: &str,
    ) -> Result<(Vec<ConversationInfo>, String), GatewayError> {
        let limit = history::page_size(page_size, history::MAX_LIST_PAGE)?;
        let after = history::list_after(cursor)?;
        let (page, more) = self.stores.history.conversations(caller, limit, after.as_deref()).await?;
        let next_cursor = match page.last() {
            Some(last) if more => history::list_cursor(&last.conversation_id),
            _ => String::new(),
        };
        Ok((page, next_cursor))
    }

    /// Links the caller to an external identity for offline fallback (an
    /// empty id removes the link).
    pub(crate) async fn link_channel(&self, caller: &str, external_id: &str) -> Result<(), GatewayError> {
        let external = if external_id.is_empty() {
            None
        } else {
            match ExternalId::parse(external_id) {
                Ok(Some(id)) => Some(id.to_string()),
                Ok(None) => {
                    return Err(GatewayError::InvalidArgument(format!(
                        "external_id {external_id:?} names no channel: use whatsapp:+<number>, instagram:<id> or telegram:<chat id>"
                    )));
                }
                Err(e) => return Err(GatewayError::InvalidArgument(format!("external_id: {e}"))),
            }
        };
        Ok(self.stores.links.link_channel(caller, external.as_deref()).await?)
    }

    fn presence_key(&self, conversation_id: &str, outbox: &Outbox) -> PresenceKey {
        PresenceKey {
            conversation_id: conversation_id.to_owned(),
            user_id: outbox.user_id.clone(),
            session_id: outbox.session_id.clone(),
        }
    }

    fn presence_set(&self) -> std::sync::MutexGuard<'_, HashSet<PresenceKey>> {
        self.presence.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Extends the lease of every stream's presence on this gateway, and
    /// releases the presence of streams the hub no longer holds (their user
    /// left the conversation from another stream).
    pub(crate) async fn refresh_presence(&self) {
        let keys: Vec<PresenceKey> = self.presence_set().iter().cloned().collect();
        let (live, orphaned): (Vec<_>, Vec<_>) =
            keys.into_iter().partition(|k| self.hub.is_subscribed(&k.conversation_id, &k.session_id));
        for key in orphaned {
            self.presence_set().remove(&key);
            if let Err(e) = self.announce_offline(&key).await {
                tracing::warn!(error = %e, conversation_id = key.conversation_id, "releasing presence failed");
            }
        }
        self.rate.purge_idle();
        if live.is_empty() {
            return;
        }
        if let Err(e) = self.stores.presence.presence_refresh(&live, presence_expiry(chat_core::clock::now_ms())).await
        {
            tracing::warn!(error = %e, streams = live.len(), "presence refresh failed");
        }
    }
}

/// A message id that names nothing stored in the conversation.
fn not_stored(conversation_id: &str, message_id: &str) -> GatewayError {
    GatewayError::NotFound(format!(
        "no stored message {message_id} in conversation {conversation_id} (messages are stored within about a second of being sent)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::memory::MemoryBus;
    use async_trait::async_trait;
    use chat_core::memory::MemoryStore;
    use chat_core::store::{Presence, StoreError};
    use std::sync::atomic::{AtomicBool, Ordering};

    /// The memory store's presence, failing while `fail` is set.
    #[derive(Debug, Default)]
    struct FlakyPresence {
        inner: MemoryStore,
        fail: AtomicBool,
    }

    #[async_trait]
    impl Presence for FlakyPresence {
        async fn presence_online(&self, k: &PresenceKey, now: i64, exp: i64) -> Result<bool, StoreError> {
            if self.fail.load(Ordering::Relaxed) {
                return Err(StoreError::Unavailable("injected".into()));
            }
            self.inner.presence_online(k, now, exp).await
        }
        async fn presence_offline(&self, k: &PresenceKey, now: i64) -> Result<bool, StoreError> {
            self.inner.presence_offline(k, now).await
        }
        async fn presence_refresh(&self, k: &[PresenceKey], exp: i64) -> Result<(), StoreError> {
            self.inner.presence_refresh(k, exp).await
        }
        async fn online_users(&self, c: &str, now: i64) -> Result<Vec<String>, StoreError> {
            self.inner.online_users(c, now).await
        }
    }

    fn app(presence: Arc<FlakyPresence>) -> App {
        let hub = Arc::new(Hub::new(Duration::from_secs(1)));
        let store = Arc::new(MemoryStore::new());
        let stores = Stores { presence, ..Stores::of(store.clone()) };
        App::new("gw".into(), stores, Arc::new(MemoryBus::new(hub.clone(), store)), hub, Limits::default(), 16)
    }

    #[tokio::test]
    async fn failed_join_leaves_no_subscription_or_presence() {
        let presence = Arc::new(FlakyPresence::default());
        let app = app(presence.clone());
        let (outbox, _stream) = Outbox::new("s1".into(), "alice".into(), 16);
        presence.fail.store(true, Ordering::Relaxed);
        let err = app.join("r", &outbox).await.expect_err("presence fails");
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(!app.hub.is_subscribed("r", "s1"));
        assert!(app.presence_set().is_empty());
        assert!(presence.online_users("r", 0).await.expect("query").is_empty());
    }

    #[tokio::test]
    async fn failed_rejoin_keeps_the_existing_subscription() {
        let presence = Arc::new(FlakyPresence::default());
        let app = app(presence.clone());
        let (outbox, _stream) = Outbox::new("s1".into(), "alice".into(), 16);
        app.join("r", &outbox).await.expect("first join");
        presence.fail.store(true, Ordering::Relaxed);
        assert!(app.join("r", &outbox).await.is_err());
        assert!(app.hub.is_subscribed("r", "s1"), "a failed rejoin must not unsubscribe");
        assert_eq!(app.presence_set().len(), 1);
    }
}
