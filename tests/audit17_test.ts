// Defects found by audit 17 (Bun driver under faults, routing faults, config errors), each proven
// against real servers where a server is involved.
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { type PgCluster, startCluster } from "./harness/cluster.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { countPoolSessions, pauseReplay, poolSessions, terminate } from "./harness/faults.ts";
import { startProxy } from "./harness/proxy.ts";
import { waitFor } from "./harness/wait.ts";
import { ConfigError, Pool } from "../mod.ts";

await setTestTimeout(180_000);

// Started by the first test that needs servers (config tests run without any).
let cluster: PgCluster;
let starting: Promise<PgCluster> | undefined;
const servers = () => starting ??= startCluster({ replicas: 1 }).then((c) => cluster = c);

after(async () => {
  await (await starting)?.close();
}, { timeout: 60_000 });

const SECRET = "s3cr3t-audit17";

/** The ConfigError `new Pool(config)` throws; never one that shows the password. */
function configError(config: unknown): ConfigError {
  try {
    new Pool(config as ConstructorParameters<typeof Pool>[0]);
  } catch (err) {
    assert.ok(err instanceof ConfigError, `a ConfigError, got ${err}`);
    assert.ok(!err.message.includes(SECRET), `no password in ${err.message}`);
    return err;
  }
  assert.fail("the config was accepted");
}

const groups = { g: { connection_count: 1 } };

describe("config: URL parameters are read as written, or refused", () => {
  it("?prepare= takes only true or false (0 and no used to mean prepare)", () => {
    for (const value of ["0", "no", "off", "False", ""]) {
      const err = configError({
        db: `postgres://app:${SECRET}@db.example/app?prepare=${value}`,
        groups,
      });
      assert.match(err.message, /prepare/);
      assert.ok(err.message.includes(JSON.stringify(value)), err.message);
    }
  });
  it("a number parameter that is not a decimal number is refused with its text", () => {
    // An empty query_timeout used to become 0 (no statement timeout at all), 0x10 became 16,
    // and 5s was reported as NaN.
    for (
      const [key, value] of [
        ["query_timeout", ""],
        ["query_timeout", "5s"],
        ["connect_timeout", "abc"],
        ["session_tmp_buffer", "0x10"],
        ["connect_timeout", " 3"],
      ]
    ) {
      const err = configError({
        db: `postgres://app:${SECRET}@db.example/app?${key}=${encodeURIComponent(value)}`,
        groups,
      });
      assert.match(err.message, new RegExp(key));
      assert.ok(err.message.includes(JSON.stringify(value)), err.message);
    }
  });
});

describe("config: limits that are off when left out", () => {
  it("refuse 0, which retired every connection at once or reported every checkout as a leak", () => {
    for (const key of ["max_lifetime_ms", "idle_timeout_ms", "leak_detection_ms"]) {
      const err = configError({
        db: { host: "db.example", name: "app", user: "app", pass: SECRET },
        groups: { g: { connection_count: 1, [key]: 0 } },
      });
      assert.match(err.message, new RegExp(`groups\\.g\\.${key}`));
      assert.match(err.message, /leave it out/);
      assert.match(err.message, /\(got 0\)/);
    }
  });
});

describe("bad input outside the config never shows a password", () => {
  const config = {
    db: `postgres://app:${SECRET}@db.example/app`,
    groups: { g: { connection_count: 1 } },
    health_check_interval_ms: 0,
  };
  it("a group name that is not a string: a TypeError naming its type, never its contents", async () => {
    await using p = new Pool(config);
    const asGroup = config as unknown as string;
    const check = (err: unknown) => {
      assert.ok(err instanceof TypeError, `a TypeError, got ${err}`);
      assert.ok(!err.message.includes(SECRET), err.message);
      assert.match(err.message, /group name must be a string \(got an object\)/);
      return true;
    };
    assert.throws(() => p.handler(asGroup), check);
    await assert.rejects(p.query(asGroup, "SELECT 1"), check);
    await assert.rejects(p.acquire(asGroup), check);
    await assert.rejects(p.transaction(asGroup, async () => {}), check);
    // A BigInt used to fail with JSON.stringify's own error.
    await assert.rejects(
      p.query(10n as unknown as string, "SELECT 1"),
      /group name must be a string \(got 10\)/,
    );
  });
  it("statement text or parameters that are not what they should be: named by type and keys", async () => {
    await using p = new Pool(config);
    const check = (what: RegExp) => (err: unknown) => {
      assert.ok(err instanceof TypeError, `a TypeError, got ${err}`);
      assert.ok(!err.message.includes(SECRET), err.message);
      assert.match(err.message, what);
      return true;
    };
    await assert.rejects(
      p.query("g", config as unknown as string),
      check(/text must be a string \(got an object with keys db, groups/),
    );
    await assert.rejects(
      p.query("g", "SELECT $1", { pass: SECRET } as unknown as unknown[]),
      check(/parameters must be an array \(got an object with keys pass\)/),
    );
    const db = p.handler("g");
    await assert.rejects(db.query(config as unknown as string), check(/text must be a string/));
    db.release();
  });
  it("a channel that is not a string: a TypeError naming its type, never its contents", async () => {
    await using p = new Pool(config);
    await assert.rejects(
      p.listen({ url: config.db } as unknown as string, () => {}),
      (err: Error) => {
        assert.ok(err instanceof TypeError);
        assert.ok(!err.message.includes(SECRET), err.message);
        assert.match(err.message, /got an object/);
        return true;
      },
    );
    await assert.rejects(p.listen(10n as unknown as string, () => {}), /Channel .*got 10\)/);
  });
});

describe("config: ssl_root_cert", () => {
  const endpoint = { host: "db.example", name: "app", user: "app", pass: SECRET };
  const pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
  it("is refused with a mode that would not use it (libpq verifies with it under require)", () => {
    for (const ssl of ["require", "prefer", "disable", true]) {
      const err = configError({ db: { ...endpoint, ssl, ssl_root_cert: pem }, groups });
      assert.match(err.message, /ssl_root_cert/);
      assert.match(err.message, /verify-full/);
    }
  });
  it("must be PEM text, not a file name (libpq's sslrootcert is a path)", () => {
    const err = configError({
      db: { ...endpoint, ssl: "verify-full", ssl_root_cert: "/etc/ssl/ca.pem" },
      groups,
    });
    assert.match(err.message, /ssl_root_cert/);
    assert.match(err.message, /PEM/);
    assert.ok(err.message.includes('"/etc/ssl/ca.pem"'), err.message);
  });
  it("PEM text with verify-full is accepted", async () => {
    await using _p = new Pool({
      db: { ...endpoint, ssl: "verify-full", ssl_root_cert: pem },
      groups,
    });
  });
});

describe("faults on either driver", () => {
  it("a statement that fails in a pipeline of one-shots fails alone", async () => {
    await servers();
    await using p = new Pool({
      db: cluster.endpoints().slice(0, 1),
      groups: { g: { connection_count: 1 } },
      application_name: "audit17-pipeline-error",
      health_check_interval_ms: 0,
    });
    await p.query("g", "SELECT 1");
    const results = await Promise.allSettled(
      Array.from(
        { length: 12 },
        (_, i) => p.query<{ v: number }>("g", "SELECT 10 / $1::int AS v", [i === 5 ? 0 : 1]),
      ),
    );
    results.forEach((r, i) => {
      if (i === 5) {
        assert.equal(r.status, "rejected");
        assert.equal((r as PromiseRejectedResult).reason.code, "22012");
      } else {
        assert.equal(
          r.status,
          "fulfilled",
          `statement ${i}: ${(r as PromiseRejectedResult).reason}`,
        );
        assert.equal((r as PromiseFulfilledResult<{ v: number }[]>).value[0].v, 10);
      }
    });
  });
  it("a query_timeout cancels its statement alone; the pipeline behind it runs", async () => {
    await servers();
    await using p = new Pool({
      db: cluster.endpoints().slice(0, 1).map((e) => ({ ...e, query_timeout: 300 })),
      groups: { g: { connection_count: 1 } },
      application_name: "audit17-query-timeout",
      health_check_interval_ms: 0,
    });
    await p.query("g", "SELECT 1");
    const slow = p.query("g", "SELECT pg_sleep($1::float8)", [3]);
    const behind = Array.from(
      { length: 5 },
      (_, i) => p.query<{ v: number }>("g", "SELECT $1::int AS v", [i]),
    );
    await assert.rejects(slow, (err: Error & { code?: string }) => err.code === "57014");
    assert.deepEqual((await Promise.all(behind)).map((r) => r[0].v), [0, 1, 2, 3, 4]);
    assert.equal((await p.query<{ v: number }>("g", "SELECT 7 AS v"))[0].v, 7);
  });
});

describe("a backend killed under a pipeline of one-shots", () => {
  for (const how of ["terminated", "server stopped"] as const) {
    it(`${how}: each write is in the table at most once, and as its outcome says`, async () => {
      await servers();
      const app = `audit17-kill-${how.replace(" ", "-")}`;
      await cluster.primary.query("CREATE TABLE IF NOT EXISTS a17_kill (v int, how text)");
      await using p = new Pool({
        db: cluster.endpoints().slice(0, 1),
        groups: { g: { connection_count: 1 } },
        application_name: app,
        health_check_interval_ms: 100,
      });
      await p.query("g", "SELECT 1");
      const first = p.query("g", "INSERT INTO a17_kill SELECT $1, $2 FROM pg_sleep(2)", [0, how]);
      const rest = Array.from(
        { length: 6 },
        (_, i) => p.query("g", "INSERT INTO a17_kill VALUES ($1, $2)", [i + 1, how]),
      );
      // Settled as they come: a rejection must not wait for a handler.
      const settled = Promise.allSettled([first, ...rest]);
      await waitFor(
        async () =>
          (await poolSessions(cluster, app)).some((s) =>
            s.state === "active" && s.query.includes("pg_sleep")
          ),
        { message: "the first INSERT running" },
      );
      if (how === "terminated") {
        await terminate(
          (await poolSessions(cluster, app)).filter((s) => s.query.includes("pg_sleep")),
        );
      } else {
        await cluster.primary.stop("fast");
        await cluster.primary.start();
      }
      const outcomes = await settled;
      const rows = await cluster.primary.query(
        "SELECT v, count(*)::int AS n FROM a17_kill WHERE how = $1 GROUP BY v",
        [how],
      );
      const count = new Map(rows.map((r) => [r.v as number, r.n as number]));
      outcomes.forEach((o, v) => {
        const n = count.get(v) ?? 0;
        assert.ok(n <= 1, `write ${v} ran ${n} times`);
        if (o.status === "fulfilled") {
          assert.equal(n, 1, `write ${v} acknowledged, not in the table`);
        } else {
          const err = o.reason as Error & { outcome?: string };
          // Moved off the dying session, a write that never ran may find no server to take it.
          if (err.name === "NoEndpointAvailableError") assert.equal(n, 0, `write ${v}: ${err}`);
          else assert.equal(err.name, "SessionLostError", `write ${v}: ${err}`);
          if (err.outcome === "not-executed") assert.equal(n, 0, `write ${v} said never ran`);
        }
      });
      console.log(
        `${how}: ${
          outcomes.map((o) =>
            o.status === "fulfilled"
              ? "ok"
              : (o.reason as { outcome?: string }).outcome ?? (o.reason as Error).name
          ).join(" ")
        }`,
      );
    });
  }
});

describe("prepared statements dropped by the caller", () => {
  it("a commit after DEALLOCATE ALL in the transaction commits, and is acknowledged only if it did", async () => {
    await servers();
    await cluster.primary.query("CREATE TABLE IF NOT EXISTS a17_dealloc (v int)");
    await using p = new Pool({
      db: cluster.endpoints().slice(0, 1),
      groups: { g: { connection_count: 1, autocommit: false } },
      application_name: "audit17-dealloc",
      health_check_interval_ms: 0,
    });
    for (const drop of ["DEALLOCATE ALL", "DEALLOCATE PREPARE ALL"]) {
      // The pool's own BEGIN/COMMIT are prepared once the session has used them.
      {
        await using db = p.handler("g");
        await db.query("SELECT 1");
        await db.commit();
      }
      {
        await using db = p.handler("g");
        await db.query("SELECT 1");
        await db.commit();
        await db.query("INSERT INTO a17_dealloc VALUES ($1)", [1]);
        await db.query(drop);
        let committed: boolean;
        try {
          await db.commit();
          committed = true;
        } catch {
          committed = false;
        }
        const [{ n }] = await cluster.primary.query("SELECT count(*)::int AS n FROM a17_dealloc");
        assert.equal(
          n === 1,
          committed,
          `commit ${committed ? "acknowledged" : "failed"}, rows ${n}`,
        );
        // The pool's own prepared COMMIT went with the caller's: sent prepared, its failed Bind
        // aborted the very transaction it was to commit (answered ROLLBACK).
        assert.ok(committed, `${drop} made the pool's COMMIT roll the transaction back`);
        await cluster.primary.query("DELETE FROM a17_dealloc");
      }
    }
  });
});

describe("silent hosts", () => {
  it("close() on a silent host ends busy and idle connections within close_timeout_ms", async () => {
    await servers();
    const app = "audit17-close-silent";
    const proxy = await startProxy(cluster.primary);
    try {
      const p = new Pool({
        db: [{ ...cluster.endpoints()[0], host: proxy.host, port: proxy.port, connect_timeout: 2 }],
        groups: { g: { connection_count: 3 } },
        application_name: app,
        health_check_interval_ms: 0,
        close_timeout_ms: 300,
      });
      await Promise.all([1, 2, 3].map(() => p.query("g", "SELECT pg_sleep(0.05)")));
      const busy = p.query("g", "SELECT pg_sleep(2)").then(() => "answered", (e: Error) => e.name);
      const held = p.handler("g");
      const inTx = held.query("SELECT 1").then(() => "answered", (e: Error) => e.name);
      await inTx;
      proxy.mode = "blackhole";
      const started = performance.now();
      await p.close();
      const ms = performance.now() - started;
      assert.ok(ms < 2000, `close() took ${Math.round(ms)} ms`);
      assert.equal(await busy, "SessionLostError");
      held.release();
      proxy.mode = "pass";
      await waitFor(async () => (await countPoolSessions(cluster, app)) === 0, {
        timeoutMs: 10_000,
        message: "no session left on the server",
      });
    } finally {
      proxy.mode = "pass";
      await proxy.close();
    }
  });
});

describe("TLS modes against a server without TLS", () => {
  it('"prefer" connects without TLS; "require" fails fast with the refusal, nothing hangs', async () => {
    await servers();
    {
      await using p = new Pool({
        db: [{ ...cluster.endpoints()[0], ssl: "prefer" }],
        groups: { g: { connection_count: 1 } },
        health_check_interval_ms: 0,
      });
      const [{ ssl }] = await p.query<{ ssl: boolean }>(
        "g",
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
      );
      assert.equal(ssl, false);
    }
    {
      await using p = new Pool({
        db: [{ ...cluster.endpoints()[0], ssl: "require", pass: SECRET, connect_timeout: 5 }],
        groups: { g: { connection_count: 1, acquire_timeout_ms: 8000 } },
        health_check_interval_ms: 0,
      });
      const started = performance.now();
      const err = await p.query("g", "SELECT 1").then(
        () => assert.fail("connected"),
        (e: Error) => e,
      );
      const ms = performance.now() - started;
      console.log(
        `require against a server without TLS: ${err.name} ${
          (err as Error & { code?: string }).code
        } ${err.message} (cause: ${(err.cause as Error)?.message}) after ${Math.round(ms)} ms`,
      );
      assert.ok(ms < 3000, `${Math.round(ms)} ms`);
      assert.ok(!String(err.message).includes(SECRET));
    }
  });
});

describe("routing faults", () => {
  it("prefer-replica falls back to the primary while the replica is down, and comes back to it", async () => {
    await servers();
    const [replica] = cluster.replicas;
    await using p = new Pool({
      db: cluster.endpoints(),
      groups: {
        r: { connection_count: 2, role: "prefer-replica" },
        w: { connection_count: 1, role: "primary" },
      },
      application_name: "audit17-prefer",
      health_check_interval_ms: 100,
      retry_backoff_max_ms: 300,
    });
    const port = async () =>
      (await p.query<{ port: number }>("r", "SELECT inet_server_port() AS port"))[0].port;
    await waitFor(async () => (await port()) === replica.port, { message: "reads on the replica" });
    await replica.stop("fast");
    try {
      // Every read goes on, on the primary.
      for (let i = 0; i < 20; i++) assert.equal(await port(), cluster.primary.port);
      await p.query("w", "CREATE TABLE IF NOT EXISTS a17_prefer (v int)");
      await p.query("w", "INSERT INTO a17_prefer VALUES (1)");
      const token = p.token;
      assert.ok(token !== undefined);
      {
        await using db = p.handler("r", { after: token });
        const rows = await db.query<{ n: number }>("SELECT count(*)::int AS n FROM a17_prefer");
        assert.equal(rows[0].n, 1);
      }
    } finally {
      await replica.start();
    }
    await waitFor(async () => (await port()) === replica.port, {
      timeoutMs: 10_000,
      message: "reads back on the replica once it returned",
    });
    const ports = [];
    for (let i = 0; i < 10; i++) ports.push(await port());
    assert.deepEqual(ports, ports.map(() => replica.port), "every read on the replica again");
  });
});

describe("routing faults: promotion", () => {
  it("a read-your-writes checkout waiting on a paused replica that is promoted reads the write", async () => {
    await servers();
    const [replica] = cluster.replicas;
    await cluster.primary.query("CREATE TABLE IF NOT EXISTS a17_promote (v int)");
    await cluster.waitForReplication();
    await using p = new Pool({
      db: cluster.endpoints(),
      groups: {
        r: { connection_count: 2, role: "prefer-replica", read_your_writes_timeout_ms: 8000 },
        w: { connection_count: 1, role: "primary" },
      },
      application_name: "audit17-promote",
      health_check_interval_ms: 100,
    });
    await p.query("r", "SELECT 1");
    await pauseReplay(replica);
    await p.query("w", "INSERT INTO a17_promote VALUES (42)");
    const token = p.token;
    assert.ok(token !== undefined);
    const read = (async () => {
      await using db = p.handler("r", { after: token });
      const rows = await db.query<{ n: number; port: number }>(
        "SELECT count(*)::int AS n, inet_server_port() AS port FROM a17_promote WHERE v = 42",
      );
      return rows[0];
    })();
    await new Promise((resolve) => setTimeout(resolve, 500));
    await replica.promote();
    const got = await read;
    console.log(
      `read after promotion on port ${got.port} (replica ${replica.port}): ${got.n} row(s)`,
    );
    assert.equal(got.n, 1, "the write is read back");
  });
});
