//! The message log and `PubSub`: ids, history, resume, reset, lag, limits, cleanup.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{messages, offsets, ready, texts};
use futures_util::StreamExt;
use proptest::prelude::*;
use salvo_realtime::error::{HubError, InvalidTopic};
use salvo_realtime::hub::{Epoch, InboundPolicy, ResetReason};
use salvo_realtime::{
    Connection, Delivery, Hub, HubConfig, MessageId, Position, PubSub, Publication, Topic,
};

fn conn(topic: &str, from: Position) -> Connection {
    Connection::new().subscribe(Topic::new(topic).expect("valid topic"), from)
}

#[tokio::test]
async fn ids_grow_by_one_within_an_epoch() {
    let hub = PubSub::new();
    let a = hub.publish("t", "a").await.expect("publish");
    let b = hub.publish("t", "b").await.expect("publish");
    let other = hub.publish("u", "x").await.expect("publish");
    assert_eq!(a.offset(), 1);
    assert_eq!(b.offset(), 2);
    assert_eq!(a.epoch(), b.epoch());
    assert_ne!(a.epoch(), other.epoch(), "each topic log has its own epoch");
    assert_eq!(hub.last_id("t"), Some(b));
    assert_eq!(b.to_string().parse::<MessageId>(), Ok(b));
}

#[tokio::test]
async fn live_subscriber_gets_messages_in_order_with_event_names() {
    let hub = PubSub::new();
    let c = conn("t", Position::Live);
    let mut sub = hub.join(&c).await.expect("join");
    hub.publish("t", "one").await.expect("publish");
    hub.publish("t", Publication::new("two").event("alert"))
        .await
        .expect("publish");
    let got = ready(&mut sub);
    assert_eq!(texts(&got), ["one", "two"]);
    let ms = messages(&got);
    assert_eq!(ms[0].event(), None);
    assert_eq!(ms[1].event().map(|e| e.as_str()), Some("alert"));
    hub.leave(&c, sub).await;
}

#[tokio::test]
async fn resume_after_an_id_replays_exactly_what_was_missed() {
    let hub = PubSub::new();
    let ids: Vec<_> = futures_util::future::join_all((0..10).map(|i| {
        let hub = hub.clone();
        async move { hub.publish("t", format!("m{i}")).await.expect("publish") }
    }))
    .await;
    let mut sub = hub
        .join(&conn("t", Position::After(ids[6])))
        .await
        .expect("join");
    hub.publish("t", "m10").await.expect("publish");
    let got = ready(&mut sub);
    assert_eq!(texts(&got), ["m7", "m8", "m9", "m10"]);
    assert_eq!(offsets(&got), [8, 9, 10, 11]);

    // Resuming at the very last id replays nothing and waits for new messages.
    let mut sub = hub
        .join(&conn("t", Position::After(hub.last_id("t").expect("last"))))
        .await
        .expect("join");
    assert!(ready(&mut sub).is_empty());
}

#[tokio::test]
async fn recent_replays_the_last_n_then_live() {
    let hub = PubSub::new();
    for i in 0..5 {
        hub.publish("t", format!("m{i}")).await.expect("publish");
    }
    let mut sub = hub
        .join(&conn("t", Position::Recent(2)))
        .await
        .expect("join");
    hub.publish("t", "m5").await.expect("publish");
    assert_eq!(texts(&ready(&mut sub)), ["m3", "m4", "m5"]);
    let mut all = hub
        .join(&conn("t", Position::Recent(100)))
        .await
        .expect("join");
    assert_eq!(ready(&mut all).len(), 6);
}

#[tokio::test]
async fn unusable_positions_reset_then_replay_history() {
    let hub = PubSub::with_config(HubConfig::new().history(3));
    for i in 0..6 {
        hub.publish("t", format!("m{i}")).await.expect("publish");
    }
    let epoch = hub.last_id("t").expect("last").epoch();
    let other = loop {
        let e = Epoch::random();
        if e != epoch {
            break e;
        }
    };
    let cases = [
        (MessageId::new(other, 2), ResetReason::EpochChanged),
        (MessageId::new(epoch, 1), ResetReason::Expired),
        (MessageId::new(epoch, 99), ResetReason::Ahead),
    ];
    for (position, reason) in cases {
        let mut sub = hub
            .join(&conn("t", Position::After(position)))
            .await
            .expect("join");
        let got = ready(&mut sub);
        match &got[0] {
            Delivery::Reset(r) => {
                assert_eq!(r.reason, reason);
                assert_eq!(r.requested, Some(position));
                assert_eq!(r.epoch, epoch);
            }
            other => panic!("expected a reset, got {other:?}"),
        }
        assert_eq!(
            texts(&got[1..]),
            ["m3", "m4", "m5"],
            "history after {reason:?}"
        );
    }
    // The oldest position history still covers is not a reset.
    let mut sub = hub
        .join(&conn("t", Position::After(MessageId::new(epoch, 3))))
        .await
        .expect("join");
    assert_eq!(texts(&ready(&mut sub)), ["m3", "m4", "m5"]);
}

#[tokio::test]
async fn a_lagging_subscriber_is_refilled_from_history() {
    let hub = PubSub::with_config(HubConfig::new().channel_capacity(4).history(1000));
    let mut sub = hub.join(&conn("t", Position::Live)).await.expect("join");
    for i in 0..100 {
        hub.publish("t", format!("m{i}")).await.expect("publish");
    }
    let got = ready(&mut sub);
    assert!(
        got.iter().all(|d| matches!(d, Delivery::Message(_))),
        "no lag notice when history covers it"
    );
    assert_eq!(offsets(&got), (1..=100).collect::<Vec<_>>());
}

#[tokio::test]
async fn lag_beyond_history_is_counted_exactly() {
    let hub = PubSub::with_config(HubConfig::new().channel_capacity(4).history(10));
    let mut sub = hub.join(&conn("t", Position::Live)).await.expect("join");
    for i in 0..100 {
        hub.publish("t", format!("m{i}")).await.expect("publish");
    }
    let got = ready(&mut sub);
    match &got[0] {
        Delivery::Lagged { topic, missed } => {
            assert_eq!(topic.as_str(), "t");
            assert_eq!(*missed, 90);
        }
        other => panic!("expected lag first, got {other:?}"),
    }
    assert_eq!(offsets(&got[1..]), (91..=100).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_while_publishers_run_has_no_gap_and_no_duplicate() {
    const PUBLISHERS: usize = 4;
    const EACH: usize = 500;
    let hub = PubSub::with_config(HubConfig::new().history(10_000).channel_capacity(16));
    hub.publish("t", "seed").await.expect("publish");
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let hub = hub.clone();
            tokio::spawn(async move {
                for i in 0..EACH {
                    hub.publish("t", format!("{p}-{i}")).await.expect("publish");
                    if i % 50 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    let total = (PUBLISHERS * EACH + 1) as u64;
    let mut checkers = Vec::new();
    for _ in 0..8 {
        let hub = hub.clone();
        checkers.push(tokio::spawn(async move {
            tokio::task::yield_now().await;
            let from = hub.last_id("t").expect("seeded");
            let c = conn("t", Position::After(from));
            let mut sub = hub.join(&c).await.expect("join");
            let mut expected = from.offset() + 1;
            while expected <= total {
                let next = tokio::time::timeout(Duration::from_secs(20), sub.next())
                    .await
                    .expect("delivery within 20 s");
                match next {
                    Some(Delivery::Message(m)) => {
                        assert_eq!(m.id().offset(), expected, "gap or duplicate");
                        expected += 1;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }));
    }
    for p in publishers {
        p.await.expect("publisher");
    }
    for c in checkers {
        c.await.expect("checker");
    }
}

#[tokio::test]
async fn bad_input_is_a_typed_error() {
    let hub = PubSub::with_config(
        HubConfig::new()
            .max_payload(8)
            .max_topics(2)
            .max_subscriptions(1),
    );
    assert!(matches!(
        hub.publish("", "x").await,
        Err(HubError::InvalidTopic(InvalidTopic::Empty))
    ));
    assert!(matches!(
        hub.publish(&"t".repeat(300), "x").await,
        Err(HubError::InvalidTopic(InvalidTopic::TooLong {
            len: 300,
            ..
        }))
    ));
    assert!(matches!(
        hub.publish("t", "123456789").await,
        Err(HubError::PayloadTooLarge { size: 9, limit: 8 })
    ));
    assert!(matches!(
        hub.publish("t", Publication::new("x").event("bad\nname"))
            .await,
        Err(HubError::InvalidEvent(_))
    ));
    hub.publish("a", "x").await.expect("first topic");
    hub.publish("b", "x").await.expect("second topic");
    assert!(matches!(
        hub.publish("c", "x").await,
        Err(HubError::TooManyTopics { limit: 2 })
    ));
    let two = Connection::new()
        .subscribe(Topic::new("a").expect("valid"), Position::Live)
        .subscribe(Topic::new("b").expect("valid"), Position::Live);
    assert!(matches!(
        hub.join(&two).await,
        Err(HubError::TooManySubscriptions { limit: 1 })
    ));
    // A refused publish doesn't consume an id.
    assert_eq!(hub.last_id("a").map(MessageId::offset), Some(1));
}

#[tokio::test]
async fn topics_are_freed_when_unused() {
    // No history: freed as soon as the last subscriber goes.
    let hub = PubSub::with_config(HubConfig::new().history(0));
    let c = conn("t", Position::Live);
    let sub = hub.join(&c).await.expect("join");
    assert_eq!(hub.topic_count(), 1);
    hub.leave(&c, sub).await;
    assert_eq!(hub.topic_count(), 0);
    hub.publish("nobody-listens", "x").await.expect("publish");
    assert_eq!(hub.topic_count(), 0);

    // With history, kept for the idle TTL so reconnecting clients can resume...
    let hub = PubSub::new();
    let c = conn("t", Position::Live);
    let sub = hub.join(&c).await.expect("join");
    let id = hub.publish("t", "kept").await.expect("publish");
    drop(sub);
    hub.sweep();
    assert_eq!(hub.topic_count(), 1);
    hub.publish("t", "after").await.expect("publish");
    let mut again = hub
        .join(&conn("t", Position::After(id)))
        .await
        .expect("join");
    assert_eq!(texts(&ready(&mut again)), ["after"]);

    // ...and freed after it.
    let hub = PubSub::with_config(HubConfig::new().idle_ttl(Duration::ZERO));
    let sub = hub.join(&conn("t", Position::Live)).await.expect("join");
    hub.publish("t", "x").await.expect("publish");
    drop(sub);
    assert_eq!(hub.topic_count(), 0);
}

#[tokio::test]
async fn history_age_and_bytes_limits_evict() {
    let hub = PubSub::with_config(HubConfig::new().history_bytes(10));
    for text in ["aaaa", "bbbb", "cccc"] {
        hub.publish("t", text).await.expect("publish");
    }
    let kept: Vec<_> = hub.history("t").iter().map(|m| m.id().offset()).collect();
    assert_eq!(kept, [2, 3]);

    let hub = PubSub::with_config(HubConfig::new().history_age(Duration::from_millis(1)));
    let first = hub.publish("t", "old").await.expect("publish");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(hub.history("t").is_empty());
    let mut sub = hub
        .join(&conn(
            "t",
            Position::After(MessageId::new(first.epoch(), 0)),
        ))
        .await
        .expect("join");
    assert!(
        matches!(ready(&mut sub).first(), Some(Delivery::Reset(r)) if r.reason == ResetReason::Expired)
    );
}

#[tokio::test]
async fn closing_a_topic_ends_its_streams() {
    let hub = PubSub::new();
    let mut sub = hub.join(&conn("t", Position::Live)).await.expect("join");
    hub.publish("t", "last words").await.expect("publish");
    assert!(hub.close("t"));
    assert_eq!(
        texts(&[sub.next().await.expect("buffered")]),
        ["last words"]
    );
    assert!(sub.next().await.is_none());
    assert!(!hub.close("t"));
}

/// Defect 2 of issue 18: a publish right after `close`, before the subscribers poll, created a
/// new log of the same name, and the old streams followed it with a reset instead of ending.
#[tokio::test]
async fn a_closed_topic_ends_its_streams_even_if_its_name_is_reused_at_once() {
    let hub = PubSub::new();
    let mut sub = hub.join(&conn("t", Position::Live)).await.expect("join");
    hub.publish("t", "last words").await.expect("publish");
    assert!(hub.close("t"));
    hub.publish("t", "a new topic").await.expect("publish");
    let mut rest = Vec::new();
    // Bounded only against a hang: the stream ends at once, or follows the new log forever.
    while let Ok(Some(next)) = tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
        rest.push(next);
    }
    assert_eq!(texts(&rest), ["last words"], "then the end: {rest:?}");
    assert!(sub.next().await.is_none(), "the stream ended");
}

#[tokio::test]
async fn inbound_policies() {
    let hub = PubSub::new();
    let c = conn("t", Position::Live);
    let _sub = hub.join(&c).await.expect("join");
    assert!(matches!(
        hub.receive(&c, salvo_realtime::Publication::new("x")).await,
        Err(HubError::InboundRejected)
    ));

    let hub = PubSub::with_config(HubConfig::new().inbound(InboundPolicy::PublishExceptSender));
    let sender = conn("t", Position::Live);
    let other = conn("t", Position::Live);
    let mut sender_sub = hub.join(&sender).await.expect("join");
    let mut other_sub = hub.join(&other).await.expect("join");
    hub.receive(&sender, salvo_realtime::Publication::new("hello"))
        .await
        .expect("receive");
    assert!(ready(&mut sender_sub).is_empty());
    let got = messages(&ready(&mut other_sub));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].origin(), Some(sender.id()));
}

#[test]
fn every_subscriber_shares_one_payload_allocation() {
    let hub = PubSub::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut a = hub.join(&conn("t", Position::Live)).await.expect("join");
        let mut b = hub.join(&conn("t", Position::Live)).await.expect("join");
        hub.publish("t", vec![1u8; 1000]).await.expect("publish");
        let (ma, mb) = (messages(&ready(&mut a)), messages(&ready(&mut b)));
        assert_eq!(
            ma[0].payload().as_bytes().as_ptr(),
            mb[0].payload().as_bytes().as_ptr()
        );
    });
}

/// One step of a property run.
#[derive(Debug, Clone)]
enum Step {
    Publish,
    Read(usize),
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![3 => Just(Step::Publish), 1 => (1usize..20).prop_map(Step::Read)],
        0..120,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// For any publishes before and after joining, any interleaving of reads, any history and
    /// channel sizes and any resume position, the subscriber receives exactly the published
    /// suffix after its position, or a reset first when the position is out of range; a lag
    /// notice appears only when history couldn't cover it, and counts the gap exactly.
    #[test]
    fn resume_receives_exactly_the_suffix(
        before in 0u64..40,
        history in 0usize..30,
        capacity in 1usize..8,
        resume in 0u64..50,
        other_epoch in any::<bool>(),
        steps in steps(),
    ) {
        let hub = PubSub::with_config(HubConfig::new().history(history).channel_capacity(capacity));
        let publish = |i: u64| {
            futures_util::FutureExt::now_or_never(hub.publish("t", format!("m{i}")))
                .expect("in-memory publish is immediate")
                .expect("publish")
        };
        let mut epoch = None;
        for i in 0..before {
            epoch = Some(publish(i).epoch());
        }
        let epoch = epoch.unwrap_or_else(Epoch::random);
        let position_epoch = if other_epoch { Epoch::random() } else { epoch };
        let position = MessageId::new(position_epoch, resume);
        // A topic with no history and no subscriber is freed at once: publishes before the
        // join are forgotten and the join starts a new log (new epoch, offsets from 1).
        let forgotten = if history == 0 { before } else { 0 };
        let logged = before - forgotten;
        let first_kept = logged.saturating_sub(history as u64) + 1;
        let in_range = !other_epoch && logged > 0 && resume <= logged && resume + 1 >= first_kept;
        let c = conn("t", Position::After(position));
        let mut sub = futures_util::FutureExt::now_or_never(hub.join(&c))
            .expect("immediate")
            .expect("join");

        let mut got = Vec::new();
        let mut published = before;
        for step in &steps {
            match step {
                Step::Publish => { publish(published); published += 1; }
                Step::Read(n) => {
                    for _ in 0..*n {
                        match futures_util::FutureExt::now_or_never(sub.next()) {
                            Some(Some(d)) => got.push(d),
                            _ => break,
                        }
                    }
                }
            }
        }
        got.extend(ready(&mut sub));

        let mut rest = &got[..];
        // A topic created by the subscription itself (nothing published before) has a new epoch.
        let expect_reset = !in_range;
        if expect_reset {
            let is_reset = matches!(rest.first(), Some(Delivery::Reset(_)));
            prop_assert!(is_reset, "expected a reset first, got {:?}", rest.first());
            rest = &rest[1..];
        }
        let mut next = if expect_reset { first_kept.min(logged + 1) } else { resume + 1 };
        for d in rest {
            match d {
                Delivery::Message(m) => {
                    prop_assert_eq!(m.id().offset(), next, "gap or duplicate");
                    let expected = format!("m{}", next - 1 + forgotten);
                    prop_assert_eq!(m.payload().as_text(), Some(expected.as_str()));
                    next += 1;
                }
                Delivery::Lagged { missed, .. } => {
                    prop_assert!(*missed > 0);
                    next += missed;
                }
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
        prop_assert_eq!(next, published - forgotten + 1, "the subscriber reached the end of the log");
        if history as u64 >= published {
            let lagged = got.iter().any(|d| matches!(d, Delivery::Lagged { .. }));
            prop_assert!(!lagged, "lag reported although history held everything");
        }
        let unique: HashSet<_> = messages(&got).iter().map(|m| m.id()).collect();
        prop_assert_eq!(unique.len(), messages(&got).len());
    }
}

// Issue 11: an epoch change of one topic (its remote log was lost) must not silently drop it
// from a subscription holding several: a reset, then the new log, while the others go on.
#[tokio::test]
async fn an_epoch_change_resets_one_topic_of_a_multi_topic_subscription() {
    let hub = PubSub::with_backend(HubConfig::new(), common::remote::Remote::default());
    let conn = Connection::new()
        .subscribe(Topic::new("a").expect("topic"), Position::Live)
        .subscribe(Topic::new("b").expect("topic"), Position::Live);
    let mut sub = hub.join(&conn).await.expect("join");
    hub.publish("a", "a1").await.expect("publish");
    hub.publish("b", "b1").await.expect("publish");
    assert_eq!(common::texts(&common::ready(&mut sub)).len(), 2);
    hub.backend().lose("topics", "a");
    hub.publish("a", "a-new").await.expect("publish");
    hub.publish("b", "b2").await.expect("publish");
    let got = common::ready(&mut sub);
    let reset = got.iter().find_map(|d| match d {
        Delivery::Reset(r) => Some(r.clone()),
        _ => None,
    });
    let reset = reset.expect("a reset for the lost topic, not silence");
    assert_eq!(reset.topic.as_str(), "a");
    assert_eq!(reset.reason, salvo_realtime::hub::ResetReason::EpochChanged);
    let mut texts = common::texts(&got);
    texts.sort();
    assert_eq!(texts, ["a-new", "b2"]);
    assert_eq!(sub.topic_count(), 2);
}

/// Issue 18 review: a log that replaces a lost one starts with no subscriber of its own (its
/// readers move over as they poll), so with a remote backend (logs nobody follows are freed at
/// once) a sweep, or any release, before a reader moved freed it, and the reader's stream
/// ended instead of moving. The readers still to come now keep the new log.
#[tokio::test]
async fn a_replacement_log_waits_for_the_readers_of_the_one_it_replaced() {
    let hub = PubSub::with_backend(HubConfig::new(), common::remote::Remote::default());
    let mut x = hub.subscribe("x", Position::Live).await.expect("subscribe");
    let mut y = hub.subscribe("y", Position::Live).await.expect("subscribe");
    hub.backend().lose("topics", "x");
    hub.backend().lose("topics", "y");
    // x's reader moves first; a sweep runs before y's does.
    assert!(matches!(ready(&mut x).first(), Some(Delivery::Reset(_))));
    hub.sweep();
    assert_eq!(hub.topic_count(), 2, "y's new log waits for y's reader");
    hub.publish("y", "after").await.expect("publish");
    let got = ready(&mut y);
    assert!(
        matches!(got.first(), Some(Delivery::Reset(r)) if r.reason == ResetReason::EpochChanged),
        "a reset, then the new log: {got:?}"
    );
    assert_eq!(texts(&got), ["after"]);
    drop((x, y));
    assert_eq!(
        hub.topic_count(),
        0,
        "nothing kept once the readers are gone"
    );
}

/// The other way out: a reader of the replaced log drops before it moves. The new log must
/// not wait for it forever.
#[tokio::test]
async fn a_replacement_log_is_freed_when_the_old_readers_drop_instead_of_moving() {
    let hub = PubSub::with_backend(HubConfig::new(), common::remote::Remote::default());
    let x = hub.subscribe("x", Position::Live).await.expect("subscribe");
    hub.backend().lose("topics", "x");
    hub.backend().lose("topics", "x");
    assert_eq!(hub.topic_count(), 1);
    drop(x);
    assert_eq!(
        hub.topic_count(),
        0,
        "the new log was freed with its last reader to come"
    );
}

/// A wrapper written with `delegate_hub!` passes on what it doesn't write, the channel
/// protocol's `call` and `add_topic` included; one written by hand that forgot them answers
/// `Unsupported`, the trap the macro closes.
#[tokio::test]
async fn a_delegated_wrapper_passes_on_every_method_it_does_not_write() {
    use salvo_realtime::channel::Channels;
    use salvo_realtime::error::Refused;
    use salvo_realtime::hub::delegate_hub;
    use salvo_realtime::{Identity, Rooms};

    #[derive(Clone)]
    struct Delegated<H> {
        inner: H,
    }
    delegate_hub! {
        impl[H: Hub] Hub for Delegated<H>, to inner {
            type Subscription = H::Subscription;
        }
    }

    /// Passes on the three required methods and forgets the rest.
    struct Forgetful<H>(H);
    impl<H: Hub> Hub for Forgetful<H> {
        type Subscription = H::Subscription;
        async fn join(&self, conn: &Connection) -> Result<Self::Subscription, HubError> {
            self.0.join(conn).await
        }
        async fn receive(
            &self,
            conn: &Connection,
            message: salvo_realtime::Publication,
        ) -> Result<(), HubError> {
            self.0.receive(conn, message).await
        }
        async fn leave(&self, conn: &Connection, subscription: Self::Subscription) {
            self.0.leave(conn, subscription).await;
        }
    }

    let channels = || {
        Channels::new(Rooms::new())
            .allow("news")
            .on_call(
                "double",
                |_ctx, n: u64| async move { Ok::<_, Refused>(n * 2) },
            )
    };
    let conn = Connection::new().authenticated(Identity::new("alice"));
    let news = Topic::new("news").expect("topic");

    let hub = Delegated { inner: channels() };
    let sub = hub.join(&conn).await.expect("join");
    let doubled = hub.call(&conn, "double", serde_json::json!(21)).await;
    assert_eq!(doubled.expect("call passed on"), serde_json::json!(42));
    hub.add_topic(&conn, salvo_realtime::hub::TopicRequest::new(news.clone()))
        .await
        .expect("add_topic passed on");
    assert!(
        hub.remove_topic(&conn, &news)
            .await
            .expect("remove_topic passed on")
    );
    hub.leave(&conn, sub).await;

    let hub = Forgetful(channels());
    let sub = hub.join(&conn).await.expect("join");
    let forgot = hub.call(&conn, "double", serde_json::json!(21)).await;
    assert!(
        matches!(forgot, Err(HubError::Unsupported(_))),
        "{forgot:?}"
    );
    hub.leave(&conn, sub).await;
}
