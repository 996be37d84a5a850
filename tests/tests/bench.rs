//! The smoke run of the benchmark (`make bench` runs the full matrix): a
//! small step of the load generator through a real gateway, on each path,
//! must be complete and must have sampled the gateway's CPU and memory.

use std::time::Duration;

use chat_client::bench::{Plan, StepResult, run};
use chat_e2e::cluster::Cluster;

async fn smoke(cluster: &Cluster, label: &str) -> anyhow::Result<StepResult> {
    let (gateways, pids, auth) = cluster.bench_target();
    anyhow::ensure!(pids.len() == gateways.len(), "every gateway has a pid");
    let result = run(Plan {
        pids,
        rate: 5.0,
        duration: Duration::from_secs(2),
        drain: Duration::from_secs(30),
        auth: Some(auth),
        ..Plan::new(label, gateways, 20)
    })
    .await?;
    eprintln!("{}", result.summary());
    anyhow::ensure!(result.complete(), "incomplete: {}", result.summary());
    anyhow::ensure!(result.accepted >= 150, "too few sends accepted: {}", result.summary());
    anyhow::ensure!(result.delivered == result.accepted * 4, "{}", result.summary());
    anyhow::ensure!(result.gateway_cpu_s > 0.0 && result.gateway_rss_mb > 1.0, "{}", result.summary());
    Ok(result)
}

#[tokio::test]
async fn bench_smoke_on_the_memory_bus() -> anyhow::Result<()> {
    let cluster = Cluster::memory().await?;
    smoke(&cluster, "memory").await.map(drop)
}

#[tokio::test]
async fn bench_smoke_across_two_gateways_on_the_emulator() -> anyhow::Result<()> {
    let cluster = Cluster::aws(2).await?;
    smoke(&cluster, "aws-2gw").await.map(drop)
}

/// Users whose tokens the gateway refuses make the step fail at set-up with
/// the gateway's reason, not a hang or a silent empty result.
#[tokio::test]
async fn bench_reports_refused_users_clearly() -> anyhow::Result<()> {
    let cluster = Cluster::memory().await?;
    let (gateways, pids, mut auth) = cluster.bench_target();
    auth.secret = b"not-the-gateway-secret".to_vec();
    let plan = Plan {
        pids,
        duration: Duration::from_secs(1),
        drain: Duration::from_secs(1),
        auth: Some(auth),
        ..Plan::new("refused", gateways, 5)
    };
    let error = tokio::time::timeout(Duration::from_secs(30), run(plan)).await?.expect_err("refused").to_string();
    assert!(error.contains("Unauthenticated"), "{error}");
    Ok(())
}
