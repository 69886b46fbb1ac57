//! The smallest WebSocket echo: every text or binary message comes back as it was sent, under
//! the endpoint's default limits (64 KiB messages, 50 messages/s).
//!
//! Run `cargo run --example echo` and connect to `ws://127.0.0.1:8080/ws` (`BIND=host:port` to
//! listen elsewhere). Each connection gets a topic of its own on a `PubSub` that publishes
//! what it receives, and raw framing sends messages back without an envelope.
use salvo::conn::Acceptor;
use salvo::prelude::*;
use salvo_realtime::ws::{Framing, WsEndpoint};
use salvo_realtime::{ConnectionId, HubConfig, InboundPolicy, PubSub, Rejection, Topic};

/// The echo endpoint at `/ws`.
pub(crate) fn router() -> Router {
    // No history: a connection's topic is freed as soon as it closes.
    let hub = PubSub::with_config(HubConfig::new().inbound(InboundPolicy::Publish).history(0));
    let ws = WsEndpoint::new(hub).framing(Framing::Raw).topics(|_, _| {
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
    println!("echo: ws://{addr}/ws");
    Server::new(acceptor).serve(router()).await;
}
