//! Function `janitor`: reaps what crashed gateways leave behind. A gateway
//! creates its own queue and subscription at start and deletes them at a
//! clean stop; one that dies (SIGKILL, a lost host) cannot. Every gateway
//! refreshes a heartbeat tag on its queue (`chat:heartbeat`, Unix seconds);
//! on a schedule the janitor deletes the queues under the gateways' prefix
//! whose heartbeat is older than a threshold, with their subscriptions, and
//! any subscription of the topic whose gateway queue no longer exists.
//! Queues under the prefix without a heartbeat tag are not a gateway's and
//! are left alone.

use std::collections::{HashMap, HashSet};

use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use chat_aws::queue::TAG_HEARTBEAT;

#[derive(Debug, Clone, clap::Args)]
pub struct JanitorArgs {
    #[arg(long, env = "CHAT_TOPIC_ARN")]
    pub topic_arn: String,
    /// The prefix of gateway queue names (the gateways' `--queue-prefix`).
    #[arg(long, env = "CHAT_QUEUE_PREFIX", default_value = "chat-gw-")]
    pub queue_prefix: String,
    /// A queue whose heartbeat is older than this many seconds is an orphan
    /// (gateways refresh it every `--heartbeat-secs`, 60 by default).
    #[arg(long, env = "CHAT_JANITOR_STALE_AFTER_SECS", default_value_t = 300)]
    pub stale_after_secs: i64,
}

/// What `janitor` needs: built once per process.
#[derive(Debug, Clone)]
pub struct Janitor {
    pub sqs: aws_sdk_sqs::Client,
    pub sns: aws_sdk_sns::Client,
    pub args: JanitorArgs,
}

impl JanitorArgs {
    pub fn build(self, sdk: &aws_config::SdkConfig) -> Janitor {
        Janitor { sqs: crate::sqs(sdk), sns: crate::sns(sdk), args: self }
    }
}

/// What the janitor makes of one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Live,
    Orphan,
    /// No (readable) heartbeat: not a gateway queue.
    NotOurs,
}

/// Judges a queue by its heartbeat tag.
pub fn verdict(heartbeat: Option<&str>, now_secs: i64, stale_after_secs: i64) -> Verdict {
    match heartbeat.and_then(|h| h.trim().parse::<i64>().ok()) {
        None => Verdict::NotOurs,
        Some(beat) if now_secs - beat > stale_after_secs => Verdict::Orphan,
        Some(_) => Verdict::Live,
    }
}

/// The queue name at the end of a queue URL or ARN.
fn queue_name(url_or_arn: &str) -> &str {
    url_or_arn.rsplit(['/', ':']).next().unwrap_or(url_or_arn)
}

/// One sweep's outcome.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Queue URLs deleted.
    pub reaped_queues: Vec<String>,
    /// Subscription ARNs removed.
    pub reaped_subscriptions: Vec<String>,
    pub live: usize,
    pub not_ours: usize,
    /// Failures (the next sweep tries again).
    pub errors: Vec<CallFailed>,
    /// Nothing could be judged: the queues or subscriptions were not listed.
    pub listing_failed: bool,
}

/// An AWS call of a sweep that failed (the next sweep tries again).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{operation}: {detail}")]
pub struct CallFailed {
    pub operation: &'static str,
    pub detail: String,
}

fn error<E, R>(operation: &'static str, e: SdkError<E, R>) -> CallFailed
where
    E: ProvideErrorMetadata + std::fmt::Debug,
    R: std::fmt::Debug,
{
    CallFailed { operation, detail: chat_aws::error::describe(&e) }
}

/// One sweep: a plain function of (janitor, now).
pub async fn sweep(janitor: &Janitor, now_secs: i64) -> Report {
    let mut report = Report::default();
    let queues = match list_queues(janitor).await {
        Ok(queues) => queues,
        Err(e) => {
            report.errors.push(e);
            report.listing_failed = true;
            count_sweep(&report);
            return report;
        }
    };
    let subscriptions = match list_subscriptions(janitor).await {
        Ok(subscriptions) => subscriptions,
        Err(e) => {
            report.errors.push(e);
            report.listing_failed = true;
            count_sweep(&report);
            return report;
        }
    };
    let mut existing: HashSet<String> = HashSet::new();
    for queue_url in &queues {
        let name = queue_name(queue_url).to_owned();
        let tags = match janitor.sqs.list_queue_tags().queue_url(queue_url).send().await {
            Ok(out) => out.tags.unwrap_or_default(),
            Err(e) => {
                report.errors.push(error("ListQueueTags", e));
                existing.insert(name);
                continue;
            }
        };
        match verdict(tags.get(TAG_HEARTBEAT).map(String::as_str), now_secs, janitor.args.stale_after_secs) {
            Verdict::Live => {
                report.live += 1;
                existing.insert(name);
            }
            Verdict::NotOurs => {
                report.not_ours += 1;
                existing.insert(name);
            }
            Verdict::Orphan => {
                tracing::info!(queue_url, heartbeat = tags.get(TAG_HEARTBEAT), "reaping an orphaned gateway queue");
                match janitor.sqs.delete_queue().queue_url(queue_url).send().await {
                    Ok(_) => report.reaped_queues.push(queue_url.clone()),
                    Err(e) => {
                        report.errors.push(error("DeleteQueue", e));
                        existing.insert(name);
                    }
                }
            }
        }
    }
    // Subscriptions to gateway queues that are gone: just reaped, or left
    // by a gateway whose own unsubscribe failed.
    for (subscription_arn, endpoint) in subscriptions {
        let name = queue_name(&endpoint);
        if !name.starts_with(&janitor.args.queue_prefix) || existing.contains(name) {
            continue;
        }
        match janitor.sns.unsubscribe().subscription_arn(&subscription_arn).send().await {
            Ok(_) => report.reaped_subscriptions.push(subscription_arn),
            Err(e) => report.errors.push(error("Unsubscribe", e)),
        }
    }
    tracing::info!(
        reaped_queues = report.reaped_queues.len(),
        reaped_subscriptions = report.reaped_subscriptions.len(),
        live = report.live,
        not_ours = report.not_ours,
        errors = report.errors.len(),
        "janitor sweep done"
    );
    count_sweep(&report);
    report
}

/// What a sweep did, as metrics (`chat_janitor_failures_total` feeds the
/// janitor's alarm beside its Lambda errors).
fn count_sweep(report: &Report) {
    metrics::counter!("chat_janitor_sweeps_total").increment(1);
    metrics::counter!("chat_janitor_reaped_total", "kind" => "queue").increment(report.reaped_queues.len() as u64);
    metrics::counter!("chat_janitor_reaped_total", "kind" => "subscription")
        .increment(report.reaped_subscriptions.len() as u64);
    metrics::counter!("chat_janitor_failures_total").increment(report.errors.len() as u64);
}

async fn list_queues(janitor: &Janitor) -> Result<Vec<String>, CallFailed> {
    let mut queues = Vec::new();
    let mut next = None;
    loop {
        let out = janitor
            .sqs
            .list_queues()
            .queue_name_prefix(&janitor.args.queue_prefix)
            .max_results(1000)
            .set_next_token(next.take())
            .send()
            .await
            .map_err(|e| error("ListQueues", e))?;
        queues.extend(out.queue_urls().iter().cloned());
        match out.next_token() {
            Some(token) if !token.is_empty() => next = Some(token.to_owned()),
            _ => return Ok(queues),
        }
    }
}

/// The topic's SQS subscriptions: (subscription ARN, endpoint queue ARN).
async fn list_subscriptions(janitor: &Janitor) -> Result<HashMap<String, String>, CallFailed> {
    let mut subscriptions = HashMap::new();
    let mut next = None;
    loop {
        let out = janitor
            .sns
            .list_subscriptions_by_topic()
            .topic_arn(&janitor.args.topic_arn)
            .set_next_token(next.take())
            .send()
            .await
            .map_err(|e| error("ListSubscriptionsByTopic", e))?;
        for subscription in out.subscriptions() {
            if let (Some(arn), Some(endpoint), Some("sqs")) =
                (subscription.subscription_arn(), subscription.endpoint(), subscription.protocol())
            {
                // "PendingConfirmation" has no ARN to unsubscribe yet.
                if arn.starts_with("arn:") {
                    subscriptions.insert(arn.to_owned(), endpoint.to_owned());
                }
            }
        }
        match out.next_token() {
            Some(token) if !token.is_empty() => next = Some(token.to_owned()),
            _ => return Ok(subscriptions),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_by_heartbeat_age() {
        assert_eq!(verdict(Some("1000"), 1200, 300), Verdict::Live);
        assert_eq!(verdict(Some("1000"), 1300, 300), Verdict::Live, "exactly at the threshold is live");
        assert_eq!(verdict(Some("1000"), 1301, 300), Verdict::Orphan);
        assert_eq!(verdict(None, 1301, 300), Verdict::NotOurs);
        assert_eq!(verdict(Some("soon"), 1301, 300), Verdict::NotOurs);
    }

    #[test]
    fn queue_names_from_urls_and_arns() {
        assert_eq!(queue_name("http://127.0.0.1:4566/123456789012/chat-gw-a"), "chat-gw-a");
        assert_eq!(queue_name("arn:aws:sqs:us-east-1:123456789012:chat-gw-a"), "chat-gw-a");
    }
}
