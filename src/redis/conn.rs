//! The command connection, to a single server or to a cluster, behind one
//! [`ConnectionLike`](redis::aio::ConnectionLike).

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::{Failure, within};

/// Where the backend's Redis is, parsed from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Target {
    /// One server (or a primary): `redis://...`.
    Single(String),
    /// A Redis Cluster, through any of these seed nodes: `redis+cluster://h1:p1,h2:p2`.
    Cluster(Vec<String>),
}

impl Target {
    /// `redis+cluster://[user:password@]host:port[,host:port...]` names a cluster (the
    /// credentials apply to every node); anything else is one server's URL.
    pub(super) fn parse(url: &str) -> Self {
        let Some(rest) = url.strip_prefix("redis+cluster://") else {
            return Self::Single(url.to_owned());
        };
        let (auth, hosts) = match rest.rfind('@') {
            Some(at) => (&rest[..=at], &rest[at + 1..]),
            None => ("", rest),
        };
        Self::Cluster(
            hosts
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(|h| format!("redis://{auth}{}", h.trim_end_matches('/')))
                .collect(),
        )
    }
}

/// Commands and scripts go over this multiplexed connection; it reconnects by itself.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    pub(super) async fn connect(target: &Target, timeout: Duration) -> Result<Self, Failure> {
        match target {
            Target::Single(url) => {
                let client = redis::Client::open(url.as_str())?;
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                let manager =
                    within(timeout, client.get_connection_manager_with_config(config)).await?;
                Ok(Self::Single(manager))
            }
            Target::Cluster(nodes) => {
                let client = cluster_client(nodes, timeout, None)?;
                Ok(Self::Cluster(
                    within(timeout, client.get_async_connection()).await?,
                ))
            }
        }
    }
}

/// A cluster client whose connections time out after `timeout`; with `push`, on RESP3 with
/// pushes (sharded pub/sub messages, subscription changes, disconnections) sent there.
pub(super) fn cluster_client(
    nodes: &[String],
    timeout: Duration,
    push: Option<tokio::sync::mpsc::UnboundedSender<redis::PushInfo>>,
) -> Result<redis::cluster::ClusterClient, Failure> {
    if nodes.is_empty() {
        return Err(Failure::Config(
            "a redis+cluster:// URL needs at least one node",
        ));
    }
    let mut builder = redis::cluster::ClusterClientBuilder::new(nodes.to_vec())
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .retries(2)
        .min_retry_wait(20)
        .max_retry_wait(200);
    if let Some(push) = push {
        builder = builder
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(push);
    }
    Ok(builder.build()?)
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let reply = match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        };
        counted(|| command_op(cmd), reply)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let replies = match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        };
        counted(|| "pipeline", replies)
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// Counts a failed reply in `salvo_realtime_redis_errors_total{op}` (`metrics` feature). A
/// missing script is no failure: the invocation loads it and sends it again.
#[cfg(feature = "metrics")]
fn counted<'a, T: Send + 'a>(
    op: impl FnOnce() -> &'static str,
    reply: RedisFuture<'a, T>,
) -> RedisFuture<'a, T> {
    let op = op();
    Box::pin(async move {
        let result = reply.await;
        if let Err(e) = &result
            && !matches!(
                e.kind(),
                redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
            )
        {
            crate::metrics::redis_error(op);
        }
        result
    })
}

#[cfg(not(feature = "metrics"))]
#[inline]
fn counted<'a, T>(
    _op: impl FnOnce() -> &'static str,
    reply: RedisFuture<'a, T>,
) -> RedisFuture<'a, T> {
    reply
}

/// The `op` label of a command: its name, lowercased, from the commands this backend sends
/// (so the label's values are a fixed set), `other` for anything else.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
fn command_op(cmd: &Cmd) -> &'static str {
    const OPS: [&str; 10] = [
        "evalsha", "eval", "script", "xrange", "sadd", "srem", "smembers", "exists", "publish",
        "spublish",
    ];
    match cmd.args_iter().next() {
        Some(redis::Arg::Simple(name)) => OPS
            .iter()
            .find(|op| op.as_bytes().eq_ignore_ascii_case(name))
            .copied()
            .unwrap_or("other"),
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_ops_are_a_fixed_set() {
        assert_eq!(command_op(&redis::cmd("EVALSHA")), "evalsha");
        assert_eq!(command_op(redis::cmd("xrange").arg("k")), "xrange");
        assert_eq!(command_op(&redis::cmd("FLUSHALL")), "other");
    }

    #[test]
    fn cluster_urls_list_seed_nodes_with_shared_credentials() {
        assert_eq!(
            Target::parse("redis://127.0.0.1:6379/2"),
            Target::Single("redis://127.0.0.1:6379/2".into())
        );
        assert_eq!(
            Target::parse("redis+cluster://u:p@10.0.0.1:7000, 10.0.0.2:7001/"),
            Target::Cluster(vec![
                "redis://u:p@10.0.0.1:7000".into(),
                "redis://u:p@10.0.0.2:7001".into()
            ])
        );
    }
}
