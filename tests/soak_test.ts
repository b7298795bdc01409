// A 60 s chaos soak in-process under the current runtime (the runner covers Deno, Bun and each
// PostgreSQL build): faults under concurrent load, then no violation may have been seen.
// runSoak starts and tears down its own cluster, proxy and pool, also when it fails.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { setTestTimeout } from "./harness/runtime.ts";
import { formatReport } from "../soak/report.ts";
import { runSoak } from "../soak/run.ts";

await setTestTimeout(180_000);

describe("chaos soak", () => {
  it("60 s of faults under load: no lost or repeated writes, no hangs, no leaks", {
    timeout: 180_000,
  }, async () => {
    const report = await runSoak({ seconds: 60, workers: 16 });
    console.log(formatReport(report));
    assert.deepEqual(report.soak_errors, [], "the soak itself ran and restored every fault");
    assert.deepEqual(
      report.violations.map((v) => `${v.kind} x${v.count}: ${v.examples[0]}`),
      [],
      "no violations",
    );
    assert.ok((report.writes?.acked ?? 0) > 0, "the soak acknowledged writes");
    assert.ok(Object.keys(report.faults).length >= 5, "several kinds of faults were applied");
  });
});
