import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { type PgCluster, startCluster } from "./harness/cluster.ts";
import {
  Connection,
  Handler,
  Pool,
  PoolClosedError,
  TransactionAbortedError,
  TransactionLostError,
  UnconfiguredGroupError,
} from "../mod.ts";

let cluster: PgCluster;
let pool: Pool;
const app = "handler_test";

before(async () => {
  cluster = await startCluster({ replicas: 0 });
  pool = new Pool({
    db: cluster.endpoints(),
    groups: {
      auto: { connection_count: 3 },
      tx: { connection_count: 2, autocommit: false },
    },
    application_name: app,
  });
  await pool.query("auto", "CREATE TABLE items (id serial PRIMARY KEY, v text NOT NULL)");
}, { timeout: 120_000 });

after(async () => {
  await pool?.close();
  await cluster?.close();
}, { timeout: 60_000 });

async function values(): Promise<string[]> {
  const rows = await pool.query<{ v: string }>("auto", "SELECT v FROM items ORDER BY id");
  return rows.map((r) => r.v);
}

describe("Handler", () => {
  it("runs parameterised statements and returns postgres.js rows", async () => {
    const rows = await pool.query("auto", "SELECT $1::int AS n, $2::text AS s", [1, "x"]);
    assert.equal(rows[0].n, 1);
    assert.equal(rows[0].s, "x");
    assert.equal(rows.count, 1);
    assert.equal(rows.command, "SELECT");
    using db = pool.handler("auto");
    assert.equal(db.group, "auto");
    await db.query("SELECT 1");
    assert.equal(db.endpoint?.port, cluster.primary.port);
    assert.equal(db.endpoint?.index, 0);
  });

  it("prepares recurring texts without parameters, never one-off texts, and keeps several statements in one text working", async () => {
    using db = pool.handler("auto");
    const prepared = async () =>
      (await db.query<{ statement: string }>(
        "SELECT statement FROM pg_prepared_statements WHERE statement LIKE $1",
        ["SELECT % /* repeat-probe%"],
      )).map((r) => r.statement);
    // First sighting: the simple protocol; from the second on, a named prepared statement.
    for (let i = 0; i < 3; i++) {
      const [{ n }] = await db.query<{ n: number }>("SELECT 7 AS n /* repeat-probe */");
      assert.equal(n, 7);
    }
    assert.deepEqual(await prepared(), ["SELECT 7 AS n /* repeat-probe */"]);
    // Values spliced into the text: each text is new, none is prepared.
    for (let i = 0; i < 5; i++) {
      await db.query(`SELECT ${i} AS n /* repeat-probe ${i} */`);
    }
    assert.deepEqual(await prepared(), ["SELECT 7 AS n /* repeat-probe */"]);
    // Several statements in one text, again and again: always the simple protocol.
    for (let i = 0; i < 3; i++) {
      const results = await db.query("SELECT 1 AS a; SELECT 2 AS b") as unknown as unknown[][];
      assert.deepEqual(results.map((r) => [...r]), [[{ a: 1 }], [{ b: 2 }]]);
    }
  });

  it("ROLLBACK TO SAVEPOINT and ... AND CHAIN keep the transaction open", async () => {
    // Their command tags are ROLLBACK / COMMIT, yet the transaction goes on: commit() must
    // still commit it, and release must still roll back what is left open.
    {
      using db = pool.handler("tx");
      await db.query("INSERT INTO items (v) VALUES ('sp-kept')");
      await db.query("SAVEPOINT s");
      await db.query("INSERT INTO items (v) VALUES ('sp-undone')");
      await db.query("ROLLBACK TO SAVEPOINT s");
      assert.equal(db.inTransaction, true);
      await db.commit();
    }
    {
      using db = pool.handler("auto");
      await db.query("BEGIN");
      await db.query("INSERT INTO items (v) VALUES ('chain-1')");
      await db.query("COMMIT AND CHAIN");
      assert.equal(db.inTransaction, true);
      await db.query("INSERT INTO items (v) VALUES ('chain-2 never committed')");
      await db.query("ROLLBACK TRANSACTION TO SAVEPOINT nonexistent").catch(() => {});
    }
    const all = await values();
    assert.ok(all.includes("sp-kept") && all.includes("chain-1"), all.join());
    assert.ok(!all.includes("sp-undone") && !all.includes("chain-2 never committed"), all.join());
    const idle = await cluster.primary.query(
      `SELECT count(*)::int AS n FROM pg_stat_activity
        WHERE application_name = $1 AND state = 'idle in transaction'`,
      [app],
    );
    assert.equal(idle[0].n, 0, "no pooled connection is left inside a transaction");
  });

  it("commits explicitly in an autocommit: false group", async () => {
    {
      using db = pool.handler("tx");
      await db.query("INSERT INTO items (v) VALUES ($1)", ["committed"]);
      assert.equal(db.inTransaction, true);
      await db.commit();
      assert.equal(db.inTransaction, false);
    }
    assert.ok((await values()).includes("committed"));
  });

  it("rolls back uncommitted work on dispose (the original committed it)", async () => {
    {
      await using db = pool.handler("tx");
      await db.query("INSERT INTO items (v) VALUES ($1)", ["disposed"]);
    }
    {
      using db = pool.handler("tx");
      await db.query("INSERT INTO items (v) VALUES ($1)", ["sync-disposed"]);
    }
    // The sync dispose rolls back in the background; the next checkout of the group waits for it.
    using probe = pool.handler("tx");
    const rows = await probe.query("SELECT count(*)::int AS n FROM items WHERE v LIKE '%disposed'");
    assert.equal(rows[0].n, 0);
    await probe.rollback();
    assert.ok(!(await values()).some((v) => v.endsWith("disposed")));
  });

  it("rolls back when the block throws", async () => {
    await assert.rejects(
      (async () => {
        await using db = pool.handler("tx");
        await db.query("INSERT INTO items (v) VALUES ('thrown')");
        throw new Error("boom");
      })(),
      /boom/,
    );
    assert.ok(!(await values()).includes("thrown"));
  });

  it("pool.transaction commits on success and rolls back on throw", async () => {
    const result = await pool.transaction("auto", async (db) => {
      await db.query("INSERT INTO items (v) VALUES ('tx-ok')");
      return 42;
    });
    assert.equal(result, 42);
    await assert.rejects(
      pool.transaction("auto", async (db) => {
        await db.query("INSERT INTO items (v) VALUES ('tx-fail')");
        throw new Error("nope");
      }),
      /nope/,
    );
    const v = await values();
    assert.ok(v.includes("tx-ok"));
    assert.ok(!v.includes("tx-fail"));
  });

  it("passes PostgreSQL errors through with their SQLSTATE", async () => {
    await assert.rejects(pool.query("auto", "SELECT * FROM no_such_table"), (err: Error) => {
      assert.equal((err as Error & { code: string }).code, "42P01");
      assert.equal(err.constructor.name, "PostgresError");
      return true;
    });
  });

  it("reports a commit that PostgreSQL turned into a rollback", async () => {
    using db = pool.handler("tx");
    await db.query("INSERT INTO items (v) VALUES ('aborted')");
    await assert.rejects(
      db.query("SELECT 1/0"),
      (err: Error & { code: string }) => err.code === "22012",
    );
    await assert.rejects(db.commit(), TransactionAbortedError);
    assert.ok(!(await values()).includes("aborted"));
  });

  it("raises TransactionLostError after the backend is killed mid-transaction", async () => {
    using db = pool.handler("tx");
    await db.query("INSERT INTO items (v) VALUES ('lost')");
    const [{ pid }] = await db.query<{ pid: number }>("SELECT pg_backend_pid() AS pid");
    await cluster.primary.query("SELECT pg_terminate_backend($1)", [pid]);
    await assert.rejects(
      db.query("INSERT INTO items (v) VALUES ('after-kill')"),
      TransactionLostError,
    );
    await assert.rejects(db.commit(), TransactionLostError);
    // Nothing of the lost transaction exists, and nothing ran on a replacement session.
    const v = await values();
    assert.ok(!v.includes("lost") && !v.includes("after-kill"));
    // After rollback() the handler works again, on a fresh session.
    await db.rollback();
    await db.query("INSERT INTO items (v) VALUES ('recovered')");
    await db.commit();
    assert.ok((await values()).includes("recovered"));
  });

  it("raises TransactionLostError when the kill lands right before COMMIT", async () => {
    using db = pool.handler("tx");
    await db.query("INSERT INTO items (v) VALUES ('lost-at-commit')");
    const [{ pid }] = await db.query<{ pid: number }>("SELECT pg_backend_pid() AS pid");
    await cluster.primary.query("SELECT pg_terminate_backend($1)", [pid]);
    await assert.rejects(db.commit(), TransactionLostError);
    assert.ok(!(await values()).includes("lost-at-commit"));
  });

  it("binds sql to the handler's connection and transaction", async () => {
    {
      await using db = await pool.acquire("tx");
      const v = "via-sql";
      await db.sql`INSERT INTO items (v) VALUES (${v})`;
      const [{ n }] = await db.sql`SELECT count(*)::int AS n FROM items WHERE v = ${v}`;
      assert.equal(n, 1);
      // Not committed: another connection does not see it yet.
      assert.ok(!(await values()).includes(v));
      await db.commit();
    }
    assert.ok((await values()).includes("via-sql"));
  });

  it("rejects use after release with a clear error, and release is idempotent", async () => {
    const db = pool.handler("auto");
    db.release();
    db.release();
    await assert.rejects(db.query("SELECT 1"), /Handler of group "auto" was used after release/);
    assert.throws(() => db.sql, /used after release/);
  });

  it("names an unknown group", () => {
    assert.throws(() => pool.handler("nope"), (err: Error) => {
      assert.ok(err instanceof UnconfiguredGroupError);
      assert.match(err.message, /"nope" is not configured \(configured: "auto", "tx"\)/);
      return true;
    });
  });

  it("offers the module-wide Connection.init and new Handler(group)", async () => {
    assert.throws(() => new Handler("default"), PoolClosedError);
    Connection.init({
      db: cluster.endpoints(),
      groups: { default: { connection_count: 1 } },
      application_name: "connection_init",
    });
    {
      using db = new Handler("default");
      const rows = await db.query("SELECT 7 AS n");
      assert.equal(rows[0].n, 7);
    }
    await Connection.close();
    assert.throws(() => new Handler("default"), PoolClosedError);
    assert.equal(await cluster.countConnections({ applicationName: "connection_init" }), 0);
  });
});
