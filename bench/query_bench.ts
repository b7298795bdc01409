/**
 * `SELECT 1` through a handler against the same through a raw postgres.js client with the same
 * number of connections (10), one caller at a time and with 10 and 100 concurrent callers; and
 * a transaction (one statement, commit) against postgres.js `sql.begin()`.
 *
 * Concurrent groups time a whole batch of 1000 queries per iteration, so their time per
 * iteration is the inverse of throughput. Everything runs against the primary only.
 *
 * @module
 */

import { BATCH, GROUP, NAME } from "./names.ts";
import { benchGroup, callers, ourPool, rawClient, warmGroup, warmRaw } from "./env.ts";

const CONNECTIONS = 10;
const pool = ourPool("threaded", {
  q: { connection_count: CONNECTIONS, endpoints: [0] },
  tx: { connection_count: CONNECTIONS, endpoints: [0], autocommit: false },
});
await warmGroup(pool, "q", CONNECTIONS);
await warmGroup(pool, "tx", CONNECTIONS);
const sql = rawClient(CONNECTIONS);
await warmRaw(sql, CONNECTIONS);

// The pool sends statements with its endpoint's `prepare: true`; the raw client gets the same
// options so both take the same postgres.js path (simple protocol for a parameterless query).
const opts = { prepare: true };

async function viaHandler(): Promise<void> {
  using db = pool.handler("q");
  await db.query("SELECT 1");
}

// One-shot statements: pool.query pipelines onto busy connections like postgres.js does.
async function viaPoolQuery(): Promise<void> {
  await pool.query("q", "SELECT 1");
}

async function viaRaw(): Promise<void> {
  await sql.unsafe("SELECT 1", [], opts);
}

benchGroup([
  { group: GROUP.seq, name: NAME.raw, baseline: true, fn: viaRaw },
  { group: GROUP.seq, name: NAME.handler, fn: viaHandler },
]);

for (const [group, count] of [[GROUP.c10, 10], [GROUP.c100, 100]] as const) {
  const batch = BATCH[group];
  // Deno awaits a bench only when fn is an AsyncFunction, not any function returning a promise.
  benchGroup([
    { group, name: NAME.raw, baseline: true, fn: async () => await callers(count, batch, viaRaw) },
    { group, name: NAME.handler, fn: async () => await callers(count, batch, viaHandler) },
    { group, name: NAME.oneShot, fn: async () => await callers(count, batch, viaPoolQuery) },
  ]);
}

// A real write, one row per contender so neither waits on the other's row lock.
await sql.unsafe("CREATE TABLE IF NOT EXISTS bench_tx (id int PRIMARY KEY, n bigint NOT NULL)");
await sql.unsafe("INSERT INTO bench_tx VALUES (1, 0), (2, 0) ON CONFLICT (id) DO NOTHING");

benchGroup([
  {
    group: GROUP.tx,
    name: NAME.begin,
    baseline: true,
    async fn() {
      await sql.begin((tx) => tx.unsafe("UPDATE bench_tx SET n = n + 1 WHERE id = 2", [], opts));
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
