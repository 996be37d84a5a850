//! No seq holes from racing copies of one send: when the same
//! `client_message_id` reaches two gateways at the same moment (a client
//! resending after a reconnect), only one copy takes a seq, so the
//! receivers' next message is not held back by the reorder window.

use std::time::{Duration, Instant};

use anyhow::ensure;
use chat_e2e::cluster::Cluster;
use chat_e2e::scenarios;

/// Long enough that a message held back by a hole is unmistakable.
const REORDER_WINDOW: Duration = Duration::from_secs(5);

#[tokio::test]
async fn racing_copies_of_one_send_leave_no_hole() -> anyhow::Result<()> {
    let window_ms = REORDER_WINDOW.as_millis().to_string();
    let cluster = Cluster::aws_with(2, &[("CHAT_REORDER_WINDOW_MS", &window_ms)]).await?;
    let room = cluster.public_room("alice", "race-").await?;
    let mut bob = cluster.connect(1, "bob").await?;
    bob.join(&room).await?;
    let mut slowest = Duration::ZERO;
    for round in 0..5 {
        let id = format!("dup-{round}");
        let (a, b) = tokio::join!(
            cluster.send_unary(0, "alice", &room, &id, "the same message"),
            cluster.send_unary(1, "alice", &room, &id, "the same message"),
        );
        let (a, b) = (a??, b??);
        ensure!(a.seq == b.seq && a.message_id == b.message_id, "one message: {a:?} vs {b:?}");
        ensure!(a.duplicate != b.duplicate, "exactly one copy is the first: {a:?} vs {b:?}");
        let started = Instant::now();
        let next = cluster.send_unary(0, "alice", &room, &format!("next-{round}"), "after the race").await??;
        ensure!(next.seq == a.seq + 1, "the next message follows at once: {} after {}", next.seq, a.seq);
        let got = scenarios::messages(&mut bob, &room, 2).await?;
        slowest = slowest.max(started.elapsed());
        let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
        ensure!(seqs == [a.seq, next.seq], "bob got both once, in order: {seqs:?}");
    }
    eprintln!(
        "racing sends: the message after each race reached its receiver within {slowest:?} (window {REORDER_WINDOW:?})"
    );
    ensure!(
        slowest < REORDER_WINDOW / 4,
        "the message after a race reached its receiver in {slowest:?}; a hole would hold it for the {REORDER_WINDOW:?} window"
    );
    Ok(())
}

/// A sender that numbered a send and died before publishing it: the
/// client's retry with the same `client_message_id` (on another gateway)
/// publishes it under its seq, so receivers are not held back by the hole.
#[tokio::test]
async fn a_retry_fills_the_seq_its_dead_sender_took() -> anyhow::Result<()> {
    use chat_core::store::{SendRequest, Sequencer};
    let window_ms = REORDER_WINDOW.as_millis().to_string();
    let cluster = Cluster::aws_with(2, &[("CHAT_REORDER_WINDOW_MS", &window_ms)]).await?;
    let room = cluster.public_room("alice", "dead-").await?;
    let mut bob = cluster.connect(1, "bob").await?;
    bob.join(&room).await?;
    let emulator = cluster.emulator.as_ref().ok_or_else(|| anyhow::anyhow!("an emulator"))?;
    let store =
        chat_aws::dynamo::DynamoStore::new(emulator.dynamodb().await, chat_e2e::tables(|name| cluster.output(name))?);
    // What a gateway does before it publishes, and then it dies.
    let body = "sent just before the crash";
    let lost = store
        .accept_send(SendRequest {
            conversation_id: &room,
            sender: "alice",
            client_message_id: "lost",
            body,
            new_message_id: ulid::Ulid::new().to_string(),
            now_ms: chat_core::clock::now_ms(),
        })
        .await?;
    let next = cluster.send_unary(0, "alice", &room, "next", "after the crash").await??;
    ensure!(next.seq == lost.seq + 1, "{} follows {}", next.seq, lost.seq);
    let retried_at = Instant::now();
    let retry = cluster.send_unary(1, "alice", &room, "lost", body).await??;
    ensure!(retry.duplicate && retry.seq == lost.seq && retry.message_id == lost.message_id, "{retry:?}");
    let got = scenarios::messages(&mut bob, &room, 2).await?;
    let waited = retried_at.elapsed();
    let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
    ensure!(seqs == [lost.seq, next.seq], "bob got the hole's message and then the next: {seqs:?}");
    eprintln!("dead sender: the retry filled its seq and the next message arrived {waited:?} after it");
    ensure!(waited < REORDER_WINDOW / 4, "filled {waited:?} after the retry; the window is {REORDER_WINDOW:?}");
    Ok(())
}
