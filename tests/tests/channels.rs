//! External members through the connector, the channel simulator and the
//! webhook, on the emulator: delivery exactly once, receipts back to the
//! sender, retries, permanent failures, inbound messages, dead letters,
//! isolation between channels, and receipts that never move backwards.

use std::time::Instant;

use anyhow::{Context, ensure};
use chat_core::envelope::{Envelope, Event, ReceiptEvent, ReceiptStatus};
use chat_e2e::channels::{SimClient, faults};
use chat_e2e::cluster::Cluster;
use chat_e2e::{DEADLINE, scenarios, unique};
use chat_proto::pb::MessageStatus;
use chat_proto::pb::server_event::Event as PbEvent;

const WA: &str = "whatsapp:+5511999990000";
const TG: &str = "telegram:123456";

/// One gateway, `persist`, and the given channels' connectors.
async fn cluster_with(channels: &[&str], parameters: &[&str]) -> anyhow::Result<(Cluster, SimClient)> {
    let mut cluster = Cluster::aws_custom(1, &[], parameters).await?;
    cluster.start_runner("persist", "CHAT_PERSIST_QUEUE_URL", &[("CHAT_BATCHING_WINDOW_MS", "50")])?;
    let sim = cluster.start_channels(channels, &[]).await?;
    Ok((cluster, sim))
}

/// `alice` in a new room she owns (only admins add members) with
/// `members` added; returns the room.
async fn room_with(
    cluster: &Cluster,
    alice: &mut chat_e2e::client::TestClient,
    members: &[&str],
) -> anyhow::Result<String> {
    let room = cluster.public_room(&alice.user, "ext-").await?;
    alice.join(&room).await?;
    for member in members {
        let added = cluster.add_member(0, &alice.user, &room, member).await?;
        ensure!(matches!(added, Ok(true)), "adding {member}: {added:?}");
    }
    Ok(room)
}

#[tokio::test]
async fn whatsapp_member_gets_the_message_once_and_receipts_flow_back() -> anyhow::Result<()> {
    let (cluster, sim) = cluster_with(&["whatsapp"], &[]).await?;
    let mut alice = cluster.connect(0, "alice").await?;
    let room = room_with(&cluster, &mut alice, &[WA]).await?;
    ensure!(matches!(cluster.add_member(0, "alice", &room, WA).await?, Ok(false)), "a second add is not new");
    alice.send(&room, "hello-1", "hello").await?;
    let sent = scenarios::accepted(&mut alice, 1).await?;

    let delivered = alice.wait_receipt(WA, MessageStatus::Delivered, 1).await?;
    ensure!(delivered.via == "whatsapp" && delivered.message_id == sent[0].message_id, "{delivered:?}");
    alice.wait_receipt(WA, MessageStatus::Read, 1).await?;
    let received = sim.sent("whatsapp").await?;
    ensure!(received.len() == 1, "exactly one send to the channel: {received:?}");
    ensure!(
        received[0].to == "5511999990000"
            && received[0].text == "alice: hello"
            && received[0].callback_data == sent[0].message_id,
        "payload {:?}",
        received[0]
    );
    let status = cluster
        .wait_message_status("alice", &room, &sent[0].message_id, |s| {
            s.recipients.iter().any(|r| r.user_id == WA && r.status == MessageStatus::Read as i32)
        })
        .await?;
    let wa = status.recipients.iter().find(|r| r.user_id == WA).context("whatsapp member listed")?;
    ensure!(wa.delivered_at_ms > 0 && wa.read_at_ms >= wa.delivered_at_ms, "{wa:?}");

    // Someone else adding the same number to their room later does not
    // capture its replies: they go where we last delivered to it.
    let mut mallory = cluster.connect(0, "mallory").await?;
    let trap = room_with(&cluster, &mut mallory, &[WA]).await?;
    let reply = sim.inbound("whatsapp", "5511999990000", "obrigado!").await?;
    ensure!(reply.webhook_status == 200, "webhook answered {}", reply.webhook_status);
    let message = alice
        .wait_for(|e| match e {
            PbEvent::Message(m) if m.conversation_id == room && m.sender == WA => Some(m.clone()),
            _ => None,
        })
        .await?;
    // One reply is one message, in one conversation: alice's, not the trap.
    ensure!(message.body == "obrigado!", "{message:?}");
    ensure!(trap != room, "distinct rooms");
    Ok(())
}

#[tokio::test]
async fn two_server_errors_then_success_is_one_delivery() -> anyhow::Result<()> {
    let (cluster, sim) = cluster_with(&["telegram"], &[]).await?;
    sim.faults(chat_e2e::channels::Faults { fail_next: Some(vec![503, 503]), ..faults("telegram") }).await?;
    let mut alice = cluster.connect(0, "alice").await?;
    let room = room_with(&cluster, &mut alice, &[TG]).await?;
    alice.send(&room, "retry-1", "through the storm").await?;
    scenarios::accepted(&mut alice, 1).await?;
    // Telegram reports no receipts: an accepted send is DELIVERED.
    alice.wait_receipt(TG, MessageStatus::Delivered, 1).await?;
    let statuses: Vec<u16> = sim.sent("telegram").await?.iter().map(|s| s.status).collect();
    ensure!(statuses == vec![503, 503, 200], "attempts {statuses:?}");
    Ok(())
}

#[tokio::test]
async fn permanent_refusal_is_failed_for_the_sender() -> anyhow::Result<()> {
    let (cluster, sim) = cluster_with(&["whatsapp"], &[]).await?;
    let unreachable = "whatsapp:+5511999990001";
    sim.faults(chat_e2e::channels::Faults { permanent: Some(vec!["5511999990001".into()]), ..faults("whatsapp") })
        .await?;
    let mut alice = cluster.connect(0, "alice").await?;
    let room = room_with(&cluster, &mut alice, &[unreachable]).await?;
    alice.send(&room, "fail-1", "you will not get this").await?;
    let sent = scenarios::accepted(&mut alice, 1).await?;
    let failed = alice.wait_receipt(unreachable, MessageStatus::Failed, 1).await?;
    ensure!(failed.reason.contains("undeliverable"), "reason {:?}", failed.reason);
    let status = cluster
        .wait_message_status("alice", &room, &sent[0].message_id, |s| {
            s.recipients.iter().any(|r| r.user_id == unreachable && r.status == MessageStatus::Failed as i32)
        })
        .await?;
    let recipient = status.recipients.iter().find(|r| r.user_id == unreachable).context("listed")?;
    ensure!(recipient.failed_at_ms > 0 && recipient.reason.contains("undeliverable"), "{recipient:?}");
    ensure!(sim.sent("whatsapp").await?.len() == 1, "a permanent refusal is not retried");
    Ok(())
}

#[tokio::test]
async fn inbound_telegram_message_reaches_internal_members_live() -> anyhow::Result<()> {
    let (cluster, sim) = cluster_with(&["telegram"], &[]).await?;
    let mut alice = cluster.connect(0, "alice").await?;
    let room = room_with(&cluster, &mut alice, &[TG]).await?;
    let result = sim.inbound("telegram", "123456", "hello from telegram").await?;
    ensure!(result.webhook_status == 200, "webhook answered {}", result.webhook_status);
    let message = alice
        .wait_for(|e| match e {
            PbEvent::Message(m) if m.conversation_id == room => Some(m.clone()),
            _ => None,
        })
        .await?;
    ensure!(message.sender == TG && message.body == "hello from telegram", "{message:?}");
    // The reply is not echoed back to its own sender's channel.
    ensure!(sim.delivered("telegram").await?.is_empty(), "echoed to telegram");
    Ok(())
}

/// Text from a channel is fitted to the body's byte limit (on a character
/// boundary) rather than refused, and a blank one (the simulator never
/// sends one, so it is posted to the webhook directly) is answered and
/// dropped without taking a seq.
#[tokio::test]
async fn inbound_text_is_fitted_to_the_byte_limit_and_blank_text_takes_no_seq() -> anyhow::Result<()> {
    let (cluster, sim) = cluster_with(&["telegram"], &[]).await?;
    let mut alice = cluster.connect(0, "alice").await?;
    let room = room_with(&cluster, &mut alice, &[TG]).await?;
    let blank =
        r#"{"update_id":1,"message":{"message_id":7,"date":1,"chat":{"id":123456,"type":"private"},"text":"   "}}"#;
    let answered = reqwest::Client::new()
        .post(format!("{}/telegram", sim.webhook_url))
        .header(channels::telegram::SECRET_HEADER, channel_sim::SimConfig::default().telegram_secret_token)
        .body(blank)
        .send()
        .await?;
    ensure!(answered.status() == 200, "blank: webhook answered {}", answered.status());
    let long = "é".repeat(3000); // 6,000 bytes
    let result = sim.inbound("telegram", "123456", &long).await?;
    ensure!(result.webhook_status == 200, "long: webhook answered {}", result.webhook_status);
    let message = alice
        .wait_for(|e| match e {
            PbEvent::Message(m) if m.conversation_id == room => Some(m.clone()),
            _ => None,
        })
        .await?;
    ensure!(message.seq == 1, "the blank text took no seq: {}", message.seq);
    ensure!(
        message.body.len() == 4096 && long.starts_with(&message.body),
        "fitted to 4096 bytes: {} bytes",
        message.body.len()
    );
    Ok(())
}

#[tokio::test]
async fn webhook_refuses_unsigned_and_forged_calls() -> anyhow::Result<()> {
    let (_cluster, sim) = cluster_with(&[], &[]).await?;
    let http = reqwest::Client::new();
    let body = r#"{"object":"whatsapp_business_account","entry":[]}"#;
    let unsigned = http.post(format!("{}/whatsapp", sim.webhook_url)).body(body).send().await?;
    ensure!(unsigned.status() == 401, "unsigned: {}", unsigned.status());
    let forged = http
        .post(format!("{}/whatsapp", sim.webhook_url))
        .header("x-hub-signature-256", channels::meta_signature("not-the-secret", body.as_bytes()))
        .body(body)
        .send()
        .await?;
    ensure!(forged.status() == 401, "forged: {}", forged.status());
    let wrong_token = http
        .post(format!("{}/telegram", sim.webhook_url))
        .header("x-telegram-bot-api-secret-token", "guess")
        .body(r#"{"update_id":1}"#)
        .send()
        .await?;
    ensure!(wrong_token.status() == 401, "telegram token: {}", wrong_token.status());
    let signed_garbage = http
        .post(format!("{}/whatsapp", sim.webhook_url))
        .header("x-hub-signature-256", channels::meta_signature("local-meta-app-secret", b"{nope"))
        .body("{nope")
        .send()
        .await?;
    ensure!(signed_garbage.status() == 400, "malformed: {}", signed_garbage.status());
    let unknown = http.post(format!("{}/myspace", sim.webhook_url)).body("{}").send().await?;
    ensure!(unknown.status() == 404, "unknown channel: {}", unknown.status());
    Ok(())
}

#[tokio::test]
async fn poison_record_reaches_the_connector_dead_letter_queue() -> anyhow::Result<()> {
    let (cluster, _sim) =
        cluster_with(&["telegram"], &["ConnectorVisibilityTimeoutSeconds=2", "ConnectorMaxReceiveCount=2"]).await?;
    let sdk = cluster.emulator.as_ref().context("emulator")?.sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue = cluster.output("CHAT_CONNECTOR_TELEGRAM_QUEUE_URL")?;
    let dlq = cluster.output("CHAT_CONNECTOR_TELEGRAM_DEAD_LETTER_QUEUE_URL")?;
    sqs.send_message().queue_url(&queue).message_body("{\"v\":1,\"kind\":\"message\"}").send().await?;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let out = sqs.receive_message().queue_url(&dlq).wait_time_seconds(1).send().await?;
        if let Some(m) = out.messages().first() {
            ensure!(m.body().is_some_and(|b| b.contains("\"kind\":\"message\"")), "unexpected {m:?}");
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "the poison record never reached the dead-letter queue");
    }
}

#[tokio::test]
async fn a_channel_that_keeps_failing_is_failed_for_the_sender_and_dead_lettered() -> anyhow::Result<()> {
    let mut cluster =
        Cluster::aws_custom(1, &[], &["ConnectorVisibilityTimeoutSeconds=1", "ConnectorMaxReceiveCount=2"]).await?;
    // Short invocations, and the queue's maxReceiveCount as on AWS.
    // A request timeout that fits the invocation, so the channel is called
    // (and fails) rather than skipped for want of budget.
    let env = [
        ("CHAT_FUNCTION_TIMEOUT_SECS", "2"),
        ("CHAT_CONNECTOR_MAX_RECEIVE_COUNT", "2"),
        ("CHAT_CONNECTOR_REQUEST_TIMEOUT_MS", "500"),
    ];
    let sim = cluster.start_channels(&["telegram"], &env).await?;
    sim.faults(chat_e2e::channels::Faults { fail_next: Some(vec![503; 200]), ..faults("telegram") }).await?;
    let mut alice = cluster.connect(0, "alice").await?;
    let room = room_with(&cluster, &mut alice, &[TG]).await?;
    alice.send(&room, "down-1", "into the void").await?;
    scenarios::accepted(&mut alice, 1).await?;
    let failed = alice.wait_receipt(TG, MessageStatus::Failed, 1).await?;
    ensure!(failed.reason.contains("gave up after 2 deliveries"), "reason {:?}", failed.reason);
    let sdk = cluster.emulator.as_ref().context("emulator")?.sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let dlq = cluster.output("CHAT_CONNECTOR_TELEGRAM_DEAD_LETTER_QUEUE_URL")?;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let out = sqs.receive_message().queue_url(&dlq).wait_time_seconds(1).send().await?;
        if !out.messages().is_empty() {
            break;
        }
        ensure!(Instant::now() < deadline, "the failing record never reached the dead-letter queue");
    }
    ensure!(sim.delivered("telegram").await?.is_empty(), "nothing got through");
    Ok(())
}

#[tokio::test]
async fn a_stuck_channel_does_not_delay_another() -> anyhow::Result<()> {
    let (cluster, sim) = cluster_with(&["whatsapp", "telegram"], &[]).await?;
    sim.faults(chat_e2e::channels::Faults { latency_ms: Some(10_000), ..faults("whatsapp") }).await?;
    let mut alice = cluster.connect(0, "alice").await?;
    let room = room_with(&cluster, &mut alice, &[WA, TG]).await?;
    alice.send(&room, "both-1", "to both channels").await?;
    scenarios::accepted(&mut alice, 1).await?;
    alice.wait_receipt(TG, MessageStatus::Delivered, 1).await?;
    // WhatsApp has the request but is still sitting on it: no receipt yet.
    ensure!(alice.receipts().iter().all(|r| r.user_id != WA), "whatsapp answered first: {:?}", alice.receipts());
    ensure!(sim.delivered("telegram").await?.len() == 1, "telegram got it");
    Ok(())
}

#[tokio::test]
async fn receipts_never_move_backwards_under_reordering() -> anyhow::Result<()> {
    let (cluster, _sim) = cluster_with(&[], &[]).await?;
    let mut alice = cluster.connect(0, "alice").await?;
    let mut bob = cluster.connect(0, "bob").await?;
    let room = cluster.public_room("alice", "reorder-").await?;
    alice.join(&room).await?;
    bob.join(&room).await?;
    for i in 1..=3 {
        alice.send(&room, &format!("o-{i}"), "x").await?;
    }
    let sent = scenarios::accepted(&mut alice, 3).await?;
    let first = sent.iter().find(|a| a.seq == 1).context("seq 1")?.message_id.clone();
    // Bob's receipts as a reordering bus would carry them: READ 3 first,
    // then an older DELIVERED 2 and READ 1.
    let sdk = cluster.emulator.as_ref().context("emulator")?.sdk_config().await;
    let publisher = chat_aws::sns::SnsPublisher::new(aws_sdk_sns::Client::new(&sdk), cluster.output("CHAT_TOPIC_ARN")?);
    let receipt = |status, seq, at| {
        let event = ReceiptEvent {
            user_id: "bob".into(),
            status,
            up_to_seq: seq,
            message_id: String::new(),
            reason: String::new(),
            via: String::new(),
            recorded: false,
        };
        Envelope::new(unique("r-"), room.clone(), "test".into(), at, Event::Receipt(event))
    };
    use chat_core::bus::Bus;
    for envelope in [
        receipt(ReceiptStatus::Read, 3, 3000),
        receipt(ReceiptStatus::Delivered, 2, 2000),
        receipt(ReceiptStatus::Read, 1, 1000),
    ] {
        publisher.publish(&[envelope]).await?;
    }
    alice.wait_receipt("bob", MessageStatus::Read, 3).await?;
    scenarios::flush(&mut alice, &mut bob, &room).await?;
    // Whatever order the queue delivered them in, what alice saw only moves
    // forward: nothing after READ 3, and no DELIVERED at or below a READ.
    let bobs: Vec<(i32, u64)> =
        alice.receipts().iter().filter(|r| r.user_id == "bob").map(|r| (r.status, r.up_to_seq)).collect();
    let read = MessageStatus::Read as i32;
    ensure!(bobs.last() == Some(&(read, 3)), "alice saw {bobs:?}");
    let mut highest_read = 0;
    for (status, seq) in &bobs {
        ensure!(*seq > highest_read, "a receipt at or below READ {highest_read}: {bobs:?}");
        if *status == read {
            highest_read = *seq;
        }
    }
    let status = cluster
        .wait_message_status("alice", &room, &first, |s| {
            s.recipients.iter().any(|r| r.user_id == "bob" && r.status == MessageStatus::Read as i32)
        })
        .await?;
    let bob_status = status.recipients.iter().find(|r| r.user_id == "bob").context("bob")?;
    // Plain messages and receipts reach no connector queue (no runner reads
    // them in this test, so whatever was routed there would still be there).
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    for channel in ["WHATSAPP", "INSTAGRAM", "TELEGRAM"] {
        let queue = cluster.output(&format!("CHAT_CONNECTOR_{channel}_QUEUE_URL"))?;
        let out = sqs.receive_message().queue_url(&queue).max_number_of_messages(10).send().await?;
        ensure!(out.messages().is_empty(), "{channel} connector queue got {:?}", out.messages());
    }
    // Read when a READ covering it was recorded: never a DELIVERED's time.
    ensure!([1000, 3000].contains(&bob_status.read_at_ms), "read time of seq 1: {bob_status:?}");
    Ok(())
}

#[tokio::test]
async fn offline_fallback_fires_once_and_only_without_an_ack() -> anyhow::Result<()> {
    let (mut cluster, sim) = cluster_with(&["telegram"], &["FallbackDelaySeconds=3"]).await?;
    cluster.start_runner("fallback", "CHAT_FALLBACK_QUEUE_URL", &[("CHAT_BATCHING_WINDOW_MS", "0")])?;
    for (user, link) in [("bob", "telegram:777"), ("carol", "telegram:888")] {
        let linked = cluster.link_channel(0, user, link).await?;
        ensure!(linked.is_ok(), "linking {user}: {linked:?}");
    }
    let bad = cluster.link_channel(0, "bob", "carrier-pigeon:1").await?;
    ensure!(bad.as_ref().err().map(tonic::Status::code) == Some(tonic::Code::InvalidArgument), "{bad:?}");
    let bad = cluster.link_channel(0, "bob", "telegram:twelve").await?;
    ensure!(bad.as_ref().err().map(tonic::Status::code) == Some(tonic::Code::InvalidArgument), "{bad:?}");

    let mut alice = cluster.connect(0, "alice").await?;
    let mut bob = cluster.connect(0, "bob").await?;
    let mut carol = cluster.connect(0, "carol").await?;
    let room = cluster.public_room("alice", "fallback-").await?;
    for client in [&mut alice, &mut bob, &mut carol] {
        client.join(&room).await?;
    }
    alice.send(&room, "fb-1", "are you there?").await?;
    scenarios::accepted(&mut alice, 1).await?;
    // Carol acknowledges at once; bob's client receives but never acks.
    let message = scenarios::messages(&mut carol, &room, 1).await?.remove(0);
    carol.ack(&room, 1).await?;
    scenarios::messages(&mut bob, &room, 1).await?;
    alice.wait_receipt("carol", MessageStatus::Delivered, 1).await?;

    let via = alice.wait_receipt("bob", MessageStatus::Delivered, 1).await?;
    ensure!(via.via == "telegram", "bob's delivery came through telegram: {via:?}");
    // The deadline is the queue's delivery delay: never before it.
    ensure!(via.at_ms - message.sent_at_ms >= 3000, "fell back after {} ms", via.at_ms - message.sent_at_ms);
    // A second round: once its fallback is through, the first round's
    // deadlines have all been handled, so what carol did not get is final.
    alice.send(&room, "fb-2", "still there?").await?;
    scenarios::accepted(&mut alice, 1).await?;
    scenarios::messages(&mut carol, &room, 1).await?;
    carol.ack(&room, 2).await?;
    alice.wait_receipt("bob", MessageStatus::Delivered, 2).await?;
    let sent = sim.delivered("telegram").await?;
    let to: Vec<&str> = sent.iter().map(|s| s.to.as_str()).collect();
    ensure!(to == ["777", "777"], "one fallback per message, to bob only: {sent:?}");
    ensure!(sent[0].text == format!("alice in {room}: are you there?"), "{:?}", sent[0]);
    Ok(())
}

/// A message goes to the functions only when one may act on it: with no
/// member linked to a channel (and none external) the fallback never sees
/// it; a member who links after joining gets the fallback of what follows.
#[tokio::test]
async fn the_fallback_sees_only_messages_it_may_act_on() -> anyhow::Result<()> {
    let (mut cluster, sim) = cluster_with(&["telegram"], &["FallbackDelaySeconds=2"]).await?;
    let runner = cluster.start_runner("fallback", "CHAT_FALLBACK_QUEUE_URL", &[("CHAT_BATCHING_WINDOW_MS", "0")])?;
    let mut alice = cluster.connect(0, "alice").await?;
    let mut bob = cluster.connect(0, "bob").await?;
    let room = cluster.public_room("alice", "quiet-").await?;
    alice.join(&room).await?;
    bob.join(&room).await?;
    // Nobody linked: the message never reaches the functions.
    alice.send(&room, "q-1", "just us").await?;
    scenarios::accepted(&mut alice, 1).await?;
    scenarios::messages(&mut bob, &room, 1).await?;
    // bob links after joining: his conversations learn it.
    let linked = cluster.link_channel(0, "bob", "telegram:999").await?;
    ensure!(linked.is_ok(), "linking bob: {linked:?}");
    alice.send(&room, "q-2", "now you may go offline").await?;
    scenarios::accepted(&mut alice, 1).await?;
    // bob's client receives it and never acks: the fallback sends it.
    scenarios::messages(&mut bob, &room, 1).await?;
    let via = alice.wait_receipt("bob", MessageStatus::Delivered, 2).await?;
    ensure!(via.via == "telegram", "bob's delivery came through telegram: {via:?}");
    let sent = sim.delivered("telegram").await?;
    ensure!(sent.len() == 1 && sent[0].text.ends_with("now you may go offline"), "{sent:?}");
    // The first message was never the fallback's: it handled one record.
    let log = std::fs::read_to_string(cluster.runner_log(runner).context("the fallback's log")?)?;
    let records: u64 = log
        .lines()
        .filter(|line| line.contains("fallback batch done"))
        .filter_map(|line| line.split_whitespace().find_map(|w| w.strip_prefix("records="))?.parse::<u64>().ok())
        .sum();
    ensure!(records == 1, "the fallback handled {records} records, expected the second message's only");
    Ok(())
}
