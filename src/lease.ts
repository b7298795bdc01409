/**
 * A checkout: the one object that holds a group's permit and connection for a caller, and the
 * only one that may swap that connection. It owns the checkout's session rules: a dead
 * connection may be replaced only while nothing of the checkout has been written on it; after
 * that a lost session stays lost (`SessionLostError`, `TransactionLostError`), and no statement
 * is ever re-sent unless the driver proves it never ran.
 *
 * @module
 */

import type { StatementOptions } from "./driver/postgres.ts";
import type { EndpointInfo } from "./endpoint.ts";
import { untilCallerDeadline } from "./deadline.ts";
import {
  PoolClosedError,
  SessionLostError,
  type StatementOutcome,
  TransactionAbortedError,
  TransactionLostError,
} from "./errors.ts";
import type { Group } from "./group.ts";
import { poolEvent } from "./events.ts";
import type { PoolHooks } from "./hooks.ts";
import { keepReachable, LeakWatch } from "./leak.ts";
import type { ResolvedHandlerOptions } from "./handler_options.ts";
import type { Rows, Sql } from "./rows.ts";
import type { ServerConnection } from "./server_connection.ts";
import {
  CLEAN,
  type Residue,
  residueOf,
  residueOfFailure,
  residueOfTemplate,
  residueOfText,
  UNRESETTABLE,
} from "./session_state.ts";
import { isReadOnlyError } from "./sqlstate.ts";
import { checkStatement, checkValues } from "./statement_input.ts";
import { readToken, sendStatement, sendTokenQuery } from "./token.ts";
import { asksToCommit, endsBlock, mayHideBlock, mayOpenBlock } from "./transaction_block.ts";
import { type CursorBook, type Done, followStatement } from "./sql_dispatch.ts";

const noop = () => {};
/** The pool's own statement sent through the simple protocol: nothing named, parsed on the spot. */
const UNPREPARED: StatementOptions = { prepare: false, simple: true };

/** How many times the first statement of a checkout may move to a fresh connection. */
export const MAX_ATTEMPTS = 3;

const HELD = 0;
const WAITING = 1;
const RELEASED = 2;

/** `ROLLBACK [WORK | TRANSACTION] TO ...`, or anything `... AND CHAIN`. */
const STAYS_IN_TRANSACTION =
  /^\s*(?:rollback\s+(?:(?:work|transaction)\s+)?to\b|(?:commit|end|rollback|abort)\b[^;]*\band\s+chain\s*;?\s*$)/i;

/** A lost session, as `Lease.#lost` keeps it: how to tell the statements refused after it. */
interface Loss {
  readonly Lost: typeof SessionLostError;
  readonly detail: string;
  readonly options: ErrorOptions | undefined;
}

/** Tells the observer a statement is sent; returns what to call when it settles. */
export function observe(
  hooks: PoolHooks,
  group: string,
  text: string,
  conn: ServerConnection,
): Done {
  const endpoint = conn.endpoint;
  return hooks.statement({ group, text, endpoint: endpoint.info, database: endpoint.database });
}

/** A tagged template's text as the server gets it: `$1`, `$2`, ... for its values. */
function templateText(strings: readonly string[]): string {
  let text = strings[0] ?? "";
  for (let i = 1; i < strings.length; i++) text += `$${i}${strings[i]}`;
  return text;
}

/** One checkout of a group. `Handler` is its public façade. */
export class Lease {
  readonly group: Group;
  readonly autocommit: boolean;
  #conn: ServerConnection | null;
  #pending: Promise<ServerConnection> | null = null;
  #cancel: ((reason: unknown) => void) | null = null;
  #state: number;
  /** A statement of this checkout has been written on the current connection. */
  #used = false;
  /** `acquire()` validated the connection: its first statement skips the staleness check. */
  #validated = false;
  /** A transaction is open on the current connection. */
  #tx = false;
  /**
   * BEGINs the pool has sent: the answer of a statement that ended a block (COMMIT, ROLLBACK,
   * ...) no longer says whether one is open once a BEGIN went out behind it (see `#send`).
   */
  #txGen = 0;
  /**
   * Statements ending a block (commit()'s COMMIT, the caller's own) sent and not answered yet:
   * the block no longer counts as open for what is sent behind them, but a statement lost
   * meanwhile still lost the transaction (`#lose`).
   */
  #ending = 0;
  /**
   * A statement that may have opened a transaction block (see `transaction_block.ts`) went out
   * where command tags cannot follow it: `db.sql`, a text of several statements. Commit,
   * rollback and check-in then look at the session (`#leftOpen`).
   */
  #untracked = false;
  /** Session state this checkout's statements left (`session_state.ts`): cleaned at check-in. */
  #residue: Residue = CLEAN;
  /**
   * Set once the session is lost: what every later statement is refused with. Its description,
   * not an error object: an error keeps the frames it was made under (V8 keeps their receivers
   * until its stack is formatted), the handler among them when the loss was found as the caller
   * called; the leak watch keeps the lease reachable, so a stored error kept a handler dropped
   * after a loss from ever being collected, and its permit from ever coming back.
   */
  #lost: Loss | null = null;
  #token: string | undefined;
  #sql: Sql | undefined;
  /** A statement was made through `sql` (see `release`). */
  #sqlMade = false;
  #validating: Promise<ServerConnection> | null = null;
  /** Set under `leak_detection_ms`. */
  #leak: LeakWatch | undefined;
  /**
   * The handler was collected while a statement of it was still awaited (the one-liner
   * `await pool.handler(g).query(...)` drops it at once): reclaimed once nothing is in flight.
   */
  #orphaned = false;
  /**
   * Statements of this checkout not settled yet, counted from the call (also while they wait
   * for the connection): release waits for them before check-in, a reclaim until they settle.
   */
  #inflight = 0;
  /**
   * Of `#inflight`, the pool's own proofs of the connection (`#prove`, `#proving`): a release
   * does not wait for them (a caller whose signal ended its wait must not wait for the ping it
   * gave up on), though the check-in still does.
   */
  #proofs = 0;
  /**
   * Statements called and not yet handed to the driver (waiting for the connection, for its
   * proof, or for the move off a dead one), each settled once it is (or failed unsent): a
   * `commit()` or `rollback()` called after them waits for them to go out first. It found no
   * transaction open yet (the pipelined BEGIN still held back) and resolved as a success; the
   * statement then ran in a transaction the check-in rolled back.
   */
  #unsent: Set<Promise<void>> | undefined;
  /** The cursors of `db.sql` being read through their iterators: release closes them. */
  #cursors: CursorBook | undefined;
  /** `#leave()` as settle callbacks, made once per lease on its first statement. */
  #leaveWith: ((rows: Rows) => Rows) | undefined;
  #leaveThrowing: ((err: unknown) => never) | undefined;
  #drained: (() => void) | undefined;
  /**
   * Read-your-writes: the server was chosen because it has replayed the token, so a
   * replacement connection goes to the same server, never to one picked by routing. Not in a
   * primary group: any primary it routes to has the write, and pinning would keep a checkout
   * taken before a promotion on the superseded server.
   */
  readonly #pinned: boolean;
  /** The checkout's signal: it also ends `pool.acquire()`'s wait for the connection's proof. */
  readonly #signal: AbortSignal | undefined;
  /** The checkout's `timeout_ms`, if given: it also bounds the wait for the connection's proof. */
  readonly #timeoutMs: number | undefined;

  constructor(group: Group, options: ResolvedHandlerOptions) {
    this.group = group;
    this.#signal = options.signal;
    this.#timeoutMs = options.timeoutMs;
    this.autocommit = options.autocommit ?? group.settings.autocommit;
    this.#pinned = options.after !== undefined && group.settings.role !== "primary";
    const conn = options.after === undefined ? group.tryCheckout() : null;
    this.#conn = conn;
    if (conn !== null) {
      this.#state = HELD;
      return;
    }
    this.#state = WAITING;
    const pending = group.waitCheckout(
      options.signal,
      options.timeoutMs,
      options.after,
      (cancel) => this.#cancel = cancel,
    ).then((conn) => {
      this.#pending = null;
      if (this.#state === RELEASED) {
        group.checkin(conn, false);
        throw this.#afterRelease();
      }
      this.#state = HELD;
      this.#conn = conn;
      this.#leak?.start();
      return conn;
    });
    pending.catch(noop);
    this.#pending = pending;
  }

  /** The server in use; `undefined` while waiting or after release. */
  get endpoint(): EndpointInfo | undefined {
    return this.#conn?.endpoint.info;
  }

  /** Whether a transaction is open (also one opened through `db.sql` or a text of several). */
  get inTransaction(): boolean {
    return this.#tx || (this.#conn !== null && this.#leftOpen(this.#conn));
  }

  /** The read-your-writes token of this checkout's last write, if any. */
  get token(): string | undefined {
    return this.#token;
  }

  /**
   * `value` once a connection is held and proven alive (for `pool.acquire()`, which passes the
   * handler): at once when a connection used within `validate_after_ms` is held already, else a
   * promise that runs `undo` before it rejects. No async frames: a contended checkout reaches
   * its waiter in as few microtask hops as the check-in allows.
   */
  readyWith<T>(value: T, undo: () => void): T | Promise<T> {
    const fail = (err: unknown): never => {
      undo();
      throw err;
    };
    // The caller waits from here: for the connection (its own deadline, from the checkout),
    // then for its proof, which gets what is left of timeout_ms.
    const ready = (held: ServerConnection, from?: number): T | Promise<T> => {
      const proof = this.#readyOn(held);
      if (proof === undefined) return value;
      return this.#untilProven(proof, from ?? performance.now()).then(() => value, fail);
    };
    const conn = this.#conn;
    if (conn !== null) return ready(conn);
    const from = performance.now();
    return this.#connection().then((held) => ready(held, from), fail);
  }

  /**
   * `proof` (the ping, and the move off a dead connection, that `pool.acquire()` or a
   * checkout's first statement waits for), or sooner the signal's reason or, once the caller
   * has waited the checkout's timeout since `from`, `AcquireTimeoutError`: a ping on a host
   * gone silent takes `connect_timeout`, then the move waits for routing, and both used to be
   * waited out whatever the caller asked. The proof runs on under its own count of statements
   * in flight (`#prove`, `#proving`), so a release that follows the rejection checks the
   * connection in once it has settled, never while the ping is out.
   */
  #untilProven<T>(proof: Promise<T>, from: number): Promise<T> {
    const limitMs = this.#timeoutMs ?? this.group.settings.acquireTimeoutMs;
    const signal = this.#signal;
    // Aborted before the proof began: a checkout that waited for nothing ignores its signal (a
    // free connection is taken synchronously), and one whose connection needs a proof must not
    // fail where one that needs none would go on.
    return untilCallerDeadline(
      proof,
      from + limitMs,
      () => this.group.timedOut(limitMs),
      signal?.aborted ? undefined : signal,
    );
  }

  #readyOn(conn: ServerConnection): Promise<void> | undefined {
    if (this.#used) return undefined;
    if (!this.group.ended && !this.#stale(conn)) {
      this.#validated = true;
      return undefined;
    }
    return this.#prove(conn);
  }

  async #prove(conn: ServerConnection): Promise<void> {
    this.#inflight++;
    this.#proofs++;
    try {
      await this.#validate(conn);
      this.#validated = true;
    } finally {
      this.#proofs--;
      this.#leave();
    }
  }

  /**
   * `#validate` for the first statements, counted in flight by itself: a statement that stops
   * waiting for it (its signal aborted) must not let a release check the connection in while
   * its ping is out, or let the move that may follow swap a connection already given back.
   */
  #proving(conn: ServerConnection): Promise<ServerConnection> {
    this.#inflight++;
    this.#proofs++;
    return this.#validate(conn).finally(() => {
      this.#validating = null;
      this.#proofs--;
      this.#leave();
    });
  }

  /** A connection to check before the checkout's first statement: dead, or idle too long. */
  #stale(conn: ServerConnection): boolean {
    return conn.dead ||
      (conn.lastUsed !== 0 &&
        performance.now() - conn.lastUsed > this.group.context.validateAfterMs);
  }

  /**
   * Runs one statement and resolves to its rows (arrays of values with `arrays`). With a held
   * connection that needs no check first (the common case) the caller's promise is the
   * statement's own `then` chain: no async frames, which cost two microtask hops each.
   */
  query(
    text: string,
    params: readonly unknown[] | undefined,
    arrays = false,
  ): Promise<Rows> {
    try {
      checkStatement(text, params);
    } catch (err) {
      return Promise.reject(err);
    }
    const conn = this.#conn;
    if (
      conn === null || (!this.#used && !this.#validated && this.#stale(conn)) ||
      (this.#unsent !== undefined && this.#unsent.size > 0)
    ) {
      return this.#queryChecked(text, params, arrays);
    }
    this.#inflight++;
    return this.#send(conn, text, params, arrays, 1).then(
      this.#leaveWith ??= (rows) => {
        this.#leave();
        return rows;
      },
      this.#leaveThrowing ??= (err) => {
        this.#leave();
        throw err;
      },
    );
  }

  // The first statement on a connection still to come, or idle too long: wait for it, prove it.
  // Any statement called while earlier ones are held back (`#unsent`) goes out after them, in
  // call order: the first statement's move off a dead connection swaps the lease's connection
  // before the fresh one is ready, and a statement called meanwhile, seeing it unused, went out
  // first (the caller's COMMIT before the INSERT it was to commit, behind a BEGIN of its own).
  async #queryChecked(
    text: string,
    params: readonly unknown[] | undefined,
    arrays: boolean,
  ): Promise<Rows> {
    this.#inflight++;
    const from = performance.now();
    const ahead = this.#ahead();
    const handed = this.#holdBack();
    try {
      if (ahead !== undefined) await ahead;
      let conn = this.#conn ?? await this.#connection();
      if (!this.#used && !this.#validated && this.#stale(conn)) {
        // Concurrent first statements share one validation: one swap at most. The checkout's
        // signal and timeout end the wait for it, as they end the wait for the connection (the
        // statement is not sent); the validation itself runs on, counted in flight on its own.
        conn = await this.#untilProven(this.#validating ??= this.#proving(conn), from);
      }
      const rows = this.#send(conn, text, params, arrays, 1);
      handed();
      return await rows;
    } finally {
      handed();
      this.#leave();
    }
  }

  #send(
    conn: ServerConnection,
    text: string,
    params: readonly unknown[] | undefined,
    arrays: boolean,
    attempt: number,
  ): Promise<Rows> {
    // Released while this statement waited: it must not go out on a returned connection.
    if (this.#state === RELEASED) return Promise.reject(this.#afterRelease());
    // Unused and dead with nothing routable: moving waits for routing (see #move).
    if (!this.#used && conn.dead && !this.#pinned && !this.group.routable) {
      const handed = this.#holdBack();
      return this.#move(conn).then((next) => {
        try {
          return this.#send(next, text, params, arrays, attempt);
        } finally {
          handed();
        }
      }, (err) => {
        handed();
        throw err;
      });
    }
    try {
      conn = this.#usable(conn);
    } catch (err) {
      return Promise.reject(err);
    }
    const first = !this.#used;
    this.#used = true;
    const begin = !this.autocommit && !this.#tx ? this.#begin(conn) : undefined;
    // A statement that ends the block (the caller's COMMIT, ROLLBACK, ...) ends it for whatever
    // is sent behind it before its answer, as commit() does: in a transaction group such a
    // statement gets a BEGIN of its own (it ran after the COMMIT outside any transaction,
    // committed at once). Refused or unanswered, the block may still be open: marked so again.
    const gen = this.#txGen;
    let ending = this.#tx && endsBlock(text);
    if (ending) {
      this.#tx = false;
      this.#ending++;
    }
    const context = this.group.context;
    context.watch?.(conn.endpoint);
    const done = context.hooks === undefined
      ? undefined
      : observe(context.hooks, this.group.name, text, conn);
    const { sent, lsn } = sendStatement(conn, text, params, arrays, this.autocommit);
    const failed = (err: unknown): Promise<Rows> => {
      if (ending) {
        ending = false;
        this.#ending--;
        if (gen === this.#txGen) this.#tx = true;
      }
      return this.#failed(conn, err, text, params, arrays, attempt, first, begin, done);
    };
    return sent.then((rows) => {
      if (ending) {
        ending = false;
        this.#ending--;
      }
      if (begin === undefined && lsn === undefined) {
        return this.#ran(conn, rows, text, done, gen);
      }
      return this.#settle(conn, rows, text, begin, lsn, done, gen).then(undefined, failed);
    }, failed);
  }

  #ran(
    conn: ServerConnection,
    rows: Rows,
    text: string,
    done: Done | undefined,
    gen: number,
  ): Rows {
    conn.lastUsed = performance.now();
    try {
      this.#trackTransaction(rows.command, text, gen);
    } catch (err) {
      // A COMMIT answered ROLLBACK: it fails for the observer as it fails for the caller.
      done?.(err);
      throw err;
    }
    done?.(undefined);
    if (this.#residue !== UNRESETTABLE) this.#leftState(residueOf(rows.command, text));
    return rows;
  }

  // A statement that ran, behind its pipelined BEGIN or ahead of its WAL-position query.
  async #settle(
    conn: ServerConnection,
    rows: Rows,
    text: string,
    begin: Promise<unknown> | undefined,
    lsn: Promise<Rows> | undefined,
    done: Done | undefined,
    gen: number,
  ): Promise<Rows> {
    if (begin !== undefined) await begin;
    this.#ran(conn, rows, text, done, gen);
    if (lsn !== undefined) await this.#record(lsn, conn);
    return rows;
  }

  async #failed(
    conn: ServerConnection,
    failure: unknown,
    text: string,
    params: readonly unknown[] | undefined,
    arrays: boolean,
    attempt: number,
    first: boolean,
    begin: Promise<unknown> | undefined,
    done: Done | undefined,
  ): Promise<Rows> {
    // A statement that ran and was answered: only what it answered is wrong (#trackTransaction).
    if (failure instanceof TransactionAbortedError) throw failure;
    const err = conn.session.explain(failure);
    done?.(err);
    const outcome = conn.outcomeOf(err, text);
    if (outcome === "failed") {
      if (isReadOnlyError(err)) this.group.reportFailure(conn, err);
      // A text of several statements may have opened a block before the one that failed.
      if (mayHideBlock(text)) this.#untracked = true;
      // Or set something; and a session advisory lock outlives the statement that failed.
      if (this.#residue !== UNRESETTABLE) this.#leftState(residueOfFailure(text));
      throw err;
    }
    // A server that refused the session: nothing ran, nothing lost. A pipelined BEGIN went
    // first and carries the refusal.
    let refusal = conn.session.isRefusal(err) ? err : undefined;
    if (refusal === undefined && begin !== undefined && !conn.session.established) {
      const held = await begin.then(() => undefined, (beginErr) => beginErr);
      if (conn.session.isRefusal(held)) refusal = held;
    }
    this.group.reportFailure(conn, refusal ?? err);
    // Nothing of this checkout ran on that session: it may move, a bounded number of times;
    // after a refusal only to another server (else the caller hears why).
    if (
      outcome === "not-executed" && first && this.#lost === null && this.#conn === conn &&
      attempt < MAX_ATTEMPTS && !this.group.closing &&
      (refusal === undefined || (!this.#pinned && this.group.movesRefused(conn)))
    ) {
      this.#tx = false;
      this.#used = false;
      const handed = this.#holdBack();
      try {
        const rows = this.#send(await this.#move(conn), text, params, arrays, attempt + 1);
        handed();
        return await rows;
      } finally {
        handed();
      }
    }
    if (refusal !== undefined) throw this.group.refusalError(conn, refusal);
    throw this.#lose(conn, err, outcome, "its connection was lost during a statement");
  }

  /**
   * Commits and resolves to the read-your-writes token: the primary's WAL position read right
   * after the COMMIT acknowledgement, pipelined behind it (no extra round trip).
   */
  async commit(): Promise<string | undefined> {
    this.#inflight++;
    try {
      const ahead = this.#ahead();
      if (ahead !== undefined) await ahead;
      const held = this.#conn ?? await this.#connection();
      if (this.#state === RELEASED) throw this.#afterRelease();
      return await this.#commit(this.#usable(held));
    } finally {
      this.#leave();
    }
  }

  async #commit(conn: ServerConnection): Promise<string | undefined> {
    this.#used = true;
    if (!this.#tx) {
      if (!this.#leftOpen(conn)) return undefined;
      // A block the caller opened through db.sql: committing it is what commit() means.
      this.#tx = true;
    }
    this.#untracked = false;
    const context = this.group.context;
    context.watch?.(conn.endpoint);
    // After the caller dropped prepared statements (DEALLOCATE, DISCARD ALL) the pool's
    // prepared COMMIT may be gone too: its failed Bind would abort the very transaction it is
    // to commit. The connection is discarded at check-in all the same.
    const options = this.#residue === UNRESETTABLE ? UNPREPARED : conn.endpoint.controlOptions;
    const commit = conn.session.query("COMMIT", undefined, options);
    // Wire order is the order of the first then/catch: COMMIT first, the position after it.
    commit.catch(noop);
    const hooks = context.hooks;
    if (hooks !== undefined) {
      const done = observe(hooks, this.group.name, "COMMIT", conn);
      // A COMMIT answered ROLLBACK fails for the observer as it fails for the caller.
      commit.then(
        (rows) =>
          done(
            (rows as Rows).command === "ROLLBACK"
              ? new TransactionAbortedError(this.group.name)
              : undefined,
          ),
        done,
      );
    }
    let lsn: Promise<Rows> | undefined;
    if (conn.endpoint.role !== "replica") {
      lsn = sendTokenQuery(conn);
    }
    // The transaction ends with the COMMIT, however it is answered (a COMMIT the server refuses
    // ends it too): a statement called from now on, without waiting for the answer, goes out
    // behind it with a BEGIN of its own. Marked open until the answer, such a statement got
    // none and ran outside any transaction, committed at once, beyond a later rollback().
    this.#tx = false;
    this.#ending++;
    let result: Rows;
    try {
      result = await commit as Rows;
    } catch (err) {
      const outcome = conn.outcomeOf(err, "COMMIT");
      if (outcome === "failed") throw err;
      this.group.reportFailure(conn, err);
      throw this.#lose(
        conn,
        err,
        outcome,
        outcome === "unknown"
          ? "the connection closed before COMMIT was acknowledged; its outcome is unknown"
          : "its connection closed before COMMIT ran; nothing was committed",
      );
    } finally {
      this.#ending--;
    }
    conn.lastUsed = performance.now();
    if (result.command === "ROLLBACK") throw new TransactionAbortedError(this.group.name);
    return lsn === undefined ? undefined : await this.#record(lsn, conn);
  }

  /**
   * Rolls back the open transaction (a no-op when none is open). After a lost session this is
   * the caller's acknowledgement: the checkout continues on a fresh connection.
   */
  async rollback(): Promise<void> {
    this.#inflight++;
    try {
      const ahead = this.#ahead();
      if (ahead !== undefined) await ahead;
      const conn = this.#conn ?? await this.#connection();
      if (this.#state === RELEASED) throw this.#afterRelease();
      await this.#rollback(conn);
    } finally {
      this.#leave();
    }
  }

  async #rollback(conn: ServerConnection): Promise<void> {
    if (this.#lost !== null) {
      this.#lost = null;
      this.#tx = false;
      this.#used = false;
      this.#swap(conn);
      return;
    }
    conn = this.#usable(conn);
    if (!this.#tx && !this.#leftOpen(conn)) return;
    this.#tx = false;
    this.#untracked = false;
    const context = this.group.context;
    context.watch?.(conn.endpoint);
    const done = context.hooks === undefined
      ? undefined
      : observe(context.hooks, this.group.name, "ROLLBACK", conn);
    try {
      await conn.session.query("ROLLBACK", undefined, conn.endpoint.controlOptions);
      done?.(undefined);
      conn.lastUsed = performance.now();
    } catch (err) {
      done?.(err);
      const outcome = conn.outcomeOf(err, "ROLLBACK");
      if (outcome === "failed") throw err;
      // The session is gone, and its transaction with it: that is a rollback.
      this.group.reportFailure(conn, err);
    }
  }

  /**
   * The tagged template bound to this checkout's session (in a transaction group the transaction
   * opens on first use). It refuses use once the checkout is released or its session is lost.
   */
  get sql(): Sql {
    this.#sqlReady();
    return this.#sql ??= this.#facade(undefined);
  }

  /**
   * Under leak detection: the same tagged template (`made`, once made), holding `owner` (the
   * handler) reachable while it, or a statement sent through it, is. The handler caches it; the
   * lease must not, as the leak watch keeps the lease reachable and the handler would then never
   * be collected.
   */
  sqlHolding(owner: object, made: Sql | null): Sql {
    this.#sqlReady();
    return made ?? this.#facade(owner);
  }

  /** Throws unless a connection is held, as using `sql` needs. */
  #sqlReady(): void {
    // Released with a statement still in flight, the connection is held until it settles: a
    // statement made now would be sent after check-in, on someone else's checkout.
    if (this.#state === RELEASED) throw this.#afterRelease();
    if (this.#conn !== null) return;
    throw new TypeError(
      `Handler of group ${
        JSON.stringify(this.group.name)
      } is still waiting for a connection: use await pool.acquire() before using sql`,
    );
  }

  /** Returns the connection (rolling back open work first). Idempotent. */
  release(): Promise<void> | undefined {
    if (this.#state === RELEASED) return;
    this.#state = RELEASED;
    this.#leak?.stop();
    if (this.#conn === null) {
      this.#cancel?.(this.#afterRelease());
      return;
    }
    // A db.sql statement made here but first awaited after this point would be sent on
    // whichever checkout holds the session by then: it is refused instead, unsent.
    if (this.#sqlMade) this.#conn.session.refuseUnsent(() => this.#afterRelease());
    // A cursor still being read is closed, not waited for (its reader may never read on): the
    // release waits for the close, and the reader's next read rejects (`sql_dispatch.ts`).
    for (const close of this.#cursors?.open ?? []) close();
    // A statement still in flight keeps the connection: it is checked in once it settles. The
    // pool's own proof of it (a ping) also keeps it, but is no one's to wait for.
    if (this.#inflight > this.#proofs) return new Promise((resolve) => this.#drained = resolve);
    if (this.#inflight > 0) return;
    return this.#checkin();
  }

  /**
   * Leak detection (`leak_detection_ms`): reports this checkout when held too long, and
   * reclaims it if `handler` becomes unreachable first.
   */
  watchLeaks(handler: object, ms: number): void {
    this.#leak = new LeakWatch(handler, this, ms, (watch) => this.#reportLeak(watch, false));
    // Held already (a free connection): the leak clock starts now; else once one comes.
    if (this.#state === HELD) this.#leak.start();
  }

  /**
   * The handler was collected without release: its connection is ended, its permit returned;
   * once its statements in flight have settled, as their callers still await them.
   */
  reclaim(): void {
    if (this.#state === RELEASED) return;
    if (this.#inflight > 0) {
      this.#orphaned = true;
      return;
    }
    this.#state = RELEASED;
    const watch = this.#leak!;
    watch.stop();
    if (this.#conn === null) {
      this.#cancel?.(this.#afterRelease());
    } else {
      // Whatever it left open dies with the session; the next user gets a fresh one.
      const conn = this.#conn;
      this.#conn = null;
      this.#tx = false;
      this.#untracked = false;
      conn.end(0);
      this.group.checkin(conn, false);
    }
    this.#reportLeak(watch, true);
  }

  #reportLeak(watch: LeakWatch, reclaimed: boolean): void {
    this.group.context.events.dispatchEvent(poolEvent("leak", {
      group: this.group.name,
      held_ms: watch.heldMs,
      stack: watch.stack,
      reclaimed,
    }));
  }

  #checkin(): Promise<void> | undefined {
    const conn = this.#conn!;
    this.#conn = null;
    const tx = this.#tx || this.#leftOpen(conn);
    const residue = this.#residue;
    this.#tx = false;
    this.#untracked = false;
    this.#residue = CLEAN;
    // With a block open or state left, the group sends the ROLLBACK and the reset (observed).
    return this.group.checkin(conn, tx, residue);
  }

  /**
   * Whether a block this checkout did not open through the pool may be open on `conn`: only
   * after a text that may open one, and then as the session's last answer says, or, where the
   * driver cannot read that, yes (a ROLLBACK or COMMIT outside a block only draws a warning).
   */
  #leftOpen(conn: ServerConnection): boolean {
    if (!this.#untracked) return false;
    const open = conn.session.inBlock();
    if (open === false) this.#untracked = false;
    return open !== false;
  }

  /** Notes a text sent where command tags cannot follow it (see `#untracked`, `#residue`). */
  #sent(text: string): void {
    if (!this.#untracked && mayOpenBlock(text)) this.#untracked = true;
    if (this.#residue !== UNRESETTABLE) this.#leftState(residueOfText(text));
  }

  /**
   * `#sent` for a `db.sql` template: a block is looked for part by part, state in the whole
   * text (`set_config('app.tenant', ${t}, true)` is split at its value).
   */
  #sentTemplate(strings: readonly string[]): void {
    if (!this.#untracked) {
      for (const part of strings) {
        if (mayOpenBlock(part)) {
          this.#untracked = true;
          break;
        }
      }
    }
    if (this.#residue !== UNRESETTABLE) this.#leftState(residueOfTemplate(strings));
  }

  #leftState(residue: Residue): void {
    if (residue > this.#residue) this.#residue = residue;
  }

  #leave(): void {
    if (--this.#inflight > 0) return;
    if (this.#state !== RELEASED) {
      if (this.#orphaned) this.reclaim();
      return;
    }
    if (this.#conn === null) return;
    const done = this.#drained;
    this.#drained = undefined;
    const checkedIn = this.#checkin();
    if (done !== undefined) {
      if (checkedIn === undefined) done();
      else checkedIn.then(done, done);
    }
  }

  #facade(owner: object | undefined): Sql {
    // Under leak detection, what the driver hands back (a statement while it runs) holds the
    // handler: a caller awaiting a statement of a handler it dropped keeps its connection.
    const hold = owner === undefined ? undefined : (result: unknown): unknown => {
      keepReachable(result, owner);
      return result;
    };
    const session = (): ServerConnection => {
      if (this.#conn === null || this.#state === RELEASED) throw this.#afterRelease();
      const conn = this.#usable(this.#conn);
      this.#used = true;
      this.#sqlMade = true;
      if (!this.autocommit && !this.#tx) this.#begin(conn);
      conn.lastUsed = performance.now();
      this.group.context.watch?.(conn.endpoint);
      return conn;
    };
    // A statement (not a helper's or fragment's value) counts in flight from its dispatch
    // (then, execute, forEach, cursor: `sql_dispatch.ts`) until it settles, as db.query()'s do:
    // a release meanwhile keeps the connection until then (it went back to the group with the
    // statement running, and the next checkout got it mid-statement); a cursor still being read
    // is closed by the release. It is observed from its dispatch too.
    const tracked = (
      result: unknown,
      conn: ServerConnection,
      text: () => string,
    ): void => {
      if (!(result instanceof Promise)) return;
      const cursors = typeof (result as { cursor?: unknown }).cursor === "function"
        ? this.#cursorsOn(conn)
        : undefined;
      followStatement(result, () => {
        this.#inflight++;
        // The observer of the moment it is sent (it may have been removed meanwhile).
        const hooks = this.group.context.hooks;
        const done = hooks === undefined
          ? undefined
          : observe(hooks, this.group.name, text(), conn);
        return (error) => {
          done?.(error);
          this.#leave();
        };
      }, cursors);
    };
    const sql = ((first: unknown, ...rest: unknown[]) => {
      // A template's values, as statement parameters (helpers and fragments pass).
      if (Array.isArray((first as { raw?: unknown } | null)?.raw)) {
        checkValues(rest);
        this.#sentTemplate(first as readonly string[]);
      }
      const conn = session();
      const result = (conn.session.sql as unknown as (...args: unknown[]) => unknown)(
        first,
        ...rest,
      );
      conn.session.adopt(result);
      tracked(
        result,
        conn,
        () =>
          Array.isArray((first as { raw?: unknown } | null)?.raw)
            ? templateText(first as readonly string[])
            : "",
      );
      return hold === undefined ? result : hold(result);
    }) as unknown as Sql;
    const forward =
      (name: "unsafe" | "array" | "json" | "typed" | "file") => (...args: unknown[]) => {
        // unsafe(text, params?, options?) or unsafe(text, options).
        if (name === "unsafe") {
          checkStatement(args[0], Array.isArray(args[1]) ? args[1] : undefined);
          this.#sent(args[0] as string);
        } else if (name === "file") {
          // A text we never see: it may open a block, and leave anything, also what only a new
          // session clears (a PREPARE, DISCARD ALL): the connection is ended at check-in.
          this.#untracked = true;
          this.#leftState(UNRESETTABLE);
        }
        const conn = session();
        const result = (conn.session.sql[name] as (...args: unknown[]) => unknown)(...args);
        conn.session.adopt(result);
        // unsafe's text is the statement; a file's is not known here.
        tracked(result, conn, () => name === "unsafe" ? args[0] as string : "");
        return hold === undefined ? result : hold(result);
      };
    Object.assign(sql, {
      unsafe: forward("unsafe"),
      array: forward("array"),
      json: forward("json"),
      typed: forward("typed"),
      file: forward("file"),
    });
    return sql;
  }

  /**
   * The book of this checkout's cursors, for a driver whose statements have them (postgres.js:
   * its `sql.CLOSE` closes one); `undefined` for another.
   */
  #cursorsOn(conn: ServerConnection): CursorBook | undefined {
    if (this.#cursors !== undefined) return this.#cursors;
    const close = (conn.session.sql as unknown as { CLOSE?: unknown }).CLOSE;
    if (close === undefined) return undefined;
    return this.#cursors = { open: new Set(), close, released: () => this.#afterRelease() };
  }

  /**
   * Counts a statement among `#unsent` until the returned function is called (once it is handed
   * to the driver, or fails unsent; later calls do nothing).
   */
  #holdBack(): () => void {
    let mark!: () => void;
    const handed = new Promise<void>((resolve) => mark = resolve);
    const unsent = this.#unsent ??= new Set();
    unsent.add(handed);
    return () => {
      if (unsent.delete(handed)) mark();
    };
  }

  /**
   * Settles once every statement called so far has been handed to the driver (those called
   * later are not waited for); `undefined` when all have been (the common case: no await).
   */
  #ahead(): Promise<unknown> | undefined {
    const unsent = this.#unsent;
    if (unsent === undefined || unsent.size === 0) return undefined;
    return Promise.all(unsent);
  }

  /** The connection to send on now, or throws when this checkout may not send. */
  #usable(conn: ServerConnection): ServerConnection {
    if (this.group.ended) throw new PoolClosedError();
    if (this.#lost !== null) throw this.#lostError(this.#lost);
    if (!conn.dead) {
      // Taken before routing changed (its server was demoted, promoted, fell behind) and not
      // used yet: moving is still unobservable, and the group has somewhere better to go.
      if (this.#used || this.#pinned || conn.member.active || !this.group.routable) return conn;
      return this.#swap(conn);
    }
    if (this.#used) {
      throw this.#lose(conn, undefined, "not-executed", "its connection closed");
    }
    // Nothing of this checkout ran on it yet: moving is safe and unobservable.
    return this.#swap(conn);
  }

  #begin(conn: ServerConnection): Promise<unknown> {
    const begin = conn.session.query("BEGIN", undefined, conn.endpoint.controlOptions);
    begin.catch(noop);
    this.#tx = true;
    this.#txGen++;
    return begin;
  }

  // Transactions opened or ended by the caller's own statements. The tag is not enough:
  // ROLLBACK TO SAVEPOINT answers ROLLBACK and COMMIT/ROLLBACK AND CHAIN open the next
  // transaction at once; taking those for an end would skip the commit, or hand the next
  // checkout a connection inside a transaction.
  // `gen`: `#txGen` when the statement was sent; a BEGIN of the pool's sent since opened the
  // block that is open now, whatever this answer says of the one before.
  #trackTransaction(command: string, text: string, gen: number): void {
    if (command === "BEGIN" || command === "START TRANSACTION") this.#tx = true;
    else if (command === "COMMIT" || command === "ROLLBACK") {
      if (gen === this.#txGen) {
        this.#tx = STAYS_IN_TRANSACTION.test(text);
        // Whatever block was open, also one opened through db.sql, ended with it.
        if (!this.#tx) this.#untracked = false;
      }
      // The caller's own COMMIT, answered ROLLBACK: an earlier statement had failed and nothing
      // was committed. It must not read as success (pool.transaction() would report one).
      if (command === "ROLLBACK" && asksToCommit(text)) {
        throw new TransactionAbortedError(this.group.name);
      }
    } else if (command === "PREPARE TRANSACTION") {
      if (gen === this.#txGen) {
        this.#tx = false;
        this.#untracked = false;
      }
    } // A text of several statements reports its last command (or none): its BEGIN is unseen.
    else if (mayHideBlock(text)) this.#untracked = true;
  }

  async #record(lsn: Promise<Rows>, conn: ServerConnection): Promise<string | undefined> {
    const token = await readToken(lsn, conn, this.group.context.topology);
    if (token !== undefined) {
      this.#token = token;
      this.group.context.onToken(token);
    }
    return token;
  }

  /** Pings a connection idle past `validate_after_ms`; swaps it when dead. Nothing is written. */
  async #validate(conn: ServerConnection): Promise<ServerConnection> {
    for (let attempt = 1;; attempt++) {
      if (this.group.ended) throw new PoolClosedError();
      // Released meanwhile (an aborted acquire() is): no move, no new connection for nobody.
      if (this.#state === RELEASED) throw this.#afterRelease();
      if (conn.dead) {
        conn = await this.#move(conn);
        continue;
      }
      const lastUsed = conn.lastUsed;
      if (lastUsed === 0 || performance.now() - lastUsed <= this.group.context.validateAfterMs) {
        return conn;
      }
      try {
        await conn.ping(conn.endpoint.connectTimeoutS * 1000);
        conn.lastUsed = performance.now();
        return conn;
      } catch (err) {
        this.group.reportFailure(conn, err);
        if (attempt >= MAX_ATTEMPTS) throw err;
        conn.end(0);
        conn = await this.#move(conn);
      }
    }
  }

  /**
   * Moves the checkout off `conn` (nothing of it ran there). With no server routable it first
   * waits for routing as a new checkout does (failing as one would), rather than reopening on
   * the server it leaves: for a host gone silent that meant waiting out its connect_timeout.
   */
  async #move(conn: ServerConnection): Promise<ServerConnection> {
    if (!this.#pinned && !this.group.routable) await this.group.whenRoutable();
    return this.#swap(conn);
  }

  #swap(conn: ServerConnection): ServerConnection {
    // Only the connection held right now can be swapped: a stale reference never swaps twice.
    if (this.#conn !== conn) return this.#conn!;
    // Something of this checkout went out on it meanwhile (a db.sql statement sent while the
    // first statement waited on a ping): the checkout is that session, and it is gone.
    if (this.#used) throw this.#lose(conn, undefined, "not-executed", "its connection was lost");
    const next = this.group.replace(conn, this.#pinned);
    this.#conn = next;
    return next;
  }

  #connection(): Promise<ServerConnection> {
    if (this.#state === RELEASED) return Promise.reject(this.#afterRelease());
    if (this.group.ended) return Promise.reject(new PoolClosedError());
    return this.#pending!;
  }

  #lose(
    conn: ServerConnection,
    cause: unknown,
    outcome: StatementOutcome,
    detail: string,
  ): SessionLostError {
    const options = cause === undefined ? undefined : { cause };
    // Concurrent statements of one checkout learn of one loss: it keeps the kind it had. The
    // end of a block still unanswered loses that block (no longer marked open, see #send).
    const Lost = this.#tx || this.#ending > 0 || this.#leftOpen(conn) ||
        this.#lost?.Lost === TransactionLostError
      ? TransactionLostError
      : SessionLostError;
    this.#tx = false;
    this.#untracked = false;
    // Later statements of the checkout are refused unsent: for them the outcome is known.
    const lost = this.#lost ??= { Lost, detail, options };
    if (!conn.dead) conn.end(0);
    return outcome === "not-executed"
      ? this.#lostError(lost)
      : new Lost(this.group.name, outcome, detail, options);
  }

  /** A refusal after `lost`, made now (see `#lost`): nothing of it was sent. */
  #lostError(lost: Loss): SessionLostError {
    return new lost.Lost(this.group.name, "not-executed", lost.detail, lost.options);
  }

  #afterRelease(): TypeError {
    return new TypeError(
      `Handler of group ${JSON.stringify(this.group.name)} was used after release`,
    );
  }
}
