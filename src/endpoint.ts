/**
 * One configured PostgreSQL server at run time: where it is, how to open a postgres.js client to
 * it, and what the pool currently knows of it (role, health).
 *
 * @module
 */

import { RepeatedTexts } from "./repeated_texts.ts";
import type { ResolvedEndpoint, SslMode } from "./config.ts";
import { BunSession } from "./driver/bun.ts";
import {
  type DriverSsl,
  Session,
  type SessionHooks,
  type SessionOptions,
  type StatementOptions,
  type TypeStore,
  type TypeTables,
} from "./driver/postgres.ts";
import type { DriverSession } from "./driver/session.ts";

/**
 * Detected role of an endpoint. `unknown` until its first connection or probe.
 *
 * @example Finding the primary in stats
 * ```ts
 * import { Pool } from "@x/pgdbpool";
 *
 * function primaryOf(pool: Pool) {
 *   return pool.stats().endpoints.find((e) => e.role === "primary");
 * }
 * ```
 */
export type EndpointRole = "primary" | "replica" | "unknown";

/**
 * Health of an endpoint: `down` endpoints are skipped until a probe succeeds.
 *
 * @example Counting healthy endpoints
 * ```ts
 * import { Pool } from "@x/pgdbpool";
 *
 * const healthy = (pool: Pool) => pool.stats().endpoints.filter((e) => e.state === "up").length;
 * ```
 */
export type EndpointState = "up" | "down";

/**
 * Where a handler's connection goes: printable, never carries credentials.
 *
 * @example Logging which server answered
 * ```ts
 * import { Pool } from "@x/pgdbpool";
 *
 * async function whoAnswers(pool: Pool) {
 *   using db = pool.handler("read");
 *   await db.query("SELECT 1");
 *   return `${db.endpoint?.host}:${db.endpoint?.port} (db[${db.endpoint?.index}])`;
 * }
 * ```
 */
export interface EndpointInfo {
  /** Host name or address. */
  readonly host: string;
  /** TCP port. */
  readonly port: number;
  /** Index of the endpoint in the configuration's `db` list. */
  readonly index: number;
}

const sslOption: Record<Exclude<SslMode, "verify-full">, DriverSsl> = {
  "disable": false,
  "prefer": "prefer",
  "require": "require",
};

/** A server of the pool. Shared by every group that lists it. */
export class Endpoint {
  /** Printable identity (host, port, index). */
  readonly info: EndpointInfo;
  /** Detected role. */
  role: EndpointRole = "unknown";
  /** Health state. */
  state: EndpointState = "up";
  /** Connection-level errors seen on this endpoint. */
  errors = 0;
  /** Why the endpoint was last marked down (an error code or message, never credentials). */
  lastError: string | undefined;
  /** Failed probes since the server last stayed up for a whole back-off period. */
  failures = 0;
  /** `performance.now()` when the endpoint last came up (0: up since the start). */
  upSince = 0;
  /** While down: when the next (single, half-open) probe may run. */
  retryAt = 0;
  /** Health probes run so far. */
  probes = 0;
  /** `performance.now()` of the last finished probe. */
  lastProbeAt = -Infinity;
  /** `performance.now()` of the last probe that got an answer. */
  answeredAt = -Infinity;
  /** `performance.now()` of the last connection-level failure a statement reported. */
  reportedAt = -Infinity;
  /** The probe in flight, so that there is never more than one. */
  probing: Promise<void> | undefined;
  /** Replay position (replica) or current WAL position (primary) at the last probe. */
  lsn: bigint | undefined;
  /** Replication lag at the last probe, in milliseconds (0 for a primary). */
  lagMs = 0;
  /**
   * `lagMs` was measured in the current role. A replica known only from a session's start-up
   * parameters has no measured lag: a group with `max_replica_lag_ms` waits for a probe.
   */
  lagKnown = false;
  /**
   * Probe start of the last probe that found nothing waiting for replay and nothing behind the
   * primary's positions, with a primary up (or found a primary): WAL waiting now arrived after
   * it, which bounds the replica's own figure of its lag.
   */
  caughtUpAt = -Infinity;
  /** Smoothed probe round trip, in milliseconds. */
  latencyMs: number | undefined;
  /** When this endpoint was last seen to become primary (a promotion), for split-brain ties. */
  promotedAt = 0;
  /**
   * The timeline a primary writes on, from its last probe; `undefined` on a replica or before
   * a probe. Of two servers that both claim the primary role, the later timeline is the later
   * promotion.
   */
  timeline: number | undefined;
  /**
   * On a replica, a timeline its replay has reached (from pg_control, its last restartpoint's or
   * minimum recovery point's: it may be behind the one it replays now); `undefined` on a primary,
   * before a probe, or where pg_control is denied to the role.
   */
  replayTimeline: number | undefined;
  /** pg_control functions are denied to this role here: probes leave them out. */
  controlDenied = false;
  /** Options passed with a statement, built once: as configured, and rows as arrays. */
  readonly #queryOptions: StatementOptions;
  readonly #arrayOptions: StatementOptions;
  /** The same for a recurring text without parameters: a named statement, extended protocol. */
  readonly #preparedOptions: StatementOptions;
  readonly #preparedArrayOptions: StatementOptions;
  /**
   * How the pool's own fixed statements are sent (BEGIN, COMMIT, ROLLBACK, the token query): as
   * named prepared statements when sessions prepare, so the server parses and plans them once
   * per session and Bun pipelines them; unprepared otherwise (PgBouncer in transaction mode).
   */
  readonly controlOptions: StatementOptions;
  /** Set when sessions prepare statements (`prepare`, the default). */
  readonly #repeated: RepeatedTexts | undefined;
  readonly #settings: ResolvedEndpoint;
  /** Array types learnt by the first session that connected. */
  #types: TypeTables | undefined;
  /** The type tables every pooled session of this server reads and extends (postgres.js). */
  readonly #typeStore: TypeStore = {};
  readonly #applicationName: string;

  constructor(settings: ResolvedEndpoint, applicationName: string) {
    this.#settings = settings;
    this.#applicationName = applicationName;
    this.info = Object.freeze({ host: settings.host, port: settings.port, index: settings.index });
    this.#queryOptions = { prepare: settings.prepare };
    this.#arrayOptions = { prepare: settings.prepare, arrays: true };
    this.#preparedOptions = { prepare: true, simple: false };
    this.#preparedArrayOptions = { prepare: true, simple: false, arrays: true };
    this.controlOptions = settings.prepare ? this.#preparedOptions : { prepare: false };
    this.#repeated = settings.prepare ? new RepeatedTexts() : undefined;
  }

  /** How to send `text` (with `params`) on this endpoint's sessions. */
  statementOptions(
    text: string,
    params: readonly unknown[] | undefined,
    arrays: boolean,
  ): StatementOptions {
    // Small: V8 inlines it into the one-shot path, within a budget (see one_shot.ts `send`).
    if (params === undefined || params.length === 0) return this.#withoutParams(text, arrays);
    return arrays ? this.#arrayOptions : this.#queryOptions;
  }

  #withoutParams(text: string, arrays: boolean): StatementOptions {
    if (this.#repeated !== undefined && this.#repeated.repeated(text)) {
      return arrays ? this.#preparedArrayOptions : this.#preparedOptions;
    }
    return arrays ? this.#arrayOptions : this.#queryOptions;
  }

  /** The database name sessions open. */
  get database(): string {
    return this.#settings.database;
  }

  #ssl(): DriverSsl {
    const s = this.#settings;
    if (s.ssl !== "verify-full") return sslOption[s.ssl];
    return s.sslRootCert === undefined
      ? { rejectUnauthorized: true, host: s.host }
      : { ca: s.sslRootCert, rejectUnauthorized: true, host: s.host };
  }

  /** Seconds allowed to connect. */
  get connectTimeoutS(): number {
    return this.#settings.connectTimeoutS;
  }

  /**
   * Opens (lazily, on its first statement) one pooled session. One session per pooled
   * connection: postgres.js's own multi-host and `reserve()` paths hang or misroute (see
   * ARCHITECTURE.md).
   */
  session(hooks: SessionHooks): DriverSession {
    const s = this.#settings;
    const parameters: Record<string, string | number> = {
      application_name: this.#applicationName,
    };
    if (s.queryTimeoutMs !== undefined) parameters.statement_timeout = s.queryTimeoutMs;
    if (s.tmpBufferMb !== undefined) parameters.temp_buffers = `${s.tmpBufferMb}MB`;
    // The first sessions learn the server's array types; later ones start from what they learnt.
    return this.#open(s.prepare, this.#types ?? "fetch", parameters, {
      ...hooks,
      onTypes: (tables) => this.#types ??= tables,
    }, this.#typeStore);
  }

  /** A session for health probes, told apart on the server by its `application_name`. */
  probeSession(): DriverSession {
    return this.#open(false, "none", { application_name: `${this.#applicationName}/health` }, {});
  }

  /**
   * The session `pool.listen()` keeps on the primary (`<name>/listen` on the server). Always
   * postgres.js: Bun's `SQL` drops notifications on its connections.
   */
  listenSession(hooks: SessionHooks): Session {
    return new Session(
      this.#options(false, "none", { application_name: `${this.#applicationName}/listen` }),
      hooks,
    );
  }

  #open(
    prepare: boolean,
    types: TypeTables | "fetch" | "none",
    parameters: Record<string, string | number>,
    hooks: SessionHooks,
    typeStore?: TypeStore,
  ): DriverSession {
    const options = this.#options(prepare, types, parameters, typeStore);
    return this.#settings.driver === "bun"
      ? new BunSession(options, hooks)
      : new Session(options, hooks);
  }

  #options(
    prepare: boolean,
    types: TypeTables | "fetch" | "none",
    parameters: Record<string, string | number>,
    typeStore?: TypeStore,
  ): SessionOptions {
    const s = this.#settings;
    return {
      typeStore,
      host: s.host,
      port: s.port,
      database: s.database,
      user: s.user,
      password: s.password,
      ssl: this.#ssl(),
      connectTimeoutS: s.connectTimeoutS,
      prepare,
      types,
      parameters,
    };
  }

  /** JSON form: identity and state, never credentials. */
  toJSON(): {
    host: string;
    port: number;
    index: number;
    role: EndpointRole;
    state: EndpointState;
  } {
    return { ...this.info, role: this.role, state: this.state };
  }
}
