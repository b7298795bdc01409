// Defects found by audit 27 (close() while sessions are still connecting), each proven against a
// real server.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { type PgCluster, startCluster } from "./harness/cluster.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { startProxy } from "./harness/proxy.ts";
import { Pool } from "../mod.ts";

await setTestTimeout(120_000);

let cluster: PgCluster;

before(async () => {
  cluster = await startCluster({ replicas: 0, ssl: true });
}, { timeout: 120_000 });

after(async () => {
  await cluster?.close();
}, { timeout: 60_000 });

describe("close() while a session connects to a host gone silent", () => {
  for (const [ssl, when] of [["disable", "tcp"], ["require", "tcp"], ["require", "tls"]] as const) {
    it(`returns within close_timeout_ms (ssl ${ssl}, silent from the ${when} start)`, async () => {
      const proxy = await startProxy(cluster.primary);
      try {
        // tls: the server answers the SSLRequest, then never sees the TLS ClientHello.
        if (when === "tls") proxy.cutClientChunk = (chunk) => chunk[0] === 0x16 ? 0 : chunk.length;
        else proxy.mode = "blackhole";
        const p = new Pool({
          db: [{
            ...cluster.endpoints()[0],
            host: proxy.host,
            port: proxy.port,
            connect_timeout: 8,
            ssl,
          }],
          groups: { g: { connection_count: 2 } },
          application_name: `audit27-${ssl}-${when}`,
          health_check_interval_ms: 0,
          close_timeout_ms: 300,
        });
        const pending = p.query("g", "SELECT 1").then(() => "answered", (e: Error) => e.name);
        await new Promise((resolve) => setTimeout(resolve, 300));
        const started = performance.now();
        await p.close();
        const ms = performance.now() - started;
        assert.ok(ms < 1500, `close() took ${Math.round(ms)} ms`);
        const outcome = await pending;
        assert.notEqual(outcome, "answered");
      } finally {
        proxy.mode = "pass";
        proxy.cutClientChunk = undefined;
        proxy.releaseClients();
        await proxy.close();
      }
    });
  }
});
