/**
 * Values between Drizzle's column codecs and postgres.js's type handling, which the pool's
 * sessions apply to every statement. Drizzle's own postgres.js driver switches that handling
 * off for a few types; a pool's sessions keep it, so the two cases where they disagree are
 * evened out here:
 *
 * - json and jsonb parameters: Drizzle sends `JSON.stringify(value)` and postgres.js would
 *   stringify that string once more (a JSON string instead of the document). The text goes in
 *   a wrapper that postgres.js's stringify turns back into the same text (and that is the text
 *   itself anywhere else), with no type of its own, so the server still decides the type.
 * - `timestamp` (without time zone) results: postgres.js reads them as local time, Drizzle
 *   stores them as UTC. A value read in a process whose time zone is not UTC is moved back to
 *   the UTC wall clock, which is what Drizzle's codec expects.
 *
 * @module
 */

import type { QueryTypingsValue } from "drizzle-orm";

// Result column types (PostgreSQL OIDs) read as local time by postgres.js.
const TIMESTAMP = 1114;
const TIMESTAMP_ARRAY = 1115;

/**
 * JSON text as a parameter. postgres.js serializes a json or jsonb parameter with
 * `JSON.stringify`, which calls `toJSON()`: the parsed document, stringified to the same text.
 * Any other type gets `"" + value`: the text. Being a plain object, it makes postgres.js infer no
 * type (a parsed `true` would be sent as a boolean).
 */
class JsonText {
  readonly #text: string;
  constructor(text: string) {
    this.#text = text;
  }
  toJSON(): unknown {
    return JSON.parse(this.#text);
  }
  toString(): string {
    return this.#text;
  }
}

/** Parameters as postgres.js must receive them to send what Drizzle encoded. */
export function encodeParams(
  params: unknown[],
  typings: readonly QueryTypingsValue[] | undefined,
): unknown[] {
  if (typings === undefined) return params;
  let out: unknown[] | undefined;
  for (let i = 0; i < typings.length; i++) {
    const value = params[i];
    if (typings[i] === "json" && typeof value === "string") {
      out ??= params.slice();
      out[i] = new JsonText(value);
    }
  }
  return out ?? params;
}

interface Described {
  readonly columns?: ReadonlyArray<{ readonly type: number }>;
}

/**
 * Moves `timestamp` values of rows in array mode from local time to the UTC wall clock (a
 * no-op in a process whose time zone is UTC).
 */
export function fixTimestamps(rows: unknown[][]): void {
  const columns = (rows as Described).columns;
  if (columns === undefined || rows.length === 0) return;
  for (let c = 0; c < columns.length; c++) {
    const type = columns[c].type;
    if (type !== TIMESTAMP && type !== TIMESTAMP_ARRAY) continue;
    for (const row of rows) {
      const value = row[c];
      if (value !== null) row[c] = utcWallClock(value);
    }
  }
}

function utcWallClock(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(utcWallClock);
  if (!(value instanceof Date) || value.getTimezoneOffset() === 0) return value;
  const time = value.getTime();
  if (Number.isNaN(time)) return value;
  const utc = new Date(0);
  utc.setUTCFullYear(value.getFullYear(), value.getMonth(), value.getDate());
  utc.setUTCHours(
    value.getHours(),
    value.getMinutes(),
    value.getSeconds(),
    value.getMilliseconds(),
  );
  return utc;
}
