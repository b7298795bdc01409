// Routing on paths where the pool learns something between taking a connection and using it:
// a role read from a session's start-up parameters, a role change seen by the validation ping of
// a one-shot, a promotion seen while a read-your-writes checkout of a primary group waits for its
// first statement, and the role of a server no session has reached yet. Each case was found by
// an audit and failed before its fix.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { type PgCluster, startCluster, testDriver } from "./harness/cluster.ts";
import { pauseReplay, resumeReplay } from "./harness/faults.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { sleep, waitFor } from "./harness/wait.ts";
import { Pool } from "../mod.ts";
import { poolHooks } from "../src/hooks.ts";

await setTestTimeout(150_000);

let cluster: PgCluster;

before(async () => {
  cluster = await startCluster({ replicas: 2 });
  await cluster.primary.query("CREATE TABLE routed (v text)");
  await cluster.waitForReplication();
}, { timeout: 120_000 });

after(async () => {
  await cluster?.close();
}, { timeout: 60_000 });

/** Records every statement's server and every role change, in order. */
function timeline(p: Pool): Array<["statement" | "rolechange", number]> {
  const log: Array<["statement" | "rolechange", number]> = [];
  p.addEventListener("rolechange", (e) => log.push(["rolechange", e.detail.endpoint.port]));
  p[poolHooks] = {
    statement: (s) => {
      log.push(["statement", s.endpoint.port]);
      return () => {};
    },
    checkout: () => {},
    checkin: () => {},
    connected: () => {},
  };
  return log;
}

describe("routing while the pool learns", () => {
  it("a replica known only from start-up parameters is not read past max_replica_lag_ms", async () => {
    // Its lag counted as 0 until a probe measured it: with probes off (the edge default) a
    // replica group read at once from a replica seconds behind.
    const [primary, replica] = cluster.endpoints();
    await pauseReplay(cluster.replicas[0]);
    try {
      await cluster.primary.query("INSERT INTO routed (v) VALUES ('lagging')");
      await sleep(1200);
      await using p = new Pool({
        db: [primary, replica],
        groups: {
          any: { connection_count: 1, endpoints: [1] },
          read: {
            connection_count: 1,
            role: "replica",
            max_replica_lag_ms: 500,
            acquire_timeout_ms: 2000,
          },
        },
        application_name: "ri-lag",
        health_check_interval_ms: 0,
      });
      // A session on the replica: its start-up says it is a standby.
      await p.query("any", "SELECT 1");
      const outcome = await p.query<{ seen: number }>(
        "read",
        "SELECT count(*)::int AS seen FROM routed WHERE v = 'lagging'",
      ).then((rows) => rows[0].seen, (err: Error) => err.name);
      assert.notEqual(outcome, 0, "a read was served by a replica past max_replica_lag_ms");
    } finally {
      await resumeReplay(cluster.replicas[0]);
      await cluster.waitForReplication();
    }
  });

  it("a read-your-writes checkout keeps its own timeout_ms while replicas lag", async () => {
    // The wait for a replica that has the token ran for read_your_writes_timeout_ms whatever
    // the checkout's own deadline: a checkout with timeout_ms 300 took 3 s.
    const endpoints = cluster.endpoints();
    const lagging = cluster.replicas[1];
    await using p = new Pool({
      db: [endpoints[0], endpoints.find((e) => e.port === lagging.port)!],
      groups: { app: { connection_count: 2, read_your_writes_timeout_ms: 3000 } },
      application_name: "ri-ryw-deadline",
    });
    await p.refresh();
    await pauseReplay(lagging);
    try {
      await p.query("app", "INSERT INTO routed (v) VALUES ('ryw')");
      const token = p.token!;
      const started = performance.now();
      await using db = await p.acquire("app", { after: token, timeout_ms: 300 });
      const waited = performance.now() - started;
      assert.ok(waited < 1500, `the checkout took ${Math.round(waited)} ms`);
      const [{ seen }] = await db.query<{ seen: number }>(
        "SELECT count(*)::int AS seen FROM routed WHERE v = 'ryw'",
      );
      assert.equal(seen, 1, "read-your-writes read without the write");
      // An abort ends the wait too.
      const abortStarted = performance.now();
      await assert.rejects(
        p.acquire("app", { after: token, signal: AbortSignal.timeout(200) }),
        { name: "TimeoutError" },
      );
      assert.ok(performance.now() - abortStarted < 1500);
    } finally {
      await resumeReplay(lagging);
      await cluster.waitForReplication();
    }
  });

  it("the first autocommit write of a fresh pool gets its read-your-writes token", async () => {
    // The role was unknown before the first session: the token query was left out.
    await using p = new Pool({
      db: [cluster.endpoints()[0]],
      groups: { app: { connection_count: 1 } },
      application_name: "ri-token",
    });
    await p.query("app", "INSERT INTO routed (v) VALUES ('first')");
    assert.notEqual(p.token, undefined, "no token after the first write");
  });

  it("a one-shot whose validation ping shows a promotion goes to another replica", async () => {
    const endpoints = cluster.endpoints();
    await using p = new Pool({
      db: endpoints,
      groups: { read: { connection_count: 1, role: "replica", endpoints: [1, 2] } },
      application_name: "ri-ping",
      validate_after_ms: 100,
      health_check_interval_ms: 600_000,
    });
    await p.refresh();
    const log = timeline(p);
    const read = () =>
      p.query<{ port: number; standby: boolean }>(
        "read",
        "SELECT inet_server_port() AS port, pg_is_in_recovery() AS standby",
      );
    const [{ port }] = await read();
    await sleep(300); // past validate_after_ms: the next one-shot pings first
    await cluster.replicas.find((r) => r.port === port)!.promote();
    const [second] = await read();
    const known = log.findIndex(([kind, at]) => kind === "rolechange" && at === port);
    // postgres.js reads the role from the ping's answer; Bun's driver does not see it there.
    if (testDriver().driver !== "bun") assert.ok(known >= 0, "the ping did not show the promotion");
    if (known >= 0) {
      const after = log.slice(known + 1).filter(([kind, at]) => kind === "statement" && at === port);
      assert.deepEqual(after, [], "a read went to a server the pool knew was promoted");
      assert.equal(second.standby, true);
    }
  });

  it("a read-your-writes checkout of a primary group follows a promotion before its first write", async () => {
    // Checkouts with `after` were pinned to their server so that a replica holding the token
    // is not swapped for one that does not; on a primary group that pinned a write to the old
    // primary, which the pool already knew had been superseded.
    let standby: (typeof cluster.replicas)[number] | undefined;
    for (const r of cluster.replicas) {
      if ((await r.query("SELECT pg_is_in_recovery() AS rec"))[0].rec) standby = r;
    }
    assert.ok(standby, "a replica still in recovery");
    const oldEp = cluster.endpoints()[0];
    const newEp = cluster.endpoints().find((e) => e.port === standby!.port)!;
    await using p = new Pool({
      db: [oldEp, newEp],
      groups: { write: { connection_count: 3, role: "primary" } },
      application_name: "ri-after",
      health_check_interval_ms: 100,
    });
    await p.refresh();
    await p.query("write", "INSERT INTO routed (v) VALUES ('seed')");
    const pinned = await p.acquire("write", { after: p.token! });
    assert.equal(pinned.endpoint?.port, oldEp.port);
    await standby!.promote();
    await waitFor(async () =>
      (await p.query<{ port: number }>("write", "SELECT inet_server_port() AS port"))[0].port ===
        newEp.port, { timeoutMs: 10_000, message: "the pool to write on the promoted server" });
    const [row] = await pinned.query<{ port: number }>(
      "INSERT INTO routed (v) VALUES ('after-promotion') RETURNING inet_server_port() AS port",
    );
    pinned.release();
    assert.equal(row.port, newEp.port, "the write went to the superseded primary");
    const onOld = await cluster.primary.query(
      "SELECT count(*)::int AS n FROM routed WHERE v = 'after-promotion'",
    );
    assert.equal(onOld[0].n, 0);
  });
});
