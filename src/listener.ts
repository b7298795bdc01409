/**
 * LISTEN/NOTIFY for a pool: one dedicated session on the current primary (outside every group's
 * budget) carrying every channel the application listens to. When that session dies or the
 * primary changes, it says so (`listenlost`), opens a new one on the primary of the moment,
 * listens to every channel again and says so (`listenrestored`): notifications sent in between
 * may be missed, and the events tell the application when to resync.
 *
 * @module
 */

import { withDeadline } from "./deadline.ts";
import type { Session } from "./driver/postgres.ts";
import type { Endpoint } from "./endpoint.ts";
import { NoEndpointAvailableError, PoolClosedError } from "./errors.ts";
import { poolEvent, reasonOf } from "./events.ts";
import { isAbortSignal } from "./handler_options.ts";
import { quote } from "./quote.ts";
import { isConnectionError, isReadOnlyError } from "./sqlstate.ts";
import type { Topology } from "./topology.ts";

/**
 * One `pool.listen()` subscription.
 *
 * @example Listening until disposed
 * ```ts
 * import { Pool } from "@x/pgdbpool";
 *
 * async function watchOrders(pool: Pool) {
 *   await using sub = await pool.listen("orders", (payload) => console.log("order", payload));
 *   console.log(`listening on ${sub.channel}`);
 * }
 * ```
 */
export interface Subscription extends AsyncDisposable {
  /** The channel, as given. */
  readonly channel: string;
  /** Stops delivering to this subscription (UNLISTEN once the channel has no one left). */
  unlisten(): Promise<void>;
}

/**
 * Options of `pool.listen()`.
 *
 * @example Listening for the life of a request
 * ```ts
 * import { Pool } from "@x/pgdbpool";
 *
 * async function untilAborted(pool: Pool, signal: AbortSignal) {
 *   await pool.listen("jobs", (payload) => console.log(payload), { signal });
 * }
 * ```
 */
export interface ListenOptions {
  /**
   * Unlistens when aborted. Aborted before `listen()` resolved, `listen()` rejects at once with
   * the signal's reason (without waiting for the server's answer) and the subscription is undone.
   */
  readonly signal?: AbortSignal;
}

const STATEMENT = { prepare: false };
const RETRY_MIN_MS = 100;
const RETRY_MAX_MS = 2000;
/** PostgreSQL truncates identifiers to 63 bytes; `pg_notify` refuses longer channel names. */
const MAX_CHANNEL_BYTES = 63;

/** A channel name as an SQL identifier: double-quoted, inner quotes doubled. */
export function quoteChannel(channel: string): string {
  return `"${channel.replaceAll('"', '""')}"`;
}

/** A UTF-16 code unit of a surrogate pair standing alone (`u` mode matches whole pairs only). */
const LONE_SURROGATE = /\p{Cs}/u;

function checkChannel(channel: unknown): string {
  if (typeof channel !== "string" || channel.length === 0) {
    // quote(): an object is named by its type only (it may hold a secret); JSON.stringify
    // threw its own error for a BigInt and said "undefined" for a symbol or a function.
    throw new TypeError(`Channel must be a non-empty string (got ${quote(channel)})`);
  }
  if (new TextEncoder().encode(channel).length > MAX_CHANNEL_BYTES) {
    throw new RangeError(
      `Channel must be at most ${MAX_CHANNEL_BYTES} bytes (got ${quote(channel)})`,
    );
  }
  if (channel.includes("\0")) throw new TypeError("Channel must not contain NUL characters");
  // Sent as UTF-8, a lone surrogate becomes U+FFFD: the server listened on another name, and
  // its notifications never reached the subscription (nor did pg_notify with the name given).
  if (LONE_SURROGATE.test(channel)) {
    throw new TypeError(
      `Channel must be well-formed text: a lone surrogate has no UTF-8 form (got ${
        quote(channel)
      })`,
    );
  }
  return channel;
}

/**
 * The signal of `pool.listen()`'s options, checked: a mistyped key (`{ sigal }`) or a value that
 * is no signal used to be ignored, leaving a subscription its caller meant to end with the
 * signal listening for good.
 */
function listenSignal(options: unknown): AbortSignal | undefined {
  if (options === undefined) return undefined;
  if (typeof options !== "object" || options === null || Array.isArray(options)) {
    throw new TypeError(`Listen options must be an object (got ${quote(options)})`);
  }
  for (const key in options) {
    if (key !== "signal" && Object.hasOwn(options, key)) {
      throw new TypeError(`Listen option ${JSON.stringify(key)} is not known (known: signal)`);
    }
  }
  const signal = (options as { signal?: unknown }).signal;
  if (signal === undefined || isAbortSignal(signal)) return signal;
  throw new TypeError(`Listen option signal must be an AbortSignal (got ${quote(signal)})`);
}

/** Rejects with `signal.reason` once it aborts, else settles as `promise` does. */
function untilAborted<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

const isLate = (err: unknown) => (err as { code?: unknown } | null)?.code === "ETIMEDOUT";

/** The LISTEN side of one pool. */
export class Listener {
  readonly #topology: Topology;
  readonly #events: EventTarget;
  readonly #channels = new Map<string, Set<(payload: string) => void>>();
  #session: Session | undefined;
  #endpoint: Endpoint | undefined;
  /**
   * The session being opened and every channel listened to on it; rejects as the opening
   * fails, so that everyone waiting for it hears whether anything listens.
   */
  #opening: Promise<void> | undefined;
  /**
   * Per channel, a LISTEN of its own on the session in use, still on its way: a later
   * subscriber of that channel is listened to only once it is answered.
   */
  readonly #pending = new Map<string, Promise<void>>();
  /** `listenlost` was dispatched and `listenrestored` not yet. */
  #lost = false;
  #retryMs = RETRY_MIN_MS;
  #retry: ReturnType<typeof setTimeout> | undefined;
  /** `listen_heartbeat_ms`: 0 for none. */
  readonly #heartbeatMs: number;
  #heartbeat: ReturnType<typeof setTimeout> | undefined;
  #closed = false;
  /** Takes a live subscription's abort handler off its signal (see `subscribe`). */
  readonly #detach = new Set<() => void>();

  constructor(topology: Topology, events: EventTarget, heartbeatMs: number) {
    this.#topology = topology;
    this.#events = events;
    this.#heartbeatMs = heartbeatMs;
    // A promotion or the listening server going down moves the session to the new primary.
    topology.onChange(() => this.#follow());
  }

  /** Subscribes `fn` to `channel`; resolves once the server listens on it. */
  async subscribe(
    channel: string,
    fn: (payload: string) => void,
    options?: ListenOptions,
  ): Promise<Subscription> {
    checkChannel(channel);
    if (typeof fn !== "function") {
      throw new TypeError(`onNotify must be a function (got ${typeof fn})`);
    }
    const signal = listenSignal(options);
    if (this.#closed) throw new PoolClosedError();
    signal?.throwIfAborted();
    let fns = this.#channels.get(channel);
    const listener = (payload: string) => fn(payload);
    const fresh = fns === undefined;
    if (fns === undefined) this.#channels.set(channel, fns = new Set());
    fns.add(listener);
    try {
      const ready = this.#ready(channel, fresh);
      // A LISTEN may wait up to the probe deadline: an abort must not wait for it.
      await (signal === undefined ? ready : untilAborted(ready, signal));
    } catch (err) {
      // Undone in the background, whatever ended the wait: an aborted LISTEN may still be
      // answered, and one that failed took its session down, whose replacement, opening now,
      // listens to every channel it knew of, this one included (its caller hears only now).
      this.#unlisten(channel, listener).catch(() => {});
      throw err;
    }
    // The abort handler goes with the subscription: a long-lived signal shared by many
    // subscriptions must not keep every one of them (and its callback) alive, nor, once the
    // pool is closed, the pool itself (close() detaches what is left).
    const onAbort = () => {
      this.#detach.delete(detach);
      void this.#unlisten(channel, listener);
    };
    const detach = () => signal?.removeEventListener("abort", onAbort);
    const unlisten = () => {
      detach();
      this.#detach.delete(detach);
      return this.#unlisten(channel, listener);
    };
    if (signal?.aborted) {
      // Aborted right as the LISTEN was answered: the abort event has already fired.
      await this.#unlisten(channel, listener);
      signal.throwIfAborted();
    }
    if (signal !== undefined && !this.#closed) {
      signal.addEventListener("abort", onAbort, { once: true });
      this.#detach.add(detach);
    }
    return { channel, unlisten, [Symbol.asyncDispose]: unlisten };
  }

  /**
   * Settles once the server listens on `channel` (or cannot): `fresh` when its subscriber is
   * the first, so that no LISTEN of it was sent yet.
   */
  #ready(channel: string, fresh: boolean): Promise<void> {
    const pending = this.#pending.get(channel);
    if (pending !== undefined) return pending;
    const session = this.#session;
    // Died without its close reported yet: what listened on it is lost all the same.
    if (session?.dead === true && this.#opening === undefined) {
      this.#lose(this.#endpoint!, "connection closed");
    }
    // Opening listens to every channel, this one included.
    if (this.#session === undefined || this.#session.dead) return this.#connect();
    if (fresh) return this.#listenOn(this.#session, this.#endpoint!, channel);
    // Listened on the session in use, or being listened by its opening: whose outcome it is.
    return this.#opening ?? Promise.resolve();
  }

  /** One channel's LISTEN on the session in use, bounded by the server's deadline. */
  #listenOn(session: Session, endpoint: Endpoint, channel: string): Promise<void> {
    const deadlineMs = this.#topology.deadline(endpoint);
    const listening = withDeadline(
      session.query(`LISTEN ${quoteChannel(channel)}`, undefined, STATEMENT),
      deadlineMs,
    ).then(() => {}, (err: unknown) => {
      if (this.#closed) throw new PoolClosedError();
      // A session that cannot answer a LISTEN hears no notification either: every channel on
      // it is lost. (One that died is reported by its close.)
      if (isLate(err) && this.#session === session) {
        this.#lose(endpoint, `no answer to LISTEN within ${deadlineMs} ms`);
      }
      throw this.#failure(endpoint, err, deadlineMs);
    });
    const tracked: Promise<void> = listening.finally(() => {
      if (this.#pending.get(channel) === tracked) this.#pending.delete(channel);
    });
    this.#pending.set(channel, tracked);
    return tracked;
  }

  /**
   * What a caller hears of a LISTEN that failed: a session lost, refused, late or on a server
   * that went read-only is what any checkout hears when no server can serve it.
   */
  #failure(endpoint: Endpoint, err: unknown, deadlineMs: number): unknown {
    if (!isConnectionError(err) && !isReadOnlyError(err)) return err;
    const { host, port } = endpoint.info;
    const why = isLate(err)
      ? `got no answer to LISTEN within ${deadlineMs} ms`
      : `failed (${reasonOf(err)})`;
    return new NoEndpointAvailableError(
      "listen",
      `the LISTEN session on ${host}:${port} ${why}`,
      { cause: err },
    );
  }

  #drop(channel: string, listener: (payload: string) => void): boolean {
    const fns = this.#channels.get(channel);
    if (fns === undefined || !fns.delete(listener)) return false;
    if (fns.size > 0) return false;
    this.#channels.delete(channel);
    return true;
  }

  async #unlisten(channel: string, listener: (payload: string) => void): Promise<void> {
    if (!this.#drop(channel, listener)) return;
    // Its LISTEN may be on its way (its own, or an opening session's): let it finish (each is
    // bounded by a deadline), then undo it.
    const pending = this.#pending.get(channel) ?? this.#opening;
    if (pending !== undefined) await pending.catch(() => {});
    if (this.#channels.has(channel)) return; // subscribed again meanwhile
    const session = this.#session;
    const endpoint = this.#endpoint;
    if (session === undefined || endpoint === undefined || session.dead) return;
    if (this.#channels.size === 0) {
      // Nobody listens any more: the dedicated connection goes too.
      await this.#endSession(session);
      return;
    }
    const deadlineMs = this.#topology.deadline(endpoint);
    try {
      await withDeadline(
        session.query(`UNLISTEN ${quoteChannel(channel)}`, undefined, STATEMENT),
        deadlineMs,
      );
    } catch (err) {
      // A session that died meanwhile listens to nothing; its replacement skips this channel.
      // One that does not answer hears no notification for the other channels either.
      if (isLate(err) && this.#session === session) {
        this.#lose(endpoint, `no answer to UNLISTEN within ${deadlineMs} ms`);
      }
    }
  }

  /** Ends `session`, and forgets it if it is still the one in use. */
  #endSession(session: Session): Promise<void> {
    if (this.#session === session) {
      this.#session = undefined;
      this.#endpoint = undefined;
      this.#stopBeating();
    }
    return session.end(0);
  }

  /**
   * Opens a session listening to every channel, unless one is being opened: either way the
   * opening everyone waits for. A re-subscription that fails is tried again after a pause.
   */
  #connect(): Promise<void> {
    if (this.#opening !== undefined) return this.#opening;
    // Opening now: a retry waiting for its turn has nothing left to do.
    if (this.#retry !== undefined) clearTimeout(this.#retry);
    this.#retry = undefined;
    const opening = this.#open();
    this.#opening = opening;
    opening.catch(() => this.#retryLater());
    return opening;
  }

  /**
   * Opens a session on the current primary and listens to every channel on it. Clears
   * `#opening` as it settles, in the same step: a loss right after it must see no opening.
   * (Its first step awaits, so `#connect` has set `#opening` by then.)
   */
  async #open(): Promise<void> {
    try {
      await this.#openSession();
    } finally {
      this.#opening = undefined;
    }
  }

  async #openSession(): Promise<void> {
    const endpoint = await this.#primary();
    // Everyone unlistened while the primary was being found: no session to open.
    if (this.#channels.size === 0) return;
    const session = endpoint.listenSession({
      onNotify: (channel, payload) => this.#deliver(channel, payload),
      onClose: () => {
        if (this.#session === session) this.#lose(endpoint, "connection closed");
      },
    });
    this.#session = session;
    this.#endpoint = endpoint;
    // Connecting and the LISTENs, as a probe: a path that stalls after start-up (or a hung
    // backend) would otherwise leave every waiter, and the re-subscription, waiting for good.
    const deadlineMs = this.#topology.deadline(endpoint);
    try {
      // One round trip: every LISTEN pipelined.
      await withDeadline(
        Promise.all(
          [...this.#channels.keys()].map((c) =>
            session.query(`LISTEN ${quoteChannel(c)}`, undefined, STATEMENT)
          ),
        ),
        deadlineMs,
      );
    } catch (err) {
      // Ended on purpose meanwhile (the last unlisten, or close()): the server did nothing wrong.
      const ours = this.#session === session;
      // Late: whatever answer comes now is not waited for; the session goes.
      this.#endSession(session);
      if (this.#closed) throw new PoolClosedError();
      if (!ours && this.#channels.size === 0) return;
      this.#topology.report(endpoint, err);
      throw this.#failure(endpoint, err, deadlineMs);
    }
    if (this.#closed) {
      session.end(0);
      throw new PoolClosedError();
    }
    if (this.#channels.size === 0) {
      // The last subscription went while its LISTEN was on the way.
      this.#endSession(session);
      return;
    }
    this.#retryMs = RETRY_MIN_MS;
    this.#beat(session, endpoint);
    if (this.#lost) {
      this.#lost = false;
      this.#events.dispatchEvent(poolEvent("listenrestored", {
        endpoint: endpoint.info,
        channels: [...this.#channels.keys()],
      }));
    }
  }

  /**
   * Every `listen_heartbeat_ms`, proves `session` still answers. A stopped backend or a dead
   * network path leaves its socket open (nothing closes, nothing errs) and notifications stop
   * without a word: a heartbeat unanswered within the probe deadline replaces the session.
   */
  #beat(session: Session, endpoint: Endpoint): void {
    if (this.#heartbeatMs === 0) return;
    this.#stopBeating();
    this.#heartbeat = setTimeout(async () => {
      this.#heartbeat = undefined;
      if (this.#session !== session) return;
      const deadlineMs = this.#topology.deadline(endpoint);
      try {
        await withDeadline(session.query("SELECT 1", undefined, STATEMENT), deadlineMs);
      } catch (err) {
        if (this.#session !== session) return;
        const late = (err as { code?: unknown }).code === "ETIMEDOUT";
        this.#lose(
          endpoint,
          late ? `no answer to a heartbeat within ${deadlineMs} ms` : `heartbeat: ${reasonOf(err)}`,
        );
        return;
      }
      if (this.#session === session) this.#beat(session, endpoint);
    }, this.#heartbeatMs);
  }

  #stopBeating(): void {
    if (this.#heartbeat !== undefined) clearTimeout(this.#heartbeat);
    this.#heartbeat = undefined;
  }

  async #primary(): Promise<Endpoint> {
    let primary = this.#topology.primary();
    if (primary === undefined) {
      this.#topology.start();
      await this.#topology.refresh();
      primary = this.#topology.primary();
    }
    if (this.#closed) throw new PoolClosedError();
    if (primary === undefined) {
      throw new NoEndpointAvailableError("listen", "no primary to LISTEN on");
    }
    return primary;
  }

  #deliver(channel: string, payload: string): void {
    const fns = this.#channels.get(channel);
    if (fns === undefined) return;
    // The subscribers of the moment it arrived: one a callback adds now joins the live Set,
    // which the loop would reach, handing it a notification sent before it subscribed (and a
    // callback subscribing on each one would loop forever). One unlistened meanwhile is skipped.
    for (const fn of [...fns]) {
      if (!fns.has(fn)) continue;
      try {
        fn(payload);
      } catch (err) {
        // A throwing callback must not stop delivery to the others; it surfaces as uncaught.
        queueMicrotask(() => {
          throw err;
        });
      }
    }
  }

  /** The session in use is gone or on the wrong server: tell, then re-subscribe. */
  #lose(endpoint: Endpoint, reason: string): void {
    const session = this.#session;
    this.#session = undefined;
    this.#endpoint = undefined;
    this.#stopBeating();
    session?.end(0);
    if (this.#closed) return;
    // A session lost while it is still being opened with nothing lost before is a first
    // subscription's: its caller hears of it; nothing that was listening was lost.
    if (!this.#lost && this.#opening === undefined) {
      this.#lost = true;
      this.#events.dispatchEvent(poolEvent("listenlost", { endpoint: endpoint.info, reason }));
    }
    this.#reopen();
  }

  /** Re-subscribes every channel now, unless a session is in use or being opened. */
  #reopen(): void {
    if (this.#closed || this.#channels.size === 0) return;
    if (this.#session !== undefined || this.#opening !== undefined) return;
    // A failure arms the retry; subscribers waiting for it hear it themselves.
    this.#connect().catch(() => {});
  }

  /**
   * After a failed opening: tries again after a growing pause, if what failed was a
   * re-subscription (`listenlost` told). A first subscription's failure is its callers' to hear.
   */
  #retryLater(): void {
    if (this.#closed || !this.#lost || this.#retry !== undefined) return;
    if (this.#channels.size === 0 || this.#session !== undefined || this.#opening !== undefined) {
      return;
    }
    const wait = this.#retryMs;
    this.#retryMs = Math.min(RETRY_MAX_MS, this.#retryMs * 2);
    this.#retry = setTimeout(() => {
      this.#retry = undefined;
      this.#reopen();
    }, wait);
  }

  /** Topology changed: leave a server that is no longer the primary (or is down). */
  #follow(): void {
    if (this.#closed) return;
    const endpoint = this.#endpoint;
    if (endpoint === undefined) {
      // Waiting to re-subscribe: a primary just appeared, so go now rather than after the pause.
      if (this.#retry !== undefined && this.#topology.primary() !== undefined) {
        clearTimeout(this.#retry);
        this.#retry = undefined;
        this.#reopen();
      }
      return;
    }
    if (endpoint.state === "down") this.#lose(endpoint, endpoint.lastError ?? "server down");
    else if (this.#topology.primary() !== endpoint) this.#lose(endpoint, "no longer the primary");
  }

  /** Ends the session for good (`pool.close()`). */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.#retry !== undefined) clearTimeout(this.#retry);
    this.#retry = undefined;
    this.#stopBeating();
    this.#channels.clear();
    this.#pending.clear();
    for (const detach of this.#detach) detach();
    this.#detach.clear();
    const session = this.#session;
    this.#session = undefined;
    this.#endpoint = undefined;
    await session?.end(0);
  }
}
