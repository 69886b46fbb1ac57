//! The synchronisation primitives of the crate's lock-free handshakes (wakers, flags, gates),
//! from `std` and `parking_lot` normally and from [loom](https://docs.rs/loom) in the model
//! checker's build (`RUSTFLAGS="--cfg salvo_realtime_loom" cargo test --lib loom`), so that
//! loom explores every interleaving of the very code that ships.
//!
//! Only state that two threads touch in a handshake goes through here; plain counters and
//! statics stay on `std` (loom's atomics can't live in a `static` or outside a model).

#[cfg(not(all(test, salvo_realtime_loom)))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU8};

#[cfg(all(test, salvo_realtime_loom))]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU8};

/// A mutex with `parking_lot`'s API (no poisoning); loom's under the model checker.
#[derive(Default)]
pub(crate) struct Mutex<T> {
    #[cfg(not(all(test, salvo_realtime_loom)))]
    inner: parking_lot::Mutex<T>,
    #[cfg(all(test, salvo_realtime_loom))]
    inner: loom::sync::Mutex<T>,
}

#[cfg(not(all(test, salvo_realtime_loom)))]
pub(crate) type MutexGuard<'a, T> = parking_lot::MutexGuard<'a, T>;

#[cfg(all(test, salvo_realtime_loom))]
pub(crate) type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

impl<T> Mutex<T> {
    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        #[cfg(not(all(test, salvo_realtime_loom)))]
        return self.inner.lock();
        #[cfg(all(test, salvo_realtime_loom))]
        return self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
    }
}
