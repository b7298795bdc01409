import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { Semaphore } from "../mod.ts";

describe("Semaphore", () => {
  it("hands permits out in strict FIFO order, with no barging", async () => {
    const sem = new Semaphore(1);
    assert.ok(sem.tryAcquire());
    const order: number[] = [];
    const waits = [0, 1, 2, 3].map((i) => sem.wait().then(() => order.push(i)));
    assert.equal(sem.waiting, 4);
    sem.release();
    // The permit went to waiter 0, so a newcomer cannot take it.
    assert.equal(sem.tryAcquire(), false);
    for (let i = 0; i < 3; i++) {
      await waits[i];
      sem.release();
    }
    await waits[3];
    assert.deepEqual(order, [0, 1, 2, 3]);
    sem.release();
    assert.equal(sem.available, 1);
  });

  it("times out waiters with a TimeoutError and keeps order for the rest", async () => {
    const sem = new Semaphore(1);
    const held = await sem.acquire();
    const started = performance.now();
    const short = sem.acquire({ timeout_ms: 30 });
    const long = sem.acquire({ timeout_ms: 5000 });
    await assert.rejects(short, (err: DOMException) => err.name === "TimeoutError");
    assert.ok(performance.now() - started >= 25);
    assert.equal(sem.waiting, 1);
    held[Symbol.dispose]();
    held[Symbol.dispose](); // one-shot: a second dispose must not add a permit
    const permit = await long;
    assert.equal(sem.available, 0);
    permit[Symbol.dispose]();
    assert.equal(sem.available, 1);
  });

  it("rejects with the abort reason and forgets the waiter", async () => {
    const sem = new Semaphore(1);
    sem.tryAcquire();
    const ctl = new AbortController();
    const waiting = sem.wait(ctl.signal);
    ctl.abort(new Error("gone"));
    await assert.rejects(waiting, /gone/);
    assert.equal(sem.waiting, 0);
    sem.release();
    assert.equal(sem.available, 1);
    await assert.rejects(sem.wait(AbortSignal.abort(new Error("early"))), /early/);
  });

  it("rejects a bad size with a RangeError", () => {
    assert.throws(() => new Semaphore(0), RangeError);
  });
});
