//! What a publish handler does with a message it accepted: [`Outcome`], and the plan it
//! resolves to (what is published where, what the sender is answered).

use serde::Serialize;
use serde_json::Value;

use super::handler_failed;
use crate::error::Refused;
use crate::hub::{Payload, Publication};
use crate::ids::Topic;

/// What a publish handler ([`on_publish`](super::Channels::on_publish),
/// [`on_event`](super::Channels::on_event)) does with a message it accepted. A handler
/// returns `Ok(x)` where `x` is an `Outcome`, a [`Publication`], or any `Serialize` value
/// (published instead of what was sent; one that encodes as `null`, such as `()`, publishes
/// what was sent unchanged).
///
/// | Phoenix / socket.io | `Outcome` |
/// |---|---|
/// | `broadcast!(socket, event, payload)` / `io.to(room).emit` | [`publish`](Self::publish)`(data)`, [`pass`](Self::pass)`()` (what was sent) |
/// | `broadcast_from!` / `socket.to(room).emit` | [`broadcast_from`](Self::broadcast_from)`(data)`, or [`except_sender`](Self::except_sender) |
/// | `{:reply, {:ok, data}, socket}` / an ack callback | [`reply`](Self::reply)`(data)` (to the sender alone), [`with_reply`](Self::with_reply) beside a publish |
/// | `{:noreply, socket}` | [`noreply`](Self::noreply)`()` |
/// | `{:reply, {:error, ..}}` | `Err(Refused::new(code, message))` |
///
/// ```
/// use salvo_realtime::channel::{Channels, Inbound, Outcome};
/// use salvo_realtime::Rooms;
///
/// #[derive(serde::Deserialize)]
/// struct Move { dx: i32, dy: i32 }
///
/// let channels = Channels::new(Rooms::new()).allow("game:*").on_event(
///     "game:*",
///     "move",
///     |ctx, msg: Inbound<Move>| async move {
///         let at = ctx.assigns().update(|p: &mut (i32, i32)| {
///             *p = (p.0 + msg.data.dx, p.1 + msg.data.dy);
///             *p
///         });
///         // Everyone sees `moved`; the mover is answered with its position too.
///         Ok(Outcome::publish(at).event("moved").with_reply(at))
///     },
/// );
/// # drop(channels);
/// ```
#[derive(Debug)]
#[must_use = "an outcome does nothing until the handler returns it"]
pub struct Outcome {
    publish: Publish,
    event: Option<String>,
    to: Option<String>,
    except_sender: bool,
    reply: Option<Result<Value, String>>,
}

#[derive(Debug)]
enum Publish {
    Nothing,
    AsSent,
    Data(Result<Payload, String>),
    Publication(Box<Publication>),
}

/// What can be returned from a publish handler: an [`Outcome`], a [`Publication`], or any
/// `Serialize` value (published as JSON; `null`, as `()` encodes, publishes what was sent).
pub trait IntoOutcome {
    /// The outcome this stands for.
    fn into_outcome(self) -> Outcome;
}

impl IntoOutcome for Outcome {
    fn into_outcome(self) -> Outcome {
        self
    }
}

impl IntoOutcome for Publication {
    fn into_outcome(self) -> Outcome {
        Outcome::new(Publish::Publication(Box::new(self)))
    }
}

impl<T: Serialize> IntoOutcome for T {
    fn into_outcome(self) -> Outcome {
        match serde_json::to_value(&self) {
            Ok(Value::Null) => Outcome::pass(),
            Ok(value) => Outcome::new(Publish::Data(Ok(json_payload(value)))),
            Err(e) => Outcome::new(Publish::Data(Err(e.to_string()))),
        }
    }
}

/// A handler's value as the payload to publish: a JSON string as its text, anything else as
/// JSON text.
pub(crate) fn json_payload(value: Value) -> Payload {
    match value {
        Value::String(s) => Payload::text(s),
        other => Payload::text(other.to_string()),
    }
}

fn encode(data: &impl Serialize) -> Result<Value, String> {
    serde_json::to_value(data).map_err(|e| e.to_string())
}

impl Outcome {
    fn new(publish: Publish) -> Self {
        Self {
            publish,
            event: None,
            to: None,
            except_sender: false,
            reply: None,
        }
    }

    /// Publish the message as it was sent (what a topic without a handler does).
    pub fn pass() -> Self {
        Self::new(Publish::AsSent)
    }

    /// Publish `data` instead of what was sent, under the same event name (change it with
    /// [`event`](Self::event)), to the same topic (or [`to`](Self::to) another). A JSON string
    /// is published as its text; `data` that encodes as `null` (`()`) publishes what was sent,
    /// so `broadcast_from(())` is "what was sent, to all but the sender".
    pub fn publish(data: impl Serialize) -> Self {
        match encode(&data) {
            // `null` (as `()` encodes) stands for what was sent, as a returned `()` does.
            Ok(Value::Null) => Self::pass(),
            other => Self::new(Publish::Data(other.map(json_payload))),
        }
    }

    /// [`publish`](Self::publish) to every subscriber but the sending connection (Phoenix's
    /// `broadcast_from!`): the sender's other connections still get it.
    pub fn broadcast_from(data: impl Serialize) -> Self {
        Self::publish(data).except_sender()
    }

    /// Publish nothing; answer the sender alone with `data` (in the reply to its `publish`
    /// command; a plain client gets it as a message on [`CONNECTION_TOPIC`](crate::hub::CONNECTION_TOPIC)
    /// with event `reply`).
    pub fn reply(data: impl Serialize) -> Self {
        Self::noreply().with_reply(data)
    }

    /// Publish nothing and answer nothing: the command still gets its one `ok` reply, empty.
    pub fn noreply() -> Self {
        Self::new(Publish::Nothing)
    }

    /// Also answer the sender alone with `data`, beside what is published.
    pub fn with_reply(mut self, data: impl Serialize) -> Self {
        self.reply = Some(encode(&data));
        self
    }

    /// The event name of what is published. Default: the one it was sent with. A name that
    /// isn't valid answers the sender `handler_failed` (a mistake of the server's).
    pub fn event(mut self, name: &str) -> Self {
        self.event = Some(name.to_owned());
        self
    }

    /// Publish to `topic` instead of the topic it was sent to (the sender needn't follow it:
    /// the handler decides). A name that isn't valid answers the sender `handler_failed`.
    pub fn to(mut self, topic: &str) -> Self {
        self.to = Some(topic.to_owned());
        self
    }

    /// Don't deliver what is published to the sending connection (whatever its `echo`).
    pub fn except_sender(mut self) -> Self {
        self.except_sender = true;
        self
    }

    /// What this outcome does for `sent`, a message sent to `topic`.
    pub(crate) fn resolve(self, sent: Publication, topic: &Topic) -> Result<Plan, Refused> {
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            tracing::error!(error = %e, "a publish handler's outcome is not valid: {what}");
            handler_failed("the server failed to handle this")
        };
        let skip = sent.skips_origin() || self.except_sender;
        let publication = match self.publish {
            Publish::Nothing => None,
            Publish::AsSent => Some(sent),
            Publish::Data(Err(e)) => return Err(failed("data", &e)),
            Publish::Data(Ok(payload)) => Some(keep_event(Publication::new(payload), &sent)),
            Publish::Publication(p) => Some(keep_event(*p, &sent)),
        };
        let publish = match publication {
            None => None,
            Some(mut p) => {
                if let Some(name) = &self.event {
                    p = p.event(name);
                }
                p.check().map_err(|e| failed("publication", &e))?;
                let to = match &self.to {
                    Some(name) => Topic::new(name).map_err(|e| failed("topic", &e))?,
                    None => topic.clone(),
                };
                Some((to, p.skip_origin(skip)))
            }
        };
        let reply = match self.reply {
            None => None,
            Some(Ok(value)) => Some(value),
            Some(Err(e)) => return Err(failed("reply", &e)),
        };
        Ok(Plan { publish, reply })
    }
}

/// `p` with the event name `sent` came with, unless it names its own.
fn keep_event(p: Publication, sent: &Publication) -> Publication {
    match (p.event_name(), sent.event_name()) {
        (None, Some(event)) => p.event_name_checked(event.clone()),
        _ => p,
    }
}

/// What a handled message becomes: at most one publication (to a topic) and at most one
/// answer for the sender.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) publish: Option<(Topic, Publication)>,
    pub(crate) reply: Option<Value>,
}

impl Plan {
    /// What a topic without a handler does: publish what was sent, answer nothing.
    pub(crate) fn as_sent(topic: &Topic, sent: Publication) -> Self {
        Self {
            publish: Some((topic.clone(), sent)),
            reply: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic() -> Topic {
        Topic::new("room:1").expect("valid")
    }

    fn sent() -> Publication {
        Publication::new("hi").event("chat")
    }

    #[test]
    fn a_serialize_value_replaces_the_data_and_keeps_the_event() {
        let plan = "HI".into_outcome().resolve(sent(), &topic()).expect("ok");
        let (to, p) = plan.publish.expect("published");
        assert_eq!(to, topic());
        assert_eq!(p.payload().as_text(), Some("HI"));
        assert_eq!(p.event_name().map(|e| e.as_str()), Some("chat"));
        assert_eq!(plan.reply, None);
    }

    #[test]
    fn unit_passes_the_message_as_sent() {
        let plan = ().into_outcome().resolve(sent(), &topic()).expect("ok");
        assert_eq!(
            plan.publish.expect("published").1.payload().as_text(),
            Some("hi")
        );
    }

    #[test]
    fn noreply_publishes_nothing_and_reply_answers_only_the_sender() {
        let plan = Outcome::noreply().resolve(sent(), &topic()).expect("ok");
        assert!(plan.publish.is_none() && plan.reply.is_none());
        let plan = Outcome::reply([1, 2])
            .resolve(sent(), &topic())
            .expect("ok");
        assert!(plan.publish.is_none());
        assert_eq!(plan.reply, Some(serde_json::json!([1, 2])));
    }

    #[test]
    fn event_target_and_except_sender_change_what_is_published() {
        let plan = Outcome::broadcast_from(serde_json::json!({"x": 1}))
            .event("moved")
            .to("room:2")
            .with_reply("ok")
            .resolve(sent(), &topic())
            .expect("ok");
        let (to, p) = plan.publish.expect("published");
        assert_eq!(to.as_str(), "room:2");
        assert_eq!(p.event_name().map(|e| e.as_str()), Some("moved"));
        assert!(p.skips_origin());
        assert_eq!(p.payload().as_text(), Some(r#"{"x":1}"#));
        assert_eq!(plan.reply, Some(Value::from("ok")));
    }

    #[test]
    fn a_returned_publication_keeps_its_own_event() {
        let own = Publication::new("x").event("mine");
        let (_, p) = own
            .into_outcome()
            .resolve(sent(), &topic())
            .expect("ok")
            .publish
            .expect("published");
        assert_eq!(p.event_name().map(|e| e.as_str()), Some("mine"));
    }

    #[test]
    fn a_server_mistake_is_handler_failed() {
        for bad in [
            Outcome::publish(1).event("bad\nname"),
            Outcome::publish(1).to(""),
            Outcome::noreply().with_reply(std::collections::HashMap::from([((1, 2), 3)])),
        ] {
            let e = bad.resolve(sent(), &topic()).expect_err("refused");
            assert_eq!(e.code(), "handler_failed");
        }
    }
}
