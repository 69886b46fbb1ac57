// salvo-realtime browser client: a reconnecting WebSocket and EventSource with per-topic
// resume, reset notices and dedup, and the channel protocol (`salvo-realtime.v1`: subscribe,
// publish and call over one socket). One plain ES module, no build step; served by
// `salvo_realtime::client::ClientScript`. API: see the docs of `salvo_realtime::client`.

/** The topic of messages the server sends to one connection alone. */
const CONNECTION_TOPIC = "$conn";

/** A `$conn` notice of a handler's answer (`joined`, `reply`) as listeners get it. */
function answerNotice(msg) {
  const data = msg.data ?? {};
  return { topic: typeof data.topic === "string" ? data.topic : null, reply: data.reply };
}

/** An `error` frame as listeners get it: `{type: "error", code, message}`. */
function errorNotice(frame) {
  const error = frame.error ?? {};
  return { type: "error", code: error.code ?? "error", message: error.message ?? "" };
}

/** Splits an id `"<epoch hex>-<offset>"`; null if it isn't one. */
export function parseId(id) {
  const i = typeof id === "string" ? id.lastIndexOf("-") : -1;
  if (i <= 0) return null;
  const offset = Number(id.slice(i + 1));
  return Number.isSafeInteger(offset) ? { epoch: id.slice(0, i), offset } : null;
}

/** Text that is JSON becomes its value (as the WebSocket envelope embeds it); other text stays. */
function decode(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** Standard base64 (as envelopes carry binary payloads) to bytes; null if it isn't base64. */
function fromBase64(text) {
  try {
    const bytes = atob(text);
    const out = new Uint8Array(bytes.length);
    for (let i = 0; i < bytes.length; i++) out[i] = bytes.charCodeAt(i);
    return out;
  } catch {
    return null;
  }
}

/** Named events: `on(type, fn)` and `_emit(type, detail)`. */
class Emitter {
  constructor() {
    this._handlers = new Map();
  }

  /** Calls `fn(detail)` on each `type` event; returns a function that unsubscribes. */
  on(type, fn) {
    if (!this._handlers.has(type)) this._handlers.set(type, new Set());
    this._handlers.get(type).add(fn);
    return () => this._handlers.get(type).delete(fn);
  }

  _emit(type, detail) {
    for (const fn of this._handlers.get(type) ?? []) {
      try {
        fn(detail);
      } catch (e) {
        console.error("salvo-realtime handler failed", e);
      }
    }
  }
}

/** An envelope's base64 payload (`binary: true`) as bytes, in place. */
function decodeBinary(msg) {
  if (msg.binary === true && typeof msg.data === "string") {
    const bytes = fromBase64(msg.data);
    if (bytes) msg.data = bytes;
  }
  return msg;
}

/**
 * A WebSocket frame's envelope: the JSON value a text frame holds, a message's base64 payload
 * decoded (`decodeBinary`); null for a binary frame or text that isn't JSON. A frame whose
 * value has no type the caller knows is the caller's "raw" event.
 */
function envelope(data) {
  if (typeof data !== "string") return null;
  let msg;
  try {
    msg = JSON.parse(data);
  } catch {
    return null;
  }
  return msg && msg.type === "message" ? decodeBinary(msg) : msg;
}

class Client extends Emitter {
  constructor(url, options) {
    super();
    this.url = url;
    this.options = { minDelay: 500, maxDelay: 15000, stableAfter: 3000, ...options };
    this.state = "idle";
    this.duplicates = 0;
    this._lastIds = new Map(); // topic -> last message id seen (rooms and `@user` logs alike)
    this._lastAny = null; // the last id seen on any topic
    this._seen = new Map(); // epoch -> highest offset seen (each log delivers in offset order)
    this._pages = new Map(); // topic -> members of a presence snapshot still arriving
    this._attempt = 0;
    this._timer = null;
    this._closed = false;
    this._online = () => this._state === "waiting" && this._retryNow();
    if (typeof window !== "undefined") window.addEventListener("online", this._online);
  }

  /** The last message id seen on `topic` (or on any topic), or null. */
  lastId(topic) {
    if (topic !== undefined) return this._lastIds.get(topic) ?? null;
    return this._lastAny;
  }

  /**
   * Connects: to the URL given, or to the one the URL function returns now (called on every
   * connect, so a reconnect can carry a fresh token; it may return a promise).
   */
  _connect() {
    this._status("connecting", { attempt: this._attempt });
    let target;
    try {
      target = typeof this.url === "function" ? this.url() : this.url;
    } catch (e) {
      return this._noUrl(e);
    }
    if (typeof target?.then !== "function") return this._dialTo(target);
    Promise.resolve(target).then(
      (url) => this._closed || this._dialTo(url),
      (e) => this._closed || this._noUrl(e),
    );
  }

  /** Dials `target`, unless the URL function gave nothing. */
  _dialTo(target) {
    if (target == null) return this._noUrl(new TypeError("the url function returned no URL"));
    this._dial(target);
  }

  /** The URL function failed: tried again after a backoff, like a failed connection. */
  _noUrl(error) {
    console.error("salvo-realtime: the url function failed", error);
    this._scheduleReconnect({});
  }

  /** Stops for good: closes the connection, cancels any reconnect. */
  close() {
    if (this._closed) return;
    this._closed = true;
    clearTimeout(this._timer);
    this._timer = null;
    if (typeof window !== "undefined") window.removeEventListener("online", this._online);
    this._disconnect();
    this._status("closed");
  }

  _status(state, info = {}) {
    this.state = state;
    this._emit("status", { state, ...info });
  }

  _remember(topic, id) {
    if (topic != null) this._lastIds.set(topic, id);
    this._lastAny = id;
  }

  /**
   * Emits a message unless its id was already seen (the dedup safety net). A message without
   * an id (a live-only notice such as `presence.join`) is emitted and changes nothing: it is
   * never replayed, so it is no position to resume from.
   */
  _message(msg) {
    const id = parseId(msg.id);
    if (id) {
      const last = this._seen.get(id.epoch);
      if (last !== undefined && id.offset <= last) {
        this.duplicates += 1;
        return;
      }
      this._seen.set(id.epoch, id.offset);
      this._remember(msg.topic, msg.id);
    }
    this._emit("message", msg);
  }

  /** Earlier messages are unavailable: what follows is replayed after `replay_after`. */
  _reset(reset) {
    const after = parseId(reset.replay_after);
    if (after) {
      this._seen.set(after.epoch, after.offset);
      this._remember(reset.topic, reset.replay_after);
    }
    this._emit("reset", reset);
  }

  /** A page of a presence snapshot; the one without `more` completes it and is emitted whole. */
  _presence(page) {
    const members = [...(this._pages.get(page.topic) ?? []), ...(page.members ?? [])];
    if (page.more === true) {
      this._pages.set(page.topic, members);
      return;
    }
    this._pages.delete(page.topic);
    this._emit("presence", { type: "presence", topic: page.topic, members });
  }

  _scheduleReconnect(info) {
    if (this._closed) return;
    const { minDelay, maxDelay } = this.options;
    const ceiling = Math.min(maxDelay, minDelay * 2 ** Math.min(this._attempt, 30));
    const delay = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2); // "equal jitter"
    this._attempt += 1;
    this._status("reconnecting", { ...info, attempt: this._attempt, delay });
    this._state = "waiting";
    this._timer = setTimeout(() => this._retryNow(), delay);
  }

  _retryNow() {
    clearTimeout(this._timer);
    this._timer = null;
    this._state = "connecting";
    if (!this._closed) this._connect();
  }
}

/**
 * A WebSocket to a `WsEndpoint` that reconnects with backoff and resumes every topic it has
 * seen (rooms and the user's `@user` direct log) with one `?last=<topic>:<id>` each. `url` is a
 * URL, or a function returning one (or a promise of one), called on every connect.
 * Options: `recent` (ask for the last N messages of topics without a known id), `minDelay`,
 * `maxDelay`, `stableAfter`, `queueLimit`. A handler's answers to this socket alone come as
 * `joined` (a topic's join reply) and `reply` (to a frame it sent) events, `{topic, reply}`.
 */
export class RealtimeSocket extends Client {
  constructor(url, options = {}) {
    super(url, { queueLimit: 100, ...options });
    this._queue = [];
    this._ws = null;
    this._state = "connecting";
    this._connect();
  }

  /** Sends `{"event": event, "data": data}`: a message with that event name, for an endpoint
   * with `event_frames(true)` (elsewhere it is just a JSON frame). Queued like `send`. */
  sendEvent(event, data) {
    return this.send({ event, data: data === undefined ? null : data });
  }

  /** Sends text, binary, or any other value as JSON; queued while reconnecting. */
  send(data) {
    const frame =
      typeof data === "string" || data instanceof Blob || data instanceof ArrayBuffer || ArrayBuffer.isView(data)
        ? data
        : JSON.stringify(data);
    if (this._ws && this._ws.readyState === WebSocket.OPEN) {
      this._ws.send(frame);
      return true;
    }
    if (this._closed || this._queue.length >= this.options.queueLimit) return false;
    this._queue.push(frame);
    return true;
  }

  _dial(target) {
    const url = new URL(target, location.href);
    url.protocol = url.protocol.replace(/^http/, "ws");
    // One `last=<topic>:<id>` per topic seen (the server splits at the last `:`); `recent`
    // applies to the topics without one.
    url.searchParams.delete("last");
    for (const [topic, id] of this._lastIds) url.searchParams.append("last", `${topic}:${id}`);
    if (this.options.recent) url.searchParams.set("recent", String(this.options.recent));
    const resumed = this._lastIds.size > 0;
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    this._ws = ws;
    let openedAt = 0;
    ws.onopen = () => {
      openedAt = Date.now();
      this._pages.clear();
      this._status("open", { resumed });
      for (const frame of this._queue.splice(0)) ws.send(frame);
    };
    ws.onmessage = (e) => this._ws === ws && this._frame(e.data);
    ws.onclose = (e) => {
      if (this._ws !== ws) return;
      this._ws = null;
      if (openedAt && Date.now() - openedAt >= this.options.stableAfter) this._attempt = 0;
      this._scheduleReconnect({ code: e.code, reason: e.reason });
    };
  }

  _disconnect() {
    const ws = this._ws;
    this._ws = null;
    if (ws) ws.close(1000);
  }

  _frame(data) {
    const msg = envelope(data);
    switch (msg && msg.type) {
      case "message":
        // A handler's answer to this socket alone: a connect-time topic's join reply, or
        // what a publish handler answered one of its frames.
        if (msg.topic === CONNECTION_TOPIC && (msg.event === "joined" || msg.event === "reply")) {
          return this._emit(msg.event, answerNotice(msg));
        }
        return this._message(msg);
      case "reset":
        return this._reset(msg);
      case "presence":
        return this._presence(msg);
      case "lagged":
        return this._emit(msg.type, msg);
      case "error":
        return this._emit("error", errorNotice(msg));
      default:
        return this._emit("raw", data);
    }
  }
}

/**
 * An EventSource to an `SseEndpoint`. The browser reconnects once by itself (sending
 * Last-Event-ID); if that fails, this backs off with jitter and reopens with `?lastEventId=`.
 * `url` may be a function (as for `RealtimeSocket`): then a dropped stream is reopened by this,
 * with the URL the function gives then, never by the browser with the old one.
 * Options: `events` (message event names to listen for besides `message`; default the presence
 * events), `topic` (set as `msg.topic`, which SSE doesn't carry), `withCredentials`,
 * `minDelay`, `maxDelay`, `stableAfter`.
 */
export class RealtimeEvents extends Client {
  constructor(url, options = {}) {
    super(url, { events: ["presence.join", "presence.leave"], ...options });
    this._es = null;
    this._lastEventId = null;
    this._state = "connecting";
    this._connect();
  }

  lastId(topic) {
    return this._lastEventId ?? super.lastId(topic);
  }

  _dial(target) {
    const url = new URL(target, location.href);
    if (this._lastEventId) url.searchParams.set("lastEventId", this._lastEventId);
    const es = new EventSource(url, { withCredentials: Boolean(this.options.withCredentials) });
    this._es = es;
    let openedAt = 0;
    es.onopen = () => {
      openedAt = Date.now();
      this._pages.clear();
      this._status("open", { resumed: Boolean(this._lastEventId) });
    };
    es.onerror = () => {
      if (this._es !== es) return;
      const stable = openedAt && Date.now() - openedAt >= this.options.stableAfter;
      if (stable) this._attempt = 0;
      // The stream dropped after working: let the browser retry once, with Last-Event-ID;
      // not with a URL function, which must be asked for the URL (a fresh token) again.
      if (openedAt && es.readyState === EventSource.CONNECTING && typeof this.url !== "function") {
        openedAt = 0;
        this._status("reconnecting", { attempt: this._attempt, browser: true });
        return;
      }
      es.close();
      this._es = null;
      this._scheduleReconnect({});
    };
    // `e.lastEventId` is the EventSource's last id, kept across events: an event without an
    // `id:` line of its own (a presence notice, `lagged`, `presence`) repeats the previous one.
    let previous = "";
    const ownId = (e) => {
      const id = e.lastEventId !== previous ? e.lastEventId : "";
      previous = e.lastEventId;
      return id;
    };
    const message = (e, id = ownId(e)) => {
      if (this._es !== es) return;
      if (id) this._lastEventId = id;
      this._message({
        type: "message",
        topic: this.options.topic ?? null,
        id: id || null,
        event: e.type === "message" ? undefined : e.type,
        data: decode(e.data),
      });
    };
    // A message published under one of these names has its own `type` (or none).
    const notice = (kind) => (e) => {
      const id = ownId(e);
      if (this._es !== es) return;
      const data = decode(e.data);
      if (!data || data.type !== kind) return message(e, id);
      if (kind === "reset") {
        if (id) this._lastEventId = id;
        return this._reset(data);
      }
      if (kind === "presence") return this._presence(data);
      this._emit(kind, data);
    };
    const notices = ["reset", "lagged", "presence"];
    es.addEventListener("message", (e) => message(e));
    for (const name of new Set(this.options.events)) {
      // One listener per name: `ownId` must see each event once.
      if (name !== "message" && !notices.includes(name)) es.addEventListener(name, (e) => message(e));
    }
    for (const kind of notices) es.addEventListener(kind, notice(kind));
  }

  _disconnect() {
    const es = this._es;
    this._es = null;
    if (es) es.close();
  }
}

/** Why a command failed: `code` is the server's error code, or one of the client's own
 * (`timeout`, `disconnected`, `closed`, `queue_full`, `unsubscribed`). */
export class RealtimeError extends Error {
  constructor(code, message) {
    super(message || code);
    this.name = "RealtimeError";
    this.code = code;
  }
}

/** The WebSocket subprotocol of the channel protocol. */
export const PROTOCOL = "salvo-realtime.v1";
/** Codes after which a refused resubscription is tried again (the rest end it). */
const RETRYABLE = new Set(["unavailable", "timeout"]);

/**
 * One topic of a `RealtimeChannels` socket, from `channels.subscribe(topic)` or from the
 * server (a `subscribed` notice). Events: `message`, `presence`, `reset`, `lagged`, `joined`
 * (`{topic, reply}`: joined again after a reconnect, or a connect-time topic's join reply),
 * `error` (a resubscription was refused), `unsubscribed` (by the server).
 */
class Subscription extends Emitter {
  constructor(channels, topic, options) {
    super();
    this.topic = topic;
    /** `"subscribing"`, `"subscribed"`, `"unsubscribed"` or `"refused"`. */
    this.state = "subscribing";
    this._channels = channels;
    this._options = options;
    this._confirmed = options.filter; // the filter of the server's last `ok`: kept if a change is refused
    this._live = false; // the server holds the topic for the current socket
    this._waiters = []; // setFilter promises: {resolve, reject, sent: ref of the subscribe carrying it, or 0}
    this._settled = false;
    this._retries = 0;
    this._timer = null;
    this.ready = new Promise((resolve, reject) => {
      this._resolve = resolve;
      this._reject = reject;
    });
    this.ready.catch(() => {}); // a page that never awaits `ready` gets no unhandled rejection
  }

  /** The last message id seen on this topic, or null. */
  get lastId() {
    return this._channels.lastId(this.topic);
  }

  /** The filter this subscription asks the server for, or null. */
  get filter() {
    return this._options.filter ?? null;
  }

  /** `channels.publish(this.topic, data, options)`: resolves to `{id?, reply?}`. */
  publish(data, options) {
    return this._channels.publish(this.topic, data, options);
  }

  /** Publishes `data` under the event name `event`; resolves to the handler's answer (its
   * `reply`), `undefined` if it gave none. */
  push(event, data, options = {}) {
    return this.publish(data, { ...options, event }).then((answer) => answer?.reply);
  }

  /** Calls `fn(data, message)` for each message of the event name `event`; returns a function
   * that unsubscribes. */
  onEvent(event, fn) {
    return this.on("message", (msg) => {
      if (msg.event === event) fn(msg.data, msg);
    });
  }

  /** Asks the server for only the messages `filter` passes (null: all), from the last id seen;
   * resolves to `{topic, reply}` once the server applied it. Refused, the previous filter stays. */
  setFilter(filter) {
    return this._channels._setFilter(this, filter);
  }

  /** Leaves the topic; resolves to `{topic, was_subscribed}` once nothing more of it comes. */
  unsubscribe() {
    return this._channels._unsubscribe(this);
  }

  /** Settles `ready` (rejects with `error` if given, else resolves to `joined`); whether this
   * was its first answer. */
  _settle(error, joined) {
    if (this._settled) return false;
    this._settled = true;
    if (error) this._reject(error);
    else this._resolve(joined ?? { topic: this.topic, reply: undefined });
    return true;
  }

  /** The setFilter promises the subscribe `ref` carried, taken out. */
  _answered(ref) {
    const mine = this._waiters.filter((w) => w.sent === ref);
    this._waiters = this._waiters.filter((w) => w.sent !== ref);
    return mine;
  }

  /** Ended: every setFilter promise still waiting rejects with `error`. */
  _ended(error) {
    for (const w of this._waiters.splice(0)) w.reject(error);
  }
}

/**
 * A WebSocket to a `WsEndpoint` speaking the channel protocol (`salvo-realtime.v1`): any number
 * of topics on one socket, publishes and calls with replies. Reconnects with backoff, then
 * resubscribes every topic from its last id, then sends what was queued meanwhile.
 * Every command goes out through a token bucket (`sendBurst` at once, then `sendRate` a
 * second), so a client with many topics resubscribing, or a burst of publishes, stays under
 * the endpoint's inbound rate limit (default 50/s, burst 100) instead of being refused.
 * Options: `callTimeout` (ms, default 10000, counted from when the call is sent), `queueLimit`
 * (100), `sendBurst` (80), `sendRate` (40 per second), `minDelay`, `maxDelay`, `stableAfter`,
 * `refresh` (a function returning a token, or a promise of one: the client renews an expiring
 * identity with it before the server's `session` notice says it ends).
 */
export class RealtimeChannels extends Client {
  constructor(url, options = {}) {
    super(url, { queueLimit: 100, callTimeout: 10000, sendBurst: 80, sendRate: 40, ...options });
    this._subs = new Map(); // topic -> Subscription, resubscribed on every reconnect
    this._leaving = new Map(); // topic -> unsubscribes in flight (deliveries meanwhile: dropped)
    this._pending = new Map(); // ref -> command sent, awaiting its reply
    this._queue = []; // commands waiting for the socket
    this._outbox = []; // commands for the open socket, waiting for a send token
    this._tokens = 0; // send tokens left (refilled at `sendRate` up to `sendBurst`)
    this._refilled = 0; // when `_tokens` was last refilled
    this._pacer = null; // the timer that sends the outbox on when a token is due
    this._orphans = new Map(); // topic -> presence snapshot that came before its `subscribed`
    this._seen = new Map(); // topic -> (epoch -> highest offset seen)
    this._refreshTimer = null; // the automatic refresh planned for the current socket
    this._ref = 0;
    this._ws = null;
    this._state = "connecting";
    this._connect();
  }

  /**
   * Subscribes to `topic` (or returns the subscription it already has). `recent`: the last n
   * messages on first subscribing; `last`: start after this id instead; `data`: for the
   * server's authorization rule; `filter`: only the messages whose tags it lists. Await
   * `subscription.ready` for the server's answer, `{topic, reply}` (the join reply).
   */
  subscribe(topic, { recent, last, data, filter } = {}) {
    const known = this._subs.get(topic);
    if (known) return known;
    const sub = new Subscription(this, topic, { recent, last, data, filter: filter ?? undefined });
    if (this._closed) {
      sub.state = "refused";
      sub._settle(new RealtimeError("closed", "this client was closed"));
      return sub;
    }
    this._subs.set(topic, sub);
    if (this._open()) this._sendSubscribe(sub);
    return sub;
  }

  /** The subscription to `topic`, or null. */
  subscription(topic) {
    return this._subs.get(topic) ?? null;
  }

  /** Publishes `data` (any JSON) to a subscribed topic; resolves to `{id?, reply?}` (the id when
   * it was published to `topic`, the handler's answer when it gave one). */
  publish(topic, data, { event, echo } = {}) {
    const frame = { type: "publish", topic, data: data === undefined ? null : data };
    if (event != null) frame.event = event;
    if (echo != null) frame.echo = Boolean(echo);
    return this._command("publish", frame);
  }

  /** Calls a server method; resolves to its result. Rejects with `timeout` after `timeout` ms,
   * and with `disconnected` if the socket isn't open or drops before the reply. */
  call(method, data, { timeout = this.options.callTimeout } = {}) {
    const frame = { type: "call", method };
    if (data !== undefined) frame.data = data;
    return this._command("call", frame, { timeout });
  }

  /** Renews this connection's identity with `token` (the endpoint's refresh check reads it);
   * resolves to `{expiresIn}`, ms until it now expires (`null`: it no longer does). */
  refresh(token) {
    const ws = this._ws;
    const frame = { type: "refresh", token };
    return this._command("refresh", frame, { timeout: this.options.callTimeout }).then((data) => {
      const expiresIn = typeof data?.expires_in_ms === "number" ? data.expires_in_ms : null;
      if (this.options.refresh && this._ws === ws) this._planRefresh(expiresIn);
      return { expiresIn };
    });
  }

  _open() {
    return this._ws !== null && this._ws.readyState === WebSocket.OPEN;
  }

  /** The server's `session` notice: the identity expires in `expiresIn` ms. */
  _session(expiresIn) {
    if (this.options.refresh) this._planRefresh(expiresIn);
    this._emit("session", { expiresIn });
  }

  /**
   * Plans the automatic refresh of an identity expiring in `expiresIn` ms (`null`: never): at
   * 80% of that, or 5 s before it if sooner, but not before half of it, so a short lifetime
   * isn't refreshed in a loop.
   */
  _planRefresh(expiresIn) {
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    if (expiresIn === null) return;
    const deadline = Date.now() + expiresIn;
    const due = Math.max(expiresIn / 2, Math.min(expiresIn * 0.8, expiresIn - 5000));
    const ws = this._ws;
    // setTimeout fires at once past 2^31 - 1 ms (24.8 days): a long lifetime is refreshed early.
    const delay = Math.min(due, 0x7fffffff);
    this._refreshTimer = setTimeout(() => this._autoRefresh(ws, deadline, false), delay);
  }

  /** Refreshes with the token of the `refresh` option; a failure is an `error` event, and is
   * tried once more (halfway to the deadline, at most 5 s later) while time remains. */
  async _autoRefresh(ws, deadline, retried) {
    this._refreshTimer = null;
    if (this._ws !== ws || !this._open()) return;
    try {
      const token = await this.options.refresh();
      // A new socket gets its own `session` notice, and plans its own refresh.
      if (this._ws === ws) await this.refresh(token);
    } catch (e) {
      const message = e instanceof Error ? e.message : String(e);
      const error = e instanceof RealtimeError ? e : new RealtimeError("refresh_failed", message);
      if (this._ws !== ws || error.code === "disconnected" || error.code === "closed") return;
      this._emit("error", { type: "error", code: error.code, message: error.message });
      const left = deadline - Date.now();
      if (!retried && error.code !== "unsupported" && left > 200) {
        const later = () => this._autoRefresh(ws, deadline, true);
        this._refreshTimer = setTimeout(later, Math.min(left / 2, 5000));
      }
    }
  }

  _dial(target) {
    const url = new URL(target, location.href);
    url.protocol = url.protocol.replace(/^http/, "ws");
    // Topics that come without a subscribe (the user's `@user` direct log, topics the URL names)
    // resume through the URL; the server ignores an id for a topic the request doesn't cover.
    url.searchParams.delete("last");
    for (const [topic, id] of this._lastIds) {
      if (!this._subs.has(topic)) url.searchParams.append("last", `${topic}:${id}`);
    }
    const resumed = this._lastIds.size > 0;
    const ws = new WebSocket(url, PROTOCOL);
    this._ws = ws;
    let openedAt = 0;
    ws.onopen = () => {
      if (ws.protocol !== PROTOCOL) {
        this._emit("error", { type: "error", code: "unsupported", message: `the server doesn't speak ${PROTOCOL}` });
        return this.close();
      }
      openedAt = Date.now();
      this._pages.clear();
      this._orphans.clear();
      // A new connection starts with a full bucket on the server too.
      this._tokens = this.options.sendBurst;
      this._refilled = openedAt;
      // Resubscriptions first, then what was queued: the server runs commands in order.
      for (const sub of this._subs.values()) this._sendSubscribe(sub);
      for (const entry of this._queue.splice(0)) this._send(entry);
      this._status("open", { resumed });
    };
    ws.onmessage = (e) => this._ws === ws && this._frame(e.data);
    ws.onclose = (e) => {
      if (this._ws !== ws) return;
      this._ws = null;
      this._dropped();
      if (openedAt && Date.now() - openedAt >= this.options.stableAfter) this._attempt = 0;
      this._scheduleReconnect({ code: e.code, reason: e.reason });
    };
  }

  /** Closed for good (`close()`): the socket, and everything still waiting. */
  _disconnect() {
    const ws = this._ws;
    this._ws = null;
    if (ws) ws.close(1000);
    this._dropped();
    const closed = () => new RealtimeError("closed", "this client was closed");
    for (const entry of this._queue.splice(0)) entry.reject(closed());
    for (const sub of this._subs.values()) {
      clearTimeout(sub._timer);
      sub._settle(closed());
      sub._ended(closed());
    }
  }

  /** The socket is gone: commands awaiting a reply end (subscriptions are sent again). */
  _dropped() {
    clearTimeout(this._pacer);
    this._pacer = null;
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    // Never sent: a publish waits for the next socket (in order, ahead of later ones); a
    // subscribe is sent again from `_subs`; a call or refresh fails (it was never made).
    const unsent = this._outbox.splice(0);
    this._queue.unshift(...unsent.filter((entry) => entry.kind === "publish"));
    const pending = [...this._pending.values(), ...unsent.filter((entry) => entry.kind !== "publish")];
    this._pending.clear();
    this._leaving.clear();
    // The server forgot every topic: setFilter promises go with the resubscriptions.
    for (const sub of this._subs.values()) {
      sub._live = false;
      for (const w of sub._waiters) w.sent = 0;
    }
    for (const entry of pending) {
      clearTimeout(entry.timer);
      if (entry.kind === "unsubscribe") entry.resolve({ topic: entry.frame.topic, was_subscribed: true });
      else if (entry.kind !== "subscribe") {
        entry.reject(new RealtimeError("disconnected", "the connection dropped before the reply"));
      }
    }
  }

  /** A command's promise: sent now, queued (not calls), or refused at once. */
  _command(kind, frame, options = {}) {
    return new Promise((resolve, reject) => {
      if (this._closed) return reject(new RealtimeError("closed", "this client was closed"));
      this._ref += 1;
      const entry = { kind, frame: { ...frame, ref: this._ref }, resolve, reject, ...options };
      const full = () => reject(new RealtimeError("queue_full", "too many commands waiting to be sent"));
      if (this._open()) {
        const waiting = this._outbox.filter((e) => e.kind !== "subscribe").length;
        return waiting >= this.options.queueLimit ? full() : this._send(entry);
      }
      const now = kind === "call" || kind === "refresh"; // never queued: made for this socket
      if (now) return reject(new RealtimeError("disconnected", "not connected"));
      if (this._queue.length >= this.options.queueLimit) return full();
      this._queue.push(entry);
    });
  }

  /** Sends `entry` on the open socket when a send token is free, after those waiting. */
  _send(entry) {
    this._outbox.push(entry);
    this._pace();
  }

  /** Sends what the bucket allows now; the rest when the next token is due. */
  _pace() {
    if (this._pacer !== null || !this._open()) return;
    const { sendBurst, sendRate } = this.options;
    const now = Date.now();
    this._tokens = Math.min(sendBurst, this._tokens + ((now - this._refilled) / 1000) * sendRate);
    this._refilled = now;
    while (this._outbox.length > 0 && this._tokens >= 1) {
      this._tokens -= 1;
      this._transmit(this._outbox.shift());
    }
    if (this._outbox.length > 0) {
      const wait = Math.ceil(((1 - this._tokens) / sendRate) * 1000);
      this._pacer = setTimeout(() => {
        this._pacer = null;
        this._pace();
      }, wait);
    }
  }

  _transmit(entry) {
    const ref = entry.frame.ref;
    this._pending.set(ref, entry);
    if (entry.timeout > 0) {
      entry.timer = setTimeout(() => {
        if (this._pending.get(ref) !== entry) return;
        this._pending.delete(ref);
        entry.reject(new RealtimeError("timeout", `no reply within ${entry.timeout} ms`));
      }, entry.timeout);
    }
    this._ws.send(JSON.stringify(entry.frame));
  }

  /** Asks for `sub`'s topic from its last id (or its `last` option, or its `recent` if it has
   * none yet), with its filter; carries the setFilter promises waiting. */
  _sendSubscribe(sub) {
    clearTimeout(sub._timer);
    sub._timer = null;
    const { recent, data, filter } = sub._options;
    const frame = { type: "subscribe", topic: sub.topic };
    const last = this._lastIds.get(sub.topic) ?? sub._options.last;
    if (last) frame.last = last;
    else if (recent) frame.recent = recent;
    if (data !== undefined) frame.data = data;
    if (filter != null) frame.filter = filter;
    this._ref += 1;
    const ref = this._ref;
    for (const w of sub._waiters) if (!w.sent) w.sent = ref;
    this._send({
      kind: "subscribe",
      frame: { ...frame, ref },
      resolve: (answer) => this._joined(sub, ref, filter, answer),
      reject: (error) => this._refused(sub, ref, filter, error),
    });
  }

  /** The server took `sub` (with `filter`): `ready` the first time, `joined` when it joined
   * again (after a reconnect or a retry), setFilter's promise when it changed the filter. */
  _joined(sub, ref, filter, answer) {
    if (this._subs.get(sub.topic) !== sub) return;
    const rejoined = !sub._live;
    const joined = { topic: sub.topic, reply: answer?.reply };
    sub._retries = 0;
    sub._live = true;
    sub._confirmed = filter;
    sub.state = "subscribed";
    const waiters = sub._answered(ref);
    if (!sub._settle(null, joined) && rejoined) sub._emit("joined", joined);
    for (const w of waiters) w.resolve(joined);
  }

  /** The server refused a subscribe of `sub` (authorization re-runs on every one). */
  _refused(sub, ref, filter, error) {
    if (this._subs.get(sub.topic) !== sub) return;
    const waiters = sub._answered(ref);
    if (waiters.length > 0) {
      // A filter change refused: nothing of it took effect, the previous filter stays.
      if (sub._options.filter === filter) sub._options = { ...sub._options, filter: sub._confirmed };
      for (const w of waiters) w.reject(error);
      if (sub._live) return; // the server still holds the topic as it was
      // A resubscription that carried the change: ask again as it was before (after a
      // backoff below if the refusal is worth retrying).
      if (sub._settled && this._open() && !RETRYABLE.has(error.code)) return this._sendSubscribe(sub);
    }
    const first = sub._settle(error);
    if (!first && RETRYABLE.has(error.code)) {
      // Not done, safe to retry: keep it and ask again after a backoff.
      const { minDelay, maxDelay } = this.options;
      const delay = Math.min(maxDelay, minDelay * 2 ** Math.min(sub._retries, 30));
      sub._retries += 1;
      sub._timer = setTimeout(() => this._open() && this._subs.get(sub.topic) === sub && this._sendSubscribe(sub), delay);
      return sub._emit("error", error);
    }
    this._subs.delete(sub.topic);
    this._forget(sub.topic);
    sub.state = "refused";
    sub._ended(error);
    if (!first) sub._emit("error", error);
  }

  /** `sub.setFilter(filter)`: subscribes again with the new filter from the last id seen (now,
   * or with the resubscription when the socket reopens). */
  _setFilter(sub, filter) {
    if (this._subs.get(sub.topic) !== sub) {
      const code = this._closed ? "closed" : "unsubscribed";
      return Promise.reject(new RealtimeError(code, "the subscription has ended"));
    }
    return new Promise((resolve, reject) => {
      sub._options = { ...sub._options, filter: filter ?? undefined };
      sub._waiters.push({ resolve, reject, sent: 0 });
      if (this._open()) this._sendSubscribe(sub);
    });
  }

  _unsubscribe(sub) {
    const topic = sub.topic;
    if (this._subs.get(topic) !== sub) return Promise.resolve({ topic, was_subscribed: false });
    this._subs.delete(topic);
    clearTimeout(sub._timer);
    this._forget(topic);
    sub.state = "unsubscribed";
    const left = () => new RealtimeError("unsubscribed", "unsubscribed before the server answered");
    sub._settle(left());
    sub._ended(left());
    if (!this._open()) return Promise.resolve({ topic, was_subscribed: false });
    this._leaving.set(topic, (this._leaving.get(topic) ?? 0) + 1);
    const done = () => {
      const n = (this._leaving.get(topic) ?? 1) - 1;
      if (n > 0) this._leaving.set(topic, n);
      else this._leaving.delete(topic);
    };
    return this._command("unsubscribe", { type: "unsubscribe", topic }).then(
      (data) => (done(), data),
      (error) => {
        done();
        if (error.code === "not_subscribed") return { topic, was_subscribed: false };
        throw error;
      },
    );
  }

  /** Drops what the client knows of `topic`: a later subscribe starts afresh. */
  _forget(topic) {
    this._lastIds.delete(topic);
    this._seen.delete(topic);
    this._pages.delete(topic);
  }

  /** Where `topic`'s deliveries go: its subscription, else this object; null: drop them. */
  _target(topic) {
    return this._subs.get(topic) ?? (this._leaving.has(topic) ? null : this);
  }

  _frame(data) {
    const msg = envelope(data);
    switch (msg && msg.type) {
      case "reply":
        return this._reply(msg);
      case "message":
        return msg.topic === CONNECTION_TOPIC ? this._direct(msg) : this._delivery(msg);
      case "reset":
        return this._resetOf(msg);
      case "presence":
        return this._presencePage(msg);
      case "lagged":
        return this._target(msg.topic)?._emit("lagged", msg);
      case "error":
        return this._emit("error", errorNotice(msg));
      default:
        return this._emit("raw", data);
    }
  }

  _reply(msg) {
    const entry = this._pending.get(msg.ref);
    if (!entry) return; // timed out already
    this._pending.delete(msg.ref);
    clearTimeout(entry.timer);
    if (msg.status === "ok") return entry.resolve(msg.data);
    const error = msg.error ?? {};
    entry.reject(new RealtimeError(error.code ?? "error", error.message));
  }

  /** A message of a topic: deduplicated per topic by id (messages without one never are). */
  _delivery(msg) {
    const target = this._target(msg.topic);
    if (!target) return;
    const id = parseId(msg.id);
    if (id) {
      let seen = this._seen.get(msg.topic);
      if (!seen) this._seen.set(msg.topic, (seen = new Map()));
      const last = seen.get(id.epoch);
      if (last !== undefined && id.offset <= last) {
        this.duplicates += 1;
        return;
      }
      seen.set(id.epoch, id.offset);
      this._remember(msg.topic, msg.id);
    }
    target._emit("message", msg);
  }

  _resetOf(reset) {
    const target = this._target(reset.topic);
    if (!target) return;
    const after = parseId(reset.replay_after);
    if (after) {
      if (!this._seen.has(reset.topic)) this._seen.set(reset.topic, new Map());
      this._seen.get(reset.topic).set(after.epoch, after.offset);
      this._remember(reset.topic, reset.replay_after);
    }
    target._emit("reset", reset);
  }

  _presencePage(page) {
    const members = [...(this._pages.get(page.topic) ?? []), ...(page.members ?? [])];
    if (page.more === true) return this._pages.set(page.topic, members);
    this._pages.delete(page.topic);
    const target = this._target(page.topic);
    const snapshot = { type: "presence", topic: page.topic, members };
    if (target === this) this._orphans.set(page.topic, snapshot);
    target?._emit("presence", snapshot);
  }

  /** A message on `$conn`: the server moved this connection, told it a connect-time topic's
   * join reply or when its identity expires, or wrote to it alone. */
  _direct(msg) {
    if (msg.event === "session" && typeof msg.data?.expires_in_ms === "number") {
      return this._session(msg.data.expires_in_ms);
    }
    const topic = msg.data && typeof msg.data.topic === "string" ? msg.data.topic : null;
    if (msg.event === "subscribed" && topic) {
      if (this._subs.has(topic)) return;
      const sub = new Subscription(this, topic, {});
      sub.state = "subscribed";
      sub._live = true;
      sub._settle(null);
      this._subs.set(topic, sub);
      this._emit("subscribed", { topic, subscription: sub });
      const snapshot = this._orphans.get(topic);
      this._orphans.delete(topic);
      if (snapshot) sub._emit("presence", snapshot);
      return;
    }
    if (msg.event === "unsubscribed" && topic) {
      this._orphans.delete(topic);
      const sub = this._subs.get(topic);
      if (!sub) return;
      this._subs.delete(topic);
      clearTimeout(sub._timer);
      this._forget(topic);
      sub.state = "unsubscribed";
      sub._ended(new RealtimeError("unsubscribed", "the server took the connection out of the topic"));
      sub._emit("unsubscribed", { topic });
      this._emit("unsubscribed", { topic, subscription: sub });
      return;
    }
    if (msg.event === "joined" && topic && this._subs.has(topic)) {
      return this._subs.get(topic)._emit("joined", answerNotice(msg));
    }
    this._emit("direct", msg);
  }
}

/** `new RealtimeSocket(url, options)`. */
export const connect = (url, options) => new RealtimeSocket(url, options);
/** `new RealtimeEvents(url, options)`. */
export const subscribe = (url, options) => new RealtimeEvents(url, options);
/** `new RealtimeChannels(url, options)`: the channel protocol over one WebSocket. */
export function channels(url, options) {
  return new RealtimeChannels(url, options);
}
