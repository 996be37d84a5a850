//! Receipts: a member's DELIVERED and READ watermarks on their members
//! item, and failures in the receipts table.
//!
//! A watermark move is one conditional `UpdateItem` of the members item
//! (1 write unit: the item stays under 1 KB), conditional on moving forward,
//! so a late or repeated receipt changes nothing. The same update keeps the
//! member's last [`STEPS_KEPT`] moves of that status (`ds0`..`ds7`,
//! `rs0`..`rs7`: `[seq, at_ms]`, newest first), shifting the oldest out: the
//! time a message got a status is that of the first move at or above its
//! seq, exact while that move is among those kept.
//!
//! The receipts table (`conversation_id`, `receipt_key`) holds a failure of
//! one message for one member, `f#<seq:020>#<user>` with `user_id`, `at_ms`
//! and `reason`, written once; and, from before the moves were kept on the
//! member, a step item per move, `s#<user>#<d|r>#<seq:020>` with `at_ms`,
//! still read for members with no moves kept.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use chat_core::envelope::{ReceiptEvent, ReceiptStatus};
use chat_core::store::{Failure, MemberState, Receipts, StoreError};

use super::members::{member_state, watermark_attributes};
use super::{DynamoStore, Item, conditional, get_n, get_s, n, query_items, s, seq_value, unavailable};

/// Watermark moves kept per member and status: enough for the times of a
/// busy chat's recent messages, few enough that the members item stays
/// under the 1 KB a write unit covers.
pub(crate) const STEPS_KEPT: usize = 8;

/// The attribute holding a member's `index`-th newest `status` move.
fn step_slot(status: ReceiptStatus, index: usize) -> String {
    format!("{}s{index}", step_letter(status))
}

/// The update expression of a `status` watermark move: the watermark, and
/// the kept moves shifted by one, the oldest out (`:none` fills a slot
/// below which there was nothing yet), the new one first.
fn move_expression(status: ReceiptStatus) -> String {
    let (seq_attr, at_attr) = watermark_attributes(status);
    let mut expression = format!("SET {seq_attr} = :s, {at_attr} = :t");
    // Right-hand sides read the item as it was, so the order is free.
    for index in (1..STEPS_KEPT).rev() {
        let (to, from) = (step_slot(status, index), step_slot(status, index - 1));
        expression.push_str(&format!(", {to} = if_not_exists({from}, :none)"));
    }
    expression.push_str(&format!(", {} = :step", step_slot(status, 0)));
    expression
}

/// The `status` moves kept on a members item, newest first.
fn kept_steps(item: &Item, status: ReceiptStatus) -> Vec<(u64, i64)> {
    (0..STEPS_KEPT)
        .filter_map(|index| {
            let step = item.get(&step_slot(status, index))?.as_l().ok()?;
            let seq = step.first()?.as_n().ok()?.parse().ok()?;
            let at = step.get(1)?.as_n().ok()?.parse().ok()?;
            Some((seq, at))
        })
        .collect()
}

/// The first kept move at or above `seq` (moves newest first, so seqs
/// descending): its index and when it happened.
pub(crate) fn first_covering(steps: &[(u64, i64)], seq: u64) -> Option<(usize, i64)> {
    steps.iter().take_while(|(step, _)| *step >= seq).enumerate().last().map(|(i, (_, at))| (i, *at))
}

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
        let (seq_attr, _) = watermark_attributes(receipt.status);
        let moved = self
            .client
            .update_item()
            .table_name(&self.tables.members)
            .key("conversation_id", s(conversation_id))
            .key("user_id", s(&receipt.user_id))
            .update_expression(move_expression(receipt.status))
            .condition_expression(format!(
                "attribute_exists(user_id) AND (attribute_not_exists({seq_attr}) OR {seq_attr} < :s)"
            ))
            .expression_attribute_values(":s", seq_value(receipt.up_to_seq))
            .expression_attribute_values(":t", n(at_ms))
            .expression_attribute_values(":step", AttributeValue::L(vec![seq_value(receipt.up_to_seq), n(at_ms)]))
            .expression_attribute_values(":none", AttributeValue::Null(true))
            .send()
            .await;
        // Refused: not a member, or the watermark is already there.
        conditional(moved, "recording a receipt")
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
        let kept = match self.member_item(conversation_id, user_id).await? {
            Some(item) => kept_steps(&item, status),
            None => Vec::new(),
        };
        match first_covering(&kept, seq) {
            // Exact: the kept move before it did not cover the seq.
            Some((index, at)) if index + 1 < kept.len() => Ok(Some(at)),
            // The oldest kept: a move shifted out, or one logged as an item
            // before moves were kept, may have covered it first.
            Some((_, at)) => {
                Ok(Some(self.logged_step_time(conversation_id, user_id, status, seq).await?.unwrap_or(at)))
            }
            None => self.logged_step_time(conversation_id, user_id, status, seq).await,
        }
    }
}

impl DynamoStore {
    /// The time of the first step logged as an item (before moves were kept
    /// on the member) at or above `seq`.
    async fn logged_step_time(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_move_shifts_the_kept_steps_and_sets_the_watermark() {
        let expression = move_expression(ReceiptStatus::Delivered);
        assert!(
            expression.starts_with("SET delivered_seq = :s, delivered_at_ms = :t, ds7 = if_not_exists(ds6, :none)")
        );
        assert!(expression.ends_with("ds1 = if_not_exists(ds0, :none), ds0 = :step"));
        assert_eq!(expression.matches("if_not_exists").count(), STEPS_KEPT - 1);
        assert!(move_expression(ReceiptStatus::Read).starts_with("SET last_read_seq = :s, read_at_ms = :t, rs7 ="));
    }

    #[test]
    fn kept_steps_are_read_newest_first_and_skip_empty_slots() {
        let step = |seq: u64, at: i64| AttributeValue::L(vec![n(seq), n(at)]);
        let item: Item = [
            ("ds0".to_owned(), step(9, 900)),
            ("ds1".to_owned(), step(5, 500)),
            ("ds2".to_owned(), AttributeValue::Null(true)),
            ("rs0".to_owned(), step(4, 450)),
        ]
        .into_iter()
        .collect();
        assert_eq!(kept_steps(&item, ReceiptStatus::Delivered), vec![(9, 900), (5, 500)]);
        assert_eq!(kept_steps(&item, ReceiptStatus::Read), vec![(4, 450)]);
    }

    /// The time of a message's status is the first move at or above it.
    #[test]
    fn the_first_move_covering_a_seq_gives_its_time() {
        let steps = [(9, 900), (5, 500), (2, 200)];
        assert_eq!(first_covering(&steps, 1), Some((2, 200)));
        assert_eq!(first_covering(&steps, 2), Some((2, 200)));
        assert_eq!(first_covering(&steps, 3), Some((1, 500)));
        assert_eq!(first_covering(&steps, 6), Some((0, 900)));
        assert_eq!(first_covering(&steps, 10), None, "not covered");
        assert_eq!(first_covering(&[], 1), None);
    }
}
