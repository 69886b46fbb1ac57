//! WebSocket endpoint: turns any [`Hub`] into a Salvo handler.
//!
//! ```no_run
//! use salvo::prelude::*;
//! use salvo_realtime::Rooms;
//! use salvo_realtime::ws::WsEndpoint;
//!
//! # #[tokio::main]
//! # async fn main() {
//! let rooms = Rooms::new();
//! // ws://host/ws/lobby joins room "lobby"; ?last=<id> resumes after that id.
//! let router = Router::with_path("ws/{topic}").goal(WsEndpoint::new(rooms));
//! let acceptor = TcpListener::new("127.0.0.1:8080").bind().await;
//! Server::new(acceptor).serve(router).await;
//! # }
//! ```
//!
//! # What a connection goes through
//!
//! Before the upgrade (answered with an HTTP status, nothing joined):
//!
//! 1. **Origin.** A browser's `Origin` must name the request's own `Host`, or be on the
//!    [`allowed_origins`](WsEndpoint::allowed_origins) list (exact match, no wildcards): else 403.
//!    Requests without `Origin` (non-browser clients) pass unless
//!    [`require_origin`](WsEndpoint::require_origin) is set. Pages with an opaque origin
//!    (`file://`, sandboxed frames) send `Origin: null`, which never matches: serve the page
//!    from an allowed origin.
//! 2. **Request.** The topics (path or query parameter `topic`, or a closure) and the resume
//!    position (`last=<id>`, or `recent=<n>`); malformed ones: 400.
//! 3. **Identity.** The [`identify`](WsEndpoint::identify) closure: 401/403 on rejection.
//! 4. **Caps.** Open connections in total (503) and per client IP (429), with `Retry-After`.
//!
//! The connection joins the hub before the `101` is sent, so everything published after the
//! client sees the upgrade reaches it. Then one task serves it: it sends every
//! delivery that is ready and flushes once per burst, reads client frames into
//! [`Hub::receive`], pings, and enforces the limits below. On every way out it leaves the hub
//! exactly once and frees its slot.
//!
//! # Wire format
//!
//! With [`Framing::Envelope`] (the default) every delivery is one JSON text frame, as
//! [`Delivery::envelope_json`](crate::Delivery::envelope_json) describes:
//!
//! ```text
//! {"type":"message","topic":"lobby","id":"3f9a0c1de2b47781-7","event":"chat","from":"alice","ts":1764277200000,"data":"hi"}
//! {"type":"presence","topic":"lobby","members":[{"user":"alice","connections":2}]}
//! {"type":"reset","topic":"lobby","requested":"..","epoch":"..","replay_after":"..","reason":"epoch_changed"}
//! {"type":"lagged","topic":"lobby","missed":12}
//! {"type":"error","error":"rate_limited","message":".."}
//! ```
//!
//! A client keeps the `id` of the last message per topic and reconnects with `?last=<id>`.
//! Client frames (text or binary) go to the hub as they are. With [`Framing::Raw`] messages
//! travel as bare payloads (text as text frames, binary as binary frames), without ids.
//!
//! # Limits and close codes
//!
//! | limit | default | when exceeded |
//! |---|---|---|
//! | message size | 64 KiB | close 1009 |
//! | text that isn't UTF-8 | | close 1007 |
//! | protocol violation | | close 1002 |
//! | inbound rate (token bucket) | 50 msg/s, burst 100 | [`RatePolicy::Reject`]: dropped, client told (`error` frame); [`RatePolicy::Close`]: close 1008 |
//! | heartbeat | ping every 30 s | no pong within 20 s: close 1008 |
//! | idle | off | no client message within it: close 1000 |
//! | slow consumer | lost messages / 10 s stuck send | [`SlowConsumerPolicy::Disconnect`]: close 1008; [`SlowConsumerPolicy::SkipAhead`]: `lagged` frame, continue |
//! | graceful drain | | close 1001 |
//! | hub refuses the join | | 400 (bad request for this hub) or 503 (hub full, backend down), before the upgrade |
//!
//! # Memory
//!
//! Tungstenite's default config gives every connection a 128 KiB read buffer. This endpoint
//! uses a 1 KiB read buffer (subscribers read little; the buffer grows to fit a larger message)
//! and a 4 KiB write buffer (the writer batches frames into it), so an idle connection costs
//! about 6 KiB; the write buffer is capped at 1 MiB so a stalled client can't hold more. Outbound messages are not queued per
//! connection: a slow connection reads the hub's shared buffer and history at its own pace, so
//! memory per connection stays bounded whatever the publish rate.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use salvo::http::StatusError;
use salvo::http::header::{HOST, ORIGIN};
use salvo::websocket::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use salvo::{Depot, FlowCtrl, Handler, Request, Response, async_trait};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Utf8Bytes};
use tracing::Instrument;

use crate::endpoint::{Admission, Common, common_builders};
use crate::error::HubError;
use crate::hub::{Connection, Delivery, Hub, Payload};

/// Close code: the server is going away (graceful drain).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code: the client broke the WebSocket protocol.
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Close code: a text frame was not valid UTF-8.
pub const CLOSE_INVALID_DATA: u16 = 1007;
/// Close code: a policy was violated (rate limit, slow consumer, heartbeat, join refused).
pub const CLOSE_POLICY: u16 = 1008;
/// Close code: a message exceeded the size limit.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code: the hub failed (backend error).
pub const CLOSE_INTERNAL: u16 = 1011;
/// Close code: normal closure (idle timeout, subscription ended).
pub const CLOSE_NORMAL: u16 = 1000;

/// What a slow connection gets when it loses messages (it fell behind the hub's buffer and
/// history) or a send stays stuck for the send timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SlowConsumerPolicy {
    /// Close it with 1008 and the reason "slow consumer" (a stuck send just drops it).
    #[default]
    Disconnect,
    /// Send a `lagged` frame with the count, then go on from the oldest retained message.
    SkipAhead,
}

/// What a connection that sends faster than its rate limit gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RatePolicy {
    /// Drop the message and send an `error` frame with `"error":"rate_limited"`.
    #[default]
    Reject,
    /// Close with 1008.
    Close,
}

/// How deliveries travel as frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Framing {
    /// Every delivery is a JSON text frame with type, topic, id, event, sender and data.
    #[default]
    Envelope,
    /// Messages are bare payloads: text as text frames, binary as binary frames. Resets, lag
    /// and presence still come as JSON envelopes.
    Raw,
}

/// A token bucket: `per_second` tokens refill continuously, up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    per_second: f64,
    burst: f64,
}

impl RateLimit {
    /// `per_second` messages a second on average, `burst` at once.
    ///
    /// ```
    /// use salvo_realtime::ws::RateLimit;
    /// let limit = RateLimit::new(10, 20);
    /// # let _ = limit;
    /// ```
    #[must_use]
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
        }
    }
}

struct Bucket {
    limit: RateLimit,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            tokens: limit.burst,
            at: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * self.limit.per_second;
        self.tokens = (self.tokens + refill).min(self.limit.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Clone)]
struct Settings {
    origins: Vec<String>,
    require_origin: bool,
    max_message: usize,
    read_buffer: usize,
    write_buffer: usize,
    max_write_buffer: usize,
    ping_interval: Duration,
    pong_timeout: Duration,
    idle_timeout: Option<Duration>,
    send_timeout: Duration,
    rate: Option<RateLimit>,
    rate_policy: RatePolicy,
    slow: SlowConsumerPolicy,
    framing: Framing,
    max_batch: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            origins: Vec::new(),
            require_origin: false,
            max_message: 64 * 1024,
            read_buffer: 1024,
            write_buffer: 4 * 1024,
            max_write_buffer: 1024 * 1024,
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(20),
            idle_timeout: None,
            send_timeout: Duration::from_secs(10),
            rate: Some(RateLimit::new(50, 100)),
            rate_policy: RatePolicy::Reject,
            slow: SlowConsumerPolicy::Disconnect,
            framing: Framing::Envelope,
            max_batch: 512,
        }
    }
}

/// A Salvo handler that serves WebSocket connections attached to a [`Hub`]. See the
/// [module docs](self) for the whole behaviour, limits and close codes.
pub struct WsEndpoint<H> {
    hub: Arc<H>,
    common: Common,
    settings: Arc<Settings>,
}

impl<H> Clone for WsEndpoint<H> {
    fn clone(&self) -> Self {
        Self {
            hub: Arc::clone(&self.hub),
            common: self.common.clone(),
            settings: Arc::clone(&self.settings),
        }
    }
}

impl<H> fmt::Debug for WsEndpoint<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsEndpoint")
            .field("common", &self.common)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl<H: Hub> WsEndpoint<H> {
    /// An endpoint attaching connections to `hub`, with the defaults in the
    /// [module docs](self).
    #[must_use]
    pub fn new(hub: H) -> Self {
        Self {
            hub: Arc::new(hub),
            common: Common::new(),
            settings: Arc::new(Settings::default()),
        }
    }

    fn set(mut self, f: impl FnOnce(&mut Settings)) -> Self {
        f(Arc::make_mut(&mut self.settings));
        self
    }

    common_builders!();

    /// Origins (scheme, host and port, e.g. `https://app.example.com`) allowed besides the
    /// request's own host; compared exactly, case-insensitively. Default: none.
    #[must_use]
    pub fn allowed_origins(self, origins: &[&str]) -> Self {
        let origins = origins
            .iter()
            .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
            .collect();
        self.set(|s| s.origins = origins)
    }

    /// Refuses requests without an `Origin` header (403). Default: `false`, since only browsers
    /// send `Origin` and cross-site hijacking needs a browser.
    #[must_use]
    pub fn require_origin(self, require: bool) -> Self {
        self.set(|s| s.require_origin = require)
    }

    /// Largest message (and frame) accepted from a client, in bytes; larger ones close the
    /// connection with 1009. Default: 64 KiB.
    #[must_use]
    pub fn max_message_size(self, bytes: usize) -> Self {
        self.set(|s| s.max_message = bytes)
    }

    /// Initial read and write buffer sizes per connection, in bytes. Default: 1 KiB read, 4 KiB
    /// write.
    #[must_use]
    pub fn buffer_sizes(self, read: usize, write: usize) -> Self {
        self.set(|s| {
            s.read_buffer = read.max(256);
            s.write_buffer = write;
        })
    }

    /// Most bytes a connection's write buffer may hold before sends wait. Default: 1 MiB.
    #[must_use]
    pub fn max_write_buffer(self, bytes: usize) -> Self {
        self.set(|s| s.max_write_buffer = bytes)
    }

    /// Ping interval and how long to wait for the pong before closing with 1008. Default: 30 s
    /// and 20 s.
    #[must_use]
    pub fn heartbeat(self, interval: Duration, timeout: Duration) -> Self {
        self.set(|s| {
            s.ping_interval = interval.max(Duration::from_millis(1));
            s.pong_timeout = timeout;
        })
    }

    /// Closes a connection (1000) whose client sent no message for `timeout`. Default: off.
    #[must_use]
    pub fn idle_timeout(self, timeout: Duration) -> Self {
        self.set(|s| s.idle_timeout = Some(timeout))
    }

    /// How long one flush to the client may take before the connection counts as a slow
    /// consumer and is dropped. Default: 10 s.
    #[must_use]
    pub fn send_timeout(self, timeout: Duration) -> Self {
        self.set(|s| s.send_timeout = timeout)
    }

    /// Limits inbound messages per connection (`None`: unlimited). Default: 50/s, burst 100.
    #[must_use]
    pub fn rate_limit(self, limit: Option<RateLimit>) -> Self {
        self.set(|s| s.rate = limit)
    }

    /// What happens past the rate limit. Default: [`RatePolicy::Reject`].
    #[must_use]
    pub fn rate_policy(self, policy: RatePolicy) -> Self {
        self.set(|s| s.rate_policy = policy)
    }

    /// What happens to a slow consumer. Default: [`SlowConsumerPolicy::Disconnect`].
    #[must_use]
    pub fn slow_consumer(self, policy: SlowConsumerPolicy) -> Self {
        self.set(|s| s.slow = policy)
    }

    /// How deliveries become frames. Default: [`Framing::Envelope`].
    #[must_use]
    pub fn framing(self, framing: Framing) -> Self {
        self.set(|s| s.framing = framing)
    }

    fn origin_allowed(&self, req: &Request) -> bool {
        let Some(origin) = req.headers().get(ORIGIN) else {
            return !self.settings.require_origin;
        };
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        if self.settings.origins.contains(&origin) {
            return true;
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
        matches!((authority, host), (Some(a), Some(h)) if a == h)
    }

    fn config(&self) -> WebSocketConfig {
        let s = &self.settings;
        WebSocketConfig::default()
            .read_buffer_size(s.read_buffer)
            .write_buffer_size(s.write_buffer)
            .max_write_buffer_size(s.max_write_buffer.max(s.write_buffer + s.max_message + 1))
            .max_message_size(Some(s.max_message))
            .max_frame_size(Some(s.max_message))
    }
}

#[async_trait]
impl<H: Hub> Handler for WsEndpoint<H> {
    async fn handle(
        &self,
        req: &mut Request,
        depot: &mut Depot,
        res: &mut Response,
        _ctrl: &mut FlowCtrl,
    ) {
        if !self.origin_allowed(req) {
            tracing::warn!(peer = ?req.remote_addr(), origin = ?req.headers().get(ORIGIN), "websocket refused: origin not allowed");
            res.render(StatusError::forbidden().brief("origin not allowed"));
            return;
        }
        let resume = req.query::<String>("last");
        let conn = match self.common.connection(req, depot, resume.as_deref()) {
            Ok(conn) => conn,
            Err(rejection) => {
                tracing::info!(peer = ?req.remote_addr(), %rejection, "websocket refused");
                rejection.write(res);
                return;
            }
        };
        if !is_upgrade_request(req) {
            // Let Salvo answer what's wrong (400) before anything is joined or counted.
            if let Err(e) = WebSocketUpgrade::new()
                .upgrade(req, res, |_| async {})
                .await
            {
                res.render(e);
            }
            return;
        }
        let Some(admission) = self.common.admit(req, conn.id(), res) else {
            return;
        };
        // Join before answering 101, so that everything published after the client sees the
        // upgrade reaches it, and a refused join is an HTTP status.
        let sub = match self.hub.join(&conn).await {
            Ok(sub) => sub,
            Err(e) => {
                tracing::warn!(conn = %conn.id(), error = %e, "hub refused the connection");
                res.render(join_refused(&e));
                return;
            }
        };
        let hub = Arc::clone(&self.hub);
        let settings = Arc::clone(&self.settings);
        let span = tracing::info_span!(
            "websocket",
            conn = %conn.id(),
            user = conn.user_id().unwrap_or("-"),
            peer = ?conn.peer_addr(),
        );
        // Handed to the connection task; taken back if the upgrade is refused.
        let joined = Arc::new(parking_lot::Mutex::new(Some((conn, sub, admission))));
        let handoff = Arc::clone(&joined);
        let upgraded = WebSocketUpgrade::with_config(self.config())
            .upgrade(req, res, move |ws| {
                let taken = handoff.lock().take();
                async move {
                    if let Some((conn, sub, admission)) = taken {
                        serve(ws, hub, conn, sub, admission, settings).await;
                    }
                }
                .instrument(span)
            })
            .await;
        if let Err(e) = upgraded {
            tracing::info!(error = %e, "websocket upgrade refused");
            let taken = joined.lock().take();
            if let Some((conn, sub, _admission)) = taken {
                self.hub.leave(&conn, sub).await;
            }
            res.render(e);
        }
    }
}

/// Whether the request asks for a WebSocket upgrade at all (GET with `Upgrade: websocket` and a
/// key). A plain GET (a crawler, a health check) must not join the hub: a room would announce a
/// member that never was.
fn is_upgrade_request(req: &Request) -> bool {
    let headers = req.headers();
    req.method() == salvo::http::Method::GET
        && headers
            .get(salvo::http::header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        && headers.contains_key(salvo::http::header::SEC_WEBSOCKET_KEY)
}

fn join_refused(e: &HubError) -> StatusError {
    match e {
        HubError::Backend(_) | HubError::TooManyTopics { .. } => {
            StatusError::service_unavailable().brief("the hub can't take this connection now")
        }
        other => StatusError::bad_request().brief(other.to_string()),
    }
}

/// Why a connection ended.
#[derive(Debug)]
enum End {
    /// Send this close frame, then stop.
    Close(u16, &'static str),
    /// The socket is gone or unusable: just stop.
    Gone(&'static str),
}

impl End {
    fn reason(&self) -> &'static str {
        match self {
            Self::Close(_, r) | Self::Gone(r) => r,
        }
    }
}

fn classify(error: &salvo::Error) -> End {
    if let salvo::Error::Other(e) = error
        && let Some(e) = e.downcast_ref::<tungstenite::Error>()
    {
        return match e {
            tungstenite::Error::Capacity(_) => End::Close(CLOSE_TOO_BIG, "message too big"),
            tungstenite::Error::Utf8(_) => End::Close(CLOSE_INVALID_DATA, "invalid utf-8"),
            tungstenite::Error::Protocol(_) => End::Close(CLOSE_PROTOCOL_ERROR, "protocol error"),
            _ => End::Gone("connection error"),
        };
    }
    End::Gone("connection error")
}

fn notice(kind: &str, message: &str) -> WsMessage {
    let json = serde_json::json!({ "type": "error", "error": kind, "message": message });
    WsMessage::text(json.to_string())
}

fn json_frame(bytes: bytes::Bytes) -> WsMessage {
    // Our envelopes are serde_json output, so always UTF-8.
    match Utf8Bytes::try_from(bytes) {
        Ok(text) => WsMessage::text(text),
        Err(_) => WsMessage::text("{}"),
    }
}

fn frame(delivery: &Delivery, framing: Framing) -> WsMessage {
    match (delivery, framing) {
        (Delivery::Message(m), Framing::Envelope) => json_frame(m.envelope_json().clone()),
        (Delivery::Message(m), Framing::Raw) => {
            let payload = m.payload();
            if payload.is_text() {
                json_frame(payload.bytes().clone())
            } else {
                WsMessage::binary(payload.bytes().clone())
            }
        }
        (other, _) => json_frame(other.envelope_json()),
    }
}

type Sink = SplitSink<WebSocket, WsMessage>;

/// One connection's whole life after the upgrade.
async fn serve<H: Hub>(
    ws: WebSocket,
    hub: Arc<H>,
    conn: Connection,
    mut sub: H::Subscription,
    admission: Admission,
    settings: Arc<Settings>,
) {
    let started = Instant::now();
    let (mut sink, mut stream) = ws.split();
    tracing::info!("connected");
    let end = pump(
        &mut sink,
        &mut stream,
        &*hub,
        &conn,
        &mut sub,
        &admission,
        &settings,
    )
    .await;
    if let End::Close(code, reason) = end {
        close(&mut sink, code, reason, &settings).await;
    }
    hub.leave(&conn, sub).await;
    drop(admission);
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    tracing::info!(reason = end.reason(), duration_ms, "disconnected");
}

async fn close(sink: &mut Sink, code: u16, reason: &'static str, settings: &Settings) {
    let send = async {
        let _ = sink.send(WsMessage::close_with(code, reason)).await;
        let _ = sink.close().await;
    };
    let _ = tokio::time::timeout(settings.send_timeout.min(Duration::from_secs(2)), send).await;
}

/// Heartbeat and idle deadlines.
struct Clock {
    next_ping: Instant,
    pong_due: Option<Instant>,
    idle_due: Option<Instant>,
}

impl Clock {
    fn next(&self) -> Instant {
        [Some(self.next_ping), self.pong_due, self.idle_due]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.next_ping)
    }
}

async fn pump<H: Hub>(
    sink: &mut Sink,
    stream: &mut SplitStream<WebSocket>,
    hub: &H,
    conn: &Connection,
    sub: &mut H::Subscription,
    admission: &Admission,
    settings: &Settings,
) -> End {
    let mut bucket = settings.rate.map(Bucket::new);
    let now = Instant::now();
    let mut clock = Clock {
        next_ping: now + settings.ping_interval,
        pong_due: None,
        idle_due: settings.idle_timeout.map(|t| now + t),
    };
    let timer = tokio::time::sleep_until(clock.next());
    tokio::pin!(timer);
    let drain = admission.drain.requested();
    tokio::pin!(drain);
    loop {
        tokio::select! {
            biased;
            () = &mut drain => return End::Close(CLOSE_GOING_AWAY, "server shutting down"),
            frame = stream.next() => {
                let msg = match frame {
                    None => return End::Gone("client went away"),
                    Some(Err(e)) => return classify(&e),
                    Some(Ok(msg)) => msg,
                };
                if msg.is_pong() {
                    clock.pong_due = None;
                } else if msg.is_close() {
                    return End::Gone("client closed");
                } else if msg.is_ping() {
                    // Tungstenite answers pings itself.
                } else {
                    if let Some(t) = settings.idle_timeout {
                        clock.idle_due = Some(Instant::now() + t);
                    }
                    if bucket.as_mut().is_some_and(|b| !b.take()) {
                        match settings.rate_policy {
                            RatePolicy::Close => return End::Close(CLOSE_POLICY, "rate limit exceeded"),
                            RatePolicy::Reject => {
                                tracing::debug!("message dropped: rate limit");
                                hub.note_dropped(conn, 1);
                                if !send_now(sink, notice("rate_limited", "message dropped: rate limit exceeded"), settings).await {
                                    return End::Gone("send failed");
                                }
                                timer.as_mut().reset(clock.next());
                                continue;
                            }
                        }
                    }
                    let payload = if msg.is_text() {
                        match msg.as_str() {
                            Ok(text) => Payload::text(text),
                            Err(_) => return End::Close(CLOSE_INVALID_DATA, "invalid utf-8"),
                        }
                    } else {
                        Payload::binary(bytes::Bytes::copy_from_slice(msg.as_bytes()))
                    };
                    match hub.receive(conn, payload).await {
                        Ok(()) => {}
                        Err(HubError::Backend(e)) => {
                            tracing::error!(error = %e, "hub failed to receive");
                            return End::Close(CLOSE_INTERNAL, "hub failure");
                        }
                        Err(HubError::PayloadTooLarge { .. }) => return End::Close(CLOSE_TOO_BIG, "message too big"),
                        Err(e) => {
                            tracing::debug!(error = %e, "message refused by the hub");
                            if !send_now(sink, notice("refused", &e.to_string()), settings).await {
                                return End::Gone("send failed");
                            }
                        }
                    }
                }
                timer.as_mut().reset(clock.next());
            }
            delivery = sub.next() => {
                let Some(first) = delivery else {
                    return End::Close(CLOSE_NORMAL, "subscription ended");
                };
                // Boxed: the burst future is large and only lives while sending, so it shouldn't
                // be part of every idle connection's state.
                if let Some(end) = Box::pin(send_burst(sink, sub, first, settings)).await {
                    return end;
                }
            }
            () = &mut timer => {
                let now = Instant::now();
                if clock.pong_due.is_some_and(|due| now >= due) {
                    tracing::info!("no pong within the heartbeat timeout");
                    return End::Close(CLOSE_POLICY, "heartbeat timeout");
                }
                if clock.idle_due.is_some_and(|due| now >= due) {
                    return End::Close(CLOSE_NORMAL, "idle timeout");
                }
                if now >= clock.next_ping {
                    if !send_now(sink, WsMessage::ping(bytes::Bytes::new()), settings).await {
                        return End::Gone("send failed");
                    }
                    clock.pong_due.get_or_insert(now + settings.pong_timeout);
                    clock.next_ping = now + settings.ping_interval;
                }
                timer.as_mut().reset(clock.next());
            }
        }
    }
}

/// Sends one frame and flushes, within the send timeout.
async fn send_now(sink: &mut Sink, msg: WsMessage, settings: &Settings) -> bool {
    matches!(
        tokio::time::timeout(settings.send_timeout, sink.send(msg)).await,
        Ok(Ok(()))
    )
}

/// Feeds `first` and every delivery ready after it (up to a batch), then flushes once.
async fn send_burst<S: futures_util::Stream<Item = Delivery> + Unpin>(
    sink: &mut Sink,
    sub: &mut S,
    first: Delivery,
    settings: &Settings,
) -> Option<End> {
    let burst = async {
        let mut next = Some(first);
        let mut sent = 0;
        while let Some(delivery) = next.take() {
            if let Delivery::Lagged { missed, .. } = &delivery {
                if settings.slow == SlowConsumerPolicy::Disconnect {
                    tracing::warn!(missed, "slow consumer disconnected");
                    let _ = sink.flush().await;
                    return Some(End::Close(CLOSE_POLICY, "slow consumer"));
                }
                tracing::info!(missed, "slow consumer skipped ahead");
            }
            if sink.feed(frame(&delivery, settings.framing)).await.is_err() {
                return Some(End::Gone("send failed"));
            }
            sent += 1;
            if sent < settings.max_batch {
                next = sub.next().now_or_never().flatten();
            }
        }
        if sink.flush().await.is_err() {
            return Some(End::Gone("send failed"));
        }
        None
    };
    match tokio::time::timeout(settings.send_timeout, burst).await {
        Ok(end) => end,
        Err(_) => {
            tracing::warn!("send timed out: slow consumer dropped");
            Some(End::Gone("send timed out"))
        }
    }
}
