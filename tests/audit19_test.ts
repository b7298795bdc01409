// Defects found by audit 19 (the Drizzle, Kysely and OpenTelemetry entries under faults and edge
// cases), each proven against real servers.
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { Kysely, sql } from "kysely";
import { type PgCluster, startCluster } from "./harness/cluster.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { waitFor } from "./harness/wait.ts";
import { Pool, SessionLostError } from "../mod.ts";
import { PgdbpoolDialect } from "../kysely.ts";
import { drizzle } from "../drizzle.ts";
import { instrument, type MeterProvider } from "../otel.ts";

await setTestTimeout(180_000);

interface DB {
  numbers: { n: number };
}

// Started by the first test that needs servers.
let cluster: PgCluster;
let starting: Promise<PgCluster> | undefined;
const servers = () =>
  starting ??= startCluster({ replicas: 0 }).then(async (c) => {
    cluster = c;
    await c.primary.query("CREATE TABLE numbers (n int PRIMARY KEY)");
    await c.primary.query("INSERT INTO numbers SELECT generate_series(1, 100)");
    return c;
  });

after(async () => {
  await (await starting)?.close();
}, { timeout: 60_000 });

const APP = "audit19";

function pool(): Pool {
  return new Pool({
    db: cluster.endpoints(),
    groups: { write: { connection_count: 2, role: "primary", autocommit: false } },
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

describe("kysely: streams under faults", () => {
  it("a stream left early whose CLOSE finds the session lost leaves db.connection() lost", async () => {
    // The CLOSE of a stream left early inside a transaction was sent without noting a loss:
    // Kysely's rollback then reached the pool's rollback of a lost checkout (the explicit way
    // to a new session), and db.connection() went on, without a word, in a fresh session
    // without its advisory lock.
    await servers();
    await using p = pool();
    const db = new Kysely<DB>({ dialect: new PgdbpoolDialect({ pool: p, group: "write" }) });
    const outcome = await db.connection().execute(async (c) => {
      const first = await sql<{ pid: number }>`
        SELECT pg_backend_pid() AS pid, pg_try_advisory_lock(1919) AS locked`.execute(c);
      const backend = first.rows[0].pid;
      const lost = await c.transaction().execute(async (trx) => {
        for await (const _ of trx.selectFrom("numbers").selectAll().stream(10)) {
          await kill(backend);
          break;
        }
      }).then(() => undefined, (err: Error) => err);
      const later = await sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`.execute(c).then(
        (r) => r.rows[0],
        (err: Error) => err,
      );
      return { lost, later };
    });
    assert.ok(outcome.lost instanceof SessionLostError, String(outcome.lost));
    assert.ok(
      outcome.later instanceof SessionLostError,
      `went on with ${JSON.stringify(outcome.later)}`,
    );
    await waitFor(() => p.stats().groups.write.busy === 0, { message: "permit back" });
  });
});

describe("integration options: no password in their errors", () => {
  it("a connection URL passed where the pool goes is named without its password", () => {
    // Drizzle's own drivers take drizzle(url): passing the URL here was refused with a
    // TypeError that quoted it whole, password included.
    const secret = "s3cr3t-audit19";
    const url = `postgres://app:${secret}@db.example:5432/app`;
    const attempts: [string, () => unknown][] = [
      ["drizzle()", () => drizzle(url as unknown as Pool, { group: "write" })],
      [
        "PgdbpoolDialect",
        () => new PgdbpoolDialect({ pool: url as unknown as Pool, group: "write" }),
      ],
    ];
    for (const [caller, attempt] of attempts) {
      assert.throws(attempt, (err: Error) => {
        assert.ok(err instanceof TypeError, String(err));
        assert.ok(err.message.startsWith(caller), err.message);
        assert.ok(!err.message.includes(secret), `password in ${err.message}`);
        assert.ok(err.message.includes("db.example"), `the value is still named: ${err.message}`);
        return true;
      });
    }
  });
});

describe("otel: instrument() of something that is not a pool", () => {
  it("is refused before anything is registered, naming the value without a password", () => {
    // instrument(url) registered its metrics callback, then failed assigning the hooks to a
    // string: Deno's TypeError quoted the URL whole, password included, and the callback stayed
    // registered (calling stats() of a string at every collection). An object was accepted
    // without a word, with the same callback.
    const secret = "s3cr3t-audit19";
    const url = `postgres://app:${secret}@db.example:5432/app`;
    for (const notAPool of [url, { db: url }, undefined]) {
      let meters = 0;
      const meterProvider = {
        getMeter() {
          meters++;
          throw new Error("a meter was asked for");
        },
      } as unknown as MeterProvider;
      assert.throws(
        () => instrument(notAPool as unknown as Pool, { meterProvider }),
        (err: Error) => {
          assert.ok(err instanceof TypeError, String(err));
          assert.match(err.message, /^instrument\(\) needs a Pool/);
          assert.ok(!err.message.includes(secret), `password in ${err.message}`);
          return true;
        },
      );
      assert.equal(meters, 0, "nothing registered for a value that is not a pool");
    }
  });
});
