/**
 * 200 concurrent tasks over 10 connections, each task checking out 5 times in a row (checkout,
 * `SELECT 1`, release): throughput (one iteration = 1000 checkouts) and how long each checkout
 * waited for a connection, pgdbpool against pg-pool. Both queue waiters in FIFO order.
 *
 * A checkout's wait is the time from asking to having the connection in hand: until
 * `pool.acquire()` resolves (pgdbpool; `pool.handler()` would only wait inside its first query)
 * and until `connect()` resolves (pg-pool). The waits are summarised per bench in the results'
 * `extra` section, since `deno bench --json` has no field for them.
 *
 * @module
 */

import { extraKey, GROUP, NAME } from "./names.ts";
import {
  atExit,
  benchGroup,
  callers,
  ourPool,
  pgPool,
  recordExtra,
  WaitLog,
  warmGroup,
  warmPg,
} from "./env.ts";

const TASKS = 200;
const CHECKOUTS = 5; // per task and iteration: keeps the queue full instead of draining once
const CONNECTIONS = 10;

const pool = ourPool("threaded", { c: { connection_count: CONNECTIONS, endpoints: [0] } });
await warmGroup(pool, "c", CONNECTIONS);
const pgp = pgPool(CONNECTIONS);
await warmPg(pgp, CONNECTIONS);

const ours = new WaitLog();
const theirs = new WaitLog();
atExit(() => {
  recordExtra(extraKey(GROUP.contention, NAME.contentionOurs), ours.summary());
  recordExtra(extraKey(GROUP.contention, NAME.contentionPg), theirs.summary());
});

benchGroup([{
  group: GROUP.contention,
  name: NAME.contentionPg,
  baseline: true,
  async fn() {
    await callers(TASKS, TASKS * CHECKOUTS, async () => {
      const t0 = performance.now();
      const client = await pgp.connect();
      theirs.add(t0, performance.now());
      try {
        await client.query("SELECT 1");
      } finally {
        client.release();
      }
    });
    theirs.endIteration();
  },
}, {
  group: GROUP.contention,
  name: NAME.contentionOurs,
  async fn() {
    await callers(TASKS, TASKS * CHECKOUTS, async () => {
      const t0 = performance.now();
      using db = await pool.acquire("c");
      ours.add(t0, performance.now());
      await db.query("SELECT 1");
    });
    ours.endIteration();
  },
}]);
