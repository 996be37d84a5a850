//! The bus between gateways: publish an event once, every gateway with local
//! members of its conversation receives it.
//!
//! Publishing is `chat_core::bus::Bus`: SNS on AWS (`chat_aws::sns`, behind
//! [`batch::BatchingPublisher`]), [`memory::MemoryBus`] in embedded mode;
//! under member routing ([`route`]) the batches go straight to the queues
//! of the gateways with members' streams, and to the topic only what the
//! functions read.
//! Receiving feeds an [`Inbox`] (the hub): [`memory::MemoryBus`] hands each
//! event over inline, [`sqs`] long-polls this gateway's SQS queue.

use std::time::Instant;

use chat_core::envelope::Envelope;

pub(crate) mod batch;
pub(crate) mod memory;
pub(crate) mod route;
pub(crate) mod sqs;

/// Where received events go; the bus knows nothing more of the gateway.
pub(crate) trait Inbox: Send + Sync + std::fmt::Debug {
    /// Takes one event received at `now`. Never blocks on I/O.
    fn receive(&self, envelope: Envelope, now: Instant);
}
