//! Publish batching: concurrent publishes from many streams are coalesced
//! into batches of up to ten (SNS `PublishBatch`), so a busy gateway makes
//! one SNS request where it would make ten.
//!
//! The rule is group commit with a bound:
//! - while no batch is in flight, what is queued goes out at once (an idle
//!   gateway adds no latency);
//! - while batches are in flight, a new batch waits up to the linger for
//!   more events, and goes when it has ten;
//! - at most `max_in_flight` batches are in flight; beyond that, events
//!   queue (and so batch fuller) until one returns.
//!
//! Every caller gets its own envelope's outcome: one failed entry of a batch
//! fails that publish only.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chat_core::envelope::Envelope;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use chat_aws::sns::BATCH_MAX;
use chat_core::bus::{BatchSink, Bus, BusError};

#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchPolicy {
    /// Longest an event waits for company while other batches are in flight.
    pub(crate) linger: Duration,
    pub(crate) max_in_flight: usize,
}

struct Pending {
    envelope: Envelope,
    done: oneshot::Sender<Result<(), BusError>>,
}

/// A [`Bus`] that batches into a [`BatchSink`]. Dropping every clone ends
/// its task after the queued events are published.
#[derive(Debug, Clone)]
pub(crate) struct BatchingPublisher {
    queue: mpsc::UnboundedSender<Pending>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("event_id", &self.envelope.event_id).finish()
    }
}

impl BatchingPublisher {
    /// Starts the batching task on the current runtime.
    pub(crate) fn spawn(sink: impl BatchSink, policy: BatchPolicy) -> Self {
        // Unbounded: every entry has a caller awaiting its outcome, so the
        // queue is bounded by the callers (the streams' sends in flight).
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(Arc::new(sink), policy, rx));
        Self { queue }
    }
}

#[async_trait]
impl Bus for BatchingPublisher {
    async fn publish(&self, events: &[Envelope]) -> Result<(), BusError> {
        let mut outcomes = Vec::with_capacity(events.len());
        for envelope in events {
            let (done, outcome) = oneshot::channel();
            self.queue.send(Pending { envelope: envelope.clone(), done }).map_err(|_| BusError::Stopped)?;
            outcomes.push(outcome);
        }
        for outcome in outcomes {
            outcome.await.map_err(|_| BusError::Stopped)??;
        }
        Ok(())
    }
}

async fn run(sink: Arc<dyn BatchSink>, policy: BatchPolicy, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let max_in_flight = policy.max_in_flight.max(1);
    let slots = Arc::new(Semaphore::new(max_in_flight));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let Some(first) = rx.recv().await else { break };
        let busy = slots.available_permits() + 1 < max_in_flight;
        let mut batch = vec![first];
        gather(&mut rx, &mut batch, busy.then(|| Instant::now() + policy.linger)).await;
        let sink = sink.clone();
        tokio::spawn(async move {
            let (envelopes, waiters): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.envelope, p.done)).unzip();
            let outcomes = sink.publish_batch(&envelopes).await;
            let mut outcomes = outcomes.into_iter();
            for (envelope, waiter) in envelopes.iter().zip(waiters) {
                let outcome = outcomes.next().unwrap_or_else(|| {
                    Err(BusError::Refused {
                        event_id: envelope.event_id.clone(),
                        detail: "the batch returned no outcome for it".into(),
                    })
                });
                let _ = waiter.send(outcome);
            }
            drop(slot);
        });
    }
    // Every publisher is gone; in-flight batches finish on their own tasks.
}

/// Fills `batch` up to [`BATCH_MAX`] with what is queued, waiting for more
/// until `deadline` when there is one.
async fn gather(rx: &mut mpsc::UnboundedReceiver<Pending>, batch: &mut Vec<Pending>, deadline: Option<Instant>) {
    while batch.len() < BATCH_MAX {
        match rx.try_recv() {
            Ok(pending) => batch.push(pending),
            Err(_) => {
                let Some(deadline) = deadline else { return };
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(pending)) => batch.push(pending),
                    Ok(None) | Err(_) => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_core::envelope::Event;
    use std::sync::Mutex;
    use tokio::sync::Notify;

    /// Records batches; holds each batch until released when `gated`.
    #[derive(Debug, Default)]
    struct Recorder {
        batches: Mutex<Vec<Vec<String>>>,
        gated: bool,
        gate: Notify,
        fail: Option<String>,
    }

    #[async_trait]
    impl BatchSink for Recorder {
        async fn publish_batch(&self, envelopes: &[Envelope]) -> Vec<Result<(), BusError>> {
            self.batches.lock().expect("lock").push(envelopes.iter().map(|e| e.event_id.clone()).collect());
            if self.gated {
                self.gate.notified().await;
            }
            envelopes
                .iter()
                .map(|e| match &self.fail {
                    Some(id) if *id == e.event_id => {
                        Err(BusError::Refused { event_id: id.clone(), detail: "injected".into() })
                    }
                    _ => Ok(()),
                })
                .collect()
        }
    }

    fn envelope(id: usize) -> Envelope {
        Envelope::new(format!("e{id}"), "c".into(), "gw".into(), 0, Event::Typing { user_id: "u".into(), typing: true })
    }

    fn batches(recorder: &Recorder) -> Vec<Vec<String>> {
        recorder.batches.lock().expect("lock").clone()
    }

    type Sends = tokio::task::JoinSet<Result<(), BusError>>;

    /// Lets every gated batch through until every send has its outcome.
    async fn release_all(recorder: &Recorder, sends: &mut Sends) {
        while !sends.is_empty() {
            recorder.gate.notify_waiters();
            tokio::select! {
                outcome = sends.join_next() => { outcome.expect("some").expect("task").expect("published"); }
                () = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
        }
    }

    const POLICY: BatchPolicy = BatchPolicy { linger: Duration::from_millis(5), max_in_flight: 2 };

    #[tokio::test(start_paused = true)]
    async fn an_idle_publisher_sends_at_once() {
        let recorder = Arc::new(Recorder::default());
        let publisher =
            BatchingPublisher::spawn(recorder.clone(), BatchPolicy { linger: Duration::from_secs(60), ..POLICY });
        let started = Instant::now();
        publisher.publish(&[envelope(1)]).await.expect("published");
        assert_eq!(started.elapsed(), Duration::ZERO, "no linger when nothing is in flight");
        publisher.publish(&[envelope(2), envelope(3)]).await.expect("published");
        assert_eq!(batches(&recorder), vec![vec!["e1"], vec!["e2", "e3"]]);
    }

    #[tokio::test(start_paused = true)]
    async fn events_behind_a_busy_batch_coalesce_by_ten_within_the_linger() {
        let recorder = Arc::new(Recorder { gated: true, ..Default::default() });
        let policy = BatchPolicy { max_in_flight: 8, ..POLICY };
        let publisher = BatchingPublisher::spawn(recorder.clone(), policy);
        let mut sends = tokio::task::JoinSet::new();
        let first = publisher.clone();
        sends.spawn(async move { first.publish(&[envelope(0)]).await });
        tokio::task::yield_now().await;
        // 0 is in flight alone; 25 more arrive while it is.
        for id in 1..=25 {
            let publisher = publisher.clone();
            sends.spawn(async move { publisher.publish(&[envelope(id)]).await });
        }
        let started = Instant::now();
        while batches(&recorder).iter().map(Vec::len).sum::<usize>() < 26 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(started.elapsed() <= policy.linger + Duration::from_millis(1), "linger bounds the wait");
        recorder.gate.notify_waiters();
        let mut published = 0;
        while let Some(outcome) = sends.join_next().await {
            // Batches released after the notify wait for the next one.
            recorder.gate.notify_waiters();
            outcome.expect("task").expect("published");
            published += 1;
        }
        assert_eq!(published, 26);
        let sizes: Vec<usize> = batches(&recorder).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![1, 10, 10, 5]);
    }

    #[tokio::test(start_paused = true)]
    async fn while_busy_an_event_waits_the_linger_for_company_and_no_longer() {
        let recorder = Arc::new(Recorder { gated: true, ..Default::default() });
        let publisher = BatchingPublisher::spawn(recorder.clone(), BatchPolicy { max_in_flight: 8, ..POLICY });
        let mut sends = tokio::task::JoinSet::new();
        // 0 goes at once and stays in flight; 1 and 2 (3 ms apart) share a
        // batch; 3 comes after the 5 ms linger and goes alone.
        for (id, at_ms) in [(0, 0), (1, 1), (2, 4), (3, 12)] {
            let publisher = publisher.clone();
            sends.spawn(async move {
                tokio::time::sleep(Duration::from_millis(at_ms)).await;
                publisher.publish(&[envelope(id)]).await
            });
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(batches(&recorder), vec![vec!["e0"], vec!["e1", "e2"], vec!["e3"]]);
        release_all(&recorder, &mut sends).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_entry_fails_only_its_publish() {
        let recorder = Arc::new(Recorder { fail: Some("e2".into()), ..Default::default() });
        let publisher = BatchingPublisher::spawn(recorder.clone(), POLICY);
        let err = publisher.publish(&[envelope(1), envelope(2)]).await.expect_err("e2 failed");
        assert_eq!(err, BusError::Refused { event_id: "e2".into(), detail: "injected".into() });
        publisher.publish(&[envelope(3)]).await.expect("others publish");
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_max_in_flight_batches() {
        let recorder = Arc::new(Recorder { gated: true, ..Default::default() });
        let publisher = BatchingPublisher::spawn(recorder.clone(), BatchPolicy { max_in_flight: 2, ..POLICY });
        let mut sends = tokio::task::JoinSet::new();
        for id in 0..30 {
            let publisher = publisher.clone();
            sends.spawn(async move { publisher.publish(&[envelope(id)]).await });
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(batches(&recorder).len(), 2, "the rest wait for a slot");
        release_all(&recorder, &mut sends).await;
        let sizes: Vec<usize> = batches(&recorder).iter().map(Vec::len).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 30);
        assert!(sizes.iter().skip(2).any(|&n| n > 1), "queued events went out together: {sizes:?}");
    }
}
