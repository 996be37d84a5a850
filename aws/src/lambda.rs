//! A Lambda's SQS batch, in the shape of the runtime's partial-batch
//! handlers: every record's envelope is decoded once here, the handler works
//! on the decoded records, and only the records that failed are reported
//! (`batchItemFailures`), so one bad record never fails its batch-mates. A
//! record that cannot be decoded fails alone: the queue redelivers it and,
//! after `maxReceiveCount`, dead-letters it.

use std::collections::HashSet;
use std::fmt::Display;
use std::future::Future;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use chat_core::envelope::Envelope;
use futures::StreamExt;

/// One decoded record of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The SQS message id: what a failure report names.
    pub id: String,
    pub envelope: Envelope,
    /// How many times the queue has handed this record out (1 on the first).
    pub receive_count: u32,
}

/// A batch as its handler sees it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    pub records: Vec<Record>,
    /// Records that could not be decoded, with why; they are failed.
    pub undecodable: Vec<(String, String)>,
}

impl Batch {
    /// Decodes every record of `event`.
    pub fn decode(event: &SqsEvent) -> Self {
        let mut batch = Batch::default();
        for (index, record) in event.records.iter().enumerate() {
            let id = record.message_id.clone().unwrap_or_else(|| format!("record-{index}"));
            let decoded = match record.body.as_deref() {
                Some(body) => Envelope::decode(body).map_err(|e| e.to_string()),
                None => Err("record has no body".to_owned()),
            };
            match decoded {
                Ok(envelope) => {
                    let receive_count =
                        record.attributes.get("ApproximateReceiveCount").and_then(|c| c.parse().ok()).unwrap_or(1);
                    batch.records.push(Record { id, envelope, receive_count });
                }
                Err(reason) => {
                    tracing::error!(
                        record_id = id,
                        reason,
                        "undecodable record; it will be retried, then dead-lettered"
                    );
                    batch.undecodable.push((id, reason));
                }
            }
        }
        batch
    }

    /// The response Lambda expects: the undecodable records and `failed`,
    /// each once.
    pub fn response(&self, failed: impl IntoIterator<Item = String>) -> SqsBatchResponse {
        response(self.undecodable.iter().map(|(id, _)| id.clone()).chain(failed))
    }
}

/// The response Lambda expects: the ids of the records to retry, each once.
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

/// Runs `handle` on each decoded record, up to `concurrency` at once, and
/// reports those whose handling failed (logged with their error).
pub async fn for_each_record<F, Fut, E>(event: &SqsEvent, concurrency: usize, handle: F) -> SqsBatchResponse
where
    F: Fn(Record) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    let Batch { records, undecodable } = Batch::decode(event);
    let failed: Vec<String> = futures::stream::iter(records)
        .map(|record| {
            let id = record.id.clone();
            let handled = handle(record);
            async move {
                match handled.await {
                    Ok(()) => None,
                    Err(e) => {
                        tracing::warn!(record_id = id, error = %e, "record failed; it will be retried");
                        Some(id)
                    }
                }
            }
        })
        .buffer_unordered(concurrency.max(1))
        .filter_map(std::future::ready)
        .collect()
        .await;
    Batch { records: Vec::new(), undecodable }.response(failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lambda_events::event::sqs::SqsMessage;
    use chat_core::envelope::Event;

    fn record(id: &str, body: Option<&str>, receive_count: Option<&str>) -> SqsMessage {
        let mut m = SqsMessage::default();
        m.message_id = Some(id.into());
        m.body = body.map(str::to_owned);
        if let Some(count) = receive_count {
            m.attributes.insert("ApproximateReceiveCount".into(), count.into());
        }
        m
    }

    fn typing(user: &str) -> String {
        Envelope::new("t".into(), "r".into(), "gw".into(), 1, Event::Typing { user_id: user.into(), typing: true })
            .encode()
    }

    fn event(records: Vec<SqsMessage>) -> SqsEvent {
        let mut e = SqsEvent::default();
        e.records = records;
        e
    }

    #[test]
    fn decodes_good_records_and_fails_bad_ones_alone() {
        let batch = Batch::decode(&event(vec![
            record("1", Some(&typing("a")), Some("3")),
            record("2", Some("not json"), None),
            record("3", None, None),
            record("4", Some(&typing("b")), None),
        ]));
        let ids: Vec<(&str, u32)> = batch.records.iter().map(|r| (r.id.as_str(), r.receive_count)).collect();
        assert_eq!(ids, vec![("1", 3), ("4", 1)]);
        let bad: Vec<&str> = batch.undecodable.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(bad, vec!["2", "3"]);
        let response = batch.response(vec!["4".to_string(), "2".to_string()]);
        let reported: Vec<&str> = response.batch_item_failures.iter().map(|f| f.item_identifier.as_str()).collect();
        assert_eq!(reported, vec!["2", "3", "4"]);
    }

    #[test]
    fn response_lists_each_failed_record_once() {
        let r = response(vec!["a".to_string(), "b".to_string(), "a".to_string()]);
        let ids: Vec<&str> = r.batch_item_failures.iter().map(|f| f.item_identifier.as_str()).collect();
        assert_eq!(ids, vec!["a", "b"]);
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(json["batchItemFailures"][0]["itemIdentifier"], "a");
    }

    #[tokio::test]
    async fn for_each_record_reports_only_what_failed() {
        let e = event(vec![
            record("1", Some(&typing("ok")), None),
            record("2", Some(&typing("boom")), None),
            record("3", Some("{"), None),
        ]);
        let response = for_each_record(&e, 4, |record| async move {
            match &record.envelope.event {
                Event::Typing { user_id, .. } if user_id == "boom" => Err("injected"),
                _ => Ok(()),
            }
        })
        .await;
        let mut reported: Vec<&str> = response.batch_item_failures.iter().map(|f| f.item_identifier.as_str()).collect();
        reported.sort();
        assert_eq!(reported, vec!["2", "3"]);
    }

    mod props {
        use super::*;
        use chat_core::envelope::MessageEvent;
        use proptest::prelude::*;

        /// Any text, kept short: edge cases are in the characters, not the length.
        fn text() -> impl Strategy<Value = String> {
            prop::collection::vec(any::<char>(), 0..24).prop_map(String::from_iter)
        }

        fn envelope() -> impl Strategy<Value = Envelope> {
            let event = prop_oneof![
                (text(), any::<bool>()).prop_map(|(user_id, typing)| Event::Typing { user_id, typing }),
                (text(), any::<u64>(), text()).prop_map(|(message_id, seq, body)| {
                    Event::Message(MessageEvent {
                        message_id,
                        seq,
                        sender: "alice".into(),
                        body,
                        client_message_id: String::new(),
                        external_recipients: Vec::new(),
                    })
                }),
            ];
            (text(), text(), any::<i64>(), event).prop_map(|(event_id, conversation_id, at_ms, event)| {
                Envelope::new(event_id, conversation_id, "gw".into(), at_ms, event)
            })
        }

        /// A record's body: an envelope, a valid one cut short, anything,
        /// or none.
        fn body() -> impl Strategy<Value = Option<String>> {
            prop_oneof![
                envelope().prop_map(|e| Some(e.encode())),
                (envelope(), any::<prop::sample::Index>()).prop_map(|(e, at)| {
                    let body = e.encode();
                    Some(String::from_utf8_lossy(&body.as_bytes()[..at.index(body.len())]).into_owned())
                }),
                text().prop_map(Some),
                Just(None),
            ]
        }

        fn records() -> impl Strategy<Value = Vec<SqsMessage>> {
            let count = prop_oneof![any::<u32>().prop_map(|n| Some(n.to_string())), any::<Option<String>>()];
            let record = (prop::option::of("[a-z0-9-]{1,8}"), body(), count).prop_map(|(id, body, count)| {
                let mut m = SqsMessage::default();
                m.message_id = id;
                m.body = body;
                if let Some(count) = count {
                    m.attributes.insert("ApproximateReceiveCount".into(), count);
                }
                m
            });
            prop::collection::vec(record, 0..8)
        }

        proptest! {
            /// Every record is decoded or failed, in order, under its id;
            /// a decoded record is the envelope that was sent.
            #[test]
            fn every_record_is_decoded_or_failed(records in records(), failed in prop::collection::vec("[a-z0-9-]{1,8}", 0..4)) {
                let batch = Batch::decode(&event(records.clone()));
                let (mut decoded, mut undecodable) = (batch.records.iter(), batch.undecodable.iter());
                for (index, record) in records.iter().enumerate() {
                    let id = record.message_id.clone().unwrap_or_else(|| format!("record-{index}"));
                    match record.body.as_deref().map(Envelope::decode) {
                        Some(Ok(envelope)) => {
                            let got = decoded.next().ok_or_else(|| TestCaseError::fail("a record is missing"))?;
                            let count = record.attributes.get("ApproximateReceiveCount").and_then(|c| c.parse().ok());
                            prop_assert_eq!(got, &Record { id, envelope, receive_count: count.unwrap_or(1) });
                        }
                        _ => {
                            let (got, reason) = undecodable.next().ok_or_else(|| TestCaseError::fail("a failure is missing"))?;
                            prop_assert_eq!(got, &id);
                            prop_assert!(!reason.is_empty());
                        }
                    }
                }
                prop_assert!(decoded.next().is_none() && undecodable.next().is_none());
                let reported: Vec<String> =
                    batch.response(failed.clone()).batch_item_failures.into_iter().map(|f| f.item_identifier).collect();
                let mut expected: Vec<String> = Vec::new();
                for id in batch.undecodable.iter().map(|(id, _)| id.clone()).chain(failed) {
                    if !expected.contains(&id) {
                        expected.push(id);
                    }
                }
                prop_assert_eq!(reported, expected);
            }
        }
    }
}
