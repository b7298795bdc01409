/**
 * A checkout: one exclusive server connection of a group for the length of a `using` block.
 *
 * @module
 */

import type postgres from "postgres";
import type { Pool } from "./pool.ts";
import { defaultPool } from "./default_pool.ts";
import type { EndpointInfo } from "./endpoint.ts";
import { TransactionAbortedError, TransactionLostError } from "./errors.ts";
import { type Group, groupLookup, type GroupSource } from "./group.ts";
import type { Row, Rows, Sql } from "./rows.ts";
import type { ServerConnection } from "./server_connection.ts";
import { parseLsn } from "./lsn.ts";
import { isConnectionError, isNotExecuted, isReadOnlyError } from "./sqlstate.ts";

/**
 * Options of a checkout.
 *
 * @example A bounded, cancellable checkout
 * ```ts
 * import { Pool } from "@x/pgdbpool";
 *
 * async function handle(pool: Pool, request: Request) {
 *   await using db = await pool.acquire("read", { signal: request.signal, timeout_ms: 500 });
 *   return await db.query("SELECT now() AS now");
 * }
 * ```
 */
export interface HandlerOptions {
  /** Aborting cancels a checkout that is still waiting. */
  signal?: AbortSignal;
  /** Overrides the group's `acquire_timeout_ms` for this checkout. */
  timeout_ms?: number;
  /** Overrides the group's `autocommit` for this checkout. */
  autocommit?: boolean;
  /**
   * Read-your-writes: a token from `commit()` (or `pool.token`). The checkout goes only to a
   * replica that has replayed it, waiting up to the group's `read_your_writes_timeout_ms`, then
   * to the primary.
   */
  after?: string;
}

const FRESH = 0; // checked out, not yet validated, no statement sent
const VALIDATED = 1; // validated by acquire(), no statement sent
const USED = 2;

const noop = () => {};

// NULL on a replica instead of an error: the role may be unknown (PostgreSQL < 14).
const LSN_SQL =
  "SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_insert_lsn()::text END AS lsn";

let prepare: (handler: Handler) => Promise<void>;
let oneShot: (group: Group) => Handler;

/**
 * Gives `pool.acquire()` a validated connection before it resolves. Internal: not re-exported.
 */
export function prepareHandler(handler: Handler): Promise<void> {
  return prepare(handler);
}

/**
 * A handler for one autocommit statement (`pool.query`): when the group is busy it pipelines
 * onto a connection other one-shots hold instead of waiting. Internal: not re-exported.
 */
export function oneShotHandler(group: Group): Handler {
  return oneShot(group);
}

/**
 * An exclusive connection of a group, held until `release()` or the end of a `using` block.
 * Checkout is synchronous: on a free connection nothing is awaited; when the group is busy (threaded
 * mode) the handler waits in FIFO order before its first statement.
 *
 * Disposing a handler with uncommitted work rolls it back (the Python original committed it).
 *
 * @example Writing in a transaction group
 * ```ts
 * import { Connection, Handler } from "@x/pgdbpool";
 *
 * Connection.init({
 *   db: { host: "127.0.0.1", name: "app", user: "app", pass: "secret" },
 *   groups: { write: { connection_count: 4, autocommit: false } },
 * });
 * {
 *   using db = new Handler("write");
 *   await db.query("INSERT INTO t (v) VALUES ($1)", ["x"]);
 *   await db.commit();
 * }
 * await Connection.close();
 * ```
 */
export class Handler implements Disposable, AsyncDisposable {
  readonly #group: Group;
  readonly #autocommit: boolean;
  #conn: ServerConnection | null = null;
  #pending: Promise<ServerConnection> | null = null;
  #cancel: ((reason: unknown) => void) | null = null;
  #phase = FRESH;
  #released = false;
  #lost: TransactionLostError | null = null;
  #token: string | undefined = undefined;

  static {
    prepare = (handler) => handler.#prepare();
    // The public signature hides the two internal parameters.
    const Internal = Handler as unknown as new (
      group: string,
      options: undefined,
      pool: undefined,
      resolved: Group,
      conn?: ServerConnection,
    ) => Handler;
    oneShot = (group) => {
      const own = group.tryCheckout();
      if (own !== null) {
        group.share(own);
        return new Internal(group.name, undefined, undefined, group, own);
      }
      const joined = group.tryShare();
      const db = new Internal(group.name, undefined, undefined, group, joined ?? undefined);
      // Joining a connection in use: it is live, and its first statement was someone else's.
      if (joined !== null) db.#phase = USED;
      return db;
    };
  }

  /**
   * Checks out a connection of `group` from `pool`, or from the module-wide pool of
   * `Connection.init()` when `pool` is omitted.
   */
  constructor(group: string, options?: HandlerOptions, pool?: Pool);
  constructor(
    group: string,
    options?: HandlerOptions,
    pool?: Pool,
    resolved?: Group,
    given?: ServerConnection,
  ) {
    const g = resolved ?? ((pool as GroupSource | undefined) ?? defaultPool())[groupLookup](group);
    this.#group = g;
    this.#autocommit = options?.autocommit ?? g.settings.autocommit;
    const conn = given ??
      (resolved === undefined && options?.after === undefined ? g.tryCheckout() : null);
    if (conn !== null) this.#conn = conn;
    else this.#wait(options);
  }

  #wait(options: HandlerOptions | undefined): void {
    let after: bigint | undefined;
    if (options?.after !== undefined) {
      after = parseLsn(options.after);
      if (after === undefined) {
        throw new TypeError(
          `Handler option after must be a token from commit() (got ${
            JSON.stringify(options.after)
          })`,
        );
      }
    }
    const pending = this.#group.waitCheckout(
      options?.signal,
      options?.timeout_ms,
      after,
      (cancel) => this.#cancel = cancel,
    ).then((conn) => {
      this.#pending = null;
      if (this.#released) {
        this.#group.checkin(conn);
        throw this.#afterRelease();
      }
      this.#conn = conn;
      return conn;
    });
    pending.catch(noop);
    this.#pending = pending;
  }

  /** Name of the group this handler belongs to. */
  get group(): string {
    return this.#group.name;
  }

  /** Host, port and index of the server in use; `undefined` while waiting or after release. */
  get endpoint(): EndpointInfo | undefined {
    return this.#conn?.endpoint.info;
  }

  /** Whether a transaction is open on this handler's connection. */
  get inTransaction(): boolean {
    return this.#conn?.txOpen ?? false;
  }

  /**
   * The postgres.js tagged template bound to this handler's connection, for its helpers
   * (`sql(obj)`, arrays, cursors). In a transaction group the transaction opens here.
   * Needs a checked-out handler: use `await pool.acquire()` when the group may be busy.
   */
  get sql(): Sql {
    let conn = this.#conn;
    if (conn === null) {
      if (this.#released) throw this.#afterRelease();
      throw new TypeError(
        `Handler of group ${
          JSON.stringify(this.#group.name)
        } is still waiting for a connection: use await pool.acquire() before using sql`,
      );
    }
    this.#phase = USED;
    if (this.#lost) throw this.#lost;
    if (conn.txOpen) {
      if (conn.txLost) throw this.#lose(conn, undefined, "its connection closed");
    } else {
      if (conn.broken) conn = this.#swap(conn);
      if (!this.#autocommit) conn.begin();
    }
    conn.lastUsed = performance.now();
    return conn.sql;
  }

  /**
   * Runs one statement with `$1`-style parameters and resolves to its rows.
   * In a transaction group the first statement opens the transaction (BEGIN is pipelined with
   * it, so it costs no extra round trip).
   */
  query<T extends Row = Row>(
    text: string,
    params?: readonly unknown[],
  ): Promise<Rows<T>> {
    return this.#run(text, params) as Promise<Rows<T>>;
  }

  async #run(text: string, params: readonly unknown[] | undefined): Promise<Rows> {
    let conn = this.#conn ?? await this.#connection();
    // A connection that sat idle may have been killed: one retry on a fresh session is safe
    // for the first statement of a checkout (see isNotExecuted for the others).
    let mayRetry = false;
    if (this.#phase !== USED) {
      if (this.#phase === FRESH && this.#stale(conn)) conn = await this.#validate(conn);
      this.#phase = USED;
      mayRetry = conn.lastUsed > 0;
    }
    for (let attempt = 0;; attempt++) {
      if (this.#lost) throw this.#lost;
      if (conn.txOpen) {
        if (conn.txLost) throw this.#lose(conn, undefined, "its connection closed");
      } else if (conn.broken) {
        conn = await this.#replace(conn);
      }
      const begin = !this.#autocommit && !conn.txOpen ? conn.begin() : undefined;
      try {
        const rows: Rows = await conn.sql.unsafe(
          text,
          params as postgres.ParameterOrJSON<never>[] | undefined,
          conn.endpoint.queryOptions,
        );
        if (begin !== undefined) await begin;
        conn.lastUsed = performance.now();
        return rows;
      } catch (err) {
        if (!isConnectionError(err)) {
          if (isReadOnlyError(err)) this.#group.reportFailure(conn, err);
          throw err;
        }
        conn.broken = true;
        this.#group.reportFailure(conn, err);
        if (conn.txOpen && begin === undefined) {
          throw this.#lose(conn, err, "its connection closed during a statement");
        }
        // A transaction begun in this same pipeline died with its session: nothing committed.
        conn.txOpen = false;
        if (attempt > 0 || !(begin !== undefined || mayRetry || isNotExecuted(err))) throw err;
        conn = await this.#replace(conn);
      }
    }
  }

  /**
   * Commits the open transaction and resolves to its read-your-writes token (the primary's WAL
   * position after the commit, fetched in the same round trip), or `undefined` when nothing was
   * open or the server is a replica. Rejects with `TransactionLostError` when the session died
   * before COMMIT was acknowledged, and with `TransactionAbortedError` when PostgreSQL rolled
   * back instead.
   */
  async commit(): Promise<string | undefined> {
    const conn = this.#conn ?? await this.#connection();
    this.#phase = USED;
    if (this.#lost) throw this.#lost;
    if (!conn.txOpen) return undefined;
    if (conn.txLost) throw this.#lose(conn, undefined, "its connection closed before COMMIT");
    let result: Rows;
    let lsn: Promise<Rows> | undefined;
    try {
      const commit = conn.sql.unsafe("COMMIT");
      if (conn.endpoint.role !== "replica") {
        // Pipelined behind COMMIT: no extra round trip.
        lsn = conn.sql.unsafe(LSN_SQL);
        lsn.catch(noop);
      }
      result = await commit;
    } catch (err) {
      if (isConnectionError(err)) {
        this.#group.reportFailure(conn, err);
        throw this.#lose(
          conn,
          err,
          "the connection closed before COMMIT was acknowledged; its outcome is unknown",
        );
      }
      conn.txOpen = false;
      throw err;
    }
    conn.txOpen = false;
    conn.lastUsed = performance.now();
    // COMMIT on a silently reconnected session only draws a 25P01 notice: treat it as lost.
    if (conn.sawNoTransaction || conn.epoch !== conn.txEpoch) {
      throw this.#lose(conn, undefined, "COMMIT reached a new session, not the transaction's");
    }
    if (result.command === "ROLLBACK") throw new TransactionAbortedError(this.#group.name);
    const token = lsn === undefined
      ? undefined
      : await lsn.then((r) => r[0]?.lsn ?? undefined, noop);
    if (typeof token === "string") {
      this.#token = token;
      this.#group.context.onToken(token);
      return token;
    }
    return undefined;
  }

  /** The read-your-writes token of this handler's last commit, if any. */
  get token(): string | undefined {
    return this.#token;
  }

  /** Rolls back the open transaction (a no-op when none is open) and clears a lost state. */
  async rollback(): Promise<void> {
    const conn = this.#conn ?? await this.#connection();
    this.#phase = USED;
    this.#lost = null;
    if (conn.txOpen) await conn.rollback();
  }

  /** Returns the connection to its group (rolling back open work first). Idempotent. */
  release(): void {
    this.#release();
  }

  /** Same as `release()`, for `using`. */
  [Symbol.dispose](): void {
    this.#release();
  }

  /** Releases and waits until a pending rollback has finished, for `await using`. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.#release();
  }

  #release(): Promise<void> | undefined {
    if (this.#released) return;
    this.#released = true;
    const conn = this.#conn;
    if (conn === null) {
      this.#cancel?.(this.#afterRelease());
      return;
    }
    this.#conn = null;
    return this.#group.checkin(conn);
  }

  async #prepare(): Promise<void> {
    const conn = this.#conn ?? await this.#connection();
    if (this.#stale(conn)) await this.#validate(conn);
    this.#phase = VALIDATED;
  }

  /** Whether a connection must be checked before use: broken, or idle past `validate_after_ms`. */
  #stale(conn: ServerConnection): boolean {
    return conn.broken ||
      (conn.lastUsed !== 0 &&
        performance.now() - conn.lastUsed > this.#group.context.validateAfterMs);
  }

  /** Pings a connection found stale by `#stale()`; swaps it when broken or dead. */
  async #validate(conn: ServerConnection): Promise<ServerConnection> {
    if (conn.broken) return this.#replace(conn);
    try {
      await conn.ping(conn.endpoint.connectTimeoutS * 1000);
      conn.lastUsed = performance.now();
      return conn;
    } catch {
      conn.broken = true;
      return this.#replace(conn);
    }
  }

  /**
   * Moves off a broken connection. An exclusive checkout swaps it under the same permit; a hold
   * on a connection shared by one-shot statements is given up, and a connection of its own is
   * waited for, so that the shared connection's single permit is released exactly once.
   */
  async #replace(conn: ServerConnection): Promise<ServerConnection> {
    if (conn.users === 0) return this.#swap(conn);
    this.#conn = null;
    this.#group.checkin(conn);
    const next = await this.#group.waitCheckout();
    if (this.#released) {
      this.#group.checkin(next);
      throw this.#afterRelease();
    }
    this.#conn = next;
    return next;
  }

  #swap(conn: ServerConnection): ServerConnection {
    const next = this.#group.replace(conn);
    this.#conn = next;
    return next;
  }

  #connection(): Promise<ServerConnection> {
    if (this.#released) return Promise.reject(this.#afterRelease());
    return this.#pending!;
  }

  #lose(conn: ServerConnection, cause: unknown, detail: string): TransactionLostError {
    conn.txOpen = false;
    conn.broken = true;
    this.#lost = new TransactionLostError(
      this.#group.name,
      detail,
      cause === undefined ? undefined : { cause },
    );
    return this.#lost;
  }

  #afterRelease(): TypeError {
    return new TypeError(
      `Handler of group ${JSON.stringify(this.#group.name)} was used after release`,
    );
  }
}
