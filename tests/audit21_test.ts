// Defects found by audit 21 (PgBouncer, TLS and proxy faults on both drivers), each proven
// against real servers and real faults.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import process from "node:process";
import { type PgCluster, startCluster, testDriver } from "./harness/cluster.ts";
import { chownToServer, freePorts, serverUser, writeServerFile } from "./harness/exec.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { waitFor } from "./harness/wait.ts";
import { Service } from "./tools.ts";
import { Pool } from "../mod.ts";

await setTestTimeout(180_000);

let cluster: PgCluster;

before(async () => {
  cluster = await startCluster({ replicas: 0 });
}, { timeout: 120_000 });

after(async () => {
  await cluster?.close();
}, { timeout: 60_000 });

/** $PGBOUNCER_BIN, else pgbouncer from PATH or the Debian location. */
function pgbouncerBin(): string {
  const found = [
    process.env.PGBOUNCER_BIN,
    ...(process.env.PATH ?? "").split(delimiter).map((d) => join(d, "pgbouncer")),
    "/usr/sbin/pgbouncer",
  ].find((p): p is string => !!p && existsSync(p));
  if (!found) throw new Error("pgbouncer is not installed (apt-get install -y pgbouncer)");
  return found;
}

/**
 * A PgBouncer in front of the cluster's primary, with `settings` added to its [pgbouncer]. The
 * Bun driver always sends an (empty) `options` start-up parameter, which PgBouncer refuses
 * unless told to ignore it.
 */
class Bouncer {
  port = 0;
  #dir = "";
  #service: Service | undefined;

  static async start(settings: string): Promise<Bouncer> {
    const b = new Bouncer();
    b.#dir = mkdtempSync(join(tmpdir(), "pgdbpool-audit21-"));
    chownToServer(b.#dir);
    [b.port] = await freePorts(1);
    const p = cluster.primary;
    writeServerFile(
      join(b.#dir, "userlist.txt"),
      `"${cluster.user}" "${cluster.password}"\n`,
      0o600,
    );
    writeServerFile(
      join(b.#dir, "pgbouncer.ini"),
      `[databases]
${cluster.database} = host=${p.host} port=${p.port} dbname=${cluster.database}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = ${b.port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = ${join(b.#dir, "userlist.txt")}
server_reset_query =
ignore_startup_parameters = extra_float_digits, options
admin_users = ${cluster.user}
${settings}
`,
    );
    await b.#spawn();
    return b;
  }

  async #spawn(): Promise<void> {
    const u = serverUser();
    const ini = join(this.#dir, "pgbouncer.ini");
    const [cmd, args] = u
      ? ["setpriv", [`--reuid=${u.uid}`, `--regid=${u.gid}`, "--clear-groups", pgbouncerBin(), ini]]
      : [pgbouncerBin(), [ini]];
    this.#service = new Service("pgbouncer", cmd, args, { cwd: this.#dir });
    await this.#service.waitForOutput(/listening on 127\.0\.0\.1:\d+/, 15_000);
  }

  get output(): string {
    return this.#service?.output ?? "";
  }

  async close(): Promise<void> {
    if (this.#service) {
      this.#service.kill("SIGTERM");
      await this.#service.waitExit(10_000).catch(() => this.#service?.stop());
    }
    rmSync(this.#dir, { recursive: true, force: true });
  }
}

function endpoint(port: number) {
  return {
    host: "127.0.0.1",
    port,
    name: cluster.database,
    user: cluster.user,
    pass: cluster.password,
    prepare: false,
    connect_timeout: 3,
    ...testDriver(),
  };
}

// PgBouncer refuses a client over max_client_conn with FATAL 08P01 "no more connections allowed
// (max_client_conn)": its server is fine and the pool's open connections to it work. The pool
// read the refusal as ill health: the endpoint went down, its idle connections were discarded,
// and every checkout failed with NoEndpointAvailableError until a probe after the back-off.
describe("PgBouncer's max_client_conn", () => {
  it("is capacity, not ill health: the refusal fails that checkout alone", async () => {
    const bouncer = await Bouncer.start("pool_mode = transaction\nmax_client_conn = 2\n");
    const pool = new Pool({
      db: endpoint(bouncer.port),
      groups: { g: { connection_count: 4, acquire_timeout_ms: 5000 } },
      health_check_interval_ms: 0,
      retry_backoff_max_ms: 60_000,
      application_name: "audit21",
    });
    const down: unknown[] = [];
    pool.addEventListener("endpointdown", (e) => down.push((e as CustomEvent).detail));
    try {
      const a = pool.handler("g");
      const b = pool.handler("g");
      await a.query("SELECT 1");
      await b.query("SELECT 1");
      // Both of PgBouncer's client slots are taken: a third session is refused.
      const c = pool.handler("g");
      await assert.rejects(c.query("SELECT 1"), (err: Error & { code?: string }) => {
        assert.equal(err.code, "08P01", `${err.name}: ${err.message}`);
        assert.match(err.message, /no more connections allowed/);
        return true;
      });
      c.release();
      assert.deepEqual(down, [], "a full PgBouncer was marked down");
      a.release();
      b.release();
      // The two open connections still serve.
      const [row] = await pool.query<{ n: number }>("g", "SELECT 2 AS n");
      assert.equal(row.n, 2);
      assert.equal(pool.stats().endpoints[0].state, "up");
    } finally {
      await pool.close();
      await bouncer.close();
    }
  });
});

// PgBouncer logs clients in itself and queues their statements while all its server connections
// are busy. The pool's probe waited in that queue like any statement, timed out, and the pool
// took the bouncer down and cut every connection to it: a long statement of the pool's own was
// enough to kill itself and everything queued behind it (SessionLostError, outcome unknown).
describe("PgBouncer with every server connection busy", () => {
  for (const interval of [0, 500]) {
    it(`is busy, not down: its running and queued statements finish (health_check_interval_ms: ${interval})`, async () => {
      const bouncer = await Bouncer.start("pool_mode = transaction\ndefault_pool_size = 1\n");
      const pool = new Pool({
        db: { ...endpoint(bouncer.port), connect_timeout: 1 },
        groups: { g: { connection_count: 3 } },
        health_check_interval_ms: interval,
        application_name: "audit21",
      });
      const down: unknown[] = [];
      pool.addEventListener("endpointdown", (e) => down.push((e as CustomEvent).detail));
      try {
        await pool.query("g", "SELECT 1");
        // Holds PgBouncer's one server connection for longer than a probe deadline (1 s) and
        // the watchdog's delay (connect_timeout) together.
        const long = pool.query<{ done: boolean }>("g", "SELECT true AS done FROM pg_sleep(3)");
        const probes = pool.stats().endpoints[0].probes;
        // A probe has started (and waits in PgBouncer's queue) before the short one is sent.
        await waitFor(() => pool.stats().endpoints[0].probes > probes || down.length > 0, {
          timeoutMs: 10_000,
          message: "a probe of the busy bouncer",
        }).catch(() => {});
        const short = pool.query<{ n: number }>("g", "SELECT 2 AS n");
        const [[l], [s]] = await Promise.all([long, short]);
        assert.equal(l.done, true);
        assert.equal(s.n, 2);
        assert.deepEqual(down, [], "a busy PgBouncer was marked down");
        assert.equal(pool.stats().endpoints[0].state, "up");
      } finally {
        await pool.close();
        await bouncer.close();
      }
    });
  }
});
