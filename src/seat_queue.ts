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
  /** The request was counted already (a statement moving to another connection). */
  again: boolean;
}

/** Ring slots a queue takes when its first waiter comes. */
const INITIAL_CAPACITY = 64;
/** An emptied queue keeps a ring up to this size; a larger one is dropped. */
const MAX_KEPT_CAPACITY = 8192;

/** A FIFO of waiters for values of type `T`, each with the queue's one timeout. */
export class SeatQueue<T> {
  readonly #timeoutMs: number;
  readonly #onTimeout: () => unknown;
  readonly #onEmptied: () => void;
  readonly #onSeated: (waitedMs: number) => void;
  /**
   * Waiters in a ring (oldest at `#head`), so that a queue that empties and fills again many
   * times a second under load reuses one array instead of allocating and growing a new one.
   */
  #ring: (Seat<T> | undefined)[] = [];
  #head = 0;
  #size = 0;
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
    return this.#size;
  }

  /**
   * Queues a waiter; it resolves with what `give()` hands it. `again`: the same request waits
   * a second time (its statement moves to another connection): `onSeated` is not told.
   */
  wait(again = false): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.#push({ resolve, reject, deadline: performance.now() + this.#timeoutMs, again });
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
    if (!seat.again) this.#onSeated(now - (seat.deadline - this.#timeoutMs));
    seat.resolve(value);
    return true;
  }

  /** Rejects every waiter with `reason`. */
  rejectAll(reason: unknown): void {
    const seats: Seat<T>[] = [];
    for (let seat = this.#shift(); seat !== undefined; seat = this.#shift()) seats.push(seat);
    this.#disarm();
    for (const seat of seats) seat.reject(reason);
  }

  #push(seat: Seat<T>): void {
    let ring = this.#ring;
    if (this.#size === ring.length) {
      // Full (or never used): unroll into a ring twice the size, oldest first.
      const grown: (Seat<T> | undefined)[] = new Array(Math.max(INITIAL_CAPACITY, ring.length * 2));
      for (let i = 0; i < this.#size; i++) grown[i] = ring[(this.#head + i) % ring.length];
      this.#ring = ring = grown;
      this.#head = 0;
    }
    ring[(this.#head + this.#size) % ring.length] = seat;
    this.#size++;
  }

  #peek(): Seat<T> | undefined {
    return this.#size === 0 ? undefined : this.#ring[this.#head];
  }

  #shift(): Seat<T> | undefined {
    if (this.#size === 0) return undefined;
    const ring = this.#ring;
    const seat = ring[this.#head];
    ring[this.#head] = undefined;
    this.#head = (this.#head + 1) % ring.length;
    if (--this.#size === 0) {
      this.#head = 0;
      this.#disarm();
      // A burst that grew the ring far past the usual leaves no large array behind.
      if (ring.length > MAX_KEPT_CAPACITY) this.#ring = [];
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
    while (this.#size > 0 && this.#peek()!.deadline <= now) {
      // The reason first: a waiter is taken off the queue only once it can be rejected.
      const reason = this.#onTimeout();
      this.#shift()!.reject(reason);
    }
    if (this.#size > 0) {
      const next = this.#peek()!.deadline;
      this.#timer = setTimeout(() => this.#expire(), Math.max(0, next - performance.now()));
    } else {
      this.#onEmptied();
    }
  }
}
