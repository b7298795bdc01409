/**
 * Validation of a statement's options (`pool.query()`, `db.query()`): a mistake rejects that
 * statement with a `TypeError` naming the value, unsent, where it used to be ignored
 * (`{ rowMode: "arrays" }`, `{ row_mode: "array" }` gave objects to a caller reading columns by
 * position). Statements are the hot path: no options costs one comparison.
 *
 * @module
 */

import { quote } from "./quote.ts";

/**
 * Whether `options` asks for rows as arrays of values (`rowMode: "array"`).
 *
 * Throws a `TypeError` when `options` is not an object, has a key other than `rowMode`, or a
 * `rowMode` other than `"object"` or `"array"`.
 *
 * @example Reading the row mode
 * ```ts
 * import { wantsArrays } from "./query_options.ts";
 *
 * wantsArrays(undefined); // false
 * wantsArrays({ rowMode: "array" }); // true
 * ```
 */
export function wantsArrays(options: unknown): boolean {
  if (options === undefined) return false;
  if (typeof options !== "object" || options === null || Array.isArray(options)) {
    throw new TypeError(`Query options must be an object (got ${quote(options)})`);
  }
  // for-in rather than Object.keys: no array per statement. Inherited keys are not the caller's
  // typing, so only own keys are checked.
  for (const key in options) {
    if (key !== "rowMode" && Object.hasOwn(options, key)) {
      throw new TypeError(
        `Query option ${JSON.stringify(key)} is not a known option (known: rowMode)`,
      );
    }
  }
  const mode = (options as { rowMode?: unknown }).rowMode;
  if (mode === "array") return true;
  if (mode === undefined || mode === "object") return false;
  throw new TypeError(`Query option rowMode must be "object" or "array" (got ${quote(mode)})`);
}
