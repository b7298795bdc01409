/**
 * Events a pool dispatches on itself (it is an `EventTarget`). A plain `Event` subclass with a
 * `detail`, because `CustomEvent` is missing from some edge runtimes.
 *
 * @module
 */

import type { EndpointInfo, EndpointRole } from "./endpoint.ts";

/**
 * What each event type carries in `detail`. `pool.addEventListener` is typed by this map, so
 * `pool.addEventListener("endpointdown", (e) => e.detail.endpoint.host)` needs no cast.
 *
 * @example A typed listener
 * ```ts
 * import type { Pool } from "@x/pgdbpool";
 *
 * function logLeaks(pool: Pool) {
 *   pool.addEventListener("leak", (e) => {
 *     console.warn(`${e.detail.group}: held ${e.detail.held_ms} ms, taken at\n${e.detail.stack}`);
 *   });
 * }
 * ```
 */
export interface PoolEventDetailMap {
  /** A server stopped answering its health probe. */
  endpointdown: { readonly endpoint: EndpointInfo; readonly reason: string };
  /** A server that was down answers again. */
  endpointup: { readonly endpoint: EndpointInfo };
  /** A server's detected role changed (promotion, demotion, first detection). */
  rolechange: {
    readonly endpoint: EndpointInfo;
    readonly from: EndpointRole;
    readonly to: EndpointRole;
  };
  /** A checkout waited `acquire_timeout_ms` in vain. */
  acquiretimeout: { readonly group: string };
  /** A statement of `group` failed at the connection level on `endpoint`. */
  connectionerror: {
    readonly group: string;
    readonly endpoint: EndpointInfo;
    readonly reason: string;
  };
  /** A replica left `group`'s routing: its lag passed `max_replica_lag_ms`. */
  replicalagging: {
    readonly group: string;
    readonly endpoint: EndpointInfo;
    readonly lag_ms: number;
  };
  /** A replica that lagged is back in `group`'s routing. */
  replicacaughtup: {
    readonly group: string;
    readonly endpoint: EndpointInfo;
    readonly lag_ms: number;
  };
  /**
   * A handler was held longer than `leak_detection_ms` (`reclaimed: false`), or became
   * unreachable without release and was reclaimed (`reclaimed: true`). `stack` is where it was
   * checked out.
   */
  leak: {
    readonly group: string;
    readonly held_ms: number;
    readonly stack: string;
    readonly reclaimed: boolean;
  };
  /** The LISTEN connection was lost: notifications may be missed until `listenrestored`. */
  listenlost: { readonly endpoint: EndpointInfo; readonly reason: string };
  /** Every channel is listened to again, on `endpoint` (the current primary). */
  listenrestored: { readonly endpoint: EndpointInfo; readonly channels: readonly string[] };
}

/**
 * Names of the events a pool dispatches.
 *
 * @example Subscribing to every event
 * ```ts
 * import type { Pool, PoolEventType } from "@x/pgdbpool";
 *
 * // A record keyed by PoolEventType stops compiling when a type is added or removed.
 * const every: Record<PoolEventType, true> = {
 *   endpointdown: true,
 *   endpointup: true,
 *   rolechange: true,
 *   acquiretimeout: true,
 *   connectionerror: true,
 *   replicalagging: true,
 *   replicacaughtup: true,
 *   leak: true,
 *   listenlost: true,
 *   listenrestored: true,
 * };
 * function record(pool: Pool, seen: string[]) {
 *   for (const type of Object.keys(every) as PoolEventType[]) {
 *     pool.addEventListener(type, (e) => seen.push(e.type));
 *   }
 * }
 * ```
 */
export type PoolEventType = keyof PoolEventDetailMap;

/**
 * Every field any event may carry, all optional: for code that handles events of several types
 * alike. A listener registered for one type gets that type's exact detail instead.
 *
 * @example Formatting an event
 * ```ts
 * import type { PoolEventDetail } from "@x/pgdbpool";
 *
 * const line = (d: PoolEventDetail) => `${d.group ?? ""} ${d.endpoint?.port ?? ""} ${d.reason ?? ""}`;
 * ```
 */
export interface PoolEventDetail {
  /** Endpoint concerned. */
  readonly endpoint?: EndpointInfo;
  /** Group concerned. */
  readonly group?: string;
  /** Role before (`rolechange`). */
  readonly from?: string;
  /** New role (`rolechange`). */
  readonly to?: string;
  /** Error code or message behind the event, never credentials. */
  readonly reason?: string;
  /** Replica lag that moved it out of or back into a group (`replicalagging`, `replicacaughtup`). */
  readonly lag_ms?: number;
  /** How long the handler had held its connection (`leak`; 0 if it was still waiting). */
  readonly held_ms?: number;
  /** Where the handler was checked out (`leak`). */
  readonly stack?: string;
  /** Whether an unreachable handler was reclaimed (`leak`). */
  readonly reclaimed?: boolean;
  /** Channels listened to again (`listenrestored`). */
  readonly channels?: readonly string[];
}

/**
 * An event of a pool. `detail` is typed by the event type when the listener is registered for
 * one type.
 *
 * @example Recording topology changes
 * ```ts
 * import { Pool } from "@x/pgdbpool";
 *
 * const pool = new Pool({
 *   db: [{ host: "127.0.0.1", name: "app", user: "app", pass: "secret" }],
 *   groups: { default: { connection_count: 2 } },
 * });
 * const changes: string[] = [];
 * pool.addEventListener("rolechange", (e) => {
 *   const { endpoint, from, to } = e.detail;
 *   changes.push(`${endpoint.host}:${endpoint.port} ${from} -> ${to}`);
 * });
 * await pool.close();
 * ```
 */
export class PoolEvent<D extends PoolEventDetail = PoolEventDetail> extends Event {
  /** What happened. */
  readonly detail: D;
  /** Creates an event of `type` with `detail`. */
  constructor(type: PoolEventType, detail: D) {
    super(type);
    this.detail = detail;
  }
}

/** Makes the event of `type` with its exact detail. */
export function poolEvent<K extends PoolEventType>(
  type: K,
  detail: PoolEventDetailMap[K],
): PoolEvent<PoolEventDetailMap[K]> {
  return new PoolEvent(type, detail);
}

/**
 * A listener of one event type, as `pool.addEventListener` takes it.
 *
 * @example Declaring a listener apart
 * ```ts
 * import type { PoolEventListener } from "@x/pgdbpool";
 *
 * const onDown: PoolEventListener<"endpointdown"> = (e) => console.warn(e.detail.reason);
 * ```
 */
export type PoolEventListener<K extends PoolEventType> = (
  event: PoolEvent<PoolEventDetailMap[K]>,
) => void;

/** Short, credential-free description of an error for event details. */
export function reasonOf(err: unknown): string {
  const e = err as { code?: unknown; message?: unknown } | null;
  if (typeof e?.code === "string") return e.code;
  if (typeof e?.message === "string") return e.message;
  return String(err);
}
