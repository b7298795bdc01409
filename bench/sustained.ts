/**
 * Sustained load: `SELECT 1` throughput of one long-lived instance per contender, window after
 * window, under more concurrent callers than it has connections (100 callers, 10 connections by
 * default). The scaling sweep opens a fresh instance for every point, a client's best case;
 * this shows whether a client keeps its speed as it ages, as an application's client does.
 *
 * Each contender (postgres.js tagged templates, pgdbpool `pool.query`, npm `pg`'s
 * `Pool.query()`, and on Bun, Bun's `SQL` and `pool.query` on the Bun driver) opens one fresh,
 * warm instance; its callers then loop without a pause through an untimed warm-up and every
 * window, and the statements per second of each window are recorded. The callers never stop
 * between windows: a client whose internal queues empty whenever the load drops would be reset
 * by a pause, and a real application under steady load gives it none. Before the windows and
 * again after them and a pause of a second, as many callers as connections run a calm batch on
 * the same instance: whether what the load did to a client stays once the load is gone.
 * Contenders run one after
 * another, in the order listed on Deno and in reverse on Bun, so that no contender runs first
 * (or last) on both runtimes.
 *
 * Run by bench/run.ts under each runtime: `deno run -A bench/sustained.ts --out f.json` or
 * `bun bench/sustained.ts --out f.json` (`--windows N` (12), `--statements N` per window
 * (40000), `--callers N` (100)).
 *
 * @module
 */

import { writeFileSync } from "node:fs";
import process from "node:process";
import { type Contender, contenders, pgQuery } from "./contenders.ts";
import { callers, isBun } from "./env.ts";
import { NAME } from "./names.ts";

/** Connections of every instance. */
export const CONNECTIONS = 10;

/** One contender's instance, aged through every window. */
export interface SustainedRun {
  name: string;
  /** Statements per second, one entry per window, in order. */
  ops_per_s: number[];
  /** Statements/s at `calm_callers` on the fresh instance, before the windows. */
  calm_before_ops_per_s?: number;
  /** The same after the windows and a pause of `pause_ms`: whether the instance recovers. */
  calm_after_ops_per_s?: number;
}

/** What bench/sustained.ts writes. */
export interface SustainedResults {
  windows: number;
  /** Statements per window. */
  statements: number;
  /** Untimed statements run on the same instance before the first window. */
  warmup: number;
  callers: number;
  connections: number;
  /** Callers of the calm runs before and after the windows (no more than the connections). */
  calm_callers?: number;
  /** Statements of each calm run. */
  calm_statements?: number;
  /** Idle time between the last window and the calm run after it. */
  pause_ms?: number;
  /** The contenders in the order they ran. */
  runs: SustainedRun[];
  notes: Record<string, string>;
}

/** Shape of one aging run. */
export interface Load {
  callers: number;
  warmup: number;
  statements: number;
  windows: number;
}

/**
 * Runs `callers` loops of `call` without a pause until `warmup + windows * statements`
 * statements have completed; returns statements/s per window, each window timed from the
 * completion that ended the previous one. Callers still in flight when the last window ends
 * finish their statement uncounted, so every window ran at full concurrency.
 */
export async function age(call: () => Promise<unknown>, load: Load): Promise<number[]> {
  const { callers, warmup, statements, windows } = load;
  const total = warmup + windows * statements;
  const rates: number[] = [];
  let done = 0;
  let mark = performance.now();
  const loop = async () => {
    while (done < total) {
      await call();
      done++;
      if (done > total) return;
      const timed = done - warmup;
      if (timed === 0) mark = performance.now();
      else if (timed > 0 && timed % statements === 0) {
        const now = performance.now();
        rates.push(statements / ((now - mark) / 1000));
        mark = now;
      }
    }
  };
  await Promise.all(Array.from({ length: callers }, loop));
  return rates;
}

/** Idle time before the calm run that follows the windows. */
export const PAUSE_MS = 1000;

/** Statements/s of `count` callers that run `statements` statements in all. */
async function calmRate(
  call: () => Promise<unknown>,
  count: number,
  statements: number,
): Promise<number> {
  const start = performance.now();
  await callers(count, statements, call);
  return statements / ((performance.now() - start) / 1000);
}

/**
 * Opens one instance of `c`, measures it calm (as many callers as connections), ages it through
 * every window, lets it idle and measures it calm again, then closes it.
 */
async function run(c: Contender, load: Load, calm: number): Promise<SustainedRun> {
  const instance = await c.open(CONNECTIONS);
  try {
    // Untimed: the JIT warms up at the calm load, which ages no contender.
    await calmRate(instance.call, CONNECTIONS, calm);
    const before = await calmRate(instance.call, CONNECTIONS, calm);
    const rates = await age(instance.call, load);
    await new Promise((resolve) => setTimeout(resolve, PAUSE_MS));
    const after = await calmRate(instance.call, CONNECTIONS, calm);
    const k = (r: number | undefined) => `${((r ?? NaN) / 1000).toFixed(1)}k/s`;
    console.error(
      `sustained ${c.name}: ${k(rates[0])} first window, ${k(rates.at(-1))} last ` +
        `(${rates.map((r) => (r / 1000).toFixed(0)).join(" ")}); calm ${k(before)} before, ` +
        `${k(after)} after`,
    );
    return {
      name: c.name,
      ops_per_s: rates,
      calm_before_ops_per_s: before,
      calm_after_ops_per_s: after,
    };
  } finally {
    await instance.close();
  }
}

/** The contenders of this runtime that have no handler (a checkout per statement). */
function sustainedContenders(): { list: Contender[]; notes: Record<string, string> } {
  const all = contenders();
  const handlers: string[] = [NAME.handler, NAME.handlerBun];
  const list = [...all.list.filter((c) => !handlers.includes(c.name)), pgQuery];
  const notes = Object.fromEntries(
    Object.entries(all.notes).filter(([name]) => !handlers.includes(name)),
  );
  return { list, notes };
}

function parseArgs(argv: string[]) {
  let out: string | undefined;
  let windows = 12, statements = 40_000, callers = 100;
  const count = (i: number, what: string) => {
    const v = Number(argv[i]);
    if (!(Number.isInteger(v) && v >= 1)) throw new Error(`${what}: positive integer`);
    return v;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--out") out = argv[++i];
    else if (a === "--windows") windows = count(++i, a);
    else if (a === "--statements") statements = count(++i, a);
    else if (a === "--callers") callers = count(++i, a);
    else {
      throw new Error(
        `unknown argument ${a} (use --out F, --windows N, --statements N, --callers N)`,
      );
    }
  }
  return { out, windows, statements, callers };
}

async function main(): Promise<void> {
  const { out, windows, statements, callers } = parseArgs(process.argv.slice(2));
  // A tenth of a window: the JIT's warm-up stays out of the first window, and an instance
  // that slows down as it ages has aged by little when the first window starts.
  const load = { callers, warmup: Math.ceil(statements / 10), statements, windows };
  const calm = Math.ceil(statements / 4);
  const { list, notes } = sustainedContenders();
  const runs: SustainedRun[] = [];
  for (const c of isBun ? [...list].reverse() : list) runs.push(await run(c, load, calm));
  const results: SustainedResults = {
    ...load,
    connections: CONNECTIONS,
    calm_callers: CONNECTIONS,
    calm_statements: calm,
    pause_ms: PAUSE_MS,
    runs,
    notes,
  };
  const json = JSON.stringify(results, null, 2) + "\n";
  if (out) writeFileSync(out, json);
  else console.log(json);
  process.exit(0);
}

if (import.meta.main) await main();
