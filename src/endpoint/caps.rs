//! Caps on open connections: in total, per client address and per identified user.
//!
//! # Invariants
//!
//! * A [`Slot`] holds one unit of each count it took (the total, its address's, its user's)
//!   and gives every one back when it drops, on every path, a refused acquire included.
//! * One lock (the tallies) guards both maps; it is never held across an `.await` (nothing
//!   here is async) and no other lock is taken under it.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use super::proxy::canonical;

/// The key the per-client cap counts: the address, with IPv6 grouped by /64 (one subscriber
/// line or host usually holds a whole /64).
pub(crate) fn cap_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// Caps on open connections, in total, per client address and per user. The limits are
/// settings (a clone has its own); the counts are shared by clones.
#[derive(Clone)]
pub(crate) struct Caps {
    max_total: usize,
    max_per_ip: usize,
    max_per_user: usize,
    retry_after: Duration,
    counts: Arc<Counts>,
}

struct Counts {
    open: AtomicUsize,
    tallies: Mutex<Tallies>,
}

#[derive(Default)]
struct Tallies {
    per_ip: HashMap<IpAddr, usize>,
    per_user: HashMap<Arc<str>, usize>,
}

/// Takes one unit of `key` in `map` if it holds fewer than `max` (and changes nothing if
/// not).
fn take<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: K, max: usize) -> bool {
    if map.get(&key).copied().unwrap_or(0) >= max {
        return false;
    }
    *map.entry(key).or_insert(0) += 1;
    true
}

/// Gives one unit of `key` back to `map`, forgetting keys that reach zero.
fn give<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(count) = map.get_mut(key) {
        *count -= 1;
        if *count == 0 {
            map.remove(key);
        }
    }
}

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CapExceeded {
    Total,
    PerIp,
    PerUser,
}

impl Caps {
    pub(crate) fn new(max_total: usize, max_per_ip: usize, max_per_user: usize) -> Self {
        Self {
            max_total,
            max_per_ip,
            max_per_user,
            retry_after: Duration::from_secs(5),
            counts: Arc::new(Counts {
                open: AtomicUsize::new(0),
                tallies: Mutex::new(Tallies::default()),
            }),
        }
    }

    pub(crate) fn set_max_per_user(&mut self, n: usize) {
        self.max_per_user = n;
    }

    pub(crate) fn set_max_total(&mut self, n: usize) {
        self.max_total = n;
    }

    pub(crate) fn set_max_per_ip(&mut self, n: usize) {
        self.max_per_ip = n;
    }

    pub(crate) fn set_retry_after(&mut self, d: Duration) {
        self.retry_after = d;
    }

    pub(crate) fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// Connections holding a slot now.
    pub(crate) fn open(&self) -> usize {
        self.counts.open.load(Ordering::Relaxed)
    }

    /// Takes a slot for a connection from `ip` (already grouped by [`cap_key`]) of `user`, or
    /// says which cap is full.
    pub(crate) fn acquire(
        &self,
        ip: Option<IpAddr>,
        user: Option<&Arc<str>>,
    ) -> Result<Slot, CapExceeded> {
        let counts = &self.counts;
        let max_total = self.max_total;
        if counts
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max_total).then_some(n + 1)
            })
            .is_err()
        {
            return Err(CapExceeded::Total);
        }
        // From here on, a refusal drops `slot`, which gives back what it took.
        let mut slot = Slot {
            counts: Arc::clone(&self.counts),
            ip: None,
            user: None,
        };
        let mut tallies = counts.tallies.lock();
        if let Some(ip) = ip {
            if !take(&mut tallies.per_ip, ip, self.max_per_ip) {
                drop(tallies);
                return Err(CapExceeded::PerIp);
            }
            slot.ip = Some(ip);
        }
        if let Some(user) = user {
            if !take(&mut tallies.per_user, Arc::clone(user), self.max_per_user) {
                drop(tallies); // before `slot` drops and takes the lock to give its address back
                return Err(CapExceeded::PerUser);
            }
            slot.user = Some(Arc::clone(user));
        }
        drop(tallies);
        Ok(slot)
    }
}

impl fmt::Debug for Caps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Caps")
            .field("open", &self.open())
            .field("max_total", &self.max_total)
            .field("max_per_ip", &self.max_per_ip)
            .field("max_per_user", &self.max_per_user)
            .finish()
    }
}

/// A held connection slot; dropping it gives the slot back, on every path.
pub(crate) struct Slot {
    counts: Arc<Counts>,
    ip: Option<IpAddr>,
    user: Option<Arc<str>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.ip.is_some() || self.user.is_some() {
            let mut tallies = self.counts.tallies.lock();
            if let Some(ip) = &self.ip {
                give(&mut tallies.per_ip, ip);
            }
            if let Some(user) = &self.user {
                give(&mut tallies.per_user, user);
            }
        }
        self.counts.open.fetch_sub(1, Ordering::AcqRel);
    }
}
