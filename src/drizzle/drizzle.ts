/**
 * `drizzle(pool, options)`: checks the options and builds the database, its read and write
 * sessions and the shared routing state.
 *
 * @module
 */

import {
  createTableRelationsHelpers,
  DefaultLogger,
  extractTablesRelationalConfig,
  type ExtractTablesWithRelations,
  type Logger,
  NoopLogger,
  type RelationalSchemaConfig,
} from "drizzle-orm";
import { PgDatabase, PgDialect } from "drizzle-orm/pg-core";
import type { Pool } from "../../mod.ts";
import { quote } from "../quote.ts";
import { Router } from "../integration/router.ts";
import { PgdbpoolDatabase } from "./database.ts";
import { type PgdbpoolQueryResultHKT, PgdbpoolSession, type Runner } from "./session.ts";

/**
 * Options of {@linkcode drizzle}: where statements run, and Drizzle's own `schema`, `logger`
 * and `casing`.
 *
 * @example Writes on the primary, reads on replicas that have the caller's writes
 * ```ts
 * import type { PgdbpoolDrizzleConfig } from "@x/pgdbpool/drizzle";
 * import { pgTable, serial, text } from "drizzle-orm/pg-core";
 *
 * const schema = { notes: pgTable("notes", { id: serial().primaryKey(), body: text() }) };
 * const options: PgdbpoolDrizzleConfig<typeof schema> = {
 *   group: "write",
 *   read: "read",
 *   read_your_writes: true,
 *   schema,
 * };
 * ```
 */
export interface PgdbpoolDrizzleConfig<
  TSchema extends Record<string, unknown> = Record<string, never>,
> {
  /** Group of writes, raw statements (`db.execute`) and transactions (and reads without `read`). */
  group: string;
  /** Group of reads outside a transaction (default: `group`). */
  read?: string;
  /**
   * Reads outside a transaction go only to a server that has replayed the newest write made
   * through this database (else, after the group's `read_your_writes_timeout_ms`, the primary).
   * Default false.
   */
  read_your_writes?: boolean;
  /** Tables and relations, for `db.query.*`. */
  schema?: TSchema;
  /** `true` logs every statement to the console; or a Drizzle `Logger` (`{ logQuery }`). */
  logger?: boolean | { logQuery(query: string, params: unknown[]): void };
  /** Drizzle's mapping of TypeScript keys to column names. */
  casing?: "snake_case" | "camelCase";
}

// The options of Drizzle's own that it honours (the routing ones are the router's).
const DRIZZLE_KEYS = ["schema", "logger", "casing"];

/**
 * A Drizzle database over `pool`. Without `read` every statement runs on `group`; with `read`,
 * reads outside a transaction run on `read` (where Drizzle's `withReplicas` would send them:
 * `select`, `selectDistinct`, `selectDistinctOn`, `$count`, `db.query.*`, the selects of
 * `db.with()`), and inserts, updates, deletes, `execute`, `refreshMaterializedView` and
 * transactions on `group`. A statement outside `db.transaction()` is committed on its own,
 * also in an `autocommit: false` group. A mistake in the options throws a `TypeError`.
 *
 * @example Read/write split with read-your-writes
 * ```ts
 * import { Pool } from "@x/pgdbpool";
 * import { drizzle } from "@x/pgdbpool/drizzle";
 * import { eq } from "drizzle-orm";
 * import { pgTable, serial, text } from "drizzle-orm/pg-core";
 *
 * const users = pgTable("users", { id: serial().primaryKey(), name: text().notNull() });
 *
 * await using pool = new Pool({
 *   db: ["postgres://app:secret@db1/app", "postgres://app:secret@db2/app"],
 *   groups: {
 *     write: { connection_count: 4, role: "primary", autocommit: false },
 *     read: { connection_count: 8, role: "replica" },
 *   },
 * });
 * const db = drizzle(pool, { group: "write", read: "read", read_your_writes: true });
 *
 * const [{ id }] = await db.insert(users).values({ name: "Ada" }).returning();
 * const [ada] = await db.select().from(users).where(eq(users.id, id)); // sees the insert
 * await db.transaction(async (tx) => {
 *   await tx.update(users).set({ name: "Ada L." }).where(eq(users.id, ada.id));
 * });
 * ```
 */
export function drizzle<TSchema extends Record<string, unknown> = Record<string, never>>(
  pool: Pool,
  options: PgdbpoolDrizzleConfig<TSchema>,
): PgdbpoolDatabase<TSchema> {
  const router = new Router(pool, options, "drizzle()", DRIZZLE_KEYS);
  const dialect = new PgDialect({ casing: options.casing });
  const logger = loggerOf(options.logger);
  type Tables = ExtractTablesWithRelations<TSchema>;
  let schema: RelationalSchemaConfig<Tables> | undefined;
  if (options.schema !== undefined) {
    const tables = extractTablesRelationalConfig<Tables>(
      options.schema,
      createTableRelationsHelpers,
    );
    schema = {
      fullSchema: options.schema,
      schema: tables.tables,
      tableNamesMap: tables.tableNamesMap,
    };
  }
  const session = (runner: Runner) =>
    new PgdbpoolSession<TSchema, Tables>(dialect, runner, router, schema, logger);
  const writes = session((text, params, arrays) => router.runWrite(text, params, arrays));
  const reads = (group: string) =>
    new PgDatabase<PgdbpoolQueryResultHKT, TSchema>(
      dialect,
      session((text, params, arrays) => router.runRead(text, params, arrays, group)),
      schema,
    );
  const primary = new PgdbpoolDatabase<TSchema>(dialect, writes, schema, pool, reads(router.group));
  if (options.read === undefined) return primary;
  return new PgdbpoolDatabase<TSchema>(dialect, writes, schema, pool, reads(router.read), primary);
}

function loggerOf(logger: unknown): Logger {
  if (logger === undefined || logger === false) return new NoopLogger();
  if (logger === true) return new DefaultLogger();
  if (
    typeof logger === "object" && logger !== null &&
    typeof (logger as Logger).logQuery === "function"
  ) {
    return logger as Logger;
  }
  throw new TypeError(
    `drizzle(): logger must be a boolean or an object with logQuery() (got ${quote(logger)})`,
  );
}
