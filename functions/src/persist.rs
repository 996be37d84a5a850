//! Function `persist`: writes the messages and receipts of a batch of bus
//! events to DynamoDB.
//!
//! Triggered by the persist queue (raw delivery from the topic, filtered to
//! messages and receipts). Receipts go through the store's
//! `record_receipt` (a conditional watermark move and its logged step in one
//! transaction), so redelivered or reordered receipts change nothing. Message items are keyed by (`conversation_id`, `seq`), which
//! the gateway made unique, so a redelivered record rewrites the identical
//! item: a duplicate is a success, never a second message. Items go out in
//! `BatchWriteItem` calls of 25; the conversation's summary (last message)
//! moves forward with one conditional update per conversation per batch.
//!
//! Per-record failures are reported in `batchItemFailures`: an undecodable
//! record fails alone (the queue's redrive policy moves it to the DLQ after
//! `maxReceiveCount`) and never holds back its batch-mates.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use chat_proto::envelope::{Envelope, Event, ReceiptEvent};
use futures::StreamExt;
use gateway::store::Store;
use gateway::store::dynamo::{DynamoStore, Tables};

/// `BatchWriteItem` takes at most 25 requests.
pub const WRITE_BATCH_MAX: usize = 25;
/// Attempts at writing items DynamoDB returned as unprocessed.
const UNPROCESSED_ATTEMPTS: u32 = 5;

/// Receipts recorded at once.
const RECEIPTS_IN_FLIGHT: usize = 16;

/// What `persist` needs: built once per process, shared by invocations.
#[derive(Debug, Clone)]
pub struct Clients {
    pub dynamo: Client,
    pub tables: Tables,
    pub store: DynamoStore,
}

impl Clients {
    pub fn new(dynamo: Client, tables: Tables) -> Self {
        Self { store: DynamoStore::new(dynamo.clone(), tables.clone()), dynamo, tables }
    }
}

/// A receipt to record: (record id, conversation, receipt, time).
pub type PlannedReceipt = (String, String, ReceiptEvent, i64);

type Item = HashMap<String, AttributeValue>;

/// A batch turned into writes, before any I/O.
#[derive(Debug, Default)]
pub struct Plan {
    /// (record id, message item) in record order.
    pub items: Vec<(String, Item)>,
    /// Records that cannot be persisted, and why.
    pub failed: Vec<(String, String)>,
    /// Per conversation: the newest message of the batch.
    pub summaries: BTreeMap<String, Summary>,
    pub receipts: Vec<PlannedReceipt>,
    /// Records acknowledged without a write (events persist does not keep).
    pub ignored: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub record_id: String,
    pub seq: u64,
    pub message_id: String,
    pub sender: String,
    pub preview: String,
    pub sent_at_ms: i64,
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n<T: ToString>(v: T) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// The DynamoDB item of a message event.
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

/// Decodes every record and decides what to write.
pub fn plan(event: &SqsEvent) -> Plan {
    let mut plan = Plan::default();
    for (index, record) in event.records.iter().enumerate() {
        let id = record.message_id.clone().unwrap_or_else(|| format!("record-{index}"));
        let Some(body) = record.body.as_deref() else {
            plan.failed.push((id, "record has no body".into()));
            continue;
        };
        let envelope = match Envelope::decode(body) {
            Ok(envelope) => envelope,
            Err(e) => {
                plan.failed.push((id, e.to_string()));
                continue;
            }
        };
        if let Event::Receipt(receipt) = envelope.event {
            plan.receipts.push((id, envelope.conversation_id, receipt, envelope.at_ms));
            continue;
        }
        let Some(item) = message_item(&envelope) else {
            plan.ignored += 1;
            continue;
        };
        if let Event::Message(m) = &envelope.event {
            let newest = plan.summaries.get(&envelope.conversation_id).is_none_or(|s| s.seq < m.seq);
            if newest {
                plan.summaries.insert(
                    envelope.conversation_id.clone(),
                    Summary {
                        record_id: id.clone(),
                        seq: m.seq,
                        message_id: m.message_id.clone(),
                        sender: m.sender.clone(),
                        preview: chat_proto::envelope::preview(&m.body),
                        sent_at_ms: envelope.at_ms,
                    },
                );
            }
        }
        plan.items.push((id, item));
    }
    plan
}

/// The response Lambda expects: the ids of the records to retry.
pub fn response(failed: impl IntoIterator<Item = String>) -> SqsBatchResponse {
    let mut seen = HashSet::new();
    let mut out = SqsBatchResponse::default();
    for id in failed {
        if seen.insert(id.clone()) {
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id;
            out.batch_item_failures.push(failure);
        }
    }
    out
}

/// Key of an item, to match unprocessed writes back to records.
fn item_key(item: &Item) -> Option<(String, String)> {
    Some((item.get("conversation_id")?.as_s().ok()?.clone(), item.get("seq")?.as_n().ok()?.clone()))
}

/// Writes one chunk of at most 25 items; returns the record ids whose items
/// could not be written, and the number of write calls made.
async fn write_chunk(clients: &Clients, chunk: &[(String, Item)]) -> (Vec<String>, usize) {
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
            clients.dynamo.batch_write_item().request_items(&clients.tables.messages, requests.clone()).send().await;
        match out {
            Ok(out) => {
                requests =
                    out.unprocessed_items().and_then(|u| u.get(&clients.tables.messages)).cloned().unwrap_or_default();
                if requests.is_empty() {
                    return (Vec::new(), calls);
                }
                tracing::warn!(attempt, unprocessed = requests.len(), "DynamoDB returned unprocessed items");
            }
            Err(e) => tracing::warn!(attempt, error = ?e, "BatchWriteItem failed"),
        }
        tokio::time::sleep(backoff).await;
        backoff *= 2;
    }
    let unwritten = requests
        .iter()
        .filter_map(|r| r.put_request().and_then(|p| item_key(p.item())))
        .filter_map(|k| by_key.get(&k).map(|id| (*id).clone()))
        .collect();
    (unwritten, calls)
}

/// Moves a conversation's summary forward to `summary` (never backward).
async fn update_summary(clients: &Clients, conversation_id: &str, summary: &Summary) -> Result<(), String> {
    let result = clients
        .dynamo
        .update_item()
        .table_name(&clients.tables.conversations)
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
    match result {
        Ok(_) => Ok(()),
        Err(e)
            if e.as_service_error().is_some_and(
                aws_sdk_dynamodb::operation::update_item::UpdateItemError::is_conditional_check_failed_exception,
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(format!("{e:?}")),
    }
}

/// The `persist` handler: a plain function of (clients, event).
pub async fn handle(clients: &Clients, event: SqsEvent) -> SqsBatchResponse {
    let plan = plan(&event);
    for (id, reason) in &plan.failed {
        tracing::error!(record_id = id, reason, "record cannot be persisted; it will be retried, then dead-lettered");
    }
    let mut failed: Vec<String> = plan.failed.iter().map(|(id, _)| id.clone()).collect();
    let chunks = plan.items.chunks(WRITE_BATCH_MAX).map(|chunk| write_chunk(clients, chunk));
    let mut unwritten = HashSet::new();
    let mut write_calls = 0;
    for (ids, calls) in futures::future::join_all(chunks).await {
        unwritten.extend(ids);
        write_calls += calls;
    }
    // A summary is updated once its message is written; a failure retries
    // that record, whose rewrite is harmless. Conversations in parallel.
    let updates = plan.summaries.iter().filter(|(_, summary)| !unwritten.contains(&summary.record_id)).map(
        |(conversation_id, summary)| async move {
            let result = update_summary(clients, conversation_id, summary).await;
            (conversation_id, summary, result)
        },
    );
    for (conversation_id, summary, result) in futures::future::join_all(updates).await {
        write_calls += 1;
        if let Err(e) = result {
            tracing::warn!(conversation_id, error = e, "conversation summary update failed");
            failed.push(summary.record_id.clone());
        }
    }
    // One member's receipts in the order they happened (a watermark takes
    // the first step covering a seq, so an earlier receipt recorded after a
    // later one would lose its time); members in parallel.
    let mut by_member: BTreeMap<(&str, &str), Vec<&PlannedReceipt>> = BTreeMap::new();
    for planned in &plan.receipts {
        by_member.entry((planned.1.as_str(), planned.2.user_id.as_str())).or_default().push(planned);
    }
    let receipts: Vec<Vec<(&String, Result<bool, gateway::store::StoreError>)>> =
        futures::stream::iter(by_member.into_values())
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
    tracing::info!(
        records = event.records.len(),
        written = plan.items.len() - unwritten.len(),
        receipts = plan.receipts.len(),
        failed = failed.len() + unwritten.len(),
        ignored = plan.ignored,
        write_calls,
        "persist batch done"
    );
    failed.extend(unwritten);
    response(failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lambda_events::event::sqs::SqsMessage;
    use chat_proto::envelope::MessageEvent;

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

    fn event(records: Vec<SqsMessage>) -> SqsEvent {
        let mut e = SqsEvent::default();
        e.records = records;
        e
    }

    #[test]
    fn plan_separates_good_bad_and_ignored_records() {
        let typing =
            Envelope::new("t".into(), "r".into(), "gw".into(), 1, Event::Typing { user_id: "a".into(), typing: true });
        let plan = plan(&event(vec![
            record("1", &message("r", 1, "one")),
            record("2", "not json"),
            record("3", &message("r", 3, "three")),
            record("4", &typing.encode()),
            record("5", &message("q", 7, &"x".repeat(500))),
            record("6", &message("r", 2, "two")),
        ]));
        let ids: Vec<&str> = plan.items.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, vec!["1", "3", "5", "6"]);
        assert_eq!(plan.failed.len(), 1);
        assert_eq!(plan.failed[0].0, "2");
        assert_eq!(plan.ignored, 1);
        assert_eq!(plan.summaries["r"].seq, 3, "the newest, not the last in the batch");
        assert_eq!(plan.summaries["q"].preview.chars().count(), chat_proto::envelope::PREVIEW_CHARS);
    }

    #[test]
    fn item_is_keyed_by_conversation_and_seq() {
        let env = Envelope::decode(&message("r", 42, "hello")).expect("decode");
        let item = message_item(&env).expect("item");
        assert_eq!(item["conversation_id"], s("r"));
        assert_eq!(item["seq"], n(42));
        assert_eq!(item["body"], s("hello"));
        assert!(!item.contains_key("client_message_id"));
    }

    #[test]
    fn response_lists_each_failed_record_once() {
        let r = response(vec!["a".to_string(), "b".to_string(), "a".to_string()]);
        let ids: Vec<&str> = r.batch_item_failures.iter().map(|f| f.item_identifier.as_str()).collect();
        assert_eq!(ids, vec!["a", "b"]);
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(json["batchItemFailures"][0]["itemIdentifier"], "a");
    }
}
