//! What the WebSocket and SSE endpoints share: graceful shutdown ([`Drain`]), the refusal an
//! identity check gives ([`Rejection`]), and which proxy header names the client's address
//! ([`ForwardedHeader`]).
//!
//! ```
//! use salvo_realtime::endpoint::{Drain, ForwardedHeader, Rejection};
//! use salvo_realtime::{PubSub, ws::WsEndpoint};
//!
//! let drain = Drain::new();
//! let ws = WsEndpoint::new(PubSub::new())
//!     .drain(drain.clone())
//!     .trusted_proxies(&["10.0.0.0/8"])
//!     .forwarded_header(ForwardedHeader::XForwardedFor);
//! let _ = (ws, Rejection::unauthorized("no token"));
//! ```
//!
//! # Inside
//!
//! The one connection lifecycle both transports share. A request is validated completely
//! (handshake, origin, topics, resume positions, identity, caps) into an admitted connection or
//! one typed `Refusal` with one status map; only then does it join the hub. The transports
//! (`ws`, `sse`) then only frame and pump. One concern a file: `refusal.rs` the refusals and
//! their one status map, `handshake.rs` the WebSocket handshake's checks, `origin.rs` the
//! `Origin` policy, `proxy.rs` trusted proxies and the client's address, `caps.rs` the
//! connection caps, `resume.rs` resume positions, `drain.rs` graceful shutdown, `builders.rs`
//! the builder methods both endpoints share; `mod.rs` holds the lifecycle itself
//! (`Common::admit`, `Common::connect`).

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use salvo::{Depot, Request, Response};

use crate::Connection;
use crate::hub::{DIRECT_PREFIX, Hub, Identity, Position};
use crate::ids::Topic;
use crate::metrics::ConnMetrics;

pub(crate) mod attached;
pub(crate) mod builders;
pub(crate) mod caps;
pub(crate) mod drain;
pub(crate) mod handshake;
pub(crate) mod origin;
pub(crate) mod proxy;
pub(crate) mod refusal;
pub(crate) mod resume;
#[cfg(test)]
mod tests;

pub(crate) use attached::Attached;
pub(crate) use builders::common_builders;
pub(crate) use caps::Slot;
use caps::{Caps, cap_key};
pub use drain::Drain;
pub(crate) use drain::DrainGuard;
use handshake::check_handshake;
pub(crate) use origin::OriginPolicy;
pub use proxy::ForwardedHeader;
use proxy::{IpRange, ProxyTrust, client_ip};
pub(crate) use refusal::Refusal;
pub use refusal::Rejection;
use resume::{positions, resume_values};

type TopicsFn = dyn Fn(&Request, &Depot) -> Result<Vec<Topic>, Rejection> + Send + Sync;
type IdentityFuture =
    std::pin::Pin<Box<dyn Future<Output = Result<Option<Identity>, Rejection>> + Send>>;
type IdentifyFn = dyn Fn(&Request, &Depot) -> IdentityFuture + Send + Sync;

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

impl Transport {
    /// The `transport` label of its metrics.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::WebSocket => "websocket",
            Self::Channels => "channels",
            Self::EventStream => "sse",
        }
    }
}

/// A request that passed every check: the hub connection to join and what it holds (slot,
/// drain registration) until it ends.
pub(crate) struct Admitted {
    pub(crate) conn: Connection,
    pub(crate) admission: Admission,
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
            caps: Caps::new(10_000, 1_024, 100),
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

    /// Where the request's topics start (`recent=`) and what it filters (`filter=`).
    fn start_and_filter(
        &self,
        req: &Request,
    ) -> Result<(Position, Option<crate::hub::Filter>), Rejection> {
        let base = match req.query::<String>("recent") {
            Some(n) => Position::Recent(
                n.parse::<usize>()
                    .map_err(|_| Rejection::bad_request("`recent` must be a number"))?
                    .min(self.max_recent),
            ),
            None => Position::Live,
        };
        let filter = match req.query::<String>("filter") {
            Some(text) => Some(
                crate::hub::Filter::parse(&text)
                    .map_err(|e| Rejection::bad_request(format!("`filter`: {e}")))?,
            ),
            None => None,
        };
        Ok((base, filter))
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
        let (base, filter) = self.start_and_filter(req)?;
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
            if identity.remaining().is_some_and(|left| left.is_zero()) {
                return Err(Rejection::unauthorized("the identity has expired").into());
            }
            conn = conn.authenticated(identity);
        }
        if let Some(filter) = filter {
            conn = conn.with_filter(filter);
        }
        let ip = client_ip(req, &self.proxies);
        if let Some(ip) = ip {
            let port = req.remote_addr().clone().into_std().map_or(0, |a| a.port());
            conn = conn.with_remote_addr(std::net::SocketAddr::new(ip, port));
        }
        for (topic, from) in positions(&topics, own_direct.as_ref(), base, &resume) {
            conn = conn.subscribe(topic, from);
        }
        let user = conn.identity().map(|i| i.user_arc());
        let slot = self
            .caps
            .acquire(ip.map(cap_key), user)
            .map_err(Refusal::Cap)?;
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
                admitted.admission.metrics = ConnMetrics::open(
                    transport.label(),
                    transport != Transport::EventStream,
                    &self.name,
                );
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
        crate::metrics::refused(transport.label(), refusal.kind());
        refusal.respond(res, self.caps.retry_after());
    }
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

/// Everything a connection holds until it ends: its cap slot, drain registration and metrics
/// (counted open from the join until dropped).
pub(crate) struct Admission {
    pub(crate) _slot: Slot,
    pub(crate) drain: DrainGuard,
    pub(crate) metrics: ConnMetrics,
}
