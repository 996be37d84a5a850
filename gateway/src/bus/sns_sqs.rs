//! The AWS bus: events are published to one SNS topic, which fans out to one
//! SQS queue per gateway instance.
//!
//! - [`SnsPublisher`] publishes envelopes (`Publish`, or `PublishBatch` in
//!   tens) with routing message attributes. The gateway puts it behind a
//!   [`super::batch::BatchingPublisher`], which coalesces concurrent sends.
//! - [`GatewayQueue`] is this gateway's queue: created at start with a policy
//!   that admits only the topic (`aws:SourceArn`), subscribed with raw
//!   delivery, tagged with the instance id and a heartbeat (so a janitor can
//!   reap the queues of crashed gateways), and deleted with its subscription
//!   on a graceful stop.
//! - [`poll`] is one long-poll loop feeding the hub; a gateway runs up to
//!   `--pollers` of them, as many as [`PollerScale`] finds busy.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_sns::types::{MessageAttributeValue, PublishBatchRequestEntry};
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, QueueAttributeName,
};
use chat_proto::envelope::Envelope;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::batch::{BATCH_MAX, BatchSink};
use super::{Bus, BusError};
use crate::hub::Hub;
/// Long-poll wait; the SDK attempt timeout for receives must exceed it.
pub const POLL_WAIT_SECS: i32 = 20;
/// How long a received event stays invisible to the other pollers before SQS
/// offers it again (it is deleted right after dispatch, well inside this).
const VISIBILITY_TIMEOUT_SECS: i32 = 30;
/// Events older than this are of no use to live streams.
const RETENTION_SECS: i32 = 300;

pub const TAG_GATEWAY_ID: &str = "chat:gateway-id";
pub const TAG_HEARTBEAT: &str = "chat:heartbeat";

/// AWS calls this gateway made, for the totals it logs when it stops (the
/// benchmark reads them to report SQS calls per delivered event).
#[derive(Debug, Default)]
pub struct AwsCounters {
    /// SNS requests (`Publish` or `PublishBatch`).
    pub sns_publishes: AtomicU64,
    /// Events those requests carried.
    pub sns_events: AtomicU64,
    pub sqs_receives: AtomicU64,
    pub sqs_empty_receives: AtomicU64,
    pub sqs_messages: AtomicU64,
    pub sqs_delete_batches: AtomicU64,
}

impl AwsCounters {
    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

fn sdk_error<E: std::fmt::Debug>(what: &str, err: E) -> BusError {
    let detail: String = format!("{err:?}").chars().take(400).collect();
    BusError::Publish(format!("{what}: {detail}"))
}

fn attributes(envelope: &Envelope) -> Result<Vec<(String, MessageAttributeValue)>, BusError> {
    envelope
        .attributes()
        .iter()
        .map(|(name, value)| {
            MessageAttributeValue::builder()
                .data_type(value.data_type())
                .string_value(value.string_value())
                .build()
                .map(|v| ((*name).to_owned(), v))
                .map_err(|e| BusError::Publish(format!("message attribute {name}: {e}")))
        })
        .collect()
}

#[derive(Debug, Clone)]
pub struct SnsPublisher {
    sns: aws_sdk_sns::Client,
    topic_arn: String,
    counters: Arc<AwsCounters>,
}

impl SnsPublisher {
    pub fn new(sns: aws_sdk_sns::Client, topic_arn: String) -> Self {
        Self { sns, topic_arn, counters: Arc::default() }
    }

    /// Counts publishes into `counters` (shared with the pollers).
    pub fn counting(self, counters: Arc<AwsCounters>) -> Self {
        Self { counters, ..self }
    }

    async fn publish_one(&self, envelope: &Envelope) -> Result<(), BusError> {
        AwsCounters::add(&self.counters.sns_publishes, 1);
        AwsCounters::add(&self.counters.sns_events, 1);
        self.sns
            .publish()
            .topic_arn(&self.topic_arn)
            .message(envelope.encode())
            .set_message_attributes(Some(attributes(envelope)?.into_iter().collect()))
            .send()
            .await
            .map_err(|e| sdk_error("SNS Publish", e))?;
        Ok(())
    }

    /// One `PublishBatch` of at most ten; an entry SNS reports failed is
    /// retried alone, and its outcome is its own.
    async fn publish_chunk(&self, chunk: &[Envelope]) -> Vec<Result<(), BusError>> {
        let entries = match chunk
            .iter()
            .enumerate()
            .map(|(i, envelope)| {
                PublishBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message(envelope.encode())
                    .set_message_attributes(Some(attributes(envelope)?.into_iter().collect()))
                    .build()
                    .map_err(|e| BusError::Publish(format!("batch entry: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(entries) => entries,
            Err(e) => return vec![Err(e); chunk.len()],
        };
        AwsCounters::add(&self.counters.sns_publishes, 1);
        AwsCounters::add(&self.counters.sns_events, chunk.len());
        let sent = self
            .sns
            .publish_batch()
            .topic_arn(&self.topic_arn)
            .set_publish_batch_request_entries(Some(entries))
            .send()
            .await;
        let out = match sent {
            Ok(out) => out,
            Err(e) => return vec![Err(sdk_error("SNS PublishBatch", e)); chunk.len()],
        };
        let mut outcomes = vec![Ok(()); chunk.len()];
        for entry in out.failed() {
            match entry.id().parse::<usize>().ok().filter(|i| *i < chunk.len()) {
                Some(i) => outcomes[i] = self.publish_one(&chunk[i]).await,
                None => tracing::warn!(id = entry.id(), "PublishBatch reported a failed entry with an unknown id"),
            }
        }
        outcomes
    }
}

#[async_trait]
impl BatchSink for SnsPublisher {
    async fn publish_batch(&self, envelopes: &[Envelope]) -> Vec<Result<(), BusError>> {
        match envelopes {
            [one] => vec![self.publish_one(one).await],
            many => {
                let mut outcomes = Vec::with_capacity(many.len());
                for chunk in many.chunks(BATCH_MAX) {
                    outcomes.extend(self.publish_chunk(chunk).await);
                }
                outcomes
            }
        }
    }
}

#[async_trait]
impl Bus for SnsPublisher {
    async fn publish(&self, events: &[Envelope]) -> Result<(), BusError> {
        self.publish_batch(events).await.into_iter().collect()
    }
}

/// This gateway's queue and its subscription to the topic.
#[derive(Debug, Clone)]
pub struct GatewayQueue {
    sqs: aws_sdk_sqs::Client,
    sns: aws_sdk_sns::Client,
    pub queue_url: String,
    pub queue_arn: String,
    pub subscription_arn: String,
}

/// The queue policy: only the topic may send to the queue.
pub fn queue_policy(queue_arn: &str, topic_arn: &str) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "TopicFanOutOnly",
            "Effect": "Allow",
            "Principal": { "Service": "sns.amazonaws.com" },
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
            "Condition": { "ArnEquals": { "aws:SourceArn": topic_arn } }
        }]
    })
    .to_string()
}

fn epoch_secs() -> String {
    (crate::clock::now_ms() / 1000).to_string()
}

impl GatewayQueue {
    /// Creates the queue, admits the topic and subscribes. On failure after
    /// the queue exists, the queue is deleted again.
    pub async fn create(
        sqs: aws_sdk_sqs::Client,
        sns: aws_sdk_sns::Client,
        topic_arn: &str,
        queue_name: &str,
        gateway_id: &str,
    ) -> Result<Self, BusError> {
        let created = sqs
            .create_queue()
            .queue_name(queue_name)
            .attributes(QueueAttributeName::ReceiveMessageWaitTimeSeconds, POLL_WAIT_SECS.to_string())
            .attributes(QueueAttributeName::VisibilityTimeout, VISIBILITY_TIMEOUT_SECS.to_string())
            .attributes(QueueAttributeName::MessageRetentionPeriod, RETENTION_SECS.to_string())
            .tags(TAG_GATEWAY_ID, gateway_id)
            .tags(TAG_HEARTBEAT, epoch_secs())
            .send()
            .await
            .map_err(|e| sdk_error("SQS CreateQueue", e))?;
        let queue_url =
            created.queue_url().ok_or_else(|| BusError::Publish("CreateQueue returned no URL".into()))?.to_owned();
        let partial = Self { sqs, sns, queue_url, queue_arn: String::new(), subscription_arn: String::new() };
        match partial.admit_and_subscribe(topic_arn).await {
            Ok(queue) => Ok(queue),
            Err(e) => {
                partial.delete().await;
                Err(e)
            }
        }
    }

    async fn admit_and_subscribe(&self, topic_arn: &str) -> Result<Self, BusError> {
        let attrs = self
            .sqs
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| sdk_error("SQS GetQueueAttributes", e))?;
        let queue_arn = attrs
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .ok_or_else(|| BusError::Publish("queue has no ARN".into()))?
            .clone();
        self.sqs
            .set_queue_attributes()
            .queue_url(&self.queue_url)
            .attributes(QueueAttributeName::Policy, queue_policy(&queue_arn, topic_arn))
            .send()
            .await
            .map_err(|e| sdk_error("SQS SetQueueAttributes", e))?;
        let sub = self
            .sns
            .subscribe()
            .topic_arn(topic_arn)
            .protocol("sqs")
            .endpoint(&queue_arn)
            .attributes("RawMessageDelivery", "true")
            .return_subscription_arn(true)
            .send()
            .await
            .map_err(|e| sdk_error("SNS Subscribe", e))?;
        let subscription_arn = sub
            .subscription_arn()
            .ok_or_else(|| BusError::Publish("Subscribe returned no subscription ARN".into()))?
            .to_owned();
        Ok(Self { queue_arn, subscription_arn, ..self.clone() })
    }

    /// Refreshes the heartbeat tag the janitor reads.
    pub async fn heartbeat(&self) -> Result<(), BusError> {
        self.sqs
            .tag_queue()
            .queue_url(&self.queue_url)
            .tags(TAG_HEARTBEAT, epoch_secs())
            .send()
            .await
            .map_err(|e| sdk_error("SQS TagQueue", e))?;
        Ok(())
    }

    /// Unsubscribes and deletes the queue; failures are logged, not returned,
    /// because a stopping gateway has nothing better to do with them (the
    /// janitor reaps what is left).
    pub async fn delete(&self) {
        if !self.subscription_arn.is_empty()
            && let Err(e) = self.sns.unsubscribe().subscription_arn(&self.subscription_arn).send().await
        {
            tracing::warn!(subscription_arn = self.subscription_arn, error = ?e, "unsubscribe failed");
        }
        match self.sqs.delete_queue().queue_url(&self.queue_url).send().await {
            Ok(_) => tracing::info!(queue_url = self.queue_url, "gateway queue deleted"),
            Err(e) => tracing::warn!(queue_url = self.queue_url, error = ?e, "queue deletion failed"),
        }
    }
}

/// SQS returns at most ten messages per receive and deletes ten per batch.
const RECEIVE_MAX: usize = 10;

/// How many of a gateway's pollers are receiving: one while the queue is
/// quiet (so an idle gateway holds one long poll, not `--pollers`), one more
/// each time a receive comes back full, one fewer when the newest poller's
/// receive comes back less than half full. The same idea as Lambda's SQS
/// event-source scaling, per gateway.
#[derive(Debug)]
pub struct PollerScale {
    active: AtomicUsize,
    max: usize,
    grown: Notify,
}

impl PollerScale {
    pub fn new(max: usize) -> Self {
        Self { active: AtomicUsize::new(1), max: max.max(1), grown: Notify::new() }
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Records poller `index`'s receive of `received` messages.
    fn record(&self, index: usize, received: usize) {
        let _ = self.active.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |active| {
            let next = next_active(active, self.max, index, received);
            (next != active).then_some(next)
        });
        if self.active() > index + 1 {
            self.grown.notify_waiters();
        }
    }

    /// Waits until poller `index` is among the active ones (or `stop`).
    async fn turn(&self, index: usize, stop: &CancellationToken) {
        loop {
            let grown = self.grown.notified();
            if index < self.active() {
                return;
            }
            tokio::select! {
                () = grown => {}
                () = stop.cancelled() => return,
            }
        }
    }
}

/// The number of active pollers after poller `index` received `received`.
pub fn next_active(active: usize, max: usize, index: usize, received: usize) -> usize {
    if received >= RECEIVE_MAX {
        active.max((index + 2).min(max))
    } else if received < RECEIVE_MAX / 2 && active > 1 && index + 1 == active {
        active - 1
    } else {
        active
    }
}

/// What a poller needs besides its index.
#[derive(Debug, Clone)]
pub struct Poller {
    pub sqs: aws_sdk_sqs::Client,
    pub queue_url: String,
    pub hub: Arc<Hub>,
    pub counters: Arc<AwsCounters>,
    pub scale: Arc<PollerScale>,
    /// After a receive that was not full, wait this long before the next
    /// one, so it comes back fuller (fewer calls per event, at that much
    /// latency). Zero: receive again at once.
    pub window: Duration,
}

/// One long-poll loop: receive up to ten events, dispatch them to the hub,
/// delete them in one batch (without holding up the next receive). Ends when
/// `stop` is cancelled; a batch that arrives after that is made visible
/// again instead of dispatched.
pub async fn poll(poller: Poller, index: usize, stop: CancellationToken) {
    let Poller { sqs, queue_url, hub, counters, scale, window } = poller;
    let mut deletes = tokio::task::JoinSet::new();
    let mut backoff = Duration::from_millis(100);
    loop {
        while deletes.try_join_next().is_some() {}
        scale.turn(index, &stop).await;
        let receive = sqs
            .receive_message()
            .queue_url(&queue_url)
            .max_number_of_messages(RECEIVE_MAX as i32)
            .wait_time_seconds(POLL_WAIT_SECS)
            .send();
        let received = tokio::select! {
            () = stop.cancelled() => break,
            r = receive => r,
        };
        AwsCounters::add(&counters.sqs_receives, 1);
        let messages = match received {
            Ok(out) => {
                backoff = Duration::from_millis(100);
                out.messages.unwrap_or_default()
            }
            Err(e) => {
                tracing::warn!(error = ?e, retry_in_ms = backoff.as_millis() as u64, "SQS receive failed");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        scale.record(index, messages.len());
        if messages.is_empty() {
            AwsCounters::add(&counters.sqs_empty_receives, 1);
            continue;
        }
        AwsCounters::add(&counters.sqs_messages, messages.len());
        if stop.is_cancelled() {
            release(&sqs, &queue_url, &messages).await;
            break;
        }
        let full = messages.len() >= RECEIVE_MAX;
        let done = dispatch(&hub, &messages);
        AwsCounters::add(&counters.sqs_delete_batches, 1);
        deletes.spawn(delete(sqs.clone(), queue_url.clone(), done));
        if !full && !window.is_zero() {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(window) => {}
            }
        }
    }
    // Deletes already sent are waited for, so a stopping gateway does not
    // leave events to be redelivered to nobody.
    while deletes.join_next().await.is_some() {}
}

/// Dispatches a received batch to the hub; returns the delete entries.
fn dispatch(hub: &Hub, messages: &[aws_sdk_sqs::types::Message]) -> Vec<DeleteMessageBatchRequestEntry> {
    let now = Instant::now();
    let mut done = Vec::with_capacity(messages.len());
    for (i, message) in messages.iter().enumerate() {
        let body = message.body().unwrap_or_default();
        match Envelope::decode(body) {
            Ok(envelope) => hub.dispatch(envelope, now),
            // Nothing else reads this queue and a redelivery would fail the
            // same way, so the event is logged and removed.
            Err(e) => {
                tracing::error!(error = %e, body_prefix = %body.chars().take(200).collect::<String>(), "undecodable event dropped")
            }
        }
        if let Some(handle) = message.receipt_handle()
            && let Ok(entry) =
                DeleteMessageBatchRequestEntry::builder().id(i.to_string()).receipt_handle(handle).build()
        {
            done.push(entry);
        }
    }
    done
}

async fn delete(sqs: aws_sdk_sqs::Client, queue_url: String, entries: Vec<DeleteMessageBatchRequestEntry>) {
    match sqs.delete_message_batch().queue_url(&queue_url).set_entries(Some(entries)).send().await {
        Ok(out) if !out.failed().is_empty() => {
            // Redelivery is harmless: the hub deduplicates by event id.
            tracing::warn!(failed = out.failed().len(), "some deletes failed; those events may be redelivered");
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = ?e, "SQS DeleteMessageBatch failed; events may be redelivered"),
    }
}

/// Makes received-but-undispatched messages visible again at once.
async fn release(sqs: &aws_sdk_sqs::Client, queue_url: &str, messages: &[aws_sdk_sqs::types::Message]) {
    let entries: Vec<_> = messages
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            ChangeMessageVisibilityBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(m.receipt_handle()?)
                .visibility_timeout(0)
                .build()
                .ok()
        })
        .collect();
    if let Err(e) = sqs.change_message_visibility_batch().queue_url(queue_url).set_entries(Some(entries)).send().await {
        tracing::warn!(error = ?e, "could not release undispatched events");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pollers_scale_up_on_full_receives_and_down_from_the_top() {
        // A full receive adds the poller after the one that received it.
        assert_eq!(next_active(1, 4, 0, 10), 2);
        assert_eq!(next_active(2, 4, 1, 10), 3);
        assert_eq!(next_active(3, 4, 0, 10), 3, "already enough behind poller 0");
        assert_eq!(next_active(4, 4, 3, 10), 4, "never beyond the maximum");
        assert_eq!(next_active(1, 1, 0, 10), 1);
        // A thin receive retires the newest poller only.
        assert_eq!(next_active(3, 4, 2, 1), 2);
        assert_eq!(next_active(3, 4, 0, 0), 3, "an older poller's thin receive changes nothing");
        assert_eq!(next_active(1, 4, 0, 0), 1, "one poller always remains");
        // Half full or more: steady.
        assert_eq!(next_active(3, 4, 2, 5), 3);
        assert_eq!(next_active(3, 4, 2, 9), 3);
    }

    #[tokio::test]
    async fn an_inactive_poller_waits_until_the_scale_grows() {
        let scale = Arc::new(PollerScale::new(3));
        let stop = CancellationToken::new();
        scale.turn(0, &stop).await;
        let waiting = {
            let (scale, stop) = (scale.clone(), stop.clone());
            tokio::spawn(async move { scale.turn(2, &stop).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        scale.record(0, 10);
        assert_eq!(scale.active(), 2);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "poller 2 is still beyond the two active");
        scale.record(1, 10);
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("woken").expect("task");
        // Stopping releases a waiting poller too.
        scale.record(2, 0);
        scale.record(1, 0);
        assert_eq!(scale.active(), 1);
        let waiting = {
            let (scale, stop) = (scale.clone(), stop.clone());
            tokio::spawn(async move { scale.turn(1, &stop).await })
        };
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("released").expect("task");
    }

    #[test]
    fn policy_admits_only_the_topic() {
        let policy: serde_json::Value = serde_json::from_str(&queue_policy("arn:q", "arn:t")).expect("json");
        let statement = &policy["Statement"][0];
        assert_eq!(statement["Resource"], "arn:q");
        assert_eq!(statement["Action"], "sqs:SendMessage");
        assert_eq!(statement["Condition"]["ArnEquals"]["aws:SourceArn"], "arn:t");
    }
}
