//! The bus between gateways: publish an event once, every gateway with local
//! members of its conversation receives it.
//!
//! [`Bus`] is the publishing side. Receiving is each implementation's own
//! loop feeding [`crate::hub::Hub::dispatch`]: [`memory::MemoryBus`] calls it
//! inline, [`sns_sqs`] long-polls this gateway's SQS queue.

use async_trait::async_trait;
use chat_proto::envelope::Envelope;

pub mod batch;
pub mod memory;
pub mod sns_sqs;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    #[error("{0}")]
    Publish(String),
}

#[async_trait]
pub trait Bus: Send + Sync + std::fmt::Debug {
    /// Publishes events; returns once the bus has accepted all of them.
    async fn publish(&self, events: &[Envelope]) -> Result<(), BusError>;
}
