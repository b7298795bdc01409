/**
 * Group and benchmark names shared by the bench files and the report, so the report can find
 * the pairs it compares without guessing from free text.
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
