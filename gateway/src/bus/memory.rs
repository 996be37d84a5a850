//! The embedded bus: one gateway, events handed straight to its hub. It
//! also stands in for function `persist` (the memory store keeps messages
//! itself): receipts published on it are recorded in the store.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use chat_proto::envelope::{Envelope, Event};

use super::{Bus, BusError};
use crate::hub::Hub;
use crate::store::Store;

#[derive(Debug)]
pub struct MemoryBus {
    hub: Arc<Hub>,
    store: Arc<dyn Store>,
}

impl MemoryBus {
    pub fn new(hub: Arc<Hub>, store: Arc<dyn Store>) -> Self {
        Self { hub, store }
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, events: &[Envelope]) -> Result<(), BusError> {
        for event in events {
            if let Event::Receipt(receipt) = &event.event
                && let Err(e) = self.store.record_receipt(&event.conversation_id, receipt, event.at_ms).await
            {
                return Err(BusError::Publish(format!("recording a receipt: {e}")));
            }
            self.hub.dispatch(event.clone(), Instant::now());
        }
        Ok(())
    }
}
