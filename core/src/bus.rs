//! Publishing to the bus, as the gateway and the functions see it: an SNS
//! topic on AWS, the gateway's in-process hub in embedded mode.

use async_trait::async_trait;

use crate::envelope::Envelope;
use crate::store::StoreError;

/// Why a publish failed. Every variant is worth a retry except
/// [`BusError::Unpublishable`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// The bus's request failed or was not answered.
    #[error("{operation}: {detail}")]
    Request { operation: &'static str, detail: String },
    /// The bus took the batch but refused this event.
    #[error("event {event_id} refused: {detail}")]
    Refused { event_id: String, detail: String },
    /// The event cannot be expressed as a request (its attributes).
    #[error("event {event_id} cannot be published: {detail}")]
    Unpublishable { event_id: String, detail: String },
    /// The in-process publisher has stopped.
    #[error("the publisher has stopped")]
    Stopped,
    /// The embedded bus records receipts itself, standing in for `persist`.
    #[error("recording a receipt: {0}")]
    Store(#[from] StoreError),
}

#[async_trait]
pub trait Bus: Send + Sync + std::fmt::Debug {
    /// Publishes events; returns once the bus has accepted all of them.
    async fn publish(&self, events: &[Envelope]) -> Result<(), BusError>;
}

/// A publisher that takes batches and answers for each event: what a
/// batching publisher coalesces into.
#[async_trait]
pub trait BatchSink: Send + Sync + std::fmt::Debug + 'static {
    /// One outcome per envelope, in order.
    async fn publish_batch(&self, envelopes: &[Envelope]) -> Vec<Result<(), BusError>>;
}

/// A shared sink is a sink (a test keeps its own handle on what it spawned).
#[async_trait]
impl<T: BatchSink + ?Sized> BatchSink for std::sync::Arc<T> {
    async fn publish_batch(&self, envelopes: &[Envelope]) -> Vec<Result<(), BusError>> {
        (**self).publish_batch(envelopes).await
    }
}
