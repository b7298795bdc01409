/**
 * The `SELECT 1` contenders of the load runners (bench/scaling.ts, bench/sustained.ts,
 * bench/memory.ts) as factories: each opens a fresh, warm instance with a given number of
 * connections and closes it afterwards, so a measurement never inherits another one's
 * connections, queues or garbage.
 * Called exactly as in bench/query_bench.ts (see `HOW` in bench/names.ts).
 *
 * @module
 */

import { Pool, type PoolConfig } from "../mod.ts";
import { tryBunDriver } from "./bun_driver.ts";
import {
  type BunSql,
  bunSqlClass,
  endpoints,
  newPgPool,
  postgresJs,
  warmBunSql,
  warmGroup,
  warmPg,
  warmRaw,
} from "./env.ts";
import { NAME } from "./names.ts";

const APP = "pgdbpool-bench";

/** One open contender: a call as its users write it, and how to let go of it. */
export interface Instance {
  call(): Promise<unknown>;
  close(): Promise<void>;
}

/** A contender that can be opened with any number of connections. */
export interface Contender {
  name: string;
  open(connections: number): Promise<Instance>;
}

/** The pool configuration of every pgdbpool contender: one group `q` on the primary. */
export function poolConfig(connections: number): PoolConfig {
  // Primary only, like the direct clients; background probing stays at its default.
  return {
    db: [endpoints[0]],
    groups: { q: { connection_count: connections } },
    application_name: APP,
  };
}

function poolContenders(
  make: (c: number) => Pool,
  names: { handler: string; oneShot: string },
): Contender[] {
  const open = async (connections: number) => {
    const pool = make(connections);
    await warmGroup(pool, "q", connections);
    return pool;
  };
  return [
    {
      name: names.handler,
      async open(connections) {
        const pool = await open(connections);
        return {
          async call() {
            using db = pool.handler("q");
            await db.query("SELECT 1");
          },
          close: () => pool.close(),
        };
      },
    },
    {
      name: names.oneShot,
      async open(connections) {
        const pool = await open(connections);
        return { call: () => pool.query("q", "SELECT 1"), close: () => pool.close() };
      },
    },
  ];
}

/** A Bun `SQL` client like env.ts's `bunSql`, without its exit cleanup; undefined off Bun. */
export function bunSqlClient(max: number): BunSql | undefined {
  const SQL = bunSqlClass();
  if (SQL === undefined) return undefined;
  const e = endpoints[0];
  return new SQL({
    hostname: e.host,
    port: e.port,
    database: e.name,
    username: e.user,
    password: e.pass,
    max,
    idleTimeout: 0,
    maxLifetime: 0,
    connection: { application_name: APP },
  });
}

/**
 * npm `pg`'s `Pool.query()`. Not in `contenders()`, so the scaling sweep keeps its set of
 * contenders; bench/sustained.ts adds it.
 */
export const pgQuery: Contender = {
  name: NAME.pgQuery,
  async open(connections) {
    const pool = newPgPool(connections);
    await warmPg(pool, connections);
    return { call: () => pool.query("SELECT 1"), close: () => pool.end() };
  },
};

/**
 * The contenders of this runtime, and a note for each one that had to be left out (the
 * Bun-driver pool is tried once here to know whether the pool accepts `driver: "bun"`).
 */
export function contenders(): { list: Contender[]; notes: Record<string, string> } {
  const notes: Record<string, string> = {};
  const list: Contender[] = [
    {
      name: NAME.tagged,
      async open(connections) {
        const sql = postgresJs(connections);
        await warmRaw(sql, connections);
        return { call: () => sql`SELECT 1`, close: () => sql.end({ timeout: 1 }) };
      },
    },
    ...poolContenders((c) => new Pool(poolConfig(c)), {
      handler: NAME.handler,
      oneShot: NAME.oneShot,
    }),
  ];
  if (bunSqlClass() !== undefined) {
    list.push({
      name: NAME.bunSql,
      async open(connections) {
        const sql = bunSqlClient(connections)!;
        await warmBunSql(sql, connections);
        return { call: () => sql`SELECT 1`, close: () => sql.close({ timeout: 1 }) };
      },
    });
    const probe = tryBunDriver(poolConfig(1));
    if (typeof probe === "string") {
      notes[NAME.handlerBun] = probe;
      notes[NAME.oneShotBun] = probe;
    } else {
      void probe.close();
      list.push(...poolContenders((c) => tryBunDriver(poolConfig(c)) as Pool, {
        handler: NAME.handlerBun,
        oneShot: NAME.oneShotBun,
      }));
    }
  }
  return { list, notes };
}
