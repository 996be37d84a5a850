//! The fleet model: what the routing costs at sizes no emulator here
//! reaches (1,000 gateways, 10 million connected users). **Analytic**:
//! expected values per message and per gateway, in closed form, for
//! members placed on gateways uniformly at random (what a layer-4 balancer
//! does); not a simulation of individual messages, so every figure can be
//! checked by hand.
//!
//! It is calibrated on one measured run of the bench (`counts.csv`, one-to-
//! one conversations, member routing) and trusted beyond the emulator only
//! as far as it predicts the other measured runs ([`validate`]: the
//! gateways' SQS calls per message at 1, 2, 4 and 8 gateways, both
//! routings).
//!
//! Per message of a conversation of `k` members, of whom a share `f` reads
//! as it arrives:
//! - **events**: the message and its receipts, `E = 1 + (k − 1)·f·r`, `r`
//!   the receipts a reading member reports per message (measured), at most
//!   two per receipt window per member (`--receipt-window-ms` coalescing),
//!   which bounds a busy room's;
//! - **gateways reached** besides the sender's: with member routing
//!   `R = (G − 1)·(1 − (1 − 1/G)^(k − 1))`, every gateway's queue once the
//!   conversation's routes, `G·(1 − (1 − 1/G)^k)` on average, pass the route
//!   limit (it overflows to the topic; its receipts then reach no other
//!   gateway), and every gateway's with broadcast;
//! - **SQS per event**: per routed gateway, its share of a `SendMessageBatch`
//!   (`1/s`), of a receive (`1/b`) and of a delete (`1/d`: deletes are
//!   gathered across receives, `--delete-linger-ms`); per broadcast gateway,
//!   `1/b + 1/d`. Batches fill with rate: `b = clamp(1 + λ·τ, 1, 10)` at `λ`
//!   events per second into one gateway's queue, `d` likewise, `s` at the
//!   rate from one gateway to another, each `τ` calibrated; and `b` is at
//!   least what
//!   the pollers need to keep up, `λ·rtt/P` (`P` = 4 pollers, `rtt` = 20 ms
//!   for a receive that finds messages: an assumption, not measured here);
//! - **the functions** (persist, fallback): their records per message as
//!   measured, in full batches at fleet rates (tens of thousands of records
//!   a second fill any event source mapping's batch): one receive and one
//!   batch delete per 10 records, an invocation per `BatchSize` (the
//!   template's: persist 100, fallback 10), each billed `--lambda-ms`;
//! - **everything else** (accept, the fallback's members read,
//!   the receipts' writes and publishes) priced from the calibration run,
//!   split by what it scales with: per message, per event, per receipt.
//!   SNS publishes stay as measured per message (receipts a gateway
//!   recorded never reach the topic): a gateway publishes tens of messages
//!   a second at this scale, too few to fill batches.
//!
//! Each gateway's receive rate is `Σ rate_c · E_c · P_c`, `P_c` the share of
//! gateways a conversation of class `c` reaches.

use std::fmt::Write as _;

use crate::cost::measured::{CountRow, EVENTS, estimate_measured};
use crate::cost::{InvalidWorkload, LAMBDA_PER_REQUEST, Routing, SQS_PER_REQUEST, Workload};

/// The persist event source mapping's `BatchSize` (template default).
const PERSIST_BATCH_SIZE: f64 = 100.0;
/// SNS and SQS batches hold at most 10.
const BATCH_MAX: f64 = 10.0;
/// A receive that finds messages, in region (assumed, not measured here),
/// and the gateway's pollers (`--pollers`): what bounds receives a second.
const RECEIVE_ROUND_TRIP_S: f64 = 0.020;
const POLLERS: f64 = 4.0;

/// A kind of conversation in the mix.
#[derive(Debug, Clone, PartialEq)]
pub struct Class {
    pub name: String,
    /// Members, `k` (the sender included).
    pub members: u32,
    /// Messages per second in all conversations of this kind.
    pub messages_per_second: f64,
    /// How many such conversations there are (their message rate each
    /// bounds what coalescing saves).
    pub conversations: f64,
    /// Share of the members reading as messages arrive (acking and reading
    /// each).
    pub readers: f64,
}

/// Where a conversation's members are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Uniformly at random over the gateways (a layer-4 balancer).
    Uniform,
    /// The bench's round-robin: a one-to-one pair never shares a gateway
    /// (from two gateways up), and each gateway talks to at most two others.
    Split,
}

/// What the calibration run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    /// Receipts a reading member reported per message.
    pub receipts_per_reader: f64,
    /// Receive batching: `b = clamp(1 + λ·τ, 1, 10)`.
    pub receive_tau: f64,
    /// Delete batching, likewise (deletes wait for company).
    pub delete_tau: f64,
    /// Send batching per ordered gateway pair.
    pub send_tau: f64,
    /// Receives that came back empty, per gateway per second (long polls
    /// ending idle: a fixed cost, counted in the validation only).
    pub empty_receives_per_gateway_second: f64,
    /// $ per million of what scales with messages, events and receipts
    /// (the gateways' SQS traffic aside, which the model computes).
    pub per_message_usd: f64,
    pub per_event_usd: f64,
    pub per_receipt_usd: f64,
    /// Records the functions handled per message: (function, records,
    /// its event source mapping's `BatchSize`).
    pub function_records: Vec<(String, f64, f64)>,
    /// Billed GB-seconds per invocation (`--lambda-memory-mb` × `--lambda-ms`).
    pub gb_seconds_per_invocation: f64,
    pub usd_per_gb_second: f64,
    /// The receipt coalescing window, seconds.
    pub receipt_window_s: f64,
}

/// The gateways' SQS calls of a run, per message, and what it counted.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Run {
    gateways: u32,
    messages: f64,
    seconds: f64,
    receipts: f64,
    received: f64,
    receives: f64,
    empty_receives: f64,
    deletes: f64,
    sends: f64,
    other_sqs: f64,
}

fn run_of(rows: &[CountRow], gateways: u32, routing: &str) -> Option<Run> {
    let run: Vec<&CountRow> = rows.iter().filter(|r| r.gateways == gateways && r.routing == routing).collect();
    let first = run.first()?;
    let sum = |service: &str, operation: &str| -> f64 {
        run.iter()
            .filter(|r| r.process == "gateway" && r.service == service && r.operation == operation)
            .map(|r| r.calls)
            .sum()
    };
    let sqs_total: f64 = run.iter().filter(|r| r.process == "gateway" && r.service == "SQS").map(|r| r.calls).sum();
    let (receives, deletes, sends) =
        (sum("SQS", "ReceiveMessage"), sum("SQS", "DeleteMessageBatch"), sum("SQS", "SendMessageBatch"));
    Some(Run {
        gateways,
        messages: first.messages as f64,
        seconds: first.seconds,
        receipts: sum(EVENTS, "Receipt"),
        received: sum(EVENTS, "QueueReceived"),
        receives,
        empty_receives: sum(EVENTS, "EmptyReceive"),
        deletes,
        sends,
        other_sqs: sqs_total - receives - deletes - sends,
    })
}

fn clamp_batch(x: f64) -> f64 {
    if x.is_finite() { x.clamp(1.0, BATCH_MAX) } else { 1.0 }
}

/// Gateways besides the sender's that hold a member, on average.
pub fn reached_others(gateways: u32, members: u32, placement: Placement) -> f64 {
    let g = f64::from(gateways);
    match placement {
        Placement::Split if gateways >= 2 => 1.0,
        Placement::Split => 0.0,
        Placement::Uniform => (g - 1.0) * (1.0 - (1.0 - 1.0 / g).powf(f64::from(members.saturating_sub(1)))),
    }
}

/// Gateways holding any member (the conversation's routes), on average.
pub fn routes(gateways: u32, members: u32) -> f64 {
    let g = f64::from(gateways);
    g * (1.0 - (1.0 - 1.0 / g).powf(f64::from(members)))
}

impl Calibration {
    /// From the run at `gateways` with member routing in `rows`, priced
    /// with `w`'s constants (message size, Lambda duration).
    pub fn from_counts(rows: &[CountRow], gateways: u32, w: &Workload) -> Result<Self, InvalidWorkload> {
        let missing = || InvalidWorkload(format!("the counts hold no member-routing run at {gateways} gateways"));
        let run = run_of(rows, gateways, "members").ok_or_else(missing)?;
        if gateways < 2 || run.sends == 0.0 || run.received == 0.0 || run.seconds <= 0.0 {
            return Err(InvalidWorkload(format!(
                "calibrating needs a member-routing run across gateways (2 or more) that routed events; {gateways} did not"
            )));
        }
        let receipts_per_reader = run.receipts / run.messages;
        let events = run.messages + run.receipts;
        // Each received event came through a send (one-to-one, split).
        let rate_in = run.received / (f64::from(gateways) * run.seconds);
        let b = run.received / (run.receives - run.empty_receives).max(1.0);
        let d = run.received / run.deletes.max(1.0);
        let s = run.received / run.sends;
        let destinations = if gateways == 2 { 1.0 } else { 2.0 };
        let pair_rate = rate_in / destinations;
        let tau = |batch: f64, rate: f64| if rate > 0.0 { ((batch - 1.0) / rate).max(0.0) } else { 0.0 };

        let workload = Workload { gateways, routing: Routing::Members, ..w.clone() };
        let estimate = estimate_measured(&workload, rows, "calibration")?;
        let (mut message, mut event, mut receipt) = (0.0, 0.0, 0.0);
        for line in &estimate.lines {
            match (line.stage.as_str(), line.service) {
                // Modelled: the gateways' fan-out, the functions' batches.
                ("gateway", "SQS") | ("persist" | "fallback", "SQS" | "Lambda") => {}
                (_, "DynamoDB") if line.detail.ends_with(" members") => receipt += line.usd_per_million,
                ("gateway", "DynamoDB" | "SNS") | ("fallback", _) => message += line.usd_per_million,
                ("persist", "DynamoDB") => message += line.usd_per_million,
                _ => event += line.usd_per_million,
            }
        }
        Ok(Self {
            receipts_per_reader,
            receive_tau: tau(b, rate_in),
            delete_tau: tau(d, rate_in),
            send_tau: tau(s, pair_rate),
            empty_receives_per_gateway_second: run.empty_receives / (f64::from(gateways) * run.seconds),
            per_message_usd: message,
            per_event_usd: event * run.messages / events,
            per_receipt_usd: if run.receipts > 0.0 { receipt * run.messages / run.receipts } else { 0.0 },
            receipt_window_s: 0.25,
            function_records: ["persist", "fallback"]
                .iter()
                .map(|function| {
                    let records: f64 = rows
                        .iter()
                        .filter(|r| {
                            r.gateways == gateways
                                && r.routing == "members"
                                && r.process == *function
                                && r.service == EVENTS
                                && r.operation == "Records"
                        })
                        .map(|r| r.calls)
                        .sum();
                    let batch_size = if *function == "persist" { PERSIST_BATCH_SIZE } else { BATCH_MAX };
                    ((*function).to_owned(), records / run.messages, batch_size)
                })
                .collect(),
            gb_seconds_per_invocation: f64::from(w.lambda_memory_mb) / 1024.0 * w.lambda_ms / 1000.0,
            usd_per_gb_second: w.arch.lambda_per_gb_second(),
        })
    }

    /// $ per million messages of the functions' work, in full batches.
    fn functions_usd(&self) -> f64 {
        self.function_records
            .iter()
            .map(|(_, records, batch_size)| {
                let sqs = records * 2.0 / BATCH_MAX;
                let invocations = records / batch_size;
                (sqs * SQS_PER_REQUEST
                    + invocations * (LAMBDA_PER_REQUEST + self.gb_seconds_per_invocation * self.usd_per_gb_second))
                    * 1e6
            })
            .sum()
    }

    fn receive_batch(&self, rate: f64) -> f64 {
        clamp_batch((1.0 + rate * self.receive_tau).max(rate * RECEIVE_ROUND_TRIP_S / POLLERS))
    }

    fn send_batch(&self, rate: f64) -> f64 {
        clamp_batch(1.0 + rate * self.send_tau)
    }

    fn delete_batch(&self, rate: f64) -> f64 {
        clamp_batch(1.0 + rate * self.delete_tau)
    }
}

/// A fleet and its traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct Fleet {
    pub gateways: u32,
    pub routing: Routing,
    /// Routes past which a conversation overflows to the topic (the
    /// gateways' `--route-limit`).
    pub route_limit: u32,
    pub placement: Placement,
    pub mix: Vec<Class>,
}

/// What the model predicts for one class.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassPrediction {
    pub name: String,
    pub events_per_message: f64,
    /// Gateways whose queue an event goes to.
    pub queues_per_event: f64,
    pub overflowed: bool,
    pub sqs_calls_per_message: f64,
    pub usd_per_million: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub classes: Vec<ClassPrediction>,
    /// Events per second into one gateway's queue.
    pub receive_rate_per_gateway: f64,
    pub receive_batch: f64,
    pub delete_batch: f64,
    pub send_batch: f64,
    /// Message-weighted over the mix.
    pub sqs_calls_per_message: f64,
    pub usd_per_million: f64,
    pub messages_per_second: f64,
}

/// Queues an event goes to, and how many of them by a direct send.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Reach {
    queues: f64,
    sent: f64,
}

/// Events per message of a class.
fn events(class: &Class, cal: &Calibration) -> f64 {
    let per_conversation =
        if class.conversations > 0.0 { class.messages_per_second / class.conversations } else { 0.0 };
    // A member reports at most a DELIVERED and a READ per window.
    let bound = if per_conversation > 0.0 { 2.0 / (cal.receipt_window_s * per_conversation) } else { f64::INFINITY };
    1.0 + f64::from(class.members.saturating_sub(1)) * class.readers * cal.receipts_per_reader.min(bound)
}

impl Fleet {
    /// Per message of `class`, and per receipt: the queues an event goes
    /// to, and how many of them by a direct send; and whether the
    /// conversation overflowed.
    fn reach(&self, class: &Class) -> (Reach, Reach, bool) {
        let g = f64::from(self.gateways);
        let overflowed =
            self.routing == Routing::Members && routes(self.gateways, class.members) > f64::from(self.route_limit);
        let everyone = Reach { queues: g, sent: 0.0 };
        match self.routing {
            Routing::Broadcast => (everyone, everyone, false),
            Routing::Members if overflowed => (everyone, Reach { queues: 0.0, sent: 0.0 }, true),
            Routing::Members => {
                let others = reached_others(self.gateways, class.members, self.placement);
                let reach = Reach { queues: others, sent: others };
                (reach, reach, false)
            }
        }
    }

    pub fn predict(&self, cal: &Calibration) -> Prediction {
        let g = f64::from(self.gateways);
        // Each gateway's receive rate, and the rate from one gateway to
        // another, fix the batch sizes.
        let mut into_gateway = 0.0;
        let mut routed_from_gateway = 0.0;
        for class in &self.mix {
            let (message, receipt, _) = self.reach(class);
            let receipts = events(class, cal) - 1.0;
            into_gateway += class.messages_per_second * (message.queues + receipts * receipt.queues) / g;
            routed_from_gateway += class.messages_per_second * (message.sent + receipts * receipt.sent) / g;
        }
        let destinations = match self.placement {
            Placement::Split => {
                if self.gateways <= 2 {
                    1.0
                } else {
                    2.0
                }
            }
            Placement::Uniform => (g - 1.0).max(1.0),
        };
        let b = cal.receive_batch(into_gateway);
        let d = cal.delete_batch(into_gateway);
        let s = cal.send_batch(routed_from_gateway / destinations);
        let mut classes = Vec::new();
        let (mut messages, mut sqs_weighted, mut usd_weighted) = (0.0, 0.0, 0.0);
        for class in &self.mix {
            let (message, receipt, overflowed) = self.reach(class);
            let e = events(class, cal);
            let receipts = e - 1.0;
            let queues = message.queues + receipts * receipt.queues;
            let sqs = (message.sent + receipts * receipt.sent) / s + queues / b + queues / d;
            let usd = cal.per_message_usd
                + cal.functions_usd()
                + e * cal.per_event_usd
                + receipts * cal.per_receipt_usd
                + sqs * SQS_PER_REQUEST * 1e6;
            messages += class.messages_per_second;
            sqs_weighted += class.messages_per_second * sqs;
            usd_weighted += class.messages_per_second * usd;
            classes.push(ClassPrediction {
                name: class.name.clone(),
                events_per_message: e,
                queues_per_event: queues / e,
                overflowed,
                sqs_calls_per_message: sqs,
                usd_per_million: usd,
            });
        }
        let per = |x: f64| if messages > 0.0 { x / messages } else { 0.0 };
        Prediction {
            classes,
            receive_rate_per_gateway: into_gateway,
            receive_batch: b,
            delete_batch: d,
            send_batch: s,
            sqs_calls_per_message: per(sqs_weighted),
            usd_per_million: per(usd_weighted),
            messages_per_second: messages,
        }
    }
}

/// One measured run against the model's prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub gateways: u32,
    pub routing: Routing,
    pub measured: f64,
    pub predicted: f64,
}

impl Check {
    /// Relative error of the prediction; 0 when both are 0.
    pub fn error(&self) -> f64 {
        if self.measured == 0.0 && self.predicted == 0.0 {
            0.0
        } else {
            (self.predicted - self.measured) / self.measured.max(1e-9)
        }
    }
}

/// Predicts every run in `rows` (one-to-one, the bench's split placement,
/// each run's own message rate and receipts) and sets it beside what was
/// measured: the gateways' SQS calls per message, idle receives included.
pub fn validate(rows: &[CountRow], cal: &Calibration, route_limit: u32) -> Vec<Check> {
    let mut checks = Vec::new();
    for (gateways, routing, _) in crate::cost::measured::runs(rows) {
        let (routing_name, routing) = match routing.as_str() {
            "broadcast" => ("broadcast", Routing::Broadcast),
            "members" => ("members", Routing::Members),
            _ => continue,
        };
        let Some(run) = run_of(rows, gateways, routing_name) else { continue };
        if run.messages == 0.0 || run.seconds <= 0.0 {
            continue;
        }
        let as_measured = Calibration { receipts_per_reader: run.receipts / run.messages, ..cal.clone() };
        let fleet = Fleet {
            gateways,
            routing,
            route_limit,
            placement: Placement::Split,
            mix: vec![Class {
                name: "1:1".into(),
                members: 2,
                messages_per_second: run.messages / run.seconds,
                conversations: 0.0,
                readers: 1.0,
            }],
        };
        let idle = cal.empty_receives_per_gateway_second * f64::from(gateways) * run.seconds / run.messages;
        let predicted = fleet.predict(&as_measured).sqs_calls_per_message + idle;
        let measured = (run.receives + run.deletes + run.sends + run.other_sqs) / run.messages;
        checks.push(Check { gateways, routing, measured, predicted });
    }
    checks
}

/// The fleet the issue names: `gateways` gateways and `users` connected
/// users, sending `messages_per_user_hour` each in one-to-one chats (70 %)
/// and groups of 8 (30 %), all reading as messages arrive; plus `rooms`
/// rooms of 10,000 members with a message a second each, a twentieth of
/// their members reading at any time.
pub fn standard_mix(users: f64, messages_per_user_hour: f64, rooms: f64) -> Vec<Class> {
    let rate = users * messages_per_user_hour / 3600.0;
    vec![
        Class {
            name: "1:1".into(),
            members: 2,
            messages_per_second: 0.7 * rate,
            conversations: users / 2.0,
            readers: 1.0,
        },
        Class {
            name: "group of 8".into(),
            members: 8,
            messages_per_second: 0.3 * rate,
            conversations: users / 8.0,
            readers: 1.0,
        },
        Class {
            name: "room of 10,000".into(),
            members: 10_000,
            messages_per_second: rooms,
            conversations: rooms,
            readers: 0.05,
        },
    ]
}

/// The validation and the fleet's figures as Markdown.
pub fn report(checks: &[Check], cal: &Calibration, fleets: &[(String, Prediction)]) -> String {
    let mut md = String::from(
        "### Validation: the gateways' SQS calls per message, measured vs predicted\n\n\
         | gateways | routing | measured | predicted | error |\n| --- | --- | --- | --- | --- |\n",
    );
    for c in checks {
        let _ = writeln!(
            md,
            "| {} | {:?} | {:.3} | {:.3} | {:+.0} % |",
            c.gateways,
            c.routing,
            c.measured,
            c.predicted,
            100.0 * c.error()
        );
    }
    let worst = checks.iter().map(|c| c.error().abs()).fold(0.0, f64::max);
    let _ = writeln!(
        md,
        "\nworst error {:.0} %; calibration: {:.2} receipts per reading member per message, τ receive {:.4} s, τ delete {:.4} s, \
         τ send {:.4} s, ${:.3} per million per message + ${:.3} per event + ${:.3} per receipt\n",
        100.0 * worst,
        cal.receipts_per_reader,
        cal.receive_tau,
        cal.delete_tau,
        cal.send_tau,
        cal.per_message_usd,
        cal.per_event_usd,
        cal.per_receipt_usd
    );
    let _ = writeln!(
        md,
        "### The fleet\n\n| fleet | messages/s | receive rate per gateway (events/s) | receive batch | delete batch | send batch | SQS calls per message | $ per million messages |\n| --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for (fleet, p) in fleets {
        let _ = writeln!(
            md,
            "| {fleet} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.3} | {:.3} |",
            p.messages_per_second,
            p.receive_rate_per_gateway,
            p.receive_batch,
            p.delete_batch,
            p.send_batch,
            p.sqs_calls_per_message,
            p.usd_per_million
        );
    }
    if let Some((fleet, p)) = fleets.last() {
        let _ = writeln!(
            md,
            "\nper class, {fleet}:\n\n| class | events per message | queues per event | overflowed | SQS calls per message | $ per million |\n| --- | --- | --- | --- | --- | --- |"
        );
        for c in &p.classes {
            let _ = writeln!(
                md,
                "| {} | {:.2} | {:.2} | {} | {:.2} | {:.3} |",
                c.name,
                c.events_per_message,
                c.queues_per_event,
                if c.overflowed { "yes" } else { "no" },
                c.sqs_calls_per_message,
                c.usd_per_million
            );
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calibration() -> Calibration {
        Calibration {
            receipts_per_reader: 1.0,
            receive_tau: 0.0,
            delete_tau: 0.0,
            send_tau: 0.0,
            empty_receives_per_gateway_second: 0.0,
            per_message_usd: 1.0,
            per_event_usd: 0.1,
            per_receipt_usd: 0.5,
            receipt_window_s: 0.25,
            function_records: Vec::new(),
            gb_seconds_per_invocation: 0.005,
            usd_per_gb_second: 0.000_016_666_7,
        }
    }

    /// Full batches: 100 persist records cost 20 SQS calls and one
    /// invocation: per record 0.2 × 0.4 + 0.01 × (0.2 + 0.005 × 16.6667)
    /// = $0.08283 per million.
    #[test]
    fn the_functions_are_priced_in_full_batches() {
        let cal = Calibration { function_records: vec![("persist".into(), 1.0, 100.0)], ..calibration() };
        assert!(
            (cal.functions_usd() - (0.08 + 0.01 * (0.2 + 0.005 * 16.666_7))).abs() < 1e-6,
            "{}",
            cal.functions_usd()
        );
    }

    fn one_to_one(gateways: u32, routing: Routing, placement: Placement) -> Fleet {
        Fleet {
            gateways,
            routing,
            route_limit: 32,
            placement,
            mix: vec![Class {
                name: "1:1".into(),
                members: 2,
                messages_per_second: 100.0,
                conversations: 1000.0,
                readers: 1.0,
            }],
        }
    }

    /// Worked by hand: 1:1, split over 4 gateways, unbatched: 2 events per
    /// message, each sent, received and deleted once: 6 SQS calls; the cost
    /// 1 + 2 × 0.1 + 1 × 0.5 + 6 × 0.4 = $4.10 per million.
    #[test]
    fn one_to_one_split_is_worked_by_hand() {
        let p = one_to_one(4, Routing::Members, Placement::Split).predict(&calibration());
        assert!((p.sqs_calls_per_message - 6.0).abs() < 1e-9, "{p:?}");
        assert!((p.usd_per_million - 4.1).abs() < 1e-9, "{p:?}");
        let broadcast = one_to_one(4, Routing::Broadcast, Placement::Split).predict(&calibration());
        assert!((broadcast.sqs_calls_per_message - 16.0).abs() < 1e-9, "2 events × 4 gateways × 2: {broadcast:?}");
    }

    /// Member routing's receive rate per gateway stays put as the fleet
    /// grows with its users; broadcast's grows with the fleet.
    #[test]
    fn receive_rate_per_gateway_is_independent_of_fleet_size_with_member_routing() {
        let at = |gateways: u32, routing| {
            let users = f64::from(gateways) * 10_000.0;
            let fleet = Fleet {
                gateways,
                routing,
                route_limit: 32,
                placement: Placement::Uniform,
                mix: standard_mix(users, 20.0, 5.0),
            };
            fleet.predict(&calibration()).receive_rate_per_gateway
        };
        let (small, large) = (at(100, Routing::Members), at(1000, Routing::Members));
        assert!((large / small - 1.0).abs() < 0.05, "{small} vs {large}");
        let (small, large) = (at(100, Routing::Broadcast), at(1000, Routing::Broadcast));
        assert!(large / small > 9.0, "{small} vs {large}");
    }

    #[test]
    fn a_room_past_the_route_limit_overflows_and_a_pair_never_does() {
        let fleet = Fleet {
            gateways: 1000,
            routing: Routing::Members,
            route_limit: 32,
            placement: Placement::Uniform,
            mix: standard_mix(1e7, 20.0, 5.0),
        };
        let p = fleet.predict(&calibration());
        let by_name = |name: &str| p.classes.iter().find(|c| c.name == name).expect("class");
        assert!(!by_name("1:1").overflowed && by_name("1:1").queues_per_event < 1.0);
        let room = by_name("room of 10,000");
        assert!(room.overflowed, "{room:?}");
        let queues_per_message = room.queues_per_event * room.events_per_message;
        assert!(
            (queues_per_message - 1000.0).abs() < 1e-6,
            "the message to every gateway, its receipts to none: {room:?}"
        );
    }

    /// Coalescing bounds a busy room's receipts: at 20 messages a second a
    /// member reports at most 2 per 0.25 s window, 0.4 per message.
    #[test]
    fn coalescing_bounds_receipts_in_a_busy_conversation() {
        let class =
            Class { name: "busy".into(), members: 11, messages_per_second: 20.0, conversations: 1.0, readers: 1.0 };
        assert!((events(&class, &calibration()) - (1.0 + 10.0 * 0.4)).abs() < 1e-9);
    }

    #[test]
    fn reach_on_average() {
        assert_eq!(reached_others(1, 2, Placement::Uniform), 0.0);
        assert!((reached_others(4, 2, Placement::Uniform) - 0.75).abs() < 1e-9);
        assert_eq!(reached_others(8, 2, Placement::Split), 1.0);
        assert!((routes(1000, 10_000) - 1000.0).abs() < 0.1);
    }
}
