//! Allocations per delivered message, counted with `stats_alloc` as the global allocator, next
//! to a raw baseline (a bare `tokio::sync::broadcast` channel) in the same group:
//!
//! * `hub_fanout`: one `PubSub` topic with N subscribers; a round publishes a burst of k
//!   messages and every subscriber drains its `Subscription` until it would wait (as a woken
//!   connection task does). k = 1 is the paced case (every message wakes every subscriber),
//!   k = 64 the flat-out one. Counted: publish + every poll, divided by N x k deliveries.
//! * `sse_encode`: the same, plus `sse::encode` of every delivery (the bytes `SseEndpoint`
//!   writes); against Salvo's `SseEvent` built and formatted per subscriber.
//! * `loopback_ws` / `loopback_sse`: our `WsEndpoint` (raw framing) and `SseEndpoint` serving
//!   N real connections over 127.0.0.1 in this process, with allocation-free clients (each
//!   reads into a fixed buffer and counts a marker in the payload, no framing work). Counted:
//!   everything in the process from the first publish until every client has every message,
//!   so server side plus the runtime's I/O; the clients add nothing per message. A baseline on
//!   a socket is the tungstenite server of `examples/load.rs`, not measured here.
//!
//! The counts are printed (`allocs/delivery`) before each group is timed; `cargo bench --bench
//! alloc` prints them, and `benches/run-issue12.sh` keeps them with the load tables.
#![allow(missing_docs, clippy::unwrap_used)]

use std::alloc::System;
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures_util::{FutureExt, StreamExt};
use salvo::conn::{Acceptor, Listener};
use salvo::prelude::*;
use salvo::sse::SseEvent;
use salvo_realtime::hub::Subscription;
use salvo_realtime::sse::SseEndpoint;
use salvo_realtime::ws::{Framing, WsEndpoint};
use salvo_realtime::{Delivery, Position, PubSub, sse};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, broadcast};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const TOPIC: &str = "bench";
const SUBSCRIBERS: [usize; 2] = [10, 1_000];
const BURSTS: [usize; 2] = [1, 64];

/// A 64-byte message like the load harness's; the marker `"p":"x` occurs once in each.
fn message(id: u64) -> String {
    format!(
        "{{\"i\":{id:>10},\"t\":{:>20},\"p\":\"{}\"}}",
        0,
        "x".repeat(16)
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Allocations while `f` runs.
fn count<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let region = Region::new(GLOBAL);
    let out = f();
    (region.change().allocations, out)
}

fn report(group: &str, case: &str, n: usize, k: usize, allocs: usize, deliveries: usize) {
    println!(
        "allocs/delivery {group}/{case} N={n} k={k}: {:.3} ({allocs} allocations, {deliveries} deliveries)",
        allocs as f64 / deliveries.max(1) as f64
    );
}

/// Drains what is ready; returns how many deliveries it took.
fn drain_hub(sub: &mut Subscription, mut each: impl FnMut(&Delivery)) -> usize {
    let mut got = 0;
    while let Some(Some(delivery)) = sub.next().now_or_never() {
        each(&delivery);
        got += 1;
    }
    got
}

fn drain_raw(rx: &mut broadcast::Receiver<Bytes>, mut each: impl FnMut(&Bytes)) -> usize {
    let mut got = 0;
    while let Ok(m) = rx.try_recv() {
        each(&m);
        got += 1;
    }
    got
}

struct HubSetup {
    _rt: tokio::runtime::Runtime,
    hub: PubSub,
    subs: Vec<Subscription>,
}

fn hub_setup(n: usize) -> HubSetup {
    let rt = runtime();
    let (hub, subs) = rt.block_on(async {
        let hub = PubSub::new();
        let mut subs = Vec::with_capacity(n);
        for _ in 0..n {
            subs.push(hub.subscribe(TOPIC, Position::Live).await.unwrap());
        }
        (hub, subs)
    });
    HubSetup { _rt: rt, hub, subs }
}

/// One round on the hub: publish `msgs`, then every subscriber drains (and `each` per delivery).
fn hub_round(setup: &mut HubSetup, msgs: Vec<String>, mut each: impl FnMut(&Delivery)) -> usize {
    for m in msgs {
        setup.hub.publish(TOPIC, m).now_or_never().unwrap().unwrap();
    }
    setup
        .subs
        .iter_mut()
        .map(|sub| drain_hub(sub, &mut each))
        .sum()
}

fn raw_round(
    tx: &broadcast::Sender<Bytes>,
    rxs: &mut [broadcast::Receiver<Bytes>],
    msgs: Vec<String>,
    mut each: impl FnMut(&Bytes),
) -> usize {
    for m in msgs {
        let _ = tx.send(Bytes::from(m));
    }
    rxs.iter_mut().map(|rx| drain_raw(rx, &mut each)).sum()
}

fn burst(k: usize) -> Vec<String> {
    (0..k as u64).map(message).collect()
}

/// Warms a round up once (first-use allocations), then counts the next `ROUNDS` rounds.
const ROUNDS: usize = 8;

fn hub_fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("alloc_hub_fanout");
    for n in SUBSCRIBERS {
        for k in BURSTS {
            let mut setup = hub_setup(n);
            let (tx, _) = broadcast::channel::<Bytes>(1024);
            let mut rxs: Vec<_> = (0..n).map(|_| tx.subscribe()).collect();
            hub_round(&mut setup, burst(k), |_| {});
            raw_round(&tx, &mut rxs, burst(k), |_| {});
            let msgs: Vec<Vec<String>> = (0..ROUNDS).map(|_| burst(k)).collect();
            let (a, d) = count(|| {
                msgs.into_iter()
                    .map(|m| hub_round(&mut setup, m, |_| {}))
                    .sum::<usize>()
            });
            report("hub_fanout", "pubsub", n, k, a, d);
            let msgs: Vec<Vec<String>> = (0..ROUNDS).map(|_| burst(k)).collect();
            let (a, d) = count(|| {
                msgs.into_iter()
                    .map(|m| raw_round(&tx, &mut rxs, m, |_| {}))
                    .sum::<usize>()
            });
            report("hub_fanout", "raw_broadcast", n, k, a, d);

            let id = format!("N{n}_k{k}");
            group.throughput(Throughput::Elements((n * k) as u64));
            group.bench_function(BenchmarkId::new("pubsub", &id), |b| {
                b.iter_batched(
                    || burst(k),
                    |m| black_box(hub_round(&mut setup, m, |_| {})),
                    criterion::BatchSize::SmallInput,
                );
            });
            group.bench_function(BenchmarkId::new("raw_broadcast", &id), |b| {
                b.iter_batched(
                    || burst(k),
                    |m| black_box(raw_round(&tx, &mut rxs, m, |_| {})),
                    criterion::BatchSize::SmallInput,
                );
            });
        }
    }
    group.finish();
}

/// What a hand-written Salvo SSE handler does per subscriber: an `SseEvent`, then its text.
fn salvo_event(m: &Bytes) -> String {
    let text = std::str::from_utf8(m).unwrap_or_default().to_owned();
    SseEvent::default().text(text).to_string()
}

fn sse_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("alloc_sse_encode");
    for n in SUBSCRIBERS {
        for k in BURSTS {
            let mut setup = hub_setup(n);
            let (tx, _) = broadcast::channel::<Bytes>(1024);
            let mut rxs: Vec<_> = (0..n).map(|_| tx.subscribe()).collect();
            let encode = |d: &Delivery| {
                black_box(sse::encode(d));
            };
            let by_hand = |m: &Bytes| {
                black_box(salvo_event(m));
            };
            hub_round(&mut setup, burst(k), encode);
            raw_round(&tx, &mut rxs, burst(k), by_hand);
            let msgs: Vec<Vec<String>> = (0..ROUNDS).map(|_| burst(k)).collect();
            let (a, d) = count(|| {
                msgs.into_iter()
                    .map(|m| hub_round(&mut setup, m, encode))
                    .sum::<usize>()
            });
            report("sse_encode", "pubsub+encode", n, k, a, d);
            let msgs: Vec<Vec<String>> = (0..ROUNDS).map(|_| burst(k)).collect();
            let (a, d) = count(|| {
                msgs.into_iter()
                    .map(|m| raw_round(&tx, &mut rxs, m, by_hand))
                    .sum::<usize>()
            });
            report("sse_encode", "broadcast+salvo_sse_event", n, k, a, d);

            let id = format!("N{n}_k{k}");
            group.throughput(Throughput::Elements((n * k) as u64));
            group.bench_function(BenchmarkId::new("pubsub+encode", &id), |b| {
                b.iter_batched(
                    || burst(k),
                    |m| black_box(hub_round(&mut setup, m, encode)),
                    criterion::BatchSize::SmallInput,
                );
            });
            group.bench_function(BenchmarkId::new("broadcast+salvo_sse_event", &id), |b| {
                b.iter_batched(
                    || burst(k),
                    |m| black_box(raw_round(&tx, &mut rxs, m, by_hand)),
                    criterion::BatchSize::SmallInput,
                );
            });
        }
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// Over loopback sockets

/// Messages received by all clients together, and a wake-up when a target is reached.
struct Received {
    count: AtomicU64,
    target: AtomicU64,
    reached: Notify,
}

impl Received {
    fn add(&self, n: u64) {
        let now = self.count.fetch_add(n, Ordering::AcqRel) + n;
        if now >= self.target.load(Ordering::Acquire) {
            self.reached.notify_one();
        }
    }

    async fn wait_for(&self, target: u64) {
        self.target.store(target, Ordering::Release);
        while self.count.load(Ordering::Acquire) < target {
            let notified = self.reached.notified();
            if self.count.load(Ordering::Acquire) >= target {
                break;
            }
            if tokio::time::timeout(Duration::from_secs(10), notified)
                .await
                .is_err()
            {
                panic!(
                    "only {} of {target} deliveries",
                    self.count.load(Ordering::Acquire)
                );
            }
        }
    }
}

const MARKER: &[u8] = b"\"p\":\"x";

/// A client that reads into a fixed buffer and counts markers (across reads too).
async fn client(mut stream: tokio::net::TcpStream, received: Arc<Received>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut carry = 0usize;
    loop {
        let Ok(n) = stream.read(&mut buf[carry..]).await else {
            return;
        };
        if n == 0 {
            return;
        }
        let end = carry + n;
        let found = buf[..end]
            .windows(MARKER.len())
            .filter(|w| *w == MARKER)
            .count();
        if found > 0 {
            received.add(found as u64);
        }
        // Keep the tail that could start a marker.
        let keep = (MARKER.len() - 1).min(end);
        buf.copy_within(end - keep..end, 0);
        carry = keep;
    }
}

async fn serve(router: Router) -> SocketAddr {
    let acceptor = salvo::conn::TcpListener::new("127.0.0.1:0").bind().await;
    let addr = acceptor
        .holdings()
        .first()
        .and_then(|h| h.local_addr.clone().into_std())
        .unwrap();
    tokio::spawn(Server::new(acceptor).serve(router));
    addr
}

/// Connects `n` clients with `request`, waits for each response head (and, for SSE, the
/// `retry:` hint), then starts counting.
async fn connect(addr: SocketAddr, n: usize, request: &str, received: &Arc<Received>) {
    for _ in 0..n {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101") || head.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        tokio::spawn(client(stream, Arc::clone(received)));
    }
}

/// Publishes `rounds` bursts of `k` and waits for all `n` clients to have each burst; returns
/// the allocations counted and the deliveries made.
async fn loopback_rounds(
    hub: &PubSub,
    received: &Received,
    n: usize,
    k: usize,
    rounds: usize,
) -> (usize, usize) {
    let msgs: Vec<Vec<String>> = (0..rounds).map(|_| burst(k)).collect();
    let start = received.count.load(Ordering::Acquire);
    let region = Region::new(GLOBAL);
    let mut target = start;
    for round in msgs {
        for m in round {
            hub.publish(TOPIC, m).await.unwrap();
        }
        target += (n * k) as u64;
        received.wait_for(target).await;
    }
    let allocs = region.change().allocations;
    (allocs, (target - start) as usize)
}

fn loopback(c: &mut Criterion) {
    let n = 100;
    for (name, is_ws) in [("loopback_ws", true), ("loopback_sse", false)] {
        let mut group = c.benchmark_group(name);
        for k in BURSTS {
            let rt = runtime();
            let hub = PubSub::new();
            let received = Arc::new(Received {
                count: AtomicU64::new(0),
                target: AtomicU64::new(u64::MAX),
                reached: Notify::new(),
            });
            rt.block_on(async {
                let router = if is_ws {
                    Router::with_path("ws/{topic}").goal(
                        WsEndpoint::new(hub.clone())
                            .framing(Framing::Raw)
                            .max_connections_per_ip(10_000),
                    )
                } else {
                    Router::with_path("events/{topic}")
                        .get(SseEndpoint::new(hub.clone()).max_connections_per_ip(10_000))
                };
                let addr = serve(router).await;
                let request = if is_ws {
                    format!(
                        "GET /ws/{TOPIC} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
                         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                         Sec-WebSocket-Version: 13\r\n\r\n"
                    )
                } else {
                    format!(
                        "GET /events/{TOPIC} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
                    )
                };
                connect(addr, n, &request, &received).await;
                // Warm up: first-use buffers and registrations.
                loopback_rounds(&hub, &received, n, k, 2).await;
                let (a, d) = loopback_rounds(&hub, &received, n, k, ROUNDS).await;
                report(name, if is_ws { "ws_raw" } else { "sse" }, n, k, a, d);
            });
            group.throughput(Throughput::Elements((n * k) as u64));
            group.bench_function(BenchmarkId::new("round", format!("N{n}_k{k}")), |b| {
                b.iter(|| rt.block_on(loopback_rounds(&hub, &received, n, k, 1)));
            });
        }
        group.finish();
    }
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .without_plots()
}

criterion_group! {
    name = benches;
    config = config();
    targets = hub_fanout, sse_encode, loopback
}
criterion_main!(benches);
