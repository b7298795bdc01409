/**
 * What a terminated session proves about the statement it was running. A backend told to
 * terminate (FATAL 57P01: `pg_terminate_backend`, a fast shutdown) acts on it at its next
 * interrupt check, which aborts the transaction in progress: a statement still running took no
 * effect. But the check can also come after a commit whose acknowledgement has not left yet:
 *
 * - an extended-protocol COMMIT (or any statement that commits at once, like CREATE DATABASE)
 *   commits at Execute; the backend checks interrupts when it reads the Sync, and sends the
 *   statement's CommandComplete followed by the FATAL, with no ReadyForQuery: the client rejects
 *   a statement that committed;
 * - a text of several statements (`BEGIN; ...; COMMIT; SELECT ...`) commits at its COMMIT and is
 *   terminated in a later statement;
 * - a procedure (`CALL`) or a `DO` block may commit in its body.
 *
 * A statement in flight is therefore "never ran" after such a FATAL only when its text is one
 * statement of a kind that commits nothing before it is acknowledged. The list is short on
 * purpose: what is not on it is reported as unknown, never retried.
 *
 * @module
 */

import { firstWord, isWord, singleStatement, wordEnd } from "../statement_text.ts";

/**
 * FATAL SQLSTATEs after which the server ran nothing more on the session: an administrator
 * terminated it (57P01) or it could not start (57P03). 57P02 (crash of another backend) is not
 * one: quickdie can follow a flushed commit whose acknowledgement never left.
 */
export const terminatedCodes: ReadonlySet<string> = new Set(["57P01", "57P03"]);

// Statements that commit nothing before their acknowledgement: queries and DML (an autocommit
// one commits after the server read its Sync, or right before its acknowledgement in the simple
// protocol, with no interrupt check in between), and session or transaction-block statements
// that commit nothing at all. `ROLLBACK PREPARED` is refused below.
const uncommitting = new Set([
  "SELECT",
  "INSERT",
  "UPDATE",
  "DELETE",
  "MERGE",
  "WITH",
  "VALUES",
  "TABLE",
  "EXPLAIN",
  "BEGIN",
  "START",
  "SAVEPOINT",
  "RELEASE",
  "ROLLBACK",
  "SET",
  "SHOW",
  "RESET",
  "LOCK",
  "DECLARE",
  "FETCH",
  "MOVE",
  "CLOSE",
]);

/**
 * Whether a statement rejected with a terminating FATAL (`code`, e.g. `57P01`) provably never
 * took effect: the code is one of {@linkcode terminatedCodes} and `text` is one statement that
 * commits nothing before its acknowledgement.
 *
 * @example Telling a terminated SELECT from a terminated COMMIT
 * ```ts
 * import { unrunWhenTerminated } from "./termination.ts";
 *
 * unrunWhenTerminated("57P01", "SELECT pg_sleep(1)"); // true: it was aborted
 * unrunWhenTerminated("57P01", "COMMIT"); // false: it may have committed
 * unrunWhenTerminated("57P01", "INSERT INTO t VALUES (1); COMMIT"); // false
 * ```
 */
export function unrunWhenTerminated(code: string | undefined, text: string): boolean {
  if (code === undefined || !terminatedCodes.has(code)) return false;
  const start = firstWord(text, 0);
  if (start < 0) return false;
  const end = wordEnd(text, start);
  const word = text.slice(start, end).toUpperCase();
  if (!uncommitting.has(word)) return false;
  if (word === "ROLLBACK") {
    const next = firstWord(text, end);
    if (next >= 0 && isWord(text, next, wordEnd(text, next), "PREPARED")) {
      return false;
    }
  }
  return singleStatement(text, end);
}
