/**
 * `SELECT 1` through pgdbpool against the clients people use directly, each written the way its
 * own users write it, all with 10 connections to the primary: one caller at a time, and 1000
 * queries over 100 concurrent callers per iteration (time per iteration is then the inverse of
 * throughput). The exact call of each contender is in `HOW` (bench/names.ts) and in the report.
 *
 * - pgdbpool handler: `using db = pool.handler("q"); await db.query("SELECT 1")`
 * - pgdbpool `pool.query("q", "SELECT 1")`
 * - postgres.js tagged template `` sql`SELECT 1` `` on `postgres({ max: 10 })`
 * - npm pg `pool.query("SELECT 1")` on `new pg.Pool({ max: 10 })`
 * - on Bun: Bun's `SQL` tagged template on `new SQL({ max: 10 })`, and pgdbpool's handler and
 *   `pool.query` on the Bun-native driver (`driver: "bun"`) once the pool accepts that option;
 *   until then the report carries a note saying why they were skipped.
 *
 * Also a transaction (one `UPDATE`, `commit()`) against postgres.js `sql.begin()`.
 *
 * @module
 */

import { BATCH, GROUP, NAME } from "./names.ts";
import {
  benchGroup,
  bunSql,
  callers,
  isBun,
  ourBunPool,
  ourPool,
  pgPool,
  rawClient,
  recordNote,
  warmBunSql,
  warmGroup,
  warmPg,
  warmRaw,
} from "./env.ts";
import type { Pool } from "../mod.ts";

const CONNECTIONS = 10;
const groups = {
  q: { connection_count: CONNECTIONS, endpoints: [0] },
  tx: { connection_count: CONNECTIONS, endpoints: [0], autocommit: false },
};
const pool = ourPool("threaded", groups);
await warmGroup(pool, "q", CONNECTIONS);
await warmGroup(pool, "tx", CONNECTIONS);
const sql = rawClient(CONNECTIONS);
await warmRaw(sql, CONNECTIONS);
const pgp = pgPool(CONNECTIONS);
await warmPg(pgp, CONNECTIONS);

type Contender = { name: string; baseline?: boolean; fn: () => Promise<unknown> };

function viaPool(p: Pool): Pick<Contender, "fn">[] {
  return [
    {
      async fn() {
        using db = p.handler("q");
        await db.query("SELECT 1");
      },
    },
    // One-shot statements: pool.query pipelines onto busy connections like postgres.js does.
    { fn: () => p.query("q", "SELECT 1") },
  ];
}

const [handler, oneShot] = viaPool(pool);
const contenders: Contender[] = [
  // The baseline of both groups: what the pool is built on, as its users call it.
  { name: NAME.tagged, baseline: true, fn: () => sql`SELECT 1` },
  { name: NAME.handler, ...handler },
  { name: NAME.oneShot, ...oneShot },
  { name: NAME.pgQuery, fn: () => pgp.query("SELECT 1") },
];

if (isBun) {
  const bsql = bunSql(CONNECTIONS);
  await warmBunSql(bsql, CONNECTIONS);
  contenders.push({ name: NAME.bunSql, fn: () => bsql`SELECT 1` });
  const bunPool = ourBunPool("threaded", { q: groups.q });
  if (typeof bunPool === "string") {
    recordNote(NAME.handlerBun, bunPool);
    recordNote(NAME.oneShotBun, bunPool);
  } else {
    await warmGroup(bunPool, "q", CONNECTIONS);
    const [h, o] = viaPool(bunPool);
    contenders.push({ name: NAME.handlerBun, ...h }, { name: NAME.oneShotBun, ...o });
  }
}

benchGroup(contenders.map((c) => ({
  group: GROUP.seq,
  name: c.name,
  baseline: c.baseline,
  // Deno awaits a bench only when fn is an AsyncFunction, not any function returning a promise.
  fn: async () => void await c.fn(),
})));

{
  const group = GROUP.c100;
  const batch = BATCH[group];
  benchGroup(contenders.map((c) => ({
    group,
    name: c.name,
    baseline: c.baseline,
    fn: async () => await callers(100, batch, c.fn),
  })));
}

// A real write, one row per contender so neither waits on the other's row lock.
await sql`CREATE TABLE IF NOT EXISTS bench_tx (id int PRIMARY KEY, n bigint NOT NULL)`;
await sql`INSERT INTO bench_tx VALUES (1, 0), (2, 0) ON CONFLICT (id) DO NOTHING`;

benchGroup([
  {
    group: GROUP.tx,
    name: NAME.begin,
    baseline: true,
    async fn() {
      await sql.begin((tx) => tx`UPDATE bench_tx SET n = n + 1 WHERE id = 2`);
    },
  },
  {
    group: GROUP.tx,
    name: NAME.handler,
    async fn() {
      // autocommit: false pipelines BEGIN with the statement; COMMIT is the second round trip.
      using db = pool.handler("tx");
      await db.query("UPDATE bench_tx SET n = n + 1 WHERE id = 1");
      await db.commit();
    },
  },
]);
