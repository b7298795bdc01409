/**
 * Drizzle ORM over pgdbpool: `drizzle(pool, { group, read })` returns a Drizzle PostgreSQL
 * database whose reads outside a transaction run on the read group (where Drizzle's own
 * `withReplicas` would send them) and everything else on the write group. Needs `drizzle-orm`
 * 0.45 (an optional peer dependency of the npm package); the main entry never loads it.
 *
 * @example Drizzle with a primary and replicas
 * ```ts
 * import { Pool } from "@x/pgdbpool";
 * import { drizzle } from "@x/pgdbpool/drizzle";
 * import { pgTable, serial, text } from "drizzle-orm/pg-core";
 *
 * const notes = pgTable("notes", { id: serial().primaryKey(), body: text().notNull() });
 *
 * await using pool = new Pool({
 *   db: ["postgres://app:secret@db1/app", "postgres://app:secret@db2/app"],
 *   groups: {
 *     write: { connection_count: 4, role: "primary" },
 *     read: { connection_count: 8, role: "replica" },
 *   },
 * });
 * const db = drizzle(pool, { group: "write", read: "read" });
 * await db.insert(notes).values({ body: "hello" });      // on the primary
 * console.log(await db.select().from(notes));            // on a replica
 * ```
 *
 * @module
 */

export { drizzle, type PgdbpoolDrizzleConfig } from "./src/drizzle/drizzle.ts";
export { PgdbpoolDatabase } from "./src/drizzle/database.ts";
export type { PgdbpoolQueryResultHKT } from "./src/drizzle/session.ts";
export { migrate } from "./src/drizzle/migrate.ts";
