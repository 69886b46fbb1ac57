//! One subscriber's view of one topic: replay, then live, refilled from history after lag;
//! it follows its log's successor when the log is replaced.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio_util::sync::ReusableBoxFuture;

use crate::hub::filter::SharedFilter;
use crate::hub::{Delivery, Message, Reset, ResetReason};
use crate::ids::{ConnectionId, MessageId, Offset, Topic};
use crate::sync::{AtomicBool, Mutex};

use super::registry::Registry;
use super::{REPLAY_CHUNK, TopicLog};

/// One subscriber's view of one topic: replay, then live, refilled from history after lag.
pub(crate) struct TopicStream {
    pub(super) registry: Arc<Registry>,
    pub(super) log: Arc<TopicLog>,
    pub(super) conn: ConnectionId,
    pub(super) rx: LiveRx,
    /// Notices that go before everything else (a reset, a lag count).
    #[allow(clippy::box_collection, reason = "boxed like `after_replay`")]
    pub(super) front: Option<Box<VecDeque<Delivery>>>,
    /// Messages copied from history, about to be delivered.
    #[allow(clippy::box_collection, reason = "boxed like `after_replay`")]
    pub(super) buf: Option<Box<VecDeque<Message>>>,
    /// Offset of the last message delivered or skipped.
    pub(super) last: Offset,
    /// Replay from history until `last` reaches this offset; live after.
    pub(super) replay_end: Offset,
    /// A live message that arrived ahead of a gap; delivered once the gap is replayed.
    pub(super) held: Option<Message>,
    /// Delivered once the replay is done (the pages of a presence snapshot); boxed, as most
    /// streams never have any.
    #[allow(
        clippy::box_collection,
        reason = "8 bytes a stream, not an empty deque's 32"
    )]
    pub(super) after_replay: Option<Box<VecDeque<Delivery>>>,
    /// The room membership this stream delivers for: once it ends, the stream delivers its
    /// farewell (if any) and ends, whatever else it holds.
    pub(super) left: Option<Arc<Membership>>,
    /// Which of the topic's messages this subscriber wants (see [`Filter`]); `None`: all.
    pub(super) filter: SharedFilter,
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
    /// The filter the member's stream applies, set when the membership starts.
    filter: SharedFilter,
}

impl Membership {
    /// A membership whose stream delivers what `filter` passes.
    pub(crate) fn filtered(filter: SharedFilter) -> Self {
        Self {
            filter,
            ..Self::default()
        }
    }

    /// Whether its stream applies `filter` (compared by value).
    pub(crate) fn filters_as(&self, filter: &SharedFilter) -> bool {
        self.filter.as_deref() == filter.as_deref()
    }

    pub(crate) fn filter(&self) -> &SharedFilter {
        &self.filter
    }

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
    /// Whether this subscriber gets logged message `m`: not its own message when it asked to
    /// be skipped, and one its filter passes. (Live-only notices aren't filtered.)
    fn wants(&self, m: &Message) -> bool {
        m.is_for(self.conn) && self.filter.as_ref().is_none_or(|f| f.passes(m.tag_set()))
    }

    /// Delivers only the messages `filter` passes.
    pub(crate) fn set_filter(&mut self, filter: SharedFilter) {
        self.filter = filter;
    }

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
                if this.wants(&m) {
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
                if this.wants(&m) {
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
                    if this.wants(&m) && !this.has_left() {
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
pub(super) struct LiveRx {
    /// The receiver, when no wait holds it (`None` while waiting).
    rx: Option<broadcast::Receiver<Message>>,
    wait: Option<Wait>,
}

impl LiveRx {
    pub(super) fn new(rx: broadcast::Receiver<Message>) -> Self {
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
