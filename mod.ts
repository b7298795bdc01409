/**
 * pgdbpool: a PostgreSQL connection de-multiplexer for Deno and Bun, built on postgres.js.
 *
 * Named groups of exclusive connections over one or more endpoints, checked out synchronously
 * with `using`, waiting in strict FIFO order with timeouts when busy, rolling back on dispose,
 * and never committing on a session that replaced a lost one.
 *
 * @example Quick start
 * ```ts
 * import { Pool } from "@x/pgdbpool";
 *
 * await using pool = new Pool({
 *   db: [{ host: "127.0.0.1", name: "app", user: "app", pass: "secret" }],
 *   groups: { default: { connection_count: 4 } },
 * });
 * {
 *   using db = pool.handler("default");
 *   const rows = await db.query("SELECT $1::int AS n", [1]);
 *   console.log(rows[0].n);
 * }
 * ```
 *
 * @module
 */

export { Pool } from "./src/pool.ts";
export { Connection } from "./src/connection.ts";
export { Handler, type HandlerOptions } from "./src/handler.ts";
export type { QueryOptions, Row, Rows, Sql, ValueRows } from "./src/rows.ts";
export { type AcquireOptions, Semaphore } from "./src/semaphore.ts";
export type { EndpointConfig, GroupConfig, GroupRole, PoolConfig, SslMode } from "./src/config.ts";
export type { DriverName } from "./src/driver/session.ts";
export type { EndpointInfo, EndpointRole, EndpointState } from "./src/endpoint.ts";
export type { ListenOptions, Subscription } from "./src/listener.ts";
export {
  AcquireTimeoutError,
  ConfigError,
  NoEndpointAvailableError,
  PoolClosedError,
  PoolError,
  PoolExhaustedError,
  SessionLostError,
  type StatementOutcome,
  TransactionAbortedError,
  TransactionLostError,
  UnconfiguredGroupError,
} from "./src/errors.ts";
export {
  PoolEvent,
  type PoolEventDetail,
  type PoolEventDetailMap,
  type PoolEventListener,
  type PoolEventType,
} from "./src/events.ts";
export type { EndpointStats, GroupStats, PoolStats } from "./src/stats.ts";
