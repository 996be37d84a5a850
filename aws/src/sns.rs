//! Publishing to the events topic: [`SnsPublisher`] sends envelopes as SNS
//! messages (`Publish`, or `PublishBatch` in tens), the envelope's JSON as
//! the body and its routing facts as message attributes, so filter policies
//! route without parsing bodies and raw delivery keeps them on SQS.

use async_trait::async_trait;
use aws_sdk_sns::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sns::types::{MessageAttributeValue, PublishBatchRequestEntry};
use chat_core::bus::{BatchSink, Bus, BusError};
use chat_core::envelope::Envelope;

/// SNS `PublishBatch` takes at most ten entries.
pub const BATCH_MAX: usize = 10;

/// The message attribute that marks an event the gateways have routed to
/// each other's queues already (member routing): the topic carries it for
/// the functions only, and gateway queues' subscriptions filter it out
/// ([`crate::queue::UNROUTED_ONLY`]).
pub const ROUTED_ATTRIBUTE: &str = "routed";

fn request_error<E, R>(operation: &'static str, err: &SdkError<E, R>) -> BusError
where
    E: ProvideErrorMetadata + std::fmt::Debug,
    R: std::fmt::Debug,
{
    BusError::Request { operation, detail: crate::error::describe(err) }
}

fn attributes(envelope: &Envelope, routed: bool) -> Result<Vec<(String, MessageAttributeValue)>, BusError> {
    let mut attributes = envelope.attributes();
    if routed {
        attributes.push((ROUTED_ATTRIBUTE, chat_core::envelope::AttributeValue::String("true".into())));
    }
    attributes
        .iter()
        .map(|(name, value)| {
            MessageAttributeValue::builder()
                .data_type(value.data_type())
                .string_value(value.string_value())
                .build()
                .map(|v| ((*name).to_owned(), v))
                .map_err(|e| BusError::Unpublishable {
                    event_id: envelope.event_id.clone(),
                    detail: format!("message attribute {name}: {e}"),
                })
        })
        .collect()
}

#[derive(Debug, Clone)]
pub struct SnsPublisher {
    sns: aws_sdk_sns::Client,
    topic_arn: String,
    routed: bool,
}

impl SnsPublisher {
    pub fn new(sns: aws_sdk_sns::Client, topic_arn: String) -> Self {
        Self { sns, topic_arn, routed: false }
    }

    /// A publisher whose events are marked [`ROUTED_ATTRIBUTE`]: they reach
    /// the functions' queues, not the gateways'.
    pub fn routed(self) -> Self {
        Self { routed: true, ..self }
    }

    async fn publish_one(&self, envelope: &Envelope) -> Result<(), BusError> {
        metrics::histogram!("chat_publish_batch_size").record(1.0);
        self.sns
            .publish()
            .topic_arn(&self.topic_arn)
            .message(envelope.encode())
            .set_message_attributes(Some(attributes(envelope, self.routed)?.into_iter().collect()))
            .send()
            .await
            .map_err(|e| request_error("SNS Publish", &e))?;
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
                    .set_message_attributes(Some(attributes(envelope, self.routed)?.into_iter().collect()))
                    .build()
                    .map_err(|e| BusError::Unpublishable { event_id: envelope.event_id.clone(), detail: e.to_string() })
            })
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(entries) => entries,
            Err(e) => return vec![Err(e); chunk.len()],
        };
        metrics::histogram!("chat_publish_batch_size").record(chunk.len() as f64);
        let sent = self
            .sns
            .publish_batch()
            .topic_arn(&self.topic_arn)
            .set_publish_batch_request_entries(Some(entries))
            .send()
            .await;
        let out = match sent {
            Ok(out) => out,
            Err(e) => return vec![Err(request_error("SNS PublishBatch", &e)); chunk.len()],
        };
        let mut outcomes = vec![Ok(()); chunk.len()];
        for entry in out.failed() {
            match entry.id().parse::<usize>().ok().filter(|i| *i < chunk.len()) {
                // Retried alone: a batch entry's failure is often transient.
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
