//! Messages and their payloads.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{HubError, InvalidEvent};
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
/// `hub.publish("topic", "text")` and `hub.publish("topic", json!({..}))` work; use the
/// builder for the rest.
///
/// ```
/// use salvo_realtime::Publication;
///
/// let p = Publication::new("disk almost full").event("alert")?;
/// assert_eq!(p.event_name().map(|e| e.as_str()), Some("alert"));
/// # Ok::<(), salvo_realtime::error::InvalidEvent>(())
/// ```
///
/// A value of your own type goes through [`Publication::json`] (or [`Payload::json`]): there
/// is no `From<&T>` for every `T: Serialize`, because encoding can fail and a `From` can't
/// say so, and because it would collide with `From<&str>`.
///
/// ```
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
/// hub.publish("prices", Publication::json(&Price { eur: 1.08 })?.event_static("tick"))
///     .await?;
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
        }
    }

    /// A publication of `value` encoded as a JSON text payload.
    ///
    /// # Errors
    ///
    /// [`HubError::Json`] if `value` can't be encoded.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, HubError> {
        Ok(Self::new(Payload::json(value)?))
    }

    /// Names the event (SSE `event:`; the `event` field of the WebSocket envelope). Default: none.
    /// For a name written into the program, [`event_static`](Self::event_static) needs no
    /// `Result`.
    ///
    /// # Errors
    ///
    /// [`InvalidEvent`] if the name is empty, too long or holds control characters.
    pub fn event(mut self, name: &str) -> Result<Self, InvalidEvent> {
        self.event = Some(EventName::new(name)?);
        Ok(self)
    }

    /// Names the event with a name written into the program, with no `Result` to handle; see
    /// [`EventName::from_static`]. Default: none.
    ///
    /// # Panics
    ///
    /// If `name` is not a valid event name: a mistake in the program, not in its input.
    #[must_use]
    #[track_caller]
    pub fn event_static(self, name: &'static str) -> Self {
        self.event_name_checked(EventName::from_static(name))
    }

    /// Sets an already validated event name. Default: none.
    #[must_use]
    pub fn event_name_checked(mut self, name: EventName) -> Self {
        self.event = Some(name);
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
    timestamp_ms: u64,
    logged_at: Instant,
    /// A live-only notice (presence change): not in history, no offset of its own.
    ephemeral: bool,
    /// The envelope, encoded once by the first subscriber that sends it.
    json: OnceLock<Encoded>,
    /// The SSE event, encoded once by the first stream that sends it.
    sse: OnceLock<Bytes>,
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
            timestamp_ms,
            logged_at: Instant::now(),
            ephemeral,
            json: OnceLock::new(),
            sse: OnceLock::new(),
        }))
    }

    /// A message another node published, as a remote [`Backend`](crate::backend::Backend) hands it to
    /// a [`Mirror`](crate::backend::Mirror): its id and timestamp were assigned there.
    ///
    /// ```
    /// use salvo_realtime::{Epoch, Message, MessageId, Topic};
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

    /// The message as one JSON object, encoded once and shared by every connection that sends it:
    ///
    /// ```json
    /// {"type":"message","topic":"lobby","id":"3f9a0c1de2b47781-7","event":"chat",
    ///  "from":"alice","ts":1764277200000,"data":"hello"}
    /// ```
    ///
    /// `event` and `from` are left out when absent, and so is `id` for an
    /// [ephemeral](Self::is_ephemeral) notice. A text payload that is itself JSON (nested at most
    /// [`MAX_JSON_DEPTH`](crate::MAX_JSON_DEPTH) deep) is embedded as is; other text becomes a
    /// JSON string; binary becomes a standard base64 string with `"binary":true` beside it.
    #[must_use]
    pub fn envelope_json(&self) -> &Bytes {
        &self.encoded().json
    }

    /// The envelope as one final, unmasked WebSocket text frame (what a server sends): the
    /// frame header and then [`envelope_json`](Self::envelope_json), in the same allocation.
    pub(crate) fn ws_text_frame(&self) -> &Bytes {
        &self.encoded().frame
    }

    fn encoded(&self) -> &Encoded {
        self.0.json.get_or_init(|| {
            let mut out = self.encode_envelope();
            let len = out.len() - HEADROOM;
            let (header, used) = ws_frame_header(WS_TEXT, len);
            out[HEADROOM - used..HEADROOM].copy_from_slice(&header[..used]);
            let all = Bytes::from(out);
            Encoded {
                frame: all.slice(HEADROOM - used..),
                json: all.slice(HEADROOM..),
            }
        })
    }

    /// The message's SSE event bytes, encoded by `encode` the first time and shared after.
    pub(crate) fn cached_sse(&self, encode: impl FnOnce(&Self) -> Bytes) -> Bytes {
        self.0.sse.get_or_init(|| encode(self)).clone()
    }

    fn encode_envelope(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Envelope<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            topic: &'a Topic,
            #[serde(skip_serializing_if = "Option::is_none")]
            id: Option<MessageId>,
            #[serde(skip_serializing_if = "Option::is_none")]
            event: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            from: Option<&'a str>,
            ts: u64,
            data: Data<'a>,
            #[serde(skip_serializing_if = "std::ops::Not::not")]
            binary: bool,
        }
        enum Data<'a> {
            Raw(&'a serde_json::value::RawValue),
            Text(&'a str),
            Binary(String),
        }
        impl Serialize for Data<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match self {
                    Data::Raw(raw) => raw.serialize(s),
                    Data::Text(text) => s.serialize_str(text),
                    Data::Binary(b64) => s.serialize_str(b64),
                }
            }
        }
        let payload = &self.0.payload;
        let data = match payload.as_text() {
            Some(text) => match embeddable_json(text) {
                Some(raw) => Data::Raw(raw),
                None => Data::Text(text),
            },
            None => Data::Binary(base64(payload.as_bytes())),
        };
        let envelope = Envelope {
            kind: "message",
            topic: &self.0.topic,
            id: (!self.0.ephemeral).then_some(self.0.id),
            event: self.0.event.as_ref().map(EventName::as_str),
            from: self.0.sender.as_deref(),
            ts: self.0.timestamp_ms,
            binary: matches!(data, Data::Binary(_)),
            data,
        };
        // Room in front for the WebSocket frame header, filled in by the caller.
        let mut out = vec![0; HEADROOM];
        // Serializing borrowed strings and numbers into a Vec can't fail.
        let _ = serde_json::to_writer(&mut out, &envelope);
        out
    }
}

/// A message's envelope JSON and the same bytes as a WebSocket frame, sharing one buffer.
struct Encoded {
    frame: Bytes,
    json: Bytes,
}

/// The longest WebSocket frame header a server sends (RFC 6455 §5.2: two bytes, and eight
/// more for a 64-bit length; no mask).
const HEADROOM: usize = 10;

/// RFC 6455 §5.2 opcodes.
pub(crate) const WS_TEXT: u8 = 0x1;
pub(crate) const WS_BINARY: u8 = 0x2;

/// The header of a final, unmasked (server-to-client) WebSocket frame of `len` payload bytes,
/// and how many of the ten bytes it takes (RFC 6455 §5.2: the shortest length form).
pub(crate) fn ws_frame_header(opcode: u8, len: usize) -> ([u8; HEADROOM], usize) {
    let mut header = [0u8; HEADROOM];
    header[0] = 0x80 | opcode;
    let used = if let Ok(short) = u8::try_from(len)
        && short < 126
    {
        header[1] = short;
        2
    } else if let Ok(short) = u16::try_from(len) {
        header[1] = 126;
        header[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        header[1] = 127;
        header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    (header, used)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// How deep JSON may nest to travel as JSON: a text payload nested deeper is refused from
/// clients ([`HubError::JsonTooDeep`]) and embedded in envelopes as a plain string. Many JSON
/// parsers give up at a few hundred levels; 64 is far beyond what real data needs.
pub const MAX_JSON_DEPTH: usize = 64;

/// `text` as raw JSON to embed, if it is JSON nested at most [`MAX_JSON_DEPTH`] deep.
fn embeddable_json(text: &str) -> Option<&serde_json::value::RawValue> {
    if json_depth(text) > MAX_JSON_DEPTH {
        return None;
    }
    serde_json::from_str::<&serde_json::value::RawValue>(text).ok()
}

/// The deepest nesting of `[` and `{` in `text` outside strings: an upper bound of its depth
/// as JSON, found without parsing (and without recursion).
pub(crate) fn json_depth(text: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in text.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Whether `payload` is JSON text nested deeper than [`MAX_JSON_DEPTH`].
pub(crate) fn too_deep(payload: &Payload) -> bool {
    payload.as_text().is_some_and(|text| {
        json_depth(text) > MAX_JSON_DEPTH
            && serde_json::from_str::<&serde_json::value::RawValue>(text).is_ok()
    })
}

/// Standard base64 (RFC 4648 alphabet, `=` padding), small enough not to need a dependency.
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let sextet = |shift: u32| char::from(ALPHABET[((n >> shift) & 0x3f) as usize]);
        out.push(sextet(18));
        out.push(sextet(12));
        out.push(if chunk.len() > 1 { sextet(6) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(0) } else { '=' });
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Epoch;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
        assert_eq!(base64(&[0xfb, 0xef]), "++8=");
    }

    #[test]
    fn json_depth_counts_nesting_outside_strings() {
        assert_eq!(json_depth("1"), 0);
        assert_eq!(json_depth(r#"{"a":[1,{"b":2}]}"#), 3);
        assert_eq!(json_depth(r#"["[[[[", "\"[["]"#), 1);
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert!(too_deep(&Payload::text(deep)));
        let ok = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert!(!too_deep(&Payload::text(ok)));
        // Not JSON: plain text full of brackets is just text.
        assert!(!too_deep(&Payload::text("[".repeat(100))));
    }

    #[test]
    fn envelope_embeds_json_and_escapes_text() {
        let topic = Topic::new("room").expect("valid");
        let epoch = Epoch::from_u64(0xab).expect("nonzero");
        let m = Message::new(
            topic.clone(),
            MessageId::new(epoch, 3),
            Publication::new(r#"{"n":1}"#).sender("alice"),
        );
        let v: serde_json::Value = serde_json::from_slice(m.envelope_json()).expect("json");
        assert_eq!(v["data"]["n"], 1);
        assert_eq!(v["id"], "ab-3");
        assert_eq!(v["from"], "alice");
        assert!(v.get("event").is_none());
        let m = Message::new(
            topic,
            MessageId::new(epoch, 4),
            Publication::new("a \"quote\""),
        );
        let v: serde_json::Value = serde_json::from_slice(m.envelope_json()).expect("json");
        assert_eq!(v["data"], "a \"quote\"");
    }
}
