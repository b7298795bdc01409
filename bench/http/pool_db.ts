/**
 * The pgdbpool variant of the HTTP apps' data access, the same on Deno and Bun: one group of
 * 10 connections on the primary, every statement a `pool.query()`.
 *
 * @module
 */

import type { Pool, PoolConfig } from "../../mod.ts";
import { Pool as PoolClass } from "../../mod.ts";
import { tryBunDriver } from "../bun_driver.ts";
import type { BenchEndpoint } from "../names.ts";
import {
  type Db,
  type Fortune,
  FORTUNE_SQL,
  UPDATE_SQL,
  updateParams,
  type World,
  WORLD_SQL,
} from "./tfb.ts";

export const CONNECTIONS = 10;
export const APP = "pgdbpool-bench-http";

/** The pool of a variant (`pool`, or `pool-bun` for the Bun-native driver). */
export function openPool(variant: "pool" | "pool-bun", primary: BenchEndpoint): Pool {
  const config: PoolConfig = {
    db: [primary],
    groups: { app: { connection_count: CONNECTIONS } },
    application_name: APP,
  };
  if (variant === "pool") return new PoolClass(config);
  const pool = tryBunDriver(config);
  if (typeof pool === "string") throw new Error(pool);
  return pool;
}

/** Data access through `pool.query()`. */
export function poolDb(pool: Pool): Db {
  return {
    async world(id) {
      return (await pool.query("app", WORLD_SQL, [id]))[0] as unknown as World;
    },
    async fortunes() {
      return await pool.query("app", FORTUNE_SQL) as unknown as Fortune[];
    },
    async update(worlds) {
      await pool.query("app", UPDATE_SQL, updateParams(worlds));
    },
  };
}

/** Opens all connections of the pool before the app reports ready. */
export async function warmPool(pool: Pool): Promise<void> {
  const handlers = Array.from({ length: CONNECTIONS }, () => pool.handler("app"));
  try {
    await Promise.all(handlers.map((db) => db.query("SELECT 1")));
  } finally {
    for (const db of handlers) db.release();
  }
}
