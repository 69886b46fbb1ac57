//! The HTTP publish handler over real loopback sockets: bodies by content type, ids, the body
//! cap (declared and chunked), bad input, authorization and the hub's own refusals.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{TestServer, messages, ready};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use salvo::Router;
use salvo_realtime::hub::MAX_JSON_DEPTH;
use salvo_realtime::publish::{DEFAULT_MAX_BODY, Publish, Publisher};
use salvo_realtime::sse::SseEndpoint;
use salvo_realtime::{Delivery, HubConfig, MessageId, Position, PubSub, Rejection, Rooms, Topic};

/// The bound on every wait for the network.
const WAIT: Duration = Duration::from_secs(5);

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(WAIT)
        .build()
        .expect("client")
}

/// Serves `publish` at `POST /publish/{topic}`.
async fn serve<H: Publisher>(publish: Publish<H>) -> TestServer {
    TestServer::start(Router::with_path("publish/{topic}").post(publish)).await
}

/// Posts `body` with `content_type` (none if `None`) to `path`: the status and the body.
async fn post(
    server: &TestServer,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (u16, String) {
    let mut req = client().post(server.http(path)).body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let res = req.send().await.expect("an answer");
    let status = res.status().as_u16();
    (status, res.text().await.unwrap_or_default())
}

/// The id of a `200` answer, after checking its topic.
fn published(status: u16, body: &str, topic: &str) -> MessageId {
    assert_eq!(status, 200, "published: {body}");
    let reply: serde_json::Value = serde_json::from_str(body).expect("a JSON answer");
    assert_eq!(reply["topic"], topic);
    reply["id"]
        .as_str()
        .expect("an id")
        .parse()
        .expect("a message id")
}

#[tokio::test]
async fn json_text_and_binary_bodies_arrive_as_such_with_the_answered_ids() {
    let hub = PubSub::new();
    let mut sub = hub.subscribe("news", Position::Live).await.expect("sub");
    let server = serve(Publish::new(hub.clone()).allow_anyone()).await;

    let (s, b) = post(
        &server,
        "/publish/news?event=alert",
        Some("application/json; charset=utf-8"),
        r#"{"title":"up"}"#,
    )
    .await;
    let json_id = published(s, &b, "news");
    let (s, b) = post(
        &server,
        "/publish/news",
        Some("text/plain;charset=UTF-8"),
        "héllo",
    )
    .await;
    let text_id = published(s, &b, "news");
    let (s, b) = post(&server, "/publish/news", None, vec![0u8, 0xff, 7]).await;
    let binary_id = published(s, &b, "news");
    let (s, b) = post(&server, "/publish/news", Some("text/plain"), "").await;
    let empty_id = published(s, &b, "news");

    let got = messages(&ready(&mut sub));
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(
        got.iter().map(|m| m.id()).collect::<Vec<_>>(),
        vec![json_id, text_id, binary_id, empty_id]
    );
    assert_eq!(got[0].event().map(|e| e.as_str()), Some("alert"));
    assert_eq!(
        got[0].json::<serde_json::Value>().expect("json"),
        serde_json::json!({"title": "up"})
    );
    let envelope: serde_json::Value =
        serde_json::from_slice(&got[0].envelope_json()).expect("envelope");
    assert_eq!(
        envelope["data"]["title"], "up",
        "JSON travels as a value: {envelope}"
    );
    assert_eq!(got[1].payload().as_text(), Some("héllo"));
    assert!(got[1].event().is_none());
    assert!(!got[2].payload().is_text());
    assert_eq!(got[2].payload().as_bytes(), &[0u8, 0xff, 7]);
    assert_eq!(got[3].payload().as_text(), Some(""));
    server.stop().await;
}

#[tokio::test]
async fn an_sse_subscriber_receives_the_published_message_under_the_answered_id() {
    let hub = PubSub::new();
    let feed = vec![Topic::new("feed").expect("topic")];
    let router = Router::new()
        .push(
            Router::with_path("events")
                .get(SseEndpoint::new(hub.clone()).topics(move |_, _| Ok(feed.clone()))),
        )
        .push(Router::with_path("publish/{topic}").post(Publish::new(hub.clone()).allow_anyone()));
    let server = TestServer::start(router).await;
    let res = client()
        .get(server.http("/events"))
        .send()
        .await
        .expect("stream");
    assert_eq!(res.status().as_u16(), 200);
    let mut events = res.bytes_stream().eventsource();
    // The stream is joined once the hub counts the subscriber's topic.
    assert!(common::eventually(|| hub.topic_count() == 1).await);

    let (s, b) = post(
        &server,
        "/publish/feed?event=deploy",
        Some("application/json"),
        "[1,2]",
    )
    .await;
    let id = published(s, &b, "feed");
    let event = tokio::time::timeout(WAIT, events.next())
        .await
        .expect("in time")
        .expect("an event")
        .expect("well formed");
    assert_eq!(
        (event.event.as_str(), event.data.as_str(), event.id),
        ("deploy", "[1,2]", id.to_string())
    );
    server.stop().await;
}

#[tokio::test]
async fn a_body_one_byte_over_the_cap_is_413_and_publishes_nothing() {
    let hub = PubSub::with_config(HubConfig::new().max_payload(1 << 20));
    let server = serve(Publish::new(hub.clone()).allow_anyone().max_body(1000)).await;
    let (s, _) = post(&server, "/publish/t", None, vec![b'x'; 1001]).await;
    assert_eq!(s, 413);
    assert!(hub.history("t").is_empty());
    let (s, b) = post(&server, "/publish/t", None, vec![b'x'; 1000]).await;
    published(s, &b, "t");
    assert_eq!(hub.history("t").len(), 1);

    // The default cap is the default hub payload limit, 64 KiB.
    let hub = PubSub::new();
    let server2 = serve(Publish::new(hub.clone()).allow_anyone()).await;
    let (s, _) = post(
        &server2,
        "/publish/t",
        None,
        vec![b'x'; DEFAULT_MAX_BODY + 1],
    )
    .await;
    assert_eq!(s, 413);
    let (s, b) = post(&server2, "/publish/t", None, vec![b'x'; DEFAULT_MAX_BODY]).await;
    published(s, &b, "t");
    assert_eq!(hub.history("t").len(), 1);
    server.stop().await;
    server2.stop().await;
}

/// A body without `Content-Length`: chunks of 256 bytes, `total` bytes in all.
fn chunked(total: usize) -> reqwest::Body {
    let chunks: Vec<Result<Bytes, std::io::Error>> = (0..total)
        .step_by(256)
        .map(|start| Ok(Bytes::from(vec![b'c'; (total - start).min(256)])))
        .collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
}

#[tokio::test]
async fn a_chunked_body_over_the_cap_is_413_and_publishes_nothing() {
    let hub = PubSub::new();
    let server = serve(Publish::new(hub.clone()).allow_anyone().max_body(4096)).await;
    let (s, _) = post(&server, "/publish/t", Some("text/plain"), chunked(4097)).await;
    assert_eq!(s, 413);
    assert!(hub.history("t").is_empty());
    let (s, b) = post(&server, "/publish/t", Some("text/plain"), chunked(4096)).await;
    let id = published(s, &b, "t");
    let history = hub.history("t");
    assert_eq!(history.len(), 1);
    assert_eq!((history[0].id(), history[0].payload().len()), (id, 4096));

    // A body far larger than the cap is refused without being read whole.
    let (s, _) = post(&server, "/publish/t", None, chunked(8 << 20)).await;
    assert_eq!(s, 413);
    assert_eq!(hub.history("t").len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn bad_json_bad_text_and_bad_event_names_are_400_and_publish_nothing() {
    let hub = PubSub::new();
    let server = serve(Publish::new(hub.clone()).allow_anyone()).await;
    let deep = "[".repeat(MAX_JSON_DEPTH + 1) + &"]".repeat(MAX_JSON_DEPTH + 1);
    let long_event = format!("/publish/t?event={}", "e".repeat(65));
    let cases: Vec<(&str, Option<&str>, Vec<u8>)> = vec![
        ("/publish/t", Some("application/json"), b"{\"a\":".to_vec()),
        ("/publish/t", Some("application/json"), Vec::new()),
        ("/publish/t", Some("application/json"), deep.into_bytes()),
        ("/publish/t", Some("text/plain"), vec![0xc3, 0x28]),
        ("/publish/t?event=", Some("text/plain"), b"x".to_vec()),
        ("/publish/t?event=a%0Ab", Some("text/plain"), b"x".to_vec()),
        (&long_event, Some("text/plain"), b"x".to_vec()),
        ("/publish/bad%0Atopic", Some("text/plain"), b"x".to_vec()),
    ];
    for (path, ct, body) in cases {
        let (s, b) = post(&server, path, ct, body).await;
        assert_eq!(s, 400, "{path} {ct:?}: {b}");
    }
    assert!(hub.history("t").is_empty());
    assert_eq!(hub.topic_count(), 0);
    // The deepest JSON allowed passes.
    let limit = "[".repeat(MAX_JSON_DEPTH) + &"]".repeat(MAX_JSON_DEPTH);
    let (s, b) = post(&server, "/publish/t", Some("application/json"), limit).await;
    published(s, &b, "t");
    server.stop().await;
}

#[tokio::test]
async fn the_authorizer_answers_401_and_403_and_a_refusal_leaves_no_history() {
    let hub = PubSub::new();
    let publish = Publish::new(hub.clone()).authorize(|req, topic| {
        match req.header::<String>("authorization").as_deref() {
            None => Err(Rejection::unauthorized("missing credentials")),
            Some("Bearer admin") => Ok(()),
            Some(_) if topic.as_str() == "public" => Ok(()),
            Some(_) => Err(Rejection::forbidden("admins only")),
        }
    });
    let server = serve(publish).await;
    let send = |path: &str, auth: Option<&str>| {
        let mut req = client()
            .post(server.http(path))
            .header("content-type", "text/plain")
            .body("hi");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        async move { req.send().await.expect("answer").status().as_u16() }
    };
    assert_eq!(send("/publish/ops", None).await, 401);
    assert_eq!(send("/publish/ops", Some("Bearer guest")).await, 403);
    assert!(
        hub.history("ops").is_empty(),
        "a refused publish leaves nothing"
    );
    assert_eq!(send("/publish/public", Some("Bearer guest")).await, 200);
    assert_eq!(send("/publish/ops", Some("Bearer admin")).await, 200);
    assert_eq!(hub.history("ops").len(), 1);
    assert_eq!(hub.history("public").len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn an_async_authorizer_runs_before_the_body_is_read() {
    let hub = PubSub::new();
    let publish = Publish::new(hub.clone())
        .max_body(16)
        .authorize_async(|req, _| {
            let token = req.header::<String>("authorization");
            async move {
                tokio::task::yield_now().await;
                match token {
                    Some(t) if t == "Bearer ok" => Ok(()),
                    _ => Err(Rejection::unauthorized("bad token")),
                }
            }
        });
    let server = serve(publish).await;
    // Oversized and unauthorized: the rule answers first.
    let res = client()
        .post(server.http("/publish/t"))
        .body(vec![b'x'; 64])
        .send()
        .await
        .expect("answer");
    assert_eq!(res.status().as_u16(), 401);
    let res = client()
        .post(server.http("/publish/t"))
        .header("authorization", "Bearer ok")
        .body("small")
        .send()
        .await
        .expect("answer");
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(hub.history("t").len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn without_a_rule_every_publish_is_403() {
    let hub = PubSub::new();
    let server = serve(Publish::new(hub.clone())).await;
    let (s, _) = post(&server, "/publish/t", Some("text/plain"), "hi").await;
    assert_eq!(s, 403);
    assert_eq!(hub.topic_count(), 0);
    server.stop().await;
}

#[tokio::test]
async fn hub_refusals_answer_with_the_endpoints_status_map() {
    // Rooms: `@user` logs are reserved (400); a payload over the hub's own limit is 413.
    let rooms = Rooms::with_config(HubConfig::new().max_payload(8));
    let server = serve(Publish::new(rooms.clone()).allow_anyone()).await;
    let (s, _) = post(&server, "/publish/%40alice", Some("text/plain"), "hi").await;
    assert_eq!(s, 400);
    let (s, _) = post(&server, "/publish/lobby", Some("text/plain"), "123456789").await;
    assert_eq!(s, 413);
    let (s, b) = post(&server, "/publish/lobby", Some("text/plain"), "12345678").await;
    published(s, &b, "lobby");
    assert_eq!(rooms.history("lobby").len(), 1);
    server.stop().await;

    // A full hub: 503 with Retry-After, as on the WebSocket and SSE endpoints.
    let hub = PubSub::with_config(HubConfig::new().max_topics(1));
    let server = serve(Publish::new(hub.clone()).allow_anyone()).await;
    let (s, b) = post(&server, "/publish/one", Some("text/plain"), "x").await;
    published(s, &b, "one");
    let res = client()
        .post(server.http("/publish/two"))
        .body("x")
        .send()
        .await
        .expect("answer");
    assert_eq!(res.status().as_u16(), 503);
    assert!(res.headers().contains_key("retry-after"));
    assert!(hub.history("two").is_empty());
    server.stop().await;
}

#[tokio::test]
async fn a_fixed_topic_renamed_parameters_and_other_methods() {
    let hub = PubSub::new();
    let fixed = Publish::new(hub.clone())
        .allow_anyone()
        .topic(Topic::new("fixed").expect("topic"))
        .event_param("kind");
    let named = Publish::new(hub.clone()).allow_anyone().topic_param("name");
    let router = Router::new()
        .push(Router::with_path("fixed/{topic}").post(fixed))
        .push(Router::with_path("named/{name}").post(named));
    let server = TestServer::start(router).await;
    let (s, b) = post(&server, "/fixed/ignored?kind=k", Some("text/plain"), "a").await;
    published(s, &b, "fixed");
    let history = hub.history("fixed");
    assert_eq!(history[0].event().map(|e| e.as_str()), Some("k"));
    assert!(hub.history("ignored").is_empty());
    let (s, b) = post(&server, "/named/room", Some("text/plain"), "b").await;
    published(s, &b, "room");
    let get = client()
        .get(server.http("/named/room"))
        .send()
        .await
        .expect("answer");
    assert_eq!(get.status().as_u16(), 405, "POST only");
    assert_eq!(hub.history("room").len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_counted_hub_publishes_through_its_inner_hub() {
    let counted = salvo_realtime::Counted::new(PubSub::new());
    let mut sub = counted
        .inner()
        .subscribe("t", Position::Live)
        .await
        .expect("sub");
    let server = serve(Publish::new(counted.clone()).allow_anyone()).await;
    let (s, b) = post(&server, "/publish/t", Some("text/plain"), "via counted").await;
    let id = published(s, &b, "t");
    let got = ready(&mut sub);
    assert!(
        matches!(&got[..], [Delivery::Message(m)] if m.id() == id),
        "{got:?}"
    );
    server.stop().await;
}

/// Issue 18: a panic in the application's authorization rule (in the call or in its future)
/// answers 500 and publishes nothing; the server keeps serving.
#[tokio::test]
async fn a_panicking_authorization_rule_is_a_500_and_publishes_nothing() {
    let hub = PubSub::new();
    let sync_rule = Publish::new(hub.clone())
        .authorize(|_req, _topic| -> Result<(), Rejection> { panic!("a bug in the app's rule") });
    let async_rule = Publish::new(hub.clone()).authorize_async(|_req, _topic| async move {
        if true {
            panic!("a bug in the app's async rule");
        }
        Ok::<(), Rejection>(())
    });
    for publish in [sync_rule, async_rule] {
        let server = serve(publish).await;
        let (status, _) = post(&server, "/publish/news", Some("text/plain"), "hi").await;
        assert_eq!(status, 500);
        assert!(hub.history("news").is_empty(), "nothing published");
        let (status, _) = post(&server, "/publish/news", Some("text/plain"), "again").await;
        assert_eq!(status, 500, "the server still answers");
    }
}
