//! The chat suite on the AWS path: gateways as processes on the emulator
//! (moto, or whatever `AWS_ENDPOINT_URL` names), talking through SNS, SQS and
//! DynamoDB via the AWS SDK.

use chat_e2e::cluster::{Cluster, Mode};
use chat_e2e::scenarios;
use chat_proto::pb::server_event::Event;

#[tokio::test]
async fn two_hundred_messages_cross_gateways_exactly_once_in_order() -> anyhow::Result<()> {
    let cluster = Cluster::new(Mode::Aws, 2).await?;
    scenarios::messages_cross_gateways_in_order(&cluster, 200).await
}

#[tokio::test]
async fn membership_presence_typing_and_isolation_across_gateways() -> anyhow::Result<()> {
    let cluster = Cluster::new(Mode::Aws, 2).await?;
    scenarios::membership_presence_typing_and_isolation(&cluster).await
}

#[tokio::test]
async fn same_client_message_id_twice_is_one_message() -> anyhow::Result<()> {
    let cluster = Cluster::new(Mode::Aws, 2).await?;
    scenarios::idempotent_send(&cluster).await
}

#[tokio::test]
async fn bad_input_gets_precise_statuses() -> anyhow::Result<()> {
    let cluster = Cluster::new(Mode::Aws, 2).await?;
    scenarios::bad_input_gets_precise_statuses(&cluster).await
}

/// SIGTERM: clients are told to reconnect (with resume points), the gateway
/// exits cleanly, and its queue and subscription are gone from the emulator
/// while the other gateway's remain.
#[tokio::test]
async fn graceful_stop_tells_clients_and_removes_queue_and_subscription() -> anyhow::Result<()> {
    let mut cluster = Cluster::new(Mode::Aws, 2).await?;
    let room = cluster.public_room("alice", "room-").await?;
    let mut alice = cluster.connect(0, "alice").await?;
    let mut bob = cluster.connect(1, "bob").await?;
    alice.join(&room).await?;
    bob.join(&room).await?;
    bob.send(&room, "m1", "before the stop").await?;
    let seq = scenarios::messages(&mut alice, &room, 1).await?[0].seq;

    let sdk = cluster.emulator.as_ref().expect("emulator").sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let sns = aws_sdk_sns::Client::new(&sdk);
    let queues = |sqs: aws_sdk_sqs::Client, prefix: String| async move {
        let out = sqs.list_queues().queue_name_prefix(prefix).send().await?;
        anyhow::Ok(out.queue_urls().to_vec())
    };
    let topic_subscriptions = |sns: aws_sdk_sns::Client| async move {
        let out = sns.list_subscriptions().send().await?;
        anyhow::Ok(out.subscriptions().iter().filter_map(|s| s.endpoint().map(str::to_owned)).collect::<Vec<_>>())
    };
    let before = queues(sqs.clone(), cluster.queue_prefix()).await?;
    anyhow::ensure!(before.len() == 2, "expected two gateway queues, found {before:?}");

    let stopped = cluster.gateways[0].instance_id.clone();
    let survivor = cluster.gateways[1].instance_id.clone();
    let status = cluster.stop_gateway(0).await?;
    anyhow::ensure!(status.success(), "gateway exited with {status}");

    let disconnect = alice
        .wait_for(|e| match e {
            Event::Disconnect(d) => Some(d.clone()),
            _ => None,
        })
        .await?;
    anyhow::ensure!(
        disconnect.resume.iter().any(|r| r.conversation_id == room && r.last_seq == seq),
        "resume points {:?} lack {room}#{seq}",
        disconnect.resume
    );
    let end = alice.wait_end().await?;
    anyhow::ensure!(end.code() == tonic::Code::Unavailable, "stream ended with {end:?}");

    let after = queues(sqs.clone(), cluster.queue_prefix()).await?;
    anyhow::ensure!(
        after.len() == 1 && after[0].contains(&survivor) && !after[0].contains(&stopped),
        "after the stop: {after:?}"
    );
    let endpoints = topic_subscriptions(sns).await?;
    anyhow::ensure!(!endpoints.iter().any(|e| e.contains(&stopped)), "subscription left behind: {endpoints:?}");
    anyhow::ensure!(endpoints.iter().any(|e| e.contains(&survivor)), "survivor's subscription missing: {endpoints:?}");

    // The survivor still serves the conversation.
    let mut alice2 = cluster.connect(1, "alice").await?;
    alice2.join(&room).await?;
    bob.send(&room, "m2", "after the stop").await?;
    let m = scenarios::messages(&mut alice2, &room, 1).await?;
    anyhow::ensure!(m[0].body == "after the stop" && m[0].seq == seq + 1);
    Ok(())
}

#[tokio::test]
async fn receipts_flow_live_and_only_forward() -> anyhow::Result<()> {
    let mut cluster = Cluster::aws(2).await?;
    cluster.start_runner("persist", "CHAT_PERSIST_QUEUE_URL", &[("CHAT_BATCHING_WINDOW_MS", "50")])?;
    scenarios::receipts_flow_live_and_only_forward(&cluster).await
}
