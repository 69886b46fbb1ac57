//! The smallest WebSocket echo: every text or binary message comes back as it was sent, under
//! the endpoint's default limits (64 KiB messages, 50 messages/s).
//!
//! Run `cargo run --example echo` and connect to `ws://127.0.0.1:8080/ws` (`BIND=host:port` to
//! listen elsewhere; port 0 picks a free one, and the address is printed). Each connection gets a
//! topic of its own on a `PubSub` that publishes what it receives, and raw framing sends messages
//! back without an envelope. Ctrl-C closes the sockets with 1001 and stops.
//!
//! Two knobs lift the limits, as the Autobahn conformance run (`.ci/autobahn`) needs:
//! `ECHO_MAX_MESSAGE_BYTES=n` accepts and echoes messages of up to `n` bytes (both the endpoint's
//! message limit and the hub's payload limit), and `ECHO_RATE_LIMIT=off` turns off the
//! per-connection rate limit.
use std::time::Duration;

use salvo::conn::Acceptor;
use salvo::prelude::*;
use salvo_realtime::hub::InboundPolicy;
use salvo_realtime::ws::{Framing, WsEndpoint};
use salvo_realtime::{ConnectionId, Drain, HubConfig, PubSub, Topic};

/// What the environment knobs change; the default keeps the endpoint's and hub's own limits.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Limits {
    /// Largest message echoed, in bytes (`None`: the defaults, 64 KiB).
    pub(crate) max_message: Option<usize>,
    /// No per-connection rate limit.
    pub(crate) unlimited_rate: bool,
}

impl Limits {
    /// `ECHO_MAX_MESSAGE_BYTES` and `ECHO_RATE_LIMIT` (`on` or `off`); panics on a bad value.
    fn from_env() -> Self {
        let max_message = std::env::var("ECHO_MAX_MESSAGE_BYTES").ok().map(|n| {
            n.parse()
                .unwrap_or_else(|_| panic!("ECHO_MAX_MESSAGE_BYTES={n}: expected a byte count"))
        });
        let unlimited_rate = match std::env::var("ECHO_RATE_LIMIT").as_deref() {
            Err(_) | Ok("on") => false,
            Ok("off") => true,
            Ok(other) => panic!("ECHO_RATE_LIMIT={other}: expected on or off"),
        };
        Self {
            max_message,
            unlimited_rate,
        }
    }
}

/// The echo endpoint at `/ws`, with the default limits.
#[allow(dead_code, reason = "tests/browser.rs serves it")]
pub(crate) fn router(drain: Drain) -> Router {
    router_with(drain, Limits::default())
}

/// The echo endpoint at `/ws`, with `limits`.
pub(crate) fn router_with(drain: Drain, limits: Limits) -> Router {
    // No history: a connection's topic is freed as soon as it closes.
    let mut config = HubConfig::new().inbound(InboundPolicy::Publish).history(0);
    if let Some(bytes) = limits.max_message {
        config = config.max_payload(bytes);
    }
    let mut ws = WsEndpoint::new(PubSub::with_config(config))
        .drain(drain)
        .framing(Framing::Raw)
        .topics(|_, _| Ok(vec![Topic::new(&ConnectionId::next().to_string())?]));
    if let Some(bytes) = limits.max_message {
        ws = ws.max_message_size(bytes);
    }
    if limits.unlimited_rate {
        ws = ws.rate_limit(None);
    }
    Router::with_path("ws").goal(ws)
}

#[tokio::main]
async fn main() {
    let limits = Limits::from_env();
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
    server.serve(router_with(drain, limits)).await;
}
