//! Join latency into a room that already has 10 / 1,000 / 100,000 members, in each presence
//! mode: one connection joins (`Rooms::join`: subscribe, count it in presence, read the
//! snapshot) and leaves again, so the room stays the same size. The members are put in through
//! the backend seam directly (as members on other nodes would be), so setting up a 100,000-member
//! room doesn't itself cost 100,000 joins.
//!
//! Baseline in the same group: `Off` (no presence at all), the cost of a join without presence.
//!
//! Run `cargo bench --bench presence`. See BENCHMARKS.md for the figures.
#![allow(missing_docs)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use salvo_realtime::backend::{Backend, Local, MembersPage, Mirror};
use salvo_realtime::error::HubError;
use salvo_realtime::hub::PresenceMode;
use salvo_realtime::{
    Connection, ConnectionId, Hub, HubConfig, Identity, MessageId, Position, Publication, Rooms,
    Topic,
};

/// `Local`, which on its first attach of a room counts `members` users into its presence.
struct Prefilled {
    local: Local,
    members: usize,
    filled: AtomicUsize,
}

impl Backend for Prefilled {
    async fn publish(&self, m: &Mirror, t: &Topic, p: Publication) -> Result<MessageId, HubError> {
        self.local.publish(m, t, p).await
    }

    async fn attach(&self, m: &Mirror, t: &Topic) -> Result<(), HubError> {
        self.local.attach(m, t).await?;
        if self.filled.swap(1, Ordering::SeqCst) == 0 {
            for i in 0..self.members {
                let identity = Identity::new(format!("member{i:06}"));
                self.local
                    .presence_add(m, t, ConnectionId::next(), &identity, None)
                    .await?;
            }
        }
        Ok(())
    }

    fn detach(&self, m: &Mirror, t: &Topic) {
        self.local.detach(m, t);
    }

    async fn presence_add(
        &self,
        m: &Mirror,
        room: &Topic,
        conn: ConnectionId,
        identity: &Identity,
        announce: Option<Publication>,
    ) -> Result<bool, HubError> {
        self.local
            .presence_add(m, room, conn, identity, announce)
            .await
    }

    async fn presence_remove(
        &self,
        m: &Mirror,
        room: &Topic,
        conn: ConnectionId,
        identity: &Identity,
        announce: Option<Publication>,
    ) -> Result<bool, HubError> {
        self.local
            .presence_remove(m, room, conn, identity, announce)
            .await
    }

    async fn members(
        &self,
        m: &Mirror,
        room: &Topic,
        after: Option<&str>,
        limit: usize,
    ) -> Result<MembersPage, HubError> {
        self.local.members(m, room, after, limit).await
    }

    async fn member_count(&self, m: &Mirror, room: &Topic) -> Result<usize, HubError> {
        self.local.member_count(m, room).await
    }

    fn idle_ttl(&self, configured: Duration) -> Duration {
        self.local.idle_ttl(configured)
    }
}

fn join_latency(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("presence_join");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    for members in [10usize, 1_000, 100_000] {
        for (name, mode) in [
            ("full", PresenceMode::Full),
            ("count", PresenceMode::Count),
            ("off", PresenceMode::Off),
        ] {
            let rooms = Rooms::with_backend(
                HubConfig::new().presence_mode(mode),
                Prefilled {
                    local: Local::default(),
                    members,
                    filled: AtomicUsize::new(0),
                },
            );
            // One member stays connected, so the room (and its prefilled presence) lives on.
            let anchor = Connection::new()
                .authenticated(Identity::new("anchor"))
                .subscribe(Topic::new("hall").expect("topic"), Position::Live);
            let _anchor = rt.block_on(rooms.join(&anchor)).expect("anchor joins");
            group.bench_with_input(BenchmarkId::new(name, members), &members, |b, _| {
                b.iter(|| {
                    rt.block_on(async {
                        let conn = Connection::new()
                            .authenticated(Identity::new("visitor"))
                            .subscribe(Topic::new("hall").expect("topic"), Position::Live);
                        let sub = rooms.join(&conn).await.expect("join");
                        rooms.leave(&conn, sub).await;
                    });
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, join_latency);
criterion_main!(benches);
