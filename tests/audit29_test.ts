// Defects found by audit 29 (transactions and db.sql statements under faults, statements still in
// flight at commit or release), each proven against real servers and real faults.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { type PgCluster, startCluster } from "./harness/cluster.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { poolSessions, terminate } from "./harness/faults.ts";
import { waitFor } from "./harness/wait.ts";
import { Pool, type PoolConfig, TransactionLostError } from "../mod.ts";
import { inspect } from "node:util";

await setTestTimeout(120_000);

let cluster: PgCluster;

before(async () => {
  cluster = await startCluster({ replicas: 0 });
  await cluster.primary.query("CREATE TABLE writes (id serial PRIMARY KEY, v text NOT NULL)");
}, { timeout: 120_000 });

after(async () => {
  await cluster?.close();
}, { timeout: 60_000 });

/** A pool of one transactional connection, background probing off, named `app`. */
const txPool = (app: string, extra: Partial<PoolConfig> = {}): Pool =>
  new Pool({
    db: cluster.endpoints(),
    groups: { tx: { connection_count: 1, autocommit: false } },
    application_name: app,
    health_check_interval_ms: 0,
    ...extra,
  });

const count = async (v: string): Promise<number> =>
  (await cluster.primary.query("SELECT count(*)::int AS n FROM writes WHERE v = $1", [v]))[0].n;

describe("commit() pipelined behind the transaction's first statement", () => {
  // A transaction's first statement on a connection idle past validate_after_ms waits for the
  // connection's ping (and for the move to a fresh one when the ping finds it dead) before its
  // pipelined BEGIN goes out. A commit() called meanwhile found no transaction open and
  // resolved at once as a success; the INSERT then ran in the transaction its BEGIN opened,
  // which the check-in rolled back: an acknowledged commit of a write that never became durable.
  for (const fault of ["none", "terminated"] as const) {
    it(`commits the statement it follows (idle connection, backend ${fault})`, async () => {
      const app = `audit29-pipelined-commit-${fault}`;
      // Every connection used before is pinged before a checkout's first statement.
      await using p = txPool(app, { validate_after_ms: 0 });
      await p.transaction("tx", (db) => db.query("SELECT 1"));
      const v = `${app}-w`;
      {
        // Checked out first: the backend dies under a connection the checkout already holds,
        // so its first statement finds it dead (or its ping fails) and moves.
        await using db = p.handler("tx");
        if (fault === "terminated") {
          assert.equal((await terminate(await poolSessions(cluster, app))).length, 1);
          await waitFor(async () => (await poolSessions(cluster, app)).length === 0, {
            message: "the terminated backend to exit",
          });
        }
        const insert = db.query("INSERT INTO writes (v) VALUES ($1)", [v]);
        const commit = db.commit();
        await Promise.all([insert, commit]);
      }
      assert.equal(await count(v), 1, "the write whose commit was acknowledged is durable");
    });
  }

  // The same for rollback(): it found nothing open, and a commit() after it then committed the
  // statement the caller had rolled back.
  it("rollback() rolls back the statement it follows (idle connection)", async () => {
    const app = "audit29-pipelined-rollback";
    await using p = txPool(app, { validate_after_ms: 0 });
    await p.transaction("tx", (db) => db.query("SELECT 1"));
    const v = `${app}-w`;
    {
      await using db = p.handler("tx");
      await Promise.all([db.query("INSERT INTO writes (v) VALUES ($1)", [v]), db.rollback()]);
      await db.commit();
    }
    assert.equal(await count(v), 0, "the write rolled back stays rolled back");
  });
});

describe("release() while a db.sql statement is still running", () => {
  // release() keeps the connection while a statement of db.query() is in flight and checks it
  // in once it settles, but a db.sql statement was not counted: the connection went back to the
  // group with the statement still running on it, and the next checkout got it mid-statement
  // (its own statements queued behind a stranger's, the connection owned twice). A Promise.all
  // over db.sql statements whose first rejects leaves a `using` block exactly so.
  it("checks the connection in only once the statement has settled", async () => {
    const app = "audit29-sql-inflight";
    await using p = new Pool({
      db: cluster.endpoints(),
      groups: { g: { connection_count: 1 } },
      application_name: app,
      health_check_interval_ms: 0,
    });
    const db = await p.acquire("g");
    let settled = false;
    const slow = Promise.resolve(db.sql`SELECT pg_sleep(1.5) AS slept`).then((rows) => {
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
    const rows = await slow;
    assert.ok(!(rows instanceof Error), `the statement failed: ${rows}`);
    assert.equal(rows[0].slept, "");
  });
});

describe("a statement pipelined behind the end of a block in a transaction group", () => {
  // The block stayed marked open until its COMMIT was answered, so a statement called right
  // after it (not awaiting the commit) got no BEGIN of its own and ran after the COMMIT outside
  // any transaction: committed at once in a group whose statements all run in transactions,
  // beyond the reach of the rollback() that followed. So for commit(), and for the caller's
  // own COMMIT, END or ROLLBACK.
  for (const via of ["commit()", "COMMIT", "END", "ROLLBACK"] as const) {
    it(`runs in the next transaction, which rollback() undoes (${via})`, async () => {
      const app = `audit29-after-${via.replace("()", "")}`;
      await using p = txPool(app);
      const v = `${app}-w`;
      {
        await using db = await p.acquire("tx");
        await db.query("SELECT 1");
        const end = via === "commit()" ? db.commit() : db.query(via);
        await Promise.all([end, db.query("INSERT INTO writes (v) VALUES ($1)", [v])]);
        assert.ok(db.inTransaction, "the INSERT opened the next transaction");
        await db.rollback();
      }
      assert.equal(await count(v), 0, "the INSERT rolled back stays rolled back");
    });
  }
  // The other side of it: a COMMIT refused before it ran (a syntax error) leaves the block open,
  // aborted; it must stay marked open, so that the check-in rolls it back.
  it("a COMMIT the server refuses leaves the block marked open", async () => {
    const app = "audit29-commit-refused";
    await using p = txPool(app);
    const v = `${app}-w`;
    {
      await using db = await p.acquire("tx");
      await db.query("INSERT INTO writes (v) VALUES ($1)", [v]);
      await assert.rejects(db.query("COMMIT nonsense"));
      assert.ok(db.inTransaction, "the block is still open (aborted)");
    }
    assert.equal(await count(v), 0);
    const [row] = await p.transaction("tx", (db) => db.query("SELECT 1 AS one"));
    assert.equal(row.one, 1, "the connection came back out of the aborted block");
  });
  // And a statement of the transaction lost with its session while the COMMIT behind it was
  // still on its way lost the transaction, not merely the session.
  it("a statement lost while the COMMIT behind it is on its way reports a lost transaction", async () => {
    const app = "audit29-lost-before-commit";
    await using p = txPool(app);
    const v = `${app}-w`;
    await using db = await p.acquire("tx");
    await db.query("SELECT 1");
    const insert = db.query("INSERT INTO writes (v) SELECT $1 FROM pg_sleep(30)", [v])
      .then(() => "answered", (err: Error) => err);
    const commit = db.commit().then(() => "committed", (err: Error) => err);
    await waitFor(
      async () => (await poolSessions(cluster, app)).some((s) => s.query.includes("pg_sleep")),
      { message: "the INSERT to run" },
    );
    assert.equal((await terminate(await poolSessions(cluster, app))).length, 1);
    for (const [what, settled] of [["INSERT", await insert], ["COMMIT", await commit]]) {
      assert.ok(settled instanceof TransactionLostError, `${what}: ${inspect(settled)}`);
    }
    assert.equal(await count(v), 0);
  });
});
