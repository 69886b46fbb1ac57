//! The wire form of a message, as published and kept in the history stream.
//!
//! `<epoch hex>-<offset> <body>`: the id (the Lua script prepends it, as it assigns it), a
//! space, then the body the publishing node encoded. A live-only notice (a presence change:
//! published on the channel, never kept) has `~` in place of the id: `~ <body>`. (Nodes
//! before notices existed drop such a message as undecodable; the body's version is still 2.)
//! The body:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | version (2) |
//! | 1 | flags: 1 text, 2 skip origin, 4 origin, 8 sender, 16 event, 32 tags |
//! | 8 | stamp: random, tells two messages that got the same id apart (a rewound Redis) |
//! | 8 | publishing node (big-endian) |
//! | 8 | origin connection on that node (0 if none) |
//! | 8 | timestamp, ms since the Unix epoch |
//! | 2 + n | topic |
//! | 2 + n | sender, if flagged (cut to 65,535 bytes, at a character boundary) |
//! | 1 + n | event, if flagged |
//! | 1 + tags | tags, if flagged: their count, then each as 1 + n key and 1 + n value |
//! | rest | payload |
//!
//! The stamp sits at a fixed place (bytes 3 to 10 of the body) so that the `STATE` script can
//! compare it without decoding the rest.

use bytes::Bytes;

use crate::hub::{Message, Payload, Publication};
use crate::ids::{ConnectionId, Epoch, EventName, MessageId, Topic};

const VERSION: u8 = 2;
const TEXT: u8 = 1;
const SKIP_ORIGIN: u8 = 2;
const ORIGIN: u8 = 4;
const SENDER: u8 = 8;
const EVENT: u8 = 16;
const TAGS: u8 = 32;

/// A message's stamp: random per publish, so that a message that got an id already used (Redis
/// rewound to an older snapshot) is told apart from the one the nodes hold.
pub(crate) type Stamp = [u8; 8];

/// Encodes what the Lua script needs to prepend an id to; `ts` is the message's timestamp
/// (Unix ms; 0 for a notice, which has none).
pub(crate) fn encode_body(topic: &Topic, p: &Publication, node: u64, ts: u64) -> Vec<u8> {
    let sender = p.sender_id();
    let event = p.event_name().map(EventName::as_str);
    let payload = p.payload();
    let mut flags = 0;
    for (set, flag) in [
        (payload.is_text(), TEXT),
        (p.skips_origin(), SKIP_ORIGIN),
        (p.origin_id().is_some(), ORIGIN),
        (sender.is_some(), SENDER),
        (event.is_some(), EVENT),
        (!p.tags.is_empty(), TAGS),
    ] {
        if set {
            flags |= flag;
        }
    }
    let mut out = Vec::with_capacity(32 + topic.as_str().len() + payload.len());
    out.push(VERSION);
    out.push(flags);
    out.extend_from_slice(&Epoch::random().as_u64().to_be_bytes());
    out.extend_from_slice(&node.to_be_bytes());
    let origin = p.origin_id().map_or(0, ConnectionId::as_u64);
    out.extend_from_slice(&origin.to_be_bytes());
    out.extend_from_slice(&ts.to_be_bytes());
    // Topic names are at most 256 bytes and event names 64; user ids are unbounded, so the
    // sender is cut, but never inside a character (the message would not decode).
    put_u16(&mut out, topic.as_str());
    if let Some(sender) = sender {
        put_u16(&mut out, sender);
    }
    if let Some(event) = event {
        let event = cut(event, usize::from(u8::MAX));
        out.push(u8::try_from(event.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(event.as_bytes());
    }
    if !p.tags.is_empty() {
        // At most 8 tags, keys of at most 32 bytes and values of at most 128: one byte each.
        let tags: Vec<_> = p.tags.iter().collect();
        out.push(u8::try_from(tags.len()).unwrap_or(u8::MAX));
        for (key, value) in tags {
            for text in [key, value] {
                let text = cut(text, usize::from(u8::MAX));
                out.push(u8::try_from(text.len()).unwrap_or(u8::MAX));
                out.extend_from_slice(text.as_bytes());
            }
        }
    }
    out.extend_from_slice(payload.as_bytes());
    out
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    &text[..text.floor_char_boundary(max)]
}

fn put_u16(out: &mut Vec<u8>, text: &str) {
    let text = cut(text, usize::from(u16::MAX));
    let len = u16::try_from(text.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// What arrives on a topic's channel.
pub(crate) enum Incoming {
    /// A message of the log, with its stamp.
    Message(Message, Stamp),
    /// A live-only notice: no id, not in the history.
    Notice(Publication),
}

/// Decodes what arrived on a channel: a message or a live-only notice.
pub(crate) fn decode_incoming(wire: &[u8], this_node: u64) -> Option<Incoming> {
    let space = wire.iter().position(|&b| b == b' ')?;
    if &wire[..space] == b"~" {
        let (_, p, _, _) = decode_body(&wire[space + 1..], this_node)?;
        return Some(Incoming::Notice(p));
    }
    decode(wire, this_node).map(|(m, stamp)| Incoming::Message(m, stamp))
}

/// Decodes a wire message and its stamp.
pub(crate) fn decode(wire: &[u8], this_node: u64) -> Option<(Message, Stamp)> {
    let space = wire.iter().position(|&b| b == b' ')?;
    let id: MessageId = std::str::from_utf8(&wire[..space]).ok()?.parse().ok()?;
    let (topic, p, ts, stamp) = decode_body(&wire[space + 1..], this_node)?;
    Some((Message::remote(topic, id, p, ts), stamp))
}

/// Decodes a body: topic, publication, timestamp, stamp. Origin and skip-origin are kept only
/// for messages this node published: connection ids mean nothing on another node.
fn decode_body(body: &[u8], this_node: u64) -> Option<(Topic, Publication, u64, Stamp)> {
    let mut r = Reader(body);
    if r.take(1)?[0] != VERSION {
        return None;
    }
    let flags = r.take(1)?[0];
    let stamp: Stamp = r.take(8)?.try_into().ok()?;
    let node = r.u64()?;
    let origin = r.u64()?;
    let ts = r.u64()?;
    let topic = Topic::new(std::str::from_utf8(r.sized(2)?).ok()?).ok()?;
    let sender = if flags & SENDER != 0 {
        Some(std::str::from_utf8(r.sized(2)?).ok()?)
    } else {
        None
    };
    let event = if flags & EVENT != 0 {
        Some(EventName::new(std::str::from_utf8(r.sized(1)?).ok()?).ok()?)
    } else {
        None
    };
    let mut tags = Vec::new();
    if flags & TAGS != 0 {
        for _ in 0..r.take(1)?[0] {
            let key = std::str::from_utf8(r.sized(1)?).ok()?;
            let value = std::str::from_utf8(r.sized(1)?).ok()?;
            tags.push((key, value));
        }
    }
    let bytes = Bytes::copy_from_slice(r.0);
    let payload = if flags & TEXT != 0 {
        Payload::text_from_bytes(bytes).ok()?
    } else {
        Payload::binary(bytes)
    };
    let mut p = Publication::new(payload);
    if let Some(event) = event {
        p = p.event_name_checked(event);
    }
    if let Some(sender) = sender {
        p = p.sender(sender);
    }
    for (key, value) in tags {
        p = p.tag(key, value);
    }
    // A tag another node wrote that this one can't take: the message doesn't decode.
    p.check().ok()?;
    if node == this_node && flags & ORIGIN != 0 {
        p = p
            .origin(ConnectionId::from_u64(origin))
            .skip_origin(flags & SKIP_ORIGIN != 0);
    }
    Some((topic, p, ts, stamp))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    fn sized(&mut self, width: usize) -> Option<&'a [u8]> {
        let len = match width {
            1 => usize::from(self.take(1)?[0]),
            _ => usize::from(u16::from_be_bytes(self.take(2)?.try_into().ok()?)),
        };
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(id: &str, body: &[u8]) -> Vec<u8> {
        let mut w = format!("{id} ").into_bytes();
        w.extend_from_slice(body);
        w
    }

    #[test]
    fn round_trips_text_and_binary_and_strips_foreign_origins() {
        let topic = Topic::new("room:1").expect("valid");
        let conn = ConnectionId::next();
        let p = Publication::new("héllo")
            .event("chat")
            .tag("ticker", "AAPL")
            .tag("venue", "X")
            .sender("alice")
            .origin(conn)
            .skip_origin(true);
        let epoch = Epoch::from_u64(0xabc).expect("nonzero");
        let w = wire("abc-7", &encode_body(&topic, &p, 42, 7));
        let (m, stamp) = decode(&w, 42).expect("decodes");
        assert_eq!(decode(&w, 42).map(|(_, s)| s), Some(stamp));
        assert_eq!(m.id(), MessageId::new(epoch, 7));
        assert_eq!(m.topic(), &topic);
        assert_eq!(m.payload().as_text(), Some("héllo"));
        assert_eq!(m.event().map(EventName::as_str), Some("chat"));
        let tags: Vec<_> = m.tags().collect();
        assert_eq!(tags, [("ticker", "AAPL"), ("venue", "X")]);
        assert_eq!(m.sender(), Some("alice"));
        assert_eq!(m.origin(), Some(conn));
        assert!(!m.is_for(conn));
        let (other, _) = decode(&w, 43).expect("decodes");
        assert_eq!(other.origin(), None);
        assert!(other.is_for(conn));

        let bin = Publication::new(vec![0u8, 255, b' ']);
        let (m, _) = decode(&wire("abc-8", &encode_body(&topic, &bin, 1, 7)), 1).expect("decodes");
        assert_eq!(m.payload().as_bytes(), &[0, 255, b' ']);
        assert!(!m.payload().is_text());
        assert!(decode(b"abc-8", 1).is_none());
        assert!(decode(b"abc-8 \x02", 1).is_none());
    }

    #[test]
    fn a_long_sender_id_is_cut_at_a_character_boundary() {
        let topic = Topic::new("t").expect("valid");
        // 'é' is 2 bytes, '€' 3: at 65,533 or 65,534 bytes of ASCII they straddle the limit.
        for fill in [65_533, 65_534, 65_535] {
            for tail in ["é", "€", "a"] {
                let user = format!("{}{tail}", "a".repeat(fill));
                let p = Publication::new("x").sender(user.as_str());
                let (m, _) = decode(&wire("abc-1", &encode_body(&topic, &p, 1, 7)), 1)
                    .unwrap_or_else(|| panic!("{fill} + {tail:?} decodes"));
                let sender = m.sender().expect("a sender");
                assert!(sender.len() <= usize::from(u16::MAX));
                assert!(user.starts_with(sender));
                assert!(sender.len() >= fill.min(usize::from(u16::MAX)));
            }
        }
    }

    #[test]
    fn a_notice_has_no_id_and_decodes_apart_from_messages() {
        let topic = Topic::new("room").expect("valid");
        let p = Publication::new("{}").event("presence.join");
        let body = encode_body(&topic, &p, 1, 7);
        let Some(Incoming::Notice(n)) = decode_incoming(&wire("~", &body), 2) else {
            panic!("a notice");
        };
        assert_eq!(n.event_name().map(EventName::as_str), Some("presence.join"));
        assert!(decode(&wire("~", &body), 2).is_none());
        assert!(matches!(
            decode_incoming(&wire("abc-3", &body), 2),
            Some(Incoming::Message(m, _)) if m.id().offset() == 3
        ));
        assert!(decode_incoming(b"~ \x09", 2).is_none());
    }

    #[test]
    fn stamps_differ_and_sit_where_the_script_reads_them() {
        let topic = Topic::new("t").expect("valid");
        let body = encode_body(&topic, &Publication::new("x"), 1, 7);
        let again = encode_body(&topic, &Publication::new("x"), 1, 7);
        assert_ne!(body[2..10], again[2..10]);
        let (_, stamp) = decode(&wire("abc-1", &body), 1).expect("decodes");
        assert_eq!(stamp, body[2..10]);
    }
}
