//! Channels: the server acts on what clients send. Per-topic authorization, publish handlers
//! that refuse, pass or rewrite a message before it reaches the hub, request/reply methods,
//! connect and disconnect hooks, and server-initiated sends, over one socket with any number
//! of topics.
//!
//! [`Channels`] wraps a [`Rooms`] hub and is itself a [`Hub`], so both endpoints serve it:
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
//!   matches decides, with the connection's identity and the request's `data`; a rule may
//!   return a join reply for the subscriber. A topic no rule matches is refused (`forbidden`):
//!   channels are closed by default. The connection's own direct-message log (`@<user>`) needs
//!   no rule when asked for at connect time (a `subscribe` command can't name it: `@` topics
//!   are reserved, `invalid_topic`). A `filter` restricts the topic to the messages whose tags
//!   it lists ([`Filter`](crate::hub::Filter)).
//! * **publish** to a topic: only to a topic the connection is subscribed to (else
//!   `not_subscribed`); the first handler whose pattern matches and whose event name matches
//!   ([`on_event`](Channels::on_event), or [`on_publish`](Channels::on_publish) for any event)
//!   gets the data, typed ([`Inbound`]), and refuses it or says what becomes of it
//!   ([`Outcome`]: publish it, something else, elsewhere, to all but the sender, nothing;
//!   answer the sender). A topic with handlers, none for the message's event, refuses it
//!   (`unknown_event`); a topic without handlers publishes it as sent. The publisher receives
//!   its own message too, unless the command says `"echo": false`; the reply carries the id
//!   and the handler's answer. Event names starting with `presence.` are the server's
//!   (`invalid_event`).
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
//! Two kinds, both reached through the handler's [`Ctx`], so a handler is
//! `|ctx, msg| async move { .. }` with nothing cloned into the closure:
//!
//! * the application's, shared by every handler: [`Channels::with_state`] and
//!   [`Ctx::state`] (a database pool, a session store, a game's world behind a mutex);
//! * each connection's own: [`Ctx::assigns`] (a player's position, a mute list), set in
//!   [`on_connect`](Channels::on_connect) or a rule, read and changed by every later handler
//!   of that connection.
//!
//! Outgoing hooks ([`on_outgoing`](Channels::on_outgoing)) see each message on its way to
//! each subscriber. The [`guide`] maps Phoenix Channels' and socket.io's terms onto all of
//! this, and the crate's `PROTOCOL.md` specifies the wire protocol for client authors.

mod ctx;
mod data;
pub(crate) mod dispatch;
mod outcome;
mod outgoing;
pub(crate) mod protocol;
#[doc = include_str!("guide.md")]
pub mod guide {}

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
use serde_json::Value;

pub use self::ctx::Ctx;
pub use self::data::{Inbound, SubscribeRequest};
pub use self::outcome::{IntoOutcome, Outcome};
pub use self::outgoing::{ChannelSubscription, Outgoing};
pub use crate::hub::Assigns;

use self::outcome::Plan;
use self::outgoing::{HookList, OutgoingFn};
use crate::Hub;
use crate::backend::{Backend, Local};
use crate::error::{HubError, Refused};
use crate::hub::inbound::{check_inbound, check_payload};
use crate::hub::{
    CONNECTION_TOPIC, Connection, DIRECT_PREFIX, InboundPolicy, Message, Payload, Position,
    Publication, Published, Rooms, TopicRequest,
};
use crate::ids::{ConnectionId, EventName, MessageId, Topic};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type AuthorizeFn<B, S> =
    dyn Fn(Ctx<B, S>, SubscribeRequest) -> BoxFuture<Result<Value, Refused>> + Send + Sync;
type PublishFn<B, S> =
    dyn Fn(Ctx<B, S>, Inbound<Payload>) -> BoxFuture<Result<Outcome, Refused>> + Send + Sync;
type CallFn<B, S> = dyn Fn(Ctx<B, S>, Value) -> BoxFuture<Result<Value, Refused>> + Send + Sync;
type ConnectFn<B, S> = dyn Fn(Ctx<B, S>) -> BoxFuture<Result<(), Refused>> + Send + Sync;
type DisconnectFn<B, S> = dyn Fn(Ctx<B, S>) -> BoxFuture<()> + Send + Sync;

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

/// A publish handler: for the topics its pattern matches, and one event name or all.
struct Publisher<B: Backend, S> {
    pattern: Pattern,
    event: Option<EventName>,
    handler: Arc<PublishFn<B, S>>,
}

impl<B: Backend, S> Clone for Publisher<B, S> {
    fn clone(&self) -> Self {
        Self {
            pattern: self.pattern.clone(),
            event: self.event.clone(),
            handler: Arc::clone(&self.handler),
        }
    }
}

/// Which publish handler a message goes to.
enum Route<B: Backend, S> {
    /// No handler covers the topic: published as sent.
    Unhandled,
    /// The topic has handlers, none for this event: refused `unknown_event`.
    UnknownEvent,
    Handler(Arc<PublishFn<B, S>>),
}

/// The handlers, shared by clones of a [`Channels`] until one of them changes.
struct Handlers<B: Backend, S> {
    rules: Vec<(Pattern, Arc<AuthorizeFn<B, S>>)>,
    publishers: Vec<Publisher<B, S>>,
    methods: HashMap<String, Arc<CallFn<B, S>>>,
    on_connect: Option<Arc<ConnectFn<B, S>>>,
    on_disconnect: Option<Arc<DisconnectFn<B, S>>>,
    outgoing: HookList<B, S>,
    timeout: Duration,
}

impl<B: Backend, S> Clone for Handlers<B, S> {
    fn clone(&self) -> Self {
        Self {
            rules: self.rules.clone(),
            publishers: self.publishers.clone(),
            methods: self.methods.clone(),
            on_connect: self.on_connect.clone(),
            on_disconnect: self.on_disconnect.clone(),
            outgoing: Arc::clone(&self.outgoing),
            timeout: self.timeout,
        }
    }
}

impl<B: Backend, S> Handlers<B, S> {
    /// The first handler for `event` on `topic` (one of that event, or one for all events).
    fn route(&self, topic: &Topic, event: Option<&EventName>) -> Route<B, S> {
        let mut covered = false;
        for p in &self.publishers {
            if p.pattern.matches(topic.as_str()).is_none() {
                continue;
            }
            covered = true;
            if p.event.is_none() || p.event.as_ref() == event {
                return Route::Handler(Arc::clone(&p.handler));
            }
        }
        if covered {
            Route::UnknownEvent
        } else {
            Route::Unhandled
        }
    }
}

/// A [`Rooms`] hub with server-side handlers; see the [module docs](self).
///
/// `S` is the application's state ([`with_state`](Self::with_state)), which every handler
/// reads through [`Ctx::state`]. Cloning is cheap and every clone drives the same rooms; a
/// clone's handlers are its own (a builder call on a clone doesn't change the original).
pub struct Channels<B: Backend = Local, S = ()> {
    rooms: Rooms<B>,
    handlers: Arc<Handlers<B, S>>,
    state: Arc<S>,
}

impl<B: Backend, S> Clone for Channels<B, S> {
    fn clone(&self) -> Self {
        Self {
            rooms: self.rooms.clone(),
            handlers: Arc::clone(&self.handlers),
            state: Arc::clone(&self.state),
        }
    }
}

impl<B: Backend, S> fmt::Debug for Channels<B, S> {
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
const UNKNOWN_EVENT: &str = "unknown_event";

/// Every code of this module: with the hub's and the protocol's, the one list the `ws` module
/// docs' table of codes is checked against (`error::tests`).
#[cfg(test)]
pub(crate) const CODES: &[&str] = &[
    FORBIDDEN,
    HANDLER_FAILED,
    TIMEOUT,
    INVALID_DATA,
    UNKNOWN_METHOD,
    UNKNOWN_EVENT,
];

/// The codes of this module a plain client's frame can be refused with (its publish handlers').
#[cfg(test)]
pub(crate) const RECEIVE_CODES: &[&str] = &[HANDLER_FAILED, TIMEOUT, INVALID_DATA, UNKNOWN_EVENT];

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

fn to_json<T: Serialize>(value: &T) -> Result<Value, Refused> {
    serde_json::to_value(value).map_err(|e| {
        tracing::error!(error = %e, "a channel handler's result could not be encoded");
        handler_failed("the server failed to encode its answer")
    })
}

impl<B: Backend> Channels<B> {
    /// Channels over `rooms`, with no application state, no rules yet (every topic refused),
    /// no handlers, and a handler timeout of 5 s.
    #[must_use]
    pub fn new(rooms: Rooms<B>) -> Self {
        Self::with_state(rooms, ())
    }
}

impl<B: Backend, S: Send + Sync + 'static> Channels<B, S> {
    /// Channels over `rooms` whose handlers share `state` (read with [`Ctx::state`]): the way
    /// to give handlers a database pool or a session store without cloning it into each
    /// closure. Otherwise as [`new`](Channels::new).
    ///
    /// ```
    /// use std::collections::HashSet;
    /// use std::sync::Mutex;
    ///
    /// use salvo_realtime::channel::Channels;
    /// use salvo_realtime::error::Refused;
    /// use salvo_realtime::Rooms;
    ///
    /// struct App { banned: Mutex<HashSet<String>> }
    ///
    /// let app = App { banned: Mutex::new(HashSet::from(["mallory".to_owned()])) };
    /// let channels = Channels::with_state(Rooms::new(), app)
    ///     .authorize("room:*", |ctx, _req| async move {
    ///         let user = ctx.user_id().unwrap_or_default();
    ///         match ctx.state().banned.lock() {
    ///             Ok(banned) if !banned.contains(user) => Ok(()),
    ///             _ => Err(Refused::forbidden("banned")),
    ///         }
    ///     });
    /// # drop(channels);
    /// ```
    #[must_use]
    pub fn with_state(rooms: Rooms<B>, state: S) -> Self {
        Self {
            rooms,
            handlers: Arc::new(Handlers {
                rules: Vec::new(),
                publishers: Vec::new(),
                methods: HashMap::new(),
                on_connect: None,
                on_disconnect: None,
                outgoing: Arc::new([]),
                timeout: Duration::from_secs(5),
            }),
            state: Arc::new(state),
        }
    }

    fn with(mut self, f: impl FnOnce(&mut Handlers<B, S>)) -> Self {
        f(Arc::make_mut(&mut self.handlers));
        self
    }

    /// Adds an authorization rule for the topics `pattern` matches (`"room:*"`, `"*"`, or an
    /// exact name). The first matching rule decides: `Err(Refused)` refuses with its code,
    /// `Ok(reply)` allows, and a `reply` that isn't `()` (or `null`) is the join reply: the
    /// `subscribe` command's `ok` reply carries it (Phoenix's `{:ok, reply, socket}`), and a
    /// topic asked for at connect time gets it as a `joined` message on
    /// [`CONNECTION_TOPIC`]. Runs for `subscribe` commands and for the topics a connection
    /// asks for when it connects, on both endpoints. A reply over the hub's payload limit
    /// refuses the subscription (`too_large`).
    #[must_use]
    pub fn authorize<R, F, Fut>(self, pattern: &str, rule: F) -> Self
    where
        R: Serialize + Send + 'static,
        F: Fn(Ctx<B, S>, SubscribeRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, Refused>> + Send + 'static,
    {
        let rule = Arc::new(rule);
        let rule: Arc<AuthorizeFn<B, S>> = Arc::new(move |ctx, req| {
            let fut = rule(ctx, req);
            Box::pin(async move { to_json(&fut.await?) })
        });
        let pattern = Pattern::new(pattern);
        self.with(|h| h.rules.push((pattern, rule)))
    }

    /// Allows every topic `pattern` matches, to everyone: shorthand for an
    /// [`authorize`](Self::authorize) rule that always says yes.
    #[must_use]
    pub fn allow(self, pattern: &str) -> Self {
        self.authorize(pattern, |_, _| std::future::ready(Ok(())))
    }

    /// Handles what connections publish to the topics `pattern` matches, whatever the event
    /// name: the handler gets the data as `T` (see [`Inbound`]) and returns what becomes of
    /// it ([`Outcome`]; a plain `Serialize` value is published instead of what was sent), or a
    /// [`Refused`]. Handlers are tried in the order added, with those of
    /// [`on_event`](Self::on_event): the first whose pattern and event match runs.
    #[must_use]
    pub fn on_publish<T, O, F, Fut>(self, pattern: &str, handler: F) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        O: IntoOutcome + Send + 'static,
        F: Fn(Ctx<B, S>, Inbound<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, Refused>> + Send + 'static,
    {
        self.add_publisher(pattern, None, handler)
    }

    /// Handles what connections publish under the event name `event` to the topics `pattern`
    /// matches (Phoenix's `handle_in(event, ..)`, socket.io's `socket.on(event, ..)`); as
    /// [`on_publish`](Self::on_publish) otherwise. A message whose topic has handlers, none of
    /// them for its event (and no `on_publish` catch-all), is refused `unknown_event`.
    ///
    /// # Panics
    ///
    /// If `event` is not a valid event name (a mistake in the program, not in its input).
    #[must_use]
    #[track_caller]
    pub fn on_event<T, O, F, Fut>(self, pattern: &str, event: &str, handler: F) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        O: IntoOutcome + Send + 'static,
        F: Fn(Ctx<B, S>, Inbound<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, Refused>> + Send + 'static,
    {
        let event = match EventName::new(event) {
            Ok(event) => event,
            Err(e) => panic!("on_event({pattern:?}, {event:?}): {e}"),
        };
        self.add_publisher(pattern, Some(event), handler)
    }

    fn add_publisher<T, O, F, Fut>(
        self,
        pattern: &str,
        event: Option<EventName>,
        handler: F,
    ) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        O: IntoOutcome + Send + 'static,
        F: Fn(Ctx<B, S>, Inbound<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, Refused>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let erased: Arc<PublishFn<B, S>> = Arc::new(move |ctx, msg: Inbound<Payload>| {
            let handler = Arc::clone(&handler);
            Box::pin(async move {
                let data = data::decode::<T>(&msg.data)?;
                Ok(handler(ctx, msg.map(data)).await?.into_outcome())
            })
        });
        let publisher = Publisher {
            pattern: Pattern::new(pattern),
            event,
            handler: erased,
        };
        self.with(|h| h.publishers.push(publisher))
    }

    /// Handles `call`s of `method`: the handler gets the data as `T` and returns a result
    /// (sent as JSON in the reply) or a [`Refused`]. A second handler for the same method
    /// replaces the first.
    #[must_use]
    pub fn on_call<T, R, F, Fut>(self, method: &str, handler: F) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(Ctx<B, S>, T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, Refused>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let erased: Arc<CallFn<B, S>> = Arc::new(move |ctx, data: Value| {
            let handler = Arc::clone(&handler);
            Box::pin(async move {
                let data = data::from_value::<T>(data)?;
                to_json(&handler(ctx, data).await?)
            })
        });
        let method = method.to_owned();
        self.with(|h| {
            h.methods.insert(method, erased);
        })
    }

    /// Runs when a connection has joined; may set its [`assigns`](Ctx::assigns), put it in
    /// rooms ([`Ctx::subscribe`]) or refuse it (the endpoint answers 403 and nothing stays
    /// joined).
    #[must_use]
    pub fn on_connect<F, Fut>(self, handler: F) -> Self
    where
        F: Fn(Ctx<B, S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Refused>> + Send + 'static,
    {
        let handler: Arc<ConnectFn<B, S>> = Arc::new(move |ctx| Box::pin(handler(ctx)));
        self.with(|h| h.on_connect = Some(handler))
    }

    /// Runs when a connection leaves (the endpoints always leave through
    /// [`Hub::leave`]), before its rooms are left.
    #[must_use]
    pub fn on_disconnect<F, Fut>(self, handler: F) -> Self
    where
        F: Fn(Ctx<B, S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let handler: Arc<DisconnectFn<B, S>> = Arc::new(move |ctx| Box::pin(handler(ctx)));
        self.with(|h| h.on_disconnect = Some(handler))
    }

    /// Looks at each message of the topics `pattern` matches on its way to each subscriber
    /// (Phoenix's `handle_out`): the hook passes it, drops it for that subscriber, or sends that
    /// subscriber a rewritten copy ([`Outgoing`]). It runs on the subscriber's connection task,
    /// once per message per subscriber, so keep it quick and synchronous; read the
    /// subscriber's [`assigns`](Ctx::assigns) to decide. Messages that pass are not re-encoded;
    /// a rewritten copy is, for its one subscriber. Presence notices and messages on
    /// [`CONNECTION_TOPIC`] don't go through hooks. The first matching hook decides; one that
    /// panics drops the message for that subscriber.
    ///
    /// ```
    /// use salvo_realtime::channel::{Channels, Outgoing};
    /// use salvo_realtime::Rooms;
    ///
    /// #[derive(Clone)]
    /// struct Muted(Vec<String>);
    ///
    /// // A subscriber doesn't see what the users it muted say.
    /// let channels = Channels::new(Rooms::new()).allow("room:*").on_outgoing("room:*", |ctx, m| {
    ///     let muted = ctx.assigns().get::<Muted>();
    ///     match (muted, m.sender()) {
    ///         (Some(Muted(users)), Some(from)) if users.iter().any(|u| u == from) => Outgoing::Drop,
    ///         _ => Outgoing::Pass,
    ///     }
    /// });
    /// # drop(channels);
    /// ```
    #[must_use]
    pub fn on_outgoing<F>(self, pattern: &str, hook: F) -> Self
    where
        F: Fn(&Ctx<B, S>, &Message) -> Outgoing + Send + Sync + 'static,
    {
        let hook: Arc<OutgoingFn<B, S>> = Arc::new(hook);
        let pattern = Pattern::new(pattern);
        self.with(|h| {
            let mut all = h.outgoing.to_vec();
            all.push((pattern, hook));
            h.outgoing = all.into();
        })
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

    /// The application's state (see [`with_state`](Self::with_state)).
    #[must_use]
    pub fn state(&self) -> &S {
        &self.state
    }

    fn ctx(&self, conn: &Connection) -> Ctx<B, S> {
        // Made on the endpoint's connection before it is cloned, so every handler shares them.
        let _ = conn.assigns();
        Ctx {
            conn: conn.clone(),
            channels: self.clone(),
        }
    }

    /// Whether `conn` may follow `topic`, by the first matching rule, and the rule's join
    /// reply if it has one.
    async fn authorized(
        &self,
        conn: &Connection,
        topic: &Topic,
        data: Value,
    ) -> Result<Option<Value>, HubError> {
        if let Some(user) = conn.user_id()
            && topic.as_str().strip_prefix(DIRECT_PREFIX) == Some(user)
        {
            return Ok(None);
        }
        let rule = self
            .handlers
            .rules
            .iter()
            .find_map(|(p, rule)| p.matches(topic.as_str()).map(|w| (w.to_owned(), rule)));
        let Some((wildcard, rule)) = rule else {
            return Err(HubError::Refused(Refused::new(
                FORBIDDEN,
                format!("no rule allows topic {topic}"),
            )));
        };
        let req = SubscribeRequest {
            topic: topic.clone(),
            wildcard,
            data,
        };
        let ctx = self.ctx(conn);
        let reply = guarded(self.handlers.timeout, move || rule(ctx, req))
            .await
            .map_err(HubError::Refused)?;
        if reply.is_null() {
            return Ok(None);
        }
        // The reply travels in one frame: over the payload limit, the join is refused.
        check_payload(&Payload::json(&reply)?, self.rooms.max_payload())?;
        Ok(Some(reply))
    }

    /// What `conn` sending `sent` to `topic` becomes: checked for membership, then passed
    /// through the topic's publish handler, not yet done.
    async fn prepare(
        &self,
        conn: &Connection,
        topic: &Topic,
        sent: Publication,
    ) -> Result<Plan, HubError> {
        if !self.rooms.rooms_of(conn.id()).contains(topic) {
            return Err(HubError::NotSubscribed(topic.clone()));
        }
        let handler = match self.handlers.route(topic, sent.event_name()) {
            Route::Unhandled => return Ok(Plan::as_sent(topic, sent)),
            Route::UnknownEvent => {
                let event = sent.event_name().map_or("", EventName::as_str);
                return Err(HubError::Refused(Refused::new(
                    UNKNOWN_EVENT,
                    format!("no handler for event {event:?} on {topic}"),
                )));
            }
            Route::Handler(handler) => handler,
        };
        sent.check()?;
        check_inbound(sent.payload(), usize::MAX)?;
        let msg = Inbound {
            topic: topic.clone(),
            event: sent.event_name().cloned(),
            data: sent.payload().clone(),
            received_ms: crate::hub::message::now_ms(),
        };
        let ctx = self.ctx(conn);
        let outcome = guarded(self.handlers.timeout, move || handler(ctx, msg))
            .await
            .map_err(HubError::Refused)?;
        let plan = outcome.resolve(sent, topic).map_err(HubError::Refused)?;
        if let Some(reply) = &plan.reply {
            check_payload(&Payload::json(reply)?, self.rooms.max_payload())?;
        }
        Ok(plan)
    }

    /// Carries out a prepared plan for `conn`, which sent to `topic`.
    async fn commit(
        &self,
        conn: &Connection,
        topic: &Topic,
        plan: Plan,
    ) -> Result<Published, HubError> {
        let mut done = Published::nothing();
        if let Some((to, publication)) = plan.publish {
            if to == *topic {
                done = Hub::publish_from(&self.rooms, conn, topic, publication).await?;
            } else {
                let mut publication = publication.origin(conn.id());
                if let Some(user) = conn.user_id() {
                    publication = publication.sender(user);
                }
                self.rooms.broadcast(to.as_str(), publication).await?;
            }
        }
        done.reply = plan.reply;
        Ok(done)
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
        let notice = connection_notice("subscribed", serde_json::json!({ "topic": topic }))?;
        // The notice travels first on the room's own stream: nothing of the room overtakes it.
        self.rooms
            .join_room_with(
                conn,
                topic,
                from,
                Some(crate::Delivery::Message(notice)),
                None,
            )
            .await
    }

    /// Takes a connection out of `topic` on its behalf; it gets an `unsubscribed` message on
    /// [`CONNECTION_TOPIC`]. Returns whether it was in it.
    ///
    /// # Errors
    ///
    /// As [`Rooms::leave_room`].
    pub async fn unsubscribe(&self, conn: ConnectionId, topic: &str) -> Result<bool, HubError> {
        let notice = connection_notice("unsubscribed", serde_json::json!({ "topic": topic }))?;
        // The notice is the room stream's last delivery: it can't be lost to a full queue, and
        // nothing of the room comes after it.
        self.rooms
            .leave_room_with(conn, topic, Some(crate::Delivery::Message(notice)))
            .await
    }

    /// Tells `conn` alone, on [`CONNECTION_TOPIC`] with `event`, what a handler answered it
    /// where no command reply can carry it (a topic joined at connect time, a plain frame).
    /// A connection that can't take it (gone, its queue full) isn't there to be told.
    fn tell(&self, conn: &Connection, event: &'static str, topic: &Topic, reply: &Value) {
        let data = serde_json::json!({ "topic": topic, "reply": reply });
        let p =
            Publication::new(Payload::from(data)).event_name_checked(EventName::from_static(event));
        if let Err(e) = self.rooms.send_to_connection(conn.id(), p) {
            tracing::debug!(error = %e, connection = %conn.id(), "a handler's answer was not sent");
        }
    }
}

/// A server notice for one connection, on [`CONNECTION_TOPIC`].
fn connection_notice(event: &'static str, data: Value) -> Result<Message, HubError> {
    let notice =
        Publication::new(Payload::from(data)).event_name_checked(EventName::from_static(event));
    Ok(Message::notice(
        Topic::new(CONNECTION_TOPIC)?,
        MessageId::new(crate::hub::Epoch::random(), 0),
        notice,
    ))
}

crate::__delegate_hub! {
    impl[B: Backend, S: Send + Sync + 'static] Hub for Channels<B, S>, to rooms {
        type Subscription = ChannelSubscription<B, S>;

        async fn join(&self, conn: &Connection) -> Result<ChannelSubscription<B, S>, HubError> {
            let mut replies = Vec::new();
            for (topic, _) in conn.topics() {
                if let Some(reply) = self.authorized(conn, topic, Value::Null).await? {
                    replies.push((topic.clone(), reply));
                }
            }
            let sub = self.rooms.join(conn).await?;
            if let Some(on_connect) = &self.handlers.on_connect {
                let ctx = self.ctx(conn);
                if let Err(refused) = guarded(self.handlers.timeout, move || on_connect(ctx)).await {
                    self.rooms.leave(conn, sub).await;
                    return Err(HubError::Refused(refused));
                }
            }
            for (topic, reply) in replies {
                self.tell(conn, "joined", &topic, &reply);
            }
            Ok(ChannelSubscription::new(sub, || self.ctx(conn), &self.handlers.outgoing))
        }

        /// A frame of the plain envelope protocol: published to each of the connection's rooms
        /// under the wrapped [`Rooms`]' [`InboundPolicy`], through the same publish handlers as
        /// a `publish` command, all or nothing: every room's handler runs first (rooms in name
        /// order), and if one refuses, the frame is published nowhere and the sender gets that
        /// refusal. Then it is published room by room, in name order; a hub error there (a
        /// backend failure) stops it: the rooms before it have the message, the rest don't,
        /// and the sender is told the error. What handlers answer the sender comes to it as
        /// `reply` messages on [`CONNECTION_TOPIC`].
        async fn receive(&self, conn: &Connection, message: Publication) -> Result<(), HubError> {
            let policy = self.rooms.inbound_policy();
            if policy == InboundPolicy::Reject {
                return Err(HubError::InboundRejected);
            }
            message.check()?;
            check_inbound(message.payload(), self.rooms.max_payload())?;
            let mut rooms = self.rooms.rooms_of(conn.id());
            if rooms.is_empty() {
                return Err(HubError::NotJoined(conn.id()));
            }
            rooms.sort_unstable();
            let skip = policy == InboundPolicy::PublishExceptSender;
            let mut prepared = Vec::with_capacity(rooms.len());
            for topic in rooms {
                let sent = message.clone().skip_origin(skip);
                let plan = self.prepare(conn, &topic, sent).await?;
                prepared.push((topic, plan));
            }
            for (topic, plan) in prepared {
                if let Some(reply) = self.commit(conn, &topic, plan).await?.reply {
                    self.tell(conn, "reply", &topic, &reply);
                }
            }
            Ok(())
        }

        async fn leave(&self, conn: &Connection, subscription: ChannelSubscription<B, S>) {
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
            self.rooms.leave(conn, subscription.into_inner()).await;
        }

        async fn add_topic(
            &self,
            conn: &Connection,
            mut request: TopicRequest,
        ) -> Result<Option<Value>, HubError> {
            let data = request.data.take().unwrap_or(Value::Null);
            let reply = self.authorized(conn, &request.topic, data).await?;
            self.rooms.add_topic(conn, request).await?;
            Ok(reply)
        }

        async fn remove_topic(&self, conn: &Connection, topic: &Topic) -> Result<bool, HubError> {
            self.rooms.remove_topic(conn, topic).await
        }

        async fn publish_from(
            &self,
            conn: &Connection,
            topic: &Topic,
            publication: Publication,
        ) -> Result<Published, HubError> {
            let plan = self.prepare(conn, topic, publication).await?;
            self.commit(conn, topic, plan).await
        }

        async fn call(
            &self,
            conn: &Connection,
            method: &str,
            data: Value,
        ) -> Result<Value, HubError> {
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
