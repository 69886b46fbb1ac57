//! A notification feed over Server-Sent Events: `POST /publish` (body = the text, optional
//! `?event=<name>`) reaches every open page at once, and a page that loses its stream resumes
//! with `Last-Event-ID`, missing nothing and showing nothing twice. Publishing is the crate's
//! [`Publish`] handler: a body over 64 KiB is 413, a bad event name 400, the answer
//! `{"id":..,"topic":..}`.
//!
//! Run `cargo run --example notifications`, open the printed URL, and publish from the page or
//! with `curl -H 'content-type: text/plain' -d 'Deploy finished'
//! 'http://127.0.0.1:8080/publish?event=alert'` (`BIND=host:port` to listen elsewhere).
use std::time::Duration;

use salvo::conn::Acceptor;
use salvo::prelude::*;
use salvo_realtime::publish::Publish;
use salvo_realtime::{Drain, Hub, PubSub, Topic, client::ClientScript, sse::SseEndpoint};

const FEED: &str = "notifications";

#[handler]
async fn page(res: &mut Response) {
    res.render(Text::Html(include_str!("notifications.html")));
}

/// The page at `/`, the client at `/realtime.js`, the feed at `/events` (served from
/// `subscribers`: `hub` itself, or a wrapper of it) and `POST /publish` (to `hub`).
pub(crate) fn router(hub: PubSub, subscribers: impl Hub, drain: Drain) -> Router {
    let topic = Topic::new(FEED).expect("a valid topic name");
    let feed = vec![topic.clone()];
    let events = SseEndpoint::new(subscribers).topics(move |_, _| Ok(feed.clone()));
    // A local demo: anyone may publish. In an app: behind your own auth, or `.authorize(..)`.
    let publish = Publish::new(hub).topic(topic).allow_anyone();
    Router::new()
        .get(page)
        .push(Router::with_path("realtime.js").get(ClientScript))
        .push(Router::with_path("events").get(events.drain(drain)))
        .push(Router::with_path("publish").post(publish))
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
    println!("notifications: open http://{addr}/ (Ctrl-C stops)");
    let (drain, server, hub) = (Drain::new(), Server::new(acceptor), PubSub::new());
    let (handle, closing) = (server.handle(), drain.clone());
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        closing.close_all(Duration::from_secs(5)).await; // streams end cleanly
        handle.stop_graceful(Duration::from_secs(5));
    });
    server.serve(router(hub.clone(), hub, drain)).await;
}
