// Audit 14: session state, leak reclaim, deadlines and input checks on paths the earlier audits
// did not cover. Each case failed before its fix.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type PgCluster, startCluster } from "./harness/cluster.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { Pool, PoolExhaustedError } from "../mod.ts";

await setTestTimeout(120_000);

let cluster: PgCluster;
let pool: Pool;

before(async () => {
  cluster = await startCluster();
  await cluster.primary.query(`CREATE SCHEMA tenant_a;
    CREATE TABLE public.items (v text); CREATE TABLE tenant_a.items (v text)`);
  pool = new Pool({
    db: cluster.endpoints(),
    // One connection: a one-shot sent while another runs is pipelined onto the same session.
    groups: { auto: { connection_count: 1 }, tx: { connection_count: 1, autocommit: false } },
    application_name: "audit14_test",
  });
}, { timeout: 120_000 });

after(async () => {
  await pool?.close();
  await cluster?.close();
}, { timeout: 60_000 });

describe("pool.query: session state set by a one-shot", () => {
  // A one-shot that sets something shares its connection like any other: one-shots pipelined
  // behind it ran in the changed session (another tenant's schema, here), though their caller
  // never asked for it.
  it("a SET is not inherited by one-shots pipelined behind it", async () => {
    await pool.query("auto", "SELECT 1"); // a warm connection: nothing waits on a ping
    const set = pool.query("auto", "SET search_path TO tenant_a");
    const seen = pool.query("auto", "SELECT current_setting('search_path') AS search_path");
    const write = pool.query("auto", "INSERT INTO items (v) VALUES ('mine')");
    await set;
    const [{ search_path }] = await seen;
    await write;
    assert.equal(search_path, '"$user", public');
    const [{ n }] = await cluster.primary.query("SELECT count(*)::int AS n FROM public.items");
    assert.equal(n, 1, "the write landed in the caller's own schema");
    await cluster.primary.query("TRUNCATE public.items, tenant_a.items");
  });

  it("set_config(..., false) and a comment before SET are not inherited either", async () => {
    for (
      const text of [
        "SELECT set_config('search_path', 'tenant_a', false)",
        "/* tenant */ SET search_path TO tenant_a",
      ]
    ) {
      await pool.query("auto", "SELECT 1");
      const set = pool.query("auto", text);
      const seen = pool.query("auto", "SELECT current_setting('search_path') AS search_path");
      await set;
      const [{ search_path }] = await seen;
      assert.equal(search_path, '"$user", public', text);
    }
  });
});

describe("db.sql: session state behind a query tag", () => {
  // The server skips a leading comment (a query tag, as ORMs and tracing add): the text is a
  // SET all the same, but the pool read only its first characters and reset nothing.
  it("a SET after a comment is reset at check-in", async () => {
    let pid: number;
    {
      await using db = await pool.acquire("auto");
      [{ pid }] = await db.query<{ pid: number }>("SELECT pg_backend_pid() AS pid");
      await db.sql`/* tenant: a */ SET search_path TO tenant_a`;
      // A text of several statements: the simple protocol.
      await (db.sql.unsafe(
        "-- tenant: a\nSELECT 1; /* again */ SET app.tenant = 'a'",
      ) as unknown as {
        simple(): Promise<unknown>;
      }).simple();
    }
    await using db = await pool.acquire("auto");
    const [row] = await db.query(`SELECT pg_backend_pid() AS pid,
      current_setting('search_path') AS search_path,
      nullif(current_setting('app.tenant', true), '') AS tenant`);
    assert.deepEqual(row, { pid, search_path: '"$user", public', tenant: null });
  });
});

describe("statement options", () => {
  // A mistyped row mode or key was ignored: the rows came back as objects to a caller reading
  // them by position (a query builder's mapping), with no word of the mistake.
  it("a mistyped rowMode or an unknown key rejects the statement, naming it", async () => {
    const bad: Array<[unknown, RegExp]> = [
      [{ rowMode: "arrays" }, /rowMode must be "object" or "array" \(got "arrays"\)/],
      [{ row_mode: "array" }, /"row_mode" is not a known option/],
      ["array", /must be an object \(got "array"\)/],
    ];
    for (const [options, message] of bad) {
      await assert.rejects(
        pool.query("auto", "SELECT 1 AS n", [], options as never),
        (err: unknown) => err instanceof TypeError && message.test(err.message),
      );
      await using db = await pool.acquire("auto");
      await assert.rejects(
        db.query("SELECT 1 AS n", [], options as never),
        (err: unknown) => err instanceof TypeError && message.test(err.message),
      );
    }
    const [row] = await pool.query("auto", "SELECT 1 AS n", [], { rowMode: "array" });
    assert.deepEqual([...row], [1]);
  });
});

describe("listen options", () => {
  // `{ sigal }` or a signal that is not one was ignored: the subscription its caller meant to
  // end with the signal listened for good (or failed with "throwIfAborted is not a function").
  it("a mistyped key or a signal that is no AbortSignal rejects, naming it", async () => {
    const bad: Array<[unknown, RegExp]> = [
      [{ sigal: new AbortController().signal }, /"sigal" is not known \(known: signal\)/],
      [{ signal: "abort" }, /signal must be an AbortSignal \(got "abort"\)/],
      [5, /must be an object \(got 5\)/],
    ];
    for (const [options, message] of bad) {
      await assert.rejects(
        pool.listen("audit14", () => {}, options as never),
        (err: unknown) => err instanceof TypeError && message.test(err.message),
      );
    }
    const controller = new AbortController();
    await pool.listen("audit14", () => {}, { signal: controller.signal });
    controller.abort();
  });
});

describe("session state: the drivers' own prepared statements", () => {
  // DISCARD ALL and DEALLOCATE ALL drop every prepared statement of the session, the drivers'
  // cached ones and the pool's own BEGIN and COMMIT among them, and the pool took them for
  // statements that leave nothing: the next checkout of the connection had its statements and
  // its COMMIT fail (postgres.js re-prepares once, but inside a transaction the first failure
  // has already aborted it: the COMMIT was answered ROLLBACK, the write lost).
  for (const text of ["DISCARD ALL", "DEALLOCATE ALL"]) {
    it(`${text} on one checkout does not fail the next one's transaction`, async () => {
      await cluster.primary.query("TRUNCATE public.items");
      const write = async (v: string) => {
        await using db = pool.handler("tx");
        await db.query("INSERT INTO items (v) VALUES ($1)", [v]);
        await db.query("SELECT $1::text AS v", [v]);
        await db.commit();
      };
      await write("before"); // prepares the statements on the connection
      {
        // The same group's connection, outside a transaction (DISCARD ALL refuses to run in one).
        await using db = pool.handler("tx", { autocommit: true });
        await db.query(text);
      }
      await write("after");
      const rows = await cluster.primary.query("SELECT v FROM public.items ORDER BY v");
      assert.deepEqual(rows.map((r) => r.v), ["after", "before"]);
    });
  }
});

describe("session state: db.sql.file", () => {
  // A file's text is not seen, and it was taken to leave only what the reset clears: a PREPARE
  // in it outlived the checkout, and the next one's PREPARE of the same name failed (42P05).
  it("a statement prepared by a file does not outlive its checkout", async () => {
    const dir = mkdtempSync(join(tmpdir(), "audit14-"));
    try {
      const file = join(dir, "prepare.sql");
      writeFileSync(file, "PREPARE from_file AS SELECT 1 AS n");
      {
        await using db = await pool.acquire("auto");
        await db.sql.file(file);
      }
      await using db = await pool.acquire("auto");
      await db.query("PREPARE from_file AS SELECT 2 AS n");
      assert.deepEqual([...await db.query("EXECUTE from_file")], [{ n: 2 }]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("transaction blocks: a db.sql BEGIN still on its way at release", () => {
  // The check-in looked at the session's last answer to tell whether a block opened through
  // db.sql is open, also while a BEGIN sent through db.sql was still unanswered: the answer
  // before it said "idle", no ROLLBACK was sent, and the connection went back with the block
  // opening on it. The next checkout's autocommit writes were acknowledged inside it, never
  // committed.
  it("is rolled back before the next checkout writes", async () => {
    await cluster.primary.query("TRUNCATE public.items");
    {
      using db = await pool.acquire("auto");
      await db.query("SELECT 1"); // the session's last answer: idle
      db.sql`BEGIN`.then(() => {}, () => {}); // dispatched, not awaited (a Promise.all that failed)
    }
    {
      await using next = await pool.acquire("auto");
      assert.equal(next.inTransaction, false);
      await next.query("INSERT INTO items (v) VALUES ('acknowledged')");
    }
    const [{ n }] = await cluster.primary.query(
      "SELECT count(*)::int AS n FROM public.items WHERE v = 'acknowledged'",
    );
    assert.equal(n, 1, "an acknowledged autocommit write is visible to other sessions");
  });
});

describe("session state: a text of several statements answered with a resettable tag", () => {
  // The answer's tag is the last statement's: a SET or LISTEN last made the text count as
  // resettable, though a statement before it prepared a name (or dropped the drivers' own
  // statements), which only a new session clears. The next checkout's PREPARE of the same
  // name failed (42P05).
  for (const last of ["SET app.tenant = 'a'", "LISTEN audit14_multi", "RESET ALL"]) {
    it(`PREPARE; ${last.split(" ")[0]}: the prepared name does not outlive the checkout`, async () => {
      {
        await using db = await pool.acquire("auto");
        await db.query(`PREPARE multi AS SELECT 1 AS n; ${last}`);
      }
      await using db = await pool.acquire("auto");
      await db.query("PREPARE multi AS SELECT 2 AS n");
      assert.deepEqual([...await db.query("EXECUTE multi")], [{ n: 2 }]);
      await db.query("DEALLOCATE multi");
    });
  }
});

describe("non-threaded mode: a check-in still cleaning its connection", () => {
  // Released with session state or a transaction left, a connection keeps its permit while the
  // reset (or ROLLBACK) runs, one round trip. A sequential program (one request at a time, as
  // non-threaded mode is for) that released with `using` and checked out again at once got
  // PoolExhaustedError: nobody else held the connection.
  it("a checkout right after such a release waits for it, not PoolExhaustedError", async () => {
    await using p = new Pool({
      type: "non-threaded",
      db: cluster.endpoints(),
      groups: { g: { connection_count: 1 } },
      application_name: "audit14_test",
    });
    for (let i = 0; i < 3; i++) {
      using db = p.handler("g");
      await db.query("SET search_path TO tenant_a");
    }
    {
      using db = p.handler("g", { autocommit: false });
      await db.query("SELECT 1");
    }
    const [{ search_path }] = await p.query(
      "g",
      "SELECT current_setting('search_path') AS search_path",
    );
    assert.equal(search_path, '"$user", public');
    // Exhausted by a checkout still held, it still fails at once.
    using held = p.handler("g");
    await held.query("SELECT 1");
    assert.throws(() => p.handler("g"), (err: unknown) => err instanceof PoolExhaustedError);
  });
});

describe("pool.transaction: bad arguments", () => {
  // A function that is not one failed as "fn is not a function" after a connection was checked
  // out for it; options given as a string were spread into { 0: ... } ('Handler option "0"'),
  // and null was taken for no options.
  it("a callback that is no function, or options that are no object, reject naming the value", async () => {
    const before = pool.stats().groups.tx.checkouts;
    await assert.rejects(
      pool.transaction("tx", 5 as never),
      (err: unknown) => err instanceof TypeError && /needs a function \(got 5\)/.test(err.message),
    );
    for (const [options, shown] of [["x", '"x"'], [null, "null"]] as const) {
      await assert.rejects(
        pool.transaction("tx", () => Promise.resolve(1), options as never),
        (err: unknown) =>
          err instanceof TypeError && err.message.includes(`must be an object (got ${shown})`),
      );
    }
    assert.equal(pool.stats().groups.tx.checkouts, before, "nothing was checked out");
  });
});
