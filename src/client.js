// salvo-realtime browser client: a reconnecting WebSocket and EventSource with per-topic
// resume, reset notices and dedup. One plain ES module, no build step; served by
// `salvo_realtime::client::ClientScript`. API: see the docs of `salvo_realtime::client`.

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

class Client {
  constructor(url, options) {
    this.url = url;
    this.options = { minDelay: 500, maxDelay: 15000, stableAfter: 3000, ...options };
    this.state = "idle";
    this.duplicates = 0;
    this._handlers = new Map();
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

  /** Calls `fn(detail)` on each `type` event; returns a function that unsubscribes. */
  on(type, fn) {
    if (!this._handlers.has(type)) this._handlers.set(type, new Set());
    this._handlers.get(type).add(fn);
    return () => this._handlers.get(type).delete(fn);
  }

  /** The last message id seen on `topic` (or on any topic), or null. */
  lastId(topic) {
    if (topic !== undefined) return this._lastIds.get(topic) ?? null;
    return this._lastAny;
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

  _emit(type, detail) {
    for (const fn of this._handlers.get(type) ?? []) {
      try {
        fn(detail);
      } catch (e) {
        console.error("salvo-realtime handler failed", e);
      }
    }
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
 * seen (rooms and the user's `@user` direct log) with one `?last=<topic>:<id>` each.
 * Options: `recent` (ask for the last N messages of topics without a known id), `minDelay`,
 * `maxDelay`, `stableAfter`, `queueLimit`.
 */
export class RealtimeSocket extends Client {
  constructor(url, options = {}) {
    super(url, { queueLimit: 100, ...options });
    this._queue = [];
    this._ws = null;
    this._state = "connecting";
    this._connect();
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

  _connect() {
    const url = new URL(this.url, location.href);
    url.protocol = url.protocol.replace(/^http/, "ws");
    // One `last=<topic>:<id>` per topic seen (the server splits at the last `:`); `recent`
    // applies to the topics without one.
    url.searchParams.delete("last");
    for (const [topic, id] of this._lastIds) url.searchParams.append("last", `${topic}:${id}`);
    if (this.options.recent) url.searchParams.set("recent", String(this.options.recent));
    const resumed = this._lastIds.size > 0;
    this._status("connecting", { attempt: this._attempt });
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
    if (typeof data !== "string") return this._emit("raw", data);
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return this._emit("raw", data);
    }
    switch (msg && msg.type) {
      case "message":
        if (msg.binary === true && typeof msg.data === "string") {
          const bytes = fromBase64(msg.data);
          if (bytes) msg.data = bytes;
        }
        return this._message(msg);
      case "reset":
        return this._reset(msg);
      case "presence":
        return this._presence(msg);
      case "lagged":
      case "error":
        return this._emit(msg.type, msg);
      default:
        return this._emit("raw", data);
    }
  }
}

/**
 * An EventSource to an `SseEndpoint`. The browser reconnects once by itself (sending
 * Last-Event-ID); if that fails, this backs off with jitter and reopens with `?lastEventId=`.
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

  _connect() {
    const url = new URL(this.url, location.href);
    if (this._lastEventId) url.searchParams.set("lastEventId", this._lastEventId);
    this._status("connecting", { attempt: this._attempt });
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
      if (openedAt && es.readyState === EventSource.CONNECTING) {
        // The stream dropped after working: let the browser retry once, with Last-Event-ID.
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

/** `new RealtimeSocket(url, options)`. */
export const connect = (url, options) => new RealtimeSocket(url, options);
/** `new RealtimeEvents(url, options)`. */
export const subscribe = (url, options) => new RealtimeEvents(url, options);
