//! The connector's table: idempotency records (one per message and external
//! recipient, Powertools-style: IN_PROGRESS with an expiry while a send is
//! under way, COMPLETED with the outcome after) and references from a
//! channel's message id back to our message, which the webhook uses to turn
//! channel receipts into ours.

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;

/// How long a completed send is remembered (redeliveries come within the
/// queue's retention, at most 14 days).
const COMPLETED_TTL_SECS: i64 = 15 * 24 * 3600;
/// How long a channel message id maps back to our message.
const REFERENCE_TTL_SECS: i64 = 30 * 24 * 3600;

#[derive(Debug, Clone)]
pub struct Records {
    dynamo: Client,
    table: String,
}

/// What an attempt to start a send found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// This invocation owns the send now.
    Acquired,
    /// The send already happened (or failed for good): do nothing.
    Completed { outcome: String },
    /// Another invocation is sending it right now.
    InProgress,
}

/// Our message behind a channel message id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub conversation_id: String,
    pub seq: u64,
    pub message_id: String,
    /// Whose receipt a channel status is (the external member, or the
    /// internal user a fallback was for).
    pub user_id: String,
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn text(item: &HashMap<String, AttributeValue>, name: &str) -> Option<String> {
    item.get(name).and_then(|v| v.as_s().ok()).cloned()
}

/// One send: a message to an identity on behalf of a receipt user (the
/// identity itself, or the internal member a fallback is for).
pub fn idempotency_key(channel: &str, message_id: &str, recipient: &str, receipt_user: &str) -> String {
    format!("idem#{channel}#{message_id}#{recipient}#{receipt_user}")
}

/// Where an identity's replies go: the conversation we last delivered to it.
pub fn binding_key(recipient: &str) -> String {
    format!("bind#{recipient}")
}

pub fn reference_key(channel: &str, channel_message_id: &str) -> String {
    format!("ref#{channel}#{channel_message_id}")
}

fn is_condition_failure<E: aws_sdk_dynamodb::error::ProvideErrorMetadata, R>(
    err: &aws_sdk_dynamodb::error::SdkError<E, R>,
) -> bool {
    err.as_service_error().and_then(|e| e.code()).is_some_and(|c| c == "ConditionalCheckFailedException")
}

fn failure<E: std::fmt::Debug>(what: &str, err: E) -> String {
    format!("{what}: {}", format!("{err:?}").chars().take(300).collect::<String>())
}

impl Records {
    pub fn new(dynamo: Client, table: String) -> Self {
        Self { dynamo, table }
    }

    /// Claims a send until `lock_until_ms` (the invocation's deadline), unless
    /// it completed before or another live invocation holds it. An expired
    /// claim (its invocation died) is taken over.
    pub async fn begin(&self, key: &str, now_ms: i64, lock_until_ms: i64) -> Result<Begin, String> {
        let put = self
            .dynamo
            .put_item()
            .table_name(&self.table)
            .item("pk", s(key))
            .item("state", s("IN_PROGRESS"))
            .item("in_progress_until_ms", n(lock_until_ms))
            .item("expires_at", n(now_ms / 1000 + COMPLETED_TTL_SECS))
            .condition_expression("attribute_not_exists(pk) OR (#state = :busy AND in_progress_until_ms < :now)")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":busy", s("IN_PROGRESS"))
            .expression_attribute_values(":now", n(now_ms))
            .send()
            .await;
        match put {
            Ok(_) => Ok(Begin::Acquired),
            Err(e) if is_condition_failure(&e) => {
                let item = self
                    .dynamo
                    .get_item()
                    .table_name(&self.table)
                    .key("pk", s(key))
                    .consistent_read(true)
                    .send()
                    .await
                    .map_err(|e| failure("reading an idempotency record", e))?
                    .item
                    .unwrap_or_default();
                match text(&item, "state").as_deref() {
                    Some("COMPLETED") => Ok(Begin::Completed { outcome: text(&item, "outcome").unwrap_or_default() }),
                    _ => Ok(Begin::InProgress),
                }
            }
            Err(e) => Err(failure("claiming a send", e)),
        }
    }

    /// Marks a claimed send done with its outcome (`sent` or `failed: ...`).
    pub async fn complete(
        &self,
        key: &str,
        outcome: &str,
        channel_message_id: &str,
        now_ms: i64,
    ) -> Result<(), String> {
        let mut put = self
            .dynamo
            .put_item()
            .table_name(&self.table)
            .item("pk", s(key))
            .item("state", s("COMPLETED"))
            .item("outcome", s(outcome))
            .item("completed_at_ms", n(now_ms))
            .item("expires_at", n(now_ms / 1000 + COMPLETED_TTL_SECS));
        if !channel_message_id.is_empty() {
            put = put.item("channel_message_id", s(channel_message_id));
        }
        put.send().await.map_err(|e| failure("completing a send", e))?;
        Ok(())
    }

    /// Records a send the channel accepted, in one call: the idempotency
    /// record COMPLETED, the channel message id → our message (for its
    /// receipts), and the recipient's reply binding.
    pub async fn complete_sent(
        &self,
        key: &str,
        recipient: &str,
        sent: &super::adapters::Sent,
        reference: &Reference,
        now_ms: i64,
    ) -> Result<(), String> {
        use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
        let channel = key.split('#').nth(1).unwrap_or_default();
        let mut items = vec![HashMap::from([
            ("pk".to_owned(), s(key)),
            ("state".to_owned(), s("COMPLETED")),
            ("outcome".to_owned(), s("sent")),
            ("completed_at_ms".to_owned(), n(now_ms)),
            ("expires_at".to_owned(), n(now_ms / 1000 + COMPLETED_TTL_SECS)),
        ])];
        if !sent.channel_message_id.is_empty() {
            items.push(HashMap::from([
                ("pk".to_owned(), s(&reference_key(channel, &sent.channel_message_id))),
                ("conversation_id".to_owned(), s(&reference.conversation_id)),
                ("seq".to_owned(), n(i64::try_from(reference.seq).unwrap_or(i64::MAX))),
                ("message_id".to_owned(), s(&reference.message_id)),
                ("user_id".to_owned(), s(&reference.user_id)),
                ("expires_at".to_owned(), n(now_ms / 1000 + REFERENCE_TTL_SECS)),
            ]));
        }
        items.push(HashMap::from([
            ("pk".to_owned(), s(&binding_key(recipient))),
            ("conversation_id".to_owned(), s(&reference.conversation_id)),
            ("bound_at_ms".to_owned(), n(now_ms)),
            ("expires_at".to_owned(), n(now_ms / 1000 + REFERENCE_TTL_SECS)),
        ]));
        let requests = items
            .into_iter()
            .map(|item| {
                PutRequest::builder()
                    .set_item(Some(item))
                    .build()
                    .map(|put| WriteRequest::builder().put_request(put).build())
                    .map_err(|e| failure("building a record", e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut pending = requests;
        for _attempt in 0..3 {
            let out = self
                .dynamo
                .batch_write_item()
                .request_items(&self.table, pending.clone())
                .send()
                .await
                .map_err(|e| failure("recording a send", e))?;
            pending = out.unprocessed_items().and_then(|u| u.get(&self.table)).cloned().unwrap_or_default();
            if pending.is_empty() {
                return Ok(());
            }
        }
        Err(format!("{} records of a send left unprocessed", pending.len()))
    }

    /// The conversation we last delivered to `recipient`, if any.
    pub async fn binding(&self, recipient: &str) -> Result<Option<String>, String> {
        let out = self
            .dynamo
            .get_item()
            .table_name(&self.table)
            .key("pk", s(&binding_key(recipient)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| failure("reading a reply binding", e))?;
        Ok(out.item.as_ref().and_then(|item| text(item, "conversation_id")))
    }

    /// Gives a claim up, so a retry may send.
    pub async fn release(&self, key: &str) -> Result<(), String> {
        self.dynamo
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(key))
            .condition_expression("#state = :busy")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":busy", s("IN_PROGRESS"))
            .send()
            .await
            .map(|_| ())
            .or_else(|e| if is_condition_failure(&e) { Ok(()) } else { Err(failure("releasing a send", e)) })
    }

    pub async fn reference(&self, channel: &str, channel_message_id: &str) -> Result<Option<Reference>, String> {
        let out = self
            .dynamo
            .get_item()
            .table_name(&self.table)
            .key("pk", s(&reference_key(channel, channel_message_id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| failure("reading a channel message id", e))?;
        let Some(item) = out.item else { return Ok(None) };
        let seq = item.get("seq").and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok());
        Ok(match (text(&item, "conversation_id"), seq, text(&item, "message_id"), text(&item, "user_id")) {
            (Some(conversation_id), Some(seq), Some(message_id), Some(user_id)) => {
                Some(Reference { conversation_id, seq, message_id, user_id })
            }
            _ => None,
        })
    }
}
