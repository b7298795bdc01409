/**
 * Leak detection (HikariCP's `leakDetectionThreshold`), on only for groups that set
 * `leak_detection_ms`: where each checkout was taken, a timer that reports one held too long,
 * and a finalizer that reclaims one whose handler became unreachable without release.
 *
 * @module
 */

/** What a checkout under leak detection can be asked to do. */
export interface Reclaimable {
  /** Its group: once `ended` (the pool closed), nothing of it is watched or reported. */
  readonly group: { readonly ended: boolean };
  /** Gives the connection and permit back because the handler is gone; reports it. */
  reclaim(): void;
}

/**
 * This module's directory, as stack frames name it (a URL in Deno, Node and on JSR; a plain
 * path in Bun): every frame under it is the pool's own, above the caller's code.
 */
const OWN_PREFIXES = ownPrefixes();

function ownPrefixes(): string[] {
  let dir: URL;
  try {
    dir = new URL(".", import.meta.url);
  } catch {
    // workerd names bundled modules by bare name (no URL): the whole stack is kept there.
    return [];
  }
  return dir.protocol === "file:" ? [dir.href, decodeURIComponent(dir.pathname)] : [dir.href];
}

/** The stack of `err` from the first frame outside the pool (all of it if none is). */
function callerStack(err: Error): string {
  const frames = (err.stack ?? "").split("\n").slice(1);
  const first = frames.findIndex((f) => !OWN_PREFIXES.some((p) => f.includes(p)));
  return (first === -1 ? frames : frames.slice(first)).join("\n");
}

/** What the tagged template of a watched handler handed out, each holding that handler. */
const holders = new WeakMap<object, object>();

/**
 * Keeps `owner` reachable for as long as `value` is (when it is an object): a statement the
 * driver still holds keeps the handler it was sent through, which is then not reclaimed.
 */
export function keepReachable(value: unknown, owner: object): void {
  if ((typeof value === "object" && value !== null) || typeof value === "function") {
    holders.set(value as object, owner);
  }
}

// Held values are the leases, never the handlers: a handler stays collectable. A closed pool
// has ended every connection already and reports nothing more.
const finalizers = new FinalizationRegistry<Reclaimable>((lease) => {
  if (!lease.group.ended) lease.reclaim();
});

/**
 * Lets the process exit while `timer` is pending, where the runtime can (Deno: `unrefTimer`;
 * Bun and Node: the timer's `unref`; elsewhere nothing): a leak report is no reason to keep a
 * program alive, and a handler held past `pool.close()` would otherwise keep it running until
 * the timer fires. An open pool's sockets keep the process alive anyway.
 */
function unref(timer: ReturnType<typeof setTimeout>): void {
  if (typeof timer === "number") {
    (globalThis as { Deno?: { unrefTimer?(id: number): void } }).Deno?.unrefTimer?.(timer);
  } else (timer as { unref?: () => void }).unref?.();
}

/** One checkout's leak watch. */
export class LeakWatch {
  /** Where the checkout was taken (the caller's frames only). */
  readonly stack: string;
  /** `performance.now()` when the checkout got its connection; 0 while it waits for one. */
  #since = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #stopped = false;
  readonly #lease: Reclaimable;
  readonly #ms: number;
  readonly #onLeak: (watch: LeakWatch) => void;

  /**
   * Watches `handler` for collection from now (a waiting one dropped is reclaimed too: its
   * wait is cancelled); the leak clock starts with `start()`, once the connection is held.
   */
  constructor(handler: object, lease: Reclaimable, ms: number, onLeak: (watch: LeakWatch) => void) {
    // The pool's own frames (this constructor, the lease, the handler, pool.handler or
    // pool.acquire, in any number) are left out: the stack starts in the caller's code.
    this.stack = callerStack(new Error());
    this.#lease = lease;
    this.#ms = ms;
    this.#onLeak = onLeak;
    finalizers.register(handler, lease, lease);
  }

  /**
   * The checkout holds its connection from now. Only holding counts: a checkout that waited
   * longer than `leak_detection_ms` for a permit (any checkout under load) was reported as a
   * leak while it held nothing, its wait counted in `held_ms`.
   */
  start(): void {
    if (this.#stopped || this.#timer !== undefined) return;
    this.#since = performance.now();
    const lease = this.#lease;
    this.#timer = setTimeout(() => {
      // The pool closed meanwhile: its checkouts are over, whatever the caller still holds.
      if (lease.group.ended) this.stop();
      else this.#onLeak(this);
    }, this.#ms);
    unref(this.#timer);
  }

  /** Milliseconds the connection has been held (0 if it never was). */
  get heldMs(): number {
    return this.#since === 0 ? 0 : Math.round(performance.now() - this.#since);
  }

  /** The checkout ended (released or reclaimed): nothing more to watch. */
  stop(): void {
    this.#stopped = true;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    finalizers.unregister(this.#lease);
  }
}
