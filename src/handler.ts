/**
 * A checkout: one exclusive server connection of a group for the length of a `using` block.
 *
 * @module
 */

import { defaultPool } from "./default_pool.ts";
import type { EndpointInfo } from "./endpoint.ts";
import { groupLookup } from "./group.ts";
import type { Pool } from "./pool.ts";
import { resolveHandlerOptions } from "./handler_options.ts";
import { Lease } from "./lease.ts";
import type { QueryOptions, Row, Rows, Sql, ValueRows } from "./rows.ts";
import { wantsArrays } from "./query_options.ts";

/** Key of the method `pool.acquire()` awaits (not part of the public API). */
export const leaseReady: unique symbol = Symbol("pgdbpool.leaseReady");

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
  /**
   * Aborting cancels a checkout that is still waiting: for a connection, for a server, or for
   * the ping that proves a connection idle past `validate_after_ms` (which runs on; the
   * connection is checked in once it settles).
   */
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
  readonly #lease: Lease;
  /**
   * Under leak detection only (`undefined` otherwise; `null` until first used): the tagged
   * template, which holds this handler (see `sql`).
   */
  #heldSql: Sql | null | undefined;

  /**
   * Checks out a connection of `group` from `pool`, or from the module-wide pool of
   * `Connection.init()` when `pool` is omitted. Options are checked here (a `TypeError` or
   * `RangeError` names the bad one).
   */
  constructor(group: string, options?: HandlerOptions, pool?: Pool) {
    // Typed as Pool for callers; only its group lookup is used, which keeps this a type import.
    const g = (pool ?? defaultPool())[groupLookup](group);
    this.#lease = new Lease(g, resolveHandlerOptions(group, options));
    const leakMs = g.settings.leakDetectionMs;
    if (leakMs !== undefined) {
      this.#lease.watchLeaks(this, leakMs);
      this.#heldSql = null;
    }
  }

  /** Name of the group this handler belongs to. */
  get group(): string {
    return this.#lease.group.name;
  }

  /** Host, port and index of the server in use; `undefined` while waiting or after release. */
  get endpoint(): EndpointInfo | undefined {
    return this.#lease.endpoint;
  }

  /** Whether a transaction is open on this handler's session. */
  get inTransaction(): boolean {
    return this.#lease.inTransaction;
  }

  /**
   * The postgres.js tagged template bound to this handler's session, for its helpers
   * (`sql(obj)`, arrays, `sql.unsafe`). In a transaction group the transaction opens here. It
   * refuses use after release and after the session is lost. Needs a checked-out handler: use
   * `await pool.acquire()` when the group may be busy.
   */
  get sql(): Sql {
    if (this.#heldSql === undefined) return this.#lease.sql;
    // Under leak detection the caller may keep only the tagged template: it holds this handler.
    return this.#heldSql = this.#lease.sqlHolding(this, this.#heldSql);
  }

  /**
   * Runs one statement with `$1`-style parameters and resolves to its rows.
   * In a transaction group the first statement opens the transaction (BEGIN is pipelined with
   * it, so it costs no extra round trip). If the session is lost after the checkout's first
   * statement, this and every later statement reject with `SessionLostError`
   * (`TransactionLostError` inside a transaction); its `outcome` says whether the statement may
   * have run.
   */
  query<T extends Row = Row>(
    text: string,
    params?: readonly unknown[],
    options?: QueryOptions & { rowMode?: "object" },
  ): Promise<Rows<T>>;
  /** Runs one statement and resolves to its rows as arrays of values. */
  query(
    text: string,
    params: readonly unknown[] | undefined,
    options: QueryOptions & { rowMode: "array" },
  ): Promise<ValueRows>;
  /** Runs one statement; its rows come back as `options.rowMode` says. */
  query(
    text: string,
    params?: readonly unknown[],
    options?: QueryOptions,
  ): Promise<Rows | ValueRows>;
  query(
    text: string,
    params?: readonly unknown[],
    options?: QueryOptions,
  ): Promise<Rows | ValueRows> {
    let arrays: boolean;
    try {
      arrays = wantsArrays(options);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.#lease.query(text, params, arrays);
  }

  /**
   * Commits the open transaction and resolves to its read-your-writes token (the primary's WAL
   * position read after the COMMIT acknowledgement, in the same round trip), or `undefined`
   * when nothing was open or the server is a replica. Rejects with `TransactionLostError` when
   * the session died first (its `outcome` is `"unknown"` if COMMIT may have run), and with
   * `TransactionAbortedError` when PostgreSQL rolled back instead.
   */
  commit(): Promise<string | undefined> {
    return this.#lease.commit();
  }

  /**
   * The read-your-writes token of this handler's last write (a commit, or an autocommit write
   * on the primary), if any.
   */
  get token(): string | undefined {
    return this.#lease.token;
  }

  /**
   * Rolls back the open transaction (a no-op when none is open). After a lost session it is the
   * acknowledgement that lets the handler go on, on a new session.
   */
  rollback(): Promise<void> {
    return this.#lease.rollback();
  }

  /** Returns the connection to its group (rolling back open work first). Idempotent. */
  release(): void {
    this.#lease.release();
  }

  /** Same as `release()`, for `using`. */
  [Symbol.dispose](): void {
    this.#lease.release();
  }

  /** Releases and waits until a pending rollback has finished, for `await using`. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.#lease.release();
  }

  /**
   * This handler once its connection is held and proven alive (`pool.acquire()` uses it): at
   * once when it is already, else a promise that releases the handler before it rejects.
   * @ignore
   */
  [leaseReady](): this | Promise<this> {
    return this.#lease.readyWith(this, () => this.release());
  }
}
