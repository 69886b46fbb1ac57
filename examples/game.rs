//! Server-authoritative tic-tac-toe on one WebSocket (`Channels`): players subscribe to the room
//! `game:<id>`, a move is a `call("move", {game, cell})` the server checks (your turn? cell free?
//! game over?) against the board it keeps, and every new board is broadcast to the room. Run
//! `cargo run --example game` and open the printed URL in two tabs (`BIND=host:port` to listen
//! elsewhere; Ctrl-C drains). The page is `examples/game.html`.
use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use salvo::conn::Acceptor;
use salvo::prelude::*;
use salvo_realtime::backend::Local;
use salvo_realtime::channel::{Channels, Ctx, Inbound};
use salvo_realtime::error::Refused;
use salvo_realtime::{Drain, Hub, Identity, Publication, Rejection, Rooms};
use salvo_realtime::{client::ClientScript, ws::WsEndpoint};
use serde::{Deserialize, Serialize};

const LINES: [[usize; 3]; 8] = [
    [0, 1, 2],
    [3, 4, 5],
    [6, 7, 8],
    [0, 3, 6],
    [1, 4, 7],
    [2, 5, 8],
    [0, 4, 8],
    [2, 4, 6],
];
const MARKS: [char; 2] = ['X', 'O'];

/// One game as the server keeps it, and as the room sees it after every change (`version`
/// grows with each, so a page can ignore a board older than the one it shows).
#[derive(Clone, Default, Serialize)]
pub(crate) struct Game {
    board: [Option<char>; 9],
    /// Who plays X and O: the first two players to move.
    players: [Option<String>; 2],
    /// Whose turn: 0 (X) or 1 (O).
    next: usize,
    /// `"X"`, `"O"` or `"draw"` once the game is over.
    result: Option<String>,
    version: u64,
}

impl Game {
    fn play(&mut self, user: &str, cell: usize) -> Result<(), Refused> {
        if self.result.is_some() {
            return Err(Refused::new("game_over", "this game is over"));
        }
        let seat = self.players.iter().position(|p| p.as_deref() == Some(user));
        let seat = match seat {
            Some(seat) => seat,
            None if self.players[self.next].is_none() => {
                self.players[self.next] = Some(user.to_owned());
                self.next
            }
            None if self.players.iter().all(Option::is_some) => {
                return Err(Refused::new("not_a_player", "two others are playing"));
            }
            None => return Err(Refused::new("not_your_turn", "wait for the other player")),
        };
        if seat != self.next {
            return Err(Refused::new("not_your_turn", "wait for the other player"));
        }
        match self.board.get(cell) {
            None => return Err(Refused::new("bad_cell", "cells are 0 to 8")),
            Some(Some(_)) => return Err(Refused::new("cell_taken", "that cell is taken")),
            Some(None) => self.board[cell] = Some(MARKS[seat]),
        }
        let won = LINES
            .iter()
            .any(|l| l.iter().all(|&c| self.board[c] == Some(MARKS[seat])));
        if won {
            self.result = Some(MARKS[seat].to_string());
        } else if self.board.iter().all(Option::is_some) {
            self.result = Some("draw".to_owned());
        }
        self.next = 1 - seat;
        self.version += 1;
        Ok(())
    }
}

#[derive(Deserialize)]
struct Move {
    game: String,
    cell: usize,
}

#[derive(Deserialize)]
struct Restart {
    game: String,
}

/// Every game, by id: the handlers' shared state (`Channels::with_state`).
pub(crate) type Games = Mutex<HashMap<String, Game>>;

/// Changes game `id` with `change` (under the lock, never held across an await), then tells
/// its room. Only players in the room may act.
async fn update(
    ctx: &Ctx<Local, Games>,
    id: &str,
    change: impl FnOnce(&mut Game) -> Result<(), Refused>,
) -> Result<Game, Refused> {
    let topic = format!("game:{id}");
    let rooms = ctx.channels().rooms().rooms_of(ctx.connection_id());
    if !rooms.iter().any(|t| t.as_str() == topic) {
        return Err(Refused::new("not_subscribed", "join the game's room first"));
    }
    let game = {
        let mut games = ctx.state().lock();
        let game = games.entry(id.to_owned()).or_default();
        change(game)?;
        game.clone()
    };
    ctx.channels()
        .broadcast(&topic, Publication::json(&game))
        .await?;
    Ok(game)
}

/// Game rooms for everyone; only the server writes to them.
pub(crate) fn channels(rooms: Rooms) -> Channels<Local, Games> {
    Channels::with_state(rooms, Games::default())
        .allow("game:*")
        .on_publish("game:*", |_, _: Inbound<serde_json::Value>| async {
            Err::<(), _>(Refused::new("read_only", "moves go through call(\"move\")"))
        })
        .on_call("move", |ctx, m: Move| async move {
            let user = ctx.user_id().unwrap_or_default().to_owned();
            update(&ctx, &m.game, |game| game.play(&user, m.cell)).await
        })
        .on_call("restart", |ctx, r: Restart| async move {
            update(&ctx, &r.game, |game| match game.result {
                Some(_) => {
                    let (players, version) = (game.players.clone(), game.version + 1);
                    *game = Game {
                        players,
                        version,
                        ..Game::default()
                    };
                    Ok(())
                }
                None => Err(Refused::new("not_over", "finish this game first")),
            })
            .await
        })
}

#[handler]
async fn page(res: &mut Response) {
    res.render(Text::Html(include_str!("game.html")));
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
    println!("game: open http://{addr}/ (Ctrl-C stops)");
    let (drain, server) = (Drain::new(), Server::new(acceptor));
    let (handle, closing) = (server.handle(), drain.clone());
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        closing.close_all(Duration::from_secs(5)).await; // sockets get 1001 "going away"
        handle.stop_graceful(Duration::from_secs(5));
    });
    server.serve(router(channels(Rooms::new()), drain)).await;
}

/// The game's rules through its channels, in memory with the crate's test kit (`cargo test
/// --example game`; CI runs them with `cargo test`).
#[cfg(test)]
mod tests {
    use salvo_realtime::testing::TestClient;
    use serde_json::{Value, json};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn moves_take_turns_and_every_board_reaches_the_room() {
        let games = channels(Rooms::new());
        let mut x = TestClient::connect_as(&games, Identity::new("x"))
            .await
            .expect("x");
        let mut o = TestClient::connect_as(&games, Identity::new("o"))
            .await
            .expect("o");
        for c in [&mut x, &mut o] {
            c.subscribe("game:1").await.expect("room");
        }
        let board = x
            .call("move", json!({"game": "1", "cell": 4}))
            .await
            .expect("x plays");
        assert_eq!(board["board"][4], "X");
        let refused = x.call("move", json!({"game": "1", "cell": 0})).await;
        assert_eq!(refused.expect_err("o's turn").code(), "not_your_turn");
        let refused = o.call("move", json!({"game": "1", "cell": 4})).await;
        assert_eq!(refused.expect_err("taken").code(), "cell_taken");
        let seen: Value = o.recv_message().await.json().expect("json");
        assert_eq!(
            (seen["board"][4].clone(), seen["version"].clone()),
            (json!("X"), json!(1))
        );
        let refused = o.publish("game:1", json!("cheat")).await;
        assert_eq!(refused.expect_err("read only").code(), "read_only");
    }
}
