//! AWS failures injected between the gateways and the emulator (the
//! `faults` proxy): throttling and 5xx from SNS, SQS and DynamoDB. Sends
//! either succeed after the SDK's retries or answer `UNAVAILABLE` and
//! succeed when retried with the same `client_message_id`; pollers back off
//! and recover; the checker stays at 0 lost, 0 duplicated, 0 reordered.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use chat_e2e::checker::{self, Received};
use chat_e2e::client::TestClient;
use chat_e2e::cluster::Cluster;
use chat_e2e::faults::{Fault, FaultProxy, Rule, Service};
use chat_e2e::scenarios;
use chat_proto::pb::server_event::Event;

/// Two gateways whose AWS calls all go through a fault proxy, and `persist`
/// storing (straight to the emulator).
async fn cluster_behind_proxy() -> anyhow::Result<(Cluster, FaultProxy)> {
    let mut cluster = Cluster::aws(0).await?;
    let emulator = cluster.emulator.as_ref().ok_or_else(|| anyhow::anyhow!("an emulator"))?;
    let proxy = FaultProxy::start(&emulator.aws_env()).await?;
    let env = proxy.gateway_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    for _ in 0..2 {
        cluster.start_gateway(&env).await?;
    }
    cluster.start_runner("persist", "CHAT_PERSIST_QUEUE_URL", &[])?;
    Ok((cluster, proxy))
}

/// Sends on the stream until accepted, resending with the same
/// `client_message_id` after each `UNAVAILABLE`; returns the seq and how
/// many retries it took.
async fn send_until_accepted(client: &mut TestClient, room: &str, id: &str, body: &str) -> anyhow::Result<(u64, u32)> {
    for retries in 0..20 {
        client.send(room, id, body).await?;
        let answer = client
            .wait_for(|e| match e {
                Event::SendAccepted(a) if a.client_message_id == id => Some(Ok(a.seq)),
                Event::Error(err) if err.client_message_id == id => Some(Err(err.clone())),
                _ => None,
            })
            .await?;
        match answer {
            Ok(seq) => return Ok((seq, retries)),
            Err(err) if err.code == tonic::Code::Unavailable as i32 => continue,
            Err(err) => bail!("send {id} refused: {} {}", err.code, err.message),
        }
    }
    bail!("send {id} still unavailable after 20 attempts")
}

#[tokio::test]
async fn sends_survive_throttling_and_server_errors_with_nothing_lost() -> anyhow::Result<()> {
    let (cluster, proxy) = cluster_behind_proxy().await?;
    // carol's linked channel makes every message the offline fallback's
    // business, so each is also published to the topic (SNS in the path).
    let linked = cluster.link_channel(0, "carol", "telegram:7").await?;
    ensure!(linked.is_ok(), "linking carol: {linked:?}");
    let room = cluster.public_room("alice", "faults-").await?;
    let mut alice = cluster.connect(0, "alice").await?;
    let mut bob = cluster.connect(1, "bob").await?;
    let mut carol = cluster.connect(1, "carol").await?;
    let mut dave = cluster.connect(0, "dave").await?;
    for client in [&mut alice, &mut bob, &mut carol, &mut dave] {
        client.join(&room).await?;
    }
    proxy.inject(Rule::every(Service::DynamoDb, Fault::Throttle, 4));
    proxy.inject(Rule::every(Service::Sns, Fault::Unavailable, 3));
    proxy.inject(Rule::every(Service::Sqs, Fault::Internal, 3));
    let per_sender = 25;
    let mut accepted = BTreeSet::new();
    let mut retries = 0;
    for i in 0..per_sender {
        for sender in [&mut alice, &mut bob] {
            let id = format!("{}-{i}", sender.user);
            let (seq, tries) = send_until_accepted(sender, &room, &id, &format!("{id} under faults")).await?;
            ensure!(accepted.insert(seq), "seq {seq} accepted twice");
            retries += tries;
        }
    }
    let started = Instant::now();
    let mut received = Vec::new();
    for reader in [&mut carol, &mut dave] {
        let got = scenarios::messages(reader, &room, accepted.len()).await?;
        received.push((Received { member: reader.user.clone(), seqs: got.iter().map(|m| m.seq).collect() }, 0));
    }
    let delivered_in = started.elapsed();
    proxy.heal();
    let stored = cluster.wait_stored(&room, &accepted).await?;
    let report = checker::check(&accepted, Some(&stored), &received);
    let injected: Vec<(Service, (u64, u64))> =
        [Service::DynamoDb, Service::Sns, Service::Sqs].into_iter().map(|s| (s, proxy.calls(s, None))).collect();
    eprintln!(
        "faults: {} sends, {retries} client retries, calls (seen, failed) {injected:?}, readers done {delivered_in:?} after the last send, checker {report:?}",
        accepted.len()
    );
    ensure!(report.is_clean(), "checker: {report:?}");
    for (service, (_, failed)) in injected {
        ensure!(failed > 0, "no {service:?} call failed: the proxy was not in the path");
    }
    Ok(())
}

#[tokio::test]
async fn a_send_during_a_dynamodb_outage_is_unavailable_and_its_retry_lands_once() -> anyhow::Result<()> {
    let (cluster, proxy) = cluster_behind_proxy().await?;
    let room = cluster.public_room("alice", "outage-").await?;
    let mut bob = cluster.connect(1, "bob").await?;
    bob.join(&room).await?;
    proxy.inject(Rule::all(Service::DynamoDb, Fault::Unavailable));
    let started = Instant::now();
    let refused = cluster.send_unary(0, "alice", &room, "during", "while DynamoDB is down").await?;
    let answered_in = started.elapsed();
    let status = match refused {
        Ok(answer) => bail!("accepted while DynamoDB is down: {answer:?}"),
        Err(status) => status,
    };
    ensure!(status.code() == tonic::Code::Unavailable, "{status:?}");
    ensure!(status.message().contains("client_message_id"), "the answer says how to retry: {status:?}");
    ensure!(answered_in < Duration::from_secs(10), "UNAVAILABLE took {answered_in:?}");
    proxy.heal();
    let first = cluster.send_unary(0, "alice", &room, "during", "while DynamoDB is down").await??;
    let again = cluster.send_unary(1, "alice", &room, "during", "while DynamoDB is down").await??;
    ensure!(!first.duplicate && again.duplicate && again.seq == first.seq, "{first:?} then {again:?}");
    let got = scenarios::messages(&mut bob, &room, 1).await?;
    ensure!(got[0].seq == first.seq, "{got:?}");
    let stored = cluster.wait_stored(&room, &BTreeSet::from([first.seq])).await?;
    ensure!(stored == [first.seq], "stored once: {stored:?}");
    eprintln!("outage: UNAVAILABLE after {answered_in:?}; the retry landed as seq {}", first.seq);
    Ok(())
}

#[tokio::test]
async fn pollers_back_off_while_sqs_fails_and_recover_after() -> anyhow::Result<()> {
    let (cluster, proxy) = cluster_behind_proxy().await?;
    let room = cluster.public_room("alice", "poll-").await?;
    let mut bob = cluster.connect(1, "bob").await?;
    bob.join(&room).await?;
    let outage = Duration::from_secs(3);
    proxy.inject(Rule::all(Service::Sqs, Fault::Unavailable).operation("ReceiveMessage"));
    // A long poll already in flight is not affected: wait until every
    // gateway's poller has met the outage.
    let deadline = Instant::now() + Duration::from_secs(30);
    for gateway in &cluster.gateways {
        while proxy.calls_on(Service::Sqs, Some("ReceiveMessage"), &gateway.instance_id).1 == 0 {
            ensure!(Instant::now() < deadline, "gateway {} never polled into the outage", gateway.instance_id);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (before, failed_before) = proxy.calls(Service::Sqs, Some("ReceiveMessage"));
    let sent = cluster.send_unary(0, "alice", &room, "in-outage", "sent while receives fail").await??;
    let early = bob.wait_for_within(outage, |e| matches!(e, Event::Message(_)).then_some(())).await;
    ensure!(early.is_err(), "a message arrived while every receive failed: the outage is not in the path");
    let (during, failed_during) = proxy.calls(Service::Sqs, Some("ReceiveMessage"));
    let failed = failed_during - failed_before;
    proxy.heal();
    let healed = Instant::now();
    let got = scenarios::messages(&mut bob, &room, 1).await?;
    let recovered_in = healed.elapsed();
    ensure!(got[0].seq == sent.seq, "{got:?}");
    let attempts = during - before;
    eprintln!(
        "poll outage {outage:?}: {attempts} receive calls ({failed} failed) from 2 gateways, delivered {recovered_in:?} after healing"
    );
    // Without backoff a failing poller retries as fast as the proxy answers
    // (thousands of calls in 3 s); with it, a handful per poller.
    ensure!(attempts < 120, "{attempts} receive calls in {outage:?}: the pollers do not back off");
    ensure!(failed > 0, "the outage was not in the path");
    ensure!(recovered_in < Duration::from_secs(15), "recovered only {recovered_in:?} after healing");
    Ok(())
}
