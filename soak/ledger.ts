// What the soak expects of every write it issued: one status byte per request id (ids are dense
// from 1), so the ledger costs a byte per write and lives outside the JS heap.

/** Status of one request id. */
export const Expect = {
  /** Id never issued. */
  None: 0,
  /** Issued, outcome not known yet (still in flight at the end counts as unknown). */
  Pending: 1,
  /** Acknowledged: must be present on the final primary. */
  Present: 2,
  /** Failed in a way that proves it never committed: must be absent. */
  Absent: 3,
  /** Outcome unknown (lost session during the statement or the COMMIT): either is fine. */
  Unknown: 4,
} as const;

/** One of the {@link Expect} values. */
export type Expect = typeof Expect[keyof typeof Expect];

/** Dense request-id and checkout-id allocator with a status byte per request. */
export class Ledger {
  #status = new Uint8Array(1 << 16);
  // For diagnostics: the operation kind that issued each write and why it ended as it did,
  // as indices into small label tables.
  #kind = new Uint8Array(1 << 16);
  #why = new Uint8Array(1 << 16);
  readonly #labels: string[] = [""];
  readonly #labelIndex = new Map<string, number>([["", 0]]);
  #nextReq = 1;
  #nextCheckout = 1;

  #intern(label: string): number {
    let i = this.#labelIndex.get(label);
    if (i === undefined) {
      i = this.#labels.length < 255 ? this.#labels.length : 255;
      if (i < 255) {
        this.#labels.push(label);
        this.#labelIndex.set(label, i);
      }
    }
    return i;
  }

  /** A fresh request id for a write issued by an operation of `kind`, marked pending. */
  request(kind: string): number {
    const id = this.#nextReq++;
    if (id >= this.#status.length) {
      const grow = (a: Uint8Array) => {
        const bigger = new Uint8Array(a.length * 2);
        bigger.set(a);
        return bigger;
      };
      this.#status = grow(this.#status);
      this.#kind = grow(this.#kind);
      this.#why = grow(this.#why);
    }
    this.#status[id] = Expect.Pending;
    this.#kind[id] = this.#intern(kind);
    return id;
  }

  /** A fresh checkout id. */
  checkout(): number {
    return this.#nextCheckout++;
  }

  /** Records the outcome of writes; `why` (an error label) is kept for diagnostics. */
  set(ids: readonly number[], status: Expect, why = ""): void {
    const w = this.#intern(why);
    for (const id of ids) {
      this.#status[id] = status;
      this.#why[id] = w;
    }
  }

  get(id: number): Expect {
    return id < this.#nextReq ? this.#status[id] as Expect : Expect.None;
  }

  /** "kind, why" of a request, for violation messages. */
  describe(id: number): string {
    if (id >= this.#nextReq) return "never issued";
    const why = this.#labels[this.#why[id]] ?? "?";
    return `op ${this.#labels[this.#kind[id]] ?? "?"}${why ? `, failed with ${why}` : ""}`;
  }

  /** Highest id issued so far. */
  get lastRequest(): number {
    return this.#nextReq - 1;
  }

  /** Counts per status over all issued ids. */
  tally(): Record<"present" | "absent" | "unknown" | "pending", number> {
    const t = { present: 0, absent: 0, unknown: 0, pending: 0 };
    for (let id = 1; id < this.#nextReq; id++) {
      switch (this.#status[id]) {
        case Expect.Present:
          t.present++;
          break;
        case Expect.Absent:
          t.absent++;
          break;
        case Expect.Unknown:
          t.unknown++;
          break;
        case Expect.Pending:
          t.pending++;
          break;
      }
    }
    return t;
  }
}
