//! A connection's stream of deliveries, merged over its topics.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use futures_util::Stream;

use super::Delivery;
use super::log::TopicStream;
use crate::sync::{AtomicBool, Mutex};
use crate::wake::{LastWaker, TaskWaker};

/// The deliveries of one connection joined to a [`PubSub`](crate::PubSub) or
/// [`Rooms`](crate::Rooms) hub, over all its topics or rooms.
///
/// Topics are polled in turn so that a busy one can't starve the others. The stream ends when
/// every topic it follows is closed, or when the hub disconnects the connection. Dropping it
/// leaves the hub, as [`Hub::leave`](crate::Hub::leave) would.
pub struct Subscription {
    /// One stream per topic or room, polled in turn.
    streams: Vec<TopicStream>,
    /// The stream to poll first next time (round robin: a busy topic can't starve the rest).
    next: usize,
    /// The hub's handle on this subscription (rooms added, pushes, the end); `None` for a
    /// [`PubSub`](crate::PubSub) subscription, which nothing changes from outside.
    control: Option<Arc<Control>>,
    /// The waker last registered in `control`.
    registered: LastWaker,
    /// What leaving the hub means for this connection (a `Rooms` member leaves its rooms),
    /// run once when the subscription is dropped.
    on_drop: Option<Box<dyn FnOnce() + Send>>,
}

/// Lets a hub change a live subscription from outside: add rooms, push a message to this one
/// connection, end it.
///
/// # Invariants
///
/// Each change is written first (under its lock, or as a flag), then [`wake`](Self::wake)
/// wakes the connection's task through `task` ([`TaskWaker`]: the waker stays registered
/// across wakes). A poll registers its task's waker first, then reads the flags, so a change
/// made after that read always wakes the task (model-checked: `loom_` tests below).
///
/// Lock order: `added` and `pushed` are leaves, never held together or across a wake.
#[derive(Default)]
pub(crate) struct Control {
    /// Streams of rooms joined after the subscription was made, for the next poll to take.
    added: Mutex<Vec<TopicStream>>,
    /// Messages sent to this connection alone, at most [`PUSH_CAPACITY`].
    pushed: Mutex<VecDeque<Delivery>>,
    /// Whether `pushed` holds anything (set and cleared under its lock), so that a poll takes
    /// the lock only when there is something to take.
    has_pushed: AtomicBool,
    /// Whether `added` holds anything (set after pushing to it, cleared by the poll that
    /// empties it).
    dirty: AtomicBool,
    /// Set once by the hub ending the subscription: the stream ends at its next poll.
    closed: AtomicBool,
    /// The waker of the task polling the subscription.
    task: TaskWaker,
}

/// How many server-initiated messages may wait for one connection.
pub(crate) const PUSH_CAPACITY: usize = 64;

impl Control {
    /// Queues a delivery for this connection alone; hands it back when the queue is full.
    pub(crate) fn push(&self, delivery: Delivery) -> Result<(), Delivery> {
        {
            let mut pushed = self.pushed.lock();
            if pushed.len() >= PUSH_CAPACITY {
                return Err(delivery);
            }
            pushed.push_back(delivery);
            self.has_pushed.store(true, Ordering::Release);
        }
        self.wake();
        Ok(())
    }

    pub(crate) fn add(&self, stream: TopicStream) {
        self.added.lock().push(stream);
        self.dirty.store(true, Ordering::Release);
        self.wake();
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake();
    }

    /// Wakes the connection's task: call after changing what it reads.
    pub(crate) fn wake(&self) {
        self.task.wake();
    }
}

impl Subscription {
    pub(crate) fn new(
        streams: Vec<TopicStream>,
        control: Option<Arc<Control>>,
        on_drop: Option<Box<dyn FnOnce() + Send>>,
    ) -> Self {
        Self {
            streams,
            next: 0,
            control,
            registered: LastWaker::default(),
            on_drop,
        }
    }

    pub(crate) fn absorb_added(&mut self) {
        if let Some(control) = &self.control
            && control.dirty.load(Ordering::Acquire)
            && control.dirty.swap(false, Ordering::AcqRel)
        {
            let added = std::mem::take(&mut *control.added.lock());
            self.streams.extend(added);
        }
    }

    /// The topic of each stream the subscription holds, and whether it still delivers (its
    /// membership hasn't ended), for the interleaving tests' invariants.
    #[cfg(all(test, salvo_realtime_shuttle))]
    pub(crate) fn census(&mut self) -> Vec<(super::Topic, bool)> {
        self.absorb_added();
        self.streams
            .iter()
            .map(|s| (s.topic().clone(), !s.has_left()))
            .collect()
    }

    /// How many topics or rooms the subscription follows now.
    #[must_use]
    pub fn topic_count(&self) -> usize {
        self.streams.len()
    }
}

impl Stream for Subscription {
    type Item = Delivery;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        let this = &mut *self;
        if let Some(control) = &this.control {
            // Registered before the flags below are read, so a change after that read wakes
            // the task; with the same waker as last time, this is one comparison.
            this.registered.register(&control.task, cx.waker());
            if control.closed.load(Ordering::Acquire) {
                return Poll::Ready(None);
            }
        }
        this.absorb_added();
        if let Some(control) = &this.control
            && control.has_pushed.load(Ordering::Acquire)
        {
            let mut pushed = control.pushed.lock();
            let next = pushed.pop_front();
            if pushed.is_empty() {
                control.has_pushed.store(false, Ordering::Release);
            }
            drop(pushed);
            if let Some(next) = next {
                return Poll::Ready(Some(next));
            }
        }
        let mut i = 0;
        while i < this.streams.len() {
            let idx = (this.next + i) % this.streams.len();
            match Pin::new(&mut this.streams[idx]).poll_next(cx) {
                Poll::Ready(Some(delivery)) => {
                    this.next = idx + 1;
                    return Poll::Ready(Some(delivery));
                }
                Poll::Ready(None) => {
                    // Closed topic or left room: forget it (its drop releases the log), then
                    // start the round again so that no stream goes unpolled.
                    this.streams.swap_remove(idx);
                    this.next = idx;
                    i = 0;
                }
                Poll::Pending => i += 1,
            }
        }
        if this.streams.is_empty() && this.control.is_none() {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Release the topic streams first, then let the hub forget the connection.
        self.streams.clear();
        if let Some(on_drop) = self.on_drop.take() {
            on_drop();
        }
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field(
                "topics",
                &self
                    .streams
                    .iter()
                    .map(TopicStream::topic)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, salvo_realtime_loom))]
mod loom_tests {
    use std::sync::Arc;

    use futures_util::StreamExt;

    use super::{Control, Subscription};
    use crate::{Delivery, Topic};

    fn lagged() -> Delivery {
        Delivery::Lagged {
            topic: Topic::new("t").expect("a valid topic"),
            missed: 1,
        }
    }

    /// Two pushes from another thread while the connection's task polls: the task sees both,
    /// whatever the interleaving (a lost wakeup shows as a deadlock: the task parks forever).
    #[test]
    fn loom_pushes_always_wake_the_polling_task() {
        loom::model(|| {
            let control = Arc::new(Control::default());
            let mut sub = Subscription::new(Vec::new(), Some(Arc::clone(&control)), None);
            let pusher = {
                let control = Arc::clone(&control);
                loom::thread::spawn(move || {
                    for _ in 0..2 {
                        assert!(control.push(lagged()).is_ok());
                    }
                })
            };
            loom::future::block_on(async {
                for _ in 0..2 {
                    assert!(matches!(sub.next().await, Some(Delivery::Lagged { .. })));
                }
            });
            pusher.join().expect("pusher");
        });
    }

    /// A push, then the hub ending the subscription (a server-side disconnect): the task sees
    /// the push, then the end, whatever the interleaving.
    #[test]
    fn loom_a_close_after_a_push_ends_the_stream_after_it() {
        loom::model(|| {
            let control = Arc::new(Control::default());
            let mut sub = Subscription::new(Vec::new(), Some(Arc::clone(&control)), None);
            let hub = {
                let control = Arc::clone(&control);
                loom::thread::spawn(move || {
                    assert!(control.push(lagged()).is_ok());
                    control.close();
                })
            };
            loom::future::block_on(async {
                // The push may be seen or overtaken by the close, never lost while open.
                while let Some(delivery) = sub.next().await {
                    assert!(matches!(delivery, Delivery::Lagged { .. }));
                }
            });
            hub.join().expect("hub thread");
        });
    }
}
