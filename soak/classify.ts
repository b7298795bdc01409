// What a rejected operation tells the soak: a label to count it under, and what it implies for
// the writes it carried (proved never committed, or outcome unknown).
import {
  AcquireTimeoutError,
  NoEndpointAvailableError,
  PoolClosedError,
  PoolError,
  PoolExhaustedError,
  SessionLostError,
  TransactionAbortedError,
} from "../mod.ts";

/** The reason the soak aborts its own AbortSignals with, so such rejections are recognised. */
export class SoakAbort extends Error {
  constructor() {
    super("aborted by the soak");
    this.name = "SoakAbort";
  }
}

/** What a rejection means for the writes of the statement (or COMMIT) that got it. */
export interface Classified {
  /** Counted under this label in the error table. */
  label: string;
  /** "absent": proves nothing was committed. "unknown": it may or may not have been. */
  expect: "absent" | "unknown";
  /** The session is gone (or its state can no longer be trusted). */
  sessionLost: boolean;
  /** Set when the error itself breaks the pool's contract (a violation). */
  unexpected?: string;
}

// postgres.js connection codes and OS socket codes (see ../shared notes and src/sqlstate.ts).
const RAW_CONNECTION_CODES = new Set([
  "CONNECTION_CLOSED",
  "CONNECTION_ENDED",
  "CONNECTION_DESTROYED",
  "CONNECT_TIMEOUT",
  "ECONNREFUSED",
  "ECONNRESET",
  "ECONNABORTED",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
]);

/** postgres.js's PostgresError (the class is not re-exported by the pool; match by name). */
export function isPostgresError(err: unknown): err is Error & { code: string } {
  return err instanceof Error && err.name === "PostgresError" &&
    typeof (err as { code?: unknown }).code === "string";
}

function codeOf(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : undefined;
}

/**
 * SQLSTATEs that end the session and may arrive after the statement took effect: a backend
 * terminated right after COMMIT sends CommandComplete, then FATAL 57P01 before ReadyForQuery,
 * and postgres.js rejects the query with the FATAL. Such a write's outcome is unknown.
 */
function sessionEndingSqlState(code: string): boolean {
  return code === "57P01" || code === "57P02" || code.startsWith("08");
}

/** Classifies a rejection of a pool operation. */
export function classify(err: unknown): Classified {
  if (err instanceof SessionLostError) {
    const outcome = (err as { outcome?: unknown }).outcome;
    const label = `${err.name}(${String(outcome)})`;
    if (outcome === "not-executed") return { label, expect: "absent", sessionLost: true };
    if (outcome === "unknown") return { label, expect: "unknown", sessionLost: true };
    return {
      label,
      expect: "unknown",
      sessionLost: true,
      unexpected: `${err.name}.outcome is ${JSON.stringify(outcome)}, not "unknown" or ` +
        `"not-executed"`,
    };
  }
  if (
    err instanceof AcquireTimeoutError || err instanceof NoEndpointAvailableError ||
    err instanceof PoolExhaustedError || err instanceof PoolClosedError ||
    err instanceof TransactionAbortedError
  ) {
    return { label: err.name, expect: "absent", sessionLost: false };
  }
  if (err instanceof SoakAbort) return { label: "aborted", expect: "absent", sessionLost: false };
  if (isPostgresError(err)) {
    const label = `PostgresError ${err.code}`;
    if (sessionEndingSqlState(err.code)) {
      return { label: `${label} (unwrapped)`, expect: "unknown", sessionLost: true };
    }
    // 57P03 (starting up) and 53300 (too many connections) come at connect time: never ran.
    return { label, expect: "absent", sessionLost: false };
  }
  if (err instanceof PoolError) {
    // A pool error class the soak does not know yet: count it, assume nothing.
    return { label: err.name, expect: "unknown", sessionLost: false };
  }
  const code = codeOf(err);
  if (code !== undefined && RAW_CONNECTION_CODES.has(code)) {
    return { label: `raw ${code}`, expect: "unknown", sessionLost: true };
  }
  if (err instanceof DOMException && (err.name === "AbortError" || err.name === "TimeoutError")) {
    return { label: `DOMException ${err.name}`, expect: "absent", sessionLost: false };
  }
  const name = err instanceof Error ? err.name : typeof err;
  const message = err instanceof Error ? err.message : String(err);
  return {
    label: `unexpected ${name}${code ? ` ${code}` : ""}`,
    expect: "unknown",
    sessionLost: true,
    unexpected: `${name}${code ? ` (${code})` : ""}: ${message.slice(0, 300)}`,
  };
}
