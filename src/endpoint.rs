//! The one connection lifecycle both transports share. A request is validated completely
//! (handshake, origin, topics, resume positions, identity, caps) into an admitted connection or
//! one typed [`Refusal`] with one status map; only then does it join the hub. The transports
//! (`ws`, `sse`) then only frame and pump.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt;
use parking_lot::Mutex;
use salvo::http::StatusCode;
use salvo::http::header::{HOST, HeaderValue, ORIGIN, RETRY_AFTER};
use salvo::{Depot, Request, Response};
use tokio::sync::Notify;

use crate::error::HubError;
use crate::hub::{ConnectionId, DIRECT_PREFIX, Hub, Identity, Position, Topic};
use crate::metrics::ConnMetrics;
use crate::wake::{LastWaker, Signal};
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

    pub(crate) fn reason(&self) -> &str {
        match self {
            Self::Unauthorized(r) | Self::Forbidden(r) | Self::BadRequest(r) => r,
        }
    }
}

/// A bad topic name is a bad request (400), so `Topic::new(..)?` works in a
/// [`topics`](crate::ws::WsEndpoint::topics) closure.
///
/// ```
/// use salvo_realtime::{Rejection, Topic};
///
/// fn topics(user: &str) -> Result<Vec<Topic>, Rejection> {
///     Ok(vec![Topic::new("lobby")?, Topic::new(&format!("{user}.inbox"))?])
/// }
/// assert_eq!(topics("alice").map(|t| t.len()), Ok(2));
/// assert_eq!(topics("a\nb").map_err(|r| r.status().as_u16()), Err(400));
/// ```
impl From<crate::error::InvalidTopic> for Rejection {
    fn from(e: crate::error::InvalidTopic) -> Self {
        Self::bad_request(e.to_string())
    }
}

/// An unreadable message id is a bad request (400).
///
/// ```
/// use salvo_realtime::{MessageId, Rejection};
///
/// let parse = |s: &str| -> Result<MessageId, Rejection> { Ok(s.parse()?) };
/// assert_eq!(parse("junk").map_err(|r| r.status().as_u16()), Err(400));
/// ```
impl From<crate::error::ParseIdError> for Rejection {
    fn from(e: crate::error::ParseIdError) -> Self {
        Self::bad_request(e.to_string())
    }
}

type TopicsFn = dyn Fn(&Request, &Depot) -> Result<Vec<Topic>, Rejection> + Send + Sync;
type IdentityFuture =
    std::pin::Pin<Box<dyn Future<Output = Result<Option<Identity>, Rejection>> + Send>>;
type IdentifyFn = dyn Fn(&Request, &Depot) -> IdentityFuture + Send + Sync;

/// Why a request did not become a connection: every check of the lifecycle ends in one of
/// these, and [`Refusal::status`] is the one map from refusal to HTTP status, the same for
/// both transports by construction.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The endpoint is draining for shutdown: 503 with `Retry-After`.
    Draining,
    /// Not a valid WebSocket handshake (RFC 6455 §4.2.1): 400.
    Handshake(&'static str),
    /// A `Sec-WebSocket-Version` other than 13: 426 with `Sec-WebSocket-Version: 13`.
    Version,
    /// The `Origin` is not allowed (or missing when required, or sent twice): 403.
    Origin,
    /// Refused by the request's own data or the application's closures: 400, 401 or 403.
    Rejected(Rejection),
    /// A connection cap is full: 503 (total) or 429 (per client address), with `Retry-After`.
    Cap(CapExceeded),
    /// The hub refused the join; see [`Refusal::status`] for the map.
    Hub(HubError),
    /// One of the application's closures (named) panicked: 500; nothing was joined or counted.
    Panicked(&'static str),
}

impl From<Rejection> for Refusal {
    fn from(r: Rejection) -> Self {
        Self::Rejected(r)
    }
}

impl Refusal {
    /// The one status map, written out in the README's "One lifecycle, one status map" (a
    /// test checks every hub error against it). Hub errors: bad names, too many subscriptions,
    /// bad payloads and JSON, unsupported requests are 400 (the client can fix the request);
    /// `InboundRejected`, `Refused` (an authorization rule or `on_connect`), `NotSubscribed`
    /// and `NotJoined` (the server ended the connection while it joined) 403;
    /// `TooManyCreated` 429 (that client's own limit); `TooManyTopics`, `Backend` and
    /// `QueueFull` 503 (try later); `AlreadyJoined` 500.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::Draining => StatusCode::SERVICE_UNAVAILABLE,
            Self::Handshake(_) => StatusCode::BAD_REQUEST,
            Self::Version => StatusCode::UPGRADE_REQUIRED,
            Self::Origin => StatusCode::FORBIDDEN,
            Self::Rejected(r) => r.status(),
            Self::Panicked(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Cap(CapExceeded::Total) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Cap(CapExceeded::PerIp) => StatusCode::TOO_MANY_REQUESTS,
            Self::Hub(e) => match e {
                HubError::InvalidTopic(_)
                | HubError::InvalidEvent(_)
                | HubError::PayloadTooLarge { .. }
                | HubError::TooManySubscriptions { .. }
                | HubError::JsonTooDeep { .. }
                | HubError::Json(_) => StatusCode::BAD_REQUEST,
                HubError::InboundRejected
                | HubError::NotJoined(_)
                | HubError::Refused(_)
                | HubError::NotSubscribed(_) => StatusCode::FORBIDDEN,
                HubError::Unsupported(_) => StatusCode::BAD_REQUEST,
                HubError::TooManyCreated { .. } => StatusCode::TOO_MANY_REQUESTS,
                HubError::TooManyTopics { .. }
                | HubError::Backend(_)
                | HubError::QueueFull { .. } => StatusCode::SERVICE_UNAVAILABLE,
                HubError::AlreadyJoined(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }

    /// What the client is told. Never a backend's own error text (it may hold addresses or
    /// credentials): that goes to the log only.
    fn brief(&self) -> String {
        match self {
            Self::Draining => "the server is shutting down".into(),
            Self::Handshake(why) => (*why).into(),
            Self::Version => "unsupported websocket version (this server speaks 13)".into(),
            Self::Origin => "origin not allowed".into(),
            Self::Rejected(r) => r.reason().into(),
            Self::Panicked(_) => "internal error".into(),
            Self::Cap(CapExceeded::Total) => "too many connections".into(),
            Self::Cap(CapExceeded::PerIp) => "too many connections from this address".into(),
            Self::Hub(HubError::Backend(_)) => "service unavailable, try again later".into(),
            Self::Hub(HubError::TooManyTopics { .. }) => "the server is full".into(),
            Self::Hub(HubError::InboundRejected) => "this hub refused the connection".into(),
            Self::Hub(HubError::NotJoined(_)) => "the server ended this connection".into(),
            Self::Hub(HubError::AlreadyJoined(_)) => "internal error".into(),
            Self::Hub(HubError::Refused(r)) => format!("{}: {}", r.code(), r.message()),
            Self::Hub(other) => other.to_string(),
        }
    }

    /// Answers the request: status, a short text body, and `Retry-After` (503, 429) or
    /// `Sec-WebSocket-Version` (426).
    pub(crate) fn respond(&self, res: &mut Response, retry_after: Duration) {
        let status = self.status();
        res.status_code(status);
        if matches!(
            status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) && let Ok(v) = HeaderValue::from_str(&retry_after.as_secs().max(1).to_string())
        {
            res.headers_mut().insert(RETRY_AFTER, v);
        }
        if let Self::Version = self {
            res.headers_mut().insert(
                salvo::http::header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        res.render(self.brief());
    }

    /// The `reason` label of `salvo_realtime_refusals_total` (crate docs, "Metrics").
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Draining => "draining",
            Self::Handshake(_) | Self::Version => "handshake",
            Self::Origin | Self::Panicked("allow_origin_fn") => "origin",
            Self::Rejected(Rejection::BadRequest(_)) | Self::Panicked("topics") => "request",
            Self::Rejected(_) | Self::Panicked(_) => "identity",
            Self::Cap(_) => "caps",
            Self::Hub(HubError::Refused(_) | HubError::NotSubscribed(_)) => "subscribe",
            Self::Hub(_) => "hub",
        }
    }

    /// Logs the refusal: backend failures as errors with their detail, the rest briefly.
    pub(crate) fn log(&self, transport: &'static str, peer: Option<IpAddr>) {
        let status = self.status().as_u16();
        match self {
            Self::Hub(e @ HubError::Backend(_)) => {
                tracing::error!(transport, ?peer, status, error = %e, "connection refused: backend failed");
            }
            Self::Cap(which) => {
                tracing::warn!(transport, ?peer, status, cap = ?which, "connection refused: cap reached");
            }
            Self::Panicked(closure) => {
                tracing::error!(
                    transport,
                    ?peer,
                    status,
                    closure,
                    "connection refused: the application's closure panicked"
                );
            }
            other => {
                tracing::info!(transport, ?peer, status, reason = %other.brief(), "connection refused");
            }
        }
    }
}

/// Which transport a request is for: what the handshake must look like and where the resume
/// position comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// A WebSocket upgrade; resume from `?last=`.
    WebSocket,
    /// A WebSocket upgrade that negotiated the channel protocol: as `WebSocket`, but it may ask
    /// for no topic at connect time (it subscribes with commands).
    Channels,
    /// A `GET` for `text/event-stream`; resume from `Last-Event-ID` or `?lastEventId=`.
    EventStream,
}

/// A request that passed every check: the hub connection to join and what it holds (slot,
/// drain registration) until it ends.
pub(crate) struct Admitted {
    pub(crate) conn: Connection,
    pub(crate) admission: Admission,
}

/// Decides an `Origin` from the request; wrapped in salvo-cors' `AllowOrigin::dynamic`, the
/// same function decides CORS (README, "Origins and CORS: one list").
pub(crate) type OriginFn = dyn Fn(&HeaderValue, &Request, &Depot) -> bool + Send + Sync;

/// Which `Origin`s may connect: the request's own host, an exact allowlist, or what a
/// predicate accepts.
#[derive(Clone, Default)]
pub(crate) struct OriginPolicy {
    allowed: Vec<String>,
    judge: Option<Arc<OriginFn>>,
    require: bool,
}

impl fmt::Debug for OriginPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OriginPolicy")
            .field("allowed", &self.allowed)
            .field("judge", &self.judge.is_some())
            .field("require", &self.require)
            .finish()
    }
}

impl OriginPolicy {
    pub(crate) fn set_judge(&mut self, judge: Arc<OriginFn>) {
        self.judge = Some(judge);
    }

    pub(crate) fn set_allowed(&mut self, origins: &[&str]) {
        self.allowed = origins
            .iter()
            .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
            .collect();
    }

    pub(crate) fn set_required(&mut self, require: bool) {
        self.require = require;
    }

    /// Exact, case-insensitive; one `Origin` header at most (a second one could smuggle a
    /// foreign origin past a check that reads only the first).
    pub(crate) fn check(&self, req: &Request, depot: &Depot) -> Result<(), Refusal> {
        let mut values = req.headers().get_all(ORIGIN).iter();
        let (Some(origin), None) = (values.next(), values.next()) else {
            return if req.headers().contains_key(ORIGIN) || self.require {
                Err(Refusal::Origin)
            } else {
                Ok(())
            };
        };
        if let Some(judge) = &self.judge {
            let judged = std::panic::catch_unwind(AssertUnwindSafe(|| judge(origin, req, depot)));
            match judged {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(_) => return Err(Refusal::Panicked("allow_origin_fn")),
            }
        }
        let origin = origin
            .to_str()
            .map_err(|_| Refusal::Origin)?
            .trim_end_matches('/')
            .to_ascii_lowercase();
        if self.allowed.contains(&origin) {
            return Ok(());
        }
        // Same host: the origin's authority equals the Host header.
        let authority = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"));
        let host = req
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_ascii_lowercase);
        match (authority, host) {
            (Some(a), Some(h)) if a == h => Ok(()),
            _ => Err(Refusal::Origin),
        }
    }
}

/// An address range (`10.0.0.0/8`, `::1`, `fd00::/8`) of trusted proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IpRange {
    addr: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Parses `addr` or `addr/prefix`.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (
                a.trim().parse::<IpAddr>().ok()?,
                Some(p.trim().parse::<u8>().ok()?),
            ),
            None => (s.trim().parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Self { addr, prefix })
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    }
}

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

/// Which forwarding header the trusted proxies in front of an endpoint write the client's
/// address in; see [`trusted_proxies`](crate::ws::WsEndpoint::trusted_proxies). Only the
/// header named here is read: a proxy passes the others through as the client sent them, so
/// reading them would let a client pick the address its connections are counted under.
///
/// ```
/// use salvo_realtime::{ForwardedHeader, PubSub, ws::WsEndpoint};
///
/// // nginx on the same host with `proxy_set_header X-Real-IP $remote_addr;`
/// let ws = WsEndpoint::new(PubSub::new())
///     .trusted_proxies(&["127.0.0.1", "::1"])
///     .forwarded_header(ForwardedHeader::XRealIp);
/// # drop(ws);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: <client>, <proxy 1>, ...`, to which each proxy appends the address it
    /// got the request from (nginx's `$proxy_add_x_forwarded_for`, HAProxy's `option
    /// forwardfor`, most cloud load balancers). Read from the right: the right-most entry that
    /// isn't a trusted proxy is the client. The default.
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=<client>, for=<proxy 1>`, appended to the same way; read the
    /// same way, from each element's `for=`.
    Forwarded,
    /// `X-Real-IP: <client>`: one address the proxy sets, replacing any the client sent
    /// (nginx's `proxy_set_header X-Real-IP $remote_addr`). Two `X-Real-IP` lines mean the
    /// proxy didn't replace the client's: the proxy's own address counts then.
    XRealIp,
}

/// Which peers' forwarding headers are believed, and which header they write.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProxyTrust {
    ranges: Vec<IpRange>,
    header: ForwardedHeader,
}

impl ProxyTrust {
    fn trusts(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|r| r.contains(ip))
    }
}

/// The client's address: the TCP peer, or, when the peer is a trusted proxy, the address the
/// proxies wrote in the one header the operator named. Walking a forwarding chain from its
/// right end (the entry the nearest proxy wrote), the first address that isn't a trusted proxy
/// is the client; if every entry is one, the left-most; an unreadable entry stops the walk at
/// the last proxy reached (what is left of it can't be trusted). Headers from any other peer
/// are ignored, so they can't be spoofed around a cap.
pub(crate) fn client_ip(req: &Request, trust: &ProxyTrust) -> Option<IpAddr> {
    let peer = canonical(req.remote_addr().ip()?);
    if !trust.trusts(peer) {
        return Some(peer);
    }
    let headers = req.headers();
    let joined = |name: &str| {
        headers
            .get_all(name)
            .iter()
            // A line that isn't visible ASCII is one unreadable entry: it stops the walk.
            .map(|v| v.to_str().unwrap_or("?"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let entry: fn(&str) -> Option<IpAddr> = match trust.header {
        ForwardedHeader::XRealIp => {
            let mut values = headers.get_all("x-real-ip").iter();
            return match (values.next(), values.next()) {
                (Some(v), None) => v.to_str().ok().and_then(parse_node).or(Some(peer)),
                _ => Some(peer),
            };
        }
        ForwardedHeader::XForwardedFor => parse_node,
        ForwardedHeader::Forwarded => |element| {
            element.split(';').find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| parse_node(v))?
            })
        },
    };
    let name = match trust.header {
        ForwardedHeader::Forwarded => "forwarded",
        _ => "x-forwarded-for",
    };
    let chain = joined(name);
    let mut reached = peer;
    for element in chain.rsplit(',').filter(|e| !e.trim().is_empty()) {
        let Some(ip) = entry(element) else {
            break;
        };
        if !trust.trusts(ip) {
            return Some(ip);
        }
        reached = ip;
    }
    Some(reached)
}

/// One address of a forwarding header: `1.2.3.4`, `1.2.3.4:80`, `"[2001:db8::1]:443"`,
/// `2001:db8::1`; `unknown` and obfuscated names give `None`.
fn parse_node(v: &str) -> Option<IpAddr> {
    let v = v.trim().trim_matches('"');
    if let Ok(ip) = v.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(rest) = v.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok().map(canonical);
    }
    v.rsplit_once(':')
        .and_then(|(host, _port)| host.parse().ok())
        .map(canonical)
}

/// Checks the WebSocket handshake of RFC 6455 §4.2.1 completely, before anything joins or is
/// counted: GET over HTTP/1.1 or later, `Connection` with the `upgrade` token, `Upgrade:
/// websocket`, a `Sec-WebSocket-Key` of 16 base64-encoded bytes, and version 13.
pub(crate) fn check_handshake(req: &Request) -> Result<(), Refusal> {
    use salvo::http::header::{CONNECTION, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE};
    if req.method() != salvo::http::Method::GET {
        return Err(Refusal::Handshake("a websocket handshake must be a GET"));
    }
    if req.version() < salvo::http::Version::HTTP_11 {
        return Err(Refusal::Handshake("a websocket handshake needs HTTP/1.1"));
    }
    let headers = req.headers();
    let has_token = |name, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if !has_token(CONNECTION, "upgrade") {
        return Err(Refusal::Handshake("missing `Connection: upgrade`"));
    }
    if !has_token(UPGRADE, "websocket") {
        return Err(Refusal::Handshake("missing `Upgrade: websocket`"));
    }
    let mut keys = headers.get_all(SEC_WEBSOCKET_KEY).iter();
    let key_ok = match (keys.next(), keys.next()) {
        (Some(key), None) => {
            let key = key.as_bytes();
            key.len() == 24
                && key.ends_with(b"==")
                && key[..22]
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
        }
        _ => false,
    };
    if !key_ok {
        return Err(Refusal::Handshake(
            "missing or malformed `Sec-WebSocket-Key`",
        ));
    }
    let mut versions = headers.get_all(SEC_WEBSOCKET_VERSION).iter();
    match (versions.next(), versions.next()) {
        (None, _) => Err(Refusal::Handshake("missing `Sec-WebSocket-Version`")),
        (Some(v), None) if v.as_bytes() == b"13" => Ok(()),
        _ => Err(Refusal::Version),
    }
}

/// Settings both endpoints share; set through the endpoint's builder methods. Cloning copies
/// every setting; the live state (open-connection counts, the drain) is shared.
#[derive(Clone)]
pub(crate) struct Common {
    topic_param: Arc<str>,
    /// The `endpoint` label of the connection metrics.
    name: Arc<str>,
    topics: Option<Arc<TopicsFn>>,
    identify: Option<Arc<IdentifyFn>>,
    pub(crate) caps: Caps,
    pub(crate) drain: Drain,
    pub(crate) origins: OriginPolicy,
    proxies: ProxyTrust,
    max_recent: usize,
}

impl Common {
    pub(crate) fn new() -> Self {
        Self {
            topic_param: Arc::from("topic"),
            name: Arc::from("default"),
            topics: None,
            identify: None,
            caps: Caps::new(10_000, 64),
            drain: Drain::new(),
            origins: OriginPolicy::default(),
            proxies: ProxyTrust::default(),
            max_recent: 1_000,
        }
    }

    pub(crate) fn set_topic_param(&mut self, name: &str) {
        self.topic_param = Arc::from(name);
    }

    pub(crate) fn set_name(&mut self, name: &str) {
        self.name = Arc::from(name);
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
        self.identify = Some(Arc::new(move |req, depot| {
            Box::pin(std::future::ready(f(req, depot)))
        }));
    }

    pub(crate) fn set_identify_async<F, Fut>(&mut self, f: F)
    where
        F: Fn(&Request, &Depot) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Option<Identity>, Rejection>> + Send + 'static,
    {
        self.identify = Some(Arc::new(move |req, depot| Box::pin(f(req, depot))));
    }

    #[track_caller]
    pub(crate) fn set_trusted_proxies(&mut self, ranges: &[&str]) {
        self.proxies.ranges = ranges
            .iter()
            .map(|r| match IpRange::parse(r) {
                Some(range) => range,
                None => panic!("trusted proxy {r:?} is not an IP address or CIDR range"),
            })
            .collect();
    }

    pub(crate) fn set_forwarded_header(&mut self, header: ForwardedHeader) {
        self.proxies.header = header;
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

    /// Whether the request names no topic at all (rather than a bad one), with the default
    /// topic source (a `topics` closure decides for itself).
    fn no_topic_asked(&self, req: &Request) -> bool {
        self.topics.is_none()
            && req.params().get(&*self.topic_param).is_none()
            && req.queries().get_vec(&*self.topic_param).is_none()
    }

    /// The whole lifecycle up to the join: handshake, origin, topics, resume positions,
    /// identity, caps. Either every check passes and the connection holds its slot and drain
    /// registration, or one [`Refusal`] says why and nothing is held or joined.
    pub(crate) async fn admit(
        &self,
        req: &Request,
        depot: &Depot,
        transport: Transport,
    ) -> Result<Admitted, Refusal> {
        if self.drain.is_draining() {
            return Err(Refusal::Draining);
        }
        if transport != Transport::EventStream {
            check_handshake(req)?;
        }
        self.origins.check(req, depot)?;
        let topics = std::panic::catch_unwind(AssertUnwindSafe(|| self.topics(req, depot)))
            .map_err(|_| Refusal::Panicked("topics"))?;
        let topics = match topics {
            Err(_) if transport == Transport::Channels && self.no_topic_asked(req) => Vec::new(),
            other => other?,
        };
        let base = match req.query::<String>("recent") {
            Some(n) => Position::Recent(
                n.parse::<usize>()
                    .map_err(|_| Rejection::bad_request("`recent` must be a number"))?
                    .min(self.max_recent),
            ),
            None => Position::Live,
        };
        // A panic in the closure or in its future is the app's bug: 500, not a reset.
        let identity = match &self.identify {
            Some(f) => {
                let fut = std::panic::catch_unwind(AssertUnwindSafe(|| f(req, depot)))
                    .map_err(|_| Refusal::Panicked("identify"))?;
                AssertUnwindSafe(fut)
                    .catch_unwind()
                    .await
                    .map_err(|_| Refusal::Panicked("identify"))??
            }
            None => None,
        };
        let resume = resume_values(req, transport);
        let mut conn = Connection::new();
        let own_direct = identity
            .as_ref()
            .and_then(|i| Topic::new(&format!("{DIRECT_PREFIX}{}", i.user_id())).ok());
        if let Some(identity) = identity {
            conn = conn.authenticated(identity);
        }
        let ip = client_ip(req, &self.proxies);
        if let Some(ip) = ip {
            let port = req.remote_addr().clone().into_std().map_or(0, |a| a.port());
            conn = conn.with_remote_addr(std::net::SocketAddr::new(ip, port));
        }
        for (topic, from) in positions(&topics, own_direct.as_ref(), base, &resume) {
            conn = conn.subscribe(topic, from);
        }
        let slot = self.caps.acquire(ip.map(cap_key)).map_err(Refusal::Cap)?;
        let drain = self.drain.register(conn.id()).ok_or(Refusal::Draining)?;
        Ok(Admitted {
            conn,
            admission: Admission {
                _slot: slot,
                drain,
                metrics: ConnMetrics::none(),
            },
        })
    }

    /// Admits and joins: the connection's subscription, or the refusal to answer with.
    pub(crate) async fn connect<H: Hub>(
        &self,
        hub: &H,
        req: &Request,
        depot: &Depot,
        transport: Transport,
    ) -> Result<(Admitted, H::Subscription), Refusal> {
        let mut admitted = self.admit(req, depot, transport).await?;
        match hub.join(&admitted.conn).await {
            Ok(sub) => {
                admitted.admission.metrics = ConnMetrics::open(transport, &self.name);
                Ok((admitted, sub))
            }
            Err(e) => Err(Refusal::Hub(e)),
        }
    }

    /// Answers and logs a refusal.
    pub(crate) fn refuse(
        &self,
        refusal: &Refusal,
        req: &Request,
        res: &mut Response,
        transport: Transport,
    ) {
        let name = match transport {
            Transport::WebSocket | Transport::Channels => "websocket",
            Transport::EventStream => "sse",
        };
        refusal.log(name, req.remote_addr().ip());
        crate::metrics::refused(transport, refusal.kind());
        refusal.respond(res, self.caps.retry_after());
    }
}

/// The resume ids a request carries, each with the topic it names, if it names one.
fn resume_values(req: &Request, transport: Transport) -> Vec<String> {
    match transport {
        Transport::WebSocket | Transport::Channels => {
            req.queries().get_vec("last").cloned().unwrap_or_default()
        }
        Transport::EventStream => req
            .headers()
            .get(LAST_EVENT_ID)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .filter(|s| !s.is_empty())
            .or_else(|| req.query::<String>(LAST_EVENT_ID_QUERY))
            .into_iter()
            .collect(),
    }
}

/// The request header a reconnecting `EventSource` sends.
const LAST_EVENT_ID: &str = "last-event-id";
/// The query parameter that stands in for it.
const LAST_EVENT_ID_QUERY: &str = "lastEventId";

/// Where each topic starts. `resume` holds ids as clients send them: `<topic>:<id>` names its
/// topic (any requested topic, or the connection's own direct log `@<user>`, which is then
/// added) by the part before the last `:`; one naming another topic (a room the server put the
/// connection in, say) is ignored. A bare `<id>`, or a value whose part before the last `:`
/// names no requested topic, applies when the request has exactly one topic. An id that
/// doesn't parse gives [`Position::Invalid`] (a reset, never a refusal: a stale id must not
/// lock a client out), for the topic it names whatever the number of topics. Topics without
/// an id start at `base`.
pub(crate) fn positions(
    topics: &[Topic],
    own_direct: Option<&Topic>,
    base: Position,
    resume: &[String],
) -> Vec<(Topic, Position)> {
    let mut out: Vec<(Topic, Position)> = topics.iter().map(|t| (t.clone(), base)).collect();
    let parse = |id: &str| {
        id.parse::<MessageId>()
            .map_or(Position::Invalid, Position::After)
    };
    for value in resume.iter().filter(|v| !v.is_empty()) {
        let named = value.rsplit_once(':').and_then(|(name, id)| {
            let topic = topics
                .iter()
                .chain(own_direct)
                .find(|t| t.as_str() == name)?;
            Some((topic, id))
        });
        match named {
            Some((topic, id)) => match out.iter_mut().find(|(t, _)| t == topic) {
                Some(entry) => entry.1 = parse(id),
                None => out.push((topic.clone(), parse(id))),
            },
            // A valid id after a `:` that names no topic of this request: another topic's.
            None if value
                .rsplit_once(':')
                .is_some_and(|(_, id)| id.parse::<MessageId>().is_ok()) => {}
            None if topics.len() == 1 => out[0].1 = parse(value),
            None => {}
        }
    }
    out
}

impl fmt::Debug for Common {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Common")
            .field("topic_param", &self.topic_param)
            .field("name", &self.name)
            .field("custom_topics", &self.topics.is_some())
            .field("identify", &self.identify.is_some())
            .field("caps", &self.caps)
            .field("origins", &self.origins)
            .field("proxies", &self.proxies)
            .finish_non_exhaustive()
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

/// Everything a connection holds until it ends: its cap slot, drain registration and metrics
/// (counted open from the join until dropped).
pub(crate) struct Admission {
    pub(crate) _slot: Slot,
    pub(crate) drain: DrainGuard,
    pub(crate) metrics: ConnMetrics,
}

/// The builder methods both endpoints share.
macro_rules! common_builders {
    () => {
        /// Names the endpoint in its metrics: the `endpoint` label of the connection counts
        /// (crate docs, "Metrics"; `metrics` feature). Give each endpoint of an app its own,
        /// from a fixed set: every distinct name is a time series. Default: `"default"`.
        #[must_use]
        pub fn name(mut self, name: &str) -> Self {
            self.common.set_name(name);
            self
        }
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

        /// [`identify`](Self::identify) with an async answer, for a session or database
        /// lookup: the closure reads what it needs from the request and returns a future that
        /// owns it. What it resolves to is the identity every authorization rule and handler
        /// sees.
        #[must_use]
        pub fn identify_async<F, Fut>(mut self, f: F) -> Self
        where
            F: Fn(&salvo::Request, &salvo::Depot) -> Fut + Send + Sync + 'static,
            Fut: std::future::Future<Output = Result<Option<crate::Identity>, crate::Rejection>>
                + Send
                + 'static,
        {
            self.common.set_identify_async(f);
            self
        }

        /// Most connections open at once on this endpoint; past it, 503 with `Retry-After`.
        /// Default: 10,000.
        #[must_use]
        pub fn max_connections(mut self, n: usize) -> Self {
            self.common.caps.set_max_total(n);
            self
        }

        /// Most connections open at once from one client address (IPv6: one /64); past it,
        /// 429 with `Retry-After`. Behind a reverse proxy, set
        /// [`trusted_proxies`](Self::trusted_proxies) so that this counts clients, not the
        /// proxy. Default: 64.
        #[must_use]
        pub fn max_connections_per_ip(mut self, n: usize) -> Self {
            self.common.caps.set_max_per_ip(n);
            self
        }

        /// The `Retry-After` sent with 503 and 429. Default: 5 s.
        #[must_use]
        pub fn retry_after(mut self, d: std::time::Duration) -> Self {
            self.common.caps.set_retry_after(d);
            self
        }

        /// Proxies (addresses or CIDR ranges: `"127.0.0.1"`, `"10.0.0.0/8"`, `"fd00::/8"`)
        /// whose forwarding header is believed. A request whose TCP peer is one of them counts
        /// as coming from the client address in the header
        /// [`forwarded_header`](Self::forwarded_header) names (default `X-Forwarded-For`): the
        /// right-most entry that isn't a trusted proxy (the proxies append, so entries left of
        /// it are the client's own and may be anything). The other forwarding headers are never
        /// read, and from any other peer none is, so a client can't spoof its way around the
        /// per-address cap. Default: none (right for a server that faces clients directly;
        /// behind nginx on the same host, trust `"127.0.0.1"` and `"::1"`).
        ///
        /// # Panics
        ///
        /// If an entry is not an IP address or a CIDR range: a configuration mistake, caught
        /// at startup.
        #[must_use]
        #[track_caller]
        pub fn trusted_proxies(mut self, ranges: &[&str]) -> Self {
            self.common.set_trusted_proxies(ranges);
            self
        }

        /// The one header the [`trusted_proxies`](Self::trusted_proxies) write the client's
        /// address in; the others are ignored, as a proxy passes them through from the client.
        /// Name what your proxy sets: nginx's usual `proxy_set_header X-Forwarded-For
        /// $proxy_add_x_forwarded_for` is [`XForwardedFor`](crate::ForwardedHeader::XForwardedFor).
        /// Default: `XForwardedFor`.
        #[must_use]
        pub fn forwarded_header(mut self, header: crate::ForwardedHeader) -> Self {
            self.common.set_forwarded_header(header);
            self
        }

        /// Origins (scheme, host and port, e.g. `https://app.example.com`) allowed besides the
        /// request's own host; compared exactly, case-insensitively, no wildcards. A request
        /// with another `Origin`, or with two `Origin` headers, gets 403 before anything else
        /// happens. Default: none (same host only).
        #[must_use]
        pub fn allowed_origins(mut self, origins: &[&str]) -> Self {
            self.common.origins.set_allowed(origins);
            self
        }

        /// Also admits every `Origin` that `judge` accepts, besides the request's own host and
        /// [`allowed_origins`](Self::allowed_origins). One function can be the single list of
        /// trusted origins for this endpoint and the app's CORS middleware: give it to
        /// salvo-cors as `AllowOrigin::dynamic(|o, req, depot| o.filter(|o| judge(o, req,
        /// depot)).cloned())`. CORS itself does not guard a WebSocket upgrade (a browser sends
        /// no preflight for it, and the page's script never reads the upgrade response, so
        /// `Access-Control-Allow-Origin` changes nothing), and an event stream's `Origin` is
        /// only checked here. It is called only for a request with exactly one `Origin`
        /// header; two are refused before it runs. Default: none. See the README, "Origins and
        /// CORS: one list".
        #[must_use]
        pub fn allow_origin_fn<F>(mut self, judge: F) -> Self
        where
            F: Fn(&salvo::http::HeaderValue, &salvo::Request, &salvo::Depot) -> bool
                + Send
                + Sync
                + 'static,
        {
            self.common.origins.set_judge(std::sync::Arc::new(judge));
            self
        }

        /// Refuses requests without an `Origin` header (403). Default: `false`: only browsers
        /// send `Origin`, and cross-site hijacking needs a browser.
        #[must_use]
        pub fn require_origin(mut self, require: bool) -> Self {
            self.common.origins.set_required(require);
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

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, SocketAddr};

    use proptest::prelude::*;
    use salvo::Request;
    use salvo::http::HeaderValue;

    use super::{
        CapExceeded, ForwardedHeader, IpRange, OriginPolicy, ProxyTrust, Refusal, cap_key,
        check_handshake, client_ip, positions,
    };
    use crate::hub::{Epoch, MessageId, Position, Topic};

    fn request(peer: &str, headers: &[(&str, &str)]) -> Request {
        let mut req = Request::new();
        let addr: SocketAddr = peer.parse().expect("peer address");
        *req.remote_addr_mut() = addr.into();
        for (name, value) in headers {
            if let (Ok(name), Ok(value)) = (
                salvo::http::header::HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                req.headers_mut().append(name, value);
            }
        }
        req
    }

    #[test]
    fn ipv6_clients_share_a_cap_per_64_and_mapped_ipv4_is_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(cap_key(a), cap_key(b));
        assert_ne!(cap_key(a), cap_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        assert_eq!(cap_key(mapped), "192.0.2.7".parse::<IpAddr>().expect("ip"));
    }

    fn trust(header: ForwardedHeader) -> ProxyTrust {
        ProxyTrust {
            ranges: vec![
                IpRange::parse("127.0.0.1").expect("range"),
                IpRange::parse("10.0.0.0/8").expect("range"),
            ],
            header,
        }
    }

    #[test]
    fn only_the_named_header_counts_read_from_its_right_end() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let xff = trust(ForwardedHeader::XForwardedFor);
        let spoofed = [
            ("x-forwarded-for", "198.51.100.9, 203.0.113.5, 10.1.1.1"),
            ("forwarded", "for=192.0.2.66"),
            ("x-real-ip", "192.0.2.77"),
        ];
        let req = request("127.0.0.1:9", &spoofed);
        assert_eq!(client_ip(&req, &xff), Some(ip("203.0.113.5")));
        let fwd = trust(ForwardedHeader::Forwarded);
        let req = request(
            "127.0.0.1:9",
            &[
                (
                    "forwarded",
                    "for=192.0.2.1, for=\"[2001:db8::7]:443\";proto=https",
                ),
                ("x-forwarded-for", "198.51.100.1"),
            ],
        );
        assert_eq!(client_ip(&req, &fwd), Some(ip("2001:db8::7")));
        let real = trust(ForwardedHeader::XRealIp);
        let req = request("127.0.0.1:9", &spoofed);
        assert_eq!(client_ip(&req, &real), Some(ip("192.0.2.77")));
        let req = request(
            "127.0.0.1:9",
            &[("x-real-ip", "192.0.2.1"), ("x-real-ip", "192.0.2.2")],
        );
        assert_eq!(
            client_ip(&req, &real),
            Some(ip("127.0.0.1")),
            "not replaced"
        );
        // Several lines are one list, in order.
        let req = request(
            "127.0.0.1:9",
            &[
                ("x-forwarded-for", "192.0.2.1"),
                ("x-forwarded-for", "192.0.2.2"),
            ],
        );
        assert_eq!(client_ip(&req, &xff), Some(ip("192.0.2.2")));
        // Only trusted hops: the left-most; an unreadable entry stops at the last hop reached;
        // the named header missing: the proxy itself.
        let req = request("127.0.0.1:9", &[("x-forwarded-for", "10.0.0.9, 10.0.0.8")]);
        assert_eq!(client_ip(&req, &xff), Some(ip("10.0.0.9")));
        let req = request(
            "127.0.0.1:9",
            &[("x-forwarded-for", "192.0.2.1, unknown, 10.0.0.8")],
        );
        assert_eq!(client_ip(&req, &xff), Some(ip("10.0.0.8")));
        let req = request("127.0.0.1:9", &[("forwarded", "for=192.0.2.1")]);
        assert_eq!(client_ip(&req, &xff), Some(ip("127.0.0.1")));
        // From an untrusted peer nothing is read.
        let req = request("192.0.2.50:9", &spoofed);
        for header in [
            ForwardedHeader::XForwardedFor,
            ForwardedHeader::Forwarded,
            ForwardedHeader::XRealIp,
        ] {
            assert_eq!(client_ip(&req, &trust(header)), Some(ip("192.0.2.50")));
        }
    }

    #[test]
    fn an_unreadable_id_resets_the_topic_it_names_among_several() {
        let topics: Vec<Topic> = ["a", "room:b", "c"]
            .iter()
            .map(|n| Topic::new(n).expect("valid"))
            .collect();
        let own = Topic::new("@me").expect("valid");
        let id = MessageId::new(Epoch::random(), 3);
        let resume = [
            "room:b:junk".to_owned(),
            format!("c:{id}"),
            "@me:".to_owned(),
            "nowhere:junk".to_owned(),
            "junk".to_owned(),
        ];
        let out = positions(&topics, Some(&own), Position::Live, &resume);
        assert_eq!(
            out,
            vec![
                (topics[0].clone(), Position::Live),
                (topics[1].clone(), Position::Invalid),
                (topics[2].clone(), Position::After(id)),
                (own, Position::Invalid),
            ]
        );
    }

    // The README's status map lists every hub error a join can return, with the status
    // `Refusal::status` answers, and `Retry-After` exactly where it is sent.
    #[test]
    fn the_readme_status_map_is_the_codes_own() {
        let readme = include_str!("../README.md");
        let rows: Vec<&str> = readme
            .lines()
            .skip_while(|l| !l.starts_with("| hub join |"))
            .take_while(|l| l.starts_with('|'))
            .collect();
        let mut listed = std::collections::HashMap::new();
        for row in &rows {
            let cells: Vec<&str> = row.split('|').collect();
            let status: u16 = cells[3]
                .trim()
                .split(' ')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("a status in {row}"));
            let retry = cells[3].contains("Retry-After");
            for name in cells[2].split('`').skip(1).step_by(2) {
                if name.starts_with(char::is_uppercase) {
                    assert!(
                        listed.insert(name, (status, retry)).is_none(),
                        "{name} twice"
                    );
                }
            }
        }
        let all = crate::error::tests::every_variant();
        let count = all.len();
        for e in all {
            let name = e.variant_name();
            let status = Refusal::Hub(e).status().as_u16();
            let retry = matches!(status, 429 | 503);
            assert_eq!(listed.get(name), Some(&(status, retry)), "{name}");
        }
        assert_eq!(listed.len(), count, "a name the README lists is no variant");
    }

    // The defaults the README states: 10,000 connections per endpoint (503), 64 per client
    // address (429), both answered with `Retry-After: 5`.
    #[test]
    fn the_default_caps_are_10000_in_all_and_64_per_address() {
        let caps = super::Common::new().caps;
        let held: Vec<_> = (0..10_000)
            .map(|_| caps.acquire(None).expect("within the cap"))
            .collect();
        assert_eq!(caps.acquire(None).err(), Some(CapExceeded::Total));
        drop(held);
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let held: Vec<_> = (0..64)
            .map(|_| caps.acquire(Some(ip)).expect("within the cap"))
            .collect();
        assert_eq!(caps.acquire(Some(ip)).err(), Some(CapExceeded::PerIp));
        assert!(caps.acquire(Some("192.0.2.2".parse().expect("ip"))).is_ok());
        drop(held);
        for (which, status) in [(CapExceeded::Total, 503), (CapExceeded::PerIp, 429)] {
            let mut res = salvo::Response::new();
            Refusal::Cap(which).respond(&mut res, caps.retry_after());
            let retry = res
                .headers()
                .get("retry-after")
                .map(|v| v.as_bytes().to_vec());
            assert_eq!(
                (res.status_code.map(|s| s.as_u16()), retry),
                (Some(status), Some(b"5".to_vec()))
            );
        }
    }

    fn topic_name() -> impl Strategy<Value = String> {
        "[a-z@:]{1,6}"
    }

    proptest! {
        // Any resume input gives one position per requested topic (plus, at most, the
        // connection's own direct log), never a panic and never a refusal.
        #[test]
        fn positions_cover_every_topic_whatever_the_resume_input(
            names in proptest::collection::vec(topic_name(), 1..4),
            resume in proptest::collection::vec(".{0,40}", 0..4),
            recent in proptest::option::of(0usize..5),
        ) {
            let topics: Vec<Topic> = names.iter().filter_map(|n| Topic::new(n).ok()).collect();
            prop_assume!(!topics.is_empty());
            let own = Topic::new("@me").ok();
            let base = recent.map_or(Position::Live, Position::Recent);
            let out = positions(&topics, own.as_ref(), base, &resume);
            for t in &topics {
                prop_assert!(out.iter().any(|(o, _)| o == t));
            }
            for (t, _) in &out {
                prop_assert!(topics.contains(t) || Some(t) == own.as_ref());
            }
        }

        // A `<topic>:<id>` for a requested topic resumes exactly that topic.
        #[test]
        fn a_named_id_resumes_its_topic(offset in 0u64..1_000_000, which in 0usize..3) {
            let topics: Vec<Topic> = ["a:b", "c", "@me"].iter().map(|n| Topic::new(n).expect("valid")).collect();
            let id = MessageId::new(Epoch::random(), offset);
            let resume = vec![format!("{}:{id}", topics[which])];
            let out = positions(&topics, None, Position::Live, &resume);
            for (t, p) in &out {
                let expected = if *t == topics[which] { Position::After(id) } else { Position::Live };
                prop_assert_eq!(*p, expected);
            }
        }

        // A named id for a topic this request doesn't ask for (a room the server added) is
        // ignored, never read as a bad id for the one requested topic.
        #[test]
        fn a_named_id_of_another_topic_changes_nothing(offset in 0u64..1_000_000) {
            let topics = vec![Topic::new("main").expect("valid")];
            let id = MessageId::new(Epoch::random(), offset);
            let out = positions(&topics, None, Position::Live, &[format!("elsewhere:{id}")]);
            prop_assert_eq!(out, vec![(topics[0].clone(), Position::Live)]);
            let out = positions(&topics, None, Position::Live, &["main:zzz".to_owned()]);
            prop_assert_eq!(out, vec![(topics[0].clone(), Position::Invalid)]);
        }

        // Forwarding headers of any content never panic, and are ignored from untrusted peers.
        #[test]
        fn client_ip_never_panics(
            xff in ".{0,60}",
            fwd in ".{0,60}",
            real in ".{0,30}",
            trusted_peer in any::<bool>(),
        ) {
            let peer = if trusted_peer { "127.0.0.1:1" } else { "192.0.2.1:1" };
            let req = request(peer, &[("x-forwarded-for", &xff), ("forwarded", &fwd), ("x-real-ip", &real)]);
            for header in [ForwardedHeader::XForwardedFor, ForwardedHeader::Forwarded, ForwardedHeader::XRealIp] {
                let trust = ProxyTrust {
                    ranges: vec![IpRange::parse("127.0.0.0/8").expect("range")],
                    header,
                };
                let ip = client_ip(&req, &trust);
                prop_assert!(ip.is_some());
                if !trusted_peer {
                    prop_assert_eq!(ip, "192.0.2.1".parse().ok());
                }
            }
        }

        // Ranges: any string parses or not, never panics; a range contains its own address.
        #[test]
        fn ip_ranges_parse_safely(s in ".{0,40}", a in any::<[u8; 4]>(), prefix in 0u8..=32) {
            let _ = IpRange::parse(&s);
            let addr = IpAddr::from(a);
            let range = IpRange::parse(&format!("{addr}/{prefix}")).expect("valid range");
            prop_assert!(range.contains(addr));
        }

        // Origins: anything but the same host or an allowlisted origin is refused.
        #[test]
        fn only_exact_origins_pass(origin in ".{0,60}") {
            let mut policy = OriginPolicy::default();
            policy.set_allowed(&["https://app.example"]);
            let req = request("127.0.0.1:1", &[("origin", &origin), ("host", "svc.example:8080")]);
            let lowered = origin.trim_end_matches('/').to_ascii_lowercase();
            let should_pass = lowered == "https://app.example"
                || lowered == "http://svc.example:8080"
                || lowered == "https://svc.example:8080"
                || HeaderValue::from_str(&origin).is_err();
            let passed = policy.check(&req, &salvo::Depot::new()).is_ok();
            prop_assert_eq!(passed, should_pass, "{:?}", origin);
        }

        // Handshake headers of any content: a typed refusal or success, never a panic.
        #[test]
        fn handshake_checks_never_panic(
            connection in ".{0,20}",
            upgrade in ".{0,20}",
            key in ".{0,30}",
            version in ".{0,4}",
        ) {
            let req = request("127.0.0.1:1", &[
                ("connection", &connection),
                ("upgrade", &upgrade),
                ("sec-websocket-key", &key),
                ("sec-websocket-version", &version),
            ]);
            match check_handshake(&req) {
                Ok(()) => prop_assert_eq!(version.as_str(), "13"),
                Err(Refusal::Handshake(_) | Refusal::Version) => {}
                Err(other) => prop_assert!(false, "unexpected refusal {:?}", other),
            }
        }
    }
}
