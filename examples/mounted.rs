//! Channels mounted in a Salvo app beside its own middleware: an authentication hoop that puts
//! the user in the depot (both endpoints read the identity from there), CORS and the endpoints'
//! origin check from one list, and compression on the SSE route. One of the README's measured
//! apps: `tests/apps.rs` runs it and checks its line count.
//!
//! `cargo run --example mounted`, then `curl 'http://127.0.0.1:8080/events/room:a?token=t-ann'`
//! (the event stream) or open `ws://127.0.0.1:8080/ws?token=t-ann` from a page served at
//! `https://app.example.com`.
use salvo::compression::Compression;
use salvo::cors::Cors;
use salvo::prelude::*;
use salvo_realtime::channel::Channels;
use salvo_realtime::{Identity, Rejection, Rooms, sse::SseEndpoint, ws::WsEndpoint};

/// The origin our pages come from: CORS and both endpoints' origin checks share it.
const ORIGIN: &str = "https://app.example.com";

#[handler]
async fn auth(req: &mut Request, depot: &mut Depot, res: &mut Response, ctrl: &mut FlowCtrl) {
    // A real app checks a session cookie or a signed token here.
    if req.query::<String>("token").as_deref() == Some("t-ann") {
        depot.insert("user", "ann".to_owned());
    } else {
        res.status_code(StatusCode::UNAUTHORIZED);
        ctrl.skip_rest();
    }
}

fn user(_: &Request, depot: &Depot) -> Result<Option<Identity>, Rejection> {
    Ok(depot.get::<String>("user").ok().map(Identity::new))
}

#[handler]
async fn hello(depot: &mut Depot) -> String {
    let user = depot.get::<String>("user").map_or("?", String::as_str);
    format!("hello {user}")
}

pub(crate) fn app() -> Router {
    let hub = Channels::new(Rooms::new()).allow("room:*");
    let ws = WsEndpoint::new(hub.clone()).identify(user);
    let sse = SseEndpoint::new(hub).identify(user);
    let ws = Router::with_path("ws").goal(ws.allowed_origins(&[ORIGIN]));
    let sse = Router::with_path("events/{topic}").get(sse.allowed_origins(&[ORIGIN]));
    Router::new()
        .hoop(Cors::new().allow_origin(ORIGIN).into_handler())
        .hoop(auth)
        .push(Router::with_path("hello").get(hello))
        .push(ws)
        .push(sse.hoop(Compression::new()))
}

#[tokio::main]
async fn main() {
    let acceptor = TcpListener::new("127.0.0.1:8080").bind().await;
    Server::new(acceptor).serve(app()).await;
}
