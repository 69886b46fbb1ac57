//! Chat rooms on one WebSocket (`Channels`): rooms joined and left without reconnecting, a
//! banned word refused, messages stamped by the server, `staff*` rooms for "boss" only, and
//! every room resumed after a reconnect. Run `cargo run --example chat` and open the printed
//! URL in two tabs (`BIND=host:port` to listen elsewhere; Ctrl-C drains). The page is
//! `examples/chat.html`; it uses the client script at `/realtime.js`.
use std::time::Duration;

use salvo::conn::Acceptor;
use salvo::prelude::*;
use salvo_realtime::backend::Backend;
use salvo_realtime::channel::{Channels, Inbound};
use salvo_realtime::error::Refused;
use salvo_realtime::{Drain, Hub, Identity, Rejection, Rooms};
use salvo_realtime::{client::ClientScript, ws::WsEndpoint};
use serde_json::json;

#[derive(serde::Deserialize)]
struct Said {
    text: String,
}

/// Who may join which room, and what is published: the server's name and time, not the client's.
pub(crate) fn channels<B: Backend>(rooms: Rooms<B>) -> Channels<B> {
    Channels::new(rooms)
        .authorize("staff*", |ctx, _| async move {
            match ctx.user_id() {
                Some("boss") => Ok(()),
                _ => Err(Refused::forbidden("staff rooms are for boss")),
            }
        })
        .allow("*")
        .on_publish("*", |ctx, msg: Inbound<Said>| async move {
            let civil = !msg.data.text.to_lowercase().contains("darn");
            Refused::ensure(civil, "moderated", "keep it civil")?;
            let at = msg.received_ms;
            Ok(json!({ "text": msg.data.text, "from": ctx.user_id(), "at": at }))
        })
}

#[handler]
async fn page(res: &mut Response) {
    res.render(Text::Html(include_str!("chat.html")));
}

/// The page at `/`, the client at `/realtime.js`, the socket at `/ws?name=<nickname>`.
pub(crate) fn router(hub: impl Hub, drain: Drain) -> Router {
    let ws = WsEndpoint::new(hub).drain(drain).identify(|req, _| {
        let name = req.query::<String>("name").unwrap_or_default();
        match name.trim().chars().count() {
            0 => Err(Rejection::unauthorized("pick a nickname")),
            1..=24 => Ok(Some(Identity::new(name.trim()))),
            _ => Err(Rejection::bad_request("nickname over 24 characters")),
        }
    });
    let script = Router::with_path("realtime.js").get(ClientScript);
    let socket = Router::with_path("ws").goal(ws);
    Router::new().get(page).push(script).push(socket)
}

#[tokio::main]
async fn main() {
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let acceptor = TcpListener::new(bind).bind().await;
    let addr = acceptor.holdings()[0].local_addr.clone();
    let addr = addr.into_std().expect("a TCP address");
    println!("chat: open http://{addr}/ (Ctrl-C stops)");
    let (drain, server) = (Drain::new(), Server::new(acceptor));
    let (handle, closing) = (server.handle(), drain.clone());
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        closing.close_all(Duration::from_secs(5)).await; // sockets get 1001 "going away"
        handle.stop_graceful(Duration::from_secs(5));
    });
    server.serve(router(channels(Rooms::new()), drain)).await;
}

/// The rules above, tested in memory with the crate's test kit (`cargo test --example chat`;
/// CI runs them with `cargo test`).
#[cfg(test)]
mod tests {
    use salvo_realtime::testing::TestClient;
    use serde_json::{Value, json};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_banned_word_is_refused_and_the_rest_stamped_by_the_server() {
        let chat = channels(Rooms::new());
        let mut ann = TestClient::connect_as(&chat, Identity::new("ann"))
            .await
            .expect("ann");
        let mut ben = TestClient::connect_as(&chat, Identity::new("ben"))
            .await
            .expect("ben");
        for c in [&mut ann, &mut ben] {
            c.subscribe("lobby").await.expect("lobby");
        }
        let refused = ann.publish("lobby", json!({"text": "oh DARN"})).await;
        assert_eq!(refused.expect_err("moderated").code(), "moderated");
        ann.publish("lobby", json!({"text": "hi", "from": "mallory"}))
            .await
            .expect("sent");
        let said: Value = ben.recv_message().await.json().expect("json");
        assert_eq!(
            (&said["text"], &said["from"]),
            (&json!("hi"), &json!("ann"))
        );
        assert!(said["at"].as_u64().is_some(), "the server's time: {said}");
    }

    #[tokio::test(start_paused = true)]
    async fn staff_rooms_are_for_boss_only() {
        let chat = channels(Rooms::new());
        let mut boss = TestClient::connect_as(&chat, Identity::new("boss"))
            .await
            .expect("boss");
        let mut ann = TestClient::connect_as(&chat, Identity::new("ann"))
            .await
            .expect("ann");
        boss.subscribe("staff-room").await.expect("boss is staff");
        let refused = ann.subscribe("staff-room").await.expect_err("not staff");
        assert_eq!(refused.code(), "forbidden");
    }
}
