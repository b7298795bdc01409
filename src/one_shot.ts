/**
 * `pool.query()` in an autocommit group (threaded mode): one statement, committed by itself.
 * When every connection is busy it is pipelined onto a connection other one-shots hold (one
 * shared hold, one permit), as postgres.js does; when those are full too, it waits for a seat on
 * one in FIFO order with the group's other waiters. A statement that provably
 * never ran (its connection was dead before it was written, or the server terminated the
 * session before reading it) moves to another connection; any other loss is reported with its
 * outcome unknown, never re-sent.
 *
 * @module
 */

import { untilCallerDeadline } from "./deadline.ts";
import { SessionLostError } from "./errors.ts";
import type { Group } from "./group.ts";
import { MAX_ATTEMPTS, observe } from "./lease.ts";
import type { Rows } from "./rows.ts";
import type { ServerConnection } from "./server_connection.ts";
import { residueOfCommand, residueOfFailure } from "./session_state.ts";
import { isReadOnlyError } from "./sqlstate.ts";
import { checkStatement } from "./statement_input.ts";
import { guardJoined } from "./request_bound.ts";
import { mayWrite, readToken, sendWrite } from "./token.ts";

// A connection of its own (shared from now on), or a seat on one that one-shots share. `again`:
// the statement moves to another connection (its first one was dead); still one request, so it
// is not counted, nor its wait recorded, a second time (stats' checkouts, wait_time).
function hold(group: Group, again: boolean): ServerConnection | Promise<ServerConnection> {
  const own = group.tryCheckout(again);
  if (own !== null) {
    group.share(own);
    return own;
  }
  return group.tryShare(again) ?? group.waitShare(again);
}

/**
 * Runs `text` once on `group` and resolves to its rows. Written as a promise chain, not an async
 * function: the caller's promise is the statement's own `then`, so a one-shot costs the same
 * microtask hops as awaiting a postgres.js query directly (an async frame added two per
 * statement, a tenth of the pool's whole cost under load).
 */
export function oneShot(
  group: Group,
  text: string,
  params: readonly unknown[] | undefined,
  arrays = false,
  attempt = 1,
): Promise<Rows> {
  let held: ServerConnection | Promise<ServerConnection>;
  try {
    // Before a connection is taken: a statement that cannot be sent waits for nothing.
    if (attempt === 1) checkStatement(text, params);
    held = hold(group, attempt > 1);
  } catch (err) {
    return Promise.reject(err);
  }
  if (held instanceof Promise) {
    // The statement's wait began here: a proof of its connection gets what is left of it.
    const from = performance.now();
    return held.then((conn) => send(group, conn, text, params, arrays, attempt, false, from));
  }
  return send(group, held, text, params, arrays, attempt, false);
}

function send(
  group: Group,
  conn: ServerConnection,
  text: string,
  params: readonly unknown[] | undefined,
  arrays: boolean,
  attempt: number,
  validated: boolean,
  from?: number,
): Promise<Rows> {
  if (!validated && conn.users === 1 && isStale(group, conn)) {
    return revalidate(group, conn, from ?? performance.now()).then((fresh) =>
      send(group, fresh, text, params, arrays, attempt, true)
    );
  }
  const context = group.context;
  context.watch?.(conn.endpoint);
  // workerd only: a statement joining a busy connection, or one still connecting (a replacement
  // warmed by another request), is written and read by the request that opened it, and waits for
  // good once that request ends (request_bound.ts).
  const beacon = conn.beacon;
  const unguard = beacon !== undefined && (conn.users > 1 || !conn.session.established)
    ? guardJoined(beacon, () => cutUnreadable(conn))
    : undefined;
  const done = context.hooks === undefined
    ? undefined
    : observe(context.hooks, group.name, text, conn);
  // sendStatement's steps written out here: V8 inlines postgres.js's Query constructor into this
  // function only while the functions it inlines stay under its bytecode budget, and a Query
  // built out of line let each statement's objects outlive young-generation collections (twice
  // the GC time of a /queries-shaped load on Deno; bench/README.md).
  let sent: Promise<Rows>;
  let lsn: Promise<Rows> | undefined;
  try {
    const endpoint = conn.endpoint;
    const options = endpoint.statementOptions(text, params, arrays);
    // An unknown role (no session has reached the server yet) may be the primary's.
    if (endpoint.role !== "replica" && mayWrite(text)) {
      ({ sent, lsn } = sendWrite(conn, text, params, options));
    } else {
      sent = conn.session.query(text, params, options) as Promise<Rows>;
    }
  } catch (err) {
    sent = Promise.reject(err);
  }
  return sent.then((rows) => {
    unguard?.();
    done?.(undefined);
    // Staleness is judged when a one-shot is a connection's first user: only the last one to
    // leave needs to stamp it (a clock read per statement shows in profiles under load).
    if (conn.users === 1) conn.lastUsed = performance.now();
    // Its text was found clean before it was sent (pool.ts): only the tag can tell more.
    group.checkin(conn, false, residueOfCommand(rows.command, text));
    if (lsn === undefined) return rows;
    return readToken(lsn, conn, group.context.topology).then((token) => {
      if (token !== undefined) group.context.onToken(token);
      return rows;
    });
  }, (failure: unknown) => {
    unguard?.();
    const err = conn.session.explain(failure);
    done?.(err);
    const outcome = conn.outcomeOf(err, text);
    if (outcome === "failed") {
      if (isReadOnlyError(err)) group.reportFailure(conn, err);
      // A session advisory lock it took before failing is held all the same.
      group.checkin(conn, false, residueOfFailure(text));
      throw err;
    }
    group.reportFailure(conn, err);
    if (!conn.dead) conn.end(0);
    group.checkin(conn, false);
    // A server that refused the session: nothing ran. Another server of the group takes the
    // statement if one is routable (the refusing one is out of routing now); else the caller
    // hears why.
    const refused = conn.session.isRefusal(err);
    if (
      outcome === "not-executed" && attempt < MAX_ATTEMPTS && !group.closing &&
      (!refused || group.movesRefused(conn))
    ) {
      return oneShot(group, text, params, arrays, attempt + 1);
    }
    if (refused) throw group.refusalError(conn, err);
    throw new SessionLostError(
      group.name,
      outcome,
      outcome === "unknown"
        ? "the connection was lost while the statement may have been running; it was not retried"
        : "the server ended every session the statement was sent on before reading it",
      { cause: err },
    );
  });
}

// The request that reads `conn` has ended: everything in flight on it is cut (the driver rejects
// what was written as lost, its outcome unknown: the server may have run it; what it never
// wrote as not executed), and it is discarded when its last user checks it in.
function cutUnreadable(conn: ServerConnection): void {
  if (!conn.dead) conn.end(0);
}

function isStale(group: Group, conn: ServerConnection): boolean {
  return conn.dead ||
    (conn.lastUsed !== 0 &&
      performance.now() - conn.lastUsed > group.context.validateAfterMs);
}

// A connection of our own that sat idle: prove it alive before writing anything on it. While
// it is being pinged (users === 1), other one-shots may already join it; they are covered by the
// same rule as any statement on a connection that dies: not-executed moves, unknown reports.
function revalidate(
  group: Group,
  conn: ServerConnection,
  from: number,
): Promise<ServerConnection> {
  const limitMs = group.settings.acquireTimeoutMs;
  // The caller waits for a connection it can use: acquire_timeout_ms bounds the ping (on a host
  // gone silent it takes connect_timeout) and the move after it, as it bounds a wait for a seat.
  // Past it the proof runs on, and a hold it ends with is given up once it has one.
  return untilCallerDeadline(
    proveOrMove(group, conn),
    from + limitMs,
    () => group.timedOut(limitMs),
    undefined,
    (next) => group.checkin(next, false),
  );
}

async function proveOrMove(group: Group, conn: ServerConnection): Promise<ServerConnection> {
  if (!conn.dead) {
    try {
      await conn.ping(conn.endpoint.connectTimeoutS * 1000);
      conn.lastUsed = performance.now();
      // The ping's answer may have taken the server out of the group's routing (a promotion
      // seen in its parameters): nothing is sent yet, so the statement goes where routing says.
      if (conn.member.active || !group.routable) return conn;
    } catch (err) {
      group.reportFailure(conn, err);
      conn.end(0);
    }
  }
  // The hold is given up (a dead connection is discarded when its last user leaves) and a
  // connection is taken afresh.
  group.checkin(conn, false);
  const next = hold(group, true);
  return next instanceof Promise ? await next : next;
}
