// Audit 26: the Drizzle and Kysely entries under real faults (terminated backends, a pool closed
// under in-flight work), each case proven against a real server.
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { Kysely, sql } from "kysely";
import { sql as dsql } from "drizzle-orm";
import { integer, pgTable } from "drizzle-orm/pg-core";
import { type PgCluster, startCluster } from "./harness/cluster.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { waitFor } from "./harness/wait.ts";
import { Pool, SessionLostError, TransactionLostError } from "../mod.ts";
import { PgdbpoolDialect } from "../kysely.ts";
import { drizzle } from "../drizzle.ts";

await setTestTimeout(180_000);

interface DB {
  numbers: { n: number };
  marks: { n: number };
}

const marks = pgTable("marks", { n: integer().notNull() });

// Started by the first test that needs servers.
let cluster: PgCluster;
let starting: Promise<PgCluster> | undefined;
const servers = () =>
  starting ??= startCluster({ replicas: 1 }).then(async (c) => {
    cluster = c;
    await c.primary.query("CREATE TABLE numbers (n int PRIMARY KEY)");
    await c.primary.query("INSERT INTO numbers SELECT generate_series(1, 100)");
    await c.primary.query("CREATE TABLE marks (n int NOT NULL)");
    await c.waitForReplication();
    return c;
  });

after(async () => {
  await (await starting)?.close();
}, { timeout: 60_000 });

const APP = "audit26";

function pool(): Pool {
  return new Pool({
    db: cluster.endpoints(),
    groups: {
      write: { connection_count: 2, role: "primary", autocommit: false },
      read: { connection_count: 2, role: "replica" },
    },
    application_name: APP,
    health_check_interval_ms: 100,
  });
}

/** Terminates `backend` from another connection and waits until the server has let it go. */
async function kill(backend: number, server = cluster.primary): Promise<void> {
  await server.query("SELECT pg_terminate_backend($1)", [backend]);
  await waitFor(
    async () =>
      (await server.query("SELECT 1 FROM pg_stat_activity WHERE pid = $1", [backend]))
        .length === 0,
    { message: `backend ${backend} gone` },
  );
}

/** The backends of this test's pools the server still has. */
async function backends(): Promise<number> {
  const rows = await cluster.primary.query(
    "SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1",
    [APP],
  );
  return rows[0].n as number;
}

describe("kysely: a stream's own transaction under faults", () => {
  it("a stream left early whose rollback finds the session lost leaves db.connection() lost", async () => {
    // The rollback of a stream's own transaction, left early after its backend died, was sent
    // without noting the loss the pool reported: Kysely's next rollback on the connection (a
    // transaction whose callback threw before any statement) then reached the pool's rollback
    // of a lost checkout, the explicit way to a new session, and db.connection() went on in a
    // fresh backend without a word.
    await servers();
    await using p = pool();
    const db = new Kysely<DB>({ dialect: new PgdbpoolDialect({ pool: p, group: "write" }) });
    const outcome = await db.connection().execute(async (c) => {
      // A transaction first: the connection's checkout now opens a block with every first
      // statement, so a later transaction sends nothing before its first statement.
      const backend = await c.transaction().execute(async (trx) =>
        (await sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`.execute(trx)).rows[0].pid
      );
      const left = await (async () => {
        for await (const _ of c.selectFrom("numbers").selectAll().stream(10)) {
          await kill(backend);
          break;
        }
      })().then(() => undefined, (err: Error) => err);
      const rolledBack = await c.transaction().execute(() => {
        throw new Error("the caller's own failure");
      }).then(() => undefined, (err: Error) => err);
      const later = await sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`.execute(c).then(
        (r) => r.rows[0],
        (err: Error) => err,
      );
      return { left, rolledBack, later };
    });
    assert.ok(outcome.left instanceof TransactionLostError, String(outcome.left));
    assert.ok(
      outcome.later instanceof SessionLostError,
      `went on with ${
        JSON.stringify(outcome.later)
      } (stream: ${outcome.left}; rollback: ${outcome.rolledBack})`,
    );
    await waitFor(() => p.stats().groups.write.busy === 0, { message: "permit back" });
  });
});

describe("kysely: routing of SELECTs that lock rows", () => {
  it("a lock clause in a subquery keeps the SELECT on group", async () => {
    // Only the outermost SELECT's (and its CTEs') lock clauses were looked at: a SELECT whose
    // subquery locks rows went to the read group and failed on a replica with 25006 ("cannot
    // execute SELECT FOR UPDATE in a read-only transaction").
    await servers();
    await using p = pool();
    const db = new Kysely<DB>({
      dialect: new PgdbpoolDialect({ pool: p, group: "write", read: "read" }),
    });
    const port = sql<number>`inet_server_port()`.as("port");
    const inFrom = db.selectFrom(db.selectFrom("numbers").selectAll().forUpdate().as("s"))
      .select(port).limit(1);
    const inWhere = db.selectFrom("numbers")
      .where("n", "in", db.selectFrom("numbers").select("n").where("n", "<", 3).forShare())
      .select(port).limit(1);
    const inSelection = db.selectFrom("numbers")
      .select((eb) => [
        port,
        eb.selectFrom("numbers as m").select("m.n").limit(1).forNoKeyUpdate().as("m"),
      ])
      .limit(1);
    for (const query of [inFrom, inWhere, inSelection]) {
      const rows = await query.execute();
      assert.equal(rows[0].port, cluster.primary.port, query.compile().sql);
    }
    // A plain SELECT still reads on the replica.
    const [plain] = await db.selectFrom("numbers").select(port).limit(1).execute();
    assert.equal(plain.port, cluster.replicas[0].port);
  });

  it("a CTE of raw SQL still keeps the SELECT on group", async () => {
    // The first version of the walk above looked into a raw CTE's nodes (none of them a write)
    // and sent `WITH x AS (INSERT ... RETURNING ...) SELECT` to a replica (25006).
    await servers();
    await using p = pool();
    const db = new Kysely<DB>({
      dialect: new PgdbpoolDialect({ pool: p, group: "write", read: "read" }),
    });
    const insert = sql<{ n: number }>`(INSERT INTO marks VALUES (99) RETURNING n)`;
    const rows = await db.with("x", () => insert as never).selectFrom("x" as never)
      .select(sql<number>`inet_server_port()`.as("port")).execute();
    assert.equal(rows[0].port, cluster.primary.port);
    await p.query("write", "DELETE FROM marks WHERE n = 99");
  });
});

describe("drizzle: transactions under faults", () => {
  it("a session lost in a nested savepoint fails the commit, nothing applied, nothing moved", async () => {
    // Sound when audited (kept as a guard): the savepoint's ROLLBACK TO finds the session lost
    // and is swallowed, the outer callback goes on, and nothing of it may run on a new backend
    // or commit there.
    await servers();
    await using p = pool();
    const db = drizzle(p, { group: "write" });
    const pids: number[] = [];
    const result = await db.transaction(async (tx) => {
      const [{ pid }] = await tx.execute<{ pid: number }>(
        dsql`SELECT pg_backend_pid() AS pid`,
      );
      pids.push(pid);
      await tx.insert(marks).values({ n: 1 });
      // The README's pattern: a savepoint whose failure the outer transaction survives.
      await tx.transaction(async (sp) => {
        await sp.insert(marks).values({ n: 2 });
        await kill(pid);
        await sp.insert(marks).values({ n: 3 });
      }).catch(() => {});
      const after = await tx.execute<{ pid: number }>(
        dsql`SELECT pg_backend_pid() AS pid`,
      )
        .then((r) => r[0].pid, (err: Error) => err);
      if (typeof after === "number") pids.push(after);
      await tx.insert(marks).values({ n: 4 }).catch(() => {});
      return after;
    }).then((r) => r, (err: Error) => err);
    assert.ok(
      result instanceof Error,
      `committed, returning ${JSON.stringify(result)}`,
    );
    assert.ok(
      (result as Error).cause instanceof TransactionLostError,
      `cause: ${(result as Error).cause}`,
    );
    assert.deepEqual(pids.length, 1, `ran on backends ${pids}`);
    assert.deepEqual(await cluster.primary.query("SELECT n FROM marks"), []);
    await waitFor(() => p.stats().groups.write.busy === 0, {
      message: "permit back",
    });
  });
});

describe("kysely: transactions under faults", () => {
  it("a session lost mid-transaction: later statements refused, nothing applied", async () => {
    // Sound when audited (kept as a guard): statements the callback sends after catching the
    // loss are refused unsent, and the transaction reports TransactionLostError.
    await servers();
    await using p = pool();
    const db = new Kysely<DB>({
      dialect: new PgdbpoolDialect({ pool: p, group: "write" }),
    });
    const seen: unknown[] = [];
    const result = await db.transaction().execute(async (trx) => {
      const { rows } = await sql<
        { pid: number }
      >`SELECT pg_backend_pid() AS pid`.execute(trx);
      await trx.insertInto("marks").values({ n: 10 }).execute();
      await kill(rows[0].pid);
      await trx.insertInto("marks").values({ n: 11 }).execute().catch((e) => seen.push(e));
      await trx.insertInto("marks").values({ n: 12 }).execute().catch((e) => seen.push(e));
      return "done";
    }).then((r) => r, (err: Error) => err);
    assert.ok(result instanceof TransactionLostError, `result: ${result}`);
    assert.ok(seen.every((e) => e instanceof SessionLostError), `${seen}`);
    assert.deepEqual(
      await cluster.primary.query("SELECT n FROM marks WHERE n >= 10"),
      [],
    );
    await waitFor(() => p.stats().groups.write.busy === 0, {
      message: "permit back",
    });
  });
});

describe("close under in-flight ORM work", () => {
  it("pool.close() during a Drizzle transaction and a Kysely stream: no hang, no backend left", async () => {
    // Sound when audited (kept as a guard): close() ends the sessions of checkouts held past
    // close_timeout_ms; the transaction's later statements and the stream fail, nothing commits.
    await servers();
    const p = new Pool({
      db: cluster.endpoints(),
      groups: {
        write: { connection_count: 2, role: "primary", autocommit: false },
      },
      application_name: APP,
      health_check_interval_ms: 100,
      close_timeout_ms: 500,
    });
    const d = drizzle(p, { group: "write" });
    const k = new Kysely<DB>({
      dialect: new PgdbpoolDialect({ pool: p, group: "write" }),
    });
    let release!: () => void;
    const gate = new Promise<void>((r) => release = r);
    let inTx!: () => void;
    const started = new Promise<void>((r) => inTx = r);
    let streaming!: () => void;
    const streamed = new Promise<void>((r) => streaming = r);
    const tx = d.transaction(async (t) => {
      await t.insert(marks).values({ n: 20 });
      inTx();
      await gate;
      await t.insert(marks).values({ n: 21 });
    }).then(() => "committed", (err: Error) => err);
    const stream = (async () => {
      for await (const _ of k.selectFrom("numbers").selectAll().stream(5)) {
        streaming();
        await gate;
      }
    })().then(() => "done", (err: Error) => err);
    await started;
    await streamed;
    // Both hold their checkouts past close_timeout_ms: close() ends their sessions.
    const t0 = Date.now();
    await p.close();
    assert.ok(Date.now() - t0 < 5_000, `close() took ${Date.now() - t0} ms`);
    release();
    const [txOutcome, streamOutcome] = await Promise.all([tx, stream]);
    assert.ok(txOutcome instanceof Error, `transaction: ${txOutcome}`);
    assert.ok(streamOutcome instanceof Error, `stream: ${streamOutcome}`);
    assert.deepEqual(
      await cluster.primary.query("SELECT n FROM marks WHERE n >= 20"),
      [],
    );
    await waitFor(async () => await backends() === 0, {
      message: "no backend of the pool",
    });
  });
});

describe("kysely: a stream whose backend dies", () => {
  it("reports the loss once and re-sends nothing: no row twice, no backend left", async () => {
    // Sound when audited (kept as a guard): a stream on the read group whose replica backend is
    // terminated between chunks ends with the loss; its cursor is not declared again elsewhere,
    // which would hand the caller the rows it already had.
    await servers();
    await using p = pool();
    const db = new Kysely<DB>({
      dialect: new PgdbpoolDialect({ pool: p, group: "write", read: "read" }),
    });
    const replica = cluster.replicas[0];
    const seen: number[] = [];
    const pid = sql<number>`pg_backend_pid()`.as("pid");
    const ended = await (async () => {
      for await (
        const row of db.selectFrom("numbers").select(["n", pid]).orderBy("n").stream(10)
      ) {
        seen.push(row.n);
        if (seen.length === 10) await kill(row.pid, replica);
      }
    })().then(() => undefined, (err: Error) => err);
    assert.ok(ended instanceof TransactionLostError, String(ended));
    assert.deepEqual(seen, Array.from({ length: 10 }, (_, i) => i + 1));
    await waitFor(() => p.stats().groups.read.busy === 0, { message: "permit back" });
    await waitFor(async () =>
      (await replica.query(
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1 AND state <> 'idle'",
        [APP],
      ))[0].n === 0
    );
  });
});
