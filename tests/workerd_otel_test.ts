// @x/pgdbpool/otel in real workerd (npm `workerd`): tests/fixtures/otel_worker.ts, bundled with
// esbuild (--conditions=workerd selects postgres.js's cloudflare:sockets build; the browser
// platform selects the OpenTelemetry SDK's non-Node build), instruments an edge pool on the test
// primary and replica and answers with what the SDK's in-memory exporters received.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type PgCluster, startCluster } from "./harness/cluster.ts";
import { freePorts } from "./harness/exec.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { waitFor } from "./harness/wait.ts";
import { esbuildBin, http, ROOT, runCommand, Service, workerdBin } from "./tools.ts";

await setTestTimeout(180_000);

const APP = "workerd_otel_test";
let cluster: PgCluster;
let dir: string;
let workerd: Service | undefined;
let base: string;

function capnpConfig(port: number, endpoints: unknown): string {
  // JSON string literals are valid capnp string literals.
  const text = (s: string) => JSON.stringify(s);
  return `using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "main", worker = .worker),
    (name = "internet", network = (allow = ["public", "private", "local"])),
  ],
  sockets = [(name = "http", address = "127.0.0.1:${port}", http = (), service = "main")],
);

const worker :Workerd.Worker = (
  modules = [(name = "worker.js", esModule = embed "worker.js")],
  compatibilityDate = "2025-09-01",
  compatibilityFlags = ["nodejs_compat"],
  bindings = [
    (name = "DB_ENDPOINTS", text = ${text(JSON.stringify(endpoints))}),
    (name = "APP_NAME", text = ${text(APP)}),
  ],
);
`;
}

before(async () => {
  cluster = await startCluster({ replicas: 1 });
  dir = mkdtempSync(join(tmpdir(), "pgdbpool-workerd-otel-"));
  const build = await runCommand(esbuildBin(), [
    join(ROOT, "tests", "fixtures", "otel_worker.ts"),
    "--bundle",
    "--conditions=workerd",
    "--platform=browser",
    "--format=esm",
    "--external:cloudflare:sockets",
    "--external:node:*",
    `--outfile=${join(dir, "worker.js")}`,
    "--log-level=warning",
  ]);
  assert.equal(build.code, 0, `esbuild failed:\n${build.stdout}${build.stderr}`);
  const [port] = await freePorts(1);
  base = `http://127.0.0.1:${port}`;
  writeFileSync(join(dir, "config.capnp"), capnpConfig(port, cluster.endpoints()), { mode: 0o600 });
  workerd = new Service(
    "workerd",
    workerdBin(),
    ["serve", join(dir, "config.capnp"), "--verbose"],
    { cwd: dir },
  );
  await waitFor(async () => (await http(`${base}/`, { timeoutMs: 2000 })).status === 404, {
    timeoutMs: 30_000,
    message: `workerd answering on ${base}`,
  }).catch((err) => {
    throw new Error(`${err.message}\n--- workerd output ---\n${workerd?.output}`, { cause: err });
  });
}, { timeout: 120_000 });

after(async () => {
  if (workerd) {
    workerd.kill("SIGTERM");
    await workerd.waitExit(10_000).catch(() => workerd?.stop());
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
  await cluster?.close();
}, { timeout: 60_000 });

interface Out {
  code?: string;
  spans: {
    name: string;
    kind: number;
    attributes: Record<string, unknown>;
    status: { code: number; message?: string };
  }[];
  metrics: {
    scope: string;
    name: string;
    unit: string;
    points: { attributes: Record<string, unknown>; value: unknown }[];
  }[];
}

describe("@x/pgdbpool/otel in workerd", () => {
  it("records spans and metrics of the conventions through the SDK", async () => {
    const res = await http(`${base}/otel`, { timeoutMs: 30_000 });
    assert.equal(
      res.status,
      200,
      `GET /otel -> ${res.status} ${res.body}\n--- workerd output ---\n${workerd?.output}`,
    );
    const out = JSON.parse(res.body) as Out;
    assert.equal(out.code, "22012");
    const server = (port: number) => ({
      "db.system.name": "postgresql",
      "db.namespace": cluster.database,
      "server.address": "127.0.0.1",
      "server.port": port,
    });
    const db = cluster.database;
    assert.deepEqual(out.spans.map((s) => [s.name, s.kind, s.attributes, s.status]), [
      [`SELECT ${db}`, 2, {
        ...server(cluster.primary.port),
        "db.query.text": "SELECT $1::int AS n",
      }, {
        code: 0,
      }],
      [`COMMIT ${db}`, 2, { ...server(cluster.primary.port), "db.query.text": "COMMIT" }, {
        code: 0,
      }],
      [
        `SELECT ${db}`,
        2,
        { ...server(cluster.replicas[0].port), "db.query.text": "SELECT 2 AS n" },
        {
          code: 0,
        },
      ],
      [
        `SELECT ${db}`,
        2,
        {
          ...server(cluster.replicas[0].port),
          "db.query.text": "SELECT 1/0",
          "db.response.status_code": "22012",
          "error.type": "22012",
        },
        { code: 2, message: "22012" },
      ],
    ]);

    const metric = (name: string) => {
      const m = out.metrics.find((x) => x.name === name);
      assert.ok(m, `${name} in ${out.metrics.map((x) => x.name).join(", ")}`);
      assert.equal(m.scope, "@x/pgdbpool");
      return m;
    };
    const key = (a: Record<string, unknown>) => JSON.stringify(Object.entries(a).sort());
    const point = (name: string, attributes: Record<string, unknown>) =>
      metric(name).points.find((p) => key(p.attributes) === key(attributes))?.value;
    const duration = metric("db.client.operation.duration");
    assert.equal(duration.unit, "s");
    const failed = {
      ...server(cluster.replicas[0].port),
      "db.response.status_code": "22012",
      "error.type": "22012",
    };
    assert.equal(duration.points.length, 3);
    assert.equal(
      (point(duration.name, server(cluster.primary.port)) as { count: number }).count,
      2,
    );
    assert.equal(
      (point(duration.name, server(cluster.replicas[0].port)) as { count: number }).count,
      1,
    );
    assert.equal((point(duration.name, failed) as { count: number }).count, 1);
    const pool = (g: string) => ({ "db.client.connection.pool.name": g });
    assert.equal(point("db.client.connection.max", pool("write")), 1);
    assert.equal(point("db.client.connection.max", pool("read")), 1);
    assert.equal(point("db.client.connection.pending_requests", pool("read")), 0);
    assert.equal(point("db.client.connection.timeouts", pool("read")), 0);
    assert.equal(
      point("db.client.connection.count", {
        "db.client.connection.pool.name": "read",
        "db.client.connection.state": "idle",
      }),
      1,
    );
    assert.equal(
      (point("db.client.connection.create_time", pool("read")) as { count: number }).count,
      1,
    );
    assert.equal(
      (point("db.client.connection.wait_time", pool("read")) as { count: number }).count,
      2,
    );
    assert.equal(
      (point("db.client.connection.use_time", pool("write")) as { count: number }).count,
      1,
    );
  });

  it("leaves no server connection behind", async () => {
    await waitFor(async () => (await cluster.countConnections({ applicationName: APP })) === 0, {
      timeoutMs: 15_000,
      message: `no connection with application_name ${APP}`,
    });
    assert.ok(!workerd!.output.includes(cluster.password), "workerd output contains the password");
  });
});
