import { describe, it } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { SeatQueue } from "../src/seat_queue.ts";

// The seat queue is the one-shots' FIFO (src/seat_queue.ts): pure bookkeeping, so it is checked
// here against a plain array model, through every growth of its ring and every wrap-around.

type Op = { kind: "wait" } | { kind: "give" } | { kind: "rejectAll" };

// Runs of one kind, so that queues build up past the first ring (64) and wrap before growing.
const ops = fc.array(
  fc.tuple(
    fc.oneof(
      { weight: 6, arbitrary: fc.constant<Op>({ kind: "wait" }) },
      { weight: 5, arbitrary: fc.constant<Op>({ kind: "give" }) },
      { weight: 1, arbitrary: fc.constant<Op>({ kind: "rejectAll" }) },
    ),
    fc.integer({ min: 1, max: 90 }),
  ),
  { maxLength: 30 },
).map((runs) => runs.flatMap(([op, n]) => Array<Op>(op.kind === "rejectAll" ? 1 : n).fill(op)));

/** Runs `script` on a queue and on a model; returns what each waiter got, in settle order. */
async function run(script: readonly Op[]): Promise<void> {
  const queue = new SeatQueue<number>(60_000, () => new Error("timeout"), () => {}, () => {});
  const model: number[] = [];
  const settled: string[] = [];
  const expected: string[] = [];
  let next = 0;
  let given = 0;
  for (const op of script) {
    if (op.kind === "wait") {
      const id = next++;
      model.push(id);
      queue.wait().then(
        (value) => settled.push(`${id}:got ${value}`),
        () => settled.push(`${id}:rejected`),
      );
    } else if (op.kind === "give") {
      const value = given++;
      const oldest = model.shift();
      assert.equal(queue.give(value, performance.now()), oldest !== undefined);
      if (oldest !== undefined) expected.push(`${oldest}:got ${value}`);
    } else {
      queue.rejectAll(new Error("closing"));
      for (const id of model.splice(0)) expected.push(`${id}:rejected`);
    }
    assert.equal(queue.length, model.length);
  }
  queue.rejectAll(new Error("end"));
  for (const id of model.splice(0)) expected.push(`${id}:rejected`);
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.deepEqual(settled, expected);
}

describe("SeatQueue", () => {
  it("hands values to the oldest waiter first across growth and wrap-around (fast-check)", async () => {
    await fc.assert(fc.asyncProperty(ops, run), { numRuns: 200 });
  });

  it("regression: a ring that wraps and then grows keeps FIFO order", async () => {
    // fast-check's shrunk counterexample against a ring that grew without unrolling: the first
    // ring (64 slots) wraps after one give, then fills and doubles.
    const script: Op[] = [
      { kind: "wait" },
      { kind: "wait" },
      { kind: "give" },
      ...Array<Op>(64).fill({ kind: "wait" }),
    ];
    await run(script);
  });

  it("times waiters out oldest first and reports the queue emptied", async () => {
    let emptied = 0;
    const waited: number[] = [];
    const queue = new SeatQueue<string>(
      40,
      () => new Error("timed out"),
      () => emptied++,
      (ms) => waited.push(ms),
    );
    const order: string[] = [];
    const first = queue.wait().catch((err: Error) => order.push(`first ${err.message}`));
    const second = queue.wait().catch((err: Error) => order.push(`second ${err.message}`));
    await Promise.all([first, second]);
    assert.deepEqual(order, ["first timed out", "second timed out"]);
    assert.equal(emptied, 1);
    assert.equal(queue.length, 0);
    // The queue is usable again after emptying by timeouts.
    const third = queue.wait();
    assert.equal(queue.give("conn", performance.now()), true);
    assert.equal(await third, "conn");
    assert.equal(waited.length, 1);
  });
});
