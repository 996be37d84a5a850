//! Function `persist` behind the local event source mapping, on the
//! emulator: the receipts its publishers leave to it (a stream's DELIVERED
//! acks) are recorded, redeliveries are harmless, a poison record goes to
//! the dead-letter queue after `maxReceiveCount` while its batch-mates are
//! recorded, and no message reaches its queue (messages are recorded by
//! whoever publishes them).

use std::time::Instant;

use anyhow::{Context, ensure};
use chat_core::envelope::{Envelope, Event};
use chat_e2e::cluster::Cluster;
use chat_e2e::{DEADLINE, scenarios};
use chat_proto::pb::MessageStatus;

/// Short visibility and two receives, so redrive happens within a test.
const FAST_REDRIVE: &[&str] = &["PersistVisibilityTimeoutSeconds=2", "PersistMaxReceiveCount=2"];

#[tokio::test]
async fn acks_are_recorded_and_reach_the_sender() -> anyhow::Result<()> {
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
    for m in scenarios::messages(&mut bob, &room, 60).await? {
        bob.ack(&room, m.seq).await?;
    }
    alice.wait_receipt("bob", MessageStatus::Delivered, 60).await?;
    let delivered = cluster.wait_delivered(&room, "bob", 60).await?;
    ensure!(delivered == Some(60), "bob's DELIVERED watermark at {delivered:?}");
    let stored = cluster.stored_seqs(&room).await?;
    ensure!(stored == (1..=60).collect::<Vec<_>>(), "stored {stored:?}");
    Ok(())
}

#[tokio::test]
async fn poison_record_is_dead_lettered_and_batch_mates_are_recorded() -> anyhow::Result<()> {
    let mut cluster = Cluster::aws_custom(1, &[], FAST_REDRIVE).await?;
    let sdk = cluster.emulator.as_ref().context("emulator")?.sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue = cluster.output("CHAT_PERSIST_QUEUE_URL")?;
    let dlq = cluster.output("CHAT_PERSIST_DEAD_LETTER_QUEUE_URL")?;
    // Queue the poison first so it shares a batch with real receipts.
    sqs.send_message().queue_url(&queue).message_body("{\"v\":1,\"this is\":\"not an envelope\"").send().await?;
    let room = cluster.public_room("alice", "room-").await?;
    let mut alice = cluster.connect(0, "alice").await?;
    let mut bob = cluster.connect(0, "bob").await?;
    alice.join(&room).await?;
    bob.join(&room).await?;
    for i in 0..5 {
        alice.send(&room, &format!("b-{i}"), "batch-mate").await?;
    }
    scenarios::accepted(&mut alice, 5).await?;
    scenarios::messages(&mut bob, &room, 5).await?;
    bob.ack(&room, 5).await?;
    alice.wait_receipt("bob", MessageStatus::Delivered, 5).await?;
    cluster.start_runner("persist", "CHAT_PERSIST_QUEUE_URL", &[("CHAT_BATCHING_WINDOW_MS", "1000")])?;
    let delivered = cluster.wait_delivered(&room, "bob", 5).await?;
    ensure!(delivered == Some(5), "bob's DELIVERED watermark at {delivered:?}");

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
async fn every_record_delivered_twice_changes_nothing_twice() -> anyhow::Result<()> {
    let mut cluster = Cluster::aws(1).await?;
    let sdk = cluster.emulator.as_ref().context("emulator")?.sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue = cluster.output("CHAT_PERSIST_QUEUE_URL")?;
    let room = cluster.public_room("alice", "room-").await?;
    let mut alice = cluster.connect(0, "alice").await?;
    let mut bob = cluster.connect(0, "bob").await?;
    alice.join(&room).await?;
    bob.join(&room).await?;
    // Five messages, each acknowledged on its own (its receipt seen before
    // the next ack), so each is a record of its own.
    let mut sent = Vec::new();
    for i in 0..5 {
        alice.send(&room, &format!("d-{i}"), "twice").await?;
        sent.push(scenarios::accepted(&mut alice, 1).await?.remove(0));
        let m = scenarios::messages(&mut bob, &room, 1).await?.remove(0);
        bob.ack(&room, m.seq).await?;
        alice.wait_receipt("bob", MessageStatus::Delivered, m.seq).await?;
    }
    // Duplicate every queued record before the function sees any: receive
    // them, send copies, make the originals visible again. None is a
    // message: the queue's filter keeps them out.
    let mut copied = 0;
    let deadline = Instant::now() + DEADLINE;
    while copied < 5 {
        ensure!(Instant::now() < deadline, "copied only {copied} records");
        let out =
            sqs.receive_message().queue_url(&queue).max_number_of_messages(10).wait_time_seconds(1).send().await?;
        for m in out.messages() {
            let body = m.body().unwrap_or_default();
            let envelope = Envelope::decode(body).context("a record of the persist queue")?;
            ensure!(matches!(envelope.event, Event::Receipt(_)), "persist's queue got {envelope:?}");
            sqs.send_message().queue_url(&queue).message_body(body).send().await?;
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
    let delivered = cluster.wait_delivered(&room, "bob", 5).await?;
    ensure!(delivered == Some(5), "bob's DELIVERED watermark at {delivered:?}");
    // Every message DELIVERED, at the time of an ack covering it: the
    // copies moved nothing twice or backwards (records come in any order,
    // so a later ack recorded first also times the messages before it).
    let (mut times, mut sent_at) = (Vec::new(), Vec::new());
    for accepted in &sent {
        let status = cluster
            .wait_message_status("alice", &room, &accepted.message_id, |s| {
                s.recipients.iter().any(|m| m.user_id == "bob" && m.status == MessageStatus::Delivered as i32)
            })
            .await?;
        let bob = status.recipients.iter().find(|m| m.user_id == "bob").context("bob's status")?;
        times.push(bob.delivered_at_ms);
        sent_at.push(status.sent_at_ms);
    }
    ensure!(
        times.windows(2).all(|w| w[0] <= w[1]) && times.iter().zip(&sent_at).all(|(t, s)| t >= s),
        "delivery times {times:?} for messages sent at {sent_at:?}"
    );
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
