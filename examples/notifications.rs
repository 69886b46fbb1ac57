//! A notification feed over Server-Sent Events: `POST /publish` (body = the text, optional
//! `?event=<name>`) reaches every open page at once, and a page that loses its stream resumes
//! with `Last-Event-ID`, missing nothing and showing nothing twice.
//!
//! Run `cargo run --example notifications`, open the printed URL, and publish from the page or
//! with `curl -d 'Deploy finished' 'http://127.0.0.1:8080/publish?event=alert'` (`BIND=host:port`
//! to listen elsewhere).
use std::time::Duration;

use salvo::conn::Acceptor;
use salvo::prelude::*;
use salvo_realtime::error::HubError;
use salvo_realtime::{
    Drain, Hub, PubSub, Publication, Rejection, Topic, client::ClientScript, sse::SseEndpoint,
};

const FEED: &str = "notifications";

#[handler]
async fn page(res: &mut Response) {
    res.render(Text::Html(include_str!("notifications.html")));
}

/// `POST /publish`: publishes the body as text to the feed, answers with the message id; a
/// body over the hub's 64 KiB payload limit (or Salvo's request limit) gets 413.
struct Publish(PubSub);

#[async_trait]
impl Handler for Publish {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let text = match req.payload().await {
            Ok(body) => String::from_utf8_lossy(body).into_owned(),
            Err(_) => {
                res.render(StatusError::payload_too_large().brief("body over 64 KiB"));
                return;
            }
        };
        let publication = match req.query::<String>("event") {
            Some(event) => Publication::new(text)
                .event(&event)
                .map_err(|e| e.to_string()),
            None => Ok(Publication::new(text)),
        };
        match publication.map(|p| self.0.publish(FEED, p)) {
            Ok(publishing) => match publishing.await {
                Ok(id) => res.render(id.to_string()),
                Err(HubError::PayloadTooLarge { .. }) => {
                    res.render(StatusError::payload_too_large().brief("body over 64 KiB"));
                }
                Err(e) => res.render(StatusError::bad_request().brief(e.to_string())),
            },
            Err(e) => res.render(StatusError::bad_request().brief(e)),
        }
    }
}

/// The page at `/`, the client at `/realtime.js`, the feed at `/events` (served from
/// `subscribers`: `hub` itself, or a wrapper of it) and `POST /publish`.
pub(crate) fn router(hub: PubSub, subscribers: impl Hub, drain: Drain) -> Router {
    let feed = |_: &Request, _: &Depot| {
        Topic::new(FEED)
            .map(|t| vec![t])
            .map_err(|e| Rejection::bad_request(e.to_string()))
    };
    let events = SseEndpoint::new(subscribers).topics(feed).drain(drain);
    Router::new()
        .get(page)
        .push(Router::with_path("realtime.js").get(ClientScript))
        .push(Router::with_path("events").get(events))
        .push(Router::with_path("publish").post(Publish(hub)))
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
