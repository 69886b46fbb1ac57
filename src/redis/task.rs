//! The node's background tasks: the pub/sub task (subscriptions, incoming messages, catching
//! up, reconnects) with its subscription worker, and the heartbeat.
//!
//! # The pub/sub task
//!
//! One task applies every incoming message to the mirror, in the order Redis published it, so
//! nothing else may wait inside it. What takes a round trip runs beside it and reports back:
//!
//! * subscribing and unsubscribing run in the *subscription worker*, one operation after the
//!   other (so a channel's `SUBSCRIBE` and `UNSUBSCRIBE` are never reordered), consecutive
//!   subscriptions batched;
//! * fetching a topic's state and history (attach, a gap, a reconnect) runs in a *fetch job* of
//!   its own, at most [`FETCHES`] at a time. While a topic is being fetched, its incoming
//!   messages and live-only notices are buffered; when the fetch is back, the task syncs the
//!   mirror and applies the buffer in arrival order (a notice goes to
//!   [`Mirror::announce`](crate::backend::Mirror::announce)), so a message published after
//!   the fetch read the history is never lost, and one published before it is a duplicate
//!   the mirror ignores.
//!
//! On a cluster a subscription can be lost without an error while the topology changes (a
//! failover): the client's own resubscription and the task's race the slot map and the
//! servers' unsubscribe notices, and one may land on the old master, now a replica that gets
//! none of the new master's messages. So each subscription first sends a keyed command on the
//! channel's slot (a stale slot map gets `MOVED` and is refreshed before the subscription is
//! routed), and after a dropped connection or subscription the task subscribes every
//! followed channel again over the next [`RECHECKS`] heartbeats (idempotent; each catches up
//! from the history).
//!
//! Per followed channel, the task keeps a [`Follow`]: whether the server confirmed the
//! subscription, the fetch in flight and its buffer, the attaches waiting for it, and the
//! stamp of the last message applied (which tells a rewound Redis apart, see `STATE`).

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::{mpsc, oneshot, watch};

use super::wire::{Incoming, Stamp};
use super::{Failure, Shared, within};
use crate::error::HubError;
use crate::hub::Message;
use crate::hub::log::Applied;
use crate::ids::{Epoch, Offset, Topic};

/// Longest pause between two reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Fetch jobs that may run at once (after a reconnect, every followed topic catches up).
pub(super) const FETCHES: usize = 16;

/// Heartbeats after a cluster disruption at which every followed channel is subscribed again.
const RECHECKS: u8 = 2;

/// Subscriptions a cluster worker sends at once (each to its channel's shard).
const CLUSTER_BATCH: usize = 32;

pub(super) enum Command {
    /// Subscribe (if not yet), then sync the mirror's log; answer when done.
    Attach {
        channel: String,
        namespace: &'static str,
        topic: Topic,
        reply: oneshot::Sender<Result<(), HubError>>,
    },
    /// The mirror freed the topic's log: unsubscribe unless it was attached again.
    Detach { channel: String },
}

/// A topic's remote state, as a fetch job read it.
pub(super) struct Fetched {
    pub(super) epoch: Epoch,
    pub(super) last: Offset,
    pub(super) history: Vec<(Message, Stamp)>,
}

/// What reaches the pub/sub task besides commands.
enum Event {
    /// A message published to a channel.
    Message { channel: Vec<u8>, payload: Vec<u8> },
    /// The server confirmed a subscription the client renewed by itself (cluster): catch up.
    Confirmed(String),
    /// The server dropped a subscription (its slot moved): subscribe again.
    Dropped(String),
    /// A connection to a cluster node dropped: its subscriptions may have missed messages.
    Disconnected,
    /// The single-server connection (of that generation) is lost.
    Lost(u64),
    /// The worker's answer to a subscription.
    Subscribed {
        channel: String,
        generation: u64,
        result: Result<(), Failure>,
    },
    /// A fetch job's answer.
    Fetched {
        channel: String,
        generation: u64,
        result: Result<Fetched, HubError>,
    },
}

/// A channel this node follows.
struct Follow {
    namespace: &'static str,
    topic: Topic,
    /// Tells the answers to this follow's operations from those of an earlier follow of the
    /// same channel.
    generation: u64,
    /// The server confirmed the subscription (since the last reconnect).
    subscribed: bool,
    /// A subscription was asked of the worker and not answered yet.
    subscribing: bool,
    /// A fetch in flight (`running`) or waiting for the subscription, with what arrived
    /// meanwhile.
    fetch: Option<Fetch>,
    /// The last fetch failed: the mirror may be behind; try again on the next tick.
    stale: bool,
    waiters: Vec<oneshot::Sender<Result<(), HubError>>>,
    /// The offset and stamp of the last message applied.
    stamp: Option<(Offset, Stamp)>,
}

#[derive(Default)]
struct Fetch {
    running: bool,
    again: bool,
    /// Messages and live-only notices, in the order they arrived.
    buffer: Vec<Incoming>,
}

enum SubOp {
    Subscribe { channel: String, generation: u64 },
    Unsubscribe(String),
}

/// The pub/sub connection(s) and what the task needs to reach them.
pub(super) enum Source {
    Single {
        client: redis::Client,
        stream: Option<PubSubStream>,
        sink: watch::Sender<Option<PubSubSink>>,
        generation: u64,
        backoff: Duration,
    },
    Cluster {
        conn: ClusterConnection,
        pushes: mpsc::UnboundedReceiver<PushInfo>,
    },
}

impl Source {
    /// The next message or change from the connection; pending while it's down.
    async fn next(&mut self) -> Event {
        match self {
            Self::Single {
                stream: Some(stream),
                generation,
                ..
            } => match stream.next().await {
                Some(msg) => Event::Message {
                    channel: msg.get_channel_name().as_bytes().to_vec(),
                    payload: msg.get_payload_bytes().to_vec(),
                },
                None => Event::Lost(*generation),
            },
            Self::Single { stream: None, .. } => std::future::pending().await,
            Self::Cluster { pushes, .. } => loop {
                let Some(push) = pushes.recv().await else {
                    return std::future::pending().await;
                };
                if let Some(event) = push_event(push) {
                    return event;
                }
            },
        }
    }
}

fn bulk(value: Option<&Value>) -> Option<Vec<u8>> {
    match value? {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        _ => None,
    }
}

fn push_event(mut push: PushInfo) -> Option<Event> {
    let payload = (push.data.len() > 1).then(|| push.data.swap_remove(1));
    let channel = bulk(push.data.first());
    match push.kind {
        PushKind::SMessage | PushKind::Message => Some(Event::Message {
            channel: channel?,
            payload: bulk(payload.as_ref())?,
        }),
        PushKind::SSubscribe => Some(Event::Confirmed(String::from_utf8(channel?).ok()?)),
        PushKind::SUnsubscribe => Some(Event::Dropped(String::from_utf8(channel?).ok()?)),
        PushKind::Disconnection => Some(Event::Disconnected),
        _ => None,
    }
}

/// Runs the pub/sub task until the backend is dropped.
pub(super) async fn pubsub(
    weak: Weak<Shared>,
    mut source: Source,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let Some((timeout, every)) = weak
        .upgrade()
        .map(|s| (s.config.timeout, s.config.heartbeat))
    else {
        return;
    };
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (ops, ops_rx) = mpsc::unbounded_channel();
    let sink = match &source {
        Source::Single { sink, .. } => Sink::Single(sink.subscribe()),
        Source::Cluster { conn, .. } => Sink::Cluster(conn.clone()),
    };
    let worker = tokio::spawn(subscriptions(sink, ops_rx, events_tx.clone(), timeout));
    let mut task = Task {
        weak,
        follows: HashMap::new(),
        events: events_tx,
        ops,
        generation: 0,
        connected: matches!(source, Source::Cluster { .. }),
        recheck: 0,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    loop {
        match connect(
            &mut task,
            &mut source,
            &mut commands,
            &mut events,
            timeout,
            first,
        )
        .await
        {
            Connect::Ready => first = false,
            Connect::Retry => continue,
            Connect::Stop => break,
        }
        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else { break };
                task.command(command);
            }
            event = events.recv() => {
                let Some(event) = event else { break };
                task.event(event, &mut source);
            }
            event = source.next() => task.event(event, &mut source),
            _ = tick.tick() => task.tick(&source),
        }
        if task.weak.strong_count() == 0 {
            break;
        }
    }
    worker.abort();
}

/// What [`connect`] left the pub/sub loop to do.
enum Connect {
    /// A connection is up (or Redis Cluster keeps its own): go on.
    Ready,
    /// Connecting failed and the back-off has passed: try again.
    Retry,
    /// The backend is gone.
    Stop,
}

/// With a single Redis, (re)opens the pub/sub connection when there is none and resubscribes
/// every followed channel; after a failure, waits the back-off (still serving commands and
/// events) before the caller retries. Redis Cluster connections reconnect by themselves.
async fn connect(
    task: &mut Task,
    source: &mut Source,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    events: &mut mpsc::UnboundedReceiver<Event>,
    timeout: Duration,
    first: bool,
) -> Connect {
    let Source::Single {
        stream: stream @ None,
        client,
        sink,
        generation,
        backoff,
    } = source
    else {
        return Connect::Ready;
    };
    match within(timeout, client.get_async_pubsub()).await {
        Ok(pubsub) => {
            let (s, st) = pubsub.split();
            *stream = Some(st);
            *generation += 1;
            *backoff = Duration::from_millis(50);
            sink.send_replace(Some(s));
            task.connected = true;
            if !first {
                tracing::info!(
                    channels = task.follows.len(),
                    "redis pub/sub: reconnected; resubscribing"
                );
                crate::metrics::redis_reconnect();
            }
            task.resubscribe_all();
            Connect::Ready
        }
        Err(e) => {
            tracing::debug!(error = %e, "redis pub/sub: connect failed; retrying");
            crate::metrics::redis_error("pubsub_connect");
            if !task.wait(commands, events, *backoff).await {
                return Connect::Stop;
            }
            *backoff = (*backoff * 2).min(MAX_BACKOFF);
            Connect::Retry
        }
    }
}

/// Brings a followed topic's local log up to what Redis answered (`fetched`), then applies
/// what pub/sub delivered meanwhile (`buffer`). `Ok(true)` when those show a gap or another
/// epoch: the topic must be fetched again.
fn catch_up(
    shared: &Shared,
    follow: &mut Follow,
    fetched: &Fetched,
    buffer: Vec<Incoming>,
) -> Result<bool, HubError> {
    let mirror = shared
        .mirror(follow.namespace)
        .ok_or(Failure::NotSubscribed)?;
    let history: Vec<Message> = fetched.history.iter().map(|(m, _)| m.clone()).collect();
    if mirror.sync(&follow.topic, fetched.epoch, fetched.last, &history)? {
        follow.stamp = None;
        // Redis lost the log: this node's presence in the room (if any) may be gone too.
        shared.room_replaced(&super::presence::Place::new(
            follow.namespace,
            &follow.topic,
        ));
    }
    let position = mirror.position(&follow.topic);
    if let Some((m, stamp)) = fetched
        .history
        .iter()
        .rev()
        .find(|(m, _)| Some(m.id()) == position)
    {
        follow.stamp = Some((m.id().offset(), *stamp));
    }
    let mut again = false;
    for incoming in buffer {
        match incoming {
            Incoming::Message(message, stamp) => match mirror.apply(&message) {
                Applied::Appended => follow.stamp = Some((message.id().offset(), stamp)),
                Applied::Gap { .. } | Applied::OtherEpoch { .. } => again = true,
                _ => {}
            },
            Incoming::Notice(p) => mirror.announce(&follow.topic, p),
        }
    }
    Ok(again)
}

struct Task {
    weak: Weak<Shared>,
    follows: HashMap<String, Follow>,
    events: mpsc::UnboundedSender<Event>,
    ops: mpsc::UnboundedSender<SubOp>,
    generation: u64,
    /// The single-server connection is up (always true on a cluster, which reconnects per
    /// node by itself).
    connected: bool,
    /// Heartbeats at which to subscribe every followed channel again (cluster, after a
    /// connection dropped or the server dropped a subscription): see [`Task::tick`].
    recheck: u8,
}

impl Task {
    /// Waits `delay` while disconnected, answering commands and events meanwhile: attaching
    /// fails fast while the subscription is down. False if the backend is gone.
    async fn wait(
        &mut self,
        commands: &mut mpsc::UnboundedReceiver<Command>,
        events: &mut mpsc::UnboundedReceiver<Event>,
        delay: Duration,
    ) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return self.weak.strong_count() > 0,
                command = commands.recv() => match command {
                    None => return false,
                    Some(command) => self.command(command),
                },
                event = events.recv() => match event {
                    None => return false,
                    // Answers of the lost connection: only fetches still count.
                    Some(event @ Event::Fetched { .. }) => self.fetched(event),
                    Some(_) => {}
                },
            }
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Attach {
                channel,
                namespace,
                topic,
                reply,
            } => self.attach(channel, namespace, topic, reply),
            Command::Detach { channel } => self.detach(&channel),
        }
    }

    fn attach(
        &mut self,
        channel: String,
        namespace: &'static str,
        topic: Topic,
        reply: oneshot::Sender<Result<(), HubError>>,
    ) {
        if !self.connected {
            let _ = reply.send(Err(Failure::NotSubscribed.into()));
            return;
        }
        if let Some(follow) = self.follows.get_mut(&channel) {
            follow.waiters.push(reply);
            if follow.subscribed {
                self.request_fetch(&channel);
            } else if !follow.subscribing {
                // The last subscription failed: try again now rather than at the next tick.
                follow.fetch.get_or_insert_with(Fetch::default);
                self.resubscribe(&channel);
            }
            return;
        }
        self.generation += 1;
        self.follows.insert(
            channel.clone(),
            Follow {
                namespace,
                topic,
                generation: self.generation,
                subscribed: false,
                subscribing: true,
                fetch: Some(Fetch::default()),
                stale: false,
                waiters: vec![reply],
                stamp: None,
            },
        );
        let _ = self.ops.send(SubOp::Subscribe {
            channel,
            generation: self.generation,
        });
    }

    fn detach(&mut self, channel: &str) {
        let Some(shared) = self.weak.upgrade() else {
            return;
        };
        let Some(follow) = self.follows.get(channel) else {
            return;
        };
        let attached = shared
            .mirror(follow.namespace)
            .is_some_and(|m| m.is_attached(&follow.topic));
        if attached || !follow.waiters.is_empty() {
            return;
        }
        self.follows.remove(channel);
        shared.subscribed.lock().remove(channel);
        let _ = self.ops.send(SubOp::Unsubscribe(channel.to_owned()));
    }

    /// Fetches the channel's topic now, or again once the fetch in flight is back.
    fn request_fetch(&mut self, channel: &str) {
        let Some(shared) = self.weak.upgrade() else {
            return;
        };
        let Some(follow) = self.follows.get_mut(channel) else {
            return;
        };
        let fetch = follow.fetch.get_or_insert_with(Fetch::default);
        if fetch.running {
            fetch.again = true;
            return;
        }
        fetch.running = true;
        fetch.again = false;
        follow.stale = false;
        let (namespace, topic, generation) =
            (follow.namespace, follow.topic.clone(), follow.generation);
        let local = shared
            .mirror(namespace)
            .and_then(|m| m.position(&topic))
            .map(|id| {
                let stamp = follow
                    .stamp
                    .filter(|(offset, _)| *offset == id.offset())
                    .map(|(_, s)| s);
                (id, stamp)
            });
        let events = self.events.clone();
        let channel = channel.to_owned();
        tokio::spawn(async move {
            let result = async {
                let _permit = shared.fetches.acquire().await;
                shared.fetch(namespace, &topic, local).await
            }
            .await;
            drop(shared);
            let _ = events.send(Event::Fetched {
                channel,
                generation,
                result,
            });
        });
    }

    fn event(&mut self, event: Event, source: &mut Source) {
        match event {
            Event::Message { channel, payload } => self.message(&channel, &payload),
            Event::Confirmed(channel) => {
                tracing::debug!(channel, "redis pub/sub: subscription confirmed");
                if self.follows.get(&channel).is_some_and(|f| f.subscribed) {
                    self.request_fetch(&channel);
                }
            }
            Event::Dropped(channel) => {
                tracing::debug!(
                    channel,
                    "redis pub/sub: subscription dropped; subscribing again"
                );
                self.resubscribe(&channel);
                self.recheck = RECHECKS;
            }
            Event::Disconnected => {
                tracing::debug!(
                    "redis pub/sub: a cluster node's connection dropped; resubscribing"
                );
                crate::metrics::redis_reconnect();
                self.resubscribe_all();
                self.recheck = RECHECKS;
            }
            Event::Lost(generation) => {
                if let Source::Single {
                    stream,
                    sink,
                    generation: current,
                    ..
                } = source
                    && *current == generation
                    && stream.is_some()
                {
                    tracing::warn!("redis pub/sub: connection lost; reconnecting");
                    *stream = None;
                    sink.send_replace(None);
                    self.connected = false;
                    if let Some(shared) = self.weak.upgrade() {
                        shared.subscribed.lock().clear();
                    }
                    for follow in self.follows.values_mut() {
                        follow.subscribed = false;
                        follow.subscribing = false;
                    }
                }
            }
            Event::Subscribed {
                channel,
                generation,
                result,
            } => self.subscribed(&channel, generation, result),
            event @ Event::Fetched { .. } => self.fetched(event),
        }
    }

    /// Subscribes every followed channel again (after a reconnect).
    fn resubscribe_all(&mut self) {
        let channels: Vec<String> = self.follows.keys().cloned().collect();
        for channel in channels {
            self.resubscribe(&channel);
        }
    }

    fn resubscribe(&mut self, channel: &str) {
        let Some(follow) = self.follows.get_mut(channel) else {
            return;
        };
        follow.subscribed = false;
        if let Some(shared) = self.weak.upgrade() {
            shared.subscribed.lock().remove(channel);
        }
        if follow.subscribing {
            return;
        }
        follow.subscribing = true;
        let _ = self.ops.send(SubOp::Subscribe {
            channel: channel.to_owned(),
            generation: follow.generation,
        });
    }

    fn subscribed(&mut self, channel: &str, generation: u64, result: Result<(), Failure>) {
        let Some(shared) = self.weak.upgrade() else {
            return;
        };
        let Some(follow) = self.follows.get_mut(channel) else {
            return;
        };
        if follow.generation != generation {
            return;
        }
        follow.subscribing = false;
        match result {
            Ok(()) => {
                follow.subscribed = true;
                shared
                    .subscribed
                    .lock()
                    .insert(channel.to_owned(), (follow.namespace, follow.topic.clone()));
                self.request_fetch(channel);
            }
            Err(e) => {
                tracing::debug!(channel, error = %e, "redis: subscribing failed");
                crate::metrics::redis_error("subscribe");
                let error = HubError::from(e);
                for waiter in follow.waiters.drain(..) {
                    let _ = waiter.send(Err(copy_error(&error)));
                }
                follow.fetch = None;
                follow.stale = true;
                self.drop_unused(&shared, channel);
            }
        }
    }

    /// Forgets a follow whose topic has no local log (nobody attached it after all).
    fn drop_unused(&mut self, shared: &Shared, channel: &str) {
        let Some(follow) = self.follows.get(channel) else {
            return;
        };
        let attached = shared
            .mirror(follow.namespace)
            .is_some_and(|m| m.is_attached(&follow.topic));
        if !attached && follow.waiters.is_empty() && follow.fetch.is_none() {
            let subscribed = follow.subscribed || follow.subscribing;
            self.follows.remove(channel);
            shared.subscribed.lock().remove(channel);
            if subscribed {
                let _ = self.ops.send(SubOp::Unsubscribe(channel.to_owned()));
            }
        }
    }

    fn fetched(&mut self, event: Event) {
        let Event::Fetched {
            channel,
            generation,
            result,
        } = event
        else {
            return;
        };
        let Some(shared) = self.weak.upgrade() else {
            return;
        };
        let Some(follow) = self.follows.get_mut(&channel) else {
            return;
        };
        if follow.generation != generation {
            return;
        }
        let fetch = follow.fetch.take().unwrap_or_default();
        let mut again = fetch.again;
        let outcome = result.and_then(|fetched| catch_up(&shared, follow, &fetched, fetch.buffer));
        if let Ok(true) = outcome {
            again = true;
        }
        let failed = outcome.is_err();
        match outcome {
            Ok(_) => {
                let waited = !follow.waiters.is_empty();
                let mut answered = false;
                for waiter in follow.waiters.drain(..) {
                    answered |= waiter.send(Ok(())).is_ok();
                }
                if waited && !answered {
                    // Everyone who asked gave up (a join or subscribe cut short): free the log
                    // the sync may have created for them, unless someone follows it now.
                    if let Some(mirror) = shared.mirror(follow.namespace) {
                        mirror.release(&follow.topic);
                    }
                }
            }
            Err(error) => {
                tracing::debug!(topic = %follow.topic, error = %error, "redis: catching up failed");
                for waiter in follow.waiters.drain(..) {
                    let _ = waiter.send(Err(copy_error(&error)));
                }
                follow.stale = true;
            }
        }
        if again && !failed {
            self.request_fetch(&channel);
        } else {
            self.drop_unused(&shared, &channel);
        }
    }

    fn message(&mut self, channel: &[u8], payload: &[u8]) {
        let Ok(channel) = std::str::from_utf8(channel) else {
            return;
        };
        let Some(shared) = self.weak.upgrade() else {
            return;
        };
        let Some(follow) = self.follows.get_mut(channel) else {
            return;
        };
        let Some(incoming) = super::wire::decode_incoming(payload, shared.node) else {
            tracing::warn!(topic = %follow.topic, "redis: undecodable message ignored");
            return;
        };
        if let Some(fetch) = &mut follow.fetch {
            fetch.buffer.push(incoming);
            return;
        }
        let Some(mirror) = shared.mirror(follow.namespace) else {
            return;
        };
        let (message, stamp) = match incoming {
            Incoming::Message(message, stamp) => (message, stamp),
            Incoming::Notice(p) => {
                mirror.announce(&follow.topic, p);
                return;
            }
        };
        match mirror.apply(&message) {
            Applied::Appended => follow.stamp = Some((message.id().offset(), stamp)),
            Applied::Gap { .. } | Applied::OtherEpoch { .. } => {
                follow.fetch = Some(Fetch {
                    buffer: vec![Incoming::Message(message, stamp)],
                    ..Fetch::default()
                });
                self.request_fetch(channel);
            }
            _ => {}
        }
    }

    /// Every heartbeat: pings the single-server connection, retries what failed.
    fn tick(&mut self, source: &Source) {
        if let Source::Single {
            sink,
            generation,
            stream: Some(_),
            ..
        } = source
            && let Some(mut sink) = sink.borrow().clone()
            && let Some(timeout) = self.weak.upgrade().map(|s| s.config.timeout)
        {
            let events = self.events.clone();
            let generation = *generation;
            tokio::spawn(async move {
                if within(timeout, sink.ping::<Value>()).await.is_err() {
                    let _ = events.send(Event::Lost(generation));
                }
            });
        }
        if !self.connected {
            return;
        }
        if self.recheck > 0 {
            // A cluster's topology may still be settling: see the module docs.
            self.recheck -= 1;
            self.resubscribe_all();
        }
        let retry: Vec<(String, bool)> = self
            .follows
            .iter()
            .filter(|(_, f)| f.fetch.is_none() && (f.stale || !f.subscribed))
            .map(|(c, f)| (c.clone(), f.subscribed))
            .collect();
        for (channel, subscribed) in retry {
            if subscribed {
                self.request_fetch(&channel);
            } else {
                self.resubscribe(&channel);
            }
        }
    }
}

/// `HubError` is not `Clone`: several attaches waiting on one fetch each get a copy.
fn copy_error(error: &HubError) -> HubError {
    match error {
        HubError::TooManyTopics { limit } => HubError::TooManyTopics { limit: *limit },
        HubError::Backend(e) => HubError::Backend(Box::new(Failure::Shared(e.to_string()))),
        other => HubError::Backend(Box::new(Failure::Shared(other.to_string()))),
    }
}

/// Where the subscription worker sends its commands.
enum Sink {
    Single(watch::Receiver<Option<PubSubSink>>),
    Cluster(ClusterConnection),
}

/// The subscription worker: runs subscriptions and unsubscriptions one after the other,
/// batching consecutive subscriptions, and reports each subscription's outcome.
async fn subscriptions(
    mut sink: Sink,
    mut ops: mpsc::UnboundedReceiver<SubOp>,
    events: mpsc::UnboundedSender<Event>,
    timeout: Duration,
) {
    let mut carried: Option<SubOp> = None;
    loop {
        let op = match carried.take() {
            Some(op) => op,
            None => match ops.recv().await {
                Some(op) => op,
                None => return,
            },
        };
        match op {
            SubOp::Unsubscribe(channel) => {
                let result = match &mut sink {
                    Sink::Single(rx) => {
                        let current = rx.borrow().clone();
                        match current {
                            Some(mut s) => within(timeout, s.unsubscribe(&channel)).await,
                            None => Ok(()),
                        }
                    }
                    Sink::Cluster(conn) => within(timeout, conn.sunsubscribe(&channel)).await,
                };
                if let Err(e) = result {
                    tracing::debug!(channel, error = %e, "redis: unsubscribing failed");
                    crate::metrics::redis_error("unsubscribe");
                }
            }
            SubOp::Subscribe {
                channel,
                generation,
            } => {
                let mut batch = vec![(channel, generation)];
                while let Ok(next) = ops.try_recv() {
                    match next {
                        SubOp::Subscribe {
                            channel,
                            generation,
                        } => batch.push((channel, generation)),
                        other => {
                            carried = Some(other);
                            break;
                        }
                    }
                }
                let results = subscribe(&mut sink, &batch, timeout).await;
                for ((channel, generation), result) in batch.into_iter().zip(results) {
                    let _ = events.send(Event::Subscribed {
                        channel,
                        generation,
                        result,
                    });
                }
            }
        }
    }
}

async fn subscribe(
    sink: &mut Sink,
    batch: &[(String, u64)],
    timeout: Duration,
) -> Vec<Result<(), Failure>> {
    match sink {
        Sink::Single(rx) => {
            let current = rx.borrow().clone();
            let result = match current {
                Some(mut s) => {
                    let channels: Vec<&str> = batch.iter().map(|(c, _)| c.as_str()).collect();
                    within(timeout, s.subscribe(&channels)).await
                }
                None => Err(Failure::NotSubscribed),
            };
            let shared = result.map_err(|e| Arc::new(e.to_string()));
            batch
                .iter()
                .map(|_| {
                    shared
                        .clone()
                        .map_err(|e| Failure::Shared(e.as_str().to_owned()))
                })
                .collect()
        }
        Sink::Cluster(conn) => {
            let calls: Vec<_> = batch
                .iter()
                .map(|(channel, _)| {
                    let (mut conn, channel) = (conn.clone(), channel.clone());
                    async move {
                        // A stale slot map would route the subscription to a replica that
                        // accepts it and stays silent (see the module docs): the probe's
                        // MOVED refreshes the map first. A refused subscription gets the
                        // same before it is sent again.
                        probe(&mut conn, &channel, timeout).await;
                        match within(timeout, conn.ssubscribe(&channel)).await {
                            Ok(()) => Ok(()),
                            Err(_) => {
                                probe(&mut conn, &channel, timeout).await;
                                within(timeout, conn.ssubscribe(&channel)).await
                            }
                        }
                    }
                })
                .collect();
            futures_util::stream::iter(calls)
                .buffered(CLUSTER_BATCH)
                .collect()
                .await
        }
    }
}

/// A keyed command on `channel`'s slot: a stale slot map gets a MOVED answer, which makes the
/// cluster client refresh it.
async fn probe(conn: &mut ClusterConnection, channel: &str, timeout: Duration) {
    let _ = within(
        timeout,
        redis::cmd("EXISTS").arg(channel).query_async::<i64>(conn),
    )
    .await;
}

/// The heartbeat: every [`heartbeat`](super::RedisConfig::heartbeat), the beat that keeps the
/// node alive, and beside it, on a clock of its own, the upkeep (reconciling, pruning,
/// renewing, sweeping). The beat never waits for the upkeep: however long a reconcile or a
/// sweep takes, the node is not declared dead meanwhile.
pub(super) async fn heartbeat(weak: Weak<Shared>) {
    let Some(every) = weak.upgrade().map(|s| s.config.heartbeat) else {
        return;
    };
    tokio::join!(
        every_tick(weak.clone(), every, "heartbeat", |shared| async move {
            shared.beat().await
        }),
        every_tick(weak, every, "upkeep", |shared| async move {
            shared.upkeep().await
        }),
    );
}

/// Runs `step` every `every` (the first a period from now, the next a period after the last
/// ended, at most) until the backend is dropped.
async fn every_tick<F, Fut>(weak: Weak<Shared>, every: Duration, name: &'static str, step: F)
where
    F: Fn(Arc<Shared>) -> Fut,
    Fut: Future<Output = Result<(), HubError>>,
{
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        interval.tick().await;
        let Some(shared) = weak.upgrade() else {
            return;
        };
        if let Err(e) = step(shared).await {
            tracing::warn!(error = %e, "redis: {name} failed");
        }
    }
}
