//! SSE event encoding per subscriber: `sse::encode` (what `SseEndpoint` sends for each
//! delivery: the message's bytes, encoded once and shared) against building Salvo's own
//! `SseEvent` by hand from the same message and formatting it (`to_string()`, which is how
//! Salvo's SSE body writes an event), as a hand-written handler does for every subscriber.
//!
//! Run `cargo bench --bench sse`. See BENCHMARKS.md for the figures.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures_util::StreamExt;
use salvo::sse::SseEvent;
use salvo_realtime::{Delivery, Message, Position, PubSub, Publication, sse};

/// One delivered message with `payload` (and `event`, if any), straight from a hub.
fn delivered(payload: &str, event: Option<&str>) -> Message {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let hub = PubSub::new();
        let mut sub = hub
            .subscribe("bench", Position::Live)
            .await
            .expect("subscribe");
        let mut publication = Publication::new(payload);
        if let Some(event) = event {
            publication = publication.event(event);
        }
        hub.publish("bench", publication).await.expect("publish");
        match sub.next().await {
            Some(Delivery::Message(m)) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    })
}

/// What a hand-written handler does with the same message.
fn by_hand(m: &Message) -> SseEvent {
    let event = SseEvent::default()
        .id(m.id().to_string())
        .text(m.payload().as_text().unwrap_or_default().to_owned());
    match m.event() {
        Some(name) => event.name(name.as_str()),
        None => event,
    }
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("sse_encode");
    group.throughput(Throughput::Elements(1));
    let line64 = format!(
        "{{\"i\":{:>10},\"t\":{:>20},\"p\":\"{}\"}}",
        1,
        2,
        "x".repeat(16)
    );
    let cases = [
        ("64B", delivered(&line64, None)),
        ("64B_named", delivered(&line64, Some("tick"))),
        (
            "3_lines",
            delivered("first line\nsecond line\r\nthird line", Some("note")),
        ),
        ("4KiB", delivered(&"y".repeat(4096), None)),
    ];
    for (name, m) in &cases {
        let delivery = Delivery::Message(m.clone());
        // Same output either way (the endpoint's tests check the format itself).
        assert_eq!(sse::encode(&delivery), by_hand(m).to_string().as_bytes());
        group.bench_function(BenchmarkId::new("salvo_sse_event", name), |b| {
            b.iter(|| black_box(by_hand(black_box(m)).to_string()));
        });
        group.bench_function(BenchmarkId::new("encode", name), |b| {
            b.iter(|| black_box(sse::encode(black_box(&delivery))));
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .without_plots()
}

criterion_group! {
    name = benches;
    config = config();
    targets = encode
}
criterion_main!(benches);
