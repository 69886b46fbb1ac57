//! `Local` behind the backend seam with presence of a test's own: every call goes to `Local`
//! except `presence_add` and `presence_remove`, which go through the test's [`PresenceHooks`]
//! (a gate that holds an add, a count broken on purpose). Written once, so no test backend can
//! forget to forward a method.

use std::future::Future;
use std::time::Duration;

use salvo_realtime::backend::{Backend, Local, MembersPage, Mirror};
use salvo_realtime::error::HubError;
use salvo_realtime::{ConnectionId, Identity, MessageId, Publication, Topic};

/// What a test puts in place of `Local`'s presence calls; each is `Local`'s unless written.
pub trait PresenceHooks: Send + Sync + 'static {
    /// `presence_add`, given the `Local` inside.
    fn add(
        &self,
        local: &Local,
        mirror: &Mirror,
        room: &Topic,
        conn: ConnectionId,
        identity: &Identity,
        announce: Option<Publication>,
    ) -> impl Future<Output = Result<bool, HubError>> + Send {
        local.presence_add(mirror, room, conn, identity, announce)
    }

    /// `presence_remove`, given the `Local` inside.
    fn remove(
        &self,
        local: &Local,
        mirror: &Mirror,
        room: &Topic,
        conn: ConnectionId,
        identity: &Identity,
        announce: Option<Publication>,
    ) -> impl Future<Output = Result<bool, HubError>> + Send {
        local.presence_remove(mirror, room, conn, identity, announce)
    }
}

/// `Local` with its presence calls going through `hooks`; everything else forwarded as it is.
#[derive(Default)]
pub struct HookedLocal<P> {
    pub local: Local,
    pub hooks: P,
}

impl<P> HookedLocal<P> {
    /// A fresh `Local` behind `hooks`.
    pub fn new(hooks: P) -> Self {
        Self {
            local: Local::default(),
            hooks,
        }
    }
}

impl<P: PresenceHooks> Backend for HookedLocal<P> {
    async fn publish(
        &self,
        mirror: &Mirror,
        topic: &Topic,
        publication: Publication,
    ) -> Result<MessageId, HubError> {
        self.local.publish(mirror, topic, publication).await
    }

    async fn attach(&self, mirror: &Mirror, topic: &Topic) -> Result<(), HubError> {
        self.local.attach(mirror, topic).await
    }

    fn detach(&self, mirror: &Mirror, topic: &Topic) {
        self.local.detach(mirror, topic);
    }

    async fn presence_add(
        &self,
        mirror: &Mirror,
        room: &Topic,
        conn: ConnectionId,
        identity: &Identity,
        announce: Option<Publication>,
    ) -> Result<bool, HubError> {
        self.hooks
            .add(&self.local, mirror, room, conn, identity, announce)
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
        self.hooks
            .remove(&self.local, mirror, room, conn, identity, announce)
            .await
    }

    async fn members(
        &self,
        mirror: &Mirror,
        room: &Topic,
        after: Option<&str>,
        limit: usize,
    ) -> Result<MembersPage, HubError> {
        self.local.members(mirror, room, after, limit).await
    }

    async fn member_count(&self, mirror: &Mirror, room: &Topic) -> Result<usize, HubError> {
        self.local.member_count(mirror, room).await
    }

    fn idle_ttl(&self, configured: Duration) -> Duration {
        self.local.idle_ttl(configured)
    }
}
