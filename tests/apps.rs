//! The README's measured apps (issue 20: "what a user writes"), each an example of its own:
//! run here over real sockets with independent clients (tokio-tungstenite, reqwest), and held
//! to their line budgets: user Rust lines after the `use` lines, rustfmt'ed at the default
//! width (CI's `cargo fmt --check` keeps them formatted), blank lines not counted. The README
//! shows each file as it is and states its count; both are checked here.

mod common;
#[allow(dead_code)]
#[path = "../examples/moderated_chat.rs"]
mod moderated_chat;
#[allow(dead_code)]
#[path = "../examples/mounted.rs"]
mod mounted;
#[allow(dead_code)]
#[path = "../examples/movement_game.rs"]
mod movement_game;
#[allow(dead_code)]
#[path = "../examples/room_auth.rs"]
mod room_auth;
#[allow(dead_code)]
#[path = "../examples/ticker.rs"]
mod ticker;

use common::TestServer;
use common::ws_client::{Client, WAIT, connect_channel, next_json, send_json};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Each app, its file, and its budget in lines (the issue's).
const APPS: [(&str, &str, usize); 5] = [
    ("moderated chat", "examples/moderated_chat.rs", 15),
    ("movement game", "examples/movement_game.rs", 25),
    ("per-room authorization", "examples/room_auth.rs", 20),
    ("ticker with filters", "examples/ticker.rs", 25),
    ("mounted app", "examples/mounted.rs", 45),
];

/// The non-blank lines after the last `use` line: what the user wrote beyond imports.
fn user_lines(source: &str) -> usize {
    let lines: Vec<&str> = source.lines().collect();
    let after = lines
        .iter()
        .rposition(|l| l.starts_with("use "))
        .map_or(0, |i| i + 1);
    lines[after..]
        .iter()
        .filter(|l| !l.trim().is_empty())
        .count()
}

/// The code the README shows for `file`: the block after the line naming it.
fn readme_block<'r>(readme: &'r str, file: &str) -> (&'r str, &'r str) {
    let marker = format!("`{file}`");
    let at = readme
        .find(&marker)
        .unwrap_or_else(|| panic!("the README names {file}"));
    let intro_start = readme[..at].rfind("\n\n").map_or(0, |i| i + 2);
    let rest = &readme[at..];
    let open = rest.find("```rust").expect("a code block follows");
    let body = &rest[open..];
    let start = body.find('\n').expect("fence line") + 1;
    let end = body[start..].find("\n```").expect("closing fence") + start + 1;
    (&readme[intro_start..at + open], &body[start..end])
}

#[test]
fn each_app_is_within_its_budget_and_the_readme_shows_it_with_its_count() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    for (name, file, budget) in APPS {
        let source = std::fs::read_to_string(format!("{}/{file}", env!("CARGO_MANIFEST_DIR")))
            .expect("example");
        let count = user_lines(&source);
        assert!(count <= budget, "{name}: {count} lines, budget {budget}");
        let (intro, shown) = readme_block(&readme, file);
        let code = &source[source.find("use ").expect("use lines")..];
        assert_eq!(shown, code, "the README shows {file} as it is");
        assert!(
            intro.contains(&format!("{count} lines")),
            "the README states {name}'s count ({count} lines): {intro}"
        );
    }
}

async fn subscribe(ws: &mut Client, topic: &str) -> Value {
    send_json(
        ws,
        json!({"type": "subscribe", "ref": topic, "topic": topic}),
    )
    .await;
    reply(ws, topic).await
}

/// The reply to `reference`, skipping deliveries.
async fn reply(ws: &mut Client, reference: &str) -> Value {
    loop {
        let v = next_json(ws).await;
        if v["type"] == "reply" && v["ref"] == reference {
            return v;
        }
    }
}

/// The next message envelope that isn't a presence notice.
async fn message(ws: &mut Client) -> Value {
    loop {
        let v = next_json(ws).await;
        let presence = v["event"]
            .as_str()
            .is_some_and(|e| e.starts_with("presence."));
        if v["type"] == "message" && !presence {
            return v;
        }
    }
}

#[tokio::test]
async fn the_moderated_chat_refuses_the_banned_word_and_stamps_the_rest() {
    let server = TestServer::start(moderated_chat::app()).await;
    let mut ann = connect_channel(&server.ws("/ws?name=ann")).await;
    let mut ben = connect_channel(&server.ws("/ws?name=ben")).await;
    subscribe(&mut ann, "room:lobby").await;
    subscribe(&mut ben, "room:lobby").await;
    let publish = |text: &str, r: &str| json!({"type": "publish", "ref": r, "topic": "room:lobby", "data": text});
    send_json(&mut ann, publish("well darn", "p1")).await;
    let refused = reply(&mut ann, "p1").await;
    assert_eq!(refused["error"]["code"], "moderated");
    send_json(&mut ann, publish("hello", "p2")).await;
    assert_eq!(reply(&mut ann, "p2").await["status"], "ok");
    let m = message(&mut ben).await;
    assert_eq!(
        (&m["data"]["text"], &m["data"]["from"]),
        (&json!("hello"), &json!("ann"))
    );
    assert!(
        m["data"]["at"]
            .as_u64()
            .is_some_and(|at| at > 1_700_000_000_000),
        "{m}"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_game_keeps_positions_refuses_illegal_moves_and_broadcasts_moved() {
    let server = TestServer::start(movement_game::app()).await;
    let mut ann = connect_channel(&server.ws("/ws?name=ann")).await;
    let mut ben = connect_channel(&server.ws("/ws?name=ben")).await;
    subscribe(&mut ann, "game:1").await;
    subscribe(&mut ben, "game:1").await;
    let step = |d: [i32; 2], r: &str| json!({"type": "publish", "ref": r, "topic": "game:1", "event": "move", "data": d});
    for (d, r, ok) in [
        ([1, 0], "m1", true),
        ([2, 0], "m2", false),
        ([0, -1], "m3", false),
        ([0, 1], "m4", true),
    ] {
        send_json(&mut ann, step(d, r)).await;
        let answer = reply(&mut ann, r).await;
        let code = answer["error"]["code"].as_str().unwrap_or("ok");
        assert_eq!(code, if ok { "ok" } else { "illegal_move" }, "{d:?}");
    }
    for at in [[1, 0], [1, 1]] {
        let m = message(&mut ben).await;
        assert_eq!(
            (&m["event"], &m["data"]),
            (&json!("moved"), &json!({"player": "ann", "at": at}))
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn room_auth_admits_a_team_member_to_its_team_room_only() {
    let server = TestServer::start(room_auth::app()).await;
    let mut ann = connect_channel(&server.ws("/ws?token=t-ann")).await;
    assert_eq!(subscribe(&mut ann, "team:red").await["status"], "ok");
    let blue = subscribe(&mut ann, "team:blue").await;
    assert_eq!(blue["error"]["code"], "forbidden");
    let req = server
        .ws("/ws?token=nope&topic=team:red")
        .into_client_request()
        .expect("request");
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 401);
        }
        other => panic!("expected 401, got {other:?}"),
    }
    server.stop().await;
}

fn filter_query(symbols: &[&str]) -> String {
    let filter = json!({"tags": {"ticker": symbols}}).to_string();
    let encoded: String = filter
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect();
    format!("filter={encoded}")
}

#[tokio::test]
async fn the_ticker_sends_each_subscriber_only_its_symbols_over_ws_and_sse() {
    let server = TestServer::start(ticker::app()).await;
    let url = server.http(&format!("/sse/prices?{}", filter_query(&["AAPL"])));
    let resp = reqwest::get(&url).await.expect("sse");
    let mut sse = resp.bytes_stream();
    let ws_url = server.ws(&format!("/ws/prices?{}", filter_query(&["MSFT", "GOOG"])));
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(ws_url))
        .await
        .expect("in time")
        .expect("ws");
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let v = next_json(&mut ws).await;
        if v["type"] == "message" {
            assert_eq!(v["tags"]["ticker"], v["data"]["symbol"]);
            seen.push(v["data"]["symbol"].as_str().unwrap_or_default().to_owned());
        }
    }
    assert!(seen.iter().all(|s| s == "MSFT" || s == "GOOG"), "{seen:?}");
    let mut text = String::new();
    while text.matches("data:").count() < 3 {
        let chunk = tokio::time::timeout(WAIT, sse.next())
            .await
            .expect("an event in time")
            .expect("open")
            .expect("bytes");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let symbols: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| d.split("\"symbol\":\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert!(
        !symbols.is_empty() && symbols.iter().all(|s| *s == "AAPL"),
        "{text}"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_mounted_app_authenticates_checks_origins_and_compresses_the_stream() {
    let server = TestServer::start(mounted::app()).await;
    let client = reqwest::Client::new();
    let status = |path: &str| {
        let req = client.get(server.http(path));
        async move { req.send().await.expect("answer").status().as_u16() }
    };
    assert_eq!(status("/hello").await, 401, "the auth hoop guards the app");
    assert_eq!(status("/events/room:a").await, 401, "and the event stream");
    let hello = client
        .get(server.http("/hello?token=t-ann"))
        .send()
        .await
        .expect("hello");
    assert_eq!(hello.text().await.expect("body"), "hello ann");

    // The stream: compressed when asked, and it flows.
    let resp = client
        .get(server.http("/events/room:a?token=t-ann"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("events");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()
            .get("content-encoding")
            .and_then(|v| v.to_str().ok()),
        Some("gzip")
    );

    // Origins: the same one for CORS and the WebSocket endpoint.
    let ws_with_origin = |origin: &'static str| {
        let url = server.ws("/ws?token=t-ann&topic=room:a");
        let mut req = url.into_client_request().expect("request");
        req.headers_mut()
            .insert("origin", origin.parse().expect("header"));
        async move {
            match tokio_tungstenite::connect_async(req).await {
                Ok(_) => 101,
                Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
                Err(e) => panic!("{e}"),
            }
        }
    };
    assert_eq!(ws_with_origin("https://app.example.com").await, 101);
    assert_eq!(ws_with_origin("https://evil.example").await, 403);
    let cross_origin = client
        .get(server.http("/hello?token=t-ann"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .expect("a cross-origin request");
    assert_eq!(
        cross_origin
            .headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("https://app.example.com")
    );
    server.stop().await;
}
