//! Durability on the AWS path, judged by the checker (lost / duplicated /
//! reordered must all be 0): many users on two gateways, a gateway killed
//! mid-stream with its clients resuming on the other, and `persist` stopped
//! and restarted. Also history and resume with `persist` storing for real.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::ensure;
use chat_e2e::checker::{self, Received};
use chat_e2e::client::TestClient;
use chat_e2e::cluster::Cluster;
use chat_e2e::{scenarios, stored};
use chat_proto::pb::MessageStatus;

async fn aws_with_persist(gateways: usize) -> anyhow::Result<Cluster> {
    let mut cluster = Cluster::aws(gateways).await?;
    cluster.start_runner("persist", "CHAT_PERSIST_QUEUE_URL", &[])?;
    Ok(cluster)
}

/// Sends `count` messages and returns the client with the accepted seqs.
async fn send_all(mut client: TestClient, room: String, count: usize, pace: Duration) -> anyhow::Result<Vec<u64>> {
    for i in 0..count {
        client.send(&room, &format!("{}-{i}", client.user), &format!("{} says {i}", client.user)).await?;
        if !pace.is_zero() {
            tokio::time::sleep(pace).await;
        }
    }
    Ok(scenarios::accepted(&mut client, count).await?.into_iter().map(|a| a.seq).collect())
}

fn seqs(client: &TestClient, room: &str) -> Vec<u64> {
    client.messages_of(room).iter().map(|m| m.seq).collect()
}

#[tokio::test]
async fn thousand_messages_from_several_users_on_two_gateways() -> anyhow::Result<()> {
    let cluster = aws_with_persist(2).await?;
    let room = cluster.public_room("u0", "load-").await?;
    let users = ["u0", "u1", "u2", "u3"];
    let mut listeners = Vec::new();
    let mut senders = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let mut sender = cluster.connect(i % 2, user).await?;
        sender.join(&room).await?;
        senders.push(sender);
        let mut listener = cluster.connect((i + 1) % 2, &format!("{user}-reader")).await?;
        listener.join(&room).await?;
        listeners.push(listener);
    }
    let tasks: Vec<_> =
        senders.into_iter().map(|s| tokio::spawn(send_all(s, room.clone(), 250, Duration::ZERO))).collect();
    let mut accepted = BTreeSet::new();
    for task in tasks {
        accepted.extend(task.await??);
    }
    ensure!(accepted.len() == 1000, "accepted {}", accepted.len());
    for listener in &mut listeners {
        scenarios::messages(listener, &room, 1000).await?;
    }
    let stored = cluster.wait_stored(&room, &accepted).await?;
    let received: Vec<(Received, u64)> =
        listeners.iter().map(|l| (Received { member: l.user.clone(), seqs: seqs(l, &room) }, 0)).collect();
    let report = checker::check(&accepted, Some(&stored), &received);
    ensure!(report.is_clean(), "{report:?}");
    Ok(())
}

#[tokio::test]
async fn gateway_killed_mid_stream_clients_resume_on_the_other() -> anyhow::Result<()> {
    let mut cluster = aws_with_persist(2).await?;
    let room = cluster.public_room("alice", "kill-").await?;
    let mut alice = cluster.connect(0, "alice").await?;
    alice.join(&room).await?;
    let mut bob = cluster.connect(1, "bob").await?;
    bob.join(&room).await?;
    let mut carol = cluster.connect(0, "carol").await?;
    carol.join(&room).await?;
    let sender = tokio::spawn(send_all(alice, room.clone(), 300, Duration::from_millis(10)));

    // Kill bob's gateway once he is part-way through.
    scenarios::messages(&mut bob, &room, 60).await?;
    cluster.kill_gateway(1);
    let before: Vec<u64> = seqs(&bob, &room);
    let resume_from = before.iter().copied().max().unwrap_or(0);
    let killed_at = Instant::now();
    let mut bob2 = cluster.connect(0, "bob").await?;
    bob2.join_resume(&room, resume_from).await?;
    let caught_up_to = |c: &TestClient| seqs(c, &room).last().copied().unwrap_or(0);
    let resumed_in = killed_at.elapsed();

    let accepted: BTreeSet<u64> = sender.await??.into_iter().collect();
    let last = accepted.iter().copied().max().unwrap_or(0);
    bob2.wait_for(|e| {
        matches!(e, chat_proto::pb::server_event::Event::Message(m) if m.conversation_id == room && m.seq == last)
            .then_some(())
    })
    .await?;
    carol
        .wait_for(|e| {
            matches!(e, chat_proto::pb::server_event::Event::Message(m) if m.conversation_id == room && m.seq == last)
                .then_some(())
        })
        .await?;
    let stored = cluster.wait_stored(&room, &accepted).await?;
    let mut bob_all = before;
    bob_all.extend(seqs(&bob2, &room));
    let report = checker::check(
        &accepted,
        Some(&stored),
        &[
            (Received { member: "bob (killed gateway, then resumed)".into(), seqs: bob_all }, 0),
            (Received { member: "carol".into(), seqs: seqs(&carol, &room) }, 0),
        ],
    );
    ensure!(report.is_clean(), "{report:?}");
    eprintln!(
        "resume after SIGKILL: bob resumed after seq {resume_from} (rejoined {:.0} ms after the kill, first resumed seq {:?}); {} messages; last {last} (bob at {}); checker {report:?}",
        resumed_in.as_secs_f64() * 1000.0,
        seqs(&bob2, &room).first(),
        accepted.len(),
        caught_up_to(&bob2),
    );
    Ok(())
}

#[tokio::test]
async fn persist_stopped_and_restarted_drains_its_backlog() -> anyhow::Result<()> {
    // A runner killed during a long poll may have taken a record with it;
    // like on Lambda, the record returns after the visibility timeout, kept
    // short here.
    let mut cluster = Cluster::aws_custom(1, &[], &["PersistVisibilityTimeoutSeconds=3"]).await?;
    let runner = cluster.start_runner("persist", "CHAT_PERSIST_QUEUE_URL", &[])?;
    let room = cluster.public_room("alice", "backlog-").await?;
    let mut alice = cluster.connect(0, "alice").await?;
    let mut bob = cluster.connect(0, "bob").await?;
    alice.join(&room).await?;
    bob.join(&room).await?;
    let mut accepted = BTreeSet::new();
    for i in 0..40 {
        alice.send(&room, &format!("a-{i}"), "while running").await?;
    }
    accepted.extend(scenarios::accepted(&mut alice, 40).await?.into_iter().map(|a| a.seq));
    scenarios::messages(&mut bob, &room, 40).await?;
    bob.ack(&room, 40).await?;
    let delivered = cluster.wait_delivered(&room, "bob", 40).await?;
    ensure!(delivered == Some(40), "bob's acks recorded up to {delivered:?} with persist running");
    cluster.kill_runner(runner);
    for i in 0..60 {
        alice.send(&room, &format!("b-{i}"), "while stopped").await?;
    }
    accepted.extend(scenarios::accepted(&mut alice, 60).await?.into_iter().map(|a| a.seq));
    scenarios::messages(&mut bob, &room, 60).await?;
    bob.ack(&room, 100).await?;
    // Accepting records the message: history is whole without persist.
    let meanwhile = cluster.stored_seqs(&room).await?;
    let report = checker::check(&accepted, Some(&meanwhile), &[]);
    ensure!(report.is_clean() && meanwhile.len() == 100, "stored while persist was stopped: {report:?}");
    // The ack reached alice live, and waits in the queue for persist.
    alice.wait_receipt("bob", MessageStatus::Delivered, 100).await?;
    let delivered = cluster.delivered_seq(&room, "bob").await?;
    ensure!(delivered == Some(40), "an ack is persist's to record and waits for it: {delivered:?}");
    cluster.start_runner("persist", "CHAT_PERSIST_QUEUE_URL", &[])?;
    let delivered = cluster.wait_delivered(&room, "bob", 100).await?;
    ensure!(delivered == Some(100), "persist drained its backlog: bob's acks recorded up to {delivered:?}");
    let stored = cluster.stored_seqs(&room).await?;
    let report = checker::check(&accepted, Some(&stored), &[]);
    ensure!(report.is_clean() && stored.len() == 100, "{report:?}");
    Ok(())
}

#[tokio::test]
async fn history_paging_and_authorisation_on_stored_messages() -> anyhow::Result<()> {
    let cluster = aws_with_persist(2).await?;
    stored::history_paging_and_authorisation(&cluster).await
}

#[tokio::test]
async fn resume_after_reconnect_to_the_other_gateway() -> anyhow::Result<()> {
    let cluster = aws_with_persist(2).await?;
    stored::resume_after_reconnect(&cluster).await
}
