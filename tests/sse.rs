//! The Server-Sent-Events endpoint over real loopback sockets: framing, resume, identity, caps,
//! drain, the WHATWG encoding rules and Salvo's `Compression` middleware.

mod common;
#[allow(dead_code)]
#[path = "../examples/notifications.rs"]
mod notifications;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io::Write as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{TestServer, eventually};
use eventsource_stream::{Event, Eventsource};
use futures_util::{FutureExt, Stream, StreamExt};
use proptest::prelude::*;
use salvo::Router;
use salvo::compression::Compression;
use salvo_realtime::error::HubError;
use salvo_realtime::hub::{Epoch, EventName};
use salvo_realtime::sse::{self, SseEndpoint};
use salvo_realtime::{Connection, Counted, Hub};
use salvo_realtime::{
    Delivery, Drain, HubConfig, Identity, MessageId, Payload, Position, PubSub, Publication,
    Rejection, Rooms, Topic,
};

/// The bound on every wait for the network.
const WAIT: Duration = Duration::from_secs(5);

type Counter = Counted<PubSub>;

fn counted() -> Counter {
    Counted::new(PubSub::new())
}

/// A hub that counts `leave` calls, to check the endpoint hands every subscription back
/// through `leave` (not only by dropping it, which `Counted` alone can't tell apart).
#[derive(Clone)]
struct Leaves {
    hub: Counter,
    left: Arc<AtomicUsize>,
}

impl Leaves {
    fn new(hub: Counter) -> Self {
        Self {
            hub,
            left: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn left(&self) -> u64 {
        self.left.load(Ordering::SeqCst) as u64
    }
}

impl Hub for Leaves {
    type Subscription = <Counter as Hub>::Subscription;

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
        self.left.fetch_add(1, Ordering::SeqCst);
        self.hub.leave(conn, subscription).await;
    }
}

/// Every connection that joined has left through `leave`, once.
async fn all_left(spy: &Leaves) {
    assert!(
        eventually(|| {
            let s = spy.hub.snapshot();
            s.open == 0 && spy.left() == s.total
        })
        .await,
        "joined {:?}, left {}",
        spy.hub.snapshot(),
        spy.left()
    );
}

/// An endpoint with a short keep-alive, so that a vanished client is noticed quickly.
fn endpoint<H: Hub>(hub: H) -> SseEndpoint<H> {
    SseEndpoint::new(hub).keep_alive(Duration::from_millis(100))
}

async fn serve<H: Hub>(endpoint: SseEndpoint<H>) -> TestServer {
    TestServer::start(Router::with_path("events/{topic}").get(endpoint)).await
}

async fn get(url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    tokio::time::timeout(WAIT, req.send())
        .await
        .expect("response headers in time")
        .expect("request sent")
}

async fn publish(hub: &PubSub, topic: &str, p: impl Into<Publication>) -> MessageId {
    hub.publish(topic, p).await.expect("published")
}

/// An open event stream: parsed live by eventsource-stream, with every raw byte kept.
struct Client {
    events: Pin<Box<dyn Stream<Item = Result<Event, String>> + Send>>,
    raw: Arc<Mutex<Vec<u8>>>,
    pending: VecDeque<Event>,
}

impl Client {
    fn new(resp: reqwest::Response) -> Self {
        let raw = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&raw);
        let events = resp
            .bytes_stream()
            .inspect(move |chunk| {
                if let Ok(bytes) = chunk {
                    log.lock().expect("raw log").extend_from_slice(bytes);
                }
            })
            .eventsource()
            .map(|r| r.map_err(|e| e.to_string()));
        Self {
            events: Box::pin(events),
            raw,
            pending: VecDeque::new(),
        }
    }

    async fn open(url: &str, headers: &[(&str, &str)]) -> Self {
        let resp = get(url, headers).await;
        assert_eq!(resp.status(), 200, "{url}");
        Self::new(resp)
    }

    fn raw(&self) -> String {
        String::from_utf8(self.raw.lock().expect("raw log").clone()).expect("UTF-8 stream")
    }

    /// The next event, within `WAIT`.
    async fn next(&mut self) -> Event {
        if let Some(event) = self.pending.pop_front() {
            return event;
        }
        tokio::time::timeout(WAIT, self.events.next())
            .await
            .expect("an event in time")
            .expect("the stream is still open")
            .expect("a well-formed event")
    }

    /// `(event, data, id)` of the next `n` events.
    async fn take(&mut self, n: usize) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for _ in 0..n {
            let e = self.next().await;
            out.push((e.event, e.data, e.id));
        }
        out
    }

    /// Reads until the raw bytes satisfy `check` (events parsed meanwhile are kept for `next`).
    async fn raw_until(&mut self, check: impl Fn(&str) -> bool + Send + Sync) -> String {
        let wait = async {
            loop {
                let raw = self.raw();
                if check(&raw) {
                    return raw;
                }
                tokio::select! {
                    event = self.events.next() => match event {
                        Some(Ok(event)) => self.pending.push_back(event),
                        other => panic!("stream ended or failed: {other:?}"),
                    },
                    () = tokio::time::sleep(Duration::from_millis(10)) => {}
                }
            }
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .expect("raw bytes in time")
    }

    /// Whether the body ends cleanly (no further event, no error) within `WAIT`.
    async fn ends(&mut self) -> bool {
        match tokio::time::timeout(WAIT, self.events.next()).await {
            Ok(None) => self.pending.is_empty(),
            other => {
                eprintln!("expected the end of the stream, got {other:?}");
                false
            }
        }
    }
}

fn message(event: &str, data: &str, id: MessageId) -> (String, String, String) {
    (event.to_owned(), data.to_owned(), id.to_string())
}

/// Parses a complete byte string with eventsource-stream.
fn parse(bytes: &[u8]) -> Vec<Event> {
    futures_util::stream::iter([Ok::<_, Infallible>(Bytes::copy_from_slice(bytes))])
        .eventsource()
        .map(|r| r.expect("a well-formed event"))
        .collect::<Vec<_>>()
        .now_or_never()
        .expect("an in-memory stream is always ready")
}

/// What a browser's `event.data` holds for `text`: line breaks normalised to LF.
fn normalised(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\r', "\n")
}

async fn settled(hub: &Counter) {
    assert!(
        eventually(|| hub.snapshot().open == 0).await,
        "connections still counted: {:?}",
        hub.snapshot()
    );
}

// 1. Framing, headers, the retry hint and keep-alive comments.
#[tokio::test]
async fn events_arrive_in_order_with_names_ids_headers_retry_and_keep_alive() {
    let hub = counted();
    let server = serve(
        SseEndpoint::new(hub.clone())
            .retry(Duration::from_millis(1500))
            .keep_alive(Duration::from_millis(50)),
    )
    .await;

    let resp = get(&server.http("/events/news"), &[]).await;
    assert_eq!(resp.status(), 200);
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert!(
        header("content-type").is_some_and(|v| v.starts_with("text/event-stream")),
        "{:?}",
        header("content-type")
    );
    assert_eq!(header("cache-control").as_deref(), Some("no-store"));
    assert_eq!(header("x-accel-buffering").as_deref(), Some("no"));
    let mut client = Client::new(resp);

    // The retry hint comes first; then, while idle, keep-alive comments.
    let raw = client
        .raw_until(|raw| raw.lines().any(|line| line.starts_with(':')))
        .await;
    assert!(raw.starts_with("retry:1500\n\n"), "{raw:?}");

    let inner = hub.inner();
    let a = publish(inner, "news", Publication::new("one").event("alpha")).await;
    let b = publish(inner, "news", "two").await;
    let c = publish(inner, "news", Publication::new("three").event("beta")).await;
    assert_eq!(
        client.take(3).await,
        vec![
            message("alpha", "one", a),
            message("message", "two", b),
            message("beta", "three", c),
        ]
    );
    let raw = client.raw();
    assert!(
        raw.contains(&format!("event: alpha\ndata: one\nid: {a}\n\n")),
        "{raw:?}"
    );

    drop(client);
    settled(&hub).await;
    server.stop().await;
}

// 2. Resume: header, query, another epoch, a malformed id.
#[tokio::test]
async fn last_event_id_resumes_exactly_and_resets_when_it_cannot() {
    let hub = counted();
    let inner = hub.inner().clone();
    let mut ids = Vec::new();
    for i in 1..=5 {
        ids.push(publish(&inner, "feed", format!("m{i}")).await);
    }
    let server = serve(endpoint(hub.clone())).await;
    let url = server.http("/events/feed");

    // Header: exactly what came after m2, then live, nothing twice.
    let after = ids[1].to_string();
    let mut by_header = Client::open(&url, &[("Last-Event-ID", after.as_str())]).await;
    ids.push(publish(&inner, "feed", "m6").await);
    ids.push(publish(&inner, "feed", "m7").await);
    let expected: Vec<_> = (3..=7)
        .map(|i| message("message", &format!("m{i}"), ids[i - 1]))
        .collect();
    assert_eq!(by_header.take(5).await, expected);

    // Query parameter, when the header is absent.
    let mut by_query = Client::open(&format!("{url}?lastEventId={}", ids[4]), &[]).await;
    assert_eq!(by_query.take(2).await, expected[3..].to_vec());

    // An id of another epoch: a reset (whose id is where its replay starts), the history, live.
    let epoch = ids[0].epoch().as_u64();
    let stale = MessageId::new(
        Epoch::from_u64(epoch.wrapping_add(1).max(1)).expect("non-zero"),
        3,
    )
    .to_string();
    let mut reset = Client::open(&url, &[("Last-Event-ID", stale.as_str())]).await;
    let notice = reset.next().await;
    assert_eq!(notice.event, "reset");
    let json: serde_json::Value = serde_json::from_str(&notice.data).expect("JSON reset");
    assert_eq!(json["type"], "reset");
    assert_eq!(json["reason"], "epoch_changed");
    assert_eq!(json["requested"], stale.as_str());
    assert_eq!(json["replay_after"], notice.id.as_str());
    assert_eq!(notice.id, MessageId::new(ids[0].epoch(), 0).to_string());
    let history: Vec<_> = (1..=7)
        .map(|i| message("message", &format!("m{i}"), ids[i - 1]))
        .collect();
    assert_eq!(reset.take(7).await, history);
    let m8 = publish(&inner, "feed", "m8").await;
    assert_eq!(reset.take(1).await, vec![message("message", "m8", m8)]);

    // Reconnecting with the reset's id resumes without another reset.
    let mut again = Client::open(&url, &[("Last-Event-ID", notice.id.as_str())]).await;
    assert_eq!(again.take(1).await, history[..1].to_vec());

    // An id that can't be read (another app's, an old format) must not kill the EventSource
    // (it never reconnects after a non-200): the stream opens with a reset, reason `invalid`,
    // then the whole history, then live messages.
    for bad in [
        format!("{url}?lastEventId=3F-1"),
        format!("{url}?lastEventId=zzz-999999"),
    ] {
        let mut invalid = Client::open(&bad, &[]).await;
        let notice = invalid.next().await;
        assert_eq!(notice.event, "reset");
        let json: serde_json::Value = serde_json::from_str(&notice.data).expect("JSON reset");
        assert_eq!(json["reason"], "invalid");
        assert!(json["requested"].is_null());
        assert_eq!(notice.id, MessageId::new(ids[0].epoch(), 0).to_string());
        assert_eq!(invalid.take(8).await[..7], history[..]);
    }
    let mut invalid = Client::open(&url, &[("Last-Event-ID", "not-an-id")]).await;
    assert_eq!(invalid.next().await.event, "reset");
    assert_eq!(invalid.take(1).await, history[..1].to_vec());

    drop((by_header, by_query, reset, again, invalid));
    settled(&hub).await;
    server.stop().await;
}

// 3. Identity before anything is sent.
#[tokio::test]
async fn identity_closure_answers_401_403_or_admits() {
    let hub = counted();
    let events = endpoint(hub.clone()).identify(|req, _| {
        match req.headers().get("authorization").map(|v| v.as_bytes()) {
            None => Err(Rejection::unauthorized("token missing")),
            Some(b"Bearer good") => Ok(Some(Identity::new("alice"))),
            Some(_) => Err(Rejection::forbidden("not allowed")),
        }
    });
    let server = serve(events).await;
    let url = server.http("/events/private");

    assert_eq!(get(&url, &[]).await.status(), 401);
    assert_eq!(
        get(&url, &[("Authorization", "Bearer bad")]).await.status(),
        403
    );
    assert_eq!(hub.snapshot().total, 0, "a rejected request joined");

    let mut client = Client::open(&url, &[("Authorization", "Bearer good")]).await;
    assert_eq!(hub.snapshot().total, 1);
    let id = publish(hub.inner(), "private", "hi").await;
    assert_eq!(client.take(1).await, vec![message("message", "hi", id)]);

    drop(client);
    settled(&hub).await;
    server.stop().await;
}

// 3a. A hub refusing the join: the client's fault is 400, the server's 503; nothing is held.
#[tokio::test]
async fn hub_refusals_answer_400_or_503_and_hold_nothing() {
    let rooms = Counted::new(Rooms::new());
    let rooms_endpoint = endpoint(rooms.clone());
    let server = serve(rooms_endpoint.clone()).await;
    let resp = get(&server.http("/events/@alice"), &[]).await;
    assert_eq!(resp.status(), 400, "a reserved room name");
    assert_eq!(rooms.snapshot().total, 0);
    assert_eq!(rooms_endpoint.open_connections(), 0);
    server.stop().await;

    let pubsub = Counted::new(PubSub::with_config(HubConfig::new().max_topics(1)));
    publish(pubsub.inner(), "only", "fills the hub").await;
    let pubsub_endpoint = endpoint(pubsub.clone());
    let server = serve(pubsub_endpoint.clone()).await;
    let resp = get(&server.http("/events/another"), &[]).await;
    assert_eq!(resp.status(), 503, "the hub is full");
    assert_eq!(pubsub.snapshot().total, 0);
    assert_eq!(pubsub_endpoint.open_connections(), 0);
    server.stop().await;
}

// 3b. Presence over SSE: a room's members, as a named event with the JSON envelope.
#[tokio::test]
async fn rooms_send_a_presence_event_after_joining() {
    let hub = Counted::new(Rooms::new());
    let events = endpoint(hub.clone()).identify(|req, _| {
        Ok(req
            .query::<String>("user")
            .map(|user| Identity::new(user.as_str())))
    });
    let server = serve(events).await;

    let mut client = Client::open(&server.http("/events/lobby?user=alice"), &[]).await;
    let presence = client.next().await;
    assert_eq!(presence.event, "presence");
    assert_eq!(presence.id, "", "presence carries no id");
    let json: serde_json::Value = serde_json::from_str(&presence.data).expect("JSON presence");
    assert_eq!(json["type"], "presence");
    assert_eq!(json["topic"], "lobby");
    assert_eq!(json["members"][0]["user"], "alice");

    drop(client);
    assert!(eventually(|| hub.snapshot().open == 0).await);
    server.stop().await;
}

// 4. Connection caps, and slots that come back.
#[tokio::test]
async fn caps_answer_429_and_503_with_retry_after_and_slots_come_back() {
    let spy = Leaves::new(counted());
    let hub = spy.hub.clone();

    // Per IP.
    let per_ip = endpoint(spy.clone())
        .max_connections_per_ip(1)
        .retry_after(Duration::from_secs(7));
    let server = serve(per_ip.clone()).await;
    let url = server.http("/events/capped");
    let first = Client::open(&url, &[]).await;
    let refused = get(&url, &[]).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(
        refused.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"7"[..])
    );
    assert_eq!(per_ip.open_connections(), 1);
    drop(first);
    assert!(
        eventually(|| per_ip.open_connections() == 0).await,
        "slot leaked"
    );
    settled(&hub).await;
    let mut again = Client::open(&url, &[]).await;
    let id = publish(hub.inner(), "capped", "back").await;
    assert_eq!(again.take(1).await, vec![message("message", "back", id)]);
    drop(again);
    settled(&hub).await;
    server.stop().await;

    // In total.
    let total = endpoint(spy.clone())
        .max_connections(1)
        .retry_after(Duration::from_secs(3));
    let server = serve(total.clone()).await;
    let url = server.http("/events/capped");
    let first = Client::open(&url, &[]).await;
    let refused = get(&url, &[]).await;
    assert_eq!(refused.status(), 503);
    assert_eq!(
        refused.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"3"[..])
    );
    assert_eq!(hub.snapshot().open, 1, "a refused request joined");
    drop(first);
    assert!(
        eventually(|| total.open_connections() == 0).await,
        "slot leaked"
    );
    settled(&hub).await;
    let again = Client::open(&url, &[]).await;
    drop(again);
    assert!(eventually(|| total.open_connections() == 0).await);
    all_left(&spy).await;
    assert_eq!(spy.left(), 4);
    server.stop().await;
}

// 5. Graceful drain, and a hub that ends the subscription.
#[tokio::test]
async fn drain_ends_streams_cleanly_and_refuses_new_ones() {
    let spy = Leaves::new(counted());
    let hub = spy.hub.clone();
    let drain = Drain::new();
    let server = serve(SseEndpoint::new(spy.clone()).drain(drain.clone())).await;
    let url = server.http("/events/shutdown");

    let mut a = Client::open(&url, &[]).await;
    let mut b = Client::open(&url, &[]).await;
    assert_eq!(drain.open(), 2);
    let id = publish(hub.inner(), "shutdown", "last").await;
    assert_eq!(a.take(1).await, vec![message("message", "last", id)]);
    assert_eq!(b.take(1).await, vec![message("message", "last", id)]);

    assert_eq!(drain.close_all(WAIT).await, 0);
    // The drain waits for each stream to leave the hub before it counts it closed.
    assert_eq!(hub.snapshot().open, 0);
    assert_eq!(spy.left(), 2);
    assert!(a.ends().await, "stream a did not end cleanly");
    assert!(b.ends().await, "stream b did not end cleanly");
    assert_eq!(get(&url, &[]).await.status(), 503);
    assert_eq!(hub.snapshot().total, 2);
    drop((a, b));
    all_left(&spy).await;
    assert_eq!(spy.left(), 2, "left twice");
    server.stop().await;
}

#[tokio::test]
async fn a_closed_topic_ends_the_stream_and_the_connection_leaves() {
    let spy = Leaves::new(counted());
    let hub = spy.hub.clone();
    let server = serve(endpoint(spy.clone())).await;
    let mut client = Client::open(&server.http("/events/closing"), &[]).await;
    let id = publish(hub.inner(), "closing", "bye").await;
    assert!(hub.inner().close("closing"));
    assert_eq!(client.take(1).await, vec![message("message", "bye", id)]);
    assert!(client.ends().await);
    drop(client);
    all_left(&spy).await;
    assert_eq!(spy.left(), 1);
    server.stop().await;
}

// 6. The WHATWG event-stream format, as a server must write it.
#[tokio::test]
async fn payloads_survive_the_event_stream_format() {
    // In the spirit of web-platform-tests `eventsource/format-*`.
    let cases: &[(Option<&str>, &str)] = &[
        (None, "plain"),
        (None, "line one\nline two"),
        (None, "cr\rseparated"),
        (None, "crlf\r\nseparated"),
        (None, "mixed\r\n\r\n\rend\n"),
        (None, ""),
        (None, "\n"),
        (None, "\n\nblank lines around\n\n"),
        (None, "trailing newline\n"),
        (None, " one leading space"),
        (None, "   three leading spaces\n  and two"),
        (None, "key: value"),
        (None, ":starts like a comment"),
        (None, "data: fake\n\nevent: evil\nid: 666\nretry: 1"),
        (None, "雪 ☃ 🎉 ünïcödé \u{2028} \u{feff}"),
        (None, "nul \u{0} inside"),
        (Some("update"), "named"),
        (Some(" spaced name"), "leading space in the name"),
        (Some("ünïcödé"), "unicode name"),
        (Some("a:b"), "colon in the name"),
    ];
    let hub = counted();
    let server = serve(endpoint(hub.clone())).await;
    let mut client = Client::open(&server.http("/events/format"), &[]).await;
    let mut ids = Vec::new();
    for (name, data) in cases {
        let mut p = Publication::new(*data);
        if let Some(name) = name {
            p = p.event(name);
        }
        ids.push(publish(hub.inner(), "format", p).await);
    }
    let binary = publish(
        hub.inner(),
        "format",
        Payload::binary(vec![0, 159, 146, 150, 255]),
    )
    .await;

    let events = client.take(cases.len() + 1).await;
    for (((name, data), id), got) in cases.iter().zip(&ids).zip(&events) {
        assert_eq!(
            got,
            &message(name.unwrap_or("message"), &normalised(data), *id),
            "payload {data:?}"
        );
    }
    assert_eq!(
        events[cases.len()],
        message("message", "AJ+Slv8=", binary),
        "binary payloads travel as base64"
    );

    // On the wire: LF line ends only, one `data:` line per payload line, nothing else.
    let raw = client
        .raw_until(|raw| raw.contains(&format!("id: {binary}\n\n")))
        .await;
    assert!(!raw.contains('\r'), "a bare CR on the wire: {raw:?}");
    let blocks: Vec<&str> = raw
        .split("\n\n")
        .filter(|b| b.contains("\nid: ") || b.starts_with("id: "))
        .collect();
    assert_eq!(blocks.len(), cases.len() + 1, "{raw:?}");
    for ((_, data), block) in cases.iter().zip(&blocks) {
        let lines = normalised(data).split('\n').count();
        let data_lines = block.lines().filter(|l| l.starts_with("data: ")).count();
        assert_eq!(data_lines, lines, "block {block:?}");
        assert!(
            block.lines().all(|l| ["data: ", "event: ", "id: "]
                .iter()
                .any(|p| l.starts_with(p))),
            "stray line in {block:?}"
        );
    }

    drop(client);
    settled(&hub).await;
    server.stop().await;
}

#[test]
fn lagged_is_a_named_json_event_without_an_id() {
    let topic = Topic::new("busy").expect("topic");
    let event = String::from_utf8(sse::encode(&Delivery::Lagged { topic, missed: 42 }).to_vec())
        .expect("UTF-8");
    let parsed = parse(event.as_bytes());
    assert_eq!(parsed.len(), 1, "{event:?}");
    assert_eq!(parsed[0].event, "lagged");
    assert_eq!(parsed[0].id, "");
    let json: serde_json::Value = serde_json::from_str(&parsed[0].data).expect("JSON");
    assert_eq!(
        json,
        serde_json::json!({ "type": "lagged", "topic": "busy", "missed": 42 })
    );
}

// 7. Round trip through an independent parser.
fn text_with_line_breaks() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            4 => any::<char>().prop_map(String::from),
            1 => Just("\n".to_owned()),
            1 => Just("\r".to_owned()),
            1 => Just("\r\n".to_owned()),
            1 => Just(" ".to_owned()),
            1 => Just(":".to_owned()),
        ],
        0..40,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #[test]
    fn encoded_messages_parse_back(
        messages in proptest::collection::vec(
            (text_with_line_breaks(), proptest::option::of("[^\\p{Cc}]{1,12}")),
            1..8,
        )
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let (sent, deliveries) = runtime.block_on(async {
            let hub = PubSub::new();
            let mut sub = hub.subscribe("prop", Position::Live).await.expect("subscribed");
            let mut sent = Vec::new();
            for (data, name) in &messages {
                let mut p = Publication::new(data.as_str());
                let name = name.as_deref().and_then(|n| EventName::new(n).ok());
                if let Some(name) = &name {
                    p = p.event_name_checked(name.clone());
                }
                let id = hub.publish("prop", p).await.expect("published");
                sent.push((name.map_or_else(|| "message".to_owned(), |n| n.to_string()), normalised(data), id.to_string()));
            }
            (sent, common::ready(&mut sub))
        });
        let mut wire = String::from("retry:3000\n\n");
        for delivery in &deliveries {
            wire.push_str(std::str::from_utf8(&sse::encode(delivery)).expect("UTF-8"));
        }
        prop_assert!(!wire.contains('\r'));
        let parsed: Vec<_> = parse(wire.as_bytes())
            .into_iter()
            .map(|e| (e.event, e.data, e.id))
            .collect();
        prop_assert_eq!(parsed, sent);
    }
}

// 8. Behind Salvo's `Compression`, each event is flushed as it is sent.
#[tokio::test]
async fn events_behind_compression_arrive_without_waiting_for_more() {
    let hub = counted();
    let router = Router::new().hoop(Compression::new()).push(
        Router::with_path("events/{topic}")
            .get(SseEndpoint::new(hub.clone()).keep_alive(Duration::from_secs(60))),
    );
    let server = TestServer::start(router).await;

    let resp = get(
        &server.http("/events/zipped"),
        &[("Accept-Encoding", "gzip")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers().get("content-encoding").map(|v| v.as_bytes()),
        Some(&b"gzip"[..]),
        "Compression did not apply: the test would prove nothing"
    );
    let id = publish(hub.inner(), "zipped", "compressed but prompt").await;

    // No keep-alive is due for a minute and nothing else is published: the event must come
    // through on its own, decompressible, while the stream stays open.
    let mut body = resp.bytes_stream();
    let mut gunzip = flate2::write::GzDecoder::new(Vec::new());
    let expected = format!("data: compressed but prompt\nid: {id}\n\n");
    let text = tokio::time::timeout(WAIT, async {
        loop {
            let chunk = body
                .next()
                .await
                .expect("stream still open")
                .expect("chunk");
            gunzip.write_all(&chunk).expect("valid gzip");
            gunzip.flush().expect("flushed");
            let text = String::from_utf8_lossy(gunzip.get_ref()).into_owned();
            if text.contains(&expected) {
                return text;
            }
        }
    })
    .await
    .expect("the event was held back by the compressor");
    assert!(text.starts_with("retry:3000\n\n"), "{text:?}");
    let events = parse(text.as_bytes());
    assert_eq!(
        events
            .iter()
            .map(|e| (e.event.clone(), e.data.clone(), e.id.clone()))
            .collect::<Vec<_>>(),
        vec![message("message", "compressed but prompt", id)]
    );

    drop(body);
    settled(&hub).await;
    server.stop().await;
}

// Issue 9, defect 15: the notifications example answers 413 for a body over 64 KiB instead of
// publishing an empty event with 200.
#[tokio::test]
async fn the_notifications_example_refuses_an_oversized_body_with_413() {
    let hub = PubSub::new();
    let server = TestServer::start(notifications::router(
        hub.clone(),
        hub.clone(),
        salvo_realtime::Drain::new(),
    ))
    .await;
    let client = reqwest::Client::new();
    let big = client
        .post(server.http("/publish"))
        .body(vec![b'x'; 70 * 1024])
        .send()
        .await
        .expect("answer");
    assert_eq!(big.status().as_u16(), 413);
    assert!(
        hub.history("notifications").is_empty(),
        "nothing was published"
    );
    let ok = client
        .post(server.http("/publish"))
        .body("fits")
        .send()
        .await
        .expect("answer");
    assert_eq!(ok.status().as_u16(), 200);
    assert_eq!(hub.history("notifications").len(), 1);
    server.stop().await;
}

// Issue 18, "SSE keep-alive leaving up to two periods of silence": confirmed. An event that
// went out just after the endpoint's clock ticked made the next tick skip its comment, so the
// stream stayed silent for almost two periods. Now a stream is never silent for more than one
// period. On tokio's paused clock, in-process (no socket), so the times are exact.
#[tokio::test(start_paused = true)]
async fn keep_alive_never_leaves_more_than_one_period_of_silence() {
    use salvo::test::TestClient;
    let period = Duration::from_secs(10);
    let hub = PubSub::new();
    let router =
        Router::with_path("events/{topic}").get(SseEndpoint::new(hub.clone()).keep_alive(period));
    let service = salvo::Service::new(router);
    let opened = tokio::time::Instant::now();
    let mut res = TestClient::get("http://127.0.0.1:5800/events/news")
        .send(&service)
        .await;
    assert_eq!(res.status_code, Some(salvo::http::StatusCode::OK));
    let mut body = res.take_body();
    // Every chunk with the (virtual) time it came, until 8 periods have passed.
    let chunks: Arc<Mutex<Vec<(Duration, String)>>> = Arc::default();
    let log = Arc::clone(&chunks);
    let reader = tokio::spawn(async move {
        while let Some(frame) = body.next().await {
            let frame = frame.expect("a body frame");
            if let Ok(data) = frame.into_data() {
                let text = String::from_utf8_lossy(&data).into_owned();
                log.lock().expect("chunks").push((opened.elapsed(), text));
            }
        }
    });
    // Events just after a tick of the clock (which started with the stream), and in between.
    for at in [
        period + Duration::from_millis(1),
        period * 3 + Duration::from_millis(1),
        period * 4 + period / 2,
        period * 5 + Duration::from_millis(1),
    ] {
        tokio::time::sleep_until(opened + at).await;
        publish(&hub, "news", "event").await;
    }
    tokio::time::sleep_until(opened + period * 8).await;
    reader.abort();
    let chunks = chunks.lock().expect("chunks").clone();
    assert!(chunks[0].1.starts_with("retry:"), "{chunks:?}");
    assert_eq!(
        chunks
            .iter()
            .filter(|(_, t)| t.contains("data: event"))
            .count(),
        4
    );
    let mut last = Duration::ZERO;
    for (at, text) in &chunks {
        // The timer's 1 ms resolution is all the slack there is on a paused clock.
        assert!(
            *at - last <= period + Duration::from_millis(2),
            "silent from {last:?} to {at:?} (then {text:?}): {chunks:?}"
        );
        last = *at;
    }
    assert!(
        opened.elapsed() - last <= period + Duration::from_millis(2),
        "silent since {last:?}: {chunks:?}"
    );
}

/// A ticker over SSE with a per-subscriber filter in the query: only the watched symbols
/// arrive; a filter that can't be read is 400 and holds nothing.
#[tokio::test]
async fn a_filter_in_the_query_passes_only_the_watched_tags() {
    let hub = counted();
    let server = serve(endpoint(hub.clone())).await;
    let filter = r#"{"tags":{"ticker":["AAPL","MSFT"]}}"#;
    let url = format!(
        "{}?filter={}",
        server.http("/events/prices"),
        url_encode(filter)
    );
    let mut client = Client::new(get(&url, &[]).await);
    assert!(eventually(|| hub.snapshot().open == 1).await);
    let inner = hub.inner();
    let mut ids = Vec::new();
    for symbol in ["AAPL", "GOOG", "MSFT", "TSLA"] {
        let tick =
            Publication::json(&serde_json::json!({ "symbol": symbol })).tag("ticker", symbol);
        ids.push(publish(inner, "prices", tick).await);
    }
    assert_eq!(
        client.take(2).await,
        vec![
            message("message", r#"{"symbol":"AAPL"}"#, ids[0]),
            message("message", r#"{"symbol":"MSFT"}"#, ids[2]),
        ]
    );
    drop(client);
    settled(&hub).await;

    let bad = format!(
        "{}?filter={}",
        server.http("/events/prices"),
        url_encode("[1]")
    );
    assert_eq!(get(&bad, &[]).await.status(), 400);
    settled(&hub).await;
    server.stop().await;
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}
