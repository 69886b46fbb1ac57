//! The transport-agnostic hub core: what a connection attaches to, and every name of it.
//!
//! The crate root re-exports what a first app names ([`PubSub`], [`Rooms`], [`Publication`],
//! [`Connection`], ...); this module holds the rest too: the ids' parts ([`Epoch`],
//! [`EventName`], [`Offset`]), the deliveries' parts ([`Reset`], [`Presence`], [`Member`]),
//! the hubs' settings ([`InboundPolicy`], [`PresenceMode`]), the counted hub's
//! [`Snapshot`], and the reserved names ([`PRESENCE_JOIN`], [`DIRECT_PREFIX`], ...).
//!
//! Nothing in this module knows about Salvo, HTTP, WebSocket or SSE. Transport adapters drive
//! any [`Hub`]; a remote backend implements the same trait.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::Stream;
use serde::Serialize;

pub(crate) mod assigns;
pub(crate) mod backend;
pub(crate) mod config;
#[cfg(feature = "conformance")]
pub mod conformance;
pub(crate) mod counter;
mod delegate;
pub(crate) mod filter;
pub(crate) mod inbound;
pub(crate) mod local;
pub(crate) mod log;
pub(crate) mod message;
pub(crate) mod pubsub;
pub(crate) mod rooms;
pub(crate) mod subscription;

#[cfg(all(test, salvo_realtime_shuttle))]
mod interleavings;

pub use assigns::Assigns;
pub use config::{HubConfig, InboundPolicy, PresenceMode};
pub use counter::{Counted, CountedSubscription, Snapshot, TopicCount};
pub use filter::Filter;
pub use inbound::MAX_JSON_DEPTH;
pub(crate) use message::ENCODINGS;
pub use message::{Message, Payload, Publication};
pub use pubsub::PubSub;
pub use rooms::{
    CONNECTION_TOPIC, DIRECT_PREFIX, PRESENCE_JOIN, PRESENCE_LEAVE, PRESENCE_PAGE, Rooms,
};
pub use subscription::Subscription;

#[doc(inline)]
pub use crate::__delegate_hub as delegate_hub;
pub use crate::ids::{ConnectionId, Epoch, EventName, MessageId, Offset, Topic};
/// For [`delegate_hub!`]'s expansion in crates that don't depend on `serde_json` themselves.
#[doc(hidden)]
pub use serde_json as __serde_json;

use crate::error::HubError;

/// What a connection attaches to: the contract between transports and message routing.
///
/// A transport adapter (WebSocket, SSE, or your own) drives one connection through three steps:
///
/// 1. [`join`](Hub::join) with a [`Connection`] describing it (id, identity, requested topics or
///    rooms with a start [`Position`] each, remote address). The hub answers with a
///    [`Subscription`](Hub::Subscription): a [`Stream`] of [`Delivery`] items for this connection
///    alone.
/// 2. While connected, the adapter forwards every delivery to the client, and hands every
///    message the client sends to [`receive`](Hub::receive) (WebSocket; SSE has no inbound side).
/// 3. [`leave`](Hub::leave), which takes the subscription back, so a connection leaves at most
///    once by construction. A connection that vanishes without `leave` (its task panicked or was
///    cancelled) is cleaned up when its subscription is dropped: every implementation must free
///    what a connection held in the subscription's `Drop`, and treat `leave` as the orderly,
///    awaitable version of the same.
///
/// # Deliveries, ids and resume
///
/// Every message published to a topic gets a [`MessageId`]: the topic log's [`Epoch`] and an
/// offset one higher than the previous message's. A subscription delivers each topic's messages in
/// offset order, without gaps and without duplicates, and says so when it can't:
///
/// * [`Delivery::Message`]: the next message.
/// * [`Delivery::Reset`]: the requested resume position can't be honoured: it belongs to another
///   epoch (the log was lost, e.g. the server restarted), it is older than the retained history,
///   or it lies ahead of the log. The reset comes first; then everything the history still holds
///   for the topic; then live messages. The client should treat its view of the topic as stale.
/// * [`Delivery::Lagged`]: the subscriber fell so far behind that messages left both the live
///   channel and the history before it read them; `missed` counts them exactly. Delivery goes on
///   with the oldest retained message.
/// * [`Delivery::Presence`]: the members of a room, sent once after joining it (and after its
///   replay), for hubs with presence.
///
/// A [`Position`] says where a topic's delivery starts: [`Position::Live`] (only what is published
/// from now on), [`Position::After`] an id the client saw last (what it missed, then live), or
/// [`Position::Recent`] (the last *n* retained messages, then live).
///
/// # Lag and backpressure
///
/// Publishing never waits for subscribers. Each topic buffers a bounded number of messages for its
/// live subscribers and retains a bounded history. A subscriber that falls behind the live buffer
/// is refilled from the history, so a brief stall costs nothing; only when the history has moved
/// past it too does it see [`Delivery::Lagged`]. Memory per topic is bounded by its buffer and
/// history limits, never by how slow a subscriber is. How a transport treats a client that stays
/// slow (disconnect or skip ahead) is the adapter's policy; it reports messages it dropped through
/// [`note_dropped`](Hub::note_dropped) so a counter can count them.
///
/// # Implementing `Hub`
///
/// Methods return `impl Future + Send` so a remote backend can do network I/O in them. An
/// implementation must
///
/// * never block the executor and never hold a lock across an `.await`;
/// * keep each subscription's memory bounded, whatever the publish rate;
/// * deliver each topic in id order, never silently skip: use `Lagged` and `Reset`;
/// * free a connection's state exactly once, in `leave` or when the subscription is dropped,
///   whichever comes first.
///
/// The channel protocol's operations ([`add_topic`](Hub::add_topic),
/// [`remove_topic`](Hub::remove_topic), [`publish_from`](Hub::publish_from),
/// [`call`](Hub::call)) have defaults that answer [`HubError::Unsupported`]; a hub that can
/// change a joined connection's topics, or answer calls, overrides them. A wrapper (like
/// [`Counted`]) should pass them on.
///
/// ```
/// use futures_util::stream::{self, Empty};
/// use salvo_realtime::{Connection, Delivery, Hub, Publication, error::HubError};
///
/// /// A hub that accepts everyone and never delivers anything.
/// struct Silent;
///
/// impl Hub for Silent {
///     type Subscription = Empty<Delivery>;
///
///     async fn join(&self, _conn: &Connection) -> Result<Self::Subscription, HubError> {
///         Ok(stream::empty())
///     }
///
///     async fn receive(&self, _conn: &Connection, _msg: Publication) -> Result<(), HubError> {
///         Err(HubError::InboundRejected)
///     }
///
///     async fn leave(&self, _conn: &Connection, _sub: Self::Subscription) {}
/// }
/// # let _ = Silent;
/// ```
///
/// # Wrapping a hub
///
/// To add behaviour around a hub (metrics, auditing, a policy of your own), wrap it in a type
/// that implements `Hub` by passing each call on to the hub inside, as [`Counted`] does, and
/// write that impl with [`delegate_hub!`]: it passes on every method the wrapper doesn't write
/// itself. Written by hand, a wrapper must pass on *every* method, the provided ones too: one
/// that leaves [`add_topic`](Hub::add_topic), [`remove_topic`](Hub::remove_topic),
/// [`publish_from`](Hub::publish_from) or [`call`](Hub::call) to their defaults answers
/// [`HubError::Unsupported`] for them, and the channel protocol stops working behind it. To
/// count deliveries too, wrap the subscription stream as well (see [`CountedSubscription`]).
/// Keep the wrapper's own state behind an `Arc`, so that clones share it like clones of the hub
/// they wrap.
///
/// # Cloning and sharing
///
/// The hubs of this crate are handles: cloning one is cheap and every clone drives the same hub,
/// so hand clones to handlers, background tasks and publishers freely. `Hub` is also implemented
/// for `Arc<H>`.
pub trait Hub: Send + Sync + 'static {
    /// The stream of deliveries of one joined connection.
    type Subscription: Stream<Item = Delivery> + Send + Unpin + 'static;

    /// Attaches a connection and returns its stream of deliveries.
    ///
    /// # Errors
    ///
    /// A [`HubError`] if the connection's request is refused (an invalid or reserved topic name,
    /// too many topics, a backend failure). A refused connection holds nothing.
    fn join(
        &self,
        conn: &Connection,
    ) -> impl Future<Output = Result<Self::Subscription, HubError>> + Send;

    /// Handles a message the connection sent as a plain frame: its payload, and its event name
    /// when the endpoint reads event frames ([`WsEndpoint::event_frames`](crate::ws::WsEndpoint::event_frames)).
    ///
    /// # Errors
    ///
    /// A [`HubError`] if the message is refused; the connection stays joined.
    fn receive(
        &self,
        conn: &Connection,
        message: Publication,
    ) -> impl Future<Output = Result<(), HubError>> + Send;

    /// Detaches a connection, taking back its subscription.
    fn leave(
        &self,
        conn: &Connection,
        subscription: Self::Subscription,
    ) -> impl Future<Output = ()> + Send;

    /// Told by a transport that it dropped `count` messages meant for `conn` (slow-consumer
    /// policy). The default does nothing; [`Counted`] counts them.
    fn note_dropped(&self, conn: &Connection, count: u64) {
        let _ = (conn, count);
    }

    /// Adds a topic to a joined connection's subscription (the channel protocol's
    /// `subscribe`), as [`TopicRequest`] says: where delivery starts, what the client sent for
    /// an authorization rule to read, which messages it wants. Deliveries of the topic arrive
    /// on the same subscription. Asking again for a topic it already follows changes nothing,
    /// unless the request names a start (delivery restarts there) or another filter.
    /// Resolves to the join reply, if the hub has one for the client (Channels' authorization
    /// rules may return data: a game's board, a room's settings).
    /// The default: [`HubError::Unsupported`]. [`Rooms`] and
    /// [`Channels`](crate::channel::Channels) implement it.
    ///
    /// # Errors
    ///
    /// [`HubError::Unsupported`], [`HubError::Refused`] (authorization),
    /// [`HubError::TooManySubscriptions`], [`HubError::InvalidTopic`], [`HubError::NotJoined`],
    /// and the errors of a join.
    fn add_topic(
        &self,
        conn: &Connection,
        request: TopicRequest,
    ) -> impl Future<Output = Result<Option<serde_json::Value>, HubError>> + Send {
        let _ = (conn, request);
        std::future::ready(Err(HubError::Unsupported("adding topics to a connection")))
    }

    /// Takes `topic` out of a joined connection's subscription (the channel protocol's
    /// `unsubscribe`); nothing more of it is delivered once this returns. Resolves to whether
    /// it was subscribed. The default: [`HubError::Unsupported`].
    ///
    /// # Errors
    ///
    /// [`HubError::Unsupported`], [`HubError::NotJoined`], [`HubError::InvalidTopic`].
    fn remove_topic(
        &self,
        conn: &Connection,
        topic: &Topic,
    ) -> impl Future<Output = Result<bool, HubError>> + Send {
        let _ = (conn, topic);
        std::future::ready(Err(HubError::Unsupported(
            "removing topics from a connection",
        )))
    }

    /// Publishes what a connection sent to one of its topics (the channel protocol's
    /// `publish`) and resolves to what was done: the message's id, and what a handler answered
    /// the sender ([`Published`]). The default: [`HubError::Unsupported`].
    ///
    /// # Errors
    ///
    /// [`HubError::NotSubscribed`] if the connection isn't subscribed to `topic`,
    /// [`HubError::Refused`] from a publish handler, [`HubError::PayloadTooLarge`],
    /// [`HubError::JsonTooDeep`], [`HubError::Backend`], [`HubError::Unsupported`].
    fn publish_from(
        &self,
        conn: &Connection,
        topic: &Topic,
        publication: Publication,
    ) -> impl Future<Output = Result<Published, HubError>> + Send {
        let _ = (conn, topic, publication);
        std::future::ready(Err(HubError::Unsupported("publishing to one topic")))
    }

    /// Calls the server method `method` with `data` for a connection (the channel protocol's
    /// `call`) and resolves to its JSON result. The default: [`HubError::Unsupported`].
    ///
    /// # Errors
    ///
    /// [`HubError::Unsupported`] for an unknown method, [`HubError::Refused`] from its handler.
    fn call(
        &self,
        conn: &Connection,
        method: &str,
        data: serde_json::Value,
    ) -> impl Future<Output = Result<serde_json::Value, HubError>> + Send {
        let _ = (conn, method, data);
        std::future::ready(Err(HubError::Unsupported("calls")))
    }
}

crate::__delegate_hub! {
    impl[H: Hub] Hub for Arc<H>, to deref {
        type Subscription = H::Subscription;
    }
}

/// Who is on the other end of a connection, as established by authentication.
///
/// ```
/// use salvo_realtime::Identity;
///
/// let who = Identity::new("alice").data(serde_json::json!({ "role": "admin" }));
/// assert_eq!(who.user_id(), "alice");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    user_id: Arc<str>,
    /// Data and expiry, in one allocation made only when one is set: every connection holds
    /// an `Option<Identity>`, so its size is paid by each, anonymous ones included.
    extra: Option<Arc<IdentityExtra>>,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct IdentityExtra {
    data: Option<Arc<serde_json::Value>>,
    expires: Option<std::time::SystemTime>,
}

impl Identity {
    /// An identity for the user `user_id`: a `&str`, a `String`, a `&String` (a field of your
    /// session type), anything that reads as a string.
    ///
    /// ```
    /// use salvo_realtime::Identity;
    ///
    /// struct Session {
    ///     user: String,
    /// }
    /// let session = Session { user: "alice".to_owned() };
    /// assert_eq!(Identity::new(&session.user).user_id(), "alice");
    /// ```
    #[must_use]
    pub fn new(user_id: impl AsRef<str>) -> Self {
        Self {
            user_id: Arc::from(user_id.as_ref()),
            extra: None,
        }
    }

    /// Attaches data the hub may use or share (rooms show it in presence). Default: none.
    #[must_use]
    pub fn data(mut self, data: serde_json::Value) -> Self {
        self.extra_mut().data = Some(Arc::new(data));
        self
    }

    fn extra_mut(&mut self) -> &mut IdentityExtra {
        Arc::make_mut(self.extra.get_or_insert_with(Arc::default))
    }

    /// The user id.
    #[must_use]
    pub fn user_id(&self) -> &str {
        &self.user_id
    }

    /// The identity stops being valid at `at` (a token's `exp`). The endpoints refuse an
    /// identity that has already expired (401), and end a connection whose identity expires
    /// while it is open: the WebSocket endpoint closes it with 4001 unless the client refreshed
    /// it first (a channel-protocol `refresh` command, see
    /// [`WsEndpoint::refresh`](crate::ws::WsEndpoint::refresh)), the SSE endpoint ends the
    /// stream (the client reconnects with a fresh token). Default: never.
    ///
    /// ```
    /// use std::time::Duration;
    /// use salvo_realtime::Identity;
    ///
    /// let who = Identity::new("ann").expires_in(Duration::from_secs(15 * 60));
    /// assert!(who.expiry().is_some());
    /// ```
    #[must_use]
    pub fn expires_at(mut self, at: std::time::SystemTime) -> Self {
        self.extra_mut().expires = Some(at);
        self
    }

    /// [`expires_at`](Self::expires_at) `now + lifetime`.
    #[must_use]
    pub fn expires_in(self, lifetime: std::time::Duration) -> Self {
        self.expires_at(std::time::SystemTime::now() + lifetime)
    }

    /// When the identity stops being valid, if it does.
    #[must_use]
    pub fn expiry(&self) -> Option<std::time::SystemTime> {
        self.extra.as_ref()?.expires
    }

    /// How long the identity stays valid from now: `None` if it never expires, zero if it
    /// already has.
    pub(crate) fn remaining(&self) -> Option<std::time::Duration> {
        let at = self.expiry()?;
        Some(
            at.duration_since(std::time::SystemTime::now())
                .unwrap_or_default(),
        )
    }

    /// The attached data, if any.
    #[must_use]
    pub fn user_data(&self) -> Option<&serde_json::Value> {
        self.data_arc().map(|d| &**d)
    }

    pub(crate) fn user_arc(&self) -> &Arc<str> {
        &self.user_id
    }

    pub(crate) fn data_arc(&self) -> Option<&Arc<serde_json::Value>> {
        self.extra.as_ref()?.data.as_ref()
    }
}

/// The owner key of a signed-in user ([`HubConfig::max_topics_per_owner`]).
pub(crate) fn user_owner(user: &str) -> Arc<str> {
    Arc::from(format!("user:{user}"))
}

/// Where a topic's delivery starts for a joining connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Position {
    /// Only messages published from now on.
    #[default]
    Live,
    /// Everything after this id (the last one the client saw), then live. If the id can't be
    /// honoured the subscriber gets a [`Delivery::Reset`] first.
    After(MessageId),
    /// The last `n` retained messages, then live.
    Recent(usize),
    /// The client sent a resume position that can't be read (an id of another format, from an
    /// older deployment or another app): it gets a [`Delivery::Reset`] with
    /// [`ResetReason::Invalid`], then everything the history holds, then live messages, as
    /// for an id of another epoch.
    Invalid,
}

/// A connection's request for one more topic ([`Hub::add_topic`]).
///
/// ```
/// use salvo_realtime::hub::{Filter, TopicRequest};
/// use salvo_realtime::{Position, Topic};
///
/// let request = TopicRequest::new(Topic::new("prices")?)
///     .starting(Position::Recent(1))
///     .filter(Filter::new().tag("ticker", ["AAPL"])?);
/// assert_eq!(request.from, Position::Recent(1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TopicRequest {
    /// The topic asked for.
    pub topic: Topic,
    /// Where its delivery starts. Default: [`Position::Live`].
    pub from: Position,
    /// What the client sent with the request, for an authorization rule. Default: none.
    pub data: Option<serde_json::Value>,
    /// Which of the topic's messages the client wants. Default: all.
    pub filter: Option<Filter>,
}

impl TopicRequest {
    /// A request for `topic`, live, with no data and no filter.
    #[must_use]
    pub fn new(topic: Topic) -> Self {
        Self {
            topic,
            from: Position::Live,
            data: None,
            filter: None,
        }
    }

    /// Starts delivery at `from`. Default: live.
    #[must_use]
    pub fn starting(mut self, from: Position) -> Self {
        self.from = from;
        self
    }

    /// Attaches the client's data for an authorization rule. Default: none.
    #[must_use]
    pub fn data(mut self, data: serde_json::Value) -> Self {
        self.data = Some(data);
        self
    }

    /// Delivers only the messages `filter` passes (an empty filter passes all). Default: all.
    #[must_use]
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filter = (!filter.is_empty()).then_some(filter);
        self
    }
}

/// What a connection's publish did: the channel protocol's reply to a `publish` command
/// carries it (`{"id":..,"reply":..}`, each field only when present).
///
/// ```
/// use salvo_realtime::hub::Published;
/// use salvo_realtime::MessageId;
///
/// let id: MessageId = "3f9a0c1de2b47781-7".parse()?;
/// let published = Published::from(id);
/// assert_eq!((published.id, published.reply), (Some(id), None));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Published {
    /// The id of the message published to the topic the client named, if one was (a handler
    /// may publish elsewhere, or nothing).
    pub id: Option<MessageId>,
    /// What a handler answered the sender alone, if anything.
    pub reply: Option<serde_json::Value>,
}

impl Published {
    /// Nothing published and no answer (a handler's `noreply`).
    #[must_use]
    pub fn nothing() -> Self {
        Self::default()
    }

    /// Adds the answer for the sender.
    #[must_use]
    pub fn with_reply(mut self, reply: serde_json::Value) -> Self {
        self.reply = Some(reply);
        self
    }
}

impl From<MessageId> for Published {
    fn from(id: MessageId) -> Self {
        Self {
            id: Some(id),
            reply: None,
        }
    }
}

/// A connection as a hub sees it: who it is and what it asks for.
///
/// ```
/// use salvo_realtime::{Connection, Identity, Position, Topic};
///
/// let conn = Connection::new()
///     .authenticated(Identity::new("alice"))
///     .subscribe(Topic::new("lobby")?, Position::Recent(20));
/// assert_eq!(conn.user_id(), Some("alice"));
/// assert_eq!(conn.topics().len(), 1);
/// # Ok::<(), salvo_realtime::error::InvalidTopic>(())
/// ```
#[derive(Debug, Clone)]
pub struct Connection {
    id: ConnectionId,
    identity: Option<Identity>,
    topics: Vec<(Topic, Position)>,
    remote_addr: Option<SocketAddr>,
    /// Made on first use (most connections' hubs never use it): clones made after that share it.
    assigns: std::sync::OnceLock<Assigns>,
    filter: filter::SharedFilter,
}

impl Default for Connection {
    fn default() -> Self {
        Self::new()
    }
}

impl Connection {
    /// A connection with a fresh [`ConnectionId`], anonymous, asking for nothing yet.
    #[must_use]
    pub fn new() -> Self {
        Self::with_id(ConnectionId::next())
    }

    /// A connection with a given id.
    #[must_use]
    pub fn with_id(id: ConnectionId) -> Self {
        Self {
            id,
            identity: None,
            topics: Vec::new(),
            remote_addr: None,
            assigns: std::sync::OnceLock::new(),
            filter: None,
        }
    }

    /// Sets who the connection belongs to. Default: anonymous.
    #[must_use]
    pub fn authenticated(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Asks for `topic` (a room, for [`Rooms`]) starting at `from`. Asking for
    /// the same topic twice keeps the last position.
    #[must_use]
    pub fn subscribe(mut self, topic: Topic, from: Position) -> Self {
        match self.topics.iter_mut().find(|(t, _)| *t == topic) {
            Some(entry) => entry.1 = from,
            None => {
                // Most connections ask for one topic: don't reserve room for four.
                self.topics.reserve_exact(1);
                self.topics.push((topic, from));
            }
        }
        self
    }

    /// Records the client's address. Default: unknown.
    #[must_use]
    pub fn with_remote_addr(mut self, addr: SocketAddr) -> Self {
        self.remote_addr = Some(addr);
        self
    }

    /// The connection's id.
    #[must_use]
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    /// The identity, if the connection is authenticated.
    #[must_use]
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// The user id, if the connection is authenticated.
    #[must_use]
    pub fn user_id(&self) -> Option<&str> {
        self.identity.as_ref().map(Identity::user_id)
    }

    /// The requested topics with their start positions.
    #[must_use]
    pub fn topics(&self) -> &[(Topic, Position)] {
        &self.topics
    }

    /// The client's address, if known (behind trusted proxies, the address they forwarded).
    #[must_use]
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.remote_addr
    }

    /// Delivers, of the topics asked for with [`subscribe`](Self::subscribe), only the
    /// messages `filter` passes (the endpoints' `filter=` query parameter). Default: all. An
    /// empty filter is none.
    #[must_use]
    pub fn with_filter(mut self, filter: Filter) -> Self {
        self.filter = (!filter.is_empty()).then(|| Arc::new(filter));
        self
    }

    /// The filter of the topics asked for at connect time, if any.
    #[must_use]
    pub fn filter(&self) -> Option<&Filter> {
        self.filter.as_deref()
    }

    pub(crate) fn shared_filter(&self) -> filter::SharedFilter {
        self.filter.clone()
    }

    /// The connection's own values (see [`Assigns`]). They are made on first use, and every
    /// clone of the connection made after that shares them; the handlers of
    /// [`Channels`](crate::channel::Channels) always share the endpoint's connection's. A
    /// connection that never uses them costs nothing for them.
    #[must_use]
    pub fn assigns(&self) -> &Assigns {
        self.assigns.get_or_init(Assigns::default)
    }

    /// Who is charged for the topics this connection creates
    /// ([`HubConfig::max_topics_per_owner`]): its user, else its client address, IPv6 grouped
    /// by /64.
    pub(crate) fn owner(&self) -> Option<Arc<str>> {
        if let Some(user) = self.user_id() {
            return Some(user_owner(user));
        }
        let ip = match self.remote_addr?.ip() {
            std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => std::net::IpAddr::V4(v4),
                None => {
                    let s = v6.segments();
                    std::net::IpAddr::V6(std::net::Ipv6Addr::new(
                        s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                    ))
                }
            },
            v4 => v4,
        };
        Some(Arc::from(format!("ip:{ip}")))
    }
}

/// One item of a [`Hub::Subscription`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Delivery {
    /// The next message of a topic.
    Message(Message),
    /// Messages of `topic` were lost to this subscriber: it fell behind both the live buffer and
    /// the history. `missed` is exact.
    Lagged {
        /// The topic.
        topic: Topic,
        /// How many messages were lost.
        missed: u64,
    },
    /// A resume position could not be honoured; what the history holds follows.
    Reset(Reset),
    /// The members of a room, once after joining it.
    Presence(Presence),
}

impl Delivery {
    /// The topic this delivery belongs to.
    #[must_use]
    pub fn topic(&self) -> &Topic {
        match self {
            Self::Message(m) => m.topic(),
            Self::Lagged { topic, .. } => topic,
            Self::Reset(r) => &r.topic,
            Self::Presence(p) => &p.room,
        }
    }

    /// When the hub logged the message this delivery carries (the start of its
    /// publish-to-write latency); `None` for the other deliveries.
    #[inline]
    pub(crate) fn logged_at(&self) -> Option<std::time::Instant> {
        match self {
            Self::Message(m) => Some(m.logged_at()),
            _ => None,
        }
    }
}

/// A resume position that can't be honoured, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reset {
    /// The topic.
    pub topic: Topic,
    /// The position the client asked for; `None` if it couldn't be read
    /// ([`ResetReason::Invalid`]).
    pub requested: Option<MessageId>,
    /// The topic log's current epoch; ids of the messages that follow carry it.
    pub epoch: Epoch,
    /// The position the replay that follows starts after: a client that saves it (as an SSE
    /// `id`, say) and reconnects before the next message resumes without another reset.
    pub replay_after: MessageId,
    /// Why the position can't be honoured.
    pub reason: ResetReason,
}

/// Why a resume position can't be honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ResetReason {
    /// The id belongs to another instance of the log: it was lost (restart, eviction).
    EpochChanged,
    /// Messages after the id have already left the history.
    Expired,
    /// The id is ahead of the log's last message.
    Ahead,
    /// The id could not be read at all ([`Position::Invalid`]).
    Invalid,
}

/// The members of a room at one moment.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Presence {
    /// The room.
    pub room: Topic,
    /// One entry per user, sorted by user id. Anonymous connections are not listed.
    pub members: Vec<Member>,
    /// More pages of the same snapshot follow: a big room's members come in pages of at most
    /// [`PRESENCE_PAGE`], so no frame grows with the room. The snapshot
    /// is complete at the page with `more == false`.
    pub more: bool,
    /// How many users are in the room (across nodes), anonymous connections not counted. In
    /// [`PresenceMode::Count`] this is the whole snapshot (`members` is empty).
    pub count: usize,
}

/// One user present in a room.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Member {
    /// The user id.
    pub user: Arc<str>,
    /// How many of the user's connections are in the room (tabs, devices).
    pub connections: usize,
    /// The data of the identity the user's first connection joined with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Arc<serde_json::Value>>,
}
