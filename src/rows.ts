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
