//! A WebSocket client for the tests over real sockets (tokio-tungstenite, an independent
//! implementation): the channel protocol's handshake, JSON envelopes out and in.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A client's socket.
pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a handshake or a frame may take before the test fails (a hang guard).
pub const WAIT: Duration = Duration::from_secs(10);

/// Connects to `url` offering the channel protocol (`salvo-realtime.v1`), and checks that the
/// server chose it.
pub async fn connect_channel(url: &str) -> Client {
    let mut req = url.into_client_request().expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "salvo-realtime.v1".parse().expect("header"),
    );
    let (ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake in time")
        .expect("handshake");
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("salvo-realtime.v1")
    );
    ws
}

/// Sends `value` as one text frame.
pub async fn send_json(ws: &mut Client, value: Value) {
    ws.send(Message::text(value.to_string()))
        .await
        .expect("send");
}

/// The next frame, within `within` (a hang guard: a test fails rather than waits forever).
pub async fn next_frame(ws: &mut Client, within: Duration) -> Message {
    tokio::time::timeout(within, ws.next())
        .await
        .expect("a frame in time")
        .expect("stream open")
        .expect("frame")
}

/// The next JSON envelope, skipping pings and pongs (any other frame fails the test).
pub async fn next_json(ws: &mut Client) -> Value {
    loop {
        match next_frame(ws, WAIT).await {
            Message::Text(t) => return serde_json::from_str(&t).expect("json envelope"),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// The next message envelope, skipping presence snapshots and notices.
pub async fn next_message(ws: &mut Client) -> Value {
    loop {
        let v = next_json(ws).await;
        if v["type"] == "message" && v.get("event").is_none() {
            return v;
        }
    }
}
