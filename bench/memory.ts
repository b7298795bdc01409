/**
 * Client-side memory: what one more pooled connection costs (heap and RSS, 50 connections
 * opened and used once, divided by 50), and what an idle pool costs (200 pools constructed,
 * nothing opened, divided by 200), for pgdbpool and for the clients it is compared with.
 *
 * One measurement per process, so nothing a previous one allocated (or freed late) is counted:
 * bench/run.ts runs `deno run -A --v8-flags=--expose-gc bench/memory.ts --kind K --name N` and
 * `bun bench/memory.ts ...` a few times each and keeps the median. `--list` prints the
 * contenders of this runtime (and the notes of those left out) as JSON.
 *
 * Before the baseline, one instance of the same kind is made and used: code loading, JIT and
 * the driver's one-off caches are not per-connection costs and stay out of the delta.
 *
 * @module
 */

import process from "node:process";
import { Pool } from "../mod.ts";
import { tryBunDriver } from "./bun_driver.ts";
import { bunSqlClient, poolConfig } from "./contenders.ts";
import { postgresJs, warmBunSql, warmGroup, warmRaw } from "./env.ts";
import { MEMORY_CONNECTIONS, MEMORY_IDLE, NAME } from "./names.ts";

/** One measurement (bytes). */
export interface MemorySample {
  heap_bytes: number;
  rss_bytes: number;
}

/** What the report gets: per contender, per kind, one sample per repetition. */
export interface MemoryResults {
  connections: number;
  idle: number;
  entries: Array<{ name: string; kind: "connection" | "idle"; samples: MemorySample[] }>;
  notes: Record<string, string>;
}

interface Subject {
  name: string;
  /** Opens `n` connections, used once each; resolves to what keeps them alive. */
  open(n: number): Promise<unknown>;
  /** Constructs an instance that opens nothing. */
  idle(): unknown;
}

const POOL = "pgdbpool";
const POOL_BUN = `pgdbpool${" (bun driver)"}`;

function subjects(): { list: Subject[]; notes: Record<string, string> } {
  const notes: Record<string, string> = {};
  const list: Subject[] = [
    {
      name: POOL,
      async open(n) {
        const pool = new Pool(poolConfig(n));
        await warmGroup(pool, "q", n);
        return pool;
      },
      idle: () => new Pool(poolConfig(10)),
    },
    {
      name: NAME.tagged.split(" ")[0], // "postgres.js"
      async open(n) {
        const sql = postgresJs(n);
        await warmRaw(sql, n);
        return sql;
      },
      idle: () => postgresJs(10),
    },
  ];
  if (bunSqlClient(1) !== undefined) {
    list.push({
      name: "Bun SQL",
      async open(n) {
        const sql = bunSqlClient(n)!;
        await warmBunSql(sql, n);
        return sql;
      },
      idle: () => bunSqlClient(10),
    });
    const probe = tryBunDriver(poolConfig(1));
    if (typeof probe === "string") notes[POOL_BUN] = probe;
    else {
      void probe.close();
      list.push({
        name: POOL_BUN,
        async open(n) {
          const pool = tryBunDriver(poolConfig(n)) as Pool;
          await warmGroup(pool, "q", n);
          return pool;
        },
        idle: () => tryBunDriver(poolConfig(10)),
      });
    }
  }
  return { list, notes };
}

async function collect(): Promise<void> {
  const g = globalThis as { gc?: () => void; Bun?: { gc(force: boolean): void } };
  for (let i = 0; i < 4; i++) {
    if (g.Bun) g.Bun.gc(true);
    else if (g.gc) g.gc();
    else throw new Error("no gc(): run Deno with --v8-flags=--expose-gc");
    // Let finalizers and microtasks that free memory run between collections.
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

async function usage(): Promise<MemorySample> {
  await collect();
  const m = process.memoryUsage();
  return { heap_bytes: m.heapUsed, rss_bytes: m.rss };
}

async function measure(subject: Subject, kind: "connection" | "idle"): Promise<MemorySample> {
  const keep: unknown[] = [];
  // Warm-up instance: loads and compiles everything one instance needs.
  keep.push(kind === "connection" ? await subject.open(2) : subject.idle());
  const before = await usage();
  if (kind === "connection") keep.push(await subject.open(MEMORY_CONNECTIONS));
  else for (let i = 0; i < MEMORY_IDLE; i++) keep.push(subject.idle());
  const after = await usage();
  const n = kind === "connection" ? MEMORY_CONNECTIONS : MEMORY_IDLE;
  // Still referenced here, so nothing measured was collected before `after`.
  if (keep.length === 0) throw new Error("unreachable");
  return {
    heap_bytes: (after.heap_bytes - before.heap_bytes) / n,
    rss_bytes: (after.rss_bytes - before.rss_bytes) / n,
  };
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const { list, notes } = subjects();
  if (args[0] === "--list") {
    console.log(JSON.stringify({ names: list.map((s) => s.name), notes }));
    process.exit(0);
  }
  let kind: "connection" | "idle" | undefined;
  let name: string | undefined;
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "--kind") kind = args[++i] as typeof kind;
    else if (args[i] === "--name") name = args[++i];
    else throw new Error(`unknown argument ${args[i]} (use --list, or --kind K --name N)`);
  }
  const subject = list.find((s) => s.name === name);
  if (subject === undefined || (kind !== "connection" && kind !== "idle")) {
    throw new Error(`--kind connection|idle --name one of: ${list.map((s) => s.name).join(", ")}`);
  }
  console.log(JSON.stringify(await measure(subject, kind)));
  // Open sockets would keep the process alive; the figures are taken.
  process.exit(0);
}

if (import.meta.main) await main();
