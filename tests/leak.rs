//! A heap-leak check over real loopback sockets: rounds of WebSocket and SSE connects and closes
//! must leave the live heap (bytes allocated minus bytes freed, counted by a wrapping global
//! allocator; not RSS, since glibc keeps freed pages) where it was after a warm-up round.
//!
//! The binary holds this one test, so nothing else allocates while it samples.

use std::alloc::System;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use salvo::Router;
use salvo::conn::{Acceptor, Listener};
use salvo_realtime::sse::SseEndpoint;
use salvo_realtime::ws::WsEndpoint;
use salvo_realtime::{HubConfig, Identity, PubSub, Rooms};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use tokio_tungstenite::tungstenite::Message;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Measured rounds after the warm-up.
const ROUNDS: usize = 10;
/// Connections per transport per round.
const PER_ROUND: usize = 2_000;
/// Connections open at once.
const BATCH: usize = 100;
/// The rooms (and SSE topics) the connections spread over.
const ROOMS: [&str; 4] = ["lobby", "kitchen", "garden", "attic"];
/// Distinct user names, fewer than a batch, so that users have several connections at once.
const USERS: usize = 37;
/// How far the live heap may end from the baseline. A leak of 100 bytes per connection would be
/// 4 MB over the 40,000 measured connections.
const TOLERANCE: i64 = 256 * 1024;
/// The bound on every network wait.
const WAIT: Duration = Duration::from_secs(10);

/// Bytes allocated and not yet freed, across all threads.
fn live_heap() -> i64 {
    let s = GLOBAL.stats();
    i64::try_from(s.bytes_allocated).expect("fits")
        - i64::try_from(s.bytes_deallocated).expect("fits")
}

/// The only use of `identify`: the user is `?user=`, anonymous without it.
fn named(endpoint: WsEndpoint<Rooms>) -> WsEndpoint<Rooms> {
    endpoint.identify(|req, _| Ok(req.query::<String>("user").map(Identity::new)))
}

/// Everything one test run shares: the hubs, the endpoints (clones share their counts) and the
/// server's address.
struct Fixture {
    rooms: Rooms,
    pubsub: PubSub,
    ws: WsEndpoint<Rooms>,
    sse: SseEndpoint<PubSub>,
    addr: SocketAddr,
    http: reqwest::Client,
}

impl Fixture {
    async fn start() -> Self {
        // Idle topics are freed at once, so that after a round the hubs hold nothing at all.
        let config = || HubConfig::new().idle_ttl(Duration::ZERO);
        let rooms = Rooms::with_config(config());
        let pubsub = PubSub::with_config(config());
        let ws = named(WsEndpoint::new(rooms.clone())).max_connections_per_ip(usize::MAX);
        // SSE connections are anonymous. A short keep-alive makes the server notice a dropped
        // client quickly.
        let sse = SseEndpoint::new(pubsub.clone())
            .keep_alive(Duration::from_millis(100))
            .max_connections_per_ip(usize::MAX);
        let router = Router::new()
            .push(Router::with_path("ws/{topic}").goal(ws.clone()))
            .push(Router::with_path("events/{topic}").get(sse.clone()));
        let acceptor = salvo::conn::TcpListener::new("127.0.0.1:0").bind().await;
        let addr = acceptor
            .holdings()
            .first()
            .and_then(|h| h.local_addr.clone().into_std())
            .expect("bound address");
        tokio::spawn(salvo::Server::new(acceptor).serve(router));
        // No idle pool: every SSE connection is closed when its response is dropped.
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("http client");
        Self {
            rooms,
            pubsub,
            ws,
            sse,
            addr,
            http,
        }
    }

    /// One round: `PER_ROUND` WebSocket sessions, then `PER_ROUND` SSE sessions, `BATCH` at a
    /// time; then waits until everything is closed and freed, and returns the live heap.
    async fn round(&self, round: usize) -> i64 {
        for batch in 0..PER_ROUND / BATCH {
            let sessions = (0..BATCH).map(|i| {
                let n = batch * BATCH + i;
                let url = format!(
                    "ws://{}/ws/{}?user=u{}",
                    self.addr,
                    ROOMS[n % ROOMS.len()],
                    (n + round) % USERS
                );
                ws_session(url)
            });
            futures_util::future::join_all(sessions).await;
        }
        for batch in 0..PER_ROUND / BATCH {
            let sessions = (0..BATCH).map(|i| {
                let n = batch * BATCH + i;
                let url = format!("http://{}/events/{}", self.addr, ROOMS[n % ROOMS.len()]);
                sse_session(&self.http, url)
            });
            futures_util::future::join_all(sessions).await;
            // Something in each topic's history while its subscribers are still there.
            for topic in ROOMS {
                self.pubsub.publish(topic, "news").await.expect("published");
            }
        }
        self.settled().await;
        live_heap()
    }

    /// Waits until no connection is open and the hubs hold no topic, room or log.
    async fn settled(&self) {
        let idle = || {
            self.pubsub.sweep();
            self.rooms.sweep();
            self.ws.open_connections() == 0
                && self.sse.open_connections() == 0
                && self.rooms.connection_count() == 0
                && self.rooms.room_count() == 0
                && self.rooms.log_count() == 0
                && self.pubsub.topic_count() == 0
        };
        let deadline = Instant::now() + WAIT;
        while !idle() {
            assert!(
                Instant::now() < deadline,
                "not back to idle: ws open {}, sse open {}, rooms connections {}, rooms {}, \
                 logs {}, topics {}",
                self.ws.open_connections(),
                self.sse.open_connections(),
                self.rooms.connection_count(),
                self.rooms.room_count(),
                self.rooms.log_count(),
                self.pubsub.topic_count()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The server's per-connection tasks finish just after the endpoint lets go.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Joins a room as a named user, reads the presence snapshot, says something, closes cleanly
/// and reads until the server has closed too.
async fn ws_session(url: String) {
    let (mut ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("handshake in time")
        .expect("handshake");
    assert_eq!(resp.status().as_u16(), 101);
    let first = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("a frame in time");
    assert!(
        matches!(first, Some(Ok(Message::Text(_)))),
        "expected the presence snapshot, got {first:?}"
    );
    ws.send(Message::text("hello")).await.expect("send");
    ws.close(None).await.expect("close");
    let drained = async { while let Some(Ok(_)) = ws.next().await {} };
    tokio::time::timeout(WAIT, drained)
        .await
        .expect("closed in time");
}

/// Opens an event stream, reads its first chunk (the `retry:` hint) and hangs up.
async fn sse_session(http: &reqwest::Client, url: String) {
    let resp = tokio::time::timeout(WAIT, http.get(url).send())
        .await
        .expect("response headers in time")
        .expect("request sent");
    assert_eq!(resp.status().as_u16(), 200);
    let mut body = resp.bytes_stream();
    let first = tokio::time::timeout(WAIT, body.next())
        .await
        .expect("first event in time")
        .expect("stream open")
        .expect("chunk");
    assert!(first.starts_with(b"retry:"), "first chunk {first:?}");
}

#[test]
fn connects_and_closes_return_the_live_heap_to_baseline() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let started = Instant::now();
        let fixture = Fixture::start().await;
        // The warm-up fills the runtime's, the allocator's and the hash maps' capacities.
        let warm = fixture.round(0).await;
        let baseline = live_heap();
        eprintln!("warm-up: live heap {warm} B ({:.1?})", started.elapsed());
        let mut samples = Vec::with_capacity(ROUNDS);
        for round in 1..=ROUNDS {
            let live = fixture.round(round).await;
            samples.push(live);
            eprintln!(
                "round {round:2}: live heap {live} B, {:+} B from baseline ({:.1?})",
                live - baseline,
                started.elapsed()
            );
        }
        let last = *samples.last().expect("rounds ran");
        let connections = ROUNDS * PER_ROUND * 2;
        eprintln!(
            "{connections} connections: {:+} B from baseline ({:+.1} B per connection) in {:.1?}",
            last - baseline,
            (last - baseline) as f64 / connections as f64,
            started.elapsed()
        );
        assert!(
            (last - baseline).abs() <= TOLERANCE,
            "live heap {last} B after {ROUNDS} rounds, baseline {baseline} B: {:+} B, past the \
             {TOLERANCE} B tolerance; rounds {samples:?}",
            last - baseline
        );
        let mut previous = baseline;
        let grows_every_round = samples.iter().all(|&s| {
            let grew = s > previous;
            previous = s;
            grew
        });
        assert!(
            !grows_every_round,
            "live heap grew in every round from {baseline} B: {samples:?}"
        );
    });
}
