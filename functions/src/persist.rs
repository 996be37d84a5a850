//! Function `persist`: records the receipts its publishers did not.
//!
//! Triggered by the persist queue (raw delivery from the topic, filtered to
//! receipts): a stream's DELIVERED acks, a connector's DELIVERED, READ or
//! FAILED. Each goes through the store's `record_receipt` (one conditional
//! update of the member's watermark, which keeps its last moves for their
//! times), so redelivered or reordered records change nothing; a receipt its
//! publisher recorded already (a gateway's READ) is left alone.
//! Messages are not its business: every publisher records a message under
//! its seq before publishing it (`chat_core::send::record`), and a
//! conversation's latest message is read from the messages when listed. (It
//! used to rewrite every message, then to move a per-conversation summary:
//! a write per message either way.)
//! Every table's layout is `chat_aws::dynamo`'s; this module only decides
//! what to write.
//!
//! Per-record failures are reported in `batchItemFailures`
//! (`chat_aws::lambda`): an undecodable record fails alone and never holds
//! back its batch-mates.

use std::collections::BTreeMap;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use chat_aws::dynamo::{DynamoStore, Tables};
use chat_aws::lambda::{Batch, Record};
use chat_core::envelope::{Event, ReceiptEvent};
use chat_core::store::{Receipts, StoreError};
use futures::StreamExt;
use tracing::Instrument;

/// Receipts recorded at once.
const RECEIPTS_IN_FLIGHT: usize = 16;

/// What `persist` needs: built once per process, shared by invocations.
#[derive(Debug, Clone)]
pub struct Clients {
    pub store: DynamoStore,
}

impl Clients {
    pub fn new(dynamo: aws_sdk_dynamodb::Client, tables: Tables) -> Self {
        Self { store: DynamoStore::new(dynamo, tables) }
    }
}

/// A receipt to record: (record id, conversation, receipt, time).
pub type PlannedReceipt = (String, String, ReceiptEvent, i64);

/// A batch turned into writes, before any I/O.
#[derive(Debug, Default)]
pub struct Plan {
    pub receipts: Vec<PlannedReceipt>,
    /// Records acknowledged without a write: recorded receipts, and events
    /// the queue's filter keeps out (messages) should any get in.
    pub ignored: usize,
}

/// Decides what to write for a batch's decoded records.
pub fn plan(records: &[Record]) -> Plan {
    let mut plan = Plan::default();
    for Record { id, envelope, .. } in records {
        match &envelope.event {
            // Its publisher recorded it (a gateway's READ): writing it again
            // would only pay to find the watermark there.
            Event::Receipt(receipt) if receipt.recorded => plan.ignored += 1,
            Event::Receipt(receipt) => {
                plan.receipts.push((id.clone(), envelope.conversation_id.clone(), receipt.clone(), envelope.at_ms));
            }
            _ => plan.ignored += 1,
        }
    }
    plan
}

/// The `persist` handler: a plain function of (clients, event).
pub async fn handle(clients: &Clients, event: SqsEvent) -> SqsBatchResponse {
    let batch = Batch::decode(&event);
    let spans = crate::BatchSpans::new(
        &batch.records,
        || tracing::info_span!("persist.batch", records = batch.records.len(), trace_id = tracing::field::Empty),
        |r| {
            tracing::info_span!(
                parent: None,
                "persist.write",
                record_id = r.id,
                conversation_id = r.envelope.conversation_id,
                event_id = r.envelope.event_id,
                outcome = tracing::field::Empty,
                trace_id = tracing::field::Empty
            )
        },
    );
    let batch_span = spans.batch.clone();
    let response = write(clients, &event, batch).instrument(batch_span).await;
    let failed: Vec<String> = response.batch_item_failures.iter().map(|f| f.item_identifier.clone()).collect();
    spans.finish(&failed);
    response
}

async fn write(clients: &Clients, event: &SqsEvent, batch: Batch) -> SqsBatchResponse {
    let plan = plan(&batch.records);
    let mut failed: Vec<String> = Vec::new();
    let mut write_calls = 0;
    // One member's receipts in the order they happened (a watermark takes
    // the first step covering a seq, so an earlier receipt recorded after a
    // later one would lose its time); members in parallel.
    let mut by_member: BTreeMap<(&str, &str), Vec<&PlannedReceipt>> = BTreeMap::new();
    for planned in &plan.receipts {
        by_member.entry((planned.1.as_str(), planned.2.user_id.as_str())).or_default().push(planned);
    }
    let receipts: Vec<Vec<(&String, Result<bool, StoreError>)>> = futures::stream::iter(by_member.into_values())
        .map(|mut receipts| async move {
            receipts.sort_by_key(|(_, _, receipt, at_ms)| (*at_ms, receipt.up_to_seq));
            let mut results = Vec::with_capacity(receipts.len());
            for (id, conversation_id, receipt, at_ms) in receipts {
                results.push((id, clients.store.record_receipt(conversation_id, receipt, *at_ms).await));
            }
            results
        })
        .buffer_unordered(RECEIPTS_IN_FLIGHT)
        .collect()
        .await;
    for (id, result) in receipts.into_iter().flatten() {
        write_calls += 1;
        if let Err(e) = result {
            tracing::warn!(record_id = id, error = %e, "recording a receipt failed");
            failed.push(id.clone());
        }
    }
    let failures = batch.undecodable.len() + failed.len();
    tracing::info!(
        records = event.records.len(),
        receipts = plan.receipts.len(),
        failed = failures,
        ignored = plan.ignored,
        write_calls,
        "persist batch done"
    );
    metrics::counter!("chat_persist_batches_total").increment(1);
    metrics::counter!("chat_persist_records_total").increment(event.records.len() as u64);
    metrics::counter!("chat_persist_write_calls_total").increment(write_calls as u64);
    metrics::counter!("chat_persist_failures_total").increment(failures as u64);
    metrics::histogram!("chat_persist_batch_size").record(event.records.len() as f64);
    batch.response(failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lambda_events::event::sqs::SqsMessage;
    use chat_core::envelope::{Envelope, MessageEvent, ReceiptStatus};

    fn record(id: &str, body: &str) -> SqsMessage {
        let mut m = SqsMessage::default();
        m.message_id = Some(id.into());
        m.body = Some(body.into());
        m
    }

    fn message(conversation: &str, seq: u64, body: &str) -> String {
        Envelope::new(
            format!("m{seq}"),
            conversation.into(),
            "gw".into(),
            1_700_000_000_000 + seq as i64,
            Event::Message(MessageEvent {
                message_id: format!("m{seq}"),
                seq,
                sender: "alice".into(),
                body: body.into(),
                client_message_id: String::new(),
                external_recipients: Vec::new(),
            }),
        )
        .encode()
    }

    fn delivered(conversation: &str, up_to_seq: u64) -> String {
        let event = ReceiptEvent {
            user_id: "bob".into(),
            status: ReceiptStatus::Delivered,
            up_to_seq,
            message_id: String::new(),
            reason: String::new(),
            via: String::new(),
            recorded: false,
        };
        Envelope::new(format!("d{up_to_seq}"), conversation.into(), "gw".into(), 1, Event::Receipt(event)).encode()
    }

    fn event(records: Vec<SqsMessage>) -> SqsEvent {
        let mut e = SqsEvent::default();
        e.records = records;
        e
    }

    #[test]
    fn plan_separates_good_bad_and_ignored_records() {
        let typing =
            Envelope::new("t".into(), "r".into(), "gw".into(), 1, Event::Typing { user_id: "a".into(), typing: true });
        let batch = Batch::decode(&event(vec![
            record("1", &delivered("r", 1)),
            record("2", "not json"),
            record("3", &message("r", 3, "three")),
            record("4", &typing.encode()),
            record("5", &delivered("q", 7)),
        ]));
        let plan = plan(&batch.records);
        assert_eq!(batch.undecodable.len(), 1);
        assert_eq!(batch.undecodable[0].0, "2");
        let planned: Vec<(&str, &str, u64)> =
            plan.receipts.iter().map(|(id, c, r, _)| (id.as_str(), c.as_str(), r.up_to_seq)).collect();
        assert_eq!(planned, [("1", "r", 1), ("5", "q", 7)]);
        assert_eq!(plan.ignored, 2, "a message (kept out by the queue's filter) and a typing event");
    }

    /// A READ its gateway recorded is not written again; a DELIVERED is.
    #[test]
    fn receipts_recorded_by_their_publisher_are_left_alone() {
        let receipt = |status, recorded| {
            let event = ReceiptEvent {
                user_id: "bob".into(),
                status,
                up_to_seq: 3,
                message_id: String::new(),
                reason: String::new(),
                via: String::new(),
                recorded,
            };
            Envelope::new("e".into(), "r".into(), "gw".into(), 1, Event::Receipt(event)).encode()
        };
        let batch = Batch::decode(&event(vec![
            record("1", &receipt(ReceiptStatus::Read, true)),
            record("2", &receipt(ReceiptStatus::Delivered, false)),
        ]));
        let plan = plan(&batch.records);
        let planned: Vec<&str> = plan.receipts.iter().map(|(id, ..)| id.as_str()).collect();
        assert_eq!(planned, vec!["2"]);
        assert_eq!(plan.ignored, 1);
    }
}
