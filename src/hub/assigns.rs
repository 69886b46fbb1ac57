//! Per-connection state: values keyed by their type, shared by every clone of one
//! [`Connection`](super::Connection), set and read by the application's handlers (Phoenix's
//! `assigns`, socketioxide's extensions).
//!
//! # Invariants
//!
//! * One lock, a `std` mutex, held only inside a method of [`Assigns`], never across an
//!   `.await` (the methods are synchronous) and never while the application's code runs except
//!   in [`Assigns::update`], whose closure is synchronous.
//! * A closure that panics inside [`Assigns::update`] leaves no half-changed value behind: the
//!   value it was changing is dropped (the entry is gone), the other entries stay, and the lock
//!   is usable again (poisoning is cleared).

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

/// The values; boxed, and only once one is set: every connection has an `Assigns`, most never
/// set a value, and an empty one costs one 32-byte allocation.
type Map = Option<Box<HashMap<TypeId, Box<dyn Any + Send>>>>;

/// A connection's own values, one per type: set in `on_connect` or an authorization rule, read
/// and changed in every handler of that connection (see
/// [`Ctx::assigns`](crate::channel::Ctx::assigns)). Cloning shares them.
///
/// An `Assigns` is one 32-byte allocation until a value is set; a [`Connection`](super::Connection)
/// makes its own only when first asked for it.
///
/// ```
/// use salvo_realtime::Connection;
///
/// #[derive(Clone, Debug, PartialEq)]
/// struct Position { x: i32, y: i32 }
///
/// let conn = Connection::new();
/// let assigns = conn.assigns();
/// assigns.insert(Position { x: 0, y: 0 });
/// assigns.update(|p: &mut Position| p.x += 1);
/// assert_eq!(conn.assigns().get::<Position>(), Some(Position { x: 1, y: 0 }));
/// ```
#[derive(Clone, Default)]
pub struct Assigns(Arc<Mutex<Map>>);

impl fmt::Debug for Assigns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Assigns")
            .field("values", &self.lock().as_ref().map_or(0, |m| m.len()))
            .finish()
    }
}

impl Assigns {
    fn lock(&self) -> MutexGuard<'_, Map> {
        // A panic inside `update` dropped the value it held; the rest is whole.
        self.0.lock().unwrap_or_else(|poisoned| {
            self.0.clear_poison();
            poisoned.into_inner()
        })
    }

    /// Sets the value of type `T`, returning the one it replaces.
    pub fn insert<T: Send + 'static>(&self, value: T) -> Option<T> {
        let mut map = self.lock();
        let old = map
            .get_or_insert_with(Box::default)
            .insert(TypeId::of::<T>(), Box::new(value));
        old.and_then(|b| b.downcast::<T>().ok()).map(|b| *b)
    }

    /// A copy of the value of type `T`, if set.
    #[must_use]
    pub fn get<T: Clone + Send + 'static>(&self) -> Option<T> {
        self.lock()
            .as_ref()?
            .get(&TypeId::of::<T>())
            .and_then(|b| b.downcast_ref::<T>())
            .cloned()
    }

    /// Whether a value of type `T` is set.
    #[must_use]
    pub fn contains<T: Send + 'static>(&self) -> bool {
        self.lock()
            .as_ref()
            .is_some_and(|m| m.contains_key(&TypeId::of::<T>()))
    }

    /// Changes the value of type `T` in place and returns what `change` returns; `None` (and
    /// `change` isn't called) if no such value is set. `change` runs under the connection's
    /// lock, so two handlers of one connection never interleave their changes; keep it short,
    /// and don't call this connection's `Assigns` from inside it (that deadlocks). If `change`
    /// panics, the value is removed rather than left half-changed.
    pub fn update<T: Send + 'static, R>(&self, change: impl FnOnce(&mut T) -> R) -> Option<R> {
        let mut guard = self.lock();
        let map = guard.as_mut()?;
        let mut value = map.remove(&TypeId::of::<T>())?;
        // Taken out while it changes: a panic in `change` drops it instead of putting back a
        // value half-way through a change.
        let result = change(value.downcast_mut::<T>()?);
        map.insert(TypeId::of::<T>(), value);
        Some(result)
    }

    /// Removes the value of type `T` and returns it.
    #[allow(clippy::must_use_candidate)] // removing is the point; the value may be dropped
    pub fn remove<T: Send + 'static>(&self) -> Option<T> {
        let old = self.lock().as_mut()?.remove(&TypeId::of::<T>());
        old.and_then(|b| b.downcast::<T>().ok()).map(|b| *b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unused_assigns_is_small() {
        // The Arc's counts and an empty mutex around a null box: one 32-byte allocation.
        assert!(std::mem::size_of::<Mutex<Map>>() <= 16);
        assert_eq!(std::mem::size_of::<Assigns>(), 8);
    }

    #[test]
    fn values_are_kept_per_type_and_shared_by_clones() {
        let a = Assigns::default();
        let b = a.clone();
        assert_eq!(a.insert(1u32), None);
        assert_eq!(b.insert(2u32), Some(1));
        a.insert("name".to_owned());
        assert_eq!(b.get::<u32>(), Some(2));
        assert_eq!(b.update(|s: &mut String| s.push('!')), Some(()));
        assert_eq!(a.get::<String>().as_deref(), Some("name!"));
        assert_eq!(a.update(|_: &mut i64| ()), None, "no i64 set");
        assert_eq!(a.remove::<u32>(), Some(2));
        assert!(!b.contains::<u32>());
    }

    #[test]
    fn a_change_that_panics_removes_its_value_and_keeps_the_rest() {
        let a = Assigns::default();
        a.insert(vec![1, 2, 3]);
        a.insert(7u8);
        let b = a.clone();
        let panicked = std::panic::catch_unwind(move || {
            b.update(|v: &mut Vec<i32>| {
                v.clear();
                panic!("half-way");
            })
        });
        assert!(panicked.is_err());
        assert_eq!(a.get::<Vec<i32>>(), None, "no half-changed value left");
        assert_eq!(a.get::<u8>(), Some(7), "the other values stay");
        a.insert(vec![9]);
        assert_eq!(
            a.get::<Vec<i32>>(),
            Some(vec![9]),
            "the lock works after the panic"
        );
    }
}
