//! Function `fallback`: the deadline of offline delivery. Every message that
//! has a member with a linked channel besides its sender (the conversation's
//! `fallback_members`, returned with its seq; under broadcast routing, every
//! message) also reaches the fallback queue, whose delivery delay is the time
//! a member has to acknowledge it on a stream. When it comes due, each internal member
//! (the sender aside) whose DELIVERED watermark has not reached the message
//! and who linked an external identity gets a fallback request on the topic;
//! the connector of that identity's channel sends it there (idempotently, so
//! a redelivered deadline sends nothing twice) and reports DELIVERED for the
//! member with `via` set to the channel.
//!
//! The deadline is a delayed SQS message, not a timer in a gateway: it fires
//! even if every gateway the members used has died.

use std::sync::Arc;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use chat_aws::dynamo::{DynamoStore, Tables};
use chat_aws::lambda::{Record, for_each_record};
use chat_aws::sns::SnsPublisher;
use chat_core::bus::Bus;
use chat_core::envelope::{Envelope, Event, FallbackEvent, MessageEvent};
use chat_core::external::ExternalId;
use chat_core::store::{Links, MemberState, Receipts};

use crate::FunctionError;

/// Deadlines checked at once in one invocation.
const RECORDS_IN_FLIGHT: usize = 8;

/// What `fallback` needs: built once per process.
#[derive(Debug, Clone)]
pub struct Fallback {
    /// Members' delivery watermarks.
    pub receipts: Arc<dyn Receipts>,
    /// Their linked external identities.
    pub links: Arc<dyn Links>,
    pub bus: Arc<dyn Bus>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct FallbackArgs {
    #[command(flatten)]
    pub tables: Tables,
    #[arg(long, env = "CHAT_TOPIC_ARN")]
    pub topic_arn: String,
}

impl FallbackArgs {
    pub fn build(self, sdk: &aws_config::SdkConfig) -> Fallback {
        let store = Arc::new(DynamoStore::new(crate::dynamodb(sdk), self.tables));
        Fallback {
            receipts: store.clone(),
            links: store,
            bus: Arc::new(SnsPublisher::new(crate::sns(sdk), self.topic_arn)),
        }
    }
}

/// The internal members, the sender aside, who have not acknowledged `seq`.
pub fn behind(members: &[MemberState], sender: &str, seq: u64) -> Vec<String> {
    members
        .iter()
        .filter(|m| m.user_id != sender && m.delivered_up_to() < seq)
        .filter(|m| !ExternalId::has_channel_prefix(&m.user_id))
        .map(|m| m.user_id.clone())
        .collect()
}

/// The `fallback` handler: a plain function of (fallback, event).
pub async fn handle(fallback: &Fallback, event: SqsEvent) -> SqsBatchResponse {
    let requested = std::sync::atomic::AtomicUsize::new(0);
    let response = for_each_record(&event, RECORDS_IN_FLIGHT, |record: Record| {
        let requested = &requested;
        async move {
            let Event::Message(message) = &record.envelope.event else { return Ok(()) };
            let count = fall_back(fallback, &record.envelope.conversation_id, message).await?;
            requested.fetch_add(count, std::sync::atomic::Ordering::Relaxed);
            Ok::<(), FunctionError>(())
        }
    })
    .await;
    let requested = requested.into_inner();
    tracing::info!(
        records = event.records.len(),
        requested,
        failed = response.batch_item_failures.len(),
        "fallback batch done"
    );
    metrics::counter!("chat_fallback_records_total").increment(event.records.len() as u64);
    metrics::counter!("chat_fallback_requests_total").increment(requested as u64);
    metrics::counter!("chat_fallback_failures_total").increment(response.batch_item_failures.len() as u64);
    response
}

async fn fall_back(fallback: &Fallback, conversation_id: &str, message: &MessageEvent) -> Result<usize, FunctionError> {
    let members = fallback.receipts.members(conversation_id).await?;
    let behind = behind(&members, &message.sender, message.seq);
    if behind.is_empty() {
        return Ok(0);
    }
    let links = fallback.links.linked_channels(&behind).await?;
    let requests: Vec<Envelope> = links
        .into_iter()
        .map(|(user_id, to)| {
            tracing::info!(conversation_id, seq = message.seq, user_id, to, "not acknowledged in time: falling back");
            Envelope::new(
                // One request per (message, member): a redelivered deadline
                // publishes the same event again.
                format!("fallback-{}-{user_id}", message.message_id),
                conversation_id.to_owned(),
                "fallback".into(),
                chat_core::clock::now_ms(),
                Event::Fallback(FallbackEvent { user_id, to, message: message.clone() }),
            )
        })
        .collect();
    fallback.bus.publish(&requests).await?;
    Ok(requests.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(user: &str, delivered: u64, read: u64) -> MemberState {
        MemberState { user_id: user.into(), role: Default::default(), delivered_seq: delivered, read_seq: read }
    }

    #[test]
    fn only_internal_members_behind_the_message_fall_back() {
        let members = [
            member("alice", 0, 0),
            member("bob", 4, 0),
            member("carol", 5, 0),
            member("dave", 0, 7),
            member("whatsapp:+5511999990000", 0, 0),
        ];
        assert_eq!(behind(&members, "alice", 5), vec!["bob".to_string()]);
    }
}
