// The edge entry in real workerd (npm `workerd`): examples/worker.ts bundled with esbuild
// (--conditions=workerd selects postgres.js's cloudflare:sockets build), served by workerd with
// nodejs_compat, talking to the test primary and replica over loopback.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type PgCluster, startCluster } from "./harness/cluster.ts";
import { freePorts } from "./harness/exec.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { waitFor } from "./harness/wait.ts";
import { bundleWorker, startWorkerd, stopWorkerd } from "./harness/workerd.ts";
import { http, ROOT, type Service } from "./tools.ts";

await setTestTimeout(180_000);

const APP = "workerd_test";
let cluster: PgCluster;
let dir: string;
let workerd: Service | undefined;
let base: string;
let listenersBase: string;

/** A capnp string literal (JSON's escapes for quotes and backslashes are valid capnp escapes). */
const capnpString = (s: string) => JSON.stringify(s);

function capnpConfig(port: number, listenersPort: number, endpoints: unknown): string {
  return `using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "main", worker = .worker),
    (name = "listeners", worker = .listeners),
    # Workers may not reach loopback/private addresses by default; the tests' PostgreSQL
    # servers listen on 127.0.0.1.
    (name = "internet", network = (allow = ["public", "private", "local"])),
  ],
  sockets = [
    (name = "http", address = "127.0.0.1:${port}", http = (), service = "main"),
    (name = "listeners", address = "127.0.0.1:${listenersPort}", http = (), service = "listeners"),
  ],
);

const worker :Workerd.Worker = (
  modules = [(name = "worker.js", esModule = embed "worker.js")],
  compatibilityDate = "2025-09-01",
  compatibilityFlags = ["nodejs_compat"],
  bindings = [
    (name = "DB_ENDPOINTS", text = ${capnpString(JSON.stringify(endpoints))}),
    (name = "APP_NAME", text = ${capnpString(APP)}),
  ],
);

const listeners :Workerd.Worker = (
  modules = [(name = "listeners.js", esModule = embed "listeners.js")],
  compatibilityDate = "2025-09-01",
  compatibilityFlags = ["nodejs_compat"],
  bindings = [(name = "DB_ENDPOINTS", text = ${capnpString(JSON.stringify(endpoints))})],
);
`;
}

before(async () => {
  cluster = await startCluster({ replicas: 1 });
  await cluster.primary.query("CREATE TABLE worker_items (id serial PRIMARY KEY, v text NOT NULL)");
  await cluster.waitForReplication();

  dir = mkdtempSync(join(tmpdir(), "pgdbpool-workerd-"));
  await bundleWorker(join(ROOT, "examples", "worker.ts"), join(dir, "worker.js"));
  await bundleWorker(
    join(ROOT, "tests", "fixtures", "listener_worker.ts"),
    join(dir, "listeners.js"),
  );

  const [port, listenersPort] = await freePorts(2);
  base = `http://127.0.0.1:${port}`;
  listenersBase = `http://127.0.0.1:${listenersPort}`;
  writeFileSync(join(dir, "config.capnp"), capnpConfig(port, listenersPort, cluster.endpoints()), {
    mode: 0o600,
  });
  workerd = await startWorkerd(dir, base, ["--verbose"]);
}, { timeout: 120_000 });

after(async () => {
  await stopWorkerd(workerd);
  if (dir) rmSync(dir, { recursive: true, force: true });
  await cluster?.close();
}, { timeout: 60_000 });

async function get(path: string): Promise<Record<string, unknown>> {
  const res = await http(`${base}${path}`, { timeoutMs: 20_000 });
  assert.equal(
    res.status,
    200,
    `GET ${path} -> ${res.status} ${res.body}\n--- workerd output ---\n${workerd?.output}`,
  );
  return JSON.parse(res.body);
}

describe("edge entry in workerd", () => {
  it("writes through the primary", async () => {
    const r = await get("/write?v=first");
    assert.equal(r.port, cluster.primary.port);
    assert.equal(typeof r.id, "number");
    const rows = await cluster.primary.query("SELECT v FROM worker_items WHERE id = $1", [r.id]);
    assert.deepEqual(rows.map((x) => x.v), ["first"]);
  });

  it("reads the replicated row from the replica", async () => {
    await cluster.waitForReplication();
    const r = await get("/read?v=first");
    assert.equal(r.port, cluster.replicas[0].port);
    assert.equal(r.app, APP);
    assert.deepEqual((r.rows as { v: string }[]).map((x) => x.v), ["first"]);
  });

  it("serves concurrent requests, each with its own pool", async () => {
    const values = Array.from({ length: 8 }, (_, i) => `c${i}`);
    const writes = await Promise.all(values.map((v) => get(`/write?v=${v}`)));
    for (const w of writes) assert.equal(w.port, cluster.primary.port);
    await cluster.waitForReplication();
    const reads = await Promise.all(values.map((v) => get(`/read?v=${v}`)));
    reads.forEach((r, i) => {
      assert.equal(r.port, cluster.replicas[0].port);
      assert.deepEqual((r.rows as { v: string }[]).map((x) => x.v), [values[i]]);
    });
  });

  it("reports PostgreSQL errors without leaking the password", async () => {
    await cluster.primary.query(
      "ALTER TABLE worker_items ADD CONSTRAINT short_v CHECK (length(v) < 20)",
    );
    try {
      const res = await http(`${base}/write?v=${"x".repeat(30)}`, { timeoutMs: 20_000 });
      assert.equal(res.status, 500);
      assert.match(res.body, /short_v/);
      assert.ok(!res.body.includes(cluster.password));
    } finally {
      await cluster.primary.query("ALTER TABLE worker_items DROP CONSTRAINT short_v");
    }
  });

  it("leaves no server connection behind (pools closed with ctx.waitUntil)", async () => {
    await waitFor(async () => (await cluster.countConnections({ applicationName: APP })) === 0, {
      timeoutMs: 15_000,
      message: `no connection with application_name ${APP}`,
    });
    assert.ok(!workerd!.output.includes(cluster.password), "workerd output contains the password");
  });
});

// workerd passes a listener's exception out of dispatchEvent(), into whatever pool code
// dispatched the event (tests/fixtures/listener_worker.ts).
describe("event listeners that throw, in workerd", () => {
  async function getListeners(path: string): Promise<Record<string, unknown>> {
    const res = await http(`${listenersBase}${path}`, { timeoutMs: 20_000 });
    assert.equal(res.status, 200, `GET ${path} -> ${res.status} ${res.body}`);
    return JSON.parse(res.body);
  }

  it("do not keep a waiting one-shot from its acquire timeout", async () => {
    const r = await getListeners("/seat");
    assert.deepEqual(r.waiting, ["AcquireTimeoutError", "AcquireTimeoutError"]);
  });

  it("do not replace a lost statement's outcome, nor skip the failure report", async () => {
    const r = await getListeners("/lost");
    assert.equal(r.first, "SessionLostError unknown");
    assert.ok((r.errors as number) >= 1, `errors ${r.errors}`);
  });
});
