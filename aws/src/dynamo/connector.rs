//! The connector's table (`pk`), three kinds of item:
//! - `idem#<channel>#<message>#<recipient>#<receipt user>`: one send's
//!   idempotency record, Powertools-style: `state` IN_PROGRESS with
//!   `in_progress_until_ms` while a send is under way, then COMPLETED with
//!   its `outcome` (`sent`, or `failed` and a `reason`) and `completed_at_ms`;
//! - `ref#<channel>#<channel message id>`: our message behind a channel's
//!   message id (`conversation_id`, `seq`, `message_id`, `user_id`), which the
//!   webhook uses to turn channel receipts into ours;
//! - `bind#<recipient>`: the conversation we last delivered to an external
//!   identity (`conversation_id`, `bound_at_ms`), where its replies go.
//!
//! Every item carries `expires_at` (the table's TTL, in seconds).

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
use chat_core::store::StoreError;

use super::{Item, conditional, n, s, seq_value, text, unavailable};
use crate::error::is_condition_failure;

/// How long a completed send is remembered (redeliveries come within the
/// queue's retention, at most 14 days).
const COMPLETED_TTL_SECS: i64 = 15 * 24 * 3600;
/// How long a channel message id maps back to our message.
const REFERENCE_TTL_SECS: i64 = 30 * 24 * 3600;

const IN_PROGRESS: &str = "IN_PROGRESS";
const COMPLETED: &str = "COMPLETED";

#[derive(Debug, Clone)]
pub struct Records {
    dynamo: Client,
    table: String,
}

/// How a send ended, as its record keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// The channel accepted it.
    Sent,
    /// The channel refused it for good.
    Failed { reason: String },
}

/// What an attempt to start a send found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// This invocation owns the send now.
    Acquired,
    /// The send already happened (or failed for good): do nothing.
    Completed(SendOutcome),
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
    /// The message's trace context: the channel's later receipt for it
    /// (through the webhook) joins the message's trace.
    pub trace: Option<String>,
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

/// A completed record's outcome. Records written before `reason` had its
/// own attribute kept it in `outcome` as `failed: <reason>`.
fn outcome(item: &Item) -> SendOutcome {
    match text(item, "outcome").as_deref() {
        Some("sent") | None => SendOutcome::Sent,
        Some(other) => SendOutcome::Failed {
            reason: text(item, "reason")
                .or_else(|| other.strip_prefix("failed: ").map(str::to_owned))
                .unwrap_or_default(),
        },
    }
}

fn completed(key: &str, outcome: &SendOutcome, now_ms: i64) -> Item {
    let mut item = HashMap::from([
        ("pk".to_owned(), s(key)),
        ("state".to_owned(), s(COMPLETED)),
        ("completed_at_ms".to_owned(), n(now_ms)),
        ("expires_at".to_owned(), n(now_ms / 1000 + COMPLETED_TTL_SECS)),
    ]);
    match outcome {
        SendOutcome::Sent => item.insert("outcome".to_owned(), s("sent")),
        SendOutcome::Failed { reason } => {
            item.insert("reason".to_owned(), s(reason));
            item.insert("outcome".to_owned(), s("failed"))
        }
    };
    item
}

impl Records {
    pub fn new(dynamo: Client, table: String) -> Self {
        Self { dynamo, table }
    }

    /// Claims a send until `lock_until_ms` (the invocation's deadline), unless
    /// it completed before or another live invocation holds it. An expired
    /// claim (its invocation died) is taken over.
    pub async fn begin(&self, key: &str, now_ms: i64, lock_until_ms: i64) -> Result<Begin, StoreError> {
        let put = self
            .dynamo
            .put_item()
            .table_name(&self.table)
            .item("pk", s(key))
            .item("state", s(IN_PROGRESS))
            .item("in_progress_until_ms", n(lock_until_ms))
            .item("expires_at", n(now_ms / 1000 + COMPLETED_TTL_SECS))
            .condition_expression("attribute_not_exists(pk) OR (#state = :busy AND in_progress_until_ms < :now)")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":busy", s(IN_PROGRESS))
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
                    .map_err(|e| unavailable("reading an idempotency record", e))?
                    .item
                    .unwrap_or_default();
                match text(&item, "state").as_deref() {
                    Some(COMPLETED) => Ok(Begin::Completed(outcome(&item))),
                    _ => Ok(Begin::InProgress),
                }
            }
            Err(e) => Err(unavailable("claiming a send", e)),
        }
    }

    /// Marks a claimed send as failed for good.
    pub async fn complete_failed(&self, key: &str, reason: &str, now_ms: i64) -> Result<(), StoreError> {
        let failed = SendOutcome::Failed { reason: reason.to_owned() };
        self.dynamo
            .put_item()
            .table_name(&self.table)
            .set_item(Some(completed(key, &failed, now_ms)))
            .send()
            .await
            .map_err(|e| unavailable("completing a send", e))?;
        Ok(())
    }

    /// Records a send the channel accepted, in one call: the idempotency
    /// record COMPLETED, the channel message id → our message (for its
    /// receipts), and the recipient's reply binding.
    pub async fn complete_sent(
        &self,
        key: &str,
        recipient: &str,
        channel_message_id: &str,
        reference: &Reference,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let channel = key.split('#').nth(1).unwrap_or_default();
        let mut items = vec![completed(key, &SendOutcome::Sent, now_ms)];
        if !channel_message_id.is_empty() {
            items.push(HashMap::from([
                ("pk".to_owned(), s(&reference_key(channel, channel_message_id))),
                ("conversation_id".to_owned(), s(&reference.conversation_id)),
                ("seq".to_owned(), seq_value(reference.seq)),
                ("message_id".to_owned(), s(&reference.message_id)),
                ("user_id".to_owned(), s(&reference.user_id)),
                ("expires_at".to_owned(), n(now_ms / 1000 + REFERENCE_TTL_SECS)),
            ]));
            if let (Some(trace), Some(item)) = (&reference.trace, items.last_mut()) {
                item.insert("trace".to_owned(), s(trace));
            }
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
                    .map_err(|e| StoreError::Unavailable(format!("building a record: {e}")))
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
                .map_err(|e| unavailable("recording a send", e))?;
            pending = out.unprocessed_items().and_then(|u| u.get(&self.table)).cloned().unwrap_or_default();
            if pending.is_empty() {
                return Ok(());
            }
        }
        Err(StoreError::Unavailable(format!("{} records of a send left unprocessed", pending.len())))
    }

    /// The conversation we last delivered to `recipient`, if any.
    pub async fn binding(&self, recipient: &str) -> Result<Option<String>, StoreError> {
        let out = self
            .dynamo
            .get_item()
            .table_name(&self.table)
            .key("pk", s(&binding_key(recipient)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("reading a reply binding", e))?;
        Ok(out.item.as_ref().and_then(|item| text(item, "conversation_id")))
    }

    /// Gives a claim up, so a retry may send.
    pub async fn release(&self, key: &str) -> Result<(), StoreError> {
        let deleted = self
            .dynamo
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(key))
            .condition_expression("#state = :busy")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":busy", s(IN_PROGRESS))
            .send()
            .await;
        // Refused: the send completed meanwhile, and stays completed.
        conditional(deleted, "releasing a send").map(|_| ())
    }

    pub async fn reference(&self, channel: &str, channel_message_id: &str) -> Result<Option<Reference>, StoreError> {
        let out = self
            .dynamo
            .get_item()
            .table_name(&self.table)
            .key("pk", s(&reference_key(channel, channel_message_id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("reading a channel message id", e))?;
        let Some(item) = out.item else { return Ok(None) };
        let seq = item.get("seq").and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok());
        Ok(match (text(&item, "conversation_id"), seq, text(&item, "message_id"), text(&item, "user_id")) {
            (Some(conversation_id), Some(seq), Some(message_id), Some(user_id)) => {
                Some(Reference { conversation_id, seq, message_id, user_id, trace: text(&item, "trace") })
            }
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip_and_old_records_still_read() {
        for outcome_written in [SendOutcome::Sent, SendOutcome::Failed { reason: "number not on WhatsApp".into() }] {
            assert_eq!(outcome(&completed("k", &outcome_written, 1)), outcome_written);
        }
        let old = HashMap::from([("outcome".to_owned(), s("failed: blocked by user"))]);
        assert_eq!(outcome(&old), SendOutcome::Failed { reason: "blocked by user".into() });
    }
}
