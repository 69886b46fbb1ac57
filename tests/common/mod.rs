//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

pub mod hooked;
pub mod remote;

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

    /// Like [`start`](Self::start), with every accepted socket's kernel send buffer fixed at
    /// about `bytes` (Linux doubles it; a set size also turns its autotuning off), so that a
    /// slow client holds the server's writes back instead of a few megabytes of kernel buffer.
    pub async fn start_with_send_buffer(router: salvo::Router, bytes: u32) -> Self {
        use salvo::conn::Acceptor;
        use salvo::conn::tcp::TcpAcceptor;
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        // Accepted sockets inherit the listener's buffer size.
        socket.set_send_buffer_size(bytes).expect("send buffer");
        socket
            .bind("127.0.0.1:0".parse().expect("address"))
            .expect("bind");
        let listener = socket.listen(1024).expect("listen");
        let acceptor = TcpAcceptor::try_from(listener).expect("acceptor");
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

/// How a [`Proxy`] passes the server's bytes on to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// As fast as they come.
    Free,
    /// At most `bytes` per `every` (one read of the server's socket per tick): a client that
    /// reads slowly but steadily.
    Rate {
        bytes: usize,
        every: std::time::Duration,
    },
    /// Not at all: the proxy stops reading the server's socket (a client that stopped
    /// reading), until the pace changes.
    Stalled,
}

/// A TCP proxy on 127.0.0.1 in front of a server, for one client connection: the client's
/// bytes go through as they come, the server's at the [`Pace`] the test sets (and may change
/// at any time). Its socket to the server has a small receive buffer, so the pace reaches the
/// server's writes instead of filling a kernel buffer.
pub struct Proxy {
    pub addr: std::net::SocketAddr,
    pace: tokio::sync::watch::Sender<Pace>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens for one client and forwards it to `target`.
    pub async fn start(target: std::net::SocketAddr, pace: Pace) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let (tx, mut rx) = tokio::sync::watch::channel(pace);
        let task = tokio::spawn(async move {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket
                .set_recv_buffer_size(16 * 1024)
                .expect("receive buffer");
            let Ok(server) = socket.connect(target).await else {
                return;
            };
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            let upstream = tokio::spawn(async move {
                let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                let _ = server_write.shutdown().await;
            });
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let pace = *rx.borrow_and_update();
                let limit = match pace {
                    Pace::Stalled => {
                        if rx.changed().await.is_err() {
                            break;
                        }
                        continue;
                    }
                    Pace::Free => buf.len(),
                    Pace::Rate { bytes, every } => {
                        tokio::time::sleep(every).await;
                        bytes.min(buf.len())
                    }
                };
                let n = tokio::select! {
                    read = server_read.read(&mut buf[..limit]) => match read {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    },
                    changed = rx.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        continue;
                    }
                };
                if client_write.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = client_write.shutdown().await;
            upstream.abort();
        });
        Self {
            addr,
            pace: tx,
            task,
        }
    }

    /// Changes how the server's bytes go through, from now on.
    pub fn pace(&self, pace: Pace) {
        self.pace.send_replace(pace);
    }

    /// `ws://` + the proxy's address + `path`.
    pub fn ws(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
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
