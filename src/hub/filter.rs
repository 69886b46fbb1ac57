//! Tags on messages and the filters subscribers pass to receive only some of a topic's
//! messages (a ticker's symbols, a feed's categories). A filter is checked where a
//! subscriber's stream of a topic takes each message: nothing is re-encoded, and a message
//! that passes is written from the same shared frame as for everyone else.

use std::fmt;
use std::sync::Arc;

use serde_json::Value;

/// Most tags on one message.
pub(crate) const MAX_TAGS: usize = 8;
/// Longest tag key, in bytes.
const MAX_KEY: usize = 32;
/// Longest tag value, in bytes.
const MAX_VALUE: usize = 128;
/// Longest filter, as JSON text.
pub(crate) const MAX_FILTER_BYTES: usize = 4096;
/// Most values one filter lists, over all its keys.
const MAX_FILTER_VALUES: usize = 256;

use crate::error::InvalidFilter;

fn invalid(message: impl Into<String>) -> InvalidFilter {
    InvalidFilter::new(message)
}

/// A tag key: 1 to 32 bytes of ASCII letters, digits, `_`, `-` and `.`.
fn check_key(key: &str) -> Result<(), InvalidFilter> {
    let ok = !key.is_empty()
        && key.len() <= MAX_KEY
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    ok.then_some(()).ok_or_else(|| {
        invalid(format!(
            "tag key {key:?}: 1 to {MAX_KEY} of a-z A-Z 0-9 _ - ."
        ))
    })
}

fn check_value(value: &str) -> Result<(), InvalidFilter> {
    (value.len() <= MAX_VALUE)
        .then_some(())
        .ok_or_else(|| invalid(format!("a tag value is at most {MAX_VALUE} bytes")))
}

/// A message's tags (see [`Publication::tag`](super::Publication::tag)): at most 8
/// `key: value` pairs, keys unique.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct Tags(Option<Box<[Tag]>>);

/// One tag: its key and value.
type Tag = (Box<str>, Box<str>);

impl fmt::Debug for Tags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Tags {
    /// Sets `key` to `value`, checked.
    pub(crate) fn set(&mut self, key: &str, value: &str) -> Result<(), InvalidFilter> {
        check_key(key)?;
        check_value(value)?;
        let mut tags: Vec<_> = self.0.take().map(Vec::from).unwrap_or_default();
        let full = tags.len() >= MAX_TAGS;
        let result = match tags.iter_mut().find(|(k, _)| &**k == key) {
            Some(entry) => {
                entry.1 = value.into();
                Ok(())
            }
            None if full => Err(invalid(format!("a message has at most {MAX_TAGS} tags"))),
            None => {
                tags.push((key.into(), value.into()));
                Ok(())
            }
        };
        self.0 = (!tags.is_empty()).then(|| tags.into_boxed_slice());
        result
    }

    /// The value of `key`, if set.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().flatten().map(|(k, v)| (&**k, &**v))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

/// Which of a topic's messages a subscriber receives: those whose tags match, for every key
/// the filter names, one of the values it lists. In the channel protocol (a `subscribe`'s
/// `filter`) and a connect-time `filter=` query parameter it is written as JSON:
///
/// ```json
/// {"tags": {"ticker": ["AAPL", "MSFT"]}}
/// ```
///
/// A message without a tag the filter names doesn't pass. Presence notices, resets and lag
/// notices aren't messages of the topic and always pass. Limits: at most 4 KiB of JSON, 8
/// keys, 256 values in all; a connection holds at most one filter per topic it follows, so at
/// most [`max_subscriptions`](crate::HubConfig::max_subscriptions) of them (64 by default).
/// The check costs a subscriber's stream a few comparisons per message, and nothing for
/// streams without a filter.
///
/// ```
/// use salvo_realtime::hub::Filter;
///
/// let f = Filter::parse(r#"{"tags":{"ticker":["AAPL","MSFT"]}}"#)?;
/// assert_eq!(f, Filter::new().tag("ticker", ["AAPL", "MSFT"])?);
/// # Ok::<(), salvo_realtime::error::InvalidFilter>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Sorted by key, each key once, each with its values.
    tags: Vec<Condition>,
}

impl Filter {
    /// A filter that passes everything, to add [`tag`](Self::tag) conditions to.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Passes only messages whose tag `key` is one of `values` (replacing an earlier condition
    /// on `key`).
    ///
    /// # Errors
    ///
    /// [`InvalidFilter`] for a bad key (1 to 32 of `a-z A-Z 0-9 _ - .`), a value over 128
    /// bytes, more than 8 keys or 256 values.
    pub fn tag<V: AsRef<str>>(
        mut self,
        key: &str,
        values: impl IntoIterator<Item = V>,
    ) -> Result<Self, InvalidFilter> {
        check_key(key)?;
        let values = values
            .into_iter()
            .map(|v| check_value(v.as_ref()).map(|()| Box::from(v.as_ref())))
            .collect::<Result<Box<[_]>, _>>()?;
        self.tags.retain(|(k, _)| &**k != key);
        self.tags.push((key.into(), values));
        self.tags.sort_by(|a, b| a.0.cmp(&b.0));
        if self.tags.len() > MAX_TAGS {
            return Err(invalid(format!("a filter names at most {MAX_TAGS} tags")));
        }
        if self.tags.iter().map(|(_, v)| v.len()).sum::<usize>() > MAX_FILTER_VALUES {
            return Err(invalid(format!(
                "a filter lists at most {MAX_FILTER_VALUES} values"
            )));
        }
        Ok(self)
    }

    /// Reads a filter from its JSON text (`{"tags": {"key": ["value", ..]}}`).
    ///
    /// # Errors
    ///
    /// [`InvalidFilter`] if the text is over 4 KiB, isn't that shape, or breaks a limit of
    /// [`tag`](Self::tag).
    pub fn parse(text: &str) -> Result<Self, InvalidFilter> {
        if text.len() > MAX_FILTER_BYTES {
            return Err(invalid(format!(
                "a filter is at most {MAX_FILTER_BYTES} bytes of JSON"
            )));
        }
        let value: Value =
            serde_json::from_str(text).map_err(|e| invalid(format!("not JSON: {e}")))?;
        Self::from_json(&value)
    }

    /// [`parse`](Self::parse) for a filter already read as JSON.
    ///
    /// # Errors
    ///
    /// As [`parse`](Self::parse).
    pub fn from_json(value: &Value) -> Result<Self, InvalidFilter> {
        let shape = || invalid(r#"a filter is {"tags": {"<key>": ["<value>", ..]}}"#);
        if value.to_string().len() > MAX_FILTER_BYTES {
            return Err(invalid(format!(
                "a filter is at most {MAX_FILTER_BYTES} bytes of JSON"
            )));
        }
        let object = value.as_object().ok_or_else(shape)?;
        if object.keys().any(|k| k != "tags") {
            return Err(shape());
        }
        let mut filter = Self::new();
        let Some(tags) = object.get("tags") else {
            return Ok(filter);
        };
        for (key, values) in tags.as_object().ok_or_else(shape)? {
            let values = values.as_array().ok_or_else(shape)?;
            let values: Vec<&str> = values
                .iter()
                .map(|v| v.as_str().ok_or_else(shape))
                .collect::<Result<_, _>>()?;
            filter = filter.tag(key, values)?;
        }
        Ok(filter)
    }

    /// Whether it passes every message (no condition).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }

    /// Whether a message tagged `tags` passes.
    pub(crate) fn passes(&self, tags: &Tags) -> bool {
        self.tags.iter().all(|(key, values)| {
            tags.get(key)
                .is_some_and(|v| values.iter().any(|want| **want == *v))
        })
    }
}

/// One condition of a filter: a tag key and the values that pass.
type Condition = (Box<str>, Box<[Box<str>]>);

/// A filter shared by the streams it applies to; `None` passes everything.
pub(crate) type SharedFilter = Option<Arc<Filter>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> Tags {
        let mut t = Tags::default();
        for (k, v) in pairs {
            t.set(k, v).expect("valid");
        }
        t
    }

    #[test]
    fn a_message_passes_when_every_named_tag_has_a_listed_value() {
        let f =
            Filter::parse(r#"{"tags":{"ticker":["AAPL","MSFT"],"venue":["X"]}}"#).expect("valid");
        assert!(f.passes(&tags(&[("ticker", "AAPL"), ("venue", "X")])));
        assert!(f.passes(&tags(&[("venue", "X"), ("ticker", "MSFT"), ("other", "1")])));
        assert!(!f.passes(&tags(&[("ticker", "GOOG"), ("venue", "X")])));
        assert!(!f.passes(&tags(&[("ticker", "AAPL")])), "venue missing");
        assert!(!f.passes(&Tags::default()));
        assert!(Filter::new().passes(&Tags::default()), "no condition");
        assert!(Filter::parse(r#"{"tags":{}}"#).expect("empty").is_empty());
    }

    #[test]
    fn bad_filters_are_refused_with_a_reason() {
        let long = format!(r#"{{"tags":{{"k":["{}"]}}}}"#, "v".repeat(MAX_FILTER_BYTES));
        let many_keys = format!(
            r#"{{"tags":{{{}}}}}"#,
            (0..9)
                .map(|i| format!(r#""k{i}":["v"]"#))
                .collect::<Vec<_>>()
                .join(",")
        );
        let many_values = format!(
            r#"{{"tags":{{"k":[{}]}}}}"#,
            (0..257)
                .map(|i| format!(r#""{i}""#))
                .collect::<Vec<_>>()
                .join(",")
        );
        for bad in [
            "nope",
            "[]",
            r#"{"tags":[]}"#,
            r#"{"tags":{"k":"v"}}"#,
            r#"{"tags":{"k":[1]}}"#,
            r#"{"tags":{"bad key":["v"]}}"#,
            r#"{"tags":{"k":["v"]},"other":1}"#,
            &long,
            &many_keys,
            &many_values,
        ] {
            assert!(Filter::parse(bad).is_err(), "{bad:.60}");
        }
    }

    #[test]
    fn tags_are_checked_and_replace_by_key() {
        let mut t = Tags::default();
        t.set("a", "1").expect("valid");
        t.set("a", "2").expect("replaces");
        assert_eq!(t.get("a"), Some("2"));
        assert!(t.set("", "x").is_err());
        assert!(t.set("k", &"v".repeat(MAX_VALUE + 1)).is_err());
        for i in 1..MAX_TAGS {
            t.set(&format!("k{i}"), "v").expect("within the limit");
        }
        assert!(t.set("one-more", "v").is_err());
        assert_eq!(t.iter().count(), MAX_TAGS);
    }
}
