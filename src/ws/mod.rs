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
//!    `Upgrade: websocket`, a well-formed `Sec-WebSocket-Key`, on a connection the server can
//!    upgrade (not HTTP/2, not an in-process test client): else 400.
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
//! {"type":"presence","topic":"lobby","members":[{"user":"alice","connections":2}],"more":false,"count":1}
//! {"type":"reset","topic":"lobby","requested":"..","epoch":"..","replay_after":"..","reason":"epoch_changed"}
//! {"type":"lagged","topic":"lobby","missed":12}
//! {"type":"error","error":{"code":"rate_limited","message":".."}}
//! ```
//!
//! Presence notices (`presence.join`, `presence.leave`) have no `id`: they are live-only and
//! never resumed from. A presence snapshot of a big room comes in several frames; the one with
//! `"more":false` completes it. A binary payload travels as base64 with `"binary":true`. A
//! reset's `requested` is `null` when the id sent couldn't be read (reason `invalid`).
//!
//! `error` frames (`{"type":"error","error":{"code":..,"message":..}}`, the same `error`
//! object as a channel-protocol reply's) tell the sender about a message of its own that was
//! not delivered:
//!
//! | `code` | meaning |
//! |---|---|
//! | `rate_limited` | over the inbound rate limit ([`RatePolicy::Reject`]); dropped |
//! | `unavailable` | the hub's backend failed or timed out, or the hub is full: not delivered to the room that failed (a connection in several rooms gets it published room by room, so rooms before that one have it); safe to retry |
//! | `json_too_deep` | JSON nested deeper than [`MAX_JSON_DEPTH`](crate::hub::MAX_JSON_DEPTH); dropped |
//! | `refused` | the hub takes no messages from connections ([`InboundPolicy::Reject`](crate::hub::InboundPolicy::Reject)) |
//! | `not_joined` | the connection is no longer joined (the server ended it while the message was on its way) |
//! | `not_subscribed` | the connection left a room while the message was on its way to it |
//! | `invalid_data` | a [`Channels`](crate::channel::Channels) room's publish handler can't take the data (binary, or not the type it reads) |
//! | `handler_failed`, `timeout` | a publish handler panicked, or took longer than its timeout |
//! | `unknown_event` | the room has publish handlers for named events only ([`on_event`](crate::channel::Channels::on_event)), and a plain frame has no event name |
//! | `invalid_topic`, `invalid_event`, `invalid_tag`, `too_many_subscriptions`, `too_many_created`, `unsupported`, `internal` | another hub's `receive` refused with the [`HubError`](crate::error::HubError) of that [`code`](crate::error::HubError::code) |
//! | any other code | a publish handler's own [`Refused`](crate::error::Refused) code (say `moderated`) |
//!
//! A message over the size limit is no `error` frame: it closes the connection 1009.
//!
//! Order: an `error` frame is sent after every delivery the connection had ready when its
//! message was refused, so with an in-memory hub the echo of an earlier accepted message (under
//! [`InboundPolicy::Publish`](crate::hub::InboundPolicy::Publish)) always comes before the error for
//! a later one. With a remote backend, deliveries travel
//! through it and may come after.
//!
//! Client frames (text or binary) go to the hub as they are; with
//! [`event_frames`](WsEndpoint::event_frames), a text frame `{"event":"<name>","data":..}`
//! goes as a message with that event name. With [`Framing::Raw`] messages
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
//! it sends is one JSON command with a client-chosen `ref` (a string of at most 64 bytes as
//! JSON text, quotes and escapes included, or a number), and the server answers each command with exactly one `reply` carrying that
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
//! | `{"type":"subscribe",..}` | `ref`, `topic`, `last`? (the topic's last id) or `recent`? (n, at most 1,000), `data`? (for the authorization rule), `filter`? (`{"tags":{"<key>":["<value>",..]}}`: only the messages whose tags match, see [`Filter`](crate::hub::Filter); subscribing again with another filter changes it) | `{"topic":..}`, and `"reply":..` when the authorization rule returned a join reply; the topic's deliveries follow on the socket: a `reset` first if `last` can't be honoured (reason `invalid` if it can't be read), what was missed, the presence snapshot |
//! | `{"type":"unsubscribe",..}` | `ref`, `topic` | `{"topic":..,"was_subscribed":bool}`; nothing more of the topic is delivered |
//! | `{"type":"publish",..}` | `ref`, `topic` (one the socket is subscribed to), `data` (any JSON; a string is sent as text), `event`?, `echo`? (default `true`: the publisher gets its own message) | `{"id":..}`: the message's id, when it was published to `topic`; `"reply":..` when a publish handler answered the sender; `{}` when the handler published nothing and answered nothing |
//! | `{"type":"call",..}` | `ref`, `method`, `data`? | the method's result |
//! | `{"type":"refresh",..}` | `ref`, `token` (1 to 8,192 bytes) | `{"expires_in_ms":..}`: the identity's new lifetime (`{}` if it no longer expires); see [`refresh`](WsEndpoint::refresh) |
//!
//! | server sends | when |
//! |---|---|
//! | `{"type":"reply","ref":..,"status":"ok","data":..}` | a command succeeded |
//! | `{"type":"reply","ref":..,"status":"error","error":{"code":..,"message":..}}` | a command failed; nothing of it took effect |
//! | `{"type":"error","error":{"code":..,"message":..}}` | a frame whose `ref` couldn't be read (`bad_frame`, `missing_ref`, `json_too_deep`; `rate_limited` when the rate limit dropped it) |
//! | `{"type":"message","topic":"$conn",..}` | a message the server sent to this connection alone; `event` `subscribed` / `unsubscribed` with `{"topic":..}` when the server moved it, `joined` with `{"topic":..,"reply":..}` (a connect-time topic's join reply), `reply` with `{"topic":..,"reply":..}` (a publish handler's answer to a plain frame), `session` with `{"expires_in_ms":..}` (first, when the identity expires: refresh before then) |
//!
//! Error codes (a handler's own [`Refused`](crate::error::Refused) codes come on top):
//!
//! | code | meaning |
//! |---|---|
//! | `bad_frame` | not a JSON object, a binary frame, or a `subscribe`'s `recent` that isn't a non-negative integer |
//! | `missing_ref` | no `ref`, or one that is neither a short string nor a number |
//! | `duplicate_ref` | a command with the same `ref` is still in flight |
//! | `unknown_command` | `type` is none of the four |
//! | `invalid_topic`, `invalid_event`, `invalid_data` | a bad name, or `data` missing or not what the handler takes |
//! | `invalid_filter` | a `subscribe`'s `filter` can't be read, or is over its limits (4 KiB of JSON, 8 tags, 256 values) |
//! | `invalid_tag` | a tag the server set on a publication isn't valid (a mistake of the server's) |
//! | `forbidden` | no authorization rule allows the topic (or the rule's own code) |
//! | `not_subscribed` | publish to a topic the socket isn't subscribed to (an `unsubscribe` of one answers `ok` with `"was_subscribed":false`) |
//! | `not_joined` | the connection is no longer joined (the server ended it while the command ran) |
//! | `too_many_subscriptions` | past [`HubConfig::max_subscriptions`](crate::HubConfig::max_subscriptions) |
//! | `too_many_created` | past [`HubConfig::max_topics_per_owner`](crate::HubConfig::max_topics_per_owner) |
//! | `unknown_method` | no handler for the `call`'s method, or `method` missing, empty or over 128 bytes |
//! | `unauthorized` | a `refresh` token was rejected (or the connection is anonymous): the old expiry still holds |
//! | `unknown_event` | the topic has publish handlers ([`on_event`](crate::channel::Channels::on_event)), none for the message's event name |
//! | `handler_failed`, `timeout` | the handler panicked (while called, or in its future), or took longer than its timeout |
//! | `too_large`, `json_too_deep` | the data is over the hub's payload limit ([`HubConfig::max_payload`](crate::HubConfig::max_payload)), or nested too deep; a frame over the endpoint's [`max_message_size`](WsEndpoint::max_message_size) closes 1009 instead |
//! | `unavailable` | the backend failed or the hub is full: not done, safe to retry |
//! | `unsupported` | this hub has no such operation |
//! | `refused` | a plain frame the hub takes no messages from connections for ([`InboundPolicy::Reject`](crate::hub::InboundPolicy::Reject)); the crate's hubs never answer a command with it |
//! | `internal` | a bug of the server's (a connection joined twice); the detail is in its log |
//! | `rate_limited` | over the inbound rate limit: the command was not run (a client should pace its commands, say a reconnect's resubscriptions, within the burst, and may retry later) |
//!
//! Order: a connection's `subscribe`, `unsubscribe` and `publish` commands run one at a time,
//! in the order sent; `call`s run concurrently with them and each other (up to 8 at once).
//! While a command runs, reading pauses (the client's frames wait in TCP), deliveries go on;
//! the heartbeat doesn't count that time against the client (its pong may be waiting behind a
//! command). Every command, a rate-limited one too, gets exactly one reply.
//! A reply is sent after the deliveries that were ready when its command finished (up to one
//! burst, 512 of them), so a publisher sees its own message before the reply, and a subscriber
//! the start of the replay (a long replay goes on after it). The full specification, for
//! client authors, is the crate's `PROTOCOL.md`.
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
//! | identity expiry ([`Identity::expires_at`](crate::Identity::expires_at)) | never | close 4001, unless a channel-protocol client refreshed it ([`refresh`](WsEndpoint::refresh)) |
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
use std::sync::Arc;
use std::time::Duration;

use salvo::conn::ConnCtrl;
use salvo::http::headers::{HeaderMapExt, SecWebsocketKey};
use salvo::hyper::upgrade::OnUpgrade;
use salvo::rt::tokio::TokioIo;
use salvo::{Depot, FlowCtrl, Handler, Request, Response, async_trait};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tracing::Instrument;

use crate::endpoint::{Attached, Common, Refusal, Transport, common_builders};
use crate::hub::Hub;

mod close;
mod pump;
mod upgrade;
mod writer;

pub use close::close_code;

use writer::{Progress, Socket};

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
    /// Drop the message and send an `error` frame with code `rate_limited` (under
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
    refresh: Option<Refresh>,
    event_frames: bool,
}

/// The [`WsEndpoint::refresh`] check.
#[derive(Clone)]
struct Refresh(Arc<RefreshFn>);

impl fmt::Debug for Refresh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Refresh(..)")
    }
}

/// What [`WsEndpoint::refresh`] stores: the token and the current identity in, the renewed
/// identity (or a refusal) out.
type RefreshFn = dyn Fn(
        String,
        crate::Identity,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<crate::Identity, crate::Rejection>> + Send>,
    > + Send
    + Sync;

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
            refresh: None,
            event_frames: false,
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

    /// Lets channel-protocol clients renew an expiring identity
    /// ([`Identity::expires_at`](crate::Identity::expires_at)) without reconnecting
    /// (`{"type":"refresh","ref":..,"token":".."}`): `check` gets the token and the connection's
    /// current identity, and returns the renewed identity (its new expiry) or a rejection. The
    /// renewed identity must be the same user's (else the refresh is refused `forbidden`);
    /// only its expiry is taken, the identity handlers see is the one the connection opened
    /// with. A rejection answers the command `unauthorized` (401), `forbidden` (403) or
    /// `invalid_data` (400) and leaves the connection as it was: it still closes with 4001
    /// when the old expiry passes. A connection whose identity expires is told at once, with
    /// a `session` message on `$conn` (`{"expires_in_ms":..}`), so the client knows when to
    /// refresh. Default: none (`refresh` is answered `unsupported`).
    ///
    /// ```
    /// use std::time::Duration;
    /// use salvo_realtime::{Identity, Rejection, Rooms, ws::WsEndpoint};
    ///
    /// let ws = WsEndpoint::new(Rooms::new())
    ///     .identify(|req, _| {
    ///         // A real app verifies a signed token and reads its `exp`.
    ///         let user = req.query::<String>("user");
    ///         Ok(user.map(|u| Identity::new(u).expires_in(Duration::from_secs(600))))
    ///     })
    ///     .refresh(|token, current| async move {
    ///         match token.strip_prefix("renewed-for-") {
    ///             Some(user) if user == current.user_id() => {
    ///                 Ok(Identity::new(user).expires_in(Duration::from_secs(600)))
    ///             }
    ///             _ => Err(Rejection::unauthorized("bad token")),
    ///         }
    ///     });
    /// # drop(ws);
    /// ```
    #[must_use]
    pub fn refresh<F, Fut>(self, check: F) -> Self
    where
        F: Fn(String, crate::Identity) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<crate::Identity, crate::Rejection>>
            + Send
            + 'static,
    {
        let check: Arc<RefreshFn> = Arc::new(move |token, current| Box::pin(check(token, current)));
        self.set(|s| s.refresh = Some(Refresh(check)))
    }

    /// Reads a plain (non-channel) client's text frames of the form
    /// `{"event":"<name>","data":<any JSON>}` (exactly those two fields) as a message with that
    /// event name and that data (a JSON string as its text), so that [`on_event`](crate::channel::Channels::on_event)
    /// handlers route plain clients' messages too. Other frames stay what they are; an event
    /// name that isn't valid is refused (`invalid_event`). Default: off, every frame is its
    /// payload whatever it looks like (chat text that happens to be such an object included).
    ///
    /// ```
    /// use salvo_realtime::{channel::Channels, ws::WsEndpoint, Rooms};
    ///
    /// let ws = WsEndpoint::new(Channels::new(Rooms::new()).allow("game:*")).event_frames(true);
    /// # drop(ws);
    /// ```
    #[must_use]
    pub fn event_frames(self, on: bool) -> Self {
        self.set(|s| s.event_frames = on)
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
        let channel =
            self.settings.framing == Framing::Envelope && upgrade::offers_channel_protocol(req);
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
        // From here on the connection leaves the hub through its one teardown, whatever ends it.
        let attached = Attached::new(Arc::clone(&self.hub), admitted, sub);
        // The handshake was checked whole before the join (`check_handshake`), the upgrade
        // handle's presence included (`Refusal::NotUpgradable`); what is left is the 101 and
        // the connection it hands over. Nothing between the check and here takes them, so
        // the `else` is a guard: the join is undone and the refusal answered as every other.
        let key = req.headers().typed_get::<SecWebsocketKey>();
        let on_upgrade = req.extensions_mut().remove::<OnUpgrade>();
        let (Some(key), Some(on_upgrade)) = (key, on_upgrade) else {
            attached.finish("not upgradable").await;
            self.common
                .refuse(&Refusal::NotUpgradable, req, res, transport);
            return;
        };
        // A WebSocket is long-lived and quiet stretches are normal: Salvo's idle and
        // write-stall fuses (when the server runs with them) must not cut it.
        if let Some(ctrl) = req.extensions().get::<ConnCtrl>() {
            ctrl.relax_timeouts();
        }
        upgrade::switching_protocols(res, key, channel);
        let settings = Arc::clone(&self.settings);
        let config = self.config();
        // If the client vanishes mid-upgrade, the upgrade fails (or the task is dropped with
        // the runtime): either way `attached` leaves the hub and frees the slot.
        tokio::spawn(
            async move {
                match on_upgrade.await {
                    Ok(upgraded) => {
                        let io = Progress::new(TokioIo::new(upgraded), settings.send_timeout);
                        let ws = Socket::from_raw_socket(io, Role::Server, Some(config)).await;
                        pump::serve(ws, attached, settings, channel).await;
                    }
                    Err(e) => {
                        tracing::info!(error = %e, "websocket upgrade failed after the join");
                        attached.finish("upgrade failed").await;
                    }
                }
            }
            .instrument(span),
        );
    }
}
