/**
 * Runtimes that bind I/O to the request that opened it (Cloudflare Workers: "Cannot perform I/O
 * on behalf of a different request"). A connection's socket is read by the request that opened
 * it, and a statement of another request that joins the connection while it is busy is written
 * from there too (postgres.js sends what it queued when the answer before it arrives). The
 * server runs it; but once the opening request ends, its reads and its timers stop: the
 * statement's answer, and the socket's close, reach nobody, and its caller waits for good.
 *
 * A {@linkcode Beacon} per connection, a timer chain in the request that opened it, shows
 * whether that request still runs; a statement that joined a busy connection (or one still
 * connecting) arms a {@linkcode guardJoined} timer in its own request, which reports the
 * connection unreadable once the beacon has stopped (its outcome is unknown then: it may have
 * run). Anywhere else nothing of this exists: `REQUEST_BOUND_IO` is false and no connection has
 * a beacon.
 *
 * @module
 */

/**
 * Whether this runtime binds sockets to the request that opened them: workerd, which names
 * itself in `navigator.userAgent` (the driver reads the same to pick postgres.js's sockets).
 */
export const REQUEST_BOUND_IO: boolean =
  (globalThis as { navigator?: { userAgent?: string } }).navigator?.userAgent ===
    "Cloudflare-Workers";

/**
 * How long past a beacon's due time a guard waits for its next beat before it calls the
 * beacon's request gone. Timers of a running request fire in due order, and a stall delays the
 * beacon (due first) as much as the guard: the grace only covers timers of two requests.
 */
const GRACE_MS = 100;

/**
 * A timer chain in the request that made it, beating every `periodMs` while `alive()` holds:
 * when a beat is overdue, the request that armed it has ended (its timers never fire again).
 */
export class Beacon {
  readonly periodMs: number;
  readonly #alive: () => boolean;
  #timer: ReturnType<typeof setTimeout> | undefined;
  /** Beats so far: a guard compares them across its grace. */
  beats = 0;
  /** `performance.now()` when the next beat is due (Infinity once stopped). */
  due: number;

  constructor(periodMs: number, alive: () => boolean) {
    this.periodMs = periodMs;
    this.#alive = alive;
    this.due = performance.now() + periodMs;
    this.#timer = setTimeout(this.#beat, periodMs);
  }

  #beat = (): void => {
    this.beats++;
    if (!this.#alive()) return this.stop();
    this.due = performance.now() + this.periodMs;
    this.#timer = setTimeout(this.#beat, this.periodMs);
  };

  /** Stops beating (the connection ended): nothing is read on it any more. */
  stop(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.due = Infinity;
  }
}

/**
 * Arms a timer in the caller's request for a statement that joined a busy connection: checked
 * every `beacon.periodMs` while the statement is unsettled, and when the connection's beacon is
 * overdue and does not beat within a grace, `onGone` is called once (the request that reads the
 * connection has ended: nothing sent on it will be answered). Returns the function that disarms
 * it, to call when the statement settles.
 */
export function guardJoined(beacon: Beacon, onGone: () => void): () => void {
  let timer: ReturnType<typeof setTimeout> | undefined;
  // The beats seen when the beacon was first found overdue; -1 while it is not.
  let seen = -1;
  const check = (): void => {
    const now = performance.now();
    if (now <= beacon.due) {
      seen = -1;
      timer = setTimeout(check, Math.min(beacon.periodMs, beacon.due - now + GRACE_MS));
    } else if (seen !== beacon.beats) {
      seen = beacon.beats;
      timer = setTimeout(check, GRACE_MS);
    } else {
      timer = undefined;
      onGone();
    }
  };
  timer = setTimeout(check, beacon.periodMs);
  return () => clearTimeout(timer);
}
