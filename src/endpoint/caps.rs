//! Caps on open connections, in total and per client address.

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

/// Caps on open connections, in total and per client address. The limits are settings (a
/// clone has its own); the counts are shared by clones.
#[derive(Clone)]
pub(crate) struct Caps {
    max_total: usize,
    max_per_ip: usize,
    retry_after: Duration,
    counts: Arc<Counts>,
}

struct Counts {
    open: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CapExceeded {
    Total,
    PerIp,
}

impl Caps {
    pub(crate) fn new(max_total: usize, max_per_ip: usize) -> Self {
        Self {
            max_total,
            max_per_ip,
            retry_after: Duration::from_secs(5),
            counts: Arc::new(Counts {
                open: AtomicUsize::new(0),
                per_ip: Mutex::new(HashMap::new()),
            }),
        }
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

    /// Takes a slot for a connection from `ip` (already grouped by [`cap_key`]), or says which
    /// cap is full.
    pub(crate) fn acquire(&self, ip: Option<IpAddr>) -> Result<Slot, CapExceeded> {
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
        let mut slot = Slot {
            counts: Arc::clone(&self.counts),
            ip: None,
        };
        if let Some(ip) = ip {
            let mut map = counts.per_ip.lock();
            let count = map.entry(ip).or_insert(0);
            if *count >= self.max_per_ip {
                if *count == 0 {
                    map.remove(&ip);
                }
                drop(map);
                return Err(CapExceeded::PerIp); // `slot` drops and gives the total back
            }
            *count += 1;
            drop(map);
            slot.ip = Some(ip);
        }
        Ok(slot)
    }
}

impl fmt::Debug for Caps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Caps")
            .field("open", &self.open())
            .field("max_total", &self.max_total)
            .field("max_per_ip", &self.max_per_ip)
            .finish()
    }
}

/// A held connection slot; dropping it gives the slot back, on every path.
pub(crate) struct Slot {
    counts: Arc<Counts>,
    ip: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut map = self.counts.per_ip.lock();
            if let Some(count) = map.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    map.remove(&ip);
                }
            }
        }
        self.counts.open.fetch_sub(1, Ordering::AcqRel);
    }
}
