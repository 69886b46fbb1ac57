//! One connection from its join to its leave: the one teardown both transports use.
//!
//! # Invariants
//!
//! - The hub's `leave` runs at most once per connection, with the subscription the join gave:
//!   `subscription` is taken (`Option::take`) by whichever end comes first, [`finish`]
//!   (awaited: a WebSocket's orderly end), [`leave_in_background`] (an SSE body that ended, or
//!   a drop path that can't await) or `Drop` (a task cancelled, a body dropped by the server).
//! - The admission (cap slot, drain registration, open-connection metrics) is released after
//!   the leave has been started, never before: a drain that sees every slot free has seen every
//!   leave begin, and [`finish`] has awaited it.
//! - One "disconnected" log line per connection, with the reason of the end that came first and
//!   the connection's duration.
//!
//! [`finish`]: Attached::finish
//! [`leave_in_background`]: Attached::leave_in_background

use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use futures_util::stream::Fuse;
use tracing::{Instrument, Span};

use super::{Admission, Admitted};
use crate::hub::{Connection, Hub};

/// A joined connection: the hub, its connection, its subscription (fused: never polled after
/// it ended) and its admission, until it leaves.
pub(crate) struct Attached<H: Hub> {
    hub: Arc<H>,
    conn: Connection,
    subscription: Option<Fuse<H::Subscription>>,
    /// Released after the leave started (see the invariants).
    pub(crate) admission: Admission,
    opened: Instant,
}

impl<H: Hub> Attached<H> {
    /// The connection `admitted` joined `hub` with `subscription`. It holds no span of its own
    /// (a WebSocket task runs inside one; an SSE stream passes its own): the teardown logs in
    /// the span it is given or the current one.
    pub(crate) fn new(hub: Arc<H>, admitted: Admitted, subscription: H::Subscription) -> Self {
        let Admitted { conn, admission } = admitted;
        Self {
            hub,
            conn,
            subscription: Some(subscription.fuse()),
            admission,
            opened: Instant::now(),
        }
    }

    /// The hub, the connection, the subscription and the admission, borrowed apart for a pump
    /// that runs the connection (the subscription is `None` once the connection has left).
    pub(crate) fn split(
        &mut self,
    ) -> (
        &H,
        &Connection,
        Option<&mut Fuse<H::Subscription>>,
        &mut Admission,
    ) {
        (
            &self.hub,
            &self.conn,
            self.subscription.as_mut(),
            &mut self.admission,
        )
    }

    /// The subscription and the admission, borrowed apart (a pump polls one and reads the
    /// other's drain); `None` once the connection has left.
    pub(crate) fn parts(&mut self) -> Option<(&mut Fuse<H::Subscription>, &mut Admission)> {
        Some((self.subscription.as_mut()?, &mut self.admission))
    }

    /// Leaves the hub and waits for it, then releases the admission. `reason` goes to the log,
    /// in the current span.
    pub(crate) async fn finish(mut self, reason: &'static str) {
        if let Some(subscription) = self.take(reason, &Span::current()) {
            let (hub, conn) = (Arc::clone(&self.hub), self.conn.clone());
            hub.leave(&conn, subscription).await;
        }
        // `self` drops here: nothing left to leave, the admission goes.
    }

    /// Leaves the hub from where nothing can wait (a `poll` or a `Drop`): spawns the leave and
    /// returns its handle, the first time only; the leave and the log line run in `span`.
    /// Without a runtime (process shutdown) dropping the subscription frees it, as the `Hub`
    /// contract requires.
    pub(crate) fn leave_in_background(
        &mut self,
        reason: &'static str,
        span: &Span,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let subscription = self.take(reason, span)?;
        let (hub, conn) = (Arc::clone(&self.hub), self.conn.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => Some(runtime.spawn(
                async move { hub.leave(&conn, subscription).await }.instrument(span.clone()),
            )),
            Err(_) => None,
        }
    }

    /// Takes the subscription for the one leave, and logs the end.
    fn take(&mut self, reason: &'static str, span: &Span) -> Option<H::Subscription> {
        let subscription = self.subscription.take()?.into_inner();
        let duration_ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        tracing::info!(parent: span, reason, duration_ms, "disconnected");
        Some(subscription)
    }
}

impl<H: Hub> Drop for Attached<H> {
    fn drop(&mut self) {
        // A task cancelled (its span, if any, is entered while it drops) or a stream dropped
        // before it ended.
        let _ = self.leave_in_background("dropped", &Span::current());
    }
}
