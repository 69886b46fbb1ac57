//! A movement game on Channels: the server keeps each player's position in its connection's
//! assigns, refuses illegal moves (more than one step, or off the 10x10 board), and broadcasts
//! the new position under the event name `moved`. One of the README's measured apps:
//! `tests/apps.rs` runs it and checks its line count.
//!
//! `cargo run --example movement_game`, then open channel-protocol sockets to
//! `ws://127.0.0.1:8080/ws?name=ann`, subscribe to `game:1` and publish `[1,0]` (a step: dx,
//! dy) under the event `move`.
use salvo::prelude::*;
use salvo_realtime::channel::{Channels, Inbound, Outcome};
use salvo_realtime::{Identity, Rooms, error::Refused, ws::WsEndpoint};
use serde_json::json;

pub(crate) fn app() -> Router {
    let game = Channels::new(Rooms::new()).allow("game:*");
    let game = game.on_event(
        "game:*",
        "move",
        |ctx, msg: Inbound<(i32, i32)>| async move {
            let ((dx, dy), (x, y)) = (msg.data, ctx.assigns().get().unwrap_or((0, 0)));
            let to = (x + dx, y + dy);
            let legal =
                dx.abs() + dy.abs() == 1 && to.0.clamp(0, 9) == to.0 && to.1.clamp(0, 9) == to.1;
            Refused::ensure(legal, "illegal_move", "one step, on the 10x10 board")?;
            ctx.assigns().insert(to);
            Ok(Outcome::publish(json!({ "player": ctx.user_id(), "at": to })).event("moved"))
        },
    );
    let ws =
        WsEndpoint::new(game).identify(|req, _| Ok(req.query::<String>("name").map(Identity::new)));
    Router::with_path("ws").goal(ws)
}

#[tokio::main]
async fn main() {
    let acceptor = TcpListener::new("127.0.0.1:8080").bind().await;
    Server::new(acceptor).serve(app()).await;
}
