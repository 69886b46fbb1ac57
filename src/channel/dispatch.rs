//! The channel protocol's commands, as hub operations: what each command does, and how many
//! of one connection's run at once.

use crate::endpoint::Transport;
use crate::error::HubError;
use crate::hub::{Connection, Hub, Publication};
use crate::protocol::{self, Command};

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
            Command::Subscribe { topic, from, data } => {
                let subscribed = hub.add_topic(conn, &topic, from, data.as_ref()).await;
                if let Err(HubError::Refused(_)) = &subscribed {
                    crate::metrics::refused(Transport::Channels, "subscribe");
                }
                subscribed.map(|()| serde_json::json!({ "topic": topic }))
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
                    .map(|id| serde_json::json!({ "id": id }))
            }
            Command::Call { method, data } => hub.call(conn, &method, data).await,
        };
        (reference, result)
    })
}
