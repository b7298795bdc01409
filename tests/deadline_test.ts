// withDeadline counts only time in which the process could have seen an answer: a timer that
// fires late after an event-loop stall gets a short grace so that an answer waiting unread is
// read first. Under stalls that never stopped, the grace was re-armed after every late timer, so
// the deadline never fired (found by an audit).
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { type PgCluster, startCluster } from "./harness/cluster.ts";
import { startProxy } from "./harness/proxy.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { waitFor } from "./harness/wait.ts";
import { Pool, type PoolConfig } from "../mod.ts";
import { withDeadline } from "../src/deadline.ts";

await setTestTimeout(120_000);

/** Blocks the event loop in slices (120 ms), with a turn of the loop between slices, for `ms`. */
function stallFor(ms: number, sliceMs = 120): Promise<void> {
  const until = performance.now() + ms;
  return new Promise((resolve) => {
    const burn = () => {
      const sliceEnd = performance.now() + sliceMs;
      while (performance.now() < sliceEnd) { /* busy */ }
      if (performance.now() < until) setTimeout(burn, 0);
      else resolve();
    };
    setTimeout(burn, 0);
  });
}

/** Settles after `turns` turns of the event loop, as an answer needing that many reads would. */
function afterTurns(turns: number): Promise<string> {
  return new Promise((resolve) => {
    let seen = 0;
    const step = () => ++seen >= turns ? resolve("settled") : setTimeout(step, 0);
    setTimeout(step, 0);
  });
}

describe("withDeadline", () => {
  // A fresh session's connect, start-up and first answer take several turns of the loop. Under
  // a loop stalled again and again (a long synchronous benchmark loop did it), one grace let a
  // probe of a healthy server time out: the server was marked down, and every checkout of a
  // non-threaded pool went the slow way (15 us instead of 0.5 us) until the stalls ended.
  it("gives an answer that needs several turns of a stalled loop its turns", async () => {
    // Slices of 250 ms: every timer fires well past its grace (a slice of 120 ms left some
    // within it on a loaded machine, and the deadline passed without a grace).
    const stalls = stallFor(2000, 250);
    const outcome = await withDeadline(afterTurns(4), 300).then(
      (v) => v,
      (err: Error & { code?: string }) => err.code,
    );
    await stalls;
    assert.equal(outcome, "settled");
  });

  it("fires under stalls that do not stop, after a bounded number of graces", async () => {
    const never = new Promise<never>(() => {});
    const started = performance.now();
    const stalls = stallFor(3000);
    const outcome = await withDeadline(never, 200).then(
      () => "settled",
      (err: Error & { code?: string }) => ({ code: err.code, at: performance.now() - started }),
    );
    await stalls;
    assert.notEqual(outcome, "settled");
    assert.equal((outcome as { code?: string }).code, "ETIMEDOUT");
    // Due at 200 ms; with slices of 120 ms and at most 4 graces it fires well before the stalls
    // end.
    assert.ok(
      (outcome as { at: number }).at < 2000,
      `fired after ${(outcome as { at: number }).at} ms`,
    );
  });
});

// With background probing off (health_check_interval_ms: 0) a statement arms a probe of its
// server connect_timeout later (Topology.watch), so that a host going silent under it is cut off.
// That probe fired once: a statement that outlived it, on a host that went silent afterwards,
// hung until TCP gave up; and COMMIT, ROLLBACK and db.sql statements armed nothing at all (found
// by an audit). Real server behind the harness proxy, whose blackhole drops everything.
describe("watchdog probing (health_check_interval_ms: 0)", () => {
  let cluster: PgCluster;
  before(async () => {
    cluster = await startCluster({ replicas: 0 });
  }, { timeout: 120_000 });
  after(async () => {
    await cluster?.close();
  }, { timeout: 60_000 });

  /** A pool on one server behind a proxy: connect_timeout 1 s, probe deadline 0.5 s. */
  async function silentable(app: string, groups: PoolConfig["groups"]) {
    const proxy = await startProxy(cluster.primary);
    const pool = new Pool({
      db: [{ ...cluster.endpoints()[0], host: proxy.host, port: proxy.port, connect_timeout: 1 }],
      groups,
      application_name: app,
      health_check_interval_ms: 0,
      probe_timeout_ms: 500,
    });
    const probes = () => pool.stats().endpoints[0].probes;
    return {
      proxy,
      pool,
      probes,
      async [Symbol.asyncDispose]() {
        proxy.mode = "pass";
        await pool.close();
        await proxy.close();
      },
    };
  }

  /** How `p` settled, once it has, and when (ms after `from`). */
  function track(p: Promise<unknown>) {
    const t: { outcome?: string; at?: number } = {};
    p.then(() => "resolved", (e: Error) => e.name).then((outcome) => {
      t.outcome = outcome;
      t.at = performance.now();
    });
    return t;
  }

  // connect_timeout (1 s) until the next watchdog probe, 0.5 s for it to give up: generous
  // bound for a loaded machine, well short of forever.
  const CUT_WITHIN_MS = 8_000;

  it("a statement that outlives the watchdog's probe is still cut off when its host goes silent", async () => {
    await using s = await silentable("wd-long", { g: { connection_count: 1 } });
    await s.pool.query("g", "SELECT 1");
    // Whatever the first statement armed has fired: the long one starts with nothing pending.
    await waitFor(() => s.probes() >= 1, { timeoutMs: 10_000, message: "the first probe" });
    const before = s.probes();
    const stmt = track(s.pool.query("g", "SELECT pg_sleep(30)"));
    // The watchdog the statement armed probes, and the server answers: the host is fine.
    await waitFor(() => s.probes() > before, { timeoutMs: 10_000, message: "a watchdog probe" });
    assert.equal(s.pool.stats().endpoints[0].state, "up");
    assert.equal(stmt.outcome, undefined, "still running");
    s.proxy.mode = "blackhole";
    const silentAt = performance.now();
    await waitFor(() => stmt.outcome !== undefined, {
      timeoutMs: CUT_WITHIN_MS,
      message: "the statement cut off after its host went silent",
    });
    assert.equal(stmt.outcome, "SessionLostError");
    assert.ok(stmt.at! - silentAt < CUT_WITHIN_MS);
    assert.equal(s.pool.stats().endpoints[0].state, "down");
  });

  it("COMMIT on a host that went silent is cut off", async () => {
    await using s = await silentable("wd-commit", {
      tx: { connection_count: 1, autocommit: false },
    });
    const db = await s.pool.acquire("tx");
    try {
      await db.query("SELECT 1");
      // The probe the statement armed has answered; then the host goes silent.
      await waitFor(() => s.probes() >= 1, { timeoutMs: 10_000, message: "a watchdog probe" });
      s.proxy.mode = "blackhole";
      const commit = track(db.commit());
      await waitFor(() => commit.outcome !== undefined, {
        timeoutMs: CUT_WITHIN_MS,
        message: "COMMIT cut off after its host went silent",
      });
      assert.equal(commit.outcome, "TransactionLostError");
    } finally {
      db.release();
    }
  });

  it("a db.sql statement on a host that went silent is cut off", async () => {
    await using s = await silentable("wd-sql", { g: { connection_count: 1 } });
    await s.pool.query("g", "SELECT 1");
    // The one-shot's probe has come and gone: nothing is armed any more.
    await waitFor(() => s.probes() >= 1, { timeoutMs: 10_000, message: "the first probe" });
    const db = await s.pool.acquire("g");
    try {
      s.proxy.mode = "blackhole";
      const stmt = track(Promise.resolve(db.sql`SELECT 1 AS n`));
      await waitFor(() => stmt.outcome !== undefined, {
        timeoutMs: CUT_WITHIN_MS,
        message: "the db.sql statement cut off after its host went silent",
      });
      assert.notEqual(stmt.outcome, "resolved");
      assert.equal(s.pool.stats().endpoints[0].state, "down");
    } finally {
      db.release();
    }
  });
});
