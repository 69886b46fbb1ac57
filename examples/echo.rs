//! The smallest WebSocket echo: every text or binary message comes back as it was sent, under
//! the endpoint's default limits (64 KiB messages, 50 messages/s).
//!
//! Run `cargo run --example echo` and connect to `ws://127.0.0.1:8080/ws` (`BIND=host:port` to
//! listen elsewhere). Each connection gets a topic of its own on a `PubSub` that publishes
//! what it receives, and raw framing sends messages back without an envelope. Ctrl-C closes the
//! sockets with 1001 and stops.
use std::time::Duration;

use salvo::conn::Acceptor;
use salvo::prelude::*;
use salvo_realtime::ws::{Framing, WsEndpoint};
use salvo_realtime::{ConnectionId, Drain, HubConfig, InboundPolicy, PubSub, Rejection, Topic};

/// The echo endpoint at `/ws`.
pub(crate) fn router(drain: Drain) -> Router {
    // No history: a connection's topic is freed as soon as it closes.
    let hub = PubSub::with_config(HubConfig::new().inbound(InboundPolicy::Publish).history(0));
    let ws = WsEndpoint::new(hub)
        .drain(drain)
        .framing(Framing::Raw)
        .topics(|_, _| {
            let own = Topic::new(&ConnectionId::next().to_string());
            Ok(vec![
                own.map_err(|e| Rejection::bad_request(e.to_string()))?,
            ])
        });
    Router::with_path("ws").goal(ws)
}

#[tokio::main]
async fn main() {
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let acceptor = TcpListener::new(bind).bind().await;
    let addr = acceptor.holdings()[0]
        .local_addr
        .clone()
        .into_std()
        .expect("a TCP address");
    println!("echo: ws://{addr}/ws (Ctrl-C stops)");
    let (drain, server) = (Drain::new(), Server::new(acceptor));
    let (handle, closing) = (server.handle(), drain.clone());
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        closing.close_all(Duration::from_secs(5)).await;
        handle.stop_graceful(Duration::from_secs(5));
    });
    server.serve(router(drain)).await;
}
