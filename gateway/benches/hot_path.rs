//! Micro-benchmarks of the gateway's per-event work: the bus envelope codec
//! (every event crosses SNS/SQS as JSON) and the hub's fan-out of one event
//! to a conversation's local streams. `cargo bench -p chat-gateway`.

use std::hint::black_box;
use std::time::Instant;

use chat_core::envelope::{Envelope, Event, MessageEvent};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use gateway::bench::FanOut;

/// Messages dispatched per measured batch in the fan-out benchmark.
const MESSAGES: u64 = 512;

fn message(seq: u64) -> Envelope {
    Envelope::new(
        format!("01JBENCH{seq:018}"),
        "bench-room".into(),
        "gw-bench".into(),
        1_700_000_000_000,
        Event::Message(MessageEvent {
            message_id: format!("01JMSG{seq:020}"),
            seq,
            sender: "alice".into(),
            body: "x".repeat(64),
            client_message_id: format!("c-{seq}"),
            external_recipients: Vec::new(),
        }),
    )
}

fn codec(c: &mut Criterion) {
    let envelope = message(42);
    let encoded = envelope.encode();
    let mut group = c.benchmark_group("envelope");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode", |b| b.iter(|| black_box(&envelope).encode()));
    group.bench_function("decode", |b| b.iter(|| Envelope::decode(black_box(&encoded))));
    group.finish();
}

/// A hub with one conversation of `members` streams, anchored at seq 0.
fn hub_with(members: usize) -> FanOut {
    FanOut::new("bench-room", members, MESSAGES as usize + 16)
}

fn fan_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("fan_out");
    for members in [2usize, 5, 50] {
        let envelopes: Vec<Envelope> = (1..=MESSAGES).map(message).collect();
        // What is measured must be what happens: every message reaches every stream.
        let hub = hub_with(members);
        for envelope in envelopes.clone() {
            hub.dispatch(envelope, Instant::now());
        }
        let delivered = hub.deliveries();
        assert_eq!(delivered, MESSAGES * members as u64, "fan-out set-up delivers everything");
        group.throughput(Throughput::Elements(MESSAGES * members as u64));
        group.bench_function(format!("{members}_members"), |b| {
            b.iter_batched(
                || (hub_with(members), envelopes.clone()),
                |(hub, envelopes)| {
                    let now = Instant::now();
                    for envelope in envelopes {
                        hub.dispatch(envelope, now);
                    }
                    hub
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, codec, fan_out);
criterion_main!(benches);
