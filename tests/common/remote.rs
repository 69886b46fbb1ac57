//! A "remote" backend kept in memory, for hub tests that drive the seam as a remote backend
//! does (and need a log to be lost, or a log freed once nobody here follows it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use salvo_realtime::backend::{Backend, MembersPage, Mirror};
use salvo_realtime::error::HubError;
use salvo_realtime::hub::Epoch;
use salvo_realtime::{ConnectionId, Identity, Message, MessageId, Publication, Topic};

/// Each remote log by (namespace, topic): its epoch and its messages.
type Logs = HashMap<(&'static str, Topic), (Epoch, Vec<Message>)>;

/// Logs kept here, ids assigned here, the mirror fed by `sync` and `apply` only, like a real
/// remote backend: hands every message to the mirror at once, and lets a test replace a
/// topic's remote log with one of a new epoch (a Redis that lost its data). No presence: every
/// presence call is a no-op.
#[derive(Default)]
pub struct Remote {
    logs: Mutex<Logs>,
    /// The mirror of the last attach in each namespace, for tests that act as the backend would.
    mirrors: Mutex<HashMap<&'static str, Mirror>>,
    detached: AtomicUsize,
}

impl Remote {
    /// How many times the hub told this backend it stopped following a topic.
    pub fn detached(&self) -> usize {
        self.detached.load(Ordering::SeqCst)
    }

    /// The mirror of the last attach in `namespace` (`"topics"` for `PubSub`, `"rooms"` for
    /// `Rooms`).
    pub fn mirror(&self, namespace: &str) -> Mirror {
        self.mirrors
            .lock()
            .get(namespace)
            .cloned()
            .expect("attached")
    }

    /// The remote log of `topic` in `namespace` is lost and starts anew (a new epoch); the
    /// node's mirror learns of it as a backend would after a reconnect.
    pub fn lose(&self, namespace: &'static str, topic: &str) {
        let topic = Topic::new(topic).expect("topic");
        let epoch = Epoch::random();
        self.logs
            .lock()
            .insert((namespace, topic.clone()), (epoch, Vec::new()));
        self.mirror(namespace)
            .sync(&topic, epoch, 0, &[])
            .expect("synced");
    }
}

impl Backend for Remote {
    async fn publish(
        &self,
        mirror: &Mirror,
        topic: &Topic,
        p: Publication,
    ) -> Result<MessageId, HubError> {
        let message = {
            let mut logs = self.logs.lock();
            let (epoch, log) = logs
                .entry((mirror.namespace(), topic.clone()))
                .or_insert((Epoch::random(), Vec::new()));
            let id = MessageId::new(*epoch, log.len() as u64 + 1);
            let m = Message::remote(topic.clone(), id, p, 0);
            log.push(m.clone());
            m
        };
        let _ = mirror.apply(&message);
        Ok(message.id())
    }

    async fn attach(&self, mirror: &Mirror, topic: &Topic) -> Result<(), HubError> {
        self.mirrors
            .lock()
            .insert(mirror.namespace(), mirror.clone());
        let (epoch, history) = {
            let mut logs = self.logs.lock();
            let (epoch, log) = logs
                .entry((mirror.namespace(), topic.clone()))
                .or_insert((Epoch::random(), Vec::new()));
            (*epoch, log.clone())
        };
        mirror.sync(topic, epoch, history.len() as u64, &history)?;
        Ok(())
    }

    fn detach(&self, _mirror: &Mirror, _topic: &Topic) {
        self.detached.fetch_add(1, Ordering::SeqCst);
    }

    async fn presence_add(
        &self,
        _: &Mirror,
        _: &Topic,
        _: ConnectionId,
        _: &Identity,
        _: Option<Publication>,
    ) -> Result<bool, HubError> {
        Ok(false)
    }

    async fn presence_remove(
        &self,
        _: &Mirror,
        _: &Topic,
        _: ConnectionId,
        _: &Identity,
        _: Option<Publication>,
    ) -> Result<bool, HubError> {
        Ok(false)
    }

    async fn members(
        &self,
        _: &Mirror,
        _: &Topic,
        _: Option<&str>,
        _: usize,
    ) -> Result<MembersPage, HubError> {
        Ok(MembersPage::default())
    }

    async fn member_count(&self, _: &Mirror, _: &Topic) -> Result<usize, HubError> {
        Ok(0)
    }
}
