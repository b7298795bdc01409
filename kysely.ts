/**
 * Kysely over pgdbpool: `new Kysely<DB>({ dialect: new PgdbpoolDialect({ pool, group, read }) })`.
 * SELECT queries outside a transaction run on the read group, everything else on the write
 * group; transactions, savepoints (`db.startTransaction()`) and `.stream()` (through a
 * server-side cursor) work as with Kysely's own PostgreSQL dialect. Needs `kysely` 0.29 (an
 * optional peer dependency of the npm package); the main entry never loads it.
 *
 * @example Kysely with a primary and replicas
 * ```ts
 * import { Pool } from "@x/pgdbpool";
 * import { PgdbpoolDialect } from "@x/pgdbpool/kysely";
 * import { Kysely } from "kysely";
 *
 * interface DB {
 *   notes: { id: number; body: string };
 * }
 *
 * await using pool = new Pool({
 *   db: ["postgres://app:secret@db1/app", "postgres://app:secret@db2/app"],
 *   groups: {
 *     write: { connection_count: 4, role: "primary" },
 *     read: { connection_count: 8, role: "replica" },
 *   },
 * });
 * const db = new Kysely<DB>({ dialect: new PgdbpoolDialect({ pool, group: "write", read: "read" }) });
 * await db.transaction().execute(async (trx) => {
 *   await trx.insertInto("notes").values({ id: 1, body: "hello" }).execute();
 * });
 * for await (const note of db.selectFrom("notes").selectAll().stream(100)) console.log(note);
 * ```
 *
 * @module
 */

export { PgdbpoolDialect, type PgdbpoolDialectConfig } from "./src/kysely/dialect.ts";
