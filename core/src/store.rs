//! The platform's state outside its processes, as domain types and narrow
//! traits, one per concern: [`Sequencer`] (seq and send idempotency),
//! [`Membership`], [`Presence`], [`History`], [`Receipts`], [`Links`].
//!
//! Two stores implement them all: `chat_aws::dynamo::DynamoStore` (the AWS
//! path, the one owner of the tables' schema) and [`crate::memory::MemoryStore`]
//! (embedded mode). The rules both follow, such as what a retried
//! `client_message_id` returns, are stated on the traits; the conformance
//! check in the end-to-end tests runs them against both. Callers take only
//! the concerns they use (a Lambda that records receipts needs
//! [`Receipts`], not presence).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::conversation::{Conversation, NewConversation, Role};
use crate::envelope::{ReceiptEvent, ReceiptStatus};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("client_message_id was already used for a different message body")]
    ClientMessageIdReused,
    #[error("{0}")]
    Unavailable(String),
    #[error("stored data is malformed: {0}")]
    Corrupt(String),
    #[error("not a member of the conversation")]
    NotMember,
    /// A join the conversation does not admit: it does not exist, is not
    /// public, or bans the user. Callers must not say which.
    #[error("the conversation does not admit this member")]
    NotAdmitted,
    #[error("banned from the conversation")]
    Banned,
}

/// A message as stored: recorded when its send is accepted, before it is
/// published (rewritten identically by `persist` on AWS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub conversation_id: String,
    pub seq: u64,
    pub message_id: String,
    pub sender: String,
    pub body: String,
    pub sent_at_ms: i64,
    pub client_message_id: String,
    /// The membership version it was numbered under (see `Envelope`).
    pub members_version: u64,
}

/// What a numbered seq holds once settled: every reader that asks gets the
/// same answer, so receivers and history agree on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Its message was recorded.
    Message(StoredMessage),
    /// Its sender never recorded a message (it died between numbering and
    /// recording, or was too slow): the seq stays empty for good, and a
    /// sender that comes late takes a new seq instead.
    Void,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Oldest first.
    Forward,
    /// Newest first.
    Backward,
}

/// One page of history: up to `limit` messages strictly after (forward) or
/// before (backward) `from_seq`; `None` starts at the beginning or the latest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryQuery {
    pub direction: Direction,
    pub from_seq: Option<u64>,
    pub limit: usize,
}

/// A user's view of one conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationInfo {
    pub conversation_id: String,
    /// The latest stored message; its body is a preview.
    pub last_message: Option<StoredMessage>,
    pub last_read_seq: u64,
}

impl ConversationInfo {
    /// Stored messages after the read marker.
    pub fn unread(&self) -> u64 {
        self.last_message.as_ref().map_or(0, |m| m.seq.saturating_sub(self.last_read_seq))
    }
}

/// The identity and position a send was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub message_id: String,
    pub seq: u64,
    /// When the gateway first accepted it (ms since the epoch).
    pub accepted_at_ms: i64,
    /// This send repeats an earlier one with the same `client_message_id`.
    pub duplicate: bool,
    /// The conversation's external members when the message was first
    /// accepted, the sender excluded: the connector delivers to them.
    pub external_recipients: Vec<String>,
    /// The conversation's membership version when the seq was taken (see
    /// [`Removal::members_version`]).
    pub members_version: u64,
    /// The gateways registered for the conversation's events when this call
    /// numbered the send (member routing); `None` when it did not number it
    /// (a duplicate's first identity) or the store does not route.
    pub routes: Option<Routes>,
}

/// The gateways that asked for a conversation's events (member routing),
/// as the conversation held them at one moment. A gateway registers before
/// it reads the conversation's latest seq for a join, and the seq counter's
/// update returns this with each seq, so every message numbered after a
/// registration names that gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    /// Route ids (a gateway id and its boot), sorted.
    pub gateways: Vec<String>,
    /// More gateways registered than a conversation routes to: its events go
    /// to every gateway through the topic instead.
    pub overflowed: bool,
    /// Members with a linked channel, whom offline fallback may reach: a
    /// message needs the functions (through the topic) only if it has
    /// external recipients or one of these is not its sender.
    pub fallback_members: Vec<String>,
}

/// A send waiting for its identity.
#[derive(Debug, Clone)]
pub struct SendRequest<'a> {
    pub conversation_id: &'a str,
    pub sender: &'a str,
    /// Empty: not idempotent.
    pub client_message_id: &'a str,
    pub body: &'a str,
    /// The unique part of the message's id when the message is new (a
    /// ULID): the store makes the id from it and the first seq
    /// ([`message_id`]).
    pub new_message_id: String,
    pub now_ms: i64,
    /// Who accepts it (a gateway's id, or a function's name), recorded with
    /// the message.
    pub origin: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined {
    /// The user was not a member before.
    pub newly_member: bool,
    pub role: Role,
    /// The conversation's latest `seq`, read before the membership was
    /// checked or recorded.
    pub last_seq: u64,
    /// Its membership version, read with `last_seq`: a leave or removal of
    /// this user of a later version may have come after this join, one of
    /// this version or earlier came before it (see [`Removal`]).
    pub members_version: u64,
}

/// What a leave or removal did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removal {
    /// The user was a member.
    pub was_member: bool,
    /// The conversation's membership version after the removal, moved on in
    /// the same write that took the membership away (0 when there was none
    /// to take). Every send numbered afterwards carries at least this
    /// version, so a receiver that sees a message of a version it has not
    /// seen a removal for holds it until the removal arrives: a removed
    /// member never receives a message sent after their removal, whatever
    /// order the bus delivers in. A join that read this version or a later
    /// one came after the removal, so the removal's event does not end it.
    pub members_version: u64,
}

/// One stream's presence in one conversation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PresenceKey {
    pub conversation_id: String,
    pub user_id: String,
    pub session_id: String,
}

/// Identity and order of sends: the one synchronous write on the send path.
#[async_trait]
pub trait Sequencer: Send + Sync + std::fmt::Debug {
    /// Gives a send its `message_id` and `seq`. A send whose
    /// (conversation, sender, client_message_id) was accepted before returns
    /// that first identity with `duplicate = true` and allocates nothing; the
    /// same key with another body is [`StoreError::ClientMessageIdReused`].
    async fn accept_send(&self, req: SendRequest<'_>) -> Result<Accepted, StoreError>;

    /// Records an accepted send's message under its seq; call it before
    /// publishing, so every published seq has its message in the store. A
    /// seq that readers settled as void first (its sender stalled, or the
    /// first sender of a retried send died before recording) is given up:
    /// the send is numbered again, recorded there, and the new identity
    /// returned (same `message_id`, new `seq`; the store remembers where
    /// the first seq's message went, so the id still finds it). Recording
    /// again what is recorded (a retry) changes nothing.
    async fn record_send(&self, req: SendRequest<'_>, accepted: Accepted) -> Result<Accepted, StoreError>;

    /// The conversation's latest seq (0 before its first message).
    async fn latest_seq(&self, conversation_id: &str) -> Result<u64, StoreError>;
}

/// The result of creating a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    pub conversation: Conversation,
    /// False when it existed already (a direct conversation created again):
    /// `conversation` is then the existing one.
    pub created: bool,
}

/// Who belongs to a conversation, with which role, and who is kept out.
/// The stores record; who may ask for what is decided by the rules of
/// [`crate::conversation`], applied by the caller, except where a rule must
/// hold atomically with the write (a join of a public conversation, a
/// banned user's join), which the store enforces itself.
#[async_trait]
pub trait Membership: Send + Sync + std::fmt::Debug {
    /// Creates a conversation with its initial members and their roles, all
    /// or nothing. An existing id is left as it is and returned with
    /// `created = false`; for a direct conversation its two users are
    /// members again afterwards.
    async fn create(&self, new: &NewConversation) -> Result<Created, StoreError>;

    /// A conversation's settings; `None` when it does not exist. One
    /// created before roles existed reads as public.
    async fn conversation(&self, conversation_id: &str) -> Result<Option<Conversation>, StoreError>;

    /// Joins a user: a member rejoins as they are; anyone else becomes a
    /// member only of an existing public conversation that does not ban
    /// them, and [`StoreError::NotAdmitted`] otherwise. Reads the latest
    /// `seq` too.
    async fn join(&self, conversation_id: &str, user_id: &str) -> Result<Joined, StoreError>;

    /// Removes membership, moving the membership version on with it.
    async fn leave(&self, conversation_id: &str, user_id: &str) -> Result<Removal, StoreError>;

    /// The member's role; `None` for a non-member.
    async fn role(&self, conversation_id: &str, user_id: &str) -> Result<Option<Role>, StoreError>;

    async fn is_member(&self, conversation_id: &str, user_id: &str) -> Result<bool, StoreError> {
        Ok(self.role(conversation_id, user_id).await?.is_some())
    }

    /// Adds a member (a user or an external identity) without them joining
    /// on a stream; true when they were not a member;
    /// [`StoreError::Banned`] when the conversation bans them. External
    /// members are also recorded on the conversation, so sends name them as
    /// recipients.
    async fn add_member(&self, conversation_id: &str, member_id: &str, now_ms: i64) -> Result<bool, StoreError>;

    /// Removes a member as [`Membership::leave`] does, and with `ban` keeps
    /// them out: the ban is recorded before the membership goes, so no join
    /// slips between.
    async fn remove_member(&self, conversation_id: &str, member_id: &str, ban: bool) -> Result<Removal, StoreError>;

    /// Lifts a ban; true when there was one.
    async fn unban(&self, conversation_id: &str, member_id: &str) -> Result<bool, StoreError>;

    /// Sets a member's role; false when they are not a member.
    async fn set_role(&self, conversation_id: &str, member_id: &str, role: Role) -> Result<bool, StoreError>;

    /// Makes `to` (a member) the owner and `from` (the owner) an admin, at
    /// once; [`StoreError::NotMember`] when `to` is not a member or `from`
    /// no longer the owner.
    async fn transfer_ownership(&self, conversation_id: &str, from: &str, to: &str) -> Result<(), StoreError>;
}

/// Which streams are online where, leased so a crashed gateway's expire.
#[async_trait]
pub trait Presence: Send + Sync + std::fmt::Debug {
    /// Marks a stream online in a conversation, until `expires_at_ms` unless
    /// refreshed. Returns true when no other stream of the user was online
    /// there (the user came online).
    async fn presence_online(&self, key: &PresenceKey, now_ms: i64, expires_at_ms: i64) -> Result<bool, StoreError>;

    /// Removes a stream's presence. Returns true when no other stream of the
    /// user remains online there (the user went offline).
    async fn presence_offline(&self, key: &PresenceKey, now_ms: i64) -> Result<bool, StoreError>;

    /// Removes every stream's presence of `user_id` in a conversation (a
    /// removed member's, wherever their streams are); true when any was
    /// online.
    async fn presence_remove_user(&self, conversation_id: &str, user_id: &str, now_ms: i64)
    -> Result<bool, StoreError>;

    /// Extends the presence of live streams.
    async fn presence_refresh(&self, keys: &[PresenceKey], expires_at_ms: i64) -> Result<(), StoreError>;

    /// Users online in a conversation, sorted and deduplicated.
    async fn online_users(&self, conversation_id: &str, now_ms: i64) -> Result<Vec<String>, StoreError>;
}

/// What was said: stored messages and each user's conversations.
#[async_trait]
pub trait History: Send + Sync + std::fmt::Debug {
    /// A page of stored messages, in the query's direction.
    async fn history(&self, conversation_id: &str, query: HistoryQuery) -> Result<Vec<StoredMessage>, StoreError>;

    /// Settles one seq that a reader found missing: its recorded message,
    /// or, when none was recorded, a void recorded in its place (atomically,
    /// so a sender recording it at the same moment either wins before the
    /// void or loses and renumbers).
    async fn settle(&self, conversation_id: &str, seq: u64) -> Result<Settled, StoreError>;

    /// A stored message of a conversation by id.
    async fn get_message(&self, conversation_id: &str, message_id: &str) -> Result<Option<StoredMessage>, StoreError>;

    /// The user's conversations in `conversation_id` order, up to `limit`,
    /// after the conversation `after`; and whether more follow.
    async fn conversations(
        &self,
        user_id: &str,
        limit: usize,
        after: Option<&str>,
    ) -> Result<(Vec<ConversationInfo>, bool), StoreError>;
}

/// How far each message got with each member: watermarks, their steps in
/// time, and per-message failures.
#[async_trait]
pub trait Receipts: Send + Sync + std::fmt::Debug {
    /// Every member and their receipt positions, by user id.
    async fn members(&self, conversation_id: &str) -> Result<Vec<MemberState>, StoreError>;

    /// One member's receipt positions; `None` for a non-member.
    async fn member(&self, conversation_id: &str, user_id: &str) -> Result<Option<MemberState>, StoreError>;

    /// Records a receipt: DELIVERED/READ move the member's watermark forward
    /// (never back) and log the step with its time; FAILED records the first
    /// failure of one message. True when something moved; a non-member's
    /// watermark receipt, or a repeated one, moves nothing.
    async fn record_receipt(
        &self,
        conversation_id: &str,
        receipt: &ReceiptEvent,
        at_ms: i64,
    ) -> Result<bool, StoreError>;

    /// The failures recorded for message `seq`.
    async fn failures(&self, conversation_id: &str, seq: u64) -> Result<Vec<Failure>, StoreError>;

    /// When `user_id`'s `status` watermark first covered `seq`.
    async fn step_time(
        &self,
        conversation_id: &str,
        user_id: &str,
        status: ReceiptStatus,
        seq: u64,
    ) -> Result<Option<i64>, StoreError>;

    /// Moves the user's read marker forward to `seq` (never backward), as a
    /// READ receipt; returns the marker. [`StoreError::NotMember`] for
    /// non-members.
    async fn mark_read(&self, conversation_id: &str, user_id: &str, seq: u64, at_ms: i64) -> Result<u64, StoreError> {
        let receipt = ReceiptEvent {
            user_id: user_id.to_owned(),
            status: ReceiptStatus::Read,
            up_to_seq: seq,
            message_id: String::new(),
            reason: String::new(),
            via: String::new(),
            recorded: false,
        };
        // Moved: the marker is `seq`, no read needed; only a marker already
        // there or past (or a non-member) is read back.
        if self.record_receipt(conversation_id, &receipt, at_ms).await? {
            return Ok(seq);
        }
        Ok(self.member(conversation_id, user_id).await?.ok_or(StoreError::NotMember)?.read_seq)
    }

    /// Where a stored message stands with every current member but its
    /// sender.
    async fn message_status(&self, message: &StoredMessage) -> Result<Vec<RecipientStatus>, StoreError> {
        let conversation_id = message.conversation_id.as_str();
        let failures: HashMap<String, Failure> =
            self.failures(conversation_id, message.seq).await?.into_iter().map(|f| (f.user_id.clone(), f)).collect();
        let recipients: Vec<MemberState> =
            self.members(conversation_id).await?.into_iter().filter(|m| m.user_id != message.sender).collect();
        let statuses = recipients.into_iter().map(|member| {
            let failure = failures.get(&member.user_id).cloned();
            async move {
                let status = status_of(message.seq, &member, failure.as_ref());
                let read_at_ms = if status == DeliveryStatus::Read {
                    self.step_time(conversation_id, &member.user_id, ReceiptStatus::Read, message.seq).await?
                } else {
                    None
                };
                let delivered_at_ms = if matches!(status, DeliveryStatus::Delivered | DeliveryStatus::Read) {
                    // Read without a delivery ack first: delivered then.
                    match self
                        .step_time(conversation_id, &member.user_id, ReceiptStatus::Delivered, message.seq)
                        .await?
                    {
                        Some(at) => Some(read_at_ms.map_or(at, |r| r.min(at))),
                        None => read_at_ms,
                    }
                } else {
                    None
                };
                Ok::<_, StoreError>(RecipientStatus {
                    user_id: member.user_id,
                    status,
                    delivered_at_ms,
                    read_at_ms,
                    failed_at_ms: failure.as_ref().map(|f| f.at_ms),
                    reason: failure.map(|f| f.reason).unwrap_or_default(),
                })
            }
        });
        use futures::{StreamExt, TryStreamExt};
        futures::stream::iter(statuses).buffered(STATUS_QUERIES_IN_FLIGHT).try_collect().await
    }
}

/// Users' links to their external identities, for offline fallback, and
/// where an external identity's inbound messages go.
#[async_trait]
pub trait Links: Send + Sync + std::fmt::Debug {
    /// Links a user to an external identity for offline fallback (`None`
    /// removes the link).
    async fn link_channel(&self, user_id: &str, external_id: Option<&str>) -> Result<(), StoreError>;

    /// The linked external identities of those `user_ids` that have one.
    async fn linked_channels(&self, user_ids: &[String]) -> Result<HashMap<String, String>, StoreError>;

    /// The conversation an external identity's inbound messages go to: the
    /// one it was most recently added to.
    async fn bound_conversation(&self, member_id: &str) -> Result<Option<String>, StoreError>;
}

/// Every store concern in one implementation (the DynamoDB store, the
/// memory store).
pub trait Store: Sequencer + Membership + Presence + History + Receipts + Links {}

impl<T: Sequencer + Membership + Presence + History + Receipts + Links> Store for T {}

/// A store's concerns as separate handles, so a caller (or a test) can put
/// another implementation behind one concern and keep the rest.
#[derive(Debug, Clone)]
pub struct Stores {
    pub sequencer: Arc<dyn Sequencer>,
    pub membership: Arc<dyn Membership>,
    pub presence: Arc<dyn Presence>,
    pub history: Arc<dyn History>,
    pub receipts: Arc<dyn Receipts>,
    pub links: Arc<dyn Links>,
}

impl Stores {
    /// Every concern served by one store.
    pub fn of<S: Store + 'static>(store: Arc<S>) -> Self {
        Self {
            sequencer: store.clone(),
            membership: store.clone(),
            presence: store.clone(),
            history: store.clone(),
            receipts: store.clone(),
            links: store,
        }
    }
}

/// Step lookups of one `message_status` in flight at once.
const STATUS_QUERIES_IN_FLIGHT: usize = 16;

/// A member's receipt positions in a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberState {
    pub user_id: String,
    pub role: Role,
    /// Every message up to this seq reached the member (or `read_seq` does).
    pub delivered_seq: u64,
    /// The member's read marker.
    pub read_seq: u64,
}

impl MemberState {
    /// Read implies delivered.
    pub fn delivered_up_to(&self) -> u64 {
        self.delivered_seq.max(self.read_seq)
    }
}

/// A message that could not be delivered to one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub user_id: String,
    pub at_ms: i64,
    pub reason: String,
}

/// Where a message stands with one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeliveryStatus {
    Sent,
    Delivered,
    Read,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientStatus {
    pub user_id: String,
    pub status: DeliveryStatus,
    pub delivered_at_ms: Option<i64>,
    pub read_at_ms: Option<i64>,
    pub failed_at_ms: Option<i64>,
    pub reason: String,
}

/// A recipient's status for message `seq`: FAILED is terminal (the message
/// never reached them, whatever later messages did); otherwise the furthest
/// watermark covering it.
pub fn status_of(seq: u64, member: &MemberState, failure: Option<&Failure>) -> DeliveryStatus {
    if failure.is_some() {
        DeliveryStatus::Failed
    } else if member.read_seq >= seq {
        DeliveryStatus::Read
    } else if member.delivered_up_to() >= seq {
        DeliveryStatus::Delivered
    } else {
        DeliveryStatus::Sent
    }
}

/// A digest of a message body, stored with idempotency records to detect a
/// `client_message_id` reused for different content.
pub fn body_digest(body: &str) -> String {
    use sha2::{Digest, Sha256};
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(body.as_bytes());
    let mut hex = String::with_capacity(digest.len() * 2);
    for b in digest {
        hex.push(char::from(HEX[usize::from(b >> 4)]));
        hex.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    hex
}

/// A message's id: unique, and naming the seq it was first given, so a
/// store finds the message from its id alone (no index from ids to seqs,
/// whose entry would cost a write per message): `<unique>.<seq>`.
pub fn message_id(unique: &str, first_seq: u64) -> String {
    format!("{unique}.{first_seq}")
}

/// The seq a message id names ([`message_id`]); `None` for an id that
/// names none (malformed, or from before ids named their seq).
pub fn first_seq(message_id: &str) -> Option<u64> {
    let (unique, seq) = message_id.rsplit_once('.')?;
    if unique.is_empty() || seq.starts_with('+') {
        return None;
    }
    seq.parse().ok().filter(|seq| *seq > 0)
}

/// The idempotency key of a send: scoped to conversation and sender so two
/// users (or one user in two conversations) cannot collide.
pub fn idempotency_key(conversation_id: &str, sender: &str, client_message_id: &str) -> String {
    // Ids cannot contain '/', so the join is unambiguous.
    format!("{conversation_id}/{sender}/{client_message_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_stable_hex() {
        assert_eq!(body_digest("abc").len(), 64);
        assert_eq!(body_digest("abc"), body_digest("abc"));
        assert_ne!(body_digest("abc"), body_digest("abd"));
    }

    #[test]
    fn a_message_id_names_its_first_seq() {
        let id = message_id("01JH2Z8W3V6Q9X1K4M7N0P5R2T", 42);
        assert_eq!(id, "01JH2Z8W3V6Q9X1K4M7N0P5R2T.42");
        assert_eq!(first_seq(&id), Some(42));
        assert!(crate::limits::message_id(&id).is_ok(), "a valid id by the API's rule");
        assert_eq!(first_seq(&message_id("a.b", 7)), Some(7), "the last dot counts");
        for none in ["01JH2Z8W3V6Q9X1K4M7N0P5R2T", ".42", "x.", "x.0", "x.+4", "x.-4", "x.4a", "x.99999999999999999999"]
        {
            assert_eq!(first_seq(none), None, "{none:?}");
        }
    }

    #[test]
    fn idempotency_keys_are_scoped() {
        assert_ne!(idempotency_key("r1", "alice", "c1"), idempotency_key("r1", "bob", "c1"));
        assert_ne!(idempotency_key("r1", "alice", "c1"), idempotency_key("r2", "alice", "c1"));
    }
}
