//! The local stand-in for Lambda's SQS event source mapping: polls a queue
//! and invokes a handler with the same `SqsEvent` Lambda would build.
//!
//! Semantics reproduced: a batch is up to `batch_size` records, gathered for
//! at most the batching window once the first record arrives; records the
//! handler reports in `batchItemFailures` are left alone (they reappear after
//! the queue's visibility timeout, and the queue's own redrive policy moves
//! them to its DLQ after `maxReceiveCount`); the rest are deleted. A handler
//! error fails the whole batch, as on Lambda.

use std::collections::HashSet;
use std::future::Future;
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage, SqsMessageAttribute};
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use tokio_util::sync::CancellationToken;

/// SQS returns at most ten messages per receive.
const RECEIVE_MAX: usize = 10;

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub queue_url: String,
    pub batch_size: usize,
    pub batching_window: Duration,
    pub region: String,
    /// Batches gathered and handled at once (Lambda's event source mapping
    /// starts with five pollers and scales invocations with the backlog).
    pub concurrency: usize,
}

/// Converts SQS messages into the records of a Lambda `SqsEvent`.
pub fn to_event(messages: &[aws_sdk_sqs::types::Message], queue_arn: &str, region: &str) -> SqsEvent {
    let records = messages
        .iter()
        .map(|m| {
            let mut record = SqsMessage::default();
            record.message_id = m.message_id().map(str::to_owned);
            record.receipt_handle = m.receipt_handle().map(str::to_owned);
            record.body = m.body().map(str::to_owned);
            record.md5_of_body = m.md5_of_body().map(str::to_owned);
            record.attributes = m
                .attributes()
                .map(|a| a.iter().map(|(k, v)| (k.as_str().to_owned(), v.clone())).collect())
                .unwrap_or_default();
            record.message_attributes = m
                .message_attributes()
                .map(|attrs| {
                    attrs
                        .iter()
                        .map(|(k, v)| {
                            let mut attr = SqsMessageAttribute::default();
                            attr.string_value = v.string_value().map(str::to_owned);
                            attr.data_type = Some(v.data_type().to_owned());
                            (k.clone(), attr)
                        })
                        .collect()
                })
                .unwrap_or_default();
            record.event_source = Some("aws:sqs".to_owned());
            record.event_source_arn = Some(queue_arn.to_owned());
            record.aws_region = Some(region.to_owned());
            record
        })
        .collect();
    let mut event = SqsEvent::default();
    event.records = records;
    event
}

/// Receipt handles of the records the handler did not report as failed.
pub fn to_delete(messages: &[aws_sdk_sqs::types::Message], response: &SqsBatchResponse) -> Vec<String> {
    let failed: HashSet<&str> = response.batch_item_failures.iter().map(|f| f.item_identifier.as_str()).collect();
    messages
        .iter()
        .filter(|m| !m.message_id().is_some_and(|id| failed.contains(id)))
        .filter_map(|m| m.receipt_handle().map(str::to_owned))
        .collect()
}

async fn queue_arn(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> anyhow::Result<String> {
    let out =
        sqs.get_queue_attributes().queue_url(queue_url).attribute_names(QueueAttributeName::QueueArn).send().await?;
    out.attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("queue {queue_url} has no ARN"))
}

/// Gathers one batch: waits (long poll) for a first record, then keeps
/// receiving until the batch is full or the window has passed.
async fn gather(
    sqs: &aws_sdk_sqs::Client,
    config: &RunnerConfig,
    stop: &CancellationToken,
) -> anyhow::Result<Vec<aws_sdk_sqs::types::Message>> {
    let mut batch = Vec::new();
    let mut window_ends: Option<Instant> = None;
    while batch.len() < config.batch_size {
        let wait_secs = match window_ends {
            None => 20,
            Some(end) => {
                let left = end.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                // SQS waits in whole seconds; a shorter window polls briefly.
                i32::try_from(left.as_secs()).unwrap_or(20).min(20)
            }
        };
        let want = (config.batch_size - batch.len()).min(RECEIVE_MAX);
        let receive = sqs
            .receive_message()
            .queue_url(&config.queue_url)
            .max_number_of_messages(i32::try_from(want).unwrap_or(10))
            .wait_time_seconds(wait_secs)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send();
        let out = tokio::select! {
            () = stop.cancelled() => return Ok(batch),
            out = receive => out?,
        };
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() && window_ends.is_some() && wait_secs == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !messages.is_empty() && window_ends.is_none() {
            window_ends = Some(Instant::now() + config.batching_window);
        }
        batch.extend(messages);
    }
    Ok(batch)
}

async fn delete(sqs: &aws_sdk_sqs::Client, queue_url: &str, handles: Vec<String>) {
    let chunks = handles.chunks(RECEIVE_MAX).map(|chunk| delete_chunk(sqs, queue_url, chunk));
    futures::future::join_all(chunks).await;
}

async fn delete_chunk(sqs: &aws_sdk_sqs::Client, queue_url: &str, chunk: &[String]) {
    match chat_aws::queue::delete_received(sqs, queue_url, chunk).await {
        Ok(0) => {}
        Ok(failed) => tracing::warn!(failed, "some deletes failed; those records will be redelivered"),
        Err(error) => tracing::warn!(error, "DeleteMessageBatch failed; the batch will be redelivered"),
    }
}

/// Polls `config.queue_url` and feeds `handler` until `stop`, with
/// `config.concurrency` pollers each gathering and handling its own batches.
pub async fn run<H, Fut, E>(
    sqs: aws_sdk_sqs::Client,
    config: RunnerConfig,
    handler: H,
    stop: CancellationToken,
) -> anyhow::Result<()>
where
    H: Fn(SqsEvent) -> Fut,
    Fut: Future<Output = Result<SqsBatchResponse, E>>,
    E: std::fmt::Display,
{
    let arn = queue_arn(&sqs, &config.queue_url).await?;
    tracing::info!(
        queue_url = config.queue_url,
        batch_size = config.batch_size,
        concurrency = config.concurrency,
        "local event source mapping running"
    );
    let pollers = (0..config.concurrency.max(1)).map(|_| poll(&sqs, &config, &arn, &handler, &stop));
    futures::future::join_all(pollers).await;
    Ok(())
}

async fn poll<H, Fut, E>(
    sqs: &aws_sdk_sqs::Client,
    config: &RunnerConfig,
    arn: &str,
    handler: &H,
    stop: &CancellationToken,
) where
    H: Fn(SqsEvent) -> Fut,
    Fut: Future<Output = Result<SqsBatchResponse, E>>,
    E: std::fmt::Display,
{
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        let gather_started = Instant::now();
        let batch = match gather(sqs, config, stop).await {
            Ok(batch) => {
                backoff = Duration::from_millis(100);
                batch
            }
            Err(e) => {
                tracing::warn!(error = %e, "receive failed");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if batch.is_empty() {
            continue;
        }
        // A batch already received is handled even when stopping: dropping it
        // would only delay it by the visibility timeout.
        let gathered_ms = gather_started.elapsed().as_millis() as u64;
        let handler_started = Instant::now();
        let handled = handler(to_event(&batch, arn, &config.region)).await;
        // What Lambda's own metrics say of an invocation (Invocations,
        // Errors, Duration), for the local runner's endpoint.
        let outcome = if handled.is_ok() { "ok" } else { "error" };
        metrics::counter!("chat_function_invocations_total", "outcome" => outcome).increment(1);
        metrics::counter!("chat_function_records_total").increment(batch.len() as u64);
        metrics::histogram!("chat_function_invocation_seconds").record(handler_started.elapsed().as_secs_f64());
        match handled {
            Ok(response) => {
                let handler_ms = handler_started.elapsed().as_millis() as u64;
                let handles = to_delete(&batch, &response);
                let delete_started = Instant::now();
                delete(sqs, &config.queue_url, handles).await;
                tracing::debug!(
                    records = batch.len(),
                    failed = response.batch_item_failures.len(),
                    gathered_ms,
                    handler_ms,
                    delete_ms = delete_started.elapsed().as_millis() as u64,
                    "batch handled"
                );
            }
            Err(e) => {
                tracing::warn!(records = batch.len(), error = %e, "handler failed; the whole batch will be retried")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lambda_events::event::sqs::BatchItemFailure;
    use aws_sdk_sqs::types::{Message, MessageAttributeValue};

    fn message(id: &str) -> Message {
        Message::builder()
            .message_id(id)
            .receipt_handle(format!("rh-{id}"))
            .body(format!("body-{id}"))
            .attributes(MessageSystemAttributeName::ApproximateReceiveCount, "2")
            .message_attributes(
                "kind",
                MessageAttributeValue::builder().data_type("String").string_value("message").build().expect("attr"),
            )
            .build()
    }

    #[test]
    fn event_has_lambdas_shape() {
        let event = to_event(&[message("a"), message("b")], "arn:aws:sqs:us-east-1:1:q", "us-east-1");
        let json = serde_json::to_value(&event).expect("json");
        let first = &json["Records"][0];
        assert_eq!(first["messageId"], "a");
        assert_eq!(first["receiptHandle"], "rh-a");
        assert_eq!(first["body"], "body-a");
        assert_eq!(first["eventSource"], "aws:sqs");
        assert_eq!(first["eventSourceARN"], "arn:aws:sqs:us-east-1:1:q");
        assert_eq!(first["attributes"]["ApproximateReceiveCount"], "2");
        assert_eq!(first["messageAttributes"]["kind"]["stringValue"], "message");
    }

    #[test]
    fn failed_records_are_not_deleted() {
        let messages = [message("a"), message("b"), message("c")];
        let mut response = SqsBatchResponse::default();
        let mut failure = BatchItemFailure::default();
        failure.item_identifier = "b".into();
        response.batch_item_failures.push(failure);
        assert_eq!(to_delete(&messages, &response), vec!["rh-a".to_string(), "rh-c".to_string()]);
        assert_eq!(to_delete(&messages, &SqsBatchResponse::default()).len(), 3);
    }
}
