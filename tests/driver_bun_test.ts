// The Bun driver (src/driver/bun.ts): one server session on Bun's native SQL client, held to the
// postgres.js driver's contract against a real server and real faults. Bun only: under any
// other runtime this file registers one skipped test.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import process from "node:process";
import { inspect } from "node:util";
import { type PgCluster, startCluster } from "./harness/cluster.ts";
import { countPoolSessions, poolSessions, terminate } from "./harness/faults.ts";
import { startProxy } from "./harness/proxy.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { waitFor } from "./harness/wait.ts";
import { BunSession, hasBunSql } from "../src/driver/bun.ts";
import {
  SessionEndedError,
  type SessionHooks,
  type SessionOptions,
} from "../src/driver/postgres.ts";
import type { Rows } from "../src/rows.ts";

await setTestTimeout(180_000);

if (!hasBunSql()) {
  it("BunSession (Bun's native SQL client)", {
    skip: "runs only under Bun: the driver wraps Bun.SQL, which no other runtime has",
  }, () => {});
} else {
  suite();
}

function suite(): void {
  let cluster: PgCluster;
  const opened: BunSession[] = [];

  before(async () => {
    cluster = await startCluster({ replicas: 0 });
    await cluster.primary.query("CREATE TABLE hits (v text NOT NULL, pid int)");
  }, { timeout: 120_000 });

  after(async () => {
    await Promise.all(opened.map((s) => s.end(0)));
    await cluster?.close();
  }, { timeout: 60_000 });

  /** A session to the primary (or wherever `extra` says), remembered for cleanup. */
  function open(
    app: string,
    extra: Partial<SessionOptions> = {},
    hooks: SessionHooks = {},
  ): BunSession {
    const p = cluster.primary;
    const session = new BunSession({
      host: p.host,
      port: p.port,
      database: cluster.database,
      user: cluster.user,
      password: () => cluster.password,
      ssl: false,
      connectTimeoutS: 5,
      prepare: true,
      types: "fetch",
      parameters: { application_name: app },
      ...extra,
    }, hooks);
    opened.push(session);
    return session;
  }

  const sessions = (app: string) => countPoolSessions(cluster, app);
  const hits = async (v: string): Promise<number> =>
    (await cluster.primary.query("SELECT count(*)::int AS n FROM hits WHERE v = $1", [v]))[0].n;
  const ms = (since: number) => Math.round(performance.now() - since);

  describe("BunSession", () => {
    it("takes every option from its caller and nothing from the environment", async () => {
      const saved = { ...process.env };
      Object.assign(process.env, {
        PGHOST: "203.0.113.1",
        PGPORT: "1",
        PGUSER: "nope",
        PGUSERNAME: "nope",
        PGDATABASE: "nope",
        PGPASSWORD: cluster.password,
        PGAPPNAME: "from-env",
        PGOPTIONS: "-c work_mem=71kB",
        PGSSLMODE: "require",
        PGCHANNELBINDING: "require",
        PGCONNECT_TIMEOUT: "1",
        DATABASE_URL: "postgres://x:y@203.0.113.1:1/z?sslmode=require&work_mem=72kB",
        TLS_DATABASE_URL: "postgres://x:y@203.0.113.1:1/z?work_mem=73kB",
        POSTGRES_URL: "postgres://x:y@203.0.113.1:1/z?work_mem=74kB",
        PGURL: "postgres://x:y@203.0.113.1:1/z?work_mem=75kB",
      });
      const proxy = await startProxy(cluster.primary, "::1");
      try {
        let parameter: [string, string] | undefined;
        const s = open("bun-env", {
          parameters: { application_name: "bun-env", statement_timeout: 4321 },
        }, {
          onParameter: (key, value) => parameter = [key, value],
        });
        const [row] = await s.query(
          `SELECT current_setting('application_name') AS app, current_setting('statement_timeout') AS st,
             current_setting('work_mem') AS wm, current_user AS u, current_database() AS d,
             inet_server_port() AS port, (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()) AS ssl`,
          undefined,
          { prepare: true },
        );
        assert.deepEqual(row, {
          app: "bun-env",
          st: "4321ms",
          wm: "4MB",
          u: cluster.user,
          d: cluster.database,
          port: cluster.primary.port,
          ssl: false,
        });
        assert.ok(s.established);
        assert.deepEqual(parameter, ["application_name", "bun-env"], "told once it is established");
        await s.end(0);

        // An empty password is sent as empty, never replaced by PGPASSWORD.
        const empty = open("bun-env-empty", { password: () => "" });
        await assert.rejects(empty.query("SELECT 1", undefined, { prepare: false }), (err) => {
          assert.equal((err as { code?: string }).code, "28P01", inspect(err));
          assert.ok(empty.isRefusal(err));
          assert.equal(empty.outcomeOf(err, "SELECT 1"), "not-executed");
          return true;
        });

        // An IPv6 literal host, as is.
        const v6 = open("bun-env-v6", { host: "::1", port: proxy.port });
        const [{ one }] = await v6.query("SELECT 1 AS one", undefined, { prepare: true });
        assert.equal(one, 1);
        await v6.end(0);
      } finally {
        for (const key of Object.keys(process.env)) if (!(key in saved)) delete process.env[key];
        Object.assign(process.env, saved);
        await proxy.close();
      }
    });

    it("keeps the password out of every readable property", async () => {
      const s = open("bun-secret");
      await s.query("SELECT 1", undefined, { prepare: false });
      const sql = s.sql as unknown as { options: { password?: unknown } };
      const text = [
        inspect(s, { depth: 8, showHidden: true }),
        inspect(sql, { depth: 8, showHidden: true }),
        inspect(sql.options, { depth: 8, showHidden: true }),
        JSON.stringify(sql.options),
      ].join("\n");
      assert.ok(!text.includes(cluster.password), "the password is readable");
      // Once the session is established, the callback Bun was given answers nothing either.
      assert.equal(typeof sql.options.password, "function");
      assert.throws(() => (sql.options.password as () => string)(), SessionEndedError);
      await s.end(0);
    });

    it("never reconnects after its backend is terminated", async () => {
      let passwords = 0;
      let closed = 0;
      const s = open("bun-kill", {
        password: () => {
          passwords++;
          return cluster.password;
        },
      }, { onClose: () => closed++ });
      const [{ pid }] = await s.query("SELECT pg_backend_pid() AS pid", undefined, {
        prepare: false,
      });
      assert.equal((await terminate(await poolSessions(cluster, "bun-kill"))).length, 1);
      await waitFor(() => s.dead, { message: "the session to notice its end" });
      assert.equal(closed, 1);
      // Refused unsent: nothing was written, so the statement provably never ran.
      for (const prepare of [false, true]) {
        await assert.rejects(
          s.query("INSERT INTO hits VALUES ('kill', pg_backend_pid())", undefined, { prepare }),
          (err) => {
            assert.ok(err instanceof SessionEndedError, inspect(err));
            assert.equal(
              s.outcomeOf(err, "INSERT INTO hits VALUES ('kill', pg_backend_pid())"),
              "not-executed",
            );
            assert.ok(!s.isRefusal(err));
            return true;
          },
        );
      }
      // The tagged template is closed too: Bun's client refuses, it does not reconnect.
      await assert.rejects(
        (s.sql as unknown as (s: TemplateStringsArray) => Promise<unknown>)`SELECT 1`,
      );
      await new Promise((resolve) => setTimeout(resolve, 200));
      assert.equal(await sessions("bun-kill"), 0, "a new backend appeared");
      assert.equal(passwords, 1, "a second connection was dialed");
      assert.equal(await hits("kill"), 0);
      assert.ok(typeof pid === "number");
      assert.equal(closed, 1);
    });

    it("statements in flight when the server terminates the session are unknown (Bun does not say which one ran)", async () => {
      const s = open("bun-fatal");
      await s.query("SELECT 1", undefined, { prepare: false });
      const burst = [
        s.query("INSERT INTO hits SELECT 'fatal', pg_backend_pid() FROM pg_sleep(0.5)", undefined, {
          prepare: true,
        }),
        ...Array.from(
          { length: 7 },
          (_, i) => s.query("INSERT INTO hits VALUES ($1, $2)", ["fatal", i], { prepare: true }),
        ),
      ];
      for (const q of burst) q.catch(() => {});
      await waitFor(async () =>
        (await poolSessions(cluster, "bun-fatal")).some((x) =>
          x.state === "active" && x.query.includes("pg_sleep")
        )
      );
      await terminate(await poolSessions(cluster, "bun-fatal"));
      const results = await Promise.allSettled(burst);
      for (const r of results) {
        assert.equal(r.status, "rejected");
        const err = (r as PromiseRejectedResult).reason;
        assert.equal((err as { code?: string }).code, "57P01", inspect(err));
        // One of them was running: it ran in part, and Bun hands every one the same FATAL.
        assert.equal(s.outcomeOf(err, "INSERT INTO hits VALUES ($1, $2)"), "unknown");
        assert.ok(!s.isRefusal(err));
      }
      assert.ok(s.dead);
      assert.equal(await hits("fatal"), 0);
      await new Promise((resolve) => setTimeout(resolve, 200));
      assert.equal(await sessions("bun-fatal"), 0);
    });

    it("a connection cut without a word from the server leaves what was in flight unknown", async () => {
      const proxy = await startProxy(cluster.primary);
      try {
        const s = open("bun-cut", { host: proxy.host, port: proxy.port });
        await s.query("SELECT 1", undefined, { prepare: false });
        const write = s.query("INSERT INTO hits SELECT 'cut', 1 FROM pg_sleep(0.3)", undefined, {
          prepare: false,
        });
        write.catch(() => {});
        await waitFor(async () =>
          (await poolSessions(cluster, "bun-cut")).some((x) => x.state === "active")
        );
        proxy.dropAll();
        await assert.rejects(write, (err) => {
          assert.equal((err as { code?: string }).code, "CONNECTION_CLOSED", inspect(err));
          assert.equal(
            s.outcomeOf(err, "INSERT INTO hits SELECT 'cut', 1 FROM pg_sleep(0.3)"),
            "unknown",
          );
          assert.ok(!s.isRefusal(err));
          return true;
        });
        assert.ok(s.dead);
        await assert.rejects(
          s.query("SELECT 1", undefined, { prepare: false }),
          SessionEndedError,
        );
        assert.equal(proxy.connections, 0, "no second connection through the proxy");
      } finally {
        await proxy.close();
      }
    });

    it("a statement the server rejects fails, and the session lives on", async () => {
      const s = open("bun-failed");
      await assert.rejects(s.query("SELECT 1/0", undefined, { prepare: false }), (err) => {
        const e = err as { code?: string; errno?: string; severity?: string };
        assert.equal(e.code, "22012", "the SQLSTATE, as postgres.js has it");
        assert.equal(e.errno, "22012");
        assert.equal(e.severity, "ERROR");
        assert.equal(s.outcomeOf(err, "SELECT 1/0"), "failed");
        assert.ok(!s.isRefusal(err));
        return true;
      });
      await assert.rejects(s.query("SELECT $1::int", ["x"], { prepare: true }), (err) => {
        assert.equal((err as { code?: string }).code, "22P02");
        assert.equal(s.outcomeOf(err, "SELECT $1::int"), "failed");
        return true;
      });
      // A transaction that failed: COMMIT comes back as ROLLBACK, also as a named statement.
      await s.query("BEGIN", undefined, { prepare: false });
      await assert.rejects(s.query("SELECT 1/0", undefined, { prepare: true }));
      const commit = await s.query("COMMIT", undefined, { prepare: false });
      assert.equal(commit.command, "ROLLBACK");
      assert.ok(!s.dead);
      const [{ n }] = await s.query("SELECT $1::int AS n", [7], { prepare: true });
      assert.equal(n, 7);
      await s.end(0);
    });

    it("a server that refuses the session: its own error, nothing ran, one dial only", async () => {
      // The server says no at start-up.
      const noDb = open("bun-refused", { database: "nope" });
      const statements = [
        noDb.query("SELECT 1", undefined, { prepare: false }),
        noDb.query("SELECT $1::int", [1], { prepare: true }),
      ];
      for (const q of statements) {
        await assert.rejects(q, (err) => {
          assert.equal((err as { code?: string }).code, "3D000", inspect(err));
          assert.ok(noDb.isRefusal(err));
          assert.equal(noDb.outcomeOf(err, "SELECT 1"), "not-executed");
          return true;
        });
      }
      assert.ok(noDb.dead && !noDb.established);

      // Nothing listens.
      const closedPort = open("bun-refused", { host: "127.0.0.1", port: 1 });
      await assert.rejects(closedPort.query("SELECT 1", undefined, { prepare: false }), (err) => {
        assert.equal((err as { code?: string }).code, "ECONNREFUSED", inspect(err));
        assert.ok(closedPort.isRefusal(err));
        return true;
      });

      const proxy = await startProxy(cluster.primary);
      try {
        // Accepted, then reset: Bun would retry until its connect timeout; the session fails
        // at once, after one dial.
        proxy.mode = "refuse";
        let dials = 0;
        const reset = open("bun-refused", {
          host: proxy.host,
          port: proxy.port,
          password: () => {
            dials++;
            return cluster.password;
          },
        });
        const started = performance.now();
        await assert.rejects(reset.query("SELECT 1", undefined, { prepare: false }), (err) => {
          assert.equal((err as { code?: string }).code, "CONNECTION_CLOSED", inspect(err));
          assert.ok(reset.isRefusal(err));
          assert.equal(reset.outcomeOf(err, "SELECT 1"), "not-executed");
          return true;
        });
        assert.ok(ms(started) < 2_000, `a reset start-up took ${ms(started)} ms to fail`);
        assert.equal(dials, 1);

        // A host that never answers: the session's own connect timeout.
        proxy.mode = "blackhole";
        let closed = 0;
        const hung = open("bun-refused", {
          host: proxy.host,
          port: proxy.port,
          connectTimeoutS: 1,
        }, { onClose: () => closed++ });
        const t0 = performance.now();
        await assert.rejects(hung.query("SELECT 1", undefined, { prepare: false }), (err) => {
          assert.equal((err as { code?: string }).code, "CONNECT_TIMEOUT", inspect(err));
          assert.ok(hung.isRefusal(err));
          assert.equal(hung.outcomeOf(err, "SELECT 1"), "not-executed");
          assert.ok(!String((err as Error).message).includes(cluster.password));
          return true;
        });
        assert.ok(ms(t0) >= 900 && ms(t0) < 4_000, `timed out after ${ms(t0)} ms`);
        assert.ok(hung.dead);
        assert.equal(closed, 1);
        await waitFor(() => proxy.connections === 0, { message: "the hung socket to close" });
      } finally {
        await proxy.close();
      }
    });

    it("rows as arrays of values, results with count and command, several statements in one text", async () => {
      const s = open("bun-rows");
      const objects = await s.query("SELECT 1 AS a, 'x' AS b", undefined, { prepare: true });
      assert.deepEqual([...objects], [{ a: 1, b: "x" }]);
      assert.equal(objects.count, 1);
      assert.equal(objects.command, "SELECT");
      const arrays = await s.query("SELECT 1 AS a, 2 AS a, $1::text AS c", ["x"], {
        prepare: true,
        arrays: true,
      });
      assert.deepEqual([...arrays], [[1, 2, "x"]]);
      assert.equal(arrays.command, "SELECT");
      const plain = await s.query("SELECT 3 AS a, 4 AS a", undefined, {
        prepare: true,
        arrays: true,
      });
      assert.deepEqual([...plain], [[3, 4]]);
      const inserted = await s.query("INSERT INTO hits VALUES ('rows', 1), ('rows', 2)", [], {
        prepare: true,
      });
      assert.equal(inserted.command, "INSERT");
      assert.equal(inserted.count, 2);
      // Without parameters, the simple protocol: several statements, one result each.
      const both = await s.query("SELECT 1 AS a; SELECT 2 AS b", undefined, { prepare: true });
      assert.deepEqual(both.map((r) => [...(r as unknown as Rows)]), [[{ a: 1 }], [{ b: 2 }]]);
      // Values as postgres.js gives them (int8 and numeric as strings, parsed json, dates).
      const [row] = await s.query(
        "SELECT 9007199254740993::int8 AS i8, 1.5::numeric AS num, '{\"a\":[1]}'::jsonb AS j, " +
          "'2024-01-02T03:04:05Z'::timestamptz AS t, ARRAY['x', 'y z']::text[] AS arr, NULL::int AS n",
        undefined,
        { prepare: true },
      );
      assert.deepEqual(row, {
        i8: "9007199254740993",
        num: "1.5",
        j: { a: [1] },
        t: new Date("2024-01-02T03:04:05Z"),
        arr: ["x", "y z"],
        n: null,
      });
      await s.end(0);
    });

    it("pipelines statements with parameters and the pool's own statements, in order", async () => {
      const proxy = await startProxy(cluster.primary);
      proxy.delayMs = 100; // each way: a round trip is at least 200 ms
      try {
        const s = open("bun-pipeline", { host: proxy.host, port: proxy.port });
        const one = (i: number) => s.query("SELECT $1::int AS n", [i], { prepare: true });
        const own = (text: string) => s.query(text, undefined, { prepare: false });
        // Warm up: Bun pipelines a named statement once it has been prepared.
        await one(0);
        for (const text of ["BEGIN", "COMMIT", "SELECT pg_current_wal_lsn()::text AS lsn"]) {
          await own(text);
        }
        await s.query("INSERT INTO hits VALUES ($1, $2)", ["pipe", 0], { prepare: true });

        let started = performance.now();
        const ten = await Promise.all(Array.from({ length: 10 }, (_, i) => one(i)));
        const tenMs = ms(started);
        assert.deepEqual(ten.map((r) => r[0].n), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert.ok(tenMs < 1_000, `10 statements took ${tenMs} ms: not pipelined`);

        // A recurring text without parameters is sent with `simple: false` (the pool's
        // repeated_texts.ts): the extended protocol, as Bun's own tagged templates, so it pipelines.
        const bare = () => s.query("SELECT 7 AS n", undefined, { prepare: true, simple: false });
        await bare();
        started = performance.now();
        const tenBare = await Promise.all(Array.from({ length: 10 }, bare));
        const tenBareMs = ms(started);
        assert.deepEqual(tenBare.map((r) => r[0].n), Array(10).fill(7));
        assert.ok(tenBareMs < 1_000, `10 statements took ${tenBareMs} ms: not pipelined`);

        // A transaction as the pool sends it: BEGIN, the statement, COMMIT, the WAL position.
        started = performance.now();
        const tx = await Promise.all([
          own("BEGIN"),
          s.query("INSERT INTO hits VALUES ($1, $2)", ["pipe", 1], { prepare: true }),
          own("COMMIT"),
          own("SELECT pg_current_wal_lsn()::text AS lsn"),
        ]);
        const txMs = ms(started);
        assert.deepEqual(tx.map((r) => r.command), ["BEGIN", "INSERT", "COMMIT", "SELECT"]);
        assert.ok(txMs < 600, `BEGIN, INSERT, COMMIT and the LSN took ${txMs} ms`);
        assert.equal(await hits("pipe"), 2);
        await s.end(0);
      } finally {
        await proxy.close();
      }
    });

    it("end() lets statements finish within its timeout, then cuts them; later ones are refused", async () => {
      // Never used: ends at once.
      const unused = open("bun-end");
      let started = performance.now();
      await unused.end(1000);
      assert.ok(ms(started) < 500);
      assert.ok(unused.dead);
      await assert.rejects(
        unused.query("SELECT 1", undefined, { prepare: false }),
        SessionEndedError,
      );

      // A statement shorter than the timeout finishes.
      const patient = open("bun-end");
      await patient.query("SELECT 1", undefined, { prepare: false });
      const short = patient.query("SELECT 'done' AS r FROM pg_sleep(0.2)", undefined, {
        prepare: false,
      });
      await new Promise((resolve) => setTimeout(resolve, 20));
      await patient.end(5_000);
      assert.equal((await short)[0].r, "done");

      // A longer one is cut at the timeout: its outcome is unknown.
      let closed = 0;
      const s = open("bun-end", {}, { onClose: () => closed++ });
      await s.query("SELECT 1", undefined, { prepare: false });
      const long = s.query("SELECT pg_sleep(2)", undefined, { prepare: false });
      long.catch(() => {});
      await waitFor(async () =>
        (await poolSessions(cluster, "bun-end")).some((x) => x.state === "active")
      );
      started = performance.now();
      await s.end(200);
      const took = ms(started);
      assert.ok(took >= 150 && took < 2_000, `end(200) took ${took} ms`);
      await assert.rejects(long, (err) => {
        assert.equal((err as { code?: string }).code, "CONNECTION_CLOSED", inspect(err));
        assert.equal(s.outcomeOf(err, "SELECT pg_sleep(2)"), "unknown");
        return true;
      });
      assert.equal(closed, 0, "onClose is for ends the session did not ask for");
      await assert.rejects(s.query("SELECT 1", undefined, { prepare: false }), SessionEndedError);
      await s.end(0); // again: no-op
      await waitFor(async () => (await sessions("bun-end")) === 0, {
        message: "every ended session to leave the server",
      });

      // Ended while still connecting: what waited for the start-up was never sent.
      const proxy = await startProxy(cluster.primary);
      try {
        proxy.mode = "blackhole";
        const early = open("bun-end", { host: proxy.host, port: proxy.port });
        const waiting = early.query("SELECT 1", undefined, { prepare: false });
        waiting.catch(() => {});
        await new Promise((resolve) => setTimeout(resolve, 50));
        await early.end(0);
        await assert.rejects(waiting, (err) => {
          assert.ok(err instanceof SessionEndedError, inspect(err));
          assert.equal(early.outcomeOf(err, "SELECT 1"), "not-executed");
          assert.ok(!early.isRefusal(err));
          return true;
        });
      } finally {
        await proxy.close();
      }
    });
  });
}
