/**
 * The one place that knows postgres.js. A {@linkcode Session} is one server session on a
 * single-connection postgres.js client, with the client's habits routed around:
 *
 * - it never reconnects: once its connection closes it is dead for good, and anything sent
 *   later is refused unsent (a `max: 1` client would otherwise open a new session silently);
 * - it reads nothing from the environment (`PG*` variables) and parses no host strings: every
 *   option is given explicitly, hosts and ports as arrays, so IPv6 literals work;
 * - the password is handed over as a function, so no readable property holds it;
 * - it can tell, after a failure, whether a statement provably never ran.
 *
 * @module
 */

import postgres from "postgres";
import { isConnectionError } from "../sqlstate.ts";
import { nullAwareParsers } from "./array_parser.ts";
import { guardedSerializers, UNDEFINED, unencodable } from "./encoding.ts";
import { terminatedCodes, unrunWhenTerminated } from "./termination.ts";

/** The postgres.js tagged template of a session (public as `Sql`). */
export type DriverSql = postgres.Sql;

/** TLS settings in postgres.js's form. */
export type DriverSsl =
  | false
  | "prefer"
  | "require"
  /**
   * `verify-full`: the chain (against `ca` when given, else the system's roots) and `host`, the
   * address dialled. postgres.js names no TLS server for an IP address, and Node's TLS then
   * checks the socket's host, which a socket opened by the driver lacks on Deno ("localhost"
   * was checked instead): the host is always passed.
   */
  | { ca?: string; rejectUnauthorized: true; host: string };

/** Everything needed to open one session. */
export interface SessionOptions {
  readonly host: string;
  readonly port: number;
  readonly database: string;
  readonly user: string;
  readonly password: () => string;
  readonly ssl: DriverSsl;
  readonly connectTimeoutS: number;
  readonly prepare: boolean;
  /**
   * Array types of the server: `"fetch"` learns them at connect (one catalog query, and a
   * window in which postgres.js leaves a rejection unhandled if the session dies), a table
   * learnt by an earlier session of the same server skips both, `"none"` for probes.
   */
  readonly types: TypeTables | "fetch" | "none";
  /**
   * Where the sessions of one server keep their type tables: the first session fills it, every
   * other reads and extends the same tables (without it, each session copies them). Sessions
   * opened together before any has learnt the array types then build them once, not once each.
   */
  readonly typeStore?: TypeStore;
  /** Start-up parameters (`application_name`, `statement_timeout`, ...). */
  readonly parameters: Readonly<Record<string, string | number>>;
}

/** The type tables shared by the sessions of one server (see `SessionOptions.typeStore`). */
export interface TypeStore {
  tables?: TypeTables;
}

/** Array-type tables a session learnt at connect, to seed later sessions of the same server. */
export interface TypeTables {
  readonly parsers: Readonly<Record<string, unknown>>;
  readonly serializers: Readonly<Record<string, unknown>>;
  readonly typeArrayMap: Readonly<Record<string, unknown>>;
}

/** What a session reports to its owner. */
export interface SessionHooks {
  /** The array types the server reported at connect (sessions with `types: "fetch"`). */
  onTypes?(tables: TypeTables): void;
  /**
   * The session dials its server (once; sessions open lazily, on their first statement). Not
   * called by postgres.js on workerd, which opens its own socket.
   */
  onDial?(): void;
  /** A start-up or changed server parameter (`in_hot_standby`, ...). */
  onParameter?(key: string, value: string): void;
  /** The server session ended (once). */
  onClose?(): void;
  /** A NOTIFY on a channel this session listens to. */
  onNotify?(channel: string, payload: string): void;
}

/**
 * What is known of a failed statement: `failed` (the server ran it and reported an error; the
 * session lives on), `not-executed` (provably never ran), `unknown` (the connection was lost
 * while it may have been running).
 */
export type Outcome = "failed" | "not-executed" | "unknown";

/** A statement refused unsent because its session had already ended. */
export class SessionEndedError extends Error {
  /** A connection-level code, so every classifier treats it as a lost connection. */
  readonly code = "CONNECTION_ENDED";
  constructor() {
    super("The server session has ended; the statement was not sent");
    this.name = "SessionEndedError";
  }
}

const noop = () => {};

interface NetModule {
  Socket: new () => NetSocket;
}
interface NetSocket {
  host?: string;
  port?: number;
  on(event: "data", fn: (chunk: Uint8Array) => void): unknown;
  connect(port: number, host: string): unknown;
  destroy(): unknown;
  emit(event: string, ...args: unknown[]): boolean;
}

/** The parts of a postgres.js query object the driver relies on (3.4.x internals). */
interface Handed {
  /**
   * Set when a connection takes the query (it may be written from then on); null before.
   * postgres.js takes none before its array types are in.
   */
  readonly state: unknown;
  /** Set on the first then/catch: a query nobody awaited is never sent (and never settled). */
  executed: boolean;
  /** postgres.js's mark of the query the server is answering now (the others wait behind it). */
  readonly active: boolean;
  /** What postgres.js calls a tick after the first then/catch, to send the query. */
  handler: (query: Handed) => void;
  resolve(value: unknown): void;
  reject(err: unknown): void;
}

/**
 * The session's own statements are held strongly (their callers await them at once); db.sql's
 * weakly: one nobody holds any more must not stay reachable through the session (it would keep
 * its handler reachable for leak detection, and a fragment is never sent at all).
 */
type HandedEntry = Handed | WeakRef<Handed>;

function deref(entry: HandedEntry): Handed | undefined {
  return entry instanceof WeakRef ? entry.deref() : entry;
}

function isHanded(value: unknown): value is Handed {
  return value instanceof Promise && "state" in value && "executed" in value;
}

/** A statement on a session that has ended, refused unsent. */
function ended(): Promise<never> {
  return Promise.reject(new SessionEndedError());
}

/** Statements handed at which the written ones are dropped from a session's list. */
const HANDED_COMPACT_AT = 32;

/** How long `end()` waits for the server to close a session it was asked to end. */
const CLOSE_WAIT_MS = 1000;

// node:net exists on Deno, Bun and Node (reached through process.getBuiltinModule, which keeps
// this file free of Node types and dynamic imports); on workerd postgres.js brings its own
// sockets, and the FATAL sniffing below is simply not available there (outcomes stay "unknown").
const net: NetModule | null = (() => {
  const ua = (globalThis as { navigator?: { userAgent?: string } }).navigator?.userAgent;
  if (ua === "Cloudflare-Workers") return null;
  const process = (globalThis as {
    process?: { getBuiltinModule?: (id: string) => unknown };
  }).process;
  try {
    return (process?.getBuiltinModule?.("node:net") as NetModule | undefined) ?? null;
  } catch {
    return null;
  }
})();

/** Our options object, complete, so postgres.js never falls back to the environment. */
type ParsedOptions = Record<string, unknown> & {
  socket?: (() => unknown) | undefined;
  parsers: Record<string, unknown>;
  serializers: Record<string, unknown>;
};

let template: ParsedOptions | undefined;

// postgres.js returns an options object that already carries `shared` as is, without reading
// process.env. The serializers and parsers come from one template client made with every option
// explicit (a non-empty target_session_attrs keeps PGTARGETSESSIONATTRS out of it).
function parsedTemplate(): ParsedOptions {
  if (template !== undefined) return template;
  const sql = postgres({
    host: ["localhost"] as unknown as string,
    port: [5432] as unknown as number,
    database: "template",
    user: "template",
    pass: noop as unknown as string,
    target_session_attrs: "primary",
    ...explicitDefaults,
    connection: { application_name: "template" },
  } as unknown as postgres.Options<Record<string, postgres.PostgresType>>);
  template = sql.options as unknown as ParsedOptions;
  return template;
}

/**
 * The tables a session reads and extends: its server's shared ones when it has a store (made on
 * the first session, from what was known or postgres.js's defaults), else a copy of its own.
 */
function sessionTables(
  options: SessionOptions,
  known: TypeTables | undefined,
  base: ParsedOptions,
): TypeTables {
  const stored = options.typeStore?.tables;
  if (stored !== undefined) return stored;
  const typeArrayMap = { ...(known?.typeArrayMap ?? {}) };
  const tables: TypeTables = {
    // Array types learnt from here on read NULL elements as null (see array_parser.ts).
    parsers: nullAwareParsers((known ?? base).parsers, typeArrayMap),
    // Guarded: a value postgres.js cannot encode must fail its own statement, nothing else.
    serializers: guardedSerializers((known ?? base).serializers),
    typeArrayMap,
  };
  if (options.typeStore !== undefined && options.types !== "none") {
    options.typeStore.tables = tables;
  }
  return tables;
}

const explicitDefaults = {
  max: 1,
  ssl: false,
  sslnegotiation: null,
  // The pool retires connections itself (max_lifetime_ms, idle_timeout_ms).
  idle_timeout: 0,
  connect_timeout: 10,
  max_lifetime: null,
  max_pipeline: 100,
  backoff: 0,
  keep_alive: 60,
  prepare: true,
  debug: false,
  fetch_types: true,
  publications: "alltables",
};

/** How one statement is sent. */
export interface StatementOptions {
  /** Use a named prepared statement. */
  readonly prepare: boolean;
  /** Rows as arrays of column values instead of objects. */
  readonly arrays?: boolean;
  /**
   * `false`: the extended protocol even without parameters (one statement). `true`: the simple
   * protocol, nothing named, on either driver. Left out, a text without parameters goes through
   * the simple protocol on postgres.js (several statements allowed); see the Bun driver for its.
   */
  readonly simple?: boolean;
}

/** One server session. Dies once; never reconnects. */
export class Session {
  /** The postgres.js tagged template of this session. */
  readonly sql: postgres.Sql;
  readonly #options: ParsedOptions;
  readonly #hooks: SessionHooks;
  #dead = false;
  #established = false;
  #ending = false;
  #tail: Uint8Array | undefined;
  #beforeTail: Uint8Array | undefined;
  #fatal: string | undefined | null = null;
  /** A socket exists and has not closed yet. */
  #open = false;
  #socket: NetSocket | undefined;
  #onClosed: (() => void) | undefined;
  /**
   * Statements handed to postgres.js that may not have reached its connection yet. When the
   * connection dies, postgres.js rejects what it wrote, but what it still held in its own queue
   * can wait forever (its end() skips the sweep when the connection looks idle): those are
   * rejected here, as never executed.
   */
  #handed: (HandedEntry | undefined)[] = [];
  /** db.sql statements dispatched to the connection and not settled yet (see `#watch`). */
  #sqlOpen = 0;
  /** db.sql statements the connection was handed, or settled (see `#watch`). */
  readonly #sqlSeen = new WeakSet<Handed>();
  /**
   * Entries of `#handed` in use. The array keeps its length and is compacted in place: setting
   * a shorter length made V8 shrink and regrow its store, a few hundred bytes of garbage per
   * statement under load.
   */
  #handedCount = 0;
  /** `#handedCount` at which `#hand` compacts next (see `#compact`). */
  #compactAt = HANDED_COMPACT_AT;
  /** The first statement's success proves the array types were learnt: report them once. */
  #learnTypes: boolean;
  /**
   * postgres.js is fetching array types (between start-up and the first statement's answer).
   * It drops that fetch's promise, so a connection lost now would reject it unhandled: the
   * driver then takes the loss away from postgres.js and settles everything itself.
   */
  #fetchingTypes: boolean;
  /** postgres.js was never told this session ended: it must never be asked to end it either. */
  #abandoned = false;
  /**
   * The statement the server was running when it ended the session, rejected by the driver
   * itself (see `#rejectRunning`): it ran, at least in part, so its outcome is unknown.
   */
  readonly #ran = new WeakSet<object>();
  /** The server ended the session while some statement ran that the driver could not find. */
  #runningUnknown = false;
  #runningSettled = false;
  /** TLS may be on: what passes the socket is then ciphertext (see `inBlock`). */
  readonly #tls: boolean;

  constructor(options: SessionOptions, hooks: SessionHooks) {
    this.#hooks = hooks;
    this.#tls = options.ssl !== false;
    this.#learnTypes = this.#fetchingTypes = options.types === "fetch";
    const known = typeof options.types === "object" ? options.types : undefined;
    const base = parsedTemplate();
    const tables = sessionTables(options, known, base);
    const parsed: ParsedOptions = {
      ...base,
      ...explicitDefaults,
      host: [options.host],
      port: [options.port],
      path: false,
      database: options.database,
      user: options.user,
      pass: options.password,
      ssl: options.ssl,
      connect_timeout: options.connectTimeoutS,
      prepare: options.prepare,
      fetch_types: options.types === "fetch",
      connection: { ...options.parameters },
      target_session_attrs: null,
      transform: { ...(base.transform as object), undefined: UNDEFINED },
      onnotice: noop,
      onnotify: hooks.onNotify,
      onparameter: (key: string, value: string) => {
        this.#established = true;
        this.#open = true;
        this.#hooks.onParameter?.(key, value);
      },
      onclose: () => this.#closed(),
      parameters: {},
      // Array types learnt at connect are added to these (postgres.js skips a type that is
      // there already, so sessions sharing them build each parser once).
      shared: { retries: 0, typeArrayMap: tables.typeArrayMap },
      parsers: tables.parsers,
      serializers: tables.serializers,
      socket: undefined,
    };
    if (net !== null) parsed.socket = () => this.#openSocket(net, options);
    this.#options = parsed;
    this.sql = postgres(
      parsed as unknown as postgres.Options<Record<string, postgres.PostgresType>>,
    );
  }

  /** Whether the server accepted the session (its start-up finished at some point). */
  get established(): boolean {
    return this.#established;
  }

  /** Whether the session has ended: nothing will be sent on it again. */
  get dead(): boolean {
    return this.#dead;
  }

  /** Sends a statement (on its first `then`/`catch`, postgres.js style), or refuses it unsent. */
  query(
    text: string,
    params: readonly unknown[] | undefined,
    options: StatementOptions,
  ): Promise<postgres.RowList<postgres.Row[]>> {
    if (this.#dead) return ended();
    const query = this.sql.unsafe(
      text,
      params as postgres.ParameterOrJSON<never>[] | undefined,
      options,
    );
    this.#hand(query as unknown as Handed);
    // The rare cases out of line: V8 inlines a caller's chain down to postgres.js's Query
    // constructor only within a bytecode budget, and a Query built out of line left the
    // statement's objects to survive young-generation collections (3x the GC time of a
    // /queries-shaped load on Deno; bench/README.md).
    if (options.arrays === true || this.#learnTypes) this.#unusual(query, text, options);
    return query;
  }

  #unusual(
    query: ReturnType<postgres.Sql["unsafe"]>,
    text: string,
    options: StatementOptions,
  ): void {
    // Rows as arrays of values (query builders that map columns by position need them).
    if (options.arrays === true) query.values();
    if (this.#learnTypes) {
      this.#learnTypes = false;
      // Sends it now, which is the order every caller sends in anyway.
      query.then(() => {
        this.#fetchingTypes = false;
        this.#hooks.onTypes?.(this.#tables());
      }, (err) => {
        // The server ran the statement and said no: the type query was answered before it. A
        // lost connection or a FATAL (one in the start-up reply's segment rejects this statement
        // while the type query is about to go out) proves nothing: the fetch may be under way.
        if (this.outcomeOf(err, text) === "failed") this.#fetchingTypes = false;
      });
    }
  }

  /**
   * Takes a statement made through `sql` (`db.sql`) into the session's books, as `query` does
   * with its own, so that it is settled when the session ends in a way postgres.js is not told
   * of (see `#abandon`). Anything else (helpers, fragments' values) is ignored.
   */
  adopt(statement: unknown): void {
    if (!isHanded(statement)) return;
    this.#hand(new WeakRef(statement));
    this.#watch(statement);
  }

  /**
   * Counts `q` among the db.sql statements on their way from its dispatch until it settles:
   * while one is, the last answer the session received is not its last word (`inBlock`).
   */
  #watch(q: Handed): void {
    let open = false;
    const close = () => {
      this.#sqlSeen.add(q);
      if (open) {
        open = false;
        this.#sqlOpen--;
      }
    };
    const { handler, resolve, reject } = q;
    q.handler = (query) => {
      this.#sqlSeen.add(q);
      if (!open) {
        open = true;
        this.#sqlOpen++;
      }
      handler.call(q, query);
    };
    q.resolve = (value) => {
      close();
      return resolve.call(q, value);
    };
    q.reject = (err) => {
      close();
      return reject.call(q, err);
    };
  }

  /** Whether a db.sql statement was dispatched and is not answered yet (see `#watch`). */
  #sqlInFlight(): boolean {
    if (this.#sqlOpen > 0) return true;
    // Dispatched (its then called) but not handed to the connection yet (postgres.js does that
    // a tick later): such entries are never compacted away (see `#hand`).
    for (let i = 0; i < this.#handedCount; i++) {
      const entry = this.#handed[i]!;
      // db.sql's are the weakly held ones; the pool's own are never in flight when asked.
      if (!(entry instanceof WeakRef)) continue;
      const q = entry.deref();
      if (q !== undefined && q.executed && !this.#sqlSeen.has(q)) return true;
    }
    return false;
  }

  /**
   * The checkout that made statements through `sql` is over: each of them not dispatched yet
   * (postgres.js sends a statement on its first then/catch, a tick later) is refused with
   * `reason` when it is, unsent, instead of running on whichever checkout holds the session by
   * then. Dispatched ones were queued on the socket before anything sent after this.
   */
  refuseUnsent(reason: () => Error): void {
    const handed = this.#handed;
    for (let i = 0; i < this.#handedCount; i++) {
      const q = deref(handed[i]!);
      if (q !== undefined && !q.executed) q.handler = (query) => query.reject(reason());
    }
  }

  /**
   * The server ended the session (its last words a terminating FATAL): the statement it was
   * running is rejected here, before postgres.js rejects everything in flight with one error,
   * so that it alone reads as "unknown". A terminated statement ran in part: what it did outside
   * its transaction (a sequence, dblink, a simple-protocol autocommit write whose commit was
   * followed by a duration log line, where the server acts on the termination) stays. Those
   * queued behind it never started and may move. When the running one cannot be found (its entry
   * was compacted away), every statement in flight is unknown.
   */
  #rejectRunning(): void {
    if (this.#runningSettled || !this.#established) return;
    this.#runningSettled = true;
    const code = this.#fatalCode();
    if (code === undefined || !terminatedCodes.has(code)) return;
    for (let i = 0; i < this.#handedCount; i++) {
      const q = deref(this.#handed[i]!);
      if (q !== undefined && q.active) {
        const err = Object.assign(
          new Error("The server ended the session while the statement ran"),
          { code: "CONNECTION_CLOSED" },
        );
        this.#ran.add(err);
        q.reject(err);
        return;
      }
    }
    this.#runningUnknown = true;
  }

  #hand(query: HandedEntry): void {
    // Small on purpose (see `query`): the compaction is out of line.
    if (this.#handedCount >= this.#compactAt) this.#compact();
    this.#handed[this.#handedCount++] = query;
  }

  /**
   * Answered statements are dropped now and then, in place. The one the server is answering
   * stays, and so does every statement taken after it (a `state` set by the connection, waiting
   * on the socket): one of those is the one running when the server ends the session, which
   * `#rejectRunning` must find, or every statement in flight reads as unknown and none that
   * provably never started is re-sent. Statements nobody dispatched yet stay (weakly) until the
   * checkout that made them ends (see `refuseUnsent`).
   */
  #compact(): void {
    const handed = this.#handed;
    const count = this.#handedCount;
    // postgres.js answers its statements in the order they were taken, which is the order they
    // were handed for the pool's own (db.sql's are taken on their first then): taken ones
    // before the one being answered were answered. With none being answered, none waits.
    let answering = count;
    for (let i = 0; i < count; i++) {
      const q = deref(handed[i]!);
      if (q !== undefined && q.active) {
        answering = i;
        break;
      }
    }
    let kept = 0;
    for (let i = 0; i < count; i++) {
      const entry = handed[i]!;
      const q = deref(entry);
      if (q === undefined) continue;
      if (q.state !== null) {
        this.#fetchingTypes = false;
        if (i >= answering) handed[kept++] = entry;
      } else handed[kept++] = entry;
    }
    for (let i = kept; i < count; i++) handed[i] = undefined;
    // With a deep pipeline most entries are still in flight: compacting again at the next
    // statement would scan them all once per statement.
    this.#compactAt = Math.max(HANDED_COMPACT_AT, 2 * kept);
    this.#handedCount = kept;
  }

  /**
   * Whether postgres.js may still be fetching array types. It takes no statement before they
   * are in: one taken proves the fetch over, whether the pool or db.sql sent it (a session only
   * db.sql used counted as fetching for good, and its statements hung when it died).
   */
  #stillFetchingTypes(): boolean {
    if (!this.#fetchingTypes) return false;
    for (let i = 0; i < this.#handedCount; i++) {
      const q = deref(this.#handed[i]!);
      if (q !== undefined && q.state !== null) return this.#fetchingTypes = false;
    }
    return true;
  }

  /**
   * The error the caller should see for a statement that rejected with `err`: the encoding
   * error of a value the driver could not send (see `encoding.ts`), else `err` itself.
   */
  explain(err: unknown): unknown {
    return unencodable(err) ?? err;
  }

  /**
   * The status byte of the last ReadyForQuery received, the last message of every answer
   * (postgres.js reads it and keeps it to itself): `I` outside a block, `T` inside one, `E` in a
   * failed one. Unknown over TLS (only ciphertext passes here), on workerd (postgres.js's own
   * sockets), when something else arrived after it (a notification), and while a db.sql
   * statement is on its way (its answer is still to come).
   */
  inBlock(): boolean | undefined {
    const tail = this.#tail;
    if (tail === undefined || this.#tls) return undefined;
    // A db.sql statement still on its way (a BEGIN) will answer after the last one received: a
    // check-in after a release that did not wait for it used to read "idle" and send no
    // ROLLBACK, and the next checkout's writes were acknowledged inside the block it opened.
    if (this.#sqlInFlight()) return undefined;
    const status = readyStatus(this.#beforeTail, tail);
    return status === undefined ? undefined : status !== 0x49; // 'I'
  }

  /** What is known of a statement (`text`) that rejected with `err` on this session. */
  outcomeOf(err: unknown, text: string): Outcome {
    if (err instanceof SessionEndedError) return "not-executed";
    const fatal = (err as { severity?: unknown } | null)?.severity === "FATAL";
    if (!fatal && !isConnectionError(err) && !isForeignRequest(err)) return "failed";
    // Nothing is written before the start-up exchange has finished.
    if (!this.#established) return "not-executed";
    // Written statements are rejected the moment the connection closes; what postgres.js still
    // held unwritten is rejected by our end() afterwards.
    if ((err as { code?: unknown }).code === "CONNECTION_DESTROYED" && !this.#ending) {
      return "not-executed";
    }
    if (this.#runningUnknown || this.#ran.has(err as object)) return "unknown";
    return unrunWhenTerminated(this.#fatalCode(), text) ? "not-executed" : "unknown";
  }

  /**
   * Whether `err` is this session's refusal itself (connect failed, the server said no at
   * start-up): the error the caller should see. Statements merely held back because of it
   * (refused unsent, unwritten when the connection closed) are not.
   */
  isRefusal(err: unknown): boolean {
    return !this.#established && !(err instanceof SessionEndedError) &&
      (err as { code?: unknown } | null)?.code !== "CONNECTION_DESTROYED" &&
      !isForeignRequest(err);
  }

  /**
   * Ends the session; statements in flight get `timeoutMs` before the socket is cut. Resolves
   * once the connection has closed (or, if the server does not answer, it was torn down).
   */
  async end(timeoutMs: number): Promise<void> {
    if (this.#abandoned) return;
    if (this.#established && this.#socket !== undefined && this.#stillFetchingTypes()) {
      return this.#abandon();
    }
    this.#ending = true;
    this.#dead = true;
    this.#refuseReconnect();
    this.#rejectUnwritten();
    // Start-up not seen to finish: nothing was written, so nothing needs a grace period, and its
    // reply must never be read now. postgres.js destroys the connection a timer tick after its
    // end(); a reply read in between would make it send its type query (rejected unhandled by
    // that destroy) or the first statement, which was just reported as never sent.
    if (!this.#established) this.#socket?.destroy();
    await this.sql.end({ timeout: timeoutMs / 1000 }).catch(noop);
    if (!this.#open) return;
    let timer: ReturnType<typeof setTimeout> | undefined;
    await new Promise<void>((resolve) => {
      this.#onClosed = resolve;
      timer = setTimeout(resolve, CLOSE_WAIT_MS);
    });
    clearTimeout(timer);
    // A hung host never closes its side: do not keep the socket around for TCP to give up.
    if (this.#open) this.#socket?.destroy();
  }

  #closed(): void {
    this.#open = false;
    this.#onClosed?.();
    if (this.#dead && this.#ending) return;
    this.#dead = true;
    this.#refuseReconnect();
    this.#rejectUnwritten();
    // postgres.js re-queues what it still held unwritten onto a reconnect; refused above, then
    // rejected here (CONNECTION_DESTROYED), never sent.
    this.sql.end({ timeout: 0 }).catch(noop);
    this.#hooks.onClose?.();
  }

  // The connection is lost (or ended) while postgres.js fetches array types: postgres.js is
  // never told (it would reject its dropped promise), every statement handed to it is settled
  // here, and the socket is destroyed. The client object is left to the garbage collector.
  #abandon(): void {
    if (this.#abandoned) return;
    this.#abandoned = true;
    this.#dead = true;
    this.#open = false;
    this.#refuseReconnect();
    for (const query of this.#takeHanded()) {
      query.reject(
        query.state === null
          ? new SessionEndedError()
          : Object.assign(new Error("The connection closed during start-up"), {
            code: "CONNECTION_CLOSED",
          }),
      );
    }
    this.#socket?.destroy();
    this.#onClosed?.();
    this.#hooks.onClose?.();
  }

  #tables(): TypeTables {
    const o = this.#options;
    return {
      parsers: o.parsers,
      serializers: o.serializers,
      typeArrayMap: (o.shared as { typeArrayMap: Record<string, unknown> }).typeArrayMap,
    };
  }

  #rejectUnwritten(): void {
    for (const query of this.#takeHanded()) {
      if (query.state === null) query.reject(new SessionEndedError());
    }
  }

  /**
   * Every statement still handed that someone awaits, oldest first; the list is empty
   * afterwards. One nobody dispatched (a db.sql fragment) is never sent: rejecting it would
   * only raise an unhandled rejection.
   */
  #takeHanded(): Handed[] {
    const taken: Handed[] = [];
    for (let i = 0; i < this.#handedCount; i++) {
      const q = deref(this.#handed[i]!);
      if (q !== undefined && q.executed) taken.push(q);
    }
    this.#handed = [];
    this.#handedCount = 0;
    return taken;
  }

  #refuseReconnect(): void {
    this.#options.socket = () => {
      throw new SessionEndedError();
    };
  }

  #openSocket(net: NetModule, options: SessionOptions): NetSocket {
    // postgres.js retries a connect that closed during start-up without telling anyone (no
    // onclose): one socket per session, so that retry is a dead session instead.
    if (this.#socket !== undefined) {
      this.#closed();
      throw new SessionEndedError();
    }
    const socket = new net.Socket();
    // postgres.js reads these for TLS server names; connect() is left to us with a socket option.
    socket.host = options.host;
    socket.port = options.port;
    this.#socket = socket;
    this.#open = true;
    this.#hooks.onDial?.();
    const emit = socket.emit;
    const other = (event: string, args: unknown[]): boolean => {
      // postgres.js does not report a close it answers with a reconnect (refused by then).
      if (event === "close") {
        this.#open = false;
        this.#onClosed?.();
      }
      if (event === "close" || event === "error") this.#rejectRunning();
      if (
        (event === "close" || event === "error") &&
        (this.#abandoned || (this.#established && this.#stillFetchingTypes()))
      ) {
        this.#abandon();
        return true;
      }
      return emit.apply(socket, [event, ...args]);
    };
    // Every event passes here before postgres.js sees it. Data, by far the most frequent, takes
    // a fixed-arity path that only keeps the last two chunks (a rest array and a spread per
    // event, and a second listener, showed in profiles of single-caller loops).
    const keep = (chunk: Uint8Array): void => {
      this.#beforeTail = this.#tail;
      this.#tail = chunk;
    };
    socket.emit = function (event: string, chunk?: unknown): boolean {
      if (event === "data") {
        keep(chunk as Uint8Array);
        return emit.call(socket, event, chunk);
      }
      return other(event, Array.prototype.slice.call(arguments, 1));
    };
    socket.connect(options.port, options.host);
    return socket;
  }

  // The server's last words before it closed: a trailing ErrorResponse, if any. Parsed only
  // after a failure, from the last two chunks received (TLS hides them: then nothing is known).
  #fatalCode(): string | undefined {
    if (this.#fatal !== null) return this.#fatal;
    const tail = this.#tail;
    if (tail === undefined) return this.#fatal = undefined;
    const before = this.#beforeTail;
    const buf = before === undefined ? tail : concat(before, tail);
    return this.#fatal = trailingFatal(buf);
  }
}

const FOREIGN_REQUEST = "Cannot perform I/O on behalf of a different request";

/**
 * workerd's refusal of a socket write made outside the request that opened the socket (a pool
 * kept at module scope). The server said nothing: it is no statement's failure, and postgres.js
 * closes the connection over it, rejecting with it what it had already written too, so it reads
 * as a lost connection (`unknown` once the session was established, never re-sent). workerd
 * gives it no code: its message is all there is.
 */
function isForeignRequest(err: unknown): boolean {
  const message = (err as { message?: unknown } | null)?.message;
  return typeof message === "string" && message.startsWith(FOREIGN_REQUEST);
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}

/**
 * The status byte of a ReadyForQuery message (`Z`, length 5, status `I`, `T` or `E`) that ends
 * exactly where `tail` does (it may have begun in `before`), else `undefined`.
 */
export function readyStatus(
  before: Uint8Array | undefined,
  tail: Uint8Array,
): number | undefined {
  const n = tail.length;
  const m = before?.length ?? 0;
  // The i-th byte from the end, 1-based, across the two chunks.
  const fromEnd = (i: number): number | undefined =>
    i <= n ? tail[n - i] : i - n <= m ? before![m - (i - n)] : undefined;
  if (
    fromEnd(6) !== 0x5a || fromEnd(5) !== 0 || fromEnd(4) !== 0 || fromEnd(3) !== 0 ||
    fromEnd(2) !== 5
  ) {
    return undefined;
  }
  const status = fromEnd(1);
  return status === 0x49 || status === 0x54 || status === 0x45 ? status : undefined;
}

/** The SQLSTATE of a FATAL ErrorResponse that ends exactly at the end of `buf`. */
export function trailingFatal(buf: Uint8Array): string | undefined {
  const n = buf.length;
  for (let i = 0; i + 5 <= n; i++) {
    if (buf[i] !== 0x45) continue; // 'E'
    const len = ((buf[i + 1] << 24) | (buf[i + 2] << 16) | (buf[i + 3] << 8) | buf[i + 4]) >>> 0;
    if (i + 1 + len !== n) continue;
    let severity: string | undefined;
    let code: string | undefined;
    let j = i + 5;
    while (j < n && buf[j] !== 0) {
      const field = buf[j++];
      let end = j;
      while (end < n && buf[end] !== 0) end++;
      const value = String.fromCharCode(...buf.subarray(j, end));
      if (field === 0x56 || (field === 0x53 && severity === undefined)) severity = value; // V, S
      else if (field === 0x43) code = value; // C
      j = end + 1;
    }
    if (severity === "FATAL" || severity === "PANIC") return code;
  }
  return undefined;
}
