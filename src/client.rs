//! The browser client: one small JavaScript module, served by a Salvo handler.
//!
//! [`ClientScript`] serves [`SOURCE`], a plain ES module (no build step, no dependencies) that
//! wraps the browser's `WebSocket` and `EventSource` for the endpoints of this crate. Mount it at
//! a path of your choice and import it from your pages:
//!
//! ```
//! use salvo::prelude::*;
//! use salvo::test::{ResponseExt, TestClient};
//! use salvo_realtime::client::ClientScript;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let router = Router::new().push(Router::with_path("realtime.js").get(ClientScript));
//!
//! # let router = Service::new(router);
//! let mut res = TestClient::get("http://localhost/realtime.js").send(&router).await;
//! assert_eq!(res.status_code, Some(StatusCode::OK));
//! assert_eq!(
//!     res.headers()["content-type"],
//!     "text/javascript; charset=utf-8",
//! );
//! assert!(res.take_string().await.unwrap().contains("export class RealtimeSocket"));
//! # }
//! ```
//!
//! The response is `text/javascript; charset=utf-8` with `Cache-Control: no-cache` and an
//! `ETag`: browsers keep the script and revalidate it, getting a bodiless `304` until the crate
//! (and so the script) changes.
//!
//! # The JavaScript API
//!
//! ```text
//! import { RealtimeSocket, RealtimeEvents } from "/realtime.js";
//!
//! // WebSocket (WsEndpoint): room from the query, the last 50 messages on first connect.
//! const chat = new RealtimeSocket("/ws?room=lobby&name=alice", { recent: 50 });
//! chat.on("message", (m) => show(m.from, m.data));        // {type, topic, id, event, from, ts, data}
//! chat.on("presence", (p) => setMembers(p.members));       // snapshot after (re)joining
//! chat.on("reset", (r) => notice("earlier messages are unavailable: " + r.reason));
//! chat.on("error", (e) => e.error === "unavailable" && retryLater());
//! chat.on("status", (s) => setStatus(s.state));           // connecting | open | reconnecting | closed
//! chat.send({ text: "hi" });                               // strings and binary as is, else JSON
//! chat.close();
//!
//! // Server-Sent Events (SseEndpoint): named message events must be listed.
//! const feed = new RealtimeEvents("/events", { events: ["alert"] });
//! feed.on("message", (m) => show(m.event ?? "message", m.data));
//! ```
//!
//! Both classes (also reachable as `connect(url, options)` and `subscribe(url, options)`) share:
//!
//! | member | what it does |
//! |---|---|
//! | `on(type, fn)` | calls `fn(detail)` on each event of `type`; returns a function that unsubscribes |
//! | `close()` | closes the connection and cancels reconnecting, for good |
//! | `lastId(topic?)` | the last message id seen on `topic` (a room, or a `@user` direct log), or on any topic; `null` if none |
//! | `state` | `"connecting"`, `"open"`, `"reconnecting"` or `"closed"` |
//! | `duplicates` | how many messages the dedup safety net dropped (0 when resume is exact) |
//!
//! `RealtimeSocket` adds `send(data)`: strings, `Blob`s and buffers go as they are, other values
//! as JSON; while reconnecting, up to `queueLimit` frames are queued and sent on reopening
//! (returns `false` when the queue is full or the socket is closed).
//!
//! Events:
//!
//! | type | detail |
//! |---|---|
//! | `message` | a message: `{type: "message", topic, id, event, from, ts, data}`; a binary payload (sent as base64 with `binary: true`) arrives as a `Uint8Array` in `data`, with `binary: true`. Presence notices (`event` `presence.join` / `presence.leave`, `data` `{user, data}`) have no `id`. SSE: `topic` is the `topic` option, no `from`/`ts`, binary stays base64 text |
//! | `presence` | `{type: "presence", topic, members: [{user, connections, data}]}`, once per (re)join: the complete member list (a big room's snapshot arrives in pages, which the client joins into one event) |
//! | `reset` | `{topic, requested, epoch, replay_after, reason}`: the resume position was lost; earlier messages are unavailable, what history holds follows. `reason`: `epoch_changed` (server restart), `expired` (history moved past it), `ahead` (the log is behind the id), `invalid` (the id sent couldn't be read; `requested` is `null`) |
//! | `lagged` | `{topic, missed}`: this client fell behind and lost `missed` messages |
//! | `error` | `{type: "error", error, message}`: a message this socket sent was not delivered (WebSocket only; codes below) |
//! | `status` | `{state, ...}`: `connecting` (`attempt`), `open` (`resumed`), `reconnecting` (`attempt`, `delay` in ms, WebSocket close `code`/`reason`), `closed` |
//! | `raw` | a WebSocket frame that isn't an envelope ([`Framing::Raw`](crate::ws::Framing::Raw)) |
//!
//! `error` codes (the connection stays open):
//!
//! | `error` | meaning |
//! |---|---|
//! | `rate_limited` | sent faster than the endpoint's inbound rate limit; the message was dropped |
//! | `unavailable` | the hub's backend is down or timed out; the message was **not** delivered and is safe to send again |
//! | `json_too_deep` | JSON nested deeper than [`MAX_JSON_DEPTH`](crate::MAX_JSON_DEPTH); dropped |
//! | `refused` | the hub refused the message (for example [`InboundPolicy::Reject`](crate::InboundPolicy::Reject)) |
//!
//! Options (all optional): `minDelay` (500 ms) and `maxDelay` (15 s) bound the reconnect delay,
//! which doubles per failed attempt with random jitter (half to all of it) and starts over once
//! a connection has lasted `stableAfter` (3 s); `recent` (WebSocket) asks for the last *n*
//! retained messages of every topic without a known id; `queueLimit` (WebSocket, 100); SSE
//! `topic` (reported as `msg.topic`, which SSE doesn't carry), `events` (message event names
//! to listen for besides `message`; default `["presence.join", "presence.leave"]`) and
//! `withCredentials`.
//!
//! # Resume and dedup
//!
//! A `RealtimeSocket` keeps the last id it saw on every topic: each room of the connection and
//! the user's direct-message log (`@<user>` of [`Rooms`](crate::Rooms)). Each reconnect
//! replaces any `last` parameters of the URL with one `last=<topic>:<id>` per topic (the server
//! splits at the last `:`), and sends `recent` for the topics without one. A
//! `RealtimeEvents` lets the browser reconnect once with its own `Last-Event-ID`, and if that
//! fails reopens after a backoff with `?lastEventId=`. Either way the server sends exactly what
//! was missed. Presence notices carry no id (they are live-only, never replayed; the presence
//! snapshot after a reconnect tells who is there), so they never move the resume position and
//! are never taken for duplicates. As a safety net, a message whose id is not past the last one
//! seen from its log (ids are `<epoch>-<offset>`, each log in offset order) is dropped and
//! counted in `duplicates`. After a `reset` the client continues from the reset's
//! `replay_after`, so the replay that follows is shown.
//!
//! Message payloads that are JSON text arrive as their value (`data` is an object, number...),
//! other text as a string; SSE decodes the same way, so one page handles both transports.
//! A WebSocket refused before the upgrade (401, 403, 429, 503) looks to the browser like any
//! failed connection: the client keeps retrying with backoff, so validate input before
//! connecting.

use salvo::http::StatusCode;
use salvo::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, HeaderValue, IF_NONE_MATCH};
use salvo::{Depot, FlowCtrl, Handler, Request, Response, async_trait};

/// The client module's JavaScript source, as [`ClientScript`] serves it.
pub const SOURCE: &str = include_str!("client.js");

/// FNV-1a over the source: a validator that changes whenever the script does.
const fn fingerprint(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

const FINGERPRINT: u64 = fingerprint(SOURCE.as_bytes());

/// A Salvo handler serving the browser client module ([`SOURCE`]); see the
/// [module docs](self) for the JavaScript API.
///
/// Answers with `Content-Type: text/javascript; charset=utf-8`, `Cache-Control: no-cache` and an
/// `ETag`, and with `304 Not Modified` when the request's `If-None-Match` matches.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientScript;

#[async_trait]
impl Handler for ClientScript {
    async fn handle(
        &self,
        req: &mut Request,
        _depot: &mut Depot,
        res: &mut Response,
        _ctrl: &mut FlowCtrl,
    ) {
        let etag = format!("\"rt-{FINGERPRINT:016x}\"");
        let headers = res.headers_mut();
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        if let Ok(value) = HeaderValue::from_str(&etag) {
            headers.insert(ETAG, value);
        }
        let fresh = req
            .headers()
            .get(IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
        if fresh {
            res.status_code(StatusCode::NOT_MODIFIED);
            return;
        }
        res.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/javascript; charset=utf-8"),
        );
        res.body(SOURCE);
    }
}

#[cfg(test)]
mod tests {
    use salvo::prelude::*;
    use salvo::test::{ResponseExt, TestClient};

    use super::ClientScript;

    #[tokio::test]
    async fn revalidation_answers_304() {
        let router = Service::new(Router::with_path("rt.js").get(ClientScript));
        let res = TestClient::get("http://localhost/rt.js")
            .send(&router)
            .await;
        let etag = res.headers()["etag"].to_str().expect("ascii").to_owned();
        let mut again = TestClient::get("http://localhost/rt.js")
            .add_header("if-none-match", &etag, true)
            .send(&router)
            .await;
        assert_eq!(again.status_code, Some(StatusCode::NOT_MODIFIED));
        assert!(again.take_string().await.expect("body").is_empty());
    }
}
