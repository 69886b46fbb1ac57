//! Key and channel names. Every key a script touches is named here and passed as `KEYS`.
//!
//! A topic's keys share a Redis Cluster hash tag, `{prefix:namespace:topic}`, so its meta,
//! history, channel and (for a room) presence live in one slot and one script can update them
//! atomically; the nodes' liveness keys share the tag `{prefix:nodes}`. On a single server the
//! braces are just characters.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{p:ns:topic}:meta` | hash | `epoch` (hex), `seq` (last offset), `bytes` (the history's size: its entries' wire forms summed) |
//! | `{p:ns:topic}:hist` | stream | the capped history; entry id `0-<offset>`, field `m` = wire form |
//! | `{p:ns:topic}:ch` | channel | every message's wire form, and the room's live-only notices (`PUBLISH`, or `SPUBLISH` on a cluster) |
//! | `{p:ns:topic}:dd` | hash | publish nonce -> the id it got, until the publish's deadline (a resent publish answers it) |
//! | `{p:ns:topic}:dz` | sorted set | the nonces of `dd`, scored by deadline (Unix ms): the expired ones leave |
//! | `{p:ns:room}:pc` | hash | `node\|user` -> that node's connections of the user |
//! | `{p:ns:room}:pd` | hash | users announced present (first join / last leave) -> their data |
//! | `{p:ns:room}:pz` | sorted set | the users of `pd`, all scored 0: paged in user id order (`ZRANGE BYLEX`), counted by `ZCARD` |
//! | `{p:ns:room}:pu` | hash | user -> its connections in the room over all nodes (the sum of its `pc` fields) |
//! | `{p:ns:room}:pk` | hash | `node\|connection` -> `seq user`: the memberships counted in `pc`, once each, with the sequence number of their join on the node |
//! | `{p:nodes}:alive` | sorted set | node -> when its heartbeat expires (Unix ms, Redis clock) |
//! | `{p:nodes}:rs:node` | hash | `ns:room` -> generation: rooms where a node may have members (for the sweep) |
//!
//! Presence is kept per namespace (`ns` is `rooms` for a [`Rooms`](crate::Rooms) hub's rooms),
//! as the [`Backend`](crate::backend::Backend) contract asks of every backend.
//!
//! A node is named `<node>.<incarnation>` (hex, then decimal): a node that Redis lost (a
//! restart, or swept as dead) comes back as its next incarnation.
//!
//! A topic name containing `}` ends the hash tag early: its keys still share a slot (they share
//! everything up to that brace). The prefix must not contain braces.

use crate::ids::Topic;

#[derive(Debug, Clone)]
pub(super) struct Keys {
    prefix: String,
}

/// The keys of one topic (of any namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TopicKeys {
    pub(super) meta: String,
    pub(super) hist: String,
    pub(super) channel: String,
    pub(super) nonces: String,
    pub(super) deadlines: String,
}

/// The presence keys of one room, next to the room's topic keys.
#[derive(Debug, Clone)]
pub(super) struct RoomKeys {
    pub(super) topic: TopicKeys,
    pub(super) counts: String,
    pub(super) present: String,
    pub(super) conns: String,
    pub(super) users: String,
    pub(super) totals: String,
}

impl RoomKeys {
    /// The keys of the presence scripts (`JOIN`, `LEAVE`, `EVICT`, `RECONCILE`), in their
    /// order: `pc`, `pd`, `pk`, `pz`, `pu`.
    pub(super) fn presence(&self) -> [&str; 5] {
        [
            &self.counts,
            &self.present,
            &self.conns,
            &self.users,
            &self.totals,
        ]
    }
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    fn tag(&self, namespace: &str, topic: &Topic) -> String {
        format!("{{{}:{namespace}:{topic}}}", self.prefix)
    }

    pub(super) fn topic(&self, namespace: &str, topic: &Topic) -> TopicKeys {
        let tag = self.tag(namespace, topic);
        TopicKeys {
            meta: format!("{tag}:meta"),
            hist: format!("{tag}:hist"),
            channel: format!("{tag}:ch"),
            nonces: format!("{tag}:dd"),
            deadlines: format!("{tag}:dz"),
        }
    }

    /// The presence keys of `room` in `namespace`, beside its topic keys.
    pub(super) fn room(&self, namespace: &str, room: &Topic) -> RoomKeys {
        let tag = self.tag(namespace, room);
        RoomKeys {
            topic: self.topic(namespace, room),
            counts: format!("{tag}:pc"),
            present: format!("{tag}:pd"),
            conns: format!("{tag}:pk"),
            users: format!("{tag}:pz"),
            totals: format!("{tag}:pu"),
        }
    }

    pub(super) fn alive(&self) -> String {
        format!("{{{}:nodes}}:alive", self.prefix)
    }

    pub(super) fn rooms_of(&self, node: &str) -> String {
        format!("{{{}:nodes}}:rs:{node}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash tag Redis Cluster hashes for a key.
    fn hashed(key: &str) -> &str {
        if let Some(open) = key.find('{')
            && let Some(len) = key[open + 1..].find('}')
            && len > 0
        {
            return &key[open + 1..open + 1 + len];
        }
        key
    }

    #[test]
    fn a_rooms_keys_share_one_hash_tag_and_topics_do_not_collide() {
        let keys = Keys::new("app");
        for name in ["lobby", "a}b", "x:meta", "{y}"] {
            let room = Topic::new(name).expect("valid");
            let r = keys.room("rooms", &room);
            let tag = hashed(&r.counts);
            for key in [
                &r.topic.meta,
                &r.topic.hist,
                &r.topic.channel,
                &r.topic.nonces,
                &r.topic.deadlines,
                &r.counts,
                &r.present,
                &r.conns,
                &r.users,
                &r.totals,
            ] {
                assert_eq!(hashed(key), tag, "{key}");
            }
        }
        assert_eq!(hashed(&keys.alive()), hashed(&keys.rooms_of("ab12")));
        let a = keys.topic("topics", &Topic::new("a").expect("valid"));
        let b = keys.topic("rooms", &Topic::new("a").expect("valid"));
        assert_ne!(a, b);
        // Presence too is kept per namespace.
        let a = keys.room("rooms", &Topic::new("a").expect("valid"));
        let b = keys.room("direct", &Topic::new("a").expect("valid"));
        assert_ne!(a.counts, b.counts);
    }
}
