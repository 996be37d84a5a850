//! The embedded bus: one gateway, events handed straight to its inbox. It
//! also stands in for function `persist` (the memory store keeps messages
//! itself): receipts published on it are recorded in the store.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use chat_core::bus::{Bus, BusError};
use chat_core::envelope::{Envelope, Event};
use chat_core::store::Receipts;

use super::Inbox;

#[derive(Debug)]
pub(crate) struct MemoryBus {
    inbox: Arc<dyn Inbox>,
    receipts: Arc<dyn Receipts>,
}

impl MemoryBus {
    pub(crate) fn new(inbox: Arc<dyn Inbox>, receipts: Arc<dyn Receipts>) -> Self {
        Self { inbox, receipts }
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, events: &[Envelope]) -> Result<(), BusError> {
        for event in events {
            if let Event::Receipt(receipt) = &event.event {
                self.receipts.record_receipt(&event.conversation_id, receipt, event.at_ms).await?;
            }
            self.inbox.receive(event.clone(), Instant::now());
        }
        Ok(())
    }
}
