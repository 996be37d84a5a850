//! The conversations table, one item per conversation (`conversation_id`):
//! - `last_seq` (N): the seq counter, `ADD 1` per send (`updated_at_ms`);
//! - `externals` (SS): the external members, read back by the counter
//!   update so a send names its external recipients in the same call;
//! - the summary `persist` moves forward (never back): `last_persisted_seq`,
//!   `last_message_id`, `last_sender`, `last_preview`, `last_sent_at_ms`;
//! - the settings `CreateConversation` writes once: `kind` (`public`,
//!   `private`, `direct`; absent on conversations created before roles,
//!   which read as public), `title`, `created_by`, `created_at_ms`;
//! - `banned` (SS): users kept out, checked atomically by a join;
//! - `members_version` (N): removals so far, read back by the counter update
//!   so each message carries the version it was numbered under.

use aws_sdk_dynamodb::types::{AttributeValue, Put, ReturnValue};
use chat_core::conversation::{Conversation, Kind, NewConversation};
use chat_core::store::{StoreError, StoredMessage};

use super::{DynamoStore, Item, conditional, get_n, get_s, n, number_or_zero, s, string_set, text, unavailable};

/// The condition under which `:u` may be added: the conversation does not
/// ban them.
pub(super) const NOT_BANNED: &str = "NOT contains(banned, :u)";

/// The condition under which a non-member may join: the conversation exists,
/// is public (or predates kinds) and does not ban them (`:u`).
pub(super) const ADMITS_JOIN: &str = "attribute_exists(conversation_id) AND (attribute_not_exists(#kind) OR #kind = :public) AND NOT contains(banned, :u)";

/// A seq just taken, with what a send needs to know at that moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Numbered {
    pub seq: u64,
    /// The external members, the sender included.
    pub externals: Vec<String>,
    pub members_version: u64,
}

/// A conversation's latest stored message, as its summary keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub seq: u64,
    pub message_id: String,
    pub sender: String,
    /// The body's first [`chat_core::envelope::PREVIEW_CHARS`] characters.
    pub preview: String,
    pub sent_at_ms: i64,
}

impl DynamoStore {
    /// The conversation item written by a creation, conditional on the id
    /// being new.
    pub(super) fn new_conversation_put(&self, new: &NewConversation) -> Result<Put, StoreError> {
        let c = &new.conversation;
        let externals: Vec<String> = new
            .members
            .iter()
            .filter(|(m, _)| chat_core::external::ExternalId::has_channel_prefix(m))
            .map(|(m, _)| m.clone())
            .collect();
        let mut put = Put::builder()
            .table_name(&self.tables.conversations)
            .item("conversation_id", s(&c.conversation_id))
            .item("kind", s(c.kind.as_str()))
            .item("created_by", s(&c.created_by))
            .item("created_at_ms", n(c.created_at_ms))
            .condition_expression("attribute_not_exists(conversation_id)");
        if !c.title.is_empty() {
            put = put.item("title", s(&c.title));
        }
        if !externals.is_empty() {
            put = put.item("externals", AttributeValue::Ss(externals));
        }
        put.build().map_err(|e| StoreError::Corrupt(format!("building a conversation item: {e}")))
    }

    /// A conversation's settings; `None` when it does not exist.
    pub(super) async fn read_conversation(&self, conversation_id: &str) -> Result<Option<Conversation>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.tables.conversations)
            .key("conversation_id", s(conversation_id))
            .consistent_read(true)
            .projection_expression("conversation_id, #kind, title, created_by, created_at_ms")
            .expression_attribute_names("#kind", "kind")
            .send()
            .await
            .map_err(|e| unavailable("reading a conversation", e))?;
        Ok(out.item().map(|item| conversation(conversation_id, item)))
    }

    /// Adds (`ban`) or lifts a ban; true when the set changed.
    pub(super) async fn set_ban(&self, conversation_id: &str, user_id: &str, ban: bool) -> Result<bool, StoreError> {
        let action = if ban { "ADD" } else { "DELETE" };
        let out = self
            .client
            .update_item()
            .table_name(&self.tables.conversations)
            .key("conversation_id", s(conversation_id))
            .update_expression(format!("{action} banned :u"))
            .expression_attribute_values(":u", AttributeValue::Ss(vec![user_id.to_owned()]))
            .return_values(ReturnValue::UpdatedOld)
            .send()
            .await
            .map_err(|e| unavailable(if ban { "recording a ban" } else { "lifting a ban" }, e))?;
        let was_banned = out.attributes().is_some_and(|old| string_set(old, "banned").iter().any(|u| u == user_id));
        Ok(was_banned != ban)
    }

    /// Allocates the conversation's next seq (one `UpdateItem`); returns it
    /// with the conversation's external members and membership version.
    pub async fn next_seq(&self, conversation_id: &str, now_ms: i64) -> Result<Numbered, StoreError> {
        let out = self
            .client
            .update_item()
            .table_name(&self.tables.conversations)
            .key("conversation_id", s(conversation_id))
            .update_expression("ADD last_seq :one SET updated_at_ms = :now")
            .expression_attribute_values(":one", AttributeValue::N("1".into()))
            .expression_attribute_values(":now", n(now_ms))
            .return_values(ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| unavailable("allocating seq", e))?;
        let item = out.attributes().ok_or_else(|| StoreError::Corrupt("counter update returned nothing".into()))?;
        Ok(Numbered {
            seq: get_n(item, "last_seq")?,
            externals: string_set(item, "externals"),
            members_version: number_or_zero(item, "members_version"),
        })
    }

    /// Moves the membership version on (a removal); returns the new one.
    pub(super) async fn next_members_version(&self, conversation_id: &str) -> Result<u64, StoreError> {
        let out = self
            .client
            .update_item()
            .table_name(&self.tables.conversations)
            .key("conversation_id", s(conversation_id))
            .update_expression("ADD members_version :one")
            .expression_attribute_values(":one", AttributeValue::N("1".into()))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(|e| unavailable("moving the membership version", e))?;
        let item = out.attributes().ok_or_else(|| StoreError::Corrupt("version update returned nothing".into()))?;
        get_n(item, "members_version")
    }

    pub(super) async fn last_seq(&self, conversation_id: &str) -> Result<u64, StoreError> {
        Ok(self.position(conversation_id).await?.0)
    }

    /// The conversation's latest seq and membership version (0 before any).
    pub(super) async fn position(&self, conversation_id: &str) -> Result<(u64, u64), StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.tables.conversations)
            .key("conversation_id", s(conversation_id))
            .consistent_read(true)
            .projection_expression("last_seq, members_version")
            .send()
            .await
            .map_err(|e| unavailable("reading last_seq", e))?;
        Ok(out
            .item()
            .map_or((0, 0), |item| (number_or_zero(item, "last_seq"), number_or_zero(item, "members_version"))))
    }

    /// Removes an external member from the conversation, so later sends
    /// stop naming them as recipients (adding one is part of
    /// `Membership::add_member`'s transaction).
    pub(super) async fn remove_external(&self, conversation_id: &str, member_id: &str) -> Result<(), StoreError> {
        self.client
            .update_item()
            .table_name(&self.tables.conversations)
            .key("conversation_id", s(conversation_id))
            .update_expression("DELETE externals :m")
            .expression_attribute_values(":m", AttributeValue::Ss(vec![member_id.to_owned()]))
            .send()
            .await
            .map_err(|e| unavailable("removing an external member", e))?;
        Ok(())
    }

    /// Moves a conversation's summary forward to `summary`; one conditional
    /// update, which a redelivered or older summary leaves as it is.
    pub async fn advance_summary(&self, conversation_id: &str, summary: &Summary) -> Result<(), StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.tables.conversations)
            .key("conversation_id", s(conversation_id))
            .update_expression(
                "SET last_persisted_seq = :seq, last_message_id = :id, last_sender = :sender, last_preview = :preview, last_sent_at_ms = :at",
            )
            .condition_expression("attribute_not_exists(last_persisted_seq) OR last_persisted_seq < :seq")
            .expression_attribute_values(":seq", n(summary.seq))
            .expression_attribute_values(":id", s(&summary.message_id))
            .expression_attribute_values(":sender", s(&summary.sender))
            .expression_attribute_values(":preview", s(&summary.preview))
            .expression_attribute_values(":at", n(summary.sent_at_ms))
            .send()
            .await;
        // Refused: a newer summary is there already.
        conditional(result, "updating a conversation summary").map(|_| ())
    }
}

/// A conversation item's settings; one without a kind predates kinds and
/// reads as public, one with a kind this build does not know as private
/// (failing closed).
fn conversation(conversation_id: &str, item: &Item) -> Conversation {
    let kind = match text(item, "kind") {
        None => Kind::Public,
        Some(kind) => Kind::parse(&kind).unwrap_or(Kind::Private),
    };
    Conversation {
        conversation_id: conversation_id.to_owned(),
        kind,
        title: text(item, "title").unwrap_or_default(),
        created_by: text(item, "created_by").unwrap_or_default(),
        created_at_ms: get_n(item, "created_at_ms").unwrap_or(0),
    }
}

/// The summary `persist` keeps on the conversation item, as a message.
pub(super) fn last_message(conversation_id: &str, item: &Item) -> Option<StoredMessage> {
    Some(StoredMessage {
        conversation_id: conversation_id.to_owned(),
        seq: get_n(item, "last_persisted_seq").ok()?,
        message_id: get_s(item, "last_message_id").ok()?,
        sender: get_s(item, "last_sender").ok()?,
        body: get_s(item, "last_preview").ok()?,
        sent_at_ms: get_n(item, "last_sent_at_ms").ok()?,
        client_message_id: String::new(),
        members_version: 0,
    })
}
