//! Chat rooms over WebSocket: presence, recent history on joining, reconnect and resume without
//! loss or duplicates, and a plain notice when a server restart lost earlier messages.
//!
//! Run `cargo run --example chat` and open the printed URL in two tabs (`BIND=host:port` to
//! listen elsewhere). The page is `examples/chat.html`; it uses the client script at
//! `/realtime.js`.
use std::time::Duration;

use salvo::conn::Acceptor;
use salvo::prelude::*;
use salvo_realtime::{
    Drain, Hub, Identity, Rejection, Rooms, client::ClientScript, ws::WsEndpoint,
};

#[handler]
async fn page(res: &mut Response) {
    res.render(Text::Html(include_str!("chat.html")));
}

/// The page at `/`, the client at `/realtime.js`, chat at `/ws?room=<room>&name=<nickname>`.
pub(crate) fn router(hub: impl Hub, drain: Drain) -> Router {
    let ws = WsEndpoint::new(hub)
        .drain(drain)
        .topic_param("room")
        .identify(|req, _| {
            let name = req.query::<String>("name").unwrap_or_default();
            match name.trim().chars().count() {
                0 => Err(Rejection::unauthorized("pick a nickname")),
                1..=24 => Ok(Some(Identity::new(name.trim()))),
                _ => Err(Rejection::bad_request(
                    "nickname too long (24 characters at most)",
                )),
            }
        });
    let script = Router::with_path("realtime.js").get(ClientScript);
    Router::new()
        .get(page)
        .push(script)
        .push(Router::with_path("ws").goal(ws))
}

#[tokio::main]
async fn main() {
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let acceptor = TcpListener::new(bind).bind().await;
    let addr = acceptor.holdings()[0]
        .local_addr
        .clone()
        .into_std()
        .expect("a TCP address");
    println!("chat: open http://{addr}/ (Ctrl-C stops)");
    let (drain, server) = (Drain::new(), Server::new(acceptor));
    let (handle, closing) = (server.handle(), drain.clone());
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        closing.close_all(Duration::from_secs(5)).await; // sockets get 1001 "going away"
        handle.stop_graceful(Duration::from_secs(5));
    });
    server.serve(router(Rooms::new(), drain)).await;
}
