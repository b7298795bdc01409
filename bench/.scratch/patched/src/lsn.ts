/**
 * PostgreSQL WAL positions (`"16/B374D848"`) as comparable numbers: the read-your-writes token
 * and replica progress are both LSNs.
 *
 * @module
 */

/** Parses an LSN text into a bigint; `undefined` for null or malformed input. */
export function parseLsn(text: unknown): bigint | undefined {
  if (typeof text !== "string") return undefined;
  const slash = text.indexOf("/");
  if (slash <= 0) return undefined;
  const hi = Number.parseInt(text.slice(0, slash), 16);
  const lo = Number.parseInt(text.slice(slash + 1), 16);
  if (!Number.isFinite(hi) || !Number.isFinite(lo)) return undefined;
  return (BigInt(hi) << 32n) | BigInt(lo);
}
