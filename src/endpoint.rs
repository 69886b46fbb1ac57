//! What both transport endpoints share: what a request attaches to, identity before upgrade,
//! connection caps, graceful drain.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use salvo::http::StatusCode;
use salvo::http::header::{HeaderValue, RETRY_AFTER};
use salvo::{Depot, Request, Response};
use tokio::sync::Notify;

use crate::hub::{ConnectionId, Identity, Position, Topic};
use crate::{Connection, MessageId};

/// Why a request was refused before it became a connection; mapped to an HTTP status.
///
/// ```
/// use salvo_realtime::Rejection;
///
/// let r = Rejection::unauthorized("missing token");
/// assert_eq!(r.status().as_u16(), 401);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// No or invalid credentials: 401.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Valid credentials, but not allowed: 403.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The request is malformed (bad topic name, bad resume id): 400.
    #[error("bad request: {0}")]
    BadRequest(String),
}

impl Rejection {
    /// A 401 rejection.
    #[must_use]
    pub fn unauthorized(reason: impl Into<String>) -> Self {
        Self::Unauthorized(reason.into())
    }

    /// A 403 rejection.
    #[must_use]
    pub fn forbidden(reason: impl Into<String>) -> Self {
        Self::Forbidden(reason.into())
    }

    /// A 400 rejection.
    #[must_use]
    pub fn bad_request(reason: impl Into<String>) -> Self {
        Self::BadRequest(reason.into())
    }

    /// The HTTP status this rejection answers with.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
        }
    }

    fn reason(&self) -> &str {
        match self {
            Self::Unauthorized(r) | Self::Forbidden(r) | Self::BadRequest(r) => r,
        }
    }

    pub(crate) fn write(&self, res: &mut Response) {
        res.status_code(self.status());
        res.render(self.reason().to_owned());
    }
}

type TopicsFn = dyn Fn(&Request, &Depot) -> Result<Vec<Topic>, Rejection> + Send + Sync;
type IdentifyFn = dyn Fn(&Request, &Depot) -> Result<Option<Identity>, Rejection> + Send + Sync;

/// Settings both endpoints share; set through the endpoint's builder methods.
#[derive(Clone)]
pub(crate) struct Common {
    topic_param: Arc<str>,
    topics: Option<Arc<TopicsFn>>,
    identify: Option<Arc<IdentifyFn>>,
    pub(crate) caps: Caps,
    pub(crate) drain: Drain,
    max_recent: usize,
}

impl Common {
    pub(crate) fn new() -> Self {
        Self {
            topic_param: Arc::from("topic"),
            topics: None,
            identify: None,
            caps: Caps::new(10_000, 64),
            drain: Drain::new(),
            max_recent: 1_000,
        }
    }

    pub(crate) fn set_topic_param(&mut self, name: &str) {
        self.topic_param = Arc::from(name);
    }

    pub(crate) fn set_topics<F>(&mut self, f: F)
    where
        F: Fn(&Request, &Depot) -> Result<Vec<Topic>, Rejection> + Send + Sync + 'static,
    {
        self.topics = Some(Arc::new(f));
    }

    pub(crate) fn set_identify<F>(&mut self, f: F)
    where
        F: Fn(&Request, &Depot) -> Result<Option<Identity>, Rejection> + Send + Sync + 'static,
    {
        self.identify = Some(Arc::new(f));
    }

    /// The topics a request asks for: the closure's answer, else the path parameter named
    /// `topic_param`, else every query value of that name.
    fn topics(&self, req: &Request, depot: &Depot) -> Result<Vec<Topic>, Rejection> {
        if let Some(f) = &self.topics {
            return f(req, depot);
        }
        let names: Vec<&str> = match req.params().get(&*self.topic_param) {
            Some(name) => vec![name.as_str()],
            None => req
                .queries()
                .get_vec(&*self.topic_param)
                .map(|v| v.iter().map(String::as_str).collect())
                .unwrap_or_default(),
        };
        if names.is_empty() {
            return Err(Rejection::bad_request(format!(
                "no topic given (path or query parameter `{}`)",
                self.topic_param
            )));
        }
        names
            .into_iter()
            .map(|n| Topic::new(n).map_err(|e| Rejection::bad_request(e.to_string())))
            .collect()
    }

    /// Builds the hub connection for a request: identity, topics and start position. `resume` is
    /// the last id the client saw (header or query); it applies when the request names one
    /// topic. Otherwise `recent=N` asks for the last N retained messages.
    pub(crate) fn connection(
        &self,
        req: &Request,
        depot: &Depot,
        resume: Option<&str>,
    ) -> Result<Connection, Rejection> {
        let identity = match &self.identify {
            Some(f) => f(req, depot)?,
            None => None,
        };
        let topics = self.topics(req, depot)?;
        let position = match resume.filter(|s| !s.is_empty()) {
            Some(last) if topics.len() == 1 => Position::After(
                last.parse::<MessageId>()
                    .map_err(|e| Rejection::bad_request(format!("resume position: {e}")))?,
            ),
            _ => match req.query::<String>("recent") {
                Some(n) => Position::Recent(
                    n.parse::<usize>()
                        .map_err(|_| Rejection::bad_request("`recent` must be a number"))?
                        .min(self.max_recent),
                ),
                None => Position::Live,
            },
        };
        let mut conn = Connection::new();
        if let Some(identity) = identity {
            conn = conn.authenticated(identity);
        }
        if let Some(addr) = req.remote_addr().clone().into_std() {
            conn = conn.remote_addr(addr);
        }
        Ok(topics
            .into_iter()
            .fold(conn, |c, topic| c.subscribe(topic, position)))
    }
}

impl fmt::Debug for Common {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Common")
            .field("topic_param", &self.topic_param)
            .field("custom_topics", &self.topics.is_some())
            .field("identify", &self.identify.is_some())
            .field("caps", &self.caps)
            .finish_non_exhaustive()
    }
}

/// Caps on open connections, in total and per client IP; shared by clones of an endpoint.
#[derive(Clone)]
pub(crate) struct Caps {
    inner: Arc<CapsInner>,
}

struct CapsInner {
    max_total: AtomicUsize,
    max_per_ip: AtomicUsize,
    retry_after: Mutex<Duration>,
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
            inner: Arc::new(CapsInner {
                max_total: AtomicUsize::new(max_total),
                max_per_ip: AtomicUsize::new(max_per_ip),
                retry_after: Mutex::new(Duration::from_secs(5)),
                open: AtomicUsize::new(0),
                per_ip: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub(crate) fn set_max_total(&self, n: usize) {
        self.inner.max_total.store(n, Ordering::Relaxed);
    }

    pub(crate) fn set_max_per_ip(&self, n: usize) {
        self.inner.max_per_ip.store(n, Ordering::Relaxed);
    }

    pub(crate) fn set_retry_after(&self, d: Duration) {
        *self.inner.retry_after.lock() = d;
    }

    /// Connections holding a slot now.
    pub(crate) fn open(&self) -> usize {
        self.inner.open.load(Ordering::Relaxed)
    }

    /// Takes a slot for a connection from `ip`, or says which cap is full.
    pub(crate) fn acquire(&self, ip: Option<IpAddr>) -> Result<Slot, CapExceeded> {
        let inner = &self.inner;
        let max_total = inner.max_total.load(Ordering::Relaxed);
        if inner
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max_total).then_some(n + 1)
            })
            .is_err()
        {
            return Err(CapExceeded::Total);
        }
        let mut slot = Slot {
            caps: self.clone(),
            ip: None,
        };
        if let Some(ip) = ip {
            let max = inner.max_per_ip.load(Ordering::Relaxed);
            let mut map = inner.per_ip.lock();
            let count = map.entry(ip).or_insert(0);
            if *count >= max {
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

    /// Answers a refused request: 503 when the server is full, 429 when this client has too
    /// many connections, both with `Retry-After`.
    pub(crate) fn reject(&self, which: CapExceeded, res: &mut Response) {
        let (status, reason) = match which {
            CapExceeded::Total => (StatusCode::SERVICE_UNAVAILABLE, "too many connections"),
            CapExceeded::PerIp => (
                StatusCode::TOO_MANY_REQUESTS,
                "too many connections from this address",
            ),
        };
        let secs = self.inner.retry_after.lock().as_secs().max(1);
        res.status_code(status);
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            res.headers_mut().insert(RETRY_AFTER, v);
        }
        res.render(reason);
    }
}

impl fmt::Debug for Caps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Caps")
            .field("open", &self.open())
            .field("max_total", &self.inner.max_total.load(Ordering::Relaxed))
            .field("max_per_ip", &self.inner.max_per_ip.load(Ordering::Relaxed))
            .finish()
    }
}

/// A held connection slot; dropping it gives the slot back, on every path.
pub(crate) struct Slot {
    caps: Caps,
    ip: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let inner = &self.caps.inner;
        if let Some(ip) = self.ip {
            let mut map = inner.per_ip.lock();
            if let Some(count) = map.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    map.remove(&ip);
                }
            }
        }
        inner.open.fetch_sub(1, Ordering::AcqRel);
    }
}

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
    conns: Mutex<HashMap<ConnectionId, Arc<Notify>>>,
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
        let notices: Vec<Arc<Notify>> = self.inner.conns.lock().values().cloned().collect();
        let closing = async {
            for (i, chunk) in notices.chunks(batch).enumerate() {
                if i > 0 {
                    tokio::time::sleep(pause).await;
                }
                for notify in chunk {
                    notify.notify_one();
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
        let notify = Arc::new(Notify::new());
        {
            let mut conns = self.inner.conns.lock();
            if self.is_draining() {
                return None;
            }
            conns.insert(id, Arc::clone(&notify));
        }
        Some(DrainGuard {
            drain: self.clone(),
            id,
            notify,
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
    notify: Arc<Notify>,
}

impl DrainGuard {
    /// Completes when the drain asks this connection to close. The future owns what it needs,
    /// so a connection creates it once and keeps it pinned across all its waits.
    pub(crate) fn requested(&self) -> impl Future<Output = ()> + Send + 'static {
        let notify = Arc::clone(&self.notify);
        async move { notify.notified().await }
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

/// Everything a connection holds until it ends: its cap slot and drain registration.
pub(crate) struct Admission {
    pub(crate) _slot: Slot,
    pub(crate) drain: DrainGuard,
}

impl Common {
    /// Admits a request as a connection or answers it (503/429 with `Retry-After`). Nothing is
    /// held when this fails.
    pub(crate) fn admit(
        &self,
        req: &Request,
        conn: ConnectionId,
        res: &mut Response,
    ) -> Option<Admission> {
        if self.drain.is_draining() {
            self.caps.reject(CapExceeded::Total, res);
            return None;
        }
        let slot = match self.caps.acquire(req.remote_addr().ip()) {
            Ok(slot) => slot,
            Err(which) => {
                tracing::warn!(peer = ?req.remote_addr(), cap = ?which, "connection refused: cap reached");
                self.caps.reject(which, res);
                return None;
            }
        };
        let Some(drain) = self.drain.register(conn) else {
            self.caps.reject(CapExceeded::Total, res);
            return None;
        };
        Some(Admission { _slot: slot, drain })
    }
}

/// The builder methods both endpoints share.
macro_rules! common_builders {
    () => {
        /// The path or query parameter naming the topic (or room) to attach to: the path
        /// parameter if the route has it, else every query value of that name. Default: `"topic"`.
        #[must_use]
        pub fn topic_param(mut self, name: &str) -> Self {
            self.common.set_topic_param(name);
            self
        }

        /// Decides the topics from the request with a closure, instead of a parameter. Return
        /// a [`Rejection`](crate::Rejection) to refuse the request (400/401/403).
        #[must_use]
        pub fn topics<F>(mut self, f: F) -> Self
        where
            F: Fn(&salvo::Request, &salvo::Depot) -> Result<Vec<crate::Topic>, crate::Rejection>
                + Send
                + Sync
                + 'static,
        {
            self.common.set_topics(f);
            self
        }

        /// Establishes who is connecting, before anything is sent: the closure sees the request
        /// and the [`Depot`](salvo::Depot) (so auth middleware in front works) and returns an
        /// identity, `None` for anonymous, or a [`Rejection`](crate::Rejection) (401/403). A
        /// rejected request never joins the hub. Default: everyone is anonymous.
        #[must_use]
        pub fn identify<F>(mut self, f: F) -> Self
        where
            F: Fn(
                    &salvo::Request,
                    &salvo::Depot,
                ) -> Result<Option<crate::Identity>, crate::Rejection>
                + Send
                + Sync
                + 'static,
        {
            self.common.set_identify(f);
            self
        }

        /// Most connections open at once on this endpoint; past it, 503 with `Retry-After`.
        /// Default: 10,000.
        #[must_use]
        pub fn max_connections(self, n: usize) -> Self {
            self.common.caps.set_max_total(n);
            self
        }

        /// Most connections open at once from one client IP; past it, 429 with `Retry-After`.
        /// Default: 64.
        #[must_use]
        pub fn max_connections_per_ip(self, n: usize) -> Self {
            self.common.caps.set_max_per_ip(n);
            self
        }

        /// The `Retry-After` sent with 503 and 429. Default: 5 s.
        #[must_use]
        pub fn retry_after(self, d: std::time::Duration) -> Self {
            self.common.caps.set_retry_after(d);
            self
        }

        /// Registers the endpoint's connections with `drain` for graceful shutdown. Default: a
        /// drain of its own, reachable through [`drain_handle`](Self::drain_handle).
        #[must_use]
        pub fn drain(mut self, drain: crate::Drain) -> Self {
            self.common.drain = drain;
            self
        }

        /// The endpoint's [`Drain`](crate::Drain).
        #[must_use]
        pub fn drain_handle(&self) -> crate::Drain {
            self.common.drain.clone()
        }

        /// Connections open on this endpoint now.
        #[must_use]
        pub fn open_connections(&self) -> usize {
            self.common.caps.open()
        }
    };
}
pub(crate) use common_builders;
