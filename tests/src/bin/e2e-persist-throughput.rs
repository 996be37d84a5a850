//! Measures function `persist` behind the local event source mapping on the
//! emulator: enqueues N DELIVERED receipts (its work: what no publisher
//! recorded) straight into the persist queue, as SNS would deliver them,
//! spread over the members of a few conversations, and times until every
//! member's watermark has reached its last; reports receipts/s and DynamoDB
//! write calls per receipt (from the handler's own counts in the runner
//! log).
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
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use chat_core::conversation::Kind;
use chat_core::envelope::{Envelope, Event, ReceiptEvent, ReceiptStatus};
use chat_core::store::Membership;
use chat_e2e::cluster::Cluster;

const CONVERSATIONS: u64 = 10;
/// Members acknowledging in each conversation.
const MEMBERS: u64 = 10;

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
    let queue = cluster.output("CHAT_PERSIST_QUEUE_URL")?;
    let prefix = chat_e2e::unique("tp-");
    let store = cluster.store().await?;
    let member = |m: u64| format!("m{m}");
    for c in 0..CONVERSATIONS {
        let members: Vec<String> = (0..MEMBERS).map(member).collect();
        let plan = chat_core::conversation::plan(format!("{prefix}-{c}"), Kind::Private, "", "probe", &members, 1)?;
        store.create(&plan).await?;
    }
    // Receipt i: conversation i mod C, its member (i / C) mod M, up to the
    // seq that member reaches after i / (C·M) earlier ones.
    let last_seq = n.div_ceil(CONVERSATIONS * MEMBERS);
    let mut entries = Vec::new();
    for i in 0..n {
        let receipt = ReceiptEvent {
            user_id: member((i / CONVERSATIONS) % MEMBERS),
            status: ReceiptStatus::Delivered,
            up_to_seq: i / (CONVERSATIONS * MEMBERS) + 1,
            message_id: String::new(),
            reason: String::new(),
            via: String::new(),
            recorded: false,
        };
        let conversation = format!("{prefix}-{}", i % CONVERSATIONS);
        let envelope =
            Envelope::new(format!("{prefix}-r{i}"), conversation, "probe".into(), 1, Event::Receipt(receipt));
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
    // Done when every member that got receipts has its last recorded.
    let reached = |c: u64, m: u64| {
        let last = (0..n).rfind(|i| i % CONVERSATIONS == c && (i / CONVERSATIONS) % MEMBERS == m);
        last.map(|i| i / (CONVERSATIONS * MEMBERS) + 1)
    };
    let mut waiting: Vec<(String, String, u64)> = (0..CONVERSATIONS)
        .flat_map(|c| (0..MEMBERS).filter_map(move |m| Some((c, m, reached(c, m)?))))
        .map(|(c, m, seq)| (format!("{prefix}-{c}"), member(m), seq))
        .collect();
    anyhow::ensure!(waiting.iter().all(|(_, _, seq)| *seq <= last_seq));
    while !waiting.is_empty() {
        let mut left = Vec::new();
        for (conversation, user, seq) in waiting {
            if cluster.delivered_seq(&conversation, &user).await? < Some(seq) {
                left.push((conversation, user, seq));
            }
        }
        waiting = left;
        anyhow::ensure!(started.elapsed() < Duration::from_secs(600), "{} watermarks short", waiting.len());
        if !waiting.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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
        "persist ({}): {n} receipts recorded in {:.2}s = {:.0} receipts/s; {batches} invocations (mean batch {:.1}); {calls} DynamoDB write calls = {:.3} per receipt",
        if backlog { "backlog drain" } else { "live" },
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        records as f64 / batches.max(1) as f64,
        calls as f64 / records.max(1) as f64
    );
    Ok(())
}
