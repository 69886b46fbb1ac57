//! A typed JSON ticker over WebSocket and SSE: three symbols tick ten times a second, each tick
//! a `Tick` tagged with its symbol, and each subscriber receives only the symbols its filter lists (`?filter=` on connect, or a
//! channel `subscribe`'s `filter`). One of the README's measured apps: `tests/apps.rs` runs it
//! and checks its line count.
//!
//! `cargo run --example ticker`, then open
//! `http://127.0.0.1:8080/sse/prices?filter={"tags":{"ticker":["AAPL"]}}` (URL-encoded).
use std::time::Duration;

use salvo::prelude::*;
use salvo_realtime::{PubSub, Publication, sse::SseEndpoint, ws::WsEndpoint};
use serde::Serialize;

#[derive(Serialize)]
struct Tick {
    symbol: &'static str,
    price: f64,
}

pub(crate) fn app() -> Router {
    let hub = PubSub::new();
    let ws = Router::with_path("ws/{topic}").goal(WsEndpoint::new(hub.clone()));
    let sse = Router::with_path("sse/{topic}").get(SseEndpoint::new(hub.clone()));
    tokio::spawn(async move {
        for price in (0u32..).map(f64::from) {
            for symbol in ["AAPL", "MSFT", "GOOG"] {
                let tick = Publication::json(&Tick { symbol, price });
                let _ = hub.publish("prices", tick.tag("ticker", symbol)).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    Router::new().push(ws).push(sse)
}

#[tokio::main]
async fn main() {
    let acceptor = TcpListener::new("127.0.0.1:8080").bind().await;
    Server::new(acceptor).serve(app()).await;
}
