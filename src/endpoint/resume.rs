//! Where each topic's delivery starts: `recent`, and the resume ids a request carries.

use salvo::Request;

use super::Transport;
use crate::MessageId;
use crate::hub::Position;
use crate::ids::Topic;

/// The resume ids a request carries, each with the topic it names, if it names one.
pub(super) fn resume_values(req: &Request, transport: Transport) -> Vec<String> {
    match transport {
        Transport::WebSocket | Transport::Channels => {
            req.queries().get_vec("last").cloned().unwrap_or_default()
        }
        Transport::EventStream => req
            .headers()
            .get(LAST_EVENT_ID)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .filter(|s| !s.is_empty())
            .or_else(|| req.query::<String>(LAST_EVENT_ID_QUERY))
            .into_iter()
            .collect(),
    }
}

/// The request header a reconnecting `EventSource` sends.
const LAST_EVENT_ID: &str = "last-event-id";
/// The query parameter that stands in for it.
const LAST_EVENT_ID_QUERY: &str = "lastEventId";

/// Where each topic starts. `resume` holds ids as clients send them: `<topic>:<id>` names its
/// topic (any requested topic, or the connection's own direct log `@<user>`, which is then
/// added) by the part before the last `:`; one naming another topic (a room the server put the
/// connection in, say) is ignored. A bare `<id>`, or a value whose part before the last `:`
/// names no requested topic, applies when the request has exactly one topic. An id that
/// doesn't parse gives [`Position::Invalid`] (a reset, never a refusal: a stale id must not
/// lock a client out), for the topic it names whatever the number of topics. Topics without
/// an id start at `base`.
pub(crate) fn positions(
    topics: &[Topic],
    own_direct: Option<&Topic>,
    base: Position,
    resume: &[String],
) -> Vec<(Topic, Position)> {
    let mut out: Vec<(Topic, Position)> = topics.iter().map(|t| (t.clone(), base)).collect();
    let parse = |id: &str| {
        id.parse::<MessageId>()
            .map_or(Position::Invalid, Position::After)
    };
    for value in resume.iter().filter(|v| !v.is_empty()) {
        let named = value.rsplit_once(':').and_then(|(name, id)| {
            let topic = topics
                .iter()
                .chain(own_direct)
                .find(|t| t.as_str() == name)?;
            Some((topic, id))
        });
        match named {
            Some((topic, id)) => match out.iter_mut().find(|(t, _)| t == topic) {
                Some(entry) => entry.1 = parse(id),
                None => out.push((topic.clone(), parse(id))),
            },
            // A valid id after a `:` that names no topic of this request: another topic's.
            None if value
                .rsplit_once(':')
                .is_some_and(|(_, id)| id.parse::<MessageId>().is_ok()) => {}
            None if topics.len() == 1 => out[0].1 = parse(value),
            None => {}
        }
    }
    out
}
