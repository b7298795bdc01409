import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { type PgCluster, startCluster } from "./harness/cluster.ts";
import { waitFor } from "./harness/wait.ts";
import {
  AcquireTimeoutError,
  type Handler,
  Pool,
  PoolClosedError,
  PoolExhaustedError,
} from "../mod.ts";

let cluster: PgCluster;

before(async () => {
  cluster = await startCluster({ replicas: 1 });
}, { timeout: 120_000 });

after(async () => {
  await cluster?.close();
}, { timeout: 60_000 });

function pool(
  name: string,
  extra: Record<string, unknown> = {},
  group: Record<string, unknown> = {},
): Pool {
  return new Pool({
    db: cluster.endpoints(),
    groups: { g: { connection_count: 2, ...group } },
    application_name: name,
    ...extra,
  });
}

describe("checkout", () => {
  it("opens nothing before the first statement", async () => {
    await using p = pool("lazy");
    {
      using db = p.handler("g");
      assert.equal(db.group, "g");
    }
    assert.equal(await cluster.countConnections({ applicationName: "lazy" }), 0);
    await p.query("g", "SELECT 1");
    assert.equal(await cluster.countConnections({ applicationName: "lazy" }), 1);
  });

  it("alternates endpoints: 100 sequential queries land 50/50", async () => {
    await using p = pool("alternate", {}, { connection_count: 4 });
    const ports = new Map<number, number>();
    for (let i = 0; i < 100; i++) {
      using db = p.handler("g");
      const [{ port }] = await db.query<{ port: number }>(
        "SELECT inet_server_port() AS port",
      );
      assert.equal(port, db.endpoint?.port);
      ports.set(port, (ports.get(port) ?? 0) + 1);
    }
    assert.deepEqual(
      [...ports.entries()].sort(),
      [[cluster.primary.port, 50], [cluster.replicas[0].port, 50]].sort(),
    );
  });

  it("spreads a group's connections evenly over its endpoints", async () => {
    await using p = pool("spread", {}, { connection_count: 4 });
    const held: Handler[] = [];
    for (let i = 0; i < 4; i++) held.push(p.handler("g"));
    await Promise.all(held.map((db) => db.query("SELECT 1")));
    const perPort = held.map((db) => db.endpoint!.port).sort();
    assert.deepEqual(
      perPort,
      [
        cluster.primary.port,
        cluster.primary.port,
        cluster.replicas[0].port,
        cluster.replicas[0].port,
      ].sort(),
    );
    held.forEach((db) => db.release());
  });

  it("narrows a group to the endpoints it lists", async () => {
    await using p = new Pool({
      db: cluster.endpoints(),
      groups: { replica: { connection_count: 2, endpoints: [1] } },
    });
    for (let i = 0; i < 4; i++) {
      using db = p.handler("replica");
      await db.query("SELECT 1");
      assert.equal(db.endpoint?.index, 1);
    }
  });

  it("serves waiters in strict FIFO order when the group is busy", async () => {
    await using p = pool("fifo", {}, { connection_count: 2 });
    const first = p.handler("g");
    const second = p.handler("g");
    await Promise.all([first.query("SELECT 1"), second.query("SELECT 1")]);
    const order: number[] = [];
    const waiters = Array.from({ length: 6 }, (_, i) =>
      p.acquire("g").then(async (db) => {
        order.push(i);
        await db.query("SELECT pg_sleep(0.01)");
        db.release();
      }));
    first.release();
    second.release();
    await Promise.all(waiters);
    assert.deepEqual(order, [0, 1, 2, 3, 4, 5]);
  });

  it("times out a waiting checkout with AcquireTimeoutError", async () => {
    await using p = pool("timeout", {}, { connection_count: 1, acquire_timeout_ms: 100 });
    using held = p.handler("g");
    await held.query("SELECT 1");
    const started = performance.now();
    await assert.rejects(p.acquire("g"), (err: Error) => {
      assert.ok(err instanceof AcquireTimeoutError);
      assert.match(err.message, /100 ms .* group "g"/);
      return true;
    });
    assert.ok(performance.now() - started >= 90);
    // A handler taken with the sync API waits too, and fails on its first statement.
    using late = p.handler("g", { timeout_ms: 50 });
    await assert.rejects(late.query("SELECT 1"), AcquireTimeoutError);
  });

  it("cancels a waiting checkout on abort", async () => {
    await using p = pool("abort", {}, { connection_count: 1 });
    using held = p.handler("g");
    const ctl = new AbortController();
    const waiting = p.acquire("g", { signal: ctl.signal });
    ctl.abort(new Error("client went away"));
    await assert.rejects(waiting, /client went away/);
    held.release();
    using next = await p.acquire("g");
    await next.query("SELECT 1");
  });

  it("non-threaded mode throws PoolExhaustedError instead of waiting", async () => {
    await using p = pool("nonthreaded", { type: "non-threaded" }, { connection_count: 2 });
    using a = p.handler("g");
    using b = p.handler("g");
    assert.throws(() => p.handler("g"), (err: Error) => {
      assert.ok(err instanceof PoolExhaustedError);
      assert.match(err.message, /All 2 connections of group "g"/);
      return true;
    });
    await Promise.all([a.query("SELECT 1"), b.query("SELECT 1")]);
    b.release();
    using c = p.handler("g");
    await c.query("SELECT 1");
  });

  it("replaces a dead idle connection before the caller's first statement", async () => {
    await using p = pool("validate", { validate_after_ms: 0 }, { connection_count: 2 });
    await Promise.all([p.query("g", "SELECT 1"), p.query("g", "SELECT 1")]);
    await cluster.primary.query(
      "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'validate'",
    );
    await cluster.replicas[0].query(
      "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'validate'",
    );
    for (let i = 0; i < 10; i++) {
      const rows = await p.query("g", "SELECT 1 AS ok");
      assert.equal(rows[0].ok, 1);
    }
  });

  it("pipelines one-shot pool.query calls onto busy connections, without starving waiters", async () => {
    await using p = pool("pipelined", {}, { connection_count: 2, endpoints: [0] });
    const results = await Promise.all(
      Array.from(
        { length: 100 },
        (_, i) => p.query<{ n: number }>("g", "SELECT $1::int AS n", [i]),
      ),
    );
    assert.deepEqual(results.map((r) => r[0].n), Array.from({ length: 100 }, (_, i) => i));
    assert.ok(p.stats().groups.g.open <= 2);
    assert.equal(await cluster.countConnections({ applicationName: "pipelined" }), 2);
    // A handler that has to wait is served while one-shots keep arriving.
    let stop = false;
    const flood = Array.from({ length: 20 }, async () => {
      while (!stop) await p.query("g", "SELECT pg_sleep(0.002)");
    });
    const waiter = p.acquire("g", { timeout_ms: 5000 });
    await using db = await waiter;
    stop = true;
    await db.query("SELECT 1");
    db.release();
    await Promise.all(flood);
  });

  // Past every connection's pipeline (64 statements), a one-shot used to wait for a whole
  // connection, and once one waited nobody could share any more: throughput fell to one
  // statement per connection at a time (HTTP /queries?n=20 at 64 clients ran at 0.36x postgres.js).
  it("refills a shared connection's pipeline with waiting one-shots in one batch once it has drained to half", async () => {
    await using p = pool("seats", {}, { connection_count: 1, endpoints: [0] });
    await p.query("g", "SELECT 1");
    const admin = cluster.primary;
    // The 2nd and the 33rd statement of the pipeline wait for locks held elsewhere.
    const lock = `SELECT pg_advisory_lock(4242), pg_advisory_lock(4243)`;
    const blocker = (async () => {
      const { default: postgres } = await import("postgres");
      const sql = postgres({
        host: admin.host,
        port: admin.port,
        user: cluster.user,
        pass: cluster.password,
        database: cluster.database,
        max: 1,
        onnotice: () => {},
      });
      await sql.unsafe(lock);
      return sql;
    })();
    const held = await blocker;
    try {
      const first = p.query("g", "SELECT 1 AS n");
      const pipeline = Array.from(
        { length: 63 },
        (_, i) =>
          p.query<{ n: number }>(
            "g",
            i === 0
              ? "SELECT 2 AS n FROM (SELECT pg_advisory_xact_lock_shared(4242)) l"
              : i === 31
              ? "SELECT 33 AS n FROM (SELECT pg_advisory_xact_lock_shared(4243)) l"
              : `SELECT ${i + 2} AS n`,
          ),
      );
      const waiting = Array.from(
        { length: 10 },
        (_, i) => p.query<{ n: number }>("g", `SELECT ${100 + i} AS n`),
      );
      assert.equal(p.stats().groups.g.waiting, 10);
      await first;
      // One freed seat is not handed on by itself (the 2nd statement holds the rest back)...
      assert.equal(p.stats().groups.g.waiting, 10);
      // ...but once 32 statements have finished, the waiters are seated together, while the
      // second lock still holds the rest of the pipeline.
      await held.unsafe("SELECT pg_advisory_unlock(4242)");
      await waitFor(() => p.stats().groups.g.waiting === 0, {
        timeoutMs: 5_000,
        message: "the waiting one-shots seated once the pipeline drained to half",
      });
      await held.unsafe("SELECT pg_advisory_unlock(4243)");
      const rows = await Promise.all([...pipeline, ...waiting]);
      assert.deepEqual(
        rows.map((r) => r[0].n),
        [
          ...Array.from({ length: 63 }, (_, i) => i + 2),
          ...Array.from({ length: 10 }, (_, i) => 100 + i),
        ],
      );
      assert.equal(await cluster.countConnections({ applicationName: "seats" }), 1);
      assert.equal(p.stats().groups.g.busy, 0);
      assert.equal(p.stats().groups.g.waiting, 0);
    } finally {
      await held.end();
    }
  });

  it("gives a waiting checkout the next whole connection even while one-shots wait for seats", async () => {
    await using p = pool("seats-fifo", {}, { connection_count: 1, endpoints: [0] });
    let stop = false;
    let done = 0;
    // 100 one-shot callers in a loop: 64 seats on the one connection, the rest always waiting.
    const flood = Array.from({ length: 100 }, async () => {
      while (!stop) {
        await p.query("g", "SELECT pg_sleep(0.001)");
        done++;
      }
    });
    await waitFor(() => done > 200 && p.stats().groups.g.waiting > 0, {
      message: "one-shots waiting for seats",
    });
    const db = await p.acquire("g", { timeout_ms: 10_000 });
    stop = true;
    const [{ pid }] = await db.query<{ pid: number }>("SELECT pg_backend_pid() AS pid");
    assert.ok(pid > 0);
    db.release();
    await Promise.all(flood);
    assert.equal(p.stats().groups.g.busy, 0);
  });

  it("times out one-shots waiting for a seat after acquire_timeout_ms", async () => {
    await using p = pool("seats-timeout", {}, {
      connection_count: 1,
      endpoints: [0],
      acquire_timeout_ms: 150,
    });
    // The first statement holds the pipeline for 400 ms: no seat frees before the deadline.
    const slow = Array.from(
      { length: 64 },
      (_, i) => p.query("g", i === 0 ? "SELECT pg_sleep(0.4)" : "SELECT 1"),
    );
    const late = Array.from({ length: 3 }, () => p.query("g", "SELECT 1"));
    const settled = await Promise.allSettled(late);
    for (const s of settled) {
      assert.equal(s.status, "rejected");
      assert.ok((s as PromiseRejectedResult).reason instanceof AcquireTimeoutError);
    }
    await Promise.all(slow);
    assert.equal(p.stats().groups.g.timeouts, 3);
    assert.equal(p.stats().groups.g.waiting, 0);
    // The group still works afterwards.
    await p.query("g", "SELECT 1");
    assert.equal(p.stats().groups.g.busy, 0);
  });

  it("keeps its capacity exact when shared connections die between bursts of one-shots", async () => {
    await using p = pool("shared-kill", {}, {
      connection_count: 2,
      endpoints: [0],
      acquire_timeout_ms: 200,
    });
    const burst = () =>
      Promise.all(
        Array.from(
          { length: 60 },
          (_, i) => p.query<{ n: number }>("g", "SELECT $1::int AS n", [i]),
        ),
      );
    await burst();
    assert.equal(await cluster.countConnections({ applicationName: "shared-kill" }), 2);
    await cluster.primary.query(
      "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'shared-kill'",
    );
    await waitFor(async () =>
      (await cluster.countConnections({ applicationName: "shared-kill" })) === 0
    );
    // Every one-shot of the next burst succeeds: dead shared connections are left, not reused.
    const rows = await burst();
    assert.deepEqual(rows.map((r) => r[0].n), Array.from({ length: 60 }, (_, i) => i));
    assert.equal(p.stats().groups.g.busy, 0);
    // Exactly connection_count exclusive checkouts fit, no more.
    const a = await p.acquire("g");
    const b = await p.acquire("g");
    await Promise.all([a.query("SELECT 1"), b.query("SELECT 1")]);
    await assert.rejects(p.acquire("g"), AcquireTimeoutError);
    a.release();
    b.release();
    assert.equal(await cluster.countConnections({ applicationName: "shared-kill" }), 2);
  });

  it("close() ends every server connection and later use fails", async () => {
    const p = pool("closing", {}, { connection_count: 3 });
    const held = [p.handler("g"), p.handler("g"), p.handler("g")];
    await Promise.all(held.map((db) => db.query("SELECT 1")));
    const waiting = assert.rejects(p.acquire("g"), PoolClosedError);
    assert.equal(await cluster.countConnections({ applicationName: "closing" }), 3);
    await p.close();
    await waiting;
    assert.throws(() => p.handler("g"), PoolClosedError);
    await assert.rejects(p.query("g", "SELECT 1"), PoolClosedError);
    held.forEach((db) => db.release());
    await waitFor(
      async () => (await cluster.countConnections({ applicationName: "closing" })) === 0,
      { message: "server connections left after close()" },
    );
  });
});
