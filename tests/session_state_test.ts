// Session state a checkout leaves behind: settings (`SET search_path`, `SET ROLE`,
// `set_config(..., false)`), temporary tables, session advisory locks, LISTEN, cursors held
// past their transaction, prepared statements. The next checkout of the same pooled connection
// used to inherit all of it: its statements ran on another schema (a write misrouted to the
// wrong table), under another role, or blocked on a lock nobody held any more.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { type PgCluster, startCluster } from "./harness/cluster.ts";
import { Pool } from "../mod.ts";

let cluster: PgCluster;
let pool: Pool;

before(async () => {
  cluster = await startCluster({ replicas: 1 });
  await cluster.primary.query(`CREATE SCHEMA tenant_a;
    CREATE TABLE public.items (v text); CREATE TABLE tenant_a.items (v text);
    CREATE ROLE reader NOLOGIN; GRANT USAGE ON SCHEMA tenant_a TO reader`);
  await cluster.waitForReplication();
  pool = new Pool({
    db: cluster.endpoints().map((e) => ({ ...e, query_timeout: 30_000 })),
    // One connection per group: whatever a checkout leaves on it, the next one meets.
    groups: {
      auto: { connection_count: 1 },
      tx: { connection_count: 1, autocommit: false },
      read: { connection_count: 1, role: "replica" },
    },
    application_name: "session_state_test",
  });
}, { timeout: 120_000 });

after(async () => {
  await pool?.close();
  await cluster?.close();
}, { timeout: 60_000 });

/** What a fresh checkout of `group` sees: its backend, settings and session objects. */
async function nextCheckout(group = "auto") {
  await using db = pool.handler(group);
  const [row] = await db.query(`SELECT pg_backend_pid() AS pid,
    current_setting('search_path') AS search_path, current_user AS "user",
    current_setting('statement_timeout') AS statement_timeout,
    current_setting('application_name') AS application_name,
    nullif(current_setting('app.tenant', true), '') AS tenant,
    (SELECT count(*)::int FROM pg_listening_channels()) AS listening,
    (SELECT count(*)::int FROM pg_cursors WHERE is_holdable) AS cursors,
    (SELECT count(*)::int FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS advisory,
    to_regclass('pg_temp.scratch') IS NOT NULL AS temp_table`);
  if (group === "tx") await db.commit();
  return row as {
    pid: number;
    search_path: string;
    user: string;
    statement_timeout: string;
    application_name: string;
    tenant: string | null;
    listening: number;
    cursors: number;
    advisory: number;
    temp_table: boolean;
  };
}

const fresh = {
  search_path: '"$user", public',
  application_name: "session_state_test",
  tenant: null,
  listening: 0,
  cursors: 0,
  advisory: 0,
  temp_table: false,
};

/** The last statement backend `pid` ran (the reset, if the pool sent one). */
async function lastStatement(pid: number): Promise<string> {
  const [{ query }] = await cluster.primary.query(
    `SELECT query FROM pg_stat_activity WHERE pid = ${pid}`,
  );
  return query as string;
}

/** Runs `leave` on a checkout, then checks that the next checkout meets a clean session. */
async function leavesNothing(
  leave: (db: ReturnType<Pool["handler"]>) => Promise<unknown>,
  group = "auto",
): Promise<void> {
  const before = await nextCheckout(group);
  // (A custom variable once set reads '' after RESET: that is the server's reset value.)
  // The pool's own start-up setting (query_timeout), which a reset must keep.
  assert.notEqual(before.statement_timeout, "0");
  {
    await using db = pool.handler(group);
    await leave(db);
    if (group === "tx") await db.commit();
  }
  const { pid, user, statement_timeout, ...seen } = await nextCheckout(group);
  assert.deepEqual(seen, fresh);
  assert.equal(statement_timeout, before.statement_timeout);
  assert.equal(user, before.user);
  // Reset, not reconnected: a service that sets a variable per request keeps its connections.
  assert.equal(pid, before.pid, "the same backend, reset");
}

describe("session state does not outlive its checkout", () => {
  it("SET search_path (a write of the next checkout lands in its own schema)", async () => {
    await leavesNothing((db) => db.query("SET search_path TO tenant_a"));
    await pool.query("auto", "INSERT INTO items (v) VALUES ('next')");
    const [{ n }] = await cluster.primary.query("SELECT count(*)::int AS n FROM public.items");
    assert.equal(n, 1);
  });

  it("SET statement_timeout, SET application_name and a custom variable", async () => {
    await leavesNothing(async (db) => {
      await db.query("SET statement_timeout = '1s'");
      await db.query("SET application_name = 'someone else'");
      await db.query("SET app.tenant = 'a'");
    });
  });

  it("set_config(..., false) inside a SELECT", async () => {
    await leavesNothing((db) =>
      db.query(
        "SELECT set_config('search_path', 'tenant_a', false), set_config('app.tenant', 'a', false)",
      )
    );
  });

  it("SET ROLE and SET SESSION AUTHORIZATION", async () => {
    await leavesNothing((db) => db.query("SET ROLE reader"));
    await leavesNothing((db) => db.query("SET SESSION AUTHORIZATION reader"));
  });

  it("a temporary table, a session advisory lock, LISTEN and a cursor WITH HOLD", async () => {
    await leavesNothing(async (db) => {
      await db.query("CREATE TEMP TABLE scratch (v int)");
      await db.query("SELECT pg_advisory_lock(42)");
      await db.query("LISTEN somewhere");
    });
    // The lock was given back: another session takes it at once.
    const [{ got }] = await cluster.primary.query(
      "SELECT pg_try_advisory_lock(42) AS got, pg_advisory_unlock(42)",
    );
    assert.equal(got, true);
    await leavesNothing(async (db) => {
      await db.query("BEGIN");
      await db.query("DECLARE kept CURSOR WITH HOLD FOR SELECT 1");
      await db.query("COMMIT");
    });
  });

  it("state set through db.sql, unsafe and a text of several statements", async () => {
    await leavesNothing((db) => db.sql`SET search_path TO tenant_a`);
    await leavesNothing((db) => db.sql.unsafe("SET app.tenant = 'a'"));
    await leavesNothing((db) => db.query("SELECT 1; SET search_path TO tenant_a"));
  });

  it("SET in a transaction group (committed with the transaction)", async () => {
    await leavesNothing(async (db) => {
      await db.query("SET search_path TO tenant_a");
      await db.query("SET app.tenant = 'a'");
    }, "tx");
  });

  it("on a replica (a hot standby takes the reset too)", async () => {
    await leavesNothing(async (db) => {
      await db.query("SET search_path TO tenant_a");
      await db.query("SELECT pg_advisory_lock(7)");
      await db.query("CREATE TEMP TABLE scratch (v int)").catch(() => {}); // read-only there
    }, "read");
  });

  it("pool.query: a one-shot that sets something leaves its shared connection cleaned", async () => {
    await pool.query("auto", "SET search_path TO tenant_a");
    const [{ search_path }] = await pool.query(
      "auto",
      "SELECT current_setting('search_path') AS search_path",
    );
    assert.equal(search_path, fresh.search_path);
  });

  it("pool.query: no one-shot is pipelined behind one that sets something", async () => {
    // Same tick, one connection: the INSERT and the SELECT used to join the SET's shared
    // connection before its answer came back, and ran in tenant_a (a write in the wrong table).
    const [, , [{ search_path }], , [{ tenant }]] = await Promise.all([
      pool.query("auto", "SET search_path TO tenant_a"),
      pool.query("auto", "INSERT INTO items VALUES ('behind a SET')"),
      pool.query("auto", "SELECT current_setting('search_path') AS search_path"),
      pool.query("auto", "SELECT set_config('app.tenant', 'b', false) AS tenant"),
      pool.query("auto", "SELECT nullif(current_setting('app.tenant', true), '') AS tenant"),
    ]);
    assert.equal(search_path, fresh.search_path);
    assert.equal(tenant, null);
    const misplaced = await cluster.primary.query(
      "SELECT count(*)::int AS n FROM tenant_a.items WHERE v = 'behind a SET'",
    );
    assert.equal(misplaced[0].n, 0);
    const { pid: _pid, user: _user, statement_timeout: _t, ...seen } = await nextCheckout();
    assert.deepEqual(seen, fresh);
  });

  it("a checkout that left nothing costs no reset", async () => {
    let pid: number;
    {
      await using db = pool.handler("auto");
      [{ pid }] = await db.query<{ pid: number }>("SELECT pg_backend_pid() AS pid");
      await db.query("SELECT 'nothing left' AS v");
    }
    assert.equal(await lastStatement(pid), "SELECT 'nothing left' AS v");
    {
      await using db = pool.handler("auto");
      await db.query("SET search_path TO tenant_a");
    }
    assert.match(
      await lastStatement(pid),
      /^CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL/,
    );
  });

  it("set_config(..., true) in a transaction (row-level security per request) costs no reset", async () => {
    let pid: number;
    {
      await using db = pool.handler("tx");
      [{ pid }] = await db.query<{ pid: number }>(
        "SELECT pg_backend_pid() AS pid, set_config('app.tenant', $1, true)",
        ["a"],
      );
      await db.commit();
    }
    assert.doesNotMatch(await lastStatement(pid), /^CLOSE ALL/);
    // Beside a session-wide one it is reset all the same.
    {
      await using db = pool.handler("tx");
      await db.query("SELECT set_config('app.tenant', $1, true), set_config('app.x', $1, false)", [
        "a",
      ]);
      await db.commit();
    }
    assert.match(await lastStatement(pid), /^CLOSE ALL/);
  });

  it("a statement prepared by name: the next checkout may prepare the same name", async () => {
    for (let i = 0; i < 2; i++) {
      await using db = pool.handler("auto");
      await db.query("PREPARE mine AS SELECT 1");
      await db.query("EXECUTE mine");
    }
  });
});

describe("session state: paths the detection missed", () => {
  it("a text of several statements whose first is SET LOCAL and a later one a session SET", async () => {
    // The tag is the last SET's; the text was judged by its first statement only.
    await leavesNothing((db) =>
      db.query("SET LOCAL statement_timeout = '5s'; SET search_path TO tenant_a")
    );
  });

  it("a temporary table created by schema name (pg_temp.scratch)", async () => {
    await leavesNothing((db) => db.query("CREATE TABLE pg_temp.scratch (v int)"));
  });

  it("temporary tables made by SELECT INTO, CREATE ... AS and CREATE OR REPLACE TEMP VIEW", async () => {
    await leavesNothing((db) => db.query("SELECT 1 AS v INTO TEMPORARY TABLE scratch"));
    await leavesNothing((db) => db.query("CREATE LOCAL TEMP TABLE scratch AS SELECT 1 AS v"));
    await leavesNothing((db) => db.query("CREATE OR REPLACE TEMP VIEW scratch AS SELECT 1 AS v"));
  });

  it("a session advisory lock taken by a statement that then failed (handler and pool.query)", async () => {
    // The error aborts the statement's transaction; a session-level lock outlives that (as when
    // `SELECT pg_advisory_lock(id) FROM jobs` hits statement_timeout after some rows). The
    // division is by a value known only at run time, after the lock.
    const failing = (key: number) =>
      `SELECT pg_advisory_lock(${key}), 1 / floor(random() * 0)::int AS boom`;
    await leavesNothing((db) => assert.rejects(db.query(failing(42))));
    {
      await using db = pool.handler("tx");
      await assert.rejects(db.query(failing(43)));
      await db.rollback();
    }
    assert.equal((await nextCheckout("tx")).advisory, 0);
    await assert.rejects(pool.query("auto", failing(44)));
    assert.equal((await nextCheckout()).advisory, 0);
    await assert.rejects(pool.query("auto", "SELECT pg_advisory_lock(45); SELECT 1 / 0"));
    assert.equal((await nextCheckout()).advisory, 0);
  });
});

describe("session state: no reset where nothing outlives the transaction", () => {
  it("a cursor without hold in a transaction (Kysely's stream() declares one)", async () => {
    let pid: number;
    {
      await using db = pool.handler("tx");
      [{ pid }] = await db.query<{ pid: number }>("SELECT pg_backend_pid() AS pid");
      await db.query("DECLARE pgdbpool_cursor_0 NO SCROLL CURSOR FOR SELECT 1");
      await db.query("FETCH FORWARD 10 FROM pgdbpool_cursor_0");
      await db.commit();
    }
    assert.doesNotMatch(await lastStatement(pid), /^CLOSE ALL/);
  });

  it("set_config(..., true) through a db.sql template", async () => {
    let pid: number;
    {
      await using db = pool.handler("tx");
      [{ pid }] = await db.query<{ pid: number }>("SELECT pg_backend_pid() AS pid");
      await db.sql`SELECT set_config('app.tenant', ${"a"}, true)`;
      await db.commit();
    }
    assert.doesNotMatch(await lastStatement(pid), /^CLOSE ALL/);
  });

  it("a column or table named temp (sensor readings) costs no reset and keeps pipelining", async () => {
    await cluster.primary.query("CREATE TABLE IF NOT EXISTS readings (temp real, at int)");
    let pid: number;
    {
      await using db = pool.handler("auto");
      [{ pid }] = await db.query<{ pid: number }>("SELECT pg_backend_pid() AS pid");
      await db.query("INSERT INTO readings (temp, at) VALUES ($1, 1)", [21.5]);
      await db.query("SELECT temp FROM readings WHERE at = 1");
    }
    assert.equal(await lastStatement(pid), "SELECT temp FROM readings WHERE at = 1");
    // Through pool.query: one-shots on the group's one connection, and no reset after them.
    const texts = [
      "SELECT temp FROM readings WHERE at = $1",
      "SELECT max(temp) AS temp FROM readings",
    ];
    await Promise.all(texts.map((text, i) => pool.query("auto", text, i === 0 ? [1] : [])));
    assert.equal(await lastStatement(pid), texts[1]);
  });

  it("set_config(..., true) with a cast parameter ($1::text)", async () => {
    let pid: number;
    {
      await using db = pool.handler("tx");
      [{ pid }] = await db.query<{ pid: number }>(
        "SELECT pg_backend_pid() AS pid, set_config('app.user_id', $1::text, true)",
        [7],
      );
      await db.commit();
    }
    assert.doesNotMatch(await lastStatement(pid), /^CLOSE ALL/);
  });
});
