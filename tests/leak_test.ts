// Leak detection (leak_detection_ms): a handler held too long is reported with where it was
// checked out; one that becomes unreachable without release is reclaimed and reported.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { type PgCluster, startCluster } from "./harness/cluster.ts";
import { collectGarbage } from "./harness/gc.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { waitFor } from "./harness/wait.ts";
import { bunBin, denoBin, runCommand } from "./tools.ts";
import { Pool, type PoolEventDetailMap, type Sql } from "../mod.ts";

await setTestTimeout(180_000);

let cluster: PgCluster;

before(async () => {
  cluster = await startCluster({ replicas: 0 });
  await cluster.primary.query("CREATE TABLE leak_rows (id int)");
}, { timeout: 180_000 });

after(async () => {
  await cluster?.close();
}, { timeout: 60_000 });

type Leak = PoolEventDetailMap["leak"];

describe("leak detection", () => {
  it("reports a handler held longer than leak_detection_ms, with where it was taken", async () => {
    await using pool = new Pool({
      db: cluster.endpoints()[0],
      groups: { g: { connection_count: 1, leak_detection_ms: 100 } },
      application_name: "leak1",
    });
    const leaks: Leak[] = [];
    pool.addEventListener("leak", (e) => leaks.push(e.detail));
    {
      using db = pool.handler("g");
      await db.query("SELECT 1");
      await waitFor(() => leaks.length === 1, { message: "leak reported" });
    }
    const [leak] = leaks;
    assert.equal(leak.group, "g");
    assert.equal(leak.reclaimed, false);
    assert.ok(leak.held_ms >= 100, `held ${leak.held_ms} ms`);
    // It starts at the checkout in this file: none of the pool's own frames above it.
    assert.match(leak.stack.split("\n")[0], /leak_test\.ts/, leak.stack);
    assert.doesNotMatch(leak.stack, /[\/\\]src[\/\\][a-z_]+\.ts/, leak.stack);
    // A handler released in time is never reported.
    {
      using db = pool.handler("g");
      await db.query("SELECT 1");
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal(leaks.length, 1);
  });

  it("reclaims a handler that became unreachable without release", async () => {
    await using pool = new Pool({
      db: cluster.endpoints()[0],
      groups: { g: { connection_count: 1, autocommit: false, leak_detection_ms: 60_000 } },
      application_name: "leak2",
    });
    const leaks: Leak[] = [];
    pool.addEventListener("leak", (e) => leaks.push(e.detail));
    const forget = async () => {
      const db = pool.handler("g");
      await db.query("INSERT INTO leak_rows VALUES (1)"); // a transaction left open
    };
    await forget();
    // It holds its permit until reclaimed; Bun's collector may have reclaimed it already (the
    // permit comes back and the event fires in the same step).
    assert.equal(pool.stats().groups.g.busy, 1 - leaks.length);
    await waitFor(() => {
      collectGarbage();
      return leaks.length === 1;
    }, { timeoutMs: 30_000, message: "the unreachable handler reclaimed" });
    assert.equal(leaks[0].reclaimed, true);
    assert.equal(leaks[0].group, "g");
    assert.equal(pool.stats().groups.g.busy, 0, "its permit is back");
    // The group's only connection is usable again, and the leaked transaction never committed.
    await pool.transaction("g", async (db) => {
      await db.query("INSERT INTO leak_rows VALUES (2)");
    });
    const rows = await cluster.primary.query("SELECT id FROM leak_rows ORDER BY id");
    assert.deepEqual(rows.map((r) => r.id), [2]);
  });

  // A handler nobody holds any more can still have a statement that its caller awaits (the
  // one-liner `await pool.handler(g).query(...)` drops it at once): the reclaim waits for it.
  // Enough seats that nothing waits on a collection (Deno cannot force one).
  it("lets a statement of an unreachable handler finish before reclaiming it", async () => {
    await using pool = new Pool({
      db: cluster.endpoints()[0],
      groups: { g: { connection_count: 4, leak_detection_ms: 60_000 } },
      application_name: "leak3",
    });
    const leaks: Leak[] = [];
    pool.addEventListener("leak", (e) => leaks.push(e.detail));
    // One template for every tagged statement below, its first use by a handler released in
    // time: postgres.js keeps an Error per template for good, and V8 keeps the receivers of its
    // stack frames with it, so the first handler through a template is never collected there.
    const tagged = (sql: Sql, n: number, sleepS: number) =>
      sql`SELECT ${n}::int AS n, pg_sleep(${sleepS}::float8)`;
    {
      using db = await pool.acquire("g");
      await tagged(db.sql, 0, 0);
    }
    const collecting = setInterval(collectGarbage, 5);
    try {
      const blockers = [0, 1, 2].map(() => pool.handler("g"));
      // One sent on a connection still starting up, one waiting for a seat.
      const running = [0, 1].map((i) =>
        pool.handler("g").query("SELECT $1::int AS i, pg_sleep(0.15)", [i])
      );
      await new Promise((resolve) => setTimeout(resolve, 50));
      blockers[0].release();
      const rows = await Promise.all(running);
      assert.deepEqual(rows.map((r) => r[0].i), [0, 1]);
      for (const db of blockers) db.release();
      // Through the tagged template of a handler dropped right after acquire().
      const [row] = await tagged((await pool.acquire("g")).sql, 7, 0.15);
      assert.equal(row.n, 7);
      // Holding the tagged template alone keeps the checkout.
      const holdingSql = async () => {
        const { sql } = await pool.acquire("g");
        await new Promise((resolve) => setTimeout(resolve, 100));
        return (await tagged(sql, 8, 0))[0].n;
      };
      assert.equal(await holdingSql(), 8);
    } finally {
      clearInterval(collecting);
    }
    await waitFor(() => {
      collectGarbage();
      return leaks.length === 4;
    }, { timeoutMs: 30_000, message: `all four unreachable handlers reclaimed (${leaks.length})` });
    assert.ok(leaks.every((l) => l.reclaimed));
    assert.equal(pool.stats().groups.g.busy, 0);
  });

  it("a held handler's leak timer keeps no process alive after close()", async () => {
    // A child process holds a handler (a request still in flight), closes its pool and has
    // nothing else to do: it must exit then, not when the leak timer would have fired.
    const leakMs = 20_000;
    const child = `
      import { Pool } from ${JSON.stringify(new URL("../mod.ts", import.meta.url).href)};
      const pool = new Pool({
        db: ${JSON.stringify(cluster.endpoints()[0])},
        groups: { g: { connection_count: 1, leak_detection_ms: ${leakMs} } },
        application_name: "leak4",
        close_timeout_ms: 100,
        health_check_interval_ms: 0,
      });
      pool.addEventListener("leak", () => console.log("leak event after close()"));
      const db = pool.handler("g");
      await db.query("SELECT 1");
      await pool.close();
      console.log("closed at " + Date.now());
      globalThis.held = db;
    `;
    const [bin, args] = "Bun" in globalThis
      ? [bunBin(), ["-e", child]]
      : [denoBin(), ["eval", child]];
    const { code, stdout, stderr } = await runCommand(bin, args, { timeoutMs: leakMs * 3 });
    const exitedAt = Date.now();
    const closedAt = Number(/closed at (\d+)/.exec(stdout)?.[1]);
    assert.ok(closedAt > 0, `the child closed its pool (code ${code}):\n${stdout}${stderr}`);
    const lived = exitedAt - closedAt;
    assert.ok(lived < leakMs / 2, `the child lived ${lived} ms after close():\n${stdout}${stderr}`);
    assert.doesNotMatch(stdout, /leak event/);
  });

  it("a leak timer of a closed pool reports nothing", async () => {
    const config = (app: string) => ({
      db: cluster.endpoints()[0],
      groups: { g: { connection_count: 1, leak_detection_ms: 300 } },
      application_name: app,
    });
    const closed = new Pool({ ...config("leak5"), close_timeout_ms: 100 });
    await using open = new Pool(config("leak5b"));
    const leaks: string[] = [];
    closed.addEventListener("leak", () => leaks.push("closed"));
    open.addEventListener("leak", () => leaks.push("open"));
    const held = closed.handler("g");
    await held.query("SELECT 1");
    await closed.close();
    // Checked out after the closed pool's: its timer, of the same length, fires after that one.
    using control = open.handler("g");
    await control.query("SELECT 1");
    await waitFor(() => leaks.includes("open"), { message: "the open pool's leak event" });
    assert.deepEqual(leaks, ["open"]);
    held.release();
  });
});
