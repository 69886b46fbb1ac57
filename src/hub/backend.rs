//! The seam between the hubs and where ids, history and presence live.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::log::{Applied, Limits, Membership, MirrorHook, Registry, TopicStream};
use super::{Identity, Member, Message, Position, Publication};
use crate::error::HubError;
use crate::ids::{ConnectionId, Epoch, MessageId, Offset, Topic};

/// Where a hub's ids, history and presence live: this process ([`Local`](crate::backend::Local), the default) or a
/// server shared by many processes (the Redis backend of the `redis` module, feature `redis`).
///
/// [`PubSub`](crate::PubSub) and [`Rooms`](crate::Rooms) take a backend as a type parameter
/// (`PubSub<B: Backend = Local>`) and have **one code path for every backend**: [`Local`](crate::backend::Local) is
/// just one implementation of this trait, written against the same public [`Mirror`] handle a
/// remote backend uses, so a third backend needs no change in the hubs. A backend implements:
///
/// * [`publish`](Backend::publish): give the message its id, append it to the history and hand
///   it to every node that follows the topic;
/// * [`attach`](Backend::attach) and [`detach`](Backend::detach): this node starts or stops
///   following a topic (bring the local log into being and up to date; let go of it);
/// * [`presence_add`](Backend::presence_add), [`presence_remove`](Backend::presence_remove),
///   [`members`](Backend::members) and [`member_count`](Backend::member_count): room
///   membership per user, across nodes;
/// * optionally [`idle_ttl`](Backend::idle_ttl): how long this node keeps a log nobody follows.
///
/// # The mirror
///
/// Each node keeps the local logs of the topics its connections follow, and serves its
/// subscribers from them (replay, resume, lag) without a round trip per message. The hub hands
/// the backend a [`Mirror`] of those logs, which the backend feeds:
///
/// * [`Mirror::append`] assigns the next id in the local log itself: the operation of a
///   backend for which this node is the authority ([`Local`](crate::backend::Local));
/// * [`Mirror::sync`] when attaching and whenever the backend may have missed something (a
///   reconnect): it creates the local log with the remote epoch, catches it up from the remote
///   history, or replaces it if the remote epoch changed (the remote log was lost). A stream of
///   the old log then moves to the new one with a [`Reset`](crate::Delivery::Reset) first (a
///   subscription holding several topics never loses one silently); a room's members stay
///   members of the new log (their holds move with them);
/// * [`Mirror::apply`] for each message published anywhere, in the remote order. It appends the
///   next message, ignores a duplicate, and reports a gap or another epoch without applying
///   anything; the backend then fetches what is missing and calls [`Mirror::sync`];
/// * [`Mirror::announce`] for a presence notice: live-only, no id, no history.
///
/// # The contract
///
/// * **Ids.** One authority per topic assigns them (this node for [`Local`](crate::backend::Local), a script in the
///   remote server for Redis), in the order messages are applied on every node: offsets one
///   apart within an epoch, a new random epoch whenever the log starts anew. Then every node
///   delivers the same ids in the same order, and a client may resume on any node.
/// * **Atomic steps.** Assigning an id and appending to the history is one step. A first join
///   (or last leave) and its announcement are one step, so every node sees a user's joins and
///   leaves in the order they happened.
/// * **When the hubs call.** `attach` before every local subscription (so it must be cheap when
///   already attached), and again if the log was freed before the subscription took hold; a log
///   exists only after `attach` (or `publish`) brought it into being. `detach` after the last
///   local follower went and the log was freed; it runs in drop paths, so it must not block
///   (spawn what it must await, after checking [`Mirror::is_attached`] again).
/// * **Presence is per connection and idempotent.** `presence_add` for a connection already
///   counted, or `presence_remove` for one never counted (or already removed), changes nothing
///   and announces nothing; it never takes away the count of another connection of the same
///   user. One connection's calls are applied in the order they were made.
/// * **Cancellation.** A join may be cut short at any point (a client dropping during the
///   handshake, a timeout): its future is dropped, and `presence_add` may or may not have taken
///   effect. The hub then calls `presence_remove` for the same connection (from a spawned task,
///   after the drop); by the idempotency above it leaves no trace either way.
/// * **Faults.** Methods return [`HubError::Backend`] when the remote side fails or does not
///   answer within the backend's timeout; they never hang. Local connections stay up
///   meanwhile. A backend that loses its subscription must resubscribe by itself and `sync` the
///   topics it follows.
///
/// # Lock order
///
/// No lock is held across an `.await`. Within one synchronous step, locks are taken in this
/// order, and a backend calling into the [`Mirror`] must not hold a lock that a mirror
/// callback ([`detach`](Backend::detach)) takes:
///
/// 1. the backend's own state (for [`Local`](crate::backend::Local): its presence table);
/// 2. the registry's map of logs (read or write);
/// 3. one log's state;
/// 4. the registry's per-owner counts (a leaf).
///
/// `detach` is called with none of the registry's locks held.
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
/// use salvo_realtime::backend::{Backend, MembersPage, Mirror};
/// use salvo_realtime::error::HubError;
/// use salvo_realtime::hub::Epoch;
/// use salvo_realtime::{
///     ConnectionId, Delivery, HubConfig, Identity, Message, MessageId, Position, PubSub,
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
///     async fn presence_add(&self, _: &Mirror, _: &Topic, _: ConnectionId, _: &Identity,
///         _: Option<Publication>) -> Result<bool, HubError> {
///         Ok(false)
///     }
///
///     async fn presence_remove(&self, _: &Mirror, _: &Topic, _: ConnectionId, _: &Identity,
///         _: Option<Publication>) -> Result<bool, HubError> {
///         Ok(false)
///     }
///
///     async fn members(&self, _: &Mirror, _: &Topic, _: Option<&str>, _: usize)
///         -> Result<MembersPage, HubError> {
///         Ok(MembersPage::default())
///     }
///
///     async fn member_count(&self, _: &Mirror, _: &Topic) -> Result<usize, HubError> {
///         Ok(0)
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
    /// Publishes `publication` to `topic` and resolves to the id it got. The message reaches
    /// the local subscribers through the mirror ([`Mirror::append`] or [`Mirror::apply`]).
    ///
    /// # Errors
    ///
    /// [`HubError::Backend`] if the remote side fails or does not answer in time,
    /// [`HubError::TooManyTopics`] if a new local log would pass the hub's limit.
    fn publish(
        &self,
        mirror: &Mirror,
        topic: &Topic,
        publication: Publication,
    ) -> impl Future<Output = Result<MessageId, HubError>> + Send;

    /// This node needs `topic`: bring its local log into being and up to date
    /// ([`Mirror::create`] for an authority, [`Mirror::sync`] after subscribing remotely for a
    /// remote backend). Called before every local subscription; must be cheap when attached.
    ///
    /// # Errors
    ///
    /// [`HubError::Backend`] if the remote side fails or does not answer in time,
    /// [`HubError::TooManyTopics`] if the hub is full.
    fn attach(
        &self,
        mirror: &Mirror,
        topic: &Topic,
    ) -> impl Future<Output = Result<(), HubError>> + Send;

    /// This node no longer follows `topic`: its log was freed. Called from drop paths, so it
    /// must not block; a remote backend unsubscribes in the background, after checking that
    /// the topic was not attached again meanwhile ([`Mirror::is_attached`]).
    fn detach(&self, mirror: &Mirror, topic: &Topic);

    /// Counts the connection `conn` of `identity`'s user in `room` and resolves to whether it
    /// is the user's first there (across all nodes); if so, and `announce` is given, delivers
    /// it to the room live-only ([`Mirror::announce`] on every node) in the same atomic step.
    /// Idempotent per connection; see "The contract".
    ///
    /// # Errors
    ///
    /// [`HubError::Backend`] if the remote side fails or does not answer in time.
    fn presence_add(
        &self,
        mirror: &Mirror,
        room: &Topic,
        conn: ConnectionId,
        identity: &Identity,
        announce: Option<Publication>,
    ) -> impl Future<Output = Result<bool, HubError>> + Send;

    /// Takes the connection `conn` out of `room`'s presence and resolves to whether it was the
    /// user's last there; if so, and `announce` is given, announces it in the same step. A
    /// connection that was never counted changes nothing.
    ///
    /// # Errors
    ///
    /// [`HubError::Backend`] if the remote side fails or does not answer in time.
    fn presence_remove(
        &self,
        mirror: &Mirror,
        room: &Topic,
        conn: ConnectionId,
        identity: &Identity,
        announce: Option<Publication>,
    ) -> impl Future<Output = Result<bool, HubError>> + Send;

    /// One page of `room`'s members across all nodes, ascending by user id: the users whose
    /// id sorts after `after` (from the first when `None`), at most `limit`. A page costs
    /// O(`limit`) (plus a log of the room's size), never O(room).
    ///
    /// # Errors
    ///
    /// [`HubError::Backend`] if the remote side fails or does not answer in time.
    fn members(
        &self,
        mirror: &Mirror,
        room: &Topic,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<MembersPage, HubError>> + Send;

    /// How many users are in `room` across all nodes, in O(1).
    ///
    /// # Errors
    ///
    /// [`HubError::Backend`] if the remote side fails or does not answer in time.
    fn member_count(
        &self,
        mirror: &Mirror,
        room: &Topic,
    ) -> impl Future<Output = Result<usize, HubError>> + Send;

    /// How long this node keeps a log that no local connection follows, given the hub's
    /// [`idle_ttl`](crate::HubConfig::idle_ttl). The default frees it at once: a remote
    /// backend keeps the history, and attaching again fetches it. [`Local`](crate::backend::Local) keeps it for the
    /// configured time, since its log is the only copy.
    fn idle_ttl(&self, configured: Duration) -> Duration {
        let _ = configured;
        Duration::ZERO
    }
}

/// One page of a room's members: see [`Backend::members`].
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct MembersPage {
    /// The members of this page, ascending by user id.
    pub members: Vec<Member>,
    /// Whether more members follow this page.
    pub more: bool,
}

impl MembersPage {
    /// A page of `members` (ascending by user id), with `more` saying whether others follow.
    #[must_use]
    pub fn new(members: Vec<Member>, more: bool) -> Self {
        Self { members, more }
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

    /// Frees the topic's local log if nothing uses it any more: no subscriber, no hold, no
    /// stream about to open, and a history that is empty or past the hub's idle TTL (the rule
    /// the hub's periodic sweep applies). A remote backend calls it when it synced a log for a
    /// caller that went away before using it (a join cut short at an await point), so the log
    /// does not wait for the sweep. Returns whether the log was freed. Calling it on a topic in
    /// use, or with no log, changes nothing.
    #[allow(
        clippy::must_use_candidate,
        reason = "an action; the result is informational"
    )]
    pub fn release(&self, topic: &Topic) -> bool {
        self.registry.remove_if_unused(topic, None)
    }

    /// Whether this node has a log for `topic` (some local connection follows it).
    #[must_use]
    pub fn is_attached(&self, topic: &Topic) -> bool {
        self.registry.contains(topic)
    }

    /// Creates the topic's local log with a fresh random epoch if there is none, and returns
    /// its position (epoch and last offset): how a backend for which this node is the
    /// authority ([`Local`](crate::backend::Local)) attaches.
    ///
    /// # Errors
    ///
    /// [`HubError::TooManyTopics`] if creating the log would pass the hub's
    /// [`max_topics`](crate::HubConfig::max_topics).
    pub fn create(&self, topic: &Topic) -> Result<MessageId, HubError> {
        self.registry.create(topic)
    }

    /// Gives `publication` the next id of the topic's local log (creating the log with a fresh
    /// epoch if needed), appends it to the history and hands it to the local subscribers: how
    /// a backend for which this node is the authority ([`Local`](crate::backend::Local)) publishes.
    ///
    /// # Errors
    ///
    /// [`HubError::TooManyTopics`] if creating the log would pass the hub's
    /// [`max_topics`](crate::HubConfig::max_topics).
    pub fn append(&self, topic: &Topic, publication: Publication) -> Result<MessageId, HubError> {
        self.registry.publish(topic, publication).map(|m| m.id())
    }

    /// Delivers a live-only message (a presence notice) to this node's subscribers of `topic`
    /// as they are at this moment: it gets no id of its own and no place in the history, so it
    /// can't evict a message, keep an idle log alive, or be replayed. Nothing happens if this
    /// node has no log for the topic.
    pub fn announce(&self, topic: &Topic, publication: Publication) {
        self.registry.announce(topic, publication);
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

/// The logs of a hub's namespace: freed logs are reported to the backend
/// ([`Backend::detach`]); a log nobody follows is kept for the backend's
/// [`idle_ttl`](Backend::idle_ttl).
pub(crate) fn registry_for<B: Backend>(
    mut limits: Limits,
    namespace: &'static str,
    backend: &Arc<B>,
) -> Mirror {
    limits.idle_ttl = backend.idle_ttl(limits.idle_ttl);
    let registry = Arc::new_cyclic(|weak: &std::sync::Weak<Registry>| {
        let (weak, backend) = (weak.clone(), Arc::clone(backend));
        let hook: MirrorHook = Box::new(move |topic| {
            if let Some(registry) = weak.upgrade() {
                backend.detach(&Mirror::new(registry, namespace), topic);
            }
        });
        Registry::new(limits, hook)
    });
    Mirror::new(registry, namespace)
}

/// A subscription to one topic, the same for every backend: attach (the backend brings the
/// local log into being and up to date), then subscribe to the local log, again if the log was
/// freed in between. `hold` makes the connection a member that keeps the log (rooms).
#[allow(
    clippy::too_many_arguments,
    reason = "crate-private; each is one piece of the join"
)]
pub(crate) async fn open_stream<B: Backend>(
    backend: &B,
    mirror: &Mirror,
    topic: &Topic,
    from: Position,
    conn: ConnectionId,
    owner: Option<&Arc<str>>,
    left: Option<&Arc<Membership>>,
    hold: bool,
) -> Result<TopicStream, HubError> {
    for _ in 0..3 {
        backend.attach(mirror, topic).await?;
        if let Some(stream) =
            mirror
                .registry()
                .subscribe(topic, from, conn, owner, left.cloned(), hold)?
        {
            return Ok(stream);
        }
    }
    Err(HubError::Backend(
        format!("topic {topic} could not be attached").into(),
    ))
}
