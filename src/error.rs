//! Error types of the hub core.
//!
//! Every fallible public function names its error type; none of them leaks the error type of a
//! backend or a transport library. Messages are lowercase and end without a period.

use std::error::Error as StdError;

use crate::ids::ConnectionId;

pub use crate::ids::{InvalidEvent, InvalidTopic, ParseIdError};

/// A refusal an application handler gives (an authorization rule, a publish or call handler),
/// with a machine-readable `code` the client can act on and a message for people. It travels to
/// the client in the reply to the command that caused it.
///
/// ```
/// use salvo_realtime::error::Refused;
///
/// let no = Refused::new("banned_word", "that word is not allowed here");
/// assert_eq!((no.code(), no.message()), ("banned_word", "that word is not allowed here"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Refused {
    code: std::borrow::Cow<'static, str>,
    message: String,
}

impl Refused {
    /// A refusal with an application `code` (short, `snake_case` by convention) and a message.
    #[must_use]
    pub fn new(
        code: impl Into<std::borrow::Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }

    /// The `forbidden` refusal, the usual answer of an authorization rule.
    #[must_use]
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new("forbidden", message)
    }

    /// `Ok(())` if `condition` holds, else this refusal: a handler's checks read as one line
    /// each, with `?`.
    ///
    /// ```
    /// use salvo_realtime::error::Refused;
    ///
    /// fn check(text: &str) -> Result<(), Refused> {
    ///     Refused::ensure(!text.contains("darn"), "moderated", "keep it civil")?;
    ///     Refused::ensure(text.len() <= 500, "too_long", "at most 500 characters")
    /// }
    /// assert_eq!(check("darn").map_err(|r| r.code().to_owned()), Err("moderated".into()));
    /// assert!(check("hello").is_ok());
    /// ```
    ///
    /// # Errors
    ///
    /// The refusal of `code` and `message` when `condition` is false.
    pub fn ensure(
        condition: bool,
        code: impl Into<std::borrow::Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Result<(), Self> {
        if condition {
            Ok(())
        } else {
            Err(Self::new(code, message))
        }
    }

    /// The machine-readable code.
    #[must_use]
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The message for people.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Why a tag or a [`Filter`](crate::hub::Filter) was refused: a bad key, a value too long, too
/// many of them, or a filter that isn't `{"tags": {"<key>": ["<value>", ..]}}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidFilter(String);

impl InvalidFilter {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Errors of [`Hub`](crate::Hub) operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// A topic or room name was refused.
    #[error("invalid topic: {0}")]
    InvalidTopic(#[from] InvalidTopic),
    /// An event name was refused.
    #[error("invalid event: {0}")]
    InvalidEvent(#[from] InvalidEvent),

    /// A publication's tag is not valid (see [`Publication::tag`](crate::Publication::tag)).
    #[error("invalid tag: {0}")]
    InvalidTag(InvalidFilter),
    /// A payload is larger than the hub's configured limit.
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// Size of the refused payload in bytes.
        size: usize,
        /// The configured limit in bytes.
        limit: usize,
    },
    /// The hub already holds its configured maximum number of topics.
    #[error("the hub holds its limit of {limit} topics")]
    TooManyTopics {
        /// The configured limit.
        limit: usize,
    },
    /// The connection's owner (its user, or for an anonymous connection its client address)
    /// already created [`max_topics_per_owner`](crate::HubConfig::max_topics_per_owner) topics
    /// or rooms that the hub still holds: one client can't fill the hub for everyone.
    #[error("this user or address created {limit} topics that still exist")]
    TooManyCreated {
        /// The configured limit.
        limit: usize,
    },
    /// A text payload from a connection is JSON nested deeper than
    /// [`MAX_JSON_DEPTH`](crate::hub::MAX_JSON_DEPTH): relaying it would break other clients'
    /// parsers.
    #[error("json nested deeper than {limit} levels")]
    JsonTooDeep {
        /// The limit.
        limit: usize,
    },
    /// A connection asked for more topics or rooms than one connection may hold.
    #[error("a connection may hold at most {limit} topics or rooms")]
    TooManySubscriptions {
        /// The configured limit.
        limit: usize,
    },
    /// The connection is not joined to this hub (never joined, or already left).
    #[error("connection {0} is not joined")]
    NotJoined(ConnectionId),
    /// A connection with this id is already joined.
    #[error("connection {0} is already joined")]
    AlreadyJoined(ConnectionId),
    /// The hub does not accept inbound messages from connections.
    #[error("this hub does not accept messages from connections")]
    InboundRejected,
    /// An application handler refused (authorization, a publish or call handler).
    #[error("refused: {0}")]
    Refused(Refused),
    /// The connection is not subscribed to the topic it publishes to or leaves.
    #[error("not subscribed to {0}")]
    NotSubscribed(crate::Topic),
    /// A connection's queue of server-initiated messages is full (it isn't reading).
    #[error("the connection's queue of {limit} direct messages is full")]
    QueueFull {
        /// The queue's capacity.
        limit: usize,
    },
    /// This hub does not offer the operation (for example a `PubSub` asked to add a topic to a
    /// joined connection, or a call with no handler).
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// A JSON payload could not be encoded or decoded.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// The hub's backend failed (for example a remote server is unreachable).
    #[error("backend: {0}")]
    Backend(#[source] Box<dyn StdError + Send + Sync + 'static>),
}

impl HubError {
    /// Every code [`code`](Self::code) returns, a [`Refused`]'s own aside: one of the lists the
    /// docs' tables of codes (README, `ws` module docs) are checked against.
    #[cfg(test)]
    pub(crate) const CODES: &'static [&'static str] = &[
        "unavailable",
        "invalid_topic",
        "invalid_event",
        "invalid_tag",
        "too_large",
        "too_many_subscriptions",
        "too_many_created",
        "not_subscribed",
        "not_joined",
        "json_too_deep",
        "invalid_data",
        "unsupported",
        "refused",
        "internal",
    ];

    /// The machine-readable code the channel protocol answers this error with (the
    /// [`Refused`] code for [`HubError::Refused`]).
    ///
    /// ```
    /// use salvo_realtime::error::{HubError, Refused};
    ///
    /// assert_eq!(HubError::TooManySubscriptions { limit: 2 }.code(), "too_many_subscriptions");
    /// assert_eq!(HubError::Refused(Refused::new("moderated", "no")).code(), "moderated");
    /// ```
    #[must_use]
    pub fn code(&self) -> &str {
        match self {
            Self::Refused(r) => r.code(),
            Self::Backend(_) | Self::TooManyTopics { .. } | Self::QueueFull { .. } => "unavailable",
            Self::InvalidTopic(_) => "invalid_topic",
            Self::InvalidEvent(_) => "invalid_event",
            Self::InvalidTag(_) => "invalid_tag",
            Self::PayloadTooLarge { .. } => "too_large",
            Self::TooManySubscriptions { .. } => "too_many_subscriptions",
            Self::TooManyCreated { .. } => "too_many_created",
            Self::NotSubscribed(_) => "not_subscribed",
            Self::NotJoined(_) => "not_joined",
            Self::JsonTooDeep { .. } => "json_too_deep",
            Self::Json(_) => "invalid_data",
            Self::Unsupported(_) => "unsupported",
            Self::InboundRejected => "refused",
            Self::AlreadyJoined(_) => "internal",
        }
    }

    /// The variant's name, as the README's status map names it. No wildcard: a new variant
    /// doesn't build until it is named here (then add it to `every_variant` below).
    #[cfg(test)]
    pub(crate) fn variant_name(&self) -> &'static str {
        match self {
            Self::InvalidTopic(_) => "InvalidTopic",
            Self::InvalidEvent(_) => "InvalidEvent",
            Self::InvalidTag(_) => "InvalidTag",
            Self::PayloadTooLarge { .. } => "PayloadTooLarge",
            Self::TooManyTopics { .. } => "TooManyTopics",
            Self::TooManyCreated { .. } => "TooManyCreated",
            Self::JsonTooDeep { .. } => "JsonTooDeep",
            Self::TooManySubscriptions { .. } => "TooManySubscriptions",
            Self::NotJoined(_) => "NotJoined",
            Self::AlreadyJoined(_) => "AlreadyJoined",
            Self::InboundRejected => "InboundRejected",
            Self::Refused(_) => "Refused",
            Self::NotSubscribed(_) => "NotSubscribed",
            Self::QueueFull { .. } => "QueueFull",
            Self::Unsupported(_) => "Unsupported",
            Self::Json(_) => "Json",
            Self::Backend(_) => "Backend",
        }
    }

    /// What a client may be told: a backend's own error text (addresses, credentials) is
    /// replaced by a generic message.
    #[must_use]
    pub fn public_message(&self) -> String {
        match self {
            Self::Refused(r) => r.message().to_owned(),
            Self::Backend(_) | Self::TooManyTopics { .. } | Self::QueueFull { .. } => {
                "the server can't do this now; not done, safe to retry".to_owned()
            }
            other => other.to_string(),
        }
    }
}

/// A hub error inside a handler becomes the refusal its command is answered with, so `?`
/// works on hub calls in handlers.
impl From<HubError> for Refused {
    fn from(e: HubError) -> Self {
        match e {
            HubError::Refused(r) => r,
            other => Self::new(other.code().to_owned(), other.public_message()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeSet;

    use super::{HubError, InvalidEvent, InvalidTopic, Refused};
    use crate::ids::{ConnectionId, Topic};

    /// One error of each variant.
    pub(crate) fn every_variant() -> Vec<HubError> {
        let json = serde_json::from_str::<serde_json::Value>("{").err();
        let mut all = vec![
            HubError::InvalidTopic(InvalidTopic::Empty),
            HubError::InvalidEvent(InvalidEvent::Empty),
            HubError::InvalidTag(super::InvalidFilter::new("an empty key")),
            HubError::PayloadTooLarge { size: 2, limit: 1 },
            HubError::TooManyTopics { limit: 1 },
            HubError::TooManyCreated { limit: 1 },
            HubError::JsonTooDeep { limit: 1 },
            HubError::TooManySubscriptions { limit: 1 },
            HubError::NotJoined(ConnectionId::next()),
            HubError::AlreadyJoined(ConnectionId::next()),
            HubError::InboundRejected,
            HubError::Refused(Refused::forbidden("no")),
            HubError::NotSubscribed(Topic::new("t").expect("a valid topic")),
            HubError::QueueFull { limit: 1 },
            HubError::Unsupported("x"),
            HubError::Backend("down".into()),
        ];
        all.extend(json.map(HubError::Json));
        all
    }

    #[test]
    fn every_variant_has_a_listed_code_and_every_listed_code_a_variant() {
        let all = every_variant();
        let mut names: Vec<_> = all.iter().map(HubError::variant_name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 17, "one of each variant: {names:?}");
        for e in &all {
            if !matches!(e, HubError::Refused(_)) {
                assert!(HubError::CODES.contains(&e.code()), "{e:?}: {}", e.code());
            }
        }
        for code in HubError::CODES {
            assert!(
                all.iter().any(|e| e.code() == *code),
                "{code} is never answered"
            );
        }
    }

    /// Backticked `snake_case` words of `text`.
    fn codes_in(text: &str) -> BTreeSet<String> {
        text.split('`')
            .skip(1)
            .step_by(2)
            .filter(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
            .map(str::to_owned)
            .collect()
    }

    /// The codes in the first column of the doc-comment table whose header line is `header`.
    fn table_codes(source: &str, header: &str) -> BTreeSet<String> {
        let rows: Vec<&str> = source
            .lines()
            .skip_while(|l| l.trim() != header)
            .skip(2)
            .take_while(|l| l.trim_start().starts_with("//! |"))
            .collect();
        assert!(!rows.is_empty(), "no table {header:?}");
        rows.iter()
            .flat_map(|row| codes_in(row.split('|').nth(1).unwrap_or_default()))
            .collect()
    }

    /// The code literals `source` (outside comments and tests) passes to the calls that produce
    /// codes, each call with the position of its code argument.
    fn produced_codes(source: &str) -> BTreeSet<String> {
        let code: String = source
            .split("\n#[cfg(test)]\nmod tests")
            .next()
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let calls = [
            ("invalid(", 1),
            ("protocol::error(", 1),
            (".tell(", 2),
            ("Refused::new(", 0),
            ("code: ", usize::MAX),
        ];
        let mut found = BTreeSet::new();
        for (marker, position) in calls {
            for (at, _) in code.match_indices(marker) {
                let rest = &code[at + marker.len()..];
                let arg = if position == usize::MAX {
                    rest.split([',', '\n'])
                        .next()
                        .unwrap_or_default()
                        .to_owned()
                } else {
                    let mut depth = 0usize;
                    let mut args = vec![String::new()];
                    for c in rest.chars() {
                        match c {
                            '(' | '[' | '{' => depth += 1,
                            ')' | ']' | '}' if depth == 0 => break,
                            ')' | ']' | '}' => depth -= 1,
                            ',' if depth == 0 => {
                                args.push(String::new());
                                continue;
                            }
                            _ => {}
                        }
                        if let Some(last) = args.last_mut() {
                            last.push(c);
                        }
                    }
                    args.get(position).cloned().unwrap_or_default()
                };
                let arg = arg.trim();
                if let Some(literal) = arg.strip_prefix('"').and_then(|a| a.strip_suffix('"')) {
                    found.insert(literal.to_owned());
                }
            }
        }
        found
    }

    fn set(lists: &[&[&str]]) -> BTreeSet<String> {
        lists
            .iter()
            .flat_map(|l| l.iter().map(|c| (*c).to_owned()))
            .collect()
    }

    // One list of codes in the code, next to where they are produced (`HubError::CODES`,
    // `protocol::CODES`, `channel::CODES`); every code the code can emit is in the docs' tables,
    // and every code the tables list can be emitted.
    #[test]
    fn the_docs_list_exactly_the_codes_the_code_emits() {
        let protocol = set(&[crate::channel::protocol::CODES]);
        let channel = set(&[crate::channel::CODES]);
        let hub = set(&[HubError::CODES]);
        let all: BTreeSet<String> = protocol
            .iter()
            .chain(&channel)
            .chain(&hub)
            .cloned()
            .collect();

        // What the producing calls pass, literally: all listed, and the protocol's list all used.
        let sources = [
            include_str!("channel/protocol.rs"),
            include_str!("ws/mod.rs"),
            include_str!("ws/pump.rs"),
            include_str!("ws/close.rs"),
            include_str!("channel/mod.rs"),
            include_str!("channel/dispatch.rs"),
        ];
        let produced: BTreeSet<String> = sources.iter().flat_map(|s| produced_codes(s)).collect();
        let unlisted: Vec<_> = produced.difference(&all).collect();
        assert!(
            unlisted.is_empty(),
            "codes produced but in no list: {unlisted:?}"
        );
        let unused: Vec<_> = protocol.difference(&produced).collect();
        assert!(
            unused.is_empty(),
            "listed protocol codes nothing produces: {unused:?}"
        );

        // The channel protocol's table of codes (ws module docs).
        let ws = include_str!("ws/mod.rs");
        let table = table_codes(ws, "//! | code | meaning |");
        assert_eq!(table, all, "the ws docs' table of channel protocol codes");

        // The plain envelope's `error` frame: what `Hub::receive` may refuse with (all the
        // hub's codes but `too_large`, which closes 1009), Channels' publish handlers' codes,
        // and the rate limit's.
        let mut envelope: BTreeSet<String> =
            hub.iter().filter(|c| *c != "too_large").cloned().collect();
        envelope.extend(set(&[crate::channel::RECEIVE_CODES, &["rate_limited"]]));
        let table = table_codes(ws, "//! | `code` | meaning |");
        assert_eq!(
            table, envelope,
            "the ws docs' table of envelope `error` codes"
        );
        let readme = include_str!("../README.md");
        let row = readme
            .lines()
            .find(|l| l.starts_with("| `error` | `error`: "))
            .expect("the README's envelope `error` row");
        let listed = row
            .split_once("(code ")
            .and_then(|(_, rest)| rest.split_once(", or the own code"))
            .map_or("", |(list, _)| list);
        assert_eq!(
            codes_in(listed),
            envelope,
            "the README's envelope `error` codes"
        );
    }
}
