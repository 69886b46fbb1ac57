//! A test kit for hubs and [`Channels`](crate::channel::Channels) (Phoenix's `ChannelTest`):
//! in-memory connections that speak the channel protocol's commands to a hub, with no socket
//! and no server. A [`TestClient`] joins the hub as the endpoints do, sends each command
//! through the same parser and dispatch as a WebSocket connection, and hands back the reply's
//! `data` (or its error code as a [`Refused`]); what the hub delivers to it waits on its
//! subscription, to be read with [`recv`](TestClient::recv) and friends.
//!
//! ```
//! use salvo_realtime::channel::{Channels, Inbound, Outcome};
//! use salvo_realtime::error::Refused;
//! use salvo_realtime::testing::TestClient;
//! use salvo_realtime::{Identity, Rooms};
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Refused> {
//! let channels = Channels::new(Rooms::new())
//!     .allow("room:*")
//!     .on_publish("room:*", |_ctx, msg: Inbound<String>| async move {
//!         if msg.data.contains("darn") {
//!             return Err(Refused::new("moderated", "keep it civil"));
//!         }
//!         Ok(Outcome::pass())
//!     });
//! let mut alice = TestClient::connect_as(&channels, Identity::new("alice")).await?;
//! let mut bob = TestClient::connect_as(&channels, Identity::new("bob")).await?;
//! alice.subscribe("room:1").await?;
//! bob.subscribe("room:1").await?;
//!
//! alice.publish("room:1", json!("hello")).await?;
//! let m = bob.recv_message().await;
//! assert_eq!((m.payload().as_text(), m.sender()), (Some("hello"), Some("alice")));
//!
//! let refused = alice.publish("room:1", json!("darn")).await.unwrap_err();
//! assert_eq!(refused.code(), "moderated");
//! bob.assert_no_message().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Time
//!
//! Run tests on tokio's paused clock (`#[tokio::test(start_paused = true)]`, tokio's
//! `test-util` feature): a handler that sleeps, a [`handler_timeout`](crate::channel::Channels::handler_timeout)
//! and [`recv`](TestClient::recv)'s wait then take no real time, and `tokio::time::advance`
//! moves the clock when a test needs to. [`recv`](TestClient::recv) waits at most 5 s of that
//! clock and panics, naming what it waited for, when nothing comes.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::channel::{dispatch, protocol};
use crate::error::{HubError, Refused};
use crate::hub::{Connection, Delivery, Hub, Identity, Message, Publication};

/// How long [`TestClient::recv`] waits for a delivery.
const WAIT: Duration = Duration::from_secs(5);

/// One in-memory connection to a hub; see the [module docs](self).
///
/// Dropping it leaves the hub in the background (as a socket that closes does); call
/// [`disconnect`](Self::disconnect) to wait until it has left (its `on_disconnect` ran).
pub struct TestClient<H: Hub + Clone> {
    hub: H,
    conn: Connection,
    sub: Option<H::Subscription>,
    next_ref: u64,
}

impl<H: Hub + Clone> std::fmt::Debug for TestClient<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestClient")
            .field("connection", &self.conn.id())
            .field("user", &self.conn.user_id())
            .finish_non_exhaustive()
    }
}

impl<H: Hub + Clone> TestClient<H> {
    /// An anonymous connection that names no topic, joined to `hub`.
    ///
    /// # Errors
    ///
    /// The hub's refusal, as the endpoints would answer it (an `on_connect` that refuses).
    pub async fn connect(hub: &H) -> Result<Self, Refused> {
        Self::connect_with(hub, Connection::new()).await
    }

    /// A connection of `identity` (as the endpoint's `identify` would establish it), joined
    /// to `hub`.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub async fn connect_as(hub: &H, identity: Identity) -> Result<Self, Refused> {
        Self::connect_with(hub, Connection::new().authenticated(identity)).await
    }

    /// `conn` joined to `hub`: topics asked for at connect time (as a path or query would),
    /// an identity, an address.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect); an authorization rule refusing a connect-time topic too.
    pub async fn connect_with(hub: &H, conn: Connection) -> Result<Self, Refused> {
        let sub = hub.join(&conn).await.map_err(|e| told(&e))?;
        Ok(Self {
            hub: hub.clone(),
            conn,
            sub: Some(sub),
            next_ref: 0,
        })
    }

    /// The connection as the hub sees it (its id, its [`assigns`](Connection::assigns)).
    #[must_use]
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Sends one channel-protocol command (the `ref` is added) and returns its reply's `data`.
    /// For what the shorthands below don't cover: `last`/`recent` on a subscribe, `echo`
    /// on a publish.
    ///
    /// ```
    /// # use salvo_realtime::{channel::Channels, testing::TestClient, Rooms};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), salvo_realtime::error::Refused> {
    /// # let channels = Channels::new(Rooms::new()).allow("news");
    /// let mut client = TestClient::connect(&channels).await?;
    /// let data = client
    ///     .command(serde_json::json!({"type": "subscribe", "topic": "news", "recent": 10}))
    ///     .await?;
    /// assert_eq!(data["topic"], "news");
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// The reply's error (its code and message), or the parser's refusal of the frame
    /// (`bad_frame`, `unknown_command`, ...).
    ///
    /// # Panics
    ///
    /// If `command` isn't a JSON object.
    pub async fn command(&mut self, mut command: Value) -> Result<Value, Refused> {
        self.next_ref += 1;
        let Some(frame) = command.as_object_mut() else {
            panic!("a command is a JSON object, not {command}");
        };
        frame.insert("ref".to_owned(), json!(self.next_ref));
        let request = protocol::parse(&command.to_string())
            .map_err(|invalid| Refused::new(invalid.code, invalid.message))?;
        let (_, result) = dispatch::handle(&self.hub, &self.conn, request).await;
        result.map_err(|e| told(&e))
    }

    /// Subscribes to `topic`; returns the reply's `data`: `{"topic":..}`, with the join reply
    /// as `"reply"` when the authorization rule gave one.
    ///
    /// # Errors
    ///
    /// As [`command`](Self::command): `forbidden`, a rule's own code, ...
    pub async fn subscribe(&mut self, topic: &str) -> Result<Value, Refused> {
        self.subscribe_with(topic, Value::Null).await
    }

    /// Subscribes to `topic` with `data` for the authorization rule.
    ///
    /// # Errors
    ///
    /// As [`subscribe`](Self::subscribe).
    pub async fn subscribe_with(&mut self, topic: &str, data: Value) -> Result<Value, Refused> {
        self.command(json!({"type": "subscribe", "topic": topic, "data": data}))
            .await
    }

    /// Unsubscribes from `topic`; returns `{"topic":..,"was_subscribed":..}`.
    ///
    /// # Errors
    ///
    /// As [`command`](Self::command).
    pub async fn unsubscribe(&mut self, topic: &str) -> Result<Value, Refused> {
        self.command(json!({"type": "unsubscribe", "topic": topic}))
            .await
    }

    /// Publishes `data` to `topic` (a JSON string travels as its text); returns the reply's
    /// `data`: `{"id":..}`, `"reply"` when a handler answered.
    ///
    /// # Errors
    ///
    /// As [`command`](Self::command): `not_subscribed`, a handler's own code, ...
    pub async fn publish(&mut self, topic: &str, data: Value) -> Result<Value, Refused> {
        self.command(json!({"type": "publish", "topic": topic, "data": data}))
            .await
    }

    /// Publishes `data` to `topic` under the event name `event`.
    ///
    /// # Errors
    ///
    /// As [`publish`](Self::publish); `unknown_event`, `invalid_event`.
    pub async fn push(&mut self, topic: &str, event: &str, data: Value) -> Result<Value, Refused> {
        self.command(json!({"type": "publish", "topic": topic, "event": event, "data": data}))
            .await
    }

    /// Calls the server method `method`; returns its result.
    ///
    /// # Errors
    ///
    /// As [`command`](Self::command): `unknown_method`, the handler's own code, ...
    pub async fn call(&mut self, method: &str, data: Value) -> Result<Value, Refused> {
        self.command(json!({"type": "call", "method": method, "data": data}))
            .await
    }

    /// Sends a plain frame (what a client without the channel protocol sends): published to
    /// every room the connection is in, through their handlers.
    ///
    /// # Errors
    ///
    /// The refusal the endpoint would send as an `error` frame.
    pub async fn send(&mut self, payload: impl Into<Publication>) -> Result<(), Refused> {
        self.hub
            .receive(&self.conn, payload.into())
            .await
            .map_err(|e| told(&e))
    }

    fn sub(&mut self) -> &mut H::Subscription {
        match self.sub.as_mut() {
            Some(sub) => sub,
            None => unreachable!("the subscription is only taken by disconnect, which consumes"),
        }
    }

    /// The next delivery (a message, a presence snapshot, a reset, a lag), waiting at most 5 s
    /// of tokio's clock; `None` if the subscription ended (the server ended the connection).
    ///
    /// # Panics
    ///
    /// If nothing comes within 5 s.
    pub async fn recv(&mut self) -> Option<Delivery> {
        let id = self.conn.id();
        match tokio::time::timeout(WAIT, self.sub().next()).await {
            Ok(delivery) => delivery,
            Err(_) => panic!("connection {id}: no delivery within {WAIT:?}"),
        }
    }

    /// The next message, skipping presence snapshots, presence notices (`presence.*`),
    /// resets and lags.
    ///
    /// # Panics
    ///
    /// If no message comes within 5 s, or the subscription ends.
    pub async fn recv_message(&mut self) -> Message {
        loop {
            match self.recv().await {
                Some(Delivery::Message(m)) if !is_presence(&m) => return m,
                Some(_) => {}
                None => panic!("connection {}: the subscription ended", self.conn.id()),
            }
        }
    }

    /// Every delivery ready now, without waiting (after letting spawned tasks run).
    pub async fn ready(&mut self) -> Vec<Delivery> {
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        let mut out = Vec::new();
        let sub = self.sub();
        while let Some(Some(delivery)) = futures_util::FutureExt::now_or_never(sub.next()) {
            out.push(delivery);
        }
        out
    }

    /// Asserts that no message (presence aside) is ready for this connection.
    ///
    /// # Panics
    ///
    /// If one is, naming it.
    pub async fn assert_no_message(&mut self) {
        let id = self.conn.id();
        for delivery in self.ready().await {
            if let Delivery::Message(m) = delivery
                && !is_presence(&m)
            {
                panic!(
                    "connection {id}: unexpected message {:?}",
                    m.envelope_json()
                );
            }
        }
    }

    /// Leaves the hub (its `on_disconnect` runs) and waits until it has.
    pub async fn disconnect(mut self) {
        if let Some(sub) = self.sub.take() {
            self.hub.leave(&self.conn, sub).await;
        }
    }
}

impl<H: Hub + Clone> Drop for TestClient<H> {
    fn drop(&mut self) {
        let Some(sub) = self.sub.take() else {
            return;
        };
        let (hub, conn) = (self.hub.clone(), self.conn.clone());
        // As a closed socket does: leave in the background. Outside a runtime there is none to
        // run it on, and the hub's own sweep frees what is left.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { hub.leave(&conn, sub).await });
        }
    }
}

fn is_presence(m: &Message) -> bool {
    m.event()
        .is_some_and(|e| e.as_str().starts_with("presence."))
}

/// A hub error as the client is told it: its code and public message.
fn told(e: &HubError) -> Refused {
    let (code, message) = protocol::hub_error(e);
    Refused::new(code, message)
}
