// TypeScript declarations of the salvo-realtime browser client (`client.js`, served by
// `salvo_realtime::client::ClientScript`; these by `ClientTypes`). Save them as
// `realtime.d.ts` beside your sources and map the module you import, e.g. in tsconfig.json:
// `"paths": { "/realtime.js": ["./realtime.d.ts"] }`. The API is described in the docs of
// `salvo_realtime::client`; these types follow `client.js` of the same crate version.

/** A message id, `"<epoch hex>-<offset>"`. */
export type MessageId = string;

/** Where a client connects: a URL, or a function returning one (or a promise of one), called
 * on every connect and reconnect, so each can carry a fresh token. */
export type UrlSource = string | URL | (() => string | URL | PromiseLike<string | URL>);

/** Where a client's connection is. */
export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

/** Why a resume position could not be honoured. */
export type ResetReason = "epoch_changed" | "expired" | "ahead" | "invalid";

/** A message of a topic. `T` is what the page expects in `data` (it is not checked). */
export interface RealtimeMessage<T = unknown> {
  type: "message";
  /** The topic (room, `@user` log, `$conn`); over SSE the `topic` option, or `null`. */
  topic: string | null;
  /** The message id; absent (WebSocket) or `null` (SSE) for a live-only notice. */
  id?: MessageId | null;
  /** The event name, if the message has one (`presence.join`, an application's own). */
  event?: string;
  /** The sender's user id, if the publisher recorded one (WebSocket only). */
  from?: string;
  /** When the hub logged it, ms since the Unix epoch (WebSocket only). */
  ts?: number;
  /** JSON text arrives as its value, other text as a string, binary as a `Uint8Array`
   * (WebSocket; SSE keeps binary as base64 text). */
  data: T;
  /** Set on a binary payload. */
  binary?: boolean;
  /** The tags the server set on the message (`key: value`), if any (WebSocket only). */
  tags?: Record<string, string>;
}

/** Which of a topic's messages a subscriber receives: those whose tag `key` is one of the
 * values listed, for every key named (at most 8 keys, 256 values, 4 KiB of JSON). */
export interface Filter {
  tags?: Record<string, readonly string[]>;
}

/** A handler's answer to this connection alone: `joined` (the join reply of `topic`) or
 * `reply` (what a publish handler answered a frame sent to `topic`). `R` is not checked. */
export interface HandlerAnswer<R = unknown> {
  /** The topic it is about; `null` if the server named none. */
  topic: string | null;
  /** The handler's data; `undefined` when it gave none. */
  reply: R | undefined;
}

/** The server's answer to a subscribe: `reply` is the join reply of the authorization rule,
 * `undefined` when it gave none. `R` is not checked. */
export interface Joined<R = unknown> {
  topic: string;
  reply: R | undefined;
}

/** One user present in a room. */
export interface Member {
  user: string;
  /** How many of the user's connections are in the room. */
  connections: number;
  /** The data of the identity the user's first connection joined with. */
  data?: unknown;
}

/** The complete member list of a room, once per (re)join. */
export interface PresenceEvent {
  type: "presence";
  topic: string;
  members: Member[];
}

/** The resume position was lost; what the history holds follows. */
export interface ResetEvent {
  type: "reset";
  topic: string;
  /** The position asked for; `null` if the id sent couldn't be read. */
  requested: MessageId | null;
  /** The topic log's current epoch (hex). */
  epoch: string;
  /** The replay that follows starts after this id. */
  replay_after: MessageId;
  reason: ResetReason;
}

/** This client fell behind and lost `missed` messages of `topic`. */
export interface LaggedEvent {
  type: "lagged";
  topic: string;
  missed: number;
}

/** A message or frame the server couldn't take; the connection stays open. */
export interface ErrorNotice {
  type: "error";
  /** `rate_limited`, `unavailable`, `json_too_deep`, `refused`, `bad_frame`, `unsupported`, `unknown_event`, `invalid_data`, or a publish handler's own code (`moderated`)...; for a failed automatic refresh, its refusal (`unauthorized`, `forbidden`...), `timeout`, or `refresh_failed` (the `refresh` function threw) */
  code: string;
  /** What went wrong, for people: the code is not repeated in it. */
  message: string;
}

/** The server's `session` notice: this connection's identity expires in `expiresIn` ms, unless
 * refreshed (`RealtimeChannels.refresh`, or the `refresh` option) before then. */
export interface SessionEvent {
  expiresIn: number;
}

/** The answer to a refresh: the identity now expires in `expiresIn` ms (`null`: never). */
export interface Refreshed {
  expiresIn: number | null;
}

/** A change of connection state. */
export type StatusEvent =
  | { state: "connecting"; attempt: number }
  | { state: "open"; resumed: boolean }
  | {
      state: "reconnecting";
      attempt: number;
      /** The wait before the next attempt, ms (absent while the browser retries an SSE stream). */
      delay?: number;
      /** The WebSocket close code (4001: the identity expired unrefreshed). */
      code?: number;
      /** The WebSocket close reason. */
      reason?: string;
      /** The browser itself retries the SSE stream (with `Last-Event-ID`). */
      browser?: boolean;
    }
  | { state: "closed" };

/** Reconnect timing, shared by every client. */
export interface ReconnectOptions {
  /** The first reconnect delay, ms. Default 500. */
  minDelay?: number;
  /** The longest reconnect delay, ms. Default 15000. */
  maxDelay?: number;
  /** A connection that lasted this long (ms) resets the backoff. Default 3000. */
  stableAfter?: number;
}

/** Options of a `RealtimeSocket`. */
export interface SocketOptions extends ReconnectOptions {
  /** Ask for the last `recent` retained messages of every topic without a known id. */
  recent?: number;
  /** Frames queued while reconnecting. Default 100. */
  queueLimit?: number;
}

/** Options of a `RealtimeEvents`. */
export interface EventsOptions extends ReconnectOptions {
  /** Named message events to listen for besides `message`. Default the presence events. */
  events?: readonly string[];
  /** Reported as `msg.topic` (SSE doesn't carry it). */
  topic?: string;
  /** Sends cookies cross-origin (`EventSource`'s `withCredentials`). */
  withCredentials?: boolean;
}

/** Options of a `RealtimeChannels`. */
export interface ChannelsOptions extends ReconnectOptions {
  /** A call's default timeout, ms, from when it is sent. Default 10000. */
  callTimeout?: number;
  /** Commands waiting for the socket, or for their turn to be sent. Default 100. */
  queueLimit?: number;
  /** Frames sent at once before pacing starts. Default 80 (the endpoint allows 100). */
  sendBurst?: number;
  /** Frames sent per second once paced. Default 40 (the endpoint allows 50). */
  sendRate?: number;
  /** Returns a token (or a promise of one) for the endpoint's refresh check: with it, the
   * client renews an expiring identity by itself before the `session` notice's deadline (at
   * 80% of the time left, or 5 s before the end if sooner, never before half of it). A refusal
   * or a throw is an `error` event, tried once more while time remains. Default: none. */
  refresh?: () => string | PromiseLike<string>;
}

/** The events every client emits. */
export interface ClientEvents<T> {
  message: RealtimeMessage<T>;
  presence: PresenceEvent;
  reset: ResetEvent;
  lagged: LaggedEvent;
  status: StatusEvent;
}

/** The events of a `RealtimeSocket`. */
export interface SocketEvents<T> extends ClientEvents<T> {
  error: ErrorNotice;
  /** The join reply of a topic this socket joined when it connected (`$conn` event `joined`). */
  joined: HandlerAnswer;
  /** What a publish handler answered a frame this socket sent (`$conn` event `reply`). */
  reply: HandlerAnswer;
  /** A frame that isn't an envelope (`Framing::Raw`). */
  raw: string | ArrayBuffer;
}

/** The events of a `RealtimeChannels`. */
export interface ChannelsEvents<T> extends ClientEvents<T> {
  /** A message on `$conn`, sent to this connection alone (a connect-time topic's `joined`
   * notice too, when the topic has no subscription object). */
  direct: RealtimeMessage;
  /** The server put this connection in `topic`: attach handlers to the new subscription. */
  subscribed: { topic: string; subscription: Subscription };
  /** The server took this connection out of `topic`. */
  unsubscribed: { topic: string; subscription: Subscription };
  /** The server's `session` notice (first, when the identity expires): refresh before then.
   * Never a `direct` message. */
  session: SessionEvent;
  /** A frame the server couldn't take, or an automatic refresh that failed (its code). */
  error: ErrorNotice;
  raw: string | ArrayBuffer;
}

/** The events of one subscription of a `RealtimeChannels`. */
export interface SubscriptionEvents<T, J = unknown> {
  message: RealtimeMessage<T>;
  presence: PresenceEvent;
  reset: ResetEvent;
  lagged: LaggedEvent;
  /** The topic was joined again (after a reconnect, or a retry), or its join reply came for a
   * topic asked for at connect time; `reply` is the join reply. */
  joined: Joined<J>;
  /** A resubscription after a reconnect was refused. */
  error: RealtimeError;
  /** The server took the connection out of the topic. */
  unsubscribed: { topic: string };
}

/** Named events. Not exported by `client.js`: the base of its classes. */
declare class Emitter<E> {
  /** Calls `fn(detail)` on each event of `type`; returns a function that unsubscribes. */
  on<K extends keyof E>(type: K, fn: (detail: E[K]) => void): () => void;
}

/** What a WebSocket or SSE client shares. Not exported by `client.js`. */
declare class Client<E> extends Emitter<E> {
  /** The URL it connects to, or the function giving it, as passed (resume parameters are
   * added to it on each connect). */
  readonly url: UrlSource;
  /** Where the connection is. */
  readonly state: ConnectionState;
  /** How many messages the dedup safety net dropped (0 when resume is exact). */
  readonly duplicates: number;
  /** The last message id seen on `topic`, or on any topic; `null` if none. */
  lastId(topic?: string): MessageId | null;
  /** Closes the connection and cancels reconnecting, for good. */
  close(): void;
}

/** Splits an id `"<epoch hex>-<offset>"`; `null` if it isn't one. */
export function parseId(id: unknown): { epoch: string; offset: number } | null;

/**
 * A WebSocket to a `WsEndpoint` that reconnects with backoff and resumes every topic it has
 * seen with one `?last=<topic>:<id>` each.
 */
export class RealtimeSocket<T = unknown> extends Client<SocketEvents<T>> {
  constructor(url: UrlSource, options?: SocketOptions);
  /** Strings, `Blob`s and buffers go as they are, other values as JSON; queued while
   * reconnecting. `false` when the queue is full or the socket is closed. */
  send(data: unknown): boolean;
  /** Sends `{"event": event, "data": data}` (`data` absent: `null`), a message with that event
   * name for an endpoint with `event_frames(true)` (elsewhere just a JSON frame); as `send`. */
  sendEvent(event: string, data?: unknown): boolean;
}

/**
 * An EventSource to an `SseEndpoint`: the browser retries once with `Last-Event-ID`, then
 * this backs off and reopens with `?lastEventId=`.
 */
export class RealtimeEvents<T = unknown> extends Client<ClientEvents<T>> {
  constructor(url: UrlSource, options?: EventsOptions);
}

/** Codes a `RealtimeError` carries: the client's own, the server's, or a handler's. */
export type RealtimeErrorCode =
  | "timeout"
  | "disconnected"
  | "queue_full"
  | "closed"
  | "unsubscribed"
  | "forbidden"
  | "unavailable"
  | "not_subscribed"
  | "invalid_topic"
  | "invalid_filter"
  | "unknown_event"
  | "too_large"
  | "unauthorized"
  | "refresh_failed"
  | (string & {});

/** Why a command failed. */
export class RealtimeError extends Error {
  constructor(code: RealtimeErrorCode, message?: string);
  readonly name: "RealtimeError";
  readonly code: RealtimeErrorCode;
}

/** The WebSocket subprotocol of the channel protocol. */
export const PROTOCOL: "salvo-realtime.v1";

/** Where a subscription is. */
export type SubscriptionState = "subscribing" | "subscribed" | "unsubscribed" | "refused";

/** Options of `RealtimeChannels.publish`. */
export interface PublishOptions {
  /** The message's event name. */
  event?: string;
  /** `false` leaves the publisher out. */
  echo?: boolean;
}

/** The answer to a publish: `id` when the message was published to its topic, `reply` when
 * a publish handler answered the sender (`R` is not checked); `{}` when neither. */
export interface Published<R = unknown> {
  id?: MessageId;
  reply?: R;
}

/** Options of `RealtimeChannels.subscribe`. */
export interface SubscribeOptions {
  /** The last `recent` messages, on first subscribing without a known id. */
  recent?: number;
  /** Start after this id (one kept from an earlier visit) while none was seen here. */
  last?: MessageId;
  /** For the server's authorization rule. */
  data?: unknown;
  /** Only the messages whose tags it lists; sent again on every resubscription. */
  filter?: Filter | null;
}

/** One topic of a `RealtimeChannels` socket. Not a class `client.js` exports. `T`: the data
 * of its messages, `J`: its join reply (neither is checked). */
export interface Subscription<T = unknown, J = unknown> extends Emitter<SubscriptionEvents<T, J>> {
  readonly topic: string;
  readonly state: SubscriptionState;
  /** The last id seen on the topic, or `null`. */
  readonly lastId: MessageId | null;
  /** The filter it asks the server for, or `null`. */
  readonly filter: Filter | null;
  /** Settled by the server's first answer, with the join reply; once it rejects, the
   * subscription has ended. */
  readonly ready: Promise<Joined<J>>;
  /** Publishes to this topic; resolves to `{ id?, reply? }`. */
  publish<R = unknown>(data: unknown, options?: PublishOptions): Promise<Published<R>>;
  /** Publishes `data` under the event name `event` (Phoenix's `channel.push`); resolves to
   * the handler's answer, `undefined` if it gave none (`R` is not checked). */
  push<R = unknown>(event: string, data: unknown, options?: { echo?: boolean }): Promise<R | undefined>;
  /** Calls `fn(data, message)` for each message of the event name `event` (socket.io's
   * `socket.on(event)`); returns a function that unsubscribes. `D` is not checked. */
  onEvent<D = unknown>(event: string, fn: (data: D, message: RealtimeMessage<D>) => void): () => void;
  /** Changes the filter (`null`: every message) from the last id seen, so nothing is lost;
   * resolves once the server applied it. Refused (`invalid_filter`...), the previous filter
   * stays. */
  setFilter(filter: Filter | null): Promise<Joined<J>>;
  /** Leaves the topic; nothing more of it is emitted once called. */
  unsubscribe(): Promise<{ topic: string; was_subscribed: boolean }>;
}

/**
 * A WebSocket speaking the channel protocol (`salvo-realtime.v1`): any number of topics on one
 * socket, publishes and calls with replies.
 */
export class RealtimeChannels<T = unknown> extends Client<ChannelsEvents<T>> {
  constructor(url: UrlSource, options?: ChannelsOptions);
  /** Subscribes to `topic`, or returns the subscription it already has (options ignored). */
  subscribe<U = T, J = unknown>(topic: string, options?: SubscribeOptions): Subscription<U, J>;
  /** The subscription to `topic`, or `null`. */
  subscription(topic: string): Subscription<T> | null;
  /** Publishes `data` (any JSON; a string goes as text) to a subscribed topic; resolves to
   * `{ id?, reply? }`: the message's id, the handler's answer. */
  publish<R = unknown>(topic: string, data: unknown, options?: PublishOptions): Promise<Published<R>>;
  /** Calls a server method; resolves to its result (`R` is not checked). */
  call<R = unknown>(method: string, data?: unknown, options?: { timeout?: number }): Promise<R>;
  /** Renews this connection's identity with `token` (1 to 8,192 bytes, for the endpoint's
   * refresh check) without reconnecting; resolves to when it now expires. Rejects like a call
   * (`unauthorized`, `forbidden`, `invalid_data`, `handler_failed`, `unsupported`, `timeout`,
   * `disconnected`); refused, the old expiry still holds. */
  refresh(token: string): Promise<Refreshed>;
}

/** `new RealtimeSocket(url, options)`. */
export const connect: <T = unknown>(
  url: UrlSource,
  options?: SocketOptions,
) => RealtimeSocket<T>;
/** `new RealtimeEvents(url, options)`. */
export const subscribe: <T = unknown>(
  url: UrlSource,
  options?: EventsOptions,
) => RealtimeEvents<T>;
/** `new RealtimeChannels(url, options)`: the channel protocol over one WebSocket. */
export function channels<T = unknown>(
  url: UrlSource,
  options?: ChannelsOptions,
): RealtimeChannels<T>;

export {};
