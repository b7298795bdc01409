import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { inspect } from "node:util";
import { type PgCluster, startCluster } from "./harness/cluster.ts";
import { closedPort } from "./harness/closed_port.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { waitFor } from "./harness/wait.ts";
import { AcquireTimeoutError, NoEndpointAvailableError, Pool, type PoolEvent } from "../mod.ts";

await setTestTimeout(120_000);

let cluster: PgCluster;

before(async () => {
  cluster = await startCluster({ replicas: 1 });
}, { timeout: 120_000 });

after(async () => {
  await cluster?.close();
}, { timeout: 60_000 });

describe("observability", () => {
  it("stats() reports groups and endpoints as plain JSON without credentials", async () => {
    await using p = new Pool({
      db: cluster.endpoints(),
      groups: { g: { connection_count: 2, acquire_timeout_ms: 5000 } },
      application_name: "stats",
    });
    const held = [await p.acquire("g"), await p.acquire("g")];
    const waiting = p.acquire("g");
    await waitFor(() => p.stats().groups.g.waiting === 1);
    let s = p.stats();
    assert.deepEqual(
      {
        size: s.groups.g.size,
        open: s.groups.g.open,
        busy: s.groups.g.busy,
        idle: s.groups.g.idle,
      },
      { size: 2, open: 2, busy: 2, idle: 0 },
    );
    await new Promise((r) => setTimeout(r, 30));
    held[0].release();
    (await waiting).release();
    held[1].release();
    s = p.stats();
    assert.equal(s.groups.g.checkouts, 3);
    assert.equal(s.groups.g.busy, 0);
    assert.equal(s.groups.g.idle, 2);
    assert.ok(s.groups.g.wait_ms.p99 >= 25, `p99 ${s.groups.g.wait_ms.p99}`);
    assert.equal(s.groups.g.wait_ms.p50, 0);
    assert.equal(s.endpoints.length, 2);
    assert.equal(s.endpoints.reduce((n, e) => n + e.connections, 0), 2);
    const text = JSON.stringify(s) + inspect(s, { depth: 10 }) +
      inspect(p, { depth: 10, showHidden: true });
    assert.ok(!text.includes(cluster.password), "stats or inspect output leaks the password");
    assert.deepEqual(JSON.parse(JSON.stringify(s)), s);
  });

  it("stats() counts the wait of every pool.query() that waited for a seat", async () => {
    await using p = new Pool({
      db: cluster.endpoints(),
      groups: { g: { connection_count: 1, endpoints: [0], acquire_timeout_ms: 5000 } },
      application_name: "stats-seats",
    });
    const held = await p.acquire("g");
    const started = performance.now();
    const queries = Array.from({ length: 20 }, (_, i) => p.query("g", "SELECT $1::int AS i", [i]));
    await waitFor(() => p.stats().groups.g.waiting === 20);
    await waitFor(() => performance.now() - started >= 60);
    held.release();
    const rows = await Promise.all(queries);
    assert.deepEqual(rows.map((r) => r[0].i), Array.from({ length: 20 }, (_, i) => i));
    const s = p.stats().groups.g;
    assert.equal(s.checkouts, 21);
    assert.equal(s.waiting, 0);
    // 20 of the 21 checkouts waited at least the 60 ms the connection was held: the median too.
    assert.ok(s.wait_ms.p50 >= 55, `p50 ${s.wait_ms.p50}`);
    assert.ok(s.wait_ms.p99 >= 55, `p99 ${s.wait_ms.p99}`);
  });

  it("dispatches acquiretimeout, connectionerror and endpointdown events", async () => {
    const refusedPort = await closedPort();
    await using p = new Pool({
      db: [...cluster.endpoints(), { ...cluster.endpoints()[0], port: refusedPort }],
      groups: {
        g: { connection_count: 1, endpoints: [0], acquire_timeout_ms: 50 },
        nowhere: { connection_count: 1, endpoints: [2] },
      },
      application_name: "events",
      health_check_interval_ms: 0, // probes on demand only: the refused connect comes from the query
    });
    const events: PoolEvent[] = [];
    for (const type of ["acquiretimeout", "connectionerror", "endpointdown"]) {
      p.addEventListener(type, (e) => events.push(e as PoolEvent));
    }
    {
      using db = await p.acquire("g");
      await db.query("SELECT 1");
      await assert.rejects(p.acquire("g"), AcquireTimeoutError);
      const timeout = events.find((e) => e.type === "acquiretimeout");
      assert.equal(timeout?.detail.group, "g");
    }
    // A refused connect is the caller's answer (nothing ran); it triggers a probe of that server,
    // and only the probe marks it down.
    await assert.rejects(
      p.query("nowhere", "SELECT 1"),
      (err: Error & { code?: string }) =>
        err instanceof NoEndpointAvailableError || err.code === "ECONNREFUSED",
    );
    await waitFor(() => events.some((e) => e.type === "endpointdown"), {
      message: "endpointdown after the probe",
    });
    const err = events.find((e) => e.type === "connectionerror");
    assert.ok(err, "connectionerror dispatched");
    assert.equal(err.detail.group, "nowhere");
    assert.equal(err.detail.endpoint?.port, refusedPort);
    assert.equal(err.detail.reason, "ECONNREFUSED");
    const down = events.find((e) => e.type === "endpointdown");
    assert.equal(down?.detail.endpoint?.port, refusedPort);
    assert.equal(p.stats().groups.g.timeouts, 1);
    assert.ok(p.stats().endpoints[2].errors >= 1);
    assert.equal(p.stats().endpoints[2].state, "down");
  });

  it("survives idle connections dying with no unhandled rejection", async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (e: PromiseRejectionEvent) => {
      unhandled.push(e.reason);
      e.preventDefault();
    };
    globalThis.addEventListener("unhandledrejection", onUnhandled);
    try {
      await using p = new Pool({
        db: cluster.endpoints(),
        groups: { g: { connection_count: 4 } },
        application_name: "idle-deaths",
        health_check_interval_ms: 50,
      });
      await Promise.all(Array.from({ length: 4 }, () => p.query("g", "SELECT 1")));
      for (const server of cluster.servers) {
        await server.query(
          "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE 'idle-deaths%'",
        );
      }
      await waitFor(async () =>
        (await cluster.countConnections({ applicationName: "idle-deaths" })) === 0
      );
      // Probes reconnect; give the event loop a few probe periods to surface anything.
      await waitFor(() =>
        p.stats().endpoints.every((e) => e.state === "up" && e.latency_ms !== null)
      );
      await new Promise((r) => setTimeout(r, 200));
      const rows = await p.query("g", "SELECT 1 AS ok");
      assert.equal(rows[0].ok, 1);
    } finally {
      globalThis.removeEventListener("unhandledrejection", onUnhandled);
    }
    assert.deepEqual(unhandled, []);
  });
});
