//! A Redis [`Backend`]: several server processes behave as one hub (feature `redis`).
//!
//! Give each process's [`PubSub`](crate::PubSub) or [`Rooms`](crate::Rooms) a
//! [`RedisBackend`] connected to the same Redis (one server or primary, or a Redis Cluster),
//! and:
//!
//! * a message published on any node reaches the subscribers of every node, in the same order,
//!   with the same ids: one Lua script per publish reads or creates the topic's epoch, assigns
//!   the next offset, appends the message to a capped Redis Stream (the history) and publishes
//!   it, in one atomic step;
//! * a client may resume on any node: each node mirrors the topics its connections follow,
//!   backfilled from the Redis history when it attaches, so replay and resume are served
//!   locally;
//! * rooms and presence span nodes: first join and last leave are per user across nodes, and
//!   the members of a node that stops (crash, network loss) leave after
//!   [`node_ttl`](RedisConfig::node_ttl). Join and leave notices are live only, as in memory:
//!   published on the room's channel in the same script as the presence change, with no id,
//!   never kept in the history (so they neither evict messages nor replay on resume);
//! * a room's members are counted in O(1) and listed page by page in user id order, O(page)
//!   each, whatever the room's size;
//! * each topic's Redis history is capped in messages ([`history`](RedisConfig::history)) and
//!   in bytes ([`history_bytes`](RedisConfig::history_bytes)).
//!
//! A node subscribes only to the topics its connections follow. Following a topic nobody has
//! published to leaves nothing behind: its epoch lives [`node_ttl`](RedisConfig::node_ttl)
//! while followers renew it, and [`topic_ttl`](RedisConfig::topic_ttl) from its first publish.
//!
//! # Single server or cluster
//!
//! [`RedisConfig::new`] takes one server's URL (`redis://host:port`), or a cluster's seed
//! nodes as `redis+cluster://host:port,host:port` ([`RedisConfig::cluster`] builds that
//! form). Keys and scripts are the same in both modes:
//!
//! * Every key of a topic carries the hash tag `{prefix:namespace:topic}`: its meta, history
//!   and channel (and a room's presence counts) live in one slot, so each script touches one
//!   slot and passes every key it touches as `KEYS`. Topics spread over the masters by their
//!   name's hash; the nodes' heartbeats share one slot (`{prefix:nodes}`).
//! * On a cluster, messages go over sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis 7.0 or
//!   later): each message is published only on its topic's shard, so throughput grows with
//!   the masters.
//!
//! # Connections
//!
//! A node opens two connections per Redis server, whatever the number of topics: a
//! multiplexed one for commands and scripts, and one for pub/sub. On a single server that is
//! two; on a cluster, the Redis client keeps one connection of each kind to every cluster node
//! (a cluster of 3 masters with a replica each: 6 + 6), and a master's pub/sub connection
//! carries the subscriptions of every topic in its slots (RESP3 pushes). So a node's
//! connections grow with the cluster's nodes, never with its slots or topics; a topic's
//! messages cross only its own master's connection. Subscriptions are batched, and catching
//! up runs beside the delivery of messages (in pages of 64), so a node with many topics
//! neither waits on one subscription per topic nor stalls delivery while it fetches a long
//! history.
//!
//! # Faults
//!
//! * If the pub/sub connection drops (Redis restarted, `CLIENT KILL TYPE pubsub`, network, a
//!   cluster master failing over or a slot moving), the node reconnects by itself (retrying
//!   every second at most), resubscribes, and catches every mirrored topic up from the
//!   history; what left the history meanwhile reaches subscribers as
//!   [`Delivery::Lagged`](crate::Delivery::Lagged). If Redis lost the topic (restarted
//!   without persistence), its epoch changes: every subscriber, a room's member or a
//!   `PubSub` subscriber, gets a [`Delivery::Reset`](crate::Delivery::Reset) in its open
//!   stream, then the new log (its other topics go on); the connection stays up, and the
//!   node's heartbeat counts its members again in the room's presence.
//! * If Redis went back in time (restored from an older snapshot, or a cluster replica that
//!   had not received the last writes took over), the offsets the nodes already delivered
//!   would be given to new messages. Each message carries a random stamp; a node catching up
//!   sees that Redis has fewer messages than it delivered, or another message at its last
//!   offset, and the topic starts a new epoch: clients get a reset rather than silently
//!   missing messages. Messages published between the rewind and its detection (at most a
//!   reconnect) are dropped with the old epoch. Presence that went back with it is repaired:
//!   each node reconciles its members of every room whose topic so started a new epoch at
//!   its next heartbeat (announcing the joins Redis forgot, and listing the room again for
//!   the sweep). A rewind is seen in a room's messages: one that lost only presence writes
//!   of a room with no message published since is repaired only if it lost the node's
//!   liveness too (the node then registers every room again, see below).
//! * While Redis (or a cluster master) is unreachable, publish, join and presence fail with
//!   [`HubError::Backend`] within [`timeout`](RedisConfig::timeout); connections already
//!   joined stay up and get what they missed once Redis is back.
//! * A publish reported as failed is not delivered later: its script carries a deadline on
//!   Redis's own clock (read at each heartbeat, so this node's clock may be off by any
//!   amount; on a cluster, the clock of the master holding the nodes' liveness, so the
//!   masters' clocks should agree to well within the timeout) and refuses to run past it.
//!   The deadline falls a margin before the node's own [`timeout`](RedisConfig::timeout)
//!   (a quarter of it, at most 500 ms), the time the answer has to come back: a script that
//!   runs has its answer back in time unless the way back from Redis takes longer than the
//!   margin. So a publish may be reported as failed and yet delivered only if its answer was
//!   that slow, or lost (the connection dropped after Redis ran it). Either way the backend
//!   never runs it twice, even when a Redis Cluster client resends it: the script remembers
//!   each publish's nonce until its deadline and answers a resend with the first run's id.
//! * Presence is counted per (connection, room), once, as [`Backend`] promises: adding or
//!   removing twice changes nothing. A join or leave whose outcome is unknown (Redis
//!   unreachable, a timeout, a join cut short) is not lost: the node keeps its true
//!   membership and, at a later heartbeat, makes Redis agree with it for that room,
//!   announcing the joins and leaves that so happen. So after an outage of any length, a
//!   user who left while Redis could not record it is announced leaving, and nobody stays
//!   counted who left.
//! * A node's presence is refreshed by a heartbeat every
//!   [`heartbeat`](RedisConfig::heartbeat), on a clock of its own: no amount of work the node
//!   has to do with Redis (registering thousands of rooms, sweeping a dead node) delays it.
//!   Every node sweeps the nodes whose heartbeat expired, room by room: removing a dead
//!   node's counts from a room and announcing its users' last leaves is one script, so a
//!   leave is never lost (a failed sweep is redone by the next) nor announced twice. A node
//!   lists every room it has members in before they are counted, so the sweep finds them
//!   all. If a node finds its own heartbeat gone (Redis restarted, or it was paused so long
//!   it was declared dead), it comes back as a new *incarnation* (a late sweep of the old one
//!   can't touch it) and registers its members again, a [`timeout`](RedisConfig::timeout)
//!   later, a few rooms at a time over as many heartbeats as that takes; meanwhile it keeps
//!   its old incarnation alive, so no member is announced leaving and joining again.
//! * On a cluster, a failover can leave a subscription on the old master, now a replica that
//!   gets none of the new master's messages, without any error. A node subscribes only after
//!   a keyed command on the channel's slot (a stale slot map gets `MOVED` and is refreshed),
//!   and after a dropped connection or subscription it subscribes everything again over the
//!   next two heartbeats, catching up from the history each time.
//!
//! Errors of the Redis client never appear in the API: they are boxed in
//! [`HubError::Backend`].
//!
//! ```no_run
//! use salvo_realtime::redis::{RedisBackend, RedisConfig};
//! use salvo_realtime::{HubConfig, Rooms};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), salvo_realtime::error::HubError> {
//! // One server: "redis://127.0.0.1:6379"; a cluster: "redis+cluster://127.0.0.1:7000,...".
//! let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
//! let backend = RedisBackend::connect(RedisConfig::new(url)).await?;
//! let rooms = Rooms::with_backend(HubConfig::new(), backend);
//! rooms.broadcast("lobby", "hello from this node").await?;
//! # Ok(())
//! # }
//! ```

mod conn;
mod keys;
mod lua;
mod presence;
mod task;
mod wire;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{Semaphore, mpsc, oneshot};

use self::conn::{Conn, Target};
use self::keys::Keys;
use self::lua::Scripts;
use self::wire::Stamp;
use crate::error::HubError;
use crate::hub::backend::{Backend, MembersPage, Mirror, WeakMirror};
use crate::hub::{Identity, Payload, Publication};
use crate::ids::{ConnectionId, Epoch, EventName, MessageId, Offset, Topic};

/// Settings of a [`RedisBackend`].
///
/// ```
/// use std::time::Duration;
/// use salvo_realtime::redis::RedisConfig;
///
/// let config = RedisConfig::new("redis://127.0.0.1:6379")
///     .prefix("chat")
///     .timeout(Duration::from_secs(1))
///     .history(10_000);
/// # drop(config);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedisConfig {
    url: String,
    prefix: String,
    timeout: Duration,
    heartbeat: Duration,
    node_ttl: Duration,
    history: usize,
    history_bytes: usize,
    topic_ttl: Duration,
    /// Milliseconds added to this node's wall clock (tests of a skewed clock).
    clock_skew_ms: i64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self::new("redis://127.0.0.1:6379")
    }
}

impl RedisConfig {
    /// Settings for the Redis server at `url` (`redis://[user:password@]host[:port][/db]`),
    /// or for a Redis Cluster through its seed nodes
    /// (`redis+cluster://[user:password@]host:port[,host:port...]`, the credentials apply to
    /// every node; see [`cluster`](Self::cluster)), with the defaults listed on each setter.
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "salvo-realtime".into(),
            timeout: Duration::from_secs(2),
            heartbeat: Duration::from_secs(5),
            node_ttl: Duration::from_secs(15),
            history: 1_000,
            history_bytes: 1 << 20,
            topic_ttl: Duration::from_secs(24 * 3600),
            clock_skew_ms: 0,
        }
    }

    /// Settings for a Redis Cluster (7.0 or later, for sharded pub/sub), reached through any
    /// of `nodes` (`host:port`; the client discovers the others): the same as
    /// `RedisConfig::new("redis+cluster://host:port,host:port")`.
    ///
    /// ```
    /// use salvo_realtime::redis::RedisConfig;
    ///
    /// let config = RedisConfig::cluster(["10.0.0.1:7000", "10.0.0.2:7000"]);
    /// assert_eq!(config.url(), "redis+cluster://10.0.0.1:7000,10.0.0.2:7000");
    /// ```
    #[must_use]
    pub fn cluster<I>(nodes: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let nodes: Vec<String> = nodes
            .into_iter()
            .map(|n| n.as_ref().trim_start_matches("redis://").to_owned())
            .collect();
        Self::new(format!("redis+cluster://{}", nodes.join(",")))
    }

    /// The URL given to [`new`](Self::new) (or built by [`cluster`](Self::cluster)).
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Prefix of every key and channel, so that several apps can share a server. All nodes of
    /// one app must use the same. It must not contain braces (they would change the keys'
    /// Redis Cluster hash tags). Default: `"salvo-realtime"`.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long a Redis operation may take before it fails with
    /// [`HubError::Backend`]; also the connect timeout. Default: 2 s.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How often the node refreshes its presence, sweeps dead nodes and pings its pub/sub
    /// connection. Default: 5 s.
    #[must_use]
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every.max(Duration::from_millis(10));
        self
    }

    /// How long after its last heartbeat a node counts as dead: its members then leave their
    /// rooms. Keep it a few heartbeats long. Default: 15 s.
    #[must_use]
    pub fn node_ttl(mut self, ttl: Duration) -> Self {
        self.node_ttl = ttl.max(Duration::from_millis(20));
        self
    }

    /// Messages each topic's Redis history retains at most (the oldest leave first).
    /// Default: 1,000 (at least 1).
    #[must_use]
    pub fn history(mut self, messages: usize) -> Self {
        self.history = messages.max(1);
        self
    }

    /// Bytes each topic's Redis history retains at most: its entries summed, each the
    /// message's payload plus its id, topic, sender, event and 34 bytes of header. The oldest
    /// messages leave first; a message larger than the cap on its own is delivered but not
    /// kept, and empties the history (which always holds the newest messages without a
    /// hole), so a client resuming from before it gets a
    /// [`Delivery::Reset`](crate::Delivery::Reset). Default: 1 MiB (at least 1 KiB).
    ///
    /// ```
    /// use salvo_realtime::redis::RedisConfig;
    ///
    /// // 64 KiB messages: at most 16 of them (a little fewer, with their headers) per topic.
    /// let config = RedisConfig::new("redis://127.0.0.1:6379").history_bytes(1 << 20);
    /// # drop(config);
    /// ```
    #[must_use]
    pub fn history_bytes(mut self, bytes: usize) -> Self {
        self.history_bytes = bytes.max(1 << 10);
        self
    }

    /// Runs this node as if its wall clock were `ms` milliseconds ahead (negative: behind) of
    /// the machine's: for tests of a node whose clock is wrong, without changing the
    /// machine's. Not for production use.
    #[doc(hidden)]
    #[must_use]
    pub fn clock_skew_ms(mut self, ms: i64) -> Self {
        self.clock_skew_ms = ms;
        self
    }

    /// How long a topic's epoch, offset and history are kept in Redis after its last publish;
    /// after it, the topic starts a new epoch. Default: 24 hours.
    #[must_use]
    pub fn topic_ttl(mut self, ttl: Duration) -> Self {
        self.topic_ttl = ttl.max(Duration::from_secs(1));
        self
    }
}

/// Why a Redis operation failed; boxed in [`HubError::Backend`].
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis: unexpected reply to {0}")]
    Reply(&'static str),
    #[error("redis: the subscription connection is down")]
    NotSubscribed,
    #[error("redis: {0}")]
    Config(&'static str),
    /// A failure reported to several callers at once.
    #[error("{0}")]
    Shared(String),
}

impl From<Failure> for HubError {
    fn from(failure: Failure) -> Self {
        HubError::Backend(Box::new(failure))
    }
}

/// A [`Backend`] on a Redis server or a Redis Cluster: see the [module docs](self).
///
/// Cloning is cheap and shares the connections; give each hub its own backend (connect once
/// per hub), as the hubs' namespaces are registered with it. The background tasks (pub/sub,
/// heartbeat) stop when the hub and every clone are dropped.
#[derive(Clone)]
pub struct RedisBackend {
    shared: Arc<Shared>,
}

/// A Redis Stream entry as `XRANGE` returns it: id and field-value pairs.
type HistoryEntry = (String, Vec<(String, Vec<u8>)>);

/// What the backend, its tasks and its clones share.
///
/// Locks (`parking_lot`, never held across an await, never two at once): `mirrors`,
/// `subscribed`, `members`, `redis_clock`, `tasks`.
struct Shared {
    config: RedisConfig,
    /// This node's id: random, in hex in Redis (with its incarnation: see `presence.rs`).
    node: u64,
    conn: Conn,
    scripts: Scripts,
    keys: Keys,
    commands: mpsc::UnboundedSender<task::Command>,
    /// Bounds the fetch jobs running at once.
    fetches: Semaphore,
    /// The hub's mirrors by namespace, registered on first attach.
    mirrors: Mutex<HashMap<&'static str, WeakMirror>>,
    /// Channels whose subscription the server confirmed (kept by the pub/sub task).
    subscribed: Mutex<HashMap<String, (&'static str, Topic)>>,
    /// This node's memberships, and what Redis may lack of them (`presence.rs`).
    members: Mutex<presence::Members>,
    /// Redis's clock as the last heartbeat read it: (when the answer came, Redis's Unix ms
    /// then, a lower bound). Publish deadlines are set on it, not on this node's clock.
    redis_clock: Mutex<Option<(Instant, u64)>>,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        for task in self.tasks.get_mut().drain(..) {
            task.abort();
        }
    }
}

impl RedisBackend {
    /// Connects to Redis (a single server, or a cluster for a `redis+cluster://` URL) and
    /// starts the node's pub/sub and heartbeat tasks (on the current tokio runtime).
    ///
    /// # Errors
    ///
    /// [`HubError::Backend`] if the URL is invalid or Redis can't be reached within the
    /// [`timeout`](RedisConfig::timeout).
    pub async fn connect(config: RedisConfig) -> Result<Self, HubError> {
        let target = Target::parse(&config.url);
        let conn = Conn::connect(&target, config.timeout).await?;
        let source = match &target {
            Target::Single(url) => task::Source::Single {
                client: redis::Client::open(url.as_str()).map_err(Failure::from)?,
                stream: None,
                sink: tokio::sync::watch::channel(None).0,
                generation: 0,
                backoff: Duration::from_millis(50),
            },
            Target::Cluster(nodes) => {
                let (push, pushes) = mpsc::unbounded_channel();
                let client = conn::cluster_client(nodes, config.timeout, Some(push))?;
                let conn = within(config.timeout, client.get_async_connection()).await?;
                task::Source::Cluster { conn, pushes }
            }
        };
        let (commands, receiver) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            node: Epoch::random().as_u64(),
            conn,
            scripts: Scripts::new(matches!(target, Target::Cluster(_))),
            keys: Keys::new(&config.prefix),
            commands,
            fetches: Semaphore::new(task::FETCHES),
            mirrors: Mutex::new(HashMap::new()),
            subscribed: Mutex::new(HashMap::new()),
            members: Mutex::new(presence::Members::default()),
            redis_clock: Mutex::new(None),
            tasks: Mutex::new(Vec::new()),
            config,
        });
        shared.heartbeat().await?;
        let weak = Arc::downgrade(&shared);
        let pubsub = tokio::spawn(task::pubsub(weak.clone(), source, receiver));
        let heartbeat = tokio::spawn(task::heartbeat(weak));
        shared
            .tasks
            .lock()
            .extend([pubsub.abort_handle(), heartbeat.abort_handle()]);
        Ok(Self { shared })
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &RedisConfig {
        &self.shared.config
    }

    /// Whether this backend is on a Redis Cluster (sharded pub/sub) rather than one server.
    #[must_use]
    pub fn is_cluster(&self) -> bool {
        matches!(self.shared.conn, Conn::Cluster(_))
    }
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("node", &format_args!("{:x}", self.shared.node))
            .field("prefix", &self.shared.config.prefix)
            .field("cluster", &self.is_cluster())
            .field("subscribed", &self.shared.subscribed.lock().len())
            .finish_non_exhaustive()
    }
}

/// Runs a Redis future with the configured timeout.
async fn within<T>(
    timeout: Duration,
    fut: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(Failure::Timeout(timeout)),
    }
}

/// This machine's clock, in Unix milliseconds.
fn unix_ms() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(now.as_millis()).unwrap_or(u64::MAX)
}

fn candidate_epoch() -> String {
    format!("{:x}", Epoch::random().as_u64())
}

/// How long before this node's own timeout a publish's deadline falls: the time its answer
/// has to come back. A quarter of the timeout, at most [`REPLY_MARGIN_MAX`].
fn reply_margin(timeout: Duration) -> Duration {
    (timeout / 4).min(REPLY_MARGIN_MAX)
}

/// The longest [`reply_margin`]: a link slower than this is slower than any deadline should
/// wait for (a longer margin would refuse publishes a slow Redis could still run in time).
const REPLY_MARGIN_MAX: Duration = Duration::from_millis(500);

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn presence_publication(event: &'static str, user: &str, data: &str) -> Publication {
    let data: serde_json::Value = serde_json::from_str(data).unwrap_or(serde_json::Value::Null);
    let payload = serde_json::json!({ "user": user, "data": data });
    Publication::new(Payload::text(payload.to_string()))
        .event_name_checked(EventName::from_static(event))
        .sender(user)
}

fn parse_epoch(raw: &[u8]) -> Option<Epoch> {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|e| u64::from_str_radix(e, 16).ok())
        .and_then(Epoch::from_u64)
}

impl Shared {
    /// This node's wall clock in Unix milliseconds (the message timestamps): the machine's,
    /// shifted by [`RedisConfig::clock_skew_ms`] in tests.
    fn wall_ms(&self) -> u64 {
        unix_ms().saturating_add_signed(self.config.clock_skew_ms)
    }

    /// Records Redis's clock as a heartbeat just read it.
    fn set_redis_clock(&self, redis_ms: u64) {
        *self.redis_clock.lock() = Some((Instant::now(), redis_ms));
    }

    /// Redis's clock now, in Unix milliseconds, at most what it really reads: the last value
    /// a heartbeat read plus the time since its answer came (it was read before that). Before
    /// the first heartbeat (never, once connected), this node's clock.
    fn redis_now_ms(&self) -> u64 {
        match *self.redis_clock.lock() {
            Some((at, redis_ms)) => redis_ms.saturating_add(millis(at.elapsed())),
            None => self.wall_ms(),
        }
    }

    /// Adds the arguments of a publish (candidate, body, maxlen, maxbytes, ttl, channel).
    fn publish_args(
        &self,
        inv: &mut redis::ScriptInvocation<'_>,
        channel: &str,
        topic: &Topic,
        p: &Publication,
    ) {
        inv.arg(candidate_epoch())
            .arg(wire::encode_body(topic, p, self.node, self.wall_ms()))
            .arg(self.config.history)
            .arg(self.config.history_bytes)
            .arg(millis(self.config.topic_ttl))
            .arg(channel);
    }

    async fn publish(
        &self,
        ns: &str,
        topic: &Topic,
        p: &Publication,
    ) -> Result<MessageId, Failure> {
        // The deadline goes with the script: if Redis would run it too late for its answer to
        // be back before this call times out (a stalled server, a slow link), it refuses, so
        // "failed" means "not delivered" unless the answer takes longer than the margin to
        // come back. It is set on Redis's clock (as the heartbeat reads it), so this node's
        // clock may be off.
        let keys = self.keys.topic(ns, topic);
        let mut inv = self.scripts.publish.prepare_invoke();
        inv.key(&keys.meta)
            .key(&keys.hist)
            .key(&keys.nonces)
            .key(&keys.deadlines);
        self.publish_args(&mut inv, &keys.channel, topic, p);
        let timeout = self.config.timeout;
        inv.arg(
            self.redis_now_ms()
                .saturating_add(millis(timeout.saturating_sub(reply_margin(timeout)))),
        );
        let mut conn = self.conn.clone();
        let id: String = within(self.config.timeout, inv.invoke_async(&mut conn)).await?;
        id.parse().map_err(|_| Failure::Reply("publish"))
    }

    /// Reads a topic's remote state: its epoch and last offset, and the history after the
    /// local log's last message (all of it if the epochs differ). `local` is the local log's
    /// position and the stamp of its last message, if known: they detect a rewound Redis.
    async fn fetch(
        &self,
        ns: &str,
        topic: &Topic,
        local: Option<(MessageId, Option<Stamp>)>,
    ) -> Result<task::Fetched, HubError> {
        let keys = self.keys.topic(ns, topic);
        let (local_epoch, after, stamp) =
            local.map_or((String::new(), 0, Vec::new()), |(id, s)| {
                (
                    format!("{:x}", id.epoch().as_u64()),
                    id.offset(),
                    s.map(|s| s.to_vec()).unwrap_or_default(),
                )
            });
        let mut inv = self.scripts.state.prepare_invoke();
        inv.key(&keys.meta)
            .key(&keys.hist)
            .arg(candidate_epoch())
            .arg(local_epoch)
            .arg(after)
            .arg(stamp)
            .arg(millis(self.config.node_ttl))
            .arg(lua::PAGE);
        let mut conn = self.conn.clone();
        let reply: Vec<Vec<u8>> = within(self.config.timeout, inv.invoke_async(&mut conn)).await?;
        let (epoch, last, rewound) = match reply.as_slice() {
            [epoch, last, rewound, ..] => (
                parse_epoch(epoch),
                std::str::from_utf8(last)
                    .ok()
                    .and_then(|l| l.parse::<Offset>().ok()),
                rewound.as_slice() == b"1",
            ),
            _ => (None, None, false),
        };
        let (Some(epoch), Some(last)) = (epoch, last) else {
            return Err(Failure::Reply("state").into());
        };
        if rewound {
            tracing::warn!(
                topic = %topic,
                "redis: the topic's history went back (Redis restored an older snapshot or \
                 failed over to a replica that lagged); it starts a new epoch"
            );
        }
        let first: Vec<Vec<u8>> = reply.into_iter().skip(3).collect();
        let history = self
            .history_after(&keys.hist, epoch, first, &mut conn)
            .await?;
        Ok(task::Fetched {
            epoch,
            last,
            history,
        })
    }

    /// The history of `epoch` from its `first` page on, page by page, until a short page (the
    /// end) or a message of another epoch (the topic started anew meanwhile: the next message
    /// shows the gap).
    async fn history_after(
        &self,
        hist: &str,
        epoch: Epoch,
        first: Vec<Vec<u8>>,
        conn: &mut Conn,
    ) -> Result<Vec<(crate::Message, Stamp)>, HubError> {
        let mut page = first;
        let mut history = Vec::new();
        loop {
            let full = page.len() >= lua::PAGE;
            let before = history.len();
            for w in &page {
                match wire::decode(w, self.node) {
                    Some((m, s)) if m.id().epoch() == epoch => history.push((m, s)),
                    Some(_) => return Ok(history),
                    None => {}
                }
            }
            let Some((newest, _)) = history.last() else {
                return Ok(history);
            };
            if !full || history.len() == before {
                return Ok(history);
            }
            let from = format!("(0-{}", newest.id().offset());
            let entries: Vec<HistoryEntry> = within(
                self.config.timeout,
                redis::cmd("XRANGE")
                    .arg(hist)
                    .arg(from)
                    .arg("+")
                    .arg("COUNT")
                    .arg(lua::PAGE)
                    .query_async(conn),
            )
            .await?;
            page = entries
                .into_iter()
                .filter_map(|(_, mut fields)| fields.pop().map(|(_, w)| w))
                .collect();
        }
    }

    fn mirror(&self, namespace: &str) -> Option<Mirror> {
        self.mirrors.lock().get(namespace)?.upgrade()
    }

    fn register(&self, mirror: &Mirror) {
        self.mirrors
            .lock()
            .entry(mirror.namespace())
            .or_insert_with(|| mirror.downgrade());
    }
}

impl Backend for RedisBackend {
    async fn publish(
        &self,
        mirror: &Mirror,
        topic: &Topic,
        publication: Publication,
    ) -> Result<MessageId, HubError> {
        Ok(self
            .shared
            .publish(mirror.namespace(), topic, &publication)
            .await?)
    }

    async fn attach(&self, mirror: &Mirror, topic: &Topic) -> Result<(), HubError> {
        let shared = &self.shared;
        let channel = shared.keys.topic(mirror.namespace(), topic).channel;
        if mirror.is_attached(topic) && shared.subscribed.lock().contains_key(&channel) {
            return Ok(());
        }
        shared.register(mirror);
        let (reply, answer) = oneshot::channel();
        let command = task::Command::Attach {
            channel,
            namespace: mirror.namespace(),
            topic: topic.clone(),
            reply,
        };
        shared
            .commands
            .send(command)
            .map_err(|_| Failure::NotSubscribed)?;
        // The task answers within its own timeouts; this one only guards against a stuck task.
        match tokio::time::timeout(shared.config.timeout * 3, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Failure::NotSubscribed.into()),
            Err(_) => Err(Failure::Timeout(shared.config.timeout * 3).into()),
        }
    }

    fn detach(&self, mirror: &Mirror, topic: &Topic) {
        let channel = self.shared.keys.topic(mirror.namespace(), topic).channel;
        let _ = self.shared.commands.send(task::Command::Detach { channel });
    }

    async fn presence_add(
        &self,
        mirror: &Mirror,
        room: &Topic,
        conn: ConnectionId,
        identity: &Identity,
        announce: Option<Publication>,
    ) -> Result<bool, HubError> {
        self.shared
            .join(mirror, room, conn, identity, announce)
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
        self.shared
            .leave(mirror, room, conn, identity, announce)
            .await
    }

    async fn members(
        &self,
        mirror: &Mirror,
        room: &Topic,
        after: Option<&str>,
        limit: usize,
    ) -> Result<MembersPage, HubError> {
        let place = presence::Place::new(mirror.namespace(), room);
        let (members, more) = self.shared.members_page(&place, after, limit).await?;
        Ok(MembersPage::new(members, more))
    }

    async fn member_count(&self, mirror: &Mirror, room: &Topic) -> Result<usize, HubError> {
        let place = presence::Place::new(mirror.namespace(), room);
        self.shared.member_count(&place).await
    }
}
