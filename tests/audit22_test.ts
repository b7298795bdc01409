// Defects found by audit 22 (the Python-compatible module-wide pool: Connection.init and
// Connection.close), each proven against a real server.
import { after, before, describe, it } from "node:test";
import { type PgCluster, startCluster } from "./harness/cluster.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { waitFor } from "./harness/wait.ts";
import { Connection, Handler, type PoolConfig } from "../mod.ts";

await setTestTimeout(180_000);

let cluster: PgCluster;

before(async () => {
  cluster = await startCluster({ replicas: 0 });
}, { timeout: 120_000 });

after(async () => {
  await Connection.close();
  await cluster?.close();
}, { timeout: 60_000 });

function config(app: string): PoolConfig {
  return {
    db: cluster.endpoints(),
    groups: { default: { connection_count: 1 } },
    application_name: app,
    close_timeout_ms: 3_000,
  };
}

/**
 * Sessions of `app` are gone within `withinMs`: a pool's close ends its connections at once,
 * and the server takes a moment to drop a backend from pg_stat_activity. Far below
 * `close_timeout_ms`, so a session still held for a checkout is seen.
 */
async function gone(app: string, withinMs = 1_000): Promise<void> {
  await waitFor(async () => (await cluster.countConnections({ applicationName: app })) === 0, {
    timeoutMs: withinMs,
    message: `no session of ${app} left`,
  });
}

describe("Connection.close()", () => {
  // Connection.init() a second time closes the pool it replaces in the background (the
  // original leaked it); Connection.close() awaited only the current pool's close. So
  // `await Connection.close()` resolved while a replaced pool still had its sessions open (one
  // held by a checkout stays up to close_timeout_ms): a shutdown that exits then, or a Worker's
  // ctx.waitUntil(Connection.close()), cut them off, and the caller could not know they were
  // still there.
  it("resolves only once a pool that init() replaced has closed too", async () => {
    Connection.init(config("a22_replaced"));
    const db = new Handler("default");
    await db.query("SELECT 1");
    Connection.init(config("a22_current"));
    {
      using other = new Handler("default");
      await other.query("SELECT 1");
    }
    // The checkout on the replaced pool is never released: its close waits close_timeout_ms,
    // then ends the session.
    try {
      await Connection.close();
      await gone("a22_current");
      await gone("a22_replaced");
    } finally {
      db.release();
    }
  });

  // A second Connection.close() while the first is still under way resolved at once: the pool
  // was already unset, so it had nothing to wait for.
  it("called again while closing, resolves only once the pool has closed", async () => {
    Connection.init(config("a22_closing_twice"));
    const db = new Handler("default");
    await db.query("SELECT 1");
    const first = Connection.close();
    try {
      await Connection.close();
      await gone("a22_closing_twice");
      await first;
    } finally {
      db.release();
    }
  });
});
