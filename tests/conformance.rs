//! The backend conformance suite (`salvo_realtime::backend::conformance`) against `Local`, and
//! against backends broken on purpose: a suite that can't fail proves nothing, so each broken
//! one must be caught by the check of the rule it breaks. (tests/redis.rs and
//! tests/redis_cluster.rs run the suite against Redis and Redis Cluster.)

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use parking_lot::Mutex;
use salvo_realtime::backend::conformance::Suite;
use salvo_realtime::backend::{Backend, Local, MembersPage, Mirror};
use salvo_realtime::error::HubError;
use salvo_realtime::{ConnectionId, Identity, MessageId, Publication, Topic};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_passes_every_check() {
    Suite::new(|| async { Local::new() })
        .single_node()
        .patience(std::time::Duration::from_millis(500))
        .run_all()
        .await
        .expect("Local conforms");
}

/// What a broken backend changes about `Local`'s presence.
trait Breakage: Default + Send + Sync + 'static {
    fn add(
        &self,
        inner: &Local,
        mirror: &Mirror,
        room: &Topic,
        conn: ConnectionId,
        identity: &Identity,
        announce: Option<Publication>,
    ) -> impl Future<Output = Result<bool, HubError>> + Send;

    fn remove(
        &self,
        inner: &Local,
        mirror: &Mirror,
        room: &Topic,
        conn: ConnectionId,
        identity: &Identity,
        announce: Option<Publication>,
    ) -> impl Future<Output = Result<bool, HubError>> + Send;
}

/// `Local` with its presence replaced by a broken one; everything else forwarded.
#[derive(Default)]
struct Broken<K> {
    inner: Local,
    breakage: K,
}

impl<K: Breakage> Backend for Broken<K> {
    async fn publish(
        &self,
        mirror: &Mirror,
        topic: &Topic,
        publication: Publication,
    ) -> Result<MessageId, HubError> {
        self.inner.publish(mirror, topic, publication).await
    }

    async fn attach(&self, mirror: &Mirror, topic: &Topic) -> Result<(), HubError> {
        self.inner.attach(mirror, topic).await
    }

    fn detach(&self, mirror: &Mirror, topic: &Topic) {
        self.inner.detach(mirror, topic);
    }

    async fn presence_add(
        &self,
        mirror: &Mirror,
        room: &Topic,
        conn: ConnectionId,
        identity: &Identity,
        announce: Option<Publication>,
    ) -> Result<bool, HubError> {
        self.breakage
            .add(&self.inner, mirror, room, conn, identity, announce)
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
        self.breakage
            .remove(&self.inner, mirror, room, conn, identity, announce)
            .await
    }

    async fn members(
        &self,
        mirror: &Mirror,
        room: &Topic,
        after: Option<&str>,
        limit: usize,
    ) -> Result<MembersPage, HubError> {
        self.inner.members(mirror, room, after, limit).await
    }

    async fn member_count(&self, mirror: &Mirror, room: &Topic) -> Result<usize, HubError> {
        self.inner.member_count(mirror, room).await
    }

    fn idle_ttl(&self, configured: std::time::Duration) -> std::time::Duration {
        self.inner.idle_ttl(configured)
    }
}

/// Counts presence per call, as the Redis backend did before issue 18: each add is a new
/// membership (under a fresh id), each remove takes the connection's oldest one.
#[derive(Default)]
struct PerCall(Mutex<HashMap<(ConnectionId, Topic), Vec<ConnectionId>>>);

impl Breakage for PerCall {
    async fn add(
        &self,
        inner: &Local,
        mirror: &Mirror,
        room: &Topic,
        conn: ConnectionId,
        identity: &Identity,
        announce: Option<Publication>,
    ) -> Result<bool, HubError> {
        let fresh = ConnectionId::next();
        self.0
            .lock()
            .entry((conn, room.clone()))
            .or_default()
            .push(fresh);
        inner
            .presence_add(mirror, room, fresh, identity, announce)
            .await
    }

    async fn remove(
        &self,
        inner: &Local,
        mirror: &Mirror,
        room: &Topic,
        conn: ConnectionId,
        identity: &Identity,
        announce: Option<Publication>,
    ) -> Result<bool, HubError> {
        let oldest = {
            let mut issued = self.0.lock();
            let key = (conn, room.clone());
            let oldest = issued
                .get_mut(&key)
                .filter(|v| !v.is_empty())
                .map(|v| v.remove(0));
            if issued.get(&key).is_some_and(Vec::is_empty) {
                issued.remove(&key);
            }
            oldest
        };
        match oldest {
            Some(fresh) => {
                inner
                    .presence_remove(mirror, room, fresh, identity, announce)
                    .await
            }
            None => Ok(false),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_counting_presence_per_call_is_caught() {
    let suite = Suite::new(|| async { Broken::<PerCall>::default() }).single_node();
    let failure = suite
        .presence_idempotent()
        .await
        .expect_err("counting per call breaks idempotency");
    assert_eq!(failure.check, "presence_idempotent");
    assert!(
        failure.message.contains("twice"),
        "the failure names the step: {failure}"
    );
    println!("caught: {failure}");
    let failure = suite.run_all().await.expect_err("run_all catches it too");
    assert_eq!(failure.check, "presence_idempotent");
}

/// Not cancellation-safe: it counts the connection under an id of its own, then waits (a
/// round trip, say), and only then records which id it used; dropped in between, the count
/// stays and no remove can find it.
#[derive(Default)]
struct Torn(Mutex<HashMap<(ConnectionId, Topic), ConnectionId>>);

/// `Pending` once, then `Ready`.
struct Yield(bool);

impl Future for Yield {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if std::mem::replace(&mut self.0, true) {
            Poll::Ready(())
        } else {
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

impl Breakage for Torn {
    async fn add(
        &self,
        inner: &Local,
        mirror: &Mirror,
        room: &Topic,
        conn: ConnectionId,
        identity: &Identity,
        announce: Option<Publication>,
    ) -> Result<bool, HubError> {
        if self.0.lock().contains_key(&(conn, room.clone())) {
            return Ok(false);
        }
        let own = ConnectionId::next();
        let first = inner
            .presence_add(mirror, room, own, identity, announce)
            .await?;
        Yield(false).await;
        self.0.lock().insert((conn, room.clone()), own);
        Ok(first)
    }

    async fn remove(
        &self,
        inner: &Local,
        mirror: &Mirror,
        room: &Topic,
        conn: ConnectionId,
        identity: &Identity,
        announce: Option<Publication>,
    ) -> Result<bool, HubError> {
        let own = self.0.lock().remove(&(conn, room.clone()));
        match own {
            Some(own) => {
                inner
                    .presence_remove(mirror, room, own, identity, announce)
                    .await
            }
            None => Ok(false),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_is_not_cancellation_safe_is_caught() {
    let suite = Suite::new(|| async { Broken::<Torn>::default() })
        .single_node()
        .patience(std::time::Duration::from_millis(500));
    // It keeps its other promises...
    suite
        .presence_idempotent()
        .await
        .expect("idempotent when not cut short");
    // ...but a join dropped between its two steps leaves a member behind.
    let failure = suite
        .cancellation()
        .await
        .expect_err("a cut-short add leaks its count");
    assert_eq!(failure.check, "cancellation");
    assert!(
        failure.message.contains("dropped at await point"),
        "the failure names where it was cut: {failure}"
    );
    println!("caught: {failure}");
}
