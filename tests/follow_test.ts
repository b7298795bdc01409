// What an orchestrated failover (Patroni) does to a pool, reproduced with the plain harness: a
// replica that returns must get its share of the reads back, and a demoted leader that keeps
// its port open without answering must not hold up writes to the new primary. Both at the
// pool's default settings.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { type PgCluster, startCluster } from "./harness/cluster.ts";
import { poolSessions, waitStreaming } from "./harness/faults.ts";
import { startProxy } from "./harness/proxy.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { sleep, waitFor } from "./harness/wait.ts";
import { Pool, type PoolEvent } from "../mod.ts";

await setTestTimeout(180_000);

let cluster: PgCluster;

before(async () => {
  cluster = await startCluster({ replicas: 2 });
  await cluster.primary.query("CREATE TABLE follow (id int PRIMARY KEY)");
  await cluster.waitForReplication();
}, { timeout: 180_000 });

after(async () => {
  await cluster?.close();
}, { timeout: 60_000 });

describe("following the servers", () => {
  it("a replica that returns gets its fair share of connections and reads within seconds", async () => {
    const [stays, returns] = cluster.replicas;
    await using pool = new Pool({
      db: cluster.endpoints(),
      groups: { read: { connection_count: 4, role: "replica" } },
      application_name: "follow1",
    });
    const reads: { port: number; at: number }[] = [];
    let running = true;
    const reader = async () => {
      while (running) {
        try {
          const [{ port }] = await pool.query("read", "SELECT inet_server_port() AS port");
          reads.push({ port, at: performance.now() });
        } catch {
          // The stop below fails a read or two; only where reads go afterwards matters.
        }
        await sleep(2);
      }
    };
    const readers = Array.from({ length: 4 }, reader);
    try {
      await waitFor(() => reads.some((r) => r.port === returns.port), {
        message: "reads on both replicas at first",
      });
      await returns.stop("fast");
      await waitFor(() => pool.stats().endpoints[2].state === "down", {
        message: "the stopped replica seen down",
      });
      // Every connection of the group now lives on the surviving replica.
      await waitFor(
        async () =>
          (await poolSessions(cluster, "follow1")).filter((s) =>
            s.server === stays && s.applicationName === "follow1"
          ).length === 4,
        { message: "all four connections on the surviving replica" },
      );

      await returns.start();
      await waitStreaming(cluster.primary, [returns]);
      const streamingAt = performance.now();
      await waitFor(() => reads.some((r) => r.port === returns.port && r.at > streamingAt), {
        timeoutMs: 10_000,
        message: "reads reach the returned replica within 10 s of it streaming",
      });
      const firstRead = reads.find((r) => r.port === returns.port && r.at > streamingAt)!;
      // Fair share: two of the four connections each, without restarting anything.
      let spread = "";
      await waitFor(async () => {
        const sessions = (await poolSessions(cluster, "follow1")).filter((s) =>
          s.applicationName === "follow1"
        );
        const on = (server: typeof stays) => sessions.filter((s) => s.server === server).length;
        spread = `${on(stays)} + ${on(returns)}`;
        return on(returns) === 2 && on(stays) === 2;
      }, { timeoutMs: 10_000, message: "two connections on each replica" }).catch((err) => {
        throw new Error(`${err.message} (now ${spread})`, { cause: err });
      });
      console.log(
        `rejoin: first read on the returned replica ${
          Math.round(firstRead.at - streamingAt)
        } ms after it streamed; fair share after ${Math.round(performance.now() - streamingAt)} ms`,
      );
    } finally {
      running = false;
      await Promise.all(readers);
    }
  });

  it("writes reach a new primary within 1 s while the old one keeps its port open without answering", async () => {
    const [promoted, other] = cluster.replicas;
    // The old leader as a Patroni switchover leaves it: sessions ended, the listening socket
    // still accepting connections that are never answered.
    const proxy = await startProxy(cluster.primary);
    try {
      await using pool = new Pool({
        db: [
          { ...cluster.endpoints()[2] },
          { ...cluster.endpoints()[0], host: proxy.host, port: proxy.port },
          { ...cluster.endpoints()[1] },
        ],
        groups: { write: { connection_count: 4, role: "primary" } },
        application_name: "follow2",
      });
      const downs: string[] = [];
      pool.addEventListener("endpointdown", (e) => {
        downs.push(String((e as PoolEvent).detail.endpoint?.port));
      });
      const acked: { id: number; port: number; at: number }[] = [];
      let failed = 0;
      let next = 0;
      let running = true;
      const writer = async () => {
        while (running) {
          const id = next++;
          try {
            const [{ port }] = await pool.query(
              "write",
              "INSERT INTO follow (id) VALUES ($1) RETURNING inet_server_port() AS port",
              [id],
            );
            acked.push({ id, port, at: performance.now() });
          } catch {
            failed++;
            await sleep(5);
          }
        }
      };
      const writers = Array.from({ length: 4 }, writer);
      try {
        await waitFor(() => acked.length >= 100, { message: "writes before the switchover" });
        proxy.mode = "blackhole";
        proxy.dropAll();
        await cluster.primary.stop("fast");
        await promoted.promote();
        const visibleAt = performance.now();
        await waitFor(() => acked.some((w) => w.port === promoted.port), {
          timeoutMs: 15_000,
          message: "a write on the new primary",
        });
        const first = acked.find((w) => w.port === promoted.port)!;
        const ms = Math.round(first.at - visibleAt);
        console.log(
          `hung old leader: first write ${ms} ms after the promotion was visible (${failed} failed writes)`,
        );
        assert.ok(ms < 1000, `first write on the new primary ${ms} ms after the promotion`);
        running = false;
        await Promise.all(writers);
        const rows = await promoted.query("SELECT id FROM follow");
        const present = new Set(rows.map((r) => r.id as number));
        const missing = acked.filter((w) => !present.has(w.id)).map((w) => w.id);
        assert.deepEqual(missing, [], "every acknowledged write is on the new primary");
        assert.ok(!acked.some((w) => w.port === other.port), "no write acknowledged by a replica");
      } finally {
        running = false;
        await Promise.all(writers);
      }
    } finally {
      await proxy.close();
    }
  });
});
