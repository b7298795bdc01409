/**
 * The metric instruments of the OpenTelemetry database-client semantic conventions: the pool's
 * state read from `pool.stats()` at each collection (one batch callback), and histograms fed by
 * the pool's hooks.
 *
 * @module
 */

import {
  type BatchObservableCallback,
  type Histogram,
  type Meter,
  type Observable,
  ValueType,
} from "@opentelemetry/api";
import type { PoolStats } from "../stats.ts";
import type { GroupAttributeCache } from "./attributes.ts";

/** Seconds: the bucket boundaries the conventions advise for `db.client.operation.duration`. */
export const SECONDS_BUCKETS: readonly number[] = Object.freeze([
  0.001,
  0.005,
  0.01,
  0.05,
  0.1,
  0.5,
  1,
  5,
  10,
]);

/** The histograms the hooks record into. */
export interface PoolHistograms {
  /** `db.client.operation.duration` (s). */
  readonly operation: Histogram;
  /** `db.client.connection.create_time` (s). */
  readonly create: Histogram;
  /** `db.client.connection.wait_time` (s). */
  readonly wait: Histogram;
  /** `db.client.connection.use_time` (s). */
  readonly use: Histogram;
}

function histogram(meter: Meter, name: string, description: string): Histogram {
  return meter.createHistogram(name, {
    description,
    unit: "s",
    valueType: ValueType.DOUBLE,
    advice: { explicitBucketBoundaries: [...SECONDS_BUCKETS] },
  });
}

/** Creates the histograms on `meter`. */
export function createHistograms(meter: Meter): PoolHistograms {
  return {
    operation: histogram(
      meter,
      "db.client.operation.duration",
      "Duration of database client operations.",
    ),
    create: histogram(
      meter,
      "db.client.connection.create_time",
      "The time it took to create a new connection.",
    ),
    wait: histogram(
      meter,
      "db.client.connection.wait_time",
      "The time it took to obtain an open connection from the pool.",
    ),
    use: histogram(
      meter,
      "db.client.connection.use_time",
      "The time between borrowing a connection and returning it to the pool.",
    ),
  };
}

/**
 * Registers the observable instruments (`db.client.connection.count`, `.max`,
 * `.pending_requests`, `.timeouts`) with one batch callback that reads `stats()` once per
 * collection; returns the function that unregisters it.
 */
export function observePool(
  meter: Meter,
  stats: () => PoolStats,
  groups: GroupAttributeCache,
): () => void {
  const count = meter.createObservableUpDownCounter("db.client.connection.count", {
    description:
      "The number of connections that are currently in state described by the `state` attribute.",
    unit: "{connection}",
    valueType: ValueType.INT,
  });
  const max = meter.createObservableUpDownCounter("db.client.connection.max", {
    description: "The maximum number of open connections allowed.",
    unit: "{connection}",
    valueType: ValueType.INT,
  });
  const pending = meter.createObservableUpDownCounter("db.client.connection.pending_requests", {
    description: "The number of current pending requests for an open connection.",
    unit: "{request}",
    valueType: ValueType.INT,
  });
  const timeouts = meter.createObservableCounter("db.client.connection.timeouts", {
    description:
      "The number of connection timeouts that have occurred trying to obtain a connection from the pool.",
    unit: "{timeout}",
    valueType: ValueType.INT,
  });
  const observables: Observable[] = [count, max, pending, timeouts];
  const callback: BatchObservableCallback = (result) => {
    const all = stats().groups;
    for (const name in all) {
      const g = all[name];
      const a = groups.of(name);
      // A checkout holds one connection; connections still opening in the background for no
      // one (warm replacements) are neither idle nor used.
      const used = Math.max(0, Math.min(g.busy, g.open - g.idle));
      result.observe(count, g.idle, a.idle);
      result.observe(count, used, a.used);
      result.observe(max, g.size, a.pool);
      result.observe(pending, g.waiting, a.pool);
      result.observe(timeouts, g.timeouts, a.pool);
    }
  };
  meter.addBatchObservableCallback(callback, observables);
  return () => meter.removeBatchObservableCallback(callback, observables);
}
