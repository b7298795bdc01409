/**
 * Reading array values in PostgreSQL's text form, for the postgres.js driver. postgres.js hands
 * an unquoted `NULL` element to the element type's parser, so `{1,NULL,3}` read as `[1, NaN, 3]`
 * for int4[], `"NULL"` for text[], `false` for bool[]. Here a NULL element is `null`, as the
 * server meant and as the Bun driver reads it; a quoted `"NULL"` (the string) stays a string.
 *
 * The parsers are put in place where postgres.js learns a server's array types: its table of
 * parsers gets a prototype that intercepts every parser added, and an array type's parser is
 * made here from its element type's (the table's own entries are read as fast as before).
 *
 * @module
 */

/** Reads one element of an array from its text. */
export type ElementParser = (text: string) => unknown;

/** An array parser as postgres.js calls it: with the text after the leading `{`. */
export type ArrayParser = ((body: string) => unknown[]) & { array: true };

/** The array type `box[]` separates its elements with `;`, every other type with `,`. */
const BOX_ARRAY = 1020;

/**
 * A parser for arrays of the element type read by `element` (none: elements stay strings).
 *
 * @example Reading an int4[] value
 * ```ts
 * import { arrayParser } from "./array_parser.ts";
 * const read = arrayParser(Number, 1007);
 * read("1,NULL,3}"); // [1, null, 3]
 * ```
 */
export function arrayParser(element: ElementParser | undefined, arrayOid: number): ArrayParser {
  const delimiter = arrayOid === BOX_ARRAY ? ";" : ",";
  const parse = (body: string): unknown[] => {
    const at = { i: boundsLength(body) };
    return readList(body, at, element, delimiter);
  };
  return Object.assign(parse, { array: true as const });
}

/**
 * Bounds written before an array whose lower bound is not 1, as postgres.js passes them (its
 * leading `[` cut): `0:1]={` of `[0:1]={1,2}`, one `[lower:upper]` per dimension. Unambiguous:
 * an unquoted element never holds a `{`. They are dropped: a JavaScript array starts at 0.
 */
const BOUNDS = /^-?\d+:-?\d+\](?:\[-?\d+:-?\d+\])*=\{/;

function boundsLength(body: string): number {
  const c = body.charCodeAt(0);
  // Only a body that starts with a digit or "-" can carry bounds.
  if (!((c >= 48 && c <= 57) || c === 45)) return 0;
  const bounds = BOUNDS.exec(body);
  return bounds === null ? 0 : bounds[0].length;
}

// One list, from after its `{` to after its `}`: `at.i` moves along.
function readList(
  text: string,
  at: { i: number },
  element: ElementParser | undefined,
  delimiter: string,
): unknown[] {
  const out: unknown[] = [];
  let i = at.i;
  if (text[i] === "}") {
    at.i = i + 1;
    return out;
  }
  while (i < text.length) {
    const c = text[i];
    if (c === "{") {
      at.i = i + 1;
      out.push(readList(text, at, element, delimiter));
      i = at.i;
    } else if (c === '"') {
      let value = "";
      let from = ++i;
      while (i < text.length && text[i] !== '"') {
        if (text[i] === "\\") {
          value += text.slice(from, i) + text[i + 1];
          from = i += 2;
        } else i++;
      }
      value += text.slice(from, i);
      i++;
      out.push(element === undefined ? value : element(value));
    } else {
      const from = i;
      while (i < text.length && text[i] !== delimiter && text[i] !== "}") i++;
      const value = text.slice(from, i);
      // The server quotes any element that reads NULL in any case: unquoted, it is the NULL.
      out.push(
        value.length === 4 && value.toUpperCase() === "NULL"
          ? null
          : element === undefined
          ? value
          : element(value),
      );
    }
    if (text[i] === delimiter) i++;
    else {
      i++; // the closing `}`
      break;
    }
  }
  at.i = i;
  return out;
}

/**
 * A table of parsers starting with `initial`'s, where any parser postgres.js adds for an array
 * type (`typeArrayMap` maps element type to array type, filled just before) is replaced by one
 * made with `arrayParser`. Own entries are copied as they are (they were made here already).
 *
 * @example A table for a new server
 * ```ts
 * import { nullAwareParsers } from "./array_parser.ts";
 * const typeArrayMap: Record<string, unknown> = {};
 * const parsers = nullAwareParsers({ 23: Number }, typeArrayMap);
 * ```
 */
export function nullAwareParsers(
  initial: Readonly<Record<string, unknown>>,
  typeArrayMap: Readonly<Record<string, unknown>>,
): Record<string, unknown> {
  const intercept = new Proxy(Object.create(null), {
    set(_target, key, value, receiver: Record<string, unknown>) {
      if (typeof key === "string" && typeof value === "function") {
        value = forArray(key, receiver, typeArrayMap) ?? value;
      }
      return Reflect.defineProperty(receiver, key, {
        value,
        writable: true,
        enumerable: true,
        configurable: true,
      });
    },
  });
  const table = Object.create(intercept) as Record<string, unknown>;
  for (const key of Object.keys(initial)) {
    Object.defineProperty(table, key, {
      value: initial[key],
      writable: true,
      enumerable: true,
      configurable: true,
    });
  }
  return table;
}

function forArray(
  key: string,
  parsers: Record<string, unknown>,
  typeArrayMap: Readonly<Record<string, unknown>>,
): ArrayParser | undefined {
  const arrayOid = Number(key);
  for (const elementOid in typeArrayMap) {
    if (Number(typeArrayMap[elementOid]) === arrayOid) {
      const element = parsers[elementOid];
      return arrayParser(
        typeof element === "function" ? element as ElementParser : undefined,
        arrayOid,
      );
    }
  }
  return undefined;
}
