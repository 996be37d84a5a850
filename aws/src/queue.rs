//! A gateway's own queue on the topic, from start to stop: created with a
//! policy that admits only the topic (`aws:SourceArn`), subscribed with raw
//! delivery, tagged with the instance id and a heartbeat (so the janitor can
//! reap the queues of crashed gateways), and deleted with its subscription
//! on a graceful stop. The janitor reads the same tags ([`TAG_HEARTBEAT`]).

use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, QueueAttributeName};

/// Long-poll wait; the SDK attempt timeout for receives must exceed it.
pub const POLL_WAIT_SECS: i32 = 20;
/// How long a received event stays invisible to the other pollers before SQS
/// offers it again (it is deleted within a second or so of dispatch, well
/// inside this).
const VISIBILITY_TIMEOUT_SECS: i32 = 30;
/// Events older than this are of no use to live streams.
const RETENTION_SECS: i32 = 300;

pub const TAG_GATEWAY_ID: &str = "chat:gateway-id";

/// Deletes received messages by their receipt handles in one
/// `DeleteMessageBatch` (at most ten); returns how many SQS refused. A
/// message left undeleted is offered again after its visibility timeout.
pub async fn delete_received(sqs: &aws_sdk_sqs::Client, queue_url: &str, handles: &[String]) -> Result<usize, String> {
    let entries: Vec<_> = handles
        .iter()
        .enumerate()
        .filter_map(|(i, handle)| {
            DeleteMessageBatchRequestEntry::builder().id(i.to_string()).receipt_handle(handle).build().ok()
        })
        .collect();
    sqs.delete_message_batch()
        .queue_url(queue_url)
        .set_entries(Some(entries))
        .send()
        .await
        .map(|out| out.failed().len())
        .map_err(|e| crate::error::describe(&e))
}

/// The filter policy of a gateway queue's subscription under member
/// routing: every event but those the gateways routed to each other
/// already ([`crate::sns::ROUTED_ATTRIBUTE`]), so events the functions
/// publish (a channel's inbound message, its receipts) still reach every
/// gateway.
pub const UNROUTED_ONLY: &str = r#"{"routed":[{"exists":false}]}"#;
pub const TAG_HEARTBEAT: &str = "chat:heartbeat";
/// This start of the gateway (the nonce in its member-routing route): a
/// gateway restarted under the same instance id finds its queue again, and
/// the new tag tells its peers the old route is dead.
pub const TAG_BOOT: &str = "chat:boot";

/// Why a gateway queue could not be set up or kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("{operation}: {detail}")]
    Request { operation: &'static str, detail: String },
    #[error("{0}")]
    Incomplete(&'static str),
}

impl QueueError {
    fn request<E, R>(operation: &'static str, err: &SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::fmt::Debug,
        R: std::fmt::Debug,
    {
        QueueError::Request { operation, detail: crate::error::describe(err) }
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
    (chat_core::clock::now_ms() / 1000).to_string()
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
        boot: Option<&str>,
        filter_policy: Option<&str>,
    ) -> Result<Self, QueueError> {
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
            .map_err(|e| QueueError::request("SQS CreateQueue", &e))?;
        let queue_url = created.queue_url().ok_or(QueueError::Incomplete("CreateQueue returned no URL"))?.to_owned();
        let partial = Self { sqs, sns, queue_url, queue_arn: String::new(), subscription_arn: String::new() };
        match partial.admit_and_subscribe(topic_arn, boot, filter_policy).await {
            Ok(queue) => Ok(queue),
            Err(e) => {
                partial.delete().await;
                Err(e)
            }
        }
    }

    async fn admit_and_subscribe(
        &self,
        topic_arn: &str,
        boot: Option<&str>,
        filter_policy: Option<&str>,
    ) -> Result<Self, QueueError> {
        // Tagged apart from the creation: a queue that existed (a restart
        // under the same instance id) keeps its old tags through CreateQueue.
        if let Some(boot) = boot {
            self.sqs
                .tag_queue()
                .queue_url(&self.queue_url)
                .tags(TAG_BOOT, boot)
                .send()
                .await
                .map_err(|e| QueueError::request("SQS TagQueue", &e))?;
        }
        let attrs = self
            .sqs
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| QueueError::request("SQS GetQueueAttributes", &e))?;
        let queue_arn = attrs
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .ok_or(QueueError::Incomplete("GetQueueAttributes returned no queue ARN"))?
            .clone();
        self.sqs
            .set_queue_attributes()
            .queue_url(&self.queue_url)
            .attributes(QueueAttributeName::Policy, queue_policy(&queue_arn, topic_arn))
            .send()
            .await
            .map_err(|e| QueueError::request("SQS SetQueueAttributes", &e))?;
        let mut subscribe = self
            .sns
            .subscribe()
            .topic_arn(topic_arn)
            .protocol("sqs")
            .endpoint(&queue_arn)
            .attributes("RawMessageDelivery", "true")
            .return_subscription_arn(true);
        if let Some(policy) = filter_policy {
            subscribe = subscribe.attributes("FilterPolicy", policy);
        }
        let sub = subscribe.send().await.map_err(|e| QueueError::request("SNS Subscribe", &e))?;
        let subscription_arn =
            sub.subscription_arn().ok_or(QueueError::Incomplete("Subscribe returned no subscription ARN"))?.to_owned();
        Ok(Self { queue_arn, subscription_arn, ..self.clone() })
    }

    /// Refreshes the heartbeat tag the janitor reads.
    pub async fn heartbeat(&self) -> Result<(), QueueError> {
        self.sqs
            .tag_queue()
            .queue_url(&self.queue_url)
            .tags(TAG_HEARTBEAT, epoch_secs())
            .send()
            .await
            .map_err(|e| QueueError::request("SQS TagQueue", &e))?;
        Ok(())
    }

    /// Unsubscribes and deletes the queue; failures are logged, not returned,
    /// because a stopping gateway has nothing better to do with them (the
    /// janitor reaps what is left).
    pub async fn delete(&self) {
        if !self.subscription_arn.is_empty()
            && let Err(e) = self.sns.unsubscribe().subscription_arn(&self.subscription_arn).send().await
        {
            tracing::warn!(subscription_arn = self.subscription_arn, error = %crate::error::describe(&e), "unsubscribe failed");
        }
        match self.sqs.delete_queue().queue_url(&self.queue_url).send().await {
            Ok(_) => tracing::info!(queue_url = self.queue_url, "gateway queue deleted"),
            Err(e) => {
                tracing::warn!(queue_url = self.queue_url, error = %crate::error::describe(&e), "queue deletion failed")
            }
        }
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
