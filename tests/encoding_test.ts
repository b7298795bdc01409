// Statements whose text or parameters cannot be sent as given. Each must fail alone, with an
// error that names what is wrong, and never touch the statements pipelined around it on the
// same connection: postgres.js 3.4 rejects the statement in flight (one that ran) with the bad
// statement's error, never writes the bad one, and from then on answers every later statement
// with the rows of the one after it; the last one waits forever. These are the cases that did
// that to the pool (a date string JavaScript cannot parse for a timestamptz parameter, a BigInt
// inside a JSON value, a number for an array parameter, an undefined value, parameters that
// are not an array).
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { type PgCluster, startCluster, testDriver } from "./harness/cluster.ts";
import { Pool } from "../mod.ts";

let cluster: PgCluster;
let pool: Pool;

/** A statement that is still running when the bad one is sent behind it. */
const SLOW = "SELECT 'A' AS who, pg_sleep(0.2)::text AS slept";
/** Nothing here may take longer than this: a hang is a failure. */
const DEADLINE_MS = 10_000;

before(async () => {
  cluster = await startCluster({ replicas: 0 });
  pool = new Pool({
    db: cluster.endpoints(),
    // One connection per group: every statement of a group shares it (pipelined).
    groups: { one: { connection_count: 1 }, held: { connection_count: 1 } },
    application_name: "encoding_test",
  });
}, { timeout: 120_000 });

after(async () => {
  await pool?.close();
  await cluster?.close();
}, { timeout: 60_000 });

function settle(p: Promise<unknown>): Promise<{ rows?: unknown; err?: Error }> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`hung for ${DEADLINE_MS} ms`)), DEADLINE_MS);
  });
  return Promise.race([
    // Plain arrays of plain rows: the drivers' result types differ.
    p.then((rows) => ({ rows: [...(rows as object[])].map((r) => ({ ...r })) }), (err: Error) => ({
      err,
    })),
    deadline,
  ]).finally(() => clearTimeout(timer));
}

interface Case {
  name: string;
  text: unknown;
  /** Parameters that are sent fine first, so the statement is prepared on the connection. */
  good?: unknown;
  bad: unknown;
  /** What the error must say. */
  says: RegExp;
  /**
   * Only the parameter's type makes the value unsendable: the driver decides. Bun's `SQL`
   * encodes these itself without disturbing the pipeline, and answers in its own way (NULL
   * for "infinity", its own TypeError, the server's error), so under it only the isolation is
   * checked.
   */
  typed?: boolean;
}

const bunDriver = testDriver().driver === "bun";

const cases: Case[] = [
  {
    name: "a date string JavaScript cannot parse, for a timestamptz parameter",
    text: "SELECT $1::timestamptz AS v",
    good: ["2024-01-01T00:00:00Z"],
    bad: ["infinity"],
    typed: true,
    says: /\$1.*Invalid (time value|Date)/,
  },
  {
    name: "a BigInt inside a JSON value",
    text: "SELECT $1::jsonb AS v",
    good: [{ n: 1 }],
    bad: [{ n: 1n }],
    typed: true,
    says: /\$1.*BigInt/,
  },
  {
    name: "a number for an array parameter",
    text: "SELECT $1::int[] AS v",
    good: [[1, 2]],
    bad: [5],
    typed: true,
    says: /\$1/,
  },
  {
    name: "an undefined value",
    text: "SELECT $1::text AS v",
    good: ["x"],
    bad: [undefined],
    says: /\$1 is undefined/,
  },
  {
    name: "an undefined value inside an array",
    text: "SELECT $1::int[] AS v",
    good: [[1]],
    bad: [[1, undefined]],
    says: /\$1\[1\] is undefined/,
  },
  {
    name: "an invalid Date",
    text: "SELECT $1::timestamptz AS v",
    good: [new Date(0)],
    bad: [new Date("no date")],
    says: /\$1 is an invalid Date/,
  },
  {
    name: "a symbol",
    text: "SELECT $1::text AS v",
    good: ["x"],
    bad: [Symbol("s")],
    says: /\$1 is a symbol/,
  },
  {
    name: "parameters that are not an array",
    text: "SELECT $1::text AS v",
    good: ["x"],
    bad: { v: "x" },
    says: /parameters must be an array \(got an object with keys v\)/,
  },
  {
    name: "a text that is not a string",
    text: 5,
    bad: undefined,
    says: /text must be a string \(got 5\)/,
  },
];

async function warm(group: string, c: Case): Promise<void> {
  if (c.good === undefined) return;
  // Twice: the second use runs the named prepared statement, whose values are encoded at once.
  for (let i = 0; i < 2; i++) {
    await pool.query(group, c.text as string, c.good as unknown[]);
  }
}

function checkAlone(
  c: Case,
  a: { rows?: unknown; err?: Error },
  q: { rows?: unknown; err?: Error },
  b: { rows?: unknown; err?: Error },
  d: { rows?: unknown; err?: Error },
): void {
  assert.equal(a.err, undefined, `the statement in flight failed: ${a.err?.message}`);
  assert.deepEqual(a.rows, [{ who: "A", slept: "" }]);
  if (c.typed && bunDriver) {
    // Whatever it answered, it is its own answer: a row of its own shape, or an error.
    if (q.err === undefined) assert.deepEqual(Object.keys((q.rows as object[])[0]), ["v"]);
  } else {
    checkRefused(c, q);
  }
  assert.equal(b.err, undefined, `a later statement failed: ${b.err?.message}`);
  assert.deepEqual(b.rows, [{ who: "B" }]);
  assert.equal(d.err, undefined, `a later statement failed: ${d.err?.message}`);
  assert.deepEqual(d.rows, [{ who: "C" }]);
}

function checkRefused(c: Case, q: { rows?: unknown; err?: Error }): void {
  assert.ok(q.err !== undefined, `the bad statement resolved to ${JSON.stringify(q.rows)}`);
  assert.ok(
    q.err instanceof TypeError || q.err instanceof RangeError,
    `expected a TypeError or RangeError, got ${q.err.constructor.name}: ${q.err.message}`,
  );
  assert.match(q.err.message, c.says);
}

describe("a statement that cannot be sent as given fails alone", () => {
  for (const c of cases) {
    it(`pool.query: ${c.name}`, async () => {
      await warm("one", c);
      // Same tick: the slow statement takes the connection, the bad one is pipelined behind it.
      const a = settle(pool.query("one", SLOW));
      const q = settle(pool.query("one", c.text as string, c.bad as unknown[]));
      const [ra, rq] = [await a, await q];
      const b = settle(pool.query("one", "SELECT 'B' AS who"));
      const d = settle(pool.query("one", "SELECT 'C' AS who"));
      checkAlone(c, ra, rq, await b, await d);
      assert.equal(pool.stats().groups.one.busy, 0);
    });

    it(`handler: ${c.name}`, async () => {
      await warm("held", c);
      using db = pool.handler("held");
      const a = settle(db.query(SLOW));
      const q = settle(db.query(c.text as string, c.bad as unknown[]));
      const [ra, rq] = [await a, await q];
      const b = settle(db.query("SELECT 'B' AS who"));
      const d = settle(db.query("SELECT 'C' AS who"));
      checkAlone(c, ra, rq, await b, await d);
    });
  }

  it("db.sql: an undefined value fails at the call, with nothing sent", async () => {
    using db = await pool.acquire("held");
    assert.throws(
      () => db.sql`SELECT ${undefined as unknown as string}::text AS v`,
      (err: Error) =>
        err instanceof TypeError && /Value 1 of the template is undefined/.test(err.message),
    );
    assert.throws(
      () => db.sql.unsafe("SELECT $1::text AS v", [undefined as unknown as string]),
      (err: Error) => err instanceof TypeError && /Parameter \$1 is undefined/.test(err.message),
    );
    assert.deepEqual([...await db.sql`SELECT 'B' AS who`], [{ who: "B" }]);
  });

  it("db.sql: an array helper with an undefined element fails alone", async () => {
    using db = await pool.acquire("held");
    await db.sql`SELECT ${db.sql.array([1])}::int[] AS v`;
    const a = settle(db.sql`SELECT 'A' AS who, pg_sleep(0.2)::text AS slept`);
    const q = settle(
      db.sql`SELECT ${db.sql.array([1, undefined as unknown as number])}::int[] AS v`,
    );
    const [ra, rq] = [await a, await q];
    const b = settle(db.sql`SELECT 'B' AS who`);
    const d = settle(db.sql`SELECT 'C' AS who`);
    assert.deepEqual(ra.rows, [{ who: "A", slept: "" }]);
    // postgres.js: refused by the server at Bind (the value could not be encoded); Bun's SQL
    // sends it as NULL. Never another statement's rows.
    if (rq.err === undefined) assert.deepEqual(rq.rows, [{ v: [1, null] }]);
    else assert.equal((rq.err as { code?: string }).code, "22021");
    assert.deepEqual((await b).rows, [{ who: "B" }]);
    assert.deepEqual((await d).rows, [{ who: "C" }]);
  });

  it("fails at once, without waiting for a connection, when the group is busy", async () => {
    using held = await pool.acquire("one");
    const started = performance.now();
    const q = await settle(
      pool.query("one", "SELECT $1::text AS v", [undefined as unknown as string]),
    );
    using waiting = pool.handler("one");
    const h = await settle(
      waiting.query("SELECT $1::text AS v", [Symbol("s") as unknown as string]),
    );
    assert.match(q.err?.message ?? "", /\$1 is undefined/);
    assert.match(h.err?.message ?? "", /\$1 is a symbol/);
    // The group's acquire_timeout_ms is 10 s: neither waited for it.
    assert.ok(performance.now() - started < 1000, `took ${performance.now() - started} ms`);
    assert.equal(pool.stats().groups.one.busy, 1);
    await held.query("SELECT 1");
  });

  it("a value the server rejects still fails as the server says", async () => {
    const r = await settle(pool.query("one", "SELECT $1::int AS v", ["not a number"]));
    assert.equal((r.err as { code?: string } | undefined)?.code, "22P02");
  });
});
