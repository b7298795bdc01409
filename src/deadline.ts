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
 * (the event loop was stalled) is re-armed once for a short grace, so that an answer waiting
 * unread is read first. Once: the loop has turned by the time the grace ends, and stalls that
 * never stop must not stretch the deadline for good.
 */
export function withDeadline<T>(promise: PromiseLike<T>, ms: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    promise,
    new Promise<never>((_, reject) => {
      const due = performance.now() + ms;
      let graced = false;
      const fire = () => {
        if (!graced && performance.now() - due > STALL_MS) {
          graced = true;
          timer = setTimeout(fire, GRACE_MS);
          return;
        }
        reject(Object.assign(new Error(`No answer within ${ms} ms`), { code: "ETIMEDOUT" }));
      };
      timer = setTimeout(fire, ms);
    }),
  ]).finally(() => clearTimeout(timer));
}
