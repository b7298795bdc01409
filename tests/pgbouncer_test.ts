// The pool behind PgBouncer in transaction mode: endpoints set `prepare: false` (postgres.js then
// uses unnamed statements, which survive PgBouncer moving a client between server connections).
// Needs the pgbouncer binary (Debian: apt-get install pgbouncer); it refuses to run as root, so
// it runs as the harness's unprivileged server user.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import process from "node:process";
import { type PgCluster, startCluster } from "./harness/cluster.ts";
import { chownToServer, freePorts, serverUser, writeServerFile } from "./harness/exec.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { waitFor } from "./harness/wait.ts";
import { Service } from "./tools.ts";
import postgres from "postgres";
import { Pool } from "../mod.ts";

await setTestTimeout(180_000);

const APP = "pgbouncer_test";
const POOL_SIZE = 2; // PgBouncer's server connections per user/database pair
let cluster: PgCluster;
let dir: string | undefined;
let bouncer: Service | undefined;
let bouncerPort: number;
let pool: Pool | undefined;

/** $PGBOUNCER_BIN, else pgbouncer from PATH or the Debian location. */
function pgbouncerBin(): string {
  const candidates = [
    process.env.PGBOUNCER_BIN,
    ...(process.env.PATH ?? "").split(delimiter).map((d) => join(d, "pgbouncer")),
    "/usr/sbin/pgbouncer",
    "/usr/bin/pgbouncer",
  ].filter((p): p is string => !!p);
  const found = candidates.find((p) => existsSync(p));
  if (!found) {
    throw new Error(
      "pgbouncer is not installed: run `apt-get install -y pgbouncer` (Debian/Ubuntu) or set " +
        "PGBOUNCER_BIN to its path. CI installs it in .ci/run.",
    );
  }
  return found;
}

before(async () => {
  const bin = pgbouncerBin();
  cluster = await startCluster({ replicas: 0 });
  await cluster.primary.query("CREATE TABLE bounced (id serial PRIMARY KEY, v text NOT NULL)");

  dir = mkdtempSync(join(tmpdir(), "pgdbpool-pgbouncer-"));
  chownToServer(dir);
  [bouncerPort] = await freePorts(1);
  const p = cluster.primary;
  // The plain-text password lets PgBouncer answer the server's SCRAM challenge itself.
  writeServerFile(join(dir, "userlist.txt"), `"${cluster.user}" "${cluster.password}"\n`, 0o600);
  writeServerFile(
    join(dir, "pgbouncer.ini"),
    `[databases]
${cluster.database} = host=${p.host} port=${p.port} dbname=${cluster.database}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = ${bouncerPort}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = ${join(dir, "userlist.txt")}
pool_mode = transaction
default_pool_size = ${POOL_SIZE}
max_client_conn = 200
server_reset_query =
ignore_startup_parameters = extra_float_digits
admin_users = ${cluster.user}
`,
  );
  const u = serverUser();
  const [cmd, args] = u
    ? ["setpriv", [
      `--reuid=${u.uid}`,
      `--regid=${u.gid}`,
      "--clear-groups",
      bin,
      join(dir, "pgbouncer.ini"),
    ]]
    : [bin, [join(dir, "pgbouncer.ini")]];
  bouncer = new Service("pgbouncer", cmd, args, { cwd: dir });
  await bouncer.waitForOutput(/listening on 127\.0\.0\.1:\d+/, 15_000);

  pool = new Pool({
    db: {
      host: "127.0.0.1",
      port: bouncerPort,
      name: cluster.database,
      user: cluster.user,
      pass: cluster.password,
      prepare: false,
    },
    groups: {
      auto: { connection_count: 12 },
      tx: { connection_count: 6, autocommit: false },
    },
    application_name: APP,
  });
}, { timeout: 120_000 });

after(async () => {
  await pool?.close();
  if (bouncer) {
    bouncer.kill("SIGTERM");
    await bouncer.waitExit(10_000).catch(() => bouncer?.stop());
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
  await cluster?.close();
}, { timeout: 60_000 });

/** PgBouncer's clients with our application_name, from its admin console (simple protocol only). */
async function bouncerClients(): Promise<number> {
  const admin = postgres({
    host: "127.0.0.1",
    port: bouncerPort,
    database: "pgbouncer",
    username: cluster.user,
    password: cluster.password,
    max: 1,
    fetch_types: false,
    prepare: false,
    onnotice: () => {},
  });
  try {
    const rows = await admin.unsafe("SHOW CLIENTS").simple();
    return rows.filter((r) => r.application_name === APP).length;
  } finally {
    await admin.end({ timeout: 1 });
  }
}

/** Server connections PgBouncer holds to PostgreSQL (all of the test user's client backends). */
const serverConnections = () => cluster.countConnections();

describe("behind PgBouncer (transaction mode, prepare: false)", () => {
  it("connects through PgBouncer", async () => {
    const [row] = await pool!.query("auto", "SELECT inet_server_port() AS port, $1::text AS s", [
      "hello",
    ]);
    assert.equal(row.port, cluster.primary.port);
    assert.equal(row.s, "hello");
  });

  it("runs parameterised queries from more handlers than PgBouncer has server connections", async () => {
    const handlers = 12;
    const rounds = 15;
    const results = await Promise.all(
      Array.from({ length: handlers }, async (_, h) => {
        await using db = pool!.handler("auto");
        const seen: string[] = [];
        for (let r = 0; r < rounds; r++) {
          // Same statement text with different parameter types and values: with named prepared
          // statements this would hit "prepared statement does not exist" once PgBouncer hands
          // the client another server connection.
          const rows = await db.query<{ a: number; b: string; c: boolean; d: string }>(
            "SELECT $1::int AS a, $2::text AS b, $3::bool AS c, ($4::text)::jsonb ->> 'k' AS d",
            [h * 1000 + r, `h${h}r${r}`, r % 2 === 0, JSON.stringify({ k: `v${r}` })],
          );
          assert.deepEqual({ ...rows[0] }, {
            a: h * 1000 + r,
            b: `h${h}r${r}`,
            c: r % 2 === 0,
            d: `v${r}`,
          });
          seen.push(rows[0].b);
        }
        return seen.length;
      }),
    );
    assert.deepEqual(results, Array(handlers).fill(rounds));
    const n = await serverConnections();
    assert.ok(
      n <= POOL_SIZE,
      `PgBouncer should hold at most ${POOL_SIZE} server connections, saw ${n}`,
    );
  });

  it("commits and rolls back transactions (autocommit: false)", async () => {
    {
      await using db = pool!.handler("tx");
      await db.query("INSERT INTO bounced (v) VALUES ($1)", ["committed"]);
      const [{ n }] = await db.query<{ n: number }>(
        "SELECT count(*)::int AS n FROM bounced WHERE v = $1",
        ["committed"],
      );
      assert.equal(n, 1, "the transaction sees its own row");
      await db.commit();
    }
    {
      await using db = pool!.handler("tx");
      await db.query("INSERT INTO bounced (v) VALUES ($1)", ["rolled-back"]);
      await db.rollback();
    }
    {
      await using db = pool!.handler("tx");
      await db.query("INSERT INTO bounced (v) VALUES ($1)", ["disposed"]);
      // not committed: disposing rolls back
    }
    const rows = await cluster.primary.query("SELECT v FROM bounced ORDER BY id");
    assert.deepEqual(rows.map((r) => r.v), ["committed"]);
  });

  it("runs concurrent transactions, each pinned to one server connection until it ends", async () => {
    const values = Array.from({ length: 6 }, (_, i) => `tx${i}`);
    await Promise.all(values.map((v, i) =>
      pool!.transaction("tx", async (db) => {
        await db.query("INSERT INTO bounced (v) VALUES ($1)", [v]);
        // A statement later in the same transaction still sees the row: same server session.
        const [{ n }] = await db.query<{ n: number }>(
          "SELECT count(*)::int AS n FROM bounced WHERE v = $1",
          [v],
        );
        assert.equal(n, 1);
        if (i % 2 === 1) throw new Error(`rollback ${v}`);
      }).catch((err) => {
        if (!String(err).includes(`rollback ${v}`)) throw err;
      })
    ));
    const rows = await cluster.primary.query("SELECT v FROM bounced WHERE v LIKE 'tx%' ORDER BY v");
    assert.deepEqual(rows.map((r) => r.v), ["tx0", "tx2", "tx4"]);
  });

  it("closes every client connection to PgBouncer on pool.close()", async () => {
    assert.ok(
      (await bouncerClients()) > 0,
      "the pool's connections should show up in SHOW CLIENTS",
    );
    await pool!.close();
    await waitFor(async () => (await bouncerClients()) === 0, {
      timeoutMs: 10_000,
      message: `no PgBouncer client with application_name ${APP}`,
    });
    assert.ok(!bouncer!.output.includes(cluster.password), "PgBouncer logged the password");
  });
});
