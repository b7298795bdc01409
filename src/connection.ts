/**
 * The module-wide pool of the Python original: `Connection.init(config)` once, then
 * `new Handler(group)` anywhere.
 *
 * @module
 */

import type { PoolConfig } from "./config.ts";
import { setDefaultPool } from "./default_pool.ts";
import { Pool } from "./pool.ts";

let pool: Pool | undefined;

/**
 * The module-wide pool, as in the Python original.
 *
 * @example Module-wide pool with handlers
 * ```ts
 * import { Connection, Handler } from "@x/pgdbpool";
 *
 * Connection.init({
 *   db: { host: "127.0.0.1", name: "app", user: "app", pass: "secret" },
 *   groups: { default: { connection_count: 4 } },
 * });
 * {
 *   using db = new Handler("default");
 *   await db.query("SELECT 1");
 * }
 * await Connection.close();
 * ```
 */
export class Connection {
  /** Not constructed: everything is static. */
  protected constructor() {}

  /**
   * Creates the module-wide pool (validating `config`, opening nothing). Calling it again closes
   * the previous pool in the background instead of leaking its connections.
   */
  static init(config: PoolConfig): Pool {
    const next = new Pool(config);
    const previous = pool;
    pool = next;
    setDefaultPool(next);
    previous?.close();
    return next;
  }

  /** The module-wide pool, or `undefined` before `init()` / after `close()`. */
  static get pool(): Pool | undefined {
    return pool;
  }

  /** Closes the module-wide pool; later `new Handler()` calls throw until `init()` again. */
  static async close(): Promise<void> {
    const current = pool;
    pool = undefined;
    setDefaultPool(undefined);
    await current?.close();
  }
}
