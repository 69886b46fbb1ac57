//! Redis for the backend's tests: a server ([`RedisServer`]) or a cluster ([`Cluster`]) of
//! child processes on loopback (persistence off), killed on drop, optionally behind fault
//! proxies; and the delivery helpers both suites share.
//!
//! `redis-server` and `redis-cli` must be installed (`.ci/redis` installs them): without them
//! these tests fail, they never pass silently.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use salvo_realtime::hub::Subscription;
use salvo_realtime::redis::{RedisBackend, RedisConfig};
use salvo_realtime::{
    Connection, Delivery, Hub, HubConfig, Identity, Message, MessageId, Position, PubSub, Rooms,
    Topic,
};

use super::proxy::Proxy;

/// A `redis-server` child process on 127.0.0.1, killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

impl RedisServer {
    pub fn start() -> Self {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
            listener.local_addr().expect("local addr").port()
        };
        let dir = std::env::temp_dir().join(format!("salvo-realtime-redis-{port}"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut server = Self {
            child: None,
            port,
            dir,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "could not start `redis-server` ({e}): these tests need it on the PATH \
                     (Debian/Ubuntu: apt-get install -y redis-server; see .ci/redis)"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.try_command(&["PING"]).is_some_and(|r| r == "+PONG") {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server on port {} did not answer PING within 10 s",
            self.port
        );
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's address (for a [`Proxy`] in front of it).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Sends one command and returns the first line of the reply.
    pub fn try_command(&self, args: &[&str]) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        stream.write_all(req.as_bytes()).ok()?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).ok()?;
        Some(line.trim_end().to_owned())
    }

    pub fn command(&self, args: &[&str]) -> String {
        self.try_command(args)
            .unwrap_or_else(|| panic!("redis command {args:?} failed"))
    }

    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) the server process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {pid}");
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server and starts it again on the same port; with `keep_data` it saves first
    /// (so it reloads its data), otherwise everything is lost.
    pub fn restart(&mut self, keep_data: bool) {
        if keep_data {
            assert_eq!(self.command(&["SAVE"]), "+OK");
        } else {
            let _ = std::fs::remove_file(self.dir.join("dump.rdb"));
        }
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl RedisServer {
    /// Saves the data set and keeps a copy of the snapshot, to restore later with
    /// [`RedisServer::restore`].
    pub fn snapshot(&self, name: &str) -> PathBuf {
        assert_eq!(self.command(&["SAVE"]), "+OK");
        let copy = self.dir.join(name);
        std::fs::copy(self.dir.join("dump.rdb"), &copy).expect("copy the snapshot");
        copy
    }

    /// Stops the server and starts it again from an older snapshot: everything written since
    /// that snapshot is lost, and offsets go back.
    pub fn restore(&mut self, snapshot: &std::path::Path) {
        self.kill();
        std::fs::copy(snapshot, self.dir.join("dump.rdb")).expect("restore the snapshot");
        self.spawn();
    }

    /// How many keys match `pattern`.
    pub fn count_keys(&self, pattern: &str) -> usize {
        let reply = self.command(&["KEYS", pattern]);
        reply
            .strip_prefix('*')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("KEYS answered {reply}"))
    }
}

/// `RedisConfig::new(url)` with every default, after installing (once per process) the test
/// tracing subscriber: `RUST_LOG=salvo_realtime=debug` shows what the backend does.
pub fn logged_config(url: String) -> RedisConfig {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    RedisConfig::new(url)
}

/// A `PubSub` node with `hub` settings on a backend connected with `config`.
pub async fn pubsub_on(config: RedisConfig, hub: HubConfig) -> PubSub<RedisBackend> {
    let backend = RedisBackend::connect(config).await.expect("connect");
    PubSub::with_backend(hub, backend)
}

/// A `Rooms` node with `hub` settings on a backend connected with `config`.
pub async fn rooms_on(config: RedisConfig, hub: HubConfig) -> Rooms<RedisBackend> {
    let backend = RedisBackend::connect(config).await.expect("connect");
    Rooms::with_backend(hub, backend)
}

/// `user`'s connection to `room`, from `from`.
pub fn member(user: &str, room: &str, from: Position) -> Connection {
    Connection::new()
        .authenticated(Identity::new(user))
        .subscribe(Topic::new(room).expect("valid"), from)
}

/// Publishes `text` until it succeeds (10 s at most: a hang guard, then a panic).
pub async fn publish_retrying(hub: &PubSub<RedisBackend>, topic: &str, text: &str) -> MessageId {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match hub.publish(topic, text).await {
            Ok(id) => return id,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("publish kept failing: {e}"),
        }
    }
}

/// A `Rooms` node in a runtime and thread of its own, with live members joined, that can die
/// without saying goodbye (a crashed process: no leave, no cleanup).
pub struct CrashingNode {
    crash: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl CrashingNode {
    /// Starts the node on `config` with `hub` settings and joins each `(user, room)` in order
    /// (live); returns once all are joined.
    pub async fn start(
        config: RedisConfig,
        hub: HubConfig,
        members: Vec<(String, String)>,
    ) -> Self {
        let (crash, crashed) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            let held = rt.block_on(async move {
                let node = rooms_on(config, hub).await;
                let mut subs = Vec::new();
                for (user, room) in &members {
                    let c = member(user, room, Position::Live);
                    subs.push(node.join(&c).await.expect("join on the crashing node"));
                }
                (node, subs)
            });
            let _ = ready_tx.send(());
            let _ = crashed.recv();
            rt.shutdown_background();
            // A crash: nothing is cleaned up.
            std::mem::forget(held);
        });
        ready.await.expect("the crashing node is up");
        Self { crash, thread }
    }

    /// Crashes the node now and waits until its runtime is gone.
    pub fn crash(self) {
        self.crash.send(()).expect("signal the crashing node");
        self.thread.join().expect("the crashing node's thread");
    }
}

/// The text of a chat message a resume replays. A presence notice may still arrive live (the
/// node's copies of earlier notices travel by pub/sub, apart from any watcher elsewhere), but
/// never out of the history: it must be ephemeral.
pub fn replayed_chat(m: &Message) -> Option<String> {
    if let Some(event) = m.event() {
        let v: serde_json::Value = m.json().expect("presence payload");
        assert!(m.is_ephemeral(), "a replayed notice: {event:?} {v}");
        None
    } else {
        Some(m.payload().as_text().expect("text").to_owned())
    }
}

/// The next delivery, or a panic after `within`.
pub async fn next<S: futures_util::Stream<Item = Delivery> + Unpin>(
    sub: &mut S,
    within: Duration,
) -> Option<Delivery> {
    tokio::time::timeout(within, sub.next())
        .await
        .unwrap_or_else(|_| panic!("nothing delivered within {within:?}"))
}

/// The next `n` messages (other deliveries are a failure), each within `within`.
pub async fn messages(sub: &mut Subscription, n: usize, within: Duration) -> Vec<Message> {
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

/// The next message with an event name, skipping others.
pub async fn next_event(sub: &mut Subscription, within: Duration) -> (String, String) {
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

/// Whether nothing at all arrives on `sub` for `quiet` (a short wait, after what was due has
/// arrived: for "no duplicate", "nothing more").
pub async fn nothing_within(sub: &mut Subscription, quiet: Duration) -> bool {
    tokio::time::timeout(quiet, sub.next()).await.is_err()
}

/// The next `n` presence notices (event, user), skipping everything else, each within 5 s.
pub async fn events(sub: &mut Subscription, n: usize) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.push(next_event(sub, Duration::from_secs(5)).await);
    }
    out
}

/// A presence notice as [`next_event`] reads it: (event, user).
pub fn event(kind: &str, user: &str) -> (String, String) {
    (kind.to_owned(), user.to_owned())
}

/// The presence snapshot a join starts with (within 5 s; anything else first is a failure),
/// as (user, connections).
pub async fn snapshot(sub: &mut Subscription) -> Vec<(String, usize)> {
    let Some(Delivery::Presence(p)) = next(sub, Duration::from_secs(5)).await else {
        panic!("expected a presence snapshot");
    };
    p.members
        .iter()
        .map(|m| (m.user.to_string(), m.connections))
        .collect()
}

/// `room`'s members as `hub` lists them: (user, connections).
pub async fn listed(hub: &Rooms<RedisBackend>, room: &str) -> Vec<(String, usize)> {
    hub.presence(room)
        .await
        .iter()
        .map(|m| (m.user.to_string(), m.connections))
        .collect()
}

/// (user, connections) pairs as [`listed`] and [`snapshot`] give them.
pub fn users(list: &[(&str, usize)]) -> Vec<(String, usize)> {
    list.iter().map(|(u, n)| ((*u).to_owned(), *n)).collect()
}

/// One `redis-server` of the cluster, maybe behind a proxy it announces as its address.
struct Server {
    child: Option<Child>,
    port: u16,
    proxy: Option<Proxy>,
}

/// Six servers on 127.0.0.1 forming a cluster of three masters with one replica each; killed
/// on drop. Ports are the servers' own; behind proxies, the cluster announces the proxies'
/// (clients, and replicas following their master, go through them; the cluster bus doesn't).
pub struct Cluster {
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

pub fn redis_cli(port: u16, args: &[&str]) -> String {
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
    /// A cluster reached directly.
    pub fn start() -> Self {
        Self::launch(Vec::new())
    }

    /// A cluster whose every server sits behind a [`Proxy`] (passing), which it announces as
    /// its address. Needs a multi-threaded runtime: the proxies serve the replicas while the
    /// cluster forms.
    pub async fn start_proxied() -> Self {
        let mut ports = Vec::new();
        for _ in 0..6 {
            ports.push(free_port(&ports));
        }
        let mut proxies = Vec::new();
        for &port in &ports {
            proxies.push((
                port,
                Proxy::start(SocketAddr::from(([127, 0, 0, 1], port))).await,
            ));
        }
        tokio::task::block_in_place(|| Self::launch(proxies))
    }

    fn launch(proxies: Vec<(u16, Proxy)>) -> Self {
        let mut ports: Vec<u16> = proxies.iter().map(|(port, _)| *port).collect();
        while ports.len() < 6 {
            ports.push(free_port(&ports));
        }
        let mut proxies: BTreeMap<u16, Proxy> = proxies.into_iter().collect();
        let dir = std::env::temp_dir().join(format!("salvo-realtime-cluster-{}", ports[0]));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let servers = ports
            .iter()
            .map(|&port| {
                let proxy = proxies.remove(&port);
                let mut command = Command::new("redis-server");
                command
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--cluster-enabled", "yes", "--cluster-config-file"])
                    .arg(format!("nodes-{port}.conf"))
                    .args(["--cluster-node-timeout", "1000"])
                    // A replica may take over however long ago it last heard of its master.
                    .args(["--cluster-replica-validity-factor", "0"])
                    .args(["--save", "", "--appendonly", "no", "--dir"])
                    .arg(&dir);
                if let Some(proxy) = &proxy {
                    command
                        .args(["--cluster-announce-ip", "127.0.0.1"])
                        .args(["--cluster-announce-port", &proxy.port().to_string()])
                        .args(["--cluster-announce-bus-port", &(port + 10_000).to_string()]);
                }
                let child = command
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
                    proxy,
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
    pub fn wait_ok(&self, within: Duration) {
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

    /// The seed URL: the first three servers (their proxies if proxied).
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .servers
            .iter()
            .take(3)
            .map(|s| format!("127.0.0.1:{}", s.proxy.as_ref().map_or(s.port, Proxy::port)))
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

    /// The server's own port for an address the cluster announces (its proxy's, if proxied).
    fn own_port(&self, announced: u16) -> u16 {
        self.servers
            .iter()
            .find(|s| s.proxy.as_ref().map_or(s.port, Proxy::port) == announced)
            .map_or(announced, |s| s.port)
    }

    /// The live masters, as port -> slot ranges.
    pub fn masters(&self) -> BTreeMap<u16, Vec<(u16, u16)>> {
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
                masters.insert(self.own_port(port), ranges);
            }
        }
        masters
    }

    /// The master serving `topic` of namespace `ns` (default prefix).
    pub fn master_of(&self, ns: &str, topic: &str) -> u16 {
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

    /// The replica of the master on `port` (its own port).
    pub fn replica_of(&self, port: u16) -> u16 {
        let id = redis_cli(port, &["CLUSTER", "MYID"]).trim().to_owned();
        let replicas = redis_cli(port, &["CLUSTER", "REPLICAS", &id]);
        let announced: u16 = replicas
            .split_whitespace()
            .nth(1)
            .and_then(|a| a.split('@').next())
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no replica of {port}: {replicas}"));
        self.own_port(announced)
    }

    /// Topics named `prefix0`, `prefix1`, ... until every master serves at least `per` of them.
    pub fn topics_on_every_master(&self, prefix: &str, per: usize) -> Vec<String> {
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

    /// The proxy in front of the server on `port` (its own port).
    pub fn proxy(&self, port: u16) -> &Proxy {
        self.servers
            .iter()
            .find(|s| s.port == port)
            .and_then(|s| s.proxy.as_ref())
            .expect("a proxied server on that port")
    }

    pub fn kill(&mut self, port: u16) {
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
