//! Operator metrics through the [`metrics`](https://docs.rs/metrics) facade (the `metrics`
//! feature); the names, units and labels are listed in the crate docs, "Metrics". Without the
//! feature every hook here is an empty `#[inline]` function and [`ConnMetrics`] is a
//! zero-sized type, so the endpoints compile to what they were.
//!
//! Per-delivery cost: a connection counts what it sends and receives in plain integers of its
//! own ([`ConnMetrics`], owned by its task, never shared) and hands the totals to the facade in
//! batches: at the end of each WebSocket write burst, every [`FLUSH_EVERY`] deliveries, on the
//! heartbeat or keep-alive tick, and when it closes. The latency histogram is sampled: one
//! observation per batch, the age of the batch's first message when the endpoint handed it to
//! the connection's writer. The facade's handles are looked up once per connection, when it
//! opens. The topics gauge ([`topics_changed`]) is moved by the hub core's registry.
//!
//! A leaf of the crate: it imports none of it. Callers hand over labels and instants
//! (`Transport::label` in `endpoint/`, `Delivery::logged_at` in `hub/`), so the hub core and the
//! endpoints depend on this module and never the other way round.

#[cfg(feature = "metrics")]
pub(crate) use enabled::*;

#[cfg(not(feature = "metrics"))]
pub(crate) use disabled::*;

/// Deliveries a connection counts before it hands the count to the facade, at the latest.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) const FLUSH_EVERY: u64 = 64;

#[cfg(feature = "metrics")]
mod enabled {
    use std::sync::{Arc, Once};
    use std::time::{Duration, Instant};

    use metrics::{Counter, Gauge, Histogram, Unit};

    use super::FLUSH_EVERY;

    pub(crate) const CONNECTIONS_OPEN: &str = "salvo_realtime_connections_open";
    pub(crate) const CONNECTIONS_TOTAL: &str = "salvo_realtime_connections_total";
    pub(crate) const REFUSALS_TOTAL: &str = "salvo_realtime_refusals_total";
    pub(crate) const CLOSES_TOTAL: &str = "salvo_realtime_closes_total";
    pub(crate) const MESSAGES_RECEIVED_TOTAL: &str = "salvo_realtime_messages_received_total";
    pub(crate) const MESSAGES_SENT_TOTAL: &str = "salvo_realtime_messages_sent_total";
    pub(crate) const LAGGED_TOTAL: &str = "salvo_realtime_lagged_total";
    pub(crate) const DROPPED_TOTAL: &str = "salvo_realtime_dropped_total";
    pub(crate) const SLOW_CONSUMER_DISCONNECTS_TOTAL: &str =
        "salvo_realtime_slow_consumer_disconnects_total";
    pub(crate) const PUBLISH_TO_WRITE_SECONDS: &str = "salvo_realtime_publish_to_write_seconds";
    pub(crate) const TOPICS: &str = "salvo_realtime_topics";
    #[cfg(feature = "redis")]
    pub(crate) const REDIS_ERRORS_TOTAL: &str = "salvo_realtime_redis_errors_total";
    #[cfg(feature = "redis")]
    pub(crate) const REDIS_RECONNECTS_TOTAL: &str = "salvo_realtime_redis_reconnects_total";

    /// Registers the descriptions and units once per process (a recorder installed later
    /// still gets the values, only without descriptions).
    fn describe() {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            metrics::describe_gauge!(CONNECTIONS_OPEN, Unit::Count, "connections open now");
            metrics::describe_counter!(CONNECTIONS_TOTAL, Unit::Count, "connections opened");
            metrics::describe_gauge!(TOPICS, Unit::Count, "topic logs the hubs hold");
            metrics::describe_counter!(
                REFUSALS_TOTAL,
                Unit::Count,
                "requests refused before they became connections, and refused subscribe commands"
            );
            metrics::describe_counter!(CLOSES_TOTAL, Unit::Count, "connections closed");
            metrics::describe_counter!(
                MESSAGES_RECEIVED_TOTAL,
                Unit::Count,
                "messages read from clients"
            );
            metrics::describe_counter!(
                MESSAGES_SENT_TOTAL,
                Unit::Count,
                "deliveries written to clients"
            );
            metrics::describe_counter!(
                LAGGED_TOTAL,
                Unit::Count,
                "messages connections lost because they fell behind history"
            );
            metrics::describe_counter!(
                DROPPED_TOTAL,
                Unit::Count,
                "client messages dropped by the inbound rate limit"
            );
            metrics::describe_counter!(
                SLOW_CONSUMER_DISCONNECTS_TOTAL,
                Unit::Count,
                "connections closed as slow consumers"
            );
            metrics::describe_histogram!(
                PUBLISH_TO_WRITE_SECONDS,
                Unit::Seconds,
                "from a message's arrival in the hub to the endpoint writing it (sampled)"
            );
            #[cfg(feature = "redis")]
            {
                metrics::describe_counter!(
                    REDIS_ERRORS_TOTAL,
                    Unit::Count,
                    "redis operations that failed"
                );
                metrics::describe_counter!(
                    REDIS_RECONNECTS_TOTAL,
                    Unit::Count,
                    "redis pub/sub connections re-established"
                );
            }
        });
    }

    /// A request refused before it became a connection (or a refused subscribe command).
    pub(crate) fn refused(transport: &'static str, reason: &'static str) {
        describe();
        metrics::counter!(REFUSALS_TOTAL, "transport" => transport, "reason" => reason)
            .increment(1);
    }

    /// A hub's registry holds one topic log more (`1`) or fewer (`-1`): the
    /// `salvo_realtime_topics` gauge, summed over the process's hubs (every namespace: topics,
    /// rooms, users' direct logs).
    pub(crate) fn topics_changed(delta: i8) {
        metrics::gauge!(TOPICS).increment(f64::from(delta));
    }

    /// A Redis operation failed.
    #[cfg(feature = "redis")]
    pub(crate) fn redis_error(op: &'static str) {
        describe();
        metrics::counter!(REDIS_ERRORS_TOTAL, "op" => op).increment(1);
    }

    /// The Redis pub/sub connection was re-established (or a cluster node's was lost and its
    /// channels subscribed again).
    #[cfg(feature = "redis")]
    pub(crate) fn redis_reconnect() {
        describe();
        metrics::counter!(REDIS_RECONNECTS_TOTAL).increment(1);
    }

    /// One connection's counts, owned by its task: plain integers, handed to the facade in
    /// batches. Boxed, so a connection's state grows by one pointer.
    pub(crate) struct ConnMetrics(Option<Box<State>>);

    struct State {
        transport: &'static str,
        opened: Instant,
        open: Gauge,
        sent: Counter,
        received: Counter,
        lagged: Counter,
        dropped: Counter,
        slow: Counter,
        latency: Histogram,
        pending_sent: u64,
        pending_received: u64,
        pending_dropped: u64,
        pending_lagged: u64,
        /// The age of the batch's first message when it was written: the batch's one sample.
        sample: Option<Duration>,
        /// The close code label: `end` for SSE; for a WebSocket `None` until known.
        close: Option<&'static str>,
    }

    impl ConnMetrics {
        /// Counts nothing: a connection that hasn't joined yet.
        pub(crate) fn none() -> Self {
            Self(None)
        }

        /// A connection that joined the hub: counts it and holds it open until dropped.
        pub(crate) fn open(transport: &'static str, reads: bool, endpoint: &Arc<str>) -> Self {
            describe();
            let t = transport;
            let endpoint = metrics::SharedString::from(Arc::clone(endpoint));
            metrics::counter!(CONNECTIONS_TOTAL, "transport" => t, "endpoint" => endpoint.clone())
                .increment(1);
            let open = metrics::gauge!(CONNECTIONS_OPEN, "transport" => t, "endpoint" => endpoint);
            open.increment(1.0);
            // An event stream reads nothing from its client: no series that is always zero.
            let inbound = |name: &'static str| {
                if reads {
                    metrics::counter!(name, "transport" => t)
                } else {
                    Counter::noop()
                }
            };
            Self(Some(Box::new(State {
                transport: t,
                opened: Instant::now(),
                open,
                sent: metrics::counter!(MESSAGES_SENT_TOTAL, "transport" => t),
                received: inbound(MESSAGES_RECEIVED_TOTAL),
                lagged: metrics::counter!(LAGGED_TOTAL, "transport" => t),
                dropped: inbound(DROPPED_TOTAL),
                slow: metrics::counter!(SLOW_CONSUMER_DISCONNECTS_TOTAL, "transport" => t),
                latency: metrics::histogram!(PUBLISH_TO_WRITE_SECONDS, "transport" => t),
                pending_sent: 0,
                pending_received: 0,
                pending_dropped: 0,
                pending_lagged: 0,
                sample: None,
                close: (!reads).then_some("end"),
            })))
        }

        /// Takes the counts out, leaving an inert value behind (the connection's task owns them
        /// from then on).
        pub(crate) fn take(&mut self) -> Self {
            Self(self.0.take())
        }

        /// A delivery was handed to the connection's writer.
        #[inline]
        pub(crate) fn sent(&mut self, logged_at: Option<Instant>) {
            let Some(s) = self.0.as_deref_mut() else {
                return;
            };
            s.pending_sent += 1;
            // Messages logged before the connection opened are replays (resume, `recent`):
            // their age is the client's absence, not the hub's latency.
            if let Some(logged_at) = logged_at
                && s.sample.is_none()
                && logged_at >= s.opened
            {
                s.sample = Some(logged_at.elapsed());
            }
            if s.pending_sent >= FLUSH_EVERY {
                s.flush();
            }
        }

        /// A message was read from the client.
        #[inline]
        pub(crate) fn received(&mut self) {
            if let Some(s) = self.0.as_deref_mut() {
                s.pending_received += 1;
            }
        }

        /// The connection lost `missed` messages to lag.
        #[inline]
        pub(crate) fn lagged(&mut self, missed: u64) {
            if let Some(s) = self.0.as_deref_mut() {
                s.pending_lagged += missed;
            }
        }

        /// A client message was dropped by the rate limit.
        #[inline]
        pub(crate) fn dropped(&mut self) {
            if let Some(s) = self.0.as_deref_mut() {
                s.pending_dropped += 1;
            }
        }

        /// The connection is being closed as a slow consumer.
        pub(crate) fn slow_consumer(&mut self) {
            if let Some(s) = self.0.as_deref_mut() {
                s.slow.increment(1);
            }
        }

        /// Hands the counts so far to the facade (end of a burst, a tick).
        #[inline]
        pub(crate) fn flush(&mut self) {
            if let Some(s) = self.0.as_deref_mut() {
                s.flush();
            }
        }

        /// The WebSocket close code of the connection's end: ours, or the one the client
        /// sent. Unset, a WebSocket's close counts as 1006 (no closing handshake); an SSE
        /// stream's is always `end`.
        pub(crate) fn close_code(&mut self, code: Option<u16>) {
            if let Some(s) = self.0.as_deref_mut() {
                // A client Close without a code is 1005 ("no status received").
                s.close = Some(code_label(code.unwrap_or(1005)));
            }
        }
    }

    impl State {
        fn flush(&mut self) {
            if let Some(age) = self.sample.take() {
                self.latency.record(age.as_secs_f64());
            }
            if self.pending_sent > 0 {
                self.sent.increment(std::mem::take(&mut self.pending_sent));
            }
            if self.pending_received > 0 {
                self.received
                    .increment(std::mem::take(&mut self.pending_received));
            }
            if self.pending_dropped > 0 {
                self.dropped
                    .increment(std::mem::take(&mut self.pending_dropped));
            }
            if self.pending_lagged > 0 {
                self.lagged
                    .increment(std::mem::take(&mut self.pending_lagged));
            }
        }
    }

    impl Drop for ConnMetrics {
        fn drop(&mut self) {
            let Some(mut s) = self.0.take() else {
                return;
            };
            s.flush();
            let code = s.close.unwrap_or("1006");
            metrics::counter!(CLOSES_TOTAL, "transport" => s.transport, "code" => code)
                .increment(1);
            s.open.decrement(1.0);
        }
    }

    /// A close code as a label: 1000 to 1015 as numbers, anything else (application codes,
    /// 3000 to 4999) as `other`, so a client can't mint label values.
    fn code_label(code: u16) -> &'static str {
        const CODES: [&str; 16] = [
            "1000", "1001", "1002", "1003", "1004", "1005", "1006", "1007", "1008", "1009", "1010",
            "1011", "1012", "1013", "1014", "1015",
        ];
        code.checked_sub(1000)
            .and_then(|i| CODES.get(usize::from(i)))
            .copied()
            .unwrap_or("other")
    }

    #[cfg(test)]
    mod tests {
        use std::sync::Arc;

        use super::{ConnMetrics, FLUSH_EVERY, MESSAGES_SENT_TOTAL, State, code_label};

        // The crate docs' promise: a batch is at most 64 deliveries, however long the write
        // burst (up to 512) that counts them.
        #[test]
        fn a_long_burst_hands_its_counts_over_every_64_deliveries() {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            let sent = || {
                handle
                    .render()
                    .lines()
                    .find(|line| line.starts_with(MESSAGES_SENT_TOTAL))
                    .and_then(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            metrics::with_local_recorder(&recorder, || {
                let mut conn = ConnMetrics::open("websocket", true, &Arc::from("test"));
                for i in 1..=512 {
                    conn.sent(None);
                    assert_eq!(sent(), i / FLUSH_EVERY * FLUSH_EVERY, "after {i}");
                }
                conn.sent(None);
                conn.flush();
                assert_eq!(sent(), 513, "the rest at the burst's end");
            });
        }

        #[test]
        fn a_connection_holds_one_pointer_to_one_small_allocation() {
            assert_eq!(size_of::<ConnMetrics>(), size_of::<usize>());
            assert!(size_of::<State>() <= 256, "{} bytes", size_of::<State>());
        }

        #[test]
        fn close_codes_outside_the_protocol_range_share_one_label() {
            assert_eq!(code_label(1000), "1000");
            assert_eq!(code_label(1015), "1015");
            assert_eq!(code_label(1016), "other");
            assert_eq!(code_label(4000), "other");
            assert_eq!(code_label(999), "other");
            assert_eq!(code_label(0), "other");
        }
    }
}

#[cfg(not(feature = "metrics"))]
mod disabled {
    use std::sync::Arc;

    #[inline]
    pub(crate) fn refused(_transport: &'static str, _reason: &'static str) {}

    #[inline]
    pub(crate) fn topics_changed(_delta: i8) {}

    #[cfg(feature = "redis")]
    #[inline]
    pub(crate) fn redis_error(_op: &'static str) {}

    #[cfg(feature = "redis")]
    #[inline]
    pub(crate) fn redis_reconnect() {}

    /// Without the `metrics` feature: nothing, zero-sized.
    pub(crate) struct ConnMetrics;

    #[cfg(test)]
    #[test]
    fn without_the_feature_a_connection_holds_nothing() {
        assert_eq!(size_of::<ConnMetrics>(), 0);
    }

    impl ConnMetrics {
        #[inline]
        pub(crate) fn none() -> Self {
            Self
        }

        #[inline]
        pub(crate) fn open(_transport: &'static str, _reads: bool, _endpoint: &Arc<str>) -> Self {
            Self
        }

        #[inline]
        pub(crate) fn take(&mut self) -> Self {
            Self
        }

        #[inline]
        pub(crate) fn sent(&mut self, _logged_at: Option<std::time::Instant>) {}

        #[inline]
        pub(crate) fn received(&mut self) {}

        #[inline]
        pub(crate) fn lagged(&mut self, _missed: u64) {}

        #[inline]
        pub(crate) fn dropped(&mut self) {}

        #[inline]
        pub(crate) fn slow_consumer(&mut self) {}

        #[inline]
        pub(crate) fn flush(&mut self) {}

        #[inline]
        pub(crate) fn close_code(&mut self, _code: Option<u16>) {}
    }
}
