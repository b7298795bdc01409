/**
 * What a statement's text and parameters must be before anything is sent: a string, and an
 * array of values that have an SQL form. A mistake here fails that statement alone, at once,
 * with an error naming the parameter, on either driver (postgres.js would throw while its
 * connection takes the statement, which is no place to fail: see `driver/encoding.ts`; Bun's
 * `SQL` would send `undefined` as NULL).
 *
 * What can be told from the value alone is checked here; what depends on the parameter's type
 * (a string that is no date, for a timestamptz) is the driver's to report.
 *
 * @module
 */

import { quote } from "./quote.ts";

/** The protocol counts parameters in 16 bits; postgres.js refuses from here on. */
const MAX_PARAMETERS = 65534;

/** A value as an error message may quote it: short, never throwing. */
function quoted(value: unknown): string {
  // An object is named by its type and keys, never its values: the caller's config or a
  // credentials object passed in the wrong place used to be JSON-printed, password included.
  if (typeof value === "object" && value !== null && !Array.isArray(value)) {
    const keys = Object.keys(value).join(", ");
    const text = keys === "" ? "an object" : `an object with keys ${keys}`;
    return text.length > 80 ? `${text.slice(0, 77)}...` : text;
  }
  return quote(value);
}

/** Throws a `TypeError` or `RangeError` unless `text` and `params` can be sent. */
export function checkStatement(text: unknown, params: unknown): void {
  if (typeof text !== "string") {
    throw new TypeError(`Statement text must be a string (got ${quoted(text)})`);
  }
  if (params === undefined) return;
  if (!Array.isArray(params)) {
    throw new TypeError(`Statement parameters must be an array (got ${quoted(params)})`);
  }
  if (params.length > MAX_PARAMETERS) {
    throw new RangeError(
      `A statement takes at most ${MAX_PARAMETERS} parameters (got ${params.length})`,
    );
  }
  for (let i = 0; i < params.length; i++) checkValue(params[i], `Parameter $${i + 1}`);
}

/**
 * Throws unless every value of a tagged template's has an SQL form. Only what is never one is
 * refused (`undefined`, a symbol, a function, an invalid Date): helpers and fragments are the
 * driver's.
 */
export function checkValues(values: readonly unknown[]): void {
  for (let i = 0; i < values.length; i++) {
    const value = values[i];
    // Objects are helpers, fragments, arrays or null (the driver's), except a Date.
    if (typeof value !== "object" || value instanceof Date) {
      checkValue(value, `Value ${i + 1} of the template`);
    }
  }
}

/** `name`: how the message calls the value ("Parameter $2[0]"). */
function checkValue(value: unknown, name: string): void {
  switch (typeof value) {
    case "string":
    case "number":
    case "boolean":
    case "bigint":
      return;
    case "undefined":
      throw new TypeError(`${name} is undefined (use null for SQL NULL)`);
    case "symbol":
      throw new TypeError(`${name} is a symbol, which has no SQL value`);
    case "function":
      throw new TypeError(`${name} is a function, which has no SQL value`);
  }
  if (value === null) return;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) checkValue(value[i], `${name}[${i}]`);
    return;
  }
  if (value instanceof Date) {
    if (Number.isNaN(value.getTime())) {
      throw new RangeError(`${name} is an invalid Date`);
    }
    return;
  }
  if (ArrayBuffer.isView(value)) return;
  // Any other object is sent as JSON or as its text: without a text form (no prototype, a
  // throwing toString) it has neither for some type.
  try {
    "" + (value as string);
  } catch (err) {
    throw new TypeError(
      `${name} has no text form (${err instanceof Error ? err.message : err})`,
    );
  }
}
