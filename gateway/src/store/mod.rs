//! The gateway's synchronous state outside itself: per-conversation sequence
//! numbers, membership, presence and send idempotency.
//!
//! [`Store`] has two implementations: [`dynamo::DynamoStore`] (the AWS path;
//! the only place the gateway talks to DynamoDB) and [`memory::MemoryStore`]
//! (embedded mode). The rules both follow, such as what a retried
//! `client_message_id` returns, are stated on the trait.

use async_trait::async_trait;

pub mod conformance;
pub mod dynamo;
pub mod memory;

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
}

/// A message as stored (by `persist` on AWS, by the memory store itself in
/// embedded mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub conversation_id: String,
    pub seq: u64,
    pub message_id: String,
    pub sender: String,
    pub body: String,
    pub sent_at_ms: i64,
    pub client_message_id: String,
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
}

/// A send waiting for its identity.
#[derive(Debug, Clone)]
pub struct SendRequest<'a> {
    pub conversation_id: &'a str,
    pub sender: &'a str,
    /// Empty: not idempotent.
    pub client_message_id: &'a str,
    pub body: &'a str,
    /// Used when the message is new.
    pub new_message_id: String,
    pub now_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined {
    /// The user was not a member before.
    pub newly_member: bool,
    /// The conversation's latest `seq` when the join was recorded.
    pub last_seq: u64,
}

/// One stream's presence in one conversation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PresenceKey {
    pub conversation_id: String,
    pub user_id: String,
    pub session_id: String,
}

#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Gives a send its `message_id` and `seq`. A send whose
    /// (conversation, sender, client_message_id) was accepted before returns
    /// that first identity with `duplicate = true` and allocates nothing; the
    /// same key with another body is [`StoreError::ClientMessageIdReused`].
    async fn accept_send(&self, req: SendRequest<'_>) -> Result<Accepted, StoreError>;

    /// Records membership (idempotent) and reads the latest `seq`.
    async fn join(&self, conversation_id: &str, user_id: &str) -> Result<Joined, StoreError>;

    /// Removes membership; true when the user was a member.
    async fn leave(&self, conversation_id: &str, user_id: &str) -> Result<bool, StoreError>;

    async fn is_member(&self, conversation_id: &str, user_id: &str) -> Result<bool, StoreError>;

    /// Marks a stream online in a conversation, until `expires_at_ms` unless
    /// refreshed. Returns true when no other stream of the user was online
    /// there (the user came online).
    async fn presence_online(&self, key: &PresenceKey, now_ms: i64, expires_at_ms: i64) -> Result<bool, StoreError>;

    /// Removes a stream's presence. Returns true when no other stream of the
    /// user remains online there (the user went offline).
    async fn presence_offline(&self, key: &PresenceKey, now_ms: i64) -> Result<bool, StoreError>;

    /// Extends the presence of live streams.
    async fn presence_refresh(&self, keys: &[PresenceKey], expires_at_ms: i64) -> Result<(), StoreError>;

    /// Users online in a conversation, sorted and deduplicated.
    async fn online_users(&self, conversation_id: &str, now_ms: i64) -> Result<Vec<String>, StoreError>;

    /// A page of stored messages, in the query's direction.
    async fn history(&self, conversation_id: &str, query: HistoryQuery) -> Result<Vec<StoredMessage>, StoreError>;

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

    /// Moves the user's read marker forward to `seq` (never backward);
    /// returns the marker. [`StoreError::NotMember`] for non-members.
    async fn mark_read(&self, conversation_id: &str, user_id: &str, seq: u64) -> Result<u64, StoreError>;
}

/// A digest of a message body, stored with idempotency records to detect a
/// `client_message_id` reused for different content.
pub fn body_digest(body: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(body.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
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
    fn idempotency_keys_are_scoped() {
        assert_ne!(idempotency_key("r1", "alice", "c1"), idempotency_key("r1", "bob", "c1"));
        assert_ne!(idempotency_key("r1", "alice", "c1"), idempotency_key("r2", "alice", "c1"));
    }
}
