// The soak's invariants: a violation collector, process-wide hooks for unhandled rejections and
// uncaught errors, the checkout-deadline check, and the final checks against the database
// (acknowledged writes present, failed ones absent, no duplicates, one session per checkout),
// the heap bound and the zero-connections-after-close check.
import process from "node:process";
import type { Pool } from "../mod.ts";
import type { PgCluster, PgServer } from "../tests/harness/cluster.ts";
import { poolSessions } from "../tests/harness/faults.ts";
import { waitFor } from "../tests/harness/wait.ts";
import { Expect, type Ledger } from "./ledger.ts";
import type { HeapMonitor, LoopLag } from "./metrics.ts";

/** One kind of violation: how often, and the first few examples. */
export interface ViolationSummary {
  kind: string;
  count: number;
  examples: string[];
}

const EXAMPLES = 5;

/** Collects violations by kind, keeping the first few examples of each. */
export class Violations {
  readonly #byKind = new Map<string, ViolationSummary>();
  readonly #t0: number;

  /** Examples are prefixed with the seconds since `t0` (a performance.now() value). */
  constructor(t0: number = performance.now()) {
    this.#t0 = t0;
  }

  add(kind: string, example: string): void {
    let v = this.#byKind.get(kind);
    if (v === undefined) this.#byKind.set(kind, v = { kind, count: 0, examples: [] });
    v.count++;
    const at = ((performance.now() - this.#t0) / 1000).toFixed(1);
    if (v.examples.length < EXAMPLES) v.examples.push(`[${at}s] ${example}`);
  }

  get total(): number {
    let n = 0;
    for (const v of this.#byKind.values()) n += v.count;
    return n;
  }

  list(): ViolationSummary[] {
    return [...this.#byKind.values()].sort((a, b) => a.kind.localeCompare(b.kind));
  }
}

/** A short description of a thrown value (name, code, message, first stack frame). */
export function describeError(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const code = (err as { code?: unknown }).code;
  const frame = err.stack?.split("\n").find((l) => l.trim().startsWith("at "))?.trim();
  return `${err.name}${code ? ` ${String(code)}` : ""}: ${err.message}${
    frame ? ` (${frame})` : ""
  }`;
}

/**
 * Records unhandled rejections and uncaught errors as violations instead of letting the runtime
 * die (Deno: window events; Bun and Node: process events). Returns the uninstaller.
 */
export function installGlobalHooks(violations: Violations): () => void {
  const g = globalThis as {
    Deno?: unknown;
    addEventListener?: (type: string, fn: (e: Event) => void) => void;
    removeEventListener?: (type: string, fn: (e: Event) => void) => void;
  };
  if (g.Deno !== undefined && g.addEventListener && g.removeEventListener) {
    const onRejection = (e: Event) => {
      e.preventDefault();
      violations.add("unhandled-rejection", describeError((e as PromiseRejectionEvent).reason));
    };
    const onError = (e: Event) => {
      e.preventDefault();
      violations.add("uncaught-exception", describeError((e as ErrorEvent).error));
    };
    g.addEventListener("unhandledrejection", onRejection);
    g.addEventListener("error", onError);
    return () => {
      g.removeEventListener!("unhandledrejection", onRejection);
      g.removeEventListener!("error", onError);
    };
  }
  const onRejection = (reason: unknown) =>
    violations.add("unhandled-rejection", describeError(reason));
  const onError = (err: unknown) => violations.add("uncaught-exception", describeError(err));
  process.on("unhandledRejection", onRejection);
  process.on("uncaughtException", onError);
  return () => {
    process.off("unhandledRejection", onRejection);
    process.off("uncaughtException", onError);
  };
}

/** Allowed lateness of a checkout rejection past its deadline, before event-loop stalls. */
export const LATE_MS = 50;

/**
 * A checkout that waited from `startedAt` and was rejected now must not be rejected later than
 * `deadlineMs` + 50 ms (plus the longest event-loop stall meanwhile, during which no timer can
 * fire), nor clearly before its deadline.
 */
export function checkDeadline(
  violations: Violations,
  lag: LoopLag,
  what: string,
  startedAt: number,
  deadlineMs: number,
): void {
  const now = performance.now();
  const waited = now - startedAt;
  const stall = Math.max(lag.worstBetween(startedAt, now), lag.pending(now));
  if (waited > deadlineMs + LATE_MS + stall) {
    violations.add(
      "late-rejection",
      `${what}: rejected after ${Math.round(waited)} ms, deadline ${deadlineMs} ms ` +
        `(allowed +${LATE_MS} ms, event-loop stall ${Math.round(stall)} ms)`,
    );
  } else if (what.includes("AcquireTimeoutError") && waited < deadlineMs - 20) {
    violations.add(
      "early-rejection",
      `${what}: rejected after ${Math.round(waited)} ms, deadline ${deadlineMs} ms`,
    );
  }
}

/** Figures of the final write checks. */
export interface WriteFigures {
  issued: number;
  rows: number;
  acked: number;
  failed_absent: number;
  unknown: number;
  unknown_present: number;
  unknown_absent: number;
}

/**
 * Compares the ledger with the final primary's table: every acknowledged write present, every
 * write that failed provably unexecuted absent, no request applied twice, every checkout's
 * writes stamped by exactly one session (server port, backend pid).
 */
export async function checkWrites(
  primary: PgServer,
  ledger: Ledger,
  violations: Violations,
): Promise<WriteFigures> {
  const last = ledger.lastRequest;
  const seen = new Uint8Array(last + 1);
  const [{ reqs, rows }] = await primary.query(
    "select coalesce(string_agg(req::text, ','), '') as reqs, count(*)::int as rows from soak_writes",
  );
  for (const part of String(reqs).split(",")) {
    if (part === "") continue;
    const id = Number(part);
    if (id >= 1 && id <= last) seen[id] = Math.min(255, seen[id] + 1);
    else violations.add("unknown-request-id", `row with req ${id} was never issued (last ${last})`);
  }
  const figures: WriteFigures = {
    issued: last,
    rows: rows as number,
    acked: 0,
    failed_absent: 0,
    unknown: 0,
    unknown_present: 0,
    unknown_absent: 0,
  };
  const failedPresent: number[] = [];
  for (let id = 1; id <= last; id++) {
    const status = ledger.get(id);
    if (status === Expect.Present) {
      figures.acked++;
      if (seen[id] === 0) {
        violations.add("acked-write-missing", `req ${id} (${ledger.describe(id)})`);
      }
    } else if (status === Expect.Absent) {
      figures.failed_absent++;
      if (seen[id] > 0) failedPresent.push(id);
    } else {
      figures.unknown++;
      if (seen[id] > 0) figures.unknown_present++;
      else figures.unknown_absent++;
    }
  }
  if (failedPresent.length > 0) {
    // Where each such row was written (server port, backend pid, checkout, and the rows that
    // checkout left), for the diagnosis: a failed write that is present is a lost guarantee.
    const rows = await primary.query(
      `select w.req, format('%s:%s/checkout %s', w.port, w.pid, w.checkout) as at,
              (select string_agg(o.req::text || '@' || o.port || ':' || o.pid, ' ' order by o.req)
                 from soak_writes o where o.checkout = w.checkout) as checkout_rows
         from soak_writes w where w.req = any($1::int[])`,
      [failedPresent],
    );
    const at = new Map(
      rows.map((r) => [Number(r.req), `${r.at}; checkout rows ${r.checkout_rows}`]),
    );
    for (const id of failedPresent) {
      violations.add(
        "failed-write-present",
        `req ${id} (${ledger.describe(id)}; written ${at.get(id) ?? "?"})`,
      );
    }
  }
  const dups = await primary.query(
    `select req, count(*)::int as n, string_agg(format('%s:%s/checkout %s/%s', port, pid, checkout, kind), ', ') as rows
       from soak_writes group by req having count(*) > 1 order by req limit 20`,
  );
  const [{ n: dupCount }] = await primary.query(
    "select count(*)::int as n from (select req from soak_writes group by req having count(*) > 1) d",
  );
  for (let i = 0; i < dupCount; i++) {
    const d = dups[i];
    violations.add(
      "request-applied-twice",
      d ? `req ${d.req} applied ${d.n} times (${d.rows}; ${ledger.describe(d.req)})` : "(more)",
    );
  }
  const split = await primary.query(
    `select checkout, min(kind) as kind,
            string_agg(distinct format('%s:%s', port, pid), ', ') as sessions,
            string_agg(req::text, ',' order by req) as reqs
       from soak_writes group by checkout having count(distinct (port, pid)) > 1
       order by checkout limit 20`,
  );
  const [{ n: splitCount }] = await primary.query(
    `select count(*)::int as n from (select checkout from soak_writes group by checkout
       having count(distinct (port, pid)) > 1) s`,
  );
  for (let i = 0; i < splitCount; i++) {
    const s = split[i];
    violations.add(
      "checkout-on-two-sessions",
      s
        ? `checkout ${s.checkout} (${s.kind}) wrote from sessions ${s.sessions}: reqs ${s.reqs}`
        : "(more)",
    );
  }
  return figures;
}

/** Waits (5 s) for the pool's sessions to disappear from every running server after close. */
export async function checkNoConnections(
  cluster: PgCluster,
  app: string,
  violations: Violations,
  note: () => string = () => "",
): Promise<number> {
  let left = await poolSessions(cluster, app);
  try {
    await waitFor(async () => (left = await poolSessions(cluster, app)).length === 0, {
      timeoutMs: 5000,
      message: "pool sessions gone after close",
    });
  } catch {
    violations.add(
      "connections-after-close",
      `${left.length} session(s) left 5 s after pool.close(): ` +
        left.slice(0, 10).map((s) =>
          `${s.server.name} pid ${s.pid} ${s.applicationName} ${s.state} ${
            JSON.stringify(s.query.slice(0, 60))
          }`
        ).join("; ") + note(),
    );
  }
  return left.length;
}

/** Heap bound: the end figure may not exceed 3x the warm-up baseline (by more than 16 MB), nor 1 GB. */
export function checkHeap(heap: HeapMonitor, violations: Violations): void {
  const { baseline, end } = heap;
  if (baseline === undefined || end === undefined) return;
  const mb = (b: number) => `${(b / 2 ** 20).toFixed(1)} MB`;
  if (end > 3 * baseline && end - baseline > 16 * 2 ** 20) {
    violations.add("heap-growth", `heap ${mb(baseline)} after warm-up, ${mb(end)} at the end`);
  } else if (end > 2 ** 30) {
    violations.add("heap-growth", `heap ${mb(end)} at the end (absolute bound 1 GB)`);
  }
}

/**
 * Samples pool.stats() every 200 ms: a group's busy count (permits in use) must stay within
 * [0, connection_count] — outside it, permits were released twice or leaked — and its open
 * connections must never exceed connection_count. The largest `open` per group is kept too.
 */
export class StatsWatch {
  readonly maxOpen: Record<string, { open: number; size: number }> = {};
  readonly #last = new Map<string, string>();
  readonly #over = new Map<string, number>();
  #timer: ReturnType<typeof setInterval> | undefined;

  constructor(readonly pool: Pool, readonly violations: Violations) {}

  start(): void {
    this.#timer = setInterval(() => this.sample(), 200);
    (this.#timer as { unref?: () => void }).unref?.();
  }

  stop(): void {
    clearInterval(this.#timer);
  }

  sample(): void {
    if (this.pool.closed) return;
    for (const [name, g] of Object.entries(this.pool.stats().groups)) {
      const bad = g.busy < 0 || g.busy > g.size || g.waiting < 0;
      // Reported when a group enters a bad state or its busy count changes while bad.
      const key = bad ? `${g.busy}/${g.waiting}` : "";
      if (bad && this.#last.get(name) !== key) {
        this.violations.add(
          "permit-accounting",
          `group ${name}: busy ${g.busy} of size ${g.size}, idle ${g.idle}, open ${g.open}, ` +
            `waiting ${g.waiting}`,
        );
      }
      this.#last.set(name, key);
      // The budget: never more server connections than connection_count.
      if (g.open > g.size && this.#over.get(name) !== g.open) {
        this.violations.add(
          "connection-budget",
          `group ${name}: ${g.open} connections open, connection_count ${g.size}`,
        );
      }
      this.#over.set(name, g.open > g.size ? g.open : 0);
      const m = this.maxOpen[name];
      if (m === undefined || g.open > m.open) this.maxOpen[name] = { open: g.open, size: g.size };
    }
  }
}
