//! The locks and atomics of the hub core and of the crate's wake handshakes, from `std` and
//! `parking_lot` normally and from a model checker in its own test builds, so that the checker
//! explores the interleavings of the very code that ships:
//!
//! * [loom](https://docs.rs/loom) (`RUSTFLAGS="--cfg salvo_realtime_loom"`): every interleaving
//!   and the C11 memory model, for the small lock-free handshakes (`loom_` tests);
//! * [shuttle](https://docs.rs/shuttle) (`RUSTFLAGS="--cfg salvo_realtime_shuttle"`):
//!   randomized and PCT schedules of whole hub operations on several threads, preempting at
//!   every lock and atomic here (`shuttle_` tests).
//!
//! `.ci/model` runs both. Plain counters and statics stay on `std` (a model's atomics can't
//! live in a `static` or outside a model run).

#[cfg(not(any(all(test, salvo_realtime_loom), all(test, salvo_realtime_shuttle))))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32};

#[cfg(all(test, salvo_realtime_loom))]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU8, AtomicU32};

#[cfg(all(test, salvo_realtime_shuttle))]
pub(crate) use shuttle::sync::atomic::{AtomicBool, AtomicU8, AtomicU32};

#[cfg(not(any(all(test, salvo_realtime_loom), all(test, salvo_realtime_shuttle))))]
mod imp {
    pub(crate) type Mutex<T> = parking_lot::Mutex<T>;
    pub(crate) type MutexGuard<'a, T> = parking_lot::MutexGuard<'a, T>;
    pub(crate) type RwLock<T> = parking_lot::RwLock<T>;
    pub(crate) type ReadGuard<'a, T> = parking_lot::RwLockReadGuard<'a, T>;
    pub(crate) type WriteGuard<'a, T> = parking_lot::RwLockWriteGuard<'a, T>;

    pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        m.lock()
    }
    pub(crate) fn read<T>(l: &RwLock<T>) -> ReadGuard<'_, T> {
        l.read()
    }
    pub(crate) fn write<T>(l: &RwLock<T>) -> WriteGuard<'_, T> {
        l.write()
    }
}

#[cfg(any(all(test, salvo_realtime_loom), all(test, salvo_realtime_shuttle)))]
mod imp {
    #[cfg(salvo_realtime_loom)]
    use loom::sync as model;
    #[cfg(all(salvo_realtime_shuttle, not(salvo_realtime_loom)))]
    use shuttle::sync as model;
    use std::sync::PoisonError;

    pub(crate) type Mutex<T> = model::Mutex<T>;
    pub(crate) type MutexGuard<'a, T> = model::MutexGuard<'a, T>;
    pub(crate) type RwLock<T> = model::RwLock<T>;
    pub(crate) type ReadGuard<'a, T> = model::RwLockReadGuard<'a, T>;
    pub(crate) type WriteGuard<'a, T> = model::RwLockWriteGuard<'a, T>;

    // A panic in a model run fails the run; poisoning adds nothing.
    pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        m.lock().unwrap_or_else(PoisonError::into_inner)
    }
    pub(crate) fn read<T>(l: &RwLock<T>) -> ReadGuard<'_, T> {
        l.read().unwrap_or_else(PoisonError::into_inner)
    }
    pub(crate) fn write<T>(l: &RwLock<T>) -> WriteGuard<'_, T> {
        l.write().unwrap_or_else(PoisonError::into_inner)
    }
}

pub(crate) use imp::{MutexGuard, ReadGuard, WriteGuard};

/// A mutex with `parking_lot`'s API (no poisoning).
#[derive(Default)]
pub(crate) struct Mutex<T>(imp::Mutex<T>);

impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(imp::Mutex::new(value))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        imp::lock(&self.0)
    }
}

/// A readers-writer lock with `parking_lot`'s API (no poisoning).
#[derive(Default)]
pub(crate) struct RwLock<T>(imp::RwLock<T>);

impl<T> RwLock<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(imp::RwLock::new(value))
    }

    pub(crate) fn read(&self) -> ReadGuard<'_, T> {
        imp::read(&self.0)
    }

    pub(crate) fn write(&self) -> WriteGuard<'_, T> {
        imp::write(&self.0)
    }
}
