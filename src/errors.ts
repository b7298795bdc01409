/**
 * Errors raised by the pool itself. PostgreSQL errors are not wrapped: they reach the caller as
 * postgres.js `PostgresError` with their SQLSTATE in `code`.
 *
 * @module
 */

import { quote } from "./quote.ts";
import { redactUrl } from "./redact.ts";

/**
 * Base class of every error the pool raises, so callers can tell pool conditions from
 * PostgreSQL errors with one `instanceof`.
 *
 * @example Telling pool errors from database errors
 * ```ts
 * import { PoolError } from "@x/pgdbpool";
 *
 * function describe(err: unknown): string {
 *   return err instanceof PoolError ? `pool: ${err.message}` : String(err);
 * }
 * ```
 */
export class PoolError extends Error {
  /** Creates a pool error; `options.cause` keeps the underlying error. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "PoolError";
  }
}

/**
 * The configuration passed to `new Pool()` or `Connection.init()` is invalid. The message names
 * the path of the offending key and quotes its value (never a password).
 *
 * @example Reporting a bad configuration
 * ```ts
 * import { ConfigError, Pool } from "@x/pgdbpool";
 *
 * try {
 *   new Pool({ db: [], groups: {} });
 * } catch (err) {
 *   if (err instanceof ConfigError) console.error(err.path, err.message);
 * }
 * ```
 */
export class ConfigError extends PoolError {
  /** Path of the offending key, e.g. `groups.read.connection_count`. */
  readonly path: string;
  /** Creates a configuration error for `path`. */
  constructor(path: string, message: string) {
    super(`${path} ${message}`);
    this.name = "ConfigError";
    this.path = path;
  }
}

/**
 * A handler asked for a group that the configuration does not define.
 *
 * @example Catching an unknown group
 * ```ts
 * import { UnconfiguredGroupError } from "@x/pgdbpool";
 *
 * const isTypo = (err: unknown) => err instanceof UnconfiguredGroupError;
 * ```
 */
export class UnconfiguredGroupError extends PoolError {
  /** The group name that was asked for. */
  readonly group: string;
  /** Creates the error for `group`; `known` lists the configured names. */
  constructor(group: string, known: readonly string[]) {
    // quote(): a group that is no string (a config object passed by mistake) is named by its
    // type; JSON.stringify printed its contents, password included, and threw for a BigInt.
    super(
      `Group ${quote(group)} is not configured (configured: ${
        known.map((g) => JSON.stringify(g)).join(", ")
      })`,
    );
    this.name = "UnconfiguredGroupError";
    // What was asked for, but never a connection string's password (pool.handler(url)).
    this.group = typeof group === "string" ? redactUrl(group) : group;
  }
}

/**
 * A checkout waited `acquire_timeout_ms` (or its `timeout_ms`) without getting a connection: every
 * one was busy (threaded mode), or no server could serve the group yet.
 *
 * @example Shedding load when the pool is saturated
 * ```ts
 * import { AcquireTimeoutError } from "@x/pgdbpool";
 *
 * const status = (err: unknown) => err instanceof AcquireTimeoutError ? 503 : 500;
 * ```
 */
export class AcquireTimeoutError extends PoolError {
  /** The group that had no connection to give in time (all busy, or no server could serve it). */
  readonly group: string;
  /** How long the checkout waited, in milliseconds. */
  readonly timeoutMs: number;
  /** Creates the error for `group` after waiting `timeoutMs`. */
  constructor(group: string, timeoutMs: number) {
    super(
      `Timed out after ${timeoutMs} ms waiting for a connection of group ${JSON.stringify(group)}`,
    );
    this.name = "AcquireTimeoutError";
    this.group = group;
    this.timeoutMs = timeoutMs;
  }
}

/**
 * A non-threaded-mode checkout found every connection of the group in use. Waiting could never
 * succeed there (one request at a time per isolate), so the pool fails at once.
 *
 * @example Nesting more handlers than connections
 * ```ts
 * import { PoolExhaustedError } from "@x/pgdbpool";
 *
 * const tooMany = (err: unknown) => err instanceof PoolExhaustedError;
 * ```
 */
export class PoolExhaustedError extends PoolError {
  /** The exhausted group. */
  readonly group: string;
  /** Creates the error for `group` of `size` connections. */
  constructor(group: string, size: number) {
    super(
      `All ${size} connections of group ${
        JSON.stringify(group)
      } are checked out (non-threaded mode does not wait)`,
    );
    this.name = "PoolExhaustedError";
    this.group = group;
  }
}

/**
 * The pool was closed: no further checkout or statement is possible.
 *
 * @example Ignoring work that arrives during shutdown
 * ```ts
 * import { PoolClosedError } from "@x/pgdbpool";
 *
 * const lateRequest = (err: unknown) => err instanceof PoolClosedError;
 * ```
 */
export class PoolClosedError extends PoolError {
  /** Creates the error. */
  constructor(message = "The pool is closed") {
    super(message);
    this.name = "PoolClosedError";
  }
}

/**
 * What is known of a statement whose session was lost: `"unknown"` when it may have run (and,
 * outside a transaction, committed), `"not-executed"` when the pool can prove it never ran.
 *
 * @example Deciding whether a retry is safe
 * ```ts
 * import { SessionLostError, type StatementOutcome } from "@x/pgdbpool";
 *
 * const safeToRetry = (err: unknown) =>
 *   err instanceof SessionLostError && (err.outcome satisfies StatementOutcome) === "not-executed";
 * ```
 */
export type StatementOutcome = "unknown" | "not-executed";

/**
 * The server session of a checkout was lost after its first statement ran. The pool never moves
 * a checkout to another session silently (locks, `SET` values and temporary tables would be gone),
 * so this statement and every later one of the checkout reject with this error; release the
 * handler and start over. `outcome` says whether the statement may have run.
 *
 * @example Reporting a statement whose outcome is unknown
 * ```ts
 * import { SessionLostError } from "@x/pgdbpool";
 *
 * const needsCheck = (err: unknown) => err instanceof SessionLostError && err.outcome === "unknown";
 * ```
 */
export class SessionLostError extends PoolError {
  /** The group of the handler whose session was lost. */
  readonly group: string;
  /** Whether the statement that got this error may have run. */
  readonly outcome: StatementOutcome;
  /** Creates the error for `group`; `cause` is the connection error, when one was seen. */
  constructor(group: string, outcome: StatementOutcome, detail: string, options?: ErrorOptions) {
    super(`Session of group ${JSON.stringify(group)} was lost: ${detail}`, options);
    this.name = "SessionLostError";
    this.group = group;
    this.outcome = outcome;
  }
}

/**
 * The server session was lost inside an open transaction. Its work is gone (or, when the loss
 * hit `commit()`, its outcome is `"unknown"`); the pool never replays it on a new session. Call
 * `rollback()` (or release the handler) and retry the whole transaction.
 *
 * @example Retrying a whole transaction
 * ```ts
 * import { TransactionLostError } from "@x/pgdbpool";
 *
 * const retryable = (err: unknown) => err instanceof TransactionLostError;
 * ```
 */
export class TransactionLostError extends SessionLostError {
  /** Creates the error for `group`; `cause` is the connection error, when one was seen. */
  constructor(
    group: string,
    outcome: StatementOutcome,
    detail: string,
    options?: ErrorOptions,
  ) {
    super(group, outcome, detail, options);
    this.message = `Transaction on group ${JSON.stringify(group)} was lost: ${detail}`;
    this.name = "TransactionLostError";
  }
}

/**
 * `commit()` found the transaction already aborted by an earlier failed statement: PostgreSQL
 * rolled it back instead of committing.
 *
 * @example Detecting a commit that rolled back
 * ```ts
 * import { TransactionAbortedError } from "@x/pgdbpool";
 *
 * const rolledBack = (err: unknown) => err instanceof TransactionAbortedError;
 * ```
 */
export class TransactionAbortedError extends PoolError {
  /** The group of the handler. */
  readonly group: string;
  /** Creates the error for `group`. */
  constructor(group: string) {
    super(
      `Transaction on group ${
        JSON.stringify(group)
      } was rolled back by the server: an earlier statement failed`,
    );
    this.name = "TransactionAbortedError";
    this.group = group;
  }
}

/**
 * No endpoint can serve the group right now (all down, or none has the role the group needs, or
 * the only one that could refused the session: its error is the `cause`). Raised at once instead
 * of hanging.
 *
 * @example Failing fast when every replica is down
 * ```ts
 * import { NoEndpointAvailableError } from "@x/pgdbpool";
 *
 * const unavailable = (err: unknown) => err instanceof NoEndpointAvailableError;
 * ```
 */
export class NoEndpointAvailableError extends PoolError {
  /** The group that could not be served. */
  readonly group: string;
  /** Creates the error for `group`. */
  constructor(group: string, detail: string, options?: ErrorOptions) {
    super(`No endpoint available for group ${JSON.stringify(group)}: ${detail}`, options);
    this.name = "NoEndpointAvailableError";
    this.group = group;
  }
}
