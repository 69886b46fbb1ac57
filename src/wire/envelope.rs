//! The JSON envelope: a delivery as one JSON object, the form the WebSocket endpoint sends
//! (envelope framing) and the SSE endpoint uses for its notices. A message's envelope is
//! encoded once, inside its WebSocket frame ([`ENVELOPE_FRAME`](super::ENVELOPE_FRAME)).

use bytes::Bytes;
use serde::Serialize;

use super::base64;
use super::frame::{HEADROOM, TEXT, header, header_len};
use crate::hub::inbound::json_depth;
use crate::hub::{Delivery, MAX_JSON_DEPTH, Member, Message, ResetReason};
use crate::ids::{EventName, MessageId, Topic};

impl Message {
    /// The message as one JSON object, encoded once and shared by every connection that sends it:
    ///
    /// ```json
    /// {"type":"message","topic":"lobby","id":"3f9a0c1de2b47781-7","event":"chat",
    ///  "from":"alice","ts":1764277200000,"data":"hello"}
    /// ```
    ///
    /// `event` and `from` are left out when absent, and so is `id` for an
    /// [ephemeral](Self::is_ephemeral) notice. A text payload that is itself JSON (nested at most
    /// [`MAX_JSON_DEPTH`](crate::hub::MAX_JSON_DEPTH) deep) is embedded as is; other text becomes a
    /// JSON string; binary becomes a standard base64 string with `"binary":true` beside it.
    /// Cloning the result is a reference count: the bytes are the tail of the cached frame.
    ///
    /// ```
    /// use futures_util::StreamExt;
    /// use salvo_realtime::{Delivery, Position, PubSub};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hub = PubSub::new();
    /// let mut sub = hub.subscribe("lobby", Position::Live).await?;
    /// hub.publish("lobby", r#"{"text":"hi"}"#).await?;
    /// let Some(Delivery::Message(m)) = sub.next().await else {
    ///     return Err("no message".into());
    /// };
    /// let envelope: serde_json::Value = serde_json::from_slice(&m.envelope_json())?;
    /// assert_eq!(envelope["data"]["text"], "hi");
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn envelope_json(&self) -> Bytes {
        let frame = self.envelope_frame();
        frame.slice(header_len(frame)..)
    }

    /// The envelope as one final, unmasked WebSocket text frame (what a server sends): the
    /// frame header and then [`envelope_json`](Self::envelope_json), in one allocation.
    pub(crate) fn envelope_frame(&self) -> &Bytes {
        self.encoded(super::ENVELOPE_FRAME, |m| {
            let mut out = encode_envelope(m);
            let len = out.len() - HEADROOM;
            let (bytes, used) = header(TEXT, len);
            out[HEADROOM - used..HEADROOM].copy_from_slice(&bytes[..used]);
            Bytes::from(out).slice(HEADROOM - used..)
        })
    }
}

impl Delivery {
    /// The delivery as one JSON object, the form the WebSocket adapter sends. A message gives
    /// [`Message::envelope_json`]; the others give
    /// `{"type":"lagged","topic":..,"missed":..}`, `{"type":"reset","topic":..,"requested":..,
    /// "epoch":..,"replay_after":..,"reason":..}` and `{"type":"presence","topic":..,"members":[{"user":..,
    /// "connections":..,"data":..}],"more":false,"count":..}`.
    #[must_use]
    pub fn envelope_json(&self) -> Bytes {
        #[derive(Serialize)]
        #[serde(tag = "type", rename_all = "lowercase")]
        enum Notice<'a> {
            Lagged {
                topic: &'a Topic,
                missed: u64,
            },
            Reset {
                topic: &'a Topic,
                requested: Option<MessageId>,
                epoch: String,
                replay_after: MessageId,
                reason: ResetReason,
            },
            Presence {
                topic: &'a Topic,
                members: &'a [Member],
                more: bool,
                count: usize,
            },
        }
        let notice = match self {
            Self::Message(m) => return m.envelope_json(),
            Self::Lagged { topic, missed } => Notice::Lagged {
                topic,
                missed: *missed,
            },
            Self::Reset(r) => Notice::Reset {
                topic: &r.topic,
                requested: r.requested,
                epoch: format!("{:x}", r.epoch.as_u64()),
                replay_after: r.replay_after,
                reason: r.reason,
            },
            Self::Presence(p) => Notice::Presence {
                topic: &p.room,
                members: &p.members,
                more: p.more,
                count: p.count,
            },
        };
        // Plain strings and numbers always encode.
        Bytes::from(serde_json::to_vec(&notice).unwrap_or_default())
    }
}

/// The envelope of `m`, after [`HEADROOM`] bytes left for the frame header.
fn encode_envelope(m: &Message) -> Vec<u8> {
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
        #[serde(skip_serializing_if = "Tagged::is_empty")]
        tags: Tagged<'a>,
        data: Data<'a>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        binary: bool,
    }
    /// The tags as a JSON object, in the order they were set.
    struct Tagged<'a>(&'a crate::hub::filter::Tags);
    impl Tagged<'_> {
        fn is_empty(&self) -> bool {
            self.0.is_empty()
        }
    }
    impl Serialize for Tagged<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_map(self.0.iter())
        }
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
    let payload = m.payload();
    let data = match payload.as_text() {
        Some(text) => match embeddable_json(text) {
            Some(raw) => Data::Raw(raw),
            None => Data::Text(text),
        },
        None => Data::Binary(base64(payload.as_bytes())),
    };
    let envelope = Envelope {
        kind: "message",
        topic: m.topic(),
        id: (!m.is_ephemeral()).then_some(m.id()),
        event: m.event().map(EventName::as_str),
        from: m.sender(),
        ts: m.timestamp_ms(),
        tags: Tagged(m.tag_set()),
        binary: matches!(data, Data::Binary(_)),
        data,
    };
    // Room in front for the WebSocket frame header, filled in by the caller.
    let mut out = vec![0; HEADROOM];
    // Serializing borrowed strings and numbers into a Vec can't fail.
    let _ = serde_json::to_writer(&mut out, &envelope);
    out
}

/// `text` as raw JSON to embed, if it is JSON nested at most [`MAX_JSON_DEPTH`] deep.
fn embeddable_json(text: &str) -> Option<&serde_json::value::RawValue> {
    if json_depth(text) > MAX_JSON_DEPTH {
        return None;
    }
    serde_json::from_str::<&serde_json::value::RawValue>(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Publication;
    use crate::ids::Epoch;

    #[test]
    fn envelope_embeds_json_and_escapes_text() {
        let topic = Topic::new("room").expect("valid");
        let epoch = Epoch::from_u64(0xab).expect("nonzero");
        let m = Message::new(
            topic.clone(),
            MessageId::new(epoch, 3),
            Publication::new(r#"{"n":1}"#).sender("alice"),
        );
        let v: serde_json::Value = serde_json::from_slice(&m.envelope_json()).expect("json");
        assert_eq!(v["data"]["n"], 1);
        assert_eq!(v["id"], "ab-3");
        assert_eq!(v["from"], "alice");
        assert!(v.get("event").is_none());
        let m = Message::new(
            topic,
            MessageId::new(epoch, 4),
            Publication::new("a \"quote\""),
        );
        let v: serde_json::Value = serde_json::from_slice(&m.envelope_json()).expect("json");
        assert_eq!(v["data"], "a \"quote\"");
        assert!(v.get("tags").is_none(), "no tags, no field");
    }

    #[test]
    fn tags_travel_in_the_envelope() {
        let topic = Topic::new("prices").expect("valid");
        let epoch = Epoch::from_u64(0xab).expect("nonzero");
        let p = Publication::new("1")
            .tag("ticker", "AAPL")
            .tag("venue", "X");
        let m = Message::new(topic, MessageId::new(epoch, 1), p);
        let v: serde_json::Value = serde_json::from_slice(&m.envelope_json()).expect("json");
        assert_eq!(
            v["tags"],
            serde_json::json!({"ticker": "AAPL", "venue": "X"})
        );
    }
}
