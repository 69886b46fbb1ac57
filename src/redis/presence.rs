//! Presence across nodes: joins and leaves, members, and the heartbeat that keeps a node's
//! members alive, reconciles what Redis missed, sweeps dead nodes and renews the topics
//! followers are waiting on.
//!
//! A room's counts live next to its topic (one hash tag), so a join or leave and its
//! announcement (a live-only notice on the room's channel) are one script. The room's users
//! are also kept in a sorted set (all scored 0, so ordered by id) with their connection totals
//! in a hash: counting them is `ZCARD`, a page is `ZRANGE BYLEX` plus two `HMGET`s, so a room
//! of 100,000 members costs a join no more than one of 10. A node's liveness lives in
//! `{p:nodes}`, with the hash of rooms where it may have members. The sweep, run by every node
//! every heartbeat, takes each dead node's rooms (a few at a time): removing its counts and
//! announcing the leaves that follow is one script per room, and the node is forgotten only
//! once every room is done. A sweep that fails part way (Redis busy, a publish refused) is
//! redone by the next one: no leave is lost, none is announced twice.
//!
//! # Invariants
//!
//! * **The node's table is the truth.** [`Members`] holds this node's memberships as the hub
//!   asked for them, in the order it asked: a `presence_add` puts the (room, connection) in
//!   before anything is sent, a `presence_remove` takes it out. Redis holds one field per
//!   membership (`pk`: `node|connection`), so adding or removing twice changes nothing there
//!   either: presence is idempotent per (connection, room), as [`Backend`](crate::backend::Backend)
//!   promises.
//! * **What Redis may have missed is reconciled.** An operation whose outcome is unknown (an
//!   error, a timeout, a future dropped mid-way) marks its room *dirty*; the heartbeat then
//!   makes the room's memberships of this node in Redis equal to the table's, announcing the
//!   joins and leaves that so happen (`RECONCILE`), at least a [`timeout`] after the failure
//!   (so that a request still on its way lands first). So after an outage of any length the
//!   node converges on its true membership; a leave is never lost. Dirty rooms are bounded
//!   ([`DIRTY_MAX`]): past it, the next heartbeat reconciles every room instead. A room whose
//!   log Redis lost (its topic started a new epoch: Redis restored an older snapshot, or a
//!   replica that missed the last writes took over) is marked dirty too, and its listing
//!   unconfirmed: the writes that made this node's presence there, and its listing, may be
//!   gone with the log, while the node's liveness (and so its incarnation) survived.
//! * **Reconciling races nothing.** Every change takes a sequence number under the table's
//!   lock and writes it with the membership; a reconcile sends the room's snapshot with the
//!   next number (its *mark*), keeps the memberships numbered from the mark on (changes made
//!   after the snapshot, whose own scripts count them), and afterwards removes again the
//!   snapshot's memberships that left meanwhile. A leave removes only a membership numbered
//!   below its own number, so a reordered leave never takes away a later join.
//! * **Liveness never waits.** The beat that refreshes the node's liveness runs on its own
//!   clock, beside the rest of the heartbeat (reconciling, pruning, renewing, sweeping: the
//!   *upkeep*), never after it: however long the upkeep takes, the node is not declared dead
//!   meanwhile. The upkeep reconciles [`CONCURRENCY`] rooms at a time, and starts new ones for
//!   about one heartbeat per round; a reconcile of every room goes on over as many as it
//!   needs.
//! * **A node that Redis lost starts a new incarnation.** Its id in Redis is
//!   `<node>.<incarnation>`. When the beat finds the node's liveness gone (Redis lost it, or
//!   the node was declared dead and swept), the node takes the next incarnation and, a
//!   [`timeout`] later, reconciles every room it has members in: a sweep of the old
//!   incarnation still running elsewhere can't remove the new one's counts, and the node
//!   evicts its old incarnations itself once that is done (their liveness may be gone with
//!   Redis's data). Until then its beats keep the old incarnations alive too: no other node
//!   sweeps their members (announcing them leaving, then joining again as the reconcile
//!   goes on) however long the reconcile takes, and all are swept if the node dies.
//! * **A membership is counted under the incarnation that lists its room.** A join or a
//!   reconcile lists the room and counts its memberships under one incarnation; if the
//!   node switched to a new one before the count was sent, the room is listed under the new
//!   one first. (A join whose script was already on its way when the node switched is
//!   counted under the old incarnation, swept if the node dies; the node reconciles that room
//!   at its next heartbeat.)
//! * **A room with members on this node is in its room set** (`rs`, which the sweep of a dead
//!   node reads) before any of its memberships is counted: a join lists it unless the table
//!   knows the listing landed ([`Listing::confirmed`], set only once Redis answered). The
//!   heartbeat prunes rooms without members for two beats; each listing carries a generation
//!   and a prune removes only the generation it saw, so a prune racing a join never takes
//!   the room out from under it.
//!
//! Lock: `Shared::members` (a `parking_lot` mutex), never held across an await, taken alone.
//!
//! [`timeout`]: super::RedisConfig::timeout

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::lua::MEMBERS_MAX;
use super::wire::encode_body;
use super::{Failure, Shared, millis, presence_publication, within};
use crate::error::HubError;
use crate::hub::backend::Mirror;
use crate::hub::{Identity, Member, PRESENCE_JOIN, PRESENCE_LEAVE, Publication};
use crate::ids::{ConnectionId, Topic};

/// Script calls a heartbeat runs at once (reconciles, evictions, renewals of idle topics).
const CONCURRENCY: usize = 16;

/// Most rooms kept dirty one by one; past it, the next heartbeat reconciles every room.
pub(super) const DIRTY_MAX: usize = 10_000;

/// Old incarnations kept for the node to evict itself; past it the oldest is left to the
/// other nodes' sweep (or to Redis having lost it).
const RETIRED_MAX: usize = 64;

/// The namespaces whose rooms a node's room set may name (those of the crate's hubs: a
/// [`Mirror`] is only made by them).
const NAMESPACES: [&str; 3] = ["rooms", "direct", "topics"];

/// A room of one namespace: presence is kept per namespace, as the
/// [`Backend`](crate::backend::Backend) contract asks (a `Rooms` hub's rooms are in `rooms`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Place {
    pub(super) ns: &'static str,
    pub(super) room: Topic,
}

impl Place {
    pub(super) fn new(ns: &'static str, room: &Topic) -> Self {
        Self {
            ns,
            room: room.clone(),
        }
    }

    /// Its field in a node's room set: `<namespace>:<room>`.
    fn field(&self) -> String {
        format!("{}:{}", self.ns, self.room)
    }

    /// A room-set field read back; `None` for a namespace no hub of this crate has.
    fn from_field(field: &str) -> Option<Self> {
        let (ns, room) = field.split_once(':')?;
        let ns = NAMESPACES.into_iter().find(|n| *n == ns)?;
        Some(Self {
            ns,
            room: Topic::new(room).ok()?,
        })
    }
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.ns, self.room)
    }
}

/// This node's memberships and what Redis may lack of them. See the module's invariants.
#[derive(Default)]
pub(super) struct Members {
    /// Room -> its memberships on this node.
    rooms: HashMap<Place, Room>,
    /// The next sequence number.
    seq: u64,
    /// The current incarnation.
    incarnation: u64,
    /// Whether a heartbeat has registered the current incarnation's liveness (its first beat
    /// finds none: that is no loss).
    registered: bool,
    /// Rooms in this node's room set in Redis, or on their way there.
    listed: HashMap<Place, Listing>,
    /// Rooms whose memberships in Redis may differ from `rooms`.
    dirty: HashMap<Place, Dirty>,
    /// Reconcile every room (a new incarnation, or too many dirty ones) once this time has
    /// come; with `scan`, also the rooms of the node's room set in Redis.
    everything: Option<(Instant, bool)>,
    /// The round of reconciling every room in progress, spread over heartbeats.
    full: Option<Full>,
    /// Earlier incarnations to evict from Redis; the heartbeat keeps them alive until then.
    retired: Vec<u64>,
}

/// A round of reconciling every room: what it has yet to do.
struct Full {
    /// Tells this round from a later one (a new incarnation starts over).
    id: u64,
    /// When it began: it covers the requests for a full reconcile made until then.
    began: Instant,
    /// The rooms still to reconcile (each leaves once reconciled).
    rooms: HashSet<Place>,
}

/// One room's memberships on this node.
#[derive(Default, Clone)]
struct Room {
    /// Connection -> its membership.
    conns: HashMap<u64, Membership>,
    /// Whether the hub announces joins and leaves in this room (its last call said so).
    announce: bool,
}

#[derive(Clone)]
struct Membership {
    user: Arc<str>,
    /// The user's data, as JSON (empty if none).
    data: String,
    /// The sequence number of the join.
    seq: u64,
}

/// A room's entry in the node's room set.
pub(super) struct Listing {
    /// The value written with the room (a sequence number): a prune removes only this one.
    generation: u64,
    /// Redis answered the write: joins needn't list the room again.
    confirmed: bool,
    /// Heartbeats in a row that found the room without members here.
    idle: u8,
}

struct Dirty {
    /// The sequence number when it was last marked: a reconcile whose mark is above it
    /// covers it.
    seq: u64,
    /// Not reconciled before (a request of the failed operation may still be on its way).
    not_before: Instant,
    /// Whether the room announces (for a room left without members).
    announce: bool,
}

impl Members {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// The generation to list `room` with, unless a confirmed listing exists.
    fn listing(&mut self, room: &Place) -> Option<u64> {
        if let Some(listing) = self.listed.get_mut(room)
            && listing.confirmed
        {
            listing.idle = 0;
            return None;
        }
        let generation = self.next_seq();
        self.listed.insert(
            room.clone(),
            Listing {
                generation,
                confirmed: false,
                idle: 0,
            },
        );
        Some(generation)
    }

    fn mark_dirty(&mut self, room: &Place, announce: bool, wait: Duration) {
        let not_before = Instant::now() + wait;
        if let Some((at, true)) = &mut self.everything {
            *at = (*at).max(not_before);
            return;
        }
        if self.dirty.len() >= DIRTY_MAX && !self.dirty.contains_key(room) {
            // Too many to track one by one: reconcile every room, found in Redis too.
            self.dirty.clear();
            let at = self
                .everything
                .map_or(not_before, |(at, _)| at.max(not_before));
            self.everything = Some((at, true));
            return;
        }
        // A number of its own: a reconcile whose snapshot came before this is not enough.
        let seq = self.next_seq();
        self.dirty.insert(
            room.clone(),
            Dirty {
                seq,
                not_before,
                announce,
            },
        );
    }
}

/// Marks its room dirty when dropped armed: the operation failed or was cut short, so Redis
/// may or may not have applied it.
struct Unsure<'a> {
    shared: &'a Shared,
    room: &'a Place,
    announce: bool,
    armed: bool,
}

impl Drop for Unsure<'_> {
    fn drop(&mut self) {
        if self.armed {
            let wait = self.shared.config.timeout;
            self.shared
                .members
                .lock()
                .mark_dirty(self.room, self.announce, wait);
        }
    }
}

/// A room's snapshot for `RECONCILE`.
struct Snapshot {
    room: Room,
    /// The next sequence number when it was taken.
    mark: u64,
}

impl Shared {
    /// This node's id in Redis: `<node>.<incarnation>`.
    pub(super) fn presence_id(&self) -> String {
        let incarnation = self.members.lock().incarnation;
        self.id_of(incarnation)
    }

    fn id_of(&self, incarnation: u64) -> String {
        format!("{:x}.{incarnation}", self.node)
    }

    /// Redis lost `room`'s log (the topic started a new epoch): it may have lost this node's
    /// presence there too, and its listing of the room (a restore of an older snapshot, a
    /// failover to a replica that missed the last writes), while the node's liveness, and so
    /// its incarnation, survived. The next heartbeat lists the room again and reconciles it.
    pub(super) fn room_replaced(&self, room: &Place) {
        let mut members = self.members.lock();
        if let Some(listing) = members.listed.get_mut(room) {
            listing.confirmed = false;
        }
        if let Some(announce) = members.rooms.get(room).map(|r| r.announce) {
            members.mark_dirty(room, announce, Duration::ZERO);
        }
    }

    /// Counts connection `conn` of `identity`'s user in `room`, once: a connection already
    /// counted changes nothing (see the module's invariants).
    pub(super) async fn join(
        &self,
        mirror: &Mirror,
        name: &Topic,
        conn: ConnectionId,
        identity: &Identity,
        announce: Option<Publication>,
    ) -> Result<bool, HubError> {
        let place = Place::new(mirror.namespace(), name);
        let room = &place;
        let data = identity
            .user_data()
            .map(ToString::to_string)
            .unwrap_or_default();
        let (seq, listing, incarnation) = {
            let mut guard = self.members.lock();
            let members = &mut *guard;
            let entry = members.rooms.entry(room.clone()).or_default();
            if entry.conns.contains_key(&conn.as_u64()) {
                return Ok(false);
            }
            entry.announce = announce.is_some();
            members.seq += 1;
            let seq = members.seq;
            entry.conns.insert(
                conn.as_u64(),
                Membership {
                    user: Arc::clone(identity.user_arc()),
                    data: data.clone(),
                    seq,
                },
            );
            (seq, members.listing(room), members.incarnation)
        };
        let mut unsure = Unsure {
            shared: self,
            room,
            announce: announce.is_some(),
            armed: true,
        };
        // List the room first, under the incarnation that counts the member: if the node dies
        // after joining, the sweep of that incarnation finds it there.
        let incarnation = self.list_under(room, incarnation, listing).await?;
        let keys = self.keys.room(room.ns, &room.room);
        let mut inv = self.scripts.join.prepare_invoke();
        for key in keys.presence() {
            inv.key(key);
        }
        inv.arg(self.id_of(incarnation))
            .arg(identity.user_id())
            .arg(&data)
            .arg(if announce.is_some() { "1" } else { "0" });
        let body = announce.map_or_else(Vec::new, |p| encode_body(&room.room, &p, self.node, 0));
        inv.arg(body)
            .arg(&keys.topic.channel)
            .arg(conn.as_u64())
            .arg(seq);
        let mut redis = self.conn.clone();
        let first: i64 = within(self.config.timeout, inv.invoke_async(&mut redis)).await?;
        unsure.armed = false;
        let mut members = self.members.lock();
        if members.incarnation != incarnation {
            // A new incarnation while the script was on its way: counted under the old one,
            // which only this node evicts. Move it over now rather than at the full reconcile.
            members.mark_dirty(room, unsure.announce, Duration::ZERO);
        }
        Ok(first == 1)
    }

    /// Takes connection `conn` out of `room`. A connection not counted here (its join never
    /// started, or it already left) changes nothing and announces nothing.
    pub(super) async fn leave(
        &self,
        mirror: &Mirror,
        name: &Topic,
        conn: ConnectionId,
        _identity: &Identity,
        announce: Option<Publication>,
    ) -> Result<bool, HubError> {
        let place = Place::new(mirror.namespace(), name);
        let room = &place;
        let (seq, incarnation) = {
            let mut members = self.members.lock();
            let Some(entry) = members.rooms.get_mut(room) else {
                return Ok(false);
            };
            if entry.conns.remove(&conn.as_u64()).is_none() {
                return Ok(false);
            }
            entry.announce = announce.is_some();
            if entry.conns.is_empty() {
                members.rooms.remove(room);
            }
            (members.next_seq(), members.incarnation)
        };
        let mut unsure = Unsure {
            shared: self,
            room,
            announce: announce.is_some(),
            armed: true,
        };
        let left = self
            .run_leave(room, incarnation, conn.as_u64(), seq, announce)
            .await?;
        unsure.armed = false;
        Ok(left)
    }

    /// Runs the leave script for one membership of `incarnation`: it removes the connection's
    /// membership if it was numbered below `below`; returns whether the user became absent.
    async fn run_leave(
        &self,
        room: &Place,
        incarnation: u64,
        conn: u64,
        below: u64,
        announce: Option<Publication>,
    ) -> Result<bool, HubError> {
        let keys = self.keys.room(room.ns, &room.room);
        let mut inv = self.scripts.leave.prepare_invoke();
        for key in keys.presence() {
            inv.key(key);
        }
        inv.arg(self.id_of(incarnation))
            .arg(if announce.is_some() { "1" } else { "0" });
        let body = announce.map_or_else(Vec::new, |p| encode_body(&room.room, &p, self.node, 0));
        inv.arg(body).arg(&keys.topic.channel).arg(conn).arg(below);
        let mut redis = self.conn.clone();
        let left: i64 = within(self.config.timeout, inv.invoke_async(&mut redis)).await?;
        Ok(left == 1)
    }

    /// Lists `room` (with `listing`'s generation, if any) in the room set of `incarnation`,
    /// and again in that of each newer incarnation a switch brings meanwhile (its listings
    /// start over). Returns the incarnation the room is listed under, still the current one
    /// when this returns: the one to count the room's memberships under.
    async fn list_under(
        &self,
        room: &Place,
        mut incarnation: u64,
        mut listing: Option<u64>,
    ) -> Result<u64, HubError> {
        loop {
            if let Some(generation) = listing {
                self.list(incarnation, room, generation).await?;
            }
            let mut members = self.members.lock();
            if members.incarnation == incarnation {
                return Ok(incarnation);
            }
            incarnation = members.incarnation;
            listing = if members.rooms.contains_key(room) {
                members.listing(room)
            } else {
                None
            };
        }
    }

    /// Writes `room` with `generation` into the room set of this node's `incarnation`; once
    /// Redis answered, joins trust it (unless a newer listing replaced this one meanwhile).
    async fn list(&self, incarnation: u64, room: &Place, generation: u64) -> Result<(), HubError> {
        let mut redis = self.conn.clone();
        within(
            self.config.timeout,
            redis::cmd("HSET")
                .arg(self.keys.rooms_of(&self.id_of(incarnation)))
                .arg(room.field())
                .arg(generation)
                .exec_async(&mut redis),
        )
        .await?;
        if let Some(listing) = self.members.lock().listed.get_mut(room)
            && listing.generation == generation
        {
            listing.confirmed = true;
        }
        Ok(())
    }

    /// One page of the room's users over all nodes: those whose id is above `after` (all
    /// from the first if `None`), in ascending order, at most `limit`; and whether others
    /// follow. O(log N + limit): read from the room's sorted set of users, in calls of at most
    /// [`MEMBERS_MAX`](super::lua::MEMBERS_MAX) (each one consistent on its own).
    pub(super) async fn members_page(
        &self,
        room: &Place,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Member>, bool), HubError> {
        let keys = self.keys.room(room.ns, &room.room);
        let mut conn = self.conn.clone();
        let mut members: Vec<Member> = Vec::with_capacity(limit.min(MEMBERS_MAX));
        let mut after = after.map(str::to_owned);
        loop {
            let want = (limit - members.len()).min(MEMBERS_MAX);
            let mut inv = self.scripts.page.prepare_invoke();
            inv.key(&keys.users)
                .key(&keys.totals)
                .key(&keys.present)
                .arg(after.as_deref().unwrap_or(""))
                .arg(want);
            let reply: Vec<String> =
                within(self.config.timeout, inv.invoke_async(&mut conn)).await?;
            let Some((more, rest)) = reply.split_first() else {
                return Err(Failure::Reply("members").into());
            };
            let more = more == "1";
            members.extend(rest.chunks_exact(3).map(|m| Member {
                user: Arc::from(m[0].as_str()),
                connections: m[1].parse().unwrap_or(1),
                data: serde_json::from_str(&m[2]).ok().map(Arc::new),
            }));
            if !more || members.len() >= limit {
                return Ok((members, more));
            }
            after = members.last().map(|m| m.user.to_string());
        }
    }

    /// How many distinct users are in the room over all nodes: `ZCARD` of its users, O(1).
    pub(super) async fn member_count(&self, room: &Place) -> Result<usize, HubError> {
        let keys = self.keys.room(room.ns, &room.room);
        let mut conn = self.conn.clone();
        let n: usize = within(
            self.config.timeout,
            redis::cmd("ZCARD").arg(&keys.users).query_async(&mut conn),
        )
        .await?;
        Ok(n)
    }

    /// One heartbeat, as when connecting: [`beat`](Self::beat), then
    /// [`upkeep`](Self::upkeep). The node's task runs the two on their own clocks.
    pub(super) async fn heartbeat(&self) -> Result<(), HubError> {
        self.beat().await?;
        self.upkeep().await
    }

    /// Refreshes this node's liveness, and its retired incarnations' until it has evicted
    /// them (so that no other node sweeps them while it registers their members again, and
    /// all are swept if it dies); reads Redis's clock on the way. If Redis lost the current
    /// incarnation, starts the next (see the module's invariants).
    pub(super) async fn beat(&self) -> Result<(), HubError> {
        let (id, retired) = self.beat_ids();
        if self.beat_as(&id, &retired).await? {
            return Ok(());
        }
        let switched = {
            let mut members = self.members.lock();
            // Registered before: Redis lost this incarnation (restarted, or swept it as
            // dead). A new one, whose counts no late sweep of the old one can touch;
            // every room is registered again once the old incarnation's requests have
            // landed. (Not registered yet: the first beat of this incarnation.)
            let switched = std::mem::replace(&mut members.registered, true);
            if switched {
                let old = members.incarnation;
                members.incarnation += 1;
                members.registered = false;
                members.listed.clear();
                members.retired.push(old);
                if members.retired.len() > RETIRED_MAX {
                    members.retired.remove(0);
                }
                let scan = members.everything.is_some_and(|(_, scan)| scan);
                members.everything = Some((Instant::now() + self.config.timeout, scan));
                members.full = None;
            }
            switched
        };
        if switched {
            tracing::info!(
                node = %id,
                "redis: this node's liveness was lost; registering its members again"
            );
            let (id, retired) = self.beat_ids();
            self.beat_as(&id, &retired).await?;
            self.members.lock().registered = true;
        }
        Ok(())
    }

    /// The ids a beat refreshes: the current incarnation's, and the retired ones'.
    fn beat_ids(&self) -> (String, Vec<String>) {
        let members = self.members.lock();
        let retired = members.retired.iter().map(|i| self.id_of(*i)).collect();
        (self.id_of(members.incarnation), retired)
    }

    /// Refreshes the liveness of `id` and of `retired`; returns whether `id` was still alive.
    /// Reads Redis's clock on the way (see [`Shared::redis_now_ms`]).
    async fn beat_as(&self, id: &str, retired: &[String]) -> Result<bool, HubError> {
        let mut conn = self.conn.clone();
        let mut inv = self.scripts.heartbeat.prepare_invoke();
        inv.key(self.keys.alive())
            .arg(id)
            .arg(millis(self.config.node_ttl));
        for old in retired {
            inv.arg(old);
        }
        let (alive, now): (i64, u64) =
            within(self.config.timeout, inv.invoke_async(&mut conn)).await?;
        self.set_redis_clock(now);
        Ok(alive == 1)
    }

    /// What the heartbeat does besides the beat, which never waits for it: reconcile the rooms
    /// Redis may be wrong about, prune the room set, renew the idle topics the node follows,
    /// sweep dead nodes, evict this node's retired incarnations once every room is registered
    /// under the current one.
    pub(super) async fn upkeep(&self) -> Result<(), HubError> {
        let reconciled = self.reconcile_due().await;
        self.prune_listed().await;
        self.renew_idle().await;
        let swept = self.sweep().await;
        if reconciled.is_ok() {
            self.evict_retired().await;
        }
        reconciled.and(swept)
    }

    /// Reconciles the dirty rooms whose time has come and, when due, every room (a round
    /// spread over heartbeats): [`CONCURRENCY`] rooms at a time, starting new ones for about
    /// one heartbeat; the rest waits for the next.
    async fn reconcile_due(&self) -> Result<(), HubError> {
        let now = Instant::now();
        // A round that can't start (its scan failed) leaves the dirty rooms to do.
        let mut result = self.start_full(now).await;
        // The round's rooms stay in it until reconciled: a pass cut short loses none.
        let (work, round) = {
            let members = self.members.lock();
            let mut work: Vec<(Place, bool)> = Vec::new();
            let round = members.full.as_ref().map(|full| {
                work.extend(full.rooms.iter().map(|room| (room.clone(), true)));
                full.id
            });
            work.extend(
                members
                    .dirty
                    .iter()
                    .filter(|(room, d)| {
                        d.not_before <= now
                            && members
                                .full
                                .as_ref()
                                .is_none_or(|f| !f.rooms.contains(*room))
                    })
                    .map(|(room, _)| (room.clone(), false)),
            );
            (work, round)
        };
        let until = Instant::now() + self.config.heartbeat;
        let mut work = work.into_iter();
        let mut running = futures_util::stream::FuturesUnordered::new();
        loop {
            while running.len() < CONCURRENCY && Instant::now() < until {
                let Some((room, in_round)) = work.next() else {
                    break;
                };
                running.push(async move {
                    let reconciled = self.reconcile(&room).await;
                    (room, in_round, reconciled)
                });
            }
            let Some((room, in_round, reconciled)) = running.next().await else {
                break;
            };
            match reconciled {
                Ok(()) if in_round => self.reconciled_in_round(&room, round),
                Ok(()) => {}
                Err(e) => {
                    tracing::debug!(room = %room, error = %e, "redis: reconciling presence failed");
                    result = Err(e);
                }
            }
        }
        result
    }

    /// Takes `room` out of the full reconcile `round` (if still in progress); the round ends
    /// with its last room.
    fn reconciled_in_round(&self, room: &Place, round: Option<u64>) {
        let mut members = self.members.lock();
        let Some(full) = members.full.as_mut() else {
            return;
        };
        if Some(full.id) != round {
            return; // A new incarnation started over meanwhile.
        }
        full.rooms.remove(room);
        if full.rooms.is_empty() {
            let began = full.began;
            members.full = None;
            // A request made after the round began (an operation failed) needs another.
            if members.everything.is_some_and(|(at, _)| at <= began) {
                members.everything = None;
            }
        }
    }

    /// Starts a round of reconciling every room if one is due and none is in progress: the
    /// rooms with members here, the dirty ones and, with `scan`, those of the node's room set
    /// in Redis (rooms dropped from the dirty set when it overflowed).
    async fn start_full(&self, now: Instant) -> Result<(), HubError> {
        let scan = {
            let members = self.members.lock();
            match members.everything {
                Some((at, scan)) if at <= now && members.full.is_none() => scan,
                _ => return Ok(()),
            }
        };
        let mut found = Vec::new();
        if scan {
            let mut conn = self.conn.clone();
            let listed: Vec<String> = within(
                self.config.timeout,
                redis::cmd("HKEYS")
                    .arg(self.keys.rooms_of(&self.presence_id()))
                    .query_async(&mut conn),
            )
            .await?;
            found.extend(listed.iter().filter_map(|r| Place::from_field(r)));
        }
        let mut members = self.members.lock();
        let members = &mut *members;
        if members.full.is_some() || members.everything.is_none_or(|(at, _)| at > now) {
            // A new incarnation meanwhile: its round starts when due.
            return Ok(());
        }
        let mut rooms: HashSet<Place> = members
            .rooms
            .keys()
            .chain(members.dirty.keys())
            .cloned()
            .collect();
        rooms.extend(found);
        if rooms.is_empty() {
            members.everything = None; // Nothing to register: done already.
            return Ok(());
        }
        members.seq += 1;
        members.full = Some(Full {
            id: members.seq,
            began: now,
            rooms,
        });
        Ok(())
    }

    /// Makes this node's memberships of `room` in Redis those of its table, announcing the
    /// users that so join or leave (see the module's invariants).
    async fn reconcile(&self, room: &Place) -> Result<(), HubError> {
        let (snapshot, listing, announce, incarnation) = {
            let mut members = self.members.lock();
            let current = members.rooms.get(room).cloned();
            // Unknown for a room without members whose dirty mark was dropped (too many):
            // announce, as the default presence mode does.
            let announce = current.as_ref().map_or_else(
                || members.dirty.get(room).is_none_or(|d| d.announce),
                |r| r.announce,
            );
            let listing = if current.is_some() {
                members.listing(room)
            } else {
                None
            };
            let snapshot = Snapshot {
                room: current.unwrap_or_default(),
                mark: members.seq + 1,
            };
            (snapshot, listing, announce, members.incarnation)
        };
        let incarnation = self.list_under(room, incarnation, listing).await?;
        self.run_reconcile(room, &snapshot, announce, incarnation)
            .await?;
        // The snapshot's memberships that left meanwhile (and are not back): their leave may
        // have reached Redis before the reconcile put them back. Leave again, numbered below
        // the mark: a join made since is left alone. (One that is back is present either
        // way: its join, or the reconcile, counted it.)
        let gone: Vec<(u64, Arc<str>, String)> = {
            let members = self.members.lock();
            let now = members.rooms.get(room);
            snapshot
                .room
                .conns
                .iter()
                .filter(|(conn, _)| now.and_then(|r| r.conns.get(conn)).is_none())
                .map(|(conn, m)| (*conn, Arc::clone(&m.user), m.data.clone()))
                .collect()
        };
        for (conn, user, data) in gone {
            let p = announce.then(|| presence_publication(PRESENCE_LEAVE, &user, &data));
            self.run_leave(room, incarnation, conn, snapshot.mark, p)
                .await?;
        }
        let mut members = self.members.lock();
        if members
            .dirty
            .get(room)
            .is_some_and(|d| d.seq < snapshot.mark)
        {
            members.dirty.remove(room);
        }
        Ok(())
    }

    /// Runs the reconcile script for `snapshot`. The first call names the users it drops whose
    /// leave must be announced (they left this node while Redis could not record it, and no
    /// other connection holds them); the second brings their announcements (empty bodies if
    /// the room doesn't announce), built here as the leave script's are.
    async fn run_reconcile(
        &self,
        room: &Place,
        snapshot: &Snapshot,
        announce: bool,
        incarnation: u64,
    ) -> Result<(), HubError> {
        let keys = self.keys.room(room.ns, &room.room);
        let mut users: HashMap<&Arc<str>, (&str, Vec<String>)> = HashMap::new();
        for (conn, m) in &snapshot.room.conns {
            users
                .entry(&m.user)
                .or_insert_with(|| (m.data.as_str(), Vec::new()))
                .1
                .push(format!("{conn}:{}", m.seq));
        }
        let joins: Vec<(&str, &str, Vec<u8>, String)> = users
            .into_iter()
            .map(|(user, (data, conns))| {
                let body = if announce {
                    let p = presence_publication(PRESENCE_JOIN, user, data);
                    encode_body(&room.room, &p, self.node, 0)
                } else {
                    Vec::new()
                };
                (&**user, data, body, conns.join(" "))
            })
            .collect();
        let mut leaves: Vec<(String, Vec<u8>)> = Vec::new();
        let mut conn = self.conn.clone();
        for _ in 0..3 {
            let mut inv = self.scripts.reconcile.prepare_invoke();
            for key in keys.presence() {
                inv.key(key);
            }
            inv.arg(self.id_of(incarnation))
                .arg(format!("{:x}.", self.node))
                .arg(&keys.topic.channel)
                .arg(snapshot.mark)
                .arg(leaves.len());
            for (user, body) in &leaves {
                inv.arg(user).arg(body);
            }
            for (user, data, body, conns) in &joins {
                inv.arg(*user).arg(*data).arg(body).arg(conns);
            }
            let reply: Vec<String> =
                within(self.config.timeout, inv.invoke_async(&mut conn)).await?;
            if self.leaves_needed(room, &reply, &mut leaves, "reconcile", announce)? {
                return Ok(());
            }
        }
        Err(Failure::Reply("reconcile").into())
    }

    /// Takes the rooms this node has had no members in for two heartbeats out of its room set
    /// (each only at the generation it was listed with: a join listing it again wins).
    async fn prune_listed(&self) {
        let (key, stale) = {
            let mut members = self.members.lock();
            let members = &mut *members;
            if members.everything.is_some() {
                // Every room is to be reconciled, some found only in the room set: keep it.
                return;
            }
            let mut stale = Vec::new();
            for (room, listing) in &mut members.listed {
                if members.rooms.contains_key(room) || members.dirty.contains_key(room) {
                    listing.idle = 0;
                } else {
                    listing.idle = listing.idle.saturating_add(1);
                    if listing.idle >= 2 {
                        stale.push((room.clone(), listing.generation));
                    }
                }
            }
            for (room, _) in &stale {
                members.listed.remove(room);
            }
            let incarnation = members.incarnation;
            (self.keys.rooms_of(&self.id_of(incarnation)), stale)
        };
        if stale.is_empty() {
            return;
        }
        let mut conn = self.conn.clone();
        let mut inv = self.scripts.prune.prepare_invoke();
        inv.key(key);
        for (room, generation) in &stale {
            inv.arg(room.field()).arg(*generation);
        }
        // A failed prune leaves rooms listed for nothing: the sweep of this node visits them
        // in vain, and they go with the node.
        if let Err(e) = within(self.config.timeout, inv.invoke_async::<i64>(&mut conn)).await {
            tracing::debug!(error = %e, "redis: pruning the room set failed");
        }
    }

    /// Renews the epoch of every followed topic nobody has published to yet (it lives only
    /// the node TTL, so that merely following names leaves nothing behind).
    async fn renew_idle(&self) {
        let idle: Vec<String> = {
            let subscribed = self.subscribed.lock();
            subscribed
                .values()
                .filter(|(ns, topic)| {
                    self.mirror(ns)
                        .and_then(|m| m.position(topic))
                        .is_some_and(|id| id.offset() == 0)
                })
                .map(|(ns, topic)| self.keys.topic(ns, topic).meta)
                .collect()
        };
        let ttl = millis(self.config.node_ttl);
        futures_util::stream::iter(idle)
            .for_each_concurrent(CONCURRENCY, |meta| async move {
                let mut conn = self.conn.clone();
                let mut inv = self.scripts.touch.prepare_invoke();
                inv.key(meta).arg(ttl);
                if let Err(e) =
                    within(self.config.timeout, inv.invoke_async::<i64>(&mut conn)).await
                {
                    tracing::debug!(error = %e, "redis: renewing an idle topic failed");
                }
            })
            .await;
    }

    /// Evicts the nodes whose heartbeat expired from their rooms, announcing the leaves.
    async fn sweep(&self) -> Result<(), HubError> {
        let mut conn = self.conn.clone();
        let alive = self.keys.alive();
        let mut inv = self.scripts.dead.prepare_invoke();
        inv.key(&alive);
        let dead: Vec<String> = within(self.config.timeout, inv.invoke_async(&mut conn)).await?;
        // This node's own earlier incarnations are evicted once it has registered its members
        // again (`evict_retired`): before, their users would be announced leaving, then joining.
        let own = format!("{:x}.", self.node);
        let mut result = Ok(());
        for node in dead.into_iter().filter(|n| !n.starts_with(&own)) {
            if let Err(e) = self.evict_node(&node, false).await {
                result = Err(e);
            }
        }
        result
    }

    /// Evicts this node's earlier incarnations (their liveness entries may be gone with
    /// Redis's data, so no other node would).
    async fn evict_retired(&self) {
        let retired: Vec<u64> = {
            let members = self.members.lock();
            if members.everything.is_some() || members.full.is_some() {
                // Not before the current incarnation holds every member: evicting an old one
                // first would announce each of them leaving, then joining again.
                return;
            }
            members.retired.clone()
        };
        for incarnation in retired {
            match self.evict_node(&self.id_of(incarnation), true).await {
                Ok(()) => self.members.lock().retired.retain(|i| *i != incarnation),
                Err(e) => {
                    tracing::debug!(error = %e, "redis: evicting an old incarnation failed");
                    return;
                }
            }
        }
    }

    /// Removes `node`'s counts from every room of its room set, announcing the leaves, then
    /// forgets it: if it is still dead, or at once for an incarnation of this node (`own`).
    async fn evict_node(&self, node: &str, own: bool) -> Result<(), HubError> {
        let mut conn = self.conn.clone();
        let rooms_key = self.keys.rooms_of(node);
        let rooms: Vec<String> = within(
            self.config.timeout,
            redis::cmd("HKEYS").arg(&rooms_key).query_async(&mut conn),
        )
        .await?;
        let mut rooms = rooms.iter().filter_map(|r| Place::from_field(r));
        let mut running = futures_util::stream::FuturesUnordered::new();
        let mut result = Ok(());
        loop {
            while running.len() < CONCURRENCY {
                let Some(room) = rooms.next() else {
                    break;
                };
                running.push(async move { self.evict(node, &room).await });
            }
            let Some(evicted) = running.next().await else {
                break;
            };
            result = result.and(evicted);
        }
        result?;
        let mut inv = self.scripts.forget.prepare_invoke();
        inv.key(self.keys.alive())
            .key(rooms_key)
            .arg(node)
            .arg(if own { "1" } else { "0" });
        let _: i64 = within(self.config.timeout, inv.invoke_async(&mut conn)).await?;
        Ok(())
    }

    /// Reads the reply of a presence script that announces leaves (EVICT, RECONCILE): `done`
    /// (true), or `need` with the `(user, data)` pairs whose leave announcements the next call
    /// must bring, which are encoded into `leaves` (empty when the room doesn't announce)
    /// (false).
    fn leaves_needed(
        &self,
        room: &Place,
        reply: &[String],
        leaves: &mut Vec<(String, Vec<u8>)>,
        op: &'static str,
        announce: bool,
    ) -> Result<bool, HubError> {
        match reply.first().map(String::as_str) {
            Some("done") => Ok(true),
            Some("need") => {
                for pair in reply[1..].chunks_exact(2) {
                    let body = if announce {
                        let p = presence_publication(PRESENCE_LEAVE, &pair[0], &pair[1]);
                        encode_body(&room.room, &p, self.node, 0)
                    } else {
                        Vec::new()
                    };
                    leaves.push((pair[0].clone(), body));
                }
                Ok(false)
            }
            _ => Err(Failure::Reply(op).into()),
        }
    }

    /// Removes a dead node's counts from one room and announces the leaves, in one script.
    async fn evict(&self, node: &str, room: &Place) -> Result<(), HubError> {
        let keys = self.keys.room(room.ns, &room.room);
        let mut bodies: Vec<(String, Vec<u8>)> = Vec::new();
        let mut conn = self.conn.clone();
        // The first call names the leaves to announce; the second brings their announcements.
        for _ in 0..3 {
            let mut inv = self.scripts.evict.prepare_invoke();
            for key in keys.presence() {
                inv.key(key);
            }
            inv.arg(node).arg(&keys.topic.channel);
            for (user, body) in &bodies {
                inv.arg(user).arg(body);
            }
            let reply: Vec<String> =
                within(self.config.timeout, inv.invoke_async(&mut conn)).await?;
            if self.leaves_needed(room, &reply, &mut bodies, "evict", true)? {
                return Ok(());
            }
        }
        Err(Failure::Reply("evict").into())
    }
}
