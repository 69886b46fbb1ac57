//! The `metrics` feature end to end: a real server with a Prometheus recorder installed, known
//! traffic over WebSocket and SSE, then `/metrics` scraped over HTTP and its counts checked.
//! Run with `cargo test --features metrics --test metrics`.
//!
//! The recorder is process-global (connection tasks run on other tokio tasks, where a local
//! recorder would not be seen), so everything happens in one test function.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::TestServer;
use futures_util::{SinkExt, StreamExt};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use salvo::prelude::*;
use salvo_realtime::channel::Channels;
use salvo_realtime::hub::InboundPolicy;
use salvo_realtime::sse::SseEndpoint;
use salvo_realtime::ws::{RateLimit, WsEndpoint};
use salvo_realtime::{HubConfig, PubSub, Rooms};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

const WAIT: Duration = Duration::from_secs(10);

/// Published by the server in the test.
const PUBLISHED: usize = 5;

struct Scrape(PrometheusHandle);

#[async_trait]
impl Handler for Scrape {
    async fn handle(&self, _: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        res.render(Text::Plain(self.0.render()));
    }
}

/// The samples of a Prometheus text exposition: `name{k="v",..} value` lines, `#` lines
/// skipped, keyed by the name and its labels sorted (`name{a="1",b="2"}`).
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample line has a value");
        let value: f64 = value.parse().expect("a numeric value");
        let key = match series.split_once('{') {
            None => series.to_owned(),
            Some((name, labels)) => {
                let labels = labels.strip_suffix('}').expect("closed label set");
                let mut pairs: Vec<&str> = labels.split(',').filter(|p| !p.is_empty()).collect();
                pairs.sort_unstable();
                format!("{name}{{{}}}", pairs.join(","))
            }
        };
        samples.insert(key, value);
    }
    samples
}

async fn scrape(server: &TestServer) -> BTreeMap<String, f64> {
    let text = reqwest::get(server.http("/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("scrape body");
    parse(&text)
}

/// A sample's value, 0 when the series doesn't exist (yet).
fn value(samples: &BTreeMap<String, f64>, key: &str) -> f64 {
    samples.get(key).copied().unwrap_or(0.0)
}

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A handshake that must be accepted.
async fn connect(req: tungstenite::handshake::client::Request) -> Client {
    let (ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake in time")
        .expect("handshake");
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

/// Reads frames until `n` text frames have arrived.
async fn texts(ws: &mut (impl StreamExt<Item = tungstenite::Result<Message>> + Unpin), n: usize) {
    let mut seen = 0;
    while seen < n {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => seen += 1,
            Ok(Some(Ok(_))) => {}
            other => panic!("expected {n} text frames, got {seen}, then {other:?}"),
        }
    }
}

#[test]
fn the_parser_reads_labels_in_any_order_and_skips_comments() {
    let samples = parse(
        "# HELP x things\n# TYPE x counter\nx{b=\"2\",a=\"1\"} 3\ny 0.5\n\nz_count{t=\"ws\"} 7\n",
    );
    assert_eq!(value(&samples, "x{a=\"1\",b=\"2\"}"), 3.0);
    assert_eq!(value(&samples, "y"), 0.5);
    assert_eq!(value(&samples, "z_count{t=\"ws\"}"), 7.0);
    assert_eq!(samples.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scraped_counts_match_the_traffic() {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("salvo_realtime_publish_to_write_seconds".into()),
            &[0.001, 0.01, 0.1, 1.0, 10.0],
        )
        .expect("buckets")
        .install_recorder()
        .expect("the only recorder of this test binary");

    let hub = PubSub::with_config(HubConfig::new().inbound(InboundPolicy::Publish));
    let router = Router::new()
        .push(Router::with_path("ws/{topic}").goal(WsEndpoint::new(hub.clone()).name("chat")))
        .push(
            Router::with_path("events/{topic}").get(
                SseEndpoint::new(hub.clone())
                    .name("feed")
                    .keep_alive(Duration::from_millis(100)),
            ),
        )
        .push(Router::with_path("metrics").get(Scrape(handle.clone())));
    let server = TestServer::start(router).await;

    // Three WebSocket handshakes: two accepted, one refused for its origin.
    let mut alice = connect(server.ws("/ws/news").into_client_request().expect("req")).await;
    let mut bob = connect(server.ws("/ws/news").into_client_request().expect("req")).await;
    let mut foreign = server.ws("/ws/news").into_client_request().expect("req");
    foreign
        .headers_mut()
        .insert("origin", "https://evil.example".parse().expect("header"));
    match tokio_tungstenite::connect_async(foreign).await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 403),
        other => panic!("a foreign origin must be refused, got {other:?}"),
    }
    // One SSE stream, and one request refused for its topic name (a control character).
    let client = reqwest::Client::new();
    let mut stream = client
        .get(server.http("/events/news"))
        .send()
        .await
        .expect("sse request")
        .bytes_stream();
    let bad = client
        .get(server.http("/events/bad%01name"))
        .send()
        .await
        .expect("sse request");
    assert_eq!(bad.status().as_u16(), 400);

    let open = scrape(&server).await;
    assert_eq!(
        value(
            &open,
            "salvo_realtime_connections_open{endpoint=\"chat\",transport=\"websocket\"}"
        ),
        2.0
    );
    assert_eq!(
        value(
            &open,
            "salvo_realtime_connections_open{endpoint=\"feed\",transport=\"sse\"}"
        ),
        1.0
    );
    // The subscribers' topic logs exist while they are connected.
    assert!(value(&open, "salvo_realtime_topics") >= 1.0);

    // Traffic: the server publishes 5, alice sends 1 (published to the topic, sender
    // included): every subscriber gets 6.
    for i in 0..PUBLISHED {
        hub.publish("news", format!("m{i}")).await.expect("publish");
    }
    alice.send(Message::text("hello")).await.expect("send");
    texts(&mut alice, PUBLISHED + 1).await;
    texts(&mut bob, PUBLISHED + 1).await;
    let mut events = 0;
    let mut pending = String::new();
    while events < PUBLISHED + 1 {
        let chunk = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("an event in time")
            .expect("stream open")
            .expect("chunk");
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = pending.find("\n\n") {
            if pending[..end].lines().any(|l| l.starts_with("data:")) {
                events += 1;
            }
            pending.drain(..end + 2);
        }
    }

    // Closes: alice with 1000, bob's TCP just goes (1006), the SSE stream ends.
    alice
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }))
        .await
        .expect("close");
    while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, alice.next()).await {}
    drop(bob);
    drop(stream);

    let mut last = BTreeMap::new();
    let settled = {
        let mut settled = false;
        for _ in 0..500 {
            last = scrape(&server).await;
            let open = value(
                &last,
                "salvo_realtime_connections_open{endpoint=\"chat\",transport=\"websocket\"}",
            ) + value(
                &last,
                "salvo_realtime_connections_open{endpoint=\"feed\",transport=\"sse\"}",
            );
            let closes = value(
                &last,
                "salvo_realtime_closes_total{code=\"1000\",transport=\"websocket\"}",
            ) + value(
                &last,
                "salvo_realtime_closes_total{code=\"1006\",transport=\"websocket\"}",
            ) + value(
                &last,
                "salvo_realtime_closes_total{code=\"end\",transport=\"sse\"}",
            );
            if open == 0.0 && closes >= 3.0 {
                settled = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        settled
    };
    assert!(settled, "connections never all closed: {last:#?}");

    let expect = [
        (
            "salvo_realtime_connections_total{endpoint=\"chat\",transport=\"websocket\"}",
            2.0,
        ),
        (
            "salvo_realtime_connections_total{endpoint=\"feed\",transport=\"sse\"}",
            1.0,
        ),
        (
            "salvo_realtime_connections_open{endpoint=\"chat\",transport=\"websocket\"}",
            0.0,
        ),
        (
            "salvo_realtime_connections_open{endpoint=\"feed\",transport=\"sse\"}",
            0.0,
        ),
        (
            "salvo_realtime_refusals_total{reason=\"origin\",transport=\"websocket\"}",
            1.0,
        ),
        (
            "salvo_realtime_refusals_total{reason=\"request\",transport=\"sse\"}",
            1.0,
        ),
        (
            "salvo_realtime_messages_sent_total{transport=\"websocket\"}",
            12.0,
        ),
        ("salvo_realtime_messages_sent_total{transport=\"sse\"}", 6.0),
        (
            "salvo_realtime_messages_received_total{transport=\"websocket\"}",
            1.0,
        ),
        (
            "salvo_realtime_closes_total{code=\"1000\",transport=\"websocket\"}",
            1.0,
        ),
        (
            "salvo_realtime_closes_total{code=\"1006\",transport=\"websocket\"}",
            1.0,
        ),
        (
            "salvo_realtime_closes_total{code=\"end\",transport=\"sse\"}",
            1.0,
        ),
        ("salvo_realtime_dropped_total{transport=\"websocket\"}", 0.0),
        ("salvo_realtime_lagged_total{transport=\"websocket\"}", 0.0),
    ];
    for (key, want) in expect {
        assert_eq!(value(&last, key), want, "{key} in {last:#?}");
    }
    // Sampled: at least one observation per connection that was sent a live message, at most
    // one per delivery; every one of them well under the top bucket on a loopback.
    let count = |t: &str| {
        value(
            &last,
            &format!("salvo_realtime_publish_to_write_seconds_count{{transport=\"{t}\"}}"),
        )
    };
    assert!((2.0..=12.0).contains(&count("websocket")), "{last:#?}");
    assert!((1.0..=6.0).contains(&count("sse")), "{last:#?}");
    assert_eq!(
        value(
            &last,
            "salvo_realtime_publish_to_write_seconds_bucket{le=\"10\",transport=\"websocket\"}"
        ),
        count("websocket")
    );

    // Phase 2, on endpoints of their own: a rate-limit drop, a refused channel subscribe, a
    // slow consumer.
    let flood = WsEndpoint::new(PubSub::new())
        .name("flood")
        .rate_limit(Some(RateLimit::new(0, 2)));
    let channels = WsEndpoint::new(Channels::new(Rooms::new())).name("chan");
    let slow_hub = PubSub::with_config(HubConfig::new().history(1024).channel_capacity(64));
    let slow = WsEndpoint::new(slow_hub.clone())
        .name("slow")
        .send_timeout(Duration::from_millis(300));
    let router = Router::new()
        .push(Router::with_path("flood/{topic}").goal(flood))
        .push(Router::with_path("chan").goal(channels))
        .push(Router::with_path("slow/{topic}").goal(slow))
        .push(Router::with_path("metrics").get(Scrape(handle)));
    let server2 = TestServer::start(router).await;

    // Five frames against a bucket of two that never refills: three dropped.
    let mut flooder = connect(server2.ws("/flood/t").into_client_request().expect("req")).await;
    for i in 0..5 {
        flooder
            .send(Message::text(format!("{i}")))
            .await
            .expect("send");
    }
    let mut rate_limited = 0;
    while rate_limited < 3 {
        match tokio::time::timeout(WAIT, flooder.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.contains("rate_limited") => rate_limited += 1,
            Ok(Some(Ok(_))) => {}
            other => panic!("expected rate_limited errors, got {other:?}"),
        }
    }
    // A channel socket subscribing to a topic no rule allows (channels are closed by default).
    let mut req = server2.ws("/chan").into_client_request().expect("req");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "salvo-realtime.v1".parse().expect("header"),
    );
    let mut chan = connect(req).await;
    chan.send(Message::text(
        r#"{"type":"subscribe","ref":1,"topic":"secret"}"#,
    ))
    .await
    .expect("send");
    loop {
        match tokio::time::timeout(WAIT, chan.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.contains("\"reply\"") => {
                assert!(t.contains("forbidden"), "{t}");
                break;
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("expected the reply, got {other:?}"),
        }
    }
    // A client that never reads while 40 MB are published: its send times out.
    let stalled = connect(server2.ws("/slow/t").into_client_request().expect("req")).await;
    let payload = "x".repeat(8000);
    let publishing = tokio::spawn(async move {
        for _ in 0..5_000 {
            if slow_hub.publish("t", payload.clone()).await.is_err() {
                break;
            }
        }
    });
    let key = "salvo_realtime_slow_consumer_disconnects_total{transport=\"websocket\"}";
    let mut last = BTreeMap::new();
    for _ in 0..500 {
        last = scrape(&server2).await;
        if value(&last, key) >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = publishing.await;
    assert_eq!(value(&last, key), 1.0, "no slow consumer in {last:#?}");
    // Received and dropped counts are handed over at bursts, ticks and close: close them all.
    drop((flooder, chan, stalled));
    let open = |samples: &BTreeMap<String, f64>| {
        ["flood", "slow"]
            .iter()
            .map(|e| {
                let key = format!(
                    "salvo_realtime_connections_open{{endpoint=\"{e}\",transport=\"websocket\"}}"
                );
                value(samples, &key)
            })
            .sum::<f64>()
            + value(
                samples,
                "salvo_realtime_connections_open{endpoint=\"chan\",transport=\"channels\"}",
            )
    };
    for _ in 0..500 {
        last = scrape(&server2).await;
        if open(&last) == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let expect = [
        (key, 1.0),
        ("salvo_realtime_dropped_total{transport=\"websocket\"}", 3.0),
        // Phase 1's one, the flooder's five, the channel command.
        (
            "salvo_realtime_messages_received_total{transport=\"websocket\"}",
            6.0,
        ),
        (
            "salvo_realtime_messages_received_total{transport=\"channels\"}",
            1.0,
        ),
        (
            "salvo_realtime_refusals_total{reason=\"subscribe\",transport=\"channels\"}",
            1.0,
        ),
        (
            "salvo_realtime_connections_total{endpoint=\"chan\",transport=\"channels\"}",
            1.0,
        ),
        (
            "salvo_realtime_connections_total{endpoint=\"slow\",transport=\"websocket\"}",
            1.0,
        ),
    ];
    for (key, want) in expect {
        assert_eq!(value(&last, key), want, "{key} in {last:#?}");
    }
    server2.stop().await;
    server.stop().await;
}
