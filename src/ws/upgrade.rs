//! The upgrade's own parts: whether the client offers the channel protocol, and the `101`
//! that hands the connection over (every check of the handshake ran before the join, in
//! `crate::endpoint`).

use salvo::Request;
use salvo::Response;
use salvo::http::StatusCode;
use salvo::http::header::{HeaderValue, SEC_WEBSOCKET_PROTOCOL};
use salvo::http::headers::{self, HeaderMapExt, SecWebsocketAccept, SecWebsocketKey};

use crate::channel::protocol::SUBPROTOCOL;

/// Whether the client offers the channel protocol in `Sec-WebSocket-Protocol`.
pub(super) fn offers_channel_protocol(req: &Request) -> bool {
    req.headers()
        .get_all(salvo::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL)
}

/// Answers the handshake with `101 Switching Protocols`: the accept key, and the channel
/// protocol when the client speaks it.
pub(super) fn switching_protocols(res: &mut Response, key: SecWebsocketKey, channel: bool) {
    res.status_code(StatusCode::SWITCHING_PROTOCOLS);
    let headers = res.headers_mut();
    headers.typed_insert(headers::Connection::upgrade());
    headers.typed_insert(headers::Upgrade::websocket());
    headers.typed_insert(SecWebsocketAccept::from(key));
    if channel {
        headers.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
}
