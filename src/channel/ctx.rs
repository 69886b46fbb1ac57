//! [`Ctx`]: what a handler knows about the connection it acts for, its state, and the hub.

use std::fmt;

use super::Channels;
use crate::backend::{Backend, Local};
use crate::error::HubError;
use crate::hub::{Assigns, Connection, Identity, Position};
use crate::ids::ConnectionId;

/// What a handler knows about the connection it acts for, the connection's own values
/// ([`assigns`](Self::assigns)), the application's state ([`state`](Self::state)) and a handle
/// to the hub ([`channels`](Self::channels)).
///
/// A `Ctx` is the handler's own (moved in, cheap to clone), so a handler is written
/// `|ctx, msg| async move { .. }` and reaches everything through `ctx`: nothing needs
/// cloning into the closure.
pub struct Ctx<B: Backend = Local, S = ()> {
    pub(super) conn: Connection,
    pub(super) channels: Channels<B, S>,
}

impl<B: Backend, S> Clone for Ctx<B, S> {
    fn clone(&self) -> Self {
        Self {
            conn: self.conn.clone(),
            channels: self.channels.clone(),
        }
    }
}

impl<B: Backend, S> fmt::Debug for Ctx<B, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ctx")
            .field("connection", &self.conn.id())
            .field("user", &self.conn.user_id())
            .finish_non_exhaustive()
    }
}

impl<B: Backend, S: Send + Sync + 'static> Ctx<B, S> {
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

    /// The connection's own values (Phoenix's `assigns`): set them in `on_connect` or an
    /// authorization rule, read and change them in any later handler of this connection.
    /// They live as long as the connection.
    #[must_use]
    pub fn assigns(&self) -> &Assigns {
        self.conn.assigns()
    }

    /// The application's state, given to [`Channels::with_state`] (a database pool, a
    /// session store, a game's world), shared by every handler.
    #[must_use]
    pub fn state(&self) -> &S {
        &self.channels.state
    }

    /// The hub, for server-initiated sends from a handler.
    #[must_use]
    pub fn channels(&self) -> &Channels<B, S> {
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
