//! The emulator's raw capacity, the second baseline of `make bench`: SNS
//! `Publish` → SQS long-poll receive through the same SDK, with no gateway.
//! `queues` queues are subscribed like gateways' (raw delivery, the same
//! policy), each drained by `pollers` loops receiving ten at a time and
//! deleting in batches, as a gateway does. A message's latency is from just
//! before its `Publish` to its receive, at every queue.
//!
//! [`RawMode::LikeASend`] makes the emulator calls a gateway's send makes,
//! without the gateway: the seq counter's `UpdateItem`, then a `Publish` of a
//! message envelope with its routing attributes (which the topic also fans
//! out to the functions' queues). The gateway's own cost is what it adds to
//! that.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
use chat_aws::dynamo::DynamoStore;
use chat_aws::queue::GatewayQueue;
use chat_aws::sns::SnsPublisher;
use chat_core::bus::Bus;
use chat_core::envelope::{Envelope, Event, MessageEvent};
use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;

use crate::emulator::Emulator;

/// What each raw message costs the emulator.
#[derive(Debug, Clone)]
pub enum RawMode {
    /// `Publish` → receive only, with an attribute no other subscription
    /// takes.
    Bare,
    /// The calls of a gateway's send, through the gateway's store.
    LikeASend { store: DynamoStore },
}

impl RawMode {
    pub fn label(&self) -> &'static str {
        match self {
            RawMode::Bare => "emulator-raw",
            RawMode::LikeASend { .. } => "emulator-raw-send",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RawResult {
    pub label: &'static str,
    pub queues: usize,
    pub messages: u64,
    pub rate: f64,
    pub expected: u64,
    pub received: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub deliveries_per_s: f64,
    /// SQS requests (receives, empty or not, and deletes) per message
    /// received, per queue.
    pub sqs_calls_per_delivery: f64,
}

pub const RAW_CSV_HEADER: &str =
    "label,queues,messages,rate,expected,received,p50_ms,p95_ms,p99_ms,max_ms,deliveries_per_s,sqs_calls_per_delivery";

impl RawResult {
    pub fn csv_row(&self) -> String {
        format!(
            "{},{},{},{},{},{},{:.3},{:.3},{:.3},{:.3},{:.1},{:.3}",
            self.label,
            self.queues,
            self.messages,
            self.rate,
            self.expected,
            self.received,
            self.p50_ms,
            self.p95_ms,
            self.p99_ms,
            self.max_ms,
            self.deliveries_per_s,
            self.sqs_calls_per_delivery
        )
    }

    pub fn summary(&self) -> String {
        format!(
            "{} queues={} messages={} rate={}/s received={}/{} p50={:.2}ms p95={:.2}ms p99={:.2}ms max={:.2}ms {:.0} deliveries/s {:.3} SQS calls/delivery",
            self.label,
            self.queues,
            self.messages,
            self.rate,
            self.received,
            self.expected,
            self.p50_ms,
            self.p95_ms,
            self.p99_ms,
            self.max_ms,
            self.deliveries_per_s,
            self.sqs_calls_per_delivery
        )
    }
}

struct Tally {
    histogram: Histogram<u64>,
    seen: HashSet<(usize, u64)>,
    calls: u64,
    last: Instant,
}

/// Publishes `messages` at `rate` per second to the stack's topic and
/// receives them on `queues` fresh queues.
#[allow(clippy::too_many_arguments)]
pub async fn measure(
    mode: &RawMode,
    emulator: &Emulator,
    topic_arn: &str,
    queue_prefix: &str,
    queues: usize,
    pollers: usize,
    messages: u64,
    rate: f64,
) -> anyhow::Result<RawResult> {
    anyhow::ensure!(
        queues > 0 && pollers > 0 && messages > 0 && rate > 0.0,
        "queues, pollers, messages and rate must be positive"
    );
    let sdk = emulator.sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let sns = aws_sdk_sns::Client::new(&sdk);
    let publisher = SnsPublisher::new(sns.clone(), topic_arn.to_owned());
    let mut created = Vec::with_capacity(queues);
    for q in 0..queues {
        let name = format!("{queue_prefix}raw{q}-{}", crate::unique(""));
        created.push(
            GatewayQueue::create(sqs.clone(), sns.clone(), topic_arn, &name, &name, None, None)
                .await
                .with_context(|| format!("creating raw queue {name}"))?,
        );
    }
    let epoch = Instant::now();
    let tally = Arc::new(Mutex::new(Tally {
        histogram: Histogram::new_with_bounds(1, 600_000_000, 3)?,
        seen: HashSet::new(),
        calls: 0,
        last: epoch,
    }));
    let stop = CancellationToken::new();
    let mut loops = Vec::new();
    for (q, queue) in created.iter().enumerate() {
        for _ in 0..pollers {
            let (sqs, url, tally, stop) = (sqs.clone(), queue.queue_url.clone(), Arc::clone(&tally), stop.clone());
            loops.push(tokio::spawn(async move {
                loop {
                    let receive = sqs
                        .receive_message()
                        .queue_url(&url)
                        .max_number_of_messages(10)
                        .wait_time_seconds(chat_aws::queue::POLL_WAIT_SECS)
                        .send();
                    let out = tokio::select! {
                        () = stop.cancelled() => return,
                        r = receive => r,
                    };
                    let received_at = epoch.elapsed();
                    let Ok(out) = out else { continue };
                    let messages = out.messages.unwrap_or_default();
                    let mut deletes = Vec::new();
                    {
                        let mut t = tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        t.calls += 1;
                        for (i, m) in messages.iter().enumerate() {
                            let parsed = m.body().map(stamp).and_then(|b| b.split_once(':')).and_then(|(n, nanos)| {
                                Some((n.parse::<u64>().ok()?, Duration::from_nanos(nanos.parse().ok()?)))
                            });
                            if let Some((n, sent)) = parsed
                                && t.seen.insert((q, n))
                            {
                                let micros = received_at.saturating_sub(sent).as_micros();
                                t.histogram.saturating_record(u64::try_from(micros).unwrap_or(u64::MAX).max(1));
                                t.last = Instant::now();
                            }
                            if let Some(handle) = m.receipt_handle()
                                && let Ok(entry) = DeleteMessageBatchRequestEntry::builder()
                                    .id(i.to_string())
                                    .receipt_handle(handle)
                                    .build()
                            {
                                deletes.push(entry);
                            }
                        }
                        if !deletes.is_empty() {
                            t.calls += 1;
                        }
                    }
                    if !deletes.is_empty() {
                        let _ = sqs.delete_message_batch().queue_url(&url).set_entries(Some(deletes)).send().await;
                    }
                }
            }));
        }
    }
    let start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate);
    let publish_start = tokio::time::Instant::now();
    for n in 0..messages {
        tokio::time::sleep_until(publish_start + period.mul_f64(n as f64)).await;
        let body = format!("{n}:{}", epoch.elapsed().as_nanos());
        match mode {
            RawMode::Bare => {
                sns.publish()
                    .topic_arn(topic_arn)
                    .message(body)
                    .message_attributes(
                        "kind",
                        aws_sdk_sns::types::MessageAttributeValue::builder()
                            .data_type("String")
                            .string_value("bench")
                            .build()?,
                    )
                    .send()
                    .await
                    .context("SNS Publish")?;
            }
            RawMode::LikeASend { store } => {
                let conversation_id = format!("raw-{}", n % 10);
                let seq = store.next_seq(&conversation_id, 0).await.context("allocating seq")?.seq;
                let id = ulid::Ulid::new().to_string();
                let envelope = Envelope::new(
                    id.clone(),
                    conversation_id,
                    "raw".into(),
                    0,
                    Event::Message(MessageEvent {
                        message_id: id,
                        seq,
                        sender: "raw".into(),
                        body,
                        client_message_id: String::new(),
                        external_recipients: Vec::new(),
                    }),
                );
                publisher.publish(std::slice::from_ref(&envelope)).await.context("SNS Publish")?;
            }
        }
    }
    let expected = messages * queues as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let received = tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner).seen.len() as u64;
        if received >= expected || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    for l in loops {
        let _ = l.await;
    }
    for queue in &created {
        queue.delete().await;
    }
    let t = tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let received = t.seen.len() as u64;
    let window = t.last.duration_since(start).as_secs_f64().max(messages as f64 / rate);
    let ms = |q: f64| t.histogram.value_at_quantile(q) as f64 / 1000.0;
    Ok(RawResult {
        label: mode.label(),
        queues,
        messages,
        rate,
        expected,
        received,
        p50_ms: ms(0.5),
        p95_ms: ms(0.95),
        p99_ms: ms(0.99),
        max_ms: t.histogram.max() as f64 / 1000.0,
        deliveries_per_s: received as f64 / window,
        sqs_calls_per_delivery: if received > 0 { t.calls as f64 / received as f64 } else { 0.0 },
    })
}

/// The `n:nanos` stamp a raw message carries: the body itself, or the body
/// of the message envelope it was published in.
fn stamp(body: &str) -> &str {
    match body.starts_with('{') {
        // Borrowing from a decoded envelope would outlive it; find the field.
        true => body.split("\"body\":\"").nth(1).and_then(|rest| rest.split('"').next()).unwrap_or(body),
        false => body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_stamp_from_a_bare_body_or_an_envelope() {
        assert_eq!(stamp("7:123"), "7:123");
        let envelope = Envelope::new(
            "id".into(),
            "c".into(),
            "raw".into(),
            0,
            Event::Message(MessageEvent {
                message_id: "id".into(),
                seq: 1,
                sender: "raw".into(),
                body: "7:123".into(),
                client_message_id: String::new(),
                external_recipients: Vec::new(),
            }),
        );
        assert_eq!(stamp(&envelope.encode()), "7:123");
    }
}
