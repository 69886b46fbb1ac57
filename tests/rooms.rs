//! `Rooms`: membership, presence, broadcast, direct messages, cleanup, resume.

mod common;

use std::time::Duration;

use common::{messages, ready, texts};
use futures_util::StreamExt;
use salvo_realtime::error::{HubError, InvalidTopic};
use salvo_realtime::hub::{InboundPolicy, PRESENCE_JOIN, PRESENCE_LEAVE, Subscription};
use salvo_realtime::{Connection, Delivery, Hub, HubConfig, Identity, Position, Rooms, Topic};

fn member(user: &str, rooms: &[&str]) -> Connection {
    rooms.iter().fold(
        Connection::new().authenticated(Identity::new(user)),
        |c, room| c.subscribe(Topic::new(room).expect("valid"), Position::Live),
    )
}

async fn join(rooms: &Rooms, conn: &Connection) -> Subscription {
    let mut sub = rooms.join(conn).await.expect("join");
    // Skip the presence snapshots sent on joining.
    let got = ready(&mut sub);
    assert!(
        got.iter().all(|d| matches!(d, Delivery::Presence(_))),
        "{got:?}"
    );
    sub
}

fn events(deliveries: &[Delivery]) -> Vec<(String, String)> {
    messages(deliveries)
        .iter()
        .filter_map(|m| {
            let event = m.event()?.as_str().to_owned();
            let user: serde_json::Value = m.json().ok()?;
            Some((event, user["user"].as_str()?.to_owned()))
        })
        .collect()
}

#[tokio::test]
async fn messages_reach_members_only_and_nothing_after_leave() {
    let rooms = Rooms::new();
    let a = member("a", &["x"]);
    let b = member("b", &["x"]);
    let c = member("c", &["y"]);
    let mut sa = join(&rooms, &a).await;
    let mut sb = join(&rooms, &b).await;
    let mut sc = join(&rooms, &c).await;
    ready(&mut sa);
    rooms.broadcast("x", "to x").await.expect("broadcast");
    assert_eq!(texts(&ready(&mut sa)), ["to x"]);
    assert_eq!(texts(&ready(&mut sb)), ["to x"]);
    assert!(ready(&mut sc).is_empty());

    assert!(rooms.leave_room(b.id(), "x").await.expect("joined"));
    ready(&mut sa);
    rooms
        .broadcast("x", "after leave")
        .await
        .expect("broadcast");
    assert!(ready(&mut sb).is_empty(), "nothing after leave");
    assert_eq!(texts(&ready(&mut sa)), ["after leave"]);
    assert!(!rooms.leave_room(b.id(), "x").await.expect("joined"));
}

#[tokio::test]
async fn broadcast_except_and_inbound_skip_the_sender() {
    let rooms = Rooms::with_config(HubConfig::new().inbound(InboundPolicy::PublishExceptSender));
    let a = member("a", &["x"]);
    let b = member("b", &["x"]);
    let mut sa = join(&rooms, &a).await;
    let mut sb = join(&rooms, &b).await;
    ready(&mut sa);
    rooms
        .broadcast_except("x", a.id(), "not for a")
        .await
        .expect("broadcast");
    rooms
        .receive(&a, salvo_realtime::Publication::new("from a"))
        .await
        .expect("receive");
    assert!(ready(&mut sa).is_empty());
    let got = messages(&ready(&mut sb));
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].sender(), Some("a"));
    assert_eq!(got[1].origin(), Some(a.id()));
}

#[tokio::test]
async fn presence_is_per_user_with_first_join_and_last_leave() {
    let rooms = Rooms::new();
    let watcher = member("w", &["x"]);
    let mut sw = join(&rooms, &watcher).await;
    let tab1 = member("alice", &["x"]);
    let tab2 = member("alice", &["x"]);
    let s1 = join(&rooms, &tab1).await;
    let mut s2 = rooms.join(&tab2).await.expect("join");
    match ready(&mut s2).as_slice() {
        [Delivery::Presence(p)] => {
            let users: Vec<_> = p
                .members
                .iter()
                .map(|m| (&*m.user, m.connections))
                .collect();
            assert_eq!(users, [("alice", 2), ("w", 1)]);
        }
        other => panic!("expected one snapshot, got {other:?}"),
    }
    assert_eq!(
        events(&ready(&mut sw)),
        [(PRESENCE_JOIN.to_owned(), "alice".to_owned())]
    );
    rooms.leave(&tab1, s1).await;
    assert!(ready(&mut sw).is_empty(), "alice still has a tab open");
    assert_eq!(rooms.presence("x").await.len(), 2);
    rooms.leave(&tab2, s2).await;
    assert_eq!(
        events(&ready(&mut sw)),
        [(PRESENCE_LEAVE.to_owned(), "alice".to_owned())]
    );
    let present: Vec<_> = rooms
        .presence("x")
        .await
        .iter()
        .map(|m| m.user.to_string())
        .collect();
    assert_eq!(present, ["w"]);
}

#[tokio::test]
async fn send_to_user_reaches_all_their_connections_only() {
    let rooms = Rooms::new();
    let phone = member("alice", &["x"]);
    let laptop = member("alice", &["y"]);
    let other = member("bob", &["x"]);
    let mut sp = join(&rooms, &phone).await;
    let mut sl = join(&rooms, &laptop).await;
    let mut so = join(&rooms, &other).await;
    ready(&mut sp);
    rooms.send_to_user("alice", "psst").await.expect("send");
    assert_eq!(texts(&ready(&mut sp)), ["psst"]);
    assert_eq!(texts(&ready(&mut sl)), ["psst"]);
    assert!(ready(&mut so).is_empty());
}

#[tokio::test]
async fn rooms_and_membership_return_to_zero() {
    let rooms = Rooms::with_config(HubConfig::new().idle_ttl(Duration::ZERO));
    let mut conns = Vec::new();
    for i in 0..50 {
        let c = member(&format!("u{}", i % 7), &["x", "y", &format!("r{}", i % 5)]);
        let s = rooms.join(&c).await.expect("join");
        conns.push((c, s));
    }
    rooms.broadcast("x", "hello").await.expect("broadcast");
    assert_eq!(rooms.room_count(), 7);
    assert_eq!(rooms.connection_count(), 50);
    for (i, (c, s)) in conns.into_iter().enumerate() {
        if i % 2 == 0 {
            rooms.leave(&c, s).await;
        } else {
            drop(s); // a connection that vanished without leaving
        }
    }
    assert_eq!(rooms.room_count(), 0);
    assert_eq!(rooms.connection_count(), 0);
    assert_eq!(rooms.log_count(), 0);
}

#[tokio::test]
async fn a_panicking_connection_task_still_leaves() {
    let rooms = Rooms::new();
    let watcher = member("w", &["x"]);
    let mut sw = join(&rooms, &watcher).await;
    let task = {
        let rooms = rooms.clone();
        tokio::spawn(async move {
            let c = member("doomed", &["x"]);
            let _sub = rooms.join(&c).await.expect("join");
            panic!("connection task fails");
        })
    };
    assert!(task.await.is_err());
    let seen = events(&ready(&mut sw));
    assert_eq!(
        seen,
        [
            (PRESENCE_JOIN.to_owned(), "doomed".to_owned()),
            (PRESENCE_LEAVE.to_owned(), "doomed".to_owned())
        ]
    );
    assert_eq!(rooms.connection_count(), 1);
}

#[tokio::test]
async fn server_side_join_and_leave_room() {
    let rooms = Rooms::with_config(HubConfig::new().max_subscriptions(2));
    let c = member("a", &[]);
    let mut s = rooms.join(&c).await.expect("join");
    rooms.broadcast("x", "before").await.expect("broadcast");
    rooms
        .join_room(c.id(), "x", Position::Recent(10))
        .await
        .expect("join room");
    let got = ready(&mut s);
    assert_eq!(texts(&got), ["before"]);
    assert!(matches!(got.last(), Some(Delivery::Presence(_))));
    rooms
        .join_room(c.id(), "y", Position::Live)
        .await
        .expect("join room");
    assert!(matches!(
        rooms.join_room(c.id(), "z", Position::Live).await,
        Err(HubError::TooManySubscriptions { limit: 2 })
    ));
    assert_eq!(rooms.rooms_of(c.id()).len(), 2);
    rooms.leave_room(c.id(), "x").await.expect("leave room");
    rooms.broadcast("x", "gone").await.expect("broadcast");
    rooms.broadcast("y", "still here").await.expect("broadcast");
    assert_eq!(texts(&ready(&mut s)), ["still here"]);
    rooms.leave(&c, s).await;
    assert!(matches!(
        rooms.join_room(c.id(), "x", Position::Live).await,
        Err(HubError::NotJoined(_))
    ));
}

#[tokio::test]
async fn reserved_and_invalid_room_names_are_refused() {
    let rooms = Rooms::new();
    let c = member("a", &["@bob"]);
    assert!(matches!(
        rooms.join(&c).await,
        Err(HubError::InvalidTopic(InvalidTopic::Reserved { .. }))
    ));
    assert_eq!(rooms.connection_count(), 0);
    assert!(matches!(
        rooms.broadcast("", "x").await,
        Err(HubError::InvalidTopic(InvalidTopic::Empty))
    ));
    let c = member("a", &["x"]);
    let _s = rooms.join(&c).await.expect("join");
    assert!(matches!(
        rooms.join(&c).await,
        Err(HubError::AlreadyJoined(_))
    ));
}

#[tokio::test]
async fn a_reconnecting_member_resumes_the_room() {
    let rooms = Rooms::new();
    let c = member("a", &["x"]);
    let mut s = join(&rooms, &c).await;
    rooms.broadcast("x", "one").await.expect("broadcast");
    let last = messages(&ready(&mut s))[0].id();
    rooms.leave(&c, s).await;
    rooms.broadcast("x", "two").await.expect("broadcast");
    rooms.broadcast("x", "three").await.expect("broadcast");
    let again = Connection::new()
        .authenticated(Identity::new("a"))
        .subscribe(Topic::new("x").expect("valid"), Position::After(last));
    let mut s = rooms.join(&again).await.expect("join");
    let got = ready(&mut s);
    // What was said while away, in order; presence notices are live-only, never replayed (the
    // snapshot after the replay says who is there now).
    assert!(
        events(&got).is_empty(),
        "no presence notice replayed: {got:?}"
    );
    let plain: Vec<_> = messages(&got)
        .iter()
        .filter(|m| m.event().is_none())
        .map(|m| m.payload().as_text().map(str::to_owned))
        .collect();
    assert_eq!(plain, [Some("two".to_owned()), Some("three".to_owned())]);
    // The presence snapshot follows the replay.
    assert!(matches!(got.last(), Some(Delivery::Presence(_))));
}

#[tokio::test]
async fn disconnect_user_ends_all_their_connections() {
    let rooms = Rooms::new();
    let tab1 = member("alice", &["x"]);
    let tab2 = member("alice", &["y"]);
    let bob = member("bob", &["x"]);
    let mut s1 = join(&rooms, &tab1).await;
    let mut s2 = join(&rooms, &tab2).await;
    let mut sb = join(&rooms, &bob).await;
    let mut found = rooms.connections_of("alice");
    found.sort();
    let mut expected = vec![tab1.id(), tab2.id()];
    expected.sort();
    assert_eq!(found, expected);
    ready(&mut sb);
    assert_eq!(rooms.disconnect_user("alice"), 2);
    assert!(s1.next().await.is_none(), "first tab's stream ended");
    assert!(s2.next().await.is_none(), "second tab's stream ended");
    assert_eq!(
        events(&ready(&mut sb)),
        [(PRESENCE_LEAVE.to_owned(), "alice".to_owned())]
    );
    assert_eq!(rooms.connection_count(), 1);
    assert_eq!(rooms.disconnect_user("alice"), 0);
}

// ---- Hardening (issue 9) ----

// Defect 1: a join into a room whose history is full never makes its own replay lag, wherever
// the replay starts, and presence notices never evict chat messages.
#[tokio::test]
async fn a_join_into_a_full_history_never_lags_its_own_replay() {
    let rooms = Rooms::new();
    for i in 0..300 {
        rooms
            .broadcast("busy", format!("m{i}"))
            .await
            .expect("broadcast");
    }
    let history = rooms.history("busy");
    assert_eq!(history.len(), 256);
    let first = history[0].id();
    let edge = salvo_realtime::MessageId::new(first.epoch(), first.offset() - 1);
    let expired = salvo_realtime::MessageId::new(first.epoch(), 3);
    let mut joined = Vec::new();
    for (i, from) in [
        Position::After(edge),
        Position::After(expired),
        Position::Recent(1000),
    ]
    .into_iter()
    .enumerate()
    {
        let conn = Connection::new()
            .authenticated(Identity::new(format!("new{i}")))
            .subscribe(Topic::new("busy").expect("valid"), from);
        let mut sub = rooms.join(&conn).await.expect("join");
        let got = ready(&mut sub);
        assert!(
            !got.iter().any(|d| matches!(d, Delivery::Lagged { .. })),
            "no lag: {:?}",
            &got[..2]
        );
        assert_eq!(messages(&got).len(), 256, "the whole history, for {from:?}");
        assert_eq!(rooms.history("busy")[0].id(), first, "nothing was evicted");
        // Kept joined: the next joiner's notice reaches it live, not through history.
        joined.push((conn, sub));
    }
    for (conn, sub) in joined {
        rooms.leave(&conn, sub).await;
    }
}

// Defect 8: a join racing `disconnect_user` leaves no membership behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_racing_disconnect_user_leaves_no_member_behind() {
    let rooms = Rooms::new();
    let names: Vec<String> = (0..64).map(|i| format!("room{i}")).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let banner = tokio::spawn({
        let (rooms, stop) = (rooms.clone(), std::sync::Arc::clone(&stop));
        async move {
            let mut kicked = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                kicked += rooms.disconnect_user("mallory");
                tokio::task::yield_now().await;
            }
            kicked
        }
    });
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    for _ in 0..200 {
        let conn = member("mallory", &refs);
        if let Ok(sub) = rooms.join(&conn).await {
            rooms.leave(&conn, sub).await;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let kicked = banner.await.expect("banner");
    for room in &names {
        assert!(
            rooms.presence(room).await.is_empty(),
            "{room} still lists mallory"
        );
    }
    assert_eq!(rooms.connection_count(), 0);
    assert_eq!(
        rooms.room_count(),
        0,
        "every room was freed (kicked {kicked})"
    );
}

// Defect 10: presence alone keeps no room alive, and one owner can't fill the hub.
#[tokio::test]
async fn presence_keeps_no_empty_room_alive_and_one_owner_cannot_fill_the_hub() {
    let rooms = Rooms::with_config(HubConfig::new().max_topics(100).max_topics_per_owner(10));
    for round in 0..20 {
        let names: Vec<String> = (0..8).map(|i| format!("r{round}-{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let conn = member("drifter", &refs);
        let sub = rooms.join(&conn).await.expect("join");
        rooms.leave(&conn, sub).await;
    }
    assert_eq!(
        rooms.log_count(),
        0,
        "join/leave alone leaves nothing behind"
    );

    // Rooms with history stay for the idle TTL; they count against their creator.
    let mut held = Vec::new();
    for i in 0..10 {
        let conn = member("mallory", &[&format!("m{i}")]);
        let sub = rooms.join(&conn).await.expect("within the cap");
        rooms.receive(&conn, "spam".into()).await.expect("sent");
        held.push((conn, sub));
    }
    let over = member("mallory", &["m10"]);
    assert!(matches!(
        rooms.join(&over).await,
        Err(HubError::TooManyCreated { limit: 10 })
    ));
    for (conn, sub) in held.drain(..) {
        rooms.leave(&conn, sub).await;
    }
    assert_eq!(rooms.log_count(), 10, "kept for resume");
    assert!(matches!(
        rooms.join(&member("mallory", &["m11"])).await,
        Err(HubError::TooManyCreated { .. })
    ));
    let alice = member("alice", &["fresh"]);
    let sub = rooms
        .join(&alice)
        .await
        .expect("another owner is not affected");
    rooms.leave(&alice, sub).await;
    // Joining an existing room creates nothing.
    let again = member("mallory", &["m3"]);
    let sub = rooms.join(&again).await.expect("existing room");
    rooms.leave(&again, sub).await;
}

/// Issue 18, defect 13 (the hub's side) and the `unhold` after an epoch change: when a room's
/// remote log is lost (a Redis restarted empty), its members stay members. Each stream moves
/// to the new log with a reset; the members' holds move too, so a member joining after the
/// loss and one leaving don't free the room under the others.
#[tokio::test]
async fn a_room_whose_remote_log_is_lost_keeps_its_members_with_a_reset() {
    let rooms = Rooms::with_backend(HubConfig::new(), common::remote::Remote::default());
    let (ann, bob) = (member("ann", &["r"]), member("bob", &["r"]));
    let mut ann_sub = join_any(&rooms, &ann).await;
    let mut bob_sub = join_any(&rooms, &bob).await;
    rooms.broadcast("r", "before").await.expect("broadcast");
    for sub in [&mut ann_sub, &mut bob_sub] {
        assert_eq!(texts(&ready(sub)), ["before"]);
    }
    rooms.backend().lose("rooms", "r");
    let cy = member("cy", &["r"]);
    let mut cy_sub = join_any(&rooms, &cy).await;
    rooms.broadcast("r", "after").await.expect("broadcast");
    for sub in [&mut ann_sub, &mut bob_sub] {
        let got = ready(sub);
        assert!(
            matches!(got.first(), Some(Delivery::Reset(r)) if r.reason == salvo_realtime::hub::ResetReason::EpochChanged),
            "a reset first, then the new log: {got:?}"
        );
        assert_eq!(texts(&got), ["after"]);
    }
    assert_eq!(texts(&ready(&mut cy_sub)), ["after"]);
    assert_eq!(rooms.connection_count(), 3, "nobody was disconnected");
    rooms.leave(&ann, ann_sub).await;
    rooms.leave(&bob, bob_sub).await;
    assert_eq!(rooms.room_count(), 1, "cy still holds the room");
    rooms.broadcast("r", "still here").await.expect("broadcast");
    assert_eq!(texts(&ready(&mut cy_sub)), ["still here"]);
    rooms.leave(&cy, cy_sub).await;
    assert_eq!((rooms.room_count(), rooms.log_count()), (0, 0));
}

/// Joins over any backend and skips what comes first (the presence snapshot).
async fn join_any<B: salvo_realtime::backend::Backend>(
    rooms: &Rooms<B>,
    conn: &Connection,
) -> Subscription {
    let mut sub = rooms.join(conn).await.expect("join");
    let _ = ready(&mut sub);
    sub
}
