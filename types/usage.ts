// Exercises every API of the browser client's declarations (`src/client.d.ts`), imported the
// way a page does, from the path `ClientScript` is mounted at (mapped in tsconfig.json).
// Checked by `tsc --noEmit` (.ci/typescript); never run. The `@ts-expect-error` lines are
// misuses the declarations must refuse: if they become too loose, tsc fails on them.

import {
  channels,
  connect,
  parseId,
  PROTOCOL,
  RealtimeChannels,
  RealtimeError,
  RealtimeEvents,
  RealtimeSocket,
  subscribe,
} from "/realtime.js";
import type {
  ConnectionState,
  ErrorNotice,
  Filter,
  HandlerAnswer,
  Joined,
  LaggedEvent,
  Member,
  MessageId,
  PresenceEvent,
  Published,
  RealtimeErrorCode,
  RealtimeMessage,
  Refreshed,
  ResetEvent,
  ResetReason,
  SessionEvent,
  StatusEvent,
  SubscribeOptions,
  Subscription,
  SubscriptionState,
  UrlSource,
} from "/realtime.js";

declare function show(...values: unknown[]): void;

interface Chat {
  text: string;
}

// ---- RealtimeSocket ----------------------------------------------------------------------------

const chat = new RealtimeSocket<Chat>("/ws?name=alice", {
  recent: 50,
  queueLimit: 10,
  minDelay: 250,
  maxDelay: 10_000,
  stableAfter: 2_000,
});
const off: () => void = chat.on("message", (m: RealtimeMessage<Chat>) => {
  const text: string = m.data.text;
  const topic: string | null = m.topic;
  const id: MessageId | null | undefined = m.id;
  const tags: Record<string, string> | undefined = m.tags;
  show(text, topic, id, m.event, m.from, m.ts, m.binary, m.type === "message", tags?.["ticker"]);
});
off();
chat.on("presence", (p: PresenceEvent) => {
  const members: Member[] = p.members;
  show(p.topic, members.map((m) => [m.user, m.connections, m.data]));
});
chat.on("reset", (r: ResetEvent) => {
  const reason: ResetReason = r.reason;
  show(r.topic, r.requested, r.epoch, r.replay_after, reason);
});
chat.on("lagged", (l: LaggedEvent) => show(l.topic, l.missed));
chat.on("error", (e: ErrorNotice) => show(e.code === "unavailable", e.message));
chat.on("raw", (frame: string | ArrayBuffer) => show(frame));
chat.on("reply", ({ topic, reply }: HandlerAnswer) => show(topic?.length, reply));
chat.on("joined", (j: HandlerAnswer) => show(j.topic, j.reply));
chat.on("status", (s: StatusEvent) => {
  switch (s.state) {
    case "connecting":
      return show(s.attempt);
    case "open":
      return show(s.resumed);
    case "reconnecting":
      return show(s.attempt, s.delay, s.code, s.reason, s.browser);
    case "closed":
      return show("closed");
  }
});
const sent: boolean = chat.send({ text: "hi" });
chat.send("text");
chat.send(new Uint8Array([1, 2]));
chat.send(new Blob(["x"]));
const state: ConnectionState = chat.state;
const last: MessageId | null = chat.lastId("lobby") ?? chat.lastId();
const dropped: number = chat.duplicates;
show(sent, state, last, dropped, chat.url);
chat.close();

// Event frames (an endpoint with `event_frames(true)`), and a URL function called on every
// (re)connect, so a reconnect after close 4001 carries a fresh token.
declare function currentToken(): string;
declare function fetchToken(): Promise<string>;
const game = new RealtimeSocket(() => `/ws?topic=game:1&token=${currentToken()}`);
const queued: boolean = game.sendEvent("move", { dx: 1 });
game.sendEvent("ping");
game.on("status", (s) => s.state === "reconnecting" && s.code === 4001 && show("expired"));
const fromPromise = new RealtimeSocket(async () => new URL(`/ws?token=${await fetchToken()}`, location.href));
const source: UrlSource = fromPromise.url;
show(queued, source);
game.close();
fromPromise.close();

// @ts-expect-error: an event the socket never emits
chat.on("subscribed", () => {});
// @ts-expect-error: an event name is a string
chat.sendEvent(5, {});
// @ts-expect-error: a plain socket gets no `session` notice (only the channel protocol does)
chat.on("session", () => {});
// @ts-expect-error: the URL function returns a URL, not a number
new RealtimeSocket(() => 8080);
// @ts-expect-error: a plain socket has no refresh command
void chat.refresh("token");
// @ts-expect-error: `recent` is a number
new RealtimeSocket("/ws", { recent: "50" });
// @ts-expect-error: not an option of a socket
new RealtimeSocket("/ws", { events: ["alert"] });
// @ts-expect-error: `state` is read-only
chat.state = "open";

// ---- RealtimeEvents ----------------------------------------------------------------------------

const feed = new RealtimeEvents("/events", {
  events: ["alert"],
  topic: "notifications",
  withCredentials: true,
});
feed.on("message", (m) => show(m.event ?? "message", m.data));
feed.on("reset", (r) => show(r.reason === "invalid"));
feed.on("lagged", (l) => show(l.missed));
feed.on("presence", (p) => show(p.members.length));
feed.on("status", (s) => show(s.state));
show(feed.lastId(), feed.duplicates);
feed.close();

// @ts-expect-error: SSE has no inbound side
feed.send("x");
// @ts-expect-error: SSE emits no `error` notices
feed.on("error", () => {});
// @ts-expect-error: SSE carries no handler answers
feed.on("reply", () => {});
// @ts-expect-error: `events` is a list of names
new RealtimeEvents("/events", { events: "alert" });

// ---- the factories -----------------------------------------------------------------------------

const socket: RealtimeSocket<Chat> = connect<Chat>("/ws");
const events: RealtimeEvents = subscribe(new URL("/events", "http://localhost"), { topic: "t" });
const tokenFeed = subscribe(() => `/events?token=${currentToken()}`);
tokenFeed.close();
const rt: RealtimeChannels = channels("/ws?name=alice", {
  callTimeout: 5000,
  queueLimit: 20,
  sendBurst: 50,
  sendRate: 25,
});
socket.close();
events.close();

// ---- RealtimeChannels --------------------------------------------------------------------------

const protocol: "salvo-realtime.v1" = PROTOCOL;
const lobby: Subscription<Chat> = rt.subscribe<Chat>("lobby", { recent: 50, data: { pass: 1 } });
const subState: SubscriptionState = lobby.state;
show(protocol, subState, lobby.topic, lobby.lastId);
lobby.on("message", (m) => show(m.data.text));
lobby.on("presence", (p) => show(p.members));
lobby.on("reset", (r) => show(r.replay_after));
lobby.on("lagged", (l) => show(l.missed));
lobby.on("error", (e: RealtimeError) => show(e.code));
lobby.on("unsubscribed", ({ topic }) => show(topic));
lobby.ready.then(({ topic, reply }) => show(topic, reply)).catch((e: RealtimeError) => show(e.code));
void lobby.publish({ text: "hi" }, { event: "chat", echo: false }).then(({ id }) => show(id));

rt.on("subscribed", ({ topic, subscription }) => show(topic, subscription.state));
rt.on("unsubscribed", ({ topic, subscription }) => show(topic, subscription.topic));
rt.on("direct", (m) => show(m.topic === "$conn", m.data));
rt.on("error", (e) => show(e.code));
rt.on("message", (m) => show(m.topic));
rt.on("status", (s) => show(s.state));
rt.on("raw", (frame) => show(frame));
const found: Subscription | null = rt.subscription("lobby");
show(found, rt.lastId("lobby"), rt.duplicates, rt.state);

// Join replies, filters, event routing.
interface Tick {
  price: number;
}
interface Board {
  cells: number[];
}
const aaplOnly: Filter = { tags: { ticker: ["AAPL", "MSFT"] } };
const options: SubscribeOptions = { recent: 5, last: "1f-3", data: { pass: 1 }, filter: aaplOnly };
const prices: Subscription<Tick, Board> = rt.subscribe<Tick, Board>("prices", options);
prices.ready.then(({ topic, reply }: Joined<Board>) => show(topic, reply?.cells.length));
prices.on("joined", ({ topic, reply }) => show(topic, reply?.cells));
prices.on("message", (m) => show(m.tags?.["ticker"], m.data.price));
const offMoved: () => void = prices.onEvent<{ x: number }>("moved", (data, message) => {
  show(data.x, message.event, message.tags, message.id);
});
offMoved();
const current: Filter | null = prices.filter;
show(current?.tags?.["ticker"]?.length);
rt.subscribe("all", { filter: null });

async function routed(): Promise<void> {
  const changed: Joined<Board> = await prices.setFilter({ tags: { ticker: ["AAPL"] } });
  show(changed.topic, changed.reply?.cells);
  await prices.setFilter(null);
  const position = await prices.push<{ x: number; y: number }>("move", { dx: 1 }, { echo: false });
  show(position?.x, position?.y);
  const answered: Published<string> = await prices.publish<string>({ price: 1 }, { event: "tick" });
  const reply: string | undefined = answered.reply;
  const id: MessageId | undefined = answered.id;
  const viaRt: Published = await rt.publish("prices", 1);
  show(reply, id, viaRt.reply);
  try {
    await prices.push("fly", {});
  } catch (e) {
    if (e instanceof RealtimeError && e.code === "unknown_event") show(e.message);
  }
}
void routed;

// @ts-expect-error: a filter lists values, not one value
void prices.setFilter({ tags: { ticker: "AAPL" } });
// @ts-expect-error: a filter names its tags under `tags`
rt.subscribe("prices", { filter: { ticker: ["AAPL"] } });
// @ts-expect-error: an event name is a string
prices.onEvent(5, () => {});
// @ts-expect-error: `push` needs an event name
void prices.push({ dx: 1 });
// @ts-expect-error: a subscription emits no `reply` events
prices.on("reply", () => {});
async function pushAnswerMayBeAbsent(): Promise<void> {
  // @ts-expect-error: the handler may give no answer
  const answer: { x: number } = await prices.push<{ x: number }>("move", {});
  show(answer);
}
void pushAnswerMayBeAbsent;

async function commands(): Promise<void> {
  try {
    const { id } = await rt.publish("lobby", { text: "hi" }, { event: "chat" });
    show(parseId(id)?.offset);
  } catch (e) {
    if (e instanceof RealtimeError) {
      const code: RealtimeErrorCode = e.code;
      show(code === "moderated", e.message, e.name);
    }
  }
  const board = await rt.call<{ cells: number[] }>("move", { cell: 4 }, { timeout: 5000 });
  show(board.cells.length);
  const left = await lobby.unsubscribe();
  const was: boolean = left.was_subscribed;
  show(left.topic, was);
  const id = parseId("1f-3");
  if (id) show(id.epoch.toUpperCase(), id.offset + 1);
  throw new RealtimeError("timeout", "no reply");
}
void commands;
rt.close();

// @ts-expect-error: a subscription emits no `direct` messages
lobby.on("direct", () => {});
// @ts-expect-error: `recent` is a number
rt.subscribe("lobby", { recent: "all" });
// @ts-expect-error: `timeout` is in ms
void rt.call("move", {}, { timeout: "5s" });
// @ts-expect-error: a topic is a string
void rt.publish(7, {});
// @ts-expect-error: `echo` is a boolean
void rt.publish("lobby", {}, { echo: "no" });
// @ts-expect-error: not an option of the channels client
channels("/ws", { recent: 5 });
// @ts-expect-error: `sendRate` is frames per second, a number
channels("/ws", { sendRate: "40/s" });
// @ts-expect-error: the channel client has no raw `send`
rt.send("x");
// @ts-expect-error: nor `sendEvent` (its `publish` takes an event name)
rt.sendEvent("move", {});

// ---- identity expiry and refresh ---------------------------------------------------------------

// The client refreshes by itself with the token `refresh` gives (sync or async), and reconnects
// through the URL function (a fresh token) if the server closed the socket 4001 anyway.
const renewing = channels(async () => `/ws?token=${await fetchToken()}`, { refresh: fetchToken });
renewing.on("session", ({ expiresIn }: SessionEvent) => show(expiresIn + 1));
renewing.on("error", (e) => e.code === "unauthorized" && show(e.message));
const syncRefresh = new RealtimeChannels(`/ws?token=${currentToken()}`, { refresh: () => currentToken() });
syncRefresh.close();
renewing.close();

// By hand: the `session` event says when, `refresh(token)` renews.
const manual = channels("/ws?token=t");
manual.on("session", ({ expiresIn }) => {
  setTimeout(async () => {
    try {
      const renewed: Refreshed = await manual.refresh(await fetchToken());
      const left: number | null = renewed.expiresIn;
      show(left === null ? "never expires" : left);
    } catch (e) {
      if (e instanceof RealtimeError && e.code === "unauthorized") show("log in again");
    }
  }, expiresIn * 0.8);
});
manual.close();

// @ts-expect-error: `refresh` is a function returning the token, not the token
channels("/ws", { refresh: "token" });
// @ts-expect-error: the token is a string
channels("/ws", { refresh: async () => 42 });
// @ts-expect-error: `refresh(token)` takes the token
void manual.refresh();
async function expiryMayBeNull(): Promise<void> {
  // @ts-expect-error: an identity refreshed to never expire answers `null`
  const left: number = (await manual.refresh("t")).expiresIn;
  show(left);
}
void expiryMayBeNull;
// @ts-expect-error: `expiresIn` of a session is a number of ms, not a date
manual.on("session", ({ expiresIn }: { expiresIn: Date }) => show(expiresIn));
