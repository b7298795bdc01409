/**
 * A counting semaphore with strict FIFO hand-off, deadlines and abort signals, shaped like
 * `@std/async`'s `Semaphore` (which this repository cannot import: JSR is unreachable from its
 * build machines).
 *
 * @module
 */

interface Waiter {
  resolve: () => void;
  reject: (reason: unknown) => void;
  deadline: number;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
  done: boolean;
}

/**
 * Options of {@linkcode Semaphore.prototype.acquire}.
 *
 * @example Waiting at most a second
 * ```ts
 * import { Semaphore } from "@x/pgdbpool";
 *
 * const sem = new Semaphore(1);
 * using _permit = await sem.acquire({ timeout_ms: 1000 });
 * ```
 */
export interface AcquireOptions {
  /** Aborting rejects the wait with the signal's reason. */
  signal?: AbortSignal;
  /** Reject with a `TimeoutError` `DOMException` after this many milliseconds. */
  timeout_ms?: number;
}

/**
 * A counting semaphore. A released permit goes straight to the oldest waiter, so a newcomer can
 * never overtake a queued caller (no barging). All waiters share one timer, armed for the
 * earliest deadline: a per-waiter `setTimeout` costs measurable CPU per checkout.
 *
 * @example Limiting concurrency to two
 * ```ts
 * import { Semaphore } from "@x/pgdbpool";
 *
 * const sem = new Semaphore(2);
 * {
 *   using _permit = await sem.acquire({ timeout_ms: 1000 });
 *   // at most two callers run here at once
 * }
 * ```
 */
export class Semaphore {
  #free: number;
  #queue: (Waiter | undefined)[] = [];
  #head = 0;
  #live = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #timerAt = Infinity;

  /** Creates a semaphore with `max` permits (`max = 1` is a mutex). */
  constructor(max: number = 1) {
    if (!Number.isInteger(max) || max < 1) {
      throw new RangeError(`Semaphore max must be a positive integer (got ${max})`);
    }
    this.#free = max;
  }

  /** Permits available right now. */
  get available(): number {
    return this.#free;
  }

  /** Callers currently waiting. */
  get waiting(): number {
    return this.#live;
  }

  /** Takes a permit if one is free and nobody waits; never waits. */
  tryAcquire(): boolean {
    if (this.#free > 0) {
      this.#free--;
      return true;
    }
    return false;
  }

  /**
   * Waits for a permit in FIFO order. Resolves to a `Disposable` that releases it once.
   * Rejects with the signal's reason on abort, or a `TimeoutError` after `timeout_ms`.
   */
  acquire(options?: AcquireOptions): Promise<Disposable> {
    return this.wait(options?.signal, options?.timeout_ms).then(() => {
      let released = false;
      return {
        [Symbol.dispose]: () => {
          if (!released) {
            released = true;
            this.release();
          }
        },
      };
    });
  }

  /**
   * Like `acquire()` but resolves to nothing; the caller must call `release()` exactly once.
   * `onQueued` receives a function that withdraws the wait (cheaper than an `AbortSignal`) and
   * one that tells whether it is still queued (false from the moment it is settled, before its
   * promise's callbacks run).
   */
  wait(
    signal?: AbortSignal,
    timeoutMs?: number,
    onQueued?: (cancel: (reason: unknown) => void, queued: () => boolean) => void,
  ): Promise<void> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (this.#free > 0) {
      this.#free--;
      return Promise.resolve();
    }
    return new Promise<void>((resolve, reject) => {
      const waiter: Waiter = {
        resolve,
        reject,
        deadline: timeoutMs === undefined ? Infinity : performance.now() + timeoutMs,
        signal,
        onAbort: undefined,
        done: false,
      };
      if (signal) {
        waiter.onAbort = () => this.#settle(waiter, signal.reason);
        signal.addEventListener("abort", waiter.onAbort, { once: true });
      }
      this.#queue.push(waiter);
      this.#live++;
      onQueued?.((reason) => this.#settle(waiter, reason), () => !waiter.done);
      if (waiter.deadline < this.#timerAt) this.#arm(waiter.deadline);
    });
  }

  /** Returns a permit: to the oldest waiter if any, else to the free count. */
  release(): void {
    if (this.#live === 0) {
      // Nobody waits (the common case): drop cancelled leftovers at most once.
      if (this.#queue.length !== 0) {
        this.#queue = [];
        this.#head = 0;
      }
      this.#free++;
      return;
    }
    const queue = this.#queue;
    while (this.#head < queue.length) {
      const waiter = queue[this.#head];
      queue[this.#head++] = undefined;
      if (waiter !== undefined && !waiter.done) {
        this.#compact();
        this.#settle(waiter, undefined);
        return;
      }
    }
    this.#compact();
    this.#free++;
  }

  /** Rejects every waiter with `reason` (used when the owner shuts down). */
  rejectAll(reason: unknown): void {
    for (let i = this.#head; i < this.#queue.length; i++) {
      const waiter = this.#queue[i];
      if (waiter !== undefined && !waiter.done) this.#settle(waiter, reason);
    }
    this.#queue = [];
    this.#head = 0;
  }

  #settle(waiter: Waiter, error: unknown): void {
    if (waiter.done) return;
    waiter.done = true;
    this.#live--;
    if (waiter.onAbort) waiter.signal!.removeEventListener("abort", waiter.onAbort);
    if (this.#live === 0) this.#disarm();
    if (error === undefined) waiter.resolve();
    else waiter.reject(error);
  }

  // Drops the consumed prefix once it dominates, so the queue array does not grow forever.
  #compact(): void {
    if (this.#head === this.#queue.length) {
      this.#queue.length = 0;
      this.#head = 0;
    } else if (this.#head > 1024 && this.#head * 2 > this.#queue.length) {
      this.#queue = this.#queue.slice(this.#head);
      this.#head = 0;
    }
  }

  #arm(at: number): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timerAt = at;
    this.#timer = setTimeout(() => this.#expire(), Math.max(0, at - performance.now()));
  }

  #disarm(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#timerAt = Infinity;
  }

  #expire(): void {
    this.#timer = undefined;
    this.#timerAt = Infinity;
    // Timers may fire a little early on some runtimes: allow one millisecond of slack.
    const now = performance.now() + 1;
    let next = Infinity;
    for (let i = this.#head; i < this.#queue.length; i++) {
      const waiter = this.#queue[i];
      if (waiter === undefined || waiter.done) continue;
      if (waiter.deadline <= now) {
        this.#settle(
          waiter,
          new DOMException("Timed out waiting for a semaphore permit", "TimeoutError"),
        );
      } else if (waiter.deadline < next) next = waiter.deadline;
    }
    if (next !== Infinity && this.#live > 0) this.#arm(next);
  }
}
