// Bounded-memory figures for the soak: counters, latency histograms, event-loop stalls and heap
// samples. Nothing here grows with the number of operations, so the soak's own bookkeeping does
// not show up as a heap leak of the pool.
import process from "node:process";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";

/** Counts per label. */
export class Counters {
  readonly #map = new Map<string, number>();

  add(label: string, n = 1): void {
    this.#map.set(label, (this.#map.get(label) ?? 0) + n);
  }

  get(label: string): number {
    return this.#map.get(label) ?? 0;
  }

  entries(): Array<[string, number]> {
    return [...this.#map.entries()].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
  }

  toJSON(): Record<string, number> {
    return Object.fromEntries(this.entries());
  }
}

// Log-scale buckets: 2% wide from 10 us to ~100 s. Quantiles are read back within 2%.
const MIN_MS = 0.01;
const RATIO = 1.02;
const BUCKETS = Math.ceil(Math.log(1e7) / Math.log(RATIO)) + 2;

/** A latency histogram with fixed log buckets (p50/p99 within 2%). */
export class Histogram {
  readonly #counts = new Uint32Array(BUCKETS);
  count = 0;
  max = 0;

  record(ms: number): void {
    const i = ms <= MIN_MS
      ? 0
      : Math.min(BUCKETS - 1, 1 + Math.floor(Math.log(ms / MIN_MS) / Math.log(RATIO)));
    this.#counts[i]++;
    this.count++;
    if (ms > this.max) this.max = ms;
  }

  /** The q-quantile (0..1) in milliseconds: the upper edge of its bucket, capped by max. */
  quantile(q: number): number {
    if (this.count === 0) return NaN;
    const rank = Math.max(1, Math.ceil(q * this.count));
    let seen = 0;
    for (let i = 0; i < BUCKETS; i++) {
      seen += this.#counts[i];
      if (seen >= rank) return Math.min(this.max, i === 0 ? MIN_MS : MIN_MS * RATIO ** i);
    }
    return this.max;
  }
}

/** Histograms per label. */
export class Latencies {
  readonly #map = new Map<string, Histogram>();

  record(label: string, ms: number): void {
    let h = this.#map.get(label);
    if (h === undefined) this.#map.set(label, h = new Histogram());
    h.record(ms);
  }

  summary(): Record<string, { n: number; p50_ms: number; p99_ms: number; max_ms: number }> {
    const out: Record<string, { n: number; p50_ms: number; p99_ms: number; max_ms: number }> = {};
    for (const [label, h] of [...this.#map.entries()].sort((a, b) => a[0].localeCompare(b[0]))) {
      out[label] = {
        n: h.count,
        p50_ms: round(h.quantile(0.5)),
        p99_ms: round(h.quantile(0.99)),
        max_ms: round(h.max),
      };
    }
    return out;
  }
}

function round(ms: number): number {
  return Number.isFinite(ms) ? Math.round(ms * 10) / 10 : ms;
}

/**
 * Event-loop stalls: a 10 ms interval timer notes how late it fired. A pool cannot settle a
 * promise or fire a deadline while the loop is blocked, so deadline checks add the worst stall
 * seen while a waiter waited. A ring of the last 4096 stalls over 5 ms is kept.
 */
export class LoopLag {
  static readonly PERIOD_MS = 10;
  readonly #at = new Float64Array(4096);
  readonly #lag = new Float64Array(4096);
  #n = 0;
  #timer: ReturnType<typeof setInterval> | undefined;
  #last = 0;
  worst = 0;

  start(): void {
    this.#last = performance.now();
    this.#timer = setInterval(() => {
      const now = performance.now();
      const lag = now - this.#last - LoopLag.PERIOD_MS;
      this.#last = now;
      if (lag > 5) {
        const i = this.#n++ % this.#at.length;
        this.#at[i] = now;
        this.#lag[i] = lag;
        if (lag > this.worst) this.worst = lag;
      }
    }, LoopLag.PERIOD_MS);
    // Never keep a runtime alive for this timer alone.
    (this.#timer as { unref?: () => void }).unref?.();
  }

  stop(): void {
    clearInterval(this.#timer);
  }

  /**
   * The stall still under way at `now`: how far the monitor's tick is overdue. A timer that fires
   * at the end of a stall may run before the monitor's own tick in the same turn, so a stall is
   * not yet noted when such a timer's callback looks (the monitor notes it when it ends).
   */
  pending(now: number): number {
    return Math.max(0, now - this.#last - LoopLag.PERIOD_MS);
  }

  /** The longest stall that ended within [from, to] (plus one period), in milliseconds. */
  worstBetween(from: number, to: number): number {
    let worst = 0;
    const n = Math.min(this.#n, this.#at.length);
    for (let k = 0; k < n; k++) {
      const at = this.#at[k];
      // A stall is noted when it ends: one that began inside the window ends at most lag later.
      if (at >= from && at - this.#lag[k] <= to + LoopLag.PERIOD_MS) {
        worst = Math.max(worst, this.#lag[k]);
      }
    }
    return worst;
  }
}

let v8Gc: (() => void) | null | undefined;

/** V8's gc(): exposed by --expose-gc, or enabled at run time (Deno and Node allow that). */
function findV8Gc(): (() => void) | null {
  const g = globalThis as { gc?: () => void };
  if (typeof g.gc === "function") return g.gc;
  try {
    setFlagsFromString("--expose-gc");
    const gc = runInNewContext("gc");
    return typeof gc === "function" ? gc : null;
  } catch {
    return null;
  }
}

/** Runs a full garbage collection when the runtime allows it; returns whether it did. */
export function collectGarbage(): boolean {
  const g = globalThis as { Bun?: { gc(force: boolean): void } };
  if (g.Bun) {
    g.Bun.gc(true);
    return true;
  }
  v8Gc ??= findV8Gc();
  if (v8Gc === null) return false;
  v8Gc();
  return true;
}

/** heapUsed in bytes. */
export function heapUsed(): number {
  return process.memoryUsage().heapUsed;
}

/**
 * Heap samples once a second into a small ring. Without a forced GC, heapUsed swings with
 * garbage; the minimum over a window approximates the live set, so both the warm-up baseline and
 * the end figure are window minima (after a forced GC where the runtime allows it).
 */
export class HeapMonitor {
  readonly #ring = new Float64Array(16);
  #n = 0;
  #timer: ReturnType<typeof setInterval> | undefined;
  baseline: number | undefined;
  end: number | undefined;
  forcedGc = false;

  start(): void {
    this.#timer = setInterval(() => this.#push(heapUsed()), 1000);
    (this.#timer as { unref?: () => void }).unref?.();
  }

  stop(): void {
    clearInterval(this.#timer);
  }

  #push(v: number): void {
    this.#ring[this.#n++ % this.#ring.length] = v;
  }

  #windowMin(): number {
    const n = Math.min(this.#n, this.#ring.length);
    let min = heapUsed();
    for (let i = 0; i < n; i++) min = Math.min(min, this.#ring[i]);
    return min;
  }

  #sample(): number {
    this.forcedGc = collectGarbage();
    const now = heapUsed();
    return this.forcedGc ? now : Math.min(now, this.#windowMin());
  }

  /** Takes the baseline (call after warm-up) and clears the window. */
  markBaseline(): void {
    this.baseline = this.#sample();
    this.#n = 0;
  }

  /** Takes the end figure. */
  markEnd(): void {
    this.end = this.#sample();
  }
}
