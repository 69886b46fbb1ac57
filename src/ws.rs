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
//! Before the upgrade, every check runs, in this order, and the first that fails answers with
//! an HTTP status; nothing is joined or counted until all have passed (the same lifecycle as
//! the SSE endpoint, with the same status for the same refusal):
//!
//! 1. **Drain.** A draining endpoint answers 503.
//! 2. **Handshake** (RFC 6455 §4.2.1): `GET` over HTTP/1.1 or later, `Connection: upgrade`,
//!    `Upgrade: websocket`, a well-formed `Sec-WebSocket-Key`: else 400.
//!    `Sec-WebSocket-Version` other than 13: 426 with `Sec-WebSocket-Version: 13`.
//! 3. **Origin.** A browser's `Origin` must name the request's own `Host`, or be on the
//!    [`allowed_origins`](WsEndpoint::allowed_origins) list (exact match, no wildcards), or
//!    pass [`allow_origin_fn`](WsEndpoint::allow_origin_fn) (a predicate you can share with
//!    your CORS config; CORS itself doesn't guard upgrades): else 403; two `Origin` headers:
//!    403. Requests without `Origin` (non-browser clients) pass
//!    unless [`require_origin`](WsEndpoint::require_origin) is set. Pages with an opaque origin
//!    (`file://`, sandboxed frames) send `Origin: null`, which never matches.
//! 4. **Request.** The topics (path or query parameter `topic`, or a closure; a bad name is
//!    400) and where each starts: `recent=<n>` (not a number: 400), and `last=` ids (below).
//! 5. **Identity.** The [`identify`](WsEndpoint::identify) closure: 401/403 on rejection.
//! 6. **Caps.** Open connections in total (503) and per client address (429, IPv6 per /64,
//!    behind [`trusted_proxies`](WsEndpoint::trusted_proxies) the forwarded address), with
//!    `Retry-After`.
//! 7. **Join.** The hub's refusal maps to a status: 400 (bad topic, too many subscriptions),
//!    403 (the hub refuses connections, or the server ended this one while it joined), 429
//!    (this client created too many topics), 503 (hub full, backend down; details are
//!    logged, never sent).
//!
//! The connection joins the hub before the `101` is sent, so everything published after the
//! client sees the upgrade reaches it. Then one task serves it: it sends every delivery that
//! is ready and flushes once per burst (a message with nothing behind it is one write of its
//! frame, made from the message's bytes that every subscriber shares), reads client frames into
//! [`Hub::receive`], pings, and enforces the limits below. On every way out it completes the
//! closing handshake, leaves the hub exactly once and frees its slot.
//!
//! # Resume
//!
//! A client keeps the `id` of the last message per topic and reconnects with `?last=<id>` (a
//! request with one topic) or one `?last=<topic>:<id>` per topic (any number of topics; the
//! id never contains `:`, so the last `:` splits). `last=@<user>:<id>` resumes the
//! connection's own direct-message log of [`Rooms`](crate::Rooms); an id for a topic the
//! request doesn't name (a room the server put the connection in) is ignored. Each topic then gets
//! exactly what it missed, or a `reset` first when that can't be done (another epoch, expired,
//! ahead), and an id that can't be read at all gets a `reset` with reason `invalid`: a stale
//! id never locks a client out.
//!
//! # Wire format
//!
//! With [`Framing::Envelope`] (the default) every delivery is one JSON text frame, as
//! [`Delivery::envelope_json`](crate::Delivery::envelope_json) describes:
//!
//! ```text
//! {"type":"message","topic":"lobby","id":"3f9a0c1de2b47781-7","event":"chat","from":"alice","ts":1764277200000,"data":"hi"}
//! {"type":"message","topic":"lobby","event":"presence.join","from":"bob","ts":1764277200000,"data":{"user":"bob","data":null}}
//! {"type":"message","topic":"files","id":"3f9a0c1de2b47781-8","ts":1764277200000,"data":"AAEC","binary":true}
//! {"type":"presence","topic":"lobby","members":[{"user":"alice","connections":2}],"more":false}
//! {"type":"reset","topic":"lobby","requested":"..","epoch":"..","replay_after":"..","reason":"epoch_changed"}
//! {"type":"lagged","topic":"lobby","missed":12}
//! {"type":"error","error":"rate_limited","message":".."}
//! ```
//!
//! Presence notices (`presence.join`, `presence.leave`) have no `id`: they are live-only and
//! never resumed from. A presence snapshot of a big room comes in several frames; the one with
//! `"more":false` completes it. A binary payload travels as base64 with `"binary":true`. A
//! reset's `requested` is `null` when the id sent couldn't be read (reason `invalid`).
//!
//! `error` frames tell the sender about a message of its own that was not delivered:
//!
//! | `error` | meaning |
//! |---|---|
//! | `rate_limited` | over the inbound rate limit ([`RatePolicy::Reject`]); dropped |
//! | `unavailable` | the hub's backend failed or timed out, or the hub is full: not delivered to the room that failed (a connection in several rooms gets it published room by room, so rooms before that one have it); safe to retry |
//! | `json_too_deep` | JSON nested deeper than [`MAX_JSON_DEPTH`](crate::MAX_JSON_DEPTH); dropped |
//! | `refused` | the hub takes no messages from connections ([`InboundPolicy::Reject`](crate::InboundPolicy::Reject)) |
//! | `not_joined` | the connection is no longer joined (the server ended it while the message was on its way) |
//! | `not_subscribed` | the connection left a room while the message was on its way to it |
//! | `invalid_data` | a [`Channels`](crate::channel::Channels) room's publish handler can't take the data (binary, or not the type it reads) |
//! | `handler_failed`, `timeout` | a publish handler panicked, or took longer than its timeout |
//! | `invalid_topic`, `invalid_event`, `too_many_subscriptions`, `too_many_created`, `unsupported`, `internal` | another hub's `receive` refused with the [`HubError`] of that [`code`](crate::error::HubError::code) |
//! | any other code | a publish handler's own [`Refused`](crate::error::Refused) code (say `moderated`) |
//!
//! A message over the size limit is no `error` frame: it closes the connection 1009.
//!
//! Order: an `error` frame is sent after every delivery the connection had ready when its
//! message was refused, so with an in-memory hub the echo of an earlier accepted message (under
//! [`InboundPolicy::Publish`](crate::InboundPolicy::Publish)) always comes before the error for
//! a later one. With a remote backend, deliveries travel
//! through it and may come after.
//!
//! Client frames (text or binary) go to the hub as they are. With [`Framing::Raw`] messages
//! travel as bare payloads (text as text frames, binary as binary frames), without ids, and
//! the connection carries nothing else, so a member's text can never pass for a server notice:
//! no presence, reset or `error` frames. What those would tell becomes a close: lost messages
//! (lag, or a `reset`: a resume position that can't be honoured, an unreadable `last=`, the
//! log's epoch changing) close 1008 whatever the slow-consumer policy, a refused or
//! rate-limited message closes 1008, a backend failure 1011.
//!
//! # The channel protocol
//!
//! A client that offers `Sec-WebSocket-Protocol: salvo-realtime.v1` (and gets it back in the
//! `101`) speaks version 1 of the channel protocol instead of plain frames: every text frame
//! it sends is one JSON command with a client-chosen `ref` (a string of at most 62 characters,
//! or a number), and the server answers each command with exactly one `reply` carrying that
//! `ref`. Deliveries (`message`, `presence`, `reset`, `lagged`) are the envelopes above, each
//! with its `topic`. Clients that don't offer the protocol keep the plain envelope framing.
//! A channel connection may name no topic when it connects; it subscribes with commands.
//! The hub decides what each command does; [`Channels`](crate::channel::Channels) runs the
//! application's rules and handlers, [`Rooms`](crate::Rooms) accepts every subscribe and
//! publish, and hubs without dynamic topics ([`PubSub`](crate::PubSub)) answer `unsupported`
//! (a channel connection to one must name its topics when it connects: its subscription ends,
//! and the socket closes 1000, when it follows nothing).
//!
//! | client sends | fields | `data` of an `ok` reply |
//! |---|---|---|
//! | `{"type":"subscribe",..}` | `ref`, `topic`, `last`? (the topic's last id) or `recent`? (n, at most 1,000), `data`? (for the authorization rule) | `{"topic":..}`; the topic's deliveries follow on the socket: a `reset` first if `last` can't be honoured (reason `invalid` if it can't be read), what was missed, the presence snapshot |
//! | `{"type":"unsubscribe",..}` | `ref`, `topic` | `{"topic":..,"was_subscribed":bool}`; nothing more of the topic is delivered |
//! | `{"type":"publish",..}` | `ref`, `topic` (one the socket is subscribed to), `data` (any JSON; a string is sent as text), `event`?, `echo`? (default `true`: the publisher gets its own message) | `{"id":..}`: the message's id |
//! | `{"type":"call",..}` | `ref`, `method`, `data`? | the method's result |
//!
//! | server sends | when |
//! |---|---|
//! | `{"type":"reply","ref":..,"status":"ok","data":..}` | a command succeeded |
//! | `{"type":"reply","ref":..,"status":"error","error":{"code":..,"message":..}}` | a command failed; nothing of it took effect |
//! | `{"type":"error","error":..,"message":..}` | a frame whose `ref` couldn't be read (`bad_frame`, `missing_ref`, `json_too_deep`; `rate_limited` when the rate limit dropped it) |
//! | `{"type":"message","topic":"$conn",..}` | a message the server sent to this connection alone; `event` `subscribed` / `unsubscribed` with `{"topic":..}` when the server moved it |
//!
//! Error codes (a handler's own [`Refused`](crate::error::Refused) codes come on top):
//!
//! | code | meaning |
//! |---|---|
//! | `bad_frame` | not a JSON object, or a binary frame |
//! | `missing_ref` | no `ref`, or one that is neither a short string nor a number |
//! | `duplicate_ref` | a command with the same `ref` is still in flight |
//! | `unknown_command` | `type` is none of the four |
//! | `invalid_topic`, `invalid_event`, `invalid_data` | a bad name, or `data` missing or not what the handler takes |
//! | `forbidden` | no authorization rule allows the topic (or the rule's own code) |
//! | `not_subscribed` | publish or unsubscribe on a topic the socket isn't subscribed to |
//! | `not_joined` | the connection is no longer joined (the server ended it while the command ran) |
//! | `too_many_subscriptions` | past [`HubConfig::max_subscriptions`](crate::HubConfig::max_subscriptions) |
//! | `too_many_created` | past [`HubConfig::max_topics_per_owner`](crate::HubConfig::max_topics_per_owner) |
//! | `unknown_method` | no handler for the `call`'s method |
//! | `handler_failed`, `timeout` | the handler panicked (while called, or in its future), or took longer than its timeout |
//! | `too_large`, `json_too_deep` | the data is over the hub's payload limit ([`HubConfig::max_payload`](crate::HubConfig::max_payload)), or nested too deep; a frame over the endpoint's [`max_message_size`](WsEndpoint::max_message_size) closes 1009 instead |
//! | `unavailable` | the backend failed or the hub is full: not done, safe to retry |
//! | `unsupported` | this hub has no such operation |
//! | `refused` | the hub takes no messages from connections ([`InboundPolicy::Reject`](crate::InboundPolicy::Reject)) |
//! | `internal` | a bug of the server's (a connection joined twice); the detail is in its log |
//! | `rate_limited` | over the inbound rate limit: the command was not run (a client should pace its commands, say a reconnect's resubscriptions, within the burst, and may retry later) |
//!
//! Order: a connection's `subscribe`, `unsubscribe` and `publish` commands run one at a time,
//! in the order sent; `call`s run concurrently with them and each other (up to 8 at once).
//! While a command runs, reading pauses (the client's frames wait in TCP), deliveries go on;
//! the heartbeat doesn't count that time against the client (its pong may be waiting behind a
//! command). Every command, a rate-limited one too, gets exactly one reply.
//! A reply is sent after every delivery that was ready when its command finished, so a
//! publisher sees its own message before the reply, and a subscriber the start of the replay.
//!
//! # Limits and close codes
//!
//! Every default of both endpoints and the hubs, with its reason, is in one table: the README's
//! "Defaults, status codes and close codes" (the crate's front page). In brief:
//!
//! | limit | default | when exceeded |
//! |---|---|---|
//! | message size (a frame, or a message of several) | 64 KiB | close 1009 |
//! | a message over the hub's payload limit ([`HubConfig::max_payload`](crate::HubConfig::max_payload), 64 KiB) | | plain frames: close 1009; a channel-protocol command: a `too_large` reply, the connection stays |
//! | text that isn't UTF-8 | | close 1007 |
//! | protocol violation (bad frame, close code 1005/1006/1015/<1000 from the client) | | close 1002 |
//! | inbound rate (token bucket; every frame counts, pings and pongs too) | 50 msg/s, burst 100 | [`RatePolicy::Reject`]: dropped, client told (`error` frame; a channel-protocol command gets its `rate_limited` reply); [`RatePolicy::Close`]: close 1008. A ping or pong past the limit always closes 1008: there is no message to refuse |
//! | heartbeat | ping every 30 s | no pong within 20 s: close 1008 |
//! | idle | off | no client message within it: close 1000 |
//! | slow consumer: lost messages | | [`SlowConsumerPolicy::Disconnect`]: close 1008; [`SlowConsumerPolicy::SkipAhead`]: `lagged` frame, continue |
//! | slow consumer: a send stuck (the client took no byte for the [`send_timeout`](WsEndpoint::send_timeout)) | 10 s | close 1008: the Close goes after what was already buffered, and the client gets the close wait (2 s) to take it, else TCP closes without it. A client that reads slowly but steadily is never cut: the timeout restarts whenever the socket takes bytes |
//! | graceful drain | | close 1001 |
//! | backend down when the client sends | | `error` frame `unavailable`; the connection stays up |
//!
//! # Closing
//!
//! The closing handshake follows RFC 6455 §5.5.1 and §7. When the client sends Close, the
//! server answers with Close (echoing the code, or 1002 for a code that may not be sent:
//! 1005, 1006, 1015, below 1000) and then closes TCP. When the server closes (the codes above),
//! it sends Close, waits up to 2 s for the client's Close, then closes TCP. Codes are in
//! [`close_code`].
//!
//! # Memory
//!
//! Tungstenite's default config gives every connection a 128 KiB read buffer. This endpoint
//! uses a 1 KiB read buffer (subscribers read little; the buffer grows to fit a larger message)
//! and a 4 KiB write buffer (the writer batches frames into it), so an idle connection costs
//! about 6 KiB. A burst is flushed whenever it has buffered 1 MiB
//! ([`max_write_buffer`](WsEndpoint::max_write_buffer)), so a stalled client can't hold more
//! than that plus one frame; a frame larger than it is still sent whole (no frame the server
//! produces can end a connection). Outbound messages are not queued per connection: a slow
//! connection reads the hub's shared buffer and history at its own pace, so memory per
//! connection stays bounded whatever the publish rate.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSlice};
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;

use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, Sink as _, SinkExt, Stream, StreamExt};
use salvo::conn::ConnCtrl;
use salvo::http::header::{HeaderValue, SEC_WEBSOCKET_PROTOCOL};
use salvo::http::headers::{self, HeaderMapExt, SecWebsocketAccept, SecWebsocketKey};
use salvo::http::{StatusCode, StatusError};
use salvo::hyper::upgrade::{OnUpgrade, Upgraded};
use salvo::rt::tokio::TokioIo;
use salvo::{Depot, FlowCtrl, Handler, Request, Response, async_trait};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage, Utf8Bytes};
use tracing::Instrument;

use crate::endpoint::{Admission, Admitted, Common, Transport, common_builders};
use crate::error::HubError;
use crate::hub::{
    Connection, Delivery, Hub, Message, Payload, Publication, WS_BINARY, WS_TEXT, ws_frame_header,
};
use crate::metrics::ConnMetrics;
use crate::protocol::{self, Command, SUBPROTOCOL};
use crate::wake::Gates;

/// The close codes this endpoint sends (RFC 6455 §7.4.1).
pub mod close_code {
    /// Normal closure: idle timeout, or the hub ended the subscription.
    pub const NORMAL: u16 = 1000;
    /// The server is going away (graceful drain).
    pub const GOING_AWAY: u16 = 1001;
    /// The client broke the WebSocket protocol (a bad frame, a close code it may not send).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame was not valid UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// A policy was violated: rate limit, slow consumer (lost messages, or a stuck send),
    /// heartbeat timeout; and under [`Framing::Raw`](super::Framing::Raw), a refused message
    /// or a `reset` (messages the connection can't get).
    pub const POLICY: u16 = 1008;
    /// A message exceeded the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// The hub failed (under [`Framing::Raw`](super::Framing::Raw) only: with envelopes a
    /// failed send is an `error` frame and the connection stays up).
    pub const INTERNAL: u16 = 1011;
}

use close_code::{GOING_AWAY, INTERNAL, INVALID_DATA, NORMAL, POLICY, PROTOCOL_ERROR, TOO_BIG};

/// The socket after the upgrade.
type Socket = WebSocketStream<Progress<TokioIo<Upgraded>>>;

/// A connection's subscription, fused: once it has ended it is never polled again (a hub's
/// stream may panic or hang if it were, and look-aheads poll past the end).
type Deliveries<H> = futures_util::stream::Fuse<<H as Hub>::Subscription>;

/// How long a closing connection waits for the client's Close after sending its own.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The upgraded connection, with a bound on how long a write may wait without the client
/// taking a byte: once a write has waited [`send_timeout`](WsEndpoint::send_timeout) since the
/// socket last took bytes, it fails with `TimedOut` and [`stalled`](Self::stalled) is set (the
/// connection is then a slow consumer). The bound restarts whenever the socket takes bytes, so
/// a client that reads slowly but steadily is never cut, however long a burst takes to reach
/// it.
///
/// # Invariants
///
/// `armed` is true from the first write that waited after the last progress (a write that
/// took bytes, or a flush that completed) until the next progress; the timer's deadline is
/// then that first wait plus the limit. The timer is allocated the first time a write waits
/// and reused after that: an idle connection holds one pointer for it.
struct Progress<T> {
    io: T,
    limit: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
    /// A write waited past the limit.
    stalled: bool,
    /// Whether the limit applies: not while closing, which the close wait bounds instead.
    enforced: bool,
}

impl<T> Progress<T> {
    fn new(io: T, limit: Duration) -> Self {
        Self {
            io,
            limit,
            timer: None,
            armed: false,
            stalled: false,
            enforced: true,
        }
    }

    /// A write must wait: `Pending` (the timer wakes the task at the deadline), or `TimedOut`
    /// once the deadline has passed.
    fn waiting<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        if !self.enforced {
            return Poll::Pending;
        }
        let limit = self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if !self.armed {
            timer.as_mut().reset(Instant::now() + limit);
            self.armed = true;
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.stalled = true;
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client took nothing for the send timeout",
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// What a write or flush returned, with the bound applied.
    fn watch<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
        progress: impl FnOnce(&R) -> bool,
    ) -> Poll<io::Result<R>> {
        match polled {
            Poll::Ready(Ok(done)) => {
                if progress(&done) {
                    self.armed = false;
                }
                Poll::Ready(Ok(done))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.waiting(cx),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Progress<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Progress<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.watch(cx, polled, |n| *n > 0)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.watch(cx, polled, |n| *n > 0)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.watch(cx, polled, |()| true)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// What a slow connection gets when it loses messages (it fell behind the hub's buffer and
/// history). A send stuck for the [`send_timeout`](WsEndpoint::send_timeout) is closed 1008
/// whatever the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SlowConsumerPolicy {
    /// Close it with 1008 and the reason "slow consumer" (as a stuck send is, under either
    /// policy).
    #[default]
    Disconnect,
    /// Send a `lagged` frame with the count, then go on from the oldest retained message.
    /// Under [`Framing::Raw`] there is no `lagged` frame: it disconnects.
    SkipAhead,
}

/// What a connection that sends faster than its rate limit gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RatePolicy {
    /// Drop the message and send an `error` frame with `"error":"rate_limited"` (under
    /// [`Framing::Raw`]: close 1008).
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
    /// Messages are bare payloads: text as text frames, binary as binary frames; nothing else
    /// is sent in-band (see the [module docs](self#wire-format)).
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
///
/// Clones serve the same hub. Each clone has its own settings (changing a clone's never
/// changes the original's); the live state is shared: the open-connection count and the
/// [`Drain`](crate::Drain).
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

    /// Largest message (and frame) accepted from a client, in bytes; larger ones close the
    /// connection with 1009 (a message within it but over the hub's
    /// [`max_payload`](crate::HubConfig::max_payload) closes 1009 too, or gets a `too_large`
    /// reply if it is a channel-protocol command). Default: 64 KiB.
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

    /// Most bytes a burst buffers before it flushes and waits for the client to take them.
    /// A single frame larger than this is still sent. Default: 1 MiB.
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

    /// How long a write to the client may wait without the client taking a single byte before
    /// the connection counts as a slow consumer: it is then closed with 1008, the Close going
    /// after what was already buffered, with the close wait (2 s) to get through before TCP
    /// closes. The timeout restarts whenever the socket takes bytes, so a client that reads
    /// slowly but steadily gets a long burst (a resume's replay, say) whole. Default: 10 s.
    #[must_use]
    pub fn send_timeout(self, timeout: Duration) -> Self {
        self.set(|s| s.send_timeout = timeout)
    }

    /// Limits inbound frames per connection (`None`: unlimited). Every frame counts: messages,
    /// pings and pongs. Default: 50/s, burst 100.
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

    fn config(&self) -> WebSocketConfig {
        let s = &self.settings;
        // The write-buffer cap is ours (a burst flushes at `max_write_buffer`), so tungstenite's
        // hard cap never refuses a frame the server produced.
        WebSocketConfig::default()
            .read_buffer_size(s.read_buffer)
            .write_buffer_size(s.write_buffer)
            .max_write_buffer_size(usize::MAX)
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
        // Every check, then the join, before the 101: everything published after the client
        // sees the upgrade reaches it, and any refusal is an HTTP status.
        let channel = self.settings.framing == Framing::Envelope && offers_channel_protocol(req);
        let transport = if channel {
            Transport::Channels
        } else {
            Transport::WebSocket
        };
        let (admitted, sub) = match self.common.connect(&*self.hub, req, depot, transport).await {
            Ok(joined) => joined,
            Err(refusal) => {
                self.common.refuse(&refusal, req, res, transport);
                return;
            }
        };
        let span = tracing::info_span!(
            "websocket",
            conn = %admitted.conn.id(),
            user = admitted.conn.user_id().unwrap_or("-"),
            peer = ?admitted.conn.remote_addr(),
        );
        // The handshake was checked whole before the join (`check_handshake`); what is left is
        // the 101 and the connection it hands over. Without it (not an HTTP/1.1 connection
        // that can be upgraded), the join is undone.
        let key = req.headers().typed_get::<SecWebsocketKey>();
        let on_upgrade = req.extensions_mut().remove::<OnUpgrade>();
        let (Some(key), Some(on_upgrade)) = (key, on_upgrade) else {
            tracing::info!("websocket upgrade impossible after the join");
            self.hub.leave(&admitted.conn, sub).await;
            res.render(
                StatusError::bad_request()
                    .brief("this connection can't be upgraded to a websocket"),
            );
            return;
        };
        // A WebSocket is long-lived and quiet stretches are normal: Salvo's idle and
        // write-stall fuses (when the server runs with them) must not cut it.
        if let Some(ctrl) = req.extensions().get::<ConnCtrl>() {
            ctrl.relax_timeouts();
        }
        res.status_code(StatusCode::SWITCHING_PROTOCOLS);
        let headers = res.headers_mut();
        headers.typed_insert(headers::Connection::upgrade());
        headers.typed_insert(headers::Upgrade::websocket());
        headers.typed_insert(SecWebsocketAccept::from(key));
        if channel {
            headers.insert(
                SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(SUBPROTOCOL),
            );
        }
        let hub = Arc::clone(&self.hub);
        let settings = Arc::clone(&self.settings);
        let config = self.config();
        // If the client vanishes mid-upgrade, the upgrade fails (or the task is dropped with
        // the runtime): either way the subscription leaves the hub and the admission frees
        // the slot.
        tokio::spawn(
            async move {
                match on_upgrade.await {
                    Ok(upgraded) => {
                        let io = Progress::new(TokioIo::new(upgraded), settings.send_timeout);
                        let ws = Socket::from_raw_socket(io, Role::Server, Some(config)).await;
                        serve(ws, hub, admitted, sub, settings, channel).await;
                    }
                    Err(e) => {
                        tracing::info!(error = %e, "websocket upgrade failed after the join");
                        hub.leave(&admitted.conn, sub).await;
                    }
                }
            }
            .instrument(span),
        );
    }
}

/// Whether the client offers the channel protocol in `Sec-WebSocket-Protocol`.
fn offers_channel_protocol(req: &Request) -> bool {
    req.headers()
        .get_all(salvo::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL)
}

/// How many `call`s of one connection may run at once; past it, reading pauses.
const MAX_CALLS: usize = 8;

/// A command being handled: its `ref` and what the hub answered.
type Done = (serde_json::Value, Result<serde_json::Value, HubError>);
type Pending<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Done> + Send + 'a>>;

/// The hub operation a command stands for.
fn handle<'a, H: Hub>(hub: &'a H, conn: &'a Connection, request: protocol::Request) -> Pending<'a> {
    let reference = request.reference;
    Box::pin(async move {
        let result = match request.command {
            Command::Subscribe { topic, from, data } => {
                let subscribed = hub.add_topic(conn, &topic, from, data.as_ref()).await;
                if let Err(HubError::Refused(_)) = &subscribed {
                    crate::metrics::refused(Transport::Channels, "subscribe");
                }
                subscribed.map(|()| serde_json::json!({ "topic": topic }))
            }
            Command::Unsubscribe { topic } => hub
                .remove_topic(conn, &topic)
                .await
                .map(|was| serde_json::json!({ "topic": topic, "was_subscribed": was })),
            Command::Publish {
                topic,
                event,
                payload,
                echo,
            } => {
                let mut publication = Publication::new(payload).skip_origin(!echo);
                if let Some(event) = event {
                    publication = publication.event_name_checked(event);
                }
                hub.publish_from(conn, &topic, publication)
                    .await
                    .map(|id| serde_json::json!({ "id": id }))
            }
            Command::Call { method, data } => hub.call(conn, &method, data).await,
        };
        (reference, result)
    })
}

/// Why a connection ended.
#[derive(Debug)]
enum End {
    /// The client sent Close; tungstenite queued the answer: send it, then close TCP.
    ClientClosed,
    /// Send this Close, wait (bounded) for the client's, then close TCP.
    Close(u16, &'static str),
    /// The socket is gone or unusable: just stop.
    Gone(&'static str),
}

impl End {
    fn reason(&self) -> &'static str {
        match self {
            Self::ClientClosed => "client closed",
            Self::Close(_, r) | Self::Gone(r) => r,
        }
    }
}

fn classify(error: &tungstenite::Error) -> End {
    match error {
        tungstenite::Error::Capacity(_) => End::Close(TOO_BIG, "message too big"),
        tungstenite::Error::Utf8(_) => End::Close(INVALID_DATA, "invalid utf-8"),
        tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        ) => End::Gone("connection reset"),
        tungstenite::Error::Protocol(_) => End::Close(PROTOCOL_ERROR, "protocol error"),
        _ => End::Gone("connection error"),
    }
}

fn json_frame(bytes: bytes::Bytes) -> WsMessage {
    // Our envelopes are serde_json output, so always UTF-8.
    match Utf8Bytes::try_from(bytes) {
        Ok(text) => WsMessage::text(text),
        Err(_) => WsMessage::text("{}"),
    }
}

/// The frame a delivery travels as; `None` for what [`Framing::Raw`] doesn't carry.
fn frame(delivery: &Delivery, framing: Framing) -> Option<WsMessage> {
    match (delivery, framing) {
        (Delivery::Message(m), Framing::Envelope) => Some(json_frame(m.envelope_json().clone())),
        (Delivery::Message(m), Framing::Raw) if !m.is_ephemeral() => {
            let payload = m.payload();
            Some(if payload.is_text() {
                json_frame(payload.bytes().clone())
            } else {
                WsMessage::binary(payload.bytes().clone())
            })
        }
        (_, Framing::Raw) => None,
        (other, Framing::Envelope) => Some(json_frame(other.envelope_json())),
    }
}

/// What a message's frame is made of, for writing below tungstenite; `None` for every other
/// delivery (they are rare and go through tungstenite).
#[derive(Clone, Copy)]
enum Lone<'d> {
    /// The whole frame, encoded once per message (an envelope).
    Frame(&'d [u8]),
    /// A header to make and the payload after it (raw framing).
    Parts(u8, &'d [u8]),
}

fn lone_data(delivery: &Delivery, framing: Framing) -> Option<Lone<'_>> {
    match delivery {
        Delivery::Message(m) => lone_message(m, framing),
        _ => None,
    }
}

fn lone_message(m: &Message, framing: Framing) -> Option<Lone<'_>> {
    match framing {
        Framing::Envelope => Some(Lone::Frame(m.ws_text_frame())),
        Framing::Raw if m.is_ephemeral() => None,
        Framing::Raw if m.payload().is_text() => Some(Lone::Parts(WS_TEXT, m.payload().bytes())),
        Framing::Raw => Some(Lone::Parts(WS_BINARY, m.payload().bytes())),
    }
}

/// Calls `f` with a lone frame's two parts, `head` then `data` (a raw frame's header is built
/// on the stack).
fn with_frame<R>(lone: Lone<'_>, f: impl FnOnce(&[u8], &[u8]) -> R) -> R {
    match lone {
        Lone::Frame(frame) => f(frame, &[]),
        Lone::Parts(opcode, data) => {
            let (header, used) = ws_frame_header(opcode, data.len());
            f(&header[..used], data)
        }
    }
}

/// Writes what is left of a frame (`head` then `data`) after its first `skip` bytes, in one
/// write: one `send` for one part, a vectored write for two.
fn poll_write_rest<W: AsyncWrite + Unpin>(
    io: &mut W,
    cx: &mut Context<'_>,
    (head, data): (&[u8], &[u8]),
    skip: usize,
) -> Poll<io::Result<usize>> {
    let (head, data) = match head.get(skip..) {
        Some(head) => (head, data),
        None => (&[][..], data.get(skip - head.len()..).unwrap_or_default()),
    };
    let io = Pin::new(io);
    match (head.is_empty(), data.is_empty()) {
        (_, true) => io.poll_write(cx, head),
        (true, false) => io.poll_write(cx, data),
        (false, false) => io.poll_write_vectored(cx, &[IoSlice::new(head), IoSlice::new(data)]),
    }
}

/// The part of a frame written below tungstenite that the socket didn't take yet: the message
/// whose shared bytes make the frame (held by a reference count, not copied) and how many of
/// the frame's bytes went out. Nothing else may be written until the rest has.
struct Unsent {
    message: Message,
    written: usize,
}

/// How far a burst got without waiting ([`Pump::burst_now`]).
enum Fast {
    /// Everything was written and flushed.
    Sent,
    /// A write would wait: the timed path goes on, with this delivery first (if any).
    Blocked(Option<Delivery>),
    /// The connection ends.
    End(End),
}

/// One connection's whole life after the upgrade.
async fn serve<H: Hub>(
    ws: Socket,
    hub: Arc<H>,
    admitted: Admitted,
    sub: H::Subscription,
    settings: Arc<Settings>,
    channel: bool,
) {
    let mut sub = sub.fuse();
    let started = Instant::now();
    let Admitted {
        conn,
        mut admission,
    } = admitted;
    tracing::info!(channel, "connected");
    let mut pump = Pump::new(ws, &*hub, &conn, &settings, channel);
    pump.metrics = admission.metrics.take();
    let end = pump.run(&mut sub, &admission).await;
    if let End::Close(code, _) = &end {
        pump.metrics.close_code(Some(*code));
    }
    pump.finish(&end).await;
    hub.leave(&conn, sub.into_inner()).await;
    drop(admission);
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    tracing::info!(reason = end.reason(), duration_ms, "disconnected");
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

/// The pump's branches polled only after their own waker fired ([`Gates`]): the drain
/// request, the socket's read half and the heartbeat timer.
const DRAIN: usize = 0;
/// The read branch of the pump's [`Gates`].
const READ: usize = 1;
/// The heartbeat and idle timer's branch of the pump's [`Gates`].
const TIMER: usize = 2;

/// A connection's outbound side and per-connection state; each step of the loop is a method
/// returning whether to go on.
struct Pump<'a, H> {
    /// The socket, not split: the read branch and the writes take turns within the one task.
    ws: Socket,
    hub: &'a H,
    conn: &'a Connection,
    settings: &'a Settings,
    /// Speaks the channel protocol (commands with refs, replies) instead of plain frames.
    channel: bool,
    bucket: Option<Bucket>,
    clock: Clock,
    /// Counts handed to the metrics facade in batches (zero-sized without the feature).
    metrics: ConnMetrics,
    /// A read may have left tungstenite holding bytes it hasn't written (a pong, a close
    /// answer): flush it before writing below it.
    unflushed: bool,
    /// The part of a frame written below tungstenite that the socket didn't take yet.
    unsent: Option<Unsent>,
}

impl<'a, H: Hub> Pump<'a, H> {
    fn new(
        ws: Socket,
        hub: &'a H,
        conn: &'a Connection,
        settings: &'a Settings,
        channel: bool,
    ) -> Self {
        let now = Instant::now();
        Self {
            ws,
            hub,
            conn,
            settings,
            channel,
            bucket: settings.rate.map(Bucket::new),
            metrics: ConnMetrics::none(),
            unflushed: false,
            unsent: None,
            clock: Clock {
                next_ping: now + settings.ping_interval,
                pong_due: None,
                idle_due: settings.idle_timeout.map(|t| now + t),
            },
        }
    }

    /// Runs the connection until something ends it: the drain, a client frame, the
    /// subscription, or a deadline. Channel commands run beside the deliveries: calls
    /// concurrently (up to [`MAX_CALLS`]), the others one at a time in order; reading pauses
    /// while one of those runs or the calls are at their limit.
    async fn run(&mut self, sub: &mut Deliveries<H>, admission: &Admission) -> End {
        let (hub, conn) = (self.hub, self.conn);
        let timer = tokio::time::sleep_until(self.clock.next());
        tokio::pin!(timer);
        let gates = Gates::<3>::new();
        let mut ordered: Option<Pending<'a>> = None;
        // Created on the first call: most connections never make one, and an empty set still
        // allocates.
        let mut calls: Option<FuturesUnordered<Pending<'a>>> = None;
        let mut in_flight: Vec<String> = Vec::new();
        loop {
            let running = calls.as_ref().map_or(0, FuturesUnordered::len);
            let reading = ordered.is_none() && running < MAX_CALLS;
            let step = tokio::select! {
                biased;
                () = std::future::poll_fn(|cx| gates.poll(DRAIN, cx, |cx| admission.drain.poll_requested(cx))) => {
                    ControlFlow::Break(End::Close(GOING_AWAY, "server shutting down"))
                }
                done = async {
                    match ordered.as_mut() {
                        Some(command) => command.await,
                        None => std::future::pending().await,
                    }
                }, if ordered.is_some() => {
                    ordered = None;
                    // Boxed, like the other rare paths: their state shouldn't be part of
                    // every idle connection's.
                    Box::pin(self.answer(sub, &mut in_flight, done)).await
                }
                Some(done) = async { calls.as_mut()?.next().await }, if running > 0 => {
                    Box::pin(self.answer(sub, &mut in_flight, done)).await
                }
                frame = std::future::poll_fn(|cx| gates.poll(READ, cx, |cx| self.ws.poll_next_unpin(cx))), if reading => {
                    self.unflushed = true;
                    // Boxed: a client frame is rare on most connections, and its handling (the
                    // hub's receive, a refusal) shouldn't be part of every idle one's state.
                    let step = match Box::pin(self.inbound(frame, sub)).await {
                        ControlFlow::Continue(Some(request)) => {
                            let key = request.key();
                            if in_flight.contains(&key) {
                                let message = "a command with this ref is still in flight";
                                let text = protocol::error(Some(&request.reference), "duplicate_ref", message);
                                drop(request);
                                Box::pin(self.send_now(WsMessage::text(text))).await
                            } else {
                                in_flight.push(key);
                                let is_call = request.command.is_call();
                                let pending = handle(hub, conn, request);
                                if is_call {
                                    calls.get_or_insert_with(FuturesUnordered::new).push(pending);
                                } else {
                                    ordered = Some(pending);
                                }
                                ControlFlow::Continue(())
                            }
                        }
                        ControlFlow::Continue(None) => ControlFlow::Continue(()),
                        ControlFlow::Break(end) => ControlFlow::Break(end),
                    };
                    timer.as_mut().reset(self.clock.next());
                    gates.open(TIMER);
                    step
                }
                delivery = sub.next() => self.deliver(delivery, sub).await,
                () = std::future::poll_fn(|cx| gates.poll(TIMER, cx, |cx| timer.as_mut().poll(cx))) => {
                    let step = Box::pin(self.tick(reading)).await;
                    timer.as_mut().reset(self.clock.next());
                    gates.open(TIMER);
                    step
                }
            };
            if let ControlFlow::Break(end) = step {
                return end;
            }
        }
    }

    /// Sends a command's reply, after every delivery that is ready (so a publish's own echo,
    /// or a subscribe's replay so far, comes first).
    async fn answer(
        &mut self,
        sub: &mut Deliveries<H>,
        in_flight: &mut Vec<String>,
        (reference, result): Done,
    ) -> ControlFlow<End> {
        let key = reference.to_string();
        in_flight.retain(|k| *k != key);
        let text = match result {
            Ok(data) => protocol::ok(&reference, &data),
            Err(e) => {
                if let HubError::Backend(detail) = &e {
                    tracing::error!(error = %detail, "a command failed in the backend");
                }
                let (code, message) = protocol::hub_error(&e);
                protocol::error(Some(&reference), &code, &message)
            }
        };
        if let ControlFlow::Break(end) = self.flush_ready(sub).await {
            return ControlFlow::Break(end);
        }
        self.send_now(WsMessage::text(text)).await
    }

    /// Sends the deliveries that are ready now, if any.
    async fn flush_ready(&mut self, sub: &mut Deliveries<H>) -> ControlFlow<End> {
        match sub.next().now_or_never().flatten() {
            Some(first) => self.send_burst(sub, first).await,
            None => ControlFlow::Continue(()),
        }
    }

    /// A frame from the client: heartbeat bookkeeping, the rate limit, then the hub; in the
    /// channel protocol, the command it carries (handled by the caller).
    async fn inbound(
        &mut self,
        frame: Option<Result<WsMessage, tungstenite::Error>>,
        sub: &mut Deliveries<H>,
    ) -> ControlFlow<End, Option<protocol::Request>> {
        let msg = match frame {
            None => return ControlFlow::Break(End::Gone("client went away")),
            // A read may write (a pong, a close answer): it can find the client stalled too.
            Some(Err(_)) if self.ws.get_ref().stalled => {
                return ControlFlow::Break(self.send_failed());
            }
            Some(Err(e)) => return ControlFlow::Break(classify(&e)),
            Some(Ok(msg)) => msg,
        };
        if msg.is_close() {
            self.metrics.close_code(match &msg {
                WsMessage::Close(Some(frame)) => Some(frame.code.into()),
                _ => None,
            });
            return ControlFlow::Break(End::ClientClosed);
        }
        let within_rate = self.bucket.as_mut().is_none_or(Bucket::take);
        if msg.is_ping() || msg.is_pong() {
            if msg.is_pong() {
                self.clock.pong_due = None;
            }
            // Tungstenite answers pings itself; past the limit there is no message to refuse,
            // and answering each would feed the flood.
            return if within_rate {
                ControlFlow::Continue(None)
            } else {
                ControlFlow::Break(End::Close(POLICY, "rate limit exceeded"))
            };
        }
        if let Some(t) = self.settings.idle_timeout {
            self.clock.idle_due = Some(Instant::now() + t);
        }
        self.metrics.received();
        if !within_rate {
            tracing::debug!("message dropped: rate limit");
            self.hub.note_dropped(self.conn, 1);
            self.metrics.dropped();
            if self.settings.rate_policy == RatePolicy::Close {
                return ControlFlow::Break(End::Close(POLICY, "rate limit exceeded"));
            }
            let message = "message dropped: rate limit exceeded";
            // A command still gets its one reply: its `ref` is read, and nothing more.
            let reference = match &msg {
                WsMessage::Text(text) if self.channel => protocol::reference(text.as_str()),
                _ => None,
            };
            return self
                .tell(sub, reference.as_ref(), "rate_limited", message, POLICY)
                .await
                .map_continue(|()| None);
        }
        if self.channel {
            // Tungstenite checks UTF-8 as it reads: a text frame is valid here.
            let parsed = match &msg {
                WsMessage::Text(text) => protocol::parse(text.as_str()),
                _ => Err(protocol::Invalid {
                    reference: None,
                    code: "bad_frame",
                    message: "the channel protocol takes JSON text frames".to_owned(),
                }),
            };
            return match parsed {
                Ok(request) => ControlFlow::Continue(Some(request)),
                Err(bad) => {
                    let reference = bad.reference.as_ref();
                    Box::pin(self.tell(sub, reference, bad.code, &bad.message, POLICY))
                        .await
                        .map_continue(|()| None)
                }
            };
        }
        let payload = match msg {
            WsMessage::Text(text) => Payload::text(text.as_str()),
            other => Payload::binary(other.into_data()),
        };
        match self.hub.receive(self.conn, payload).await {
            Ok(()) => ControlFlow::Continue(None),
            Err(HubError::PayloadTooLarge { .. }) => {
                ControlFlow::Break(End::Close(TOO_BIG, "message too big"))
            }
            Err(e) => {
                let (message, raw_close) = match &e {
                    HubError::Backend(detail) => {
                        tracing::error!(error = %detail, "hub failed to receive a message");
                        (
                            "the message was not delivered: service unavailable".to_owned(),
                            INTERNAL,
                        )
                    }
                    other => {
                        tracing::debug!(error = %other, "message refused by the hub");
                        (other.to_string(), POLICY)
                    }
                };
                self.tell(sub, None, e.code(), &message, raw_close)
                    .await
                    .map_continue(|()| None)
            }
        }
    }

    /// Tells the client about a message of its own that wasn't delivered: an `error` frame
    /// (in the channel protocol, the reply to `reference` when there is one), after every
    /// delivery that is ready now (so it never overtakes the echo of an earlier accepted
    /// message). Under [`Framing::Raw`] there are no notices: close with `raw_close`.
    async fn tell(
        &mut self,
        sub: &mut Deliveries<H>,
        reference: Option<&serde_json::Value>,
        code: &str,
        message: &str,
        raw_close: u16,
    ) -> ControlFlow<End> {
        if self.settings.framing == Framing::Raw {
            let reason = if raw_close == INTERNAL {
                "hub failure: message not delivered"
            } else {
                "message refused"
            };
            return ControlFlow::Break(End::Close(raw_close, reason));
        }
        if let ControlFlow::Break(end) = self.flush_ready(sub).await {
            return ControlFlow::Break(end);
        }
        self.send_now(WsMessage::text(protocol::error(reference, code, message)))
            .await
    }

    /// Deliveries are ready: send them in one burst.
    async fn deliver(
        &mut self,
        delivery: Option<Delivery>,
        sub: &mut Deliveries<H>,
    ) -> ControlFlow<End> {
        let Some(first) = delivery else {
            return ControlFlow::Break(End::Close(NORMAL, "subscription ended"));
        };
        self.send_burst(sub, first).await
    }

    /// Sends `first` and whatever else is ready. The common case, a socket that takes the
    /// writes at once, is done in one poll ([`burst_now`](Self::burst_now)): no allocation, no
    /// timer. Only when a write would wait does the timed [`burst`](Self::burst) take over,
    /// boxed because its future is large and only lives while sending, so it isn't part of
    /// every idle connection's state.
    async fn send_burst<S: Stream<Item = Delivery> + Unpin>(
        &mut self,
        sub: &mut S,
        first: Delivery,
    ) -> ControlFlow<End> {
        let mut first = Some(first);
        let fast = std::future::poll_fn(|cx| {
            Poll::Ready(match first.take() {
                Some(first) => self.burst_now(cx, sub, first),
                None => Fast::Sent,
            })
        })
        .await;
        let rest = match fast {
            Fast::Sent => return ControlFlow::Continue(()),
            Fast::End(end) => return ControlFlow::Break(end),
            Fast::Blocked(rest) => rest,
        };
        match Box::pin(self.burst(sub, rest)).await {
            Some(end) => ControlFlow::Break(end),
            None => ControlFlow::Continue(()),
        }
    }

    /// Feeds `first` and every delivery ready after it (up to a batch) and flushes, as far as
    /// the socket takes it without waiting. Stops at the first write that would wait, or at a
    /// lag notice (the timed path decides what lag means), handing back what is left.
    fn burst_now<S: Stream<Item = Delivery> + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        sub: &mut S,
        first: Delivery,
    ) -> Fast {
        let (framing, max_batch) = (self.settings.framing, self.settings.max_batch);
        // A message with nothing ready after it (every wake at low rates) is written below
        // tungstenite, straight from the message's shared bytes; a batch goes through
        // tungstenite's buffer and one write.
        let mut queued = None;
        if lone_data(&first, framing).is_some() {
            match Pin::new(&mut *sub).poll_next(cx) {
                Poll::Ready(Some(after)) => queued = Some(after),
                _ => return self.write_lone(cx, first),
            }
        }
        let mut next = Some(first);
        let (mut sent, mut buffered) = (0, 0);
        while let Some(delivery) = next.take() {
            // What the timed path decides: lag, and under raw framing a reset (both close).
            if matches!(delivery, Delivery::Lagged { .. })
                || (framing == Framing::Raw && matches!(delivery, Delivery::Reset(_)))
            {
                return Fast::Blocked(Some(delivery));
            }
            if let Some(frame) = frame(&delivery, framing) {
                match Pin::new(&mut self.ws).poll_ready(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(_)) => return Fast::End(self.send_failed()),
                    Poll::Pending => return Fast::Blocked(Some(delivery)),
                }
                self.metrics.sent(&delivery);
                buffered += frame.len();
                if Pin::new(&mut self.ws).start_send(frame).is_err() {
                    return Fast::End(self.send_failed());
                }
                if buffered >= self.settings.max_write_buffer {
                    match Pin::new(&mut self.ws).poll_flush(cx) {
                        Poll::Ready(Ok(())) => buffered = 0,
                        Poll::Ready(Err(_)) => return Fast::End(self.send_failed()),
                        Poll::Pending => return Fast::Blocked(None),
                    }
                }
            }
            sent += 1;
            if let Some(after) = queued.take() {
                next = Some(after);
            } else if sent < max_batch
                && let Poll::Ready(Some(delivery)) = Pin::new(&mut *sub).poll_next(cx)
            {
                next = Some(delivery);
            }
        }
        match Pin::new(&mut self.ws).poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                self.metrics.flush();
                Fast::Sent
            }
            Poll::Ready(Err(_)) => Fast::End(self.send_failed()),
            Poll::Pending => Fast::Blocked(None),
        }
    }

    /// Writes one message's frame to the socket under tungstenite: the frame the message
    /// encoded once with its envelope, in one write (under [`Framing::Raw`], a header on the
    /// stack and the shared payload in one vectored write). No copy, no reference count, no
    /// allocation. Tungstenite must have nothing buffered (it is flushed first if a read may
    /// have queued a pong or a close answer); what the socket doesn't take is kept in
    /// [`unsent`](Self::unsent) (the message and an offset: still no copy) and written by the
    /// timed path before anything else.
    fn write_lone(&mut self, cx: &mut Context<'_>, delivery: Delivery) -> Fast {
        if self.unflushed {
            match Pin::new(&mut self.ws).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(_)) => return Fast::End(self.send_failed()),
                Poll::Pending => return Fast::Blocked(Some(delivery)),
            }
        }
        let Delivery::Message(message) = &delivery else {
            return Fast::Blocked(Some(delivery));
        };
        let Some(lone) = lone_message(message, self.settings.framing) else {
            return Fast::Blocked(Some(delivery));
        };
        let io = self.ws.get_mut();
        let (wrote, len) = with_frame(lone, |head, data| {
            (
                poll_write_rest(io, cx, (head, data), 0),
                head.len() + data.len(),
            )
        });
        let written = match wrote {
            Poll::Ready(Ok(0)) => return Fast::End(End::Gone("send failed")),
            Poll::Ready(Err(_)) => return Fast::End(self.send_failed()),
            Poll::Ready(Ok(n)) => n,
            // Nothing written: the timed path sends it through tungstenite.
            Poll::Pending => return Fast::Blocked(Some(delivery)),
        };
        self.metrics.sent(&delivery);
        if written < len {
            self.unsent = Some(Unsent {
                message: message.clone(),
                written,
            });
            return Fast::Blocked(None);
        }
        match Pin::new(self.ws.get_mut()).poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                self.metrics.flush();
                Fast::Sent
            }
            Poll::Ready(Err(_)) => Fast::End(self.send_failed()),
            Poll::Pending => Fast::Blocked(None),
        }
    }

    /// Writes the rest of the frame in [`unsent`](Self::unsent), until it is all out.
    fn poll_unsent(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(unsent) = &mut self.unsent {
            let Some(lone) = lone_message(&unsent.message, self.settings.framing) else {
                // Never: only a message with a lone frame is kept.
                self.unsent = None;
                break;
            };
            let io = self.ws.get_mut();
            let skip = unsent.written;
            let (wrote, len) = with_frame(lone, |head, data| {
                (
                    poll_write_rest(io, cx, (head, data), skip),
                    head.len() + data.len(),
                )
            });
            match std::task::ready!(wrote)? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                n if skip + n >= len => self.unsent = None,
                n => unsent.written += n,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Why a write failed: the client took nothing for the send timeout (a slow consumer:
    /// close 1008, the Close going after what is already buffered), or the socket is gone.
    fn send_failed(&mut self) -> End {
        if self.ws.get_ref().stalled {
            tracing::warn!("a send made no progress for the send timeout: slow consumer closed");
            self.metrics.slow_consumer();
            End::Close(POLICY, "slow consumer")
        } else {
            End::Gone("send failed")
        }
    }

    /// A deadline passed: pong overdue, idle, or time to ping. `reading`: whether the
    /// connection reads the client now (it doesn't while a command runs).
    async fn tick(&mut self, reading: bool) -> ControlFlow<End> {
        self.metrics.flush();
        let now = Instant::now();
        if self.clock.pong_due.is_some_and(|due| now >= due) {
            if !reading {
                // The pong may be waiting in TCP behind a command frame not read yet: time the
                // server doesn't read doesn't count against the client.
                self.clock.pong_due = Some(now + self.settings.pong_timeout);
            } else {
                tracing::info!("no pong within the heartbeat timeout");
                return ControlFlow::Break(End::Close(POLICY, "heartbeat timeout"));
            }
        }
        if self.clock.idle_due.is_some_and(|due| now >= due) {
            if let (false, Some(idle)) = (reading, self.settings.idle_timeout) {
                // Likewise: the client's next message may be waiting behind a command.
                self.clock.idle_due = Some(now + idle);
            } else {
                return ControlFlow::Break(End::Close(NORMAL, "idle timeout"));
            }
        }
        if now >= self.clock.next_ping {
            let sent = self.send_now(WsMessage::Ping(bytes::Bytes::new())).await;
            self.clock
                .pong_due
                .get_or_insert(now + self.settings.pong_timeout);
            self.clock.next_ping = now + self.settings.ping_interval;
            return sent;
        }
        ControlFlow::Continue(())
    }

    /// Sends one frame and flushes (each write bounded by the send timeout, see [`Progress`]).
    async fn send_now(&mut self, msg: WsMessage) -> ControlFlow<End> {
        match self.ws.send(msg).await {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(self.send_failed()),
        }
    }

    /// Feeds `first` (if any) and every delivery ready after it (up to a batch), flushing
    /// whenever [`max_write_buffer`](WsEndpoint::max_write_buffer) bytes are buffered and at
    /// the end (what an earlier [`burst_now`](Self::burst_now) fed, too). No bound on the
    /// whole burst: each write fails once the client took nothing for the send timeout
    /// ([`Progress`]), so a slow but steady reader gets a long burst whole.
    async fn burst<S: Stream<Item = Delivery> + Unpin>(
        &mut self,
        sub: &mut S,
        first: Option<Delivery>,
    ) -> Option<End> {
        let settings = self.settings;
        // The rest of a frame written below tungstenite goes first, whole.
        if std::future::poll_fn(|cx| self.poll_unsent(cx))
            .await
            .is_err()
        {
            return Some(self.send_failed());
        }
        let mut next = first;
        let (mut sent, mut buffered) = (0, 0);
        while let Some(delivery) = next.take() {
            match &delivery {
                Delivery::Lagged { missed, .. } => {
                    self.metrics.lagged(*missed);
                    if settings.slow == SlowConsumerPolicy::Disconnect
                        || settings.framing == Framing::Raw
                    {
                        tracing::warn!(missed, "slow consumer disconnected");
                        self.metrics.slow_consumer();
                        let _ = self.ws.flush().await;
                        return Some(End::Close(POLICY, "slow consumer"));
                    }
                    tracing::info!(missed, "slow consumer skipped ahead");
                }
                Delivery::Reset(reset) if settings.framing == Framing::Raw => {
                    // No `reset` frame under raw framing: earlier messages are lost, as with lag.
                    tracing::info!(reason = ?reset.reason, "reset under raw framing: closed");
                    let _ = self.ws.flush().await;
                    return Some(End::Close(POLICY, "messages lost: reset"));
                }
                _ => {}
            }
            if let Some(frame) = frame(&delivery, settings.framing) {
                self.metrics.sent(&delivery);
                buffered += frame.len();
                if self.ws.feed(frame).await.is_err() {
                    return Some(self.send_failed());
                }
                if buffered >= settings.max_write_buffer {
                    if self.ws.flush().await.is_err() {
                        return Some(self.send_failed());
                    }
                    buffered = 0;
                }
            }
            sent += 1;
            if sent < settings.max_batch {
                next = sub.next().now_or_never().flatten();
            }
        }
        if self.ws.flush().await.is_err() {
            return Some(self.send_failed());
        }
        self.metrics.flush();
        None
    }

    /// The closing handshake (RFC 6455 §5.5.1, §7), in one place: after the client's Close,
    /// send the answer tungstenite queued; after our own, wait for the client's. Either way the
    /// server then closes TCP (the socket drops after this returns). A frame half written
    /// below tungstenite is finished first. Bounded by [`CLOSE_WAIT`] as a whole, the send
    /// timeout aside: a slow consumer's Close goes after what was buffered, and it gets that
    /// long to take it.
    async fn finish(&mut self, end: &End) {
        self.ws.get_mut().enforced = false;
        let closing = async {
            if matches!(end, End::Gone(_)) {
                return;
            }
            if std::future::poll_fn(|cx| self.poll_unsent(cx))
                .await
                .is_err()
            {
                return;
            }
            match end {
                End::ClientClosed => {
                    // Writes the queued Close answer; tungstenite then reports the socket closed.
                    let _ = self.ws.flush().await;
                }
                End::Close(code, reason) => {
                    let close = WsMessage::Close(Some(CloseFrame {
                        code: (*code).into(),
                        reason: Utf8Bytes::from_static(reason),
                    }));
                    if self.ws.send(close).await.is_err() {
                        return;
                    }
                    // Read until the client's Close (or anything that ends the stream).
                    while let Some(Ok(_)) = self.ws.next().await {}
                }
                End::Gone(_) => {}
            }
        };
        let _ = tokio::time::timeout(CLOSE_WAIT, closing).await;
    }
}

#[cfg(test)]
mod tests {
    use crate::hub::ws_frame_header as frame_header;

    #[test]
    fn frame_headers_use_the_shortest_length_form() {
        let head = |op, len| {
            let (bytes, used) = frame_header(op, len);
            bytes[..used].to_vec()
        };
        assert_eq!(head(0x1, 0), [0x81, 0]);
        assert_eq!(head(0x2, 125), [0x82, 125]);
        assert_eq!(head(0x1, 126), [0x81, 126, 0, 126]);
        assert_eq!(head(0x1, 65_535), [0x81, 126, 0xff, 0xff]);
        assert_eq!(head(0x1, 65_536), [0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }
}
