/**
 * What an error from postgres.js means for the pool: is the connection gone, did the statement
 * never reach the executor, did it hit a read-only server. Kept in one place so every routing
 * decision agrees.
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
  "53300", // too_many_connections
]);

// Failures that happen before a statement can have run: nothing to double-apply on retry.
const notExecutedCodes = new Set([
  "CONNECT_TIMEOUT",
  "ECONNREFUSED",
  "ENOTFOUND",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "EAI_AGAIN",
  "57P01",
  "57P02",
  "57P03",
  "53300",
]);

function codeOf(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : undefined;
}

// TLS handshake failures (untrusted or mismatched certificate, protocol errors): the session
// never started, so nothing ran.
function isTlsCode(code: string): boolean {
  return code.includes("CERT") || code.startsWith("ERR_TLS") || code.startsWith("ERR_SSL");
}

/** True when `err` means the server connection is unusable (lost, refused, terminated). */
export function isConnectionError(err: unknown): boolean {
  const code = codeOf(err);
  return code !== undefined &&
    (connectionCodes.has(code) || code.startsWith("08") || isTlsCode(code));
}

/** True when `err` proves the statement was never executed (connect failure or terminated backend). */
export function isNotExecuted(err: unknown): boolean {
  const code = codeOf(err);
  return code !== undefined &&
    (notExecutedCodes.has(code) || code === "08001" || code === "08004" || isTlsCode(code));
}

/** True when a write reached a read-only server (a replica, or a demoted primary). */
export function isReadOnlyError(err: unknown): boolean {
  return codeOf(err) === "25006";
}
