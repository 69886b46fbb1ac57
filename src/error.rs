//! Error types of the hub core.
//!
//! Every fallible public function names its error type; none of them leaks the error type of a
//! backend or a transport library. Messages are lowercase and end without a period.

use std::error::Error as StdError;

use crate::hub::ConnectionId;

/// Why a topic or room name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidTopic {
    /// The name is empty.
    #[error("topic name is empty")]
    Empty,
    /// The name is longer than [`Topic::MAX_LEN`](crate::Topic::MAX_LEN) bytes.
    #[error("topic name is {len} bytes, over the limit of {limit}")]
    TooLong {
        /// Length of the refused name in bytes.
        len: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The name contains a control character (CR, LF, NUL, ...).
    #[error("topic name contains a control character")]
    ControlCharacter,
    /// The name uses a prefix the hub reserves (room names can't start with `@`, which names a
    /// user's direct-message log).
    #[error("topic name uses the reserved prefix {prefix:?}")]
    Reserved {
        /// The reserved prefix.
        prefix: &'static str,
    },
}

/// Why an event name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidEvent {
    /// The name is empty.
    #[error("event name is empty")]
    Empty,
    /// The name is longer than [`EventName::MAX_LEN`](crate::EventName::MAX_LEN) bytes.
    #[error("event name is {len} bytes, over the limit of {limit}")]
    TooLong {
        /// Length of the refused name in bytes.
        len: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The name contains a control character: it could not travel in an SSE `event:` line.
    #[error("event name contains a control character")]
    ControlCharacter,
}

/// Why a message id string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseIdError {
    /// The string is empty.
    #[error("message id is empty")]
    Empty,
    /// The string is longer than [`MessageId::MAX_LEN`](crate::MessageId::MAX_LEN) bytes.
    #[error("message id is longer than {limit} bytes")]
    TooLong {
        /// The limit in bytes.
        limit: usize,
    },
    /// The string is not of the form `<epoch>-<offset>` in canonical notation.
    #[error("message id is malformed")]
    Malformed,
}

/// Errors of [`Hub`](crate::Hub) operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// A topic or room name was refused.
    #[error("invalid topic: {0}")]
    InvalidTopic(#[from] InvalidTopic),
    /// An event name was refused.
    #[error("invalid event: {0}")]
    InvalidEvent(#[from] InvalidEvent),
    /// A payload is larger than the hub's configured limit.
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// Size of the refused payload in bytes.
        size: usize,
        /// The configured limit in bytes.
        limit: usize,
    },
    /// The hub already holds its configured maximum number of topics.
    #[error("the hub holds its limit of {limit} topics")]
    TooManyTopics {
        /// The configured limit.
        limit: usize,
    },
    /// The connection's owner (its user, or for an anonymous connection its client address)
    /// already created [`max_topics_per_owner`](crate::HubConfig::max_topics_per_owner) topics
    /// or rooms that the hub still holds: one client can't fill the hub for everyone.
    #[error("this user or address created {limit} topics that still exist")]
    TooManyCreated {
        /// The configured limit.
        limit: usize,
    },
    /// A text payload from a connection is JSON nested deeper than
    /// [`MAX_JSON_DEPTH`](crate::MAX_JSON_DEPTH): relaying it would break other clients'
    /// parsers.
    #[error("json nested deeper than {limit} levels")]
    JsonTooDeep {
        /// The limit.
        limit: usize,
    },
    /// A connection asked for more topics or rooms than one connection may hold.
    #[error("a connection may hold at most {limit} topics or rooms")]
    TooManySubscriptions {
        /// The configured limit.
        limit: usize,
    },
    /// The connection is not joined to this hub (never joined, or already left).
    #[error("connection {0} is not joined")]
    NotJoined(ConnectionId),
    /// A connection with this id is already joined.
    #[error("connection {0} is already joined")]
    AlreadyJoined(ConnectionId),
    /// The hub does not accept inbound messages from connections.
    #[error("this hub does not accept messages from connections")]
    InboundRejected,
    /// A JSON payload could not be encoded or decoded.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// The hub's backend failed (for example a remote server is unreachable).
    #[error("backend: {0}")]
    Backend(#[source] Box<dyn StdError + Send + Sync + 'static>),
}
