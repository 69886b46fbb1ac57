//! Cross-node delivery through Redis, on a single server and on a Redis Cluster in the same
//! run, against the in-memory hub: latency (publish on one node until a subscriber on the
//! other has it, one message at a time) and throughput (messages delivered per second to 10
//! subscribers per topic, on 12 topics spread over the cluster's slots, publishing in batches
//! of 64 concurrent publishes).
//!
//! Needs a Redis server (`redis-server --save "" --appendonly no`; `REDIS_URL`, default
//! `redis://127.0.0.1:6379`) and, to compare, a cluster (`REDIS_CLUSTER_URL`, e.g.
//! `redis+cluster://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002`; see the top of
//! `examples/cluster.rs` to start one). Run
//! `cargo run --release --example redis_bench --features redis`.
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use salvo_realtime::backend::Backend;
use salvo_realtime::redis::{RedisBackend, RedisConfig};
use salvo_realtime::{Delivery, HubConfig, Position, PubSub};

const LATENCY_ROUNDS: usize = 2_000;
const TOPICS: usize = 12;
const MESSAGES: usize = 64 * 40; // per topic
const SUBSCRIBERS: usize = 10; // per topic

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
    let topics: Vec<String> = (0..TOPICS).map(|t| format!("rate{t}")).collect();
    let mut readers = Vec::new();
    for topic in &topics {
        for _ in 0..SUBSCRIBERS {
            let mut sub = subscriber
                .subscribe(topic, Position::Live)
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
    }
    let started = Instant::now();
    // 64 publishes in flight, round-robin over the topics, then let the subscribers run (the
    // in-memory hub publishes synchronously, so it would otherwise never yield to them).
    for chunk in 0..MESSAGES * TOPICS / 64 {
        let batch = (0..64).map(|i| {
            let n = chunk * 64 + i;
            publisher.publish(&topics[n % TOPICS], format!("{n:064}"))
        });
        for r in futures_util::future::join_all(batch).await {
            r.expect("publish");
        }
        tokio::task::yield_now().await;
    }
    for r in readers {
        r.await.expect("reader");
    }
    (MESSAGES * SUBSCRIBERS * TOPICS) as f64 / started.elapsed().as_secs_f64()
}

async fn nodes(url: &str, config: &HubConfig) -> (PubSub<RedisBackend>, PubSub<RedisBackend>) {
    let connect = || async {
        let backend = RedisBackend::connect(RedisConfig::new(url).prefix("bench"))
            .await
            .unwrap_or_else(|e| panic!("Redis at {url} (see the top of this file): {e}"));
        PubSub::with_backend(config.clone(), backend)
    };
    (connect().await, connect().await)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let cluster = std::env::var("REDIS_CLUSTER_URL").ok();
    let config = HubConfig::new().history(1_000).channel_capacity(4_096);
    let local = PubSub::with_config(config.clone());

    let (p50, p99) = latency(&local, &local).await;
    println!("in-memory     latency p50 {p50:?} p99 {p99:?}");
    let local_rate = throughput(&local, &local).await;
    println!(
        "in-memory     {local_rate:>12.0} deliveries/s ({TOPICS} topics x {SUBSCRIBERS} subscribers, \
         {MESSAGES} messages of 64 B per topic)"
    );

    let mut targets = vec![("redis", url)];
    targets.extend(cluster.map(|c| ("cluster", c)));
    for (name, url) in targets {
        let (a, b) = nodes(&url, &config).await;
        let (r50, r99) = latency(&a, &b).await;
        println!("{name:<13} latency p50 {r50:?} p99 {r99:?} (cross-node; {url})");
        let rate = throughput(&a, &b).await;
        println!(
            "{name:<13} {rate:>12.0} deliveries/s cross-node = {:.0} messages/s ({:.1}% of in-memory)",
            rate / SUBSCRIBERS as f64,
            100.0 * rate / local_rate
        );
    }
}
