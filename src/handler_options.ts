/**
 * Validation of a checkout's options (`pool.handler()`, `pool.acquire()`, `new Handler()`) into
 * a frozen form the checkout path reads without further checks. A mistake throws a built-in
 * `TypeError` or `RangeError` at the call, where it would otherwise turn into a wait that never
 * ends (`timeout_ms: NaN`) or an option silently ignored (`timeout: 500`).
 *
 * Checkouts are the hot path: without options nothing is allocated, and with options the keys
 * are walked without building an array.
 *
 * @module
 */

import { MAX_TIMER_MS } from "./config.ts";
import { parseLsn } from "./lsn.ts";
import { quote } from "./quote.ts";

/**
 * A checkout's options after validation. Absent options are `undefined`; every resolved object
 * has the same four keys, so code reading them sees one object shape.
 *
 * @example Reading a resolved timeout with the group's default
 * ```ts
 * import { resolveHandlerOptions, type ResolvedHandlerOptions } from "./handler_options.ts";
 *
 * const options: ResolvedHandlerOptions = resolveHandlerOptions("read", { timeout_ms: 500 });
 * const timeoutMs = options.timeoutMs ?? 10_000; // 500
 * ```
 */
export interface ResolvedHandlerOptions {
  /** Aborting cancels a checkout that is still waiting. */
  readonly signal?: AbortSignal;
  /** Overrides the group's `acquire_timeout_ms`; from 0 to {@linkcode MAX_TIMER_MS}. */
  readonly timeoutMs?: number;
  /** Overrides the group's `autocommit`. */
  readonly autocommit?: boolean;
  /** Read-your-writes: the LSN of the `after` token, to be replayed by a replica first. */
  readonly after?: bigint;
}

/**
 * The resolved form of "no options", shared and frozen: what {@linkcode resolveHandlerOptions}
 * returns for `undefined`, `{}` or only `undefined` values, so callers may test it by identity.
 *
 * @example Skipping option handling on the common path
 * ```ts
 * import { NO_HANDLER_OPTIONS, resolveHandlerOptions } from "./handler_options.ts";
 *
 * const options = resolveHandlerOptions("read", undefined);
 * if (options === NO_HANDLER_OPTIONS) {
 *   // the group's defaults apply
 * }
 * ```
 */
export const NO_HANDLER_OPTIONS: ResolvedHandlerOptions = Object.freeze({
  signal: undefined,
  timeoutMs: undefined,
  autocommit: undefined,
  after: undefined,
});

const KNOWN = "signal, timeout_ms, autocommit, after";

// What `commit()` returns: PostgreSQL's `pg_lsn` text, two 32-bit hex halves. `parseLsn` alone
// would accept trailing garbage ("0/16B3748xyz"), because `parseInt` stops at the first non-digit.
const TOKEN = /^[0-9A-Fa-f]{1,8}\/[0-9A-Fa-f]{1,8}$/;

/** Whether `value` works as an `AbortSignal` (also one from another realm or a polyfill). */
export function isAbortSignal(value: unknown): value is AbortSignal {
  if (value instanceof AbortSignal) return true;
  // Signals from another realm or a polyfill fail `instanceof` but work the same.
  return typeof value === "object" && value !== null &&
    typeof (value as AbortSignal).aborted === "boolean" &&
    typeof (value as AbortSignal).addEventListener === "function";
}

/**
 * Validates the options of a checkout of `group` and returns their resolved, frozen form.
 * `undefined` gives {@linkcode NO_HANDLER_OPTIONS} without allocating. Keys set to `undefined`
 * count as absent.
 *
 * Throws a `TypeError` when `options` is not an object, has a key other than `signal`,
 * `timeout_ms`, `autocommit` and `after`, or has a `signal` that is not an `AbortSignal`, an
 * `autocommit` that is not a boolean, or an `after` that is not a token from `commit()`; throws
 * a `RangeError` when `timeout_ms` is not a number from 0 to 2147483647 (NaN included).
 *
 * @example Validating the options of a checkout
 * ```ts
 * import { resolveHandlerOptions } from "./handler_options.ts";
 *
 * const controller = new AbortController();
 * const options = resolveHandlerOptions("read", {
 *   signal: controller.signal,
 *   timeout_ms: 500,
 *   after: "0/16B3748",
 * });
 * options.after; // 0x16B3748n
 * ```
 *
 * @example Reporting a mistyped option
 * ```ts
 * import { resolveHandlerOptions } from "./handler_options.ts";
 *
 * try {
 *   resolveHandlerOptions("read", { timeout: 500 });
 * } catch (err) {
 *   // TypeError: Handler option "timeout" of group "read" is not known (known: ...)
 *   console.error((err as TypeError).message);
 * }
 * ```
 */
export function resolveHandlerOptions(group: string, options: unknown): ResolvedHandlerOptions {
  if (options === undefined) return NO_HANDLER_OPTIONS;
  if (typeof options !== "object" || options === null || Array.isArray(options)) {
    throw new TypeError(
      `Handler options of group ${quote(group)} must be an object (got ${quote(options)})`,
    );
  }
  const o = options as Record<string, unknown>;
  // for-in rather than Object.keys: no array per checkout. Inherited keys are not the caller's
  // typing, so only own keys are checked.
  for (const key in o) {
    if (
      key !== "signal" && key !== "timeout_ms" && key !== "autocommit" && key !== "after" &&
      Object.hasOwn(o, key)
    ) {
      throw new TypeError(
        `Handler option ${JSON.stringify(key)} of group ${
          quote(group)
        } is not known (known: ${KNOWN})`,
      );
    }
  }
  const { signal, timeout_ms: timeoutMs, autocommit, after } = o;
  if (
    signal === undefined && timeoutMs === undefined && autocommit === undefined &&
    after === undefined
  ) return NO_HANDLER_OPTIONS;
  if (signal !== undefined && !isAbortSignal(signal)) {
    throw new TypeError(
      `Handler option signal of group ${quote(group)} must be an AbortSignal (got ${
        quote(signal)
      })`,
    );
  }
  // Negated range test: NaN fails both comparisons. A longer delay overflows setTimeout.
  if (
    timeoutMs !== undefined &&
    !(typeof timeoutMs === "number" && timeoutMs >= 0 && timeoutMs <= MAX_TIMER_MS)
  ) {
    throw new RangeError(
      `Handler option timeout_ms of group ${
        quote(group)
      } must be a number from 0 to ${MAX_TIMER_MS} (got ${quote(timeoutMs)})`,
    );
  }
  if (autocommit !== undefined && typeof autocommit !== "boolean") {
    throw new TypeError(
      `Handler option autocommit of group ${quote(group)} must be true or false (got ${
        quote(autocommit)
      })`,
    );
  }
  let lsn: bigint | undefined;
  if (after !== undefined) {
    lsn = typeof after === "string" && TOKEN.test(after) ? parseLsn(after) : undefined;
    if (lsn === undefined) {
      throw new TypeError(
        `Handler option after of group ${quote(group)} must be a token from commit() (got ${
          quote(after)
        })`,
      );
    }
  }
  return Object.freeze({
    signal: signal as AbortSignal | undefined,
    timeoutMs: timeoutMs as number | undefined,
    autocommit: autocommit as boolean | undefined,
    after: lsn,
  });
}
