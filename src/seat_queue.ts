/**
 * One-shot statements waiting for a seat on a shared connection, oldest first. A seat is handed
 * to the oldest waiter directly (no barging); every wait has the same timeout, so the oldest
 * waiter always has the earliest deadline and one timer, armed for it, serves the whole queue.
 *
 * @module
 */

interface Seat<T> {
  resolve: (value: T) => void;
  reject: (reason: unknown) => void;
  deadline: number;
}

/** A FIFO of waiters for values of type `T`, each with the queue's one timeout. */
export class SeatQueue<T> {
  readonly #timeoutMs: number;
  readonly #onTimeout: () => unknown;
  readonly #onEmptied: () => void;
  readonly #onSeated: (waitedMs: number) => void;
  #queue: Seat<T>[] = [];
  #head = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;

  /**
   * @param timeoutMs how long each waiter waits at most
   * @param onTimeout makes the reason a waiter is rejected with when its time is up
   * @param onEmptied called when timeouts leave the queue empty
   * @param onSeated told how long each waiter waited, as it is handed its value
   */
  constructor(
    timeoutMs: number,
    onTimeout: () => unknown,
    onEmptied: () => void,
    onSeated: (waitedMs: number) => void,
  ) {
    this.#timeoutMs = timeoutMs;
    this.#onTimeout = onTimeout;
    this.#onEmptied = onEmptied;
    this.#onSeated = onSeated;
  }

  /** Waiters in the queue. */
  get length(): number {
    return this.#queue.length - this.#head;
  }

  /** Queues a waiter; it resolves with what `give()` hands it. */
  wait(): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.#queue.push({ resolve, reject, deadline: performance.now() + this.#timeoutMs });
      this.#timer ??= setTimeout(() => this.#expire(), this.#timeoutMs);
    });
  }

  /**
   * Hands `value` to the oldest waiter. Returns false when nobody waits. `now` is the caller's
   * clock reading (one for all the waiters it seats at once).
   */
  give(value: T, now: number): boolean {
    const seat = this.#shift();
    if (seat === undefined) return false;
    // Every wait has the same timeout, so the deadline says when the waiter came.
    this.#onSeated(now - (seat.deadline - this.#timeoutMs));
    seat.resolve(value);
    return true;
  }

  /** Rejects every waiter with `reason`. */
  rejectAll(reason: unknown): void {
    const seats = this.#queue.slice(this.#head);
    this.#queue = [];
    this.#head = 0;
    this.#disarm();
    for (const seat of seats) seat.reject(reason);
  }

  #shift(): Seat<T> | undefined {
    const queue = this.#queue;
    if (this.#head === queue.length) return undefined;
    const seat = queue[this.#head];
    queue[this.#head++] = undefined as unknown as Seat<T>;
    if (this.#head === queue.length) {
      this.#queue = [];
      this.#head = 0;
      this.#disarm();
    } else if (this.#head > 1024 && this.#head * 2 > queue.length) {
      this.#queue = queue.slice(this.#head);
      this.#head = 0;
    }
    return seat;
  }

  #disarm(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #expire(): void {
    this.#timer = undefined;
    // Timers may fire a little early on some runtimes: allow one millisecond of slack.
    const now = performance.now() + 1;
    while (this.length > 0 && this.#queue[this.#head].deadline <= now) {
      this.#shift()!.reject(this.#onTimeout());
    }
    if (this.length > 0) {
      const next = this.#queue[this.#head].deadline;
      this.#timer = setTimeout(() => this.#expire(), Math.max(0, next - performance.now()));
    } else {
      this.#onEmptied();
    }
  }
}
