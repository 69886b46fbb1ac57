//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use futures_util::{FutureExt, Stream, StreamExt};
use salvo_realtime::{Delivery, Message};

/// Everything the stream has ready now, without waiting (the in-memory hubs deliver
/// synchronously, so this is exact).
pub fn ready<S: Stream<Item = Delivery> + Unpin>(sub: &mut S) -> Vec<Delivery> {
    let mut out = Vec::new();
    while let Some(Some(d)) = sub.next().now_or_never() {
        out.push(d);
    }
    out
}

/// Only the messages among `deliveries`.
pub fn messages(deliveries: &[Delivery]) -> Vec<Message> {
    deliveries
        .iter()
        .filter_map(|d| match d {
            Delivery::Message(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

/// The text payloads of the messages among `deliveries`.
pub fn texts(deliveries: &[Delivery]) -> Vec<String> {
    messages(deliveries)
        .iter()
        .map(|m| m.payload().as_text().unwrap_or("<binary>").to_owned())
        .collect()
}

/// The offsets of the messages among `deliveries`.
pub fn offsets(deliveries: &[Delivery]) -> Vec<u64> {
    messages(deliveries)
        .iter()
        .map(|m| m.id().offset())
        .collect()
}
