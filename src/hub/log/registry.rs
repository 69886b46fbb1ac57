//! The logs of one namespace: creating, publishing, mirroring a remote log, subscribing,
//! replacing and freeing them.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use crate::error::HubError;
use crate::hub::{Delivery, Message, Position, Publication, Reset, ResetReason};
use crate::ids::{ConnectionId, Epoch, MessageId, Offset, Topic};
use crate::sync::{Mutex, RwLock};

use super::stream::{LiveRx, Membership, TopicStream};
use super::{Applied, Limits, Locked, TopicLog};

/// Told when a topic's log was freed: nobody on this node follows it any more (the backend
/// detaches).
pub(crate) type MirrorHook = Box<dyn Fn(&Topic) + Send + Sync>;

/// The logs of one namespace (topics, rooms, or users' direct messages).
///
/// Lock order: `topics` (read or write), then one log's `state` (or, replacing a log, the old
/// log's and then its successor's, the only place two are held), then `owners`. Nothing is
/// awaited while any of them is held.
pub(crate) struct Registry {
    topics: RwLock<HashMap<Topic, Arc<TopicLog>>>,
    /// How many of the logs each owner created.
    owners: Mutex<HashMap<Arc<str>, usize>>,
    pub(super) limits: Limits,
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
                filter: None,
            }
        }
    }

    /// Called when a subscriber's stream is dropped; frees the log if nothing keeps it. A stream
    /// of a replaced log that never moved is counted down in every log after it (each was
    /// waiting for it), and the current one freed if nothing else keeps it.
    pub(super) fn release(&self, log: &Arc<TopicLog>) {
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
    pub(super) fn moved_off(&self, log: &Arc<TopicLog>) {
        log.state.lock().subscribers -= 1;
    }

    /// Removes `topic`'s log (only if it is `expected`, when given) if nothing uses it; returns
    /// whether it did.
    pub(crate) fn remove_if_unused(&self, topic: &Topic, expected: Option<&Arc<TopicLog>>) -> bool {
        let mut map = self.topics.write();
        if let Some(current) = map.get(topic) {
            if expected.is_some_and(|e| !Arc::ptr_eq(e, current)) {
                return false;
            }
            if current.state.lock().removable(&self.limits)
                && let Some(log) = map.remove(topic)
            {
                drop(map);
                self.removed_log(&log);
                return true;
            }
        }
        false
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
