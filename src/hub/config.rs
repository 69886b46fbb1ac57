//! Limits shared by the in-memory hubs.

use std::time::Duration;

/// What a hub does with a message a connection sends ([`Hub::receive`](crate::Hub::receive)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InboundPolicy {
    /// Refuse it with [`HubError::InboundRejected`](crate::error::HubError::InboundRejected).
    Reject,
    /// Publish it to every topic or room the connection is in, the sender included, with the
    /// sender's user id and connection recorded.
    Publish,
    /// Like [`Publish`](Self::Publish), but the sending connection doesn't receive it.
    PublishExceptSender,
}

/// Limits and retention of an in-memory hub ([`PubSub`](crate::PubSub), [`Rooms`](crate::Rooms)).
///
/// ```
/// use std::time::Duration;
/// use salvo_realtime::{HubConfig, PubSub};
///
/// let hub = PubSub::with_config(
///     HubConfig::new()
///         .history(1_000)
///         .history_age(Duration::from_secs(60))
///         .max_payload(16 * 1024),
/// );
/// # drop(hub);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HubConfig {
    pub(crate) history: usize,
    pub(crate) history_bytes: Option<usize>,
    pub(crate) history_age: Option<Duration>,
    pub(crate) channel_capacity: usize,
    pub(crate) direct_capacity: usize,
    pub(crate) idle_ttl: Duration,
    pub(crate) max_topics: usize,
    pub(crate) max_topics_per_owner: usize,
    pub(crate) max_payload: usize,
    pub(crate) max_subscriptions: usize,
    pub(crate) inbound: Option<InboundPolicy>,
    pub(crate) presence: PresenceMode,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl HubConfig {
    /// The defaults, as listed on each setter.
    #[must_use]
    pub fn new() -> Self {
        Self {
            history: 256,
            history_bytes: None,
            history_age: None,
            channel_capacity: 256,
            direct_capacity: 16,
            idle_ttl: Duration::from_secs(300),
            max_topics: 100_000,
            max_topics_per_owner: 1_000,
            max_payload: 64 * 1024,
            max_subscriptions: 64,
            inbound: None,
            presence: PresenceMode::Full,
        }
    }

    /// Messages each topic retains for replay and resume. `0` keeps no history: resuming then
    /// always resets. Default: 256.
    #[must_use]
    pub fn history(mut self, messages: usize) -> Self {
        self.history = messages;
        self
    }

    /// Caps the payload bytes each topic's history holds; the oldest messages leave first.
    /// Default: no byte cap (the message cap and [`max_payload`](Self::max_payload) bound it).
    #[must_use]
    pub fn history_bytes(mut self, bytes: usize) -> Self {
        self.history_bytes = Some(bytes);
        self
    }

    /// Drops messages from history once they are older than `age`. Default: no age limit.
    #[must_use]
    pub fn history_age(mut self, age: Duration) -> Self {
        self.history_age = Some(age);
        self
    }

    /// Messages buffered per topic for live subscribers before a slow one has to be refilled from
    /// history. Each topic allocates this many slots up front. Default: 256 (at least 1).
    #[must_use]
    pub fn channel_capacity(mut self, messages: usize) -> Self {
        self.channel_capacity = messages.max(1);
        self
    }

    /// Live buffer of each user's direct-message log in [`Rooms`](crate::Rooms); small, because
    /// every signed-in user has one. Default: 16 (at least 1).
    #[must_use]
    pub fn direct_capacity(mut self, messages: usize) -> Self {
        self.direct_capacity = messages.max(1);
        self
    }

    /// How long a topic with history but no subscribers is kept, so that clients reconnecting
    /// within it can resume. After it, the topic and its history are freed, and a later resume
    /// gets a reset (new epoch). A topic with no subscribers and no history is freed at once.
    /// Default: 5 minutes.
    #[must_use]
    pub fn idle_ttl(mut self, ttl: Duration) -> Self {
        self.idle_ttl = ttl;
        self
    }

    /// Most topics (or rooms) the hub holds at once; past it, publishing to or joining a new one
    /// fails with [`HubError::TooManyTopics`](crate::error::HubError::TooManyTopics).
    /// Default: 100,000.
    #[must_use]
    pub fn max_topics(mut self, topics: usize) -> Self {
        self.max_topics = topics;
        self
    }

    /// Most topics (or rooms) that one owner may have created and the hub still holds: a
    /// connection's owner is its user id, or for an anonymous connection its client address
    /// (IPv6 grouped by /64). Past it, joining a new topic fails with
    /// [`HubError::TooManyCreated`](crate::error::HubError::TooManyCreated) for that owner
    /// alone, so one client can't fill [`max_topics`](Self::max_topics) and lock everyone out.
    /// Topics created by server code (publish, broadcast) count for no one. Default: 1,000.
    #[must_use]
    pub fn max_topics_per_owner(mut self, topics: usize) -> Self {
        self.max_topics_per_owner = topics;
        self
    }

    /// Largest payload accepted by publish and receive, in bytes; larger ones fail with
    /// [`HubError::PayloadTooLarge`](crate::error::HubError::PayloadTooLarge). Default: 64 KiB.
    #[must_use]
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// Most topics or rooms one connection may be in. Default: 64.
    #[must_use]
    pub fn max_subscriptions(mut self, count: usize) -> Self {
        self.max_subscriptions = count;
        self
    }

    /// What to do with messages connections send. Default: [`InboundPolicy::Reject`] for
    /// [`PubSub`](crate::PubSub) (a subscriber may not publish),
    /// [`InboundPolicy::PublishExceptSender`] for [`Rooms`](crate::Rooms) (a member talks to
    /// its rooms, and isn't sent its own words back).
    #[must_use]
    pub fn inbound(mut self, policy: InboundPolicy) -> Self {
        self.inbound = Some(policy);
        self
    }

    /// Whether [`Rooms`](crate::Rooms) sends `presence.join` / `presence.leave` notices and a
    /// presence snapshot on joining a room: `true` is [`PresenceMode::Full`], `false`
    /// [`PresenceMode::Off`]. The notices are live-only: they never enter a room's history, so
    /// they can't push chat messages out of it, and `recent=20` gives the last 20 messages.
    /// Default: `true`.
    #[must_use]
    pub fn presence(self, enabled: bool) -> Self {
        self.presence_mode(if enabled {
            PresenceMode::Full
        } else {
            PresenceMode::Off
        })
    }

    /// How much presence [`Rooms`](crate::Rooms) keeps and tells; see [`PresenceMode`].
    /// Default: [`PresenceMode::Full`].
    ///
    /// ```
    /// use salvo_realtime::{HubConfig, Rooms, hub::PresenceMode};
    ///
    /// // A 100,000-member audience: members learn the count, not the list.
    /// let rooms = Rooms::with_config(HubConfig::new().presence_mode(PresenceMode::Count));
    /// # drop(rooms);
    /// ```
    #[must_use]
    pub fn presence_mode(mut self, mode: PresenceMode) -> Self {
        self.presence = mode;
        self
    }
}

/// How much presence [`Rooms`](crate::Rooms) keeps and tells ([`HubConfig::presence_mode`]).
///
/// | mode | on joining a room | when a user's first connection joins or last one leaves | join cost |
/// |---|---|---|---|
/// | `Full` | every member, in pages of [`PRESENCE_PAGE`](crate::hub::PRESENCE_PAGE) | a live `presence.join` / `presence.leave` to the room | O(members) |
/// | `Count` | the member count | nothing: the room is not told | O(1) |
/// | `Off` | nothing | nothing | O(1) |
///
/// In every mode but `Off` the backend counts members per user across nodes, so
/// [`Rooms::presence_page`](crate::Rooms::presence_page) and
/// [`Rooms::member_count`](crate::Rooms::member_count) work; `Count` is the mode for rooms
/// too big to list (an audience of 100,000 joins in constant time, and a join doesn't send a
/// notice to 100,000 connections).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PresenceMode {
    /// Snapshot on join, and join/leave notices to the room.
    #[default]
    Full,
    /// The member count on join; no notices to the room.
    Count,
    /// No presence at all: members are not counted, nothing is sent.
    Off,
}
