//! How a connection ends: the close codes this endpoint sends, why a connection ended
//! ([`End`]), and how a transport error maps to one.

use std::time::Duration;

use tokio_tungstenite::tungstenite;

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
    /// heartbeat timeout; and under [`Framing::Raw`](crate::ws::Framing::Raw), a refused message
    /// or a `reset` (messages the connection can't get).
    pub const POLICY: u16 = 1008;
    /// A message exceeded the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// The hub failed (under [`Framing::Raw`](crate::ws::Framing::Raw) only: with envelopes a
    /// failed send is an `error` frame and the connection stays up).
    pub const INTERNAL: u16 = 1011;
    /// The connection's identity expired ([`Identity::expires_at`](crate::Identity::expires_at))
    /// and was not refreshed: reconnect with fresh credentials.
    pub const IDENTITY_EXPIRED: u16 = 4001;
}

use close_code::{INVALID_DATA, PROTOCOL_ERROR, TOO_BIG};

/// How long a closing connection waits for the client's Close after sending its own.
pub(super) const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Why a connection ended.
#[derive(Debug)]
pub(super) enum End {
    /// The client sent Close; tungstenite queued the answer: send it, then close TCP.
    ClientClosed,
    /// Send this Close, wait (bounded) for the client's, then close TCP.
    Close(u16, &'static str),
    /// The socket is gone or unusable: just stop.
    Gone(&'static str),
}

impl End {
    pub(super) fn reason(&self) -> &'static str {
        match self {
            Self::ClientClosed => "client closed",
            Self::Close(_, r) | Self::Gone(r) => r,
        }
    }
}

pub(super) fn classify(error: &tungstenite::Error) -> End {
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
