//! The backend conformance suite (`salvo_realtime::backend::conformance`) against `Local`, and
//! against backends broken on purpose: a suite that can't fail proves nothing, so each broken
//! one must be caught by the check of the rule it breaks. (tests/redis.rs and
//! tests/redis_cluster.rs run the suite against Redis and Redis Cluster.) The broken backends
//! are `Local` with presence hooks (tests/common/hooked.rs).

mod common;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use common::hooked::{HookedLocal, PresenceHooks};
use parking_lot::Mutex;
use salvo_realtime::backend::conformance::Suite;
use salvo_realtime::backend::{Backend, Local, Mirror};
use salvo_realtime::error::HubError;
use salvo_realtime::{ConnectionId, Identity, Publication, Topic};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_passes_every_check() {
    Suite::new(|| async { Local::new() })
        .single_node()
        .patience(std::time::Duration::from_millis(500))
        .run_all()
        .await
        .expect("Local conforms");
}

/// Counts presence per call, as the Redis backend did before issue 18: each add is a new
/// membership (under a fresh id), each remove takes the connection's oldest one.
#[derive(Default)]
struct PerCall(Mutex<HashMap<(ConnectionId, Topic), Vec<ConnectionId>>>);

impl PresenceHooks for PerCall {
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
    let suite = Suite::new(|| async { HookedLocal::<PerCall>::default() }).single_node();
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

impl PresenceHooks for Torn {
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
    let suite = Suite::new(|| async { HookedLocal::<Torn>::default() })
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
