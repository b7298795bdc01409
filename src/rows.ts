/**
 * The shapes statements return, named here so the public API does not expose postgres.js
 * internals beyond its tagged template.
 *
 * @module
 */

import type { DriverSql } from "./driver/postgres.ts";

/**
 * One result row: column name to parsed value.
 *
 * @example Typing rows
 * ```ts
 * import type { Row } from "@x/pgdbpool";
 *
 * interface User extends Row { id: number; name: string }
 * ```
 */
// deno-lint-ignore no-explicit-any
export type Row = Record<string, any>;

/**
 * Rows of a statement: an array of rows plus what postgres.js reports about it.
 *
 * @example Reading rows and the affected count
 * ```ts
 * import type { Rows } from "@x/pgdbpool";
 *
 * function summary(rows: Rows): string {
 *   return `${rows.command}: ${rows.count} row(s), first ${JSON.stringify(rows[0])}`;
 * }
 * ```
 */
export interface Rows<T extends Row = Row> extends Array<T> {
  /** Rows affected or returned. */
  readonly count: number;
  /** The command tag, e.g. `SELECT`, `INSERT`, `COMMIT`. */
  readonly command: string;
}

/**
 * Rows as arrays of column values, in column order (`{ rowMode: "array" }`): what query builders
 * that map columns by position (Drizzle, joins with repeated column names) need.
 *
 * @example Reading a row by position
 * ```ts
 * import { Pool, type ValueRows } from "@x/pgdbpool";
 *
 * async function pair(pool: Pool): Promise<unknown[]> {
 *   const rows: ValueRows = await pool.query("read", "SELECT 1 AS a, 2 AS a", [], {
 *     rowMode: "array",
 *   });
 *   return rows[0]; // [1, 2]
 * }
 * ```
 */
export interface ValueRows extends Array<unknown[]> {
  /** Rows affected or returned. */
  readonly count: number;
  /** The command tag, e.g. `SELECT`, `INSERT`, `COMMIT`. */
  readonly command: string;
}

/**
 * How a statement's rows come back.
 *
 * @example Asking for arrays
 * ```ts
 * import type { QueryOptions } from "@x/pgdbpool";
 *
 * const asArrays: QueryOptions = { rowMode: "array" };
 * ```
 */
export interface QueryOptions {
  /** `"object"` (default): one object per row. `"array"`: one array of values per row. */
  readonly rowMode?: "object" | "array";
}

/**
 * The postgres.js tagged template of a handler's connection (see `Handler.sql`).
 *
 * @example Using postgres.js helpers on a checked-out connection
 * ```ts
 * import { Pool, type Sql } from "@x/pgdbpool";
 *
 * async function insertUser(pool: Pool, user: { name: string }) {
 *   await using db = await pool.acquire("write");
 *   const sql: Sql = db.sql;
 *   await sql`INSERT INTO users ${sql(user)}`;
 *   await db.commit();
 * }
 * ```
 */
export type Sql = DriverSql;
