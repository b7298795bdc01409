/**
 * OpenTelemetry metrics and traces for a pgdbpool pool, following the database-client semantic
 * conventions. Depends on `@opentelemetry/api` only (bring your own SDK); a pool that is not
 * instrumented measures nothing and loads none of this.
 *
 * Works on Deno, Bun, Node 24 and Cloudflare Workers: the pool calls the instrumentation
 * directly (no `diagnostics_channel`, no monkey-patching). Spans are children of the active
 * context (`context.active()`).
 *
 * @example Metrics and traces with the SDK
 * ```ts
 * import { Pool } from "@x/pgdbpool";
 * import { instrument } from "@x/pgdbpool/otel";
 * import type { MeterProvider, TracerProvider } from "@opentelemetry/api";
 *
 * declare const meterProvider: MeterProvider; // e.g. new MeterProvider({ readers }) of the SDK
 * declare const tracerProvider: TracerProvider;
 *
 * await using pool = new Pool({
 *   db: [{ host: "127.0.0.1", name: "app", user: "app", pass: "secret" }],
 *   groups: { default: { connection_count: 4 } },
 * });
 * using _otel = instrument(pool, { meterProvider, tracerProvider });
 * await pool.query("default", "SELECT 1");
 * ```
 *
 * @module
 */

export {
  instrument,
  type Instrumentation,
  type InstrumentOptions,
  type MeterProvider,
  type TracerProvider,
} from "./src/otel/instrument.ts";
