/**
 * Read-your-writes tokens: which statements need one, the query that reads it, and reading it.
 * A token is the primary's WAL insert position read after the write's commit was acknowledged,
 * so it is at or past the end of the commit record.
 *
 * @module
 */

import type { StatementOptions } from "./driver/postgres.ts";
import type { Rows } from "./rows.ts";
import type { ServerConnection } from "./server_connection.ts";
import type { Topology } from "./topology.ts";

const noop = () => {};

/** NULL on a replica instead of an error: the role may be unknown (PostgreSQL < 14). */
export const LSN_SQL =
  "SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_insert_lsn()::text END AS lsn";

// Statements that never write: no token is read after them (reads cost nothing extra).
const READ_ONLY =
  /^\s*\(*\s*(?:select|show|values|table|explain|fetch|set|reset|begin|start|savepoint|release|rollback|listen|unlisten|discard|declare|close|move|deallocate)\b/i;
const WITH = /^\s*with\b/i;
const DML = /\b(?:insert|update|delete|merge)\b/i;

/**
 * Whether an autocommit statement may write (then its token is read in the same round trip).
 * A SELECT that writes through a function is not seen: use a transaction for those.
 */
export function mayWrite(text: string): boolean {
  // Small, and its regular expressions run once per text (see one_shot.ts `send`).
  const known = writes.get(text);
  return known !== undefined ? known : learnWrites(text);
}

/**
 * Texts already judged by `mayWrite`; bounded in count (texts built per call would grow it for
 * good) and in length (a long text is judged again rather than kept alive).
 */
const writes = new Map<string, boolean>();
const MAX_WRITES = 1024;
const MAX_KEPT_LENGTH = 2048;

function learnWrites(text: string): boolean {
  const write = !READ_ONLY.test(text) && (!WITH.test(text) || DML.test(text));
  if (writes.size < MAX_WRITES && text.length <= MAX_KEPT_LENGTH) writes.set(text, write);
  return write;
}

/**
 * The token from a pipelined `LSN_SQL` sent on `conn`, or `undefined` when it ran on a replica.
 * When that query was lost (the connection cut between the write's acknowledgement and the
 * query's answer), the write stands acknowledged all the same: its token is then the position
 * read now on the server's probe session (`undefined` if that fails too).
 */
export async function readToken(
  lsn: Promise<Rows>,
  conn: ServerConnection,
  topology: Topology,
): Promise<string | undefined> {
  let rows: Rows;
  try {
    rows = await lsn;
  } catch {
    return topology.insertLsn(conn.endpoint);
  }
  const token = rows[0]?.lsn;
  return typeof token === "string" ? token : undefined;
}

/**
 * Sends the token query on `conn` now, behind whatever was sent before it (postgres.js sends on
 * the first then/catch, so callers send their statement first): the position read after it.
 */
export function sendTokenQuery(conn: ServerConnection): Promise<Rows> {
  const lsn = conn.session.query(LSN_SQL, undefined, conn.endpoint.controlOptions) as Promise<Rows>;
  lsn.catch(noop);
  return lsn;
}

/**
 * Sends a write with the token query pipelined right behind it (one round trip): `sent` is the
 * write's result, `lsn` the position read after it committed.
 */
export function sendWrite(
  conn: ServerConnection,
  text: string,
  params: readonly unknown[] | undefined,
  options: StatementOptions,
): { sent: Promise<Rows>; lsn: Promise<Rows> } {
  // postgres.js sends on the first then/catch: the write first, the position after it.
  const sent = conn.session.query(text, params, options).then() as Promise<
    Rows
  >;
  return { sent, lsn: sendTokenQuery(conn) };
}

/**
 * Sends one statement of a checkout or a one-shot: an autocommit write on the primary with the
 * token query behind it (`lsn`), anything else alone. Never throws: a statement the driver
 * refuses at once comes back as a rejected `sent`. Its text and parameters were checked by the
 * caller (`statement_input.ts`).
 */
export function sendStatement(
  conn: ServerConnection,
  text: string,
  params: readonly unknown[] | undefined,
  arrays: boolean,
  autocommit: boolean,
): { sent: Promise<Rows>; lsn: Promise<Rows> | undefined } {
  try {
    const endpoint = conn.endpoint;
    const options = endpoint.statementOptions(text, params, arrays);
    // An unknown role (no session has reached the server yet) may be the primary's: the token
    // query answers NULL on a replica.
    if (autocommit && endpoint.role !== "replica" && mayWrite(text)) {
      return sendWrite(conn, text, params, options);
    }
    return { sent: conn.session.query(text, params, options) as Promise<Rows>, lsn: undefined };
  } catch (err) {
    return { sent: Promise.reject(err), lsn: undefined };
  }
}
