//! The messages table, one item per seq (`conversation_id`, `seq`).
//!
//! A message: `message_id`, `sender`, `body`, `sent_at_ms`, `origin`,
//! `members_version` (when not 0), and `client_message_id` when the send
//! had one. No index: a message id names the seq the message was first
//! given (`chat_core::store::message_id`), so `GetMessage` reads that seq.
//! A void: `void` (true) and `voided_at_ms`, which history filters out, and
//! `moved_to` when the message first numbered there was recorded under
//! another seq (its sender stalled past the readers' settle delay).
//!
//! **Written before it is published.** A send's message is recorded here
//! (`Sequencer::record_send` → [`DynamoStore::record_message`], conditional
//! on the seq being empty or holding this message) before it is published,
//! by whoever publishes it (a gateway, the webhook), and is written nowhere
//! else. So a reader that finds a seq missing can settle it ([`History::settle`]): the
//! message is there (the bus is only slow), or nobody recorded it and a void
//! goes in its place, atomically, so a sender that was merely slow finds the
//! void and takes a new seq instead of publishing a message some receivers
//! have already passed over.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use chat_core::envelope::preview;
use chat_core::store::{ConversationInfo, Direction, History, HistoryQuery, Settled, StoreError, StoredMessage};
use futures::{StreamExt, TryStreamExt};

use super::{DynamoStore, Item, conditional, get_n, get_s, n, number_or_zero, query_items, s, seq_value, unavailable};

/// Marks a seq settled without a message.
const VOID: &str = "void";
/// On a void: the seq its message was recorded under instead.
const MOVED_TO: &str = "moved_to";
/// Voids a message id's lookup follows at most (one per renumbering).
const MOVES_FOLLOWED: usize = 4;
/// Conversations whose latest message a listing reads at once.
const LATEST_READS_IN_FLIGHT: usize = 16;

/// A message's fields, as its item stores them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MessageFields<'a> {
    pub conversation_id: &'a str,
    pub seq: u64,
    pub message_id: &'a str,
    pub sender: &'a str,
    pub body: &'a str,
    pub sent_at_ms: i64,
    pub origin: &'a str,
    pub client_message_id: &'a str,
    pub members_version: u64,
}

impl MessageFields<'_> {
    pub(crate) fn item(&self) -> Item {
        let mut item = HashMap::from([
            ("conversation_id".to_owned(), s(self.conversation_id)),
            ("seq".to_owned(), seq_value(self.seq)),
            ("message_id".to_owned(), s(self.message_id)),
            ("sender".to_owned(), s(self.sender)),
            ("body".to_owned(), s(self.body)),
            ("sent_at_ms".to_owned(), n(self.sent_at_ms)),
            ("origin".to_owned(), s(self.origin)),
        ]);
        if !self.client_message_id.is_empty() {
            item.insert("client_message_id".to_owned(), s(self.client_message_id));
        }
        if self.members_version > 0 {
            item.insert("members_version".to_owned(), n(self.members_version));
        }
        item
    }
}

impl DynamoStore {
    /// Records an accepted message under its seq; false when the seq was
    /// settled as void first (the send must take another). Recording the
    /// same message again (a retried send) rewrites it.
    pub(crate) async fn record_message(&self, message: &MessageFields<'_>) -> Result<bool, StoreError> {
        let put = self
            .client
            .put_item()
            .table_name(&self.tables.messages)
            .set_item(Some(message.item()))
            .condition_expression("attribute_not_exists(seq) OR message_id = :id")
            .expression_attribute_values(":id", s(message.message_id))
            .send()
            .await;
        conditional(put, "recording a message")
    }

    async fn read_seq(&self, conversation_id: &str, seq: u64) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.tables.messages)
            .key("conversation_id", s(conversation_id))
            .key("seq", seq_value(seq))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("reading a seq", e))?;
        Ok(out.item)
    }

    /// A conversation's latest message (voids passed over), its body cut to
    /// a preview.
    async fn latest_message(&self, conversation_id: &str) -> Result<Option<StoredMessage>, StoreError> {
        let query = HistoryQuery { direction: Direction::Backward, from_seq: None, limit: 1 };
        let mut latest = self.history(conversation_id, query).await?.into_iter().next();
        if let Some(message) = &mut latest {
            message.body = preview(&message.body);
        }
        Ok(latest)
    }

    /// Marks the void at `seq` with the seq its message was given instead,
    /// so the message's id (which names its first seq) finds it.
    pub(crate) async fn mark_moved(&self, conversation_id: &str, seq: u64, to: u64) -> Result<(), StoreError> {
        let update = self
            .client
            .update_item()
            .table_name(&self.tables.messages)
            .key("conversation_id", s(conversation_id))
            .key("seq", seq_value(seq))
            .update_expression("SET #moved = :to")
            .condition_expression("attribute_exists(#void)")
            .expression_attribute_names("#moved", MOVED_TO)
            .expression_attribute_names("#void", VOID)
            .expression_attribute_values(":to", seq_value(to))
            .send()
            .await;
        match conditional(update, "marking where a voided seq's message went")? {
            true => Ok(()),
            false => Err(StoreError::Unavailable(format!("seq {seq} of {conversation_id} is not a void to mark"))),
        }
    }

    /// Puts a void where nothing is recorded; false when something is.
    pub(crate) async fn void_seq(&self, conversation_id: &str, seq: u64) -> Result<bool, StoreError> {
        let put = self
            .client
            .put_item()
            .table_name(&self.tables.messages)
            .item("conversation_id", s(conversation_id))
            .item("seq", seq_value(seq))
            .item(VOID, AttributeValue::Bool(true))
            .item("voided_at_ms", n(chat_core::clock::now_ms()))
            .condition_expression("attribute_not_exists(seq)")
            .send()
            .await;
        conditional(put, "voiding a seq")
    }
}

fn settled(item: &Item) -> Result<Settled, StoreError> {
    if item.contains_key(VOID) {
        return Ok(Settled::Void);
    }
    stored_message(item).map(Settled::Message)
}

fn stored_message(item: &Item) -> Result<StoredMessage, StoreError> {
    Ok(StoredMessage {
        conversation_id: get_s(item, "conversation_id")?,
        seq: get_n(item, "seq")?,
        message_id: get_s(item, "message_id")?,
        sender: get_s(item, "sender")?,
        body: get_s(item, "body")?,
        sent_at_ms: get_n(item, "sent_at_ms")?,
        client_message_id: item.get("client_message_id").and_then(|v| v.as_s().ok()).cloned().unwrap_or_default(),
        members_version: number_or_zero(item, "members_version"),
    })
}

#[async_trait]
impl History for DynamoStore {
    async fn history(&self, conversation_id: &str, query: HistoryQuery) -> Result<Vec<StoredMessage>, StoreError> {
        let mut request = self
            .client
            .query()
            .table_name(&self.tables.messages)
            .consistent_read(true)
            .scan_index_forward(query.direction == Direction::Forward)
            // Voids are not messages; `query_items` reads on until the page
            // is full of real ones.
            .filter_expression("attribute_not_exists(#void)")
            .expression_attribute_names("#void", VOID)
            .expression_attribute_values(":c", s(conversation_id));
        request = match (query.direction, query.from_seq) {
            (_, None) => request.key_condition_expression("conversation_id = :c"),
            (Direction::Forward, Some(from)) => request
                .key_condition_expression("conversation_id = :c AND seq > :s")
                .expression_attribute_values(":s", AttributeValue::N(from.to_string())),
            (Direction::Backward, Some(from)) => request
                .key_condition_expression("conversation_id = :c AND seq < :s")
                .expression_attribute_values(":s", AttributeValue::N(from.to_string())),
        };
        query_items(request, Some(query.limit), "reading history").await?.iter().map(stored_message).collect()
    }

    async fn settle(&self, conversation_id: &str, seq: u64) -> Result<Settled, StoreError> {
        // Read first: a missing seq is usually a message the bus is slow with.
        if let Some(item) = self.read_seq(conversation_id, seq).await? {
            return settled(&item);
        }
        if self.void_seq(conversation_id, seq).await? {
            return Ok(Settled::Void);
        }
        // Recorded between the read and the void.
        match self.read_seq(conversation_id, seq).await? {
            Some(item) => settled(&item),
            None => Err(StoreError::Unavailable(format!("seq {seq} of {conversation_id} neither recorded nor voided"))),
        }
    }

    async fn get_message(&self, conversation_id: &str, message_id: &str) -> Result<Option<StoredMessage>, StoreError> {
        // The id names the seq the message was first given; a message
        // renumbered since left a void there saying where it went.
        let Some(mut seq) = chat_core::store::first_seq(message_id) else { return Ok(None) };
        for _ in 0..MOVES_FOLLOWED {
            let Some(item) = self.read_seq(conversation_id, seq).await? else { return Ok(None) };
            if item.contains_key(VOID) {
                if !item.contains_key(MOVED_TO) {
                    return Ok(None);
                }
                seq = get_n(&item, MOVED_TO)?;
                continue;
            }
            let found = stored_message(&item)?;
            return Ok((found.message_id == message_id).then_some(found));
        }
        Ok(None)
    }

    async fn conversations(
        &self,
        user_id: &str,
        limit: usize,
        after: Option<&str>,
    ) -> Result<(Vec<ConversationInfo>, bool), StoreError> {
        // One more than asked tells whether another page follows.
        let mut members = self
            .memberships(user_id, after, Some(limit + 1), "listing conversations")
            .await?
            .iter()
            .map(|item| Ok((get_s(item, "conversation_id")?, number_or_zero(item, "last_read_seq"))))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let more = members.len() > limit;
        members.truncate(limit);
        // Each conversation's latest message, read from the messages
        // themselves: listing pays a read per conversation, where keeping a
        // summary would pay a write per message.
        let page = futures::stream::iter(members)
            .map(|(conversation_id, last_read_seq)| async move {
                let last_message = self.latest_message(&conversation_id).await?;
                Ok::<_, StoreError>(ConversationInfo { last_message, conversation_id, last_read_seq })
            })
            .buffered(LATEST_READS_IN_FLIGHT)
            .try_collect::<Vec<ConversationInfo>>()
            .await?;
        Ok((page, more))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_is_keyed_by_conversation_and_seq() {
        let item = MessageFields {
            conversation_id: "r",
            seq: 42,
            message_id: "m42",
            sender: "alice",
            body: "hello",
            sent_at_ms: 1_700_000_000_042,
            origin: "gw",
            client_message_id: "",
            members_version: 0,
        }
        .item();
        assert_eq!(item["conversation_id"], s("r"));
        assert_eq!(item["seq"], n(42));
        assert_eq!(item["body"], s("hello"));
        assert!(!item.contains_key("client_message_id"));
        let stored = stored_message(&item).expect("reads back");
        assert_eq!(settled(&item), Ok(Settled::Message(stored.clone())));
        let void = HashMap::from([("seq".to_owned(), n(43)), (VOID.to_owned(), AttributeValue::Bool(true))]);
        assert_eq!(settled(&void), Ok(Settled::Void), "a void is not a message");
        assert_eq!((stored.seq, stored.sent_at_ms, stored.body.as_str()), (42, 1_700_000_000_042, "hello"));
    }
}
