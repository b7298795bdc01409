/**
 * The instrumentation seam: what a pool tells an installed observer (the OpenTelemetry entry)
 * about statements, checkouts and new connections. Nothing is measured, and no clock is read,
 * while no observer is installed: every call site checks for one first.
 *
 * @module
 */

import type { EndpointInfo } from "./endpoint.ts";

/** A statement about to be sent. */
export interface StatementStart {
  /** The group it runs in. */
  readonly group: string;
  /** Its SQL text, as given. */
  readonly text: string;
  /** The server it is sent to. */
  readonly endpoint: EndpointInfo;
  /** The database name of that server. */
  readonly database: string;
}

/**
 * An observer of a pool. Each method is called synchronously where the event happens and must
 * not throw.
 */
export interface PoolHooks {
  /** A statement is being sent; the returned function is called once it settles. */
  statement(start: StatementStart): (error: unknown) => void;
  /** A checkout got its connection after `waitMs` (0 on the synchronous path). */
  checkout(group: string, waitMs: number): void;
  /** A connection held for `heldMs` was given back. */
  checkin(group: string, heldMs: number): void;
  /** A new server connection finished its start-up `ms` after it was opened. */
  connected(group: string, ms: number): void;
}

/**
 * Where a pool keeps its observer (read and set by `@x/pgdbpool/otel`; not part of the public
 * API).
 */
export const poolHooks: unique symbol = Symbol("pgdbpool.hooks");
