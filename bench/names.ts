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
  seq: "SELECT 1, 1 caller, 10 connections",
  c100: "SELECT 1 x1000, 100 callers, 10 connections",
  tx: "transaction: 1 statement + commit",
  contention: "contention: 200 tasks x 5 checkouts, 10 connections",
} as const;

/** Queries (or checkouts) one iteration of a batch group runs: turns time into throughput. */
export const BATCH: Readonly<Record<string, number>> = {
  [GROUP.c100]: 1000,
  [GROUP.contention]: 1000,
};

/**
 * Operations one iteration of a group repeats, so that an iteration is far above the timer's
 * resolution: the report divides times by it. A single sub-microsecond checkout per iteration
 * let `deno bench` fall back to timing each call alone when its calibration caught a pause,
 * and then report the timer's overhead (5-11 µs) instead of the checkout.
 */
export const OPS_PER_ITERATION: Readonly<Record<string, number>> = {
  [GROUP.checkout]: 1000,
};

/** Every pgdbpool entry starts with this; the report finds them by it. */
export const OURS = "pgdbpool";

/** Suffix of the pgdbpool entries that use the Bun-native driver (`driver: "bun"`). */
export const BUN_DRIVER = " (bun driver)";

/** Benchmark names. */
export const NAME = {
  reserve: "postgres.js reserve()+release()",
  /** Informative: the pool's own share of a checkout, without the `using` statement's cost. */
  noUsing: "pgdbpool threaded, primary, release() without using",
  pgPool: "pg-pool connect()+release()",
  floor: "array pop+push (floor)",
  /** Informative: what the runtime's `using` statement costs by itself. */
  usingFloor: "using of an object with an empty dispose (runtime floor)",
  handler: "pgdbpool handler",
  oneShot: "pgdbpool pool.query",
  handlerBun: `pgdbpool handler${BUN_DRIVER}`,
  oneShotBun: `pgdbpool pool.query${BUN_DRIVER}`,
  tagged: "postgres.js sql`` tagged template",
  pgQuery: "pg Pool.query()",
  bunSql: "Bun SQL sql`` tagged template",
  begin: "postgres.js sql.begin()",
  contentionOurs: "pgdbpool acquire()",
  contentionPg: "pg-pool connect()",
} as const;

/**
 * Exactly how each contender is called, for the report: the issue asks that nobody has to
 * guess whether a baseline was written the way its own users write it.
 */
export const HOW: Readonly<Record<string, string>> = {
  [NAME.handler]: '`using db = pool.handler("q"); await db.query("SELECT 1")` ' +
    "(group of `connection_count: 10`, postgres.js driver)",
  [NAME.oneShot]: '`await pool.query("q", "SELECT 1")` (same group)',
  [NAME.handlerBun]: 'as `pgdbpool handler`, on a pool built with `driver: "bun"`',
  [NAME.oneShotBun]: 'as `pgdbpool pool.query`, on a pool built with `driver: "bun"`',
  [NAME.tagged]: "`` await sql`SELECT 1` `` on `postgres({ max: 10 })` (prepared statements on, " +
    "its default)",
  [NAME.pgQuery]: '`await pool.query("SELECT 1")` on npm `pg`\'s `new pg.Pool({ max: 10 })`',
  [NAME.bunSql]: "`` await sql`SELECT 1` `` on Bun's built-in `new SQL({ max: 10 })`",
  [NAME.noUsing]: '`const db = pool.handler("primary"); db.release()`: the same checkout ' +
    "without `using` (informative, not a target)",
  [NAME.reserve]: "`const r = await sql.reserve(); r.release()` on `postgres({ max: 1 })`",
  [NAME.usingFloor]: "`using _d = new Disposable()` with an empty `[Symbol.dispose]()`: the " +
    "`using` statement's own cost on this runtime, which every checkout with `using` pays",
  [NAME.pgPool]: "`const c = await pool.connect(); c.release()` on `new pg.Pool({ max: 4 })`",
  [NAME.begin]: "`` await sql.begin((tx) => tx`UPDATE ...`) ``",
};

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

/** Connections opened for the memory-per-connection figure (bench/memory.ts). */
export const MEMORY_CONNECTIONS = 50;
/** Instances constructed for the memory-per-idle-instance figure (bench/memory.ts). */
export const MEMORY_IDLE = 200;

/** Key of a note in the results' `extra` (a contender that was skipped, and why). */
export const NOTE_PREFIX = "note :: ";

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
