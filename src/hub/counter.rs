//! A hub wrapper that counts connections and messages.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use parking_lot::Mutex;
use serde::Serialize;

use super::{Connection, Delivery, Hub, Publication};
use crate::error::HubError;
use crate::ids::Topic;

/// Wraps any [`Hub`] and counts what passes through it; itself a [`Hub`].
///
/// It counts connections open now and since it was created, overall and per requested topic or
/// room, and the messages that go in ([`receive`](Hub::receive)) and out (delivered to
/// subscribers), lag ([`Delivery::Lagged`] totals), resets, and messages a transport dropped
/// ([`Hub::note_dropped`]). A connection is counted from a successful `join` until its
/// subscription is dropped, which `leave` does: the count is held by a guard inside the
/// subscription, so a connection whose task panics or is cancelled is still uncounted.
///
/// Per-topic counts follow the topics a connection asked for when it joined
/// ([`Connection::topics`]); a topic's entry is removed when its last connection closes.
///
/// ```
/// use salvo_realtime::{Connection, Counted, Hub, Position, PubSub, Topic};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let hub = Counted::new(PubSub::new());
/// let conn = Connection::new().subscribe(Topic::new("news")?, Position::Live);
/// let sub = hub.join(&conn).await?;
/// assert_eq!(hub.snapshot().open, 1);
/// drop(sub); // or hub.leave(&conn, sub).await
/// let s = hub.snapshot();
/// assert_eq!((s.open, s.total), (0, 1));
/// # Ok(())
/// # }
/// ```
pub struct Counted<H> {
    hub: H,
    stats: Arc<Stats>,
}

impl<H: Clone> Clone for Counted<H> {
    fn clone(&self) -> Self {
        Self {
            hub: self.hub.clone(),
            stats: Arc::clone(&self.stats),
        }
    }
}

#[derive(Default)]
struct Stats {
    open: AtomicU64,
    total: AtomicU64,
    messages_in: AtomicU64,
    messages_out: AtomicU64,
    lagged: AtomicU64,
    resets: AtomicU64,
    dropped: AtomicU64,
    topics: Mutex<HashMap<Topic, TopicCount>>,
}

/// Connection counts of one topic or room.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TopicCount {
    /// Connections open now.
    pub open: u64,
    /// Connections since the topic's entry was created.
    pub total: u64,
}

/// The counts at one moment; see [`Counted`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Snapshot {
    /// Connections open now.
    pub open: u64,
    /// Connections ever joined.
    pub total: u64,
    /// Messages received from connections.
    pub messages_in: u64,
    /// Messages delivered to connections.
    pub messages_out: u64,
    /// Messages subscribers lost to lag.
    pub lagged: u64,
    /// Resume positions that could not be honoured.
    pub resets: u64,
    /// Messages transports dropped for slow consumers.
    pub dropped: u64,
    /// Per topic or room, sorted by name.
    pub topics: Vec<(Topic, TopicCount)>,
}

impl Stats {
    fn snapshot(&self) -> Snapshot {
        let mut topics: Vec<_> = self
            .topics
            .lock()
            .iter()
            .map(|(t, c)| (t.clone(), *c))
            .collect();
        topics.sort_by(|a, b| a.0.cmp(&b.0));
        Snapshot {
            open: self.open.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            messages_in: self.messages_in.load(Ordering::Relaxed),
            messages_out: self.messages_out.load(Ordering::Relaxed),
            lagged: self.lagged.load(Ordering::Relaxed),
            resets: self.resets.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            topics,
        }
    }
}

impl<H: Hub> Counted<H> {
    /// Wraps `hub`, starting from zero.
    #[must_use]
    pub fn new(hub: H) -> Self {
        Self {
            hub,
            stats: Arc::new(Stats::default()),
        }
    }

    /// The wrapped hub (to publish, manage rooms...).
    #[must_use]
    pub fn inner(&self) -> &H {
        &self.hub
    }

    /// The counts now.
    #[must_use]
    pub fn snapshot(&self) -> Snapshot {
        self.stats.snapshot()
    }

    /// A stream of snapshots: the current one at once, then a new one whenever the counts have
    /// changed, checked every `every` (a dashboard's refresh rate). It needs a tokio runtime with
    /// the time driver; it ends when every handle of the hub has been dropped.
    pub fn watch(&self, every: Duration) -> impl Stream<Item = Snapshot> + Send + Unpin + 'static {
        let weak = Arc::downgrade(&self.stats);
        let mut interval = tokio::time::interval(every.max(Duration::from_millis(1)));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Box::pin(futures_util::stream::unfold(
            (weak, interval, None::<Snapshot>),
            |(weak, mut interval, last)| async move {
                loop {
                    interval.tick().await;
                    let now = weak.upgrade()?.snapshot();
                    if last.as_ref() != Some(&now) {
                        return Some((now.clone(), (weak, interval, Some(now))));
                    }
                }
            },
        ))
    }
}

crate::__delegate_hub! {
    impl[H: Hub] Hub for Counted<H>, to hub {
        type Subscription = CountedSubscription<H::Subscription>;

        async fn join(&self, conn: &Connection) -> Result<Self::Subscription, HubError> {
            let inner = self.hub.join(conn).await?;
            let topics: Vec<Topic> = conn.topics().iter().map(|(t, _)| t.clone()).collect();
            self.stats.open.fetch_add(1, Ordering::Relaxed);
            self.stats.total.fetch_add(1, Ordering::Relaxed);
            {
                let mut map = self.stats.topics.lock();
                for topic in &topics {
                    let count = map.entry(topic.clone()).or_default();
                    count.open += 1;
                    count.total += 1;
                }
            }
            Ok(CountedSubscription {
                inner,
                guard: Guard {
                    stats: Arc::clone(&self.stats),
                    topics,
                    delivered: 0,
                },
            })
        }

        async fn receive(&self, conn: &Connection, message: Publication) -> Result<(), HubError> {
            self.stats.messages_in.fetch_add(1, Ordering::Relaxed);
            self.hub.receive(conn, message).await
        }

        async fn leave(&self, conn: &Connection, subscription: Self::Subscription) {
            let CountedSubscription { inner, guard } = subscription;
            self.hub.leave(conn, inner).await;
            drop(guard);
        }

        fn note_dropped(&self, conn: &Connection, count: u64) {
            self.stats.dropped.fetch_add(count, Ordering::Relaxed);
            self.hub.note_dropped(conn, count);
        }

        async fn publish_from(
            &self,
            conn: &Connection,
            topic: &Topic,
            publication: Publication,
        ) -> Result<crate::hub::Published, HubError> {
            self.stats.messages_in.fetch_add(1, Ordering::Relaxed);
            self.hub.publish_from(conn, topic, publication).await
        }
    }
}

impl<H> fmt::Debug for Counted<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Counted")
            .field("stats", &self.stats.snapshot())
            .finish_non_exhaustive()
    }
}

/// The subscription of a [`Counted`] hub: the inner hub's, plus the guard that uncounts the
/// connection when dropped.
pub struct CountedSubscription<S> {
    inner: S,
    guard: Guard,
}

struct Guard {
    stats: Arc<Stats>,
    topics: Vec<Topic>,
    /// Delivered messages not yet added to the shared count (added once per burst, not per
    /// message, to keep connections from contending on one counter).
    delivered: u64,
}

impl Guard {
    fn flush(&mut self) {
        if self.delivered > 0 {
            self.stats
                .messages_out
                .fetch_add(std::mem::take(&mut self.delivered), Ordering::Relaxed);
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.flush();
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
        let mut map = self.stats.topics.lock();
        for topic in &self.topics {
            if let Some(count) = map.get_mut(topic) {
                count.open -= 1;
                if count.open == 0 {
                    map.remove(topic);
                }
            }
        }
    }
}

impl<S: Stream<Item = Delivery> + Unpin> Stream for CountedSubscription<S> {
    type Item = Delivery;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        let this = &mut *self;
        let next = Pin::new(&mut this.inner).poll_next(cx);
        match &next {
            Poll::Ready(Some(Delivery::Message(_))) => {
                this.guard.delivered += 1;
                if this.guard.delivered >= 64 {
                    this.guard.flush();
                }
            }
            Poll::Ready(Some(Delivery::Lagged { missed, .. })) => {
                this.guard
                    .stats
                    .lagged
                    .fetch_add(*missed, Ordering::Relaxed);
            }
            Poll::Ready(Some(Delivery::Reset(_))) => {
                this.guard.stats.resets.fetch_add(1, Ordering::Relaxed);
            }
            Poll::Pending | Poll::Ready(None) => this.guard.flush(),
            Poll::Ready(Some(_)) => {}
        }
        next
    }
}

impl<S> fmt::Debug for CountedSubscription<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountedSubscription")
            .field("topics", &self.guard.topics)
            .finish_non_exhaustive()
    }
}
