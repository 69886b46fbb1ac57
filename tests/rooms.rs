//! `Rooms`: membership, presence, broadcast, direct messages, cleanup, resume.

mod common;

use std::time::Duration;

use common::{messages, ready, texts};
use futures_util::StreamExt;
use salvo_realtime::error::{HubError, InvalidTopic};
use salvo_realtime::{
    Connection, Delivery, Hub, HubConfig, Identity, InboundPolicy, PRESENCE_JOIN, PRESENCE_LEAVE,
    Payload, Position, Rooms, Subscription, Topic,
};

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
        .receive(&a, Payload::from("from a"))
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
