//! The builder methods both endpoints share, written once as a macro each endpoint expands.

/// The builder methods both endpoints share.
macro_rules! common_builders {
    () => {
        /// Names the endpoint in its metrics: the `endpoint` label of the connection counts
        /// (crate docs, "Metrics"; `metrics` feature). Give each endpoint of an app its own,
        /// from a fixed set: every distinct name is a time series. Default: `"default"`.
        #[must_use]
        pub fn name(mut self, name: &str) -> Self {
            self.common.set_name(name);
            self
        }
        /// The path or query parameter naming the topic (or room) to attach to: the path
        /// parameter if the route has it, else every query value of that name. Default: `"topic"`.
        #[must_use]
        pub fn topic_param(mut self, name: &str) -> Self {
            self.common.set_topic_param(name);
            self
        }

        /// Decides the topics from the request with a closure, instead of a parameter. Return
        /// a [`Rejection`](crate::Rejection) to refuse the request (400/401/403).
        #[must_use]
        pub fn topics<F>(mut self, f: F) -> Self
        where
            F: Fn(&salvo::Request, &salvo::Depot) -> Result<Vec<crate::Topic>, crate::Rejection>
                + Send
                + Sync
                + 'static,
        {
            self.common.set_topics(f);
            self
        }

        /// Establishes who is connecting, before anything is sent: the closure sees the request
        /// and the [`Depot`](salvo::Depot) (so auth middleware in front works) and returns an
        /// identity, `None` for anonymous, or a [`Rejection`](crate::Rejection) (401/403). A
        /// rejected request never joins the hub. Default: everyone is anonymous.
        #[must_use]
        pub fn identify<F>(mut self, f: F) -> Self
        where
            F: Fn(
                    &salvo::Request,
                    &salvo::Depot,
                ) -> Result<Option<crate::Identity>, crate::Rejection>
                + Send
                + Sync
                + 'static,
        {
            self.common.set_identify(f);
            self
        }

        /// [`identify`](Self::identify) with an async answer, for a session or database
        /// lookup: the closure reads what it needs from the request and returns a future that
        /// owns it. What it resolves to is the identity every authorization rule and handler
        /// sees.
        #[must_use]
        pub fn identify_async<F, Fut>(mut self, f: F) -> Self
        where
            F: Fn(&salvo::Request, &salvo::Depot) -> Fut + Send + Sync + 'static,
            Fut: std::future::Future<Output = Result<Option<crate::Identity>, crate::Rejection>>
                + Send
                + 'static,
        {
            self.common.set_identify_async(f);
            self
        }

        /// Most connections open at once on this endpoint; past it, 503 with `Retry-After`.
        /// Default: 10,000.
        #[must_use]
        pub fn max_connections(mut self, n: usize) -> Self {
            self.common.caps.set_max_total(n);
            self
        }

        /// Most connections open at once from one client address (IPv6: one /64); past it,
        /// 429 with `Retry-After`. Behind a reverse proxy, set
        /// [`trusted_proxies`](Self::trusted_proxies) so that this counts clients, not the
        /// proxy. Default: 1,024: mobile carriers put thousands of subscribers behind one IPv4
        /// address (carrier-grade NAT), so a tight cap locks out real users; this one still
        /// keeps a single host to a tenth of the default [`max_connections`](Self::max_connections).
        /// Identified users are capped one by one with
        /// [`max_connections_per_user`](Self::max_connections_per_user).
        #[must_use]
        pub fn max_connections_per_ip(mut self, n: usize) -> Self {
            self.common.caps.set_max_per_ip(n);
            self
        }

        /// Most connections open at once for one user (the identity `identify` establishes;
        /// anonymous connections aren't counted here); past it, 429 with `Retry-After`.
        /// Default: 100, far above the tabs and devices of one person, low enough that a token
        /// holder can't take the endpoint's slots.
        #[must_use]
        pub fn max_connections_per_user(mut self, n: usize) -> Self {
            self.common.caps.set_max_per_user(n);
            self
        }

        /// The `Retry-After` sent with 503 and 429. Default: 5 s.
        #[must_use]
        pub fn retry_after(mut self, d: std::time::Duration) -> Self {
            self.common.caps.set_retry_after(d);
            self
        }

        /// Proxies (addresses or CIDR ranges: `"127.0.0.1"`, `"10.0.0.0/8"`, `"fd00::/8"`)
        /// whose forwarding header is believed. A request whose TCP peer is one of them counts
        /// as coming from the client address in the header
        /// [`forwarded_header`](Self::forwarded_header) names (default `X-Forwarded-For`): the
        /// right-most entry that isn't a trusted proxy (the proxies append, so entries left of
        /// it are the client's own and may be anything). The other forwarding headers are never
        /// read, and from any other peer none is, so a client can't spoof its way around the
        /// per-address cap. Default: none (right for a server that faces clients directly;
        /// behind nginx on the same host, trust `"127.0.0.1"` and `"::1"`).
        ///
        /// # Panics
        ///
        /// If an entry is not an IP address or a CIDR range: a configuration mistake, caught
        /// at startup.
        #[must_use]
        #[track_caller]
        pub fn trusted_proxies(mut self, ranges: &[&str]) -> Self {
            self.common.set_trusted_proxies(ranges);
            self
        }

        /// The one header the [`trusted_proxies`](Self::trusted_proxies) write the client's
        /// address in; the others are ignored, as a proxy passes them through from the client.
        /// Name what your proxy sets: nginx's usual `proxy_set_header X-Forwarded-For
        /// $proxy_add_x_forwarded_for` is [`XForwardedFor`](crate::endpoint::ForwardedHeader::XForwardedFor).
        /// Default: `XForwardedFor`.
        #[must_use]
        pub fn forwarded_header(mut self, header: crate::endpoint::ForwardedHeader) -> Self {
            self.common.set_forwarded_header(header);
            self
        }

        /// Origins (scheme, host and port, e.g. `https://app.example.com`) allowed besides the
        /// request's own host; compared exactly, case-insensitively, no wildcards. A request
        /// with another `Origin`, or with two `Origin` headers, gets 403 before anything else
        /// happens. Default: none (same host only).
        #[must_use]
        pub fn allowed_origins(mut self, origins: &[&str]) -> Self {
            self.common.origins.set_allowed(origins);
            self
        }

        /// Also admits every `Origin` that `judge` accepts, besides the request's own host and
        /// [`allowed_origins`](Self::allowed_origins). One function can be the single list of
        /// trusted origins for this endpoint and the app's CORS middleware: give it to
        /// salvo-cors as `AllowOrigin::dynamic(|o, req, depot| o.filter(|o| judge(o, req,
        /// depot)).cloned())`. CORS itself does not guard a WebSocket upgrade (a browser sends
        /// no preflight for it, and the page's script never reads the upgrade response, so
        /// `Access-Control-Allow-Origin` changes nothing), and an event stream's `Origin` is
        /// only checked here. It is called only for a request with exactly one `Origin`
        /// header; two are refused before it runs. Default: none. See the README, "Origins and
        /// CORS: one list".
        #[must_use]
        pub fn allow_origin_fn<F>(mut self, judge: F) -> Self
        where
            F: Fn(&salvo::http::HeaderValue, &salvo::Request, &salvo::Depot) -> bool
                + Send
                + Sync
                + 'static,
        {
            self.common.origins.set_judge(std::sync::Arc::new(judge));
            self
        }

        /// Refuses requests without an `Origin` header (403). Default: `false`: only browsers
        /// send `Origin`, and cross-site hijacking needs a browser.
        #[must_use]
        pub fn require_origin(mut self, require: bool) -> Self {
            self.common.origins.set_required(require);
            self
        }

        /// Registers the endpoint's connections with `drain` for graceful shutdown. Default: a
        /// drain of its own, reachable through [`drain_handle`](Self::drain_handle).
        #[must_use]
        pub fn drain(mut self, drain: crate::Drain) -> Self {
            self.common.drain = drain;
            self
        }

        /// The endpoint's [`Drain`](crate::Drain).
        #[must_use]
        pub fn drain_handle(&self) -> crate::Drain {
            self.common.drain.clone()
        }

        /// Connections open on this endpoint now.
        #[must_use]
        pub fn open_connections(&self) -> usize {
            self.common.caps.open()
        }
    };
}
pub(crate) use common_builders;
