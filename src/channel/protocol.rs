//! The channel protocol's frames: parsing client commands, encoding replies. The protocol's
//! specification, for client authors, is `PROTOCOL.md` at the repository root (its tables are
//! checked against this code by the tests below); the `ws` module docs summarize it.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::error::HubError;
use crate::hub::inbound::{MAX_JSON_DEPTH, json_depth};
use crate::hub::{Filter, Payload, Position};
use crate::ids::{EventName, MessageId, Topic};

/// The `Sec-WebSocket-Protocol` name of version 1.
pub(crate) const SUBPROTOCOL: &str = "salvo-realtime.v1";

/// Longest `ref` accepted, as JSON text.
const MAX_REF: usize = 64;
/// Most messages a `recent` may ask for.
const MAX_RECENT: usize = 1_000;
/// Longest `token` a `refresh` may carry.
const MAX_TOKEN: usize = 8 * 1024;

/// Every code the channel protocol's own layer answers with: [`parse`] refusing a frame, and
/// the `ws` endpoint refusing a binary frame (`bad_frame`), a `ref` still in flight
/// (`duplicate_ref`) or a frame over the rate limit (`rate_limited`). With the hub's codes
/// (`HubError::CODES`) and `Channels`' (`channel::CODES`), the one list the `ws` module docs'
/// table of codes (`error::tests`) and PROTOCOL.md's (`tests` below) are checked against.
#[cfg(test)]
pub(crate) const CODES: &[&str] = &[
    "bad_frame",
    "missing_ref",
    "json_too_deep",
    "unknown_command",
    "invalid_topic",
    "invalid_event",
    "invalid_data",
    "invalid_filter",
    "unknown_method",
    "duplicate_ref",
    "rate_limited",
    "unauthorized",
];

/// A client command with the `ref` its reply echoes.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) reference: Value,
    pub(crate) command: Command,
}

impl Request {
    /// The `ref` as text, to tell commands in flight apart.
    pub(crate) fn key(&self) -> String {
        self.reference.to_string()
    }
}

#[derive(Debug)]
pub(crate) enum Command {
    Subscribe {
        topic: Topic,
        from: Position,
        data: Option<Value>,
        filter: Option<Filter>,
    },
    Unsubscribe {
        topic: Topic,
    },
    Publish {
        topic: Topic,
        event: Option<EventName>,
        payload: Payload,
        echo: bool,
    },
    Call {
        method: String,
        data: Value,
    },
    /// Renews the connection's identity with a fresh token (handled by the endpoint).
    Refresh {
        token: String,
    },
}

impl Command {
    /// Calls run concurrently; the other commands one at a time, in order.
    pub(crate) fn is_call(&self) -> bool {
        matches!(self, Self::Call { .. })
    }
}

/// A frame that isn't a valid command: answered with its code, as a reply when its `ref` could
/// be read, else as an `error` frame.
#[derive(Debug)]
pub(crate) struct Invalid {
    pub(crate) reference: Option<Value>,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

fn invalid(reference: Option<&Value>, code: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        reference: reference.cloned(),
        code,
        message: message.into(),
    }
}

/// Parses one text frame as a command.
pub(crate) fn parse(text: &str) -> Result<Request, Invalid> {
    if json_depth(text) > MAX_JSON_DEPTH {
        // Its `ref` is still answered when it can be read (only the `ref` is built).
        let reference = reference(text);
        return Err(invalid(
            reference.as_ref(),
            "json_too_deep",
            "the frame nests too deep",
        ));
    }
    let Ok(Value::Object(mut frame)) = serde_json::from_str::<Value>(text) else {
        return Err(invalid(None, "bad_frame", "a command is a JSON object"));
    };
    let reference = match frame.remove("ref") {
        Some(r) => valid_ref(r).ok_or_else(|| {
            invalid(
                None,
                "missing_ref",
                "`ref` must be a string of at most 62 characters or a number",
            )
        })?,
        None => return Err(invalid(None, "missing_ref", "every command needs a `ref`")),
    };
    let r = Some(&reference);
    let kind = frame
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let topic = || -> Result<Topic, Invalid> {
        let name = frame
            .get("topic")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(r, "invalid_topic", "`topic` is missing"))?;
        Topic::new(name).map_err(|e| invalid(r, "invalid_topic", e.to_string()))
    };
    let command = match kind {
        "subscribe" => Command::Subscribe {
            topic: topic()?,
            from: start(&frame, r)?,
            data: frame.get("data").cloned(),
            filter: filter(&frame, r)?,
        },
        "unsubscribe" => Command::Unsubscribe { topic: topic()? },
        "publish" => Command::Publish {
            topic: topic()?,
            event: event(&frame, r)?,
            payload: data(&frame, r)?,
            echo: frame.get("echo").and_then(Value::as_bool).unwrap_or(true),
        },
        "call" => call(&mut frame, r)?,
        "refresh" => refresh(&frame, r)?,
        other => {
            return Err(invalid(
                r,
                "unknown_command",
                format!("unknown command type {other:?}"),
            ));
        }
    };
    Ok(Request { reference, command })
}

/// A `subscribe`'s `filter`: absent or `null` for none.
fn filter(
    frame: &serde_json::Map<String, Value>,
    r: Option<&Value>,
) -> Result<Option<Filter>, Invalid> {
    match frame.get("filter") {
        None | Some(Value::Null) => Ok(None),
        Some(f) => Filter::from_json(f)
            .map(Some)
            .map_err(|e| invalid(r, "invalid_filter", e.to_string())),
    }
}

/// A `call`: its method (1 to 128 bytes) and data (`null` if none).
fn call(frame: &mut serde_json::Map<String, Value>, r: Option<&Value>) -> Result<Command, Invalid> {
    let method = frame
        .get("method")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty() && m.len() <= 128)
        .ok_or_else(|| invalid(r, "unknown_method", "`method` is missing"))?
        .to_owned();
    Ok(Command::Call {
        method,
        data: frame.remove("data").unwrap_or(Value::Null),
    })
}

/// A `refresh`: its token, 1 to [`MAX_TOKEN`] bytes.
fn refresh(frame: &serde_json::Map<String, Value>, r: Option<&Value>) -> Result<Command, Invalid> {
    let token = frame
        .get("token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty() && t.len() <= MAX_TOKEN)
        .ok_or_else(|| {
            invalid(
                r,
                "invalid_data",
                "`token` must be a string of 1 to 8,192 bytes",
            )
        })?;
    Ok(Command::Refresh {
        token: token.to_owned(),
    })
}

/// Where a `subscribe` starts: after `last` (an unreadable id is [`Position::Invalid`], reset
/// later), else the `recent` last messages (at most [`MAX_RECENT`]), else live.
fn start(frame: &serde_json::Map<String, Value>, r: Option<&Value>) -> Result<Position, Invalid> {
    Ok(match (frame.get("last"), frame.get("recent")) {
        (Some(Value::String(last)), _) if !last.is_empty() => last
            .parse::<MessageId>()
            .map_or(Position::Invalid, Position::After),
        (_, Some(n)) => match n.as_u64() {
            Some(n) => Position::Recent(usize::try_from(n).unwrap_or(MAX_RECENT).min(MAX_RECENT)),
            None => return Err(invalid(r, "bad_frame", "`recent` must be a number")),
        },
        _ => Position::Live,
    })
}

/// A `publish`'s event name: absent or `null` for none, else a valid name.
fn event(
    frame: &serde_json::Map<String, Value>,
    r: Option<&Value>,
) -> Result<Option<EventName>, Invalid> {
    match frame.get("event") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(name)) if is_reserved(name) => Err(invalid(
            r,
            "invalid_event",
            "`presence.` event names are the server's",
        )),
        Some(Value::String(name)) => EventName::new(name)
            .map(Some)
            .map_err(|e| invalid(r, "invalid_event", e.to_string())),
        Some(_) => Err(invalid(r, "invalid_event", "`event` must be a string")),
    }
}

/// Event names only the server sends (presence notices): a client's message can't pass for
/// one.
fn is_reserved(event: &str) -> bool {
    event.starts_with("presence.")
}

/// A `publish`'s data: a string as its text, any other JSON value as its JSON text.
fn data(frame: &serde_json::Map<String, Value>, r: Option<&Value>) -> Result<Payload, Invalid> {
    match frame.get("data") {
        None => Err(invalid(r, "invalid_data", "`data` is missing")),
        Some(Value::String(text)) => Ok(Payload::text(text.clone())),
        Some(other) => Ok(Payload::text(other.to_string())),
    }
}

/// A plain client's event frame, `{"event":"<name>","data":<JSON>}` (exactly those fields,
/// `event` a string), as the message it stands for; `None` for any other text. A bad event
/// name is kept on the publication, which refuses it when published (`invalid_event`).
pub(crate) fn event_frame(text: &str) -> Option<crate::hub::Publication> {
    if !text.trim_start().starts_with('{') || json_depth(text) > MAX_JSON_DEPTH {
        return None;
    }
    let Ok(Value::Object(frame)) = serde_json::from_str::<Value>(text) else {
        return None;
    };
    let (Some(Value::String(event)), Some(data), 2) =
        (frame.get("event"), frame.get("data"), frame.len())
    else {
        return None;
    };
    let payload = match data {
        Value::String(text) => Payload::text(text.clone()),
        other => Payload::text(other.to_string()),
    };
    // A reserved name is made invalid, so the publish refuses it (`invalid_event`).
    let event = if is_reserved(event) { "" } else { event };
    Some(crate::hub::Publication::new(payload).event(event))
}

/// `reference` if it is a valid `ref`: a string of at most 62 characters, or a number.
fn valid_ref(reference: Value) -> Option<Value> {
    match &reference {
        Value::String(_) if reference.to_string().len() <= MAX_REF => Some(reference),
        Value::Number(_) => Some(reference),
        _ => None,
    }
}

/// The `ref` of a frame that won't be run (the rate limit dropped it), so that its one reply
/// can carry it; `None` if the frame has no valid `ref` or isn't a JSON object. Reads only the
/// `ref`: the rest of the frame is checked as JSON but nothing of it is built.
pub(crate) fn reference(text: &str) -> Option<Value> {
    #[derive(Deserialize)]
    struct Ref<'a> {
        #[serde(rename = "ref", borrow)]
        reference: Option<&'a RawValue>,
    }
    // A struct deserializes from an array too; a command is an object.
    if !text.trim_start().starts_with('{') {
        return None;
    }
    let frame: Ref<'_> = serde_json::from_str(text).ok()?;
    // Only a string or a number can be a ref: an object or an array isn't built to find out.
    let raw = frame.reference.filter(|raw| {
        raw.get()
            .starts_with(|c: char| c == '"' || c == '-' || c.is_ascii_digit())
    })?;
    valid_ref(serde_json::from_str(raw.get()).ok()?)
}

/// `{"type":"reply","ref":..,"status":"ok","data":..}`.
pub(crate) fn ok(reference: &Value, data: &Value) -> String {
    json!({ "type": "reply", "ref": reference, "status": "ok", "data": data }).to_string()
}

/// `{"type":"reply","ref":..,"status":"error","error":{"code":..,"message":..}}`, or an
/// `error` frame with the same `error` object, `{"type":"error","error":{"code":..,"message":..}}`,
/// when there is no `ref` to answer.
pub(crate) fn error(reference: Option<&Value>, code: &str, message: &str) -> String {
    match reference {
        Some(reference) => json!({
            "type": "reply",
            "ref": reference,
            "status": "error",
            "error": { "code": code, "message": message },
        })
        .to_string(),
        None => {
            json!({ "type": "error", "error": { "code": code, "message": message } }).to_string()
        }
    }
}

/// The `data` of a `subscribe`'s `ok` reply: `{"topic":..}`, with the join reply as `reply`
/// when the authorization rule gave one.
pub(crate) fn subscribed(topic: &Topic, reply: Option<Value>) -> Value {
    let mut data = json!({ "topic": topic });
    if let Some(reply) = reply {
        data["reply"] = reply;
    }
    data
}

/// The `data` of a `publish`'s `ok` reply: `{"id":..}` when it was published to its topic,
/// `"reply"` when a handler answered; `{}` when neither (a handler's `noreply`).
pub(crate) fn published(done: crate::hub::Published) -> Value {
    let mut data = json!({});
    if let Some(id) = done.id {
        data["id"] = json!(id);
    }
    if let Some(reply) = done.reply {
        data["reply"] = reply;
    }
    data
}

/// The code and message a command's hub error is answered with; a backend's own text stays in
/// the log.
pub(crate) fn hub_error(e: &HubError) -> (String, String) {
    (e.code().to_owned(), e.public_message())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::hub::{Delivery, Member, Message, Presence, Publication, Reset, ResetReason};
    use crate::ids::Epoch;

    #[test]
    fn commands_parse_with_their_fields() {
        let r = parse(r#"{"type":"subscribe","ref":1,"topic":"room:1","recent":20}"#).expect("ok");
        assert!(matches!(
            r.command,
            Command::Subscribe {
                from: Position::Recent(20),
                ..
            }
        ));
        let r = parse(r#"{"type":"subscribe","ref":"a","topic":"t","last":"zz"}"#).expect("ok");
        assert!(matches!(
            r.command,
            Command::Subscribe {
                from: Position::Invalid,
                ..
            }
        ));
        let r = parse(r#"{"type":"publish","ref":2,"topic":"t","data":{"x":1},"echo":false}"#)
            .expect("ok");
        match r.command {
            Command::Publish { payload, echo, .. } => {
                assert_eq!((payload.as_text(), echo), (Some(r#"{"x":1}"#), false));
            }
            other => panic!("{other:?}"),
        }
        let r = parse(r#"{"type":"call","ref":3,"method":"add","data":[1,2]}"#).expect("ok");
        assert!(r.command.is_call());
        for (frame, code) in [
            ("nope", "bad_frame"),
            ("[1]", "bad_frame"),
            (r#"{"type":"call","method":"m"}"#, "missing_ref"),
            (
                r#"{"type":"call","ref":{"a":1},"method":"m"}"#,
                "missing_ref",
            ),
            (r#"{"type":"jump","ref":1}"#, "unknown_command"),
            (r#"{"type":"subscribe","ref":1}"#, "invalid_topic"),
            (
                r#"{"type":"subscribe","ref":1,"topic":""}"#,
                "invalid_topic",
            ),
            (r#"{"type":"publish","ref":1,"topic":"t"}"#, "invalid_data"),
            (r#"{"type":"call","ref":1}"#, "unknown_method"),
        ] {
            assert_eq!(
                parse(frame).map(|_| ()).expect_err(frame).code,
                code,
                "{frame}"
            );
        }
    }

    #[test]
    fn clients_cant_use_presence_event_names_and_deep_frames_keep_their_ref() {
        let spoof = r#"{"type":"publish","ref":1,"topic":"t","event":"presence.join","data":{}}"#;
        let e = parse(spoof).map(|_| ()).expect_err("reserved");
        assert_eq!(
            (e.code, e.reference),
            ("invalid_event", Some(Value::from(1)))
        );
        let frame = event_frame(r#"{"event":"presence.leave","data":1}"#).expect("an event frame");
        assert!(frame.check().is_err(), "refused when published");
        assert!(event_frame(r#"{"event":"move","data":[1,0]}"#).is_some_and(|p| p.check().is_ok()));
        assert!(
            event_frame(r#"{"event":"move","data":1,"x":2}"#).is_none(),
            "exactly two fields"
        );
        assert!(event_frame("plain words").is_none());
        let deep = format!(
            r#"{{"type":"publish","ref":"d","topic":"t","data":{}1{}}}"#,
            "[".repeat(70),
            "]".repeat(70)
        );
        let e = parse(&deep).map(|_| ()).expect_err("too deep");
        assert_eq!(
            (e.code, e.reference),
            ("json_too_deep", Some(Value::from("d")))
        );
    }

    #[test]
    fn the_ref_alone_is_read_from_a_frame_that_wont_run() {
        assert_eq!(
            reference(r#"{"type":"subscribe","ref":7,"topic":"t"}"#),
            Some(Value::from(7))
        );
        assert_eq!(
            reference(r#"{"data":{"deep":[1,2]},"ref":"a-1","type":"nope"}"#),
            Some(Value::from("a-1"))
        );
        for unreadable in [
            r#"{"type":"subscribe"}"#,
            r#"{"ref":{"a":1}}"#,
            r#"{"ref":null}"#,
            r#"{"ref":[1]}"#,
            "[1]",
            "{not json",
        ] {
            assert_eq!(reference(unreadable), None, "{unreadable}");
        }
        let long = format!(r#"{{"ref":"{}"}}"#, "x".repeat(63));
        assert_eq!(reference(&long), None, "longer than 62 characters");
        let longest = format!(r#"{{"ref":"{}"}}"#, "x".repeat(62));
        assert!(reference(&longest).is_some());
    }

    proptest! {
        // The ref read alone is the one a full parse reads.
        #[test]
        fn the_ref_read_alone_is_the_parsed_one(text in ".{0,200}") {
            if let Ok(request) = parse(&text) {
                prop_assert_eq!(reference(&text), Some(request.reference));
            }
        }

        // Any text: a command or a coded refusal, never a panic; a readable ref is kept.
        #[test]
        fn any_frame_parses_or_is_refused_with_a_code(text in ".{0,200}") {
            match parse(&text) {
                Ok(req) => prop_assert!(!req.key().is_empty()),
                Err(e) => prop_assert!(!e.code.is_empty()),
            }
        }

        #[test]
        fn any_command_shape_parses_or_is_refused(
            kind in "(subscribe|unsubscribe|publish|call|other)",
            reference in proptest::option::of(0u32..10),
            topic in proptest::option::of(".{0,10}"),
            data in proptest::option::of(".{0,10}"),
        ) {
            let mut frame = serde_json::Map::new();
            frame.insert("type".into(), kind.clone().into());
            if let Some(r) = reference { frame.insert("ref".into(), r.into()); }
            if let Some(t) = topic { frame.insert("topic".into(), t.into()); }
            if let Some(d) = data { frame.insert("data".into(), d.into()); }
            frame.insert("method".into(), "m".into());
            let text = Value::Object(frame).to_string();
            match parse(&text) {
                Ok(req) => prop_assert_eq!(reference.map(Value::from), Some(req.reference)),
                Err(e) if reference.is_none() => prop_assert_eq!(e.code, "missing_ref"),
                Err(e) => prop_assert_eq!(e.reference, reference.map(Value::from)),
            }
        }
    }

    /// The specification client authors implement from (repository root).
    const SPEC: &str = include_str!("../../PROTOCOL.md");

    /// The backticked names in the first column of PROTOCOL.md's table whose header row is
    /// `header`.
    fn first_column(header: &str) -> BTreeSet<String> {
        let rows: Vec<&str> = SPEC
            .lines()
            .skip_while(|l| l.trim() != header)
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .collect();
        assert!(!rows.is_empty(), "PROTOCOL.md has no table {header:?}");
        rows.iter()
            .filter_map(|row| row.split('|').nth(1))
            .flat_map(|cell| cell.split('`').skip(1).step_by(2))
            .filter(|w| {
                !w.is_empty()
                    && w.bytes()
                        .all(|b| b.is_ascii_lowercase() || matches!(b, b'_' | b'.' | b'$'))
            })
            .map(str::to_owned)
            .collect()
    }

    /// The row of PROTOCOL.md whose first cell is `first`.
    fn row(first: &str) -> &'static str {
        let start = format!("| {first} |");
        SPEC.lines()
            .find(|l| l.starts_with(&start))
            .unwrap_or_else(|| panic!("PROTOCOL.md has no row {start:?}"))
    }

    /// The string literals `source` passes right after each `marker`.
    fn literals_after(source: &str, marker: &str) -> BTreeSet<String> {
        source
            .match_indices(marker)
            .filter_map(|(at, _)| {
                let rest = source[at + marker.len()..].strip_prefix('"')?;
                rest.split_once('"').map(|(lit, _)| lit.to_owned())
            })
            .collect()
    }

    fn owned(lists: &[&[&str]]) -> BTreeSet<String> {
        lists
            .iter()
            .flat_map(|l| l.iter().map(|c| (*c).to_owned()))
            .collect()
    }

    // Every code the server can answer (the protocol's, `Channels`', the hub's: the lists
    // `error::tests` checks the producing calls against) has a row in PROTOCOL.md's table of
    // codes, and every row is a code the server can answer.
    #[test]
    fn protocol_md_lists_exactly_the_error_codes() {
        let emitted = owned(&[CODES, crate::channel::CODES, HubError::CODES]);
        let documented = first_column("| code | when | what a client should do |");
        assert_eq!(documented, emitted, "PROTOCOL.md's table of error codes");
    }

    // The command types `parse` accepts, read from its `match`, are the rows of PROTOCOL.md's
    // table of commands; each documented type parses, and an undocumented one doesn't.
    #[test]
    fn protocol_md_documents_every_command_the_parser_accepts() {
        let source = include_str!("protocol.rs");
        let body = source
            .split("pub(crate) fn parse(")
            .nth(1)
            .and_then(|rest| rest.split("\n}\n").next())
            .expect("the source of `parse`");
        let accepted: BTreeSet<String> = body
            .lines()
            .filter_map(|l| l.trim().strip_prefix('"')?.split_once("\" =>"))
            .map(|(kind, _)| kind.to_owned())
            .collect();
        let documented = first_column("| command | fields | the `ok` reply's `data` |");
        assert_eq!(documented, accepted, "PROTOCOL.md's table of commands");
        for kind in documented.iter().map(String::as_str).chain(["teleport"]) {
            let frame = json!({"type": kind, "ref": 1}).to_string();
            let unknown = matches!(parse(&frame), Err(e) if e.code == "unknown_command");
            assert_eq!(unknown, kind == "teleport", "{frame}");
        }
    }

    /// One delivery of each kind; a new kind doesn't build until it is added here.
    fn every_delivery() -> Vec<Delivery> {
        let topic = Topic::new("t").expect("valid");
        let epoch = Epoch::from_u64(0xab).expect("nonzero");
        let all = vec![
            Delivery::Message(Message::new(
                topic.clone(),
                MessageId::new(epoch, 1),
                Publication::new("x"),
            )),
            Delivery::Lagged {
                topic: topic.clone(),
                missed: 1,
            },
            Delivery::Reset(Reset {
                topic: topic.clone(),
                requested: None,
                epoch,
                replay_after: MessageId::new(epoch, 0),
                reason: ResetReason::Invalid,
            }),
            Delivery::Presence(Presence {
                room: topic,
                members: Vec::<Member>::new(),
                more: false,
                count: 0,
            }),
        ];
        for d in &all {
            match d {
                Delivery::Message(_)
                | Delivery::Lagged { .. }
                | Delivery::Reset(_)
                | Delivery::Presence(_) => {}
            }
        }
        all
    }

    // Every frame type the server sends (replies, `error` frames, each kind of delivery) has a
    // row in PROTOCOL.md's table of server frames, and nothing else does.
    #[test]
    fn protocol_md_documents_every_server_frame() {
        let type_of = |frame: &[u8]| -> String {
            let v: Value = serde_json::from_slice(frame).expect("a JSON frame");
            v["type"].as_str().expect("a type").to_owned()
        };
        let mut sent: BTreeSet<String> = every_delivery()
            .iter()
            .map(|d| type_of(&d.envelope_json()))
            .collect();
        sent.insert(type_of(ok(&json!(1), &Value::Null).as_bytes()));
        sent.insert(type_of(error(None, "bad_frame", "m").as_bytes()));
        let documented = first_column("| `type` | shape | sent when |");
        assert_eq!(documented, sent, "PROTOCOL.md's table of server frames");
    }

    // Every reset reason, as it is serialized, has a row in PROTOCOL.md, and nothing else does.
    #[test]
    fn protocol_md_documents_every_reset_reason() {
        let reasons = [
            ResetReason::EpochChanged,
            ResetReason::Expired,
            ResetReason::Ahead,
            ResetReason::Invalid,
        ];
        for r in reasons {
            // A new reason doesn't build until it is listed above.
            match r {
                ResetReason::EpochChanged
                | ResetReason::Expired
                | ResetReason::Ahead
                | ResetReason::Invalid => {}
            }
        }
        let serialized: BTreeSet<String> = reasons
            .iter()
            .filter_map(|r| serde_json::to_value(r).ok()?.as_str().map(str::to_owned))
            .collect();
        assert_eq!(serialized.len(), reasons.len());
        let documented = first_column("| `reason` | meaning |");
        assert_eq!(
            documented, serialized,
            "PROTOCOL.md's table of reset reasons"
        );
    }

    // The events the server sends on `$conn` (read from `channel/mod.rs`'s notices and the
    // WebSocket pump's `session` notice) are the rows of PROTOCOL.md's `$conn` table.
    #[test]
    fn protocol_md_documents_every_connection_notice() {
        let source = include_str!("mod.rs");
        let mut sent = literals_after(source, "connection_notice(");
        sent.extend(literals_after(source, "self.tell(conn, "));
        let pump = include_str!("../ws/pump.rs");
        sent.extend(literals_after(pump, "\"event\": "));
        assert!(sent.len() >= 4, "notices found: {sent:?}");
        let documented = first_column("| `event` | `data` | meaning |");
        assert_eq!(documented, sent, "PROTOCOL.md's table of `$conn` events");
    }

    // The close codes the endpoint sends (`ws::close_code`) are PROTOCOL.md's rows, but 1011,
    // which a channel-protocol connection never gets (raw framing only), and the text says so.
    #[test]
    fn protocol_md_documents_the_close_codes_and_limits() {
        let constants: BTreeSet<u16> = include_str!("../ws/close.rs")
            .lines()
            .filter_map(|l| l.trim().strip_prefix("pub const ")?.split_once(": u16 = "))
            .filter_map(|(_, value)| value.trim_end_matches(';').parse().ok())
            .collect();
        assert!(constants.contains(&crate::ws::close_code::INTERNAL));
        let table: BTreeSet<u16> = SPEC
            .lines()
            .skip_while(|l| l.trim() != "| code | meaning | what a client should do |")
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .filter_map(|l| l.split('|').nth(1)?.trim().parse().ok())
            .collect();
        let expected: BTreeSet<u16> = constants
            .into_iter()
            .filter(|c| *c != crate::ws::close_code::INTERNAL)
            .collect();
        assert_eq!(table, expected, "PROTOCOL.md's table of close codes");
        assert!(SPEC.contains("1011 is never sent on a channel-protocol connection"));

        assert!(SPEC.starts_with(&format!("# The channel protocol, `{SUBPROTOCOL}`")));
        assert!(row("`ref`").contains(&format!("{MAX_REF} bytes")));
        assert!(MAX_RECENT == 1_000 && row("`recent`").contains("1,000"));
        let calls = row("calls in flight");
        assert!(calls.contains(&format!("| {} |", crate::channel::dispatch::MAX_CALLS)));
        assert!(row("topic name").contains(&format!("{} bytes", Topic::MAX_LEN)));
        assert!(row("event name").contains(&format!("{} bytes", EventName::MAX_LEN)));
    }
}
