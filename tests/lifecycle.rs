//! The one connection lifecycle both endpoints share: every check before the join, the same
//! status for the same refusal on both transports, origins, proxies, independent clones.
//! Over real loopback sockets, with raw HTTP requests where the handshake itself is the test.

mod common;

use std::time::Duration;

use common::ws_client::{Client, next_frame};
use common::{TestServer, eventually};
use futures_util::stream::Empty;
use salvo::Router;
use salvo_realtime::endpoint::ForwardedHeader;
use salvo_realtime::error::{HubError, InvalidTopic};
use salvo_realtime::sse::SseEndpoint;
use salvo_realtime::ws::WsEndpoint;
use salvo_realtime::{Connection, Counted, Delivery, Hub, HubConfig, Identity, PubSub, Rooms};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(5);
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Sends `head` (request line and headers, without the final blank line) and returns the
/// response's status and head.
async fn raw(server: &TestServer, head: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    tcp.write_all(format!("{head}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tcp.read(&mut chunk).await.expect("read");
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("answer in time");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn upgrade(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: {KEY}{extra}"
    )
}

fn named<H: Hub>(ep: WsEndpoint<H>) -> WsEndpoint<H> {
    ep.identify(|req, _| {
        Ok(req
            .query::<String>("user")
            .map(|u| Identity::new(u.as_str())))
    })
}

// Defect 4: a bad handshake is refused before the connection joins or is counted, so the room
// never sees a member that never was.
#[tokio::test]
async fn bad_handshakes_are_refused_before_anything_joins() {
    let hub = Counted::new(Rooms::new());
    let ep = named(WsEndpoint::new(hub.clone()));
    let server = TestServer::start(Router::with_path("ws/{topic}").goal(ep.clone())).await;
    let path = "/ws/room?user=ghost";
    let cases = [
        (upgrade(path, "\r\nSec-WebSocket-Version: 8"), 426),
        (upgrade(path, "\r\nSec-WebSocket-Version: 14"), 426),
        (upgrade(path, ""), 400),
        (
            format!(
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nUpgrade: websocket\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13"
            ),
            400,
        ),
        (
            format!(
                "GET {path} HTTP/1.0\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13"
            ),
            400,
        ),
        (
            upgrade(
                path,
                "\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: again",
            ),
            400,
        ),
        (
            format!(
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13"
            ),
            400,
        ),
    ];
    for (request, expected) in &cases {
        let (status, head) = raw(&server, request).await;
        assert_eq!(status, *expected, "{request}\n=> {head}");
        if *expected == 426 {
            assert!(
                head.to_ascii_lowercase()
                    .contains("sec-websocket-version: 13"),
                "426 names the version: {head}"
            );
        }
    }
    assert_eq!(hub.snapshot().total, 0, "no bad handshake joined");
    assert!(hub.inner().presence("room").await.is_empty());
    assert_eq!(ep.open_connections(), 0);
    // A correct handshake still goes through.
    let (status, _) = raw(&server, &upgrade(path, "\r\nSec-WebSocket-Version: 13")).await;
    assert_eq!(status, 101);
    server.stop().await;
}

// A valid handshake on a connection that can't be upgraded (an in-process test client, as
// HTTP/2 would be) is refused before the join, through the one status map: it used to join,
// then leave again and answer a 400 of its own that no refusal metric or log saw.
#[tokio::test]
async fn a_handshake_that_cannot_be_upgraded_is_refused_before_the_join() {
    use salvo::test::{ResponseExt, TestClient};
    let hub = Counted::new(Rooms::new());
    let ep = named(WsEndpoint::new(hub.clone()));
    let service = salvo::Service::new(Router::with_path("ws/{topic}").goal(ep.clone()));
    let mut res = TestClient::get("http://127.0.0.1:5800/ws/room?user=ghost")
        .add_header("connection", "Upgrade", true)
        .add_header("upgrade", "websocket", true)
        .add_header("sec-websocket-key", KEY, true)
        .add_header("sec-websocket-version", "13", true)
        .send(&service)
        .await;
    assert_eq!(res.status_code, Some(salvo::http::StatusCode::BAD_REQUEST));
    let body = res.take_string().await.expect("body");
    assert!(body.contains("can't be upgraded"), "{body}");
    assert_eq!(hub.snapshot().total, 0, "nothing joined");
    assert_eq!(ep.open_connections(), 0);
}

/// A hub whose join always fails with the error `make` builds.
struct Refuses(fn() -> HubError);

impl Hub for Refuses {
    type Subscription = Empty<Delivery>;

    async fn join(&self, _conn: &Connection) -> Result<Self::Subscription, HubError> {
        Err((self.0)())
    }

    async fn receive(
        &self,
        _conn: &Connection,
        _message: salvo_realtime::Publication,
    ) -> Result<(), HubError> {
        Err(HubError::InboundRejected)
    }

    async fn leave(&self, _conn: &Connection, _subscription: Self::Subscription) {}
}

fn secret_backend() -> HubError {
    HubError::Backend("redis://user:password@10.1.2.3:6379 refused".into())
}

// Defect 5: one map from hub refusal to status, shared by both transports; a backend's error
// text never reaches the client. Every error a join can return (the README's status map), with
// `Retry-After` on 429 and 503.
#[tokio::test]
async fn the_same_hub_refusal_gets_the_same_status_on_both_transports() {
    use salvo_realtime::error::{InvalidEvent, Refused};
    use salvo_realtime::{ConnectionId, Topic};
    let cases: [(fn() -> HubError, u16); 16] = [
        (|| HubError::InvalidTopic(InvalidTopic::Empty), 400),
        (|| HubError::InvalidEvent(InvalidEvent::Empty), 400),
        (|| HubError::TooManySubscriptions { limit: 1 }, 400),
        (|| HubError::PayloadTooLarge { size: 2, limit: 1 }, 400),
        (|| HubError::JsonTooDeep { limit: 1 }, 400),
        (
            || HubError::Json(serde_json::from_str::<u8>("x").expect_err("not json")),
            400,
        ),
        (|| HubError::Unsupported("no such thing"), 400),
        (|| HubError::InboundRejected, 403),
        (|| HubError::Refused(Refused::forbidden("no")), 403),
        (
            || HubError::NotSubscribed(Topic::new("t").expect("topic")),
            403,
        ),
        (|| HubError::NotJoined(ConnectionId::next()), 403),
        (|| HubError::TooManyCreated { limit: 1 }, 429),
        (|| HubError::TooManyTopics { limit: 1 }, 503),
        (secret_backend, 503),
        (|| HubError::QueueFull { limit: 1 }, 503),
        (|| HubError::AlreadyJoined(ConnectionId::next()), 500),
    ];
    for (make, expected) in cases {
        let router = Router::new()
            .push(Router::with_path("ws/{topic}").goal(WsEndpoint::new(Refuses(make))))
            .push(Router::with_path("sse/{topic}").get(SseEndpoint::new(Refuses(make))));
        let server = TestServer::start(router).await;
        let (ws, ws_head) = raw(&server, &upgrade("/ws/t", "\r\nSec-WebSocket-Version: 13")).await;
        let sse = reqwest::get(server.http("/sse/t"))
            .await
            .expect("sse answer");
        let sse_status = sse.status().as_u16();
        let sse_retry = sse.headers().get("retry-after").cloned();
        let sse_body = sse.text().await.expect("body");
        assert_eq!((ws, sse_status), (expected, expected), "{:?}", make());
        let retry = matches!(expected, 429 | 503);
        assert_eq!(
            (
                ws_head
                    .to_ascii_lowercase()
                    .contains("\r\nretry-after: 5\r\n"),
                sse_retry.as_ref().map(|v| v.as_bytes()) == Some(b"5"),
            ),
            (retry, retry),
            "Retry-After for {:?}",
            make()
        );
        for text in [&ws_head, &sse_body] {
            assert!(!text.contains("password"), "backend detail leaked: {text}");
        }
        server.stop().await;
    }
}

// Defect 6: forwarding headers count only from trusted proxies; IPv6 clients share a cap per
// /64 (unit-tested in src/endpoint.rs).
#[tokio::test]
async fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
    let hub = PubSub::new();
    let behind = SseEndpoint::new(hub.clone())
        .max_connections_per_ip(1)
        .trusted_proxies(&["127.0.0.1"]);
    let direct = SseEndpoint::new(hub.clone()).max_connections_per_ip(1);
    let wrong_proxy = SseEndpoint::new(hub)
        .max_connections_per_ip(1)
        .trusted_proxies(&["10.0.0.0/8"]);
    let router = Router::new()
        .push(Router::with_path("behind/{topic}").get(behind))
        .push(Router::with_path("direct/{topic}").get(direct))
        .push(Router::with_path("wrong/{topic}").get(wrong_proxy));
    let server = TestServer::start(router).await;
    let client = reqwest::Client::new();
    let open = |path: &'static str, forwarded: &'static str| {
        let req = client
            .get(server.http(path))
            .header("x-forwarded-for", forwarded)
            .header("forwarded", format!("for=\"{forwarded}\""));
        async move { req.send().await.expect("answer") }
    };
    // Behind a trusted proxy: two clients, two slots, though both come from 127.0.0.1.
    let a = open("/behind/t", "203.0.113.1").await;
    let b = open("/behind/t", "203.0.113.2").await;
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    let again = open("/behind/t", "203.0.113.1").await;
    assert_eq!(again.status(), 429, "the same forwarded client is capped");
    // Facing clients directly (no proxy trusted), or trusting another proxy: the headers are
    // a spoof and change nothing.
    let c = open("/direct/t", "198.51.100.1").await;
    let d = open("/direct/t", "198.51.100.2").await;
    assert_eq!((c.status().as_u16(), d.status().as_u16()), (200, 429));
    let e = open("/wrong/t", "198.51.100.3").await;
    let f = open("/wrong/t", "198.51.100.4").await;
    assert_eq!((e.status().as_u16(), f.status().as_u16()), (200, 429));
    drop((a, b, c, e));
    server.stop().await;
}

// Defect 7 and 15: SSE has the WebSocket's origin policy; two Origin headers never pass.
#[tokio::test]
async fn both_transports_share_one_origin_policy() {
    let hub = Counted::new(PubSub::new());
    let router = Router::new()
        .push(
            Router::with_path("ws/{topic}")
                .goal(WsEndpoint::new(hub.clone()).allowed_origins(&["https://app.example"])),
        )
        .push(
            Router::with_path("sse/{topic}")
                .get(SseEndpoint::new(hub.clone()).allowed_origins(&["https://app.example"])),
        );
    let server = TestServer::start(router).await;
    let host = format!("{}", server.addr);
    let cases = [
        (vec!["https://evil.example".to_owned()], 403),
        (vec!["https://app.example.evil".to_owned()], 403),
        (
            vec![format!("http://{host}"), "https://evil.example".to_owned()],
            403,
        ),
        (vec!["null".to_owned()], 403),
        (vec!["https://APP.example".to_owned()], 200),
        (vec![format!("http://{host}")], 200),
        (vec![], 200),
    ];
    for (origins, expected) in &cases {
        let lines: String = origins.iter().map(|o| format!("\r\nOrigin: {o}")).collect();
        let ws_req = format!(
            "GET /ws/t HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13{lines}"
        );
        let sse_req = format!("GET /sse/t HTTP/1.1\r\nHost: {host}{lines}");
        let (ws, _) = raw(&server, &ws_req).await;
        let (sse, _) = raw(&server, &sse_req).await;
        let ws_expected = if *expected == 200 { 101 } else { 403 };
        assert_eq!((ws, sse), (ws_expected, *expected), "origins {origins:?}");
    }
    // Refused requests never joined: only the 3 admitted pairs did.
    assert!(
        eventually(|| hub.snapshot().total == 6).await,
        "{:?}",
        hub.snapshot()
    );
    server.stop().await;
}

// Defect 14: a clone's settings are its own.
#[tokio::test]
async fn a_clone_has_its_own_settings() {
    let hub = PubSub::new();
    let original = SseEndpoint::new(hub.clone()).max_connections(2);
    let _strict = original.clone().max_connections(0);
    let ws_original = WsEndpoint::new(hub).max_connections(2);
    let _ws_strict = ws_original.clone().max_connections(0);
    let router = Router::new()
        .push(Router::with_path("sse/{topic}").get(original.clone()))
        .push(Router::with_path("ws/{topic}").goal(ws_original.clone()));
    let server = TestServer::start(router).await;
    let a = reqwest::get(server.http("/sse/t")).await.expect("answer");
    let b = reqwest::get(server.http("/sse/t")).await.expect("answer");
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    let c = reqwest::get(server.http("/sse/t")).await.expect("answer");
    assert_eq!(c.status(), 503, "the original's own cap of 2");
    let (ws, _) = raw(&server, &upgrade("/ws/t", "\r\nSec-WebSocket-Version: 13")).await;
    assert_eq!(ws, 101, "the clone's cap of 0 did not reach the original");
    assert_eq!(original.open_connections(), 2, "the live count is shared");
    drop((a, b));
    server.stop().await;
}

// Defect 10 over the wire: the per-owner creation cap is that client's own 429.
#[tokio::test]
async fn one_client_creating_rooms_gets_its_own_429() {
    let hub = Rooms::with_config(HubConfig::new().max_topics_per_owner(3));
    let ep = named(WsEndpoint::new(hub.clone()));
    let server = TestServer::start(Router::with_path("ws/{topic}").goal(ep)).await;
    let mut held = Vec::new();
    for room in ["a", "b", "c"] {
        let path = format!("/ws/{room}?user=mallory");
        let (ws, _) = tokio_tungstenite::connect_async(server.ws(&path))
            .await
            .expect("within the cap");
        held.push(ws);
    }
    let (status, _) = raw(
        &server,
        &upgrade("/ws/d?user=mallory", "\r\nSec-WebSocket-Version: 13"),
    )
    .await;
    assert_eq!(status, 429);
    let (status, _) = raw(
        &server,
        &upgrade("/ws/d?user=alice", "\r\nSec-WebSocket-Version: 13"),
    )
    .await;
    assert_eq!(status, 101, "another user is not affected");
    drop(held);
    server.stop().await;
}

// Defect 11: behind nginx's usual setup (`proxy_add_x_forwarded_for`: it appends the peer to
// `X-Forwarded-For` and passes every other header through), a client could pick the address
// the per-address cap counts by sending its own `Forwarded: for=` or `X-Real-IP`. Only the
// header the operator names is read (default `X-Forwarded-For`), from its right end.
#[tokio::test]
async fn a_client_behind_a_trusted_proxy_cannot_pick_its_counted_address() {
    let hub = PubSub::new();
    let behind = SseEndpoint::new(hub)
        .max_connections_per_ip(1)
        .trusted_proxies(&["127.0.0.1"]);
    let server = TestServer::start(Router::with_path("sse/{topic}").get(behind)).await;
    let client = reqwest::Client::new();
    // What nginx forwards for the real client 203.0.113.7, which sent nothing itself.
    let first = client
        .get(server.http("/sse/t"))
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .expect("answer");
    assert_eq!(first.status(), 200);
    // The same client again, spoofing every header nginx passes through.
    let spoofs: [&[(&str, &str)]; 4] = [
        &[("forwarded", "for=198.51.100.1")],
        &[("x-real-ip", "198.51.100.2")],
        &[("x-forwarded-for", "198.51.100.3")],
        &[
            ("forwarded", "for=198.51.100.4"),
            ("x-real-ip", "198.51.100.5"),
            ("x-forwarded-for", "198.51.100.6, 10.0.0.1"),
        ],
    ];
    for spoof in spoofs {
        let mut req = client.get(server.http("/sse/t"));
        let mut forwarded_for = None;
        for (name, value) in spoof {
            if *name == "x-forwarded-for" {
                forwarded_for = Some(*value);
            } else {
                req = req.header(*name, *value);
            }
        }
        // nginx appends the address it saw to whatever the client sent.
        let chain = forwarded_for.map_or("203.0.113.7".to_owned(), |sent| {
            format!("{sent}, 203.0.113.7")
        });
        let res = req
            .header("x-forwarded-for", chain)
            .send()
            .await
            .expect("answer");
        assert_eq!(
            res.status(),
            429,
            "spoofed with {spoof:?}: counted as 203.0.113.7"
        );
        assert!(res.headers().contains_key("retry-after"));
    }
    drop(first);
    server.stop().await;

    // A proxy that sets `X-Real-IP` (or writes `Forwarded`), named as such: the header it
    // writes counts, `X-Forwarded-For` from the client doesn't.
    for (header, name, real) in [
        (ForwardedHeader::XRealIp, "x-real-ip", "203.0.113.8"),
        (ForwardedHeader::Forwarded, "forwarded", "for=203.0.113.8"),
    ] {
        let ep = SseEndpoint::new(PubSub::new())
            .max_connections_per_ip(1)
            .trusted_proxies(&["127.0.0.1"])
            .forwarded_header(header);
        let server = TestServer::start(Router::with_path("sse/{topic}").get(ep)).await;
        let open = |spoof: &'static str| {
            client
                .get(server.http("/sse/t"))
                .header(name, real)
                .header("x-forwarded-for", spoof)
                .send()
        };
        let first = open("198.51.100.1").await.expect("answer");
        let second = open("198.51.100.2").await.expect("answer");
        assert_eq!(
            (first.status().as_u16(), second.status().as_u16()),
            (200, 429),
            "{header:?}"
        );
        drop(first);
        server.stop().await;
    }
}

/// Frames of a WebSocket until `until` holds for one (included), as JSON.
async fn frames_until(
    ws: &mut Client,
    until: impl Fn(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    loop {
        let frame = next_frame(ws, WAIT).await;
        if let tokio_tungstenite::tungstenite::Message::Text(text) = frame {
            let v: serde_json::Value = serde_json::from_str(&text).expect("json");
            let done = until(&v);
            out.push(v);
            if done {
                return out;
            }
        }
    }
}

// "An unreadable resume id gets a reset": with several topics, a `last=<topic>:<junk>` used to
// be ignored (the topic started live, silently). It resets the topic it names, on both
// transports.
#[tokio::test]
async fn an_unreadable_id_for_one_of_several_topics_resets_that_topic() {
    let hub = PubSub::new();
    let router = Router::new()
        .push(Router::with_path("ws").goal(WsEndpoint::new(hub.clone())))
        .push(Router::with_path("sse").get(SseEndpoint::new(hub.clone())));
    let server = TestServer::start(router).await;
    hub.publish("a", "a0").await.expect("publish");
    let b0 = hub.publish("b", "b0").await.expect("publish");

    let path = format!("/ws?topic=a&topic=b&last=a:junk&last=b:{b0}");
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws(&path))
        .await
        .expect("connect");
    hub.publish("b", "b1").await.expect("publish");
    let got = frames_until(&mut ws, |v| v["data"] == "b1").await;
    let kinds: Vec<(String, String, String)> = got
        .iter()
        .map(|v| {
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
            (s("type"), s("topic"), s("reason") + &s("data"))
        })
        .collect();
    let expect =
        |t: &str, topic: &str, what: &str| (t.to_owned(), topic.to_owned(), what.to_owned());
    assert!(
        kinds.contains(&expect("reset", "a", "invalid")),
        "a reset for the topic the unreadable id names: {kinds:?}"
    );
    assert!(
        kinds.contains(&expect("message", "a", "a0")),
        "a's history: {kinds:?}"
    );
    assert!(
        !kinds.contains(&expect("message", "b", "b0"))
            && !kinds.iter().any(|k| k.1 == "b" && k.0 == "reset"),
        "b resumed after b0: {kinds:?}"
    );
    drop(ws);

    // SSE: the same through `lastEventId`.
    let res = reqwest::get(server.http("/sse?topic=a&topic=b&lastEventId=a:junk"))
        .await
        .expect("answer");
    assert_eq!(res.status(), 200);
    let mut body = res.bytes_stream();
    let mut text = String::new();
    while !text.contains("a0") {
        use futures_util::StreamExt;
        let chunk = tokio::time::timeout(WAIT, body.next())
            .await
            .expect("a chunk in time")
            .expect("open")
            .expect("chunk");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        text.contains("event: reset") && text.contains("\"invalid\""),
        "a reset before a's history: {text}"
    );
    server.stop().await;
}

// The default caps: 1,024 connections per client address (then 429), 10,000 per endpoint (then
// 503; its default is unit-tested in src/endpoint.rs, 10,000 sockets being past a test's file
// descriptors), both with `Retry-After` (default 5 s); a closed connection frees its slot.
#[tokio::test]
async fn the_default_caps_answer_429_and_503_with_retry_after() {
    let hub = PubSub::new();
    let sse = SseEndpoint::new(hub.clone());
    let ws = WsEndpoint::new(hub).max_connections(1);
    let router = Router::new()
        .push(Router::with_path("sse/{topic}").get(sse.clone()))
        .push(Router::with_path("ws/{topic}").goal(ws));
    let server = TestServer::start(router).await;
    let client = reqwest::Client::new();
    let mut open = Vec::new();
    for _ in 0..1_024 {
        let res = client
            .get(server.http("/sse/t"))
            .send()
            .await
            .expect("answer");
        assert_eq!(res.status(), 200);
        open.push(res);
    }
    let full = client
        .get(server.http("/sse/t"))
        .send()
        .await
        .expect("answer");
    assert_eq!(full.status(), 429, "the 1,025th from one address");
    assert_eq!(
        full.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"5"[..])
    );
    drop(open.pop());
    assert!(eventually(|| sse.open_connections() == 1_023).await);
    let again = client
        .get(server.http("/sse/t"))
        .send()
        .await
        .expect("answer");
    assert_eq!(again.status(), 200, "a freed slot is taken again");
    // The endpoint's total cap (configured to 1 here).
    let (held, _) = tokio_tungstenite::connect_async(server.ws("/ws/t"))
        .await
        .expect("the one connection");
    let (second, head) = raw(&server, &upgrade("/ws/t", "\r\nSec-WebSocket-Version: 13")).await;
    assert_eq!(second, 503);
    assert!(
        head.to_ascii_lowercase().contains("\r\nretry-after: 5\r\n"),
        "{head}"
    );
    drop((open, again, held));
    server.stop().await;
}

/// A hub that counts each connection's leaves.
#[derive(Clone, Default)]
struct Leaves {
    hub: PubSub,
    left: std::sync::Arc<
        parking_lot::Mutex<std::collections::HashMap<salvo_realtime::ConnectionId, usize>>,
    >,
}

impl Hub for Leaves {
    type Subscription = <PubSub as Hub>::Subscription;

    async fn join(&self, conn: &Connection) -> Result<Self::Subscription, HubError> {
        self.hub.join(conn).await
    }

    async fn receive(
        &self,
        conn: &Connection,
        message: salvo_realtime::Publication,
    ) -> Result<(), HubError> {
        self.hub.receive(conn, message).await
    }

    async fn leave(&self, conn: &Connection, subscription: Self::Subscription) {
        *self.left.lock().entry(conn.id()).or_default() += 1;
        self.hub.leave(conn, subscription).await;
    }
}

/// What a drained-or-not client sees next: `Some(code)` for a Close, `None` for a message.
async fn closed_with(ws: &mut Client) -> Option<u16> {
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match next_frame(ws, WAIT).await {
            Message::Close(frame) => return Some(frame.map_or(0, |f| u16::from(f.code))),
            Message::Text(_) => return None,
            _ => {}
        }
    }
}

// `Drain::batches`: `size` connections are asked to close at once, then the next batch after
// the pause; each closes 1001 (an SSE stream ends), leaves the hub exactly once, and new
// requests get 503 from the start of the drain.
#[tokio::test]
async fn drain_closes_in_batches_with_1001_and_each_connection_leaves_once() {
    let hub = Leaves::default();
    // A pause far longer than the first `close_all` waits: only the first batch goes.
    let drain = salvo_realtime::Drain::new().batches(2, Duration::from_secs(3600));
    let ws = WsEndpoint::new(hub.clone()).drain(drain.clone());
    let sse = SseEndpoint::new(hub.clone()).drain(drain.clone());
    let router = Router::new()
        .push(Router::with_path("ws/{topic}").goal(ws))
        .push(Router::with_path("sse/{topic}").get(sse));
    let server = TestServer::start(router).await;
    let mut sockets = Vec::new();
    for _ in 0..5 {
        let (ws, _) = tokio_tungstenite::connect_async(server.ws("/ws/t"))
            .await
            .expect("connect");
        sockets.push(ws);
    }
    let sse = reqwest::get(server.http("/sse/t")).await.expect("answer");
    assert_eq!(sse.status(), 200);
    let mut sse = Box::pin(sse.bytes_stream());
    assert!(eventually(|| drain.open() == 6).await);

    let still_open = drain.close_all(Duration::from_millis(300)).await;
    assert!(still_open >= 4, "one batch of 2 at most: {still_open} open");
    assert!(
        eventually(|| drain.open() == 4).await,
        "the first batch closed"
    );
    let (refused, _) = raw(&server, &upgrade("/ws/t", "\r\nSec-WebSocket-Version: 13")).await;
    assert_eq!(refused, 503, "draining refuses new connections");
    hub.hub.publish("t", "still here").await.expect("publish");
    let mut first = Vec::new();
    for ws in &mut sockets {
        first.push(closed_with(ws).await);
    }
    // The stream: it ended (drained) or it carries the message.
    let mut text = String::new();
    let sse_drained = loop {
        use futures_util::StreamExt;
        match tokio::time::timeout(WAIT, sse.next())
            .await
            .expect("in time")
        {
            None => break true,
            Some(chunk) => text.push_str(&String::from_utf8_lossy(&chunk.expect("chunk"))),
        }
        if text.contains("still here") {
            break false;
        }
    };
    let closed: Vec<_> = first.iter().flatten().collect();
    assert!(closed.iter().all(|code| **code == 1001), "{first:?}");
    assert_eq!(
        closed.len() + usize::from(sse_drained),
        2,
        "two closed, the rest got the message: {first:?}, stream drained: {sse_drained}"
    );

    // The rest, one per batch: each batch waits the pause after the one before.
    let pause = Duration::from_millis(200);
    let _ = drain.clone().batches(1, pause);
    let started = std::time::Instant::now();
    assert_eq!(drain.close_all(WAIT).await, 0, "a clean drain");
    assert!(started.elapsed() >= pause * 3, "four batches, three pauses");
    for (ws, before) in sockets.iter_mut().zip(&first) {
        if before.is_none() {
            assert_eq!(closed_with(ws).await, Some(1001));
        }
    }
    if !sse_drained {
        use futures_util::StreamExt;
        while let Some(chunk) = tokio::time::timeout(WAIT, sse.next())
            .await
            .expect("in time")
        {
            chunk.expect("a clean end, no error");
        }
    }
    assert!(eventually(|| hub.left.lock().len() == 6).await);
    assert!(
        hub.left.lock().values().all(|n| *n == 1),
        "each connection left once: {:?}",
        hub.left.lock()
    );
    server.stop().await;
}

// A panic in one of the application's closures (`topics`, `identify` or its future,
// `allow_origin_fn`) answers 500 on both transports, instead of a reset with no answer;
// nothing is joined or counted, and the next request is served.
#[tokio::test]
async fn a_panicking_application_closure_is_a_500() {
    fn crash<T>(what: &str) -> T {
        panic!("{what} panicked")
    }
    let hub = Counted::new(PubSub::new());
    let ok_or_crash = |req: &salvo::Request| req.query::<String>("crash");
    let ws = WsEndpoint::new(hub.clone())
        .topics(move |req, _| match ok_or_crash(req).as_deref() {
            Some("topics") => crash("topics"),
            _ => Ok(vec![salvo_realtime::Topic::new("t")?]),
        })
        .identify_async(|req, _| {
            let which = req.query::<String>("crash");
            if which.as_deref() == Some("identify") {
                crash::<()>("identify");
            }
            async move {
                if which.as_deref() == Some("identify_future") {
                    crash::<()>("identify's future");
                }
                Ok(None)
            }
        })
        .allow_origin_fn(|_origin, req, _| {
            req.query::<String>("crash").as_deref() == Some("origin") && crash("allow_origin_fn")
        });
    let sse = SseEndpoint::new(hub.clone()).identify(|req, _| {
        match req.query::<String>("crash").as_deref() {
            Some("identify") => crash("identify"),
            _ => Ok(None),
        }
    });
    let router = Router::new()
        .push(Router::with_path("ws").goal(ws.clone()))
        .push(Router::with_path("sse/{topic}").get(sse));
    let server = TestServer::start(router).await;
    for which in ["topics", "identify", "identify_future", "origin"] {
        // The origin predicate runs for a foreign `Origin` only.
        let origin = if which == "origin" {
            "\r\nOrigin: https://elsewhere.example"
        } else {
            ""
        };
        let (status, head) = raw(
            &server,
            &upgrade(
                &format!("/ws?crash={which}"),
                &format!("\r\nSec-WebSocket-Version: 13{origin}"),
            ),
        )
        .await;
        assert_eq!(status, 500, "{which}: {head}");
    }
    let sse = reqwest::get(server.http("/sse/t?crash=identify"))
        .await
        .expect("an answer");
    assert_eq!(sse.status(), 500);
    assert_eq!((ws.open_connections(), hub.snapshot().total), (0, 0));
    let (status, _) = raw(&server, &upgrade("/ws", "\r\nSec-WebSocket-Version: 13")).await;
    assert_eq!(status, 101, "still serving");
    server.stop().await;
}
