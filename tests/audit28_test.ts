// Audit 28: pool.listen(), leak detection and pool events under real faults.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { type PgCluster, startCluster } from "./harness/cluster.ts";
import { poolSessions, terminate } from "./harness/faults.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { behind, startProxy, type TcpProxy } from "./harness/proxy.ts";
import { waitFor } from "./harness/wait.ts";
import { Pool, type PoolConfig } from "../mod.ts";

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

const listenSessions = async (app: string) =>
  (await poolSessions(cluster, app)).filter((s) => s.applicationName === `${app}/listen`);

/** Stalls every client's bytes from its `LISTEN "channel"` on; `hit` turns true at the first. */
function stallListen(proxy: TcpProxy, channel: string): { hit: boolean } {
  const cut = { hit: false };
  const needle = `LISTEN ${JSON.stringify(channel)}`;
  proxy.cutClientChunk = (chunk) => {
    if (!new TextDecoder().decode(chunk).includes(needle)) return chunk.length;
    cut.hit = true;
    return 0;
  };
  return cut;
}

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
      // close_timeout_ms, plus the pool's bounded wait for a socket it cut to close.
      assert.ok(ms < 1_500, `close() took ${ms} ms on a silent path`);
    } finally {
      proxy.mode = "pass";
      await proxy.close();
    }
    await waitFor(async () => (await listenSessions("a28c")).length === 0, {
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
      await terminate(await listenSessions("a28u"));
      await waitFor(() => cut.hit, { message: "the re-subscription's LISTEN in flight" });
      assert.deepEqual(events, ["lost"]);
      const started = performance.now();
      await sub.unlisten();
      const ms = Math.round(performance.now() - started);
      assert.ok(ms < 3_000, `unlisten() took ${ms} ms`);
      proxy.cutClientChunk = undefined;
      proxy.releaseClients();
      await waitFor(async () => (await listenSessions("a28u")).length === 0, {
        message: "no LISTEN session after the last unlisten()",
      });
      // Past the longest retry pause: a retry would have opened a session by now.
      await new Promise((r) => setTimeout(r, 2_500));
      assert.equal((await listenSessions("a28u")).length, 0, "a retry reopened a session");
      assert.deepEqual(events, ["lost"]);
      // A new subscription later is a first one again: it works, and delivers.
      const got: string[] = [];
      await p.listen("u2", (payload) => got.push(payload));
      await p.query("write", "SELECT pg_notify('u2', 'x')");
      await waitFor(() => got.includes("x"), { message: "delivery to the new subscription" });
      assert.equal((await listenSessions("a28u")).length, 1);
    } finally {
      proxy.cutClientChunk = undefined;
      proxy.releaseClients();
      await proxy.close();
    }
  });
});
