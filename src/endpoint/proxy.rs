//! Trusted proxies, and the client address they forward.

use std::net::IpAddr;

use salvo::Request;

/// An address range (`10.0.0.0/8`, `::1`, `fd00::/8`) of trusted proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IpRange {
    addr: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Parses `addr` or `addr/prefix`.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (
                a.trim().parse::<IpAddr>().ok()?,
                Some(p.trim().parse::<u8>().ok()?),
            ),
            None => (s.trim().parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Self { addr, prefix })
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
pub(super) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    }
}

/// Which forwarding header the trusted proxies in front of an endpoint write the client's
/// address in; see [`trusted_proxies`](crate::ws::WsEndpoint::trusted_proxies). Only the
/// header named here is read: a proxy passes the others through as the client sent them, so
/// reading them would let a client pick the address its connections are counted under.
///
/// ```
/// use salvo_realtime::{PubSub, endpoint::ForwardedHeader, ws::WsEndpoint};
///
/// // nginx on the same host with `proxy_set_header X-Real-IP $remote_addr;`
/// let ws = WsEndpoint::new(PubSub::new())
///     .trusted_proxies(&["127.0.0.1", "::1"])
///     .forwarded_header(ForwardedHeader::XRealIp);
/// # drop(ws);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: <client>, <proxy 1>, ...`, to which each proxy appends the address it
    /// got the request from (nginx's `$proxy_add_x_forwarded_for`, HAProxy's `option
    /// forwardfor`, most cloud load balancers). Read from the right: the right-most entry that
    /// isn't a trusted proxy is the client. The default.
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=<client>, for=<proxy 1>`, appended to the same way; read the
    /// same way, from each element's `for=`.
    Forwarded,
    /// `X-Real-IP: <client>`: one address the proxy sets, replacing any the client sent
    /// (nginx's `proxy_set_header X-Real-IP $remote_addr`). Two `X-Real-IP` lines mean the
    /// proxy didn't replace the client's: the proxy's own address counts then.
    XRealIp,
}

/// Which peers' forwarding headers are believed, and which header they write.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProxyTrust {
    pub(super) ranges: Vec<IpRange>,
    pub(super) header: ForwardedHeader,
}

impl ProxyTrust {
    fn trusts(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|r| r.contains(ip))
    }
}

/// The client's address: the TCP peer, or, when the peer is a trusted proxy, the address the
/// proxies wrote in the one header the operator named. Walking a forwarding chain from its
/// right end (the entry the nearest proxy wrote), the first address that isn't a trusted proxy
/// is the client; if every entry is one, the left-most; an unreadable entry stops the walk at
/// the last proxy reached (what is left of it can't be trusted). Headers from any other peer
/// are ignored, so they can't be spoofed around a cap.
pub(crate) fn client_ip(req: &Request, trust: &ProxyTrust) -> Option<IpAddr> {
    let peer = canonical(req.remote_addr().ip()?);
    if !trust.trusts(peer) {
        return Some(peer);
    }
    let headers = req.headers();
    let joined = |name: &str| {
        headers
            .get_all(name)
            .iter()
            // A line that isn't visible ASCII is one unreadable entry: it stops the walk.
            .map(|v| v.to_str().unwrap_or("?"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let entry: fn(&str) -> Option<IpAddr> = match trust.header {
        ForwardedHeader::XRealIp => {
            let mut values = headers.get_all("x-real-ip").iter();
            return match (values.next(), values.next()) {
                (Some(v), None) => v.to_str().ok().and_then(parse_node).or(Some(peer)),
                _ => Some(peer),
            };
        }
        ForwardedHeader::XForwardedFor => parse_node,
        ForwardedHeader::Forwarded => |element| {
            element.split(';').find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| parse_node(v))?
            })
        },
    };
    let name = match trust.header {
        ForwardedHeader::Forwarded => "forwarded",
        _ => "x-forwarded-for",
    };
    let chain = joined(name);
    let mut reached = peer;
    for element in chain.rsplit(',').filter(|e| !e.trim().is_empty()) {
        let Some(ip) = entry(element) else {
            break;
        };
        if !trust.trusts(ip) {
            return Some(ip);
        }
        reached = ip;
    }
    Some(reached)
}

/// One address of a forwarding header: `1.2.3.4`, `1.2.3.4:80`, `"[2001:db8::1]:443"`,
/// `2001:db8::1`; `unknown` and obfuscated names give `None`.
fn parse_node(v: &str) -> Option<IpAddr> {
    let v = v.trim().trim_matches('"');
    if let Ok(ip) = v.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(rest) = v.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok().map(canonical);
    }
    v.rsplit_once(':')
        .and_then(|(host, _port)| host.parse().ok())
        .map(canonical)
}
