//! How a connection enters and leaves a room: one membership is one stream, one hold on the
//! room's log and one presence count in the backend, made or undone together, one change at a
//! time per connection (its turn). The cancellation of an entry cut short is in
//! [`cancel`](super::cancel).

use std::collections::VecDeque;
use std::sync::Arc;

use super::cancel::{Entering, finish_in_drop_path};
use super::{
    Inner, PRESENCE_JOIN, PRESENCE_LEAVE, PRESENCE_PAGE, Rooms, presence_event, room_topic,
};
use crate::error::HubError;
use crate::hub::backend::{Backend, open_stream};
use crate::hub::config::PresenceMode;
use crate::hub::filter::SharedFilter;
use crate::hub::log::{Membership, TopicStream};
use crate::hub::subscription::Control;
use crate::hub::{Delivery, Identity, Member, Position, Presence};
use crate::ids::{ConnectionId, Topic};

impl<B: Backend> Rooms<B> {
    /// [`join_room`](Self::join_room), delivering `prelude` before anything of the room.
    pub(crate) async fn join_room_with(
        &self,
        conn: ConnectionId,
        room: &str,
        from: Position,
        prelude: Option<Delivery>,
        filter: SharedFilter,
    ) -> Result<(), HubError> {
        let room = room_topic(room)?;
        let _turn = self.inner.turn(conn).await?;
        let (identity, control, member, same_filter) = {
            let conns = self.inner.conns.lock();
            let entry = conns.get(&conn).ok_or(HubError::NotJoined(conn))?;
            let current = entry.rooms.get(&room);
            let member = current.is_some();
            let same_filter = current.is_some_and(|m| m.filters_as(&filter));
            let limit = self.inner.config.max_subscriptions;
            if !member && entry.rooms.len() >= limit {
                return Err(HubError::TooManySubscriptions { limit });
            }
            (
                entry.identity.clone(),
                Arc::clone(&entry.control),
                member,
                same_filter,
            )
        };
        if member {
            // Already in: nothing changes (and nothing is announced) unless the delivery is to
            // restart somewhere, or with another filter.
            return match from {
                Position::Live if same_filter => Ok(()),
                from => {
                    self.reposition(conn, &room, from, prelude, &control, filter)
                        .await
                }
            };
        }
        let owner = identity
            .as_ref()
            .map(|i| crate::hub::user_owner(i.user_id()));
        let (mut stream, membership) = self
            .enter(conn, identity.as_ref(), owner.as_ref(), &room, from, filter)
            .await?;
        if let Some(prelude) = prelude {
            stream.push_front(prelude);
        }
        let registered = match self.inner.conns.lock().get_mut(&conn) {
            Some(entry) => {
                // In turn, so nothing else added the room meanwhile.
                entry.rooms.insert(room.clone(), Arc::clone(&membership));
                true
            }
            None => false,
        };
        if registered {
            control.add(stream);
            Ok(())
        } else {
            // Disconnected by the server meanwhile: undo this membership.
            drop(stream);
            self.exit(conn, identity.as_ref(), &room, &membership, None);
            Err(HubError::NotJoined(conn))
        }
    }

    /// Restarts a member's delivery of `room` at `from` (after `prelude`, if any): its current
    /// stream ends, a new one starts there; the membership (and presence) is untouched.
    pub(super) async fn reposition(
        &self,
        conn: ConnectionId,
        room: &Topic,
        from: Position,
        prelude: Option<Delivery>,
        control: &Control,
        filter: SharedFilter,
    ) -> Result<(), HubError> {
        let membership = Arc::new(Membership::filtered(filter.clone()));
        let (backend, mirror) = (&*self.inner.backend, &self.inner.rooms);
        let mut stream = open_stream(
            backend,
            mirror,
            room,
            from,
            conn,
            None,
            Some(&membership),
            false,
        )
        .await?;
        stream.set_filter(filter);
        if let Some(prelude) = prelude {
            stream.push_front(prelude);
        }
        let old = self.inner.conns.lock().get_mut(&conn).and_then(|entry| {
            entry
                .rooms
                .get_mut(room)
                .map(|current| std::mem::replace(current, membership))
        });
        match old {
            Some(old) => {
                old.end(None);
                control.add(stream);
                Ok(())
            }
            // Disconnected by the server meanwhile.
            None => Err(HubError::NotJoined(conn)),
        }
    }

    /// [`leave_room`](Self::leave_room), delivering `farewell` as the last thing of the room
    /// (on the room's own stream, so it can't be lost to a full queue or overtaken).
    pub(crate) async fn leave_room_with(
        &self,
        conn: ConnectionId,
        room: &str,
        farewell: Option<Delivery>,
    ) -> Result<bool, HubError> {
        let room = room_topic(room)?;
        let _turn = self.inner.turn(conn).await?;
        let (identity, membership, control) = {
            let mut conns = self.inner.conns.lock();
            let entry = conns.get_mut(&conn).ok_or(HubError::NotJoined(conn))?;
            let Some(membership) = entry.rooms.remove(&room) else {
                return Ok(false);
            };
            (
                entry.identity.clone(),
                membership,
                Arc::clone(&entry.control),
            )
        };
        self.exit(conn, identity.as_ref(), &room, &membership, farewell);
        control.wake();
        Ok(true)
    }

    /// Adds a membership: subscribe to the room's log (holding it, so the log stays while the
    /// connection is a member), then count the connection in the backend's presence, which
    /// announces a first join, then read the snapshot. The snapshot is read after the join, so it
    /// may already include a join or leave that also arrives as a notice after it; applied in
    /// order, the notices leave the right set.
    ///
    /// Cancellation-safe: from the subscription on, an [`Entering`] guard owns the stream; if
    /// this future is dropped (or fails) before it returns, the guard undoes the hold and has
    /// the backend take the connection out of presence, which it does whether or not the add
    /// reached it (see [`Backend`], "The contract").
    pub(super) async fn enter(
        &self,
        conn: ConnectionId,
        identity: Option<&Identity>,
        owner: Option<&Arc<str>>,
        room: &Topic,
        from: Position,
        filter: SharedFilter,
    ) -> Result<(TopicStream, Arc<Membership>), HubError> {
        let inner = &*self.inner;
        let mode = inner.config.presence;
        let membership = Arc::new(Membership::filtered(filter));
        let mut entering = Entering {
            inner,
            conn,
            identity,
            room,
            membership: &membership,
            stream: None,
            done: false,
        };
        let stream = open_stream(
            &*inner.backend,
            &inner.rooms,
            room,
            from,
            conn,
            owner,
            Some(&membership),
            true,
        )
        .await?;
        let mut stream = stream;
        stream.set_filter(membership.filter().clone());
        entering.stream = Some(stream);
        if let (Some(identity), true) = (identity, mode != PresenceMode::Off) {
            let announce =
                (mode == PresenceMode::Full).then(|| presence_event(PRESENCE_JOIN, conn, identity));
            inner
                .backend
                .presence_add(&inner.rooms, room, conn, identity, announce)
                .await?;
        }
        let snapshot = match mode {
            PresenceMode::Full => Some(snapshot(room, inner.snapshot_of(room).await?)),
            PresenceMode::Count => {
                let count = inner.backend.member_count(&inner.rooms, room).await?;
                Some(VecDeque::from([Delivery::Presence(Presence {
                    room: room.clone(),
                    members: Vec::new(),
                    more: false,
                    count,
                })]))
            }
            PresenceMode::Off => None,
        };
        if let (Some(snapshot), Some(stream)) = (snapshot, entering.stream.as_mut()) {
            stream.set_after_replay(snapshot);
        }
        let stream = entering.stream.take();
        entering.done = true;
        drop(entering);
        let stream = stream.ok_or_else(|| HubError::Backend("room stream lost".into()))?;
        Ok((stream, membership))
    }

    pub(super) fn exit(
        &self,
        conn: ConnectionId,
        identity: Option<&Identity>,
        room: &Topic,
        membership: &Membership,
        farewell: Option<Delivery>,
    ) {
        self.inner.exit(conn, identity, room, membership, farewell);
    }
}

/// A presence snapshot as deliveries of at most [`PRESENCE_PAGE`] members each; an empty room
/// still gets one (empty) page.
pub(super) fn snapshot(room: &Topic, members: Vec<Member>) -> VecDeque<Delivery> {
    let count = members.len();
    let pages = count.div_ceil(PRESENCE_PAGE).max(1);
    let mut members = members.into_iter();
    (0..pages)
        .map(|page| {
            Delivery::Presence(Presence {
                room: room.clone(),
                members: members.by_ref().take(PRESENCE_PAGE).collect(),
                more: page + 1 < pages,
                count,
            })
        })
        .collect()
}

impl<B: Backend> Inner<B> {
    /// Every member of `room`, page by page from the backend.
    pub(super) async fn snapshot_of(&self, room: &Topic) -> Result<Vec<Member>, HubError> {
        let mut members: Vec<Member> = Vec::new();
        loop {
            let after = members.last().map(|m| Arc::clone(&m.user));
            let page = self
                .backend
                .members(&self.rooms, room, after.as_deref(), PRESENCE_PAGE)
                .await?;
            let more = page.more && !page.members.is_empty();
            members.extend(page.members);
            if !more {
                return Ok(members);
            }
        }
    }

    /// Ends a membership: the connection's stream of the room stops delivering, the hold on the
    /// room's log goes, and the backend takes the connection out of presence (announcing a last
    /// leave). This runs in drop paths, so the backend's removal is polled once right here (the
    /// in-memory backend finishes at once) and, if it has to wait, finished by a spawned task;
    /// without a runtime it is left to expire with this node's heartbeat.
    pub(super) fn exit(
        &self,
        conn: ConnectionId,
        identity: Option<&Identity>,
        room: &Topic,
        membership: &Membership,
        farewell: Option<Delivery>,
    ) {
        membership.end(farewell);
        self.rooms.registry().unhold(room);
        let mode = self.config.presence;
        let Some(identity) = identity.filter(|_| mode != PresenceMode::Off) else {
            return;
        };
        let announce =
            (mode == PresenceMode::Full).then(|| presence_event(PRESENCE_LEAVE, conn, identity));
        let (backend, mirror) = (Arc::clone(&self.backend), self.rooms.clone());
        let (room, identity) = (room.clone(), identity.clone());
        let removal = Box::pin(async move {
            if let Err(e) = backend
                .presence_remove(&mirror, &room, conn, &identity, announce)
                .await
            {
                tracing::warn!(room = %room, user = identity.user_id(), error = %e,
                    "presence: could not record a leave; it expires with the node");
            }
        });
        finish_in_drop_path(removal);
    }

    /// The turn of `conn` for a membership change (see [`ConnEntry`]).
    pub(super) async fn turn(
        &self,
        conn: ConnectionId,
    ) -> Result<tokio::sync::OwnedMutexGuard<()>, HubError> {
        let changes = {
            let conns = self.conns.lock();
            let entry = conns.get(&conn).ok_or(HubError::NotJoined(conn))?;
            Arc::clone(&entry.changes)
        };
        Ok(changes.lock_owned().await)
    }

    /// Removes a connection and all its memberships; false if it was already gone.
    pub(super) fn forget(&self, conn: ConnectionId) -> bool {
        let Some(entry) = self.conns.lock().remove(&conn) else {
            return false;
        };
        for (room, membership) in &entry.rooms {
            self.exit(conn, entry.identity.as_ref(), room, membership, None);
        }
        entry.control.close();
        true
    }
}
