//! Topics on broadcast channels with a bounded history.

use std::fmt;
use std::sync::Arc;

use super::backend::{Backend, Mirror};
use super::backend::{open_stream, registry_for};
use super::config::{HubConfig, InboundPolicy};
use super::inbound::{check_inbound, check_publication, inbound_publication};
use super::local::Local;
use super::log::Limits;
use super::subscription::Subscription;
use super::{Connection, Hub, Message, Position, Publication};
use crate::error::HubError;
use crate::ids::{MessageId, Topic};

/// Publish/subscribe over named topics: the simplest [`Hub`].
///
/// * A topic is created on first use (publish or subscribe) and gets a fresh [`Epoch`](crate::hub::Epoch).
/// * Each publish gets the next [`MessageId`] of its topic; live subscribers receive it through
///   a tokio broadcast channel and the topic's history retains the last
///   [`history`](HubConfig::history) messages (optionally capped by bytes and age).
/// * A subscriber starting from a [`Position`] gets what it missed from history, then the live
///   messages, with no gap and no duplicate at the seam, even while others publish.
/// * A topic with no subscribers is freed once its history is empty or it has been idle for
///   [`idle_ttl`](HubConfig::idle_ttl); a later use starts a new epoch.
///
/// Connections subscribe to the topics in [`Connection::topics`]. By default they may not
/// publish ([`InboundPolicy::Reject`]); server code publishes with [`PubSub::publish`].
///
/// The backend `B` decides where ids and history live: in this process ([`Local`], the
/// default), or in a server shared by several processes ([`with_backend`](Self::with_backend)),
/// in which case this hub's logs mirror the remote ones, and the methods that read them
/// ([`history`](Self::history), [`last_id`](Self::last_id), [`topic_count`](Self::topic_count))
/// tell what this node holds for its own subscribers.
///
/// ```
/// use futures_util::StreamExt;
/// use salvo_realtime::{Connection, Delivery, Hub, Position, PubSub, Topic};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let hub = PubSub::new();
/// let first = hub.publish("news", "one").await?;
///
/// // A client that saw `first` reconnects and resumes after it.
/// let conn = Connection::new().subscribe(Topic::new("news")?, Position::After(first));
/// let mut sub = hub.join(&conn).await?;
/// hub.publish("news", "two").await?;
///
/// let Some(Delivery::Message(m)) = sub.next().await else { panic!("expected a message") };
/// assert_eq!(m.payload().as_text(), Some("two"));
/// assert_eq!(m.id().offset(), first.offset() + 1);
/// hub.leave(&conn, sub).await;
/// # Ok(())
/// # }
/// ```
pub struct PubSub<B: Backend = Local> {
    inner: Arc<Inner<B>>,
}

struct Inner<B> {
    mirror: Mirror,
    backend: Arc<B>,
    config: HubConfig,
}

impl<B: Backend> Clone for PubSub<B> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl Default for PubSub {
    fn default() -> Self {
        Self::new()
    }
}

impl PubSub {
    /// A hub with the default [`HubConfig`].
    #[must_use]
    pub fn new() -> Self {
        Self::with_config(HubConfig::new())
    }

    /// A hub with the given limits.
    #[must_use]
    pub fn with_config(config: HubConfig) -> Self {
        Self::with_backend(config, Local::default())
    }
}

impl<B: Backend> PubSub<B> {
    /// A hub with the given limits whose ids and history live in `backend`: several processes
    /// with hubs on one remote backend behave as one hub. See [`Backend`].
    ///
    /// `config` sets the limits of this node's mirror (history kept locally for replay, live
    /// buffer, payload size...); a remote backend has its own retention settings.
    #[must_use]
    pub fn with_backend(config: HubConfig, backend: B) -> Self {
        let backend = Arc::new(backend);
        let mirror = registry_for(Limits::topics(&config), "topics", &backend);
        Self {
            inner: Arc::new(Inner {
                mirror,
                backend,
                config,
            }),
        }
    }

    /// The backend.
    #[must_use]
    pub fn backend(&self) -> &B {
        &self.inner.backend
    }

    /// Publishes to `topic` and returns the id the message got.
    ///
    /// # Errors
    ///
    /// [`HubError::InvalidTopic`] for a bad topic name, [`HubError::PayloadTooLarge`] over
    /// [`max_payload`](HubConfig::max_payload), [`HubError::TooManyTopics`] if a new topic
    /// would pass [`max_topics`](HubConfig::max_topics), [`HubError::Backend`] if a remote
    /// backend fails or times out.
    pub async fn publish(
        &self,
        topic: &str,
        publication: impl Into<Publication>,
    ) -> Result<MessageId, HubError> {
        let topic = Topic::new(topic)?;
        self.publish_to(&topic, publication.into()).await
    }

    async fn publish_to(
        &self,
        topic: &Topic,
        publication: Publication,
    ) -> Result<MessageId, HubError> {
        check_publication(&publication, self.inner.config.max_payload)?;
        self.inner
            .backend
            .publish(&self.inner.mirror, topic, publication)
            .await
    }

    /// Subscribes to one topic without a [`Connection`] (for server-side consumers).
    ///
    /// # Errors
    ///
    /// [`HubError::InvalidTopic`] for a bad name, [`HubError::TooManyTopics`] if the topic is
    /// new and the hub is full, [`HubError::Backend`] if a remote backend fails.
    pub async fn subscribe(&self, topic: &str, from: Position) -> Result<Subscription, HubError> {
        let conn = Connection::new().subscribe(Topic::new(topic)?, from);
        self.join(&conn).await
    }

    /// The messages the topic's history holds now, oldest first.
    #[must_use]
    pub fn history(&self, topic: &str) -> Vec<Message> {
        Topic::new(topic).map_or_else(|_| Vec::new(), |t| self.inner.mirror.registry().history(&t))
    }

    /// The id of the topic's last message, if the topic exists and has one.
    #[must_use]
    pub fn last_id(&self, topic: &str) -> Option<MessageId> {
        Topic::new(topic)
            .ok()
            .and_then(|t| self.inner.mirror.registry().last_id(&t))
    }

    /// How many topics the hub holds (with subscribers, or idle with history).
    #[must_use]
    pub fn topic_count(&self) -> usize {
        self.inner.mirror.registry().len()
    }

    /// Closes a topic: subscribers' streams end once they have read what was sent, and the
    /// history is dropped. Returns whether the topic existed.
    #[allow(
        clippy::must_use_candidate,
        reason = "an action; the result is informational"
    )]
    pub fn close(&self, topic: &str) -> bool {
        Topic::new(topic).is_ok_and(|t| self.inner.mirror.registry().close(&t))
    }

    /// Frees idle topics now instead of waiting for the next periodic check.
    pub fn sweep(&self) {
        self.inner.mirror.registry().sweep();
    }
}

impl<B: Backend> Hub for PubSub<B> {
    type Subscription = Subscription;

    async fn join(&self, conn: &Connection) -> Result<Subscription, HubError> {
        let limit = self.inner.config.max_subscriptions;
        if conn.topics().len() > limit {
            return Err(HubError::TooManySubscriptions { limit });
        }
        let (backend, mirror) = (&*self.inner.backend, &self.inner.mirror);
        let owner = conn.owner();
        // Sized exactly: a collected Vec starts at 4 slots, most connections need 1.
        let mut streams = Vec::with_capacity(conn.topics().len());
        for (topic, from) in conn.topics() {
            let stream = open_stream(
                backend,
                mirror,
                topic,
                *from,
                conn.id(),
                owner.as_ref(),
                None,
                false,
            )
            .await?;
            let mut stream = stream;
            stream.set_filter(conn.shared_filter());
            streams.push(stream);
        }
        Ok(Subscription::new(streams, None, None))
    }

    async fn receive(&self, conn: &Connection, message: Publication) -> Result<(), HubError> {
        let policy = self.inner.config.inbound.unwrap_or(InboundPolicy::Reject);
        check_inbound(message.payload(), self.inner.config.max_payload)?;
        let publication = inbound_publication(conn, message, policy)?;
        for (topic, _) in conn.topics() {
            self.publish_to(topic, publication.clone()).await?;
        }
        Ok(())
    }

    async fn leave(&self, _conn: &Connection, subscription: Subscription) {
        drop(subscription);
    }
}

#[cfg(all(test, salvo_realtime_shuttle))]
impl<B: Backend> PubSub<B> {
    /// The hub's mirror, for the interleaving tests to replace logs through.
    pub(crate) fn mirror(&self) -> &Mirror {
        &self.inner.mirror
    }

    /// The logs: (topic, holds, subscribers, streams to come).
    pub(crate) fn census(&self) -> Vec<(Topic, usize, usize, usize)> {
        self.inner.mirror.registry().census()
    }
}

impl<B: Backend> fmt::Debug for PubSub<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PubSub")
            .field("topics", &self.inner.mirror.registry().len())
            .field("config", &self.inner.config)
            .finish()
    }
}
