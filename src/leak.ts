/**
 * Leak detection (HikariCP's `leakDetectionThreshold`), on only for groups that set
 * `leak_detection_ms`: where each checkout was taken, a timer that reports one held too long,
 * and a finalizer that reclaims one whose handler became unreachable without release.
 *
 * @module
 */

/** What a checkout under leak detection can be asked to do. */
export interface Reclaimable {
  /** Gives the connection and permit back because the handler is gone; reports it. */
  reclaim(): void;
}

// Held values are the leases, never the handlers: a handler stays collectable.
const finalizers = new FinalizationRegistry<Reclaimable>((lease) => lease.reclaim());

/** One checkout's leak watch. */
export class LeakWatch {
  /** Where the checkout was taken (the caller's frames only). */
  readonly stack: string;
  /** `performance.now()` at checkout. */
  readonly since: number;
  readonly #timer: ReturnType<typeof setTimeout>;
  readonly #lease: Reclaimable;

  constructor(handler: object, lease: Reclaimable, ms: number, onLeak: (watch: LeakWatch) => void) {
    // Below the message: this constructor, the lease's and the handler's frames; the caller's
    // code starts after them.
    const lines = (new Error().stack ?? "").split("\n");
    this.stack = lines.slice(4).join("\n");
    this.since = performance.now();
    this.#lease = lease;
    this.#timer = setTimeout(() => onLeak(this), ms);
    finalizers.register(handler, lease, lease);
  }

  /** Milliseconds since the checkout. */
  get heldMs(): number {
    return Math.round(performance.now() - this.since);
  }

  /** The checkout ended (released or reclaimed): nothing more to watch. */
  stop(): void {
    clearTimeout(this.#timer);
    finalizers.unregister(this.#lease);
  }
}
