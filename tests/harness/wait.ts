/** Options for {@link waitFor}. */
export interface WaitOptions {
  /** Give up after this many milliseconds (default 10000). */
  timeoutMs?: number;
  /** Pause between attempts (default 20). */
  intervalMs?: number;
  /** Describes the awaited condition in the timeout error. */
  message?: string;
}

/**
 * Polls `fn` until it returns (or resolves to) a truthy value and returns that value.
 *
 * A throwing/rejecting `fn` counts as "not yet" (a server that is still starting refuses
 * connections); the last such error is attached as `cause` if the deadline passes. Each attempt
 * is raced against the deadline, so a hung attempt cannot stretch the wait past `timeoutMs`.
 */
export async function waitFor<T>(
  fn: () => T | Promise<T>,
  opts: WaitOptions = {},
): Promise<T> {
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const intervalMs = opts.intervalMs ?? 20;
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  let attempts = 0;
  while (true) {
    attempts++;
    try {
      const value = await raceDeadline(Promise.resolve().then(fn), deadline);
      if (value) return value;
    } catch (err) {
      if (err !== DEADLINE) lastError = err;
    }
    const left = deadline - Date.now();
    if (left <= 0) break;
    await sleep(Math.min(intervalMs, left));
  }
  const what = opts.message ?? "condition";
  const last = lastError === undefined ? "" : `; last error: ${describe(lastError)}`;
  throw new Error(
    `waitFor: timed out after ${timeoutMs} ms (${attempts} attempts) waiting for ${what}${last}`,
    { cause: lastError },
  );
}

/** Resolves after `ms` milliseconds. Only for pacing loops, never as a synchronisation point. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

const DEADLINE = Symbol("deadline");

function raceDeadline<T>(p: Promise<T>, deadline: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(DEADLINE), Math.max(0, deadline - Date.now()));
  });
  // The losing attempt may settle later; swallow that so it is not an unhandled rejection.
  p.catch(() => {});
  return Promise.race([p, expired]).finally(() => clearTimeout(timer));
}

function describe(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as { code?: unknown }).code;
    return code ? `${err.message} (${String(code)})` : err.message;
  }
  return String(err);
}
