/**
 * Drizzle's session and prepared query over the pool. A session runs its statements through a
 * runner: one statement committed on its own on the read or the write group, or a statement of
 * a transaction's checkout. Selects ask for rows as arrays of values (`rowMode: "array"`), which
 * Drizzle maps by position, so joins with repeated column names come back intact.
 *
 * @module
 */

import {
  DrizzleQueryError,
  entityKind,
  fillPlaceholders,
  type Logger,
  type Query,
  type QueryWithTypings,
  type RelationalSchemaConfig,
  sql,
  type TablesRelationalConfig,
} from "drizzle-orm";
import {
  type PgDialect,
  PgPreparedQuery,
  PgSession,
  type PgTransaction,
  type PgTransactionConfig,
  type PreparedQueryConfig,
  type SelectedFieldsOrdered,
} from "drizzle-orm/pg-core";
import type { Handler, Row, Rows, ValueRows } from "../../mod.ts";
import type { Router } from "../integration/router.ts";
import { setTransactionSql } from "../integration/transaction_settings.ts";
import { mapRow } from "./rows.ts";
import { PgdbpoolTransaction } from "./transaction.ts";
import { encodeParams, fixTimestamps } from "./values.ts";

/**
 * What `db.execute()` and writes without `returning()` resolve to: the pool's rows (an array
 * with `count` and `command`).
 *
 * @example Typing the result of a raw statement
 * ```ts
 * import type { PgdbpoolQueryResultHKT } from "@x/pgdbpool/drizzle";
 * import type { PgQueryResultKind } from "drizzle-orm/pg-core";
 *
 * type Result = PgQueryResultKind<PgdbpoolQueryResultHKT, { id: number }>;
 * // Rows<{ id: number }>: result.count, result.command, result[0].id
 * ```
 */
export interface PgdbpoolQueryResultHKT {
  /** Drizzle's brand of result kinds (`PgQueryResultHKT`). */
  readonly $brand: "PgQueryResultHKT";
  /** The row type Drizzle fills in. */
  readonly row: unknown;
  /** The pool's rows of `this["row"]`. */
  type: Rows<this["row"] extends Row ? this["row"] : Row>;
}

/** How a session runs one statement (arrays: rows as arrays of values). */
export type Runner = (
  text: string,
  params: unknown[],
  arrays: boolean,
) => Promise<Rows | ValueRows>;

/** Runs statements on a transaction's checkout. */
export function handlerRunner(db: Handler): Runner {
  return (text, params, arrays) => db.query(text, params, { rowMode: arrays ? "array" : "object" });
}

type ResultMapper = (rows: unknown[][]) => unknown;

/** A statement Drizzle built, ready to run any number of times with placeholder values. */
export class PgdbpoolPreparedQuery<T extends PreparedQueryConfig> extends PgPreparedQuery<T> {
  /** Drizzle's class tag (what `is()` checks). */
  static override readonly [entityKind]: string = "PgdbpoolPreparedQuery";
  /** Set by Drizzle's select builder for selects with joins (which side may be missing). */
  joinsNotNullableMap?: Record<string, boolean>;
  readonly #runner: Runner;
  readonly #text: string;
  readonly #params: unknown[];
  readonly #typings: QueryWithTypings["typings"];
  readonly #logger: Logger;
  readonly #fields: SelectedFieldsOrdered | undefined;
  readonly #arrayMode: boolean;
  readonly #mapper: ResultMapper | undefined;

  constructor(
    runner: Runner,
    query: Query,
    logger: Logger,
    fields: SelectedFieldsOrdered | undefined,
    arrayMode: boolean,
    mapper: ResultMapper | undefined,
    metadata: { type: "select" | "update" | "delete" | "insert"; tables: string[] } | undefined,
  ) {
    super(query, undefined, metadata);
    this.#runner = runner;
    this.#text = query.sql;
    this.#params = query.params;
    this.#typings = (query as QueryWithTypings).typings;
    this.#logger = logger;
    this.#fields = fields;
    this.#arrayMode = arrayMode;
    this.#mapper = mapper;
  }

  /** Runs the statement and maps its rows the way Drizzle's builder asked for. */
  async execute(placeholderValues: Record<string, unknown> = {}): Promise<T["execute"]> {
    const params = this.#fill(placeholderValues);
    const fields = this.#fields;
    const mapper = this.#mapper;
    if (fields === undefined && mapper === undefined) return await this.#run(params, false);
    const rows = await this.#run(params, true) as unknown[][];
    fixTimestamps(rows);
    if (mapper !== undefined) return mapper(rows) as T["execute"];
    const nullable = this.joinsNotNullableMap;
    return rows.map((row) => mapRow(fields!, row, nullable)) as T["execute"];
  }

  /** Runs the statement and resolves to its rows as objects, unmapped. */
  async all(placeholderValues: Record<string, unknown> = {}): Promise<T["all"]> {
    return await this.#run(this.#fill(placeholderValues), false);
  }

  /**
   * Whether Drizzle asked for rows as arrays (relational queries).
   * @ignore
   */
  isResponseInArrayMode(): boolean {
    return this.#arrayMode;
  }

  // The parameters with the values of `sql.placeholder()`s filled in, logged as they are sent
  // (before encoding: the logger sees what the caller gave).
  #fill(placeholderValues: Record<string, unknown>): unknown[] {
    const params = fillPlaceholders(this.#params, placeholderValues);
    this.#logger.logQuery(this.#text, params);
    return params;
  }

  async #run(params: unknown[], arrays: boolean): Promise<Rows | ValueRows> {
    try {
      return await this.#runner(this.#text, encodeParams(params, this.#typings), arrays);
    } catch (err) {
      throw new DrizzleQueryError(this.#text, params, err as Error);
    }
  }
}

/**
 * A Drizzle session over the pool: where its statements run (its runner), and how a
 * transaction starts (a checkout of the write group).
 */
export class PgdbpoolSession<
  TFullSchema extends Record<string, unknown>,
  TSchema extends TablesRelationalConfig,
> extends PgSession<PgdbpoolQueryResultHKT, TFullSchema, TSchema> {
  /** Drizzle's class tag (what `is()` checks). */
  static override readonly [entityKind]: string = "PgdbpoolSession";
  readonly #dialect: PgDialect;
  readonly #runner: Runner;
  readonly #router: Router;
  readonly #schema: RelationalSchemaConfig<TSchema> | undefined;
  readonly #logger: Logger;

  constructor(
    dialect: PgDialect,
    runner: Runner,
    router: Router,
    schema: RelationalSchemaConfig<TSchema> | undefined,
    logger: Logger,
  ) {
    super(dialect);
    this.#dialect = dialect;
    this.#runner = runner;
    this.#router = router;
    this.#schema = schema;
    this.#logger = logger;
  }

  /** Wraps a statement Drizzle built. */
  prepareQuery<T extends PreparedQueryConfig = PreparedQueryConfig>(
    query: Query,
    fields: SelectedFieldsOrdered | undefined,
    _name: string | undefined,
    isResponseInArrayMode: boolean,
    customResultMapper?: (rows: unknown[][]) => T["execute"],
    queryMetadata?: { type: "select" | "update" | "delete" | "insert"; tables: string[] },
  ): PgPreparedQuery<T> {
    return new PgdbpoolPreparedQuery<T>(
      this.#runner,
      query,
      this.#logger,
      fields,
      isResponseInArrayMode,
      customResultMapper,
      queryMetadata,
    );
  }

  /**
   * Runs `transaction` on one checkout of the write group: commits when it resolves, rolls
   * back when it throws (also `tx.rollback()`). `config` becomes a `SET TRANSACTION` statement,
   * sent with the `BEGIN` in one round trip.
   */
  async transaction<T>(
    transaction: (tx: PgTransaction<PgdbpoolQueryResultHKT, TFullSchema, TSchema>) => Promise<T>,
    config?: PgTransactionConfig,
  ): Promise<T> {
    const set = setTransactionSql(config, "db.transaction()");
    const db = this.#router.transactionHandler();
    try {
      const session = new PgdbpoolSession<TFullSchema, TSchema>(
        this.#dialect,
        handlerRunner(db),
        this.#router,
        this.#schema,
        this.#logger,
      );
      const tx = new PgdbpoolTransaction<TFullSchema, TSchema>(
        this.#dialect,
        session,
        this.#schema,
        db,
      );
      if (set !== undefined) await tx.execute(sql.raw(set));
      const result = await transaction(tx);
      let token: string | undefined;
      try {
        token = await db.commit();
      } catch (err) {
        throw new DrizzleQueryError("COMMIT", [], err as Error);
      }
      this.#router.record(token);
      return result;
    } finally {
      // Rolls back whatever is still open (a throw, tx.rollback()), then checks in.
      await db[Symbol.asyncDispose]();
    }
  }
}
