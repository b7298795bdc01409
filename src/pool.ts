/**
 * The pool: validated configuration, its endpoints and groups, and the ways to check out.
 *
 * @module
 */

import { type PoolConfig, resolveConfig, type ResolvedConfig } from "./config.ts";
import { Endpoint } from "./endpoint.ts";
import { PoolClosedError, UnconfiguredGroupError } from "./errors.ts";
import { Group, type GroupContext, groupLookup } from "./group.ts";
import type { PoolEventListener, PoolEventType } from "./events.ts";
import { type PoolHooks, poolHooks } from "./hooks.ts";
import { Listener, type ListenOptions, type Subscription } from "./listener.ts";
import { Handler, type HandlerOptions, leaseReady } from "./handler.ts";
import { oneShot } from "./one_shot.ts";
import { isBareBegin, mayHideBlock } from "./transaction_block.ts";
import { mayLeaveState } from "./session_state.ts";
import type { QueryOptions, Row, Rows, ValueRows } from "./rows.ts";
import { wantsArrays } from "./query_options.ts";
import { quote } from "./quote.ts";
import { parseLsn } from "./lsn.ts";
import type { ServerConnection } from "./server_connection.ts";
import { type PoolStats, statsOf } from "./stats.ts";
import { Topology } from "./topology.ts";

/** How often check-ins may run the upkeep of every group when background timers are off. */
const LAZY_UPKEEP_MS = 250;

/**
 * A PostgreSQL connection de-multiplexer: named groups of exclusive connections over one or more
 * endpoints. Construction validates the configuration and opens nothing; connections open on
 * first use.
 *
 * @example Checkout, one-shot query and transaction
 * ```ts
 * import { Pool } from "@x/pgdbpool";
 *
 * await using pool = new Pool({
 *   db: [{ host: "127.0.0.1", name: "app", user: "app", pass: "secret" }],
 *   groups: {
 *     read: { connection_count: 4 },
 *     write: { connection_count: 2, autocommit: false },
 *   },
 * });
 * const rows = await pool.query("read", "SELECT $1::int AS n", [1]);
 * await pool.transaction("write", async (db) => {
 *   await db.query("INSERT INTO t (v) VALUES ($1)", [rows[0].n]);
 * });
 * ```
 */
export class Pool extends EventTarget implements AsyncDisposable {
  readonly #config: ResolvedConfig;
  readonly #endpoints: readonly Endpoint[];
  readonly #groups: Map<string, Group>;
  readonly #topology: Topology;
  #closing: Promise<void> | undefined;
  readonly #context: GroupContext;
  readonly #listener: Listener;
  #lastUpkeep = 0;
  #token: string | undefined;
  #tokenLsn = -1n;

  /** Validates `config` (throwing `ConfigError`) and prepares groups; opens no connection. */
  constructor(config: PoolConfig) {
    super();
    const resolved = resolveConfig(config);
    this.#config = resolved;
    this.#endpoints = resolved.endpoints.map((e) => new Endpoint(e, resolved.applicationName));
    this.#topology = new Topology(this.#endpoints, {
      intervalMs: resolved.healthCheckIntervalMs,
      backoffMaxMs: resolved.retryBackoffMaxMs,
      probeTimeoutMs: resolved.probeTimeoutMs,
      // Derived from the groups' current routing on every round, never a sticky flag.
      primaryWanted: () => {
        for (const group of this.#groups.values()) if (group.wantsPrimary) return true;
        return false;
      },
      lagLimited: resolved.groups.some((g) => g.maxReplicaLagMs !== undefined),
      checkedOut: (endpoint) => {
        for (const group of this.#groups.values()) if (group.busyOn(endpoint)) return true;
        return false;
      },
    }, this);
    const context: GroupContext = {
      threaded: resolved.threaded,
      validateAfterMs: resolved.validateAfterMs,
      lazyUpkeep: resolved.healthCheckIntervalMs === 0 ? () => this.#lazyUpkeep() : undefined,
      watch: resolved.healthCheckIntervalMs === 0
        ? (endpoint) => this.#topology.watch(endpoint)
        : undefined,
      topology: this.#topology,
      events: this,
      onParameter: (conn, key, value) => this.#onParameter(conn, key, value),
      onToken: (token) => this.#onToken(token),
      hooks: undefined,
    };
    this.#context = context;
    this.#groups = new Map(
      resolved.groups.map((g) => [g.name, new Group(g, this.#endpoints, context)]),
    );
    this.#listener = new Listener(this.#topology, this, resolved.listenHeartbeatMs);
  }

  /**
   * Listens to one event type; the listener's event has that type's exact `detail` (see
   * `PoolEventDetailMap`).
   */
  override addEventListener<K extends PoolEventType>(
    type: K,
    listener: PoolEventListener<K> | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  /** Listens to any event by name, like `EventTarget`. */
  override addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  override addEventListener(
    type: string,
    // deno-lint-ignore no-explicit-any
    listener: ((event: any) => void) | EventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void {
    super.addEventListener(type, listener, options);
  }

  /** Removes a listener added with `addEventListener`. */
  override removeEventListener<K extends PoolEventType>(
    type: K,
    listener: PoolEventListener<K> | null,
    options?: boolean | EventListenerOptions,
  ): void;
  /** Removes a listener of any event by name, like `EventTarget`. */
  override removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
  override removeEventListener(
    type: string,
    // deno-lint-ignore no-explicit-any
    listener: ((event: any) => void) | EventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void {
    super.removeEventListener(type, listener, options);
  }

  /** Whether `close()` has been called. */
  get closed(): boolean {
    return this.#closing !== undefined;
  }

  /**
   * Group lookup for handlers; throws for unknown groups and after close.
   * @ignore
   */
  [groupLookup](name: string): Group {
    const group = this.#groups.get(name);
    if (group === undefined || group.closing) {
      if (this.#closing !== undefined) throw new PoolClosedError();
      // Checked only here, off the hot path. A name that is not a string (the config or a URL
      // object passed by mistake) used to be printed whole by JSON.stringify, password
      // included, or to throw JSON's own BigInt error.
      if (typeof name !== "string") {
        throw new TypeError(`A group name must be a string (got ${quote(name)})`);
      }
      throw new UnconfiguredGroupError(name, [...this.#groups.keys()]);
    }
    return group;
  }

  /**
   * Checks out a connection of `group` synchronously. Use with `using`; statements wait for a
   * connection when the group is busy (threaded mode).
   */
  handler(group: string, options?: HandlerOptions): Handler {
    return new Handler(group, options, this);
  }

  /**
   * Resolves once a connection of `group` is checked out and validated, so its `sql` can be
   * used at once.
   */
  acquire(group: string, options?: HandlerOptions): Promise<Handler> {
    // Not async: with a connection at hand (or handed over by a check-in) the caller's promise
    // settles without async frames in between.
    let db: Handler;
    let ready: Handler | Promise<Handler>;
    try {
      db = new Handler(group, options, this);
    } catch (err) {
      return Promise.reject(err);
    }
    try {
      ready = db[leaseReady]();
    } catch (err) {
      db.release();
      return Promise.reject(err);
    }
    return Promise.resolve(ready);
  }

  /**
   * Runs one statement on a connection of `group` and returns its rows (committed). In an
   * autocommit group, when every connection is busy and nobody waits, the statement is
   * pipelined onto a connection held by other such one-shot statements (as postgres.js does),
   * so a burst of one-shots keeps postgres.js's throughput. Use a handler for anything that
   * needs its own session.
   */
  query<T extends Row = Row>(
    group: string,
    text: string,
    params?: readonly unknown[],
    options?: QueryOptions & { rowMode?: "object" },
  ): Promise<Rows<T>>;
  /** Runs one statement on `group` and resolves to its rows as arrays of values. */
  query(
    group: string,
    text: string,
    params: readonly unknown[] | undefined,
    options: QueryOptions & { rowMode: "array" },
  ): Promise<ValueRows>;
  /** Runs one statement on `group`; its rows come back as `options.rowMode` says. */
  query(
    group: string,
    text: string,
    params?: readonly unknown[],
    options?: QueryOptions,
  ): Promise<Rows | ValueRows>;
  query(
    group: string,
    text: string,
    params?: readonly unknown[],
    options?: QueryOptions,
  ): Promise<Rows | ValueRows> {
    // Not async: a one-shot's promise is handed back as is (an async frame costs two microtask
    // hops per statement); errors still arrive as rejections.
    let g: Group;
    let arrays: boolean;
    try {
      g = this[groupLookup](group);
      arrays = wantsArrays(options);
    } catch (err) {
      return Promise.reject(err);
    }
    if (typeof text === "string" && isBareBegin(text)) {
      return Promise.reject(
        new TypeError(
          `pool.query() commits every statement by itself: ${
            JSON.stringify(text)
          } would open a transaction nothing else shares; use pool.transaction() or a handler`,
        ),
      );
    }
    if (
      g.autocommit && this.#config.threaded && !leavesBlock(text, params) &&
      !leavesState(text)
    ) {
      return oneShot(g, text, params, arrays);
    }
    // A text that may leave a transaction block open runs on a checkout of its own, which
    // commits that block (the statement is committed, as promised) or rolls it back on failure;
    // on a shared connection the one-shots behind it would have run inside it. So does one that
    // may leave session state (SET, set_config, LISTEN, ...): pipelined behind it, other
    // one-shots would run in the changed session before the check-in reset it.
    return this.#checkoutQuery(group, text, params, options);
  }

  async #checkoutQuery(
    group: string,
    text: string,
    params: readonly unknown[] | undefined,
    options: QueryOptions | undefined,
  ): Promise<Rows | ValueRows> {
    const db = new Handler(group, undefined, this);
    try {
      const rows = await db.query(text, params, options);
      if (db.inTransaction) await db.commit();
      return rows;
    } finally {
      // Only a transaction left open needs an awaited rollback.
      if (db.inTransaction) await db[Symbol.asyncDispose]();
      else db.release();
    }
  }

  /**
   * Runs `fn` in a transaction on a connection of `group`: commits when it resolves, rolls back
   * when it throws, and returns its result.
   */
  async transaction<T>(
    group: string,
    fn: (db: Handler) => Promise<T>,
    options?: HandlerOptions,
  ): Promise<T> {
    // Before anything is checked out; a spread would also have made "x" into { 0: "x" } and
    // null into no options.
    if (typeof fn !== "function") {
      throw new TypeError(`pool.transaction() needs a function (got ${quote(fn)})`);
    }
    if (
      options !== undefined &&
      (typeof options !== "object" || options === null || Array.isArray(options))
    ) {
      throw new TypeError(
        `Transaction options of group ${quote(group)} must be an object (got ${quote(options)})`,
      );
    }
    const db = new Handler(group, { ...options, autocommit: false }, this);
    try {
      const result = await fn(db);
      await db.commit();
      return result;
    } finally {
      await db[Symbol.asyncDispose]();
    }
  }

  /**
   * Calls `onNotify` with the payload of every NOTIFY on `channel`, sent on the current primary.
   * All channels share one dedicated connection (outside every group's `connection_count`),
   * opened by the first subscription and ended by the last `unlisten()` or `close()`. When it
   * dies or the primary changes, `listenlost` fires, every channel is listened to again on the
   * new primary, and `listenrestored` fires: notifications in between may be missed, so resync
   * on it. The channel name is quoted as an identifier (any text up to 63 bytes is safe).
   */
  listen(
    channel: string,
    onNotify: (payload: string) => void,
    options?: ListenOptions,
  ): Promise<Subscription> {
    if (this.#closing !== undefined) return Promise.reject(new PoolClosedError());
    return this.#listener.subscribe(channel, onNotify, options);
  }

  /**
   * Graceful and final: new checkouts fail at once with `PoolClosedError`; checkouts held now
   * may finish their work for up to `close_timeout_ms`; then every server connection is ended.
   * Once it resolves, statements on any old handler reject with `PoolClosedError` and open
   * nothing. Idempotent.
   */
  close(): Promise<void> {
    const timeoutMs = this.#config.closeTimeoutMs;
    this.#closing ??= Promise.all([
      ...[...this.#groups.values()].map((g) => g.close(timeoutMs)),
      this.#listener.close(),
      this.#topology.close(0),
    ]).then(() => {});
    return this.#closing;
  }

  /**
   * The newest read-your-writes token committed through this pool. Passing it as
   * `{ after: pool.token }` gives reads that see every write this pool has committed.
   */
  get token(): string | undefined {
    return this.#token;
  }

  /**
   * Detects roles and health of every endpoint now, instead of waiting for the background probe
   * (or, with `health_check_interval_ms: 0`, instead of the next checkout that needs it).
   */
  refresh(): Promise<void> {
    this.#topology.start();
    return this.#topology.refresh();
  }

  /**
   * Dispatches `event` to its listeners. A listener that throws never reaches the pool code that
   * dispatched the event (workerd passes the exception out of `dispatchEvent`, into a timeout or
   * a failure report half done): it is reported as an uncaught error, as Deno, Bun and Node do.
   *
   * @example Listening for pool events
   * ```ts
   * import { Pool } from "@x/pgdbpool";
   *
   * const pool = new Pool({ db: "postgres://app@db/app", groups: { g: { connection_count: 1 } } });
   * pool.addEventListener("endpointdown", (e) => console.warn(e.detail.endpoint.host));
   * ```
   */
  override dispatchEvent(event: Event): boolean {
    try {
      return super.dispatchEvent(event);
    } catch (err) {
      reportListenerError(err);
      return !event.defaultPrevented;
    }
  }

  /** Plain, JSON-ready figures per group and per endpoint. Never contains credentials. */
  stats(): PoolStats {
    return statsOf([...this.#groups.values()], this.#endpoints);
  }

  /**
   * The installed observer (`@x/pgdbpool/otel`).
   * @ignore
   */
  get [poolHooks](): PoolHooks | undefined {
    return this.#context.hooks;
  }

  /** @ignore */
  set [poolHooks](hooks: PoolHooks | undefined) {
    this.#context.hooks = hooks;
  }

  /** Same as `close()`, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  // PostgreSQL 14+ reports in_hot_standby at start-up and whenever it changes on a live
  // session: the role is known without a round trip.
  #onParameter(conn: ServerConnection, key: string, value: string): void {
    if (key === "in_hot_standby") {
      this.#topology.observeRole(conn.endpoint, value === "on" ? "replica" : "primary");
    }
  }

  // With background timers off, check-ins carry the upkeep of every group, at most once per
  // LAZY_UPKEEP_MS.
  #lazyUpkeep(): void {
    const now = performance.now();
    if (now - this.#lastUpkeep < LAZY_UPKEEP_MS) return;
    this.#lastUpkeep = now;
    for (const group of this.#groups.values()) group.maintain(now);
  }

  #onToken(token: string): void {
    const lsn = parseLsn(token);
    if (lsn !== undefined && lsn > this.#tokenLsn) {
      this.#tokenLsn = lsn;
      this.#token = token;
    }
  }
}

// Only a text without parameters may hold several statements (the simple protocol).
function leavesState(text: string): boolean {
  return typeof text === "string" && mayLeaveState(text);
}

function leavesBlock(text: string, params: readonly unknown[] | undefined): boolean {
  return (params === undefined || params.length === 0) && typeof text === "string" &&
    mayHideBlock(text);
}

// A listener's exception, reported where the runtime reports uncaught errors.
function reportListenerError(err: unknown): void {
  const report = (globalThis as { reportError?: (err: unknown) => void }).reportError;
  if (typeof report === "function") report(err);
  else {
    queueMicrotask(() => {
      throw err;
    });
  }
}
