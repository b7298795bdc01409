/**
 * The Drizzle database `drizzle()` returns: a `PgDatabase` whose writes, raw statements and
 * transactions run on the write group, and whose reads outside a transaction run on the read
 * group, split where Drizzle's own `withReplicas` splits them.
 *
 * @module
 */

import {
  entityKind,
  type ExtractTablesWithRelations,
  type RelationalSchemaConfig,
} from "drizzle-orm";
import {
  /**
   * Drizzle's own class, documented by Drizzle: `@ignore` tells `deno doc --lint` not to ask
   * this package to document or re-export it (re-exporting it would pull Drizzle's whole,
   * partly undocumented, declaration tree into these docs). Deno already skips such
   * references to jsr: and https: packages, but sees an npm package in node_modules as local
   * files (denoland/deno#27364). Only this import is exempt: any other private type in the
   * public API still fails the lint.
   * @ignore
   */
  PgDatabase,
  type PgDialect,
  type PgSession,
} from "drizzle-orm/pg-core";
import type { Pool } from "../../mod.ts";
import type { PgdbpoolQueryResultHKT } from "./session.ts";

/**
 * A Drizzle PostgreSQL database over a pool (made by {@linkcode drizzle}). Everything Drizzle
 * offers works as on any `PgDatabase`; reads outside a transaction (`select`,
 * `selectDistinct`, `selectDistinctOn`, `$count`, `db.query.*`, and the selects of
 * `db.with(...)`) run on the read group, everything else on the write group.
 *
 * @example Reads on replicas, writes on the primary
 * ```ts
 * import { Pool } from "@x/pgdbpool";
 * import { drizzle, type PgdbpoolDatabase } from "@x/pgdbpool/drizzle";
 * import { integer, pgTable, text } from "drizzle-orm/pg-core";
 *
 * const notes = pgTable("notes", { id: integer().primaryKey(), body: text().notNull() });
 * const pool = new Pool({
 *   db: ["postgres://app:secret@db1/app", "postgres://app:secret@db2/app"],
 *   groups: {
 *     write: { connection_count: 4, role: "primary" },
 *     read: { connection_count: 8, role: "replica" },
 *   },
 * });
 * const db: PgdbpoolDatabase = drizzle(pool, { group: "write", read: "read" });
 * await db.insert(notes).values({ id: 1, body: "hello" });   // primary
 * const fresh = await db.$primary.select().from(notes);      // primary
 * const all = await db.select().from(notes);                 // a replica
 * ```
 */
export class PgdbpoolDatabase<TSchema extends Record<string, unknown> = Record<string, never>>
  extends PgDatabase<PgdbpoolQueryResultHKT, TSchema> {
  /** Drizzle's class tag (what `is()` checks). */
  static override readonly [entityKind]: string = "PgdbpoolDatabase";
  /** The pool the statements run on (Drizzle's raw client). */
  readonly $client: Pool;
  /** The same database with every statement on the write group (reads that must be fresh). */
  readonly $primary: PgdbpoolDatabase<TSchema>;

  /**
   * Use {@linkcode drizzle} instead. `session` runs writes, `reads` (a database on the read
   * session) serves the read methods, and `primary` is `$primary` (this database when
   * omitted).
   */
  constructor(
    dialect: PgDialect,
    session: PgSession<PgdbpoolQueryResultHKT, TSchema, ExtractTablesWithRelations<TSchema>>,
    schema: RelationalSchemaConfig<ExtractTablesWithRelations<TSchema>> | undefined,
    pool: Pool,
    reads: PgDatabase<PgdbpoolQueryResultHKT, TSchema>,
    primary?: PgdbpoolDatabase<TSchema>,
  ) {
    super(dialect, session, schema);
    this.$client = pool;
    this.$primary = primary ?? this;
    this.select = reads.select.bind(reads);
    this.selectDistinct = reads.selectDistinct.bind(reads);
    this.selectDistinctOn = reads.selectDistinctOn.bind(reads);
    this.$count = reads.$count.bind(reads);
    this.query = reads.query;
    // db.with(cte): its selects read, its insert, update and delete write.
    const writes = this.with.bind(this);
    this.with = (...queries) => {
      const read = reads.with(...queries);
      return {
        ...writes(...queries),
        select: read.select,
        selectDistinct: read.selectDistinct,
        selectDistinctOn: read.selectDistinctOn,
      };
    };
  }
}
