//! Rooms: membership, presence, broadcast, direct messages.
//!
//! This file holds the API ([`Rooms`], its queries and broadcasts, the [`Hub`] impl) and the
//! state's invariants; [`membership`] how a connection enters and leaves a room, and
//! [`cancel`] what undoes an entry cut short.

mod cancel;
mod membership;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Weak};

use crate::sync::Mutex;
use serde_json::json;

use super::backend::{Backend, MembersPage, Mirror};
use super::backend::{open_stream, registry_for};
use super::config::{HubConfig, InboundPolicy};
use super::inbound::{check_inbound, check_publication, inbound_publication};
use super::local::Local;
use super::log::{Limits, Membership};
use super::subscription::{Control, Subscription};
use super::{
    Connection, Delivery, Hub, Identity, Member, Message, Payload, Position, Publication,
    Published, TopicRequest,
};
use crate::error::{HubError, InvalidTopic};
use crate::ids::{ConnectionId, MessageId, Topic};

/// Event name of the message logged when a user's first connection enters a room.
pub const PRESENCE_JOIN: &str = "presence.join";
/// Event name of the message logged when a user's last connection leaves a room.
pub const PRESENCE_LEAVE: &str = "presence.leave";
/// Prefix of the topics of users' direct-message logs; room names can't start with it.
pub const DIRECT_PREFIX: &str = "@";
/// Topic of the messages server code sends to one connection
/// ([`Rooms::send_to_connection`]); room names can't start with `$`.
pub const CONNECTION_TOPIC: &str = "$conn";
/// Prefix reserved for the hub's own topics.
const SYSTEM_PREFIX: &str = "$";
/// Most members in one [`Presence`](crate::hub::Presence) delivery; a bigger room's snapshot comes in several pages.
pub const PRESENCE_PAGE: usize = 256;

/// Rooms with membership and presence: the [`Hub`] for chats, games and collaborative pages.
///
/// * A connection is in the rooms named in its [`Connection::topics`] and any it is put in
///   later with [`join_room`](Rooms::join_room); it may be in up to
///   [`max_subscriptions`](HubConfig::max_subscriptions) rooms.
/// * Each room has a log like a [`PubSub`](crate::PubSub) topic: ids, history, resume.
/// * **Presence is per user**, kept by the hub's [`Backend`] (a table in memory for [`Local`]),
///   and how much of it is told is [`HubConfig::presence_mode`]: the default,
///   [`PresenceMode::Full`](crate::hub::PresenceMode::Full), is described here; [`PresenceMode::Count`](crate::hub::PresenceMode::Count) joins a room of any
///   size in O(1) and tells only the count. Several connections (tabs, devices) of one user
///   are one member.
///   When a user's first connection enters a room, the room's connections get a
///   `presence.join` notice; when their last one leaves, a `presence.leave` notice. Both carry
///   the JSON payload `{"user": .., "data": ..}`. They are live-only
///   ([`Message::is_ephemeral`]): never kept in history, without ids, so they can't evict chat
///   messages, don't keep an empty room alive, and are not replayed. After joining a room (and
///   after its replay) a connection receives the current members instead: one
///   [`Delivery::Presence`], in pages of at most [`PRESENCE_PAGE`] members for a big room. A
///   connection does not receive its own `presence.join`. Anonymous connections are members
///   but not listed.
/// * [`broadcast`](Rooms::broadcast) reaches every connection in a room,
///   [`broadcast_except`](Rooms::broadcast_except) all but one, and
///   [`send_to_user`](Rooms::send_to_user) every connection of one user, whatever rooms they
///   are in (through the user's own log, topic `@<user id>`, resumable too).
/// * After [`leave_room`](Rooms::leave_room) returns, the connection receives nothing more from
///   that room. A room with no members is freed like an idle topic: at once if it holds no
///   history, else after [`idle_ttl`](HubConfig::idle_ttl).
/// * By default a connection's messages are published to all its rooms except back to the
///   sending connection ([`InboundPolicy::PublishExceptSender`]);
///   [`InboundPolicy::Publish`] echoes them to the sender too (so it learns each id). Over the
///   channel protocol a connection publishes to one room at a time, and chooses per publish
///   (`"echo": false`).
/// * With a remote [`Backend`] ([`with_backend`](Self::with_backend)), rooms, presence and
///   direct messages span every node on it: first join and last leave are per user across
///   nodes, and [`presence`](Self::presence) lists everyone. The connection counts
///   ([`room_count`](Self::room_count), [`connection_count`](Self::connection_count)...) are
///   this node's. The presence snapshot after joining is read after the join, so it may
///   already include a join or leave that also arrives as an event (applied in
///   order, they leave the right set). If the remote log of a
///   room is lost (a new epoch: a Redis restarted without its data), the room's connections
///   stay: each gets a [`Delivery::Reset`] for the room, then the new log's messages, and the
///   backend brings their presence back.
/// * One connection's membership changes ([`join`](Hub::join),
///   [`join_room`](Rooms::join_room), [`leave_room`](Rooms::leave_room)) take effect one at a
///   time, in the order they were called: a server-side `join_room` racing the client's own
///   subscribe to the same room leaves it a member once, counted once in presence.
///   [`disconnect`](Rooms::disconnect) doesn't wait: a change still in progress is undone.
///
/// ```
/// use futures_util::StreamExt;
/// use salvo_realtime::{Connection, Delivery, Hub, Identity, Position, Rooms, Topic};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let rooms = Rooms::new();
/// let lobby = Topic::new("lobby")?;
/// let alice = Connection::new()
///     .authenticated(Identity::new("alice"))
///     .subscribe(lobby.clone(), Position::Live);
/// let mut alice_sub = rooms.join(&alice).await?;
///
/// // First comes the presence snapshot: alice alone.
/// let Some(Delivery::Presence(p)) = alice_sub.next().await else { panic!() };
/// assert_eq!(p.members.len(), 1);
///
/// let bob = Connection::new()
///     .authenticated(Identity::new("bob"))
///     .subscribe(lobby, Position::Live);
/// let bob_sub = rooms.join(&bob).await?;
/// // alice sees bob arrive (a live-only notice)...
/// let Some(Delivery::Message(m)) = alice_sub.next().await else { panic!() };
/// assert_eq!(m.event().map(|e| e.as_str()), Some("presence.join"));
/// assert!(m.is_ephemeral());
/// // ...and what bob says.
/// rooms.receive(&bob, "hi".into()).await?;
/// let Some(Delivery::Message(m)) = alice_sub.next().await else { panic!() };
/// assert_eq!((m.sender(), m.payload().as_text()), (Some("bob"), Some("hi")));
///
/// rooms.leave(&bob, bob_sub).await;
/// rooms.leave(&alice, alice_sub).await;
/// assert_eq!(rooms.room_count(), 0);
/// # Ok(())
/// # }
/// ```
pub struct Rooms<B: Backend = Local> {
    inner: Arc<Inner<B>>,
}

impl<B: Backend> Clone for Rooms<B> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<B> {
    rooms: Mirror,
    direct: Mirror,
    backend: Arc<B>,
    /// The joined connections. Lock order: before the registries' locks and the backend's
    /// (nothing is called with it held but the logs' registry for counts); never held across
    /// an `.await`.
    conns: Mutex<HashMap<ConnectionId, ConnEntry>>,
    config: HubConfig,
}

/// A joined connection, as the hub keeps it.
///
/// # Invariants
///
/// * A room is in `rooms` exactly while the connection is a member: its stream of the room is
///   in the subscription (or on its way there through `control`), the room's log holds one
///   hold for it, and the backend counts the connection in the room's presence.
/// * Membership changes of one connection (join, `join_room`, `leave_room`, a reposition) run
///   one at a time, in turn on `changes`: presence is one flag per (connection, room) in the
///   backend, so two overlapping changes of one room could undo each other's flag. A server
///   disconnect doesn't wait its turn: it removes the entry at once, and a change in progress
///   finds the entry gone when it registers, and undoes itself.
struct ConnEntry {
    identity: Option<Identity>,
    rooms: HashMap<Topic, Arc<Membership>>,
    control: Arc<Control>,
    /// Held by the membership change of this connection in progress (an async lock: a change
    /// awaits the backend while it holds its turn; nothing else is held with it).
    changes: Arc<tokio::sync::Mutex<()>>,
}

impl Default for Rooms {
    fn default() -> Self {
        Self::new()
    }
}

fn room_topic(room: &str) -> Result<Topic, HubError> {
    let topic = Topic::new(room)?;
    check_room(&topic)?;
    Ok(topic)
}

fn check_room(topic: &Topic) -> Result<(), HubError> {
    for prefix in [DIRECT_PREFIX, SYSTEM_PREFIX] {
        if topic.as_str().starts_with(prefix) {
            return Err(InvalidTopic::Reserved { prefix }.into());
        }
    }
    Ok(())
}

fn direct_topic(user: &str) -> Result<Topic, HubError> {
    Ok(Topic::new(&format!("{DIRECT_PREFIX}{user}"))?)
}

fn presence_event(event: &'static str, conn: ConnectionId, identity: &Identity) -> Publication {
    let payload = json!({ "user": identity.user_id(), "data": identity.user_data() });
    Publication::new(Payload::text(payload.to_string()))
        .event_name_checked(crate::ids::EventName::from_static(event))
        .sender(Arc::clone(identity.user_arc()))
        .origin(conn)
        .skip_origin(true)
}

impl Rooms {
    /// A hub with the default [`HubConfig`].
    #[must_use]
    pub fn new() -> Self {
        Self::with_config(HubConfig::new())
    }

    /// A hub with the given limits.
    #[must_use]
    pub fn with_config(config: HubConfig) -> Self {
        Self::with_backend(config, Local::default())
    }
}

impl<B: Backend> Rooms<B> {
    /// A hub with the given limits whose rooms, presence and direct messages live in
    /// `backend`: several processes with hubs on one remote backend behave as one hub. See
    /// [`Backend`].
    #[must_use]
    pub fn with_backend(config: HubConfig, backend: B) -> Self {
        let backend = Arc::new(backend);
        let inner = Arc::new(Inner {
            rooms: registry_for(Limits::topics(&config), "rooms", &backend),
            direct: registry_for(Limits::direct(&config), "direct", &backend),
            backend,
            conns: Mutex::new(HashMap::new()),
            config,
        });
        Self { inner }
    }

    /// The backend.
    #[must_use]
    pub fn backend(&self) -> &B {
        &self.inner.backend
    }

    /// Publishes to every connection in `room` and returns the message's id.
    ///
    /// # Errors
    ///
    /// [`HubError::InvalidTopic`] for a bad or reserved room name,
    /// [`HubError::PayloadTooLarge`], [`HubError::TooManyTopics`], [`HubError::Backend`] if
    /// a remote backend fails or times out.
    pub async fn broadcast(
        &self,
        room: &str,
        publication: impl Into<Publication>,
    ) -> Result<MessageId, HubError> {
        let room = room_topic(room)?;
        self.publish_room(&room, publication.into()).await
    }

    /// Publishes to every connection in `room` but `except` (usually the sender).
    ///
    /// # Errors
    ///
    /// As [`broadcast`](Self::broadcast).
    pub async fn broadcast_except(
        &self,
        room: &str,
        except: ConnectionId,
        publication: impl Into<Publication>,
    ) -> Result<MessageId, HubError> {
        let p = publication.into().origin(except).skip_origin(true);
        self.broadcast(room, p).await
    }

    /// Sends to every connection of `user`, in whatever rooms. Retained in the user's direct log
    /// (topic `@<user>`) like room messages, so a reconnecting connection can resume it.
    ///
    /// # Errors
    ///
    /// [`HubError::InvalidTopic`] if `@<user>` is not a valid topic name,
    /// [`HubError::PayloadTooLarge`], [`HubError::Backend`].
    pub async fn send_to_user(
        &self,
        user: &str,
        publication: impl Into<Publication>,
    ) -> Result<MessageId, HubError> {
        let publication = publication.into();
        check_publication(&publication, self.inner.config.max_payload)?;
        let topic = direct_topic(user)?;
        self.inner
            .backend
            .publish(&self.inner.direct, &topic, publication)
            .await
    }

    /// Sends to one connection (on this node) alone: a live-only message on the topic
    /// [`CONNECTION_TOPIC`], not kept anywhere, so it is not resumable (a connection id doesn't
    /// outlive its connection). At most 64 such messages wait for a connection that isn't
    /// reading; past that the send fails rather than queue without bound.
    ///
    /// # Errors
    ///
    /// [`HubError::NotJoined`] if no such connection is joined here,
    /// [`HubError::QueueFull`] if 64 messages already wait for it,
    /// [`HubError::PayloadTooLarge`].
    pub fn send_to_connection(
        &self,
        conn: ConnectionId,
        publication: impl Into<Publication>,
    ) -> Result<(), HubError> {
        let publication = publication.into();
        check_publication(&publication, self.inner.config.max_payload)?;
        let control = {
            let conns = self.inner.conns.lock();
            let entry = conns.get(&conn).ok_or(HubError::NotJoined(conn))?;
            Arc::clone(&entry.control)
        };
        let topic = Topic::new(CONNECTION_TOPIC)?;
        let message = Message::notice(
            topic,
            MessageId::new(super::Epoch::random(), 0),
            publication,
        );
        control
            .push(Delivery::Message(message))
            .map_err(|_| HubError::QueueFull {
                limit: super::subscription::PUSH_CAPACITY,
            })
    }

    /// Puts a joined connection into `room`, delivering from `from`. If it is in the room
    /// already, a `from` other than [`Position::Live`] restarts its delivery there (its
    /// membership is untouched), so a client resuming a room the server had already put it in
    /// still gets what it missed; messages it received meanwhile may come again (the browser
    /// client drops them by id).
    ///
    /// # Errors
    ///
    /// [`HubError::NotJoined`] if the connection isn't joined, [`HubError::InvalidTopic`],
    /// [`HubError::TooManySubscriptions`], [`HubError::TooManyTopics`], [`HubError::Backend`].
    pub async fn join_room(
        &self,
        conn: ConnectionId,
        room: &str,
        from: Position,
    ) -> Result<(), HubError> {
        self.join_room_with(conn, room, from, None, None).await
    }

    /// Takes a connection out of `room`. Returns whether it was in it. When this returns, the
    /// connection receives nothing more from the room.
    ///
    /// # Errors
    ///
    /// [`HubError::NotJoined`] if the connection isn't joined, [`HubError::InvalidTopic`].
    pub async fn leave_room(&self, conn: ConnectionId, room: &str) -> Result<bool, HubError> {
        self.leave_room_with(conn, room, None).await
    }

    /// Ends a connection's subscription from the server side (a kick); it leaves every room.
    /// Returns whether it was joined.
    #[allow(
        clippy::must_use_candidate,
        reason = "an action; the result is informational"
    )]
    pub fn disconnect(&self, conn: ConnectionId) -> bool {
        self.inner.forget(conn)
    }

    /// The connections of `user` joined to this hub (on this node), in no particular order.
    #[must_use]
    pub fn connections_of(&self, user: &str) -> Vec<ConnectionId> {
        self.inner
            .conns
            .lock()
            .iter()
            .filter(|(_, e)| e.identity.as_ref().is_some_and(|i| i.user_id() == user))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Disconnects every connection of `user` (on this node), as [`disconnect`](Self::disconnect)
    /// does for one. Returns how many there were.
    #[allow(
        clippy::must_use_candidate,
        reason = "an action; the result is informational"
    )]
    pub fn disconnect_user(&self, user: &str) -> usize {
        self.connections_of(user)
            .into_iter()
            .filter(|conn| self.inner.forget(*conn))
            .count()
    }

    /// The users in `room`, sorted by user id (across all nodes with a remote backend; empty if
    /// it fails, which is logged). This reads every page: for a big room, use
    /// [`presence_page`](Self::presence_page) or [`member_count`](Self::member_count).
    pub async fn presence(&self, room: &str) -> Vec<Member> {
        let Ok(room) = room_topic(room) else {
            return Vec::new();
        };
        match self.inner.snapshot_of(&room).await {
            Ok(members) => members,
            Err(e) => {
                tracing::warn!(room = %room, error = %e, "presence: backend failed");
                Vec::new()
            }
        }
    }

    /// One page of `room`'s members, sorted by user id: those whose id sorts after `after`
    /// (from the first when `None`), at most `limit`. Costs O(`limit`), whatever the room's size.
    ///
    /// ```
    /// use salvo_realtime::{Connection, Hub, Identity, Position, Rooms, Topic};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let rooms = Rooms::new();
    /// let mut subs = Vec::new();
    /// for user in ["ann", "bob", "cy"] {
    ///     let conn = Connection::new()
    ///         .authenticated(Identity::new(user))
    ///         .subscribe(Topic::new("hall")?, Position::Live);
    ///     subs.push(rooms.join(&conn).await?);
    /// }
    /// let page = rooms.presence_page("hall", None, 2).await?;
    /// assert_eq!(page.members.iter().map(|m| &*m.user).collect::<Vec<_>>(), ["ann", "bob"]);
    /// assert!(page.more);
    /// let rest = rooms.presence_page("hall", Some("bob"), 2).await?;
    /// assert_eq!((rest.members.len(), rest.more), (1, false));
    /// assert_eq!(rooms.member_count("hall").await?, 3);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`HubError::InvalidTopic`] for a bad room name, [`HubError::Backend`] if a remote backend
    /// fails.
    pub async fn presence_page(
        &self,
        room: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<MembersPage, HubError> {
        let room = room_topic(room)?;
        self.inner
            .backend
            .members(&self.inner.rooms, &room, after, limit)
            .await
    }

    /// How many users are in `room` (across all nodes with a remote backend), in O(1).
    /// Anonymous connections are not counted.
    ///
    /// # Errors
    ///
    /// [`HubError::InvalidTopic`] for a bad room name, [`HubError::Backend`] if a remote backend
    /// fails.
    pub async fn member_count(&self, room: &str) -> Result<usize, HubError> {
        let room = room_topic(room)?;
        self.inner
            .backend
            .member_count(&self.inner.rooms, &room)
            .await
    }

    /// The rooms a connection is in.
    #[must_use]
    pub fn rooms_of(&self, conn: ConnectionId) -> Vec<Topic> {
        self.inner
            .conns
            .lock()
            .get(&conn)
            .map(|e| e.rooms.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// How many rooms have at least one member.
    #[must_use]
    pub fn room_count(&self) -> usize {
        self.inner.rooms.registry().held_count()
    }

    /// How many logs the hub holds: rooms with members, idle rooms whose history is retained,
    /// and users' direct logs.
    #[must_use]
    pub fn log_count(&self) -> usize {
        self.inner.rooms.registry().len() + self.inner.direct.registry().len()
    }

    /// How many connections are joined.
    #[must_use]
    pub fn connection_count(&self) -> usize {
        self.inner.conns.lock().len()
    }

    /// The messages the room's history holds now, oldest first.
    #[must_use]
    pub fn history(&self, room: &str) -> Vec<Message> {
        room_topic(room).map_or_else(|_| Vec::new(), |t| self.inner.rooms.registry().history(&t))
    }

    /// One room a connection asked for when it joined: entered, registered, its stream added
    /// to the connection's subscription; undone if the server disconnected it meanwhile.
    async fn join_at_connect(
        &self,
        conn: &Connection,
        control: &Control,
        room: &Topic,
        from: Position,
    ) -> Result<(), HubError> {
        let id = conn.id();
        let owner = conn.owner();
        let (stream, membership) = self
            .enter(
                id,
                conn.identity(),
                owner.as_ref(),
                room,
                from,
                conn.shared_filter(),
            )
            .await?;
        let registered = match self.inner.conns.lock().get_mut(&id) {
            Some(entry) => {
                entry.rooms.insert(room.clone(), Arc::clone(&membership));
                true
            }
            None => false,
        };
        if !registered {
            // Disconnected by the server while joining (a ban racing a reconnect): the
            // membership just added has no entry to be undone through, so undo it here.
            drop(stream);
            self.exit(id, conn.identity(), room, &membership, None);
            return Err(HubError::NotJoined(id));
        }
        control.add(stream);
        Ok(())
    }

    /// The largest payload the hub takes ([`HubConfig::max_payload`]).
    pub(crate) fn max_payload(&self) -> usize {
        self.inner.config.max_payload
    }

    /// What becomes of a plain frame a connection sends: the configured policy, by default
    /// [`InboundPolicy::PublishExceptSender`] (a member isn't sent its own words back).
    pub(crate) fn inbound_policy(&self) -> InboundPolicy {
        (self.inner.config.inbound).unwrap_or(InboundPolicy::PublishExceptSender)
    }

    /// Frees idle rooms and direct logs now instead of at the next periodic check.
    pub fn sweep(&self) {
        self.inner.rooms.registry().sweep();
        self.inner.direct.registry().sweep();
    }

    async fn publish_room(
        &self,
        room: &Topic,
        publication: Publication,
    ) -> Result<MessageId, HubError> {
        check_publication(&publication, self.inner.config.max_payload)?;
        self.inner
            .backend
            .publish(&self.inner.rooms, room, publication)
            .await
    }
}

impl<B: Backend> Hub for Rooms<B> {
    type Subscription = Subscription;

    async fn join(&self, conn: &Connection) -> Result<Subscription, HubError> {
        let limit = self.inner.config.max_subscriptions;
        let own_direct = conn.user_id().map(direct_topic).transpose()?;
        let mut direct_from = Position::Live;
        let mut rooms = Vec::with_capacity(conn.topics().len());
        for (topic, from) in conn.topics() {
            if own_direct.as_ref() == Some(topic) {
                direct_from = *from;
            } else {
                check_room(topic)?;
                rooms.push((topic, *from));
            }
        }
        if rooms.len() > limit {
            return Err(HubError::TooManySubscriptions { limit });
        }
        let control = Arc::new(Control::default());
        // The connection's first membership change is this join: it holds the turn from the
        // moment the entry is visible (to `join_room` from another task, say) until it returns.
        let changes = Arc::new(tokio::sync::Mutex::new(()));
        let _turn = Arc::clone(&changes).try_lock_owned();
        {
            let mut conns = self.inner.conns.lock();
            if conns.contains_key(&conn.id()) {
                return Err(HubError::AlreadyJoined(conn.id()));
            }
            conns.insert(
                conn.id(),
                ConnEntry {
                    identity: conn.identity().cloned(),
                    rooms: HashMap::new(),
                    control: Arc::clone(&control),
                    changes,
                },
            );
        }
        let weak: Weak<Inner<B>> = Arc::downgrade(&self.inner);
        let id = conn.id();
        let on_drop: Box<dyn FnOnce() + Send> = Box::new(move || {
            if let Some(inner) = weak.upgrade() {
                inner.forget(id);
            }
        });
        // From here on, dropping `subscription` undoes everything done so far.
        let mut subscription =
            Subscription::new(Vec::new(), Some(Arc::clone(&control)), Some(on_drop));
        for (room, from) in rooms {
            self.join_at_connect(conn, &control, room, from).await?;
        }
        if let Some(direct) = own_direct {
            let (backend, mirror) = (&*self.inner.backend, &self.inner.direct);
            let stream =
                open_stream(backend, mirror, &direct, direct_from, id, None, None, false).await?;
            control.add(stream);
        }
        // Fold the added streams in now so `topic_count` is right from the start.
        subscription.absorb_added();
        Ok(subscription)
    }

    async fn receive(&self, conn: &Connection, message: Publication) -> Result<(), HubError> {
        // The default a chat expects: a member isn't sent its own words back.
        let policy = self.inbound_policy();
        check_inbound(message.payload(), self.inner.config.max_payload)?;
        let publication = inbound_publication(conn, message, policy)?;
        let rooms = self.rooms_of(conn.id());
        if rooms.is_empty() && !self.inner.conns.lock().contains_key(&conn.id()) {
            return Err(HubError::NotJoined(conn.id()));
        }
        for room in &rooms {
            self.publish_room(room, publication.clone()).await?;
        }
        Ok(())
    }

    async fn leave(&self, conn: &Connection, subscription: Subscription) {
        self.inner.forget(conn.id());
        drop(subscription);
    }

    async fn add_topic(
        &self,
        conn: &Connection,
        request: TopicRequest,
    ) -> Result<Option<serde_json::Value>, HubError> {
        let filter = request.filter.map(Arc::new);
        let (topic, from) = (request.topic, request.from);
        self.join_room_with(conn.id(), topic.as_str(), from, None, filter)
            .await?;
        Ok(None)
    }

    async fn remove_topic(&self, conn: &Connection, topic: &Topic) -> Result<bool, HubError> {
        self.leave_room(conn.id(), topic.as_str()).await
    }

    async fn publish_from(
        &self,
        conn: &Connection,
        topic: &Topic,
        publication: Publication,
    ) -> Result<Published, HubError> {
        publication.check()?;
        check_inbound(publication.payload(), self.inner.config.max_payload)?;
        let member = self
            .inner
            .conns
            .lock()
            .get(&conn.id())
            .map(|entry| entry.rooms.contains_key(topic))
            .ok_or(HubError::NotJoined(conn.id()))?;
        if !member {
            return Err(HubError::NotSubscribed(topic.clone()));
        }
        let mut publication = publication.origin(conn.id());
        if let Some(identity) = conn.identity() {
            publication = publication.sender(Arc::clone(identity.user_arc()));
        }
        self.publish_room(topic, publication)
            .await
            .map(Published::from)
    }
}

#[cfg(all(test, salvo_realtime_shuttle))]
impl<B: Backend> Rooms<B> {
    /// Each joined connection's user and rooms, for the interleaving tests' invariants.
    pub(crate) fn memberships(&self) -> Vec<(ConnectionId, Option<Arc<str>>, Vec<Topic>)> {
        self.inner
            .conns
            .lock()
            .iter()
            .map(|(id, entry)| {
                let user = entry.identity.as_ref().map(|i| Arc::clone(i.user_arc()));
                (*id, user, entry.rooms.keys().cloned().collect())
            })
            .collect()
    }

    /// The rooms' logs: (room, holds, subscribers).
    pub(crate) fn room_logs(&self) -> Vec<(Topic, usize, usize)> {
        let census = self.inner.rooms.registry().census();
        census.into_iter().map(|(t, h, s, _)| (t, h, s)).collect()
    }
}

impl<B: Backend> fmt::Debug for Rooms<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rooms")
            .field("connections", &self.connection_count())
            .field("logs", &self.log_count())
            .finish_non_exhaustive()
    }
}
