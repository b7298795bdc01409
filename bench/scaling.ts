/**
 * Scaling curves: `SELECT 1` throughput and per-query p99 latency against the number of
 * concurrent callers (1 to 1000, 10 connections) and against `connection_count` (1 to 64, 256
 * callers), for pgdbpool (handler and `pool.query`), postgres.js, and on Bun, Bun's `SQL`.
 *
 * Every point opens a fresh instance of each contender, warms it, runs its callers for a fixed
 * time and closes it; contenders alternate within a point, in a rotated order each round, and
 * the report takes medians over rounds. Latency is measured per query (`performance.now()`
 * around each await, the same cost for every contender), not per batch.
 *
 * Run by bench/run.ts under each runtime: `deno run -A bench/scaling.ts --out f.json` or
 * `bun bench/scaling.ts --out f.json` (`--rounds N`, `--seconds S`, `--quick`).
 *
 * @module
 */

import { writeFileSync } from "node:fs";
import process from "node:process";
import { type Contender, contenders } from "./contenders.ts";
import { percentile } from "./env.ts";

/** One measured point of one contender in one round. */
export interface ScalingSample {
  ops_per_s: number;
  p50_ns: number;
  p99_ns: number;
  queries: number;
}

/** One point of a sweep for one contender: a sample per round. */
export interface ScalingPoint {
  sweep: "callers" | "connections";
  callers: number;
  connections: number;
  name: string;
  rounds: ScalingSample[];
}

/** What bench/scaling.ts writes. */
export interface ScalingResults {
  seconds: number;
  rounds: number;
  points: ScalingPoint[];
  notes: Record<string, string>;
}

export const CALLERS = [1, 10, 100, 1000];
export const CONNECTIONS = [1, 4, 16, 64];
/** Connections of the callers sweep, callers of the connections sweep. */
export const FIXED_CONNECTIONS = 10;
export const FIXED_CALLERS = 256;

/** Runs `callers` loops of `call` for `ms`; latencies per query. */
async function drive(
  call: () => Promise<unknown>,
  callers: number,
  ms: number,
): Promise<ScalingSample> {
  const latencies: number[] = [];
  const start = performance.now();
  const deadline = start + ms;
  const loop = async () => {
    for (;;) {
      const t0 = performance.now();
      if (t0 >= deadline) return;
      await call();
      latencies.push(performance.now() - t0);
    }
  };
  await Promise.all(Array.from({ length: callers }, loop));
  const elapsed = performance.now() - start;
  latencies.sort((a, b) => a - b);
  return {
    ops_per_s: latencies.length / (elapsed / 1000),
    p50_ns: percentile(latencies, 0.5) * 1e6,
    p99_ns: percentile(latencies, 0.99) * 1e6,
    queries: latencies.length,
  };
}

async function point(
  c: Contender,
  callers: number,
  connections: number,
  seconds: number,
): Promise<ScalingSample> {
  const instance = await c.open(connections);
  try {
    // Untimed warm-up at the same load: JIT, server caches, the contender's queues.
    await drive(instance.call, callers, Math.min(300, seconds * 300));
    return await drive(instance.call, callers, seconds * 1000);
  } finally {
    await instance.close();
  }
}

function parseArgs(argv: string[]) {
  let out: string | undefined;
  let rounds = 3;
  let seconds = 1;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--out") out = argv[++i];
    else if (argv[i] === "--rounds") rounds = Number(argv[++i]);
    else if (argv[i] === "--seconds") seconds = Number(argv[++i]);
    else throw new Error(`unknown argument ${argv[i]} (use --out F, --rounds N, --seconds S)`);
  }
  if (!(Number.isInteger(rounds) && rounds >= 1)) throw new Error("--rounds: positive integer");
  if (!(seconds > 0)) throw new Error("--seconds: positive number");
  return { out, rounds, seconds };
}

async function main(): Promise<void> {
  const { out, rounds, seconds } = parseArgs(process.argv.slice(2));
  const { list, notes } = contenders();
  const shapes = [
    ...CALLERS.map((n) => ({
      sweep: "callers" as const,
      callers: n,
      connections: FIXED_CONNECTIONS,
    })),
    ...CONNECTIONS.map((n) => ({
      sweep: "connections" as const,
      callers: FIXED_CALLERS,
      connections: n,
    })),
  ];
  const points = new Map<string, ScalingPoint>();
  for (let round = 0; round < rounds; round++) {
    for (const [k, shape] of shapes.entries()) {
      // Rotate the order per point and round so no contender always runs first or last.
      const shift = (round + k) % list.length;
      const order = [...list.slice(shift), ...list.slice(0, shift)];
      for (const c of order) {
        const key = `${shape.sweep}/${shape.callers}/${shape.connections}/${c.name}`;
        const entry = points.get(key) ?? { ...shape, name: c.name, rounds: [] };
        const sample = await point(c, shape.callers, shape.connections, seconds);
        entry.rounds.push(sample);
        points.set(key, entry);
        console.error(
          `scaling ${round + 1}/${rounds} ${shape.sweep} callers=${shape.callers} ` +
            `connections=${shape.connections} ${c.name}: ${sample.ops_per_s.toFixed(0)}/s, ` +
            `p99 ${(sample.p99_ns / 1e6).toFixed(2)} ms`,
        );
      }
    }
  }
  const results: ScalingResults = { seconds, rounds, points: [...points.values()], notes };
  const json = JSON.stringify(results, null, 2) + "\n";
  if (out) writeFileSync(out, json);
  else console.log(json);
  process.exit(0);
}

if (import.meta.main) await main();
