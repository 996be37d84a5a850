//! Metrics as an operator sees them: a real Prometheus server scrapes two
//! gateways and the local `persist` runner during a cross-gateway chat on
//! the emulator, and PromQL over its HTTP API finds the sends, the
//! deliveries, the publish → receive latency, the AWS calls, the gRPC
//! statuses and what `persist` recorded.

use std::collections::BTreeSet;

use anyhow::{Context, ensure};
use chat_e2e::cluster::Cluster;
use chat_e2e::metrics::Prometheus;
use chat_e2e::scenarios;

const MESSAGES: usize = 40;

#[tokio::test]
async fn prometheus_sees_a_cross_gateway_chat() -> anyhow::Result<()> {
    let mut cluster = Cluster::aws(2).await?;
    let persist = cluster.start_runner("persist", "CHAT_PERSIST_QUEUE_URL", &[])?;
    let runner = cluster.runner_metrics(persist).map(str::to_owned).unwrap_or_default();
    let (a, b) = (cluster.gateways[0].instance_id.clone(), cluster.gateways[1].instance_id.clone());
    let targets = [
        ("gateway", cluster.gateways[0].metrics.as_str()),
        ("gateway", cluster.gateways[1].metrics.as_str()),
        ("persist", runner.as_str()),
    ];
    let prometheus = Prometheus::start(&targets).await?;
    // Every target is up before the chat starts, so the counters' rise is
    // seen from zero.
    prometheus.wait_scalar("sum(up)", |v| v == 3.0).await?;

    // bob's linked channel makes every message to him the offline
    // fallback's business, so A publishes each to the topic.
    let linked = cluster.link_channel(0, "bob", "telegram:42").await?;
    ensure!(linked.is_ok(), "linking bob: {linked:?}");
    let room = cluster.public_room("alice", "metrics-").await?;
    let mut alice = cluster.connect(0, "alice").await?;
    let mut bob = cluster.connect(1, "bob").await?;
    alice.join(&room).await?;
    bob.join(&room).await?;
    for i in 0..MESSAGES {
        alice.send(&room, &format!("m-{i}"), &format!("hello {i}")).await?;
    }
    scenarios::accepted(&mut alice, MESSAGES).await?;
    let received = scenarios::messages(&mut bob, &room, MESSAGES).await?;
    // bob acknowledges them: persist records his DELIVERED watermark.
    let last = received.last().context("received")?.seq;
    bob.ack(&room, last).await?;
    let delivered = cluster.wait_delivered(&room, "bob", last).await?;
    ensure!(delivered == Some(last), "bob's DELIVERED watermark at {delivered:?}, expected {last}");

    let n = MESSAGES as f64;
    // Sends: accepted once each on A, none on B.
    let accepted = format!("sum(chat_messages_accepted_total{{gateway_id=\"{a}\",duplicate=\"false\"}})");
    prometheus.wait_scalar(&accepted, |v| v == n).await?;
    let on_b = format!("sum(chat_messages_accepted_total{{gateway_id=\"{b}\"}}) or vector(0)");
    ensure!(prometheus.scalar(&on_b).await? == Some(0.0), "B accepted nothing");
    // Deliveries: bob's stream on B got every message (and presence besides).
    let delivered_b = format!("sum(chat_deliveries_total{{gateway_id=\"{b}\"}})");
    prometheus.wait_scalar(&delivered_b, |v| v >= n).await?;
    // Each gateway received every message from the bus (its queue).
    let received_b = format!("sum(chat_bus_events_received_total{{gateway_id=\"{b}\"}})");
    prometheus.wait_scalar(&received_b, |v| v >= n).await?;
    // Publish → receive latency: every received event was observed, and
    // the p99 is a real number of seconds below the emulator's long poll.
    let observed = format!("sum(chat_publish_receive_seconds_count{{gateway_id=\"{b}\"}})");
    prometheus.wait_scalar(&observed, |v| v >= n).await?;
    let p99 =
        format!("histogram_quantile(0.99, sum by (le) (chat_publish_receive_seconds_bucket{{gateway_id=\"{b}\"}}))");
    let p99 = prometheus.wait_scalar(&p99, f64::is_finite).await?;
    ensure!(p99 > 0.0 && p99 < 20.0, "publish → receive p99 {p99} s");
    let send_latency = format!("sum(chat_send_accept_seconds_count{{gateway_id=\"{a}\"}})");
    prometheus.wait_scalar(&send_latency, |v| v == n).await?;
    // AWS calls, by operation and outcome: A published to SNS, B received
    // from SQS, and the record before each publish went to DynamoDB.
    let published = format!(
        "sum(chat_aws_requests_total{{gateway_id=\"{a}\",service=\"SNS\",outcome=\"ok\",operation=~\"Publish|PublishBatch\"}})"
    );
    prometheus.wait_scalar(&published, |v| v >= 1.0).await?;
    let events_published = format!("sum(chat_publish_batch_size_sum{{gateway_id=\"{a}\"}})");
    prometheus.wait_scalar(&events_published, |v| v >= n).await?;
    let receives =
        format!("sum(chat_aws_requests_total{{gateway_id=\"{b}\",service=\"SQS\",operation=\"ReceiveMessage\"}})");
    prometheus.wait_scalar(&receives, |v| v >= 1.0).await?;
    let puts = format!("sum(chat_aws_requests_total{{gateway_id=\"{a}\",service=\"DynamoDB\",operation=\"PutItem\"}})");
    prometheus.wait_scalar(&puts, |v| v >= n).await?;
    // Gauges: one stream and one conversation on each gateway.
    for id in [&a, &b] {
        prometheus.wait_scalar(&format!("chat_streams{{gateway_id=\"{id}\"}}"), |v| v == 1.0).await?;
        prometheus.wait_scalar(&format!("chat_local_conversations{{gateway_id=\"{id}\"}}"), |v| v == 1.0).await?;
        prometheus.wait_scalar(&format!("sum(chat_joins_total{{gateway_id=\"{id}\"}})"), |v| v == 1.0).await?;
    }
    // persist recorded bob's ack, in a batch, without failures.
    let seen = "sum(chat_persist_records_total{function=\"persist\"})";
    prometheus.wait_scalar(seen, |v| v >= 1.0).await?;
    prometheus.wait_scalar("sum(chat_persist_batches_total)", |v| v >= 1.0).await?;
    let failures = "sum(chat_persist_failures_total) or vector(0)";
    ensure!(prometheus.scalar(failures).await? == Some(0.0), "persist failed records");
    let invocations = "sum(chat_function_invocations_total{function=\"persist\",outcome=\"ok\"})";
    prometheus.wait_scalar(invocations, |v| v >= 1.0).await?;

    // gRPC calls by method and final status: a refused unary call under
    // its code, the streams under theirs once they end.
    let missing = cluster.get_conversation(0, "alice", "no-such-conversation").await?;
    let code = missing.err().map(|status| status.code());
    ensure!(code == Some(tonic::Code::PermissionDenied), "GetConversation of a conversation alice is not in: {code:?}");
    let denied = format!(
        "sum(chat_grpc_requests_total{{gateway_id=\"{a}\",method=\"/chat.v1.ChatService/GetConversation\",code=\"PERMISSION_DENIED\"}})"
    );
    prometheus.wait_scalar(&denied, |v| v == 1.0).await?;
    drop(alice);
    drop(bob);
    for id in [&a, &b] {
        let connects =
            format!("sum(chat_grpc_requests_total{{gateway_id=\"{id}\",method=\"/chat.v1.ChatService/Connect\"}})");
        prometheus.wait_scalar(&connects, |v| v == 1.0).await?;
        prometheus.wait_scalar(&format!("chat_streams{{gateway_id=\"{id}\"}}"), |v| v == 0.0).await?;
    }

    // On AWS the collector beside the gateway ships these series to
    // CloudWatch only when template.yaml declares them: every counter and
    // gauge a gateway exports must be.
    let declared = declared_gateway_metrics()?;
    let scrape = cluster.scrape(1).await?;
    let exported: BTreeSet<&str> = scrape
        .samples
        .iter()
        .map(|s| s.name.as_str())
        .filter(|name| !["_bucket", "_sum", "_count"].iter().any(|suffix| name.ends_with(suffix)))
        .collect();
    let undeclared: Vec<&&str> = exported.iter().filter(|name| !declared.contains(**name)).collect();
    ensure!(undeclared.is_empty(), "gateway series missing from the collector's metric_declarations: {undeclared:?}");
    Ok(())
}

/// The metric names the collector's `metric_declarations` in template.yaml
/// select: each selector is `^name$` or `^prefix(a|b|...)suffix$`.
fn declared_gateway_metrics() -> anyhow::Result<BTreeSet<String>> {
    let template = std::fs::read_to_string(chat_e2e::workspace_root().join("template.yaml"))?;
    let mut names = BTreeSet::new();
    for selector in template.split('"').filter(|s| s.starts_with("^chat_") && s.ends_with('$')) {
        let pattern = &selector[1..selector.len() - 1];
        match pattern.split_once('(') {
            None => {
                names.insert(pattern.to_owned());
            }
            Some((prefix, rest)) => {
                let (group, suffix) = rest.split_once(')').context("unclosed group in a selector")?;
                names.extend(group.split('|').map(|alt| format!("{prefix}{alt}{suffix}")));
            }
        }
    }
    ensure!(names.len() > 10, "found only {names:?} in template.yaml's metric_declarations");
    Ok(names)
}
