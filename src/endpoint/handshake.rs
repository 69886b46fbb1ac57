//! The WebSocket handshake's checks (RFC 6455 §4.2.1), made before anything joins.

use salvo::Request;

use super::Refusal;

/// Checks the WebSocket handshake of RFC 6455 §4.2.1 completely, before anything joins or is
/// counted: GET over HTTP/1.1 or later, `Connection` with the `upgrade` token, `Upgrade:
/// websocket`, a `Sec-WebSocket-Key` of 16 base64-encoded bytes, and version 13; and that the
/// connection can be upgraded at all (the server gave the request hyper's upgrade handle).
pub(crate) fn check_handshake(req: &Request) -> Result<(), Refusal> {
    use salvo::http::header::{CONNECTION, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE};
    if req.method() != salvo::http::Method::GET {
        return Err(Refusal::Handshake("a websocket handshake must be a GET"));
    }
    if req.version() < salvo::http::Version::HTTP_11 {
        return Err(Refusal::Handshake("a websocket handshake needs HTTP/1.1"));
    }
    let headers = req.headers();
    let has_token = |name, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if !has_token(CONNECTION, "upgrade") {
        return Err(Refusal::Handshake("missing `Connection: upgrade`"));
    }
    if !has_token(UPGRADE, "websocket") {
        return Err(Refusal::Handshake("missing `Upgrade: websocket`"));
    }
    let mut keys = headers.get_all(SEC_WEBSOCKET_KEY).iter();
    let key_ok = match (keys.next(), keys.next()) {
        (Some(key), None) => {
            let key = key.as_bytes();
            key.len() == 24
                && key.ends_with(b"==")
                && key[..22]
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
        }
        _ => false,
    };
    if !key_ok {
        return Err(Refusal::Handshake(
            "missing or malformed `Sec-WebSocket-Key`",
        ));
    }
    let mut versions = headers.get_all(SEC_WEBSOCKET_VERSION).iter();
    match (versions.next(), versions.next()) {
        (None, _) => return Err(Refusal::Handshake("missing `Sec-WebSocket-Version`")),
        (Some(v), None) if v.as_bytes() == b"13" => {}
        _ => return Err(Refusal::Version),
    }
    if req
        .extensions()
        .get::<salvo::hyper::upgrade::OnUpgrade>()
        .is_none()
    {
        return Err(Refusal::NotUpgradable);
    }
    Ok(())
}
