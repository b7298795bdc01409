/**
 * How a caller's value appears in an error message: briefly, and never as more than its type
 * when it is an object (which might hold a secret).
 *
 * @module
 */

import { redactUrl } from "./redact.ts";

/**
 * Quotes `value` for an error message: strings JSON-quoted, without a connection string's
 * password (a URL passed where a group name or a statement goes is an easy slip), and cut at
 * 80 characters.
 */
export function quote(value: unknown): string {
  if (typeof value === "string") {
    const shown = redactUrl(value);
    return JSON.stringify(shown.length > 80 ? shown.slice(0, 77) + "..." : shown);
  }
  if (typeof value === "number" || typeof value === "boolean" || typeof value === "bigint") {
    return String(value);
  }
  if (value === null) return "null";
  if (value === undefined) return "undefined";
  if (Array.isArray(value)) return "an array";
  return typeof value === "object" ? "an object" : typeof value;
}
