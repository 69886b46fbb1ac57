//! Real-time building blocks for [Salvo]: a transport-agnostic hub with resumable history, and
//! WebSocket and Server-Sent-Events endpoints that turn any hub into a Salvo handler.
//!
//! | module or type | what it is |
//! |---|---|
//! | [`Hub`], [`PubSub`], [`Rooms`], [`Counted`] | the hub core: what connections attach to; no Salvo or HTTP in it |
//! | [`channel::Channels`] | rooms with server handlers: per-topic authorization, publish handlers, request/reply, connect hooks, server-initiated sends |
//! | [`ws::WsEndpoint`] | a WebSocket endpoint over any hub: identity before upgrade, origin checks, limits, heartbeat, rate limit, slow-consumer policy, resume |
//! | [`sse::SseEndpoint`] | an SSE endpoint over any hub: ids on every event, `Last-Event-ID` resume, keep-alive |
//! | [`Drain`], [`Rejection`] | graceful shutdown and request refusal, shared by both endpoints |
//! | [`publish::Publish`] | publishing over HTTP: a `POST` handler that publishes its body to a topic of any hub, closed until you authorize |
//! | [`client::ClientScript`] | the browser client (reconnect, resume, dedup) served at a path you pick |
//! | [`backend`] | where ids, history and presence live: in memory ([`backend::Local`]) or remote (`redis` feature) |
//!
//! # The hub core
//!
//! A [`Hub`] is what a connection attaches to. The crate ships three:
//!
//! * [`PubSub`]: named topics on tokio broadcast channels, each with a bounded history;
//! * [`Rooms`]: membership, per-user presence with first-join / last-leave events, broadcast to
//!   a room or to all but the sender, and direct messages to all of one user's connections;
//! * [`Counted`]: wraps any hub and counts connections and messages, with a stream of snapshots
//!   for dashboards.
//!
//! One message log serves every transport: each message gets a [`MessageId`] (the topic log's
//! [`Epoch`](hub::Epoch) and an offset), each topic keeps a bounded history, and a connection that comes back
//! with the last id it saw ([`Position::After`]) gets exactly what it missed, or a
//! [`Delivery::Reset`] first when that can't be done. Falling behind is never silent: a
//! subscriber is refilled from history, or told how many messages it lost
//! ([`Delivery::Lagged`]).
//!
//! # Quick start
//!
//! ```
//! use futures_util::StreamExt;
//! use salvo_realtime::{Connection, Delivery, Hub, Position, PubSub, Topic};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let hub = PubSub::new();
//! let conn = Connection::new().subscribe(Topic::new("prices")?, Position::Live);
//! let mut deliveries = hub.join(&conn).await?;
//!
//! let id = hub.publish("prices", r#"{"eur":1.08}"#).await?;
//! match deliveries.next().await {
//!     Some(Delivery::Message(m)) => assert_eq!(m.id(), id),
//!     other => panic!("unexpected {other:?}"),
//! }
//! hub.leave(&conn, deliveries).await;
//! # Ok(())
//! # }
//! ```
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `redis` | no | the `redis` module: a Redis [`backend::Backend`] (single server or Redis Cluster), so that several server processes behave as one hub |
//! | `conformance` | no | `backend::conformance`: the suite of checks every [`backend::Backend`] passes, to run against your own backend |
//! | `metrics` | no | operator metrics through the [`metrics`](https://docs.rs/metrics) facade: connections, refusals, closes, messages, lag, latency (see [Metrics](#metrics)) |
//! | `browser-tests` | no | builds the headless-Chromium tests of the example pages (CI only); enables `metrics` |
//!
//! # Defaults
//!
//! Every default (caps, limits, heartbeat, the origin policy, what [`Rooms`] does with a
//! member's message, what raw framing carries), why it is what it is and how to change it, is
//! in one table: the README's "Defaults, status codes and close codes" (the crate's front page
//! on crates.io). The README also shows how to share one origin list with a CORS middleware
//! and how to serve with `TCP_NODELAY`.
//!
//! # Metrics
//!
//! With the `metrics` feature, both endpoints (and the Redis backend) report through the
//! [`metrics`](https://docs.rs/metrics) facade: install any recorder (Prometheus, StatsD,
//! OpenTelemetry, ...) and they show up; without one, the calls do nothing. Name each
//! endpoint with [`name`](ws::WsEndpoint::name) for the `endpoint` label. The `transport`
//! label is `websocket`, `channels` (a WebSocket speaking the channel protocol) or `sse`.
//!
//! | metric | type | unit | labels | counts |
//! |---|---|---|---|---|
//! | `salvo_realtime_connections_open` | gauge | connections | `transport`, `endpoint` | connections open now, from the join (for a WebSocket, just before the `101`) until the connection has left |
//! | `salvo_realtime_connections_total` | counter | connections | `transport`, `endpoint` | connections opened |
//! | `salvo_realtime_refusals_total` | counter | requests | `transport`, `reason` | requests refused before they became connections; `reason`: `draining`, `handshake` (400, 426), `origin`, `request` (400: a bad topic name or parameter), `identity` (401/403 from `identify` or a `topics` closure), `caps` (503/429), `subscribe` (an authorization rule refused a topic: at connect, or a channel `subscribe` command), `hub` (any other refusal by the hub) |
//! | `salvo_realtime_closes_total` | counter | connections | `transport`, `code` | connections closed; `code`: the WebSocket close code (ours or the client's; `1006` when the socket went without a closing handshake; codes outside 1000–1015 as `other`), `end` for SSE |
//! | `salvo_realtime_messages_received_total` | counter | messages | `transport` | messages read from WebSocket clients (data frames, channel commands; not pings), rate-limited ones included |
//! | `salvo_realtime_messages_sent_total` | counter | messages | `transport` | deliveries written to clients: messages and the endpoint's notices (presence, reset, lagged); not pings, keep-alives or command replies |
//! | `salvo_realtime_lagged_total` | counter | messages | `transport` | messages connections lost to lag (the `missed` of each [`Delivery::Lagged`]) |
//! | `salvo_realtime_dropped_total` | counter | messages | `transport` | client messages dropped by the inbound rate limit |
//! | `salvo_realtime_slow_consumer_disconnects_total` | counter | connections | `transport` | connections closed as slow consumers (lag under [`ws::SlowConsumerPolicy::Disconnect`], or a send that made no progress for the send timeout) |
//! | `salvo_realtime_publish_to_write_seconds` | histogram | seconds | `transport` | sampled (below): from a message entering this node's hub (published here, or arrived from Redis) to the endpoint handing it to the connection's writer; replays (resume, `recent`) are left out |
//! | `salvo_realtime_topics` | gauge | logs | none | topic, room and direct-message logs the process's hubs hold (with a remote backend: the ones this node mirrors) |
//! | `salvo_realtime_redis_errors_total` | counter | errors | `op` | `redis` feature: failed Redis commands (`op`: the command, `evalsha`, `xrange`, `sadd`, ..., or `pipeline`; a script not loaded yet is no failure) and pub/sub operations (`subscribe`, `unsubscribe`, `pubsub_connect`) |
//! | `salvo_realtime_redis_reconnects_total` | counter | reconnects | | `redis` feature: the pub/sub connection re-established after a loss (or a cluster node's lost and its channels subscribed again) |
//!
//! No label names a topic, a room or a user: each distinct label value is a time series kept
//! for the process's lifetime, and topics and users are unbounded. Per-topic counts are what
//! [`Counted`] is for.
//!
//! **Cost.** A connection counts what it sends and receives in plain integers of its own and
//! hands the totals to the facade once per batch, not per delivery: a batch is at most 64
//! deliveries. A WebSocket write burst (up to 512 deliveries; it already costs a socket write)
//! hands its counts over every 64 deliveries and at its end; SSE every 64 events; whatever is
//! left goes on the heartbeat or keep-alive tick and at close. Under load a burst
//! carries many deliveries; a connection sent one message at a time makes each its own batch,
//! as it makes each its own write. The latency histogram is sampled per batch: one observation,
//! the age of the batch's first message when it was written. The facade's handles are looked
//! up once per connection, when it opens, and kept in one allocation of about 200 bytes; the
//! connection's task grows by one pointer. Without the feature none of this is compiled.
//!
//! **Salvo's `otel` feature** (`salvo::otel::Metrics`) is a separate middleware: it records
//! per-HTTP-request instruments on OpenTelemetry's global meter provider, so it sees a
//! WebSocket's upgrade request and an SSE stream as one long request, not what travels on
//! them. These metrics go through the `metrics` facade instead. An app can serve both (a
//! Prometheus recorder for these, its OpenTelemetry exporter for Salvo's), or bridge the
//! facade into OpenTelemetry with a recorder such as `metrics-exporter-opentelemetry`. The
//! `dashboard` example serves `/metrics` with `metrics-exporter-prometheus`.
//!
//! ```
//! use salvo::prelude::*;
//! use salvo_realtime::{PubSub, sse::SseEndpoint, ws::WsEndpoint};
//!
//! let hub = PubSub::new();
//! let router = Router::new()
//!     .push(Router::with_path("ws/{topic}").goal(WsEndpoint::new(hub.clone()).name("chat")))
//!     .push(Router::with_path("events/{topic}").get(SseEndpoint::new(hub).name("feed")));
//! # let _ = router;
//! ```
//!
//! # Minimum supported Rust version
//!
//! Rust 1.95.
//!
//! [Salvo]: https://salvo.rs
#![doc(test(attr(deny(warnings))))]

pub mod channel;
pub mod client;
pub mod endpoint;
pub mod error;
pub mod hub;
mod ids;
mod metrics;
pub mod publish;
#[cfg(feature = "redis")]
pub mod redis;
pub mod sse;
mod sync;
pub mod testing;
mod wake;
mod wire;
pub mod ws;

pub use endpoint::{Drain, Rejection};
pub use hub::{
    Connection, Counted, Delivery, Hub, HubConfig, Identity, Message, Payload, Position, PubSub,
    Publication, Rooms,
};
pub use ids::{ConnectionId, MessageId, Topic};

/// Where a hub's ids, history and presence live: the [`Backend`](backend::Backend) seam, its
/// in-memory implementation [`Local`](backend::Local), and the [`Mirror`](backend::Mirror)
/// through which a remote backend feeds a node's local logs. Needed only to write a backend or
/// to name a hub's backend type (`Rooms<B>`).
///
/// # Checking a backend
///
/// With the `conformance` feature, `backend::conformance` holds the suite of checks every
/// backend passes (ids and order, resume, presence per connection, cancellation at each
/// step, idle expiry): the crate runs it against `Local`, Redis and Redis Cluster, and a
/// third-party backend's tests run it against theirs with
/// `conformance::run_all(|| async { make_backend() }).await` (or one check at a time: each is
/// an `async fn` of `conformance::Suite`).
pub mod backend {
    pub use crate::hub::backend::{Backend, MembersPage, Mirror, WeakMirror};
    #[cfg(feature = "conformance")]
    pub use crate::hub::conformance;
    pub use crate::hub::local::Local;
    pub use crate::hub::log::Applied;
}

/// Compiles the README's code blocks as doc-tests, so its quick start can't rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
