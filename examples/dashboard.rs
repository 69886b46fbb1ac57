//! A live monitoring page: both transports together, and the crate's operator metrics. WebSocket
//! clients chat in a room (the page's "add clients" button opens some, each sending a message
//! every 200 ms) while the hub's counts (connections, messages in and out) stream to the page
//! over SSE and are drawn as live charts; `/metrics` serves the `metrics` feature's counters in
//! the Prometheus text format, as a scraper would read them.
//!
//! Run `cargo run --features metrics --example dashboard` and open the printed URL
//! (`BIND=host:port` to listen elsewhere), then `curl http://127.0.0.1:8080/metrics`. The page
//! is `examples/dashboard.html`.
use std::sync::OnceLock;
use std::time::Duration;

use futures_util::StreamExt;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use salvo::conn::Acceptor;
use salvo::prelude::*;
use salvo_realtime::{
    Counted, Drain, HubConfig, PubSub, Publication, Rooms, Topic, sse::SseEndpoint, ws::WsEndpoint,
};

#[handler]
async fn page(res: &mut Response) {
    res.render(Text::Html(include_str!("dashboard.html")));
}

/// Renders the process's metrics in the Prometheus text format on every scrape.
struct Scrape(PrometheusHandle);

#[async_trait]
impl Handler for Scrape {
    async fn handle(&self, _: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        res.render(Text::Plain(self.0.render()));
    }
}

/// The process's Prometheus recorder, installed as the global `metrics` recorder the first
/// time. No HTTP listener of the exporter's own: the Salvo router serves `/metrics`.
fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Buckets, so the latency renders as a Prometheus histogram (a summary otherwise).
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("salvo_realtime_publish_to_write_seconds".into()),
                    &[
                        0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
                    ],
                )
                .expect("non-empty buckets")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                eprintln!("dashboard: another metrics recorder is installed; /metrics stays empty");
            }
            // Without the exporter's own listener, nothing else drains old histogram samples.
            let upkeep = handle.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(5));
                loop {
                    every.tick().await;
                    upkeep.run_upkeep();
                }
            });
            handle
        })
        .clone()
}

/// The page at `/`, chat traffic at `/ws?topic=<room>`, the hub's counts as SSE at `/stats`,
/// the metrics at `/metrics`.
pub(crate) fn router(drain: Drain) -> Router {
    let rooms = Counted::new(Rooms::new());
    // Snapshots are published to a topic of their own, which the SSE endpoint streams.
    let stats = PubSub::with_config(HubConfig::new().history(1));
    let mut snapshots = rooms.watch(Duration::from_millis(500));
    let publisher = stats.clone();
    tokio::spawn(async move {
        while let Some(snapshot) = snapshots.next().await {
            let _ = publisher
                .publish("stats", Publication::json(&snapshot))
                .await;
        }
    });
    let stats = SseEndpoint::new(stats)
        .name("stats")
        .drain(drain.clone())
        .topics(|_, _| Ok(vec![Topic::new("stats").expect("a valid name")]));
    let chat = WsEndpoint::new(rooms).name("chat").drain(drain);
    Router::new()
        .get(page)
        .push(Router::with_path("ws").goal(chat))
        .push(Router::with_path("stats").get(stats))
        .push(Router::with_path("metrics").get(Scrape(prometheus())))
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
    println!("dashboard: open http://{addr}/ , metrics at http://{addr}/metrics (Ctrl-C stops)");
    let (drain, server) = (Drain::new(), Server::new(acceptor));
    let (handle, closing) = (server.handle(), drain.clone());
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        closing.close_all(Duration::from_secs(5)).await;
        handle.stop_graceful(Duration::from_secs(5));
    });
    server.serve(router(drain)).await;
}
