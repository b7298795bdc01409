// Defects found by audit 18, each proven against real servers and real faults.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { type PgCluster, startCluster } from "./harness/cluster.ts";
import { behind, startProxy, type TcpProxy } from "./harness/proxy.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { waitFor } from "./harness/wait.ts";
import { AcquireTimeoutError, Pool, type PoolConfig } from "../mod.ts";

await setTestTimeout(180_000);

let cluster: PgCluster;

before(async () => {
  cluster = await startCluster({ replicas: 0 });
}, { timeout: 120_000 });

after(async () => {
  await cluster?.close();
}, { timeout: 60_000 });

function pool(app: string, extra: Partial<PoolConfig> = {}): Pool {
  return new Pool({
    db: cluster.endpoints(),
    groups: { g: { connection_count: 1 } },
    application_name: app,
    ...extra,
  });
}

/** The primary's endpoint, reached through `proxy`. */
const viaProxy = (proxy: TcpProxy) => behind(proxy, cluster.endpoints()[0]);

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * A pool whose one connection sat idle past validate_after_ms on a host that then went silent
 * (connect_timeout 3 s): `start(p)` begins a checkout with `timeout_ms: 300`, which waits on the
 * connection's ping. It must reject with AcquireTimeoutError near 300 ms, not after the ping's
 * connect_timeout; once the host answers again the permit comes back and `afterwards` works.
 */
async function timeoutDuringPing(
  app: string,
  start: (p: Pool) => Promise<unknown>,
  afterwards: (p: Pool) => Promise<void>,
): Promise<void> {
  const proxy = await startProxy(cluster.primary);
  try {
    const p = pool(app, {
      db: [{ ...viaProxy(proxy), connect_timeout: 3 }],
      validate_after_ms: 50,
    });
    await p.query("g", "SELECT 1");
    await sleep(100);
    proxy.mode = "blackhole";
    const started = performance.now();
    await assert.rejects(start(p), (e: unknown) => e instanceof AcquireTimeoutError);
    const ms = performance.now() - started;
    assert.ok(
      ms < 1_500,
      `rejected ${Math.round(ms)} ms after the checkout began (timeout_ms 300)`,
    );
    proxy.mode = "pass";
    await waitFor(() => p.stats().groups.g.busy === 0, {
      timeoutMs: 10_000,
      message: "the permit back once the ping settled",
    });
    await afterwards(p);
    await p.close();
  } finally {
    proxy.mode = "pass";
    await proxy.close();
  }
}

describe("a checkout's timeout_ms while its connection is being proven", () => {
  // acquire() resolves only with a proven connection: a connection idle past validate_after_ms
  // is pinged first. The ping waited out connect_timeout (3 s here) on a silent host, and the
  // move after it waited for routing, with the checkout's timeout_ms (300 ms) ignored for all
  // of it: a caller's deadline outlived by ten times.
  it("pool.acquire rejects with AcquireTimeoutError at its deadline", async () => {
    await timeoutDuringPing(
      "a18-ping-acquire",
      (p) => p.acquire("g", { timeout_ms: 300 }),
      async (p) => {
        await using db = await p.acquire("g", { timeout_ms: 5_000 });
        assert.equal((await db.query("SELECT 1 AS one"))[0].one, 1);
      },
    );
  });

  it("pool.transaction rejects with AcquireTimeoutError at its deadline, its callback never run", async () => {
    let ran = 0;
    await timeoutDuringPing(
      "a18-ping-tx",
      (p) =>
        p.transaction("g", async (db) => {
          await db.query("SELECT 1");
          ran++;
        }, { timeout_ms: 300 }),
      async (p) => {
        assert.equal(ran, 0);
        await p.transaction("g", async (db) => {
          assert.equal((await db.query("SELECT 1 AS one"))[0].one, 1);
        }, { timeout_ms: 5_000 });
      },
    );
  });
});
