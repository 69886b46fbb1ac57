//! Graceful shutdown: closing an endpoint's connections in batches.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::ids::ConnectionId;
use crate::wake::{LastWaker, Signal};

/// Closes an endpoint's connections for a graceful shutdown.
///
/// Salvo's graceful stop waits for in-flight requests, but an upgraded WebSocket or an endless
/// SSE stream never finishes on its own. Hand one `Drain` to your endpoints and call
/// [`Drain::close_all`] before (or while) stopping the server: every WebSocket gets close code
/// 1001 ("going away") and every SSE stream ends cleanly, in batches so that clients don't all
/// reconnect in the same instant; the hub sees each leave exactly once. New connections are
/// refused with 503 from then on.
///
/// ```
/// use std::time::Duration;
/// use salvo_realtime::Drain;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let drain = Drain::new();
/// // ... `.drain(drain.clone())` on each endpoint, then on shutdown:
/// let left_open = drain.close_all(Duration::from_secs(5)).await;
/// assert_eq!(left_open, 0);
/// # }
/// ```
#[derive(Clone)]
pub struct Drain {
    inner: Arc<DrainInner>,
}

struct DrainInner {
    conns: Mutex<HashMap<ConnectionId, Arc<Signal>>>,
    draining: AtomicBool,
    emptied: Notify,
    batch: AtomicUsize,
    pause: Mutex<Duration>,
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Drain {
    /// A drain with no connections yet; closes 256 connections per batch, 20 ms apart.
    #[must_use]
    pub fn new() -> Self {
        Self {
            inner: Arc::new(DrainInner {
                conns: Mutex::new(HashMap::new()),
                draining: AtomicBool::new(false),
                emptied: Notify::new(),
                batch: AtomicUsize::new(256),
                pause: Mutex::new(Duration::from_millis(20)),
            }),
        }
    }

    /// Connections closed per batch (default 256, at least 1) and the pause between batches
    /// (default 20 ms).
    #[must_use]
    pub fn batches(self, size: usize, pause: Duration) -> Self {
        self.inner.batch.store(size.max(1), Ordering::Relaxed);
        *self.inner.pause.lock() = pause;
        self
    }

    /// Connections open now.
    #[must_use]
    pub fn open(&self) -> usize {
        self.inner.conns.lock().len()
    }

    /// Whether [`close_all`](Self::close_all) has been called.
    #[must_use]
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// Tells every connection to close, batch by batch, and waits until all have closed or
    /// `timeout` passed. Returns how many were still open at the end (0 on a clean drain).
    pub async fn close_all(&self, timeout: Duration) -> usize {
        self.inner.draining.store(true, Ordering::Release);
        let batch = self.inner.batch.load(Ordering::Relaxed);
        let pause = *self.inner.pause.lock();
        let notices: Vec<Arc<Signal>> = self.inner.conns.lock().values().cloned().collect();
        let closing = async {
            for (i, chunk) in notices.chunks(batch).enumerate() {
                if i > 0 {
                    tokio::time::sleep(pause).await;
                }
                for signal in chunk {
                    signal.raise();
                }
            }
            loop {
                let emptied = self.inner.emptied.notified();
                if self.open() == 0 {
                    break;
                }
                emptied.await;
            }
        };
        let _ = tokio::time::timeout(timeout, closing).await;
        self.open()
    }

    /// Registers a connection; `None` when draining (the caller answers 503).
    pub(crate) fn register(&self, id: ConnectionId) -> Option<DrainGuard> {
        let signal = Arc::new(Signal::default());
        {
            let mut conns = self.inner.conns.lock();
            if self.is_draining() {
                return None;
            }
            conns.insert(id, Arc::clone(&signal));
        }
        Some(DrainGuard {
            drain: self.clone(),
            id,
            signal,
            registered: LastWaker::default(),
        })
    }
}

impl fmt::Debug for Drain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Drain")
            .field("open", &self.open())
            .field("draining", &self.is_draining())
            .finish()
    }
}

/// A connection's registration with a [`Drain`]; unregisters on drop.
pub(crate) struct DrainGuard {
    drain: Drain,
    id: ConnectionId,
    signal: Arc<Signal>,
    /// The waker last registered in `signal`.
    registered: LastWaker,
}

impl DrainGuard {
    /// Ready once the drain has asked this connection to close. Polled on every wake of the
    /// connection, so it is a flag and a waker slot ([`Signal`]) with no lock on the poll (a
    /// `Notify` takes its mutex on every poll): a poll with the same waker as last time is one
    /// comparison and one load.
    pub(crate) fn poll_requested(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.signal.poll_raised(&self.registered, cx)
    }
}

impl Drop for DrainGuard {
    fn drop(&mut self) {
        let now_empty = {
            let mut conns = self.drain.inner.conns.lock();
            conns.remove(&self.id);
            conns.is_empty()
        };
        if now_empty {
            self.drain.inner.emptied.notify_waiters();
        }
    }
}
