/**
 * Drizzle's transaction object over one checkout (`db`); a nested `tx.transaction()` is a
 * savepoint on the same checkout.
 *
 * @module
 */

import {
  entityKind,
  type RelationalSchemaConfig,
  sql,
  type TablesRelationalConfig,
} from "drizzle-orm";
import { type PgDialect, type PgSession, PgTransaction } from "drizzle-orm/pg-core";
import type { Handler } from "../../mod.ts";
import type { PgdbpoolQueryResultHKT } from "./session.ts";

/** A transaction (or, nested, a savepoint) on one checkout of the write group. */
export class PgdbpoolTransaction<
  TFullSchema extends Record<string, unknown>,
  TSchema extends TablesRelationalConfig,
> extends PgTransaction<PgdbpoolQueryResultHKT, TFullSchema, TSchema> {
  /** Drizzle's class tag (what `is()` checks). */
  static override readonly [entityKind]: string = "PgdbpoolTransaction";
  readonly #dialect: PgDialect;
  readonly #session: PgSession<PgdbpoolQueryResultHKT, TFullSchema, TSchema>;
  readonly #schema: RelationalSchemaConfig<TSchema> | undefined;
  readonly #db: Handler;

  constructor(
    dialect: PgDialect,
    session: PgSession<PgdbpoolQueryResultHKT, TFullSchema, TSchema>,
    schema: RelationalSchemaConfig<TSchema> | undefined,
    db: Handler,
    nestedIndex = 0,
  ) {
    super(dialect, session, schema, nestedIndex);
    this.#dialect = dialect;
    this.#session = session;
    this.#schema = schema;
    this.#db = db;
  }

  /**
   * Runs `transaction` inside a savepoint: released when it resolves, rolled back to when it
   * throws (the error is passed on, so the outer transaction decides).
   */
  async transaction<T>(
    transaction: (tx: PgTransaction<PgdbpoolQueryResultHKT, TFullSchema, TSchema>) => Promise<T>,
  ): Promise<T> {
    const name = sql.raw(`sp${this.nestedIndex + 1}`);
    const tx = new PgdbpoolTransaction<TFullSchema, TSchema>(
      this.#dialect,
      this.#session,
      this.#schema,
      this.#db,
      this.nestedIndex + 1,
    );
    await tx.execute(sql`SAVEPOINT ${name}`);
    let result: T;
    try {
      result = await transaction(tx);
    } catch (err) {
      try {
        await tx.execute(sql`ROLLBACK TO SAVEPOINT ${name}`);
      } catch {
        // The session is lost or the transaction failed: the outer transaction learns of it
        // from its next statement or its commit; the caller gets the error that started this.
      }
      throw err;
    }
    await tx.execute(sql`RELEASE SAVEPOINT ${name}`);
    return result;
  }
}
