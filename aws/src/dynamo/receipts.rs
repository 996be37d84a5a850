//! The receipts table, per conversation (`conversation_id`, `receipt_key`):
//! - a step each time a member's watermark moved: `s#<user>#<d|r>#<seq:020>`
//!   with `at_ms`; the time a message got a status is that of the first step
//!   at or above its seq;
//! - a failure of one message for one member: `f#<seq:020>#<user>` with
//!   `user_id`, `at_ms` and `reason`, written once.
//!
//! A watermark move (on the members item) and its step are one
//! transaction, conditional on moving forward, so a late or repeated
//! receipt changes nothing.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{Put, TransactWriteItem, Update};
use chat_core::envelope::{ReceiptEvent, ReceiptStatus};
use chat_core::store::{Failure, MemberState, Receipts, StoreError};

use super::members::{member_state, watermark_attributes};
use super::{DynamoStore, conditional, get_n, get_s, n, query_items, s, seq_value, unavailable};
use crate::error::is_transaction_condition_failure;

/// The sort key of a receipt step: the time a member's `status` watermark
/// first covered a seq is that of the step with the smallest seq at or
/// above it. Seqs are zero-padded so keys sort numerically.
pub fn step_key(user_id: &str, status: ReceiptStatus, seq: u64) -> String {
    format!("s#{user_id}#{}#{seq:020}", step_letter(status))
}

/// The sort key range holding `user_id`'s `status` steps at or above `seq`.
fn step_range(user_id: &str, status: ReceiptStatus, seq: u64) -> (String, String) {
    (step_key(user_id, status, seq), format!("s#{user_id}#{}#~", step_letter(status)))
}

fn step_letter(status: ReceiptStatus) -> char {
    match status {
        ReceiptStatus::Delivered => 'd',
        ReceiptStatus::Read => 'r',
        ReceiptStatus::Failed => 'f',
    }
}

/// The sort key of a failure, grouped by message.
pub fn failure_key(seq: u64, user_id: &str) -> String {
    format!("{}{user_id}", failure_prefix(seq))
}

fn failure_prefix(seq: u64) -> String {
    format!("f#{seq:020}#")
}

#[async_trait]
impl Receipts for DynamoStore {
    async fn members(&self, conversation_id: &str) -> Result<Vec<MemberState>, StoreError> {
        let request = self
            .client
            .query()
            .table_name(&self.tables.members)
            .key_condition_expression("conversation_id = :c")
            .expression_attribute_values(":c", s(conversation_id))
            .consistent_read(true);
        query_items(request, None, "listing members").await?.iter().map(member_state).collect()
    }

    async fn member(&self, conversation_id: &str, user_id: &str) -> Result<Option<MemberState>, StoreError> {
        self.member_item(conversation_id, user_id).await?.as_ref().map(member_state).transpose()
    }

    async fn record_receipt(
        &self,
        conversation_id: &str,
        receipt: &ReceiptEvent,
        at_ms: i64,
    ) -> Result<bool, StoreError> {
        if receipt.status == ReceiptStatus::Failed {
            let mut put = self
                .client
                .put_item()
                .table_name(&self.tables.receipts)
                .item("conversation_id", s(conversation_id))
                .item("receipt_key", s(&failure_key(receipt.up_to_seq, &receipt.user_id)))
                .item("user_id", s(&receipt.user_id))
                .item("at_ms", n(at_ms))
                .condition_expression("attribute_not_exists(receipt_key)");
            if !receipt.reason.is_empty() {
                put = put.item("reason", s(&receipt.reason));
            }
            return conditional(put.send().await, "recording a failure");
        }
        let (seq_attr, at_attr) = watermark_attributes(receipt.status);
        let watermark = Update::builder()
            .table_name(&self.tables.members)
            .key("conversation_id", s(conversation_id))
            .key("user_id", s(&receipt.user_id))
            .update_expression(format!("SET {seq_attr} = :s, {at_attr} = :t"))
            .condition_expression(format!(
                "attribute_exists(user_id) AND (attribute_not_exists({seq_attr}) OR {seq_attr} < :s)"
            ))
            .expression_attribute_values(":s", seq_value(receipt.up_to_seq))
            .expression_attribute_values(":t", n(at_ms))
            .build()
            .map_err(|e| StoreError::Unavailable(format!("building a watermark update: {e}")))?;
        let step = Put::builder()
            .table_name(&self.tables.receipts)
            .item("conversation_id", s(conversation_id))
            .item("receipt_key", s(&step_key(&receipt.user_id, receipt.status, receipt.up_to_seq)))
            .item("at_ms", n(at_ms))
            .build()
            .map_err(|e| StoreError::Unavailable(format!("building a receipt step: {e}")))?;
        let out = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().update(watermark).build())
            .transact_items(TransactWriteItem::builder().put(step).build())
            .send()
            .await;
        match out {
            Ok(_) => Ok(true),
            // Not a member, or the watermark is already there.
            Err(e) if is_transaction_condition_failure(&e) => Ok(false),
            Err(e) => Err(unavailable("recording a receipt", e)),
        }
    }

    async fn failures(&self, conversation_id: &str, seq: u64) -> Result<Vec<Failure>, StoreError> {
        let request = self
            .client
            .query()
            .table_name(&self.tables.receipts)
            .key_condition_expression("conversation_id = :c AND begins_with(receipt_key, :p)")
            .expression_attribute_values(":c", s(conversation_id))
            .expression_attribute_values(":p", s(&failure_prefix(seq)))
            .consistent_read(true);
        query_items(request, None, "reading failures")
            .await?
            .iter()
            .map(|item| {
                Ok(Failure {
                    user_id: get_s(item, "user_id")?,
                    at_ms: get_n(item, "at_ms")?,
                    reason: item.get("reason").and_then(|v| v.as_s().ok()).cloned().unwrap_or_default(),
                })
            })
            .collect()
    }

    async fn step_time(
        &self,
        conversation_id: &str,
        user_id: &str,
        status: ReceiptStatus,
        seq: u64,
    ) -> Result<Option<i64>, StoreError> {
        let (from, to) = step_range(user_id, status, seq);
        let out = self
            .client
            .query()
            .table_name(&self.tables.receipts)
            .key_condition_expression("conversation_id = :c AND receipt_key BETWEEN :from AND :to")
            .expression_attribute_values(":c", s(conversation_id))
            .expression_attribute_values(":from", s(&from))
            .expression_attribute_values(":to", s(&to))
            .limit(1)
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("reading a receipt step", e))?;
        out.items().first().map(|item| get_n(item, "at_ms")).transpose()
    }
}
