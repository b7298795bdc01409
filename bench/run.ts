/**
 * `deno task bench`: starts one cluster (primary + 1 streaming replica) and measures, under
 * Deno and under Bun against it:
 *
 * 1. micro-benchmarks (`checkout`, `query`, `contention`: the `*_bench.ts` files, run by
 *    `deno bench --json` and by bench/bun_runner.ts), alternating runtimes for `--rounds`
 *    rounds (default 7);
 * 2. `scaling`: throughput and p99 against callers and `connection_count` (bench/scaling.ts);
 * 3. `sustained`: throughput of one long-lived instance per contender, window after window
 *    (bench/sustained.ts);
 * 4. `memory`: client memory per connection and per idle pool (bench/memory.ts);
 * 5. `http`: TechEmpower-style apps under wrk (bench/http/), pool against the direct driver;
 *
 * then writes `bench/results/<runtime>.json` and the report (bench/report.ts): results/report.md,
 * the charts, and the generated sections of bench/README.md and the project README.
 *
 * Options: `--rounds N`; `--only LIST` (comma-separated suites and/or runtimes, e.g.
 * `--only query,bun`; repeatable); `--skip-http`; `--http-seconds S` (10), `--http-warmup S`
 * (5, per run: every HTTP run starts its app afresh); `--scaling-seconds S` (1),
 * `--scaling-rounds N` (min(rounds, 3));
 * `--sustained-windows N` (12), `--sustained-statements N` (40000 per window);
 * `--memory-repeats N` (3); `--quick` (1 round and short durations: a smoke run whose figures
 * mean nothing).
 * Sections not run keep the figures of the previous run in the results files, and the report
 * says when each was measured. Runs under Deno or Bun (node: APIs only). Binaries: $DENO_BIN /
 * $BUN_BIN, else node_modules/.bin, else PATH.
 *
 * @module
 */

import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import { dirname, join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { startCluster } from "../tests/harness/cluster.ts";
import {
  benchEndpoints,
  ENDPOINTS_VAR,
  EXTRA_VAR,
  MEMORY_CONNECTIONS,
  MEMORY_IDLE,
  NOTE_PREFIX,
  OPS_PER_ITERATION,
  ROUND_VAR,
} from "./names.ts";
import type { BenchRecord } from "./bun_runner.ts";
import { type HttpResults, killApps, runHttp, seed, wrkMissing } from "./http/run.ts";
import type { MemoryResults, MemorySample } from "./memory.ts";
import { type CpuSnapshot, cpuSnapshot, foreignShare } from "./cpu.ts";
import {
  describePinning,
  onClientCpus,
  type Pinning,
  pinningPlan,
  pinProcessTrees,
} from "./cpu_pinning.ts";
import {
  IDLE_LOAD,
  type Machine,
  type RuntimeResults,
  type SectionLoad,
  writeReport,
} from "./report.ts";
import type { ScalingResults } from "./scaling.ts";
import type { SustainedResults } from "./sustained.ts";

const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
const ROOT = dirname(BENCH_DIR);
const RESULTS_DIR = join(BENCH_DIR, "results");
/** One runtime's suite; a hang (a pool bug) must fail the run, not stall it. */
const SUITE_TIMEOUT_MS = 15 * 60_000;

type Runtime = "deno" | "bun";
const RUNTIMES: Runtime[] = ["deno", "bun"];
/** Micro-benchmark suites and their files. */
const MICRO: Record<string, string> = {
  checkout: "bench/checkout_bench.ts",
  query: "bench/query_bench.ts",
  contention: "bench/contention_bench.ts",
};
const SUITES = [...Object.keys(MICRO), "scaling", "sustained", "memory", "http"];

function binary(name: Runtime): string {
  const fromEnv = process.env[`${name.toUpperCase()}_BIN`];
  if (fromEnv) return fromEnv;
  // Running under that runtime already: use the very same binary.
  if (name === "deno" && "Deno" in globalThis) return process.execPath;
  if (name === "bun" && "Bun" in globalThis) return process.execPath;
  const local = join(ROOT, "node_modules", ".bin", name);
  return existsSync(local) ? local : name;
}

/**
 * Placement of the micro, scaling, sustained and memory sections (bench/cpu_pinning.ts); set
 * by main.
 */
let pinning: Pinning | string = "not pinned";

/** Children still running, killed if the run is interrupted. */
const children = new Set<ReturnType<typeof spawn>>();

/** Runs a command, returns its stdout; stderr streams through so progress is visible. */
function exec(cmd: string, args: string[], env: Record<string, string>): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: ROOT,
      env: { ...process.env, ...env, NO_COLOR: "1" },
      stdio: ["ignore", "pipe", "inherit"],
    });
    children.add(child);
    child.once("exit", () => children.delete(child));
    const chunks: Buffer[] = [];
    child.stdout.on("data", (c: Buffer) => chunks.push(c));
    const timer = setTimeout(() => child.kill("SIGKILL"), SUITE_TIMEOUT_MS);
    child.on("error", reject);
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      const out = Buffer.concat(chunks).toString("utf8");
      if (code === 0) resolve(out);
      else {
        reject(
          new Error(`${cmd} ${args.join(" ")} exited with ${code ?? signal}\n${out.slice(-2000)}`),
        );
      }
    });
  });
}

/** `deno run -A <flags> <file>` or `bun <file>`. */
function script(runtime: Runtime, file: string, denoFlags: string[] = []): [string, string[]] {
  return runtime === "deno"
    ? [binary("deno"), ["run", "-A", ...denoFlags, file]]
    : [binary("bun"), [file]];
}

interface SuiteRun {
  runtime: string;
  benches: BenchRecord[];
  extra: Record<string, Record<string, number>>;
  notes: Record<string, string>;
}

async function runMicro(
  runtime: Runtime,
  files: string[],
  env: Record<string, string>,
  tmp: string,
): Promise<SuiteRun> {
  const extraFile = join(tmp, `${runtime}-${Date.now()}.extra.jsonl`);
  const vars = { ...env, [EXTRA_VAR]: extraFile };
  let parsed: { runtime: string; benches: BenchRecord[] };
  if (runtime === "deno") {
    const out = await exec(
      ...onClientCpus(pinning, binary("deno"), ["bench", "-A", "--json", ...files]),
      vars,
    );
    parsed = JSON.parse(out);
  } else {
    const outFile = join(tmp, `bun-${Date.now()}.json`);
    await exec(
      ...onClientCpus(pinning, binary("bun"), ["bench/bun_runner.ts", "--out", outFile, ...files]),
      vars,
    );
    parsed = JSON.parse(readFileSync(outFile, "utf8"));
  }
  const failed = parsed.benches.filter((b) => b.results.some((r) => !("ok" in r)));
  if (failed.length > 0) {
    throw new Error(`${runtime}: failed benches: ${failed.map((b) => b.name).join(", ")}`);
  }
  const extra: SuiteRun["extra"] = {};
  const notes: SuiteRun["notes"] = {};
  if (existsSync(extraFile)) {
    for (const line of readFileSync(extraFile, "utf8").split("\n")) {
      if (line.trim() === "") continue;
      const { key, value, note } = JSON.parse(line);
      if (typeof note === "string") notes[key.slice(NOTE_PREFIX.length)] = note;
      else extra[key] = value;
    }
  }
  return { runtime: parsed.runtime, benches: parsed.benches, extra, notes };
}

/** Folds rounds into one record per bench: `results` gets one entry per round. */
function merge(runs: SuiteRun[]): Pick<RuntimeResults, "benches" | "extra" | "notes"> {
  const benches = new Map<string, RuntimeResults["benches"][number]>();
  const extra: RuntimeResults["extra"] = {};
  const notes: Record<string, string> = {};
  for (const [i, run] of runs.entries()) {
    for (const b of run.benches) {
      const key = `${b.group ?? ""}\u0000${b.name}`;
      const ops = OPS_PER_ITERATION[b.group ?? ""];
      const entry = benches.get(key) ??
        {
          group: b.group,
          name: b.name,
          baseline: b.baseline,
          results: [],
          ...(ops === undefined ? {} : { ops }),
        };
      // Keep the fields the report uses; deno's extras (p995, highPrecision...) add nothing.
      for (const r of b.results) {
        if ("ok" in r) {
          const { n, min, max, avg, p75, p99 } = r.ok;
          entry.results.push({ ok: { n, min, max, avg, p75, p99 }, round: i + 1 });
        }
      }
      benches.set(key, entry);
    }
    for (const [key, value] of Object.entries(run.extra)) (extra[key] ??= []).push(value);
  }
  // The last round says what is missing now: a contender that appeared mid-run (the pool
  // learnt an option while the run went on) has figures and no note.
  const last = runs.at(-1)?.notes ?? {};
  for (const [name, note] of Object.entries(last)) {
    if (![...benches.values()].some((b) => b.name === name)) notes[name] = note;
  }
  return { benches: [...benches.values()], extra, notes };
}

/**
 * Runs a load runner (bench/scaling.ts, bench/sustained.ts) on the client CPUs with `--out` and
 * its options, and reads back the JSON it wrote.
 */
async function runLoad<T>(
  runtime: Runtime,
  env: Record<string, string>,
  tmp: string,
  suite: "scaling" | "sustained",
  options: Record<string, number>,
): Promise<T> {
  const out = join(tmp, `${suite}-${runtime}.json`);
  const [cmd, args] = script(runtime, `bench/${suite}.ts`);
  const flags = Object.entries(options).flatMap(([name, v]) => [`--${name}`, String(v)]);
  await exec(...onClientCpus(pinning, cmd, [...args, "--out", out, ...flags]), env);
  return JSON.parse(readFileSync(out, "utf8"));
}

async function runMemory(
  runtime: Runtime,
  env: Record<string, string>,
  repeats: number,
): Promise<MemoryResults> {
  const [cmd, args] = onClientCpus(
    pinning,
    ...script(runtime, "bench/memory.ts", ["--v8-flags=--expose-gc"]),
  );
  const lastLine = (s: string) => s.trim().split("\n").pop()!;
  const { names, notes } = JSON.parse(lastLine(await exec(cmd, [...args, "--list"], env)));
  const entries: MemoryResults["entries"] = [];
  for (const kind of ["connection", "idle"] as const) {
    for (const name of names as string[]) {
      const samples: MemorySample[] = [];
      for (let i = 0; i < repeats; i++) {
        const out = await exec(cmd, [...args, "--kind", kind, "--name", name], env);
        samples.push(JSON.parse(lastLine(out)));
      }
      entries.push({ name, kind, samples });
      console.error(
        `memory ${runtime} ${name} ${kind}: heap ${
          samples.map((s) => (s.heap_bytes / 1024).toFixed(1)).join("/")
        } KiB`,
      );
    }
  }
  return { connections: MEMORY_CONNECTIONS, idle: MEMORY_IDLE, entries, notes };
}

function packageVersion(name: string): string {
  try {
    const file = join(ROOT, "node_modules", name, "package.json");
    return JSON.parse(readFileSync(file, "utf8")).version;
  } catch {
    return "?";
  }
}

/** The postmaster's pid from its data directory, or 0. */
function postmasterPid(server: { dataDir: string }): number {
  try {
    return Number(readFileSync(join(server.dataDir, "postmaster.pid"), "utf8").split("\n")[0]);
  } catch {
    return 0;
  }
}

/** The pool's commit, and whether its source had uncommitted changes when measured. */
function sourceVersion(): string {
  try {
    const git = (args: string[]) => execFileSync("git", args, { cwd: ROOT, encoding: "utf8" });
    const sha = git(["rev-parse", "--short", "HEAD"]).trim();
    const dirty = git(["status", "--porcelain", "--", "src", "mod.ts"]).trim() !== "";
    return dirty ? `${sha} + uncommitted changes in src/` : sha;
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

/** How long a run waits at most for the load average of earlier work to decay. */
const SETTLE_MS = 180_000;

/**
 * Waits until the 1-minute load average is below `IDLE_LOAD` (up to `SETTLE_MS`): work that
 * ended just before the run (a build, a test suite) keeps the average up for a minute or two,
 * and a run started then is labelled noisy, however quiet the machine has become. Work still
 * running keeps it up, and the run goes on after the wait all the same, labelled.
 */
async function settle(): Promise<void> {
  const until = performance.now() + SETTLE_MS;
  let told = false;
  while (os.loadavg()[0] > IDLE_LOAD && performance.now() < until) {
    if (!told) {
      console.error(
        `bench: load average ${os.loadavg()[0].toFixed(2)}: waiting up to ${
          SETTLE_MS / 1000
        } s for it to fall below ${IDLE_LOAD}`,
      );
      told = true;
    }
    await new Promise((resolve) => setTimeout(resolve, 5000));
  }
}

/** Parsed command line. */
export interface Options {
  rounds: number;
  runtimes: Runtime[];
  suites: string[];
  httpSeconds: number;
  httpWarmup: number;
  scalingSeconds: number;
  scalingRounds: number;
  sustainedWindows: number;
  sustainedStatements: number;
  memoryRepeats: number;
  quick: boolean;
}

export function parseArgs(argv: string[]): Options {
  let rounds = 7;
  let quick = false;
  const only: string[] = [];
  let skipHttp = false;
  let httpSeconds = 10, httpWarmup = 5, scalingSeconds = 1, memoryRepeats = 3;
  let scalingRounds: number | undefined;
  let sustainedWindows = 12, sustainedStatements = 40_000;
  const num = (i: number, what: string) => {
    const v = Number(argv[i]);
    if (!(v > 0)) throw new Error(`${what} must be a positive number (got ${argv[i]})`);
    return v;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--rounds") rounds = num(++i, a);
    else if (a === "--only") only.push(...argv[++i].split(",").map((s) => s.trim()));
    else if (a === "--skip-http") skipHttp = true;
    else if (a === "--http-seconds") httpSeconds = num(++i, a);
    else if (a === "--http-warmup") httpWarmup = num(++i, a);
    else if (a === "--scaling-seconds") scalingSeconds = num(++i, a);
    else if (a === "--scaling-rounds") scalingRounds = num(++i, a);
    else if (a === "--sustained-windows") sustainedWindows = num(++i, a);
    else if (a === "--sustained-statements") sustainedStatements = num(++i, a);
    else if (a === "--memory-repeats") memoryRepeats = num(++i, a);
    else if (a === "--quick") quick = true;
    else {
      throw new Error(
        `unknown argument ${a} (use --rounds N, --only ${[...SUITES, ...RUNTIMES].join("|")}` +
          `[,...], --skip-http, --http-seconds S, --http-warmup S, --scaling-seconds S, ` +
          `--scaling-rounds N, --sustained-windows N, --sustained-statements N, ` +
          `--memory-repeats N, --quick)`,
      );
    }
  }
  for (const o of only) {
    if (!SUITES.includes(o) && !RUNTIMES.includes(o as Runtime)) {
      throw new Error(`--only: unknown suite or runtime ${o} (${[...SUITES, ...RUNTIMES]})`);
    }
  }
  if (quick) {
    rounds = 1;
    httpSeconds = 1;
    httpWarmup = 1;
    scalingSeconds = 0.3;
    scalingRounds = 1;
    sustainedWindows = 3;
    sustainedStatements = 2000;
    memoryRepeats = 1;
  }
  if (!Number.isInteger(rounds)) throw new Error("--rounds must be a positive integer");
  const onlyRuntimes = only.filter((o) => RUNTIMES.includes(o as Runtime)) as Runtime[];
  const onlySuites = only.filter((o) => SUITES.includes(o));
  const suites = (onlySuites.length > 0 ? onlySuites : SUITES)
    .filter((s) => !(skipHttp && s === "http"));
  return {
    rounds,
    runtimes: onlyRuntimes.length > 0 ? onlyRuntimes : RUNTIMES,
    suites,
    httpSeconds,
    httpWarmup,
    scalingSeconds,
    scalingRounds: Math.round(scalingRounds ?? Math.min(rounds, 3)),
    sustainedWindows: Math.round(sustainedWindows),
    sustainedStatements: Math.round(sustainedStatements),
    memoryRepeats: Math.round(memoryRepeats),
    quick,
  };
}

/** Everything measured for one runtime in this run. */
interface Measured {
  micro: SuiteRun[];
  scaling?: ScalingResults;
  sustained?: SustainedResults;
  memory?: MemoryResults;
  http?: HttpResults;
  runtime?: string;
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  const missing = o.suites.includes("http") ? wrkMissing() : undefined;
  // Everything else still runs; the report shows the HTTP targets as not run.
  if (missing) console.error(`bench: ${missing}; skipping the HTTP suite`);
  const http = o.suites.includes("http") && missing === undefined;
  const microFiles = o.suites.filter((s) => s in MICRO).map((s) => MICRO[s]);
  const started = performance.now();
  await settle();
  const date = new Date().toISOString();
  const source = sourceVersion();
  const host = machine();
  if (host.loadavg_before > IDLE_LOAD) {
    console.error(
      `bench: load average ${host.loadavg_before.toFixed(2)}: other work is running, the ` +
        "figures will be noisy",
    );
  }
  const cluster = await startCluster({ replicas: 1 });
  const postmasters = () =>
    cluster.servers.map((s) => s.postmasterPid()).filter((pid): pid is number => pid !== null);
  pinning = pinningPlan();
  if (typeof pinning !== "string") pinProcessTrees(postmasters(), pinning.server);
  host.pinning = describePinning(pinning);
  console.error(`bench: ${host.pinning}`);
  // Interrupted (Ctrl-C, SIGTERM): no server, app or bench process may outlive the run.
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    process.once(signal, async () => {
      console.error(`bench: ${signal}: stopping`);
      for (const child of children) child.kill("SIGKILL");
      killApps();
      await cluster.close();
      process.exit(130);
    });
  }
  // While each section runs: the 1-minute load average, and the CPU other work took (all but
  // this process's tree and the servers'). A section measured next to other work is named as
  // such in the report.
  const roots = [process.pid, ...cluster.servers.map(postmasterPid).filter((p) => p > 0)];
  const load: Record<string, SectionLoad> = {};
  let section = "";
  let first: CpuSnapshot | undefined;
  let last: CpuSnapshot | undefined;
  const sample = () => {
    if (section === "") return;
    const l = (load[section] ??= { before: host.loadavg_before, max: 0 });
    l.max = Math.max(l.max, os.loadavg()[0]);
    const now = cpuSnapshot(roots);
    if (now && first && last) {
      l.foreign_cpu = foreignShare(first, now);
      l.foreign_cpu_max = Math.max(l.foreign_cpu_max ?? 0, foreignShare(last, now));
    }
    last = now;
  };
  const sampler = setInterval(sample, 5000);
  const enter = (name: string) => {
    sample();
    section = name;
    first = last = cpuSnapshot(roots);
    sample();
  };
  const tmp = mkdtempSync(join(os.tmpdir(), "pgdbpool-bench-"));
  const measured: Record<Runtime, Measured> = { deno: { micro: [] }, bun: { micro: [] } };
  let postgresql = "?";
  try {
    postgresql = (await cluster.primary.query("SHOW server_version"))[0].server_version;
    const endpointsJson = JSON.stringify(benchEndpoints(cluster));
    const env = { [ENDPOINTS_VAR]: endpointsJson };
    if (microFiles.length > 0) {
      enter("micro");
      for (let round = 1; round <= o.rounds; round++) {
        for (const runtime of o.runtimes) {
          console.error(`\n== round ${round}/${o.rounds}: ${runtime} ==`);
          const run = await runMicro(
            runtime,
            microFiles,
            { ...env, [ROUND_VAR]: String(round) },
            tmp,
          );
          measured[runtime].micro.push(run);
        }
      }
    }
    if (o.suites.includes("scaling")) {
      enter("scaling");
      for (const runtime of o.runtimes) {
        console.error(`\n== scaling: ${runtime} ==`);
        measured[runtime].scaling = await runLoad<ScalingResults>(runtime, env, tmp, "scaling", {
          rounds: o.scalingRounds,
          seconds: o.scalingSeconds,
        });
      }
    }
    if (o.suites.includes("sustained")) {
      enter("sustained");
      for (const runtime of o.runtimes) {
        console.error(`\n== sustained: ${runtime} ==`);
        measured[runtime].sustained = await runLoad<SustainedResults>(
          runtime,
          env,
          tmp,
          "sustained",
          { windows: o.sustainedWindows, statements: o.sustainedStatements },
        );
      }
    }
    if (o.suites.includes("memory")) {
      enter("memory");
      for (const runtime of o.runtimes) {
        console.error(`\n== memory: ${runtime} ==`);
        measured[runtime].memory = await runMemory(runtime, env, o.memoryRepeats);
      }
    }
    if (http) {
      // The app, wrk and PostgreSQL share every core here (see bench/cpu_pinning.ts).
      if (typeof pinning !== "string") pinProcessTrees(postmasters(), pinning.all);
      enter("http");
      await seed((text) => cluster.primary.query(text));
      for (const runtime of o.runtimes) {
        console.error(`\n== http: ${runtime} ==`);
        const [cmd, args] = script(runtime, "bench/memory.ts");
        const probe = JSON.parse(
          (await exec(cmd, [...args, "--list"], env)).trim().split("\n").pop()!,
        );
        measured[runtime].http = await runHttp({
          runtime,
          binary: binary(runtime),
          root: ROOT,
          endpointsJson,
          seconds: o.httpSeconds,
          warmupSeconds: o.httpWarmup,
          bunDriver: (probe.names as string[]).some((n) => n.includes("bun driver")),
        });
      }
    }
    for (const runtime of o.runtimes) {
      const [cmd] = script(runtime, "");
      measured[runtime].runtime = (await exec(cmd, ["--version"], {})).split("\n")[0];
    }
    enter("");
  } finally {
    clearInterval(sampler);
    await cluster.close();
    rmSync(tmp, { recursive: true, force: true });
  }
  host.loadavg_after = os.loadavg()[0];
  mkdirSync(RESULTS_DIR, { recursive: true });
  for (const runtime of o.runtimes) {
    writeResults(runtime, measured[runtime], {
      host,
      date,
      rounds: o.rounds,
      postgresql,
      quick: o.quick,
      load,
      source,
    });
  }
  const { markdown } = writeReport(RESULTS_DIR);
  console.log(markdown);
  console.error(`bench: done in ${((performance.now() - started) / 1000).toFixed(0)} s`);
}

/** Writes results/<runtime>.json, keeping the sections this run did not measure. */
function writeResults(
  runtime: Runtime,
  m: Measured,
  run: {
    host: Machine;
    date: string;
    rounds: number;
    postgresql: string;
    quick: boolean;
    load: Record<string, SectionLoad>;
    source: string;
  },
): void {
  const file = join(RESULTS_DIR, `${runtime}.json`);
  const old: RuntimeResults | undefined = existsSync(file)
    ? JSON.parse(readFileSync(file, "utf8"))
    : undefined;
  // "deno 2.9.6 (stable, ...)" / "1.4.5"
  const version = /(\d+\.\d+\.\d+\S*)/.exec(m.runtime ?? "")?.[1] ?? "?";
  const measuredAt: Record<string, string> = { ...(old?.measured ?? {}) };
  const micro = m.micro.length > 0 ? merge(m.micro) : undefined;
  if (micro) measuredAt.micro = run.date;
  for (const s of ["scaling", "sustained", "memory", "http"] as const) {
    if (m[s]) measuredAt[s] = run.date;
  }
  // Benches and extras of groups this run did not measure are kept from the old file.
  const groups = new Set(micro?.benches.map((b) => b.group) ?? []);
  const keptBenches = (old?.benches ?? []).filter((b) => !groups.has(b.group));
  const keptExtra = Object.fromEntries(
    Object.entries(old?.extra ?? {}).filter(([k]) =>
      ![...groups].some((g) => k.startsWith(`${g} ::`))
    ),
  );
  const notes = {
    ...(micro ? {} : old?.notes ?? {}),
    ...(micro?.notes ?? {}),
    ...(m.scaling?.notes ?? {}),
    ...(m.sustained?.notes ?? {}),
    ...(m.memory?.notes ?? {}),
  };
  const results: RuntimeResults = {
    runtime: { name: runtime, version },
    machine: run.host,
    date: run.date,
    rounds: micro ? run.rounds : old?.rounds ?? run.rounds,
    versions: {
      pgdbpool: run.source,
      postgresql: run.postgresql,
      "postgres.js": packageVersion("postgres"),
      pg: packageVersion("pg"),
      mitata: packageVersion("mitata"),
    },
    benches: [...(micro?.benches ?? []), ...keptBenches],
    extra: { ...(micro?.extra ?? {}), ...keptExtra },
    notes,
    scaling: m.scaling ?? old?.scaling,
    sustained: m.sustained ?? old?.sustained,
    memory: m.memory ?? old?.memory,
    http: m.http ?? old?.http,
    measured: measuredAt,
    load: {
      ...Object.fromEntries(
        Object.entries(old?.load ?? {}).filter(([k]) => measuredAt[k] !== run.date),
      ),
      ...Object.fromEntries(Object.entries(run.load).filter(([k]) => measuredAt[k] === run.date)),
    },
    ...(run.quick ? { quick: true } : {}),
  };
  writeFileSync(file, JSON.stringify(results, null, 2) + "\n");
}

if (import.meta.main) await main();
