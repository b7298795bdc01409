// Audit 28: pool.listen(), leak detection and pool events under real faults.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { type PgCluster, startCluster } from "./harness/cluster.ts";
import { poolSessions, terminate } from "./harness/faults.ts";
import { collectGarbage } from "./harness/gc.ts";
import { listenSessions, stallListen } from "./harness/listen.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { behind, startProxy, type TcpProxy } from "./harness/proxy.ts";
import { waitFor } from "./harness/wait.ts";
import { Pool, type PoolConfig, type PoolEventDetailMap } from "../mod.ts";

await setTestTimeout(180_000);

let cluster: PgCluster;

before(async () => {
  cluster = await startCluster({ replicas: 0 });
  await cluster.primary.query("CREATE TABLE audit28_rows (id int)");
}, { timeout: 180_000 });

after(async () => {
  await cluster?.close();
}, { timeout: 60_000 });

function pool(app: string, extra: Partial<PoolConfig> = {}): Pool {
  return new Pool({
    db: cluster.endpoints(),
    groups: { write: { connection_count: 1, role: "primary" } },
    application_name: app,
    ...extra,
  });
}

const viaProxy = (proxy: TcpProxy) => behind(proxy, cluster.endpoints()[0]);

describe("pool.listen under faults", () => {
  it("close() while the LISTEN path is silent returns within close_timeout_ms", async () => {
    const proxy = await startProxy(cluster.primary);
    try {
      const p = pool("a28c", {
        db: [viaProxy(proxy)],
        health_check_interval_ms: 0,
        listen_heartbeat_ms: 0,
        close_timeout_ms: 300,
      });
      await p.listen("silent", () => {});
      await p.query("write", "SELECT 1");
      proxy.mode = "blackhole";
      const started = performance.now();
      await p.close();
      const ms = Math.round(performance.now() - started);
      // close_timeout_ms, plus the pool's bounded wait (1 s) for a socket it cut to close, with room
      // for a slow machine: a close() that waited on the silent path would wait until it healed.
      assert.ok(ms < 2_500, `close() took ${ms} ms on a silent path`);
    } finally {
      proxy.mode = "pass";
      await proxy.close();
    }
    await waitFor(async () => (await listenSessions(cluster, "a28c")).length === 0, {
      message: "no LISTEN session left once the path heals",
    });
  });

  it("the last unlisten() during a stalled re-subscription leaves no session and no retry", async () => {
    const proxy = await startProxy(cluster.primary);
    try {
      await using p = pool("a28u", { db: [viaProxy(proxy)], probe_timeout_ms: 800 });
      const events: string[] = [];
      p.addEventListener("listenlost", () => events.push("lost"));
      p.addEventListener("listenrestored", (e) => events.push(`restored ${e.detail.channels}`));
      const sub = await p.listen("u", () => {});
      const cut = stallListen(proxy, "u");
      await terminate(await listenSessions(cluster, "a28u"));
      await waitFor(() => cut.hit, { message: "the re-subscription's LISTEN in flight" });
      assert.deepEqual(events, ["lost"]);
      const started = performance.now();
      await sub.unlisten();
      const ms = Math.round(performance.now() - started);
      assert.ok(ms < 3_000, `unlisten() took ${ms} ms`);
      proxy.cutClientChunk = undefined;
      proxy.releaseClients();
      await waitFor(async () => (await listenSessions(cluster, "a28u")).length === 0, {
        message: "no LISTEN session after the last unlisten()",
      });
      // Past the longest retry pause: a retry would have opened a session by now.
      await new Promise((r) => setTimeout(r, 2_500));
      assert.equal((await listenSessions(cluster, "a28u")).length, 0, "a retry reopened a session");
      assert.deepEqual(events, ["lost"]);
      // A new subscription later is a first one again: it works, and delivers.
      const got: string[] = [];
      await p.listen("u2", (payload) => got.push(payload));
      await p.query("write", "SELECT pg_notify('u2', 'x')");
      await waitFor(() => got.includes("x"), { message: "delivery to the new subscription" });
      assert.equal((await listenSessions(cluster, "a28u")).length, 1);
    } finally {
      proxy.cutClientChunk = undefined;
      proxy.releaseClients();
      await proxy.close();
    }
  });
});

describe("pool.listen delivery", () => {
  // #deliver iterated the channel's live Set: a subscription made by a callback during a
  // delivery was added to that Set and visited by the same loop, so it got a notification sent
  // before it existed (before its listen() resolved, let alone before the server listened for
  // it); a callback that subscribes on every notification looped forever, synchronously.
  it("a subscription made during a delivery gets only later notifications; one unlistened then gets none", async () => {
    await using p = pool("a28d");
    const got: string[] = [];
    const pending: Promise<unknown>[] = [];
    let first: { unlisten(): Promise<void> } | undefined;
    const late = (payload: string) => got.push(`late ${payload}`);
    await p.listen("d", (payload) => {
      got.push(`a ${payload}`);
      if (payload === "one") {
        pending.push(p.listen("d", late));
        // An earlier subscription unlistened now must not be called for this notification.
        if (first !== undefined) pending.push(first.unlisten());
      }
    });
    first = await p.listen("d", (payload) => got.push(`b ${payload}`));
    await p.query("write", "SELECT pg_notify('d', 'one')");
    await waitFor(() => got.includes("a one"), { message: "the first delivery" });
    await Promise.all(pending);
    await p.query("write", "SELECT pg_notify('d', 'two')");
    await waitFor(() => got.includes("late two"), { message: "delivery to the late subscription" });
    assert.deepEqual(got, ["a one", "a two", "late two"]);
  });
});

describe("pool.listen with a long-lived signal", () => {
  // unlisten() took the subscription's abort handler off its signal, close() did not: a signal
  // that outlives the pool (an application's shutdown signal) kept every subscription's handler,
  // and through it the listener, its topology and the whole closed pool, reachable for good.
  it("close() takes the subscriptions' abort handlers off the signal: the closed pool is collectable", async () => {
    const shutdown = new AbortController();
    const collected: string[] = [];
    const registry = new FinalizationRegistry((name: string) => collected.push(name));
    const run = async () => {
      const p = pool("a28s");
      registry.register(p, "pool");
      await p.listen("s", () => {}, { signal: shutdown.signal });
      await p.close();
    };
    await run();
    await waitFor(() => {
      collectGarbage();
      return collected.length === 1;
    }, { timeoutMs: 30_000, message: "the closed pool collected" });
    assert.equal(shutdown.signal.aborted, false);
  });
});

type Leak = PoolEventDetailMap["leak"];

describe("leak detection under faults", () => {
  // A statement refused because the session was already known lost used to throw the lease's
  // stored error, made under the caller's frames: V8 keeps a frame's receiver (the handler) with
  // the error until its stack is formatted, and the leak watch keeps the lease, so the handler
  // was never collected, never reclaimed, and the group's permit never came back.
  it("a handler dropped after its session was lost is reclaimed once; its permit comes back", async () => {
    await using p = pool("a28l", {
      groups: { g: { connection_count: 1, autocommit: false, leak_detection_ms: 60_000 } },
    });
    const leaks: Leak[] = [];
    p.addEventListener("leak", (e) => leaks.push(e.detail));
    const forget = async () => {
      const db = p.handler("g");
      await db.query("INSERT INTO audit28_rows VALUES (1)"); // a transaction left open
      const [backend] = await terminate(
        (await poolSessions(cluster, "a28l")).filter((s) => s.applicationName === "a28l"),
      );
      assert.ok(backend !== undefined, "the checkout's backend terminated");
      await waitFor(async () => {
        const rows = await cluster.primary.query(
          "SELECT 1 FROM pg_stat_activity WHERE pid = $1",
          [backend.pid],
        );
        return rows.length === 0;
      }, { message: "the backend gone" });
      // Time for the pool to read the close: the next statement is then refused before it is
      // sent, the loss found as the caller calls (were it read later, the statement would fail
      // on the closing connection instead, and this test would not tell the defect).
      await new Promise((r) => setTimeout(r, 300));
      await assert.rejects(db.query("SELECT 1"), { name: "TransactionLostError" });
      await assert.rejects(db.query("SELECT 2"), { name: "TransactionLostError" });
    };
    await forget();
    await waitFor(() => {
      collectGarbage();
      return leaks.length >= 1;
    }, { timeoutMs: 30_000, message: "the unreachable handler reclaimed" });
    assert.equal(leaks[0].reclaimed, true);
    assert.equal(p.stats().groups.g.busy, 0, "its permit is back");
    // The group's only connection is usable again, and the lost transaction never committed.
    await p.transaction("g", async (db) => {
      await db.query("INSERT INTO audit28_rows VALUES (2)");
    });
    const rows = await cluster.primary.query("SELECT id FROM audit28_rows ORDER BY id");
    assert.deepEqual(rows.map((r) => r.id), [2]);
    assert.equal(p.stats().groups.g.busy, 0);
    assert.equal(leaks.length, 1, "reclaimed once");
  });
});
