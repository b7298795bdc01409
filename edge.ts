/**
 * pgdbpool for edge runtimes: Cloudflare Workers (workerd) and other WinterCG runtimes.
 *
 * The same API as the main entry, with one difference: {@linkcode Pool} turns background
 * timers off by default (`health_check_interval_ms: 0`), so health checks only run on demand
 * (a connection idle longer than `validate_after_ms` is pinged before use, and a statement arms
 * one probe of its server `connect_timeout` later, so a host that goes silent is still cut off).
 *
 * Workers forbid I/O on behalf of another request ("Cannot perform I/O on behalf of a different
 * request"), so a pool must not outlive its request: create one per request and close it with
 * `ctx.waitUntil(pool.close())`. This entry uses no Node, Deno or Bun API; it type-checks with
 * only the `esnext` and `webworker` libs. Bundle with esbuild `--conditions=workerd` (postgres.js
 * then uses its `cloudflare:sockets` build) and enable the `nodejs_compat` compatibility flag.
 *
 * @example Cloudflare Worker
 * ```ts
 * import { Pool } from "@x/pgdbpool/edge";
 *
 * interface Env {
 *   DB_URL: string;
 * }
 *
 * export default {
 *   async fetch(_request: Request, env: Env, ctx: { waitUntil(p: Promise<unknown>): void }) {
 *     const pool = new Pool({
 *       db: env.DB_URL,
 *       groups: { default: { connection_count: 1 } },
 *     });
 *     try {
 *       const rows = await pool.query("default", "SELECT now() AS now");
 *       return Response.json(rows[0]);
 *     } finally {
 *       ctx.waitUntil(pool.close());
 *     }
 *   },
 * };
 * ```
 *
 * @module
 */

import { Connection as CoreConnection, Pool as CorePool } from "./mod.ts";
import type { PoolConfig } from "./mod.ts";

// Everything of the main entry; the local `Pool` below takes precedence over the re-exported one.
export * from "./mod.ts";

/**
 * The pool of the main entry with background timers off by default
 * (`health_check_interval_ms: 0`): nothing runs between requests, which edge runtimes either
 * forbid or freeze. Create one per request and close it with `ctx.waitUntil(pool.close())`.
 *
 * @example Per-request pool in a Worker
 * ```ts
 * import { Pool } from "@x/pgdbpool/edge";
 *
 * export default {
 *   async fetch(
 *     request: Request,
 *     env: { DB_URL: string },
 *     ctx: { waitUntil(p: Promise<unknown>): void },
 *   ): Promise<Response> {
 *     const pool = new Pool({
 *       db: env.DB_URL,
 *       groups: { write: { connection_count: 1, autocommit: false } },
 *     });
 *     try {
 *       const v = new URL(request.url).searchParams.get("v");
 *       const id = await pool.transaction("write", async (db) => {
 *         const rows = await db.query("INSERT INTO t (v) VALUES ($1) RETURNING id", [v]);
 *         return rows[0].id;
 *       });
 *       return Response.json({ id });
 *     } finally {
 *       ctx.waitUntil(pool.close());
 *     }
 *   },
 * };
 * ```
 */
export class Pool extends CorePool {
  /** Same as the main entry's constructor; `health_check_interval_ms` defaults to 0. */
  constructor(config: PoolConfig) {
    super(edgeDefaults(config));
  }
}

/**
 * The module-wide pool of the main entry, with the edge default `health_check_interval_ms: 0`.
 * On Workers a module-wide pool cannot serve more than one request; prefer a per-request `Pool`.
 *
 * @example One request, one module-wide pool
 * ```ts
 * import { Connection, Handler } from "@x/pgdbpool/edge";
 *
 * Connection.init({
 *   db: "postgres://app:secret@db.internal/app",
 *   groups: { default: { connection_count: 1 } },
 * });
 * {
 *   using db = new Handler("default");
 *   await db.query("SELECT 1");
 * }
 * await Connection.close();
 * ```
 */
export class Connection extends CoreConnection {
  /** Same as the main entry's `Connection.init`; `health_check_interval_ms` defaults to 0. */
  static override init(config: PoolConfig): CorePool {
    return CoreConnection.init(edgeDefaults(config));
  }
}

// A non-object is passed through untouched so that validation reports it (ConfigError).
function edgeDefaults(config: PoolConfig): PoolConfig {
  return typeof config === "object" && config !== null && !Array.isArray(config)
    ? { ...config, health_check_interval_ms: config.health_check_interval_ms ?? 0 }
    : config;
}
