//! One topic's message log: id assignment, bounded history and live fan-out ([`TopicLog`],
//! here), the logs of one namespace ([`registry`]), and the per-subscriber stream that replays,
//! refills after lag and continues live without gap or duplicate ([`stream`]).
//!
//! # Invariants
//!
//! A log's [`LogState`] is the one place its counts live, all under its lock:
//!
//! * `next - 1` is the offset of the last message; `history` holds the newest messages, oldest
//!   first and contiguous (`first_available()..=last()`), within the byte and age limits.
//! * `subscribers` counts the [`stream::TopicStream`]s on this log (each adds one when it is
//!   opened here or moves here, removes it when dropped or moved off); `holds` counts this
//!   node's room members ([`Rooms`](crate::Rooms)); `inherited` the streams of the logs this
//!   one replaced that haven't moved here yet. A log is freed only when all three are zero
//!   (and its history is empty or idle past the TTL).
//! * `successor` is set once, by a replacement, before the live channel closes; `closed` by a
//!   close. A stream that sees the channel closed follows `successor`, or ends.
//!
//! The delivery order of one stream: its front notices (a reset, a lag count), then the replay
//! from history (refilled a chunk at a time), then what comes once the replay is done (a
//! presence snapshot), then a live message held back while a gap before it was replayed, then
//! live messages. A live message at or before the last offset delivered is skipped (it came
//! through the replay), one beyond the next offset opens a replay of the gap.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use crate::hub::config::HubConfig;
use crate::hub::{Message, Publication};
use crate::ids::{Epoch, MessageId, Offset, Topic};
use crate::sync::Mutex;

pub(crate) mod registry;
pub(crate) mod stream;

pub(crate) use registry::{MirrorHook, Registry};
pub(crate) use stream::{Membership, TopicStream};

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

/// A log's counts and contents, all under its one lock (see the module's invariants).
pub(crate) struct LogState {
    /// The offset the next message gets; `next - 1` is the last one's.
    next: Offset,
    /// The newest messages, oldest first and contiguous, within the byte and age limits.
    history: VecDeque<Message>,
    /// The payload bytes `history` holds, for the byte limit.
    history_bytes: usize,
    /// The live channel; `None` once closed (a close or a replacement), after `closed` or
    /// `successor` is set.
    sender: Option<broadcast::Sender<Message>>,
    /// The streams on this log (each counts itself when opened here or moved here).
    subscribers: usize,
    /// Since when nothing keeps the log (no subscriber, hold or inherited stream): the idle
    /// TTL counts from here. `None` while something does.
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
