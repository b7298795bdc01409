/**
 * The Bun driver: a {@linkcode BunSession} is one server session on a single-connection client of
 * Bun's native `Bun.SQL` (Bun 1.4+), with the same contract as postgres.js's `Session`:
 *
 * - it never reconnects. `Bun.SQL` replaces a lost connection silently on the next statement (a
 *   `max: 1` client too): the session closes its client the moment the connection closes
 *   (`onclose`), so anything sent later is refused unsent, and the password callback refuses to
 *   dial a second connection once the first one was established, so a reconnect cannot even
 *   start;
 * - it reads nothing from the environment. `Bun.SQL` reads `DATABASE_URL` (and its siblings,
 *   query string included), `PGAPPNAME`, `PGOPTIONS`, `PGSSLMODE`, `PGCHANNELBINDING`,
 *   `PGCONNECT_TIMEOUT`, and `PG*` for every option left empty: the client is built from an
 *   explicit URL (which turns the environment URLs off) plus every option given, the start-up
 *   parameters `application_name` and `options` always set;
 * - the password is handed over as a function, so no readable property holds it (and the
 *   function itself refuses to answer once the session is established);
 * - it can tell, after a failure, whether a statement provably never ran: `Bun.SQL` rejects
 *   every statement in flight with the server's FATAL itself (`errno` 57P01 when an
 *   administrator terminated the session), and statements queued before the start-up finished
 *   were never written.
 *
 * Nothing here imports "bun": `Bun.SQL` is reached through `globalThis` when a session is made,
 * so this module loads (and type-checks) on every runtime and fails only if used off Bun.
 *
 * Differences from the postgres.js driver, all below the seam:
 *
 * - Server errors are Bun's `SQL.PostgresError`; `code` is set to the SQLSTATE (as postgres.js
 *   has it; Bun's own `code` is `ERR_POSTGRES_SERVER_ERROR`, its `errno` is the SQLSTATE too).
 *   Connection errors get postgres.js's codes (`CONNECTION_CLOSED`, `ECONNREFUSED`,
 *   `CONNECT_TIMEOUT`); TLS errors keep theirs (`DEPTH_ZERO_SELF_SIGNED_CERT`, `ERR_TLS_...`).
 * - No start-up parameters are reported (`Bun.SQL` keeps them to itself): `onParameter` is told
 *   only `application_name` (the value sent) once the session is established, so roles are
 *   learnt by probes, not from `in_hot_standby`.
 * - No NOTIFY reaches a pooled connection: `onNotify` is never called (the LISTEN session must
 *   stay on postgres.js). No array-type fetch either: `onTypes` is never called.
 * - Bun pipelines only named prepared statements (prepare on, extended protocol) and serializes
 *   the simple protocol. On a session that prepares, statements with parameters, recurring
 *   texts without (`simple: false`, see `repeated_texts.ts`), the pool's own BEGIN, COMMIT,
 *   ROLLBACK and WAL-position query (`Endpoint.controlOptions`) and pings (`prepare: false`) go
 *   through the extended protocol as named statements, so that they pipeline, as Bun's own
 *   tagged templates do. Other texts without
 *   parameters (seen for the first time, or several statements) go through the simple protocol
 *   (as postgres.js does: one result each, values in text form), as does everything on a
 *   session that does not prepare (`prepare: false`, e.g. behind PgBouncer) and a text sent
 *   with `simple: true` (the COMMIT of a checkout that dropped prepared statements).
 * - Values: int8 and numeric as strings, dates as `Date`, json parsed, bytea as `Buffer`, like
 *   postgres.js; but arrays of int2/int4/float4/float8 in binary results (statements with
 *   parameters) come back as typed arrays (`Int32Array`...), `'infinity'` timestamps as
 *   `Infinity`, and `count` is 0 instead of null for commands without a row count.
 *
 * @module
 */

import type { Rows } from "../rows.ts";
import {
  type DriverSql,
  type DriverSsl,
  type Outcome,
  SessionEndedError,
  type SessionHooks,
  type SessionOptions,
  type StatementOptions,
} from "./postgres.ts";
import type { DriverSession } from "./session.ts";

/** A statement as `Bun.SQL` returns it: lazy (sent on its first `then`), with result modes. */
interface BunQuery extends Promise<Rows> {
  /** Rows as arrays of values. */
  values(): BunQuery;
}

/** The parts of a `Bun.SQL` client the driver uses. */
interface BunSqlHandle {
  (strings: TemplateStringsArray, ...values: unknown[]): BunQuery;
  unsafe(text: string, values?: unknown[]): BunQuery;
  close(options?: { timeout?: number }): Promise<void>;
}

type BunSqlConstructor = new (url: string, options: Record<string, unknown>) => BunSqlHandle;

/** `Bun.SQL`, when this runtime has it. */
function bunSqlClass(): BunSqlConstructor | undefined {
  const bun = (globalThis as { Bun?: { SQL?: unknown } }).Bun;
  return typeof bun?.SQL === "function" ? bun.SQL as BunSqlConstructor : undefined;
}

/** Whether this runtime has Bun's native SQL client (the `"bun"` driver can be used). */
export function hasBunSql(): boolean {
  return bunSqlClass() !== undefined;
}

const noop = () => {};

/** A statement made through Bun's `sql`, as far as `refuseUnsent` touches it. */
interface BunStatement extends Promise<unknown> {
  reject(err: unknown): void;
  cancel(): unknown;
}

/** Statements noted at which the dispatched and collected ones are dropped (`adopt`). */
const MADE_COMPACT_AT = 64;

// Bun keeps a statement's state in a symbol-keyed field whose bit 16 says it was run (its
// `Query.cancel()` reads the same bit). Found once, by name.
let statusKey: symbol | null | undefined;

/** Whether Bun ran `q` already; `undefined` when this Bun does not show it. */
function dispatched(q: object): boolean | undefined {
  if (statusKey === undefined) {
    statusKey = Object.getOwnPropertySymbols(q).find((key) => key.description === "status") ??
      null;
  }
  if (statusKey === null) return undefined;
  const status = (q as Record<symbol, unknown>)[statusKey];
  return typeof status === "number" ? (status & 16) !== 0 : undefined;
}

// Bun's connection-level codes, as postgres.js names the same conditions (what `sqlstate.ts`
// and every caller already know).
const connectionCodes: Readonly<Record<string, string>> = {
  ERR_POSTGRES_CONNECTION_CLOSED: "CONNECTION_CLOSED",
  ERR_POSTGRES_CONNECTION_FAILED: "CONNECTION_CLOSED",
  ERR_POSTGRES_CONNECTION_REFUSED: "ECONNREFUSED",
  ERR_POSTGRES_CONNECTION_TIMEOUT: "CONNECT_TIMEOUT",
  ERR_POSTGRES_IDLE_TIMEOUT: "CONNECTION_CLOSED",
  ERR_POSTGRES_LIFETIME_TIMEOUT: "CONNECTION_CLOSED",
};

// The codes a connection-level failure ends up with (after translation), TLS aside.
const lostCodes = new Set([
  "CONNECTION_CLOSED",
  "CONNECT_TIMEOUT",
  "ECONNREFUSED",
  "ECONNRESET",
  "EPIPE",
  "ETIMEDOUT",
  "ERR_POSTGRES_TLS_NOT_AVAILABLE",
  "ERR_POSTGRES_TLS_UPGRADE_FAILED",
  "ERR_POSTGRES_CHANNEL_BINDING_REQUIRED",
  "ERR_POSTGRES_CHANNEL_BINDING_FAILED",
]);

function isTlsCode(code: string): boolean {
  return code.includes("CERT") || code.startsWith("ERR_TLS") || code.startsWith("ERR_SSL");
}

interface ErrorFields {
  code?: unknown;
  errno?: unknown;
  severity?: unknown;
}

/** An error the server sent (an ErrorResponse), as `Bun.SQL` reports it. */
function isServerError(err: unknown): err is ErrorFields & { code: string } {
  const e = err as ErrorFields | null;
  return typeof e === "object" && e !== null && typeof e.errno === "string" &&
    typeof e.severity === "string" && typeof e.code === "string";
}

function isFatal(err: unknown): boolean {
  const severity = (err as ErrorFields | null)?.severity;
  return severity === "FATAL" || severity === "PANIC";
}

// TLS settings: a string mode is taken as is (it overrides PGSSLMODE); an object gets the
// "verify-full" alias too, without which a PGSSLMODE=verify-ca would lower it to verify-ca.
function tlsOptions(ssl: DriverSsl): Record<string, unknown> {
  if (ssl === false) return { tls: false };
  if (typeof ssl === "string") return { tls: ssl };
  // Bun checks the address it dialled itself. The object states the verification: given the
  // mode string alone, Bun's TLS layer took it from NODE_TLS_REJECT_UNAUTHORIZED instead.
  if (ssl.ca === undefined) return { tls: { rejectUnauthorized: true }, ssl: "verify-full" };
  return { tls: { ca: ssl.ca, rejectUnauthorized: true }, ssl: "verify-full" };
}

/** Template objects kept at most (one per recurring text, as `repeated_texts.ts` counts them). */
const TEMPLATES_KEPT = 4096;
const templates = new Map<string, TemplateStringsArray>();

// A one-string template object: Bun sends a tagged statement through the extended protocol (a
// named statement when the client prepares), where `unsafe()` without values uses the simple one.
// Only recurring texts come here, so each one's object is made once (making it, `raw` included,
// cost more than the rest of the call).
function template(text: string): TemplateStringsArray {
  let strings = templates.get(text);
  if (strings !== undefined) return strings;
  const made = [text];
  Object.defineProperty(made, "raw", { value: [text] });
  strings = made as unknown as TemplateStringsArray;
  if (templates.size < TEMPLATES_KEPT) templates.set(text, strings);
  return strings;
}

const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * A location of Bun's own built-in JavaScript (its SQL client dials from `internal:sql/pool`).
 * Native frames (`[native code]`) are not Bun's SQL client: a caller reaches any function
 * through them (`JSON.parse(text, f)`, `[0].map(f)`).
 */
const BUN_CODE = /^(?:internal:|bun:)/;

interface CallSite {
  getFileName(): string | null | undefined;
}

type PrepareStackTrace = (error: Error, sites: CallSite[]) => unknown;

/**
 * Whether the function that called the caller of this one is Bun's own code: the password
 * callback's caller. Read from the call sites (a `prepareStackTrace` of the caller's own is
 * set aside meanwhile); where Bun shows none, from the text of the stack.
 */
function calledByBun(): boolean {
  const E = Error as unknown as { prepareStackTrace?: PrepareStackTrace; stackTraceLimit: number };
  const prepare = E.prepareStackTrace;
  const limit = E.stackTraceLimit;
  let stack: unknown;
  try {
    E.prepareStackTrace = (_error, sites) => sites;
    E.stackTraceLimit = 4;
    stack = new Error().stack;
  } finally {
    E.prepareStackTrace = prepare;
    E.stackTraceLimit = limit;
  }
  // [this function, the password callback, its caller]. No caller frame at all is a callback
  // run from a microtask or timer (`Promise.resolve().then(f)`), which a caller can queue.
  if (Array.isArray(stack)) {
    const file = (stack[2] as CallSite | undefined)?.getFileName?.();
    return typeof file === "string" && BUN_CODE.test(file);
  }
  const frame = typeof stack === "string" ? stack.split("\n").slice(1)[2] : undefined;
  const at = frame?.match(/\(([^()]*)\)\s*$/)?.[1] ?? frame?.replace(/^\s*at\s+/, "");
  return at !== undefined && BUN_CODE.test(at);
}

/** One server session on Bun's native client. Dies once; never reconnects. */
export class BunSession implements DriverSession {
  readonly #sql: BunSqlHandle;
  readonly #hooks: SessionHooks;
  readonly #prepare: boolean;
  readonly #applicationName: string;
  readonly #connectTimeoutMs: number;
  readonly #where: string;
  #established = false;
  #dead = false;
  /** `end()` was called: the client is ours to close, no `onClose`. */
  #ending = false;
  /** The start-up did not finish within `connect_timeout`. */
  #timedOut = false;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #armed = false;
  /** Statements made through `sql` during the current checkout (see `refuseUnsent`). */
  #made: WeakRef<BunStatement>[] = [];
  /** Errors that meant the connection was lost when they arrived. */
  readonly #lost = new WeakSet<object>();

  constructor(options: SessionOptions, hooks: SessionHooks) {
    const SQL = bunSqlClass();
    if (SQL === undefined) {
      throw new TypeError('The "bun" driver needs Bun\'s native SQL client (Bun.SQL)');
    }
    this.#hooks = hooks;
    this.#prepare = options.prepare;
    this.#where = `${options.host}:${options.port}`;
    this.#connectTimeoutMs = Math.min(Math.ceil(options.connectTimeoutS * 1000), MAX_TIMER_MS);
    const parameters = { application_name: "", options: "", ...options.parameters };
    this.#applicationName = String(parameters.application_name);
    const password = options.password;
    // An explicit URL: Bun reads DATABASE_URL and its siblings only when it is given none.
    this.#sql = new SQL("postgres://", {
      adapter: "postgres",
      hostname: options.host,
      port: options.port,
      database: options.database,
      username: options.user,
      // Called by Bun before each dial: only the first connection of the session may log in
      // (a second dial before the start-up finished is Bun's retry with the SASLprep form of
      // the password; nothing was sent yet). A reconnect fails here, before any socket opens.
      // Bun keeps this callback where a caller can reach it (`options.password`, and the
      // `connectionInfo` of every statement's adapter, which `db.sql` hands out): it answers
      // only Bun's own dialling code, never a caller, also before the session is established.
      password: () => {
        if (this.#established || this.#dead) throw new SessionEndedError();
        if (!calledByBun()) {
          throw new TypeError("The password of a pooled session is not given out");
        }
        return password();
      },
      ...tlsOptions(options.ssl),
      // 0: no connect retries (Bun retries a refused start-up until this timeout), no timer of
      // Bun's; the session keeps its own (`#arm`).
      connectionTimeout: 0,
      // The pool retires connections itself (max_lifetime_ms, idle_timeout_ms).
      idleTimeout: 0,
      maxLifetime: 0,
      max: 1,
      prepare: options.prepare,
      bigint: false,
      channelBinding: "disable",
      connection: parameters,
      onconnect: () => this.#connected(),
      onclose: (err: unknown) => this.#closed(err),
    });
  }

  /**
   * Bun's `SQL` tagged template bound to this session (typed as postgres.js's `Sql`, whose
   * calling conventions it shares: `sql\`...\``, `sql(object)`, `unsafe`, `array`, `json`,
   * `file`; no `typed`). Its statements are not seen by `outcomeOf`, and their errors are Bun's
   * own (SQLSTATE in `errno`).
   */
  get sql(): DriverSql {
    this.#arm();
    return this.#sql as unknown as DriverSql;
  }

  /** Whether the server accepted the session (its start-up finished at some point). */
  get established(): boolean {
    return this.#established;
  }

  /** Whether the session has ended: nothing will be sent on it again. */
  get dead(): boolean {
    return this.#dead;
  }

  /** Sends a statement now, or refuses it unsent. */
  query(
    text: string,
    params: readonly unknown[] | undefined,
    options: StatementOptions,
  ): Promise<Rows> {
    if (this.#dead) return Promise.reject(new SessionEndedError());
    this.#arm();
    let query: BunQuery;
    try {
      if (params !== undefined && params.length > 0) {
        query = this.#sql.unsafe(text, params as unknown[]);
      } else if (
        this.#prepare && options.simple !== true && (options.simple === false || !options.prepare)
      ) {
        query = this.#sql(template(text));
      } else {
        query = this.#sql.unsafe(text);
      }
      if (options.arrays === true) query.values();
    } catch (err) {
      return Promise.reject(this.#translate(err));
    }
    return query.then(undefined, (err: unknown) => {
      throw this.#translate(err);
    });
  }

  /** The error the caller should see: Bun's own (already translated by `query`). */
  explain(err: unknown): unknown {
    return err;
  }

  /**
   * Notes a statement made through `sql` (weakly) for `refuseUnsent`. Bun's `SQL` settles every
   * statement of a connection that closed itself: nothing else to keep.
   */
  adopt(statement: unknown): void {
    if (!(statement instanceof Promise)) return;
    let made = this.#made;
    if (made.length >= MADE_COMPACT_AT) {
      made = this.#made = made.filter((ref) => {
        const q = ref.deref();
        return q !== undefined && dispatched(q) === false;
      });
    }
    made.push(new WeakRef(statement as BunStatement));
  }

  /**
   * The checkout that made statements through `sql` is over: each of them not dispatched yet
   * (Bun's `SQL` runs a statement on its first then/execute) is cancelled, so that it rejects
   * with `reason()` when it is, unsent. Where Bun no longer shows whether a statement ran, none
   * is touched: cancelling one that runs would abort it.
   */
  refuseUnsent(reason: () => Error): void {
    for (const ref of this.#made) {
      const q = ref.deref();
      if (q === undefined || dispatched(q) !== false) continue;
      const reject = q.reject;
      // A cancelled statement rejects through its own reject when it is run: with our reason.
      q.reject = (_cancelled: unknown) => reject.call(q, reason());
      q.cancel();
    }
    this.#made = [];
  }

  /** Bun's `SQL` keeps the status of its answers to itself: unknown. */
  inBlock(): boolean | undefined {
    return undefined;
  }

  /** What is known of a statement (`text`) that rejected with `err` on this session. */
  outcomeOf(err: unknown, _text: string): Outcome {
    if (err instanceof SessionEndedError) return "not-executed";
    const fatal = isFatal(err);
    if (!fatal && !this.#isLost(err)) return "failed";
    // Bun holds every statement back until the start-up has finished.
    if (!this.#established) return "not-executed";
    // Bun rejects each statement in flight with the server's FATAL itself, the one that was
    // running among them: it ran in part (a sequence, dblink, a simple-protocol commit followed
    // by a duration log line outlive the termination), and Bun does not say which one it was.
    return "unknown";
  }

  /**
   * Whether `err` is this session's refusal itself (connect failed or timed out, the server
   * said no at start-up): the error the caller should see. Statements refused unsent are not.
   */
  isRefusal(err: unknown): boolean {
    return !this.#established && !(err instanceof SessionEndedError);
  }

  /**
   * Ends the session; statements in flight get `timeoutMs` before the connection is cut.
   * Resolves once the client has closed.
   */
  end(timeoutMs: number): Promise<void> {
    if (!this.#dead) {
      this.#ending = true;
      this.#dead = true;
      this.#disarm();
    }
    // A later, shorter timeout still counts (Bun keeps the shortest).
    return this.#sql.close({ timeout: Math.max(0, timeoutMs) / 1000 }).catch(noop);
  }

  // The connect deadline, from the first use (a session is opened lazily, on its first
  // statement); cleared once the start-up has finished.
  #arm(): void {
    if (this.#armed || this.#dead) return;
    this.#armed = true;
    this.#hooks.onDial?.();
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      if (this.#established || this.#dead) return;
      this.#timedOut = true;
      this.#dead = true;
      this.#sql.close({ timeout: 0 }).catch(noop);
      this.#hooks.onClose?.();
    }, this.#connectTimeoutMs);
  }

  #disarm(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #connected(): void {
    if (this.#dead) return;
    this.#established = true;
    this.#disarm();
    // The one start-up parameter whose value is known here (the server reports it too).
    this.#hooks.onParameter?.("application_name", this.#applicationName);
  }

  // Bun calls this (once per connection; a session has one) before it settles the statements
  // of that connection, and before it would open another one for the next statement.
  #closed(err: unknown): void {
    if (typeof err === "object" && err !== null) this.#lost.add(err);
    this.#disarm();
    if (this.#dead) return;
    this.#dead = true;
    this.#sql.close({ timeout: 0 }).catch(noop);
    this.#hooks.onClose?.();
  }

  // Lost: the connection went away with (or before) this error.
  #isLost(err: unknown): boolean {
    if (typeof err !== "object" || err === null) return this.#dead;
    if (this.#lost.has(err)) return true;
    if (isServerError(err)) return isFatal(err);
    const code = (err as ErrorFields).code;
    return typeof code === "string" && (lostCodes.has(code) || isTlsCode(code));
  }

  // Bun's errors in postgres.js's terms: SQLSTATE in `code`, connection codes renamed.
  #translate(err: unknown): unknown {
    if (typeof err !== "object" || err === null || err instanceof SessionEndedError) return err;
    const e = err as ErrorFields;
    if (isServerError(err)) {
      e.code = e.errno;
      if (isFatal(err)) this.#lose(err);
      return err;
    }
    const code = typeof e.code === "string" ? e.code : undefined;
    const renamed = code === undefined ? undefined : connectionCodes[code];
    if (renamed === undefined) {
      if (code !== undefined && (lostCodes.has(code) || isTlsCode(code))) this.#lose(err);
      else if (this.#dead && !this.#established) return this.#unsent(err);
      return err;
    }
    if (!this.#established && this.#dead) {
      // Held back until the start-up, which never finished: the deadline passed, or the
      // session was ended first.
      if (this.#timedOut) return this.#timeout();
      if (this.#ending) return new SessionEndedError();
    }
    e.code = renamed;
    this.#lose(err);
    return err;
  }

  #unsent(err: unknown): unknown {
    if (this.#timedOut) return this.#timeout();
    if (this.#ending) return new SessionEndedError();
    return err;
  }

  #lose(err: object): void {
    this.#lost.add(err);
    // Normally `onclose` came first; this covers any other order.
    if (!this.#dead) this.#closed(err);
  }

  #timeout(): Error {
    return Object.assign(
      new Error(`Connect timeout: ${this.#where} did not accept the session in time`),
      { code: "CONNECT_TIMEOUT" },
    );
  }
}
