//! Function `connector`: delivers messages to members on an external channel
//! (WhatsApp, Instagram, Telegram) through that channel's HTTP API.
//!
//! One function per channel, each behind its own queue: the topic's filter
//! policy on the `channels` attribute sends a channel's queue only the
//! events with a recipient on it, so a slow or failing channel backs up its
//! own queue and never delays the others (no shared pollers, no shared
//! concurrency).
//!
//! Per record: one send per external recipient on this channel (or the one
//! recipient of a fallback request). Sends to one address go in `seq` order;
//! different addresses are sent concurrently. Each send is idempotent: an
//! IN_PROGRESS claim in DynamoDB, then COMPLETED with its outcome, so a
//! redelivered record never sends twice (a crash between the channel
//! accepting and the record completing can still, at worst, send twice after
//! the claim expires: no channel API offers an idempotency key). Throttling,
//! 5xx and timeouts are retried with exponential backoff and full jitter
//! while the invocation's budget lasts, then the record is reported failed
//! (the queue redelivers it and, after `maxReceiveCount`, dead-letters it).
//! A permanent refusal completes the send as FAILED and tells the sender.

pub mod adapters;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use chat_aws::dynamo::connector::{self as records, Begin, Records, Reference, SendOutcome};
use chat_aws::lambda::{Batch, Record};
use chat_core::bus::{Bus, BusError};
use chat_core::clock::now_ms;
use chat_core::envelope::{Envelope, Event, MessageEvent, ReceiptEvent, ReceiptStatus};
use chat_core::external::{Channel, ExternalId};
use futures::StreamExt;
use tracing::Instrument;

use adapters::{Adapter, ApiRequest, SendError, Sent};

/// Addresses served at once in one invocation.
const ADDRESSES_IN_FLIGHT: usize = 16;

/// Backoff between attempts at one send.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
    /// Longest a single API call may take.
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { base: Duration::from_millis(200), cap: Duration::from_secs(5), request_timeout: Duration::from_secs(5) }
    }
}

impl RetryPolicy {
    /// Full jitter: a random wait up to the exponential bound, or the
    /// channel's `retry_after` when it named one (capped).
    pub fn wait(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(wait) = retry_after {
            return wait.min(self.cap);
        }
        let bound = self.base.saturating_mul(2u32.saturating_pow(attempt.min(16))).min(self.cap);
        bound.mul_f64(fastrand::f64())
    }
}

/// The connector's configuration, shared by its Lambda binary and the local
/// runner.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectorArgs {
    /// The channel this function instance serves.
    #[arg(long, env = "CHAT_CHANNEL", value_parser = parse_channel)]
    pub channel: Channel,
    #[command(flatten)]
    pub apis: adapters::ChannelApis,
    /// DynamoDB table of idempotency records and channel message ids.
    #[arg(long, env = "CHAT_CONNECTOR_TABLE", default_value = "chat-connector")]
    pub connector_table: String,
    /// The topic receipts are published to.
    #[arg(long, env = "CHAT_TOPIC_ARN")]
    pub topic_arn: String,
    /// Longest one API call may take, in milliseconds.
    #[arg(long, env = "CHAT_CONNECTOR_REQUEST_TIMEOUT_MS", default_value_t = 5000)]
    pub request_timeout_ms: u64,
    /// The queue's `maxReceiveCount`: on a record's last receive, a send
    /// that still fails is reported FAILED before the record is
    /// dead-lettered.
    #[arg(long, env = "CHAT_CONNECTOR_MAX_RECEIVE_COUNT", default_value_t = 5)]
    pub max_receive_count: u32,
}

pub fn parse_channel(name: &str) -> Result<Channel, String> {
    Channel::parse(name).ok_or_else(|| format!("unknown channel {name:?}: use whatsapp, instagram or telegram"))
}

impl ConnectorArgs {
    pub fn build(self, sdk: &aws_config::SdkConfig) -> anyhow::Result<Connector> {
        let retry =
            RetryPolicy { request_timeout: Duration::from_millis(self.request_timeout_ms), ..RetryPolicy::default() };
        Ok(Connector {
            adapter: Adapter::new(self.channel, self.apis),
            http: reqwest::Client::builder().connect_timeout(Duration::from_secs(3)).build()?,
            records: Records::new(crate::dynamodb(sdk), self.connector_table),
            bus: Arc::new(chat_aws::sns::SnsPublisher::new(crate::sns(sdk), self.topic_arn)),
            retry,
            max_receive_count: self.max_receive_count,
        })
    }
}

/// What `connector` needs: built once per process.
#[derive(Debug, Clone)]
pub struct Connector {
    pub adapter: Adapter,
    pub http: reqwest::Client,
    pub records: Records,
    pub bus: Arc<dyn Bus>,
    pub retry: RetryPolicy,
    pub max_receive_count: u32,
}

/// One send to one external address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub record_id: String,
    pub conversation_id: String,
    pub message: MessageEvent,
    /// The external identity sent to (`whatsapp:+55...`).
    pub recipient: String,
    /// Its address on the channel.
    pub address: String,
    /// Whose receipts the outcome is: the external member, or the internal
    /// user a fallback is for.
    pub receipt_user: String,
    pub text: String,
    /// A fallback for an internal member: its failure is not theirs to
    /// see as FAILED (they may still read it in the app).
    pub fallback: bool,
    /// How many times the queue has handed this record out.
    pub receive_count: u32,
    /// The record's trace context: the channel call continues it.
    pub trace: Option<String>,
}

/// A batch turned into sends, before any I/O.
#[derive(Debug, Default)]
pub struct Plan {
    pub jobs: Vec<Job>,
    /// Records with nothing for this channel.
    pub ignored: usize,
}

/// The sends this channel owes for a batch's decoded records.
pub fn plan(records: &[Record], channel: Channel) -> Plan {
    let mut plan = Plan::default();
    for Record { id, envelope, receive_count } in records {
        let targets: Vec<(String, String, MessageEvent, String, bool)> = match &envelope.event {
            Event::Message(m) => m
                .external_recipients
                .iter()
                .map(|to| (to.clone(), to.clone(), m.clone(), format!("{}: {}", m.sender, m.body), false))
                .collect(),
            Event::Fallback(f) => {
                let text = format!("{} in {}: {}", f.message.sender, envelope.conversation_id, f.message.body);
                vec![(f.to.clone(), f.user_id.clone(), f.message.clone(), text, true)]
            }
            _ => Vec::new(),
        };
        let before = plan.jobs.len();
        for (recipient, receipt_user, message, text, fallback) in targets {
            match ExternalId::parse(&recipient) {
                Ok(Some(external)) if external.channel == channel => plan.jobs.push(Job {
                    record_id: id.clone(),
                    conversation_id: envelope.conversation_id.clone(),
                    message,
                    recipient,
                    address: external.address,
                    receipt_user,
                    text,
                    fallback,
                    receive_count: *receive_count,
                    trace: envelope.trace.clone(),
                }),
                Ok(_) => {}
                Err(e) => tracing::warn!(recipient, error = e, "malformed external recipient skipped"),
            }
        }
        if plan.jobs.len() == before {
            plan.ignored += 1;
        }
    }
    plan
}

/// How one send ended for this invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Done {
    /// Sent, or failed for good and reported: the record may go.
    Settled,
    /// Try the record again later.
    Retry(String),
}

/// The `connector` handler: a plain function of (connector, event,
/// invocation deadline).
pub async fn handle(connector: &Connector, event: SqsEvent, deadline: Instant) -> SqsBatchResponse {
    let channel = connector.adapter.channel;
    let batch = Batch::decode(&event);
    let batch_span = if service::telemetry::enabled() {
        let span = tracing::info_span!(
            "connector.batch",
            channel = channel.as_str(),
            records = batch.records.len(),
            trace_id = tracing::field::Empty
        );
        service::telemetry::record_trace_id(&span);
        for parent in batch.records.iter().filter_map(|r| r.envelope.trace.as_deref()) {
            service::telemetry::add_link(&span, parent);
        }
        span
    } else {
        tracing::Span::none()
    };
    let plan = plan(&batch.records, channel);
    let mut by_address: BTreeMap<String, Vec<Job>> = BTreeMap::new();
    for job in plan.jobs {
        by_address.entry(job.address.clone()).or_default().push(job);
    }
    let sends = by_address.values_mut().count();
    let results: Vec<Vec<(String, Done)>> = futures::stream::iter(by_address.into_values())
        .map(|mut jobs| async move {
            jobs.sort_by_key(|j| j.message.seq);
            let mut results = Vec::with_capacity(jobs.len());
            let mut blocked: Option<String> = None;
            for job in jobs {
                // A later message never overtakes an earlier one to the same
                // address: after one must be retried, the rest wait too.
                let done = match &blocked {
                    Some(reason) => Done::Retry(format!("an earlier message to this address is pending: {reason}")),
                    // Never start a send the invocation may not finish.
                    None if Instant::now() + connector.retry.request_timeout >= deadline => {
                        Done::Retry("invocation budget spent before this send".into())
                    }
                    None => deliver(connector, &job, deadline).instrument(send_span(channel, &job)).await,
                };
                let done = match done {
                    Done::Retry(reason) => give_up_on_last_receive(connector, &job, reason).await,
                    settled => settled,
                };
                if let Done::Retry(reason) = &done {
                    blocked.get_or_insert_with(|| reason.clone());
                }
                results.push((job.record_id, done));
            }
            results
        })
        .buffer_unordered(ADDRESSES_IN_FLIGHT)
        .collect()
        .instrument(batch_span)
        .await;
    let mut failed: Vec<String> = Vec::new();
    let mut retried = 0;
    for (record_id, done) in results.into_iter().flatten() {
        if let Done::Retry(reason) = done {
            tracing::warn!(record_id, reason, channel = channel.as_str(), "send left for a retry");
            retried += 1;
            failed.push(record_id);
        }
    }
    tracing::info!(
        channel = channel.as_str(),
        records = event.records.len(),
        addresses = sends,
        retried,
        ignored = plan.ignored,
        "connector batch done"
    );
    batch.response(failed)
}

/// The span of one send to the channel, a child of the span that published
/// the message (its trace shows the channel call and its outcome).
fn send_span(channel: Channel, job: &Job) -> tracing::Span {
    if !service::telemetry::enabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        parent: None,
        "connector.send",
        channel = channel.as_str(),
        conversation_id = job.conversation_id,
        seq = job.message.seq,
        fallback = job.fallback,
        trace_id = tracing::field::Empty
    );
    service::telemetry::set_parent(&span, job.trace.as_deref());
    span
}

/// A send that will be retried, unless this was the record's last receive:
/// then the sender learns it FAILED (the record still goes to the
/// dead-letter queue, where an operator may redrive it).
async fn give_up_on_last_receive(connector: &Connector, job: &Job, reason: String) -> Done {
    if job.receive_count < connector.max_receive_count || job.fallback {
        return Done::Retry(reason);
    }
    let reason = format!("gave up after {} deliveries: {reason}", job.receive_count);
    count_send(connector.adapter.channel.as_str(), "failed");
    if let Err(e) = publish(connector, job, ReceiptStatus::Failed, &reason).await {
        tracing::warn!(error = %e, "reporting a final failure failed");
    }
    Done::Retry(reason)
}

/// The outcome of a send that is settled: DELIVERED when the channel
/// reports no deliveries itself, FAILED (external members only: a failed
/// fallback leaves the member's own status alone).
async fn report(connector: &Connector, job: &Job, failure: Option<&str>) -> Done {
    let result = match failure {
        Some(_) if job.fallback => Ok(()),
        Some(reason) => publish(connector, job, ReceiptStatus::Failed, reason).await,
        None if connector.adapter.delivered_on_accept() => publish(connector, job, ReceiptStatus::Delivered, "").await,
        None => Ok(()),
    };
    result.map_or_else(|e| Done::Retry(format!("publishing a receipt: {e}")), |()| Done::Settled)
}

async fn deliver(connector: &Connector, job: &Job, deadline: Instant) -> Done {
    let channel = connector.adapter.channel.as_str();
    let key = records::idempotency_key(channel, &job.message.message_id, &job.recipient, &job.receipt_user);
    let now_ms = now_ms();
    let lock_until =
        now_ms + i64::try_from(deadline.saturating_duration_since(Instant::now()).as_millis()).unwrap_or(0);
    match connector.records.begin(&key, now_ms, lock_until).await {
        Err(e) => return Done::Retry(e.to_string()),
        Ok(Begin::InProgress) => return Done::Retry("another invocation is sending it".into()),
        // Sent before; its receipt may not have gone out: say it again
        // (receipts are idempotent).
        Ok(Begin::Completed(SendOutcome::Sent)) => return report(connector, job, None).await,
        Ok(Begin::Completed(SendOutcome::Failed { reason })) => return report(connector, job, Some(&reason)).await,
        Ok(Begin::Acquired) => {}
    }
    let outcome = match connector.adapter.request(&job.address, &job.text, &job.message.message_id) {
        Ok(request) => send_with_retries(connector, &request, deadline).await,
        Err(e) => Err(e),
    };
    match outcome {
        Ok(sent) => {
            let reference = Reference {
                conversation_id: job.conversation_id.clone(),
                seq: job.message.seq,
                message_id: job.message.message_id.clone(),
                user_id: job.receipt_user.clone(),
                trace: job.trace.clone(),
            };
            // The channel has the message: whatever happens to the
            // bookkeeping, it is never sent again (a failure here costs
            // receipts for this message, not a duplicate).
            let recorded = connector
                .records
                .complete_sent(&key, &job.recipient, &sent.channel_message_id, &reference, now_ms)
                .await;
            if let Err(e) = recorded {
                tracing::error!(channel, recipient = job.recipient, error = %e, "sent, but recording it failed");
            }
            tracing::info!(
                channel,
                conversation_id = job.conversation_id,
                seq = job.message.seq,
                recipient = job.recipient,
                channel_message_id = sent.channel_message_id,
                "delivered to channel"
            );
            count_send(channel, "delivered");
            report(connector, job, None).await
        }
        Err(SendError::Permanent { reason }) => {
            tracing::warn!(
                channel,
                recipient = job.recipient,
                seq = job.message.seq,
                reason,
                "channel refused the message"
            );
            count_send(channel, "failed");
            if let Err(e) = connector.records.complete_failed(&key, &reason, now_ms).await {
                return Done::Retry(e.to_string());
            }
            report(connector, job, Some(&reason)).await
        }
        Err(SendError::Retryable { reason, .. }) => {
            count_send(channel, "retried");
            if let Err(e) = connector.records.release(&key).await {
                tracing::warn!(error = %e, "releasing a send failed; it is retried once its claim expires");
            }
            Done::Retry(reason)
        }
    }
}

/// Calls the channel until it answers for good or the budget runs out.
async fn send_with_retries(connector: &Connector, request: &ApiRequest, deadline: Instant) -> Result<Sent, SendError> {
    let retry = connector.retry;
    let mut attempt = 0;
    loop {
        let result = call(connector, request).await;
        let (reason, retry_after) = match result {
            Err(SendError::Retryable { reason, retry_after }) => (reason, retry_after),
            other => return other,
        };
        let wait = retry.wait(attempt, retry_after);
        attempt += 1;
        // Another attempt only if it can finish inside the invocation.
        if Instant::now() + wait + retry.request_timeout >= deadline {
            return Err(SendError::Retryable {
                reason: format!("{reason} (gave up after {attempt} attempts: invocation budget)"),
                retry_after,
            });
        }
        tracing::debug!(attempt, reason, wait_ms = wait.as_millis() as u64, "retrying a send");
        metrics::counter!("chat_connector_retries_total", "channel" => connector.adapter.channel.as_str()).increment(1);
        tokio::time::sleep(wait).await;
    }
}

/// One send's end in this invocation, by channel: `delivered`, `failed`
/// (refused for good, or given up on at the last receive) or `retried`
/// (left for the record's next receive). The connector alarm's FAILED rate
/// is `failed / (delivered + failed)`.
fn count_send(channel: &'static str, outcome: &'static str) {
    metrics::counter!("chat_connector_sends_total", "channel" => channel, "outcome" => outcome).increment(1);
}

async fn call(connector: &Connector, request: &ApiRequest) -> Result<Sent, SendError> {
    let started = Instant::now();
    let result = call_once(connector, request).await;
    metrics::histogram!("chat_connector_request_seconds", "channel" => connector.adapter.channel.as_str())
        .record(started.elapsed().as_secs_f64());
    result
}

async fn call_once(connector: &Connector, request: &ApiRequest) -> Result<Sent, SendError> {
    let mut builder = connector
        .http
        .post(&request.url)
        .timeout(connector.retry.request_timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(request.body.clone());
    if let Some(token) = &request.bearer {
        builder = builder.bearer_auth(token);
    }
    let response = builder.send().await.map_err(|e| SendError::Retryable {
        reason: if e.is_timeout() {
            "the channel did not answer in time".into()
        } else {
            format!("request failed: {e}")
        },
        retry_after: None,
    })?;
    let status = response.status().as_u16();
    let retry_after =
        response.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = response
        .bytes()
        .await
        .map_err(|e| SendError::Retryable { reason: format!("reading the answer failed: {e}"), retry_after: None })?;
    connector.adapter.outcome(status, &body, retry_after.as_deref())
}

async fn publish(connector: &Connector, job: &Job, status: ReceiptStatus, reason: &str) -> Result<(), BusError> {
    let channel = connector.adapter.channel.as_str();
    let receipt = ReceiptEvent {
        user_id: job.receipt_user.clone(),
        status,
        up_to_seq: job.message.seq,
        message_id: job.message.message_id.clone(),
        reason: reason.to_owned(),
        via: channel.to_owned(),
        recorded: false,
    };
    let envelope = Envelope::new(
        ulid::Ulid::new().to_string(),
        job.conversation_id.clone(),
        format!("connector-{channel}"),
        now_ms(),
        Event::Receipt(receipt),
    )
    // Inside the send's span: the receipt continues the message's trace.
    .traced(service::telemetry::traceparent(&tracing::Span::current()));
    connector.bus.publish(&[envelope]).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lambda_events::event::sqs::SqsMessage;
    use chat_core::envelope::FallbackEvent;

    /// On Lambda, sends are counted as EMF documents in the namespace and
    /// with exactly the dimensions the template's FAILED-rate alarm reads
    /// (`channel`, `outcome`): any other dimension and the alarm sees
    /// nothing. (The only test in this binary that installs a recorder.)
    #[test]
    fn sends_are_counted_as_the_failed_rate_alarm_reads_them() {
        let collector = metrics_cloudwatch_embedded::Builder::new()
            .cloudwatch_namespace(crate::METRICS_NAMESPACE)
            .init()
            .expect("the EMF recorder installs");
        count_send("telegram", "failed");
        count_send("telegram", "failed");
        count_send("telegram", "delivered");
        let mut out = Vec::new();
        collector.flush(&mut out).expect("flushed");
        let documents: Vec<serde_json::Value> = String::from_utf8(out)
            .expect("utf-8")
            .lines()
            .map(|line| serde_json::from_str(line).expect("an EMF document per line"))
            .collect();
        let failed = documents
            .iter()
            .find(|d| d["channel"] == "telegram" && d["outcome"] == "failed")
            .expect("a document for telegram/failed");
        let declared = &failed["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(declared["Namespace"], "ChatPlatform");
        assert_eq!(declared["Dimensions"], serde_json::json!([["channel", "outcome"]]));
        assert_eq!(declared["Metrics"][0]["Name"], "chat_connector_sends_total");
        assert_eq!(failed["chat_connector_sends_total"], 2);
    }

    fn record(id: &str, envelope: &Envelope) -> SqsMessage {
        let mut m = SqsMessage::default();
        m.message_id = Some(id.into());
        m.body = Some(envelope.encode());
        m
    }

    fn message(seq: u64, recipients: &[&str]) -> MessageEvent {
        MessageEvent {
            message_id: format!("m{seq}"),
            seq,
            sender: "alice".into(),
            body: "hello".into(),
            client_message_id: String::new(),
            external_recipients: recipients.iter().map(|r| r.to_string()).collect(),
        }
    }

    fn envelope(event: Event) -> Envelope {
        Envelope::new("e".into(), "room".into(), "gw".into(), 1, event)
    }

    #[test]
    fn plan_takes_only_this_channels_recipients() {
        let mut event = SqsEvent::default();
        event.records = vec![
            record("1", &envelope(Event::Message(message(1, &["whatsapp:+5511999990000", "telegram:42"])))),
            record("2", &envelope(Event::Message(message(2, &["telegram:42"])))),
            record(
                "3",
                &envelope(Event::Fallback(FallbackEvent {
                    user_id: "bob".into(),
                    to: "whatsapp:+5511999990001".into(),
                    message: message(3, &[]),
                })),
            ),
            {
                let mut poison = SqsMessage::default();
                poison.message_id = Some("4".into());
                poison.body = Some("{not json".into());
                poison
            },
        ];
        let batch = Batch::decode(&event);
        let plan = plan(&batch.records, Channel::WhatsApp);
        let jobs: Vec<(&str, &str, &str)> =
            plan.jobs.iter().map(|j| (j.record_id.as_str(), j.address.as_str(), j.receipt_user.as_str())).collect();
        assert_eq!(jobs, vec![("1", "+5511999990000", "whatsapp:+5511999990000"), ("3", "+5511999990001", "bob")]);
        assert_eq!(plan.jobs[0].text, "alice: hello");
        assert_eq!(plan.jobs[1].text, "alice in room: hello");
        assert_eq!(plan.ignored, 1);
        assert_eq!(batch.undecodable.len(), 1);
    }

    #[test]
    fn backoff_is_bounded_and_honours_retry_after() {
        let policy = RetryPolicy::default();
        for attempt in 0..20 {
            assert!(policy.wait(attempt, None) <= policy.cap);
        }
        assert_eq!(policy.wait(0, Some(Duration::from_secs(2))), Duration::from_secs(2));
        assert_eq!(policy.wait(0, Some(Duration::from_secs(60))), policy.cap);
    }
}
