//! Function `persist` behind the local event source mapping, on the
//! emulator: every message is handled (the conversation's summary, which
//! only `persist` moves, reaches it) and stored once, redeliveries are
//! harmless, and a poison record goes to the dead-letter queue after
//! `maxReceiveCount` while its batch-mates are persisted.

use std::collections::BTreeSet;
use std::time::Instant;

use anyhow::{Context, ensure};
use aws_sdk_dynamodb::types::AttributeValue;
use chat_e2e::cluster::Cluster;
use chat_e2e::{DEADLINE, scenarios};

/// Short visibility and two receives, so redrive happens within a test.
const FAST_REDRIVE: &[&str] = &["PersistVisibilityTimeoutSeconds=2", "PersistMaxReceiveCount=2"];

/// Waits until `persist` has handled `expected` (the conversation's summary,
/// which only it moves, reached the newest) and checks the store holds
/// exactly those messages (recorded at accept, rewritten by `persist`).
async fn wait_persisted(cluster: &Cluster, conversation: &str, expected: &BTreeSet<u64>) -> anyhow::Result<()> {
    let newest = expected.last().copied().unwrap_or(0);
    let summary = cluster.wait_summary(conversation, newest).await?;
    ensure!(summary == Some(newest), "persist's summary at {summary:?}, expected {newest}");
    let seqs: BTreeSet<u64> = cluster.wait_stored(conversation, expected).await?.into_iter().collect();
    ensure!(&seqs == expected, "persisted {seqs:?}, expected {expected:?}");
    Ok(())
}

#[tokio::test]
async fn messages_are_persisted_once() -> anyhow::Result<()> {
    let mut cluster = Cluster::aws(2).await?;
    cluster.start_runner("persist", "CHAT_PERSIST_QUEUE_URL", &[])?;
    let room = cluster.public_room("alice", "room-").await?;
    let mut alice = cluster.connect(0, "alice").await?;
    let mut bob = cluster.connect(1, "bob").await?;
    alice.join(&room).await?;
    bob.join(&room).await?;
    for i in 0..60 {
        alice.send(&room, &format!("p-{i}"), &format!("persist me {i}")).await?;
    }
    scenarios::accepted(&mut alice, 60).await?;
    wait_persisted(&cluster, &room, &(1..=60).collect()).await?;

    // The conversation's summary points at the newest message.
    let dynamo = cluster.emulator.as_ref().context("emulator")?.dynamodb().await;
    let item = dynamo
        .get_item()
        .table_name(cluster.output("CHAT_CONVERSATIONS_TABLE")?)
        .key("conversation_id", AttributeValue::S(room.clone()))
        .consistent_read(true)
        .send()
        .await?
        .item
        .context("no conversation item")?;
    let last = item.get("last_persisted_seq").and_then(|v| v.as_n().ok()).cloned();
    ensure!(last.as_deref() == Some("60"), "summary at {last:?}");
    ensure!(item.get("last_preview").and_then(|v| v.as_s().ok()).map(String::as_str) == Some("persist me 59"));
    Ok(())
}

#[tokio::test]
async fn poison_record_is_dead_lettered_and_batch_mates_persist() -> anyhow::Result<()> {
    let mut cluster = Cluster::aws_custom(1, &[], FAST_REDRIVE).await?;
    let sdk = cluster.emulator.as_ref().context("emulator")?.sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue = cluster.output("CHAT_PERSIST_QUEUE_URL")?;
    let dlq = cluster.output("CHAT_PERSIST_DEAD_LETTER_QUEUE_URL")?;
    // Queue the poison first so it shares a batch with real messages.
    sqs.send_message().queue_url(&queue).message_body("{\"v\":1,\"this is\":\"not an envelope\"").send().await?;
    let room = cluster.public_room("alice", "room-").await?;
    let mut alice = cluster.connect(0, "alice").await?;
    alice.join(&room).await?;
    for i in 0..5 {
        alice.send(&room, &format!("b-{i}"), "batch-mate").await?;
    }
    scenarios::accepted(&mut alice, 5).await?;
    cluster.start_runner("persist", "CHAT_PERSIST_QUEUE_URL", &[("CHAT_BATCHING_WINDOW_MS", "1000")])?;
    wait_persisted(&cluster, &room, &(1..=5).collect()).await?;

    let deadline = Instant::now() + DEADLINE;
    loop {
        let out = sqs.receive_message().queue_url(&dlq).wait_time_seconds(1).send().await?;
        if let Some(m) = out.messages().first() {
            ensure!(m.body().is_some_and(|b| b.contains("not an envelope")), "unexpected DLQ message {m:?}");
            break;
        }
        ensure!(Instant::now() < deadline, "the poison record never reached the dead-letter queue");
    }
    Ok(())
}

#[tokio::test]
async fn every_record_delivered_twice_still_makes_one_message_each() -> anyhow::Result<()> {
    let mut cluster = Cluster::aws(1).await?;
    let sdk = cluster.emulator.as_ref().context("emulator")?.sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue = cluster.output("CHAT_PERSIST_QUEUE_URL")?;
    let room = cluster.public_room("alice", "room-").await?;
    let mut alice = cluster.connect(0, "alice").await?;
    alice.join(&room).await?;
    for i in 0..20 {
        alice.send(&room, &format!("d-{i}"), "twice").await?;
    }
    scenarios::accepted(&mut alice, 20).await?;
    // Duplicate every queued record before the function sees any: receive
    // them, send copies, make the originals visible again.
    let mut copied = 0;
    let deadline = Instant::now() + DEADLINE;
    while copied < 20 {
        ensure!(Instant::now() < deadline, "copied only {copied} records");
        let out =
            sqs.receive_message().queue_url(&queue).max_number_of_messages(10).wait_time_seconds(1).send().await?;
        for m in out.messages() {
            sqs.send_message().queue_url(&queue).message_body(m.body().unwrap_or_default()).send().await?;
            if let Some(handle) = m.receipt_handle() {
                sqs.change_message_visibility()
                    .queue_url(&queue)
                    .receipt_handle(handle)
                    .visibility_timeout(0)
                    .send()
                    .await?;
            }
            copied += 1;
        }
    }
    cluster.start_runner("persist", "CHAT_PERSIST_QUEUE_URL", &[])?;
    let accepted: BTreeSet<u64> = (1..=20).collect();
    wait_persisted(&cluster, &room, &accepted).await?;
    let report = chat_e2e::checker::check(&accepted, Some(&cluster.stored_seqs(&room).await?), &[]);
    ensure!(report.is_clean(), "{report:?}");
    // Everything drained: nothing left in flight, nothing dead-lettered.
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(cluster.output("CHAT_PERSIST_DEAD_LETTER_QUEUE_URL")?)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await?;
    let dead = attrs
        .attributes()
        .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages))
        .cloned()
        .unwrap_or_default();
    ensure!(dead == "0", "duplicates were dead-lettered: {dead}");
    Ok(())
}
