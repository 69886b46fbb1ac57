//! The backend seam: one code path for every backend. These tests drive the hubs through
//! backends written for tests (`Local` with a gate on its presence, tests/common/hooked.rs, and
//! the stub "remote" of tests/common/remote.rs), so they pin what the hubs do at the seam, not what one backend
//! happens to do.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::hooked::{HookedLocal, PresenceHooks};
use common::remote::Remote;
use common::{messages, ready};
use salvo_realtime::backend::{Backend, Local, Mirror};
use salvo_realtime::error::HubError;
use salvo_realtime::hub::{PRESENCE_JOIN, PresenceMode};
use salvo_realtime::{
    Connection, ConnectionId, Delivery, Hub, HubConfig, Identity, Position, PubSub, Publication,
    Rooms, Topic,
};
use tokio::sync::Semaphore;

/// Presence hooks for `Local` with a gate on `presence_add`: until a permit is given, the add
/// waits, either before reaching `Local` (`before`) or after it (`!before`). Counts adds and
/// removes.
struct Gate {
    gate: Arc<Semaphore>,
    before: bool,
    adds: AtomicUsize,
    removes: AtomicUsize,
}

/// `Local` behind a [`Gate`].
fn gated(before: bool) -> HookedLocal<Gate> {
    HookedLocal::new(Gate {
        gate: Arc::new(Semaphore::new(0)),
        before,
        adds: AtomicUsize::new(0),
        removes: AtomicUsize::new(0),
    })
}

impl PresenceHooks for Gate {
    async fn add(
        &self,
        local: &Local,
        m: &Mirror,
        room: &Topic,
        conn: ConnectionId,
        identity: &Identity,
        announce: Option<Publication>,
    ) -> Result<bool, HubError> {
        self.adds.fetch_add(1, Ordering::SeqCst);
        if self.before
            && let Ok(permit) = self.gate.acquire().await
        {
            permit.forget();
        }
        let first = local
            .presence_add(m, room, conn, identity, announce)
            .await?;
        if !self.before
            && let Ok(permit) = self.gate.acquire().await
        {
            permit.forget();
        }
        Ok(first)
    }

    async fn remove(
        &self,
        local: &Local,
        m: &Mirror,
        room: &Topic,
        conn: ConnectionId,
        identity: &Identity,
        announce: Option<Publication>,
    ) -> Result<bool, HubError> {
        self.removes.fetch_add(1, Ordering::SeqCst);
        local
            .presence_remove(m, room, conn, identity, announce)
            .await
    }
}

fn member(user: &str, room: &str) -> Connection {
    Connection::new()
        .authenticated(Identity::new(user))
        .subscribe(Topic::new(room).expect("valid"), Position::Live)
}

/// A join cut short while the backend counts presence, before or after the count took effect,
/// leaves nothing behind: no member, no room, no held log; and the backend was asked to undo it.
#[tokio::test]
async fn a_join_cut_short_at_the_seam_leaves_no_phantom_member() {
    for before in [true, false] {
        let rooms = Rooms::with_backend(HubConfig::new(), gated(before));
        let watcher = member("watcher", "hall");
        rooms.backend().hooks.gate.add_permits(1); // let the watcher's own add through
        let mut watching = rooms.join(&watcher).await.expect("join");
        ready(&mut watching);
        for i in 0..20 {
            let conn = member(&format!("ghost{i}"), "hall");
            let cut = tokio::time::timeout(Duration::from_millis(5), rooms.join(&conn)).await;
            assert!(cut.is_err(), "the gate holds the join");
        }
        // The undo runs from a spawned task when the backend has to wait; let it run.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let users: Vec<String> = rooms
            .presence("hall")
            .await
            .iter()
            .map(|m| m.user.to_string())
            .collect();
        assert_eq!(users, ["watcher"], "before={before}");
        assert_eq!(rooms.connection_count(), 1);
        assert_eq!(rooms.room_count(), 1);
        let backend = rooms.backend();
        assert_eq!(backend.hooks.adds.load(Ordering::SeqCst), 21);
        assert_eq!(backend.hooks.removes.load(Ordering::SeqCst), 20);
        // A ghost whose add went through (`!before`) had its join announced; its leave must
        // follow, so the watcher's view ends with the watcher alone as well.
        let mut present = std::collections::BTreeSet::new();
        for m in messages(&ready(&mut watching)) {
            let user: serde_json::Value = m.json().expect("json");
            let user = user["user"].as_str().expect("user").to_owned();
            if m.event().map(|e| e.as_str()) == Some(PRESENCE_JOIN) {
                present.insert(user);
            } else {
                present.remove(&user);
            }
        }
        assert!(present.is_empty(), "before={before}: {present:?}");
        rooms.leave(&watcher, watching).await;
        assert_eq!(rooms.room_count(), 0);
        assert_eq!(rooms.member_count("hall").await.expect("count"), 0);
    }
}

#[tokio::test]
async fn count_mode_tells_the_count_and_sends_no_notices() {
    let rooms = Rooms::with_config(HubConfig::new().presence_mode(PresenceMode::Count));
    let mut subs = Vec::new();
    for i in 0..5 {
        let conn = member(&format!("u{i}"), "stage");
        let mut sub = rooms.join(&conn).await.expect("join");
        let got = ready(&mut sub);
        let [Delivery::Presence(p)] = got.as_slice() else {
            panic!("one count, got {got:?}")
        };
        assert_eq!((p.count, p.members.len(), p.more), (i + 1, 0, false));
        subs.push((conn, sub));
    }
    // Nobody was told of the later joins, nor of a leave.
    let (conn, sub) = subs.pop().expect("five");
    rooms.leave(&conn, sub).await;
    for (_, sub) in &mut subs {
        assert!(ready(sub).is_empty());
    }
    assert_eq!(rooms.member_count("stage").await.expect("count"), 4);
    // Pages still list everyone, in order.
    let page = rooms.presence_page("stage", None, 3).await.expect("page");
    let users: Vec<&str> = page.members.iter().map(|m| &*m.user).collect();
    assert_eq!((users, page.more), (vec!["u0", "u1", "u2"], true));
    let rest = rooms
        .presence_page("stage", Some("u2"), 3)
        .await
        .expect("page");
    assert_eq!((rest.members.len(), rest.more), (1, false));
}

#[tokio::test]
async fn off_mode_counts_nobody_and_sends_nothing() {
    let rooms = Rooms::with_config(HubConfig::new().presence(false));
    let a = member("a", "r");
    let mut sa = rooms.join(&a).await.expect("join");
    let b = member("b", "r");
    let _sb = rooms.join(&b).await.expect("join");
    assert!(ready(&mut sa).is_empty());
    assert_eq!(rooms.member_count("r").await.expect("count"), 0);
    assert_eq!(rooms.room_count(), 1);
}

/// A full snapshot of a room bigger than one page arrives in pages, with the total on each,
/// and the pages together list every member exactly once, in order.
#[tokio::test]
async fn a_big_room_snapshot_comes_in_ordered_pages_with_the_count() {
    let rooms = Rooms::new();
    let mut subs = Vec::new();
    for i in 0..600 {
        let conn = member(&format!("user{i:04}"), "big");
        subs.push(rooms.join(&conn).await.expect("join"));
    }
    let late = member("zz-late", "big");
    let mut sub = rooms.join(&late).await.expect("join");
    let pages: Vec<_> = ready(&mut sub)
        .into_iter()
        .filter_map(|d| match d {
            Delivery::Presence(p) => Some(p),
            _ => None,
        })
        .collect();
    assert_eq!(
        pages.len(),
        601usize.div_ceil(salvo_realtime::hub::PRESENCE_PAGE)
    );
    assert!(pages.iter().all(|p| p.count == 601));
    assert!(pages[..pages.len() - 1].iter().all(|p| p.more));
    assert!(!pages[pages.len() - 1].more);
    let users: Vec<String> = pages
        .iter()
        .flat_map(|p| p.members.iter().map(|m| m.user.to_string()))
        .collect();
    let mut sorted = users.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(users, sorted);
    assert_eq!(users.len(), 601);
}

/// One client creating thousands of topics is capped on a remote backend too (the cap used
/// to apply only to the in-memory hubs), and a refused topic leaves no log behind.
#[tokio::test]
async fn the_per_owner_cap_holds_on_a_remote_backend() {
    let hub = PubSub::with_backend(HubConfig::new().max_topics_per_owner(3), Remote::default());
    let addr: std::net::SocketAddr = "127.0.0.1:40000".parse().expect("addr");
    let mut subs = Vec::new();
    for i in 0..3 {
        let conn = Connection::new()
            .with_remote_addr(addr)
            .subscribe(Topic::new(&format!("t{i}")).expect("topic"), Position::Live);
        subs.push(hub.join(&conn).await.expect("under the cap"));
    }
    let conn = Connection::new()
        .with_remote_addr(addr)
        .subscribe(Topic::new("t3").expect("topic"), Position::Live);
    let refused = hub.join(&conn).await.expect_err("over the cap");
    assert!(
        matches!(refused, HubError::TooManyCreated { limit: 3 }),
        "{refused:?}"
    );
    assert_eq!(hub.topic_count(), 3);
    // Another client is not affected, and closing one frees the owner's slot.
    let other = Connection::new()
        .with_remote_addr("127.0.0.2:40000".parse().expect("addr"))
        .subscribe(Topic::new("t3").expect("topic"), Position::Live);
    let _other = hub.join(&other).await.expect("another owner");
    drop(subs.pop());
    let again = Connection::new()
        .with_remote_addr(addr)
        .subscribe(Topic::new("t9").expect("topic"), Position::Live);
    hub.join(&again).await.expect("a slot was freed");
}

/// A remote backend's logs are freed as soon as nobody here follows them, and the backend is
/// told; the in-memory backend keeps an idle log with history for `idle_ttl`.
#[tokio::test]
async fn idle_logs_follow_the_backends_idle_ttl() {
    let remote = PubSub::with_backend(HubConfig::new(), Remote::default());
    let sub = remote.subscribe("news", Position::Live).await.expect("sub");
    remote.publish("news", "one").await.expect("publish");
    drop(sub);
    assert_eq!(remote.topic_count(), 0);
    assert_eq!(remote.backend().detached(), 1);

    let local = PubSub::new();
    let sub = local.subscribe("news", Position::Live).await.expect("sub");
    local.publish("news", "one").await.expect("publish");
    drop(sub);
    assert_eq!(local.topic_count(), 1, "kept for late joiners");
}

/// What the Redis backend does after a join cut short, any backend can do through the public
/// `Mirror`: free a log it synced for nobody, and never one that somebody follows.
#[tokio::test]
async fn a_backend_releases_a_log_it_synced_for_nobody() {
    let hub = PubSub::with_backend(HubConfig::new(), Remote::default());
    let sub = hub.subscribe("news", Position::Live).await.expect("sub");
    let mirror = hub.backend().mirror("topics");
    let news = Topic::new("news").expect("topic");
    assert!(!mirror.release(&news), "followed: kept");
    let orphan = Topic::new("orphan").expect("topic");
    mirror
        .sync(&orphan, salvo_realtime::hub::Epoch::random(), 0, &[])
        .expect("sync");
    assert_eq!(hub.topic_count(), 2);
    assert!(mirror.release(&orphan), "nobody follows it");
    assert!(!mirror.release(&orphan), "already gone");
    assert_eq!(hub.topic_count(), 1);
    hub.publish("news", "still here").await.expect("publish");
    drop(sub);
    assert_eq!(hub.topic_count(), 0);
}
