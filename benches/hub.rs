//! Hub core benchmarks. Every group has a raw baseline, so each figure reads as a ratio:
//!
//! * `fanout_ct/*`, `fanout_mt/*`: one publisher, N subscriber tasks, `PubSub` against a bare
//!   `tokio::sync::broadcast` channel, on a current-thread runtime and on multi-thread runtimes
//!   with 1 and 2 workers (`*_1w`, `*_2w`: does fan-out scale with workers?);
//! * `rooms_broadcast/*`: `Rooms::broadcast` to a room of N connections against the same channel;
//! * `counter/*`: `Counted<PubSub>` against bare `PubSub` against the channel, N = 1,000;
//! * `join_leave/*`: a connection joining and leaving, against `Sender::subscribe` + drop;
//! * `replay_1000/*`: a subscriber replaying 1,000 messages of history, against copying them out
//!   of a `Mutex<VecDeque>`.
//!
//! Run `cargo bench --bench hub` (a few minutes); `cargo bench --bench hub -- fanout_ct` runs one
//! group. See BENCHMARKS.md for the figures.
#![allow(missing_docs)]

use std::collections::VecDeque;
use std::future::Future;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};
use futures_util::{FutureExt, Stream, StreamExt};
use salvo_realtime::{
    Connection, Counted, Delivery, Hub, HubConfig, Identity, Payload, Position, PubSub,
    Publication, Rooms, Topic,
};
use tokio::runtime::Runtime;
use tokio::sync::{Notify, broadcast};

/// Messages published per measured round; below the default channel capacity (256), so no
/// subscriber ever lags and both sides do the same work.
const ROUND: usize = 64;
const SIZES: [usize; 4] = [1, 100, 1_000, 10_000];
const TOPIC: &str = "bench";

fn payload() -> Payload {
    // 64 bytes, like the load harness's messages.
    let text = format!(
        "{{\"i\":{:>10},\"t\":{:>20},\"p\":\"{}\"}}",
        0,
        0,
        "x".repeat(16)
    );
    debug_assert_eq!(text.len(), 64);
    Payload::from(text)
}

fn current_thread() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn multi_thread(workers: usize) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("runtime")
}

fn one_worker() -> Runtime {
    multi_thread(1)
}

fn two_workers() -> Runtime {
    multi_thread(2)
}

/// Counts subscribers that have received the whole round.
struct Round {
    remaining: AtomicUsize,
    done: Notify,
}

impl Round {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            remaining: AtomicUsize::new(0),
            done: Notify::new(),
        })
    }

    fn finished_one(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_one();
        }
    }
}

/// A subscriber task over a hub subscription: counts messages, signals every full round.
async fn hub_subscriber<S: Stream<Item = Delivery> + Unpin>(mut sub: S, round: Arc<Round>) {
    let mut got = 0;
    while let Some(d) = sub.next().await {
        if let Delivery::Message(m) = d {
            black_box(&m);
            got += 1;
            if got == ROUND {
                got = 0;
                round.finished_one();
            }
        }
    }
}

/// The same over a bare broadcast receiver.
async fn raw_subscriber(mut rx: broadcast::Receiver<Bytes>, round: Arc<Round>) {
    let mut got = 0;
    while let Ok(m) = rx.recv().await {
        black_box(&m);
        got += 1;
        if got == ROUND {
            got = 0;
            round.finished_one();
        }
    }
}

/// Times `iters` rounds: publish `ROUND` messages, wait until all `n` subscribers have them.
fn time_rounds<F, Fut>(
    rt: &Runtime,
    round: &Arc<Round>,
    n: usize,
    iters: u64,
    publish: F,
) -> Duration
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            round.remaining.store(n, Ordering::Release);
            for _ in 0..ROUND {
                publish().await;
            }
            round.done.notified().await;
        }
        start.elapsed()
    })
}

/// A runtime with `n` raw subscribers, and the channel's sender.
fn raw_setup(rt: &Runtime, n: usize, round: &Arc<Round>) -> broadcast::Sender<Bytes> {
    let (tx, _) = broadcast::channel(256);
    for _ in 0..n {
        let rx = tx.subscribe();
        rt.spawn(raw_subscriber(rx, Arc::clone(round)));
    }
    tx
}

async fn pubsub_subscribe(hub: &PubSub) -> salvo_realtime::hub::Subscription {
    hub.subscribe(TOPIC, Position::Live)
        .await
        .expect("subscribe")
}

fn pubsub_setup(rt: &Runtime, n: usize, round: &Arc<Round>) -> PubSub {
    let hub = PubSub::new();
    for _ in 0..n {
        let sub = rt.block_on(pubsub_subscribe(&hub));
        rt.spawn(hub_subscriber(sub, Arc::clone(round)));
    }
    hub
}

/// The baseline of every fan-out figure: one bare broadcast channel, `n` receiving tasks.
fn bench_raw_broadcast(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    make_rt: fn() -> Runtime,
    n: usize,
) {
    let bytes = payload().bytes().clone();
    let rt = make_rt();
    let round = Round::new();
    let tx = raw_setup(&rt, n, &round);
    group.bench_function(BenchmarkId::new(name, n), |b| {
        b.iter_custom(|iters| {
            time_rounds(&rt, &round, n, iters, || {
                let _ = tx.send(bytes.clone());
                std::future::ready(())
            })
        });
    });
}

/// `PubSub` publishing to `n` subscribers, measured like the baseline.
fn bench_pubsub(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    make_rt: fn() -> Runtime,
    n: usize,
) {
    let payload = payload();
    let rt = make_rt();
    let round = Round::new();
    let hub = pubsub_setup(&rt, n, &round);
    group.bench_function(BenchmarkId::new(name, n), |b| {
        b.iter_custom(|iters| {
            time_rounds(&rt, &round, n, iters, || async {
                hub.publish(TOPIC, payload.clone()).await.expect("publish");
            })
        });
    });
}

/// `runtimes`: (suffix of the bench names, runtime) pairs measured side by side.
/// Named runtime builders a fan-out group runs on.
type Runtimes<'a> = [(&'a str, fn() -> Runtime)];

fn fanout(c: &mut Criterion, group_name: &str, runtimes: &Runtimes<'_>) {
    let mut group = c.benchmark_group(group_name);
    for n in SIZES {
        group.throughput(Throughput::Elements((n * ROUND) as u64));
        for (suffix, make_rt) in runtimes {
            bench_raw_broadcast(&mut group, &format!("raw_broadcast{suffix}"), *make_rt, n);
            bench_pubsub(&mut group, &format!("pubsub{suffix}"), *make_rt, n);
        }
    }
    group.finish();
}

fn fanout_current_thread(c: &mut Criterion) {
    fanout(c, "fanout_ct", &[("", current_thread)]);
}

/// The same on a multi-thread runtime with 1 worker and with 2: whether fan-out scales with
/// workers (the publisher runs on the bench thread, outside the workers, in both).
fn fanout_multi_thread(c: &mut Criterion) {
    fanout(c, "fanout_mt", &[("_1w", one_worker), ("_2w", two_workers)]);
}

fn rooms_broadcast(c: &mut Criterion) {
    let mut group = c.benchmark_group("rooms_broadcast");
    let bytes = payload().bytes().clone();
    let payload = payload();
    for n in [100, 1_000, 10_000] {
        group.throughput(Throughput::Elements((n * ROUND) as u64));
        {
            let rt = current_thread();
            let round = Round::new();
            let tx = raw_setup(&rt, n, &round);
            group.bench_function(BenchmarkId::new("raw_broadcast", n), |b| {
                b.iter_custom(|iters| {
                    time_rounds(&rt, &round, n, iters, || {
                        let _ = tx.send(bytes.clone());
                        std::future::ready(())
                    })
                });
            });
        }
        {
            let rt = current_thread();
            let round = Round::new();
            let rooms = Rooms::new();
            let room = Topic::new(TOPIC).expect("topic");
            for _ in 0..n {
                // Anonymous members: no presence events to skip (join_leave measures those);
                // the subscriber task skips the presence snapshot each gets first.
                let conn = Connection::new().subscribe(room.clone(), Position::Live);
                let sub = rt.block_on(rooms.join(&conn)).expect("join");
                rt.spawn(hub_subscriber(sub, Arc::clone(&round)));
            }
            group.bench_function(BenchmarkId::new("rooms", n), |b| {
                b.iter_custom(|iters| {
                    time_rounds(&rt, &round, n, iters, || async {
                        rooms
                            .broadcast(TOPIC, payload.clone())
                            .await
                            .expect("broadcast");
                    })
                });
            });
        }
    }
    group.finish();
}

fn counter(c: &mut Criterion) {
    let mut group = c.benchmark_group("counter");
    let n = 1_000;
    let payload = payload();
    group.throughput(Throughput::Elements((n * ROUND) as u64));
    bench_raw_broadcast(&mut group, "raw_broadcast", current_thread, n);
    bench_pubsub(&mut group, "pubsub", current_thread, n);
    {
        let rt = current_thread();
        let round = Round::new();
        let hub = Counted::new(PubSub::new());
        let topic = Topic::new(TOPIC).expect("topic");
        for _ in 0..n {
            let conn = Connection::new().subscribe(topic.clone(), Position::Live);
            let sub = rt.block_on(hub.join(&conn)).expect("join");
            rt.spawn(hub_subscriber(sub, Arc::clone(&round)));
        }
        group.bench_function(BenchmarkId::new("counted_pubsub", n), |b| {
            b.iter_custom(|iters| {
                time_rounds(&rt, &round, n, iters, || async {
                    hub.inner()
                        .publish(TOPIC, payload.clone())
                        .await
                        .expect("publish");
                })
            });
        });
    }
    group.finish();
}

fn join_leave(c: &mut Criterion) {
    let mut group = c.benchmark_group("join_leave");
    group.throughput(Throughput::Elements(1));
    let rt = current_thread();
    let topic = Topic::new(TOPIC).expect("topic");

    let (tx, _keep) = broadcast::channel::<Bytes>(256);
    group.bench_function("raw_subscribe_drop", |b| {
        b.iter(|| drop(black_box(tx.subscribe())));
    });

    // A subscriber that stays, so the topic isn't freed and recreated every iteration.
    let pubsub = PubSub::new();
    let _stay = rt.block_on(pubsub_subscribe(&pubsub));
    let conn = Connection::new().subscribe(topic.clone(), Position::Live);
    group.bench_function("pubsub", |b| {
        b.iter(|| {
            rt.block_on(async {
                let sub = pubsub.join(&conn).await.expect("join");
                pubsub.leave(&conn, sub).await;
            });
        });
    });

    let counted = Counted::new(PubSub::new());
    let _stay_counted = rt.block_on(pubsub_subscribe(counted.inner()));
    group.bench_function("counted_pubsub", |b| {
        b.iter(|| {
            rt.block_on(async {
                let sub = counted.join(&conn).await.expect("join");
                counted.leave(&conn, sub).await;
            });
        });
    });

    // Rooms with presence: a signed-in user joining logs presence.join, gets a snapshot of the
    // members, and leaving logs presence.leave. The snapshot lists every member, so its cost
    // grows with the room.
    for members in [1usize, 1_000] {
        let rooms = Rooms::new();
        let mut keep = Vec::new();
        for i in 0..members {
            let who = Connection::new()
                .authenticated(Identity::new(format!("member{i}")))
                .subscribe(topic.clone(), Position::Live);
            let sub = rt.block_on(rooms.join(&who)).expect("join");
            keep.push(sub);
        }
        let conn = Connection::new()
            .authenticated(Identity::new("newcomer"))
            .subscribe(topic.clone(), Position::Live);
        group.bench_function(BenchmarkId::new("rooms_presence", members), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut sub = rooms.join(&conn).await.expect("join");
                    // Read the presence snapshot, as a connection would.
                    black_box(sub.next().now_or_never());
                    rooms.leave(&conn, sub).await;
                });
            });
        });
        // The members' subscriptions fill with presence events; history keeps them bounded.
        drop(keep);
    }
    group.finish();
}

fn replay(c: &mut Criterion) {
    const N: usize = 1_000;
    let mut group = c.benchmark_group("replay_1000");
    group.throughput(Throughput::Elements(N as u64));
    let rt = current_thread();
    let payload = payload();

    let history: parking_lot::Mutex<VecDeque<Bytes>> =
        parking_lot::Mutex::new((0..N).map(|_| payload.bytes().clone()).collect());
    group.bench_function("raw_vecdeque", |b| {
        b.iter(|| {
            // Copy out in chunks under the lock, as a hand-written history would.
            let mut got = 0;
            while got < N {
                let chunk: Vec<Bytes> = history.lock().iter().skip(got).take(64).cloned().collect();
                got += chunk.len();
                for m in chunk {
                    black_box(m);
                }
            }
        });
    });

    let hub = PubSub::with_config(HubConfig::new().history(N));
    let first = rt.block_on(async {
        let first = hub.publish(TOPIC, payload.clone()).await.expect("publish");
        for _ in 1..N {
            hub.publish(TOPIC, Publication::new(payload.clone()))
                .await
                .expect("publish");
        }
        first
    });
    // Keeps the topic (and its history) alive between iterations.
    let _stay = rt.block_on(pubsub_subscribe(&hub));
    let drain = |from: Position| {
        rt.block_on(async {
            let mut sub = hub.subscribe(TOPIC, from).await.expect("subscribe");
            let mut got = 0;
            while let Some(Some(d)) = sub.next().now_or_never() {
                black_box(&d);
                got += 1;
            }
            assert!(got >= N - 1, "replayed only {got}");
        });
    };
    group.bench_function("pubsub_recent", |b| b.iter(|| drain(Position::Recent(N))));
    let before_first = salvo_realtime::MessageId::new(first.epoch(), first.offset() - 1);
    group.bench_function("pubsub_after_id", |b| {
        b.iter(|| drain(Position::After(before_first)));
    });
    group.finish();
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
    targets = fanout_current_thread, fanout_multi_thread, rooms_broadcast, counter, join_leave, replay
}
criterion_main!(benches);
