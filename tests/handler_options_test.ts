// Pure unit tests of checkout option validation: no database.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { NO_HANDLER_OPTIONS, resolveHandlerOptions } from "../src/handler_options.ts";

const KNOWN = "(known: signal, timeout_ms, autocommit, after)";

/** Asserts that resolving `options` throws exactly `type` (not a subclass) with `message`. */
function rejects(
  options: unknown,
  type: typeof TypeError | typeof RangeError,
  message: string,
  group = "read",
): void {
  assert.throws(() => resolveHandlerOptions(group, options), (err: unknown) => {
    assert.ok(err instanceof Error, `expected an Error, got ${err}`);
    assert.equal(err.constructor, type, `${err.name}: ${err.message}`);
    assert.equal(err.message, message);
    return true;
  });
}

describe("resolveHandlerOptions", () => {
  it("returns the shared frozen empty form for no options", () => {
    assert.equal(resolveHandlerOptions("read", undefined), NO_HANDLER_OPTIONS);
    assert.ok(Object.isFrozen(NO_HANDLER_OPTIONS));
    assert.deepEqual({ ...NO_HANDLER_OPTIONS }, {
      signal: undefined,
      timeoutMs: undefined,
      autocommit: undefined,
      after: undefined,
    });
    // Keys given as undefined are absent: spreading optional values must not allocate either.
    assert.equal(resolveHandlerOptions("read", {}), NO_HANDLER_OPTIONS);
    assert.equal(
      resolveHandlerOptions("read", {
        signal: undefined,
        timeout_ms: undefined,
        autocommit: undefined,
        after: undefined,
      }),
      NO_HANDLER_OPTIONS,
    );
  });

  it("never builds a key array (no Object.keys on the checkout path)", () => {
    const keys = Object.keys;
    Object.keys = () => {
      throw new Error("Object.keys called");
    };
    try {
      resolveHandlerOptions("read", undefined);
      resolveHandlerOptions("read", { timeout_ms: 5, autocommit: false });
      assert.throws(() => resolveHandlerOptions("read", { timeout: 5 }), TypeError);
    } finally {
      Object.keys = keys;
    }
  });

  it("resolves every option into a frozen object of one shape", () => {
    const controller = new AbortController();
    const options = resolveHandlerOptions("read", {
      signal: controller.signal,
      timeout_ms: 500,
      autocommit: false,
      after: "16/B374D848",
    });
    assert.ok(Object.isFrozen(options));
    assert.equal(options.signal, controller.signal);
    assert.equal(options.timeoutMs, 500);
    assert.equal(options.autocommit, false);
    assert.equal(options.after, (0x16n << 32n) | 0xB374D848n);
    const partial = resolveHandlerOptions("read", { autocommit: true });
    assert.deepEqual(Object.keys(partial), Object.keys(options));
    assert.equal(partial.autocommit, true);
    assert.equal(partial.timeoutMs, undefined);
    assert.notEqual(partial, NO_HANDLER_OPTIONS);
  });

  it("does not touch the caller's object", () => {
    const given = Object.freeze({ timeout_ms: 10, after: "0/1" });
    resolveHandlerOptions("read", given);
    assert.deepEqual(given, { timeout_ms: 10, after: "0/1" });
  });

  it("rejects options that are not an object", () => {
    for (
      const [value, shown] of [
        [null, "null"],
        [5, "5"],
        ["fast", '"fast"'],
        [true, "true"],
        [[], "an array"],
        [() => {}, "function"],
      ] as const
    ) {
      rejects(
        value,
        TypeError,
        `Handler options of group "read" must be an object (got ${shown})`,
      );
    }
  });

  it("rejects unknown keys, naming the key and the known ones", () => {
    rejects(
      { timeout: 500 },
      TypeError,
      `Handler option "timeout" of group "read" is not known ${KNOWN}`,
    );
    rejects(
      { signal: undefined, timeoutMs: 500 },
      TypeError,
      `Handler option "timeoutMs" of group "write" is not known ${KNOWN}`,
      "write",
    );
    rejects({ "": 1 }, TypeError, `Handler option "" of group "read" is not known ${KNOWN}`);
    // Inherited keys are not the caller's typing; symbols are not option names.
    const inherited = Object.create({ timeout: 500 });
    inherited.timeout_ms = 5;
    assert.equal(resolveHandlerOptions("read", inherited).timeoutMs, 5);
    assert.equal(resolveHandlerOptions("read", { [Symbol("x")]: 1 }), NO_HANDLER_OPTIONS);
  });

  it("takes timeout_ms from 0 to 2147483647 and rejects the rest, NaN included", () => {
    for (const ok of [0, 1.5, 500, 2147483647]) {
      assert.equal(resolveHandlerOptions("read", { timeout_ms: ok }).timeoutMs, ok);
    }
    for (
      const [value, shown] of [
        [NaN, "NaN"],
        [Infinity, "Infinity"],
        [-Infinity, "-Infinity"],
        [-1, "-1"],
        [2147483648, "2147483648"],
        [3e9, "3000000000"],
        ["500", '"500"'],
        [null, "null"],
        [10n, "10"],
      ] as const
    ) {
      rejects(
        { timeout_ms: value },
        RangeError,
        `Handler option timeout_ms of group "read" must be a number from 0 to 2147483647 (got ${shown})`,
      );
    }
  });

  it("takes an AbortSignal, including one from another realm, and rejects other values", () => {
    const aborted = AbortSignal.abort();
    assert.equal(resolveHandlerOptions("read", { signal: aborted }).signal, aborted);
    // Same behaviour, different class: a polyfill or another realm's signal.
    const foreign = Object.assign(new EventTarget(), { aborted: false, reason: undefined });
    assert.equal(resolveHandlerOptions("read", { signal: foreign }).signal, foreign);
    for (
      const [value, shown] of [
        [null, "null"],
        [{}, "an object"],
        [new EventTarget(), "an object"],
        [{ aborted: "no", addEventListener() {} }, "an object"],
        ["signal", '"signal"'],
        [true, "true"],
      ] as const
    ) {
      rejects(
        { signal: value },
        TypeError,
        `Handler option signal of group "read" must be an AbortSignal (got ${shown})`,
      );
    }
  });

  it("takes autocommit as a boolean only", () => {
    assert.equal(resolveHandlerOptions("read", { autocommit: false }).autocommit, false);
    for (const [value, shown] of [["yes", '"yes"'], [1, "1"], [null, "null"]] as const) {
      rejects(
        { autocommit: value },
        TypeError,
        `Handler option autocommit of group "read" must be true or false (got ${shown})`,
      );
    }
  });

  it("takes after as a commit() token and parses it", () => {
    assert.equal(resolveHandlerOptions("read", { after: "0/16B3748" }).after, 0x16B3748n);
    assert.equal(resolveHandlerOptions("read", { after: "0/0" }).after, 0n);
    assert.equal(
      resolveHandlerOptions("read", { after: "FFFFFFFF/ffffffff" }).after,
      (1n << 64n) - 1n,
    );
    for (
      const [value, shown] of [
        ["nope", '"nope"'],
        ["", '""'],
        ["0/16B3748xyz", '"0/16B3748xyz"'],
        ["/16B3748", '"/16B3748"'],
        ["0/", '"0/"'],
        ["-1/0", '"-1/0"'],
        ["123456789/0", '"123456789/0"'],
        [" 0/1", '" 0/1"'],
        ["x".repeat(100), JSON.stringify("x".repeat(77) + "...")],
        [5, "5"],
        [null, "null"],
        [{}, "an object"],
      ] as const
    ) {
      rejects(
        { after: value },
        TypeError,
        `Handler option after of group "read" must be a token from commit() (got ${shown})`,
      );
    }
  });

  it("reports an unknown key before a bad value", () => {
    rejects(
      { timeout_ms: NaN, retries: 3 },
      TypeError,
      `Handler option "retries" of group "read" is not known ${KNOWN}`,
    );
  });
});
