//! A Server-Sent-Events endpoint: one `GET` request becomes one hub connection whose deliveries
//! stream to the browser as `text/event-stream`.
//!
//! [`SseEndpoint`] is a Salvo [`Handler`]. Per request it establishes who is connecting and which
//! topic it wants (see the shared builder methods), admits it under the connection caps, joins the
//! [`Hub`] and streams until the client goes away, the hub ends the subscription, or a graceful
//! [`Drain`](crate::Drain) asks it to close. Whatever ends it, the connection leaves the hub
//! exactly once and gives its slot back.
//!
//! ```
//! use salvo::prelude::*;
//! use salvo_realtime::{PubSub, sse::SseEndpoint};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let hub = PubSub::new();
//! let router = Router::new()
//!     .push(Router::with_path("events/{topic}").get(SseEndpoint::new(hub.clone())));
//!
//! // Elsewhere in the server: every client on `/events/prices` receives this.
//! hub.publish("prices", r#"{"eur":1.08}"#).await?;
//! # let _ = router;
//! # Ok(())
//! # }
//! ```
//!
//! # What the client receives
//!
//! The response carries `Content-Type: text/event-stream`, `Cache-Control: no-store` and
//! `X-Accel-Buffering: no` (so nginx doesn't buffer it). The stream opens with a `retry:` hint
//! ([`SseEndpoint::retry`]), then one event per [`Delivery`] (see [`encode`]):
//!
//! | delivery | `event:` | `data:` | `id:` |
//! |---|---|---|---|
//! | [`Delivery::Message`] | the message's event name, if any (else the browser's `message`) | the text payload; a binary payload in base64 | the [`MessageId`](crate::MessageId); none for a live-only notice ([`Message::is_ephemeral`](crate::Message::is_ephemeral)) |
//! | [`Delivery::Reset`] | `reset` | [`Delivery::envelope_json`] | the reset's `replay_after` |
//! | [`Delivery::Lagged`] | `lagged` | [`Delivery::envelope_json`] | none |
//! | [`Delivery::Presence`] | `presence` | [`Delivery::envelope_json`] (a big room's snapshot in several events; `"more":false` on the last) | none |
//!
//! A payload spanning several lines (LF, CR or CRLF) becomes one `data:` line per line, so the
//! browser's `event.data` holds the text with its line breaks normalised to LF. Binary payloads
//! travel as standard base64 with padding (SSE is a text protocol); a topic that mixes text and
//! binary should tell them apart by event name. A comment line (`:`) goes out whenever the
//! stream would otherwise stay silent for longer than one [`SseEndpoint::keep_alive`] period
//! (give or take scheduling), so proxies don't cut it; a stream that sends events gets no
//! comments.
//!
//! Each event is encoded once per message and shared by every stream that sends it (see
//! [`encode`]); the body yields those bytes as they are, one chunk per event.
//!
//! Messages published with the event names `reset`, `lagged` or `presence` can't be told from
//! the endpoint's own events by name alone; their JSON `type` field tells them apart.
//!
//! # Resume
//!
//! The browser keeps the `id` of the last event it saw and sends it as `Last-Event-ID` when it
//! reconnects; clients that can't set headers may pass `?lastEventId=` instead (the header wins).
//! For a request naming one topic, that id becomes [`Position::After`](crate::Position::After):
//! the client receives exactly what it missed, then live messages, with no gap and no duplicate.
//! When the hub can't honour it (the id belongs to another epoch because the server restarted,
//! or history has moved past it), a `reset` event comes first, then what history holds, then
//! live messages. An id that can't be read at all (another app on the same origin, an old id
//! format) gets the same, with reason `invalid`: the stream still opens with 200, because an
//! `EventSource` gives up for good after any other status. The reset's `id:` is the position
//! that replay starts after, so a client that reconnects before the next message resumes
//! cleanly instead of being reset again. With several topics one id can't say where each one
//! was, so it is ignored and `?recent=N` applies instead. Presence notices (`presence.join`,
//! `presence.leave`) carry no `id:` line, so they never move the browser's resume position.
//!
//! # Refusals
//!
//! The request goes through the same checks as a WebSocket (see [`ws`](crate::ws), "What a
//! connection goes through"), with the same status for each refusal: origin (403: the same
//! policy, [`allowed_origins`](SseEndpoint::allowed_origins),
//! [`allow_origin_fn`](SseEndpoint::allow_origin_fn) and
//! [`require_origin`](SseEndpoint::require_origin), so a third-party page can't open a
//! credentialed `EventSource` and join in the victim's name), bad topic or `recent` (400),
//! identity (401/403), caps (503/429 with `Retry-After`), the hub's refusal (400, 403, 429,
//! 503). Nothing joins until every check has passed.
//!
//! # Lag
//!
//! The hub refills a subscriber that fell behind its live buffer from history, so a brief stall
//! loses nothing. [`Delivery::Lagged`] only arrives when history no longer holds what the client
//! missed. The endpoint then sends a `lagged` event (with the exact count) and keeps streaming
//! from the oldest retained message, rather than ending the stream: a reconnect could not replay
//! what history no longer has, so closing would only add a reconnect storm to the loss.
//!
//! # Compression
//!
//! Salvo's [`Compression`](https://docs.rs/salvo-compression) middleware compresses
//! `text/event-stream` like any `text/*` response, and it flushes its encoder after every chunk
//! the body yields. Each event is one chunk, so behind `Compression` every event still reaches
//! the client as soon as it is sent, just compressed (the test suite checks this with gzip over
//! a real socket). The per-event flush limits how much compression gains on small events; to
//! serve the stream uncompressed, mount the endpoint outside the `Compression` hoop, or narrow
//! the middleware's `content_types` so they don't match `text/event-stream`.
//!
//! # Logging
//!
//! Each connection gets a `tracing` span `sse` with its id, peer address and user; connects,
//! disconnects (with the reason and how long the stream lasted) and rejections are logged.
//!
//! [`Handler`]: salvo::Handler

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use salvo::http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue};
use salvo::http::{Request, Response};
use salvo::{Depot, FlowCtrl, Handler};

use tracing::Span;

use crate::endpoint::{Attached, Common, Transport, common_builders};
use crate::hub::EventName;
use crate::sync::{AtomicU32, Mutex};
use crate::wire::{SSE_EVENT, base64};
use crate::{Delivery, Hub};

/// Serves a hub over Server-Sent Events; see the [module docs](self).
///
/// ```
/// use std::time::Duration;
/// use salvo::prelude::*;
/// use salvo_realtime::{Identity, PubSub, Rejection, sse::SseEndpoint};
///
/// let events = SseEndpoint::new(PubSub::new())
///     .keep_alive(Duration::from_secs(20))
///     .max_connections_per_ip(16)
///     .identify(|req, _depot| match req.query::<String>("token") {
///         Some(token) if token == "secret" => Ok(Some(Identity::new("alice"))),
///         Some(_) => Err(Rejection::forbidden("bad token")),
///         None => Err(Rejection::unauthorized("token missing")),
///     });
/// let router = Router::with_path("events/{topic}").get(events);
/// # let _ = router;
/// ```
pub struct SseEndpoint<H> {
    hub: Arc<H>,
    common: Common,
    keep_alive: Arc<Clock>,
    retry: Duration,
}

/// Clones serve the same hub. Each clone has its own settings (changing a clone's never
/// changes the original's); the live state is shared: the open-connection count, the
/// [`Drain`](crate::Drain) and the keep-alive timer (until the clone sets its own period).
impl<H> Clone for SseEndpoint<H> {
    fn clone(&self) -> Self {
        Self {
            hub: Arc::clone(&self.hub),
            common: self.common.clone(),
            keep_alive: Arc::clone(&self.keep_alive),
            retry: self.retry,
        }
    }
}

impl<H> fmt::Debug for SseEndpoint<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseEndpoint")
            .field("common", &self.common)
            .field("keep_alive", &self.keep_alive.period)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl<H: Hub> SseEndpoint<H> {
    /// An endpoint serving `hub`, with the defaults documented on each builder method.
    #[must_use]
    pub fn new(hub: H) -> Self {
        Self {
            hub: Arc::new(hub),
            common: Common::new(),
            keep_alive: Arc::new(Clock::new(Duration::from_secs(15))),
            retry: Duration::from_secs(3),
        }
    }

    /// Sends a comment line whenever a stream would otherwise stay silent for longer than
    /// this, so that proxies and load balancers don't close an idle stream and a vanished
    /// client is noticed. An idle stream gets one comment per period; a stream sending events
    /// none. One timer per endpoint, shared by its streams, ticking every half period (so a
    /// comment may come up to half a period early), never reset per event. Default: 15 s.
    #[must_use]
    pub fn keep_alive(mut self, every: Duration) -> Self {
        self.keep_alive = Arc::new(Clock::new(every));
        self
    }

    /// The reconnection delay the stream advises first (`retry:`), which the browser waits
    /// before reconnecting after the stream ends. Default: 3 s.
    #[must_use]
    pub fn retry(mut self, delay: Duration) -> Self {
        self.retry = delay;
        self
    }

    common_builders!();
}

#[salvo::async_trait]
impl<H: Hub> Handler for SseEndpoint<H> {
    async fn handle(
        &self,
        req: &mut Request,
        depot: &mut Depot,
        res: &mut Response,
        _ctrl: &mut FlowCtrl,
    ) {
        let (admitted, subscription) = match self
            .common
            .connect(&*self.hub, req, depot, Transport::EventStream)
            .await
        {
            Ok(joined) => joined,
            Err(refusal) => {
                self.common
                    .refuse(&refusal, req, res, Transport::EventStream);
                return;
            }
        };
        let span = tracing::info_span!(
            "sse",
            conn = %admitted.conn.id(),
            peer = ?admitted.conn.remote_addr(),
            user = admitted.conn.user_id(),
        );
        tracing::info!(
            parent: &span,
            topics = ?admitted.conn.topics(),
            "sse connected"
        );
        let keep_alive = self.keep_alive.register();
        // The `retry:` hint goes out now.
        let quiet_since = keep_alive.seen;
        let expires = admitted.conn.identity().and_then(|i| i.remaining());
        let live = Live {
            attached: Attached::new(Arc::clone(&self.hub), admitted, subscription),
            span,
            keep_alive,
            sent: false,
            quiet_since,
            expires: expires.map(|left| Box::pin(tokio::time::sleep(left))),
        };
        res.stream(events(live, self.retry));
        let headers = res.headers_mut();
        // Room for the three headers below and no more: on an empty map a first insert
        // reserves six, and an idle stream keeps its headers for its whole life.
        let _ = headers.try_reserve(3);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        // An event stream must never be stored at all, nor buffered by nginx.
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(
            HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        );
    }
}

/// Encodes one delivery as the SSE event the endpoint sends (see the table in the
/// [module docs](self)): `event:`, one `data:` line per line of the data (split at CR, LF and
/// CRLF), `id:`, and the blank line that dispatches it. A message's event is encoded once and
/// shared by every stream that sends it (cloning the result is a reference count); the other
/// deliveries are encoded when sent. Every event name and id the hub produces is free of CR,
/// LF and NUL.
///
/// ```
/// use futures_util::StreamExt;
/// use salvo_realtime::{Publication, PubSub, sse};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let hub = PubSub::new();
/// let mut sub = hub.subscribe("news", salvo_realtime::Position::Live).await?;
/// let id = hub
///     .publish("news", Publication::new("line one\nline two").event("headline"))
///     .await?;
///
/// let delivery = sub.next().await.ok_or("no delivery")?;
/// assert_eq!(
///     sse::encode(&delivery),
///     format!("event: headline\ndata: line one\ndata: line two\nid: {id}\n\n").as_bytes(),
/// );
/// # Ok(())
/// # }
/// ```
#[must_use]
pub fn encode(delivery: &Delivery) -> Bytes {
    match delivery {
        Delivery::Message(m) => m
            .encoded(SSE_EVENT, |m| {
                let id = (!m.is_ephemeral()).then(|| m.id().to_string());
                match m.payload().as_text() {
                    Some(text) => event(m.event().map(EventName::as_str), text, id.as_deref()),
                    None => event(
                        m.event().map(EventName::as_str),
                        &base64(m.payload().as_bytes()),
                        id.as_deref(),
                    ),
                }
            })
            .clone(),
        Delivery::Reset(reset) => notice("reset", delivery, Some(&reset.replay_after.to_string())),
        Delivery::Lagged { .. } => notice("lagged", delivery, None),
        Delivery::Presence(_) => notice("presence", delivery, None),
    }
}

/// A named event carrying the delivery's JSON envelope.
fn notice(name: &'static str, delivery: &Delivery, id: Option<&str>) -> Bytes {
    event(
        Some(name),
        &String::from_utf8_lossy(&delivery.envelope_json()),
        id,
    )
}

/// One event's bytes. `name` and `id` are free of CR, LF and NUL (hub names and ids are).
fn event(name: Option<&str>, data: &str, id: Option<&str>) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 64);
    if let Some(name) = name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    for line in lines(data) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    Bytes::from(out)
}

/// `text` split at CRLF, CR and LF, as an event stream parser splits it (an empty text is one
/// empty line, so the event still dispatches).
fn lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.find(['\r', '\n']) {
            None => {
                rest = None;
                Some(current)
            }
            Some(i) => {
                let skip = if current[i..].starts_with("\r\n") {
                    2
                } else {
                    1
                };
                rest = Some(&current[i + skip..]);
                Some(&current[..i])
            }
        }
    })
}

/// Everything one open stream holds. Salvo drops the body stream when the client disconnects,
/// so this is dropped on every end path, and the connection's [`Attached`] leaves the hub (the
/// teardown the WebSocket endpoint uses too); its admission's metrics count the events sent.
struct Live<H: Hub> {
    attached: Attached<H>,
    span: Span,
    /// Ticks every half keep-alive period (the endpoint's one timer, never reset per event).
    keep_alive: Tick,
    /// Whether an event went out since the last tick.
    sent: bool,
    /// The tick count at or before which the stream last sent something: a comment goes out
    /// at the second tick after it (a full period, at most, after whatever went out).
    quiet_since: u32,
    /// When the connection's identity expires: the stream ends then (an event stream can't
    /// refresh it; the client reconnects with fresh credentials). Boxed: most never expire.
    expires: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<H: Hub> Drop for Live<H> {
    fn drop(&mut self) {
        // Before `attached` drops, so the log says why.
        let _ = self
            .attached
            .leave_in_background("client disconnected", &self.span);
    }
}

/// The keep-alive comment.
const COMMENT: &[u8] = b":\n\n";

/// The event stream of one connection: the `retry:` hint, then one chunk per delivery (shared
/// bytes for messages), a comment when idle, until the drain asks it to close or the hub ends
/// the subscription. Written out as a `Stream` (not an `unfold` over an async block) so that
/// an idle stream holds [`Live`] and nothing more.
fn events<H: Hub>(
    live: Live<H>,
    retry: Duration,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    Events {
        live,
        phase: Phase::Retry(retry),
    }
}

struct Events<H: Hub> {
    live: Live<H>,
    phase: Phase,
}

/// Where an event stream is (one field, so an idle stream holds no more than it needs).
enum Phase {
    /// The `retry:` hint is still to be sent.
    Retry(Duration),
    Streaming,
    /// The hub's `leave`, awaited before the body ends, so that a finished drain means the hub
    /// saw every leave; `live` (and its slot) drops after that.
    Leaving(tokio::task::JoinHandle<()>),
    Done,
}

impl<H: Hub> Stream for Events<H> {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match &mut this.phase {
                Phase::Done => return Poll::Ready(None),
                Phase::Leaving(leaving) => {
                    let _ = std::task::ready!(Pin::new(leaving).poll(cx));
                    this.phase = Phase::Done;
                    return Poll::Ready(None);
                }
                Phase::Retry(retry) => {
                    let hint = format!("retry:{}\n\n", retry.as_millis());
                    this.phase = Phase::Streaming;
                    return Poll::Ready(Some(Ok(Bytes::from(hint))));
                }
                Phase::Streaming => {}
            }
            let live = &mut this.live;
            let reason = match live.poll_event(cx) {
                Poll::Ready(Ok(bytes)) => return Poll::Ready(Some(Ok(bytes))),
                Poll::Ready(Err(reason)) => reason,
                Poll::Pending => return Poll::Pending,
            };
            this.phase = live
                .attached
                .leave_in_background(reason, &live.span)
                .map_or(Phase::Done, Phase::Leaving);
        }
    }
}

impl<H: Hub> Live<H> {
    /// The next chunk to send, or why the stream ends. Drain first, then deliveries, then the
    /// keep-alive tick (a comment only if nothing was sent since the last one).
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Result<Bytes, &'static str>> {
        loop {
            let Some((subscription, admission)) = self.attached.parts() else {
                return Poll::Ready(Err("hub closed the subscription"));
            };
            if admission.drain.poll_requested(cx).is_ready() {
                return Poll::Ready(Err("drained"));
            }
            if let Some(expires) = self.expires.as_mut()
                && expires.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Err("identity expired"));
            }
            match Pin::new(subscription).poll_next(cx) {
                Poll::Ready(Some(delivery)) => {
                    admission.metrics.sent(delivery.logged_at());
                    if let Delivery::Lagged { topic, missed } = &delivery {
                        admission.metrics.lagged(*missed);
                        tracing::warn!(parent: &self.span, %topic, missed, "sse subscriber lagged");
                    }
                    self.sent = true;
                    return Poll::Ready(Ok(encode(&delivery)));
                }
                Poll::Ready(None) => return Poll::Ready(Err("hub closed the subscription")),
                Poll::Pending => {}
            }
            let (before, now) = std::task::ready!(self.keep_alive.poll_tick(cx.waker()));
            self.attached.admission.metrics.flush();
            if std::mem::take(&mut self.sent) {
                // Sent after the tick `before`: the latest it may have been.
                self.quiet_since = before;
            }
            if now.wrapping_sub(self.quiet_since) >= 2 {
                self.quiet_since = now;
                return Poll::Ready(Ok(Bytes::from_static(COMMENT)));
            }
        }
    }
}

/// The keep-alive timer of an endpoint, shared by all its streams: one task sleeps half a
/// period, bumps `ticks` and wakes every stream, which then sends a comment if it sent nothing
/// since the tick before last (half-period ticks are what bound the silence by one period: a
/// whole-period tick can't tell an event just after it from one just before). A stream holds a
/// slot here instead of a timer of its own (a `Sleep` is over a hundred bytes, on the heap
/// behind an `Interval`). The task runs while any stream is registered and ends at the first
/// tick with none.
struct Clock {
    period: Duration,
    /// How many half periods have passed (wrapping); bumped under `state`'s lock.
    ticks: AtomicU32,
    state: Mutex<ClockState>,
}

#[derive(Default)]
struct ClockState {
    /// Each registered stream's waker, by slot; `None` for a free slot or a stream that was
    /// never polled.
    wakers: Vec<Option<Waker>>,
    /// The free slots of `wakers`.
    free: Vec<u32>,
    /// How many streams hold a slot.
    streams: usize,
    /// Whether the ticking task runs.
    running: bool,
}

impl Clock {
    fn new(period: Duration) -> Self {
        Self {
            period,
            ticks: AtomicU32::new(0),
            state: Mutex::default(),
        }
    }

    /// A slot for one more stream; starts the ticking task if it isn't running (with no
    /// runtime, which a Salvo handler always has, the stream simply never ticks).
    fn register(self: &Arc<Self>) -> Tick {
        let mut state = self.state.lock();
        let slot = if let Some(slot) = state.free.pop() {
            slot
        } else {
            state.wakers.push(None);
            // Past u32::MAX streams (never), a slot that doesn't exist: the stream never ticks.
            u32::try_from(state.wakers.len() - 1).unwrap_or(u32::MAX)
        };
        state.streams += 1;
        if !state.running
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            state.running = true;
            runtime.spawn(Arc::clone(self).run());
        }
        Tick {
            clock: Arc::clone(self),
            slot,
            seen: self.ticks.load(Ordering::Acquire),
            waker: None,
        }
    }

    async fn run(self: Arc<Self>) {
        let half = (self.period / 2).max(Duration::from_millis(1));
        let mut running = Running {
            clock: Arc::clone(&self),
            ended: false,
        };
        loop {
            tokio::time::sleep(half).await;
            if !self.tick() {
                running.ended = true;
                return;
            }
        }
    }

    /// One tick: bumps `ticks` and wakes every registered stream, under the lock (so a stream
    /// registering its waker either is woken or reads the new count). False, with `running`
    /// cleared, if no stream is left: the task ends.
    fn tick(&self) -> bool {
        let mut state = self.state.lock();
        if state.streams == 0 {
            state.running = false;
            return false;
        }
        self.ticks.fetch_add(1, Ordering::AcqRel);
        for waker in state.wakers.iter().flatten() {
            waker.wake_by_ref();
        }
        true
    }
}

/// Marks the ticking task gone if its runtime drops it mid-sleep (a runtime shut down while the
/// endpoint lives on), so that the next stream starts a new one.
struct Running {
    clock: Arc<Clock>,
    /// Set when the task ends by itself (it has already cleared `running` under the lock).
    ended: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.ended {
            self.clock.state.lock().running = false;
        }
    }
}

/// One stream's slot in its endpoint's [`Clock`]; dropping it frees the slot.
struct Tick {
    clock: Arc<Clock>,
    slot: u32,
    /// The clock's `ticks` when this stream last took a tick.
    seen: u32,
    /// A copy of the waker in the slot, so that a poll takes the clock's lock only when the
    /// task polling the stream changed.
    waker: Option<Waker>,
}

impl Tick {
    /// Ready once the clock ticked since the last ready, with the tick count seen before and
    /// the one now (ticks missed while the stream wasn't polled come as one step).
    fn poll_tick(&mut self, waker: &Waker) -> Poll<(u32, u32)> {
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            if let Some(slot) = self.clock.state.lock().wakers.get_mut(self.slot as usize) {
                *slot = Some(waker.clone());
            }
            self.waker = Some(waker.clone());
        }
        // Read after the waker is in place: a tick after this read wakes it.
        let now = self.clock.ticks.load(Ordering::Acquire);
        if now == self.seen {
            Poll::Pending
        } else {
            Poll::Ready((std::mem::replace(&mut self.seen, now), now))
        }
    }
}

impl Drop for Tick {
    fn drop(&mut self) {
        let mut state = self.clock.state.lock();
        state.streams -= 1;
        if let Some(slot) = state.wakers.get_mut(self.slot as usize) {
            *slot = None;
            state.free.push(self.slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::task::Poll;
    use std::time::Duration;

    use futures_util::task::noop_waker_ref;

    use super::{Clock, Tick, lines};

    /// Waits (bounded) until `tick` takes a tick of its clock.
    async fn ticked(tick: &mut Tick) {
        tokio::time::timeout(
            Duration::from_secs(5),
            std::future::poll_fn(|cx| tick.poll_tick(cx.waker())),
        )
        .await
        .expect("a tick within 5 s");
    }

    #[tokio::test]
    async fn one_clock_ticks_every_stream_once_per_tick_and_stops_with_none_left() {
        let clock = Arc::new(Clock::new(Duration::from_millis(10)));
        let mut a = clock.register();
        let mut b = clock.register();
        assert!(clock.state.lock().running);
        ticked(&mut a).await;
        ticked(&mut b).await;
        // A tick is taken once: right after it, the next one is still to come.
        assert_eq!(a.poll_tick(noop_waker_ref()), Poll::Pending);

        // A freed slot goes to the next stream; the slots don't grow.
        let slot = a.slot;
        drop(a);
        let mut c = clock.register();
        assert_eq!(c.slot, slot);
        assert_eq!(clock.state.lock().wakers.len(), 2);
        ticked(&mut c).await;

        drop((b, c));
        tokio::time::timeout(Duration::from_secs(5), async {
            while clock.state.lock().running {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the clock's task ends once no stream holds a slot");
        let state = clock.state.lock();
        assert_eq!(state.streams, 0);
        assert!(state.wakers.iter().all(Option::is_none));
    }

    #[test]
    fn a_clock_outlives_the_runtime_that_ran_its_task() {
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("a runtime")
        };
        let clock = Arc::new(Clock::new(Duration::from_millis(10)));
        let first = runtime();
        let mut tick = first.block_on(async { clock.register() });
        first.block_on(ticked(&mut tick));
        // Shutting the runtime down drops the clock's task; the clock must notice.
        drop(first);
        drop(tick);
        assert!(!clock.state.lock().running);
        runtime().block_on(async {
            let mut tick = clock.register();
            ticked(&mut tick).await;
        });
    }

    #[test]
    fn lines_split_at_crlf_cr_and_lf() {
        fn split(s: &str) -> Vec<&str> {
            lines(s).collect()
        }
        assert_eq!(split(""), [""]);
        assert_eq!(split("a"), ["a"]);
        assert_eq!(split("a\nb\r\nc\rd"), ["a", "b", "c", "d"]);
        assert_eq!(split("a\n"), ["a", ""]);
        assert_eq!(split("\r\n\r\n"), ["", "", ""]);
        assert_eq!(split("a\r\rb"), ["a", "", "b"]);
    }
}

/// The keep-alive clock's wake, model-checked: a tick on another thread always reaches a
/// stream that polls meanwhile, whether its waker changes or not (a lost wake would leave the
/// stream silent, its proxy cutting it as idle).
#[cfg(all(test, salvo_realtime_loom))]
mod loom_tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::Clock;

    #[test]
    fn loom_a_tick_always_wakes_a_polling_stream() {
        loom::model(|| {
            let clock = Arc::new(Clock::new(Duration::from_secs(1)));
            let mut tick = clock.register();
            // A first poll with another waker (the stream's task changed since).
            assert!(tick.poll_tick(std::task::Waker::noop()).is_pending());
            let ticker = {
                let clock = Arc::clone(&clock);
                loom::thread::spawn(move || assert!(clock.tick()))
            };
            loom::future::block_on(std::future::poll_fn(|cx| tick.poll_tick(cx.waker())));
            ticker.join().expect("ticker");
            drop(tick);
            assert!(!clock.tick(), "no stream left: the clock stops");
        });
    }
}
