//! The channel protocol's commands, as hub operations: what each command does, and how many
//! of one connection's run at once.

use std::task::{Context, Poll};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use super::protocol::{self, Command};
use crate::endpoint::Transport;
use crate::error::HubError;
use crate::hub::{Connection, Hub, Publication, TopicRequest};

/// How many `call`s of one connection may run at once; past it, reading pauses.
pub(crate) const MAX_CALLS: usize = 8;

/// A command being handled: its `ref` and what the hub answered.
pub(crate) type Done = (serde_json::Value, Result<serde_json::Value, HubError>);
pub(crate) type Pending<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Done> + Send + 'a>>;

/// The hub operation a command stands for.
pub(crate) fn handle<'a, H: Hub>(
    hub: &'a H,
    conn: &'a Connection,
    request: protocol::Request,
) -> Pending<'a> {
    let reference = request.reference;
    Box::pin(async move {
        let result = match request.command {
            Command::Subscribe {
                topic,
                from,
                data,
                filter,
            } => {
                let mut request = TopicRequest::new(topic.clone()).starting(from);
                request.data = data;
                if let Some(filter) = filter {
                    request = request.filter(filter);
                }
                let subscribed = hub.add_topic(conn, request).await;
                if let Err(HubError::Refused(_)) = &subscribed {
                    crate::metrics::refused(Transport::Channels.label(), "subscribe");
                }
                subscribed.map(|reply| protocol::subscribed(&topic, reply))
            }
            Command::Unsubscribe { topic } => hub
                .remove_topic(conn, &topic)
                .await
                .map(|was| serde_json::json!({ "topic": topic, "was_subscribed": was })),
            Command::Publish {
                topic,
                event,
                payload,
                echo,
            } => {
                let mut publication = Publication::new(payload).skip_origin(!echo);
                if let Some(event) = event {
                    publication = publication.event_name_checked(event);
                }
                hub.publish_from(conn, &topic, publication)
                    .await
                    .map(protocol::published)
            }
            Command::Call { method, data } => hub.call(conn, &method, data).await,
            // The endpoint answers a refresh itself; one that reaches a hub has no endpoint.
            Command::Refresh { .. } => Err(HubError::Unsupported("refreshing an identity")),
        };
        (reference, result)
    })
}

/// One connection's channel commands in flight: `subscribe`, `unsubscribe` and `publish` run
/// one at a time, in the order sent (`ordered`); `call`s run beside them and each other, up to
/// [`MAX_CALLS`]. A command's `ref` is in flight from its start until its answer is taken,
/// and a second command with that `ref` meanwhile is refused (`duplicate_ref`).
pub(crate) struct Commands<'a> {
    ordered: Option<Pending<'a>>,
    /// Created on the first call: most connections never make one, and an empty set still
    /// allocates.
    calls: Option<FuturesUnordered<Pending<'a>>>,
    in_flight: Vec<String>,
}

impl<'a> Commands<'a> {
    pub(crate) fn new() -> Self {
        Self {
            ordered: None,
            calls: None,
            in_flight: Vec::new(),
        }
    }

    /// Whether another command may be read now: none of the ordered ones runs and the calls
    /// are under their limit (else reading pauses, and the client's frames wait in TCP).
    pub(crate) fn accepting(&self) -> bool {
        self.ordered.is_none() && self.calls.as_ref().map_or(0, FuturesUnordered::len) < MAX_CALLS
    }

    /// Whether a command runs.
    pub(crate) fn running(&self) -> bool {
        self.ordered.is_some() || self.calls.as_ref().is_some_and(|c| !c.is_empty())
    }

    /// Starts `request` on `hub`. A `ref` still in flight refuses it: `Err` holds the
    /// `duplicate_ref` reply to send.
    pub(crate) fn start<H: Hub>(
        &mut self,
        hub: &'a H,
        conn: &'a Connection,
        request: protocol::Request,
    ) -> Result<(), String> {
        let key = request.key();
        if self.in_flight.contains(&key) {
            let message = "a command with this ref is still in flight";
            return Err(protocol::error(
                Some(&request.reference),
                "duplicate_ref",
                message,
            ));
        }
        self.in_flight.push(key);
        let is_call = request.command.is_call();
        let pending = handle(hub, conn, request);
        if is_call {
            self.calls
                .get_or_insert_with(FuturesUnordered::new)
                .push(pending);
        } else {
            self.ordered = Some(pending);
        }
        Ok(())
    }

    /// The next command to finish (the ordered one first), its `ref` no longer in flight.
    pub(crate) fn poll_done(&mut self, cx: &mut Context<'_>) -> Poll<Done> {
        if let Some(command) = self.ordered.as_mut()
            && let Poll::Ready(done) = command.as_mut().poll(cx)
        {
            self.ordered = None;
            return Poll::Ready(self.finished(done));
        }
        if let Some(calls) = self.calls.as_mut()
            && let Poll::Ready(Some(done)) = calls.poll_next_unpin(cx)
        {
            return Poll::Ready(self.finished(done));
        }
        Poll::Pending
    }

    fn finished(&mut self, done: Done) -> Done {
        let key = done.0.to_string();
        self.in_flight.retain(|k| *k != key);
        done
    }
}
