//! Receiving on AWS: this gateway's SQS queue (`chat_aws::queue`), read by
//! up to `--pollers` long-poll loops ([`poll`]), as many as [`PollerScale`]
//! finds busy, each feeding the [`Inbox`]; their deletes are gathered
//! into batches by one [`deleter`].

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry;
use chat_aws::queue::POLL_WAIT_SECS;
use chat_core::envelope::Envelope;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::Inbox;

/// SQS returns at most ten messages per receive and deletes ten per batch.
const RECEIVE_MAX: usize = 10;

/// How many of a gateway's pollers are receiving: one while the queue is
/// quiet (so an idle gateway holds one long poll, not `--pollers`), one more
/// each time a receive comes back full, one fewer when the newest poller's
/// receive comes back less than half full. The same idea as Lambda's SQS
/// event-source scaling, per gateway.
#[derive(Debug)]
pub(crate) struct PollerScale {
    active: AtomicUsize,
    max: usize,
    grown: Notify,
}

impl PollerScale {
    pub(crate) fn new(max: usize) -> Self {
        Self { active: AtomicUsize::new(1), max: max.max(1), grown: Notify::new() }
    }

    pub(crate) fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Records poller `index`'s receive of `received` messages.
    fn record(&self, index: usize, received: usize) {
        let _ = self.active.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |active| {
            let next = next_active(active, self.max, index, received);
            (next != active).then_some(next)
        });
        if self.active() > index + 1 {
            self.grown.notify_waiters();
        }
    }

    /// Waits until poller `index` is among the active ones (or `stop`).
    async fn turn(&self, index: usize, stop: &CancellationToken) {
        loop {
            let grown = self.grown.notified();
            if index < self.active() {
                return;
            }
            tokio::select! {
                () = grown => {}
                () = stop.cancelled() => return,
            }
        }
    }
}

/// The number of active pollers after poller `index` received `received`.
pub(crate) fn next_active(active: usize, max: usize, index: usize, received: usize) -> usize {
    if received >= RECEIVE_MAX {
        active.max((index + 2).min(max))
    } else if received < RECEIVE_MAX / 2 && active > 1 && index + 1 == active {
        active - 1
    } else {
        active
    }
}

/// What a poller needs besides its index.
#[derive(Debug, Clone)]
pub(crate) struct Poller {
    pub(crate) sqs: aws_sdk_sqs::Client,
    pub(crate) queue_url: String,
    pub(crate) inbox: Arc<dyn Inbox>,
    pub(crate) scale: Arc<PollerScale>,
    /// After a receive that was not full, wait this long before the next
    /// one, so it comes back fuller (fewer calls per event, at that much
    /// latency). Zero: receive again at once.
    pub(crate) window: Duration,
    /// Where dispatched events' receipt handles go to be deleted.
    pub(crate) deletes: mpsc::UnboundedSender<String>,
}

/// One long-poll loop: receive up to ten events, hand them to the inbox,
/// pass them on to be deleted (without holding up the next receive). Ends
/// when `stop` is cancelled; a batch that arrives after that is made visible
/// again instead of dispatched.
pub(crate) async fn poll(poller: Poller, index: usize, stop: CancellationToken) {
    let Poller { sqs, queue_url, inbox, scale, window, deletes } = poller;
    let mut backoff = Duration::from_millis(100);
    loop {
        scale.turn(index, &stop).await;
        let receive = sqs
            .receive_message()
            .queue_url(&queue_url)
            .max_number_of_messages(RECEIVE_MAX as i32)
            .wait_time_seconds(POLL_WAIT_SECS)
            .send();
        let received = tokio::select! {
            () = stop.cancelled() => break,
            r = receive => r,
        };
        let messages = match received {
            Ok(out) => {
                backoff = Duration::from_millis(100);
                out.messages.unwrap_or_default()
            }
            Err(e) => {
                tracing::warn!(error = %chat_aws::error::describe(&e), retry_in_ms = backoff.as_millis() as u64, "SQS receive failed");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        scale.record(index, messages.len());
        if messages.is_empty() {
            metrics::counter!("chat_sqs_empty_receives_total").increment(1);
            continue;
        }
        if stop.is_cancelled() {
            release(&sqs, &queue_url, &messages).await;
            break;
        }
        metrics::counter!("chat_sqs_messages_received_total").increment(messages.len() as u64);
        let full = messages.len() >= RECEIVE_MAX;
        for handle in dispatch(inbox.as_ref(), &messages) {
            // Closed only once every poller has ended.
            let _ = deletes.send(handle);
        }
        if !full && !window.is_zero() {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(window) => {}
            }
        }
    }
}

/// Deletes the handles the pollers send, ten per `DeleteMessageBatch`: a
/// handle waits up to `linger` for others to share its call. At chat rates
/// a receive brings one or two events, so deleting each receive's events
/// at once would cost a call per event or so; `linger` (well inside the
/// visibility timeout) trades that for a redelivery after a crash, which
/// the hub drops as a duplicate. Ends once every poller has ended, having
/// deleted everything, so a stopping gateway leaves nothing to be
/// redelivered to nobody.
pub(crate) async fn deleter(
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    mut handles: mpsc::UnboundedReceiver<String>,
    linger: Duration,
) {
    let mut calls = tokio::task::JoinSet::new();
    while let Some(batch) = gather(&mut handles, linger).await {
        while calls.try_join_next().is_some() {}
        calls.spawn(delete(sqs.clone(), queue_url.clone(), batch));
    }
    while calls.join_next().await.is_some() {}
}

/// The next batch of handles: the first to come, then more until there are
/// ten or `linger` has passed since the first. `None` once the channel is
/// closed and empty.
async fn gather(handles: &mut mpsc::UnboundedReceiver<String>, linger: Duration) -> Option<Vec<String>> {
    let first = handles.recv().await?;
    let deadline = tokio::time::Instant::now() + linger;
    let mut batch = vec![first];
    while batch.len() < RECEIVE_MAX {
        match tokio::time::timeout_at(deadline, handles.recv()).await {
            Ok(Some(handle)) => batch.push(handle),
            Ok(None) | Err(_) => break,
        }
    }
    Some(batch)
}

/// The span of a traced event's delivery to this gateway's streams, a child
/// of the publishing span (disabled when traces are off or the event
/// carries no context).
fn deliver_span(envelope: &Envelope) -> tracing::Span {
    let Some(parent) = envelope.trace.as_deref().filter(|_| service::telemetry::enabled()) else {
        return tracing::Span::none();
    };
    let span = tracing::info_span!(
        "chat.deliver",
        conversation_id = envelope.conversation_id,
        event_id = envelope.event_id,
        kind = envelope.event.kind(),
        trace_id = tracing::field::Empty
    );
    service::telemetry::set_parent(&span, Some(parent));
    span
}

/// Hands a received batch to the inbox; returns the receipt handles.
fn dispatch(inbox: &dyn Inbox, messages: &[aws_sdk_sqs::types::Message]) -> Vec<String> {
    let now = Instant::now();
    let now_ms = chat_core::clock::now_ms();
    let latency = metrics::histogram!("chat_publish_receive_seconds");
    let mut done = Vec::with_capacity(messages.len());
    for message in messages {
        let body = message.body().unwrap_or_default();
        match Envelope::decode(body) {
            Ok(envelope) => {
                // Clocks of different hosts: a negative difference is skew.
                latency.record((now_ms - envelope.at_ms).max(0) as f64 / 1000.0);
                let span = deliver_span(&envelope);
                let _entered = span.enter();
                inbox.receive(envelope, now)
            }
            // Nothing else reads this queue and a redelivery would fail the
            // same way, so the event is logged and removed.
            Err(e) => {
                tracing::error!(error = %e, body_prefix = %body.chars().take(200).collect::<String>(), "undecodable event dropped")
            }
        }
        if let Some(handle) = message.receipt_handle() {
            done.push(handle.to_owned());
        }
    }
    done
}

async fn delete(sqs: aws_sdk_sqs::Client, queue_url: String, handles: Vec<String>) {
    // Redelivery is harmless: the hub deduplicates by event id.
    match chat_aws::queue::delete_received(&sqs, &queue_url, &handles).await {
        Ok(0) => {}
        Ok(failed) => tracing::warn!(failed, "some deletes failed; those events may be redelivered"),
        Err(error) => tracing::warn!(error, "SQS DeleteMessageBatch failed; events may be redelivered"),
    }
}

/// Makes received-but-undispatched messages visible again at once.
async fn release(sqs: &aws_sdk_sqs::Client, queue_url: &str, messages: &[aws_sdk_sqs::types::Message]) {
    let entries: Vec<_> = messages
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            ChangeMessageVisibilityBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(m.receipt_handle()?)
                .visibility_timeout(0)
                .build()
                .ok()
        })
        .collect();
    if let Err(e) = sqs.change_message_visibility_batch().queue_url(queue_url).set_entries(Some(entries)).send().await {
        tracing::warn!(error = %chat_aws::error::describe(&e), "could not release undispatched events");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pollers_scale_up_on_full_receives_and_down_from_the_top() {
        // A full receive adds the poller after the one that received it.
        assert_eq!(next_active(1, 4, 0, 10), 2);
        assert_eq!(next_active(2, 4, 1, 10), 3);
        assert_eq!(next_active(3, 4, 0, 10), 3, "already enough behind poller 0");
        assert_eq!(next_active(4, 4, 3, 10), 4, "never beyond the maximum");
        assert_eq!(next_active(1, 1, 0, 10), 1);
        // A thin receive retires the newest poller only.
        assert_eq!(next_active(3, 4, 2, 1), 2);
        assert_eq!(next_active(3, 4, 0, 0), 3, "an older poller's thin receive changes nothing");
        assert_eq!(next_active(1, 4, 0, 0), 1, "one poller always remains");
        // Half full or more: steady.
        assert_eq!(next_active(3, 4, 2, 5), 3);
        assert_eq!(next_active(3, 4, 2, 9), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn deletes_wait_for_company_up_to_the_linger() {
        let linger = Duration::from_secs(1);
        let (tx, mut rx) = mpsc::unbounded_channel();
        for i in 0..12 {
            tx.send(format!("h{i}")).expect("open");
        }
        // Ten at once make a full batch without waiting.
        let start = tokio::time::Instant::now();
        let batch = gather(&mut rx, linger).await.expect("batch");
        assert_eq!(batch.len(), 10);
        assert_eq!(start.elapsed(), Duration::ZERO);
        // Two waiting: they wait out the linger for company, then go.
        let batch = gather(&mut rx, linger).await.expect("batch");
        assert_eq!(batch, ["h10", "h11"]);
        assert_eq!(start.elapsed(), linger);
        // One arriving within the linger joins the batch.
        tx.send("a".into()).expect("open");
        let late = {
            let tx = tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(400)).await;
                tx.send("b".into()).expect("open");
            })
        };
        assert_eq!(gather(&mut rx, linger).await.expect("batch"), ["a", "b"]);
        late.await.expect("task");
        // Closing flushes what is there without waiting, then ends.
        tx.send("last".into()).expect("open");
        drop(tx);
        let before = tokio::time::Instant::now();
        assert_eq!(gather(&mut rx, linger).await.expect("batch"), ["last"]);
        assert_eq!(before.elapsed(), Duration::ZERO);
        assert_eq!(gather(&mut rx, linger).await, None);
    }

    #[tokio::test]
    async fn an_inactive_poller_waits_until_the_scale_grows() {
        let scale = Arc::new(PollerScale::new(3));
        let stop = CancellationToken::new();
        scale.turn(0, &stop).await;
        let waiting = {
            let (scale, stop) = (scale.clone(), stop.clone());
            tokio::spawn(async move { scale.turn(2, &stop).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        scale.record(0, 10);
        assert_eq!(scale.active(), 2);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "poller 2 is still beyond the two active");
        scale.record(1, 10);
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("woken").expect("task");
        // Stopping releases a waiting poller too.
        scale.record(2, 0);
        scale.record(1, 0);
        assert_eq!(scale.active(), 1);
        let waiting = {
            let (scale, stop) = (scale.clone(), stop.clone());
            tokio::spawn(async move { scale.turn(1, &stop).await })
        };
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("released").expect("task");
    }
}
