/**
 * What handing out a connection costs: `using db = pool.handler(g)` then dispose, no query, on a
 * warm pool, for a group pinned to the primary, one pinned to the replica and one spanning both,
 * in threaded and non-threaded mode. Baselines in the same group: postgres.js `reserve()` +
 * `release()`, pg-pool `connect()` + `release()`, and a bare array pop + push as the floor.
 *
 * @module
 */

import { checkoutName, GROUP, NAME, OPS_PER_ITERATION } from "./names.ts";
import { benchGroup, ourPool, pgPool, rawClient, warmGroup, warmPg, warmRaw } from "./env.ts";

const SIZE = 4;
/** Checkouts per bench iteration (see `OPS_PER_ITERATION`); the report shows one checkout. */
const K = OPS_PER_ITERATION[GROUP.checkout];
const groups = {
  primary: { connection_count: SIZE, endpoints: [0] },
  replica: { connection_count: SIZE, endpoints: [1] },
  both: { connection_count: 2 * SIZE, endpoints: [0, 1] },
};
const where = ["primary", "replica", "both"] as const;
const defs: Deno.BenchDefinition[] = [];

for (const mode of ["threaded", "non-threaded"] as const) {
  const pool = ourPool(mode, groups);
  for (const g of where) await warmGroup(pool, g, groups[g].connection_count);
  for (const g of where) {
    defs.push({
      group: GROUP.checkout,
      name: checkoutName(mode, g),
      fn() {
        for (let i = 0; i < K; i++) {
          using _db = pool.handler(g);
        }
      },
    });
  }
  if (mode === "threaded") {
    // The same checkout released by hand: on Deno, V8's `using` costs more than the pool
    // itself, and this entry shows the pool's own share (not a target: `using` is the API).
    defs.push({
      group: GROUP.checkout,
      name: NAME.noUsing,
      fn() {
        for (let i = 0; i < K; i++) pool.handler("primary").release();
      },
    });
  }
}

// postgres.js's reserve() slows down with every checkout while its other connections sit idle:
// its open-connection queue is never compacted and each checkout scans it (indexOf), about
// +1 us per 1000 reserves here. A max:1 client drains that queue on every checkout, so it
// shows reserve()'s best case, the cost on a fresh client of any size. That is the baseline.
const sql = rawClient(1);
await warmRaw(sql, 1);
defs.push({
  group: GROUP.checkout,
  name: NAME.reserve,
  baseline: true,
  async fn() {
    for (let i = 0; i < K; i++) {
      const reserved = await sql.reserve();
      reserved.release();
    }
  },
});

const pgp = pgPool(SIZE);
await warmPg(pgp, SIZE);
defs.push({
  group: GROUP.checkout,
  name: NAME.pgPool,
  async fn() {
    for (let i = 0; i < K; i++) {
      const client = await pgp.connect();
      client.release();
    }
  },
});

const free = Array.from({ length: SIZE }, (_, i) => ({ i }));
defs.push({
  group: GROUP.checkout,
  name: NAME.floor,
  fn() {
    for (let i = 0; i < K; i++) {
      const conn = free.pop()!;
      free.push(conn);
    }
  },
});

// The runtime's own cost of `using`: Deno 2.9 (V8's native explicit resource management) spends
// 130-230 ns on the statement alone, Bun about 5 ns. A checkout with `using` can never be faster.
class EmptyDisposable {
  [Symbol.dispose](): void {}
}
defs.push({
  group: GROUP.checkout,
  name: NAME.usingFloor,
  fn() {
    for (let i = 0; i < K; i++) {
      using _d = new EmptyDisposable();
    }
  },
});

benchGroup(defs);
