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
 * Closes still under way of pools this module let go (replaced by `init()`, or by `close()`):
 * `close()` waits for all of them, so that once it resolves no session of the module-wide pool
 * is left, whichever `init()` opened it and whoever else called `close()` first.
 */
const closing = new Set<Promise<void>>();

function retire(previous: Pool): void {
  const done = previous.close();
  closing.add(done);
  const forget = () => closing.delete(done);
  // Handled here so that a close nobody awaits never becomes an unhandled rejection; close()
  // still hears it through its own await.
  done.then(forget, forget);
}

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
   * the previous pool in the background instead of leaking its connections (its handlers may
   * finish within its `close_timeout_ms`); `close()` waits for that too.
   */
  static init(config: PoolConfig): Pool {
    const next = new Pool(config);
    const previous = pool;
    pool = next;
    setDefaultPool(next);
    if (previous !== undefined) retire(previous);
    return next;
  }

  /** The module-wide pool, or `undefined` before `init()` / after `close()`. */
  static get pool(): Pool | undefined {
    return pool;
  }

  /**
   * Closes the module-wide pool; later `new Handler()` calls throw until `init()` again. Resolves
   * once every pool `init()` made has closed: also one a later `init()` replaced, and one whose
   * close an earlier `close()` call began.
   */
  static async close(): Promise<void> {
    const current = pool;
    pool = undefined;
    setDefaultPool(undefined);
    if (current !== undefined) retire(current);
    await Promise.all(closing);
  }
}
