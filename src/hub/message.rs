//! Messages and their payloads.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::filter::Tags;
use crate::error::{HubError, InvalidEvent, InvalidFilter};
use crate::ids::{ConnectionId, EventName, MessageId, Topic};

/// The body of a message: UTF-8 text or binary, in one shared allocation.
///
/// Cloning a payload, like cloning a [`Message`], never copies its bytes: every subscriber of a
/// topic reads the same buffer.
///
/// ```
/// use salvo_realtime::Payload;
///
/// let text = Payload::from("hello");
/// assert_eq!(text.as_text(), Some("hello"));
/// let binary = Payload::from(vec![0u8, 159, 146, 150]);
/// assert!(binary.as_text().is_none());
/// assert_eq!(binary.len(), 4);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Payload {
    bytes: Bytes,
    text: bool,
}

impl Payload {
    /// A text payload.
    #[must_use]
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            bytes: Bytes::from(text.into()),
            text: true,
        }
    }

    /// A binary payload.
    #[must_use]
    pub fn binary(bytes: impl Into<Bytes>) -> Self {
        Self {
            bytes: bytes.into(),
            text: false,
        }
    }

    /// A text payload from bytes that must be UTF-8.
    ///
    /// # Errors
    ///
    /// Gives the bytes back if they are not valid UTF-8.
    pub fn text_from_bytes(bytes: Bytes) -> Result<Self, Bytes> {
        if std::str::from_utf8(&bytes).is_ok() {
            Ok(Self { bytes, text: true })
        } else {
            Err(bytes)
        }
    }

    /// A text payload holding `value` encoded as JSON.
    ///
    /// # Errors
    ///
    /// [`HubError::Json`] if `value` can't be encoded.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, HubError> {
        Ok(Self {
            bytes: Bytes::from(serde_json::to_vec(value)?),
            text: true,
        })
    }

    /// Whether this is a text payload.
    #[must_use]
    pub fn is_text(&self) -> bool {
        self.text
    }

    /// The text, if this is a text payload.
    #[must_use]
    pub fn as_text(&self) -> Option<&str> {
        if self.text {
            // Text payloads are validated on construction, so this never fails.
            std::str::from_utf8(&self.bytes).ok()
        } else {
            None
        }
    }

    /// The raw bytes (for text, its UTF-8 encoding).
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The shared buffer; cloning it copies nothing.
    #[must_use]
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Size in bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the payload is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Decodes the payload as JSON.
    ///
    /// # Errors
    ///
    /// [`HubError::Json`] if the bytes are not JSON of type `T`.
    pub fn decode_json<T: DeserializeOwned>(&self) -> Result<T, HubError> {
        Ok(serde_json::from_slice(&self.bytes)?)
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_text() {
            Some(text) => f.debug_tuple("Text").field(&text).finish(),
            None => f.debug_tuple("Binary").field(&self.bytes.len()).finish(),
        }
    }
}

impl From<&str> for Payload {
    fn from(text: &str) -> Self {
        Self::text(text)
    }
}

impl From<String> for Payload {
    fn from(text: String) -> Self {
        Self::text(text)
    }
}

impl From<Vec<u8>> for Payload {
    fn from(bytes: Vec<u8>) -> Self {
        Self::binary(bytes)
    }
}

impl From<Bytes> for Payload {
    fn from(bytes: Bytes) -> Self {
        Self::binary(bytes)
    }
}

/// A JSON value becomes a text payload; encoding a `Value` can't fail.
///
/// ```
/// use salvo_realtime::{Payload, Rooms};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), salvo_realtime::error::HubError> {
/// let payload = Payload::from(serde_json::json!({ "text": "hi" }));
/// assert_eq!(payload.as_text(), Some(r#"{"text":"hi"}"#));
///
/// let rooms = Rooms::new();
/// rooms.broadcast("lobby", serde_json::json!({ "text": "hi" })).await?;
/// # Ok(())
/// # }
/// ```
impl From<serde_json::Value> for Payload {
    fn from(value: serde_json::Value) -> Self {
        Self::from(&value)
    }
}

/// As `From<Value>`, without giving the value up.
impl From<&serde_json::Value> for Payload {
    fn from(value: &serde_json::Value) -> Self {
        Self::text(value.to_string())
    }
}

/// What to publish: a payload, an optional event name and who sent it.
///
/// Anything that converts into a [`Payload`] converts into a `Publication` too, so
/// `hub.publish("topic", "text")` and `hub.publish("topic", json!({..}))` work; a value of
/// your own type goes in as Salvo's `Json(&value)` (or [`Publication::json`]), and the builder
/// does the rest. Building never fails: a value that doesn't encode or a bad event name makes
/// the publish fail instead ([`check`](Self::check)), and nothing is sent.
///
/// ```
/// use salvo::prelude::Json;
/// use salvo_realtime::{PubSub, Publication};
///
/// #[derive(serde::Serialize)]
/// struct Price {
///     eur: f64,
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), salvo_realtime::error::HubError> {
/// let hub = PubSub::new();
/// hub.publish("prices", Json(&Price { eur: 1.08 })).await?;
/// // With an event name, in one call.
/// hub.publish("prices", Publication::json(&Price { eur: 1.09 }).event("tick")).await?;
/// hub.publish("alerts", Publication::new("disk almost full").event("alert")).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Publication {
    pub(crate) payload: Payload,
    pub(crate) event: Option<EventName>,
    pub(crate) sender: Option<Arc<str>>,
    pub(crate) origin: Option<ConnectionId>,
    pub(crate) skip_origin: bool,
    pub(crate) tags: Tags,
    /// A mistake made while building it (a value that wouldn't encode, a bad event name),
    /// reported when it is published: builders stay chainable, and nothing invalid is sent.
    invalid: Option<Invalid>,
}

/// Why a [`Publication`] can't be published.
#[derive(Debug, Clone)]
enum Invalid {
    Json(Arc<str>),
    Event(InvalidEvent),
    Tag(InvalidFilter),
}

impl Publication {
    /// A publication of `payload` with no event name.
    #[must_use]
    pub fn new(payload: impl Into<Payload>) -> Self {
        Self {
            payload: payload.into(),
            event: None,
            sender: None,
            origin: None,
            skip_origin: false,
            tags: Tags::default(),
            invalid: None,
        }
    }

    /// A publication of `value` encoded as a JSON text payload (what `Json(value)` converts
    /// into). A value that can't be encoded (a map with non-string keys, a `Serialize` impl
    /// that fails) makes the publish fail with [`HubError::Json`]; nothing is sent.
    #[must_use]
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Self {
        match Payload::json(value) {
            Ok(payload) => Self::new(payload),
            Err(e) => Self::invalid(Invalid::Json(e.to_string().into())),
        }
    }

    fn invalid(invalid: Invalid) -> Self {
        let mut p = Self::new(Payload::text(""));
        p.invalid = Some(invalid);
        p
    }

    /// Names the event (SSE `event:`; the `event` field of the WebSocket envelope). Default:
    /// none. A name that is empty, longer than 64 bytes or holds control characters makes the
    /// publish fail with [`HubError::InvalidEvent`]; nothing is sent.
    #[must_use]
    pub fn event(mut self, name: &str) -> Self {
        match EventName::new(name) {
            Ok(name) => self.event = Some(name),
            Err(e) => {
                self.invalid.get_or_insert(Invalid::Event(e));
            }
        }
        self
    }

    /// Sets an already validated event name. Default: none.
    #[must_use]
    pub fn event_name_checked(mut self, name: EventName) -> Self {
        self.event = Some(name);
        self
    }

    /// Tags the message: `key` (1 to 32 of `a-z A-Z 0-9 _ - .`) set to `value` (at most 128
    /// bytes), at most 8 tags. Subscribers may pass a [`Filter`](super::Filter) to receive
    /// only the messages whose tags it lists (a ticker's symbols); the WebSocket envelope
    /// carries them as `"tags":{..}`. Default: none. A bad tag makes the publish fail with
    /// [`HubError::InvalidTag`]; nothing is sent.
    ///
    /// ```
    /// use salvo_realtime::Publication;
    ///
    /// let p = Publication::json(&serde_json::json!({"price": 189.5})).tag("ticker", "AAPL");
    /// assert!(p.check().is_ok());
    /// ```
    #[must_use]
    pub fn tag(mut self, key: &str, value: &str) -> Self {
        if let Err(e) = self.tags.set(key, value) {
            self.invalid.get_or_insert(Invalid::Tag(e));
        }
        self
    }

    /// Records the user id of the sender, delivered with the message. Default: none.
    #[must_use]
    pub fn sender(mut self, user: impl Into<Arc<str>>) -> Self {
        self.sender = Some(user.into());
        self
    }

    /// Records the connection that sent the message. Default: none.
    #[must_use]
    pub fn origin(mut self, connection: ConnectionId) -> Self {
        self.origin = Some(connection);
        self
    }

    /// Don't deliver the message to its [`origin`](Self::origin) connection ("all but the
    /// sender"). It is still logged, and other connections of the same user receive it.
    /// Default: `false`.
    #[must_use]
    pub fn skip_origin(mut self, skip: bool) -> Self {
        self.skip_origin = skip;
        self
    }

    /// The event name, if any.
    #[must_use]
    pub fn event_name(&self) -> Option<&EventName> {
        self.event.as_ref()
    }

    /// The payload.
    #[must_use]
    pub fn payload(&self) -> &Payload {
        &self.payload
    }

    /// The sender's user id, if recorded (a [`Backend`](crate::backend::Backend) encodes it).
    #[must_use]
    pub fn sender_id(&self) -> Option<&str> {
        self.sender.as_deref()
    }

    /// The connection that sent it, if recorded (a [`Backend`](crate::backend::Backend) encodes it).
    #[must_use]
    pub fn origin_id(&self) -> Option<ConnectionId> {
        self.origin
    }

    /// Whether the [`origin`](Self::origin) connection is to be skipped.
    #[must_use]
    pub fn skips_origin(&self) -> bool {
        self.skip_origin
    }

    /// The mistake made while building it, if any: what publishing it fails with.
    ///
    /// # Errors
    ///
    /// [`HubError::Json`] for a value that didn't encode, [`HubError::InvalidEvent`] for a bad
    /// event name.
    pub fn check(&self) -> Result<(), HubError> {
        match &self.invalid {
            None => Ok(()),
            Some(Invalid::Json(e)) => Err(HubError::Json(serde::ser::Error::custom(e))),
            Some(Invalid::Event(e)) => Err(HubError::InvalidEvent(e.clone())),
            Some(Invalid::Tag(e)) => Err(HubError::InvalidTag(e.clone())),
        }
    }
}

impl<T: Into<Payload>> From<T> for Publication {
    fn from(payload: T) -> Self {
        Self::new(payload)
    }
}

/// A published message, as subscribers receive it.
///
/// Cloning is one reference-count increment: all subscribers of a topic share one message.
#[derive(Clone)]
pub struct Message(Arc<MessageInner>);

struct MessageInner {
    topic: Topic,
    id: MessageId,
    event: Option<EventName>,
    payload: Payload,
    sender: Option<Arc<str>>,
    origin: Option<ConnectionId>,
    skip_origin: bool,
    tags: Tags,
    timestamp_ms: u64,
    logged_at: Instant,
    /// A live-only notice (presence change): not in history, no offset of its own.
    ephemeral: bool,
    /// The wire forms of the message, each encoded at most once, by the first connection that
    /// sends it (a `OnceLock`: one atomic load for every later reader).
    encodings: [OnceLock<Bytes>; ENCODINGS],
}

impl Message {
    pub(crate) fn new(topic: Topic, id: MessageId, p: Publication) -> Self {
        Self::build(topic, id, p, now_ms(), false)
    }

    /// A live-only notice: delivered to the subscribers of the moment, never logged. Its id is
    /// that of the last logged message before it (`after`), so it can't be resumed from.
    pub(crate) fn notice(topic: Topic, after: MessageId, p: Publication) -> Self {
        Self::build(topic, after, p, now_ms(), true)
    }

    fn build(
        topic: Topic,
        id: MessageId,
        p: Publication,
        timestamp_ms: u64,
        ephemeral: bool,
    ) -> Self {
        Self(Arc::new(MessageInner {
            topic,
            id,
            event: p.event,
            payload: p.payload,
            sender: p.sender,
            origin: p.origin,
            skip_origin: p.skip_origin,
            tags: p.tags,
            timestamp_ms,
            logged_at: Instant::now(),
            ephemeral,
            encodings: std::array::from_fn(|_| OnceLock::new()),
        }))
    }

    /// A message another node published, as a remote [`Backend`](crate::backend::Backend) hands it to
    /// a [`Mirror`](crate::backend::Mirror): its id and timestamp were assigned there.
    ///
    /// ```
    /// use salvo_realtime::{Message, MessageId, Topic, hub::Epoch};
    ///
    /// let epoch = Epoch::from_u64(7).expect("nonzero");
    /// let m = Message::remote(Topic::new("t")?, MessageId::new(epoch, 1), "hi".into(), 1_000);
    /// assert_eq!((m.id().offset(), m.timestamp_ms()), (1, 1_000));
    /// # Ok::<(), salvo_realtime::error::InvalidTopic>(())
    /// ```
    #[must_use]
    pub fn remote(
        topic: Topic,
        id: MessageId,
        publication: Publication,
        timestamp_ms: u64,
    ) -> Self {
        Self::build(topic, id, publication, timestamp_ms, false)
    }

    /// This message with `p`'s payload, event name and tags (and sender, if `p` names one):
    /// the same topic, id and time, encoded anew. For one subscriber's copy (an outgoing hook).
    pub(crate) fn rewritten(&self, p: Publication) -> Self {
        let inner = &self.0;
        Self(Arc::new(MessageInner {
            topic: inner.topic.clone(),
            id: inner.id,
            event: p.event,
            payload: p.payload,
            sender: p.sender.or_else(|| inner.sender.clone()),
            origin: inner.origin,
            skip_origin: inner.skip_origin,
            tags: p.tags,
            timestamp_ms: inner.timestamp_ms,
            logged_at: inner.logged_at,
            ephemeral: inner.ephemeral,
            encodings: std::array::from_fn(|_| OnceLock::new()),
        }))
    }

    /// The topic or room it was published to.
    #[must_use]
    pub fn topic(&self) -> &Topic {
        &self.0.topic
    }

    /// Its id: the epoch and offset in its topic's log. For an
    /// [ephemeral](Self::is_ephemeral) notice, the id of the last logged message before it.
    #[must_use]
    pub fn id(&self) -> MessageId {
        self.0.id
    }

    /// Whether this is a live-only notice (the `presence.join` / `presence.leave` events of
    /// [`Rooms`](crate::Rooms)): delivered to whoever is subscribed at the moment, never kept in
    /// history, without an id of its own (the envelope and the SSE event carry none), so a
    /// client must not resume from it.
    #[must_use]
    pub fn is_ephemeral(&self) -> bool {
        self.0.ephemeral
    }

    /// Its event name, if any.
    #[must_use]
    pub fn event(&self) -> Option<&EventName> {
        self.0.event.as_ref()
    }

    /// The value of its tag `key`, if it has one (see [`Publication::tag`]).
    #[must_use]
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.0.tags.get(key)
    }

    /// Its tags, as `(key, value)` pairs in the order they were set.
    pub fn tags(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.tags.iter()
    }

    pub(crate) fn tag_set(&self) -> &Tags {
        &self.0.tags
    }

    /// Its payload.
    #[must_use]
    pub fn payload(&self) -> &Payload {
        &self.0.payload
    }

    /// The user id of the sender, if the publisher recorded one.
    #[must_use]
    pub fn sender(&self) -> Option<&str> {
        self.0.sender.as_deref()
    }

    /// The connection that sent it, if the publisher recorded one.
    #[must_use]
    pub fn origin(&self) -> Option<ConnectionId> {
        self.0.origin
    }

    /// When the hub logged it, in milliseconds since the Unix epoch.
    #[must_use]
    pub fn timestamp_ms(&self) -> u64 {
        self.0.timestamp_ms
    }

    /// Decodes the payload as JSON.
    ///
    /// # Errors
    ///
    /// [`HubError::Json`] if the payload is not JSON of type `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, HubError> {
        self.0.payload.decode_json()
    }

    /// Whether `connection` should receive this message (false only for the origin of an
    /// "all but the sender" message).
    pub(crate) fn is_for(&self, connection: ConnectionId) -> bool {
        !(self.0.skip_origin && self.0.origin == Some(connection))
    }

    pub(crate) fn logged_at(&self) -> Instant {
        self.0.logged_at
    }

    /// The message's encoding number `slot`, made by `encode` the first time any connection
    /// asks for it and shared by every connection after that (see [`crate::wire`], which owns
    /// the slots and the encodings; this module knows no wire format).
    #[inline]
    pub(crate) fn encoded(&self, slot: usize, encode: impl FnOnce(&Self) -> Bytes) -> &Bytes {
        self.0.encodings[slot].get_or_init(|| encode(self))
    }
}

/// How many encodings a message caches ([`crate::wire`] numbers them).
pub(crate) const ENCODINGS: usize = 2;

/// The server's clock: ms since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("topic", &self.0.topic)
            .field("id", &self.0.id)
            .field("event", &self.0.event)
            .field("payload", &self.0.payload)
            .field("sender", &self.0.sender)
            .finish_non_exhaustive()
    }
}
