//! The node's background tasks: the pub/sub connection (subscriptions, incoming messages,
//! reconnects) and the heartbeat (presence refresh, dead-node sweep).

use std::sync::Weak;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::PubSubSink;
use tokio::sync::{mpsc, oneshot};

use super::{Failure, Shared, within};
use crate::error::HubError;
use crate::hub::{Applied, Topic};

/// Longest pause between two reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

pub(super) enum Command {
    /// Subscribe (if not yet), then sync the mirror's log; answer when done.
    Attach {
        channel: String,
        namespace: &'static str,
        topic: Topic,
        reply: oneshot::Sender<Result<(), HubError>>,
    },
    /// The mirror freed the topic's log: unsubscribe unless it was attached again.
    Detach { channel: String },
}

/// Owns the pub/sub connection. Every change to a mirror happens here, in the order Redis
/// published, so an attach's sync can't race with the messages that follow it.
pub(super) async fn pubsub(
    weak: Weak<Shared>,
    client: redis::Client,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut first = true;
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some((timeout, every)) = weak
            .upgrade()
            .map(|s| (s.config.timeout, s.config.heartbeat))
        else {
            return;
        };
        let (mut sink, mut stream) = match within(timeout, client.get_async_pubsub()).await {
            Ok(pubsub) => pubsub.split(),
            Err(e) => {
                tracing::debug!(error = %e, "redis pub/sub: connect failed; retrying");
                if !wait_disconnected(&weak, &mut commands, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let channels: Vec<String> = shared.subscribed.lock().keys().cloned().collect();
        if !channels.is_empty() && within(timeout, sink.subscribe(&channels)).await.is_err() {
            continue;
        }
        if !first {
            tracing::info!(
                channels = channels.len(),
                "redis pub/sub: reconnected and resubscribed"
            );
            let topics: Vec<_> = shared.subscribed.lock().values().cloned().collect();
            for (namespace, topic) in topics {
                if let Some(mirror) = shared.mirror(namespace)
                    && let Err(e) = shared.resync(&mirror, &topic).await
                {
                    tracing::warn!(topic = %topic, error = %e, "redis: catching up failed");
                }
            }
        }
        drop(shared);
        first = false;
        backoff = Duration::from_millis(50);
        let mut ping = tokio::time::interval(every);
        ping.tick().await;
        loop {
            tokio::select! {
                command = commands.recv() => {
                    let (Some(command), Some(shared)) = (command, weak.upgrade()) else {
                        return;
                    };
                    if !shared.handle(&mut sink, command).await {
                        break;
                    }
                }
                message = stream.next() => {
                    let Some(message) = message else { break };
                    let Some(shared) = weak.upgrade() else { return };
                    shared.deliver(&message).await;
                }
                _ = ping.tick() => {
                    if within(timeout, sink.ping::<redis::Value>()).await.is_err() {
                        break;
                    }
                }
            }
        }
        tracing::warn!("redis pub/sub: connection lost; reconnecting");
    }
}

/// Waits `delay` before the next connect attempt, answering commands meanwhile: attaching
/// fails fast while the subscription is down.
async fn wait_disconnected(
    weak: &Weak<Shared>,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    delay: Duration,
) -> bool {
    let sleep = tokio::time::sleep(delay);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            () = &mut sleep => return true,
            command = commands.recv() => match command {
                None => return false,
                Some(Command::Attach { reply, .. }) => {
                    let _ = reply.send(Err(Failure::NotSubscribed.into()));
                }
                Some(Command::Detach { channel }) => {
                    let Some(shared) = weak.upgrade() else { return false };
                    if !shared.in_use(&channel) {
                        shared.subscribed.lock().remove(&channel);
                    }
                }
            },
        }
    }
}

impl Shared {
    /// Whether a subscribed channel's topic still has a local log.
    fn in_use(&self, channel: &str) -> bool {
        let Some((namespace, topic)) = self.subscribed.lock().get(channel).cloned() else {
            return false;
        };
        self.mirror(namespace)
            .is_some_and(|mirror| mirror.is_attached(&topic))
    }

    /// Handles a command; false if the connection failed.
    async fn handle(&self, sink: &mut PubSubSink, command: Command) -> bool {
        let timeout = self.config.timeout;
        match command {
            Command::Attach {
                channel,
                namespace,
                topic,
                reply,
            } => {
                let Some(mirror) = self.mirror(namespace) else {
                    let _ = reply.send(Err(Failure::NotSubscribed.into()));
                    return true;
                };
                let known = self.subscribed.lock().contains_key(&channel);
                if !known {
                    if let Err(e) = within(timeout, sink.subscribe(&channel)).await {
                        let _ = reply.send(Err(e.into()));
                        return false;
                    }
                    self.subscribed
                        .lock()
                        .insert(channel.clone(), (namespace, topic.clone()));
                }
                let result = self.resync(&mirror, &topic).await;
                let failed = result.is_err();
                let _ = reply.send(result);
                if failed {
                    return self.unsubscribe_unused(sink, channel).await;
                }
                true
            }
            Command::Detach { channel } => self.unsubscribe_unused(sink, channel).await,
        }
    }

    async fn unsubscribe_unused(&self, sink: &mut PubSubSink, channel: String) -> bool {
        if self.in_use(&channel) || self.subscribed.lock().remove(&channel).is_none() {
            return true;
        }
        within(self.config.timeout, sink.unsubscribe(&channel))
            .await
            .is_ok()
    }

    /// Applies a published message to its mirror; a gap or a new epoch makes it catch up from
    /// the history.
    async fn deliver(&self, message: &redis::Msg) {
        let Some((namespace, topic)) = self
            .subscribed
            .lock()
            .get(message.get_channel_name())
            .cloned()
        else {
            return;
        };
        let Some(mirror) = self.mirror(namespace) else {
            return;
        };
        let Some(decoded) = super::wire::decode(message.get_payload_bytes(), self.node) else {
            tracing::warn!(topic = %topic, "redis: undecodable message ignored");
            return;
        };
        if let Applied::Gap { .. } | Applied::OtherEpoch { .. } = mirror.apply(&decoded)
            && let Err(e) = self.resync(&mirror, &topic).await
        {
            tracing::warn!(topic = %topic, error = %e, "redis: catching up failed");
        }
    }
}

/// Refreshes the node's presence and sweeps dead nodes, every heartbeat.
pub(super) async fn heartbeat(weak: Weak<Shared>) {
    let Some(every) = weak.upgrade().map(|s| s.config.heartbeat) else {
        return;
    };
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        interval.tick().await;
        let Some(shared) = weak.upgrade() else {
            return;
        };
        if let Err(e) = shared.heartbeat().await {
            tracing::warn!(error = %e, "redis: heartbeat failed");
        }
    }
}
