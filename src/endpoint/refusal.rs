//! Why a request did not become a connection, and the one map from refusal to HTTP status.

use std::net::IpAddr;
use std::time::Duration;

use salvo::Response;
use salvo::http::StatusCode;
use salvo::http::header::{HeaderValue, RETRY_AFTER};

use super::caps::CapExceeded;
use crate::error::HubError;

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
    /// A valid handshake on a connection that can't be upgraded (the server handed the
    /// request over without an HTTP/1.1 upgrade: HTTP/2, an in-process test client): 400,
    /// before anything joins.
    NotUpgradable,
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
            Self::Handshake(_) | Self::NotUpgradable => StatusCode::BAD_REQUEST,
            Self::Version => StatusCode::UPGRADE_REQUIRED,
            Self::Origin => StatusCode::FORBIDDEN,
            Self::Rejected(r) => r.status(),
            Self::Panicked(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Cap(CapExceeded::Total) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Cap(CapExceeded::PerIp | CapExceeded::PerUser) => StatusCode::TOO_MANY_REQUESTS,
            Self::Hub(e) => match e {
                HubError::InvalidTopic(_)
                | HubError::InvalidEvent(_)
                | HubError::InvalidTag(_)
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
            Self::NotUpgradable => {
                "this connection can't be upgraded to a websocket (HTTP/1.1 is needed)".into()
            }
            Self::Origin => "origin not allowed".into(),
            Self::Rejected(r) => r.reason().into(),
            Self::Panicked(_) => "internal error".into(),
            Self::Cap(CapExceeded::Total) => "too many connections".into(),
            Self::Cap(CapExceeded::PerIp) => "too many connections from this address".into(),
            Self::Cap(CapExceeded::PerUser) => "too many connections for this user".into(),
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
            Self::Handshake(_) | Self::Version | Self::NotUpgradable => "handshake",
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
