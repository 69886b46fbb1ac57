//! The WebSocket endpoint over real loopback sockets, with tokio-tungstenite as the client.

mod common;

use std::time::Duration;

use common::{TestServer, eventually};
use futures_util::{SinkExt, StreamExt};
use salvo::Router;
use salvo_realtime::ws::close_code::{GOING_AWAY, INVALID_DATA, POLICY, TOO_BIG};
use salvo_realtime::ws::{Framing, RateLimit, RatePolicy, SlowConsumerPolicy, WsEndpoint};
use salvo_realtime::{Counted, HubConfig, Identity, InboundPolicy, Rejection, Rooms};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Hub = Counted<Rooms>;

const WAIT: Duration = Duration::from_secs(10);

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

async fn connect(server: &TestServer, path: &str) -> Client {
    let (ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(server.ws(path)))
        .await
        .expect("handshake in time")
        .expect("handshake");
    assert_eq!(resp.status().as_u16(), 101);
    ws
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

/// The next JSON envelope (skipping pings/pongs).
async fn next_json(ws: &mut Client) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("stream open")
            .expect("frame");
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).expect("json envelope"),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// The next message envelope, skipping presence notices.
async fn next_message(ws: &mut Client) -> Value {
    loop {
        let v = next_json(ws).await;
        if v["type"] == "message" && v.get("event").is_none() {
            return v;
        }
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
    let hub = hub(HubConfig::new());
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
            assert_eq!(v["error"], "rate_limited");
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
