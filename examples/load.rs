//! Load harness: drives a real server over loopback with thousands of WebSocket or SSE clients
//! and one publisher, and reports throughput, latency, loss, connection rate and memory; the
//! same binary serves our endpoints and the baseline servers they are compared with.
//!
//! ```text
//! cargo run --release --example load -- run --kind ours-ws --clients 1000 --messages 2000
//! cargo run --release --example load -- run --kind ours --ws 50 --sse 50 --messages 200 --check
//! cargo run --release --example load -- suite --out bench-results.jsonl
//! cargo run --release --example load -- suite --only issue12 --reps 3 --out issue12.jsonl
//! cargo run --release --example load -- plot bench-results.jsonl > benches/throughput.svg
//! ```
//!
//! `run` starts `load server --kind ...` as a child process pinned to one core with `taskset`
//! and itself on the other, connects the clients (spread over 127.0.0.x source addresses),
//! waits until the server holds them all, measures the server's idle RSS per connection, asks
//! the server to publish `--messages` 64-byte messages (each carrying its id and the publish
//! time) flat out or at `--rate` per second, and waits until every client has every message or
//! the timeout passes. Only loopback is touched; counts and time are bounded. BENCHMARKS.md
//! describes every option and figure.
//!
//! Servers (`--kind`): `ours-ws`, `ours-ws-raw`, `ours-sse`, `ours` (both, `--ws N --sse M`),
//! `ours-channels` (`WsEndpoint` on `Rooms`; clients negotiate `salvo-realtime.v1` and send a
//! `subscribe` command), `ours-rooms-ws` (the same hub, topic in the path, no protocol), and
//! the baselines `tungstenite`, `salvo-handwritten`, `axum-ws`, `salvo-sse`, `axum-sse`.
//!
//! Clients: the WebSocket client timestamps a message when its frame is parsed. The SSE
//! client reads the stream as a browser's `EventSource` does (fields `data`/`event`/`id`/
//! `retry`, comments skipped, one event dispatched at the blank line with its data lines
//! joined, the last event id kept) and timestamps at dispatch. Unlike a browser it never
//! reconnects (a dropped stream counts as dropped) and handles LF and CRLF line ends, not a
//! bare CR. Every row reports server CPU per delivery ((utime + stime) from `/proc/<pid>/stat`
//! over the delivery, at 10 ms resolution, divided by deliveries), the load average at the
//! start and the server's involuntary context switches (on a busy machine, the runs whose
//! server was preempted measured the machine).
//!
//! `LOAD_SERVER_PREFIX="valgrind --tool=massif"` wraps the server in a profiler;
//! `LOAD_HTTP1="writev=false,half_close=true,max_buf_size=8192"` sets hyper's HTTP/1 options
//! on the Salvo-based servers (`Server::http1_mut()`).
#![allow(missing_docs, unreachable_pub, clippy::unwrap_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BytesMut};
use futures_util::{FutureExt, SinkExt, StreamExt};
use salvo::conn::{Acceptor, Listener};
use salvo::prelude::*;
use salvo::sse::{SseEvent, SseKeepAlive};
use salvo::websocket::{Message as SalvoMessage, WebSocketUpgrade};
use salvo_realtime::sse::SseEndpoint;
use salvo_realtime::ws::{Framing, WsEndpoint};
use salvo_realtime::{HubConfig, PubSub, Rooms};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, broadcast, mpsc, watch};
use tokio_stream::wrappers::{BroadcastStream, UnboundedReceiverStream};
use tokio_tungstenite::tungstenite::{Message as TMessage, Utf8Bytes};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Hard bounds: never more clients, messages or seconds than these.
const MAX_CLIENTS: usize = 18_000;
const MAX_MESSAGES: u64 = 1_000_000;
const MAX_SECONDS: u64 = 600;
/// Messages each server can buffer for a slow client before it loses any: our hub's history,
/// the baselines' channel capacity (the hand-written Salvo server's queues are unbounded).
const BUFFERED: usize = 65_536;
/// The flat-out publisher yields to the scheduler after this many messages, so it shares the
/// server's core with the connections the way a publishing client's reader task would.
const FLAT_OUT_BURST: u64 = 64;
const TOPIC: &str = "bench";

fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_default();
    let opts = Opts::parse(args)?;
    match command.as_str() {
        "server" => runtime()?.block_on(server(&opts)),
        "run" => {
            pin_self(&opts)?;
            let cfg = RunConfig::from_opts(&opts)?;
            let result = runtime()?.block_on(run(&cfg))?;
            println!("{}", result.human());
            if opts.flag("json") {
                println!("{}", result.json());
            }
            if opts.flag("check") && !result.clean() {
                eprintln!("FAILED: lost or duplicated messages, or clients missing");
                std::process::exit(1);
            }
            Ok(())
        }
        "suite" => {
            pin_self(&opts)?;
            runtime()?.block_on(suite(&opts))
        }
        "plot" => {
            let path = opts
                .positional
                .first()
                .ok_or("usage: load plot RESULTS.jsonl")?;
            print!("{}", plot(&std::fs::read_to_string(path)?)?);
            Ok(())
        }
        _ => {
            eprintln!(
                "usage: load server --kind K | run --kind K --clients N [--messages M] [--rate R] \
                 | suite [--out F] [--reps 3] | plot F  (see BENCHMARKS.md)"
            );
            std::process::exit(2);
        }
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    // One worker per core we may use: 1 when pinned with taskset.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
}

// ---------------------------------------------------------------------------------------------
// Options

#[derive(Debug, Default)]
struct Opts {
    values: HashMap<String, String>,
    positional: Vec<String>,
}

impl Opts {
    fn parse(args: impl Iterator<Item = String>) -> Result<Self, BoxError> {
        let mut opts = Self::default();
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            if let Some(key) = arg.strip_prefix("--") {
                let value = match args.peek() {
                    Some(v) if !v.starts_with("--") => args.next().unwrap_or_default(),
                    _ => "true".into(),
                };
                opts.values.insert(key.to_owned(), value);
            } else {
                opts.positional.push(arg);
            }
        }
        Ok(opts)
    }

    fn get<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T, BoxError> {
        match self.values.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{key}: can't parse {v:?}").into()),
        }
    }

    fn str(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    fn flag(&self, key: &str) -> bool {
        self.values.get(key).is_some_and(|v| v != "false")
    }
}

// ---------------------------------------------------------------------------------------------
// Servers

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Our `WsEndpoint` and `SseEndpoint` on one `PubSub`.
    Ours,
    /// Plain tokio-tungstenite over a broadcast channel, one flush per frame.
    Tungstenite,
    /// Salvo by hand: per-connection unbounded mpsc queues drained with `StreamExt::forward`.
    SalvoHandwritten,
    /// Salvo's `sse::stream` over a broadcast channel.
    SalvoSse,
    /// A plain `axum::response::Sse` over a broadcast channel.
    AxumSse,
    /// A plain axum `WebSocketUpgrade` over a broadcast channel, one flush per frame.
    AxumWs,
    /// Our `WsEndpoint` over `Rooms`; clients negotiate the channel protocol and subscribe
    /// with a command (`ours-channels`), or name the topic in the path (`ours-rooms-ws`).
    OursChannels,
}

impl Kind {
    fn parse(s: &str) -> Result<Self, BoxError> {
        Ok(match s {
            "ours" | "ours-ws" | "ours-ws-raw" | "ours-sse" => Self::Ours,
            "tungstenite" => Self::Tungstenite,
            "salvo-handwritten" => Self::SalvoHandwritten,
            "salvo-sse" => Self::SalvoSse,
            "axum-sse" => Self::AxumSse,
            "axum-ws" => Self::AxumWs,
            "ours-channels" | "ours-rooms-ws" => Self::OursChannels,
            other => return Err(format!("unknown kind {other:?}").into()),
        })
    }
}

/// What the server's publisher sends to.
#[derive(Clone)]
enum Publisher {
    Hub(PubSub),
    Broadcast(broadcast::Sender<Utf8Bytes>),
    Queues(Queues),
    SseBroadcast(broadcast::Sender<String>),
    AxumBroadcast(broadcast::Sender<axum::extract::ws::Utf8Bytes>),
    Rooms(Rooms),
}

type Queues = Arc<
    parking_lot::Mutex<HashMap<u64, mpsc::UnboundedSender<Result<SalvoMessage, salvo::Error>>>>,
>;

impl Publisher {
    async fn send(&self, text: String) {
        match self {
            Self::Hub(hub) => {
                // Never pending: the in-memory hub publishes synchronously.
                let _ = hub.publish(TOPIC, text).await;
            }
            Self::Rooms(rooms) => {
                let _ = rooms.broadcast(TOPIC, text).await;
            }
            Self::AxumBroadcast(tx) => {
                let _ = tx.send(text.into());
            }
            Self::Broadcast(tx) => {
                let _ = tx.send(Utf8Bytes::from(text));
            }
            Self::Queues(queues) => {
                // As in Salvo's websocket-chat example: a message per connection queue.
                for tx in queues.lock().values() {
                    let _ = tx.send(Ok(SalvoMessage::text(text.clone())));
                }
            }
            Self::SseBroadcast(tx) => {
                let _ = tx.send(text);
            }
        }
    }
}

/// Counts connections ready to receive; decrements on drop.
struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    fn new(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(open))
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `load server --kind K [--raw]`: prints `ready <addr>`, then answers stdin commands:
/// `open` (connections held), `publish <count> <rate>` (rate 0: flat out), `quit`.
async fn server(opts: &Opts) -> Result<(), BoxError> {
    let kind_name = opts.str("kind").ok_or("--kind is required")?;
    let kind = Kind::parse(kind_name)?;
    let raw = opts.flag("raw") || kind_name == "ours-ws-raw";
    let bind: SocketAddr = opts.get("bind", SocketAddr::from(([127, 0, 0, 1], 0)))?;
    if !bind.ip().is_loopback() {
        return Err("the harness serves on loopback only".into());
    }
    let open = Arc::new(AtomicUsize::new(0));
    let (publisher, addr, counter): (Publisher, SocketAddr, Box<dyn Fn() -> usize + Send>) =
        match kind {
            Kind::Ours => {
                let hub = PubSub::with_config(HubConfig::new().history(BUFFERED));
                let ws = WsEndpoint::new(hub.clone())
                    .max_connections(40_000)
                    .max_connections_per_ip(40_000)
                    .framing(if raw { Framing::Raw } else { Framing::Envelope });
                let sse = SseEndpoint::new(hub.clone())
                    .max_connections(40_000)
                    .max_connections_per_ip(40_000);
                let router = Router::new()
                    .push(Router::with_path("ws/{topic}").goal(ws.clone()))
                    .push(Router::with_path("events/{topic}").get(sse.clone()));
                let addr = serve_salvo(bind, router).await;
                let count = move || ws.open_connections() + sse.open_connections();
                (Publisher::Hub(hub), addr, Box::new(count))
            }
            Kind::SalvoHandwritten => {
                let queues: Queues = Arc::default();
                let handler = HandWritten {
                    queues: Arc::clone(&queues),
                    next: Arc::new(AtomicU64::new(0)),
                };
                let router = Router::with_path("ws/{topic}").goal(handler);
                let addr = serve_salvo(bind, router).await;
                let q = Arc::clone(&queues);
                (
                    Publisher::Queues(queues),
                    addr,
                    Box::new(move || q.lock().len()),
                )
            }
            Kind::SalvoSse => {
                let (tx, _) = broadcast::channel(BUFFERED);
                let handler = SalvoSseHandler {
                    tx: tx.clone(),
                    open: Arc::clone(&open),
                };
                let router = Router::with_path("events/{topic}").get(handler);
                let addr = serve_salvo(bind, router).await;
                let o = Arc::clone(&open);
                (
                    Publisher::SseBroadcast(tx),
                    addr,
                    Box::new(move || o.load(Ordering::Acquire)),
                )
            }
            Kind::OursChannels => {
                let hub = Rooms::with_config(HubConfig::new().history(BUFFERED));
                let ws = WsEndpoint::new(hub.clone())
                    .max_connections(40_000)
                    .max_connections_per_ip(40_000);
                // `ws`: channel-protocol clients subscribe with a command; `ws/{topic}`: plain.
                let router = Router::new()
                    .push(Router::with_path("ws").goal(ws.clone()))
                    .push(Router::with_path("ws/{topic}").goal(ws.clone()));
                let addr = serve_salvo(bind, router).await;
                (
                    Publisher::Rooms(hub),
                    addr,
                    Box::new(move || ws.open_connections()),
                )
            }
            Kind::AxumSse => {
                let (tx, _) = broadcast::channel(BUFFERED);
                let state = AxumState {
                    tx: tx.clone(),
                    open: Arc::clone(&open),
                };
                let app = axum::Router::new()
                    .route("/events/{topic}", axum::routing::get(axum_sse))
                    .with_state(state);
                let addr = serve_axum(bind, app).await?;
                let o = Arc::clone(&open);
                (
                    Publisher::SseBroadcast(tx),
                    addr,
                    Box::new(move || o.load(Ordering::Acquire)),
                )
            }
            Kind::AxumWs => {
                let (tx, _) = broadcast::channel(BUFFERED);
                let state = AxumState {
                    tx: tx.clone(),
                    open: Arc::clone(&open),
                };
                let app = axum::Router::new()
                    .route("/ws/{topic}", axum::routing::get(axum_ws))
                    .with_state(state);
                let addr = serve_axum(bind, app).await?;
                let o = Arc::clone(&open);
                (
                    Publisher::AxumBroadcast(tx),
                    addr,
                    Box::new(move || o.load(Ordering::Acquire)),
                )
            }
            Kind::Tungstenite => {
                let (tx, _) = broadcast::channel(BUFFERED);
                let listener = tokio::net::TcpListener::bind(bind).await?;
                let addr = listener.local_addr()?;
                let (t, o) = (tx.clone(), Arc::clone(&open));
                tokio::spawn(async move {
                    while let Ok((stream, _)) = listener.accept().await {
                        tokio::spawn(tungstenite_conn(stream, t.clone(), Arc::clone(&o)));
                    }
                });
                let o = Arc::clone(&open);
                (
                    Publisher::Broadcast(tx),
                    addr,
                    Box::new(move || o.load(Ordering::Acquire)),
                )
            }
        };
    let mut out = tokio::io::stdout();
    out.write_all(format!("ready {addr}\n").as_bytes()).await?;
    out.flush().await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let words: Vec<&str> = line.split_whitespace().collect();
        let reply = match words.as_slice() {
            ["open"] => format!("open {}", counter()),
            ["publish", count, rate] => {
                let count: u64 = count.parse::<u64>()?.min(MAX_MESSAGES);
                let rate: f64 = rate.parse()?;
                let (start, end) = publish(&publisher, count, rate).await;
                format!("published {count} {start} {end}")
            }
            ["quit"] | [] => break,
            other => format!("error unknown command {other:?}"),
        };
        out.write_all(format!("{reply}\n").as_bytes()).await?;
        out.flush().await?;
    }
    // Exit without closing connections one by one: the kernel closes the sockets.
    std::process::exit(0);
}

async fn serve_salvo(bind: SocketAddr, router: Router) -> SocketAddr {
    let acceptor = salvo::conn::TcpListener::new(bind).bind().await;
    let addr = acceptor
        .holdings()
        .first()
        .and_then(|h| h.local_addr.clone().into_std())
        .unwrap_or(bind);
    let mut server = Server::new(acceptor);
    // LOAD_HTTP1="writev=false,half_close=true": hyper HTTP/1 settings of the Salvo servers,
    // to measure what `Server::http1_mut()` changes (BENCHMARKS.md, SSE idle memory).
    for setting in std::env::var("LOAD_HTTP1").unwrap_or_default().split(',') {
        match setting.trim().split_once('=') {
            Some(("writev", v)) => {
                server.http1_mut().writev(v == "true");
            }
            Some(("half_close", v)) => {
                server.http1_mut().half_close(v == "true");
            }
            Some(("max_buf_size", v)) => {
                if let Ok(n) = v.parse::<usize>() {
                    server.http1_mut().max_buf_size(n.max(8192));
                }
            }
            _ => {}
        }
    }
    tokio::spawn(server.serve(router));
    addr
}

async fn serve_axum(bind: SocketAddr, app: axum::Router) -> Result<SocketAddr, BoxError> {
    let listener = tokio::net::TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A 64-byte JSON message carrying its id and the publish time (ns since the Unix epoch).
fn message(id: u64) -> String {
    let text = format!(
        "{{\"i\":{id:>10},\"t\":{:>20},\"p\":\"{}\"}}",
        now_ns(),
        "x".repeat(16)
    );
    debug_assert_eq!(text.len(), 64);
    text
}

/// Publishes ids `0..count`, flat out (`rate <= 0`) or paced; returns start and end times (ns).
async fn publish(publisher: &Publisher, count: u64, rate: f64) -> (u64, u64) {
    let start_ns = now_ns();
    let start = tokio::time::Instant::now();
    for id in 0..count {
        if rate > 0.0 {
            tokio::time::sleep_until(start + Duration::from_secs_f64(id as f64 / rate)).await;
        } else if id > 0 && id % FLAT_OUT_BURST == 0 {
            tokio::task::yield_now().await;
        }
        publisher.send(message(id)).await;
    }
    (start_ns, now_ns())
}

/// The plain tokio-tungstenite server: default config, `send` (a flush) per frame.
async fn tungstenite_conn(
    stream: TcpStream,
    tx: broadcast::Sender<Utf8Bytes>,
    open: Arc<AtomicUsize>,
) {
    // Subscribe before the handshake, so a client that saw the 101 misses nothing.
    let mut rx = tx.subscribe();
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let _open = OpenGuard::new(&open);
    let (mut sink, mut source) = ws.split();
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                Ok(text) => {
                    if sink.send(TMessage::Text(text)).await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            },
            frame = source.next() => match frame {
                Some(Ok(_)) => {}
                _ => break,
            },
        }
    }
}

/// The hand-written Salvo server: what Salvo's websocket-chat example does, without the chat.
struct HandWritten {
    queues: Queues,
    next: Arc<AtomicU64>,
}

#[salvo::async_trait]
impl Handler for HandWritten {
    async fn handle(
        &self,
        req: &mut Request,
        _depot: &mut Depot,
        res: &mut Response,
        _ctrl: &mut FlowCtrl,
    ) {
        let queues = Arc::clone(&self.queues);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let upgraded = WebSocketUpgrade::new()
            .upgrade(req, res, move |ws| async move {
                let (ws_tx, mut ws_rx) = ws.split();
                let (tx, rx) = mpsc::unbounded_channel();
                // `forward` feeds every queued frame and flushes when the queue runs dry.
                tokio::spawn(UnboundedReceiverStream::new(rx).forward(ws_tx).map(|_| ()));
                queues.lock().insert(id, tx);
                while let Some(Ok(_)) = ws_rx.next().await {}
                queues.lock().remove(&id);
            })
            .await;
        if let Err(e) = upgraded {
            res.render(e);
        }
    }
}

/// Salvo's SSE over a broadcast channel, as its docs show.
struct SalvoSseHandler {
    tx: broadcast::Sender<String>,
    open: Arc<AtomicUsize>,
}

#[salvo::async_trait]
impl Handler for SalvoSseHandler {
    async fn handle(
        &self,
        _req: &mut Request,
        _depot: &mut Depot,
        res: &mut Response,
        _ctrl: &mut FlowCtrl,
    ) {
        let guard = OpenGuard::new(&self.open);
        let events = BroadcastStream::new(self.tx.subscribe()).filter_map(move |m| {
            let _held = &guard;
            std::future::ready(
                m.ok()
                    .map(|text| Ok::<_, Infallible>(SseEvent::default().text(text))),
            )
        });
        SseKeepAlive::new(events).stream(res);
    }
}

/// What the axum baselines share: the channel and the open-connection count.
struct AxumState<T> {
    tx: broadcast::Sender<T>,
    open: Arc<AtomicUsize>,
}

impl<T> Clone for AxumState<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            open: Arc::clone(&self.open),
        }
    }
}

/// axum's `Sse` over a broadcast channel, as its docs show: `Event::data` per message and the
/// default keep-alive (a comment every 15 s, its timer reset by every event).
async fn axum_sse(
    axum::extract::State(state): axum::extract::State<AxumState<String>>,
) -> axum::response::Sse<
    impl futures_util::Stream<Item = Result<axum::response::sse::Event, Infallible>>,
> {
    let guard = OpenGuard::new(&state.open);
    let events = BroadcastStream::new(state.tx.subscribe()).filter_map(move |m| {
        let _held = &guard;
        std::future::ready(
            m.ok()
                .map(|text| Ok(axum::response::sse::Event::default().data(text))),
        )
    });
    axum::response::Sse::new(events).keep_alive(axum::response::sse::KeepAlive::default())
}

/// axum's WebSocket with its defaults over a broadcast channel: `send` (a flush) per frame,
/// the same shape as the tungstenite baseline.
async fn axum_ws(
    axum::extract::State(state): axum::extract::State<AxumState<axum::extract::ws::Utf8Bytes>>,
    ws: axum::extract::ws::WebSocketUpgrade,
) -> axum::response::Response {
    // Subscribe before the 101, so a client that saw it misses nothing.
    let mut rx = state.tx.subscribe();
    let open = state.open;
    ws.on_upgrade(move |socket| async move {
        let _open = OpenGuard::new(&open);
        let (mut sink, mut source) = socket.split();
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Ok(text) => {
                        if sink.send(axum::extract::ws::Message::Text(text)).await.is_err() {
                            break;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                frame = source.next() => match frame {
                    Some(Ok(_)) => {}
                    _ => break,
                },
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Pinning, processes, /proc

/// Re-executes the harness under `taskset -c <client-cpu>` once, so the load generator and the
/// server each get a core of their own.
fn pin_self(opts: &Opts) -> Result<(), BoxError> {
    if std::env::var_os("LOAD_PINNED").is_some() || opts.flag("no-pin") || cores() < 2 {
        return Ok(());
    }
    let cpu = opts.str("client-cpu").unwrap_or("1");
    let exe = std::env::current_exe()?;
    let status = std::process::Command::new("taskset")
        .arg("-c")
        .arg(cpu)
        .arg(exe)
        .args(std::env::args().skip(1))
        .env("LOAD_PINNED", "1")
        .status();
    match status {
        Ok(status) => std::process::exit(status.code().unwrap_or(1)),
        Err(e) => {
            eprintln!("taskset unavailable ({e}): running unpinned");
            Ok(())
        }
    }
}

fn cores() -> usize {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| s.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(1)
        .max(1)
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Involuntary context switches of every thread of a process (`/proc/<pid>/task/*/status`).
fn involuntary_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .filter_map(|s| {
            s.lines()
                .find(|l| l.starts_with("nonvoluntary_ctxt_switches:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .sum()
}

/// User + system CPU time of a process, in clock ticks (100 per second on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = &s[s.rfind(')')? + 1..];
            let fields: Vec<&str> = after.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

/// The soft open-files limit; raised to the hard limit with `prlimit` if it is short.
fn ensure_nofile(needed: u64) -> Result<(), BoxError> {
    let read = || -> Option<(u64, u64)> {
        let s = std::fs::read_to_string("/proc/self/limits").ok()?;
        let line = s.lines().find(|l| l.starts_with("Max open files"))?;
        let mut v = line.split_whitespace().skip(3);
        Some((v.next()?.parse().ok()?, v.next()?.parse().ok()?))
    };
    let Some((soft, hard)) = read() else {
        return Ok(());
    };
    if soft >= needed {
        return Ok(());
    }
    if hard >= needed {
        let _ = std::process::Command::new("prlimit")
            .arg(format!("--pid={}", std::process::id()))
            .arg(format!("--nofile={hard}:{hard}"))
            .status();
    }
    match read() {
        Some((soft, _)) if soft >= needed => Ok(()),
        _ => Err(format!("open-files limit {soft} < {needed}: raise it (ulimit -n)").into()),
    }
}

struct ServerProc {
    child: tokio::process::Child,
    pid: u32,
    addr: SocketAddr,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl ServerProc {
    async fn start(kind: &str, server_cpu: Option<&str>) -> Result<Self, BoxError> {
        let exe = std::env::current_exe()?;
        // LOAD_SERVER_PREFIX wraps the server in a profiler, e.g.
        // "valgrind --tool=massif" or "perf record -g -o perf.data".
        let prefix = std::env::var("LOAD_SERVER_PREFIX").unwrap_or_default();
        let mut argv: Vec<std::ffi::OsString> = Vec::new();
        if let Some(cpu) = server_cpu {
            argv.extend(["taskset".into(), "-c".into(), cpu.into()]);
        }
        argv.extend(prefix.split_whitespace().map(Into::into));
        argv.push(exe.into_os_string());
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        cmd.arg("server")
            .arg("--kind")
            .arg(kind)
            .env_remove("LOAD_PINNED")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn()?;
        let pid = child.id().ok_or("server exited at once")?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), stdout.next_line())
            .await??
            .ok_or("server ended before it was ready")?;
        let addr = line
            .strip_prefix("ready ")
            .ok_or_else(|| format!("server said {line:?}"))?
            .parse()?;
        Ok(Self {
            child,
            pid,
            addr,
            stdin,
            stdout,
        })
    }

    async fn ask(&mut self, command: &str, timeout: Duration) -> Result<String, BoxError> {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await?;
        self.stdin.flush().await?;
        let line = tokio::time::timeout(timeout, self.stdout.next_line())
            .await
            .map_err(|_| format!("server didn't answer {command:?} in time"))??
            .ok_or("server ended")?;
        Ok(line)
    }

    async fn open(&mut self) -> Result<usize, BoxError> {
        let line = self.ask("open", Duration::from_secs(10)).await?;
        Ok(line.strip_prefix("open ").ok_or("bad answer")?.parse()?)
    }

    async fn quit(mut self) {
        let _ = self.stdin.write_all(b"quit\n").await;
        let _ = self.stdin.flush().await;
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clients

/// Log-linear latency histogram in microseconds: exact below 128 µs, then 64 buckets per
/// power of two (under 1.6% error).
struct Histogram {
    buckets: Vec<AtomicU64>,
}

impl Histogram {
    fn new() -> Self {
        Self {
            buckets: (0..128 + 64 * 40).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn index(us: u64) -> usize {
        if us < 128 {
            return us as usize;
        }
        let e = 63 - us.leading_zeros() as usize; // >= 7
        let mantissa = (us >> (e - 6)) as usize; // 64..=127
        (128 + (e - 7) * 64 + (mantissa - 64)).min(128 + 64 * 40 - 1)
    }

    fn value(index: usize) -> u64 {
        if index < 128 {
            return index as u64;
        }
        let e = (index - 128) / 64 + 7;
        let mantissa = ((index - 128) % 64 + 64) as u64;
        // The middle of the bucket.
        (mantissa << (e - 6)) + (1u64 << (e - 6)) / 2
    }

    fn record(&self, us: u64) {
        self.buckets[Self::index(us)].fetch_add(1, Ordering::Relaxed);
    }

    fn quantiles(&self, qs: &[f64]) -> Vec<u64> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        qs.iter()
            .map(|q| {
                if total == 0 {
                    return 0;
                }
                let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
                let mut seen = 0;
                for (i, c) in counts.iter().enumerate() {
                    seen += c;
                    if seen >= rank {
                        return Self::value(i);
                    }
                }
                0
            })
            .collect()
    }
}

/// What every client task shares.
struct Shared {
    messages: u64,
    histogram: Histogram,
    delivered: AtomicU64,
    complete: AtomicUsize,
    ended: AtomicUsize,
    last_rx_ns: AtomicU64,
}

/// One client's count.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    distinct: u64,
    duplicates: u64,
    malformed: u64,
    /// The connection ended (error or close) before it was told to stop.
    dropped: bool,
    /// SSE: the stream gave ids (`id:`), so a reconnect would send `Last-Event-ID`.
    kept_event_id: bool,
    /// SSE: the stream advised a reconnection delay (`retry:`).
    got_retry: bool,
}

struct Receiver {
    seen: Vec<u64>,
    tally: Tally,
    shared: Arc<Shared>,
}

impl Receiver {
    fn new(shared: Arc<Shared>) -> Self {
        Self {
            seen: vec![0; usize::try_from(shared.messages.div_ceil(64)).unwrap_or(0)],
            tally: Tally::default(),
            shared,
        }
    }

    /// Counts one message text, found by its `"i":` and `"t":` fields.
    fn on_message(&mut self, text: &[u8]) {
        let (Some(id), Some(sent)) = (number_after(text, b"\"i\":"), number_after(text, b"\"t\":"))
        else {
            self.tally.malformed += 1;
            return;
        };
        let now = now_ns();
        self.shared
            .histogram
            .record(now.saturating_sub(sent) / 1_000);
        self.shared.last_rx_ns.fetch_max(now, Ordering::Relaxed);
        if id >= self.shared.messages {
            self.tally.malformed += 1;
            return;
        }
        let (word, bit) = ((id / 64) as usize, 1u64 << (id % 64));
        if self.seen[word] & bit != 0 {
            self.tally.duplicates += 1;
            return;
        }
        self.seen[word] |= bit;
        self.tally.distinct += 1;
        self.shared.delivered.fetch_add(1, Ordering::Relaxed);
        if self.tally.distinct == self.shared.messages {
            self.shared.complete.fetch_add(1, Ordering::AcqRel);
        }
    }
}

fn number_after(text: &[u8], key: &[u8]) -> Option<u64> {
    let at = text.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = text[at..].iter().skip_while(|b| **b == b' ');
    let mut value: u64 = 0;
    let mut any = false;
    for b in digits.take_while(|b| b.is_ascii_digit()) {
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        any = true;
    }
    any.then_some(value)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Ws,
    Sse,
    /// WebSocket with the `salvo-realtime.v1` channel protocol: subscribes with a command.
    Channels,
    /// Plain WebSocket to a `Rooms` hub: counts `message` envelopes only (a room also sends
    /// presence frames).
    RoomsWs,
}

/// The channel protocol's `Sec-WebSocket-Protocol` name (`SUBPROTOCOL` in `src/protocol.rs`).
const CHANNEL_PROTOCOL: &str = "salvo-realtime.v1";

async fn connect(server: SocketAddr, source: Ipv4Addr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Sends `request` and reads the response head; returns what followed it.
async fn handshake(
    stream: &mut TcpStream,
    request: &str,
    expect: &str,
) -> Result<BytesMut, BoxError> {
    stream.write_all(request.as_bytes()).await?;
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            if !head.starts_with(expect) {
                return Err(
                    format!("handshake refused: {}", head.lines().next().unwrap_or("")).into(),
                );
            }
            if request.contains(CHANNEL_PROTOCOL)
                && !head.contains(&format!("sec-websocket-protocol: {CHANNEL_PROTOCOL}"))
            {
                return Err("the server didn't accept the channel protocol".into());
            }
            if expect.contains("200") && !head.contains("transfer-encoding: chunked") {
                return Err("expected a chunked event stream".into());
            }
            buf.advance(end + 4);
            return Ok(buf);
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err("closed during handshake".into());
        }
    }
}

/// One client: connects, then counts messages until told to stop or the connection ends.
async fn client(
    protocol: Protocol,
    server: SocketAddr,
    source: Ipv4Addr,
    shared: Arc<Shared>,
    connected: tokio::sync::oneshot::Sender<Result<(), String>>,
    stop: watch::Receiver<bool>,
) -> Tally {
    let mut receiver = Receiver::new(Arc::clone(&shared));
    let setup = async {
        let mut stream = connect(server, source).await?;
        let buf = match protocol {
            Protocol::Ws | Protocol::RoomsWs => {
                let request = format!(
                    "GET /ws/{TOPIC} HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                     Sec-WebSocket-Version: 13\r\n\r\n"
                );
                handshake(&mut stream, &request, "http/1.1 101").await?
            }
            Protocol::Channels => {
                let request = format!(
                    "GET /ws HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                     Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {CHANNEL_PROTOCOL}\r\n\r\n"
                );
                let buf = handshake(&mut stream, &request, "http/1.1 101").await?;
                channel_subscribe(&mut stream, buf).await?
            }
            Protocol::Sse => {
                // What a browser's EventSource sends.
                let request = format!(
                    "GET /events/{TOPIC} HTTP/1.1\r\nHost: {server}\r\nAccept: text/event-stream\r\n\
                     Cache-Control: no-cache\r\n\r\n"
                );
                handshake(&mut stream, &request, "http/1.1 200").await?
            }
        };
        Ok::<_, BoxError>((stream, buf))
    };
    let (stream, buf) = match tokio::time::timeout(Duration::from_secs(20), setup).await {
        Ok(Ok(ok)) => ok,
        Ok(Err(e)) => {
            let _ = connected.send(Err(e.to_string()));
            receiver.tally.dropped = true;
            shared.ended.fetch_add(1, Ordering::AcqRel);
            return receiver.tally;
        }
        Err(_) => {
            let _ = connected.send(Err("handshake timed out".into()));
            receiver.tally.dropped = true;
            shared.ended.fetch_add(1, Ordering::AcqRel);
            return receiver.tally;
        }
    };
    let _ = connected.send(Ok(()));
    let ended = match protocol {
        Protocol::Ws => read_ws(stream, buf, &mut receiver, stop, false).await,
        Protocol::Channels | Protocol::RoomsWs => {
            read_ws(stream, buf, &mut receiver, stop, true).await
        }
        Protocol::Sse => {
            let mut source = EventSource::default();
            let ended = read_sse(stream, buf, &mut receiver, &mut source, stop).await;
            receiver.tally.kept_event_id = !source.last_event_id.is_empty();
            receiver.tally.got_retry = source.retry_ms.is_some();
            ended
        }
    };
    receiver.tally.dropped = !ended;
    shared.ended.fetch_add(1, Ordering::AcqRel);
    receiver.tally
}

/// The next whole frame in `buf`: its opcode, where its payload starts and its total length.
/// `None` while incomplete (with room reserved for the rest).
fn next_frame(buf: &mut BytesMut) -> Option<(u8, usize, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let (b0, b1) = (buf[0], buf[1]);
    let (len, head) = match b1 & 0x7f {
        126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().unwrap()), 10),
        126 | 127 => return None,
        n => (u64::from(n), 2),
    };
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    let total = head + mask + usize::try_from(len).unwrap_or(usize::MAX);
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return None;
    }
    Some((b0 & 0x0f, head + mask, total))
}

/// A masked (zero key) client text frame.
fn client_text_frame(text: &str) -> Vec<u8> {
    let mut frame = vec![0x81];
    match text.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes());
        }
    }
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(text.as_bytes());
    frame
}

/// Sends the channel protocol's `subscribe` for the topic and waits for its `ok` reply;
/// returns what followed it.
async fn channel_subscribe(
    stream: &mut TcpStream,
    mut buf: BytesMut,
) -> Result<BytesMut, BoxError> {
    let command = format!(r#"{{"type":"subscribe","ref":1,"topic":"{TOPIC}"}}"#);
    stream.write_all(&client_text_frame(&command)).await?;
    loop {
        while let Some((opcode, start, total)) = next_frame(&mut buf) {
            let payload = &buf[start..total];
            if opcode == 0x8 {
                return Err("closed before the subscribe reply".into());
            }
            let text = String::from_utf8_lossy(payload);
            if opcode == 0x1 && text.contains(r#""type":"reply""#) {
                if !text.contains(r#""status":"ok""#) {
                    return Err(format!("subscribe refused: {text}").into());
                }
                buf.advance(total);
                return Ok(buf);
            }
            buf.advance(total);
        }
        buf.reserve(4096);
        if stream.read_buf(&mut buf).await? == 0 {
            return Err("closed before the subscribe reply".into());
        }
    }
}

/// Reads server frames (unmasked, unfragmented for our small messages); answers pings.
/// With `messages_only` (the channel protocol), counts only `message` envelopes and skips the
/// other frames (replies, presence). Returns true if it stopped because it was told to.
async fn read_ws(
    mut stream: TcpStream,
    mut buf: BytesMut,
    rx: &mut Receiver,
    mut stop: watch::Receiver<bool>,
    messages_only: bool,
) -> bool {
    loop {
        while let Some((opcode, start, total)) = next_frame(&mut buf) {
            let payload = &buf[start..total];
            match opcode {
                0x1 | 0x2
                    if messages_only
                        && !payload.windows(16).any(|w| w == br#""type":"message""#) => {}
                0x1 | 0x2 => rx.on_message(payload),
                0x8 => return false, // the server closed
                0x9 => {
                    // Pong with the same payload, masked with a zero key.
                    let mut pong = vec![0x8a, 0x80 | payload.len() as u8, 0, 0, 0, 0];
                    pong.extend_from_slice(payload);
                    if stream.write_all(&pong).await.is_err() {
                        return false;
                    }
                }
                _ => {}
            }
            buf.advance(total);
        }
        buf.reserve(16 * 1024);
        tokio::select! {
            read = stream.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            },
            _ = stop.changed() => return true,
        }
    }
}

/// The parsing state of a browser's `EventSource` (HTML's "interpret an event stream"): fields
/// `data`, `event`, `id`, `retry`; comments ignored; an event is dispatched at the blank line
/// that ends it, with its data lines joined by LF, and the last event id kept for a reconnect.
#[derive(Debug, Default)]
struct EventSource {
    data: String,
    event: String,
    last_event_id: String,
    retry_ms: Option<u64>,
}

impl EventSource {
    /// Processes one line (without its LF, a trailing CR stripped); counts a dispatched event.
    fn line(&mut self, line: &[u8], rx: &mut Receiver) {
        if line.is_empty() {
            self.dispatch(rx);
            return;
        }
        if line[0] == b':' {
            return; // a comment: the keep-alive
        }
        // The stream is UTF-8; a real EventSource decodes it (replacing bad sequences).
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.find(':') {
            Some(at) => {
                let value = &line[at + 1..];
                (&line[..at], value.strip_prefix(' ').unwrap_or(value))
            }
            None => (&line[..], ""),
        };
        match field {
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "event" => value.clone_into(&mut self.event),
            "id" if !value.contains('\0') => value.clone_into(&mut self.last_event_id),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.retry_ms = value.parse().ok();
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, rx: &mut Receiver) {
        if self.data.is_empty() {
            self.event.clear();
            return;
        }
        if self.data.ends_with('\n') {
            self.data.pop();
        }
        // The `message` event fires here; the clock is read in `on_message`.
        rx.on_message(self.data.as_bytes());
        self.data.clear();
        self.event.clear();
    }
}

/// Reads a chunked `text/event-stream` body as an `EventSource` does (see [`EventSource`]) and
/// counts every dispatched event.
async fn read_sse(
    mut stream: TcpStream,
    mut raw: BytesMut,
    rx: &mut Receiver,
    source: &mut EventSource,
    mut stop: watch::Receiver<bool>,
) -> bool {
    let mut body = BytesMut::with_capacity(4096);
    // Bytes left in the current chunk; `None` while reading a chunk-size line.
    let mut in_chunk: Option<usize> = None;
    loop {
        loop {
            match in_chunk {
                None => {
                    let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
                        break;
                    };
                    let line = std::str::from_utf8(&raw[..eol]).unwrap_or("");
                    let size = line.split(';').next().unwrap_or("").trim();
                    let parsed = (!size.is_empty()).then(|| usize::from_str_radix(size, 16));
                    raw.advance(eol + 2);
                    let Some(parsed) = parsed else {
                        continue; // the CRLF after a chunk's data
                    };
                    match parsed {
                        Ok(0) | Err(_) => return false, // end of body or garbage
                        Ok(n) => in_chunk = Some(n),
                    }
                }
                Some(left) => {
                    if raw.is_empty() {
                        break;
                    }
                    let take = left.min(raw.len());
                    body.extend_from_slice(&raw[..take]);
                    raw.advance(take);
                    in_chunk = (left > take).then_some(left - take);
                }
            }
        }
        while let Some(eol) = body.iter().position(|b| *b == b'\n') {
            let line = &body[..eol];
            source.line(line.strip_suffix(b"\r").unwrap_or(line), rx);
            body.advance(eol + 1);
        }
        raw.reserve(16 * 1024);
        tokio::select! {
            read = stream.read_buf(&mut raw) => match read {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            },
            _ = stop.changed() => return true,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One run

#[derive(Debug, Clone)]
struct RunConfig {
    kind: String,
    ws: usize,
    sse: usize,
    messages: u64,
    /// Messages per second; 0 means flat out.
    rate: f64,
    sources: u8,
    timeout: Duration,
    server_cpu: Option<String>,
    settle: Duration,
}

impl RunConfig {
    fn from_opts(opts: &Opts) -> Result<Self, BoxError> {
        let kind = opts.str("kind").ok_or("--kind is required")?.to_owned();
        Kind::parse(&kind)?;
        let clients: usize = opts.get("clients", 0)?;
        let (mut ws, mut sse) = (opts.get("ws", 0usize)?, opts.get("sse", 0usize)?);
        if clients > 0 {
            if kind.ends_with("sse") {
                sse += clients;
            } else {
                ws += clients;
            }
        }
        let cfg = Self {
            kind,
            ws,
            sse,
            messages: opts.get("messages", 1_000)?,
            rate: opts.get("rate", 0.0)?,
            sources: opts.get("sources", 8)?,
            timeout: Duration::from_secs(opts.get("timeout", 120)?),
            server_cpu: server_cpu(opts),
            settle: Duration::from_millis(opts.get("settle-ms", 1_000)?),
        };
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), BoxError> {
        let clients = self.ws + self.sse;
        if clients == 0 || clients > MAX_CLIENTS {
            return Err(format!("clients must be 1..={MAX_CLIENTS}").into());
        }
        if self.messages == 0 || self.messages > MAX_MESSAGES {
            return Err(format!("messages must be 1..={MAX_MESSAGES}").into());
        }
        if self.timeout.as_secs() > MAX_SECONDS {
            return Err(format!("timeout must be at most {MAX_SECONDS} s").into());
        }
        if self.sources == 0 || self.sources > 250 {
            return Err("sources must be 1..=250 (127.0.0.1 up to 127.0.0.250)".into());
        }
        match Kind::parse(&self.kind)? {
            Kind::Tungstenite | Kind::SalvoHandwritten | Kind::AxumWs | Kind::OursChannels
                if self.sse > 0 =>
            {
                Err("that server speaks WebSocket only".into())
            }
            Kind::SalvoSse | Kind::AxumSse if self.ws > 0 => {
                Err("that server speaks SSE only".into())
            }
            _ => Ok(()),
        }
    }
}

fn server_cpu(opts: &Opts) -> Option<String> {
    if opts.flag("no-pin") || cores() < 2 {
        return None;
    }
    Some(opts.str("server-cpu").unwrap_or("0").to_owned())
}

#[derive(Debug, Clone, Default)]
struct RunResult {
    kind: String,
    ws: usize,
    sse: usize,
    messages: u64,
    rate: f64,
    connected: usize,
    failed: usize,
    connect_secs: f64,
    held: usize,
    rss_before_kib: u64,
    rss_idle_kib: u64,
    delivered: u64,
    expected: u64,
    lost: u64,
    duplicates: u64,
    malformed: u64,
    dropped_clients: usize,
    deliver_secs: f64,
    publish_secs: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    server_cpu_pct: f64,
    client_cpu_pct: f64,
    /// Server CPU-seconds (user + system) from the first publish until every client is done.
    server_cpu_secs: f64,
    /// How busy the machine was: the 1-minute load average when the run started, and the
    /// server's involuntary context switches while delivering (it was preempted by another
    /// process on its core: the run measured the machine, not the server).
    loadavg_1m: f64,
    server_preempted: u64,
    /// SSE clients whose stream carried ids / a `retry:` hint.
    sse_with_ids: usize,
    sse_with_retry: usize,
    timed_out: bool,
}

impl RunResult {
    fn clients(&self) -> usize {
        self.ws + self.sse
    }

    fn conns_per_sec(&self) -> f64 {
        self.connected as f64 / self.connect_secs.max(1e-9)
    }

    fn kib_per_conn(&self) -> f64 {
        self.rss_idle_kib.saturating_sub(self.rss_before_kib) as f64 / self.connected.max(1) as f64
    }

    fn msgs_per_sec(&self) -> f64 {
        self.delivered as f64 / self.deliver_secs.max(1e-9)
    }

    /// Server CPU time per distinct delivery, in microseconds.
    fn cpu_us_per_delivery(&self) -> f64 {
        self.server_cpu_secs * 1e6 / self.delivered.max(1) as f64
    }

    fn clean(&self) -> bool {
        self.lost == 0
            && self.duplicates == 0
            && self.malformed == 0
            && self.failed == 0
            && self.dropped_clients == 0
            && self.held == self.clients()
    }

    fn human(&self) -> String {
        let rate = if self.rate > 0.0 {
            format!("{} msg/s", self.rate)
        } else {
            "flat out".into()
        };
        let mut s = String::new();
        let _ = writeln!(
            s,
            "kind {} | clients {} (ws {}, sse {}) | {} messages, {rate}",
            self.kind,
            self.clients(),
            self.ws,
            self.sse,
            self.messages
        );
        let _ = writeln!(
            s,
            "connect   {} ok, {} failed in {:.2} s = {:.0} conn/s; server holds {}",
            self.connected,
            self.failed,
            self.connect_secs,
            self.conns_per_sec(),
            self.held
        );
        let _ = writeln!(
            s,
            "memory    server RSS {:.1} MiB before, {:.1} MiB idle with clients = {:.1} KiB per connection",
            self.rss_before_kib as f64 / 1024.0,
            self.rss_idle_kib as f64 / 1024.0,
            self.kib_per_conn()
        );
        let _ = writeln!(
            s,
            "delivery  {} of {} in {:.3} s = {:.0} msgs/s (publishing took {:.3} s){}",
            self.delivered,
            self.expected,
            self.deliver_secs,
            self.msgs_per_sec(),
            self.publish_secs,
            if self.timed_out { " TIMED OUT" } else { "" }
        );
        let _ = writeln!(
            s,
            "latency   p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, max {:.2} ms",
            self.p50_us as f64 / 1e3,
            self.p99_us as f64 / 1e3,
            self.p999_us as f64 / 1e3,
            self.max_us as f64 / 1e3
        );
        let _ = writeln!(
            s,
            "integrity lost {}, duplicated {}, malformed {}, clients dropped {}",
            self.lost, self.duplicates, self.malformed, self.dropped_clients
        );
        let _ = write!(
            s,
            "cpu       server {:.0}%, load generator {:.0}% (of one core, while delivering); \
             server {:.3} CPU-s = {:.2} µs per delivery\n\
             machine   load average {:.2} at the start; server preempted {} times while delivering",
            self.server_cpu_pct,
            self.client_cpu_pct,
            self.server_cpu_secs,
            self.cpu_us_per_delivery(),
            self.loadavg_1m,
            self.server_preempted
        );
        if self.sse > 0 {
            let _ = write!(
                s,
                "\nsse       {} of {} streams carried ids (Last-Event-ID kept), {} a retry: hint",
                self.sse_with_ids, self.sse, self.sse_with_retry
            );
        }
        s
    }

    fn json(&self) -> String {
        serde_json::json!({
            "kind": self.kind, "ws": self.ws, "sse": self.sse, "clients": self.clients(),
            "messages": self.messages, "rate": self.rate, "connected": self.connected,
            "failed": self.failed, "held": self.held, "conns_per_sec": self.conns_per_sec(),
            "rss_before_kib": self.rss_before_kib, "rss_idle_kib": self.rss_idle_kib,
            "kib_per_conn": self.kib_per_conn(), "delivered": self.delivered,
            "expected": self.expected, "msgs_per_sec": self.msgs_per_sec(),
            "lost": self.lost, "duplicates": self.duplicates, "malformed": self.malformed,
            "dropped_clients": self.dropped_clients, "p50_ms": self.p50_us as f64 / 1e3,
            "p99_ms": self.p99_us as f64 / 1e3, "p999_ms": self.p999_us as f64 / 1e3,
            "max_ms": self.max_us as f64 / 1e3, "server_cpu_pct": self.server_cpu_pct,
            "client_cpu_pct": self.client_cpu_pct, "timed_out": self.timed_out,
            "server_cpu_secs": self.server_cpu_secs,
            "loadavg_1m": self.loadavg_1m, "server_preempted": self.server_preempted,
            "cpu_us_per_delivery": self.cpu_us_per_delivery(),
            "sse_with_ids": self.sse_with_ids, "sse_with_retry": self.sse_with_retry,
        })
        .to_string()
    }
}

async fn run(cfg: &RunConfig) -> Result<RunResult, BoxError> {
    cfg.check()?;
    let clients = cfg.ws + cfg.sse;
    ensure_nofile(clients as u64 + 256)?;
    let mut server = ServerProc::start(&cfg.kind, cfg.server_cpu.as_deref()).await?;
    let result = drive(cfg, &mut server).await;
    server.quit().await;
    result
}

async fn drive(cfg: &RunConfig, server: &mut ServerProc) -> Result<RunResult, BoxError> {
    let clients = cfg.ws + cfg.sse;
    let mut result = RunResult {
        kind: cfg.kind.clone(),
        ws: cfg.ws,
        sse: cfg.sse,
        messages: cfg.messages,
        rate: cfg.rate,
        expected: cfg.messages * clients as u64,
        ..RunResult::default()
    };
    result.loadavg_1m = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN);
    tokio::time::sleep(Duration::from_millis(300)).await;
    result.rss_before_kib = proc_status_kib(server.pid, "VmRSS:");

    let shared = Arc::new(Shared {
        messages: cfg.messages,
        histogram: Histogram::new(),
        delivered: AtomicU64::new(0),
        complete: AtomicUsize::new(0),
        ended: AtomicUsize::new(0),
        last_rx_ns: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    // Connect with a bounded number of handshakes in flight.
    let in_flight = Arc::new(Semaphore::new(128));
    let mut tasks = Vec::with_capacity(clients);
    let mut waits = Vec::with_capacity(clients);
    let started = Instant::now();
    for i in 0..clients {
        let protocol = if i < cfg.ws && cfg.kind == "ours-channels" {
            Protocol::Channels
        } else if i < cfg.ws && cfg.kind == "ours-rooms-ws" {
            Protocol::RoomsWs
        } else if i < cfg.ws {
            Protocol::Ws
        } else {
            Protocol::Sse
        };
        let source = Ipv4Addr::new(127, 0, 0, 1 + (i % usize::from(cfg.sources)) as u8);
        let permit = Arc::clone(&in_flight).acquire_owned().await?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        tasks.push(tokio::spawn(client(
            protocol,
            server.addr,
            source,
            Arc::clone(&shared),
            tx,
            stop_rx.clone(),
        )));
        waits.push(tokio::spawn(async move {
            let r = rx.await.unwrap_or_else(|_| Err("client task ended".into()));
            drop(permit);
            r
        }));
    }
    let mut errors: HashMap<String, usize> = HashMap::new();
    for w in waits {
        match w.await? {
            Ok(()) => result.connected += 1,
            Err(e) => {
                result.failed += 1;
                *errors.entry(e).or_default() += 1;
            }
        }
    }
    result.connect_secs = started.elapsed().as_secs_f64();
    for (e, n) in &errors {
        eprintln!("{n} connections failed: {e}");
    }
    // Wait until the server holds every connection (the baselines register after the 101).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        result.held = server.open().await?;
        if result.held >= result.connected || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(cfg.settle).await;
    result.rss_idle_kib = proc_status_kib(server.pid, "VmRSS:");

    let (server_cpu0, client_cpu0) = (cpu_ticks(server.pid), cpu_ticks(std::process::id()));
    let preempted0 = involuntary_switches(server.pid);
    let wall0 = Instant::now();
    let publish_timeout = if cfg.rate > 0.0 {
        Duration::from_secs_f64(cfg.messages as f64 / cfg.rate) + Duration::from_secs(30)
    } else {
        cfg.timeout
    };
    let reply = server
        .ask(
            &format!("publish {} {}", cfg.messages, cfg.rate),
            publish_timeout,
        )
        .await?;
    let words: Vec<&str> = reply.split_whitespace().collect();
    let (start_ns, end_ns): (u64, u64) = match words.as_slice() {
        ["published", _, s, e] => (s.parse()?, e.parse()?),
        _ => return Err(format!("server said {reply:?}").into()),
    };
    result.publish_secs = end_ns.saturating_sub(start_ns) as f64 / 1e9;
    let deadline = Instant::now() + cfg.timeout;
    loop {
        let complete = shared.complete.load(Ordering::Acquire);
        let ended = shared.ended.load(Ordering::Acquire);
        if complete + ended >= clients {
            break;
        }
        if Instant::now() > deadline {
            result.timed_out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let wall = wall0.elapsed().as_secs_f64();
    let ticks = |a: u64, b: u64| b.saturating_sub(a) as f64 / 100.0 / wall * 100.0;
    let server_cpu1 = cpu_ticks(server.pid);
    result.server_cpu_pct = ticks(server_cpu0, server_cpu1);
    result.server_cpu_secs = server_cpu1.saturating_sub(server_cpu0) as f64 / 100.0;
    result.server_preempted = involuntary_switches(server.pid).saturating_sub(preempted0);
    result.client_cpu_pct = ticks(client_cpu0, cpu_ticks(std::process::id()));
    result.deliver_secs = shared
        .last_rx_ns
        .load(Ordering::Acquire)
        .saturating_sub(start_ns) as f64
        / 1e9;
    // A moment more, to catch duplicates that would follow the last message.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = stop_tx.send(true);
    for t in tasks {
        let tally = t.await?;
        result.duplicates += tally.duplicates;
        result.malformed += tally.malformed;
        result.delivered += tally.distinct;
        if tally.dropped {
            result.dropped_clients += 1;
        }
        result.sse_with_ids += usize::from(tally.kept_event_id);
        result.sse_with_retry += usize::from(tally.got_retry);
    }
    result.lost = result.expected - result.delivered;
    let q = shared.histogram.quantiles(&[0.5, 0.99, 0.999, 1.0]);
    (result.p50_us, result.p99_us, result.p999_us, result.max_us) = (q[0], q[1], q[2], q[3]);
    Ok(result)
}

// ---------------------------------------------------------------------------------------------
// The suite: every table of BENCHMARKS.md, medians of `--reps` runs

struct Case {
    table: &'static str,
    kind: &'static str,
    clients: usize,
    messages: u64,
    rate: f64,
}

/// The WebSocket and SSE servers of every table.
const WS_KINDS: [&str; 7] = [
    "ours-ws",
    "ours-ws-raw",
    "ours-channels",
    "ours-rooms-ws",
    "salvo-handwritten",
    "tungstenite",
    "axum-ws",
];
const SSE_KINDS: [&str; 3] = ["ours-sse", "salvo-sse", "axum-sse"];

/// `--only issue12`: the sizes issue 12's targets name, one table each (`i12_*`); never part
/// of the default suite.
fn issue12_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut add = |table, kinds: &[&'static str], clients, messages, rate| {
        for kind in kinds {
            cases.push(Case {
                table,
                kind,
                clients,
                messages,
                rate,
            });
        }
    };
    add("i12_ws_rate10", &WS_KINDS, 5_000, 100, 10.0);
    add("i12_ws_flat", &WS_KINDS, 1_000, 1_000, 0.0);
    add("i12_sse_flat", &SSE_KINDS, 1_000, 1_000, 0.0);
    add("i12_sse_rate200", &SSE_KINDS, 1_000, 2_000, 200.0);
    add("i12_sse_rate10", &SSE_KINDS, 5_000, 100, 10.0);
    cases
}

fn suite_cases(only: Option<&str>) -> Vec<Case> {
    if let Some(only) = only.filter(|o| o.split(',').any(|t| t == "issue12")) {
        let mut cases = issue12_cases();
        let rest: Vec<&str> = only.split(',').filter(|t| *t != "issue12").collect();
        if !rest.is_empty() {
            cases.extend(suite_cases(Some(&rest.join(","))));
        }
        return cases;
    }
    let (ws_kinds, sse_kinds) = (WS_KINDS, SSE_KINDS);
    let mut cases = Vec::new();
    // Flat out: 1 M deliveries per run.
    for clients in [100, 1_000, 5_000] {
        let messages = (1_000_000 / clients) as u64;
        for kind in ws_kinds.iter().chain(&sse_kinds) {
            cases.push(Case {
                table: "flat",
                kind,
                clients,
                messages,
                rate: 0.0,
            });
        }
    }
    for kind in ws_kinds.iter().chain(&sse_kinds) {
        cases.push(Case {
            table: "rate200",
            kind,
            clients: 1_000,
            messages: 2_000,
            rate: 200.0,
        });
        cases.push(Case {
            table: "rate10",
            kind,
            clients: 5_000,
            messages: 100,
            rate: 10.0,
        });
    }
    for kind in ["ours-ws", "ours-sse"] {
        cases.push(Case {
            table: "c18k",
            kind,
            clients: 18_000,
            messages: 50,
            rate: 10.0,
        });
    }
    cases.retain(|c| only.is_none_or(|t| t.split(',').any(|t| t == c.table)));
    cases
}

async fn suite(opts: &Opts) -> Result<(), BoxError> {
    let reps: usize = opts.get("reps", 3)?;
    let out = opts.str("out").unwrap_or("bench-results.jsonl").to_owned();
    let cases = suite_cases(opts.str("only"));
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&out)?;
    let mut results: Vec<(usize, RunResult)> = Vec::new();
    for rep in 0..reps {
        // Kinds interleave within a repetition, so each is measured next to the others.
        for (i, case) in cases.iter().enumerate() {
            let cfg = RunConfig {
                kind: case.kind.to_owned(),
                ws: if case.kind.contains("sse") {
                    0
                } else {
                    case.clients
                },
                sse: if case.kind.contains("sse") {
                    case.clients
                } else {
                    0
                },
                messages: case.messages,
                rate: case.rate,
                sources: 8,
                timeout: Duration::from_secs(120),
                server_cpu: server_cpu(opts),
                settle: Duration::from_millis(1_000),
            };
            eprintln!(
                "[rep {}/{reps}] {} {} x{} {}",
                rep + 1,
                case.table,
                case.kind,
                case.clients,
                case.rate
            );
            match run(&cfg).await {
                Ok(r) => {
                    eprintln!("{}", r.human());
                    let mut line = serde_json::from_str::<serde_json::Value>(&r.json())?;
                    line["table"] = case.table.into();
                    line["rep"] = rep.into();
                    use std::io::Write as _;
                    writeln!(file, "{line}")?;
                    results.push((i, r));
                }
                Err(e) => eprintln!("run failed: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    println!("{}", tables(&cases, &results));
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Medians of one case's runs.
struct Row<'a> {
    case: &'a Case,
    runs: usize,
    msgs_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    kib_per_conn: f64,
    conns_per_sec: f64,
    cpu_us: f64,
    load: f64,
    preempted: f64,
    lost: u64,
    duplicates: u64,
}

fn rows<'a>(cases: &'a [Case], results: &[(usize, RunResult)]) -> Vec<Row<'a>> {
    cases
        .iter()
        .enumerate()
        .map(|(i, case)| {
            let rs: Vec<&RunResult> = results
                .iter()
                .filter(|(j, _)| *j == i)
                .map(|(_, r)| r)
                .collect();
            let m = |f: fn(&RunResult) -> f64| median(rs.iter().map(|r| f(r)).collect());
            Row {
                case,
                runs: rs.len(),
                msgs_per_sec: m(RunResult::msgs_per_sec),
                p50_ms: m(|r| r.p50_us as f64 / 1e3),
                p99_ms: m(|r| r.p99_us as f64 / 1e3),
                p999_ms: m(|r| r.p999_us as f64 / 1e3),
                kib_per_conn: m(RunResult::kib_per_conn),
                conns_per_sec: m(RunResult::conns_per_sec),
                cpu_us: m(RunResult::cpu_us_per_delivery),
                load: m(|r| r.loadavg_1m),
                preempted: m(|r| r.server_preempted as f64),
                lost: rs.iter().map(|r| r.lost).sum(),
                duplicates: rs.iter().map(|r| r.duplicates).sum(),
            }
        })
        .collect()
}

fn tables(cases: &[Case], results: &[(usize, RunResult)]) -> String {
    let rows = rows(cases, results);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| table | server | clients | msgs | rate | delivered msgs/s | p50 ms | p99 ms | p999 ms | KiB/conn | conn/s | CPU µs/delivery | load | preempted | lost | dup | runs |"
    );
    let _ = writeln!(
        s,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in &rows {
        let c = r.case;
        let rate = if c.rate > 0.0 {
            format!("{}/s", c.rate)
        } else {
            "flat".into()
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {rate} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} | {:.0} | {:.2} | {:.1} | {:.0} | {} | {} | {} |",
            c.table,
            c.kind,
            c.clients,
            c.messages,
            r.msgs_per_sec,
            r.p50_ms,
            r.p99_ms,
            r.p999_ms,
            r.kib_per_conn,
            r.conns_per_sec,
            r.cpu_us,
            r.load,
            r.preempted,
            r.lost,
            r.duplicates,
            r.runs,
        );
    }
    s.push('\n');
    s.push_str(&ratios(&rows));
    s
}

/// Ours against the best baseline of the same table: delivered msgs/s (flat out) or p99
/// (paced) as the headline, then idle KiB/conn, conn/s and CPU per delivery, each against
/// the best baseline for that figure (named).
fn ratios(rows: &[Row<'_>]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| table | server | headline | vs best baseline | KiB/conn vs best | conn/s vs best | CPU/delivery vs best |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    // Baselines of the same protocol only: some tables hold WebSocket and SSE rows.
    let best =
        |table: &str, sse: bool, key: fn(&Row<'_>) -> f64, higher: bool| -> Option<(f64, &str)> {
            rows.iter()
                .filter(|r| {
                    r.case.table == table
                        && r.case.kind.ends_with("sse") == sse
                        && !r.case.kind.starts_with("ours")
                        && r.runs > 0
                })
                .map(|r| (key(r), r.case.kind))
                .filter(|(v, _)| v.is_finite())
                .reduce(|a, b| if (b.0 > a.0) == higher { b } else { a })
        };
    let ratio = |ours: f64, best: Option<(f64, &str)>| match best {
        Some((b, kind)) if b > 0.0 => format!("{:.2}x ({kind})", ours / b),
        _ => "-".into(),
    };
    for r in rows
        .iter()
        .filter(|r| r.case.kind.starts_with("ours") && r.runs > 0)
    {
        let table = r.case.table;
        let sse = r.case.kind.ends_with("sse");
        let (headline, vs) = if r.case.rate > 0.0 {
            (
                format!("p99 {:.2} ms", r.p99_ms),
                ratio(r.p99_ms, best(table, sse, |r| r.p99_ms, false)),
            )
        } else {
            (
                format!("{:.0} msgs/s", r.msgs_per_sec),
                ratio(r.msgs_per_sec, best(table, sse, |r| r.msgs_per_sec, true)),
            )
        };
        let _ = writeln!(
            s,
            "| {table} | {} | {headline} | {vs} | {} | {} | {} |",
            r.case.kind,
            ratio(r.kib_per_conn, best(table, sse, |r| r.kib_per_conn, false)),
            ratio(r.conns_per_sec, best(table, sse, |r| r.conns_per_sec, true)),
            ratio(r.cpu_us, best(table, sse, |r| r.cpu_us, false)),
        );
    }
    s
}

// ---------------------------------------------------------------------------------------------
// The plot: delivered msgs/s against subscribers, one line per server, as SVG text

fn plot(jsonl: &str) -> Result<String, BoxError> {
    let mut points: HashMap<String, HashMap<u64, Vec<f64>>> = HashMap::new();
    for line in jsonl.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)?;
        // The flat-out tables: `flat` (100 to 5,000 subscribers) and issue 12's `i12_*_flat`.
        let table = v["table"].as_str().unwrap_or("");
        if table != "flat" && !table.ends_with("_flat") {
            continue;
        }
        let kind = v["kind"].as_str().unwrap_or("?").to_owned();
        let clients = v["clients"].as_u64().unwrap_or(0);
        let rate = v["msgs_per_sec"].as_f64().unwrap_or(0.0);
        points
            .entry(kind)
            .or_default()
            .entry(clients)
            .or_default()
            .push(rate);
    }
    let mut series: Vec<(String, Vec<(u64, f64)>)> = points
        .into_iter()
        .map(|(k, by_n)| {
            let mut pts: Vec<(u64, f64)> = by_n.into_iter().map(|(n, v)| (n, median(v))).collect();
            pts.sort_by_key(|p| p.0);
            (k, pts)
        })
        .collect();
    series.sort_by(|a, b| a.0.cmp(&b.0));
    let xs: Vec<u64> = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.0))
        .collect();
    let (xmin, xmax) = (
        xs.iter().copied().min().unwrap_or(100) as f64,
        xs.iter().copied().max().unwrap_or(10_000) as f64,
    );
    let ymax = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    let ymax = (ymax / 250_000.0).ceil().max(1.0) * 250_000.0;
    let (w, h, left, right, top, bottom) = (720.0, 420.0, 80.0, 190.0, 40.0, 50.0);
    let px = |n: f64| {
        left + (n.ln() - xmin.ln()) / (xmax.ln() - xmin.ln()).max(1e-9) * (w - left - right)
    };
    let py = |v: f64| top + (1.0 - v / ymax) * (h - top - bottom);
    let colors = [
        "#d62728", "#ff7f0e", "#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#17becf",
    ];
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="14" text-anchor="middle">Delivered messages/s, flat out, 64-byte messages (median of runs)</text>"#,
        (w - right + left) / 2.0
    );
    for i in 0..=4 {
        let v = ymax * f64::from(i) / 4.0;
        let y = py(v);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{:.2} M</text>"##,
            w - right,
            left - 6.0,
            y + 4.0,
            v / 1e6
        );
    }
    let mut ticks: Vec<u64> = xs.clone();
    ticks.sort_unstable();
    ticks.dedup();
    for n in &ticks {
        let x = px(*n as f64);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{n}</text>"##,
            h - bottom,
            h - bottom + 16.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">subscribers (log scale)</text>"#,
        (w - right + left) / 2.0,
        h - 12.0
    );
    let _ = writeln!(
        s,
        r##"<line x1="{left}" y1="{top}" x2="{left}" y2="{:.1}" stroke="#333"/><line x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/>"##,
        h - bottom,
        h - bottom,
        w - right,
        h - bottom
    );
    for (i, (kind, pts)) in series.iter().enumerate() {
        let color = colors[i % colors.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|(n, v)| format!("{:.1},{:.1}", px(*n as f64), py(*v)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        for (n, v) in pts {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                px(*n as f64),
                py(*v)
            );
        }
        let ly = top + 10.0 + i as f64 * 20.0;
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{kind}</text>"#,
            w - right + 15.0,
            w - right + 35.0,
            w - right + 40.0,
            ly + 4.0
        );
    }
    let _ = writeln!(s, "</svg>");
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receiver(messages: u64) -> Receiver {
        Receiver::new(Arc::new(Shared {
            messages,
            histogram: Histogram::new(),
            delivered: AtomicU64::new(0),
            complete: AtomicUsize::new(0),
            ended: AtomicUsize::new(0),
            last_rx_ns: AtomicU64::new(0),
        }))
    }

    fn feed(source: &mut EventSource, rx: &mut Receiver, text: &str) {
        for line in text.split('\n') {
            let line = line.as_bytes();
            source.line(line.strip_suffix(b"\r").unwrap_or(line), rx);
        }
    }

    #[test]
    fn event_source_dispatches_at_the_blank_line_and_keeps_the_id() {
        let (mut source, mut rx) = (EventSource::default(), receiver(2));
        feed(
            &mut source,
            &mut rx,
            "retry:3000\n\n:\n\nid: 5-0\ndata: {\"i\":0,",
        );
        // No blank line yet: nothing dispatched, the id not yet the last one.
        assert_eq!(rx.tally.distinct, 0);
        feed(&mut source, &mut rx, "data: \"t\":1}\r\n\r\nevent: x\n\n");
        assert_eq!(rx.tally.distinct, 1, "one event, its two data lines joined");
        assert_eq!(rx.tally.malformed, 0);
        assert_eq!(source.last_event_id, "5-0");
        assert_eq!(source.retry_ms, Some(3000));
        // An event with no data dispatches nothing; a second message counts.
        feed(&mut source, &mut rx, "data:{\"i\":1,\"t\":2}\n\n");
        assert_eq!(rx.tally.distinct, 2);
        assert_eq!(rx.shared.complete.load(Ordering::Acquire), 1);
    }

    fn row(case: &Case, msgs_per_sec: f64, cpu_us: f64) -> Row<'_> {
        Row {
            case,
            runs: 1,
            msgs_per_sec,
            p50_ms: 1.0,
            p99_ms: 2.0,
            p999_ms: 3.0,
            kib_per_conn: 10.0,
            conns_per_sec: 100.0,
            cpu_us,
            load: 1.0,
            preempted: 0.0,
            lost: 0,
            duplicates: 0,
        }
    }

    #[test]
    fn ratios_compare_with_the_best_baseline_of_the_same_protocol() {
        let case = |kind| Case {
            table: "flat",
            kind,
            clients: 10,
            messages: 10,
            rate: 0.0,
        };
        let cases = [
            case("ours-ws"),
            case("tungstenite"),
            case("salvo-handwritten"),
            case("ours-sse"),
            case("salvo-sse"),
        ];
        let rows = [
            row(&cases[0], 300.0, 1.0),
            row(&cases[1], 100.0, 4.0),
            row(&cases[2], 150.0, 2.0),
            row(&cases[3], 200.0, 1.0),
            row(&cases[4], 400.0, 0.5),
        ];
        let table = ratios(&rows);
        assert!(
            table.contains("| flat | ours-ws | 300 msgs/s | 2.00x (salvo-handwritten) |"),
            "{table}"
        );
        assert!(table.contains("| 0.50x (salvo-handwritten) |"), "{table}");
        assert!(
            table.contains("| flat | ours-sse | 200 msgs/s | 0.50x (salvo-sse) |"),
            "{table}"
        );
        assert!(table.contains("| 2.00x (salvo-sse) |"), "{table}");
    }
}
