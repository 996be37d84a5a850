//! The send-dedup table, one record per idempotent send (`idem_key`:
//! conversation/sender/client_message_id): `message_id`, `accepted_at_ms`,
//! `body_digest`, `claimed_at_ms`, `expires_at` (TTL, a day), `seq`,
//! `members_version` and `externals` (SS, absent when none).
//!
//! **Look, number, then claim with the seq.** A send first reads its key
//! (strongly consistent): a retry finds the first copy's record and answers
//! with it, taking no seq. Otherwise it takes a seq and claims the key with
//! that seq in the same write (`attribute_not_exists`), so the common path
//! is one read and one record write (it used to be a claim, then the seq
//! written onto it: two writes). Two copies of one send racing on two
//! gateways both take a seq; the loser of the claim voids its own at once
//! (readers pass over a void without waiting out the reorder window) and
//! answers with the winner's.
//!
//! A record without a seq was claimed by a gateway running the earlier
//! claim-then-number order (a rolling deploy); it is waited for, and taken
//! over once older than [`CLAIM_LEASE`].
//!
//! **Then record** ([`Sequencer::record_send`], in the publishing stage, so
//! a stream's next send is numbered meanwhile): the message goes under its
//! seq (`messages`) before it is answered and published. A seq that readers
//! settled as void first (this sender stalled, or an earlier sender of the
//! same send died before recording) is given up: the send takes a new seq,
//! moving its send record from the old one (`seq = :old`), so retries
//! follow it.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use chat_core::store::{Accepted, SendRequest, Sequencer, StoreError, body_digest, idempotency_key};

use super::messages::MessageFields;
use super::{DynamoStore, Item, conditional, get_n, get_s, n, number_or_zero, s, seq_value, string_set, unavailable};

/// How long a send stays idempotent.
const SEND_DEDUP_TTL_SECS: i64 = 24 * 3600;
/// A claim without a seq for this long belongs to a sender that died; a
/// retry takes it over. Well above the time between claim and numbering
/// (two DynamoDB writes).
const CLAIM_LEASE: Duration = Duration::from_secs(2);
/// How long a racing copy waits for the winner's seq before answering
/// UNAVAILABLE (a retry then finds it); longer than the lease, so a retry
/// of a dead sender's send takes the claim over within one call.
const CLAIM_WAIT: Duration = Duration::from_millis(2500);
const CLAIM_POLL: Duration = Duration::from_millis(20);
/// Seqs a send takes at most when readers keep voiding them before it
/// records its message (each time it stalled past their settle delay).
const RECORD_ATTEMPTS: u32 = 3;

/// A send record as read back.
#[derive(Debug)]
enum Record {
    /// Numbered: its first identity, for a retry's answer.
    Numbered { accepted: Accepted, digest: String },
    /// Claimed and not yet numbered.
    Claimed { digest: String, claimed_at_ms: i64 },
}

fn record(item: &Item) -> Result<Record, StoreError> {
    let digest = get_s(item, "body_digest")?;
    if item.contains_key("seq") {
        let accepted = Accepted {
            message_id: get_s(item, "message_id")?,
            seq: get_n(item, "seq")?,
            accepted_at_ms: get_n(item, "accepted_at_ms")?,
            duplicate: true,
            external_recipients: string_set(item, "externals"),
            members_version: number_or_zero(item, "members_version"),
            routes: None,
        };
        return Ok(Record::Numbered { accepted, digest });
    }
    Ok(Record::Claimed { digest, claimed_at_ms: get_n(item, "claimed_at_ms").unwrap_or(0) })
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl DynamoStore {
    async fn read_send(&self, key: &str) -> Result<Option<Record>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.tables.send_dedup)
            .key("idem_key", s(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("reading send record", e))?;
        out.item().map(record).transpose()
    }

    /// Claims `key` for this send, numbered `accepted`; false when another
    /// send holds it.
    async fn claim(
        &self,
        key: &str,
        req: &SendRequest<'_>,
        digest: &str,
        accepted: &Accepted,
    ) -> Result<bool, StoreError> {
        let mut put = self
            .client
            .put_item()
            .table_name(&self.tables.send_dedup)
            .item("idem_key", s(key))
            .item("message_id", s(&accepted.message_id))
            .item("accepted_at_ms", n(accepted.accepted_at_ms))
            .item("claimed_at_ms", n(req.now_ms))
            .item("body_digest", s(digest))
            .item("expires_at", n(req.now_ms / 1000 + SEND_DEDUP_TTL_SECS))
            .item("seq", seq_value(accepted.seq))
            .item("members_version", n(accepted.members_version));
        if !accepted.external_recipients.is_empty() {
            // DynamoDB has no empty sets: the attribute is absent instead.
            put = put.item("externals", AttributeValue::Ss(accepted.external_recipients.clone()));
        }
        let put = put.condition_expression("attribute_not_exists(idem_key)").send().await;
        conditional(put, "claiming a send")
    }

    /// Takes over a claim that was never numbered; false when it moved
    /// meanwhile (numbered, or taken over by another retry).
    async fn take_over(
        &self,
        key: &str,
        req: &SendRequest<'_>,
        message_id: &str,
        claimed_at_ms: i64,
    ) -> Result<bool, StoreError> {
        let update = self
            .client
            .update_item()
            .table_name(&self.tables.send_dedup)
            .key("idem_key", s(key))
            .update_expression("SET message_id = :id, accepted_at_ms = :now, claimed_at_ms = :now")
            .condition_expression("attribute_not_exists(seq) AND claimed_at_ms = :then")
            .expression_attribute_values(":id", s(message_id))
            .expression_attribute_values(":now", n(req.now_ms))
            .expression_attribute_values(":then", n(claimed_at_ms))
            .send()
            .await;
        conditional(update, "taking over a stale send claim")
    }

    /// Records the seq a claimed send was given (`previous`: the voided seq
    /// it held before, if any); false when the claim was taken over
    /// meanwhile (this sender stalled past the lease) or already moved on.
    async fn number(
        &self,
        key: &str,
        message_id: &str,
        previous: Option<u64>,
        accepted: &Accepted,
    ) -> Result<bool, StoreError> {
        let mut expression = "SET seq = :seq, members_version = :mv".to_owned();
        let mut update = self
            .client
            .update_item()
            .expression_attribute_values(":seq", seq_value(accepted.seq))
            .expression_attribute_values(":mv", n(accepted.members_version));
        if !accepted.external_recipients.is_empty() {
            // DynamoDB has no empty sets: the attribute is absent instead.
            expression.push_str(", externals = :ext");
            update =
                update.expression_attribute_values(":ext", AttributeValue::Ss(accepted.external_recipients.clone()));
        }
        update = match previous {
            None => update.condition_expression("message_id = :id AND attribute_not_exists(seq)"),
            Some(old) => update
                .condition_expression("message_id = :id AND seq = :old")
                .expression_attribute_values(":old", seq_value(old)),
        };
        let result = update
            .table_name(&self.tables.send_dedup)
            .key("idem_key", s(key))
            .update_expression(expression)
            .expression_attribute_values(":id", s(message_id))
            .send()
            .await;
        conditional(result, "numbering a send")
    }

    /// A new seq for the send, first accepted at `accepted_at_ms`: a new
    /// send's id names that seq; a renumbered one keeps its `message_id`.
    async fn numbered(
        &self,
        req: &SendRequest<'_>,
        message_id: Option<&str>,
        accepted_at_ms: i64,
    ) -> Result<Accepted, StoreError> {
        let numbered = self.next_seq(req.conversation_id, req.now_ms).await?;
        let message_id =
            message_id.map_or_else(|| chat_core::store::message_id(&req.new_message_id, numbered.seq), str::to_owned);
        Ok(Accepted {
            message_id,
            seq: numbered.seq,
            accepted_at_ms,
            duplicate: false,
            external_recipients: numbered.externals.into_iter().filter(|id| id != req.sender).collect(),
            members_version: numbered.members_version,
            routes: Some(numbered.routes),
        })
    }

    /// Records the accepted message under its seq; false when readers voided
    /// that seq first.
    async fn record(&self, req: &SendRequest<'_>, accepted: &Accepted) -> Result<bool, StoreError> {
        let recorded = self
            .record_message(&MessageFields {
                conversation_id: req.conversation_id,
                seq: accepted.seq,
                message_id: &accepted.message_id,
                sender: req.sender,
                body: req.body,
                sent_at_ms: accepted.accepted_at_ms,
                origin: req.origin,
                client_message_id: req.client_message_id,
                members_version: accepted.members_version,
            })
            .await?;
        if !recorded {
            tracing::warn!(
                conversation_id = req.conversation_id,
                seq = accepted.seq,
                "seq voided by readers before its message was recorded; numbering again"
            );
        }
        Ok(recorded)
    }

    /// The answer for a send, numbered `accepted`, whose claim found the key
    /// taken: the first copy's identity once it is numbered; `None` when the
    /// key ends up this send's (a legacy claim whose sender died, taken
    /// over; or a record expired meanwhile).
    async fn settle_race(
        &self,
        key: &str,
        req: &SendRequest<'_>,
        digest: &str,
        accepted: &Accepted,
    ) -> Result<Option<Accepted>, StoreError> {
        let deadline = tokio::time::Instant::now() + CLAIM_WAIT;
        loop {
            match self.read_send(key).await? {
                Some(Record::Numbered { accepted, digest: first }) => {
                    return if first == digest { Ok(Some(accepted)) } else { Err(StoreError::ClientMessageIdReused) };
                }
                Some(Record::Claimed { digest: first, .. }) if first != digest => {
                    return Err(StoreError::ClientMessageIdReused);
                }
                Some(Record::Claimed { claimed_at_ms, .. }) => {
                    let stale = chat_core::clock::now_ms().saturating_sub(claimed_at_ms) >= millis(CLAIM_LEASE);
                    if stale
                        && self.take_over(key, req, &accepted.message_id, claimed_at_ms).await?
                        && self.number(key, &accepted.message_id, None, accepted).await?
                    {
                        tracing::warn!(
                            conversation_id = req.conversation_id,
                            "took over a send claim its sender never numbered"
                        );
                        return Ok(None);
                    }
                }
                // Expired by TTL between the claim and now: claim afresh.
                None if self.claim(key, req, digest, accepted).await? => return Ok(None),
                None => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::Unavailable(
                    "the same send (client_message_id) is being accepted elsewhere right now".into(),
                ));
            }
            tokio::time::sleep(CLAIM_POLL).await;
        }
    }

    /// Gives up a seq this send took and will never record: a void now, so
    /// readers pass over it at once instead of settling it themselves later.
    async fn give_up(&self, conversation_id: &str, seq: u64) {
        if let Err(e) = self.void_seq(conversation_id, seq).await {
            tracing::warn!(conversation_id, seq, error = %e, "could not void a seq lost to a racing copy; readers settle it");
        }
    }
}

#[async_trait]
impl Sequencer for DynamoStore {
    async fn accept_send(&self, req: SendRequest<'_>) -> Result<Accepted, StoreError> {
        if req.client_message_id.is_empty() {
            return self.numbered(&req, None, req.now_ms).await;
        }
        let key = idempotency_key(req.conversation_id, req.sender, req.client_message_id);
        let digest = body_digest(req.body);
        // A retry finds its first copy here and takes no seq.
        match self.read_send(&key).await? {
            Some(Record::Numbered { accepted, digest: first }) => {
                return if first == digest { Ok(accepted) } else { Err(StoreError::ClientMessageIdReused) };
            }
            Some(Record::Claimed { digest: first, .. }) if first != digest => {
                return Err(StoreError::ClientMessageIdReused);
            }
            _ => {}
        }
        let accepted = self.numbered(&req, None, req.now_ms).await?;
        if self.claim(&key, &req, &digest, &accepted).await? {
            return Ok(accepted);
        }
        // A racing copy claimed the key between the read and the claim.
        let answer = self.settle_race(&key, &req, &digest, &accepted).await;
        if !matches!(answer, Ok(None)) {
            self.give_up(req.conversation_id, accepted.seq).await;
        }
        Ok(answer?.unwrap_or(accepted))
    }

    async fn record_send(&self, req: SendRequest<'_>, mut accepted: Accepted) -> Result<Accepted, StoreError> {
        let key = (!req.client_message_id.is_empty())
            .then(|| idempotency_key(req.conversation_id, req.sender, req.client_message_id));
        for _ in 0..RECORD_ATTEMPTS {
            if self.record(&req, &accepted).await? {
                return Ok(accepted);
            }
            let voided = accepted.seq;
            let renumbered = Accepted {
                duplicate: false,
                ..self.numbered(&req, Some(&accepted.message_id), accepted.accepted_at_ms).await?
            };
            accepted = match &key {
                None => {
                    self.mark_moved(req.conversation_id, voided, renumbered.seq).await?;
                    renumbered
                }
                // Moved on the send record first, so a retry answers with
                // it; then on the void, so the id finds it (a concurrent
                // retry that lost the record's move leaves the void alone).
                Some(key) if self.number(key, &accepted.message_id, Some(voided), &renumbered).await? => {
                    self.mark_moved(req.conversation_id, voided, renumbered.seq).await?;
                    renumbered
                }
                // A concurrent retry moved it on already: follow it.
                Some(key) => match self.read_send(key).await? {
                    Some(Record::Numbered { accepted, .. }) => accepted,
                    _ => return Err(StoreError::Unavailable("the send record vanished while renumbering".into())),
                },
            };
        }
        Err(StoreError::Unavailable("the send stalled before it was recorded, again and again; retry it".into()))
    }

    async fn latest_seq(&self, conversation_id: &str) -> Result<u64, StoreError> {
        self.last_seq(conversation_id).await
    }
}
