//! Writing frames: the socket's per-write send timeout ([`Progress`]), and a message's frame
//! written below tungstenite from the message's shared bytes ([`Lone`], [`Unsent`]).
//!
//! # Invariants
//!
//! * Nothing is written through tungstenite while part of a frame written below it is unsent
//!   ([`Unsent`]): the rest goes first, whole.
//! * Tungstenite's buffer is empty before a frame is written below it: a read may have queued a
//!   pong or a close answer there, so it is flushed first.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use salvo::hyper::upgrade::Upgraded;
use salvo::rt::tokio::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};

use super::Framing;
use crate::hub::{Delivery, Message};
use crate::wire::frame::{BINARY, TEXT, header as ws_frame_header};

/// The socket after the upgrade.
pub(super) type Socket = WebSocketStream<Progress<TokioIo<Upgraded>>>;

/// The upgraded connection, with a bound on how long a write may wait without the client
/// taking a byte: once a write has waited [`send_timeout`](super::WsEndpoint::send_timeout) since the
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
pub(super) struct Progress<T> {
    io: T,
    limit: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
    /// A write waited past the limit.
    pub(super) stalled: bool,
    /// Whether the limit applies: not while closing, which the close wait bounds instead.
    pub(super) enforced: bool,
}

impl<T> Progress<T> {
    pub(super) fn new(io: T, limit: Duration) -> Self {
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

pub(super) fn json_frame(bytes: bytes::Bytes) -> WsMessage {
    // Our envelopes are serde_json output, so always UTF-8.
    match Utf8Bytes::try_from(bytes) {
        Ok(text) => WsMessage::text(text),
        Err(_) => WsMessage::text("{}"),
    }
}

/// The frame a delivery travels as; `None` for what [`Framing::Raw`] doesn't carry.
pub(super) fn frame(delivery: &Delivery, framing: Framing) -> Option<WsMessage> {
    match (delivery, framing) {
        (Delivery::Message(m), Framing::Envelope) => Some(json_frame(m.envelope_json())),
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
pub(super) enum Lone<'d> {
    /// The whole frame, encoded once per message (an envelope).
    Frame(&'d [u8]),
    /// A header to make and the payload after it (raw framing).
    Parts(u8, &'d [u8]),
}

pub(super) fn lone_data(delivery: &Delivery, framing: Framing) -> Option<Lone<'_>> {
    match delivery {
        Delivery::Message(m) => lone_message(m, framing),
        _ => None,
    }
}

pub(super) fn lone_message(m: &Message, framing: Framing) -> Option<Lone<'_>> {
    match framing {
        Framing::Envelope => Some(Lone::Frame(m.envelope_frame())),
        Framing::Raw if m.is_ephemeral() => None,
        Framing::Raw if m.payload().is_text() => Some(Lone::Parts(TEXT, m.payload().bytes())),
        Framing::Raw => Some(Lone::Parts(BINARY, m.payload().bytes())),
    }
}

/// Calls `f` with a lone frame's two parts, `head` then `data` (a raw frame's header is built
/// on the stack).
pub(super) fn with_frame<R>(lone: Lone<'_>, f: impl FnOnce(&[u8], &[u8]) -> R) -> R {
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
pub(super) fn poll_write_rest<W: AsyncWrite + Unpin>(
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
pub(super) struct Unsent {
    pub(super) message: Message,
    pub(super) written: usize,
}

#[cfg(test)]
mod tests {
    use crate::wire::frame::header as frame_header;

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
