/**
 * `deno task bench`: starts one cluster (primary + 1 streaming replica), runs the bench files
 * under Deno (`deno bench --json`) and under Bun (`bench/bun_runner.ts`) against it, alternating
 * runtimes for a few rounds, writes `bench/results/deno.json` and `bun.json`, then the report.
 *
 * Runs under Deno or Bun (node: APIs only). Options: `--rounds N` (default 3), `--only deno|bun`.
 * Binaries: $DENO_BIN / $BUN_BIN, else node_modules/.bin, else PATH.
 *
 * @module
 */

import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import { dirname, join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { startCluster } from "../tests/harness/cluster.ts";
import { benchEndpoints, ENDPOINTS_VAR, EXTRA_VAR, ROUND_VAR } from "./names.ts";
import type { BenchRecord } from "./bun_runner.ts";
import { writeReport } from "./report.ts";
import type { Machine, RuntimeResults } from "./report.ts";

const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
const ROOT = dirname(BENCH_DIR);
const RESULTS_DIR = join(BENCH_DIR, "results");
/** One runtime's whole suite; a hang (a pool bug) must fail the run, not stall it. */
const SUITE_TIMEOUT_MS = 5 * 60_000;

type Runtime = "deno" | "bun";

function binary(name: Runtime): string {
  const fromEnv = process.env[`${name.toUpperCase()}_BIN`];
  if (fromEnv) return fromEnv;
  // Running under that runtime already: use the very same binary.
  if (name === "deno" && "Deno" in globalThis) return process.execPath;
  if (name === "bun" && "Bun" in globalThis) return process.execPath;
  const local = join(ROOT, "node_modules", ".bin", name);
  return existsSync(local) ? local : name;
}

/** Runs a command, returns its stdout; stderr streams through so progress is visible. */
function exec(cmd: string, args: string[], env: Record<string, string>): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: ROOT,
      env: { ...process.env, ...env, NO_COLOR: "1" },
      stdio: ["ignore", "pipe", "inherit"],
    });
    const chunks: Buffer[] = [];
    child.stdout.on("data", (c: Buffer) => chunks.push(c));
    const timer = setTimeout(() => child.kill("SIGKILL"), SUITE_TIMEOUT_MS);
    child.on("error", reject);
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      const out = Buffer.concat(chunks).toString("utf8");
      if (code === 0) resolve(out);
      else {reject(
          new Error(`${cmd} ${args.join(" ")} exited with ${code ?? signal}\n${out.slice(-2000)}`),
        );}
    });
  });
}

interface SuiteRun {
  runtime: string;
  benches: BenchRecord[];
  extra: Record<string, Record<string, number>>;
}

async function runSuite(
  runtime: Runtime,
  env: Record<string, string>,
  tmp: string,
): Promise<SuiteRun> {
  const extraFile = join(tmp, `${runtime}-${Date.now()}.extra.jsonl`);
  const vars = { ...env, [EXTRA_VAR]: extraFile };
  let parsed: { runtime: string; benches: BenchRecord[] };
  if (runtime === "deno") {
    const out = await exec(binary("deno"), ["bench", "-A", "--json", "bench/"], vars);
    parsed = JSON.parse(out);
  } else {
    const outFile = join(tmp, `bun-${Date.now()}.json`);
    await exec(binary("bun"), ["bench/bun_runner.ts", "--out", outFile], vars);
    parsed = JSON.parse(readFileSync(outFile, "utf8"));
  }
  const failed = parsed.benches.filter((b) => b.results.some((r) => !("ok" in r)));
  if (failed.length > 0) {
    throw new Error(`${runtime}: failed benches: ${failed.map((b) => b.name).join(", ")}`);
  }
  const extra: SuiteRun["extra"] = {};
  if (existsSync(extraFile)) {
    for (const line of readFileSync(extraFile, "utf8").split("\n")) {
      if (line.trim() === "") continue;
      const { key, value } = JSON.parse(line);
      extra[key] = value;
    }
  }
  return { runtime: parsed.runtime, benches: parsed.benches, extra };
}

/** Folds rounds into one record per bench: `results` gets one entry per round. */
function merge(runs: SuiteRun[]): Pick<RuntimeResults, "benches" | "extra"> {
  const benches = new Map<string, RuntimeResults["benches"][number]>();
  const extra: RuntimeResults["extra"] = {};
  for (const run of runs) {
    for (const b of run.benches) {
      const key = `${b.group ?? ""}\u0000${b.name}`;
      const entry = benches.get(key) ??
        { group: b.group, name: b.name, baseline: b.baseline, results: [] };
      // Keep the fields the report uses; deno's extras (p995, highPrecision...) add nothing.
      for (const r of b.results) {
        if ("ok" in r) {
          const { n, min, max, avg, p75, p99 } = r.ok;
          entry.results.push({ ok: { n, min, max, avg, p75, p99 } });
        }
      }
      benches.set(key, entry);
    }
    for (const [key, value] of Object.entries(run.extra)) (extra[key] ??= []).push(value);
  }
  return { benches: [...benches.values()], extra };
}

function packageVersion(name: string): string {
  try {
    const file = join(ROOT, "node_modules", name, "package.json");
    return JSON.parse(readFileSync(file, "utf8")).version;
  } catch {
    return "?";
  }
}

function machine(): Machine {
  const cpus = os.cpus();
  return {
    cpu: cpus[0]?.model.trim() ?? "unknown",
    cores: cpus.length,
    os: `${os.type()} ${os.release()} ${os.arch()}`,
    memory_gb: Math.round(os.totalmem() / 2 ** 30),
    loadavg_before: os.loadavg()[0],
    loadavg_after: NaN,
  };
}

function parseArgs(argv: string[]): { rounds: number; only: Runtime[] } {
  let rounds = 3;
  let only: Runtime[] = ["deno", "bun"];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--rounds") rounds = Number(argv[++i]);
    else if (argv[i] === "--only") only = [argv[++i] as Runtime];
    else throw new Error(`unknown argument ${argv[i]} (use --rounds N, --only deno|bun)`);
  }
  if (!Number.isInteger(rounds) || rounds < 1) {
    throw new Error("--rounds must be a positive integer");
  }
  return { rounds, only };
}

async function main(): Promise<void> {
  const { rounds, only } = parseArgs(process.argv.slice(2));
  const started = performance.now();
  const date = new Date().toISOString();
  const host = machine();
  const cluster = await startCluster({ replicas: 1 });
  const tmp = mkdtempSync(join(os.tmpdir(), "pgdbpool-bench-"));
  const runs: Record<Runtime, SuiteRun[]> = { deno: [], bun: [] };
  let postgresql = "?";
  try {
    postgresql = (await cluster.primary.query("SHOW server_version"))[0].server_version;
    const env = { [ENDPOINTS_VAR]: JSON.stringify(benchEndpoints(cluster)) };
    for (let round = 1; round <= rounds; round++) {
      for (const runtime of only) {
        console.error(`\n== round ${round}/${rounds}: ${runtime} ==`);
        runs[runtime].push(await runSuite(runtime, { ...env, [ROUND_VAR]: String(round) }, tmp));
      }
    }
  } finally {
    await cluster.close();
    rmSync(tmp, { recursive: true, force: true });
  }
  host.loadavg_after = os.loadavg()[0];
  mkdirSync(RESULTS_DIR, { recursive: true });
  for (const runtime of only) {
    const [name, version] = runs[runtime][0].runtime.split(" ")[0].split("/");
    const results: RuntimeResults = {
      runtime: { name: name.toLowerCase(), version },
      machine: host,
      date,
      rounds,
      versions: {
        postgresql,
        "postgres.js": packageVersion("postgres"),
        pg: packageVersion("pg"),
        mitata: packageVersion("mitata"),
      },
      ...merge(runs[runtime]),
    };
    writeFileSync(join(RESULTS_DIR, `${runtime}.json`), JSON.stringify(results, null, 2) + "\n");
  }
  const { markdown } = writeReport(RESULTS_DIR);
  console.log(markdown);
  console.error(`bench: done in ${((performance.now() - started) / 1000).toFixed(0)} s`);
}

if (import.meta.main) await main();
