//! Function `fallback`: the deadline of offline delivery. Every message also
//! reaches the fallback queue, whose delivery delay is the time a member has
//! to acknowledge it on a stream. When it comes due, each internal member
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
use chat_proto::envelope::{Envelope, Event, FallbackEvent, MessageEvent};
use chat_proto::external::ExternalId;
use gateway::bus::Bus;
use gateway::store::{MemberState, Store};

/// What `fallback` needs: built once per process.
#[derive(Debug, Clone)]
pub struct Fallback {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct FallbackArgs {
    #[command(flatten)]
    pub tables: gateway::store::dynamo::Tables,
    #[arg(long, env = "CHAT_TOPIC_ARN")]
    pub topic_arn: String,
}

impl FallbackArgs {
    pub fn build(self, sdk: &aws_config::SdkConfig) -> Fallback {
        Fallback {
            store: Arc::new(gateway::store::dynamo::DynamoStore::new(aws_sdk_dynamodb::Client::new(sdk), self.tables)),
            bus: Arc::new(gateway::bus::sns_sqs::SnsPublisher::new(aws_sdk_sns::Client::new(sdk), self.topic_arn)),
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
    let mut failed = Vec::new();
    let mut requested = 0;
    for (index, record) in event.records.iter().enumerate() {
        let id = record.message_id.clone().unwrap_or_else(|| format!("record-{index}"));
        let envelope = match record.body.as_deref().map(Envelope::decode) {
            Some(Ok(envelope)) => envelope,
            other => {
                let reason = match other {
                    Some(Err(e)) => e.to_string(),
                    _ => "record has no body".into(),
                };
                tracing::error!(record_id = id, reason, "undecodable record; it will be retried, then dead-lettered");
                failed.push(id);
                continue;
            }
        };
        let Event::Message(message) = envelope.event else { continue };
        match fall_back(fallback, &envelope.conversation_id, &message).await {
            Ok(count) => requested += count,
            Err(e) => {
                tracing::warn!(record_id = id, error = e, "fallback check failed; retried");
                failed.push(id);
            }
        }
    }
    tracing::info!(records = event.records.len(), requested, failed = failed.len(), "fallback batch done");
    crate::persist::response(failed)
}

async fn fall_back(fallback: &Fallback, conversation_id: &str, message: &MessageEvent) -> Result<usize, String> {
    let members = fallback.store.members(conversation_id).await.map_err(|e| e.to_string())?;
    let behind = behind(&members, &message.sender, message.seq);
    if behind.is_empty() {
        return Ok(0);
    }
    let links = fallback.store.linked_channels(&behind).await.map_err(|e| e.to_string())?;
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
                crate::connector::now_ms(),
                Event::Fallback(FallbackEvent { user_id, to, message: message.clone() }),
            )
        })
        .collect();
    fallback.bus.publish(&requests).await.map_err(|e| e.to_string())?;
    Ok(requests.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(user: &str, delivered: u64, read: u64) -> MemberState {
        MemberState { user_id: user.into(), delivered_seq: delivered, read_seq: read }
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
