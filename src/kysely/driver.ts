/**
 * Kysely's driver over the pool: connections that check out lazily, transactions and
 * savepoints on one checkout, and a `destroy()` that leaves the pool alone (it belongs to the
 * caller).
 *
 * @module
 */

import {
  type CompiledQuery,
  createQueryId,
  type DatabaseConnection,
  type Driver,
  IdentifierNode,
  type QueryCompiler,
  RawNode,
  type TransactionSettings,
} from "kysely";
import type { Router } from "../integration/router.ts";
import { PgdbpoolConnection } from "./connection.ts";

type Compile = QueryCompiler["compileQuery"];

function savepointCommand(compile: Compile, command: string, name: string): CompiledQuery {
  // The name is an identifier node: the compiler quotes it.
  const node = RawNode.createWithChildren([
    RawNode.createWithSql(`${command} `),
    IdentifierNode.create(name),
  ]);
  return compile(node, createQueryId());
}

function connectionOf(connection: DatabaseConnection): PgdbpoolConnection {
  if (connection instanceof PgdbpoolConnection) return connection;
  throw new TypeError("The pgdbpool Kysely driver was handed a connection it did not make");
}

/** The driver a {@linkcode PgdbpoolDialect} gives Kysely. */
export class PgdbpoolDriver implements Driver {
  readonly #router: Router;

  constructor(router: Router) {
    this.#router = router;
  }

  /** Nothing to do: the pool opens connections on first use. */
  async init(): Promise<void> {}

  /** A connection that checks out on its first statement (nothing is held yet). */
  acquireConnection(options?: { signal?: AbortSignal }): Promise<DatabaseConnection> {
    return Promise.resolve(new PgdbpoolConnection(this.#router, options?.signal));
  }

  /** Starts a transaction on the write group (BEGIN goes out with the first statement). */
  async beginTransaction(
    connection: DatabaseConnection,
    settings: TransactionSettings,
  ): Promise<void> {
    await connectionOf(connection).begin(settings);
  }

  /** Commits; a COMMIT PostgreSQL turned into a rollback throws `AbortedTransactionError`. */
  async commitTransaction(connection: DatabaseConnection): Promise<void> {
    await connectionOf(connection).commit();
  }

  /** Rolls back. */
  async rollbackTransaction(connection: DatabaseConnection): Promise<void> {
    await connectionOf(connection).rollback();
  }

  /** `SAVEPOINT name`. */
  async savepoint(connection: DatabaseConnection, name: string, compile: Compile): Promise<void> {
    await connectionOf(connection).savepoint(savepointCommand(compile, "savepoint", name));
  }

  /** `ROLLBACK TO SAVEPOINT name`. */
  async rollbackToSavepoint(
    connection: DatabaseConnection,
    name: string,
    compile: Compile,
  ): Promise<void> {
    await connectionOf(connection).savepoint(
      savepointCommand(compile, "rollback to savepoint", name),
    );
  }

  /** `RELEASE SAVEPOINT name`. */
  async releaseSavepoint(
    connection: DatabaseConnection,
    name: string,
    compile: Compile,
  ): Promise<void> {
    await connectionOf(connection).savepoint(
      savepointCommand(compile, "release savepoint", name),
    );
  }

  /** Gives the connection's checkout back, rolling back anything left open. */
  async releaseConnection(connection: DatabaseConnection): Promise<void> {
    await connectionOf(connection).release();
  }

  /** Does not close the pool: the pool belongs to the caller. */
  async destroy(): Promise<void> {}
}
