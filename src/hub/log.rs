//! One topic's message log: id assignment, bounded history, live fan-out and the per-subscriber
//! stream that replays, refills after lag and continues live without gap or duplicate.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::sync::{AtomicBool, Mutex, RwLock};
use futures_util::Stream;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio_util::sync::ReusableBoxFuture;

use super::config::HubConfig;
use super::{
    ConnectionId, Delivery, Epoch, Message, MessageId, Offset, Position, Publication, Reset,
    ResetReason, Topic,
};
use crate::error::HubError;

/// Messages copied from history per refill, so a long replay holds the log lock only briefly.
const REPLAY_CHUNK: usize = 64;

/// What became of a message a remote backend handed to a mirror log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Applied {
    /// It was the next message: logged and delivered to the local subscribers.
    Appended,
    /// The log already holds it (or something later): ignored.
    Duplicate,
    /// Messages are missing between the log's last message and it: nothing was applied. Fetch
    /// the missing range and [`sync`](crate::backend::Mirror::sync).
    Gap {
        /// The offset of the log's last message.
        last: Offset,
    },
    /// It belongs to another epoch than the local log: nothing was applied. If the remote log
    /// has a new epoch, [`sync`](crate::backend::Mirror::sync) replaces the local one.
    OtherEpoch {
        /// The local log's epoch.
        current: Epoch,
    },
    /// This node has no log for the topic (nobody here follows it): ignored.
    NotAttached,
}

/// Told when a topic's log was freed: nobody on this node follows it any more (the backend
/// detaches).
pub(crate) type MirrorHook = Box<dyn Fn(&Topic) + Send + Sync>;

/// Retention and buffering limits of the logs in one registry.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) history: usize,
    pub(crate) history_bytes: Option<usize>,
    pub(crate) history_age: Option<Duration>,
    pub(crate) channel_capacity: usize,
    pub(crate) idle_ttl: Duration,
    pub(crate) max_topics: usize,
    pub(crate) max_topics_per_owner: usize,
}

impl Limits {
    pub(crate) fn topics(config: &HubConfig) -> Self {
        Self {
            history: config.history,
            history_bytes: config.history_bytes,
            history_age: config.history_age,
            channel_capacity: config.channel_capacity,
            idle_ttl: config.idle_ttl,
            max_topics: config.max_topics,
            max_topics_per_owner: config.max_topics_per_owner,
        }
    }

    pub(crate) fn direct(config: &HubConfig) -> Self {
        Self {
            channel_capacity: config.direct_capacity,
            ..Self::topics(config)
        }
    }
}

pub(crate) struct TopicLog {
    topic: Topic,
    epoch: Epoch,
    state: Mutex<LogState>,
}

pub(crate) struct LogState {
    next: Offset,
    history: VecDeque<Message>,
    history_bytes: usize,
    sender: Option<broadcast::Sender<Message>>,
    subscribers: usize,
    idle_since: Option<Instant>,
    /// This node's connections that are members of the log's room ([`Rooms`](crate::Rooms)):
    /// they keep the log even while none of their streams is open.
    holds: usize,
    /// Who brought the log into this node (a user, or an anonymous client's address): its first
    /// subscriber, counted against [`Limits::max_topics_per_owner`] while the log exists.
    owner: Option<Arc<str>>,
    /// Created for a subscriber ([`Registry::create`], [`Registry::sync`]) and not yet
    /// subscribed to: the first subscriber becomes its owner.
    claimable: bool,
    /// The log of a new epoch that took this one's place ([`Registry::sync`]), set just
    /// before this one's live channel closes: its streams move there when they see the
    /// channel closed (to that log, not to whatever log has the name by then).
    successor: Option<Arc<TopicLog>>,
    /// Set by [`Registry::close`], just before the live channel closes: its streams end, and so
    /// do the streams of the logs it replaced that hadn't moved here yet.
    closed: bool,
    /// Streams of the logs this one replaced that haven't moved here yet: each will move (one
    /// less here, one more in `subscribers`) or be dropped (one less here, counted down along
    /// the chain of successors). The log is kept while any is to come, so that a reader still
    /// on the old log never finds its successor freed.
    inherited: usize,
}

impl LogState {
    fn first_available(&self) -> Offset {
        self.history.front().map_or(self.next, |m| m.id().offset())
    }

    fn last(&self) -> Offset {
        self.next - 1
    }

    fn evict_expired(&mut self, limits: &Limits) {
        if let Some(age) = limits.history_age {
            while let Some(front) = self.history.front() {
                if front.logged_at().elapsed() <= age {
                    break;
                }
                self.pop_front();
            }
        }
    }

    fn pop_front(&mut self) {
        if let Some(m) = self.history.pop_front() {
            self.history_bytes -= m.payload().len();
        }
    }

    fn removable(&self, limits: &Limits) -> bool {
        self.subscribers == 0
            && self.inherited == 0
            && self.holds == 0
            && (self.history.is_empty()
                || limits.idle_ttl.is_zero()
                || self
                    .idle_since
                    .is_some_and(|t| t.elapsed() >= limits.idle_ttl))
    }
}

/// A log locked for one atomic step (publish, or a subscribe plus membership change).
pub(crate) struct Locked<'a> {
    log: &'a Arc<TopicLog>,
    state: &'a mut LogState,
    limits: &'a Limits,
}

impl Locked<'_> {
    pub(crate) fn assign(&mut self, publication: Publication) -> Message {
        let offset = self.state.next;
        self.state.next += 1;
        let message = Message::new(
            self.log.topic.clone(),
            MessageId::new(self.log.epoch, offset),
            publication,
        );
        self.push(&message);
        message
    }

    /// Sends a live-only notice (a presence change) to the log's subscribers of the moment:
    /// no offset, no history, no effect on the idle clock, so it can neither evict a message
    /// nor keep an empty log alive.
    pub(crate) fn announce(&mut self, publication: Publication) {
        if let Some(sender) = &self.state.sender {
            let after = MessageId::new(self.log.epoch, self.state.last());
            // No receivers is not an error: nobody is there to be told.
            let _ = sender.send(Message::notice(self.log.topic.clone(), after, publication));
        }
    }

    /// Appends a message whose offset is `next - 1` (already counted): history, idle clock and
    /// live fan-out.
    #[inline]
    fn push(&mut self, message: &Message) {
        if self.limits.history > 0 {
            self.state.history_bytes += message.payload().len();
            self.state.history.push_back(message.clone());
            while self.state.history.len() > self.limits.history
                || self
                    .limits
                    .history_bytes
                    .is_some_and(|cap| self.state.history_bytes > cap)
            {
                self.state.pop_front();
            }
            self.state.evict_expired(self.limits);
        }
        if self.state.subscribers == 0 {
            // An active topic keeps its history for late joiners: the idle clock restarts.
            self.state.idle_since = Some(Instant::now());
        }
        if let Some(sender) = &self.state.sender {
            // No receivers is not an error: the history keeps the message.
            let _ = sender.send(message.clone());
        }
    }

    /// Mirror: appends a message published elsewhere if it is the next one of this log.
    fn apply(&mut self, message: &Message) -> Applied {
        let id = message.id();
        if id.epoch() != self.log.epoch {
            return Applied::OtherEpoch {
                current: self.log.epoch,
            };
        }
        let last = self.state.last();
        if id.offset() <= last {
            Applied::Duplicate
        } else if id.offset() > last + 1 {
            Applied::Gap { last }
        } else {
            self.state.next += 1;
            self.push(message);
            Applied::Appended
        }
    }

    /// Mirror: moves the log forward to `next` without the messages in between (they are
    /// gone); the history is cleared so it stays contiguous, and subscribers behind count the
    /// skipped messages as lag.
    fn skip_to(&mut self, next: Offset) {
        if next > self.state.next {
            self.state.history.clear();
            self.state.history_bytes = 0;
            self.state.next = next;
        }
    }

    /// Mirror: brings the log up to `last` with `history` (ascending, this epoch's messages).
    fn catch_up(&mut self, last: Offset, history: &[Message]) {
        for message in history {
            if message.id().epoch() != self.log.epoch {
                continue;
            }
            if let Applied::Gap { .. } = self.apply(message) {
                self.skip_to(message.id().offset());
                self.apply(message);
            }
        }
        self.skip_to(last + 1);
    }
}

/// The logs of one namespace (topics, rooms, or users' direct messages).
///
/// Lock order: `topics` (read or write), then one log's `state` (or, replacing a log, the old
/// log's and then its successor's, the only place two are held), then `owners`. Nothing is
/// awaited while any of them is held.
pub(crate) struct Registry {
    topics: RwLock<HashMap<Topic, Arc<TopicLog>>>,
    /// How many of the logs each owner created.
    owners: Mutex<HashMap<Arc<str>, usize>>,
    limits: Limits,
    last_sweep: Mutex<Instant>,
    /// Hears when a log is freed (the backend detaches).
    hook: MirrorHook,
}

impl Registry {
    /// A registry whose freed logs are reported to `hook` (unwrapped, for
    /// `Arc::new_cyclic`). `limits.idle_ttl` is how long a log nobody follows is kept: the
    /// backend decides ([`Backend::idle_ttl`](crate::backend::Backend::idle_ttl)).
    pub(crate) fn new(limits: Limits, hook: MirrorHook) -> Self {
        Self {
            topics: RwLock::new(HashMap::new()),
            owners: Mutex::new(HashMap::new()),
            limits,
            last_sweep: Mutex::new(Instant::now()),
            hook,
        }
    }

    /// Bookkeeping for a log taken out of the map.
    fn removed_log(&self, log: &TopicLog) {
        crate::metrics::topics_changed(-1);
        self.release_owner(log);
        self.removed(&log.topic);
    }

    /// Gives back the owner's count of a log that left the map.
    fn release_owner(&self, log: &TopicLog) {
        let owner = log.state.lock().owner.take();
        if let Some(owner) = &owner {
            let mut owners = self.owners.lock();
            if let Some(n) = owners.get_mut(owner) {
                *n -= 1;
                if *n == 0 {
                    owners.remove(owner);
                }
            }
        }
    }

    fn removed(&self, topic: &Topic) {
        (self.hook)(topic);
    }

    pub(crate) fn contains(&self, topic: &Topic) -> bool {
        self.topics.read().contains_key(topic)
    }

    /// The epoch and last offset of the topic's log (offset 0 if it has none yet).
    pub(crate) fn position(&self, topic: &Topic) -> Option<MessageId> {
        let map = self.topics.read();
        let log = map.get(topic)?;
        let last = log.state.lock().last();
        Some(MessageId::new(log.epoch, last))
    }

    /// Mirror: applies a message published elsewhere to its topic's log.
    pub(crate) fn apply(&self, message: &Message) -> Applied {
        let map = self.topics.read();
        let Some(log) = map.get(message.topic()) else {
            return Applied::NotAttached;
        };
        let mut state = log.state.lock();
        Locked {
            log,
            state: &mut state,
            limits: &self.limits,
        }
        .apply(message)
    }

    /// Mirror: makes the topic's log the remote log `epoch` up to `last`, creating it, catching
    /// it up with `history` (ascending), or replacing it if its epoch differs (its subscribers'
    /// streams end). Returns whether it replaced a log.
    pub(crate) fn sync(
        &self,
        topic: &Topic,
        epoch: Epoch,
        last: Offset,
        history: &[Message],
    ) -> Result<bool, HubError> {
        let mut map = self.topics.write();
        let replaced = match map.get(topic) {
            Some(log) if log.epoch == epoch => {
                let mut state = log.state.lock();
                Locked {
                    log,
                    state: &mut state,
                    limits: &self.limits,
                }
                .catch_up(last, history);
                return Ok(false);
            }
            Some(_) => map.remove(topic),
            None => None,
        };
        if replaced.is_none() && map.len() >= self.limits.max_topics {
            return Err(HubError::TooManyTopics {
                limit: self.limits.max_topics,
            });
        }
        // The old log's members are this node's connections: they stay members of the new one
        // (their holds move with them), and its streams move over when they see its live
        // channel closed, once the map's lock is released; the new log waits for them.
        let log = Arc::new(TopicLog::new_with(topic.clone(), epoch, true));
        let sender = replaced.as_ref().and_then(|old| {
            let mut state = old.state.lock();
            // The new log's counts are in place before the old one points at it (its lock is
            // taken inside the old one's): a stream that sees the successor finds them set.
            let mut new = log.state.lock();
            new.holds = std::mem::take(&mut state.holds);
            new.inherited = state.subscribers + state.inherited;
            state.successor = Some(Arc::clone(&log));
            state.sender.take()
        });
        {
            let mut state = log.state.lock();
            Locked {
                log: &log,
                state: &mut state,
                limits: &self.limits,
            }
            .catch_up(last, history);
        }
        map.insert(topic.clone(), log);
        drop(map);
        drop(sender);
        let Some(old) = replaced else {
            crate::metrics::topics_changed(1);
            return Ok(false);
        };
        self.release_owner(&old);
        Ok(true)
    }

    pub(crate) fn len(&self) -> usize {
        self.topics.read().len()
    }

    /// Every log with its holds, subscribers and streams to come, for the interleaving
    /// tests' invariants.
    #[cfg(all(test, salvo_realtime_shuttle))]
    pub(crate) fn census(&self) -> Vec<(Topic, usize, usize, usize)> {
        self.topics
            .read()
            .iter()
            .map(|(topic, log)| {
                let state = log.state.lock();
                (
                    topic.clone(),
                    state.holds,
                    state.subscribers,
                    state.inherited,
                )
            })
            .collect()
    }

    /// Runs `f` on the topic's log if there is one, handing `f` back otherwise.
    fn with_existing<R, F: FnOnce(&mut Locked<'_>) -> R>(
        &self,
        topic: &Topic,
        f: F,
    ) -> Result<R, F> {
        let map = self.topics.read();
        let Some(log) = map.get(topic) else {
            return Err(f);
        };
        let mut state = log.state.lock();
        let mut locked = Locked {
            log,
            state: &mut state,
            limits: &self.limits,
        };
        Ok(f(&mut locked))
    }

    /// Inserts a new log for `topic` unless there is one; the map's write lock is held.
    fn insert_new(
        &self,
        map: &mut HashMap<Topic, Arc<TopicLog>>,
        topic: &Topic,
        claimable: bool,
    ) -> Result<Arc<TopicLog>, HubError> {
        if let Some(log) = map.get(topic) {
            return Ok(Arc::clone(log));
        }
        if map.len() >= self.limits.max_topics {
            return Err(HubError::TooManyTopics {
                limit: self.limits.max_topics,
            });
        }
        let log = Arc::new(TopicLog::new_with(
            topic.clone(),
            Epoch::random(),
            claimable,
        ));
        map.insert(topic.clone(), Arc::clone(&log));
        crate::metrics::topics_changed(1);
        Ok(log)
    }

    /// Creates the topic's log with a fresh epoch unless there is one; returns its position.
    /// A created log waits for its first subscriber, who becomes its owner.
    pub(crate) fn create(&self, topic: &Topic) -> Result<MessageId, HubError> {
        if let Some(position) = self.position(topic) {
            return Ok(position);
        }
        self.maybe_sweep();
        let mut map = self.topics.write();
        let log = self.insert_new(&mut map, topic, true)?;
        let last = log.state.lock().last();
        Ok(MessageId::new(log.epoch, last))
    }

    /// Publishes to the topic's log, creating it if needed (without an owner: server code
    /// published). A created log that keeps no history and has no subscriber is freed again.
    pub(crate) fn publish(&self, topic: &Topic, p: Publication) -> Result<Message, HubError> {
        let mut slot = Some(p);
        if let Ok(Some(message)) =
            self.with_existing(topic, |log| slot.take().map(|p| log.assign(p)))
        {
            return Ok(message);
        }
        let p = slot.ok_or_else(|| HubError::Backend("publication lost".into()))?;
        self.maybe_sweep();
        let mut map = self.topics.write();
        let log = self.insert_new(&mut map, topic, false)?;
        let mut state = log.state.lock();
        let message = Locked {
            log: &log,
            state: &mut state,
            limits: &self.limits,
        }
        .assign(p);
        let removable = state.removable(&self.limits);
        drop(state);
        if removable {
            // Published to a topic nobody follows and that keeps no history: nothing to retain.
            map.remove(topic);
            drop(map);
            self.removed_log(&log);
        }
        Ok(message)
    }

    /// Delivers a live-only notice to the topic's subscribers, if the topic has a log.
    pub(crate) fn announce(&self, topic: &Topic, p: Publication) {
        let _ = self.with_existing(topic, |log| log.announce(p));
    }

    /// Takes one hold away, and frees the log if nothing else keeps it.
    pub(crate) fn unhold(&self, topic: &Topic) {
        let _ = self.with_existing(topic, |log| {
            log.state.holds = log.state.holds.saturating_sub(1);
        });
        self.remove_if_unused(topic, None);
    }

    /// How many logs have at least one hold.
    pub(crate) fn held_count(&self) -> usize {
        self.topics
            .read()
            .values()
            .filter(|log| log.state.lock().holds > 0)
            .count()
    }

    /// Subscribes `conn` to the topic's existing log from `from`; `None` if there is no log
    /// (it was freed since it was attached). `owner` becomes the log's owner if the log waits
    /// for its first subscriber, refused if that owner already brought in
    /// [`Limits::max_topics_per_owner`] logs that still exist. `hold` adds a hold in the same
    /// step (a room member). The stream counts as a subscriber until dropped.
    #[allow(
        clippy::too_many_arguments,
        reason = "crate-private; each is one piece of the join"
    )]
    pub(crate) fn subscribe(
        self: &Arc<Self>,
        topic: &Topic,
        from: Position,
        conn: ConnectionId,
        owner: Option<&Arc<str>>,
        left: Option<Arc<Membership>>,
        hold: bool,
    ) -> Result<Option<TopicStream>, HubError> {
        let subscribed = self.with_existing(topic, |locked| {
            if std::mem::take(&mut locked.state.claimable)
                && let Some(owner) = owner
            {
                let limit = self.limits.max_topics_per_owner;
                let mut owners = self.owners.lock();
                let created = owners.entry(Arc::clone(owner)).or_insert(0);
                if *created >= limit {
                    if *created == 0 {
                        owners.remove(owner);
                    }
                    return Err(HubError::TooManyCreated { limit });
                }
                *created += 1;
                locked.state.owner = Some(Arc::clone(owner));
            }
            if hold {
                locked.state.holds += 1;
            }
            Ok(self.open(locked, topic, from, conn, left))
        });
        match subscribed {
            Ok(Ok(stream)) => Ok(Some(stream)),
            Ok(Err(refused)) => {
                // Nobody else may want the log this owner was refused.
                self.remove_if_unused(topic, None);
                Err(refused)
            }
            Err(_) => Ok(None),
        }
    }

    /// The stream of a new subscriber, under the log's lock: the seam between replay and live
    /// is fixed here.
    fn open(
        self: &Arc<Self>,
        locked: &mut Locked<'_>,
        topic: &Topic,
        from: Position,
        conn: ConnectionId,
        left: Option<Arc<Membership>>,
    ) -> TopicStream {
        {
            let state = &mut *locked.state;
            state.evict_expired(&self.limits);
            state.subscribers += 1;
            state.idle_since = None;
            let first = state.first_available();
            let last = state.last();
            let mut front = VecDeque::new();
            let start = match from {
                Position::Live => last,
                Position::Recent(n) => last.saturating_sub(n as u64).max(first - 1),
                Position::Invalid => {
                    front.push_back(Delivery::Reset(Reset {
                        topic: topic.clone(),
                        requested: None,
                        epoch: locked.log.epoch,
                        replay_after: MessageId::new(locked.log.epoch, first - 1),
                        reason: ResetReason::Invalid,
                    }));
                    first - 1
                }
                Position::After(id) => {
                    let reason = if id.epoch() != locked.log.epoch {
                        Some(ResetReason::EpochChanged)
                    } else if id.offset() > last {
                        Some(ResetReason::Ahead)
                    } else if id.offset() + 1 < first {
                        Some(ResetReason::Expired)
                    } else {
                        None
                    };
                    match reason {
                        None => id.offset(),
                        Some(reason) => {
                            front.push_back(Delivery::Reset(Reset {
                                topic: topic.clone(),
                                requested: Some(id),
                                epoch: locked.log.epoch,
                                replay_after: MessageId::new(locked.log.epoch, first - 1),
                                reason,
                            }));
                            first - 1
                        }
                    }
                }
            };
            let sender = state
                .sender
                .get_or_insert_with(|| broadcast::channel(self.limits.channel_capacity).0);
            let rx = LiveRx::new(sender.subscribe());
            TopicStream {
                registry: Arc::clone(self),
                log: Arc::clone(locked.log),
                conn,
                rx,
                front: (!front.is_empty()).then(|| Box::new(front)),
                buf: None,
                last: start,
                replay_end: last,
                held: None,
                after_replay: None,
                left,
            }
        }
    }

    /// Called when a subscriber's stream is dropped; frees the log if nothing keeps it. A stream
    /// of a replaced log that never moved is counted down in every log after it (each was
    /// waiting for it), and the current one freed if nothing else keeps it.
    fn release(&self, log: &Arc<TopicLog>) {
        let (now_unused, mut next) = {
            let mut state = log.state.lock();
            state.subscribers -= 1;
            if state.subscribers == 0 {
                state.idle_since = Some(Instant::now());
            }
            (state.removable(&self.limits), state.successor.clone())
        };
        if now_unused {
            self.remove_if_unused(&log.topic, Some(log));
        }
        while let Some(successor) = next {
            let unused = {
                let mut state = successor.state.lock();
                state.inherited = state.inherited.saturating_sub(1);
                next = state.successor.clone();
                state.removable(&self.limits)
            };
            if unused {
                self.remove_if_unused(&successor.topic, Some(&successor));
            }
        }
        self.maybe_sweep();
    }

    /// A stream moved off `log` (to its successor): one subscriber less, nothing else to count
    /// down (the successor counted the move).
    fn moved_off(&self, log: &Arc<TopicLog>) {
        log.state.lock().subscribers -= 1;
    }

    pub(crate) fn remove_if_unused(&self, topic: &Topic, expected: Option<&Arc<TopicLog>>) {
        let mut map = self.topics.write();
        if let Some(current) = map.get(topic) {
            if expected.is_some_and(|e| !Arc::ptr_eq(e, current)) {
                return;
            }
            if current.state.lock().removable(&self.limits)
                && let Some(log) = map.remove(topic)
            {
                drop(map);
                self.removed_log(&log);
            }
        }
    }

    /// Frees every log that nothing keeps any more (idle for longer than the TTL).
    pub(crate) fn sweep(&self) {
        *self.last_sweep.lock() = Instant::now();
        let mut map = self.topics.write();
        let mut removed = Vec::new();
        map.retain(|_, log| {
            let mut state = log.state.lock();
            state.evict_expired(&self.limits);
            let keep = !state.removable(&self.limits);
            if !keep {
                removed.push(Arc::clone(log));
            }
            keep
        });
        drop(map);
        for log in &removed {
            self.removed_log(log);
        }
    }

    fn maybe_sweep(&self) {
        let every = (self.limits.idle_ttl / 4).max(Duration::from_secs(1));
        let due = self.last_sweep.lock().elapsed() >= every;
        if due {
            self.sweep();
        }
    }

    /// Closes a topic: its subscribers' streams end after what they have buffered, and the log
    /// is freed. Returns whether it existed.
    pub(crate) fn close(&self, topic: &Topic) -> bool {
        let removed = self.topics.write().remove(topic);
        match removed {
            Some(log) => {
                let sender = {
                    let mut state = log.state.lock();
                    state.closed = true;
                    state.sender.take()
                };
                drop(sender);
                self.removed_log(&log);
                true
            }
            None => false,
        }
    }

    pub(crate) fn last_id(&self, topic: &Topic) -> Option<MessageId> {
        let map = self.topics.read();
        let log = map.get(topic)?;
        let state = log.state.lock();
        (state.next > 1).then(|| MessageId::new(log.epoch, state.last()))
    }

    pub(crate) fn history(&self, topic: &Topic) -> Vec<Message> {
        let map = self.topics.read();
        map.get(topic).map_or_else(Vec::new, |log| {
            let mut state = log.state.lock();
            state.evict_expired(&self.limits);
            state.history.iter().cloned().collect()
        })
    }
}

impl TopicLog {
    fn new_with(topic: Topic, epoch: Epoch, claimable: bool) -> Self {
        Self {
            topic,
            epoch,
            state: Mutex::new(LogState {
                next: 1,
                history: VecDeque::new(),
                history_bytes: 0,
                sender: None,
                subscribers: 0,
                idle_since: Some(Instant::now()),
                holds: 0,
                owner: None,
                claimable,
                successor: None,
                closed: false,
                inherited: 0,
            }),
        }
    }
}

/// One subscriber's view of one topic: replay, then live, refilled from history after lag.
pub(crate) struct TopicStream {
    registry: Arc<Registry>,
    log: Arc<TopicLog>,
    conn: ConnectionId,
    rx: LiveRx,
    /// Notices that go before everything else (a reset, a lag count).
    #[allow(clippy::box_collection, reason = "boxed like `after_replay`")]
    front: Option<Box<VecDeque<Delivery>>>,
    /// Messages copied from history, about to be delivered.
    #[allow(clippy::box_collection, reason = "boxed like `after_replay`")]
    buf: Option<Box<VecDeque<Message>>>,
    /// Offset of the last message delivered or skipped.
    last: Offset,
    /// Replay from history until `last` reaches this offset; live after.
    replay_end: Offset,
    /// A live message that arrived ahead of a gap; delivered once the gap is replayed.
    held: Option<Message>,
    /// Delivered once the replay is done (the pages of a presence snapshot); boxed, as most
    /// streams never have any.
    #[allow(
        clippy::box_collection,
        reason = "8 bytes a stream, not an empty deque's 32"
    )]
    after_replay: Option<Box<VecDeque<Delivery>>>,
    /// The room membership this stream delivers for: once it ends, the stream delivers its
    /// farewell (if any) and ends, whatever else it holds.
    left: Option<Arc<Membership>>,
}

/// One room membership's end, shared by the hub, which ends it, and the member's stream of the
/// room, which stops there: after [`end`](Self::end) the stream delivers the farewell (a notice
/// such as `unsubscribed`, if one was given) and ends, so nothing of the room follows it.
#[derive(Default)]
pub(crate) struct Membership {
    /// Set once, after `farewell`; read by the stream on every poll.
    ended: AtomicBool,
    /// Delivered once by the stream after the end.
    farewell: Mutex<Option<Delivery>>,
}

impl Membership {
    /// Ends the membership; the stream delivers `farewell` (if any) and ends.
    pub(crate) fn end(&self, farewell: Option<Delivery>) {
        if farewell.is_some() {
            *self.farewell.lock() = farewell;
        }
        self.ended.store(true, Ordering::Release);
    }

    pub(crate) fn has_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    fn take_farewell(&self) -> Option<Delivery> {
        self.farewell.lock().take()
    }
}

impl TopicStream {
    pub(crate) fn topic(&self) -> &Topic {
        &self.log.topic
    }

    /// Puts a delivery before everything else this stream delivers (a notice that must come
    /// before the topic's replay).
    pub(crate) fn push_front(&mut self, delivery: Delivery) {
        self.front.get_or_insert_default().push_front(delivery);
    }

    /// Sets what is delivered once the replay is done (a presence snapshot fetched after
    /// subscribing, for a remote backend).
    pub(crate) fn set_after_replay(&mut self, deliveries: VecDeque<Delivery>) {
        self.after_replay = (!deliveries.is_empty()).then(|| Box::new(deliveries));
    }

    /// Copies the next chunk of the replay range from history, noting a lag for whatever has
    /// already left it.
    fn refill(&mut self) {
        let limits = &self.registry.limits;
        let mut state = self.log.state.lock();
        state.evict_expired(limits);
        let first = state.first_available();
        if self.last + 1 < first {
            let gone_until = (first - 1).min(self.replay_end);
            self.front
                .get_or_insert_default()
                .push_back(Delivery::Lagged {
                    topic: self.log.topic.clone(),
                    missed: gone_until - self.last,
                });
            self.last = gone_until;
        }
        if self.last < self.replay_end {
            let skip = usize::try_from(self.last + 1 - first).unwrap_or(usize::MAX);
            let take = usize::try_from(self.replay_end - self.last)
                .unwrap_or(usize::MAX)
                .min(REPLAY_CHUNK);
            self.buf
                .get_or_insert_default()
                .extend(state.history.iter().skip(skip).take(take).cloned());
        }
        if self.buf.as_ref().is_none_or(|b| b.is_empty()) && self.last < self.replay_end {
            // History holds nothing more of the range (capacity 0): count it as lost.
            self.front
                .get_or_insert_default()
                .push_back(Delivery::Lagged {
                    topic: self.log.topic.clone(),
                    missed: self.replay_end - self.last,
                });
            self.last = self.replay_end;
        }
    }

    /// The log's live channel closed. If a log of a new epoch replaced it (a mirror whose
    /// remote log was lost), move to that log (or to the last of a chain of replacements): a
    /// reset first, then its whole history, then live, so a subscription holding several
    /// topics never loses one silently. Returns false if the log, or one it was replaced by,
    /// was closed instead (the stream ends).
    fn follow_new_epoch(&mut self) -> bool {
        let Some(mut target) = self.log.state.lock().successor.clone() else {
            return false;
        };
        let capacity = self.registry.limits.channel_capacity;
        // Each log passed counted this stream among those to come; the one it stays on counts
        // it as a subscriber instead.
        let (first, last, rx) = loop {
            let mut state = target.state.lock();
            state.inherited = state.inherited.saturating_sub(1);
            if let Some(next) = state.successor.clone() {
                drop(state);
                target = next;
                continue;
            }
            state.subscribers += 1;
            if state.closed {
                // Closed: the stream ends here (its drop releases the closed log, with nothing
                // after it to count down).
                drop(state);
                let old = std::mem::replace(&mut self.log, target);
                self.registry.moved_off(&old);
                return false;
            }
            state.idle_since = None;
            let (first, last) = (state.first_available(), state.last());
            let sender = state
                .sender
                .get_or_insert_with(|| broadcast::channel(capacity).0);
            break (first, last, sender.subscribe());
        };
        self.front
            .get_or_insert_default()
            .push_back(Delivery::Reset(Reset {
                topic: self.log.topic.clone(),
                requested: Some(MessageId::new(self.log.epoch, self.last)),
                epoch: target.epoch,
                replay_after: MessageId::new(target.epoch, first - 1),
                reason: ResetReason::EpochChanged,
            }));
        let old = std::mem::replace(&mut self.log, target);
        self.registry.moved_off(&old);
        self.rx = LiveRx::new(rx);
        self.buf = None;
        self.held = None;
        self.last = first - 1;
        self.replay_end = last;
        true
    }

    pub(crate) fn has_left(&self) -> bool {
        self.left.as_ref().is_some_and(|m| m.has_ended())
    }
}

impl Stream for TopicStream {
    type Item = Delivery;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        let this = &mut *self;
        loop {
            if this.has_left() {
                return Poll::Ready(this.left.as_ref().and_then(|m| m.take_farewell()));
            }
            if let Some(notice) = this.front.as_mut().and_then(|f| f.pop_front()) {
                return Poll::Ready(Some(notice));
            }
            if let Some(m) = this.buf.as_mut().and_then(|b| b.pop_front()) {
                this.last = m.id().offset();
                if m.is_for(this.conn) {
                    return Poll::Ready(Some(Delivery::Message(m)));
                }
                continue;
            }
            if this.last < this.replay_end {
                this.refill();
                continue;
            }
            if let Some(after) = this.after_replay.as_mut().and_then(|a| a.pop_front()) {
                return Poll::Ready(Some(after));
            }
            if let Some(m) = this.held.take() {
                this.last = m.id().offset();
                if m.is_for(this.conn) {
                    return Poll::Ready(Some(Delivery::Message(m)));
                }
                continue;
            }
            match this.rx.poll_recv(cx) {
                Poll::Ready(Live::Message(m)) if m.is_ephemeral() => {
                    // A live-only notice: sent after everything logged before it, which this
                    // stream has delivered (it reads the channel only once caught up).
                    if m.is_for(this.conn) && !this.has_left() {
                        return Poll::Ready(Some(Delivery::Message(m)));
                    }
                }
                Poll::Ready(Live::Message(m)) => {
                    let offset = m.id().offset();
                    if offset <= this.last {
                        continue; // already delivered from history
                    }
                    if offset > this.last + 1 {
                        // A gap the channel didn't report: fill it from history first.
                        this.replay_end = offset - 1;
                        this.held = Some(m);
                        continue;
                    }
                    this.last = offset;
                    if m.is_for(this.conn) && !this.has_left() {
                        return Poll::Ready(Some(Delivery::Message(m)));
                    }
                }
                Poll::Ready(Live::Lagged) => {
                    this.replay_end = this.log.state.lock().last();
                }
                Poll::Ready(Live::Closed) => {
                    if !this.follow_new_epoch() {
                        return Poll::Ready(None);
                    }
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// What the live channel gave.
enum Live {
    Message(Message),
    Lagged,
    Closed,
}

/// A wait for the next live message, owning the receiver until it resolves.
type Wait = ReusableBoxFuture<'static, (Result<Message, RecvError>, broadcast::Receiver<Message>)>;

async fn recv_owned(
    mut rx: broadcast::Receiver<Message>,
) -> (Result<Message, RecvError>, broadcast::Receiver<Message>) {
    let result = rx.recv().await;
    (result, rx)
}

/// The live side of a subscription. Buffered messages are taken with `try_recv`, with no future
/// per message; only when the channel is empty does a `recv` future wait for the next one, in a
/// box allocated once per subscription and reused for every later wait, so a wake allocates
/// nothing.
struct LiveRx {
    /// The receiver, when no wait holds it (`None` while waiting).
    rx: Option<broadcast::Receiver<Message>>,
    wait: Option<Wait>,
}

impl LiveRx {
    fn new(rx: broadcast::Receiver<Message>) -> Self {
        Self {
            rx: Some(rx),
            wait: None,
        }
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Live> {
        loop {
            if self.rx.is_none() {
                let Some(wait) = self.wait.as_mut() else {
                    return Poll::Ready(Live::Closed);
                };
                let (result, rx) = std::task::ready!(wait.poll(cx));
                self.rx = Some(rx);
                return Poll::Ready(match result {
                    Ok(m) => Live::Message(m),
                    Err(RecvError::Lagged(_)) => Live::Lagged,
                    Err(RecvError::Closed) => Live::Closed,
                });
            }
            let Some(rx) = self.rx.as_mut() else {
                return Poll::Ready(Live::Closed);
            };
            match rx.try_recv() {
                Ok(m) => return Poll::Ready(Live::Message(m)),
                Err(TryRecvError::Lagged(_)) => return Poll::Ready(Live::Lagged),
                Err(TryRecvError::Closed) => return Poll::Ready(Live::Closed),
                Err(TryRecvError::Empty) => {
                    if let Some(rx) = self.rx.take() {
                        let next = recv_owned(rx);
                        match self.wait.as_mut() {
                            Some(wait) => wait.set(next),
                            None => self.wait = Some(ReusableBoxFuture::new(next)),
                        }
                    }
                }
            }
        }
    }
}

impl Drop for TopicStream {
    fn drop(&mut self) {
        self.registry.release(&self.log);
    }
}

impl std::fmt::Debug for TopicStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicStream")
            .field("topic", &self.log.topic)
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}
