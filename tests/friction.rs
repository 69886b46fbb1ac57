//! What a new user reaches for first: typed payloads, identities from borrowed strings, `?` in
//! endpoint closures, literal event names, one origin list shared with CORS, `TCP_NODELAY`, and
//! the defaults a chat expects (no echo to the sender, nothing but payloads under raw framing).

mod common;

use std::time::Duration;

use common::{TestServer, messages, ready, texts};
use futures_util::StreamExt;
use salvo::Router;
use salvo::http::HeaderValue;
use salvo_realtime::hub::{EventName, InboundPolicy};
use salvo_realtime::sse::SseEndpoint;
use salvo_realtime::ws::{Framing, WsEndpoint};
use salvo_realtime::{
    Connection, Hub, HubConfig, Identity, Position, PubSub, Publication, Rejection, Rooms, Topic,
};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const WAIT: Duration = Duration::from_secs(10);

fn member(user: &str, room: &str) -> Connection {
    Connection::new()
        .authenticated(Identity::new(user))
        .subscribe(Topic::new(room).expect("valid room"), Position::Live)
}

#[derive(serde::Serialize)]
struct Price {
    eur: f64,
}

/// A `json!` value broadcasts as it is, and a value of one's own type through
/// `Publication::json`; both arrive as JSON text.
#[tokio::test]
async fn json_values_and_serialize_types_publish_directly() {
    let rooms = Rooms::new();
    let conn = member("alice", "lobby");
    let mut sub = rooms.join(&conn).await.expect("join");
    ready(&mut sub);
    rooms
        .broadcast("lobby", serde_json::json!({ "text": "hi" }))
        .await
        .expect("broadcast a json! value");
    let got = messages(&ready(&mut sub));
    assert_eq!(got.len(), 1);
    let value: serde_json::Value = got[0].json().expect("json payload");
    assert_eq!(value, serde_json::json!({ "text": "hi" }));
    let channels = salvo_realtime::channel::Channels::new(rooms.clone());
    let value = serde_json::json!({ "n": 2 });
    channels
        .broadcast("lobby", &value)
        .await
        .expect("broadcast");
    assert_eq!(texts(&ready(&mut sub)), [r#"{"n":2}"#]);

    let hub = PubSub::new();
    let mut prices = hub.subscribe("prices", Position::Live).await.expect("sub");
    // Salvo's own `Json`, as in a handler's response; and an event name in the same call.
    hub.publish("prices", salvo::prelude::Json(&Price { eur: 1.08 }))
        .await
        .expect("publish");
    hub.publish(
        "prices",
        Publication::json(&Price { eur: 1.09 }).event("tick"),
    )
    .await
    .expect("publish");
    let got = messages(&ready(&mut prices));
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].payload().as_text(), Some(r#"{"eur":1.08}"#));
    assert_eq!(got[0].event(), None);
    assert_eq!(got[1].payload().as_text(), Some(r#"{"eur":1.09}"#));
    assert_eq!(got[1].event().map(EventName::as_str), Some("tick"));
    // A value that can't be encoded, or a bad event name, fails the publish: nothing is sent.
    let unencodable = std::collections::HashMap::from([((1, 2), 3)]);
    assert!(matches!(
        hub.publish("prices", salvo::prelude::Json(&unencodable))
            .await,
        Err(salvo_realtime::error::HubError::Json(_))
    ));
    assert!(matches!(
        hub.publish("prices", Publication::json(&1).event("")).await,
        Err(salvo_realtime::error::HubError::InvalidEvent(_))
    ));
    assert!(
        ready(&mut prices).is_empty(),
        "nothing of a failed publish is sent"
    );
}

/// `Identity::new` takes a borrowed `String` (a session field) as well as `&str` and `String`.
#[test]
fn identity_takes_a_borrowed_string() {
    let user = String::from("alice");
    assert_eq!(Identity::new(&user).user_id(), "alice");
    assert_eq!(Identity::new(user.as_str()), Identity::new(user.clone()));
}

/// An event name needs no `Result` on a publication (a bad one fails the publish); an invalid
/// literal `EventName` is a panic naming it.
#[test]
fn literal_event_names_are_infallible() {
    let p = Publication::new("x").event("presence.custom");
    assert_eq!(
        p.event_name().map(EventName::as_str),
        Some("presence.custom")
    );
    assert_eq!(
        EventName::from_static("chat"),
        EventName::new("chat").expect("valid")
    );
    let panic = std::panic::catch_unwind(|| EventName::from_static("a\nb"))
        .expect_err("an invalid literal panics");
    let text = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .unwrap_or_default();
    assert!(text.contains("invalid event name"), "{text}");
}

/// `Topic::new(..)?` inside a `topics` closure: a bad name answers 400, a good one connects.
#[tokio::test]
async fn topic_errors_in_a_topics_closure_answer_400() {
    let sse = SseEndpoint::new(PubSub::new()).topics(|req, _| {
        let name = req.query::<String>("room").unwrap_or_default();
        Ok::<_, Rejection>(vec![Topic::new(&format!("room.{name}"))?])
    });
    let server = TestServer::start(Router::with_path("events").goal(sse)).await;
    let client = reqwest::Client::new();
    let status =
        |query: &'static str| http_status(client.get(server.http(&format!("/events?{query}"))));
    assert_eq!(status("room=a%0Ab").await, 400);
    assert_eq!(status("room=ok").await, 200);
    server.stop().await;
}

/// The status `req` is answered with (within `WAIT`).
async fn http_status(req: reqwest::RequestBuilder) -> u16 {
    let resp = tokio::time::timeout(WAIT, req.send())
        .await
        .expect("answer in time")
        .expect("response");
    resp.status().as_u16()
}

/// The status a WebSocket handshake to `url` from `origin` is answered with: 101, or the
/// refusal's (within `WAIT`).
async fn handshake_status(url: String, origin: &str) -> u16 {
    let mut req = url.into_client_request().expect("request");
    req.headers_mut()
        .insert("origin", origin.parse().expect("header"));
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("answer in time")
    {
        Ok((_, resp)) => resp.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
    }
}

/// One function, the one list (README, "Origins and CORS: one list").
fn trusted_origin(origin: &HeaderValue, _req: &salvo::Request, _depot: &salvo::Depot) -> bool {
    origin.as_bytes() == b"https://app.example"
}

/// `allow_origin_fn` admits what the shared predicate accepts, on both endpoints, and nothing
/// else from another host.
#[tokio::test]
async fn one_origin_predicate_serves_both_endpoints() {
    let rooms = Rooms::new();
    let ws = WsEndpoint::new(rooms.clone()).allow_origin_fn(trusted_origin);
    let sse = SseEndpoint::new(rooms).allow_origin_fn(trusted_origin);
    let router = Router::new()
        .push(Router::with_path("ws/{topic}").goal(ws))
        .push(Router::with_path("events/{topic}").goal(sse));
    let server = TestServer::start(router).await;

    let ws_from = |origin: &'static str| handshake_status(server.ws("/ws/lobby"), origin);
    assert_eq!(ws_from("https://app.example").await, 101);
    assert_eq!(ws_from("https://evil.example").await, 403);

    let client = reqwest::Client::new();
    let sse_status = |origin: &'static str| {
        http_status(
            client
                .get(server.http("/events/lobby"))
                .header("origin", origin),
        )
    };
    assert_eq!(sse_status("https://app.example").await, 200);
    assert_eq!(sse_status("https://evil.example").await, 403);
    server.stop().await;
}

/// The README's one list of origins, served: salvo-cors (through `AllowOrigin::dynamic`) and
/// both endpoints agree on every origin.
#[tokio::test]
async fn one_origin_list_decides_cors_and_both_endpoints_alike() {
    use salvo::cors::{AllowOrigin, Cors};
    let rooms = Rooms::new();
    let ws = WsEndpoint::new(rooms.clone()).allow_origin_fn(trusted_origin);
    let sse = SseEndpoint::new(rooms).allow_origin_fn(trusted_origin);
    let cors = Cors::new()
        .allow_origin(AllowOrigin::dynamic(|origin, req, depot| {
            origin.filter(|o| trusted_origin(o, req, depot)).cloned()
        }))
        .into_handler();
    #[salvo::handler]
    async fn data() -> &'static str {
        "data"
    }
    let router = Router::new()
        .hoop(cors)
        .push(Router::with_path("api").get(data))
        .push(Router::with_path("ws").goal(ws))
        .push(Router::with_path("events/{topic}").get(sse));
    let server = TestServer::start(router).await;
    let client = reqwest::Client::new();
    for (origin, trusted) in [
        ("https://app.example", true),
        ("https://evil.example", false),
        ("https://app.example.evil", false),
    ] {
        let api = client
            .get(server.http("/api"))
            .header("origin", origin)
            .send()
            .await
            .expect("answer");
        let allowed = api
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap_or_default().to_owned());
        assert_eq!(
            allowed.as_deref(),
            trusted.then_some(origin),
            "CORS for {origin}"
        );
        let sse = client
            .get(server.http("/events/lobby"))
            .header("origin", origin)
            .send()
            .await
            .expect("answer");
        assert_eq!(sse.status() == 200, trusted, "SSE for {origin}");
        let ws_status = handshake_status(server.ws("/ws?topic=lobby"), origin).await;
        assert_eq!(
            ws_status,
            if trusted { 101 } else { 403 },
            "WebSocket for {origin}"
        );
    }
    server.stop().await;
}

/// A listener with `TCP_NODELAY` set hands it to every socket it accepts, and Salvo serves from
/// such a listener (the README's recipe).
#[tokio::test]
async fn nodelay_on_the_listener_reaches_accepted_sockets() {
    let listener = nodelay_listener();
    let addr = listener.local_addr().expect("bound");
    let client = tokio::net::TcpStream::connect(addr);
    let (accepted, client) = tokio::join!(listener.accept(), client);
    let (accepted, _) = accepted.expect("accepted");
    assert!(accepted.nodelay().expect("read TCP_NODELAY"));
    drop((accepted, client));

    // A listener left alone accepts with Nagle on: the check above can fail.
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let client = tokio::net::TcpStream::connect(plain.local_addr().expect("bound"));
    let (accepted, _client) = tokio::join!(plain.accept(), client);
    assert!(!accepted.expect("accepted").0.nodelay().expect("read"));

    let acceptor = salvo::conn::tcp::TcpAcceptor::try_from(nodelay_listener()).expect("acceptor");
    let addr = acceptor.local_addr().expect("bound");
    #[salvo::handler]
    async fn hello() -> &'static str {
        "hello"
    }
    let server = salvo::Server::new(acceptor);
    let handle = server.handle();
    let task = tokio::spawn(server.serve(Router::new().get(hello)));
    let body = tokio::time::timeout(WAIT, async {
        reqwest::get(format!("http://{addr}/"))
            .await
            .expect("response")
            .text()
            .await
            .expect("body")
    })
    .await
    .expect("answer in time");
    assert_eq!(body, "hello");
    handle.stop_forceful();
    let _ = tokio::time::timeout(WAIT, task).await;
}

fn nodelay_listener() -> tokio::net::TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_nodelay(true).expect("set TCP_NODELAY");
    socket
        .bind("127.0.0.1:0".parse().expect("address"))
        .expect("bind");
    socket.listen(64).expect("listen")
}

/// `Rooms` doesn't send a member's message back to the connection that sent it, by default;
/// its other rooms' members (and its user's other connections) get it. `Publish` echoes.
#[tokio::test]
async fn rooms_do_not_echo_to_the_sender_by_default() {
    let rooms = Rooms::new();
    let (alice, alice_tab, bob) = (
        member("alice", "lobby"),
        member("alice", "lobby"),
        member("bob", "lobby"),
    );
    let mut subs = Vec::new();
    for conn in [&alice, &alice_tab, &bob] {
        subs.push(rooms.join(conn).await.expect("join"));
    }
    for sub in &mut subs {
        ready(sub);
    }
    rooms.receive(&alice, "hi".into()).await.expect("receive");
    let got: Vec<Vec<String>> = subs.iter_mut().map(|s| texts(&ready(s))).collect();
    assert_eq!(got, [vec![], vec!["hi".to_owned()], vec!["hi".to_owned()]]);

    let echoing = Rooms::with_config(HubConfig::new().inbound(InboundPolicy::Publish));
    let mut sub = echoing.join(&alice).await.expect("join");
    ready(&mut sub);
    echoing.receive(&alice, "hi".into()).await.expect("receive");
    assert_eq!(texts(&ready(&mut sub)), ["hi"]);
}

/// An anonymous client with raw framing gets payloads only: no presence snapshot it couldn't
/// parse, no presence notices when others come and go.
#[tokio::test]
async fn raw_framing_carries_no_presence() {
    let rooms = Rooms::new();
    let ws = WsEndpoint::new(rooms.clone()).framing(Framing::Raw);
    let server = TestServer::start(Router::with_path("ws/{topic}").goal(ws)).await;
    let (mut raw, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async(server.ws("/ws/lobby")),
    )
    .await
    .expect("handshake in time")
    .expect("handshake");
    assert!(
        common::eventually(|| rooms.connection_count() == 1).await,
        "the raw client joined"
    );
    // Someone else comes and goes, which would send presence notices with envelopes.
    let other = member("bob", "lobby");
    let sub = rooms.join(&other).await.expect("join");
    rooms.leave(&other, sub).await;
    rooms
        .broadcast("lobby", "payload")
        .await
        .expect("broadcast");
    let first = loop {
        let frame = tokio::time::timeout(WAIT, raw.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("frame");
        if !matches!(frame, Message::Ping(_) | Message::Pong(_)) {
            break frame;
        }
    };
    assert_eq!(first, Message::text("payload"));
    raw.close(None).await.expect("close");
    server.stop().await;
}
