//! The in-memory backend: this process is the authority for its topics' ids and history, and
//! presence is a table here.
//!
//! # Invariants
//!
//! Presence, per (namespace, room): `conns` is the set of connections counted; `users` maps each
//! user to its number of counted connections (and the data its first one joined with), so the
//! sum of the counts is `conns.len()` for identified connections. A room's entry goes when its
//! last connection does. Adds and removes are idempotent per connection. Lock order: the table's
//! lock before any of the mirror's locks (announcements are made under it, so every node sees
//! joins and leaves in their order).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use super::backend::{Backend, MembersPage, Mirror};
use super::{Identity, Member, Publication};
use crate::error::HubError;
use crate::ids::{ConnectionId, MessageId, Topic};
use crate::sync::Mutex;

/// The in-memory backend, the default of [`PubSub`](crate::PubSub) and
/// [`Rooms`](crate::Rooms): each topic's log in this process assigns its ids and keeps its
/// history ([`Mirror::create`], [`Mirror::append`]), and presence is a table in the backend,
/// ordered by user id so that pages and counts cost O(page) and O(1).
///
/// Each hub owns its backend; `Local::default()` is a fresh, empty one.
///
/// ```
/// use salvo_realtime::backend::Local;
/// use salvo_realtime::{HubConfig, PubSub};
///
/// let hub: PubSub<Local> = PubSub::with_backend(HubConfig::new(), Local::default());
/// # drop(hub);
/// ```
#[derive(Default)]
pub struct Local {
    /// Presence per (namespace, room). Lock order: before any of the mirror's locks.
    presence: Mutex<HashMap<(&'static str, Topic), RoomPresence>>,
}

#[derive(Default)]
struct RoomPresence {
    users: BTreeMap<Arc<str>, (usize, Option<Arc<serde_json::Value>>)>,
    /// The connections counted, so that adds and removes are idempotent per connection.
    conns: HashSet<ConnectionId>,
}

impl Local {
    /// An empty in-memory backend (the same as `Local::default()`).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
}

#[cfg(all(test, salvo_realtime_shuttle))]
impl Local {
    /// Every room's presence in `namespace`: the connections counted and each user's count,
    /// for the interleaving tests' invariants.
    pub(crate) fn census(
        &self,
        namespace: &str,
    ) -> Vec<(Topic, HashSet<ConnectionId>, BTreeMap<Arc<str>, usize>)> {
        self.presence
            .lock()
            .iter()
            .filter(|((ns, _), _)| *ns == namespace)
            .map(|((_, room), entry)| {
                let users = entry.users.iter().map(|(u, (n, _))| (Arc::clone(u), *n));
                (room.clone(), entry.conns.clone(), users.collect())
            })
            .collect()
    }
}

impl fmt::Debug for Local {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Local")
            .field("rooms_with_presence", &self.presence.lock().len())
            .finish()
    }
}

impl Backend for Local {
    async fn publish(
        &self,
        mirror: &Mirror,
        topic: &Topic,
        publication: Publication,
    ) -> Result<MessageId, HubError> {
        mirror.append(topic, publication)
    }

    async fn attach(&self, mirror: &Mirror, topic: &Topic) -> Result<(), HubError> {
        mirror.create(topic).map(|_| ())
    }

    fn detach(&self, _mirror: &Mirror, _topic: &Topic) {}

    async fn presence_add(
        &self,
        mirror: &Mirror,
        room: &Topic,
        conn: ConnectionId,
        identity: &Identity,
        announce: Option<Publication>,
    ) -> Result<bool, HubError> {
        let mut table = self.presence.lock();
        let entry = table.entry((mirror.namespace(), room.clone())).or_default();
        if !entry.conns.insert(conn) {
            return Ok(false);
        }
        let user = entry
            .users
            .entry(Arc::clone(identity.user_arc()))
            .or_insert_with(|| (0, identity.data_arc().cloned()));
        user.0 += 1;
        let first = user.0 == 1;
        if let (true, Some(p)) = (first, announce) {
            // Under the table's lock, so joins and leaves are announced in their order.
            mirror.announce(room, p);
        }
        Ok(first)
    }

    async fn presence_remove(
        &self,
        mirror: &Mirror,
        room: &Topic,
        conn: ConnectionId,
        identity: &Identity,
        announce: Option<Publication>,
    ) -> Result<bool, HubError> {
        let mut table = self.presence.lock();
        let key = (mirror.namespace(), room.clone());
        let Some(entry) = table.get_mut(&key) else {
            return Ok(false);
        };
        if !entry.conns.remove(&conn) {
            return Ok(false);
        }
        let last = match entry.users.get_mut(identity.user_id()) {
            Some(user) if user.0 > 1 => {
                user.0 -= 1;
                false
            }
            Some(_) => {
                entry.users.remove(identity.user_id());
                true
            }
            None => false,
        };
        if entry.conns.is_empty() {
            table.remove(&key);
        }
        if let (true, Some(p)) = (last, announce) {
            mirror.announce(room, p);
        }
        Ok(last)
    }

    async fn members(
        &self,
        mirror: &Mirror,
        room: &Topic,
        after: Option<&str>,
        limit: usize,
    ) -> Result<MembersPage, HubError> {
        let table = self.presence.lock();
        let Some(entry) = table.get(&(mirror.namespace(), room.clone())) else {
            return Ok(MembersPage::default());
        };
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut range = entry.users.range::<str, _>((start, Bound::Unbounded)).map(
            |(user, (connections, data))| Member {
                user: Arc::clone(user),
                connections: *connections,
                data: data.clone(),
            },
        );
        let members: Vec<Member> = range.by_ref().take(limit).collect();
        let more = range.next().is_some();
        Ok(MembersPage { members, more })
    }

    async fn member_count(&self, mirror: &Mirror, room: &Topic) -> Result<usize, HubError> {
        Ok(self
            .presence
            .lock()
            .get(&(mirror.namespace(), room.clone()))
            .map_or(0, |entry| entry.users.len()))
    }

    fn idle_ttl(&self, configured: Duration) -> Duration {
        configured
    }
}
