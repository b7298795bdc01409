/**
 * Connection strings in messages: a URL's or a libpq keyword string's password replaced by
 * `***`. Kept apart from `config.ts` (which reaches the driver) so that every entry, the edge
 * and OpenTelemetry ones too, can quote a caller's string through it.
 *
 * @module
 */

/**
 * Returns `url` with its password replaced by `***`, for messages. Works on text that is not a
 * valid URL too: any scheme or none (`//user:pass@host`), and passwords holding `@`, `:` or `/`.
 * The password is taken to run from the first `:` after `//` (or after the start when there is
 * no `//`) to the last `@`, so a malformed URL loses too much rather than too little. Without an
 * `@`, what follows that `:` up to the next `/`, `?` or `#` is hidden unless it is a port (a
 * password with no host after it reads as one), and a libpq `password=` keyword loses its value.
 *
 * @example Redacting a connection string for a log line
 * ```ts
 * import { redactUrl } from "./redact.ts";
 *
 * redactUrl("postgres://app:p@ss/w0rd@db1:5432/app"); // "postgres://app:***@db1:5432/app"
 * redactUrl("postgres://app:pw?sslmode=require"); // "postgres://app:***?sslmode=require"
 * redactUrl("host=db password=pw user=app"); // "host=db password=*** user=app"
 * ```
 */
export function redactUrl(url: string): string {
  const keywords = url.replace(LIBPQ_PASSWORD, "$1***");
  if (keywords !== url) return keywords;
  const at = url.lastIndexOf("@");
  // Scheme-like prefixes (`postgres:`, `jdbc:postgresql:`, none) followed by `//`.
  const authority = /^\s*(?:[A-Za-z][A-Za-z0-9+.-]*:)*[/\\]{2}/.exec(url);
  if (at < 0) return authority === null ? url : redactPortLike(url, authority[0].length);
  const start = authority !== null && authority[0].length <= at ? authority[0].length : 0;
  const colon = url.indexOf(":", start);
  if (colon < 0 || colon > at) return url; // user name only, no password
  return `${url.slice(0, colon + 1)}***${url.slice(at)}`;
}

/**
 * A libpq keyword string's password (`password=pw`, `password = 'p w'`, `password=p\ w`: libpq
 * takes a backslash as an escape in unquoted values too, so an escaped space does not end one).
 */
const LIBPQ_PASSWORD = /(\bpassword\s*=\s*)(?:'(?:[^'\\]|\\[\s\S])*'?|(?:\\[\s\S]|[^\s\\])*\\?)/gi;

// An authority without `@` (`//host:port/...`): what follows its first `:` is a port, or a
// password written without a host after it.
function redactPortLike(url: string, start: number): string {
  const end = url.slice(start).search(/[/?#]/);
  const stop = end < 0 ? url.length : start + end;
  const colon = url.indexOf(":", start);
  if (colon < 0 || colon >= stop || /^\d*$/.test(url.slice(colon + 1, stop))) return url;
  return `${url.slice(0, colon + 1)}***${url.slice(stop)}`;
}
