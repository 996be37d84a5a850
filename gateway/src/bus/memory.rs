//! The embedded bus: one gateway, events handed straight to its hub.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use chat_proto::envelope::Envelope;

use super::{Bus, BusError};
use crate::hub::Hub;

#[derive(Debug)]
pub struct MemoryBus {
    hub: Arc<Hub>,
}

impl MemoryBus {
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, events: &[Envelope]) -> Result<(), BusError> {
        for event in events {
            self.hub.dispatch(event.clone(), Instant::now());
        }
        Ok(())
    }
}
