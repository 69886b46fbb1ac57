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
//! let script = res.take_string().await.unwrap();
//! assert!(script.contains("export class RealtimeSocket"));
//! assert!(script.contains("export function channels"));
//! # }
//! ```
//!
//! The response is `text/javascript; charset=utf-8` with `Cache-Control: no-cache` and an
//! `ETag`: browsers keep the script and revalidate it, getting a bodiless `304` until the crate
//! (and so the script) changes.
//!
//! For pages written in TypeScript, [`ClientTypes`] serves the module's declarations
//! ([`SOURCE_TYPES`], a `.d.ts` covering every export below): mount it at `realtime.d.ts`.
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
//! chat.on("error", (e) => e.code === "unavailable" && retryLater());
//! chat.on("reply", (r) => show(r.topic, r.reply));         // a publish handler answered a frame
//! chat.on("status", (s) => setStatus(s.state));           // connecting | open | reconnecting | closed
//! chat.send({ text: "hi" });                               // strings and binary as is, else JSON
//! chat.sendEvent("move", { dx: 1 });                       // {"event":"move","data":{..}}: event_frames(true)
//! chat.close();
//!
//! // The URL as a function: called on every (re)connect, so each can carry a fresh token.
//! const game = new RealtimeSocket(async () => `/ws?topic=game:1&token=${await fetchToken()}`);
//!
//! // Server-Sent Events (SseEndpoint): named message events must be listed.
//! const feed = new RealtimeEvents("/events", { events: ["alert"] });
//! feed.on("message", (m) => show(m.event ?? "message", m.data));
//! ```
//!
//! Both classes (also reachable as `connect(url, options)` and `subscribe(url, options)`), and
//! `RealtimeChannels` [below](#channels-many-topics-on-one-socket), share:
//!
//! | member | what it does |
//! |---|---|
//! | `on(type, fn)` | calls `fn(detail)` on each event of `type`; returns a function that unsubscribes |
//! | `close()` | closes the connection and cancels reconnecting, for good |
//! | `lastId(topic?)` | the last message id seen on `topic` (a room, or a `@user` direct log), or on any topic; `null` if none |
//! | `url` | the URL, or the URL function, as given |
//! | `state` | `"connecting"`, `"open"`, `"reconnecting"` or `"closed"` |
//! | `duplicates` | how many messages the dedup safety net dropped (0 when resume is exact) |
//!
//! Each constructor (and factory) takes the URL as a string or a `URL`, or as a function
//! returning one (or a promise of one). The function is called on every connect and
//! reconnect, so each can carry a fresh token in its query; if it throws (or its promise
//! rejects) the client tries again after the next backoff delay. See
//! [identity expiry](#identity-expiry-and-refresh).
//!
//! `RealtimeSocket` adds `send(data)`: strings, `Blob`s and buffers go as they are, other values
//! as JSON; while reconnecting, up to `queueLimit` frames are queued and sent on reopening
//! (returns `false` when the queue is full or the socket is closed). And
//! `sendEvent(event, data)`: sends `{"event": event, "data": data}` (`data` absent: `null`), as
//! `send` does; to an endpoint with [`event_frames(true)`](crate::ws::WsEndpoint::event_frames)
//! that is a message with the event name `event`, routed to the topic's
//! [`on_event`](crate::channel::Channels::on_event) handler (elsewhere it is just a JSON
//! frame).
//!
//! Events:
//!
//! | type | detail |
//! |---|---|
//! | `message` | a message: `{type: "message", topic, id, event, from, ts, data, tags}`; a binary payload (sent as base64 with `binary: true`) arrives as a `Uint8Array` in `data`, with `binary: true`; `tags` (`{key: value}`) only when the server tagged it ([`Publication::tag`](crate::Publication::tag)). Presence notices (`event` `presence.join` / `presence.leave`, `data` `{user, data}`) have no `id`. SSE: `topic` is the `topic` option, no `from`/`ts`/`tags`, binary stays base64 text |
//! | `presence` | `{type: "presence", topic, members: [{user, connections, data}]}`, once per (re)join: the complete member list (a big room's snapshot arrives in pages, which the client joins into one event) |
//! | `reset` | `{topic, requested, epoch, replay_after, reason}`: the resume position was lost; earlier messages are unavailable, what history holds follows. `reason`: `epoch_changed` (server restart), `expired` (history moved past it), `ahead` (the log is behind the id), `invalid` (the id sent couldn't be read; `requested` is `null`) |
//! | `lagged` | `{topic, missed}`: this client fell behind and lost `missed` messages |
//! | `error` | `{type: "error", code, message}`: a message this socket sent was not delivered (WebSocket only; codes below) |
//! | `reply` | `{topic, reply}`: what a [`Channels`](crate::channel::Channels) publish handler answered a frame this socket sent to `topic` ([`Outcome::reply`](crate::channel::Outcome::reply); WebSocket only, never a `message`) |
//! | `joined` | `{topic, reply}`: the join reply of a topic this socket asked for when it connected (an [`authorize`](crate::channel::Channels::authorize) rule's data; WebSocket only, never a `message`) |
//! | `status` | `{state, ...}`: `connecting` (`attempt`), `open` (`resumed`), `reconnecting` (`attempt`, `delay` in ms, WebSocket close `code`/`reason`: 4001 when the identity expired), `closed` |
//! | `raw` | a WebSocket frame that isn't an envelope ([`Framing::Raw`](crate::ws::Framing::Raw)) |
//!
//! `error` codes (the connection stays open):
//!
//! | `error` | meaning |
//! |---|---|
//! | `rate_limited` | sent faster than the endpoint's inbound rate limit; the message was dropped |
//! | `unavailable` | the hub's backend is down or timed out; the message was **not** delivered and is safe to send again |
//! | `json_too_deep` | JSON nested deeper than [`MAX_JSON_DEPTH`](crate::hub::MAX_JSON_DEPTH); dropped |
//! | `refused` | the hub refused the message (for example [`InboundPolicy::Reject`](crate::hub::InboundPolicy::Reject)) |
//! | `unknown_event` | a [`Channels`](crate::channel::Channels) room takes named events only ([`on_event`](crate::channel::Channels::on_event)), and a plain frame has none |
//!
//! and a publish handler's own codes (the [`ws`](crate::ws#wire-format) module docs list
//! them all).
//!
//! Options (all optional): `minDelay` (500 ms) and `maxDelay` (15 s) bound the reconnect delay,
//! which doubles per failed attempt with random jitter (half to all of it) and starts over once
//! a connection has lasted `stableAfter` (3 s); `recent` (WebSocket) asks for the last *n*
//! retained messages of every topic without a known id; `queueLimit` (WebSocket, 100); SSE
//! `topic` (reported as `msg.topic`, which SSE doesn't carry), `events` (message event names
//! to listen for besides `message`; default `["presence.join", "presence.leave"]`) and
//! `withCredentials`.
//!
//! # Channels: many topics on one socket
//!
//! `channels(url, options)` returns a `RealtimeChannels`: a WebSocket that speaks the
//! [channel protocol](crate::ws#the-channel-protocol) (`salvo-realtime.v1`) to a
//! [`WsEndpoint`](crate::ws::WsEndpoint) over a [`Channels`](crate::channel::Channels) hub (or
//! [`Rooms`](crate::Rooms)). Topics are subscriptions on the one socket, joined and left
//! without reconnecting; publishes and calls are answered, so a page learns what the server's
//! rules decided.
//!
//! ```text
//! import { channels } from "/realtime.js";
//!
//! const rt = channels("/ws?name=alice");                   // no topic needed in the URL
//! const lobby = rt.subscribe("lobby", { recent: 50 });     // data: for the authorization rule
//! lobby.on("message", (m) => show(m.data));                // presence, reset, lagged as above
//! lobby.ready.catch((e) => notice(e.code));                // e.g. "forbidden"
//! lobby.on("error", (e) => notice(e.code));                // refused when resubscribing
//!
//! try {
//!   const { id } = await rt.publish("lobby", { text: "hi" });
//! } catch (e) {
//!   if (e.code === "moderated") notice(e.message);         // a publish handler refused it
//! }
//! const board = await rt.call("move", { game: "7", cell: 4 }, { timeout: 5000 });
//!
//! // Join replies, event routing (Phoenix's channel.on / channel.push).
//! const game = rt.subscribe("game:7");
//! const { reply: initial } = await game.ready;             // the authorization rule's reply
//! game.on("joined", ({ reply }) => redraw(reply));         // joined again after a reconnect
//! game.onEvent("moved", (data, m) => place(m.from, data)); // only messages of event "moved"
//! const at = await game.push("move", { dx: 1 });           // the handler's answer
//!
//! // Filters: only the messages tagged ticker AAPL or MSFT, kept across reconnects.
//! const prices = rt.subscribe("prices", { filter: { tags: { ticker: ["AAPL", "MSFT"] } } });
//! prices.on("message", (m) => quote(m.tags.ticker, m.data));
//! await prices.setFilter({ tags: { ticker: ["GOOG"] } }); // from the last id seen
//!
//! rt.on("subscribed", ({ topic, subscription }) => addTab(topic, subscription)); // by the server
//! rt.on("direct", (m) => toast(m.data));                   // sent to this connection alone
//! await lobby.unsubscribe();
//!
//! // An expiring identity, renewed over the socket (and a fresh URL if it expired anyway).
//! const live = channels(async () => `/ws?token=${await fetchToken()}`, { refresh: fetchToken });
//! live.on("error", (e) => e.code === "unauthorized" && showLogin());
//! ```
//!
//! | member | what it does |
//! |---|---|
//! | `subscribe(topic, {recent, last, data, filter})` | a subscription (the same object again for a topic already subscribed, its options unchanged); sent now, or when the socket opens. `recent`: the last *n* messages; `last`: start after this id (one kept from an earlier visit) while none was seen here; `data`: for the authorization rule; `filter`: `{tags: {key: [values]}}`, only the messages tagged with one of the values for every key (see [`Filter`](crate::hub::Filter)) |
//! | `subscription(topic)` | the subscription to `topic`, or `null` |
//! | `publish(topic, data, {event, echo})` | a `Promise` of `{id, reply}`: `id` when the message was published to `topic`, `reply` when a publish handler answered (each absent otherwise, `{}` for neither); `data` is any JSON (a string goes as text); `echo: false` leaves the publisher out |
//! | `call(method, data, {timeout})` | a `Promise` of the method's result; `timeout` in ms (default the `callTimeout` option, 10 s) |
//! | `refresh(token)` | renews this connection's identity without reconnecting ([`WsEndpoint::refresh`](crate::ws::WsEndpoint::refresh) checks `token`, a string of 1 to 8,192 bytes); a `Promise` of `{expiresIn}`, ms until it now expires (`null`: it no longer does). Rejects like a call: the server's `unauthorized`, `forbidden`, `invalid_data`, `handler_failed` or `unsupported` (the old expiry still holds), or `timeout`, `disconnected` |
//! | `on`, `close`, `lastId`, `state`, `duplicates` | as above (`duplicates` counts every topic) |
//!
//! Options (all optional): `callTimeout` (10 s, from when the call is sent), `queueLimit` (100
//! commands waiting), `sendBurst` (80) and `sendRate` (40 a second), `refresh` (a function
//! returning a token, or a promise of one: the client renews an expiring identity with it, see
//! [below](#identity-expiry-and-refresh); default none), and `minDelay`, `maxDelay`,
//! `stableAfter` as above. Every command leaves through a token bucket of `sendBurst` frames,
//! refilled at `sendRate`: under the endpoint's default inbound limit (50/s, burst 100), so a
//! client with many topics resubscribing, or a burst of publishes, is paced rather than refused
//! `rate_limited`. Raise both with the endpoint's [`rate_limit`](crate::ws::WsEndpoint::rate_limit).
//!
//! A subscription has:
//!
//! | member | what it does |
//! |---|---|
//! | `topic` | its topic |
//! | `state` | `"subscribing"`, `"subscribed"`, `"unsubscribed"` or `"refused"` |
//! | `lastId` | the last id seen on the topic, or `null` |
//! | `filter` | the filter it asks the server for, or `null` |
//! | `ready` | a `Promise` settled by the server's first answer: `{topic, reply}`, `reply` the authorization rule's join reply (`undefined` without one); once it rejects the subscription has ended, and `subscribe` asks again |
//! | `on(type, fn)` | its events, below |
//! | `onEvent(event, fn)` | calls `fn(data, message)` for each message of the event name `event` only; returns a function that unsubscribes |
//! | `publish(data, {event, echo})` | `rt.publish(topic, data, options)` |
//! | `push(event, data, {echo})` | publishes under the event name `event`; a `Promise` of the handler's answer (the reply's `reply`, `undefined` without one) |
//! | `setFilter(filter)` | subscribes again with `filter` (`null`: every message) from the last id seen, so no message the new filter passes is lost; a `Promise` of `{topic, reply}` once the server applied it (while the socket is away, with the resubscription). Refused (`invalid_filter`), it rejects and the previous filter stays |
//! | `unsubscribe()` | a `Promise` of `{topic, was_subscribed}`; nothing more of the topic is emitted once it is called |
//!
//! Every promise rejects with a `RealtimeError` (exported): an `Error` with `code` and
//! `message`, the server's (the codes of the channel protocol, such as `unknown_event` for an
//! event name the topic has no handler for or `invalid_filter`, and a handler's own, such as
//! `moderated`), or the client's own:
//!
//! | `code` | meaning |
//! |---|---|
//! | `timeout` | a call got no reply within its timeout (a late reply is ignored) |
//! | `disconnected` | the socket dropped before the reply (a publish may or may not have been published), or a call was made while it was not open |
//! | `queue_full` | more than `queueLimit` (100) commands wait for the socket, or for their turn to be sent |
//! | `closed` | `close()` was called |
//! | `unsubscribed` | (`ready`, `setFilter`) the subscription was left, or the server took the connection out, before the server answered |
//! | `refresh_failed` | (`error` event only) the `refresh` option's function threw, or its promise rejected |
//!
//! Events of a subscription: `message`, `presence`, `reset`, `lagged` (details as in the
//! table above, for its topic), `joined` (`{topic, reply}`: the topic was joined again, after
//! a reconnect or a retry, with the join reply of that time; or the join reply of a topic the
//! URL asked for at connect time, sent as a `joined` message on `$conn`), `error` (a
//! `RealtimeError`: the server refused the topic when it was resubscribed after a reconnect;
//! the subscription ends, except after `unavailable` or `timeout`, when it is asked for again
//! after a backoff), `unsubscribed` (the server took the connection out). Events of the
//! `RealtimeChannels` object:
//!
//! | type | detail |
//! |---|---|
//! | `message`, `presence`, `reset`, `lagged` | deliveries of a topic without a subscription object: the user's direct-message log `@<user>`, or a topic the server added before its `subscribed` notice came |
//! | `direct` | a message on `$conn`, sent to this connection alone ([`Channels::send_to_connection`](crate::channel::Channels::send_to_connection)); a connect-time topic's `joined` notice too when that topic has no subscription object (never the `session` notice) |
//! | `session` | `{expiresIn}`: the server's `session` notice, first on a connection whose identity expires: it ends in `expiresIn` ms unless refreshed. With the `refresh` option the client has already planned its refresh; without it, call `refresh(token)` before then |
//! | `subscribed` | `{topic, subscription}`: the server put this connection in `topic` ([`Channels::subscribe`](crate::channel::Channels::subscribe)); the subscription object is new, attach handlers to it |
//! | `unsubscribed` | `{topic, subscription}`: the server took it out; the subscription has ended |
//! | `error` | `{type: "error", code, message}`: a frame the server couldn't take (`rate_limited`, `bad_frame`), `unsupported` when the server didn't accept `salvo-realtime.v1` (the client then closes), or an automatic refresh that failed: the server's refusal (`unauthorized`, `forbidden`...), `timeout`, or `refresh_failed` |
//! | `status`, `raw` | as above |
//!
//! Refs are an incrementing counter, never reused. On every reconnect the client first
//! resubscribes every topic with its own `last` id (or `recent` if it has seen none yet) and
//! its filter, so
//! the server's authorization rules run again and each topic gets exactly what it missed; then
//! it sends the publishes queued while it was away, in order (the server runs a connection's
//! commands in order, so they come after the resubscriptions), all paced by the bucket above.
//! Calls are never queued while the socket is away; a call or publish still waiting for its
//! turn when the socket drops was never sent: the call rejects `disconnected`, the publish waits
//! for the next socket. Topics
//! that arrive without a subscribe, such as the `@<user>` log, resume through the URL with
//! `last=<topic>:<id>`. Dedup is per topic, by id; messages without an id (presence notices,
//! `$conn` messages) are never dropped. Unsubscribing forgets the topic's position, so
//! subscribing again starts afresh (with `recent`).
//!
//! # Identity expiry and refresh
//!
//! An endpoint may give a connection an identity that expires
//! ([`Identity::expires_at`](crate::Identity::expires_at)). Then:
//!
//! - A `RealtimeChannels` connection is told first, with a `session` notice on `$conn`
//!   (`{"expires_in_ms":..}`), which the client turns into the `session` event (never a `direct`
//!   message). With the `refresh` option, the client renews the identity itself: at 80% of the
//!   time left, or 5 s before the end if that is sooner, but never before half of it (so a short
//!   lifetime isn't refreshed in a loop), it calls the function and sends its token in a
//!   `refresh` command; the reply's new lifetime plans the next one. A refusal (or a function
//!   that throws) is an `error` event with its code, and is tried once more, halfway to the
//!   deadline (at most 5 s later), while time remains. Without the option, the app calls
//!   `refresh(token)` itself on the `session` event. The socket, its subscriptions and its
//!   position stay as they are.
//! - Unrefreshed, the server closes the socket with code 4001 when the identity expires (a
//!   `RealtimeSocket` has no refresh command, so always), and the client reconnects as after any
//!   drop (`status` `reconnecting` with `code: 4001`). An SSE stream just ends; a
//!   `RealtimeEvents` reconnects too.
//! - The reconnect needs a valid identity: an expired one is refused with 401 at the upgrade,
//!   which the browser reports like any failed connection, so the client keeps retrying with
//!   backoff. **A fixed URL carrying the expired token is refused every time**: give the URL as
//!   a function (`channels(() => "/ws?token=" + currentToken())`, or an `async` one that fetches
//!   a fresh token), called on every reconnect; a `RealtimeEvents` with a URL function reopens a
//!   dropped stream itself with the function's URL, rather than letting the browser retry the
//!   old one. Cookie-based identities need nothing of this: the browser sends the current cookie.
//!
//! ```text
//! // By hand: the session event says when; refresh(token) renews.
//! rt.on("session", ({ expiresIn }) => setTimeout(async () => {
//!   const { expiresIn: next } = await rt.refresh(await fetchToken()); // RealtimeError if refused
//! }, expiresIn * 0.8));
//! ```
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
//! connecting (and see [identity expiry](#identity-expiry-and-refresh) for 401s after a token
//! expired).

use salvo::http::StatusCode;
use salvo::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, HeaderValue, IF_NONE_MATCH};
use salvo::{Depot, FlowCtrl, Handler, Request, Response, async_trait};

/// The client module's JavaScript source, as [`ClientScript`] serves it.
pub const SOURCE: &str = include_str!("client.js");

/// TypeScript declarations of the client module (a `.d.ts`), as [`ClientTypes`] serves them;
/// they cover every export of [`SOURCE`], the channel protocol client included.
pub const SOURCE_TYPES: &str = include_str!("client.d.ts");

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
const TYPES_FINGERPRINT: u64 = fingerprint(SOURCE_TYPES.as_bytes());

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
        serve(req, res, &etag, "text/javascript; charset=utf-8", SOURCE);
    }
}

/// A Salvo handler serving the client's TypeScript declarations ([`SOURCE_TYPES`]), for pages
/// written in TypeScript. Mount it beside the script, at the script's path with `.d.ts` for
/// `.js`:
///
/// ```
/// use salvo::prelude::*;
/// use salvo::test::{ResponseExt, TestClient};
/// use salvo_realtime::client::{ClientScript, ClientTypes};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let router = Router::new()
///     .push(Router::with_path("realtime.js").get(ClientScript))
///     .push(Router::with_path("realtime.d.ts").get(ClientTypes));
///
/// # let router = Service::new(router);
/// let mut res = TestClient::get("http://localhost/realtime.d.ts").send(&router).await;
/// assert_eq!(res.status_code, Some(StatusCode::OK));
/// assert_eq!(res.headers()["content-type"], "application/typescript; charset=utf-8");
/// let types = res.take_string().await.unwrap();
/// assert!(types.contains("export class RealtimeChannels"));
/// # }
/// ```
///
/// A TypeScript project saves the file (`curl -o src/realtime.d.ts
/// http://localhost:8080/realtime.d.ts`, or write [`SOURCE_TYPES`] from a build script) and
/// maps the module its pages import, in `tsconfig.json`:
/// `"paths": { "/realtime.js": ["./src/realtime.d.ts"] }`. Answers like [`ClientScript`]:
/// `Cache-Control: no-cache`, an `ETag`, `304` on a matching `If-None-Match`; the content
/// type is `application/typescript; charset=utf-8`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientTypes;

#[async_trait]
impl Handler for ClientTypes {
    async fn handle(
        &self,
        req: &mut Request,
        _depot: &mut Depot,
        res: &mut Response,
        _ctrl: &mut FlowCtrl,
    ) {
        let etag = format!("\"rt-types-{TYPES_FINGERPRINT:016x}\"");
        serve(
            req,
            res,
            &etag,
            "application/typescript; charset=utf-8",
            SOURCE_TYPES,
        );
    }
}

/// Answers with `body`, or `304` when the request's `If-None-Match` holds `etag`.
fn serve(
    req: &Request,
    res: &mut Response,
    etag: &str,
    content_type: &'static str,
    body: &'static str,
) {
    let headers = res.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(value) = HeaderValue::from_str(etag) {
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
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    res.body(body);
}

#[cfg(test)]
mod tests {
    use salvo::prelude::*;
    use salvo::test::{ResponseExt, TestClient};

    use super::{ClientScript, ClientTypes, SOURCE, SOURCE_TYPES};

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

    #[tokio::test]
    async fn the_types_revalidate_with_their_own_etag() {
        let router = Service::new(
            Router::new()
                .push(Router::with_path("rt.js").get(ClientScript))
                .push(Router::with_path("rt.d.ts").get(ClientTypes)),
        );
        let script = TestClient::get("http://localhost/rt.js")
            .send(&router)
            .await;
        let mut types = TestClient::get("http://localhost/rt.d.ts")
            .send(&router)
            .await;
        let etag = types.headers()["etag"].to_str().expect("ascii").to_owned();
        assert_ne!(etag, script.headers()["etag"].to_str().expect("ascii"));
        assert_eq!(types.take_string().await.expect("body"), SOURCE_TYPES);
        let again = TestClient::get("http://localhost/rt.d.ts")
            .add_header("if-none-match", &etag, true)
            .send(&router)
            .await;
        assert_eq!(again.status_code, Some(StatusCode::NOT_MODIFIED));
    }

    /// Every export of the script is declared (types/usage.ts checks the declarations' shapes).
    #[test]
    fn the_types_declare_every_export_of_the_script() {
        let exports = SOURCE.lines().filter_map(|line| {
            let rest = line.strip_prefix("export ")?;
            let (kind, rest) = rest.split_once(' ')?;
            let name = rest
                .split(|c: char| !c.is_alphanumeric() && c != '_')
                .next()?;
            Some((kind, name))
        });
        let mut count = 0;
        for (kind, name) in exports {
            let declared = format!("export {kind} {name}");
            assert!(
                SOURCE_TYPES.lines().any(|l| l.starts_with(&declared)),
                "client.d.ts lacks `{declared}`"
            );
            count += 1;
        }
        assert!(count >= 9, "found {count} exports");
    }
}
