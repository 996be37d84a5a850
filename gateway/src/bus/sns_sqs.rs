//! The AWS bus: events are published to one SNS topic, which fans out to one
//! SQS queue per gateway instance.
//!
//! - [`SnsPublisher`] publishes envelopes (`Publish`, or `PublishBatch` in
//!   tens) with routing message attributes.
//! - [`GatewayQueue`] is this gateway's queue: created at start with a policy
//!   that admits only the topic (`aws:SourceArn`), subscribed with raw
//!   delivery, tagged with the instance id and a heartbeat (so a janitor can
//!   reap the queues of crashed gateways), and deleted with its subscription
//!   on a graceful stop.
//! - [`poll`] is one long-poll loop feeding the hub; a gateway runs several.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_sns::types::{MessageAttributeValue, PublishBatchRequestEntry};
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, QueueAttributeName,
};
use chat_proto::envelope::Envelope;
use tokio_util::sync::CancellationToken;

use super::{Bus, BusError};
use crate::hub::Hub;

/// SNS `PublishBatch` takes at most ten entries.
const PUBLISH_BATCH_MAX: usize = 10;
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
    pub sns_publishes: AtomicU64,
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

    async fn publish_chunk(&self, chunk: &[Envelope]) -> Result<(), BusError> {
        let entries = chunk
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
            .collect::<Result<Vec<_>, _>>()?;
        AwsCounters::add(&self.counters.sns_publishes, 1);
        let out = self
            .sns
            .publish_batch()
            .topic_arn(&self.topic_arn)
            .set_publish_batch_request_entries(Some(entries))
            .send()
            .await
            .map_err(|e| sdk_error("SNS PublishBatch", e))?;
        let failed = out.failed();
        if failed.is_empty() {
            return Ok(());
        }
        // Retry the failed entries one by one; what still fails is reported.
        for entry in failed {
            let Some(envelope) = entry.id().parse::<usize>().ok().and_then(|i| chunk.get(i)) else {
                return Err(BusError::Publish(format!("PublishBatch failed entry with unknown id {}", entry.id())));
            };
            self.publish_one(envelope).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Bus for SnsPublisher {
    async fn publish(&self, events: &[Envelope]) -> Result<(), BusError> {
        match events {
            [] => Ok(()),
            [one] => self.publish_one(one).await,
            many => {
                for chunk in many.chunks(PUBLISH_BATCH_MAX) {
                    self.publish_chunk(chunk).await?;
                }
                Ok(())
            }
        }
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

/// One long-poll loop: receive up to ten events, dispatch them to the hub,
/// delete them in one batch. Ends when `stop` is cancelled; a batch that
/// arrives after that is made visible again instead of dispatched.
pub async fn poll(
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    hub: Arc<Hub>,
    counters: Arc<AwsCounters>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let receive = sqs
            .receive_message()
            .queue_url(&queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(POLL_WAIT_SECS)
            .send();
        let received = tokio::select! {
            () = stop.cancelled() => return,
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
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if messages.is_empty() {
            AwsCounters::add(&counters.sqs_empty_receives, 1);
            continue;
        }
        AwsCounters::add(&counters.sqs_messages, messages.len());
        if stop.is_cancelled() {
            release(&sqs, &queue_url, &messages).await;
            return;
        }
        let now = Instant::now();
        let mut done = Vec::with_capacity(messages.len());
        for (i, message) in messages.iter().enumerate() {
            let body = message.body().unwrap_or_default();
            match Envelope::decode(body) {
                Ok(envelope) => hub.dispatch(envelope, now),
                // Nothing else reads this queue and a redelivery would fail
                // the same way, so the event is logged and removed.
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
        AwsCounters::add(&counters.sqs_delete_batches, 1);
        match sqs.delete_message_batch().queue_url(&queue_url).set_entries(Some(done)).send().await {
            Ok(out) if !out.failed().is_empty() => {
                // Redelivery is harmless: the hub deduplicates by event id.
                tracing::warn!(failed = out.failed().len(), "some deletes failed; those events may be redelivered");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = ?e, "SQS DeleteMessageBatch failed; events may be redelivered"),
        }
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
    fn policy_admits_only_the_topic() {
        let policy: serde_json::Value = serde_json::from_str(&queue_policy("arn:q", "arn:t")).expect("json");
        let statement = &policy["Statement"][0];
        assert_eq!(statement["Resource"], "arn:q");
        assert_eq!(statement["Action"], "sqs:SendMessage");
        assert_eq!(statement["Condition"]["ArnEquals"]["aws:SourceArn"], "arn:t");
    }
}
