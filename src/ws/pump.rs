//! One connection's life after the upgrade: the pump, a loop of named steps (a delivery, a
//! client frame, a command's answer, a tick of the heartbeat, the drain), each returning
//! whether to go on.

use std::io;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::{FutureExt, Sink as _, SinkExt, Stream, StreamExt};
use tokio::io::AsyncWrite;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage, Utf8Bytes};

use super::close::close_code::{GOING_AWAY, IDENTITY_EXPIRED, INTERNAL, NORMAL, POLICY, TOO_BIG};
use super::close::{CLOSE_WAIT, End, classify};
use super::writer::{Socket, Unsent, frame, lone_data, lone_message, poll_write_rest, with_frame};
use super::{Framing, RateLimit, RatePolicy, Settings, SlowConsumerPolicy};
use crate::channel::dispatch::{Commands, Done};
use crate::channel::protocol;
use crate::endpoint::{Admission, Attached};
use crate::error::{HubError, Refused};
use crate::hub::{Connection, Delivery, Hub, Payload, Publication};
use crate::metrics::ConnMetrics;
use crate::wake::Gates;

/// A connection's subscription, fused: once it has ended it is never polled again (a hub's
/// stream may panic or hang if it were, and look-aheads poll past the end).
type Deliveries<H> = futures_util::stream::Fuse<<H as Hub>::Subscription>;

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

/// How far a burst got without waiting ([`Pump::burst_now`]).
enum Fast {
    /// Everything was written and flushed.
    Sent,
    /// A write would wait: the timed path goes on, with this delivery first (if any).
    Blocked(Option<Delivery>),
    /// The connection ends.
    End(End),
}

/// One connection's whole life after the upgrade, ending in the one teardown
/// ([`Attached::finish`]).
pub(super) async fn serve<H: Hub>(
    ws: Socket,
    mut attached: Attached<H>,
    settings: Arc<Settings>,
    channel: bool,
) {
    tracing::info!(channel, "connected");
    let (hub, conn, sub, admission) = attached.split();
    let Some(sub) = sub else {
        // Attached just now: the subscription is there (a guard, not a path).
        return;
    };
    let mut pump = Pump::new(ws, hub, conn, &settings, channel);
    pump.metrics = admission.metrics.take();
    let end = pump.run(sub, admission).await;
    if let End::Close(code, _) = &end {
        pump.metrics.close_code(Some(*code));
    }
    pump.finish(&end).await;
    drop(pump);
    attached.finish(end.reason()).await;
}

/// Heartbeat, idle and identity deadlines.
struct Clock {
    next_ping: Instant,
    pong_due: Option<Instant>,
    idle_due: Option<Instant>,
    /// When the connection's identity expires, unless refreshed.
    expires: Option<Instant>,
}

impl Clock {
    fn next(&self) -> Instant {
        [
            Some(self.next_ping),
            self.pong_due,
            self.idle_due,
            self.expires,
        ]
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
                expires: conn.identity().and_then(|i| i.remaining()).map(|d| now + d),
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
        let mut commands = Commands::new();
        if let (true, Some(expires)) = (self.channel, self.clock.expires) {
            // The client learns when to refresh before anything else.
            let notice = Box::pin(self.send_now(WsMessage::text(session_notice(expires))));
            if let ControlFlow::Break(end) = notice.await {
                return end;
            }
        }
        loop {
            let reading = commands.accepting();
            let step = tokio::select! {
                biased;
                () = std::future::poll_fn(|cx| gates.poll(DRAIN, cx, |cx| admission.drain.poll_requested(cx))) => {
                    ControlFlow::Break(End::Close(GOING_AWAY, "server shutting down"))
                }
                done = std::future::poll_fn(|cx| commands.poll_done(cx)), if commands.running() => {
                    // Boxed, like the other rare paths: their state shouldn't be part of
                    // every idle connection's.
                    Box::pin(self.answer(sub, done)).await
                }
                frame = std::future::poll_fn(|cx| gates.poll(READ, cx, |cx| self.ws.poll_next_unpin(cx))), if reading => {
                    self.unflushed = true;
                    // Boxed: a client frame is rare on most connections, and its handling (the
                    // hub's receive, a refusal) shouldn't be part of every idle one's state.
                    let step = match Box::pin(self.inbound(frame, sub)).await {
                        ControlFlow::Continue(Some(request)) => match commands.start(hub, conn, request) {
                            Ok(()) => ControlFlow::Continue(()),
                            Err(refusal) => Box::pin(self.send_now(WsMessage::text(refusal))).await,
                        },
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
        (reference, result): Done,
    ) -> ControlFlow<End> {
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
            return self.over_rate(&msg, sub).await;
        }
        if self.channel {
            return self.command(&msg, sub).await;
        }
        self.receive_plain(msg, sub).await
    }

    /// A message over the rate limit: counted as dropped, then the connection closes
    /// ([`RatePolicy::Close`]) or the client is told (a command still gets its one reply).
    async fn over_rate(
        &mut self,
        msg: &WsMessage,
        sub: &mut Deliveries<H>,
    ) -> ControlFlow<End, Option<protocol::Request>> {
        tracing::debug!("message dropped: rate limit");
        self.hub.note_dropped(self.conn, 1);
        self.metrics.dropped();
        if self.settings.rate_policy == RatePolicy::Close {
            return ControlFlow::Break(End::Close(POLICY, "rate limit exceeded"));
        }
        let message = "message dropped: rate limit exceeded";
        // A command still gets its one reply: its `ref` is read, and nothing more.
        let reference = match msg {
            WsMessage::Text(text) if self.channel => protocol::reference(text.as_str()),
            _ => None,
        };
        self.tell(sub, reference.as_ref(), "rate_limited", message, POLICY)
            .await
            .map_continue(|()| None)
    }

    /// A frame of the channel protocol: the command it carries (handled by the caller), or
    /// the client told why it can't be read.
    async fn command(
        &mut self,
        msg: &WsMessage,
        sub: &mut Deliveries<H>,
    ) -> ControlFlow<End, Option<protocol::Request>> {
        // Tungstenite checks UTF-8 as it reads: a text frame is valid here.
        let parsed = match msg {
            WsMessage::Text(text) => protocol::parse(text.as_str()),
            _ => Err(protocol::Invalid {
                reference: None,
                code: "bad_frame",
                message: "the channel protocol takes JSON text frames".to_owned(),
            }),
        };
        match parsed {
            Ok(protocol::Request {
                reference,
                command: protocol::Command::Refresh { token },
            }) => Box::pin(self.refresh(reference, token, sub))
                .await
                .map_continue(|()| None),
            Ok(request) => ControlFlow::Continue(Some(request)),
            Err(bad) => {
                let reference = bad.reference.as_ref();
                Box::pin(self.tell(sub, reference, bad.code, &bad.message, POLICY))
                    .await
                    .map_continue(|()| None)
            }
        }
    }

    /// A `refresh` command: the endpoint's check renews the identity's expiry, and the reply
    /// says when it now expires. Run here, not as a hub command: it changes the connection, not
    /// the hub. A refusal leaves the old expiry in force.
    async fn refresh(
        &mut self,
        reference: serde_json::Value,
        token: String,
        sub: &mut Deliveries<H>,
    ) -> ControlFlow<End> {
        let answer = match (&self.settings.refresh, self.conn.identity()) {
            (None, _) => Err(Refused::new(
                "unsupported",
                "this endpoint doesn't refresh identities",
            )),
            (_, None) => Err(Refused::new(
                "unauthorized",
                "an anonymous connection has no identity",
            )),
            (Some(check), Some(current)) => {
                let call = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    (check.0)(token, current.clone())
                }));
                let renewed = match call {
                    Ok(fut) => std::panic::AssertUnwindSafe(fut).catch_unwind().await.ok(),
                    Err(_) => None,
                };
                match renewed {
                    None => {
                        tracing::error!("the refresh check panicked");
                        Err(Refused::new(
                            "handler_failed",
                            "the server failed to check the token",
                        ))
                    }
                    Some(Err(rejection)) => Err(rejection_code(&rejection)),
                    Some(Ok(renewed)) if renewed.user_id() != current.user_id() => {
                        Err(Refused::new("forbidden", "the token is another user's"))
                    }
                    Some(Ok(renewed)) => {
                        let left = renewed.remaining();
                        self.clock.expires = left.map(|d| Instant::now() + d);
                        Ok(left.map_or_else(
                            || serde_json::json!({}),
                            |d| serde_json::json!({ "expires_in_ms": millis(d) }),
                        ))
                    }
                }
            }
        };
        let text = match answer {
            Ok(data) => protocol::ok(&reference, &data),
            Err(refused) => protocol::error(Some(&reference), refused.code(), refused.message()),
        };
        if let ControlFlow::Break(end) = self.flush_ready(sub).await {
            return ControlFlow::Break(end);
        }
        self.send_now(WsMessage::text(text)).await
    }

    /// A message of the plain protocol, handed to the hub; a refusal is told to the client
    /// (an oversized one closes 1009).
    async fn receive_plain(
        &mut self,
        msg: WsMessage,
        sub: &mut Deliveries<H>,
    ) -> ControlFlow<End, Option<protocol::Request>> {
        let message = match msg {
            WsMessage::Text(text) if self.settings.event_frames => {
                protocol::event_frame(text.as_str())
                    .unwrap_or_else(|| Publication::new(Payload::text(text.as_str())))
            }
            WsMessage::Text(text) => Publication::new(Payload::text(text.as_str())),
            other => Publication::new(Payload::binary(other.into_data())),
        };
        match self.hub.receive(self.conn, message).await {
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
                        (other.public_message(), POLICY)
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
                self.metrics.sent(delivery.logged_at());
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
        self.metrics.sent(delivery.logged_at());
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
        if self.clock.expires.is_some_and(|due| now >= due) {
            tracing::info!("the connection's identity expired");
            return ControlFlow::Break(End::Close(IDENTITY_EXPIRED, "identity expired"));
        }
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

    /// Sends one frame and flushes (each write bounded by the send timeout, see [`Progress`](super::writer::Progress)).
    async fn send_now(&mut self, msg: WsMessage) -> ControlFlow<End> {
        match self.ws.send(msg).await {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(self.send_failed()),
        }
    }

    /// Feeds `first` (if any) and every delivery ready after it (up to a batch), flushing
    /// whenever [`max_write_buffer`](super::WsEndpoint::max_write_buffer) bytes are buffered and at
    /// the end (what an earlier [`burst_now`](Self::burst_now) fed, too). No bound on the
    /// whole burst: each write fails once the client took nothing for the send timeout
    /// ([`Progress`](super::writer::Progress)), so a slow but steady reader gets a long burst whole.
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
                self.metrics.sent(delivery.logged_at());
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

/// The code a refresh refused by the endpoint's check is answered with, by its status.
fn rejection_code(rejection: &crate::Rejection) -> Refused {
    let code = match rejection.status().as_u16() {
        401 => "unauthorized",
        403 => "forbidden",
        _ => "invalid_data",
    };
    Refused::new(code, rejection.reason().to_owned())
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `{"type":"message","topic":"$conn","event":"session",..,"data":{"expires_in_ms":..}}`: when
/// the connection's identity expires, sent first to a channel-protocol client.
fn session_notice(expires: Instant) -> String {
    let left = expires.saturating_duration_since(Instant::now());
    serde_json::json!({
        "type": "message",
        "topic": crate::hub::CONNECTION_TOPIC,
        "event": "session",
        "ts": crate::hub::message::now_ms(),
        "data": { "expires_in_ms": millis(left) },
    })
    .to_string()
}
