//! The hub's names and ids: [`Topic`], [`EventName`], [`Epoch`], [`MessageId`] and
//! [`ConnectionId`], and the errors of reading them ([`InvalidTopic`], [`InvalidEvent`],
//! [`ParseIdError`], re-exported by [`error`](crate::error)).
//!
//! The bottom of the crate: this module imports nothing of it, so every other module (the hub
//! core, the errors, the transports, the backends) can name an id without an import cycle.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// The name of a topic (in [`PubSub`](crate::PubSub)) or a room (in [`Rooms`](crate::Rooms)).
///
/// A valid name is 1 to [`Topic::MAX_LEN`] bytes of UTF-8 without control characters. Cloning is
/// one reference-count increment.
///
/// ```
/// use salvo_realtime::Topic;
///
/// let topic = Topic::new("news.sport")?;
/// assert_eq!(topic.as_str(), "news.sport");
/// assert!(Topic::new("").is_err());
/// assert!(Topic::new("a\nb").is_err());
/// # Ok::<(), salvo_realtime::error::InvalidTopic>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl Topic {
    /// The longest accepted name, in bytes.
    pub const MAX_LEN: usize = 256;

    /// Validates `name` as a topic name.
    ///
    /// # Errors
    ///
    /// [`InvalidTopic`] if the name is empty, longer than [`Topic::MAX_LEN`] bytes or contains
    /// a control character.
    pub fn new(name: &str) -> Result<Self, InvalidTopic> {
        if name.is_empty() {
            return Err(InvalidTopic::Empty);
        }
        if name.len() > Self::MAX_LEN {
            return Err(InvalidTopic::TooLong {
                len: name.len(),
                limit: Self::MAX_LEN,
            });
        }
        if name.chars().any(char::is_control) {
            return Err(InvalidTopic::ControlCharacter);
        }
        Ok(Self(Arc::from(name)))
    }

    /// The name as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Topic {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Topic {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl FromStr for Topic {
    type Err = InvalidTopic;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl Serialize for Topic {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// The name of an event, such as `"chat"` or `"presence.join"`.
///
/// Over SSE it becomes the `event:` field, so it can't hold control characters. 1 to
/// [`EventName::MAX_LEN`] bytes.
///
/// ```
/// use salvo_realtime::hub::EventName;
///
/// assert_eq!(EventName::new("alert")?.as_str(), "alert");
/// assert!(EventName::new("a\rb").is_err());
/// # Ok::<(), salvo_realtime::error::InvalidEvent>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EventName(Arc<str>);

impl EventName {
    /// The longest accepted name, in bytes.
    pub const MAX_LEN: usize = 64;

    /// Validates `name` as an event name.
    ///
    /// # Errors
    ///
    /// [`InvalidEvent`] if the name is empty, longer than [`EventName::MAX_LEN`] bytes or
    /// contains a control character.
    pub fn new(name: &str) -> Result<Self, InvalidEvent> {
        if name.is_empty() {
            return Err(InvalidEvent::Empty);
        }
        if name.len() > Self::MAX_LEN {
            return Err(InvalidEvent::TooLong {
                len: name.len(),
                limit: Self::MAX_LEN,
            });
        }
        if name.chars().any(char::is_control) {
            return Err(InvalidEvent::ControlCharacter);
        }
        Ok(Self(Arc::from(name)))
    }

    /// The name as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A name written into the program, such as `"chat"`: no `Result` to handle.
    ///
    /// It is validated like [`new`](Self::new), at run time: the name is stored in a shared
    /// `Arc<str>`, which a `const fn` can't build, so there is no compile-time check. Keep
    /// names from users or the network on [`new`](Self::new).
    ///
    /// ```
    /// use salvo_realtime::{Publication, hub::EventName};
    ///
    /// let alert = EventName::from_static("alert");
    /// let p = Publication::new("disk almost full").event_name_checked(alert);
    /// assert_eq!(p.event_name().map(EventName::as_str), Some("alert"));
    /// ```
    ///
    /// # Panics
    ///
    /// If `name` is not a valid event name (empty, over [`EventName::MAX_LEN`] bytes, or with a
    /// control character): a mistake in the program, not in its input.
    #[must_use]
    #[track_caller]
    pub fn from_static(name: &'static str) -> Self {
        match Self::new(name) {
            Ok(event) => event,
            Err(e) => panic!("invalid event name {name:?}: {e}"),
        }
    }
}

impl fmt::Debug for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Names one instance of a topic's log.
///
/// A topic gets a fresh, random epoch whenever its log starts anew: on process restart, or when
/// an idle topic was freed and later used again. A resume position from another epoch is
/// therefore recognised as stale instead of being misread as an offset into the new log.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Epoch(u64);

impl Epoch {
    /// A new epoch, distinct (with overwhelming probability) from every other epoch, in this
    /// process or another.
    #[must_use]
    pub fn random() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(nanos);
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        h.write_u32(std::process::id());
        // Zero is kept free so that no valid id ever prints as "0-..".
        Self(h.finish().max(1))
    }

    /// An epoch with a given value, as a remote backend stores it. Zero is not a valid epoch and
    /// gives `None`.
    #[must_use]
    pub fn from_u64(value: u64) -> Option<Self> {
        (value != 0).then_some(Self(value))
    }

    /// The epoch's numeric value.
    #[must_use]
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Epoch({:x})", self.0)
    }
}

/// Position of a message in its topic's log: the first message of an epoch has offset 1, and
/// each message after it one more. Offset 0 means "before the first message".
pub type Offset = u64;

/// The id of a message: the epoch of its topic's log and its offset in that log.
///
/// Its string form is `<epoch as lowercase hex>-<offset in decimal>`, for example
/// `"3f9a0c1de2b47781-42"`: ASCII letters, digits and `-` only, at most [`MessageId::MAX_LEN`]
/// bytes, short enough for an SSE `id:` that needs no CORS preflight. Only the canonical form
/// parses (no leading zeros, no upper case), so `parse(to_string(id)) == id` and every accepted
/// string prints back unchanged.
///
/// ```
/// use salvo_realtime::MessageId;
///
/// let id: MessageId = "3f9a0c1de2b47781-42".parse()?;
/// assert_eq!(id.offset(), 42);
/// assert_eq!(id.to_string(), "3f9a0c1de2b47781-42");
/// assert!("3F9A-42".parse::<MessageId>().is_err());
/// assert!("not an id".parse::<MessageId>().is_err());
/// # Ok::<(), salvo_realtime::error::ParseIdError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageId {
    epoch: Epoch,
    offset: Offset,
}

impl MessageId {
    /// The longest string form accepted by [`FromStr`], in bytes.
    pub const MAX_LEN: usize = 64;

    /// An id from its parts.
    #[must_use]
    pub fn new(epoch: Epoch, offset: Offset) -> Self {
        Self { epoch, offset }
    }

    /// The epoch of the log the message belongs to.
    #[must_use]
    pub fn epoch(self) -> Epoch {
        self.epoch
    }

    /// The offset of the message in its log.
    #[must_use]
    pub fn offset(self) -> Offset {
        self.offset
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}-{}", self.epoch.0, self.offset)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

impl FromStr for MessageId {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(ParseIdError::Empty);
        }
        if s.len() > Self::MAX_LEN {
            return Err(ParseIdError::TooLong {
                limit: Self::MAX_LEN,
            });
        }
        let (epoch, offset) = s.split_once('-').ok_or(ParseIdError::Malformed)?;
        let canonical = |part: &str, digit: fn(&u8) -> bool| {
            !part.is_empty()
                && part.bytes().all(|b| digit(&b))
                && (part == "0" || !part.starts_with('0'))
        };
        if !canonical(epoch, |b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
            || !canonical(offset, u8::is_ascii_digit)
        {
            return Err(ParseIdError::Malformed);
        }
        let epoch = u64::from_str_radix(epoch, 16)
            .ok()
            .and_then(Epoch::from_u64)
            .ok_or(ParseIdError::Malformed)?;
        let offset = offset.parse().map_err(|_| ParseIdError::Malformed)?;
        Ok(Self { epoch, offset })
    }
}

impl Serialize for MessageId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Identifies one connection within a process.
///
/// ```
/// use salvo_realtime::ConnectionId;
///
/// let (a, b) = (ConnectionId::next(), ConnectionId::next());
/// assert_ne!(a, b);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(u64);

impl ConnectionId {
    /// A new id, never handed out before in this process.
    #[must_use]
    pub fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// The numeric value.
    #[must_use]
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// The id that [`as_u64`](Self::as_u64) gave: how a backend's wire format carries the
    /// origin of a message ([`Publication::origin`](crate::Publication::origin)) back to the
    /// process that published it, so [`skip_origin`](crate::Publication::skip_origin) holds
    /// across nodes. Ids are only meaningful in the process that handed them out.
    ///
    /// ```
    /// use salvo_realtime::ConnectionId;
    ///
    /// let id = ConnectionId::next();
    /// assert_eq!(ConnectionId::from_u64(id.as_u64()), id);
    /// ```
    #[must_use]
    pub fn from_u64(value: u64) -> Self {
        Self(value)
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

impl fmt::Debug for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnectionId({})", self.0)
    }
}

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
    /// The name is longer than [`EventName::MAX_LEN`](crate::hub::EventName::MAX_LEN) bytes.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_round_trips_and_rejects_non_canonical_forms() {
        let id = MessageId::new(Epoch::random(), 12345);
        let s = id.to_string();
        assert!(s.len() <= MessageId::MAX_LEN);
        assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        assert_eq!(s.parse::<MessageId>(), Ok(id));
        for bad in [
            "",
            "-",
            "a-",
            "-1",
            "0-1",
            "00a-1",
            "a-01",
            "A-1",
            "a-1-2",
            "a_1",
            "g-1",
            " a-1",
            "a-1 ",
            "a-+1",
            "fffffffffffffffff-1",
            "a-99999999999999999999",
        ] {
            assert!(bad.parse::<MessageId>().is_err(), "{bad:?} parsed");
        }
        assert_eq!(
            "x".repeat(65).parse::<MessageId>(),
            Err(ParseIdError::TooLong { limit: 64 })
        );
        assert_eq!("a-0".parse::<MessageId>().map(MessageId::offset), Ok(0));
    }

    #[test]
    fn topic_and_event_validation() {
        assert_eq!(Topic::new(""), Err(InvalidTopic::Empty));
        assert!(matches!(
            Topic::new(&"t".repeat(257)),
            Err(InvalidTopic::TooLong { len: 257, .. })
        ));
        assert!(Topic::new(&"t".repeat(256)).is_ok());
        assert_eq!(Topic::new("a\0b"), Err(InvalidTopic::ControlCharacter));
        assert_eq!(EventName::new("a\nb"), Err(InvalidEvent::ControlCharacter));
        assert!(EventName::new(&"e".repeat(65)).is_err());
    }
}
