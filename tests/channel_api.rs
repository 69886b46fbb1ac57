//! The Channels API in memory, through the test kit (`salvo_realtime::testing`): per-connection
//! state, application state, event routing, every outcome of a publish handler, join replies,
//! how a handler's data is typed, and the bad input of each. The same commands go over real
//! sockets in `channels.rs`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use salvo_realtime::channel::{Channels, Ctx, Inbound, Outcome};
use salvo_realtime::error::Refused;
use salvo_realtime::testing::TestClient;
use salvo_realtime::{Connection, HubConfig, Identity, Position, Publication, Rooms, Topic};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
struct Move {
    dx: i32,
    dy: i32,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct At(i32, i32);

/// A movement game: each player's position in its connection's assigns, moves on a 10x10
/// board, the new position broadcast as `moved`.
fn game() -> Channels {
    Channels::new(Rooms::new())
        .on_connect(|ctx| async move {
            ctx.assigns().insert(At(0, 0));
            Ok(())
        })
        .allow("game:*")
        .on_event("game:*", "move", |ctx, msg: Inbound<Move>| async move {
            let (dx, dy) = (msg.data.dx, msg.data.dy);
            if dx.abs() + dy.abs() != 1 {
                return Err(Refused::new("illegal_move", "one step at a time"));
            }
            let at = ctx.assigns().update(|at: &mut At| {
                let next = At(at.0 + dx, at.1 + dy);
                let inside = (0..10).contains(&next.0) && (0..10).contains(&next.1);
                if inside {
                    *at = next;
                }
                inside.then_some(next)
            });
            let Some(Some(At(x, y))) = at else {
                return Err(Refused::new("illegal_move", "off the board"));
            };
            let player = ctx.user_id().unwrap_or("?");
            Ok(Outcome::publish(json!({"player": player, "x": x, "y": y})).event("moved"))
        })
        .on_event("game:*", "boom", |ctx, _msg: Inbound<Value>| async move {
            ctx.assigns()
                .update(|_: &mut At| panic!("a bug while holding the state"));
            Ok(Outcome::noreply())
        })
}

async fn player(channels: &Channels, name: &str) -> TestClient<Channels> {
    let mut client = TestClient::connect_as(channels, Identity::new(name))
        .await
        .expect("connect");
    client.subscribe("game:1").await.expect("join the game");
    client
}

#[tokio::test(start_paused = true)]
async fn per_connection_state_is_set_on_connect_and_changed_by_handlers() {
    let channels = game();
    let mut ann = player(&channels, "ann").await;
    let mut ben = player(&channels, "ben").await;
    ann.push("game:1", "move", json!({"dx": 1, "dy": 0}))
        .await
        .expect("a legal move");
    ann.push("game:1", "move", json!({"dx": 0, "dy": 1}))
        .await
        .expect("a legal move");
    ben.push("game:1", "move", json!({"dx": 0, "dy": 1}))
        .await
        .expect("ben's own position");
    let seen: Vec<(String, Value)> = [
        ben.recv_message().await,
        ben.recv_message().await,
        ben.recv_message().await,
    ]
    .iter()
    .map(|m| {
        let event = m.event().map(|e| e.as_str().to_owned()).unwrap_or_default();
        (event, m.json::<Value>().expect("json"))
    })
    .collect();
    assert_eq!(
        seen,
        [
            ("moved".to_owned(), json!({"player": "ann", "x": 1, "y": 0})),
            ("moved".to_owned(), json!({"player": "ann", "x": 1, "y": 1})),
            ("moved".to_owned(), json!({"player": "ben", "x": 0, "y": 1})),
        ]
    );
    assert_eq!(ann.connection().assigns().get::<At>(), Some(At(1, 1)));
    let refused = ben
        .push("game:1", "move", json!({"dx": -1, "dy": 0}))
        .await
        .expect_err("off the board");
    assert_eq!(
        (refused.code(), refused.message()),
        ("illegal_move", "off the board")
    );
    assert_eq!(
        ben.connection().assigns().get::<At>(),
        Some(At(0, 1)),
        "unchanged"
    );
    ann.ready().await;
    ann.assert_no_message().await;
}

#[tokio::test(start_paused = true)]
async fn a_handler_panicking_while_holding_state_drops_that_state_only() {
    let channels = game();
    let mut ann = player(&channels, "ann").await;
    let mut ben = player(&channels, "ben").await;
    let refused = ann
        .push("game:1", "boom", json!(null))
        .await
        .expect_err("the handler panicked");
    assert_eq!(refused.code(), "handler_failed");
    assert_eq!(
        ann.connection().assigns().get::<At>(),
        None,
        "no half-changed state"
    );
    // The connection and the others are unaffected: ann's moves now fail cleanly (no
    // position), ben plays on.
    let refused = ann
        .push("game:1", "move", json!({"dx": 1, "dy": 0}))
        .await
        .expect_err("no position any more");
    assert_eq!(refused.code(), "illegal_move");
    ben.push("game:1", "move", json!({"dx": 1, "dy": 0}))
        .await
        .expect("ben plays on");
    assert_eq!(
        ann.recv_message().await.json::<Value>().expect("json")["player"],
        "ben"
    );
}

#[tokio::test(start_paused = true)]
async fn events_route_to_their_handler_and_unknown_ones_are_refused() {
    let channels = game();
    let mut ann = player(&channels, "ann").await;
    let refused = ann
        .push("game:1", "fly", json!({}))
        .await
        .expect_err("no handler for fly");
    assert_eq!(refused.code(), "unknown_event");
    let refused = ann
        .publish("game:1", json!({"dx": 1, "dy": 0}))
        .await
        .expect_err("no event name at all");
    assert_eq!(refused.code(), "unknown_event");
    let refused = ann
        .send(r#"{"dx":1,"dy":0}"#)
        .await
        .expect_err("a plain frame has no event name");
    assert_eq!(refused.code(), "unknown_event");
    // A catch-all after the event handlers takes the rest.
    let channels = game().on_publish("game:*", |_ctx, msg: Inbound<Value>| async move {
        Ok(Outcome::publish(json!({"other": msg.data})))
    });
    let mut ann = player(&channels, "ann").await;
    let mut ben = player(&channels, "ben").await;
    ann.push("game:1", "fly", json!(1)).await.expect("caught");
    let m = ben.recv_message().await;
    assert_eq!(
        m.event().map(|e| e.as_str()),
        Some("fly"),
        "the event name is kept"
    );
    assert_eq!(m.json::<Value>().expect("json"), json!({"other": 1}));
}

/// Every outcome: publish (with an event, to another topic), broadcast_from, reply, noreply,
/// pass, a returned `Publication`.
#[tokio::test(start_paused = true)]
async fn every_outcome_of_a_publish_handler() {
    let channels = Channels::new(Rooms::new())
        .allow("t")
        .allow("audit")
        .on_event(
            "t",
            "pass",
            |_ctx, _m: Inbound<Value>| async move { Ok(()) },
        )
        .on_event("t", "noreply", |_ctx, _m: Inbound<Value>| async move {
            Ok(Outcome::noreply())
        })
        .on_event("t", "ask", |_ctx, m: Inbound<i64>| async move {
            Ok(Outcome::reply(m.data * 2))
        })
        .on_event("t", "from", |_ctx, m: Inbound<Value>| async move {
            Ok(Outcome::broadcast_from(m.data).with_reply("sent"))
        })
        .on_event("t", "audit", |_ctx, m: Inbound<Value>| async move {
            Ok(Outcome::publish(m.data).to("audit").event("logged"))
        })
        .on_event("t", "own", |_ctx, _m: Inbound<Value>| async move {
            Ok(Publication::new("built").event("mine"))
        });
    let mut a = TestClient::connect_as(&channels, Identity::new("a"))
        .await
        .expect("a");
    let mut b = TestClient::connect_as(&channels, Identity::new("b"))
        .await
        .expect("b");
    for c in [&mut a, &mut b] {
        c.subscribe("t").await.expect("t");
    }
    b.subscribe("audit").await.expect("audit");

    let data = a
        .push("t", "pass", json!({"as": "sent"}))
        .await
        .expect("pass");
    assert!(
        data["id"].is_string() && data.get("reply").is_none(),
        "{data}"
    );
    let m = b.recv_message().await;
    assert_eq!(m.json::<Value>().expect("json"), json!({"as": "sent"}));
    let echo = a.recv_message().await;
    assert_eq!(
        echo.event().map(|e| e.as_str()),
        Some("pass"),
        "echo on by default"
    );

    let data = a.push("t", "noreply", json!(1)).await.expect("noreply");
    assert_eq!(data, json!({}), "one ok reply, empty");

    let data = a.push("t", "ask", json!(21)).await.expect("ask");
    assert_eq!(data, json!({"reply": 42}), "to the sender alone");
    b.assert_no_message().await;
    a.assert_no_message().await;

    let data = a.push("t", "from", json!("hi")).await.expect("from");
    assert_eq!(data["reply"], "sent");
    assert_eq!(b.recv_message().await.payload().as_text(), Some("hi"));
    a.assert_no_message().await;

    let data = a.push("t", "audit", json!({"n": 1})).await.expect("audit");
    assert_eq!(data, json!({}), "nothing published to t itself");
    let m = b.recv_message().await;
    assert_eq!(
        (
            m.topic().as_str(),
            m.event().map(|e| e.as_str()),
            m.sender()
        ),
        ("audit", Some("logged"), Some("a"))
    );

    a.push("t", "own", json!(null)).await.expect("own");
    let m = b.recv_message().await;
    assert_eq!(
        (m.payload().as_text(), m.event().map(|e| e.as_str())),
        (Some("built"), Some("mine"))
    );
}

/// A plain frame's handler reply reaches the sender alone, on `$conn` with event `reply`.
#[tokio::test(start_paused = true)]
async fn a_plain_frame_gets_its_reply_on_the_connection_topic() {
    let channels = Channels::new(Rooms::new())
        .allow("room")
        .on_publish("room", |_ctx, m: Inbound<String>| async move {
            Ok(Outcome::reply(m.data.len()))
        });
    let conn = Connection::new().subscribe(Topic::new("room").expect("valid"), Position::Live);
    let mut c = TestClient::connect_with(&channels, conn).await.expect("c");
    c.send("four").await.expect("sent");
    let m = c.recv_message().await;
    assert_eq!(
        (m.topic().as_str(), m.event().map(|e| e.as_str())),
        ("$conn", Some("reply"))
    );
    assert_eq!(
        m.json::<Value>().expect("json"),
        json!({"topic": "room", "reply": 4})
    );
}

#[tokio::test(start_paused = true)]
async fn a_join_reply_reaches_the_subscriber_and_a_large_one_is_refused() {
    let channels = Channels::with_state(
        Rooms::with_config(HubConfig::new().max_payload(1024)),
        "the board",
    )
    .authorize("game:*", |ctx, req| async move {
        Ok(json!({"board": ctx.state(), "game": req.wildcard}))
    })
    .authorize("huge", |_ctx, _req| async move { Ok("x".repeat(2000)) })
    .allow("plain");
    let mut c = TestClient::connect(&channels).await.expect("c");
    let data = c.subscribe("game:7").await.expect("join");
    assert_eq!(
        data,
        json!({"topic": "game:7", "reply": {"board": "the board", "game": "7"}})
    );
    assert_eq!(
        c.subscribe("plain").await.expect("plain"),
        json!({"topic": "plain"}),
        "no reply field for a rule that returns ()"
    );
    let refused = c.subscribe("huge").await.expect_err("too large");
    assert_eq!(refused.code(), "too_large");
    assert!(
        !channels
            .rooms()
            .rooms_of(c.connection().id())
            .iter()
            .any(|t| t.as_str() == "huge"),
        "a refused join leaves nothing joined"
    );
    // A topic asked for at connect time gets its reply as a `joined` message.
    let conn = Connection::new().subscribe(Topic::new("game:8").expect("valid"), Position::Live);
    let mut d = TestClient::connect_with(&channels, conn).await.expect("d");
    let m = d.recv_message().await;
    assert_eq!(
        (m.topic().as_str(), m.event().map(|e| e.as_str())),
        ("$conn", Some("joined"))
    );
    assert_eq!(m.json::<Value>().expect("json")["reply"]["game"], "8");
    // A connect-time topic whose reply is too large refuses the connection.
    let conn = Connection::new().subscribe(Topic::new("huge").expect("valid"), Position::Live);
    let refused = TestClient::connect_with(&channels, conn)
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), "too_large");
}

/// Chat text reaches a `String` handler exactly as typed, whatever it looks like.
#[tokio::test(start_paused = true)]
async fn a_string_handler_gets_the_text_as_typed() {
    let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
    let channels = Channels::with_state(Rooms::new(), std::sync::Arc::clone(&seen))
        .allow("room")
        .on_publish("room", |ctx, m: Inbound<String>| async move {
            ctx.state().lock().expect("lock").push(m.data.clone());
            Ok(m.data)
        });
    let conn = Connection::new().subscribe(Topic::new("room").expect("valid"), Position::Live);
    let mut a = TestClient::connect_with(&channels, conn.clone().authenticated(Identity::new("a")))
        .await
        .expect("a");
    let mut b = TestClient::connect_with(
        &channels,
        Connection::new().subscribe(Topic::new("room").expect("valid"), Position::Live),
    )
    .await
    .expect("b");
    let typed = ["42", "true", "null", r#"{"a":1}"#, r#""quoted""#, "plain"];
    for text in typed {
        a.send(text).await.expect("plain frame");
    }
    for text in typed {
        assert_eq!(b.recv_message().await.payload().as_text(), Some(text));
    }
    // Over the channel protocol a JSON string is its text, other JSON its JSON text.
    a.subscribe("room").await.expect("already in it");
    a.publish("room", json!("\"quoted\""))
        .await
        .expect("publish");
    assert_eq!(
        b.recv_message().await.payload().as_text(),
        Some("\"quoted\"")
    );
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen[..typed.len()], typed.map(str::to_owned));
}

struct App {
    greeting: String,
    calls: AtomicUsize,
}

/// Handlers reach the application's state through `ctx.state()`: no clone before the `async
/// move` block, and async closures (which capture nothing here) are accepted too.
#[tokio::test(start_paused = true)]
async fn handlers_take_app_state_from_ctx_and_async_closures_work() {
    let app = App {
        greeting: "hello".into(),
        calls: AtomicUsize::new(0),
    };
    let channels = Channels::with_state(Rooms::new(), app)
        .allow("room")
        .on_call("greet", async |ctx: Ctx<_, App>, name: String| {
            ctx.state().calls.fetch_add(1, Ordering::Relaxed);
            Ok(format!("{} {name}", ctx.state().greeting))
        })
        .on_publish("room", async move |ctx: Ctx<_, App>, m: Inbound<String>| {
            Ok(format!("{}: {}", ctx.state().greeting, m.data))
        });
    let mut c = TestClient::connect(&channels).await.expect("c");
    assert_eq!(
        c.call("greet", json!("ann")).await.expect("call"),
        json!("hello ann")
    );
    c.subscribe("room").await.expect("room");
    c.publish("room", json!("x")).await.expect("publish");
    assert_eq!(c.recv_message().await.payload().as_text(), Some("hello: x"));
    assert_eq!(channels.state().calls.load(Ordering::Relaxed), 1);
}

/// The test kit's clock is tokio's: a slow handler times out at once on a paused clock.
#[tokio::test(start_paused = true)]
async fn handler_timeouts_run_on_the_test_clock() {
    let channels = Channels::new(Rooms::new())
        .on_call("slow", |_ctx, ()| async move {
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            Ok(())
        })
        .handler_timeout(std::time::Duration::from_secs(30));
    let mut c = TestClient::connect(&channels).await.expect("c");
    let started = tokio::time::Instant::now();
    let refused = c.call("slow", json!(null)).await.expect_err("timeout");
    assert_eq!(refused.code(), "timeout");
    assert_eq!(started.elapsed(), std::time::Duration::from_secs(30));
    // Leaving runs on_disconnect and frees the connection.
    c.disconnect().await;
    assert_eq!(channels.rooms().connection_count(), 0);
}

/// Nothing is delivered once the server takes a connection out; the kit sees the notice.
#[tokio::test(start_paused = true)]
async fn server_moves_are_seen_through_the_kit() {
    let channels = Channels::new(Rooms::new()).allow("room");
    let mut c = TestClient::connect(&channels).await.expect("c");
    channels
        .subscribe(c.connection().id(), "room", Position::Live)
        .await
        .expect("server subscribes");
    let m = c.recv_message().await;
    assert_eq!(m.event().map(|e| e.as_str()), Some("subscribed"));
    channels.broadcast("room", "news").await.expect("broadcast");
    assert_eq!(c.recv_message().await.payload().as_text(), Some("news"));
    assert!(c.ready().await.is_empty(), "nothing else is ready");
    channels
        .unsubscribe(c.connection().id(), "room")
        .await
        .expect("server unsubscribes");
    let m = c.recv_message().await;
    assert_eq!(m.event().map(|e| e.as_str()), Some("unsubscribed"));
    channels.broadcast("room", "late").await.expect("broadcast");
    c.assert_no_message().await;
}

/// A ticker: each tick tagged with its symbol; subscribers pass a filter of the symbols they
/// watch, and change it by subscribing again.
#[tokio::test(start_paused = true)]
async fn subscribers_receive_only_what_their_filter_passes() {
    let channels = Channels::new(Rooms::new()).allow("prices");
    let mut watcher = TestClient::connect(&channels).await.expect("watcher");
    let mut everything = TestClient::connect(&channels).await.expect("everything");
    watcher
        .command(json!({
            "type": "subscribe",
            "topic": "prices",
            "filter": {"tags": {"ticker": ["AAPL", "MSFT"]}},
        }))
        .await
        .expect("subscribe with a filter");
    everything.subscribe("prices").await.expect("subscribe");
    let tick = |symbol: &str, price: f64| {
        Publication::json(&json!({"symbol": symbol, "price": price})).tag("ticker", symbol)
    };
    for (symbol, price) in [("AAPL", 1.0), ("GOOG", 2.0), ("MSFT", 3.0), ("TSLA", 4.0)] {
        channels
            .broadcast("prices", tick(symbol, price))
            .await
            .expect("tick");
    }
    channels
        .broadcast("prices", "untagged")
        .await
        .expect("untagged");
    let symbols = |ms: Vec<salvo_realtime::Message>| -> Vec<String> {
        ms.iter()
            .map(|m| m.tag("ticker").unwrap_or("-").to_owned())
            .collect()
    };
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(watcher.recv_message().await);
    }
    assert_eq!(symbols(got), ["AAPL", "MSFT"]);
    watcher.assert_no_message().await;
    let mut all = Vec::new();
    for _ in 0..5 {
        all.push(everything.recv_message().await);
    }
    assert_eq!(symbols(all), ["AAPL", "GOOG", "MSFT", "TSLA", "-"]);

    // Subscribing again with another filter changes what comes next.
    watcher
        .command(json!({
            "type": "subscribe",
            "topic": "prices",
            "filter": {"tags": {"ticker": ["TSLA"]}},
        }))
        .await
        .expect("change the filter");
    for symbol in ["AAPL", "TSLA"] {
        channels
            .broadcast("prices", tick(symbol, 5.0))
            .await
            .expect("tick");
    }
    assert_eq!(watcher.recv_message().await.tag("ticker"), Some("TSLA"));
    watcher.assert_no_message().await;
}

/// A resumed subscriber with a filter gets the missed messages its filter passes.
#[tokio::test(start_paused = true)]
async fn a_filter_applies_to_replayed_history_too() {
    let rooms = Rooms::new();
    let channels = Channels::new(rooms).allow("prices");
    for symbol in ["AAPL", "GOOG", "MSFT"] {
        channels
            .broadcast("prices", Publication::new(symbol).tag("ticker", symbol))
            .await
            .expect("tick");
    }
    let mut late = TestClient::connect(&channels).await.expect("late");
    late.command(json!({
        "type": "subscribe",
        "topic": "prices",
        "recent": 10,
        "filter": {"tags": {"ticker": ["GOOG"]}},
    }))
    .await
    .expect("subscribe");
    assert_eq!(late.recv_message().await.payload().as_text(), Some("GOOG"));
    late.assert_no_message().await;
}

/// Filters asked for at connect time apply to every topic of the request, on `Rooms` and
/// `PubSub` alike.
#[tokio::test(start_paused = true)]
async fn a_connect_time_filter_applies_to_the_requested_topics() {
    let filter = salvo_realtime::hub::Filter::new()
        .tag("kind", ["alert"])
        .expect("valid");
    let pubsub = salvo_realtime::PubSub::new();
    let conn = Connection::new()
        .subscribe(Topic::new("feed").expect("valid"), Position::Live)
        .with_filter(filter.clone());
    let mut c = TestClient::connect_with(&pubsub, conn)
        .await
        .expect("joins");
    pubsub
        .publish("feed", Publication::new("note").tag("kind", "note"))
        .await
        .expect("publish");
    pubsub
        .publish("feed", Publication::new("fire").tag("kind", "alert"))
        .await
        .expect("publish");
    assert_eq!(c.recv_message().await.payload().as_text(), Some("fire"));
    c.assert_no_message().await;

    let rooms = Rooms::new();
    let conn = Connection::new()
        .subscribe(Topic::new("feed").expect("valid"), Position::Live)
        .with_filter(filter);
    let mut c = TestClient::connect_with(&rooms, conn).await.expect("joins");
    rooms
        .broadcast("feed", Publication::new("note").tag("kind", "note"))
        .await
        .expect("publish");
    rooms
        .broadcast("feed", Publication::new("fire").tag("kind", "alert"))
        .await
        .expect("publish");
    assert_eq!(c.recv_message().await.payload().as_text(), Some("fire"));
    c.assert_no_message().await;
}

/// A filter that can't be read or is too large is refused `invalid_filter`, and the topic
/// isn't subscribed; a bad tag on a publication fails the publish.
#[tokio::test(start_paused = true)]
async fn bad_filters_and_tags_are_refused() {
    let channels = Channels::new(Rooms::new()).allow("prices");
    let mut c = TestClient::connect(&channels).await.expect("c");
    let huge: Vec<String> = (0..300).map(|i| format!("S{i}")).collect();
    for filter in [
        json!("AAPL"),
        json!({"tags": {"ticker": "AAPL"}}),
        json!({"tags": {"bad key": ["x"]}}),
        json!({"tags": {"ticker": huge}}),
        json!({"nope": 1}),
    ] {
        let refused = c
            .command(json!({"type": "subscribe", "topic": "prices", "filter": filter}))
            .await
            .expect_err("refused");
        assert_eq!(refused.code(), "invalid_filter", "{filter}");
    }
    assert!(channels.rooms().rooms_of(c.connection().id()).is_empty());
    let e = channels
        .broadcast("prices", Publication::new("x").tag("bad key", "v"))
        .await
        .expect_err("a bad tag");
    assert_eq!(e.code(), "invalid_tag");
}

#[derive(Clone)]
struct Muted(Vec<String>);

/// Outgoing hooks: drop per subscriber (a mute list in assigns), rewrite per subscriber
/// (redaction), a panicking hook drops only that delivery, and a message that passes is the
/// same shared frame for every subscriber.
#[tokio::test(start_paused = true)]
async fn outgoing_hooks_pass_drop_or_rewrite_per_subscriber() {
    use salvo_realtime::channel::Outgoing;
    let channels = Channels::new(Rooms::new())
        .allow("room")
        .allow("secret")
        .on_outgoing("room", |ctx, m| {
            let muted = ctx.assigns().get::<Muted>();
            match (muted, m.sender()) {
                (Some(Muted(users)), Some(from)) if users.iter().any(|u| u == from) => {
                    Outgoing::Drop
                }
                _ if m.payload().as_text() == Some("boom") => panic!("a hook bug"),
                _ => Outgoing::Pass,
            }
        })
        .on_outgoing("secret", |ctx, _m| {
            if ctx.user_id() == Some("staff") {
                Outgoing::Pass
            } else {
                Outgoing::Replace(Publication::new("[redacted]").event("redacted"))
            }
        });
    let mut staff = TestClient::connect_as(&channels, Identity::new("staff"))
        .await
        .expect("staff");
    let mut ann = TestClient::connect_as(&channels, Identity::new("ann"))
        .await
        .expect("ann");
    let mut troll = TestClient::connect_as(&channels, Identity::new("troll"))
        .await
        .expect("troll");
    for c in [&mut staff, &mut ann, &mut troll] {
        c.subscribe("room").await.expect("room");
        c.subscribe("secret").await.expect("secret");
    }
    ann.connection()
        .assigns()
        .insert(Muted(vec!["troll".into()]));

    troll
        .publish("room", json!("spam"))
        .await
        .expect("published");
    staff
        .publish("room", json!("hello"))
        .await
        .expect("published");
    assert_eq!(
        ann.recv_message().await.payload().as_text(),
        Some("hello"),
        "spam muted"
    );
    let from_staff = staff.recv_message().await; // its own echo of spam came first
    assert_eq!(from_staff.payload().as_text(), Some("spam"));
    let hello_staff = staff.recv_message().await;
    let hello_troll = {
        assert_eq!(troll.recv_message().await.payload().as_text(), Some("spam"));
        troll.recv_message().await
    };
    assert_eq!(
        hello_staff.envelope_json().as_ptr(),
        hello_troll.envelope_json().as_ptr(),
        "a passed message is the one shared frame"
    );

    staff
        .publish("secret", json!("the code is 42"))
        .await
        .expect("published");
    let seen = staff.recv_message().await;
    assert_eq!(seen.payload().as_text(), Some("the code is 42"));
    let redacted = ann.recv_message().await;
    assert_eq!(
        (
            redacted.payload().as_text(),
            redacted.event().map(|e| e.as_str())
        ),
        (Some("[redacted]"), Some("redacted"))
    );
    assert_eq!(redacted.id(), seen.id(), "same id: resume works the same");

    // A hook that panics drops that delivery only; the connection goes on.
    staff
        .publish("room", json!("boom"))
        .await
        .expect("published");
    staff
        .publish("room", json!("after"))
        .await
        .expect("published");
    assert_eq!(ann.recv_message().await.payload().as_text(), Some("after"));
}
