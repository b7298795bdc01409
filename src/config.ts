/**
 * Configuration: the shape users write (the Python original's keys, snake_case) and its
 * validation into a resolved, frozen form the rest of the pool trusts.
 *
 * @module
 */

import { hasBunSql } from "./driver/bun.ts";
import type { DriverName } from "./driver/session.ts";
import { ConfigError } from "./errors.ts";
import { quote } from "./quote.ts";
import { redactUrl } from "./redact.ts";

/**
 * TLS mode for an endpoint, as libpq's `sslmode`. `true` means `require`, `false` `disable`.
 *
 * @example Requiring TLS
 * ```ts
 * import type { SslMode } from "@x/pgdbpool";
 *
 * const ssl: SslMode = "verify-full";
 * ```
 */
export type SslMode = "disable" | "prefer" | "require" | "verify-full";

/**
 * One PostgreSQL server, as the original's `db` entries (`name` is the database, `pass` the
 * password). A `postgres://user:pass@host:port/db?sslmode=require` URL string is accepted too.
 *
 * @example An endpoint with timeouts
 * ```ts
 * import type { EndpointConfig } from "@x/pgdbpool";
 *
 * const primary: EndpointConfig = {
 *   host: "db1.internal",
 *   name: "app",
 *   user: "app",
 *   pass: "secret",
 *   connect_timeout: 5,
 *   query_timeout: 30_000,
 * };
 * ```
 */
export interface EndpointConfig {
  /** Host name or IP address. */
  host: string;
  /** TCP port; default 5432. */
  port?: number;
  /** Database name. */
  name: string;
  /** Role to log in as. */
  user: string;
  /** Password. Never printed in errors, logs, stats or inspect output. */
  pass: string;
  /** TLS mode; default `"disable"` as in the original. */
  ssl?: SslMode | boolean;
  /** PEM certificate(s) to trust for `verify-full` instead of the system store. */
  ssl_root_cert?: string;
  /** Seconds allowed for TCP connect, TLS and authentication; default 10. */
  connect_timeout?: number;
  /** Milliseconds, sent as `statement_timeout`; default: the server's. */
  query_timeout?: number;
  /** Megabytes, sent as `temp_buffers`; default: the server's. */
  session_tmp_buffer?: number;
  /** Use named prepared statements; default true. Set false behind PgBouncer transaction mode. */
  prepare?: boolean;
  /** Client library for this server's sessions; default the pool's `driver`. */
  driver?: DriverName;
}

/**
 * Which servers a group may use, by their detected role.
 *
 * @example A read group that prefers replicas
 * ```ts
 * import type { GroupRole } from "@x/pgdbpool";
 *
 * const role: GroupRole = "prefer-replica";
 * ```
 */
export type GroupRole = "primary" | "replica" | "prefer-replica" | "any";

/**
 * One named group of connections, as the original's `groups` entries.
 *
 * @example A transactional write group
 * ```ts
 * import type { GroupConfig } from "@x/pgdbpool";
 *
 * const write: GroupConfig = { connection_count: 8, autocommit: false, role: "primary" };
 * ```
 */
export interface GroupConfig {
  /** Number of connections; at least 1. */
  connection_count: number;
  /** Each statement commits by itself; default true. When false, call `commit()`. */
  autocommit?: boolean;
  /** Indices into `db` this group may use; default all. */
  endpoints?: number[];
  /**
   * How long a checkout may wait for a connection: for a free one (threaded mode) and for a server
   * that can serve the group (when none can yet); default 10000.
   */
  acquire_timeout_ms?: number;
  /** Role of the servers this group uses; default `"any"`. */
  role?: GroupRole;
  /** Replicas further behind than this are not used; default: no limit. */
  max_replica_lag_ms?: number;
  /** Connections older than this are retired (with per-connection jitter); default: never. */
  max_lifetime_ms?: number;
  /** Connections idle longer than this are closed; default: never. */
  idle_timeout_ms?: number;
  /** Read-your-writes: how long to wait for a replica to catch up before using the primary; default 1000. */
  read_your_writes_timeout_ms?: number;
  /**
   * A handler held longer than this dispatches a `leak` event with where it was checked out,
   * and one that becomes unreachable without release is reclaimed; default: off.
   */
  leak_detection_ms?: number;
}

/**
 * The whole configuration of a pool.
 *
 * @example Primary and replica with read and write groups
 * ```ts
 * import type { PoolConfig } from "@x/pgdbpool";
 *
 * const config: PoolConfig = {
 *   db: [
 *     { host: "db1.internal", name: "app", user: "app", pass: "secret" },
 *     "postgres://app:secret@db2.internal:5432/app",
 *   ],
 *   groups: {
 *     write: { connection_count: 4, autocommit: false, role: "primary" },
 *     read: { connection_count: 8, role: "replica", max_replica_lag_ms: 2000 },
 *   },
 * };
 * ```
 */
export interface PoolConfig {
  /** `"threaded"` (default): checkouts wait in FIFO order. `"non-threaded"`: one request at a time per isolate, no waiting. */
  type?: "threaded" | "non-threaded";
  /** One endpoint, or a list of endpoints and `postgres://` URLs. */
  db: EndpointConfig | string | Array<EndpointConfig | string>;
  /** Named groups of connections. */
  groups: Record<string, GroupConfig>;
  /** A connection idle longer than this is pinged before use; default 1000. */
  validate_after_ms?: number;
  /** Background role and health probe period; default 1000. 0 turns background probes off. */
  health_check_interval_ms?: number;
  /**
   * Upper bound of the jittered exponential back-off between probes of a down endpoint; default
   * 2000, so a server's return is seen within about two seconds.
   */
  retry_backoff_max_ms?: number;
  /**
   * How long one health probe may take (connect included) before its server counts as down;
   * default 2000, never longer than the endpoint's `connect_timeout`.
   */
  probe_timeout_ms?: number;
  /** How long `close()` lets statements in flight finish before cutting connections; default 5000. */
  close_timeout_ms?: number;
  /**
   * How often the `pool.listen()` session proves it still carries notifications: a `SELECT 1`
   * on it that must answer within `probe_timeout_ms`, else the session is replaced
   * (`listenlost`, then `listenrestored`). A hung backend or a dead network path otherwise
   * leaves a subscription silently deaf; default 5000, 0 turns it off.
   */
  listen_heartbeat_ms?: number;
  /** Sent as `application_name`; default `"pgdbpool"`. */
  application_name?: string;
  /**
   * Client library for every session: `"postgres"` (postgres.js, default, every runtime) or
   * `"bun"` (Bun's native `SQL`; postgres.js where that is missing). An endpoint's own
   * `driver` wins.
   */
  driver?: DriverName;
}

/** An endpoint after validation. The password stays out of anything printable. */
export interface ResolvedEndpoint {
  readonly index: number;
  readonly host: string;
  readonly port: number;
  readonly database: string;
  readonly user: string;
  readonly ssl: SslMode;
  readonly sslRootCert: string | undefined;
  readonly connectTimeoutS: number;
  readonly queryTimeoutMs: number | undefined;
  readonly tmpBufferMb: number | undefined;
  readonly prepare: boolean;
  readonly driver: DriverName;
  readonly password: () => string;
}

/** A group after validation. */
export interface ResolvedGroup {
  readonly name: string;
  readonly size: number;
  readonly autocommit: boolean;
  readonly endpoints: readonly number[];
  readonly acquireTimeoutMs: number;
  readonly role: GroupRole;
  readonly maxReplicaLagMs: number | undefined;
  readonly maxLifetimeMs: number | undefined;
  readonly idleTimeoutMs: number | undefined;
  readonly readYourWritesTimeoutMs: number;
  readonly leakDetectionMs: number | undefined;
}

/** The whole configuration after validation. */
export interface ResolvedConfig {
  readonly threaded: boolean;
  readonly endpoints: readonly ResolvedEndpoint[];
  readonly groups: readonly ResolvedGroup[];
  readonly validateAfterMs: number;
  readonly healthCheckIntervalMs: number;
  readonly retryBackoffMaxMs: number;
  readonly probeTimeoutMs: number;
  readonly closeTimeoutMs: number;
  readonly listenHeartbeatMs: number;
  readonly applicationName: string;
}

const topKeys = [
  "type",
  "db",
  "groups",
  "validate_after_ms",
  "health_check_interval_ms",
  "retry_backoff_max_ms",
  "probe_timeout_ms",
  "close_timeout_ms",
  "listen_heartbeat_ms",
  "application_name",
  "driver",
];
const endpointKeys = [
  "host",
  "port",
  "name",
  "user",
  "pass",
  "ssl",
  "ssl_root_cert",
  "connect_timeout",
  "query_timeout",
  "session_tmp_buffer",
  "prepare",
  "driver",
];
const groupKeys = [
  "connection_count",
  "autocommit",
  "endpoints",
  "acquire_timeout_ms",
  "role",
  "max_replica_lag_ms",
  "max_lifetime_ms",
  "idle_timeout_ms",
  "read_your_writes_timeout_ms",
  "leak_detection_ms",
];
/**
 * Longest duration the pool accepts, in milliseconds (2^31 - 1, about 24.8 days): timers store
 * delays as signed 32-bit integers, and a longer `setTimeout` fires at once instead of late.
 *
 * @example Clamping a computed delay before arming a timer
 * ```ts
 * import { MAX_TIMER_MS } from "./config.ts";
 *
 * const delay = Math.min(2 ** 40, MAX_TIMER_MS);
 * clearTimeout(setTimeout(() => {}, delay));
 * ```
 */
export const MAX_TIMER_MS: number = 2_147_483_647;
/** Longest `connect_timeout`, in seconds; postgres.js arms it as a timer in milliseconds. */
const MAX_CONNECT_TIMEOUT_S = MAX_TIMER_MS / 1000;

const sslModes: readonly SslMode[] = ["disable", "prefer", "require", "verify-full"];
const groupRoles: readonly GroupRole[] = ["primary", "replica", "prefer-replica", "any"];

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function checkKeys(path: string, value: Record<string, unknown>, allowed: readonly string[]) {
  for (const key of Object.keys(value)) {
    if (!allowed.includes(key)) {
      throw new ConfigError(
        path ? `${path}.${key}` : key,
        `is not a known option (known: ${allowed.join(", ")})`,
      );
    }
  }
}

function string(path: string, value: unknown): string {
  if (typeof value !== "string" || value === "") {
    throw new ConfigError(path, `must be a non-empty string (got ${quote(value)})`);
  }
  // The start-up message ends each name and value at a NUL: one inside a value would end it
  // early and make the rest a start-up parameter of its own (application_name: "app\0options\0-c
  // ..."), or garble the message.
  if (value.includes("\0")) {
    throw new ConfigError(path, `must not contain NUL characters (got ${quote(value)})`);
  }
  return value;
}

function integer(path: string, value: unknown, min: number, max: number): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > max) {
    const what = min === 1 ? "a positive integer" : `an integer from ${min} to ${max}`;
    throw new ConfigError(path, `must be ${what} (got ${quote(value)})`);
  }
  return value;
}

function duration(path: string, value: unknown, fallback: number): number;
function duration(path: string, value: unknown, fallback: undefined): number | undefined;
function duration(path: string, value: unknown, fallback: number | undefined): number | undefined {
  if (value === undefined) return fallback;
  // NaN fails every comparison, so it is caught by the negated range test.
  if (typeof value !== "number" || !(value >= 0 && value <= MAX_TIMER_MS)) {
    throw new ConfigError(
      path,
      `must be a non-negative number of milliseconds, at most ${MAX_TIMER_MS} (got ${
        quote(value)
      })`,
    );
  }
  return value;
}

function positiveDuration(path: string, value: unknown, fallback: number): number {
  const ms = duration(path, value, fallback);
  if (ms === 0) throw new ConfigError(path, "must be more than 0 milliseconds (got 0)");
  return ms;
}

// A limit that is off when left out. 0 would not mean off (as it does for
// health_check_interval_ms): it would retire every connection at its first check-in
// (max_lifetime_ms, idle_timeout_ms: no connection ever reused, a new session per checkout) or
// report every checkout as a leak at once (leak_detection_ms). Pools elsewhere (HikariCP's
// maxLifetime, idleTimeout, leakDetectionThreshold) read 0 as off, so it is refused, not obeyed.
function optionalLimit(path: string, value: unknown): number | undefined {
  const ms = duration(path, value, undefined);
  if (ms === 0) {
    throw new ConfigError(
      path,
      "must be more than 0 milliseconds; leave it out to turn it off (got 0)",
    );
  }
  return ms;
}

function boolean(path: string, value: unknown, fallback: boolean): boolean {
  if (value === undefined) return fallback;
  if (typeof value !== "boolean") {
    throw new ConfigError(path, `must be true or false (got ${quote(value)})`);
  }
  return value;
}

function sslMode(path: string, value: unknown): SslMode {
  if (value === undefined || value === false) return "disable";
  if (value === true) return "require";
  if (!sslModes.includes(value as SslMode)) {
    throw new ConfigError(
      path,
      `must be one of ${sslModes.map((m) => `"${m}"`).join(", ")} or a boolean (got ${
        quote(value)
      })`,
    );
  }
  return value as SslMode;
}

/** Decodes one `%`-escaped part of a URL; a bad escape names the part, quoting it only if safe. */
function decodePart(path: string, part: string, raw: string, showRaw: boolean): string {
  try {
    return decodeURIComponent(raw);
  } catch {
    // The URIError says nothing useful and may be printed with its input: not kept as cause.
    throw new ConfigError(
      path,
      `has a malformed %-escape in its ${part}; write a literal % as %25${
        showRaw ? ` (got ${quote(raw)})` : ""
      }`,
    );
  }
}

/** Turns a `postgres://` URL into endpoint keys; the password never reaches a message. */
function parseUrl(path: string, url: string): Record<string, unknown> {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    // Deno's message quotes the whole URL, password included: neither shown nor kept as cause.
    throw new ConfigError(
      path,
      `must be a postgres:// URL or an endpoint object (got ${quote(redactUrl(url))})`,
    );
  }
  if (parsed.protocol !== "postgres:" && parsed.protocol !== "postgresql:") {
    // Only the scheme is quoted: the parser limits it to letters, digits, "+", "-" and ".".
    throw new ConfigError(
      path,
      `must use the postgres:// scheme or its alias postgresql:// (got ${quote(parsed.protocol)})`,
    );
  }
  // An unescaped "/", "?" or "#" in a password ends the authority early, so the rest of the
  // password would be read as database name, parameter or fragment and could surface later.
  if (parsed.hash !== "" || (parsed.pathname + parsed.search).includes("@")) {
    throw new ConfigError(
      path,
      `must write / ? # @ inside its password or database name as %2F %3F %23 %40 (got ${
        quote(redactUrl(url))
      })`,
    );
  }
  const out: Record<string, unknown> = {
    host: decodePart(path, "host", parsed.hostname, true).replace(/^\[(.*)\]$/, "$1"),
    name: decodePart(path, "database name", parsed.pathname.replace(/^\//, ""), true),
    user: decodePart(path, "user name", parsed.username, true),
    pass: decodePart(path, "password", parsed.password, false),
  };
  if (parsed.port) out.port = Number(parsed.port);
  for (const [key, value] of parsed.searchParams) {
    if (key === "sslmode") out.ssl = value;
    else if (key === "connect_timeout" || key === "query_timeout" || key === "session_tmp_buffer") {
      out[key] = urlNumber(`${path}?${key}`, value);
    } else if (key === "prepare") out.prepare = urlBoolean(`${path}?${key}`, value);
    else {
      throw new ConfigError(
        `${path}?${key}`,
        "is not a known URL parameter (known: sslmode, connect_timeout, query_timeout, session_tmp_buffer, prepare)",
      );
    }
  }
  return out;
}

// A URL parameter's number in plain decimal. `Number()` alone read an empty value as 0 (an empty
// `query_timeout=` turned the statement timeout off), `0x10` as 16, and hid the text behind NaN.
function urlNumber(path: string, value: string): number {
  if (!/^(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$/.test(value)) {
    throw new ConfigError(path, `must be a decimal number (got ${quote(value)})`);
  }
  return Number(value);
}

// A URL parameter's boolean: anything but "false" used to mean true, so `prepare=0` prepared
// (behind PgBouncer in transaction mode, named statements break).
function urlBoolean(path: string, value: string): boolean {
  if (value === "true") return true;
  if (value === "false") return false;
  throw new ConfigError(path, `must be true or false (got ${quote(value)})`);
}

/**
 * A host as postgres.js takes it: one name, IP address (IPv6 without brackets) or socket
 * directory. A comma would be read as a list of hosts, and whitespace is always a mistake.
 */
function host(path: string, value: unknown): string {
  const text = string(path, value);
  // A URL (or `user:password@host`) given as host: its password must not show, here or later
  // in stats and errors.
  if (text.includes("@") || text.includes("://")) {
    throw new ConfigError(
      path,
      `must be a host name or IP address, not a URL or user:password@host (got ${
        quote(redactUrl(text.includes("://") ? text : `//${text}`).replace(/^\/\//, ""))
      })`,
    );
  }
  // A libpq keyword string (`host=db password=pw`) given as host: a host name never holds "=".
  if (text.includes("=")) {
    throw new ConfigError(
      path,
      `must be a host name or IP address, not a keyword string (got ${quote(redactUrl(text))})`,
    );
  }
  if (/[,\s]/.test(text)) {
    throw new ConfigError(
      path,
      `must be one host name or IP address, without commas or whitespace (got ${quote(text)})`,
    );
  }
  return text;
}

function driver(path: string, value: unknown, fallback: DriverName): DriverName {
  if (value === undefined) return fallback;
  if (value !== "postgres" && value !== "bun") {
    throw new ConfigError(path, `must be "postgres" or "bun" (got ${quote(value)})`);
  }
  // One config serves every runtime: where Bun's SQL is missing, postgres.js is the fallback.
  return value === "bun" && !hasBunSql() ? "postgres" : value;
}

function resolveEndpoint(
  path: string,
  raw: unknown,
  index: number,
  poolDriver: DriverName,
): ResolvedEndpoint {
  const value = typeof raw === "string" ? parseUrl(path, raw) : raw;
  if (!isRecord(value)) {
    throw new ConfigError(
      path,
      `must be an endpoint object or a postgres:// URL (got ${quote(value)})`,
    );
  }
  checkKeys(path, value, endpointKeys);
  const pass = value.pass;
  if (typeof pass !== "string") {
    // The value itself is never shown: it may be a mistyped secret.
    throw new ConfigError(`${path}.pass`, `must be a string (got ${typeof pass})`);
  }
  // The server reads a password up to its first NUL: the rest would be dropped without a word.
  if (pass.includes("\0")) {
    throw new ConfigError(`${path}.pass`, "must not contain NUL characters");
  }
  const queryTimeout = duration(`${path}.query_timeout`, value.query_timeout, undefined);
  return Object.freeze({
    index,
    host: host(`${path}.host`, value.host),
    port: value.port === undefined ? 5432 : integer(`${path}.port`, value.port, 1, 65535),
    database: string(`${path}.name`, value.name),
    user: string(`${path}.user`, value.user),
    ssl: sslMode(`${path}.ssl`, value.ssl),
    sslRootCert: rootCert(path, value.ssl_root_cert, value.ssl),
    connectTimeoutS: value.connect_timeout === undefined
      ? 10
      : seconds(`${path}.connect_timeout`, value.connect_timeout),
    queryTimeoutMs: queryTimeout,
    tmpBufferMb: value.session_tmp_buffer === undefined
      ? undefined
      : integer(`${path}.session_tmp_buffer`, value.session_tmp_buffer, 1, 1 << 20),
    prepare: boolean(`${path}.prepare`, value.prepare, true),
    driver: driver(`${path}.driver`, value.driver, poolDriver),
    password: () => pass,
  });
}

// The certificate(s) to trust, only where they are used. Under libpq a root certificate makes
// `require` verify the chain (as verify-ca), so a config carried over from it with `require` would
// silently lose that check here; and libpq's `sslrootcert` is a file name, which taken as PEM
// would fail every connect with a TLS error that never names this key.
function rootCert(path: string, value: unknown, ssl: unknown): string | undefined {
  if (value === undefined) return undefined;
  const text = string(`${path}.ssl_root_cert`, value);
  if (ssl !== "verify-full") {
    throw new ConfigError(
      `${path}.ssl_root_cert`,
      `is used only with ssl "verify-full" (got ssl ${
        quote(ssl)
      }): set ssl to "verify-full" to verify the server with it`,
    );
  }
  if (!/-----BEGIN [A-Z0-9 ]*CERTIFICATE-----/.test(text)) {
    throw new ConfigError(
      `${path}.ssl_root_cert`,
      `must be PEM text (-----BEGIN CERTIFICATE-----...), not a file name: read the file first (got ${
        quote(text)
      })`,
    );
  }
  return text;
}

function seconds(path: string, value: unknown): number {
  if (typeof value !== "number" || !(value > 0 && value <= MAX_CONNECT_TIMEOUT_S)) {
    throw new ConfigError(
      path,
      `must be a positive number of seconds, at most ${MAX_CONNECT_TIMEOUT_S} (got ${
        quote(value)
      })`,
    );
  }
  return value;
}

function resolveGroup(
  name: string,
  raw: unknown,
  endpointCount: number,
): ResolvedGroup {
  const path = `groups.${name}`;
  if (!isRecord(raw)) throw new ConfigError(path, `must be an object (got ${quote(raw)})`);
  checkKeys(path, raw, groupKeys);
  const size = integer(`${path}.connection_count`, raw.connection_count, 1, 100_000);
  let endpoints: number[];
  if (raw.endpoints === undefined) {
    endpoints = Array.from({ length: endpointCount }, (_, i) => i);
  } else {
    if (!Array.isArray(raw.endpoints) || raw.endpoints.length === 0) {
      throw new ConfigError(
        `${path}.endpoints`,
        `must be a non-empty array of indices into db (got ${quote(raw.endpoints)})`,
      );
    }
    endpoints = raw.endpoints.map((index: unknown, i: number) =>
      integer(`${path}.endpoints[${i}]`, index, 0, endpointCount - 1)
    );
    const dup = endpoints.find((index, i) => endpoints.indexOf(index) !== i);
    if (dup !== undefined) {
      throw new ConfigError(`${path}.endpoints`, `lists endpoint ${dup} twice`);
    }
  }
  const role = raw.role === undefined ? "any" : raw.role;
  if (!groupRoles.includes(role as GroupRole)) {
    throw new ConfigError(
      `${path}.role`,
      `must be one of ${groupRoles.map((r) => `"${r}"`).join(", ")} (got ${quote(role)})`,
    );
  }
  return Object.freeze({
    name,
    size,
    autocommit: boolean(`${path}.autocommit`, raw.autocommit, true),
    endpoints: Object.freeze(endpoints),
    acquireTimeoutMs: duration(`${path}.acquire_timeout_ms`, raw.acquire_timeout_ms, 10_000),
    role: role as GroupRole,
    maxReplicaLagMs: duration(`${path}.max_replica_lag_ms`, raw.max_replica_lag_ms, undefined),
    maxLifetimeMs: optionalLimit(`${path}.max_lifetime_ms`, raw.max_lifetime_ms),
    idleTimeoutMs: optionalLimit(`${path}.idle_timeout_ms`, raw.idle_timeout_ms),
    readYourWritesTimeoutMs: duration(
      `${path}.read_your_writes_timeout_ms`,
      raw.read_your_writes_timeout_ms,
      1000,
    ),
    leakDetectionMs: optionalLimit(`${path}.leak_detection_ms`, raw.leak_detection_ms),
  });
}

/**
 * Validates a user configuration without touching it and returns its resolved form.
 * Throws {@linkcode ConfigError} naming the first offending path and value.
 */
export function resolveConfig(config: unknown): ResolvedConfig {
  if (!isRecord(config)) {
    // A connection string given as the whole config holds a password: never quoted.
    throw new ConfigError(
      "config",
      typeof config === "string"
        ? "must be an object, not a string (a connection URL goes in db: { db: <url>, groups: {...} })"
        : `must be an object (got ${quote(config)})`,
    );
  }
  checkKeys("", config, topKeys);
  const type = config.type === undefined ? "threaded" : config.type;
  if (type !== "threaded" && type !== "non-threaded") {
    throw new ConfigError("type", `must be "threaded" or "non-threaded" (got ${quote(type)})`);
  }
  const rawDb = config.db;
  if (rawDb === undefined) throw new ConfigError("db", "is required");
  const list = Array.isArray(rawDb) ? rawDb : [rawDb];
  if (list.length === 0) throw new ConfigError("db", "must list at least one endpoint");
  const poolDriver = driver("driver", config.driver, "postgres");
  const endpoints = list.map((entry, i) =>
    resolveEndpoint(Array.isArray(rawDb) ? `db[${i}]` : "db", entry, i, poolDriver)
  );
  const rawGroups = config.groups;
  if (!isRecord(rawGroups)) {
    throw new ConfigError("groups", `must be an object of named groups (got ${quote(rawGroups)})`);
  }
  const names = Object.keys(rawGroups);
  if (names.length === 0) throw new ConfigError("groups", "must define at least one group");
  const groups = names.map((name) => resolveGroup(name, rawGroups[name], endpoints.length));
  const applicationName = config.application_name === undefined
    ? "pgdbpool"
    : string("application_name", config.application_name);
  return Object.freeze({
    threaded: type === "threaded",
    endpoints: Object.freeze(endpoints),
    groups: Object.freeze(groups),
    validateAfterMs: duration("validate_after_ms", config.validate_after_ms, 1000),
    healthCheckIntervalMs: duration(
      "health_check_interval_ms",
      config.health_check_interval_ms,
      1000,
    ),
    retryBackoffMaxMs: duration("retry_backoff_max_ms", config.retry_backoff_max_ms, 2000),
    probeTimeoutMs: positiveDuration("probe_timeout_ms", config.probe_timeout_ms, 2000),
    closeTimeoutMs: duration("close_timeout_ms", config.close_timeout_ms, 5000),
    listenHeartbeatMs: duration("listen_heartbeat_ms", config.listen_heartbeat_ms, 5000),
    applicationName,
  });
}
