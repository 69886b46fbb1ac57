//! A Redis [`Backend`]: several server processes behave as one hub (feature `redis`).
//!
//! Give each process's [`PubSub`](crate::PubSub) or [`Rooms`](crate::Rooms) a
//! [`RedisBackend`] connected to the same Redis server (one server or a primary; not Redis
//! Cluster), and:
//!
//! * a message published on any node reaches the subscribers of every node, in the same order,
//!   with the same ids: one Lua script per publish reads or creates the topic's epoch, assigns
//!   the next offset, appends the message to a capped Redis Stream (the history) and `PUBLISH`es
//!   it, in one atomic step;
//! * a client may resume on any node: each node mirrors the topics its connections follow,
//!   backfilled from the Redis history when it attaches, so replay and resume are served
//!   locally;
//! * rooms and presence span nodes: first join and last leave are per user across nodes, and
//!   the members of a node that stops (crash, network loss) leave after
//!   [`node_ttl`](RedisConfig::node_ttl).
//!
//! A node subscribes (Redis `SUBSCRIBE`) only to the topics its connections follow, on one
//! dedicated pub/sub connection; commands and scripts go over a second, multiplexed one.
//!
//! # Faults
//!
//! * If the pub/sub connection drops (Redis restarted, `CLIENT KILL TYPE pubsub`, network), the
//!   node reconnects by itself (retrying every second at most), resubscribes, and catches every
//!   mirrored topic up from the history; what left the history meanwhile reaches subscribers
//!   as [`Delivery::Lagged`](crate::Delivery::Lagged). If Redis lost the topic (restarted
//!   without persistence), its epoch changes: the node ends its local streams of the topic and
//!   disconnects room members, so clients reconnect with their last id and get a
//!   [`Delivery::Reset`](crate::Delivery::Reset).
//! * While Redis is unreachable, publish, join and presence fail with
//!   [`HubError::Backend`] within [`timeout`](RedisConfig::timeout); connections already
//!   joined stay up and get what they missed once Redis is back.
//! * A node's presence is refreshed by a heartbeat every
//!   [`heartbeat`](RedisConfig::heartbeat); every node sweeps the nodes whose heartbeat
//!   expired and announces their users' last leaves. If a node finds its own heartbeat gone
//!   (Redis restarted, or it was paused so long it was declared dead), it registers its
//!   members again.
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
//! let backend = RedisBackend::connect(RedisConfig::new("redis://127.0.0.1:6379")).await?;
//! let rooms = Rooms::with_backend(HubConfig::new(), backend);
//! rooms.broadcast("lobby", "hello from this node").await?;
//! # Ok(())
//! # }
//! ```

mod lua;
mod task;
mod wire;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redis::Script;
use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot};

use crate::error::HubError;
use crate::hub::{
    Backend, Epoch, EventName, Identity, Member, Message, MessageId, Mirror, Offset, PRESENCE_JOIN,
    PRESENCE_LEAVE, Payload, Publication, Topic, WeakMirror,
};

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
    topic_ttl: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self::new("redis://127.0.0.1:6379")
    }
}

impl RedisConfig {
    /// Settings for the Redis server at `url` (`redis://[user:password@]host[:port][/db]`),
    /// with the defaults listed on each setter.
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "salvo-realtime".into(),
            timeout: Duration::from_secs(2),
            heartbeat: Duration::from_secs(5),
            node_ttl: Duration::from_secs(15),
            history: 1_000,
            topic_ttl: Duration::from_secs(24 * 3600),
        }
    }

    /// Prefix of every key and channel, so that several apps can share a server. All nodes of
    /// one app must use the same. Default: `"salvo-realtime"`.
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

    /// Messages each topic's Redis history retains, approximately (Redis trims streams in
    /// blocks, so a little more may be kept). Default: 1,000 (at least 1).
    #[must_use]
    pub fn history(mut self, messages: usize) -> Self {
        self.history = messages.max(1);
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
}

impl From<Failure> for HubError {
    fn from(failure: Failure) -> Self {
        HubError::Backend(Box::new(failure))
    }
}

/// A [`Backend`] on a Redis server: see the [module docs](self).
///
/// Cloning is cheap and shares the connections; give each hub its own backend (connect once
/// per hub), as the hubs' namespaces are registered with it. The background tasks (pub/sub,
/// heartbeat) stop when the hub and every clone are dropped.
#[derive(Clone)]
pub struct RedisBackend {
    shared: Arc<Shared>,
}

struct Shared {
    config: RedisConfig,
    node: u64,
    conn: ConnectionManager,
    scripts: Scripts,
    commands: mpsc::UnboundedSender<task::Command>,
    /// The hub's mirrors by namespace, registered on first attach.
    mirrors: Mutex<HashMap<&'static str, WeakMirror>>,
    /// Channels the pub/sub connection is subscribed to (kept by the pub/sub task).
    subscribed: Mutex<HashMap<String, (&'static str, Topic)>>,
    /// This node's members: room -> user -> (connections, data as JSON).
    present: Mutex<HashMap<Topic, RoomCounts>>,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

/// A room's users on this node: user -> (connections, data as JSON).
type RoomCounts = HashMap<Arc<str>, (usize, String)>;

struct Scripts {
    publish: Script,
    state: Script,
    join: Script,
    leave: Script,
    members: Script,
    heartbeat: Script,
    register: Script,
    sweep: Script,
}

impl Drop for Shared {
    fn drop(&mut self) {
        for task in self.tasks.get_mut().drain(..) {
            task.abort();
        }
    }
}

impl RedisBackend {
    /// Connects to Redis and starts the node's pub/sub and heartbeat tasks (on the current
    /// tokio runtime).
    ///
    /// # Errors
    ///
    /// [`HubError::Backend`] if the URL is invalid or Redis can't be reached within the
    /// [`timeout`](RedisConfig::timeout).
    pub async fn connect(config: RedisConfig) -> Result<Self, HubError> {
        let client = redis::Client::open(config.url.as_str()).map_err(Failure::from)?;
        let manager = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = within(
            config.timeout,
            client.get_connection_manager_with_config(manager),
        )
        .await?;
        let (commands, receiver) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            node: Epoch::random().as_u64(),
            conn,
            scripts: Scripts {
                publish: Script::new(&lua::publish()),
                state: Script::new(lua::STATE),
                join: Script::new(&lua::join()),
                leave: Script::new(&lua::leave()),
                members: Script::new(lua::MEMBERS),
                heartbeat: Script::new(lua::HEARTBEAT),
                register: Script::new(lua::REGISTER),
                sweep: Script::new(&lua::sweep()),
            },
            commands,
            mirrors: Mutex::new(HashMap::new()),
            subscribed: Mutex::new(HashMap::new()),
            present: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
            config,
        });
        shared.heartbeat().await?;
        let weak = Arc::downgrade(&shared);
        let pubsub = tokio::spawn(task::pubsub(weak.clone(), client, receiver));
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
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("node", &format_args!("{:x}", self.shared.node))
            .field("prefix", &self.shared.config.prefix)
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

/// `timeout` from now, in Unix milliseconds.
fn deadline_ms(timeout: Duration) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from((now + timeout).as_millis()).unwrap_or(u64::MAX)
}

fn candidate_epoch() -> String {
    format!("{:x}", Epoch::random().as_u64())
}

fn presence_publication(event: &'static str, user: &str, data: &str) -> Publication {
    let data: serde_json::Value = serde_json::from_str(data).unwrap_or(serde_json::Value::Null);
    let payload = serde_json::json!({ "user": user, "data": data });
    Publication::new(Payload::text(payload.to_string()))
        .event_name_checked(EventName::from_static(event))
        .sender(user)
}

impl Shared {
    fn key(&self, kind: &str, ns: &str, topic: &Topic) -> String {
        format!("{}:{kind}:{ns}:{topic}", self.config.prefix)
    }

    fn channel(&self, ns: &str, topic: &Topic) -> String {
        self.key("ch", ns, topic)
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.config.topic_ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// Adds the publish script's arguments (meta, hist, candidate, body, maxlen, ttl, channel).
    fn publish_args(
        &self,
        inv: &mut redis::ScriptInvocation<'_>,
        ns: &str,
        topic: &Topic,
        p: &Publication,
    ) {
        inv.arg(self.key("meta", ns, topic))
            .arg(self.key("hist", ns, topic))
            .arg(candidate_epoch())
            .arg(wire::encode_body(topic, p, self.node))
            .arg(self.config.history)
            .arg(self.ttl_ms())
            .arg(self.channel(ns, topic));
    }

    async fn publish(
        &self,
        ns: &str,
        topic: &Topic,
        p: &Publication,
    ) -> Result<MessageId, Failure> {
        // The deadline goes with the script: if Redis runs it only after this call has timed
        // out (a stalled server), it refuses, so "failed" always means "not delivered". This
        // trusts the node's and Redis's clocks to agree to within the timeout.
        let mut inv = self.scripts.publish.prepare_invoke();
        inv.key(self.key("meta", ns, topic))
            .key(self.key("hist", ns, topic))
            .arg(candidate_epoch())
            .arg(wire::encode_body(topic, p, self.node))
            .arg(self.config.history)
            .arg(self.ttl_ms())
            .arg(self.channel(ns, topic))
            .arg(deadline_ms(self.config.timeout));
        let mut conn = self.conn.clone();
        let id: String = within(self.config.timeout, inv.invoke_async(&mut conn)).await?;
        id.parse().map_err(|_| Failure::Reply("publish"))
    }

    /// Fetches the remote state of a topic and brings the mirror's log in line with it.
    async fn resync(&self, mirror: &Mirror, topic: &Topic) -> Result<(), HubError> {
        let ns = mirror.namespace();
        let (local_epoch, after) = mirror.position(topic).map_or((String::new(), 0), |id| {
            (format!("{:x}", id.epoch().as_u64()), id.offset())
        });
        let mut inv = self.scripts.state.prepare_invoke();
        inv.key(self.key("meta", ns, topic))
            .key(self.key("hist", ns, topic))
            .arg(candidate_epoch())
            .arg(local_epoch)
            .arg(after)
            .arg(self.ttl_ms());
        let mut conn = self.conn.clone();
        let reply: Vec<Vec<u8>> = within(self.config.timeout, inv.invoke_async(&mut conn)).await?;
        let (epoch, last) = match reply.as_slice() {
            [epoch, last, ..] => (
                std::str::from_utf8(epoch)
                    .ok()
                    .and_then(|e| u64::from_str_radix(e, 16).ok())
                    .and_then(Epoch::from_u64),
                std::str::from_utf8(last)
                    .ok()
                    .and_then(|l| l.parse::<Offset>().ok()),
            ),
            _ => (None, None),
        };
        let (Some(epoch), Some(last)) = (epoch, last) else {
            return Err(Failure::Reply("state").into());
        };
        let history: Vec<Message> = reply[2..]
            .iter()
            .filter_map(|w| wire::decode(w, self.node))
            .collect();
        mirror.sync(topic, epoch, last, &history)?;
        Ok(())
    }

    async fn heartbeat(&self) -> Result<(), HubError> {
        let p = &self.config.prefix;
        let node = format!("{:x}", self.node);
        let ttl = u64::try_from(self.config.node_ttl.as_millis()).unwrap_or(u64::MAX);
        let mut conn = self.conn.clone();
        let mut inv = self.scripts.heartbeat.prepare_invoke();
        inv.arg(p).arg(&node).arg(ttl);
        let alive: i64 = within(self.config.timeout, inv.invoke_async(&mut conn)).await?;
        if alive == 0 {
            // Our counts may be gone (first beat, Redis restarted, declared dead): restore.
            let present: Vec<(Topic, RoomCounts)> = self
                .present
                .lock()
                .iter()
                .map(|(room, users)| (room.clone(), users.clone()))
                .collect();
            for (room, users) in present {
                let mut inv = self.scripts.register.prepare_invoke();
                inv.arg(p).arg(room.as_str()).arg(&node);
                for (user, (n, data)) in &users {
                    inv.arg(&**user).arg(*n).arg(data);
                }
                let joined: Vec<String> =
                    within(self.config.timeout, inv.invoke_async(&mut conn)).await?;
                for pair in joined.chunks_exact(2) {
                    let p = presence_publication(PRESENCE_JOIN, &pair[0], &pair[1]);
                    self.publish("rooms", &room, &p).await?;
                }
            }
        }
        let mut inv = self.scripts.sweep.prepare_invoke();
        inv.arg(p);
        let left: Vec<String> = within(self.config.timeout, inv.invoke_async(&mut conn)).await?;
        for triple in left.chunks_exact(3) {
            let Ok(room) = Topic::new(&triple[0]) else {
                continue;
            };
            let p = presence_publication(PRESENCE_LEAVE, &triple[1], &triple[2]);
            self.publish("rooms", &room, &p).await?;
        }
        Ok(())
    }

    /// Runs the join or leave script; returns whether the user became present or absent.
    async fn presence(
        &self,
        join: bool,
        mirror: &Mirror,
        room: &Topic,
        identity: &Identity,
        data: &str,
        announce: Option<Publication>,
    ) -> Result<bool, HubError> {
        let script = if join {
            &self.scripts.join
        } else {
            &self.scripts.leave
        };
        let mut inv = script.prepare_invoke();
        inv.arg(&self.config.prefix)
            .arg(room.as_str())
            .arg(format!("{:x}", self.node))
            .arg(identity.user_id());
        if join {
            inv.arg(data);
        }
        inv.arg(if announce.is_some() { "1" } else { "0" });
        let p = announce.unwrap_or_else(|| Publication::new(""));
        self.publish_args(&mut inv, mirror.namespace(), room, &p);
        let mut conn = self.conn.clone();
        let reply: Vec<String> = within(self.config.timeout, inv.invoke_async(&mut conn)).await?;
        Ok(reply.first().is_some_and(|r| r == "1"))
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
        let channel = shared.channel(mirror.namespace(), topic);
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
        let channel = self.shared.channel(mirror.namespace(), topic);
        let _ = self.shared.commands.send(task::Command::Detach { channel });
    }

    async fn presence_add(
        &self,
        mirror: &Mirror,
        room: &Topic,
        identity: &Identity,
        announce: Option<Publication>,
    ) -> Result<bool, HubError> {
        let data = identity
            .user_data()
            .map(ToString::to_string)
            .unwrap_or_default();
        {
            let mut present = self.shared.present.lock();
            let users = present.entry(room.clone()).or_default();
            let entry = users
                .entry(Arc::clone(identity.user_arc()))
                .or_insert_with(|| (0, data.clone()));
            entry.0 += 1;
        }
        self.shared
            .presence(true, mirror, room, identity, &data, announce)
            .await
    }

    async fn presence_remove(
        &self,
        mirror: &Mirror,
        room: &Topic,
        identity: &Identity,
        announce: Option<Publication>,
    ) -> Result<bool, HubError> {
        {
            let mut present = self.shared.present.lock();
            if let Some(users) = present.get_mut(room) {
                if let Some(entry) = users.get_mut(identity.user_id()) {
                    entry.0 -= 1;
                    if entry.0 == 0 {
                        users.remove(identity.user_id());
                    }
                }
                if users.is_empty() {
                    present.remove(room);
                }
            }
        }
        self.shared
            .presence(false, mirror, room, identity, "", announce)
            .await
    }

    async fn members(&self, _mirror: &Mirror, room: &Topic) -> Result<Vec<Member>, HubError> {
        let mut inv = self.shared.scripts.members.prepare_invoke();
        inv.arg(&self.shared.config.prefix).arg(room.as_str());
        let mut conn = self.shared.conn.clone();
        let reply: Vec<String> =
            within(self.shared.config.timeout, inv.invoke_async(&mut conn)).await?;
        Ok(reply
            .chunks_exact(3)
            .map(|m| Member {
                user: Arc::from(m[0].as_str()),
                connections: m[1].parse().unwrap_or(1),
                data: serde_json::from_str(&m[2]).ok().map(Arc::new),
            })
            .collect())
    }
}
