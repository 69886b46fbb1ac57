//! What handlers are given: [`Inbound`] (a message, its data typed as the handler asks) and
//! [`SubscribeRequest`], and how a message's text becomes the handler's type.

use serde::Deserializer;
use serde::de::{DeserializeOwned, Visitor};
use serde_json::Value;

use super::INVALID_DATA;
use crate::error::Refused;
use crate::hub::Payload;
use crate::ids::{EventName, Topic};

/// What an [`authorize`](super::Channels::authorize) rule decides on: the topic and what the
/// client sent with its request.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SubscribeRequest {
    /// The topic asked for.
    pub topic: Topic,
    /// The part of the topic the pattern's `*` matched (`"42"` for `room:42` under
    /// `room:*`); empty for an exact pattern.
    pub wildcard: String,
    /// The `data` of the client's `subscribe` command (`Null` if none, and for topics asked
    /// for at connect time).
    pub data: Value,
}

/// A message a connection publishes, as a publish handler sees it: `data` typed as the
/// handler asks. The type decides how the text is read: a `String` gets the text exactly as
/// sent (`42`, `null`, `{"a":1}` and `"quoted"` stay those characters), any other type reads it
/// as JSON (text that isn't JSON reads as a JSON string). Data that doesn't fit the type is
/// refused with `invalid_data`, and so is binary data.
///
/// ```
/// use salvo_realtime::channel::{Channels, Inbound};
/// use salvo_realtime::Rooms;
///
/// // Chat text as typed, whatever it looks like.
/// let channels = Channels::new(Rooms::new())
///     .allow("room:*")
///     .on_publish("room:*", |_ctx, msg: Inbound<String>| async move {
///         Ok(msg.data.trim().to_owned())
///     });
/// # drop(channels);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Inbound<T> {
    /// The topic it goes to.
    pub topic: Topic,
    /// Its event name, if the client gave one (kept on what is published).
    pub event: Option<EventName>,
    /// Its data.
    pub data: T,
    /// When the server received it, in ms since the Unix epoch (the server's clock: stamp
    /// messages with it, not with a time the client sent).
    pub received_ms: u64,
}

impl<T> Inbound<T> {
    pub(crate) fn map<U>(self, data: U) -> Inbound<U> {
        Inbound {
            topic: self.topic,
            event: self.event,
            data,
            received_ms: self.received_ms,
        }
    }
}

/// `payload` as a handler's `T`; see [`Inbound`].
pub(crate) fn decode<T: DeserializeOwned>(payload: &Payload) -> Result<T, Refused> {
    let Some(text) = payload.as_text() else {
        return Err(Refused::new(
            INVALID_DATA,
            "a publish handler takes text, not binary",
        ));
    };
    T::deserialize(Text(text)).map_err(|e| invalid_data(&e))
}

pub(crate) fn invalid_data(e: &serde_json::Error) -> Refused {
    Refused::new(INVALID_DATA, format!("data doesn't fit: {e}"))
}

/// A message's text, read as the type asks: a string as the text itself, anything else as
/// JSON (or, text that isn't JSON, as a JSON string).
struct Text<'a>(&'a str);

impl Text<'_> {
    fn json(&self) -> Value {
        serde_json::from_str(self.0).unwrap_or_else(|_| Value::String(self.0.to_owned()))
    }
}

macro_rules! forward_to_json {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            self.json().$method(visitor)
        }
    )*};
}

impl<'de> Deserializer<'de> for Text<'_> {
    type Error = serde_json::Error;

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_str(self.0)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_str(self.0)
    }

    forward_to_json! {
        deserialize_any deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32
        deserialize_i64 deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32
        deserialize_u64 deserialize_u128 deserialize_f32 deserialize_f64 deserialize_char
        deserialize_bytes deserialize_byte_buf deserialize_option deserialize_unit
        deserialize_seq deserialize_map deserialize_identifier deserialize_ignored_any
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.json().deserialize_unit_struct(name, visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        // A newtype over a string (`struct Text(String)`) reads the text as sent too.
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.json().deserialize_tuple(len, visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.json().deserialize_tuple_struct(name, len, visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.json().deserialize_struct(name, fields, visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.json().deserialize_enum(name, variants, visitor)
    }
}

/// Any `T` from a JSON value (the `data` of a `call`), as [`Deserialize`] reads it.
pub(crate) fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, Refused> {
    T::deserialize(value).map_err(|e| invalid_data(&e))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[test]
    fn a_string_gets_the_text_exactly_as_sent() {
        for text in [
            "42",
            "true",
            "null",
            r#"{"a":1}"#,
            r#""quoted""#,
            "plain words",
            "",
        ] {
            let got: String = decode(&Payload::text(text)).expect(text);
            assert_eq!(got, text);
        }
    }

    #[test]
    fn other_types_read_json_and_plain_text_as_a_string() {
        #[derive(Deserialize, Debug, PartialEq)]
        struct Said {
            text: String,
        }
        let said: Said = decode(&Payload::text(r#"{"text":"hi"}"#)).expect("struct");
        assert_eq!(said.text, "hi");
        assert_eq!(decode::<i64>(&Payload::text("42")).expect("number"), 42);
        assert_eq!(
            decode::<Value>(&Payload::text("plain words")).expect("value"),
            Value::from("plain words")
        );
        assert_eq!(
            decode::<Value>(&Payload::text(r#"{"a":1}"#)).expect("value"),
            serde_json::json!({"a": 1})
        );
        assert_eq!(
            decode::<Option<u8>>(&Payload::text("null")).expect("none"),
            None
        );
        #[derive(Deserialize, Debug, PartialEq)]
        struct Line(String);
        assert_eq!(
            decode::<Line>(&Payload::text("7")).expect("newtype"),
            Line("7".into())
        );
    }

    #[test]
    fn data_that_does_not_fit_or_binary_is_invalid_data() {
        let e = decode::<i64>(&Payload::text("words")).expect_err("not a number");
        assert_eq!(e.code(), "invalid_data");
        let e = decode::<String>(&Payload::binary(vec![1u8, 2])).expect_err("binary");
        assert_eq!(e.code(), "invalid_data");
    }
}
