/**
 * How a caller's value appears in an error message: briefly, and never as more than its type
 * when it is an object (which might hold a secret).
 *
 * @module
 */

/** Quotes `value` for an error message: strings JSON-quoted and cut at 80 characters. */
export function quote(value: unknown): string {
  if (typeof value === "string") {
    return JSON.stringify(value.length > 80 ? value.slice(0, 77) + "..." : value);
  }
  if (typeof value === "number" || typeof value === "boolean" || typeof value === "bigint") {
    return String(value);
  }
  if (value === null) return "null";
  if (value === undefined) return "undefined";
  if (Array.isArray(value)) return "an array";
  return typeof value === "object" ? "an object" : typeof value;
}
