// @x/pgdbpool/otel in real workerd (npm `workerd`): tests/fixtures/otel_worker.ts, bundled with
// esbuild (--conditions=workerd selects postgres.js's cloudflare:sockets build; the browser
// platform selects the OpenTelemetry SDK's non-Node build), instruments an edge pool on the test
// primary and replica and answers with what the SDK's in-memory exporters received. A second
// worker, without nodejs_compat, shows that the otel entry itself needs no Node API: no
// diagnostics_channel, no AsyncLocalStorage, no Buffer.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type PgCluster, startCluster } from "./harness/cluster.ts";
import { freePorts } from "./harness/exec.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { waitFor } from "./harness/wait.ts";
import { bundleWorker, startWorkerd, stopWorkerd } from "./harness/workerd.ts";
import { esbuildBin, http, ROOT, runCommand, type Service } from "./tools.ts";

await setTestTimeout(180_000);

const APP = "workerd_otel_test";
let cluster: PgCluster;
let dir: string;
let workerd: Service | undefined;
let base: string;
let bareBase: string;

function capnpConfig(port: number, barePort: number, endpoints: unknown): string {
  // JSON string literals are valid capnp string literals.
  const text = (s: string) => JSON.stringify(s);
  // nodejs_compat is for the pool, not for the otel entry: postgres.js's cloudflare build (the
  // edge pool's driver) imports node:buffer and node:stream, and only its socket comes from
  // cloudflare:sockets. The "bare" worker loads the otel entry and the SDK without it.
  return `using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "main", worker = .worker),
    (name = "bare", worker = .bare),
    (name = "internet", network = (allow = ["public", "private", "local"])),
  ],
  sockets = [
    (name = "http", address = "127.0.0.1:${port}", http = (), service = "main"),
    (name = "bare", address = "127.0.0.1:${barePort}", http = (), service = "bare"),
  ],
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

const bare :Workerd.Worker = (
  modules = [(name = "bare.js", esModule = embed "bare.js")],
  compatibilityDate = "2025-09-01",
);
`;
}

/**
 * The worker without nodejs_compat: the otel entry and the SDK only. A real pool cannot load
 * there (its driver needs Node modules), so it instruments a stand-in with what `instrument()`
 * uses of a pool (its observer slot and `stats()`), calls the hooks as the pool does, and
 * answers with what the SDK received and whether any Node global exists.
 */
function bareWorker(): string {
  const local = (...parts: string[]) => JSON.stringify(join(ROOT, ...parts));
  return `import { instrument } from ${local("otel.ts")};
import { poolHooks } from ${local("src", "hooks.ts")};
import {
  AggregationTemporality,
  InMemoryMetricExporter,
  MeterProvider,
  PeriodicExportingMetricReader,
} from "@opentelemetry/sdk-metrics";
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
} from "@opentelemetry/sdk-trace-base";

const group = {
  size: 2, open: 1, idle: 1, busy: 0, waiting: 3, checkouts: 1, timeouts: 0,
  wait_ms: { p50: 0, p99: 0 },
};

export default {
  async fetch(request) {
    if (new URL(request.url).pathname !== "/otel") return new Response("", { status: 404 });
    const metricExporter = new InMemoryMetricExporter(AggregationTemporality.CUMULATIVE);
    const reader = new PeriodicExportingMetricReader({
      exporter: metricExporter,
      exportIntervalMillis: 3600000,
    });
    const meterProvider = new MeterProvider({ readers: [reader] });
    const spanExporter = new InMemorySpanExporter();
    const tracerProvider = new BasicTracerProvider({
      spanProcessors: [new SimpleSpanProcessor(spanExporter)],
    });
    const pool = { [poolHooks]: undefined, stats: () => ({ groups: { g: group }, endpoints: [] }) };
    const stop = instrument(pool, { meterProvider, tracerProvider });
    const hooks = pool[poolHooks];
    hooks.connected("g", 3);
    hooks.checkout("g", 5);
    hooks.statement({
      group: "g",
      text: "select 1",
      endpoint: { host: "db.internal", port: 5433, index: 0 },
      database: "app",
    })(undefined);
    hooks.checkin("g", 7);
    await reader.forceFlush();
    stop();
    const metrics = (metricExporter.getMetrics().at(-1)?.scopeMetrics ?? []).flatMap((scope) =>
      scope.metrics.map((m) => ({
        name: m.descriptor.name,
        points: m.dataPoints.map((p) => ({
          attributes: p.attributes,
          value: typeof p.value === "number" ? p.value : p.value.count,
        })),
      }))
    );
    const spans = spanExporter.getFinishedSpans().map((s) => ({
      name: s.name,
      attributes: s.attributes,
    }));
    await meterProvider.shutdown();
    await tracerProvider.shutdown();
    return Response.json({
      node: ["process", "Buffer", "require"].filter((name) => name in globalThis),
      spans,
      metrics,
    });
  },
};
`;
}

before(async () => {
  cluster = await startCluster({ replicas: 1 });
  dir = mkdtempSync(join(tmpdir(), "pgdbpool-workerd-otel-"));
  await bundleWorker(
    join(ROOT, "tests", "fixtures", "otel_worker.ts"),
    join(dir, "worker.js"),
    "browser",
  );
  // No --external:node:* here: a Node module anywhere in the otel entry's graph (or the SDK's
  // browser build) fails this build.
  writeFileSync(join(dir, "bare.js"), bareWorker());
  const bare = await runCommand(esbuildBin(), [
    join(dir, "bare.js"),
    "--bundle",
    "--platform=browser",
    "--format=esm",
    `--outfile=${join(dir, "bare.bundle.js")}`,
    "--log-level=warning",
  ], { cwd: dir, env: { NODE_PATH: join(ROOT, "node_modules") } }); // the SDK, from the temp dir
  assert.equal(bare.code, 0, `esbuild (bare worker) failed:\n${bare.stdout}${bare.stderr}`);
  renameSync(join(dir, "bare.bundle.js"), join(dir, "bare.js"));
  const [port, barePort] = await freePorts(2);
  base = `http://127.0.0.1:${port}`;
  bareBase = `http://127.0.0.1:${barePort}`;
  writeFileSync(join(dir, "config.capnp"), capnpConfig(port, barePort, cluster.endpoints()), {
    mode: 0o600,
  });
  workerd = await startWorkerd(dir, base, ["--verbose"]);
}, { timeout: 120_000 });

after(async () => {
  await stopWorkerd(workerd);
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
    const primary = server(cluster.primary.port);
    const replica = server(cluster.replicas[0].port);
    const doing = (operation: string, attributes: Record<string, unknown>) => ({
      ...attributes,
      "db.operation.name": operation,
    });
    const failure = { "db.response.status_code": "22012", "error.type": "22012" };
    assert.deepEqual(out.spans.map((s) => [s.name, s.kind, s.attributes, s.status]), [
      [`SELECT ${db}`, 2, { ...doing("SELECT", primary), "db.query.text": "SELECT $1::int AS n" }, {
        code: 0,
      }],
      [`COMMIT ${db}`, 2, { ...doing("COMMIT", primary), "db.query.text": "COMMIT" }, { code: 0 }],
      [`SELECT ${db}`, 2, { ...doing("SELECT", replica), "db.query.text": "SELECT 2 AS n" }, {
        code: 0,
      }],
      [
        `SELECT ${db}`,
        2,
        { ...doing("SELECT", replica), "db.query.text": "SELECT 1/0", ...failure },
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
    const count = (attributes: Record<string, unknown>) =>
      (point(duration.name, attributes) as { count: number } | undefined)?.count;
    assert.equal(duration.points.length, 4);
    assert.equal(count(doing("SELECT", primary)), 1);
    assert.equal(count(doing("COMMIT", primary)), 1);
    assert.equal(count(doing("SELECT", replica)), 1);
    assert.equal(count({ ...doing("SELECT", replica), ...failure }), 1);
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

  it("the otel entry runs without nodejs_compat", async () => {
    const res = await http(`${bareBase}/otel`, { timeoutMs: 30_000 });
    assert.equal(
      res.status,
      200,
      `GET /otel (bare) -> ${res.status} ${res.body}\n--- workerd output ---\n${workerd?.output}`,
    );
    const out = JSON.parse(res.body) as {
      node: string[];
      spans: { name: string; attributes: Record<string, unknown> }[];
      metrics: { name: string; points: { attributes: Record<string, unknown>; value: number }[] }[];
    };
    assert.deepEqual(out.node, [], "no Node global: the worker runs without nodejs_compat");
    assert.deepEqual(out.spans, [{
      name: "SELECT app",
      attributes: {
        "db.system.name": "postgresql",
        "db.namespace": "app",
        "server.address": "db.internal",
        "server.port": 5433,
        "db.operation.name": "SELECT",
      },
    }]);
    const g = { "db.client.connection.pool.name": "g" };
    const values = Object.fromEntries(
      out.metrics.map((m) => [m.name, m.points.map((p) => [p.attributes, p.value])]),
    );
    assert.deepEqual(values["db.client.connection.pending_requests"], [[g, 3]]);
    assert.deepEqual(values["db.client.connection.max"], [[g, 2]]);
    for (const name of ["create_time", "wait_time", "use_time"]) {
      assert.deepEqual(values[`db.client.connection.${name}`], [[g, 1]], name);
    }
    assert.equal(values["db.client.operation.duration"].length, 1);
  });

  it("leaves no server connection behind", async () => {
    await waitFor(async () => (await cluster.countConnections({ applicationName: APP })) === 0, {
      timeoutMs: 15_000,
      message: `no connection with application_name ${APP}`,
    });
    assert.ok(!workerd!.output.includes(cluster.password), "workerd output contains the password");
  });
});
