// A transaction the pool did not open itself: `BEGIN` sent through `db.sql` (the postgres.js
// tagged template a handler hands out), `sql.unsafe`, or inside a text of several statements.
// The pool used to follow transactions only through `db.query`'s command tags, so such a
// handler went back to the idle pool with its transaction open: the next one-shots on that
// connection were acknowledged inside it and never committed (lost at close), and `db.commit()`
// resolved without committing anything.
import { after, before, beforeEach, describe, it } from "node:test";
import assert from "node:assert/strict";
import { type PgCluster, startCluster, testDriver } from "./harness/cluster.ts";
import { Pool } from "../mod.ts";
import { readyStatus } from "../src/driver/postgres.ts";

/** postgres.js sessions read the server's transaction status; Bun's `SQL` keeps it. */
const readsStatus = testDriver().driver !== "bun";

let cluster: PgCluster;
let pool: Pool;

before(async () => {
  cluster = await startCluster({ replicas: 0 });
  await cluster.primary.query("CREATE TABLE txs (v text)");
  pool = new Pool({
    db: cluster.endpoints(),
    // One connection: whatever a handler leaves on it, the next statement meets.
    groups: { auto: { connection_count: 1 } },
    application_name: "transaction_state_test",
  });
}, { timeout: 120_000 });

after(async () => {
  await pool?.close();
  await cluster?.close();
}, { timeout: 60_000 });

beforeEach(async () => {
  // DELETE, not TRUNCATE: a transaction left open (the defect) holds a lock TRUNCATE waits for.
  await cluster.primary.query("DELETE FROM txs");
});

/** What another session sees: committed rows only. */
async function committed(): Promise<string[]> {
  return (await cluster.primary.query("SELECT v FROM txs ORDER BY v")).map((r) => r.v as string);
}

/** The pool's one connection is not inside a transaction, and a write on it is committed. */
async function connectionIsClean(tag: string): Promise<void> {
  await pool.query("auto", "INSERT INTO txs (v) VALUES ($1)", [tag]);
  assert.ok((await committed()).includes(tag), `the one-shot write ${tag} after it is committed`);
}

describe("transactions opened outside the pool's own tracking", () => {
  it("BEGIN through db.sql, released without commit: rolled back at release", async () => {
    {
      using db = pool.handler("auto");
      await db.sql`BEGIN`;
      await db.sql`INSERT INTO txs (v) VALUES ('left-open')`;
    }
    await connectionIsClean("after-sql");
    assert.deepEqual(await committed(), ["after-sql"]);
  });

  it("BEGIN through db.sql.unsafe, released without commit: rolled back at release", async () => {
    {
      using db = pool.handler("auto");
      await db.sql.unsafe("BEGIN");
      await db.sql.unsafe("INSERT INTO txs (v) VALUES ('left-open')");
    }
    await connectionIsClean("after-unsafe");
    assert.deepEqual(await committed(), ["after-unsafe"]);
  });

  it("BEGIN inside a text of several statements through db.query: rolled back at release", async () => {
    {
      using db = pool.handler("auto");
      await db.query("BEGIN; INSERT INTO txs (v) VALUES ('left-open')");
    }
    await connectionIsClean("after-multi");
    assert.deepEqual(await committed(), ["after-multi"]);
  });

  it("BEGIN through db.sql, then db.commit(): committed", async () => {
    {
      using db = pool.handler("auto");
      await db.sql`BEGIN`;
      await db.sql`INSERT INTO txs (v) VALUES ('committed-by-handler')`;
      await db.commit();
      assert.deepEqual(await committed(), ["committed-by-handler"]);
    }
    await connectionIsClean("after-commit");
  });

  it("BEGIN through db.sql, then db.rollback(): rolled back", async () => {
    {
      using db = pool.handler("auto");
      await db.sql`BEGIN`;
      await db.sql`INSERT INTO txs (v) VALUES ('rolled-back')`;
      await db.rollback();
      await db.sql`INSERT INTO txs (v) VALUES ('autocommit-again')`;
    }
    assert.deepEqual(await committed(), ["autocommit-again"]);
    await connectionIsClean("after-rollback");
  });

  it("BEGIN and COMMIT both through db.sql: committed, nothing rolled back at release", async () => {
    {
      using db = pool.handler("auto");
      await db.sql`BEGIN`;
      assert.equal(db.inTransaction, true);
      await db.sql`INSERT INTO txs (v) VALUES ('sql-commit')`;
      await db.sql`COMMIT`;
      // Where the session's own status is read, it says the block ended: no ROLLBACK follows.
      if (readsStatus) assert.equal(db.inTransaction, false);
    }
    assert.deepEqual(await committed(), ["sql-commit"]);
    await connectionIsClean("after-sql-commit");
  });

  it("a COMMIT of its own that the server turned into a ROLLBACK rejects, also in pool.transaction", async () => {
    // Found by an audit: db.query("COMMIT") in an aborted transaction resolved (its tag says
    // ROLLBACK), and pool.transaction() then reported success with nothing committed.
    for (const commit of ["COMMIT", "end", "/* done */ COMMIT WORK"]) {
      using db = pool.handler("auto");
      await db.query("BEGIN");
      await db.query("INSERT INTO txs (v) VALUES ('aborted')");
      await assert.rejects(db.query("SELECT 1/0"), { code: "22012" });
      await assert.rejects(db.query(commit), (err: Error) => {
        assert.equal(err.name, "TransactionAbortedError", `${commit}: ${err}`);
        return true;
      });
      assert.equal(db.inTransaction, false);
    }
    await assert.rejects(
      pool.transaction("auto", async (db) => {
        await db.query("INSERT INTO txs (v) VALUES ('in-transaction')");
        await db.query("INSERT INTO txs (v) VALUES (NULL::int::text || 1/0)").catch(() => {});
        await db.query("COMMIT");
        return "ok";
      }),
      { name: "TransactionAbortedError" },
    );
    assert.deepEqual(await committed(), []);
    await connectionIsClean("after-aborted-commit");
  });

  it("a one-shot that is only a BEGIN is refused before anything is sent", async () => {
    for (const text of ["BEGIN", "  start transaction isolation level serializable", "begin;"]) {
      await assert.rejects(pool.query("auto", text), (err: Error) => {
        assert.ok(err instanceof TypeError, String(err));
        assert.match(err.message, /pool\.transaction\(\) or a handler/);
        assert.ok(err.message.includes(JSON.stringify(text)), err.message);
        return true;
      });
    }
    await connectionIsClean("after-one-shot-begin");
  });

  it("a one-shot BEGIN behind comments is refused too (it opened a block on the shared connection)", async () => {
    // Found by an audit: only blanks were skipped before the keyword, so a BEGIN after a comment
    // (a query tag, a name line) ran as a one-shot: the next one-shots on that connection were
    // acknowledged inside its block and lost when the pool closed.
    const texts = [
      "/* tag */ BEGIN",
      "-- name: open\nSTART TRANSACTION",
      "/* outer /* nested */ still a comment */ begin isolation level serializable",
      "\n\t-- a\n/* b */ begin;",
    ];
    for (const text of texts) {
      await assert.rejects(pool.query("auto", text), (err: Error) => {
        assert.ok(err instanceof TypeError, `${JSON.stringify(text)}: ${err}`);
        return true;
      });
    }
    await connectionIsClean("after-comment-begin");
    // A comment that only looks like it holds a BEGIN is not a BEGIN.
    const rows = await pool.query("auto", "/* begin /* nested */ begin */ SELECT 1 AS one");
    assert.equal(rows[0].one, 1);
  });

  it("a one-shot text that leaves a transaction open is committed as a whole, on a connection of its own", async () => {
    const text =
      "INSERT INTO txs (v) VALUES ('before'); BEGIN; INSERT INTO txs (v) VALUES ('inside')";
    // Others pipelined around it on the one connection must not run inside its block.
    const around = Array.from(
      { length: 4 },
      (_, i) => pool.query("auto", "INSERT INTO txs (v) VALUES ($1)", [`around-${i}`]),
    );
    await pool.query("auto", text);
    await Promise.all(around);
    assert.deepEqual(await committed(), [
      "around-0",
      "around-1",
      "around-2",
      "around-3",
      "before",
      "inside",
    ]);
    await connectionIsClean("after-multi-one-shot");
  });

  it("a one-shot text whose block fails is rolled back, and fails with the server's error", async () => {
    await assert.rejects(
      pool.query("auto", "BEGIN; INSERT INTO txs (v) VALUES ('inside'); SELECT 1/0"),
      (err: Error & { code?: string }) => {
        assert.equal(err.code, "22012", String(err));
        return true;
      },
    );
    assert.deepEqual(await committed(), []);
    await connectionIsClean("after-failed-block");
  });

  it("a one-shot text that opens and commits its own block needs nothing more", async () => {
    await pool.query("auto", "BEGIN; INSERT INTO txs (v) VALUES ('self'); COMMIT");
    assert.deepEqual(await committed(), ["self"]);
    await connectionIsClean("after-self-commit");
  });

  it("a one-shot DO block (BEGIN ... END inside) runs as usual", async () => {
    await pool.query("auto", "DO $$ BEGIN INSERT INTO txs (v) VALUES ('do-block'); END $$");
    assert.deepEqual(await committed(), ["do-block"]);
    await connectionIsClean("after-do");
  });
});

describe("readyStatus: the status byte of the last ReadyForQuery", () => {
  const z = (status: string) => [0x5a, 0, 0, 0, 5, status.charCodeAt(0)];
  it("reads I, T and E at the end of a chunk, also split across two chunks", () => {
    assert.equal(readyStatus(undefined, Uint8Array.from([0x43, 1, 2, ...z("I")])), 0x49);
    assert.equal(readyStatus(undefined, Uint8Array.from(z("T"))), 0x54);
    for (let cut = 1; cut < 6; cut++) {
      const bytes = [0x44, 9, ...z("E")];
      const at = bytes.length - cut;
      assert.equal(
        readyStatus(Uint8Array.from(bytes.slice(0, at)), Uint8Array.from(bytes.slice(at))),
        0x45,
        `cut ${cut} bytes from the end`,
      );
    }
  });
  it("says nothing when something else came last or the bytes are too few", () => {
    // A notification after the ReadyForQuery ends with a NUL.
    assert.equal(
      readyStatus(undefined, Uint8Array.from([...z("I"), 0x41, 0, 0, 0, 4, 0])),
      undefined,
    );
    assert.equal(readyStatus(undefined, Uint8Array.from([0, 0, 5, 0x49])), undefined);
    assert.equal(readyStatus(undefined, Uint8Array.from([0x5a, 0, 0, 0, 5, 0x58])), undefined);
  });
});
