/**
 * `instrument(pool)`: installs an OpenTelemetry observer on a pool through its hooks (no
 * `diagnostics_channel`, no monkey-patching), and returns the function that removes it.
 *
 * @module
 */

import { type Histogram, metrics, trace } from "@opentelemetry/api";
import type * as api from "@opentelemetry/api";
import { type PoolHooks, poolHooks } from "../hooks.ts";
import type { Pool } from "../pool.ts";
import { quote } from "../quote.ts";
import { GroupAttributeCache, ServerAttributeCache } from "./attributes.ts";
import { createHistograms, observePool } from "./metrics.ts";
import { SpanNames } from "./span_name.ts";
import { observeStatement, type StatementObserver } from "./statements.ts";

const ignore = () => {};

/** The instrumentation scope name of the meter and tracer. */
export const SCOPE = "@x/pgdbpool";

/**
 * `MeterProvider` of `@opentelemetry/api`: where {@linkcode instrument} creates its meter.
 *
 * @example The SDK's provider
 * ```ts
 * import type { MeterProvider } from "@x/pgdbpool/otel";
 * import { metrics } from "@opentelemetry/api";
 *
 * const provider: MeterProvider = metrics.getMeterProvider();
 * ```
 */
export type MeterProvider = api.MeterProvider;

/**
 * `TracerProvider` of `@opentelemetry/api`: where {@linkcode instrument} creates its tracer.
 *
 * @example The global provider
 * ```ts
 * import type { TracerProvider } from "@x/pgdbpool/otel";
 * import { trace } from "@opentelemetry/api";
 *
 * const provider: TracerProvider = trace.getTracerProvider();
 * ```
 */
export type TracerProvider = api.TracerProvider;

/**
 * Options of {@linkcode instrument}.
 *
 * @example Explicit providers, query text on spans
 * ```ts
 * import { Pool } from "@x/pgdbpool";
 * import {
 *   instrument,
 *   type InstrumentOptions,
 *   type MeterProvider,
 *   type TracerProvider,
 * } from "@x/pgdbpool/otel";
 *
 * function observe(pool: Pool, meterProvider: MeterProvider, tracerProvider: TracerProvider) {
 *   const options: InstrumentOptions = { meterProvider, tracerProvider, queryText: true };
 *   return instrument(pool, options);
 * }
 * ```
 */
export interface InstrumentOptions {
  /** Where metrics go; default: the global provider (`metrics.getMeterProvider()`). */
  meterProvider?: MeterProvider;
  /** Where spans go; default: the global provider (`trace.getTracerProvider()`). */
  tracerProvider?: TracerProvider;
  /**
   * Put each statement's text on its span as `db.query.text` (default `false`). Parameters are
   * never recorded; only enable this when statements carry no literal secrets.
   */
  queryText?: boolean;
}

/**
 * Removes the instrumentation when called or disposed (idempotent).
 *
 * @example Scoped instrumentation
 * ```ts
 * import { Pool } from "@x/pgdbpool";
 * import { instrument } from "@x/pgdbpool/otel";
 *
 * async function traced(pool: Pool) {
 *   using _otel = instrument(pool);
 *   await pool.query("default", "SELECT 1");
 * } // removed here
 * ```
 */
export interface Instrumentation extends Disposable {
  /** Removes the hooks from the pool and unregisters the observable instruments. */
  (): void;
}

/**
 * Instruments `pool` with OpenTelemetry metrics and spans following the database-client
 * semantic conventions, and returns the function that removes it (also `Symbol.dispose`).
 * Uses the global meter and tracer providers unless others are given. One instrumentation per
 * pool: installing a second one on the same pool throws a `TypeError`.
 *
 * Metrics (`db.client.connection.pool.name` is the group name):
 * `db.client.connection.count` (`db.client.connection.state`: `idle` / `used`),
 * `db.client.connection.max`, `db.client.connection.pending_requests`,
 * `db.client.connection.timeouts`, `db.client.connection.create_time`,
 * `db.client.connection.wait_time`, `db.client.connection.use_time` and
 * `db.client.operation.duration` (`db.system.name`, `db.namespace`, `server.address`,
 * `server.port`, `db.operation.name` when the statement is one command, e.g. `SELECT`; on
 * failure `error.type` and `db.response.status_code`). Spans: one CLIENT span per statement
 * with the same attributes, named `{db.operation.name} {db.namespace}` (or `{db.namespace}`).
 *
 * @example Metrics and traces to the global providers
 * ```ts
 * import { Pool } from "@x/pgdbpool";
 * import { instrument } from "@x/pgdbpool/otel";
 *
 * await using pool = new Pool({
 *   db: [{ host: "127.0.0.1", name: "app", user: "app", pass: "secret" }],
 *   groups: { default: { connection_count: 4 } },
 * });
 * const stop = instrument(pool);
 * await pool.query("default", "SELECT 1"); // a span "SELECT app" and its duration
 * stop();
 * ```
 */
export function instrument(pool: Pool, options: InstrumentOptions = {}): Instrumentation {
  // Refused before anything is registered: a URL or a config object passed by mistake used to
  // register the metrics callback and then fail (Deno's TypeError quoting the URL, password
  // included) or be instrumented without a word. Told by the pool's observer slot, not by
  // `instanceof`: importing the Pool class would load the driver into this entry, which must
  // run without Node modules (workerd without nodejs_compat). A string may be a URL with its
  // password: only its kind is named.
  if (
    typeof pool !== "object" || pool === null || !(poolHooks in pool) ||
    typeof (pool as { stats?: unknown }).stats !== "function"
  ) {
    const given = typeof pool === "string" ? "a string" : quote(pool);
    throw new TypeError(`instrument() needs a Pool of @x/pgdbpool (got ${given})`);
  }
  if (pool[poolHooks] !== undefined) {
    throw new TypeError(
      "pool is already instrumented: call the function the first instrument() returned before instrumenting it again",
    );
  }
  const meter = (options.meterProvider ?? metrics.getMeterProvider()).getMeter(SCOPE);
  const tracer = (options.tracerProvider ?? trace.getTracerProvider()).getTracer(SCOPE);
  const groups = new GroupAttributeCache();
  const histograms = createHistograms(meter);
  const statements: StatementObserver = {
    tracer,
    duration: histograms.operation,
    servers: new ServerAttributeCache(),
    names: new SpanNames(),
    queryText: options.queryText === true,
  };
  // Hooks run inside the pool's bookkeeping and must never throw: a misbehaving provider loses
  // its measurement, never a checkout.
  const record = (histogram: Histogram, group: string, ms: number) => {
    try {
      histogram.record(ms / 1000, groups.of(group).pool);
    } catch {
      // dropped
    }
  };
  const hooks: PoolHooks = {
    statement(start) {
      try {
        return observeStatement(statements, start);
      } catch {
        return ignore;
      }
    },
    checkout: (group, waitMs) => record(histograms.wait, group, waitMs),
    checkin: (group, heldMs) => record(histograms.use, group, heldMs),
    connected: (group, ms) => record(histograms.create, group, ms),
  };
  const unobserve = observePool(meter, () => pool.stats(), groups);
  pool[poolHooks] = hooks;
  let installed = true;
  const stop = (() => {
    if (!installed) return;
    installed = false;
    if (pool[poolHooks] === hooks) pool[poolHooks] = undefined;
    unobserve();
  }) as Instrumentation;
  // Runtimes without explicit resource management keep the plain function.
  if (typeof Symbol.dispose === "symbol") stop[Symbol.dispose] = stop;
  return stop;
}
