//! The state every connection shares ([`App`]) and the operations that both
//! the stream and the unary API perform: accepting a send, joining, leaving,
//! publishing membership and presence.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_proto::envelope::{Envelope, Event, MessageEvent, ReceiptEvent, ReceiptStatus};
use chat_proto::external::ExternalId;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::Bus;
use crate::error::GatewayError;
use crate::hub::Hub;
use crate::limits::{self, Limits, RateLimiter};
use crate::outbox::Outbox;
use crate::store::{Accepted, MemberState, PresenceKey, RecipientStatus, SendRequest, Store, StoredMessage};

/// How long a stream's presence lasts without a refresh; a crashed gateway's
/// users drop out of presence after at most this.
pub const PRESENCE_LEASE: Duration = Duration::from_secs(60);
/// How often live presence is refreshed.
pub const PRESENCE_REFRESH: Duration = Duration::from_secs(20);

#[derive(Debug)]
pub struct App {
    pub gateway_id: String,
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub hub: Arc<Hub>,
    pub limits: Limits,
    pub rate: RateLimiter,
    pub outbound_buffer: usize,
    /// Cancelled when the gateway starts shutting down: sessions close.
    pub closing: CancellationToken,
    /// Work that outlives the frame that started it (publishing accepted
    /// sends); shutdown waits for it.
    pub tasks: TaskTracker,
    /// Presence this gateway holds, refreshed periodically.
    presence: Mutex<HashSet<PresenceKey>>,
}

/// A validated send.
#[derive(Debug, Clone)]
pub struct Send<'a> {
    pub conversation_id: &'a str,
    pub client_message_id: &'a str,
    pub body: &'a str,
}

/// What a join found.
#[derive(Debug, Clone)]
pub struct JoinOutcome {
    pub online: Vec<String>,
    pub last_seq: u64,
    pub members: Vec<MemberState>,
}

/// The bus event of an accepted message; its event id is the message id, so
/// a republished message is the same event.
pub fn message_envelope(origin: &str, sender: &str, send: &Send<'_>, accepted: &Accepted) -> Envelope {
    Envelope::new(
        accepted.message_id.clone(),
        send.conversation_id.to_owned(),
        origin.to_owned(),
        accepted.accepted_at_ms,
        Event::Message(MessageEvent {
            message_id: accepted.message_id.clone(),
            seq: accepted.seq,
            sender: sender.to_owned(),
            body: send.body.to_owned(),
            client_message_id: send.client_message_id.to_owned(),
            external_recipients: accepted.external_recipients.clone(),
        }),
    )
}

fn presence_expiry(now_ms: i64) -> i64 {
    now_ms + i64::try_from(PRESENCE_LEASE.as_millis()).unwrap_or(i64::MAX)
}

impl App {
    pub fn new(
        gateway_id: String,
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        hub: Arc<Hub>,
        limits: Limits,
        outbound_buffer: usize,
    ) -> Self {
        Self {
            gateway_id,
            store,
            bus,
            hub,
            rate: RateLimiter::new(&limits),
            limits,
            outbound_buffer,
            closing: CancellationToken::new(),
            tasks: TaskTracker::new(),
            presence: Mutex::new(HashSet::new()),
        }
    }

    fn envelope(&self, conversation_id: &str, event: Event) -> Envelope {
        Envelope::new(
            ulid::Ulid::new().to_string(),
            conversation_id.to_owned(),
            self.gateway_id.clone(),
            crate::clock::now_ms(),
            event,
        )
    }

    /// Checks a send's shape; the same rules for stream and unary.
    pub fn validate_send(&self, send: &Send<'_>) -> Result<(), GatewayError> {
        limits::conversation_id(send.conversation_id)?;
        limits::client_message_id(send.client_message_id)?;
        limits::body(send.body, &self.limits)
    }

    /// Rate-limits a validated send from a member and gives it its identity
    /// and `seq`. Sends of one stream are accepted one after another, so a
    /// sender's messages are ordered as it sent them.
    pub async fn accept(&self, sender: &str, send: &Send<'_>) -> Result<Accepted, GatewayError> {
        self.rate.check(sender, Instant::now())?;
        Ok(self
            .store
            .accept_send(SendRequest {
                conversation_id: send.conversation_id,
                sender,
                client_message_id: send.client_message_id,
                body: send.body,
                new_message_id: ulid::Ulid::new().to_string(),
                now_ms: crate::clock::now_ms(),
            })
            .await?)
    }

    /// Publishes an accepted message. A duplicate is published again with
    /// its first identity: if the first attempt's publish failed this
    /// delivers it, and if it did not, receivers drop the copy by event id.
    pub async fn publish_accepted(
        &self,
        sender: &str,
        send: &Send<'_>,
        accepted: &Accepted,
    ) -> Result<(), GatewayError> {
        let envelope = message_envelope(&self.gateway_id, sender, send, accepted);
        self.bus.publish(std::slice::from_ref(&envelope)).await?;
        tracing::debug!(
            conversation_id = send.conversation_id,
            seq = accepted.seq,
            message_id = accepted.message_id,
            duplicate = accepted.duplicate,
            "message published"
        );
        Ok(())
    }

    /// Accepts and publishes a send; the sender's answer may go out once
    /// this returns.
    pub async fn send(&self, sender: &str, send: Send<'_>) -> Result<Accepted, GatewayError> {
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
    pub async fn join(&self, conversation_id: &str, outbox: &Arc<Outbox>) -> Result<JoinOutcome, GatewayError> {
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
        let joined = self.store.join(conversation_id, user).await?;
        self.hub.anchor(conversation_id, joined.last_seq);
        let key = self.presence_key(conversation_id, outbox);
        let now_ms = crate::clock::now_ms();
        self.presence_set().insert(key.clone());
        let came_online = self.store.presence_online(&key, now_ms, presence_expiry(now_ms)).await?;
        let online = self.store.online_users(conversation_id, now_ms).await?;
        let members = self.store.members(conversation_id).await?;
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
    pub async fn unsubscribe(&self, conversation_id: &str, outbox: &Outbox) -> Result<(), GatewayError> {
        self.hub.unsubscribe(conversation_id, &outbox.session_id);
        let key = self.presence_key(conversation_id, outbox);
        self.presence_set().remove(&key);
        self.announce_offline(&key).await
    }

    /// Removes a stream's presence; announces the user offline when it was
    /// their last stream in the conversation.
    async fn announce_offline(&self, key: &PresenceKey) -> Result<(), GatewayError> {
        if self.store.presence_offline(key, crate::clock::now_ms()).await? {
            let event =
                self.envelope(&key.conversation_id, Event::Presence { user_id: key.user_id.clone(), online: false });
            self.bus.publish(&[event]).await?;
        }
        Ok(())
    }

    /// Gives up membership; true when the user was a member.
    pub async fn leave(&self, conversation_id: &str, user: &str) -> Result<bool, GatewayError> {
        let was_member = self.store.leave(conversation_id, user).await?;
        if was_member {
            let event = self.envelope(conversation_id, Event::MemberLeft { user_id: user.to_owned() });
            self.bus.publish(&[event]).await?;
        }
        Ok(was_member)
    }

    /// Tells the conversation that `user` has received (DELIVERED) or read
    /// (READ) everything up to `up_to_seq`; `persist` records it.
    pub async fn publish_receipt(
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
    pub async fn mark_read_checked(&self, conversation_id: &str, user: &str, seq: u64) -> Result<u64, GatewayError> {
        let latest = self.store.latest_seq(conversation_id).await?;
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
    pub async fn mark_read(&self, conversation_id: &str, user: &str, seq: u64) -> Result<u64, GatewayError> {
        let marker = self.store.mark_read(conversation_id, user, seq, crate::clock::now_ms()).await?;
        if marker == seq && seq > 0 {
            self.publish_receipt(conversation_id, user, ReceiptStatus::Read, seq).await?;
        }
        Ok(marker)
    }

    /// Adds `member` (a user or an external identity) to a conversation the
    /// caller is a member of; true when newly added.
    pub async fn add_member(&self, conversation_id: &str, caller: &str, member: &str) -> Result<bool, GatewayError> {
        limits::conversation_id(conversation_id)?;
        limits::member_id(member)?;
        if ExternalId::has_channel_prefix(member) {
            ExternalId::parse(member).map_err(|e| GatewayError::InvalidArgument(format!("member_id: {e}")))?;
        }
        self.require_member(conversation_id, caller).await?;
        // Adding members (external ones cost a channel send each) shares the
        // sender's token bucket.
        self.rate.check(caller, Instant::now())?;
        let added = self.store.add_member(conversation_id, member, crate::clock::now_ms()).await?;
        if added {
            let event = self.envelope(conversation_id, Event::MemberJoined { user_id: member.to_owned() });
            self.bus.publish(&[event]).await?;
        }
        Ok(added)
    }

    /// Where a stored message stands with each recipient; members only.
    pub async fn message_status(
        &self,
        conversation_id: &str,
        caller: &str,
        message_id: &str,
    ) -> Result<(StoredMessage, Vec<RecipientStatus>), GatewayError> {
        limits::message_id(message_id)?;
        self.require_member(conversation_id, caller).await?;
        let message = self.store.get_message(conversation_id, message_id).await?.ok_or_else(|| {
            GatewayError::NotFound(format!(
                "no stored message {message_id} in conversation {conversation_id} (messages are stored within about a second of being sent)"
            ))
        })?;
        let statuses = self.store.message_status(&message).await?;
        Ok((message, statuses))
    }

    /// Members only: `PERMISSION_DENIED` otherwise.
    pub async fn require_member(&self, conversation_id: &str, user: &str) -> Result<(), GatewayError> {
        limits::conversation_id(conversation_id)?;
        if self.store.is_member(conversation_id, user).await? {
            Ok(())
        } else {
            Err(GatewayError::PermissionDenied(format!("{user} is not a member of conversation {conversation_id}")))
        }
    }

    pub async fn typing(&self, conversation_id: &str, user: &str, typing: bool) -> Result<(), GatewayError> {
        self.rate.check(user, Instant::now())?;
        let event = self.envelope(conversation_id, Event::Typing { user_id: user.to_owned(), typing });
        self.bus.publish(&[event]).await?;
        Ok(())
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
    pub async fn refresh_presence(&self) {
        let keys: Vec<PresenceKey> = self.presence_set().iter().cloned().collect();
        let (live, orphaned): (Vec<_>, Vec<_>) =
            keys.into_iter().partition(|k| self.hub.is_subscribed(&k.conversation_id, &k.session_id));
        for key in orphaned {
            self.presence_set().remove(&key);
            if let Err(e) = self.announce_offline(&key).await {
                tracing::warn!(error = %e, conversation_id = key.conversation_id, "releasing presence failed");
            }
        }
        if live.is_empty() {
            return;
        }
        if let Err(e) = self.store.presence_refresh(&live, presence_expiry(crate::clock::now_ms())).await {
            tracing::warn!(error = %e, streams = live.len(), "presence refresh failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::memory::MemoryBus;
    use crate::store::memory::MemoryStore;
    use crate::store::{ConversationInfo, Failure, HistoryQuery, Joined, StoreError};
    use async_trait::async_trait;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// The memory store, with presence failing while `fail` is set.
    #[derive(Debug, Default)]
    struct FlakyStore {
        inner: MemoryStore,
        fail: AtomicBool,
    }

    #[async_trait]
    impl Store for FlakyStore {
        async fn accept_send(&self, req: SendRequest<'_>) -> Result<Accepted, StoreError> {
            self.inner.accept_send(req).await
        }
        async fn join(&self, c: &str, u: &str) -> Result<Joined, StoreError> {
            self.inner.join(c, u).await
        }
        async fn leave(&self, c: &str, u: &str) -> Result<bool, StoreError> {
            self.inner.leave(c, u).await
        }
        async fn is_member(&self, c: &str, u: &str) -> Result<bool, StoreError> {
            self.inner.is_member(c, u).await
        }
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
        async fn history(&self, c: &str, q: HistoryQuery) -> Result<Vec<StoredMessage>, StoreError> {
            self.inner.history(c, q).await
        }
        async fn get_message(&self, c: &str, m: &str) -> Result<Option<StoredMessage>, StoreError> {
            self.inner.get_message(c, m).await
        }
        async fn conversations(
            &self,
            u: &str,
            limit: usize,
            after: Option<&str>,
        ) -> Result<(Vec<ConversationInfo>, bool), StoreError> {
            self.inner.conversations(u, limit, after).await
        }
        async fn latest_seq(&self, c: &str) -> Result<u64, StoreError> {
            self.inner.latest_seq(c).await
        }
        async fn add_member(&self, c: &str, m: &str, now: i64) -> Result<bool, StoreError> {
            self.inner.add_member(c, m, now).await
        }
        async fn members(&self, c: &str) -> Result<Vec<MemberState>, StoreError> {
            self.inner.members(c).await
        }
        async fn member(&self, c: &str, u: &str) -> Result<Option<MemberState>, StoreError> {
            self.inner.member(c, u).await
        }
        async fn record_receipt(&self, c: &str, r: &ReceiptEvent, at: i64) -> Result<bool, StoreError> {
            self.inner.record_receipt(c, r, at).await
        }
        async fn failures(&self, c: &str, seq: u64) -> Result<Vec<Failure>, StoreError> {
            self.inner.failures(c, seq).await
        }
        async fn step_time(&self, c: &str, u: &str, st: ReceiptStatus, seq: u64) -> Result<Option<i64>, StoreError> {
            self.inner.step_time(c, u, st, seq).await
        }
        async fn link_channel(&self, u: &str, e: Option<&str>) -> Result<(), StoreError> {
            self.inner.link_channel(u, e).await
        }
        async fn linked_channels(&self, u: &[String]) -> Result<std::collections::HashMap<String, String>, StoreError> {
            self.inner.linked_channels(u).await
        }
        async fn bound_conversation(&self, m: &str) -> Result<Option<String>, StoreError> {
            self.inner.bound_conversation(m).await
        }
    }

    fn app(store: Arc<FlakyStore>) -> App {
        let hub = Arc::new(Hub::new(Duration::from_secs(1)));
        App::new("gw".into(), store.clone(), Arc::new(MemoryBus::new(hub.clone(), store)), hub, Limits::default(), 16)
    }

    #[tokio::test]
    async fn failed_join_leaves_no_subscription_or_presence() {
        let store = Arc::new(FlakyStore::default());
        let app = app(store.clone());
        let (outbox, _stream) = Outbox::new("s1".into(), "alice".into(), 16);
        store.fail.store(true, Ordering::Relaxed);
        let err = app.join("r", &outbox).await.expect_err("presence fails");
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(!app.hub.is_subscribed("r", "s1"));
        assert!(app.presence_set().is_empty());
        assert!(store.online_users("r", 0).await.expect("query").is_empty());
    }

    #[tokio::test]
    async fn failed_rejoin_keeps_the_existing_subscription() {
        let store = Arc::new(FlakyStore::default());
        let app = app(store.clone());
        let (outbox, _stream) = Outbox::new("s1".into(), "alice".into(), 16);
        app.join("r", &outbox).await.expect("first join");
        store.fail.store(true, Ordering::Relaxed);
        assert!(app.join("r", &outbox).await.is_err());
        assert!(app.hub.is_subscribed("r", "s1"), "a failed rejoin must not unsubscribe");
        assert_eq!(app.presence_set().len(), 1);
    }
}
