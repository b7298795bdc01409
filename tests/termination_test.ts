// A statement the server was running when an administrator terminated its backend (FATAL
// 57P01) ran in part: its transaction is rolled back, but what it did outside it stays. Found by
// an audit, both used to be re-sent and applied twice while the caller saw one success:
// - a sequence advanced (or dblink, or any effect outside the transaction);
// - a simple-protocol autocommit INSERT whose commit was followed by the server's duration log
//   line (log_min_duration_statement): the server acts on the termination there, after the
//   commit and before ReadyForQuery, so the client sees CommandComplete, then the FATAL.
// Statements queued behind the running one never started: they still move (integrity case 6).
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { type PgCluster, startCluster } from "./harness/cluster.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { waitFor } from "./harness/wait.ts";
import { Pool, SessionLostError } from "../mod.ts";

await setTestTimeout(170_000);

let cluster: PgCluster;

before(async () => {
  cluster = await startCluster({ replicas: 0 });
  const p = cluster.primary;
  await p.query("CREATE TABLE w (id serial PRIMARY KEY, v text)");
  await p.query("CREATE SEQUENCE s");
  // A commit that takes a while (commit_delay needs fsync on and no siblings), then a log line.
  await p.query("ALTER SYSTEM SET fsync = on");
  await p.query("ALTER SYSTEM SET commit_delay = 100000");
  await p.query("ALTER SYSTEM SET commit_siblings = 0");
  await p.query("ALTER SYSTEM SET log_min_duration_statement = 0");
  await p.query("SELECT pg_reload_conf()");
  await waitFor(async () =>
    (await p.query("SELECT current_setting('commit_delay') AS v"))[0].v === "100000"
  );
}, { timeout: 170_000 });

after(async () => {
  await cluster?.close();
}, { timeout: 60_000 });

function pool(app: string): Pool {
  return new Pool({
    db: cluster.endpoints(),
    groups: { auto: { connection_count: 1 } },
    application_name: app,
    health_check_interval_ms: 0,
  });
}

/** Terminates the backend of `app` once it runs a statement matching `like`, from the server. */
function killWhenActive(app: string, like: string): Promise<unknown> {
  return cluster.primary.query(`DO $$ BEGIN
    FOR i IN 1..5000 LOOP
      PERFORM pg_stat_clear_snapshot();
      PERFORM pg_terminate_backend(pid) FROM pg_stat_activity
        WHERE application_name = '${app}' AND state = 'active' AND query LIKE '${like}';
      EXIT WHEN FOUND;
      PERFORM pg_sleep(0.001);
    END LOOP; END $$`);
}

describe("a statement running when its backend is terminated", () => {
  it("is reported unknown, not re-sent: a sequence it advanced is not advanced twice", async () => {
    await using p = pool("t-seq");
    await p.query("auto", "SELECT 1");
    const before = (await cluster.primary.query("SELECT nextval('s') AS v"))[0].v;
    const killer = killWhenActive("t-seq", "SELECT nextval%");
    const outcome = await p.query("auto", "SELECT nextval('s'), pg_sleep(2)").then(
      () => "resolved",
      (err: unknown) => err,
    );
    await killer;
    assert.ok(outcome instanceof SessionLostError, String(outcome));
    assert.equal(outcome.outcome, "unknown");
    // One for the terminated statement, one for this read: a third was a second run.
    const afterValue = (await cluster.primary.query("SELECT nextval('s') AS v"))[0].v;
    assert.equal(Number(afterValue) - Number(before), 2, "the statement ran twice");
  });

  it("an autocommit INSERT whose commit was logged before the termination is not re-sent", async () => {
    await using p = pool("t-log");
    await p.query("auto", "SELECT 1");
    const twice: string[] = [];
    for (let round = 0; round < 6; round++) {
      const v = `r${round}`;
      const killer = killWhenActive("t-log", "INSERT INTO w%");
      await new Promise((resolve) => setTimeout(resolve, 100));
      // No parameters, a new text each round: the simple protocol.
      await p.query("auto", `INSERT INTO w (v) VALUES ('${v}')`).catch((err: unknown) => {
        if (!(err instanceof SessionLostError)) throw err;
        assert.equal(err.outcome, "unknown", String(err));
      });
      await killer;
      const [{ n }] = await cluster.primary.query(
        "SELECT count(*)::int AS n FROM w WHERE v = $1",
        [v],
      );
      if (n > 1) twice.push(v);
    }
    assert.deepEqual(twice, [], "INSERTs applied twice");
  });
});
