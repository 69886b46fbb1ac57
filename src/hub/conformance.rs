//! A conformance suite for [`Backend`] implementations (feature `conformance`): one set of
//! checks of the contract in [`Backend`]'s docs, run against a backend you build.
//!
//! The crate runs it against [`Local`](crate::backend::Local), the Redis backend and a Redis
//! Cluster; a third-party backend passes it the same way. Each check builds what it needs
//! through your factory (one call per *node*: a backend connected to the same shared store
//! as every other one it made, like one process of a cluster), drives hubs and the
//! [`Backend`] methods directly, and returns a [`Failure`] naming the check and what it
//! saw when the backend breaks the contract:
//!
//! * [`ids_and_order`](Suite::ids_and_order): offsets one apart within one epoch, in
//!   publish order, the same ids for every subscriber; and across two nodes on one store
//!   ([`order_across_nodes`](Suite::order_across_nodes)), the same ids in the same order on
//!   both;
//! * [`resume`](Suite::resume): `After`, `Recent`, `Invalid`, an id of another epoch, an
//!   expired id and one ahead of the log, each with what [`Position`] promises;
//! * [`presence_idempotent`](Suite::presence_idempotent): presence is counted per
//!   (connection, room), adding twice or removing twice changes nothing, announcements come
//!   on the first join and the last leave only, two connections of one user are one member
//!   (also across two nodes, [`presence_across_nodes`](Suite::presence_across_nodes)), and
//!   kept per namespace ([`presence_per_namespace`](Suite::presence_per_namespace));
//! * [`cancellation`](Suite::cancellation): a `Rooms` join and a `presence_add` dropped at
//!   each of their await points (every backend call made to return `Pending` once first,
//!   so that every step is a place to stop) leave nothing behind once the hub has undone
//!   them;
//! * [`idle_expiry`](Suite::idle_expiry): a log nobody follows is freed after the backend's
//!   [`idle_ttl`](Backend::idle_ttl), and a resume afterwards gets its messages or a reset,
//!   never a silent gap.
//!
//! Names are random per run, so the suite may run against a store that other runs use.
//! Remote effects (another node's messages, presence notices) are awaited with a bound,
//! [`patience`](Suite::patience) (5 s by default): a check never hangs.
//!
//! ```
//! use std::time::Duration;
//! use salvo_realtime::backend::{conformance, Local};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // `Local` keeps each node's state to itself: its cross-node checks are skipped. Its effects
//! // are immediate, so a short patience is plenty.
//! let suite = conformance::Suite::new(|| async { Local::new() })
//!     .single_node()
//!     .patience(Duration::from_millis(500));
//! suite.run_all().await.expect("Local conforms");
//! # }
//! ```
//!
//! A remote backend whose nodes share one store runs every check:
//!
//! ```no_run
//! # #[cfg(feature = "redis")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use salvo_realtime::backend::conformance;
//! use salvo_realtime::redis::{RedisBackend, RedisConfig};
//!
//! let config = RedisConfig::new("redis://127.0.0.1:6379");
//! conformance::run_all(move || {
//!     let config = config.clone();
//!     async move { RedisBackend::connect(config).await.expect("redis") }
//! })
//! .await?;
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "redis"))]
//! # fn main() {}
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt};

use super::backend::{Backend, MembersPage, Mirror};
use super::backend::{open_stream, registry_for};
use super::config::HubConfig;
use super::log::{Limits, TopicStream};
use super::{
    Connection, Delivery, Hub, Identity, Message, Position, PubSub, Publication, ResetReason, Rooms,
};
use crate::error::HubError;
use crate::ids::{ConnectionId, Epoch, MessageId, Topic};

/// A check the backend failed: which one, and what it saw.
#[derive(Debug, thiserror::Error)]
#[error("conformance check `{check}` failed: {message}")]
#[non_exhaustive]
pub struct Failure {
    /// The check's name (its method's).
    pub check: &'static str,
    /// What went wrong.
    pub message: String,
}

impl Failure {
    fn new(check: &'static str, message: impl Into<String>) -> Self {
        Self {
            check,
            message: message.into(),
        }
    }
}

/// What a check step returns.
type Step<T> = Result<T, Failure>;

/// Runs every check against the nodes `new_node` makes (all on one shared store): the same as
/// `Suite::new(new_node).run_all()`.
///
/// # Errors
///
/// The first [`Failure`].
pub async fn run_all<B, F, Fut>(new_node: F) -> Result<(), Failure>
where
    B: Backend,
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = B> + Send,
{
    Suite::new(new_node).run_all().await
}

/// The conformance checks, over a factory of nodes: see the [module docs](self).
pub struct Suite<F> {
    new_node: F,
    shared: bool,
    patience: Duration,
}

impl<F> fmt::Debug for Suite<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Suite")
            .field("shared", &self.shared)
            .field("patience", &self.patience)
            .finish_non_exhaustive()
    }
}

impl<B, F, Fut> Suite<F>
where
    B: Backend,
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = B> + Send,
{
    /// The checks over `new_node`, which makes one node's backend per call, every one on the
    /// same shared store.
    #[must_use]
    pub fn new(new_node: F) -> Self {
        Self {
            new_node,
            shared: true,
            patience: Duration::from_secs(5),
        }
    }

    /// Each backend `new_node` makes has a store of its own (as
    /// [`Local`](crate::backend::Local)): the checks across nodes are skipped.
    #[must_use]
    pub fn single_node(mut self) -> Self {
        self.shared = false;
        self
    }

    /// How long a check waits for a remote effect (a message or notice reaching a node, an
    /// undone join settling) before it fails. Default: 5 s.
    #[must_use]
    pub fn patience(mut self, patience: Duration) -> Self {
        self.patience = patience;
        self
    }

    /// Runs every check, in the order of the module docs.
    ///
    /// # Errors
    ///
    /// The first [`Failure`].
    pub async fn run_all(&self) -> Result<(), Failure> {
        self.ids_and_order().await?;
        self.order_across_nodes().await?;
        self.resume().await?;
        self.presence_idempotent().await?;
        self.presence_across_nodes().await?;
        self.presence_per_namespace().await?;
        self.cancellation().await?;
        self.idle_expiry().await
    }

    /// Twenty publishes to a new topic get offsets 1 to 20 of one epoch, in order, and a
    /// subscriber receives exactly those ids in that order.
    ///
    /// # Errors
    ///
    /// A [`Failure`] naming what differed.
    pub async fn ids_and_order(&self) -> Result<(), Failure> {
        const CHECK: &str = "ids_and_order";
        let hub = PubSub::with_backend(HubConfig::new(), (self.new_node)().await);
        let topic = unique("ids");
        let mut sub = hub
            .subscribe(&topic, Position::Live)
            .await
            .map_err(|e| failed(CHECK, "subscribe", &e))?;
        let mut ids = Vec::new();
        for i in 0..20 {
            let id = hub
                .publish(&topic, format!("m{i}"))
                .await
                .map_err(|e| failed(CHECK, "publish", &e))?;
            ids.push(id);
        }
        expect_consecutive(CHECK, &ids, 1)?;
        let got = self.messages(CHECK, &mut sub, ids.len()).await?;
        let got_ids: Vec<MessageId> = got.iter().map(Message::id).collect();
        if got_ids != ids {
            return Err(Failure::new(
                CHECK,
                format!("the subscriber got {got_ids:?}, the publishes returned {ids:?}"),
            ));
        }
        for (i, m) in got.iter().enumerate() {
            if m.payload().as_text() != Some(format!("m{i}").as_str()) {
                return Err(Failure::new(CHECK, format!("message {i} is {m:?}")));
            }
        }
        self.quiet(CHECK, &mut sub).await
    }

    /// Two nodes on one store: publishes from both, one after the other and then at once, get
    /// consecutive ids of one epoch, and a subscriber on each node receives the same ids in the
    /// same order. Skipped for [`single_node`](Self::single_node).
    ///
    /// # Errors
    ///
    /// A [`Failure`] naming what differed.
    pub async fn order_across_nodes(&self) -> Result<(), Failure> {
        const CHECK: &str = "order_across_nodes";
        if !self.shared {
            return Ok(());
        }
        let a = PubSub::with_backend(HubConfig::new(), (self.new_node)().await);
        let b = PubSub::with_backend(HubConfig::new(), (self.new_node)().await);
        let topic = unique("order");
        let mut on_a = a
            .subscribe(&topic, Position::Live)
            .await
            .map_err(|e| failed(CHECK, "subscribe on a", &e))?;
        let mut on_b = b
            .subscribe(&topic, Position::Live)
            .await
            .map_err(|e| failed(CHECK, "subscribe on b", &e))?;
        let mut ids = Vec::new();
        for i in 0..10 {
            let hub = if i % 2 == 0 { &a } else { &b };
            let id = hub
                .publish(&topic, format!("s{i}"))
                .await
                .map_err(|e| failed(CHECK, "publish", &e))?;
            ids.push(id);
        }
        expect_consecutive(CHECK, &ids, 1)?;
        let together = futures_util::future::join_all((0..10).map(|i| {
            let hub = if i % 2 == 0 { &a } else { &b };
            hub.publish(&topic, format!("c{i}"))
        }))
        .await;
        let mut concurrent = Vec::new();
        for id in together {
            concurrent.push(id.map_err(|e| failed(CHECK, "publish", &e))?);
        }
        concurrent.sort_by_key(|id| id.offset());
        expect_consecutive(CHECK, &concurrent, 11)?;
        if concurrent.first().map(|id| id.epoch()) != ids.first().map(|id| id.epoch()) {
            return Err(Failure::new(CHECK, "the epoch changed between publishes"));
        }
        ids.extend(concurrent);
        let seen_a: Vec<MessageId> = self
            .messages(CHECK, &mut on_a, 20)
            .await?
            .iter()
            .map(Message::id)
            .collect();
        let seen_b: Vec<MessageId> = self
            .messages(CHECK, &mut on_b, 20)
            .await?
            .iter()
            .map(Message::id)
            .collect();
        if seen_a != ids || seen_b != ids {
            return Err(Failure::new(
                CHECK,
                format!("published {ids:?}; node a delivered {seen_a:?}, node b {seen_b:?}"),
            ));
        }
        self.quiet(CHECK, &mut on_a).await?;
        self.quiet(CHECK, &mut on_b).await
    }

    /// A topic of ten messages, resumed from each kind of [`Position`]: `After` an id (the
    /// rest, then live), `Recent(3)`, `Invalid`, an id of another epoch, one ahead of the log,
    /// one that left a four-message history (each of the last three with its
    /// [`Reset`](crate::hub::Reset) first); and on another node, `After` an id.
    ///
    /// # Errors
    ///
    /// A [`Failure`] naming the position and what it delivered.
    pub async fn resume(&self) -> Result<(), Failure> {
        // Long on purpose: one log, each resume position checked against it in turn, read top
        // to bottom like the list above; split, the positions would lose their shared log.
        const CHECK: &str = "resume";
        let config = HubConfig::new().history(4);
        let hub = PubSub::with_backend(config.clone(), (self.new_node)().await);
        let topic = unique("resume");
        let mut ids = Vec::new();
        for i in 1..=10 {
            ids.push(
                hub.publish(&topic, format!("m{i}"))
                    .await
                    .map_err(|e| failed(CHECK, "publish", &e))?,
            );
        }
        let epoch = ids[0].epoch();
        let other = Epoch::from_u64(epoch.as_u64() ^ 0x5a5a).unwrap_or(epoch);
        let cases: [(&str, Position, Option<ResetReason>, Vec<u64>); 6] = [
            ("After the 8th", Position::After(ids[7]), None, vec![9, 10]),
            ("Recent(3)", Position::Recent(3), None, vec![8, 9, 10]),
            (
                "Invalid",
                Position::Invalid,
                Some(ResetReason::Invalid),
                vec![7, 8, 9, 10],
            ),
            (
                "After an id of another epoch",
                Position::After(MessageId::new(other, 5)),
                Some(ResetReason::EpochChanged),
                vec![7, 8, 9, 10],
            ),
            (
                "After an id ahead of the log",
                Position::After(MessageId::new(epoch, 50)),
                Some(ResetReason::Ahead),
                vec![7, 8, 9, 10],
            ),
            (
                "After an id that left the history",
                Position::After(ids[1]),
                Some(ResetReason::Expired),
                vec![7, 8, 9, 10],
            ),
        ];
        for (name, from, reset, offsets) in cases {
            let mut sub = hub
                .subscribe(&topic, from)
                .await
                .map_err(|e| failed(CHECK, name, &e))?;
            self.expect_resume(CHECK, name, &mut sub, epoch, reset, &offsets)
                .await?;
        }
        // Live messages follow the replay with the next id.
        let mut sub = hub
            .subscribe(&topic, Position::After(ids[8]))
            .await
            .map_err(|e| failed(CHECK, "After the 9th", &e))?;
        let next = hub
            .publish(&topic, "m11")
            .await
            .map_err(|e| failed(CHECK, "publish", &e))?;
        if next != MessageId::new(epoch, 11) {
            return Err(Failure::new(CHECK, format!("the 11th got {next:?}")));
        }
        self.expect_resume(
            CHECK,
            "After the 9th, then live",
            &mut sub,
            epoch,
            None,
            &[10, 11],
        )
        .await?;
        if self.shared {
            let b = PubSub::with_backend(config, (self.new_node)().await);
            let mut sub = b
                .subscribe(&topic, Position::After(ids[7]))
                .await
                .map_err(|e| failed(CHECK, "After the 8th on another node", &e))?;
            self.expect_resume(
                CHECK,
                "After the 8th on another node",
                &mut sub,
                epoch,
                None,
                &[9, 10, 11],
            )
            .await?;
        }
        Ok(())
    }

    /// Presence per (connection, room) on one node, through the [`Backend`] methods: adding a
    /// connection twice counts it once, removing it twice or removing one never added changes
    /// nothing and never takes the count of another connection of the same user; the first
    /// add and the last remove (only) say so and announce it.
    ///
    /// # Errors
    ///
    /// A [`Failure`] naming the step and what the backend answered or counted.
    pub async fn presence_idempotent(&self) -> Result<(), Failure> {
        const CHECK: &str = "presence_idempotent";
        let node = Node::new((self.new_node)().await);
        let room = topic(CHECK, &unique("presence"))?;
        let mut watch = node.watch(CHECK, &room).await?;
        let alice = Identity::new("alice");
        let (c1, c2, never) = (
            ConnectionId::next(),
            ConnectionId::next(),
            ConnectionId::next(),
        );
        node.add(CHECK, "first add", &room, c1, &alice, true)
            .await?;
        node.add(CHECK, "the same connection again", &room, c1, &alice, false)
            .await?;
        node.expect_members(
            CHECK,
            "after adding one connection twice",
            &room,
            &[("alice", 1)],
        )
        .await?;
        node.add(CHECK, "a second connection", &room, c2, &alice, false)
            .await?;
        node.expect_members(CHECK, "with two connections", &room, &[("alice", 2)])
            .await?;
        node.remove(CHECK, "one of two", &room, c1, &alice, false)
            .await?;
        node.remove(CHECK, "the removed one again", &room, c1, &alice, false)
            .await?;
        node.remove(CHECK, "one never added", &room, never, &alice, false)
            .await?;
        node.expect_members(CHECK, "after removing one twice", &room, &[("alice", 1)])
            .await?;
        node.remove(CHECK, "the last", &room, c2, &alice, true)
            .await?;
        node.remove(CHECK, "the last again", &room, c2, &alice, false)
            .await?;
        node.expect_members(CHECK, "after the last left", &room, &[])
            .await?;
        let notices = node
            .notices_until_sentinel(CHECK, &room, &mut watch, self.patience)
            .await?;
        expect_notices(
            CHECK,
            &notices,
            &[("presence.join", "alice"), ("presence.leave", "alice")],
        )
    }

    /// Presence is kept per namespace, as the [`Backend`] contract says: a member of a room of
    /// one namespace (a `Rooms` hub's `"rooms"`) is no member of the room of the same name in
    /// another (`"direct"`), and removing it there changes nothing here.
    ///
    /// # Errors
    ///
    /// A [`Failure`] naming the step and what the backend answered or counted.
    pub async fn presence_per_namespace(&self) -> Result<(), Failure> {
        const CHECK: &str = "presence_per_namespace";
        let rooms = Node::new((self.new_node)().await);
        let direct = rooms.in_namespace("direct");
        let room = topic(CHECK, &unique("presence"))?;
        let alice = Identity::new("alice");
        let conn = ConnectionId::next();
        rooms
            .add(CHECK, "a member of the room", &room, conn, &alice, true)
            .await?;
        direct
            .expect_members(CHECK, "the same name in another namespace", &room, &[])
            .await?;
        direct
            .remove(CHECK, "removing it there", &room, conn, &alice, false)
            .await?;
        rooms
            .expect_members(CHECK, "after the removal elsewhere", &room, &[("alice", 1)])
            .await?;
        rooms
            .remove(CHECK, "the member leaves", &room, conn, &alice, true)
            .await
    }

    /// Two connections of one user on two nodes are one member: the first add (on one node)
    /// is the first, the second (on the other) is not, removing the first leaves the user
    /// present on both nodes' view, removing the second is the last. Skipped for
    /// [`single_node`](Self::single_node).
    ///
    /// # Errors
    ///
    /// A [`Failure`] naming the step.
    pub async fn presence_across_nodes(&self) -> Result<(), Failure> {
        const CHECK: &str = "presence_across_nodes";
        if !self.shared {
            return Ok(());
        }
        let a = Node::new((self.new_node)().await);
        let b = Node::new((self.new_node)().await);
        let room = topic(CHECK, &unique("across"))?;
        let mut watch = b.watch(CHECK, &room).await?;
        let bob = Identity::new("bob");
        let (on_a, on_b) = (ConnectionId::next(), ConnectionId::next());
        a.add(CHECK, "bob on node a", &room, on_a, &bob, true)
            .await?;
        b.add(CHECK, "bob on node b", &room, on_b, &bob, false)
            .await?;
        for node in [&a, &b] {
            node.expect_members(CHECK, "bob on both nodes", &room, &[("bob", 2)])
                .await?;
        }
        a.remove(CHECK, "bob leaves node a", &room, on_a, &bob, false)
            .await?;
        a.remove(CHECK, "bob leaves node a again", &room, on_a, &bob, false)
            .await?;
        for node in [&a, &b] {
            node.expect_members(CHECK, "bob left node a", &room, &[("bob", 1)])
                .await?;
        }
        b.remove(CHECK, "bob leaves node b", &room, on_b, &bob, true)
            .await?;
        a.expect_members(CHECK, "bob left both", &room, &[]).await?;
        let notices = b
            .notices_until_sentinel(CHECK, &room, &mut watch, self.patience)
            .await?;
        expect_notices(
            CHECK,
            &notices,
            &[("presence.join", "bob"), ("presence.leave", "bob")],
        )
    }

    /// Cancellation at every step. Every backend call is made to return `Pending` once before
    /// it runs, so that each await point of a join is a place to stop; then, for the `n`th
    /// await point, `n` = 0, 1, 2...: a `Rooms` join of a user who also has a lasting
    /// connection in the room is dropped there, and once the hub has undone it the room holds
    /// the lasting connection only (presence, the node's rooms and logs); likewise a
    /// `presence_add` dropped there and then undone with `presence_remove`, as the hub does.
    /// Ends when the join completes before its `n`th await point.
    ///
    /// # Errors
    ///
    /// A [`Failure`] naming the await point and what was left.
    pub async fn cancellation(&self) -> Result<(), Failure> {
        const CHECK: &str = "cancellation";
        let rooms = Rooms::with_backend(HubConfig::new(), Stepped((self.new_node)().await));
        let name = unique("cancel");
        let room = topic(CHECK, &name)?;
        let member = || {
            Connection::new()
                .authenticated(Identity::new("carol"))
                .subscribe(room.clone(), Position::Live)
        };
        let lasting = member();
        let lasting_sub = rooms
            .join(&lasting)
            .await
            .map_err(|e| failed(CHECK, "the lasting join", &e))?;
        for stop in 0..256 {
            let cut = member();
            match cut_at(stop, rooms.join(&cut)).await {
                Some(Ok(sub)) => {
                    rooms.leave(&cut, sub).await;
                    let what = format!("a join left normally after {stop} await points");
                    self.settled(CHECK, &rooms, &name, &what).await?;
                    break;
                }
                Some(Err(e)) => return Err(failed(CHECK, "a join", &e)),
                None => {
                    let what = format!("a join dropped at await point {stop}");
                    self.settled(CHECK, &rooms, &name, &what).await?;
                }
            }
        }
        rooms.leave(&lasting, lasting_sub).await;

        // The same, one level down: the backend's own presence_add, then the hub's undo.
        let node = Node::new(Stepped((self.new_node)().await));
        let carol = Identity::new("carol");
        let lasting = ConnectionId::next();
        node.add(
            CHECK,
            "the lasting connection",
            &room,
            lasting,
            &carol,
            true,
        )
        .await?;
        for stop in 0..256 {
            let conn = ConnectionId::next();
            let add = node
                .backend
                .presence_add(&node.mirror, &room, conn, &carol, None);
            let added = cut_at(stop, add).await;
            if let Some(Err(e)) = &added {
                return Err(failed(CHECK, "presence_add", e));
            }
            node.backend
                .presence_remove(&node.mirror, &room, conn, &carol, None)
                .await
                .map_err(|e| failed(CHECK, "presence_remove after a cut presence_add", &e))?;
            let what = format!("presence_add dropped at await point {stop}, then removed");
            node.settled(CHECK, &room, &what, self.patience).await?;
            if added.is_some() {
                break;
            }
        }
        node.remove(
            CHECK,
            "the lasting connection",
            &room,
            lasting,
            &carol,
            true,
        )
        .await?;
        node.expect_members(CHECK, "after the lasting connection left", &room, &[])
            .await
    }

    /// Waits until the room holds only the lasting connection of the cancellation check:
    /// carol once in presence, one room and one connection on the node.
    async fn settled<S: Backend>(
        &self,
        check: &'static str,
        rooms: &Rooms<S>,
        room: &str,
        what: &str,
    ) -> Step<()> {
        let deadline = tokio::time::Instant::now() + self.patience;
        loop {
            let listed: Vec<(String, usize)> = rooms
                .presence(room)
                .await
                .iter()
                .map(|m| (m.user.to_string(), m.connections))
                .collect();
            let state = (listed, rooms.room_count(), rooms.connection_count());
            if state == (vec![("carol".to_owned(), 1)], 1, 1) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Failure::new(
                    check,
                    format!(
                        "{what}: left (members, rooms, connections) = {state:?}; \
                         expected only the lasting connection"
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A topic nobody follows any more is freed from the node's memory once the backend's
    /// [`idle_ttl`](Backend::idle_ttl) of the hub's is over (here: at once, with an idle TTL
    /// of zero), and one kept (an idle TTL of an hour) still replays; a client resuming
    /// after the topic was freed gets the rest of the messages as they were, or a reset, never
    /// a silent gap or another message at a known id.
    ///
    /// # Errors
    ///
    /// A [`Failure`] naming what the node kept or what the resume delivered.
    pub async fn idle_expiry(&self) -> Result<(), Failure> {
        const CHECK: &str = "idle_expiry";
        for ttl in [Duration::from_secs(3600), Duration::ZERO] {
            let hub = PubSub::with_backend(HubConfig::new().idle_ttl(ttl), (self.new_node)().await);
            let kept = hub.backend().idle_ttl(ttl);
            let topic = unique("idle");
            let sub = hub
                .subscribe(&topic, Position::Live)
                .await
                .map_err(|e| failed(CHECK, "subscribe", &e))?;
            let mut ids = Vec::new();
            for i in 1..=3 {
                ids.push(
                    hub.publish(&topic, format!("m{i}"))
                        .await
                        .map_err(|e| failed(CHECK, "publish", &e))?,
                );
            }
            drop(sub);
            hub.sweep();
            let held = hub.topic_count();
            if kept.is_zero() && held != 0 {
                return Err(Failure::new(
                    CHECK,
                    format!("idle TTL {kept:?}: the node still holds {held} logs"),
                ));
            }
            let mut sub = hub
                .subscribe(&topic, Position::After(ids[0]))
                .await
                .map_err(|e| failed(CHECK, "resume", &e))?;
            let first = self.next(CHECK, &mut sub).await?;
            match first {
                Delivery::Message(m) if m.id() == ids[1] => {
                    let rest = self.messages(CHECK, &mut sub, 1).await?;
                    if rest[0].id() != ids[2] || rest[0].payload().as_text() != Some("m3") {
                        return Err(Failure::new(CHECK, format!("after m2 came {:?}", rest[0])));
                    }
                }
                Delivery::Reset(r) if !kept.is_zero() => {
                    return Err(Failure::new(
                        CHECK,
                        format!("idle TTL {kept:?}: a resume within it got {r:?}"),
                    ));
                }
                Delivery::Reset(r)
                    if matches!(r.reason, ResetReason::EpochChanged | ResetReason::Expired) => {}
                other => {
                    return Err(Failure::new(
                        CHECK,
                        format!("idle TTL {kept:?}: a resume after m1 first got {other:?}"),
                    ));
                }
            }
        }
        Ok(())
    }

    async fn next<S: Stream<Item = Delivery> + Unpin + Send>(
        &self,
        check: &'static str,
        sub: &mut S,
    ) -> Step<Delivery> {
        match tokio::time::timeout(self.patience, sub.next()).await {
            Ok(Some(d)) => Ok(d),
            Ok(None) => Err(Failure::new(check, "the stream ended")),
            Err(_) => Err(Failure::new(
                check,
                format!("nothing delivered within {:?}", self.patience),
            )),
        }
    }

    /// The next `n` messages; anything else first is a failure.
    async fn messages<S: Stream<Item = Delivery> + Unpin + Send>(
        &self,
        check: &'static str,
        sub: &mut S,
        n: usize,
    ) -> Step<Vec<Message>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.next(check, sub).await? {
                Delivery::Message(m) => out.push(m),
                other => {
                    return Err(Failure::new(
                        check,
                        format!("expected a message, got {other:?} after {:?}", ids_of(&out)),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Nothing more arrives for a short while (a tenth of the patience).
    async fn quiet<S: Stream<Item = Delivery> + Unpin + Send>(
        &self,
        check: &'static str,
        sub: &mut S,
    ) -> Step<()> {
        match tokio::time::timeout(self.patience / 10, sub.next()).await {
            Err(_) => Ok(()),
            Ok(extra) => Err(Failure::new(check, format!("then came {extra:?}"))),
        }
    }

    /// A resumed subscription delivers `reset` (if any, with the log's epoch), then the
    /// messages at `offsets` of `epoch`, then nothing.
    async fn expect_resume<S: Stream<Item = Delivery> + Unpin + Send>(
        &self,
        check: &'static str,
        name: &str,
        sub: &mut S,
        epoch: Epoch,
        reset: Option<ResetReason>,
        offsets: &[u64],
    ) -> Step<()> {
        if let Some(reason) = reset {
            match self.next(check, sub).await? {
                Delivery::Reset(r) if r.reason == reason && r.epoch == epoch => {}
                other => {
                    return Err(Failure::new(
                        check,
                        format!("{name}: expected a reset ({reason:?}), got {other:?}"),
                    ));
                }
            }
        }
        let got = self
            .messages(check, sub, offsets.len())
            .await
            .map_err(|f| Failure::new(check, format!("{name}: {}", f.message)))?;
        let expected: Vec<MessageId> = offsets.iter().map(|&o| MessageId::new(epoch, o)).collect();
        if ids_of(&got) != expected {
            return Err(Failure::new(
                check,
                format!(
                    "{name}: delivered {:?}, expected {expected:?}",
                    ids_of(&got)
                ),
            ));
        }
        self.quiet(check, sub)
            .await
            .map_err(|f| Failure::new(check, format!("{name}: {}", f.message)))
    }
}

fn ids_of(messages: &[Message]) -> Vec<MessageId> {
    messages.iter().map(Message::id).collect()
}

/// `ids` are of one epoch with offsets `first`, `first + 1`, ...
fn expect_consecutive(check: &'static str, ids: &[MessageId], first: u64) -> Step<()> {
    let Some(epoch) = ids.first().map(|id| id.epoch()) else {
        return Ok(());
    };
    let expected: Vec<MessageId> = (0..ids.len() as u64)
        .map(|k| MessageId::new(epoch, first + k))
        .collect();
    if ids != expected {
        return Err(Failure::new(
            check,
            format!("ids {ids:?}, expected offsets {first}.. one apart in one epoch"),
        ));
    }
    Ok(())
}

fn expect_notices(
    check: &'static str,
    notices: &[(String, String)],
    expected: &[(&str, &str)],
) -> Step<()> {
    let matches = notices.len() == expected.len()
        && notices
            .iter()
            .zip(expected)
            .all(|((e, u), (ee, uu))| e == ee && u == uu);
    if matches {
        Ok(())
    } else {
        Err(Failure::new(
            check,
            format!("announced {notices:?}, expected {expected:?}"),
        ))
    }
}

fn failed(check: &'static str, what: &str, error: &HubError) -> Failure {
    Failure::new(check, format!("{what}: {error}"))
}

/// A topic name no other run uses.
fn unique(what: &str) -> String {
    format!("conformance-{what}-{:x}", Epoch::random().as_u64())
}

fn topic(check: &'static str, name: &str) -> Step<Topic> {
    Topic::new(name).map_err(|e| Failure::new(check, e.to_string()))
}

/// One node, driven through the [`Backend`] methods with a rooms mirror of its own.
struct Node<B> {
    backend: Arc<B>,
    mirror: Mirror,
}

impl<B: Backend> Node<B> {
    fn new(backend: B) -> Self {
        let backend = Arc::new(backend);
        let mirror = registry_for(Limits::topics(&HubConfig::new()), "rooms", &backend);
        Self { backend, mirror }
    }

    /// The same backend seen through a mirror of another namespace.
    fn in_namespace(&self, namespace: &'static str) -> Self {
        let mirror = registry_for(Limits::topics(&HubConfig::new()), namespace, &self.backend);
        Self {
            backend: Arc::clone(&self.backend),
            mirror,
        }
    }

    /// A live subscription to the room on this node, which receives its presence notices.
    async fn watch(&self, check: &'static str, room: &Topic) -> Step<Pin<Box<TopicStream>>> {
        open_stream(
            &*self.backend,
            &self.mirror,
            room,
            Position::Live,
            ConnectionId::next(),
            None,
            None,
            false,
        )
        .await
        .map(Box::pin)
        .map_err(|e| failed(check, "watching the room", &e))
    }

    /// Waits until the room's presence on this node is carol's lasting connection alone.
    async fn settled(
        &self,
        check: &'static str,
        room: &Topic,
        what: &str,
        patience: Duration,
    ) -> Step<()> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let step = self
                .expect_members(check, what, room, &[("carol", 1)])
                .await;
            if step.is_ok() || tokio::time::Instant::now() > deadline {
                return step;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn add(
        &self,
        check: &'static str,
        step: &str,
        room: &Topic,
        conn: ConnectionId,
        who: &Identity,
        first: bool,
    ) -> Step<()> {
        let announce = notice("presence.join", who);
        let got = self
            .backend
            .presence_add(&self.mirror, room, conn, who, Some(announce))
            .await
            .map_err(|e| failed(check, step, &e))?;
        if got != first {
            return Err(Failure::new(
                check,
                format!("presence_add ({step}) answered {got}, expected {first}"),
            ));
        }
        Ok(())
    }

    async fn remove(
        &self,
        check: &'static str,
        step: &str,
        room: &Topic,
        conn: ConnectionId,
        who: &Identity,
        last: bool,
    ) -> Step<()> {
        let announce = notice("presence.leave", who);
        let got = self
            .backend
            .presence_remove(&self.mirror, room, conn, who, Some(announce))
            .await
            .map_err(|e| failed(check, step, &e))?;
        if got != last {
            return Err(Failure::new(
                check,
                format!("presence_remove ({step}) answered {got}, expected {last}"),
            ));
        }
        Ok(())
    }

    async fn expect_members(
        &self,
        check: &'static str,
        step: &str,
        room: &Topic,
        expected: &[(&str, usize)],
    ) -> Step<()> {
        let MembersPage { members, more } = self
            .backend
            .members(&self.mirror, room, None, 100)
            .await
            .map_err(|e| failed(check, step, &e))?;
        let count = self
            .backend
            .member_count(&self.mirror, room)
            .await
            .map_err(|e| failed(check, step, &e))?;
        let listed: Vec<(&str, usize)> =
            members.iter().map(|m| (&*m.user, m.connections)).collect();
        if listed != expected || more || count != expected.len() {
            return Err(Failure::new(
                check,
                format!(
                    "{step}: members {listed:?} (more: {more}), count {count}; \
                     expected {expected:?}"
                ),
            ));
        }
        Ok(())
    }

    /// Publishes a sentinel to the room, and returns the presence notices delivered before it
    /// (as (event, user)): a backend delivers notices and messages of a room in order.
    async fn notices_until_sentinel<S: Stream<Item = Delivery> + Unpin + Send>(
        &self,
        check: &'static str,
        room: &Topic,
        watch: &mut S,
        patience: Duration,
    ) -> Step<Vec<(String, String)>> {
        self.backend
            .publish(&self.mirror, room, Publication::new("sentinel"))
            .await
            .map_err(|e| failed(check, "publishing the sentinel", &e))?;
        let mut notices = Vec::new();
        loop {
            let next = tokio::time::timeout(patience, watch.next()).await;
            match next {
                Ok(Some(Delivery::Message(m))) if m.event().is_some() => {
                    let user = m.sender().unwrap_or_default().to_owned();
                    notices.push((
                        m.event().map(|e| e.as_str().to_owned()).unwrap_or_default(),
                        user,
                    ));
                }
                Ok(Some(Delivery::Message(m))) if m.payload().as_text() == Some("sentinel") => {
                    return Ok(notices);
                }
                Ok(Some(_)) => {}
                Ok(None) => return Err(Failure::new(check, "the room's stream ended")),
                Err(_) => {
                    return Err(Failure::new(
                        check,
                        format!(
                            "the sentinel did not arrive within {patience:?}; notices: {notices:?}"
                        ),
                    ));
                }
            }
        }
    }
}

/// A presence notice as the hubs send them (the user as its sender).
fn notice(event: &'static str, who: &Identity) -> Publication {
    let payload = serde_json::json!({ "user": who.user_id(), "data": who.user_data() });
    Publication::new(super::Payload::text(payload.to_string()))
        .event_name_checked(crate::ids::EventName::from_static(event))
        .sender(Arc::clone(who.user_arc()))
}

/// Polls `future` until it completes or has returned `Pending` `stop + 1` times, then drops
/// it: `Some(output)` if it completed first.
async fn cut_at<T>(stop: usize, future: impl Future<Output = T>) -> Option<T> {
    let mut future = std::pin::pin!(future);
    let mut pending = 0;
    std::future::poll_fn(|cx| match future.as_mut().poll(cx) {
        Poll::Ready(out) => Poll::Ready(Some(out)),
        Poll::Pending if pending >= stop => Poll::Ready(None),
        Poll::Pending => {
            pending += 1;
            Poll::Pending
        }
    })
    .await
}

/// Returns `Pending` once (waking at once), then `Ready`: a place for a caller to stop.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// A backend whose every call returns `Pending` once before it runs, so that each await
/// point of a hub operation is a place where a cancellation check can drop it.
struct Stepped<B>(B);

impl<B> Stepped<B> {
    fn step() -> YieldOnce {
        YieldOnce(false)
    }
}

impl<B: Backend> Backend for Stepped<B> {
    async fn publish(
        &self,
        mirror: &Mirror,
        topic: &Topic,
        publication: Publication,
    ) -> Result<MessageId, HubError> {
        Self::step().await;
        self.0.publish(mirror, topic, publication).await
    }

    async fn attach(&self, mirror: &Mirror, topic: &Topic) -> Result<(), HubError> {
        Self::step().await;
        self.0.attach(mirror, topic).await
    }

    fn detach(&self, mirror: &Mirror, topic: &Topic) {
        self.0.detach(mirror, topic);
    }

    async fn presence_add(
        &self,
        mirror: &Mirror,
        room: &Topic,
        conn: ConnectionId,
        identity: &Identity,
        announce: Option<Publication>,
    ) -> Result<bool, HubError> {
        Self::step().await;
        self.0
            .presence_add(mirror, room, conn, identity, announce)
            .await
    }

    async fn presence_remove(
        &self,
        mirror: &Mirror,
        room: &Topic,
        conn: ConnectionId,
        identity: &Identity,
        announce: Option<Publication>,
    ) -> Result<bool, HubError> {
        Self::step().await;
        self.0
            .presence_remove(mirror, room, conn, identity, announce)
            .await
    }

    async fn members(
        &self,
        mirror: &Mirror,
        room: &Topic,
        after: Option<&str>,
        limit: usize,
    ) -> Result<MembersPage, HubError> {
        Self::step().await;
        self.0.members(mirror, room, after, limit).await
    }

    async fn member_count(&self, mirror: &Mirror, room: &Topic) -> Result<usize, HubError> {
        Self::step().await;
        self.0.member_count(mirror, room).await
    }

    fn idle_ttl(&self, configured: Duration) -> Duration {
        self.0.idle_ttl(configured)
    }
}
