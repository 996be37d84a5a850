//! Measures cross-gateway delivery latency: alice on gateway 0 sends paced
//! messages, bob on gateway 1 receives them; latency is the time from
//! handing a send frame to the client stream to bob reading the message
//! (both in this process, one clock). Prints p50/p90/p99/max.
//!
//! `cargo run -p chat-e2e --bin e2e-latency -- --mode aws --messages 1000`
//! (`CHAT_PYTHON` must name the emulator environment's python, as in
//! `make test`; `--mode memory` needs nothing). `--env NAME=VALUE` sets a
//! gateway variable (repeatable), e.g. `--env CHAT_ROUTING=broadcast`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chat_e2e::cluster::{Cluster, Mode};
use chat_proto::pb::server_event::Event;

struct Args {
    mode: Mode,
    messages: usize,
    rate: f64,
    env: Vec<(String, String)>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args { mode: Mode::Aws, messages: 1000, rate: 100.0, env: Vec::new() };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--mode" => {
                args.mode = match value.as_str() {
                    "aws" => Mode::Aws,
                    "memory" => Mode::Memory,
                    other => bail!("--mode is aws or memory, not {other}"),
                }
            }
            "--messages" => args.messages = value.parse()?,
            "--rate" => args.rate = value.parse()?,
            "--env" => {
                let (name, value) = value.split_once('=').context("--env takes NAME=VALUE")?;
                args.env.push((name.to_owned(), value.to_owned()));
            }
            other => {
                bail!(
                    "unknown flag {other}; flags: --mode aws|memory --messages N --rate PER_SEC (0: back to back) --env NAME=VALUE"
                )
            }
        }
    }
    Ok(args)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let env: Vec<(&str, &str)> = args.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let cluster = match args.mode {
        Mode::Aws => Cluster::aws_with(2, &env).await?,
        Mode::Memory => Cluster::memory_with(&env).await?,
    };
    let room = cluster.public_room("alice", "latency-").await?;
    let mut alice = cluster.connect(0, "alice").await?;
    let mut bob = cluster.connect(1, "bob").await?;
    alice.join(&room).await?;
    bob.join(&room).await?;

    let n = args.messages;
    let pace = (args.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / args.rate));
    let sender = tokio::spawn(async move {
        let mut sent = HashMap::with_capacity(n);
        let start = tokio::time::Instant::now();
        for i in 0..n {
            if let Some(pace) = pace {
                tokio::time::sleep_until(start + pace * i as u32).await;
            }
            let id = format!("l-{i}");
            sent.insert(id.clone(), Instant::now());
            alice.send(&room, &id, "latency probe").await?;
        }
        anyhow::Ok((sent, alice))
    });
    let mut received = HashMap::with_capacity(n);
    let started = Instant::now();
    while received.len() < n {
        let (id, at) = bob
            .wait_for(|e| match e {
                Event::Message(m) => Some((m.client_message_id.clone(), Instant::now())),
                _ => None,
            })
            .await?;
        received.insert(id, at);
    }
    let elapsed = started.elapsed();
    let (sent, _alice) = sender.await??;
    let mut latencies: Vec<Duration> =
        sent.iter().filter_map(|(id, at)| received.get(id).map(|r| r.saturating_duration_since(*at))).collect();
    latencies.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "mode={:?} messages={} rate={}/s delivered={} p50={:.1}ms p90={:.1}ms p99={:.1}ms max={:.1}ms throughput={:.0}/s",
        args.mode,
        n,
        args.rate,
        latencies.len(),
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 90.0)),
        ms(percentile(&latencies, 99.0)),
        ms(percentile(&latencies, 100.0)),
        n as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}
