//! No stalls from seq holes, across two gateways on the emulator:
//! - racing copies of one send (the same `client_message_id` on two gateways
//!   at once) are one message; a seq the losing copy took is void at once,
//!   so nothing after it stalls;
//! - a seq whose sender died after recording its message is delivered from
//!   the store;
//! - a seq whose sender died before recording anything is settled as void:
//!   receivers, history and resume all pass over it, well before the
//!   reorder window.

use std::time::{Duration, Instant};

use anyhow::ensure;
use chat_e2e::cluster::Cluster;
use chat_e2e::scenarios;

/// Long enough that a message held back by a hole is unmistakable.
const REORDER_WINDOW: Duration = Duration::from_secs(5);

#[tokio::test]
async fn racing_copies_of_one_send_are_one_message_and_stall_nothing() -> anyhow::Result<()> {
    use chat_core::store::{History, Settled};
    let window_ms = REORDER_WINDOW.as_millis().to_string();
    let cluster = Cluster::aws_with(2, &[("CHAT_REORDER_WINDOW_MS", &window_ms)]).await?;
    let store = cluster.store().await?;
    let room = cluster.public_room("alice", "race-").await?;
    let mut bob = cluster.connect(1, "bob").await?;
    bob.join(&room).await?;
    let mut slowest = Duration::ZERO;
    let mut given_up = 0;
    let mut last = 0;
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
        let got = scenarios::messages(&mut bob, &room, 2).await?;
        slowest = slowest.max(started.elapsed());
        let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
        ensure!(seqs == [a.seq, next.seq], "bob got both once, in order: {seqs:?}");
        // The losing copy took at most one seq of its own, and it is void.
        let others: Vec<u64> = (last + 1..next.seq).filter(|seq| *seq != a.seq).collect();
        ensure!(others.len() <= 1, "one race took seqs {others:?} besides its message's {}", a.seq);
        for seq in others {
            ensure!(store.settle(&room, seq).await? == Settled::Void, "seq {seq} holds nothing");
            given_up += 1;
        }
        last = next.seq;
    }
    eprintln!(
        "racing sends: {given_up} of 5 races gave up a seq; the message after each race reached its receiver within {slowest:?} (window {REORDER_WINDOW:?})"
    );
    ensure!(
        slowest < REORDER_WINDOW / 4,
        "the message after a race reached its receiver in {slowest:?}; a hole would hold it for the {REORDER_WINDOW:?} window"
    );
    Ok(())
}

/// A sender that accepted a send, recorded it and died before publishing: receivers deliver it from the store once the gap has waited
/// the settle delay, and the client's retry is answered with it.
#[tokio::test]
async fn a_dead_senders_recorded_message_is_delivered_from_the_store() -> anyhow::Result<()> {
    use chat_core::store::{SendRequest, Sequencer};
    let window_ms = REORDER_WINDOW.as_millis().to_string();
    let cluster = Cluster::aws_with(2, &[("CHAT_REORDER_WINDOW_MS", &window_ms)]).await?;
    let room = cluster.public_room("alice", "dead-").await?;
    let mut bob = cluster.connect(1, "bob").await?;
    bob.join(&room).await?;
    let store = cluster.store().await?;
    let body = "sent just before the crash";
    let request = || SendRequest {
        conversation_id: &room,
        sender: "alice",
        client_message_id: "lost",
        body,
        new_message_id: ulid::Ulid::new().to_string(),
        now_ms: chat_core::clock::now_ms(),
        origin: "test",
    };
    let accepted = store.accept_send(request()).await?;
    let lost = store.record_send(request(), accepted).await?;
    let sent_at = Instant::now();
    let next = cluster.send_unary(0, "alice", &room, "next", "after the crash").await??;
    ensure!(next.seq == lost.seq + 1, "{} follows {}", next.seq, lost.seq);
    let got = scenarios::messages(&mut bob, &room, 2).await?;
    let waited = sent_at.elapsed();
    let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
    ensure!(seqs == [lost.seq, next.seq], "bob got the dead sender's message and then the next: {seqs:?}");
    ensure!(got[0].body == body && got[0].message_id == lost.message_id, "from the store: {:?}", got[0]);
    eprintln!("dead sender (recorded): both messages reached bob {waited:?} after the next send");
    ensure!(waited < REORDER_WINDOW / 4, "delivered {waited:?} after the next send; the window is {REORDER_WINDOW:?}");
    let retry = cluster.send_unary(1, "alice", &room, "lost", body).await??;
    ensure!(retry.duplicate && retry.seq == lost.seq && retry.message_id == lost.message_id, "{retry:?}");
    Ok(())
}

/// A sender that took a seq and died before recording anything (no
/// `client_message_id`, so no retry will come): receivers settle the seq as
/// void and deliver what follows well before the window; history leaves it
/// out, and a resume from before it passes over it without waiting.
#[tokio::test]
async fn a_seq_its_dead_sender_never_recorded_is_settled_as_void() -> anyhow::Result<()> {
    use chat_core::store::{History, Settled};
    use chat_e2e::stored::Reader;
    use chat_proto::pb::GetHistoryRequest;
    use chat_proto::pb::get_history_request::Direction;
    let window_ms = REORDER_WINDOW.as_millis().to_string();
    let cluster = Cluster::aws_with(2, &[("CHAT_REORDER_WINDOW_MS", &window_ms)]).await?;
    let room = cluster.public_room("alice", "void-").await?;
    let mut bob = cluster.connect(1, "bob").await?;
    bob.join(&room).await?;
    let before = cluster.send_unary(0, "alice", &room, "", "before the crash").await??;
    scenarios::messages(&mut bob, &room, 1).await?;
    // What a gateway does first for a send, and then it dies.
    let store = cluster.store().await?;
    let void = store.next_seq(&room, chat_core::clock::now_ms()).await?.seq;
    ensure!(void == before.seq + 1, "the dead sender took {void} after {}", before.seq);
    let sent_at = Instant::now();
    let after = cluster.send_unary(0, "alice", &room, "", "after the crash").await??;
    ensure!(after.seq == void + 1, "{} follows the void {void}", after.seq);
    let got = scenarios::messages(&mut bob, &room, 1).await?;
    let waited = sent_at.elapsed();
    ensure!(got[0].seq == after.seq, "bob got the next message: {:?}", got[0]);
    eprintln!("dead sender (nothing recorded): the next message reached bob {waited:?} after it was sent");
    ensure!(
        waited < REORDER_WINDOW / 4,
        "the next message waited {waited:?}; a hole would hold it for the {REORDER_WINDOW:?} window"
    );
    ensure!(store.settle(&room, void).await? == Settled::Void, "the store says void");

    let mut reader = Reader::new(&cluster, 0, "alice").await?;
    let request = GetHistoryRequest {
        conversation_id: room.clone(),
        page_size: 1,
        direction: Direction::Forward as i32,
        ..Default::default()
    };
    let (first, page) = reader.seqs(request.clone()).await?;
    let (second, _) = reader.seqs(GetHistoryRequest { cursor: page.next_cursor, ..request }).await?;
    ensure!([first, second].concat() == [before.seq, after.seq], "history pages over the void, one message per page");

    let mut carol = cluster.connect(1, "carol").await?;
    let resumed_at = Instant::now();
    carol.join_resume(&room, before.seq - 1).await?;
    let got = scenarios::messages(&mut carol, &room, 2).await?;
    let resumed = resumed_at.elapsed();
    let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
    ensure!(seqs == [before.seq, after.seq], "resume passes over the void: {seqs:?}");
    eprintln!("resume across the void took {resumed:?}");
    ensure!(resumed < REORDER_WINDOW / 4, "resume across a void took {resumed:?}");
    Ok(())
}

/// A sender that numbered an idempotent send and died before recording it;
/// receivers void its seq, and the client's retry comes after: it is
/// numbered again and delivered under a new seq, once, with its identity.
#[tokio::test]
async fn a_retry_after_its_seq_was_voided_takes_a_new_one() -> anyhow::Result<()> {
    use chat_core::store::{History, SendRequest, Sequencer, Settled};
    let window_ms = REORDER_WINDOW.as_millis().to_string();
    let cluster = Cluster::aws_with(2, &[("CHAT_REORDER_WINDOW_MS", &window_ms)]).await?;
    let room = cluster.public_room("alice", "late-").await?;
    let mut bob = cluster.connect(1, "bob").await?;
    bob.join(&room).await?;
    let store = cluster.store().await?;
    let body = "numbered, never recorded";
    let lost = store
        .accept_send(SendRequest {
            conversation_id: &room,
            sender: "alice",
            client_message_id: "late",
            body,
            new_message_id: ulid::Ulid::new().to_string(),
            now_ms: chat_core::clock::now_ms(),
            origin: "test",
        })
        .await?;
    let next = cluster.send_unary(0, "alice", &room, "", "meanwhile").await??;
    ensure!(scenarios::messages(&mut bob, &room, 1).await?[0].seq == next.seq, "bob got what followed the hole");
    ensure!(store.settle(&room, lost.seq).await? == Settled::Void, "the dead sender's seq is void");
    let retry = cluster.send_unary(1, "alice", &room, "late", body).await??;
    ensure!(
        retry.seq > next.seq && retry.message_id == lost.message_id && !retry.duplicate,
        "the retry is numbered again under its identity: {retry:?} after {lost:?}"
    );
    let got = scenarios::messages(&mut bob, &room, 1).await?;
    ensure!(got[0].seq == retry.seq && got[0].body == body, "bob got it under its new seq: {:?}", got[0]);
    let again = cluster.send_unary(0, "alice", &room, "late", body).await??;
    ensure!(again.duplicate && again.seq == retry.seq, "a further retry answers with the new seq: {again:?}");
    Ok(())
}
