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
//! [`Epoch`] and an offset), each topic keeps a bounded history, and a connection that comes back
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
//! | `browser-tests` | no | builds the headless-Chromium tests of the example pages (CI only) |
//!
//! # Minimum supported Rust version
//!
//! Rust 1.95.
//!
//! [Salvo]: https://salvo.rs
#![doc(test(attr(deny(warnings))))]

pub mod channel;
pub mod client;
mod endpoint;
pub mod error;
mod hub;
mod protocol;
#[cfg(feature = "redis")]
pub mod redis;
pub mod sse;
pub mod ws;

pub use endpoint::{Drain, Rejection};
pub use hub::{
    CONNECTION_TOPIC, Connection, ConnectionId, Counted, CountedSubscription, DIRECT_PREFIX,
    Delivery, Epoch, EventName, Hub, HubConfig, Identity, InboundPolicy, MAX_JSON_DEPTH, Member,
    Message, MessageId, Offset, PRESENCE_JOIN, PRESENCE_LEAVE, PRESENCE_PAGE, Payload, Position,
    Presence, PubSub, Publication, Reset, ResetReason, Rooms, Snapshot, Subscription, Topic,
    TopicCount,
};

/// Where a hub's ids, history and presence live: the [`Backend`](backend::Backend) seam, its
/// in-memory implementation [`Local`](backend::Local), and the [`Mirror`](backend::Mirror)
/// through which a remote backend feeds a node's local logs. Needed only to write a backend or
/// to name a hub's backend type (`Rooms<B>`).
pub mod backend {
    pub use crate::hub::{Applied, Backend, Local, Mirror, WeakMirror};
}

/// Compiles the README's code blocks as doc-tests, so its quick start can't rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
