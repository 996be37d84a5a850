//! The conversations table, one item per conversation (`conversation_id`):
//! - `last_seq` (N): the seq counter, `ADD 1` per send (`updated_at_ms`);
//! - `externals` (SS): the external members, read back by the counter
//!   update so a send names its external recipients in the same call;
//! - the summary `persist` moves forward (never back): `last_persisted_seq`,
//!   `last_message_id`, `last_sender`, `last_preview`, `last_sent_at_ms`.

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use chat_core::store::{StoreError, StoredMessage};

use super::{DynamoStore, Item, conditional, get_n, get_s, n, s, string_set, unavailable};

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
    /// Allocates the conversation's next seq (one `UpdateItem`); returns it
    /// with the conversation's external members.
    pub async fn next_seq(&self, conversation_id: &str, now_ms: i64) -> Result<(u64, Vec<String>), StoreError> {
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
        Ok((get_n(item, "last_seq")?, string_set(item, "externals")))
    }

    pub(super) async fn last_seq(&self, conversation_id: &str) -> Result<u64, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.tables.conversations)
            .key("conversation_id", s(conversation_id))
            .consistent_read(true)
            .projection_expression("last_seq")
            .send()
            .await
            .map_err(|e| unavailable("reading last_seq", e))?;
        match out.item() {
            Some(item) if item.contains_key("last_seq") => get_n(item, "last_seq"),
            _ => Ok(0),
        }
    }

    /// Adds (`ADD`) or removes (`DELETE`) an external member of the
    /// conversation, so later sends name them as recipients (or stop to).
    pub(super) async fn set_external(
        &self,
        conversation_id: &str,
        member_id: &str,
        add: bool,
    ) -> Result<(), StoreError> {
        let (action, what) =
            if add { ("ADD", "recording an external member") } else { ("DELETE", "removing an external member") };
        self.client
            .update_item()
            .table_name(&self.tables.conversations)
            .key("conversation_id", s(conversation_id))
            .update_expression(format!("{action} externals :m"))
            .expression_attribute_values(":m", AttributeValue::Ss(vec![member_id.to_owned()]))
            .send()
            .await
            .map_err(|e| unavailable(what, e))?;
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
    })
}
