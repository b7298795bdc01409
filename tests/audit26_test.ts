// Audit 26: the Drizzle and Kysely entries under real faults (terminated backends, a pool closed
// under in-flight work), each case proven against a real server.
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { Kysely, sql } from "kysely";
import { type PgCluster, startCluster } from "./harness/cluster.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { waitFor } from "./harness/wait.ts";
import { Pool, SessionLostError, TransactionLostError } from "../mod.ts";
import { PgdbpoolDialect } from "../kysely.ts";

await setTestTimeout(180_000);

interface DB {
  numbers: { n: number };
  marks: { n: number };
}

// Started by the first test that needs servers.
let cluster: PgCluster;
let starting: Promise<PgCluster> | undefined;
const servers = () =>
  starting ??= startCluster({ replicas: 1 }).then(async (c) => {
    cluster = c;
    await c.primary.query("CREATE TABLE numbers (n int PRIMARY KEY)");
    await c.primary.query("INSERT INTO numbers SELECT generate_series(1, 100)");
    await c.primary.query("CREATE TABLE marks (n int NOT NULL)");
    await c.waitForReplication();
    return c;
  });

after(async () => {
  await (await starting)?.close();
}, { timeout: 60_000 });

const APP = "audit26";

function pool(): Pool {
  return new Pool({
    db: cluster.endpoints(),
    groups: {
      write: { connection_count: 2, role: "primary", autocommit: false },
      read: { connection_count: 2, role: "replica" },
    },
    application_name: APP,
    health_check_interval_ms: 100,
  });
}

/** Terminates `backend` from another connection and waits until the server has let it go. */
async function kill(backend: number): Promise<void> {
  await cluster.primary.query("SELECT pg_terminate_backend($1)", [backend]);
  await waitFor(
    async () =>
      (await cluster.primary.query("SELECT 1 FROM pg_stat_activity WHERE pid = $1", [backend]))
        .length === 0,
    { message: `backend ${backend} gone` },
  );
}

describe("kysely: a stream's own transaction under faults", () => {
  it("a stream left early whose rollback finds the session lost leaves db.connection() lost", async () => {
    // The rollback of a stream's own transaction, left early after its backend died, was sent
    // without noting the loss the pool reported: Kysely's next rollback on the connection (a
    // transaction whose callback threw before any statement) then reached the pool's rollback
    // of a lost checkout, the explicit way to a new session, and db.connection() went on in a
    // fresh backend without a word.
    await servers();
    await using p = pool();
    const db = new Kysely<DB>({ dialect: new PgdbpoolDialect({ pool: p, group: "write" }) });
    const outcome = await db.connection().execute(async (c) => {
      // A transaction first: the connection's checkout now opens a block with every first
      // statement, so a later transaction sends nothing before its first statement.
      const backend = await c.transaction().execute(async (trx) =>
        (await sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`.execute(trx)).rows[0].pid
      );
      const left = await (async () => {
        for await (const _ of c.selectFrom("numbers").selectAll().stream(10)) {
          await kill(backend);
          break;
        }
      })().then(() => undefined, (err: Error) => err);
      const rolledBack = await c.transaction().execute(() => {
        throw new Error("the caller's own failure");
      }).then(() => undefined, (err: Error) => err);
      const later = await sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`.execute(c).then(
        (r) => r.rows[0],
        (err: Error) => err,
      );
      return { left, rolledBack, later };
    });
    assert.ok(outcome.left instanceof TransactionLostError, String(outcome.left));
    assert.ok(
      outcome.later instanceof SessionLostError,
      `went on with ${
        JSON.stringify(outcome.later)
      } (stream: ${outcome.left}; rollback: ${outcome.rolledBack})`,
    );
    await waitFor(() => p.stats().groups.write.busy === 0, { message: "permit back" });
  });
});

describe("kysely: routing of SELECTs that lock rows", () => {
  it("a lock clause in a subquery keeps the SELECT on group", async () => {
    // Only the outermost SELECT's (and its CTEs') lock clauses were looked at: a SELECT whose
    // subquery locks rows went to the read group and failed on a replica with 25006 ("cannot
    // execute SELECT FOR UPDATE in a read-only transaction").
    await servers();
    await using p = pool();
    const db = new Kysely<DB>({
      dialect: new PgdbpoolDialect({ pool: p, group: "write", read: "read" }),
    });
    const port = sql<number>`inet_server_port()`.as("port");
    const inFrom = db.selectFrom(db.selectFrom("numbers").selectAll().forUpdate().as("s"))
      .select(port).limit(1);
    const inWhere = db.selectFrom("numbers")
      .where("n", "in", db.selectFrom("numbers").select("n").where("n", "<", 3).forShare())
      .select(port).limit(1);
    const inSelection = db.selectFrom("numbers")
      .select((eb) => [
        port,
        eb.selectFrom("numbers as m").select("m.n").limit(1).forNoKeyUpdate().as("m"),
      ])
      .limit(1);
    for (const query of [inFrom, inWhere, inSelection]) {
      const rows = await query.execute();
      assert.equal(rows[0].port, cluster.primary.port, query.compile().sql);
    }
    // A plain SELECT still reads on the replica.
    const [plain] = await db.selectFrom("numbers").select(port).limit(1).execute();
    assert.equal(plain.port, cluster.replicas[0].port);
  });
});
