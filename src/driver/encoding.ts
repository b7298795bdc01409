/**
 * Parameter encoding that cannot derail a postgres.js connection.
 *
 * postgres.js 3.4 encodes a statement's values when its connection takes the statement, and a
 * value it cannot encode (a date string JavaScript cannot parse for a timestamptz parameter, a
 * BigInt inside a JSON value, a number for an array parameter, `undefined`) throws there. With
 * another statement in flight on the connection it then rejects *that* statement with the
 * error (one that ran, or is running), never writes the bad one, and keeps it as the next to be
 * answered: every later statement receives the rows of the one after it, and the last one
 * waits forever.
 *
 * So no serializer of a session may throw. Each one (postgres.js's, and the array serializers it
 * adds at connect) is wrapped: a value it cannot encode becomes a marker holding a NUL byte,
 * which the server refuses at Bind (22021, before anything executes) for that statement alone,
 * in its place in the pipeline. {@linkcode unencodable} turns that refusal back into the
 * encoding error for the caller.
 *
 * @module
 */

/** A NUL byte first: every server encoding refuses it in a text parameter. */
const MARK = `\u0000pgdbpool-unencodable-${Math.random().toString(36).slice(2)}-`;

/** Failures awaiting their server refusal, by marker. Bounded: a lost session never answers. */
const failures = new Map<string, unknown>();
const MAX_FAILURES = 1024;
let nextFailure = 0;

function fail(err: unknown): string {
  const marker = `${MARK}${nextFailure++}.`;
  failures.set(marker, err);
  if (failures.size > MAX_FAILURES) failures.delete(failures.keys().next().value!);
  return marker;
}

/**
 * What `undefined` becomes (postgres.js's `transform.undefined`): a value every guarded
 * serializer refuses, so an `undefined` in a `db.sql` helper or array fails its statement at
 * Bind instead of throwing inside the connection.
 */
export const UNDEFINED: object = Object.freeze({
  // Where postgres.js sends a value as `'' + value` (types without a serializer).
  [Symbol.toPrimitive]: () => fail(undefinedValue()),
});

function undefinedValue(): TypeError {
  return new TypeError("Undefined values are not allowed");
}

type Serializer = (value: unknown) => unknown;

const guards = new WeakSet<Serializer>();

/** `serialize`, made unable to throw: what it cannot encode becomes a marker. */
function guard(serialize: Serializer): Serializer {
  if (guards.has(serialize)) return serialize;
  const guarded = (value: unknown): unknown => {
    if (value === UNDEFINED) return fail(undefinedValue());
    let text: unknown;
    try {
      text = serialize(value);
    } catch (err) {
      return fail(err);
    }
    // postgres.js writes the result as text: anything else would throw while writing it.
    return typeof text === "string" ? text : fail(
      new TypeError(`The value serialized to ${text === null ? "null" : typeof text}, not text`),
    );
  };
  guards.add(guarded);
  return guarded;
}

/**
 * The prototype of every guarded table: postgres.js adds array serializers by assignment, which
 * lands here for a key the table does not have yet, and is stored guarded on the table.
 */
const GUARDING: object = new Proxy(Object.create(null), {
  set(_target, key, value, receiver) {
    return Reflect.defineProperty(receiver, key, {
      value: typeof value === "function" ? guard(value as Serializer) : value,
      writable: true,
      enumerable: true,
      configurable: true,
    });
  },
});

/**
 * Common parameter types postgres.js has no serializer for (it sends `'' + value`): given that
 * same serializer, guarded, they are found on the table itself instead of through the proxy
 * (int8, varchar, bpchar, name, uuid, numeric, interval, time, inet).
 */
const TEXT_TYPES = [20, 1043, 1042, 19, 2950, 1700, 1186, 1083, 869];
const asText = (value: unknown): string => "" + (value as string);

/** A copy of a serializer table in which every entry, present and future, is guarded. */
export function guardedSerializers(
  from: Readonly<Record<string, unknown>>,
): Record<string, unknown> {
  const table = Object.create(GUARDING) as Record<string, unknown>;
  for (const key of Object.keys(from)) table[key] = from[key];
  for (const oid of TEXT_TYPES) if (!(oid in table)) table[oid] = asText;
  return table;
}

/**
 * The encoding error behind a statement the server refused because a guarded serializer
 * marked one of its values, as the caller should see it (a `TypeError` or `RangeError` naming
 * the parameter); `undefined` for every other error.
 */
export function unencodable(err: unknown): Error | undefined {
  const e = err as { code?: unknown; parameters?: unknown; types?: unknown } | null;
  if (e?.code !== "22021" || !Array.isArray(e.parameters)) return undefined;
  const params = e.parameters;
  for (let i = 0; i < params.length; i++) {
    const value = params[i];
    if (typeof value !== "string") continue;
    const at = value.indexOf(MARK);
    if (at < 0) continue;
    const marker = value.slice(at, value.indexOf(".", at + MARK.length) + 1);
    const cause = failures.get(marker);
    failures.delete(marker);
    const reason = cause instanceof Error ? cause.message : String(cause);
    const type = Array.isArray(e.types) ? e.types[i] : undefined;
    const as = typeof type === "number" && type !== 0 ? ` as type oid ${type}` : "";
    const Kind = cause instanceof RangeError ? RangeError : TypeError;
    return new Kind(`Parameter $${i + 1} cannot be sent${as}: ${reason}`, { cause });
  }
  return undefined;
}
