//! Cross-node delivery through Redis against the in-memory hub: latency (publish on one node
//! until a subscriber on the other has it, one message at a time) and throughput (messages
//! delivered per second to 10 subscribers, publishing in batches of 64 concurrent publishes).
//!
//! Needs a Redis server (`redis-server --save "" --appendonly no`; `REDIS_URL`, default
//! `redis://127.0.0.1:6379`). Run `cargo run --release --example redis_bench --features redis`.
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use salvo_realtime::backend::Backend;
use salvo_realtime::redis::{RedisBackend, RedisConfig};
use salvo_realtime::{Delivery, HubConfig, Position, PubSub};

const LATENCY_ROUNDS: usize = 2_000;
const MESSAGES: usize = 64 * 320;
const SUBSCRIBERS: usize = 10;

async fn latency<A: Backend, B: Backend>(
    publisher: &PubSub<A>,
    subscriber: &PubSub<B>,
) -> (Duration, Duration) {
    let mut sub = subscriber
        .subscribe("lat", Position::Live)
        .await
        .expect("subscribe");
    let mut samples = Vec::with_capacity(LATENCY_ROUNDS);
    for i in 0..LATENCY_ROUNDS {
        let started = Instant::now();
        publisher
            .publish("lat", format!("{i}"))
            .await
            .expect("publish");
        loop {
            match sub.next().await {
                Some(Delivery::Message(_)) => break,
                Some(_) => {}
                None => panic!("stream ended"),
            }
        }
        samples.push(started.elapsed());
    }
    samples.sort();
    (
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
    )
}

async fn throughput<A: Backend, B: Backend>(publisher: &PubSub<A>, subscriber: &PubSub<B>) -> f64 {
    let mut readers = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let mut sub = subscriber
            .subscribe("rate", Position::Live)
            .await
            .expect("subscribe");
        readers.push(tokio::spawn(async move {
            let mut n = 0;
            while n < MESSAGES {
                match sub.next().await {
                    Some(Delivery::Message(_)) => n += 1,
                    Some(other) => panic!("unexpected {other:?}"),
                    None => panic!("stream ended"),
                }
            }
        }));
    }
    let started = Instant::now();
    // 64 publishes in flight, then let the subscribers run (the in-memory hub publishes
    // synchronously, so it would otherwise never yield to them).
    for chunk in 0..MESSAGES / 64 {
        let batch = (0..64).map(|i| publisher.publish("rate", format!("{:064}", chunk * 64 + i)));
        for r in futures_util::future::join_all(batch).await {
            r.expect("publish");
        }
        tokio::task::yield_now().await;
    }
    for r in readers {
        r.await.expect("reader");
    }
    (MESSAGES * SUBSCRIBERS) as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let config = HubConfig::new().history(1_000).channel_capacity(4_096);
    let local = PubSub::with_config(config.clone());
    let connect = || async {
        let backend = RedisBackend::connect(RedisConfig::new(url.as_str()).prefix("bench"))
            .await
            .expect("Redis (see the top of this file)");
        PubSub::with_backend(config.clone(), backend)
    };
    let (a, b) = (connect().await, connect().await);

    let (p50, p99) = latency(&local, &local).await;
    println!("in-memory  latency p50 {p50:?} p99 {p99:?}");
    let (r50, r99) = latency(&a, &b).await;
    println!("redis      latency p50 {r50:?} p99 {r99:?} (cross-node)");
    println!(
        "added      latency p50 {:?} p99 {:?}",
        r50.saturating_sub(p50),
        r99.saturating_sub(p99)
    );

    let local_rate = throughput(&local, &local).await;
    println!(
        "in-memory  {local_rate:>12.0} deliveries/s ({SUBSCRIBERS} subscribers, {MESSAGES} messages of 64 B)"
    );
    let redis_rate = throughput(&a, &b).await;
    println!(
        "redis      {redis_rate:>12.0} deliveries/s cross-node = {:.0} messages/s ({:.1}% of in-memory)",
        redis_rate / SUBSCRIBERS as f64,
        100.0 * redis_rate / local_rate
    );
}
