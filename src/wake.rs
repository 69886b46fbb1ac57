//! Small pieces for the per-delivery poll paths.

use std::sync::atomic::{AtomicPtr, Ordering};
use std::task::{RawWakerVTable, Waker};

/// The identity of the waker a poll registered last (what `Waker::will_wake` compares), so
/// that the next poll can skip registering the same one again. Atomics only so that its owner
/// stays `Send` and `Sync`: just the task that polls touches it.
#[derive(Default)]
pub(crate) struct LastWaker(AtomicPtr<()>, AtomicPtr<RawWakerVTable>);

impl LastWaker {
    /// Whether `waker` is the one [`set`](Self::set) last.
    pub(crate) fn is(&self, waker: &Waker) -> bool {
        std::ptr::eq(self.0.load(Ordering::Relaxed), waker.data())
            && std::ptr::eq(self.1.load(Ordering::Relaxed), waker.vtable())
    }

    /// Remembers `waker` as the one registered.
    pub(crate) fn set(&self, waker: &Waker) {
        self.0.store(waker.data().cast_mut(), Ordering::Relaxed);
        self.1.store(
            std::ptr::from_ref(waker.vtable()).cast_mut(),
            Ordering::Relaxed,
        );
    }
}
