//! A live monitoring page: both transports together. WebSocket clients chat in a room (the
//! page's "add clients" button opens some, each sending a message every 200 ms) while the
//! hub's counts (connections, messages in and out) stream to the page over SSE and are drawn
//! as a live chart.
//!
//! Run `cargo run --example dashboard` and open the printed URL (`BIND=host:port` to listen
//! elsewhere). The page is `examples/dashboard.html`.
use std::time::Duration;

use futures_util::StreamExt;
use salvo::conn::Acceptor;
use salvo::prelude::*;
use salvo_realtime::{
    Counted, Drain, HubConfig, PubSub, Publication, Rooms, Topic, sse::SseEndpoint, ws::WsEndpoint,
};

#[handler]
async fn page(res: &mut Response) {
    res.render(Text::Html(include_str!("dashboard.html")));
}

/// The page at `/`, chat traffic at `/ws?topic=<room>`, the hub's counts as SSE at `/stats`.
pub(crate) fn router(drain: Drain) -> Router {
    let rooms = Counted::new(Rooms::new());
    // Snapshots are published to a topic of their own, which the SSE endpoint streams.
    let stats = PubSub::with_config(HubConfig::new().history(1));
    let mut snapshots = rooms.watch(Duration::from_millis(500));
    let publisher = stats.clone();
    tokio::spawn(async move {
        while let Some(snapshot) = snapshots.next().await {
            if let Ok(p) = Publication::json(&snapshot) {
                let _ = publisher.publish("stats", p).await;
            }
        }
    });
    let stats = SseEndpoint::new(stats)
        .drain(drain.clone())
        .topics(|_, _| Ok(vec![Topic::new("stats").expect("a valid name")]));
    Router::new()
        .get(page)
        .push(Router::with_path("ws").goal(WsEndpoint::new(rooms).drain(drain)))
        .push(Router::with_path("stats").get(stats))
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
    println!("dashboard: open http://{addr}/ (Ctrl-C stops)");
    let (drain, server) = (Drain::new(), Server::new(acceptor));
    let (handle, closing) = (server.handle(), drain.clone());
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        closing.close_all(Duration::from_secs(5)).await;
        handle.stop_graceful(Duration::from_secs(5));
    });
    server.serve(router(drain)).await;
}
