//! Unit tests of the lifecycle's parsing and checks.

use std::net::{IpAddr, SocketAddr};

use proptest::prelude::*;
use salvo::Request;
use salvo::http::HeaderValue;

use super::{
    ForwardedHeader, IpRange, OriginPolicy, ProxyTrust, Refusal, cap_key, caps::CapExceeded,
    check_handshake, client_ip, positions,
};
use crate::hub::Position;
use crate::ids::{Epoch, MessageId, Topic};

fn request(peer: &str, headers: &[(&str, &str)]) -> Request {
    let mut req = Request::new();
    let addr: SocketAddr = peer.parse().expect("peer address");
    *req.remote_addr_mut() = addr.into();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            salvo::http::header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            req.headers_mut().append(name, value);
        }
    }
    req
}

#[test]
fn ipv6_clients_share_a_cap_per_64_and_mapped_ipv4_is_ipv4() {
    let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
    let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().expect("ip");
    let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
    assert_eq!(cap_key(a), cap_key(b));
    assert_ne!(cap_key(a), cap_key(c));
    let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
    assert_eq!(cap_key(mapped), "192.0.2.7".parse::<IpAddr>().expect("ip"));
}

fn trust(header: ForwardedHeader) -> ProxyTrust {
    ProxyTrust {
        ranges: vec![
            IpRange::parse("127.0.0.1").expect("range"),
            IpRange::parse("10.0.0.0/8").expect("range"),
        ],
        header,
    }
}

#[test]
fn only_the_named_header_counts_read_from_its_right_end() {
    let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
    let xff = trust(ForwardedHeader::XForwardedFor);
    let spoofed = [
        ("x-forwarded-for", "198.51.100.9, 203.0.113.5, 10.1.1.1"),
        ("forwarded", "for=192.0.2.66"),
        ("x-real-ip", "192.0.2.77"),
    ];
    let req = request("127.0.0.1:9", &spoofed);
    assert_eq!(client_ip(&req, &xff), Some(ip("203.0.113.5")));
    let fwd = trust(ForwardedHeader::Forwarded);
    let req = request(
        "127.0.0.1:9",
        &[
            (
                "forwarded",
                "for=192.0.2.1, for=\"[2001:db8::7]:443\";proto=https",
            ),
            ("x-forwarded-for", "198.51.100.1"),
        ],
    );
    assert_eq!(client_ip(&req, &fwd), Some(ip("2001:db8::7")));
    let real = trust(ForwardedHeader::XRealIp);
    let req = request("127.0.0.1:9", &spoofed);
    assert_eq!(client_ip(&req, &real), Some(ip("192.0.2.77")));
    let req = request(
        "127.0.0.1:9",
        &[("x-real-ip", "192.0.2.1"), ("x-real-ip", "192.0.2.2")],
    );
    assert_eq!(
        client_ip(&req, &real),
        Some(ip("127.0.0.1")),
        "not replaced"
    );
    // Several lines are one list, in order.
    let req = request(
        "127.0.0.1:9",
        &[
            ("x-forwarded-for", "192.0.2.1"),
            ("x-forwarded-for", "192.0.2.2"),
        ],
    );
    assert_eq!(client_ip(&req, &xff), Some(ip("192.0.2.2")));
    // Only trusted hops: the left-most; an unreadable entry stops at the last hop reached;
    // the named header missing: the proxy itself.
    let req = request("127.0.0.1:9", &[("x-forwarded-for", "10.0.0.9, 10.0.0.8")]);
    assert_eq!(client_ip(&req, &xff), Some(ip("10.0.0.9")));
    let req = request(
        "127.0.0.1:9",
        &[("x-forwarded-for", "192.0.2.1, unknown, 10.0.0.8")],
    );
    assert_eq!(client_ip(&req, &xff), Some(ip("10.0.0.8")));
    let req = request("127.0.0.1:9", &[("forwarded", "for=192.0.2.1")]);
    assert_eq!(client_ip(&req, &xff), Some(ip("127.0.0.1")));
    // From an untrusted peer nothing is read.
    let req = request("192.0.2.50:9", &spoofed);
    for header in [
        ForwardedHeader::XForwardedFor,
        ForwardedHeader::Forwarded,
        ForwardedHeader::XRealIp,
    ] {
        assert_eq!(client_ip(&req, &trust(header)), Some(ip("192.0.2.50")));
    }
}

#[test]
fn an_unreadable_id_resets_the_topic_it_names_among_several() {
    let topics: Vec<Topic> = ["a", "room:b", "c"]
        .iter()
        .map(|n| Topic::new(n).expect("valid"))
        .collect();
    let own = Topic::new("@me").expect("valid");
    let id = MessageId::new(Epoch::random(), 3);
    let resume = [
        "room:b:junk".to_owned(),
        format!("c:{id}"),
        "@me:".to_owned(),
        "nowhere:junk".to_owned(),
        "junk".to_owned(),
    ];
    let out = positions(&topics, Some(&own), Position::Live, &resume);
    assert_eq!(
        out,
        vec![
            (topics[0].clone(), Position::Live),
            (topics[1].clone(), Position::Invalid),
            (topics[2].clone(), Position::After(id)),
            (own, Position::Invalid),
        ]
    );
}

// The README's status map lists every hub error a join can return, with the status
// `Refusal::status` answers, and `Retry-After` exactly where it is sent.
#[test]
fn the_readme_status_map_is_the_codes_own() {
    let readme = include_str!("../../README.md");
    let rows: Vec<&str> = readme
        .lines()
        .skip_while(|l| !l.starts_with("| hub join |"))
        .take_while(|l| l.starts_with('|'))
        .collect();
    let mut listed = std::collections::HashMap::new();
    for row in &rows {
        let cells: Vec<&str> = row.split('|').collect();
        let status: u16 = cells[3]
            .trim()
            .split(' ')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("a status in {row}"));
        let retry = cells[3].contains("Retry-After");
        for name in cells[2].split('`').skip(1).step_by(2) {
            if name.starts_with(char::is_uppercase) {
                assert!(
                    listed.insert(name, (status, retry)).is_none(),
                    "{name} twice"
                );
            }
        }
    }
    let all = crate::error::tests::every_variant();
    let count = all.len();
    for e in all {
        let name = e.variant_name();
        let status = Refusal::Hub(e).status().as_u16();
        let retry = matches!(status, 429 | 503);
        assert_eq!(listed.get(name), Some(&(status, retry)), "{name}");
    }
    assert_eq!(listed.len(), count, "a name the README lists is no variant");
}

// The defaults the README states: 10,000 connections per endpoint (503), 1,024 per client
// address and 100 per identified user (429), all answered with `Retry-After: 5`.
#[test]
fn the_default_caps_are_10000_in_all_1024_per_address_and_100_per_user() {
    let caps = super::Common::new().caps;
    let held: Vec<_> = (0..10_000)
        .map(|_| caps.acquire(None, None).expect("within the cap"))
        .collect();
    assert_eq!(caps.acquire(None, None).err(), Some(CapExceeded::Total));
    drop(held);
    let ip: IpAddr = "192.0.2.1".parse().expect("ip");
    // 200 well-behaved clients behind one carrier-grade NAT address all get in.
    let held: Vec<_> = (0..1_024)
        .map(|_| caps.acquire(Some(ip), None).expect("within the cap"))
        .collect();
    assert_eq!(caps.acquire(Some(ip), None).err(), Some(CapExceeded::PerIp));
    assert!(
        caps.acquire(Some("192.0.2.2".parse().expect("ip")), None)
            .is_ok()
    );
    drop(held);
    let alice: std::sync::Arc<str> = "alice".into();
    let held: Vec<_> = (0..100)
        .map(|i| {
            let ip = IpAddr::from([198, 51, 100, u8::try_from(i % 250).expect("small")]);
            caps.acquire(Some(ip), Some(&alice))
                .expect("within the cap")
        })
        .collect();
    let other_ip = Some("203.0.113.9".parse().expect("ip"));
    assert_eq!(
        caps.acquire(other_ip, Some(&alice)).err(),
        Some(CapExceeded::PerUser),
        "per user, whatever the address"
    );
    assert!(
        caps.acquire(other_ip, Some(&"bob".into())).is_ok(),
        "another user"
    );
    assert!(
        caps.acquire(other_ip, None).is_ok(),
        "anonymous isn't counted per user"
    );
    drop(held);
    // Every refusal gave back what it took: the counts are whole again.
    let again: Vec<_> = (0..100)
        .map(|_| {
            caps.acquire(other_ip, Some(&alice))
                .expect("all given back")
        })
        .collect();
    assert_eq!(caps.open(), 100);
    drop(again);
    assert_eq!(caps.open(), 0);
    for (which, status) in [
        (CapExceeded::Total, 503),
        (CapExceeded::PerIp, 429),
        (CapExceeded::PerUser, 429),
    ] {
        let mut res = salvo::Response::new();
        Refusal::Cap(which).respond(&mut res, caps.retry_after());
        let retry = res
            .headers()
            .get("retry-after")
            .map(|v| v.as_bytes().to_vec());
        assert_eq!(
            (res.status_code.map(|s| s.as_u16()), retry),
            (Some(status), Some(b"5".to_vec()))
        );
    }
}

fn topic_name() -> impl Strategy<Value = String> {
    "[a-z@:]{1,6}"
}

proptest! {
    // Any resume input gives one position per requested topic (plus, at most, the
    // connection's own direct log), never a panic and never a refusal.
    #[test]
    fn positions_cover_every_topic_whatever_the_resume_input(
        names in proptest::collection::vec(topic_name(), 1..4),
        resume in proptest::collection::vec(".{0,40}", 0..4),
        recent in proptest::option::of(0usize..5),
    ) {
        let topics: Vec<Topic> = names.iter().filter_map(|n| Topic::new(n).ok()).collect();
        prop_assume!(!topics.is_empty());
        let own = Topic::new("@me").ok();
        let base = recent.map_or(Position::Live, Position::Recent);
        let out = positions(&topics, own.as_ref(), base, &resume);
        for t in &topics {
            prop_assert!(out.iter().any(|(o, _)| o == t));
        }
        for (t, _) in &out {
            prop_assert!(topics.contains(t) || Some(t) == own.as_ref());
        }
    }

    // A `<topic>:<id>` for a requested topic resumes exactly that topic.
    #[test]
    fn a_named_id_resumes_its_topic(offset in 0u64..1_000_000, which in 0usize..3) {
        let topics: Vec<Topic> = ["a:b", "c", "@me"].iter().map(|n| Topic::new(n).expect("valid")).collect();
        let id = MessageId::new(Epoch::random(), offset);
        let resume = vec![format!("{}:{id}", topics[which])];
        let out = positions(&topics, None, Position::Live, &resume);
        for (t, p) in &out {
            let expected = if *t == topics[which] { Position::After(id) } else { Position::Live };
            prop_assert_eq!(*p, expected);
        }
    }

    // A named id for a topic this request doesn't ask for (a room the server added) is
    // ignored, never read as a bad id for the one requested topic.
    #[test]
    fn a_named_id_of_another_topic_changes_nothing(offset in 0u64..1_000_000) {
        let topics = vec![Topic::new("main").expect("valid")];
        let id = MessageId::new(Epoch::random(), offset);
        let out = positions(&topics, None, Position::Live, &[format!("elsewhere:{id}")]);
        prop_assert_eq!(out, vec![(topics[0].clone(), Position::Live)]);
        let out = positions(&topics, None, Position::Live, &["main:zzz".to_owned()]);
        prop_assert_eq!(out, vec![(topics[0].clone(), Position::Invalid)]);
    }

    // Forwarding headers of any content never panic, and are ignored from untrusted peers.
    #[test]
    fn client_ip_never_panics(
        xff in ".{0,60}",
        fwd in ".{0,60}",
        real in ".{0,30}",
        trusted_peer in any::<bool>(),
    ) {
        let peer = if trusted_peer { "127.0.0.1:1" } else { "192.0.2.1:1" };
        let req = request(peer, &[("x-forwarded-for", &xff), ("forwarded", &fwd), ("x-real-ip", &real)]);
        for header in [ForwardedHeader::XForwardedFor, ForwardedHeader::Forwarded, ForwardedHeader::XRealIp] {
            let trust = ProxyTrust {
                ranges: vec![IpRange::parse("127.0.0.0/8").expect("range")],
                header,
            };
            let ip = client_ip(&req, &trust);
            prop_assert!(ip.is_some());
            if !trusted_peer {
                prop_assert_eq!(ip, "192.0.2.1".parse().ok());
            }
        }
    }

    // Ranges: any string parses or not, never panics; a range contains its own address.
    #[test]
    fn ip_ranges_parse_safely(s in ".{0,40}", a in any::<[u8; 4]>(), prefix in 0u8..=32) {
        let _ = IpRange::parse(&s);
        let addr = IpAddr::from(a);
        let range = IpRange::parse(&format!("{addr}/{prefix}")).expect("valid range");
        prop_assert!(range.contains(addr));
    }

    // Origins: anything but the same host or an allowlisted origin is refused.
    #[test]
    fn only_exact_origins_pass(origin in ".{0,60}") {
        let mut policy = OriginPolicy::default();
        policy.set_allowed(&["https://app.example"]);
        let req = request("127.0.0.1:1", &[("origin", &origin), ("host", "svc.example:8080")]);
        let lowered = origin.trim_end_matches('/').to_ascii_lowercase();
        let should_pass = lowered == "https://app.example"
            || lowered == "http://svc.example:8080"
            || lowered == "https://svc.example:8080"
            || HeaderValue::from_str(&origin).is_err();
        let passed = policy.check(&req, &salvo::Depot::new()).is_ok();
        prop_assert_eq!(passed, should_pass, "{:?}", origin);
    }

    // Handshake headers of any content: a typed refusal or success, never a panic.
    #[test]
    fn handshake_checks_never_panic(
        connection in ".{0,20}",
        upgrade in ".{0,20}",
        key in ".{0,30}",
        version in ".{0,4}",
    ) {
        let req = request("127.0.0.1:1", &[
            ("connection", &connection),
            ("upgrade", &upgrade),
            ("sec-websocket-key", &key),
            ("sec-websocket-version", &version),
        ]);
        match check_handshake(&req) {
            Ok(()) => prop_assert_eq!(version.as_str(), "13"),
            Err(Refusal::Handshake(_) | Refusal::Version) => {}
            Err(other) => prop_assert!(false, "unexpected refusal {:?}", other),
        }
    }
}
