// Leak detection (leak_detection_ms): a handler held too long is reported with where it was
// checked out; one that becomes unreachable without release is reclaimed and reported.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { type PgCluster, startCluster } from "./harness/cluster.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { waitFor } from "./harness/wait.ts";
import { Pool, type PoolEventDetailMap } from "../mod.ts";

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

// Bun exposes a synchronous full collection; elsewhere, garbage pressure makes V8 collect (and
// run finalizers) without flags.
function collectGarbage(): void {
  const bun = (globalThis as { Bun?: { gc(sync: boolean): void } }).Bun;
  if (bun !== undefined) return bun.gc(true);
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc !== undefined) return gc();
  let junk: unknown[] = [];
  for (let i = 0; i < 200_000; i++) junk.push({ i, s: `x${i}` });
  junk = [];
}

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
    assert.equal(pool.stats().groups.g.busy, 1);
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
});
