import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { appendFileSync } from "node:fs";
import { join } from "node:path";
import { type PgCluster, startCluster } from "./harness/cluster.ts";
import { writeServerFile } from "./harness/exec.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { sleep, waitFor } from "./harness/wait.ts";
import { Pool, type PoolEvent } from "../mod.ts";

await setTestTimeout(180_000);

let cluster: PgCluster;

before(async () => {
  cluster = await startCluster({ replicas: 2 });
  await cluster.primary.query(
    "CREATE TABLE ledger (id int PRIMARY KEY, at timestamptz DEFAULT now())",
  );
  await cluster.waitForReplication();
}, { timeout: 180_000 });

after(async () => {
  await cluster?.close();
}, { timeout: 60_000 });

describe("failover", () => {
  it("follows a promotion by itself, loses no acknowledged commit, picks up the rejoined server", async () => {
    // Default health-check settings: the 1 s promise must hold without tuning.
    await using pool = new Pool({
      db: cluster.endpoints(),
      groups: {
        write: { connection_count: 4, role: "primary" },
        read: { connection_count: 4, role: "replica" },
      },
      application_name: "failover",
    });
    const roleChanges: string[] = [];
    pool.addEventListener("rolechange", (e) => {
      const d = (e as PoolEvent).detail;
      roleChanges.push(`${d.endpoint?.port}:${d.from}->${d.to}`);
    });

    const acked: number[] = [];
    const ackedAt: number[] = [];
    let failures = 0;
    let next = 0;
    let running = true;
    const writer = async () => {
      while (running) {
        const id = next++;
        try {
          await pool.query("write", "INSERT INTO ledger (id) VALUES ($1)", [id]);
          acked.push(id);
          ackedAt.push(performance.now());
        } catch {
          failures++;
          await sleep(5);
        }
      }
    };
    const writers = Array.from({ length: 4 }, writer);
    try {
      await waitFor(() => acked.length >= 200, { message: "writes before the failover" });
      const [oldPrimary, promoted] = [cluster.primary, cluster.replicas[0]];
      await oldPrimary.stop("fast");
      const beforePromotion = acked.length;
      const promoteCalledAt = performance.now();
      await promoted.promote(); // returns once pg_is_in_recovery() is false: the promotion is visible
      const visibleAt = performance.now();
      await waitFor(() => ackedAt.some((t) => t > visibleAt), {
        message: "a write acknowledged after the promotion",
      });
      const failoverMs = ackedAt.find((t) => t > visibleAt)! - visibleAt;
      const sincePromote = ackedAt.find((t) => t > promoteCalledAt)! - promoteCalledAt;
      console.log(
        `failover: first write ${Math.round(failoverMs)} ms after the promotion became visible, ` +
          `${Math.round(sincePromote)} ms after pg_ctl promote was called`,
      );
      assert.ok(failoverMs < 1000, `first write after ${Math.round(failoverMs)} ms`);
      await waitFor(() => acked.length >= beforePromotion + 200, {
        message: "writes after the failover",
      });
      running = false;
      await Promise.all(writers);

      // Every acknowledged commit is on the new primary.
      const rows = await promoted.query("SELECT id FROM ledger");
      const present = new Set(rows.map((r) => r.id as number));
      const missing = acked.filter((id) => !present.has(id));
      assert.deepEqual(missing, [], `acknowledged but missing: ${missing.length}`);
      assert.ok(failures > 0, "the test did exercise failed writes during the outage");

      const stats = pool.stats().endpoints;
      assert.equal(stats[1].role, "primary");
      assert.equal(stats[0].state, "down");
      assert.ok(roleChanges.includes(`${promoted.port}:replica->primary`), roleChanges.join(", "));
      const [{ port }] = await pool.query("write", "SELECT inet_server_port() AS port");
      assert.equal(port, promoted.port);

      // The old primary rejoins as a standby of the new one and is routed to as a replica.
      writeServerFile(join(oldPrimary.dataDir, "standby.signal"), "");
      const conninfo =
        `host=${promoted.host} port=${promoted.port} user=${cluster.user} password=${cluster.password} application_name=rejoined`;
      appendFileSync(
        join(oldPrimary.dataDir, "postgresql.auto.conf"),
        `primary_conninfo = '${conninfo}'\nrecovery_target_timeline = 'latest'\n`,
      );
      await oldPrimary.start();
      await waitFor(() => {
        const e = pool.stats().endpoints[0];
        return e.state === "up" && e.role === "replica";
      }, { message: "rejoined server seen as an up replica", timeoutMs: 20_000 });
      await waitFor(async () => {
        const [{ port }] = await pool.query("read", "SELECT inet_server_port() AS port");
        return port === oldPrimary.port;
      }, { message: "reads reach the rejoined replica" });
    } finally {
      running = false;
      await Promise.all(writers);
    }
  });
});
