//! Publishing over HTTP: a Salvo handler that publishes a request's body to a topic.
//!
//! [`Publish`] is the server API a feed needs: a backend job, another service or an admin page
//! `POST`s a body, and every subscriber of the topic gets it at once, over WebSocket or SSE,
//! with an id like any other message.
//!
//! ```
//! use salvo::prelude::*;
//! use salvo::test::{ResponseExt, TestClient};
//! use salvo_realtime::publish::Publish;
//! use salvo_realtime::{Position, PubSub};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let hub = PubSub::new();
//! let mut feed = hub.subscribe("news", Position::Live).await?;
//! // Behind the application's own authentication middleware, so anyone who gets here may publish.
//! let publish = Publish::new(hub.clone()).allow_anyone();
//! let router = Router::with_path("publish/{topic}").post(publish);
//!
//! # let router = Service::new(router);
//! let mut res = TestClient::post("http://localhost/publish/news?event=alert")
//!     .add_header("content-type", "application/json", true)
//!     .raw_json(r#"{"title":"deploy finished"}"#)
//!     .send(&router)
//!     .await;
//! assert_eq!(res.status_code, Some(StatusCode::OK));
//! let reply: serde_json::Value = serde_json::from_str(&res.take_string().await?)?;
//! assert_eq!(reply["topic"], "news");
//! # use futures_util::StreamExt;
//! # let Some(salvo_realtime::Delivery::Message(m)) = feed.next().await else { panic!() };
//! # assert_eq!(reply["id"], m.id().to_string());
//! # assert_eq!(m.event().map(|e| e.as_str()), Some("alert"));
//! # Ok(())
//! # }
//! ```
//!
//! # The request
//!
//! * **Method**: `POST`. Mount the handler with `Router::post`, so that Salvo answers any other
//!   method with `405 Method Not Allowed`.
//! * **Topic**: the path parameter `topic` (rename it with [`Publish::topic_param`]), or a
//!   fixed topic ([`Publish::topic`]), which ignores the path.
//! * **Event name**: the query parameter `event` (rename it with [`Publish::event_param`]);
//!   without it the message has no event name (SSE's `message`). A name that is no valid
//!   [`EventName`] (empty, too long, control characters) is `400`.
//! * **Body**, by `Content-Type`:
//!   `application/json` (and any `application/*+json`) must be JSON nested at most
//!   [`MAX_JSON_DEPTH`] deep (else `400`) and is published as JSON text,
//!   which clients receive as a value; `text/*` must be UTF-8 (else `400`; no other charset is
//!   converted) and is published as text; anything else, or no `Content-Type` at all, is
//!   published as binary (`curl -d` sends `application/x-www-form-urlencoded`: pass
//!   `-H 'content-type: text/plain'` to publish text). An empty text or binary body is
//!   allowed: it publishes an empty message, a "something changed" signal; an empty JSON body
//!   is no JSON and is `400`.
//! * **Size**: at most [`Publish::max_body`] bytes (64 KiB, the default
//!   [`HubConfig::max_payload`](crate::HubConfig::max_payload)); a larger body is `413`. The
//!   body is read with that limit, so an oversized one is never buffered whole, with or
//!   without `Content-Length`.
//!
//! # Authorization
//!
//! Publishing reaches every subscriber, so the handler is **closed by default**: without a
//! rule it answers every request with `403` (and logs why). Give it a rule with
//! [`Publish::authorize`] (or [`Publish::authorize_async`]), which sees the request and the
//! topic and answers with a [`Rejection`] (`401` or `403`) to refuse, or call
//! [`Publish::allow_anyone`] when the route already sits behind the application's own
//! authentication middleware. The rule runs before the body is read. A rule that panics (in
//! the call or in its future) gets `500` and publishes nothing.
//!
//! # The answer
//!
//! `200 OK` with `{"id":"<message id>","topic":"<topic>"}` (`application/json`): the id is the
//! one subscribers see on the message, so the publisher can correlate. A hub error answers with
//! the status the WebSocket and SSE endpoints use for it (a bad or reserved topic name `400`,
//! a full hub or a failed backend `503` with `Retry-After`, see the README's status map),
//! except a payload over the hub's own limit, which is `413` here too. A refused request
//! publishes nothing.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use salvo::http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use salvo::http::{ParseError, StatusCode};
use salvo::{Depot, FlowCtrl, Handler, Request, Response, async_trait};
use serde::Serialize;

use crate::endpoint::Refusal;
use crate::error::HubError;
use crate::hub::backend::Backend;
use crate::hub::inbound::json_depth;
use crate::hub::{Counted, Hub, MAX_JSON_DEPTH, Rooms};
use crate::ids::EventName;
use crate::{MessageId, Payload, PubSub, Publication, Rejection, Topic};

/// The default [`Publish::max_body`]: 64 KiB, the default hub payload limit.
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;

/// What [`Publish`] publishes through: a hub that can publish to a topic by name, without a
/// connection. Implemented for [`PubSub`] ([`PubSub::publish`]), [`Rooms`] and
/// [`Channels`](crate::channel::Channels) (`broadcast`: room names starting with `@` or `$`
/// are refused), [`Counted`] (passed to the wrapped hub) and `Arc<P>`.
///
/// ```
/// use salvo_realtime::publish::Publisher;
/// use salvo_realtime::{Publication, PubSub, Topic};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let hub = PubSub::new();
/// let id = hub.publish_topic(&Topic::new("news")?, Publication::new("hello")).await?;
/// assert_eq!(hub.last_id("news"), Some(id));
/// # Ok(())
/// # }
/// ```
pub trait Publisher: Send + Sync + 'static {
    /// Publishes `publication` to `topic` and resolves to the id the message got.
    ///
    /// # Errors
    ///
    /// The hub's [`HubError`]: an invalid or reserved topic, a payload over its limit, a full
    /// hub, a backend failure.
    fn publish_topic(
        &self,
        topic: &Topic,
        publication: Publication,
    ) -> impl Future<Output = Result<MessageId, HubError>> + Send;
}

impl<B: Backend> Publisher for PubSub<B> {
    async fn publish_topic(
        &self,
        topic: &Topic,
        publication: Publication,
    ) -> Result<MessageId, HubError> {
        self.publish(topic.as_str(), publication).await
    }
}

impl<B: Backend> Publisher for Rooms<B> {
    async fn publish_topic(
        &self,
        topic: &Topic,
        publication: Publication,
    ) -> Result<MessageId, HubError> {
        self.broadcast(topic.as_str(), publication).await
    }
}

impl<B: Backend> Publisher for crate::channel::Channels<B> {
    async fn publish_topic(
        &self,
        topic: &Topic,
        publication: Publication,
    ) -> Result<MessageId, HubError> {
        self.broadcast(topic.as_str(), publication).await
    }
}

impl<H: Hub + Publisher> Publisher for Counted<H> {
    async fn publish_topic(
        &self,
        topic: &Topic,
        publication: Publication,
    ) -> Result<MessageId, HubError> {
        self.inner().publish_topic(topic, publication).await
    }
}

impl<P: Publisher> Publisher for Arc<P> {
    async fn publish_topic(
        &self,
        topic: &Topic,
        publication: Publication,
    ) -> Result<MessageId, HubError> {
        P::publish_topic(self, topic, publication).await
    }
}

type AuthorizeFuture = Pin<Box<dyn Future<Output = Result<(), Rejection>> + Send>>;
type AuthorizeFn = dyn Fn(&Request, &Topic) -> AuthorizeFuture + Send + Sync;

/// Who may publish.
#[derive(Clone)]
enum Access {
    /// No rule was given: every request is refused.
    Closed,
    /// [`Publish::allow_anyone`].
    Anyone,
    /// [`Publish::authorize`] or [`Publish::authorize_async`].
    Rule(Arc<AuthorizeFn>),
}

/// Where the topic comes from.
#[derive(Debug, Clone)]
enum TopicFrom {
    /// The path parameter of this name.
    Param(Arc<str>),
    /// Always this topic.
    Fixed(Topic),
}

/// A Salvo handler that publishes the request body to a topic of a hub; see the
/// [module docs](self) for the request it takes and the answers it gives.
///
/// Cloning is cheap; a clone's settings are its own, and it publishes to the same hub.
#[derive(Clone)]
pub struct Publish<H> {
    hub: H,
    topic: TopicFrom,
    event_param: Arc<str>,
    max_body: usize,
    access: Access,
}

impl<H: Publisher + Default> Default for Publish<H> {
    fn default() -> Self {
        Self::new(H::default())
    }
}

impl<H: Publisher> Publish<H> {
    /// A handler publishing to `hub`, closed until [`authorize`](Self::authorize),
    /// [`authorize_async`](Self::authorize_async) or [`allow_anyone`](Self::allow_anyone) is
    /// called.
    #[must_use]
    pub fn new(hub: H) -> Self {
        Self {
            hub,
            topic: TopicFrom::Param(Arc::from("topic")),
            event_param: Arc::from("event"),
            max_body: DEFAULT_MAX_BODY,
            access: Access::Closed,
        }
    }

    /// Takes the topic from the path parameter `name` (mount the handler at a path with
    /// `{name}` in it). Default: `topic`.
    #[must_use]
    pub fn topic_param(mut self, name: &str) -> Self {
        self.topic = TopicFrom::Param(Arc::from(name));
        self
    }

    /// Publishes to `topic` whatever the path. Default: the topic comes from the path
    /// parameter ([`topic_param`](Self::topic_param)).
    #[must_use]
    pub fn topic(mut self, topic: Topic) -> Self {
        self.topic = TopicFrom::Fixed(topic);
        self
    }

    /// Takes the event name from the query parameter `name`. Default: `event`.
    #[must_use]
    pub fn event_param(mut self, name: &str) -> Self {
        self.event_param = Arc::from(name);
        self
    }

    /// The largest body accepted, in bytes; a larger one is answered with `413`. Default:
    /// [`DEFAULT_MAX_BODY`] (64 KiB). A hub with a lower
    /// [`max_payload`](crate::HubConfig::max_payload) refuses above its own limit (also `413`).
    #[must_use]
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Decides who may publish to which topic: `rule` sees the request and the topic, and
    /// refuses with a [`Rejection`] (`401` for missing credentials, `403` for a forbidden
    /// topic). It runs before the body is read. Replaces an earlier rule. Default: none, and
    /// every request is refused with `403`.
    ///
    /// ```
    /// use salvo_realtime::publish::Publish;
    /// use salvo_realtime::{PubSub, Rejection};
    ///
    /// let publish = Publish::new(PubSub::new()).authorize(|req, topic| {
    ///     match req.header::<String>("authorization").as_deref() {
    ///         None => Err(Rejection::unauthorized("missing credentials")),
    ///         Some("Bearer admin") => Ok(()),
    ///         Some(_) if topic.as_str().starts_with("public.") => Ok(()),
    ///         Some(_) => Err(Rejection::forbidden("admins only")),
    ///     }
    /// });
    /// # let _ = publish;
    /// ```
    #[must_use]
    pub fn authorize<F>(mut self, rule: F) -> Self
    where
        F: Fn(&Request, &Topic) -> Result<(), Rejection> + Send + Sync + 'static,
    {
        self.access = Access::Rule(Arc::new(move |req, topic| {
            Box::pin(std::future::ready(rule(req, topic)))
        }));
        self
    }

    /// As [`authorize`](Self::authorize), for a rule that awaits (a token lookup, say): it
    /// reads what it needs from the request and returns a future that owns it.
    ///
    /// ```
    /// use salvo_realtime::publish::Publish;
    /// use salvo_realtime::{PubSub, Rejection};
    ///
    /// let publish = Publish::new(PubSub::new()).authorize_async(|req, _topic| {
    ///     let token = req.header::<String>("authorization");
    ///     async move {
    ///         // e.g. ask a session store
    ///         match token.as_deref() {
    ///             Some("Bearer secret") => Ok(()),
    ///             _ => Err(Rejection::unauthorized("bad token")),
    ///         }
    ///     }
    /// });
    /// # let _ = publish;
    /// ```
    #[must_use]
    pub fn authorize_async<F, Fut>(mut self, rule: F) -> Self
    where
        F: Fn(&Request, &Topic) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Rejection>> + Send + 'static,
    {
        self.access = Access::Rule(Arc::new(move |req, topic| Box::pin(rule(req, topic))));
        self
    }

    /// Lets every request that reaches the handler publish: for a route behind the
    /// application's own authentication middleware (or a private network). Replaces a rule.
    /// Default: closed, every request is refused with `403`.
    #[must_use]
    pub fn allow_anyone(mut self) -> Self {
        self.access = Access::Anyone;
        self
    }

    /// The hub this handler publishes to.
    #[must_use]
    pub fn hub(&self) -> &H {
        &self.hub
    }
}

/// Why a publish request was refused before it reached the hub.
#[derive(Debug)]
enum Bad {
    /// A status and a brief for the client.
    Status(StatusCode, String),
    /// Refused by the lifecycle's own map (an authorization rule, a hub error).
    Refusal(Refusal),
}

impl From<Rejection> for Bad {
    fn from(r: Rejection) -> Self {
        Self::Refusal(Refusal::Rejected(r))
    }
}

fn bad_request(brief: impl Into<String>) -> Bad {
    Bad::Status(StatusCode::BAD_REQUEST, brief.into())
}

fn too_large(limit: usize) -> Bad {
    Bad::Status(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is larger than {limit} bytes"),
    )
}

/// What a body's `Content-Type` makes of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Json,
    Text,
    Binary,
}

fn body_kind(req: &Request) -> BodyKind {
    let Some(value) = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return BodyKind::Binary;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.split_once('/') {
        Some(("application", "json")) => BodyKind::Json,
        Some(("application", sub)) if sub.ends_with("+json") => BodyKind::Json,
        Some(("text", _)) => BodyKind::Text,
        _ => BodyKind::Binary,
    }
}

/// The body as a payload of its kind.
fn payload(kind: BodyKind, body: bytes::Bytes) -> Result<Payload, Bad> {
    match kind {
        BodyKind::Binary => Ok(Payload::binary(body)),
        BodyKind::Text => {
            Payload::text_from_bytes(body).map_err(|_| bad_request("a text body must be UTF-8"))
        }
        BodyKind::Json => {
            let text =
                std::str::from_utf8(&body).map_err(|_| bad_request("a JSON body must be UTF-8"))?;
            // Counted without recursion first, so a deep body never reaches the parser.
            if json_depth(text) > MAX_JSON_DEPTH {
                return Err(bad_request(format!(
                    "json nested deeper than {MAX_JSON_DEPTH} levels"
                )));
            }
            serde_json::from_str::<serde::de::IgnoredAny>(text)
                .map_err(|e| bad_request(format!("invalid json: {e}")))?;
            Payload::text_from_bytes(body).map_err(|_| bad_request("a JSON body must be UTF-8"))
        }
    }
}

/// The answer to a publish.
#[derive(Serialize)]
struct Published<'a> {
    id: MessageId,
    topic: &'a Topic,
}

impl<H: Publisher> Publish<H> {
    fn topic_of(&self, req: &Request) -> Result<Topic, Bad> {
        match &self.topic {
            TopicFrom::Fixed(topic) => Ok(topic.clone()),
            TopicFrom::Param(name) => {
                let Some(raw) = req.param::<String>(name) else {
                    tracing::error!(
                        param = %name,
                        "publish handler mounted on a path without its topic parameter"
                    );
                    return Err(Bad::Status(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "no topic in the path".into(),
                    ));
                };
                Topic::new(&raw).map_err(|e| bad_request(e.to_string()))
            }
        }
    }

    async fn check_access(&self, req: &Request, topic: &Topic) -> Result<(), Bad> {
        match &self.access {
            Access::Anyone => Ok(()),
            Access::Rule(rule) => {
                // A panic in the rule or its future is the app's bug: 500, never a dropped
                // connection.
                let panicked = || {
                    tracing::error!("publish: the authorization rule panicked");
                    Bad::Status(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
                };
                let fut = std::panic::catch_unwind(AssertUnwindSafe(|| rule(req, topic)))
                    .map_err(|_| panicked())?;
                Ok(AssertUnwindSafe(fut)
                    .catch_unwind()
                    .await
                    .map_err(|_| panicked())??)
            }
            Access::Closed => {
                tracing::warn!(
                    "publish refused: the handler has no authorization rule \
                     (call `authorize` or `allow_anyone`)"
                );
                Err(Rejection::forbidden("publishing is not allowed here").into())
            }
        }
    }

    fn event_of(&self, req: &Request) -> Result<Option<EventName>, Bad> {
        req.query::<String>(&self.event_param)
            .map(|name| EventName::new(&name).map_err(|e| bad_request(e.to_string())))
            .transpose()
    }

    async fn body_of(&self, req: &mut Request) -> Result<bytes::Bytes, Bad> {
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body as u64) {
            return Err(too_large(self.max_body));
        }
        match req.payload_with_max_size(self.max_body).await {
            Ok(body) => Ok(body.clone()),
            Err(ParseError::PayloadTooLarge) => Err(too_large(self.max_body)),
            Err(e) => {
                tracing::debug!(error = %e, "publish: the body could not be read");
                Err(bad_request("the body could not be read"))
            }
        }
    }

    async fn run(&self, req: &mut Request) -> Result<(Topic, MessageId), Bad> {
        let topic = self.topic_of(req)?;
        self.check_access(req, &topic).await?;
        let event = self.event_of(req)?;
        let kind = body_kind(req);
        let body = self.body_of(req).await?;
        let mut publication = Publication::new(payload(kind, body)?);
        if let Some(event) = event {
            publication = publication.event_name_checked(event);
        }
        match self.hub.publish_topic(&topic, publication).await {
            Ok(id) => Ok((topic, id)),
            Err(HubError::PayloadTooLarge { limit, .. }) => Err(too_large(limit)),
            Err(e) => Err(Bad::Refusal(Refusal::Hub(e))),
        }
    }
}

#[async_trait]
impl<H: Publisher> Handler for Publish<H> {
    async fn handle(
        &self,
        req: &mut Request,
        _depot: &mut Depot,
        res: &mut Response,
        _ctrl: &mut FlowCtrl,
    ) {
        match self.run(req).await {
            Ok((topic, id)) => {
                let body =
                    serde_json::to_string(&Published { id, topic: &topic }).unwrap_or_default();
                res.status_code(StatusCode::OK);
                res.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                res.body(body);
            }
            Err(Bad::Status(status, brief)) => {
                tracing::info!(status = status.as_u16(), reason = %brief, "publish refused");
                res.status_code(status);
                res.render(brief);
            }
            Err(Bad::Refusal(refusal)) => {
                refusal.log("publish", req.remote_addr().ip());
                refusal.respond(res, Duration::from_secs(1));
            }
        }
    }
}

impl<H> fmt::Debug for Publish<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let access = match self.access {
            Access::Closed => "closed",
            Access::Anyone => "anyone",
            Access::Rule(_) => "rule",
        };
        f.debug_struct("Publish")
            .field("topic", &self.topic)
            .field("event_param", &self.event_param)
            .field("max_body", &self.max_body)
            .field("access", &access)
            .finish_non_exhaustive()
    }
}

/// `hub.publish("prices", Json(&tick))`: a value of your own type, encoded as JSON (see
/// [`Publication::json`](crate::Publication::json)).
impl<T: serde::Serialize> From<salvo::writing::Json<T>> for crate::Publication {
    fn from(json: salvo::writing::Json<T>) -> Self {
        crate::Publication::json(&json.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_pick_the_payload_kind() {
        let kind = |ct: &str| {
            let mut req = Request::new();
            req.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_str(ct).expect("header"));
            body_kind(&req)
        };
        assert_eq!(kind("application/json"), BodyKind::Json);
        assert_eq!(kind("Application/JSON; charset=utf-8"), BodyKind::Json);
        assert_eq!(kind("application/ld+json"), BodyKind::Json);
        assert_eq!(kind("text/plain;charset=UTF-8"), BodyKind::Text);
        assert_eq!(kind("text/markdown"), BodyKind::Text);
        assert_eq!(kind("application/octet-stream"), BodyKind::Binary);
        assert_eq!(kind("application/x-www-form-urlencoded"), BodyKind::Binary);
        assert_eq!(body_kind(&Request::new()), BodyKind::Binary);
    }

    #[test]
    fn json_bodies_are_checked() {
        let ok = payload(BodyKind::Json, bytes::Bytes::from_static(b"{\"a\":[1]}"));
        assert_eq!(ok.expect("valid").as_text(), Some("{\"a\":[1]}"));
        assert!(payload(BodyKind::Json, bytes::Bytes::from_static(b"{")).is_err());
        assert!(payload(BodyKind::Json, bytes::Bytes::new()).is_err());
        let deep = "[".repeat(MAX_JSON_DEPTH + 1) + &"]".repeat(MAX_JSON_DEPTH + 1);
        assert!(payload(BodyKind::Json, bytes::Bytes::from(deep)).is_err());
        let limit = "[".repeat(MAX_JSON_DEPTH) + &"]".repeat(MAX_JSON_DEPTH);
        assert!(payload(BodyKind::Json, bytes::Bytes::from(limit)).is_ok());
        assert!(payload(BodyKind::Text, bytes::Bytes::from_static(b"\xff")).is_err());
        let bin = payload(BodyKind::Binary, bytes::Bytes::from_static(b"\xff"));
        assert!(!bin.expect("any bytes").is_text());
    }
}
