/**
 * A deadline for a promise that may never settle: a hung host must not hang a probe, a ping or a
 * check-in rollback.
 *
 * @module
 */

/** Rejects with an `ETIMEDOUT` error when `promise` has not settled after `ms`. */
export function withDeadline<T>(promise: PromiseLike<T>, ms: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    promise,
    new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(Object.assign(new Error(`No answer within ${ms} ms`), { code: "ETIMEDOUT" })),
        ms,
      );
    }),
  ]).finally(() => clearTimeout(timer));
}
