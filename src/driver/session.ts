/**
 * The driver seam as a type: what the pool needs of one server session, whichever client library
 * speaks the protocol. Two drivers implement it: `Session` (postgres.js, `./postgres.ts`, every
 * runtime) and `BunSession` (Bun's native `Bun.SQL`, `./bun.ts`, Bun only).
 *
 * Every driver keeps the same contract: a session is one server session for its whole life (it
 * never reconnects, and anything sent after it ended is refused unsent with
 * `SessionEndedError`); every option is explicit (nothing comes from the environment); no
 * readable property holds the password; `outcomeOf` says `not-executed` only when the statement
 * provably never ran.
 *
 * @module
 */

import type { Rows } from "../rows.ts";
import type { DriverSql, Outcome, StatementOptions } from "./postgres.ts";

/**
 * Which client library opens the pool's sessions: `"postgres"` (postgres.js, every runtime) or
 * `"bun"` (Bun's native `SQL`, Bun only).
 *
 * @example Choosing Bun's native driver where it exists
 * ```ts
 * import type { DriverName, PoolConfig } from "@x/pgdbpool";
 *
 * const driver: DriverName = "Bun" in globalThis ? "bun" : "postgres";
 * const config: PoolConfig = {
 *   db: [{ host: "127.0.0.1", name: "app", user: "app", pass: "secret" }],
 *   groups: { default: { connection_count: 4 } },
 *   driver,
 * };
 * ```
 */
export type DriverName = "postgres" | "bun";

/** One server session, as every driver exposes it. */
export interface DriverSession {
  /**
   * The driver's tagged template bound to this session (postgres.js's `Sql`, or Bun's `SQL`
   * handle under the Bun driver: typed as postgres.js's, see `BunSession.sql`).
   */
  readonly sql: DriverSql;
  /** Whether the server accepted the session (its start-up finished at some point). */
  readonly established: boolean;
  /** Whether the session has ended: nothing will be sent on it again. */
  readonly dead: boolean;
  /**
   * Sends one statement (callers take the promise's `then`/`catch` at once, in wire order), or
   * refuses it unsent with `SessionEndedError` when the session has ended.
   */
  query(
    text: string,
    params: readonly unknown[] | undefined,
    options: StatementOptions,
  ): Promise<Rows>;
  /**
   * Takes a statement made through `sql` (`db.sql`) into the session's books, so that it is
   * settled however the session ends; anything that is not a statement is ignored.
   */
  adopt(statement: unknown): void;
  /**
   * The checkout that made statements through `sql` has ended: any of them first dispatched
   * (awaited, `then`, `execute`) from now on rejects with `reason()`, unsent.
   */
  refuseUnsent(reason: () => Error): void;
  /**
   * The error the caller should see for a statement that rejected with `err` (a driver may
   * have had to turn a failure into another on the wire; see `encoding.ts`).
   */
  explain(err: unknown): unknown;
  /**
   * Whether the session is inside a transaction block (also a failed one) as its last answer
   * said (`true` / `false`), or `undefined` when the driver cannot read that, or when a `sql`
   * statement is still on its way (released without waiting for it: its answer is to come).
   * The pool's own statements are never in flight when it asks.
   */
  inBlock(): boolean | undefined;
  /** What is known of a statement (`text`) that rejected with `err` on this session. */
  outcomeOf(err: unknown, text: string): Outcome;
  /** Whether `err` is this session's refusal itself (connect failed, the server said no). */
  isRefusal(err: unknown): boolean;
  /** Ends the session; statements in flight get `timeoutMs` before the socket is cut. */
  end(timeoutMs: number): Promise<void>;
}
