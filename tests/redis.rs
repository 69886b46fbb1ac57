//! The Redis backend: nodes on one Redis server behave as one hub; faults heal by themselves.
//!
//! Each test starts its own `redis-server` (persistence off) on a free port and kills it at the
//! end. `redis-server` must be installed (`apt-get install -y redis-server`; `.ci/redis` does
//! it): without it these tests fail, they never pass silently.

mod common;

use std::future::Future;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use salvo_realtime::backend::conformance::Suite;
use salvo_realtime::error::HubError;
use salvo_realtime::hub::{PRESENCE_JOIN, PRESENCE_LEAVE, PresenceMode, ResetReason, Subscription};
use salvo_realtime::redis::{RedisBackend, RedisConfig};
use salvo_realtime::{
    Connection, Delivery, Hub, HubConfig, Identity, Message, MessageId, Position, PubSub, Rooms,
    Topic,
};

use common::proxy::{Mode, Proxy};
use common::redis_env::{
    CrashingNode, RedisServer, event, events, listed, logged_config, member, messages, next,
    next_event, nothing_within, publish_retrying, pubsub_on, replayed_chat, rooms_on, snapshot,
    users,
};

/// Settings for a node reaching Redis at `url`: short timings, so that faults heal within a
/// test.
fn quick(url: String) -> RedisConfig {
    logged_config(url)
        .timeout(Duration::from_millis(500))
        .heartbeat(Duration::from_millis(100))
        .node_ttl(Duration::from_millis(600))
}

/// Settings for a node on `server`.
fn config(server: &RedisServer) -> RedisConfig {
    quick(server.url())
}

async fn pubsub_node(server: &RedisServer) -> PubSub<RedisBackend> {
    pubsub_on(config(server), HubConfig::new().history(1_000)).await
}

async fn rooms_node(server: &RedisServer) -> Rooms<RedisBackend> {
    rooms_on(config(server), HubConfig::new()).await
}

fn conn(topic: &str, from: Position) -> Connection {
    Connection::new().subscribe(Topic::new(topic).expect("valid"), from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_deliver_everything_in_order_with_the_same_ids() {
    let server = RedisServer::start();
    let nodes = [pubsub_node(&server).await, pubsub_node(&server).await];
    let mut readers = Vec::new();
    for i in 0..20 {
        let mut sub = nodes[i % 2]
            .subscribe("orders", Position::Live)
            .await
            .expect("subscribe");
        readers.push(tokio::spawn(async move {
            messages(&mut sub, 500, Duration::from_secs(20)).await
        }));
    }
    let publishers: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(n, hub)| {
            let hub = hub.clone();
            tokio::spawn(async move {
                for i in 0..250 {
                    hub.publish("orders", format!("{n}:{i}"))
                        .await
                        .expect("publish");
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.expect("publisher");
    }
    let mut first: Option<Vec<MessageId>> = None;
    for reader in readers {
        let got = reader.await.expect("reader");
        let ids: Vec<MessageId> = got.iter().map(Message::id).collect();
        let start = ids[0].offset();
        for (k, id) in ids.iter().enumerate() {
            assert_eq!(id.offset(), start + k as u64, "gap or duplicate at {k}");
            assert_eq!(id.epoch(), ids[0].epoch());
        }
        // Each publisher's messages arrive in the order it published them.
        for n in 0..2 {
            let seq: Vec<u32> = got
                .iter()
                .filter_map(|m| {
                    let text = m.payload().as_text()?;
                    let (node, i) = text.split_once(':')?;
                    (node == n.to_string()).then(|| i.parse().ok())?
                })
                .collect();
            assert_eq!(seq, (0..250).collect::<Vec<_>>());
        }
        match &first {
            None => first = Some(ids),
            Some(expected) => assert_eq!(&ids, expected, "every subscriber sees the same ids"),
        }
    }
}

#[tokio::test]
async fn a_client_resumes_on_the_other_node() {
    let server = RedisServer::start();
    let (a, b) = (pubsub_node(&server).await, pubsub_node(&server).await);
    let c = conn("feed", Position::Live);
    let mut on_a = a.join(&c).await.expect("join a");
    for i in 1..=10 {
        a.publish("feed", format!("m{i}")).await.expect("publish");
    }
    let seen = messages(&mut on_a, 5, Duration::from_secs(5)).await;
    let last = seen[4].id();
    a.leave(&c, on_a).await;

    // The client reconnects to node b with the last id it saw.
    let c = conn("feed", Position::After(last));
    let mut on_b = b.join(&c).await.expect("join b");
    a.publish("feed", "m11").await.expect("publish");
    let got = messages(&mut on_b, 6, Duration::from_secs(5)).await;
    let texts: Vec<_> = got.iter().filter_map(|m| m.payload().as_text()).collect();
    assert_eq!(texts, ["m6", "m7", "m8", "m9", "m10", "m11"]);
    assert_eq!(got[0].id().offset(), last.offset() + 1);
    assert_eq!(got[0].id().epoch(), last.epoch());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_spans_nodes_and_a_dead_nodes_members_expire() {
    let server = RedisServer::start();
    let a = rooms_node(&server).await;
    let member = |user: &str| {
        Connection::new()
            .authenticated(Identity::new(user))
            .subscribe(Topic::new("x").expect("valid"), Position::Live)
    };
    let watcher = member("w");
    let mut w = a.join(&watcher).await.expect("join");
    assert!(matches!(
        next(&mut w, Duration::from_secs(5)).await,
        Some(Delivery::Presence(_))
    ));

    // Node b runs in a runtime of its own, so that it can die without saying goodbye.
    let node_b = CrashingNode::start(
        config(&server),
        HubConfig::new(),
        vec![("alice".into(), "x".into()), ("bob".into(), "x".into())],
    )
    .await;
    let mut joined = events(&mut w, 2).await;
    joined.sort();
    assert_eq!(
        joined,
        [event(PRESENCE_JOIN, "alice"), event(PRESENCE_JOIN, "bob")]
    );

    // alice opens a second tab on node a: not a first join.
    let alice_a = member("alice");
    let mut alice_sub = a.join(&alice_a).await.expect("join");
    assert_eq!(
        snapshot(&mut alice_sub).await,
        users(&[("alice", 2), ("bob", 1), ("w", 1)])
    );

    // Node b dies: bob leaves within the node TTL (600 ms) plus a heartbeat; alice stays.
    let died = Instant::now();
    node_b.crash();
    assert_eq!(
        next_event(&mut w, Duration::from_secs(5)).await,
        (PRESENCE_LEAVE.to_owned(), "bob".to_owned())
    );
    let took = died.elapsed();
    assert!(took < Duration::from_secs(3), "bob left after {took:?}");
    assert_eq!(listed(&a, "x").await, users(&[("alice", 1), ("w", 1)]));
    println!("a dead node's member left after {took:?}");

    // alice's last tab closes: now she leaves.
    a.leave(&alice_a, alice_sub).await;
    assert_eq!(
        next_event(&mut w, Duration::from_secs(5)).await,
        (PRESENCE_LEAVE.to_owned(), "alice".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_subscription_and_restarts_heal_without_loss_or_end_in_a_reset() {
    let mut server = RedisServer::start();
    let (a, b) = (pubsub_node(&server).await, pubsub_node(&server).await);
    let mut sub = a.subscribe("k", Position::Live).await.expect("subscribe");
    for i in 1..=50 {
        b.publish("k", format!("m{i}")).await.expect("publish");
    }
    let got = messages(&mut sub, 50, Duration::from_secs(5)).await;
    let epoch = got[0].id().epoch();

    // Redis kills every pub/sub connection; b goes on publishing meanwhile.
    let killed = Instant::now();
    let reply = server.command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert!(reply.starts_with(':'), "CLIENT KILL answered {reply}");
    for i in 51..=100 {
        b.publish("k", format!("m{i}")).await.expect("publish");
    }
    let got = messages(&mut sub, 50, Duration::from_secs(10)).await;
    let healed = killed.elapsed();
    let offsets: Vec<u64> = got.iter().map(|m| m.id().offset()).collect();
    assert_eq!(offsets, (51..=100).collect::<Vec<_>>());
    assert!(healed < Duration::from_secs(10), "took {healed:?}");
    println!("after CLIENT KILL TYPE pubsub, caught up in {healed:?}");

    // Redis restarts with its data (saved): nothing is lost, same epoch.
    let restarted = Instant::now();
    server.restart(true);
    for i in 101..=120 {
        publish_retrying(&b, "k", &format!("m{i}")).await;
    }
    let got = messages(&mut sub, 20, Duration::from_secs(10)).await;
    let offsets: Vec<u64> = got.iter().map(|m| m.id().offset()).collect();
    assert_eq!(offsets, (101..=120).collect::<Vec<_>>());
    assert!(got.iter().all(|m| m.id().epoch() == epoch));
    println!(
        "after a restart keeping data, caught up in {:?}",
        restarted.elapsed()
    );
    let last = got[19].id();

    // Redis restarts and loses everything: a new epoch. The stream doesn't end or go silent:
    // a reset, then the new log. A client coming back with its last id gets a reset too.
    server.restart(false);
    publish_retrying(&b, "k", "after the loss").await;
    match next(&mut sub, Duration::from_secs(10)).await {
        Some(Delivery::Reset(r)) => {
            assert_eq!(r.reason, ResetReason::EpochChanged);
            assert_ne!(r.epoch, epoch);
        }
        other => panic!("expected a reset in the open stream, got {other:?}"),
    }
    let got = messages(&mut sub, 1, Duration::from_secs(5)).await;
    assert_eq!(got[0].payload().as_text(), Some("after the loss"));
    let c = conn("k", Position::After(last));
    let mut again = a.join(&c).await.expect("rejoin");
    match next(&mut again, Duration::from_secs(5)).await {
        Some(Delivery::Reset(r)) => {
            assert_eq!(r.reason, ResetReason::EpochChanged);
            assert_ne!(r.epoch, epoch);
        }
        other => panic!("expected a reset, got {other:?}"),
    }
    let got = messages(&mut again, 1, Duration::from_secs(5)).await;
    assert_eq!(got[0].payload().as_text(), Some("after the loss"));
}

#[tokio::test]
async fn while_redis_is_down_publish_fails_fast_and_subscribers_stay() {
    let mut server = RedisServer::start();
    let hub = pubsub_node(&server).await;
    let mut sub = hub.subscribe("d", Position::Live).await.expect("subscribe");
    hub.publish("d", "before").await.expect("publish");
    messages(&mut sub, 1, Duration::from_secs(5)).await;

    server.kill();
    for _ in 0..3 {
        let started = Instant::now();
        let err = hub.publish("d", "lost").await.expect_err("redis is down");
        let took = started.elapsed();
        assert!(matches!(err, HubError::Backend(_)), "{err:?}");
        assert!(took < Duration::from_millis(1_500), "took {took:?}");
        println!("publish failed after {took:?}: {err}");
    }
    let refused = hub.subscribe("other", Position::Live).await;
    assert!(matches!(refused, Err(HubError::Backend(_))), "{refused:?}");
    // The subscriber is still there, waiting.
    assert!(nothing_within(&mut sub, Duration::from_millis(300)).await);
}

// Issue 9, defect 13: a publish reported as failed while Redis is stalled (SIGSTOP) is never
// delivered later; the ones after the stall go through.
#[tokio::test]
async fn a_publish_that_failed_during_a_stall_is_never_delivered_later() {
    let server = RedisServer::start();
    let hub = pubsub_node(&server).await;
    let mut sub = hub.subscribe("s", Position::Live).await.expect("subscribe");
    hub.publish("s", "before").await.expect("publish");
    assert_eq!(messages(&mut sub, 1, Duration::from_secs(5)).await.len(), 1);

    server.signal("-STOP");
    let mut failed = 0;
    for i in 0..4 {
        match hub.publish("s", format!("stalled{i}")).await {
            Err(HubError::Backend(_)) => failed += 1,
            other => panic!("expected a backend error during the stall, got {other:?}"),
        }
    }
    server.signal("-CONT");
    assert_eq!(failed, 4);
    let after = publish_retrying(&hub, "s", "after").await;
    let got = messages(&mut sub, 1, Duration::from_secs(5)).await;
    assert_eq!(
        got[0].payload().as_text(),
        Some("after"),
        "no failed publish came first"
    );
    assert_eq!(got[0].id(), after);
    assert_eq!(
        server.command(&["XLEN", &meta_key("hist", "topics", "s")]),
        ":2",
        "only `before` and `after` are in the history"
    );
    assert!(
        nothing_within(&mut sub, Duration::from_millis(300)).await,
        "nothing else arrives"
    );
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_to_names_nobody_publishes_to_leaves_no_keys() {
    let server = RedisServer::start();
    let hub = pubsub_node(&server).await;
    let mut held = Vec::new();
    for c in 0..4 {
        let mut connection = Connection::new();
        for n in 0..64 {
            let topic = Topic::new(&format!("idle-{c}-{n}")).expect("valid");
            connection = connection.subscribe(topic, Position::Live);
        }
        let sub = hub.join(&connection).await.expect("join");
        held.push((connection, sub));
    }
    for (connection, sub) in held {
        hub.leave(&connection, sub).await;
    }
    // Whatever following them needed is gone once the followers are (node TTL: 600 ms).
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut left = usize::MAX;
    while Instant::now() < deadline {
        left = server.count_keys("*idle-*");
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "keys of never-published names were left behind");

    // Following an idle name while it is quiet keeps it (its epoch); a publish keeps it for
    // the topic TTL.
    let mut sub = hub
        .subscribe("quiet", Position::Live)
        .await
        .expect("subscribe");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let id = hub.publish("quiet", "now").await.expect("publish");
    let got = messages(&mut sub, 1, Duration::from_secs(5)).await;
    assert_eq!(
        got[0].id(),
        id,
        "the follower's epoch survived the quiet time"
    );
    let ttls: Vec<i64> = {
        let keys = server.command(&["KEYS", "*quiet*"]);
        assert!(keys.starts_with('*'), "{keys}");
        ["meta", "hist"]
            .iter()
            .map(|kind| {
                let key = meta_key(kind, "topics", "quiet");
                let ttl = server.command(&["PTTL", &key]);
                ttl.trim_start_matches(':').parse().expect("a TTL")
            })
            .collect()
    };
    assert!(
        ttls.iter().all(|&t| t > 3_600_000),
        "a published topic lives the topic TTL: {ttls:?}"
    );
}

/// The name of a topic's key of `kind` (`meta`, `hist`) with the default prefix.
fn meta_key(kind: &str, namespace: &str, topic: &str) -> String {
    format!("{{salvo-realtime:{namespace}:{topic}}}:{kind}")
}

// Issue 11: a sender id longer than the wire's 64 KiB field was cut mid-UTF-8, so the message
// could not be decoded and was dropped on every node.
#[tokio::test]
async fn a_sender_id_cut_at_the_wire_limit_stays_whole_characters() {
    let server = RedisServer::start();
    let (a, b) = (pubsub_node(&server).await, pubsub_node(&server).await);
    let mut sub = b
        .subscribe("long", Position::Live)
        .await
        .expect("subscribe");
    for fill in [65_534, 65_533] {
        // 'é' is two bytes and '€' three: both straddle the 65,535-byte limit.
        for tail in ["é", "€"] {
            let user = format!("{}{tail}", "a".repeat(fill));
            let p = salvo_realtime::Publication::new("hi").sender(user.as_str());
            a.publish("long", p).await.expect("publish");
            let got = messages(&mut sub, 1, Duration::from_secs(5)).await;
            let sender = got[0].sender().expect("a sender");
            assert!(sender.len() <= 65_535);
            assert!(user.starts_with(sender), "a prefix of the sender id");
            assert!(sender.len() >= 65_533, "cut at the last whole character");
        }
    }
}

// Issue 11: a Redis restored from an older snapshot reassigned offsets that the nodes had
// already delivered, and they dropped the new messages as duplicates. Now the rewind is
// detected: the topic starts a new epoch, local streams end, resuming clients get a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restored_from_an_older_snapshot_resets_instead_of_dropping() {
    let mut server = RedisServer::start();
    let (a, b) = (pubsub_node(&server).await, pubsub_node(&server).await);
    let mut sub = a.subscribe("r", Position::Live).await.expect("subscribe");
    for i in 1..=10 {
        b.publish("r", format!("m{i}")).await.expect("publish");
    }
    let old = server.snapshot("old.rdb");
    for i in 11..=20 {
        b.publish("r", format!("m{i}")).await.expect("publish");
    }
    let got = messages(&mut sub, 20, Duration::from_secs(5)).await;
    let last = got[19].id();

    server.restore(&old);
    for i in 0..5 {
        publish_retrying(&b, "r", &format!("after{i}")).await;
    }
    // No rewound offset may pass for new: the open stream gets a reset to a new epoch (no
    // message of the old epoch after it), then what is published next.
    let reset = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match sub.next().await {
                Some(Delivery::Message(m)) => {
                    assert_ne!(m.id().epoch(), last.epoch(), "a rewound offset: {m:?}");
                }
                Some(Delivery::Reset(r)) => return r,
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("a reset in the open stream");
    assert_eq!(reset.reason, ResetReason::EpochChanged);
    assert_ne!(reset.epoch, last.epoch());
    publish_retrying(&b, "r", "fresh").await;
    let fresh = loop {
        let m = messages(&mut sub, 1, Duration::from_secs(5))
            .await
            .remove(0);
        if m.payload().as_text() == Some("fresh") {
            break m;
        }
    };
    assert_eq!(fresh.id().epoch(), reset.epoch);
    let c = conn("r", Position::After(last));
    let mut again = a.join(&c).await.expect("rejoin");
    match next(&mut again, Duration::from_secs(5)).await {
        Some(Delivery::Reset(r)) => {
            assert_eq!(r.reason, ResetReason::EpochChanged);
            assert_ne!(r.epoch, last.epoch());
        }
        other => panic!("expected a reset, got {other:?}"),
    }
}

// Issue 11: the leaves a sweep found were announced by separate publishes; one that failed
// was lost for good (the watcher never heard that the dead node's user left). Notices are now
// live-only (no history write to fail), so the sweep's script failing as a whole stands in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_leaves_are_announced_even_if_publishing_them_fails_at_first() {
    let server = RedisServer::start();
    let a = rooms_node(&server).await;
    let watcher = Connection::new()
        .authenticated(Identity::new("w"))
        .subscribe(Topic::new("x").expect("valid"), Position::Live);
    let mut w = a.join(&watcher).await.expect("join");
    assert!(matches!(
        next(&mut w, Duration::from_secs(5)).await,
        Some(Delivery::Presence(_))
    ));

    let node_b = CrashingNode::start(
        config(&server),
        HubConfig::new(),
        vec![("bob".into(), "x".into())],
    )
    .await;
    assert_eq!(
        next_event(&mut w, Duration::from_secs(5)).await,
        (PRESENCE_JOIN.to_owned(), "bob".to_owned())
    );

    // The sweep's script fails (the room's presence hash is not a hash) while node b dies.
    let meta = meta_key("pd", "rooms", "x");
    let saved = format!("{meta}-saved");
    assert_eq!(server.command(&["RENAME", &meta, &saved]), "+OK");
    assert_eq!(server.command(&["SET", &meta, "not a hash"]), "+OK");
    node_b.crash();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        nothing_within(&mut w, Duration::from_millis(100)).await,
        "nothing could be announced meanwhile"
    );
    assert_eq!(server.command(&["DEL", &meta]), ":1");
    assert_eq!(server.command(&["RENAME", &saved, &meta]), "+OK");
    assert_eq!(
        next_event(&mut w, Duration::from_secs(5)).await,
        (PRESENCE_LEAVE.to_owned(), "bob".to_owned()),
        "the leave is announced once the sweep works again"
    );
    let present: Vec<_> = a
        .presence("x")
        .await
        .iter()
        .map(|m| m.user.to_string())
        .collect();
    assert_eq!(present, ["w"]);
}

// Issue 11: a node attaching a topic with a long history fetched it inside the one pub/sub
// task, and every other topic's delivery on that node waited for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attaching_topics_with_long_histories_does_not_stall_other_topics() {
    let server = RedisServer::start();
    // Histories of 16 MB each, past the default byte cap; 1,000 publishes of 16 KiB at once
    // take their time on a busy machine (this test is about delivery, not timeouts).
    let node = async || {
        let config = config(&server)
            .history_bytes(32 << 20)
            .timeout(Duration::from_secs(5));
        let backend = RedisBackend::connect(config).await.expect("connect");
        PubSub::with_backend(HubConfig::new().history(1_000), backend)
    };
    let (a, b) = (node().await, node().await);
    let big = "x".repeat(16 * 1024);
    for t in 0..4 {
        let topic = format!("big{t}");
        let batch = (0..1_000).map(|_| b.publish(&topic, big.as_str()));
        for r in futures_util::future::join_all(batch).await {
            r.expect("publish");
        }
    }
    let mut fast = a
        .subscribe("fast", Position::Live)
        .await
        .expect("subscribe");
    // A warm-up message, so that the measured ones don't include the first delivery.
    b.publish("fast", "0").await.expect("publish");
    messages(&mut fast, 1, Duration::from_secs(5)).await;

    let attaching = {
        let a = a.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let subs = futures_util::future::join_all((0..4).map(|t| {
                let a = a.clone();
                async move { a.subscribe(&format!("big{t}"), Position::Live).await }
            }))
            .await;
            for s in subs {
                s.expect("subscribe");
            }
            started.elapsed()
        })
    };
    let mut worst = Duration::ZERO;
    let mut sent = 0;
    while !attaching.is_finished() || sent < 10 {
        let started = Instant::now();
        b.publish("fast", "ping").await.expect("publish");
        messages(&mut fast, 1, Duration::from_secs(10)).await;
        worst = worst.max(started.elapsed());
        sent += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let attach = attaching.await.expect("attach task");
    println!("4 attaches of 1,000 x 16 KiB took {attach:?}; worst delivery meanwhile {worst:?}");
    assert!(
        worst < attach / 3,
        "a delivery waited {worst:?} while attaching took {attach:?}"
    );
}

// Issue 11: a `Rooms` join cut short (a client dropping during the handshake, a timeout) left
// the user present in Redis and this node's mirror log kept (40 cut-short joins: 7 of 8 rooms
// kept phantom presence). A cut-short join must leave nothing behind, and undoing it must never
// take away the count of another connection of the same user (here a lasting one in `cut-0`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_cut_short_leave_no_phantom_presence_and_no_log() {
    let server = RedisServer::start();
    let a = rooms_node(&server).await;
    let b = rooms_node(&server).await;
    let zed = |room: &str| {
        Connection::new()
            .authenticated(Identity::new("zed"))
            .subscribe(Topic::new(room).expect("valid"), Position::Live)
    };
    let lasting = zed("cut-0");
    let lasting_sub = a.join(&lasting).await.expect("join");

    // Cut each join at another point: before its first poll, in the subscription, in the
    // presence script, in the members read (a pseudo-random number of scheduler turns; a
    // turn lets the join's I/O make progress).
    let mut seed: u64 = 0x5eed;
    let mut cut = 0;
    for i in 0..40 {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let turns = (seed >> 33) % 300;
        let c = zed(&format!("cut-{}", i % 8));
        let mut join = std::pin::pin!(a.join(&c));
        let mut joined = None;
        for _ in 0..turns {
            tokio::select! {
                biased;
                r = &mut join => {
                    joined = Some(r);
                    break;
                }
                () = tokio::task::yield_now() => {}
            }
        }
        match joined {
            Some(r) => a.leave(&c, r.expect("join")).await,
            None => cut += 1,
        }
    }
    assert!(cut >= 8, "only {cut} of 40 joins were cut short");

    let rooms: Vec<String> = (0..8).map(|r| format!("cut-{r}")).collect();
    // A bound against a hang only: cleanup is asynchronous (cut-short catch-ups and removals
    // finish in the node's task), and a loaded machine may take a while.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut phantom = Vec::new();
    loop {
        phantom.clear();
        for room in &rooms {
            let members: Vec<(String, usize)> = b
                .presence(room)
                .await
                .iter()
                .map(|m| (m.user.to_string(), m.connections))
                .collect();
            let expected = if room == "cut-0" {
                vec![("zed".to_owned(), 1)]
            } else {
                Vec::new()
            };
            if members != expected {
                phantom.push((room.clone(), members));
            }
        }
        // The lasting connection keeps `cut-0` and its own direct log.
        let settled = phantom.is_empty() && a.log_count() == 2 && a.room_count() == 1;
        if settled || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        phantom.is_empty(),
        "{cut} cut-short joins left phantom presence: {phantom:?}"
    );
    assert_eq!(
        (a.log_count(), a.room_count(), a.connection_count()),
        (2, 1, 1),
        "cut-short joins kept logs on the node"
    );

    // The lasting connection's leave is the user's last: nothing is left anywhere.
    a.leave(&lasting, lasting_sub).await;
    // A bound against a hang only: cleanup is asynchronous (cut-short catch-ups and removals
    // finish in the node's task), and a loaded machine may take a while.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = b.presence("cut-0").await.len();
        let keys = server.count_keys("*cut-*:p[cdnkzu]");
        if (listed, keys, a.log_count()) == (0, 0, 0) || Instant::now() > deadline {
            assert_eq!(
                (listed, keys, a.log_count(), a.room_count()),
                (0, 0, 0, 0),
                "presence left behind after the last leave"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// Issue 11: the heartbeat's re-register (after Redis lost the node's presence: a restart, or
// the node was declared dead) wrote a snapshot of the node's members taken before its script
// ran, so joins and leaves in between were undone: phantom members, or members missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_registering_presence_does_not_race_joins_and_leaves() {
    let server = RedisServer::start();
    let a = rooms_node(&server).await;
    let b = rooms_node(&server).await;
    let rooms: Vec<String> = (0..32).map(|r| format!("rr-{r}")).collect();
    let alive = "{salvo-realtime:nodes}:alive";

    // Four connections' worth of churn at once: joins and leaves of 5 users over 32 rooms.
    let churn: Vec<_> = (0..4u64)
        .map(|task| {
            let (a, rooms) = (a.clone(), rooms.clone());
            tokio::spawn(async move {
                let mut held = Vec::new();
                let mut seed: u64 = 7 + task;
                for _ in 0..300 {
                    seed = seed
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    let r = (seed >> 33) as usize;
                    if held.len() > 12 || (!held.is_empty() && r.is_multiple_of(2)) {
                        let (c, sub): (Connection, Subscription) = held.swap_remove(r % held.len());
                        a.leave(&c, sub).await;
                    } else {
                        let c = Connection::new()
                            .authenticated(Identity::new(format!("u{}", r % 5)))
                            .subscribe(
                                Topic::new(&rooms[(r / 5) % rooms.len()]).expect("valid"),
                                Position::Live,
                            );
                        if let Ok(sub) = a.join(&c).await {
                            held.push((c, sub));
                        }
                    }
                }
                held
            })
        })
        .collect();
    // Meanwhile the nodes' liveness is lost again and again: every heartbeat re-registers.
    while !churn.iter().all(tokio::task::JoinHandle::is_finished) {
        server.command(&["DEL", alive]);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let mut held = Vec::new();
    for task in churn {
        held.extend(task.await.expect("churn"));
    }

    // What the node holds, per room: user -> connections.
    let truth = |room: &str| {
        let mut users: std::collections::BTreeMap<String, usize> = Default::default();
        for (c, _) in &held {
            if c.topics().iter().any(|(t, _)| t.as_str() == room) {
                *users
                    .entry(c.user_id().expect("named").to_owned())
                    .or_default() += 1;
            }
        }
        users.into_iter().collect::<Vec<_>>()
    };
    // Once the liveness stays, the node registers its members under its new incarnation (a
    // timeout after the last loss) and evicts the old ones: Redis must then agree with it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut wrong = Vec::new();
    loop {
        wrong.clear();
        for room in &rooms {
            let listed: Vec<(String, usize)> = b
                .presence(room)
                .await
                .iter()
                .map(|m| (m.user.to_string(), m.connections))
                .collect();
            if listed != truth(room) {
                wrong.push((room.clone(), listed, truth(room)));
            }
        }
        if wrong.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        wrong.is_empty(),
        "presence in Redis (left) differs from the node's members (right): {wrong:?}"
    );
    for (c, sub) in held {
        a.leave(&c, sub).await;
    }
}

// The heartbeat's re-register dropped the users of this node that Redis still listed but the
// node no longer had (they left while their leave could not reach Redis) silently: the other
// nodes' clients kept showing them, nobody got a `presence.leave`. Since issue 18 such a leave
// is applied (and announced) by the node's next reconcile once Redis works again, whether or
// not it lost the node's liveness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_lost_while_redis_failed_is_announced_once_redis_works_again() {
    let server = RedisServer::start();
    let (a, b) = (rooms_node(&server).await, rooms_node(&server).await);
    let room = "lost";
    let watcher = member("w", room, Position::Live);
    let mut w = b.join(&watcher).await.expect("join w");
    assert!(matches!(
        next(&mut w, Duration::from_secs(5)).await,
        Some(Delivery::Presence(_))
    ));
    // On node a: alice once, carol (also on node b), dave twice.
    let mut on_a = Vec::new();
    for user in ["alice", "carol", "dave", "dave"] {
        let c = member(user, room, Position::Live);
        let sub = a.join(&c).await.expect("join a");
        on_a.push((c, sub));
    }
    let carol_b = member("carol", room, Position::Live);
    let carol_b_sub = b.join(&carol_b).await.expect("join carol b");
    let joined: Vec<(String, String)> = ["alice", "carol", "dave"]
        .iter()
        .map(|u| (PRESENCE_JOIN.to_owned(), (*u).to_owned()))
        .collect();
    assert_eq!(events(&mut w, 3).await, joined);

    // The leaves cannot reach Redis (the room's membership hash is not a hash): alice's only
    // connection, carol's on node a, one of dave's.
    let pk = room_key(room, "pk");
    let saved = format!("{pk}-saved");
    assert_eq!(server.command(&["RENAME", &pk, &saved]), "+OK");
    assert_eq!(server.command(&["SET", &pk, "not a hash"]), "+OK");
    let dave_stays = on_a.pop().expect("dave's second");
    for (c, sub) in on_a {
        a.leave(&c, sub).await;
    }
    // Meanwhile every heartbeat's reconcile fails too: nothing is announced.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        nothing_within(&mut w, Duration::from_millis(300)).await,
        "no leave was announced while Redis failed"
    );
    assert_eq!(server.command(&["DEL", &pk]), ":1");
    assert_eq!(server.command(&["RENAME", &saved, &pk]), "+OK");
    assert_eq!(
        next_event(&mut w, Duration::from_secs(5)).await,
        (PRESENCE_LEAVE.to_owned(), "alice".to_owned()),
        "the lost leave is announced once Redis works again"
    );
    // Carol (still on node b) and dave (another connection) are not announced as leaving:
    // the next notice is a later join.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let zed = member("zed", room, Position::Live);
    let zed_sub = a.join(&zed).await.expect("join zed");
    assert_eq!(
        next_event(&mut w, Duration::from_secs(5)).await,
        (PRESENCE_JOIN.to_owned(), "zed".to_owned())
    );
    for hub in [&a, &b] {
        let listed: Vec<(String, usize)> = hub
            .presence(room)
            .await
            .iter()
            .map(|m| (m.user.to_string(), m.connections))
            .collect();
        let expected = [("carol", 1), ("dave", 1), ("w", 1), ("zed", 1)];
        assert_eq!(listed, expected.map(|(u, n)| (u.to_owned(), n)));
    }
    drop((dave_stays, carol_b_sub, zed_sub, carol_b, zed, watcher));
}

/// A Redis Stream entry as `XRANGE` returns it: id and field-value pairs.
type StreamEntry = (String, Vec<(String, Vec<u8>)>);

/// A client connection for inspecting keys.
fn inspect(server: &RedisServer) -> redis::Connection {
    redis::Client::open(server.url())
        .and_then(|c| c.get_connection())
        .expect("inspection connection")
}

fn room_key(room: &str, kind: &str) -> String {
    format!("{{salvo-realtime:rooms:{room}}}:{kind}")
}

// Issue 11: join and leave notices went through the remote log (an offset, an entry in the
// history): they were replayed on resume and pushed chat messages out of a full history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_notices_are_live_only_across_nodes() {
    let server = RedisServer::start();
    let node = async || {
        let backend = RedisBackend::connect(config(&server).history(50))
            .await
            .expect("connect");
        // Room for the 400 notices the watcher reads only at the end.
        Rooms::with_backend(HubConfig::new().channel_capacity(1_024), backend)
    };
    let (a, b) = (node().await, node().await);
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(
            a.broadcast("hall", format!("chat{i}"))
                .await
                .expect("broadcast"),
        );
    }
    let mut redis = inspect(&server);
    let (meta, hist) = (room_key("hall", "meta"), room_key("hall", "hist"));
    let state = |redis: &mut redis::Connection| -> (i64, usize, String) {
        let seq: i64 = redis::cmd("HGET")
            .arg(&meta)
            .arg("seq")
            .query(redis)
            .expect("seq");
        let len: usize = redis::cmd("XLEN").arg(&hist).query(redis).expect("xlen");
        let first: Vec<StreamEntry> = redis::cmd("XRANGE")
            .arg(&hist)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query(redis)
            .expect("xrange");
        (seq, len, first[0].0.clone())
    };
    assert_eq!(state(&mut redis), (50, 50, "0-1".to_owned()));

    let watcher = member("w", "hall", Position::Live);
    let mut w = a.join(&watcher).await.expect("join");
    // 300 users join on the other node: each first join reaches the watcher, in order.
    let mut held = Vec::new();
    for i in 0..300 {
        let c = member(&format!("u{i:03}"), "hall", Position::Live);
        let sub = b.join(&c).await.expect("join b");
        held.push((c, sub));
    }
    let joined = events(&mut w, 300).await;
    let expected: Vec<(String, String)> = (0..300)
        .map(|i| (PRESENCE_JOIN.to_owned(), format!("u{i:03}")))
        .collect();
    assert_eq!(joined, expected);
    for (c, sub) in held.drain(..100) {
        b.leave(&c, sub).await;
    }
    let left = events(&mut w, 100).await;
    assert!(left.iter().all(|(e, _)| e == PRESENCE_LEAVE), "{left:?}");
    // No notice took an offset or a place in the history: no chat message was evicted.
    assert_eq!(state(&mut redis), (50, 50, "0-1".to_owned()));
    assert_eq!(b.member_count("hall").await.expect("count"), 201);

    // A resume replays the chat and nothing else.
    let late = member("late", "hall", Position::After(ids[0]));
    let mut s = b.join(&late).await.expect("resume");
    let mut chat = Vec::new();
    let deadline = Instant::now() + Duration::from_millis(1_500);
    while let Ok(Some(d)) =
        tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), s.next()).await
    {
        if let Delivery::Message(m) = d {
            chat.extend(replayed_chat(&m));
        }
    }
    let expected: Vec<String> = (1..50).map(|i| format!("chat{i}")).collect();
    assert_eq!(chat, expected);
    drop((watcher, late));
}

// Issue 11: a Redis history was capped only in messages: 1,000 frames of 64 KiB per room for
// 24 h. It is capped in bytes too, and a resume from before what it keeps is a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_history_is_capped_in_bytes() {
    let server = RedisServer::start();
    let cap = 256 * 1024;
    let node = async || {
        let backend = RedisBackend::connect(config(&server).history_bytes(cap))
            .await
            .expect("connect");
        PubSub::with_backend(
            HubConfig::new().history(1_000).max_payload(1 << 20),
            backend,
        )
    };
    let (a, b) = (node().await, node().await);
    let big = "x".repeat(64 * 1024);
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            a.publish("blob", format!("{i:02}{big}"))
                .await
                .expect("publish"),
        );
    }
    let mut redis = inspect(&server);
    let (meta, hist) = (
        meta_key("meta", "topics", "blob"),
        meta_key("hist", "topics", "blob"),
    );
    let stored = |redis: &mut redis::Connection| {
        let entries: Vec<StreamEntry> = redis::cmd("XRANGE")
            .arg(&hist)
            .arg("-")
            .arg("+")
            .query(redis)
            .expect("xrange");
        let len: usize = redis::cmd("XLEN").arg(&hist).query(redis).expect("xlen");
        let bytes: Option<usize> = redis::cmd("HGET")
            .arg(&meta)
            .arg("bytes")
            .query(redis)
            .expect("bytes");
        let summed: usize = entries
            .iter()
            .flat_map(|(_, fields)| fields.iter().map(|(_, w)| w.len()))
            .sum();
        let ids: Vec<String> = entries.into_iter().map(|(id, _)| id).collect();
        (ids, len, summed, bytes.unwrap_or(0))
    };
    let (kept, len, summed, bytes) = stored(&mut redis);
    assert_eq!(kept, ["0-18", "0-19", "0-20"], "the newest that fit");
    assert_eq!((len, bytes), (3, summed));
    assert!(summed <= cap && summed > 3 * 64 * 1024, "{summed} bytes");

    // A resume from an evicted id, on the other node: a reset, then what is kept.
    let mut sub = b
        .subscribe("blob", Position::After(ids[0]))
        .await
        .expect("subscribe");
    match next(&mut sub, Duration::from_secs(5)).await {
        Some(Delivery::Reset(r)) => assert_eq!(r.reason, ResetReason::Expired),
        other => panic!("expected a reset, got {other:?}"),
    }
    let replayed = messages(&mut sub, 3, Duration::from_secs(5)).await;
    let offsets: Vec<u64> = replayed.iter().map(|m| m.id().offset()).collect();
    assert_eq!(offsets, [18, 19, 20]);

    // One message above the cap is delivered, not kept; the history starts again after it.
    let huge = "y".repeat(300 * 1024);
    a.publish("blob", huge.as_str())
        .await
        .expect("publish huge");
    let got = messages(&mut sub, 1, Duration::from_secs(5)).await;
    assert_eq!(got[0].payload().len(), huge.len());
    assert_eq!(stored(&mut redis), (Vec::new(), 0, 0, 0));
    a.publish("blob", "small").await.expect("publish");
    let (kept, len, summed, bytes) = stored(&mut redis);
    assert_eq!((kept, len, bytes), (vec!["0-22".to_owned()], 1, summed));
}

// Issue 11: `members` ran a script over every node's counts (O(nodes x N)) and a join listed
// the whole room. A count is O(1) and members come in ordered pages of O(page).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_rooms_members_come_in_ordered_pages_and_its_count_is_kept() {
    let server = RedisServer::start();
    let node = async || {
        let backend = RedisBackend::connect(config(&server))
            .await
            .expect("connect");
        Rooms::with_backend(HubConfig::new().presence_mode(PresenceMode::Count), backend)
    };
    let (a, b) = (node().await, node().await);
    let mut held = Vec::new();
    for i in 0..600 {
        let user = format!("u{i:03}");
        let hub = if i % 2 == 0 { &a } else { &b };
        let c = member(&user, "big", Position::Live);
        let sub = hub.join(&c).await.expect("join");
        held.push((i, c, sub));
    }
    // u000 has a second tab, on the other node.
    let tab = member("u000", "big", Position::Live);
    let tab_sub = b.join(&tab).await.expect("join tab");

    let pages = async |hub: &Rooms<RedisBackend>| {
        let (mut all, mut sizes, mut after) = (Vec::new(), Vec::new(), None::<String>);
        loop {
            let page = hub
                .presence_page("big", after.as_deref(), 256)
                .await
                .expect("page");
            sizes.push(page.members.len());
            all.extend(
                page.members
                    .iter()
                    .map(|m| (m.user.to_string(), m.connections)),
            );
            after = page.members.last().map(|m| m.user.to_string());
            if !page.more {
                return (all, sizes);
            }
        }
    };
    let expected = |from: usize| -> Vec<(String, usize)> {
        (from..600)
            .map(|i| (format!("u{i:03}"), if i == 0 { 2 } else { 1 }))
            .collect()
    };
    for hub in [&a, &b] {
        let (all, sizes) = pages(hub).await;
        assert_eq!(sizes, [256, 256, 88]);
        assert_eq!(all, expected(0), "everyone once, in order");
        assert_eq!(hub.member_count("big").await.expect("count"), 600);
    }

    // 100 users leave (u000 with both tabs).
    b.leave(&tab, tab_sub).await;
    for (i, c, sub) in held.drain(..100) {
        let hub = if i % 2 == 0 { &a } else { &b };
        hub.leave(&c, sub).await;
    }
    // Leaves finish in the background: wait for the count, then check it stays.
    count_becomes(&a, "big", 500).await;
    assert_eq!(pages(&b).await.0, expected(100));

    // A node dies with 50 users of its own and a second tab of u100: the sweep takes its
    // users out of the count and the pages, and u100's tab only.
    let users = (0..50).map(|i| format!("c{i:02}")).chain(["u100".into()]);
    let node_c = CrashingNode::start(
        config(&server),
        HubConfig::new().presence_mode(PresenceMode::Count),
        users.map(|user| (user, "big".to_owned())).collect(),
    )
    .await;
    assert_eq!(a.member_count("big").await.expect("count"), 550);
    let (all, _) = pages(&a).await;
    assert_eq!(all.len(), 550);
    assert!(all.contains(&("u100".to_owned(), 2)));
    node_c.crash();
    count_becomes(&a, "big", 500).await;
    assert_eq!(pages(&b).await.0, expected(100));
    drop(held);
}

/// Waits (5 s at most) for the room's member count to be `n`, and checks it stays so a while.
async fn count_becomes(hub: &Rooms<RedisBackend>, room: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while hub.member_count(room).await.expect("count") != n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(hub.member_count(room).await.expect("count"), n);
}

/// Adds `n` members to `room` straight in Redis (pipelined), as if a node `f00d` that never
/// dies held them: how a benchmark gets a room of 100,000 without 100,000 joins.
fn add_members(redis: &mut redis::Connection, room: &str, n: usize) {
    let node = "f00d";
    for chunk in (0..n).collect::<Vec<_>>().chunks(1_000) {
        let (mut pd, mut pz, mut pu, mut pc, mut pk) = (
            redis::cmd("HSET"),
            redis::cmd("ZADD"),
            redis::cmd("HSET"),
            redis::cmd("HSET"),
            redis::cmd("HSET"),
        );
        pd.arg(room_key(room, "pd"));
        pz.arg(room_key(room, "pz"));
        pu.arg(room_key(room, "pu"));
        pc.arg(room_key(room, "pc"));
        pk.arg(room_key(room, "pk"));
        for &i in chunk {
            let user = format!("m{i:06}");
            pd.arg(&user).arg(format!("{{\"n\":{i}}}"));
            pz.arg(0).arg(&user);
            pu.arg(&user).arg(1);
            pc.arg(format!("{node}|{user}")).arg(1);
            pk.arg(format!("{node}|{}", i + 1)).arg(&user);
        }
        redis::pipe()
            .add_command(pd)
            .add_command(pz)
            .add_command(pu)
            .add_command(pc)
            .add_command(pk)
            .exec(redis)
            .expect("pipelined members");
    }
    redis::cmd("HSET")
        .arg(room_key(room, "pn"))
        .arg(node)
        .arg(n)
        .exec(redis)
        .expect("node count");
}

// Issue 11, figures: join latency (join until the presence snapshot's first frame) into a
// Redis room of 10 / 1,000 / 100,000 members, full snapshot vs count only. Prints the
// figures; asserts only what each join delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_latency_in_big_redis_rooms_full_snapshot_vs_count_only() {
    let server = RedisServer::start();
    let mut redis = inspect(&server);
    let node = async |mode| {
        let backend = RedisBackend::connect(config(&server))
            .await
            .expect("connect");
        Rooms::with_backend(HubConfig::new().presence_mode(mode), backend)
    };
    let full = node(PresenceMode::Full).await;
    let count = node(PresenceMode::Count).await;
    for n in [10, 1_000, 100_000] {
        let room = format!("bench-{n}");
        add_members(&mut redis, &room, n);
        let mut line = format!("join into a Redis room of {n:>7} members:");
        for (name, hub) in [("full snapshot", &full), ("count only", &count)] {
            let mut took = Vec::new();
            for i in 0..15 {
                let c = member(&format!("probe{i:02}"), &room, Position::Live);
                let start = Instant::now();
                let mut sub = hub.join(&c).await.expect("join");
                let Some(Delivery::Presence(p)) = next(&mut sub, Duration::from_secs(10)).await
                else {
                    panic!("expected a presence snapshot");
                };
                took.push(start.elapsed());
                assert_eq!(p.count, n + 1, "{name}");
                if name == "full snapshot" {
                    assert_eq!(
                        p.members.len(),
                        (n + 1).min(salvo_realtime::hub::PRESENCE_PAGE)
                    );
                    assert_eq!(p.more, n + 1 > salvo_realtime::hub::PRESENCE_PAGE);
                } else {
                    assert!(p.members.is_empty());
                }
                hub.leave(&c, sub).await;
            }
            took.sort();
            line.push_str(&format!(
                "  {name} p50 {:?} max {:?};",
                took[took.len() / 2],
                took[took.len() - 1]
            ));
        }
        // The backend's own share: one first page, one count.
        let (mut page_took, mut count_took) = (Vec::new(), Vec::new());
        for _ in 0..15 {
            let start = Instant::now();
            let page = count
                .presence_page(&room, None, salvo_realtime::hub::PRESENCE_PAGE)
                .await
                .expect("page");
            page_took.push(start.elapsed());
            assert_eq!(
                page.members.len(),
                n.min(salvo_realtime::hub::PRESENCE_PAGE)
            );
            assert_eq!(page.members[0].user.as_ref(), "m000000");
            let start = Instant::now();
            assert_eq!(count.member_count(&room).await.expect("count"), n);
            count_took.push(start.elapsed());
        }
        page_took.sort();
        count_took.sort();
        line.push_str(&format!(
            "  first page p50 {:?}; member_count p50 {:?}",
            page_took[7], count_took[7]
        ));
        println!("{line}");
    }
}

/// The backend conformance suite over nodes on one Redis server, one test per check.
fn suite(
    server: &RedisServer,
) -> Suite<impl Fn() -> std::pin::Pin<Box<dyn Future<Output = RedisBackend> + Send>>> {
    let config = config(server);
    Suite::new(move || {
        let config = config.clone();
        Box::pin(async move { RedisBackend::connect(config).await.expect("connect") })
            as std::pin::Pin<Box<dyn Future<Output = RedisBackend> + Send>>
    })
}

macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        /// Issue 18: the conformance suite of `backend::conformance`, check by check.
        mod conformance {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let server = RedisServer::start();
                    if let Err(failure) = suite(&server).$check().await {
                        panic!("{failure}");
                    }
                }
            )*
        }
    };
}

conformance!(
    ids_and_order,
    order_across_nodes,
    resume,
    presence_idempotent,
    presence_across_nodes,
    presence_per_namespace,
    cancellation,
    idle_expiry,
);

// --- Issue 18: faults injected between a node and Redis (tests/common/proxy.rs) ---

/// Settings for a node reaching Redis through `proxy`.
fn via(proxy: &Proxy) -> RedisConfig {
    quick(proxy.url())
}

async fn rooms_via(config: RedisConfig) -> Rooms<RedisBackend> {
    rooms_on(config, HubConfig::new()).await
}

/// A watcher of `room` on `hub`, past its presence snapshot.
async fn watcher(hub: &Rooms<RedisBackend>, room: &str) -> Subscription {
    let mut w = hub
        .join(&member("w", room, Position::Live))
        .await
        .expect("join w");
    assert!(matches!(
        next(&mut w, Duration::from_secs(5)).await,
        Some(Delivery::Presence(_))
    ));
    w
}

/// alice, then bob, join `room` on `hub`; the watcher `w` sees both joins. Returns alice's
/// connection and both subscriptions.
async fn alice_and_bob_join(
    hub: &Rooms<RedisBackend>,
    w: &mut Subscription,
    room: &str,
) -> (Connection, Subscription, Subscription) {
    let alice = member("alice", room, Position::Live);
    let alice_sub = hub.join(&alice).await.expect("join alice");
    let bob = member("bob", room, Position::Live);
    let bob_sub = hub.join(&bob).await.expect("join bob");
    assert_eq!(
        events(w, 2).await,
        [event(PRESENCE_JOIN, "alice"), event(PRESENCE_JOIN, "bob")]
    );
    (alice, alice_sub, bob_sub)
}

/// alice leaves `room` on `hub` (which reaches Redis through `proxy`), and her leave is lost:
/// its request reaches the proxy and goes with the connection, and from then on the proxy
/// refuses new connections (an outage, until the test sets `Mode::Pass`).
async fn lose_leave(
    proxy: &Proxy,
    hub: &Rooms<RedisBackend>,
    room: &str,
    alice: &Connection,
    alice_sub: Subscription,
) {
    let stall = proxy.stall_on(&[room_key(room, "pk").as_bytes()]);
    hub.leave(alice, alice_sub).await;
    stall.hit().await;
    proxy.set(Mode::Refuse);
    stall.discard();
    proxy.cut();
}

/// zed joins `room` on `hub`: the watcher `w` sees that join next, and `hub` lists bob (still
/// there), w and zed. Returns zed's subscription.
async fn zed_joins_beside_bob(
    hub: &Rooms<RedisBackend>,
    w: &mut Subscription,
    room: &str,
) -> Subscription {
    let zed = member("zed", room, Position::Live);
    let zed_sub = hub.join(&zed).await.expect("join zed");
    assert_eq!(
        next_event(w, Duration::from_secs(5)).await,
        event(PRESENCE_JOIN, "zed")
    );
    assert_eq!(
        listed(hub, room).await,
        users(&[("bob", 1), ("w", 1), ("zed", 1)])
    );
    zed_sub
}

/// An anonymous member (in no presence) keeps `room` attached on `hub`, and a message keeps the
/// heartbeat from renewing the room's epoch. Returns the member's subscription.
async fn hold_room(hub: &Rooms<RedisBackend>, room: &str) -> Subscription {
    let holder = Connection::new().subscribe(Topic::new(room).expect("valid"), Position::Live);
    let holder_sub = hub.join(&holder).await.expect("join holder");
    hub.broadcast(room, "hello").await.expect("broadcast");
    holder_sub
}

/// The node behind `proxy` dies (cut off from Redis for good): node b's sweep must take alice
/// out of `room` (the watcher `w` sees her leave), leaving only the watcher.
async fn node_dies_and_alice_is_swept(
    proxy: &Proxy,
    w: &mut Subscription,
    b: &Rooms<RedisBackend>,
    room: &str,
) {
    proxy.set(Mode::Refuse);
    proxy.cut();
    assert_eq!(
        next_event(w, Duration::from_secs(5)).await,
        event(PRESENCE_LEAVE, "alice"),
        "the dead node's member is swept"
    );
    assert_eq!(listed(b, room).await, users(&[("w", 1)]));
}

// Issue 18, defect 5: a leave whose script failed during a Redis outage shorter than the node
// TTL was never retried (the heartbeat re-registers only once the node's own liveness entry is
// gone): the user stayed counted and listed for as long as the node lived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_lost_in_an_outage_shorter_than_node_ttl_is_applied_once_redis_is_back() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.addr()).await;
    let a = rooms_via(via(&proxy).node_ttl(Duration::from_secs(3))).await;
    let b = rooms_node(&server).await;
    let room = "outage-short";
    let mut w = watcher(&b, room).await;
    let (alice, alice_sub, bob_sub) = alice_and_bob_join(&a, &mut w, room).await;

    // alice's leave reaches the proxy and is lost with the connection; Redis then stays
    // unreachable for 500 ms, well within the node TTL (3 s).
    lose_leave(&proxy, &a, room, &alice, alice_sub).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // the outage
    proxy.set(Mode::Pass);

    assert_eq!(
        next_event(&mut w, Duration::from_secs(5)).await,
        event(PRESENCE_LEAVE, "alice"),
        "the lost leave is applied once Redis is back"
    );
    // Node a was never declared dead: bob stays, and the next notice is a later join.
    let zed_sub = zed_joins_beside_bob(&b, &mut w, room).await;
    drop((bob_sub, zed_sub));
}

// Issue 18, defect 5 past the node TTL: the other node sweeps the silent one (its users leave),
// and once Redis is back the node registers the members it still has (they join again); the
// user whose leave was lost is not among them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_lost_in_an_outage_longer_than_node_ttl_is_applied_and_the_rest_come_back() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.addr()).await;
    let a = rooms_via(via(&proxy)).await;
    let b = rooms_node(&server).await;
    let room = "outage-long";
    let mut w = watcher(&b, room).await;
    let (alice, alice_sub, bob_sub) = alice_and_bob_join(&a, &mut w, room).await;

    lose_leave(&proxy, &a, room, &alice, alice_sub).await;
    // Node b declares node a dead after the node TTL (600 ms): both its users leave.
    let mut left = events(&mut w, 2).await;
    left.sort();
    assert_eq!(
        left,
        [event(PRESENCE_LEAVE, "alice"), event(PRESENCE_LEAVE, "bob")]
    );
    proxy.set(Mode::Pass);
    // Node a comes back: bob, still connected there, is registered again; alice is not.
    assert_eq!(
        next_event(&mut w, Duration::from_secs(5)).await,
        event(PRESENCE_JOIN, "bob")
    );
    let zed_sub = zed_joins_beside_bob(&b, &mut w, room).await;
    drop((bob_sub, zed_sub));
}

// Issue 18, defect 5 for a join: the join script ran but its reply was lost, and the hub's undo
// could not reach Redis either (an outage began): the user was counted for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_whose_reply_is_lost_in_an_outage_leaves_no_phantom() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.addr()).await;
    let a = rooms_via(via(&proxy).node_ttl(Duration::from_secs(3))).await;
    let b = rooms_node(&server).await;
    let room = "outage-join";
    let mut w = watcher(&b, room).await;

    proxy.set(Mode::Refuse); // open connections pass; new ones are refused
    proxy.lose_reply_to(room_key(room, "pk").as_bytes());
    let alice = member("alice", room, Position::Live);
    let refused = a.join(&alice).await;
    assert!(
        matches!(refused, Err(HubError::Backend(_))),
        "{:?}",
        refused.map(|_| ())
    );
    assert!(!proxy.reply_loss_pending(), "the join script went through");
    // Redis did count her (the join was announced).
    assert_eq!(
        next_event(&mut w, Duration::from_secs(5)).await,
        event(PRESENCE_JOIN, "alice")
    );
    tokio::time::sleep(Duration::from_millis(500)).await; // the outage
    proxy.set(Mode::Pass);
    assert_eq!(
        next_event(&mut w, Duration::from_secs(5)).await,
        event(PRESENCE_LEAVE, "alice"),
        "the join nobody holds is undone once Redis is back"
    );
    assert_eq!(listed(&b, room).await, users(&[("w", 1)]));
}

// Issue 18, defect 6: the heartbeat's prune of a room from the node's room set raced a join into
// it: the join trusted the room was listed while the prune's SREM took it out. When the node
// died, the sweep never visited the room and the member stayed forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_racing_the_prune_of_its_room_keeps_the_room_swept_when_the_node_dies() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.addr()).await;
    let a = rooms_via(via(&proxy)).await;
    let b = rooms_node(&server).await;
    let room = "prune-race";
    let mut w = watcher(&b, room).await;
    let holder_sub = hold_room(&a, room).await;
    let alice = member("alice", room, Position::Live);
    let alice_sub = a.join(&alice).await.expect("join alice");
    a.leave(&alice, alice_sub).await;
    assert_eq!(
        events(&mut w, 2).await,
        [
            event(PRESENCE_JOIN, "alice"),
            event(PRESENCE_LEAVE, "alice")
        ]
    );

    // Two heartbeats later node a prunes the room from its room set; alice joins again while
    // that request is on its way, and her join's own request queues behind it.
    let stall = proxy.stall_on(&[b"{salvo-realtime:nodes}", room.as_bytes()]);
    stall.hit().await;
    let again = member("alice", room, Position::Live);
    let join = tokio::spawn({
        let (a, again) = (a.clone(), again.clone());
        async move { a.join(&again).await }
    });
    stall.held_contains(room.as_bytes(), 2).await;
    stall.release();
    let again_sub = join.await.expect("join task").expect("join again");
    assert_eq!(
        next_event(&mut w, Duration::from_secs(5)).await,
        event(PRESENCE_JOIN, "alice")
    );

    // Node a dies (cut off from Redis for good): node b's sweep must take alice out.
    node_dies_and_alice_is_swept(&proxy, &mut w, &b, room).await;
    drop((holder_sub, again_sub));
}

// Issue 18, confirm or refute: a join cancelled before the request listing its room in the
// node's room set reached Redis left the room marked as listed on the node; the next join
// trusted that, and when the node died the sweep never visited the room. Confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_cancelled_before_its_room_was_listed_does_not_mark_it_listed() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.addr()).await;
    let a = rooms_via(via(&proxy)).await;
    let b = rooms_node(&server).await;
    let room = "cut-listing";
    let mut w = watcher(&b, room).await;
    let holder_sub = hold_room(&a, room).await;

    // alice's join is dropped while its request listing the room is held; that request is
    // then lost with its connection: it never reaches Redis.
    let stall = proxy.stall_on(&[b"{salvo-realtime:nodes}", room.as_bytes()]);
    let alice = member("alice", room, Position::Live);
    tokio::select! {
        joined = a.join(&alice) => panic!("the join completed: {:?}", joined.map(|_| ())),
        () = stall.hit() => {}
    }
    stall.discard();

    // alice joins for real from another connection.
    let again = member("alice", room, Position::Live);
    let deadline = Instant::now() + Duration::from_secs(5);
    let again_sub = loop {
        match a.join(&again).await {
            Ok(sub) => break sub,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("joining kept failing: {e}"),
        }
    };
    assert_eq!(
        next_event(&mut w, Duration::from_secs(5)).await,
        event(PRESENCE_JOIN, "alice")
    );

    // Node a dies: node b's sweep must take alice out.
    node_dies_and_alice_is_swept(&proxy, &mut w, &b, room).await;
    drop((holder_sub, again_sub));
}

// Issue 18, fault injection: a publish whose reply is lost (the script ran; the connection died
// before the answer) fails, and its message is delivered once with one id: a single server's
// client never sends it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_whose_reply_is_lost_is_delivered_once() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.addr()).await;
    // A slow heartbeat keeps the node's command connection quiet around the publish.
    let config = via(&proxy)
        .heartbeat(Duration::from_secs(30))
        .node_ttl(Duration::from_secs(90));
    let a = pubsub_on(config, HubConfig::new()).await;
    let b = pubsub_node(&server).await;
    a.publish("warm", "load the scripts")
        .await
        .expect("publish");
    let mut sub = b
        .subscribe("lost", Position::Live)
        .await
        .expect("subscribe");

    proxy.lose_reply_to(meta_key("meta", "topics", "lost").as_bytes());
    let lost = a.publish("lost", "once").await;
    assert!(matches!(lost, Err(HubError::Backend(_))), "{lost:?}");
    assert!(!proxy.reply_loss_pending(), "the publish went through");
    let after = publish_retrying(&a, "lost", "after").await;
    let got = messages(&mut sub, 2, Duration::from_secs(5)).await;
    let seen: Vec<(u64, &str)> = got
        .iter()
        .map(|m| (m.id().offset(), m.payload().as_text().unwrap_or("")))
        .collect();
    assert_eq!(seen, [(1, "once"), (2, "after")], "delivered once, one id");
    assert_eq!(got[1].id(), after);
    assert!(
        nothing_within(&mut sub, Duration::from_millis(300)).await,
        "no duplicate arrives"
    );
    assert_eq!(
        server.command(&["XLEN", &meta_key("hist", "topics", "lost")]),
        ":2"
    );
}

// Issue 18, confirm or refute: a node whose clock is more than the timeout behind Redis's gave
// every publish a deadline already past by Redis's clock: all of them failed. Confirmed; the
// deadline now comes from Redis's clock. A clock ahead let a publish stalled in Redis past the
// node's timeout be applied after the node reported it failed; that bound holds now too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_clock_an_hour_off_neither_fails_publishes_nor_lets_stalled_ones_through() {
    let server = RedisServer::start();
    for skew in [-3_600_000, 3_600_000] {
        let backend = RedisBackend::connect(config(&server).clock_skew_ms(skew))
            .await
            .expect("connect");
        let hub = PubSub::with_backend(HubConfig::new(), backend);
        let topic = format!("skew{skew}");
        let mut sub = hub
            .subscribe(&topic, Position::Live)
            .await
            .expect("subscribe");
        let id = hub
            .publish(&topic, "on time")
            .await
            .unwrap_or_else(|e| panic!("clock skewed by {skew} ms: publish failed: {e}"));
        assert_eq!(
            messages(&mut sub, 1, Duration::from_secs(5)).await[0].id(),
            id
        );

        // Redis stalls past the node's timeout: the publish fails, and is never applied.
        server.signal("-STOP");
        let stalled = hub.publish(&topic, "stalled").await;
        tokio::time::sleep(Duration::from_millis(200)).await; // past the deadline
        server.signal("-CONT");
        assert!(matches!(stalled, Err(HubError::Backend(_))), "{stalled:?}");
        let after = publish_retrying(&hub, &topic, "after").await;
        let got = messages(&mut sub, 1, Duration::from_secs(5)).await;
        assert_eq!(
            (got[0].payload().as_text(), got[0].id()),
            (Some("after"), after),
            "clock skewed by {skew} ms: the stalled publish was applied"
        );
    }
}

// Issue 18, defect 13 (Redis side): a `Rooms` hub over Redis ended every member's subscription
// once Redis came back empty after a restart. The room's stream must move to the new epoch in
// place: each member gets a reset, then the room's later messages; the heartbeat registers the
// members again; nobody is left behind. (Waits for the hub's change in src/hub/rooms.rs: until
// then the subscription ends where the reset is expected.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_without_data_resets_room_members_in_place() {
    let mut server = RedisServer::start();
    let (a, b) = (rooms_node(&server).await, rooms_node(&server).await);
    let room = "restarted";
    let alice = member("alice", room, Position::Live);
    let mut alice_sub = a.join(&alice).await.expect("join alice");
    let bob = member("bob", room, Position::Live);
    let mut bob_sub = b.join(&bob).await.expect("join bob");
    let before = a.broadcast(room, "before").await.expect("broadcast");
    for sub in [&mut alice_sub, &mut bob_sub] {
        let m = next_message(sub).await;
        assert_eq!(m.id(), before);
    }

    server.restart(false);
    let mut after = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while after.is_none() {
        match a.broadcast(room, "after").await {
            Ok(id) => after = Some(id),
            Err(e) => {
                assert!(Instant::now() < deadline, "broadcast kept failing: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let after = after.expect("broadcast");
    assert_ne!(after.epoch(), before.epoch(), "Redis lost the room's log");
    for (who, sub) in [("alice", &mut alice_sub), ("bob", &mut bob_sub)] {
        let reset = loop {
            match next(sub, Duration::from_secs(10)).await {
                Some(Delivery::Reset(r)) if r.topic.as_str() == room => break r,
                Some(Delivery::Reset(r)) if r.topic.as_str() == format!("@{who}") => {}
                Some(Delivery::Message(m)) if m.event().is_some() => {}
                Some(Delivery::Presence(_)) => {}
                Some(other) => panic!("{who}: expected a reset first, got {other:?}"),
                None => panic!(
                    "{who}: the subscription ended: the member was disconnected instead of \
                     moved to the room's new epoch (issue 18, defect 13)"
                ),
            }
        };
        assert_eq!(reset.reason, ResetReason::EpochChanged, "{who}");
        assert_eq!(reset.epoch, after.epoch(), "{who}");
        let m = next_message(sub).await;
        assert_eq!(
            (m.id(), m.payload().as_text()),
            (after, Some("after")),
            "{who}"
        );
    }
    // Presence comes back (each node registers its members again), without phantoms.
    let deadline = Instant::now() + Duration::from_secs(5);
    while listed(&b, room).await != users(&[("alice", 1), ("bob", 1)]) {
        assert!(
            Instant::now() < deadline,
            "presence after the restart: {:?}",
            listed(&b, room).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.leave(&alice, alice_sub).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while listed(&b, room).await != users(&[("bob", 1)]) {
        assert!(
            Instant::now() < deadline,
            "after alice left: {:?}",
            listed(&b, room).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(bob_sub);
}

/// The next message that is not a presence notice, skipping presence snapshots.
async fn next_message(sub: &mut Subscription) -> Message {
    loop {
        match next(sub, Duration::from_secs(5)).await {
            Some(Delivery::Message(m)) if m.event().is_none() => return m,
            Some(Delivery::Message(_) | Delivery::Presence(_)) => {}
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

// Issue 18, found in review of the reconcile: a connection that left and came back while its
// room was being reconciled (its leave reached Redis before the reconcile, its join after) was
// put back by the reconcile, then taken out again by the reconcile's own second pass (which
// removes the snapshot's memberships that left): connected, but absent from presence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_who_leaves_and_comes_back_during_a_reconcile_stays_present() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.addr()).await;
    let a = rooms_via(via(&proxy)).await;
    let b = rooms_node(&server).await;
    let room = "reconciled";
    let _w = watcher(&b, room).await;
    let holder_sub = hold_room(&a, room).await;
    // bob comes and goes: the join and leave scripts are loaded (a script Redis doesn't have
    // yet is sent again after a round trip, which would reorder what follows).
    let bob = member("bob", room, Position::Live);
    let bob_sub = a.join(&bob).await.expect("join bob");
    a.leave(&bob, bob_sub).await;
    let alice = member("alice", room, Position::Live);
    let alice_sub = a.join(&alice).await.expect("join alice");

    // Redis loses the nodes' liveness: node a comes back as a new incarnation and, a timeout
    // later, reconciles its rooms, listing each first. That listing is held, and alice's
    // leave queues behind it...
    let stall = proxy.stall_on(&[b"{salvo-realtime:nodes}", room.as_bytes()]);
    server.command(&["DEL", "{salvo-realtime:nodes}:alive"]);
    stall.hit().await;
    let pk = room_key(room, "pk");
    assert!(a.leave_room(alice.id(), room).await.expect("leave_room"));
    stall.held_contains(pk.as_bytes(), 1).await;
    // ...then both go through, and the reconcile's script (snapshot: alice present) is held
    // in turn while alice comes back on the same connection: her join queues behind it. So
    // Redis runs her leave, the reconcile, her join, in that order.
    let reconcile = proxy.stall_on(&[pk.as_bytes()]);
    stall.release();
    reconcile.hit().await;
    let rejoin = tokio::spawn({
        let (a, id) = (a.clone(), alice.id());
        async move { a.join_room(id, room, Position::Live).await }
    });
    reconcile.held_contains(pk.as_bytes(), 2).await;
    reconcile.release();
    rejoin.await.expect("rejoin task").expect("join_room");

    // She is connected and in the room: she must be present, and stay so.
    let deadline = Instant::now() + Duration::from_secs(5);
    while listed(&b, room).await != users(&[("alice", 1), ("w", 1)]) {
        assert!(
            Instant::now() < deadline,
            "presence after the reconcile: {:?}",
            listed(&b, room).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1_000)).await; // a few heartbeats and reconciles
    assert_eq!(
        listed(&b, room).await,
        users(&[("alice", 1), ("w", 1)]),
        "she stays present"
    );
    drop((holder_sub, alice_sub));
}

// Issue 18, fault injection: a link slower than the timeout (every byte delayed both ways):
// publishes fail within the timeout and, arriving past their deadline, are never applied;
// once the link is fast again publishing resumes with the next id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_over_a_link_slower_than_the_timeout_fail_and_are_never_applied() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.addr()).await;
    let a = pubsub_on(via(&proxy), HubConfig::new()).await;
    let b = pubsub_node(&server).await;
    let mut sub = b
        .subscribe("slow", Position::Live)
        .await
        .expect("subscribe");
    let first = a.publish("slow", "before").await.expect("publish");

    proxy.set(Mode::Delay(Duration::from_millis(700)));
    for i in 0..3 {
        let started = Instant::now();
        let slow = a.publish("slow", format!("slow{i}")).await;
        assert!(matches!(slow, Err(HubError::Backend(_))), "{slow:?}");
        assert!(started.elapsed() < Duration::from_millis(1_500));
    }
    tokio::time::sleep(Duration::from_millis(1_000)).await; // the delayed requests arrive
    proxy.set(Mode::Pass);
    let after = publish_retrying(&a, "slow", "after").await;
    let got = messages(&mut sub, 2, Duration::from_secs(5)).await;
    let seen: Vec<(MessageId, &str)> = got
        .iter()
        .map(|m| (m.id(), m.payload().as_text().unwrap_or("")))
        .collect();
    assert_eq!(seen, [(first, "before"), (after, "after")]);
    assert_eq!(
        after.offset(),
        first.offset() + 1,
        "no slow publish took an id"
    );
}

// --- Issue 18, second review of the Redis backend: faults between a node's steps ---

/// Node `backend`'s id in Redis at `incarnation` (`<node>.<incarnation>`), read from its
/// `Debug` form (`RedisBackend { node: <hex>, .. }`).
fn node_id(backend: &RedisBackend, incarnation: u64) -> String {
    let debug = format!("{backend:?}");
    let hex = debug
        .split("node: ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("no node id in {debug}"));
    format!("{hex}.{incarnation}")
}

/// A connection of `user` in every one of `rooms`.
fn member_of_all(user: &str, rooms: &[String]) -> Connection {
    rooms.iter().fold(
        Connection::new().authenticated(Identity::new(user)),
        |c, room| c.subscribe(Topic::new(room).expect("valid"), Position::Live),
    )
}

/// The next presence notice, with its room: (room, event, user).
async fn next_notice(sub: &mut Subscription) -> (String, String, String) {
    loop {
        match next(sub, Duration::from_secs(10)).await {
            Some(Delivery::Message(m)) if m.event().is_some() => {
                let v: serde_json::Value = m.json().expect("presence payload");
                return (
                    m.topic().as_str().to_owned(),
                    m.event().expect("event").as_str().to_owned(),
                    v["user"].as_str().expect("user").to_owned(),
                );
            }
            Some(_) => {}
            None => panic!("stream ended"),
        }
    }
}

/// Waits (10 s at most) until `key` is gone from Redis.
async fn gone(server: &RedisServer, key: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.command(&["EXISTS", key]) != ":0" {
        assert!(Instant::now() < deadline, "{what}: {key} is still there");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// Issue 18, second review: the heartbeat refreshed the node's liveness once, then reconciled
// its rooms one at a time, several round trips each, before the next beat. After a new
// incarnation every room is reconciled; when that took longer than the node TTL, the other
// nodes declared this one dead and swept it (its users announced leaving, then joining again
// as the reconcile went on, and again at the next incarnation): waves of leaves and joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_longer_than_the_node_ttl_never_gets_the_node_declared_dead() {
    const ROOMS: usize = 60;
    let server = RedisServer::start();
    let proxy = Proxy::start(server.addr()).await;
    let backend = RedisBackend::connect(via(&proxy)).await.expect("connect");
    let x = node_id(&backend, 0);
    let a = Rooms::with_backend(HubConfig::new().max_subscriptions(ROOMS), backend);
    let b = Rooms::with_backend(
        HubConfig::new().max_subscriptions(ROOMS),
        RedisBackend::connect(config(&server))
            .await
            .expect("connect"),
    );
    let rooms: Vec<String> = (0..ROOMS).map(|i| format!("long{i}")).collect();
    let mut w = b.join(&member_of_all("w", &rooms)).await.expect("join w");
    let alice = member_of_all("alice", &rooms);
    let alice_sub = a.join(&alice).await.expect("join alice");
    for _ in 0..ROOMS {
        let (_, kind, user) = next_notice(&mut w).await;
        assert_eq!((kind.as_str(), user.as_str()), (PRESENCE_JOIN, "alice"));
    }

    // Each chunk now takes 8 ms each way: reconciling the rooms one at a time (listing, then
    // the script: two round trips each) would take about 2 s, over three node TTLs (600 ms).
    proxy.set(Mode::Delay(Duration::from_millis(8)));
    // Redis loses node a's liveness: a comes back as a new incarnation and, a timeout later,
    // reconciles every room, then evicts its old incarnation (its room set goes).
    server.command(&["ZREM", "{salvo-realtime:nodes}:alive", &x]);
    let rooms_of_x = format!("{{salvo-realtime:nodes}}:rs:{x}");
    gone(
        &server,
        &rooms_of_x,
        "node a's old incarnation was never evicted",
    )
    .await;
    proxy.set(Mode::Pass);

    // zed joins every room on node b: in each room, whatever was announced before reached the
    // watcher before zed's join. Nobody else may have come or gone meanwhile.
    let _zed = b
        .join(&member_of_all("zed", &rooms))
        .await
        .expect("join zed");
    let mut zed_joined = 0;
    let mut others = Vec::new();
    while zed_joined < ROOMS {
        let notice = next_notice(&mut w).await;
        if notice.1 == PRESENCE_JOIN && notice.2 == "zed" {
            zed_joined += 1;
        } else {
            others.push(notice);
        }
    }
    assert!(
        others.is_empty(),
        "node a was declared dead while it reconciled: {} notices, first {:?}",
        others.len(),
        others.first()
    );
    assert_eq!(
        listed(&b, "long0").await,
        users(&[("alice", 1), ("w", 1), ("zed", 1)])
    );
    drop(alice_sub);
}

// Issue 18, second review: a Redis that went back in time (restored from an older snapshot, or a
// replica that missed the last writes took over) lost presence writes too, but while the
// node's liveness survived nothing repaired them: no new incarnation, so no reconcile. The
// member whose join was lost stayed invisible, and the node trusted a room listing Redis no
// longer had (a phantom once the node died).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_lost_to_a_rewound_redis_comes_back_while_the_node_lives() {
    let mut server = RedisServer::start();
    // A node TTL longer than the test: the rewind keeps both nodes' liveness.
    let long = || config(&server).node_ttl(Duration::from_secs(60));
    let a_backend = RedisBackend::connect(long()).await.expect("connect");
    let a_id = node_id(&a_backend, 0);
    let a = Rooms::with_backend(HubConfig::new(), a_backend);
    let b = Rooms::with_backend(
        HubConfig::new(),
        RedisBackend::connect(long()).await.expect("connect"),
    );
    let room = "rewound";
    let mut w = watcher(&b, room).await;
    b.broadcast(room, "m1").await.expect("broadcast");
    let old = server.snapshot("old.rdb");

    let alice = member("alice", room, Position::Live);
    let mut alice_sub = a.join(&alice).await.expect("join alice");
    assert_eq!(
        next_event(&mut w, Duration::from_secs(5)).await,
        event(PRESENCE_JOIN, "alice")
    );
    b.broadcast(room, "m2").await.expect("broadcast");
    assert_eq!(
        next_message(&mut alice_sub).await.payload().as_text(),
        Some("m2")
    );
    let rooms_of_a = format!("{{salvo-realtime:nodes}}:rs:{a_id}");
    // A node's room set names each room with its namespace.
    let field = format!("rooms:{room}");
    assert_eq!(server.command(&["HEXISTS", &rooms_of_a, &field]), ":1");

    // Redis goes back to before alice joined: her join and node a's listing of the room are
    // lost; the room's history went back, so the nodes start a new epoch when they catch up.
    server.restore(&old);
    assert_eq!(server.command(&["HEXISTS", &rooms_of_a, &field]), ":0");
    let deadline = Instant::now() + Duration::from_secs(10);
    while listed(&b, room).await != users(&[("alice", 1), ("w", 1)]) {
        assert!(
            Instant::now() < deadline,
            "alice's presence, lost to the rewind, never came back: {:?}",
            listed(&b, room).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        server.command(&["HEXISTS", &rooms_of_a, &field]),
        ":1",
        "node a lists the room again (a sweep of node a finds alice)"
    );
    drop(alice_sub);
}

// Issue 18, second review: a publish deadline equal to the node's timeout let a script that
// started just before it run, while its answer came back after the node had given up: reported
// failed, yet delivered. The deadline now leaves a margin for the answer's way back (a quarter
// of the timeout, 250 ms here): a publish is reported succeeded, or it is never applied, as
// long as answers take less than that margin to come back (200 ms here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_that_reaches_redis_just_before_its_timeout_is_not_reported_failed_and_applied() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.addr()).await;
    // A slow heartbeat: Redis's clock is read once, while connecting, over a fast link.
    let config = via(&proxy)
        .timeout(Duration::from_secs(1))
        .heartbeat(Duration::from_secs(30))
        .node_ttl(Duration::from_secs(90));
    let a = pubsub_on(config, HubConfig::new()).await;
    let b = pubsub_node(&server).await;
    a.publish("warm", "load the script").await.expect("publish");
    let mut sub = b
        .subscribe("edge", Position::Live)
        .await
        .expect("subscribe");

    // Requests reach Redis 600 ms, then 900 ms after they were sent; answers take 200 ms back.
    let mut outcomes = Vec::new();
    for (i, requests) in [600, 900].into_iter().enumerate() {
        proxy.set(Mode::DelayEach {
            requests: Duration::from_millis(requests),
            replies: Duration::from_millis(200),
        });
        let text = format!("late{i}");
        let outcome = a.publish("edge", text.as_str()).await;
        outcomes.push((text, outcome.ok()));
        proxy.set(Mode::Pass);
    }
    let after = publish_retrying(&a, "edge", "after").await;
    let mut delivered = Vec::new();
    loop {
        let m = messages(&mut sub, 1, Duration::from_secs(5))
            .await
            .remove(0);
        if m.id() == after {
            break;
        }
        delivered.push((m.payload().as_text().unwrap_or("").to_owned(), m.id()));
    }
    for (text, outcome) in &outcomes {
        let seen = delivered.iter().find(|(t, _)| t == text).map(|(_, id)| *id);
        match outcome {
            Some(id) => assert_eq!(seen, Some(*id), "{text} succeeded: delivered with its id"),
            None => assert_eq!(seen, None, "{text} was reported failed, yet delivered"),
        }
    }
    assert!(
        outcomes[0].1.is_some(),
        "a publish whose script runs well before the deadline succeeds"
    );
}

// Issue 18, second review: a join that spanned an incarnation switch listed its room under the
// old incarnation and counted its member under the new one. When the node then died (before
// reconciling its rooms under the new incarnation), the sweep of the new incarnation never
// visited the room: the member stayed present forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_spanning_an_incarnation_switch_is_swept_when_the_node_dies() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.addr()).await;
    let backend = RedisBackend::connect(via(&proxy)).await.expect("connect");
    let (x, y) = (node_id(&backend, 0), node_id(&backend, 1));
    let a = Rooms::with_backend(HubConfig::new(), backend);
    let b = rooms_node(&server).await;
    let room = "spanned";
    let mut w = watcher(&b, room).await;
    let holder_sub = hold_room(&a, room).await;

    // Node a's next heartbeat is held while Redis loses its liveness, and alice joins: the
    // request listing the room under the current incarnation queues behind the heartbeat.
    let beat = proxy.stall_on(&[b"{salvo-realtime:nodes}:alive", x.as_bytes()]);
    beat.hit().await;
    server.command(&["ZREM", "{salvo-realtime:nodes}:alive", &x]);
    let join = tokio::spawn({
        let a = a.clone();
        async move { a.join(&member("alice", room, Position::Live)).await }
    });
    beat.held_contains(room.as_bytes(), 1).await;
    // The heartbeat goes through: node a finds its liveness gone and registers a new
    // incarnation; only then does the listing go, and the join goes on.
    let listing = beat.advance_to(&[b"{salvo-realtime:nodes}:rs:", room.as_bytes()]);
    listing.hit().await;
    listing.held_contains(y.as_bytes(), 1).await;
    listing.release();
    let alice_sub = join.await.expect("join task").expect("join alice");
    assert_eq!(
        next_event(&mut w, Duration::from_secs(5)).await,
        event(PRESENCE_JOIN, "alice")
    );

    // Node a dies at once (before reconciling its rooms, a timeout after the switch).
    node_dies_and_alice_is_swept(&proxy, &mut w, &b, room).await;
    drop((holder_sub, alice_sub));
}

// --- Issue 18: the defaults `RedisConfig`'s setters and the README promise, seen in Redis ---
//
// Each test runs nodes on `RedisConfig::new(url)` and nothing else, so every key is under the
// default prefix: each test has a server of its own (the URL is a proxy's where the test
// needs faults).

/// `RedisConfig::new(url)` with every default.
fn defaults(url: String) -> RedisConfig {
    logged_config(url)
}

/// A `PubSub` node with the default Redis settings; its own history (the hub's, not Redis's)
/// is larger than Redis's default cap, so that what a new subscriber replays is Redis's.
async fn default_node(url: String) -> PubSub<RedisBackend> {
    pubsub_on(defaults(url), HubConfig::new().history(5_000)).await
}

/// Redis's clock, in Unix milliseconds.
fn redis_ms(redis: &mut redis::Connection) -> i64 {
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query(redis).expect("TIME");
    secs * 1_000 + micros / 1_000
}

fn pttl(redis: &mut redis::Connection, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query(redis).expect("PTTL")
}

/// The liveness entries of the nodes: (node, when its heartbeat expires, Unix ms).
fn alive(redis: &mut redis::Connection) -> Vec<(String, i64)> {
    redis::cmd("ZRANGE")
        .arg("{salvo-realtime:nodes}:alive")
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query(redis)
        .expect("ZRANGE alive")
}

const DAY_MS: i64 = 24 * 3_600 * 1_000;

// Defaults: prefix "salvo-realtime" (every key and channel), topic_ttl 24 h.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_keys_and_channels_are_under_salvo_realtime_and_topics_live_a_day() {
    let server = RedisServer::start();
    let node = default_node(server.url()).await;
    let _sub = node
        .subscribe("news", Position::Live)
        .await
        .expect("subscribe");
    node.publish("news", "hello").await.expect("publish");
    let mut redis = inspect(&server);

    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut redis).expect("KEYS");
    for key in [
        "{salvo-realtime:topics:news}:meta",
        "{salvo-realtime:topics:news}:hist",
        "{salvo-realtime:nodes}:alive",
    ] {
        assert!(keys.iter().any(|k| k == key), "no {key} in {keys:?}");
    }
    assert!(
        keys.iter().all(|k| k.starts_with("{salvo-realtime:")),
        "a key outside the default prefix: {keys:?}"
    );
    let channels: Vec<String> = redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .query(&mut redis)
        .expect("PUBSUB CHANNELS");
    assert!(
        channels
            .iter()
            .any(|c| c == "{salvo-realtime:topics:news}:ch")
            && channels.iter().all(|c| c.starts_with("{salvo-realtime:")),
        "{channels:?}"
    );

    // A published topic's epoch, offset and history are kept 24 h after its last publish.
    for kind in ["meta", "hist"] {
        let ttl = pttl(&mut redis, &meta_key(kind, "topics", "news"));
        assert!(
            (DAY_MS - 60_000..=DAY_MS).contains(&ttl),
            "the topic's {kind} lives {ttl} ms, not a day"
        );
    }
}

// Default: history 1,000 messages per topic in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_the_redis_history_keeps_the_last_1000_messages() {
    let server = RedisServer::start();
    let a = default_node(server.url()).await;
    for i in 1..=1_005 {
        a.publish("many", format!("m{i}")).await.expect("publish");
    }
    let mut redis = inspect(&server);
    let hist = meta_key("hist", "topics", "many");
    let len: usize = redis::cmd("XLEN")
        .arg(&hist)
        .query(&mut redis)
        .expect("XLEN");
    assert_eq!(len, 1_000, "the stream holds the last 1,000");
    let oldest: Vec<StreamEntry> = redis::cmd("XRANGE")
        .arg(&hist)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query(&mut redis)
        .expect("XRANGE");
    assert_eq!(oldest[0].0, "0-6");

    // A node that never saw the topic backfills from Redis: the last 1,000, from m6.
    let b = default_node(server.url()).await;
    let mut sub = b
        .subscribe("many", Position::Recent(5_000))
        .await
        .expect("subscribe");
    let got = messages(&mut sub, 1_000, Duration::from_secs(5)).await;
    assert_eq!(got[0].payload().as_text(), Some("m6"));
    assert_eq!(got[0].id().offset(), 6);
    assert_eq!(got[999].payload().as_text(), Some("m1005"));
    assert!(
        nothing_within(&mut sub, Duration::from_millis(200)).await,
        "nothing more than the 1,000"
    );
}

// Default: history_bytes 1 MiB per topic in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_the_redis_history_keeps_at_most_1_mib() {
    const MIB: usize = 1 << 20;
    let server = RedisServer::start();
    let node = default_node(server.url()).await;
    // 58 KiB payloads (under the hub's 64 KiB default): 17 fit in 1 MiB but only 16 in 1 MB,
    // so the assertions below tell the two apart.
    let payload = "z".repeat(58 * 1024);
    for i in 0..24 {
        node.publish("big", format!("{i:02}{payload}"))
            .await
            .expect("publish");
    }
    let mut redis = inspect(&server);
    let entries: Vec<StreamEntry> = redis::cmd("XRANGE")
        .arg(meta_key("hist", "topics", "big"))
        .arg("-")
        .arg("+")
        .query(&mut redis)
        .expect("XRANGE");
    let sizes: Vec<usize> = entries
        .iter()
        .map(|(_, fields)| fields.iter().map(|(_, w)| w.len()).sum())
        .collect();
    let kept: usize = sizes.iter().sum();
    let smallest = sizes.iter().copied().min().expect("something is kept");
    assert!(kept <= MIB, "{kept} bytes kept, over 1 MiB");
    assert!(
        kept + smallest > MIB,
        "{kept} bytes kept in {} entries: another would have fit in 1 MiB",
        entries.len()
    );
    let ids: Vec<&str> = entries.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids.last(), Some(&"0-24"), "the newest are kept");
}

/// How `op` ended (`"Backend"` for a [`HubError::Backend`]) and how long it took.
async fn timed<T>(op: impl Future<Output = Result<T, HubError>>) -> (String, Duration) {
    let started = Instant::now();
    let outcome = match op.await {
        Ok(_) => "Ok".to_owned(),
        Err(HubError::Backend(_)) => "Backend".to_owned(),
        Err(e) => format!("{e:?}"),
    };
    (outcome, started.elapsed())
}

// Default: timeout 2 s: publish, join, presence and connecting fail with `HubError::Backend`
// after it while Redis does not answer (the window is generous: a bound, not a benchmark).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_redis_operations_and_connecting_fail_after_2_seconds() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.addr()).await;
    let node = Rooms::with_backend(
        HubConfig::new(),
        RedisBackend::connect(defaults(proxy.url()))
            .await
            .expect("connect"),
    );
    let _alice = node
        .join(&member("alice", "r", Position::Live))
        .await
        .expect("join");
    node.broadcast("r", "before").await.expect("publish");

    // Redis stops answering, and a new connection gets no answer either.
    proxy.set(Mode::Blackhole);
    let bob = member("bob", "r", Position::Live);
    let (publish, join, count, page, connect) = tokio::join!(
        timed(node.broadcast("r", "lost")),
        timed(node.join(&bob)),
        timed(node.member_count("r")),
        timed(node.presence_page("r", None, 10)),
        timed(RedisBackend::connect(defaults(proxy.url()))),
    );
    let window = Duration::from_millis(1_500)..Duration::from_secs(6);
    for (op, (outcome, took)) in [
        ("publish", publish),
        ("join", join),
        ("member_count", count),
        ("presence_page", page),
        ("connect", connect),
    ] {
        assert_eq!(outcome, "Backend", "{op}");
        assert!(window.contains(&took), "{op} failed after {took:?}");
    }
}

// Defaults: heartbeat 5 s, node_ttl 15 s: a node that can no longer reach Redis counts as dead
// 15 s after its last heartbeat, and its members leave at the next sweep of another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_nodes_beat_every_5_seconds_and_a_lost_ones_members_leave_after_15() {
    let server = RedisServer::start();
    let mut redis = inspect(&server);
    let b = Rooms::with_backend(
        HubConfig::new(),
        RedisBackend::connect(defaults(server.url()))
            .await
            .expect("connect b"),
    );
    let b_node = match alive(&mut redis).as_slice() {
        [(node, expires)] => {
            // Liveness right after a heartbeat (connecting beats once): 15 s.
            let left = expires - redis_ms(&mut redis);
            assert!((10_000..=15_000).contains(&left), "alive for {left} ms");
            node.clone()
        }
        other => panic!("one node expected, got {other:?}"),
    };
    let mut w = watcher(&b, "r").await;
    // A topic followed but never published to lives the node TTL, renewed by the heartbeat.
    let _quiet = b
        .join(&member("q", "quiet", Position::Live))
        .await
        .expect("join quiet");

    // Node a, through a proxy: alice joins there, then a loses Redis for good.
    let proxy = Proxy::start(server.addr()).await;
    let a_started = Instant::now();
    let a = Rooms::with_backend(
        HubConfig::new(),
        RedisBackend::connect(defaults(proxy.url()))
            .await
            .expect("connect a"),
    );
    let _alice = a
        .join(&member("alice", "r", Position::Live))
        .await
        .expect("join alice");
    assert_eq!(
        next_event(&mut w, Duration::from_secs(5)).await,
        event(PRESENCE_JOIN, "alice")
    );
    proxy.set(Mode::Refuse);
    proxy.cut();
    assert!(
        a_started.elapsed() < Duration::from_secs(4),
        "a was cut off before its second heartbeat"
    );

    // Meanwhile b's liveness moves on by one heartbeat at a time, each 5 s apart.
    let beats = async {
        let mut redis = inspect(&server);
        let mut seen = Vec::new();
        let mut last = None;
        while seen.len() < 3 {
            let now = alive(&mut redis);
            let expires = now.iter().find(|(n, _)| *n == b_node).map(|(_, e)| *e);
            if expires != last {
                let left = expires.map(|e| e - redis_ms(&mut redis));
                if last.is_some() {
                    assert!(
                        left.is_some_and(|l| (10_000..=15_000).contains(&l)),
                        "b alive for {left:?} ms right after a heartbeat"
                    );
                }
                seen.extend(expires);
                last = expires;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        seen
    };
    let (leave, beats) = tokio::join!(
        async {
            let leave = next_event(&mut w, Duration::from_secs(30)).await;
            (leave, a_started.elapsed())
        },
        tokio::time::timeout(Duration::from_secs(20), beats)
    );
    let (leave, after) = leave;
    assert_eq!(leave, event(PRESENCE_LEAVE, "alice"));
    // a's last heartbeat was while it connected (its second never got through): alice can't
    // leave before 15 s after it, and leaves at b's first sweep after that (every 5 s).
    assert!(
        (Duration::from_secs(15)..Duration::from_secs(24)).contains(&after),
        "alice left {after:?} after a connected"
    );
    let beats = beats.expect("b kept beating");
    for pair in beats.windows(2) {
        let every = pair[1] - pair[0];
        assert!(
            (4_000..=7_000).contains(&every),
            "b's heartbeats {every} ms apart"
        );
    }
    let quiet = pttl(&mut redis, &meta_key("meta", "rooms", "quiet"));
    assert!(
        (5_000..=15_000).contains(&quiet),
        "a followed idle topic lives {quiet} ms (renewed, at most the node TTL)"
    );
    drop(a);
}

/// Tags travel through Redis: a subscriber on node b with a filter gets only the tagged
/// messages it asked for, live and replayed, whichever node published them.
#[tokio::test]
async fn a_filter_on_one_node_applies_to_what_another_node_published() {
    let server = RedisServer::start();
    let (a, b) = (pubsub_node(&server).await, pubsub_node(&server).await);
    let tick =
        |symbol: &str| salvo_realtime::Publication::new(symbol.to_owned()).tag("ticker", symbol);
    a.publish("prices", tick("GOOG")).await.expect("publish");
    a.publish("prices", tick("AAPL")).await.expect("publish");
    let filter = salvo_realtime::hub::Filter::new()
        .tag("ticker", ["AAPL"])
        .expect("valid");
    let c = conn("prices", Position::Recent(10)).with_filter(filter);
    let mut on_b = b.join(&c).await.expect("join b");
    for symbol in ["MSFT", "AAPL"] {
        a.publish("prices", tick(symbol)).await.expect("publish");
    }
    let got = messages(&mut on_b, 2, Duration::from_secs(5)).await;
    let seen: Vec<_> = got
        .iter()
        .map(|m| {
            (
                m.payload().as_text().unwrap_or_default().to_owned(),
                m.tag("ticker").map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("AAPL".to_owned(), Some("AAPL".to_owned())),
            ("AAPL".to_owned(), Some("AAPL".to_owned()))
        ]
    );
    assert!(nothing_within(&mut on_b, Duration::from_millis(200)).await);
}
