/**
 * Kysely's connection over the pool. Acquiring one checks out nothing: its first statement (or
 * a transaction) takes a checkout — the read group for a read, the write group for anything
 * else or a transaction — and keeps it until Kysely releases the connection. So a single query
 * holds a connection only while it runs, and `db.connection()` is one session from its first
 * statement on. Streams read through a server-side cursor.
 *
 * @module
 */

import {
  AbortedTransactionError,
  type CompiledQuery,
  type DatabaseConnection,
  type QueryResult,
} from "kysely";
import { type Handler, type Rows, SessionLostError, TransactionAbortedError } from "../../mod.ts";
import type { Router } from "../integration/router.ts";
import {
  setTransactionSql,
  type TransactionSettings,
} from "../integration/transaction_settings.ts";
import { quote } from "../quote.ts";
import { isRead } from "./reads.ts";

const AFFECTS_ROWS = new Set(["INSERT", "UPDATE", "DELETE", "MERGE"]);

/** Kysely's result of the pool's rows: a plain array, and the count of a write. */
function resultOf<R>(rows: Rows): QueryResult<R> {
  // slice() gives a plain array (postgres.js results are an Array subclass).
  const out = rows.slice() as R[];
  return AFFECTS_ROWS.has(rows.command)
    ? { rows: out, numAffectedRows: BigInt(rows.count) }
    : { rows: out };
}

/** One Kysely connection: at most one checkout, from its first statement until release. */
export class PgdbpoolConnection implements DatabaseConnection {
  readonly #router: Router;
  readonly #signal: AbortSignal | undefined;
  #db: Handler | undefined;
  /**
   * `#db` was taken by `begin()`: a checkout whose every first statement opens a transaction
   * (BEGIN pipelined with it). Outside Kysely's transactions its statements commit one by one.
   */
  #opensTransactions = false;
  /**
   * The session of `#db` was lost: the checkout refuses everything from now on. Kysely's own
   * rollback after the failure must not end that (the pool's rollback of a lost checkout is
   * the explicit way to a new session, and `db.connection()` is one session).
   */
  #lost = false;
  /** Kysely began a transaction on this connection that is not finished yet. */
  #transaction = false;
  /** Cursor names in use by streams open on this connection. */
  readonly #cursors = new Set<string>();
  /**
   * Kysely released this connection (it never hands a released one out again): anything sent
   * on it now comes from a connection kept past its scope (`db.connection()`'s callback). It is
   * refused, never run on a checkout taken anew, which no one would give back, in a session
   * other than the one the connection's statements ran in.
   */
  #released = false;

  constructor(router: Router, signal: AbortSignal | undefined) {
    this.#router = router;
    this.#signal = signal;
  }

  /** Runs one statement on this connection's checkout (taken now if it has none). */
  async executeQuery<R>(compiledQuery: CompiledQuery): Promise<QueryResult<R>> {
    this.#checkHeld();
    const db = this.#db ?? this.#take(isRead(compiledQuery.query));
    const alone = !this.#transaction && this.#opensTransactions;
    let rows: Rows;
    try {
      rows = await db.query(compiledQuery.sql, compiledQuery.parameters);
      // After a transaction on this connection: the statement opened one; it commits alone.
      if (alone) this.#router.record(await db.commit());
    } catch (err) {
      this.#noteLoss(err);
      if (alone && !this.#lost) await this.#noting(db.rollback());
      throw err;
    }
    if (!this.#transaction && !alone) this.#router.record(db.token);
    return resultOf<R>(rows);
  }

  /**
   * Streams a read's rows `chunkSize` at a time through a cursor (DECLARE / FETCH / CLOSE): in
   * the open transaction if there is one, else in a transaction of its own, committed when the
   * stream ends and rolled back when it is left early or fails. A query that is not a plain
   * read (no cursor can run it) is run whole and handed out in chunks.
   */
  async *streamQuery<R>(
    compiledQuery: CompiledQuery,
    chunkSize: number,
  ): AsyncIterableIterator<QueryResult<R>> {
    this.#checkHeld();
    if (!Number.isSafeInteger(chunkSize) || chunkSize <= 0) {
      throw new RangeError(
        `Kysely stream chunk size must be a positive integer (got ${quote(chunkSize)})`,
      );
    }
    if (!isRead(compiledQuery.query)) {
      const { rows } = await this.executeQuery<R>(compiledQuery);
      for (let i = 0; i < rows.length; i += chunkSize) yield { rows: rows.slice(i, i + chunkSize) };
      return;
    }
    const db = this.#db ?? this.#take(true);
    const own = !this.#transaction && !db.inTransaction;
    let cursor = "pgdbpool_cursor_0";
    for (let i = 1; this.#cursors.has(cursor); i++) cursor = `pgdbpool_cursor_${i}`;
    this.#cursors.add(cursor);
    let failed = false;
    let done = false;
    try {
      // A checkout that opens transactions by itself opens this one with the DECLARE.
      if (own && !this.#opensTransactions) await db.query("BEGIN");
      await db.query(
        `DECLARE ${cursor} NO SCROLL CURSOR FOR ${compiledQuery.sql}`,
        compiledQuery.parameters,
      );
      const fetch = `FETCH FORWARD ${chunkSize} FROM ${cursor}`;
      for (;;) {
        const rows = await db.query(fetch);
        if (rows.length > 0) yield { rows: rows.slice() as R[] };
        if (rows.length < chunkSize) break;
      }
      done = true;
    } catch (err) {
      failed = true;
      this.#noteLoss(err);
      throw err;
    } finally {
      this.#cursors.delete(cursor);
      if (own) {
        if (done) this.#router.record(await this.#noting(db.commit()));
        // A rollback that finds the session gone (the stream was left after its backend died)
        // is a loss like any other: noted, so that Kysely's later rollback cannot move
        // db.connection() to a new session.
        else if (!this.#lost) await this.#noting(db.rollback());
      } else if (!failed) {
        // Left early inside a transaction: the cursor goes, the transaction stays. A loss the
        // CLOSE meets is noted: Kysely's rollback must not carry the connection to a new session.
        await this.#noting(db.query(`CLOSE ${cursor}`));
      }
    }
  }

  /**
   * Starts a transaction: a checkout of the write group whose first statement sends BEGIN
   * (pipelined with it), preceded by `SET TRANSACTION` when `settings` set anything. On a
   * connection that already has a checkout (`db.connection()`), BEGIN runs on that session.
   */
  async begin(settings: TransactionSettings): Promise<void> {
    this.#checkHeld();
    const set = setTransactionSql(settings, "Kysely transaction");
    if (this.#db === undefined) {
      this.#db = this.#router.transactionHandler(this.#signal);
      this.#opensTransactions = true;
      this.#transaction = true;
      if (set !== undefined) await this.#noting(this.#db.query(set));
      return;
    }
    const db = this.#db;
    // A db.connection() that began with a read holds a session of the read group (a replica):
    // BEGIN there would run the transaction, its reads and its writes, off `group`, and the
    // connection is one session, so it cannot move. Refused before anything is sent.
    if (db.group !== this.#router.group) {
      throw new TypeError(
        `Kysely transaction on a db.connection() whose first statement was a read: its session is on group ${
          JSON.stringify(db.group)
        }, transactions run on ${
          JSON.stringify(this.#router.group)
        } (start the connection with a write, or use db.transaction())`,
      );
    }
    this.#transaction = true;
    if (this.#opensTransactions) {
      // Its next statement opens the transaction; settings go first, as its first statement.
      if (set !== undefined) await this.#noting(db.query(set));
      return;
    }
    await this.#noting(
      db.query(set === undefined ? "BEGIN" : `BEGIN ${set.slice("SET TRANSACTION ".length)}`),
    );
  }

  /**
   * Commits and records the token; a COMMIT that PostgreSQL turned into a rollback is Kysely's
   * `AbortedTransactionError` (with the pool's error as `cause`).
   */
  async commit(): Promise<void> {
    const db = this.#checkedOut("commit");
    this.#transaction = false;
    let token: string | undefined;
    try {
      token = await db.commit();
    } catch (err) {
      this.#noteLoss(err);
      if (err instanceof TransactionAbortedError) throw new AbortedTransactionError({ cause: err });
      throw err;
    }
    this.#router.record(token);
  }

  /** Rolls the transaction back; one lost with its session is gone already. */
  async rollback(): Promise<void> {
    const db = this.#checkedOut("rollback");
    this.#transaction = false;
    if (!this.#lost) await this.#noting(db.rollback());
  }

  /** Runs a savepoint statement (Kysely compiled it, with the name quoted). */
  async savepoint(compiledQuery: CompiledQuery): Promise<void> {
    const db = this.#checkedOut("savepoint");
    await this.#noting(db.query(compiledQuery.sql, compiledQuery.parameters));
  }

  /** Gives the checkout back (rolling back whatever is still open). */
  async release(): Promise<void> {
    this.#released = true;
    const db = this.#db;
    this.#db = undefined;
    this.#transaction = false;
    this.#opensTransactions = false;
    this.#lost = false;
    if (db === undefined) return;
    await db[Symbol.asyncDispose]();
  }

  #checkHeld(): void {
    if (this.#released) {
      throw new TypeError(
        `Kysely connection of group ${
          JSON.stringify(this.#router.group)
        } was used after Kysely released it (a db.connection() connection kept past its callback)`,
      );
    }
  }

  #take(read: boolean): Handler {
    const db = read
      ? this.#router.readHandler(this.#signal)
      : this.#router.writeHandler(this.#signal);
    this.#db = db;
    return db;
  }

  #noteLoss(err: unknown): void {
    if (err instanceof SessionLostError) this.#lost = true;
  }

  async #noting<T>(work: Promise<T>): Promise<T> {
    try {
      return await work;
    } catch (err) {
      this.#noteLoss(err);
      throw err;
    }
  }

  #checkedOut(what: string): Handler {
    if (this.#db === undefined) {
      throw new TypeError(`Kysely ${what} on a connection without a transaction`);
    }
    return this.#db;
  }
}
