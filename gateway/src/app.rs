//! The state every connection shares ([`App`]) and every operation a client
//! can ask for, whether on its `Connect` stream or in a unary call: each
//! operation is one method here, and that method is where its input is
//! checked and its caller authorised, so no RPC or frame can skip a rule.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_core::bus::Bus;
use chat_core::conversation::{self, Conversation, Kind, Role, RoleChange};
use chat_core::envelope::{Envelope, Event, ReceiptEvent, ReceiptStatus};
use chat_core::external::ExternalId;
use chat_core::limits;
use chat_core::send::{self, Send, message_envelope};
use chat_core::store::{
    Accepted, ConversationInfo, Created, HistoryQuery, MemberState, PresenceKey, RecipientStatus, Settled, StoreError,
    StoredMessage, Stores,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::bus::route::Router;
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
    /// Member routing's registrations (AWS bus, `--routing members`).
    router: Option<Arc<Router>>,
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
            router: None,
        }
    }

    /// Routes this gateway's events by members: joins register it on the
    /// conversation, and sends keep the routes their seq came with.
    pub(crate) fn routed_by(self, router: Option<Arc<Router>>) -> Self {
        Self { router, ..self }
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

    /// This gateway's instance id.
    pub(crate) fn gateway_id(&self) -> &str {
        &self.gateway_id
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
    /// sender's messages are ordered as it sent them (unless one stalls
    /// past the receivers' settle delay before it is recorded, and is
    /// renumbered after the ones that followed it).
    pub(crate) async fn accept(&self, sender: &str, send: &Send<'_>) -> Result<Accepted, GatewayError> {
        self.rate.send(sender)?;
        // The claim and the seq: a span of the send's trace of its own.
        let span = if service::telemetry::enabled() {
            tracing::info_span!("chat.accept", conversation_id = send.conversation_id())
        } else {
            tracing::Span::none()
        };
        let accepted =
            send::accept(self.stores.sequencer.as_ref(), &self.gateway_id, sender, send).instrument(span).await?;
        Ok(accepted)
    }

    /// Records an accepted message, then publishes it; returns the identity
    /// it went out with (a new seq if readers voided its first meanwhile).
    /// A duplicate is recorded and published again with its first identity:
    /// if the first attempt's sender died before either, this delivers it,
    /// and if it did not, receivers drop the copy by event id.
    pub(crate) async fn publish_accepted(
        &self,
        sender: &str,
        send: &Send<'_>,
        accepted: Accepted,
    ) -> Result<Accepted, GatewayError> {
        let accepted = send::record(self.stores.sequencer.as_ref(), &self.gateway_id, sender, send, accepted).await?;
        if let (Some(router), Some(routes)) = (&self.router, &accepted.routes) {
            router.observe(send.conversation_id(), accepted.seq, routes);
        }
        // The envelope carries this span's context: every gateway's delivery
        // and every function's work on it continue the send's trace.
        let span = if service::telemetry::enabled() {
            tracing::info_span!("chat.publish", seq = accepted.seq, message_id = accepted.message_id)
        } else {
            tracing::Span::none()
        };
        let envelope =
            message_envelope(&self.gateway_id, sender, send, &accepted).traced(service::telemetry::traceparent(&span));
        self.bus.publish(std::slice::from_ref(&envelope)).instrument(span).await?;
        tracing::debug!(
            conversation_id = send.conversation_id(),
            seq = accepted.seq,
            message_id = accepted.message_id,
            duplicate = accepted.duplicate,
            "message published"
        );
        metrics::counter!("chat_messages_accepted_total", "duplicate" => if accepted.duplicate { "true" } else { "false" })
            .increment(1);
        Ok(accepted)
    }

    /// Unary `SendMessage`: a durable member's checked send, accepted,
    /// recorded and published; the sender's answer may go out once this
    /// returns.
    pub(crate) async fn send_message(&self, sender: &str, send: Send<'_>) -> Result<Accepted, GatewayError> {
        self.require_member(send.conversation_id(), sender).await?;
        let accepted = self.accept(sender, &send).await?;
        self.publish_accepted(sender, &send, accepted).await
    }

    /// Asks the store what the seqs of gaps that waited the settle delay
    /// hold, and hands each answer to the hub: a conversation's missing seqs
    /// in order, each conversation in its own task so a slow one holds up no
    /// other. A failed ask is asked again after another delay; the reorder
    /// window bounds the wait regardless.
    pub(crate) fn settle_gaps(self: &Arc<Self>) {
        for (conversation_id, missing) in self.hub.gaps_to_settle(std::time::Instant::now(), self.limits.gap_settle) {
            let app = self.clone();
            tokio::spawn(async move {
                for seq in missing {
                    match app.settle(&conversation_id, seq).await {
                        Ok(settled) => {
                            tracing::info!(
                                conversation_id,
                                seq,
                                void = matches!(settled, Settled::Void),
                                "seq gap settled from the store"
                            );
                            app.hub.settled(&conversation_id, seq, settled, std::time::Instant::now());
                        }
                        Err(e) => {
                            tracing::warn!(conversation_id, seq, error = %e, "could not settle a seq gap; asking again later");
                            return;
                        }
                    }
                }
            });
        }
    }

    /// What a missing seq holds, settled once for every reader.
    pub(crate) async fn settle(&self, conversation_id: &str, seq: u64) -> Result<Settled, GatewayError> {
        Ok(self.stores.history.settle(conversation_id, seq).await?)
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
        // Registered before the join reads the latest seq: every message
        // numbered after that read comes here live.
        if let Some(router) = &self.router {
            router.register(conversation_id).await?;
        }
        let joined = match self.stores.membership.join(conversation_id, user).await {
            Err(StoreError::NotAdmitted) => return Err(not_admitted(conversation_id)),
            joined => joined?,
        };
        if !self.hub.anchor(conversation_id, &outbox.session_id, joined.last_seq, joined.members_version) {
            return Err(GatewayError::FailedPrecondition(format!(
                "you left conversation {conversation_id} on another stream (or were removed) while this stream was joining; join again to rejoin"
            )));
        }
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
        // Only a stream that went as far as recording its presence is
        // announced offline: a refused join must not tell a conversation's
        // members who knocked.
        if self.presence_set().remove(&key) {
            self.announce_offline(&key).await?;
        }
        Ok(())
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
        let removal = self.stores.membership.leave(conversation_id, user).await?;
        if removal.was_member {
            let event = self.envelope(conversation_id, Event::MemberLeft { user_id: user.to_owned() });
            self.bus.publish(&[event.under_members_version(removal.members_version)]).await?;
        }
        Ok(removal.was_member)
    }

    /// Tells the conversation that `user` has received (DELIVERED) or read
    /// (READ) everything up to `up_to_seq`; `persist` records it.
    /// Charges a stream's ack or read to the user's receipt budget, when it
    /// arrives (its report may wait: `coalesce`).
    pub(crate) fn charge_receipt(&self, user: &str) -> Result<(), GatewayError> {
        self.rate.receipt(user)
    }

    /// Reports a stream's receipt, already charged: a READ moves the read
    /// marker (and is announced), a DELIVERED is announced (`persist`
    /// records it).
    pub(crate) async fn report_receipt(
        &self,
        conversation_id: &str,
        user: &str,
        status: ReceiptStatus,
        up_to_seq: u64,
    ) -> Result<(), GatewayError> {
        match status {
            ReceiptStatus::Read => self.record_read(conversation_id, user, up_to_seq).await.map(drop),
            _ => self.announce_receipt(conversation_id, user, status, up_to_seq, false).await,
        }
    }

    /// Publishes a receipt (`recorded`: in the store already).
    async fn announce_receipt(
        &self,
        conversation_id: &str,
        user: &str,
        status: ReceiptStatus,
        up_to_seq: u64,
        recorded: bool,
    ) -> Result<(), GatewayError> {
        let receipt = ReceiptEvent {
            user_id: user.to_owned(),
            status,
            up_to_seq,
            message_id: String::new(),
            reason: String::new(),
            via: String::new(),
            recorded,
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
        // Membership first: the latest seq of a conversation is its members' business.
        self.require_member(conversation_id, user).await?;
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
        self.record_read(conversation_id, user, seq).await
    }

    /// Moves the read marker forward and announces it when it moved.
    async fn record_read(&self, conversation_id: &str, user: &str, seq: u64) -> Result<u64, GatewayError> {
        let marker = self.stores.receipts.mark_read(conversation_id, user, seq, chat_core::clock::now_ms()).await?;
        if marker == seq && seq > 0 {
            self.announce_receipt(conversation_id, user, ReceiptStatus::Read, seq, true).await?;
        }
        Ok(marker)
    }

    /// Adds `member` (a user or an external identity) to a conversation the
    /// caller administers; true when newly added.
    pub(crate) async fn add_member(
        &self,
        conversation_id: &str,
        caller: &str,
        member: &str,
    ) -> Result<bool, GatewayError> {
        limits::member_id(member)?;
        let (conversation, role) = self.membership_of(conversation_id, caller).await?;
        conversation::may_add(conversation.kind, role)?;
        // Adding members (external ones cost a channel send each) shares the
        // sender's budget.
        self.rate.send(caller)?;
        let added = match self.stores.membership.add_member(conversation_id, member, chat_core::clock::now_ms()).await {
            Err(StoreError::Banned) => {
                return Err(GatewayError::FailedPrecondition(format!(
                    "{member} is banned from conversation {conversation_id}; unban them first"
                )));
            }
            added => added?,
        };
        if added {
            let event = self.envelope(conversation_id, Event::MemberJoined { user_id: member.to_owned() });
            self.bus.publish(&[event]).await?;
        }
        Ok(added)
    }

    /// Creates a conversation owned by the caller (a direct one belongs to
    /// its two users and is the same whoever creates it).
    pub(crate) async fn create_conversation(
        &self,
        caller: &str,
        kind: Kind,
        title: &str,
        members: &[String],
        chosen_id: &str,
    ) -> Result<Created, GatewayError> {
        let conversation_id = match kind {
            Kind::Direct => {
                let other = members.iter().find(|m| *m != caller).map_or("", String::as_str);
                conversation::direct_id(caller, other)
            }
            _ if chosen_id.is_empty() => format!("c-{}", ulid::Ulid::new().to_string().to_lowercase()),
            _ if chosen_id.starts_with(conversation::DIRECT_PREFIX) => {
                return Err(GatewayError::InvalidArgument(format!(
                    "conversation ids starting with {:?} are reserved for direct conversations",
                    conversation::DIRECT_PREFIX
                )));
            }
            _ => chosen_id.to_owned(),
        };
        let plan = conversation::plan(conversation_id, kind, title, caller, members, chat_core::clock::now_ms())?;
        self.rate.send(caller)?;
        let created = self.stores.membership.create(&plan).await?;
        if !created.created && (kind != Kind::Direct || created.conversation.kind != Kind::Direct) {
            return Err(GatewayError::AlreadyExists(format!(
                "conversation id {} is taken; choose another, or leave conversation_id empty for a minted one",
                plan.conversation.conversation_id
            )));
        }
        tracing::info!(
            conversation_id = created.conversation.conversation_id,
            kind = kind.as_str(),
            created = created.created,
            members = plan.members.len(),
            "conversation created"
        );
        Ok(created)
    }

    /// A conversation's settings and its members with their roles; members
    /// only.
    pub(crate) async fn conversation_details(
        &self,
        conversation_id: &str,
        caller: &str,
    ) -> Result<(Conversation, Vec<MemberState>), GatewayError> {
        let (conversation, _) = self.membership_of(conversation_id, caller).await?;
        let members = self.stores.receipts.members(conversation_id).await?;
        Ok((conversation, members))
    }

    /// Removes (and with `ban`, keeps out) a member ranked below the
    /// caller; every gateway's streams of theirs stop hearing the
    /// conversation. True when they were a member.
    pub(crate) async fn remove_member(
        &self,
        conversation_id: &str,
        caller: &str,
        member: &str,
        ban: bool,
    ) -> Result<bool, GatewayError> {
        limits::member_id(member)?;
        if member == caller {
            return Err(GatewayError::FailedPrecondition("to remove yourself, leave the conversation".into()));
        }
        let (conversation, role) = self.membership_of(conversation_id, caller).await?;
        let target = self.stores.membership.role(conversation_id, member).await?;
        conversation::may_remove(conversation.kind, role, target)?;
        let removal = self.stores.membership.remove_member(conversation_id, member, ban).await?;
        let removed = removal.was_member;
        if removed || ban {
            let event = Event::MemberRemoved { user_id: member.to_owned(), by: caller.to_owned(), banned: ban };
            let mut events = vec![self.envelope(conversation_id, event).under_members_version(removal.members_version)];
            // Their streams elsewhere release presence only at their next
            // refresh; the members see them go now.
            let now_ms = chat_core::clock::now_ms();
            if self.stores.presence.presence_remove_user(conversation_id, member, now_ms).await? {
                let offline = Event::Presence { user_id: member.to_owned(), online: false };
                events.push(self.envelope(conversation_id, offline));
            }
            self.bus.publish(&events).await?;
        }
        tracing::info!(conversation_id, member, by = caller, ban, removed, "member removed");
        Ok(removed)
    }

    /// Lifts a ban; admins and the owner. True when there was one.
    pub(crate) async fn unban(&self, conversation_id: &str, caller: &str, member: &str) -> Result<bool, GatewayError> {
        limits::member_id(member)?;
        let (conversation, role) = self.membership_of(conversation_id, caller).await?;
        conversation::may_remove(conversation.kind, role, None)?;
        Ok(self.stores.membership.unban(conversation_id, member).await?)
    }

    /// Sets a member's role, or (to owner) transfers ownership; members
    /// hear of each change.
    pub(crate) async fn set_role(
        &self,
        conversation_id: &str,
        caller: &str,
        member: &str,
        new_role: Role,
    ) -> Result<(), GatewayError> {
        limits::member_id(member)?;
        let (conversation, role) = self.membership_of(conversation_id, caller).await?;
        let Some(target) = self.stores.membership.role(conversation_id, member).await? else {
            return Err(GatewayError::FailedPrecondition(format!(
                "{member} is not a member of conversation {conversation_id}; add them first"
            )));
        };
        let changes = match conversation::may_set_role(conversation.kind, role, member, target, new_role)? {
            RoleChange::Set(new_role) => {
                if !self.stores.membership.set_role(conversation_id, member, new_role).await? {
                    return Err(GatewayError::FailedPrecondition(format!(
                        "{member} left conversation {conversation_id}"
                    )));
                }
                vec![(member, new_role)]
            }
            RoleChange::TransferOwnership => {
                match self.stores.membership.transfer_ownership(conversation_id, caller, member).await {
                    Err(StoreError::NotMember) => {
                        return Err(GatewayError::FailedPrecondition(format!(
                            "ownership of {conversation_id} moved or {member} left meanwhile; look again"
                        )));
                    }
                    moved => moved?,
                }
                vec![(member, Role::Owner), (caller, Role::Admin)]
            }
        };
        let events: Vec<Envelope> = changes
            .into_iter()
            .map(|(user, role)| {
                let event = Event::RoleChanged {
                    user_id: user.to_owned(),
                    role: role.as_str().to_owned(),
                    by: caller.to_owned(),
                };
                self.envelope(conversation_id, event)
            })
            .collect();
        self.bus.publish(&events).await?;
        Ok(())
    }

    /// The caller's role in a conversation with its settings; the same
    /// `PERMISSION_DENIED` for a non-member as for no conversation at all.
    async fn membership_of(&self, conversation_id: &str, user: &str) -> Result<(Conversation, Role), GatewayError> {
        let role = self.require_member(conversation_id, user).await?;
        let conversation = self.stores.membership.conversation(conversation_id).await?;
        // Members of a conversation that predates settings (never sent to)
        // see it as what it was: public.
        let conversation = conversation.unwrap_or_else(|| Conversation {
            conversation_id: conversation_id.to_owned(),
            kind: Kind::Public,
            title: String::new(),
            created_by: String::new(),
            created_at_ms: 0,
        });
        Ok((conversation, role))
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

    /// Members only: the member's role, or the `PERMISSION_DENIED` that a
    /// conversation that does not exist gets too.
    pub(crate) async fn require_member(&self, conversation_id: &str, user: &str) -> Result<Role, GatewayError> {
        limits::conversation_id(conversation_id)?;
        self.stores.membership.role(conversation_id, user).await?.ok_or_else(|| not_admitted(conversation_id))
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

/// The one answer for a conversation the caller may not reach, whether it
/// exists or not (private, banned, or no such conversation).
fn not_admitted(conversation_id: &str) -> GatewayError {
    GatewayError::PermissionDenied(format!(
        "conversation {conversation_id} does not exist or you are not a member of it; public conversations can be joined, private ones need an admin to add you"
    ))
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
        async fn presence_remove_user(&self, c: &str, u: &str, now: i64) -> Result<bool, StoreError> {
            self.inner.presence_remove_user(c, u, now).await
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

    async fn public_room(app: &App, id: &str) {
        app.create_conversation("owner", Kind::Public, "", &[], id).await.expect("created");
    }

    #[tokio::test]
    async fn failed_join_leaves_no_subscription_or_presence() {
        let presence = Arc::new(FlakyPresence::default());
        let app = app(presence.clone());
        public_room(&app, "r").await;
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
        public_room(&app, "r").await;
        let (outbox, _stream) = Outbox::new("s1".into(), "alice".into(), 16);
        app.join("r", &outbox).await.expect("first join");
        presence.fail.store(true, Ordering::Relaxed);
        assert!(app.join("r", &outbox).await.is_err());
        assert!(app.hub.is_subscribed("r", "s1"), "a failed rejoin must not unsubscribe");
        assert_eq!(app.presence_set().len(), 1);
    }

    /// Every answer a non-member gets about a private conversation, with
    /// the conversation's id blanked out.
    async fn answers(app: &App, conversation_id: &str, user: &str) -> Vec<String> {
        let (outbox, _stream) = Outbox::new("s9".into(), user.into(), 16);
        let send = Send::new(conversation_id, "c1", "hi", 100).expect("valid send");
        let page = PageRequest { conversation_id, forward: true, from_seq: 0, cursor: "", page_size: 10 };
        let results = vec![
            app.join(conversation_id, &outbox).await.map(|_| ()),
            app.send_message(user, send).await.map(|_| ()),
            app.history_page(user, page).await.map(|_| ()),
            app.get_message(conversation_id, user, "m1").await.map(|_| ()),
            app.message_status(conversation_id, user, "m1").await.map(|_| ()),
            app.mark_read_checked(conversation_id, user, 1).await.map(|_| ()),
            app.add_member(conversation_id, user, "mallory2").await.map(|_| ()),
            app.conversation_details(conversation_id, user).await.map(|_| ()),
            app.remove_member(conversation_id, user, "alice", true).await.map(|_| ()),
            app.set_role(conversation_id, user, "alice", Role::Member).await.map(|_| ()),
        ];
        results
            .into_iter()
            .map(|r| {
                let err = r.expect_err("a non-member is refused");
                format!("{:?} {}", err.code(), err.to_string().replace(conversation_id, "<id>"))
            })
            .collect()
    }

    #[tokio::test]
    async fn a_private_conversation_looks_like_none_to_a_non_member() {
        let app = app(Arc::new(FlakyPresence::default()));
        let created =
            app.create_conversation("alice", Kind::Private, "secret", &["bob".to_owned()], "").await.expect("created");
        let private = created.conversation.conversation_id;
        let send = Send::new(&private, "c1", "hi", 100).expect("valid send");
        app.send_message("alice", send).await.expect("a member sends");
        let refused = answers(&app, &private, "mallory").await;
        assert!(refused.iter().all(|a| a.starts_with("PermissionDenied")), "{refused:#?}");
        assert_eq!(refused, answers(&app, "no-such-room", "mallory").await);
    }

    #[tokio::test]
    async fn a_ban_removes_and_keeps_out_until_lifted() {
        let app = app(Arc::new(FlakyPresence::default()));
        public_room(&app, "r").await;
        let (outbox, _stream) = Outbox::new("s1".into(), "mallory".into(), 16);
        app.join("r", &outbox).await.expect("anyone joins a public conversation");
        assert_eq!(
            app.remove_member("r", "mallory", "owner", true).await.map_err(|e| e.code()),
            Err(tonic::Code::PermissionDenied),
            "a member cannot remove the owner"
        );
        assert!(app.remove_member("r", "owner", "mallory", true).await.expect("the owner bans"));
        assert_eq!(app.join("r", &outbox).await.map(|_| ()).map_err(|e| e.code()), Err(tonic::Code::PermissionDenied));
        assert_eq!(
            app.add_member("r", "owner", "mallory").await.map_err(|e| e.code()),
            Err(tonic::Code::FailedPrecondition)
        );
        assert!(app.unban("r", "owner", "mallory").await.expect("unbanned"));
        assert!(app.add_member("r", "owner", "mallory").await.expect("added again"));
    }

    #[tokio::test]
    async fn ownership_moves_and_the_old_owner_becomes_admin() {
        let app = app(Arc::new(FlakyPresence::default()));
        let created =
            app.create_conversation("alice", Kind::Private, "", &["bob".to_owned()], "").await.expect("created");
        let id = created.conversation.conversation_id;
        app.set_role(&id, "alice", "bob", Role::Owner).await.expect("transferred");
        let (_, members) = app.conversation_details(&id, "alice").await.expect("details");
        let roles: Vec<(String, Role)> = members.into_iter().map(|m| (m.user_id, m.role)).collect();
        assert_eq!(roles, vec![("alice".to_owned(), Role::Admin), ("bob".to_owned(), Role::Owner)]);
        let refused = app.remove_member(&id, "alice", "bob", false).await.map_err(|e| e.code());
        assert_eq!(refused, Err(tonic::Code::PermissionDenied), "an admin cannot remove the owner");
    }

    #[tokio::test]
    async fn a_direct_conversation_is_one_per_pair() {
        let app = app(Arc::new(FlakyPresence::default()));
        let first = app.create_conversation("alice", Kind::Direct, "", &["bob".to_owned()], "").await.expect("created");
        let second = app.create_conversation("bob", Kind::Direct, "", &["alice".to_owned()], "").await.expect("found");
        assert!(first.created && !second.created);
        assert_eq!(first.conversation.conversation_id, second.conversation.conversation_id);
        let squat =
            app.create_conversation("mallory", Kind::Public, "", &[], &first.conversation.conversation_id).await;
        assert_eq!(squat.map(|_| ()).map_err(|e| e.code()), Err(tonic::Code::InvalidArgument));
        let taken = app.create_conversation("mallory", Kind::Public, "", &[], "r").await;
        assert!(taken.is_ok());
        let again = app.create_conversation("mallory", Kind::Public, "", &[], "r").await;
        assert_eq!(again.map(|_| ()).map_err(|e| e.code()), Err(tonic::Code::AlreadyExists));
    }
}
