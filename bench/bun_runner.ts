/**
 * Runs the `Deno.bench` files under Bun, which has no bench runner: a `Deno.bench` shim collects
 * the definitions, mitata measures them, and the results are written in the shape of
 * `deno bench --json` (times in ns) so the report reads both runtimes alike.
 *
 * Usage: `bun bench/bun_runner.ts [--out results.json] [file_bench.ts ...]` (default: every
 * `*_bench.ts` next to this file, in name order, as `deno bench` does).
 *
 * @module
 */

import { readdirSync, writeFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import process from "node:process";
import { fileURLToPath, pathToFileURL } from "node:url";
import { measure } from "mitata";
import type { Stats } from "./report.ts";

/** The part of Deno's bench context the bench files may use. */
interface BenchContext {
  readonly name: string;
  readonly origin: string;
  start(): void;
  end(): void;
}

/** A bench definition, as `Deno.bench` takes it. */
interface BenchDef {
  name: string;
  fn: (b: BenchContext) => void | Promise<void>;
  group?: string;
  baseline?: boolean;
  ignore?: boolean;
  only?: boolean;
  origin: string;
}

/** One bench in the shape of `deno bench --json`. */
export interface BenchRecord {
  origin: string;
  group?: string;
  name: string;
  baseline: boolean;
  results: Array<{ ok: Stats } | { failed: string }>;
}

const defs: BenchDef[] = [];
let origin = "";

/** `Deno.bench`'s overloads: (def), (name, fn), (name, options, fn), (fn), (options, fn). */
function bench(a: unknown, b?: unknown, c?: unknown): void {
  type Fn = BenchDef["fn"];
  type Opts = Partial<BenchDef>;
  let def: Opts;
  if (typeof a === "string") {
    def = typeof b === "function"
      ? { name: a, fn: b as Fn }
      : { ...(b as Opts), name: a, fn: c as Fn };
  } else if (typeof a === "function") {
    def = typeof b === "function" ? { ...(a as Opts), fn: b as Fn } : { name: a.name, fn: a as Fn };
  } else {
    def = typeof b === "function" ? { ...(a as Opts), fn: b as Fn } : { ...(a as Opts) };
  }
  if (typeof def.fn !== "function") throw new TypeError("Deno.bench: missing bench function");
  defs.push({ ...def, name: def.name || def.fn.name, fn: def.fn, origin });
}

async function load(files: string[]): Promise<void> {
  const g = globalThis as { Deno?: unknown };
  g.Deno = { bench };
  try {
    for (const file of files) {
      origin = pathToFileURL(file).href;
      await import(origin);
    }
  } finally {
    // Only module evaluation needs the shim; libraries must not take Bun for Deno afterwards.
    delete g.Deno;
  }
}

async function runOne(def: BenchDef): Promise<BenchRecord> {
  const context: BenchContext = { name: def.name, origin: def.origin, start() {}, end() {} };
  const record = { origin: def.origin, group: def.group, name: def.name, baseline: !!def.baseline };
  try {
    // The wrapper keeps sync benches sync (mitata batches them) and async ones awaited.
    const s = await measure(() => def.fn(context));
    const stats = {
      n: s.samples.length,
      min: s.min,
      max: s.max,
      avg: s.avg,
      p75: s.p75,
      p99: s.p99,
    };
    return { ...record, results: [{ ok: stats }] };
  } catch (err) {
    return { ...record, results: [{ failed: String((err as Error)?.stack ?? err) }] };
  }
}

function parseArgs(argv: string[]): { out: string | undefined; files: string[] } {
  let out: string | undefined;
  const files: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--out") out = argv[++i];
    else files.push(resolve(argv[i]));
  }
  if (files.length === 0) {
    const dir = dirname(fileURLToPath(import.meta.url));
    for (const f of readdirSync(dir).filter((f) => f.endsWith("_bench.ts")).sort()) {
      files.push(resolve(dir, f));
    }
  }
  return { out, files };
}

async function main(): Promise<void> {
  const { out, files } = parseArgs(process.argv.slice(2));
  await load(files);
  const only = defs.some((d) => d.only);
  const benches: BenchRecord[] = [];
  for (const def of defs) {
    if (def.ignore || (only && !def.only)) continue;
    const record = await runOne(def);
    const r = record.results[0];
    const shown = "ok" in r ? `${(r.ok.avg / 1000).toFixed(3)} us/iter` : "FAILED";
    console.error(`bun bench ${def.group ? `[${def.group}] ` : ""}${def.name}: ${shown}`);
    benches.push(record);
  }
  // Extra figures (contention waits) are written by the bench files' exit hooks.
  const { finish } = await import("./env.ts");
  await finish();
  const bun = (globalThis as { Bun?: { version: string } }).Bun;
  const json = JSON.stringify(
    {
      version: 1,
      runtime: `Bun/${bun?.version ?? "?"} ${process.platform}-${process.arch}`,
      benches,
    },
    null,
    2,
  );
  if (out) writeFileSync(out, json + "\n");
  else console.log(json);
  // Pools were closed by finish(); anything left (a stuck socket) must not keep us alive.
  process.exit(benches.some((b) => "failed" in b.results[0]) ? 1 : 0);
}

if (import.meta.main) await main();
