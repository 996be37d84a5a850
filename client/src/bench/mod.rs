//! The load generator behind `chat bench` and `make bench`.
//!
//! One step opens `users` streams, each on its own connection, spread
//! round-robin over the gateways, in conversations of `conversation_size`
//! consecutive users (so a conversation spans gateways). Every user joins
//! its conversation, then sends `rate` messages per second for `duration`;
//! each message carries its sender, its number and the instant it was
//! written, on this process's one monotonic clock. Every member's stream
//! (the sender's included, as for a user's other devices) must receive it;
//! latency is measured at every recipient other than the sender, into an
//! HDR histogram. The step then waits for what is still in flight, up to
//! `drain`, and checks completeness per (recipient, sender): lost,
//! duplicated and reordered messages.
//!
//! Around the send window it samples each gateway's CPU time and resident
//! memory from `/proc` (and its own), so a result says what the deliveries
//! cost, not only how fast they were.

pub mod baseline;
pub mod fleet;
pub mod plot;
pub mod procfs;

use std::collections::{BTreeSet, HashMap};
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chat_proto::pb::chat_service_client::ChatServiceClient;
use chat_proto::pb::client_frame::Frame;
use chat_proto::pb::server_event::Event;
use chat_proto::pb::{
    AckFrame, ClientFrame, ConversationKind, CreateConversationRequest, JoinFrame, ReadFrame, SendFrame, ServerEvent,
};
use futures::StreamExt;
use hdrhistogram::Histogram;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// Connections opened at once while a step sets up.
const CONNECT_CONCURRENCY: usize = 64;
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// One step of a sweep.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What is under test (`memory`, `baseline`, `aws-2gw`, ...), the CSV's
    /// series name.
    pub label: String,
    pub gateways: Vec<String>,
    /// The gateways' process ids, to sample; empty to skip sampling.
    pub pids: Vec<u32>,
    pub users: usize,
    /// Users whose streams share one HTTP/2 connection (1: every user has
    /// its own, as behind a layer-4 load balancer).
    pub streams_per_connection: usize,
    pub conversation_size: usize,
    /// Sends per second per user.
    pub rate: f64,
    pub duration: Duration,
    pub drain: Duration,
    pub body_bytes: usize,
    /// How to mint each user's token; `None` sends no token (the baseline
    /// does not check).
    pub auth: Option<Auth>,
    /// A private CA (PEM) to trust for `https://` gateways instead of the
    /// system's roots.
    pub ca_cert: Option<Vec<u8>>,
    /// Makes user and conversation names unique to this step.
    pub run_id: String,
    /// Each user acks and reads every message it receives (a DELIVERED and
    /// a READ frame), as a reading client does.
    pub receipts: bool,
    /// Sends carry a `client_message_id` (idempotent), as a retrying client's do.
    pub idempotent: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("invalid plan: {0}")]
    Plan(String),
    #[error("user {user} on {gateway}: {what}")]
    Setup { user: usize, gateway: String, what: String },
    #[error(transparent)]
    Proc(#[from] procfs::ProcError),
}

impl Plan {
    /// A step of `users` on `gateways` with the CLI's defaults: conversations
    /// of 5, 1 send per second per user for 10 s, 15 s to drain, 64-byte
    /// bodies, each stream on its own connection, no token, no sampling.
    pub fn new(label: &str, gateways: Vec<String>, users: usize) -> Self {
        Self {
            label: label.to_owned(),
            gateways,
            pids: Vec::new(),
            users,
            streams_per_connection: 1,
            conversation_size: 5,
            rate: 1.0,
            duration: Duration::from_secs(10),
            drain: Duration::from_secs(15),
            body_bytes: 64,
            auth: None,
            ca_cert: None,
            run_id: format!("{label}-{}", ulid::Ulid::new().to_string().to_lowercase()),
            receipts: false,
            idempotent: false,
        }
    }

    pub fn validate(&self) -> Result<(), BenchError> {
        let bad = |what: String| Err(BenchError::Plan(what));
        if self.gateways.is_empty() {
            return bad("at least one gateway is needed".into());
        }
        if !self.pids.is_empty() && self.pids.len() != self.gateways.len() {
            return bad(format!(
                "{} pids for {} gateways: give one per gateway or none",
                self.pids.len(),
                self.gateways.len()
            ));
        }
        if self.streams_per_connection == 0 {
            return bad("streams per connection must be at least 1".into());
        }
        if self.conversation_size < 2 {
            return bad("conversations need at least 2 members".into());
        }
        if self.users == 0 || !self.users.is_multiple_of(self.conversation_size) {
            return bad(format!(
                "{} users do not split into conversations of {}: use a multiple",
                self.users, self.conversation_size
            ));
        }
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return bad(format!("the rate must be a positive number of sends per second, not {}", self.rate));
        }
        if self.duration.is_zero() {
            return bad("the duration must be positive".into());
        }
        if self.body_bytes < 32 {
            return bad(format!("bodies need at least 32 bytes for the probe header, not {}", self.body_bytes));
        }
        Ok(())
    }
}

/// What a gateway's tokens are signed with.
#[derive(Debug, Clone)]
pub struct Auth {
    pub secret: Vec<u8>,
    pub issuer: String,
    pub audience: String,
}

/// A step's outcome: one CSV row.
#[derive(Debug, Clone, PartialEq)]
pub struct StepResult {
    pub label: String,
    pub gateways: usize,
    pub users: usize,
    pub streams_per_connection: usize,
    pub conversation_size: usize,
    pub rate_per_user: f64,
    pub duration_s: f64,
    /// Sends the gateways accepted.
    pub accepted: u64,
    pub send_errors: u64,
    /// Streams that ended or failed during the step.
    pub stream_errors: u64,
    /// Deliveries owed to recipients other than the sender.
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub deliveries_per_s: f64,
    /// CPU seconds all gateways used from the first send to the end of the
    /// drain; 0 when not sampled.
    pub gateway_cpu_s: f64,
    pub deliveries_per_gateway_cpu_s: f64,
    pub client_cpu_s: f64,
    /// Gateways' resident memory added per connected idle stream, KB.
    pub rss_kb_per_stream: f64,
    /// Gateways' resident memory at the end of the step, MB.
    pub gateway_rss_mb: f64,
}

pub const CSV_HEADER: &str = "label,gateways,users,streams_per_connection,conversation_size,rate_per_user,duration_s,accepted,send_errors,stream_errors,expected,delivered,lost,duplicated,reordered,p50_ms,p95_ms,p99_ms,max_ms,deliveries_per_s,gateway_cpu_s,deliveries_per_gateway_cpu_s,client_cpu_s,rss_kb_per_stream,gateway_rss_mb";

impl StepResult {
    pub fn csv_row(&self) -> String {
        format!(
            "{},{},{},{},{},{},{:.1},{},{},{},{},{},{},{},{},{:.3},{:.3},{:.3},{:.3},{:.1},{:.3},{:.0},{:.3},{:.2},{:.1}",
            self.label,
            self.gateways,
            self.users,
            self.streams_per_connection,
            self.conversation_size,
            self.rate_per_user,
            self.duration_s,
            self.accepted,
            self.send_errors,
            self.stream_errors,
            self.expected,
            self.delivered,
            self.lost,
            self.duplicated,
            self.reordered,
            self.p50_ms,
            self.p95_ms,
            self.p99_ms,
            self.max_ms,
            self.deliveries_per_s,
            self.gateway_cpu_s,
            self.deliveries_per_gateway_cpu_s,
            self.client_cpu_s,
            self.rss_kb_per_stream,
            self.gateway_rss_mb,
        )
    }

    /// Whether every owed delivery arrived exactly once and in order.
    pub fn complete(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.reordered == 0 && self.stream_errors == 0
    }

    pub fn summary(&self) -> String {
        format!(
            "{:<12} users={:<5} accepted={} delivered={}/{} lost={} dup={} reordered={} errors={}+{} p50={:.2}ms p95={:.2}ms p99={:.2}ms max={:.2}ms {:.0} deliveries/s gateway_cpu={:.2}s ({:.0}/cpu-s) rss/stream={:.1}KB",
            self.label,
            self.users,
            self.accepted,
            self.delivered,
            self.expected,
            self.lost,
            self.duplicated,
            self.reordered,
            self.send_errors,
            self.stream_errors,
            self.p50_ms,
            self.p95_ms,
            self.p99_ms,
            self.max_ms,
            self.deliveries_per_s,
            self.gateway_cpu_s,
            self.deliveries_per_gateway_cpu_s,
            self.rss_kb_per_stream
        )
    }
}

/// Appends rows to a CSV file, writing the header when the file is new.
pub fn append_csv(path: &Path, rows: &[StepResult]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let new = !path.exists() || std::fs::metadata(path)?.len() == 0;
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    if new {
        writeln!(file, "{CSV_HEADER}")?;
    }
    for row in rows {
        writeln!(file, "{}", row.csv_row())?;
    }
    Ok(())
}

/// The instant every probe's timestamp counts from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// `<sender>:<n>:<nanos since epoch>:` padded with '.' to `len` bytes.
pub fn probe_body(sender: usize, n: u64, at: Duration, len: usize) -> String {
    let mut body = format!("{sender}:{n}:{}:", at.as_nanos());
    let pad = len.saturating_sub(body.len());
    body.extend(std::iter::repeat_n('.', pad));
    body
}

/// The (sender, n, sent at) a probe body carries.
pub fn parse_probe(body: &str) -> Option<(usize, u64, Duration)> {
    let mut parts = body.splitn(4, ':');
    let sender = parts.next()?.parse().ok()?;
    let n = parts.next()?.parse().ok()?;
    let nanos: u64 = parts.next()?.parse().ok()?;
    parts.next()?;
    Some((sender, n, Duration::from_nanos(nanos)))
}

/// What one recipient has seen of one sender: messages must arrive once
/// each, in the order sent.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SenderTrack {
    /// Highest message number seen (numbers start at 1).
    last: u64,
    /// Numbers below `last` not seen yet.
    missing: BTreeSet<u64>,
    pub unique: u64,
    pub duplicated: u64,
    pub reordered: u64,
}

impl SenderTrack {
    pub fn see(&mut self, n: u64) {
        if n > self.last {
            self.missing.extend(self.last + 1..n);
            self.last = n;
            self.unique += 1;
        } else if self.missing.remove(&n) {
            self.unique += 1;
            self.reordered += 1;
        } else {
            self.duplicated += 1;
        }
    }
}

struct Connected {
    index: usize,
    frames: mpsc::Sender<ClientFrame>,
    events: tonic::Streaming<ServerEvent>,
}

#[derive(Default)]
struct UserOutcome {
    histogram: Option<Histogram<u64>>,
    /// Per sender in the conversation.
    tracks: HashMap<usize, SenderTrack>,
    sent: u64,
    accepted: u64,
    send_errors: u64,
    stream_error: bool,
}

struct Shared {
    /// Deliveries to recipients other than the sender, new ones only.
    delivered: AtomicU64,
    accepted: AtomicU64,
    answered: AtomicU64,
    sent: AtomicU64,
}

fn user_name(run_id: &str, index: usize) -> String {
    format!("bench-{run_id}-u{index}")
}

fn conversation_of(run_id: &str, index: usize, size: usize) -> String {
    format!("bench-{run_id}-c{}", index / size)
}

/// Connection `index` of the step, to gateway `index % gateways`.
async fn open_connection(plan: &Plan, index: usize) -> Result<(String, Channel), BenchError> {
    let gateway = plan.gateways[index % plan.gateways.len()].clone();
    let setup =
        |what: String| BenchError::Setup { user: index * plan.streams_per_connection, gateway: gateway.clone(), what };
    let channel = crate::tls::endpoint(&gateway, plan.ca_cert.as_deref())
        .map_err(|e| setup(e.to_string()))?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| setup(format!("connecting: {}", crate::tls::describe(&e))))?;
    Ok((gateway, channel))
}

async fn connect_user(plan: &Plan, index: usize, gateway: &str, channel: Channel) -> Result<Connected, BenchError> {
    let setup = |what: String| BenchError::Setup { user: index, gateway: gateway.to_owned(), what };
    let (frames, outbound) = mpsc::channel::<ClientFrame>(64);
    let request = as_user(plan, index, ReceiverStream::new(outbound)).map_err(setup)?;
    let mut events = ChatServiceClient::new(channel)
        .max_decoding_message_size(1 << 20)
        .connect(request)
        .await
        .map_err(|s| setup(format!("Connect: {:?}: {}", s.code(), s.message())))?
        .into_inner();
    let conversation_id = conversation_of(&plan.run_id, index, plan.conversation_size);
    let join = ClientFrame {
        request_id: "join".into(),
        frame: Some(Frame::Join(JoinFrame { conversation_id, resume_after_seq: None })),
    };
    frames.send(join).await.map_err(|_| setup("stream closed before joining".into()))?;
    tokio::time::timeout(JOIN_TIMEOUT, async {
        while let Some(event) = events.next().await {
            match event.map(|e| e.event) {
                Ok(Some(Event::PresenceSnapshot(_))) => return Ok(()),
                Ok(Some(Event::Error(e))) => return Err(format!("join refused: {} {}", e.code, e.message)),
                Ok(_) => continue,
                Err(s) => return Err(format!("stream failed: {:?}: {}", s.code(), s.message())),
            }
        }
        Err("stream ended before the join was answered".to_owned())
    })
    .await
    .map_err(|_| setup(format!("no answer to the join within {JOIN_TIMEOUT:?}")))?
    .map_err(setup)?;
    Ok(Connected { index, frames, events })
}

/// A request as user `index` (with their token when the plan authenticates).
fn as_user<T>(plan: &Plan, index: usize, message: T) -> Result<tonic::Request<T>, String> {
    let mut request = tonic::Request::new(message);
    if let Some(auth) = &plan.auth {
        let user = user_name(&plan.run_id, index);
        let token =
            chat_proto::token::mint(&auth.secret, &user, &auth.issuer, &auth.audience, Duration::from_secs(3600))
                .map_err(|e| format!("minting a token: {e}"))?;
        let value = format!("Bearer {token}").parse().map_err(|_| "token is not valid metadata".to_owned())?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
}

/// Creates the step's conversations, public so that their users join them,
/// each by its first user on that user's connection.
async fn create_conversations(plan: &Plan, connections: &[(String, Channel)]) -> Result<(), BenchError> {
    let firsts: Vec<usize> = (0..plan.users).step_by(plan.conversation_size).collect();
    futures::stream::iter(firsts)
        .map(|index| async move {
            let (gateway, channel) = &connections[index / plan.streams_per_connection];
            let setup = |what: String| BenchError::Setup { user: index, gateway: gateway.clone(), what };
            let create = CreateConversationRequest {
                kind: ConversationKind::Public as i32,
                conversation_id: conversation_of(&plan.run_id, index, plan.conversation_size),
                ..CreateConversationRequest::default()
            };
            ChatServiceClient::new(channel.clone())
                .create_conversation(as_user(plan, index, create).map_err(setup)?)
                .await
                .map_err(|s| setup(format!("CreateConversation: {:?}: {}", s.code(), s.message())))?;
            Ok(())
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect::<Vec<Result<(), BenchError>>>()
        .await
        .into_iter()
        .collect()
}

/// Acks and reads one received message, as a reading client does; false
/// when the stream is gone.
async fn acknowledge(frames: &mpsc::Sender<ClientFrame>, conversation_id: &str, seq: u64) -> bool {
    let ack = Frame::Ack(AckFrame { conversation_id: conversation_id.to_owned(), seq });
    let read = Frame::Read(ReadFrame { conversation_id: conversation_id.to_owned(), seq });
    for frame in [ack, read] {
        if frames.send(ClientFrame { request_id: String::new(), frame: Some(frame) }).await.is_err() {
            return false;
        }
    }
    true
}

/// Sends on schedule until `end`, while reading every event until `stop`.
async fn drive(
    plan: Arc<Plan>,
    mut user: Connected,
    start: tokio::time::Instant,
    end: tokio::time::Instant,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> UserOutcome {
    let mut outcome =
        UserOutcome { histogram: Histogram::new_with_bounds(1, 600_000_000, 3).ok(), ..UserOutcome::default() };
    let conversation_id = conversation_of(&plan.run_id, user.index, plan.conversation_size);
    let period = Duration::from_secs_f64(1.0 / plan.rate);
    // Spread the users' first sends over one period, deterministically.
    let phase = period.mul_f64((user.index % plan.users.max(1)) as f64 / plan.users.max(1) as f64);
    let mut ticks = tokio::time::interval_at(start + phase, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sending = true;
    loop {
        tokio::select! {
            _ = ticks.tick(), if sending => {
                if tokio::time::Instant::now() >= end {
                    sending = false;
                    continue;
                }
                outcome.sent += 1;
                let body = probe_body(user.index, outcome.sent, epoch().elapsed(), plan.body_bytes);
                let client_message_id = if plan.idempotent { format!("b{}", outcome.sent) } else { String::new() };
                let frame = ClientFrame {
                    request_id: outcome.sent.to_string(),
                    frame: Some(Frame::Send(SendFrame { conversation_id: conversation_id.clone(), client_message_id, body })),
                };
                shared.sent.fetch_add(1, Ordering::Relaxed);
                if user.frames.send(frame).await.is_err() {
                    outcome.stream_error = true;
                    break;
                }
            }
            event = user.events.next() => {
                let received_at = epoch().elapsed();
                match event {
                    Some(Ok(ServerEvent { event: Some(Event::Message(m)) })) => {
                        let Some((sender, n, sent_at)) = parse_probe(&m.body) else { continue };
                        if sender == user.index {
                            continue;
                        }
                        if plan.receipts && !acknowledge(&user.frames, &m.conversation_id, m.seq).await {
                            outcome.stream_error = true;
                            break;
                        }
                        let track = outcome.tracks.entry(sender).or_default();
                        let before = track.unique;
                        track.see(n);
                        if track.unique > before {
                            shared.delivered.fetch_add(1, Ordering::Relaxed);
                        }
                        if let Some(h) = outcome.histogram.as_mut() {
                            let micros = received_at.saturating_sub(sent_at).as_micros();
                            h.saturating_record(u64::try_from(micros).unwrap_or(u64::MAX).max(1));
                        }
                    }
                    Some(Ok(ServerEvent { event: Some(Event::SendAccepted(_)) })) => {
                        outcome.accepted += 1;
                        shared.accepted.fetch_add(1, Ordering::Relaxed);
                        shared.answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(Ok(ServerEvent { event: Some(Event::Error(e)) })) => {
                        tracing::debug!(user = user.index, code = e.code, message = %e.message, "send refused");
                        outcome.send_errors += 1;
                        shared.answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(status)) => {
                        tracing::warn!(user = user.index, code = ?status.code(), message = status.message(), "stream failed");
                        outcome.stream_error = true;
                        break;
                    }
                    None => {
                        outcome.stream_error = true;
                        break;
                    }
                }
            }
            _ = stop.changed() => break,
        }
    }
    outcome
}

fn sample_all(pids: &[u32]) -> Result<procfs::Sample, BenchError> {
    let mut total = procfs::Sample::default();
    for pid in pids {
        let s = procfs::sample(*pid)?;
        total.cpu_seconds += s.cpu_seconds;
        total.rss_kb += s.rss_kb;
    }
    Ok(total)
}

/// Opens every user's connection and stream, as the plan spreads them.
async fn connect_all(plan: &Arc<Plan>) -> Result<Vec<Connected>, BenchError> {
    let connections: Vec<(String, Channel)> =
        futures::stream::iter(0..plan.users.div_ceil(plan.streams_per_connection))
            .map(|index| {
                let plan = Arc::clone(plan);
                async move { open_connection(&plan, index).await }
            })
            .buffered(CONNECT_CONCURRENCY)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
    create_conversations(plan, &connections).await?;
    let mut connected: Vec<Connected> = futures::stream::iter(0..plan.users)
        .map(|index| {
            let plan = Arc::clone(plan);
            let (gateway, channel) = connections[index / plan.streams_per_connection].clone();
            async move { connect_user(&plan, index, &gateway, channel).await }
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    connected.sort_by_key(|c| c.index);
    Ok(connected)
}

/// Waits, within the plan's drain budget, for every send's answer and then
/// every delivery; returns when the last delivery arrived.
async fn drain(plan: &Plan, shared: &Shared) -> tokio::time::Instant {
    let drain_deadline = tokio::time::Instant::now() + plan.drain;
    let per_conversation_recipients = (plan.conversation_size - 1) as u64;
    let mut last_delivery = tokio::time::Instant::now();
    let mut seen = 0;
    loop {
        let sent = shared.sent.load(Ordering::Relaxed);
        let answered = shared.answered.load(Ordering::Relaxed);
        let expected = shared.accepted.load(Ordering::Relaxed) * per_conversation_recipients;
        let delivered = shared.delivered.load(Ordering::Relaxed);
        if delivered != seen {
            seen = delivered;
            last_delivery = tokio::time::Instant::now();
        }
        if answered >= sent && delivered >= expected {
            return last_delivery;
        }
        if tokio::time::Instant::now() >= drain_deadline {
            tracing::warn!(sent, answered, expected, delivered, "drain deadline reached");
            return last_delivery;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What every user's task saw, added up.
struct Tally {
    histogram: Histogram<u64>,
    accepted: u64,
    send_errors: u64,
    stream_errors: u64,
    delivered: u64,
    lost: u64,
    duplicated: u64,
    reordered: u64,
}

/// Adds up the users' outcomes: each user is owed every other member's
/// accepted sends, exactly once and in order.
fn tally(plan: &Plan, outcomes: &[UserOutcome], stream_errors: u64) -> Result<Tally, BenchError> {
    let histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
        .map_err(|e| BenchError::Plan(format!("histogram: {e}")))?;
    let mut t = Tally {
        histogram,
        accepted: 0,
        send_errors: 0,
        stream_errors,
        delivered: 0,
        lost: 0,
        duplicated: 0,
        reordered: 0,
    };
    let accepted_by: Vec<u64> = outcomes.iter().map(|o| o.accepted).collect();
    for (index, outcome) in outcomes.iter().enumerate() {
        t.accepted += outcome.accepted;
        t.send_errors += outcome.send_errors;
        t.stream_errors += u64::from(outcome.stream_error);
        if let Some(h) = &outcome.histogram {
            let _ = t.histogram.add(h);
        }
        let first = index / plan.conversation_size * plan.conversation_size;
        for sender in (first..first + plan.conversation_size).filter(|s| *s != index) {
            let owed = accepted_by.get(sender).copied().unwrap_or(0);
            let track = outcome.tracks.get(&sender).cloned().unwrap_or_default();
            t.delivered += track.unique.min(owed);
            t.lost += owed.saturating_sub(track.unique);
            t.duplicated += track.duplicated;
            t.reordered += track.reordered;
        }
    }
    Ok(t)
}

/// Runs one step and reports it; setup failures are errors, delivery
/// failures are counted in the result.
pub async fn run(plan: Plan) -> Result<StepResult, BenchError> {
    run_paused(plan, None).await
}

/// Hand-overs around a step's sending, for a caller that reads counters
/// before and after it (what setup and teardown cost is then not charged
/// to the messages): `connected` fires once every user has joined, and
/// sending starts when `go` fires or is dropped; `drained` fires once every
/// delivery is in (or the drain budget ran out), and the streams close when
/// `close` fires or is dropped.
#[derive(Debug)]
pub struct Pause {
    pub connected: tokio::sync::oneshot::Sender<()>,
    pub go: tokio::sync::oneshot::Receiver<()>,
    pub drained: tokio::sync::oneshot::Sender<()>,
    pub close: tokio::sync::oneshot::Receiver<()>,
}

/// [`run`], pausing between setup and sending when `pause` is given.
pub async fn run_paused(plan: Plan, pause: Option<Pause>) -> Result<StepResult, BenchError> {
    plan.validate()?;
    let plan = Arc::new(plan);
    let _ = epoch();
    let before_connect = sample_all(&plan.pids)?;
    let connected = connect_all(&plan).await?;
    let ending = match pause {
        Some(Pause { connected, go, drained, close }) => {
            let _ = connected.send(());
            let _ = go.await;
            Some((drained, close))
        }
        None => None,
    };
    let idle = sample_all(&plan.pids)?;
    let client_before = procfs::sample(std::process::id())?;

    let shared = Arc::new(Shared {
        delivered: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        answered: AtomicU64::new(0),
        sent: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    // Start a little ahead so every task is waiting on its first tick.
    let start = tokio::time::Instant::now() + Duration::from_millis(200);
    let end = start + plan.duration;
    let tasks: Vec<_> = connected
        .into_iter()
        .map(|user| tokio::spawn(drive(Arc::clone(&plan), user, start, end, Arc::clone(&shared), stop_rx.clone())))
        .collect();

    // Sending ends at `end`; then every send's answer, then every delivery,
    // each within the drain budget.
    tokio::time::sleep_until(end).await;
    let last_delivery = drain(&plan, &shared).await;
    let busy = sample_all(&plan.pids)?;
    let client_after = procfs::sample(std::process::id())?;
    if let Some((drained, close)) = ending {
        let _ = drained.send(());
        let _ = close.await;
    }
    let _ = stop_tx.send(true);

    let mut outcomes = Vec::with_capacity(tasks.len());
    let mut panicked = 0;
    for task in tasks {
        match task.await {
            Ok(outcome) => outcomes.push(outcome),
            Err(_) => panicked += 1,
        }
    }
    let t = tally(&plan, &outcomes, panicked)?;
    let expected = t.accepted * (plan.conversation_size - 1) as u64;
    let window = last_delivery.duration_since(start).as_secs_f64().max(plan.duration.as_secs_f64());
    let gateway_cpu_s = busy.cpu_seconds - idle.cpu_seconds;
    let ms = |q: f64| t.histogram.value_at_quantile(q) as f64 / 1000.0;
    let (users, gateways) = (plan.users, plan.gateways.len());
    Ok(StepResult {
        label: plan.label.clone(),
        gateways,
        users,
        streams_per_connection: plan.streams_per_connection,
        conversation_size: plan.conversation_size,
        rate_per_user: plan.rate,
        duration_s: plan.duration.as_secs_f64(),
        accepted: t.accepted,
        send_errors: t.send_errors,
        stream_errors: t.stream_errors,
        expected,
        delivered: t.delivered,
        lost: t.lost,
        duplicated: t.duplicated,
        reordered: t.reordered,
        p50_ms: ms(0.50),
        p95_ms: ms(0.95),
        p99_ms: ms(0.99),
        max_ms: t.histogram.max() as f64 / 1000.0,
        deliveries_per_s: t.delivered as f64 / window,
        gateway_cpu_s,
        deliveries_per_gateway_cpu_s: if gateway_cpu_s > 0.0 { t.delivered as f64 / gateway_cpu_s } else { 0.0 },
        client_cpu_s: client_after.cpu_seconds - client_before.cpu_seconds,
        rss_kb_per_stream: idle.rss_kb.saturating_sub(before_connect.rss_kb) as f64 / users as f64,
        gateway_rss_mb: busy.rss_kb as f64 / 1024.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_round_trip_at_the_asked_size() {
        let body = probe_body(42, 7, Duration::from_nanos(123_456_789), 64);
        assert_eq!(body.len(), 64);
        assert_eq!(parse_probe(&body), Some((42, 7, Duration::from_nanos(123_456_789))));
        assert_eq!(parse_probe("hello"), None);
        assert_eq!(parse_probe("1:2:x:"), None);
        // A header longer than the asked size is kept whole.
        assert!(parse_probe(&probe_body(1, 1, Duration::from_secs(1), 4)).is_some());
    }

    #[test]
    fn tracks_loss_duplicates_and_reordering_exactly() {
        let mut track = SenderTrack::default();
        for n in [1, 2, 4, 3, 3, 6] {
            track.see(n);
        }
        assert_eq!((track.unique, track.duplicated, track.reordered), (5, 1, 1));
        assert_eq!(track.missing.iter().copied().collect::<Vec<_>>(), vec![5]);
    }

    fn plan() -> Plan {
        Plan { duration: Duration::from_secs(1), ..Plan::new("t", vec!["http://127.0.0.1:1".into()], 10) }
    }

    #[test]
    fn bad_plans_say_what_is_wrong() {
        assert!(plan().validate().is_ok());
        let cases: Vec<(Plan, &str)> = vec![
            (Plan { gateways: vec![], ..plan() }, "at least one gateway"),
            (Plan { pids: vec![1, 2], ..plan() }, "one per gateway"),
            (Plan { users: 12, ..plan() }, "use a multiple"),
            (Plan { conversation_size: 1, ..plan() }, "at least 2 members"),
            (Plan { streams_per_connection: 0, ..plan() }, "streams per connection"),
            (Plan { rate: 0.0, ..plan() }, "positive number"),
            (Plan { rate: f64::NAN, ..plan() }, "positive number"),
            (Plan { duration: Duration::ZERO, ..plan() }, "duration"),
            (Plan { body_bytes: 8, ..plan() }, "32 bytes"),
        ];
        for (bad, expected) in cases {
            let error = bad.validate().expect_err(expected).to_string();
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn csv_rows_match_the_header() {
        let row = StepResult {
            label: "memory".into(),
            gateways: 1,
            users: 50,
            streams_per_connection: 1,
            conversation_size: 5,
            rate_per_user: 1.0,
            duration_s: 10.0,
            accepted: 500,
            send_errors: 0,
            stream_errors: 0,
            expected: 2000,
            delivered: 2000,
            lost: 0,
            duplicated: 0,
            reordered: 0,
            p50_ms: 0.5,
            p95_ms: 0.9,
            p99_ms: 1.2,
            max_ms: 3.0,
            deliveries_per_s: 200.0,
            gateway_cpu_s: 0.1,
            deliveries_per_gateway_cpu_s: 20000.0,
            client_cpu_s: 0.2,
            rss_kb_per_stream: 9.5,
            gateway_rss_mb: 12.0,
        };
        assert_eq!(row.csv_row().split(',').count(), CSV_HEADER.split(',').count());
        assert!(row.complete());
        let dir = std::env::temp_dir().join(format!("bench-csv-{}", std::process::id()));
        let path = dir.join("r.csv");
        append_csv(&path, std::slice::from_ref(&row)).expect("write");
        append_csv(&path, &[row]).expect("append");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 3, "{text}");
        assert_eq!(text.lines().next(), Some(CSV_HEADER));
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A whole step against the baseline server on loopback: every delivery
    /// arrives once, in order, and the numbers add up.
    #[tokio::test]
    async fn a_step_against_the_baseline_is_complete() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(baseline::Baseline::default().server())
                .serve_with_incoming(chat_proto::transport::incoming(listener)),
        );
        let result = run(Plan {
            gateways: vec![format!("http://{addr}")],
            pids: vec![std::process::id()],
            users: 10,
            rate: 20.0,
            duration: Duration::from_millis(500),
            drain: Duration::from_secs(10),
            ..plan()
        })
        .await
        .expect("step runs");
        server.abort();
        assert!(result.complete(), "{}", result.summary());
        assert!(result.accepted >= 50, "{}", result.summary());
        assert_eq!(result.expected, result.accepted * 4);
        assert_eq!(result.delivered, result.expected);
        assert!(result.p50_ms > 0.0 && result.p50_ms <= result.p99_ms && result.p99_ms <= result.max_ms);
    }
}
