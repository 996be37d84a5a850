//! The messages table, one item per message (`conversation_id`, `seq`):
//! `message_id`, `sender`, `body`, `sent_at_ms`, `origin`, and
//! `client_message_id` when the send had one. Index `by_message_id`.
//! `persist` is its only writer ([`DynamoStore::write_messages`]); the seq
//! the gateway made unique is the key, so a redelivered event rewrites the
//! identical item and never makes a second message.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use chat_core::envelope::{Envelope, Event};
use chat_core::store::{ConversationInfo, Direction, History, HistoryQuery, StoreError, StoredMessage};

use super::conversations::last_message;
use super::{DynamoStore, Item, get_n, get_s, n, number_or_zero, query_items, s, unavailable};

/// `BatchWriteItem` takes at most 25 requests.
pub const WRITE_BATCH_MAX: usize = 25;
/// Attempts at writing items DynamoDB returned as unprocessed.
const UNPROCESSED_ATTEMPTS: u32 = 5;

/// The item of a message event; `None` for other events.
pub fn message_item(envelope: &Envelope) -> Option<Item> {
    let Event::Message(m) = &envelope.event else { return None };
    let mut item = HashMap::from([
        ("conversation_id".to_owned(), s(&envelope.conversation_id)),
        ("seq".to_owned(), n(m.seq)),
        ("message_id".to_owned(), s(&m.message_id)),
        ("sender".to_owned(), s(&m.sender)),
        ("body".to_owned(), s(&m.body)),
        ("sent_at_ms".to_owned(), n(envelope.at_ms)),
        ("origin".to_owned(), s(&envelope.origin)),
    ]);
    if !m.client_message_id.is_empty() {
        item.insert("client_message_id".to_owned(), s(&m.client_message_id));
    }
    Some(item)
}

/// How a [`DynamoStore::write_messages`] call went.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MessageWrites {
    /// The keys (as given) of messages that could not be written.
    pub unwritten: Vec<String>,
    /// `BatchWriteItem` calls made.
    pub calls: usize,
}

/// Key of an item, to match unprocessed writes back to their messages.
fn item_key(item: &Item) -> Option<(String, String)> {
    Some((item.get("conversation_id")?.as_s().ok()?.clone(), item.get("seq")?.as_n().ok()?.clone()))
}

impl DynamoStore {
    /// Writes message items (at most [`WRITE_BATCH_MAX`], each named by the
    /// caller's key) in one `BatchWriteItem`, retrying what DynamoDB leaves
    /// unprocessed with backoff.
    pub async fn write_messages(&self, chunk: &[(String, Item)]) -> MessageWrites {
        let by_key: HashMap<(String, String), &String> =
            chunk.iter().filter_map(|(id, item)| item_key(item).map(|k| (k, id))).collect();
        let mut requests: Vec<WriteRequest> = Vec::with_capacity(chunk.len());
        for (_, item) in chunk {
            match PutRequest::builder().set_item(Some(item.clone())).build() {
                Ok(put) => requests.push(WriteRequest::builder().put_request(put).build()),
                Err(e) => tracing::error!(error = %e, "unbuildable put request"),
            }
        }
        let mut backoff = Duration::from_millis(50);
        let mut calls = 0;
        for attempt in 1..=UNPROCESSED_ATTEMPTS {
            calls += 1;
            let out =
                self.client.batch_write_item().request_items(&self.tables.messages, requests.clone()).send().await;
            match out {
                Ok(out) => {
                    requests =
                        out.unprocessed_items().and_then(|u| u.get(&self.tables.messages)).cloned().unwrap_or_default();
                    if requests.is_empty() {
                        return MessageWrites { unwritten: Vec::new(), calls };
                    }
                    tracing::warn!(attempt, unprocessed = requests.len(), "DynamoDB returned unprocessed items");
                }
                Err(e) => tracing::warn!(attempt, error = %crate::error::describe(&e), "BatchWriteItem failed"),
            }
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
        let unwritten = requests
            .iter()
            .filter_map(|r| r.put_request().and_then(|p| item_key(p.item())))
            .filter_map(|k| by_key.get(&k).map(|id| (*id).clone()))
            .collect();
        MessageWrites { unwritten, calls }
    }
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

    async fn get_message(&self, conversation_id: &str, message_id: &str) -> Result<Option<StoredMessage>, StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.tables.messages)
            .index_name("by_message_id")
            .key_condition_expression("message_id = :m")
            .expression_attribute_values(":m", s(message_id))
            .send()
            .await
            .map_err(|e| unavailable("reading a message", e))?;
        for item in out.items() {
            let message = stored_message(item)?;
            if message.conversation_id == conversation_id {
                return Ok(Some(message));
            }
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
        let ids: Vec<String> = members.iter().map(|(c, _)| c.clone()).collect();
        let items = self.batch_get(&self.tables.conversations, "conversation_id", &ids).await?;
        let page = members
            .into_iter()
            .map(|(conversation_id, last_read_seq)| ConversationInfo {
                last_message: items.get(&conversation_id).and_then(|item| last_message(&conversation_id, item)),
                conversation_id,
                last_read_seq,
            })
            .collect();
        Ok((page, more))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_core::envelope::MessageEvent;

    #[test]
    fn item_is_keyed_by_conversation_and_seq() {
        let env = Envelope::new(
            "m42".into(),
            "r".into(),
            "gw".into(),
            1_700_000_000_042,
            Event::Message(MessageEvent {
                message_id: "m42".into(),
                seq: 42,
                sender: "alice".into(),
                body: "hello".into(),
                client_message_id: String::new(),
                external_recipients: Vec::new(),
            }),
        );
        let item = message_item(&env).expect("item");
        assert_eq!(item["conversation_id"], s("r"));
        assert_eq!(item["seq"], n(42));
        assert_eq!(item["body"], s("hello"));
        assert!(!item.contains_key("client_message_id"));
        let stored = stored_message(&item).expect("reads back");
        assert_eq!((stored.seq, stored.sent_at_ms, stored.body.as_str()), (42, 1_700_000_000_042, "hello"));
    }
}
