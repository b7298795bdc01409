/**
 * `PgdbpoolDialect`: Kysely's PostgreSQL dialect (its compiler, adapter and introspector) over
 * a pool instead of a `pg` pool.
 *
 * @module
 */

import {
  type DatabaseIntrospector,
  type Dialect,
  type DialectAdapter,
  type Driver,
  type Kysely,
  PostgresAdapter,
  PostgresIntrospector,
  PostgresQueryCompiler,
  type QueryCompiler,
} from "kysely";
import type { Pool } from "../../mod.ts";
import { Router } from "../integration/router.ts";
import { PgdbpoolDriver } from "./driver.ts";

/**
 * Options of {@linkcode PgdbpoolDialect}.
 *
 * @example Writes on the primary, reads on replicas
 * ```ts
 * import { Pool } from "@x/pgdbpool";
 * import type { PgdbpoolDialectConfig } from "@x/pgdbpool/kysely";
 *
 * function config(pool: Pool): PgdbpoolDialectConfig {
 *   return { pool, group: "write", read: "read", read_your_writes: true };
 * }
 * ```
 */
export interface PgdbpoolDialectConfig {
  /** The pool; `db.destroy()` leaves it open (it is the caller's to close). */
  pool: Pool;
  /** Group of writes, raw SQL and transactions (and reads without `read`). */
  group: string;
  /** Group of reads (SELECT queries) outside a transaction (default: `group`). */
  read?: string;
  /**
   * Reads outside a transaction go only to a server that has replayed the newest write made
   * through this Kysely instance (else, after the group's `read_your_writes_timeout_ms`, the
   * primary). Default false.
   */
  read_your_writes?: boolean;
}

/**
 * Kysely's PostgreSQL dialect over a pgdbpool `Pool`. SELECT queries outside a transaction run
 * on `read`; inserts, updates, deletes, raw SQL, DDL, locking SELECTs and SELECTs with
 * data-modifying CTEs, and transactions, on `group`, each statement outside a transaction
 * committed on its own. A mistake in the options throws a `TypeError` here.
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
 * const db = new Kysely<DB>({
 *   dialect: new PgdbpoolDialect({ pool, group: "write", read: "read" }),
 * });
 * await db.insertInto("notes").values({ id: 1, body: "hello" }).execute(); // primary
 * const notes = await db.selectFrom("notes").selectAll().execute();       // a replica
 * await db.destroy(); // the pool stays open
 * ```
 */
export class PgdbpoolDialect {
  readonly #router: Router;

  /** Checks `config` against its pool (a `TypeError` names the bad value). */
  constructor(config: PgdbpoolDialectConfig) {
    this.#router = new Router(config?.pool, config, "PgdbpoolDialect", ["pool"]);
  }

  /**
   * The driver Kysely runs statements through. Its read-your-writes state is the dialect's:
   * Kysely asks once per `new Kysely()`, so a dialect made for its Kysely instance (as
   * usually written) gives that instance its own; two instances sharing one dialect share it.
   * @ignore Kysely's plumbing.
   */
  createDriver(): Driver {
    return new PgdbpoolDriver(this.#router);
  }

  /**
   * Kysely's PostgreSQL compiler.
   * @ignore Kysely's plumbing.
   */
  createQueryCompiler(): QueryCompiler {
    return new PostgresQueryCompiler();
  }

  /**
   * Kysely's PostgreSQL adapter (migration locks, RETURNING).
   * @ignore Kysely's plumbing.
   */
  createAdapter(): DialectAdapter {
    return new PostgresAdapter();
  }

  /**
   * Kysely's PostgreSQL introspector.
   * @ignore Kysely's plumbing.
   */
  createIntrospector(db: Kysely<unknown>): DatabaseIntrospector {
    return new PostgresIntrospector(db);
  }
}

// A Dialect for Kysely (checked here: the class leaves `implements` out so that its public docs
// do not depend on Kysely's types).
const _isDialect: (dialect: PgdbpoolDialect) => Dialect = (dialect) => dialect;
