//! The hub's fan-out, opened to the criterion benchmarks in `benches/` (and
//! to nothing else): the hub and outboxes themselves stay private.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chat_core::envelope::Envelope;

use crate::hub::Hub;
use crate::outbox::{EventStream, Outbox};

/// A hub with one conversation of open streams, anchored at seq 0.
pub struct FanOut {
    hub: Hub,
    /// Kept so the outboxes stay open.
    _streams: Vec<(Arc<Outbox>, EventStream)>,
}

impl std::fmt::Debug for FanOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FanOut").field("hub", &self.hub).field("streams", &self._streams.len()).finish()
    }
}

impl FanOut {
    /// `members` streams in `conversation_id`, each buffering `capacity`.
    pub fn new(conversation_id: &str, members: usize, capacity: usize) -> Self {
        let hub = Hub::new(Duration::from_secs(2));
        let streams: Vec<_> = (0..members).map(|i| Outbox::new(format!("s{i}"), format!("u{i}"), capacity)).collect();
        for (outbox, _) in &streams {
            hub.subscribe(conversation_id, outbox.clone());
        }
        for (outbox, _) in &streams {
            hub.anchor(conversation_id, &outbox.session_id, 0, 0);
        }
        Self { hub, _streams: streams }
    }

    /// One bus event through the hub, as a poller hands it over.
    pub fn dispatch(&self, envelope: Envelope, now: Instant) {
        self.hub.dispatch(envelope, now);
    }

    /// Events queued to streams so far.
    pub fn deliveries(&self) -> u64 {
        self.hub.counters.deliveries.load(Ordering::Relaxed)
    }
}
