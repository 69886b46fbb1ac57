//! An entry into a room cut short: what undoes it when the future that was entering is dropped
//! at an await point, and how a drop path runs the async undo without waiting.

use super::Inner;
use crate::hub::Identity;
use crate::hub::backend::Backend;
use crate::hub::log::{Membership, TopicStream};
use crate::ids::{ConnectionId, Topic};

/// A remote join in progress. Dropped before it is `done` (the join was cut short or failed):
/// if it holds the stream (the connection counts locally), it drops the stream and undoes the
/// membership, locally and (in a spawned task) remotely; before that, it frees the room's log
/// if attaching it created one that nobody follows.
pub(super) struct Entering<'a, B: Backend> {
    pub(super) inner: &'a Inner<B>,
    pub(super) conn: ConnectionId,
    pub(super) identity: Option<&'a Identity>,
    pub(super) room: &'a Topic,
    pub(super) membership: &'a Membership,
    pub(super) stream: Option<TopicStream>,
    pub(super) done: bool,
}

impl<B: Backend> Drop for Entering<'_, B> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        match self.stream.take() {
            Some(stream) => {
                // The stream first, so that the room's log can be freed by the exit.
                drop(stream);
                self.inner
                    .exit(self.conn, self.identity, self.room, self.membership, None);
            }
            // Attaching may have created a log that nobody follows.
            None => {
                self.inner.rooms.release(self.room);
            }
        }
    }
}

/// Runs a future from a drop path: polls it once here, so that a backend that needs no wait
/// (the in-memory one) is done before the drop returns; if it has to wait, a spawned task
/// finishes it. Without a runtime (a hub dropped after its runtime) the one poll happens inside
/// a throwaway runtime, and whatever would wait is left undone.
pub(super) fn finish_in_drop_path(
    mut task: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
) {
    let poll_once = |task: &mut std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>| {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        task.as_mut().poll(&mut cx).is_ready()
    };
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            if !poll_once(&mut task) {
                runtime.spawn(task);
            }
        }
        Err(_) => {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                let _context = runtime.enter();
                let _ = poll_once(&mut task);
                drop(task);
            }
        }
    }
}
