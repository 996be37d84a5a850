//! Pricing what the bench measured: every AWS request each process made
//! while the messages of a run flowed (setup excluded), by process, service,
//! operation and, for DynamoDB, table (`bench/results/counts.csv`, written by
//! the bench's fan-out step). The emulator counts calls; what it cannot
//! count comes from the constants of the hand model:
//! - capacity units per DynamoDB call: a write is 1 WRU per KB of its item
//!   (the message item `--message-kb`, every other item under 1 KB), a
//!   failed conditional write
//!   is billed too; a read 1 RRU (strongly consistent, under 4 KB; the
//!   members query `--member-item-bytes` per member);
//! - payload chunks (64 KB) per SNS publish and SQS send or receive;
//! - Lambda's billed duration (`--lambda-ms`): what a debug build takes on
//!   a laptop says nothing about it.
//!
//! Calls that are not per message (creating and tagging queues,
//! subscriptions, queue attributes) are counted apart and left out of the
//! per-message bill; they are the fixed costs' business, as are the
//! gateways' receives that came back empty (idle long polls). A function's
//! receives are priced one per invocation, as Lambda's event source mapping
//! makes them, not as counted: the local runner that stands in for it polls
//! its own way.

use std::collections::BTreeMap;

use super::{
    Bill, DYNAMO_PER_RRU, DYNAMO_PER_WRU, Estimate, InvalidWorkload, LAMBDA_PER_REQUEST, Routing, SNS_PER_REQUEST,
    SQS_PER_REQUEST, Workload, chunks,
};

/// The first line of `counts.csv`.
pub const COUNTS_CSV_HEADER: &str = "gateways,routing,messages,seconds,process,service,operation,table,calls";

/// The service of the rows that count events rather than AWS calls:
/// `Receipt` (receipts the gateways' streams reported), `QueueReceived`
/// (messages the gateways received from their queues),
/// `EmptyReceive` (receives that returned nothing), and a function's
/// `Records` (records its invocations handled). Never priced; the fleet
/// model reads them.
pub const EVENTS: &str = "Events";

/// One counted series of one run: `calls` of `service` `operation` (on
/// `table`, DynamoDB's) made by `process` while `messages` were accepted by
/// `gateways` gateways routing as `routing`.
#[derive(Debug, Clone, PartialEq)]
pub struct CountRow {
    pub gateways: u32,
    pub routing: String,
    pub messages: u64,
    /// How long the messages flowed, from the first send to the last
    /// delivery.
    pub seconds: f64,
    /// `gateway` (all gateways summed), or the function: `persist`, `fallback`.
    pub process: String,
    pub service: String,
    pub operation: String,
    /// The table's logical name (`messages`, `conversations`, ...); empty
    /// for other services.
    pub table: String,
    pub calls: f64,
}

impl CountRow {
    pub fn csv(&self) -> String {
        format!(
            "{},{},{},{:.3},{},{},{},{},{}",
            self.gateways,
            self.routing,
            self.messages,
            self.seconds,
            self.process,
            self.service,
            self.operation,
            self.table,
            self.calls
        )
    }
}

/// The rows of a `counts.csv`; a line that does not parse is an error
/// naming it.
pub fn parse_counts(text: &str) -> Result<Vec<CountRow>, InvalidWorkload> {
    let mut lines = text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty());
    match lines.next() {
        Some((_, header)) if header.trim() == COUNTS_CSV_HEADER => {}
        other => {
            return Err(InvalidWorkload(format!(
                "a counts file starts with `{COUNTS_CSV_HEADER}`, this one with {:?}",
                other.map(|(_, line)| line).unwrap_or("nothing")
            )));
        }
    }
    lines
        .map(|(index, line)| {
            let bad = |what: &str| InvalidWorkload(format!("counts line {}: {what}: {line:?}", index + 1));
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let [gateways, routing, messages, seconds, process, service, operation, table, calls] = fields[..] else {
                return Err(bad("expected 9 fields"));
            };
            let seconds: f64 = seconds.parse().map_err(|_| bad("seconds is not a number"))?;
            let calls: f64 = calls.parse().map_err(|_| bad("calls is not a number"))?;
            if !calls.is_finite() || calls < 0.0 {
                return Err(bad("calls is negative"));
            }
            Ok(CountRow {
                gateways: gateways.parse().map_err(|_| bad("gateways is not a count"))?,
                routing: routing.to_owned(),
                messages: messages.parse().map_err(|_| bad("messages is not a count"))?,
                seconds,
                process: process.to_owned(),
                service: service.to_owned(),
                operation: operation.to_owned(),
                table: table.to_owned(),
                calls,
            })
        })
        .collect()
}

/// How the routing is spelled in `counts.csv`.
pub fn routing_name(routing: Routing) -> &'static str {
    match routing {
        Routing::Broadcast => "broadcast",
        Routing::Members => "members",
    }
}

/// What one call bills, in the unit it is billed in.
#[derive(Debug, Clone, Copy, PartialEq)]
enum PerCall {
    Requests(&'static str, f64, f64),
    Capacity(&'static str, f64, f64),
    /// Not per message (setup, heartbeats): counted, not priced.
    NotPerMessage,
}

/// What one call of `row`'s operation bills under workload `w` (the
/// constants the emulator cannot measure).
fn per_call(row: &CountRow, w: &Workload) -> PerCall {
    let chunk = chunks(w.message_kb);
    let item_wru = w.message_kb.ceil().max(1.0);
    match (row.service.as_str(), row.operation.as_str()) {
        ("SNS", "Publish" | "PublishBatch") => PerCall::Requests("SNS", chunk, SNS_PER_REQUEST),
        ("SQS", "ReceiveMessage" | "SendMessage" | "SendMessageBatch") => {
            PerCall::Requests("SQS", chunk, SQS_PER_REQUEST)
        }
        (
            "SQS",
            "DeleteMessage"
            | "DeleteMessageBatch"
            | "ChangeMessageVisibility"
            | "ChangeMessageVisibilityBatch"
            | "GetQueueUrl",
        ) => PerCall::Requests("SQS", 1.0, SQS_PER_REQUEST),
        ("Lambda", "Invoke") => PerCall::Requests("Lambda", 1.0, LAMBDA_PER_REQUEST),
        ("DynamoDB", "PutItem") if row.table == "messages" => PerCall::Capacity("WRU", item_wru, DYNAMO_PER_WRU),
        ("DynamoDB", "PutItem" | "UpdateItem" | "DeleteItem" | "BatchWriteItem" | "TransactWriteItems") => {
            // A batch or transaction's items are not counted per call: one
            // unit each is a floor (none is on a message's path).
            let transaction = if row.operation == "TransactWriteItems" { 2.0 } else { 1.0 };
            PerCall::Capacity("WRU", transaction, DYNAMO_PER_WRU)
        }
        ("DynamoDB", "Query") if row.table == "members" => {
            let members_rru = (f64::from(w.members) * w.member_item_bytes / 4096.0).ceil().max(1.0);
            PerCall::Capacity("RRU", members_rru, DYNAMO_PER_RRU)
        }
        ("DynamoDB", "GetItem" | "Query" | "BatchGetItem" | "Scan") => PerCall::Capacity("RRU", 1.0, DYNAMO_PER_RRU),
        _ => PerCall::NotPerMessage,
    }
}

/// The runs a counts file holds: (gateways, routing, messages).
pub fn runs(rows: &[CountRow]) -> Vec<(u32, String, u64)> {
    let mut runs: Vec<(u32, String, u64)> = rows.iter().map(|r| (r.gateways, r.routing.clone(), r.messages)).collect();
    runs.sort();
    runs.dedup();
    runs
}

/// The bill for `w` from the run in `rows` at `w.gateways` gateways and
/// `w.routing`: each counted call per message, priced.
pub fn estimate_measured(w: &Workload, rows: &[CountRow], source: &str) -> Result<Estimate, InvalidWorkload> {
    w.validate()?;
    let routing = routing_name(w.routing);
    let run: Vec<&CountRow> = rows.iter().filter(|r| r.gateways == w.gateways && r.routing == routing).collect();
    let Some(messages) = run.first().map(|r| r.messages) else {
        let held: Vec<String> = runs(rows).iter().map(|(g, r, _)| format!("{g} gateways {r}")).collect();
        return Err(InvalidWorkload(format!(
            "{source} has no run at {} gateways with {routing} routing (it has: {})",
            w.gateways,
            if held.is_empty() { "none".to_owned() } else { held.join(", ") }
        )));
    };
    if messages == 0 || run.iter().any(|r| r.messages != messages) {
        return Err(InvalidWorkload(format!(
            "{source}: the run at {} gateways {routing} counts no messages, or disagrees on how many",
            w.gateways
        )));
    }
    let per_message = |calls: f64| calls / messages as f64;
    let gb_seconds_per_invocation = f64::from(w.lambda_memory_mb) / 1024.0 * w.lambda_ms / 1000.0;
    let mut bill = Bill { lines: Vec::new() };
    let mut not_per_message: BTreeMap<String, f64> = BTreeMap::new();
    let mut gateway_sqs = 0.0;
    let counted = |process: &str, service: &str, operation: &str| -> f64 {
        run.iter()
            .filter(|r| r.process == process && r.service == service && r.operation == operation)
            .map(|r| r.calls)
            .sum()
    };
    let mut replaced = Vec::new();
    for row in &run {
        let mut calls = per_message(row.calls);
        if (row.service.as_str(), row.operation.as_str()) == ("SQS", "ReceiveMessage") {
            if row.process == "gateway" {
                calls = per_message((row.calls - counted("gateway", EVENTS, "EmptyReceive")).max(0.0));
            } else {
                let invocations = counted(&row.process, "Lambda", "Invoke");
                replaced.push(format!("{} {:.2} → {:.3}", row.process, calls, per_message(invocations)));
                calls = per_message(invocations);
            }
        }
        let detail =
            if row.table.is_empty() { row.operation.clone() } else { format!("{} {}", row.operation, row.table) };
        match per_call(row, w) {
            PerCall::Requests(service, units, price) => {
                if service == "SQS" && row.process == "gateway" {
                    gateway_sqs += calls;
                }
                let unit = if service == "Lambda" { "invocations" } else { "requests" };
                bill.add_detailed(&row.process, service, detail.clone(), calls * units, unit, price);
                if service == "Lambda" {
                    bill.add_detailed(
                        &row.process,
                        "Lambda",
                        "duration (--lambda-ms)".to_owned(),
                        calls * gb_seconds_per_invocation,
                        "GB-seconds",
                        w.arch.lambda_per_gb_second(),
                    );
                }
            }
            PerCall::Capacity(unit, units, price) => {
                bill.add_detailed(&row.process, "DynamoDB", detail, calls * units, unit, price);
            }
            PerCall::NotPerMessage if row.service == EVENTS => {}
            PerCall::NotPerMessage => {
                *not_per_message.entry(format!("{} {} {}", row.process, row.service, detail)).or_default() += calls;
            }
        }
    }
    let mut notes = vec![format!(
        "\nmeasured: {messages} messages at {} gateways, {routing} routing ({source}); capacity units per call, payload chunks and Lambda duration from the model's constants",
        w.gateways
    )];
    let idle = per_message(counted("gateway", EVENTS, "EmptyReceive"));
    if idle > 0.0 {
        notes.push(format!(
            "gateway receives that came back empty (idle long polls, a fixed cost): {idle:.3} per message"
        ));
    }
    if !replaced.is_empty() {
        notes.push(format!(
            "function receives per message, as the local runner polled → one per invocation, as Lambda's event source mapping does: {}",
            replaced.join("; ")
        ));
    }
    if !not_per_message.is_empty() {
        let listed: Vec<String> = not_per_message.iter().map(|(what, calls)| format!("{what} {calls:.3}")).collect();
        notes.push(format!("not priced per message (setup and heartbeats), calls per message: {}", listed.join("; ")));
    }
    let gateways_reached = w.gateways_reached().max(1.0);
    Ok(bill.finish(w, gateway_sqs / gateways_reached, notes))
}

/// The measured bill as a table.
pub fn render_measured(w: &Workload, e: &Estimate) -> String {
    let mut out = format!(
        "AWS cost per million messages, measured: {} gateways ({:?} routing), {:.1} KB messages; Lambda {} MB × {} ms ({:?})\n\n",
        w.gateways, w.routing, w.message_kb, w.lambda_memory_mb, w.lambda_ms, w.arch
    );
    super::render_bill(&mut out, w, e);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(process: &str, service: &str, operation: &str, table: &str, calls: f64) -> CountRow {
        CountRow {
            gateways: 4,
            routing: "members".into(),
            messages: 1000,
            seconds: 10.0,
            process: process.into(),
            service: service.into(),
            operation: operation.into(),
            table: table.into(),
            calls,
        }
    }

    fn members() -> Workload {
        Workload { routing: Routing::Members, ..Workload::default() }
    }

    #[test]
    fn rows_round_trip_through_csv() {
        let rows = vec![
            row("gateway", "DynamoDB", "PutItem", "messages", 1000.0),
            row("persist", "Lambda", "Invoke", "", 12.0),
        ];
        let text = std::iter::once(COUNTS_CSV_HEADER.to_owned())
            .chain(rows.iter().map(CountRow::csv))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(parse_counts(&text).expect("parses"), rows);
    }

    #[test]
    fn a_bad_counts_file_is_refused_with_the_line() {
        for (text, says) in [
            ("", "starts with"),
            ("gateways,routing\n", "starts with"),
            (&*format!("{COUNTS_CSV_HEADER}\n4,members,10,1.5,gateway,SNS,Publish,,x"), "calls is not a number"),
            (&*format!("{COUNTS_CSV_HEADER}\n4,members,10,1.5,gateway,SNS"), "9 fields"),
            (&*format!("{COUNTS_CSV_HEADER}\n4,members,10,1.5,gateway,SNS,Publish,,-1"), "negative"),
            (&*format!("{COUNTS_CSV_HEADER}\n4,members,10,soon,gateway,SNS,Publish,,1"), "seconds"),
        ] {
            let error = parse_counts(text).expect_err(says).to_string();
            assert!(error.contains(says), "{error}");
        }
    }

    /// Worked by hand, per message (1,000 messages, 1 KB): the message put
    /// (1 WRU, no index) and the counter (1 WRU) = 2 × 0.625; a
    /// tenth of a PublishBatch = 0.05; 0.3 SQS calls = 0.12; a twentieth of
    /// an invocation = 0.01 + 0.05 × 0.005 GB-s = 0.0041667.
    #[test]
    fn measured_calls_are_priced_by_operation_and_table() {
        let rows = vec![
            row("gateway", "DynamoDB", "PutItem", "messages", 1000.0),
            row("gateway", "DynamoDB", "UpdateItem", "conversations", 1000.0),
            row("gateway", "SNS", "PublishBatch", "", 100.0),
            row("gateway", "SQS", "ReceiveMessage", "", 150.0),
            row("gateway", "SQS", "DeleteMessageBatch", "", 150.0),
            row("gateway", "SQS", "TagQueue", "", 8.0),
            row("persist", "Lambda", "Invoke", "", 50.0),
        ];
        let e = estimate_measured(&members(), &rows, "test").expect("priced");
        let gb_seconds = 0.05 * (256.0 / 1024.0) * 0.020;
        let expected = 2.0 * 0.625 + 0.05 + 0.12 + 0.01 + gb_seconds * 0.000_016_666_7 * 1e6;
        assert!((e.variable_per_million - expected).abs() < 1e-6, "{} vs {expected}", e.variable_per_million);
        assert!(e.notes.iter().any(|n| n.contains("TagQueue 0.008")), "{:?}", e.notes);
        let text = render_measured(&members(), &e);
        assert!(text.contains("PutItem messages") && text.contains("measured: 1000 messages"), "{text}");
    }

    #[test]
    fn a_run_not_in_the_file_is_refused_naming_what_is() {
        let rows = vec![row("gateway", "SNS", "Publish", "", 10.0)];
        let error = estimate_measured(&Workload { gateways: 8, ..members() }, &rows, "counts.csv").expect_err("no run");
        assert!(error.to_string().contains("4 gateways members"), "{error}");
    }
}
