/**
 * What an error means for the pool: is the connection gone, is a server merely full, did a write
 * hit a read-only server. Kept in one place so every routing decision agrees. Whether a statement
 * ran is the driver's call (see `driver/postgres.ts`), not the error code's.
 *
 * @module
 */

// postgres.js connection codes, OS socket codes, SQLSTATEs that end a session.
const connectionCodes = new Set([
  "CONNECTION_CLOSED",
  "CONNECTION_ENDED",
  "CONNECTION_DESTROYED",
  "CONNECT_TIMEOUT",
  "ECONNREFUSED",
  "ECONNRESET",
  "ECONNABORTED",
  "ENOTFOUND",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "EAI_AGAIN",
  "57P01", // admin_shutdown (pg_terminate_backend, fast shutdown)
  "57P02", // crash_shutdown
  "57P03", // cannot_connect_now (starting up, shutting down, recovery)
  "53300", // too_many_connections (only ever at connect)
]);

/** The error's `code`, when it is a string. */
function codeOf(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : undefined;
}

// TLS handshake failures (untrusted or mismatched certificate, protocol errors): the session
// never started.
function isTlsCode(code: string): boolean {
  return code.includes("CERT") || code.startsWith("ERR_TLS") || code.startsWith("ERR_SSL");
}

/** True when `err` means the server connection is unusable (lost, refused, terminated). */
export function isConnectionError(err: unknown): boolean {
  const code = codeOf(err);
  return code !== undefined &&
    (connectionCodes.has(code) || code.startsWith("08") || isTlsCode(code));
}

// PgBouncer refuses a client over its own limits (max_client_conn; later versions also
// max_db_client_connections, max_user_client_connections) with 08P01, its code for every error
// of its own, and this message: only the text tells a full bouncer from a broken one.
const BOUNCER_FULL = "no more connections allowed";

/**
 * True when a server refused a new session for lack of room (53300 too many connections, 53400
 * a role's connection limit, PgBouncer's `no more connections allowed`): a capacity condition
 * of that one checkout, never a sign of ill health.
 */
export function isCapacityError(err: unknown): boolean {
  const code = codeOf(err);
  if (code === "53300" || code === "53400") return true;
  const message = (err as { message?: unknown }).message;
  return code === "08P01" && typeof message === "string" && message.startsWith(BOUNCER_FULL);
}

/** True when a write reached a read-only server (a replica, or a demoted primary). */
export function isReadOnlyError(err: unknown): boolean {
  return codeOf(err) === "25006";
}

/** Permission denied (42501): a function the role may not execute. */
export function isPrivilegeError(err: unknown): boolean {
  return codeOf(err) === "42501";
}
