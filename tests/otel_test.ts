// @x/pgdbpool/otel against the real primary and replica of the harness: what the OpenTelemetry
// SDK (in-memory exporters of @opentelemetry/sdk-metrics and @opentelemetry/sdk-trace-base)
// receives from an instrumented pool.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { AsyncLocalStorage } from "node:async_hooks";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import {
  type Attributes,
  type Context,
  context,
  type ContextManager,
  metrics,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
} from "@opentelemetry/api";
import {
  AggregationTemporality,
  DataPointType,
  InMemoryMetricExporter,
  MeterProvider,
  type MetricData,
  PeriodicExportingMetricReader,
  type ResourceMetrics,
} from "@opentelemetry/sdk-metrics";
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  type ReadableSpan,
  SimpleSpanProcessor,
} from "@opentelemetry/sdk-trace-base";
import { type PgCluster, startCluster } from "./harness/cluster.ts";
import { countPoolSessions, poolSessions, terminate } from "./harness/faults.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { waitFor } from "./harness/wait.ts";
import { denoBin, ROOT, runCommand } from "./tools.ts";
import { AcquireTimeoutError, type Handler, Pool, type PoolConfig } from "../mod.ts";
import { instrument } from "../otel.ts";
import { poolHooks } from "../src/hooks.ts";
import { failureOf } from "../src/otel/attributes.ts";
import { SECONDS_BUCKETS } from "../src/otel/metrics.ts";
import { commandOf, operationOf } from "../src/otel/span_name.ts";

await setTestTimeout(180_000);

let cluster: PgCluster;

before(async () => {
  cluster = await startCluster({ replicas: 1 });
  await cluster.primary.query("CREATE TABLE otel_items (id serial PRIMARY KEY, v text NOT NULL)");
  await cluster.waitForReplication();
}, { timeout: 120_000 });

after(async () => {
  await cluster?.close();
}, { timeout: 60_000 });

/** An SDK pipeline whose output the tests read. */
class Sdk {
  readonly metricExporter = new InMemoryMetricExporter(AggregationTemporality.CUMULATIVE);
  readonly reader = new PeriodicExportingMetricReader({
    exporter: this.metricExporter,
    exportIntervalMillis: 3_600_000,
  });
  readonly meterProvider = new MeterProvider({ readers: [this.reader] });
  readonly spanExporter = new InMemorySpanExporter();
  readonly tracerProvider = new BasicTracerProvider({
    spanProcessors: [new SimpleSpanProcessor(this.spanExporter)],
  });

  /** Collects and exports now; the metrics as the exporter received them. */
  async collect(): Promise<Metrics> {
    this.metricExporter.reset();
    await this.reader.forceFlush();
    const all = this.metricExporter.getMetrics();
    assert.equal(all.length, 1, "one export per collection");
    return new Metrics(all[0]);
  }

  get spans(): ReadableSpan[] {
    return this.spanExporter.getFinishedSpans();
  }

  async shutdown(): Promise<void> {
    await this.meterProvider.shutdown();
    await this.tracerProvider.shutdown();
  }
}

class Metrics {
  constructor(readonly resource: ResourceMetrics) {}

  /** The metric named `name` (of the pgdbpool scope), or undefined. */
  find(name: string): MetricData | undefined {
    for (const scope of this.resource.scopeMetrics) {
      for (const m of scope.metrics) {
        if (m.descriptor.name === name) {
          assert.equal(scope.scope.name, "@x/pgdbpool");
          return m;
        }
      }
    }
    return undefined;
  }

  get(name: string): MetricData {
    const m = this.find(name);
    assert.ok(m, `metric ${name} exported (got ${this.names().join(", ")})`);
    return m;
  }

  names(): string[] {
    return this.resource.scopeMetrics.flatMap((s) => s.metrics.map((m) => m.descriptor.name));
  }

  /** The value of the sum data point with exactly these attributes. */
  sum(name: string, attributes: Attributes): number | undefined {
    const m = this.get(name);
    assert.equal(m.dataPointType, DataPointType.SUM, `${name} is a sum`);
    const point = m.dataPoints.find((p) => sameAttributes(p.attributes, attributes));
    return point?.value as number | undefined;
  }

  /** The histogram data point with exactly these attributes. */
  histogram(name: string, attributes: Attributes) {
    const m = this.get(name);
    assert.equal(m.dataPointType, DataPointType.HISTOGRAM, `${name} is a histogram`);
    return m.dataPoints.find((p) => sameAttributes(p.attributes, attributes))?.value;
  }
}

function sameAttributes(a: Attributes, b: Attributes): boolean {
  const ka = Object.keys(a).sort();
  const kb = Object.keys(b).sort();
  return ka.length === kb.length && ka.every((k, i) => k === kb[i] && a[k] === b[k]);
}

/** An AsyncLocalStorage context manager, so that spans find their parent across awaits. */
class AlsContextManager implements ContextManager {
  readonly #als = new AsyncLocalStorage<Context>();
  active(): Context {
    return this.#als.getStore() ?? ROOT_CONTEXT;
  }
  with<A extends unknown[], F extends (...args: A) => ReturnType<F>>(
    ctx: Context,
    fn: F,
    thisArg?: ThisParameterType<F>,
    ...args: A
  ): ReturnType<F> {
    return this.#als.run(ctx, () => fn.call(thisArg, ...args));
  }
  bind<T>(_ctx: Context, target: T): T {
    return target;
  }
  enable(): this {
    return this;
  }
  disable(): this {
    return this;
  }
}

const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function config(app: string, extra: Partial<PoolConfig> = {}): PoolConfig {
  return {
    db: cluster.endpoints(),
    groups: {
      auto: { connection_count: 2, role: "primary" },
      tx: { connection_count: 1, role: "primary", autocommit: false },
      read: { connection_count: 2, role: "replica" },
    },
    application_name: app,
    ...extra,
  };
}

const pool = (name: string) => ({ "db.client.connection.pool.name": name });
const state = (name: string, s: "idle" | "used") => ({
  "db.client.connection.pool.name": name,
  "db.client.connection.state": s,
});

describe("@x/pgdbpool/otel", () => {
  it("exports the connection metrics of the conventions, per group", async () => {
    const sdk = new Sdk();
    try {
      await using p = new Pool(config("otel-metrics"));
      using _otel = instrument(p, { meterProvider: sdk.meterProvider });
      await p.query("read", "SELECT 1");
      await Promise.all([
        p.query("auto", "SELECT pg_sleep(0.02)"),
        p.query("auto", "SELECT pg_sleep(0.02)"),
      ]);
      const held = await p.acquire("tx");
      await held.query("SELECT 1");
      const waiting = p.acquire("tx", { timeout_ms: 10_000 });
      await waitFor(() => p.stats().groups.tx.waiting === 1, { message: "a waiting checkout" });

      let m = await sdk.collect();
      const count = m.get("db.client.connection.count");
      assert.equal(count.descriptor.unit, "{connection}");
      assert.equal(count.dataPointType, DataPointType.SUM);
      assert.equal((count as { isMonotonic: boolean }).isMonotonic, false, "an UpDownCounter");
      const stats = p.stats();
      for (const g of ["auto", "tx", "read"]) {
        const s = stats.groups[g];
        assert.equal(m.sum("db.client.connection.count", state(g, "idle")), s.idle, `${g} idle`);
        assert.equal(m.sum("db.client.connection.count", state(g, "used")), s.busy, `${g} used`);
        assert.equal(m.sum("db.client.connection.max", pool(g)), s.size, `${g} max`);
        assert.equal(
          m.sum("db.client.connection.pending_requests", pool(g)),
          s.waiting,
          `${g} pending`,
        );
        assert.equal(m.sum("db.client.connection.timeouts", pool(g)), 0, `${g} timeouts`);
      }
      assert.equal(m.sum("db.client.connection.count", state("tx", "used")), 1);
      assert.equal(m.sum("db.client.connection.count", state("auto", "idle")), 2);
      assert.equal(m.sum("db.client.connection.pending_requests", pool("tx")), 1);
      for (
        const [name, unit, monotonic] of [
          ["db.client.connection.max", "{connection}", false],
          ["db.client.connection.pending_requests", "{request}", false],
          ["db.client.connection.timeouts", "{timeout}", true],
        ] as const
      ) {
        const metric = m.get(name);
        assert.equal(metric.descriptor.unit, unit, `${name} unit`);
        assert.equal((metric as { isMonotonic: boolean }).isMonotonic, monotonic, name);
      }

      // The waiter waits at least this long for the held connection.
      await pause(40);
      held.release();
      (await waiting).release();
      {
        using _blocker = await p.acquire("tx");
        await assert.rejects(p.acquire("tx", { timeout_ms: 20 }), AcquireTimeoutError);
      }

      m = await sdk.collect();
      assert.equal(m.sum("db.client.connection.timeouts", pool("tx")), 1);
      assert.equal(m.sum("db.client.connection.pending_requests", pool("tx")), 0);
      assert.equal(m.sum("db.client.connection.count", state("tx", "used")), 0);
      assert.equal(m.sum("db.client.connection.count", state("tx", "idle")), 1);
      for (const name of ["create_time", "wait_time", "use_time"]) {
        const metric = m.get(`db.client.connection.${name}`);
        assert.equal(metric.descriptor.unit, "s", `${name} unit`);
        for (const point of metric.dataPoints) {
          const g = point.attributes["db.client.connection.pool.name"] as string;
          assert.deepEqual(point.attributes, pool(g), `${name} attributes`);
        }
      }
      const after = p.stats().groups;
      const wait = m.histogram("db.client.connection.wait_time", pool("tx"))!;
      assert.equal(wait.count, after.tx.checkouts, "one wait_time per checkout");
      assert.deepEqual(wait.buckets.boundaries, [...SECONDS_BUCKETS]);
      assert.ok(wait.max! >= 0.03, `the waiter waited ${wait.max} s`);
      assert.equal(
        m.histogram("db.client.connection.wait_time", pool("auto"))!.count,
        after.auto.checkouts,
      );
      const use = m.histogram("db.client.connection.use_time", pool("tx"))!;
      assert.equal(use.count, 3, "one use_time per check-in");
      assert.ok(use.max! >= 0.03, `held for ${use.max} s`);
      const create = m.histogram("db.client.connection.create_time", pool("auto"))!;
      assert.equal(create.count, 2, "two connections opened in auto");
      assert.ok(create.min! > 0 && create.max! < 10, `create_time ${create.min}..${create.max}`);
      assert.equal(m.histogram("db.client.connection.create_time", pool("read"))!.count, 1);
    } finally {
      await sdk.shutdown();
    }
  });

  it("one wait_time per request: one-shots that join a shared connection or wait for a seat", async () => {
    const sdk = new Sdk();
    try {
      await using p = new Pool(
        config("otel-seats", {
          groups: { one: { connection_count: 1, role: "primary" } },
        }),
      );
      using _otel = instrument(p, { meterProvider: sdk.meterProvider });
      await p.query("one", "SELECT 1"); // the connection is open and idle
      // One connection pipelines 64 statements: the first takes it, 63 join it, the rest wait
      // for seats as it drains (pending requests, like a checkout waiting for a permit).
      const n = 160;
      const all = Array.from({ length: n }, () => p.query("one", "SELECT pg_sleep(0.005)"));
      await waitFor(() => p.stats().groups.one.waiting > 0, { message: "one-shots waiting" });
      assert.ok(
        (await sdk.collect()).sum("db.client.connection.pending_requests", pool("one"))! > 0,
      );
      await Promise.all(all);
      const m = await sdk.collect();
      const wait = m.histogram("db.client.connection.wait_time", pool("one"))!;
      assert.equal(p.stats().groups.one.checkouts, n + 1);
      assert.equal(wait.count, n + 1, "one wait_time per one-shot");
      assert.ok(wait.min === 0, `joined at once: ${wait.min} s`);
      assert.ok(wait.max! >= 0.05, `a seat waited ${wait.max} s`);
      const use = m.histogram("db.client.connection.use_time", pool("one"))!;
      assert.ok(
        use.count >= 1 && use.count < n,
        `use_time per hold of the connection (${use.count})`,
      );
    } finally {
      await sdk.shutdown();
    }
  });

  it("one CLIENT span per statement, with the attributes of db.client.operation.duration", async () => {
    const sdk = new Sdk();
    try {
      await using p = new Pool(config("otel-spans"));
      using _otel = instrument(p, {
        meterProvider: sdk.meterProvider,
        tracerProvider: sdk.tracerProvider,
      });
      await p.query("auto", "INSERT INTO otel_items (v) VALUES ($1)", ["a"]);
      await p.query("read", "  -- a comment\n select 1 AS one");
      await p.transaction("tx", async (db) => {
        await db.query("UPDATE otel_items SET v = $1", ["b"]);
      });
      // No single operation: the CTE could write too.
      await p.query("read", "WITH x AS (SELECT 1 AS n) SELECT n FROM x");

      const spans = sdk.spans;
      const server = (port: number) => ({
        "db.system.name": "postgresql",
        "db.namespace": cluster.database,
        "server.address": "127.0.0.1",
        "server.port": port,
      });
      const primary = server(cluster.primary.port);
      const replica = server(cluster.replicas[0].port);
      const doing = (operation: string, attributes: Attributes) => ({
        ...attributes,
        "db.operation.name": operation,
      });
      const db = cluster.database;
      assert.deepEqual(
        spans.map((s) => [s.name, s.kind, s.attributes]),
        [
          [`INSERT ${db}`, SpanKind.CLIENT, doing("INSERT", primary)],
          [`SELECT ${db}`, SpanKind.CLIENT, doing("SELECT", replica)],
          [`UPDATE ${db}`, SpanKind.CLIENT, doing("UPDATE", primary)],
          [`COMMIT ${db}`, SpanKind.CLIENT, doing("COMMIT", primary)],
          [db, SpanKind.CLIENT, replica],
        ],
      );
      for (const s of spans) {
        assert.equal(s.status.code, SpanStatusCode.UNSET);
        assert.equal(s.instrumentationScope.name, "@x/pgdbpool");
        assert.equal(s.parentSpanContext, undefined, "a root span without an active span");
      }

      const m = await sdk.collect();
      const duration = m.get("db.client.operation.duration");
      assert.equal(duration.descriptor.unit, "s");
      assert.equal(duration.dataPointType, DataPointType.HISTOGRAM);
      // One data point per attribute set of the spans: server and operation.
      const points = [
        doing("INSERT", primary),
        doing("SELECT", replica),
        doing("UPDATE", primary),
        doing("COMMIT", primary),
        replica,
      ].map((attributes) => m.histogram("db.client.operation.duration", attributes)!);
      assert.deepEqual(points.map((h) => h?.count), [1, 1, 1, 1, 1]);
      assert.deepEqual(points[0].buckets.boundaries, [...SECONDS_BUCKETS]);
      assert.equal(duration.dataPoints.length, 5, "no other attribute sets");
      // The histogram measures what the span measures.
      const seconds = (s: ReadableSpan) => s.duration[0] + s.duration[1] / 1e9;
      const spanTotal = spans.reduce((n, s) => n + seconds(s), 0);
      const histogramTotal = points.reduce((n, h) => n + h.sum!, 0);
      assert.ok(
        Math.abs(spanTotal - histogramTotal) < 1e-6,
        `spans ${spanTotal} s, histogram ${histogramTotal} s`,
      );
    } finally {
      await sdk.shutdown();
    }
  });

  it("puts db.query.text on spans only with queryText: true", async () => {
    const sdk = new Sdk();
    try {
      await using p = new Pool(config("otel-text"));
      const text = "SELECT $1::int AS n";
      {
        using _otel = instrument(p, { tracerProvider: sdk.tracerProvider, queryText: true });
        await p.query("auto", text, [1]);
      }
      {
        using _otel = instrument(p, { tracerProvider: sdk.tracerProvider });
        await p.query("auto", text, [2]);
      }
      const [withText, without] = sdk.spans;
      assert.equal(withText.attributes["db.query.text"], text);
      assert.equal(without.attributes["db.query.text"], undefined);
      assert.ok(!JSON.stringify(sdk.spans.map((s) => s.attributes)).includes(cluster.password));
    } finally {
      await sdk.shutdown();
    }
  });

  it("a failed statement: span status ERROR with its SQLSTATE, error attributes on both", async () => {
    const sdk = new Sdk();
    try {
      await using p = new Pool(config("otel-errors"));
      using _otel = instrument(p, {
        meterProvider: sdk.meterProvider,
        tracerProvider: sdk.tracerProvider,
      });
      await assert.rejects(p.query("auto", "SELECT 1/0"), { code: "22012" });
      await assert.rejects(
        p.transaction("tx", async (db) => {
          await db.query("SELECT * FROM otel_no_such_table");
        }),
        { code: "42P01" },
      );
      const [division, missing] = sdk.spans;
      assert.equal(division.name, `SELECT ${cluster.database}`);
      assert.deepEqual(division.status, { code: SpanStatusCode.ERROR, message: "22012" });
      assert.equal(division.attributes["db.response.status_code"], "22012");
      assert.equal(division.attributes["error.type"], "22012");
      assert.deepEqual(missing.status, { code: SpanStatusCode.ERROR, message: "42P01" });
      assert.equal(missing.attributes["error.type"], "42P01");
      // The message may quote data: it is not recorded anywhere.
      assert.equal(division.events.length, 0);

      const m = await sdk.collect();
      const failed = m.histogram("db.client.operation.duration", {
        "db.system.name": "postgresql",
        "db.namespace": cluster.database,
        "server.address": "127.0.0.1",
        "server.port": cluster.primary.port,
        "db.operation.name": "SELECT",
        "db.response.status_code": "22012",
        "error.type": "22012",
      });
      assert.equal(failed?.count, 1);
    } finally {
      await sdk.shutdown();
    }
  });

  it("a COMMIT answered ROLLBACK fails its span as it fails the caller (db.commit() and db.query)", async () => {
    const sdk = new Sdk();
    try {
      await using p = new Pool(config("otel-aborted-commit"));
      using _otel = instrument(p, { tracerProvider: sdk.tracerProvider });
      for (const commit of [(db: Handler) => db.commit(), (db: Handler) => db.query("COMMIT")]) {
        sdk.spanExporter.reset();
        {
          await using db = p.handler("tx");
          await assert.rejects(db.query("SELECT 1/0"), { code: "22012" });
          // PostgreSQL rolls back instead: nothing was committed, and the caller is told so.
          await assert.rejects(commit(db), { name: "TransactionAbortedError" });
        }
        const span = sdk.spans.find((s) => s.attributes["db.operation.name"] === "COMMIT");
        assert.ok(span, "a COMMIT span");
        assert.deepEqual(span.status, {
          code: SpanStatusCode.ERROR,
          message: "TransactionAbortedError",
        });
        assert.equal(span.attributes["error.type"], "TransactionAbortedError");
      }
    } finally {
      await sdk.shutdown();
    }
  });

  it("statements with rows as arrays (query builders) are instrumented like any other", async () => {
    const sdk = new Sdk();
    try {
      await using p = new Pool(config("otel-arrays"));
      using _otel = instrument(p, { tracerProvider: sdk.tracerProvider });
      const rows = await p.query("auto", "SELECT 1 AS a, 2 AS a", [], { rowMode: "array" });
      assert.deepEqual([...rows[0]], [1, 2]);
      await p.transaction("tx", async (db) => {
        const r = await db.query("SELECT 3 AS a", [], { rowMode: "array" });
        assert.deepEqual([...r[0]], [3]);
      });
      assert.deepEqual(sdk.spans.map((s) => s.name), [
        `SELECT ${cluster.database}`,
        `SELECT ${cluster.database}`,
        `COMMIT ${cluster.database}`,
      ]);
    } finally {
      await sdk.shutdown();
    }
  });

  it("statements of the Drizzle and Kysely entries are instrumented like any other", async () => {
    const { drizzle } = await import("../drizzle.ts");
    const { pgTable, serial, text } = await import("drizzle-orm/pg-core");
    const { PgdbpoolDialect } = await import("../kysely.ts");
    const { Kysely } = await import("kysely");
    const sdk = new Sdk();
    try {
      await using p = new Pool(config("otel-builders"));
      using _otel = instrument(p, { tracerProvider: sdk.tracerProvider });
      const items = pgTable("otel_items", { id: serial().primaryKey(), v: text().notNull() });
      const orm = drizzle(p, { group: "auto", read: "read" });
      await orm.insert(items).values({ v: "drizzle" });
      await orm.select().from(items);
      interface DB {
        otel_items: { id: number; v: string };
      }
      const kysely = new Kysely<DB>({
        dialect: new PgdbpoolDialect({ pool: p, group: "auto", read: "read" }),
      });
      await kysely.insertInto("otel_items").values({ id: 1000, v: "kysely" }).execute();
      await kysely.selectFrom("otel_items").selectAll().execute();
      const ports = (s: ReadableSpan) => [s.name, s.attributes["server.port"]];
      assert.deepEqual(sdk.spans.map(ports), [
        [`INSERT ${cluster.database}`, cluster.primary.port],
        [`SELECT ${cluster.database}`, cluster.replicas[0].port],
        [`INSERT ${cluster.database}`, cluster.primary.port],
        [`SELECT ${cluster.database}`, cluster.replicas[0].port],
      ]);
    } finally {
      await sdk.shutdown();
    }
  });

  it("spans are children of the active context", async () => {
    const sdk = new Sdk();
    const manager = new AlsContextManager();
    assert.ok(context.setGlobalContextManager(manager), "context manager registered");
    try {
      await using p = new Pool(config("otel-parent"));
      using _otel = instrument(p, { tracerProvider: sdk.tracerProvider });
      const tracer = sdk.tracerProvider.getTracer("test");
      const parent = tracer.startSpan("request");
      await context.with(trace.setSpan(context.active(), parent), async () => {
        await p.query("auto", "SELECT 1");
        await pause(1); // across an await
        using db = await p.acquire("read");
        await db.query("SELECT 2");
      });
      parent.end();
      const children = sdk.spans.filter((s) => s.name !== "request");
      assert.equal(children.length, 2);
      for (const child of children) {
        assert.equal(child.parentSpanContext?.spanId, parent.spanContext().spanId);
        assert.equal(child.spanContext().traceId, parent.spanContext().traceId);
      }
    } finally {
      context.disable();
      await sdk.shutdown();
    }
  });

  it("falls back to the global providers", async () => {
    const sdk = new Sdk();
    assert.ok(metrics.setGlobalMeterProvider(sdk.meterProvider));
    assert.ok(trace.setGlobalTracerProvider(sdk.tracerProvider));
    try {
      await using p = new Pool(config("otel-global"));
      using _otel = instrument(p);
      await p.query("auto", "SELECT 1");
      assert.equal(sdk.spans.length, 1);
      const m = await sdk.collect();
      assert.equal(
        m.histogram("db.client.operation.duration", {
          "db.system.name": "postgresql",
          "db.namespace": cluster.database,
          "server.address": "127.0.0.1",
          "server.port": cluster.primary.port,
          "db.operation.name": "SELECT",
        })?.count,
        1,
      );
      assert.equal(m.sum("db.client.connection.max", pool("auto")), 2);
    } finally {
      metrics.disable();
      trace.disable();
      await sdk.shutdown();
    }
  });

  it("stop() and Symbol.dispose remove it; a second instrument() on one pool throws", async () => {
    const sdk = new Sdk();
    try {
      await using p = new Pool(config("otel-stop"));
      assert.equal(p[poolHooks], undefined, "nothing installed by default");
      const stop = instrument(p, {
        meterProvider: sdk.meterProvider,
        tracerProvider: sdk.tracerProvider,
      });
      assert.notEqual(p[poolHooks], undefined);
      assert.throws(
        () => instrument(p, { meterProvider: sdk.meterProvider }),
        (err: Error) => err instanceof TypeError && /already instrumented/.test(err.message),
      );
      await p.query("auto", "SELECT 1");
      const stats = p.stats.bind(p);
      let reads = 0;
      p.stats = () => {
        reads++;
        return stats();
      };
      let m = await sdk.collect();
      assert.equal(m.sum("db.client.connection.max", pool("auto")), 2);
      assert.equal(reads, 1, "one pool.stats() per collection");
      stop();
      stop(); // idempotent
      assert.equal(p[poolHooks], undefined);
      await p.query("auto", "SELECT 2");
      assert.equal(sdk.spans.length, 1, "no span after stop()");
      // The batch callback is gone: pool.stats() is not read at collection any more.
      reads = 0;
      m = await sdk.collect();
      assert.equal(reads, 0, "no observation after stop()");
      assert.equal(
        m.histogram("db.client.operation.duration", {
          "db.system.name": "postgresql",
          "db.namespace": cluster.database,
          "server.address": "127.0.0.1",
          "server.port": cluster.primary.port,
          "db.operation.name": "SELECT",
        })?.count,
        1,
        "no measurement after stop()",
      );

      {
        using again = instrument(p, { tracerProvider: sdk.tracerProvider });
        assert.equal(typeof again[Symbol.dispose], "function");
        await p.query("auto", "SELECT 3");
      }
      assert.equal(p[poolHooks], undefined, "removed by using");
      await p.query("auto", "SELECT 4");
      assert.equal(sdk.spans.length, 2);
    } finally {
      await sdk.shutdown();
    }
  });

  it("only the otel entry depends on @opentelemetry/api, an optional peer dependency", async () => {
    const json = (file: string) => JSON.parse(readFileSync(join(ROOT, file), "utf8"));
    const pkg = json("package.json");
    assert.equal(pkg.dependencies?.["@opentelemetry/api"], undefined);
    assert.match(pkg.peerDependencies?.["@opentelemetry/api"] ?? "", /^\^1\./);
    assert.equal(pkg.peerDependenciesMeta?.["@opentelemetry/api"]?.optional, true);
    assert.match(json("deno.json").imports["@opentelemetry/api"], /^npm:@opentelemetry\/api@\^1\./);
    for (const entry of ["mod.ts", "edge.ts", "otel.ts"]) {
      const r = await runCommand(denoBin(), ["info", "--json", entry], { timeoutMs: 60_000 });
      assert.equal(r.code, 0, r.stderr);
      const modules: string[] = JSON.parse(r.stdout).modules.map((m: { specifier: string }) =>
        m.specifier
      );
      assert.equal(
        modules.some((m) => m.includes("@opentelemetry")),
        entry === "otel.ts",
        `${entry} module graph`,
      );
    }
  });

  it("classifies errors without reading messages, names operations by command", () => {
    assert.deepEqual(failureOf({ code: "40001", message: "x" }), {
      statusCode: "40001",
      type: "40001",
    });
    assert.deepEqual(failureOf({ code: "P0001" }), { statusCode: "P0001", type: "P0001" });
    assert.deepEqual(failureOf(Object.assign(new Error("refused"), { code: "ECONNREFUSED" })), {
      statusCode: undefined,
      type: "ECONNREFUSED",
    });
    assert.deepEqual(failureOf({ code: "EPIPE" }), { statusCode: undefined, type: "EPIPE" });
    assert.deepEqual(failureOf(new RangeError("r")), { statusCode: undefined, type: "RangeError" });
    assert.deepEqual(failureOf("text"), { statusCode: undefined, type: "_OTHER" });
    assert.deepEqual(failureOf(null), { statusCode: undefined, type: "_OTHER" });
    assert.equal(commandOf("select 1"), "SELECT");
    assert.equal(commandOf(" /* a /* nested */ comment */ (WITH x AS (SELECT 1) TABLE x)"), "WITH");
    assert.equal(commandOf("-- only a comment"), undefined);
    assert.equal(commandOf("SELECTED"), undefined);
    assert.equal(commandOf("frobnicate 1"), undefined);
    assert.equal(commandOf(""), undefined);
    // db.operation.name: one statement whose command says what it does.
    assert.equal(operationOf("select 1"), "SELECT");
    assert.equal(operationOf("INSERT INTO t SELECT * FROM u;  \n"), "INSERT");
    assert.equal(operationOf("(SELECT 1) UNION (SELECT 2)"), "SELECT");
    assert.equal(operationOf("COMMIT"), "COMMIT");
    assert.equal(operationOf("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x"), undefined);
    assert.equal(operationOf("SELECT 1; DELETE FROM t"), undefined);
    assert.equal(operationOf("SELECT ';'"), undefined, "no parsing: any inner semicolon counts");
    assert.equal(operationOf("frobnicate 1"), undefined);
  });
});

// Found by an audit: create_time counted the caller's pause before its first statement (the
// clock started at checkout, the session opens on first use); a checkout whose connection was
// swapped before its first statement never recorded its use_time; db.sql statements and
// ROLLBACKs (db.rollback(), the check-in rollback) had no span and no duration.
describe("@x/pgdbpool/otel: every connection, hold and statement", () => {
  /** A pool on the primary alone, instrumented into `sdk`. */
  function single(app: string, extra: Partial<PoolConfig> = {}) {
    const sdk = new Sdk();
    const p = new Pool({
      db: [cluster.endpoints()[0]],
      groups: { g: { connection_count: 1 }, tx: { connection_count: 1, autocommit: false } },
      application_name: app,
      health_check_interval_ms: 0,
      ...extra,
    });
    const stop = instrument(p, {
      meterProvider: sdk.meterProvider,
      tracerProvider: sdk.tracerProvider,
    });
    return {
      sdk,
      pool: p,
      async [Symbol.asyncDispose]() {
        stop();
        await p.close();
        await sdk.shutdown();
      },
    };
  }

  it("create_time is the connection's start-up, not the caller's pause before its first statement", async () => {
    await using s = single("otel-create");
    const db = await s.pool.acquire("g");
    try {
      // The caller does other work first; the session opens on the first statement.
      await pause(600);
      const t0 = performance.now();
      await db.query("SELECT 1");
      const firstMs = performance.now() - t0;
      const m = await s.sdk.collect();
      const created = m.histogram("db.client.connection.create_time", pool("g")) as {
        count: number;
        sum: number;
      };
      assert.equal(created.count, 1);
      assert.ok(
        created.sum * 1000 <= firstMs + 1,
        `create_time ${
          created.sum * 1000
        } ms, but the first statement, connect included, took ${firstMs} ms`,
      );
    } finally {
      db.release();
    }
  });

  it("use_time once per hold, also for a checkout whose connection was swapped", async () => {
    const app = "otel-swap";
    await using s = single(app);
    {
      await using db = await s.pool.acquire("g");
      await db.query("SELECT 1");
    }
    const db = await s.pool.acquire("g");
    try {
      // Its connection dies before the checkout's first statement: the checkout moves.
      await terminate(await poolSessions(cluster, app));
      await waitFor(async () => (await countPoolSessions(cluster, app)) === 0, {
        message: "sessions terminated",
      });
      const rows = await db.query<{ n: number }>("SELECT 2 AS n");
      assert.equal(rows[0].n, 2);
    } finally {
      db.release();
    }
    const m = await s.sdk.collect();
    const waits = m.histogram("db.client.connection.wait_time", pool("g")) as { count: number };
    const uses = m.histogram("db.client.connection.use_time", pool("g")) as { count: number };
    assert.equal(s.pool.stats().groups.g.checkouts, 2);
    assert.equal(waits.count, 2);
    assert.equal(uses.count, 2, "one use_time per hold");
  });

  it("db.sql statements, db.rollback() and check-in rollbacks have spans and durations", async () => {
    await using s = single("otel-gap");
    const ops = () =>
      s.sdk.spans.map((span) => String(span.attributes["db.operation.name"] ?? "?"));
    const step = async (fn: () => Promise<unknown>) => {
      s.sdk.spanExporter.reset();
      await fn();
      // The check-in rollback may still be running when the caller is done.
      return ops();
    };
    assert.deepEqual(
      await step(async () => {
        await using db = await s.pool.acquire("g");
        const [{ n }] = await db.sql<{ n: number }[]>`SELECT ${1}::int AS n`;
        assert.equal(n, 1);
        await db.sql.unsafe("SELECT 2");
        await db.sql`SELECT nope FROM nowhere`.catch(() => {});
        // A fragment is never sent on its own: one statement, one span.
        const [{ m }] = await db.sql<{ m: number }[]>`SELECT ${db.sql`3`}::int AS m`;
        assert.equal(m, 3);
      }),
      ["SELECT", "SELECT", "SELECT", "SELECT"],
    );
    // Bun's SQL keeps the SQLSTATE in errno.
    assert.deepEqual(failureOf({ code: "ERR_POSTGRES_SERVER_ERROR", errno: "42P01" }), {
      statusCode: "42P01",
      type: "42P01",
    });
    const failed = s.sdk.spans[2];
    assert.equal(failed.status.code, SpanStatusCode.ERROR);
    assert.equal(failed.attributes["db.response.status_code"], "42P01");
    assert.deepEqual(
      await step(async () => {
        await using db = await s.pool.acquire("tx");
        await db.query("SELECT 1");
        await db.rollback();
      }),
      ["SELECT", "ROLLBACK"],
    );
    assert.deepEqual(
      await step(async () => {
        const db = await s.pool.acquire("tx");
        await db.query("SELECT 1");
        await db[Symbol.asyncDispose](); // uncommitted: rolled back at check-in
      }),
      ["SELECT", "ROLLBACK"],
    );
    assert.deepEqual(
      await step(() =>
        s.pool.transaction("tx", async (db) => {
          await db.query("SELECT 1");
          throw new Error("rolled back");
        }).catch(() => {})
      ),
      ["SELECT", "ROLLBACK"],
    );
    const m = await s.sdk.collect();
    const durations = m.get("db.client.operation.duration").dataPoints;
    const count = (op: string) =>
      durations.filter((p) =>
        p.attributes["db.operation.name"] === op && p.attributes["error.type"] === undefined
      )
        .reduce((n, p) => n + (p.value as { count: number }).count, 0);
    assert.equal(count("ROLLBACK"), 3);
    assert.equal(count("SELECT"), 6);
  });
});
