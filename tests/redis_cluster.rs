//! The Redis backend on a Redis Cluster: sharded pub/sub, topics spread over every master,
//! presence across nodes, a master killed mid-stream.
//!
//! Each test starts its own cluster on loopback: six `redis-server --cluster-enabled yes` on
//! free ports (persistence off), joined by `redis-cli --cluster create ... --cluster-replicas
//! 1` into three masters with a replica each, and kills them at the end. `redis-server` and
//! `redis-cli` (7.0 or later, for sharded pub/sub) must be installed (`.ci/redis` installs
//! them): without them these tests fail, they never pass silently.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use salvo_realtime::backend::conformance::Suite;
use salvo_realtime::error::HubError;
use salvo_realtime::hub::{PRESENCE_JOIN, PRESENCE_LEAVE, ResetReason};
use salvo_realtime::redis::{RedisBackend, RedisConfig};
use salvo_realtime::{
    Connection, Delivery, Hub, HubConfig, Message, MessageId, Position, PubSub, Topic,
};

use common::proxy::Mode;
use common::redis_env::{
    Cluster, CrashingNode, event, events, listed, logged_config, member, messages, next,
    next_event, nothing_within, publish_retrying, pubsub_on, redis_cli, replayed_chat, rooms_on,
    snapshot, users,
};

/// Settings for a node on `cluster`: timings that let a failover finish within a test.
fn config(cluster: &Cluster) -> RedisConfig {
    logged_config(cluster.url())
        .timeout(Duration::from_secs(1))
        .heartbeat(Duration::from_millis(200))
        .node_ttl(Duration::from_secs(5))
}

async fn pubsub_node(cluster: &Cluster) -> PubSub<RedisBackend> {
    let hub = pubsub_on(config(cluster), HubConfig::new().history(1_000)).await;
    assert!(hub.backend().is_cluster());
    hub
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_a_cluster_deliver_everything_in_order_with_the_same_ids() {
    let started = Instant::now();
    let cluster = Cluster::start();
    println!("cluster up in {:?}", started.elapsed());
    // Two topics on each of the three masters; 20 subscribers spread over them and the nodes.
    let topics = cluster.topics_on_every_master("spread", 2);
    let masters: BTreeSet<u16> = topics
        .iter()
        .map(|t| cluster.master_of("topics", t))
        .collect();
    assert_eq!(masters.len(), 3, "the topics cover every master");
    let nodes = [pubsub_node(&cluster).await, pubsub_node(&cluster).await];
    let mut readers = Vec::new();
    for i in 0..20 {
        let topic = topics[i % topics.len()].clone();
        let mut sub = nodes[i % 2]
            .subscribe(&topic, Position::Live)
            .await
            .expect("subscribe");
        readers.push(tokio::spawn(async move {
            (
                topic,
                messages(&mut sub, 500, Duration::from_secs(20)).await,
            )
        }));
    }
    let delivering = Instant::now();
    let publishers: Vec<_> = (0..2)
        .flat_map(|n| topics.iter().map(move |t| (n, t.clone())))
        .map(|(n, topic)| {
            let hub = nodes[n].clone();
            tokio::spawn(async move {
                for i in 0..250 {
                    hub.publish(&topic, format!("{n}:{i}"))
                        .await
                        .expect("publish");
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.expect("publisher");
    }
    let mut ids_by_topic: BTreeMap<String, Vec<MessageId>> = BTreeMap::new();
    for reader in readers {
        let (topic, got) = reader.await.expect("reader");
        let ids: Vec<MessageId> = got.iter().map(Message::id).collect();
        for (k, id) in ids.iter().enumerate() {
            assert_eq!(id.offset(), ids[0].offset() + k as u64, "gap or duplicate");
            assert_eq!(id.epoch(), ids[0].epoch());
        }
        for n in 0..2 {
            let seq: Vec<u32> = got
                .iter()
                .filter_map(|m| {
                    let (node, i) = m.payload().as_text()?.split_once(':')?;
                    (node == n.to_string()).then(|| i.parse().ok())?
                })
                .collect();
            assert_eq!(seq, (0..250).collect::<Vec<_>>(), "publisher {n}'s order");
        }
        match ids_by_topic.get(&topic) {
            None => {
                ids_by_topic.insert(topic, ids);
            }
            Some(expected) => assert_eq!(&ids, expected, "every subscriber sees the same ids"),
        }
    }
    println!(
        "20 subscribers x 500 messages over {} topics on 3 masters in {:?}",
        topics.len(),
        delivering.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_on_the_other_node_of_a_cluster() {
    let cluster = Cluster::start();
    let (a, b) = (pubsub_node(&cluster).await, pubsub_node(&cluster).await);
    for topic in cluster.topics_on_every_master("feed", 1) {
        let c = Connection::new().subscribe(Topic::new(&topic).expect("valid"), Position::Live);
        let mut on_a = a.join(&c).await.expect("join a");
        for i in 1..=10 {
            a.publish(&topic, format!("m{i}")).await.expect("publish");
        }
        let seen = messages(&mut on_a, 5, Duration::from_secs(5)).await;
        let last = seen[4].id();
        a.leave(&c, on_a).await;

        let c =
            Connection::new().subscribe(Topic::new(&topic).expect("valid"), Position::After(last));
        let mut on_b = b.join(&c).await.expect("join b");
        a.publish(&topic, "m11").await.expect("publish");
        let got = messages(&mut on_b, 6, Duration::from_secs(5)).await;
        let texts: Vec<_> = got.iter().filter_map(|m| m.payload().as_text()).collect();
        assert_eq!(texts, ["m6", "m7", "m8", "m9", "m10", "m11"], "{topic}");
        assert_eq!(got[0].id().offset(), last.offset() + 1);
        assert_eq!(got[0].id().epoch(), last.epoch());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_spans_nodes_of_a_cluster_and_a_dead_nodes_members_leave() {
    let cluster = Cluster::start();
    let a = rooms_on(config(&cluster), HubConfig::new()).await;
    // Rooms on different masters than the nodes' own liveness keys, and each other.
    let rooms = ["x", "y", "z"];
    let mut watchers = Vec::new();
    for room in rooms {
        let mut w = a
            .join(&member("w", room, Position::Live))
            .await
            .expect("join");
        assert!(matches!(
            next(&mut w, Duration::from_secs(5)).await,
            Some(Delivery::Presence(_))
        ));
        watchers.push(w);
    }

    let on_b = rooms
        .iter()
        .flat_map(|room| ["alice", "bob"].map(|user| (user.to_owned(), (*room).to_owned())));
    let node_b = CrashingNode::start(config(&cluster), HubConfig::new(), on_b.collect()).await;
    for w in &mut watchers {
        let mut joined = events(w, 2).await;
        joined.sort();
        assert_eq!(
            joined,
            [event(PRESENCE_JOIN, "alice"), event(PRESENCE_JOIN, "bob")]
        );
    }
    // alice also on node a in room x: two connections across nodes.
    let alice_a = member("alice", "x", Position::Live);
    let mut alice_sub = a.join(&alice_a).await.expect("join");
    assert_eq!(
        snapshot(&mut alice_sub).await,
        users(&[("alice", 2), ("bob", 1), ("w", 1)])
    );

    // Node b dies: its users leave every room within the node TTL (5 s), except alice in x.
    let died = Instant::now();
    node_b.crash();
    for (room, w) in rooms.iter().zip(&mut watchers) {
        let mut left = vec![next_event(w, Duration::from_secs(10)).await];
        if *room != "x" {
            left.push(next_event(w, Duration::from_secs(10)).await);
        }
        left.sort();
        let expected: Vec<_> = if *room == "x" {
            vec![(PRESENCE_LEAVE.to_owned(), "bob".to_owned())]
        } else {
            vec![
                (PRESENCE_LEAVE.to_owned(), "alice".to_owned()),
                (PRESENCE_LEAVE.to_owned(), "bob".to_owned()),
            ]
        };
        assert_eq!(left, expected, "room {room}");
    }
    println!("a dead node's members left after {:?}", died.elapsed());
    assert_eq!(listed(&a, "x").await, users(&[("alice", 1), ("w", 1)]));
    a.leave(&alice_a, alice_sub).await;
    assert_eq!(
        next_event(&mut watchers[0], Duration::from_secs(5)).await,
        (PRESENCE_LEAVE.to_owned(), "alice".to_owned())
    );
}

/// Publishes `text` until it succeeds; every failure must come within the timeout. Returns
/// the id and how many attempts failed.
async fn publish_through_failover(
    hub: &PubSub<RedisBackend>,
    topic: &str,
    text: &str,
    slowest_failure: &mut Duration,
) -> (MessageId, usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut failed = 0;
    loop {
        let started = Instant::now();
        match hub.publish(topic, text).await {
            Ok(id) => return (id, failed),
            Err(e) => {
                let took = started.elapsed();
                *slowest_failure = (*slowest_failure).max(took);
                assert!(matches!(e, HubError::Backend(_)), "{e:?}");
                assert!(
                    took < Duration::from_millis(1_500),
                    "a publish failed only after {took:?}: {e}"
                );
                assert!(Instant::now() < deadline, "publishing kept failing: {e}");
                failed += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_mid_stream_fails_over_without_loss_or_with_a_reset() {
    let mut cluster = Cluster::start();
    let (a, b) = (pubsub_node(&cluster).await, pubsub_node(&cluster).await);
    let topic = "failover";
    let victim = cluster.master_of("topics", topic);
    let mut sub = a.subscribe(topic, Position::Live).await.expect("subscribe");

    let publisher = {
        let b = b.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut failures = 0;
            let mut slowest = Duration::ZERO;
            for i in 0..400 {
                let (id, failed) =
                    publish_through_failover(&b, topic, &format!("m{i}"), &mut slowest).await;
                acked.push(id);
                failures += failed;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (acked, failures, slowest)
        })
    };
    // Let the stream run, then kill the topic's master; its replica takes over.
    let before = messages(&mut sub, 100, Duration::from_secs(10)).await;
    let killed = Instant::now();
    cluster.kill(victim);

    let mut seen: Vec<Message> = before;
    let mut reset = None;
    let mut result = None;
    let mut publisher = publisher;
    loop {
        if let Some((acked, _, _)) = &result {
            let acked: &Vec<MessageId> = acked;
            if seen.last().map(Message::id) == acked.last().copied() {
                break;
            }
        }
        let got = tokio::select! {
            done = &mut publisher, if result.is_none() => {
                result = Some(done.expect("publisher"));
                continue;
            }
            got = tokio::time::timeout(Duration::from_secs(30), sub.next()) => got,
        };
        match got.expect("delivery resumes after the failover") {
            Some(Delivery::Message(m)) => seen.push(m),
            Some(Delivery::Reset(r)) => {
                // The replica had not received the last writes: the topic started a new
                // epoch, and the open stream says so, then goes on with the new log.
                assert_eq!(r.reason, ResetReason::EpochChanged);
                reset = Some(r.epoch);
                break;
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => {
                // The replica had not received the last writes: the topic started a new
                // epoch, and a client coming back with its last id gets a reset.
                let last = seen.last().expect("seen some").id();
                let c = Connection::new()
                    .subscribe(Topic::new(topic).expect("valid"), Position::After(last));
                sub = a.join(&c).await.expect("rejoin");
                match next(&mut sub, Duration::from_secs(10)).await {
                    Some(Delivery::Reset(r)) => {
                        assert_eq!(r.reason, ResetReason::EpochChanged);
                        reset = Some(r.epoch);
                    }
                    other => panic!("expected a reset, got {other:?}"),
                }
                break;
            }
        }
    }
    let (acked, failures, slowest) = match result {
        Some(r) => r,
        None => publisher.await.expect("publisher"),
    };
    println!(
        "master killed: {failures} publishes failed (slowest failure {slowest:?}); \
         recovered in {:?}; reset: {}",
        killed.elapsed(),
        reset.is_some()
    );
    // A publish whose answer was lost with the master may have been applied and retried:
    // at least once, so every acknowledged message is there, in order, with no gap.
    let contiguous = |ms: &[Message]| {
        ms.windows(2).all(|w| {
            w[1].id().epoch() == w[0].id().epoch() && w[1].id().offset() == w[0].id().offset() + 1
        })
    };
    match reset {
        None => {
            assert!(contiguous(&seen), "no gap and no duplicate");
            let ids: std::collections::HashSet<MessageId> = seen.iter().map(Message::id).collect();
            assert!(
                acked.iter().all(|id| ids.contains(id)),
                "every acknowledged message"
            );
        }
        Some(epoch) => {
            assert!(
                contiguous(&seen),
                "no gap and no duplicate before the reset"
            );
            // What was published in the new epoch reaches the client.
            let rest: Vec<MessageId> = acked
                .iter()
                .copied()
                .filter(|id| id.epoch() == epoch)
                .collect();
            if let Some(last) = rest.last() {
                let mut got = Vec::new();
                while got.last().map(Message::id) != Some(*last) {
                    got.extend(messages(&mut sub, 1, Duration::from_secs(10)).await);
                }
                assert!(contiguous(&got));
                let ids: std::collections::HashSet<MessageId> =
                    got.iter().map(Message::id).collect();
                assert!(rest.iter().all(|id| ids.contains(id)));
            }
        }
    }
    // Publishing works again, and reaches the subscriber.
    let id = b
        .publish(topic, "after")
        .await
        .expect("publish after failover");
    let got = messages(&mut sub, 1, Duration::from_secs(10)).await;
    assert_eq!(got[0].id(), id);
}

// Issue 11 on a cluster: presence notices are live-only (SPUBLISH on the room's shard, no
// offset, nothing kept), a room's count and pages span nodes, and history is capped in bytes;
// in rooms spread over the masters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_keeps_notices_live_only_pages_members_and_caps_history_in_bytes() {
    let cluster = Cluster::start();
    let node = async || {
        let config = config(&cluster).history_bytes(64 * 1024);
        rooms_on(config, HubConfig::new().channel_capacity(1_024)).await
    };
    let (a, b) = (node().await, node().await);
    let mut held = Vec::new();
    for room in ["x", "y", "z"] {
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(
                a.broadcast(room, format!("chat{i}"))
                    .await
                    .expect("broadcast"),
            );
        }
        let mut w = a
            .join(&member("w", room, Position::Live))
            .await
            .expect("join");
        for i in 0..200 {
            let hub = if i % 2 == 0 { &a } else { &b };
            let c = member(&format!("u{i:03}"), room, Position::Live);
            held.push(hub.join(&c).await.expect("join"));
        }
        let mut joined = Vec::new();
        while joined.len() < 200 {
            joined.push(next_event(&mut w, Duration::from_secs(5)).await);
        }
        let expected: Vec<_> = (0..200)
            .map(|i| (PRESENCE_JOIN.to_owned(), format!("u{i:03}")))
            .collect();
        assert_eq!(joined, expected, "room {room}");

        // Pages of 64 over both nodes' members, everyone once, in order.
        let (mut all, mut after) = (Vec::new(), None::<String>);
        loop {
            let page = b
                .presence_page(room, after.as_deref(), 64)
                .await
                .expect("page");
            all.extend(page.members.iter().map(|m| m.user.to_string()));
            after = page.members.last().map(|m| m.user.to_string());
            if !page.more {
                break;
            }
        }
        let mut users: Vec<String> = (0..200).map(|i| format!("u{i:03}")).collect();
        users.push("w".into());
        assert_eq!(all, users, "room {room}");
        assert_eq!(a.member_count(room).await.expect("count"), 201);

        // The joins took no offset, and a resume replays the chat only.
        let next_id = a.broadcast(room, "after").await.expect("broadcast");
        assert_eq!(next_id.offset(), 6, "room {room}");
        let mut late = b
            .join(&member("late", room, Position::After(ids[0])))
            .await
            .expect("resume");
        let mut chat = Vec::new();
        while chat.len() < 5 {
            match next(&mut late, Duration::from_secs(5)).await {
                Some(Delivery::Message(m)) => chat.extend(replayed_chat(&m)),
                Some(_) => {}
                None => panic!("stream ended"),
            }
        }
        assert_eq!(chat, ["chat1", "chat2", "chat3", "chat4", "after"]);
        held.push(late);
    }

    // 16 KiB messages into a 64 KiB history: a resume from the first, on a node that does not
    // follow the room yet (its mirror would still hold them), is a reset.
    let big = "x".repeat(16 * 1024);
    let first = a.broadcast("blobs", big.as_str()).await.expect("broadcast");
    for _ in 0..9 {
        a.broadcast("blobs", big.as_str()).await.expect("broadcast");
    }
    let mut resumed = b
        .join(&member("r", "blobs", Position::After(first)))
        .await
        .expect("resume");
    match next(&mut resumed, Duration::from_secs(5)).await {
        Some(Delivery::Reset(r)) => assert_eq!(r.reason, ResetReason::Expired),
        other => panic!("expected a reset, got {other:?}"),
    }
    let kept = messages(&mut resumed, 3, Duration::from_secs(5)).await;
    assert!(kept.iter().all(|m| m.payload().len() == big.len()));
    assert_eq!(
        kept[2].id().offset(),
        first.offset() + 9,
        "the newest are kept"
    );
}

// Issue 18: the backend conformance suite (`backend::conformance`) on a Redis Cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_conformance_suite_passes_on_a_cluster() {
    let cluster = Cluster::start();
    let config = config(&cluster);
    let suite = Suite::new(move || {
        let config = config.clone();
        async move { RedisBackend::connect(config).await.expect("connect") }
    });
    if let Err(failure) = suite.run_all().await {
        panic!("{failure}");
    }
}

// Issue 18, confirm or refute: the cluster client retries a request whose connection dropped
// (`.retries(2)`), so a publish script that ran but whose reply was lost ran again: one
// message, two ids. Confirmed; a publish now carries a nonce the script remembers until its
// deadline, and a second run answers the first one's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_whose_reply_is_lost_is_applied_once_on_a_cluster() {
    let cluster = Cluster::start_proxied().await;
    // A slow heartbeat keeps the node's connections quiet around the publish.
    let quiet = config(&cluster)
        .heartbeat(Duration::from_secs(30))
        .node_ttl(Duration::from_secs(90));
    let a = pubsub_on(quiet, HubConfig::new()).await;
    let b = pubsub_node(&cluster).await;
    let topic = "lost-reply";
    let master = cluster.master_of("topics", topic);
    let first = a.publish(topic, "warm").await.expect("publish");
    let mut sub = b
        .subscribe(topic, Position::After(first))
        .await
        .expect("subscribe");

    let proxy = cluster.proxy(master);
    proxy.lose_reply_to(format!("{{salvo-realtime:topics:{topic}}}:meta").as_bytes());
    let once = a.publish(topic, "once").await;
    assert!(!proxy.reply_loss_pending(), "the publish went through");
    let after = publish_retrying(&a, topic, "after").await;
    let got = messages(&mut sub, 2, Duration::from_secs(10)).await;
    let seen: Vec<(u64, &str)> = got
        .iter()
        .map(|m| (m.id().offset(), m.payload().as_text().unwrap_or("")))
        .collect();
    assert_eq!(
        seen,
        [(2, "once"), (3, "after")],
        "one message, one id (the publish answered {once:?})"
    );
    if let Ok(id) = once {
        assert_eq!(id, got[0].id(), "the publish answered its message's id");
    }
    assert_eq!(got[1].id(), after);
    assert!(
        nothing_within(&mut sub, Duration::from_millis(300)).await,
        "no duplicate arrives"
    );
}

// Issue 18, fault injection: the master of a room stalls (its proxy forwards nothing: the nodes'
// commands and subscriptions, and its replica's link) while its replica takes over. Publishes
// fail meanwhile and go on after; none is lost inside the history or delivered twice, and a
// leave that could not reach Redis during the stall leaves no phantom.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_during_a_cluster_failover_loses_nothing_and_duplicates_nothing() {
    let cluster = Cluster::start_proxied().await;
    let node = async || rooms_on(config(&cluster), HubConfig::new().history(1_000)).await;
    let (a, b) = (node().await, node().await);
    let room = "stalled";
    let master = cluster.master_of("rooms", room);
    let replica = cluster.replica_of(master);
    let watcher = member("w", room, Position::Live);
    let mut w = b.join(&watcher).await.expect("join w");
    let reader = Connection::new().subscribe(Topic::new(room).expect("valid"), Position::Live);
    let mut reading = b.join(&reader).await.expect("join reader");
    assert!(matches!(
        next(&mut reading, Duration::from_secs(5)).await,
        Some(Delivery::Presence(_))
    ));
    let alice = member("alice", room, Position::Live);
    let alice_sub = a.join(&alice).await.expect("join alice");
    loop {
        if next_event(&mut w, Duration::from_secs(5)).await
            == (PRESENCE_JOIN.to_owned(), "alice".to_owned())
        {
            break;
        }
    }

    let publisher = {
        let a = a.clone();
        tokio::spawn(async move {
            let (mut acked, mut retried) = (Vec::new(), BTreeSet::new());
            for i in 0..300 {
                let deadline = Instant::now() + Duration::from_secs(30);
                let id = loop {
                    match a.broadcast(room, format!("m{i}")).await {
                        Ok(id) => break id,
                        Err(e) => {
                            // A publish that failed may still have been applied (its answer
                            // was lost in the stall): publishing it again is a new message.
                            assert!(matches!(e, HubError::Backend(_)), "{e:?}");
                            assert!(Instant::now() < deadline, "publishing kept failing: {e}");
                            retried.insert(format!("m{i}"));
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                };
                acked.push(id);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (acked, retried)
        })
    };
    let mut seen: Vec<Message> = Vec::new();
    while seen.len() < 50 {
        match next(&mut reading, Duration::from_secs(10)).await {
            Some(Delivery::Message(m)) if m.event().is_none() => seen.push(m),
            Some(Delivery::Message(_)) => {}
            other => panic!("expected a message, got {other:?}"),
        }
    }

    // The stall: nothing flows to or from the master; alice leaves meanwhile; the replica takes
    // over (the cluster bus doesn't go through the proxy); then the stall ends.
    let proxy = cluster.proxy(master);
    proxy.set(Mode::Blackhole);
    a.leave(&alice, alice_sub).await;
    let reply = redis_cli(replica, &["CLUSTER", "FAILOVER", "TAKEOVER"]);
    assert!(reply.contains("OK"), "CLUSTER FAILOVER answered {reply}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cluster.masters().contains_key(&replica) {
        assert!(Instant::now() < deadline, "the replica did not take over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await; // the stall outlasts the timeout
    proxy.set(Mode::Pass);
    proxy.cut(); // what the stall held is lost, as after a long partition

    let (acked, retried) = publisher.await.expect("publisher");
    let last = *acked.last().expect("acked");
    let mut reset = None;
    while seen.last().map(Message::id) != Some(last) {
        match next(&mut reading, Duration::from_secs(20)).await {
            Some(Delivery::Message(m)) if m.event().is_none() => seen.push(m),
            Some(Delivery::Message(_)) => {} // a presence notice
            Some(Delivery::Reset(r)) => {
                // The replica had not received the last writes: a new epoch, said in the stream.
                assert_eq!(r.reason, ResetReason::EpochChanged);
                assert!(reset.replace(r.epoch).is_none(), "one reset");
                seen.clear();
            }
            Some(Delivery::Presence(_)) => {}
            Some(other) => panic!("unexpected {other:?}"),
            None => {
                // The hub disconnected the reader when the room's log started a new epoch
                // (until issue 18's defect 13 is fixed in the hub): it comes back with its
                // last id, and gets the reset there.
                let last_seen = seen.last().map(Message::id).expect("seen some");
                let again = Connection::new()
                    .subscribe(Topic::new(room).expect("valid"), Position::After(last_seen));
                reading = b.join(&again).await.expect("rejoin the reader");
            }
        }
    }
    // No gap and no duplicate in what was delivered (since the reset, if any), and every
    // acknowledged message of that log is there.
    let ids: Vec<MessageId> = seen.iter().map(Message::id).collect();
    for pair in ids.windows(2) {
        assert_eq!(pair[1].epoch(), pair[0].epoch(), "{ids:?}");
        assert_eq!(
            pair[1].offset(),
            pair[0].offset() + 1,
            "gap or duplicate: {ids:?}"
        );
    }
    let delivered: std::collections::HashSet<MessageId> = ids.iter().copied().collect();
    let epoch = last.epoch();
    let first = ids.first().map_or(0, |id| id.offset());
    for id in acked
        .iter()
        .filter(|id| id.epoch() == epoch && id.offset() >= first)
    {
        assert!(
            delivered.contains(id),
            "acknowledged {id:?} never delivered"
        );
    }
    // The backend never applies one publish twice: a text comes twice only if the publisher
    // sent it twice (after a failure).
    let mut texts = BTreeSet::new();
    for m in &seen {
        let text = m.payload().as_text().unwrap_or_default();
        assert!(
            texts.insert(text) || retried.contains(text),
            "{text} applied twice, published once"
        );
    }

    // alice's leave, lost in the stall, is applied: no phantom. (The watcher is listed if it
    // is still in the room: until the hub's defect 13 is fixed, a new epoch disconnects it.)
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let present: Vec<String> = b
            .presence(room)
            .await
            .iter()
            .map(|m| m.user.to_string())
            .collect();
        let expected: &[&str] = if b.rooms_of(watcher.id()).is_empty() {
            &[]
        } else {
            &["w"]
        };
        if present == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "presence after the stall: {present:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "stalled failover: {} acknowledged, reset: {}",
        acked.len(),
        reset.is_some()
    );
}
