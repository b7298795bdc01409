/**
 * `pool.stats()`: plain figures per group and per endpoint, ready for JSON and metrics exporters.
 *
 * @module
 */

import type { Endpoint, EndpointRole, EndpointState } from "./endpoint.ts";
import type { Group } from "./group.ts";

/**
 * Figures of one group.
 *
 * @example Alerting on a saturated group
 * ```ts
 * import { Pool } from "@x/pgdbpool";
 *
 * const saturated = (pool: Pool, group: string) => pool.stats().groups[group].waiting > 0;
 * ```
 */
export interface GroupStats {
  /** `connection_count`. */
  size: number;
  /** Server connections open (idle or busy). */
  open: number;
  /** Idle connections ready for a checkout. */
  idle: number;
  /** Connections checked out. */
  busy: number;
  /** Checkouts waiting for a connection. */
  waiting: number;
  /** Checkouts so far. */
  checkouts: number;
  /** Checkouts that gave up after `acquire_timeout_ms`. */
  timeouts: number;
  /** Wait for a connection, median and 99th percentile over recent checkouts, in ms. */
  wait_ms: { p50: number; p99: number };
}

/**
 * Figures of one endpoint.
 *
 * @example Listing lagging replicas
 * ```ts
 * import { Pool } from "@x/pgdbpool";
 *
 * const lagging = (pool: Pool) => pool.stats().endpoints.filter((e) => e.lag_ms > 1000);
 * ```
 */
export interface EndpointStats {
  /** Host name or address. */
  host: string;
  /** TCP port. */
  port: number;
  /** Index in the configuration's `db` list. */
  index: number;
  /** Detected role. */
  role: EndpointRole;
  /** Health state. */
  state: EndpointState;
  /** Pooled connections open to it, over all groups. */
  connections: number;
  /** Connection-level errors seen. */
  errors: number;
  /** Health probes run so far. */
  probes: number;
  /** Smoothed health-probe round trip in ms, once probed. */
  latency_ms: number | null;
  /** Replication lag in ms at the last probe (0 for a primary). */
  lag_ms: number;
  /** WAL position at the last probe (replay position on a replica). */
  lsn: string | null;
  /**
   * The timeline a primary writes on, at its last probe (`null` on a replica or before a
   * probe). Of two servers that both claim the primary role, the pool writes on the later one.
   */
  timeline: number | null;
}

/**
 * Everything `pool.stats()` returns.
 *
 * @example Serving stats as JSON
 * ```ts
 * import { Pool } from "@x/pgdbpool";
 *
 * const metrics = (pool: Pool) => Response.json(pool.stats());
 * ```
 */
export interface PoolStats {
  /** Figures per configured group. */
  groups: Record<string, GroupStats>;
  /** Figures per endpoint, in configuration order. */
  endpoints: EndpointStats[];
}

function lsnText(lsn: bigint | undefined): string | null {
  if (lsn === undefined) return null;
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${
    (lsn & 0xffffffffn).toString(16).toUpperCase()
  }`;
}

/** Collects the figures of `groups` and `endpoints`. */
export function statsOf(groups: readonly Group[], endpoints: readonly Endpoint[]): PoolStats {
  const out: PoolStats = { groups: {}, endpoints: [] };
  for (const g of groups) {
    const total = g.counters.checkouts;
    out.groups[g.name] = {
      size: g.settings.size,
      open: g.open,
      idle: g.idle,
      busy: g.busy,
      waiting: g.waiting,
      checkouts: total,
      timeouts: g.counters.timeouts,
      wait_ms: {
        p50: g.waitSamples.quantile(0.5, total),
        p99: g.waitSamples.quantile(0.99, total),
      },
    };
  }
  for (const e of endpoints) {
    let connections = 0;
    for (const g of groups) connections += g.openOn(e);
    out.endpoints.push({
      ...e.info,
      role: e.role,
      state: e.state,
      connections,
      errors: e.errors,
      probes: e.probes,
      latency_ms: e.latencyMs ?? null,
      lag_ms: e.lagMs,
      lsn: lsnText(e.lsn),
      timeline: e.timeline ?? null,
    });
  }
  return out;
}
