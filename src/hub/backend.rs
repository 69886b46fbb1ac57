//! The seam between the hubs and where ids, history and presence live.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Weak};

use super::log::{Applied, Registry};
use super::{
    ConnectionId, Epoch, Identity, Member, Message, MessageId, Offset, Publication, Topic,
};
use crate::error::HubError;

/// Where a hub's ids, history and presence live: this process ([`Local`], the default) or a
/// server shared by many processes (the Redis backend of the `redis` module, feature `redis`).
///
/// [`PubSub`](crate::PubSub) and [`Rooms`](crate::Rooms) take a backend as a type parameter
/// (`PubSub<B: Backend = Local>`), so the in-memory hubs pay nothing for the seam. A remote
/// backend implements only what must cross processes:
///
/// * [`publish`](Backend::publish) assigns the message its id, appends it to the remote history
///   and hands it to every node that follows the topic;
/// * [`attach`](Backend::attach) and [`detach`](Backend::detach): this node starts or stops
///   following a topic (subscribe remotely, bring the local log up to date);
/// * [`presence_add`](Backend::presence_add), [`presence_remove`](Backend::presence_remove) and
///   [`members`](Backend::members): room membership across nodes (the hubs call the
///   per-connection forms, [`presence_add_connection`](Backend::presence_add_connection) and
///   [`presence_remove_connection`](Backend::presence_remove_connection), which a remote
///   backend overrides to make a join cut short undoable: see their "Cancellation").
///
/// # The mirror
///
/// With a remote backend each node keeps a *mirror*: the local logs of the topics its
/// connections follow, a bounded copy of the remote history plus the live fan-out, so local
/// subscribers are served exactly as by the in-memory hubs (replay, resume, lag) without a round
/// trip per message. The hub hands the backend a [`Mirror`] handle; the backend feeds it:
///
/// * [`Mirror::sync`] when attaching and whenever it may have missed something (a reconnect):
///   it creates the local log with the remote epoch, catches it up from the remote history, or
///   replaces it if the remote epoch changed (the remote log was lost). A stream of the old
///   log then moves to the new one with a [`Reset`](crate::Delivery::Reset) first (a
///   subscription holding several topics never loses one silently); [`Rooms`](crate::Rooms)
///   disconnects the room's members instead, so they rejoin the new log's presence.
/// * [`Mirror::apply`] for each message published anywhere, in the remote order. It appends the
///   next message, ignores a duplicate, and reports a gap or another epoch without applying
///   anything; the backend then fetches what is missing and calls [`Mirror::sync`].
///
/// Logs of a mirror are created only by `sync`, and freed as soon as no local connection
/// follows them (the remote side keeps the history); [`detach`](Backend::detach) is called then.
///
/// # Ordering
///
/// Ids must be assigned by one authority per topic (a script in the remote server, say), in the
/// order messages are applied on every node: offsets one apart within an epoch, a new random
/// epoch whenever the remote log starts anew. Then every node delivers the same ids in the same
/// order, and a client may resume on any node.
///
/// # Faults
///
/// Methods return [`HubError::Backend`] when the remote side fails or does not answer within
/// the backend's timeout; they never hang. Local connections stay up meanwhile. A backend that
/// loses its subscription must resubscribe by itself and `sync` the topics it follows.
///
/// # Implementing `Backend`
///
/// A stub backend that keeps its "remote" logs in memory and applies each message at once
/// (a real one receives them from the server's pub/sub):
///
/// ```
/// use std::collections::HashMap;
/// use futures_util::StreamExt;
/// use parking_lot::Mutex;
/// use salvo_realtime::backend::{Backend, Mirror};
/// use salvo_realtime::error::HubError;
/// use salvo_realtime::{
///     Delivery, Epoch, HubConfig, Identity, Member, Message, MessageId, Position, PubSub,
///     Publication, Topic,
/// };
///
/// #[derive(Default)]
/// struct Stub(Mutex<HashMap<Topic, (Epoch, Vec<Message>)>>);
///
/// impl Backend for Stub {
///     async fn publish(&self, mirror: &Mirror, topic: &Topic, p: Publication)
///         -> Result<MessageId, HubError> {
///         let mut logs = self.0.lock();
///         let (epoch, log) = logs.entry(topic.clone()).or_insert((Epoch::random(), Vec::new()));
///         let id = MessageId::new(*epoch, log.len() as u64 + 1);
///         let message = Message::remote(topic.clone(), id, p, 0);
///         log.push(message.clone());
///         mirror.apply(&message); // a real backend gets this from its subscription
///         Ok(id)
///     }
///
///     async fn attach(&self, mirror: &Mirror, topic: &Topic) -> Result<(), HubError> {
///         let mut logs = self.0.lock();
///         let (epoch, log) = logs.entry(topic.clone()).or_insert((Epoch::random(), Vec::new()));
///         mirror.sync(topic, *epoch, log.len() as u64, log)?;
///         Ok(())
///     }
///
///     fn detach(&self, _mirror: &Mirror, _topic: &Topic) {}
///
///     async fn presence_add(&self, _: &Mirror, _: &Topic, _: &Identity, _: Option<Publication>)
///         -> Result<bool, HubError> {
///         Ok(false)
///     }
///
///     async fn presence_remove(&self, _: &Mirror, _: &Topic, _: &Identity, _: Option<Publication>)
///         -> Result<bool, HubError> {
///         Ok(false)
///     }
///
///     async fn members(&self, _: &Mirror, _: &Topic) -> Result<Vec<Member>, HubError> {
///         Ok(Vec::new())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let hub = PubSub::with_backend(HubConfig::new(), Stub::default());
/// let first = hub.publish("news", "one").await?;
/// let mut sub = hub.subscribe("news", Position::After(first)).await?;
/// hub.publish("news", "two").await?;
/// let Some(Delivery::Message(m)) = sub.next().await else { panic!() };
/// assert_eq!((m.id().offset(), m.payload().as_text()), (2, Some("two")));
/// # Ok(())
/// # }
/// ```
pub trait Backend: Send + Sync + 'static {
    /// Whether the hubs keep their logs as mirrors of this backend's (the default, for remote
    /// backends). [`Local`] sets it to `false`: the local logs are then the source of truth,
    /// created on demand, and rooms keep presence in them.
    const MIRRORED: bool = true;

    /// Publishes `publication` to `topic` and resolves to the id it got. The message reaches
    /// the local subscribers through the mirror, like everyone else's.
    ///
    /// # Errors
    ///
    /// [`HubError::Backend`] if the remote side fails or does not answer in time.
    fn publish(
        &self,
        mirror: &Mirror,
        topic: &Topic,
        publication: Publication,
    ) -> impl Future<Output = Result<MessageId, HubError>> + Send;

    /// This node needs `topic`: subscribe to it remotely, then bring the mirror's log up to
    /// date with [`Mirror::sync`] (creating it). Called before every local subscription; must
    /// be cheap when already attached.
    ///
    /// # Errors
    ///
    /// [`HubError::Backend`] if the remote side fails or does not answer in time.
    fn attach(
        &self,
        mirror: &Mirror,
        topic: &Topic,
    ) -> impl Future<Output = Result<(), HubError>> + Send;

    /// This node no longer follows `topic`: its log was freed. Called from drop paths, so it
    /// must not block; a remote backend unsubscribes in the background, after checking that
    /// the topic was not attached again meanwhile ([`Mirror::is_attached`]).
    fn detach(&self, mirror: &Mirror, topic: &Topic);

    /// Counts one more connection of `identity`'s user in `room` and resolves to whether it is
    /// the user's first across all nodes; if so, and `announce` is given, publishes it to the
    /// room in the same atomic step.
    ///
    /// # Errors
    ///
    /// [`HubError::Backend`] if the remote side fails or does not answer in time.
    fn presence_add(
        &self,
        mirror: &Mirror,
        room: &Topic,
        identity: &Identity,
        announce: Option<Publication>,
    ) -> impl Future<Output = Result<bool, HubError>> + Send;

    /// Counts one connection of the user fewer and resolves to whether it was the user's last
    /// across all nodes; if so, and `announce` is given, publishes it in the same step.
    ///
    /// # Errors
    ///
    /// [`HubError::Backend`] if the remote side fails or does not answer in time.
    fn presence_remove(
        &self,
        mirror: &Mirror,
        room: &Topic,
        identity: &Identity,
        announce: Option<Publication>,
    ) -> impl Future<Output = Result<bool, HubError>> + Send;

    /// [`presence_add`](Backend::presence_add) for the connection `conn`: what
    /// [`Rooms`](crate::Rooms) calls. The default forwards to `presence_add`.
    ///
    /// # Cancellation
    ///
    /// A join may be cut short at any point (a client dropping during the handshake, a
    /// timeout): its future is dropped, and this call may or may not have reached the remote
    /// side. `Rooms` then calls [`presence_remove_connection`](Backend::presence_remove_connection)
    /// for the same connection (from a spawned task, after the drop), and it must leave no
    /// trace of the add whether or not the add was applied. So a remote backend makes both
    /// idempotent per connection: adding a connection already counted, or removing one
    /// never counted (or already removed), changes nothing and announces nothing; it never
    /// takes away the count of another connection of the same user. A remote backend must
    /// also apply one connection's calls in the order they were made (one ordered command
    /// connection does that): the removal is issued after the add's future is gone.
    ///
    /// # Errors
    ///
    /// As [`presence_add`](Backend::presence_add).
    fn presence_add_connection(
        &self,
        mirror: &Mirror,
        room: &Topic,
        conn: ConnectionId,
        identity: &Identity,
        announce: Option<Publication>,
    ) -> impl Future<Output = Result<bool, HubError>> + Send {
        let _ = conn;
        self.presence_add(mirror, room, identity, announce)
    }

    /// [`presence_remove`](Backend::presence_remove) for the connection `conn`, which
    /// [`presence_add_connection`](Backend::presence_add_connection) may or may not have
    /// counted (see there: it must then change nothing). The default forwards to
    /// `presence_remove`.
    ///
    /// # Errors
    ///
    /// As [`presence_remove`](Backend::presence_remove).
    fn presence_remove_connection(
        &self,
        mirror: &Mirror,
        room: &Topic,
        conn: ConnectionId,
        identity: &Identity,
        announce: Option<Publication>,
    ) -> impl Future<Output = Result<bool, HubError>> + Send {
        let _ = conn;
        self.presence_remove(mirror, room, identity, announce)
    }

    /// The users in `room` across all nodes, in any order.
    ///
    /// # Errors
    ///
    /// [`HubError::Backend`] if the remote side fails or does not answer in time.
    fn members(
        &self,
        mirror: &Mirror,
        room: &Topic,
    ) -> impl Future<Output = Result<Vec<Member>, HubError>> + Send;
}

/// The in-memory backend, the default of [`PubSub`](crate::PubSub) and
/// [`Rooms`](crate::Rooms): each topic's log in this process assigns its ids and keeps its
/// history, and rooms keep presence next to it.
///
/// ```
/// use salvo_realtime::backend::Local;
/// use salvo_realtime::{HubConfig, PubSub};
///
/// let hub: PubSub<Local> = PubSub::with_backend(HubConfig::new(), Local);
/// # drop(hub);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Local;

impl Backend for Local {
    const MIRRORED: bool = false;

    async fn publish(
        &self,
        mirror: &Mirror,
        topic: &Topic,
        publication: Publication,
    ) -> Result<MessageId, HubError> {
        mirror.registry.publish(topic, publication).map(|m| m.id())
    }

    async fn attach(&self, _mirror: &Mirror, _topic: &Topic) -> Result<(), HubError> {
        Ok(())
    }

    fn detach(&self, _mirror: &Mirror, _topic: &Topic) {}

    async fn presence_add(
        &self,
        mirror: &Mirror,
        room: &Topic,
        identity: &Identity,
        announce: Option<Publication>,
    ) -> Result<bool, HubError> {
        let first = mirror.registry.with_log(room, true, |log| {
            let first = log.state().members.add(Some(identity));
            if let (true, Some(p)) = (first, announce) {
                log.announce(p);
            }
            first
        })?;
        Ok(first.unwrap_or(false))
    }

    async fn presence_remove(
        &self,
        mirror: &Mirror,
        room: &Topic,
        identity: &Identity,
        announce: Option<Publication>,
    ) -> Result<bool, HubError> {
        let last = mirror.registry.with_log(room, false, |log| {
            let last = log.state().members.remove(Some(identity));
            if let (true, Some(p)) = (last, announce) {
                log.announce(p);
            }
            last
        })?;
        Ok(last.unwrap_or(false))
    }

    async fn members(&self, mirror: &Mirror, room: &Topic) -> Result<Vec<Member>, HubError> {
        Ok(mirror
            .registry
            .with_log(room, false, |log| log.state().members.list())?
            .unwrap_or_default())
    }
}

/// A hub's local logs of one namespace, as its [`Backend`] sees them: the handle through which
/// a remote backend keeps them in step with the remote logs. See [`Backend`] ("The mirror").
///
/// Cloning is cheap; clones share the logs. A backend that keeps a mirror in a background
/// task should keep a [`WeakMirror`] so that it doesn't keep the hub's logs alive.
#[derive(Clone)]
pub struct Mirror {
    registry: Arc<Registry>,
    namespace: &'static str,
}

impl Mirror {
    pub(crate) fn new(registry: Arc<Registry>, namespace: &'static str) -> Self {
        Self {
            registry,
            namespace,
        }
    }

    pub(crate) fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Which of its hub's namespaces this is: `"topics"` ([`PubSub`](crate::PubSub)),
    /// `"rooms"` or `"direct"` (users' direct-message logs of [`Rooms`](crate::Rooms)). A
    /// remote backend keeps namespaces apart in its keys.
    #[must_use]
    pub fn namespace(&self) -> &'static str {
        self.namespace
    }

    /// Whether this node has a log for `topic` (some local connection follows it).
    #[must_use]
    pub fn is_attached(&self, topic: &Topic) -> bool {
        self.registry.contains(topic)
    }

    /// The epoch of the topic's local log and the offset of its last message (0 before the
    /// first), or `None` if there is no local log.
    #[must_use]
    pub fn position(&self, topic: &Topic) -> Option<MessageId> {
        self.registry.position(topic)
    }

    /// Applies a message published anywhere to its topic's local log, if it is the next one.
    /// See [`Applied`] for the other outcomes.
    #[allow(
        clippy::must_use_candidate,
        reason = "an action; the outcome matters only for gaps"
    )]
    pub fn apply(&self, message: &Message) -> Applied {
        self.registry.apply(message)
    }

    /// Makes the topic's local log the remote log of `epoch` whose last offset is `last`:
    /// creates it, or catches it up with `history` (the remote history in ascending order;
    /// what it no longer holds is skipped, and subscribers behind see it as lag), or, if the
    /// local log has another epoch, replaces it: its subscribers' streams move to the new log
    /// with a reset first. Returns whether
    /// it replaced a log.
    ///
    /// # Errors
    ///
    /// [`HubError::TooManyTopics`] if creating the log would pass the hub's
    /// [`max_topics`](crate::HubConfig::max_topics).
    pub fn sync(
        &self,
        topic: &Topic,
        epoch: Epoch,
        last: Offset,
        history: &[Message],
    ) -> Result<bool, HubError> {
        self.registry.sync(topic, epoch, last, history)
    }

    /// A handle that doesn't keep the logs alive.
    #[must_use]
    pub fn downgrade(&self) -> WeakMirror {
        WeakMirror {
            registry: Arc::downgrade(&self.registry),
            namespace: self.namespace,
        }
    }
}

impl fmt::Debug for Mirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mirror")
            .field("namespace", &self.namespace)
            .field("topics", &self.registry.len())
            .finish()
    }
}

/// A [`Mirror`] that doesn't keep its hub's logs alive; see [`Mirror::downgrade`].
#[derive(Clone)]
pub struct WeakMirror {
    registry: Weak<Registry>,
    namespace: &'static str,
}

impl WeakMirror {
    /// The mirror, if its hub still exists.
    #[must_use]
    pub fn upgrade(&self) -> Option<Mirror> {
        self.registry.upgrade().map(|registry| Mirror {
            registry,
            namespace: self.namespace,
        })
    }
}

impl fmt::Debug for WeakMirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeakMirror")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}
