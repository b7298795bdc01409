// withDeadline counts only time in which the process could have seen an answer: a timer that
// fires late after an event-loop stall gets a short grace so that an answer waiting unread is
// read first. Under stalls that never stopped, the grace was re-armed after every late timer, so
// the deadline never fired (found by an audit).
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { withDeadline } from "../src/deadline.ts";

/** Blocks the event loop in 120 ms slices, with a turn of the loop between slices, for `ms`. */
function stallFor(ms: number): Promise<void> {
  const until = performance.now() + ms;
  return new Promise((resolve) => {
    const burn = () => {
      const sliceEnd = performance.now() + 120;
      while (performance.now() < sliceEnd) { /* busy */ }
      if (performance.now() < until) setTimeout(burn, 0);
      else resolve();
    };
    setTimeout(burn, 0);
  });
}

describe("withDeadline", () => {
  it("fires under stalls that do not stop, after one grace", async () => {
    const never = new Promise<never>(() => {});
    const started = performance.now();
    const stalls = stallFor(3000);
    const outcome = await withDeadline(never, 200).then(
      () => "settled",
      (err: Error & { code?: string }) => ({ code: err.code, at: performance.now() - started }),
    );
    await stalls;
    assert.notEqual(outcome, "settled");
    assert.equal((outcome as { code?: string }).code, "ETIMEDOUT");
    // Due at 200 ms; with slices of 120 ms and one grace it fires well before the stalls end.
    assert.ok(
      (outcome as { at: number }).at < 2000,
      `fired after ${(outcome as { at: number }).at} ms`,
    );
  });
});
