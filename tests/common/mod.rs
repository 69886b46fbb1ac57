//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use futures_util::{FutureExt, Stream, StreamExt};
use salvo_realtime::{Delivery, Message};

/// Everything the stream has ready now, without waiting (the in-memory hubs deliver
/// synchronously, so this is exact).
pub fn ready<S: Stream<Item = Delivery> + Unpin>(sub: &mut S) -> Vec<Delivery> {
    let mut out = Vec::new();
    while let Some(Some(d)) = sub.next().now_or_never() {
        out.push(d);
    }
    out
}

/// Only the messages among `deliveries`.
pub fn messages(deliveries: &[Delivery]) -> Vec<Message> {
    deliveries
        .iter()
        .filter_map(|d| match d {
            Delivery::Message(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

/// The text payloads of the messages among `deliveries`.
pub fn texts(deliveries: &[Delivery]) -> Vec<String> {
    messages(deliveries)
        .iter()
        .map(|m| m.payload().as_text().unwrap_or("<binary>").to_owned())
        .collect()
}

/// The offsets of the messages among `deliveries`.
pub fn offsets(deliveries: &[Delivery]) -> Vec<u64> {
    messages(deliveries)
        .iter()
        .map(|m| m.id().offset())
        .collect()
}

/// A Salvo server on 127.0.0.1 with an ephemeral port, for tests over real sockets.
pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub handle: salvo::server::ServerHandle,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    /// Serves `router` until stopped (or the test's runtime ends).
    pub async fn start(router: salvo::Router) -> Self {
        use salvo::conn::{Acceptor, Listener};
        let acceptor = salvo::conn::TcpListener::new("127.0.0.1:0").bind().await;
        let addr = acceptor
            .holdings()
            .first()
            .and_then(|h| h.local_addr.clone().into_std())
            .expect("bound address");
        let server = salvo::Server::new(acceptor);
        let handle = server.handle();
        let task = tokio::spawn(async move { server.serve(router).await });
        Self { addr, handle, task }
    }

    /// `http://127.0.0.1:port` + `path`.
    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `ws://127.0.0.1:port` + `path`.
    pub fn ws(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Stops the server at once and waits for it.
    pub async fn stop(self) {
        self.handle.stop_forceful();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.task).await;
    }
}

/// Polls `check` every 10 ms until it holds or 10 s pass; returns whether it held. For state that
/// settles asynchronously (a server noticing a disconnect), never for timing assertions.
pub async fn eventually(mut check: impl FnMut() -> bool) -> bool {
    for _ in 0..1000 {
        if check() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    check()
}

pub mod proxy;
#[cfg(feature = "redis")]
pub mod redis_env;
