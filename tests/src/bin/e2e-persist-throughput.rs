//! Measures function `persist` behind the local event source mapping on the
//! emulator: enqueues N message events straight into the persist queue (as
//! SNS would deliver them) and times until all are stored; reports
//! messages/s and DynamoDB write calls per message (from the handler's own
//! counts in the runner log).
//!
//! Two modes: `live` (default) starts the runner first and enqueues as fast
//! as it can, so the queue stays shallow; `backlog` enqueues everything
//! first and then starts the runner (a drain after an outage). On moto the
//! backlog mode is bounded by the emulator: its ReceiveMessage slows down
//! with queue depth (about 0.4 s per call at 1,000 queued).
//!
//! `cargo run -p chat-e2e --bin e2e-persist-throughput -- 5000 [live|backlog] [RATE]`
//! (`CHAT_PYTHON` as in `make test`).

use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_dynamodb::types::{AttributeValue, Select};
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use chat_core::envelope::{Envelope, Event, MessageEvent};
use chat_e2e::cluster::Cluster;

const CONVERSATIONS: u64 = 10;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: u64 = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(5000);
    let backlog = std::env::args().nth(2).is_some_and(|m| m == "backlog");
    // Offered rate in live mode (messages/s); 0: as fast as possible.
    let rate: f64 = std::env::args().nth(3).map(|a| a.parse()).transpose()?.unwrap_or(0.0);
    let pace = (rate > 0.0).then(|| Duration::from_secs_f64(10.0 / rate));
    let mut cluster = Cluster::aws(0).await?;
    let mut runner = None;
    let mut started = Instant::now();
    if !backlog {
        runner = Some(cluster.start_runner("persist", "CHAT_PERSIST_QUEUE_URL", &[])?);
    }
    let sdk = cluster.emulator.as_ref().context("emulator")?.sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let dynamo = cluster.emulator.as_ref().context("emulator")?.dynamodb().await;
    let queue = cluster.output("CHAT_PERSIST_QUEUE_URL")?;
    let table = cluster.output("CHAT_MESSAGES_TABLE")?;
    let prefix = chat_e2e::unique("tp-");
    let mut entries = Vec::new();
    for i in 0..n {
        let conversation = format!("{prefix}-{}", i % CONVERSATIONS);
        let id = format!("{prefix}-m{i}");
        let envelope = Envelope::new(
            id.clone(),
            conversation,
            "probe".into(),
            1,
            Event::Message(MessageEvent {
                message_id: id,
                seq: i / CONVERSATIONS + 1,
                sender: "probe".into(),
                body: "x".repeat(100),
                client_message_id: String::new(),
                external_recipients: Vec::new(),
            }),
        );
        entries
            .push(SendMessageBatchRequestEntry::builder().id(i.to_string()).message_body(envelope.encode()).build()?);
        if entries.len() == 10 || i == n - 1 {
            sqs.send_message_batch().queue_url(&queue).set_entries(Some(std::mem::take(&mut entries))).send().await?;
            if let Some(pace) = pace.filter(|_| !backlog) {
                tokio::time::sleep_until(tokio::time::Instant::from_std(started) + pace * u32::try_from(i / 10 + 1)?)
                    .await;
            }
        }
    }
    let runner = match runner {
        Some(runner) => runner,
        None => {
            started = Instant::now();
            cluster.start_runner("persist", "CHAT_PERSIST_QUEUE_URL", &[])?
        }
    };
    let count_stored = || async {
        let mut total = 0;
        for c in 0..CONVERSATIONS {
            let out = dynamo
                .query()
                .table_name(&table)
                .key_condition_expression("conversation_id = :c")
                .expression_attribute_values(":c", AttributeValue::S(format!("{prefix}-{c}")))
                .select(Select::Count)
                .send()
                .await?;
            total += u64::try_from(out.count()).unwrap_or(0);
        }
        anyhow::Ok(total)
    };
    loop {
        let stored = count_stored().await?;
        if stored >= n {
            break;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(600), "only {stored} of {n} stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    let log = std::fs::read_to_string(cluster.runner_log(runner).context("runner log")?)?;
    let field = |line: &str, name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let (mut records, mut calls, mut batches) = (0, 0, 0);
    for line in log.lines().filter(|l| l.contains("persist batch done")) {
        records += field(line, "records");
        calls += field(line, "write_calls");
        batches += 1;
    }
    println!(
        "persist ({}): {n} messages stored in {:.2}s = {:.0} messages/s; {batches} invocations (mean batch {:.1}); {calls} DynamoDB write calls = {:.3} per message",
        if backlog { "backlog drain" } else { "live" },
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        records as f64 / batches.max(1) as f64,
        calls as f64 / records.max(1) as f64
    );
    Ok(())
}
