/**
 * Read-your-writes tokens: which statements need one, the query that reads it, and reading it.
 * A token is the primary's WAL insert position read after the write's commit was acknowledged,
 * so it is at or past the end of the commit record.
 *
 * @module
 */

import type { Rows } from "./rows.ts";

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
  if (READ_ONLY.test(text)) return false;
  return !WITH.test(text) || DML.test(text);
}

/** The token from a pipelined `LSN_SQL`, or `undefined` when it failed or ran on a replica. */
export async function readToken(lsn: Promise<Rows>): Promise<string | undefined> {
  try {
    const token = (await lsn)[0]?.lsn;
    return typeof token === "string" ? token : undefined;
  } catch {
    return undefined;
  }
}
