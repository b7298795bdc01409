/**
 * Names shared by the bench files, the driver and the report: groups and benchmarks (so the
 * report finds the pairs it compares without guessing from free text), and how the driver hands
 * the servers to the bench processes. Pure: importing it starts nothing.
 *
 * @module
 */

/** Benchmark groups (`Deno.bench({ group })`). */
export const GROUP = {
  checkout: "checkout + release, warm, no query",
  seq: "SELECT 1, sequential",
  c10: "SELECT 1 x1000, 10 callers, 10 connections",
  c100: "SELECT 1 x1000, 100 callers, 10 connections",
  tx: "transaction: 1 statement + commit",
  contention: "contention: 200 tasks x 5 checkouts, 10 connections",
} as const;

/** Queries (or checkouts) one iteration of a batch group runs: turns time into throughput. */
export const BATCH: Readonly<Record<string, number>> = {
  [GROUP.c10]: 1000,
  [GROUP.c100]: 1000,
  [GROUP.contention]: 1000,
};

/** Every pgdbpool entry starts with this; the report finds them by it. */
export const OURS = "pgdbpool";

/** Benchmark names. */
export const NAME = {
  reserve: "postgres.js reserve()+release()",
  pgPool: "pg-pool connect()+release()",
  floor: "array pop+push (floor)",
  handler: "pgdbpool handler",
  oneShot: "pgdbpool pool.query",
  raw: "postgres.js",
  begin: "postgres.js sql.begin()",
  contentionOurs: "pgdbpool acquire()",
  contentionPg: "pg-pool connect()",
} as const;

/** Name of a pgdbpool checkout entry: mode and which endpoints its group is pinned to. */
export function checkoutName(
  mode: "threaded" | "non-threaded",
  where: "primary" | "replica" | "both",
): string {
  return `${OURS} ${mode}, ${where === "both" ? "primary+replica" : where}`;
}

/** Key of the extra per-bench figures (contention waits) in the results JSON. */
export function extraKey(group: string, name: string): string {
  return `${group} :: ${name}`;
}

/** An endpoint in the pool's configuration shape (`name` is the database). */
export interface BenchEndpoint {
  host: string;
  port: number;
  name: string;
  user: string;
  pass: string;
}

/** Set by bench/run.ts: the cluster it started, as JSON `BenchEndpoint[]`, primary first. */
export const ENDPOINTS_VAR = "PGDBPOOL_BENCH_ENDPOINTS";
/** Set by bench/run.ts: a file that receives one JSON line per extra figure. */
export const EXTRA_VAR = "PGDBPOOL_BENCH_EXTRA";
/** Set by bench/run.ts: the round number (1-based); even rounds run each group in reverse. */
export const ROUND_VAR = "PGDBPOOL_BENCH_ROUND";

/** The harness's endpoints with `name` set to the database (its `endpoints()` may not). */
export function benchEndpoints(
  cluster: { database: string; endpoints(): BenchEndpoint[] },
): BenchEndpoint[] {
  return cluster.endpoints().map((e) => ({ ...e, name: cluster.database }));
}
