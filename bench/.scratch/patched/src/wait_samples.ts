/**
 * The last waits of a group's slow-path checkouts, for p50/p99 in `pool.stats()`. Fast-path
 * checkouts wait zero and are only counted, so the hot path records nothing.
 *
 * @module
 */

const SIZE = 1024;

/** A ring of recent wait times in milliseconds. */
export class WaitSamples {
  readonly #ring = new Float64Array(SIZE);
  #count = 0;

  /** Records one wait. */
  add(ms: number): void {
    this.#ring[this.#count++ % SIZE] = ms;
  }

  /**
   * The `q` quantile (0..1) over `total` checkouts, of which the recorded ones waited and the
   * rest did not. Approximate once more than the ring's size have waited.
   */
  quantile(q: number, total: number): number {
    const n = Math.min(this.#count, SIZE);
    if (n === 0 || total === 0) return 0;
    const waited = Math.min(this.#count, total);
    const zeros = total - waited;
    const rank = Math.ceil(q * total) - 1;
    if (rank < zeros) return 0;
    const sorted = this.#ring.slice(0, n).sort();
    const index = Math.min(n - 1, Math.floor(((rank - zeros) / Math.max(1, waited)) * n));
    return sorted[index];
  }
}
