// Defects found by audit 30 (statements called while the first one moves off a dead connection,
// db.sql statements started without an await, cursors still open at release), each proven
// against real servers and real faults.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { type PgCluster, startCluster, testDriver } from "./harness/cluster.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { poolSessions, terminate } from "./harness/faults.ts";
import { waitFor } from "./harness/wait.ts";
import { Pool } from "../mod.ts";

await setTestTimeout(120_000);

let cluster: PgCluster;

before(async () => {
  cluster = await startCluster({ replicas: 0 });
  await cluster.primary.query("CREATE TABLE writes (id serial PRIMARY KEY, v text NOT NULL)");
}, { timeout: 120_000 });

after(async () => {
  await cluster?.close();
}, { timeout: 60_000 });

const count = async (v: string): Promise<number> =>
  (await cluster.primary.query("SELECT count(*)::int AS n FROM writes WHERE v = $1", [v]))[0].n;

/** Resolves to `"stuck"` unless `work` settles within `ms` (a deadline, not a pause). */
function within<T>(work: Promise<T>, ms: number): Promise<T | "stuck"> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<"stuck">((resolve) => timer = setTimeout(resolve, ms, "stuck"));
  return Promise.race([work, deadline]).finally(() => clearTimeout(timer));
}

const onBunDriver = testDriver().driver === "bun";

describe("statements called while the checkout's first statement moves off a dead connection", () => {
  // The first statement of a checkout whose backend died finds its connection dead and moves to
  // a fresh one, which it first has to wait for; the move swaps the lease's connection at once.
  // A statement called meanwhile saw a fresh, unused connection and went out at once, ahead of
  // the first: the caller's own COMMIT or END (behind a BEGIN of its own) committed nothing and
  // was acknowledged, and the INSERT then ran in a transaction the check-in rolled back; a
  // ROLLBACK went out before what it was to roll back, which the commit() after it committed;
  // an UPDATE of the row the INSERT writes ran before it. commit() already waited (audit 29).
  const connectionOf = async (app: string): Promise<Pool> => {
    const p = new Pool({
      db: cluster.endpoints(),
      groups: { tx: { connection_count: 1, autocommit: false }, auto: { connection_count: 1 } },
      application_name: app,
      health_check_interval_ms: 0,
      validate_after_ms: 0,
    });
    await p.transaction("tx", (db) => db.query("SELECT 1"));
    await p.query("auto", "SELECT 1");
    return p;
  };
  const kill = async (app: string): Promise<void> => {
    assert.ok((await terminate(await poolSessions(cluster, app))).length >= 1);
    await waitFor(async () => (await poolSessions(cluster, app)).length === 0, {
      message: "the terminated backends to exit",
    });
  };
  for (const via of ["COMMIT", "END"] as const) {
    it(`${via} commits the statement it follows`, async () => {
      const app = `audit30-moved-${via}`;
      await using p = await connectionOf(app);
      const v = `${app}-w`;
      {
        await using db = p.handler("tx");
        await kill(app);
        await Promise.all([db.query("INSERT INTO writes (v) VALUES ($1)", [v]), db.query(via)]);
        assert.ok(!db.inTransaction, `${via} ended the transaction the INSERT opened`);
      }
      assert.equal(await count(v), 1, "the write whose COMMIT was acknowledged is durable");
    });
  }
  it("ROLLBACK rolls back the statement it follows", async () => {
    const app = "audit30-moved-ROLLBACK";
    await using p = await connectionOf(app);
    const v = `${app}-w`;
    {
      await using db = p.handler("tx");
      await kill(app);
      await Promise.all([
        db.query("INSERT INTO writes (v) VALUES ($1)", [v]),
        db.query("ROLLBACK"),
      ]);
      await db.commit();
    }
    assert.equal(await count(v), 0, "the write rolled back stays rolled back");
  });
  it("a statement runs after the one called before it", async () => {
    const app = "audit30-moved-order";
    await using p = await connectionOf(app);
    const v = `${app}-w`;
    {
      await using db = p.handler("auto");
      await kill(app);
      await Promise.all([
        db.query("INSERT INTO writes (v) VALUES ($1)", [v]),
        db.query("UPDATE writes SET v = v || '-updated' WHERE v = $1", [v]),
      ]);
    }
    assert.equal(await count(`${v}-updated`), 1, "the UPDATE ran before the INSERT it follows");
  });
});

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
