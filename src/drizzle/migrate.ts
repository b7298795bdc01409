/**
 * Drizzle's migrator for a pgdbpool database: the migrations of a drizzle-kit folder, applied
 * on the write group in one transaction, as Drizzle's own PostgreSQL migrators do.
 *
 * @module
 */

import type { PgDialect, PgSession } from "drizzle-orm/pg-core";
import type { PgdbpoolDatabase } from "./database.ts";

/**
 * Applies the migrations of `config.migrationsFolder` (made by `drizzle-kit generate`) that the
 * database has not seen yet, on the write group, in one transaction. The folder is read with
 * `node:fs` (Deno, Bun and Node; not on edge runtimes), loaded only when this runs.
 *
 * @example Migrating at start-up
 * ```ts
 * import { Pool } from "@x/pgdbpool";
 * import { drizzle, migrate } from "@x/pgdbpool/drizzle";
 *
 * await using pool = new Pool({
 *   db: "postgres://app:secret@db1/app",
 *   groups: { write: { connection_count: 2, role: "primary" } },
 * });
 * const db = drizzle(pool, { group: "write" });
 * await migrate(db, { migrationsFolder: "./drizzle" });
 * ```
 */
export async function migrate<TSchema extends Record<string, unknown>>(
  db: PgdbpoolDatabase<TSchema>,
  config: {
    /** The folder drizzle-kit wrote (with `meta/_journal.json`). */
    migrationsFolder: string;
    /** Table of applied migrations (default `__drizzle_migrations`). */
    migrationsTable?: string;
    /** Schema of that table (default `drizzle`). */
    migrationsSchema?: string;
  },
): Promise<void> {
  const { readMigrationFiles } = await import("drizzle-orm/migrator");
  const migrations = readMigrationFiles(config);
  // Drizzle's migrators use the database's dialect and (write) session, as here.
  const { dialect, session } = db as unknown as { dialect: PgDialect; session: PgSession };
  await dialect.migrate(migrations, session, config);
}
