/**
 * A query builder's transaction settings (isolation level, access mode, deferrable) as the
 * `SET TRANSACTION` statement that starts the transaction. Only PostgreSQL's own keywords are
 * accepted, so nothing the caller passes reaches the SQL text unchecked.
 *
 * @module
 */

import { quote } from "../quote.ts";

/** What Drizzle's `PgTransactionConfig` and Kysely's `TransactionSettings` carry. */
export interface TransactionSettings {
  readonly isolationLevel?: string;
  readonly accessMode?: string;
  readonly deferrable?: boolean;
}

const ISOLATION_LEVELS = ["read uncommitted", "read committed", "repeatable read", "serializable"];
const ACCESS_MODES = ["read only", "read write"];

/**
 * The `SET TRANSACTION ...` statement for `settings`, or `undefined` when they set nothing.
 * Throws a `TypeError` naming a value PostgreSQL does not know (Kysely's `"snapshot"` is SQL
 * Server's).
 */
export function setTransactionSql(
  settings: TransactionSettings | undefined,
  caller: string,
): string | undefined {
  if (settings === undefined || settings === null) return undefined;
  const { isolationLevel, accessMode, deferrable } = settings;
  const parts: string[] = [];
  if (isolationLevel !== undefined) {
    if (!ISOLATION_LEVELS.includes(isolationLevel)) {
      throw new TypeError(
        `${caller}: isolation level ${quote(isolationLevel)} is not one of PostgreSQL's (${
          ISOLATION_LEVELS.map((l) => JSON.stringify(l)).join(", ")
        })`,
      );
    }
    parts.push(`ISOLATION LEVEL ${isolationLevel.toUpperCase()}`);
  }
  if (accessMode !== undefined) {
    if (!ACCESS_MODES.includes(accessMode)) {
      throw new TypeError(
        `${caller}: access mode ${quote(accessMode)} is not "read only" or "read write"`,
      );
    }
    parts.push(accessMode.toUpperCase());
  }
  if (deferrable !== undefined) {
    if (typeof deferrable !== "boolean") {
      throw new TypeError(`${caller}: deferrable must be a boolean (got ${quote(deferrable)})`);
    }
    parts.push(deferrable ? "DEFERRABLE" : "NOT DEFERRABLE");
  }
  return parts.length === 0 ? undefined : `SET TRANSACTION ${parts.join(" ")}`;
}
