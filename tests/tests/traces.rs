//! One message, one trace: two gateways and `persist` export OpenTelemetry
//! spans over OTLP/gRPC to a receiver in the test while alice (on A), whose
//! client sends a `traceparent`, sends to bob (on B). The trace the client
//! started holds the send on A (a child of the client's span), the publish
//! (its child) and the delivery on B (a child of the publish, its context
//! carried by the envelope through SNS and SQS). A WhatsApp member makes
//! the connector's channel call and the webhook's receipts for it part of
//! the same trace, and `persist`'s writes of those receipts (children of
//! the webhook's spans), while `persist`'s batch span links to them. A log
//! line inside the spans carries the trace id.

use anyhow::{Context, ensure};
use chat_e2e::client::TestClient;
use chat_e2e::cluster::Cluster;
use chat_e2e::scenarios;
use chat_e2e::traces::{OtlpReceiver, ReceivedSpan};

/// The client's own span: what its `traceparent` names.
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
const WA: &str = "whatsapp:+5511999990000";

fn one(spans: &[ReceivedSpan], pick: impl Fn(&ReceivedSpan) -> bool) -> Option<&ReceivedSpan> {
    spans.iter().find(|s| pick(s))
}

#[tokio::test]
async fn one_message_is_one_trace_across_gateways_and_persist() -> anyhow::Result<()> {
    let receiver = OtlpReceiver::start().await?;
    let env = receiver.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // The gateway's debug lines too, to find one inside the send's spans.
    let gateway_env: Vec<(&str, &str)> = env.iter().copied().chain([("RUST_LOG", "info,gateway=debug")]).collect();
    let mut cluster = Cluster::aws_with(2, &gateway_env).await?;
    cluster.start_runner("persist", "CHAT_PERSIST_QUEUE_URL", &env)?;
    cluster.start_channels(&["whatsapp"], &env).await?;
    let (a, b) = (cluster.gateways[0].instance_id.clone(), cluster.gateways[1].instance_id.clone());

    let room = cluster.public_room("alice", "traces-").await?;
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let channel = cluster.channel(0).await?;
    let mut alice =
        TestClient::connect_with(channel, "alice", &cluster.token("alice")?, &[("traceparent", &traceparent)]).await?;
    let mut bob = cluster.connect(1, "bob").await?;
    alice.join(&room).await?;
    bob.join(&room).await?;
    let added = cluster.add_member(0, "alice", &room, WA).await?;
    ensure!(matches!(added, Ok(true)), "adding {WA}: {added:?}");
    alice.send(&room, "traced-1", "follow me").await?;
    let accepted = scenarios::accepted(&mut alice, 1).await?;
    let seq = accepted.first().context("accepted")?.seq;
    scenarios::messages(&mut bob, &room, 1).await?;

    // The send on A continues the client's trace, as a child of its span.
    let send = receiver
        .wait_for("chat.send on A", |spans| {
            one(spans, |s| s.name == "chat.send" && s.instance == a && s.trace_id == CLIENT_TRACE).cloned()
        })
        .await?;
    ensure!(send.service == "gateway", "{send:?}");
    ensure!(send.parent_span_id == CLIENT_SPAN, "the send's parent is the client's span: {send:?}");
    ensure!(send.attribute("seq") == Some(seq.to_string().as_str()), "{send:?}");
    // The accept (claim and seq) and the publish are the send's children.
    receiver
        .wait_for("chat.accept on A", |spans| {
            one(spans, |s| s.name == "chat.accept" && s.trace_id == CLIENT_TRACE && s.parent_span_id == send.span_id)
                .cloned()
        })
        .await?;
    let publish = receiver
        .wait_for("chat.publish on A", |spans| {
            one(spans, |s| s.name == "chat.publish" && s.trace_id == CLIENT_TRACE && s.parent_span_id == send.span_id)
                .cloned()
        })
        .await?;
    ensure!(publish.instance == a, "{publish:?}");
    // A log line inside the spans carries the trace id.
    let log = cluster.log(0);
    let line = log.lines().find(|l| l.contains("message published")).context("no \"message published\" line")?;
    ensure!(line.contains(&format!("trace_id={CLIENT_TRACE}")), "the log line has no trace id: {line}");
    // B delivered it to bob: a child of the publish, across SNS and SQS.
    let deliver = receiver
        .wait_for("chat.deliver on B", |spans| {
            one(spans, |s| s.name == "chat.deliver" && s.instance == b && s.trace_id == CLIENT_TRACE).cloned()
        })
        .await?;
    ensure!(deliver.parent_span_id == publish.span_id, "B's delivery is the publish's child: {deliver:?}");
    ensure!(deliver.attribute("conversation_id") == Some(room.as_str()), "{deliver:?}");
    // The connector's call to WhatsApp, and the receipts the channel sent
    // back through the webhook (DELIVERED, then READ), in the same trace.
    let channel_call = receiver
        .wait_for("connector.send", |spans| {
            one(spans, |s| s.name == "connector.send" && s.trace_id == CLIENT_TRACE).cloned()
        })
        .await?;
    ensure!(channel_call.service == "connector", "{channel_call:?}");
    ensure!(
        channel_call.parent_span_id == publish.span_id,
        "the channel call is the publish's child: {channel_call:?}"
    );
    ensure!(channel_call.attribute("channel") == Some("whatsapp"), "{channel_call:?}");
    let receipts = receiver
        .wait_for("two webhook.receipt spans", |spans| {
            let receipts: Vec<ReceivedSpan> =
                spans.iter().filter(|s| s.name == "webhook.receipt" && s.trace_id == CLIENT_TRACE).cloned().collect();
            (receipts.len() >= 2).then_some(receipts)
        })
        .await?;
    for receipt in &receipts {
        ensure!(receipt.service == "webhook" && receipt.parent_span_id == publish.span_id, "{receipt:?}");
    }
    // persist's write of a receipt: the webhook span's child ...
    let write = receiver
        .wait_for("persist.write", |spans| {
            one(spans, |s| s.name == "persist.write" && s.trace_id == CLIENT_TRACE).cloned()
        })
        .await?;
    ensure!(write.service == "persist", "{write:?}");
    let parent = receipts.iter().find(|r| r.span_id == write.parent_span_id);
    ensure!(parent.is_some(), "persist's write is a webhook receipt's child: {write:?}");
    ensure!(write.attribute("outcome") == Some("ok"), "{write:?}");
    // ... and its batch span, a trace of its own, links to it.
    let link = (CLIENT_TRACE.to_owned(), write.parent_span_id.clone());
    let batch = receiver
        .wait_for("persist.batch linking the receipt", |spans| {
            one(spans, |s| s.name == "persist.batch" && s.links.contains(&link)).cloned()
        })
        .await?;
    ensure!(batch.trace_id != CLIENT_TRACE, "a batch is its own trace: {batch:?}");
    Ok(())
}
