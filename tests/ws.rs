//! The WebSocket endpoint over real loopback sockets, with tokio-tungstenite as the client.

mod common;

use std::alloc::System;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use common::paced::{Pace, PacedProxy};
use common::ws_client::{Client, WAIT, connect_channel, next_json, next_message, send_json};
use common::{Logs, TestServer, eventually};
use futures_util::{SinkExt, Stream, StreamExt};
use salvo::Router;
use salvo_realtime::hub::InboundPolicy;
use salvo_realtime::ws::close_code::{GOING_AWAY, INTERNAL, INVALID_DATA, NORMAL, POLICY, TOO_BIG};
use salvo_realtime::ws::{Framing, RateLimit, RatePolicy, SlowConsumerPolicy, WsEndpoint};
use salvo_realtime::{Counted, HubConfig, Identity, Rejection, Rooms};
use serde_json::{Value, json};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{self, Message};

/// Counts allocations, for the test that a partial write keeps its rest without a copy (run
/// in a process of its own: see [`alone`]).
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

type Hub = Counted<Rooms>;

fn hub(config: HubConfig) -> Hub {
    Counted::new(Rooms::with_config(config))
}

/// The endpoint as most tests use it: room from the path, user from `?user=`, `?token=bad`
/// forbidden.
fn endpoint(hub: &Hub) -> WsEndpoint<Hub> {
    WsEndpoint::new(hub.clone()).identify(|req, _| match req.query::<String>("user") {
        None => Err(Rejection::unauthorized("no user")),
        Some(_) if req.query::<String>("token").as_deref() == Some("bad") => {
            Err(Rejection::forbidden("bad token"))
        }
        Some(user) => Ok(Some(Identity::new(user))),
    })
}

async fn serve(endpoint: WsEndpoint<Hub>) -> TestServer {
    TestServer::start(Router::with_path("ws/{topic}").goal(endpoint)).await
}

/// A client of `server`'s `path`, handshake checked.
async fn connect(server: &TestServer, path: &str) -> Client {
    connect_url(server.ws(path)).await
}

/// The HTTP status a refused handshake got.
async fn refused(server: &TestServer, req: tungstenite::handshake::client::Request) -> u16 {
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("answer in time")
    {
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Ok(_) => panic!("handshake unexpectedly accepted by {}", server.addr),
        Err(e) => panic!("unexpected error {e}"),
    }
}

/// The close code the server sends, reading past everything else.
async fn close_code(ws: &mut Client) -> Option<u16> {
    let read = async {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("closed in time")
}

async fn back_to_baseline(hub: &Hub, endpoint: &WsEndpoint<Hub>) {
    assert!(
        eventually(|| hub.snapshot().open == 0 && endpoint.open_connections() == 0).await,
        "connections left open: {:?}, slots {}",
        hub.snapshot(),
        endpoint.open_connections()
    );
    assert_eq!(hub.inner().connection_count(), 0);
}

/// A still-working server: fresh clients can join and talk to each other.
async fn still_serves(server: &TestServer) {
    let mut speaker = connect(server, "/ws/health?user=speaker").await;
    let mut hearer = connect(server, "/ws/health?user=hearer").await;
    speaker
        .send(Message::text("still there?"))
        .await
        .expect("send");
    assert_eq!(next_message(&mut hearer).await["data"], "still there?");
    drop((speaker, hearer));
}

#[tokio::test]
async fn echo_and_broadcast_to_the_room() {
    // The sender's echo is asked for: `Rooms` skips the sender by default.
    let hub = hub(HubConfig::new().inbound(InboundPolicy::Publish));
    let ep = endpoint(&hub);
    let server = serve(ep.clone()).await;
    let mut alice = connect(&server, "/ws/lobby?user=alice").await;
    let mut bob = connect(&server, "/ws/lobby?user=bob").await;
    let mut carol = connect(&server, "/ws/other?user=carol").await;
    // alice's first frame is the presence snapshot.
    let snapshot = next_json(&mut alice).await;
    assert_eq!(snapshot["type"], "presence");

    alice.send(Message::text("hello")).await.expect("send");
    for ws in [&mut alice, &mut bob] {
        let m = next_message(ws).await;
        assert_eq!(m["data"], "hello");
        assert_eq!(m["from"], "alice");
        assert_eq!(m["topic"], "lobby");
        assert!(m["id"].as_str().is_some_and(|id| id.contains('-')));
    }
    hub.inner()
        .broadcast("other", "for carol")
        .await
        .expect("broadcast");
    assert_eq!(next_message(&mut carol).await["data"], "for carol");
    for ws in [&mut alice, &mut bob, &mut carol] {
        ws.close(None).await.expect("close");
    }
    back_to_baseline(&hub, &ep).await;
    let s = hub.snapshot();
    assert_eq!(s.messages_in, 1);
    server.stop().await;
}

#[tokio::test]
async fn all_but_the_sender_and_raw_binary_frames() {
    let hub = hub(HubConfig::new().inbound(InboundPolicy::PublishExceptSender));
    let ep = endpoint(&hub).framing(Framing::Raw);
    let server = serve(ep.clone()).await;
    let mut a = connect(&server, "/ws/r?user=a").await;
    let mut b = connect(&server, "/ws/r?user=b").await;
    a.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .expect("send");
    a.send(Message::text("text")).await.expect("send");
    let mut got = Vec::new();
    while got.len() < 2 {
        match tokio::time::timeout(WAIT, b.next()).await.expect("in time") {
            Some(Ok(Message::Binary(bytes))) => got.push(format!("bin:{:?}", &bytes[..])),
            Some(Ok(Message::Text(t))) if !t.starts_with('{') => got.push(format!("txt:{t}")),
            Some(Ok(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, ["bin:[0, 1, 2, 255]", "txt:text"]);
    // The sender got nothing but presence envelopes.
    a.send(Message::Ping(Default::default()))
        .await
        .expect("ping");
    loop {
        match tokio::time::timeout(WAIT, a.next()).await.expect("in time") {
            Some(Ok(Message::Pong(_))) => break,
            // Only presence notices and join events (JSON), never its own messages.
            Some(Ok(Message::Text(t))) => assert!(t.starts_with('{'), "sender got {t}"),
            other => panic!("unexpected {other:?}"),
        }
    }
    drop((a, b));
    back_to_baseline(&hub, &ep).await;
    server.stop().await;
}

#[tokio::test]
async fn reconnect_and_resume_without_loss_or_duplicate() {
    let hub = hub(HubConfig::new());
    let ep = endpoint(&hub);
    let server = serve(ep.clone()).await;
    let mut ws = connect(&server, "/ws/feed?user=u").await;
    for i in 0..5 {
        hub.inner()
            .broadcast("feed", format!("m{i}"))
            .await
            .expect("broadcast");
    }
    let mut last = String::new();
    for i in 0..5 {
        let m = next_message(&mut ws).await;
        assert_eq!(m["data"], format!("m{i}"));
        last = m["id"].as_str().expect("id").to_owned();
    }
    drop(ws);
    back_to_baseline(&hub, &ep).await;
    for i in 5..10 {
        hub.inner()
            .broadcast("feed", format!("m{i}"))
            .await
            .expect("broadcast");
    }
    let mut ws = connect(&server, &format!("/ws/feed?user=u&last={last}")).await;
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let m = next_message(&mut ws).await;
        seen.push(m["data"].as_str().expect("text").to_owned());
    }
    assert_eq!(seen, ["m5", "m6", "m7", "m8", "m9"]);
    hub.inner()
        .broadcast("feed", "m10")
        .await
        .expect("broadcast");
    assert_eq!(next_message(&mut ws).await["data"], "m10");

    // A position from another epoch: reset first, then the history.
    let mut ws2 = connect(&server, "/ws/feed?user=v&last=abc-3").await;
    let first = next_json(&mut ws2).await;
    assert_eq!(first["type"], "reset");
    assert_eq!(first["reason"], "epoch_changed");
    drop((ws, ws2));
    back_to_baseline(&hub, &ep).await;
    server.stop().await;
}

#[tokio::test]
async fn identity_is_checked_before_the_upgrade() {
    let hub = hub(HubConfig::new());
    let ep = endpoint(&hub);
    let server = serve(ep.clone()).await;
    let no_user = server.ws("/ws/r").into_client_request().expect("request");
    assert_eq!(refused(&server, no_user).await, 401);
    let bad = server
        .ws("/ws/r?user=x&token=bad")
        .into_client_request()
        .expect("request");
    assert_eq!(refused(&server, bad).await, 403);
    let bad_recent = server
        .ws("/ws/r?user=x&recent=lots")
        .into_client_request()
        .expect("request");
    assert_eq!(refused(&server, bad_recent).await, 400);
    assert_eq!(hub.snapshot().total, 0, "a refused request never joins");
    back_to_baseline(&hub, &ep).await;
    still_serves(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn a_plain_get_is_refused_without_joining() {
    let hub = hub(HubConfig::new());
    let ep = endpoint(&hub);
    let server = serve(ep.clone()).await;
    let resp = reqwest::get(server.http("/ws/r?user=crawler"))
        .await
        .expect("response");
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(hub.snapshot().total, 0, "a plain GET never joins");
    assert!(
        hub.inner().history("r").is_empty(),
        "no presence event was logged"
    );
    back_to_baseline(&hub, &ep).await;
    server.stop().await;
}

#[tokio::test]
async fn cross_origin_requests_are_refused() {
    let hub = hub(HubConfig::new());
    let ep = endpoint(&hub).allowed_origins(&["https://app.example"]);
    let server = serve(ep.clone()).await;
    let with_origin = |origin: &str| {
        let mut req = server
            .ws("/ws/r?user=x")
            .into_client_request()
            .expect("request");
        req.headers_mut()
            .insert("origin", origin.parse().expect("header"));
        req
    };
    assert_eq!(
        refused(&server, with_origin("https://evil.example")).await,
        403
    );
    // Substring tricks don't pass.
    assert_eq!(
        refused(&server, with_origin("https://app.example.evil.example")).await,
        403
    );
    let same_host = format!("http://{}", server.addr);
    for ok in [same_host.as_str(), "https://APP.example"] {
        let (ws, _) = tokio_tungstenite::connect_async(with_origin(ok))
            .await
            .expect("allowed origin");
        drop(ws);
    }
    assert_eq!(hub.snapshot().total, 2);
    back_to_baseline(&hub, &ep).await;
    server.stop().await;
}

#[tokio::test]
async fn oversized_and_invalid_utf8_messages_close_with_their_codes() {
    let hub = hub(HubConfig::new());
    let ep = endpoint(&hub).max_message_size(1024);
    let server = serve(ep.clone()).await;
    let mut ws = connect(&server, "/ws/r?user=x").await;
    ws.send(Message::text("x".repeat(2048)))
        .await
        .expect("send");
    assert_eq!(close_code(&mut ws).await, Some(TOO_BIG));

    let mut ws = connect(&server, "/ws/r?user=y").await;
    let invalid = Frame::message(vec![0xffu8, 0xfe, 0xfd], OpCode::Data(Data::Text), true);
    ws.send(Message::Frame(invalid)).await.expect("send");
    assert_eq!(close_code(&mut ws).await, Some(INVALID_DATA));
    assert_eq!(hub.snapshot().messages_in, 0, "nothing bad reached the hub");
    back_to_baseline(&hub, &ep).await;
    still_serves(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn a_flood_past_the_rate_limit_is_dropped_or_closed() {
    let hub = hub(HubConfig::new().inbound(InboundPolicy::PublishExceptSender));
    let ep = endpoint(&hub).rate_limit(Some(RateLimit::new(1, 5)));
    let server = serve(ep.clone()).await;
    let mut flooder = connect(&server, "/ws/r?user=f").await;
    let mut listener = connect(&server, "/ws/r?user=l").await;
    for i in 0..50 {
        flooder
            .send(Message::text(format!("m{i}")))
            .await
            .expect("send");
    }
    let mut rate_limited = 0;
    while rate_limited < 40 {
        let v = next_json(&mut flooder).await;
        if v["type"] == "error" {
            assert_eq!(v["error"]["code"], "rate_limited");
            rate_limited += 1;
        }
    }
    // The listener got the burst (at most 5 plus refill), in order.
    let first = next_message(&mut listener).await;
    assert_eq!(first["data"], "m0");
    assert!(hub.snapshot().dropped >= 40);
    drop((flooder, listener));
    back_to_baseline(&hub, &ep).await;

    let ep = endpoint(&hub)
        .rate_limit(Some(RateLimit::new(1, 2)))
        .rate_policy(RatePolicy::Close);
    let server2 = serve(ep.clone()).await;
    let mut flooder = connect(&server2, "/ws/r?user=f").await;
    for i in 0..10 {
        let _ = flooder.send(Message::text(format!("{i}"))).await;
    }
    assert_eq!(close_code(&mut flooder).await, Some(POLICY));
    back_to_baseline(&hub, &ep).await;
    still_serves(&server2).await;
    server.stop().await;
    server2.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_and_others_keep_receiving() {
    // 5,000 x 8 KB is far more than loopback socket buffers hold, so the stalled client's
    // sends block; the history covers any reader that falls briefly behind the live buffer.
    let hub = hub(HubConfig::new().history(1024).channel_capacity(64));
    let ep = endpoint(&hub).send_timeout(Duration::from_millis(500));
    let server = serve(ep.clone()).await;
    let stalled = connect(&server, "/ws/r?user=stalled").await;
    let mut reader = connect(&server, "/ws/r?user=reader").await;
    let payload = "x".repeat(8000);
    let reading = tokio::spawn(async move {
        let mut n = 0;
        while n < 5_000 {
            let v = next_json(&mut reader).await;
            if v["type"] == "message" && v.get("event").is_none() {
                n += 1;
            } else if v["type"] == "lagged" {
                panic!("the reading client lagged");
            }
        }
        reader
    });
    for _ in 0..5_000 {
        hub.inner()
            .broadcast("r", payload.as_str())
            .await
            .expect("broadcast");
        tokio::task::yield_now().await;
    }
    let reader = tokio::time::timeout(Duration::from_secs(30), reading)
        .await
        .expect("reader finished")
        .expect("reader ok");
    // The stalled client was dropped (slot freed) while its socket was still open.
    assert!(
        eventually(|| hub.snapshot().open == 1).await,
        "stalled client still counted: {:?}",
        hub.snapshot()
    );
    drop((stalled, reader));
    back_to_baseline(&hub, &ep).await;
    still_serves(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn skip_ahead_tells_the_client_how_many_it_missed() {
    let hub = hub(HubConfig::new().history(8).channel_capacity(8));
    let ep = endpoint(&hub).slow_consumer(SlowConsumerPolicy::SkipAhead);
    let server = serve(ep.clone()).await;
    let mut ws = connect(&server, "/ws/r?user=slow").await;
    assert_eq!(next_json(&mut ws).await["type"], "presence");
    // Publish far more than the hub retains, faster than the connection task runs.
    for i in 0..2_000 {
        hub.inner()
            .broadcast("r", format!("{i}"))
            .await
            .expect("broadcast");
    }
    let mut missed = 0;
    let mut last = -1i64;
    while last < 1_999 {
        let v = next_json(&mut ws).await;
        match v["type"].as_str() {
            Some("lagged") => missed += v["missed"].as_u64().expect("count"),
            Some("message") => {
                // "123" is valid JSON, so the envelope embeds it as a number.
                let n = v["data"].as_i64().expect("number");
                assert!(n > last, "out of order");
                last = n;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(missed > 0, "expected a lag notice");
    drop(ws);
    back_to_baseline(&hub, &ep).await;
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_never_answers_pings_is_closed() {
    let hub = hub(HubConfig::new());
    // A short interval, and a pong timeout long enough for a busy CI machine.
    let ep = endpoint(&hub).heartbeat(Duration::from_millis(50), Duration::from_secs(1));
    let server = serve(ep.clone()).await;
    // Never polling the client means it never reads the pings, so never answers them.
    let silent = connect(&server, "/ws/r?user=silent").await;
    back_to_baseline(&hub, &ep).await;
    drop(silent);
    // A client that reads answers automatically and stays connected past several pings.
    let mut alive = connect(&server, "/ws/r?user=alive").await;
    let mut pings = 0;
    while pings < 5 {
        match tokio::time::timeout(WAIT, alive.next())
            .await
            .expect("in time")
        {
            Some(Ok(Message::Ping(_))) => pings += 1,
            Some(Ok(_)) => {}
            other => panic!("closed after {pings} pings: {other:?}"),
        }
    }
    assert_eq!(hub.snapshot().open, 1);
    assert_eq!(
        hub.snapshot().messages_in,
        0,
        "pings and pongs never reach the hub"
    );
    drop(alive);
    back_to_baseline(&hub, &ep).await;
    server.stop().await;
}

#[tokio::test]
async fn the_per_ip_and_total_caps_answer_429_and_503() {
    let hub = hub(HubConfig::new());
    let ep = endpoint(&hub).max_connections_per_ip(2);
    let server = serve(ep.clone()).await;
    let a = connect(&server, "/ws/r?user=a").await;
    let b = connect(&server, "/ws/r?user=b").await;
    let req = server
        .ws("/ws/r?user=c")
        .into_client_request()
        .expect("request");
    match tokio_tungstenite::connect_async(req).await {
        Err(tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 429);
            assert!(resp.headers().contains_key("retry-after"));
        }
        other => panic!("expected 429, got {other:?}"),
    }
    drop((a, b));
    back_to_baseline(&hub, &ep).await;
    still_serves(&server).await;

    let ep = endpoint(&hub).max_connections(1);
    let server2 = serve(ep.clone()).await;
    let a = connect(&server2, "/ws/r?user=a").await;
    let req = server2
        .ws("/ws/r?user=b")
        .into_client_request()
        .expect("request");
    assert_eq!(refused(&server2, req).await, 503);
    drop(a);
    back_to_baseline(&hub, &ep).await;
    server.stop().await;
    server2.stop().await;
}

/// The per-user cap counts an identified user's connections whatever their address; other
/// users and the freed slots are unaffected.
#[tokio::test]
async fn the_per_user_cap_answers_429_and_frees_on_close() {
    let hub = hub(HubConfig::new());
    let ep = endpoint(&hub).max_connections_per_user(2);
    let server = serve(ep.clone()).await;
    let a1 = connect(&server, "/ws/r?user=ann").await;
    let a2 = connect(&server, "/ws/r?user=ann").await;
    let req = server
        .ws("/ws/r?user=ann")
        .into_client_request()
        .expect("request");
    assert_eq!(refused(&server, req).await, 429);
    let b = connect(&server, "/ws/r?user=ben").await;
    drop(a1);
    assert!(
        eventually(|| ep.open_connections() == 2).await,
        "ann's closed connection gives its slot back"
    );
    let a3 = connect(&server, "/ws/r?user=ann").await;
    drop((a2, a3, b));
    back_to_baseline(&hub, &ep).await;
    server.stop().await;
}

#[tokio::test]
async fn graceful_drain_closes_every_socket_with_1001() {
    let hub = hub(HubConfig::new());
    let ep = endpoint(&hub);
    let drain = ep.drain_handle();
    let server = serve(ep.clone()).await;
    let mut clients = Vec::new();
    for i in 0..20 {
        clients.push(connect(&server, &format!("/ws/r?user=u{i}")).await);
    }
    assert!(eventually(|| hub.snapshot().open == 20).await);
    let drained = tokio::spawn({
        let drain = drain.clone();
        async move { drain.close_all(WAIT).await }
    });
    for ws in &mut clients {
        assert_eq!(close_code(ws).await, Some(GOING_AWAY));
    }
    assert_eq!(drained.await.expect("drain"), 0);
    back_to_baseline(&hub, &ep).await;
    assert_eq!(
        hub.snapshot().total,
        20,
        "each connection joined and left once"
    );
    let req = server
        .ws("/ws/r?user=late")
        .into_client_request()
        .expect("request");
    assert_eq!(refused(&server, req).await, 503);
    server.stop().await;
}

// ---- Hardening (issue 9): each test names the defect it pins. ----

/// Every message envelope until the presence snapshot completes (`more == false`).
async fn until_presence_done(ws: &mut Client) -> (Vec<Value>, Vec<Value>) {
    let (mut messages, mut pages) = (Vec::new(), Vec::new());
    loop {
        let v = next_json(ws).await;
        match v["type"].as_str() {
            Some("presence") => {
                let done = v["more"] == false;
                pages.push(v);
                if done {
                    return (messages, pages);
                }
            }
            Some("message") => messages.push(v),
            other => panic!("unexpected {other:?}: {v}"),
        }
    }
}

// Defect 1: a named user joining a room whose history is full must not make its own replay
// lag (its join used to push out the oldest message: 1008 "slow consumer", no history).
#[tokio::test]
async fn resume_into_a_busy_room_replays_history_instead_of_closing() {
    let hub = hub(HubConfig::new());
    let ep = endpoint(&hub);
    let server = serve(ep.clone()).await;
    for i in 0..300 {
        hub.inner()
            .broadcast("busy", format!("m{i}"))
            .await
            .expect("broadcast");
    }
    // The history is full (256). At its edge, expired, `recent` past it, and once more.
    for (case, reset) in [
        ("edge", None),
        ("expired", Some("expired")),
        ("recent", None),
        ("edge", None),
    ] {
        let history = hub.inner().history("busy");
        assert_eq!(history.len(), 256);
        let first = history[0].id();
        let at = |back: u64| salvo_realtime::MessageId::new(first.epoch(), first.offset() - back);
        let query = match case {
            "edge" => format!("last={}", at(1)),
            "expired" => format!("last={}", at(30)),
            _ => "recent=1000".to_owned(),
        };
        let mut ws = connect(&server, &format!("/ws/busy?user=newcomer&{query}")).await;
        if let Some(reason) = reset {
            let first = next_json(&mut ws).await;
            assert_eq!(
                (first["type"].as_str(), first["reason"].as_str()),
                (Some("reset"), Some(reason))
            );
        }
        let (messages, pages) = until_presence_done(&mut ws).await;
        let texts: Vec<_> = messages
            .iter()
            .map(|m| m["data"].as_str().unwrap_or("?").to_owned())
            .collect();
        let expected: Vec<_> = history
            .iter()
            .map(|m| m.payload().as_text().unwrap_or("?").to_owned())
            .collect();
        assert_eq!(texts, expected, "{query}");
        assert_eq!(pages.len(), 1);
        hub.inner()
            .broadcast("busy", "live")
            .await
            .expect("broadcast");
        assert_eq!(next_message(&mut ws).await["data"], "live");
        drop(ws);
        back_to_baseline(&hub, &ep).await;
    }
    server.stop().await;
}

/// A raw WebSocket: the handshake by hand, then bytes.
async fn raw_ws(server: &TestServer, path: &str) -> TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    );
    tcp.write_all(req.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).await.expect("handshake");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tcp
}

/// A masked close frame from a client with `code`.
fn client_close(code: u16) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let [hi, lo] = code.to_be_bytes();
    vec![
        0x88,
        0x82,
        mask[0],
        mask[1],
        mask[2],
        mask[3],
        hi ^ mask[0],
        lo ^ mask[1],
    ]
}

/// Reads one server frame, which must be final and unmasked (RFC 6455 §5.1, §5.2, §5.4: the
/// server sends no fragments): (opcode, payload).
async fn server_frame(tcp: &mut TcpStream) -> (u8, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let read = async {
        let mut head = [0u8; 2];
        tcp.read_exact(&mut head).await.expect("frame header");
        assert_eq!(
            head[0] & 0xf0,
            0x80,
            "FIN set, no RSV bits: {:#04x}",
            head[0]
        );
        assert_eq!(head[1] & 0x80, 0, "a server frame is never masked");
        let len = match head[1] & 0x7f {
            126 => {
                let mut ext = [0u8; 2];
                tcp.read_exact(&mut ext).await.expect("length");
                let len = usize::from(u16::from_be_bytes(ext));
                assert!(len >= 126, "the shortest length form is used");
                len
            }
            127 => {
                let mut ext = [0u8; 8];
                tcp.read_exact(&mut ext).await.expect("length");
                let len = usize::try_from(u64::from_be_bytes(ext)).expect("length fits");
                assert!(len > 0xffff, "the shortest length form is used");
                len
            }
            n => usize::from(n),
        };
        let mut payload = vec![0u8; len];
        tcp.read_exact(&mut payload).await.expect("payload");
        (head[0] & 0x0f, payload)
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("a frame in time")
}

/// The close frame the server sends, skipping other frames; its code.
async fn server_close_code(tcp: &mut TcpStream) -> u16 {
    loop {
        let (opcode, payload) = server_frame(tcp).await;
        if opcode == 0x8 {
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

/// Whether the server closes TCP (EOF or reset) within `within`.
async fn closes_tcp(tcp: &mut TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(within, tcp.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

// Defect 2: a client's Close is answered with a Close (echoing a valid code, 1002 for one that
// may not be sent) before the server closes TCP.
#[tokio::test]
async fn a_client_close_is_answered_with_a_close_before_tcp_ends() {
    use tokio::io::AsyncWriteExt;
    let hub = hub(HubConfig::new());
    let ep = endpoint(&hub);
    let server = serve(ep.clone()).await;
    // An independent client's view (tokio-tungstenite): a clean close, code echoed.
    let mut ws = connect(&server, "/ws/r?user=u").await;
    ws.close(Some(tungstenite::protocol::CloseFrame {
        code: tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .expect("close sent");
    let answer = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return Ok(frame),
                Some(Ok(_)) => {}
                other => return Err(format!("{other:?}")),
            }
        }
    })
    .await
    .expect("answer in time");
    match answer {
        Ok(Some(frame)) => assert_eq!(u16::from(frame.code), 1000),
        other => panic!("expected the server's close, got {other:?}"),
    }
    assert!(
        tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("end in time")
            .is_none(),
        "a clean end after the handshake"
    );
    // Raw bytes: valid codes are echoed, forbidden ones get 1002; then TCP closes.
    for (sent, expected) in [
        (1000, 1000),
        (4000, 4000),
        (999, 1002),
        (1005, 1002),
        (1006, 1002),
    ] {
        let mut tcp = raw_ws(&server, "/ws/r?user=raw").await;
        tcp.write_all(&client_close(sent)).await.expect("close");
        assert_eq!(
            server_close_code(&mut tcp).await,
            expected,
            "client sent {sent}"
        );
        assert!(
            closes_tcp(&mut tcp, WAIT).await,
            "TCP closed after the handshake"
        );
    }
    back_to_baseline(&hub, &ep).await;
    server.stop().await;
}

// Defect 2: a server-initiated close sends Close, then waits for the client's before it
// closes TCP.
#[tokio::test]
async fn a_server_close_waits_for_the_clients_close() {
    use tokio::io::AsyncWriteExt;
    let hub = hub(HubConfig::new());
    let ep = endpoint(&hub);
    let drain = ep.drain_handle();
    let server = serve(ep.clone()).await;
    let mut tcp = raw_ws(&server, "/ws/r?user=u").await;
    assert!(eventually(|| hub.snapshot().open == 1).await);
    let drained = tokio::spawn(async move { drain.close_all(WAIT).await });
    assert_eq!(server_close_code(&mut tcp).await, GOING_AWAY);
    assert!(
        !closes_tcp(&mut tcp, Duration::from_millis(300)).await,
        "the server waits for the client's close"
    );
    tcp.write_all(&client_close(1000)).await.expect("close");
    assert!(closes_tcp(&mut tcp, WAIT).await, "then it closes TCP");
    assert_eq!(drained.await.expect("drain"), 0);
    back_to_baseline(&hub, &ep).await;
    server.stop().await;
}

// Defect 3: an id that can't be read opens the socket with a reset (reason `invalid`), then
// history, then live; never a 400 that a client retries forever.
#[tokio::test]
async fn an_unreadable_last_id_gets_a_reset_then_history() {
    let hub = hub(HubConfig::new());
    let ep = endpoint(&hub);
    let server = serve(ep.clone()).await;
    for i in 0..3 {
        hub.inner()
            .broadcast("feed", format!("m{i}"))
            .await
            .expect("broadcast");
    }
    for bad in ["zzz-999999", "not-an-id!", "feed:zzz", "3F-1"] {
        let mut ws = connect(&server, &format!("/ws/feed?user=u&last={bad}")).await;
        let reset = next_json(&mut ws).await;
        assert_eq!(reset["type"], "reset", "{bad}");
        assert_eq!(reset["reason"], "invalid");
        assert!(reset["requested"].is_null());
        let (messages, _) = until_presence_done(&mut ws).await;
        let texts: Vec<_> = messages.iter().map(|m| m["data"].clone()).collect();
        assert_eq!(texts, ["m0", "m1", "m2"], "{bad}");
        drop(ws);
    }
    back_to_baseline(&hub, &ep).await;
    server.stop().await;
}

// Defect 9: a presence snapshot bigger than the write buffer is paged, and a frame bigger than
// it (a 256 KiB binary message, base64 in its envelope) still goes; nobody is disconnected.
#[tokio::test]
async fn big_snapshots_come_in_pages_and_big_frames_still_go() {
    use salvo_realtime::{Connection, Hub as _, Position, Topic};
    let hub = hub(HubConfig::new().max_payload(512 * 1024));
    let ep = endpoint(&hub).max_write_buffer(64 * 1024);
    let server = serve(ep.clone()).await;
    let bio = "x".repeat(1024);
    let mut members = Vec::new();
    for i in 0..600 {
        let conn = Connection::new()
            .authenticated(
                Identity::new(format!("member{i:03}")).data(serde_json::json!({ "bio": bio })),
            )
            .subscribe(Topic::new("big").expect("name"), Position::Live);
        let sub = hub.join(&conn).await.expect("join");
        members.push((conn, sub));
    }
    let mut ws = connect(&server, "/ws/big?user=zed").await;
    let (_, pages) = until_presence_done(&mut ws).await;
    let listed: usize = pages
        .iter()
        .map(|p| p["members"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(listed, 601);
    assert!(pages.len() >= 3, "paged: {} pages", pages.len());
    let blob = vec![7u8; 256 * 1024];
    hub.inner()
        .broadcast("big", salvo_realtime::Payload::binary(blob))
        .await
        .expect("broadcast");
    let m = next_message(&mut ws).await;
    assert_eq!(m["binary"], true);
    assert_eq!(
        m["data"].as_str().map(str::len),
        Some((256 * 1024usize).div_ceil(3) * 4)
    );
    assert_eq!(ep.open_connections(), 1, "still connected");
    for (conn, sub) in members {
        hub.leave(&conn, sub).await;
    }
    drop(ws);
    back_to_baseline(&hub, &ep).await;
    server.stop().await;
}

// Defect 11: under raw framing nothing but members' payloads travels, so a member's text can't
// pass for a server notice.
#[tokio::test]
async fn raw_framing_carries_no_server_notices() {
    // bob probes with his own echo: `Rooms` skips the sender by default.
    let hub = hub(HubConfig::new().inbound(InboundPolicy::Publish));
    let ep = endpoint(&hub).framing(Framing::Raw);
    let server = serve(ep.clone()).await;
    let mut bob = connect(&server, "/ws/r?user=bob").await;
    let mut alice = connect(&server, "/ws/r?user=alice").await;
    let forged = r#"{"type":"reset","topic":"r","reason":"epoch_changed"}"#;
    alice.send(Message::text(forged)).await.expect("send");
    let first = tokio::time::timeout(WAIT, bob.next())
        .await
        .expect("frame")
        .expect("open")
        .expect("ok");
    assert_eq!(
        first,
        Message::text(forged),
        "no presence snapshot or join notice came first"
    );
    drop(alice);
    assert!(eventually(|| hub.snapshot().open == 1).await);
    bob.send(Message::text("probe")).await.expect("send");
    let next = tokio::time::timeout(WAIT, bob.next())
        .await
        .expect("frame")
        .expect("open")
        .expect("ok");
    assert_eq!(next, Message::text("probe"), "no leave notice either");
    drop(bob);
    back_to_baseline(&hub, &ep).await;
    server.stop().await;
}

// Defect 12: direct messages resume across a reconnect with `last=@<user>:<id>`, beside the
// room's own position.
#[tokio::test]
async fn direct_messages_resume_across_a_reconnect() {
    let hub = hub(HubConfig::new());
    let ep = endpoint(&hub);
    let server = serve(ep.clone()).await;
    let mut ws = connect(&server, "/ws/r?user=alice").await;
    hub.inner().send_to_user("alice", "dm1").await.expect("dm");
    hub.inner()
        .broadcast("r", "room1")
        .await
        .expect("broadcast");
    let dm = next_message(&mut ws).await;
    assert_eq!(
        (dm["topic"].as_str(), dm["data"].as_str()),
        (Some("@alice"), Some("dm1"))
    );
    let room = next_message(&mut ws).await;
    let (dm_id, room_id) = (
        dm["id"].as_str().expect("id").to_owned(),
        room["id"].as_str().expect("id").to_owned(),
    );
    drop(ws);
    back_to_baseline(&hub, &ep).await;
    for text in ["dm2", "dm3"] {
        hub.inner().send_to_user("alice", text).await.expect("dm");
    }
    hub.inner()
        .broadcast("r", "room2")
        .await
        .expect("broadcast");
    let mut ws = connect(
        &server,
        &format!("/ws/r?user=alice&last=r:{room_id}&last=@alice:{dm_id}"),
    )
    .await;
    let mut got = Vec::new();
    while got.len() < 3 {
        let m = next_message(&mut ws).await;
        got.push(format!(
            "{}/{}",
            m["topic"].as_str().unwrap_or("?"),
            m["data"].as_str().unwrap_or("?")
        ));
    }
    got.sort();
    assert_eq!(got, ["@alice/dm2", "@alice/dm3", "r/room2"]);
    drop(ws);
    back_to_baseline(&hub, &ep).await;
    server.stop().await;
}

/// Rooms whose `receive` fails like a backend that is down for payloads starting with `fail`.
#[derive(Clone)]
struct Flaky {
    inner: Hub,
}

salvo_realtime::hub::delegate_hub! {
    impl[] Hub for Flaky, to inner {
        type Subscription = <Hub as salvo_realtime::Hub>::Subscription;

        async fn receive(
            &self,
            conn: &salvo_realtime::Connection,
            message: salvo_realtime::Publication,
        ) -> Result<(), salvo_realtime::error::HubError> {
            if message.payload().as_text().is_some_and(|t| t.starts_with("fail")) {
                return Err(salvo_realtime::error::HubError::Backend(
                    "redis://user:password@10.0.0.1 timed out".into(),
                ));
            }
            self.inner.receive(conn, message).await
        }
    }
}

// Defect 13 and 15 (order): a failed send is an `error` frame (`unavailable`), after the echo
// of the earlier accepted message; the socket stays up.
#[tokio::test]
async fn a_failing_backend_gets_an_error_frame_and_the_socket_stays_up() {
    // The sender's echo is asked for: `Rooms` skips the sender by default.
    let hub = hub(HubConfig::new().inbound(InboundPolicy::Publish));
    let ep = WsEndpoint::new(Flaky { inner: hub.clone() }).identify(|req, _| {
        Ok(req
            .query::<String>("user")
            .map(|u| Identity::new(u.as_str())))
    });
    let server = TestServer::start(Router::with_path("ws/{topic}").goal(ep)).await;
    let mut ws = connect(&server, "/ws/r?user=u").await;
    for _ in 0..3 {
        ws.send(Message::text("ok")).await.expect("send");
        ws.send(Message::text("fail")).await.expect("send");
    }
    for _ in 0..3 {
        let echo = next_json(&mut ws).await;
        let echo = if echo["type"] == "presence" {
            next_json(&mut ws).await
        } else {
            echo
        };
        assert_eq!(
            (echo["type"].as_str(), echo["data"].as_str()),
            (Some("message"), Some("ok"))
        );
        let error = next_json(&mut ws).await;
        assert_eq!(error["type"], "error");
        assert_eq!(error["error"]["code"], "unavailable");
        assert!(!error.to_string().contains("password"));
    }
    ws.send(Message::text("still here")).await.expect("send");
    assert_eq!(next_message(&mut ws).await["data"], "still here");
    drop(ws);
    assert!(eventually(|| hub.snapshot().open == 0).await);
    server.stop().await;
}

// Defect 15: an error frame never overtakes the echo of an earlier accepted message.
#[tokio::test]
async fn an_error_frame_never_overtakes_an_earlier_echo() {
    // The sender's echo is asked for: `Rooms` skips the sender by default.
    let hub = hub(HubConfig::new().inbound(InboundPolicy::Publish));
    let ep = endpoint(&hub).rate_limit(Some(RateLimit::new(0, 1)));
    let server = serve(ep.clone()).await;
    let mut ws = connect(&server, "/ws/r?user=u").await;
    assert_eq!(next_json(&mut ws).await["type"], "presence");
    ws.send(Message::text("accepted")).await.expect("send");
    ws.send(Message::text("dropped")).await.expect("send");
    let first = next_json(&mut ws).await;
    assert_eq!(
        (first["type"].as_str(), first["data"].as_str()),
        (Some("message"), Some("accepted"))
    );
    let second = next_json(&mut ws).await;
    assert_eq!(
        (second["type"].as_str(), second["error"]["code"].as_str()),
        (Some("error"), Some("rate_limited"))
    );
    drop(ws);
    back_to_baseline(&hub, &ep).await;
    server.stop().await;
}

// Defect 15: pings count against the rate limit; an unpaced ping flood is closed.
#[tokio::test]
async fn a_ping_flood_closes_with_1008() {
    let hub = hub(HubConfig::new());
    let ep = endpoint(&hub).rate_limit(Some(RateLimit::new(1, 5)));
    let server = serve(ep.clone()).await;
    let mut ws = connect(&server, "/ws/r?user=u").await;
    for _ in 0..50 {
        if ws
            .send(Message::Ping(bytes::Bytes::from_static(b"p")))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(close_code(&mut ws).await, Some(POLICY));
    back_to_baseline(&hub, &ep).await;
    server.stop().await;
}

// Defect 15: JSON nested deeper than the limit is refused, not relayed to other members.
#[tokio::test]
async fn deeply_nested_json_is_refused_not_relayed() {
    let hub = hub(HubConfig::new());
    let ep = endpoint(&hub);
    let server = serve(ep.clone()).await;
    let mut sender = connect(&server, "/ws/r?user=s").await;
    let mut other = connect(&server, "/ws/r?user=o").await;
    let deep = format!("{}{}", "[".repeat(32_000), "]".repeat(32_000));
    sender.send(Message::text(deep)).await.expect("send");
    let error = loop {
        let v = next_json(&mut sender).await;
        if v["type"] == "error" {
            break v;
        }
    };
    assert_eq!(error["error"]["code"], "json_too_deep");
    sender.send(Message::text("after")).await.expect("send");
    assert_eq!(
        next_message(&mut other).await["data"],
        "after",
        "the deep one never arrived"
    );
    drop((sender, other));
    back_to_baseline(&hub, &ep).await;
    server.stop().await;
}

// The per-wake fast path hands over to the timed path when a write would wait: a client that
// pauses reading while thousands of frames pile up gets every one afterwards, in order, once.
#[tokio::test]
async fn a_client_that_pauses_reading_gets_everything_in_order_afterwards() {
    let hub = hub(HubConfig::new().history(4096).channel_capacity(4096));
    let ep = endpoint(&hub);
    let server = serve(ep.clone()).await;
    let mut ws = connect(&server, "/ws/r?user=pauser").await;
    let payload = "y".repeat(8000);
    // 3,000 x 8 KB is more than loopback socket buffers hold while nobody reads.
    for _ in 0..3_000 {
        hub.inner()
            .broadcast("r", payload.as_str())
            .await
            .expect("broadcast");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut offsets = Vec::new();
    while offsets.len() < 3_000 {
        let v = tokio::time::timeout(Duration::from_secs(20), next_json(&mut ws))
            .await
            .expect("frames keep coming");
        assert_ne!(v["type"], "lagged", "no lag with this buffer");
        if v["type"] == "message" && v.get("event").is_none() {
            let id = v["id"].as_str().expect("id").to_owned();
            let offset: u64 = id
                .rsplit('-')
                .next()
                .and_then(|o| o.parse().ok())
                .expect("offset");
            offsets.push(offset);
        }
    }
    let first = offsets[0];
    assert_eq!(offsets, (first..first + 3_000).collect::<Vec<_>>());
    assert_eq!(ep.open_connections(), 1, "never dropped");
    drop(ws);
    back_to_baseline(&hub, &ep).await;
    server.stop().await;
}

// `PresenceMode::Count` over a real socket: the presence frame a client parses carries the
// room's user count and no member list, and later joins send the room nothing; `Full` carries
// the same count beside the list.
#[tokio::test]
async fn presence_frames_carry_the_count_and_count_mode_sends_only_that() {
    use salvo_realtime::hub::PresenceMode;
    for mode in [PresenceMode::Count, PresenceMode::Full] {
        let hub = hub(HubConfig::new().presence_mode(mode));
        let ep = endpoint(&hub);
        let server = serve(ep.clone()).await;
        let mut first = connect(&server, "/ws/hall?user=ann").await;
        let (_, pages) = until_presence_done(&mut first).await;
        assert_eq!(pages.len(), 1);
        assert_eq!(pages[0]["count"], 1, "{mode:?}: {}", pages[0]);
        let mut second = connect(&server, "/ws/hall?user=bob").await;
        let (_, pages) = until_presence_done(&mut second).await;
        assert_eq!(pages[0]["count"], 2, "{mode:?}: {}", pages[0]);
        let listed = pages[0]["members"].as_array().map_or(0, Vec::len);
        hub.inner()
            .broadcast("hall", "after")
            .await
            .expect("broadcast");
        let next = next_json(&mut first).await;
        match mode {
            PresenceMode::Count => {
                assert_eq!(listed, 0);
                // No join notice for bob: the next frame is the broadcast.
                assert_eq!(next["data"], "after", "{next}");
            }
            _ => {
                assert_eq!(listed, 2);
                assert_eq!(next["event"], "presence.join", "{next}");
            }
        }
        drop((first, second));
        back_to_baseline(&hub, &ep).await;
        server.stop().await;
    }
}

/// A masked client frame (RFC 6455 §5.3) with a payload under 126 bytes.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x5au8, 0xa5, 0x3c, 0xc3];
    let len = u8::try_from(payload.len()).expect("short payload");
    assert!(len < 126);
    let mut frame = vec![0x80 | opcode, 0x80 | len];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    frame
}

// A message with nothing queued behind it is written below tungstenite, straight from its shared
// bytes. Read by a raw client (not tungstenite), every length class arrives as one exact, final,
// unmasked frame in the shortest length form, text and binary; a frame much larger than the
// socket buffers (written in parts while the client doesn't read) arrives whole, and the pong to
// a ping sent meanwhile comes after it, never inside it.
#[tokio::test]
async fn lone_messages_are_exact_frames_of_every_length_class() {
    use tokio::io::AsyncWriteExt;
    let hub = hub(HubConfig::new().max_payload(8 << 20));
    let ep = endpoint(&hub).framing(Framing::Raw);
    let server = serve(ep.clone()).await;
    let mut tcp = raw_ws(&server, "/ws/frames?user=raw").await;
    eventually(|| ep.open_connections() == 1).await;
    let rooms = hub.inner();
    for (i, len) in [0usize, 1, 125, 126, 127, 65_535, 65_536, 200_000]
        .into_iter()
        .enumerate()
    {
        let fill = char::from(b'a' + u8::try_from(i).expect("few"));
        let text: String = std::iter::repeat_n(fill, len).collect();
        rooms
            .broadcast("frames", text.as_str())
            .await
            .expect("broadcast");
        let (opcode, payload) = server_frame(&mut tcp).await;
        assert_eq!(opcode, 0x1, "text, {len} bytes");
        assert_eq!(payload.len(), len);
        assert!(
            payload.iter().all(|b| *b == fill as u8),
            "{len} bytes intact"
        );
    }
    let binary: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    rooms
        .broadcast(
            "frames",
            salvo_realtime::Payload::binary(bytes::Bytes::from(binary.clone())),
        )
        .await
        .expect("broadcast");
    assert_eq!(server_frame(&mut tcp).await, (0x2, binary));

    // 6 MiB while the client reads nothing: the socket takes part, the rest waits.
    let big: String = std::iter::repeat_n('z', 6 << 20).collect();
    rooms
        .broadcast("frames", big.as_str())
        .await
        .expect("broadcast");
    tokio::time::sleep(Duration::from_millis(200)).await;
    tcp.write_all(&client_frame(0x9, b"are you there"))
        .await
        .expect("ping");
    let (opcode, payload) = server_frame(&mut tcp).await;
    assert_eq!((opcode, payload.len()), (0x1, big.len()));
    assert!(payload.iter().all(|b| *b == b'z'), "the big frame is whole");
    assert_eq!(
        server_frame(&mut tcp).await,
        (0xA, b"are you there".to_vec())
    );
    // After the read that queued the pong, the next message still comes out clean.
    rooms.broadcast("frames", "after").await.expect("broadcast");
    assert_eq!(server_frame(&mut tcp).await, (0x1, b"after".to_vec()));
    assert_eq!(ep.open_connections(), 1, "never dropped");
    drop(tcp);
    back_to_baseline(&hub, &ep).await;
    server.stop().await;
}

// The same through the envelope framing, where a message's whole frame is encoded once and
// shared: text lengths that put the envelope on both sides of the 126-byte and 64 KiB length
// forms, and one far larger than the socket buffers, each an exact final text frame whose JSON
// carries the text.
#[tokio::test]
async fn lone_envelopes_are_exact_frames_of_every_length_class() {
    use tokio::io::AsyncWriteExt;
    async fn next_message_frame(tcp: &mut TcpStream) -> (u8, Value) {
        loop {
            let (opcode, payload) = server_frame(tcp).await;
            let v: Value = serde_json::from_slice(&payload).expect("JSON");
            if v["type"] == "message" {
                return (opcode, v);
            }
        }
    }
    let hub = hub(HubConfig::new().max_payload(8 << 20));
    let ep = endpoint(&hub);
    let server = serve(ep.clone()).await;
    let mut tcp = raw_ws(&server, "/ws/frames?user=raw").await;
    eventually(|| ep.open_connections() == 1).await;
    let rooms = hub.inner();
    let lengths = (0..=80)
        .chain((65_400..=65_560).step_by(8))
        .chain([200_000, 6 << 20]);
    for (i, len) in lengths.enumerate() {
        let fill = char::from(b'a' + u8::try_from(i % 26).expect("few"));
        let text: String = std::iter::repeat_n(fill, len).collect();
        rooms
            .broadcast("frames", text.as_str())
            .await
            .expect("broadcast");
        if len == 6 << 20 {
            // The client reads nothing for a while and pings: the pong comes after the frame.
            tokio::time::sleep(Duration::from_millis(200)).await;
            tcp.write_all(&client_frame(0x9, b"ping"))
                .await
                .expect("ping");
        }
        let (opcode, v) = next_message_frame(&mut tcp).await;
        assert_eq!(opcode, 0x1, "text, {len} bytes");
        assert_eq!(v["data"].as_str().map(str::len), Some(len));
        assert_eq!(
            v["data"].as_str(),
            Some(text.as_str()),
            "{len} bytes intact"
        );
    }
    assert_eq!(server_frame(&mut tcp).await, (0xA, b"ping".to_vec()));
    rooms.broadcast("frames", "after").await.expect("broadcast");
    let (_, v) = next_message_frame(&mut tcp).await;
    assert_eq!(v["data"], "after");
    assert_eq!(ep.open_connections(), 1, "never dropped");
    drop(tcp);
    back_to_baseline(&hub, &ep).await;
    server.stop().await;
}

// ---- Issue 18: each test names the defect or the promise it pins. ----

/// A client of `url` (a server or a proxy), handshake checked.
async fn connect_url(url: String) -> Client {
    let (ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("handshake in time")
        .expect("handshake");
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

/// The next `reply` (skipping deliveries).
async fn next_reply(ws: &mut Client) -> Value {
    loop {
        let v = next_json(ws).await;
        if v["type"] == "reply" {
            return v;
        }
    }
}

// Defect 7: the send timeout bounds each write's progress, not a whole burst. A client that
// reads slowly but steadily (at most 16 KiB every 10 ms through a throttling proxy) takes a
// `?last=` replay of 400 x 8 KB, seconds long and far past the 500 ms send timeout, whole and
// in order, and stays connected. The server's socket buffer is small, so the replay is the
// server's one long burst rather than a copy into the kernel.
#[tokio::test]
async fn a_slow_steady_reader_takes_a_long_replay_and_stays_connected() {
    let hub = hub(HubConfig::new().history(1024));
    let send_timeout = Duration::from_millis(500);
    let ep = endpoint(&hub).send_timeout(send_timeout);
    let server = TestServer::start_with_send_buffer(
        Router::with_path("ws/{topic}").goal(ep.clone()),
        64 * 1024,
    )
    .await;
    let payload = "r".repeat(8000);
    let mut ids = Vec::new();
    for _ in 0..401 {
        let id = hub
            .inner()
            .broadcast("replay", payload.as_str())
            .await
            .expect("broadcast");
        ids.push(id.to_string());
    }
    let proxy = PacedProxy::start(
        server.addr,
        Pace::Rate {
            bytes: 16 * 1024,
            every: Duration::from_millis(10),
        },
    )
    .await;
    let started = tokio::time::Instant::now();
    let mut ws = connect_url(proxy.ws(&format!("/ws/replay?user=slow&last={}", ids[0]))).await;
    let mut got = Vec::new();
    while got.len() < 400 {
        let m = next_message(&mut ws).await;
        got.push(m["id"].as_str().expect("id").to_owned());
    }
    let took = started.elapsed();
    assert_eq!(got, ids[1..]);
    // The premise: the replay took many send timeouts (the proxy passes at most 1.6 MB/s).
    assert!(took > send_timeout * 2, "the replay took only {took:?}");
    hub.inner()
        .broadcast("replay", "live")
        .await
        .expect("broadcast");
    assert_eq!(next_message(&mut ws).await["data"], "live");
    assert_eq!(ep.open_connections(), 1, "never dropped");
    drop((ws, proxy));
    back_to_baseline(&hub, &ep).await;
    server.stop().await;
}

// Promise "slow consumer: a send stuck 10 s -> close 1008": a send that makes no progress for
// the send timeout closes 1008. The Close goes after what was already buffered and gets the
// close wait (2 s): a client that stopped reading and comes back within it reads what was
// buffered, then the Close (it used to get the bytes and then a bare TCP close).
#[tokio::test]
async fn a_stuck_send_ends_with_close_1008_after_what_was_buffered() {
    let logs = Logs::capture();
    let hub = hub(HubConfig::new().history(4096).channel_capacity(4096));
    let ep = endpoint(&hub).send_timeout(Duration::from_millis(200));
    let server = serve(ep.clone()).await;
    let proxy = PacedProxy::start(server.addr, Pace::Free).await;
    let mut ws = connect_url(proxy.ws("/ws/r?user=stuck")).await;
    assert_eq!(next_json(&mut ws).await["type"], "presence");
    proxy.pace(Pace::Stalled);
    // 16 MB: far more than the socket buffers between the server and the stalled proxy.
    let payload = "s".repeat(8000);
    for _ in 0..2_000 {
        hub.inner()
            .broadcast("r", payload.as_str())
            .await
            .expect("broadcast");
    }
    assert!(
        eventually(|| logs.contains("slow consumer")).await,
        "the server gave up on the stuck send"
    );
    proxy.pace(Pace::Free);
    assert_eq!(close_code(&mut ws).await, Some(POLICY));
    drop((ws, proxy));
    back_to_baseline(&hub, &ep).await;
    server.stop().await;
}

// Defect 8: a command refused by the rate limit still gets its one reply, with its `ref` and
// the code `rate_limited`; only a frame whose `ref` can't be read gets an `error` frame.
#[tokio::test]
async fn a_rate_limited_command_gets_its_reply_with_its_ref() {
    let hub = hub(HubConfig::new());
    let ep = endpoint(&hub).rate_limit(Some(RateLimit::new(0, 2)));
    let server = serve(ep.clone()).await;
    let mut ws = connect_channel(&server.ws("/ws/lobby?user=u")).await;
    for i in 1..=5 {
        let topic = format!("t{i}");
        send_json(&mut ws, json!({"type":"subscribe","ref":i,"topic":topic})).await;
    }
    send_json(
        &mut ws,
        json!({"type":"subscribe","ref":{"not":"a ref"},"topic":"t6"}),
    )
    .await;
    ws.send(Message::text("{not json")).await.expect("send");
    let mut answers = Vec::new();
    while answers.len() < 7 {
        let v = next_json(&mut ws).await;
        match v["type"].as_str() {
            Some("reply") if v["status"] == "ok" => answers.push(format!("{} ok", v["ref"])),
            Some("reply") => answers.push(format!("{} {}", v["ref"], v["error"]["code"])),
            Some("error") => answers.push(format!("error {}", v["error"]["code"])),
            _ => {}
        }
    }
    assert_eq!(
        answers,
        [
            "1 ok",
            "2 ok",
            r#"3 "rate_limited""#,
            r#"4 "rate_limited""#,
            r#"5 "rate_limited""#,
            r#"error "rate_limited""#,
            r#"error "rate_limited""#,
        ]
    );
    drop(ws);
    back_to_baseline(&hub, &ep).await;
    server.stop().await;
}

/// A hub whose every subscription is a channel the test feeds, and panics when polled again
/// after it ended, as a custom hub's stream may (`Stream` allows it).
#[derive(Clone, Default)]
struct Ending {
    feeds: Arc<Mutex<Vec<tokio::sync::mpsc::UnboundedSender<salvo_realtime::Delivery>>>>,
    left: Arc<AtomicUsize>,
}

struct EndingStream {
    rx: tokio::sync::mpsc::UnboundedReceiver<salvo_realtime::Delivery>,
    ended: bool,
}

impl Stream for EndingStream {
    type Item = salvo_realtime::Delivery;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        assert!(!self.ended, "polled after it ended");
        let next = self.rx.poll_recv(cx);
        if let Poll::Ready(None) = next {
            self.ended = true;
        }
        next
    }
}

impl salvo_realtime::Hub for Ending {
    type Subscription = EndingStream;

    async fn join(
        &self,
        _conn: &salvo_realtime::Connection,
    ) -> Result<Self::Subscription, salvo_realtime::error::HubError> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.feeds.lock().expect("feeds").push(tx);
        Ok(EndingStream { rx, ended: false })
    }

    async fn receive(
        &self,
        _conn: &salvo_realtime::Connection,
        _message: salvo_realtime::Publication,
    ) -> Result<(), salvo_realtime::error::HubError> {
        Ok(())
    }

    async fn leave(&self, _conn: &salvo_realtime::Connection, _subscription: Self::Subscription) {
        self.left.fetch_add(1, Ordering::SeqCst);
    }
}

// Defect 10: an ended subscription is never polled again (the look-ahead for a lone message,
// the rest of a burst): the socket closes 1000 "subscription ended" and `leave` runs, where a
// stream that panics when polled after its end used to take the connection down with it.
#[tokio::test]
async fn an_ended_subscription_is_never_polled_again() {
    use salvo_realtime::Position;
    let source = salvo_realtime::PubSub::new();
    let mut deliveries = source
        .subscribe("src", Position::Live)
        .await
        .expect("subscribe");
    for sent in [1usize, 3] {
        let hub = Ending::default();
        let ep = WsEndpoint::new(hub.clone());
        let server = TestServer::start(Router::with_path("ws/{topic}").goal(ep.clone())).await;
        let mut ws = connect(&server, "/ws/t").await;
        let feed = hub.feeds.lock().expect("feeds").pop().expect("joined");
        for i in 0..sent {
            source
                .publish("src", format!("m{i}"))
                .await
                .expect("publish");
            let delivery = deliveries.next().await.expect("delivery");
            feed.send(delivery).expect("fed");
        }
        drop(feed);
        for i in 0..sent {
            assert_eq!(next_message(&mut ws).await["data"], format!("m{i}"));
        }
        assert_eq!(close_code(&mut ws).await, Some(NORMAL), "{sent} sent");
        assert!(
            eventually(|| hub.left.load(Ordering::SeqCst) == 1).await,
            "leave ran"
        );
        assert!(eventually(|| ep.open_connections() == 0).await);
        server.stop().await;
    }
}

/// Reads pings (tungstenite answers each) until `count` have come; a reply or a close before
/// that fails.
async fn read_pings(ws: &mut Client, count: usize) {
    let mut pings = 0;
    while pings < count {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("in time")
        {
            Some(Ok(Message::Ping(_))) => pings += 1,
            Some(Ok(Message::Text(t))) => assert!(!t.contains("reply"), "early: {t}"),
            other => panic!("after {pings} pings: {other:?}"),
        }
    }
}

/// Rooms whose channel `subscribe` waits until the test opens its gate: a slow handler.
#[derive(Clone)]
struct SlowSubscribe {
    inner: Hub,
    gate: Arc<tokio::sync::Notify>,
}

impl SlowSubscribe {
    /// `inner` behind a gate, and the gate (each `notify_one` lets one `subscribe` go on).
    fn new(inner: Hub) -> (Self, Arc<tokio::sync::Notify>) {
        let gate = Arc::new(tokio::sync::Notify::new());
        let slow = Self {
            inner,
            gate: Arc::clone(&gate),
        };
        (slow, gate)
    }
}

salvo_realtime::hub::delegate_hub! {
    impl[] Hub for SlowSubscribe, to inner {
        type Subscription = <Hub as salvo_realtime::Hub>::Subscription;

        async fn add_topic(
            &self,
            conn: &salvo_realtime::Connection,
            request: salvo_realtime::hub::TopicRequest,
        ) -> Result<Option<serde_json::Value>, salvo_realtime::error::HubError> {
            self.gate.notified().await;
            self.inner.add_topic(conn, request).await
        }
    }
}

// Issue 18, "reading paused during an ordered command so a pong goes unread": confirmed. A
// `subscribe` whose handler runs longer than the pong timeout paused reading, so the client's
// pongs waited in TCP and the heartbeat closed 1008 (here before the 7th ping). The heartbeat now
// doesn't count time the server itself doesn't read.
#[tokio::test]
async fn a_slow_command_does_not_fail_the_heartbeat() {
    let rooms = hub(HubConfig::new());
    let (slow, gate) = SlowSubscribe::new(rooms.clone());
    let ep = WsEndpoint::new(slow).heartbeat(Duration::from_millis(50), Duration::from_millis(300));
    let server = TestServer::start(Router::with_path("ws/{topic}").goal(ep.clone())).await;
    let mut ws = connect_channel(&server.ws("/ws/lobby")).await;
    send_json(&mut ws, json!({"type":"subscribe","ref":1,"topic":"later"})).await;
    // Reading answers every ping. A ping comes every 50 ms: past the 7th, the first one's pong
    // was due (300 ms) while the command still ran.
    read_pings(&mut ws, 10).await;
    gate.notify_one();
    let reply = next_reply(&mut ws).await;
    assert_eq!(
        (reply["ref"].as_i64(), reply["status"].as_str()),
        (Some(1), Some("ok"))
    );
    // And the heartbeat goes on as before.
    read_pings(&mut ws, 8).await;
    assert_eq!(ep.open_connections(), 1);
    drop(ws);
    assert!(eventually(|| ep.open_connections() == 0).await);
    server.stop().await;
}

// The same for the idle timeout: a command running longer than it was taken for an idle
// client (close 1000 while the client waited for its reply); the idle clock starts again
// once the server reads again.
#[tokio::test]
async fn a_slow_command_does_not_count_as_idle() {
    let rooms = hub(HubConfig::new());
    let (slow, gate) = SlowSubscribe::new(rooms.clone());
    let ep = WsEndpoint::new(slow)
        .heartbeat(Duration::from_millis(50), Duration::from_secs(5))
        .idle_timeout(Duration::from_millis(200));
    let server = TestServer::start(Router::with_path("ws/{topic}").goal(ep.clone())).await;
    let mut ws = connect_channel(&server.ws("/ws/lobby")).await;
    send_json(&mut ws, json!({"type":"subscribe","ref":1,"topic":"later"})).await;
    // 8 pings: 400 ms, twice the idle timeout, with the command still running.
    read_pings(&mut ws, 8).await;
    gate.notify_one();
    let reply = next_reply(&mut ws).await;
    assert_eq!(
        (reply["ref"].as_i64(), reply["status"].as_str()),
        (Some(1), Some("ok"))
    );
    assert_eq!(
        close_code(&mut ws).await,
        Some(NORMAL),
        "idle after the command"
    );
    assert!(eventually(|| ep.open_connections() == 0).await);
    server.stop().await;
}

/// Runs the test `name` alone in a child process of this test binary, so that the
/// allocations it counts are its own: true in the child (run the test's body), false in the
/// parent (which checked that the child ran it and passed).
fn alone(name: &str) -> bool {
    const CHILD: &str = "SALVO_REALTIME_TEST_ALONE";
    if std::env::var(CHILD).is_ok_and(|n| n == name) {
        return true;
    }
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([name, "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD, name)
        .output()
        .expect("the child ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    false
}

// Issue 18, "the partial raw write copying the frame's rest into a Vec": confirmed. A lone
// frame the socket takes only part of keeps the rest as the message's shared bytes and an
// offset: sending a 16 MiB frame to a client that doesn't read allocates next to nothing (it
// allocated the rest, over 10 MiB), and the frame still arrives whole.
#[tokio::test]
async fn a_partial_lone_write_keeps_the_rest_without_a_copy() {
    if !alone("a_partial_lone_write_keeps_the_rest_without_a_copy") {
        return;
    }
    let hub = hub(HubConfig::new().max_payload(32 << 20));
    let ep = endpoint(&hub).framing(Framing::Raw);
    let server = serve(ep.clone()).await;
    let mut tcp = raw_ws(&server, "/ws/big?user=raw").await;
    assert!(eventually(|| ep.open_connections() == 1).await);
    let big = salvo_realtime::Payload::text("z".repeat(16 << 20));
    let region = Region::new(GLOBAL);
    hub.inner().broadcast("big", big).await.expect("broadcast");
    // One thread: once the client's socket has bytes, the server's task has made its write and
    // kept the rest (in that same poll).
    let mut probe = [0u8; 1];
    tokio::time::timeout(WAIT, tcp.peek(&mut probe))
        .await
        .expect("bytes in time")
        .expect("peek");
    let allocated = region.change().bytes_allocated;
    assert!(
        allocated < 256 * 1024,
        "{allocated} bytes allocated while a 16 MiB frame waits for its reader"
    );
    let (opcode, payload) = server_frame(&mut tcp).await;
    assert_eq!((opcode, payload.len()), (0x1, 16 << 20));
    assert!(payload.iter().all(|b| *b == b'z'), "the frame is whole");
    assert_eq!(ep.open_connections(), 1, "never dropped");
    drop(tcp);
    back_to_baseline(&hub, &ep).await;
    server.stop().await;
}

// Promise: `Framing::Raw` turns what a `reset` would say into a close: 1008, as lost messages
// are (a reset used to be skipped silently, the history following as if nothing was lost).
#[tokio::test]
async fn raw_framing_closes_1008_on_a_reset() {
    let hub = hub(HubConfig::new());
    let ep = endpoint(&hub).framing(Framing::Raw);
    let server = serve(ep.clone()).await;
    let id = hub
        .inner()
        .broadcast("feed", "m0")
        .await
        .expect("broadcast");
    let mut ws = connect(&server, "/ws/feed?user=u&last=abc-3").await;
    assert_eq!(close_code(&mut ws).await, Some(POLICY), "another epoch");
    let mut ws = connect(&server, "/ws/feed?user=u&last=unreadable").await;
    assert_eq!(close_code(&mut ws).await, Some(POLICY), "an unreadable id");
    // A position it can honour: no reset, no close.
    let mut ws = connect(&server, &format!("/ws/feed?user=u&last={id}")).await;
    hub.inner()
        .broadcast("feed", "m1")
        .await
        .expect("broadcast");
    let frame = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("in time");
    assert!(
        matches!(&frame, Some(Ok(Message::Text(t))) if t.as_str() == "m1"),
        "{frame:?}"
    );
    drop(ws);
    back_to_baseline(&hub, &ep).await;
    server.stop().await;
}

// Promise "payload too large -> close 1009", made precise: a frame over the endpoint's message
// size closes 1009 on every socket; a message over the hub's payload limit closes 1009 on a
// plain socket, and is a `too_large` reply on a channel-protocol socket, which stays up.
#[tokio::test]
async fn too_large_is_a_close_1009_or_a_reply_on_a_channel_socket() {
    let hub = hub(HubConfig::new().max_payload(1024));
    let ep = endpoint(&hub);
    let server = serve(ep.clone()).await;
    let mut plain = connect(&server, "/ws/r?user=p").await;
    plain
        .send(Message::text("x".repeat(2000)))
        .await
        .expect("send");
    assert_eq!(
        close_code(&mut plain).await,
        Some(TOO_BIG),
        "plain, hub limit"
    );

    let mut chan = connect_channel(&server.ws("/ws/r?user=c")).await;
    let big = "x".repeat(2000);
    send_json(
        &mut chan,
        json!({"type":"publish","ref":1,"topic":"r","data":big}),
    )
    .await;
    let reply = next_reply(&mut chan).await;
    assert_eq!(
        (reply["ref"].as_i64(), reply["error"]["code"].as_str()),
        (Some(1), Some("too_large")),
        "{reply}"
    );
    send_json(
        &mut chan,
        json!({"type":"publish","ref":2,"topic":"r","data":"small"}),
    )
    .await;
    assert_eq!(next_reply(&mut chan).await["status"], "ok", "still up");
    let huge = "x".repeat(70_000);
    send_json(
        &mut chan,
        json!({"type":"publish","ref":3,"topic":"r","data":huge}),
    )
    .await;
    assert_eq!(
        close_code(&mut chan).await,
        Some(TOO_BIG),
        "channel, frame limit"
    );
    back_to_baseline(&hub, &ep).await;
    server.stop().await;
}

// Promise: a client that never answers pings is closed 1008 (the Close itself, read raw).
#[tokio::test]
async fn a_heartbeat_timeout_closes_1008() {
    let hub = hub(HubConfig::new());
    let ep = endpoint(&hub).heartbeat(Duration::from_millis(50), Duration::from_millis(200));
    let server = serve(ep.clone()).await;
    let mut tcp = raw_ws(&server, "/ws/r?user=mute").await;
    assert_eq!(server_close_code(&mut tcp).await, POLICY);
    drop(tcp);
    back_to_baseline(&hub, &ep).await;
    server.stop().await;
}

// Promise: a client that sends nothing for the idle timeout is closed 1000 (its pongs don't
// count as messages).
#[tokio::test]
async fn an_idle_timeout_closes_1000() {
    let hub = hub(HubConfig::new());
    let ep = endpoint(&hub)
        .idle_timeout(Duration::from_millis(300))
        .heartbeat(Duration::from_millis(50), Duration::from_secs(5));
    let server = serve(ep.clone()).await;
    let mut ws = connect(&server, "/ws/r?user=idle").await;
    assert_eq!(close_code(&mut ws).await, Some(NORMAL));
    back_to_baseline(&hub, &ep).await;
    server.stop().await;
}

// Promise: lost messages under `SlowConsumerPolicy::Disconnect` (the default) close 1008.
#[tokio::test]
async fn lag_under_disconnect_closes_1008() {
    let hub = hub(HubConfig::new().history(8).channel_capacity(8));
    let ep = endpoint(&hub);
    let server = serve(ep.clone()).await;
    let mut ws = connect(&server, "/ws/r?user=slow").await;
    assert_eq!(next_json(&mut ws).await["type"], "presence");
    // Far more than the hub retains, before the connection's task runs again (one thread).
    for i in 0..2_000 {
        hub.inner()
            .broadcast("r", format!("{i}"))
            .await
            .expect("broadcast");
    }
    assert_eq!(close_code(&mut ws).await, Some(POLICY));
    back_to_baseline(&hub, &ep).await;
    server.stop().await;
}

// Promise: under `Framing::Raw`, a refused message and a rate-limited one close 1008, a
// backend failure 1011 (no `error` frames there).
#[tokio::test]
async fn raw_framing_closes_1008_on_a_refusal_and_1011_on_a_backend_failure() {
    let identify = |req: &salvo::Request, _: &salvo::Depot| {
        Ok(req
            .query::<String>("user")
            .map(|u| Identity::new(u.as_str())))
    };
    let refusing = hub(HubConfig::new().inbound(InboundPolicy::Reject));
    let ep = endpoint(&refusing).framing(Framing::Raw);
    let limited = endpoint(&refusing)
        .framing(Framing::Raw)
        .rate_limit(Some(RateLimit::new(0, 1)));
    let flaky = hub(HubConfig::new());
    let failing = WsEndpoint::new(Flaky {
        inner: flaky.clone(),
    })
    .framing(Framing::Raw)
    .identify(identify);
    let router = Router::new()
        .push(Router::with_path("refusing/{topic}").goal(ep.clone()))
        .push(Router::with_path("limited/{topic}").goal(limited.clone()))
        .push(Router::with_path("failing/{topic}").goal(failing.clone()));
    let server = TestServer::start(router).await;

    let mut ws = connect(&server, "/refusing/r?user=a").await;
    ws.send(Message::text("hi")).await.expect("send");
    assert_eq!(close_code(&mut ws).await, Some(POLICY), "refused");

    let mut ws = connect(&server, "/limited/r?user=b").await;
    for i in 0..2 {
        let _ = ws.send(Message::text(format!("m{i}"))).await;
    }
    assert_eq!(close_code(&mut ws).await, Some(POLICY), "rate-limited");

    let mut ws = connect(&server, "/failing/r?user=c").await;
    ws.send(Message::text("fail")).await.expect("send");
    assert_eq!(close_code(&mut ws).await, Some(INTERNAL), "backend failure");
    back_to_baseline(&refusing, &ep).await;
    back_to_baseline(&refusing, &limited).await;
    assert!(eventually(|| flaky.snapshot().open == 0 && failing.open_connections() == 0).await);
    server.stop().await;
}

// Promise: the default message size is 64 KiB: a message of exactly 65,536 bytes is
// accepted, one byte more closes 1009.
#[tokio::test]
async fn the_default_message_size_is_64_kib() {
    let hub = hub(HubConfig::new());
    let ep = endpoint(&hub);
    let server = serve(ep.clone()).await;
    let mut sender = connect(&server, "/ws/r?user=s").await;
    let mut listener = connect(&server, "/ws/r?user=l").await;
    sender
        .send(Message::text("a".repeat(65_536)))
        .await
        .expect("send");
    let m = next_message(&mut listener).await;
    assert_eq!(m["data"].as_str().map(str::len), Some(65_536));
    sender
        .send(Message::text("b".repeat(65_537)))
        .await
        .expect("send");
    assert_eq!(close_code(&mut sender).await, Some(TOO_BIG));
    drop(listener);
    back_to_baseline(&hub, &ep).await;
    server.stop().await;
}

// Promise: the default inbound rate is 50/s with a burst of 100: of 101 frames sent at once,
// the first 100 go through and the 101st is refused (an `error` frame, not relayed).
#[tokio::test]
async fn the_default_rate_limit_refuses_the_101st_frame_of_a_burst() {
    let hub = hub(HubConfig::new());
    let ep = endpoint(&hub);
    let server = serve(ep.clone()).await;
    let mut sender = connect(&server, "/ws/r?user=s").await;
    let mut listener = connect(&server, "/ws/r?user=l").await;
    for i in 0..101 {
        sender
            .feed(Message::text(format!("m{i}")))
            .await
            .expect("feed");
    }
    sender.flush().await.expect("flush");
    for i in 0..100 {
        assert_eq!(next_message(&mut listener).await["data"], format!("m{i}"));
    }
    let refused = loop {
        let v = next_json(&mut sender).await;
        if v["type"] == "error" {
            break v;
        }
    };
    assert_eq!(refused["error"]["code"], "rate_limited");
    hub.inner()
        .broadcast("r", "marker")
        .await
        .expect("broadcast");
    assert_eq!(
        next_message(&mut listener).await["data"],
        "marker",
        "the 101st was not relayed"
    );
    drop((sender, listener));
    back_to_baseline(&hub, &ep).await;
    server.stop().await;
}
