//! The janitor on the emulator: a SIGKILLed gateway's queue and
//! subscription are reaped once its heartbeat is stale; live gateways'
//! queues, and queues that are not a gateway's, are left alone.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use chat_e2e::DEADLINE;
use chat_e2e::cluster::Cluster;

/// Queue URLs under `prefix`, and the topic's subscription endpoints.
async fn state(
    sqs: &aws_sdk_sqs::Client,
    sns: &aws_sdk_sns::Client,
    prefix: &str,
    topic: &str,
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let queues = sqs.list_queues().queue_name_prefix(prefix).send().await?.queue_urls().to_vec();
    let endpoints = sns
        .list_subscriptions_by_topic()
        .topic_arn(topic)
        .send()
        .await?
        .subscriptions()
        .iter()
        .filter_map(|s| s.endpoint().map(str::to_owned))
        .collect();
    Ok((queues, endpoints))
}

#[tokio::test]
async fn janitor_reaps_a_killed_gateways_queue_and_leaves_live_ones() -> anyhow::Result<()> {
    let mut cluster = Cluster::aws_with(2, &[("CHAT_HEARTBEAT_SECS", "1")]).await?;
    let sdk = cluster.emulator.as_ref().context("emulator")?.sdk_config().await;
    let (sqs, sns) = (aws_sdk_sqs::Client::new(&sdk), aws_sdk_sns::Client::new(&sdk));
    let prefix = cluster.queue_prefix();
    let topic = cluster.output("CHAT_TOPIC_ARN")?;
    // A queue under the prefix that no gateway made: no heartbeat tag.
    let stranger = sqs.create_queue().queue_name(format!("{prefix}not-a-gateway")).send().await?;
    let stranger = stranger.queue_url().context("stranger queue")?.to_owned();
    let killed = format!("{prefix}{}", cluster.gateways[0].instance_id);
    let live = format!("{prefix}{}", cluster.gateways[1].instance_id);
    let (queues, endpoints) = state(&sqs, &sns, &prefix, &topic).await?;
    ensure!(queues.iter().filter(|q| q.ends_with(&killed) || q.ends_with(&live)).count() == 2, "{queues:?}");
    ensure!(endpoints.iter().filter(|e| e.ends_with(&killed) || e.ends_with(&live)).count() == 2, "{endpoints:?}");

    cluster.start_janitor(4, 1)?;
    cluster.kill_gateway(0);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (queues, endpoints) = state(&sqs, &sns, &prefix, &topic).await?;
        let queue_gone = !queues.iter().any(|q| q.ends_with(&killed));
        let subscription_gone = !endpoints.iter().any(|e| e.ends_with(&killed));
        if queue_gone && subscription_gone {
            ensure!(queues.iter().any(|q| q.ends_with(&live)), "the live gateway's queue was reaped: {queues:?}");
            ensure!(endpoints.iter().any(|e| e.ends_with(&live)), "the live subscription was reaped: {endpoints:?}");
            ensure!(queues.contains(&stranger), "a queue that is not a gateway's was reaped: {queues:?}");
            break;
        }
        ensure!(Instant::now() < deadline, "not reaped: queues {queues:?}, endpoints {endpoints:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The survivor still chats.
    // Gateway 0 is dead: the room is created through the survivor.
    let room = cluster.public_room_on(1, "alice", "after-reap-").await?;
    let mut alice = cluster.connect(1, "alice").await?;
    alice.join(&room).await?;
    alice.send(&room, "a-1", "still here").await?;
    chat_e2e::scenarios::messages(&mut alice, &room, 1).await?;
    Ok(())
}
