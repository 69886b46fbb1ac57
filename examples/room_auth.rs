//! Per-room authorization from an async session lookup: `session` (a database query in a real
//! app) gives the user and their teams; `team:<name>` rooms admit that team's members only, whether
//! asked for at connect time or with a `subscribe` command (the same rules hold on the SSE
//! endpoint: see the `mounted` example). One of the README's measured apps: `tests/apps.rs`
//! runs it and checks its line count.
//!
//! `cargo run --example room_auth`, then connect to `ws://127.0.0.1:8080/ws?token=t-ann` (a
//! channel-protocol socket) and subscribe to `team:red`.
use salvo::prelude::*;
use salvo_realtime::ws::WsEndpoint;
use salvo_realtime::{Identity, Rejection, Rooms, channel::Channels, error::Refused};
use serde_json::json;

async fn session(token: Option<String>) -> Result<Option<Identity>, Rejection> {
    match token.as_deref() {
        Some("t-ann") => Ok(Some(Identity::new("ann").data(json!({ "teams": ["red"] })))),
        _ => Err(Rejection::unauthorized("no session")),
    }
}

pub(crate) fn app() -> Router {
    let hub = Channels::new(Rooms::new()).authorize("team:*", |ctx, req| async move {
        let teams = ctx.user_data().and_then(|d| d["teams"].as_array());
        let member = teams.is_some_and(|teams| teams.iter().any(|t| *t == *req.wildcard));
        Refused::ensure(member, "forbidden", "not your team")
    });
    let ws = WsEndpoint::new(hub).identify_async(|req, _| session(req.query("token")));
    Router::with_path("ws").goal(ws)
}

#[tokio::main]
async fn main() {
    let acceptor = TcpListener::new("127.0.0.1:8080").bind().await;
    Server::new(acceptor).serve(app()).await;
}
