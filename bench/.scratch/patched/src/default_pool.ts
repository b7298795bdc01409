/**
 * The module-wide pool behind `Connection.init()` and `new Handler(group)`, kept apart so that
 * handlers can reach it without importing the pool (and the pool without importing them twice).
 *
 * @module
 */

import type { GroupSource } from "./group.ts";
import { PoolClosedError } from "./errors.ts";

let current: GroupSource | undefined;

/** Sets (or clears) the module-wide pool. */
export function setDefaultPool(pool: GroupSource | undefined): void {
  current = pool;
}

/** The module-wide pool; throws when `Connection.init()` has not been called. */
export function defaultPool(): GroupSource {
  if (current === undefined) {
    throw new PoolClosedError(
      "No module-wide pool: call Connection.init(config) before new Handler(group)",
    );
  }
  return current;
}
