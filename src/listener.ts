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
   * Unlistens when aborted. Aborted before `listen()` resolved, the subscription is undone and
   * `listen()` rejects with the signal's reason.
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

function checkChannel(channel: unknown): string {
  if (typeof channel !== "string" || channel.length === 0) {
    throw new TypeError(`Channel must be a non-empty string (got ${JSON.stringify(channel)})`);
  }
  if (new TextEncoder().encode(channel).length > MAX_CHANNEL_BYTES) {
    throw new RangeError(
      `Channel must be at most ${MAX_CHANNEL_BYTES} bytes (got ${JSON.stringify(channel)})`,
    );
  }
  if (channel.includes("\0")) throw new TypeError("Channel must not contain NUL characters");
  return channel;
}

/** The LISTEN side of one pool. */
export class Listener {
  readonly #topology: Topology;
  readonly #events: EventTarget;
  readonly #channels = new Map<string, Set<(payload: string) => void>>();
  #session: Session | undefined;
  #endpoint: Endpoint | undefined;
  /** The session being opened and every channel listened to on it. */
  #connecting: Promise<void> | undefined;
  /** `listenlost` was dispatched and `listenrestored` not yet. */
  #lost = false;
  #retryMs = RETRY_MIN_MS;
  #retry: ReturnType<typeof setTimeout> | undefined;
  /** `listen_heartbeat_ms`: 0 for none. */
  readonly #heartbeatMs: number;
  #heartbeat: ReturnType<typeof setTimeout> | undefined;
  #closed = false;

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
    if (this.#closed) throw new PoolClosedError();
    options?.signal?.throwIfAborted();
    let fns = this.#channels.get(channel);
    const listener = (payload: string) => fn(payload);
    const fresh = fns === undefined;
    if (fns === undefined) this.#channels.set(channel, fns = new Set());
    fns.add(listener);
    try {
      if (fresh) await this.#listen(channel);
      else await this.#connecting;
    } catch (err) {
      this.#drop(channel, listener);
      // The other channels still need a session.
      this.#reopen();
      throw err;
    }
    const signal = options?.signal;
    // The abort handler goes with the subscription: a long-lived signal shared by many
    // subscriptions must not keep every one of them (and its callback) alive.
    const onAbort = () => void this.#unlisten(channel, listener);
    const unlisten = () => {
      signal?.removeEventListener("abort", onAbort);
      return this.#unlisten(channel, listener);
    };
    if (signal?.aborted) {
      // Aborted while the LISTEN was on the way: the abort event has already fired.
      await this.#unlisten(channel, listener);
      signal.throwIfAborted();
    }
    signal?.addEventListener("abort", onAbort, { once: true });
    return { channel, unlisten, [Symbol.asyncDispose]: unlisten };
  }

  async #listen(channel: string): Promise<void> {
    const session = this.#session;
    if (session === undefined || session.dead) {
      // Opening listens to every channel, this one included.
      await (this.#connecting ??= this.#open().finally(() => this.#connecting = undefined));
      return;
    }
    await session.query(`LISTEN ${quoteChannel(channel)}`, undefined, STATEMENT);
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
    // A session being opened may be sending this channel's LISTEN: let it finish, then undo it.
    if (this.#connecting !== undefined) await this.#connecting.catch(() => {});
    if (this.#channels.has(channel)) return; // subscribed again meanwhile
    const session = this.#session;
    if (session === undefined || session.dead) return;
    if (this.#channels.size === 0) {
      // Nobody listens any more: the dedicated connection goes too.
      await this.#endSession(session);
      return;
    }
    await session.query(`UNLISTEN ${quoteChannel(channel)}`, undefined, STATEMENT).catch(() => {
      // A session that died meanwhile listens to nothing; its replacement skips this channel.
    });
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

  /** Opens a session on the current primary and listens to every channel on it. */
  async #open(): Promise<void> {
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
    try {
      // One round trip: every LISTEN pipelined.
      await Promise.all(
        [...this.#channels.keys()].map((c) =>
          session.query(`LISTEN ${quoteChannel(c)}`, undefined, STATEMENT)
        ),
      );
    } catch (err) {
      // Ended on purpose meanwhile (the last unlisten, or close()): the server did nothing wrong.
      const ours = this.#session === session;
      this.#endSession(session);
      if (this.#closed) throw new PoolClosedError();
      if (!ours && this.#channels.size === 0) return;
      this.#topology.report(endpoint, err);
      // Lost or refused on its way, or the server is read-only by now: the caller hears what
      // any checkout hears when no server can serve it.
      if (!isConnectionError(err) && !isReadOnlyError(err)) throw err;
      const { host, port } = endpoint.info;
      throw new NoEndpointAvailableError(
        "listen",
        `the LISTEN session on ${host}:${port} failed (${reasonOf(err)})`,
        { cause: err },
      );
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
    for (const fn of fns) {
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
    if (!this.#lost && this.#connecting === undefined) {
      this.#lost = true;
      this.#events.dispatchEvent(poolEvent("listenlost", { endpoint: endpoint.info, reason }));
    }
    this.#reopen();
  }

  #reopen(): void {
    if (this.#closed || this.#retry !== undefined || this.#channels.size === 0) return;
    if (this.#session !== undefined || this.#connecting !== undefined) return;
    this.#connecting = this.#open().catch(() => {
      // No primary yet, or it refused: try again after a growing pause.
      const wait = this.#retryMs;
      this.#retryMs = Math.min(RETRY_MAX_MS, this.#retryMs * 2);
      this.#retry = setTimeout(() => {
        this.#retry = undefined;
        this.#reopen();
      }, wait);
    }).finally(() => this.#connecting = undefined);
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
    const session = this.#session;
    this.#session = undefined;
    this.#endpoint = undefined;
    await session?.end(0);
  }
}
