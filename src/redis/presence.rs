//! Presence across nodes: joins and leaves, members, and the heartbeat that keeps a node's
//! members alive, sweeps dead nodes and renews the topics followers are waiting on.
//!
//! A room's counts live next to its topic (one hash tag), so a join or leave and its
//! announcement (a live-only notice on the room's channel) are one script. The room's users
//! are also kept in a sorted set (all scored 0, so ordered by id) with their connection totals
//! in a hash: counting them is `ZCARD`, a page is `ZRANGE BYLEX` plus two `HMGET`s, so a room
//! of 100,000 members costs a join no more than one of 10. A node's liveness lives in `{p:nodes}`, with the set of rooms
//! where it may have members. The sweep, run by every node every heartbeat, takes each dead
//! node's rooms one by one: removing its counts and announcing the leaves that follow is one
//! script per room, and the node is forgotten only once every room is done. A sweep that fails
//! part way (Redis busy, a publish refused) is redone by the next one: no leave is lost, none
//! is announced twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::StreamExt;

use super::lua::MEMBERS_MAX;
use super::wire::encode_body;
use super::{Failure, RoomCounts, Shared, millis, presence_publication, within};
use crate::error::HubError;
use crate::hub::{
    ConnectionId, Identity, Member, Mirror, PRESENCE_JOIN, PRESENCE_LEAVE, Publication, Topic,
};

/// Script calls a heartbeat runs at once (renewals of idle topics).
const CONCURRENCY: usize = 16;

impl Shared {
    /// Counts connection `conn` of `identity`'s user in `room` as a new membership, numbered
    /// by a nonce: the join script counts a nonce once (it records it in the room's `pk`).
    pub(super) async fn join(
        &self,
        mirror: &Mirror,
        room: &Topic,
        conn: ConnectionId,
        identity: &Identity,
        announce: Option<Publication>,
    ) -> Result<bool, HubError> {
        let data = identity
            .user_data()
            .map(ToString::to_string)
            .unwrap_or_default();
        let token = conn.as_u64();
        // The membership's nonce, unique on this node and taken under the lock, so that a
        // snapshot of `present` knows every membership numbered below the next nonce.
        let nonce = {
            let mut present = self.present.lock();
            let users = present.entry(room.clone()).or_default();
            let entry = users
                .entry(Arc::clone(identity.user_arc()))
                .or_insert_with(|| (HashMap::new(), data.clone()));
            // A fresh one even if the connection is still counted here: it may join again
            // before the leave that undoes a join cut short has run; leaves then take the
            // connection's nonces in the order of its joins.
            let nonce = self.nonces.fetch_add(1, Ordering::Relaxed);
            entry.0.entry(token).or_default().push(nonce);
            nonce
        };
        // List the room in this node's set first: if the node dies after joining, the sweep
        // finds its counts there.
        let unlisted = self.listed.lock().insert(room.clone(), false).is_none();
        if unlisted {
            let mut conn = self.conn.clone();
            let listed = within(
                self.config.timeout,
                redis::cmd("SADD")
                    .arg(self.keys.rooms_of(&self.node_hex()))
                    .arg(room.as_str())
                    .exec_async(&mut conn),
            )
            .await;
            if let Err(e) = listed {
                self.listed.lock().remove(room);
                return Err(e.into());
            }
        }
        debug_assert_eq!(mirror.namespace(), "rooms");
        self.presence(true, room, nonce, identity.user_id(), &data, announce)
            .await
    }

    /// Takes connection `conn` of the user out of `room`. Taking out a connection that was never counted (its join was cut short before the
    /// script ran) or already taken out changes nothing and announces nothing.
    pub(super) async fn leave(
        &self,
        mirror: &Mirror,
        room: &Topic,
        conn: ConnectionId,
        identity: &Identity,
        announce: Option<Publication>,
    ) -> Result<bool, HubError> {
        let nonce = {
            let mut present = self.present.lock();
            let mut nonce = None;
            if let Some(users) = present.get_mut(room) {
                if let Some(entry) = users.get_mut(identity.user_id()) {
                    let token = conn.as_u64();
                    if let Some(nonces) = entry.0.get_mut(&token) {
                        if !nonces.is_empty() {
                            nonce = Some(nonces.remove(0));
                        }
                        if nonces.is_empty() {
                            entry.0.remove(&token);
                        }
                    }
                    if entry.0.is_empty() {
                        users.remove(identity.user_id());
                    }
                }
                if users.is_empty() {
                    present.remove(room);
                }
            }
            nonce
        };
        // Not counted here: its join never started (it was dropped before its first poll),
        // so nothing of it reached Redis; or it already left.
        let Some(nonce) = nonce else {
            return Ok(false);
        };
        debug_assert_eq!(mirror.namespace(), "rooms");
        self.presence(false, room, nonce, identity.user_id(), "", announce)
            .await
    }

    /// Runs the join or leave script for one membership (`nonce`); returns whether the user
    /// became present or absent.
    async fn presence(
        &self,
        join: bool,
        room: &Topic,
        nonce: u64,
        user: &str,
        data: &str,
        announce: Option<Publication>,
    ) -> Result<bool, HubError> {
        // Rooms' presence sits next to their topic in the rooms namespace (the only one whose
        // hub keeps presence), so that a join and its announcement are one script.
        let keys = self.keys.room(room);
        let script = if join {
            &self.scripts.join
        } else {
            &self.scripts.leave
        };
        let mut inv = script.prepare_invoke();
        for key in keys.presence() {
            inv.key(key);
        }
        inv.arg(self.node_hex()).arg(user);
        if join {
            inv.arg(data);
        }
        inv.arg(if announce.is_some() { "1" } else { "0" });
        let body = announce.map_or_else(Vec::new, |p| encode_body(room, &p, self.node));
        inv.arg(body).arg(&keys.topic.channel).arg(nonce);
        let mut conn = self.conn.clone();
        let changed: i64 = within(self.config.timeout, inv.invoke_async(&mut conn)).await?;
        Ok(changed == 1)
    }

    /// One page of the room's users over all nodes: those whose id is above `after` (all
    /// from the first if `None`), in ascending order, at most `limit`; and whether others
    /// follow. O(log N + limit): read from the room's sorted set of users, in calls of at most
    /// [`MEMBERS_MAX`](super::lua::MEMBERS_MAX) (each one consistent on its own).
    pub(super) async fn members_page(
        &self,
        room: &Topic,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Member>, bool), HubError> {
        let keys = self.keys.room(room);
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
    pub(super) async fn member_count(&self, room: &Topic) -> Result<usize, HubError> {
        let keys = self.keys.room(room);
        let mut conn = self.conn.clone();
        let n: usize = within(
            self.config.timeout,
            redis::cmd("ZCARD").arg(&keys.users).query_async(&mut conn),
        )
        .await?;
        Ok(n)
    }

    /// One heartbeat: refresh this node's liveness (registering its members again if they
    /// may be gone), prune its room set, renew the idle topics it follows, sweep dead nodes.
    pub(super) async fn heartbeat(&self) -> Result<(), HubError> {
        let node = self.node_hex();
        let mut conn = self.conn.clone();
        let mut inv = self.scripts.heartbeat.prepare_invoke();
        inv.key(self.keys.alive())
            .arg(&node)
            .arg(millis(self.config.node_ttl));
        let alive: i64 = within(self.config.timeout, inv.invoke_async(&mut conn)).await?;
        if alive == 0 {
            self.register_all().await?;
        }
        self.prune_listed().await;
        self.renew_idle().await;
        self.sweep().await
    }

    /// Restores this node's counts in every room it has members in (first beat, Redis
    /// restarted, or the node was declared dead), announcing the users that so join, and the
    /// leaves Redis missed: a user that left this node while its leave script could not run
    /// (Redis unreachable) and has no connection left on any node.
    ///
    /// Joins and leaves go on meanwhile, and their scripts may reach Redis before or after a
    /// room's register script. So the script takes the room's snapshot with its mark (the
    /// next nonce when it was taken): it drops the node's memberships numbered below the mark
    /// that the snapshot lacks (they left before it), keeps those from the mark on (joined
    /// after it: their own join script counts them, before or after), and adds the
    /// snapshot's. A membership of the snapshot that leaves before the script runs would so
    /// come back: once the script is done, the leave script runs again for every such one (a
    /// leave is idempotent per membership, and a nonce never joins again).
    async fn register_all(&self) -> Result<(), HubError> {
        let rooms: Vec<Topic> = self.present.lock().keys().cloned().collect();
        let node = self.node_hex();
        let mut conn = self.conn.clone();
        for room in rooms {
            within(
                self.config.timeout,
                redis::cmd("SADD")
                    .arg(self.keys.rooms_of(&node))
                    .arg(room.as_str())
                    .exec_async(&mut conn),
            )
            .await?;
            self.listed.lock().insert(room.clone(), false);
            let (users, mark) = {
                let present = self.present.lock();
                let users = present.get(&room).cloned().unwrap_or_default();
                (users, self.nonces.load(Ordering::Relaxed))
            };
            self.register_room(&room, &users, mark).await?;
            // The snapshot's memberships that left meanwhile: leave again.
            let gone: Vec<(Arc<str>, u64, String)> = {
                let present = self.present.lock();
                let now = present.get(&room);
                users
                    .iter()
                    .flat_map(|(user, (conns, data))| {
                        conns.iter().flat_map(move |(token, nonces)| {
                            nonces.iter().filter_map(move |nonce| {
                                let still = now
                                    .and_then(|u| u.get(user))
                                    .and_then(|(c, _)| c.get(token))
                                    .is_some_and(|n| n.contains(nonce));
                                (!still).then(|| (Arc::clone(user), *nonce, data.clone()))
                            })
                        })
                    })
                    .collect()
            };
            for (user, nonce, data) in gone {
                let p = presence_publication(PRESENCE_LEAVE, &user, &data);
                self.presence(false, &room, nonce, &user, "", Some(p))
                    .await?;
            }
        }
        Ok(())
    }

    /// Runs the register script for one room's snapshot `users`, taken when the next nonce
    /// was `mark`. The first call names the users it drops whose leave must be announced (they
    /// left this node while Redis could not record it, and no other connection holds them);
    /// the second brings their announcements, built here as the leave script's are.
    async fn register_room(
        &self,
        room: &Topic,
        users: &RoomCounts,
        mark: u64,
    ) -> Result<(), HubError> {
        let keys = self.keys.room(room);
        let joins: Vec<(&str, &str, Vec<u8>, String)> = users
            .iter()
            .map(|(user, (conns, data))| {
                let p = presence_publication(PRESENCE_JOIN, user, data);
                let nonces: Vec<String> = conns.values().flatten().map(u64::to_string).collect();
                (
                    &**user,
                    data.as_str(),
                    encode_body(room, &p, self.node),
                    nonces.join(" "),
                )
            })
            .collect();
        let mut leaves: Vec<(String, Vec<u8>)> = Vec::new();
        let mut conn = self.conn.clone();
        for _ in 0..3 {
            let mut inv = self.scripts.register.prepare_invoke();
            for key in keys.presence() {
                inv.key(key);
            }
            inv.arg(self.node_hex())
                .arg(&keys.topic.channel)
                .arg(mark)
                .arg(leaves.len());
            for (user, body) in &leaves {
                inv.arg(user).arg(body);
            }
            for (user, data, body, nonces) in &joins {
                inv.arg(*user).arg(*data).arg(body).arg(nonces);
            }
            let reply: Vec<String> =
                within(self.config.timeout, inv.invoke_async(&mut conn)).await?;
            if self.leaves_needed(room, &reply, &mut leaves, "register")? {
                return Ok(());
            }
        }
        Err(Failure::Reply("register").into())
    }

    /// Takes the rooms this node no longer has members in out of its room set (after two
    /// heartbeats without, so that a join or leave in flight is never missed).
    async fn prune_listed(&self) {
        let stale: Vec<Topic> = {
            let present = self.present.lock();
            let mut listed = self.listed.lock();
            let mut stale = Vec::new();
            for (room, absent) in listed.iter_mut() {
                if present.contains_key(room) {
                    *absent = false;
                } else if *absent {
                    stale.push(room.clone());
                } else {
                    *absent = true;
                }
            }
            stale
        };
        if stale.is_empty() {
            return;
        }
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("SREM");
        cmd.arg(self.keys.rooms_of(&self.node_hex()));
        for room in &stale {
            cmd.arg(room.as_str());
        }
        if within(self.config.timeout, cmd.exec_async(&mut conn))
            .await
            .is_ok()
        {
            let present = self.present.lock();
            let mut listed = self.listed.lock();
            for room in stale {
                if !present.contains_key(&room) {
                    listed.remove(&room);
                }
            }
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
        let me = self.node_hex();
        let mut result = Ok(());
        for node in dead.into_iter().filter(|n| *n != me) {
            if let Err(e) = self.evict_node(&node).await {
                result = Err(e);
            }
        }
        result
    }

    async fn evict_node(&self, node: &str) -> Result<(), HubError> {
        let mut conn = self.conn.clone();
        let rooms_key = self.keys.rooms_of(node);
        let rooms: Vec<String> = within(
            self.config.timeout,
            redis::cmd("SMEMBERS")
                .arg(&rooms_key)
                .query_async(&mut conn),
        )
        .await?;
        for room in rooms {
            let Ok(room) = Topic::new(&room) else {
                continue;
            };
            self.evict(node, &room).await?;
        }
        let mut inv = self.scripts.forget.prepare_invoke();
        inv.key(self.keys.alive()).key(rooms_key).arg(node);
        let _: i64 = within(self.config.timeout, inv.invoke_async(&mut conn)).await?;
        Ok(())
    }

    /// Removes a dead node's counts from one room and announces the leaves, in one script.
    /// Reads the reply of a presence script that announces leaves (EVICT, REGISTER): `done`
    /// (true), or `need` with the `(user, data)` pairs whose leave announcements the next call
    /// must bring, which are encoded into `leaves` (false).
    fn leaves_needed(
        &self,
        room: &Topic,
        reply: &[String],
        leaves: &mut Vec<(String, Vec<u8>)>,
        op: &'static str,
    ) -> Result<bool, HubError> {
        match reply.first().map(String::as_str) {
            Some("done") => Ok(true),
            Some("need") => {
                for pair in reply[1..].chunks_exact(2) {
                    let p = presence_publication(PRESENCE_LEAVE, &pair[0], &pair[1]);
                    leaves.push((pair[0].clone(), encode_body(room, &p, self.node)));
                }
                Ok(false)
            }
            _ => Err(Failure::Reply(op).into()),
        }
    }

    async fn evict(&self, node: &str, room: &Topic) -> Result<(), HubError> {
        let keys = self.keys.room(room);
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
            if self.leaves_needed(room, &reply, &mut bodies, "evict")? {
                return Ok(());
            }
        }
        Err(Failure::Reply("evict").into())
    }
}
