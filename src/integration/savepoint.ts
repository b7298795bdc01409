/**
 * Savepoints on a checkout. `ROLLBACK TO SAVEPOINT` answers with the command tag `ROLLBACK`,
 * which the pool's checkout takes for the end of the transaction: its `commit()` would then do
 * nothing and its release would not roll back. Until the core tells the two apart, a
 * `BEGIN` sent after it (a no-op with a warning inside a transaction) puts the checkout's
 * bookkeeping right again.
 *
 * @module
 */

import type { Handler } from "../../mod.ts";

/** After `ROLLBACK TO SAVEPOINT`: makes sure the checkout still knows its transaction is open. */
export async function keepTransactionOpen(db: Handler): Promise<void> {
  if (!db.inTransaction) await db.query("BEGIN");
}
