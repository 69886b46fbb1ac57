//! What the hubs accept from a connection: the payload limit, the JSON depth limit, and the
//! publication a client's frame becomes under the hub's [`InboundPolicy`].
//!
//! Server code is trusted with any depth ([`check_payload`] only); what a client sends passes
//! [`check_inbound`] too, so a frame nested too deep never reaches other clients' parsers.

use std::sync::Arc;

use super::config::InboundPolicy;
use super::{Connection, Payload, Publication};
use crate::error::HubError;

/// How deep JSON may nest to travel as JSON: a text payload nested deeper is refused from
/// clients ([`HubError::JsonTooDeep`]) and embedded in envelopes as a plain string. Many JSON
/// parsers give up at a few hundred levels; 64 is far beyond what real data needs.
pub const MAX_JSON_DEPTH: usize = 64;

/// Refuses a payload over `limit` bytes.
pub(crate) fn check_payload(payload: &Payload, limit: usize) -> Result<(), HubError> {
    if payload.len() > limit {
        Err(HubError::PayloadTooLarge {
            size: payload.len(),
            limit,
        })
    } else {
        Ok(())
    }
}

/// Refuses a publication that was built wrong (see [`Publication::check`]) or whose payload is
/// over `limit` bytes.
pub(crate) fn check_publication(publication: &Publication, limit: usize) -> Result<(), HubError> {
    publication.check()?;
    check_payload(publication.payload(), limit)
}

/// [`check_payload`] for what a connection sends, which also may not be JSON nested deeper
/// than [`MAX_JSON_DEPTH`](crate::hub::MAX_JSON_DEPTH).
pub(crate) fn check_inbound(payload: &Payload, limit: usize) -> Result<(), HubError> {
    check_payload(payload, limit)?;
    if too_deep(payload) {
        return Err(HubError::JsonTooDeep {
            limit: MAX_JSON_DEPTH,
        });
    }
    Ok(())
}

pub(crate) fn inbound_publication(
    conn: &Connection,
    message: Publication,
    policy: InboundPolicy,
) -> Result<Publication, HubError> {
    message.check()?;
    let mut p = message.origin(conn.id());
    if let Some(identity) = conn.identity() {
        p = p.sender(Arc::clone(identity.user_arc()));
    }
    match policy {
        InboundPolicy::Publish => Ok(p),
        InboundPolicy::PublishExceptSender => Ok(p.skip_origin(true)),
        InboundPolicy::Reject => Err(HubError::InboundRejected),
    }
}

/// The deepest nesting of `[` and `{` in `text` outside strings: an upper bound of its depth
/// as JSON, found without parsing (and without recursion).
pub(crate) fn json_depth(text: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in text.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Whether `payload` is JSON text nested deeper than [`MAX_JSON_DEPTH`].
pub(crate) fn too_deep(payload: &Payload) -> bool {
    payload.as_text().is_some_and(|text| {
        json_depth(text) > MAX_JSON_DEPTH
            && serde_json::from_str::<&serde_json::value::RawValue>(text).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_depth_counts_nesting_outside_strings() {
        assert_eq!(json_depth("1"), 0);
        assert_eq!(json_depth(r#"{"a":[1,{"b":2}]}"#), 3);
        assert_eq!(json_depth(r#"["[[[[", "\"[["]"#), 1);
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert!(too_deep(&Payload::text(deep)));
        let ok = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert!(!too_deep(&Payload::text(ok)));
        // Not JSON: plain text full of brackets is just text.
        assert!(!too_deep(&Payload::text("[".repeat(100))));
    }
}
