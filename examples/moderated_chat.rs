//! A moderated chat on Channels: a message with a banned word is refused (the sender gets the
//! `moderated` code), every other one is stamped with the server's time and the sender's name.
//! One of the README's measured apps: `tests/apps.rs` runs it and checks its line count.
//!
//! `cargo run --example moderated_chat`, then open a channel-protocol socket to
//! `ws://127.0.0.1:8080/ws?name=ann`, subscribe to `room:lobby` and publish to it.
use salvo::prelude::*;
use salvo_realtime::channel::{Channels, Inbound};
use salvo_realtime::{Identity, Rooms, error::Refused, ws::WsEndpoint};
use serde_json::json;

pub(crate) fn app() -> Router {
    let chat = Channels::new(Rooms::new()).allow("room:*");
    let chat = chat.on_publish("room:*", |ctx, msg: Inbound<String>| async move {
        Refused::ensure(!msg.data.contains("darn"), "moderated", "keep it civil")?;
        Ok(json!({ "text": msg.data, "from": ctx.user_id(), "at": msg.received_ms }))
    });
    let ws =
        WsEndpoint::new(chat).identify(|req, _| Ok(req.query::<String>("name").map(Identity::new)));
    Router::with_path("ws").goal(ws)
}

#[tokio::main]
async fn main() {
    let acceptor = TcpListener::new("127.0.0.1:8080").bind().await;
    Server::new(acceptor).serve(app()).await;
}
