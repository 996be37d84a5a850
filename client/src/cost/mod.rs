//! The AWS cost model behind `chat cost`: what one million chat messages
//! cost on the deployed stack, line by line, and the list prices below.
//! Two ways in, both pure arithmetic that tests call directly:
//! - [`measured::estimate_measured`] prices the calls the bench counted per
//!   message, per process, service, operation and table (`--counts`); the
//!   constants below fill in only what the emulator cannot count (capacity
//!   units per call, payload chunks, Lambda's billed duration);
//! - [`estimate`] is the hand model, the calls the code makes per message
//!   read off the code (`aws/src/dynamo/*`, `gateway/src/bus/*`,
//!   `functions/src/*`), for what was not measured.
//!
//! What the hand model counts, per message sent to a conversation of `k`
//! members:
//! - **accept** (gateway): for an idempotent send, the lookup of its record
//!   (`GetItem`, strongly consistent: 1 RRU) and its claim with the seq
//!   (`PutItem`, 1 WRU); for any send, `UpdateItem` on the seq counter
//!   (1 WRU) and the message recorded under its seq (`PutItem`, 1 WRU per
//!   KB; no index: its id names its seq); then one SNS publish where a
//!   function may act on it (every message under broadcast; with member
//!   routing those with external recipients or a member to fall back to,
//!   `--fallback-share`; a `PublishBatch` of `b` events is one request).
//!   Racing copies of one send and settled gaps are rare: left out.
//! - **fan-out to gateways**: with broadcast routing SNS delivers every
//!   event to every gateway's queue (free), and each gateway pays its share
//!   of a `ReceiveMessage` and a `DeleteMessageBatch` (one each per receive
//!   batch). With member routing the sender's gateway delivers to its own
//!   streams without a queue and sends to each other gateway holding a
//!   member (`SendMessageBatch`), which receives and deletes: three shares
//!   per other gateway, `(G − 1)·(1 − (1 − 1/G)^(k − 1))` of them on average
//!   for members placed uniformly at random.
//! - **persist** (Lambda behind the persist queue) takes no message: the
//!   publisher recorded it, and a conversation's latest message is read
//!   from the messages when listed. It records the receipts nobody else
//!   did (an external recipient's, below).
//! - **fallback** (Lambda behind the delayed queue), for the messages it may
//!   act on: queue and invocation share, and one `Query` of the members
//!   (strongly consistent, 1 RRU per 4 KB of member items).
//! - **receipts** (READ envelopes per message, after whatever coalescing
//!   the clients and gateways achieve; an ack a read covers is not sent):
//!   each is recorded by its gateway as one conditional update of the
//!   member's item (the watermark and its kept moves: 1 WRU) and fanned out
//!   to the gateways like a message, not through the topic.
//! - **external recipients**: per recipient, the connector queue and
//!   invocation share, its idempotency claim (`PutItem`, 1 WRU) and one
//!   `BatchWriteItem` of 3 items (completion, reference, binding), and the
//!   DELIVERED receipt it publishes. The channels' own fees are not AWS
//!   costs and are left out.
//!
//! Fixed monthly costs are kept apart: Fargate tasks for the gateways, the
//! Network Load Balancer's hours, and the gateways' idle long polls. Free
//! tiers are ignored (the model is for a stack past them). Typing and
//! presence events cost like receipts without the write; they depend on
//! user behaviour, not on messages, and are left out.

use std::fmt::Write as _;

pub mod measured;

/// Prices in USD, us-east-1, from the public pricing pages (same figures in
/// AWS's pricing API), as of [`PRICES_AS_OF`]. Change them here.
pub const PRICES_AS_OF: &str = "2025 (not re-checked since)";
pub const PRICE_SOURCES: &[&str] = &[
    "SNS: aws.amazon.com/sns/pricing — $0.50 per million API requests (each 64 KB chunk is a request; a PublishBatch of up to 10 is one); deliveries to SQS free",
    "SQS: aws.amazon.com/sqs/pricing — standard queues, $0.40 per million requests (each 64 KB chunk is a request)",
    "Lambda: aws.amazon.com/lambda/pricing — $0.20 per million requests; $0.0000166667 per GB-s (x86_64), $0.0000133334 per GB-s (arm64)",
    "DynamoDB: aws.amazon.com/dynamodb/pricing/on-demand — $0.625 per million write request units, $0.125 per million read request units (on-demand, Standard table class, since the November 2024 reduction)",
    "Fargate: aws.amazon.com/fargate/pricing — Linux x86_64 $0.04048 per vCPU-hour and $0.004445 per GB-hour; arm64 $0.03238 and $0.00356",
    "Network Load Balancer: aws.amazon.com/elasticloadbalancing/pricing — $0.0225 per hour plus $0.006 per NLCU-hour",
];

const SNS_PER_REQUEST: f64 = 0.50e-6;
pub(crate) const SQS_PER_REQUEST: f64 = 0.40e-6;
pub(crate) const LAMBDA_PER_REQUEST: f64 = 0.20e-6;
const DYNAMO_PER_WRU: f64 = 0.625e-6;
const DYNAMO_PER_RRU: f64 = 0.125e-6;
const NLB_PER_HOUR: f64 = 0.0225;
const NLCU_PER_HOUR: f64 = 0.006;
const HOURS_PER_MONTH: f64 = 730.0;
/// SNS and SQS bill a request per 64 KB chunk of payload.
const CHUNK_KB: f64 = 64.0;
/// Gateway pollers each keep one 20 s long poll open when idle.
const IDLE_POLL_SECS: f64 = 20.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    X86_64,
    Arm64,
}

impl Arch {
    pub(crate) fn lambda_per_gb_second(self) -> f64 {
        match self {
            Arch::X86_64 => 0.000_016_666_7,
            Arch::Arm64 => 0.000_013_333_4,
        }
    }

    /// (per vCPU-hour, per GB-hour)
    fn fargate(self) -> (f64, f64) {
        match self {
            Arch::X86_64 => (0.04048, 0.004445),
            Arch::Arm64 => (0.03238, 0.00356),
        }
    }
}

/// Which gateways an event reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Routing {
    /// Every gateway's queue gets every event (the unfiltered subscription).
    Broadcast,
    /// Only gateways with a member of the conversation get its events.
    Members,
}

/// Everything the cost depends on. Defaults are the template's settings and
/// a 1:1 chat where both sides are online.
#[derive(Debug, Clone, clap::Args)]
pub struct Workload {
    /// Gateways (Fargate tasks), G.
    #[arg(long, default_value_t = 4)]
    pub gateways: u32,
    /// Members per conversation, k (the sender included).
    #[arg(long, default_value_t = 2)]
    pub members: u32,
    /// How events reach gateways.
    #[arg(long, value_enum, default_value_t = Routing::Broadcast)]
    pub routing: Routing,
    /// Average message payload (envelope JSON), KB.
    #[arg(long, default_value_t = 1.0)]
    pub message_kb: f64,
    /// Events per SNS PublishBatch, on average (1 to 10).
    #[arg(long, default_value_t = 1.0)]
    pub publish_batch: f64,
    /// Events per gateway ReceiveMessage, on average (1 to 10).
    #[arg(long, default_value_t = 1.0)]
    pub receive_batch: f64,
    /// Records per Lambda invocation from the persist, fallback and connector
    /// queues, on average (1 to the event source mapping's BatchSize).
    #[arg(long, default_value_t = 1.0)]
    pub lambda_batch: f64,
    /// Lambda memory, MB (the template sets 256).
    #[arg(long, default_value_t = 256)]
    pub lambda_memory_mb: u32,
    /// Billed Lambda duration per invocation, ms.
    #[arg(long, default_value_t = 20.0)]
    pub lambda_ms: f64,
    /// Receipt envelopes per message (a READ from each other member, which
    /// covers their ack, divided by how many messages one cumulative receipt
    /// covers). Default: k − 1, every message read one by one.
    #[arg(long)]
    pub receipts_per_message: Option<f64>,
    /// External recipients per message (WhatsApp/Instagram/Telegram members).
    #[arg(long, default_value_t = 0.0)]
    pub external_recipients: f64,
    /// Whether sends carry a client_message_id (idempotent: one more read
    /// and write per message).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub idempotent_sends: bool,
    /// Share of messages whose conversation has a member other than the
    /// sender with a linked channel (offline fallback may need them). With
    /// member routing only those, and those with external recipients, go
    /// to the topic and the functions; with broadcast every message does.
    #[arg(long, default_value_t = 0.0)]
    pub fallback_share: f64,
    /// Bytes per member item read by the fallback's members query.
    #[arg(long, default_value_t = 200.0)]
    pub member_item_bytes: f64,
    /// Architecture of the functions and gateway tasks.
    #[arg(long, value_enum, default_value_t = Arch::X86_64)]
    pub arch: Arch,
    /// vCPUs per gateway task (the template's default 0.5).
    #[arg(long, default_value_t = 0.5)]
    pub gateway_vcpu: f64,
    /// GB per gateway task (the template's default 1).
    #[arg(long, default_value_t = 1.0)]
    pub gateway_gb: f64,
    /// Long pollers per gateway.
    #[arg(long, default_value_t = 4)]
    pub pollers: u32,
    /// Messages per month, to spread fixed costs over.
    #[arg(long, default_value_t = 100_000_000.0)]
    pub messages_per_month: f64,
}

impl Default for Workload {
    fn default() -> Self {
        <Self as clap::FromArgMatches>::from_arg_matches(
            &<Self as clap::Args>::augment_args(clap::Command::new("defaults")).get_matches_from(["defaults"]),
        )
        .unwrap_or_else(|e| unreachable!("the defaults parse: {e}"))
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidWorkload(pub(crate) String);

impl Workload {
    pub fn validate(&self) -> Result<(), InvalidWorkload> {
        let bad = |what: String| Err(InvalidWorkload(what));
        if self.gateways == 0 {
            return bad("--gateways must be at least 1".into());
        }
        if self.members < 2 {
            return bad("--members must be at least 2 (the sender and a recipient)".into());
        }
        for (name, value) in [
            ("--publish-batch", self.publish_batch),
            ("--receive-batch", self.receive_batch),
            ("--lambda-batch", self.lambda_batch),
        ] {
            if !(1.0..=10.0).contains(&value) {
                return bad(format!(
                    "{name} must be between 1 and 10 (SNS and SQS batches hold at most 10), got {value}"
                ));
            }
        }
        let non_negative = [
            ("--message-kb", self.message_kb),
            ("--lambda-ms", self.lambda_ms),
            ("--external-recipients", self.external_recipients),
            ("--member-item-bytes", self.member_item_bytes),
            ("--gateway-vcpu", self.gateway_vcpu),
            ("--gateway-gb", self.gateway_gb),
            ("--receipts-per-message", self.receipts_per_message.unwrap_or(0.0)),
        ];
        for (name, value) in non_negative {
            if !value.is_finite() || value < 0.0 {
                return bad(format!("{name} must be a non-negative number, got {value}"));
            }
        }
        if !(0.0..=1.0).contains(&self.fallback_share) {
            return bad(format!("--fallback-share is a share, 0 to 1, got {}", self.fallback_share));
        }
        if self.message_kb > 256.0 {
            return bad(format!("--message-kb is at most 256 (SNS's message limit), got {}", self.message_kb));
        }
        if !(self.messages_per_month.is_finite() && self.messages_per_month >= 1.0) {
            return bad(format!("--messages-per-month must be at least 1, got {}", self.messages_per_month));
        }
        if !(128..=10_240).contains(&self.lambda_memory_mb) {
            return bad(format!("--lambda-memory-mb is 128 to 10240 in Lambda, got {}", self.lambda_memory_mb));
        }
        Ok(())
    }

    /// Average number of gateways an event of this conversation reaches.
    pub fn gateways_reached(&self) -> f64 {
        let g = f64::from(self.gateways);
        match self.routing {
            Routing::Broadcast => g,
            Routing::Members => g * (1.0 - (1.0 - 1.0 / g).powf(f64::from(self.members))),
        }
    }

    /// SQS requests per event for the fan-out to gateways (one request per
    /// batch of `receive_batch`): broadcast, a receive and a delete on every
    /// gateway; member routing, a send, a receive and a delete for each
    /// gateway other than the sender's that holds a member.
    pub fn fan_out_requests(&self) -> f64 {
        let g = f64::from(self.gateways);
        let per_gateway = match self.routing {
            Routing::Broadcast => 2.0 * g,
            Routing::Members => 3.0 * (g - 1.0) * (1.0 - (1.0 - 1.0 / g).powf(f64::from(self.members - 1))),
        };
        per_gateway / self.receive_batch
    }

    pub fn receipts(&self) -> f64 {
        self.receipts_per_message.unwrap_or(f64::from(self.members - 1))
    }
}

/// One line of the bill: what, how many billable units per message, and
/// what that costs per million messages.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub stage: String,
    pub service: &'static str,
    /// The operation (and table) a measured line prices; empty in the hand
    /// model.
    pub detail: String,
    pub units_per_message: f64,
    pub unit: &'static str,
    pub usd_per_million: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    pub lines: Vec<Line>,
    /// Per million messages, from per-message work only.
    pub variable_per_million: f64,
    /// Per month whatever the traffic.
    pub fixed_per_month: f64,
    /// Variable plus fixed spread over `messages_per_month`.
    pub total_per_million: f64,
    /// SQS requests per message per gateway reached (receive and delete).
    pub sqs_calls_per_message_per_gateway: f64,
    /// What the figures rest on besides the lines (measured runs: the
    /// source, and the calls not priced per message).
    pub notes: Vec<String>,
}

struct Bill {
    lines: Vec<Line>,
}

impl Bill {
    fn add(&mut self, stage: &str, service: &'static str, units: f64, unit: &'static str, price: f64) {
        self.add_detailed(stage, service, String::new(), units, unit, price);
    }

    fn add_detailed(
        &mut self,
        stage: &str,
        service: &'static str,
        detail: String,
        units: f64,
        unit: &'static str,
        price: f64,
    ) {
        if units > 0.0 {
            self.lines.push(Line {
                stage: stage.to_owned(),
                service,
                detail,
                units_per_message: units,
                unit,
                usd_per_million: units * price * 1e6,
            });
        }
    }
}

/// Requests for a payload of `kb` in SNS/SQS (one per 64 KB chunk).
fn chunks(kb: f64) -> f64 {
    (kb / CHUNK_KB).ceil().max(1.0)
}

pub fn estimate(w: &Workload) -> Result<Estimate, InvalidWorkload> {
    w.validate()?;
    let mut bill = Bill { lines: Vec::new() };
    let chunk = chunks(w.message_kb);
    let item_wru = w.message_kb.ceil().max(1.0);
    let gb_seconds_per_invocation = f64::from(w.lambda_memory_mb) / 1024.0 * w.lambda_ms / 1000.0;
    let gb_second = w.arch.lambda_per_gb_second();
    // One receive and one batch delete per receive batch.
    let sqs_per_gateway_event = 2.0 * chunk / w.receive_batch;
    let sqs_per_function_record = 2.0 * chunk / w.lambda_batch;
    let invocations_per_record = 1.0 / w.lambda_batch;
    let function = |bill: &mut Bill, stage: &'static str, records: f64| {
        bill.add(stage, "SQS", records * sqs_per_function_record, "requests", SQS_PER_REQUEST);
        bill.add(stage, "Lambda", records * invocations_per_record, "invocations", LAMBDA_PER_REQUEST);
        bill.add(
            stage,
            "Lambda",
            records * invocations_per_record * gb_seconds_per_invocation,
            "GB-seconds",
            gb_second,
        );
    };

    // Accepting the send at the gateway, and publishing it.
    let send_record = if w.idempotent_sends { 1.0 } else { 0.0 };
    bill.add("accept", "DynamoDB", send_record + 1.0 + item_wru, "WRU", DYNAMO_PER_WRU);
    bill.add("accept", "DynamoDB", send_record, "RRU", DYNAMO_PER_RRU);
    // The topic carries a message to the functions that may act on it: all
    // of them under broadcast; with member routing, those with external
    // recipients or a linked member to fall back to.
    let fallback = if w.routing == Routing::Broadcast { 1.0 } else { w.fallback_share };
    let to_topic = if w.routing == Routing::Broadcast || w.external_recipients > 0.0 { 1.0 } else { fallback };
    bill.add("accept", "SNS", to_topic * chunk / w.publish_batch, "requests", SNS_PER_REQUEST);
    bill.add("fan-out", "SQS", w.fan_out_requests() * chunk, "requests", SQS_PER_REQUEST);

    function(&mut bill, "fallback", fallback);
    let members_rru = (f64::from(w.members) * w.member_item_bytes / 4096.0).ceil().max(1.0);
    bill.add("fallback", "DynamoDB", fallback * members_rru, "RRU", DYNAMO_PER_RRU);

    // A member's READ is recorded by its gateway and routed to the members'
    // gateways only; an external recipient's DELIVERED goes through the
    // topic and persist records it (its one piece of work per message).
    let reads = w.receipts();
    bill.add("receipts", "SQS", (reads + w.external_recipients) * w.fan_out_requests(), "requests", SQS_PER_REQUEST);
    bill.add("receipts", "DynamoDB", reads + w.external_recipients, "WRU", DYNAMO_PER_WRU);
    // Member routing reads a receipt's routes (strongly consistent).
    let route_reads = if w.routing == Routing::Members { reads } else { 0.0 };
    bill.add("receipts", "DynamoDB", route_reads, "RRU", DYNAMO_PER_RRU);
    bill.add("receipts", "SNS", w.external_recipients / w.publish_batch, "requests", SNS_PER_REQUEST);
    function(&mut bill, "persist", w.external_recipients);

    function(&mut bill, "connector", w.external_recipients);
    bill.add("connector", "DynamoDB", w.external_recipients * 4.0, "WRU", DYNAMO_PER_WRU);

    Ok(bill.finish(w, sqs_per_gateway_event, Vec::new()))
}

/// Fargate tasks for the gateways, the Network Load Balancer's hours and
/// the gateways' idle long polls, per month.
fn fixed_per_month(w: &Workload) -> f64 {
    let (per_vcpu_hour, per_gb_hour) = w.arch.fargate();
    let gateways = f64::from(w.gateways);
    let fargate = gateways * (w.gateway_vcpu * per_vcpu_hour + w.gateway_gb * per_gb_hour) * HOURS_PER_MONTH;
    // One NLCU covers far more than a chat gateway's connections and bytes
    // at this scale; the hour charge dominates.
    let nlb = (NLB_PER_HOUR + NLCU_PER_HOUR) * HOURS_PER_MONTH;
    let idle_polls = gateways * f64::from(w.pollers) * HOURS_PER_MONTH * 3600.0 / IDLE_POLL_SECS * SQS_PER_REQUEST;
    fargate + nlb + idle_polls
}

impl Bill {
    fn finish(self, w: &Workload, sqs_calls_per_message_per_gateway: f64, notes: Vec<String>) -> Estimate {
        let variable_per_million: f64 = self.lines.iter().map(|l| l.usd_per_million).sum();
        let fixed_per_month = fixed_per_month(w);
        Estimate {
            variable_per_million,
            fixed_per_month,
            total_per_million: variable_per_million + fixed_per_month * 1e6 / w.messages_per_month,
            sqs_calls_per_message_per_gateway,
            lines: self.lines,
            notes,
        }
    }
}

/// The lines, the totals, the notes and the price sources.
fn render_bill(out: &mut String, w: &Workload, e: &Estimate) {
    let detail = e.lines.iter().map(|l| l.detail.len()).max().unwrap_or(0);
    let _ = writeln!(
        out,
        "{:<10} {:<9} {:<detail$} {:>14} {:<12} {:>12}",
        "stage", "service", "", "per message", "unit", "$/million"
    );
    for line in &e.lines {
        let _ = writeln!(
            out,
            "{:<10} {:<9} {:<detail$} {:>14.4} {:<12} {:>12.4}",
            line.stage, line.service, line.detail, line.units_per_message, line.unit, line.usd_per_million
        );
    }
    let width = 48 + detail + 1;
    let _ = writeln!(out, "{:<width$} {:>12.4}", "variable, per million messages", e.variable_per_million);
    let _ = writeln!(out, "{:<width$} {:>12.2}", "fixed, per month (Fargate, NLB, idle long polls)", e.fixed_per_month);
    let _ = writeln!(
        out,
        "{:<width$} {:>12.4}",
        format!("total per million at {:.0} messages/month", w.messages_per_month),
        e.total_per_million
    );
    for note in &e.notes {
        let _ = writeln!(out, "{note}");
    }
    let _ = writeln!(out, "\nprices (USD, us-east-1, {PRICES_AS_OF}; free tiers ignored):");
    for source in PRICE_SOURCES {
        let _ = writeln!(out, "  {source}");
    }
}

/// The bill as a table, with the inputs, the fixed costs and the sources.
pub fn render(w: &Workload, e: &Estimate) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "AWS cost per million messages: {} gateways ({:?} routing, {:.2} reached per event), {} members, {:.1} KB messages, {:.2} receipts and {:.2} external recipients per message",
        w.gateways,
        w.routing,
        w.gateways_reached(),
        w.members,
        w.message_kb,
        w.receipts(),
        w.external_recipients
    );
    let _ = writeln!(
        out,
        "batches: publish {}, gateway receive {}, function {}; Lambda {} MB × {} ms ({:?})\n",
        w.publish_batch, w.receive_batch, w.lambda_batch, w.lambda_memory_mb, w.lambda_ms, w.arch
    );
    render_bill(&mut out, w, e);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn total(e: &Estimate, stage: &str) -> f64 {
        e.lines.iter().filter(|l| l.stage == stage).map(|l| l.usd_per_million).sum()
    }

    #[test]
    fn defaults_parse_and_validate() {
        let w = Workload::default();
        assert_eq!((w.gateways, w.members, w.routing), (4, 2, Routing::Broadcast));
        assert_eq!(w.receipts(), 1.0, "one READ from the other member, covering its ack");
        assert!(w.validate().is_ok());
    }

    /// The accept stage of an idempotent 1 KB send, worked by hand: the
    /// record's lookup (1 RRU), its claim with the seq, the counter and the
    /// message (3 WRU) + 1 SNS request = 0.125 + 3 × 0.625 + 0.50 = $2.50
    /// per million; without a client_message_id, no lookup and no claim:
    /// $1.75.
    #[test]
    fn accept_is_a_lookup_three_writes_and_a_publish() {
        let e = estimate(&Workload::default()).expect("valid");
        assert!((total(&e, "accept") - 2.5).abs() < 1e-9, "{}", total(&e, "accept"));
        let e = estimate(&Workload { idempotent_sends: false, ..Workload::default() }).expect("valid");
        assert!((total(&e, "accept") - 1.75).abs() < 1e-9, "{}", total(&e, "accept"));
    }

    /// Broadcast fan-out is linear in gateways: receive + delete per gateway.
    #[test]
    fn broadcast_fan_out_grows_linearly_with_gateways() {
        let at = |gateways| {
            let e = estimate(&Workload { gateways, ..Workload::default() }).expect("valid");
            total(&e, "fan-out")
        };
        assert!((at(1) - 0.8).abs() < 1e-9, "{}", at(1));
        assert!((at(8) - 8.0 * at(1)).abs() < 1e-9);
        assert!((at(64) - 64.0 * at(1)).abs() < 1e-9);
    }

    /// Member routing is bounded by the conversation, not the fleet: a 1:1
    /// chat reaches at most 2 gateways however many there are.
    #[test]
    fn member_routing_is_bounded_by_the_conversation_size() {
        let reached = |gateways, members| {
            Workload { gateways, members, routing: Routing::Members, ..Workload::default() }.gateways_reached()
        };
        assert!((reached(1, 2) - 1.0).abs() < 1e-9);
        assert!((reached(2, 2) - 1.5).abs() < 1e-9);
        for g in [4, 16, 256, 4096] {
            assert!(reached(g, 2) < 2.0 && reached(g, 2) > 1.0, "{g}: {}", reached(g, 2));
            assert!(reached(g, 10) <= 10.0);
        }
    }

    /// Member routing's fan-out: nothing on one gateway (the sender's own
    /// streams need no queue), then a send, a receive and a delete for the
    /// other member's gateway when it is another: `3 · (1 − 1/G)` for 1:1,
    /// below 3 whatever the fleet, where broadcast's `2G` grows.
    #[test]
    fn member_routing_fan_out_needs_no_queue_on_one_gateway_and_stays_bounded() {
        let requests = |gateways, routing| Workload { gateways, routing, ..Workload::default() }.fan_out_requests();
        assert_eq!(requests(1, Routing::Members), 0.0);
        assert!((requests(2, Routing::Members) - 1.5).abs() < 1e-9);
        assert!((requests(4, Routing::Members) - 2.25).abs() < 1e-9);
        assert!(requests(1000, Routing::Members) < 3.0);
        assert!((requests(1000, Routing::Broadcast) - 2000.0).abs() < 1e-9);
    }

    #[test]
    fn batching_divides_request_costs() {
        let single = estimate(&Workload::default()).expect("valid");
        let batched =
            estimate(&Workload { publish_batch: 10.0, receive_batch: 10.0, lambda_batch: 10.0, ..Workload::default() })
                .expect("valid");
        assert!((total(&single, "fan-out") / total(&batched, "fan-out") - 10.0).abs() < 1e-9);
        assert!(batched.variable_per_million < single.variable_per_million);
        assert!((batched.sqs_calls_per_message_per_gateway - 0.2).abs() < 1e-9);
    }

    /// With member routing a message goes to the topic and the fallback
    /// only where a member may need falling back to (or an external one
    /// gets it); with broadcast every message does.
    #[test]
    fn the_topic_and_the_fallback_carry_only_what_they_may_act_on() {
        let members = Workload { routing: Routing::Members, ..Workload::default() };
        let e = estimate(&members).expect("valid");
        assert!(!e.lines.iter().any(|l| l.service == "SNS" || l.stage == "fallback"), "{:?}", e.lines);
        let e = estimate(&Workload { fallback_share: 0.25, ..members.clone() }).expect("valid");
        assert!(
            (total(&e, "fallback") - 0.25 * total(&estimate(&Workload::default()).expect("valid"), "fallback")).abs()
                < 1e-9
        );
        let sns =
            |e: &Estimate| e.lines.iter().filter(|l| l.service == "SNS").map(|l| l.units_per_message).sum::<f64>();
        assert!((sns(&e) - 0.25).abs() < 1e-9, "{}", sns(&e));
        let external = estimate(&Workload { external_recipients: 1.0, ..members }).expect("valid");
        assert!(sns(&external) >= 1.0, "the connector needs every message: {}", sns(&external));
        assert!((sns(&estimate(&Workload::default()).expect("valid")) - 1.0).abs() < 1e-9, "broadcast: every message");
        let refused = estimate(&Workload { fallback_share: 1.5, ..Workload::default() });
        assert!(refused.is_err_and(|e| e.to_string().contains("--fallback-share")));
    }

    #[test]
    fn large_messages_pay_per_chunk_and_per_kilobyte() {
        let e = estimate(&Workload { message_kb: 100.0, ..Workload::default() }).expect("valid");
        let accept_writes = e.lines.iter().find(|l| l.stage == "accept" && l.unit == "WRU").expect("line");
        assert_eq!(accept_writes.units_per_message, 1.0 + 1.0 + 100.0, "claim, counter, message");
        let publish = e.lines.iter().find(|l| l.stage == "accept" && l.service == "SNS").expect("line");
        assert_eq!(publish.units_per_message, 2.0);
    }

    /// Fixed costs: 4 x86 tasks of 0.5 vCPU and 1 GB, the NLB and 16 idle
    /// long polls, worked by hand.
    #[test]
    fn fixed_costs_add_up() {
        let e = estimate(&Workload::default()).expect("valid");
        let fargate = 4.0 * (0.5 * 0.04048 + 0.004445) * 730.0;
        let nlb = (0.0225 + 0.006) * 730.0;
        let polls = 16.0 * 730.0 * 180.0 * 0.40e-6;
        assert!((e.fixed_per_month - (fargate + nlb + polls)).abs() < 1e-9, "{}", e.fixed_per_month);
        assert!(e.total_per_million > e.variable_per_million);
    }

    #[test]
    fn bad_workloads_are_refused_with_the_reason() {
        let cases = [
            (Workload { gateways: 0, ..Workload::default() }, "--gateways"),
            (Workload { members: 1, ..Workload::default() }, "--members"),
            (Workload { publish_batch: 11.0, ..Workload::default() }, "--publish-batch"),
            (Workload { receive_batch: 0.5, ..Workload::default() }, "--receive-batch"),
            (Workload { message_kb: f64::NAN, ..Workload::default() }, "--message-kb"),
            (Workload { message_kb: 300.0, ..Workload::default() }, "--message-kb"),
            (Workload { receipts_per_message: Some(-1.0), ..Workload::default() }, "--receipts-per-message"),
            (Workload { lambda_memory_mb: 64, ..Workload::default() }, "--lambda-memory-mb"),
            (Workload { messages_per_month: 0.0, ..Workload::default() }, "--messages-per-month"),
        ];
        for (workload, flag) in cases {
            let error = estimate(&workload).expect_err(flag);
            assert!(error.to_string().contains(flag), "{error}");
        }
    }

    #[test]
    fn the_report_names_every_line_and_the_sources() {
        let w = Workload { external_recipients: 1.0, ..Workload::default() };
        let e = estimate(&w).expect("valid");
        let text = render(&w, &e);
        for stage in ["accept", "fan-out", "persist", "fallback", "receipts", "connector"] {
            assert!(text.contains(stage), "{stage} missing:\n{text}");
        }
        assert!(text.contains("aws.amazon.com/dynamodb/pricing"));
        assert!(text.contains(PRICES_AS_OF));
    }
}
