// A 60 s chaos soak in-process under the current runtime (the runner covers Deno, Bun and each
// PostgreSQL build): faults under concurrent load, then no violation may have been seen.
// runSoak starts and tears down its own cluster, proxy and pool, also when it fails.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { setTestTimeout } from "./harness/runtime.ts";
import { formatReport } from "../soak/report.ts";
import { runSoak } from "../soak/run.ts";
import { LoopLag } from "../soak/metrics.ts";
import { checkDeadline, Violations } from "../soak/checks.ts";

await setTestTimeout(180_000);

describe("chaos soak", () => {
  it("does not blame the pool for a timer that fires at the end of a stall not yet noted", async () => {
    const lag = new LoopLag();
    lag.start();
    try {
      await new Promise((resolve) => setTimeout(resolve, 3 * LoopLag.PERIOD_MS));
      const startedAt = performance.now();
      // The event loop is blocked past the deadline: no timer, the monitor's included, can run.
      while (performance.now() - startedAt < 120) { /* a stall */ }
      assert.equal(lag.worstBetween(startedAt, performance.now()), 0, "not noted yet");
      assert.ok(lag.pending(performance.now()) >= 100, `pending ${lag.pending(performance.now())}`);
      const violations = new Violations();
      checkDeadline(violations, lag, "stalled", startedAt, 20);
      assert.equal(violations.total, 0);
      // Control: lateness beyond the stall is still the pool's (300 ms against 20 + 50 + 120).
      await new Promise((resolve) => setTimeout(resolve, 3 * LoopLag.PERIOD_MS));
      const late = new Violations();
      checkDeadline(late, lag, "late", performance.now() - 300, 20);
      assert.equal(late.total, 1);
    } finally {
      lag.stop();
    }
  });

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
