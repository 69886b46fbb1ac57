//! Hub operations racing each other, explored by [shuttle](https://docs.rs/shuttle): each
//! scenario runs its operations on two or three threads under randomized and PCT schedules
//! (shuttle preempts at every lock and atomic of the hub core, through `src/sync.rs`, and at
//! every backend call, where [`Stepped`] makes the operation wait once), drops some of them at
//! a random await point, and checks the hub's invariants after every run:
//!
//! * **one membership, one of everything**: a connection is a member of a room exactly when its
//!   subscription has one live stream of the room, the room's log holds one hold for it, and
//!   the backend counts it once in the room's presence (its user's count is its number of
//!   member connections);
//! * **nothing held without a member**: no log keeps a hold or a subscriber that no membership
//!   or live stream accounts for, and when every connection is gone, no log, no presence;
//! * **a closed topic ends its streams** and never hands them to a new log of the same name.
//!
//! Run by `.ci/model` (`RUSTFLAGS="--cfg salvo_realtime_shuttle" cargo test --lib shuttle_`).
//! `SHUTTLE_ITERATIONS` sets the runs per scheduler and scenario (default 300).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::StreamExt;
use shuttle::rand::{RngCore, thread_rng};

use super::backend::{Backend, MembersPage, Mirror};
use super::local::Local;
use super::subscription::Subscription;
use super::{Connection, Delivery, Hub, HubConfig, Identity, Position, PubSub, Publication, Rooms};
use crate::error::HubError;
use crate::ids::{ConnectionId, MessageId, Topic};

/// The in-memory backend, with each call (but the removal, which runs in drop paths) waiting
/// once before it runs: an await point where another operation may run and where a dropped
/// operation stops.
#[derive(Default)]
struct Stepped(Local);

impl Backend for Stepped {
    async fn publish(
        &self,
        mirror: &Mirror,
        topic: &Topic,
        p: Publication,
    ) -> Result<MessageId, HubError> {
        shuttle::future::yield_now().await;
        self.0.publish(mirror, topic, p).await
    }

    async fn attach(&self, mirror: &Mirror, topic: &Topic) -> Result<(), HubError> {
        shuttle::future::yield_now().await;
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
        shuttle::future::yield_now().await;
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
        shuttle::future::yield_now().await;
        self.0.members(mirror, room, after, limit).await
    }

    async fn member_count(&self, mirror: &Mirror, room: &Topic) -> Result<usize, HubError> {
        shuttle::future::yield_now().await;
        self.0.member_count(mirror, room).await
    }

    fn idle_ttl(&self, configured: Duration) -> Duration {
        self.0.idle_ttl(configured)
    }
}

type Hub_ = Rooms<Stepped>;

fn hub() -> Hub_ {
    // Free a log as soon as nothing keeps it, so a leftover shows as a leftover.
    Rooms::with_backend(
        HubConfig::new().idle_ttl(Duration::ZERO),
        Stepped::default(),
    )
}

fn topic(name: &str) -> Topic {
    Topic::new(name).expect("a valid topic")
}

fn user(name: &str, rooms: &[&str]) -> Connection {
    rooms.iter().fold(
        Connection::new().authenticated(Identity::new(name)),
        |conn, room| conn.subscribe(topic(room), Position::Live),
    )
}

/// A subscription shared between the scenario's threads (one may `leave` with it).
type Slot = Arc<std::sync::Mutex<Option<Subscription>>>;

fn slot(sub: Option<Subscription>) -> Slot {
    Arc::new(std::sync::Mutex::new(sub))
}

fn take(slot: &Slot) -> Option<Subscription> {
    slot.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
}

/// Polls `fut` at most `polls` times, then drops it where it stands (a cancelled request).
async fn cut_after<F: Future>(fut: F, polls: u64) -> Option<F::Output> {
    let mut fut = pin!(fut);
    let mut left = polls;
    std::future::poll_fn(|cx| {
        if left == 0 {
            return Poll::Ready(None);
        }
        left -= 1;
        fut.as_mut().poll(cx).map(Some)
    })
    .await
}

/// Runs `op` whole, or (one run in three) cut at a random await point.
async fn maybe_cut<F: Future>(op: F) -> Option<F::Output> {
    if thread_rng().next_u64() % 3 == 0 {
        cut_after(op, thread_rng().next_u64() % 6).await
    } else {
        Some(op.await)
    }
}

/// Runs each of `ops` on a thread of its own (with a tokio context: the hub's drop paths look
/// for a runtime) and waits for all.
fn race(ops: Vec<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>) {
    let threads: Vec<_> = ops
        .into_iter()
        .map(|op| shuttle::thread::spawn(move || shuttle::future::block_on(op)))
        .collect();
    for thread in threads {
        thread.join().expect("an operation panicked");
    }
}

/// Delivers what is ready (dropping streams that ended), with no waker to keep.
fn settle(sub: &mut Subscription) -> Vec<Delivery> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut got = Vec::new();
    while let Poll::Ready(Some(delivery)) = sub.poll_next_unpin(&mut cx) {
        got.push(delivery);
    }
    got
}

/// The invariants in the module docs, for `rooms` and the subscriptions still held.
fn check(rooms: &Hub_, subs: &mut [(ConnectionId, Option<Subscription>)]) {
    // Long on purpose: one assertion block per invariant of the module docs, in their order,
    // so a failing schedule names the invariant it broke.
    let memberships = rooms.memberships();
    let mut members: BTreeMap<Topic, BTreeSet<ConnectionId>> = BTreeMap::new();
    let mut users: HashMap<ConnectionId, Arc<str>> = HashMap::new();
    for (conn, user, rooms_of) in &memberships {
        if let Some(user) = user {
            users.insert(*conn, Arc::clone(user));
        }
        for room in rooms_of {
            members.entry(room.clone()).or_default().insert(*conn);
        }
    }
    // Each member's subscription has one live stream per room, no other. (A stream that ended
    // still counts as its log's subscriber until the subscription drops it.)
    let mut streams: BTreeMap<Topic, usize> = BTreeMap::new();
    for (conn, sub) in subs.iter_mut() {
        let Some(sub) = sub else { continue };
        let _ = settle(sub);
        let census = sub.census();
        let rooms_only = census.iter().filter(|(t, _)| !t.as_str().starts_with('@'));
        let mut live: Vec<Topic> = Vec::new();
        for (room, delivering) in rooms_only {
            *streams.entry(room.clone()).or_default() += 1;
            if *delivering {
                live.push(room.clone());
            }
        }
        live.sort();
        let mut expected: Vec<Topic> = memberships
            .iter()
            .find(|(id, _, _)| id == conn)
            .map(|(_, _, rooms)| rooms.clone())
            .unwrap_or_default();
        expected.sort();
        assert_eq!(live, expected, "live streams of {conn} vs its memberships");
    }
    // Each log: one hold per member, one subscriber per stream; no log without either.
    let logs: BTreeMap<Topic, (usize, usize)> = rooms
        .room_logs()
        .into_iter()
        .map(|(room, holds, subscribers)| (room, (holds, subscribers)))
        .collect();
    for (room, (holds, subscribers)) in &logs {
        let expected = members.get(room).map_or(0, BTreeSet::len);
        assert_eq!(*holds, expected, "holds of {room}");
        assert_eq!(
            *subscribers,
            streams.get(room).copied().unwrap_or(0),
            "subscribers of {room}"
        );
        assert!(
            *holds > 0 || *subscribers > 0,
            "log {room} kept with no member and no subscriber"
        );
    }
    for room in members.keys() {
        assert!(
            logs.contains_key(room),
            "a member of {room} without its log"
        );
    }
    // Presence: the member connections, once each; each user counted per connection.
    let presence = rooms.backend().0.census("rooms");
    let mut counted: BTreeMap<Topic, BTreeSet<ConnectionId>> = BTreeMap::new();
    for (room, conns, per_user) in presence {
        let mut expected: BTreeMap<Arc<str>, usize> = BTreeMap::new();
        for conn in &conns {
            let user = users.get(conn).unwrap_or_else(|| {
                panic!("{conn} counted in {room}'s presence but not joined (a phantom)")
            });
            *expected.entry(Arc::clone(user)).or_default() += 1;
        }
        assert_eq!(per_user, expected, "per-user counts in {room}");
        counted.insert(room, conns.into_iter().collect());
    }
    let identified: BTreeMap<Topic, BTreeSet<ConnectionId>> = members
        .iter()
        .map(|(room, conns)| {
            let conns: BTreeSet<_> = conns
                .iter()
                .filter(|c| users.contains_key(c))
                .copied()
                .collect();
            (room.clone(), conns)
        })
        .filter(|(_, conns)| !conns.is_empty())
        .collect();
    assert_eq!(counted, identified, "presence vs memberships");
}

/// After everything: every connection gone, nothing left.
fn check_empty(rooms: &Hub_) {
    assert!(rooms.memberships().is_empty(), "connections left");
    assert!(
        rooms.room_logs().is_empty(),
        "logs left: {:?}",
        rooms.room_logs()
    );
    assert!(
        rooms.backend().0.census("rooms").is_empty(),
        "presence left"
    );
}

fn explore(name: &str, scenario: impl Fn() + Send + Sync + 'static) {
    let iterations = std::env::var("SHUTTLE_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300);
    let scenario = Arc::new(scenario);
    let with_runtime = move || {
        let scenario = Arc::clone(&scenario);
        move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("a runtime");
            let _context = runtime.enter();
            scenario();
        }
    };
    eprintln!("{name}: {iterations} random and {iterations} PCT schedules");
    shuttle::check_random(with_runtime(), iterations);
    shuttle::check_pct(with_runtime(), iterations, 3);
}

/// Defect 3 of issue 18: two `join_room` of one connection into one room (a server-side
/// subscribe racing the client's own). The loser's undo took the winner's presence away.
#[test]
fn shuttle_two_join_rooms_of_one_room() {
    explore("two join_rooms", || {
        let rooms = hub();
        let ann = user("ann", &[]);
        let sub = shuttle::future::block_on(rooms.join(&ann)).expect("join");
        let id = ann.id();
        let ops = (0..2)
            .map(|_| {
                let rooms = rooms.clone();
                Box::pin(async move {
                    let _ = maybe_cut(rooms.join_room(id, "r", Position::Live)).await;
                }) as std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
            })
            .collect();
        race(ops);
        let mut subs = [(id, Some(sub))];
        check(&rooms, &mut subs);
        let sub = subs[0].1.take().expect("held");
        shuttle::future::block_on(rooms.leave(&ann, sub));
        check_empty(&rooms);
    });
}

/// Defect 4 of issue 18: `Rooms::join` racing `join_room` for the same room. The join's
/// unconditional insert gave the connection two streams (duplicate delivery) and two holds,
/// and the room's log stayed after the connection left.
#[test]
fn shuttle_join_racing_join_room() {
    explore("join vs join_room", || {
        let rooms = hub();
        let ann = user("ann", &["r"]);
        let id = ann.id();
        let joined: Slot = slot(None);
        let first = {
            let (rooms, ann, joined) = (rooms.clone(), ann.clone(), Arc::clone(&joined));
            Box::pin(async move {
                let sub = rooms.join(&ann).await.expect("join");
                *joined
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(sub);
            }) as std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
        };
        let second = {
            let rooms = rooms.clone();
            Box::pin(async move {
                // As soon as the connection is visible (a server listing a user's connections).
                while rooms.connection_count() == 0 {
                    shuttle::future::yield_now().await;
                }
                let _ = rooms.join_room(id, "r", Position::Live).await;
            }) as std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
        };
        race(vec![first, second]);
        let mut subs = [(id, take(&joined))];
        check(&rooms, &mut subs);
        let got = settle(subs[0].1.as_mut().expect("joined"));
        assert!(
            got.len() <= 1,
            "one presence snapshot, no duplicate: {got:?}"
        );
        let sub = subs[0].1.take().expect("joined");
        shuttle::future::block_on(rooms.leave(&ann, sub));
        check_empty(&rooms);
    });
}

/// Every membership change of two users' connections at once, some of them cut short, a
/// publish, and a server disconnect (of one connection, or of every connection of a user):
/// the invariants hold whatever ran, and leaving frees everything.
#[test]
fn shuttle_membership_changes_cut_short_and_a_disconnect() {
    explore("membership changes", || {
        let rooms = hub();
        let ann = user("ann", &["a"]);
        let ann2 = user("ann", &["a", "b"]);
        let bob = user("bob", &["b"]);
        let mut subs = Vec::new();
        for conn in [&ann, &ann2, &bob] {
            let sub = shuttle::future::block_on(rooms.join(conn)).expect("join");
            subs.push((conn.id(), Some(sub)));
        }
        let (a, a2, b) = (ann.id(), ann2.id(), bob.id());
        let ops: Vec<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>> = vec![
            {
                let rooms = rooms.clone();
                Box::pin(async move {
                    let _ = maybe_cut(rooms.join_room(a, "b", Position::Live)).await;
                    let _ = maybe_cut(rooms.leave_room(a2, "a")).await;
                })
            },
            {
                let rooms = rooms.clone();
                Box::pin(async move {
                    let _ = maybe_cut(rooms.join_room(b, "a", Position::Recent(1))).await;
                    let _ = maybe_cut(rooms.join_room(a2, "a", Position::Recent(1))).await;
                })
            },
            {
                let rooms = rooms.clone();
                Box::pin(async move {
                    let _ = maybe_cut(rooms.broadcast("a", "hi")).await;
                    match thread_rng().next_u64() % 3 {
                        0 => {
                            let _ = rooms.disconnect(a);
                        }
                        1 => {
                            let _ = rooms.disconnect_user("ann");
                        }
                        _ => {
                            let _ = maybe_cut(rooms.leave_room(b, "b")).await;
                        }
                    }
                })
            },
        ];
        race(ops);
        check(&rooms, &mut subs);
        for (conn, sub) in &mut subs {
            let sub = sub.take().expect("held");
            let conn = [&ann, &ann2, &bob]
                .into_iter()
                .find(|c| c.id() == *conn)
                .expect("known");
            shuttle::future::block_on(rooms.leave(conn, sub));
        }
        check_empty(&rooms);
    });
}

/// A connection leaving (its subscription taken back) while the server moves it into rooms:
/// nothing of it is left behind, whichever comes first.
#[test]
fn shuttle_leave_racing_join_room() {
    explore("leave vs join_room", || {
        let rooms = hub();
        let ann = user("ann", &["a"]);
        let id = ann.id();
        let sub = shuttle::future::block_on(rooms.join(&ann)).expect("join");
        let held = slot(Some(sub));
        let ops: Vec<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>> = vec![
            {
                let (rooms, held) = (rooms.clone(), Arc::clone(&held));
                Box::pin(async move {
                    if let Some(sub) = take(&held) {
                        rooms.leave(&ann, sub).await;
                    }
                })
            },
            {
                let rooms = rooms.clone();
                Box::pin(async move {
                    let _ = maybe_cut(rooms.join_room(id, "b", Position::Live)).await;
                    let _ = maybe_cut(rooms.join_room(id, "a", Position::Recent(2))).await;
                })
            },
        ];
        race(ops);
        check_empty(&rooms);
    });
}

/// Defect 2 of issue 18, raced: `close` and a publish to the same name at once, the
/// subscriber polling meanwhile. The stream ends (after what the old log had), never follows
/// the new log.
#[test]
fn shuttle_close_racing_publish() {
    explore("close vs publish", || {
        let hub = PubSub::with_backend(HubConfig::new(), Stepped::default());
        let mut sub =
            shuttle::future::block_on(hub.subscribe("t", Position::Live)).expect("subscribe");
        let old = shuttle::future::block_on(hub.publish("t", "old")).expect("publish");
        let ops: Vec<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>> = vec![
            {
                let hub = hub.clone();
                Box::pin(async move {
                    let _ = hub.close("t");
                })
            },
            {
                let hub = hub.clone();
                Box::pin(async move {
                    let _ = hub.publish("t", "new").await;
                })
            },
        ];
        race(ops);
        let got = settle(&mut sub);
        for delivery in &got {
            match delivery {
                Delivery::Message(m) => assert_eq!(m.id().epoch(), old.epoch(), "{got:?}"),
                other => panic!("a closed topic's stream got {other:?}"),
            }
        }
        let mut cx = Context::from_waker(Waker::noop());
        assert!(
            matches!(sub.poll_next_unpin(&mut cx), Poll::Ready(None)),
            "the stream ended: {got:?}"
        );
    });
}

/// A log replaced (a remote backend's log lost and recreated), twice, sometimes then closed,
/// while one reader polls and another is dropped: the reader ends up on the newest log (or
/// ends, if it was closed), the replacement waits for readers still to come and no longer,
/// and dropping the last reader leaves nothing.
#[test]
fn shuttle_replacement_racing_readers_and_drops() {
    explore("replacement vs readers", || {
        let config = HubConfig::new().idle_ttl(Duration::ZERO);
        let hub = PubSub::with_backend(config, Stepped::default());
        let reader = slot(Some(
            shuttle::future::block_on(hub.subscribe("t", Position::Live)).expect("subscribe"),
        ));
        let dropped = slot(Some(
            shuttle::future::block_on(hub.subscribe("t", Position::Live)).expect("subscribe"),
        ));
        let closing = thread_rng().next_u64() % 3 == 0;
        let ops: Vec<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>> = vec![
            {
                let hub = hub.clone();
                Box::pin(async move {
                    let t = topic("t");
                    for _ in 0..2 {
                        let _ = hub.mirror().sync(&t, super::Epoch::random(), 0, &[]);
                        shuttle::future::yield_now().await;
                    }
                    if closing {
                        let _ = hub.close("t");
                    }
                })
            },
            {
                let reader = Arc::clone(&reader);
                Box::pin(async move {
                    for _ in 0..3 {
                        if let Some(sub) = reader
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .as_mut()
                        {
                            let _ = settle(sub);
                        }
                        shuttle::future::yield_now().await;
                    }
                })
            },
            {
                let dropped = Arc::clone(&dropped);
                Box::pin(async move {
                    shuttle::future::yield_now().await;
                    drop(take(&dropped));
                })
            },
        ];
        race(ops);
        let mut reader = take(&reader).expect("the reader");
        let got = settle(&mut reader);
        let mut cx = Context::from_waker(Waker::noop());
        let ended = matches!(reader.poll_next_unpin(&mut cx), Poll::Ready(None));
        let census = hub.census();
        if ended {
            assert!(closing, "only a close ends the stream: {got:?}");
        } else {
            assert_eq!(census.len(), 1, "{census:?}");
            let (_, _, subscribers, to_come) = &census[0];
            assert_eq!(
                (*subscribers, *to_come),
                (1, 0),
                "the reader moved: {census:?}"
            );
        }
        drop(reader);
        assert!(hub.census().is_empty(), "left: {:?}", hub.census());
    });
}
