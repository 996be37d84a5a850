//! Member routing on the emulator: events reach only the gateways that
//! hold a member's stream, and every race around who holds one loses
//! nothing (a join racing sends, a gateway dying in others' route sets, a
//! gateway restarting with a new queue, a presence lease expiring, a route
//! leaving while idle, a conversation on more gateways than it routes to).
//! Broadcast, by flag, is checked beside it.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use chat_e2e::checker::{self, Received};
use chat_e2e::client::TestClient;
use chat_e2e::cluster::Cluster;
use chat_e2e::scenarios;
use chat_proto::pb::MessageStatus;
use chat_proto::pb::server_event::Event;

/// Sends `count` messages without waiting between them; returns the seqs
/// accepted.
async fn send_burst(sender: &mut TestClient, room: &str, tag: &str, count: usize) -> anyhow::Result<BTreeSet<u64>> {
    for i in 0..count {
        let id = format!("{tag}-{i}");
        sender.send(room, &id, &id).await?;
    }
    Ok(scenarios::accepted(sender, count).await?.into_iter().map(|a| a.seq).collect())
}

/// Waits until `receiver` holds every seq of `expected` in `room`, then
/// checks it got each once and in order after `from`.
async fn received_all(
    receiver: &mut TestClient,
    room: &str,
    expected: &BTreeSet<u64>,
    from: u64,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen: BTreeSet<u64> = receiver.messages_of(room).iter().map(|m| m.seq).collect();
        if expected.iter().filter(|s| **s > from).all(|s| seen.contains(s)) {
            break;
        }
        if Instant::now() > deadline {
            bail!("{} is missing {:?}", receiver.user, expected.difference(&seen).collect::<Vec<_>>());
        }
        receiver.next_event(Duration::from_millis(200)).await?;
    }
    let seqs = receiver.messages_of(room).iter().map(|m| m.seq).collect();
    let report = checker::check(expected, None, &[(Received { member: receiver.user.clone(), seqs }, from)]);
    ensure!(report.is_clean(), "{report:?}");
    Ok(())
}

/// The route ids the conversation holds now.
async fn routes(cluster: &Cluster, room: &str) -> anyhow::Result<chat_core::store::Routes> {
    let (_, routes) = cluster.store().await?.read_routes(room).await?.context("the conversation exists")?;
    Ok(routes)
}

fn holds(routes: &chat_core::store::Routes, cluster: &Cluster, index: usize) -> bool {
    let prefix = format!("{}~", cluster.gateways[index].instance_id);
    routes.gateways.iter().any(|r| r.starts_with(&prefix))
}

/// Waits until `check` holds of the conversation's routes.
async fn wait_routes(
    cluster: &Cluster,
    room: &str,
    what: &str,
    check: impl Fn(&chat_core::store::Routes) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = routes(cluster, room).await?;
        if check(&now) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("routes never {what}: {now:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn received_events(scrape: &chat_e2e::metrics::Scrape) -> f64 {
    scrape.sum("chat_bus_events_received_total", &[])
}

fn sqs_sends(scrape: &chat_e2e::metrics::Scrape) -> f64 {
    scrape.sum("chat_aws_requests_total", &[("service", "SQS"), ("operation", "SendMessageBatch")])
}

/// A one-to-one conversation on gateways 0 and 1 of three: gateway 2 hears
/// none of it; messages, typing and receipts reach the other member; the
/// sender's own gateway delivers to itself without a queue.
#[tokio::test]
async fn a_conversation_reaches_only_its_members_gateways() -> anyhow::Result<()> {
    let cluster = Cluster::aws(3).await?;
    let room = cluster.public_room("alice", "routed-").await?;
    let mut alice = cluster.connect(0, "alice").await?;
    let mut bob = cluster.connect(1, "bob").await?;
    alice.join(&room).await?;
    bob.join(&room).await?;
    let routes = routes(&cluster, &room).await?;
    ensure!(routes.gateways.len() == 2 && holds(&routes, &cluster, 0) && holds(&routes, &cluster, 1), "{routes:?}");
    let accepted = send_burst(&mut alice, &room, "a", 20).await?;
    received_all(&mut bob, &room, &accepted, 0).await?;
    received_all(&mut alice, &room, &accepted, 0).await?;
    bob.typing(&room, true).await?;
    alice.wait_for(|e| matches!(e, Event::Typing(t) if t.user_id == "bob" && t.typing).then_some(())).await?;
    let last = *accepted.last().context("sent")?;
    bob.read(&room, last).await?;
    alice.wait_receipt("bob", chat_proto::pb::MessageStatus::Read, last).await?;
    let third = cluster.scrape(2).await?;
    ensure!(received_events(&third) == 0.0, "gateway 2 received events of a conversation it has no member in");
    let (first, second) = (cluster.scrape(0).await?, cluster.scrape(1).await?);
    ensure!(sqs_sends(&first) >= 1.0, "gateway 0 sent its messages straight to gateway 1's queue");
    ensure!(received_events(&second) >= 20.0, "gateway 1 received them");
    Ok(())
}

/// A join racing sends on another gateway, at many points of the join:
/// the joiner's gateway registers before it reads the latest seq, so each
/// message comes from the store (at or below it) or live (above it), never
/// neither, never both. No message follows the race, so a message the
/// routes missed would stay missing (a later one would reveal the gap and
/// have it settled from the store).
#[tokio::test]
async fn a_join_racing_sends_loses_nothing() -> anyhow::Result<()> {
    let cluster = Cluster::aws(2).await?;
    for round in 0..10u64 {
        let room = cluster.public_room("alice", "race-").await?;
        let mut alice = cluster.connect(0, "alice").await?;
        let mut bob = cluster.connect(1, "bob").await?;
        alice.join(&room).await?;
        let (sent, joined) = tokio::join!(
            async {
                for i in 0..3 {
                    // Spread over the join, a little later each round.
                    tokio::time::sleep(Duration::from_millis(4 * round + 5 * i)).await;
                    alice.send(&room, &format!("r{round}-{i}"), "racing").await?;
                }
                anyhow::Ok(())
            },
            bob.join_resume(&room, 0)
        );
        sent?;
        joined?;
        let accepted: BTreeSet<u64> = scenarios::accepted(&mut alice, 3).await?.into_iter().map(|a| a.seq).collect();
        received_all(&mut bob, &room, &accepted, 0).await.with_context(|| format!("round {round}"))?;
    }
    Ok(())
}

/// What the janitor does to a dead gateway's queue: deletes it, then its
/// subscription.
async fn reap(cluster: &Cluster, queue_url: &str) -> anyhow::Result<()> {
    let sdk = cluster.emulator.as_ref().context("an emulator")?.sdk_config().await;
    aws_sdk_sqs::Client::new(&sdk).delete_queue().queue_url(queue_url).send().await?;
    let sns = aws_sdk_sns::Client::new(&sdk);
    let name = queue_url.rsplit('/').next().context("a queue name")?;
    let topic = cluster.output("CHAT_TOPIC_ARN")?;
    let subscriptions = sns.list_subscriptions_by_topic().topic_arn(&topic).send().await?;
    for subscription in subscriptions.subscriptions() {
        if subscription.endpoint().is_some_and(|e| e.ends_with(&format!(":{name}")))
            && let Some(arn) = subscription.subscription_arn()
        {
            sns.unsubscribe().subscription_arn(arn).send().await?;
        }
    }
    Ok(())
}

/// Gateway 1 is SIGKILLed and its queue reaped (as the janitor does): the
/// sends that find its route dead succeed at once, gateway 2's member gets
/// every message, and the route leaves the conversation.
#[tokio::test]
async fn a_dead_gateways_route_heals_and_no_send_stalls() -> anyhow::Result<()> {
    let mut cluster = Cluster::aws(3).await?;
    let room = cluster.public_room("alice", "dead-").await?;
    let mut alice = cluster.connect(0, "alice").await?;
    let mut bob = cluster.connect(1, "bob").await?;
    let mut carol = cluster.connect(2, "carol").await?;
    for client in [&mut alice, &mut bob, &mut carol] {
        client.join(&room).await?;
    }
    scenarios::flush(&mut alice, &mut bob, &room).await?;
    let dead_queue = cluster.queue_url(1).await?;
    cluster.kill_gateway(1);
    reap(&cluster, &dead_queue).await?;
    ensure!(
        holds(&routes(&cluster, &room).await?, &cluster, 1),
        "a crashed gateway's route stays until a send finds it dead"
    );
    let mut accepted = BTreeSet::new();
    for i in 0..10 {
        let started = Instant::now();
        accepted.extend(send_burst(&mut alice, &room, &format!("after-{i}"), 1).await?);
        ensure!(started.elapsed() < Duration::from_secs(3), "send {i} stalled for {:?}", started.elapsed());
    }
    received_all(&mut carol, &room, &accepted, *accepted.first().context("sent")? - 1).await?;
    wait_routes(&cluster, &room, "lost the dead gateway", |r| !holds(r, &cluster, 1)).await?;
    let healed = cluster.scrape(0).await?.sum("chat_routes_healed_total", &[]);
    ensure!(healed >= 1.0, "healing counted");
    Ok(())
}

/// A gateway restarting under a new queue: its member reconnects to the new
/// gateway and resumes, and gets everything after its resume point, sent
/// while it was gone and after.
#[tokio::test]
async fn a_gateway_restarting_with_a_new_queue_gets_the_next_messages() -> anyhow::Result<()> {
    let mut cluster = Cluster::aws(2).await?;
    let room = cluster.public_room("alice", "restart-").await?;
    let mut alice = cluster.connect(0, "alice").await?;
    let mut bob = cluster.connect(1, "bob").await?;
    alice.join(&room).await?;
    bob.join(&room).await?;
    let seen = scenarios::flush(&mut alice, &mut bob, &room).await?;
    cluster.kill_gateway(1);
    let mut accepted = send_burst(&mut alice, &room, "while-gone", 5).await?;
    let restarted = cluster.start_gateway(&[]).await?;
    let mut bob = cluster.connect(restarted, "bob").await?;
    bob.join_resume(&room, seen).await?;
    ensure!(holds(&routes(&cluster, &room).await?, &cluster, restarted), "the new gateway registered");
    accepted.extend(send_burst(&mut alice, &room, "after", 5).await?);
    received_all(&mut bob, &room, &accepted, seen).await?;
    Ok(())
}

/// A gateway SIGKILLed and restarted under the same instance id finds its
/// queue again, tagged with its new start: its peers retire the old route
/// (it leaves the conversation), and the member resuming there gets every
/// message.
#[tokio::test]
async fn a_gateway_restarted_under_its_instance_id_retires_its_old_route() -> anyhow::Result<()> {
    let mut cluster = Cluster::aws(1).await?;
    let fixed = chat_e2e::unique("fixed-");
    let first = cluster.start_gateway(&[("CHAT_INSTANCE_ID", &fixed)]).await?;
    let room = cluster.public_room("alice", "same-id-").await?;
    let mut alice = cluster.connect(0, "alice").await?;
    let mut bob = cluster.connect(first, "bob").await?;
    alice.join(&room).await?;
    bob.join(&room).await?;
    let seen = scenarios::flush(&mut alice, &mut bob, &room).await?;
    let mine = format!("{fixed}~");
    let old = routes(&cluster, &room).await?.gateways.into_iter().find(|r| r.starts_with(&mine)).context("routed")?;
    cluster.kill_gateway(first);
    let second = cluster.start_gateway(&[("CHAT_INSTANCE_ID", &fixed)]).await?;
    let mut bob = cluster.connect(second, "bob").await?;
    bob.join_resume(&room, seen).await?;
    let mut accepted = BTreeSet::new();
    for i in 0..10 {
        accepted.extend(send_burst(&mut alice, &room, &format!("again-{i}"), 1).await?);
    }
    received_all(&mut bob, &room, &accepted, seen).await?;
    wait_routes(&cluster, &room, "lost the earlier start's route", |r| {
        !r.gateways.contains(&old) && r.gateways.iter().any(|g| g.starts_with(&mine))
    })
    .await?;
    Ok(())
}

/// Presence leases expire (their items vanish: TTL, a crashed gateway's
/// streams): routing does not follow presence, so the stream still gets
/// every message.
#[tokio::test]
async fn an_expired_presence_lease_does_not_unroute_a_stream() -> anyhow::Result<()> {
    let cluster = Cluster::aws(2).await?;
    let room = cluster.public_room("alice", "lease-").await?;
    let mut alice = cluster.connect(0, "alice").await?;
    let mut bob = cluster.connect(1, "bob").await?;
    alice.join(&room).await?;
    bob.join(&room).await?;
    let emulator = cluster.emulator.as_ref().context("an emulator")?;
    let dynamo = emulator.dynamodb().await;
    let table = cluster.output("CHAT_PRESENCE_TABLE")?;
    let items = dynamo
        .query()
        .table_name(&table)
        .key_condition_expression("conversation_id = :c")
        .expression_attribute_values(":c", aws_sdk_dynamodb::types::AttributeValue::S(room.clone()))
        .send()
        .await?;
    ensure!(items.count() >= 2, "both streams were present");
    for item in items.items() {
        dynamo
            .delete_item()
            .table_name(&table)
            .set_key(Some(
                item.iter()
                    .filter(|(k, _)| k.as_str() == "conversation_id" || k.as_str() == "session_key")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ))
            .send()
            .await?;
    }
    let accepted = send_burst(&mut alice, &room, "leaseless", 10).await?;
    received_all(&mut bob, &room, &accepted, 0).await?;
    Ok(())
}

/// With no member streaming on a gateway for the linger, its route leaves
/// the conversation; a member joining there again registers it again and
/// gets the messages sent after.
#[tokio::test]
async fn an_idle_route_leaves_and_a_new_join_brings_it_back() -> anyhow::Result<()> {
    let cluster = Cluster::aws_with(2, &[("CHAT_ROUTE_LINGER_SECS", "0")]).await?;
    let room = cluster.public_room("alice", "idle-").await?;
    let mut alice = cluster.connect(0, "alice").await?;
    alice.join(&room).await?;
    for round in 0..3 {
        let mut bob = cluster.connect(1, "bob").await?;
        bob.join(&room).await?;
        let seen = scenarios::flush(&mut alice, &mut bob, &room).await?;
        let accepted = send_burst(&mut alice, &room, &format!("idle{round}"), 5).await?;
        received_all(&mut bob, &room, &accepted, seen).await?;
        bob.leave(&room).await?;
        // Left (the store's write done) before the next round joins.
        bob.wait_for(|e| matches!(e, Event::MemberLeft(l) if l.user_id == "bob").then_some(())).await?;
        wait_routes(&cluster, &room, "lost the idle gateway", |r| !holds(r, &cluster, 1)).await?;
        ensure!(holds(&routes(&cluster, &room).await?, &cluster, 0), "alice's gateway stays");
    }
    Ok(())
}

/// A conversation on more gateways than `--route-limit` overflows to the
/// topic: every gateway hears it, and nothing is lost on the way over. A
/// read there is recorded (`GetMessageStatus` has it) without going to
/// every gateway.
#[tokio::test]
async fn a_conversation_beyond_the_route_limit_goes_through_the_topic() -> anyhow::Result<()> {
    let cluster = Cluster::aws_with(3, &[("CHAT_ROUTE_LIMIT", "1")]).await?;
    let room = cluster.public_room("alice", "overflow-").await?;
    let mut alice = cluster.connect(0, "alice").await?;
    let mut bob = cluster.connect(1, "bob").await?;
    alice.join(&room).await?;
    let before = send_burst(&mut alice, &room, "before", 3).await?;
    bob.join_resume(&room, 0).await?;
    ensure!(routes(&cluster, &room).await?.overflowed, "the second gateway overflowed the conversation");
    let mut accepted = before;
    accepted.extend(send_burst(&mut alice, &room, "after", 10).await?);
    received_all(&mut bob, &room, &accepted, 0).await?;
    let third = cluster.scrape(2).await?;
    ensure!(received_events(&third) >= 10.0, "an overflowed conversation reaches every gateway");

    alice.send(&room, "last", "last").await?;
    let last = scenarios::accepted(&mut alice, 1).await?.remove(0);
    received_all(&mut bob, &room, &BTreeSet::from([last.seq]), *accepted.last().context("a seq")?).await?;
    bob.read(&room, last.seq).await?;
    cluster
        .wait_message_status("alice", &room, &last.message_id, |status| {
            status.recipients.iter().any(|r| r.user_id == "bob" && r.status == MessageStatus::Read as i32)
        })
        .await?;
    Ok(())
}

/// Broadcast stays available by flag: every gateway hears every event.
#[tokio::test]
async fn broadcast_by_flag_reaches_every_gateway() -> anyhow::Result<()> {
    let cluster = Cluster::aws_with(3, &[("CHAT_ROUTING", "broadcast")]).await?;
    scenarios::messages_cross_gateways_in_order(&cluster, 20).await?;
    let third = cluster.scrape(2).await?;
    ensure!(received_events(&third) >= 20.0, "the third gateway heard the conversation too");
    ensure!(sqs_sends(&cluster.scrape(0).await?) == 0.0, "broadcast sends nothing straight to a queue");
    Ok(())
}
