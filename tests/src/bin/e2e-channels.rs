//! Measures the external channels on the emulator, through the channel
//! simulator:
//!
//! - `latency`: alice sends paced messages to a room with a WhatsApp and a
//!   Telegram member; an observer member reads the DELIVERED receipts. For
//!   each message: send frame → DELIVERED, via the connector and the API
//!   (Telegram: the accepted send is the delivery) or via the connector, the
//!   API, the simulator's callback and the webhook (WhatsApp).
//! - `throughput`: N message events for external members (spread over
//!   `--addresses` recipients) go straight into one channel's connector
//!   queue (as SNS would deliver them) while its connector runs; timed until
//!   the simulator has accepted all N.
//!
//! `cargo run -p chat-e2e --bin e2e-channels -- latency --messages 300 --rate 10`
//! `cargo run -p chat-e2e --bin e2e-channels -- throughput --messages 2000 --channel telegram --addresses 50`
//! (`CHAT_PYTHON` as in `make test`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use chat_core::envelope::{Envelope, Event, MessageEvent};
use chat_e2e::cluster::Cluster;
use chat_proto::pb::MessageStatus;
use chat_proto::pb::server_event::Event as PbEvent;

const WA: &str = "whatsapp:+5511999990000";
const TG: &str = "telegram:123456";

#[derive(Debug)]
struct Args {
    mode: String,
    messages: usize,
    rate: f64,
    channel: String,
    addresses: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut it = std::env::args().skip(1);
    let mode = it.next().context("mode: latency or throughput")?;
    let mut args = Args { mode, messages: 300, rate: 10.0, channel: "telegram".into(), addresses: 50 };
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--messages" => args.messages = value.parse()?,
            "--rate" => args.rate = value.parse()?,
            "--channel" => args.channel = value,
            "--addresses" => args.addresses = value.parse()?,
            other => bail!("unknown flag {other}; flags: --messages N --rate PER_SEC --channel NAME --addresses N"),
        }
    }
    Ok(args)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(name: &str, mut latencies: Vec<Duration>) -> String {
    latencies.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "{name}: n={} p50={:.1}ms p90={:.1}ms p99={:.1}ms max={:.1}ms",
        latencies.len(),
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 90.0)),
        ms(percentile(&latencies, 99.0)),
        ms(percentile(&latencies, 100.0))
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    match args.mode.as_str() {
        "latency" => latency(&args).await,
        "throughput" => throughput(&args).await,
        other => bail!("mode is latency or throughput, not {other}"),
    }
}

async fn latency(args: &Args) -> anyhow::Result<()> {
    let mut cluster = Cluster::aws(1).await?;
    cluster.start_runner("persist", "CHAT_PERSIST_QUEUE_URL", &[("CHAT_BATCHING_WINDOW_MS", "50")])?;
    let sim = cluster.start_channels(&["whatsapp", "telegram"], &[]).await?;
    sim.receipts("whatsapp", "delivered").await?;
    // alice owns the room: only admins add (external) members.
    let room = cluster.public_room("alice", "channels-latency-").await?;
    let mut alice = cluster.connect(0, "alice").await?;
    let mut observer = cluster.connect(0, "observer").await?;
    alice.join(&room).await?;
    observer.join(&room).await?;
    for member in [WA, TG] {
        cluster.add_member(0, "alice", &room, member).await?.map_err(|s| anyhow::anyhow!("{s:?}"))?;
    }
    let n = args.messages;
    let pace = (args.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / args.rate));
    let sender = tokio::spawn({
        let room = room.clone();
        async move {
            let mut sent = Vec::with_capacity(n);
            let start = tokio::time::Instant::now();
            for i in 0..n {
                if let Some(pace) = pace {
                    tokio::time::sleep_until(start + pace * u32::try_from(i)?).await;
                }
                sent.push(Instant::now());
                alice.send(&room, &format!("c-{i}"), "latency probe").await?;
            }
            anyhow::Ok((sent, alice))
        }
    });
    // seq (1-based) → when the first DELIVERED covering it arrived, per user.
    let mut delivered: HashMap<&str, Vec<Option<Instant>>> = HashMap::from([(WA, vec![None; n]), (TG, vec![None; n])]);
    let started = Instant::now();
    while delivered.values().any(|v| v.iter().any(Option::is_none)) {
        let receipt = observer
            .wait_for_within(Duration::from_secs(120), |e| match e {
                PbEvent::Receipt(r) if r.status == MessageStatus::Delivered as i32 => Some(r.clone()),
                _ => None,
            })
            .await?;
        let now = Instant::now();
        if let Some(slots) = delivered.get_mut(receipt.user_id.as_str()) {
            let up_to = usize::try_from(receipt.up_to_seq)?.min(n);
            for slot in slots[..up_to].iter_mut().filter(|s| s.is_none()) {
                *slot = Some(now);
            }
        }
    }
    let elapsed = started.elapsed();
    let (sent, _alice) = sender.await??;
    println!(
        "send → DELIVERED through the simulator, {n} messages at {}/s ({:.1}s):",
        args.rate,
        elapsed.as_secs_f64()
    );
    for (name, user) in [("telegram (API accepted)", TG), ("whatsapp (API, callback, webhook)", WA)] {
        let latencies: Vec<Duration> = delivered[user]
            .iter()
            .zip(&sent)
            .filter_map(|(at, sent)| at.map(|at| at.saturating_duration_since(*sent)))
            .collect();
        println!("  {}", summary(name, latencies));
    }
    let sends = sim.delivered("whatsapp").await?.len() + sim.delivered("telegram").await?.len();
    println!("  channel sends: {sends} (expected {})", 2 * n);
    Ok(())
}

async fn throughput(args: &Args) -> anyhow::Result<()> {
    let mut cluster = Cluster::aws(0).await?;
    let sim = cluster.start_channels(&[args.channel.as_str()], &[]).await?;
    sim.receipts(&args.channel, "none").await.ok();
    let sdk = cluster.emulator.as_ref().context("emulator")?.sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue = cluster.output(&format!("CHAT_CONNECTOR_{}_QUEUE_URL", args.channel.to_uppercase()))?;
    let address = |i: usize| match args.channel.as_str() {
        "whatsapp" => format!("whatsapp:+55119{:08}", i % args.addresses),
        "instagram" => format!("instagram:user{}", i % args.addresses),
        _ => format!("telegram:{}", 100_000 + i % args.addresses),
    };
    let prefix = chat_e2e::unique("ctp-");
    let n = args.messages;
    let started = Instant::now();
    let mut entries = Vec::new();
    for i in 0..n {
        let id = format!("{prefix}-m{i}");
        let envelope = Envelope::new(
            id.clone(),
            format!("{prefix}-{}", i % args.addresses),
            "probe".into(),
            1,
            Event::Message(MessageEvent {
                message_id: id,
                seq: u64::try_from(i / args.addresses + 1)?,
                sender: "probe".into(),
                body: "x".repeat(100),
                client_message_id: String::new(),
                external_recipients: vec![address(i)],
            }),
        );
        entries
            .push(SendMessageBatchRequestEntry::builder().id(i.to_string()).message_body(envelope.encode()).build()?);
        if entries.len() == 10 || i == n - 1 {
            sqs.send_message_batch().queue_url(&queue).set_entries(Some(std::mem::take(&mut entries))).send().await?;
        }
    }
    let enqueued = started.elapsed();
    loop {
        let done = sim.delivered(&args.channel).await?.len();
        if done >= n {
            break;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(600), "only {done} of {n} sent");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    println!(
        "connector {}: {n} messages to {} addresses sent in {:.2}s = {:.0} messages/s (enqueueing took {:.2}s)",
        args.channel,
        args.addresses,
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        enqueued.as_secs_f64()
    );
    Ok(())
}
