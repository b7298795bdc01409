// @x/pgdbpool/kysely against a real primary and replica: where each kind of query runs (proven
// by inet_server_port() and pg_is_in_recovery() inside the statement), transactions,
// savepoints, streaming through a cursor, db.connection(), errors, read-your-writes, Kysely's
// migrator, and a destroy() that leaves the pool open.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { AbortedTransactionError, type Generated, Kysely, sql } from "kysely";
import { type Migration, Migrator } from "kysely/migration";
import { type PgCluster, startCluster } from "./harness/cluster.ts";
import { pauseReplay, resumeReplay } from "./harness/faults.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { waitFor } from "./harness/wait.ts";
import {
  Pool,
  PoolClosedError,
  type PoolConfig,
  SessionLostError,
  TransactionAbortedError,
} from "../mod.ts";
import { PgdbpoolDialect } from "../kysely.ts";
import { poolHooks } from "../src/hooks.ts";

await setTestTimeout(180_000);

interface DB {
  notes: { id: Generated<number>; body: string; owner: number | null };
  numbers: { n: number };
}

const port = sql<number>`inet_server_port()`.as("port");
const standby = sql<boolean>`pg_is_in_recovery()`.as("standby");
const pid = sql<number>`pg_backend_pid()`.as("pid");

let cluster: PgCluster;
let primaryPort: number;
let replicaPort: number;

before(async () => {
  cluster = await startCluster({ replicas: 1 });
  primaryPort = cluster.primary.port;
  replicaPort = cluster.replicas[0].port;
  for (
    const ddl of [
      "CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL UNIQUE, owner int)",
      "CREATE TABLE numbers (n int PRIMARY KEY)",
      "INSERT INTO notes (body, owner) VALUES ('one', 1), ('two', 1)",
      "INSERT INTO numbers SELECT generate_series(1, 1000)",
    ]
  ) await cluster.primary.query(ddl);
  await cluster.waitForReplication();
}, { timeout: 180_000 });

after(async () => {
  await cluster?.close();
}, { timeout: 60_000 });

function pool(extra: Partial<PoolConfig> = {}): Pool {
  return new Pool({
    db: cluster.endpoints(),
    groups: {
      write: { connection_count: 2, role: "primary", autocommit: false },
      read: { connection_count: 2, role: "replica", read_your_writes_timeout_ms: 300 },
    },
    application_name: "kysely_test",
    health_check_interval_ms: 100,
    ...extra,
  });
}

function kysely(p: Pool, options: { read?: string; read_your_writes?: boolean } = {}): Kysely<DB> {
  return new Kysely<DB>({ dialect: new PgdbpoolDialect({ pool: p, group: "write", ...options }) });
}

/** Records the text of every statement the pool sends. */
function statements(p: Pool): string[] {
  const seen: string[] = [];
  p[poolHooks] = {
    statement: (s) => {
      seen.push(s.text);
      return () => {};
    },
    checkout: () => {},
    checkin: () => {},
    connected: () => {},
  };
  return seen;
}

describe("routing", () => {
  it("without read, every query runs on group", async () => {
    await using p = pool();
    const db = kysely(p);
    const rows = await db.selectFrom("notes").select([port, standby]).limit(1).execute();
    assert.deepEqual(rows, [{ port: primaryPort, standby: false }]);
  });

  it("with read, SELECTs run on read and everything else on group", async () => {
    await using p = pool();
    const db = kysely(p, { read: "read" });
    assert.deepEqual(await db.selectFrom("notes").select([port, standby]).limit(1).execute(), [
      { port: replicaPort, standby: true },
    ]);
    const viaCte = await db.with("n", (q) => q.selectFrom("notes").select("id"))
      .selectFrom("n").select(port).limit(1).execute();
    assert.deepEqual(viaCte, [{ port: replicaPort }]);
    // Writes, a locking SELECT, a SELECT fed by a data-modifying CTE, raw SQL: group.
    const ins = await db.insertInto("notes").values({ body: "three" }).returning([port, standby])
      .executeTakeFirstOrThrow();
    assert.deepEqual(ins, { port: primaryPort, standby: false });
    const upd = await db.updateTable("notes").set({ owner: 2 }).where("body", "=", "three")
      .returning(port).executeTakeFirstOrThrow();
    assert.equal(upd.port, primaryPort);
    const locked = await db.selectFrom("notes").select(port).where("body", "=", "three")
      .forUpdate().executeTakeFirstOrThrow();
    assert.equal(locked.port, primaryPort);
    const moved = await db.with(
      "m",
      (q) => q.updateTable("notes").set({ owner: 3 }).where("body", "=", "three").returning("id"),
    ).selectFrom("m").select(port).executeTakeFirstOrThrow();
    assert.equal(moved.port, primaryPort);
    const raw = await sql<{ port: number }>`SELECT inet_server_port() AS port`.execute(db);
    assert.deepEqual(raw.rows, [{ port: primaryPort }]);
    const del = await db.deleteFrom("notes").where("body", "=", "three").executeTakeFirstOrThrow();
    assert.equal(del.numDeletedRows, 1n);
  });

  it("a statement outside a transaction is committed on its own in an autocommit: false group", async () => {
    await using p = pool();
    const db = kysely(p, { read: "read" });
    const result = await db.insertInto("notes").values({ body: "four" }).executeTakeFirstOrThrow();
    assert.equal(result.numInsertedOrUpdatedRows, 1n);
    const rows = await cluster.primary.query(
      "SELECT count(*)::int AS n FROM notes WHERE body = 'four'",
    );
    assert.equal(rows[0].n, 1);
    await db.deleteFrom("notes").where("body", "=", "four").execute();
    assert.equal(p.stats().groups.write.busy, 0);
  });

  it("db.connection() is one session from its first statement", async () => {
    await using p = pool();
    const db = kysely(p, { read: "read" });
    const [first, second] = await db.connection().execute(async (c) => {
      await sql`SET application_name = 'kysely_pinned'`.execute(c);
      const a = await c.selectFrom("notes").select([pid, port]).limit(1).executeTakeFirstOrThrow();
      const b = await sql<{ app: string }>`SELECT current_setting('application_name') AS app`
        .execute(c);
      return [a, b.rows[0]];
    });
    assert.equal(first.port, primaryPort, "a connection that starts with a write stays on group");
    assert.equal(second.app, "kysely_pinned");
    const pids = await db.connection().execute(async (c) => {
      const a = await c.selectFrom("notes").select([pid, port]).limit(1).executeTakeFirstOrThrow();
      const b = await c.selectFrom("notes").select([pid, port]).limit(1).executeTakeFirstOrThrow();
      return [a, b];
    });
    assert.equal(pids[0].pid, pids[1].pid);
    assert.equal(pids[0].port, replicaPort);
  });
});

describe("transactions", () => {
  it("on one db.connection(), statements after a transaction commit on their own, same session", async () => {
    // Found by an audit: the transaction took a checkout that opens a transaction with every
    // first statement, and the connection kept it: the write after the transaction was
    // acknowledged inside a new transaction that release rolled back.
    await using p = pool();
    const db = kysely(p);
    const [before, after] = await db.connection().execute(async (c) => {
      await c.transaction().execute(async (trx) => {
        await trx.insertInto("notes").values({ body: "conn-tx", owner: 9 }).execute();
      });
      const a = await c.selectNoFrom([pid]).executeTakeFirstOrThrow();
      const r = await c.insertInto("notes").values({ body: "conn-after", owner: 9 })
        .executeTakeFirstOrThrow();
      assert.equal(r.numInsertedOrUpdatedRows, 1n);
      const open = await sql<{ xid: string | null }>`SELECT txid_current_if_assigned()::text AS xid`
        .execute(c);
      assert.equal(open.rows[0].xid, null, "a statement after the transaction is inside another");
      // A transaction that rolls back, then a write: committed too.
      await c.transaction().execute(async (trx) => {
        await trx.insertInto("notes").values({ body: "conn-rolled-back", owner: 9 }).execute();
        await sql`SELECT 1/0`.execute(trx);
      }).catch(() => {});
      await c.insertInto("notes").values({ body: "conn-after-rollback", owner: 9 }).execute();
      const b = await c.selectNoFrom([pid]).executeTakeFirstOrThrow();
      return [a, b];
    });
    assert.equal(before.pid, after.pid, "the connection changed sessions");
    const bodies = (await p.query("write", "SELECT body FROM notes WHERE owner = 9 ORDER BY body"))
      .map((r) => r.body);
    assert.deepEqual(bodies, ["conn-after", "conn-after-rollback", "conn-tx"]);
    await p.query("write", "DELETE FROM notes WHERE owner = 9");
  });

  it("a transaction lost with its session does not move db.connection() to another", async () => {
    // Found by an audit: Kysely rolls back after a failed transaction, and the pool's rollback
    // of a lost checkout is the explicit way to a new session: the connection went on, without
    // a word, on a backend without its advisory lock.
    await using p = pool();
    const db = kysely(p);
    const outcome = await db.connection().execute(async (c) => {
      const first = await sql<{ pid: number }>`
        SELECT pg_backend_pid() AS pid, pg_try_advisory_lock(4242) AS locked`.execute(c);
      const backend = first.rows[0].pid;
      const lost = await c.transaction().execute(async (trx) => {
        await sql`SELECT 1`.execute(trx);
        await cluster.primary.query("SELECT pg_terminate_backend($1)", [backend]);
        await waitFor(async () =>
          (await cluster.primary.query("SELECT 1 FROM pg_stat_activity WHERE pid = $1", [backend]))
            .length === 0
        );
        await sql`SELECT 2`.execute(trx);
      }).then(() => undefined, (err: Error) => err);
      const later = await sql`SELECT pg_backend_pid() AS pid`.execute(c).then(
        (r) => r.rows[0],
        (err: Error) => err,
      );
      return { lost, later };
    });
    assert.equal(outcome.lost?.name, "TransactionLostError", String(outcome.lost));
    assert.ok(outcome.later instanceof Error, `went on with ${JSON.stringify(outcome.later)}`);
    assert.ok(outcome.later instanceof SessionLostError, String(outcome.later));
  });

  it("a transaction on a db.connection() that began with a read is refused, not run on read", async () => {
    // Found by an audit: the first read pinned the connection to a replica of the read group,
    // and BEGIN went there: the transaction's reads ran on the replica and its writes failed
    // with 25006.
    await using p = pool();
    const db = kysely(p, { read: "read" });
    const outcome = await db.connection().execute(async (c) => {
      await c.selectFrom("notes").select(port).execute();
      return await c.transaction().execute(async (trx) => {
        const seen = await trx.selectNoFrom([port, standby]).executeTakeFirstOrThrow();
        await trx.insertInto("notes").values({ body: "conn-read-tx" }).execute();
        return seen;
      }).then((v) => v, (err: Error) => err);
    });
    // Nothing ran on the replica: the transaction is refused before its BEGIN.
    assert.ok(outcome instanceof TypeError, `ran: ${JSON.stringify(outcome)} ${outcome}`);
    assert.match(outcome.message, /first statement was a read.*group "read".*"write"/);
    const rows = await p.query(
      "write",
      "SELECT count(*)::int AS n FROM notes WHERE body = 'conn-read-tx'",
    );
    assert.equal(rows[0].n, 0);
    assert.equal(p.stats().groups.read.busy, 0);
  });

  it("run on one session of group, commit, and roll back on a throw", async () => {
    await using p = pool();
    const db = kysely(p, { read: "read" });
    const seen = await db.transaction().execute(async (trx) => {
      const a = await trx.insertInto("notes").values({ body: "five" }).returning([pid, port])
        .executeTakeFirstOrThrow();
      const b = await trx.selectFrom("notes").select([pid, port]).where("body", "=", "five")
        .executeTakeFirstOrThrow();
      return [a, b];
    });
    assert.equal(seen[0].pid, seen[1].pid);
    assert.deepEqual([seen[0].port, seen[1].port], [primaryPort, primaryPort]);
    const boom = new Error("boom");
    await assert.rejects(
      db.transaction().execute(async (trx) => {
        await trx.insertInto("notes").values({ body: "six" }).execute();
        throw boom;
      }),
      (err) => err === boom,
    );
    const rows = await cluster.primary.query(
      "SELECT body FROM notes WHERE body IN ('five', 'six') ORDER BY body",
    );
    assert.deepEqual(rows.map((r) => r.body), ["five"]);
    await db.deleteFrom("notes").where("body", "=", "five").execute();
    assert.equal(p.stats().groups.write.busy, 0);
  });

  it("isolation level and access mode become SET TRANSACTION; snapshot is a TypeError", async () => {
    await using p = pool();
    const db = kysely(p);
    const settings = await db.transaction().setIsolationLevel("repeatable read")
      .setAccessMode("read only").execute(async (trx) =>
        (await sql<{ iso: string; ro: string }>`SELECT
          current_setting('transaction_isolation') AS iso,
          current_setting('transaction_read_only') AS ro`.execute(trx)).rows
      );
    assert.deepEqual(settings, [{ iso: "repeatable read", ro: "on" }]);
    await assert.rejects(
      db.transaction().setIsolationLevel("snapshot").execute(async () => {}),
      (err: Error) => err instanceof TypeError && /isolation level "snapshot"/.test(err.message),
    );
    assert.equal(p.stats().groups.write.busy, 0);
  });

  it("savepoints through startTransaction(): rollback to, release, commit", async () => {
    await using p = pool();
    const db = kysely(p, { read: "read" });
    const trx = await db.startTransaction().execute();
    await trx.insertInto("notes").values({ body: "seven" }).execute();
    const a = await trx.savepoint("a").execute();
    await a.insertInto("notes").values({ body: "eight" }).execute();
    const b = await a.releaseSavepoint("a").execute();
    const c = await b.savepoint("c").execute();
    await c.insertInto("notes").values({ body: "nine" }).execute();
    // A failed statement inside a savepoint, rolled back as the last statement before COMMIT.
    await assert.rejects(c.insertInto("notes").values({ body: "one" }).execute(), /duplicate key/);
    const d = await c.rollbackToSavepoint("c").execute();
    await d.commit().execute();
    const rows = await cluster.primary.query(
      "SELECT body FROM notes WHERE body IN ('seven', 'eight', 'nine') ORDER BY body",
    );
    assert.deepEqual(rows.map((r) => r.body), ["eight", "seven"]);
    await db.deleteFrom("notes").where("body", "in", ["seven", "eight"]).execute();
    assert.equal(p.stats().groups.write.busy, 0);
  });

  it("a COMMIT that PostgreSQL turns into a rollback is Kysely's AbortedTransactionError", async () => {
    await using p = pool();
    const db = kysely(p);
    const trx = await db.startTransaction().execute();
    await trx.insertInto("notes").values({ body: "ten" }).execute();
    await assert.rejects(trx.insertInto("notes").values({ body: "one" }).execute(), /duplicate/);
    await assert.rejects(trx.commit().execute(), (err: Error) => {
      assert.ok(err instanceof AbortedTransactionError, String(err));
      assert.ok(err.cause instanceof TransactionAbortedError);
      return true;
    });
    const rows = await cluster.primary.query(
      "SELECT count(*)::int AS n FROM notes WHERE body = 'ten'",
    );
    assert.equal(rows[0].n, 0);
    assert.equal(p.stats().groups.write.busy, 0);
  });
});

describe("streaming", () => {
  it("streams a SELECT from the read group through a cursor, chunk by chunk", async () => {
    await using p = pool();
    const seen = statements(p);
    const db = kysely(p, { read: "read" });
    const ns: number[] = [];
    const ports = new Set<number>();
    for await (
      const row of db.selectFrom("numbers").select(["n", port]).where("n", ">", 0).orderBy("n")
        .stream(300)
    ) {
      ns.push(row.n);
      ports.add(row.port);
    }
    assert.equal(ns.length, 1000);
    assert.deepEqual(ns.slice(0, 3), [1, 2, 3]);
    assert.deepEqual([...ports], [replicaPort]);
    assert.ok(seen.some((t) => /^DECLARE pgdbpool_cursor_0 NO SCROLL CURSOR FOR select/.test(t)));
    assert.equal(seen.filter((t) => t === "FETCH FORWARD 300 FROM pgdbpool_cursor_0").length, 4);
    await waitFor(() => p.stats().groups.read.busy === 0, {
      message: "the stream's checkout back",
    });
    const open = await cluster.replicas[0].query(
      "SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'kysely_test' AND state LIKE 'idle in transaction%'",
    );
    assert.equal(open[0].n, 0);
  });

  it("a stream left early gives its checkout back; in a transaction it sees its writes", async () => {
    await using p = pool();
    const db = kysely(p, { read: "read" });
    let taken = 0;
    for await (const _ of db.selectFrom("numbers").selectAll().stream(10)) {
      if (++taken === 15) break;
    }
    assert.equal(taken, 15);
    await waitFor(() => p.stats().groups.read.busy === 0, { message: "the checkout back" });
    const bodies = await db.transaction().execute(async (trx) => {
      await trx.insertInto("notes").values({ body: "eleven" }).execute();
      const out: Array<{ body: string; port: number }> = [];
      for await (
        const row of trx.selectFrom("notes").select(["body", port]).orderBy("body").stream(1)
      ) out.push(row);
      // The transaction goes on after the stream (its cursor closed, the transaction open).
      await trx.deleteFrom("notes").where("body", "=", "eleven").execute();
      return out;
    });
    assert.deepEqual(bodies.map((r) => r.body), ["eleven", "one", "two"]);
    assert.ok(bodies.every((r) => r.port === primaryPort));
  });

  it("a query that is not a plain read is run whole and streamed in chunks", async () => {
    await using p = pool();
    const db = kysely(p, { read: "read" });
    const out: Array<{ body: string; port: number }> = [];
    for await (
      const row of db.insertInto("notes").values([{ body: "twelve" }, { body: "thirteen" }])
        .returning(["body", port]).stream(1)
    ) out.push(row);
    assert.deepEqual(out, [{ body: "twelve", port: primaryPort }, {
      body: "thirteen",
      port: primaryPort,
    }]);
    await db.deleteFrom("notes").where("body", "in", ["twelve", "thirteen"]).execute();
  });
});

describe("errors and lifecycle", () => {
  it("passes PostgreSQL's and the pool's errors through", async () => {
    const p = pool();
    const db = kysely(p, { read: "read" });
    await assert.rejects(
      db.insertInto("notes").values({ body: "one" }).execute(),
      (err: Error & { code?: string }) => err.code === "23505",
    );
    await p.close();
    await assert.rejects(db.selectFrom("notes").selectAll().execute(), PoolClosedError);
  });

  it("an abort signal cancels a checkout that waits", async () => {
    await using p = new Pool({
      db: cluster.endpoints(),
      groups: { write: { connection_count: 1, role: "primary" } },
      application_name: "kysely_test",
    });
    const db = kysely(p);
    {
      await using held = await p.acquire("write");
      const controller = new AbortController();
      const waiting = db.insertInto("notes").values({ body: "fourteen" }).execute({
        signal: controller.signal,
      });
      await waitFor(() => p.stats().groups.write.waiting === 1, { message: "a waiting checkout" });
      controller.abort(new Error("stop"));
      await assert.rejects(waiting, /stop/);
      await waitFor(() => p.stats().groups.write.waiting === 0, { message: "the waiter gone" });
      await held.query("SELECT 1");
    }
    assert.equal(p.stats().groups.write.busy, 0);
  });

  it("db.destroy() leaves the pool open", async () => {
    await using p = pool();
    const db = kysely(p, { read: "read" });
    await db.selectFrom("notes").selectAll().execute();
    await db.destroy();
    await assert.rejects(db.selectFrom("notes").selectAll().execute(), /destroyed/);
    assert.equal(p.closed, false);
    assert.deepEqual([...await p.query("write", "SELECT 1 AS one")], [{ one: 1 }]);
  });

  it("mistakes in the options are TypeErrors naming the value", async () => {
    await using p = pool();
    const cases: Array<[unknown, RegExp]> = [
      [{ pool: p, group: "wrte" }, /group "wrte" is not a group of the pool/],
      [{ pool: p, group: "write", read: "reed" }, /read "reed" is not a group/],
      [{ pool: p, group: "write", cursor: {} }, /option "cursor" is not supported/],
      [{ pool: {}, group: "write" }, /needs a Pool of @x\/pgdbpool \(got an object\)/],
    ];
    for (const [options, message] of cases) {
      assert.throws(
        () => new PgdbpoolDialect(options as { pool: Pool; group: string }),
        (err: Error) => err instanceof TypeError && message.test(err.message),
        String(message),
      );
    }
  });
});

describe("read-your-writes", () => {
  it("on: a SELECT after a write goes to the primary until a replica has replayed it", async () => {
    await using p = pool();
    const db = kysely(p, { read: "read", read_your_writes: true });
    const off = kysely(p, { read: "read" });
    await pauseReplay(cluster.replicas[0]);
    try {
      await db.insertInto("notes").values({ body: "fifteen" }).execute();
      const seen = await db.selectFrom("notes").select(port).where("body", "=", "fifteen")
        .execute();
      assert.deepEqual(seen, [{ port: primaryPort }]);
      // The token belongs to the Kysely instance: another one reads the stale replica.
      assert.deepEqual(
        await off.selectFrom("notes").select(port).where("body", "=", "fifteen").execute(),
        [],
      );
      // Streams follow the same rule.
      const streamed = [];
      for await (
        const row of db.selectFrom("notes").select(port).where("body", "=", "fifteen").stream()
      ) {
        streamed.push(row);
      }
      assert.deepEqual(streamed, [{ port: primaryPort }]);
    } finally {
      await resumeReplay(cluster.replicas[0]);
    }
    await waitFor(async () => {
      const rows = await db.selectFrom("notes").select(port).where("body", "=", "fifteen")
        .execute();
      return rows.length === 1 && rows[0].port === replicaPort;
    }, { message: "the read on the replica once it has replayed the write" });
    await db.deleteFrom("notes").where("body", "=", "fifteen").execute();
  });
});

describe("Kysely's migrator", () => {
  it("migrates through a Kysely on the write group only", async () => {
    // The migrator checks its own tables outside a transaction right after creating them: a
    // replica that has not replayed the DDL would not see them, so migrations get no read group.
    await using p = pool();
    const db = kysely(p);
    const migrations: Record<string, Migration> = {
      "0001_tags": {
        up: async (m) => {
          await m.schema.createTable("tags").addColumn("name", "text", (c) => c.primaryKey())
            .execute();
        },
      },
    };
    const migrator = new Migrator({
      db,
      provider: { getMigrations: () => Promise.resolve(migrations) },
    });
    const { error, results } = await migrator.migrateToLatest();
    assert.equal(error, undefined);
    assert.deepEqual(results?.map((r) => [r.migrationName, r.status]), [["0001_tags", "Success"]]);
    const rows = await cluster.primary.query("SELECT to_regclass('tags')::text AS t");
    assert.equal(rows[0].t, "tags");
  });
});
