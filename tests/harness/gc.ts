/**
 * A full garbage collection for tests that wait on finalizers (leak reclaim, a closed pool
 * collected).
 *
 * @module
 */

/**
 * Collects garbage now: Bun exposes a synchronous full collection, `gc()` where a runtime was
 * started with it; elsewhere garbage pressure makes V8 collect (and run finalizers) without flags.
 */
export function collectGarbage(): void {
  const bun = (globalThis as { Bun?: { gc(sync: boolean): void } }).Bun;
  if (bun !== undefined) return bun.gc(true);
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc !== undefined) return gc();
  let junk: unknown[] = [];
  for (let i = 0; i < 200_000; i++) junk.push({ i, s: `x${i}` });
  junk = [];
}
