//! The Redis backend on a Redis Cluster: sharded pub/sub, topics spread over every master,
//! presence across nodes, a master killed mid-stream.
//!
//! Each test starts its own cluster on loopback: six `redis-server --cluster-enabled yes` on
//! free ports (persistence off), joined by `redis-cli --cluster create ... --cluster-replicas
//! 1` into three masters with a replica each, and kills them at the end. `redis-server` and
//! `redis-cli` (7.0 or later, for sharded pub/sub) must be installed (`.ci/redis` installs
//! them): without them these tests fail, they never pass silently.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use salvo_realtime::error::HubError;
use salvo_realtime::redis::{RedisBackend, RedisConfig};
use salvo_realtime::{
    Connection, Delivery, Hub, HubConfig, Identity, Message, MessageId, PRESENCE_JOIN,
    PRESENCE_LEAVE, Position, PubSub, ResetReason, Rooms, Subscription, Topic,
};

/// One `redis-server` of the cluster.
struct Server {
    child: Option<Child>,
    port: u16,
}

/// Six servers on 127.0.0.1 forming a cluster of three masters with one replica each; killed
/// on drop.
struct Cluster {
    servers: Vec<Server>,
    dir: PathBuf,
}

/// A port that is free, and whose cluster bus port (+10,000) is free too.
fn free_port(taken: &[u16]) -> u16 {
    for _ in 0..1_000 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = listener.local_addr().expect("local addr").port() % 20_000 + 20_000;
        drop(listener);
        if !taken.contains(&port)
            && TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
        {
            return port;
        }
    }
    panic!("no free port pair found");
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "could not run `redis-cli` ({e}): these tests need it on the PATH \
                 (Debian/Ubuntu: apt-get install -y redis-server; see .ci/redis)"
            )
        });
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Cluster {
    fn start() -> Self {
        let mut ports = Vec::new();
        for _ in 0..6 {
            ports.push(free_port(&ports));
        }
        let dir = std::env::temp_dir().join(format!("salvo-realtime-cluster-{}", ports[0]));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let servers = ports
            .iter()
            .map(|&port| {
                let child = Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--cluster-enabled", "yes", "--cluster-config-file"])
                    .arg(format!("nodes-{port}.conf"))
                    .args(["--cluster-node-timeout", "1000"])
                    // A replica may take over however long ago it last heard of its master.
                    .args(["--cluster-replica-validity-factor", "0"])
                    .args(["--save", "", "--appendonly", "no", "--dir"])
                    .arg(&dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap_or_else(|e| {
                        panic!(
                            "could not start `redis-server` ({e}): these tests need it on the \
                             PATH (Debian/Ubuntu: apt-get install -y redis-server; see .ci/redis)"
                        )
                    });
                Server {
                    child: Some(child),
                    port,
                }
            })
            .collect();
        let cluster = Self { servers, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        for s in &cluster.servers {
            while redis_cli(s.port, &["PING"]).trim() != "PONG" {
                assert!(
                    Instant::now() < deadline,
                    "redis-server on port {} did not answer PING within 10 s",
                    s.port
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster create runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        cluster.wait_ok(Duration::from_secs(20));
        cluster
    }

    /// Waits until every live server reports `cluster_state:ok`, every replica is in sync
    /// with its master, and three masters cover every slot.
    fn wait_ok(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let ok = self.servers.iter().filter(|s| s.child.is_some()).all(|s| {
                let replication = redis_cli(s.port, &["INFO", "replication"]);
                redis_cli(s.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok")
                    && (replication.contains("role:master")
                        || replication.contains("master_link_status:up"))
            });
            if ok && self.masters().len() == 3 {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster did not become ok");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn url(&self) -> String {
        let hosts: Vec<String> = self
            .servers
            .iter()
            .take(3)
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    fn any_live_port(&self) -> u16 {
        self.servers
            .iter()
            .find(|s| s.child.is_some())
            .expect("a live server")
            .port
    }

    /// The live masters, as port -> slot ranges.
    fn masters(&self) -> BTreeMap<u16, Vec<(u16, u16)>> {
        let nodes = redis_cli(self.any_live_port(), &["CLUSTER", "NODES"]);
        let mut masters = BTreeMap::new();
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let Some(port) = fields[1]
                .split('@')
                .next()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse().ok())
            else {
                continue;
            };
            let ranges: Vec<(u16, u16)> = fields[8..]
                .iter()
                .filter_map(|r| {
                    let (a, b) = r.split_once('-').unwrap_or((r, r));
                    Some((a.parse().ok()?, b.parse().ok()?))
                })
                .collect();
            if !ranges.is_empty() {
                masters.insert(port, ranges);
            }
        }
        masters
    }

    /// The master serving `topic` of namespace `ns` (default prefix).
    fn master_of(&self, ns: &str, topic: &str) -> u16 {
        let key = format!("{{salvo-realtime:{ns}:{topic}}}:meta");
        let slot: u16 = redis_cli(self.any_live_port(), &["CLUSTER", "KEYSLOT", &key])
            .trim()
            .parse()
            .expect("a slot");
        self.masters()
            .into_iter()
            .find(|(_, ranges)| ranges.iter().any(|&(a, b)| a <= slot && slot <= b))
            .map(|(port, _)| port)
            .expect("a master serves every slot")
    }

    /// Topics named `prefix0`, `prefix1`, ... until every master serves at least `per` of them.
    fn topics_on_every_master(&self, prefix: &str, per: usize) -> Vec<String> {
        let masters = self.masters();
        let mut by_master: BTreeMap<u16, Vec<String>> = BTreeMap::new();
        for i in 0.. {
            let topic = format!("{prefix}{i}");
            let master = self.master_of("topics", &topic);
            let list = by_master.entry(master).or_default();
            if list.len() < per {
                list.push(topic);
            }
            if by_master.len() == masters.len() && by_master.values().all(|l| l.len() == per) {
                break;
            }
        }
        by_master.into_values().flatten().collect()
    }

    fn kill(&mut self, port: u16) {
        let server = self
            .servers
            .iter_mut()
            .find(|s| s.port == port)
            .expect("a server on that port");
        if let Some(mut child) = server.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for s in &mut self.servers {
            if let Some(mut child) = s.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config(cluster: &Cluster) -> RedisConfig {
    // `RUST_LOG=salvo_realtime=debug` shows what the backend does.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    RedisConfig::new(cluster.url())
        .timeout(Duration::from_secs(1))
        .heartbeat(Duration::from_millis(200))
        .node_ttl(Duration::from_secs(5))
}

async fn pubsub_node(cluster: &Cluster) -> PubSub<RedisBackend> {
    let backend = RedisBackend::connect(config(cluster))
        .await
        .expect("connect");
    assert!(backend.is_cluster());
    PubSub::with_backend(HubConfig::new().history(1_000), backend)
}

async fn next<S: futures_util::Stream<Item = Delivery> + Unpin>(
    sub: &mut S,
    within: Duration,
) -> Option<Delivery> {
    tokio::time::timeout(within, sub.next())
        .await
        .unwrap_or_else(|_| panic!("nothing delivered within {within:?}"))
}

async fn messages(sub: &mut Subscription, n: usize, within: Duration) -> Vec<Message> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match next(sub, within).await {
            Some(Delivery::Message(m)) => out.push(m),
            other => panic!(
                "expected a message, got {other:?} after {} messages",
                out.len()
            ),
        }
    }
    out
}

async fn next_event(sub: &mut Subscription, within: Duration) -> (String, String) {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match next(sub, left).await {
            Some(Delivery::Message(m)) if m.event().is_some() => {
                let v: serde_json::Value = m.json().expect("presence payload");
                let user = v["user"].as_str().expect("user").to_owned();
                return (m.event().expect("event").as_str().to_owned(), user);
            }
            Some(_) => {}
            None => panic!("stream ended"),
        }
    }
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
    let a = Rooms::with_backend(
        HubConfig::new(),
        RedisBackend::connect(config(&cluster))
            .await
            .expect("connect"),
    );
    let member = |user: &str, room: &str| {
        Connection::new()
            .authenticated(Identity::new(user))
            .subscribe(Topic::new(room).expect("valid"), Position::Live)
    };
    // Rooms on different masters than the nodes' own liveness keys, and each other.
    let rooms = ["x", "y", "z"];
    let mut watchers = Vec::new();
    for room in rooms {
        let mut w = a.join(&member("w", room)).await.expect("join");
        assert!(matches!(
            next(&mut w, Duration::from_secs(5)).await,
            Some(Delivery::Presence(_))
        ));
        watchers.push(w);
    }

    let url = config(&cluster);
    let (to_b, b_rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let node_b = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let held = rt.block_on(async move {
            let b = Rooms::with_backend(
                HubConfig::new(),
                RedisBackend::connect(url).await.expect("connect"),
            );
            let mut subs = Vec::new();
            for room in rooms {
                for user in ["alice", "bob"] {
                    let c = Connection::new()
                        .authenticated(Identity::new(user))
                        .subscribe(Topic::new(room).expect("valid"), Position::Live);
                    subs.push(b.join(&c).await.expect("join b"));
                }
            }
            (b, subs)
        });
        let _ = ready_tx.send(());
        let _ = b_rx.recv();
        rt.shutdown_background();
        std::mem::forget(held);
    });
    ready.await.expect("node b up");
    for w in &mut watchers {
        let mut joined = vec![
            next_event(w, Duration::from_secs(5)).await,
            next_event(w, Duration::from_secs(5)).await,
        ];
        joined.sort();
        assert_eq!(
            joined,
            [
                (PRESENCE_JOIN.to_owned(), "alice".to_owned()),
                (PRESENCE_JOIN.to_owned(), "bob".to_owned())
            ]
        );
    }
    // alice also on node a in room x: two connections across nodes.
    let alice_a = member("alice", "x");
    let mut alice_sub = a.join(&alice_a).await.expect("join");
    let Some(Delivery::Presence(p)) = next(&mut alice_sub, Duration::from_secs(5)).await else {
        panic!("expected a presence snapshot");
    };
    let listed: Vec<_> = p
        .members
        .iter()
        .map(|m| (&*m.user, m.connections))
        .collect();
    assert_eq!(listed, [("alice", 2), ("bob", 1), ("w", 1)]);

    // Node b dies: its users leave every room within the node TTL (5 s), except alice in x.
    let died = Instant::now();
    to_b.send(()).expect("signal b");
    node_b.join().expect("node b thread");
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
    let present: Vec<_> = a
        .presence("x")
        .await
        .iter()
        .map(|m| (m.user.to_string(), m.connections))
        .collect();
    assert_eq!(present, [("alice".to_owned(), 1), ("w".to_owned(), 1)]);
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
        let backend = RedisBackend::connect(config(&cluster).history_bytes(64 * 1024))
            .await
            .expect("connect");
        Rooms::with_backend(HubConfig::new().channel_capacity(1_024), backend)
    };
    let (a, b) = (node().await, node().await);
    let member = |user: &str, room: &str, from: Position| {
        Connection::new()
            .authenticated(Identity::new(user))
            .subscribe(Topic::new(room).expect("valid"), from)
    };
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
                Some(Delivery::Message(m)) => {
                    if let Some(event) = m.event() {
                        let v: serde_json::Value = m.json().expect("presence payload");
                        assert_eq!(v["user"], "late", "a replayed notice: {event:?} {v}");
                    } else {
                        chat.push(m.payload().as_text().expect("text").to_owned());
                    }
                }
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
