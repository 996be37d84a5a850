//! `make bench`: the standard matrix, side by side in one run so ratios
//! hold on a noisy machine.
//!
//! - For each user count: the memory-bus gateway, then the raw tonic
//!   baseline (`chat bench-baseline`), under the same load; then a ceiling
//!   step (many sends per user) on each.
//! - The emulator path with 1, 2 and 4 gateways, each followed by the
//!   emulator's raw SNS → SQS capacity at the same message rate.
//! - The fan-out: one-to-one conversations at 1, 2, 4 and 8 gateways,
//!   broadcast then member routing on fresh clusters at each size, with
//!   `persist` and `fallback` running, every client acking and reading what
//!   it receives and sending idempotently: every AWS call each process made
//!   while the messages flowed (setup excluded), per delivery (`fanout.md`)
//!   and per message, by process, service, operation and table
//!   (`counts.csv`, which `chat cost --counts` prices).
//!
//! Writes `bench.csv`, `emulator.csv`, `latency.png`, `throughput.png` and
//! `ratios.md` into `--out`. Run it from release builds (the Makefile does).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::Context;
use chat_aws::dynamo::DynamoStore;
use chat_client::bench::{self, Pause, Plan, StepResult};
use chat_client::cost::measured::{COUNTS_CSV_HEADER, CountRow, EVENTS};
use chat_e2e::cluster::Cluster;
use chat_e2e::metrics::Scrape;
use chat_e2e::raw_bus::{self, RAW_CSV_HEADER, RawMode, RawResult};
use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    /// Where results and plots go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// User counts for the memory bus and the baseline.
    #[arg(long, value_delimiter = ',', default_value = "50,100,200,500,1000,2000,5000")]
    users: Vec<usize>,
    /// Sends per second per user in the sweep.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Users and per-user rate of the ceiling step.
    #[arg(long, default_value_t = 500)]
    ceiling_users: usize,
    #[arg(long, default_value_t = 40.0)]
    ceiling_rate: f64,
    /// The saturation ramp: the gateway and the baseline each alone on CPU
    /// 0 and the load generator alone on CPU 1, the offered load (sends per
    /// second per user, `--ceiling-users` users) multiplied by
    /// `--saturation-growth` from `--saturation-rate` until deliveries per
    /// second grow by less than 5 %, a delivery is lost, or p99 passes
    /// `--saturation-p99-ms`.
    #[arg(long, default_value_t = 10.0)]
    saturation_rate: f64,
    #[arg(long, default_value_t = 1.25)]
    saturation_growth: f64,
    #[arg(long, default_value_t = 50.0)]
    saturation_p99_ms: f64,
    #[arg(long, default_value_t = 12)]
    saturation_steps: usize,
    #[arg(long)]
    skip_saturation: bool,
    /// Streams connected to fresh processes to measure memory per idle
    /// stream.
    #[arg(long, default_value_t = 2000)]
    idle_users: usize,
    /// User counts on the emulator path (the emulator, not the gateway,
    /// bounds these).
    #[arg(long, value_delimiter = ',', default_value = "50,100,200")]
    aws_users: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    aws_gateways: Vec<usize>,
    #[arg(long, default_value_t = 0.2)]
    aws_rate: f64,
    #[arg(long, default_value_t = 5)]
    conversation_size: usize,
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    #[arg(long, default_value_t = 30.0)]
    drain_secs: f64,
    #[arg(long, default_value_t = 64)]
    body_bytes: usize,
    /// Only the memory bus and the baseline.
    #[arg(long)]
    skip_aws: bool,
    /// Only the emulator path.
    #[arg(long)]
    skip_memory: bool,
    /// Gateway counts of the fan-out comparison (broadcast vs member
    /// routing, one-to-one conversations).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    fanout_gateways: Vec<usize>,
    #[arg(long, default_value_t = 96)]
    fanout_users: usize,
    #[arg(long, default_value_t = 0.5)]
    fanout_rate: f64,
    /// Gateway flags for both sides of the fan-out comparison, e.g.
    /// `CHAT_RECEIVE_WINDOW_MS=50`.
    #[arg(long, value_delimiter = ',')]
    fanout_env: Vec<String>,
    #[arg(long)]
    skip_fanout: bool,
    /// Fan-out clients that only send and receive: no acks or reads, no
    /// client_message_id (what receipts and idempotency cost, by difference).
    #[arg(long)]
    fanout_silent_clients: bool,
    /// Only price a fan-out run measured before (its `counts.csv`) and
    /// write its `fleet.md` into `--out`: the model's figures again,
    /// without running anything.
    #[arg(long)]
    price_counts: Option<PathBuf>,
}

/// AWS calls a gateway made over its life and the deliveries to its
/// streams, read from its `/metrics` just before it stops.
#[derive(Debug, Default, Clone, PartialEq)]
struct AwsCalls {
    sns_publishes: u64,
    sns_events: u64,
    receives: u64,
    empty_receives: u64,
    messages: u64,
    delete_batches: u64,
    /// Member routing's sends to other gateways' queues, and URL lookups.
    send_batches: u64,
    queue_urls: u64,
    deliveries: u64,
    sns_requests: u64,
    dynamodb_requests: u64,
}

impl AwsCalls {
    fn from_scrape(scrape: &Scrape) -> Self {
        let requests = |service: &str, operation: &str| {
            scrape.sum("chat_aws_requests_total", &[("service", service), ("operation", operation)]) as u64
        };
        Self {
            sns_publishes: scrape.sum("chat_publish_batch_size_count", &[]) as u64,
            sns_events: scrape.sum("chat_publish_batch_size_sum", &[]) as u64,
            receives: requests("SQS", "ReceiveMessage"),
            empty_receives: scrape.sum("chat_sqs_empty_receives_total", &[]) as u64,
            messages: scrape.sum("chat_bus_events_received_total", &[]) as u64,
            delete_batches: requests("SQS", "DeleteMessageBatch"),
            send_batches: requests("SQS", "SendMessageBatch"),
            queue_urls: requests("SQS", "GetQueueUrl"),
            deliveries: scrape.sum("chat_deliveries_total", &[]) as u64,
            sns_requests: scrape.sum("chat_aws_requests_total", &[("service", "SNS")]) as u64,
            dynamodb_requests: scrape.sum("chat_aws_requests_total", &[("service", "DynamoDB")]) as u64,
        }
    }

    fn add(&mut self, other: &Self) {
        self.sns_publishes += other.sns_publishes;
        self.sns_events += other.sns_events;
        self.receives += other.receives;
        self.empty_receives += other.empty_receives;
        self.messages += other.messages;
        self.delete_batches += other.delete_batches;
        self.send_batches += other.send_batches;
        self.queue_urls += other.queue_urls;
        self.deliveries += other.deliveries;
        self.sns_requests += other.sns_requests;
        self.dynamodb_requests += other.dynamodb_requests;
    }

    /// Every SQS call the gateways made but heartbeats: receives, deletes,
    /// and member routing's sends and URL lookups.
    fn sqs_calls(&self) -> u64 {
        self.receives + self.delete_batches + self.send_batches + self.queue_urls
    }

    /// SQS calls (receives, empty ones included, and batch deletes) per
    /// event received.
    fn per_message(&self) -> f64 {
        per(self.sqs_calls(), self.messages)
    }

    /// SQS calls per message delivered to a stream (the measure: an
    /// event for several local streams counts once per stream).
    fn per_delivery(&self) -> f64 {
        per(self.sqs_calls(), self.deliveries)
    }

    fn events_per_publish(&self) -> f64 {
        per(self.sns_events, self.sns_publishes)
    }

    fn summary(&self, gateways: usize) -> String {
        format!(
            "{} gateways: {} events received with {} receives ({} empty) and {} batch deletes: {:.3} SQS calls per event, \
             {:.3} per delivery ({} deliveries); {} events published in {} SNS requests ({:.2} per request)",
            gateways,
            self.messages,
            self.receives,
            self.empty_receives,
            self.delete_batches,
            self.per_message(),
            self.per_delivery(),
            self.deliveries,
            self.sns_events,
            self.sns_publishes,
            self.events_per_publish()
        )
    }
}

/// Stops a cluster's gateways, each scraped just before; their AWS calls
/// and deliveries in all.
async fn stop_and_total(cluster: &mut Cluster, gateways: usize) -> anyhow::Result<AwsCalls> {
    let mut calls = AwsCalls::default();
    for index in 0..gateways {
        let totals = AwsCalls::from_scrape(&cluster.scrape(index).await?);
        cluster.stop_gateway(index).await?;
        calls.add(&totals);
    }
    Ok(calls)
}

fn per(n: u64, d: u64) -> f64 {
    if d == 0 { 0.0 } else { n as f64 / d as f64 }
}

/// The baseline server as its own process, so its CPU is its own.
struct BaselineProcess {
    child: Child,
    url: String,
}

impl BaselineProcess {
    async fn start() -> anyhow::Result<Self> {
        Self::start_on(None).await
    }

    /// Started on the CPUs `cpus` names (a `taskset` list) when given.
    async fn start_on(cpus: Option<&str>) -> anyhow::Result<Self> {
        let port = chat_e2e::free_port()?;
        let child = chat_e2e::on_cpus(chat_e2e::workspace_bin("chat")?, cpus)
            .args(["bench-baseline", "--listen", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the baseline server")?;
        // Built before the wait, so the child is killed if it never listens.
        let process = Self { child, url: format!("http://127.0.0.1:{port}") };
        chat_e2e::wait_listening(port).await.context("the baseline server did not listen")?;
        Ok(process)
    }

    fn target(&self) -> (Vec<String>, Vec<u32>) {
        (vec![self.url.clone()], vec![self.child.id()])
    }
}

/// A fresh memory-bus gateway and a fresh baseline server, side by side.
async fn fresh_pair() -> anyhow::Result<(Cluster, BaselineProcess)> {
    Ok((Cluster::memory().await?, BaselineProcess::start().await?))
}

impl Drop for BaselineProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Args {
    fn plan(&self, label: &str, gateways: Vec<String>, pids: Vec<u32>, users: usize, rate: f64) -> Plan {
        Plan {
            pids,
            conversation_size: self.conversation_size,
            rate,
            duration: Duration::from_secs_f64(self.duration_secs),
            drain: Duration::from_secs_f64(self.drain_secs),
            body_bytes: self.body_bytes,
            ..Plan::new(label, gateways, users)
        }
    }
}

async fn step(plan: Plan, results: &mut Vec<StepResult>) -> anyhow::Result<()> {
    let label = plan.label.clone();
    let users = plan.users;
    let result = bench::run(plan).await.with_context(|| format!("{label} with {users} users"))?;
    println!("{}", result.summary());
    results.push(result);
    Ok(())
}

/// One step of the saturation ramp, as the ramp reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct RampStep {
    rate: f64,
    deliveries_per_s: f64,
    p99_ms: f64,
    complete: bool,
}

impl RampStep {
    fn of(result: &StepResult) -> Self {
        Self {
            rate: result.rate_per_user,
            deliveries_per_s: result.deliveries_per_s,
            p99_ms: result.p99_ms,
            complete: result.complete() && result.send_errors == 0,
        }
    }
}

/// Deliveries per second must grow at least this much from one step to the
/// next for the ramp to go on.
const SATURATION_MIN_GROWTH: f64 = 1.05;

/// Whether the saturation ramp goes on after `steps`: not once the last
/// step lost something, passed the p99 bound, or delivered less than 5 %
/// more per second than the best before it, nor past the step budget.
fn ramp_goes_on(steps: &[RampStep], p99_bound_ms: f64, max_steps: usize) -> bool {
    let Some((last, before)) = steps.split_last() else { return true };
    let best_before = before.iter().map(|s| s.deliveries_per_s).fold(0.0, f64::max);
    let grew = before.is_empty() || last.deliveries_per_s >= best_before * SATURATION_MIN_GROWTH;
    last.complete && last.p99_ms <= p99_bound_ms && grew && steps.len() < max_steps
}

/// The saturation point: the step that delivered the most per second
/// within the bound, lossless.
fn saturation_point(steps: &[StepResult], p99_bound_ms: f64) -> Option<&StepResult> {
    steps
        .iter()
        .filter(|s| RampStep::of(s).complete && s.p99_ms <= p99_bound_ms)
        .max_by(|a, b| a.deliveries_per_s.total_cmp(&b.deliveries_per_s))
}

/// One step of the ramp: `--ceiling-users` users at `rate` against a fresh
/// gateway (or baseline) on CPU 0, the load generator on CPU 1.
async fn ramp_step(args: &Args, gateway: bool, rate: f64) -> anyhow::Result<StepResult> {
    let label = if gateway { "memory-saturation" } else { "baseline-saturation" };
    let result = if gateway {
        let cluster = Cluster::memory_on(SERVER_CPU).await?;
        let (urls, pids, auth) = cluster.bench_target();
        let mut plan = args.plan(label, urls, pids, args.ceiling_users, rate);
        plan.auth = Some(auth);
        bench::run(plan).await
    } else {
        let baseline = BaselineProcess::start_on(Some(SERVER_CPU)).await?;
        let (urls, pids) = baseline.target();
        bench::run(args.plan(label, urls, pids, args.ceiling_users, rate)).await
    }
    .with_context(|| format!("{label} at {rate}/s per user"))?;
    println!(
        "{} load generator {:.0} % of its CPU",
        result.summary(),
        100.0 * result.client_cpu_s / result.duration_s.max(1e-9)
    );
    Ok(result)
}

/// Ramps the gateway and the baseline side by side, one rate at a time
/// (the gateway's step, then the baseline's), each until it saturates, so
/// the machine's noise falls on both alike; every step of each.
async fn ramp(args: &Args) -> anyhow::Result<(Vec<StepResult>, Vec<StepResult>)> {
    let (mut gateway, mut baseline): (Vec<StepResult>, Vec<StepResult>) = (Vec::new(), Vec::new());
    let mut rate = args.saturation_rate;
    let goes_on = |steps: &[StepResult]| {
        let steps: Vec<RampStep> = steps.iter().map(RampStep::of).collect();
        ramp_goes_on(&steps, args.saturation_p99_ms, args.saturation_steps)
    };
    loop {
        let (gateway_on, baseline_on) = (goes_on(&gateway), goes_on(&baseline));
        if !gateway_on && !baseline_on {
            return Ok((gateway, baseline));
        }
        if gateway_on {
            gateway.push(ramp_step(args, true, rate).await?);
        }
        if baseline_on {
            baseline.push(ramp_step(args, false, rate).await?);
        }
        rate *= args.saturation_growth;
    }
}

/// Where the saturation ramp runs its servers, and its load generator.
const SERVER_CPU: &str = "0";
const LOAD_CPU: &str = "1";

/// The saturation section of `ratios.md`.
fn saturation_table(args: &Args, gateway: &[StepResult], baseline: &[StepResult]) -> String {
    let bound = args.saturation_p99_ms;
    let mut md = format!(
        "Saturation, one core each (server alone on CPU {SERVER_CPU}, load generator alone on CPU {LOAD_CPU}; \
         {} users, conversations of {}; the offered load grows ×{} per step until deliveries/s grow < 5 %, \
         a delivery is lost, or p99 > {bound} ms):\n\n",
        args.ceiling_users, args.conversation_size, args.saturation_growth
    );
    md.push_str("| server | saturation deliveries/s | at sends/s per user | p99 ms there | deliveries per server CPU-s there | load generator CPU there |\n");
    md.push_str("| --- | --- | --- | --- | --- | --- |\n");
    let mut points = Vec::new();
    for (name, steps) in [("gateway", gateway), ("baseline", baseline)] {
        match saturation_point(steps, bound) {
            Some(s) => {
                let _ = writeln!(
                    md,
                    "| {name} | {:.0} | {} | {:.2} | {:.0} | {:.0} % |",
                    s.deliveries_per_s,
                    s.rate_per_user,
                    s.p99_ms,
                    s.deliveries_per_gateway_cpu_s,
                    100.0 * s.client_cpu_s / s.duration_s.max(1e-9)
                );
                points.push(s.deliveries_per_s);
            }
            None => {
                let _ = writeln!(md, "| {name} | – (no step within the bound) | | | | |");
            }
        }
    }
    if let [g, b] = points[..] {
        let _ = writeln!(
            md,
            "
Saturation ratio, gateway / baseline: {}.",
            ratio(g, b)
        );
    }
    md
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 { format!("{:.2}", a / b) } else { "–".into() }
}

/// The side-by-side table of the run, in Markdown.
fn ratios(results: &[StepResult], raw: &[(String, RawResult)]) -> String {
    let find = |label: &str, users: usize| results.iter().find(|r| r.label == label && r.users == users);
    let mut md = String::new();
    let labelled = |label: &str| results.iter().find(|r| r.label == label);
    for (suffix, how) in [("", "each on its own connection"), ("-mux", "100 per connection")] {
        if let (Some(g), Some(b)) =
            (labelled(&format!("memory-idle{suffix}")), labelled(&format!("baseline-idle{suffix}")))
        {
            let _ = writeln!(
                md,
                "Resident memory per idle joined stream ({} streams {how}, fresh processes): gateway {:.1} KB, baseline {:.1} KB.\n",
                g.users, g.rss_kb_per_stream, b.rss_kb_per_stream
            );
        }
    }
    let _ = writeln!(
        md,
        "| users | deliveries/s gateway / baseline | p99 ms gateway / baseline | deliveries per gateway CPU-s (baseline) | complete |"
    );
    let _ = writeln!(md, "| --- | --- | --- | --- | --- |");
    let mut users: Vec<usize> =
        results.iter().filter(|r| r.label == "memory" || r.label == "memory-ceiling").map(|r| r.users).collect();
    users.sort_unstable();
    users.dedup();
    for label in ["memory", "memory-ceiling"] {
        for &n in &users {
            let (Some(g), Some(b)) = (find(label, n), find(&label.replace("memory", "baseline"), n)) else { continue };
            let _ = writeln!(
                md,
                "| {n}{} | {:.0} / {:.0} = {} | {:.2} / {:.2} = {} | {:.0} ({:.0}) | {} |",
                if label.ends_with("ceiling") { format!(" at {}/s each", g.rate_per_user) } else { String::new() },
                g.deliveries_per_s,
                b.deliveries_per_s,
                ratio(g.deliveries_per_s, b.deliveries_per_s),
                g.p99_ms,
                b.p99_ms,
                ratio(g.p99_ms, b.p99_ms),
                g.deliveries_per_gateway_cpu_s,
                b.deliveries_per_gateway_cpu_s,
                if g.complete() && b.complete() { "yes" } else { "NO" },
            );
        }
    }
    if !raw.is_empty() {
        let _ = writeln!(
            md,
            "\n| emulator path | users | p50 ms: gateway / raw SNS→SQS / raw send's calls | p99 ms: gateway / raw / raw send's calls | deliveries/s | complete |"
        );
        let _ = writeln!(md, "| --- | --- | --- | --- | --- | --- |");
        let mut labels: Vec<&String> = raw.iter().map(|(label, _)| label).collect();
        labels.dedup();
        for label in labels {
            let of = |mode: &str| raw.iter().find(|(l, r)| l == label && r.label == mode).map(|(_, r)| r);
            let (Some(bare), Some(send)) = (of("emulator-raw"), of("emulator-raw-send")) else { continue };
            for g in results.iter().filter(|g| &g.label == label) {
                let _ = writeln!(
                    md,
                    "| {label} | {} | {:.2} / {:.2} / {:.2} = {} / {} | {:.2} / {:.2} / {:.2} = {} / {} | {:.0} | {} |",
                    g.users,
                    g.p50_ms,
                    bare.p50_ms,
                    send.p50_ms,
                    ratio(g.p50_ms, bare.p50_ms),
                    ratio(g.p50_ms, send.p50_ms),
                    g.p99_ms,
                    bare.p99_ms,
                    send.p99_ms,
                    ratio(g.p99_ms, bare.p99_ms),
                    ratio(g.p99_ms, send.p99_ms),
                    g.deliveries_per_s,
                    if g.complete() && bare.received == bare.expected && send.received == send.expected {
                        "yes"
                    } else {
                        "NO"
                    },
                );
            }
        }
    }
    md
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    if let Some(counts) = &args.price_counts {
        let text = std::fs::read_to_string(counts).with_context(|| format!("reading {}", counts.display()))?;
        let priced = price_and_extrapolate(&chat_client::cost::measured::parse_counts(&text)?)?;
        std::fs::write(args.out.join("fleet.md"), &priced)?;
        println!("{priced}");
        return Ok(());
    }
    let mut results = Vec::new();
    let mut raw = Vec::new();
    let mut sqs = Vec::new();

    if !args.skip_memory {
        {
            // Resident memory per idle joined stream, on fresh processes each
            // time (later steps reuse what the allocator kept): every stream on
            // its own connection, then 100 to a connection, which leaves what a
            // stream costs beyond its HTTP/2 connection's buffers.
            for (suffix, streams_per_connection) in [("", 1), ("-mux", 100)] {
                let (memory, baseline) = fresh_pair().await?;
                let (urls, pids, auth) = memory.bench_target();
                let idle = |label: String, urls: Vec<String>, pids: Vec<u32>| Plan {
                    streams_per_connection,
                    duration: Duration::from_secs(1),
                    ..args.plan(&label, urls, pids, args.idle_users, 0.1)
                };
                let mut gateway = idle(format!("memory-idle{suffix}"), urls, pids);
                gateway.auth = Some(auth);
                step(gateway, &mut results).await?;
                let (urls, pids) = baseline.target();
                let plan = idle(format!("baseline-idle{suffix}"), urls, pids);
                step(plan, &mut results).await?;
            }
        }

        {
            let (memory, baseline) = fresh_pair().await?;
            let (urls, pids, auth) = memory.bench_target();
            let (baseline_urls, baseline_pids) = baseline.target();
            for &users in &args.users {
                let mut gateway = args.plan("memory", urls.clone(), pids.clone(), users, args.rate);
                gateway.auth = Some(auth.clone());
                step(gateway, &mut results).await?;
                let plan = args.plan("baseline", baseline_urls.clone(), baseline_pids.clone(), users, args.rate);
                step(plan, &mut results).await?;
            }
        }

        {
            // The ceiling on fresh processes: the sweep's stored messages and
            // allocator state would otherwise weigh on the gateway alone.
            let (memory, baseline) = fresh_pair().await?;
            let (urls, pids, auth) = memory.bench_target();
            let mut gateway = args.plan("memory-ceiling", urls, pids, args.ceiling_users, args.ceiling_rate);
            gateway.auth = Some(auth);
            step(gateway, &mut results).await?;
            let (urls, pids) = baseline.target();
            let plan = args.plan("baseline-ceiling", urls, pids, args.ceiling_users, args.ceiling_rate);
            step(plan, &mut results).await?;
        }
    }

    let mut saturation = String::new();
    if !args.skip_saturation {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        if cores < 2 {
            println!("saturation ramp skipped: it needs two CPUs, this machine has {cores}");
        } else {
            chat_e2e::move_self_to_cpus(LOAD_CPU)?;
            let (gateway, baseline) = ramp(&args).await?;
            chat_e2e::move_self_to_cpus(&format!("0-{}", cores - 1))?;
            saturation = saturation_table(&args, &gateway, &baseline);
            println!("\n{saturation}");
            results.extend(gateway);
            results.extend(baseline);
        }
    }

    if !args.skip_aws {
        for &gateways in &args.aws_gateways {
            let label = format!("aws-{gateways}gw");
            let mut cluster = Cluster::aws(gateways).await?;
            let (urls, pids, auth) = cluster.bench_target();
            for &users in &args.aws_users {
                cluster.purge_function_queues().await?;
                let mut plan = args.plan(&label, urls.clone(), pids.clone(), users, args.aws_rate);
                plan.auth = Some(auth.clone());
                step(plan, &mut results).await?;
            }
            // The same message rate as the largest step, without gateways
            // (stopped first: their queues would get the raw messages too).
            let calls = stop_and_total(&mut cluster, gateways).await?;
            println!("{label}: {}", calls.summary(gateways));
            sqs.push((label.clone(), calls));
            let emulator = cluster.emulator.as_ref().context("aws cluster without emulator")?;
            let rate = args.aws_users.iter().max().copied().unwrap_or(50) as f64 * args.aws_rate;
            let messages = (rate * args.duration_secs).ceil().max(1.0) as u64;
            let topic = cluster.output("CHAT_TOPIC_ARN")?;
            let store = DynamoStore::new(emulator.dynamodb().await, chat_e2e::tables(|name| cluster.output(name))?);
            let like_a_send = RawMode::LikeASend { store };
            for mode in [RawMode::Bare, like_a_send] {
                cluster.purge_function_queues().await?;
                let r = raw_bus::measure(&mode, emulator, &topic, &cluster.queue_prefix(), gateways, 4, messages, rate)
                    .await?;
                println!("{}", r.summary());
                raw.push((label.clone(), r));
            }
        }
    }

    if !args.skip_fanout {
        let (fanout, counts) = fanout(&args, &mut results).await?;
        std::fs::write(args.out.join("fanout.md"), &fanout)?;
        let rows: Vec<String> =
            std::iter::once(COUNTS_CSV_HEADER.to_owned()).chain(counts.iter().map(CountRow::csv)).collect();
        std::fs::write(args.out.join("counts.csv"), rows.join("\n") + "\n")?;
        println!("\n{fanout}");
        let priced = price_and_extrapolate(&counts)?;
        std::fs::write(args.out.join("fleet.md"), &priced)?;
        println!("\n{priced}");
    }

    let csv = args.out.join("bench.csv");
    let _ = std::fs::remove_file(&csv);
    bench::append_csv(&csv, &results).with_context(|| format!("writing {}", csv.display()))?;
    let raw_csv = args.out.join("emulator.csv");
    let mut text = format!("{RAW_CSV_HEADER}\n");
    for (_, r) in &raw {
        text.push_str(&r.csv_row());
        text.push('\n');
    }
    std::fs::write(&raw_csv, text).with_context(|| format!("writing {}", raw_csv.display()))?;
    let points = bench::plot::read_points(&csv)?;
    let sweep_points: Vec<_> = points
        .into_iter()
        .filter(|p| {
            !p.label.contains("-ceiling")
                && !p.label.contains("-idle")
                && !p.label.contains("-saturation")
                && !p.label.starts_with("fanout-")
        })
        .collect();
    let plots = bench::plot::plot(&sweep_points, &args.out, "chat bench")?;
    let mut table = ratios(&results, &raw);
    if !saturation.is_empty() {
        table = format!("{saturation}\n{table}");
    }
    if !sqs.is_empty() {
        let _ = writeln!(
            table,
            "\n| emulator path (whole run) | SQS calls per event received, per gateway | SQS calls per delivery | events received | deliveries | empty receives | events per SNS request |"
        );
        let _ = writeln!(table, "| --- | --- | --- | --- | --- | --- | --- |");
        for (label, calls) in &sqs {
            let _ = writeln!(
                table,
                "| {label} | {:.3} | {:.3} | {} | {} | {} | {:.2} |",
                calls.per_message(),
                calls.per_delivery(),
                calls.messages,
                calls.deliveries,
                calls.empty_receives,
                calls.events_per_publish()
            );
        }
    }
    std::fs::write(args.out.join("ratios.md"), &table)?;
    println!("\n{table}");
    println!(
        "wrote {}, {} and {}",
        csv.display(),
        raw_csv.display(),
        plots.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    );
    Ok(())
}

/// Broadcast against member routing with one-to-one conversations, side
/// by side at each gateway count (fresh clusters, broadcast first); users
/// go round-robin over the gateways, so a pair is always on two of them
/// (from two gateways up): the case routing cannot make local. Returns the
/// table and the counts rows of every run.
async fn fanout(args: &Args, results: &mut Vec<StepResult>) -> anyhow::Result<(String, Vec<CountRow>)> {
    let extra: Vec<(String, String)> = args
        .fanout_env
        .iter()
        .map(|kv| {
            kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).context("--fanout-env takes NAME=VALUE")
        })
        .collect::<anyhow::Result<_>>()?;
    let mut md = String::from(
        "| gateways | SQS calls per delivery: broadcast / members | events received per message: broadcast / members | \
         SNS requests per message | DynamoDB requests per message | p50 ms: broadcast / members = ratio | p99 ms: broadcast / members = ratio | complete |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    let mut counts = Vec::new();
    for &gateways in &args.fanout_gateways {
        let mut side = Vec::new();
        for routing in ["broadcast", "members"] {
            let mut env: Vec<(&str, &str)> = vec![("CHAT_ROUTING", routing)];
            env.extend(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            // The fallback's delay short enough that its work is counted
            // within the run's drain.
            let mut cluster = Cluster::aws_custom(gateways, &env, &["FallbackDelaySeconds=1"]).await?;
            // No batching window: the local runner emulates one by polling
            // the emulator every 20 ms, which would load it far more than the
            // chat does. Batches are then smaller than in AWS: more
            // invocations per message, an upper bound.
            let runner_env = [("CHAT_BATCHING_WINDOW_MS", "0")];
            let functions = [
                ("persist", cluster.start_runner("persist", "CHAT_PERSIST_QUEUE_URL", &runner_env)?),
                ("fallback", cluster.start_runner("fallback", "CHAT_FALLBACK_QUEUE_URL", &runner_env)?),
            ];
            let (urls, pids, auth) = cluster.bench_target();
            let label = format!("fanout-{routing}-{gateways}gw");
            let mut plan = args.plan(&label, urls, pids, args.fanout_users, args.fanout_rate);
            plan.conversation_size = 2;
            plan.auth = Some(auth);
            plan.receipts = !args.fanout_silent_clients;
            plan.idempotent = !args.fanout_silent_clients;
            let (connected, joined) = tokio::sync::oneshot::channel();
            let (go, going) = tokio::sync::oneshot::channel();
            let (drained, all_in) = tokio::sync::oneshot::channel();
            let (close, closing) = tokio::sync::oneshot::channel();
            let pause = Pause { connected, go: going, drained, close: closing };
            let running = tokio::spawn(bench::run_paused(plan, Some(pause)));
            // Counted from every user joined to every delivery in and the
            // functions' queues empty, streams still open.
            let before =
                if joined.await.is_ok() { Some(scrape_processes(&cluster, gateways, &functions).await?) } else { None };
            let _ = go.send(());
            let after = if all_in.await.is_ok() {
                cluster.wait_queues_empty(&["CHAT_PERSIST_QUEUE_URL", "CHAT_FALLBACK_QUEUE_URL"]).await?;
                Some(scrape_processes(&cluster, gateways, &functions).await?)
            } else {
                None
            };
            let _ = close.send(());
            let result = running.await.context("the step panicked")?.with_context(|| label.clone())?;
            let (before, after) = before.zip(after).context("the step ended before its counters were read")?;
            println!("{}", result.summary());
            results.push(result.clone());
            let tables = cluster.table_names();
            let mut calls = AwsCalls::default();
            let mut by_process: Vec<(&str, Scrape)> = Vec::new();
            for ((process, after), (_, before)) in after.iter().zip(&before) {
                let delta = after.since(before);
                if *process == "gateway" {
                    calls.add(&AwsCalls::from_scrape(&delta));
                }
                by_process.push((process, delta));
            }
            // From the first send to the last delivery.
            let seconds = if result.deliveries_per_s > 0.0 {
                result.delivered as f64 / result.deliveries_per_s
            } else {
                result.duration_s
            };
            counts.extend(count_rows(&by_process, (gateways as u32, routing, result.accepted, seconds), &tables));
            println!("{label}: {}", calls.summary(gateways));
            side.push((calls, result));
        }
        let [(b, br), (m, mr)] = &side[..] else { continue };
        let per_message = |n: u64, r: &StepResult| per(n, r.accepted);
        let _ = writeln!(
            md,
            "| {gateways} | {:.3} / {:.3} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} = {} | {:.2} / {:.2} = {} | {} |",
            b.per_delivery(),
            m.per_delivery(),
            per_message(b.messages, br),
            per_message(m.messages, mr),
            per_message(b.sns_requests, br),
            per_message(m.sns_requests, mr),
            per_message(b.dynamodb_requests, br),
            per_message(m.dynamodb_requests, mr),
            br.p50_ms,
            mr.p50_ms,
            ratio(mr.p50_ms, br.p50_ms),
            br.p99_ms,
            mr.p99_ms,
            ratio(mr.p99_ms, br.p99_ms),
            if br.complete() && mr.complete() { "yes" } else { "NO" },
        );
    }
    Ok((md, counts))
}

/// What the measured counts cost (`chat cost --counts` at each gateway
/// count with member routing), and the fleet model calibrated on the run at
/// 2 gateways, checked against every run, then run at 10, 100 and 1,000
/// gateways of 10,000 users each.
fn price_and_extrapolate(counts: &[CountRow]) -> anyhow::Result<String> {
    use chat_client::bench::fleet::{self, Calibration, Fleet, Placement};
    use chat_client::cost::measured::{estimate_measured, runs};
    use chat_client::cost::{Routing, Workload};
    let mut md = String::from(
        "### Measured cost, 1 KB messages (`chat cost --counts counts.csv --gateways G --routing R`)\n\n\
         | gateways | routing | $ per million messages, variable |\n| --- | --- | --- |\n",
    );
    for (gateways, routing, _) in runs(counts) {
        let routing_flag = if routing == "broadcast" { Routing::Broadcast } else { Routing::Members };
        let w = Workload { gateways, routing: routing_flag, ..Workload::default() };
        let e = estimate_measured(&w, counts, "counts.csv")?;
        let _ = writeln!(md, "| {gateways} | {routing} | {:.3} |", e.variable_per_million);
    }
    let Ok(calibration) = Calibration::from_counts(counts, 2, &Workload::default()) else {
        md.push_str("\n(no member-routing run at 2 gateways to calibrate the fleet model on)\n");
        return Ok(md);
    };
    let checks = fleet::validate(counts, &calibration, 32);
    let fleet_of = |gateways: u32, routing| Fleet {
        gateways,
        routing,
        route_limit: 32,
        placement: Placement::Uniform,
        mix: fleet::standard_mix(f64::from(gateways) * 10_000.0, 20.0, 5.0),
    };
    let mut fleets =
        vec![("1000 gateways, broadcast".to_owned(), fleet_of(1000, Routing::Broadcast).predict(&calibration))];
    for gateways in [10, 100, 1000] {
        fleets.push((
            format!("{gateways} gateways, members"),
            fleet_of(gateways, Routing::Members).predict(&calibration),
        ));
    }
    md.push('\n');
    md.push_str(&fleet::report(&checks, &calibration, &fleets));
    Ok(md)
}

/// Each gateway's scrape (as `gateway`) and each function runner's (by
/// function name), in that order.
async fn scrape_processes(
    cluster: &Cluster,
    gateways: usize,
    functions: &[(&'static str, usize)],
) -> anyhow::Result<Vec<(&'static str, Scrape)>> {
    let mut scrapes = Vec::new();
    for index in 0..gateways {
        scrapes.push(("gateway", cluster.scrape(index).await?));
    }
    for (function, runner) in functions {
        let addr = cluster.runner_metrics(*runner).with_context(|| format!("{function} runner's metrics"))?;
        scrapes.push((*function, Scrape::fetch(addr).await?));
    }
    Ok(scrapes)
}

/// The counts rows of one run: per process (the gateways summed), SNS and
/// SQS calls by operation, DynamoDB calls by operation and table (named as
/// the stack's outputs name it: `messages`, `send_dedup`, ...), and the
/// function's invocations; and the events the fleet model reads (receipts
/// reported, messages received from queues, empty receives, function
/// records).
fn count_rows(
    scrapes: &[(&str, Scrape)],
    (gateways, routing, messages, seconds): (u32, &str, u64, f64),
    tables: &BTreeMap<String, String>,
) -> Vec<CountRow> {
    let logical = |names: &str| {
        names
            .split('+')
            .map(|name| tables.get(name).cloned().unwrap_or_else(|| name.to_owned()))
            .collect::<Vec<_>>()
            .join("+")
    };
    let mut totals: BTreeMap<(String, String, String, String), f64> = BTreeMap::new();
    for (process, scrape) in scrapes {
        for sample in &scrape.samples {
            let label = |name: &str| sample.labels.get(name).cloned().unwrap_or_default();
            let key = match sample.name.as_str() {
                "chat_aws_requests_total" if label("service") != "DynamoDB" => {
                    (label("service"), label("operation"), String::new())
                }
                "chat_dynamodb_requests_total" => ("DynamoDB".to_owned(), label("operation"), logical(&label("table"))),
                "chat_function_invocations_total" => ("Lambda".to_owned(), "Invoke".to_owned(), String::new()),
                "chat_receipts_reported_total" => (EVENTS.to_owned(), "Receipt".to_owned(), String::new()),
                "chat_sqs_empty_receives_total" => (EVENTS.to_owned(), "EmptyReceive".to_owned(), String::new()),
                "chat_sqs_messages_received_total" => (EVENTS.to_owned(), "QueueReceived".to_owned(), String::new()),
                "chat_function_records_total" => (EVENTS.to_owned(), "Records".to_owned(), String::new()),
                _ => continue,
            };
            *totals.entry(((*process).to_owned(), key.0, key.1, key.2)).or_default() += sample.value;
        }
    }
    totals
        .into_iter()
        .filter(|(_, calls)| *calls > 0.0)
        .map(|((process, service, operation, table), calls)| CountRow {
            gateways,
            routing: routing.to_owned(),
            messages,
            seconds,
            process,
            service,
            operation,
            table,
            calls,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(rate: f64, deliveries_per_s: f64, p99_ms: f64, complete: bool) -> RampStep {
        RampStep { rate, deliveries_per_s, p99_ms, complete }
    }

    #[test]
    fn the_ramp_stops_at_its_first_sign_of_saturation() {
        let fine = [step(20.0, 40_000.0, 5.0, true)];
        assert!(ramp_goes_on(&[], 50.0, 8));
        assert!(ramp_goes_on(&fine, 50.0, 8), "one good step");
        let growing = [fine[0], step(30.0, 60_000.0, 8.0, true)];
        assert!(ramp_goes_on(&growing, 50.0, 8));
        let flat = [growing[0], growing[1], step(45.0, 62_000.0, 9.0, true)];
        assert!(!ramp_goes_on(&flat, 50.0, 8), "grew under 5 %");
        let slow = [fine[0], step(30.0, 60_000.0, 51.0, true)];
        assert!(!ramp_goes_on(&slow, 50.0, 8), "past the p99 bound");
        let lossy = [fine[0], step(30.0, 60_000.0, 8.0, false)];
        assert!(!ramp_goes_on(&lossy, 50.0, 8), "lost a delivery");
        assert!(!ramp_goes_on(&growing, 50.0, 2), "step budget spent");
        // Growth is measured against the best so far, not the last step.
        let dipped = [fine[0], step(30.0, 30_000.0, 8.0, true), step(45.0, 41_000.0, 9.0, true)];
        assert!(!ramp_goes_on(&dipped, 50.0, 8));
    }

    #[test]
    fn reads_the_gateway_totals_from_a_scrape() {
        let text = "chat_publish_batch_size_sum{gateway_id=\"g\"} 100\n\
                    chat_publish_batch_size_count{gateway_id=\"g\"} 40\n\
                    chat_aws_requests_total{gateway_id=\"g\",operation=\"ReceiveMessage\",outcome=\"ok\",service=\"SQS\"} 119\n\
                    chat_aws_requests_total{gateway_id=\"g\",operation=\"ReceiveMessage\",outcome=\"timeout\",service=\"SQS\"} 1\n\
                    chat_aws_requests_total{gateway_id=\"g\",operation=\"DeleteMessageBatch\",outcome=\"ok\",service=\"SQS\"} 100\n\
                    chat_sqs_empty_receives_total{gateway_id=\"g\"} 20\n\
                    chat_bus_events_received_total{gateway_id=\"g\"} 400\n\
                    chat_deliveries_total{gateway_id=\"g\"} 1100\n";
        let calls = AwsCalls::from_scrape(&Scrape::parse(text).expect("parsed"));
        let expected = AwsCalls {
            sns_publishes: 40,
            sns_events: 100,
            receives: 120,
            empty_receives: 20,
            messages: 400,
            delete_batches: 100,
            send_batches: 0,
            queue_urls: 0,
            deliveries: 1100,
            sns_requests: 0,
            dynamodb_requests: 0,
        };
        assert_eq!(calls, expected);
        assert!((calls.per_message() - 0.55).abs() < 1e-9);
        assert!((calls.per_delivery() - 0.2).abs() < 1e-9);
        assert!((calls.events_per_publish() - 2.5).abs() < 1e-9);
    }
}
