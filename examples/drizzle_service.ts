/**
 * A small notes service on Drizzle over pgdbpool, with read/write groups and the pool's
 * OpenTelemetry metrics on a Prometheus endpoint.
 *
 * ```sh
 * PGDBPOOL_DB='[{"host":"db1","name":"app","user":"app","pass":"secret"},
 *               {"host":"db2","name":"app","user":"app","pass":"secret"}]' PORT=8000 \
 *   deno run -A examples/drizzle_service.ts
 * ```
 *
 * Writes go to the primary (`write` group); reads to a replica (`read` group, the primary when
 * no replica is up or within `max_replica_lag_ms`). Read-your-writes is on: a read that follows
 * a write of this process goes to a replica only once the replica has replayed it, so
 * `POST /notes` followed by `GET /notes/:id` always finds the note.
 *
 * Environment:
 * - `PGDBPOOL_DB`: a `postgres://` URL, or a JSON endpoint object or array (required)
 * - `PORT`: TCP port (default 8000; 0 picks a free one); `HOSTNAME` (default 127.0.0.1)
 * - `PGDBPOOL_APP`: `application_name` (default `pgdbpool-drizzle-service`)
 *
 * Routes:
 * - `POST /notes` with `{ "body": "..." }`: creates a note, answers it (201)
 * - `GET /notes`: the 20 newest notes, and the port of the server that answered
 * - `GET /notes/:id`: one note (404 when there is none)
 * - `GET /metrics`: Prometheus text format: `db_client_operation_duration_seconds`,
 *   `db_client_connection_count`, `db_client_connection_wait_time_seconds`, ... per group
 * - `GET /health`
 *
 * On SIGINT or SIGTERM it stops accepting requests, lets those in flight finish, closes the
 * pool and exits 0.
 *
 * @module
 */

import { desc, eq, sql } from "drizzle-orm";
import { pgTable, serial, text, timestamp } from "drizzle-orm/pg-core";
import {
  DataPointType,
  type Histogram,
  MeterProvider,
  MetricReader,
  type ResourceMetrics,
} from "@opentelemetry/sdk-metrics";
import { AcquireTimeoutError, type EndpointConfig, Pool } from "../mod.ts";
import { drizzle } from "../drizzle.ts";
import { instrument } from "../otel.ts";

const notes = pgTable("notes", {
  id: serial().primaryKey(),
  body: text().notNull(),
  createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
});

function dbFromEnv(): string | EndpointConfig | EndpointConfig[] {
  const raw = Deno.env.get("PGDBPOOL_DB");
  if (!raw) throw new Error("set PGDBPOOL_DB to a postgres:// URL or a JSON endpoint list");
  return raw.trimStart().startsWith("postgres") ? raw : JSON.parse(raw);
}

const pool = new Pool({
  db: dbFromEnv(),
  groups: {
    write: { connection_count: 4, role: "primary", autocommit: false, acquire_timeout_ms: 5000 },
    read: {
      connection_count: 8,
      role: "prefer-replica",
      max_replica_lag_ms: 2000,
      acquire_timeout_ms: 5000,
    },
  },
  application_name: Deno.env.get("PGDBPOOL_APP") ?? "pgdbpool-drizzle-service",
});
const db = drizzle(pool, { group: "write", read: "read", read_your_writes: true });

// ---------------------------------------------------------------- metrics

/** A reader that collects when Prometheus scrapes (pull), nothing in between. */
class ScrapeReader extends MetricReader {
  protected onForceFlush(): Promise<void> {
    return Promise.resolve();
  }
  protected onShutdown(): Promise<void> {
    return Promise.resolve();
  }
}

const reader = new ScrapeReader();
const meterProvider = new MeterProvider({ readers: [reader] });
const stopMetrics = instrument(pool, { meterProvider });

/** OpenTelemetry's name and unit as a Prometheus metric name (`db.x.y`, `s` → `db_x_y_seconds`). */
function promName(name: string, unit: string): string {
  const base = name.replace(/[^a-zA-Z0-9_:]/g, "_");
  return unit === "s" ? `${base}_seconds` : base;
}

function labels(attributes: Record<string, unknown>, extra: Record<string, string> = {}): string {
  const all = { ...attributes, ...extra };
  const parts = Object.entries(all).map(([k, v]) =>
    `${k.replace(/[^a-zA-Z0-9_]/g, "_")}="${
      String(v).replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n")
    }"`
  );
  return parts.length === 0 ? "" : `{${parts.join(",")}}`;
}

/** Prometheus text exposition format (0.0.4) of what the SDK collected. */
function prometheusText(resourceMetrics: ResourceMetrics): string {
  const out: string[] = [];
  for (const scope of resourceMetrics.scopeMetrics) {
    for (const metric of scope.metrics) {
      const { name, description, unit } = metric.descriptor;
      let prom = promName(name, unit);
      if (metric.dataPointType === DataPointType.HISTOGRAM) {
        out.push(`# HELP ${prom} ${description}`, `# TYPE ${prom} histogram`);
        for (const point of metric.dataPoints) {
          const h = point.value as Histogram;
          let cumulative = 0;
          h.buckets.boundaries.forEach((le, i) => {
            cumulative += h.buckets.counts[i];
            out.push(`${prom}_bucket${labels(point.attributes, { le: String(le) })} ${cumulative}`);
          });
          out.push(`${prom}_bucket${labels(point.attributes, { le: "+Inf" })} ${h.count}`);
          out.push(`${prom}_sum${labels(point.attributes)} ${h.sum ?? 0}`);
          out.push(`${prom}_count${labels(point.attributes)} ${h.count}`);
        }
      } else if (
        metric.dataPointType === DataPointType.SUM || metric.dataPointType === DataPointType.GAUGE
      ) {
        const counter = metric.dataPointType === DataPointType.SUM && metric.isMonotonic;
        if (counter) prom = `${prom}_total`;
        out.push(
          `# HELP ${prom} ${description}`,
          `# TYPE ${prom} ${counter ? "counter" : "gauge"}`,
        );
        for (const point of metric.dataPoints) {
          out.push(`${prom}${labels(point.attributes)} ${point.value as number}`);
        }
      }
    }
  }
  return out.join("\n") + "\n";
}

// ---------------------------------------------------------------- service

await db.execute(sql`CREATE TABLE IF NOT EXISTS notes (
  id serial PRIMARY KEY,
  body text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
)`);

const server = sql<number>`inet_server_port()`;

async function handle(request: Request): Promise<Response> {
  const url = new URL(request.url);
  if (url.pathname === "/health") return new Response("ok");
  if (url.pathname === "/metrics") {
    const { resourceMetrics } = await reader.collect();
    return new Response(prometheusText(resourceMetrics), {
      headers: { "content-type": "text/plain; version=0.0.4" },
    });
  }
  if (url.pathname === "/notes" && request.method === "POST") {
    const { body } = await request.json();
    if (typeof body !== "string") {
      return Response.json({ error: "body must be a string" }, { status: 400 });
    }
    const [note] = await db.insert(notes).values({ body }).returning();
    return Response.json(note, { status: 201 });
  }
  if (url.pathname === "/notes" && request.method === "GET") {
    const rows = await db.select({ id: notes.id, body: notes.body, server }).from(notes)
      .orderBy(desc(notes.id)).limit(20);
    return Response.json({ server: rows[0]?.server, notes: rows.map(({ server: _, ...n }) => n) });
  }
  const match = /^\/notes\/(\d+)$/.exec(url.pathname);
  if (match && request.method === "GET") {
    const [note] = await db.select({
      id: notes.id,
      body: notes.body,
      createdAt: notes.createdAt,
      server,
    })
      .from(notes).where(eq(notes.id, Number(match[1])));
    return note === undefined ? new Response("not found", { status: 404 }) : Response.json(note);
  }
  return new Response("not found", { status: 404 });
}

const http = Deno.serve({
  hostname: Deno.env.get("HOSTNAME") ?? "127.0.0.1",
  port: Number(Deno.env.get("PORT") ?? 8000),
  onListen: ({ hostname, port }) => console.log(`listening on http://${hostname}:${port}/`),
}, async (request) => {
  try {
    return await handle(request);
  } catch (err) {
    // Drizzle wraps the pool's errors: the cause says what happened.
    const cause = (err as Error).cause ?? err;
    if (cause instanceof AcquireTimeoutError) return new Response(cause.message, { status: 503 });
    return Response.json({ error: (cause as Error).message }, { status: 500 });
  }
});

let stopping = false;
async function shutdown(signal: Deno.Signal): Promise<void> {
  if (stopping) return;
  stopping = true;
  console.log(`${signal}: shutting down`);
  await http.shutdown(); // stops listening, waits for requests in flight
  stopMetrics();
  await meterProvider.shutdown();
  await pool.close();
  console.log("pool closed");
  Deno.exit(0);
}
Deno.addSignalListener("SIGINT", () => void shutdown("SIGINT"));
Deno.addSignalListener("SIGTERM", () => void shutdown("SIGTERM"));
