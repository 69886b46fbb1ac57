//! Two chat nodes sharing rooms, presence and history through Redis: the chat of
//! `examples/chat.rs` served by two servers in one process, each with its own hub and Redis
//! connection, as two processes would be.
//!
//! Start a local Redis first (no persistence needed):
//!
//! ```text
//! redis-server --save "" --appendonly no
//! ```
//!
//! then `cargo run --example cluster --features redis` and open http://127.0.0.1:8080/ in one tab
//! and http://127.0.0.1:8081/ in another: both see each other's messages and presence, and a
//! tab may reconnect to the other node and resume. `REDIS_URL` picks another server (default
//! `redis://127.0.0.1:6379`), `BIND` and `BIND2` other addresses.
//!
//! The same runs on a Redis Cluster (7.0 or later): give its seed nodes as
//! `REDIS_URL=redis+cluster://127.0.0.1:7000,127.0.0.1:7001`. Rooms then spread over the
//! cluster's masters (sharded pub/sub). A local cluster to try it on:
//!
//! ```text
//! for p in 7000 7001 7002 7003 7004 7005; do
//!   redis-server --port $p --cluster-enabled yes --cluster-config-file nodes-$p.conf \
//!     --save "" --appendonly no --daemonize yes
//! done
//! redis-cli --cluster create 127.0.0.1:7000 127.0.0.1:7001 127.0.0.1:7002 \
//!   127.0.0.1:7003 127.0.0.1:7004 127.0.0.1:7005 --cluster-replicas 1 --cluster-yes
//! ```
use std::time::Duration;

use salvo::conn::Acceptor;
use salvo::conn::tcp::TcpAcceptor;
use salvo::prelude::*;
use salvo_realtime::redis::{RedisBackend, RedisConfig};
use salvo_realtime::{Drain, HubConfig, Rooms};

/// The chat page, client script and WebSocket route, reused as they are.
#[allow(dead_code)]
#[path = "chat.rs"]
mod chat;

async fn node(bind: String, redis_url: &str) -> (Server<TcpAcceptor>, Router, Drain) {
    let backend = RedisBackend::connect(RedisConfig::new(redis_url))
        .await
        .unwrap_or_else(|e| panic!("cannot reach Redis at {redis_url}: {e} (start one: see the top of examples/cluster.rs)"));
    let mode = if backend.is_cluster() {
        "Redis Cluster"
    } else {
        "Redis"
    };
    let rooms = Rooms::with_backend(HubConfig::new(), backend);
    let acceptor = TcpListener::new(bind).bind().await;
    let addr = acceptor.holdings()[0]
        .local_addr
        .clone()
        .into_std()
        .expect("a TCP address");
    println!("cluster node on {mode} {redis_url}: open http://{addr}/");
    let drain = Drain::new();
    let router = chat::router(rooms, drain.clone());
    (Server::new(acceptor), router, drain)
}

#[tokio::main]
async fn main() {
    let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let binds = [
        std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:8080".into()),
        std::env::var("BIND2").unwrap_or_else(|_| "127.0.0.1:8081".into()),
    ];
    let mut servers = Vec::new();
    for bind in binds {
        let (server, router, drain) = node(bind, &redis_url).await;
        let handle = server.handle();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            drain.close_all(Duration::from_secs(5)).await; // sockets get 1001 "going away"
            handle.stop_graceful(Duration::from_secs(5));
        });
        servers.push(tokio::spawn(server.serve(router)));
    }
    println!("(Ctrl-C stops both nodes)");
    for server in servers {
        let _ = server.await;
    }
}
