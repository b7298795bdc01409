/**
 * Events a pool dispatches on itself (it is an `EventTarget`). A plain `Event` subclass with a
 * `detail`, because `CustomEvent` is missing from some edge runtimes.
 *
 * @module
 */

/**
 * Names of the events a pool dispatches.
 *
 * @example Subscribing to every event
 * ```ts
 * import type { Pool, PoolEventType } from "@x/pgdbpool";
 *
 * const types: PoolEventType[] = ["endpointdown", "endpointup", "rolechange", "acquiretimeout", "connectionerror"];
 * function record(pool: Pool, seen: string[]) {
 *   for (const type of types) pool.addEventListener(type, (e) => seen.push(e.type));
 * }
 * ```
 */
export type PoolEventType =
  | "endpointdown"
  | "endpointup"
  | "rolechange"
  | "acquiretimeout"
  | "connectionerror"
  | "replicalagging"
  | "replicacaughtup";

/**
 * What each event carries. Endpoints are described by host, port and index only.
 *
 * @example Formatting an event
 * ```ts
 * import type { PoolEventDetail } from "@x/pgdbpool";
 *
 * const line = (d: PoolEventDetail) => `${d.group ?? ""} ${d.endpoint?.port ?? ""} ${d.reason ?? ""}`;
 * ```
 */
export interface PoolEventDetail {
  /** Endpoint concerned (all but `acquiretimeout`). */
  endpoint?: { host: string; port: number; index: number };
  /** Group concerned (`acquiretimeout`, `connectionerror`, `replicalagging`, `replicacaughtup`). */
  group?: string;
  /** Role before and after (`rolechange`). */
  from?: string;
  /** New role (`rolechange`). */
  to?: string;
  /** Error code or message behind the event, never credentials. */
  reason?: string;
  /** Replica lag that moved it out of or back into a group (`replicalagging`, `replicacaughtup`). */
  lag_ms?: number;
}

/**
 * An event of a pool.
 *
 * @example Recording topology changes
 * ```ts
 * import { Pool, type PoolEvent } from "@x/pgdbpool";
 *
 * const pool = new Pool({
 *   db: [{ host: "127.0.0.1", name: "app", user: "app", pass: "secret" }],
 *   groups: { default: { connection_count: 2 } },
 * });
 * const changes: string[] = [];
 * pool.addEventListener("rolechange", (e) => {
 *   const { endpoint, from, to } = (e as PoolEvent).detail;
 *   changes.push(`${endpoint?.host}:${endpoint?.port} ${from} -> ${to}`);
 * });
 * await pool.close();
 * ```
 */
export class PoolEvent extends Event {
  /** What happened. */
  readonly detail: PoolEventDetail;
  /** Creates an event of `type` with `detail`. */
  constructor(type: PoolEventType, detail: PoolEventDetail) {
    super(type);
    this.detail = detail;
  }
}

/** Short, credential-free description of an error for event details. */
export function reasonOf(err: unknown): string {
  const e = err as { code?: unknown; message?: unknown } | null;
  if (typeof e?.code === "string") return e.code;
  if (typeof e?.message === "string") return e.message;
  return String(err);
}
