// @x/pgdbpool/drizzle against a real primary and replica: where each Drizzle method runs (proven
// by inet_server_port() and pg_is_in_recovery() inside the statement), transactions and
// savepoints, errors, row mapping, types, read-your-writes, and Drizzle's migrator.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { DrizzleQueryError, eq, relations, sql, TransactionRollbackError } from "drizzle-orm";
import {
  bigint,
  date,
  integer,
  jsonb,
  numeric,
  pgTable,
  serial,
  text,
  timestamp,
} from "drizzle-orm/pg-core";
import { type PgCluster, startCluster, testDriver } from "./harness/cluster.ts";
import { pauseReplay, resumeReplay } from "./harness/faults.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { waitFor } from "./harness/wait.ts";
import { bunBin, denoBin, http, ROOT, runCommand, Service } from "./tools.ts";
import { Pool, PoolClosedError, type PoolConfig } from "../mod.ts";
import { drizzle, migrate, PgdbpoolDatabase } from "../drizzle.ts";
import { poolHooks } from "../src/hooks.ts";

await setTestTimeout(180_000);

const owners = pgTable("owners", { id: serial().primaryKey(), name: text().notNull() });
const items = pgTable("items", {
  id: serial().primaryKey(),
  name: text().notNull(),
  ownerId: integer("owner_id"),
});
const ownersRelations = relations(owners, ({ many }) => ({ items: many(items) }));
const itemsRelations = relations(items, ({ one }) => ({
  owner: one(owners, { fields: [items.ownerId], references: [owners.id] }),
}));
const schema = { owners, items, ownersRelations, itemsRelations };
const values = pgTable("typed_values", {
  id: serial().primaryKey(),
  doc: jsonb(),
  at: timestamp(),
  atTz: timestamp("at_tz", { withTimezone: true }),
  atText: timestamp("at_text", { mode: "string" }),
  day: date(),
  amount: numeric(),
  big: bigint({ mode: "bigint" }),
  tags: text().array(),
  stamps: timestamp().array(),
});

const port = sql<number>`inet_server_port()`.mapWith(Number);
const standby = sql<boolean>`pg_is_in_recovery()`;

let cluster: PgCluster;
let primaryPort: number;
let replicaPort: number;

before(async () => {
  cluster = await startCluster({ replicas: 1 });
  primaryPort = cluster.primary.port;
  replicaPort = cluster.replicas[0].port;
  for (
    const ddl of [
      "CREATE TABLE owners (id serial PRIMARY KEY, name text NOT NULL)",
      "CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL UNIQUE, owner_id int)",
      `CREATE TABLE typed_values (id serial PRIMARY KEY, doc jsonb, at timestamp, at_tz timestamptz,
        at_text timestamp, day date, amount numeric, big bigint, tags text[], stamps timestamp[])`,
      "INSERT INTO owners (name) VALUES ('ada'), ('bob')",
      "INSERT INTO items (name, owner_id) VALUES ('pen', 1), ('cup', 1)",
    ]
  ) await cluster.primary.query(ddl);
  await cluster.waitForReplication();
}, { timeout: 180_000 });

after(async () => {
  await cluster?.close();
}, { timeout: 60_000 });

function pool(extra: Partial<PoolConfig> = {}, write: Record<string, unknown> = {}): Pool {
  return new Pool({
    db: cluster.endpoints(),
    groups: {
      write: { connection_count: 2, role: "primary", autocommit: false, ...write },
      read: { connection_count: 2, role: "replica", read_your_writes_timeout_ms: 300 },
    },
    application_name: "drizzle_test",
    health_check_interval_ms: 100,
    ...extra,
  });
}

describe("routing", () => {
  it("without read, every statement runs on group", async () => {
    await using p = pool();
    const db = drizzle(p, { group: "write", schema });
    assert.ok(db instanceof PgdbpoolDatabase);
    assert.equal(db.$client, p);
    assert.equal(db.$primary, db);
    const [row] = await db.select({ port, standby }).from(items).limit(1);
    assert.deepEqual(row, { port: primaryPort, standby: false });
    const found = await db.query.items.findFirst({ extras: { port: port.as("port") } });
    assert.equal(found?.port, primaryPort);
    assert.equal(await db.$count(items, sql`pg_is_in_recovery()`), 0);
  });

  it("with read, reads run where withReplicas sends them and writes on group", async () => {
    await using p = pool();
    const db = drizzle(p, { group: "write", read: "read", schema });
    // Reads: select, selectDistinct, selectDistinctOn, db.query.*, $count, with().select.
    assert.deepEqual(await db.select({ port, standby }).from(items).limit(1), [
      { port: replicaPort, standby: true },
    ]);
    assert.deepEqual(await db.selectDistinct({ port }).from(items), [{ port: replicaPort }]);
    assert.deepEqual(
      await db.selectDistinctOn([items.ownerId], { port }).from(items),
      [{ port: replicaPort }],
    );
    const first = await db.query.items.findFirst({ extras: { port: port.as("port") } });
    assert.equal(first?.port, replicaPort);
    const many = await db.query.owners.findMany({
      extras: { port: port.as("port") },
      with: { items: true },
      orderBy: owners.id,
    });
    assert.deepEqual(many.map((o) => [o.name, o.port, o.items.length]), [
      ["ada", replicaPort, 2],
      ["bob", replicaPort, 0],
    ]);
    assert.equal(await db.$count(items, sql`pg_is_in_recovery()`), 2);
    const cte = db.$with("cte").as(db.select({ id: items.id }).from(items));
    assert.deepEqual(await db.with(cte).select({ port }).from(cte).limit(1), [
      { port: replicaPort },
    ]);
    // A select over a data-modifying CTE writes: group, like any write (found by an audit: it
    // went to the read group, failing on a replica, unrecorded for read-your-writes).
    const added = db.$with("added").as(
      db.insert(items).values({ name: "cte-ink" }).returning({ id: items.id }),
    );
    assert.deepEqual(await db.with(added).select({ port, standby }).from(added), [
      { port: primaryPort, standby: false },
    ]);
    await db.delete(items).where(eq(items.name, "cte-ink"));
    // Writes: insert, update, delete (also after with()), execute.
    const [ins] = await db.insert(items).values({ name: "ink" }).returning({ port, standby });
    assert.deepEqual(ins, { port: primaryPort, standby: false });
    const [upd] = await db.update(items).set({ ownerId: 2 }).where(eq(items.name, "ink"))
      .returning({ port });
    assert.equal(upd.port, primaryPort);
    const [viaWith] = await db.with(cte).update(items).set({ ownerId: 1 })
      .where(eq(items.name, "ink")).returning({ port });
    assert.equal(viaWith.port, primaryPort);
    const [del] = await db.delete(items).where(eq(items.name, "ink")).returning({ port });
    assert.equal(del.port, primaryPort);
    const raw = await db.execute<{ port: number }>(sql`SELECT inet_server_port() AS port`);
    assert.equal(raw[0].port, primaryPort);
    assert.equal(raw.count, 1);
    // $primary reads on group.
    assert.deepEqual(await db.$primary.select({ port }).from(items).limit(1), [
      { port: primaryPort },
    ]);
    assert.equal(db.$primary.$primary, db.$primary);
  });

  it("prepared statements with placeholders run on the read group", async () => {
    await using p = pool();
    const db = drizzle(p, { group: "write", read: "read" });
    const byName = db.select({ id: items.id, port }).from(items)
      .where(eq(items.name, sql.placeholder("name"))).prepare("item_by_name");
    assert.deepEqual(await byName.execute({ name: "pen" }), [{ id: 1, port: replicaPort }]);
    assert.deepEqual(await byName.execute({ name: "cup" }), [{ id: 2, port: replicaPort }]);
  });

  it("statements go through the pool's observer, with their group", async () => {
    await using p = pool();
    const seen: string[] = [];
    p[poolHooks] = {
      statement: (s) => {
        seen.push(`${s.group}:${s.endpoint.port}`);
        return () => {};
      },
      checkout: () => {},
      checkin: () => {},
      connected: () => {},
    };
    const db = drizzle(p, { group: "write", read: "read" });
    await db.select().from(items).limit(1);
    await db.update(items).set({ ownerId: 1 }).where(eq(items.name, "pen"));
    assert.ok(seen.includes(`read:${replicaPort}`), seen.join(", "));
    assert.ok(seen.includes(`write:${primaryPort}`), seen.join(", "));
  });
});

describe("commits and transactions", () => {
  it("a statement outside a transaction is committed on its own in an autocommit: false group", async () => {
    await using p = pool();
    const db = drizzle(p, { group: "write", read: "read" });
    await db.insert(owners).values({ name: "carol" });
    // Visible to another session at once, and nothing is left open on the pool's sessions.
    const rows = await cluster.primary.query(
      "SELECT count(*)::int AS n FROM owners WHERE name = 'carol'",
    );
    assert.equal(rows[0].n, 1);
    const open = await cluster.primary.query(
      "SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'drizzle_test' AND state LIKE 'idle in transaction%'",
    );
    assert.equal(open[0].n, 0);
    await db.delete(owners).where(eq(owners.name, "carol"));
  });

  it("db.transaction runs on one session, commits, and reads inside it run on group", async () => {
    await using p = pool();
    const db = drizzle(p, { group: "write", read: "read", schema });
    const result = await db.transaction(async (tx) => {
      const pid = sql<number>`pg_backend_pid()`;
      const [a] = await tx.insert(owners).values({ name: "dora" }).returning({ pid, port });
      const [b] = await tx.select({ pid, port }).from(owners).where(eq(owners.name, "dora"));
      const c = await tx.query.owners.findFirst({
        where: eq(owners.name, "dora"),
        extras: { pid: pid.as("pid") },
      });
      await Promise.all([
        tx.insert(items).values({ name: "dora-1" }),
        tx.insert(items).values({ name: "dora-2" }),
      ]);
      assert.equal(b.pid, a.pid);
      assert.equal(c?.pid, a.pid);
      return [a.port, b.port];
    });
    assert.deepEqual(result, [primaryPort, primaryPort]);
    const rows = await cluster.primary.query(
      "SELECT (SELECT count(*)::int FROM owners WHERE name = 'dora') + (SELECT count(*)::int FROM items WHERE name LIKE 'dora-%') AS n",
    );
    assert.equal(rows[0].n, 3);
    await db.delete(items).where(sql`${items.name} LIKE 'dora-%'`);
    await db.delete(owners).where(eq(owners.name, "dora"));
  });

  it("rolls back on a throw and on tx.rollback(), passing the error on", async () => {
    await using p = pool();
    const db = drizzle(p, { group: "write" });
    const boom = new Error("boom");
    await assert.rejects(
      db.transaction(async (tx) => {
        await tx.insert(owners).values({ name: "eve" });
        throw boom;
      }),
      (err) => err === boom,
    );
    await assert.rejects(
      db.transaction(async (tx) => {
        await tx.insert(owners).values({ name: "eve" });
        tx.rollback();
      }),
      TransactionRollbackError,
    );
    const rows = await cluster.primary.query(
      "SELECT count(*)::int AS n FROM owners WHERE name = 'eve'",
    );
    assert.equal(rows[0].n, 0);
    assert.equal(p.stats().groups.write.busy, 0);
  });

  it("nested transactions are savepoints", async () => {
    await using p = pool();
    const db = drizzle(p, { group: "write" });
    await db.transaction(async (tx) => {
      await tx.insert(owners).values({ name: "fay" });
      await assert.rejects(
        tx.transaction(async (inner) => {
          await inner.insert(owners).values({ name: "gus" });
          inner.rollback();
        }),
        TransactionRollbackError,
      );
      await tx.transaction(async (inner) => {
        await inner.insert(owners).values({ name: "hal" });
        await inner.transaction(async (deeper) => {
          await deeper.insert(owners).values({ name: "ivy" });
        });
      });
      // A failed statement inside a savepoint leaves the outer transaction usable.
      await assert.rejects(
        tx.transaction(async (inner) => {
          await inner.insert(items).values({ name: "pen" }); // duplicate
        }),
        DrizzleQueryError,
      );
    });
    const rows = await cluster.primary.query(
      "SELECT name FROM owners WHERE name IN ('fay', 'gus', 'hal', 'ivy') ORDER BY name",
    );
    assert.deepEqual(rows.map((r) => r.name), ["fay", "hal", "ivy"]);
    await db.delete(owners).where(sql`${owners.name} IN ('fay', 'hal', 'ivy')`);
  });

  it("transaction config becomes SET TRANSACTION; unknown values are TypeErrors", async () => {
    await using p = pool();
    const db = drizzle(p, { group: "write" });
    const settings = await db.transaction(async (tx) => {
      return await tx.execute<{ iso: string; ro: string; deferrable: string }>(sql`SELECT
        current_setting('transaction_isolation') AS iso,
        current_setting('transaction_read_only') AS ro,
        current_setting('transaction_deferrable') AS deferrable`);
    }, { isolationLevel: "serializable", accessMode: "read only", deferrable: true });
    assert.deepEqual([...settings], [{ iso: "serializable", ro: "on", deferrable: "on" }]);
    await assert.rejects(
      db.transaction(async () => {}, { isolationLevel: "snapshot" as "serializable" }),
      (err: Error) => err instanceof TypeError && /isolation level "snapshot"/.test(err.message),
    );
    assert.equal(p.stats().groups.write.busy, 0);
  });
});

describe("errors", () => {
  it("are Drizzle's DrizzleQueryError with the server's or the pool's error as cause", async () => {
    const p = pool();
    const db = drizzle(p, { group: "write", read: "read" });
    await assert.rejects(db.insert(items).values({ name: "pen" }), (err: Error) => {
      assert.ok(err instanceof DrizzleQueryError);
      assert.equal((err.cause as { code?: string }).code, "23505");
      return true;
    });
    await assert.rejects(
      db.transaction(async (tx) => {
        await tx.insert(items).values({ name: "pen" });
      }),
      (err: Error) =>
        err instanceof DrizzleQueryError && (err.cause as { code?: string }).code === "23505",
    );
    await p.close();
    await assert.rejects(db.select().from(items), (err: Error) => {
      assert.ok(err instanceof DrizzleQueryError, String(err));
      assert.ok(err.cause instanceof PoolClosedError, String(err.cause));
      return true;
    });
  });

  it("mistakes in the options are TypeErrors naming the value", async () => {
    await using p = pool();
    const cases: Array<[unknown, RegExp]> = [
      [
        { group: "wrte" },
        /group "wrte" is not a group of the pool \(configured: "write", "read"\)/,
      ],
      [{ group: "write", read: "reed" }, /read "reed" is not a group/],
      [{ group: "write", cache: {} }, /option "cache" is not supported/],
      [
        { group: "write", read_your_writes: "yes" },
        /read_your_writes must be a boolean \(got "yes"\)/,
      ],
      [
        { group: "write", logger: 1 },
        /logger must be a boolean or an object with logQuery\(\) \(got 1\)/,
      ],
    ];
    for (const [options, message] of cases) {
      assert.throws(
        () => drizzle(p, options as { group: string }),
        (err: Error) => err instanceof TypeError && message.test(err.message),
        JSON.stringify(options),
      );
    }
    assert.throws(() => drizzle({} as Pool, { group: "write" }), TypeError);
  });
});

describe("rows and types", () => {
  it("maps joins by position: repeated column names, a missing joined row is null", async () => {
    await using p = pool();
    const db = drizzle(p, { group: "write", read: "read" });
    const rows = await db.select().from(owners).leftJoin(items, eq(items.ownerId, owners.id))
      .orderBy(owners.id, items.id);
    assert.deepEqual(rows, [
      { owners: { id: 1, name: "ada" }, items: { id: 1, name: "pen", ownerId: 1 } },
      { owners: { id: 1, name: "ada" }, items: { id: 2, name: "cup", ownerId: 1 } },
      { owners: { id: 2, name: "bob" }, items: null },
    ]);
  });

  it("round-trips json, timestamps, dates, numerics, bigints and arrays as Drizzle types them", async () => {
    await using p = pool();
    const db = drizzle(p, { group: "write" });
    const at = new Date("2024-05-06T07:08:09.123Z");
    const row = {
      doc: { a: [1, "two", { three: null }] },
      at,
      atTz: at,
      atText: "2024-05-06 07:08:09.123",
      day: "2024-05-06",
      amount: "12345678901234567890.12",
      big: 9007199254740993n,
      tags: ["x", "y,z"],
      stamps: [at],
    };
    const [{ id }] = await db.insert(values).values(row).returning({ id: values.id });
    const [back] = await db.select().from(values).where(eq(values.id, id));
    assert.deepEqual(back, { id, ...row });
    // Stored as PostgreSQL would store what Drizzle sent: a JSON object, the UTC wall clock.
    const [stored] = await cluster.primary.query(
      "SELECT jsonb_typeof(doc) AS kind, at::text AS at FROM typed_values WHERE id = $1",
      [id],
    );
    assert.deepEqual(stored, { kind: "object", at: "2024-05-06 07:08:09.123" });
    // Documents that are not objects: booleans and arrays (which postgres.js would otherwise
    // send as a boolean or an array parameter), strings, numbers.
    for (const doc of [true, [false, null, "x"], "text", 12.5, { nested: [true] }]) {
      const [{ id: docId }] = await db.insert(values).values({ doc }).returning({ id: values.id });
      const [read] = await db.select({ doc: values.doc }).from(values).where(eq(values.id, docId));
      assert.deepEqual(read.doc, doc);
      const [raw] = await cluster.primary.query(
        "SELECT doc::text AS t FROM typed_values WHERE id = $1",
        [docId],
      );
      assert.equal(raw.t, JSON.stringify(doc).replaceAll(",", ", ").replaceAll(":", ": "));
    }
    await db.delete(values);
  });

  it("timestamps round-trip in a process whose time zone is not UTC", {
    // Bun's SQL reads `timestamp` (without time zone) in the process's zone and hides column
    // types, so the entry cannot correct it: documented in the README's driver notes.
    skip: testDriver().driver === "bun" ? "Bun's SQL reads timestamp in local time" : false,
  }, async () => {
    const script = join(ROOT, ".scratch", `drizzle_tz_${process.pid}.ts`);
    mkdirSync(join(ROOT, ".scratch"), { recursive: true });
    writeFileSync(
      script,
      `import { Pool } from "../mod.ts";
import { drizzle } from "../drizzle.ts";
import { eq, sql } from "drizzle-orm";
import { pgTable, serial, timestamp } from "drizzle-orm/pg-core";
const values = pgTable("typed_values", {
  id: serial().primaryKey(),
  at: timestamp(),
  stamps: timestamp().array(),
});
const pool = new Pool({ db: JSON.parse(process.env.DB), groups: { w: { connection_count: 1, role: "primary" } } });
const db = drizzle(pool, { group: "w" });
const at = new Date("2024-01-15T12:30:45.678Z");
const [{ id }] = await db.insert(values).values({ at, stamps: [at] }).returning({ id: values.id });
const [back] = await db.select().from(values).where(eq(values.id, id));
const [text] = await db.select({ t: sql\`at::text\` }).from(values).where(eq(values.id, id));
await db.delete(values).where(eq(values.id, id));
await pool.close();
console.log(JSON.stringify({ offset: at.getTimezoneOffset(), at: back.at.toISOString(), stamp: back.stamps[0].toISOString(), text: text.t }));
`,
    );
    try {
      const deno = "Deno" in globalThis;
      const r = await runCommand(
        deno ? denoBin() : bunBin(),
        deno ? ["run", "-A", "--no-check", script] : [script],
        {
          env: { TZ: "America/New_York", DB: JSON.stringify(cluster.endpoints()) },
          timeoutMs: 60_000,
        },
      );
      assert.equal(r.code, 0, r.stdout + r.stderr);
      const out = JSON.parse(r.stdout.trim().split("\n").at(-1)!);
      assert.equal(out.offset, 300, "the child runs in New York time");
      assert.deepEqual(
        { at: out.at, stamp: out.stamp, text: out.text },
        {
          at: "2024-01-15T12:30:45.678Z",
          stamp: "2024-01-15T12:30:45.678Z",
          text: "2024-01-15 12:30:45.678",
        },
      );
    } finally {
      rmSync(script, { force: true });
    }
  });
});

describe("read-your-writes", () => {
  it("off: a replica that has not replayed a write serves a read without it", async () => {
    await using p = pool();
    const db = drizzle(p, { group: "write", read: "read" });
    await pauseReplay(cluster.replicas[0]);
    try {
      await db.insert(owners).values({ name: "jon" });
      const rows = await db.select({ port }).from(owners).where(eq(owners.name, "jon"));
      assert.deepEqual(rows, []);
    } finally {
      await resumeReplay(cluster.replicas[0]);
    }
    await db.delete(owners).where(eq(owners.name, "jon"));
  });

  it("on: a read after a write goes to the primary until a replica has replayed it", async () => {
    await using p = pool();
    const db = drizzle(p, { group: "write", read: "read", read_your_writes: true, schema });
    // Before any write reads go to the replica as usual.
    assert.deepEqual(await db.select({ port }).from(owners).limit(1), [{ port: replicaPort }]);
    await pauseReplay(cluster.replicas[0]);
    try {
      await db.insert(owners).values({ name: "kim" });
      assert.deepEqual(await db.select({ port }).from(owners).where(eq(owners.name, "kim")), [
        { port: primaryPort },
      ]);
      const viaQuery = await db.query.owners.findFirst({
        where: eq(owners.name, "kim"),
        extras: { port: port.as("port") },
      });
      assert.equal(viaQuery?.port, primaryPort);
      // A commit counts as a write too.
      await db.transaction(async (tx) => {
        await tx.update(owners).set({ name: "kim2" }).where(eq(owners.name, "kim"));
      });
      assert.equal(await db.$count(owners, eq(owners.name, "kim2")), 1);
    } finally {
      await resumeReplay(cluster.replicas[0]);
    }
    // Once the replica has replayed the write, reads go back to it.
    await waitFor(async () => {
      const rows = await db.select({ port }).from(owners).where(eq(owners.name, "kim2"));
      return rows.length === 1 && rows[0].port === replicaPort;
    }, { message: "the read of kim2 on the replica" });
    await db.delete(owners).where(eq(owners.name, "kim2"));
  });
});

describe("migrate", () => {
  it("applies a drizzle-kit folder once, on group", async () => {
    const dir = mkdtempSync(join(tmpdir(), "pgdbpool-drizzle-migrations-"));
    try {
      mkdirSync(join(dir, "meta"));
      writeFileSync(
        join(dir, "meta", "_journal.json"),
        JSON.stringify({
          version: "7",
          dialect: "postgresql",
          entries: [{
            idx: 0,
            version: "7",
            when: 1700000000000,
            tag: "0000_init",
            breakpoints: true,
          }],
        }),
      );
      writeFileSync(
        join(dir, "0000_init.sql"),
        "CREATE TABLE migrated (id int PRIMARY KEY);\n--> statement-breakpoint\nINSERT INTO migrated VALUES (1);",
      );
      await using p = pool();
      const db = drizzle(p, { group: "write", read: "read" });
      await migrate(db, { migrationsFolder: dir });
      await migrate(db, { migrationsFolder: dir }); // applied once
      const rows = await cluster.primary.query("SELECT count(*)::int AS n FROM migrated");
      assert.equal(rows[0].n, 1);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("examples/drizzle_service.ts", () => {
  it("writes on the primary, reads on the replica, its own writes at once, metrics for Prometheus", async () => {
    const svc = new Service("drizzle_service", denoBin(), [
      "run",
      "-A",
      "--no-check",
      "examples/drizzle_service.ts",
    ], {
      env: { PGDBPOOL_DB: JSON.stringify(cluster.endpoints()), PORT: "0" },
    });
    try {
      const [, base] = await svc.waitForOutput(/listening on (http:\/\/\S+?)\/?\s/);
      const created = await http(`${base}/notes`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ body: "hello" }),
      });
      assert.equal(created.status, 201, created.body);
      const note = JSON.parse(created.body);
      assert.equal(note.body, "hello");
      // Read-your-writes: found at once, wherever it is read.
      const one = await http(`${base}/notes/${note.id}`);
      assert.equal(one.status, 200, one.body);
      assert.equal(JSON.parse(one.body).body, "hello");
      // Once the replica has the note, lists come from it.
      await cluster.waitForReplication();
      await waitFor(async () => {
        const list = JSON.parse((await http(`${base}/notes`)).body);
        return list.server === replicaPort && list.notes[0]?.id === note.id;
      }, { message: "the list served by the replica" });
      const metrics = await http(`${base}/metrics`);
      assert.equal(metrics.status, 200);
      assert.match(metrics.body, /^# TYPE db_client_operation_duration_seconds histogram$/m);
      // Statements timed per server: the replica served reads.
      assert.match(
        metrics.body,
        new RegExp(
          `^db_client_operation_duration_seconds_count\\{[^}]*server_port="${replicaPort}"[^}]*\\} [1-9]`,
          "m",
        ),
      );
      assert.match(metrics.body, /^db_client_connection_count\{[^}]*\} \d+$/m);
      svc.kill("SIGTERM");
      assert.deepEqual(await svc.waitExit(15_000), { code: 0, signal: null });
    } finally {
      await svc.stop();
      await cluster.primary.query("DROP TABLE IF EXISTS notes");
    }
  });
});
