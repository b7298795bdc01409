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

/** Settles after `turns` turns of the event loop, as an answer needing that many reads would. */
function afterTurns(turns: number): Promise<string> {
  return new Promise((resolve) => {
    let seen = 0;
    const step = () => ++seen >= turns ? resolve("settled") : setTimeout(step, 0);
    setTimeout(step, 0);
  });
}

describe("withDeadline", () => {
  // A fresh session's connect, start-up and first answer take several turns of the loop. Under
  // a loop stalled again and again (a long synchronous benchmark loop did it), one grace let a
  // probe of a healthy server time out: the server was marked down, and every checkout of a
  // non-threaded pool went the slow way (15 us instead of 0.5 us) until the stalls ended.
  it("gives an answer that needs several turns of a stalled loop its turns", async () => {
    const stalls = stallFor(1500);
    const outcome = await withDeadline(afterTurns(6), 300).then(
      (v) => v,
      (err: Error & { code?: string }) => err.code,
    );
    await stalls;
    assert.equal(outcome, "settled");
  });

  it("fires under stalls that do not stop, after a bounded number of graces", async () => {
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
    // Due at 200 ms; with slices of 120 ms and at most 4 graces it fires well before the stalls
    // end.
    assert.ok(
      (outcome as { at: number }).at < 2000,
      `fired after ${(outcome as { at: number }).at} ms`,
    );
  });
});
