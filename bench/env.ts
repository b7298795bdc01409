/**
 * What every bench file shares: the servers to talk to, the pools under test built the same
 * way, their warm-up, and a place for figures `deno bench --json` has no field for.
 *
 * Runs unchanged under Deno (`deno bench`) and Bun (`bench/bun_runner.ts`), so it uses only
 * `node:` APIs besides the pools themselves.
 *
 * @module
 */

import { appendFileSync } from "node:fs";
import process from "node:process";
import pg from "pg";
import postgres from "postgres";
import { Pool, type PoolConfig } from "../mod.ts";
import { tryBunDriver } from "./bun_driver.ts";
import {
  type BenchEndpoint,
  benchEndpoints,
  ENDPOINTS_VAR,
  EXTRA_VAR,
  NOTE_PREFIX,
  ROUND_VAR,
} from "./names.ts";

async function resolveEndpoints(): Promise<BenchEndpoint[]> {
  const fromEnv = process.env[ENDPOINTS_VAR];
  if (fromEnv) return JSON.parse(fromEnv);
  // Run standalone (`deno bench -A bench/`): start a cluster for this process. The harness
  // stops it from its own exit hook.
  const { startCluster } = await import("../tests/harness/cluster.ts");
  return benchEndpoints(await startCluster({ replicas: 1 }));
}

/** Primary first, then one replica. */
export const endpoints: BenchEndpoint[] = await resolveEndpoints();
if (endpoints.length < 2) {
  throw new Error(`benchmarks need a primary and a replica (got ${endpoints.length} endpoint(s))`);
}

const APP = "pgdbpool-bench";

/** The slice of npm pg's API used here: pg ships no types and @types/pg is no dependency. */
export interface PgClient {
  query(text: string): Promise<unknown>;
  release(): void;
}

/** A pg-pool, as far as the benches use it. */
export interface PgPool {
  connect(): Promise<PgClient>;
  query(text: string): Promise<unknown>;
  end(): Promise<void>;
  on(event: "error", listener: () => void): unknown;
}

const PgPoolClass = (pg as { Pool: new (config: Record<string, unknown>) => PgPool }).Pool;
const noop = () => {};

// ---------------------------------------------------------------------------------------------
// End of run. Deno fires "unload" per bench module and cannot await there; the Bun runner calls
// finish() after mitata is done and can await pool shutdown.

const exitHooks: Array<() => void> = [];
const cleanups: Array<() => Promise<unknown>> = [];
/** Whether this process runs under Bun (the Bun runner, or a Bun subprocess of bench/run.ts). */
export const isBun = "Bun" in globalThis;

/** Runs `fn` (synchronously) when the benches of this process are done. */
export function atExit(fn: () => void): void {
  if (isBun) exitHooks.push(fn);
  else globalThis.addEventListener("unload", fn);
}

/** Closes a pool or client at the end of a Bun run (Deno exits with sockets open, harmlessly). */
function cleanup(fn: () => Promise<unknown>): void {
  cleanups.push(fn);
}

/** Called by the Bun runner once every bench has run. */
export async function finish(): Promise<void> {
  for (const fn of exitHooks.splice(0)) fn();
  const timeout = new Promise((resolve) => setTimeout(resolve, 5000));
  await Promise.race([Promise.allSettled(cleanups.splice(0).map((fn) => fn())), timeout]);
}

/**
 * Stores a note for the report under `NOTE_PREFIX + key` (a contender that was skipped, and
 * why); bench/run.ts keeps the notes of the last round.
 */
export function recordNote(key: string, note: string): void {
  const file = process.env[EXTRA_VAR];
  const line = JSON.stringify({ key: NOTE_PREFIX + key, note });
  if (file) appendFileSync(file, line + "\n");
  else console.error(line);
}

/** Stores one extra figure for bench/run.ts (or prints it when run standalone). */
export function recordExtra(key: string, value: Record<string, number>): void {
  const file = process.env[EXTRA_VAR];
  const line = JSON.stringify({ key, value });
  if (file) appendFileSync(file, line + "\n");
  else console.error(line);
}

/**
 * Registers one group's benches: in the given order on odd rounds, reversed on even ones, so
 * that neither side of a comparison always runs first (warmer server, JIT state, drift).
 */
export function benchGroup(defs: Deno.BenchDefinition[]): void {
  const round = Number(process.env[ROUND_VAR] ?? "1");
  for (const def of round % 2 === 0 ? [...defs].reverse() : defs) Deno.bench(def);
}

// ---------------------------------------------------------------------------------------------
// The contenders, built with matching settings: no idle timeout, no lifetime, same host.

/** A pgdbpool pool over the bench endpoints. */
export function ourPool(type: "threaded" | "non-threaded", groups: PoolConfig["groups"]): Pool {
  const pool = new Pool({ type, db: endpoints, groups, application_name: APP });
  cleanup(() => pool.close());
  return pool;
}

/**
 * A pgdbpool pool with the Bun-native driver (`driver: "bun"`), or why there is none: the
 * option is tried at the pool level, then on every endpoint, and a `ConfigError` from both
 * means this build of the pool does not have the driver yet. Outside Bun there is never one.
 */
export function ourBunPool(
  type: "threaded" | "non-threaded",
  groups: PoolConfig["groups"],
): Pool | string {
  const pool = tryBunDriver({ type, db: endpoints, groups, application_name: APP });
  if (typeof pool !== "string") cleanup(() => pool.close());
  return pool;
}

/** Opens all `n` connections of `group` (concurrent checkouts, one query each). */
export async function warmGroup(pool: Pool, group: string, n: number): Promise<void> {
  const handlers = Array.from({ length: n }, () => pool.handler(group));
  try {
    await Promise.all(handlers.map((db) => db.query("SELECT 1")));
  } finally {
    for (const db of handlers) db.release();
  }
}

/**
 * A postgres.js client of `max` connections to one endpoint, as its users open one, with no exit
 * cleanup (see `rawClient`).
 */
export function postgresJs(max: number, endpoint = 0): postgres.Sql {
  const e = endpoints[endpoint];
  return postgres({
    host: e.host,
    port: e.port,
    database: e.name,
    username: e.user,
    password: e.pass,
    max,
    idle_timeout: 0,
    max_lifetime: null,
    onnotice: noop,
    connection: { application_name: APP },
  });
}

/** A raw postgres.js client of `max` connections to one endpoint, ended at exit. */
export function rawClient(max: number, endpoint = 0): postgres.Sql {
  const sql = postgresJs(max, endpoint);
  cleanup(() => sql.end({ timeout: 1 }));
  return sql;
}

/** Opens all `n` connections of a postgres.js client (concurrent reserves, one query each). */
export async function warmRaw(sql: postgres.Sql, n: number): Promise<void> {
  const reserved = await Promise.all(Array.from({ length: n }, () => sql.reserve()));
  try {
    await Promise.all(reserved.map((r) => r.unsafe("SELECT 1")));
  } finally {
    for (const r of reserved) r.release();
  }
}

/**
 * A pg-pool (npm pg) of `max` connections to one endpoint, otherwise default settings; the
 * caller ends it (bench/contenders.ts opens and closes its own).
 */
export function newPgPool(max: number, endpoint = 0): PgPool {
  const e = endpoints[endpoint];
  const pool = new PgPoolClass({
    host: e.host,
    port: e.port,
    database: e.name,
    user: e.user,
    password: e.pass,
    max,
    application_name: APP,
  });
  pool.on("error", noop); // an idle client's socket error must not crash the run
  return pool;
}

/** `newPgPool`, ended at the end of the run. */
export function pgPool(max: number, endpoint = 0): PgPool {
  const pool = newPgPool(max, endpoint);
  cleanup(() => pool.end());
  return pool;
}

/** Opens all `n` connections of a pg-pool. */
export async function warmPg(pool: PgPool, n: number): Promise<void> {
  const clients = await Promise.all(Array.from({ length: n }, () => pool.connect()));
  try {
    await Promise.all(clients.map((c) => c.query("SELECT 1")));
  } finally {
    for (const c of clients) c.release();
  }
}

/** Bun's built-in PostgreSQL client (`Bun.SQL`), as far as the benches use it. */
export interface BunSql {
  (strings: TemplateStringsArray, ...values: unknown[]): Promise<unknown[]>;
  unsafe(text: string, params?: unknown[]): Promise<unknown[]>;
  reserve(): Promise<BunSql & { release(): void }>;
  close(options?: { timeout?: number }): Promise<void>;
}

/** The `SQL` class of the running Bun, or undefined elsewhere. */
export function bunSqlClass(): (new (options: Record<string, unknown>) => BunSql) | undefined {
  return (globalThis as { Bun?: { SQL?: new (options: Record<string, unknown>) => BunSql } })
    .Bun?.SQL;
}

/** A Bun `SQL` client of `max` connections to one endpoint (Bun only), settings as the others. */
export function bunSql(max: number, endpoint = 0): BunSql {
  const SQL = bunSqlClass();
  if (SQL === undefined) throw new Error("Bun's SQL is only available under Bun");
  const e = endpoints[endpoint];
  const sql = new SQL({
    hostname: e.host,
    port: e.port,
    database: e.name,
    username: e.user,
    password: e.pass,
    max,
    idleTimeout: 0,
    maxLifetime: 0,
    connection: { application_name: APP },
  });
  cleanup(() => sql.close({ timeout: 1 }));
  return sql;
}

/** Opens all `n` connections of a Bun `SQL` client (concurrent reserves, one query each). */
export async function warmBunSql(sql: BunSql, n: number): Promise<void> {
  const reserved = await Promise.all(Array.from({ length: n }, () => sql.reserve()));
  try {
    await Promise.all(reserved.map((r) => r`SELECT 1`));
  } finally {
    for (const r of reserved) r.release();
  }
}

// ---------------------------------------------------------------------------------------------
// Load shapes.

/** Runs `total` calls of `fn` spread over `callers` concurrent sequential loops. */
export async function callers(
  count: number,
  total: number,
  fn: () => Promise<unknown>,
): Promise<void> {
  const per = total / count;
  const loop = async () => {
    for (let i = 0; i < per; i++) await fn();
  };
  await Promise.all(Array.from({ length: count }, loop));
}

/**
 * Checkout waits in nanoseconds, per bench iteration. The first iterations (JIT warm-up) are
 * left out of the summary; the runners' later warm-up iterations run the same steady load and
 * count (how many there are differs between Deno and mitata and with the machine's speed).
 */
export class WaitLog {
  static readonly SKIP = 3;
  #iterations: number[][] = [];
  #current: number[] = [];

  /** Adds one wait, given `performance.now()` before and after. */
  add(startMs: number, endMs: number): void {
    this.#current.push((endMs - startMs) * 1e6);
  }

  /** Closes the current iteration. */
  endIteration(): void {
    this.#iterations.push(this.#current);
    this.#current = [];
  }

  /** p50/p99/max of the waits after warm-up, and how many there were. */
  summary(): Record<string, number> {
    const its = this.#iterations;
    // Keep at least half of the iterations when a runner did few.
    const skip = Math.min(WaitLog.SKIP, Math.floor(its.length / 2));
    const waits = its.slice(skip).flat().sort((a, b) => a - b);
    return {
      waits: waits.length,
      iterations: its.length - skip,
      wait_p50_ns: percentile(waits, 0.5),
      wait_p99_ns: percentile(waits, 0.99),
      wait_max_ns: waits.length > 0 ? waits[waits.length - 1] : NaN,
    };
  }
}

/** Nearest-rank percentile of an ascending array; NaN when empty. */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil(sorted.length * p) - 1)];
}
