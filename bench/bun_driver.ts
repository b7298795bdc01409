/**
 * The pool with its Bun-native driver (`driver: "bun"`), when this build of the pool has it.
 * Kept apart from bench/env.ts, which starts a cluster on import, so the HTTP apps can use it.
 *
 * @module
 */

import { ConfigError, Pool, type PoolConfig } from "../mod.ts";

/**
 * `new Pool(config)` with `driver: "bun"`, or the reason there is none: the option is tried at
 * the pool level, then on every endpoint, and a `ConfigError` from both means the pool does not
 * accept it (yet). Any other error is a real failure and is thrown. Outside Bun there is never
 * one.
 */
export function tryBunDriver(config: PoolConfig): Pool | string {
  if (!("Bun" in globalThis)) return "the Bun driver runs under Bun only";
  const db = Array.isArray(config.db) ? config.db : [config.db];
  const attempts: unknown[] = [
    { ...config, driver: "bun" },
    { ...config, db: db.map((e) => typeof e === "string" ? e : { ...e, driver: "bun" }) },
  ];
  const errors: string[] = [];
  for (const attempt of attempts) {
    try {
      return new Pool(attempt as PoolConfig);
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      errors.push(err.message);
    }
  }
  return `driver: "bun" is not accepted by this build of the pool (ConfigError: ${errors[0]})`;
}
