//! `Counted`: connection and message counts that can't leak.

mod common;

use std::time::Duration;

use common::ready;
use futures_util::StreamExt;
use salvo_realtime::hub::InboundPolicy;
use salvo_realtime::{
    Connection, Counted, Hub, HubConfig, Identity, Position, PubSub, Rooms, Topic,
};

fn conn(topics: &[&str]) -> Connection {
    topics.iter().fold(Connection::new(), |c, t| {
        c.subscribe(Topic::new(t).expect("valid"), Position::Live)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_joins_and_leaves_return_to_zero_even_with_panics() {
    // Keep the 3,333 intended panics out of the test output; report any other.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.to_string().contains("fails while joined") {
            default_hook(info);
        }
    }));
    let hub = Counted::new(Rooms::new());
    let tasks: Vec<_> = (0..10_000)
        .map(|i| {
            let hub = hub.clone();
            tokio::spawn(async move {
                let c = Connection::new()
                    .authenticated(Identity::new(format!("u{}", i % 100)))
                    .subscribe(
                        Topic::new(&format!("room{}", i % 10)).expect("valid"),
                        Position::Live,
                    );
                let sub = hub.join(&c).await.expect("join");
                tokio::task::yield_now().await;
                match i % 3 {
                    0 => hub.leave(&c, sub).await,
                    1 => drop(sub),
                    _ => panic!("connection task {i} fails while joined"),
                }
            })
        })
        .collect();
    let mut panicked = 0;
    for t in tasks {
        if t.await.is_err() {
            panicked += 1;
        }
    }
    assert_eq!(panicked, 3_333);
    let s = hub.snapshot();
    assert_eq!(s.open, 0);
    assert_eq!(s.total, 10_000);
    assert!(s.topics.is_empty(), "{:?}", s.topics);
    assert_eq!(hub.inner().connection_count(), 0);
    assert_eq!(hub.inner().room_count(), 0);
}

#[tokio::test]
async fn counts_per_topic_and_messages_in_out_lagged_dropped() {
    let hub = Counted::new(PubSub::with_config(
        HubConfig::new()
            .inbound(InboundPolicy::Publish)
            .channel_capacity(2)
            .history(2),
    ));
    let a = conn(&["x", "y"]);
    let b = conn(&["x"]);
    let mut sa = hub.join(&a).await.expect("join");
    let mut sb = hub.join(&b).await.expect("join");
    let s = hub.snapshot();
    assert_eq!((s.open, s.total), (2, 2));
    let per_topic: Vec<_> = s.topics.iter().map(|(t, c)| (t.as_str(), c.open)).collect();
    assert_eq!(per_topic, [("x", 2), ("y", 1)]);

    hub.receive(&b, salvo_realtime::Publication::new("hi"))
        .await
        .expect("receive");
    assert_eq!(ready(&mut sa).len(), 1);
    assert_eq!(ready(&mut sb).len(), 1);
    for i in 0..10 {
        hub.inner()
            .publish("y", format!("{i}"))
            .await
            .expect("publish");
    }
    let got = ready(&mut sa);
    assert_eq!(
        got.len(),
        3,
        "a lag notice and the two retained messages: {got:?}"
    );
    hub.note_dropped(&a, 5);

    let s = hub.snapshot();
    assert_eq!(s.messages_in, 1);
    assert_eq!(s.messages_out, 4);
    assert_eq!(s.lagged, 8);
    assert_eq!(s.dropped, 5);
    hub.leave(&a, sa).await;
    let s = hub.snapshot();
    let per_topic: Vec<_> = s
        .topics
        .iter()
        .map(|(t, c)| (t.as_str(), c.open, c.total))
        .collect();
    assert_eq!(per_topic, [("x", 1, 2)]);
    drop(sb);
    assert_eq!(hub.snapshot().open, 0);
}

#[tokio::test]
async fn watch_yields_a_snapshot_when_counts_change() {
    let hub = Counted::new(PubSub::new());
    let mut watch = hub.watch(Duration::from_millis(5));
    let first = watch.next().await.expect("initial snapshot");
    assert_eq!(first.open, 0);
    let c = conn(&["t"]);
    let sub = hub.join(&c).await.expect("join");
    let next = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("a change is reported")
        .expect("stream open");
    assert_eq!(next.open, 1);
    drop(sub);
    drop(hub);
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        while watch.next().await.is_some() {}
    })
    .await;
    assert!(end.is_ok(), "the watch ends once the hub is gone");
}
