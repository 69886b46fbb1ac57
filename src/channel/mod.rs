//! Channels: the server acts on what clients send. Per-topic authorization, publish handlers
//! that refuse, pass or rewrite a message before it reaches the hub, request/reply methods,
//! connect and disconnect hooks, and server-initiated sends, over one socket with any number
//! of topics.
//!
//! [`Channels`] wraps a [`Rooms`] hub and is itself a [`Hub`](crate::Hub), so both endpoints serve it:
//! the WebSocket endpoint speaks the [channel protocol](crate::ws#the-channel-protocol) to clients
//! that negotiate it (`Sec-WebSocket-Protocol: salvo-realtime.v1`), and the same authorization
//! rules decide every topic a connection asks for, whichever way it asks: at connect time (the
//! path or query of either endpoint, SSE included) or later with a `subscribe` command. There
//! is one place to put per-topic rules.
//!
//! ```
//! use salvo_realtime::channel::{Channels, Inbound};
//! use salvo_realtime::error::Refused;
//! use salvo_realtime::Rooms;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct Said { text: String }
//! #[derive(Serialize)]
//! struct Stamped { text: String, by: String, at: u64 }
//!
//! let channels = Channels::new(Rooms::new())
//!     // Anyone signed in may read and write rooms; "staff:*" rooms are for staff only.
//!     .authorize("room:*", |ctx, _req| async move {
//!         ctx.user_id().map(|_| ()).ok_or_else(|| Refused::forbidden("sign in first"))
//!     })
//!     .authorize("staff:*", |ctx, _req| async move {
//!         match ctx.user_data().and_then(|d| d["role"].as_str()) {
//!             Some("staff") => Ok(()),
//!             _ => Err(Refused::forbidden("staff only")),
//!         }
//!     })
//!     // Moderation and server fields: refuse a banned word, stamp the rest.
//!     .on_publish("room:*", |ctx, msg: Inbound<Said>| async move {
//!         if msg.data.text.contains("darn") {
//!             return Err(Refused::new("moderated", "keep it civil"));
//!         }
//!         let by = ctx.user_id().unwrap_or("anonymous").to_owned();
//!         Ok(Stamped { text: msg.data.text, by, at: 1_764_000_000_000 })
//!     })
//!     // Request/reply.
//!     .on_call("add", |_ctx, (a, b): (i64, i64)| async move { Ok(a + b) });
//! # drop(channels);
//! ```
//!
//! # What happens to each command
//!
//! * **subscribe** `topic`: the first [`authorize`](Channels::authorize) rule whose pattern
//!   matches decides, with the connection's identity and the request's `data`. A topic no rule
//!   matches is refused (`forbidden`): channels are closed by default. The connection's own
//!   direct-message log (`@<user>`) needs no rule.
//! * **publish** to a topic: only to a topic the connection is subscribed to (else
//!   `not_subscribed`); the first matching [`on_publish`](Channels::on_publish) handler gets the
//!   data, typed, and refuses it, or returns what is published instead (pass it on unchanged by
//!   returning it). Without a handler the data is published as sent. The publisher receives
//!   its own message too, unless the command says `"echo": false`; the reply carries the id.
//! * **call** `method`: the [`on_call`](Channels::on_call) handler of that name returns a typed
//!   result, or refuses; an unknown method is `unknown_method`.
//! * **a plain client's frame** (a socket without the channel protocol): published to every
//!   room the connection is in, through each room's publish handler, all or nothing. Every
//!   room's handler runs first (rooms in name order); if one refuses, the frame is published
//!   nowhere and the sender gets that refusal's code in an `error` frame. Only then is it
//!   published, room by room in name order; a failure there (the backend, say) stops it: the
//!   rooms before the failing one have the message, the rest don't, and the sender gets the
//!   error (`unavailable`).
//!
//! A handler that refuses answers that one command with the refusal's code; one that panics
//! (while it is called or in the future it returns) answers `handler_failed`, one that takes
//! longer than
//! [`handler_timeout`](Channels::handler_timeout) (default 5 s) answers `timeout`. The
//! connection and the server stay up either way, and nothing that was refused is joined or
//! published.
//!
//! # Connect and disconnect
//!
//! [`on_connect`](Channels::on_connect) runs once a connection has joined (after its
//! connect-time topics were authorized), before the client is told it is connected: it may put
//! the connection in rooms ([`Ctx::subscribe`]) or refuse it (the endpoint then answers 403;
//! one that panics or times out refuses it too, with `handler_failed` or `timeout`).
//! [`on_disconnect`](Channels::on_disconnect) runs when it leaves, before its rooms are left;
//! if it panics or times out, that is logged and the rooms are left all the same.
//!
//! # Server-initiated sends
//!
//! From a handler ([`Ctx::channels`]) or from anywhere holding a clone:
//! [`send_to_connection`](Channels::send_to_connection) (one socket, live-only),
//! [`send_to_user`](Channels::send_to_user) (all of a user's connections, resumable),
//! [`broadcast`](Channels::broadcast) (a topic), and [`subscribe`](Channels::subscribe) /
//! [`unsubscribe`](Channels::unsubscribe) a connection on its behalf (moderation, "you were
//! added to room X"; the connection is told with a `subscribed` / `unsubscribed` message on
//! [`CONNECTION_TOPIC`]).
//!
//! # State
//!
//! Handlers are closures: capture what they need (a database pool, a game's state behind a
//! mutex, another hub) by cloning it in, and reach this hub through [`Ctx::channels`]. No
//! globals are needed.

pub(crate) mod dispatch;
pub(crate) mod protocol;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backend::{Backend, Local};
use crate::error::{HubError, Refused};
use crate::hub::{
    CONNECTION_TOPIC, Connection, DIRECT_PREFIX, Identity, Message, Payload, Position, Publication,
    Rooms, Subscription,
};
use crate::ids::{ConnectionId, EventName, MessageId, Topic};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type AuthorizeFn<B> =
    dyn Fn(Ctx<B>, SubscribeRequest) -> BoxFuture<Result<(), Refused>> + Send + Sync;
type PublishFn<B> = dyn Fn(Ctx<B>, Inbound<serde_json::Value>) -> BoxFuture<Result<serde_json::Value, Refused>>
    + Send
    + Sync;
type CallFn<B> = dyn Fn(Ctx<B>, serde_json::Value) -> BoxFuture<Result<serde_json::Value, Refused>>
    + Send
    + Sync;
type ConnectFn<B> = dyn Fn(Ctx<B>) -> BoxFuture<Result<(), Refused>> + Send + Sync;
type DisconnectFn<B> = dyn Fn(Ctx<B>) -> BoxFuture<()> + Send + Sync;

/// A topic pattern: `"room:*"` matches every topic starting with `room:`, `"*"` every topic,
/// anything else exactly that topic.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    fn new(pattern: &str) -> Self {
        match pattern.strip_suffix('*') {
            Some(prefix) => Self::Prefix(prefix.to_owned()),
            None => Self::Exact(pattern.to_owned()),
        }
    }

    /// The part of `topic` the `*` stands for, if it matches.
    fn matches<'t>(&self, topic: &'t str) -> Option<&'t str> {
        match self {
            Self::Exact(exact) => (exact == topic).then_some(""),
            Self::Prefix(prefix) => topic.strip_prefix(prefix.as_str()),
        }
    }
}

/// What an [`authorize`](Channels::authorize) rule decides on: the topic and what the client
/// sent with its request.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SubscribeRequest {
    /// The topic asked for.
    pub topic: Topic,
    /// The part of the topic the pattern's `*` matched (`"42"` for `room:42` under
    /// `room:*`); empty for an exact pattern.
    pub wildcard: String,
    /// The `data` of the client's `subscribe` command (`Null` if none, and for topics asked
    /// for at connect time).
    pub data: serde_json::Value,
}

/// A message a connection publishes, as an [`on_publish`](Channels::on_publish) handler sees
/// it: `data` typed as the handler asks (a client sending data that doesn't fit gets
/// `invalid_data`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Inbound<T> {
    /// The topic it goes to.
    pub topic: Topic,
    /// Its event name, if the client gave one (kept on what is published).
    pub event: Option<EventName>,
    /// Its data.
    pub data: T,
}

/// What a handler knows about the connection it acts for, and a handle to the hub.
pub struct Ctx<B: Backend = Local> {
    conn: Connection,
    channels: Channels<B>,
}

impl<B: Backend> Clone for Ctx<B> {
    fn clone(&self) -> Self {
        Self {
            conn: self.conn.clone(),
            channels: self.channels.clone(),
        }
    }
}

impl<B: Backend> fmt::Debug for Ctx<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ctx")
            .field("connection", &self.conn.id())
            .field("user", &self.conn.user_id())
            .finish_non_exhaustive()
    }
}

impl<B: Backend> Ctx<B> {
    /// The connection's id (for [`Channels::send_to_connection`] and friends).
    #[must_use]
    pub fn connection_id(&self) -> ConnectionId {
        self.conn.id()
    }

    /// The connection as the hub sees it.
    #[must_use]
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The identity the endpoint's `identify` established, if any.
    #[must_use]
    pub fn identity(&self) -> Option<&Identity> {
        self.conn.identity()
    }

    /// The user id, if the connection is authenticated.
    #[must_use]
    pub fn user_id(&self) -> Option<&str> {
        self.conn.user_id()
    }

    /// The identity's data, if any.
    #[must_use]
    pub fn user_data(&self) -> Option<&serde_json::Value> {
        self.conn.identity().and_then(Identity::user_data)
    }

    /// The hub, for server-initiated sends from a handler.
    #[must_use]
    pub fn channels(&self) -> &Channels<B> {
        &self.channels
    }

    /// Puts this connection in `topic` on its behalf (no authorization rule runs: the server
    /// decides), delivering from `from`.
    ///
    /// # Errors
    ///
    /// As [`Channels::subscribe`].
    pub async fn subscribe(&self, topic: &str, from: Position) -> Result<(), HubError> {
        self.channels.subscribe(self.conn.id(), topic, from).await
    }
}

/// The handlers, shared by clones of a [`Channels`] until one of them changes.
struct Handlers<B: Backend> {
    rules: Vec<(Pattern, Arc<AuthorizeFn<B>>)>,
    publishers: Vec<(Pattern, Arc<PublishFn<B>>)>,
    methods: HashMap<String, Arc<CallFn<B>>>,
    on_connect: Option<Arc<ConnectFn<B>>>,
    on_disconnect: Option<Arc<DisconnectFn<B>>>,
    timeout: Duration,
}

impl<B: Backend> Clone for Handlers<B> {
    fn clone(&self) -> Self {
        Self {
            rules: self.rules.clone(),
            publishers: self.publishers.clone(),
            methods: self.methods.clone(),
            on_connect: self.on_connect.clone(),
            on_disconnect: self.on_disconnect.clone(),
            timeout: self.timeout,
        }
    }
}

/// A [`Rooms`] hub with server-side handlers; see the [module docs](self).
///
/// Cloning is cheap and every clone drives the same rooms; a clone's handlers are its own (a
/// builder call on a clone doesn't change the original).
pub struct Channels<B: Backend = Local> {
    rooms: Rooms<B>,
    handlers: Arc<Handlers<B>>,
}

impl<B: Backend> Clone for Channels<B> {
    fn clone(&self) -> Self {
        Self {
            rooms: self.rooms.clone(),
            handlers: Arc::clone(&self.handlers),
        }
    }
}

impl<B: Backend> fmt::Debug for Channels<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channels")
            .field("rooms", &self.rooms)
            .field("rules", &self.handlers.rules.len())
            .field("publish_handlers", &self.handlers.publishers.len())
            .field("methods", &self.handlers.methods.keys().collect::<Vec<_>>())
            .field("timeout", &self.handlers.timeout)
            .finish_non_exhaustive()
    }
}

/// The codes this module answers with, besides a handler's own [`Refused`] codes.
const FORBIDDEN: &str = "forbidden";
const HANDLER_FAILED: &str = "handler_failed";
const TIMEOUT: &str = "timeout";
const INVALID_DATA: &str = "invalid_data";
const UNKNOWN_METHOD: &str = "unknown_method";

/// Every code of this module: with the hub's and the protocol's, the one list the `ws` module
/// docs' table of codes is checked against (`error::tests`).
#[cfg(test)]
pub(crate) const CODES: &[&str] = &[
    FORBIDDEN,
    HANDLER_FAILED,
    TIMEOUT,
    INVALID_DATA,
    UNKNOWN_METHOD,
];

/// The codes of this module a plain client's frame can be refused with (its publish handlers').
#[cfg(test)]
pub(crate) const RECEIVE_CODES: &[&str] = &[HANDLER_FAILED, TIMEOUT, INVALID_DATA];

fn handler_failed(message: &str) -> Refused {
    Refused::new(HANDLER_FAILED, message.to_owned())
}

/// Calls a handler and runs the future it returns within the timeout. A panic is
/// `handler_failed` wherever it happens: in the call itself (a closure that panics before it
/// returns its future) as well as in the future; a timeout is `timeout`.
async fn guarded<T>(
    timeout: Duration,
    call: impl FnOnce() -> BoxFuture<Result<T, Refused>>,
) -> Result<T, Refused> {
    let failed = || {
        tracing::error!("a channel handler panicked");
        handler_failed("the server failed to handle this")
    };
    let Ok(fut) = std::panic::catch_unwind(AssertUnwindSafe(call)) else {
        return Err(failed());
    };
    match tokio::time::timeout(timeout, AssertUnwindSafe(fut).catch_unwind()).await {
        Ok(Ok(result)) => result,
        Ok(Err(_panic)) => Err(failed()),
        Err(_) => Err(Refused::new(TIMEOUT, "the server took too long")),
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<serde_json::Value, Refused> {
    serde_json::to_value(value).map_err(|e| {
        tracing::error!(error = %e, "a channel handler's result could not be encoded");
        handler_failed("the server failed to encode its answer")
    })
}

fn invalid_data(e: &serde_json::Error) -> Refused {
    Refused::new(INVALID_DATA, format!("data doesn't fit: {e}"))
}

impl<B: Backend> Channels<B> {
    /// Channels over `rooms`, with no rules yet (every topic refused), no handlers, and a
    /// handler timeout of 5 s.
    #[must_use]
    pub fn new(rooms: Rooms<B>) -> Self {
        Self {
            rooms,
            handlers: Arc::new(Handlers {
                rules: Vec::new(),
                publishers: Vec::new(),
                methods: HashMap::new(),
                on_connect: None,
                on_disconnect: None,
                timeout: Duration::from_secs(5),
            }),
        }
    }

    fn with(mut self, f: impl FnOnce(&mut Handlers<B>)) -> Self {
        f(Arc::make_mut(&mut self.handlers));
        self
    }

    /// Adds an authorization rule for the topics `pattern` matches (`"room:*"`, `"*"`, or an
    /// exact name). The first matching rule decides; `Ok(())` allows, a [`Refused`] refuses
    /// with its code. Runs for `subscribe` commands and for the topics a connection asks for
    /// when it connects, on both endpoints.
    #[must_use]
    pub fn authorize<F, Fut>(self, pattern: &str, rule: F) -> Self
    where
        F: Fn(Ctx<B>, SubscribeRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Refused>> + Send + 'static,
    {
        let rule: Arc<AuthorizeFn<B>> = Arc::new(move |ctx, req| Box::pin(rule(ctx, req)));
        let pattern = Pattern::new(pattern);
        self.with(|h| h.rules.push((pattern, rule)))
    }

    /// Allows every topic `pattern` matches, to everyone: shorthand for an
    /// [`authorize`](Self::authorize) rule that always says yes.
    #[must_use]
    pub fn allow(self, pattern: &str) -> Self {
        self.authorize(pattern, |_, _| std::future::ready(Ok(())))
    }

    /// Handles what connections publish to the topics `pattern` matches: the handler gets the
    /// data as `T` and returns what is published instead (as JSON, with the same event name),
    /// or a [`Refused`]. The first matching handler runs.
    #[must_use]
    pub fn on_publish<T, U, F, Fut>(self, pattern: &str, handler: F) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        U: Serialize + Send + 'static,
        F: Fn(Ctx<B>, Inbound<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<U, Refused>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let erased: Arc<PublishFn<B>> = Arc::new(move |ctx, msg: Inbound<serde_json::Value>| {
            let handler = Arc::clone(&handler);
            Box::pin(async move {
                let data = T::deserialize(msg.data).map_err(|e| invalid_data(&e))?;
                let typed = Inbound {
                    topic: msg.topic,
                    event: msg.event,
                    data,
                };
                to_json(&handler(ctx, typed).await?)
            })
        });
        let pattern = Pattern::new(pattern);
        self.with(|h| h.publishers.push((pattern, erased)))
    }

    /// Handles `call`s of `method`: the handler gets the data as `T` and returns a result
    /// (sent as JSON in the reply) or a [`Refused`]. A second handler for the same method
    /// replaces the first.
    #[must_use]
    pub fn on_call<T, R, F, Fut>(self, method: &str, handler: F) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(Ctx<B>, T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, Refused>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let erased: Arc<CallFn<B>> = Arc::new(move |ctx, data: serde_json::Value| {
            let handler = Arc::clone(&handler);
            Box::pin(async move {
                let data = T::deserialize(data).map_err(|e| invalid_data(&e))?;
                to_json(&handler(ctx, data).await?)
            })
        });
        let method = method.to_owned();
        self.with(|h| {
            h.methods.insert(method, erased);
        })
    }

    /// Runs when a connection has joined; may put it in rooms ([`Ctx::subscribe`]) or refuse
    /// it (the endpoint answers 403 and nothing stays joined).
    #[must_use]
    pub fn on_connect<F, Fut>(self, handler: F) -> Self
    where
        F: Fn(Ctx<B>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Refused>> + Send + 'static,
    {
        let handler: Arc<ConnectFn<B>> = Arc::new(move |ctx| Box::pin(handler(ctx)));
        self.with(|h| h.on_connect = Some(handler))
    }

    /// Runs when a connection leaves (the endpoints always leave through
    /// [`Hub::leave`](crate::Hub::leave)), before its rooms are left.
    #[must_use]
    pub fn on_disconnect<F, Fut>(self, handler: F) -> Self
    where
        F: Fn(Ctx<B>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let handler: Arc<DisconnectFn<B>> = Arc::new(move |ctx| Box::pin(handler(ctx)));
        self.with(|h| h.on_disconnect = Some(handler))
    }

    /// How long one handler may take before its command is answered `timeout`. Default: 5 s.
    #[must_use]
    pub fn handler_timeout(self, timeout: Duration) -> Self {
        self.with(|h| h.timeout = timeout)
    }

    /// The rooms underneath, for everything else ([`Rooms::presence`], counts, ...).
    #[must_use]
    pub fn rooms(&self) -> &Rooms<B> {
        &self.rooms
    }

    fn ctx(&self, conn: &Connection) -> Ctx<B> {
        Ctx {
            conn: conn.clone(),
            channels: self.clone(),
        }
    }

    /// Whether `conn` may follow `topic`, by the first matching rule.
    async fn authorized(
        &self,
        conn: &Connection,
        topic: &Topic,
        data: serde_json::Value,
    ) -> Result<(), Refused> {
        if let Some(user) = conn.user_id()
            && topic.as_str().strip_prefix(DIRECT_PREFIX) == Some(user)
        {
            return Ok(());
        }
        let rule = self
            .handlers
            .rules
            .iter()
            .find_map(|(p, rule)| p.matches(topic.as_str()).map(|w| (w.to_owned(), rule)));
        let Some((wildcard, rule)) = rule else {
            return Err(Refused::new(
                FORBIDDEN,
                format!("no rule allows topic {topic}"),
            ));
        };
        let req = SubscribeRequest {
            topic: topic.clone(),
            wildcard,
            data,
        };
        let ctx = self.ctx(conn);
        guarded(self.handlers.timeout, move || rule(ctx, req)).await
    }

    /// What `conn` publishing `publication` to `topic` becomes: checked for membership, then
    /// passed through the topic's publish handler (refused, or rewritten), not yet published.
    async fn prepare(
        &self,
        conn: &Connection,
        topic: &Topic,
        publication: Publication,
    ) -> Result<Publication, HubError> {
        if !self.rooms.rooms_of(conn.id()).contains(topic) {
            return Err(HubError::NotSubscribed(topic.clone()));
        }
        let handler = self
            .handlers
            .publishers
            .iter()
            .find(|(p, _)| p.matches(topic.as_str()).is_some())
            .map(|(_, h)| Arc::clone(h));
        let Some(handler) = handler else {
            return Ok(publication);
        };
        crate::hub::inbound::check_inbound(publication.payload(), usize::MAX)?;
        let msg = Inbound {
            topic: topic.clone(),
            event: publication.event_name().cloned(),
            data: payload_json(publication.payload())?,
        };
        let ctx = self.ctx(conn);
        let out = guarded(self.handlers.timeout, move || handler(ctx, msg))
            .await
            .map_err(HubError::Refused)?;
        let mut replaced =
            Publication::new(json_payload(&out)?).skip_origin(publication.skips_origin());
        if let Some(event) = publication.event_name() {
            replaced = replaced.event_name_checked(event.clone());
        }
        Ok(replaced)
    }

    /// Sends to one connection alone (live-only); see [`Rooms::send_to_connection`].
    ///
    /// # Errors
    ///
    /// As [`Rooms::send_to_connection`].
    pub fn send_to_connection(
        &self,
        conn: ConnectionId,
        publication: impl Into<Publication>,
    ) -> Result<(), HubError> {
        self.rooms.send_to_connection(conn, publication)
    }

    /// Sends to every connection of `user` (resumable); see [`Rooms::send_to_user`].
    ///
    /// # Errors
    ///
    /// As [`Rooms::send_to_user`].
    pub async fn send_to_user(
        &self,
        user: &str,
        publication: impl Into<Publication>,
    ) -> Result<MessageId, HubError> {
        self.rooms.send_to_user(user, publication).await
    }

    /// Publishes to every connection in `topic`; see [`Rooms::broadcast`].
    ///
    /// # Errors
    ///
    /// As [`Rooms::broadcast`].
    pub async fn broadcast(
        &self,
        topic: &str,
        publication: impl Into<Publication>,
    ) -> Result<MessageId, HubError> {
        self.rooms.broadcast(topic, publication).await
    }

    /// Puts a connection in `topic` on its behalf (no rule runs), delivering from `from`; the
    /// connection first gets a `subscribed` message on
    /// [`CONNECTION_TOPIC`] with `{"topic": ..}`.
    ///
    /// # Errors
    ///
    /// As [`Rooms::join_room`].
    pub async fn subscribe(
        &self,
        conn: ConnectionId,
        topic: &str,
        from: Position,
    ) -> Result<(), HubError> {
        let notice = Publication::json(&serde_json::json!({ "topic": topic }))?
            .event_name_checked(EventName::from_static("subscribed"));
        let notice = Message::notice(
            Topic::new(CONNECTION_TOPIC)?,
            MessageId::new(crate::hub::Epoch::random(), 0),
            notice,
        );
        // The notice travels first on the room's own stream: nothing of the room overtakes it.
        self.rooms
            .join_room_with(conn, topic, from, Some(crate::Delivery::Message(notice)))
            .await
    }

    /// Takes a connection out of `topic` on its behalf; it gets an `unsubscribed` message on
    /// [`CONNECTION_TOPIC`]. Returns whether it was in it.
    ///
    /// # Errors
    ///
    /// As [`Rooms::leave_room`].
    pub async fn unsubscribe(&self, conn: ConnectionId, topic: &str) -> Result<bool, HubError> {
        let notice = Publication::json(&serde_json::json!({ "topic": topic }))?
            .event_name_checked(EventName::from_static("unsubscribed"));
        let notice = Message::notice(
            Topic::new(CONNECTION_TOPIC)?,
            MessageId::new(crate::hub::Epoch::random(), 0),
            notice,
        );
        // The notice is the room stream's last delivery: it can't be lost to a full queue, and
        // nothing of the room comes after it.
        self.rooms
            .leave_room_with(conn, topic, Some(crate::Delivery::Message(notice)))
            .await
    }
}

/// The data a client's payload carries, as JSON: JSON text as itself, other text as a string.
fn payload_json(payload: &Payload) -> Result<serde_json::Value, HubError> {
    match payload.as_text() {
        Some(text) => Ok(serde_json::from_str(text)
            .unwrap_or_else(|_| serde_json::Value::String(text.to_owned()))),
        None => Err(HubError::Refused(Refused::new(
            INVALID_DATA,
            "a publish handler takes JSON, not binary",
        ))),
    }
}

/// What a handler returned, as the payload to publish: a JSON string as its text, anything
/// else as JSON text.
fn json_payload(value: &serde_json::Value) -> Result<Payload, HubError> {
    match value {
        serde_json::Value::String(s) => Ok(Payload::text(s.clone())),
        other => Payload::json(other),
    }
}

crate::__delegate_hub! {
    impl[B: Backend] Hub for Channels<B>, to rooms {
        type Subscription = Subscription;

        async fn join(&self, conn: &Connection) -> Result<Subscription, HubError> {
            for (topic, _) in conn.topics() {
                self.authorized(conn, topic, serde_json::Value::Null)
                    .await
                    .map_err(HubError::Refused)?;
            }
            let sub = self.rooms.join(conn).await?;
            if let Some(on_connect) = &self.handlers.on_connect {
                let ctx = self.ctx(conn);
                if let Err(refused) = guarded(self.handlers.timeout, move || on_connect(ctx)).await {
                    self.rooms.leave(conn, sub).await;
                    return Err(HubError::Refused(refused));
                }
            }
            Ok(sub)
        }

        /// A frame of the plain envelope protocol: published to each of the connection's rooms,
        /// through the same publish handlers as a `publish` command, all or nothing: every room's
        /// handler runs first (rooms in name order), and if one refuses, the frame is published
        /// nowhere and the sender gets that refusal. Then it is published room by room, in name
        /// order; a hub error there (a backend failure) stops it: the rooms before it have the
        /// message, the rest don't, and the sender is told the error.
        async fn receive(&self, conn: &Connection, message: Payload) -> Result<(), HubError> {
            let mut rooms = self.rooms.rooms_of(conn.id());
            if rooms.is_empty() {
                return Err(HubError::NotJoined(conn.id()));
            }
            rooms.sort_unstable();
            let mut prepared = Vec::with_capacity(rooms.len());
            for topic in rooms {
                let publication = self
                    .prepare(conn, &topic, Publication::new(message.clone()))
                    .await?;
                prepared.push((topic, publication));
            }
            for (topic, publication) in prepared {
                self.rooms.publish_from(conn, &topic, publication).await?;
            }
            Ok(())
        }

        async fn leave(&self, conn: &Connection, subscription: Subscription) {
            if let Some(on_disconnect) = &self.handlers.on_disconnect {
                let ctx = self.ctx(conn);
                let call = move || -> BoxFuture<Result<(), Refused>> {
                    let fut = on_disconnect(ctx);
                    Box::pin(async move {
                        fut.await;
                        Ok(())
                    })
                };
                // Whatever the hook does (panics, hangs), the connection leaves its rooms below.
                let _ = guarded(self.handlers.timeout, call).await;
            }
            self.rooms.leave(conn, subscription).await;
        }

        async fn add_topic(
            &self,
            conn: &Connection,
            topic: &Topic,
            from: Position,
            data: Option<&serde_json::Value>,
        ) -> Result<(), HubError> {
            let data = data.cloned().unwrap_or(serde_json::Value::Null);
            self.authorized(conn, topic, data)
                .await
                .map_err(HubError::Refused)?;
            self.rooms.add_topic(conn, topic, from, None).await
        }

        async fn remove_topic(&self, conn: &Connection, topic: &Topic) -> Result<bool, HubError> {
            self.rooms.remove_topic(conn, topic).await
        }

        async fn publish_from(
            &self,
            conn: &Connection,
            topic: &Topic,
            publication: Publication,
        ) -> Result<MessageId, HubError> {
            let publication = self.prepare(conn, topic, publication).await?;
            self.rooms.publish_from(conn, topic, publication).await
        }

        async fn call(
            &self,
            conn: &Connection,
            method: &str,
            data: serde_json::Value,
        ) -> Result<serde_json::Value, HubError> {
            let Some(handler) = self.handlers.methods.get(method).map(Arc::clone) else {
                return Err(HubError::Refused(Refused::new(
                    UNKNOWN_METHOD,
                    format!("no method {method:?}"),
                )));
            };
            let ctx = self.ctx(conn);
            guarded(self.handlers.timeout, move || handler(ctx, data))
                .await
                .map_err(HubError::Refused)
        }
    }
}
