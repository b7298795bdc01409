/**
 * A deadline for a promise that may never settle: a hung host must not hang a probe, a ping or a
 * check-in rollback.
 *
 * @module
 */

/**
 * A timer that fires this much later than it was due was held up by this process's own event
 * loop (a long synchronous task, a garbage-collection pause), not by the server. Timers of a busy
 * loop run a few ms late; a stall runs them tens of ms late or more.
 */
const STALL_MS = 50;

/**
 * After a stall, how long the loop gets to read what arrived meanwhile before the deadline is
 * taken as passed. On Deno the timer that came due during the stall can run before the socket
 * read of an answer that came in long before it.
 */
const GRACE_MS = 50;

/**
 * Rejects with an `ETIMEDOUT` error when `promise` has not settled after `ms`, counting only
 * time in which this process could have seen it settle: a deadline whose timer fires late
 * (the event loop was stalled) is re-armed for a short grace, so that an answer waiting unread
 * is read first, and again while the grace timers fire late too, up to `ms / GRACE_MS` times:
 * stalls that never stop must not stretch the deadline for good.
 */
export function withDeadline<T>(promise: PromiseLike<T>, ms: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    promise,
    new Promise<never>((_, reject) => {
      let due = performance.now() + ms;
      // As many stalled turns as graces fit in the deadline itself: an answer that needs
      // several reads (a fresh session's connect, start-up and first rows) gets its turns on a
      // loop stalled again and again, and a loop that never stops stalling stretches the
      // deadline by a bounded number of its turns.
      let graces = Math.max(1, Math.ceil(ms / GRACE_MS));
      const fire = () => {
        const now = performance.now();
        if (graces > 0 && now - due > STALL_MS) {
          graces--;
          due = now + GRACE_MS;
          timer = setTimeout(fire, GRACE_MS);
          return;
        }
        reject(Object.assign(new Error(`No answer within ${ms} ms`), { code: "ETIMEDOUT" }));
      };
      timer = setTimeout(fire, ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/**
 * `proof`, or sooner `timedOut()` once the caller's deadline `at` (a `performance.now()` time)
 * has passed, or `signal`'s reason when it aborts. A caller's deadline, so no grace for stalls:
 * the caller asked to wait no longer. `proof` runs on past it, and `late` receives what it
 * resolves to then (nobody else will: a connection held for the caller must be given back).
 */
export function untilCallerDeadline<T>(
  proof: Promise<T>,
  at: number,
  timedOut: () => Error,
  signal?: AbortSignal,
  late?: (value: T) => void,
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let settled = false;
    const settle = (): boolean => {
      if (settled) return false;
      settled = true;
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      return true;
    };
    const onAbort = () => {
      if (settle()) reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      if (settle()) reject(timedOut());
    }, Math.max(0, at - performance.now()));
    signal?.addEventListener("abort", onAbort, { once: true });
    proof.then((value) => {
      if (settle()) resolve(value);
      else late?.(value);
    }, (err) => {
      if (settle()) reject(err);
    });
  });
}
