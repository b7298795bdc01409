/**
 * Turns bench/results/<runtime>.json into a markdown report and SVG charts:
 *
 * - targets of issue 11 with pass/fail, per runtime,
 * - how every contender is called,
 * - end-to-end HTTP (pool / direct driver per route and connection count) and its chart,
 * - scaling curves (throughput and p99 against callers and against `connection_count`),
 * - sustained load (throughput of one long-lived instance per contender, window after window),
 * - client memory per pooled connection and per idle pool,
 * - every micro-benchmark figure and the contention waits (full report only).
 *
 * `buildReport` is pure; `writeReport` does the file I/O, and running this file
 * (`deno run -A bench/report.ts`) calls it. Every ratio of the micro benchmarks is computed
 * per round from two benches that ran side by side, then the median over rounds is reported
 * with the range.
 *
 * @module
 */

import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { BATCH, extraKey, GROUP, HOW, NAME, OURS } from "./names.ts";
import type { HttpResults } from "./http/run.ts";
import { VARIANTS } from "./http/tfb.ts";
import type { MemoryResults } from "./memory.ts";
import type { ScalingResults } from "./scaling.ts";
import type { SustainedResults } from "./sustained.ts";

/** Statistics of one bench in one round, in ns per iteration (`deno bench --json`'s shape). */
export interface Stats {
  n: number;
  min: number;
  max: number;
  avg: number;
  p75: number;
  p99: number;
}

/** One bench; `results` holds one entry per round it ran in. */
export interface BenchEntry {
  group?: string;
  name: string;
  baseline: boolean;
  /** `round` is 1-based; without it, entries are rounds 1, 2, ... in order. */
  results: Array<{ ok: Stats; round?: number }>;
  /** Operations each iteration ran (`OPS_PER_ITERATION`); 1 when absent. */
  ops?: number;
}

/** The machine a run happened on. */
export interface Machine {
  cpu: string;
  cores: number;
  os: string;
  memory_gb: number;
  /** 1-minute load average when the run started and ended: other load skews every figure. */
  loadavg_before: number;
  loadavg_after: number;
  /** Where the micro, scaling, sustained and memory sections ran (bench/cpu_pinning.ts). */
  pinning?: string;
}

/** The content of bench/results/<runtime>.json. */
export interface RuntimeResults {
  runtime: { name: string; version: string };
  machine: Machine;
  /** ISO 8601 start of the run. */
  date: string;
  rounds: number;
  /** PostgreSQL and library versions. */
  versions: Record<string, string>;
  benches: BenchEntry[];
  /** Figures deno bench has no field for (contention waits), keyed by `extraKey`, per round. */
  extra: Record<string, Array<Record<string, number>>>;
  /** Contenders left out, and why (e.g. the pool does not accept `driver: "bun"` yet). */
  notes?: Record<string, string>;
  scaling?: ScalingResults;
  /** Absent in results written before the suite existed. */
  sustained?: SustainedResults;
  memory?: MemoryResults;
  http?: HttpResults;
  /** Load while each section was measured (sections as in `measured`). */
  load?: Record<string, SectionLoad>;
  /** A `--quick` smoke run: durations too short for the figures to mean anything. */
  quick?: boolean;
  /**
   * When each section was measured (`micro`, `scaling`, `sustained`, `memory`, `http`): a run
   * of a subset keeps the other sections of an earlier run, and the report says so.
   */
  measured?: Record<string, string>;
}

/** How a target came out. */
export type Verdict = "pass" | "fail" | "skipped" | "n/a";

/** One target of the issue, evaluated for one runtime. */
export interface TargetCheck {
  id: string;
  runtime: string;
  /** Median over rounds of the per-round ratio; NaN when not measured. */
  ratio: number;
  /** Per-round ratios (or per-cell, for the HTTP target). */
  rounds: number[];
  pass: boolean;
  verdict: Verdict;
  /** Extra context, e.g. which entry was slowest, or why it was skipped. */
  note?: string;
}

/** What `buildReport` produces: the markdown and every chart, by file name. */
export interface Report {
  markdown: string;
  /** The checkout chart (also in `charts["checkout.svg"]`). */
  svg: string;
  charts: Record<string, string>;
  targets: TargetCheck[];
}

/** Options of `buildReport`. */
export interface ReportOptions {
  /** Directory the markdown links charts in, relative to the markdown; default "" (next to it). */
  chartDir?: string;
  /** Leaves out the micro-benchmark detail tables (for the project README). */
  compact?: boolean;
}

interface TargetSpec {
  id: string;
  label: string;
  required: string;
  better: "higher" | "lower";
  limit: number;
  /** Only this runtime has it (others show n/a). */
  only?: string;
}

/** Issue 11's targets first, then the earlier ones that still hold the pool to account. */
export const TARGETS: TargetSpec[] = [
  {
    id: "checkout",
    label: "warm checkout + release with `using` vs postgres.js `reserve()` + `release()` " +
      "(speed-up, slowest pgdbpool entry)",
    required: ">= 10x",
    better: "higher",
    limit: 10,
  },
  {
    id: "seq-handler",
    label: "postgres.js driver, 1 caller: handler vs postgres.js tagged template",
    required: ">= 0.95x",
    better: "higher",
    limit: 0.95,
  },
  {
    id: "seq-query",
    label: "postgres.js driver, 1 caller: `pool.query` vs postgres.js tagged template",
    required: ">= 0.95x",
    better: "higher",
    limit: 0.95,
  },
  {
    id: "c100-query",
    label: "postgres.js driver, 100 callers: `pool.query` vs postgres.js tagged template",
    required: ">= 1.00x",
    better: "higher",
    limit: 1,
  },
  {
    id: "bun-seq-query",
    label: "Bun driver, 1 caller: `pool.query` vs Bun `SQL` tagged template",
    required: ">= 0.90x",
    better: "higher",
    limit: 0.9,
    only: "bun",
  },
  {
    id: "bun-c100-query",
    label: "Bun driver, 100 callers: `pool.query` vs Bun `SQL` tagged template",
    required: ">= 0.90x",
    better: "higher",
    limit: 0.9,
    only: "bun",
  },
  {
    id: "bun-seq-handler",
    label: "Bun driver, 1 caller: handler vs Bun `SQL` tagged template",
    required: ">= 0.90x",
    better: "higher",
    limit: 0.9,
    only: "bun",
  },
  {
    id: "http",
    label: "HTTP, pool (postgres.js driver) vs direct driver: req/s, worst route and " +
      "connection count",
    required: ">= 0.97x",
    better: "higher",
    limit: 0.97,
  },
  {
    id: "http-bun",
    label: "HTTP, pool (Bun driver) vs Bun `SQL`: req/s, worst route and connection count",
    required: ">= 0.97x",
    better: "higher",
    limit: 0.97,
    only: "bun",
  },
  {
    id: "tx",
    label: "transaction time vs postgres.js `sql.begin()` (earlier target)",
    required: "<= 1.00x",
    better: "lower",
    limit: 1,
  },
  {
    id: "p99",
    label: "contention: p99 checkout wait vs pg-pool (earlier target)",
    required: "<= 1.00x",
    better: "lower",
    limit: 1,
  },
];

// ---------------------------------------------------------------------------------------------
// Numbers.

export function median(xs: readonly number[]): number {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function mean(xs: readonly number[]): number {
  return xs.length === 0 ? NaN : xs.reduce((a, b) => a + b, 0) / xs.length;
}

function find(r: RuntimeResults, group: string, name: string): BenchEntry | undefined {
  return r.benches.find((b) => b.group === group && b.name === name);
}

/**
 * Per-round avg of a bench, indexed by round - 1 ([] when it is missing). A bench that ran in
 * only some rounds (a contender that appeared mid-run) leaves holes, so rounds still pair up.
 */
function avgs(b: BenchEntry | undefined): number[] {
  const out: number[] = [];
  const per = perIteration(b);
  b?.results.forEach((x, i) => (out[(x.round ?? i + 1) - 1] = x.ok.avg / per));
  return out;
}

/** Operations per iteration of a bench (as recorded by its run): times are shown per operation. */
function perIteration(b: BenchEntry | undefined): number {
  return b?.ops ?? 1;
}

/** Per-round `num / den` over the rounds both ran in (side by side). */
function perRound(num: readonly number[], den: readonly number[]): number[] {
  const out: number[] = [];
  for (let i = 0; i < Math.min(num.length, den.length); i++) {
    if (num[i] !== undefined && den[i] !== undefined) out.push(num[i] / den[i]);
  }
  return out;
}

function spec(id: string): TargetSpec {
  return TARGETS.find((t) => t.id === id)!;
}

function check(id: string, runtime: string, rounds: number[], note?: string): TargetCheck {
  const s = spec(id);
  const ratio = median(rounds);
  const pass = Number.isFinite(ratio) &&
    (s.better === "higher" ? ratio >= s.limit : ratio <= s.limit);
  return { id, runtime, ratio, rounds, pass, verdict: pass ? "pass" : "fail", note };
}

function notMeasured(id: string, runtime: string, verdict: Verdict, note?: string): TargetCheck {
  return { id, runtime, ratio: NaN, rounds: [], pass: false, verdict, note };
}

/** Throughput ratio `contender / baseline` of a group, per round (time per iteration). */
function speedup(r: RuntimeResults, group: string, contender: string, baseline: string) {
  return perRound(avgs(find(r, group, baseline)), avgs(find(r, group, contender)));
}

/** Mean requests/s of an HTTP cell. */
function httpRate(h: HttpResults, route: string, connections: number, variant: string): number {
  const cell = h.cells.find((c) =>
    c.route === route && c.connections === connections && c.variant === variant
  );
  return cell ? mean(cell.samples.map((s) => s.rps)) : NaN;
}

function httpP99(h: HttpResults, route: string, connections: number, variant: string): number {
  const cell = h.cells.find((c) =>
    c.route === route && c.connections === connections && c.variant === variant
  );
  return cell ? mean(cell.samples.map((s) => s.p99_ns)) : NaN;
}

/** Mean app CPU time per request of an HTTP cell, in ns; NaN when the runs did not record it. */
function httpCpu(h: HttpResults, route: string, connections: number, variant: string): number {
  const cell = h.cells.find((c) =>
    c.route === route && c.connections === connections && c.variant === variant
  );
  const us = cell?.samples.map((s) => s.app_cpu_us);
  if (us === undefined || us.length === 0 || us.some((x) => x === undefined)) return NaN;
  return mean(us as number[]) * 1000;
}

function httpErrors(h: HttpResults, variant: string): number {
  return h.cells.filter((c) => c.variant === variant)
    .reduce((n, c) => n + c.samples.reduce((m, s) => m + s.errors, 0), 0);
}

/** Routes and connection counts of an HTTP run, in the order they ran. */
function httpGrid(h: HttpResults): Array<{ route: string; connections: number }> {
  const seen = new Map<string, { route: string; connections: number }>();
  for (const c of h.cells) seen.set(`${c.route} ${c.connections}`, c);
  return [...seen.values()];
}

/** Per-cell pool/direct ratios of an HTTP run. */
function httpRatios(h: HttpResults, variant: string): Array<{ cell: string; ratio: number }> {
  return httpGrid(h).map(({ route, connections }) => ({
    cell: `${route}, ${connections} connections`,
    ratio: httpRate(h, route, connections, variant) / httpRate(h, route, connections, "direct"),
  }));
}

/** Evaluates every target for one runtime's results. */
export function evaluateTargets(r: RuntimeResults): TargetCheck[] {
  const rt = runtimeLabel(r);
  const isBun = r.runtime.name === "bun";
  const notes = r.notes ?? {};
  const out: TargetCheck[] = [];

  // Checkout: the slowest pgdbpool entry decides.
  const reserve = avgs(find(r, GROUP.checkout, NAME.reserve));
  let worst: { name: string; rounds: number[] } | undefined;
  for (const b of r.benches) {
    if (b.group !== GROUP.checkout || !b.name.startsWith(OURS) || b.name === NAME.noUsing) {
      continue;
    }
    const rounds = perRound(reserve, avgs(b));
    if (worst === undefined || !(median(rounds) >= median(worst.rounds))) {
      worst = { name: b.name, rounds };
    }
  }
  out.push(
    worst === undefined
      ? notMeasured("checkout", rt, "skipped", "not run")
      : check("checkout", rt, worst.rounds, `slowest: ${worst.name}`),
  );

  const pair = (id: string, group: string, name: string, baseline: string) => {
    if (spec(id).only !== undefined && spec(id).only !== r.runtime.name) {
      return out.push(notMeasured(id, rt, "n/a"));
    }
    if (find(r, group, name) === undefined) {
      return out.push(notMeasured(id, rt, "skipped", notes[name] ?? "not run"));
    }
    out.push(check(id, rt, speedup(r, group, name, baseline)));
  };
  pair("seq-handler", GROUP.seq, NAME.handler, NAME.tagged);
  pair("seq-query", GROUP.seq, NAME.oneShot, NAME.tagged);
  pair("c100-query", GROUP.c100, NAME.oneShot, NAME.tagged);
  pair("bun-seq-query", GROUP.seq, NAME.oneShotBun, NAME.bunSql);
  pair("bun-c100-query", GROUP.c100, NAME.oneShotBun, NAME.bunSql);
  pair("bun-seq-handler", GROUP.seq, NAME.handlerBun, NAME.bunSql);

  for (const [id, variant] of [["http", "pool"], ["http-bun", "pool-bun"]]) {
    if (id === "http-bun" && !isBun) {
      out.push(notMeasured(id, rt, "n/a"));
      continue;
    }
    const h = r.http;
    if (h === undefined || !h.variants.includes(variant)) {
      const why = h === undefined ? "not run" : notes[NAME.oneShotBun] ?? "not run";
      out.push(notMeasured(id, rt, "skipped", why));
      continue;
    }
    const ratios = httpRatios(h, variant);
    const worstCell = ratios.reduce((a, b) => (b.ratio < a.ratio ? b : a));
    // The worst cell decides; `rounds` keeps every cell's ratio for the range.
    const c = check(id, rt, ratios.map((x) => x.ratio), `worst: ${worstCell.cell}`);
    c.ratio = worstCell.ratio;
    c.pass = Number.isFinite(c.ratio) && c.ratio >= spec(id).limit;
    c.verdict = c.pass ? "pass" : "fail";
    out.push(c);
  }

  if (find(r, GROUP.tx, NAME.handler) === undefined) out.push(notMeasured("tx", rt, "skipped"));
  else {
    out.push(check(
      "tx",
      rt,
      perRound(avgs(find(r, GROUP.tx, NAME.handler)), avgs(find(r, GROUP.tx, NAME.begin))),
    ));
  }

  const p99 = (name: string) =>
    (r.extra[extraKey(GROUP.contention, name)] ?? []).map((x) => x.wait_p99_ns);
  const ours = p99(NAME.contentionOurs);
  if (ours.length === 0) out.push(notMeasured("p99", rt, "skipped"));
  else out.push(check("p99", rt, perRound(ours, p99(NAME.contentionPg))));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Formatting.

/** A duration in ns, with a unit that keeps 3 significant digits. */
export function formatNs(ns: number): string {
  if (!Number.isFinite(ns)) return "n/a";
  const units: Array<[number, string]> = [[1e9, "s"], [1e6, "ms"], [1e3, "µs"], [1, "ns"]];
  for (const [scale, unit] of units) {
    if (ns >= scale || scale === 1) return `${sig3(ns / scale)} ${unit}`;
  }
  return `${ns} ns`;
}

function sig3(v: number): string {
  return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
}

/** Bytes with a decimal unit and 3 significant digits ("150 kB"). */
export function formatBytes(bytes: number): string {
  if (!Number.isFinite(bytes)) return "n/a";
  const sign = bytes < 0 ? "-" : "";
  const b = Math.abs(bytes);
  if (b >= 1e6) return `${sign}${sig3(b / 1e6)} MB`;
  if (b >= 1e3) return `${sign}${sig3(b / 1e3)} kB`;
  return `${sign}${b.toFixed(0)} B`;
}

export function formatRate(perSecond: number): string {
  if (!Number.isFinite(perSecond)) return "n/a";
  return perSecond >= 1000 ? `${(perSecond / 1000).toFixed(1)}k/s` : `${perSecond.toFixed(0)}/s`;
}

function formatRatio(x: number): string {
  return Number.isFinite(x) ? `${x >= 10 ? x.toFixed(1) : x.toFixed(2)}x` : "n/a";
}

function runtimeLabel(r: RuntimeResults): string {
  const name = r.runtime.name.charAt(0).toUpperCase() + r.runtime.name.slice(1);
  return `${name} ${r.runtime.version}`;
}

/** Escapes text for markdown table cells. */
function cell(text: string): string {
  return text.replaceAll("|", "\\|").replaceAll("\n", " ");
}

function targetCell(t: TargetCheck | undefined, limit: number): string {
  if (t === undefined) return "n/a";
  if (t.verdict === "n/a") return "—";
  // The reason is listed once under the contenders table, not in every row it affects.
  if (t.verdict === "skipped") return t.note === "not run" ? "not run" : "not measured (see notes)";
  const finite = t.rounds.filter(Number.isFinite);
  const [lo, hi] = [formatRatio(Math.min(...finite)), formatRatio(Math.max(...finite))];
  const range = lo === hi ? "" : ` (${lo}–${hi})`;
  // A ratio that rounds to the limit gets a third decimal, so the verdict is visible in it.
  const shown = formatRatio(t.ratio) === formatRatio(limit)
    ? `${t.ratio.toFixed(3)}x`
    : formatRatio(t.ratio);
  return `${shown}${range} ${t.pass ? "PASS" : "FAIL"}${t.note ? ` (${t.note})` : ""}`;
}

/** A run must start below this 1-minute load average: an idle machine. */
export const IDLE_LOAD = 0.7;
/** A 1-minute load average above this many times the cores means someone else was busy too. */
const BUSY_PER_CORE = 1.75;
/** More CPU than this share of the machine used by other processes makes a section noisy. */
const FOREIGN_CPU_LIMIT = 0.05;

/** Load while one section was measured. */
export interface SectionLoad {
  /** 1-minute load average when its run started (before any benchmark load). */
  before: number;
  /** Highest 1-minute load average sampled while the section ran (its own load included). */
  max: number;
  /** Share of the machine's CPU (0..1) that other processes used over the whole section. */
  foreign_cpu?: number;
  /** The same over the worst 5-second window. */
  foreign_cpu_max?: number;
}

/**
 * Whether other work ran on the machine: the figures are then not to be taken as real. A run
 * must start on an idle machine (load below `IDLE_LOAD`), and other processes may not have used more than
 * 5% of the machine's CPU while a section ran (bench/cpu.ts). Without that figure (not Linux,
 * older results) the load average decides: none past `BUSY_PER_CORE` x cores.
 */
export function noisy(m: Machine, load?: SectionLoad): boolean {
  if (load?.foreign_cpu !== undefined) {
    return load.before > IDLE_LOAD || load.foreign_cpu > FOREIGN_CPU_LIMIT;
  }
  if (load !== undefined) return load.before > IDLE_LOAD || load.max > BUSY_PER_CORE * m.cores;
  return m.loadavg_before > IDLE_LOAD || m.loadavg_after > 1.5 * m.cores;
}

/** Sections whose figures were taken on a busy machine. */
function noisySections(r: RuntimeResults): string[] {
  const loads = Object.entries(r.load ?? {});
  if (loads.length === 0) return noisy(r.machine) ? ["all"] : [];
  return loads.filter(([, l]) => noisy(r.machine, l)).map(([section]) => section);
}

function pct(x: number): string {
  return `${(x * 100).toFixed(1)}%`;
}

function header(results: RuntimeResults[]): string[] {
  const first = results[0];
  const m = first.machine;
  const versions = Object.entries(first.versions).map(([k, v]) => `${k} ${v}`).join(", ");
  const busy = [...new Set(results.flatMap(noisySections))];
  const loads = Object.entries(first.load ?? {});
  const loadText = loads.length > 0
    ? `Load average (1 min) at the start of the run: ${
      [...new Set(loads.map(([, l]) => l.before.toFixed(2)))].join(" / ")
    }; highest while measuring: ${
      loads.map(([s, l]) => `${s} ${l.max.toFixed(2)}`).join(", ")
    } (the benchmark's own load included)` +
      (loads.every(([, l]) => l.foreign_cpu !== undefined)
        ? `; CPU used by other processes: ${
          loads.map(([s, l]) =>
            `${s} ${pct(l.foreign_cpu!)} (worst 5 s: ${pct(l.foreign_cpu_max ?? 0)})`
          )
            .join(", ")
        } of the machine`
        : "")
    : `Load average (1 min) before the run: ${m.loadavg_before.toFixed(2)}, after: ${
      m.loadavg_after.toFixed(2)
    } (the benchmark's own load included, about ${m.cores} here at most)`;
  const lines = [
    `Measured ${first.date.slice(0, 16).replace("T", " ")} UTC on ${m.cpu} (${m.cores} cores, ` +
    `${m.memory_gb} GB, ${m.os}).`,
    "",
    `Runtimes: ${results.map(runtimeLabel).join(", ")}. ${versions}` +
    (first.http ? `, ${first.http.wrk}` : "") + ".",
    "",
    `Micro-benchmarks: median of ${first.rounds} round(s); a round runs each runtime's suite in ` +
    `turn against one local primary + streaming replica, and contenders alternate (each group ` +
    `runs in reverse order on even rounds). Ratios are taken per round between benches that ran ` +
    `side by side, then the median (range) is shown. ` +
    (m.pinning === undefined
      ? ""
      : `Placement (micro, scaling, sustained, memory): ${m.pinning}. `) +
    loadText +
    (busy.length > 0
      ? ` — **other work was running on the machine (${
        busy.join(", ")
      }): these figures are noisy, not a real run**.`
      : " — a quiet machine."),
  ];
  if (first.quick) {
    lines.push(
      "",
      "**Smoke run (`--quick`): 1 round and very short durations; these figures are not a " +
        "measurement.**",
    );
  }
  const older = Object.entries(first.measured ?? {})
    .filter(([, date]) => date.slice(0, 16) !== first.date.slice(0, 16));
  if (older.length > 0) {
    lines.push(
      "",
      `Kept from earlier runs: ${
        older.map(([s, d]) => `${s} (${d.slice(0, 16).replace("T", " ")} UTC)`).join(", ")
      }.`,
    );
  }
  return lines;
}

function targetsTable(results: RuntimeResults[], checks: TargetCheck[]): string[] {
  const lines = [
    `| target | required | ${results.map(runtimeLabel).join(" | ")} |`,
    `|---|---|${results.map(() => "---|").join("")}`,
  ];
  for (const s of TARGETS) {
    const cells = results.map((r) => {
      const t = checks.find((c) => c.id === s.id && c.runtime === runtimeLabel(r));
      return cell(targetCell(t, s.limit));
    });
    lines.push(`| ${cell(s.label)} | ${s.required} | ${cells.join(" | ")} |`);
  }
  return lines;
}

/** Contenders of the query groups in first-seen order over all runtimes. */
// What `using` costs by itself on each runtime: the floor under every checkout with `using`.
function usingFloorText(results: RuntimeResults[]): string[] {
  const parts: string[] = [];
  for (const r of results) {
    const floor = median(avgs(find(r, GROUP.checkout, NAME.usingFloor)));
    const bare = median(avgs(find(r, GROUP.checkout, NAME.noUsing)));
    if (!(floor > 0) || !(bare > 0)) continue;
    parts.push(
      `${runtimeLabel(r)}: \`using\` alone ${formatNs(floor)}, the pool's checkout + release ` +
        `without it ${formatNs(bare)}`,
    );
  }
  if (parts.length === 0) return [];
  return [
    "",
    "The `using` statement has a cost of its own, paid by every checkout written with it (" +
    `${parts.join("; ")}), measured in the same group as \`${NAME.usingFloor}\`.`,
  ];
}

function queryContenders(results: RuntimeResults[]): string[] {
  const names: string[] = [];
  for (const r of results) {
    for (const b of r.benches) {
      if ((b.group === GROUP.seq || b.group === GROUP.c100) && !names.includes(b.name)) {
        names.push(b.name);
      }
    }
    for (const n of Object.keys(r.notes ?? {})) {
      if (HOW[n] !== undefined && !names.includes(n)) names.push(n);
    }
  }
  return names;
}

function howList(results: RuntimeResults[]): string[] {
  return queryContenders(results).map((n) => `- **${n}**: ${HOW[n] ?? "see bench/README.md"}`);
}

/** Throughput of each query contender at 1 and 100 callers, and its ratio to postgres.js. */
function queryTable(results: RuntimeResults[]): string[] {
  const cols = results.flatMap((r) => [`${runtimeLabel(r)}, 1 caller`, `100 callers`]);
  const lines = [
    `| contender | ${cols.join(" | ")} |`,
    `|---|${cols.map(() => "---|").join("")}`,
  ];
  for (const name of queryContenders(results)) {
    const cells = results.flatMap((r) =>
      [GROUP.seq, GROUP.c100].map((group) => {
        const b = find(r, group, name);
        if (b === undefined) return r.notes?.[name] ? "skipped" : "—";
        const per = BATCH[group] ?? 1;
        const rate = formatRate(per / (median(avgs(b)) / 1e9));
        const ratio = median(speedup(r, group, name, NAME.tagged));
        return name === NAME.tagged ? rate : `${rate} (${formatRatio(ratio)})`;
      })
    );
    lines.push(`| ${cell(name)} | ${cells.join(" | ")} |`);
  }
  return lines;
}

function notesList(results: RuntimeResults[]): string[] {
  const lines: string[] = [];
  for (const r of results) {
    // One line per reason: the Bun-driver entries of every suite share one.
    const byNote = new Map<string, string[]>();
    for (const [name, note] of Object.entries(r.notes ?? {})) {
      byNote.set(note, [...(byNote.get(note) ?? []), name]);
    }
    for (const [note, names] of byNote) {
      lines.push(
        `- ${runtimeLabel(r)}: ${names.map((n) => `**${n}**`).join(", ")} not measured: ${note}`,
      );
    }
  }
  return lines;
}

/** Groups in first-seen order, each with its bench names in first-seen order. */
function layout(results: RuntimeResults[]): Array<[string, string[]]> {
  const groups = new Map<string, string[]>();
  for (const r of results) {
    for (const b of r.benches) {
      const g = b.group ?? "";
      const names = groups.get(g) ?? [];
      if (!names.includes(b.name)) names.push(b.name);
      groups.set(g, names);
    }
  }
  return [...groups.entries()];
}

function figureCell(r: RuntimeResults, group: string, name: string): string {
  const b = find(r, group, name);
  if (b === undefined) return "n/a";
  const avg = median(avgs(b));
  const p99 = median(b.results.map((x) => x.ok.p99 / perIteration(b)));
  const batch = BATCH[group];
  const rate = batch === undefined ? "" : ` (${formatRate(batch / (avg / 1e9))})`;
  return `${formatNs(avg)}${rate}, p99 ${formatNs(p99)}`;
}

function allTable(results: RuntimeResults[]): string[] {
  const lines = [
    `| group | benchmark | ${results.map(runtimeLabel).join(" | ")} |`,
    `|---|---|${results.map(() => "---|").join("")}`,
  ];
  for (const [group, names] of layout(results)) {
    for (const name of names) {
      const baseline = results.some((r) => find(r, group, name)?.baseline) ? " (baseline)" : "";
      const cells = results.map((r) => figureCell(r, group, name));
      lines.push(`| ${cell(group)} | ${cell(name + baseline)} | ${cells.join(" | ")} |`);
    }
  }
  return lines;
}

function waitsTable(results: RuntimeResults[]): string[] {
  const lines = [
    "| pool | runtime | checkouts/s | p50 wait | p99 wait | max wait |",
    "|---|---|---|---|---|---|",
  ];
  for (const name of [NAME.contentionOurs, NAME.contentionPg]) {
    for (const r of results) {
      const x = r.extra[extraKey(GROUP.contention, name)] ?? [];
      if (x.length === 0) continue;
      const avg = median(avgs(find(r, GROUP.contention, name)));
      const rate = formatRate(BATCH[GROUP.contention] / (avg / 1e9));
      const w = (k: string) => formatNs(median(x.map((v) => v[k])));
      lines.push(
        `| ${name} | ${runtimeLabel(r)} | ${rate} | ${w("wait_p50_ns")} | ${w("wait_p99_ns")} | ${
          w("wait_max_ns")
        } |`,
      );
    }
  }
  return lines;
}

/** Label of an HTTP variant on a runtime. */
function variantLabel(r: RuntimeResults, variant: string): string {
  if (variant === "pool") return "pgdbpool";
  if (variant === "pool-bun") return "pgdbpool (bun driver)";
  return r.runtime.name === "bun" ? "Bun SQL" : "postgres.js";
}

function httpTable(results: RuntimeResults[]): string[] {
  const lines = [
    "| runtime | route | wrk connections | pgdbpool req/s | direct req/s | pool / direct | " +
    "p99 pool | p99 direct | app CPU/req pool | app CPU/req direct |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ];
  const cpu = (ns: number) => Number.isNaN(ns) ? "—" : formatNs(ns);
  for (const r of results) {
    const h = r.http;
    if (h === undefined) continue;
    for (const { route, connections } of httpGrid(h)) {
      for (const v of h.variants.filter((x) => x !== "direct")) {
        const pool = httpRate(h, route, connections, v);
        const direct = httpRate(h, route, connections, "direct");
        const name = `${runtimeLabel(r)}${v === "pool-bun" ? " (bun driver)" : ""}`;
        lines.push(
          `| ${name} | \`${route}\` | ${connections} | ${pool.toFixed(0)} | ${direct.toFixed(0)} (${
            variantLabel(r, "direct")
          }) | ${formatRatio(pool / direct)} | ${formatNs(httpP99(h, route, connections, v))} | ${
            formatNs(httpP99(h, route, connections, "direct"))
          } | ${cpu(httpCpu(h, route, connections, v))} | ${
            cpu(httpCpu(h, route, connections, "direct"))
          } |`,
        );
      }
    }
  }
  return lines;
}

function httpText(results: RuntimeResults[]): string[] {
  const h = results.find((r) => r.http)?.http;
  if (h === undefined) return [];
  const errors = results.flatMap((r) =>
    (r.http?.variants ?? []).map((v) => ({ r, v, n: httpErrors(r.http!, v) }))
  ).filter((e) => e.n > 0);
  return [
    `TechEmpower-style test types (bench/http/): \`/db\` one random row, \`/queries?n=20\` 20 ` +
    `rows by 20 queries, \`/updates?n=20\` 20 rows read and written back in one batched ` +
    `\`UPDATE\`, \`/fortunes\` 12 rows + 1, sorted, HTML-escaped. \`wrk -t1 --latency\`, ` +
    `${h.seconds} s per run; every run starts its app afresh and warms it for ` +
    `${h.warmup_seconds} s at the run's own route and connection count (a long-lived ` +
    `postgres.js client slows down, see Sustained load); each pair runs twice in mirrored ` +
    `order (pool, direct, direct, pool) and the ratio compares mean req/s. ` +
    `The app, PostgreSQL and wrk share the machine's ${results[0].machine.cores} cores. ` +
    `App CPU/req is the CPU time of the app's process (user + system, all threads, from ` +
    `\`/proc\`) during a run divided by the requests it served: what a request costs the ` +
    `machine on the app's side, which moves less than req/s with where the scheduler places the ` +
    `three processes.`,
    "",
    `- **pgdbpool**: ${VARIANTS.pool}`,
    ...(results.some((r) => r.http?.variants.includes("pool-bun"))
      ? [`- **pgdbpool (bun driver)**: ${VARIANTS["pool-bun"]}`]
      : []),
    `- **direct**: ${VARIANTS.direct}`,
    ...(errors.length > 0
      ? [
        "",
        `Errors (socket errors and non-2xx responses): ${
          errors.map((e) => `${runtimeLabel(e.r)} ${variantLabel(e.r, e.v)}: ${e.n}`).join(", ")
        }.`,
      ]
      : []),
  ];
}

/** Contenders in one order everywhere (baselines first), whatever order they ran in. */
function contenderOrder(names: string[]): string[] {
  const order: string[] = [
    NAME.tagged,
    NAME.bunSql,
    NAME.pgQuery,
    NAME.handler,
    NAME.oneShot,
    NAME.handlerBun,
    NAME.oneShotBun,
  ];
  const rank = (n: string) => (order.includes(n) ? order.indexOf(n) : order.length);
  return [...names].sort((a, b) => rank(a) - rank(b));
}

function scalingTable(results: RuntimeResults[], sweep: "callers" | "connections"): string[] {
  const lines: string[] = [];
  for (const r of results) {
    const s = r.scaling;
    if (s === undefined) continue;
    const points = s.points.filter((p) => p.sweep === sweep);
    const xs = [...new Set(points.map((p) => sweep === "callers" ? p.callers : p.connections))];
    const names = contenderOrder([...new Set(points.map((p) => p.name))]);
    if (lines.length === 0) {
      lines.push(
        `| runtime | contender | ${xs.map((x) => `${sweep} = ${x}`).join(" | ")} |`,
        `|---|---|${xs.map(() => "---|").join("")}`,
      );
    }
    for (const name of names) {
      const cells = xs.map((x) => {
        const p = points.find((q) =>
          q.name === name && (sweep === "callers" ? q.callers : q.connections) === x
        );
        if (p === undefined) return "n/a";
        const rate = median(p.rounds.map((v) => v.ops_per_s));
        const p99 = median(p.rounds.map((v) => v.p99_ns));
        return `${formatRate(rate)}, p99 ${formatNs(p99)}`;
      });
      lines.push(`| ${runtimeLabel(r)} | ${cell(name)} | ${cells.join(" | ")} |`);
    }
  }
  return lines;
}

/** How the sustained load was run, from the first runtime that has it. */
function sustainedText(s: SustainedResults): string {
  const n = (x: number) => x.toLocaleString("en-US");
  const calm = s.calm_callers === undefined ? "" : ` Calm: ${s.calm_callers} callers (one per ` +
    `connection) run ${n(s.calm_statements ?? 0)} statements on the same instance before the ` +
    `windows and again after them and ${(s.pause_ms ?? 0) / 1000} s without load; calm after / ` +
    "before below 1x means the instance stayed slower once the load was gone.";
  return `\`SELECT 1\` from ${s.callers} concurrent callers over ${s.connections} connections, ` +
    "each caller looping without a pause: every contender opens one fresh, warm instance, which " +
    `runs ${n(s.warmup)} untimed statements and then ${s.windows} windows of ` +
    `${n(s.statements)} statements back to back, aging all the way (no new instance, no pause ` +
    "between windows). Contenders run one after another, in reverse order on Bun. Throughput " +
    "per window; last / first below 1x means the instance slowed down as it aged." + calm;
}

/** Per runtime: first and last window of each contender, and the last against postgres.js. */
function sustainedTables(results: RuntimeResults[]): string[] {
  const lines: string[] = [];
  for (const r of results) {
    const s = r.sustained;
    if (s === undefined) continue;
    const last = (name: string) => s.runs.find((x) => x.name === name)?.ops_per_s.at(-1) ?? NaN;
    lines.push(
      `**${runtimeLabel(r)}**`,
      "",
      "| contender | first window | last window | last / first | last window vs postgres.js " +
        "| calm before | calm after | after / before |",
      "|---|---|---|---|---|---|---|---|",
    );
    for (const name of contenderOrder(s.runs.map((x) => x.name))) {
      const run = s.runs.find((x) => x.name === name)!;
      const rates = run.ops_per_s;
      const [first, end] = [rates[0] ?? NaN, rates.at(-1) ?? NaN];
      const vs = name === NAME.tagged ? "—" : formatRatio(end / last(NAME.tagged));
      const [before, after] = [run.calm_before_ops_per_s, run.calm_after_ops_per_s];
      const calm = before === undefined || after === undefined
        ? "— | — | —"
        : `${formatRate(before)} | ${formatRate(after)} | ${formatRatio(after / before)}`;
      lines.push(
        `| ${cell(name)} | ${formatRate(first)} | ${formatRate(end)} | ${
          formatRatio(end / first)
        } | ${vs} | ${calm} |`,
      );
    }
    lines.push("");
  }
  return lines;
}

function memoryTable(results: RuntimeResults[]): string[] {
  const lines = [
    "| runtime | client | per open connection: heap | RSS | per idle instance: heap | RSS |",
    "|---|---|---|---|---|---|",
  ];
  for (const r of results) {
    const m = r.memory;
    if (m === undefined) continue;
    const names = [...new Set(m.entries.map((e) => e.name))];
    for (const name of names) {
      const fig = (kind: string, key: "heap_bytes" | "rss_bytes") => {
        const e = m.entries.find((x) => x.name === name && x.kind === kind);
        return formatBytes(median(e?.samples.map((s) => s[key]) ?? []));
      };
      lines.push(
        `| ${runtimeLabel(r)} | ${cell(name)} | ${fig("connection", "heap_bytes")} | ${
          fig("connection", "rss_bytes")
        } | ${fig("idle", "heap_bytes")} | ${fig("idle", "rss_bytes")} |`,
      );
    }
  }
  return lines;
}

// ---------------------------------------------------------------------------------------------
// Charts.

const COLORS = ["#3b6fd8", "#e8a33d", "#4aa564", "#b45bc7", "#d0453b", "#6b7a8f", "#1aa5a5"];

function xml(text: string): string {
  return text.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;")
    .replaceAll('"', "&quot;");
}

const f1 = (n: number) => n.toFixed(1);

const DECADE_LABEL: Record<number, string> = {
  0: "1 ns",
  1: "10 ns",
  2: "100 ns",
  3: "1 µs",
  4: "10 µs",
  5: "100 µs",
  6: "1 ms",
  7: "10 ms",
  8: "100 ms",
  9: "1 s",
};

interface BarSeries {
  label: string;
  values: number[];
}

interface BarChart {
  title: string;
  subtitle: string;
  rows: string[];
  series: BarSeries[];
  format: (v: number) => string;
  /** log10 axis over whole decades, or linear from 0. */
  scale: "log10" | "linear";
  decadeLabel?: (d: number) => string;
  /** Vertical reference lines (targets), linear charts only. */
  marks?: Array<{ value: number; label: string }>;
  /** Attribute that carries each bar's value (`data-ns` for durations). */
  valueAttr?: string;
  footer?: string;
}

/**
 * Horizontal grouped bars: one row per entry, one bar per series. On a log10 axis the bars
 * start at the decade below the smallest value, so lengths compare as orders of magnitude.
 */
function renderBars(c: BarChart): string {
  const finite = c.series.flatMap((s) => s.values).filter((v) => Number.isFinite(v) && v > 0);
  let lo: number, hi: number;
  if (c.scale === "log10") {
    lo = Math.floor(Math.log10(finite.length ? Math.min(...finite) : 1));
    hi = Math.max(lo + 1, Math.ceil(Math.log10(finite.length ? Math.max(...finite) : 10)));
  } else {
    lo = 0;
    const top = Math.max(...finite, ...(c.marks ?? []).map((m) => m.value), 0) * 1.1;
    hi = niceCeil(top || 1);
  }
  const labelW = 290, plotW = 420, right = 80, top = 58, barH = 11, gap = 10;
  const rowH = c.series.length * barH + gap;
  const width = labelW + plotW + right;
  const plotH = c.rows.length * rowH;
  const height = top + plotH + 62 + Math.ceil(c.series.length / 4) * 16;
  const x = (v: number) =>
    labelW +
    (c.scale === "log10"
      ? ((Math.log10(v) - lo) / (hi - lo)) * plotW
      : ((v - lo) / (hi - lo)) * plotW);
  const attr = c.valueAttr ?? "data-value";
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" ` +
      `viewBox="0 0 ${width} ${height}" font-family="system-ui, sans-serif" font-size="12" ` +
      `data-scale="${c.scale}"${c.scale === "log10" ? ` data-decades="${lo}-${hi}"` : ""}>`,
  );
  out.push(`<rect width="${width}" height="${height}" fill="#ffffff"/>`);
  out.push(`<text x="${labelW}" y="20" font-size="14" font-weight="bold">${xml(c.title)}</text>`);
  out.push(`<text x="${labelW}" y="37" fill="#555">${xml(c.subtitle)}</text>`);
  const ticks = c.scale === "log10"
    ? Array.from({ length: hi - lo + 1 }, (_, i) => 10 ** (lo + i))
    : Array.from({ length: 6 }, (_, i) => (hi * i) / 5);
  for (const t of ticks) {
    const tx = f1(x(t));
    const label = c.scale === "log10"
      ? (c.decadeLabel ?? ((d) => DECADE_LABEL[d] ?? `1e${d}`))(Math.round(Math.log10(t)))
      : c.format(t);
    out.push(
      `<line class="tick" ${attr}="${t}" x1="${tx}" y1="${top - 6}" x2="${tx}" ` +
        `y2="${top + plotH}" stroke="#ddd"/>`,
    );
    out.push(
      `<text x="${tx}" y="${top + plotH + 16}" text-anchor="middle" fill="#555">` +
        `${xml(label)}</text>`,
    );
  }
  for (const m of c.marks ?? []) {
    const mx = f1(x(m.value));
    out.push(
      `<line class="mark" ${attr}="${m.value}" x1="${mx}" y1="${top - 10}" x2="${mx}" ` +
        `y2="${top + plotH}" stroke="#d0453b" stroke-dasharray="4 3"/>`,
    );
    out.push(
      `<text x="${mx}" y="${top - 13}" text-anchor="middle" font-size="10" fill="#d0453b">` +
        `${xml(m.label)}</text>`,
    );
  }
  c.rows.forEach((name, row) => {
    const y0 = top + row * rowH;
    out.push(
      `<text x="${labelW - 8}" y="${f1(y0 + (c.series.length * barH) / 2 + 4)}" ` +
        `text-anchor="end">${xml(name)}</text>`,
    );
    c.series.forEach((s, k) => {
      const v = s.values[row];
      if (!(Number.isFinite(v) && v > 0)) return;
      const y = y0 + k * barH;
      out.push(
        `<rect class="bar" data-series="${xml(s.label)}" data-name="${xml(name)}" ` +
          `${attr}="${v}" x="${labelW}" y="${y}" width="${f1(Math.max(0, x(v) - labelW))}" ` +
          `height="${barH - 1}" fill="${COLORS[k % COLORS.length]}"/>`,
      );
      out.push(
        `<text x="${f1(x(v) + 4)}" y="${y + barH - 2}" font-size="10" fill="#333">` +
          `${xml(c.format(v))}</text>`,
      );
    });
  });
  let ly = top + plotH + 36;
  c.series.forEach((s, k) => {
    if (k > 0 && k % 4 === 0) ly += 16;
    const lx = labelW + (k % 4) * 130;
    out.push(
      `<rect x="${lx}" y="${ly - 9}" width="10" height="10" fill="${COLORS[k % COLORS.length]}"/>`,
    );
    out.push(`<text x="${lx + 14}" y="${ly}">${xml(s.label)}</text>`);
  });
  if (c.footer) {
    out.push(
      `<text x="${labelW}" y="${ly + 18}" font-size="10" fill="#777">${xml(c.footer)}</text>`,
    );
  }
  out.push("</svg>");
  return out.join("\n") + "\n";
}

/** 1, 1.25, 1.5, 2, 2.5, 3, 4 or 5 times a power of ten, at least `v`: an axis end with round ticks. */
function niceCeil(v: number): number {
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function footer(results: RuntimeResults[]): string | undefined {
  const m = results[0]?.machine;
  return m && `${m.cpu}, ${m.cores} cores; ${results[0].date.slice(0, 10)}` +
      (results.some((r) => noisySections(r).length > 0) ? " (busy machine: noisy)" : "");
}

/** Checkout + release per pool and runtime, log scale. */
export function renderChart(results: RuntimeResults[]): string {
  const names = layout(results).find(([g]) => g === GROUP.checkout)?.[1] ?? [];
  return renderBars({
    title: "Checkout + release, warm pool, no query",
    subtitle: "time per checkout, log scale, lower is better",
    rows: names,
    series: results.map((r) => ({
      label: runtimeLabel(r),
      values: names.map((n) => median(avgs(find(r, GROUP.checkout, n)))),
    })),
    format: formatNs,
    scale: "log10",
    valueAttr: "data-ns",
    footer: footer(results),
  });
}

/** pool / direct req/s per route and connection count, per runtime (and pool driver). */
export function renderHttpChart(results: RuntimeResults[]): string | undefined {
  const runs = results.filter((r) => r.http !== undefined);
  if (runs.length === 0) return undefined;
  const grid = httpGrid(runs[0].http!);
  const series: BarSeries[] = runs.flatMap((r) =>
    r.http!.variants.filter((v) => v !== "direct").map((v) => ({
      label: `${runtimeLabel(r)}${v === "pool-bun" ? " (bun driver)" : ""}`,
      values: grid.map(({ route, connections }) =>
        httpRate(r.http!, route, connections, v) /
        httpRate(r.http!, route, connections, "direct")
      ),
    }))
  );
  return renderBars({
    title: "End-to-end HTTP: pgdbpool / direct driver",
    subtitle: "requests/s ratio per route and wrk connections, higher is better",
    rows: grid.map(({ route, connections }) => `${route}, ${connections} connections`),
    series,
    format: (v) => `${v.toFixed(2)}x`,
    scale: "linear",
    marks: [{ value: 0.97, label: "0.97x target" }, { value: 1, label: "" }],
    footer: footer(results),
  });
}

/** Client memory per open connection and per idle instance, log scale. */
export function renderMemoryChart(results: RuntimeResults[]): string | undefined {
  const runs = results.filter((r) => r.memory !== undefined);
  if (runs.length === 0) return undefined;
  const rows: Array<{ name: string; kind: "connection" | "idle" }> = [];
  for (const r of runs) {
    for (const e of r.memory!.entries) {
      if (!rows.some((x) => x.name === e.name && x.kind === e.kind)) rows.push(e);
    }
  }
  const series: BarSeries[] = runs.flatMap((r) =>
    (["heap_bytes", "rss_bytes"] as const).map((key) => ({
      label: `${runtimeLabel(r)} ${key === "heap_bytes" ? "heap" : "RSS"}`,
      values: rows.map((row) => {
        const e = r.memory!.entries.find((x) => x.name === row.name && x.kind === row.kind);
        return median(e?.samples.map((s) => s[key]) ?? []);
      }),
    }))
  );
  return renderBars({
    title: "Client memory",
    subtitle: "bytes per open connection and per idle instance, log scale, lower is better",
    rows: rows.map((x) => `${x.name}, ${x.kind === "connection" ? "per connection" : "idle"}`),
    series,
    format: formatBytes,
    scale: "log10",
    decadeLabel: (d) =>
      ["1 B", "10 B", "100 B", "1 kB", "10 kB", "100 kB", "1 MB", "10 MB"][d] ?? `1e${d} B`,
    footer: footer(results),
  });
}

interface LinePanel {
  title: string;
  xs: number[];
  xLabel: string;
  /** x linear from 0 with round ticks; by default log scale with a tick at every point. */
  xLinear?: boolean;
  xFormat?: (v: number) => string;
  yLog: boolean;
  yFormat: (v: number) => string;
  series: Array<{ label: string; ys: number[] }>;
}

/** Where a panel's x values fall, and its ticks. */
function xAxis(p: LinePanel, ox: number, pw: number) {
  if (p.xLinear) {
    const hi = niceCeil(Math.max(...p.xs, 1));
    return {
      px: (v: number) => ox + (v / hi) * pw,
      ticks: Array.from({ length: 6 }, (_, i) => (hi * i) / 5),
    };
  }
  const lx0 = Math.log10(Math.min(...p.xs)), lx1 = Math.log10(Math.max(...p.xs));
  return {
    px: (v: number) => ox + ((Math.log10(v) - lx0) / (lx1 - lx0 || 1)) * pw,
    ticks: p.xs,
  };
}

/**
 * A grid of line charts sharing one legend: x on a log scale at the measured points (or linear
 * from 0), y linear from 0 (throughput) or log10 over whole decades (latency).
 */
function renderLines(title: string, subtitle: string, panels: LinePanel[][], foot?: string) {
  const pw = 340, ph = 190, left = 70, gapX = 60, top = 78, gapY = 70;
  const cols = Math.max(...panels.map((row) => row.length));
  const labels = [...new Set(panels.flat().flatMap((p) => p.series.map((s) => s.label)))];
  const width = left + cols * (pw + gapX);
  const legendRows = Math.ceil(labels.length / 3);
  const height = top + panels.length * (ph + gapY) + legendRows * 16 + 30;
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" ` +
      `viewBox="0 0 ${width} ${height}" font-family="system-ui, sans-serif" font-size="12">`,
  );
  out.push(`<rect width="${width}" height="${height}" fill="#ffffff"/>`);
  out.push(`<text x="${left}" y="20" font-size="14" font-weight="bold">${xml(title)}</text>`);
  out.push(`<text x="${left}" y="37" fill="#555">${xml(subtitle)}</text>`);
  panels.forEach((row, ri) => {
    row.forEach((p, ci) => {
      const ox = left + ci * (pw + gapX), oy = top + ri * (ph + gapY);
      const ys = p.series.flatMap((s) => s.ys).filter((v) => Number.isFinite(v) && v > 0);
      const { px, ticks: xticks } = xAxis(p, ox, pw);
      let py: (v: number) => number;
      let yticks: number[];
      if (p.yLog) {
        const lo = Math.floor(Math.log10(ys.length ? Math.min(...ys) : 1));
        const hi = Math.max(lo + 1, Math.ceil(Math.log10(ys.length ? Math.max(...ys) : 10)));
        py = (v) => oy + ph - ((Math.log10(v) - lo) / (hi - lo)) * ph;
        yticks = Array.from({ length: hi - lo + 1 }, (_, i) => 10 ** (lo + i));
      } else {
        const hi = niceCeil((ys.length ? Math.max(...ys) : 1) * 1.05);
        py = (v) => oy + ph - (v / hi) * ph;
        yticks = Array.from({ length: 6 }, (_, i) => (hi * i) / 5);
      }
      out.push(`<g class="panel" data-title="${xml(p.title)}">`);
      out.push(
        `<text x="${ox}" y="${oy - 8}" font-weight="bold">${xml(p.title)}</text>`,
      );
      for (const t of yticks) {
        out.push(
          `<line x1="${ox}" y1="${f1(py(t))}" x2="${ox + pw}" y2="${f1(py(t))}" stroke="#eee"/>`,
        );
        out.push(
          `<text x="${ox - 6}" y="${f1(py(t) + 4)}" text-anchor="end" font-size="10" ` +
            `fill="#555">${xml(p.yFormat(t))}</text>`,
        );
      }
      for (const xv of xticks) {
        out.push(
          `<line x1="${f1(px(xv))}" y1="${oy}" x2="${f1(px(xv))}" y2="${oy + ph}" stroke="#eee"/>`,
        );
        out.push(
          `<text x="${f1(px(xv))}" y="${oy + ph + 14}" text-anchor="middle" font-size="10" ` +
            `fill="#555">${xml((p.xFormat ?? String)(xv))}</text>`,
        );
      }
      out.push(
        `<text x="${ox + pw / 2}" y="${oy + ph + 30}" text-anchor="middle" fill="#555">` +
          `${xml(p.xLabel)}</text>`,
      );
      out.push(
        `<rect x="${ox}" y="${oy}" width="${pw}" height="${ph}" fill="none" stroke="#bbb"/>`,
      );
      for (const s of p.series) {
        const k = labels.indexOf(s.label);
        const color = COLORS[k % COLORS.length];
        const pts = p.xs.map((xv, i) => [xv, s.ys[i]] as const)
          .filter(([, y]) => Number.isFinite(y) && y > 0);
        if (pts.length === 0) continue;
        out.push(
          `<polyline class="line" data-series="${xml(s.label)}" fill="none" stroke="${color}" ` +
            `stroke-width="2" points="${
              pts.map(([xv, y]) => `${f1(px(xv))},${f1(py(y))}`).join(" ")
            }"/>`,
        );
        for (const [xv, y] of pts) {
          out.push(
            `<circle cx="${f1(px(xv))}" cy="${f1(py(y))}" r="2.5" fill="${color}" ` +
              `data-x="${xv}" data-y="${y}"/>`,
          );
        }
      }
      out.push("</g>");
    });
  });
  let ly = top + panels.length * (ph + gapY) - 10;
  labels.forEach((label, k) => {
    if (k > 0 && k % 3 === 0) ly += 16;
    const lx = left + (k % 3) * 250;
    out.push(
      `<rect x="${lx}" y="${ly - 9}" width="10" height="10" fill="${COLORS[k % COLORS.length]}"/>`,
    );
    out.push(`<text x="${lx + 14}" y="${ly}">${xml(label)}</text>`);
  });
  if (foot) {
    out.push(`<text x="${left}" y="${ly + 20}" font-size="10" fill="#777">${xml(foot)}</text>`);
  }
  out.push("</svg>");
  return out.join("\n") + "\n";
}

/** Throughput and p99 against callers or connections: a row of two panels per runtime. */
export function renderScalingChart(
  results: RuntimeResults[],
  sweep: "callers" | "connections",
): string | undefined {
  const runs = results.filter((r) => r.scaling !== undefined);
  if (runs.length === 0) return undefined;
  const panels = runs.map((r) => {
    const points = r.scaling!.points.filter((p) => p.sweep === sweep);
    const at = (p: (typeof points)[number]) => sweep === "callers" ? p.callers : p.connections;
    const xs = [...new Set(points.map(at))].sort((a, b) => a - b);
    const names = contenderOrder([...new Set(points.map((p) => p.name))]);
    const series = (key: "ops_per_s" | "p99_ns") =>
      names.map((name) => ({
        label: name,
        ys: xs.map((x) => {
          const p = points.find((q) => q.name === name && at(q) === x);
          return p ? median(p.rounds.map((v) => v[key])) : NaN;
        }),
      }));
    const fixed = sweep === "callers"
      ? `${points[0]?.connections ?? "?"} connections`
      : `${points[0]?.callers ?? "?"} callers`;
    return [
      {
        title: `${runtimeLabel(r)}: queries/s (${fixed})`,
        xs,
        xLabel: sweep === "callers" ? "concurrent callers" : "connection_count",
        yLog: false,
        yFormat: (v: number) => v >= 1000 ? `${(v / 1000).toFixed(0)}k` : v.toFixed(0),
        series: series("ops_per_s"),
      },
      {
        title: `${runtimeLabel(r)}: p99 latency per query`,
        xs,
        xLabel: sweep === "callers" ? "concurrent callers" : "connection_count",
        yLog: true,
        yFormat: (v: number) => formatNs(v).replace(/\.0+ /, " "),
        series: series("p99_ns"),
      },
    ];
  });
  return renderLines(
    `SELECT 1 against ${sweep === "callers" ? "concurrent callers" : "connection_count"}`,
    "throughput (higher is better) and p99 latency per query (lower is better, log scale)",
    panels,
    footer(results),
  );
}

/** Throughput per window against statements done, a panel per runtime. */
export function renderSustainedChart(results: RuntimeResults[]): string | undefined {
  const runs = results.filter((r) => r.sustained !== undefined);
  if (runs.length === 0) return undefined;
  const thousands = (v: number) => v >= 1000 ? `${+(v / 1000).toFixed(1)}k` : v.toFixed(0);
  const panels = runs.map((r) => {
    const s = r.sustained!;
    const windows = Math.max(...s.runs.map((x) => x.ops_per_s.length), 0);
    return {
      title: `${runtimeLabel(r)}: statements/s per window`,
      // Each point at the end of its window, counted from the instance's first statement.
      xs: Array.from({ length: windows }, (_, i) => s.warmup + (i + 1) * s.statements),
      xLabel: "statements done by the instance",
      xLinear: true,
      xFormat: thousands,
      yLog: false,
      yFormat: thousands,
      series: contenderOrder(s.runs.map((x) => x.name)).map((name) => ({
        label: name,
        ys: s.runs.find((x) => x.name === name)!.ops_per_s,
      })),
    };
  });
  const s = runs[0].sustained!;
  return renderLines(
    "SELECT 1 under sustained load: one instance per contender, aging",
    `${s.callers} callers over ${s.connections} connections, statements/s per window of ` +
      `${s.statements.toLocaleString("en-US")} (higher is better)`,
    [panels],
    footer(results),
  );
}

// ---------------------------------------------------------------------------------------------
// The report.

/** Chart file names. */
export const CHARTS = {
  checkout: "checkout.svg",
  http: "http.svg",
  callers: "scaling-callers.svg",
  connections: "scaling-connections.svg",
  sustained: "sustained.svg",
  memory: "memory.svg",
} as const;

/** Builds the markdown report, the charts and the target checks from each runtime's results. */
export function buildReport(results: RuntimeResults[], options: ReportOptions = {}): Report {
  if (results.length === 0) throw new Error("buildReport: no results");
  const targets = results.flatMap(evaluateTargets);
  const dir = options.chartDir ?? "";
  const link = (alt: string, file: string) => `![${alt}](${dir}${file})`;
  const charts: Record<string, string> = { [CHARTS.checkout]: renderChart(results) };
  const http = renderHttpChart(results);
  if (http) charts[CHARTS.http] = http;
  const callers = renderScalingChart(results, "callers");
  if (callers) charts[CHARTS.callers] = callers;
  const connections = renderScalingChart(results, "connections");
  if (connections) charts[CHARTS.connections] = connections;
  const sustained = renderSustainedChart(results);
  if (sustained) charts[CHARTS.sustained] = sustained;
  const memory = renderMemoryChart(results);
  if (memory) charts[CHARTS.memory] = memory;

  const notes = notesList(results);
  const md: string[] = [
    ...header(results),
    "",
    "### Targets",
    "",
    ...targetsTable(results, targets),
    "",
    "Ratios are throughput (or speed) of pgdbpool over the baseline, so higher is better, " +
    "except the last two (time, lower is better). Checkout baseline: postgres.js `reserve()` " +
    "on a fresh, warmed `max: 1` client, its best case (it slows down as a client ages, see " +
    "bench/README.md).",
    ...usingFloorText(results),
    "",
    link("Checkout + release latency per pool and runtime, log scale", CHARTS.checkout),
    "",
    "### SELECT 1: how each contender is called",
    "",
    "Every contender holds 10 connections to the same primary and is warm; ratios in brackets " +
    "are against postgres.js tagged templates in the same round.",
    "",
    ...howList(results),
    "",
    ...queryTable(results),
    "",
    ...(notes.length > 0 ? [...notes, ""] : []),
  ];
  if (http) {
    md.push(
      "### End-to-end HTTP",
      "",
      ...httpText(results),
      "",
      ...httpTable(results),
      "",
      link("pgdbpool / direct driver requests/s per route", CHARTS.http),
      "",
    );
  }
  if (callers || connections) {
    const s = results.find((r) => r.scaling)!.scaling!;
    md.push(
      "### Scaling",
      "",
      `\`SELECT 1\` for ${s.seconds} s per point after a short warm-up, a fresh warm instance ` +
        `of each contender per point, contenders rotating; median of ${s.rounds} round(s). ` +
        "Latency is per query (wait for a connection included).",
      "",
      ...scalingTable(results, "callers"),
      "",
      link("Throughput and p99 against concurrent callers", CHARTS.callers),
      "",
      ...scalingTable(results, "connections"),
      "",
      link("Throughput and p99 against connection_count", CHARTS.connections),
      "",
    );
  }
  if (sustained) {
    md.push(
      "### Sustained load",
      "",
      sustainedText(results.find((r) => r.sustained)!.sustained!),
      "",
      ...sustainedTables(results),
      link("Throughput per window against statements done, per runtime", CHARTS.sustained),
      "",
    );
  }
  if (memory) {
    const m = results.find((r) => r.memory)!.memory!;
    md.push(
      "### Memory",
      "",
      `Client side, one process per figure, after forced GC: per open connection = growth ` +
        `from opening ${m.connections} connections (each used once) / ${m.connections}; per idle ` +
        `instance = growth from constructing ${m.idle} pools or clients (10 connections ` +
        `configured, none opened) / ${m.idle}. Medians of the repetitions. RSS includes native ` +
        `buffers (Bun's \`SQL\` keeps its connections outside the JS heap).`,
      "",
      ...memoryTable(results),
      "",
      link("Client memory per connection and per idle instance", CHARTS.memory),
      "",
    );
  }
  if (!options.compact) {
    md.push(
      "### All micro-benchmark figures",
      "",
      "Time per iteration (median over rounds of the runner's average); batch groups show the " +
        "throughput it implies. Checkout figures are per checkout: an iteration runs 1000 of " +
        "them, and the p99 shown is that of those iterations divided by 1000.",
      "",
      ...allTable(results),
      "",
      "### Contention: checkout waits",
      "",
      "Wait from asking for a connection to holding it, 200 tasks over 10 connections (medians " +
        "over rounds).",
      "",
      ...waitsTable(results),
      "",
    );
  }
  return { markdown: md.join("\n"), svg: charts[CHARTS.checkout], charts, targets };
}

const START = "<!-- bench-report:start -->";
const END = "<!-- bench-report:end -->";

/** A markdown file with a generated section between the bench-report markers. */
export interface ReadmeTarget {
  path: string;
  /** Directory of the charts relative to that file, with a trailing slash. */
  chartDir: string;
  compact: boolean;
}

/** Reads every `<runtime>.json` of `dir` that exists (Deno first, then Bun). */
export function readResults(dir: string): RuntimeResults[] {
  const results: RuntimeResults[] = [];
  for (const runtime of ["deno", "bun"]) {
    const file = join(dir, `${runtime}.json`);
    if (existsSync(file)) results.push(JSON.parse(readFileSync(file, "utf8")));
  }
  return results;
}

/**
 * Reads `deno.json` / `bun.json` from `dir` (whichever exist), writes `report.md` and every
 * chart there, and refreshes the generated section of each readme that has the markers
 * (`<!-- bench-report:start -->` ... `<!-- bench-report:end -->`). By default: the full report
 * in bench/README.md, a compact one (no micro-benchmark detail tables) in the project README.
 */
export function writeReport(dir: string, readmes: ReadmeTarget[] = defaultReadmes(dir)): Report {
  const results = readResults(dir);
  const report = buildReport(results);
  writeFileSync(join(dir, "report.md"), report.markdown);
  for (const [file, svg] of Object.entries(report.charts)) writeFileSync(join(dir, file), svg);
  for (const readme of readmes) {
    if (!existsSync(readme.path)) continue;
    const text = readFileSync(readme.path, "utf8");
    const a = markerLine(text, START, 0);
    const b = markerLine(text, END, a + 1);
    if (a === -1 || b === -1) continue;
    const section = buildReport(results, readme).markdown;
    writeFileSync(readme.path, `${text.slice(0, a + START.length)}\n${section}\n${text.slice(b)}`);
  }
  return report;
}

/** Index of `marker` standing alone on a line (so prose may quote it), or -1. */
function markerLine(text: string, marker: string, from: number): number {
  for (let i = text.indexOf(marker, from); i !== -1; i = text.indexOf(marker, i + 1)) {
    const end = i + marker.length;
    if ((i === 0 || text[i - 1] === "\n") && (end === text.length || text[end] === "\n")) return i;
  }
  return -1;
}

function defaultReadmes(dir: string): ReadmeTarget[] {
  const bench = dirname(dir);
  return [
    { path: join(bench, "README.md"), chartDir: "results/", compact: false },
    { path: join(dirname(bench), "README.md"), chartDir: "bench/results/", compact: true },
  ];
}

if (import.meta.main) {
  const dir = join(dirname(fileURLToPath(import.meta.url)), "results");
  console.log(writeReport(dir).markdown);
}
