//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

pub mod hooked;
pub mod paced;
pub mod remote;
pub mod ws_client;

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
        use salvo::conn::Listener;
        let acceptor = salvo::conn::TcpListener::new("127.0.0.1:0").bind().await;
        Self::serve(acceptor, router)
    }

    /// Like [`start`](Self::start), with every accepted socket's kernel send buffer fixed at
    /// about `bytes` (Linux doubles it; a set size also turns its autotuning off), so that a
    /// slow client holds the server's writes back instead of a few megabytes of kernel buffer.
    pub async fn start_with_send_buffer(router: salvo::Router, bytes: u32) -> Self {
        use salvo::conn::tcp::TcpAcceptor;
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        // Accepted sockets inherit the listener's buffer size.
        socket.set_send_buffer_size(bytes).expect("send buffer");
        socket
            .bind("127.0.0.1:0".parse().expect("address"))
            .expect("bind");
        let listener = socket.listen(1024).expect("listen");
        let acceptor = TcpAcceptor::try_from(listener).expect("acceptor");
        Self::serve(acceptor, router)
    }

    /// Serves `router` on `acceptor`'s (one) address.
    fn serve(acceptor: salvo::conn::tcp::TcpAcceptor, router: salvo::Router) -> Self {
        use salvo::conn::Acceptor;
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

/// The messages of the `tracing` events logged on this thread while it lives. A
/// `#[tokio::test]` runs its servers on its own current-thread runtime, so this sees what the
/// server logs: a signal for a test to wait on instead of a sleep.
pub struct Logs {
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl Logs {
    /// Captures from now on, on this thread.
    pub fn capture() -> Self {
        use tracing_subscriber::layer::SubscriberExt;
        let lines = std::sync::Arc::default();
        let subscriber =
            tracing_subscriber::registry().with(Capture(std::sync::Arc::clone(&lines)));
        Self {
            lines,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    /// Whether a message logged so far contains `text`.
    pub fn contains(&self, text: &str) -> bool {
        self.lines
            .lock()
            .expect("log lines")
            .iter()
            .any(|line| line.contains(text))
    }
}

struct Capture(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        self.0.lock().expect("log lines").push(message.0);
    }
}

pub mod proxy;
#[cfg(feature = "redis")]
pub mod redis_env;
