//! The send-dedup table, one record per idempotent send (`idem_key`:
//! conversation/sender/client_message_id): `message_id`, `seq`,
//! `accepted_at_ms`, `body_digest`, `externals` (SS, absent when none) and
//! `expires_at` (TTL, a day). Written with `attribute_not_exists`, so the
//! first accepted identity wins.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use chat_core::store::{Accepted, SendRequest, Sequencer, StoreError, body_digest, idempotency_key};

use super::{DynamoStore, get_n, get_s, n, s, seq_value, string_set, unavailable};
use crate::error::is_condition_failure;

/// How long a send stays idempotent.
const SEND_DEDUP_TTL_SECS: i64 = 24 * 3600;

impl DynamoStore {
    async fn read_send(&self, key: &str) -> Result<Option<(Accepted, String)>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.tables.send_dedup)
            .key("idem_key", s(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("reading send record", e))?;
        let Some(item) = out.item() else {
            return Ok(None);
        };
        let accepted = Accepted {
            message_id: get_s(item, "message_id")?,
            seq: get_n(item, "seq")?,
            accepted_at_ms: get_n(item, "accepted_at_ms")?,
            duplicate: true,
            external_recipients: string_set(item, "externals"),
        };
        Ok(Some((accepted, get_s(item, "body_digest")?)))
    }
}

#[async_trait]
impl Sequencer for DynamoStore {
    async fn accept_send(&self, req: SendRequest<'_>) -> Result<Accepted, StoreError> {
        let recipients =
            |externals: Vec<String>| -> Vec<String> { externals.into_iter().filter(|id| id != req.sender).collect() };
        if req.client_message_id.is_empty() {
            let (seq, externals) = self.next_seq(req.conversation_id, req.now_ms).await?;
            return Ok(Accepted {
                message_id: req.new_message_id,
                seq,
                accepted_at_ms: req.now_ms,
                duplicate: false,
                external_recipients: recipients(externals),
            });
        }
        let key = idempotency_key(req.conversation_id, req.sender, req.client_message_id);
        let digest = body_digest(req.body);
        let check = |(first, first_digest): (Accepted, String)| {
            if first_digest == digest { Ok(first) } else { Err(StoreError::ClientMessageIdReused) }
        };
        // A retry is answered from the record without touching the counter,
        // so retries leave no hole in the conversation's seq.
        if let Some(found) = self.read_send(&key).await? {
            return check(found);
        }
        let (seq, externals) = self.next_seq(req.conversation_id, req.now_ms).await?;
        let accepted = Accepted {
            message_id: req.new_message_id,
            seq,
            accepted_at_ms: req.now_ms,
            duplicate: false,
            external_recipients: recipients(externals),
        };
        let mut put = self.client.put_item();
        if !accepted.external_recipients.is_empty() {
            // DynamoDB has no empty sets: the attribute is absent instead.
            put = put.item("externals", AttributeValue::Ss(accepted.external_recipients.clone()));
        }
        let put = put
            .table_name(&self.tables.send_dedup)
            .item("idem_key", s(&key))
            .item("message_id", s(&accepted.message_id))
            .item("seq", seq_value(seq))
            .item("accepted_at_ms", n(req.now_ms))
            .item("body_digest", s(&digest))
            .item("expires_at", n(req.now_ms / 1000 + SEND_DEDUP_TTL_SECS))
            .condition_expression("attribute_not_exists(idem_key)")
            .send()
            .await;
        match put {
            Ok(_) => Ok(accepted),
            // A concurrent duplicate won the race; its identity stands and
            // the seq this call allocated stays unused.
            Err(e) if is_condition_failure(&e) => {
                tracing::warn!(
                    conversation_id = req.conversation_id,
                    seq,
                    "concurrent duplicate send; seq left unused"
                );
                match self.read_send(&key).await? {
                    Some(found) => check(found),
                    None => Err(StoreError::Unavailable("send record vanished during a race".into())),
                }
            }
            Err(e) => Err(unavailable("writing send record", e)),
        }
    }

    async fn latest_seq(&self, conversation_id: &str) -> Result<u64, StoreError> {
        self.last_seq(conversation_id).await
    }
}
