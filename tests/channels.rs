//! Channels over real sockets: the channel protocol (`salvo-realtime.v1`) spoken by
//! tokio-tungstenite as an independent client, and the same authorization on SSE.

mod common;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::ws_client::{
    Client, WAIT, connect_channel, next_json, next_message, send_json as send,
};
use common::{TestServer, eventually};
use futures_util::SinkExt;
use salvo::Router;
use salvo_realtime::channel::{Channels, Inbound};
use salvo_realtime::error::{HubError, Refused};
use salvo_realtime::sse::SseEndpoint;
use salvo_realtime::ws::WsEndpoint;
use salvo_realtime::{Connection, Hub, HubConfig, Identity, Position, Rooms, Topic};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[derive(Deserialize)]
struct Said {
    text: String,
}

#[derive(Serialize)]
struct Stamped {
    text: String,
    by: String,
    stamped: bool,
}

/// The channels most tests use: `room:*` for signed-in users, `staff` for the user "boss",
/// moderation and stamping on `room:*`, a few methods.
fn channels(rooms: Rooms) -> Channels {
    Channels::new(rooms)
        .authorize("room:*", |ctx, _req| async move {
            ctx.user_id()
                .map(|_| ())
                .ok_or_else(|| Refused::forbidden("sign in first"))
        })
        .authorize("staff", |ctx, _req| async move {
            if ctx.user_id() == Some("boss") {
                Ok(())
            } else {
                Err(Refused::new("staff_only", "staff only"))
            }
        })
        .allow("open:*")
        .on_publish("room:*", |ctx, msg: Inbound<Said>| async move {
            if msg.data.text.contains("darn") {
                return Err(Refused::new("moderated", "keep it civil"));
            }
            Ok(Stamped {
                text: msg.data.text,
                by: ctx.user_id().unwrap_or("?").to_owned(),
                stamped: true,
            })
        })
        .on_call("add", |_ctx, (a, b): (i64, i64)| async move { Ok(a + b) })
        .on_call("whoami", |ctx, ()| async move {
            Ok(json!({ "user": ctx.user_id(), "conn": ctx.connection_id().as_u64() }))
        })
        .on_call("boom", |_ctx, ()| async move {
            if true {
                panic!("handler bug");
            }
            Ok(())
        })
        .on_call("slow", |_ctx, ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(ms)
        })
        .handler_timeout(Duration::from_millis(500))
}

fn endpoint(channels: Channels) -> WsEndpoint<Channels> {
    WsEndpoint::new(channels).identify(|req, _| {
        Ok(req
            .query::<String>("user")
            .map(|u| Identity::new(u.as_str())))
    })
}

async fn serve(channels: Channels) -> TestServer {
    let sse = SseEndpoint::new(channels.clone()).identify(|req, _| {
        Ok(req
            .query::<String>("user")
            .map(|u| Identity::new(u.as_str())))
    });
    let router = Router::new()
        .push(Router::with_path("ws").goal(endpoint(channels)))
        .push(Router::with_path("sse").get(sse));
    TestServer::start(router).await
}

/// A client that negotiates the channel protocol, on `/ws?` + `query`.
async fn connect(server: &TestServer, query: &str) -> Client {
    connect_channel(&server.ws(&format!("/ws?{query}"))).await
}

/// The reply to `reference`, collecting every other frame on the way.
async fn reply(ws: &mut Client, reference: Value, others: &mut Vec<Value>) -> Value {
    loop {
        let v = next_json(ws).await;
        if v["type"] == "reply" && v["ref"] == reference {
            return v;
        }
        others.push(v);
    }
}

/// Sends a command and returns its reply (other frames are dropped).
async fn command(ws: &mut Client, frame: Value) -> Value {
    let reference = frame["ref"].clone();
    send(ws, frame).await;
    reply(ws, reference, &mut Vec::new()).await
}

/// A plain (envelope) client says "darn", which the moderated rooms refuse: the error frame
/// that comes back, skipping everything before it.
async fn say_darn(ws: &mut Client) -> Value {
    ws.send(Message::text(r#"{"text":"darn"}"#))
        .await
        .expect("send");
    loop {
        let v = next_json(ws).await;
        if v["type"] == "error" {
            return v;
        }
    }
}

fn code(reply: &Value) -> &str {
    reply["error"]["code"].as_str().unwrap_or("<ok>")
}

#[tokio::test]
async fn one_socket_many_topics_publish_to_one_and_join_another_later() {
    let rooms = Rooms::new();
    let server = serve(channels(rooms.clone())).await;
    let mut alice = connect(&server, "user=alice").await;
    let mut bob = connect(&server, "user=bob").await;
    for (i, topic) in ["room:a", "room:b"].iter().enumerate() {
        let r = command(
            &mut alice,
            json!({"type":"subscribe","ref":i,"topic":topic}),
        )
        .await;
        assert_eq!(r["status"], "ok", "{r}");
    }
    let r = command(
        &mut bob,
        json!({"type":"subscribe","ref":"x","topic":"room:a"}),
    )
    .await;
    assert_eq!(r["status"], "ok");
    // Alice publishes to B only: bob (in A) doesn't get it; alice does (echo), stamped.
    let mut others = Vec::new();
    send(
        &mut alice,
        json!({"type":"publish","ref":10,"topic":"room:b","data":{"text":"to b"}}),
    )
    .await;
    let r = reply(&mut alice, json!(10), &mut others).await;
    assert_eq!(r["status"], "ok");
    assert!(r["data"]["id"].is_string());
    let echo = others
        .iter()
        .find(|m| m["type"] == "message" && m.get("event").is_none())
        .expect("echo before the reply");
    assert_eq!(echo["topic"], "room:b");
    assert_eq!(
        echo["data"],
        json!({"text":"to b","by":"alice","stamped":true})
    );
    send(
        &mut alice,
        json!({"type":"publish","ref":11,"topic":"room:a","data":{"text":"to a"},"echo":false}),
    )
    .await;
    let m = next_message(&mut bob).await;
    assert_eq!(
        (m["topic"].as_str(), m["data"]["text"].as_str()),
        (Some("room:a"), Some("to a"))
    );
    // Bob joins C later, on the same socket.
    let r = command(
        &mut bob,
        json!({"type":"subscribe","ref":"c","topic":"room:c"}),
    )
    .await;
    assert_eq!(r["status"], "ok");
    rooms
        .broadcast("room:c", "hello c")
        .await
        .expect("broadcast");
    assert_eq!(next_message(&mut bob).await["data"], "hello c");
    // Unsubscribe: nothing more from A.
    let r = command(
        &mut bob,
        json!({"type":"unsubscribe","ref":"u","topic":"room:a"}),
    )
    .await;
    assert_eq!(r["data"]["was_subscribed"], true);
    rooms.broadcast("room:a", "gone").await.expect("broadcast");
    rooms
        .broadcast("room:c", "still c")
        .await
        .expect("broadcast");
    assert_eq!(next_message(&mut bob).await["data"], "still c");
    drop((alice, bob));
    assert!(eventually(|| rooms.connection_count() == 0).await);
    server.stop().await;
}

#[tokio::test]
async fn every_topic_resumes_on_its_own_after_a_reconnect() {
    let rooms = Rooms::new();
    let server = serve(channels(rooms.clone())).await;
    let mut ws = connect(&server, "user=alice").await;
    for (i, topic) in ["room:a", "room:b", "room:c"].iter().enumerate() {
        command(&mut ws, json!({"type":"subscribe","ref":i,"topic":topic})).await;
    }
    let mut last = std::collections::HashMap::new();
    for topic in ["room:a", "room:b", "room:c"] {
        rooms
            .broadcast(topic, format!("{topic}-0"))
            .await
            .expect("broadcast");
        let m = next_message(&mut ws).await;
        last.insert(topic, m["id"].as_str().expect("id").to_owned());
    }
    drop(ws);
    assert!(eventually(|| rooms.connection_count() == 0).await);
    for i in 1..=3 {
        for topic in ["room:a", "room:b", "room:c"] {
            rooms
                .broadcast(topic, format!("{topic}-{i}"))
                .await
                .expect("broadcast");
        }
    }
    let mut ws = connect(&server, "user=alice").await;
    let mut early = Vec::new();
    for (i, (topic, last)) in [
        ("room:a", last["room:a"].as_str()),
        ("room:b", last["room:b"].as_str()),
        ("room:c", "from-another-app"),
    ]
    .into_iter()
    .enumerate()
    {
        send(
            &mut ws,
            json!({"type":"subscribe","ref":i,"topic":topic,"last":last}),
        )
        .await;
        let r = reply(&mut ws, json!(i), &mut early).await;
        assert_eq!(r["status"], "ok", "{r}");
    }
    let mut got: std::collections::HashMap<String, Vec<String>> = Default::default();
    let mut resets = Vec::new();
    let mut early = early.into_iter();
    while got.values().map(Vec::len).sum::<usize>() < 3 + 3 + 4 {
        let v = match early.next() {
            Some(v) => v,
            None => next_json(&mut ws).await,
        };
        match v["type"].as_str() {
            Some("message") if v.get("event").is_none() => got
                .entry(v["topic"].as_str().unwrap_or("?").to_owned())
                .or_default()
                .push(v["data"].as_str().unwrap_or("?").to_owned()),
            Some("reset") => resets.push((v["topic"].clone(), v["reason"].clone())),
            _ => {}
        }
    }
    assert_eq!(got["room:a"], ["room:a-1", "room:a-2", "room:a-3"]);
    assert_eq!(got["room:b"], ["room:b-1", "room:b-2", "room:b-3"]);
    assert_eq!(
        got["room:c"],
        ["room:c-0", "room:c-1", "room:c-2", "room:c-3"]
    );
    assert_eq!(resets, [(json!("room:c"), json!("invalid"))]);
    drop(ws);
    server.stop().await;
}

#[tokio::test]
async fn authorization_decides_subscribe_commands_and_connect_time_topics_on_both_transports() {
    let rooms = Rooms::new();
    let server = serve(channels(rooms.clone())).await;
    let mut carol = connect(&server, "user=carol").await;
    let r = command(
        &mut carol,
        json!({"type":"subscribe","ref":1,"topic":"staff"}),
    )
    .await;
    assert_eq!(
        (r["status"].as_str(), code(&r)),
        (Some("error"), "staff_only")
    );
    let r = command(
        &mut carol,
        json!({"type":"subscribe","ref":2,"topic":"secret"}),
    )
    .await;
    assert_eq!(code(&r), "forbidden", "no rule: closed by default");
    assert!(rooms.presence("staff").await.is_empty(), "nothing joined");
    assert!(rooms.rooms_of(rooms.connections_of("carol")[0]).is_empty());
    let mut boss = connect(&server, "user=boss").await;
    let r = command(
        &mut boss,
        json!({"type":"subscribe","ref":1,"topic":"staff"}),
    )
    .await;
    assert_eq!(r["status"], "ok");
    // Anonymous: `room:*` needs a user; `open:*` is for everyone.
    let mut anon = connect(&server, "").await;
    let r = command(
        &mut anon,
        json!({"type":"subscribe","ref":1,"topic":"room:x"}),
    )
    .await;
    assert_eq!(code(&r), "forbidden");
    let r = command(
        &mut anon,
        json!({"type":"subscribe","ref":2,"topic":"open:x"}),
    )
    .await;
    assert_eq!(r["status"], "ok");
    // The same rules at connect time, WebSocket and SSE alike.
    let ws_status =
        match tokio_tungstenite::connect_async(server.ws("/ws?user=carol&topic=staff")).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
            other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
        };
    let sse = reqwest::get(server.http("/sse?user=carol&topic=staff"))
        .await
        .expect("answer");
    assert_eq!((ws_status, sse.status().as_u16()), (403, 403));
    assert!(sse.text().await.expect("body").contains("staff_only"));
    let ok = reqwest::get(server.http("/sse?user=boss&topic=staff"))
        .await
        .expect("answer");
    assert_eq!(ok.status().as_u16(), 200);
    drop((carol, boss, anon, ok));
    server.stop().await;
}

#[tokio::test]
async fn publish_handlers_refuse_or_rewrite_and_calls_reply() {
    let rooms = Rooms::new();
    let server = serve(channels(rooms.clone())).await;
    let mut ws = connect(&server, "user=dave").await;
    command(
        &mut ws,
        json!({"type":"subscribe","ref":0,"topic":"room:r"}),
    )
    .await;
    command(
        &mut ws,
        json!({"type":"subscribe","ref":1,"topic":"open:o"}),
    )
    .await;
    let r = command(
        &mut ws,
        json!({"type":"publish","ref":2,"topic":"room:r","data":{"text":"darn it"}}),
    )
    .await;
    assert_eq!(code(&r), "moderated");
    assert!(
        rooms.history("room:r").is_empty(),
        "a refused message is not published"
    );
    let r = command(
        &mut ws,
        json!({"type":"publish","ref":3,"topic":"room:r","data":{"nope":1}}),
    )
    .await;
    assert_eq!(code(&r), "invalid_data");
    // No handler on open:*: published as sent, with its event name.
    let r = command(
        &mut ws,
        json!({"type":"publish","ref":4,"topic":"open:o","event":"note","data":"plain"}),
    )
    .await;
    assert_eq!(r["status"], "ok");
    let history = rooms.history("open:o");
    assert_eq!(
        (
            history[0].payload().as_text(),
            history[0].event().map(|e| e.as_str())
        ),
        (Some("plain"), Some("note"))
    );
    let r = command(
        &mut ws,
        json!({"type":"publish","ref":5,"topic":"room:elsewhere","data":{"text":"hi"}}),
    )
    .await;
    assert_eq!(code(&r), "not_subscribed");
    // Calls.
    let r = command(
        &mut ws,
        json!({"type":"call","ref":6,"method":"add","data":[2,40]}),
    )
    .await;
    assert_eq!((r["status"].as_str(), &r["data"]), (Some("ok"), &json!(42)));
    let r = command(&mut ws, json!({"type":"call","ref":7,"method":"whoami"})).await;
    assert_eq!(r["data"]["user"], "dave");
    let r = command(
        &mut ws,
        json!({"type":"call","ref":8,"method":"add","data":"x"}),
    )
    .await;
    assert_eq!(code(&r), "invalid_data");
    let r = command(&mut ws, json!({"type":"call","ref":9,"method":"nope"})).await;
    assert_eq!(code(&r), "unknown_method");
    let r = command(&mut ws, json!({"type":"call","ref":10,"method":"boom"})).await;
    assert_eq!(code(&r), "handler_failed");
    let r = command(
        &mut ws,
        json!({"type":"call","ref":11,"method":"slow","data":2000}),
    )
    .await;
    assert_eq!(code(&r), "timeout");
    // Still up after all that.
    let r = command(
        &mut ws,
        json!({"type":"call","ref":12,"method":"add","data":[1,1]}),
    )
    .await;
    assert_eq!(r["data"], 2);
    drop(ws);
    server.stop().await;
}

#[tokio::test]
async fn bad_commands_each_get_one_coded_answer() {
    let rooms = Rooms::with_config(HubConfig::new().max_subscriptions(2));
    let server = serve(channels(rooms.clone())).await;
    let mut ws = connect(&server, "user=eve").await;
    send(&mut ws, json!("not an object")).await;
    let v = next_json(&mut ws).await;
    assert_eq!(
        (v["type"].as_str(), v["error"]["code"].as_str()),
        (Some("error"), Some("bad_frame"))
    );
    ws.send(Message::text("{oops")).await.expect("send");
    assert_eq!(next_json(&mut ws).await["error"]["code"], "bad_frame");
    send(&mut ws, json!({"type":"call","method":"add","data":[1,2]})).await;
    assert_eq!(next_json(&mut ws).await["error"]["code"], "missing_ref");
    let r = command(&mut ws, json!({"type":"teleport","ref":1})).await;
    assert_eq!(code(&r), "unknown_command");
    let r = command(
        &mut ws,
        json!({"type":"subscribe","ref":2,"topic":"@eve-not-mine"}),
    )
    .await;
    assert_eq!(code(&r), "forbidden");
    ws.send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send");
    assert_eq!(next_json(&mut ws).await["error"]["code"], "bad_frame");
    // Two calls in flight with one ref: the second is refused, the first still answers.
    send(
        &mut ws,
        json!({"type":"call","ref":"same","method":"slow","data":200}),
    )
    .await;
    send(
        &mut ws,
        json!({"type":"call","ref":"same","method":"add","data":[1,2]}),
    )
    .await;
    let first = next_json(&mut ws).await;
    assert_eq!(
        (first["ref"].as_str(), code(&first)),
        (Some("same"), "duplicate_ref")
    );
    let second = next_json(&mut ws).await;
    assert_eq!(
        (second["ref"].as_str(), &second["data"]),
        (Some("same"), &json!(200))
    );
    // More subscriptions than the cap.
    for (i, t) in ["room:1", "room:2"].iter().enumerate() {
        assert_eq!(
            command(&mut ws, json!({"type":"subscribe","ref":i,"topic":t})).await["status"],
            "ok"
        );
    }
    let r = command(
        &mut ws,
        json!({"type":"subscribe","ref":3,"topic":"room:3"}),
    )
    .await;
    assert_eq!(code(&r), "too_many_subscriptions");
    assert!(rooms.presence("room:3").await.is_empty());
    drop(ws);
    assert!(eventually(|| rooms.connection_count() == 0).await);
    server.stop().await;
}

#[tokio::test]
async fn the_server_sends_to_one_connection_a_user_a_topic_and_moves_connections() {
    let rooms = Rooms::new();
    let connected = Arc::new(AtomicUsize::new(0));
    let left = Arc::new(AtomicUsize::new(0));
    let (c, l) = (Arc::clone(&connected), Arc::clone(&left));
    let hub = channels(rooms.clone())
        .on_connect(move |ctx| {
            c.fetch_add(1, Ordering::SeqCst);
            async move {
                ctx.subscribe("room:lobby", Position::Live)
                    .await
                    .map_err(|e| Refused::new("join_failed", e.to_string()))
            }
        })
        .on_disconnect(move |_ctx| {
            l.fetch_add(1, Ordering::SeqCst);
            async {}
        });
    let server = serve(hub.clone()).await;
    let mut tab1 = connect(&server, "user=frank").await;
    let mut tab2 = connect(&server, "user=frank").await;
    assert!(eventually(|| rooms.connections_of("frank").len() == 2).await);
    assert_eq!(connected.load(Ordering::SeqCst), 2);
    // on_connect put both in the lobby.
    hub.broadcast("room:lobby", "welcome")
        .await
        .expect("broadcast");
    assert_eq!(next_message(&mut tab1).await["data"], "welcome");
    assert_eq!(next_message(&mut tab2).await["data"], "welcome");
    // To one connection: find tab1's id through a call.
    let who = command(&mut tab1, json!({"type":"call","ref":1,"method":"whoami"})).await;
    let id = rooms
        .connections_of("frank")
        .into_iter()
        .find(|c| c.as_u64() == who["data"]["conn"].as_u64().unwrap_or(0))
        .expect("tab1's id");
    hub.send_to_connection(id, "just you").expect("sent");
    let m = next_json(&mut tab1).await;
    assert_eq!(
        (m["topic"].as_str(), m["data"].as_str()),
        (Some("$conn"), Some("just you"))
    );
    // To the user: both tabs.
    hub.send_to_user("frank", "both of you")
        .await
        .expect("sent");
    assert_eq!(next_message(&mut tab1).await["data"], "both of you");
    assert_eq!(next_message(&mut tab2).await["data"], "both of you");
    // Moved by the server: tab2 is added to room:vip (no rule runs) and told so.
    let tab2_id = rooms
        .connections_of("frank")
        .into_iter()
        .find(|c| *c != id)
        .expect("tab2");
    hub.subscribe(tab2_id, "room:vip", Position::Live)
        .await
        .expect("moved");
    // The notice comes first: nothing of the room (its presence snapshot) overtakes it.
    let notice = next_json(&mut tab2).await;
    assert_eq!(notice["event"], "subscribed", "{notice}");
    assert_eq!(next_json(&mut tab2).await["type"], "presence");
    assert_eq!(
        (notice["topic"].as_str(), notice["data"]["topic"].as_str()),
        (Some("$conn"), Some("room:vip"))
    );
    hub.broadcast("room:vip", "vip only")
        .await
        .expect("broadcast");
    assert_eq!(next_message(&mut tab2).await["data"], "vip only");
    assert!(hub.unsubscribe(tab2_id, "room:vip").await.expect("removed"));
    drop((tab1, tab2));
    assert!(eventually(|| left.load(Ordering::SeqCst) == 2).await);
    assert!(eventually(|| rooms.connection_count() == 0).await);
    server.stop().await;
}

#[tokio::test]
async fn plain_envelope_clients_go_through_the_same_handlers() {
    let rooms = Rooms::new();
    let server = serve(channels(rooms.clone())).await;
    let plain = |user: &str| {
        let url = server.ws(&format!("/ws?user={user}&topic=room:legacy"));
        async move {
            let (ws, _) = tokio_tungstenite::connect_async(url)
                .await
                .expect("connect without the channel protocol");
            ws
        }
    };
    let mut gail = plain("gail").await;
    let mut hal = plain("hal").await;
    assert_eq!(rooms.connection_count(), 2, "joined before the 101");
    let v = say_darn(&mut gail).await;
    assert_eq!(
        (&v["error"]["code"], &v["error"]["message"]),
        (&json!("moderated"), &json!("keep it civil")),
        "the handler's own code, in the reply's shape, the message without the code"
    );
    gail.send(Message::text(r#"{"text":"fine"}"#))
        .await
        .expect("send");
    let m = next_message(&mut hal).await;
    assert_eq!(
        (m["data"]["stamped"].clone(), m["from"].clone()),
        (json!(true), json!("gail"))
    );
    // Rooms' default inbound policy holds under Channels too: no echo to the sender. The error
    // for a later refused frame comes after every delivery that was ready, so an echo of
    // "fine" would be read before it.
    let v = say_darn(&mut gail).await;
    assert_eq!(v["error"]["code"], "moderated");
    drop((gail, hal));
    server.stop().await;
}

/// `HubConfig::inbound` on the wrapped `Rooms` decides echo for plain frames under `Channels`.
#[tokio::test]
async fn the_wrapped_rooms_inbound_policy_decides_plain_echo() {
    use salvo_realtime::hub::InboundPolicy;
    for (policy, echoed) in [
        (InboundPolicy::Publish, true),
        (InboundPolicy::PublishExceptSender, false),
    ] {
        let rooms = Rooms::with_config(HubConfig::new().inbound(policy));
        let server = serve(channels(rooms.clone())).await;
        let (mut ws, _) =
            tokio_tungstenite::connect_async(server.ws("/ws?user=gail&topic=room:echo"))
                .await
                .expect("connect");
        // The error for "darn" comes after every delivery that was ready, so an echo of
        // "fine" is the first frame if there is one.
        ws.send(Message::text(r#"{"text":"fine"}"#))
            .await
            .expect("send");
        ws.send(Message::text(r#"{"text":"darn"}"#))
            .await
            .expect("send");
        let mut first = next_json(&mut ws).await;
        while first["type"] == "presence" {
            first = next_json(&mut ws).await;
        }
        assert_eq!(
            first["type"] == "message",
            echoed,
            "{policy:?}: first frame {first}"
        );
        if echoed {
            assert_eq!(next_json(&mut ws).await["error"]["code"], "moderated");
        }
        drop(ws);
        server.stop().await;
    }
    let rooms = Rooms::with_config(HubConfig::new().inbound(InboundPolicy::Reject));
    let server = serve(channels(rooms)).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws("/ws?user=gail&topic=room:echo"))
        .await
        .expect("connect");
    let v = say_darn(&mut ws).await;
    assert_eq!(v["error"]["code"], "refused");
    drop(ws);
    server.stop().await;
}

#[tokio::test]
async fn identity_may_come_from_an_async_lookup() {
    let rooms = Rooms::new();
    let sessions = Arc::new(std::collections::HashMap::from([(
        "t0k3n".to_owned(),
        "hana".to_owned(),
    )]));
    let ws = WsEndpoint::new(channels(rooms.clone())).identify_async(move |req, _| {
        let token = req.query::<String>("token");
        let sessions = Arc::clone(&sessions);
        async move {
            tokio::time::sleep(Duration::from_millis(5)).await; // a database round trip
            match token.and_then(|t| sessions.get(&t).cloned()) {
                Some(user) => Ok(Some(Identity::new(user))),
                None => Err(salvo_realtime::Rejection::unauthorized("bad token")),
            }
        }
    });
    let server = TestServer::start(Router::with_path("ws").goal(ws)).await;
    let mut req = server
        .ws("/ws?token=nope")
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "salvo-realtime.v1".parse().expect("header"),
    );
    let bad = tokio_tungstenite::connect_async(req).await;
    assert!(
        matches!(bad, Err(tokio_tungstenite::tungstenite::Error::Http(ref r)) if r.status() == 401)
    );
    let mut ok = connect(&server, "token=t0k3n").await;
    let r = command(&mut ok, json!({"type":"call","ref":1,"method":"whoami"})).await;
    assert_eq!(r["data"]["user"], "hana");
    drop(ok);
    server.stop().await;
}

/// Rooms whose every publish fails as a backend that is down would.
#[derive(Clone)]
struct Down {
    inner: Rooms,
}

salvo_realtime::hub::delegate_hub! {
    impl[] Hub for Down, to inner {
        type Subscription = <Rooms as salvo_realtime::Hub>::Subscription;

        async fn publish_from(
            &self,
            _conn: &salvo_realtime::Connection,
            _topic: &salvo_realtime::Topic,
            _publication: salvo_realtime::Publication,
        ) -> Result<salvo_realtime::hub::Published, salvo_realtime::error::HubError> {
            Err(salvo_realtime::error::HubError::Backend(
                "redis://user:password@10.0.0.9 timed out".into(),
            ))
        }
    }
}

async fn connect_to(server: &TestServer, path: &str) -> Client {
    let mut req = server.ws(path).into_client_request().expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "salvo-realtime.v1".parse().expect("header"),
    );
    tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake in time")
        .expect("handshake")
        .0
}

#[tokio::test]
async fn the_remaining_error_codes() {
    use salvo_realtime::PubSub;
    use salvo_realtime::ws::RateLimit;
    let rooms = Rooms::with_config(HubConfig::new().max_payload(100).max_topics_per_owner(2));
    let router = Router::new()
        .push(Router::with_path("ws").goal(endpoint(channels(rooms.clone()))))
        .push(Router::with_path("pubsub").goal(WsEndpoint::new(PubSub::new())))
        .push(Router::with_path("down").goal(WsEndpoint::new(Down {
            inner: Rooms::new(),
        })))
        .push(
            Router::with_path("strict")
                .goal(endpoint(channels(Rooms::new())).rate_limit(Some(RateLimit::new(0, 2)))),
        );
    let server = TestServer::start(router).await;
    let mut ws = connect(&server, "user=ivy").await;
    command(
        &mut ws,
        json!({"type":"subscribe","ref":0,"topic":"open:a"}),
    )
    .await;
    let r = command(
        &mut ws,
        json!({"type":"publish","ref":1,"topic":"open:a","event":"","data":1}),
    )
    .await;
    assert_eq!(code(&r), "invalid_event");
    let r = command(
        &mut ws,
        json!({"type":"publish","ref":2,"topic":"open:a","data":"x".repeat(200)}),
    )
    .await;
    assert_eq!(code(&r), "too_large");
    let mut deep = json!(1);
    for _ in 0..70 {
        deep = json!([deep]);
    }
    send(
        &mut ws,
        json!({"type":"publish","ref":3,"topic":"open:a","data":deep}),
    )
    .await;
    let v = next_json(&mut ws).await;
    assert_eq!(
        (
            v["type"].as_str(),
            v["ref"].as_i64(),
            v["error"]["code"].as_str()
        ),
        (Some("reply"), Some(3), Some("json_too_deep")),
        "a readable ref gets its one reply"
    );
    // Without a readable ref, a ref-less error frame.
    let deeper = format!(
        r#"{{"type":"publish","topic":"open:a","data":{}1{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    ws.send(Message::text(deeper)).await.expect("send");
    let v = next_json(&mut ws).await;
    assert_eq!(
        (v["type"].as_str(), v["error"]["code"].as_str()),
        (Some("error"), Some("json_too_deep"))
    );
    // open:a was the first topic ivy created; one more is allowed, then her own 429-like cap.
    command(
        &mut ws,
        json!({"type":"subscribe","ref":4,"topic":"open:b"}),
    )
    .await;
    let r = command(
        &mut ws,
        json!({"type":"subscribe","ref":5,"topic":"open:c"}),
    )
    .await;
    assert_eq!(code(&r), "too_many_created");
    // A hub without dynamic topics.
    let mut plain = connect_to(&server, "/pubsub?topic=fixed").await;
    let r = command(&mut plain, json!({"type":"subscribe","ref":1,"topic":"t"})).await;
    assert_eq!(code(&r), "unsupported");
    let r = command(&mut plain, json!({"type":"call","ref":2,"method":"m"})).await;
    assert_eq!(code(&r), "unsupported");
    // A backend that is down: `unavailable`, no detail leaked, the socket stays.
    let mut down = connect_to(&server, "/down").await;
    command(&mut down, json!({"type":"subscribe","ref":1,"topic":"r"})).await;
    let r = command(
        &mut down,
        json!({"type":"publish","ref":2,"topic":"r","data":"x"}),
    )
    .await;
    assert_eq!(code(&r), "unavailable");
    assert!(!r.to_string().contains("password"));
    let r = command(&mut down, json!({"type":"unsubscribe","ref":3,"topic":"r"})).await;
    assert_eq!(r["status"], "ok");
    // The rate limit bounds a command flood.
    let mut strict = connect_to(&server, "/strict?user=flood").await;
    for i in 0..6 {
        send(
            &mut strict,
            json!({"type":"call","ref":i,"method":"add","data":[i,1]}),
        )
        .await;
    }
    let mut limited = 0;
    let mut answered = 0;
    while limited + answered < 6 {
        let v = next_json(&mut strict).await;
        // A rate-limited command gets its reply too (issue 18, defect 8), with that code.
        match (v["type"].as_str(), v["error"]["code"].as_str()) {
            (Some("reply"), Some("rate_limited")) => limited += 1,
            (Some("reply"), _) => answered += 1,
            _ => {}
        }
    }
    assert_eq!((answered, limited), (2, 4));
    drop((ws, plain, down, strict));
    server.stop().await;
}

// README's "server-authoritative game move" app, run: the server keeps the board, refuses a
// move out of turn or onto a taken cell, and broadcasts each accepted board.
#[tokio::test]
async fn the_readme_game_move_is_server_authoritative() {
    use salvo_realtime::Publication;
    use std::collections::HashMap;
    use std::sync::Mutex;

    #[derive(Deserialize)]
    struct Move {
        game: String,
        cell: usize,
    }
    #[derive(Clone, Default, Serialize)]
    struct Board {
        cells: [Option<char>; 9],
        o_to_play: bool,
    }
    let boards: Arc<Mutex<HashMap<String, Board>>> = Arc::default();
    let games = Channels::new(Rooms::new())
        .allow("game:*")
        .on_call("move", move |ctx, m: Move| {
            let (boards, mark) = (
                Arc::clone(&boards),
                if ctx.user_id() == Some("o") { 'O' } else { 'X' },
            );
            async move {
                let board = {
                    let mut all = boards
                        .lock()
                        .map_err(|_| Refused::new("internal", "poisoned"))?;
                    let board = all.entry(m.game.clone()).or_default();
                    if board.o_to_play != (mark == 'O') {
                        return Err(Refused::new("not_your_turn", "wait"));
                    }
                    let Some(cell @ None) = board.cells.get_mut(m.cell) else {
                        return Err(Refused::new("cell_taken", "taken"));
                    };
                    (*cell, board.o_to_play) = (Some(mark), mark == 'X');
                    board.clone()
                };
                ctx.channels()
                    .broadcast(&format!("game:{}", m.game), Publication::json(&board))
                    .await?;
                Ok(board)
            }
        });
    let ws =
        WsEndpoint::new(games).identify(|req, _| Ok(req.query::<String>("as").map(Identity::new)));
    let server = TestServer::start(Router::with_path("ws").goal(ws)).await;
    let mut x = connect(&server, "as=x").await;
    let mut o = connect(&server, "as=o").await;
    for ws in [&mut x, &mut o] {
        command(ws, json!({"type":"subscribe","ref":0,"topic":"game:1"})).await;
    }
    let mv = |r: u32, cell: usize| json!({"type":"call","ref":r,"method":"move","data":{"game":"1","cell":cell}});
    let r = command(&mut o, mv(1, 4)).await;
    assert_eq!(code(&r), "not_your_turn");
    let r = command(&mut x, mv(2, 4)).await;
    assert_eq!(r["data"]["cells"][4], "X");
    let seen = next_message(&mut o).await;
    assert_eq!(
        (seen["topic"].as_str(), &seen["data"]["cells"][4]),
        (Some("game:1"), &json!("X"))
    );
    let r = command(&mut o, mv(3, 4)).await;
    assert_eq!(code(&r), "cell_taken");
    let r = command(&mut o, mv(4, 9)).await;
    assert_eq!(code(&r), "cell_taken", "off the board");
    let r = command(&mut o, mv(5, 0)).await;
    assert_eq!(
        (
            r["data"]["cells"][0].as_str(),
            r["data"]["o_to_play"].as_bool()
        ),
        (Some("O"), Some(false))
    );
    drop((x, o));
    server.stop().await;
}

// A room the server already put the connection in (live, from `on_connect`) can still be
// resumed: the client's `subscribe` with `last` restarts its delivery there.
#[tokio::test]
async fn resuming_a_room_the_server_already_joined_gets_what_was_missed() {
    let rooms = Rooms::new();
    let hub = channels(rooms.clone()).on_connect(|ctx| async move {
        ctx.subscribe("room:auto", Position::Live)
            .await
            .map_err(Refused::from)
    });
    let server = serve(hub).await;
    let mut ws = connect(&server, "user=jo").await;
    rooms.broadcast("room:auto", "m0").await.expect("broadcast");
    let last = next_message(&mut ws).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    drop(ws);
    assert!(eventually(|| rooms.connection_count() == 0).await);
    for text in ["m1", "m2"] {
        rooms.broadcast("room:auto", text).await.expect("broadcast");
    }
    let mut ws = connect(&server, "user=jo").await;
    let mut early = Vec::new();
    send(
        &mut ws,
        json!({"type":"subscribe","ref":1,"topic":"room:auto","last":last}),
    )
    .await;
    let r = reply(&mut ws, json!(1), &mut early).await;
    assert_eq!(r["status"], "ok");
    let mut texts: Vec<String> = early
        .iter()
        .filter(|v| v["type"] == "message" && v.get("event").is_none())
        .map(|v| v["data"].as_str().unwrap_or("?").to_owned())
        .collect();
    while texts.len() < 2 {
        texts.push(
            next_message(&mut ws).await["data"]
                .as_str()
                .unwrap_or("?")
                .to_owned(),
        );
    }
    assert_eq!(texts, ["m1", "m2"]);
    assert_eq!(
        rooms.presence("room:auto").await.len(),
        1,
        "still one member"
    );
    drop(ws);
    server.stop().await;
}

/// A handler that panics while it is called, before it returns its future: the bug of
/// defect 9's kind (`authorize`, `on_connect`, `on_disconnect` called the closure outside the
/// guard).
fn sync_panic<T>(what: &str) -> std::future::Ready<T> {
    panic!("{what} panicked before returning its future")
}

/// Channels whose every kind of handler panics, for one user or topic each.
fn panicking(rooms: Rooms) -> Channels {
    Channels::new(rooms)
        .allow("open:*")
        .authorize("sync:*", |_ctx, _req| {
            sync_panic::<Result<(), Refused>>("a rule")
        })
        .authorize("async:*", |_ctx, _req| async {
            if true {
                panic!("a rule's future panicked");
            }
            Ok(())
        })
        .on_publish("open:*", |_ctx, msg: Inbound<String>| {
            let crash = msg.data == "crash";
            async move {
                if crash {
                    panic!("a publish handler panicked");
                }
                Ok(msg.data)
            }
        })
        .on_call(
            "sync",
            |_ctx, ()| -> std::future::Ready<Result<(), Refused>> { sync_panic("a call") },
        )
        .on_connect(|ctx| {
            if ctx.user_id() == Some("crash-connect") {
                return Box::pin(sync_panic("on_connect"))
                    as std::pin::Pin<Box<dyn Future<Output = Result<(), Refused>> + Send>>;
            }
            let crash_later = ctx.user_id() == Some("crash-connect-later");
            Box::pin(async move {
                if crash_later {
                    panic!("on_connect's future panicked");
                }
                Ok(())
            })
        })
        .on_disconnect(|ctx| {
            if ctx.user_id() == Some("crash-disconnect") {
                return Box::pin(sync_panic("on_disconnect"))
                    as std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;
            }
            Box::pin(async {})
        })
}

fn refused_code(result: Result<impl Sized, salvo_realtime::error::HubError>) -> String {
    match result {
        Err(salvo_realtime::error::HubError::Refused(r)) => r.code().to_owned(),
        Err(other) => format!("not a refusal: {other}"),
        Ok(_) => "<ok>".to_owned(),
    }
}

// Defect 9 at hub level: every handler's panic, in the call as well as in its future, is the
// documented `handler_failed`; a panicking `on_connect` leaves nothing joined, and a panicking
// `on_disconnect` still lets the connection leave its rooms.
#[tokio::test]
async fn a_handler_panicking_in_its_call_or_its_future_is_handler_failed() {
    use salvo_realtime::{Connection, Hub, Topic};
    let rooms = Rooms::new();
    let hub = panicking(rooms.clone());
    let user = |name: &str| Connection::new().authenticated(Identity::new(name));
    let topic = |name: &str| Topic::new(name).expect("valid topic");

    for name in ["sync:x", "async:x"] {
        let conn = user("ann").subscribe(topic(name), Position::Live);
        assert_eq!(
            refused_code(hub.join(&conn).await),
            "handler_failed",
            "{name}"
        );
    }
    for name in ["crash-connect", "crash-connect-later"] {
        let conn = user(name).subscribe(topic("open:lobby"), Position::Live);
        assert_eq!(
            refused_code(hub.join(&conn).await),
            "handler_failed",
            "{name}"
        );
    }
    assert_eq!(rooms.connection_count(), 0, "a refused join leaves nothing");
    assert!(rooms.presence("open:lobby").await.is_empty());

    let conn = user("crash-disconnect").subscribe(topic("open:lobby"), Position::Live);
    let sub = hub.join(&conn).await.expect("joins");
    for name in ["sync:y", "async:y"] {
        let added = hub
            .add_topic(&conn, salvo_realtime::hub::TopicRequest::new(topic(name)))
            .await;
        assert_eq!(refused_code(added), "handler_failed", "{name}");
    }
    let published = hub
        .publish_from(
            &conn,
            &topic("open:lobby"),
            salvo_realtime::Publication::new("crash"),
        )
        .await;
    assert_eq!(refused_code(published), "handler_failed");
    let called = hub.call(&conn, "sync", Value::Null).await;
    assert_eq!(refused_code(called), "handler_failed");
    assert!(rooms.history("open:lobby").is_empty(), "nothing published");
    assert_eq!(rooms.rooms_of(conn.id()).len(), 1, "only open:lobby joined");

    hub.leave(&conn, sub).await;
    assert_eq!(rooms.connection_count(), 0, "the rooms were left");
    assert!(rooms.presence("open:lobby").await.is_empty());
}

// Defect 9 over real sockets: a panicking rule answers its command `handler_failed` and the
// socket stays; a panicking `on_connect` is a 403 on both transports; a panicking
// `on_disconnect` still lets the connection leave the hub.
#[tokio::test]
async fn panicking_handlers_answer_as_documented_over_the_wire() {
    let rooms = Rooms::new();
    let server = serve(panicking(rooms.clone())).await;
    let mut ws = connect(&server, "user=crash-disconnect").await;
    for (i, name) in ["sync:x", "async:x"].iter().enumerate() {
        let r = command(&mut ws, json!({"type":"subscribe","ref":i,"topic":name})).await;
        assert_eq!(code(&r), "handler_failed", "{name}: {r}");
    }
    let r = command(&mut ws, json!({"type":"call","ref":5,"method":"sync"})).await;
    assert_eq!(code(&r), "handler_failed", "{r}");
    let r = command(
        &mut ws,
        json!({"type":"subscribe","ref":6,"topic":"open:a"}),
    )
    .await;
    assert_eq!(r["status"], "ok", "the socket is still up: {r}");
    assert_eq!(rooms.connection_count(), 1);
    drop(ws);
    assert!(
        eventually(|| rooms.connection_count() == 0).await,
        "the connection left the hub although on_disconnect panicked"
    );
    assert!(rooms.presence("open:a").await.is_empty());

    for user in ["crash-connect", "crash-connect-later"] {
        let status = match tokio_tungstenite::connect_async(
            server.ws(&format!("/ws?user={user}&topic=open:a")),
        )
        .await
        {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
            other => panic!("{user}: expected a refusal, got {:?}", other.map(|_| ())),
        };
        let sse = reqwest::get(server.http(&format!("/sse?user={user}&topic=open:a")))
            .await
            .expect("an answer");
        assert_eq!((status, sse.status().as_u16()), (403, 403), "{user}");
        assert!(sse.text().await.expect("body").contains("handler_failed"));
    }
    let status = match tokio_tungstenite::connect_async(server.ws("/ws?user=bo&topic=sync:z")).await
    {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    };
    assert_eq!(status, 403, "a connect-time topic whose rule panics");
    assert_eq!(rooms.connection_count(), 0, "nothing refused stays joined");
    server.stop().await;
}

// A plain client's frame goes to every room it is in, all or nothing: every room's publish
// handler runs first, and one refusal publishes it nowhere (it used to reach the rooms that
// came before the refusing one in HashMap order, while the sender was told it failed).
#[tokio::test]
async fn a_plain_frame_is_published_to_all_its_rooms_or_to_none() {
    use salvo_realtime::{Connection, Hub, Topic};
    let rooms = Rooms::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    // Whatever the order the rooms are visited in, the second handler call refuses.
    let hub = Channels::new(rooms.clone()).allow("p:*").on_publish(
        "p:*",
        move |_ctx, msg: Inbound<String>| {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 1 {
                    return Err(Refused::new("second_refuses", "no"));
                }
                Ok(msg.data)
            }
        },
    );
    let conn = Connection::new()
        .authenticated(Identity::new("pat"))
        .subscribe(Topic::new("p:a").expect("topic"), Position::Live)
        .subscribe(Topic::new("p:b").expect("topic"), Position::Live);
    let sub = hub.join(&conn).await.expect("joins");
    let result = hub
        .receive(&conn, salvo_realtime::Publication::new("hello"))
        .await;
    assert_eq!(refused_code(result), "second_refuses");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "both handlers ran");
    assert!(
        rooms.history("p:a").is_empty() && rooms.history("p:b").is_empty(),
        "a refused frame reached a room"
    );
    // Accepted everywhere: published to both.
    calls.store(2, Ordering::SeqCst);
    hub.receive(&conn, salvo_realtime::Publication::new("again"))
        .await
        .expect("accepted by both handlers");
    assert_eq!(
        (rooms.history("p:a").len(), rooms.history("p:b").len()),
        (1, 1)
    );
    hub.leave(&conn, sub).await;

    // Over the wire: a plain client in a moderated room and an open one.
    let server = serve(channels(rooms.clone())).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(
        server.ws("/ws?user=gus&topic=open:plain&topic=room:plain"),
    )
    .await
    .expect("connect without the channel protocol");
    let v = say_darn(&mut ws).await;
    assert_eq!(v["error"]["code"], "moderated");
    assert!(
        rooms.history("open:plain").is_empty(),
        "the open room didn't get what the moderated one refused"
    );
    drop(ws);
    server.stop().await;
}

/// Issue 18: a server-side unsubscribe was told with a message pushed to the connection's
/// 64-slot queue, and silently dropped when the queue was full. It now travels as the room
/// stream's last delivery.
#[tokio::test]
async fn a_server_side_unsubscribe_is_told_even_when_the_queue_is_full() {
    let hub = Channels::new(Rooms::new()).allow("r");
    let conn = Connection::new()
        .authenticated(Identity::new("ann"))
        .subscribe(Topic::new("r").expect("topic"), Position::Live);
    let mut sub = hub.join(&conn).await.expect("join");
    let _ = common::ready(&mut sub);
    for i in 0..64 {
        hub.send_to_connection(conn.id(), format!("p{i}"))
            .expect("room in the queue");
    }
    assert!(matches!(
        hub.send_to_connection(conn.id(), "one too many"),
        Err(HubError::QueueFull { .. })
    ));
    assert!(hub.unsubscribe(conn.id(), "r").await.expect("unsubscribe"));
    let got = common::messages(&common::ready(&mut sub));
    let told: Vec<_> = got
        .iter()
        .filter(|m| m.event().map(|e| e.as_str()) == Some("unsubscribed"))
        .map(|m| m.payload().as_text().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(told, [r#"{"topic":"r"}"#], "{got:?}");
    assert_eq!(got.len(), 65, "the 64 pushes and the notice");
}

/// An endpoint whose identities expire after `?ttl=<ms>` (as a token's `exp` would), with a
/// refresh check that accepts `renew:<user>:<ttl ms>` for the same user.
fn expiring(channels: Channels) -> WsEndpoint<Channels> {
    WsEndpoint::new(channels)
        .identify(|req, _| {
            let ttl = req.query::<u64>("ttl").unwrap_or(60_000);
            Ok(req
                .query::<String>("user")
                .map(|u| Identity::new(u.as_str()).expires_in(Duration::from_millis(ttl))))
        })
        .refresh(|token, _current| async move {
            let mut parts = token.split(':');
            match (
                parts.next(),
                parts.next(),
                parts.next().map(str::parse::<u64>),
            ) {
                (Some("renew"), Some(user), Some(Ok(ttl))) => {
                    Ok(Identity::new(user).expires_in(Duration::from_millis(ttl)))
                }
                (Some("boom"), ..) => panic!("a bug in the check"),
                _ => Err(salvo_realtime::Rejection::unauthorized("bad token")),
            }
        })
}

/// The close code the server sends, reading past everything else.
async fn closed_with(ws: &mut Client) -> Option<u16> {
    let read = async {
        while let Some(msg) = futures_util::StreamExt::next(ws).await {
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

/// An identity that expires unrefreshed closes the socket with 4001; the client was told when
/// at once (a `session` message on `$conn`).
#[tokio::test]
async fn an_expired_identity_closes_the_socket_with_4001() {
    let rooms = Rooms::new();
    let server =
        TestServer::start(Router::with_path("ws").goal(expiring(channels(rooms.clone())))).await;
    let mut ws = connect_channel(&server.ws("/ws?user=ann&ttl=300")).await;
    let first = next_json(&mut ws).await;
    assert_eq!(
        (&first["topic"], &first["event"]),
        (&json!("$conn"), &json!("session"))
    );
    let left = first["data"]["expires_in_ms"].as_u64().expect("a number");
    assert!(left <= 300, "{first}");
    assert_eq!(closed_with(&mut ws).await, Some(4001));
    assert!(eventually(|| rooms.connection_count() == 0).await);
    // An identity that has already expired is refused at the door.
    let mut req = server
        .ws("/ws?user=ann&ttl=0")
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "salvo-realtime.v1".parse().expect("header"),
    );
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 401);
        }
        other => panic!("expected 401, got {other:?}"),
    }
    server.stop().await;
}

/// A refresh with a good token moves the expiry: the socket outlives the first one. Bad tokens,
/// another user's, a check that panics: each refused with its code, the old expiry still holds.
#[tokio::test]
async fn a_refresh_renews_the_identity_without_reconnecting() {
    let server =
        TestServer::start(Router::with_path("ws").goal(expiring(channels(Rooms::new())))).await;
    let mut ws = connect_channel(&server.ws("/ws?user=ann&ttl=1500")).await;
    let refresh = |r: &str, token: &str| json!({"type": "refresh", "ref": r, "token": token});
    for (r, token, code) in [
        ("r1", "nonsense", "unauthorized"),
        ("r2", "renew:bob:60000", "forbidden"),
        ("r3", "boom", "handler_failed"),
    ] {
        send(&mut ws, refresh(r, token)).await;
        assert_eq!(code_of(&reply_to(&mut ws, r).await), code, "{token}");
    }
    send(&mut ws, json!({"type": "refresh", "ref": "r4"})).await;
    assert_eq!(code_of(&reply_to(&mut ws, "r4").await), "invalid_data");
    send(&mut ws, refresh("r5", "renew:ann:60000")).await;
    let renewed = reply_to(&mut ws, "r5").await;
    let left = renewed["data"]["expires_in_ms"].as_u64().expect("a number");
    assert!(left > 50_000, "{renewed}");
    // Past the first expiry, the socket still answers.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    send(
        &mut ws,
        json!({"type": "subscribe", "ref": "s", "topic": "room:a"}),
    )
    .await;
    assert_eq!(code_of(&reply_to(&mut ws, "s").await), "<ok>");
    server.stop().await;
}

/// Without a refresh check the command is `unsupported`; an endpoint's SSE stream ends when
/// its identity expires.
#[tokio::test]
async fn refresh_is_unsupported_without_a_check_and_sse_ends_at_expiry() {
    let hub = channels(Rooms::new());
    let ws = WsEndpoint::new(hub.clone())
        .identify(|req, _| Ok(req.query::<String>("user").map(Identity::new)));
    let sse = SseEndpoint::new(hub).identify(|req, _| {
        Ok(req
            .query::<String>("user")
            .map(|u| Identity::new(u).expires_in(Duration::from_millis(300))))
    });
    let router = Router::new()
        .push(Router::with_path("ws").goal(ws))
        .push(Router::with_path("sse").get(sse));
    let server = TestServer::start(router).await;
    let mut ws = connect_channel(&server.ws("/ws?user=ann")).await;
    send(&mut ws, json!({"type": "refresh", "ref": 1, "token": "t"})).await;
    let reply = next_json(&mut ws).await;
    assert_eq!(code_of(&reply), "unsupported", "{reply}");
    let resp = reqwest::get(server.http("/sse?user=ann&topic=room:a"))
        .await
        .expect("stream");
    let body = tokio::time::timeout(WAIT, resp.text())
        .await
        .expect("the stream ends by itself");
    assert!(body.expect("body").starts_with("retry:"));
    server.stop().await;
}

async fn reply_to(ws: &mut Client, reference: &str) -> Value {
    loop {
        let v = next_json(ws).await;
        if v["type"] == "reply" && v["ref"] == reference {
            return v;
        }
    }
}

fn code_of(reply: &Value) -> &str {
    code(reply)
}

/// With `event_frames`, a plain client's `{"event":..,"data":..}` frame is routed by its event
/// name like a channel-protocol publish; without it, the same frame is just text.
#[tokio::test]
async fn plain_event_frames_route_to_event_handlers_when_enabled() {
    use salvo_realtime::channel::Outcome;
    let game = || {
        Channels::new(Rooms::new())
            .allow("game:*")
            .on_event("game:*", "move", |_ctx, m: Inbound<Vec<i32>>| async move {
                Ok(Outcome::publish(m.data).event("moved"))
            })
            .on_publish("game:*", |_ctx, m: Inbound<String>| async move {
                Ok(format!("said: {}", m.data))
            })
    };
    let user =
        |req: &salvo::Request, _: &salvo::Depot| Ok(req.query::<String>("user").map(Identity::new));
    let on = WsEndpoint::new(game()).identify(user).event_frames(true);
    let off = WsEndpoint::new(game()).identify(user);
    let router = Router::new()
        .push(Router::with_path("on").goal(on))
        .push(Router::with_path("off").goal(off));
    let server = TestServer::start(router).await;
    let frame = r#"{"event":"move","data":[1,0]}"#;
    for (path, event, data) in [
        ("/on", json!("moved"), json!([1, 0])),
        ("/off", Value::Null, json!(format!("said: {frame}"))),
    ] {
        let url = server.ws(&format!("{path}?user=ann&topic=game:1"));
        let (mut ann, _) = tokio_tungstenite::connect_async(&url).await.expect("ann");
        let (mut ben, _) = tokio_tungstenite::connect_async(url.replace("ann", "ben"))
            .await
            .expect("ben");
        ann.send(Message::text(frame)).await.expect("send");
        let m = loop {
            let v = next_json(&mut ben).await;
            let presence = v["event"]
                .as_str()
                .is_some_and(|e| e.starts_with("presence."));
            if v["type"] == "message" && !presence {
                break v;
            }
        };
        assert_eq!(
            (m["event"].clone(), m["data"].clone()),
            (event, data),
            "{path}"
        );
        // A bad event name in an event frame is refused, not passed as text.
        if path == "/on" {
            ann.send(Message::text(r#"{"event":"","data":1}"#))
                .await
                .expect("send");
            let error = loop {
                let v = next_json(&mut ann).await;
                if v["type"] == "error" {
                    break v;
                }
            };
            assert_eq!(error["error"]["code"], "invalid_event");
        }
    }
    server.stop().await;
}
