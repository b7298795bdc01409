// Defects found by audit 25 (the password on Bun's driver), each proven against a real server.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { type PgCluster, startCluster, testDriver } from "./harness/cluster.ts";
import { passwordFunctions } from "./harness/reachable.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { Pool } from "../mod.ts";

await setTestTimeout(120_000);

let cluster: PgCluster;

before(async () => {
  cluster = await startCluster({ replicas: 0 });
}, { timeout: 120_000 });

after(async () => {
  await cluster?.close();
}, { timeout: 60_000 });

/** Calls `f` from frames that are not the caller's own code: built-ins, microtasks. */
async function callFromNativeFrames(f: () => unknown): Promise<unknown[]> {
  const answers: unknown[] = [];
  const attempt = async (how: () => unknown) => {
    try {
      answers.push(await how());
    } catch (err) {
      answers.push(err);
    }
  };
  await attempt(() => f());
  await attempt(() => Promise.resolve().then(f));
  await attempt(() => JSON.parse("0", f as (key: string, value: unknown) => unknown));
  await attempt(() => [0].map(f as () => unknown)[0]);
  await attempt(() => Reflect.apply(f, undefined, []));
  await attempt(() => f.call(undefined));
  await attempt(() => new Promise((resolve) => setTimeout(resolve, 0)).then(f));
  await attempt(() => Array.from([0], f as () => unknown)[0]);
  await attempt(() => "x".replace(/x/, f as () => string));
  return answers;
}

describe("the password of a Bun session", () => {
  it("is given to no caller reaching the password callback through db.sql, from any frame", async () => {
    await using p = new Pool({
      db: cluster.endpoints(),
      groups: { g: { connection_count: 1 } },
      application_name: "audit25-password",
    });
    const secret = cluster.endpoints()[0].pass;
    await using db = await p.acquire("g");
    const first = db.sql`SELECT 1 AS n`;
    const before = passwordFunctions(first).concat(passwordFunctions(db.sql));
    const beforeAnswers = (await Promise.all(before.map(callFromNativeFrames))).flat();
    assert.equal((await first)[0].n, 1);
    const second = db.sql`SELECT 2 AS n`;
    const after = passwordFunctions(second).concat(passwordFunctions(db.sql));
    await second;
    const afterAnswers = (await Promise.all(after.map(callFromNativeFrames))).flat();
    for (const answer of [...beforeAnswers, ...afterAnswers]) {
      assert.notEqual(answer, secret, "the password was given out");
      assert.ok(!String(answer).includes(secret), "the password was given out");
    }
    if (testDriver().driver === "bun") {
      assert.ok(before.length + after.length > 0, "nothing was tried");
    }
  });
});
