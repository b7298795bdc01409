// Defects found by audit 30 (db.sql statements started without an await, cursors still open at
// release), each proven against real servers and real faults.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { type PgCluster, startCluster, testDriver } from "./harness/cluster.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { poolSessions } from "./harness/faults.ts";
import { waitFor } from "./harness/wait.ts";
import { Pool } from "../mod.ts";

await setTestTimeout(120_000);

let cluster: PgCluster;

before(async () => {
  cluster = await startCluster({ replicas: 0 });
}, { timeout: 120_000 });

after(async () => {
  await cluster?.close();
}, { timeout: 60_000 });

/** Resolves to `"stuck"` unless `work` settles within `ms` (a deadline, not a pause). */
function within<T>(work: Promise<T>, ms: number): Promise<T | "stuck"> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<"stuck">((resolve) => timer = setTimeout(resolve, ms, "stuck"));
  return Promise.race([work, deadline]).finally(() => clearTimeout(timer));
}

const onBunDriver = testDriver().driver === "bun";

describe("release() while a db.sql statement started without an await still runs", () => {
  // A db.sql statement counted in flight from its first then (audit 29), but one started with
  // execute() (or postgres.js's forEach()) never goes through then: release() checked the
  // connection in at once, and the next checkout got it while the statement still ran.
  const ways = onBunDriver ? ["execute"] as const : ["execute", "forEach"] as const;
  for (const how of ways) {
    it(`checks the connection in only once the statement has settled (${how})`, async () => {
      const app = `audit30-sql-${how}`;
      await using p = new Pool({
        db: cluster.endpoints(),
        groups: { g: { connection_count: 1 } },
        application_name: app,
        health_check_interval_ms: 0,
      });
      const db = await p.acquire("g");
      const statement = db.sql`SELECT pg_sleep(1.5) AS slept`;
      if (how === "execute") statement.execute();
      else statement.forEach(() => {});
      // Watched past the statement's own then (which would count it in flight).
      let settled = false;
      const result = Promise.prototype.then.call(statement, (rows) => {
        settled = true;
        return rows;
      }, (err: Error) => {
        settled = true;
        return err;
      });
      await waitFor(
        async () => (await poolSessions(cluster, app)).some((s) => s.query.includes("pg_sleep")),
        { message: "the db.sql statement to run" },
      );
      db.release();
      const next = await p.acquire("g", { timeout_ms: 30_000 });
      try {
        assert.ok(settled, "the next checkout got the connection while the statement still ran");
      } finally {
        next.release();
      }
      assert.ok(!((await result) instanceof Error), `the statement failed: ${await result}`);
    });
  }

  // A cursor read through its async iterator is driven by its reader: paused between two
  // batches it holds the connection (postgres.js sends nothing else on it meanwhile). Released
  // so, the connection went back to the group at once: the next checkout's statement waited
  // behind a stranger's cursor for as long as that reader pleased, and the reader went on
  // reading from a connection someone else held. Release closes it instead (as a `for await`
  // left by `break` does), and the reader learns it was released.
  it("closes a cursor still open at release", {
    skip: onBunDriver ? "Bun's SQL has no cursors" : false,
  }, async () => {
    const app = "audit30-cursor";
    await using p = new Pool({
      db: cluster.endpoints(),
      groups: { g: { connection_count: 1 } },
      application_name: app,
      health_check_interval_ms: 0,
    });
    const db = await p.acquire("g");
    const rows = db.sql`SELECT g FROM generate_series(1, 5) AS g`.cursor(2)[Symbol.asyncIterator]();
    const first = await rows.next();
    assert.deepEqual(first.value?.map((r: { g: number }) => r.g), [1, 2]);
    db.release();
    const next = await p.acquire("g", { timeout_ms: 30_000 });
    try {
      const answer = await within(next.query("SELECT 1 AS one"), 10_000);
      if (answer === "stuck") assert.fail("the next checkout's statement waited behind the cursor");
      assert.equal(answer[0].one, 1);
      await assert.rejects(within(rows.next(), 10_000), TypeError, "the cursor read on");
    } finally {
      next.release();
      await rows.return?.();
    }
  });
});
